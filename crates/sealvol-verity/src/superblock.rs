//! The 512-byte verity superblock that `veritysetup format` writes at the hash offset.
//!
//! Layout (cryptsetup `lib/verity/verity.c`, `struct verity_sb`; every integer little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `"verity\0\0"` |
//! | 8 | 4 | version, always 1 |
//! | 12 | 4 | hash type (0 Chrome OS, 1 normal) |
//! | 16 | 16 | UUID of the hash device (binary) |
//! | 32 | 32 | algorithm name, NUL-padded (`sha256`) |
//! | 64 | 4 | data block size |
//! | 68 | 4 | hash block size |
//! | 72 | 8 | number of data blocks |
//! | 80 | 2 | salt size |
//! | 82 | 6 | padding |
//! | 88 | 256 | salt, zero-padded |
//! | 344 | 168 | padding |
//!
//! The kernel never reads it: it exists so `veritysetup verify DATA HASH ROOT` can find the
//! parameters.

use std::fmt;

use crate::error::{Error, Result};
use crate::params::{HashAlgorithm, HashType, Params, Salt, MAX_SALT_SIZE, SUPERBLOCK_SIZE};

/// The magic at the start of a superblock.
pub const SIGNATURE: &[u8; 8] = b"verity\0\0";
/// The only superblock version there is.
pub const VERSION: u32 = 1;

const ALG_AT: usize = 32;
const ALG_LEN: usize = 32;
const SALT_AT: usize = 88;

