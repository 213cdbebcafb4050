//! Stopping an export (a background export, or a process serving in the foreground):
//! unmount its file system, detach its loop device, stop the process (which wipes the key),
//! drop its record; and clearing what exports that died left in the runtime directory.
//! [`super::close`], the volume manager and the VM manager all stop exports through
//! [`stop`].

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lock::VolumeLock;
use crate::state::{Entry, StateDir};
use crate::{loopdev, mount, process, Error, Result};

/// What to do when the file system is busy (a process has a file open under it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Fail and change nothing (`sealvol close`).
    Fail,
    /// Retry for this long, then detach lazily (`umount -l`) and, if the export will not stop
    /// on SIGTERM, kill it: the file system's users then see I/O errors (`volume destroy`).
    RetryThenLazy(Duration),
}

/// What [`stop`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// The file system was unmounted.
    pub unmounted: bool,
    /// ... lazily, because it stayed busy.
    pub lazy: bool,
    /// The export process was running.
    pub export_was_running: bool,
    /// It had to be killed (SIGKILL) because it did not stop on SIGTERM.
    pub killed: bool,
    /// An overlay's last durable checkpoint, as the export recorded it when it stopped (or
    /// at its last flush, when it died).
    pub checkpoint: Option<sealvol_overlay::Checkpoint>,
}

/// The export record (in `run`) of the volume file `volume`, if one is open. `volume` is
/// compared as recorded (exports record canonical paths) and never resolved: a link
/// planted at a path must not lead to another volume's export.
pub fn find(run: &StateDir, volume: &Path) -> Option<Entry> {
    run.list().into_iter().find(|e| e.volume == volume)
}

/// Whether the export behind `entry` is alive (its process runs and holds the volume lock).
pub fn alive(run: &StateDir, entry: &Entry) -> bool {
    process::alive(entry.pid) && VolumeLock::is_held(run, &entry.id)
}

/// Stops the export recorded in `entry`: unmount, detach the loop device, SIGTERM the
/// process (up to `stop_timeout`), remove the record.
///
/// # Errors
/// With [`Busy::Fail`]: [`Error::Invalid`] when the file system is busy (nothing changed) or
/// the process does not stop. [`Error::Command`] when `losetup`/`umount` fail otherwise.
pub fn stop(run: &StateDir, entry: &Entry, busy: Busy, stop_timeout: Duration) -> Result<Stopped> {
    let mut done = Stopped {
        export_was_running: alive(run, entry),
        ..Stopped::default()
    };
    if let Some(dir) = &entry.mount_point {
        done.unmounted = match busy {
            Busy::Fail => mount::unmount_nofollow(dir, !done.export_was_running).map_err(|e| {
                Error::Invalid(format!(
                    "cannot unmount {}: close the files open under it (`fuser -vm {}` lists them) and try again ({e})",
                    dir.display(),
                    dir.display()
                ))
            })?,
            Busy::RetryThenLazy(wait) => {
                let start = Instant::now();
                loop {
                    match mount::unmount_nofollow(dir, false) {
                        Ok(u) => break u,
                        Err(e) if start.elapsed() < wait => {
                            tracing::info!(mount = %dir.display(), error = %e, "busy; retrying");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => {
                            tracing::warn!(mount = %dir.display(), error = %e, "still busy; detaching lazily");
                            done.lazy = true;
                            break mount::unmount_nofollow(dir, true)?;
                        }
                    }
                }
            }
        };
    }
    if let Some(dev) = &entry.loop_device {
        loopdev::detach(dev, entry.fuse_file.as_deref())?;
    }
    if done.export_was_running && !process::terminate(entry.pid, stop_timeout) {
        match busy {
            Busy::Fail => {
                return Err(Error::Invalid(format!(
                    "the export process {} of {} did not stop within {} s; see {}",
                    entry.pid,
                    entry.volume.display(),
                    stop_timeout.as_secs(),
                    run.root().join(&entry.id).join("export.log").display()
                )))
            }
            Busy::RetryThenLazy(_) => {
                tracing::warn!(
                    pid = entry.pid,
                    "export did not stop on SIGTERM; killing it"
                );
                process::kill(entry.pid);
                process::wait_gone(entry.pid, Duration::from_secs(10));
                done.killed = true;
            }
        }
    }
    // The export is gone now. If it could not unmount its FUSE file (it died, was killed, or
    // the loop device on top was still busy after a lazy unmount), a dead FUSE mount is left
    // behind, and the next export at this path would fail with ENOTCONN: take it away.
    if let Some(f) = &entry.fuse_file {
        let _ = mount::unmount_nofollow(f, true);
    }
    done.checkpoint = run.checkpoint(&entry.id);
    run.remove(&entry.id);
    // The claim's lock file, once nobody holds it.
    if let Ok(Some(dir)) = run.existing() {
        let _ = crate::lock::remove_if_free(&dir, &format!("{}.lock", entry.id));
    }
    Ok(done)
}

/// What [`clear_runtime`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    /// A mount, a loop device or a FUSE mount was left and has been taken away (not only
    /// files).
    pub mounts: bool,
    /// What was done, in words, one entry per action.
    pub actions: Vec<String>,
}

