//! A LUKS volume on files: the data file and, when the header is detached, the header file.
//!
//! [`LuksFile`] names the files; [`LuksFile::open`] reads and validates the header (LUKS1 or
//! LUKS2, both copies) under the caller's [`KdfLimits`] and gives an [`OpenLuks`], which
//! unlocks ([`OpenLuks::unlock`]: a wrong key is [`Error::WrongKey`], nothing changed) and
//! names the data segment only where it lies outside an attached header
//! ([`OpenLuks::data_segment`]). The header is read and written through a [`HeaderFile`]:
//! in debug builds it carries the crash hook the tests use to prove header updates survive a
//! torn write.
//!
//! The verbs of `cryptsetup` are methods of [`LuksFile`], each one whole operation with
//! typed options and a typed result, under the limits of [`LuksFile::with_limits`]:
//! [`format`](LuksFile::format), [`dump`](LuksFile::dump),
//! [`test_key`](LuksFile::test_key), [`add_key`](LuksFile::add_key),
//! [`remove_key`](LuksFile::remove_key), [`change_key`](LuksFile::change_key),
//! [`erase`](LuksFile::erase), [`header_backup`](LuksFile::header_backup),
//! [`header_restore`](LuksFile::header_restore), [`repair`](LuksFile::repair), the tokens
//! ([`token_add`](LuksFile::token_add), [`token_remove`](LuksFile::token_remove),
//! [`token_export`](LuksFile::token_export)), and plaintext in and out
//! ([`import`](LuksFile::import), [`export`](LuksFile::export)). Each checks its inputs and
//! the key before it writes, so a refused operation leaves every file as it was. Keys are
//! bytes the caller read ([`crate::keys::KeySource`] reads them from files, stdin or a
//! descriptor); a key that opens nothing is [`Error::WrongKey`] everywhere. Operations that
//! destroy keys take a `confirmed` flag and answer [`Error::NotConfirmed`] with the question
//! to ask when it is not set. A damaged LUKS2 header copy is reported with `tracing::warn!`
//! ([`OpenLuks::damaged_copy`]).
//!
//! What it does not do: no format rules (those are `sealvol_luks`), no serving (`export`),
//! no prompting and no printing.
//!
//! ```no_run
//! use sealvol_host::luks_file::{Access, LuksFile};
//! let files = LuksFile::new("/srv/vol.img", None);
//! let mut open = files.open(Access::Read, Default::default())?;
//! let unlocked = open.unlock(b"the key", None)?;
//! let segment = open.data_segment()?;
//! let slot = files.test_key(b"the key", None)?;
//! # Ok::<(), sealvol_host::Error>(())
//! ```

mod backup;
mod data;
mod format;
mod keyslots;
mod tokens;

pub use data::{Copied, ExportTo};
pub use format::{FormatRequest, Formatted};
pub use keyslots::{KeyAdded, ERASE_WARNING};

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sealvol_luks::{AnyVolume, DataSegment, HeaderPlacement, KdfLimits, Unlocked};

use crate::{Error, Result};

/// The file that holds a LUKS header, as the format crate sees it: a file plus, in debug
/// builds, the crash hook. With `SEALVOL_TEST_CRASH_AT=header-write:N` the N-th write to the
/// header writes only the first half of its buffer (a torn write) and then the process kills
/// itself with SIGKILL. The variable names a step, never a key. Release builds have no hook.
#[derive(Debug)]
pub struct HeaderFile {
    file: File,
    #[cfg(debug_assertions)]
    crash_at: Option<u64>,
    #[cfg(debug_assertions)]
    writes: u64,
}

