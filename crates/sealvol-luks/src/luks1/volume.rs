//! A LUKS1 header on a [`Storage`]: format, open, unlock, key slots, erase, backup.
//!
//! LUKS1 has one header copy. Every update writes the key material first, syncs, then
//! rewrites the 592-byte binary header (one sector) and syncs, so a crash leaves either the
//! old or the new header, and never an active slot over unwritten material.

use super::header::{
    material_sectors, Header, Keyslot, ALIGN_KEYSLOTS, DIGEST_LEN, NUM_KEYS, PHDR_LEN, SALT_LEN,
    SECTOR, STRIPES,
};
use crate::luks2::DataSegment;
use crate::storage::{self, Storage};
use crate::{Error, KdfCost, KdfLimits, Result, Unlocked};
use sealvol_crypto::{af, kdf, CipherSpec, HashAlg, SecretBytes, SectorCipher, SectorSize};

/// cryptsetup's default payload alignment (1 MiB, in sectors).
const DEFAULT_ALIGN_PAYLOAD: u64 = 2048;
/// cryptsetup's minimum PBKDF2 iterations (keyslots and master key digest).
pub const MIN_ITERATIONS: u32 = 1000;

/// Parameters of [`Volume::format`] (as `cryptsetup luksFormat --type luks1`).
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// Cipher specification, stored as cipher-name and cipher-mode (default
    /// `aes-xts-plain64`): any [`CipherSpec`] sealvol implements.
    pub cipher: String,
    /// Volume key size in bits, one the cipher's mode allows (default 512, AES-256-XTS).
    pub key_size_bits: u32,
    /// hash-spec: PBKDF2 and AF hash (default sha256, as cryptsetup and qemu).
    pub hash: HashAlg,
    /// PBKDF2 iterations of the first key slot (at least 1000).
    pub iterations: u32,
    /// PBKDF2 iterations of the master key digest (at least 1000).
    pub mk_digest_iterations: u32,
    /// The header lives on its own storage (payload offset defaults to 0).
    pub detached: bool,
    /// Payload offset in 512-byte sectors. Default: attached, the key material end
    /// rounded up to 1 MiB (2048 sectors); detached, 0.
    pub payload_offset: Option<u64>,
    /// UUID; default a random version 4 UUID.
    pub uuid: Option<String>,
    /// Slot of the first key (default 0).
    pub keyslot: Option<u32>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            cipher: crate::luks2::CIPHER_AES_XTS_PLAIN64.into(),
            key_size_bits: 512,
            hash: HashAlg::Sha256,
            iterations: MIN_ITERATIONS,
            mk_digest_iterations: MIN_ITERATIONS,
            detached: false,
            payload_offset: None,
            uuid: None,
            keyslot: None,
        }
    }
}

/// A LUKS1 header on `S` (the device itself, or a detached header file).
pub struct Volume<S: Storage> {
    storage: S,
    header: Header,
    limits: KdfLimits,
}

impl<S: Storage> std::fmt::Debug for Volume<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Luks1Volume")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn inv(msg: String) -> Error {
    Error::Invalid(msg)
}

fn check_iterations(n: u32, what: &str) -> Result<()> {
    if n < MIN_ITERATIONS {
        return Err(inv(format!(
            "{what} PBKDF2 iterations {n} is below cryptsetup's minimum of {MIN_ITERATIONS}"
        )));
    }
    Ok(())
}

fn mk_digest(h: HashAlg, vk: &[u8], salt: &[u8], iter: u32) -> Result<[u8; DIGEST_LEN]> {
    let mut out = [0u8; DIGEST_LEN];
    kdf::pbkdf2(h, vk, salt, iter, &mut out)?;
    Ok(out)
}

fn random_salt() -> Result<[u8; SALT_LEN]> {
    let mut s = [0u8; SALT_LEN];
    sealvol_crypto::random::fill_bulk(&mut s)?;
    Ok(s)
}

fn wipe_random<S: Storage + ?Sized>(s: &mut S, offset: u64, len: u64, what: &str) -> Result<()> {
    let mut buf = vec![0u8; len as usize];
    sealvol_crypto::random::fill_bulk(&mut buf)?;
    storage::write_at(s, offset, &buf, what)?;
    storage::sync(s, what)
}

