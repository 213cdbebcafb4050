//! LUKS2 (the "LUKS2 On-Disk Format Specification", version 1.1.x, cited as §N below).
//!
//! A LUKS2 device starts with two copies of the header (§2), each a 4096-byte binary header
//! followed by a JSON area; then the binary keyslots area (§3.2), then the data segment
//! (§3.4), unless the header is detached. The JSON metadata names keyslots, tokens,
//! segments, digests and config (§3).

mod binary;
mod header;
mod json;
mod keyslot;
pub mod metadata;
mod segment;
mod state;
pub mod validate;
mod volume;

pub use crate::error::Copy;
pub use header::{Header, LoadReport};
pub use metadata::{
    Af, Area, Config, Digest, DigestParams, Kdf, Keyslot, Metadata, Requirements, Segment,
};
pub use segment::DataSegment;
pub use state::Blocker;
pub use volume::{Unlocked, Volume};

use crate::{Error, Result};
use sealvol_crypto::kdf::Argon2Variant;
use sealvol_crypto::{HashAlg, SectorSize};

/// Size of the binary header (§2.1).
pub const BIN_HDR_LEN: u64 = 4096;
/// Smallest header copy (16 KiB).
pub const MIN_HDR_SIZE: u64 = 0x4000;
/// Largest header copy (4 MiB).
pub const MAX_HDR_SIZE: u64 = 0x40_0000;
/// The allowed header copy sizes (`hdr_size`, "metadata size"), which are also the
/// possible offsets of the secondary copy (§2; cryptsetup `LUKS2_HDR2_OFFSETS`).
pub const METADATA_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x1_0000, 0x2_0000, 0x4_0000, 0x8_0000, 0x10_0000, 0x20_0000, 0x40_0000,
];
pub(crate) const HDR2_OFFSETS: [u64; 9] = METADATA_SIZES;
/// Largest keyslots area cryptsetup accepts (128 MiB).
pub const MAX_KEYSLOTS_SIZE: u64 = 0x800_0000;
/// Default header area before the data: 16 MiB (cryptsetup `LUKS2_DEFAULT_HDR_SIZE`).
pub const DEFAULT_HDR_AREA: u64 = 0x100_0000;
/// Anti-forensic stripes (the only value cryptsetup reads, `LUKS_STRIPES`).
pub const AF_STRIPES: u32 = 4000;
/// Most keyslots (and tokens) a header can have.
pub const MAX_KEYSLOTS: u32 = 32;
/// The default cipher for keyslots and data (cryptsetup's; every [`sealvol_crypto::CipherSpec`]
/// works).
pub const CIPHER_AES_XTS_PLAIN64: &str = "aes-xts-plain64";
/// cryptsetup's minimum PBKDF2 iterations.
pub const MIN_PBKDF2_ITERATIONS: u32 = 1000;

/// How a keyslot turns a passphrase into its area key (§3.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfParams {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// Hash of the HMAC.
        hash: HashAlg,
        /// Iterations (cryptsetup's minimum is 1000).
        iterations: u32,
    },
    /// Argon2i or Argon2id (version 0x13).
    Argon2 {
        /// `argon2i` or `argon2id`.
        variant: Argon2Variant,
        /// Passes (`time`; cryptsetup's minimum is 4).
        time: u32,
        /// Memory in KiB (`memory`; cryptsetup's minimum is 32).
        memory_kib: u32,
        /// Lanes (`cpus`).
        parallel: u32,
    },
}

