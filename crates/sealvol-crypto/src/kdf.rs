//! Password-based key derivation: PBKDF2 and Argon2, and cost benchmarks.
//!
//! The benchmarks follow cryptsetup's approach (`lib/crypto_backend/pbkdf_check.c`): time a
//! short run and scale linearly to the target. Argon2 grows memory first (up to the cap),
//! then passes. They measure this machine, so their results vary from run to run.

use crate::{Error, HashAlg, Result};
use std::time::{Duration, Instant};
use zeroize::Zeroize;

/// Argon2 variant as named by LUKS2 (`"argon2i"`, `"argon2id"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Variant {
    /// Argon2i (data-independent memory access).
    Argon2i,
    /// Argon2id (hybrid; cryptsetup's default for LUKS2).
    Argon2id,
}

impl Argon2Variant {
    /// The name as LUKS2 writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Argon2Variant::Argon2i => "argon2i",
            Argon2Variant::Argon2id => "argon2id",
        }
    }

    fn algorithm(self) -> argon2::Algorithm {
        match self {
            Argon2Variant::Argon2i => argon2::Algorithm::Argon2i,
            Argon2Variant::Argon2id => argon2::Algorithm::Argon2id,
        }
    }
}

/// Minimum PBKDF2 iterations (cryptsetup's floor).
pub const PBKDF2_MIN_ITERATIONS: u32 = 1000;
/// Minimum Argon2 passes chosen by [`benchmark_argon2`] (cryptsetup's floor).
pub const ARGON2_MIN_TIME: u32 = 4;
/// Minimum Argon2 memory in KiB chosen by [`benchmark_argon2`] (cryptsetup's floor).
pub const ARGON2_MIN_MEMORY_KIB: u32 = 32;

/// PBKDF2-HMAC with `alg`, filling `out`.
///
/// # Errors
/// `iterations == 0` or an empty `out`.
pub fn pbkdf2(
    alg: HashAlg,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    out: &mut [u8],
) -> Result<()> {
    if iterations == 0 {
        return Err(Error::KdfParams(
            "PBKDF2 iterations must be at least 1".into(),
        ));
    }
    if out.is_empty() {
        return Err(Error::KdfParams(
            "PBKDF2 output length must be at least 1 byte".into(),
        ));
    }
    match alg {
        HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
        HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
        HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        HashAlg::Ripemd160 => {
            pbkdf2::pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, iterations, out)
        }
        HashAlg::Whirlpool => {
            pbkdf2::pbkdf2_hmac::<whirlpool::Whirlpool>(password, salt, iterations, out)
        }
    }
    Ok(())
}

/// Argon2 (version 0x13) with `time` passes, `memory_kib` KiB and `parallel` lanes, filling
/// `out`. Lanes run on threads (the `argon2` crate's `parallel` feature).
///
/// # Errors
/// Parameters outside Argon2's bounds (RFC 9106 §3.1): `time ≥ 1`, `parallel` in
/// 1..=2^24-1, `memory_kib ≥ 8 * parallel`, salt of at least 8 bytes, output of at least
/// 4 bytes.
pub fn argon2(
    variant: Argon2Variant,
    password: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    parallel: u32,
    out: &mut [u8],
) -> Result<()> {
    let out_len = out.len();
    let bad = |e: argon2::Error| {
        Error::KdfParams(format!(
            "{} with time={time}, memory={memory_kib} KiB, parallel={parallel}, salt {} bytes, \
             output {} bytes: {e}",
            variant.as_str(),
            salt.len(),
            out_len
        ))
    };
    let params = argon2::Params::new(memory_kib, time, parallel, Some(out.len())).map_err(bad)?;
    let ctx = argon2::Argon2::new(variant.algorithm(), argon2::Version::V0x13, params);
    ctx.hash_password_into(password, salt, out).map_err(bad)
}

