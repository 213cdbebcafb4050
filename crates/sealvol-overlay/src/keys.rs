//! The overlay's keys and what they derive (see `docs/overlay-format.md`, "Keys").
//!
//! - The **layer key** (64 bytes) is the volume key of the embedded LUKS2 header: the
//!   consumer's keys open its keyslots. It is used only to derive the two keys below and
//!   dropped.
//! - The **wrapping key** = HKDF-SHA512(layer key, [`LABEL_WRAP`] ‖ uuid), 32 bytes,
//!   wraps every master key with AES-256-GCM-SIV.
//! - The **root MAC key** = HKDF-SHA512(layer key, [`LABEL_ROOT_MAC`] ‖ uuid), 32 bytes,
//!   authenticates the root slot (HMAC-SHA256).
//! - Each generation's **master key** (64 random bytes) derives one key per extent (the
//!   clusters one write seals together): HKDF-SHA512(master key, [`LABEL_EXTENT`] ‖ nonce)
//!   → 32-byte AES-256-GCM-SIV key ‖ 12-byte AEAD nonce, XORed with each cluster's index.

use hmac::{KeyInit, Mac};
use sealvol_crypto::aead::GcmSiv;
use sealvol_crypto::hkdf::HkdfSha512;
use sealvol_crypto::SecretBytes;

use crate::format::{Wrapped, EXTENT_NONCE_LEN, MASTER_KEY_LEN, WRAPPED_LEN};
use crate::{Error, Result};

/// HKDF label of the wrapping key.
pub const LABEL_WRAP: &[u8] = b"sealvol-overlay v1 wrapping key";
/// HKDF label of the root MAC key.
pub const LABEL_ROOT_MAC: &[u8] = b"sealvol-overlay v1 root mac key";
/// HKDF label of an extent key (the domain label of the issue's
/// HKDF-SHA512(master key, label ‖ nonce)).
pub const LABEL_EXTENT: &[u8] = b"sealvol-overlay v1 extent key";
/// Additional data prefix of a wrapped own master key.
const AAD_GEN: &[u8] = b"sealvol-overlay v1 generation";
/// Additional data prefix of a wrapped inherited master key.
const AAD_INHERITED: &[u8] = b"sealvol-overlay v1 inherited";
/// Additional data prefix of a cluster.
const AAD_CLUSTER: &[u8] = b"sealvol-overlay v1 cluster";

/// The layer key and the keys a layer derives from it.
pub(crate) struct LayerKeys {
    /// Kept for snapshots, whose new layer shares the keyslots (and so the layer key).
    layer_key: SecretBytes,
    wrap: GcmSiv,
    mac: SecretBytes,
}

impl LayerKeys {
    pub(crate) fn derive(layer_key: &SecretBytes, uuid: &[u8; 16]) -> Result<Self> {
        let h = HkdfSha512::new(None, layer_key.expose());
        let wrap = h.expand(&[LABEL_WRAP, uuid], 32)?;
        let mac = h.expand(&[LABEL_ROOT_MAC, uuid], 32)?;
        Ok(LayerKeys {
            layer_key: layer_key.duplicate(),
            wrap: GcmSiv::new(wrap.expose())?,
            mac,
        })
    }

    /// The keys of another layer that shares this layer key (a snapshot's new layer).
    pub(crate) fn for_layer(&self, uuid: &[u8; 16]) -> Result<Self> {
        Self::derive(&self.layer_key, uuid)
    }

    /// HMAC-SHA256 of a root slot's content.
    pub(crate) fn mac(&self, content: &[u8]) -> [u8; 32] {
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(self.mac.expose())
            .expect("HMAC takes any key length");
        m.update(content);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `content` (constant time).
    pub(crate) fn verify(&self, content: &[u8], tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.mac(content).ct_eq(tag))
    }

