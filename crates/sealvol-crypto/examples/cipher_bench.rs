//! Single-thread throughput of every sector cipher sealvol implements.
//!
//! ```text
//! cargo run --release -p sealvol-crypto --example cipher_bench [-- FILTER]
//! ```
//!
//! Prints `spec  key-bits  backend  encrypt MB/s  decrypt MB/s` rows (MB = 10^6 bytes; best
//! single pass over a 16 MiB buffer of 4096-byte sectors during at least 0.6 s each). With
//! a FILTER argument only rows whose spec contains it run. The `rustcrypto` rows are the AES
//! modes without aws-lc, for the comparison that chose aws-lc for AES-CBC.

use sealvol_crypto::{AesBackend, CipherSpec, SecretBytes, SectorCipher, SectorSize};
use std::time::{Duration, Instant};

const BUF: usize = 16 << 20;
const MIN_TIME: Duration = Duration::from_millis(600);

/// Best single-pass throughput of `f` over `buf` in MB/s.
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
    buf.len() as f64 / best.as_secs_f64() / 1e6
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let mut buf = vec![0u8; BUF];
    getrandom::fill(&mut buf).expect("system RNG");
    let rows: &[(&str, usize, AesBackend)] = &[
        ("aes-xts-plain64", 64, AesBackend::Fastest),
        ("aes-xts-plain64", 64, AesBackend::RustCrypto),
        ("aes-xts-plain64", 48, AesBackend::Fastest),
        ("aes-xts-plain64", 32, AesBackend::Fastest),
        ("aes-xts-plain", 64, AesBackend::Fastest),
        ("aes-cbc-essiv:sha256", 32, AesBackend::Fastest),
        ("aes-cbc-essiv:sha256", 32, AesBackend::RustCrypto),
        ("aes-cbc-plain64", 32, AesBackend::Fastest),
        ("aes-cbc-plain64", 32, AesBackend::RustCrypto),
        ("aes-cbc-plain64", 16, AesBackend::Fastest),
        ("aes-cbc-plain64", 16, AesBackend::RustCrypto),
        ("serpent-xts-plain64", 64, AesBackend::Fastest),
        ("serpent-cbc-essiv:sha256", 32, AesBackend::Fastest),
        ("twofish-xts-plain64", 64, AesBackend::Fastest),
        ("twofish-cbc-essiv:sha256", 32, AesBackend::Fastest),
        ("xchacha12,aes-adiantum-plain64", 32, AesBackend::Fastest),
        ("xchacha20,aes-adiantum-plain64", 32, AesBackend::Fastest),
    ];
    println!(
        "{:<32} {:>4} {:<10} {:>12} {:>12}",
        "spec", "bits", "backend", "encrypt MB/s", "decrypt MB/s"
    );
    for &(name, key_len, backend) in rows {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let spec = CipherSpec::parse(name, key_len).expect("a supported spec");
        let key = SecretBytes::random(key_len).expect("system RNG");
        let mut c = SectorCipher::with_backend(&spec, &key, backend).expect("cipher");
        let enc = measure(&mut buf, |b| {
            c.encrypt_sectors(b, SectorSize::S4096, 0).unwrap()
        });
        let dec = measure(&mut buf, |b| {
            c.decrypt_sectors(b, SectorSize::S4096, 0).unwrap()
        });
        let backend = match backend {
            AesBackend::Fastest if name.starts_with("aes") => "aws-lc",
            AesBackend::Fastest => "rustcrypto",
            AesBackend::RustCrypto => "rustcrypto",
        };
        let backend = if name.starts_with("aes-xts") && key_len != 64 {
            "rustcrypto"
        } else {
            backend
        };
        println!(
            "{name:<32} {:>4} {backend:<10} {enc:>12.0} {dec:>12.0}",
            key_len * 8
        );
    }
}
