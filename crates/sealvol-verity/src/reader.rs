//! Verified reads: what the kernel's dm-verity target does per I/O, in userspace.
//!
//! Each data block read is hashed and compared with its digest in the lowest tree level; that
//! hash block is itself checked against its parent, and so on up to the root hash
//! (verity.rst: "the device-mapper target verifies the data block ... up to the root").
//! Verified hash blocks are cached, so after the first read of a region a random read costs
//! one data-block hash.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

use crate::error::{Error, Result};
use crate::hash::{BlockHasher, Digest};
use crate::params::{Geometry, HashArea, Params};
use crate::tree::{check_root, slot_in_block};

/// Hash blocks kept verified in memory by default (16 MiB at 4 KiB hash blocks: the whole
/// lowest level of a 2 GiB image).
pub const DEFAULT_CACHE_BLOCKS: usize = 4096;

/// Reads data through its hash tree, one verified block at a time.
///
/// A corrupted data block gives [`Error::DataBlockCorrupt`] for reads touching that block
/// only; a corrupted hash block gives [`Error::HashBlockCorrupt`] for the data blocks below
/// it. Everything else stays readable. Nothing is trusted before it is verified, and nothing
/// unverified is cached.
///
/// It implements [`Read`] and [`Seek`] over the protected data (`data_blocks ×
/// data_block_size` bytes); a verification failure surfaces there as an
/// [`io::ErrorKind::InvalidData`] error wrapping the [`Error`].
pub struct VerityReader<D, H> {
    data: D,
    hash: H,
    params: Params,
    geometry: Geometry,
    hasher: BlockHasher,
    tree_offset: u64,
    root: Digest,
    cache: HashMap<(usize, u64), Box<[u8]>>,
    cache_limit: usize,
    pos: u64,
    block: Vec<u8>,
    block_index: Option<u64>,
}

impl<D: Read + Seek, H: Read + Seek> VerityReader<D, H> {
    /// A reader over `data` whose tree lives on `hash` at `area`, trusting only `root`.
    ///
    /// Nothing is read yet: blocks are verified when first read.
    ///
    /// # Errors
    /// [`Error::RootHashLength`], [`Error::HashOffset`].
    pub fn new(data: D, hash: H, params: Params, area: HashArea, root: &[u8]) -> Result<Self> {
        check_root(&params, root)?;
        area.check()?;
        area.end(&params)?;
        Ok(VerityReader {
            data,
            hash,
            geometry: params.geometry(),
            hasher: BlockHasher::new(&params),
            tree_offset: area.tree_offset(params.hash_block_size()),
            root: Digest::from_slice(root),
            cache: HashMap::new(),
            cache_limit: DEFAULT_CACHE_BLOCKS,
            pos: 0,
            block: vec![0u8; params.data_block_size() as usize],
            block_index: None,
            params,
        })
    }

    /// Sets how many verified hash blocks to keep (at least the tree's height).
    pub fn set_cache_blocks(&mut self, blocks: usize) {
        self.cache_limit = blocks.max(self.geometry.levels.len() + 1);
    }

    /// The tree parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Bytes of protected data.
    pub fn len(&self) -> u64 {
        self.params.data_size()
    }

    /// Whether there is no protected data (never: parameters need one block).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hash blocks currently cached as verified.
    pub fn cached_hash_blocks(&self) -> usize {
        self.cache.len()
    }

    /// Gives back the data and hash devices.
    pub fn into_inner(self) -> (D, H) {
        (self.data, self.hash)
    }

