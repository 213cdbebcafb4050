//! Password-based key derivation: PBKDF2 and Argon2, and cost benchmarks.

use crate::{HashAlg, Result};
use std::time::Duration;

/// Argon2 variant as named by LUKS2 (`"argon2i"`, `"argon2id"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Variant {
    Argon2i,
    Argon2id,
}

/// PBKDF2-HMAC with `alg`, filling `out`.
///
/// # Errors
/// `iterations == 0` or an empty `out`.
pub fn pbkdf2(alg: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) -> Result<()> {
    let _ = (alg, password, salt, iterations, out);
    todo!()
}

/// Argon2 (version 0x13) with `time` passes, `memory_kib` KiB and `parallel` lanes, filling
/// `out`. Lanes run on threads (the `argon2` crate's `parallel` feature).
///
/// # Errors
/// Parameters outside Argon2's bounds.
pub fn argon2(
    variant: Argon2Variant,
    password: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    parallel: u32,
    out: &mut [u8],
) -> Result<()> {
    let _ = (variant, password, salt, time, memory_kib, parallel, out);
    todo!()
}

/// PBKDF2 iterations that take about `target` on this machine for a `key_len`-byte output,
/// never fewer than 1000 (cryptsetup's minimum).
pub fn benchmark_pbkdf2(alg: HashAlg, key_len: usize, target: Duration) -> u32 {
    let _ = (alg, key_len, target);
    todo!()
}

/// Argon2 cost `(time, memory_kib)` that takes about `target`, as cryptsetup benchmarks it:
/// memory grows up to `max_memory_kib` first, then time (minimum 4 passes, minimum 32 KiB).
pub fn benchmark_argon2(variant: Argon2Variant, target: Duration, max_memory_kib: u32, parallel: u32) -> (u32, u32) {
    let _ = (variant, target, max_memory_kib, parallel);
    todo!()
}
