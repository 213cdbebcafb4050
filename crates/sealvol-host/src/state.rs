//! Runtime state: which process serves which volume, where, through what.
//!
//! One JSON file per served volume, `<root>/<id>.json`, replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory), so a reader sees the old or the new
//! record, never half of one. `<root>/<id>/` holds the export's runtime files (the FUSE
//! file, its log); `<root>/<id>.lock` is the volume's claim ([`crate::lock`]). The root is
//! `/run/sealvol` unless `SEALVOL_RUN_DIR` names another; it is made 0700 and refused when
//! others could write in it, and everything in it goes through a [`SafeDir`] (no symbolic
//! link is ever followed, no planted file ever written through).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::safe_dir::{canonical_prefix, FileId, SafeDir};
use crate::{mount, Error, Result};

/// Seconds since the epoch (0 when the clock is before it): what records and runtime entries
/// say about when something started.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Default state directory.
pub const DEFAULT_ROOT: &str = "/run/sealvol";

/// What is known about one served volume. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Stable id of the volume file ([`volume_id`]).
    pub id: String,
    /// How it is served: `"mount"` (FUSE + loop + mount) or `"nbd"`.
    pub kind: String,
    /// The volume file (canonical path).
    pub volume: PathBuf,
    /// Its detached header, if any.
    pub header: Option<PathBuf>,
    /// The process serving it.
    pub pid: u32,
    /// Served read-only.
    pub read_only: bool,
    /// The FUSE file exporting the plaintext.
    pub fuse_file: Option<PathBuf>,
    /// The loop device on the FUSE file.
    pub loop_device: Option<PathBuf>,
    /// Where the file system is mounted.
    pub mount_point: Option<PathBuf>,
    /// NBD endpoint (unix socket path or `host:port`).
    pub nbd: Option<String>,
    /// Seconds since the epoch when it was opened.
    pub started: u64,
}

/// Plaintext bytes and requests a mounted export served since it started (its FUSE file's
/// counters), as the export last wrote them to `<root>/<id>/io.json` (about once a second,
/// when they changed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounts {
    /// Plaintext bytes read.
    pub read_bytes: u64,
    /// Plaintext bytes written.
    pub write_bytes: u64,
    /// Read requests served.
    pub reads: u64,
    /// Write requests served.
    pub writes: u64,
}

/// The name of the I/O counters file in a volume's runtime directory.
pub const IO_COUNTS: &str = "io.json";

/// The runtime directory (`/run/sealvol`): every entry of it is made, read and removed
/// through a [`SafeDir`], never through a symbolic link.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// The id of a volume file: `vol-<device>-<inode>`, the same whatever path names it.
///
/// # Errors
/// [`Error::Invalid`] when the file does not exist.
pub fn volume_id(volume: &Path) -> Result<String> {
    let meta = std::fs::metadata(volume).map_err(|_| {
        Error::Invalid(format!(
            "the volume {} does not exist; check the path",
            volume.display()
        ))
    })?;
    Ok(id_of(meta.dev(), meta.ino()))
}

/// The runtime id of the file with identity `id` (see [`volume_id`]).
pub fn runtime_id(id: FileId) -> String {
    id_of(id.dev, id.ino)
}

fn id_of(dev: u64, ino: u64) -> String {
    format!("vol-{dev:x}-{ino:x}")
}

/// The name of the export log in a volume's runtime directory.
pub const LOG: &str = "export.log";
/// The name of the FUSE file in a volume's runtime directory.
pub const FUSE_FILE: &str = "disk";

