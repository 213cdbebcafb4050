//! One server per volume: an exclusive `flock` on `<state>/<id>.lock`, held while it serves.
//!
//! The lock is on a file of sealvol's own, not on the volume, so that `cryptsetup` (which
//! takes its own locks on the volume) still reads the header of a served volume.
//!
//! Not only exports take the lock: a status check probes it for a moment, and a sweep holds
//! a free claim while it clears a dead export's leftovers. So a claim that is busy while no
//! live export is recorded for it is waited for (up to [`CLAIM_WAIT`]) before the volume is
//! called "already open".
//!
//! The same `flock`s, blocking, make the managers' locks ([`crate::store`]): a lock per id
//! and a global one, taken shared or exclusive.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use crate::safe_dir::{FileId, Kind, SafeDir};
use crate::state::StateDir;
use crate::{Error, Result};

/// How long [`VolumeLock::acquire`] waits for a claim that is busy while no live export is
/// recorded for the volume (a sweep or a status check passing by, a VM's qemu).
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// An exclusive claim on a volume, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
    path: PathBuf,
}

/// Whether the name `name` in `dir` still is the open file `file` (a lock file unlinked and
/// made anew by someone else while we waited is not the claim).
fn still_named(dir: &SafeDir, name: &str, file: &File) -> Result<bool> {
    let held = FileId::of_file(file)?;
    Ok(dir.stat(name)?.is_some_and(|st| FileId::of(&st) == held))
}

