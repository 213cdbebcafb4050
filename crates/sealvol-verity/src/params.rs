//! Tree parameters and the geometry they imply.
//!
//! The rules are those of the kernel's dm-verity target
//! (`Documentation/admin-guide/device-mapper/verity.rst`) and of cryptsetup's userspace
//! implementation (`lib/verity/verity_hash.c`), which `veritysetup format` and `verify` use.

use std::fmt;

use crate::error::{Error, Result};

/// Size of the on-disk superblock in bytes.
pub const SUPERBLOCK_SIZE: u64 = 512;
/// Longest salt the superblock can hold (`salt[256]`).
pub const MAX_SALT_SIZE: usize = 256;
/// Smallest block size veritysetup accepts.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size veritysetup accepts (`VERITY_BLOCK_SIZE_OK`: 512 KiB); the kernel
/// activates only block sizes up to the page size.
pub const MAX_BLOCK_SIZE: u32 = 512 * 1024;
/// Deepest tree cryptsetup builds (`VERITY_MAX_LEVELS`).
pub const MAX_LEVELS: u32 = 63;
/// The salt size veritysetup picks when none is given (32 random bytes, for every algorithm).
pub const DEFAULT_SALT_SIZE: usize = 32;
/// Longest digest of the supported algorithms (sha512).
pub const MAX_DIGEST_SIZE: usize = 64;

/// The digest used for every block of the tree (`--hash`, superblock `algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// SHA-1 (20-byte digests; padded to 32 bytes per slot in format 1).
    Sha1,
    /// SHA-256, veritysetup's default.
    Sha256,
    /// SHA-384 (48-byte digests; padded to 64 bytes per slot in format 1).
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [HashAlgorithm; 4] = [
        HashAlgorithm::Sha1,
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha384,
        HashAlgorithm::Sha512,
    ];

    /// The name veritysetup writes into the superblock and prints (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Parses an algorithm name as veritysetup's `--hash` takes it (case-insensitive).
    ///
    /// # Errors
    /// [`Error::UnsupportedAlgorithm`] for any other name.
    pub fn from_name(name: &str) -> Result<Self> {
        HashAlgorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::UnsupportedAlgorithm {
                name: name.to_owned(),
            })
    }

    /// Digest length in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha384 => 48,
            HashAlgorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hash type, veritysetup's `--format` (superblock `hash_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashType {
    /// Format 0, the original Chrome OS layout: the salt is hashed *after* each block, and
    /// digests are packed back to back in a hash block.
    ChromeOs,
    /// Format 1, the normal one: the salt is hashed *before* each block, and each digest slot is
    /// padded with zeros to the next power of two.
    Normal,
}

impl HashType {
    /// The number veritysetup uses (`--format 0|1`, superblock `hash_type`).
    pub fn number(self) -> u32 {
        match self {
            HashType::ChromeOs => 0,
            HashType::Normal => 1,
        }
    }

    /// Parses `0` or `1`.
    ///
    /// # Errors
    /// [`Error::UnsupportedHashType`] for anything else.
    pub fn from_number(n: u32) -> Result<Self> {
        match n {
            0 => Ok(HashType::ChromeOs),
            1 => Ok(HashType::Normal),
            other => Err(Error::UnsupportedHashType(other)),
        }
    }
}

/// A salt of at most 256 bytes (`--salt`; empty means no salt, veritysetup's `--salt -`).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Salt(Vec<u8>);

impl Salt {
    /// Wraps salt bytes.
    ///
    /// # Errors
    /// [`Error::SaltTooLong`] beyond 256 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() > MAX_SALT_SIZE {
            return Err(Error::SaltTooLong(bytes.len()));
        }
        Ok(Salt(bytes))
    }

    /// Parses veritysetup's notation: hex digits, or `-` (or nothing) for no salt.
    ///
    /// # Errors
    /// [`Error::Hex`] for non-hex text, [`Error::SaltTooLong`] beyond 256 bytes.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() || text == "-" {
            return Ok(Salt::default());
        }
        let bytes = hex::decode(text).map_err(|_| Error::Hex {
            what: "salt",
            found: text.to_owned(),
        })?;
        Salt::new(bytes)
    }

    /// The salt bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no salt.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lowercase hex, or `-` for no salt, as veritysetup prints it.
    pub fn to_hex(&self) -> String {
        if self.0.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(&self.0)
        }
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt({})", self.to_hex())
    }
}

