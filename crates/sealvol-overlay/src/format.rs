//! The on-disk format: constants, the root slot and the map tree's nodes, each encoded and
//! parsed here and nowhere else (`docs/overlay-format.md` is the specification; every
//! offset below is named there). All integers are little-endian.
//!
//! Parsing is strict: any reserved byte that is not zero, any length or count out of
//! range, any entry that contradicts its kind is refused with [`Error::Corrupt`]. Parsing
//! never allocates more than the input's size suggests and never panics (fuzzed:
//! `fuzz/fuzz_targets/overlay_metadata.rs`).

use crate::{Error, Result};

/// Size of a metadata block and the unit of every physical address.
pub const BLOCK: u64 = 4096;
/// Bytes at the start of the file that hold the embedded LUKS2 header (two 16 KiB header
/// copies and a keyslots area with room for eight 64-byte-key keyslots).
pub const LUKS_AREA: u64 = 2 << 20;
/// Size of one LUKS2 header copy in the embedded header.
pub const LUKS_METADATA: u64 = 16 << 10;
/// Size of one root slot.
pub const ROOT_SLOT_LEN: u64 = 64 << 10;
/// File offsets of the two root slots.
pub const ROOT_SLOTS: [u64; 2] = [LUKS_AREA, LUKS_AREA + ROOT_SLOT_LEN];
/// First byte that clusters and map nodes may use.
pub const DATA_START: u64 = LUKS_AREA + 2 * ROOT_SLOT_LEN;
/// Smallest and largest cluster size (as a power of two).
pub const MIN_CLUSTER_SHIFT: u32 = 12;
/// Largest cluster: 1 MiB.
pub const MAX_CLUSTER_SHIFT: u32 = 20;
/// Default cluster size: 4 KiB (see `docs/overlay-format.md`, "Cluster size").
pub const DEFAULT_CLUSTER_SHIFT: u32 = 12;
/// Entries per map node (leaf or internal).
pub const FANOUT: u64 = 64;
/// log2 of [`FANOUT`].
pub const FANOUT_SHIFT: u32 = 6;
/// Largest virtual size: 2^60 bytes keeps every byte offset and cluster count in a u64.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 60;
/// Largest physical address (in blocks) a node or entry may name: 2^40 blocks = 4 PiB, so
/// every byte offset of a cluster fits in a u64 with room to spare.
pub const MAX_BLOCK: u64 = 1 << 40;
/// Most generations (own) a layer may hold.
pub const MAX_GENERATIONS: usize = 128;
/// Most lower layers below one overlay.
pub const MAX_LOWER: usize = 16;
/// Most inherited keys (keys of lower layers) one overlay may hold.
pub const MAX_INHERITED: usize = 256;
/// Longest lower-layer locator.
pub const MAX_LOCATOR: usize = 256;
/// Length of a master key.
pub const MASTER_KEY_LEN: usize = 64;
/// Length of an extent nonce.
pub const EXTENT_NONCE_LEN: usize = 16;

/// Magic of a root slot.
pub const ROOT_MAGIC: &[u8; 8] = b"SVOVROOT";
/// Magic of a map node.
pub const NODE_MAGIC: &[u8; 4] = b"SVON";
/// Root slot format version.
pub const VERSION: u32 = 1;
/// Root flag: the layer is frozen (a snapshot), never written again.
pub const FLAG_FROZEN: u32 = 1;

/// Fixed part of the root slot.
pub const ROOT_HEADER_LEN: usize = 192;
/// A generation record.
pub const GEN_RECORD_LEN: usize = 132;
/// A lower-layer record.
pub const LOWER_RECORD_LEN: usize = 328;
/// An inherited-key record.
pub const INHERITED_RECORD_LEN: usize = 100;
/// The root MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Node header.
pub const NODE_HEADER_LEN: usize = 64;
/// A leaf entry.
pub const LEAF_ENTRY_LEN: usize = 48;
/// An internal entry.
pub const INTERNAL_ENTRY_LEN: usize = 40;
/// A wrapped master key: nonce, ciphertext, tag.
pub const WRAPPED_LEN: usize = 12 + MASTER_KEY_LEN + 16;

/// A master key wrapped with AES-256-GCM-SIV under the layer's wrapping key.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped(pub [u8; WRAPPED_LEN]);

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrapped(..)")
    }
}

