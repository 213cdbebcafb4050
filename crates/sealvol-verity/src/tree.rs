//! Building a hash tree (`veritysetup format`) and checking a whole image against one
//! (`veritysetup verify`).
//!
//! The tree is built in memory (its size is about 1/128 of the data with sha256 and 4 KiB
//! blocks) from the bottom level up; data blocks are read and hashed on every core, each
//! worker taking a cache-sized run of blocks at a time (see [`BlockSource`]).

use std::io::{self, Read, Seek, SeekFrom, Write};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hash::{BlockHasher, Digest};
use crate::params::{Geometry, HashArea, Params, SUPERBLOCK_SIZE};
use crate::source::BlockSource;
use crate::superblock::{Superblock, Uuid};

/// Bytes one worker reads and hashes at a time: small enough to stay in the CPU's L2 cache
/// between the read and the hashing.
const TASK_BYTES: usize = 256 << 10;
/// Data hashed between two progress reports (and two checks for an early stop).
const WINDOW_BYTES: u64 = 64 << 20;

/// A progress callback: called with the number of data bytes just processed.
pub type Progress<'a> = &'a mut dyn FnMut(u64);

/// Length of a seekable stream, leaving the position at the start.
fn stream_len<S: Seek>(s: &mut S, what: &'static str) -> Result<u64> {
    let len = s.seek(SeekFrom::End(0)).map_err(Error::io(what))?;
    s.seek(SeekFrom::Start(0)).map_err(Error::io(what))?;
    Ok(len)
}

