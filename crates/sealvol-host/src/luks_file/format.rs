//! `format`: a new header on the header file, the data file created and sized.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sealvol_luks::{KdfParams, NewHeader, Version};
use serde::Serialize;

use super::LuksFile;
use crate::{Error, Result};

/// What [`LuksFile::format`] makes.
#[derive(Clone, Debug, Default)]
pub struct FormatRequest {
    /// The header. Its `detached` is set from the [`LuksFile`]: detached exactly when it
    /// names a header file.
    pub header: NewHeader,
    /// Size of the data area in bytes (a positive multiple of the sector size): the data
    /// file is sized to the data offset plus this. `None` keeps an existing file's size.
    pub size: Option<u64>,
    /// Overwrite a LUKS header the header file already holds (its keys are lost).
    pub overwrite: bool,
}

/// A formatted volume. Serializes as `sealvol format --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Formatted {
    /// The volume UUID.
    pub uuid: String,
    /// LUKS1 or LUKS2 (`"luks1"`, `"luks2"`).
    #[serde(rename = "type", serialize_with = "version_name")]
    pub version: Version,
    /// The data file.
    pub volume: PathBuf,
    /// The detached header file, if any.
    pub header: Option<PathBuf>,
    /// The first key's keyslot.
    pub keyslot: u32,
    /// Its KDF, as chosen.
    pub kdf: KdfParams,
    /// Encryption sector size in bytes.
    pub sector_size: u64,
    /// Where the data starts in the data file.
    pub data_offset: u64,
    /// Bytes of data the volume holds.
    pub data_size: u64,
    /// When the KDF policy may have taken the key for what it is not: what to say to the
    /// user ([`sealvol_luks::KdfPolicy::hint`]).
    #[serde(skip)]
    pub key_hint: Option<&'static str>,
}

fn version_name<S: serde::Serializer>(v: &Version, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

/// Whether the file at `path` starts with a LUKS header (a missing or short file does not).
fn holds_header(path: &Path) -> bool {
    let mut head = [0u8; sealvol_luks::format::PROBE_LEN];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| sealvol_luks::probe(&head).is_some())
}

