//! A new header in one call: [`NewHeader::build`] makes a whole LUKS1 or LUKS2 header area in
//! memory (binary headers, JSON, keyslot material) for a fresh random volume key, choosing the
//! keyslot's KDF by a [`KdfPolicy`]. Nothing touches a disk: the caller writes the bytes where
//! the header lives (the volume file, or a detached header file) once everything that can fail
//! has failed. [`probe`] tells which header a device starts with.
//!
//! The KDF policy follows cryptsetup, with one addition from sealvol's design: a machine key
//! (a key that cannot be typed text, [`is_machine_key`]) gains nothing from a memory-hard KDF,
//! so its keyslot gets PBKDF2 at cryptsetup's minimum cost and formatting takes milliseconds.
//! Anything that may be a passphrase gets Argon2id benchmarked as cryptsetup does (about 2 s,
//! at most 1 GiB); LUKS1 keyslots get PBKDF2 benchmarked likewise.
//!
//! ```
//! use sealvol_luks::{KdfPolicy, NewHeader};
//! let built = NewHeader::default().build(&[0xff; 32]).unwrap();
//! assert_eq!(built.segment.offset, 16 << 20);
//! assert!(built.kdf.is_machine_cost());
//! ```

use std::io::Cursor;
use std::time::Duration;

use sealvol_crypto::kdf::{self, Argon2Variant};
use sealvol_crypto::{CipherSpec, HashAlg, SecretBytes, SectorSize};

use crate::{luks1, luks2, DataSegment, Error, KdfParams, Result};

/// cryptsetup's default KDF benchmark target (`--iter-time`).
pub const DEFAULT_ITER_TIME: Duration = Duration::from_millis(2000);
/// cryptsetup's default Argon2 memory cap (1 GiB, in KiB).
pub const DEFAULT_ARGON2_MEMORY_KIB: u32 = 1 << 20;

/// A LUKS version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    /// LUKS1: what qemu's `luks` driver reads; 512-byte sectors, PBKDF2 keyslots.
    Luks1,
    /// LUKS2, the default.
    #[default]
    Luks2,
}

impl Version {
    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            Version::Luks1 => 1,
            Version::Luks2 => 2,
        }
    }

    /// `luks1` or `luks2`, as `--type` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Luks1 => "luks1",
            Version::Luks2 => "luks2",
        }
    }
}

impl std::str::FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "luks2" => Ok(Version::Luks2),
            "luks1" => Ok(Version::Luks1),
            other => Err(Error::Invalid(format!(
                "type {other} is not supported; use luks2 (the default) or luks1"
            ))),
        }
    }
}

/// What the first bytes of a device say it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The LUKS version in the primary header.
    pub version: u16,
    /// The UUID in the primary header (offset 168 in both versions), when it is text.
    pub uuid: Option<String>,
}

/// Bytes [`probe`] needs: the fixed part of both binary headers up to the end of the UUID.
pub const PROBE_LEN: usize = 208;

/// Which LUKS header `bytes` (the first [`PROBE_LEN`] bytes of a device) start with: `None`
/// when there is no primary LUKS magic. Checks nothing else: [`crate::AnyVolume::open`]
/// validates.
pub fn probe(bytes: &[u8]) -> Option<Probe> {
    if bytes.len() < 8 || bytes[..6] != luks1::MAGIC {
        return None;
    }
    let version = u16::from_be_bytes([bytes[6], bytes[7]]);
    let uuid = bytes.get(168..208).and_then(|u| {
        let end = u.iter().position(|&b| b == 0).unwrap_or(u.len());
        std::str::from_utf8(&u[..end])
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    });
    Some(Probe { version, uuid })
}

/// True for a key that cannot be typed text: exactly 32 or 64 bytes (256 or 512 bits, what
/// `head -c 32 /dev/urandom` makes) that are not valid UTF-8. Such a key gains nothing from a
/// memory-hard KDF. Everything else may be a passphrase a person chose, typed or saved from an
/// editor (hex or base64 text, any script, any line ending). Random bytes are valid UTF-8
/// with a probability below 10^-9 for 32 bytes, so a machine key is recognised in practice
/// always.
pub fn is_machine_key(key: &[u8]) -> bool {
    matches!(key.len(), 32 | 64) && std::str::from_utf8(key).is_err()
}