/// A UUID as 16 bytes, printed in the usual 8-4-4-4-12 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hyphens optional, any case).
    ///
    /// # Errors
    /// [`Error::Hex`] when it is not 32 hex digits.
    pub fn parse(text: &str) -> Result<Self> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        let bytes = hex::decode(&digits).ok().filter(|b| b.len() == 16);
        match bytes {
            Some(b) => {
                let mut out = [0u8; 16];
                out.copy_from_slice(&b);
                Ok(Uuid(out))
            }
            None => Err(Error::Hex {
                what: "UUID",
                found: text.to_owned(),
            }),
        }
    }

    /// A random (version 4) UUID made from 16 random bytes the caller supplies.
    pub fn from_random_bytes(mut bytes: [u8; 16]) -> Self {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Uuid(bytes)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// A parsed superblock: the tree parameters and the UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// UUID of the hash device (veritysetup `--uuid`).
    pub uuid: Uuid,
    /// The tree parameters.
    pub params: Params,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bad(rule: impl Into<String>) -> Error {
    Error::Superblock(rule.into())
}

impl Superblock {
    /// Parses the first 512 bytes of `bytes`.
    ///
    /// Accepts what `veritysetup` 2.6 accepts (signature, version 1, hash type 0 or 1, block
    /// sizes powers of two from 512 to 512 KiB, a known algorithm, salt size at most 256) and,
    /// stricter than veritysetup, refuses what it never writes: zero data blocks, non-zero
    /// padding, bytes after the salt or after the algorithm name's NUL. So a parsed superblock
    /// encodes back to the same bytes.
    ///
    /// # Errors
    /// [`Error::Superblock`] naming the rule, or the parameter errors of [`Params::new`].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b = bytes.get(..SUPERBLOCK_SIZE as usize).ok_or_else(|| {
            bad(format!(
                "{} bytes is shorter than a superblock (512 bytes)",
                bytes.len()
            ))
        })?;
        if &b[0..8] != SIGNATURE {
            return Err(bad(
                "no \"verity\" signature: not a verity hash device (wrong file or --hash-offset, \
                 or a tree made with --no-superblock)",
            ));
        }
        let version = le32(b, 8);
        if version != VERSION {
            return Err(bad(format!("unsupported version {version} (expected 1)")));
        }
        let hash_type = HashType::from_number(le32(b, 12))?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let alg_field = &b[ALG_AT..ALG_AT + ALG_LEN];
        let name_len = alg_field.iter().position(|&c| c == 0).unwrap_or(ALG_LEN);
        if alg_field[name_len..].iter().any(|&c| c != 0) {
            return Err(bad("algorithm name is followed by non-zero bytes"));
        }
        let name = std::str::from_utf8(&alg_field[..name_len])
            .map_err(|_| bad("algorithm name is not text"))?;
        let algorithm = HashAlgorithm::from_name(name)?;
        if algorithm.name() != name {
            return Err(bad(format!(
                "algorithm name {name:?} is not lowercase as veritysetup writes it"
            )));
        }
        let data_block_size = le32(b, 64);
        let hash_block_size = le32(b, 68);
        let mut u64_bytes = [0u8; 8];
        u64_bytes.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(u64_bytes);
        let salt_size = usize::from(u16::from_le_bytes([b[80], b[81]]));
        if b[82..88].iter().any(|&c| c != 0) {
            return Err(bad("non-zero padding after the salt size"));
        }
        if salt_size > MAX_SALT_SIZE {
            return Err(bad(format!("salt size {salt_size} exceeds 256")));
        }
        let salt_field = &b[SALT_AT..SALT_AT + MAX_SALT_SIZE];
        if salt_field[salt_size..].iter().any(|&c| c != 0) {
            return Err(bad("non-zero bytes after the salt"));
        }
        if b[SALT_AT + MAX_SALT_SIZE..].iter().any(|&c| c != 0) {
            return Err(bad("non-zero padding at the end"));
        }
        let salt = Salt::new(salt_field[..salt_size].to_vec())?;
        let params = Params::new(
            hash_type,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        )?;
        Ok(Superblock {
            uuid: Uuid(uuid),
            params,
        })
    }

    /// The 512 bytes veritysetup would write for these parameters and UUID.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE as usize] {
        let p = &self.params;
        let mut b = [0u8; SUPERBLOCK_SIZE as usize];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&p.hash_type().number().to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid.0);
        let name = p.algorithm().name().as_bytes();
        b[ALG_AT..ALG_AT + name.len()].copy_from_slice(name);
        b[64..68].copy_from_slice(&p.data_block_size().to_le_bytes());
        b[68..72].copy_from_slice(&p.hash_block_size().to_le_bytes());
        b[72..80].copy_from_slice(&p.data_blocks().to_le_bytes());
        let salt = p.salt().as_bytes();
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[SALT_AT..SALT_AT + salt.len()].copy_from_slice(salt);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: Uuid::parse("12345678-1234-1234-1234-123456789abc").unwrap(),
            params: Params::new(
                HashType::Normal,
                HashAlgorithm::Sha256,
                4096,
                4096,
                2048,
                Salt::from_hex("00112233").unwrap(),
            )
            .unwrap(),
        }
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        let bytes = sb.encode();
        assert_eq!(&bytes[0..8], b"verity\0\0");
        assert_eq!(Superblock::parse(&bytes).unwrap(), sb);
        assert_eq!(sb.uuid.to_string(), "12345678-1234-1234-1234-123456789abc");
    }

    #[test]
    fn refusals() {
        let good = sample().encode();
        let cases: &[(usize, u8)] = &[
            (0, b'X'),  // signature
            (8, 2),     // version
            (12, 2),    // hash type
            (38, b'x'), // junk after the algorithm name
            (65, 0x11), // data block size not a power of two
            (81, 0x10), // salt size > 256
            (83, 1),    // padding
            (200, 1),   // after the salt
            (500, 1),   // tail padding
            (32, b'S'), // "Sha256"
            (72, 0),    // data blocks -> 0 (2048 = 0x800: byte 73)
        ];
        for &(at, value) in cases {
            let mut b = good;
            b[at] = value;
            if at == 72 {
                b[73] = 0;
            }
            assert!(Superblock::parse(&b).is_err(), "byte {at} = {value}");
        }
        assert!(Superblock::parse(&good[..100]).is_err());
    }
}
