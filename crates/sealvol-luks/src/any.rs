//! A LUKS volume of either version behind one front: [`AnyVolume`].
//!
//! [`AnyVolume::open`] reads the version at offset 6 of the primary header and opens a
//! LUKS1 or LUKS2 [`Volume`](crate::Volume); the operations every CLI verb needs (unlock,
//! key slots, erase, data segment, header backup) then work on both. Tokens, labels and the
//! two-copy repair exist only in LUKS2: [`AnyVolume::luks2_mut`] names that clearly.

use std::io::SeekFrom;

use crate::storage::Storage;
use crate::{luks1, luks2, DataSegment, Error, KdfLimits, KdfParams, LoadReport, Result, Unlocked};
use sealvol_crypto::SecretBytes;

/// Where a header lives relative to the data it describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderPlacement {
    /// In the volume file, before the data (the default): the data segment must start after
    /// the header and keyslot area.
    Attached,
    /// In a file of its own (`--header`): the volume file holds only data, and a data offset
    /// of 0 is normal.
    Detached,
}

/// Refuses a data segment that starts inside an attached header's area.
pub(crate) fn check_placement(
    segment: &DataSegment,
    header_end: u64,
    placement: HeaderPlacement,
) -> Result<()> {
    if placement == HeaderPlacement::Attached && segment.offset < header_end {
        return Err(Error::DataOverlapsHeader {
            data_offset: segment.offset,
            header_end,
        });
    }
    Ok(())
}

/// A LUKS1 or LUKS2 header on `S`.
#[derive(Debug)]
pub enum AnyVolume<S: Storage> {
    /// LUKS1 (version 1).
    Luks1(luks1::Volume<S>),
    /// LUKS2 (version 2).
    Luks2(luks2::Volume<S>),
}

/// The LUKS version at offset 6 when offset 0 holds the LUKS magic.
fn primary_version<S: Storage>(s: &mut S) -> Option<u16> {
    let mut b = [0u8; 8];
    s.seek(SeekFrom::Start(0)).ok()?;
    s.read_exact(&mut b).ok()?;
    crate::probe(&b).map(|p| p.version)
}

/// Refuses a KDF LUKS1 cannot store and returns the PBKDF2 iterations.
fn luks1_iterations(h: &luks1::Header, kdf: &KdfParams) -> Result<u32> {
    match *kdf {
        KdfParams::Pbkdf2 { hash, iterations } if hash == h.hash() => Ok(iterations),
        KdfParams::Pbkdf2 { hash, .. } => Err(Error::Invalid(format!(
            "LUKS1 keyslots use the header's hash ({}), not {}; pass --hash {}",
            h.hash().as_str(),
            hash.as_str(),
            h.hash().as_str()
        ))),
        KdfParams::Argon2 { .. } => Err(Error::Invalid(
            "LUKS1 keyslots support only PBKDF2 (--pbkdf pbkdf2); Argon2 needs LUKS2".into(),
        )),
    }
}

