//! Reading keys from a file, stdin or a file descriptor. Keys are read straight into
//! [`SecretBytes`]; no path here ever logs them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sealvol_crypto::SecretBytes;

use crate::cli::{KeyArgs, NewKeyArgs};

/// cryptsetup's default maximum key file size.
const MAX_KEY_BYTES: u64 = 8 << 20;

/// Where a key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Stdin,
    File(PathBuf),
    Fd(u32),
}

impl KeySource {
    pub fn from_args(args: &KeyArgs) -> Self {
        match (&args.key_file, args.key_fd) {
            (_, Some(fd)) => KeySource::Fd(fd),
            (Some(p), None) if p.as_os_str() == "-" => KeySource::Stdin,
            (Some(p), None) => KeySource::File(p.clone()),
            (None, None) => KeySource::Stdin,
        }
    }

    pub fn from_new_args(args: &NewKeyArgs) -> Self {
        match (&args.new_key_file, args.new_key_fd) {
            (_, Some(fd)) => KeySource::Fd(fd),
            (Some(p), None) if p.as_os_str() == "-" => KeySource::Stdin,
            (Some(p), None) => KeySource::File(p.clone()),
            (None, None) => KeySource::Stdin,
        }
    }

    fn describe(&self) -> String {
        match self {
            KeySource::Stdin => "stdin".to_string(),
            KeySource::File(p) => format!("key file {}", p.display()),
            KeySource::Fd(n) => format!("file descriptor {n}"),
        }
    }

    /// Reads the whole key. Refuses an empty key and one over 8 MiB.
    pub fn read(&self) -> Result<SecretBytes> {
        let what = self.describe();
        match self {
            KeySource::Stdin => read_limited(std::io::stdin().lock(), &what),
            KeySource::File(p) => {
                let f = std::fs::File::open(p).with_context(|| format!("cannot open {what}"))?;
                warn_if_readable_by_others(&f, p);
                read_limited(f, &what)
            }
            KeySource::Fd(n) => {
                // Opening /proc/self/fd/N gives a new file description for files and the same
                // pipe for pipes, without any unsafe fd juggling.
                let path = Path::new("/proc/self/fd").join(n.to_string());
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("cannot read {what}: is it open?"))?;
                read_limited(f, &what)
            }
        }
    }
}

/// Warns when a key file can be read by users other than its owner: any of them can open
/// the volume with it.
fn warn_if_readable_by_others(f: &std::fs::File, path: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = f.metadata() else { return };
    // Pipes and character devices (/dev/stdin, process substitution) have no meaningful mode.
    if !meta.is_file() || meta.file_type().is_fifo() {
        return;
    }
    if let Some(warning) = readable_by_others(meta.mode(), path) {
        eprintln!("sealvol: warning: {warning}");
    }
}

/// The warning for a key file of `mode`, when group or others may read it.
fn readable_by_others(mode: u32, path: &Path) -> Option<String> {
    (mode & 0o044 != 0).then(|| {
        format!(
            "key file {} is readable by other users (mode {:04o}); anyone who can read it can open the volume: `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

fn read_limited(r: impl Read, what: &str) -> Result<SecretBytes> {
    let mut buf = Vec::new();
    let mut limited = r.take(MAX_KEY_BYTES + 1);
    let res = limited.read_to_end(&mut buf);
    // Move the bytes into a secret before anything else can fail, so they are zeroized.
    let key = SecretBytes::from_vec(buf);
    res.with_context(|| format!("cannot read the key from {what}"))?;
    if key.is_empty() {
        bail!(
            "the key from {what} is empty; give a key file with content, or pipe the key to stdin"
        );
    }
    if key.len() as u64 > MAX_KEY_BYTES {
        bail!("the key from {what} is larger than 8 MiB; point --key-file at the key itself");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_readable_by_others_are_named() {
        let p = Path::new("/k");
        assert!(readable_by_others(0o100600, p).is_none());
        assert!(readable_by_others(0o100400, p).is_none());
        let w = readable_by_others(0o100644, p).unwrap();
        assert!(w.contains("mode 0644") && w.contains("chmod 600 /k"), "{w}");
        assert!(readable_by_others(0o100640, p).is_some());
        assert!(readable_by_others(0o100604, p).is_some());
    }

    #[test]
    fn empty_key_is_refused() {
        let err = read_limited(&b""[..], "stdin").unwrap_err();
        assert!(err.to_string().contains("empty"));
    }
}