/// One key generation of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenRecord {
    /// Generation id (non-zero, unique in the layer).
    pub id: u32,
    /// Commit counter when the generation was made.
    pub created: u64,
    /// The layer that made the key (this layer, or a lower layer a flatten folded in).
    pub origin_layer: [u8; 16],
    /// The generation id in `origin_layer`.
    pub origin_gen: u32,
    /// The master key, wrapped.
    pub wrapped: Wrapped,
}

/// A lower layer this overlay reads through, pinned to its frozen root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerRecord {
    /// The lower layer's UUID.
    pub uuid: [u8; 16],
    /// Its commit counter when it was frozen.
    pub counter: u64,
    /// Its root hash when it was frozen.
    pub root_hash: [u8; 32],
    /// Its virtual size.
    pub virtual_size: u64,
    /// Its cluster size (log2).
    pub cluster_shift: u32,
    /// Where to find it: opaque to this crate (the front end stores a file name).
    pub locator: Vec<u8>,
}

/// A master key of a lower layer, wrapped under this layer's wrapping key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InheritedRecord {
    /// Index into the lower layers (0 = the layer right below).
    pub lower: u32,
    /// The generation id in that layer.
    pub gen: u32,
    /// The master key, wrapped.
    pub wrapped: Wrapped,
}

/// The root of a layer: everything but the map nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// [`FLAG_FROZEN`] or 0.
    pub flags: u32,
    /// The layer's UUID.
    pub uuid: [u8; 16],
    /// Commit counter: grows by one with every commit, never reused.
    pub counter: u64,
    /// Cluster size (log2).
    pub cluster_shift: u32,
    /// Virtual size in bytes (a multiple of the cluster size).
    pub virtual_size: u64,
    /// Size of the external base at the bottom of the chain.
    pub base_size: u64,
    /// Opaque identity of the external base (for example a verity root hash), or zeros.
    pub base_tag: [u8; 32],
    /// Block of the map tree's top node (0 = the map is empty).
    pub map_block: u64,
    /// SHA-256 of that node (zeros when empty).
    pub map_hash: [u8; 32],
    /// Levels of the map tree.
    pub map_depth: u8,
    /// The generation new writes use.
    pub current_gen: u32,
    /// A generation being retired (0 = none).
    pub retiring_gen: u32,
    /// Own generations.
    pub gens: Vec<GenRecord>,
    /// Lower layers, the one right below first.
    pub lower: Vec<LowerRecord>,
    /// Keys of the lower layers.
    pub inherited: Vec<InheritedRecord>,
}

/// Levels a map over `clusters` clusters needs (at least one).
pub fn depth_for(clusters: u64) -> u8 {
    let mut depth = 1u8;
    let mut covered = FANOUT;
    while covered < clusters {
        covered = covered.saturating_mul(FANOUT);
        depth += 1;
    }
    depth
}

fn corrupt(what: &str, why: String) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        why,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().expect("2 bytes"))
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
    fn arr<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("N bytes")
    }
}

