//! Device-level throughput of an overlay against `CryptDevice` (plain LUKS2 data,
//! aes-xts-plain64) on the same medium: sequential 1 MiB writes and reads, random 4 KiB
//! writes and reads, and the overlay's metadata per GiB written, for several cluster sizes.
//!
//! ```text
//! cargo run --release -p sealvol-overlay --example overlay_bench -- [--dir DIR] [--size MIB]
//!     [--clusters 4,16,64,256] [--ops N] [--threads T]
//! ```
//! Without `--dir` everything is in memory; with it, the overlay and the LUKS data are files
//! in DIR (page cache: this measures the CPU path, not the disk). Random I/O runs on T
//! threads (default 1), each on its own offsets.

use std::sync::Arc;
use std::time::Instant;

use sealvol_block::{BlockDevice, CryptDevice, FileDevice, FileOptions, MemDevice};
use sealvol_crypto::{SecretBytes, SectorSize};
use sealvol_luks::DataSegment;
use sealvol_overlay::{CreateOptions, MemStore, OverlayDevice, Store};

struct Args {
    dir: Option<std::path::PathBuf>,
    size: u64,
    clusters: Vec<u32>,
    ops: usize,
    threads: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: None,
        size: 256 << 20,
        clusters: vec![4, 16, 64, 256],
        ops: 20_000,
        threads: 1,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--dir" => a.dir = Some(val.into()),
            "--size" => a.size = val.parse::<u64>().expect("--size MIB") << 20,
            "--clusters" => {
                a.clusters = val
                    .split(',')
                    .map(|c| c.parse().expect("KiB list"))
                    .collect()
            }
            "--ops" => a.ops = val.parse().expect("--ops N"),
            "--threads" => a.threads = val.parse().expect("--threads T"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// xorshift: the same offsets for every device.
fn offsets(n: usize, size: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (size / 4096)) * 4096
        })
        .collect()
}

struct Result {
    seq_write: f64,
    seq_read: f64,
    rand_write: f64,
    rand_read: f64,
}

fn mbs(bytes: u64, t: f64) -> f64 {
    bytes as f64 / t / 1e6
}

fn run(dev: Arc<dyn BlockDevice>, a: &Args) -> Result {
    let size = dev.size();
    let chunk = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(chunk.len() as u64) as usize;
        dev.write_at(&chunk[..n], pos).unwrap();
        pos += n as u64;
    }
    dev.flush().unwrap();
    let seq_write = mbs(size, t.elapsed().as_secs_f64());
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        dev.read_at(&mut buf[..n], pos).unwrap();
        pos += n as u64;
    }
    let seq_read = mbs(size, t.elapsed().as_secs_f64());
    let per = a.ops / a.threads;
    let random = |write: bool| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..a.threads {
                let dev = dev.clone();
                s.spawn(move || {
                    let mut b = vec![0xA5u8; 4096];
                    for off in offsets(per, size, 0x1234 + th as u64 * 77 + write as u64) {
                        if write {
                            dev.write_at(&b, off).unwrap();
                        } else {
                            dev.read_at(&mut b, off).unwrap();
                        }
                    }
                });
            }
        });
        if write {
            dev.flush().unwrap();
        }
        (per * a.threads) as f64 / t.elapsed().as_secs_f64()
    };
    let rand_write = random(true);
    let rand_read = random(false);
    Result {
        seq_write,
        seq_read,
        rand_write,
        rand_read,
    }
}

fn print(name: &str, r: &Result, extra: &str) {
    println!(
        "{name:<22} seq write {:>7.0} MB/s  seq read {:>7.0} MB/s  rand 4K write {:>7.0} IOPS  rand 4K read {:>7.0} IOPS  {extra}",
        r.seq_write, r.seq_read, r.rand_write, r.rand_read
    );
}

fn main() {
    let a = args();
    let medium = a
        .dir
        .as_ref()
        .map_or("memory".to_string(), |d| d.display().to_string());
    println!(
        "size {} MiB, {} random ops on {} thread(s), medium: {medium}",
        a.size >> 20,
        a.ops,
        a.threads
    );
    // Plain LUKS2 data: CryptDevice over a file or memory.
    let segment = DataSegment {
        id: 0,
        offset: 0,
        size: None,
        iv_tweak: 0,
        sector_size: SectorSize::S4096,
        cipher: "aes-xts-plain64".into(),
        key_size: 64,
    };
    let key = SecretBytes::random(64).unwrap();
    let crypt: Arc<dyn BlockDevice> = match &a.dir {
        Some(d) => {
            let p = d.join("bench-luks-data");
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(a.size).unwrap();
            drop(f);
            let dev = FileDevice::open(&p, FileOptions::default()).unwrap();
            Arc::new(CryptDevice::new(dev, &segment, &key).unwrap())
        }
        None => {
            Arc::new(CryptDevice::new(MemDevice::new(a.size as usize), &segment, &key).unwrap())
        }
    };
    print("CryptDevice (XTS)", &run(crypt, &a), "");
    if let Some(d) = &a.dir {
        let _ = std::fs::remove_file(d.join("bench-luks-data"));
    }
    let base: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(a.size as usize).into_read_only());
    for kib in &a.clusters {
        let store: Arc<dyn Store> = match &a.dir {
            Some(d) => {
                let p = d.join(format!("bench-overlay-{kib}k"));
                let _ = std::fs::remove_file(&p);
                Arc::new(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&p)
                        .unwrap(),
                )
            }
            None => Arc::new(MemStore::new()),
        };
        let opts = CreateOptions {
            cluster_size: kib << 10,
            ..CreateOptions::default()
        };
        let ov = Arc::new(OverlayDevice::create(store, b"bench key", base.clone(), &opts).unwrap());
        let r = run(ov.clone(), &a);
        let s = ov.status();
        let per_gib = s.metadata_bytes as f64 / (s.data_bytes as f64 / (1u64 << 30) as f64);
        print(
            &format!("overlay {kib} KiB"),
            &r,
            &format!("metadata {:.2} MiB per GiB", per_gib / (1 << 20) as f64),
        );
        if let Some(d) = &a.dir {
            let _ = std::fs::remove_file(d.join(format!("bench-overlay-{kib}k")));
        }
    }
}