fn check_data_len<D: BlockSource + ?Sized>(data: &D, params: &Params) -> Result<()> {
    let available = data
        .size()
        .map_err(Error::io("measuring the data device"))?;
    let needed = params.data_size();
    if available < needed {
        return Err(Error::DataTooShort {
            data_blocks: params.data_blocks(),
            block_size: params.data_block_size(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Where digest `i` of a level lives in that level's bytes.
fn slot_offset(params: &Params, i: u64) -> usize {
    let hpb = params.hashes_per_block();
    ((i / hpb) * u64::from(params.hash_block_size()) + (i % hpb) * params.digest_stride() as u64)
        as usize
}

/// Copies packed digests of blocks `first..` into their slots in `level`.
fn scatter(params: &Params, level: &mut [u8], first: u64, digests: &[u8]) {
    let ds = params.digest_size();
    for (k, d) in digests.chunks_exact(ds).enumerate() {
        let at = slot_offset(params, first + k as u64);
        level[at..at + ds].copy_from_slice(d);
    }
}

/// Hashes data blocks `0..params.data_blocks()` on every core — each worker reads a
/// cache-sized run of blocks at its own offset and hashes it at once — and hands each window's
/// `(first block, packed digests)` to `sink`, in order. `sink` returns `false` to stop early.
fn hash_data<D: BlockSource + ?Sized>(
    data: &D,
    params: &Params,
    hasher: &BlockHasher,
    progress: Progress<'_>,
    mut sink: impl FnMut(u64, &[u8]) -> bool,
) -> Result<()> {
    let dbs = params.data_block_size() as usize;
    let ds = params.digest_size();
    let total = params.data_blocks();
    let task_blocks = (TASK_BYTES / dbs).max(1);
    let window_blocks = (WINDOW_BYTES / dbs as u64)
        .max(1)
        .div_ceil(task_blocks as u64)
        * task_blocks as u64;
    let mut digests = vec![0u8; window_blocks.min(total) as usize * ds];
    let mut first = 0u64;
    while first < total {
        let n = window_blocks.min(total - first) as usize;
        let out = &mut digests[..n * ds];
        out.par_chunks_mut(task_blocks * ds)
            .enumerate()
            .with_max_len(1)
            .try_for_each_init(
                || vec![0u8; task_blocks * dbs],
                |buf, (t, o)| -> io::Result<()> {
                    let blocks = o.len() / ds;
                    let offset = (first + (t * task_blocks) as u64) * dbs as u64;
                    let bytes = data.read_at(offset, &mut buf[..blocks * dbs])?;
                    hasher.digest_serial(bytes, dbs, o);
                    Ok(())
                },
            )
            .map_err(Error::io("reading the data device"))?;
        if !sink(first, out) {
            return Ok(());
        }
        progress((n * dbs) as u64);
        first += n as u64;
    }
    Ok(())
}

fn read_first_block<D: BlockSource + ?Sized>(data: &D, params: &Params) -> Result<Vec<u8>> {
    let mut block = vec![0u8; params.data_block_size() as usize];
    let got = data
        .read_at(0, &mut block)
        .map_err(Error::io("reading the data device"))?
        .to_vec();
    Ok(got)
}

/// A hash tree built in memory: the bytes that follow the superblock on the hash device, and
/// the root hash.
#[derive(Clone, PartialEq, Eq)]
pub struct HashTree {
    params: Params,
    bytes: Vec<u8>,
    root: Vec<u8>,
}

impl std::fmt::Debug for HashTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashTree")
            .field("params", &self.params)
            .field("tree_bytes", &self.bytes.len())
            .field("root", &hex::encode(&self.root))
            .finish()
    }
}

impl HashTree {
    /// Builds the tree over the first `params.data_blocks()` blocks of `data` (read from
    /// offset 0), as `veritysetup format` does.
    ///
    /// `progress` is called with the number of data bytes hashed after each chunk.
    ///
    /// # Errors
    /// [`Error::DataTooShort`] when `data` ends early, [`Error::Io`] on read errors.
    pub fn build<D: BlockSource + ?Sized>(
        data: &D,
        params: &Params,
        progress: Progress<'_>,
    ) -> Result<HashTree> {
        check_data_len(data, params)?;
        let geometry = params.geometry();
        let hasher = BlockHasher::new(params);
        let hbs = params.hash_block_size() as usize;
        let mut bytes = vec![0u8; geometry.hash_blocks as usize * hbs];
        let root = if geometry.levels.is_empty() {
            // A single data block: its digest is the root hash (cryptsetup, levels == 0).
            let block = read_first_block(data, params)?;
            progress(block.len() as u64);
            hasher.digest(&block).as_slice().to_vec()
        } else {
            let level0_at = geometry.levels[0].start as usize * hbs;
            let level0 = &mut bytes[level0_at..];
            hash_data(data, params, &hasher, progress, |first, digests| {
                scatter(params, level0, first, digests);
                true
            })?;
            build_upper_levels(&mut bytes, params, &geometry, &hasher);
            let top = &geometry.levels[geometry.levels.len() - 1];
            let at = top.start as usize * hbs;
            hasher.digest(&bytes[at..at + hbs]).as_slice().to_vec()
        };
        tracing::debug!(
            data_blocks = params.data_blocks(),
            hash_blocks = geometry.hash_blocks,
            levels = geometry.levels.len(),
            "built verity hash tree"
        );
        Ok(HashTree {
            params: params.clone(),
            bytes,
            root,
        })
    }

    /// The root hash.
    pub fn root(&self) -> &[u8] {
        &self.root
    }

    /// The tree's bytes (top level first), as stored after the superblock.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The parameters the tree was built with.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Writes the superblock (when `area.superblock`, with `uuid`, the nil UUID if `None`),
    /// zeros up to the first tree block, and the tree, at `area.offset` of `hash`. Bytes of
    /// `hash` outside that range are left alone, so the tree may be appended to the data.
    ///
    /// # Errors
    /// [`Error::HashOffset`] for an offset that is not a multiple of 512, [`Error::Io`].
    pub fn write_to<H: Write + Seek>(
        &self,
        hash: &mut H,
        area: HashArea,
        uuid: Option<Uuid>,
    ) -> Result<()> {
        area.check()?;
        let hbs = self.params.hash_block_size();
        let tree_at = area.tree_offset(hbs);
        let mut head_at = tree_at;
        let mut head = Vec::new();
        if area.superblock {
            let sb = Superblock {
                uuid: uuid.unwrap_or_default(),
                params: self.params.clone(),
            };
            head.extend_from_slice(&sb.encode());
            head.resize((tree_at - area.offset) as usize, 0);
            head_at = area.offset;
        }
        debug_assert!(head.len() as u64 >= SUPERBLOCK_SIZE || !area.superblock);
        hash.seek(SeekFrom::Start(head_at))
            .map_err(Error::io("seeking the hash device"))?;
        hash.write_all(&head)
            .map_err(Error::io("writing the superblock"))?;
        hash.write_all(&self.bytes)
            .map_err(Error::io("writing the hash tree"))?;
        hash.flush().map_err(Error::io("writing the hash tree"))?;
        Ok(())
    }
}

fn build_upper_levels(bytes: &mut [u8], params: &Params, geometry: &Geometry, h: &BlockHasher) {
    let hbs = params.hash_block_size() as usize;
    let ds = params.digest_size();
    for i in 1..geometry.levels.len() {
        let below = geometry.levels[i - 1];
        let this = geometry.levels[i];
        // Levels are stored top first, so level i lies before level i - 1.
        let (upper, lower) = bytes.split_at_mut(below.start as usize * hbs);
        let input = &lower[..below.blocks as usize * hbs];
        let mut digests = vec![0u8; below.blocks as usize * ds];
        h.digest_many(input, hbs, &mut digests);
        scatter(params, &mut upper[this.start as usize * hbs..], 0, &digests);
    }
}

/// Builds the tree of `data` and writes it to `hash`: `veritysetup format DATA HASH`.
/// Returns the tree (whose [`HashTree::root`] is the root hash).
///
/// `data` and `hash` may be two handles on one file when the tree is appended
/// (`area.offset` at or past the data's end: see [`HashArea::check_overlap`]).
///
/// # Errors
/// As [`HashTree::build`] and [`HashTree::write_to`].
pub fn format<D: BlockSource + ?Sized, H: Write + Seek>(
    data: &D,
    hash: &mut H,
    params: &Params,
    area: HashArea,
    uuid: Option<Uuid>,
    progress: Progress<'_>,
) -> Result<HashTree> {
    area.check()?;
    area.end(params)?;
    let tree = HashTree::build(data, params, progress)?;
    tree.write_to(hash, area, uuid)?;
    Ok(tree)
}

impl HashArea {
    /// Refuses a layout whose data area runs into the hash area, for when data and hash are
    /// one file (veritysetup: "Data area overlaps with hash area").
    ///
    /// # Errors
    /// [`Error::Overlap`].
    pub fn check_overlap(&self, params: &Params) -> Result<()> {
        let data_end = params.data_size();
        let hash_start = if self.superblock {
            self.offset
        } else {
            self.tree_offset(params.hash_block_size())
        };
        if data_end > hash_start {
            return Err(Error::Overlap {
                data_end,
                hash_start,
            });
        }
        Ok(())
    }
}

/// One place where an image does not match its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A data block whose digest differs from the one in the (verified) tree.
    DataBlock {
        /// Index of the data block.
        index: u64,
        /// Byte offset on the data device.
        offset: u64,
    },
    /// A hash block whose digest differs from the one in its verified parent, or (the top
    /// block) from the root hash. The data blocks below it cannot be verified.
    HashBlock {
        /// Tree level (0 holds the data blocks' digests).
        level: u32,
        /// Index within the level.
        index: u64,
        /// Byte offset on the hash device.
        offset: u64,
        /// The top block, compared with the root hash: a wrong root hash lands here.
        top: bool,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Failure::DataBlock { index, offset } => {
                write!(
                    f,
                    "data block {index} (data byte offset {offset}) is corrupt"
                )
            }
            Failure::HashBlock {
                level,
                index,
                offset,
                top: true,
            } => write!(
                f,
                "the root hash does not match the top hash block (level {level}, block {index}, \
                 hash byte offset {offset}): wrong root hash, or a corrupt tree"
            ),
            Failure::HashBlock {
                level,
                index,
                offset,
                top: false,
            } => write!(
                f,
                "hash block {index} of level {level} (hash byte offset {offset}) is corrupt"
            ),
        }
    }
}

/// What a whole-image verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Mismatches in the order found: hash blocks top-down, then data blocks by index. Only
    /// the first one unless every failure was asked for.
    pub failures: Vec<Failure>,
    /// Data blocks hashed and found good.
    pub data_blocks_ok: u64,
    /// Data blocks not checked because a hash block above them failed.
    pub data_blocks_unverifiable: u64,
}

