//! Loop devices through `losetup` (util-linux).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run;
use crate::{Error, Result};

/// How to attach a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoopOptions {
    /// Attach read-only.
    pub read_only: bool,
    /// Logical sector size of the loop device (512 when `None`); 4096 lets a file system on
    /// it write whole 4096-byte encryption sectors.
    pub sector_size: Option<u32>,
    /// Let the loop driver use direct I/O on the file (no second page cache).
    pub direct_io: bool,
}

/// Attaches `file` to the first free loop device and returns the device's path.
///
/// # Errors
/// [`Error::Command`] with losetup's message (no free loop device, no permission, ...).
pub fn attach(file: &Path, opts: &LoopOptions) -> Result<PathBuf> {
    let mut cmd = Command::new("losetup");
    cmd.args(["--find", "--show"]);
    if opts.read_only {
        cmd.arg("--read-only");
    }
    if let Some(ss) = opts.sector_size {
        cmd.arg(format!("--sector-size={ss}"));
    }
    if opts.direct_io {
        cmd.arg("--direct-io=on");
    }
    cmd.arg(file);
    let out = run(&mut cmd)?;
    let dev = out.trim();
    if !dev.starts_with("/dev/") {
        return Err(Error::Invalid(format!(
            "losetup printed {dev:?} instead of a device path"
        )));
    }
    Ok(PathBuf::from(dev))
}

/// The file behind loop device `dev`, or `None` when it is not attached.
pub fn backing_file(dev: &Path) -> Option<PathBuf> {
    let name = dev.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Loop devices whose backing file is `file`, compared as the kernel reports it and not
/// resolved (a symbolic link planted at `file` must not lead to another file's devices):
/// give the canonical path.
pub fn find_by_backing(file: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.starts_with("loop")
                .then(|| PathBuf::from(format!("/dev/{name}")))
        })
        .filter(|dev| backing_file(dev).is_some_and(|b| b == file))
        .collect();
    found.sort();
    found
}

/// Detaches `dev` if it is attached (to `expected`, when given). Returns whether it did.
///
/// A device that now serves another file is left alone and counts as already detached: our
/// attachment is gone (someone detached it, and the kernel handed the free device to a new
/// user), and detaching it would pull a disk from under someone else.
///
/// # Errors
/// [`Error::Command`] when losetup fails.
pub fn detach(dev: &Path, expected: Option<&Path>) -> Result<bool> {
    let Some(backing) = backing_file(dev) else {
        return Ok(false);
    };
    if let Some(want) = expected {
        if backing != want {
            tracing::info!(
                device = %dev.display(),
                serves = %backing.display(),
                expected = %want.display(),
                "loop device was already detached and reused; leaving it alone"
            );
            return Ok(false);
        }
    }
    run(Command::new("losetup").arg("--detach").arg(dev))?;
    Ok(true)
}