impl VolumeLock {
    /// Claims volume `id` (the file `volume`) for this process.
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`] naming the process and mount point that hold it, when another
    /// process serves it; [`Error::Io`] when the lock file cannot be made;
    /// [`Error::UnsafeDir`] for a runtime directory others could write in.
    pub fn acquire(state: &StateDir, id: &str, volume: &Path) -> Result<Self> {
        let dir = state.dir()?;
        let name = format!("{id}.lock");
        let started = Instant::now();
        loop {
            let file = dir.lock_file(&name)?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                // A sweep may have unlinked the free lock file between our open and our
                // flock: then the claim is on a removed file; take the new one.
                Ok(()) if !still_named(&dir, &name, &file)? => continue,
                Ok(()) => {
                    return Ok(VolumeLock {
                        _file: file,
                        path: dir.join(&name),
                    })
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let entry = state.load(id);
                    let live = entry.as_ref().is_some_and(|e| crate::process::alive(e.pid));
                    if !live && started.elapsed() < CLAIM_WAIT {
                        drop(file);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let pid = entry
                        .as_ref()
                        .map_or_else(|| "unknown".to_string(), |e| e.pid.to_string());
                    let where_ = entry
                        .as_ref()
                        .and_then(|e| {
                            e.mount_point
                                .as_ref()
                                .map(|m| format!(", mounted on {}", m.display()))
                                .or_else(|| {
                                    e.nbd.as_ref().map(|n| format!(", served over NBD at {n}"))
                                })
                        })
                        .unwrap_or_default();
                    return Err(Error::AlreadyOpen {
                        volume: volume.to_path_buf(),
                        pid,
                        where_,
                    });
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot lock {}", dir.join(&name).display()),
                        e.into(),
                    ))
                }
            }
        }
    }

    /// Whether some process holds the claim on `id` right now.
    pub fn is_held(state: &StateDir, id: &str) -> bool {
        let Ok(Some(dir)) = state.existing() else {
            return false;
        };
        is_held_in(&dir, &format!("{id}.lock"))
    }

    /// Lets the processes this one spawns from now on inherit the claim (the lock file's
    /// descriptor loses close-on-exec): an `flock` lives as long as any descriptor of it, so
    /// the claim then outlasts this process until the last inheritor exits. A VM's qemu
    /// holds its data volume this way while it reads it through qemu's own LUKS driver.
    /// Spawn nothing else in between.
    ///
    /// # Errors
    /// [`Error::Io`] when the descriptor's flags cannot be changed.
    pub fn inherit_by_children(&self) -> Result<()> {
        rustix::io::fcntl_setfd(&self._file, rustix::io::FdFlags::empty()).map_err(|e| {
            Error::io(
                format!("cannot pass the claim {} on", self.path.display()),
                e.into(),
            )
        })
    }

    /// Releases the claim and removes its lock file, which no other process holds (we do):
    /// a process that opened the file meanwhile finds, once it gets the lock, that the name
    /// no longer names it, and makes a new one. Returns whether it removed the file.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn release_and_remove(self) -> Result<bool> {
        let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(false);
        };
        let Some(dir) = SafeDir::open_existing_root(parent)? else {
            return Ok(false);
        };
        let name = name.to_string_lossy();
        if still_named(&dir, &name, &self._file)? {
            return dir.remove_file(&name);
        }
        Ok(false)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether some process holds a lock on the lock file `name` in `dir`.
pub fn is_held_in(dir: &SafeDir, name: &str) -> bool {
    let Some(file) = dir.existing_lock_file(name) else {
        return false;
    };
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared).is_err()
}

/// Removes the lock file `name` from `dir` if no process holds it: takes it with a
/// non-blocking exclusive `flock` and unlinks it while holding it (a process that opened it
/// meanwhile finds, once it gets the lock, that the name is gone, and makes a new one). A
/// link planted at `name` is nobody's lock and is unlinked (never followed). Returns whether
/// it removed something.
///
/// # Errors
/// [`Error::Io`].
pub fn remove_if_free(dir: &SafeDir, name: &str) -> Result<bool> {
    let Some(st) = dir.stat(name)? else {
        return Ok(false);
    };
    let planted = Kind::of_mode(st.st_mode) != Kind::File || st.st_nlink != 1;
    if planted {
        tracing::warn!(path = %dir.join(name).display(), "removing a link planted where sealvol keeps a lock file (never followed)");
        return dir.remove_file(name);
    }
    let Some(file) = dir.existing_lock_file(name) else {
        return Ok(false);
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) if still_named(dir, name, &file)? => dir.remove_file(name),
        _ => Ok(false),
    }
}

/// A held lock: released on drop (or when the process dies).
#[derive(Debug)]
pub(crate) struct Held {
    _file: File,
}

/// Takes the exclusive lock file `name` in `dir`, waiting for whoever holds it. An owner
/// that removes the lock file while holding it (a destroy, a sweep) leaves a waiter holding
/// a lock on a removed file: the waiter sees that the name no longer names it and tries
/// again.
pub(crate) fn lock_exclusive(dir: &SafeDir, name: &str) -> Result<Held> {
    loop {
        let file = flock(dir, name, FlockOperation::LockExclusive)?;
        if still_named(dir, name, &file)? {
            return Ok(Held { _file: file });
        }
    }
}

/// Takes the lock file `name` in `dir` shared, waiting for an exclusive holder.
pub(crate) fn lock_shared(dir: &SafeDir, name: &str) -> Result<Held> {
    Ok(Held {
        _file: flock(dir, name, FlockOperation::LockShared)?,
    })
}

/// Opens (making it when missing) the lock file `name` in `dir` and locks it as `op`.
fn flock(dir: &SafeDir, name: &str, op: FlockOperation) -> Result<File> {
    let file = dir.lock_file(name)?;
    rustix::fs::flock(&file, op).map_err(|e| {
        Error::io(
            format!("cannot lock {}", dir.join(name).display()),
            e.into(),
        )
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let vol = Path::new("/v.img");
        let first = VolumeLock::acquire(&state, "vol-1", vol).unwrap();
        assert!(VolumeLock::is_held(&state, "vol-1"));
        let err = VolumeLock::acquire(&state, "vol-1", vol).unwrap_err();
        assert!(matches!(err, Error::AlreadyOpen { .. }));
        assert!(err.to_string().contains("already open"), "{err}");
        drop(first);
        // Another test thread may fork while our descriptor is open; the child holds a copy
        // until its exec closes it (close-on-exec), a few microseconds: allow for that.
        let released = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            !VolumeLock::is_held(&state, "vol-1")
        });
        assert!(released, "the claim outlived its holder");
        VolumeLock::acquire(&state, "vol-1", vol).unwrap();
    }

    /// A sweep or a status check holds a free claim for a moment: an export starting then
    /// waits for it instead of calling the volume "already open". A claim recorded for a live
    /// export is refused at once.
    #[test]
    fn a_claim_held_by_no_live_export_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let vol = Path::new("/v.img");
        let passing = VolumeLock::acquire(&state, "vol-3", vol).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(passing);
        });
        let start = Instant::now();
        VolumeLock::acquire(&state, "vol-3", vol).expect("the passing claim is waited for");
        assert!(start.elapsed() >= Duration::from_millis(250));
        t.join().unwrap();

        let held = VolumeLock::acquire(&state, "vol-4", vol).unwrap();
        state
            .save(&crate::state::Entry {
                id: "vol-4".into(),
                kind: "nbd".into(),
                volume: vol.to_path_buf(),
                header: None,
                pid: crate::process::this_pid(),
                read_only: false,
                fuse_file: None,
                loop_device: None,
                mount_point: None,
                nbd: Some("/s".into()),
                started: 0,
            })
            .unwrap();
        let start = Instant::now();
        let err = VolumeLock::acquire(&state, "vol-4", vol).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a live export is not waited for"
        );
        assert!(err.to_string().contains("served over NBD at /s"), "{err}");
        drop(held);
    }

    #[test]
    fn an_inherited_claim_lasts_as_long_as_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let claim = VolumeLock::acquire(&state, "vol-2", Path::new("/v.img")).unwrap();
        claim.inherit_by_children().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep (coreutils)");
        drop(claim);
        assert!(
            VolumeLock::is_held(&state, "vol-2"),
            "the child lost the claim"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // Other tests of this binary spawn short-lived children on other threads while the
        // descriptor is inheritable; they hold a copy until they exit: allow for that.
        let released = (0..400).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            !VolumeLock::is_held(&state, "vol-2")
        });
        assert!(released, "the claim outlived the child that inherited it");
    }
}