/// True for a key that [`is_machine_key`] accepts but that might still be text in a
/// single-byte encoding (Latin-1, CP1251 ...): no control bytes at all. Worth a hint to the
/// user, not a decision (one random 32-byte key in about 7000 looks like this).
pub fn might_be_legacy_text(key: &[u8]) -> bool {
    let text = key.strip_suffix(b"\n").unwrap_or(key);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    text.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0xa0)
}

/// How to treat the key when no KDF is named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyProfile {
    /// A machine key if [`is_machine_key`], else a passphrase.
    #[default]
    Auto,
    /// A high-entropy key whatever it looks like (a random key written as hex, say):
    /// PBKDF2 at 1000 iterations.
    Machine,
    /// A passphrase: Argon2id (LUKS1: PBKDF2), benchmarked.
    Passphrase,
}

/// A KDF named by the caller (`--pbkdf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfKind {
    /// PBKDF2.
    Pbkdf2,
    /// Argon2i.
    Argon2i,
    /// Argon2id.
    Argon2id,
}

/// How the KDF of a new keyslot is chosen (cryptsetup's `--pbkdf*` options, plus the key
/// profile).
#[derive(Clone, Debug)]
pub struct KdfPolicy {
    /// The KDF; `None`: by the key profile.
    pub kind: Option<KdfKind>,
    /// Exactly this many PBKDF2 iterations or Argon2 passes instead of benchmarking.
    pub force_iterations: Option<u32>,
    /// Benchmark target (default [`DEFAULT_ITER_TIME`]).
    pub iter_time: Option<Duration>,
    /// Argon2 memory in KiB (the benchmark's cap, or the cost with `force_iterations`;
    /// default [`DEFAULT_ARGON2_MEMORY_KIB`]).
    pub max_memory_kib: Option<u32>,
    /// Argon2 lanes (default min(4, CPUs)).
    pub parallel: Option<u32>,
    /// PBKDF2 hash (LUKS1: the header's hash for every keyslot; LUKS2: also the hash of the
    /// volume key digest and of the AF splitter, as cryptsetup's `--hash`).
    pub hash: HashAlg,
    /// How to treat the key when `kind` is not given.
    pub profile: KeyProfile,
}

impl Default for KdfPolicy {
    fn default() -> Self {
        KdfPolicy {
            kind: None,
            force_iterations: None,
            iter_time: None,
            max_memory_kib: None,
            parallel: None,
            hash: HashAlg::Sha256,
            profile: KeyProfile::Auto,
        }
    }
}

impl KdfPolicy {
    /// Whether the policy treats `key` as a machine key.
    pub fn is_machine(&self, key: &[u8]) -> bool {
        match self.profile {
            KeyProfile::Machine => true,
            KeyProfile::Passphrase => false,
            KeyProfile::Auto => is_machine_key(key),
        }
    }

