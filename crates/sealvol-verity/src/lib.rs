//! dm-verity hash trees, byte for byte as `veritysetup` (cryptsetup 2.6) builds them, verified
//! reads, and ed25519-signed root hashes.
//!
//! # What it does
//!
//! - [`Params`] holds what defines a tree: hash type ([`HashType`]: format 1, or 0 for Chrome
//!   OS), [`HashAlgorithm`], data and hash block sizes, number of data blocks, [`Salt`].
//!   [`Params::geometry`] gives the levels, stored top level first as in the kernel's
//!   `Documentation/admin-guide/device-mapper/verity.rst`.
//! - [`format`] (or [`HashTree::build`] + [`HashTree::write_to`]) builds the tree over a data
//!   device (any [`BlockSource`]: bytes, a `File`, or a `Read + Seek` behind a `Mutex`) and writes the 512-byte [`Superblock`] and the tree at a [`HashArea`] of the hash
//!   device — a separate file, or the data file itself at `--hash-offset`. The root hash is
//!   the same as `veritysetup format` prints for equal inputs and salt.
//! - [`verify`] checks a whole image (`veritysetup verify`) and returns a [`Report`] naming
//!   the first, or every, corrupt block.
//! - [`VerityReader`] verifies lazily, per block, up to the root, like the kernel target: a
//!   corrupt block fails reads of that block only.
//! - [`SigningKey`] / [`VerifyingKey`] sign and check the root hash together with the
//!   parameters ([`signed_message`] documents the encoding).
//!
//! # What it does not do
//!
//! No paths, no processes, no device-mapper: it works on bytes, [`BlockSource`]s (positional
//! reads, so every core hashes) and `Read + Seek` / `Write + Seek` values. No forward error correction (`--fec-device`), and no kernel root-hash
//! signatures (PKCS#7 `--root-hash-signature`).
//!
//! # Example
//!
//! ```
//! use std::io::Cursor;
//! use sealvol_verity::{format, verify, HashAlgorithm, HashArea, HashType, Params, Salt};
//!
//! let data = vec![0u8; 64 * 4096];
//! let params = Params::new(HashType::Normal, HashAlgorithm::Sha256, 4096, 4096, 64,
//!     Salt::from_hex("00112233")?)?;
//! let mut hash = Cursor::new(Vec::new());
//! let tree = format(&data, &mut hash, &params, HashArea::default(), None, &mut |_| {})?;
//! let report = verify(&data, &mut hash, &params, HashArea::default(), tree.root(), false,
//!     &mut |_| {})?;
//! assert!(report.is_ok());
//! # Ok::<(), sealvol_verity::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod hash;
mod params;
mod reader;
mod signature;
mod source;
mod superblock;
mod tree;

pub use error::{Error, Result};
pub use hash::block_digest;
pub use params::{
    Geometry, HashAlgorithm, HashArea, HashType, Level, Params, Salt, DEFAULT_SALT_SIZE,
    MAX_BLOCK_SIZE, MAX_DIGEST_SIZE, MAX_LEVELS, MAX_SALT_SIZE, MIN_BLOCK_SIZE, SUPERBLOCK_SIZE,
};
pub use reader::{VerityReader, DEFAULT_CACHE_BLOCKS};
pub use signature::{signed_message, SigningKey, VerifyingKey, MESSAGE_HEADER, SIGNATURE_SIZE};
pub use source::BlockSource;
pub use superblock::{Superblock, Uuid, SIGNATURE, VERSION};
pub use tree::{
    format, read_superblock, root_matches_tree, verify, Failure, HashTree, Progress, Report,
};

/// Parses a root hash given in hex.
///
/// # Errors
/// [`Error::Hex`] for text that is not hex, [`Error::RootHashLength`] when it is not one
/// digest of `params`' algorithm.
pub fn parse_root_hash(params: &Params, text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    let root = hex::decode(text).map_err(|_| Error::Hex {
        what: "root hash",
        found: text.to_owned(),
    })?;
    if root.len() != params.digest_size() {
        return Err(Error::RootHashLength {
            algorithm: params.algorithm().name(),
            expected: params.digest_size(),
            found: root.len(),
        });
    }
    Ok(root)
}