impl KdfParams {
    /// PBKDF2-SHA256 with 1000 iterations, cryptsetup's minimum: for high-entropy machine
    /// keys only (a passphrase needs a memory-hard KDF).
    pub fn pbkdf2_min() -> Self {
        KdfParams::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: MIN_PBKDF2_ITERATIONS,
        }
    }

    /// Checks the parameters against cryptsetup's limits (PBKDF2 ≥ 1000 iterations; Argon2
    /// time ≥ 4, memory 32 KiB ..= 4 GiB, 1 ..= 4 lanes; cryptsetup `crypt_pbkdf_get_limits`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the parameter.
    pub fn check(&self) -> Result<()> {
        match *self {
            KdfParams::Pbkdf2 { iterations, .. } => {
                if iterations < MIN_PBKDF2_ITERATIONS {
                    return Err(Error::Invalid(format!(
                        "PBKDF2 iterations {iterations} is below cryptsetup's minimum of {MIN_PBKDF2_ITERATIONS}"
                    )));
                }
            }
            KdfParams::Argon2 {
                time,
                memory_kib,
                parallel,
                ..
            } => {
                if time < 4 {
                    return Err(Error::Invalid(format!(
                        "Argon2 time {time} is below cryptsetup's minimum of 4"
                    )));
                }
                if !(32..=4 * 1024 * 1024).contains(&memory_kib) {
                    return Err(Error::Invalid(format!(
                        "Argon2 memory {memory_kib} KiB is outside cryptsetup's range 32 KiB ..= 4 GiB"
                    )));
                }
                if !(1..=4).contains(&parallel) {
                    return Err(Error::Invalid(format!(
                        "Argon2 parallel {parallel} is outside cryptsetup's range 1..=4"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The keyslot `kdf` object with a fresh random salt.
    pub(crate) fn to_kdf(self) -> Result<Kdf> {
        let salt = random_vec(metadata::SALT_LEN)?;
        Ok(match self {
            KdfParams::Pbkdf2 { hash, iterations } => Kdf::Pbkdf2 {
                hash: hash.as_str().to_string(),
                iterations,
                salt,
            },
            KdfParams::Argon2 {
                variant,
                time,
                memory_kib,
                parallel,
            } => Kdf::Argon2 {
                variant,
                time,
                memory: memory_kib,
                cpus: parallel,
                salt,
            },
        })
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::pbkdf2_min()
    }
}

/// `pbkdf2-sha256, 1000 iterations` / `argon2id, time 4, memory 1048576 KiB, 4 threads`: how
/// the CLI names a keyslot's KDF.
impl std::fmt::Display for KdfParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            KdfParams::Pbkdf2 { hash, iterations } => {
                write!(f, "pbkdf2-{hash}, {iterations} iterations")
            }
            KdfParams::Argon2 {
                variant,
                time,
                memory_kib,
                parallel,
            } => write!(
                f,
                "{}, time {time}, memory {memory_kib} KiB, {parallel} threads",
                variant.as_str()
            ),
        }
    }
}

/// Serializes with the names of the keyslot `kdf` object (§3.2.3), without the salt:
/// `{"type": "pbkdf2", "hash", "iterations"}` or `{"type": "argon2id", "time", "memory",
/// "cpus"}`.
impl serde::Serialize for KdfParams {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match *self {
            KdfParams::Pbkdf2 { hash, iterations } => {
                m.serialize_entry("type", "pbkdf2")?;
                m.serialize_entry("hash", hash.as_str())?;
                m.serialize_entry("iterations", &iterations)?;
            }
            KdfParams::Argon2 {
                variant,
                time,
                memory_kib,
                parallel,
            } => {
                m.serialize_entry("type", variant.as_str())?;
                m.serialize_entry("time", &time)?;
                m.serialize_entry("memory", &memory_kib)?;
                m.serialize_entry("cpus", &parallel)?;
            }
        }
        m.end()
    }
}

/// Parameters of [`Volume::format`].
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// Data cipher, any specification [`sealvol_crypto::CipherSpec::parse`] accepts (default
    /// `aes-xts-plain64`); the first keyslot's area uses it too, as cryptsetup does.
    pub cipher: String,
    /// Volume key size in bits, one the cipher's mode allows (default 512, AES-256-XTS).
    pub key_size_bits: u32,
    /// Encryption sector size (default 4096).
    pub sector_size: SectorSize,
    /// Size of one header copy: one of [`METADATA_SIZES`] (default 16 KiB).
    pub metadata_size: u64,
    /// Keyslots area size, a multiple of 4096 up to 128 MiB. Default: as cryptsetup, the
    /// room between the two header copies and the data offset (16 MiB − 2 × metadata size
    /// with the defaults).
    pub keyslots_size: Option<u64>,
    /// Data segment offset in bytes on the data device. Default: attached, 16 MiB (or the
    /// header and keyslots area rounded up to 1 MiB when `keyslots_size` is given);
    /// detached, 0.
    pub data_offset: Option<u64>,
    /// The header lives on its own storage (`cryptsetup --header`).
    pub detached: bool,
    /// Label (at most 47 bytes).
    pub label: Option<String>,
    /// Subsystem (at most 47 bytes).
    pub subsystem: Option<String>,
    /// UUID; default a random version 4 UUID.
    pub uuid: Option<String>,
    /// KDF of the first keyslot (default [`KdfParams::pbkdf2_min`], cheap: callers pick a
    /// memory-hard profile for passphrases).
    pub kdf: KdfParams,
    /// Id of the first keyslot (default 0).
    pub keyslot: Option<u32>,
    /// Hash of the volume key digest and of the AF splitter (default sha256, as
    /// cryptsetup).
    pub digest_hash: HashAlg,
    /// PBKDF2 iterations of the volume key digest (default 1000, cryptsetup's minimum;
    /// cryptsetup benchmarks about 1/8 s).
    pub digest_iterations: u32,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            cipher: CIPHER_AES_XTS_PLAIN64.to_string(),
            key_size_bits: 512,
            sector_size: SectorSize::S4096,
            metadata_size: MIN_HDR_SIZE,
            keyslots_size: None,
            data_offset: None,
            detached: false,
            label: None,
            subsystem: None,
            uuid: None,
            kdf: KdfParams::pbkdf2_min(),
            keyslot: None,
            digest_hash: HashAlg::Sha256,
            digest_iterations: MIN_PBKDF2_ITERATIONS,
        }
    }
}