impl HeaderFile {
    /// Wraps an open file.
    pub fn new(file: File) -> Self {
        HeaderFile {
            file,
            #[cfg(debug_assertions)]
            crash_at: std::env::var(crate::crash::CRASH_ENV)
                .ok()
                .and_then(|v| v.strip_prefix("header-write:").and_then(|n| n.parse().ok())),
            #[cfg(debug_assertions)]
            writes: 0,
        }
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Read for HeaderFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for HeaderFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Write for HeaderFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        #[cfg(debug_assertions)]
        {
            self.writes += 1;
            if self.crash_at == Some(self.writes) {
                let half = buf.len() / 2;
                self.file.write_all(&buf[..half])?;
                self.file.sync_data()?;
                tracing::warn!(
                    write = self.writes,
                    "test hook: torn header write, killing this process"
                );
                crate::process::kill(crate::process::this_pid());
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl sealvol_luks::Storage for HeaderFile {
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Whether a header is opened to be read or to be changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only: dump, unlock, read data.
    Read,
    /// Read and write: keyslots, tokens, repair (and data, through the data file).
    Write,
}

/// A LUKS volume's files: the data file and, when detached, the header file; and the limits
/// its verbs hold the header's key derivations to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuksFile {
    data: PathBuf,
    header: Option<PathBuf>,
    limits: KdfLimits,
}

impl LuksFile {
    /// The volume whose data is in `data` and whose header is in `header`, or at the start of
    /// `data` when `header` is `None`.
    pub fn new(data: impl Into<PathBuf>, header: Option<PathBuf>) -> Self {
        LuksFile {
            data: data.into(),
            header,
            limits: KdfLimits::default(),
        }
    }

    /// The same files, their verbs holding every unlock to `limits` (default:
    /// [`KdfLimits::default`]).
    pub fn with_limits(self, limits: KdfLimits) -> Self {
        LuksFile { limits, ..self }
    }

    /// The limits the verbs hold unlocks to.
    pub fn limits(&self) -> KdfLimits {
        self.limits
    }

    /// The data file.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The detached header file, if any.
    pub fn detached_header(&self) -> Option<&Path> {
        self.header.as_deref()
    }

    /// The file that holds the header: the detached header, else the data file.
    pub fn header_file(&self) -> &Path {
        self.header.as_deref().unwrap_or(&self.data)
    }

    /// Where the header lives relative to the data.
    pub fn placement(&self) -> HeaderPlacement {
        if self.header.is_some() {
            HeaderPlacement::Detached
        } else {
            HeaderPlacement::Attached
        }
    }

    /// Opens `path` (the header file or the data file) with a message that says what is
    /// wrong: missing, or not openable for `access`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn open_file(path: &Path, access: Access) -> Result<File> {
        let write = access == Access::Write;
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| {
                let context = match std::fs::metadata(path) {
                    Err(_) => format!("{} does not exist; check the path", path.display()),
                    Ok(_) if write => format!("cannot open {} for writing", path.display()),
                    Ok(_) => format!("cannot open {}", path.display()),
                };
                Error::io(context, e)
            })
    }

    /// Reads and validates the header, holding its unlocks to `limits`.
    ///
    /// # Errors
    /// [`Error::Io`] for a missing or unreadable file; [`Error::Invalid`] naming the file
    /// when it holds no usable header (with a hint about `--header` when none was given),
    /// the header's own refusal as its cause.
    pub fn open(&self, access: Access, limits: KdfLimits) -> Result<OpenLuks> {
        let path = self.header_file();
        let file = Self::open_file(path, access)?;
        let mut vol = AnyVolume::open(HeaderFile::new(file)).map_err(|e| {
            let hint = if self.header.is_none() {
                " (if the header is detached, pass --header FILE)"
            } else {
                ""
            };
            Error::NotAHeader {
                path: path.to_path_buf(),
                hint,
                source: Box::new(e),
            }
        })?;
        vol.set_kdf_limits(limits);
        Ok(OpenLuks {
            files: self.clone(),
            vol,
        })
    }
}

impl LuksFile {
    /// Opens the header for a verb under [`LuksFile::limits`], warning about a damaged copy.
    fn open_verb(&self, access: Access) -> Result<OpenLuks> {
        let open = self.open(access, self.limits)?;
        if let Some(warning) = open.damaged_copy() {
            tracing::warn!("{warning}");
        }
        Ok(open)
    }

    /// Opens the header to change it: refused when sealvol may only read it.
    fn open_to_change(&self) -> Result<OpenLuks> {
        let open = self.open_verb(Access::Write)?;
        open.check_writable()?;
        Ok(open)
    }

    /// The header as one JSON document ([`AnyVolume::dump_json`]).
    ///
    /// # Errors
    /// Those of [`LuksFile::open`].
    pub fn dump(&self) -> Result<serde_json::Value> {
        Ok(self.open_verb(Access::Read)?.vol.dump_json())
    }
}

/// An opened LUKS header and the files it belongs to.
#[derive(Debug)]
pub struct OpenLuks {
    files: LuksFile,
    vol: AnyVolume<HeaderFile>,
}

impl OpenLuks {
    /// The volume's files.
    pub fn files(&self) -> &LuksFile {
        &self.files
    }

    /// The header.
    pub fn volume(&self) -> &AnyVolume<HeaderFile> {
        &self.vol
    }

    /// The header, to change it.
    pub fn volume_mut(&mut self) -> &mut AnyVolume<HeaderFile> {
        &mut self.vol
    }

    /// Gives back the header.
    pub fn into_volume(self) -> AnyVolume<HeaderFile> {
        self.vol
    }

