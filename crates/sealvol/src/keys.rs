//! Reading keys from a file, stdin or a file descriptor, and telling machine keys from
//! passphrases. Keys are read straight into [`SecretBytes`]; no path here ever logs them.

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

/// True for a key that carries at least 256 bits of machine-made entropy: 32 or more bytes
/// that are not plain text, or 64+ hex digits, or 44+ base64 characters.
///
/// Such a key gains nothing from a memory-hard KDF (DESIGN.md: "Keys"), so its keyslot can
/// use PBKDF2 at cryptsetup's minimum cost.
pub fn looks_like_machine_key(key: &[u8]) -> bool {
    let trimmed = key.strip_suffix(b"\n").unwrap_or(key);
    let printable = trimmed.iter().all(|&b| (0x20..0x7f).contains(&b));
    if !printable {
        return key.len() >= 32;
    }
    let hex = trimmed.len() >= 64
        && trimmed.iter().all(|b| b.is_ascii_hexdigit())
        && distinct(trimmed) >= 8;
    let b64 = trimmed.len() >= 44
        && trimmed
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b))
        && distinct(trimmed) >= 20;
    hex || b64
}

fn distinct(bytes: &[u8]) -> usize {
    let mut seen = [false; 256];
    bytes.iter().for_each(|&b| seen[b as usize] = true);
    seen.iter().filter(|&&s| s).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_keys_are_recognised() {
        let random: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(3) | 0x80)
            .collect();
        assert!(looks_like_machine_key(&random));
        assert!(looks_like_machine_key(
            b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        ));
        assert!(!looks_like_machine_key(&[b'f'; 64]));
        assert!(looks_like_machine_key(
            b"q83vEjRWd4Gvh2aP5XyZ0bCdEfGhIjKlMnOpQrStUvWx\n"
        ));
    }

    #[test]
    fn passphrases_are_not_machine_keys() {
        assert!(!looks_like_machine_key(b"correct horse battery staple"));
        assert!(!looks_like_machine_key(
            b"correct horse battery staple and more words too"
        ));
        assert!(!looks_like_machine_key(&[0xffu8; 16]));
        assert!(!looks_like_machine_key(
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
    }

    #[test]
    fn empty_key_is_refused() {
        let err = read_limited(&b""[..], "stdin").unwrap_err();
        assert!(err.to_string().contains("empty"));
    }
}