impl<S: Storage> Volume<S> {
    /// Formats `storage` as a LUKS1 device (or detached header) holding `volume_key` in
    /// one key slot opened by `passphrase`. Writes zeros over the header area (up to the
    /// payload offset when attached), random bytes over every key material area, the key
    /// slot, then the binary header. Never writes at or past the payload offset.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad options (key size, iterations, payload offset inside the
    /// key material, UUID, slot), crypto and I/O errors.
    pub fn format(
        mut storage: S,
        opts: &FormatOptions,
        volume_key: &SecretBytes,
        passphrase: &[u8],
    ) -> Result<Self> {
        if opts.key_size_bits % 8 != 0 {
            return Err(inv(format!(
                "key size {} bits is not whole bytes",
                opts.key_size_bits
            )));
        }
        let key_bytes = opts.key_size_bits / 8;
        let spec = CipherSpec::parse(&opts.cipher, key_bytes as usize)?;
        if volume_key.len() != key_bytes as usize {
            return Err(inv(format!(
                "the volume key has {} bytes; --key-size {} needs {key_bytes}",
                volume_key.len(),
                opts.key_size_bits
            )));
        }
        check_iterations(opts.iterations, "keyslot")?;
        check_iterations(opts.mk_digest_iterations, "master key digest")?;
        let slot = opts.keyslot.unwrap_or(0);
        if slot as usize >= NUM_KEYS {
            return Err(inv(format!(
                "keyslot {slot} does not exist; LUKS1 has slots 0..=7"
            )));
        }
        let uuid = match &opts.uuid {
            Some(u) => uuid::Uuid::parse_str(u)
                .map_err(|_| inv(format!("{u:?} is not a UUID")))?
                .hyphenated()
                .to_string(),
            None => uuid::Uuid::new_v4().hyphenated().to_string(),
        };
        // cryptsetup LUKS_generate_phdr: material at 4096-byte aligned sectors from 8.
        let align = ALIGN_KEYSLOTS / SECTOR;
        let secs = material_sectors(key_bytes);
        let mut at = align;
        let mut keyslots: [Keyslot; NUM_KEYS] = std::array::from_fn(|_| Keyslot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_material_offset: 0,
            stripes: STRIPES,
        });
        for k in keyslots.iter_mut() {
            k.key_material_offset = at as u32;
            at = (at + secs).div_ceil(align) * align;
        }
        let payload = match (opts.payload_offset, opts.detached) {
            (Some(p), _) => p,
            (None, true) => 0,
            (None, false) => at.div_ceil(DEFAULT_ALIGN_PAYLOAD) * DEFAULT_ALIGN_PAYLOAD,
        };
        let payload_offset = u32::try_from(payload)
            .map_err(|_| inv(format!("payload offset {payload} sectors is too large")))?;
        if !opts.detached && payload < at {
            return Err(inv(format!(
                "payload offset {payload} sectors lies inside the key material (which ends at sector {at})"
            )));
        }
        let mk_digest_salt = random_salt()?;
        let mut header = Header {
            cipher_name: spec.cipher_name().into(),
            cipher_mode: spec.mode_name(),
            hash_spec: opts.hash.as_str().into(),
            payload_offset,
            key_bytes,
            mk_digest: mk_digest(
                opts.hash,
                volume_key.expose(),
                &mk_digest_salt,
                opts.mk_digest_iterations,
            )?,
            mk_digest_salt,
            mk_digest_iter: opts.mk_digest_iterations,
            uuid,
            keyslots,
        };
        header.validate()?;
        header.usable()?;
        // Zero the header area, random bytes over every key material area.
        let end = if opts.detached { at } else { payload };
        storage::write_at(
            &mut storage,
            0,
            &vec![0u8; (end * SECTOR) as usize],
            "zeroing the LUKS1 header area",
        )?;
        for k in header.keyslots.clone() {
            wipe_random(
                &mut storage,
                u64::from(k.key_material_offset) * SECTOR,
                secs * SECTOR,
                "filling key material with random bytes",
            )?;
        }
        let salt = random_salt()?;
        let material = seal(&header, passphrase, opts.iterations, &salt, volume_key)?;
        let k = &mut header.keyslots[slot as usize];
        storage::write_at(
            &mut storage,
            u64::from(k.key_material_offset) * SECTOR,
            material.expose(),
            "LUKS1 key material",
        )?;
        storage::sync(&mut storage, "writing key material")?;
        k.active = true;
        k.iterations = opts.iterations;
        k.salt = salt;
        let mut vol = Volume {
            storage,
            header,
            limits: KdfLimits::default(),
        };
        vol.write_header()?;
        tracing::debug!(uuid = %vol.header.uuid, "formatted LUKS1 header");
        Ok(vol)
    }

    /// Reads and validates the LUKS1 header at offset 0.
    ///
    /// # Errors
    /// [`Error::NotLuks`], [`Error::UnsupportedVersion`], and every refusal of
    /// [`Header::decode`]; I/O errors.
    pub fn open(mut storage: S) -> Result<Self> {
        let mut b = [0u8; PHDR_LEN];
        let len = storage::len(&mut storage)?;
        if len < PHDR_LEN as u64 {
            return Err(Error::DeviceTooSmall {
                len,
                needed: PHDR_LEN as u64,
            });
        }
        storage::read_at(&mut storage, 0, &mut b, "the LUKS1 header")?;
        let header = Header::decode(&b)?;
        let area = header.area_len();
        if len < area {
            return Err(Error::DeviceTooSmall { len, needed: area });
        }
        Ok(Volume {
            storage,
            header,
            limits: KdfLimits::default(),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bounds the key derivations that unlocking may run (default: [`KdfLimits::default`]).
    pub fn set_kdf_limits(&mut self, limits: KdfLimits) {
        self.limits = limits;
    }

    /// The bounds on key derivations named by this header.
    pub fn kdf_limits(&self) -> KdfLimits {
        self.limits
    }

    /// Checks what key slots `ids` and the master key digest would cost against the limits.
    fn check_costs(&self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            self.limits.check(
                &format!("keyslot {id}"),
                KdfCost::Pbkdf2 {
                    iterations: self.header.keyslots[id as usize].iterations,
                },
            )?;
        }
        self.limits.check(
            "the master key digest",
            KdfCost::Pbkdf2 {
                iterations: self.header.mk_digest_iter,
            },
        )
    }

    fn write_header(&mut self) -> Result<()> {
        self.header.validate()?;
        let b = self.header.encode();
        storage::write_at(&mut self.storage, 0, &b, "the LUKS1 header")?;
        storage::sync(&mut self.storage, "writing the LUKS1 header")
    }

    /// The data segment: the header's cipher, 512-byte sectors, IV 0 at the payload offset,
    /// to the end of the data device.
    pub fn data_segment(&self) -> Result<DataSegment> {
        self.header.usable()?;
        Ok(DataSegment {
            id: 0,
            offset: u64::from(self.header.payload_offset) * SECTOR,
            size: None,
            iv_tweak: 0,
            sector_size: SectorSize::S512,
            cipher: self.header.cipher(),
            key_size: self.header.key_bytes as usize,
        })
    }

    /// The data segment, refused when the payload starts inside an attached header's area.
    ///
    /// # Errors
    /// [`Error::DataOverlapsHeader`].
    pub fn data_segment_for(&self, placement: crate::HeaderPlacement) -> Result<DataSegment> {
        let seg = self.data_segment()?;
        crate::any::check_placement(&seg, self.header.area_len(), placement)?;
        Ok(seg)
    }

    /// Whether `vk` is this volume's key (the master key digest matches).
    ///
    /// # Errors
    /// Crypto errors.
    pub fn verify_volume_key(&self, vk: &SecretBytes) -> Result<bool> {
        use subtle::ConstantTimeEq as _;
        if vk.len() != self.header.key_bytes as usize {
            return Ok(false);
        }
        self.header.usable()?;
        self.check_costs(&[])?;
        let h = &self.header;
        let got = mk_digest(
            h.usable_hash()?,
            vk.expose(),
            &h.mk_digest_salt,
            h.mk_digest_iter,
        )?;
        Ok(bool::from(got.ct_eq(&h.mk_digest)))
    }

    fn try_keyslot(&mut self, id: u32, passphrase: &[u8]) -> Result<Option<SecretBytes>> {
        let k = self.header.keyslots[id as usize].clone();
        let kb = self.header.key_bytes as usize;
        let secs = material_sectors(self.header.key_bytes);
        let mut material = SecretBytes::zeroed((secs * SECTOR) as usize);
        storage::read_at(
            &mut self.storage,
            u64::from(k.key_material_offset) * SECTOR,
            material.expose_mut(),
            "LUKS1 key material",
        )?;
        let mut derived = SecretBytes::zeroed(kb);
        let hash = self.header.usable_hash()?;
        kdf::pbkdf2(
            hash,
            passphrase,
            &k.salt,
            k.iterations,
            derived.expose_mut(),
        )?;
        SectorCipher::new(&self.header.cipher_spec()?, &derived)?.decrypt_sectors(
            material.expose_mut(),
            SectorSize::S512,
            0,
        )?;
        let n = kb * STRIPES as usize;
        let candidate = af::merge(&material.expose()[..n], kb, STRIPES, hash)?;
        Ok(self.verify_volume_key(&candidate)?.then_some(candidate))
    }

    /// Finds the volume key with `passphrase`: the named key slot, or every active slot in
    /// order.
    ///
    /// # Errors
    /// [`Error::WrongKey`], [`Error::NoSuchKeyslot`] (not 0..=7 or inactive).
    pub fn unlock(&mut self, passphrase: &[u8], keyslot: Option<u32>) -> Result<Unlocked> {
        self.header.usable()?;
        let slots = match keyslot {
            Some(id) => {
                if id as usize >= NUM_KEYS || !self.header.keyslots[id as usize].active {
                    return Err(Error::NoSuchKeyslot(id));
                }
                vec![id]
            }
            None => self.header.active_keyslots(),
        };
        // Every cost is checked before any derivation starts.
        self.check_costs(&slots)?;
        for id in slots {
            if let Some(volume_key) = self.try_keyslot(id, passphrase)? {
                tracing::debug!(keyslot = id, "LUKS1 keyslot opened");
                return Ok(Unlocked {
                    keyslot: id,
                    volume_key,
                });
            }
        }
        Err(Error::WrongKey)
    }

    /// Adds a key slot holding `volume_key` (checked against the digest) for `passphrase`
    /// with `iterations` PBKDF2 rounds of the header's hash, in `keyslot` or the lowest
    /// free slot. Material is written and synced before the header.
    ///
    /// # Errors
    /// [`Error::WrongKey`] (the key is not the volume's), [`Error::KeyslotInUse`],
    /// [`Error::NoFreeKeyslot`], [`Error::Invalid`] (iterations, slot number).
    pub fn add_keyslot(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        iterations: u32,
        keyslot: Option<u32>,
    ) -> Result<u32> {
        check_iterations(iterations, "keyslot")?;
        if !self.verify_volume_key(volume_key)? {
            return Err(Error::WrongKey);
        }
        let id = self.free_keyslot(keyslot)?;
        let salt = random_salt()?;
        let material = seal(&self.header, passphrase, iterations, &salt, volume_key)?;
        let off = u64::from(self.header.keyslots[id as usize].key_material_offset) * SECTOR;
        storage::write_at(
            &mut self.storage,
            off,
            material.expose(),
            "LUKS1 key material",
        )?;
        storage::sync(&mut self.storage, "writing key material")?;
        let k = &mut self.header.keyslots[id as usize];
        k.active = true;
        k.iterations = iterations;
        k.salt = salt;
        self.write_header()?;
        tracing::info!(uuid = %self.header.uuid, keyslot = id, "added LUKS1 keyslot");
        Ok(id)
    }

    fn free_keyslot(&self, want: Option<u32>) -> Result<u32> {
        match want {
            Some(id) if id as usize >= NUM_KEYS => Err(inv(format!(
                "keyslot {id} does not exist; LUKS1 has slots 0..=7"
            ))),
            Some(id) if self.header.keyslots[id as usize].active => Err(Error::KeyslotInUse(id)),
            Some(id) => Ok(id),
            None => (0..NUM_KEYS as u32)
                .find(|&i| !self.header.keyslots[i as usize].active)
                .ok_or_else(|| Error::NoFreeKeyslot("all 8 LUKS1 keyslots are in use".into())),
        }
    }

    /// Wipes a slot's material with random bytes (synced), then marks it inactive with
    /// salt and iterations cleared (cryptsetup `LUKS_del_key`).
    fn wipe_slot(&mut self, id: u32) -> Result<()> {
        let off = u64::from(self.header.keyslots[id as usize].key_material_offset) * SECTOR;
        let len = material_sectors(self.header.key_bytes) * SECTOR;
        wipe_random(&mut self.storage, off, len, "wiping LUKS1 key material")?;
        let k = &mut self.header.keyslots[id as usize];
        k.active = false;
        k.iterations = 0;
        k.salt = [0; SALT_LEN];
        Ok(())
    }

    /// Removes key slot `keyslot` (refusing the last active one: use [`Volume::erase`]).
    ///
    /// # Errors
    /// [`Error::NoSuchKeyslot`], [`Error::LastKeyslot`], I/O errors.
    pub fn remove_keyslot(&mut self, keyslot: u32) -> Result<()> {
        if keyslot as usize >= NUM_KEYS || !self.header.keyslots[keyslot as usize].active {
            return Err(Error::NoSuchKeyslot(keyslot));
        }
        if self.header.active_keyslots() == [keyslot] {
            return Err(Error::LastKeyslot(keyslot));
        }
        self.wipe_slot(keyslot)?;
        self.write_header()?;
        tracing::info!(uuid = %self.header.uuid, keyslot, "removed LUKS1 keyslot");
        Ok(())
    }

    /// Replaces a passphrase: the new slot is written before the old one is wiped.
    /// `iterations` defaults to the old slot's. Returns the new slot id.
    ///
    /// # Errors
    /// As [`Volume::unlock`] and [`Volume::add_keyslot`].
    pub fn change_key(
        &mut self,
        old: &[u8],
        new: &[u8],
        iterations: Option<u32>,
        keyslot: Option<u32>,
    ) -> Result<u32> {
        let u = self.unlock(old, keyslot)?;
        let iter = iterations.unwrap_or(self.header.keyslots[u.keyslot as usize].iterations);
        let new_id = self.add_keyslot(&u.volume_key, new, iter, None)?;
        self.wipe_slot(u.keyslot)?;
        self.write_header()?;
        Ok(new_id)
    }

    /// Destroys every key slot (`cryptsetup luksErase`): each material area is overwritten
    /// with random bytes, then every slot is marked inactive.
    ///
    /// # Errors
    /// I/O errors.
    pub fn erase(&mut self) -> Result<()> {
        for id in 0..NUM_KEYS as u32 {
            self.wipe_slot(id)?;
        }
        self.write_header()?;
        tracing::info!(uuid = %self.header.uuid, "erased all LUKS1 keyslots");
        Ok(())
    }

    /// Bytes a header backup covers (header and all key material).
    pub fn header_area_len(&self) -> u64 {
        self.header.area_len()
    }

    /// The raw header area (what `cryptsetup luksHeaderBackup` saves).
    ///
    /// # Errors
    /// I/O errors.
    pub fn header_backup(&mut self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.header_area_len() as usize];
        storage::read_at(&mut self.storage, 0, &mut b, "the LUKS1 header area")?;
        Ok(b)
    }

    /// Writes a header backup onto `storage` and opens it. If `storage` holds a LUKS1
    /// header already, its payload offset and key size must match the backup's (as
    /// cryptsetup checks).
    ///
    /// # Errors
    /// Any refusal of [`Header::decode`] on the backup; [`Error::Invalid`] on a mismatch
    /// or a short backup.
    pub fn header_restore(mut storage: S, backup: &[u8]) -> Result<Self> {
        let bh = Header::decode(backup)?;
        let len = bh.area_len();
        if (backup.len() as u64) < len {
            return Err(inv(format!(
                "the backup has {} bytes but its header area is {len}",
                backup.len()
            )));
        }
        let mut cur = [0u8; PHDR_LEN];
        if storage::read_at(&mut storage, 0, &mut cur, "the current header").is_ok() {
            if let Ok(ch) = Header::decode(&cur) {
                if ch.payload_offset != bh.payload_offset || ch.key_bytes != bh.key_bytes {
                    return Err(inv(format!(
                        "the backup does not match the device: payload offset {} vs {} sectors, key {} vs {} bytes",
                        bh.payload_offset, ch.payload_offset, bh.key_bytes, ch.key_bytes
                    )));
                }
            }
        }
        storage::write_at(
            &mut storage,
            0,
            &backup[..len as usize],
            "the restored header",
        )?;
        storage::sync(&mut storage, "restoring the header")?;
        Self::open(storage)
    }

    /// The underlying storage.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives back the storage.
    pub fn into_storage(self) -> S {
        self.storage
    }
}

/// AF-splits `vk` and encrypts it under a key derived from `passphrase` (the volume
/// cipher with the volume key's size, 512-byte sectors, IV 0 at the start of the material).
fn seal(
    h: &Header,
    passphrase: &[u8],
    iterations: u32,
    salt: &[u8],
    vk: &SecretBytes,
) -> Result<SecretBytes> {
    let kb = h.key_bytes as usize;
    let mut derived = SecretBytes::zeroed(kb);
    let hash = h.usable_hash()?;
    kdf::pbkdf2(hash, passphrase, salt, iterations, derived.expose_mut())?;
    let split = af::split(vk.expose(), STRIPES, hash)?;
    let mut material = SecretBytes::zeroed((material_sectors(h.key_bytes) * SECTOR) as usize);
    material.expose_mut()[..split.len()].copy_from_slice(split.expose());
    drop(split);
    SectorCipher::new(&h.cipher_spec()?, &derived)?.encrypt_sectors(
        material.expose_mut(),
        SectorSize::S512,
        0,
    )?;
    Ok(material)
}
