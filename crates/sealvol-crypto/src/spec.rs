//! Cipher specifications as cryptsetup and dm-crypt write them: `cipher-mode-iv[:hash]` plus a
//! key size, e.g. `serpent-cbc-essiv:sha256` with a 256-bit key.
//!
//! [`CipherSpec::parse`] follows cryptsetup's `crypt_parse_name_and_mode` (the cipher is
//! everything before the first `-`, the mode everything after it) and dm-crypt's
//! `crypt_ctr_cipher_old` (the mode is the chain mode, a `-`, and the IV generator with its
//! options after a `:`). It accepts exactly what sealvol implements:
//!
//! | cipher | modes | IV generators | key sizes (bits) |
//! |---|---|---|---|
//! | `aes`, `serpent`, `twofish` | `xts` | `plain64`, `plain` | 256, 384, 512 (two keys) |
//! | `aes`, `serpent`, `twofish` | `cbc` | `plain64`, `plain`, `essiv:HASH` | 128, 192, 256 |
//! | `xchacha12,aes`, `xchacha20,aes` | `adiantum` | `plain64`, `plain` | 256 |
//!
//! `essiv:HASH` takes any [`HashAlg`] whose digest is a key of the block cipher (sha256 for
//! all three; sha1 and ripemd160 for serpent, which takes 160-bit keys). Everything else is an
//! [`Error::UnsupportedCipher`] naming the [`CipherPart`] that is not supported: `cipher_null`
//! and `ecb` (no encryption, no IV), other IV generators (`benbi`, `lmk`, `tcw`, `eboiv`,
//! `elephant`, `null`, `random`, `plain64be`), the kernel crypto API form `capi:…`, and the
//! multi-key form `cipher:count-…` (loop-AES), as well as authenticated modes.
//!
//! ```
//! use sealvol_crypto::{CipherSpec, spec::{BlockCipher, CipherMode, IvGenerator}, HashAlg};
//! let s = CipherSpec::parse("serpent-cbc-essiv:sha256", 32).unwrap();
//! assert_eq!(s.mode(), CipherMode::Cbc(BlockCipher::Serpent));
//! assert_eq!(s.iv(), IvGenerator::Essiv(HashAlg::Sha256));
//! assert_eq!(s.to_string(), "serpent-cbc-essiv:sha256");
//! assert_eq!((s.cipher_name(), s.mode_name().as_str()), ("serpent", "cbc-essiv:sha256"));
//! assert!(CipherSpec::parse("aes-ecb", 32).is_err());
//! ```

use crate::{Error, HashAlg, Result};

/// A 128-bit block cipher usable in XTS and CBC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockCipher {
    /// AES (aws-lc for the hot paths).
    Aes,
    /// Serpent (RustCrypto `serpent`, the kernel's `serpent` byte order).
    Serpent,
    /// Twofish (RustCrypto `twofish`).
    Twofish,
}

impl BlockCipher {
    /// Every block cipher.
    pub const ALL: [BlockCipher; 3] =
        [BlockCipher::Aes, BlockCipher::Serpent, BlockCipher::Twofish];

    /// The name in a cipher specification.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockCipher::Aes => "aes",
            BlockCipher::Serpent => "serpent",
            BlockCipher::Twofish => "twofish",
        }
    }

    /// Whether the cipher takes a key of `len` bytes (AES and Twofish: 16, 24, 32; Serpent:
    /// 16 to 32).
    pub fn accepts_key(self, len: usize) -> bool {
        match self {
            BlockCipher::Aes | BlockCipher::Twofish => matches!(len, 16 | 24 | 32),
            BlockCipher::Serpent => (16..=32).contains(&len),
        }
    }
}

/// The stream cipher of Adiantum (the block cipher is always AES-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdiantumStream {
    /// XChaCha12 (`xchacha12,aes`, Adiantum's recommended variant).
    XChaCha12,
    /// XChaCha20 (`xchacha20,aes`).
    XChaCha20,
}

impl AdiantumStream {
    /// The cipher name in a specification (`xchacha12,aes` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AdiantumStream::XChaCha12 => "xchacha12,aes",
            AdiantumStream::XChaCha20 => "xchacha20,aes",
        }
    }
}

