//! Property tests against a small, independent reference: a literal reading of verity.rst
//! ("each level is the digests of the level below, packed into hash blocks, until one block
//! remains; levels are stored top first"), written without the crate's geometry code. Random
//! sizes, block sizes, algorithms, formats and salts; then corruption anywhere must be found
//! at exactly the block that holds it.

use std::io::Cursor;

use proptest::prelude::*;
use sealvol_verity::{
    format, verify, Error, Failure, HashAlgorithm, HashArea, HashTree, HashType, Params, Salt,
    Superblock, Uuid, VerityReader,
};
use sha2::Digest;

fn h(alg: HashAlgorithm, parts: &[&[u8]]) -> Vec<u8> {
    fn go<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match alg {
        HashAlgorithm::Sha1 => go::<sha1::Sha1>(parts),
        HashAlgorithm::Sha256 => go::<sha2::Sha256>(parts),
        HashAlgorithm::Sha384 => go::<sha2::Sha384>(parts),
        HashAlgorithm::Sha512 => go::<sha2::Sha512>(parts),
    }
}

struct Ref {
    /// Levels bottom-up, each a list of hash blocks.
    levels: Vec<Vec<Vec<u8>>>,
    root: Vec<u8>,
}

/// The reference tree.
fn reference(
    data: &[u8],
    ht: HashType,
    alg: HashAlgorithm,
    dbs: usize,
    hbs: usize,
    salt: &[u8],
) -> Ref {
    let salted = |block: &[u8]| match ht {
        HashType::Normal => h(alg, &[salt, block]),
        HashType::ChromeOs => h(alg, &[block, salt]),
    };
    let ds = alg.digest_size();
    // Largest power of two not above hbs / ds.
    let mut per_block = 1;
    while per_block * 2 <= hbs / ds {
        per_block *= 2;
    }
    let stride = match ht {
        HashType::Normal => {
            let mut s = 1;
            while s < ds {
                s *= 2;
            }
            s
        }
        HashType::ChromeOs => ds,
    };
    let mut units: Vec<Vec<u8>> = data.chunks(dbs).map(|c| c.to_vec()).collect();
    let mut levels = Vec::new();
    if units.len() == 1 {
        return Ref {
            levels,
            root: salted(&units[0]),
        };
    }
    loop {
        let digests: Vec<Vec<u8>> = units.iter().map(|u| salted(u)).collect();
        let blocks: Vec<Vec<u8>> = digests
            .chunks(per_block)
            .map(|group| {
                let mut b = vec![0u8; hbs];
                for (i, d) in group.iter().enumerate() {
                    b[i * stride..i * stride + ds].copy_from_slice(d);
                }
                b
            })
            .collect();
        levels.push(blocks.clone());
        if blocks.len() == 1 {
            let root = salted(&blocks[0]);
            return Ref { levels, root };
        }
        units = blocks;
    }
}

impl Ref {
    /// Tree bytes as stored: top level first.
    fn bytes(&self) -> Vec<u8> {
        self.levels
            .iter()
            .rev()
            .flatten()
            .flatten()
            .copied()
            .collect()
    }

    /// (level, index) of the hash block holding byte `at` of the tree bytes.
    fn block_at(&self, at: usize, hbs: usize) -> (u32, u64) {
        let mut block = at / hbs;
        for (level, blocks) in self.levels.iter().enumerate().rev() {
            if block < blocks.len() {
                return (level as u32, block as u64);
            }
            block -= blocks.len();
        }
        unreachable!("byte {at} is past the tree")
    }
}

fn arb_case() -> impl Strategy<Value = (Params, Vec<u8>)> {
    (
        prop::sample::select(HashAlgorithm::ALL.to_vec()),
        prop::bool::ANY,
        prop::sample::select(vec![512u32, 1024, 2048, 4096]),
        prop::sample::select(vec![512u32, 1024, 4096]),
        1u64..400,
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..80),
            1 => prop::collection::vec(any::<u8>(), 256..=256),
        ],
        0usize..600,
        any::<u64>(),
    )
        .prop_map(|(alg, v1, dbs, hbs, blocks, salt, extra, seed)| {
            let ht = if v1 {
                HashType::Normal
            } else {
                HashType::ChromeOs
            };
            let params = Params::new(ht, alg, dbs, hbs, blocks, Salt::new(salt).unwrap()).unwrap();
            let len = blocks as usize * dbs as usize + extra;
            let mut x = seed | 1;
            let data = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (params, data)
        })
}