    fn wrap_with(&self, aad: &[u8], key: &SecretBytes) -> Result<Wrapped> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| sealvol_crypto::Error::Random(e.to_string()))?;
        let mut ct = SecretBytes::from_slice(key.expose());
        let tag = self.wrap.seal_in_place(&nonce, aad, ct.expose_mut())?;
        let mut out = [0u8; WRAPPED_LEN];
        out[..12].copy_from_slice(&nonce);
        out[12..12 + MASTER_KEY_LEN].copy_from_slice(ct.expose());
        out[12 + MASTER_KEY_LEN..].copy_from_slice(&tag);
        Ok(Wrapped(out))
    }

    fn unwrap_with(&self, aad: &[u8], w: &Wrapped, what: &str) -> Result<SecretBytes> {
        let nonce: [u8; 12] = w.0[..12].try_into().expect("12 bytes");
        let tag: [u8; 16] = w.0[12 + MASTER_KEY_LEN..].try_into().expect("16 bytes");
        let mut key = SecretBytes::from_slice(&w.0[12..12 + MASTER_KEY_LEN]);
        self.wrap
            .open_in_place(&nonce, aad, key.expose_mut(), &tag)
            .map_err(|_| Error::Corrupt {
                what: what.to_string(),
                why: "the wrapped master key does not authenticate".into(),
            })?;
        Ok(key)
    }

    pub(crate) fn wrap_gen(&self, uuid: &[u8; 16], gen: u32, key: &SecretBytes) -> Result<Wrapped> {
        self.wrap_with(&gen_aad(uuid, gen), key)
    }

    pub(crate) fn unwrap_gen(&self, uuid: &[u8; 16], gen: u32, w: &Wrapped) -> Result<SecretBytes> {
        self.unwrap_with(&gen_aad(uuid, gen), w, &format!("generation {gen}"))
    }

    pub(crate) fn wrap_inherited(
        &self,
        uuid: &[u8; 16],
        lower: &[u8; 16],
        gen: u32,
        key: &SecretBytes,
    ) -> Result<Wrapped> {
        self.wrap_with(&inherited_aad(uuid, lower, gen), key)
    }

    pub(crate) fn unwrap_inherited(
        &self,
        uuid: &[u8; 16],
        lower: &[u8; 16],
        gen: u32,
        w: &Wrapped,
    ) -> Result<SecretBytes> {
        self.unwrap_with(
            &inherited_aad(uuid, lower, gen),
            w,
            &format!("inherited key of generation {gen}"),
        )
    }
}

fn gen_aad(uuid: &[u8; 16], gen: u32) -> Vec<u8> {
    [AAD_GEN, uuid, &gen.to_le_bytes()].concat()
}

fn inherited_aad(uuid: &[u8; 16], lower: &[u8; 16], gen: u32) -> Vec<u8> {
    [AAD_INHERITED, uuid, lower, &gen.to_le_bytes()].concat()
}

/// A generation's master key, ready to derive extent keys.
pub(crate) struct MasterKey {
    /// The raw key: kept only to wrap it again (snapshots, clones, flatten).
    raw: SecretBytes,
    hkdf: HkdfSha512,
}

impl MasterKey {
    pub(crate) fn new(raw: SecretBytes) -> Result<Self> {
        if raw.len() != MASTER_KEY_LEN {
            return Err(Error::Invalid(format!(
                "a master key has {MASTER_KEY_LEN} bytes, not {}",
                raw.len()
            )));
        }
        Ok(MasterKey {
            hkdf: HkdfSha512::new(None, raw.expose()),
            raw,
        })
    }

    pub(crate) fn random() -> Result<Self> {
        Self::new(SecretBytes::random(MASTER_KEY_LEN)?)
    }

    pub(crate) fn raw(&self) -> &SecretBytes {
        &self.raw
    }

    /// The key of the extent with `nonce`: derive it once, then seal or open each of the
    /// extent's clusters with it.
    pub(crate) fn extent(&self, nonce: &[u8; EXTENT_NONCE_LEN]) -> Result<ExtentKey> {
        // On the stack, wiped on return: a SecretBytes here would cost an mlock and an
        // munlock per extent.
        let mut okm = zeroize::Zeroizing::new([0u8; 44]);
        self.hkdf
            .expand_into(&[LABEL_EXTENT, nonce], &mut okm[..])?;
        Ok(ExtentKey {
            key: GcmSiv::new(&okm[..32])?,
            nonce: okm[32..].try_into().expect("12 bytes"),
        })
    }

    /// Encrypts a cluster in place as an extent of its own; returns its tag.
    #[cfg(test)]
    pub(crate) fn seal(
        &self,
        nonce: &[u8; EXTENT_NONCE_LEN],
        cluster: u64,
        shift: u32,
        buf: &mut [u8],
    ) -> Result<[u8; 16]> {
        self.extent(nonce)?.seal(cluster, shift, buf)
    }

    /// Authenticates and decrypts a cluster of the extent with `nonce` in place; `false`
    /// when it does not authenticate (the buffer is then zeros).
    pub(crate) fn open(
        &self,
        nonce: &[u8; EXTENT_NONCE_LEN],
        cluster: u64,
        shift: u32,
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<bool> {
        self.extent(nonce)?.open(cluster, shift, buf, tag)
    }
}

/// The AES-256-GCM-SIV key of one extent: the clusters one write sealed together (one
/// request's batch, at most [`crate::device`]'s batch of 1 MiB), all sharing its extent
/// nonce. Each cluster has its own AEAD nonce: the extent's, with the logical cluster
/// index XORed into its first 8 bytes, so no (key, nonce) pair seals two clusters.
pub(crate) struct ExtentKey {
    key: GcmSiv,
    nonce: [u8; 12],
}

impl ExtentKey {
    /// The AEAD nonce of logical cluster `cluster` in this extent.
    fn nonce_for(&self, cluster: u64) -> [u8; 12] {
        let mut n = self.nonce;
        for (b, x) in n.iter_mut().zip(cluster.to_le_bytes()) {
            *b ^= x;
        }
        n
    }