    /// A hint for the user about how `key` was taken, when it may be wrong (a machine key
    /// that might be a passphrase in a legacy single-byte encoding).
    pub fn hint(&self, key: &[u8]) -> Option<&'static str> {
        (self.profile == KeyProfile::Auto
            && self.kind.is_none()
            && is_machine_key(key)
            && might_be_legacy_text(key))
        .then_some(
            "the key is taken for a machine key (32 or 64 bytes, not UTF-8) and gets PBKDF2 at 1000 iterations; if it is a typed passphrase in a legacy encoding, say it is a passphrase (--key-profile passphrase)",
        )
    }

    /// The KDF for a new keyslot protecting `key`. `luks1`: the keyslot is LUKS1's, whose
    /// PBKDF2 hash is `self.hash` and which has no Argon2. Benchmarks (about the iteration
    /// time) unless the key is a machine key or the cost is forced.
    ///
    /// # Errors
    /// [`Error::Invalid`] for Argon2 in LUKS1 and for forced costs below cryptsetup's
    /// minimums.
    pub fn params_for(&self, key: &[u8], luks1: bool) -> Result<KdfParams> {
        if luks1 && matches!(self.kind, Some(KdfKind::Argon2i | KdfKind::Argon2id)) {
            return Err(Error::Invalid(
                "LUKS1 keyslots use PBKDF2 only; drop the Argon2 choice or use LUKS2".into(),
            ));
        }
        let machine = self.is_machine(key);
        let kind = self.kind.unwrap_or(if machine || luks1 {
            KdfKind::Pbkdf2
        } else {
            KdfKind::Argon2id
        });
        let target = self.iter_time.unwrap_or(DEFAULT_ITER_TIME);
        let params = match kind {
            KdfKind::Pbkdf2 => {
                let iterations = match (self.force_iterations, self.iter_time) {
                    (Some(n), _) if n < kdf::PBKDF2_MIN_ITERATIONS => {
                        return Err(Error::Invalid(format!(
                            "{n} PBKDF2 iterations is below cryptsetup's minimum of {}",
                            kdf::PBKDF2_MIN_ITERATIONS
                        )))
                    }
                    (Some(n), _) => n,
                    // A machine key needs no stretching: cryptsetup's minimum.
                    (None, None) if machine => kdf::PBKDF2_MIN_ITERATIONS,
                    (None, _) => kdf::benchmark_pbkdf2(self.hash, 64, target),
                };
                KdfParams::Pbkdf2 {
                    hash: self.hash,
                    iterations,
                }
            }
            KdfKind::Argon2i | KdfKind::Argon2id => {
                let variant = if kind == KdfKind::Argon2i {
                    Argon2Variant::Argon2i
                } else {
                    Argon2Variant::Argon2id
                };
                let parallel = self.parallel.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get().min(4) as u32)
                        .unwrap_or(1)
                });
                let max_memory = self.max_memory_kib.unwrap_or(DEFAULT_ARGON2_MEMORY_KIB);
                let (time, memory_kib) = match self.force_iterations {
                    Some(t) => (t, max_memory),
                    None => {
                        tracing::info!(ms = target.as_millis() as u64, "benchmarking Argon2");
                        kdf::benchmark_argon2(variant, target, max_memory, parallel)
                    }
                };
                KdfParams::Argon2 {
                    variant,
                    time,
                    memory_kib,
                    parallel,
                }
            }
        };
        Ok(params)
    }
}

impl KdfParams {
    /// Whether this is the machine-key cost: PBKDF2 at cryptsetup's minimum.
    pub fn is_machine_cost(&self) -> bool {
        matches!(self, KdfParams::Pbkdf2 { iterations, .. } if *iterations == kdf::PBKDF2_MIN_ITERATIONS)
    }
}

/// cryptsetup's default key size for `cipher`, in bits: the largest key its mode allows (512
/// for XTS: two AES-256 keys; 256 for CBC and Adiantum); 512 when the spec does not parse
/// (then [`NewHeader::build`] says what is wrong with it).
pub fn default_key_bits(cipher: &str) -> u32 {
    [64usize, 48, 32, 24, 16]
        .into_iter()
        .find(|&len| CipherSpec::parse(cipher, len).is_ok())
        .map_or(512, |len| len as u32 * 8)
}