impl<S: Storage> AnyVolume<S> {
    /// Opens the header on `storage`: LUKS1 when offset 0 says version 1, else LUKS2
    /// (which also finds a secondary copy when the primary is damaged).
    ///
    /// # Errors
    /// Those of [`luks1::Volume::open`] or [`luks2::Volume::open`].
    pub fn open(mut storage: S) -> Result<Self> {
        match primary_version(&mut storage) {
            Some(1) => Ok(AnyVolume::Luks1(luks1::Volume::open(storage)?)),
            // cryptsetup `_crypt_load_luks`: a version above 2 behind the primary magic is
            // refused outright (0, a damaged primary, goes on to the LUKS2 copies).
            Some(v) if v > 2 => Err(Error::UnsupportedVersion(v)),
            _ => Ok(AnyVolume::Luks2(luks2::Volume::open(storage)?)),
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self {
            AnyVolume::Luks1(_) => 1,
            AnyVolume::Luks2(_) => 2,
        }
    }

    /// The volume UUID.
    pub fn uuid(&self) -> &str {
        match self {
            AnyVolume::Luks1(v) => v.header().uuid(),
            AnyVolume::Luks2(v) => v.header().uuid(),
        }
    }

    /// Ids of the key slots in use.
    pub fn keyslots(&self) -> Vec<u32> {
        match self {
            AnyVolume::Luks1(v) => v.header().active_keyslots(),
            AnyVolume::Luks2(v) => v.header().metadata().keyslots.keys().copied().collect(),
        }
    }

    /// The LUKS2 volume, or an error naming `what` as LUKS2-only.
    ///
    /// # Errors
    /// [`Error::Luks2Only`] on a LUKS1 volume.
    pub fn luks2_mut(&mut self, what: &str) -> Result<&mut luks2::Volume<S>> {
        match self {
            AnyVolume::Luks2(v) => Ok(v),
            AnyVolume::Luks1(_) => Err(Error::Luks2Only(what.to_string())),
        }
    }

    /// The LUKS2 volume, if it is one.
    pub fn as_luks2(&self) -> Option<&luks2::Volume<S>> {
        match self {
            AnyVolume::Luks2(v) => Some(v),
            AnyVolume::Luks1(_) => None,
        }
    }

    /// What LUKS2's two-copy load found (`None` for LUKS1, which has one copy).
    pub fn load_report(&self) -> Option<&LoadReport> {
        self.as_luks2().map(|v| v.load_report())
    }

    /// Rewrites a damaged LUKS2 copy; LUKS1 has nothing to repair (`Ok(false)`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn repair(&mut self) -> Result<bool> {
        match self {
            AnyVolume::Luks1(_) => Ok(false),
            AnyVolume::Luks2(v) => v.repair(),
        }
    }

    /// `Some(reason)` when the header may be read but not opened or changed (LUKS2
    /// requirement flags, a reencryption, OPAL, dm-integrity: [`luks2::Volume::blockers`]).
    pub fn read_only(&self) -> Option<String> {
        self.as_luks2().and_then(|v| v.read_only())
    }

    /// The data segment, as the header describes it (no check of where it lies: use
    /// [`AnyVolume::data_segment_for`] before reading or writing data).
    ///
    /// # Errors
    /// As the version's `data_segment`.
    pub fn data_segment(&self) -> Result<DataSegment> {
        match self {
            AnyVolume::Luks1(v) => v.data_segment(),
            AnyVolume::Luks2(v) => v.data_segment(),
        }
    }

    /// The data segment, refused when it overlaps an attached header's area (a header with
    /// data at offset 0 is valid only detached: used attached, writing data would destroy
    /// the keyslots).
    ///
    /// # Errors
    /// [`Error::DataOverlapsHeader`] naming both offsets; as [`AnyVolume::data_segment`].
    pub fn data_segment_for(&self, placement: HeaderPlacement) -> Result<DataSegment> {
        match self {
            AnyVolume::Luks1(v) => v.data_segment_for(placement),
            AnyVolume::Luks2(v) => v.data_segment_for(placement),
        }
    }

    /// Bounds the key derivations that unlocking may run (default: [`KdfLimits::default`]).
    pub fn set_kdf_limits(&mut self, limits: KdfLimits) {
        match self {
            AnyVolume::Luks1(v) => v.set_kdf_limits(limits),
            AnyVolume::Luks2(v) => v.set_kdf_limits(limits),
        }
    }

    /// Finds the volume key with `passphrase`.
    ///
    /// # Errors
    /// [`Error::WrongKey`] and the version's errors.
    pub fn unlock(&mut self, passphrase: &[u8], keyslot: Option<u32>) -> Result<Unlocked> {
        match self {
            AnyVolume::Luks1(v) => v.unlock(passphrase, keyslot),
            AnyVolume::Luks2(v) => v.unlock(passphrase, keyslot),
        }
    }

    /// Whether `vk` is the volume key.
    ///
    /// # Errors
    /// Crypto errors.
    pub fn verify_volume_key(&self, vk: &SecretBytes) -> Result<bool> {
        match self {
            AnyVolume::Luks1(v) => v.verify_volume_key(vk),
            AnyVolume::Luks2(v) => v.verify_volume_key(vk),
        }
    }