    /// Encrypts logical cluster `cluster` in place; returns its tag.
    pub(crate) fn seal(&self, cluster: u64, shift: u32, buf: &mut [u8]) -> Result<[u8; 16]> {
        Ok(self
            .key
            .seal_in_place(&self.nonce_for(cluster), &cluster_aad(cluster, shift), buf)?)
    }

    /// Authenticates and decrypts logical cluster `cluster` in place; `false` when it does
    /// not authenticate (the buffer is then zeros).
    pub(crate) fn open(
        &self,
        cluster: u64,
        shift: u32,
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<bool> {
        Ok(self
            .key
            .open_in_place(
                &self.nonce_for(cluster),
                &cluster_aad(cluster, shift),
                buf,
                tag,
            )
            .is_ok())
    }
}

fn cluster_aad(cluster: u64, shift: u32) -> [u8; 38] {
    let mut a = [0u8; 38];
    a[..26].copy_from_slice(AAD_CLUSTER);
    a[26..34].copy_from_slice(&cluster.to_le_bytes());
    a[34..].copy_from_slice(&shift.to_le_bytes());
    a
}

/// A fresh random extent nonce.
pub(crate) fn extent_nonce() -> Result<[u8; EXTENT_NONCE_LEN]> {
    let mut n = [0u8; EXTENT_NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| sealvol_crypto::Error::Random(e.to_string()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_keys_differ_per_nonce_and_bind_the_cluster() {
        let mk = MasterKey::random().unwrap();
        let [a, b] = [[1u8; 16], [2u8; 16]];
        let plain = vec![0x5Au8; 4096];
        let mut ca = plain.clone();
        let ta = mk.seal(&a, 7, 12, &mut ca).unwrap();
        let mut cb = plain.clone();
        let tb = mk.seal(&b, 7, 12, &mut cb).unwrap();
        assert_ne!(ca, cb, "two nonces, two keys");
        let mut x = ca.clone();
        assert!(mk.open(&a, 7, 12, &mut x, &ta).unwrap());
        assert_eq!(x, plain);
        let mut x = ca.clone();
        assert!(!mk.open(&a, 8, 12, &mut x, &ta).unwrap(), "another cluster");
        let mut x = ca.clone();
        assert!(
            !mk.open(&b, 7, 12, &mut x, &tb).unwrap(),
            "another extent's key"
        );
        let other = MasterKey::random().unwrap();
        let mut x = ca;
        assert!(!other.open(&a, 7, 12, &mut x, &ta).unwrap());
    }

    #[test]
    fn clusters_of_one_extent_get_their_own_nonce() {
        let mk = MasterKey::random().unwrap();
        let ek = mk.extent(&[9u8; 16]).unwrap();
        assert_ne!(ek.nonce_for(3), ek.nonce_for(4));
        assert_eq!(ek.nonce_for(0), ek.nonce, "cluster 0 XORs nothing");
        let plain = vec![0x33u8; 4096];
        let (mut c3, mut c4) = (plain.clone(), plain.clone());
        let t3 = ek.seal(3, 12, &mut c3).unwrap();
        let t4 = ek.seal(4, 12, &mut c4).unwrap();
        assert_ne!(c3, c4, "same extent, same plaintext, other cluster");
        assert_ne!(t3, t4);
        // Same key stream would show as equal XOR of the two ciphertexts' blocks.
        assert_ne!(c3[..16], c4[..16]);
        let mut x = c3.clone();
        assert!(
            !ek.open(4, 12, &mut x, &t3).unwrap(),
            "moved to another cluster"
        );
        let mut x = c4.clone();
        assert!(
            !ek.open(4, 12, &mut x, &t3).unwrap(),
            "another cluster's tag"
        );
        // A cluster sealed in an extent opens through the master key alone (how readers
        // that see one entry at a time open it).
        let mut x = c4;
        assert!(mk.open(&[9u8; 16], 4, 12, &mut x, &t4).unwrap());
        assert_eq!(x, plain);
    }

    #[test]
    fn wrapped_keys_bind_layer_and_generation() {
        let lk = SecretBytes::random(64).unwrap();
        let keys = LayerKeys::derive(&lk, &[1; 16]).unwrap();
        let mk = SecretBytes::random(64).unwrap();
        let w = keys.wrap_gen(&[1; 16], 3, &mk).unwrap();
        assert!(keys.unwrap_gen(&[1; 16], 3, &w).unwrap().ct_eq(mk.expose()));
        assert!(keys.unwrap_gen(&[1; 16], 4, &w).is_err());
        assert!(keys.unwrap_gen(&[2; 16], 3, &w).is_err());
        let other = LayerKeys::derive(&lk, &[2; 16]).unwrap();
        assert!(
            other.unwrap_gen(&[1; 16], 3, &w).is_err(),
            "keys are per layer"
        );
        assert!(!w
            .0
            .windows(16)
            .any(|x| mk.expose().windows(16).any(|y| x == y)));
        let m = keys.mac(b"root");
        assert!(keys.verify(b"root", &m));
        assert!(!keys.verify(b"roou", &m));
    }
}