/// Everything about a new header but the keys (`cryptsetup luksFormat`'s options).
#[derive(Clone, Debug)]
pub struct NewHeader {
    /// LUKS1 or LUKS2.
    pub version: Version,
    /// Data cipher: any specification [`CipherSpec::parse`] accepts (aes, serpent, twofish
    /// in xts-plain64, xts-plain, cbc-essiv:sha256, cbc-plain64, cbc-plain; adiantum). LUKS1
    /// stores it as cipher-name and cipher-mode, LUKS2 as the joined string; the first
    /// keyslot's area uses it too, as cryptsetup does.
    pub cipher: String,
    /// Volume key size in bits: one the cipher's mode allows (xts 256, 384, 512; cbc 128,
    /// 192, 256; adiantum 256).
    pub key_size_bits: u32,
    /// Encryption sector size; default 4096 (LUKS1: 512, its only size).
    pub sector_size: Option<u64>,
    /// The header lives in a file of its own.
    pub detached: bool,
    /// LUKS2 label.
    pub label: Option<String>,
    /// LUKS2 subsystem.
    pub subsystem: Option<String>,
    /// UUID (default random).
    pub uuid: Option<String>,
    /// Keyslot of the first key (default 0).
    pub keyslot: Option<u32>,
    /// LUKS2 metadata (one header copy) size in bytes (default 16 KiB).
    pub metadata_size: Option<u64>,
    /// LUKS2 keyslots area size in bytes.
    pub keyslots_size: Option<u64>,
    /// Data offset in 512-byte sectors (default: 16 MiB LUKS2, 2 MiB LUKS1 attached; 0
    /// detached).
    pub data_offset_sectors: Option<u64>,
    /// How the first keyslot's KDF is chosen.
    pub kdf: KdfPolicy,
}

impl Default for NewHeader {
    fn default() -> Self {
        NewHeader {
            version: Version::Luks2,
            cipher: luks2::CIPHER_AES_XTS_PLAIN64.into(),
            key_size_bits: 512,
            sector_size: None,
            detached: false,
            label: None,
            subsystem: None,
            uuid: None,
            keyslot: None,
            metadata_size: None,
            keyslots_size: None,
            data_offset_sectors: None,
            kdf: KdfPolicy::default(),
        }
    }
}

/// A header built in memory.
#[derive(Debug)]
pub struct BuiltHeader {
    /// LUKS1 or LUKS2.
    pub version: Version,
    /// The volume UUID.
    pub uuid: String,
    /// Where the data goes and how it is encrypted.
    pub segment: DataSegment,
    /// The header area: write it at offset 0 of the header's file.
    pub bytes: Vec<u8>,
    /// The first keyslot's KDF, as chosen.
    pub kdf: KdfParams,
    /// The first keyslot's id.
    pub keyslot: u32,
}

