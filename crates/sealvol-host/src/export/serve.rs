//! Serving in this process: the FUSE → loop → mount stack and the NBD server, each until
//! SIGTERM or SIGINT, recorded in the runtime directory and holding the volume's claim.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sealvol_export::fuse::{FileExport, FuseOptions};
use sealvol_export::nbd::tls::TlsCreds;
use sealvol_export::nbd::{NbdOptions, Server};

use super::{
    device, Built, MountSpec, Mounted, NbdEndpoint, NbdServing, NbdSpec, Prepared, Ready, Serve,
};
use crate::lock::VolumeLock;
use crate::loopdev::{self, LoopOptions};
use crate::state::{now, Entry, IoCounts, StateDir};
use crate::{crash, mount, process, Error, Result};

/// Serves `prepared` as `serve` until SIGTERM or SIGINT; `ready` is called once it serves.
/// An overlay's last checkpoint is in what it returns, and with `record_checkpoint` also in
/// the runtime directory once it stops (where `close` reads it: a background export's).
pub(super) fn serve_here(
    run: &StateDir,
    prepared: Prepared,
    serve: &Serve,
    tls: Option<TlsCreds>,
    ready: &mut dyn FnMut(&Ready),
    record_checkpoint: bool,
) -> Result<Ready> {
    match serve {
        Serve::Mount(m) => serve_mount(run, prepared, m, ready, record_checkpoint),
        Serve::Nbd(n) => serve_nbd(run, prepared, n, tls, ready, record_checkpoint),
    }
}

/// A flag set by SIGTERM and SIGINT; SIGHUP (a closed terminal) is ignored.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
    }
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    );
    Ok(term)
}

/// What is set up so far, torn down in reverse.
struct Stack<'a> {
    run: &'a StateDir,
    id: String,
    export: Option<FileExport>,
    loop_dev: Option<PathBuf>,
    fuse_file: PathBuf,
    mounted: Option<PathBuf>,
}

impl Stack<'_> {
    /// Unmounts the file system, detaches the loop device, stops the FUSE export. A busy
    /// file system is left as it was (and the error returned).
    fn teardown(&mut self, lazy: bool) -> Result<()> {
        if let Some(dir) = &self.mounted {
            mount::unmount_nofollow(dir, lazy).map_err(|e| {
                Error::Invalid(format!(
                    "cannot unmount {}: close the files open under it (`fuser -vm {}` lists them) and try again ({e})",
                    dir.display(),
                    dir.display()
                ))
            })?;
            self.mounted = None;
        }
        if let Some(dev) = &self.loop_dev {
            loopdev::detach(dev, Some(&self.fuse_file))?;
            self.loop_dev = None;
        }
        if let Some(export) = self.export.take() {
            export.unmount()?;
        }
        self.run.remove(&self.id);
        Ok(())
    }
}

