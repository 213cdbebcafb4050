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

/// A well-formed input: a root over a 1 MiB zero base with an internal node and one leaf
/// right after it (the fuzzer's seed: libFuzzer rarely finds a parseable root by itself).
pub fn seed() -> Vec<u8> {
    seed_with(1 << 20, &[3], 0)
}

/// The seeds written to `fuzz/seeds/overlay_metadata/`: the well-formed image, one with
/// several mapped entries and two generations, and one read-only snapshot.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("one-leaf", seed()),
        ("zeros-and-gens", seed_with(4 << 20, &[0, 1, 7, 63], 1)),
        ("frozen", {
            let mut r = seed_root(1 << 20, 0);
            r.flags = 1;
            image(r, &[5])
        }),
    ]
}

fn seed_root(size: u64, extra_gens: u32) -> Root {
    let mut gens = vec![format::GenRecord {
        id: 1,
        created: 1,
        origin_layer: [1; 16],
        origin_gen: 1,
        wrapped: format::Wrapped([0; format::WRAPPED_LEN]),
    }];
    for g in 0..extra_gens {
        gens.push(format::GenRecord {
            id: 2 + g,
            created: 2 + u64::from(g),
            origin_layer: [1; 16],
            origin_gen: 2 + g,
            wrapped: format::Wrapped([0; format::WRAPPED_LEN]),
        });
    }
    Root {
        flags: 0,
        uuid: [1; 16],
        counter: 3,
        cluster_shift: 12,
        virtual_size: size,
        base_size: size,
        base_tag: [0; 32],
        map_block: 0,
        map_hash: [0; 32],
        map_depth: format::depth_for(size >> 12),
        current_gen: 1 + extra_gens,
        retiring_gen: 0,
        gens,
        lower: vec![],
        inherited: vec![],
    }
}

fn seed_with(size: u64, zero_entries: &[usize], extra_gens: u32) -> Vec<u8> {
    image(seed_root(size, extra_gens), zero_entries)
}

/// The root, a zero MAC (the hook makes it valid), an internal node and one leaf whose
/// `zero_entries` are zero clusters.
fn image(root: Root, zero_entries: &[usize]) -> Vec<u8> {
    use crate::format::{Entry, NodeBody};
    let mut input = root.encode().expect("a valid root encodes");
    input.extend_from_slice(&[0; MAC_LEN]);
    let mut e: Box<[Option<Entry>; 64]> = Box::new([None; 64]);
    for &i in zero_entries {
        e[i] = Some(Entry::Zero);
    }
    let leaf = format::encode_node(0, 0, &NodeBody::Leaf(e));
    let internal = {
        let mut c: format::Children = Box::new([None; 64]);
        c[0] = Some((DATA_START / BLOCK + 1, [1; 32]));
        format::encode_node(1, 0, &NodeBody::Internal(c))
    };
    input.extend_from_slice(&internal);
    input.extend_from_slice(&leaf);
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_fuzz_hook_opens_a_well_formed_image_and_survives_garbage() {
        assert!(!metadata(&[]));
        assert!(!metadata(&[0xFF; 5000]));
        assert!(metadata(&seed()), "the well-formed image opens");
        for (name, bytes) in seeds() {
            assert!(metadata(&bytes), "seed {name} opens");
        }
    }

    /// `fuzz/seeds/overlay_metadata/` holds what `seeds()` makes: when the format changes,
    /// this says to write them again (`cargo test -p sealvol-overlay -- --ignored
    /// write_fuzz_seeds`), so the fuzzer keeps starting from images that open.
    #[test]
    fn the_committed_fuzz_seeds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds/overlay_metadata");
        for (name, bytes) in seeds() {
            let on_disk = std::fs::read(dir.join(name)).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "fuzz/seeds/overlay_metadata/{name} is stale: run cargo test -p sealvol-overlay -- --ignored write_fuzz_seeds"
            );
        }
    }

    #[test]
    #[ignore = "writes fuzz/seeds/overlay_metadata/ (run by hand after a format change)"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds/overlay_metadata");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