fn zeros(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

impl Root {
    /// Bytes the encoded root covers (what the hash and MAC cover).
    pub fn content_len(&self) -> usize {
        ROOT_HEADER_LEN
            + self.gens.len() * GEN_RECORD_LEN
            + self.lower.len() * LOWER_RECORD_LEN
            + self.inherited.len() * INHERITED_RECORD_LEN
    }

    /// Encodes the root (without its MAC).
    ///
    /// # Errors
    /// [`Error::Limit`] when a table is too long for the slot.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.gens.len() > MAX_GENERATIONS {
            return Err(Error::Limit(format!(
                "{} generations; a layer holds at most {MAX_GENERATIONS}: retire old ones",
                self.gens.len()
            )));
        }
        if self.lower.len() > MAX_LOWER {
            return Err(Error::Limit(format!(
                "{} lower layers; a chain holds at most {MAX_LOWER}: flatten it",
                self.lower.len()
            )));
        }
        if self.inherited.len() > MAX_INHERITED {
            return Err(Error::Limit(format!(
                "{} inherited keys; at most {MAX_INHERITED}: flatten the chain",
                self.inherited.len()
            )));
        }
        let mut b = Vec::with_capacity(self.content_len());
        b.extend_from_slice(ROOT_MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&(self.content_len() as u32).to_le_bytes());
        b.extend_from_slice(&self.cluster_shift.to_le_bytes());
        b.extend_from_slice(&self.uuid);
        b.extend_from_slice(&self.counter.to_le_bytes());
        b.extend_from_slice(&self.virtual_size.to_le_bytes());
        b.extend_from_slice(&self.base_size.to_le_bytes());
        b.extend_from_slice(&self.base_tag);
        b.extend_from_slice(&self.map_block.to_le_bytes());
        b.extend_from_slice(&self.map_hash);
        b.push(self.map_depth);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.current_gen.to_le_bytes());
        b.extend_from_slice(&self.retiring_gen.to_le_bytes());
        b.extend_from_slice(&(self.gens.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.lower.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.inherited.len() as u32).to_le_bytes());
        b.resize(ROOT_HEADER_LEN, 0);
        for g in &self.gens {
            b.extend_from_slice(&g.id.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&g.created.to_le_bytes());
            b.extend_from_slice(&g.origin_layer);
            b.extend_from_slice(&g.origin_gen.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&g.wrapped.0);
        }
        for l in &self.lower {
            if l.locator.len() > MAX_LOCATOR {
                return Err(Error::Limit(format!(
                    "a locator of {} bytes; at most {MAX_LOCATOR}",
                    l.locator.len()
                )));
            }
            b.extend_from_slice(&l.uuid);
            b.extend_from_slice(&l.counter.to_le_bytes());
            b.extend_from_slice(&l.root_hash);
            b.extend_from_slice(&l.virtual_size.to_le_bytes());
            b.extend_from_slice(&l.cluster_shift.to_le_bytes());
            b.extend_from_slice(&(l.locator.len() as u16).to_le_bytes());
            b.extend_from_slice(&[0; 2]);
            let mut loc = [0u8; MAX_LOCATOR];
            loc[..l.locator.len()].copy_from_slice(&l.locator);
            b.extend_from_slice(&loc);
        }
        for k in &self.inherited {
            b.extend_from_slice(&k.lower.to_le_bytes());
            b.extend_from_slice(&k.gen.to_le_bytes());
            b.extend_from_slice(&k.wrapped.0);
        }
        debug_assert_eq!(b.len(), self.content_len());
        Ok(b)
    }

    /// Parses a root slot's content (`slot` is the whole slot or at least its content).
    /// Returns the root and its content length (where the MAC starts).
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the field.
    pub fn parse(slot: &[u8]) -> Result<(Root, usize)> {
        const W: &str = "root slot";
        if slot.len() < ROOT_HEADER_LEN {
            return Err(corrupt(
                W,
                format!("{} bytes, shorter than its header", slot.len()),
            ));
        }
        let mut r = Reader { buf: slot, pos: 0 };
        if r.take(8) != ROOT_MAGIC {
            return Err(corrupt(W, "no root magic".into()));
        }
        let version = r.u32();
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let flags = r.u32();
        if flags & !FLAG_FROZEN != 0 {
            return Err(corrupt(W, format!("unknown flags {flags:#x}")));
        }
        let content_len = r.u32() as usize;
        let cluster_shift = r.u32();
        if !(MIN_CLUSTER_SHIFT..=MAX_CLUSTER_SHIFT).contains(&cluster_shift) {
            return Err(corrupt(
                W,
                format!("cluster shift {cluster_shift} outside 12..=20"),
            ));
        }
        let uuid = r.arr::<16>();
        let counter = r.u64();
        let virtual_size = r.u64();
        let base_size = r.u64();
        let base_tag = r.arr::<32>();
        let map_block = r.u64();
        let map_hash = r.arr::<32>();
        let map_depth = r.u8();
        let reserved = r.take(3);
        let current_gen = r.u32();
        let retiring_gen = r.u32();
        let ngens = r.u32() as usize;
        let nlower = r.u32() as usize;
        let ninh = r.u32() as usize;
        let tail = r.take(ROOT_HEADER_LEN - r.pos);
        if !zeros(reserved) || !zeros(tail) {
            return Err(corrupt(W, "reserved header bytes are not zero".into()));
        }
        if ngens > MAX_GENERATIONS || nlower > MAX_LOWER || ninh > MAX_INHERITED {
            return Err(corrupt(
                W,
                format!("{ngens} generations, {nlower} lower layers, {ninh} inherited keys exceed the limits"),
            ));
        }
        let want = ROOT_HEADER_LEN
            + ngens * GEN_RECORD_LEN
            + nlower * LOWER_RECORD_LEN
            + ninh * INHERITED_RECORD_LEN;
        if content_len != want || content_len + MAC_LEN > ROOT_SLOT_LEN as usize {
            return Err(corrupt(
                W,
                format!("content length {content_len}, the tables need {want}"),
            ));
        }
        if slot.len() < content_len + MAC_LEN {
            return Err(corrupt(
                W,
                format!(
                    "{} bytes, content and MAC need {}",
                    slot.len(),
                    content_len + MAC_LEN
                ),
            ));
        }
        let cs = 1u64 << cluster_shift;
        if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE || virtual_size % cs != 0 {
            return Err(corrupt(W, format!("virtual size {virtual_size} is not a positive multiple of the {cs}-byte cluster up to 2^60")));
        }
        if base_size > MAX_VIRTUAL_SIZE {
            return Err(corrupt(W, format!("base size {base_size} is beyond 2^60")));
        }
        let depth = depth_for(virtual_size >> cluster_shift);
        if map_depth != depth {
            return Err(corrupt(
                W,
                format!("map depth {map_depth}; the virtual size needs {depth}"),
            ));
        }
        if (map_block == 0) != zeros(&map_hash)
            || map_block >= MAX_BLOCK
            || (map_block != 0 && map_block < DATA_START / BLOCK)
        {
            return Err(corrupt(
                W,
                format!("map root block {map_block} and its hash disagree or it is out of range"),
            ));
        }
        let mut gens = Vec::with_capacity(ngens);
        for _ in 0..ngens {
            let id = r.u32();
            let pad = r.u32();
            let created = r.u64();
            let origin_layer = r.arr::<16>();
            let origin_gen = r.u32();
            let pad2 = r.u32();
            let wrapped = Wrapped(r.arr::<WRAPPED_LEN>());
            if pad != 0 || pad2 != 0 || id == 0 || origin_gen == 0 || created > counter {
                return Err(corrupt(W, format!("generation record {id} is malformed")));
            }
            if gens.iter().any(|g: &GenRecord| g.id == id) {
                return Err(corrupt(W, format!("generation {id} appears twice")));
            }
            gens.push(GenRecord {
                id,
                created,
                origin_layer,
                origin_gen,
                wrapped,
            });
        }
        let mut lower = Vec::with_capacity(nlower);
        for _ in 0..nlower {
            let uuid = r.arr::<16>();
            let counter = r.u64();
            let root_hash = r.arr::<32>();
            let vs = r.u64();
            let shift = r.u32();
            let loc_len = r.u16() as usize;
            let pad = r.u16();
            let loc = r.take(MAX_LOCATOR);
            if pad != 0 || loc_len > MAX_LOCATOR || !zeros(&loc[loc_len.min(MAX_LOCATOR)..]) {
                return Err(corrupt(W, "lower-layer record is malformed".into()));
            }
            if !(MIN_CLUSTER_SHIFT..=MAX_CLUSTER_SHIFT).contains(&shift)
                || vs == 0
                || vs > MAX_VIRTUAL_SIZE
                || vs % (1u64 << shift) != 0
            {
                return Err(corrupt(
                    W,
                    format!("lower layer size {vs} / cluster shift {shift} out of range"),
                ));
            }
            lower.push(LowerRecord {
                uuid,
                counter,
                root_hash,
                virtual_size: vs,
                cluster_shift: shift,
                locator: loc[..loc_len].to_vec(),
            });
        }
        let mut inherited = Vec::with_capacity(ninh);
        for _ in 0..ninh {
            let lower_idx = r.u32();
            let gen = r.u32();
            let wrapped = Wrapped(r.arr::<WRAPPED_LEN>());
            if lower_idx as usize >= nlower || gen == 0 {
                return Err(corrupt(
                    W,
                    format!(
                        "inherited key for layer {lower_idx} generation {gen} names no lower layer"
                    ),
                ));
            }
            if inherited
                .iter()
                .any(|k: &InheritedRecord| k.lower == lower_idx && k.gen == gen)
            {
                return Err(corrupt(
                    W,
                    format!("inherited key {lower_idx}/{gen} appears twice"),
                ));
            }
            inherited.push(InheritedRecord {
                lower: lower_idx,
                gen,
                wrapped,
            });
        }
        let frozen = flags & FLAG_FROZEN != 0;
        if !gens.iter().any(|g| g.id == current_gen) {
            return Err(corrupt(
                W,
                format!("current generation {current_gen} has no record"),
            ));
        }
        if retiring_gen != 0
            && (retiring_gen == current_gen || !gens.iter().any(|g| g.id == retiring_gen))
        {
            return Err(corrupt(
                W,
                format!("retiring generation {retiring_gen} is current or has no record"),
            ));
        }
        if frozen && retiring_gen != 0 {
            return Err(corrupt(W, "a frozen layer is retiring a generation".into()));
        }
        Ok((
            Root {
                flags,
                uuid,
                counter,
                cluster_shift,
                virtual_size,
                base_size,
                base_tag,
                map_block,
                map_hash,
                map_depth,
                current_gen,
                retiring_gen,
                gens,
                lower,
                inherited,
            },
            content_len,
        ))
    }

    /// Whether the layer is frozen.
    pub fn frozen(&self) -> bool {
        self.flags & FLAG_FROZEN != 0
    }

    /// Clusters in the virtual size.
    pub fn clusters(&self) -> u64 {
        self.virtual_size >> self.cluster_shift
    }
}