    /// Reads data block `index` into `buf` (exactly one data block long) after verifying it up
    /// to the root hash.
    ///
    /// # Errors
    /// [`Error::DataBlockCorrupt`], [`Error::HashBlockCorrupt`], [`Error::OutOfRange`],
    /// [`Error::Io`] (including a data or hash device that ends early).
    pub fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<()> {
        assert_eq!(
            buf.len(),
            self.params.data_block_size() as usize,
            "read_block needs a buffer of one data block"
        );
        if index >= self.params.data_blocks() {
            return Err(Error::OutOfRange {
                index,
                data_blocks: self.params.data_blocks(),
            });
        }
        let expected = self.expected_digest(None, index)?;
        let offset = index * u64::from(self.params.data_block_size());
        self.data
            .seek(SeekFrom::Start(offset))
            .map_err(Error::io("seeking the data device"))?;
        self.data
            .read_exact(buf)
            .map_err(Error::io("reading a data block"))?;
        if self.hasher.digest(buf).as_slice() != expected.as_slice() {
            tracing::warn!(
                block = index,
                offset,
                "verity: data block failed verification"
            );
            return Err(Error::DataBlockCorrupt { index, offset });
        }
        Ok(())
    }

    /// The digest that block `index` of `level` (`None` for the data) must have: from the
    /// verified parent hash block, or the root hash for the top.
    fn expected_digest(&mut self, level: Option<usize>, index: u64) -> Result<Digest> {
        let parent_level = level.map_or(0, |l| l + 1);
        if parent_level == self.geometry.levels.len() {
            return Ok(self.root);
        }
        let parent_index = index / self.params.hashes_per_block();
        self.ensure_verified(parent_level, parent_index)?;
        let parent = &self.cache[&(parent_level, parent_index)];
        Ok(slot_in_block(&self.params, parent, index))
    }

    /// Makes sure hash block `index` of `level` is in the cache, verified.
    fn ensure_verified(&mut self, level: usize, index: u64) -> Result<()> {
        if self.cache.contains_key(&(level, index)) {
            return Ok(());
        }
        let expected = self.expected_digest(Some(level), index)?;
        let hbs = self.params.hash_block_size();
        let offset =
            self.tree_offset + (self.geometry.levels[level].start + index) * u64::from(hbs);
        let mut block = vec![0u8; hbs as usize].into_boxed_slice();
        self.hash
            .seek(SeekFrom::Start(offset))
            .map_err(Error::io("seeking the hash device"))?;
        self.hash
            .read_exact(&mut block)
            .map_err(Error::io("reading a hash block"))?;
        if self.hasher.digest(&block).as_slice() != expected.as_slice() {
            let top = level + 1 == self.geometry.levels.len();
            tracing::warn!(
                level,
                block = index,
                offset,
                "verity: hash block failed verification"
            );
            return Err(Error::HashBlockCorrupt {
                level: level as u32,
                index,
                offset,
                top,
            });
        }
        if self.cache.len() >= self.cache_limit {
            // Keep it simple: drop the lowest level, which is most of the cache and cheapest
            // to re-verify once its parents stay cached.
            self.cache.retain(|&(l, _), _| l != 0);
            if self.cache.len() >= self.cache_limit {
                self.cache.clear();
            }
        }
        self.cache.insert((level, index), block);
        Ok(())
    }

    fn load(&mut self, index: u64) -> Result<()> {
        let mut block = std::mem::take(&mut self.block);
        self.block_index = None;
        let r = self.read_block(index, &mut block);
        self.block = block;
        r?;
        self.block_index = Some(index);
        Ok(())
    }
}

impl<D: Read + Seek, H: Read + Seek> Read for VerityReader<D, H> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.len();
        if self.pos >= len || buf.is_empty() {
            return Ok(0);
        }
        let dbs = u64::from(self.params.data_block_size());
        let index = self.pos / dbs;
        let within = (self.pos % dbs) as usize;
        if self.block_index != Some(index) {
            self.load(index)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        let n = buf.len().min(dbs as usize - within);
        buf[..n].copy_from_slice(&self.block[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: Read + Seek, H: Read + Seek> Seek for VerityReader<D, H> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.len() as i128;
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the verity data",
            ));
        }
        self.pos = u64::try_from(target).unwrap_or(u64::MAX);
        Ok(self.pos)
    }
}