    /// Adds a key slot. LUKS1 takes PBKDF2 with the header's hash only.
    ///
    /// # Errors
    /// As the version's `add_keyslot`; [`Error::Invalid`] for a KDF LUKS1 cannot hold.
    pub fn add_keyslot(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        kdf: &KdfParams,
        keyslot: Option<u32>,
    ) -> Result<u32> {
        match self {
            AnyVolume::Luks1(v) => {
                let it = luks1_iterations(v.header(), kdf)?;
                v.add_keyslot(volume_key, passphrase, it, keyslot)
            }
            AnyVolume::Luks2(v) => v.add_keyslot(volume_key, passphrase, kdf, keyslot),
        }
    }

    /// Removes a key slot (never the last one).
    ///
    /// # Errors
    /// As the version's `remove_keyslot`.
    pub fn remove_keyslot(&mut self, keyslot: u32) -> Result<()> {
        match self {
            AnyVolume::Luks1(v) => v.remove_keyslot(keyslot),
            AnyVolume::Luks2(v) => v.remove_keyslot(keyslot),
        }
    }

    /// Replaces a passphrase; returns the new slot.
    ///
    /// # Errors
    /// As the version's `change_key`.
    pub fn change_key(
        &mut self,
        old: &[u8],
        new: &[u8],
        kdf: Option<&KdfParams>,
        keyslot: Option<u32>,
    ) -> Result<u32> {
        match self {
            AnyVolume::Luks1(v) => {
                let it = kdf.map(|k| luks1_iterations(v.header(), k)).transpose()?;
                v.change_key(old, new, it, keyslot)
            }
            AnyVolume::Luks2(v) => v.change_key(old, new, kdf, keyslot),
        }
    }

    /// Destroys every key slot.
    ///
    /// # Errors
    /// As the version's `erase`.
    pub fn erase(&mut self) -> Result<()> {
        match self {
            AnyVolume::Luks1(v) => v.erase(),
            AnyVolume::Luks2(v) => v.erase(),
        }
    }

    /// Bytes a header backup covers.
    pub fn header_area_len(&self) -> u64 {
        match self {
            AnyVolume::Luks1(v) => v.header_area_len(),
            AnyVolume::Luks2(v) => v.header_area_len(),
        }
    }

    /// The raw header area.
    ///
    /// # Errors
    /// I/O errors.
    pub fn header_backup(&mut self) -> Result<Vec<u8>> {
        match self {
            AnyVolume::Luks1(v) => v.header_backup(),
            AnyVolume::Luks2(v) => v.header_backup(),
        }
    }

    /// Writes a header backup (of either version, as its magic says) onto `storage`.
    ///
    /// # Errors
    /// As the version's `header_restore`; [`Error::Invalid`] when the device holds a
    /// header of the other version.
    pub fn header_restore(mut storage: S, backup: &[u8]) -> Result<Self> {
        let want = primary_version(&mut std::io::Cursor::new(backup.to_vec()));
        let have = primary_version(&mut storage);
        if let (Some(w), Some(h)) = (want, have) {
            if w != h && (w == 1 || h == 1) {
                return Err(Error::Invalid(format!(
                    "the backup is LUKS{w} but the device holds a LUKS{h} header"
                )));
            }
        }
        match want {
            Some(1) => Ok(AnyVolume::Luks1(luks1::Volume::header_restore(
                storage, backup,
            )?)),
            _ => Ok(AnyVolume::Luks2(luks2::Volume::header_restore(
                storage, backup,
            )?)),
        }
    }

    /// The underlying storage.
    pub fn storage_mut(&mut self) -> &mut S {
        match self {
            AnyVolume::Luks1(v) => v.storage_mut(),
            AnyVolume::Luks2(v) => v.storage_mut(),
        }
    }

    /// Gives back the storage.
    pub fn into_storage(self) -> S {
        match self {
            AnyVolume::Luks1(v) => v.into_storage(),
            AnyVolume::Luks2(v) => v.into_storage(),
        }
    }
}