    /// When one LUKS2 header copy was damaged and the other one is in use: what is wrong and
    /// how to fix it (`sealvol repair`).
    pub fn damaged_copy(&self) -> Option<String> {
        let report = self.vol.load_report()?;
        if !report.needs_repair {
            return None;
        }
        let bad = match (&report.primary, &report.secondary) {
            (Err(e), _) => format!("the primary header copy is damaged ({e})"),
            (_, Err(e)) => format!("the secondary header copy is damaged ({e})"),
            _ => "the header copies differ".to_string(),
        };
        let path = self.files.header_file().display();
        Some(format!(
            "{path}: {bad}; using the valid copy. Run `sealvol repair {path}` to rewrite it."
        ))
    }

    /// Refuses a header that may only be read (LUKS2 requirements sealvol does not know).
    ///
    /// # Errors
    /// [`Error::Luks`] with [`sealvol_luks::Error::ReadOnly`] naming the reason.
    pub fn check_writable(&self) -> Result<()> {
        match self.vol.read_only() {
            Some(reason) => Err(sealvol_luks::Error::ReadOnly(reason.to_string()).into()),
            None => Ok(()),
        }
    }

    /// Finds the volume key with `key` (in keyslot `slot`, or in any).
    ///
    /// # Errors
    /// [`Error::WrongKey`] when no keyslot opens (naming the keyslot when one was given);
    /// [`Error::Luks`] for a header over the KDF limits or a keyslot sealvol cannot use.
    pub fn unlock(&mut self, key: &[u8], slot: Option<u32>) -> Result<Unlocked> {
        match self.vol.unlock(key, slot) {
            Ok(u) => Ok(u),
            Err(sealvol_luks::Error::WrongKey) => Err(Error::WrongKey(match slot {
                Some(s) => format!("the key does not open keyslot {s}"),
                None => "no keyslot opens with this key".to_string(),
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// The data segment, refused when it lies inside an attached header's area.
    ///
    /// # Errors
    /// [`Error::Luks`] with [`sealvol_luks::Error::DataOverlapsHeader`], or the segment's own
    /// refusal (reencryption in progress, cipher sealvol does not implement).
    pub fn data_segment(&self) -> Result<DataSegment> {
        Ok(self.vol.data_segment_for(self.files.placement())?)
    }

    /// The data segment's length in the data file as it is now.
    ///
    /// # Errors
    /// [`Error::Io`] when the data file cannot be read; [`Error::Luks`] when the segment does
    /// not fit it.
    pub fn data_len(&self, segment: &DataSegment) -> Result<u64> {
        let len = std::fs::metadata(self.files.data())
            .map_err(|e| {
                Error::io(
                    format!("cannot read the size of {}", self.files.data().display()),
                    e,
                )
            })?
            .len();
        Ok(segment.data_len(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealvol_luks::NewHeader;

    fn write(path: &Path, bytes: &[u8], len: u64) {
        std::fs::write(path, bytes).unwrap();
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(len).unwrap();
    }

    #[test]
    fn open_unlock_and_place_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let key = [0xffu8; 32];
        let attached = NewHeader::default().build(&key).unwrap();
        let vol = dir.path().join("vol.img");
        write(&vol, &attached.bytes, 32 << 20);
        let files = LuksFile::new(&vol, None);
        let mut open = files.open(Access::Read, KdfLimits::default()).unwrap();
        assert!(open.damaged_copy().is_none());
        assert!(matches!(
            open.unlock(&[0xfe; 32], None),
            Err(Error::WrongKey(m)) if m.contains("no keyslot")
        ));
        assert!(open.unlock(&key, Some(0)).is_ok());
        let seg = open.data_segment().unwrap();
        assert_eq!(open.data_len(&seg).unwrap(), 16 << 20);

        // A detached header used as an attached one: refused, naming the offsets.
        let detached = NewHeader {
            detached: true,
            ..NewHeader::default()
        }
        .build(&key)
        .unwrap();
        let wrong = dir.path().join("wrong.img");
        write(&wrong, &detached.bytes, 32 << 20);
        let open = LuksFile::new(&wrong, None)
            .open(Access::Read, KdfLimits::default())
            .unwrap();
        let e = open.data_segment().unwrap_err().to_string();
        assert!(e.contains("starts at byte 0"), "{e}");
        let hdr = dir.path().join("hdr");
        write(&hdr, &detached.bytes, detached.bytes.len() as u64);
        let data = dir.path().join("data");
        write(&data, b"", 1 << 20);
        let open = LuksFile::new(&data, Some(hdr))
            .open(Access::Read, KdfLimits::default())
            .unwrap();
        assert_eq!(open.data_segment().unwrap().offset, 0);
    }

    #[test]
    fn files_that_are_not_headers_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none");
        let e = LuksFile::new(&none, None)
            .open(Access::Read, KdfLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let zeros = dir.path().join("zeros");
        write(&zeros, b"", 1 << 20);
        let e = LuksFile::new(&zeros, None)
            .open(Access::Read, KdfLimits::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a usable LUKS header") && e.contains("--header"),
            "{e}"
        );
    }
}