/// What a leaf entry maps its logical cluster to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Encrypted data in a cluster of this layer's file.
    Data {
        /// First block of the cluster.
        block: u64,
        /// Generation whose master key derives the extent key.
        gen: u32,
        /// The extent's random nonce.
        nonce: [u8; EXTENT_NONCE_LEN],
        /// The AES-256-GCM-SIV tag of the cluster.
        tag: [u8; 16],
    },
    /// The cluster reads as zeros (discarded or zeroed): nothing is stored.
    Zero,
}

/// Kind byte of an unmapped entry.
const KIND_NONE: u8 = 0;
const KIND_DATA: u8 = 1;
const KIND_ZERO: u8 = 2;

/// The children of an internal node: (block, SHA-256) or nothing.
pub type Children = Box<[Option<(u64, [u8; 32])>; FANOUT as usize]>;

/// A map node's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeBody {
    /// Level 0: one entry per logical cluster (`None` = unmapped: read the layer below).
    Leaf(Box<[Option<Entry>; FANOUT as usize]>),
    /// Level ≥ 1: one (block, SHA-256) per child node (`None` = nothing mapped below).
    Internal(Children),
}

/// Encodes a node: `level`, the first logical cluster it covers, and its entries.
pub fn encode_node(level: u8, first: u64, body: &NodeBody) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[..4].copy_from_slice(NODE_MAGIC);
    b[4] = level;
    b[8..16].copy_from_slice(&first.to_le_bytes());
    match body {
        NodeBody::Leaf(entries) => {
            for (i, e) in entries.iter().enumerate() {
                let o = NODE_HEADER_LEN + i * LEAF_ENTRY_LEN;
                match e {
                    None => {}
                    Some(Entry::Zero) => b[o + 12] = KIND_ZERO,
                    Some(Entry::Data {
                        block,
                        gen,
                        nonce,
                        tag,
                    }) => {
                        b[o..o + 8].copy_from_slice(&block.to_le_bytes());
                        b[o + 8..o + 12].copy_from_slice(&gen.to_le_bytes());
                        b[o + 12] = KIND_DATA;
                        b[o + 16..o + 32].copy_from_slice(nonce);
                        b[o + 32..o + 48].copy_from_slice(tag);
                    }
                }
            }
        }
        NodeBody::Internal(children) => {
            for (i, c) in children.iter().enumerate() {
                if let Some((block, hash)) = c {
                    let o = NODE_HEADER_LEN + i * INTERNAL_ENTRY_LEN;
                    b[o..o + 8].copy_from_slice(&block.to_le_bytes());
                    b[o + 8..o + 40].copy_from_slice(hash);
                }
            }
        }
    }
    b
}

