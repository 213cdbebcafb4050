//! Cryptographic building blocks for sealvol: the sector cipher, key derivation, the LUKS
//! anti-forensic splitter and secret types.
//!
//! This crate does **not** parse any on-disk format, touch files or spawn processes; it works
//! on byte slices only. Hashes, ciphers and KDFs come from aws-lc and RustCrypto: nothing
//! here implements a primitive, only the modes and constructions LUKS defines on top of them
//! (the XTS sector/IV loop, the AF splitter's diffuse function).
//!
//! The main types:
//! - [`SecretBytes`]: key material that is zeroized on drop, mlocked where the limit allows,
//!   and never printed.
//! - [`XtsCipher`]: AES-XTS over whole sectors with dm-crypt's `plain64` IV (the IV counts
//!   512-byte units whatever the sector size). [`ParallelXts`] spreads a large buffer over
//!   several threads.
//! - [`kdf`]: PBKDF2 (sha1/sha256/sha512) and Argon2i/Argon2id, plus benchmarks that pick
//!   cryptsetup-like costs.
//! - [`af`]: the LUKS anti-forensic splitter (split and merge).
//! - [`hkdf`]: HKDF-SHA512 (per-extent keys of the overlay); `aead`: AES-256-GCM-SIV
//!   (with the `aws-lc` feature), the overlay's cluster and key-wrap AEAD.
//!
//! Unsafe code is confined to one private module (`ffi`: the aws-lc binding and
//! `mlock`), with a `// SAFETY:` justification on every block.
//!
//! Features: `aws-lc` (default) builds the aws-lc backend; without it (`--no-default-features`)
//! the crate is pure Rust and [`Backend::AwsLc`] returns an error.
//!
//! ```
//! use sealvol_crypto::{SecretBytes, SectorSize, XtsCipher};
//! let key = SecretBytes::random(64).unwrap();
//! let mut cipher = XtsCipher::new(&key).unwrap();
//! let mut buf = vec![0u8; 8192];
//! cipher.encrypt_sectors(&mut buf, SectorSize::S4096, 0).unwrap();
//! cipher.decrypt_sectors(&mut buf, SectorSize::S4096, 0).unwrap();
//! assert!(buf.iter().all(|&b| b == 0));
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "aws-lc")]
pub mod aead;
pub mod af;
mod error;
mod ffi;
pub mod hash;
pub mod hkdf;
pub mod kdf;
pub mod random;
mod secret;
mod xts;

pub use error::{Error, Result};
pub use hash::HashAlg;
pub use secret::SecretBytes;
pub use xts::{Backend, ParallelXts, SectorSize, XtsCipher, PARALLEL_THRESHOLD};

/// Benchmark support: not part of the stable API.
#[doc(hidden)]
pub mod __bench {
    /// Encrypts `buf` in place as AES-256-XTS with `sector`-byte units and `plain64` IVs
    /// from `first_iv`, calling aws-lc's EVP functions as directly as possible (the
    /// baseline that [`crate::XtsCipher`] is measured against). Returns `false` on failure.
    #[cfg(feature = "aws-lc")]
    pub fn raw_awslc_xts256_encrypt(
        key: &[u8; 64],
        buf: &mut [u8],
        sector: usize,
        first_iv: u64,
    ) -> bool {
        crate::ffi::raw_xts256_encrypt(key, buf, sector, first_iv)
    }
}