/// `elapsed` scaled to `target`: `count * target / elapsed`, saturating.
fn scale(count: u64, elapsed: Duration, target: Duration) -> u64 {
    let elapsed = elapsed.as_nanos().max(1);
    let scaled = u128::from(count) * target.as_nanos() / elapsed;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// PBKDF2 iterations that take about `target` on this machine for a `key_len`-byte output,
/// never fewer than 1000 (cryptsetup's minimum).
///
/// Measures a run of 2^14 iterations (doubled until it takes at least 20 ms, at most a few
/// times) and scales linearly. Like cryptsetup, the cost counts every output block: a
/// `key_len` longer than the hash output multiplies the work, so fewer iterations are needed.
pub fn benchmark_pbkdf2(alg: HashAlg, key_len: usize, target: Duration) -> u32 {
    const SALT: [u8; 32] = [0x5a; 32];
    let mut out = vec![0u8; key_len.max(1)];
    let mut iterations: u32 = 1 << 14;
    let mut elapsed;
    loop {
        let start = Instant::now();
        // Fixed, non-secret inputs: the benchmark only measures time.
        let _ = pbkdf2(
            alg,
            b"sealvol benchmark password",
            &SALT,
            iterations,
            &mut out,
        );
        elapsed = start.elapsed();
        if elapsed >= Duration::from_millis(20) || iterations >= 1 << 20 {
            break;
        }
        iterations *= 2;
    }
    out.zeroize();
    let scaled = scale(u64::from(iterations), elapsed, target);
    u32::try_from(scaled)
        .unwrap_or(u32::MAX)
        .max(PBKDF2_MIN_ITERATIONS)
}

/// One timed Argon2 run.
fn time_argon2(variant: Argon2Variant, time: u32, memory_kib: u32, parallel: u32) -> Duration {
    const SALT: [u8; 32] = [0xa5; 32];
    let mut out = [0u8; 32];
    let start = Instant::now();
    let _ = argon2(
        variant,
        b"sealvol benchmark password",
        &SALT,
        time,
        memory_kib,
        parallel,
        &mut out,
    );
    start.elapsed()
}

/// The next `(time, memory)` guess from a measurement, as cryptsetup's `next_argon2_params`:
/// the cost is taken as proportional to `time * memory`. Too slow: lower time first, then
/// memory. Too fast: raise memory first (up to `max_m`), then time.
fn next_argon2_params(
    t: u32,
    m: u32,
    min_m: u32,
    max_m: u32,
    elapsed: Duration,
    target: Duration,
) -> (u32, u32) {
    let (t64, m64) = (u64::from(t), u64::from(m));
    let clamp_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    if elapsed > target {
        let new_t = scale(t64, elapsed, target);
        if new_t < u64::from(ARGON2_MIN_TIME) {
            let new_m = scale(t64 * m64, elapsed, target) / u64::from(ARGON2_MIN_TIME);
            (ARGON2_MIN_TIME, clamp_u32(new_m).max(min_m))
        } else {
            (clamp_u32(new_t), m)
        }
    } else {
        let new_m = scale(m64, elapsed, target);
        if new_m > u64::from(max_m) {
            let new_t = scale(t64 * m64, elapsed, target) / u64::from(max_m);
            (clamp_u32(new_t).max(ARGON2_MIN_TIME), max_m)
        } else {
            (t, clamp_u32(new_m).max(min_m))
        }
    }
}

/// Argon2 cost `(time, memory_kib)` that takes about `target`, as cryptsetup benchmarks it:
/// memory grows up to `max_memory_kib` first, then time (minimum 4 passes, minimum 32 KiB).
///
/// Starting from 4 passes and 32 KiB (raised to `8 * parallel` KiB if needed), memory is
/// multiplied by 4 until one run takes a probe time (a quarter of `target`, between 5 ms and
/// 100 ms) or memory reaches the cap; that measurement is scaled to `target` once and then
/// refined with one confirming run when the target is short. Measuring therefore stays
/// around a quarter of `target` plus one run of at most `target` (and never more than
/// roughly 2 × 100 ms + `target`). A `max_memory_kib` below the minimum is raised to it;
/// `parallel` of 0 counts as 1.
pub fn benchmark_argon2(
    variant: Argon2Variant,
    target: Duration,
    max_memory_kib: u32,
    parallel: u32,
) -> (u32, u32) {
    let parallel = parallel.clamp(1, argon2::Params::MAX_P_COST);
    let min_m = ARGON2_MIN_MEMORY_KIB.max(parallel.saturating_mul(8));
    let max_m = max_memory_kib.max(min_m);
    let probe = (target / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));

    let t = ARGON2_MIN_TIME;
    let mut m = min_m;
    let mut elapsed = time_argon2(variant, t, m, parallel);
    while elapsed < probe && m < max_m {
        m = m.saturating_mul(4).min(max_m);
        elapsed = time_argon2(variant, t, m, parallel);
    }
    let (mut t, mut m) = next_argon2_params(t, m, min_m, max_m, elapsed, target);
    // For short targets one more measurement at the guessed cost is cheap and corrects
    // non-linearity (caches, thread start-up) of the small probe runs.
    if target <= Duration::from_millis(200) {
        let confirm = time_argon2(variant, t, m, parallel);
        (t, m) = next_argon2_params(t, m, min_m, max_m, confirm, target);
    }
    (t.max(ARGON2_MIN_TIME), m.clamp(min_m, max_m))
}

#[cfg(test)]
mod tests;
