//! Limits on the work an untrusted header may ask of an unlock.
//!
//! A LUKS header names the cost of its own key derivation: PBKDF2 iterations, Argon2 passes,
//! memory and lanes. The host that stores the header may be the attacker, and cryptsetup's own
//! bounds (up to 2^32 - 1 iterations or passes, 4 GiB of memory) let one header make every
//! unlock run for hours or take the host's memory. [`KdfLimits`] bounds that: every keyslot an
//! unlock would try, and the digest that checks the candidate key, are checked against it
//! before any derivation starts, and a header over the limit is refused with
//! [`Error::KdfOverLimit`](crate::Error::KdfOverLimit) naming the object, what it asked for
//! and the limit.
//!
//! The defaults accept what cryptsetup writes with its defaults on any machine (Argon2id of
//! at most 1 GiB for about 2 s, PBKDF2 for about 2 s, digests for 125 ms), and more than 10×
//! that in time. A header made with larger explicit costs needs a raised limit.

use crate::{Error, Result};

/// Default [`KdfLimits::max_memory_kib`]: 1 GiB, cryptsetup's default Argon2 memory cap.
pub const DEFAULT_MAX_MEMORY_KIB: u32 = 1 << 20;
/// Default [`KdfLimits::max_pbkdf2_iterations`]: 2^26 (about 67 million).
pub const DEFAULT_MAX_PBKDF2_ITERATIONS: u32 = 1 << 26;
/// Default [`KdfLimits::max_argon2_passes`]: 64 passes over the maximum memory.
pub const DEFAULT_MAX_ARGON2_PASSES: u32 = 64;

/// The most one key derivation named by a header may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    /// Most Argon2 memory, in KiB.
    pub max_memory_kib: u32,
    /// Most PBKDF2 iterations (keyslots and digests).
    pub max_pbkdf2_iterations: u32,
    /// Most Argon2 work, counted in passes over [`KdfLimits::max_memory_kib`]: a header may
    /// ask for more passes over less memory, as long as passes × memory stays within
    /// `max_argon2_passes × max_memory_kib`.
    pub max_argon2_passes: u32,
}

impl Default for KdfLimits {
    fn default() -> Self {
        KdfLimits {
            max_memory_kib: DEFAULT_MAX_MEMORY_KIB,
            max_pbkdf2_iterations: DEFAULT_MAX_PBKDF2_ITERATIONS,
            max_argon2_passes: DEFAULT_MAX_ARGON2_PASSES,
        }
    }
}

/// The cost of one key derivation as a header names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfCost {
    /// PBKDF2 with this many iterations.
    Pbkdf2 {
        /// Iterations.
        iterations: u32,
    },
    /// Argon2 with `time` passes over `memory_kib` KiB.
    Argon2 {
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory_kib: u32,
    },
}

impl KdfLimits {
    /// No limit beyond the format's own (for headers the caller trusts, e.g. one it just
    /// wrote).
    pub fn unlimited() -> Self {
        KdfLimits {
            max_memory_kib: u32::MAX,
            max_pbkdf2_iterations: u32::MAX,
            max_argon2_passes: u32::MAX,
        }
    }

    /// Checks the cost `cost` that `object` (e.g. "keyslot 3") asks for.
    ///
    /// # Errors
    /// [`Error::KdfOverLimit`] naming the object, its cost, the limit and the option that
    /// raises it.
    pub fn check(&self, object: &str, cost: KdfCost) -> Result<()> {
        let over = |asked: String, limit: String, option: &'static str| {
            Err(Error::KdfOverLimit {
                object: object.to_string(),
                asked,
                limit,
                option,
            })
        };
        match cost {
            KdfCost::Pbkdf2 { iterations } => {
                if iterations > self.max_pbkdf2_iterations {
                    return over(
                        format!("{iterations} PBKDF2 iterations"),
                        format!("{} iterations", self.max_pbkdf2_iterations),
                        "--kdf-max-iterations",
                    );
                }
            }
            KdfCost::Argon2 { time, memory_kib } => {
                if memory_kib > self.max_memory_kib {
                    return over(
                        format!("{memory_kib} KiB of Argon2 memory"),
                        format!("{} KiB", self.max_memory_kib),
                        "--kdf-max-memory",
                    );
                }
                let work = u64::from(time) * u64::from(memory_kib);
                let limit = u64::from(self.max_argon2_passes) * u64::from(self.max_memory_kib);
                if work > limit {
                    return over(
                        format!("{time} Argon2 passes over {memory_kib} KiB"),
                        format!(
                            "{} passes over {} KiB (passes × memory)",
                            self.max_argon2_passes, self.max_memory_kib
                        ),
                        "--kdf-max-passes",
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cryptsetup_defaults_pass_and_hostile_costs_are_named() {
        let l = KdfLimits::default();
        // cryptsetup 2.6 defaults: argon2id 1 GiB for ~2 s (4-10 passes), PBKDF2 for 2 s.
        l.check(
            "keyslot 0",
            KdfCost::Argon2 {
                time: 10,
                memory_kib: 1 << 20,
            },
        )
        .unwrap();
        l.check(
            "keyslot 1",
            KdfCost::Pbkdf2 {
                iterations: 8_000_000,
            },
        )
        .unwrap();
        // Fewer KiB, more passes: the same work is fine.
        l.check(
            "keyslot 2",
            KdfCost::Argon2 {
                time: 64 * 32,
                memory_kib: 1 << 15,
            },
        )
        .unwrap();

        let e = l
            .check(
                "keyslot 0",
                KdfCost::Pbkdf2 {
                    iterations: u32::MAX,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keyslot 0")
                && e.contains("4294967295 PBKDF2 iterations")
                && e.contains("--kdf-max-iterations"),
            "{e}"
        );
        let e = l
            .check(
                "keyslot 4",
                KdfCost::Argon2 {
                    time: 4,
                    memory_kib: 4 << 20,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("4194304 KiB") && e.contains("--kdf-max-memory"),
            "{e}"
        );
        let e = l
            .check(
                "keyslot 5",
                KdfCost::Argon2 {
                    time: u32::MAX,
                    memory_kib: 1 << 20,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kdf-max-passes"), "{e}");
        KdfLimits::unlimited()
            .check(
                "keyslot 5",
                KdfCost::Argon2 {
                    time: u32::MAX,
                    memory_kib: u32::MAX,
                },
            )
            .unwrap();
    }
}
