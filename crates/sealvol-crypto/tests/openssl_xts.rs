//! Cross-check of sealvol's AES-XTS against the real `openssl` binary.
//!
//! OpenSSL 3.0's `enc` command refuses XTS ("enc XTS ciphers not supported"), so this test
//! composes XTS from `openssl enc -aes-256-ecb -nopad`: the tweak is `E_K2(plain64(IV))`
//! computed by openssl, the GF(2^128) doubling is written here byte by byte (IEEE 1619
//! §5.2), and every data block goes through openssl's AES with K1. If `openssl` is missing
//! the test fails: it must not pass silently.

use sealvol_crypto::{Backend, SecretBytes, SectorSize, XtsCipher};
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `openssl enc -aes-256-ecb -nopad [-d] -K key` over `input`.
fn openssl_ecb(key: &[u8], input: &[u8], decrypt: bool) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.args(["enc", "-aes-256-ecb", "-nopad", "-K", &hex::encode(key)]);
    if decrypt {
        cmd.arg("-d");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the `openssl` binary must be installed for this test (it is the oracle)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len());
    out.stdout
}

/// Multiplies a 16-byte tweak by α, byte-wise (IEEE 1619 §5.2).
fn double(t: &mut [u8; 16]) {
    let mut carry = 0u8;
    for b in t.iter_mut() {
        let next = *b >> 7;
        *b = (*b << 1) | carry;
        carry = next;
    }
    if carry != 0 {
        t[0] ^= 0x87;
    }
}

/// XTS over one data unit with openssl's AES-ECB as the block cipher.
fn openssl_xts_unit(key: &[u8; 64], iv: u64, data: &[u8], decrypt: bool) -> Vec<u8> {
    let (k1, k2) = key.split_at(32);
    let mut iv_block = [0u8; 16];
    iv_block[..8].copy_from_slice(&iv.to_le_bytes());
    let mut t: [u8; 16] = openssl_ecb(k2, &iv_block, false).try_into().unwrap();
    let mut tweaks = Vec::new();
    let mut pre = Vec::with_capacity(data.len());
    for block in data.chunks(16) {
        tweaks.push(t);
        pre.extend(block.iter().zip(t.iter()).map(|(a, b)| a ^ b));
        double(&mut t);
    }
    let mid = openssl_ecb(k1, &pre, decrypt);
    mid.chunks(16)
        .zip(tweaks.iter())
        .flat_map(|(b, t)| b.iter().zip(t.iter()).map(|(a, b)| a ^ b))
        .collect()
}

fn random(n: usize) -> Vec<u8> {
    let s = SecretBytes::random(n).unwrap();
    s.expose().to_vec()
}

#[test]
fn one_4096_byte_sector_at_iv_5_matches_openssl() {
    let key: [u8; 64] = random(64).try_into().unwrap();
    let pt = random(4096);
    let want = openssl_xts_unit(&key, 5, &pt, false);
    let mut backends = vec![Backend::RustCrypto];
    if Backend::AwsLc.is_available() {
        backends.push(Backend::AwsLc);
    }
    for backend in backends {
        let mut c = XtsCipher::with_backend(&SecretBytes::from_slice(&key), backend).unwrap();
        let mut buf = pt.clone();
        c.encrypt_sectors(&mut buf, SectorSize::S4096, 5).unwrap();
        assert_eq!(buf, want, "{backend:?}");
        assert_eq!(
            openssl_xts_unit(&key, 5, &buf, true),
            pt,
            "openssl decrypts {backend:?}"
        );
    }
}

#[test]
fn sector_by_sector_matches_openssl() {
    // Three 4096-byte sectors from first_iv 5: IVs 5, 13, 21 (8 units per sector), and two
    // 512-byte sectors at a large IV.
    let key: [u8; 64] = random(64).try_into().unwrap();
    let mut c = XtsCipher::new(&SecretBytes::from_slice(&key)).unwrap();
    let pt = random(3 * 4096);
    let mut buf = pt.clone();
    c.encrypt_sectors(&mut buf, SectorSize::S4096, 5).unwrap();
    for (i, (ct, p)) in buf.chunks(4096).zip(pt.chunks(4096)).enumerate() {
        assert_eq!(
            ct,
            openssl_xts_unit(&key, 5 + 8 * i as u64, p, false),
            "sector {i}"
        );
    }
    let first = 0x0123_4567_89ab_cdef_u64;
    let pt = random(1024);
    let mut buf = pt.clone();
    c.encrypt_sectors(&mut buf, SectorSize::S512, first)
        .unwrap();
    for (i, (ct, p)) in buf.chunks(512).zip(pt.chunks(512)).enumerate() {
        assert_eq!(
            ct,
            openssl_xts_unit(&key, first + i as u64, p, false),
            "512-byte sector {i}"
        );
    }
}
