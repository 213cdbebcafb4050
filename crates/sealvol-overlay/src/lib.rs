//! Encrypted, authenticated copy-on-write overlays over any sealvol [`BlockDevice`]
//! (sealvol issue 12, items 1–6; the format is `docs/overlay-format.md`).
//!
//! An overlay is one file (a [`Store`]) holding a layer of a virtual disk: the clusters
//! written through it, each encrypted and authenticated with AES-256-GCM-SIV under its own
//! key, and a map from logical clusters to them. Clusters it does not map read from its
//! **base**: any [`BlockDevice`] (a plain image, a verity-verified image, a LUKS volume
//! opened read-only, or another overlay).
//!
//! - **Keys.** The file starts with a real LUKS2 header (the LUKS crate's keyslots, AF
//!   splitter and KDFs, unchanged): the consumer's key opens a keyslot and yields the
//!   *layer key*. Each key **generation** has a random 64-byte master key, stored only
//!   wrapped under a key derived from the layer key. Every newly written extent (the
//!   clusters one write seals together, at most 1 MiB) gets a random 16-byte nonce and its
//!   own key, HKDF-SHA512(master key, label ‖ nonce); each of its clusters is its own
//!   AES-256-GCM-SIV message with its own nonce.
//! - **Rekey without rewrite** ([`OverlayDevice::rekey`]): new writes use a new
//!   generation; old clusters keep theirs. [`OverlayDevice::retire`] re-encrypts one
//!   generation's clusters (resumable) and erases its key from both root slots.
//! - **Snapshots and clones** ([`OverlayDevice::snapshot`], [`OverlayDevice::clone_to`],
//!   [`OverlayDevice::flatten`]): a frozen layer is pinned by its root hash in the layers
//!   above it; a clone carries the keys it needs to read its source, wrapped under its own,
//!   unrelated keys.
//! - **Authentication and rollback.** The map is a hash tree (SHA-256) whose root, with a
//!   commit counter that only grows, is authenticated by HMAC-SHA256 under a key derived
//!   from the layer key. After a flush, [`OverlayDevice::checkpoint`] gives
//!   `(counter, root hash)`; [`OpenOptions::expect_checkpoint`] refuses any older state.
//!   A changed bit anywhere is an error, never wrong data.
//! - **Crash consistency.** Data and map nodes are copy-on-write; a commit writes them,
//!   syncs, then writes the root into the other of two root slots and syncs again.
//!
//! What this crate does not do: it opens no path and spawns nothing (the front end opens
//! files, finds lower layers by their locators and wires the device into exports); it
//! does not hide which clusters are mapped, nor access patterns; a host that deletes the
//! file or withholds writes is out of its reach (rollback to an older state is detected
//! against a checkpoint the owner keeps).
//!
//! ```
//! use std::sync::Arc;
//! use sealvol_block::{BlockDevice, MemDevice};
//! use sealvol_overlay::{CreateOptions, MemStore, OpenOptions, OverlayDevice};
//!
//! let base: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_vec(vec![7u8; 1 << 20]));
//! let store = Arc::new(MemStore::new());
//! let ov = OverlayDevice::create(store.clone(), b"machine key", base.clone(), &CreateOptions::default())?;
//! ov.write_at(b"hello", 4096)?;
//! ov.flush()?;
//! let cp = ov.checkpoint();
//! drop(ov);
//! let opts = OpenOptions { expect_checkpoint: Some(cp), ..OpenOptions::default() };
//! let ov = OverlayDevice::open(store, b"machine key", base, &opts, &mut |_| unreachable!())?;
//! let mut b = [0u8; 7];
//! ov.read_at(&mut b, 4095)?;
//! assert_eq!(&b, b"\x07hello\x07");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod device;
mod error;
pub mod format;
mod keys;
mod map;
mod ops;
mod store;

pub use device::{
    peek, unlock_layer_key, CreateOptions, LowerLayer, OpenOptions, OverlayDevice, Unverified,
};
pub use error::{Error, Result};
pub use format::Checkpoint;
pub use keys::LABEL_EXTENT;
pub use ops::{
    embedded_header, CloneOptions, FlattenReport, GenerationStatus, LowerStatus, Progress,
    RetireReport, Status,
};
pub use sealvol_block::BlockDevice;
pub use store::{HeaderArea, MemStore, Store};

#[doc(hidden)]
pub mod __fuzz;

#[cfg(test)]
mod tests;