/// The cipher and the way it covers a sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherMode {
    /// XTS (IEEE 1619) with two keys of the block cipher; the IV is the tweak.
    Xts(BlockCipher),
    /// CBC over the whole encryption sector with one IV.
    Cbc(BlockCipher),
    /// Adiantum (a wide-block tweakable cipher over the whole sector; 32-byte tweak).
    Adiantum(AdiantumStream),
}

impl CipherMode {
    /// The chain mode's name (`xts`, `cbc`, `adiantum`).
    pub fn as_str(self) -> &'static str {
        match self {
            CipherMode::Xts(_) => "xts",
            CipherMode::Cbc(_) => "cbc",
            CipherMode::Adiantum(_) => "adiantum",
        }
    }

    /// The block cipher of XTS and CBC (`None` for Adiantum).
    pub fn block_cipher(self) -> Option<BlockCipher> {
        match self {
            CipherMode::Xts(c) | CipherMode::Cbc(c) => Some(c),
            CipherMode::Adiantum(_) => None,
        }
    }

    /// The key lengths in bytes the mode allows, smallest first.
    pub fn key_lengths(self) -> &'static [usize] {
        match self {
            CipherMode::Xts(_) => &[32, 48, 64],
            CipherMode::Cbc(_) => &[16, 24, 32],
            CipherMode::Adiantum(_) => &[32],
        }
    }
}

/// How a sector number becomes the IV (dm-crypt's IV generators). The sector number counts
/// 512-byte units whatever the encryption sector size (cryptsetup never sets dm-crypt's
/// `iv_large_sectors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IvGenerator {
    /// The low 32 bits of the sector number, little-endian, then zeros.
    Plain,
    /// The 64-bit sector number, little-endian, then zeros.
    Plain64,
    /// `plain64` encrypted with the block cipher keyed by `hash(key)` (CBC only).
    Essiv(HashAlg),
}

impl std::fmt::Display for IvGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IvGenerator::Plain => f.write_str("plain"),
            IvGenerator::Plain64 => f.write_str("plain64"),
            IvGenerator::Essiv(h) => write!(f, "essiv:{h}"),
        }
    }
}

/// The part of a cipher specification that [`Error::UnsupportedCipher`] refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherPart {
    /// The shape of the whole string (`capi:` forms, a missing mode, `cipher:keycount`).
    Form,
    /// The cipher name (before the first `-`).
    Cipher,
    /// The chain mode (`xts`, `cbc`, `adiantum`).
    Mode,
    /// The IV generator (`plain64`, `plain`, `essiv`).
    Iv,
    /// The hash of an `essiv:HASH` IV generator.
    IvHash,
    /// The key size for this cipher and mode.
    KeySize,
    /// Integrity protection (dm-integrity, authenticated modes) around the cipher.
    Integrity,
}

impl std::fmt::Display for CipherPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CipherPart::Form => "form",
            CipherPart::Cipher => "cipher",
            CipherPart::Mode => "mode",
            CipherPart::Iv => "IV generator",
            CipherPart::IvHash => "ESSIV hash",
            CipherPart::KeySize => "key size",
            CipherPart::Integrity => "integrity protection",
        })
    }
}

/// A parsed, supported cipher specification with its key length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSpec {
    mode: CipherMode,
    iv: IvGenerator,
    key_len: usize,
}

/// Longest specification accepted (cryptsetup's `MAX_CIPHER_LEN` is 32 for each of the name
/// and the mode).
const MAX_SPEC_LEN: usize = 64;

fn refuse(spec: &str, part: CipherPart, found: &str, hint: impl Into<String>) -> Error {
    Error::UnsupportedCipher {
        spec: spec.chars().take(MAX_SPEC_LEN + 16).collect(),
        part,
        found: found.chars().take(MAX_SPEC_LEN).collect(),
        hint: hint.into(),
    }
}

const SUPPORTED: &str = "sealvol supports aes, serpent and twofish in xts-plain64, xts-plain, \
                         cbc-essiv:sha256, cbc-plain64 and cbc-plain, and \
                         xchacha12,aes-adiantum-plain64 / xchacha20,aes-adiantum-plain64";