/// FUSE file → loop device → (mkfs) → mount, recorded, until a signal or the FUSE export
/// dies. A set-up that fails is undone before the error returns.
fn serve_mount(
    run: &StateDir,
    prepared: Prepared,
    m: &MountSpec,
    ready: &mut dyn FnMut(&Ready),
    record_checkpoint: bool,
) -> Result<Ready> {
    let plan = prepared.plan.clone();
    let lock = VolumeLock::acquire(run, &plan.id, &plan.volume)?;
    process::set_io_flusher();
    let term = stop_on_signals()?;
    let mount_dir = m.mount_point.as_path();
    let mkfs = m.mkfs.as_deref();
    let mut stack = Stack {
        run,
        id: plan.id.clone(),
        export: None,
        loop_dev: None,
        fuse_file: run.fuse_file(&plan.id),
        mounted: None,
    };
    let mut built: Option<Built> = None;
    let set_up = (|| -> Result<Ready> {
        let b = device(run, prepared)?;
        let dev = b.device.clone();
        let checkpoint = b.checkpoint().map(|c| c.to_string());
        built = Some(b);
        let sector = dev.block_size();
        let size = dev.size();
        // The FUSE file, made anew through the runtime directory and checked to still be
        // that file right before the FUSE mount takes its path. A dead FUSE mount left there
        // by an export that died (we hold the volume's lock, so no live export serves it)
        // is detached first; a planted link is unlinked, never followed.
        let fuse_file = run.make_fuse_file(&plan.id)?;
        let fsname = format!("sealvol:{}", plan.volume.display());
        stack.export = Some(FileExport::mount(
            dev,
            &fuse_file,
            &FuseOptions {
                threads: 4,
                read_only: plan.read_only,
                fsname,
            },
        )?);
        let loop_dev = loopdev::attach(
            &fuse_file,
            &LoopOptions {
                read_only: plan.read_only,
                sector_size: Some(sector),
                // The file system above already caches; a second page cache on the FUSE file
                // only costs copies. Measured (bench/mount.sh): write 601 -> 858 MiB/s.
                direct_io: true,
            },
        )?;
        stack.loop_dev = Some(loop_dev.clone());
        if let Some(t) = mkfs {
            mount::mkfs(&loop_dev, t)?;
        }
        mount::mount(&loop_dev, mount_dir, None, plan.read_only).map_err(|e| Error::MountFs {
            mount_point: mount_dir.to_path_buf(),
            hint: if mkfs.is_none() {
                "; a new volume needs --mkfs ext4"
            } else {
                ""
            },
            source: Box::new(e),
        })?;
        stack.mounted = Some(mount_dir.to_path_buf());
        crash::point("export:mounted");
        run.save(&Entry {
            id: plan.id.clone(),
            kind: if plan.is_verity() { "verity" } else { "mount" }.into(),
            volume: plan.volume.clone(),
            header: plan.header.clone(),
            pid: process::this_pid(),
            read_only: plan.read_only,
            fuse_file: Some(fuse_file.clone()),
            loop_device: Some(loop_dev.clone()),
            mount_point: Some(mount_dir.to_path_buf()),
            nbd: None,
            started: now(),
        })?;
        Ok(Ready::Mounted(Mounted {
            volume: plan.volume.clone(),
            mount_point: mount_dir.to_path_buf(),
            loop_device: loop_dev,
            fuse_file,
            pid: process::this_pid(),
            read_only: plan.read_only,
            size,
            mkfs: mkfs.map(str::to_string),
            checkpoint,
        }))
    })();
    let record = match set_up {
        Ok(r) => r,
        Err(e) => {
            if let Err(t) = stack.teardown(true) {
                tracing::error!(error = %t, "rolling back the set-up failed");
            }
            if let Some(b) = &built {
                b.finish(false);
            }
            return Err(e);
        }
    };
    ready(&record);
    tracing::info!(volume = %plan.volume.display(), mount = %mount_dir.display(), "serving");

    // Serve until told to stop; a busy file system keeps us serving. About once a second
    // the FUSE file's I/O counters go to the runtime directory, when they changed.
    let counters = stack.export.as_ref().map(FileExport::counters);
    let mut written = IoCounts::default();
    let mut result = Ok(record);
    for tick in 1u64.. {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(c) = counters.as_ref().filter(|_| tick % 10 == 0) {
            let s = c.snapshot();
            let now = IoCounts {
                read_bytes: s.read_bytes,
                write_bytes: s.write_bytes,
                reads: s.reads,
                writes: s.writes,
            };
            if now != written {
                match run.save_counts(&plan.id, &now) {
                    Ok(()) => written = now,
                    Err(e) => tracing::debug!(error = %e, "cannot write the I/O counters"),
                }
            }
        }
        let alive = stack.export.as_ref().is_some_and(FileExport::is_running);
        if !alive {
            tracing::error!("the FUSE export ended under us; tearing down");
            let _ = stack.teardown(true);
            result = Err(Error::Export {
                message: format!(
                    "the FUSE export of {} ended unexpectedly",
                    plan.volume.display()
                ),
            });
            break;
        }
        if term.swap(false, Ordering::SeqCst) {
            tracing::info!("stopping");
            match stack.teardown(false) {
                Ok(()) => break,
                Err(e) => tracing::error!(error = %e, "cannot stop yet; still serving"),
            }
        }
    }
    // The file system is unmounted and the loop device gone (their last flush committed):
    // commit whatever is left, and report where the overlay stands.
    let last = built.as_ref().and_then(|b| b.finish(record_checkpoint));
    drop(built);
    drop(lock);
    tracing::info!(checkpoint = ?last.map(|c| c.to_string()), "export stopped; key wiped");
    result.map(|r| match r {
        Ready::Mounted(mut m) => {
            m.checkpoint = last.map(|c| c.to_string()).or(m.checkpoint);
            Ready::Mounted(m)
        }
        other => other,
    })
}

