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

/// True for a key that cannot be typed text: exactly 32 or 64 bytes (256 or 512 bits, what
/// `head -c 32 /dev/urandom` makes) that are not valid UTF-8.
///
/// Such a key gains nothing from a memory-hard KDF (DESIGN.md: "Keys"), so its keyslot can
/// use PBKDF2 at cryptsetup's minimum cost. Everything else may be a passphrase a person
/// chose, typed or saved from an editor (hex or base64 text, any script, any line ending),
/// and gets Argon2id: a wrong guess here costs two seconds at format time, the other way
/// round it costs the passphrase. Random bytes are valid UTF-8 with a probability below
/// 10^-9 for 32 bytes, so a machine key is recognised in practice always.
pub fn looks_like_machine_key(key: &[u8]) -> bool {
    matches!(key.len(), 32 | 64) && std::str::from_utf8(key).is_err()
}

/// True for a key taken for a machine key that might still be text in a single-byte
/// encoding (Latin-1, CP1251 ...): no control bytes at all. Worth a hint, not a decision
/// (one random 32-byte key in about 7000 looks like this).
pub fn might_be_legacy_text(key: &[u8]) -> bool {
    let text = key.strip_suffix(b"\n").unwrap_or(key);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    text.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0xa0)
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
        let random64: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(151) ^ 0xc5).collect();
        assert!(std::str::from_utf8(&random64).is_err());
        assert!(looks_like_machine_key(&random64));
    }

    /// Issue 9: a passphrase of 32 or more bytes in any script, or saved with a CRLF ending,
    /// is text: Argon2id, not the machine-key PBKDF2 at 1000 iterations. So are hex and
    /// base64 text, which a person can type.
    #[test]
    fn passphrases_in_any_script_and_line_ending_are_not_machine_keys() {
        let phrases: [&[u8]; 9] = [
            "Пароль для моего тома: очень длинный".as_bytes(), // Cyrillic
            "Größenwahnsinnige Schlüssel öffnen Türen".as_bytes(), // German
            "这是一个很长的中文密码用于测试".as_bytes(),       // Chinese
            "🔑🔑🔑🔑🔑🔑🔑🔑".as_bytes(),                     // exactly 32 bytes of emoji
            b"correct horse battery staple and more words\r\n",
            b"correct horse battery staple and more words too\n",
            b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            b"q83vEjRWd4Gvh2aP5XyZ0bCdEfGhIjKlMnOpQrStUvWx\n",
            b"correct horse battery staple",
        ];
        for p in phrases {
            assert!(
                !looks_like_machine_key(p),
                "{:?} taken for a machine key",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!("🔑🔑🔑🔑🔑🔑🔑🔑".len(), 32);
        // Binary keys of other lengths are not assumed to be machine keys either.
        assert!(!looks_like_machine_key(&[0xffu8; 16]));
        assert!(!looks_like_machine_key(&[0xffu8; 33]));
    }

    #[test]
    fn legacy_single_byte_text_is_flagged() {
        // "Größenwahnsinnige Schlüssel 1234" in Latin-1: 32 bytes, not UTF-8.
        let latin1: Vec<u8> = "Größenwahnsinnige Schlüssel 1234"
            .chars()
            .map(|c| c as u32 as u8)
            .collect();
        assert_eq!(latin1.len(), 32);
        assert!(looks_like_machine_key(&latin1));
        assert!(might_be_legacy_text(&latin1));
        let mut random = [0u8; 32];
        random[0] = 0x01;
        random[1] = 0xff;
        assert!(!might_be_legacy_text(&random));
    }

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