impl CipherSpec {
    /// The default of cryptsetup and sealvol: `aes-xts-plain64` with a 512-bit key.
    pub const AES_XTS_PLAIN64_512: CipherSpec = CipherSpec {
        mode: CipherMode::Xts(BlockCipher::Aes),
        iv: IvGenerator::Plain64,
        key_len: 64,
    };

    /// Parses `spec` (`cipher-mode-iv[:hash]`) for a key of `key_len` bytes.
    ///
    /// # Errors
    /// [`Error::UnsupportedCipher`] naming the first part that is not supported.
    pub fn parse(spec: &str, key_len: usize) -> Result<CipherSpec> {
        if spec.len() > MAX_SPEC_LEN {
            return Err(refuse(
                spec,
                CipherPart::Form,
                spec,
                format!("a cipher specification is at most {MAX_SPEC_LEN} bytes"),
            ));
        }
        if spec.starts_with("capi:") {
            return Err(refuse(
                spec,
                CipherPart::Form,
                "capi:",
                "the kernel crypto API form (capi:…) is not supported; write it as \
                 cipher-mode-iv, e.g. aes-xts-plain64",
            ));
        }
        if spec == "null" || spec.starts_with("cipher_null") {
            return Err(refuse(
                spec,
                CipherPart::Cipher,
                "cipher_null",
                "cipher_null does not encrypt and is always refused",
            ));
        }
        let Some((name, rest)) = spec.split_once('-') else {
            return Err(refuse(
                spec,
                CipherPart::Form,
                spec,
                format!("a cipher specification names the cipher, the mode and the IV generator, e.g. aes-xts-plain64; {SUPPORTED}"),
            ));
        };
        if name.contains(':') {
            return Err(refuse(
                spec,
                CipherPart::Form,
                name,
                "the multi-key form cipher:keycount (loop-AES) is not supported",
            ));
        }
        let (chain, iv) = match rest.split_once('-') {
            Some((c, i)) => (c, Some(i)),
            None => (rest, None),
        };
        let mode = match (name, chain) {
            ("aes", "xts") => CipherMode::Xts(BlockCipher::Aes),
            ("serpent", "xts") => CipherMode::Xts(BlockCipher::Serpent),
            ("twofish", "xts") => CipherMode::Xts(BlockCipher::Twofish),
            ("aes", "cbc") => CipherMode::Cbc(BlockCipher::Aes),
            ("serpent", "cbc") => CipherMode::Cbc(BlockCipher::Serpent),
            ("twofish", "cbc") => CipherMode::Cbc(BlockCipher::Twofish),
            ("xchacha12,aes", "adiantum") => CipherMode::Adiantum(AdiantumStream::XChaCha12),
            ("xchacha20,aes", "adiantum") => CipherMode::Adiantum(AdiantumStream::XChaCha20),
            ("aes" | "serpent" | "twofish", "ecb") => {
                return Err(refuse(
                    spec,
                    CipherPart::Mode,
                    chain,
                    "ecb encrypts equal blocks to equal ciphertext and takes no IV; use xts or cbc",
                ))
            }
            ("aes" | "serpent" | "twofish", "adiantum") | ("xchacha12,aes" | "xchacha20,aes", _) => {
                return Err(refuse(
                    spec,
                    CipherPart::Mode,
                    chain,
                    "adiantum goes with the ciphers xchacha12,aes and xchacha20,aes only, and they with adiantum only",
                ))
            }
            ("aes" | "serpent" | "twofish", _) => {
                return Err(refuse(
                    spec,
                    CipherPart::Mode,
                    chain,
                    format!("the modes are xts and cbc (and adiantum); {SUPPORTED}"),
                ))
            }
            _ => {
                return Err(refuse(
                    spec,
                    CipherPart::Cipher,
                    name,
                    format!("the ciphers are aes, serpent, twofish, xchacha12,aes and xchacha20,aes; {SUPPORTED}"),
                ))
            }
        };
        let Some(iv) = iv else {
            return Err(refuse(
                spec,
                CipherPart::Iv,
                "",
                format!("the IV generator is missing: write {name}-{chain}-plain64"),
            ));
        };
        let (iv_name, iv_opt) = match iv.split_once(':') {
            Some((n, o)) => (n, Some(o)),
            None => (iv, None),
        };
        let iv = match (iv_name, iv_opt) {
            ("plain64", None) => IvGenerator::Plain64,
            ("plain", None) => IvGenerator::Plain,
            ("essiv", Some(h)) => {
                let Some(block) = mode.block_cipher().filter(|_| matches!(mode, CipherMode::Cbc(_)))
                else {
                    return Err(refuse(
                        spec,
                        CipherPart::Iv,
                        iv,
                        "essiv goes with cbc only; xts and adiantum take plain64",
                    ));
                };
                let Some(hash) = HashAlg::from_luks_name(h) else {
                    return Err(refuse(
                        spec,
                        CipherPart::IvHash,
                        h,
                        "the ESSIV hash is one of sha1, sha256, sha512, ripemd160, whirlpool (usually sha256)",
                    ));
                };
                if !block.accepts_key(hash.output_len()) {
                    return Err(refuse(
                        spec,
                        CipherPart::IvHash,
                        h,
                        format!(
                            "ESSIV keys {} with the {}-bit digest, which is not a {} key; use essiv:sha256",
                            block.as_str(),
                            hash.output_len() * 8,
                            block.as_str()
                        ),
                    ));
                }
                IvGenerator::Essiv(hash)
            }
            ("essiv", None) => {
                return Err(refuse(
                    spec,
                    CipherPart::IvHash,
                    "",
                    "essiv needs its hash: essiv:sha256",
                ))
            }
            (_, Some(_)) if matches!(iv_name, "plain" | "plain64") => {
                return Err(refuse(
                    spec,
                    CipherPart::Iv,
                    iv,
                    format!("{iv_name} takes no options"),
                ))
            }
            _ => {
                return Err(refuse(
                    spec,
                    CipherPart::Iv,
                    iv,
                    "the IV generators are plain64, plain and essiv:HASH (benbi, lmk, tcw, eboiv, elephant, null, random and plain64be are not supported)",
                ))
            }
        };
        if !mode.key_lengths().contains(&key_len) {
            let allowed: Vec<String> = mode
                .key_lengths()
                .iter()
                .map(|l| (l * 8).to_string())
                .collect();
            return Err(refuse(
                spec,
                CipherPart::KeySize,
                &format!("{} bits", key_len * 8),
                format!(
                    "{}-{} takes keys of {} bits",
                    name,
                    chain,
                    allowed.join(", ")
                ),
            ));
        }
        Ok(CipherSpec { mode, iv, key_len })
    }