impl NewHeader {
    /// Checks the options and builds the header area for a fresh random volume key, with one
    /// keyslot opened by `passphrase`. Runs the KDF (and its benchmark) once.
    ///
    /// # Errors
    /// [`Error::Invalid`] / [`Error::UnsupportedCipher`] naming the option that is wrong, and
    /// the version's format errors.
    pub fn build(&self, passphrase: &[u8]) -> Result<BuiltHeader> {
        let luks1 = self.version == Version::Luks1;
        if self.key_size_bits % 8 != 0 {
            return Err(Error::Invalid(format!(
                "a key size of {} bits is not whole bytes",
                self.key_size_bits
            )));
        }
        CipherSpec::parse(&self.cipher, self.key_size_bits as usize / 8)?;
        let sector_size = match (luks1, self.sector_size) {
            (true, None | Some(512)) => SectorSize::S512,
            (true, Some(s)) => {
                return Err(Error::Invalid(format!(
                    "sector size {s}: LUKS1 encrypts 512-byte sectors only"
                )))
            }
            (false, s) => SectorSize::try_from(s.unwrap_or(4096))?,
        };
        if luks1 {
            for (set, what) in [
                (self.label.is_some(), "a label"),
                (self.subsystem.is_some(), "a subsystem"),
                (self.metadata_size.is_some(), "a metadata size"),
                (self.keyslots_size.is_some(), "a keyslots area size"),
            ] {
                if set {
                    return Err(Error::Invalid(format!(
                        "{what} exists only in LUKS2; drop it or format LUKS2"
                    )));
                }
            }
        }
        let data_offset = match self.data_offset_sectors {
            Some(s) => Some(
                s.checked_mul(512)
                    .ok_or_else(|| Error::Invalid(format!("data offset {s} is too large")))?,
            ),
            None => None,
        };
        let kdf = self.kdf.params_for(passphrase, luks1)?;
        let volume_key = SecretBytes::random(self.key_size_bits as usize / 8)?;
        let keyslot = self.keyslot.unwrap_or(0);
        let built = if luks1 {
            let KdfParams::Pbkdf2 { hash, iterations } = kdf else {
                unreachable!("params_for gives LUKS1 PBKDF2 only");
            };
            let opts = luks1::FormatOptions {
                cipher: self.cipher.clone(),
                key_size_bits: self.key_size_bits,
                hash,
                iterations,
                detached: self.detached,
                payload_offset: self.data_offset_sectors,
                uuid: self.uuid.clone(),
                keyslot: self.keyslot,
                ..Default::default()
            };
            let vol =
                luks1::Volume::format(Cursor::new(Vec::new()), &opts, &volume_key, passphrase)?;
            BuiltHeader {
                version: Version::Luks1,
                uuid: vol.header().uuid().to_string(),
                segment: vol.data_segment()?,
                bytes: vol.into_storage().into_inner(),
                kdf,
                keyslot,
            }
        } else {
            let defaults = luks2::FormatOptions::default();
            let opts = luks2::FormatOptions {
                cipher: self.cipher.clone(),
                key_size_bits: self.key_size_bits,
                sector_size,
                detached: self.detached,
                label: self.label.clone(),
                subsystem: self.subsystem.clone(),
                uuid: self.uuid.clone(),
                kdf,
                keyslot: self.keyslot,
                metadata_size: self.metadata_size.unwrap_or(defaults.metadata_size),
                keyslots_size: self.keyslots_size,
                data_offset,
                // As cryptsetup: --hash names the digest's and the AF splitter's hash too.
                digest_hash: self.kdf.hash,
                ..defaults
            };
            let vol =
                luks2::Volume::format(Cursor::new(Vec::new()), &opts, &volume_key, passphrase)?;
            BuiltHeader {
                version: Version::Luks2,
                uuid: vol.header().uuid().to_string(),
                segment: vol.data_segment()?,
                bytes: vol.into_storage().into_inner(),
                kdf,
                keyslot,
            }
        };
        tracing::debug!(uuid = %built.uuid, version = built.version.number(), "built a header");
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AnyVolume, HeaderPlacement};

