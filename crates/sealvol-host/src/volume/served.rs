//! Stopping an export (the `__export` process behind an open volume): unmount its file
//! system, detach its loop device, stop the process (which wipes the key), drop its record.
//! `sealvol close` and the volume manager both stop exports through [`stop`].

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
}

/// The export record (in `run`) of the volume file `volume`, if one is open.
pub fn find(run: &StateDir, volume: &Path) -> Option<Entry> {
    let want = std::fs::canonicalize(volume).unwrap_or_else(|_| volume.to_path_buf());
    run.list()
        .into_iter()
        .find(|e| e.volume == want || e.volume == volume)
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
            Busy::Fail => mount::umount(dir, !done.export_was_running).map_err(|e| {
                Error::Invalid(format!(
                    "cannot unmount {}: close the files open under it (`fuser -vm {}` lists them) and try again ({e})",
                    dir.display(),
                    dir.display()
                ))
            })?,
            Busy::RetryThenLazy(wait) => {
                let start = Instant::now();
                loop {
                    match mount::umount(dir, false) {
                        Ok(u) => break u,
                        Err(e) if start.elapsed() < wait => {
                            tracing::info!(mount = %dir.display(), error = %e, "busy; retrying");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => {
                            tracing::warn!(mount = %dir.display(), error = %e, "still busy; detaching lazily");
                            done.lazy = true;
                            break mount::umount(dir, true)?;
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
        let _ = mount::umount(f, true);
    }
    run.remove(&entry.id);
    Ok(done)
}
