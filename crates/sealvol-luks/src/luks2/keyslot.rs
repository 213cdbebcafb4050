//! Keyslot and digest cryptography (§3.2, §3.5; cryptsetup `luks2_keyslot_luks2.c`,
//! `luks2_digest_pbkdf2.c`).
//!
//! A `luks2` keyslot stores the volume key AF-split into 4000 stripes (`af`), encrypted
//! with the area cipher (its `encryption`, any [`CipherSpec`] sealvol implements, with the
//! area's `key_size`) in 512-byte sectors whose IVs start at 0 at the start of the area,
//! under a key derived from the passphrase by the keyslot KDF. A `pbkdf2` digest checks a
//! candidate volume key.

use super::metadata::{Digest, Kdf, Keyslot};
use super::AF_STRIPES;

/// Largest Argon2 memory cost accepted from a header: 4 GiB, cryptsetup's maximum.
const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Most Argon2 lanes accepted from a header (cryptsetup's maximum).
const MAX_ARGON2_LANES: u32 = 4;
use crate::{Error, Result};
use sealvol_crypto::{af, kdf, CipherSpec, HashAlg, SecretBytes, SectorCipher, SectorSize};

/// The cipher specification `name` with a `key_len`-byte key, as sealvol implements it
/// ([`CipherSpec::parse`]; `cipher_null`, `ecb` and the rest are
/// [`Error::UnsupportedCipher`]).
pub(crate) fn cipher_spec(name: &str, key_len: usize) -> Result<CipherSpec> {
    Ok(CipherSpec::parse(name, key_len)?)
}

/// The specification `name` whatever its key size (a header with no keyslot left does not
/// say it): the first key length its mode allows.
pub(crate) fn cipher_spec_any_key(name: &str) -> Result<CipherSpec> {
    let mut first = None;
    for len in [64, 32, 48, 16, 24] {
        match CipherSpec::parse(name, len) {
            Ok(s) => return Ok(s),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.expect("at least one attempt").into())
}

/// The hash a header names (sha1, sha256, sha512, ripemd160, whirlpool; exact lowercase, as
/// cryptsetup writes them).
pub(crate) fn hash_alg(name: &str, what: &'static str) -> Result<HashAlg> {
    HashAlg::from_luks_name(name).ok_or_else(|| Error::Unsupported {
        what,
        name: name.to_string(),
    })
}

/// Derives `len` bytes from `passphrase` with the keyslot KDF.
pub(crate) fn derive(kdf_obj: &Kdf, passphrase: &[u8], len: usize) -> Result<SecretBytes> {
    let mut out = SecretBytes::zeroed(len);
    match kdf_obj {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => {
            let alg = hash_alg(hash, "keyslot PBKDF2 hash")?;
            kdf::pbkdf2(alg, passphrase, salt, *iterations, out.expose_mut())?;
        }
        Kdf::Argon2 {
            variant,
            time,
            memory,
            cpus,
            salt,
        } => {
            kdf::argon2(
                *variant,
                passphrase,
                salt,
                *time,
                *memory,
                *cpus,
                out.expose_mut(),
            )?;
        }
    }
    Ok(out)
}

/// Bytes of AF material for a `key_len`-byte key: `key_len * 4000` rounded up to 512
/// (cryptsetup `AF_split_sectors * SECTOR_SIZE`).
pub(crate) fn material_len(key_len: usize) -> usize {
    (key_len * AF_STRIPES as usize).div_ceil(512) * 512
}

/// The parts of a luks2 keyslot this crate can use, checked.
pub(crate) struct SlotParams<'a> {
    pub kdf: &'a Kdf,
    pub af_hash: HashAlg,
    pub area_offset: u64,
    /// The area's cipher (`encryption` with the area's `key_size`).
    pub area_spec: CipherSpec,
    pub key_len: usize,
}

/// Checks that `k` is a luks2 keyslot this crate can open: an area cipher sealvol implements,
/// 4000 stripes, a known AF hash, an area large enough for the material.
pub(crate) fn slot_params(id: u32, k: &Keyslot) -> Result<SlotParams<'_>> {
    if k.kind != "luks2" {
        return Err(Error::Unsupported {
            what: "keyslot type",
            name: k.kind.clone(),
        });
    }
    if id >= super::MAX_KEYSLOTS {
        return Err(Error::Unsupported {
            what: "keyslot id",
            name: format!("{id} (cryptsetup uses keyslots 0 to 31 only)"),
        });
    }
    let Some(kdf) = &k.kdf else {
        let raw = k.extra.get("kdf");
        let kind = raw
            .and_then(|v| v.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        return Err(match kind {
            "pbkdf2" | "argon2i" | "argon2id" => Error::Invalid(format!(
                "keyslot {id}: its {kind} kdf has parameters sealvol cannot use (a uint32 cost, a 32-byte base64 salt): {}",
                raw.map(super::json::show).unwrap_or_default()
            )),
            other => Error::Unsupported {
                what: "keyslot KDF",
                name: other.to_string(),
            },
        });
    };
    let (Some(af), Some(enc), Some(area_key)) = (&k.af, &k.area.encryption, k.area.key_size) else {
        return Err(Error::Invalid(format!(
            "keyslot {id}: its af splitter or its area's encryption or key_size is not in a form sealvol can use"
        )));
    };
    let area_spec = cipher_spec(enc, area_key as usize)?;
    if af.stripes != AF_STRIPES {
        return Err(Error::Invalid(format!(
            "keyslot {id} has {} AF stripes; LUKS2 keyslots use {AF_STRIPES}",
            af.stripes
        )));
    }
    if let Kdf::Argon2 {
        memory, cpus, time, ..
    } = kdf
    {
        // The header is untrusted: never let it demand more than cryptsetup's limits
        // (4 GiB, 4 lanes; `crypt_pbkdf_get_limits`), or a zero cost.
        if *memory > MAX_ARGON2_MEMORY_KIB || !(1..=MAX_ARGON2_LANES).contains(cpus) || *time == 0 {
            return Err(Error::Invalid(format!(
                "keyslot {id} Argon2 cost (time {time}, memory {memory} KiB, cpus {cpus}) is outside cryptsetup's limits (time >= 1, memory <= {MAX_ARGON2_MEMORY_KIB} KiB, 1..={MAX_ARGON2_LANES} cpus)"
            )));
        }
    }
    let af_hash = hash_alg(&af.hash, "keyslot AF hash")?;
    let key_len = k.key_size as usize;
    if key_len == 0 || key_len > 512 {
        return Err(Error::Invalid(format!(
            "keyslot {id} key_size {key_len} is outside 1..=512 bytes"
        )));
    }
    let need = material_len(key_len) as u64;
    if k.area.size < need {
        return Err(Error::Invalid(format!(
            "keyslot {id} area is {} bytes but a {key_len}-byte key needs {need}",
            k.area.size
        )));
    }
    Ok(SlotParams {
        kdf,
        af_hash,
        area_offset: k.area.offset,
        area_spec,
        key_len,
    })
}

/// AF-splits `volume_key` and encrypts it under the passphrase: the bytes to write at the
/// area offset.
pub(crate) fn seal(
    p: &SlotParams<'_>,
    passphrase: &[u8],
    volume_key: &SecretBytes,
) -> Result<SecretBytes> {
    let derived = derive(p.kdf, passphrase, p.area_spec.key_len())?;
    let split = af::split(volume_key.expose(), AF_STRIPES, p.af_hash)?;
    let mut material = SecretBytes::zeroed(material_len(p.key_len));
    material.expose_mut()[..split.len()].copy_from_slice(split.expose());
    drop(split);
    let mut cipher = SectorCipher::new(&p.area_spec, &derived)?;
    cipher.encrypt_sectors(material.expose_mut(), SectorSize::S512, 0)?;
    Ok(material)
}

/// Decrypts the area `material` (as read from disk, [`material_len`] bytes) under the
/// passphrase and merges the stripes: the candidate volume key.
pub(crate) fn open(
    p: &SlotParams<'_>,
    passphrase: &[u8],
    mut material: SecretBytes,
) -> Result<SecretBytes> {
    let derived = derive(p.kdf, passphrase, p.area_spec.key_len())?;
    let mut cipher = SectorCipher::new(&p.area_spec, &derived)?;
    cipher.decrypt_sectors(material.expose_mut(), SectorSize::S512, 0)?;
    let n = p.key_len * AF_STRIPES as usize;
    Ok(af::merge(
        &material.expose()[..n],
        p.key_len,
        AF_STRIPES,
        p.af_hash,
    )?)
}

/// Computes a digest's PBKDF2 over `volume_key`, `len` bytes.
pub(crate) fn digest_bytes(
    hash: &str,
    iterations: u32,
    salt: &[u8],
    volume_key: &[u8],
    len: usize,
) -> Result<Vec<u8>> {
    let alg = hash_alg(hash, "digest hash")?;
    let mut out = vec![0u8; len];
    kdf::pbkdf2(alg, volume_key, salt, iterations, &mut out)?;
    Ok(out)
}

/// True when `volume_key` matches the digest (constant-time compare).
///
/// # Errors
/// [`Error::Unsupported`] naming why a digest cannot check a key (type, parameters, hash).
pub(crate) fn digest_matches(d: &Digest, volume_key: &SecretBytes) -> Result<bool> {
    use subtle::ConstantTimeEq as _;
    let p = match (&d.params, d.unusable()) {
        (Some(p), None) => p,
        (_, why) => {
            return Err(Error::Unsupported {
                what: "digest",
                name: why.unwrap_or_default(),
            })
        }
    };
    let got = digest_bytes(
        &p.hash,
        p.iterations,
        &p.salt,
        volume_key.expose(),
        p.digest.len(),
    )?;
    Ok(bool::from(got.ct_eq(&p.digest)))
}

/// A new digest object over `volume_key`.
pub(crate) fn new_digest(
    hash: HashAlg,
    iterations: u32,
    volume_key: &SecretBytes,
) -> Result<Digest> {
    let salt = super::random_vec(super::metadata::SALT_LEN)?;
    let digest = digest_bytes(
        hash.as_str(),
        iterations,
        &salt,
        volume_key.expose(),
        hash.output_len(),
    )?;
    Ok(Digest {
        kind: "pbkdf2".into(),
        keyslots: Vec::new(),
        segments: Vec::new(),
        params: Some(super::metadata::DigestParams {
            hash: hash.as_str().into(),
            iterations,
            salt,
            digest,
        }),
        extra: Default::default(),
    })
}