/// Bytes of a keyslot area for a `key_len`-byte key: the AF-split key rounded up to 4096
/// (cryptsetup `get_area_size`).
pub fn keyslot_area_size(key_len: usize) -> u64 {
    (key_len as u64 * u64::from(AF_STRIPES)).div_ceil(4096) * 4096
}

/// Parses one header copy from `bytes` (a primary copy at offset 0 of `bytes`, or a
/// secondary copy whose `hdr_offset` is its `hdr_size`), with every check
/// [`Volume::open`] applies to a copy: magic, version, offsets, size, checksum, JSON area
/// form and metadata validation. No I/O: for fuzzing and for inspecting backups.
///
/// # Errors
/// [`Error::NotLuks`], [`Error::UnsupportedVersion`], [`Error::Corrupt`],
/// [`Error::Invalid`], [`Error::Unsupported`].
pub fn parse_header_bytes(bytes: &[u8]) -> Result<Header> {
    let (which, offset) = match binary::BinaryHeader::decode(bytes) {
        Some(b) if b.secondary => (Copy::Secondary, b.hdr_size),
        Some(_) => (Copy::Primary, 0),
        None if bytes.len() >= 6 && binary::magic(bytes).is_luks() => {
            return Err(Error::Corrupt {
                copy: Copy::Primary,
                reason: format!("truncated: {} bytes, a binary header is 4096", bytes.len()),
            })
        }
        None => return Err(Error::NotLuks),
    };
    let p = header::parse_copy(bytes, which, offset).map_err(|e| e.error)?;
    let salt = p.bin.salt;
    header::header_from(p, Some(salt))
}

/// Parses and validates a JSON area (the bytes after a copy's 4096-byte binary header) for a
/// copy of `hdr_size` bytes: the area's form, cryptsetup's repair and every metadata rule
/// ([`validate::RULES`]), then the typed model. No checksum, no binary header: for fuzzing
/// and tests of the metadata rules alone.
///
/// # Errors
/// [`Error::Invalid`] naming the rule.
pub fn parse_json_area(area: &[u8], hdr_size: u64) -> Result<Metadata> {
    let mut v = header::parse_json_area(area)?;
    validate::repair(&mut v);
    validate::check(&v, hdr_size)?;
    Metadata::from_json(&v)
}

impl binary::Magic {
    fn is_luks(&self) -> bool {
        !matches!(self, binary::Magic::Other)
    }
}

/// `len` bytes from the operating system's CSPRNG (for salts and wiping; not secret).
pub(crate) fn random_vec(len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    fill_random(&mut v)?;
    Ok(v)
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    sealvol_crypto::random::fill_bulk(buf).map_err(Error::Crypto)
}

pub(crate) fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    fill_random(&mut a)?;
    Ok(a)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