/// Clears what an export of runtime id `id` left when it died, under the volume's claim:
/// mounts of loop devices on its FUSE file, those loop devices, a dead FUSE mount, its
/// record, its runtime directory (FUSE file, log) and its lock file. Does nothing when a
/// process holds the claim: a live export, one being set up, or a VM's qemu reading the
/// volume.
///
/// # Errors
/// The first step that fails.
pub fn clear_runtime(run: &StateDir, id: &str) -> Result<Cleared> {
    let Some(dir) = run.existing()? else {
        return Ok(Cleared::default());
    };
    let fuse = run.fuse_file(id);
    let record_name = format!("{id}.json");
    let lock_name = format!("{id}.lock");
    let anything = [record_name.as_str(), id, lock_name.as_str()]
        .iter()
        .any(|n| dir.exists(n))
        || mount::mounted_at(&fuse)
        || !loopdev::find_by_backing(&fuse).is_empty();
    if !anything {
        return Ok(Cleared::default());
    }
    let claim = match VolumeLock::acquire(run, id, Path::new(id)) {
        Ok(c) => c,
        Err(Error::AlreadyOpen { .. }) => return Ok(Cleared::default()),
        Err(e) => return Err(e),
    };
    let mut done = Vec::new();
    let record = run.load(id);
    // Whatever a loop device on the FUSE file is mounted on: the record's mount point, or
    // one the export made before it could record it.
    for dev in loopdev::find_by_backing(&fuse) {
        for point in mount::mounted_from(dev.to_string_lossy().as_ref()) {
            mount::unmount_nofollow(&point, true)?;
            done.push(format!(
                "unmounted {} ({} on a dead export's FUSE file)",
                point.display(),
                dev.display()
            ));
        }
        if loopdev::detach(&dev, Some(&fuse))? {
            done.push(format!(
                "detached {} (a loop device on a dead export's FUSE file)",
                dev.display()
            ));
        }
    }
    if mount::mounted_at(&fuse) {
        mount::unmount_nofollow(&fuse, true)?;
        done.push(format!(
            "detached the dead FUSE mount on {}",
            fuse.display()
        ));
    }
    let mounts = !done.is_empty();
    if record.is_some() || dir.exists(&record_name) {
        done.push(match &record {
            Some(e) => format!("removed the record of export {}, which had died", e.pid),
            None => format!("removed {}", dir.join(&record_name).display()),
        });
    }
    if dir.exists(id) {
        done.push(format!(
            "removed the runtime directory {} (FUSE file, log)",
            dir.join(id).display()
        ));
    }
    dir.remove_file(&record_name)?;
    dir.remove_tree(id)?;
    dir.sync()?;
    if claim.release_and_remove()? && done.is_empty() {
        done.push(format!(
            "removed the lock file {} that no process held",
            dir.join(&lock_name).display()
        ));
    }
    Ok(Cleared {
        mounts,
        actions: done,
    })
}

/// Clears every runtime entry of `run` whose export died ([`clear_runtime`] for each id
/// with a record, a directory or a lock file). Returns `(id, what was done)`.
///
/// # Errors
/// The first step that fails.
pub fn sweep_runtime(run: &StateDir) -> Result<Vec<(String, String)>> {
    // An unsafe runtime directory is refused (with the fix), not skipped.
    if run.existing()?.is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for id in run.ids() {
        for what in clear_runtime(run, &id)?.actions {
            tracing::warn!(id = %id, action = %what, "sweep of the runtime directory");
            out.push((id.clone(), what));
        }
    }
    Ok(out)
}