impl StateDir {
    /// The runtime directory at `root` (its existing part made canonical: the form mount
    /// tables and loop devices report paths in).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir {
            root: canonical_prefix(&root.into()),
        }
    }

    /// `$SEALVOL_RUN_DIR`, else [`DEFAULT_ROOT`].
    pub fn from_env() -> Self {
        match std::env::var_os("SEALVOL_RUN_DIR") {
            Some(d) if !d.is_empty() => Self::new(d),
            _ => Self::new(DEFAULT_ROOT),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens the directory, creating it (mode 0700) when missing.
    ///
    /// # Errors
    /// [`Error::UnsafeDir`] when it is owned by another user or writable by group or
    /// others; [`Error::Io`].
    pub fn dir(&self) -> Result<SafeDir> {
        SafeDir::open_root(&self.root)
    }

    /// Opens the directory if it exists.
    ///
    /// # Errors
    /// As [`StateDir::dir`].
    pub fn existing(&self) -> Result<Option<SafeDir>> {
        SafeDir::open_existing_root(&self.root)
    }

    /// Creates the directory (mode 0700) if needed, and checks it.
    ///
    /// # Errors
    /// As [`StateDir::dir`].
    pub fn ensure(&self) -> Result<()> {
        self.dir().map(|_| ())
    }

    /// The runtime directory of volume `id` (created, mode 0700; a link planted in its
    /// place is removed, never followed).
    ///
    /// # Errors
    /// As [`StateDir::dir`].
    pub fn runtime(&self, id: &str) -> Result<SafeDir> {
        self.dir()?.ensure_dir_replacing(id, 0o700)
    }

    /// The path of the runtime directory of volume `id` (created, as [`StateDir::runtime`]).
    ///
    /// # Errors
    /// As [`StateDir::dir`].
    pub fn runtime_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(self.runtime(id)?.path().to_path_buf())
    }

    /// Where the FUSE file of volume `id` is (or would be).
    pub fn fuse_file(&self, id: &str) -> PathBuf {
        self.root.join(id).join(FUSE_FILE)
    }

    /// Where the export log of volume `id` is (or would be).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.root.join(id).join(LOG)
    }

    /// A new, empty export log for volume `id` (mode 0600; whatever was there, a planted
    /// link included, is unlinked first, never written through).
    ///
    /// # Errors
    /// As [`StateDir::dir`].
    pub fn create_log(&self, id: &str) -> Result<(PathBuf, File)> {
        let rt = self.runtime(id)?;
        let f = rt.replace_file(LOG, 0o600)?;
        Ok((rt.join(LOG), f))
    }

    /// Makes the FUSE file of volume `id` anew (mode 0600) and returns its path, checked
    /// to still name that file, for the FUSE mount. A dead FUSE mount left there by an
    /// export that died is detached first (the caller holds the volume's lock, so no live
    /// export uses it); a planted link is unlinked, never followed.
    ///
    /// # Errors
    /// As [`StateDir::dir`]; [`Error::Io`] when the dead mount cannot be detached.
    pub fn make_fuse_file(&self, id: &str) -> Result<PathBuf> {
        let rt = self.runtime(id)?;
        let path = rt.join(FUSE_FILE);
        if mount::mounted_at(&path) {
            tracing::warn!(path = %path.display(), "detaching a dead FUSE mount left by an earlier export");
            mount::unmount_nofollow(&path, true)?;
        }
        let f = rt.replace_file(FUSE_FILE, 0o600)?;
        let made = FileId::of_file(&f)?;
        drop(f);
        rt.verify(FUSE_FILE, made)
    }

    /// Replaces the I/O counters of volume `id`'s export (atomically, mode 0600).
    ///
    /// # Errors
    /// As [`StateDir::dir`]; [`Error::Io`] naming the file.
    pub fn save_counts(&self, id: &str, counts: &IoCounts) -> Result<()> {
        let json = serde_json::to_vec(counts).expect("counters serialise");
        self.runtime(id)?.write_atomic(IO_COUNTS, &json, 0o600)
    }

    /// The I/O counters volume `id`'s export last wrote, if any (an unreadable file, or a
    /// link planted in its place, counts as none).
    pub fn counts(&self, id: &str) -> Option<IoCounts> {
        let dir = self.existing().ok()??.open_dir(id).ok()??;
        let bytes = dir.read(IO_COUNTS).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records the overlay checkpoint of volume `id`'s export (atomically, mode 0600):
    /// [`crate::overlay::CHECKPOINT_FILE`] in its runtime directory.
    ///
    /// # Errors
    /// As [`StateDir::dir`]; [`Error::Io`] naming the file.
    pub fn save_checkpoint(&self, id: &str, cp: &sealvol_overlay::Checkpoint) -> Result<()> {
        self.runtime(id)?.write_atomic(
            crate::overlay::CHECKPOINT_FILE,
            cp.to_string().as_bytes(),
            0o600,
        )
    }

    /// The overlay checkpoint volume `id`'s export last recorded, if any (an unreadable or
    /// unparsable file, or a link planted in its place, counts as none).
    pub fn checkpoint(&self, id: &str) -> Option<sealvol_overlay::Checkpoint> {
        let dir = self.existing().ok()??.open_dir(id).ok()??;
        let bytes = dir.read(crate::overlay::CHECKPOINT_FILE).ok()??;
        std::str::from_utf8(&bytes).ok()?.parse().ok()
    }

    fn entry_name(id: &str) -> String {
        format!("{id}.json")
    }

    /// Writes `entry`, replacing any record of the same id atomically.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, entry: &Entry) -> Result<()> {
        let json = serde_json::to_vec_pretty(entry).expect("state entries serialise");
        self.dir()?
            .write_atomic(&Self::entry_name(&entry.id), &json, 0o600)
    }

    /// The record of `id`, if any (an unreadable record, or a link planted in its place,
    /// counts as none and is logged).
    pub fn load(&self, id: &str) -> Option<Entry> {
        let dir = self.existing().ok()??;
        Self::load_in(&dir, id)
    }

    fn load_in(dir: &SafeDir, id: &str) -> Option<Entry> {
        let bytes = match dir.read(&Self::entry_name(id)) {
            Ok(b) => b?,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a runtime record");
                return None;
            }
        };
        serde_json::from_slice::<Entry>(&bytes)
            .ok()
            .filter(|e| e.id == id)
    }

    /// Every record.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(Some(dir)) = self.existing() else {
            return Vec::new();
        };
        let Ok(entries) = dir.entries() else {
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|(name, _)| {
                let id = name.strip_suffix(".json")?;
                (!id.starts_with('.')).then(|| Self::load_in(&dir, id))?
            })
            .collect()
    }

    /// The names of runtime directories, records and lock files, by volume id (for the
    /// sweep): every id with anything in the directory.
    pub fn ids(&self) -> Vec<String> {
        let Ok(Some(dir)) = self.existing() else {
            return Vec::new();
        };
        let mut ids: Vec<String> = dir
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, _)| {
                let id = name
                    .strip_suffix(".json")
                    .or_else(|| name.strip_suffix(".lock"))
                    .unwrap_or(&name);
                (id.starts_with("vol-") && !id.contains('.')).then(|| id.to_string())
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Removes the record of `id` and its runtime directory (whatever is left in it; a
    /// link in it is removed, never followed). Best effort.
    pub fn remove(&self, id: &str) {
        let Ok(Some(dir)) = self.existing() else {
            return;
        };
        if let Err(e) = dir.remove_file(&Self::entry_name(id)) {
            tracing::warn!(error = %e, "cannot remove a runtime record");
        }
        if let Err(e) = dir.remove_tree(id) {
            tracing::warn!(error = %e, "cannot remove a runtime directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("run"));
        assert!(state.list().is_empty());
        let e = Entry {
            id: "vol-1-2".into(),
            kind: "mount".into(),
            volume: "/v.img".into(),
            header: None,
            pid: 42,
            read_only: false,
            fuse_file: Some("/run/x/disk".into()),
            loop_device: Some("/dev/loop3".into()),
            mount_point: Some("/mnt".into()),
            nbd: None,
            started: 1,
        };
        state.save(&e).unwrap();
        assert_eq!(state.load("vol-1-2"), Some(e.clone()));
        assert_eq!(state.list(), vec![e]);
        state.runtime_dir("vol-1-2").unwrap();
        assert_eq!(state.counts("vol-1-2"), None);
        let c = IoCounts {
            read_bytes: 4096,
            write_bytes: 1 << 20,
            reads: 1,
            writes: 2,
        };
        state.save_counts("vol-1-2", &c).unwrap();
        assert_eq!(state.counts("vol-1-2"), Some(c));
        state.remove("vol-1-2");
        assert_eq!(state.counts("vol-1-2"), None);
        assert!(state.list().is_empty());
        assert!(!dir.path().join("run/vol-1-2").exists());
    }

    #[test]
    fn volume_ids_follow_the_file_not_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v");
        std::fs::write(&f, b"x").unwrap();
        let a = volume_id(&f).unwrap();
        let b = volume_id(&dir.path().join(".").join("v")).unwrap();
        assert_eq!(a, b);
        assert!(volume_id(&dir.path().join("missing")).is_err());
    }
}
