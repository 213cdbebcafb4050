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

/// A parsed LUKS1 header that cryptsetup would load (`_check_and_convert_hdr`,
/// `LUKS_check_keyslots`, `LUKS_check_device_size`).
///
/// Whether sealvol can use it is separate ([`Header::usable`]): a cipher-name and cipher-mode
/// that make a [`CipherSpec`] with the header's key size (aes, serpent, twofish in xts or cbc,
/// adiantum), a hash sealvol implements ([`HashAlg`]). A header cryptsetup loads but sealvol
/// cannot use (an unknown cipher, a hash such as sha3-256) is still read and dumped.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub(crate) cipher_name: String,
    pub(crate) cipher_mode: String,
    /// hash-spec as found (C string).
    pub(crate) hash_spec: String,
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
            .field("hash", &self.hash_spec)
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

/// A NUL-terminated text field as cryptsetup reads it: the last byte forced to NUL, the C
/// string up to the first NUL. Each byte becomes the char of the same value (Latin-1), so
/// that any field, UTF-8 or not, encodes back to the same bytes.
fn text(b: &[u8], at: usize, len: usize) -> String {
    let field = &b[at..at + len - 1];
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    field[..end].iter().map(|&c| char::from(c)).collect()
}

/// Writes `s` as [`text`] reads it (chars are bytes; sealvol's own names are ASCII).
fn put_text(b: &mut [u8], at: usize, len: usize, s: &str) {
    b[at..at + len].fill(0);
    for (dst, c) in b[at..at + len - 1].iter_mut().zip(s.chars()) {
        *dst = u8::try_from(u32::from(c)).unwrap_or(b'?');
    }
}

/// The digest names cryptsetup's OpenSSL 3 backend (Debian's) resolves, compared without
/// case, whose HMAC is at least 20 bytes (`_check_and_convert_hdr` compares
/// `crypt_hmac_size(hash)` with `LUKS_DIGESTSIZE`). A cryptsetup built on another backend (gcrypt, kernel) knows a
/// slightly different set: see docs/luks-validation.md.
const CRYPTSETUP_HASHES: &[&str] = &[
    "sha1",
    "sha-1",
    "ssl3-sha1",
    "sha224",
    "sha-224",
    "sha2-224",
    "sha256",
    "sha-256",
    "sha2-256",
    "sha384",
    "sha-384",
    "sha2-384",
    "sha512",
    "sha-512",
    "sha2-512",
    "sha512-224",
    "sha-512/224",
    "sha2-512/224",
    "sha512-256",
    "sha-512/256",
    "sha2-512/256",
    "sha3-224",
    "sha3-256",
    "sha3-384",
    "sha3-512",
    "shake256",
    "shake-256",
    "sm3",
    "blake2b512",
    "blake2b-512",
    "blake2s256",
    "blake2s-256",
    "md5-sha1",
    "ripemd160",
    "ripemd-160",
    "ripemd",
    "rmd160",
    "whirlpool",
    "keccak-kmac-128",
    "keccak-kmac128",
    "keccak-kmac-256",
    "keccak-kmac256",
];