fn check_block_size(which: &'static str, size: u32) -> Result<u32> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) || !size.is_power_of_two() {
        return Err(Error::BlockSize {
            which,
            size: u64::from(size),
        });
    }
    Ok(size)
}

/// Everything that determines a hash tree and its root hash: what the superblock records
/// (minus the UUID) and what a signature covers.
///
/// A `Params` is valid by construction: block sizes are powers of two in 512..=512 KiB, there
/// is at least one data block, and every offset of the tree fits in a signed 64-bit integer
/// (veritysetup's `off_t`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Params {
    hash_type: HashType,
    algorithm: HashAlgorithm,
    data_block_size: u32,
    hash_block_size: u32,
    data_blocks: u64,
    salt: Salt,
}

impl Params {
    /// Checks and assembles tree parameters.
    ///
    /// # Errors
    /// [`Error::BlockSize`], [`Error::NoDataBlocks`], [`Error::Overflow`] or
    /// [`Error::TooManyLevels`].
    pub fn new(
        hash_type: HashType,
        algorithm: HashAlgorithm,
        data_block_size: u32,
        hash_block_size: u32,
        data_blocks: u64,
        salt: Salt,
    ) -> Result<Self> {
        let data_block_size = check_block_size("data", data_block_size)?;
        let hash_block_size = check_block_size("hash", hash_block_size)?;
        if data_blocks == 0 {
            return Err(Error::NoDataBlocks {
                block_size: data_block_size,
            });
        }
        let p = Params {
            hash_type,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        };
        data_blocks
            .checked_mul(u64::from(data_block_size))
            .filter(|b| *b <= i64::MAX as u64)
            .ok_or(Error::Overflow {
                what: "data blocks × data block size exceeds 2^63",
            })?;
        let geometry = p.geometry();
        if geometry.levels.len() as u32 > MAX_LEVELS {
            return Err(Error::TooManyLevels(geometry.levels.len() as u32));
        }
        geometry
            .hash_blocks
            .checked_mul(u64::from(hash_block_size))
            .filter(|b| *b <= i64::MAX as u64)
            .ok_or(Error::Overflow {
                what: "hash tree size exceeds 2^63 bytes",
            })?;
        Ok(p)
    }

    /// Format 0 or 1.
    pub fn hash_type(&self) -> HashType {
        self.hash_type
    }

    /// The digest.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// Data block size in bytes.
    pub fn data_block_size(&self) -> u32 {
        self.data_block_size
    }

    /// Hash block size in bytes.
    pub fn hash_block_size(&self) -> u32 {
        self.hash_block_size
    }

