//! Reading keys: from a key file, standard input or an inherited file descriptor, straight
//! into [`SecretBytes`] (zeroized on drop). Never from argv or the environment, and nothing
//! here logs or prints a key.
//!
//! ```no_run
//! use sealvol_host::keys::KeySource;
//! let key = KeySource::File("/etc/keys/web-1".into()).read()?;
//! # Ok::<(), sealvol_host::Error>(())
//! ```

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sealvol_crypto::SecretBytes;

use crate::{Error, Result};

/// The largest key accepted: cryptsetup's default maximum key file size, 8 MiB.
pub const MAX_KEY_BYTES: u64 = 8 << 20;

/// Where a key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// All of standard input.
    Stdin,
    /// All of a file (its exact bytes; `-` is not special here).
    File(PathBuf),
    /// All of an inherited file descriptor, until end of file.
    Fd(u32),
}

impl KeySource {
    /// `--key-file F` / `--key-fd N` as cryptsetup reads them: a descriptor wins, `-` is
    /// standard input, and without either the key comes from standard input.
    pub fn from_options(file: Option<&Path>, fd: Option<u32>) -> Self {
        match (file, fd) {
            (_, Some(fd)) => KeySource::Fd(fd),
            (Some(p), None) if p.as_os_str() == "-" => KeySource::Stdin,
            (Some(p), None) => KeySource::File(p.to_path_buf()),
            (None, None) => KeySource::Stdin,
        }
    }

    /// How the source is named in messages (never the key).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Stdin => "stdin".to_string(),
            KeySource::File(p) => format!("key file {}", p.display()),
            KeySource::Fd(n) => format!("file descriptor {n}"),
        }
    }

    /// Reads the whole key. A key file that group or others may read is read, with a
    /// warning (`tracing`): anyone who can read it can open the volume.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty key or one over [`MAX_KEY_BYTES`]; [`Error::Io`] when
    /// the source cannot be opened or read.
    pub fn read(&self) -> Result<SecretBytes> {
        self.read_with_limit(MAX_KEY_BYTES)
    }

    /// Reads the whole source, refusing more than `limit` bytes (as [`KeySource::read`]).
    ///
    /// # Errors
    /// As [`KeySource::read`].
    pub fn read_with_limit(&self, limit: u64) -> Result<SecretBytes> {
        let what = self.describe();
        match self {
            KeySource::Stdin => read_limited(std::io::stdin().lock(), &what, limit),
            KeySource::File(p) => {
                let f = std::fs::File::open(p)
                    .map_err(|e| Error::io(format!("cannot open {what}"), e))?;
                if let Some(w) = f.metadata().ok().and_then(|m| readable_by_others(&m, p)) {
                    tracing::warn!("{w}");
                }
                read_limited(f, &what, limit)
            }
            KeySource::Fd(n) => {
                // Opening /proc/self/fd/N gives a new file description for files and the same
                // pipe for pipes, without any unsafe descriptor juggling.
                let path = Path::new("/proc/self/fd").join(n.to_string());
                let f = std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("cannot read {what}: is it open?"), e))?;
                read_limited(f, &what, limit)
            }
        }
    }
}

/// Reads an existing key and a new one (`add-key`, `change-key`), which cannot come from the
/// same source: one stream cannot hold both.
///
/// # Errors
/// [`Error::Invalid`] for two equal sources; those of [`KeySource::read`].
pub fn read_pair(key: &KeySource, new_key: &KeySource) -> Result<(SecretBytes, SecretBytes)> {
    if key == new_key {
        return Err(Error::Invalid(format!(
            "the existing key and the new key cannot both come from {}; give one of them with --key-file FILE or --new-key-file FILE",
            key.describe()
        )));
    }
    Ok((key.read()?, new_key.read()?))
}

/// The warning for a key file that group or others may read (regular files only: pipes and
/// devices such as `/dev/stdin` have no meaningful mode).
fn readable_by_others(meta: &std::fs::Metadata, path: &Path) -> Option<String> {
    if !meta.is_file() || meta.file_type().is_fifo() {
        return None;
    }
    mode_warning(meta.mode(), path)
}

fn mode_warning(mode: u32, path: &Path) -> Option<String> {
    (mode & 0o044 != 0).then(|| {
        format!(
            "key file {} is readable by other users (mode {:04o}); anyone who can read it can open the volume: `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

fn read_limited(r: impl Read, what: &str, limit: u64) -> Result<SecretBytes> {
    let mut buf = Vec::new();
    let res = r.take(limit + 1).read_to_end(&mut buf);
    // Into a secret before anything else can fail, so the bytes are zeroized.
    let key = SecretBytes::from_vec(buf);
    res.map_err(|e| Error::io(format!("cannot read the key from {what}"), e))?;
    if key.is_empty() {
        return Err(Error::Invalid(format!(
            "the key from {what} is empty; give a key file with content, or pipe the key to stdin"
        )));
    }
    if key.len() as u64 > limit {
        let most = if limit % (1 << 20) == 0 {
            format!("{} MiB", limit >> 20)
        } else {
            format!("{} KiB", limit >> 10)
        };
        return Err(Error::Invalid(format!(
            "the key from {what} is larger than {most}; point --key-file at the key itself"
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_pick_the_source_as_cryptsetup_does() {
        assert_eq!(KeySource::from_options(None, None), KeySource::Stdin);
        assert_eq!(
            KeySource::from_options(Some(Path::new("-")), None),
            KeySource::Stdin
        );
        assert_eq!(
            KeySource::from_options(Some(Path::new("k")), Some(3)),
            KeySource::Fd(3)
        );
        assert_eq!(
            KeySource::from_options(Some(Path::new("k")), None),
            KeySource::File("k".into())
        );
    }

    #[test]
    fn key_files_readable_by_others_are_named() {
        let p = Path::new("/k");
        assert!(mode_warning(0o100600, p).is_none());
        assert!(mode_warning(0o100400, p).is_none());
        let w = mode_warning(0o100644, p).unwrap();
        assert!(w.contains("mode 0644") && w.contains("chmod 600 /k"), "{w}");
        assert!(mode_warning(0o100640, p).is_some());
        assert!(mode_warning(0o100604, p).is_some());
    }

    #[test]
    fn a_pair_of_keys_needs_two_sources() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"old").unwrap();
        std::fs::write(&b, b"new").unwrap();
        let (old, new) = read_pair(&KeySource::File(a.clone()), &KeySource::File(b)).unwrap();
        assert_eq!((old.expose(), new.expose()), (&b"old"[..], &b"new"[..]));
        let e = read_pair(&KeySource::File(a.clone()), &KeySource::File(a)).unwrap_err();
        assert!(
            e.to_string().contains("cannot both come from key file"),
            "{e}"
        );
        let e = read_pair(&KeySource::Stdin, &KeySource::Stdin).unwrap_err();
        assert!(e.to_string().contains("both come from stdin"), "{e}");
    }

    #[test]
    fn empty_and_huge_keys_are_refused() {
        let err = read_limited(&b""[..], "stdin", MAX_KEY_BYTES).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let huge = vec![1u8; (MAX_KEY_BYTES + 1) as usize];
        let err = read_limited(&huge[..], "stdin", MAX_KEY_BYTES).unwrap_err();
        assert!(err.to_string().contains("8 MiB"), "{err}");
        assert_eq!(
            read_limited(&b"k"[..], "stdin", MAX_KEY_BYTES)
                .unwrap()
                .expose(),
            b"k"
        );
    }
}