/// The NBD server of `prepared`, recorded, until a signal.
fn serve_nbd(
    run: &StateDir,
    prepared: Prepared,
    n: &NbdSpec,
    tls: Option<TlsCreds>,
    ready: &mut dyn FnMut(&Ready),
    record_checkpoint: bool,
) -> Result<Ready> {
    let plan = prepared.plan.clone();
    let lock = VolumeLock::acquire(run, &plan.id, &plan.volume)?;
    let term = stop_on_signals()?;
    let built = device(run, prepared)?;
    let dev = built.device.clone();
    let tls_on = tls.is_some();
    let opts = NbdOptions {
        read_only: plan.read_only,
        name: n.name.clone(),
        max_connections: n.max_connections as usize,
        handshake_timeout: n.handshake_limit,
        send_timeout: n.send_timeout,
        max_in_flight: usize::try_from(n.max_in_flight).unwrap_or(usize::MAX),
        tls,
        allow_plaintext_tcp: n.insecure_plaintext,
        ..NbdOptions::default()
    };
    let server = match &n.endpoint {
        NbdEndpoint::Socket(p) => Server::bind_unix(dev, p, opts)?,
        NbdEndpoint::Tcp(addr) => Server::bind_tcp(dev, *addr, opts)?,
    };
    let endpoint = server.endpoint();
    let record = (|| -> Result<Ready> {
        run.save(&Entry {
            id: plan.id.clone(),
            kind: "nbd".into(),
            volume: plan.volume.clone(),
            header: plan.header.clone(),
            pid: process::this_pid(),
            read_only: plan.read_only,
            fuse_file: None,
            loop_device: None,
            mount_point: None,
            nbd: Some(endpoint.clone()),
            started: now(),
        })?;
        Ok(Ready::Nbd(NbdServing {
            volume: plan.volume.clone(),
            uri: n.uri(&endpoint),
            endpoint: endpoint.clone(),
            tls: tls_on,
            pid: process::this_pid(),
            read_only: plan.read_only,
            checkpoint: built.checkpoint().map(|c| c.to_string()),
        }))
    })()?;
    ready(&record);
    tracing::info!(volume = %plan.volume.display(), endpoint = %endpoint, "serving over NBD");
    let served = server.serve(&term);
    run.remove(&plan.id);
    drop(server);
    // Every connection has ended: commit what clients wrote and did not flush.
    let last = built.finish(record_checkpoint);
    drop(built); // the device and its key
    drop(lock);
    tracing::info!(checkpoint = ?last.map(|c| c.to_string()), "NBD export stopped; key wiped");
    served.map_err(|e| Error::Export {
        message: format!("the NBD server failed: {e}"),
    })?;
    Ok(match record {
        Ready::Nbd(mut r) => {
            r.checkpoint = last.map(|c| c.to_string()).or(r.checkpoint);
            Ready::Nbd(r)
        }
        other => other,
    })
}
