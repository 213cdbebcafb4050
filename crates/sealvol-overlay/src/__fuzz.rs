//! Fuzzing hooks (not API): the metadata parser and the open path on hostile metadata.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sealvol_block::BlockDevice;
use sealvol_crypto::SecretBytes;

use crate::format::{self, Root, BLOCK, DATA_START, MAC_LEN, ROOT_SLOTS};
use crate::keys::LayerKeys;
use crate::map::sha256;
use crate::store::Store;
use crate::{OpenOptions, OverlayDevice};

/// A sparse store: 4 KiB blocks in a map, zeros elsewhere.
#[derive(Default)]
struct Sparse {
    blocks: Mutex<BTreeMap<u64, Vec<u8>>>,
    len: Mutex<u64>,
}

impl Store for Sparse {
    fn len(&self) -> std::io::Result<u64> {
        Ok(*self.len.lock().unwrap())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > *self.len.lock().unwrap() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        let blocks = self.blocks.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            let pos = offset + i as u64;
            *b = blocks
                .get(&(pos / BLOCK))
                .map_or(0, |blk| blk[(pos % BLOCK) as usize]);
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut blocks = self.blocks.lock().unwrap();
        for (i, &b) in buf.iter().enumerate() {
            let pos = offset + i as u64;
            blocks
                .entry(pos / BLOCK)
                .or_insert_with(|| vec![0; BLOCK as usize])[(pos % BLOCK) as usize] = b;
        }
        let mut len = self.len.lock().unwrap();
        *len = (*len).max(offset + buf.len() as u64);
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// A base of zeros of any size.
struct Zeros(u64);

impl BlockDevice for Zeros {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> sealvol_block::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> sealvol_block::Result<()> {
        Ok(())
    }
    fn flush(&self) -> sealvol_block::Result<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> sealvol_block::Result<()> {
        Ok(())
    }
}

/// Parses `data` as a root slot and as a map node (must never panic), then, when it
/// parses as a root, opens an overlay whose root is that one — authenticated with a fixed
/// key, its master keys rewrapped, its map root pointing at the input's remaining bytes
/// (4 KiB nodes, child hashes fixed up) — and reads from it and writes to it. Returns
/// whether it opened.
pub fn metadata(data: &[u8]) -> bool {
    let _ = Root::parse(data);
    if data.len() >= BLOCK as usize {
        let level = data[4] % 4;
        let first = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let _ = format::parse_node(&data[..BLOCK as usize], level, first);
    }
    let Ok((mut root, len)) = Root::parse(data) else {
        return false;
    };
    let lk = SecretBytes::from_slice(&[0x42; 64]);
    let Ok(keys) = LayerKeys::derive(&lk, &root.uuid) else {
        return false;
    };
    let mk = SecretBytes::from_slice(&[0x17; 64]);
    for g in &mut root.gens {
        g.wrapped = keys.wrap_gen(&root.uuid, g.id, &mk).expect("wrap");
    }
    let store = Arc::new(Sparse::default());
    // The input's bytes after the root (and its MAC) are map nodes from DATA_START on.
    let rest = &data[(len + MAC_LEN).min(data.len())..];
    let mut nodes: Vec<Vec<u8>> = rest
        .chunks(BLOCK as usize)
        .take(64)
        .map(|c| {
            let mut b = c.to_vec();
            b.resize(BLOCK as usize, 0);
            b
        })
        .collect();
    let first_block = DATA_START / BLOCK;
    // Fix child hashes bottom up (twice, for children listed after their parents).
    for _ in 0..2 {
        for i in (0..nodes.len()).rev() {
            if nodes[i][4] == 0 || &nodes[i][..4] != format::NODE_MAGIC {
                continue;
            }
            for e in 0..format::FANOUT as usize {
                let o = format::NODE_HEADER_LEN + e * format::INTERNAL_ENTRY_LEN;
                let child = u64::from_le_bytes(nodes[i][o..o + 8].try_into().expect("8 bytes"));
                if let Some(j) = child
                    .checked_sub(first_block)
                    .filter(|&j| (j as usize) < nodes.len())
                {
                    let h = sha256(&nodes[j as usize]);
                    nodes[i][o + 8..o + 40].copy_from_slice(&h);
                }
            }
        }
    }
    if !nodes.is_empty() {
        root.map_block = first_block;
        root.map_hash = sha256(&nodes[0]);
    }
    for (i, n) in nodes.iter().enumerate() {
        store
            .write_at(n, DATA_START + i as u64 * BLOCK)
            .expect("memory");
    }
    let Ok(content) = root.encode() else {
        return false;
    };
    let mut slot = content.clone();
    slot.extend_from_slice(&keys.mac(&content));
    store.write_at(&slot, ROOT_SLOTS[0]).expect("memory");
    store.write_at(&[0; 8], ROOT_SLOTS[1]).expect("memory");
    let base: Arc<dyn BlockDevice> = Arc::new(Zeros(root.base_size));
    let Ok(dev) =
        OverlayDevice::open_with_layer_key(store, &lk, base, &OpenOptions::default(), &mut |_| {
            Err(crate::Error::Invalid(
                "no lower layers while fuzzing".into(),
            ))
        })
    else {
        return false;
    };
    let _ = dev.status();
    let n = dev.size().min(1 << 20) as usize;
    let mut buf = vec![0u8; n];
    let _ = dev.read_at(&mut buf, 0);
    if !dev.read_only() {
        let _ = dev.write_at(&buf[..n.min(10_000)], 0);
        let _ = dev.flush();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, NodeBody};

    #[test]
    fn the_fuzz_hook_opens_a_well_formed_image_and_survives_garbage() {
        assert!(!metadata(&[]));
        assert!(!metadata(&[0xFF; 5000]));
        // A root with one leaf right after it: the hook opens it and reads through it.
        let root = Root {
            flags: 0,
            uuid: [1; 16],
            counter: 3,
            cluster_shift: 12,
            virtual_size: 1 << 20,
            base_size: 1 << 20,
            base_tag: [0; 32],
            map_block: 0,
            map_hash: [0; 32],
            map_depth: format::depth_for(256),
            current_gen: 1,
            retiring_gen: 0,
            gens: vec![format::GenRecord {
                id: 1,
                created: 1,
                origin_layer: [1; 16],
                origin_gen: 1,
                wrapped: format::Wrapped([0; format::WRAPPED_LEN]),
            }],
            lower: vec![],
            inherited: vec![],
        };
        let mut input = root.encode().unwrap();
        input.extend_from_slice(&[0; MAC_LEN]);
        let mut e: Box<[Option<Entry>; 64]> = Box::new([None; 64]);
        e[3] = Some(Entry::Zero);
        let leaf = format::encode_node(0, 0, &NodeBody::Leaf(e));
        let internal = {
            let mut c: format::Children = Box::new([None; 64]);
            c[0] = Some((DATA_START / BLOCK + 1, [1; 32]));
            format::encode_node(1, 0, &NodeBody::Internal(c))
        };
        input.extend_from_slice(&internal);
        input.extend_from_slice(&leaf);
        assert!(metadata(&input), "the well-formed image opens");
    }
}
