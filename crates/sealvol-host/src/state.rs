//! Runtime state: which process serves which volume, where, through what.
//!
//! One JSON file per served volume, `<root>/<id>.json`, replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory), so a reader sees the old or the new
//! record, never half of one. `<root>/<id>/` holds the export's runtime files (the FUSE
//! file, its log). The root is `/run/sealvol` unless `SEALVOL_RUN_DIR` names another.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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

/// The state directory.
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
    Ok(format!("vol-{:x}-{:x}", meta.dev(), meta.ino()))
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
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

    /// Creates the directory (mode 0700) if needed.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory.
    pub fn ensure(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::io(format!("cannot create {}", self.root.display()), e))
    }

    /// The runtime directory of volume `id` (created, mode 0700).
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory.
    pub fn runtime_dir(&self, id: &str) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        self.ensure()?;
        let dir = self.root.join(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(dir)
    }

    fn entry_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.json"))
    }

    /// Writes `entry`, replacing any record of the same id atomically.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, entry: &Entry) -> Result<()> {
        self.ensure()?;
        let path = self.entry_path(&entry.id);
        let tmp = self.root.join(format!(".{}.json.tmp", entry.id));
        let json = serde_json::to_vec_pretty(entry).expect("state entries serialise");
        let io = |e| Error::io(format!("cannot write {}", path.display()), e);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// The record of `id`, if any (an unreadable record counts as none).
    pub fn load(&self, id: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.entry_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every record.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<Entry> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let id = name.strip_suffix(".json")?;
                (!id.starts_with('.')).then(|| self.load(id))?
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Removes the record of `id` and its runtime directory (whatever is left in it).
    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.entry_path(id));
        let dir = self.root.join(id);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
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
        state.remove("vol-1-2");
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