    /// Number of data blocks the tree protects.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// Bytes of protected data (`data_blocks × data_block_size`).
    pub fn data_size(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size)
    }

    /// The salt.
    pub fn salt(&self) -> &Salt {
        &self.salt
    }

    /// Digest length of the algorithm.
    pub fn digest_size(&self) -> usize {
        self.algorithm.digest_size()
    }

    /// Bytes between the starts of two digests in a hash block: the digest size rounded up to a
    /// power of two in format 1, the bare digest size in format 0 (verity.rst, "Hash tree").
    pub fn digest_stride(&self) -> usize {
        match self.hash_type {
            HashType::Normal => self.digest_size().next_power_of_two(),
            HashType::ChromeOs => self.digest_size(),
        }
    }

    /// log2 of the number of digests per hash block: the largest power of two that fits
    /// `hash_block_size / digest_size` (the kernel's `hash_per_block_bits`, for both formats).
    pub fn hashes_per_block_bits(&self) -> u32 {
        (self.hash_block_size as usize / self.digest_size()).ilog2()
    }

    /// Number of digests per hash block.
    pub fn hashes_per_block(&self) -> u64 {
        1 << self.hashes_per_block_bits()
    }

    /// The shape of the tree: its levels and where each starts.
    pub fn geometry(&self) -> Geometry {
        let bits = self.hashes_per_block_bits();
        // The kernel and cryptsetup: levels grow while (data_blocks - 1) >> (bits * levels) != 0.
        let mut n_levels = 0u32;
        while bits * n_levels < 64 && ((self.data_blocks - 1) >> (bits * n_levels)) != 0 {
            n_levels += 1;
        }
        // Level i (0 = lowest) has ceil(data_blocks / 2^((i+1)·bits)) blocks; levels are stored
        // top level first.
        let mut sizes: Vec<u64> = (0..n_levels)
            .map(|i| {
                let shift = (i + 1) * bits;
                if shift >= 64 {
                    1
                } else {
                    self.data_blocks.div_ceil(1u64 << shift)
                }
            })
            .collect();
        let mut starts = vec![0u64; sizes.len()];
        let mut position = 0u64;
        for i in (0..sizes.len()).rev() {
            starts[i] = position;
            position = position.saturating_add(sizes[i]);
        }
        let levels = starts
            .into_iter()
            .zip(sizes.drain(..))
            .map(|(start, blocks)| Level { start, blocks })
            .collect();
        Geometry {
            levels,
            hash_blocks: position,
        }
    }
}

/// One level of the tree: a run of hash blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// First block of the level, in hash blocks from the start of the tree.
    pub start: u64,
    /// Number of hash blocks in the level.
    pub blocks: u64,
}

/// The shape of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Levels from the lowest (index 0, digests of data blocks) to the top (one block, whose
    /// digest is the root hash). Empty when there is a single data block: then the root hash
    /// is that block's digest, as in cryptsetup.
    pub levels: Vec<Level>,
    /// Total hash blocks in the tree (veritysetup's "Hash blocks").
    pub hash_blocks: u64,
}

/// Where the hash area lives on the hash device: `--hash-offset` and `--no-superblock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HashArea {
    /// Byte offset of the hash area (superblock, or the tree without one); a multiple of 512.
    pub offset: u64,
    /// Whether a superblock sits at `offset`.
    pub superblock: bool,
}

impl HashArea {
    /// A hash area with a superblock at `offset`.
    pub fn with_superblock(offset: u64) -> Self {
        HashArea {
            offset,
            superblock: true,
        }
    }

    /// A hash area without a superblock at `offset`.
    pub fn without_superblock(offset: u64) -> Self {
        HashArea {
            offset,
            superblock: false,
        }
    }

    /// Checks the offset is a multiple of 512, as veritysetup requires.
    ///
    /// # Errors
    /// [`Error::HashOffset`].
    pub fn check(&self) -> Result<()> {
        if self.offset % 512 != 0 {
            return Err(Error::HashOffset(self.offset));
        }
        Ok(())
    }

    /// The first block of the tree, in hash blocks from the start of the hash device
    /// (cryptsetup's `VERITY_hash_offset_block`): after the superblock rounded up to a hash
    /// block, or — without a superblock — the offset rounded *down* to a hash block.
    pub fn tree_start_block(&self, hash_block_size: u32) -> u64 {
        let hbs = u64::from(hash_block_size);
        if self.superblock {
            (self.offset + SUPERBLOCK_SIZE).div_ceil(hbs)
        } else {
            self.offset / hbs
        }
    }

    /// Byte offset of the tree on the hash device.
    pub fn tree_offset(&self, hash_block_size: u32) -> u64 {
        self.tree_start_block(hash_block_size) * u64::from(hash_block_size)
    }