/// Parses a node that must be at `level` and cover clusters from `first`.
///
/// # Errors
/// [`Error::Corrupt`] naming what is wrong.
pub fn parse_node(b: &[u8], level: u8, first: u64) -> Result<NodeBody> {
    const W: &str = "map node";
    if b.len() != BLOCK as usize {
        return Err(corrupt(W, format!("{} bytes, a node is {BLOCK}", b.len())));
    }
    if &b[..4] != NODE_MAGIC {
        return Err(corrupt(W, "no node magic".into()));
    }
    if b[4] != level || !zeros(&b[5..8]) || !zeros(&b[16..NODE_HEADER_LEN]) {
        return Err(corrupt(
            W,
            format!("level {} or reserved bytes; expected level {level}", b[4]),
        ));
    }
    let got_first = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    if got_first != first {
        return Err(corrupt(
            W,
            format!("covers clusters from {got_first}; its place is {first}"),
        ));
    }
    if level == 0 {
        let end = NODE_HEADER_LEN + FANOUT as usize * LEAF_ENTRY_LEN;
        if !zeros(&b[end..]) {
            return Err(corrupt(
                W,
                "bytes after the leaf entries are not zero".into(),
            ));
        }
        let mut entries: Box<[Option<Entry>; FANOUT as usize]> = Box::new([None; FANOUT as usize]);
        for (i, slot) in entries.iter_mut().enumerate() {
            let o = NODE_HEADER_LEN + i * LEAF_ENTRY_LEN;
            let e = &b[o..o + LEAF_ENTRY_LEN];
            let block = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            let gen = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
            if !zeros(&e[13..16]) {
                return Err(corrupt(W, format!("entry {i} has reserved bytes set")));
            }
            *slot = match e[12] {
                KIND_NONE if zeros(e) => None,
                KIND_ZERO if zeros(&e[..12]) && zeros(&e[13..]) => Some(Entry::Zero),
                KIND_DATA if (DATA_START / BLOCK..MAX_BLOCK).contains(&block) && gen != 0 => {
                    Some(Entry::Data {
                        block,
                        gen,
                        nonce: e[16..32].try_into().expect("16 bytes"),
                        tag: e[32..48].try_into().expect("16 bytes"),
                    })
                }
                k => return Err(corrupt(W, format!("entry {i} of kind {k} is malformed"))),
            };
        }
        Ok(NodeBody::Leaf(entries))
    } else {
        let end = NODE_HEADER_LEN + FANOUT as usize * INTERNAL_ENTRY_LEN;
        if !zeros(&b[end..]) {
            return Err(corrupt(
                W,
                "bytes after the child entries are not zero".into(),
            ));
        }
        let mut children: Children = Box::new([None; FANOUT as usize]);
        for (i, slot) in children.iter_mut().enumerate() {
            let o = NODE_HEADER_LEN + i * INTERNAL_ENTRY_LEN;
            let block = u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
            let hash: [u8; 32] = b[o + 8..o + 40].try_into().expect("32 bytes");
            *slot = match block {
                0 if zeros(&hash) => None,
                blk if (DATA_START / BLOCK..MAX_BLOCK).contains(&blk) && !zeros(&hash) => {
                    Some((blk, hash))
                }
                _ => {
                    return Err(corrupt(
                        W,
                        format!("child {i} block {block} is out of range or its hash is missing"),
                    ))
                }
            };
        }
        Ok(NodeBody::Internal(children))
    }
}