    /// Parses a LUKS1 header's `cipher-name` and `cipher-mode` fields (e.g. `serpent` and
    /// `cbc-essiv:sha256`).
    ///
    /// # Errors
    /// As [`CipherSpec::parse`]; a name containing `-` is a [`CipherPart::Cipher`] error.
    pub fn from_luks1(name: &str, mode: &str, key_len: usize) -> Result<CipherSpec> {
        let joined = format!("{name}-{mode}");
        if name.contains('-') {
            return Err(refuse(
                &joined,
                CipherPart::Cipher,
                name,
                "a LUKS1 cipher-name holds no '-'",
            ));
        }
        CipherSpec::parse(&joined, key_len)
    }

    /// The cipher and its mode.
    pub fn mode(&self) -> CipherMode {
        self.mode
    }

    /// The IV generator.
    pub fn iv(&self) -> IvGenerator {
        self.iv
    }

    /// Key length in bytes (both XTS keys together).
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// The cipher name (LUKS1 `cipher-name`): `aes`, `serpent`, `twofish`, `xchacha12,aes`,
    /// `xchacha20,aes`.
    pub fn cipher_name(&self) -> &'static str {
        match self.mode {
            CipherMode::Xts(c) | CipherMode::Cbc(c) => c.as_str(),
            CipherMode::Adiantum(s) => s.as_str(),
        }
    }

    /// The mode and IV generator (LUKS1 `cipher-mode`): `xts-plain64`, `cbc-essiv:sha256` ...
    pub fn mode_name(&self) -> String {
        format!("{}-{}", self.mode.as_str(), self.iv)
    }
}

impl std::fmt::Display for CipherSpec {
    /// The joined specification (LUKS2 `encryption`), e.g. `aes-xts-plain64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.cipher_name(),
            self.mode.as_str(),
            self.iv
        )
    }
}

#[cfg(test)]
pub(crate) mod tests;
