//! The data segment (§3.4): where the ciphertext lives and how it is encrypted.

use super::keyslot::{cipher_spec, cipher_spec_any_key};
use crate::{Error, Result};
use sealvol_crypto::{CipherSpec, SecretBytes, SectorCipher, SectorSize};

/// A `crypt` segment, checked for use: offset and size aligned to the sector size, a
/// supported cipher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSegment {
    /// Segment id in the metadata.
    pub id: u32,
    /// Byte offset of the segment on the data device.
    pub offset: u64,
    /// Bytes of the segment, or `None` for `"dynamic"` (to the end of the device).
    pub size: Option<u64>,
    /// IV of the segment's first sector, in 512-byte units (`iv_tweak`).
    pub iv_tweak: u64,
    /// Encryption sector size.
    pub sector_size: SectorSize,
    /// Cipher specification (`aes-xts-plain64`, `serpent-cbc-essiv:sha256`, ...).
    pub cipher: String,
    /// Volume key bytes (from the keyslots assigned to the segment's digest; 0 when the
    /// volume has no keyslot left).
    pub key_size: usize,
}

impl DataSegment {
    /// Bytes of data in the segment on a data device of `device_len` bytes: the fixed size,
    /// or for a dynamic segment everything after the offset rounded down to whole sectors.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the device ends before the segment does.
    pub fn data_len(&self, device_len: u64) -> Result<u64> {
        let avail = device_len.checked_sub(self.offset).ok_or_else(|| {
            Error::Invalid(format!(
                "the data device ({device_len} bytes) ends before the data segment offset {}",
                self.offset
            ))
        })?;
        match self.size {
            Some(size) => {
                if size > avail {
                    return Err(Error::Invalid(format!(
                        "the data segment needs {size} bytes after offset {} but the data device has {avail}",
                        self.offset
                    )));
                }
                Ok(size)
            }
            None => {
                let ss = self.sector_size.bytes() as u64;
                Ok(avail - avail % ss)
            }
        }
    }

    /// The parsed cipher specification with the segment's key size (with the first key size
    /// the mode allows when no keyslot says it).
    ///
    /// # Errors
    /// [`Error::UnsupportedCipher`] naming the part sealvol does not implement.
    pub fn spec(&self) -> Result<CipherSpec> {
        if self.key_size == 0 {
            cipher_spec_any_key(&self.cipher)
        } else {
            cipher_spec(&self.cipher, self.key_size)
        }
    }

    /// The sector cipher for this segment's data under `volume_key`.
    ///
    /// Sector `n` of the segment (byte `pos = n * sector_size`) has the IV
    /// `iv_tweak + pos / 512` (dm-crypt's IVs count 512-byte units).
    ///
    /// # Errors
    /// [`Error::UnsupportedCipher`] for a specification or key size sealvol does not
    /// implement (never `cipher_null`); [`Error::Invalid`] for a key of the wrong length.
    pub fn cipher(&self, volume_key: &SecretBytes) -> Result<SectorCipher> {
        let spec = cipher_spec(&self.cipher, volume_key.len())?;
        if self.key_size != 0 && volume_key.len() != self.key_size {
            return Err(Error::Invalid(format!(
                "the volume key has {} bytes but the segment's keyslots store {}-byte keys",
                volume_key.len(),
                self.key_size
            )));
        }
        Ok(SectorCipher::new(&spec, volume_key)?)
    }

    /// IV of the sector at segment byte `pos` (sector aligned).
    pub fn iv_at(&self, pos: u64) -> u64 {
        self.iv_tweak.wrapping_add(pos / 512)
    }
}