    /// Byte offset just past the tree: veritysetup's "Hash device size".
    ///
    /// # Errors
    /// [`Error::Overflow`].
    pub fn end(&self, params: &Params) -> Result<u64> {
        self.tree_start_block(params.hash_block_size)
            .checked_add(params.geometry().hash_blocks)
            .and_then(|b| b.checked_mul(u64::from(params.hash_block_size)))
            .filter(|b| *b <= i64::MAX as u64)
            .ok_or(Error::Overflow {
                what: "hash offset + tree size exceeds 2^63 bytes",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(alg: HashAlgorithm, ht: HashType, dbs: u32, hbs: u32, blocks: u64) -> Params {
        Params::new(ht, alg, dbs, hbs, blocks, Salt::default()).unwrap()
    }

    #[test]
    fn geometry_matches_veritysetup_counts() {
        // 8 MiB of 4 KiB blocks with sha256: 16 level-0 blocks + 1 top = 17 (veritysetup).
        let p = params(HashAlgorithm::Sha256, HashType::Normal, 4096, 4096, 2048);
        let g = p.geometry();
        assert_eq!(g.hash_blocks, 17);
        assert_eq!(g.levels.len(), 2);
        assert_eq!(
            g.levels[1],
            Level {
                start: 0,
                blocks: 1
            }
        );
        assert_eq!(
            g.levels[0],
            Level {
                start: 1,
                blocks: 16
            }
        );
        // One data block: no levels, root = digest of the block.
        let p = params(HashAlgorithm::Sha256, HashType::Normal, 4096, 4096, 1);
        assert_eq!(p.geometry().hash_blocks, 0);
        // 16 blocks of 512 with sha512, format 0: 8 per block -> 2 + 1.
        let p = params(HashAlgorithm::Sha512, HashType::ChromeOs, 512, 512, 16);
        assert_eq!(p.geometry().hash_blocks, 3);
    }

    #[test]
    fn slots() {
        let p = params(HashAlgorithm::Sha1, HashType::Normal, 4096, 4096, 9);
        assert_eq!(p.digest_stride(), 32);
        assert_eq!(p.hashes_per_block(), 128);
        let p = params(HashAlgorithm::Sha1, HashType::ChromeOs, 4096, 4096, 9);
        assert_eq!(p.digest_stride(), 20);
        assert_eq!(p.hashes_per_block(), 128);
        let p = params(HashAlgorithm::Sha384, HashType::Normal, 4096, 512, 9);
        assert_eq!(p.digest_stride(), 64);
        assert_eq!(p.hashes_per_block(), 8);
    }

    #[test]
    fn tree_start() {
        assert_eq!(HashArea::with_superblock(0).tree_start_block(4096), 1);
        assert_eq!(HashArea::with_superblock(0).tree_start_block(512), 1);
        assert_eq!(HashArea::with_superblock(1536).tree_start_block(4096), 1);
        assert_eq!(HashArea::with_superblock(4096).tree_start_block(4096), 2);
        assert_eq!(HashArea::without_superblock(1536).tree_start_block(4096), 0);
        assert_eq!(HashArea::without_superblock(8192).tree_start_block(4096), 2);
    }

    #[test]
    fn refuses_bad_params() {
        let s = Salt::default;
        let (n, a) = (HashType::Normal, HashAlgorithm::Sha256);
        assert!(Params::new(n, a, 1024 * 1024, 4096, 1, s()).is_err());
        assert!(Params::new(n, a, 256, 4096, 1, s()).is_err());
        assert!(Params::new(n, a, 4096, 3000, 1, s()).is_err());
        assert!(Params::new(n, a, 4096, 4096, 0, s()).is_err());
        assert!(Params::new(n, a, 4096, 4096, u64::MAX / 2, s()).is_err());
        assert!(Salt::new(vec![0; 257]).is_err());
        assert!(Salt::from_hex("abc").is_err());
        assert!(Salt::from_hex("-").unwrap().is_empty());
    }
}