    #[test]
    fn machine_keys_are_keys_that_cannot_be_text() {
        let random: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(3) | 0x80)
            .collect();
        assert!(is_machine_key(&random));
        let random64: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(151) ^ 0xc5).collect();
        assert!(is_machine_key(&random64));
        // Issue 9: passphrases in any script or line ending, hex and base64 are text.
        let phrases: [&[u8]; 9] = [
            "Пароль для моего тома: очень длинный".as_bytes(),
            "Größenwahnsinnige Schlüssel öffnen Türen".as_bytes(),
            "这是一个很长的中文密码用于测试".as_bytes(),
            "🔑🔑🔑🔑🔑🔑🔑🔑".as_bytes(),
            b"correct horse battery staple and more words\r\n",
            b"correct horse battery staple and more words too\n",
            b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            b"q83vEjRWd4Gvh2aP5XyZ0bCdEfGhIjKlMnOpQrStUvWx\n",
            b"correct horse battery staple",
        ];
        for p in phrases {
            assert!(!is_machine_key(p), "{:?}", String::from_utf8_lossy(p));
        }
        assert_eq!("🔑🔑🔑🔑🔑🔑🔑🔑".len(), 32);
        assert!(!is_machine_key(&[0xffu8; 16]));
        assert!(!is_machine_key(&[0xffu8; 33]));
    }

    #[test]
    fn legacy_single_byte_text_gets_a_hint() {
        let latin1: Vec<u8> = "Größenwahnsinnige Schlüssel 1234"
            .chars()
            .map(|c| c as u32 as u8)
            .collect();
        assert_eq!(latin1.len(), 32);
        assert!(is_machine_key(&latin1));
        assert!(KdfPolicy::default().hint(&latin1).is_some());
        let mut random = [0u8; 32];
        random[0] = 0x01;
        random[1] = 0xff;
        assert!(KdfPolicy::default().hint(&random).is_none());
    }

    #[test]
    fn the_policy_picks_by_key_and_by_what_the_caller_says() {
        let machine = [0xffu8; 32];
        let p = KdfPolicy::default();
        assert!(p.params_for(&machine, false).unwrap().is_machine_cost());
        assert!(p.params_for(&machine, true).unwrap().is_machine_cost());
        let fast = KdfPolicy {
            iter_time: Some(Duration::from_millis(20)),
            max_memory_kib: Some(1024),
            ..KdfPolicy::default()
        };
        assert!(matches!(
            fast.params_for(b"a passphrase", false).unwrap(),
            KdfParams::Argon2 {
                variant: Argon2Variant::Argon2id,
                ..
            }
        ));
        assert!(matches!(
            fast.params_for(b"a passphrase", true).unwrap(),
            KdfParams::Pbkdf2 { .. }
        ));
        let said = KdfPolicy {
            profile: KeyProfile::Machine,
            ..KdfPolicy::default()
        };
        assert!(said
            .params_for(b"00ff00ff", false)
            .unwrap()
            .is_machine_cost());
        let argon_luks1 = KdfPolicy {
            kind: Some(KdfKind::Argon2id),
            ..KdfPolicy::default()
        };
        assert!(argon_luks1.params_for(&machine, true).is_err());
        let too_few = KdfPolicy {
            kind: Some(KdfKind::Pbkdf2),
            force_iterations: Some(999),
            ..KdfPolicy::default()
        };
        assert!(too_few.params_for(&machine, false).is_err());
    }

    #[test]
    fn built_headers_open_and_probe() {
        let key = [0xffu8; 32];
        for (version, detached, offset) in [
            (Version::Luks2, false, 16u64 << 20),
            (Version::Luks2, true, 0),
            (Version::Luks1, false, 2 << 20),
            (Version::Luks1, true, 0),
        ] {
            let req = NewHeader {
                version,
                detached,
                ..NewHeader::default()
            };
            let built = req.build(&key).unwrap();
            assert_eq!(built.segment.offset, offset, "{version:?} {detached}");
            let p = probe(&built.bytes).unwrap();
            assert_eq!(p.version, u16::from(version.number()));
            assert_eq!(p.uuid.as_deref(), Some(built.uuid.as_str()));
            let mut vol = AnyVolume::open(Cursor::new(built.bytes)).unwrap();
            assert_eq!(vol.version(), version.number());
            vol.unlock(&key, None).unwrap();
            let placement = if detached {
                HeaderPlacement::Detached
            } else {
                HeaderPlacement::Attached
            };
            vol.data_segment_for(placement).unwrap();
        }
        assert_eq!(probe(b"not a header"), None);
        assert_eq!(probe(&[0u8; 4096]), None);
    }

    /// Every cipher specification and key size sealvol implements, with every hash, builds a
    /// header of both versions that opens, unlocks, and names the cipher as cryptsetup does
    /// (LUKS1: cipher-name and cipher-mode apart; LUKS2: joined, on the segment and on the
    /// keyslot area).
    #[test]
    fn every_cipher_key_size_and_hash_builds_both_versions() {
        let key = [0xffu8; 32];
        let specs: &[(&str, &[u32])] = &[
            ("aes-xts-plain64", &[256, 384, 512]),
            ("serpent-xts-plain", &[256, 384, 512]),
            ("twofish-xts-plain64", &[256, 384, 512]),
            ("aes-cbc-essiv:sha256", &[128, 192, 256]),
            ("serpent-cbc-plain64", &[128, 192, 256]),
            ("twofish-cbc-plain", &[128, 192, 256]),
            ("xchacha12,aes-adiantum-plain64", &[256]),
            ("xchacha20,aes-adiantum-plain64", &[256]),
        ];
        let mut n = 0;
        for &(cipher, sizes) in specs {
            for &bits in sizes {
                for version in [Version::Luks1, Version::Luks2] {
                    let hash = HashAlg::ALL[n % HashAlg::ALL.len()];
                    n += 1;
                    let req = NewHeader {
                        version,
                        cipher: cipher.into(),
                        key_size_bits: bits,
                        kdf: KdfPolicy {
                            hash,
                            ..KdfPolicy::default()
                        },
                        ..NewHeader::default()
                    };
                    let built = req.build(&key).unwrap();
                    assert_eq!(built.segment.cipher, cipher);
                    assert_eq!(built.segment.key_size as u32 * 8, bits);
                    let mut vol = AnyVolume::open(Cursor::new(built.bytes)).unwrap();
                    let vk = vol.unlock(&key, None).unwrap().volume_key;
                    assert_eq!(vk.len() as u32 * 8, bits);
                    let seg = vol.data_segment().unwrap();
                    assert_eq!(seg.spec().unwrap().to_string(), cipher);
                    seg.cipher(&vk).unwrap();
                    match &vol {
                        AnyVolume::Luks1(v) => {
                            let h = v.header();
                            let spec = h.cipher_spec().unwrap();
                            assert_eq!(h.cipher(), cipher);
                            assert_eq!(h.hash(), hash);
                            let raw = h.encode();
                            let field = |at: usize| {
                                let f = &raw[at..at + 32];
                                String::from_utf8(
                                    f[..f.iter().position(|&b| b == 0).unwrap()].to_vec(),
                                )
                                .unwrap()
                            };
                            assert_eq!(field(8), spec.cipher_name());
                            assert_eq!(field(40), spec.mode_name());
                        }
                        AnyVolume::Luks2(v) => {
                            let md = &v.header().metadata;
                            assert_eq!(md.segments[&0].encryption.as_deref(), Some(cipher));
                            let area = &md.keyslots[&0].area;
                            assert_eq!(area.encryption.as_deref(), Some(cipher));
                            assert_eq!(area.key_size, Some(bits / 8));
                            assert_eq!(md.digests[&0].params.as_ref().unwrap().hash, hash.as_str());
                        }
                    }
                }
            }
        }
        assert_eq!(n, 2 * (3 * 3 + 3 * 3 + 2));
    }

    #[test]
    fn default_key_sizes_follow_the_mode() {
        assert_eq!(default_key_bits("aes-xts-plain64"), 512);
        assert_eq!(default_key_bits("serpent-xts-plain"), 512);
        assert_eq!(default_key_bits("aes-cbc-essiv:sha256"), 256);
        assert_eq!(default_key_bits("twofish-cbc-plain64"), 256);
        assert_eq!(default_key_bits("xchacha20,aes-adiantum-plain64"), 256);
        assert_eq!(default_key_bits("nonsense"), 512);
    }

    #[test]
    fn bad_requests_are_refused_naming_the_option() {
        let key = [0xffu8; 32];
        let cases: Vec<(NewHeader, &str)> = vec![
            (
                NewHeader {
                    cipher: "aes-cbc-essiv:sha256".into(),
                    ..NewHeader::default()
                },
                "key size \"512 bits\"",
            ),
            (
                NewHeader {
                    cipher: "aes-cbc-lmk".into(),
                    key_size_bits: 256,
                    ..NewHeader::default()
                },
                "IV generator \"lmk\"",
            ),
            (
                NewHeader {
                    key_size_bits: 128,
                    ..NewHeader::default()
                },
                "128 bits",
            ),
            (
                NewHeader {
                    key_size_bits: 260,
                    ..NewHeader::default()
                },
                "260 bits",
            ),
            (
                NewHeader {
                    version: Version::Luks1,
                    sector_size: Some(4096),
                    ..NewHeader::default()
                },
                "512-byte sectors only",
            ),
            (
                NewHeader {
                    version: Version::Luks1,
                    label: Some("x".into()),
                    ..NewHeader::default()
                },
                "only in LUKS2",
            ),
            (
                NewHeader {
                    sector_size: Some(1000),
                    ..NewHeader::default()
                },
                "1000",
            ),
        ];
        for (req, needle) in cases {
            let e = req.build(&key).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
