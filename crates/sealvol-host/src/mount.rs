//! `mkfs`, `mount` and `umount` (util-linux, e2fsprogs), and what `/proc/self/mountinfo` says.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run;
use crate::{Error, Result};

/// Mount points listed in `/proc/self/mountinfo` (field 5, unescaped), with their sources.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let source = unescape(fields.get(sep + 2)?);
            Some((PathBuf::from(point), source))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether something is mounted on `path`.
pub fn is_mountpoint(path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts().iter().any(|(p, _)| *p == path)
}

/// The source of what is mounted on exactly `path` (the top of a stack of mounts), read
/// from `/proc/self/mountinfo` without resolving `path`: for paths sealvol builds from a
/// canonical root, never for a user's.
pub fn source_at(path: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|(p, _)| p == path)
        .map(|(_, s)| s)
}

/// Whether something is mounted on exactly `path` (not resolved; see [`source_at`]).
pub fn mounted_at(path: &Path) -> bool {
    source_at(path).is_some()
}

/// The mount points whose source is `source` (a loop device, say).
pub fn mounted_from(source: &str) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|(_, s)| s == source)
        .map(|(p, _)| p)
        .collect()
}

/// Whether the FUSE file system mounted on `path` answers: `statfs` goes to its server
/// every time (a `stat` may be answered from cached attributes), and a mount whose server
/// died fails it with `ENOTCONN`.
pub fn fuse_answers(path: &Path) -> bool {
    !matches!(rustix::fs::statfs(path), Err(rustix::io::Errno::NOTCONN))
}

/// Unmounts what is mounted on `path` without following a symbolic link there
/// (`umount2(UMOUNT_NOFOLLOW)`, with `MNT_DETACH` when `lazy`); returns whether something
/// was mounted. For sealvol's own mount points and FUSE files (a dead FUSE mount included).
///
/// # Errors
/// [`Error::Io`] naming the path (busy: a process has a file open below it).
pub fn unmount_nofollow(path: &Path, lazy: bool) -> Result<bool> {
    use rustix::mount::UnmountFlags;
    if !mounted_at(path) {
        return Ok(false);
    }
    tracing::info!(path = %path.display(), lazy, "unmounting");
    let mut flags = UnmountFlags::NOFOLLOW;
    if lazy {
        flags |= UnmountFlags::DETACH;
    }
    match rustix::mount::unmount(path, flags) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io(
            format!(
                "cannot unmount {} (if it is busy, `fuser -vm {}` lists its users)",
                path.display(),
                path.display()
            ),
            e.into(),
        )),
    }
}

/// Checks that `dir` can take a mount: an existing, empty directory that nothing is mounted on.
///
/// # Errors
/// [`Error::Invalid`] saying which of those it is not and what to do.
pub fn check_mount_point(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|_| {
        Error::Invalid(format!(
            "the mount point {} does not exist; create it with `mkdir -p {}`",
            dir.display(),
            dir.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "the mount point {} is not a directory; give an empty directory",
            dir.display()
        )));
    }
    if is_mountpoint(dir) {
        return Err(Error::Invalid(format!(
            "something is already mounted on {}; unmount it or choose another directory",
            dir.display()
        )));
    }
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
    if entries.next().is_some() {
        return Err(Error::Invalid(format!(
            "the mount point {} is not empty; give an empty directory (sealvol does not mount over files)",
            dir.display()
        )));
    }
    Ok(())
}

/// Makes a file system of type `fstype` on `dev` (`mkfs.<fstype>`, quiet, no discard pass).
///
/// # Errors
/// [`Error::Invalid`] for a type name that is not a plain word; [`Error::Command`] when mkfs
/// fails.
pub fn mkfs(dev: &Path, fstype: &str) -> Result<()> {
    if fstype.is_empty() || !fstype.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::Invalid(format!(
            "{fstype:?} is not a file system type; use ext4, ext3, ext2, xfs or btrfs"
        )));
    }
    let mut cmd = Command::new(format!("mkfs.{fstype}"));
    match fstype {
        // nodiscard: the discard would be written out as encrypted zeros anyway.
        "ext2" | "ext3" | "ext4" => cmd.args(["-q", "-F", "-E", "nodiscard"]),
        "xfs" => cmd.args(["-q", "-f", "-K"]),
        "btrfs" => cmd.args(["-q", "-f", "-K"]),
        _ => &mut cmd,
    };
    cmd.arg(dev);
    run(&mut cmd).map(|_| ())
}

/// Mounts `dev` on `dir` (type detected unless given).
///
/// # Errors
/// [`Error::Command`] with mount's message (for example: no file system on the device).
pub fn mount(dev: &Path, dir: &Path, fstype: Option<&str>, read_only: bool) -> Result<()> {
    let mut cmd = Command::new("mount");
    if let Some(t) = fstype {
        cmd.args(["-t", t]);
    }
    if read_only {
        cmd.args(["-o", "ro"]);
    }
    cmd.arg(dev).arg(dir);
    run(&mut cmd).map(|_| ())
}

/// Unmounts `dir` if something is mounted there; returns whether it did. With `lazy`, a busy
/// mount is detached now and cleaned up when its last user goes (`umount -l`).
///
/// # Errors
/// [`Error::Command`] with umount's message (typically "target is busy": a process has a
/// file open or its working directory below `dir`; `fuser -vm DIR` names it).
pub fn umount(dir: &Path, lazy: bool) -> Result<bool> {
    if !is_mountpoint(dir) {
        return Ok(false);
    }
    let mut cmd = Command::new("umount");
    if lazy {
        cmd.arg("--lazy");
    }
    cmd.arg(dir);
    run(&mut cmd)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/tail\\04"), "/tail\\04");
    }

    #[test]
    fn root_is_a_mountpoint_and_mount_points_are_checked() {
        assert!(is_mountpoint(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        check_mount_point(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let err = check_mount_point(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        let err = check_mount_point(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = check_mount_point(&dir.path().join("f"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn mkfs_refuses_odd_types() {
        assert!(mkfs(Path::new("/dev/null"), "ext4;rm").is_err());
    }
}
