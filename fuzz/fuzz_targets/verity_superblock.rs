//! Fuzzes the dm-verity superblock parser and verification of mutated trees.
//!
//! 1. `Superblock::parse` on the input: any input parses or is an error, never a panic; a
//!    parsed superblock encodes back to exactly the bytes it came from.
//! 2. The first 8 bytes pick tree parameters (algorithm, format, block sizes, data blocks,
//!    salt); a tree is built over data made from the input, then the rest of the input flips
//!    bytes of the data and of the tree. `verify` must report a failure exactly when a
//!    protected byte changed, and `VerityReader` must never return a block that differs from
//!    the original: a verified read is the original data or an error.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sealvol_verity::{
    format, verify, HashAlgorithm, HashArea, HashType, Params, Salt, Superblock, VerityReader,
};

fuzz_target!(|input: &[u8]| {
    if let Ok(sb) = Superblock::parse(input) {
        assert_eq!(&sb.encode()[..], &input[..512], "superblock round trip");
    }

    let Some((ctrl, rest)) = input.split_first_chunk::<8>() else {
        return;
    };
    let alg = HashAlgorithm::ALL[usize::from(ctrl[0]) % 4];
    let hash_type = if ctrl[1] & 1 == 0 {
        HashType::Normal
    } else {
        HashType::ChromeOs
    };
    let dbs = 512u32 << (ctrl[2] % 4);
    let hbs = 512u32 << (ctrl[3] % 4);
    let blocks = 1 + u64::from(ctrl[4]) % 64;
    let salt_len = (usize::from(ctrl[5]) % 33).min(rest.len());
    let (salt, rest) = rest.split_at(salt_len);
    let params = Params::new(
        hash_type,
        alg,
        dbs,
        hbs,
        blocks,
        Salt::new(salt.to_vec()).unwrap(),
    )
    .expect("parameters in range");
    let area = HashArea::with_superblock(512 * u64::from(ctrl[6] % 4));

    let len = params.data_size() as usize;
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8)
        .collect();
    let mut hash = Cursor::new(Vec::new());
    let tree = format(&data, &mut hash, &params, area, None, &mut |_| {}).expect("format");
    let original_hash = hash.into_inner();
    let tree_at = area.tree_offset(hbs) as usize;

    let mut data2 = data.clone();
    let mut hash2 = original_hash.clone();
    for m in rest.chunks_exact(4) {
        let pos = u32::from_le_bytes([m[0], m[1], m[2], m[3] & 0x7f]) as usize;
        let xor = m[3] | 1;
        if m[3] & 0x80 == 0 {
            data2[pos % len] ^= xor;
        } else if hash2.len() > tree_at {
            let at = tree_at + pos % (hash2.len() - tree_at);
            hash2[at] ^= xor;
        }
    }
    let changed = data2 != data || hash2[tree_at..] != original_hash[tree_at..];

    let report = verify(
        &data2,
        &mut Cursor::new(&hash2),
        &params,
        area,
        tree.root(),
        true,
        &mut |_| {},
    )
    .expect("verify runs");
    assert_eq!(
        report.is_ok(),
        !changed,
        "verify must fail exactly on changes: {report:?}"
    );

    let mut reader = VerityReader::new(
        Cursor::new(&data2),
        Cursor::new(&hash2),
        params,
        area,
        tree.root(),
    )
    .expect("reader");
    let mut buf = vec![0u8; dbs as usize];
    for i in 0..blocks {
        if reader.read_block(i, &mut buf).is_ok() {
            let at = (i * u64::from(dbs)) as usize;
            assert!(
                buf[..] == data[at..at + dbs as usize],
                "verified read of block {i} returned changed bytes"
            );
        }
    }
});
