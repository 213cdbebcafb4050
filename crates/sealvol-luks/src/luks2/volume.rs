//! A LUKS2 header on a [`Storage`]: format, open, unlock, keyslots, tokens, erase, backup.

use super::header::{read_header, write_copy, write_header, Header, LoadReport};
use super::keyslot::{self, cipher_spec, slot_params};
use super::metadata::{Af, Area, Config, Keyslot, Metadata, Segment};
use super::segment::DataSegment;
use super::state::{blockers, Blocker};
use super::{
    binary, keyslot_area_size, random_array, FormatOptions, Kdf, KdfParams, AF_STRIPES,
    DEFAULT_HDR_AREA, MAX_KEYSLOTS, MAX_KEYSLOTS_SIZE, METADATA_SIZES, MIN_PBKDF2_ITERATIONS,
};
use crate::error::Copy;
use crate::storage::{self, Storage};
use crate::{Error, KdfCost, KdfLimits, Result};
use sealvol_crypto::{HashAlg, SecretBytes, SectorSize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The result of [`Volume::unlock`]: which keyslot opened and the volume key.
#[derive(Debug)]
pub struct Unlocked {
    /// The keyslot that opened.
    pub keyslot: u32,
    /// The volume key (checked against the segment's digest).
    pub volume_key: SecretBytes,
}

/// A LUKS2 header on `S` (the device itself, or a detached header file).
///
/// Every update writes the primary copy, syncs, writes the secondary copy and syncs again,
/// with the sequence id incremented, so a crash at any byte leaves one valid copy.
pub struct Volume<S: Storage> {
    storage: S,
    header: Header,
    report: LoadReport,
    limits: KdfLimits,
}

impl<S: Storage> std::fmt::Debug for Volume<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("uuid", &self.header.uuid())
            .field("seqid", &self.header.seqid())
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

const WIPE_CHUNK: usize = 1 << 20;

/// Overwrites `[offset, offset + len)` with random bytes, then syncs.
fn wipe_random<S: Storage + ?Sized>(s: &mut S, offset: u64, len: u64, what: &str) -> Result<()> {
    let mut buf = vec![0u8; WIPE_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(WIPE_CHUNK as u64) as usize;
        super::fill_random(&mut buf[..n])?;
        storage::write_at(s, offset + done, &buf[..n], what)?;
        done += n as u64;
    }
    storage::sync(s, what)
}

fn write_zeros<S: Storage + ?Sized>(s: &mut S, offset: u64, len: u64, what: &str) -> Result<()> {
    let buf = vec![0u8; WIPE_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(WIPE_CHUNK as u64) as usize;
        storage::write_at(s, offset + done, &buf[..n], what)?;
        done += n as u64;
    }
    Ok(())
}

fn inv(msg: String) -> Error {
    Error::Invalid(msg)
}

fn check_text(what: &str, s: &Option<String>) -> Result<String> {
    let s = s.clone().unwrap_or_default();
    if s.len() >= binary::LABEL_LEN || s.contains('\0') {
        return Err(inv(format!(
            "{what} {s:?} must be at most {} bytes without NUL characters",
            binary::LABEL_LEN - 1
        )));
    }
    Ok(s)
}

/// The first free keyslot area of `size` bytes in the keyslots area (cryptsetup
/// `LUKS2_find_area_gap`: first fit, in offset order).
fn find_area_gap(h: &Header, size: u64) -> Option<u64> {
    let start = h.keyslots_offset();
    let end = h.areas_len();
    let mut used: Vec<(u64, u64)> = h
        .metadata
        .keyslots
        .values()
        .map(|k| (k.area.offset, k.area.offset.saturating_add(k.area.size)))
        .collect();
    used.sort_unstable();
    let mut offset = start;
    for (a, b) in used {
        if offset.checked_add(size)? <= a {
            break;
        }
        offset = offset.max(b);
    }
    (offset.checked_add(size)? <= end).then_some(offset)
}

fn kdf_params_of(kdf: &Kdf) -> Result<KdfParams> {
    Ok(match kdf {
        Kdf::Pbkdf2 {
            hash, iterations, ..
        } => KdfParams::Pbkdf2 {
            hash: keyslot::hash_alg(hash, "keyslot PBKDF2 hash")?,
            iterations: *iterations,
        },
        Kdf::Argon2 {
            variant,
            time,
            memory,
            cpus,
            ..
        } => KdfParams::Argon2 {
            variant: *variant,
            time: *time,
            memory_kib: *memory,
            parallel: *cpus,
        },
    })
}

impl<S: Storage> Volume<S> {
    /// Formats `storage` as a LUKS2 device (or detached header) holding `volume_key` in one
    /// keyslot opened by `passphrase`, as `cryptsetup luksFormat --type luks2` does.
    ///
    /// Writes the keyslots area (random bytes, then the keyslot), and for an attached
    /// header zeros up to the data offset; then both header copies. It does not write past
    /// the data offset: the caller sizes the data area.
    ///
    /// # Errors
    /// [`Error::Invalid`] for options cryptsetup would refuse (sizes, offsets, label
    /// length, key length), [`Error::UnsupportedCipher`], I/O and crypto errors.
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
        let key_len = (opts.key_size_bits / 8) as usize;
        cipher_spec(&opts.cipher, key_len)?;
        if volume_key.len() != key_len {
            return Err(inv(format!(
                "the volume key has {} bytes but key_size_bits {} needs {key_len}",
                volume_key.len(),
                opts.key_size_bits
            )));
        }
        let md = opts.metadata_size;
        if !METADATA_SIZES.contains(&md) {
            return Err(inv(format!(
                "metadata size {md} is not one of 16K, 32K, 64K, 128K, 256K, 512K, 1M, 2M, 4M"
            )));
        }
        opts.kdf.check()?;
        if opts.digest_iterations < MIN_PBKDF2_ITERATIONS {
            return Err(inv(format!(
                "digest iterations {} is below cryptsetup's minimum of {MIN_PBKDF2_ITERATIONS}",
                opts.digest_iterations
            )));
        }
        let label = check_text("label", &opts.label)?;
        let subsystem = check_text("subsystem", &opts.subsystem)?;
        let uuid = match &opts.uuid {
            Some(u) => uuid::Uuid::parse_str(u)
                .map_err(|e| inv(format!("UUID {u:?} does not parse: {e}")))?
                .hyphenated()
                .to_string(),
            None => uuid::Uuid::new_v4().hyphenated().to_string(),
        };
        let slot = opts.keyslot.unwrap_or(0);
        if slot >= MAX_KEYSLOTS {
            return Err(inv(format!("keyslot {slot} is not below {MAX_KEYSLOTS}")));
        }
        let ss = opts.sector_size.bytes() as u64;

        // Layout (cryptsetup `LUKS2_generate_hdr`).
        let min = 2 * md;
        let keyslots_size = match (opts.keyslots_size, opts.data_offset) {
            (Some(k), _) => k,
            (None, Some(d)) if d > 0 => {
                let k = d.checked_sub(min).ok_or_else(|| {
                    inv(format!(
                        "data offset {d} is inside the two {md}-byte header copies; use at least {min}"
                    ))
                })?;
                (k - k % 4096).min(MAX_KEYSLOTS_SIZE)
            }
            _ => DEFAULT_HDR_AREA - min,
        };
        if keyslots_size == 0 || keyslots_size % 4096 != 0 || keyslots_size > MAX_KEYSLOTS_SIZE {
            return Err(inv(format!(
                "keyslots size {keyslots_size} must be a non-zero multiple of 4096 up to {MAX_KEYSLOTS_SIZE}"
            )));
        }
        let areas_end = min + keyslots_size;
        let data_offset = match opts.data_offset {
            Some(d) => d,
            None if opts.detached => 0,
            None if opts.keyslots_size.is_some() => areas_end.div_ceil(1 << 20) * (1 << 20),
            None => DEFAULT_HDR_AREA,
        };
        if data_offset % ss != 0 {
            return Err(inv(format!(
                "data offset {data_offset} is not a multiple of the {ss}-byte sector size"
            )));
        }
        if data_offset != 0 && data_offset < areas_end {
            return Err(inv(format!(
                "data offset {data_offset} is inside the header and keyslots area, which ends at {areas_end}"
            )));
        }
        if !opts.detached && data_offset == 0 {
            return Err(inv("an attached header needs a non-zero data offset".into()));
        }
        let area_size = keyslot_area_size(key_len);
        if area_size > keyslots_size {
            return Err(inv(format!(
                "keyslots size {keyslots_size} cannot hold one {area_size}-byte keyslot"
            )));
        }

        let mut digest = keyslot::new_digest(opts.digest_hash, opts.digest_iterations, volume_key)?;
        digest.keyslots = vec![slot];
        digest.segments = vec![0];
        let ks = Keyslot {
            kind: "luks2".into(),
            key_size: key_len as u32,
            af: Some(Af {
                kind: "luks1".into(),
                stripes: AF_STRIPES,
                hash: opts.digest_hash.as_str().into(),
                extra: Default::default(),
            }),
            area: Area {
                kind: "raw".into(),
                offset: min,
                size: area_size,
                encryption: Some(opts.cipher.clone()),
                key_size: Some(key_len as u32),
                extra: Default::default(),
            },
            kdf: Some(opts.kdf.to_kdf()?),
            priority: None,
            extra: Default::default(),
        };
        let segment = Segment {
            kind: "crypt".into(),
            offset: data_offset,
            size: None,
            iv_tweak: Some(0),
            encryption: Some(opts.cipher.clone()),
            sector_size: Some(ss as u32),
            integrity: None,
            flags: None,
            extra: Default::default(),
        };
        let metadata = Metadata {
            keyslots: BTreeMap::from([(slot, ks)]),
            tokens: BTreeMap::new(),
            segments: BTreeMap::from([(0, segment)]),
            digests: BTreeMap::from([(0, digest)]),
            config: Config {
                json_size: md - super::BIN_HDR_LEN,
                keyslots_size,
                flags: None,
                requirements: None,
                extra: Default::default(),
            },
            extra: Default::default(),
        };
        let header = Header {
            hdr_size: md,
            seqid: 1,
            label,
            subsystem,
            uuid,
            checksum_alg: "sha256".into(),
            salts: [random_array()?, random_array()?],
            metadata,
        };
        header.validate()?;
        // Encode first: nothing is written if the header cannot be.
        header.encode_copy(Copy::Primary)?;

        let material = {
            let k = &header.metadata.keyslots[&slot];
            let p = slot_params(slot, k)?;
            keyslot::seal(&p, passphrase, volume_key)?
        };
        // cryptsetup `LUKS2_wipe_header_areas`: zeros up to the data offset (the first 4 KiB
        // for a detached header), random bytes over the keyslots area.
        write_zeros(&mut storage, 0, min, "zeroing the header area")?;
        if !opts.detached && data_offset > areas_end {
            write_zeros(
                &mut storage,
                areas_end,
                data_offset - areas_end,
                "zeroing up to the data offset",
            )?;
        }
        wipe_random(&mut storage, min, keyslots_size, "wiping the keyslots area")?;
        storage::write_at(
            &mut storage,
            min,
            material.expose(),
            &format!("keyslot {slot} area"),
        )?;
        storage::sync(&mut storage, "writing the keyslot")?;
        write_header(&mut storage, &header)?;
        tracing::debug!(uuid = %header.uuid, keyslot = slot, "formatted LUKS2 header");
        let report = LoadReport {
            primary: Ok(header.seqid),
            secondary: Ok(header.seqid),
            used: Copy::Primary,
            needs_repair: false,
        };
        Ok(Volume {
            storage,
            header,
            report,
            limits: KdfLimits::default(),
        })
    }

    /// Reads both header copies and keeps the valid one with the higher sequence id (the
    /// primary at 0; the secondary at the primary's `hdr_size`, or, if the primary is
    /// damaged, at the first of the nine possible offsets that holds one). Never writes:
    /// see [`Volume::repair`].
    ///
    /// # Errors
    /// [`Error::NotLuks`], [`Error::UnsupportedVersion`], [`Error::NoValidHeader`] (with
    /// both reasons), [`Error::DeviceTooSmall`], I/O errors.
    pub fn open(mut storage: S) -> Result<Self> {
        let (header, report) = read_header(&mut storage)?;
        tracing::debug!(uuid = %header.uuid, seqid = header.seqid, used = %report.used, needs_repair = report.needs_repair, "opened LUKS2 header");
        Ok(Volume {
            storage,
            header,
            report,
            limits: KdfLimits::default(),
        })
    }

    /// What [`Volume::open`] found in the two copies.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// Bounds the key derivations that unlocking may run (default: [`KdfLimits::default`]).
    pub fn set_kdf_limits(&mut self, limits: KdfLimits) {
        self.limits = limits;
    }

    /// The bounds on key derivations named by this header.
    pub fn kdf_limits(&self) -> KdfLimits {
        self.limits
    }

    /// Checks what keyslot `id` and `digest` would cost against the limits.
    fn check_costs(&self, ids: &[u32], digest: u32) -> Result<()> {
        let md = &self.header.metadata;
        for id in ids {
            let cost = match md.keyslots.get(id).and_then(|k| k.kdf.as_ref()) {
                Some(Kdf::Pbkdf2 { iterations, .. }) => KdfCost::Pbkdf2 {
                    iterations: *iterations,
                },
                Some(Kdf::Argon2 { time, memory, .. }) => KdfCost::Argon2 {
                    time: *time,
                    memory_kib: *memory,
                },
                None => continue,
            };
            self.limits.check(&format!("keyslot {id}"), cost)?;
        }
        if let Some(p) = md.digests.get(&digest).and_then(|d| d.params.as_ref()) {
            self.limits.check(
                &format!("digest {digest}"),
                KdfCost::Pbkdf2 {
                    iterations: p.iterations,
                },
            )?;
        }
        Ok(())
    }

    /// Rewrites the damaged or stale copy from the one in use (with a fresh binary salt, as
    /// cryptsetup's recovery does). Returns whether anything was written.
    ///
    /// # Errors
    /// I/O errors.
    pub fn repair(&mut self) -> Result<bool> {
        if !self.report.needs_repair {
            return Ok(false);
        }
        if let Some(b) = self.blockers().into_iter().next() {
            return Err(Error::Blocked(b));
        }
        let bad = match self.report.used {
            Copy::Primary => Copy::Secondary,
            Copy::Secondary => Copy::Primary,
        };
        self.header.salts[usize::from(bad == Copy::Secondary)] = random_array()?;
        write_copy(&mut self.storage, &self.header, bad)?;
        tracing::info!(uuid = %self.header.uuid, copy = %bad, "repaired LUKS2 header copy");
        self.report = LoadReport {
            primary: Ok(self.header.seqid),
            secondary: Ok(self.header.seqid),
            used: self.report.used,
            needs_repair: false,
        };
        Ok(true)
    }

    /// The header in use.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Why this volume can be read and dumped but not opened or changed: requirement flags
    /// (`config.requirements.mandatory`), a reencryption in progress or interrupted,
    /// hardware OPAL or dm-integrity segments. Empty for a volume sealvol can use.
    pub fn blockers(&self) -> Vec<Blocker> {
        blockers(&self.header.metadata)
    }

    /// `Some(reason)` when sealvol may read this header but not change it (see
    /// [`Volume::blockers`]).
    pub fn read_only(&self) -> Option<String> {
        let b = self.blockers();
        (!b.is_empty()).then(|| {
            b.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn check_writable(&self) -> Result<()> {
        match self.blockers().into_iter().next() {
            Some(b) => Err(Error::Blocked(b)),
            None => Ok(()),
        }
    }

    /// Writes `new` as the next header generation (seqid + 1), both copies.
    fn commit(&mut self, mut new: Header) -> Result<()> {
        new.seqid = self
            .header
            .seqid
            .checked_add(1)
            .ok_or_else(|| inv("the header sequence id is at its maximum".into()))?;
        new.validate()?;
        new.encode_copy(Copy::Primary)?;
        // From here the disk may hold the new generation: never reuse its seqid.
        self.header.seqid = new.seqid;
        write_header(&mut self.storage, &new)?;
        self.report = LoadReport {
            primary: Ok(new.seqid),
            secondary: Ok(new.seqid),
            used: Copy::Primary,
            needs_repair: false,
        };
        self.header = new;
        Ok(())
    }

    /// The data segment (the single regular `crypt` segment), checked for use.
    ///
    /// # Errors
    /// [`Error::Invalid`] when there is not exactly one regular segment (reencryption in
    /// progress) or its offset is not sector aligned; [`Error::UnsupportedCipher`] for a
    /// cipher sealvol does not implement (never `cipher_null`) or integrity protection.
    pub fn data_segment(&self) -> Result<DataSegment> {
        self.check_writable()?;
        let md = &self.header.metadata;
        let regular: Vec<_> = md.segments.iter().filter(|(_, s)| !s.is_backup()).collect();
        let [(&id, seg)] = regular.as_slice() else {
            return Err(inv(format!(
                "expected one data segment, found {} (a reencryption in progress?)",
                regular.len()
            )));
        };
        if seg.kind != "crypt" {
            return Err(Error::Unsupported {
                what: "data segment type",
                name: format!(
                    "{} (segment {id}; sealvol implements only \"crypt\" segments)",
                    seg.kind
                ),
            });
        }
        let cipher = seg.encryption.clone().unwrap_or_default();
        let key_size = md
            .digest_of_segment(id)
            .and_then(|d| md.digests[&d].keyslots.first().copied())
            .and_then(|k| md.keyslots.get(&k))
            .map(|k| k.key_size as usize)
            .unwrap_or(0);
        if key_size == 0 {
            keyslot::cipher_spec_any_key(&cipher)?;
        } else {
            cipher_spec(&cipher, key_size)?;
        }
        if let Some(integrity) = &seg.integrity {
            return Err(Error::UnsupportedCipher {
                spec: cipher,
                part: sealvol_crypto::spec::CipherPart::Integrity,
                found: integrity.to_string(),
                hint: "sealvol reads volumes without dm-integrity only".into(),
            });
        }
        let sector_size = SectorSize::try_from(u64::from(seg.sector_size.unwrap_or(0)))?;
        let ss = sector_size.bytes() as u64;
        if seg.offset % ss != 0 {
            return Err(inv(format!(
                "segment {id} offset {} is not a multiple of its {ss}-byte sector size",
                seg.offset
            )));
        }
        let iv_tweak = seg.iv_tweak.unwrap_or(0);
        if iv_tweak % sector_size.iv_units() != 0 {
            return Err(inv(format!(
                "segment {id} iv_tweak {iv_tweak} is not a multiple of its sector size in 512-byte units"
            )));
        }
        Ok(DataSegment {
            id,
            offset: seg.offset,
            size: seg.size,
            iv_tweak,
            sector_size,
            cipher,
            key_size,
        })
    }

    /// The data segment, refused when it starts inside an attached header's area (offset 0,
    /// valid only for a detached header).
    ///
    /// # Errors
    /// [`Error::DataOverlapsHeader`]; as [`Volume::data_segment`].
    pub fn data_segment_for(&self, placement: crate::HeaderPlacement) -> Result<DataSegment> {
        let seg = self.data_segment()?;
        crate::any::check_placement(&seg, self.header_area_len(), placement)?;
        Ok(seg)
    }

    /// The digest id of the data segment.
    fn segment_digest(&self) -> Result<(u32, DataSegment)> {
        let seg = self.data_segment()?;
        let d = self
            .header
            .metadata
            .digest_of_segment(seg.id)
            .ok_or_else(|| inv(format!("segment {} has no digest", seg.id)))?;
        Ok((d, seg))
    }

    fn read_material(&mut self, p: &keyslot::SlotParams<'_>) -> Result<SecretBytes> {
        let mut m = SecretBytes::zeroed(keyslot::material_len(p.key_len));
        let off = p.area_offset;
        storage::read_at(&mut self.storage, off, m.expose_mut(), "keyslot area")?;
        Ok(m)
    }

    /// Tries one keyslot: `Ok(Some(key))` when it opens and the key matches the digest.
    fn try_keyslot(
        &mut self,
        id: u32,
        digest: u32,
        passphrase: &[u8],
    ) -> Result<Option<SecretBytes>> {
        let k = self
            .header
            .metadata
            .keyslots
            .get(&id)
            .ok_or(Error::NoSuchKeyslot(id))?
            .clone();
        let p = slot_params(id, &k).map_err(|e| Error::UnusableKeyslot {
            id,
            reason: Box::new(e),
        })?;
        let material = self.read_material(&p)?;
        let candidate = keyslot::open(&p, passphrase, material)?;
        let d = &self.header.metadata.digests[&digest];
        Ok(keyslot::digest_matches(d, &candidate)?.then_some(candidate))
    }

    /// Finds the volume key with `passphrase`: the named keyslot, or every keyslot of the
    /// data segment's digest in cryptsetup's order (priority 2 "prefer" first, then 1
    /// "normal"; priority 0 "ignore" only when named), each checked against the digest.
    ///
    /// # Errors
    /// [`Error::WrongKey`] when no keyslot opens; [`Error::UnsupportedCipher`] when the data
    /// segment uses a cipher sealvol does not implement; [`Error::UnusableKeyslot`] (with
    /// the reason, e.g. [`Error::UnsupportedCipher`] naming the part) when every candidate
    /// keyslot is one sealvol cannot use, or the named one is; [`Error::NoSuchKeyslot`].
    pub fn unlock(&mut self, passphrase: &[u8], keyslot: Option<u32>) -> Result<Unlocked> {
        let (digest, _seg) = self.segment_digest()?;
        let slots = self.header.metadata.digests[&digest].keyslots.clone();
        if let Some(id) = keyslot {
            if !self.header.metadata.keyslots.contains_key(&id) {
                return Err(Error::NoSuchKeyslot(id));
            }
            if !slots.contains(&id) {
                return Err(inv(format!(
                    "keyslot {id} does not hold the data segment's key"
                )));
            }
            self.check_costs(&[id], digest)?;
            return match self.try_keyslot(id, digest, passphrase)? {
                Some(volume_key) => Ok(Unlocked {
                    keyslot: id,
                    volume_key,
                }),
                None => Err(Error::WrongKey),
            };
        }
        // Keyslots sealvol cannot use (an unknown type, KDF or cipher) are passed over, as
        // cryptsetup passes over keyslots it cannot open; the others still unlock.
        let mut unusable: Vec<(u32, Error)> = Vec::new();
        let mut order: Vec<(u32, u32)> = Vec::new();
        for id in &slots {
            let Some(k) = self.header.metadata.keyslots.get(id) else {
                continue;
            };
            let p = k.effective_priority();
            if p != 1 && p != 2 {
                continue;
            }
            match slot_params(*id, k) {
                Err(why) => unusable.push((*id, why)),
                Ok(_) => order.push((*id, p)),
            }
        }
        if order.is_empty() {
            if let Some((id, why)) = unusable.into_iter().next() {
                return Err(Error::UnusableKeyslot {
                    id,
                    reason: Box::new(why),
                });
            }
        }
        order.sort_by_key(|&(id, p)| (std::cmp::Reverse(p), id));
        // Every cost is checked before any derivation starts.
        let ids: Vec<u32> = order.iter().map(|&(id, _)| id).collect();
        self.check_costs(&ids, digest)?;
        let mut tried = false;
        let mut refused: Option<Error> = None;
        for (id, _) in order {
            match self.try_keyslot(id, digest, passphrase) {
                Ok(Some(volume_key)) => {
                    tracing::debug!(keyslot = id, "keyslot opened");
                    return Ok(Unlocked {
                        keyslot: id,
                        volume_key,
                    });
                }
                Ok(None) => tried = true,
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(keyslot = id, error = %e, "keyslot skipped");
                    refused.get_or_insert(e);
                }
            }
        }
        match (tried, refused) {
            (false, Some(e)) => Err(e),
            _ => Err(Error::WrongKey),
        }
    }

    /// Whether `vk` is this volume's key (checked against the data segment's digest).
    ///
    /// # Errors
    /// As [`Volume::data_segment`].
    pub fn verify_volume_key(&self, vk: &SecretBytes) -> Result<bool> {
        let (digest, _) = self.segment_digest()?;
        self.check_costs(&[], digest)?;
        keyslot::digest_matches(&self.header.metadata.digests[&digest], vk)
    }

    fn free_keyslot_id(&self, want: Option<u32>) -> Result<u32> {
        match want {
            Some(id) if id >= MAX_KEYSLOTS => {
                Err(inv(format!("keyslot {id} is not below {MAX_KEYSLOTS}")))
            }
            Some(id) if self.header.metadata.keyslots.contains_key(&id) => {
                Err(Error::KeyslotInUse(id))
            }
            Some(id) => Ok(id),
            None => (0..MAX_KEYSLOTS)
                .find(|i| !self.header.metadata.keyslots.contains_key(i))
                .ok_or_else(|| {
                    Error::NoFreeKeyslot(format!("all {MAX_KEYSLOTS} keyslots are in use"))
                }),
        }
    }

    /// Builds a header with a new keyslot for `volume_key` and writes the keyslot area
    /// (not the header).
    fn stage_keyslot(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        kdf: &KdfParams,
        id: u32,
        priority: Option<u32>,
    ) -> Result<Header> {
        kdf.check()?;
        let (digest, seg) = self.segment_digest()?;
        if !keyslot::digest_matches(&self.header.metadata.digests[&digest], volume_key)? {
            return Err(Error::WrongKey);
        }
        let key_len = volume_key.len();
        let size = keyslot_area_size(key_len);
        let offset = find_area_gap(&self.header, size).ok_or_else(|| {
            Error::NoFreeKeyslot(format!(
                "the {}-byte keyslots area has no free {size}-byte gap",
                self.header.keyslots_size()
            ))
        })?;
        let ks = Keyslot {
            kind: "luks2".into(),
            key_size: key_len as u32,
            af: Some(Af {
                kind: "luks1".into(),
                stripes: AF_STRIPES,
                hash: HashAlg::Sha256.as_str().into(),
                extra: Default::default(),
            }),
            area: Area {
                kind: "raw".into(),
                offset,
                size,
                // As cryptsetup (`crypt_keyslot_get_encryption`): the area reuses the data
                // segment's cipher with the volume key's size.
                encryption: Some(seg.cipher.clone()),
                key_size: Some(key_len as u32),
                extra: Default::default(),
            },
            kdf: Some(kdf.to_kdf()?),
            priority,
            extra: Default::default(),
        };
        let mut new = self.header.clone();
        new.metadata.keyslots.insert(id, ks);
        let d = new
            .metadata
            .digests
            .get_mut(&digest)
            .expect("digest exists");
        d.keyslots.push(id);
        d.keyslots.sort_unstable();
        new.seqid = self.header.seqid + 1;
        new.validate()?;
        new.encode_copy(Copy::Primary)?;
        let material = {
            let p = slot_params(id, &new.metadata.keyslots[&id])?;
            keyslot::seal(&p, passphrase, volume_key)?
        };
        storage::write_at(
            &mut self.storage,
            offset,
            material.expose(),
            &format!("keyslot {id} area"),
        )?;
        storage::sync(&mut self.storage, "writing the keyslot area")?;
        Ok(new)
    }

    /// Adds a keyslot holding `volume_key` (which must match the digest), opened by
    /// `passphrase`, in slot `keyslot` or the lowest free one, in the first free gap of the
    /// keyslots area. Returns the slot id. The area is written before the header, so a crash
    /// leaves the old header valid.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::WrongKey`] (key does not match), [`Error::KeyslotInUse`],
    /// [`Error::NoFreeKeyslot`], [`Error::MetadataTooLarge`], [`Error::Invalid`] (KDF limits).
    pub fn add_keyslot(
        &mut self,
        volume_key: &SecretBytes,
        passphrase: &[u8],
        kdf: &KdfParams,
        keyslot: Option<u32>,
    ) -> Result<u32> {
        self.check_writable()?;
        let id = self.free_keyslot_id(keyslot)?;
        let new = self.stage_keyslot(volume_key, passphrase, kdf, id, None)?;
        self.commit(new)?;
        tracing::info!(uuid = %self.header.uuid, keyslot = id, "added keyslot");
        Ok(id)
    }

    /// The header without keyslot `id`: removed from keyslots, digests and tokens.
    fn without_keyslot(&self, id: u32) -> Header {
        let mut new = self.header.clone();
        new.metadata.keyslots.remove(&id);
        for d in new.metadata.digests.values_mut() {
            d.keyslots.retain(|&k| k != id);
        }
        for t in new.metadata.tokens.values_mut() {
            if let Some(Value::Array(a)) = t.get_mut("keyslots") {
                a.retain(|v| v.as_str() != Some(id.to_string().as_str()));
            }
        }
        new
    }

    fn remove_keyslot_unchecked(&mut self, id: u32) -> Result<()> {
        let area = self.header.metadata.keyslots[&id].area.clone();
        let new = self.without_keyslot(id);
        // Fail before touching the disk if the result would not be valid.
        new.validate()?;
        wipe_random(
            &mut self.storage,
            area.offset,
            area.size,
            &format!("wiping keyslot {id} area"),
        )?;
        self.commit(new)?;
        tracing::info!(uuid = %self.header.uuid, keyslot = id, "removed keyslot");
        Ok(())
    }

    /// Removes keyslot `keyslot`: overwrites its area with random bytes (synced), then
    /// drops it from the keyslots, its digest and any token. Refuses the last keyslot that
    /// opens the data (use [`Volume::erase`] to destroy all on purpose).
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::NoSuchKeyslot`], [`Error::LastKeyslot`].
    pub fn remove_keyslot(&mut self, keyslot: u32) -> Result<()> {
        self.check_writable()?;
        if !self.header.metadata.keyslots.contains_key(&keyslot) {
            return Err(Error::NoSuchKeyslot(keyslot));
        }
        if let Ok((digest, _)) = self.segment_digest() {
            let slots = &self.header.metadata.digests[&digest].keyslots;
            if slots.len() == 1 && slots[0] == keyslot {
                return Err(Error::LastKeyslot(keyslot));
            }
        }
        self.remove_keyslot_unchecked(keyslot)
    }

    /// Replaces the passphrase of a keyslot (`cryptsetup luksChangeKey`): unlocks with
    /// `old` (in `keyslot` if given), writes a new keyslot for `new` (same priority, KDF
    /// `kdf` or the old slot's parameters, tokens moved over), then removes the old slot.
    /// A crash at any point leaves a header where at least one of the two passphrases
    /// works. Returns the new slot id.
    ///
    /// # Errors
    /// As [`Volume::unlock`] and [`Volume::add_keyslot`].
    pub fn change_key(
        &mut self,
        old: &[u8],
        new: &[u8],
        kdf: Option<&KdfParams>,
        keyslot: Option<u32>,
    ) -> Result<u32> {
        self.check_writable()?;
        let unlocked = self.unlock(old, keyslot)?;
        let old_id = unlocked.keyslot;
        let old_slot = self.header.metadata.keyslots[&old_id].clone();
        let params = match kdf {
            Some(k) => *k,
            None => kdf_params_of(
                old_slot
                    .kdf
                    .as_ref()
                    .ok_or_else(|| inv(format!("keyslot {old_id} has no kdf")))?,
            )?,
        };
        let new_id = self.free_keyslot_id(None)?;
        let mut staged = self.stage_keyslot(
            &unlocked.volume_key,
            new,
            &params,
            new_id,
            old_slot.priority,
        )?;
        let (old_s, new_s) = (old_id.to_string(), new_id.to_string());
        for t in staged.metadata.tokens.values_mut() {
            if let Some(Value::Array(a)) = t.get_mut("keyslots") {
                if a.iter().any(|v| v.as_str() == Some(old_s.as_str())) {
                    a.push(Value::String(new_s.clone()));
                }
            }
        }
        self.commit(staged)?;
        self.remove_keyslot_unchecked(old_id)?;
        Ok(new_id)
    }

    /// Adds a token (§3.3): a JSON object with a string `type` and a `keyslots` array of
    /// existing keyslot ids, as id `id` or the lowest free one (at most 32 tokens).
    ///
    /// # Errors
    /// [`Error::InvalidToken`], [`Error::TokenInUse`], [`Error::ReadOnly`],
    /// [`Error::MetadataTooLarge`].
    pub fn add_token(&mut self, token: Value, id: Option<u32>) -> Result<u32> {
        self.check_writable()?;
        let Value::Object(o) = &token else {
            return Err(Error::InvalidToken(format!(
                "expected a JSON object, found {}",
                super::json::show(&token)
            )));
        };
        match o.get("type") {
            Some(Value::String(_)) => {}
            _ => return Err(Error::InvalidToken("missing string field \"type\"".into())),
        }
        let ks = o
            .get("keyslots")
            .ok_or_else(|| Error::InvalidToken("missing array field \"keyslots\"".into()))?;
        let ids = super::json::ids(ks, "token.keyslots", MAX_KEYSLOTS)
            .map_err(|e| Error::InvalidToken(e.to_string()))?;
        for k in ids {
            if !self.header.metadata.keyslots.contains_key(&k) {
                return Err(Error::InvalidToken(format!("keyslot {k} does not exist")));
            }
        }
        let tokens = &self.header.metadata.tokens;
        let id = match id {
            Some(i) if i >= MAX_KEYSLOTS => {
                return Err(Error::InvalidToken(format!(
                    "token id {i} is not below {MAX_KEYSLOTS}"
                )))
            }
            Some(i) if tokens.contains_key(&i) => return Err(Error::TokenInUse(i)),
            Some(i) => i,
            None => (0..MAX_KEYSLOTS)
                .find(|i| !tokens.contains_key(i))
                .ok_or_else(|| {
                    Error::InvalidToken(format!("all {MAX_KEYSLOTS} token ids are in use"))
                })?,
        };
        let mut new = self.header.clone();
        new.metadata.tokens.insert(id, token);
        self.commit(new)?;
        Ok(id)
    }

    /// Removes token `id`.
    ///
    /// # Errors
    /// [`Error::NoSuchToken`], [`Error::ReadOnly`].
    pub fn remove_token(&mut self, id: u32) -> Result<()> {
        self.check_writable()?;
        if !self.header.metadata.tokens.contains_key(&id) {
            return Err(Error::NoSuchToken(id));
        }
        let mut new = self.header.clone();
        new.metadata.tokens.remove(&id);
        self.commit(new)
    }

    /// Destroys every keyslot (`cryptsetup luksErase`): overwrites the whole keyslots area
    /// with random bytes (synced), then writes both header copies without keyslots (digests
    /// and tokens lose their keyslot references). The data becomes unrecoverable unless the
    /// volume key was saved elsewhere.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], I/O errors.
    pub fn erase(&mut self) -> Result<()> {
        self.check_writable()?;
        let mut new = self.header.clone();
        let ids: Vec<u32> = new.metadata.keyslots.keys().copied().collect();
        new.metadata.keyslots.clear();
        for d in new.metadata.digests.values_mut() {
            d.keyslots.clear();
        }
        for t in new.metadata.tokens.values_mut() {
            if let Some(Value::Array(a)) = t.get_mut("keyslots") {
                a.clear();
            }
        }
        new.validate()?;
        wipe_random(
            &mut self.storage,
            self.header.keyslots_offset(),
            self.header.keyslots_size(),
            "wiping the keyslots area",
        )?;
        self.commit(new)?;
        tracing::info!(uuid = %self.header.uuid, keyslots = ?ids, "erased all keyslots");
        Ok(())
    }

    /// Bytes a header backup covers: both copies and the keyslots area
    /// (`2 * hdr_size + keyslots_size`, the size of a `cryptsetup luksHeaderBackup` file).
    pub fn header_area_len(&self) -> u64 {
        self.header.areas_len()
    }

    /// The raw bytes of the header area (what `cryptsetup luksHeaderBackup` writes).
    ///
    /// # Errors
    /// I/O errors.
    pub fn header_backup(&mut self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.header_area_len() as usize];
        storage::read_at(&mut self.storage, 0, &mut b, "the header area for a backup")?;
        Ok(b)
    }

    /// Writes a header backup onto `storage` (`cryptsetup luksHeaderRestore`) and opens it.
    /// The backup must hold a valid LUKS2 header; if `storage` already holds one, its data
    /// offset and header area size must match the backup's.
    ///
    /// # Errors
    /// Any error of [`Volume::open`] on the backup; [`Error::Invalid`] on a layout mismatch
    /// or a short backup.
    pub fn header_restore(mut storage: S, backup: &[u8]) -> Result<Self> {
        let (bh, _) = read_header(&mut std::io::Cursor::new(backup.to_vec()))?;
        let len = bh.areas_len();
        if (backup.len() as u64) < len {
            return Err(inv(format!(
                "the backup has {} bytes but its header area is {len}",
                backup.len()
            )));
        }
        if let Ok((cur, _)) = read_header(&mut storage) {
            if cur.data_offset() != bh.data_offset() {
                return Err(inv(format!(
                    "the data offset differs: {} on the device, {} in the backup",
                    cur.data_offset(),
                    bh.data_offset()
                )));
            }
            if cur.areas_len() != bh.areas_len() {
                return Err(inv(format!(
                    "the header area size differs: {} on the device, {} in the backup",
                    cur.areas_len(),
                    bh.areas_len()
                )));
            }
        }
        storage::write_at(
            &mut storage,
            0,
            &backup[..len as usize],
            "the restored header area",
        )?;
        storage::sync(&mut storage, "restoring the header")?;
        Self::open(storage)
    }

    /// The underlying storage (for the data segment, when the header is attached).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives back the storage.
    pub fn into_storage(self) -> S {
        self.storage
    }
}
