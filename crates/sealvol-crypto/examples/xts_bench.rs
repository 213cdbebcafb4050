//! Single-thread (and two-thread) AES-256-XTS throughput.
//!
//! ```text
//! cargo run --release -p sealvol-crypto --example xts_bench [-- FILTER [BUF_KIB]]
//! ```
//!
//! Prints `name  GB/s` lines (GB = 10^9 bytes, best single pass over a 64 MiB buffer during
//! at least 1.5 s) and the ratio of `XtsCipher` to the raw aws-lc EVP loop it wraps. With a
//! FILTER argument only rows whose name contains it run (handy under `perf record`).

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use sealvol_crypto::{Backend, ParallelXts, SecretBytes, SectorSize, XtsCipher};
use std::time::{Duration, Instant};

const BUF: usize = 64 << 20;
const MIN_TIME: Duration = Duration::from_millis(1500);

/// Runs `f` over the buffer repeatedly for at least `MIN_TIME` (after one warm-up pass) and
/// returns the best single-pass throughput in GB/s.
fn measure(buf: &mut [u8], mut f: impl FnMut(&mut [u8])) -> f64 {
    f(buf);
    let mut best = Duration::MAX;
    let start = Instant::now();
    let mut passes = 0;
    while start.elapsed() < MIN_TIME || passes < 3 {
        let t = Instant::now();
        f(buf);
        best = best.min(t.elapsed());
        passes += 1;
    }
    buf.len() as f64 / best.as_secs_f64() / 1e9
}

type Case<'a> = (&'static str, Box<dyn FnMut(&mut [u8]) + 'a>);

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let key = SecretBytes::random(64).expect("system RNG");
    // Optional second argument: buffer size in KiB (default 64 MiB).
    let len = std::env::args()
        .nth(2)
        .and_then(|k| k.parse::<usize>().ok())
        .map_or(BUF, |k| k << 10);
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf).expect("system RNG");

    let raw_key: [u8; 64] = key.expose().try_into().unwrap();
    let have_awslc = Backend::AwsLc.is_available();
    let aws = || XtsCipher::with_backend(&key, Backend::AwsLc).unwrap();
    let rc = || XtsCipher::with_backend(&key, Backend::RustCrypto).unwrap();
    let ecb = aes::Aes256::new_from_slice(&key.expose()[..32]).unwrap();

    let mut cases: Vec<Case> = Vec::new();
    if have_awslc {
        #[cfg(feature = "aws-lc")]
        cases.push((
            "aws-lc EVP primitive, 4096-byte sectors",
            Box::new(move |b| {
                assert!(sealvol_crypto::__bench::raw_awslc_xts256_encrypt(
                    &raw_key, b, 4096, 0
                ))
            }),
        ));
        let mut c = aws();
        cases.push((
            "XtsCipher aws-lc, 4096-byte sectors",
            Box::new(move |b| c.encrypt_sectors(b, SectorSize::S4096, 0).unwrap()),
        ));
        let mut c = aws();
        cases.push((
            "XtsCipher aws-lc decrypt, 4096",
            Box::new(move |b| c.decrypt_sectors(b, SectorSize::S4096, 0).unwrap()),
        ));
        let mut c = aws();
        cases.push((
            "XtsCipher aws-lc, 512-byte sectors",
            Box::new(move |b| c.encrypt_sectors(b, SectorSize::S512, 0).unwrap()),
        ));
    } else {
        let _ = raw_key;
        println!("aws-lc backend not built: skipping its rows");
    }
    let mut c = rc();
    cases.push((
        "XtsCipher RustCrypto, 4096-byte sectors",
        Box::new(move |b| c.encrypt_sectors(b, SectorSize::S4096, 0).unwrap()),
    ));
    let mut c = rc();
    cases.push((
        "XtsCipher RustCrypto decrypt, 4096",
        Box::new(move |b| c.decrypt_sectors(b, SectorSize::S4096, 0).unwrap()),
    ));
    let mut c = rc();
    cases.push((
        "XtsCipher RustCrypto, 512-byte sectors",
        Box::new(move |b| c.encrypt_sectors(b, SectorSize::S512, 0).unwrap()),
    ));
    cases.push((
        "aes crate ECB (RustCrypto ceiling)",
        Box::new(move |b| ecb.encrypt_blocks(aes::Block::slice_as_chunks_mut(b).0)),
    ));
    let backend = if have_awslc {
        Backend::AwsLc
    } else {
        Backend::RustCrypto
    };
    let mut p = ParallelXts::new(&key, backend, 2).unwrap();
    cases.push((
        "ParallelXts 2 threads, 4096-byte sectors",
        Box::new(move |b| p.encrypt_sectors(b, SectorSize::S4096, 0).unwrap()),
    ));

    let mut results = Vec::new();
    for (name, f) in cases.iter_mut() {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let gbps = measure(&mut buf, f);
        println!("{name:<42} {gbps:6.2} GB/s");
        results.push((*name, gbps));
    }
    let get = |n: &str| results.iter().find(|(name, _)| *name == n).map(|r| r.1);
    if let (Some(x), Some(raw)) = (
        get("XtsCipher aws-lc, 4096-byte sectors"),
        get("aws-lc EVP primitive, 4096-byte sectors"),
    ) {
        println!("{:<42} {:6.3}", "ratio XtsCipher / primitive", x / raw);
    }
}
