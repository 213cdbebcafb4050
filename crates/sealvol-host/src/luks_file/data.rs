//! Plaintext in and out of the data segment: `import` and `export`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{Access, LuksFile};
use crate::progress::Progress;
use crate::{Error, Result};

/// A plaintext copy. Serializes as `sealvol import --json` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Copied {
    /// Plaintext bytes copied.
    pub bytes: u64,
    /// How long the copy took.
    pub seconds: f64,
}

impl Copied {
    /// Throughput in MB/s (10^6 bytes a second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e6
    }
}

/// Where [`LuksFile::export`] writes the plaintext.
pub enum ExportTo<'a> {
    /// A file: created when missing (and removed again when the copy fails); an existing
    /// one is overwritten in place and then cut to length (as `qemu-img convert -n` does),
    /// which spares the kernel freeing and reallocating every page of it. A device is
    /// written, not cut.
    File(&'a Path),
    /// A stream the caller owns (standard output, a socket).
    Stream(&'a mut dyn Write),
}

impl LuksFile {
    /// Encrypts the plaintext of `src` into the data segment, from its first byte, and
    /// syncs the data file. `src_len`, when known, is checked against the segment's
    /// capacity before the key is tried; a stream is refused when it grows past it.
    /// `progress` starts with `src_len`.
    ///
    /// # Errors
    /// [`Error::WrongKey`]; [`Error::Luks`] for a source larger than the segment, a data
    /// segment inside an attached header, a read-only header, or a failed copy;
    /// [`Error::Io`] for the data file.
    pub fn import(
        &self,
        key: &[u8],
        src: &mut (dyn Read + Send),
        src_len: Option<u64>,
        progress: &mut dyn Progress,
    ) -> Result<Copied> {
        let mut open = self.open_verb(Access::Read)?;
        open.check_writable()?;
        let segment = open.data_segment()?;
        let mut data = Self::open_file(&self.data, Access::Write)?;
        let capacity = open.data_len(&segment)?;
        if let Some(len) = src_len.filter(|&len| len > capacity) {
            return Err(sealvol_luks::Error::SourceTooLarge {
                capacity,
                at_least: len,
            }
            .into());
        }
        let unlocked = open.unlock(key, None)?;
        progress.start(src_len);
        let started = Instant::now();
        let copied = sealvol_luks::data::import(
            src,
            &mut data,
            &segment,
            &unlocked.volume_key,
            Some(capacity),
            &mut |n| progress.at(n),
        )?;
        data.sync_all()
            .map_err(|e| Error::io(format!("cannot sync {}", self.data.display()), e))?;
        Ok(Copied {
            bytes: copied.bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Decrypts the whole data segment to `to`. `progress` starts with the segment's length.
    ///
    /// # Errors
    /// [`Error::WrongKey`] (before `to` is created); [`Error::Luks`] for a data segment
    /// inside an attached header or a failed copy; [`Error::Io`] for the files.
    pub fn export(
        &self,
        key: &[u8],
        to: ExportTo<'_>,
        progress: &mut dyn Progress,
    ) -> Result<Copied> {
        let mut open = self.open_verb(Access::Read)?;
        let segment = open.data_segment()?;
        let mut data = Self::open_file(&self.data, Access::Read)?;
        let len = open.data_len(&segment)?;
        let unlocked = open.unlock(key, None)?;
        let started = Instant::now();
        let mut copy = |w: &mut dyn Write, progress: &mut dyn Progress| {
            progress.start(Some(len));
            sealvol_luks::data::export(
                &mut data,
                w,
                &segment,
                &unlocked.volume_key,
                len,
                &mut |n| progress.at(n),
            )
        };
        let bytes = match to {
            ExportTo::Stream(w) => copy(w, progress)?.bytes,
            ExportTo::File(path) => {
                let created = !path.exists();
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
                let result = copy(&mut f, progress).map_err(Error::from).and_then(|c| {
                    if f.metadata().is_ok_and(|m| m.is_file()) {
                        f.set_len(c.bytes).map_err(|e| {
                            Error::io(format!("cannot cut {} to length", path.display()), e)
                        })?;
                    }
                    Ok(c.bytes)
                });
                if result.is_err() && created {
                    let _ = std::fs::remove_file(path);
                }
                result?
            }
        };
        Ok(Copied {
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::luks_file::FormatRequest;
    use sealvol_luks::{NewHeader, Version};

    const KEY: &[u8] = &[0xff; 32];

    fn formatted(dir: &Path, version: Version, detached: bool) -> LuksFile {
        let name = format!("{}-{detached}", version.as_str());
        let header = detached.then(|| dir.join(format!("{name}.hdr")));
        let files = LuksFile::new(dir.join(format!("{name}.img")), header);
        let request = FormatRequest {
            header: NewHeader {
                version,
                ..NewHeader::default()
            },
            size: Some(256 << 10),
            overwrite: false,
        };
        files.format(&request, KEY).unwrap();
        files
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn import_then_export_round_trips_with_progress() {
        let dir = tempfile::tempdir().unwrap();
        for (version, detached) in [
            (Version::Luks2, false),
            (Version::Luks2, true),
            (Version::Luks1, false),
        ] {
            let files = formatted(dir.path(), version, detached);
            let plain = pattern(100_000);
            let mut started = None;
            let mut last = 0;
            struct Track<'a>(&'a mut Option<Option<u64>>, &'a mut u64);
            impl Progress for Track<'_> {
                fn start(&mut self, total: Option<u64>) {
                    *self.0 = Some(total);
                }
                fn at(&mut self, done: u64) {
                    *self.1 = done;
                }
            }
            let copied = files
                .import(
                    KEY,
                    &mut plain.as_slice(),
                    Some(plain.len() as u64),
                    &mut Track(&mut started, &mut last),
                )
                .unwrap();
            assert_eq!(copied.bytes, plain.len() as u64);
            assert_eq!(started, Some(Some(plain.len() as u64)));
            // Progress counts whole sectors written.
            assert!((0..4096).contains(&(last - plain.len() as u64)), "{last}");
            // The ciphertext is not the plaintext.
            let raw = std::fs::read(files.data()).unwrap();
            assert!(!raw.windows(64).any(|w| w == &plain[4096..4160]));

            // To a stream: the whole segment, the plaintext first (then the zeros that pad its
            // last sector, then whatever the never-written sectors decrypt to).
            let mut out = Vec::new();
            let mut seen = 0;
            let copied = files
                .export(KEY, ExportTo::Stream(&mut out), &mut |n| seen = n)
                .unwrap();
            assert_eq!(copied.bytes, 256 << 10);
            assert_eq!(seen, 256 << 10);
            assert!(out[..plain.len()] == plain[..]);
            assert!(out[plain.len()..plain.len() + 512 - plain.len() % 512]
                .iter()
                .all(|&b| b == 0));

            // To a longer existing file: overwritten and cut to length.
            let dst = dir.path().join("dst");
            std::fs::write(&dst, vec![0xaa; 1 << 20]).unwrap();
            files
                .export(KEY, ExportTo::File(&dst), &mut |_| {})
                .unwrap();
            assert!(std::fs::read(&dst).unwrap() == out);
        }
    }

    #[test]
    fn refusals_come_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks2, false);
        let before = std::fs::read(files.data()).unwrap();
        // Too large for the segment: refused before the key is tried.
        let big = vec![1u8; (256 << 10) + 1];
        let e = files
            .import(
                &[0; 32],
                &mut big.as_slice(),
                Some(big.len() as u64),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("larger than the data segment"),
            "{e}"
        );
        // Too large, found while streaming.
        let e = files
            .import(KEY, &mut big.as_slice(), None, &mut |_| {})
            .unwrap_err();
        assert!(
            e.to_string().contains("larger than the data segment"),
            "{e}"
        );
        let e = files
            .import(&[0; 32], &mut &b"x"[..], Some(1), &mut |_| {})
            .unwrap_err();
        assert!(e.is_wrong_key(), "{e}");
        assert!(std::fs::read(files.data()).unwrap()[..16 << 20] == before[..16 << 20]);

        // A wrong key creates no destination file.
        let dst = dir.path().join("never");
        let e = files
            .export(&[0; 32], ExportTo::File(&dst), &mut |_| {})
            .unwrap_err();
        assert!(e.is_wrong_key(), "{e}");
        assert!(!dst.exists());
    }

    #[test]
    fn a_failed_export_removes_the_file_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks2, false);
        // The data file is cut short once the copy has started (and the destination was
        // created): the copy fails, and the file it made is gone.
        struct Truncate<'a>(&'a Path, u64);
        impl Progress for Truncate<'_> {
            fn start(&mut self, _: Option<u64>) {
                let f = OpenOptions::new().write(true).open(self.0).unwrap();
                f.set_len(self.1).unwrap();
            }
            fn at(&mut self, _: u64) {}
        }
        let dst = dir.path().join("out");
        let e = files
            .export(
                KEY,
                ExportTo::File(&dst),
                &mut Truncate(files.data(), 16 << 20),
            )
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(!dst.exists());

        // An existing destination is left in place (overwritten as far as the copy got).
        let files = formatted(dir.path(), Version::Luks2, true);
        std::fs::write(&dst, b"keep").unwrap();
        let e = files
            .export(KEY, ExportTo::File(&dst), &mut Truncate(files.data(), 0))
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(dst.exists());
        // A destination that cannot be created.
        let e = files
            .export(
                KEY,
                ExportTo::File(&dir.path().join("no/such/out")),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e}");
    }
}