impl LuksFile {
    /// Formats the volume (`cryptsetup luksFormat`) with one keyslot opened by `key`.
    ///
    /// The whole header area is built in memory first, so every option and KDF error comes
    /// before a byte reaches the disk. Then the data file is created if missing and sized
    /// (`request.size`), and the header written at the start of the header file (the data
    /// file when attached). Files this call created are removed again when a write fails.
    ///
    /// # Errors
    /// [`Error::HoldsHeader`] when the header file holds a LUKS header and
    /// `request.overwrite` is not set; [`Error::Luks`] for options the format refuses;
    /// [`Error::Invalid`] for a size that is not whole sectors or a data file too small to
    /// hold one sector after the header; [`Error::Io`] naming the file that could not be
    /// created, sized or written.
    pub fn format(&self, request: &FormatRequest, key: &[u8]) -> Result<Formatted> {
        let header_file = self.header_file().to_path_buf();
        if !request.overwrite && holds_header(&header_file) {
            return Err(Error::HoldsHeader { path: header_file });
        }
        let new = NewHeader {
            detached: self.header.is_some(),
            ..request.header.clone()
        };
        let key_hint = new.kdf.hint(key);
        let started = std::time::Instant::now();
        let built = new.build(key)?;
        let segment = built.segment;
        let sector = segment.sector_size.bytes() as u64;
        let data_offset = segment.offset;

        // Sizes: the data area must exist and hold at least one sector.
        let volume_exists = self.data.exists();
        let current_len = if volume_exists {
            std::fs::metadata(&self.data)
                .map_err(|e| {
                    Error::io(
                        format!("cannot read the size of {}", self.data.display()),
                        e,
                    )
                })?
                .len()
        } else {
            0
        };
        let wanted_len = match request.size {
            Some(s) if s == 0 || s % sector != 0 => {
                return Err(Error::Invalid(format!(
                    "--size {s} is not a positive multiple of the {sector}-byte sector size"
                )))
            }
            Some(s) => Some(
                data_offset
                    .checked_add(s)
                    .ok_or_else(|| Error::Invalid(format!("--size {s} is too large")))?,
            ),
            None => None,
        };
        let final_len = wanted_len.unwrap_or(current_len);
        if final_len < data_offset + sector {
            return Err(Error::Invalid(format!(
                "{} is {current_len} bytes, too small for a {data_offset}-byte data offset and one sector; give --size (for example --size 64M)",
                self.data.display(),
            )));
        }

        // Write. Files this call created are removed again if a write fails.
        let mut created: Vec<&Path> = Vec::new();
        if !volume_exists {
            created.push(&self.data);
        }
        if self.header.is_some() && !header_file.exists() {
            created.push(&header_file);
        }
        if let Err(e) = self.write_new(&header_file, wanted_len, &built.bytes) {
            for p in created {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        tracing::info!(uuid = %built.uuid, ms = started.elapsed().as_millis() as u64, "formatted");
        Ok(Formatted {
            uuid: built.uuid,
            version: built.version,
            volume: self.data.clone(),
            header: self.header.clone(),
            keyslot: built.keyslot,
            kdf: built.kdf,
            sector_size: sector,
            data_offset,
            data_size: final_len - data_offset,
            key_hint,
        })
    }

    /// Creates (or opens) and sizes the data file and writes `header` at the start of
    /// `header_file`.
    fn write_new(&self, header_file: &Path, len: Option<u64>, header: &[u8]) -> Result<()> {
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.data)
            .map_err(|e| Error::io(format!("cannot create {}", self.data.display()), e))?;
        if let Some(len) = len {
            data.set_len(len).map_err(|e| {
                Error::io(
                    format!("cannot size {} to {len} bytes", self.data.display()),
                    e,
                )
            })?;
        }
        let mut hdr = if self.header.is_some() {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(header_file)
                .map_err(|e| {
                    Error::io(
                        format!("cannot create header file {}", header_file.display()),
                        e,
                    )
                })?
        } else {
            data.try_clone()
                .map_err(|e| Error::io(format!("cannot open {}", self.data.display()), e))?
        };
        let write_err = |e| {
            Error::io(
                format!("cannot write the header to {}", header_file.display()),
                e,
            )
        };
        hdr.seek(SeekFrom::Start(0)).map_err(write_err)?;
        hdr.write_all(header).map_err(write_err)?;
        hdr.sync_all().map_err(write_err)?;
        data.sync_all()
            .map_err(|e| Error::io(format!("cannot sync {}", self.data.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::luks_file::Access;
    use sealvol_luks::{KdfLimits, KdfPolicy};

    const KEY: [u8; 32] = [0xff; 32];

    #[test]
    fn format_creates_sizes_and_refuses_to_overwrite_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol.img");
        let files = LuksFile::new(&vol, None);
        let request = FormatRequest {
            size: Some(1 << 20),
            ..FormatRequest::default()
        };
        let f = files.format(&request, &KEY).unwrap();
        assert_eq!(
            (f.version, f.keyslot, f.sector_size),
            (Version::Luks2, 0, 4096)
        );
        assert_eq!(f.data_offset, 16 << 20);
        assert_eq!(f.data_size, 1 << 20);
        assert_eq!(f.kdf, KdfParams::pbkdf2_min());
        assert_eq!(
            std::fs::metadata(&vol).unwrap().len(),
            (16 << 20) + (1 << 20)
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["type"], "luks2");
        assert_eq!(json["kdf"]["iterations"], 1000);
        assert!(json.get("key_hint").is_none(), "{json}");
        let mut open = files.open(Access::Read, KdfLimits::default()).unwrap();
        assert_eq!(open.volume().uuid(), f.uuid);
        assert_eq!(open.unlock(&KEY, None).unwrap().keyslot, 0);

        // A second format is refused and changes nothing; asked to, it overwrites.
        let before = std::fs::read(&vol).unwrap();
        assert!(matches!(
            files.format(&request, &KEY),
            Err(Error::HoldsHeader { path }) if path == vol
        ));
        assert!(std::fs::read(&vol).unwrap() == before);
        let again = FormatRequest {
            overwrite: true,
            ..request
        };
        let g = files.format(&again, &KEY).unwrap();
        assert_ne!(g.uuid, f.uuid);
    }

    #[test]
    fn format_detached_writes_only_the_header_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let hdr = dir.path().join("hdr");
        let files = LuksFile::new(&data, Some(hdr.clone()));
        let request = FormatRequest {
            header: NewHeader {
                version: Version::Luks1,
                ..NewHeader::default()
            },
            size: Some(64 << 10),
            overwrite: false,
        };
        let f = files.format(&request, &KEY).unwrap();
        assert_eq!(
            (f.data_offset, f.data_size, f.sector_size),
            (0, 64 << 10, 512)
        );
        assert_eq!(f.header.as_deref(), Some(hdr.as_path()));
        assert!(std::fs::read(&data).unwrap().iter().all(|&b| b == 0));
        assert_eq!(files.test_key(&KEY, None).unwrap(), 0);
    }

    #[test]
    fn refused_formats_leave_no_files_behind() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol.img");
        let files = LuksFile::new(&vol, None);
        // Too small: an existing size of 0 and no size given.
        let e = files.format(&FormatRequest::default(), &KEY).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        assert!(!vol.exists());
        // Not whole sectors.
        let request = FormatRequest {
            size: Some(1000),
            ..FormatRequest::default()
        };
        let e = files.format(&request, &KEY).unwrap_err();
        assert!(e.to_string().contains("4096-byte sector"), "{e}");
        // The format's own refusal (Argon2 in LUKS1), before any file exists.
        let request = FormatRequest {
            header: NewHeader {
                version: Version::Luks1,
                kdf: KdfPolicy {
                    kind: Some(sealvol_luks::KdfKind::Argon2id),
                    ..KdfPolicy::default()
                },
                ..NewHeader::default()
            },
            size: Some(1 << 20),
            overwrite: false,
        };
        assert!(matches!(files.format(&request, &KEY), Err(Error::Luks(_))));
        assert!(!vol.exists());
        // A header file in a directory that does not exist: the data file made for it is
        // removed again.
        let files = LuksFile::new(&vol, Some(dir.path().join("no/such/hdr")));
        let request = FormatRequest {
            size: Some(1 << 20),
            ..FormatRequest::default()
        };
        let e = files.format(&request, &KEY).unwrap_err();
        assert!(e.to_string().contains("cannot create header file"), "{e}");
        assert!(!vol.exists());
    }
}