impl Report {
    /// Whether the image verified.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The first data block that failed, if any.
    pub fn first_bad_data_block(&self) -> Option<(u64, u64)> {
        self.failures.iter().find_map(|f| match *f {
            Failure::DataBlock { index, offset } => Some((index, offset)),
            _ => None,
        })
    }
}

/// Reads the tree bytes of `params` from `hash` at `area`.
pub(crate) fn read_tree<H: Read + Seek>(
    hash: &mut H,
    params: &Params,
    area: HashArea,
) -> Result<Vec<u8>> {
    area.check()?;
    let needed = area.end(params)?;
    let available = stream_len(hash, "measuring the hash device")?;
    if available < needed {
        return Err(Error::HashTooShort { needed, available });
    }
    let at = area.tree_offset(params.hash_block_size());
    let mut bytes = vec![0u8; (needed - at) as usize];
    hash.seek(SeekFrom::Start(at))
        .map_err(Error::io("seeking the hash device"))?;
    hash.read_exact(&mut bytes)
        .map_err(Error::io("reading the hash tree"))?;
    Ok(bytes)
}

pub(crate) fn check_root(params: &Params, root: &[u8]) -> Result<()> {
    if root.len() != params.digest_size() {
        return Err(Error::RootHashLength {
            algorithm: params.algorithm().name(),
            expected: params.digest_size(),
            found: root.len(),
        });
    }
    Ok(())
}

