//! The LUKS1 binary header (LUKS1 On-Disk Format Specification 1.2.3, §2.4 "The partition
//! header", §2.5 "key slots"): 592 bytes, every integer big-endian.
//!
//! | offset | length | field |
//! |---|---|---|
//! | 0 | 6 | magic `LUKS\xba\xbe` |
//! | 6 | 2 | version (1) |
//! | 8 | 32 | cipher-name |
//! | 40 | 32 | cipher-mode |
//! | 72 | 32 | hash-spec |
//! | 104 | 4 | payload-offset (sectors) |
//! | 108 | 4 | key-bytes |
//! | 112 | 20 | mk-digest |
//! | 132 | 32 | mk-digest-salt |
//! | 164 | 4 | mk-digest-iter |
//! | 168 | 40 | uuid |
//! | 208 | 8 × 48 | key slots: active, iterations, salt (32), key-material-offset, stripes |

use crate::{Error, Result};
use sealvol_crypto::{CipherSpec, HashAlg};

/// Bytes of the binary header.
pub const PHDR_LEN: usize = 592;
/// The LUKS magic (shared with LUKS2's primary copy).
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Number of key slots.
pub const NUM_KEYS: usize = 8;
/// Length of salts.
pub const SALT_LEN: usize = 32;
/// Length of the master key digest.
pub const DIGEST_LEN: usize = 20;
/// Anti-forensic stripes (the only value cryptsetup accepts).
pub const STRIPES: u32 = 4000;
/// A key slot in use (`LUKS_KEY_ENABLED`).
pub const KEY_ENABLED: u32 = 0x00AC_71F3;
/// A free key slot (`LUKS_KEY_DISABLED`).
pub const KEY_DISABLED: u32 = 0x0000_DEAD;
/// LUKS1 sector size: offsets are counted in it and data is encrypted in it.
pub const SECTOR: u64 = 512;
/// Alignment of key material (cryptsetup `LUKS_ALIGN_KEYSLOTS`).
pub const ALIGN_KEYSLOTS: u64 = 4096;

const NAME_LEN: usize = 32;
const UUID_LEN: usize = 40;
const SLOT_LEN: usize = 48;
const SLOTS_AT: usize = 208;

/// One key slot (§2.5).
#[derive(Clone, PartialEq, Eq)]
pub struct Keyslot {
    /// In use (`0x00AC71F3`) or free (`0x0000DEAD`).
    pub active: bool,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Start of the key material, in 512-byte sectors.
    pub key_material_offset: u32,
    /// AF stripes (4000).
    pub stripes: u32,
}

impl std::fmt::Debug for Keyslot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyslot")
            .field("active", &self.active)
            .field("iterations", &self.iterations)
            .field("key_material_offset", &self.key_material_offset)
            .field("stripes", &self.stripes)
            .finish_non_exhaustive()
    }
}

/// A parsed and validated LUKS1 header.
///
/// Only headers sealvol can use exist as this type: a cipher-name and cipher-mode that make a
/// [`CipherSpec`] with the header's key size (aes, serpent, twofish in xts or cbc, adiantum),
/// a hash sealvol implements, 4000 stripes, key material inside the header area, after the
/// binary header and before the payload, never overlapping.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub(crate) cipher_name: String,
    pub(crate) cipher_mode: String,
    pub(crate) hash: HashAlg,
    pub(crate) payload_offset: u32,
    pub(crate) key_bytes: u32,
    pub(crate) mk_digest: [u8; DIGEST_LEN],
    pub(crate) mk_digest_salt: [u8; SALT_LEN],
    pub(crate) mk_digest_iter: u32,
    pub(crate) uuid: String,
    pub(crate) keyslots: [Keyslot; NUM_KEYS],
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Luks1Header")
            .field("cipher", &self.cipher())
            .field("hash", &self.hash)
            .field("payload_offset", &self.payload_offset)
            .field("key_bytes", &self.key_bytes)
            .field("uuid", &self.uuid)
            .field("keyslots", &self.keyslots)
            .finish_non_exhaustive()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn text(b: &[u8], at: usize, len: usize, what: &str) -> Result<String> {
    let field = &b[at..at + len];
    let end = field.iter().position(|&c| c == 0).ok_or_else(|| {
        Error::Invalid(format!(
            "LUKS1 {what} is not NUL-terminated within its {len} bytes"
        ))
    })?;
    let s = std::str::from_utf8(&field[..end])
        .ok()
        .filter(|s| s.bytes().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| Error::Invalid(format!("LUKS1 {what} is not printable ASCII")))?;
    Ok(s.to_string())
}

