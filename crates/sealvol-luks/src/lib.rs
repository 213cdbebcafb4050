//! The LUKS1 and LUKS2 on-disk formats: parse, validate and encode headers, unlock and
//! manage keyslots, tokens (LUKS2), and the data segment's cipher parameters.
//!
//! This crate is pure: it works over byte slices and any [`Storage`] (`Read + Write + Seek`
//! plus a durability barrier). It never opens a path, never spawns a process, never logs a
//! key. Validation is cryptsetup 2.8's, rule by rule ([`luks2::validate::RULES`], the LUKS1
//! rules in [`luks1::Header::validate`]; the table is `docs/luks-validation.md`): a header
//! cryptsetup refuses is refused here, and one it accepts is read, with what sealvol does not
//! implement (a keyslot type, KDF, a cipher [`sealvol_crypto::CipherSpec`] does not accept,
//! a reencryption in progress) unusable and named, never used "best effort".
//!
//! Main types:
//! - [`Volume`]: a LUKS2 header on a [`Storage`]: [`Volume::format`], [`Volume::open`],
//!   [`Volume::unlock`], keyslot and token management, [`Volume::erase`].
//! - [`Header`]: the parsed header (binary header fields plus typed JSON [`Metadata`]).
//! - [`DataSegment`]: where the ciphertext lives and how to decrypt it.
//! - [`data`]: streaming plaintext into and out of a data segment.
//! - [`luks1::Volume`]: a LUKS1 header (as cryptsetup and qemu's `luks` driver write it).
//! - [`AnyVolume`]: either version behind one front, chosen by the header's version field;
//!   [`AnyVolume::dump_json`] gives the header as one JSON document, [`dump::text`] that
//!   document as `cryptsetup luksDump` lays it out.
//!
//! ```
//! use std::io::Cursor;
//! use sealvol_crypto::SecretBytes;
//! use sealvol_luks::{FormatOptions, KdfParams, Volume};
//! let vk = SecretBytes::random(64).unwrap();
//! let mut opts = FormatOptions::default();
//! opts.kdf = KdfParams::pbkdf2_min();
//! let mut vol = Volume::format(Cursor::new(Vec::new()), &opts, &vk, b"machine key").unwrap();
//! let unlocked = vol.unlock(b"machine key", None).unwrap();
//! assert!(unlocked.volume_key.ct_eq(vk.expose()));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod any;
pub mod data;
pub mod dump;
mod error;
pub mod format;
mod limits;
pub mod luks1;
pub mod luks2;
mod storage;

pub use any::{AnyVolume, HeaderPlacement};
pub use error::{Error, Result};
pub use format::{
    is_machine_key, probe, BuiltHeader, KdfKind, KdfPolicy, KeyProfile, NewHeader, Probe, Version,
};
pub use limits::{
    KdfCost, KdfLimits, DEFAULT_MAX_ARGON2_PASSES, DEFAULT_MAX_MEMORY_KIB,
    DEFAULT_MAX_PBKDF2_ITERATIONS,
};
pub use luks2::{
    parse_header_bytes, Copy as HeaderCopy, DataSegment, FormatOptions, Header, KdfParams,
    LoadReport, Metadata, Unlocked, Volume,
};
pub use storage::Storage;
