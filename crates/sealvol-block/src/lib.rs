//! Block devices for sealvol: one trait, [`BlockDevice`], and the layers that implement it.
//!
//! A [`BlockDevice`] is a fixed-size array of bytes that many threads read and write at once
//! through `&self`: positioned reads and writes of any length at any offset, a durability
//! barrier ([`BlockDevice::flush`]), and two ways to drop data ([`BlockDevice::discard`],
//! [`BlockDevice::write_zeroes`]). The layers stack:
//!
//! - [`FileDevice`]: a regular file or a block device, with `pread`/`pwrite` (optionally
//!   `O_DIRECT`), `fdatasync` and hole punching.
//! - [`MemDevice`]: bytes in memory, for tests and examples.
//! - [`CryptDevice`]: the plaintext view of a LUKS data segment on any other device: its
//!   cipher (aes-xts-plain64, serpent-cbc-essiv:sha256, xchacha12,aes-adiantum-plain64 ...;
//!   every [`sealvol_crypto::CipherSpec`]) sector by sector exactly as dm-crypt does, any
//!   offset and length
//!   (partial sectors are read, patched and rewritten under a per-sector lock), large requests
//!   split across cores.
//! - [`VerityDevice`]: the read-only, verified view of a dm-verity protected image: every
//!   block is checked against the hash tree up to the root hash before it is returned.
//!
//! What it does not do: it opens no paths except in [`FileDevice::open`], spawns no
//! processes, mounts nothing, and serves nothing (`sealvol-export` serves a `BlockDevice`
//! over FUSE and NBD). It never sees a passphrase: a [`CryptDevice`] takes the unlocked
//! volume key, keeps it only inside its ciphers, and wipes them when dropped.
//!
//! ```
//! use sealvol_block::{BlockDevice, CryptDevice, MemDevice};
//! use sealvol_crypto::{SecretBytes, SectorSize};
//! use sealvol_luks::DataSegment;
//!
//! let segment = DataSegment {
//!     id: 0,
//!     offset: 4096,
//!     size: None,
//!     iv_tweak: 0,
//!     sector_size: SectorSize::S4096,
//!     cipher: "aes-xts-plain64".into(),
//!     key_size: 64,
//! };
//! let key = SecretBytes::random(64)?;
//! let disk = MemDevice::new(4096 + 64 * 4096);
//! let plain = CryptDevice::new(&disk, &segment, &key)?;
//! plain.write_at(b"hello", 10_000)?; // partial sector: read, patch, rewrite
//! let mut back = [0u8; 5];
//! plain.read_at(&mut back, 10_000)?;
//! assert_eq!(&back, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aligned;
mod crypt;
mod error;
mod file;
mod mem;
mod stripe;
mod verity;

use std::sync::Arc;

pub use crypt::CryptDevice;
pub use error::{Error, Result};
pub use file::{FileDevice, FileOptions};
pub use mem::MemDevice;
pub use verity::VerityDevice;

/// A fixed-size, thread-safe array of bytes.
///
/// Every method takes `&self`: implementations do their own locking, so one device can be
/// shared (`Arc`) by all the threads of a FUSE or NBD server. Requests may be large (many
/// MiB) and need not be aligned to anything.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// True when writes, discards and zeroing are refused.
    fn read_only(&self) -> bool;

    /// The smallest write that needs no read-modify-write (the sector size for a
    /// [`CryptDevice`]); exports advertise it as the preferred I/O size.
    fn block_size(&self) -> u32 {
        512
    }

    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when the range passes the end, I/O errors of the layer below,
    /// verification failures of a [`VerityDevice`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::OutOfRange`], I/O errors of the layer below.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every write that has completed durable (`fdatasync` at the bottom).
    ///
    /// # Errors
    /// I/O errors of the layer below.
    fn flush(&self) -> Result<()>;

    /// Tells the device that `len` bytes at `offset` are no longer needed. Later reads of
    /// the range return unspecified data (as after a discard on dm-crypt); use
    /// [`BlockDevice::write_zeroes`] for zeros.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::OutOfRange`], I/O errors of the layer below.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Makes `len` bytes at `offset` read as zeros.
    ///
    /// The default writes zero-filled buffers.
    ///
    /// # Errors
    /// As for [`BlockDevice::write_at`].
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range("write zeroes", offset, len, self.size())?;
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// Largest buffer the default [`BlockDevice::write_zeroes`] allocates.
const ZERO_CHUNK: usize = 1 << 20;

/// Checks that `len` bytes at `offset` lie inside a device of `size` bytes.
///
/// # Errors
/// [`Error::OutOfRange`] naming `what`, the range and the size.
pub fn check_range(what: &'static str, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            what,
            offset,
            len,
            size,
        }),
    }
}

macro_rules! forward {
    ($($ty:ty),*) => {$(
        impl<T: BlockDevice + ?Sized> BlockDevice for $ty {
            fn size(&self) -> u64 { (**self).size() }
            fn read_only(&self) -> bool { (**self).read_only() }
            fn block_size(&self) -> u32 { (**self).block_size() }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
                (**self).write_at(buf, offset)
            }
            fn flush(&self) -> Result<()> { (**self).flush() }
            fn discard(&self, offset: u64, len: u64) -> Result<()> {
                (**self).discard(offset, len)
            }
            fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
                (**self).write_zeroes(offset, len)
            }
        }
    )*};
}

forward!(&T, Box<T>, Arc<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert!(check_range("read", 0, 10, 10).is_ok());
        assert!(check_range("read", 10, 0, 10).is_ok());
        assert!(check_range("read", 5, 6, 10).is_err());
        assert!(check_range("read", u64::MAX, 2, 10).is_err());
        let msg = check_range("read", 8, 4, 10).unwrap_err().to_string();
        assert!(
            msg.contains("offset 8") && msg.contains("10 bytes"),
            "{msg}"
        );
    }
}
