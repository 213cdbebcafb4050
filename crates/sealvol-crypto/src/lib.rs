//! Cryptographic building blocks for sealvol: the sector ciphers, key derivation, the LUKS
//! anti-forensic splitter and secret types.
//!
//! This crate does **not** parse any on-disk format, touch files or spawn processes; it works
//! on byte slices and strings only. Hashes, ciphers and KDFs come from aws-lc and RustCrypto
//! (and the `adiantum` crate, built on RustCrypto's traits): nothing here implements a
//! primitive, only the modes and constructions LUKS and dm-crypt define on top of them (the
//! XTS and CBC sector loops, the IV generators, the AF splitter's diffuse function).
//!
//! The main types:
//! - [`SecretBytes`]: key material that is zeroized on drop, mlocked where the limit allows,
//!   and never printed.
//! - [`CipherSpec`]: a cipher specification as cryptsetup writes it (`aes-xts-plain64`,
//!   `serpent-cbc-essiv:sha256`, `xchacha12,aes-adiantum-plain64` ...) with its key size,
//!   parsed and checked; what sealvol does not implement is an [`Error::UnsupportedCipher`]
//!   naming the part ([`spec::CipherPart`]). `capi:` and `cipher:keycount` forms, `ecb`,
//!   `cipher_null`, authenticated modes and IV generators other than `plain64`, `plain` and
//!   `essiv` are out of scope.
//! - [`SectorCipher`]: any [`CipherSpec`] over whole sectors, byte for byte what dm-crypt
//!   computes (IVs count 512-byte units whatever the sector size).
//! - [`XtsCipher`]: AES-XTS over whole sectors with dm-crypt's `plain64` IV, the hot path of
//!   `aes-xts-plain64` (aws-lc). [`ParallelXts`] spreads a large buffer over several threads.
//! - [`kdf`]: PBKDF2 (sha1, sha256, sha512, ripemd160, whirlpool) and Argon2i/Argon2id, plus
//!   benchmarks that pick cryptsetup-like costs.
//! - [`af`]: the LUKS anti-forensic splitter (split and merge).
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

pub mod af;
mod error;
mod ffi;
pub mod hash;
pub mod kdf;
pub mod random;
mod secret;
mod sector;
pub mod spec;
mod xts;

pub use error::{Error, Result};
pub use hash::HashAlg;
pub use secret::SecretBytes;
pub use sector::{AesBackend, SectorCipher};
pub use spec::CipherSpec;
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