fn reference_of(p: &Params, data: &[u8]) -> Ref {
    reference(
        &data[..p.data_size() as usize],
        p.hash_type(),
        p.algorithm(),
        p.data_block_size() as usize,
        p.hash_block_size() as usize,
        p.salt().as_bytes(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tree_equals_reference((params, data) in arb_case()) {
        let r = reference_of(&params, &data);
        let tree = HashTree::build(&data, &params, &mut |_| {}).unwrap();
        prop_assert_eq!(hex::encode(tree.root()), hex::encode(&r.root));
        prop_assert!(tree.bytes() == r.bytes().as_slice());
        prop_assert_eq!(params.geometry().hash_blocks as usize, r.levels.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn superblock_round_trips((params, _data) in arb_case(), uuid in any::<[u8; 16]>()) {
        let sb = Superblock { uuid: Uuid(uuid), params };
        prop_assert_eq!(Superblock::parse(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn corruption_is_found_where_it_is(
        (params, data) in arb_case(),
        in_data in prop::bool::ANY,
        pick in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let r = reference_of(&params, &data);
        let area = HashArea::with_superblock(0);
        let mut hash = Cursor::new(Vec::new());
        let tree = format(&data, &mut hash, &params, area, None, &mut |_| {}).unwrap();
        let mut hash = hash.into_inner();
        let mut data = data;
        let tree_at = area.tree_offset(params.hash_block_size()) as usize;
        let tree_len = tree.bytes().len();
        let dbs = u64::from(params.data_block_size());
        let hbs = params.hash_block_size() as usize;

        let expected = if in_data || tree_len == 0 {
            let at = pick.index(params.data_size() as usize);
            data[at] ^= xor;
            let index = at as u64 / dbs;
            Failure::DataBlock { index, offset: index * dbs }
        } else {
            let at = pick.index(tree_len);
            hash[tree_at + at] ^= xor;
            let (level, index) = r.block_at(at, hbs);
            Failure::HashBlock {
                level,
                index,
                offset: (tree_at + at / hbs * hbs) as u64,
                top: level as usize == r.levels.len() - 1,
            }
        };
        let report = verify(&data, &mut Cursor::new(&hash), &params, area, tree.root(), true, &mut |_| {}).unwrap();
        prop_assert_eq!(&report.failures, &vec![expected]);

        // The reader fails on the blocks under the corruption only.
        let mut reader = VerityReader::new(Cursor::new(&data), Cursor::new(&hash), params.clone(), area, tree.root()).unwrap();
        let mut buf = vec![0u8; dbs as usize];
        let hpb = params.hashes_per_block();
        for i in 0..params.data_blocks() {
            let res = reader.read_block(i, &mut buf);
            let bad = match expected {
                Failure::DataBlock { index, .. } => i == index,
                Failure::HashBlock { level, index, .. } => i / hpb.pow(level + 1) == index,
            };
            match (bad, res) {
                (false, Ok(())) => prop_assert!(buf[..] == data[(i * dbs) as usize..((i + 1) * dbs) as usize]),
                (true, Err(Error::DataBlockCorrupt { index, offset })) => {
                    prop_assert_eq!((index, offset), (i, i * dbs));
                }
                (true, Err(Error::HashBlockCorrupt { level, index, .. })) => {
                    let same = matches!(expected, Failure::HashBlock { level: l, index: x, .. } if l == level && x == index);
                    prop_assert!(same, "hash block {}/{} reported for data block {}", level, index, i);
                }
                (bad, res) => prop_assert!(false, "block {i}: bad={bad}, got {res:?}"),
            }
        }
    }
}