/// Checks every block of an image against its tree and `root`: `veritysetup verify`.
///
/// Hash blocks are checked top-down from the root, then every data block against the
/// verified lowest level, hashing on every core. With `all == false` it stops at the first
/// failure; otherwise it reports every corrupt block (data blocks under a corrupt hash block
/// are counted as unverifiable). A mismatch is a [`Failure`] in the [`Report`], not an error.
///
/// # Errors
/// Bad inputs: [`Error::RootHashLength`], [`Error::DataTooShort`], [`Error::HashTooShort`],
/// [`Error::Io`].
pub fn verify<D: BlockSource + ?Sized, H: Read + Seek>(
    data: &D,
    hash: &mut H,
    params: &Params,
    area: HashArea,
    root: &[u8],
    all: bool,
    progress: Progress<'_>,
) -> Result<Report> {
    check_root(params, root)?;
    check_data_len(data, params)?;
    let hasher = BlockHasher::new(params);
    let geometry = params.geometry();
    let dbs = u64::from(params.data_block_size());
    let mut report = Report::default();

    if geometry.levels.is_empty() {
        let block = read_first_block(data, params)?;
        progress(dbs);
        if hasher.digest(&block).as_slice() == root {
            report.data_blocks_ok = 1;
        } else {
            report.failures.push(Failure::DataBlock {
                index: 0,
                offset: 0,
            });
        }
        return Ok(report);
    }

    let tree = read_tree(hash, params, area)?;
    let valid = verify_hash_levels(
        &tree,
        params,
        &geometry,
        &hasher,
        area,
        root,
        all,
        &mut report,
    );
    if !all && !report.failures.is_empty() || !valid[0].iter().any(|v| *v) {
        report.data_blocks_unverifiable = params.data_blocks();
        return Ok(report);
    }

    let hbs = params.hash_block_size() as usize;
    let level0 = &tree[geometry.levels[0].start as usize * hbs..];
    let ds = params.digest_size();
    let hpb = params.hashes_per_block();
    hash_data(data, params, &hasher, progress, |first, digests| {
        for (k, d) in digests.chunks_exact(ds).enumerate() {
            let i = first + k as u64;
            if !valid[0][(i / hpb) as usize] {
                report.data_blocks_unverifiable += 1;
                continue;
            }
            let at = slot_offset(params, i);
            if &level0[at..at + ds] == d {
                report.data_blocks_ok += 1;
            } else {
                report.failures.push(Failure::DataBlock {
                    index: i,
                    offset: i * dbs,
                });
                if !all {
                    return false;
                }
            }
        }
        true
    })?;
    Ok(report)
}