/// Whether cryptsetup (OpenSSL backend) loads a LUKS1 header with this hash-spec.
pub(crate) fn cryptsetup_knows_hash(spec: &str) -> bool {
    CRYPTSETUP_HASHES.contains(&spec.to_ascii_lowercase().as_str())
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
        let mut keyslots: [Keyslot; NUM_KEYS] = std::array::from_fn(|_| Keyslot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_material_offset: 0,
            stripes: 0,
        });
        for (i, k) in keyslots.iter_mut().enumerate() {
            let at = SLOTS_AT + i * SLOT_LEN;
            // cryptsetup reads any other state as "not enabled" (its dump says DISABLED).
            k.active = be32(b, at) == KEY_ENABLED;
            k.iterations = be32(b, at + 4);
            k.salt.copy_from_slice(&b[at + 8..at + 8 + SALT_LEN]);
            k.key_material_offset = be32(b, at + 40);
            k.stripes = be32(b, at + 44);
        }
        let h = Header {
            cipher_name: text(b, 8, NAME_LEN),
            cipher_mode: text(b, 40, NAME_LEN),
            hash_spec: text(b, 72, NAME_LEN),
            payload_offset: be32(b, 104),
            key_bytes: be32(b, 108),
            mk_digest: b[112..132].try_into().expect("20 bytes"),
            mk_digest_salt: b[132..164].try_into().expect("32 bytes"),
            mk_digest_iter: be32(b, 164),
            uuid: text(b, 168, UUID_LEN),
            keyslots,
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the header as cryptsetup does when loading it, with its 32-bit arithmetic
    /// (`_check_and_convert_hdr`, `LUKS_check_keyslots`, the key size of
    /// `LUKS_check_device_size`). Rules `luks1-*` in docs/luks-validation.md.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the rule.
    pub fn validate(&self) -> Result<()> {
        let fail = |rule: &str, func: &str, m: String| {
            Err(Error::Invalid(format!(
                "{m} (rule {rule}; cryptsetup {func} refuses this header too)"
            )))
        };
        if !cryptsetup_knows_hash(&self.hash_spec) {
            return fail(
                "luks1-hash-known",
                "_check_and_convert_hdr",
                format!(
                    "LUKS1 hash-spec {:?} is not a hash cryptsetup knows with a digest of at least 20 bytes",
                    self.hash_spec
                ),
            );
        }
        // AF_split_sectors, truncated to the uint32 cryptsetup keeps it in.
        let secs = material_sectors(self.key_bytes) as u32;
        for (i, k) in self.keyslots.iter().enumerate() {
            if k.stripes != STRIPES {
                return fail(
                    "luks1-stripes",
                    "LUKS_check_keyslots",
                    format!(
                        "LUKS1 keyslot {i} has {} stripes; cryptsetup requires {STRIPES}",
                        k.stripes
                    ),
                );
            }
            // uint32 arithmetic, as in cryptsetup.
            if (k.key_material_offset.wrapping_mul(SECTOR as u32) as usize) < PHDR_LEN {
                return fail(
                    "luks1-keyslot-after-header",
                    "LUKS_check_keyslots",
                    format!(
                        "LUKS1 keyslot {i} key material at sector {} overlaps the binary header",
                        k.key_material_offset
                    ),
                );
            }
            if self.payload_offset == 0 {
                continue;
            }
            if self.payload_offset <= k.key_material_offset
                || self.payload_offset < k.key_material_offset.wrapping_add(secs)
            {
                return fail(
                    "luks1-keyslot-before-payload",
                    "LUKS_check_keyslots",
                    format!(
                        "LUKS1 keyslot {i} key material (sector {}, {secs} sectors) extends past the payload offset {}",
                        k.key_material_offset, self.payload_offset
                    ),
                );
            }
        }
        let mut order: [usize; NUM_KEYS] = std::array::from_fn(|i| i);
        // LUKS_sort_keyslots: a stable insertion sort by offset.
        order.sort_by_key(|&i| self.keyslots[i].key_material_offset);
        for w in order.windows(2) {
            let (prev, next) = (&self.keyslots[w[0]], &self.keyslots[w[1]]);
            if next.key_material_offset < prev.key_material_offset.wrapping_add(secs) {
                return fail(
                    "luks1-keyslots-no-overlap",
                    "LUKS_check_keyslots",
                    format!(
                        "LUKS1 keyslot areas overlap: material at sectors {} and {} (each {secs} sectors long)",
                        prev.key_material_offset, next.key_material_offset
                    ),
                );
            }
        }
        if self.key_bytes == 0 {
            return fail(
                "luks1-key-bytes",
                "LUKS_check_device_size",
                "LUKS1 key-bytes is 0".into(),
            );
        }
        Ok(())
    }

    /// Whether sealvol can use this header: a cipher-name and cipher-mode that make a
    /// [`CipherSpec`] with the header's key size ([`Header::cipher_spec`]; never
    /// `cipher_null` or `ecb`), a hash sealvol implements ([`HashAlg`]: sha1, sha256, sha512,
    /// ripemd160, whirlpool), a non-zero digest iteration count. A header that fails this is
    /// still read and dumped.
    ///
    /// # Errors
    /// [`Error::UnsupportedCipher`] naming the part, [`Error::Unsupported`] (hash),
    /// [`Error::Invalid`].
    pub fn usable(&self) -> Result<()> {
        self.cipher_spec()?;
        parse_hash(&self.hash_spec)?;
        if self.mk_digest_iter == 0 {
            return Err(Error::Invalid("LUKS1 mk-digest-iter is 0".into()));
        }
        Ok(())
    }

    /// The hash, checked: the hashes sealvol implements.
    pub(crate) fn usable_hash(&self) -> Result<HashAlg> {
        parse_hash(&self.hash_spec)
    }

    /// Encodes the 592-byte binary header.
    pub fn encode(&self) -> [u8; PHDR_LEN] {
        let mut b = [0u8; PHDR_LEN];
        b[..6].copy_from_slice(&MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut b, 8, NAME_LEN, &self.cipher_name);
        put_text(&mut b, 40, NAME_LEN, &self.cipher_mode);
        put_text(&mut b, 72, NAME_LEN, &self.hash_spec);
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
    /// [`Error::UnsupportedCipher`] naming the part sealvol does not implement (never for a
    /// header that [`Header::usable`] accepts; [`Header::decode`] does not check the cipher,
    /// as cryptsetup does not).
    pub fn cipher_spec(&self) -> Result<CipherSpec> {
        Ok(CipherSpec::from_luks1(
            &self.cipher_name,
            &self.cipher_mode,
            self.key_bytes as usize,
        )?)
    }
    /// The hash of PBKDF2 (keyslots and digest) and of the AF splitter, when sealvol
    /// implements it; SHA-256 otherwise (every operation that derives a key checks
    /// [`Header::usable`] first and refuses such a header). See [`Header::hash_spec`].
    pub fn hash(&self) -> HashAlg {
        parse_hash(&self.hash_spec).unwrap_or(HashAlg::Sha256)
    }
    /// The hash-spec field as found (`sha256`, `ripemd160`, ...).
    pub fn hash_spec(&self) -> &str {
        &self.hash_spec
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
