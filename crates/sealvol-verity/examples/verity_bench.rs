//! Tree-building throughput: salted SHA-256 of 4 KiB blocks on one core (the ceiling per
//! core), then `HashTree::build` on every core from memory and from a file.
//!
//! `cargo run --release -p sealvol-verity --example verity_bench [MIB] [FILE]`
//! (FILE defaults to a scratch file in /dev/shm; it is written, read, then removed.)
use std::time::Instant;

use sealvol_verity::{block_digest, HashAlgorithm, HashTree, HashType, Params, Salt};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let path = args
        .next()
        .unwrap_or_else(|| format!("/dev/shm/verity-bench-{}", std::process::id()));
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write scratch file");
    let file = std::fs::File::open(&path).expect("open scratch file");
    let blocks = (data.len() / 4096) as u64;
    let params = Params::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        4096,
        4096,
        blocks,
        Salt::from_hex(&"ab".repeat(32)).unwrap(),
    )
    .unwrap();
    let gb = data.len() as f64 / 1e9;
    let report = |what: &str, t: Instant| {
        let s = t.elapsed().as_secs_f64();
        println!("{what:<32} {s:.3} s  {:.2} GB/s", gb / s);
    };
    for _ in 0..3 {
        let t = Instant::now();
        let mut x = 0u8;
        for b in data.chunks_exact(4096) {
            x ^= block_digest(&params, b)[0];
        }
        report("one core, block by block", t);
        std::hint::black_box(x);
        let t = Instant::now();
        let a = HashTree::build(&data, &params, &mut |_| {}).unwrap();
        report("HashTree::build, memory", t);
        let t = Instant::now();
        let b = HashTree::build(&file, &params, &mut |_| {}).unwrap();
        report("HashTree::build, file (pread)", t);
        assert_eq!(a.root(), b.root());
    }
    let _ = std::fs::remove_file(&path);
}