fn put_text(b: &mut [u8], at: usize, len: usize, s: &str) {
    debug_assert!(s.len() < len);
    b[at..at + len].fill(0);
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
}

/// 512-byte sectors of AF material for a `key_bytes` key (cryptsetup `AF_split_sectors`).
pub fn material_sectors(key_bytes: u32) -> u64 {
    (u64::from(key_bytes) * u64::from(STRIPES)).div_ceil(SECTOR)
}

/// The hash names LUKS1 headers carry.
pub(crate) fn parse_hash(name: &str) -> Result<HashAlg> {
    HashAlg::from_luks_name(name).ok_or_else(|| Error::Unsupported {
        what: "LUKS1 hash-spec",
        name: name.to_string(),
    })
}

impl Header {
    /// Parses and validates the 592-byte binary header at the start of `b`.
    ///
    /// # Errors
    /// [`Error::NotLuks`] without the magic; [`Error::UnsupportedVersion`] for a version
    /// other than 1; [`Error::UnsupportedCipher`] (including `cipher_null`);
    /// [`Error::Unsupported`] for an unknown hash; [`Error::Invalid`] for everything
    /// cryptsetup's `LUKS_check_keyslots` refuses and for bad fields.
    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < 8 || b[..6] != MAGIC {
            return Err(Error::NotLuks);
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(Error::UnsupportedVersion(version));
        }
        if b.len() < PHDR_LEN {
            return Err(Error::Invalid(format!(
                "LUKS1 header truncated: {} bytes, expected {PHDR_LEN}",
                b.len()
            )));
        }
        let cipher_name = text(b, 8, NAME_LEN, "cipher-name")?;
        let cipher_mode = text(b, 40, NAME_LEN, "cipher-mode")?;
        let hash_name = text(b, 72, NAME_LEN, "hash-spec")?;
        let mut keyslots: [Keyslot; NUM_KEYS] = std::array::from_fn(|_| Keyslot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_material_offset: 0,
            stripes: 0,
        });
        for (i, k) in keyslots.iter_mut().enumerate() {
            let at = SLOTS_AT + i * SLOT_LEN;
            k.active = match be32(b, at) {
                KEY_ENABLED => true,
                KEY_DISABLED => false,
                other => {
                    return Err(Error::Invalid(format!(
                        "LUKS1 keyslot {i} has state {other:#010x}; expected {KEY_ENABLED:#010x} (active) or {KEY_DISABLED:#010x} (inactive)"
                    )))
                }
            };
            k.iterations = be32(b, at + 4);
            k.salt.copy_from_slice(&b[at + 8..at + 8 + SALT_LEN]);
            k.key_material_offset = be32(b, at + 40);
            k.stripes = be32(b, at + 44);
        }
        let h = Header {
            cipher_name,
            cipher_mode,
            hash: parse_hash(&hash_name)?,
            payload_offset: be32(b, 104),
            key_bytes: be32(b, 108),
            mk_digest: b[112..132].try_into().expect("20 bytes"),
            mk_digest_salt: b[132..164].try_into().expect("32 bytes"),
            mk_digest_iter: be32(b, 164),
            uuid: text(b, 168, UUID_LEN, "uuid")?,
            keyslots,
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the header as cryptsetup 2.6 does when loading (`_check_and_convert_hdr`,
    /// `LUKS_check_keyslots`), plus sealvol's cipher policy.
    ///
    /// # Errors
    /// As [`Header::decode`].
    pub fn validate(&self) -> Result<()> {
        let inv = |m: String| Err(Error::Invalid(m));
        self.cipher_spec()?;
        if self.mk_digest_iter == 0 {
            return inv("LUKS1 mk-digest-iter is 0".into());
        }
        let payload = u64::from(self.payload_offset);
        if payload != 0 && payload * SECTOR < PHDR_LEN as u64 {
            return inv(format!(
                "LUKS1 payload offset {payload} sectors lies inside the {PHDR_LEN}-byte header"
            ));
        }
        let secs = material_sectors(self.key_bytes);
        for (i, k) in self.keyslots.iter().enumerate() {
            if k.stripes != STRIPES {
                return inv(format!(
                    "LUKS1 keyslot {i} has {} stripes; cryptsetup requires {STRIPES}",
                    k.stripes
                ));
            }
            let km = u64::from(k.key_material_offset);
            if km * SECTOR < PHDR_LEN as u64 {
                return inv(format!(
                    "LUKS1 keyslot {i} key material at sector {km} overlaps the binary header"
                ));
            }
            if k.active && k.iterations == 0 {
                return inv(format!("LUKS1 keyslot {i} is active with 0 iterations"));
            }
            // A detached header may have payload offset 0 (cryptsetup skips the check).
            if payload == 0 {
                continue;
            }
            if payload <= km || payload < km + secs {
                return inv(format!(
                    "LUKS1 keyslot {i} key material (sectors {km}..{}) extends past the payload offset {payload}",
                    km + secs
                ));
            }
        }
        let mut order: Vec<u64> = self
            .keyslots
            .iter()
            .map(|k| u64::from(k.key_material_offset))
            .collect();
        order.sort_unstable();
        for w in order.windows(2) {
            if w[1] < w[0] + secs {
                return inv(format!(
                    "LUKS1 keyslot areas overlap: material at sectors {} and {} (each {secs} sectors long)",
                    w[0], w[1]
                ));
            }
        }
        Ok(())
    }

    /// Encodes the 592-byte binary header.
    pub fn encode(&self) -> [u8; PHDR_LEN] {
        let mut b = [0u8; PHDR_LEN];
        b[..6].copy_from_slice(&MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut b, 8, NAME_LEN, &self.cipher_name);
        put_text(&mut b, 40, NAME_LEN, &self.cipher_mode);
        put_text(&mut b, 72, NAME_LEN, self.hash.as_str());
        put32(&mut b, 104, self.payload_offset);
        put32(&mut b, 108, self.key_bytes);
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_digest_salt);
        put32(&mut b, 164, self.mk_digest_iter);
        put_text(&mut b, 168, UUID_LEN, &self.uuid);
        for (i, k) in self.keyslots.iter().enumerate() {
            let at = SLOTS_AT + i * SLOT_LEN;
            put32(
                &mut b,
                at,
                if k.active { KEY_ENABLED } else { KEY_DISABLED },
            );
            put32(&mut b, at + 4, k.iterations);
            b[at + 8..at + 8 + SALT_LEN].copy_from_slice(&k.salt);
            put32(&mut b, at + 40, k.key_material_offset);
            put32(&mut b, at + 44, k.stripes);
        }
        b
    }

    /// `cipher-name-cipher-mode`, e.g. `aes-xts-plain64`.
    pub fn cipher(&self) -> String {
        format!("{}-{}", self.cipher_name, self.cipher_mode)
    }
    /// The cipher with the header's key size: the data's and every keyslot's.
    ///
    /// # Errors
    /// [`Error::UnsupportedCipher`] (never for a header that [`Header::decode`] returned).
    pub fn cipher_spec(&self) -> Result<CipherSpec> {
        Ok(CipherSpec::from_luks1(
            &self.cipher_name,
            &self.cipher_mode,
            self.key_bytes as usize,
        )?)
    }
    /// The hash of PBKDF2 (keyslots and digest) and of the AF splitter.
    pub fn hash(&self) -> HashAlg {
        self.hash
    }
    /// Payload (data) offset in 512-byte sectors.
    pub fn payload_offset(&self) -> u32 {
        self.payload_offset
    }
    /// Volume key length in bytes.
    pub fn key_bytes(&self) -> u32 {
        self.key_bytes
    }
    /// PBKDF2 iterations of the master key digest.
    pub fn mk_digest_iter(&self) -> u32 {
        self.mk_digest_iter
    }
    /// The UUID text.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }
    /// The eight key slots.
    pub fn keyslots(&self) -> &[Keyslot; NUM_KEYS] {
        &self.keyslots
    }
    /// Ids of the active key slots.
    pub fn active_keyslots(&self) -> Vec<u32> {
        (0..NUM_KEYS as u32)
            .filter(|&i| self.keyslots[i as usize].active)
            .collect()
    }
    /// Bytes from the start of the header to the end of the last key material area
    /// (cryptsetup `LUKS_device_sectors`): what a header backup holds and a restore writes.
    pub fn area_len(&self) -> u64 {
        let secs = material_sectors(self.key_bytes);
        let end = self
            .keyslots
            .iter()
            .map(|k| u64::from(k.key_material_offset) + secs)
            .max()
            .unwrap_or(0)
            * SECTOR;
        end.max(PHDR_LEN as u64)
    }
}
