//! The in-memory map (logical cluster → entry), its copy-on-write serialization into
//! hashed nodes, and the allocator of physical space.

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest;

use crate::format::{
    encode_node, parse_node, Children, Entry, NodeBody, BLOCK, DATA_START, FANOUT, FANOUT_SHIFT,
};
use crate::store::Store;
use crate::{Error, Result};

type Leaf = Box<[Option<Entry>; FANOUT as usize]>;

/// Nodes to write (block, bytes) and the new top node (block, hash).
pub(crate) type Serialized = (Vec<(u64, Vec<u8>)>, (u64, [u8; 32]));

fn corrupt(why: String) -> Error {
    Error::Corrupt {
        what: "map".into(),
        why,
    }
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

/// The map of one layer.
pub(crate) struct Map {
    depth: u8,
    clusters: u64,
    leaves: BTreeMap<u64, Leaf>,
    /// Per level: node index → (block, hash) of its committed copy.
    nodes: Vec<BTreeMap<u64, (u64, [u8; 32])>>,
    /// Per level: nodes to rewrite at the next commit.
    dirty: Vec<BTreeSet<u64>>,
}

/// First logical cluster a node at `level`, index `idx` covers.
fn first_of(level: u8, idx: u64) -> u64 {
    idx << (FANOUT_SHIFT * (u32::from(level) + 1))
}

impl Map {
    pub(crate) fn new(depth: u8, clusters: u64) -> Self {
        Map {
            depth,
            clusters,
            leaves: BTreeMap::new(),
            nodes: vec![BTreeMap::new(); usize::from(depth)],
            dirty: vec![BTreeSet::new(); usize::from(depth)],
        }
    }

    pub(crate) fn get(&self, cluster: u64) -> Option<Entry> {
        self.leaves
            .get(&(cluster >> FANOUT_SHIFT))
            .and_then(|l| l[(cluster % FANOUT) as usize])
    }

    /// Sets an entry; returns the old one.
    pub(crate) fn set(&mut self, cluster: u64, e: Option<Entry>) -> Option<Entry> {
        debug_assert!(cluster < self.clusters);
        let li = cluster >> FANOUT_SHIFT;
        let leaf = self
            .leaves
            .entry(li)
            .or_insert_with(|| Box::new([None; FANOUT as usize]));
        let old = std::mem::replace(&mut leaf[(cluster % FANOUT) as usize], e);
        if old != e {
            self.dirty[0].insert(li);
        }
        old
    }

    /// Every mapped entry in cluster order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.leaves.iter().flat_map(|(li, leaf)| {
            leaf.iter()
                .enumerate()
                .filter_map(move |(i, e)| e.map(|e| (li * FANOUT + i as u64, e)))
        })
    }

    /// Blocks of every committed node.
    #[cfg(test)]
    pub(crate) fn node_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.iter().flat_map(|l| l.values().map(|&(b, _)| b))
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|d| !d.is_empty())
    }

    pub(crate) fn dirty_nodes(&self) -> usize {
        self.dirty.iter().map(|d| d.len()).sum()
    }

    /// Loads and checks the whole tree under `(root_block, root_hash)`: every node's hash
    /// against its parent's entry, its level and place; marks every block in `alloc`.
    pub(crate) fn load(
        store: &dyn Store,
        depth: u8,
        clusters: u64,
        root_block: u64,
        root_hash: &[u8; 32],
        alloc: &mut Alloc,
    ) -> Result<Map> {
        let mut map = Map::new(depth, clusters);
        if root_block != 0 {
            map.load_node(store, depth - 1, 0, root_block, root_hash, alloc)?;
        }
        Ok(map)
    }

    fn load_node(
        &mut self,
        store: &dyn Store,
        level: u8,
        idx: u64,
        block: u64,
        hash: &[u8; 32],
        alloc: &mut Alloc,
    ) -> Result<()> {
        let first = first_of(level, idx);
        if first >= self.clusters {
            return Err(corrupt(format!(
                "a level-{level} node at cluster {first} is past the {} clusters",
                self.clusters
            )));
        }
        let mut b = vec![0u8; BLOCK as usize];
        store
            .read_at(&mut b, block * BLOCK)
            .map_err(|e| Error::io(format!("reading map node at block {block}"), e))?;
        if &sha256(&b) != hash {
            return Err(corrupt(format!(
                "the level-{level} node at block {block} does not match its hash"
            )));
        }
        alloc.mark_node(block)?;
        self.nodes[usize::from(level)].insert(idx, (block, *hash));
        match parse_node(&b, level, first)? {
            NodeBody::Leaf(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let c = first + i as u64;
                    match e {
                        None => {}
                        Some(_) if c >= self.clusters => {
                            return Err(corrupt(format!(
                                "cluster {c} is mapped past the virtual size"
                            )))
                        }
                        Some(Entry::Data { block, .. }) => alloc.mark_data(*block)?,
                        Some(Entry::Zero) => {}
                    }
                }
                if entries.iter().all(Option::is_none) {
                    return Err(corrupt(format!("the leaf at block {block} is empty")));
                }
                self.leaves.insert(idx, entries);
            }
            NodeBody::Internal(children) => {
                if children.iter().all(Option::is_none) {
                    return Err(corrupt(format!("the node at block {block} is empty")));
                }
                for (i, c) in children.iter().enumerate() {
                    if let Some((cb, ch)) = c {
                        self.load_node(store, level - 1, idx * FANOUT + i as u64, *cb, ch, alloc)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Encodes every dirty node into a newly allocated block (copy on write): the old
    /// blocks go to `freed`. Returns the nodes to write and the new root (block, hash).
    pub(crate) fn serialize(
        &mut self,
        alloc: &mut Alloc,
        freed: &mut Vec<u64>,
    ) -> Result<Serialized> {
        let mut out = Vec::new();
        for level in 0..self.depth {
            let l = usize::from(level);
            let dirty = std::mem::take(&mut self.dirty[l]);
            for idx in dirty {
                let body = if level == 0 {
                    match self.leaves.get(&idx) {
                        Some(leaf) if leaf.iter().any(Option::is_some) => {
                            Some(NodeBody::Leaf(leaf.clone()))
                        }
                        _ => {
                            self.leaves.remove(&idx);
                            None
                        }
                    }
                } else {
                    let mut children: Children = Box::new([None; FANOUT as usize]);
                    let mut any = false;
                    for (&ci, &v) in self.nodes[l - 1].range(idx * FANOUT..(idx + 1) * FANOUT) {
                        children[(ci - idx * FANOUT) as usize] = Some(v);
                        any = true;
                    }
                    any.then_some(NodeBody::Internal(children))
                };
                if let Some((old, _)) = self.nodes[l].remove(&idx) {
                    freed.push(old);
                }
                if let Some(body) = body {
                    let bytes = encode_node(level, first_of(level, idx), &body);
                    let hash = sha256(&bytes);
                    let block = alloc.alloc_node();
                    self.nodes[l].insert(idx, (block, hash));
                    out.push((block, bytes));
                }
                if level + 1 < self.depth {
                    self.dirty[l + 1].insert(idx / FANOUT);
                }
            }
        }
        let root = self.nodes[usize::from(self.depth) - 1]
            .get(&0)
            .copied()
            .unwrap_or((0, [0; 32]));
        Ok((out, root))
    }
}

/// The physical space of a layer: cluster-sized slots from the first cluster-aligned
/// offset at or after [`DATA_START`]; a slot holds one data cluster or up to
/// `cluster / 4096` map nodes.
pub(crate) struct Alloc {
    base_block: u64,
    per_slot: u64,
    used: Vec<u64>,
    nslots: u64,
    free_below: u64,
    cursor: u64,
    /// Node slots: slot → used sub-blocks.
    meta: BTreeMap<u64, Vec<bool>>,
    /// Node slots with room.
    meta_open: BTreeSet<u64>,
    /// Slots' worth of store: nothing may point past it (set at open).
    limit: u64,
    data_slots: u64,
    node_blocks: u64,
}

impl Alloc {
    pub(crate) fn new(shift: u32, store_len: u64) -> Self {
        let cs = 1u64 << shift;
        let base = DATA_START.div_ceil(cs) * cs;
        Alloc {
            base_block: base / BLOCK,
            per_slot: cs / BLOCK,
            used: Vec::new(),
            nslots: 0,
            free_below: 0,
            cursor: 0,
            meta: BTreeMap::new(),
            meta_open: BTreeSet::new(),
            limit: store_len.saturating_sub(base).div_ceil(cs),
            data_slots: 0,
            node_blocks: 0,
        }
    }

    /// File offset of slot `s`.
    pub(crate) fn offset(&self, s: u64) -> u64 {
        (self.base_block + s * self.per_slot) * BLOCK
    }

    /// Block of slot `s`.
    pub(crate) fn block(&self, s: u64) -> u64 {
        self.base_block + s * self.per_slot
    }

    /// Slot of a data cluster's first block.
    pub(crate) fn slot_of(&self, block: u64) -> Option<u64> {
        let rel = block.checked_sub(self.base_block)?;
        (rel % self.per_slot == 0).then_some(rel / self.per_slot)
    }

    fn bit(&self, s: u64) -> bool {
        self.used
            .get((s / 64) as usize)
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    fn set_bit(&mut self, s: u64, v: bool) {
        let w = (s / 64) as usize;
        if self.used.len() <= w {
            self.used.resize(w + 1, 0);
        }
        if v {
            self.used[w] |= 1 << (s % 64);
        } else {
            self.used[w] &= !(1 << (s % 64));
        }
    }

    fn take_slot(&mut self, s: u64) -> Result<()> {
        if s >= self.limit {
            return Err(corrupt(format!(
                "slot {s} is past the end of the file ({} slots)",
                self.limit
            )));
        }
        if self.bit(s) {
            return Err(corrupt(format!("slot {s} is referenced twice")));
        }
        self.set_bit(s, true);
        if s >= self.nslots {
            self.free_below += s - self.nslots;
            self.nslots = s + 1;
        } else {
            self.free_below -= 1;
        }
        Ok(())
    }

    /// Marks a data cluster found at open.
    pub(crate) fn mark_data(&mut self, block: u64) -> Result<()> {
        let s = self
            .slot_of(block)
            .ok_or_else(|| corrupt(format!("data block {block} is not on a cluster boundary")))?;
        self.take_slot(s)?;
        self.data_slots += 1;
        Ok(())
    }

    /// Marks a node found at open.
    pub(crate) fn mark_node(&mut self, block: u64) -> Result<()> {
        let rel = block
            .checked_sub(self.base_block)
            .ok_or_else(|| corrupt(format!("node block {block} is before the data area")))?;
        let (s, sub) = (rel / self.per_slot, (rel % self.per_slot) as usize);
        if !self.meta.contains_key(&s) {
            self.take_slot(s)?;
            self.meta.insert(s, vec![false; self.per_slot as usize]);
            self.meta_open.insert(s);
        }
        let subs = self.meta.get_mut(&s).expect("just inserted");
        if subs[sub] {
            return Err(corrupt(format!("node block {block} is referenced twice")));
        }
        subs[sub] = true;
        if subs.iter().all(|&u| u) {
            self.meta_open.remove(&s);
        }
        self.node_blocks += 1;
        Ok(())
    }

    /// A free slot (next fit), growing the file when none is free.
    fn alloc_slot(&mut self) -> u64 {
        let s = if self.free_below == 0 {
            self.nslots
        } else {
            let mut s = self.cursor.min(self.nslots);
            loop {
                if s >= self.nslots {
                    s = 0;
                }
                let w = (s / 64) as usize;
                if self.used.get(w).copied().unwrap_or(0) == u64::MAX {
                    s = (s / 64 + 1) * 64;
                    continue;
                }
                if !self.bit(s) {
                    break s;
                }
                s += 1;
            }
        };
        self.set_bit(s, true);
        if s >= self.nslots {
            self.nslots = s + 1;
        } else {
            self.free_below -= 1;
        }
        self.limit = self.limit.max(self.nslots);
        self.cursor = s + 1;
        s
    }

    /// A slot for a data cluster.
    pub(crate) fn alloc_data(&mut self) -> u64 {
        self.data_slots += 1;
        self.alloc_slot()
    }

    /// A block for a node.
    pub(crate) fn alloc_node(&mut self) -> u64 {
        let s = match self.meta_open.first() {
            Some(&s) => s,
            None => {
                let s = self.alloc_slot();
                self.meta.insert(s, vec![false; self.per_slot as usize]);
                self.meta_open.insert(s);
                s
            }
        };
        let subs = self.meta.get_mut(&s).expect("open node slot");
        let sub = subs.iter().position(|&u| !u).expect("open slot has room");
        subs[sub] = true;
        if subs.iter().all(|&u| u) {
            self.meta_open.remove(&s);
        }
        self.node_blocks += 1;
        self.base_block + s * self.per_slot + sub as u64
    }

    fn free_slot(&mut self, s: u64) {
        debug_assert!(self.bit(s));
        self.set_bit(s, false);
        self.free_below += 1;
        if s + 1 == self.nslots {
            // Shrink the tail so the file's end moves back.
            while self.nslots > 0 && !self.bit(self.nslots - 1) {
                self.nslots -= 1;
                self.free_below -= 1;
            }
        }
    }

    /// Frees a data cluster's slot.
    pub(crate) fn free_data(&mut self, block: u64) {
        if let Some(s) = self.slot_of(block) {
            self.data_slots -= 1;
            self.free_slot(s);
        }
    }

    /// Frees a node block; returns the slot's offset when the whole slot became free.
    pub(crate) fn free_node(&mut self, block: u64) -> Option<u64> {
        let rel = block - self.base_block;
        let (s, sub) = (rel / self.per_slot, (rel % self.per_slot) as usize);
        let subs = self.meta.get_mut(&s)?;
        subs[sub] = false;
        self.node_blocks -= 1;
        if subs.iter().all(|&u| !u) {
            self.meta.remove(&s);
            self.meta_open.remove(&s);
            self.free_slot(s);
            Some(self.offset(s))
        } else {
            self.meta_open.insert(s);
            None
        }
    }

    pub(crate) fn data_slots(&self) -> u64 {
        self.data_slots
    }

    pub(crate) fn node_blocks(&self) -> u64 {
        self.node_blocks
    }

    /// Bytes from the start of the file to the end of the last used slot.
    pub(crate) fn file_len(&self) -> u64 {
        self.offset(self.nslots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn alloc_reuses_freed_slots_and_nodes_share_a_slot() {
        let mut a = Alloc::new(16, 0);
        let s0 = a.alloc_data();
        let s1 = a.alloc_data();
        assert_eq!((s0, s1), (0, 1));
        assert_eq!(
            a.block(s0),
            DATA_START.div_ceil(1 << 16) * (1 << 16) / BLOCK
        );
        let n0 = a.alloc_node();
        let n1 = a.alloc_node();
        assert_eq!(n1, n0 + 1, "16 nodes per 64 KiB slot");
        a.free_data(a.block(s0));
        assert_eq!(a.alloc_data(), 0);
        assert!(a.free_node(n0).is_none());
        assert!(a.free_node(n1).is_some());
        assert_eq!(a.data_slots(), 2);
        assert_eq!(a.node_blocks(), 0);
    }

    #[test]
    fn maps_serialize_and_load_back() {
        let store = MemStore::new();
        let clusters = 64 * 64 * 3;
        let mut map = Map::new(crate::format::depth_for(clusters), clusters);
        let mut alloc = Alloc::new(12, 0);
        for c in [0u64, 1, 63, 64, 4095, 4096, clusters - 1] {
            let s = alloc.alloc_data();
            let block = alloc.block(s);
            map.set(
                c,
                Some(Entry::Data {
                    block,
                    gen: 1,
                    nonce: [c as u8; 16],
                    tag: [2; 16],
                }),
            );
        }
        map.set(7, Some(Entry::Zero));
        let mut freed = Vec::new();
        let (nodes, (rb, rh)) = map.serialize(&mut alloc, &mut freed).unwrap();
        assert!(freed.is_empty());
        for (b, bytes) in &nodes {
            store.write_at(bytes, b * BLOCK).unwrap();
        }
        let mut a2 = Alloc::new(12, store.len().unwrap());
        let back = Map::load(&store, map.depth, clusters, rb, &rh, &mut a2).unwrap();
        assert_eq!(
            back.entries().collect::<Vec<_>>(),
            map.entries().collect::<Vec<_>>()
        );
        // Unmapping everything frees every node.
        for (c, _) in map.entries().collect::<Vec<_>>() {
            map.set(c, None);
        }
        let (nodes, root) = map.serialize(&mut alloc, &mut freed).unwrap();
        assert!(nodes.is_empty());
        assert_eq!(root, (0, [0; 32]));
        assert_eq!(freed.len(), back.node_blocks().count());
    }
}
