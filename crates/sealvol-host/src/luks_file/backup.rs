//! The header area as a file: backup, restore, and repair of a damaged LUKS2 copy.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sealvol_luks::AnyVolume;

use super::{Access, HeaderFile, LuksFile};
use crate::{Error, Result};

impl LuksFile {
    /// Writes the header area (binary headers, metadata, keyslots) to `to`, a new file of
    /// mode 0600 (it can unlock the volume with any key it held). Returns its length.
    ///
    /// # Errors
    /// [`Error::Io`] when `to` exists (it is never overwritten) or cannot be written (a
    /// partial file is removed); those of [`LuksFile::open`].
    pub fn header_backup(&self, to: &Path) -> Result<u64> {
        let mut open = self.open_verb(Access::Read)?;
        let bytes = open.vol.header_backup()?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(|e| {
                Error::io(
                    format!("cannot create {} (it must not exist yet)", to.display()),
                    e,
                )
            })?;
        if let Err(e) = f.write_all(&bytes).and_then(|()| f.sync_all()) {
            let _ = std::fs::remove_file(to);
            return Err(Error::io(format!("cannot write {}", to.display()), e));
        }
        Ok(bytes.len() as u64)
    }

    /// Writes the header backup in `backup` onto the header file, after validating it
    /// whole (either version, both copies). Returns the backup's volume UUID.
    ///
    /// # Errors
    /// [`Error::NotAHeader`] for a backup that is not a usable header;
    /// [`Error::NotConfirmed`] (after the backup was validated, before any write) unless
    /// `confirmed`; [`Error::Luks`] when the header file holds the other LUKS version.
    pub fn header_restore(&self, backup: &Path, confirmed: bool) -> Result<String> {
        let bytes = std::fs::read(backup)
            .map_err(|e| Error::io(format!("cannot read {}", backup.display()), e))?;
        let parsed = AnyVolume::open(std::io::Cursor::new(bytes.clone())).map_err(|e| {
            Error::NotAHeader {
                path: backup.to_path_buf(),
                hint: "",
                source: Box::new(e),
            }
        })?;
        let uuid = parsed.uuid().to_string();
        let path = self.header_file();
        if !confirmed {
            return Err(Error::NotConfirmed {
                question: format!(
                    "This replaces the header of {} with the backup (UUID {uuid}).",
                    path.display()
                ),
            });
        }
        let file = Self::open_file(path, Access::Write)?;
        AnyVolume::header_restore(HeaderFile::new(file), &bytes)?;
        tracing::info!(uuid, "header restored");
        Ok(uuid)
    }

    /// Rewrites a damaged LUKS2 header copy from the valid one; `false` when both were
    /// valid (and for LUKS1, which has one copy).
    ///
    /// # Errors
    /// Those of [`LuksFile::open`]; [`Error::Luks`] when the write fails.
    pub fn repair(&self) -> Result<bool> {
        Ok(self.open_verb(Access::Write)?.vol.repair()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::luks_file::FormatRequest;
    use sealvol_luks::KdfPolicy;
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::PermissionsExt;

    const KEY: &[u8] = &[0xff; 32];
    const KEY2: &[u8] = &[0xfe; 32];

    fn formatted(dir: &Path) -> LuksFile {
        let files = LuksFile::new(dir.join("vol.img"), None);
        let request = FormatRequest {
            size: Some(64 << 10),
            ..FormatRequest::default()
        };
        files.format(&request, KEY).unwrap();
        files
    }

    fn write_at(path: &Path, at: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn backup_is_exclusive_0600_and_restores_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path());
        let backup = dir.path().join("backup");
        let len = files.header_backup(&backup).unwrap();
        assert_eq!(std::fs::metadata(&backup).unwrap().len(), len);
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never over an existing file, which stays as it was.
        let e = files.header_backup(&backup).unwrap_err();
        assert!(e.to_string().contains("must not exist"), "{e}");
        assert_eq!(std::fs::metadata(&backup).unwrap().len(), len);

        // Change the keys, then restore: the old key opens again.
        files
            .change_key(KEY, KEY2, &KdfPolicy::default(), None)
            .unwrap();
        assert!(files.test_key(KEY, None).is_err());
        let uuid = files
            .open(Access::Read, files.limits())
            .unwrap()
            .volume()
            .uuid()
            .to_string();
        assert!(matches!(
            files.header_restore(&backup, false),
            Err(Error::NotConfirmed { question }) if question.contains(&uuid)
        ));
        assert!(files.test_key(KEY, None).is_err(), "unconfirmed: unchanged");
        assert_eq!(files.header_restore(&backup, true).unwrap(), uuid);
        assert_eq!(files.test_key(KEY, None).unwrap(), 0);
    }

    #[test]
    fn a_damaged_backup_is_refused_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path());
        let backup = dir.path().join("backup");
        files.header_backup(&backup).unwrap();
        // Both copies' binary headers damaged: not a header at all.
        write_at(&backup, 0x18, &[0xa5; 0x40]);
        write_at(&backup, 0x4000 + 0x18, &[0xa5; 0x40]);
        let before = std::fs::read(files.data()).unwrap();
        for confirmed in [false, true] {
            let e = files.header_restore(&backup, confirmed).unwrap_err();
            assert!(matches!(e, Error::NotAHeader { .. }), "{e}");
        }
        assert!(std::fs::read(files.data()).unwrap() == before);
    }

    #[test]
    fn repair_rewrites_a_damaged_copy_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path());
        assert!(!files.repair().unwrap());
        write_at(files.data(), 0x18, &[0xa5; 0x40]);
        let open = files.open(Access::Read, files.limits()).unwrap();
        assert!(open.damaged_copy().unwrap().contains("primary"));
        assert_eq!(files.test_key(KEY, None).unwrap(), 0);
        assert!(files.repair().unwrap());
        let open = files.open(Access::Read, files.limits()).unwrap();
        assert!(open.damaged_copy().is_none());
        assert!(!files.repair().unwrap());
    }
}