/// Checks hash blocks top-down; returns, per level, which blocks are verified.
#[allow(clippy::too_many_arguments)]
fn verify_hash_levels(
    tree: &[u8],
    params: &Params,
    geometry: &Geometry,
    hasher: &BlockHasher,
    area: HashArea,
    root: &[u8],
    all: bool,
    report: &mut Report,
) -> Vec<Vec<bool>> {
    let hbs = params.hash_block_size() as usize;
    let ds = params.digest_size();
    let hpb = params.hashes_per_block();
    let tree_at = area.tree_offset(params.hash_block_size());
    let n = geometry.levels.len();
    let mut valid: Vec<Vec<bool>> = geometry
        .levels
        .iter()
        .map(|l| vec![false; l.blocks as usize])
        .collect();
    let top = geometry.levels[n - 1];
    let top_bytes = &tree[top.start as usize * hbs..(top.start as usize + 1) * hbs];
    if hasher.digest(top_bytes).as_slice() == root {
        valid[n - 1][0] = true;
    } else {
        report.failures.push(Failure::HashBlock {
            level: (n - 1) as u32,
            index: 0,
            offset: tree_at + top.start * hbs as u64,
            top: true,
        });
        return valid;
    }
    for level in (0..n - 1).rev() {
        let this = geometry.levels[level];
        let parent = geometry.levels[level + 1];
        let input = &tree[this.start as usize * hbs..(this.start + this.blocks) as usize * hbs];
        let mut digests = vec![0u8; this.blocks as usize * ds];
        hasher.digest_many(input, hbs, &mut digests);
        let parent_bytes = &tree[parent.start as usize * hbs..];
        for j in 0..this.blocks {
            if !valid[level + 1][(j / hpb) as usize] {
                continue;
            }
            let at = slot_offset(params, j);
            let got = &digests[j as usize * ds..(j as usize + 1) * ds];
            if &parent_bytes[at..at + ds] == got {
                valid[level][j as usize] = true;
            } else {
                report.failures.push(Failure::HashBlock {
                    level: level as u32,
                    index: j,
                    offset: tree_at + (this.start + j) * hbs as u64,
                    top: false,
                });
                if !all {
                    return valid;
                }
            }
        }
    }
    valid
}

/// The expected digest of block `index` of the level below `parent` (a verified hash block).
pub(crate) fn slot_in_block(params: &Params, parent: &[u8], index: u64) -> Digest {
    let at = (index % params.hashes_per_block()) as usize * params.digest_stride();
    Digest::from_slice(&parent[at..at + params.digest_size()])
}

/// Whether `root` is the digest of the tree's top hash block: a cheap check, reading one
/// hash block and no data, that a root hash belongs to this hash device (`sealvol verity sign`
/// refuses to sign one that does not). `None` for a one-block image, whose root hash is the
/// digest of the data block itself.
///
/// # Errors
/// [`Error::RootHashLength`], [`Error::HashTooShort`], [`Error::HashOffset`], [`Error::Io`].
pub fn root_matches_tree<H: Read + Seek>(
    hash: &mut H,
    params: &Params,
    area: HashArea,
    root: &[u8],
) -> Result<Option<bool>> {
    check_root(params, root)?;
    area.check()?;
    let needed = area.end(params)?;
    if params.geometry().levels.is_empty() {
        return Ok(None);
    }
    let available = stream_len(hash, "measuring the hash device")?;
    if available < needed {
        return Err(Error::HashTooShort { needed, available });
    }
    // The top level is stored first: its one block starts the tree.
    let mut top = vec![0u8; params.hash_block_size() as usize];
    hash.seek(SeekFrom::Start(area.tree_offset(params.hash_block_size())))
        .map_err(Error::io("seeking the hash device"))?;
    hash.read_exact(&mut top)
        .map_err(Error::io("reading the top hash block"))?;
    Ok(Some(
        BlockHasher::new(params).digest(&top).as_slice() == root,
    ))
}

/// Reads a hash area's superblock at `offset` of `hash`.
///
/// # Errors
/// [`Error::Superblock`] (including a device shorter than 512 bytes past `offset`),
/// [`Error::HashOffset`], [`Error::Io`].
pub fn read_superblock<H: Read + Seek>(hash: &mut H, offset: u64) -> Result<Superblock> {
    HashArea::with_superblock(offset).check()?;
    hash.seek(SeekFrom::Start(offset))
        .map_err(Error::io("seeking the hash device"))?;
    let mut b = [0u8; SUPERBLOCK_SIZE as usize];
    match hash.read_exact(&mut b) {
        Ok(()) => Superblock::parse(&b),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Superblock(format!(
            "the hash device ends before a superblock at offset {offset}"
        ))),
        Err(e) => Err(Error::Io {
            what: "reading the superblock",
            source: e,
        }),
    }
}