/// A point in a layer's history: the commit counter and the root hash it had.
///
/// Printed as `COUNTER:HEX` (64 hex digits). Opening with an expected checkpoint refuses
/// any state with a lower counter, and any other root at the same counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// The commit counter.
    pub counter: u64,
    /// SHA-256 of the root slot's content.
    pub root: [u8; 32],
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.counter, hex::encode(self.root))
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!("checkpoint {s:?} is not COUNTER:ROOT (a number, a colon and 64 hex digits), as `overlay checkpoint` prints it"))
        };
        let (c, r) = s.trim().split_once(':').ok_or_else(bad)?;
        let counter = c.parse::<u64>().map_err(|_| bad())?;
        let root = hex::decode(r).map_err(|_| bad())?;
        let root: [u8; 32] = root.try_into().map_err(|_| bad())?;
        Ok(Checkpoint { counter, root })
    }
}

impl serde::Serialize for Checkpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_root() -> Root {
        Root {
            flags: 0,
            uuid: [7; 16],
            counter: 9,
            cluster_shift: 16,
            virtual_size: 1 << 30,
            base_size: 1 << 30,
            base_tag: [3; 32],
            map_block: 600,
            map_hash: [1; 32],
            map_depth: depth_for((1 << 30) >> 16),
            current_gen: 2,
            retiring_gen: 1,
            gens: vec![
                GenRecord {
                    id: 1,
                    created: 1,
                    origin_layer: [7; 16],
                    origin_gen: 1,
                    wrapped: Wrapped([5; WRAPPED_LEN]),
                },
                GenRecord {
                    id: 2,
                    created: 8,
                    origin_layer: [7; 16],
                    origin_gen: 2,
                    wrapped: Wrapped([6; WRAPPED_LEN]),
                },
            ],
            lower: vec![LowerRecord {
                uuid: [8; 16],
                counter: 4,
                root_hash: [9; 32],
                virtual_size: 1 << 30,
                cluster_shift: 12,
                locator: b"base.ovl".to_vec(),
            }],
            inherited: vec![InheritedRecord {
                lower: 0,
                gen: 1,
                wrapped: Wrapped([4; WRAPPED_LEN]),
            }],
        }
    }

    #[test]
    fn roots_round_trip_and_reserved_bytes_are_refused() {
        let r = sample_root();
        let mut b = r.encode().unwrap();
        assert_eq!(b.len(), r.content_len());
        b.extend_from_slice(&[0; MAC_LEN]);
        let (back, len) = Root::parse(&b).unwrap();
        assert_eq!(back, r);
        assert_eq!(len, r.content_len());
        for at in [
            13usize,
            137,
            180,
            196,
            2 * GEN_RECORD_LEN + ROOT_HEADER_LEN + 70,
        ] {
            let mut c = b.clone();
            c[at] ^= 0x40;
            assert!(Root::parse(&c).is_err(), "byte {at}");
        }
        assert!(Root::parse(&b[..100]).is_err());
        assert!(
            Root::parse(&b[..r.content_len()]).is_err(),
            "no room for the MAC"
        );
    }

    #[test]
    fn depth_covers_the_clusters() {
        assert_eq!(depth_for(1), 1);
        assert_eq!(depth_for(64), 1);
        assert_eq!(depth_for(65), 2);
        assert_eq!(depth_for(4096), 2);
        assert_eq!(depth_for(4097), 3);
        assert_eq!(depth_for(1 << 48), 8);
    }

    #[test]
    fn nodes_round_trip_and_bind_their_place() {
        let mut e: Box<[Option<Entry>; 64]> = Box::new([None; 64]);
        e[0] = Some(Entry::Zero);
        e[5] = Some(Entry::Data {
            block: 1000,
            gen: 3,
            nonce: [1; 16],
            tag: [2; 16],
        });
        let body = NodeBody::Leaf(e);
        let b = encode_node(0, 128, &body);
        assert_eq!(parse_node(&b, 0, 128).unwrap(), body);
        assert!(parse_node(&b, 0, 192).is_err(), "another place");
        assert!(parse_node(&b, 1, 128).is_err(), "another level");
        let mut c: Children = Box::new([None; 64]);
        c[63] = Some((700, [9; 32]));
        let body = NodeBody::Internal(c);
        let b = encode_node(2, 0, &body);
        assert_eq!(parse_node(&b, 2, 0).unwrap(), body);
        let mut bad = b.clone();
        bad[NODE_HEADER_LEN] = 1; // child 0: a block without a hash
        assert!(parse_node(&bad, 2, 0).is_err());
    }

    #[test]
    fn checkpoints_print_and_parse() {
        let c = Checkpoint {
            counter: 42,
            root: [0xab; 32],
        };
        let s = c.to_string();
        assert_eq!(s, format!("42:{}", "ab".repeat(32)));
        assert_eq!(s.parse::<Checkpoint>().unwrap(), c);
        for bad in [
            "",
            "42",
            "x:ab",
            "42:abc",
            &format!("42:{}", "ab".repeat(31)),
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad:?}");
        }
    }
}
