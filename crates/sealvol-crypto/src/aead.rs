//! AES-256-GCM-SIV (RFC 8452), the nonce-misuse-resistant AEAD that authenticates and
//! encrypts overlay clusters and wraps overlay master keys.
//!
//! A thin front for aws-lc's implementation (through `aws-lc-rs`'s safe API, the same
//! aws-lc build the rest of sealvol uses): a key of [`KEY_LEN`] bytes, a [`NONCE_LEN`]-byte
//! nonce, additional data, and a detached [`TAG_LEN`]-byte tag. Opening a buffer whose
//! ciphertext, tag, nonce or additional data changed fails with [`Forged`] and leaves no
//! plaintext behind (the buffer is zeroed). aws-lc cleanses its key schedule when a key is
//! dropped. Needs the `aws-lc` feature (the default).
//!
//! ```
//! use sealvol_crypto::aead::GcmSiv;
//! let key = GcmSiv::new(&[1u8; 32]).unwrap();
//! let mut buf = *b"cluster data";
//! let tag = key.seal_in_place(&[0u8; 12], b"where", &mut buf).unwrap();
//! assert_ne!(&buf, b"cluster data");
//! key.open_in_place(&[0u8; 12], b"where", &mut buf, &tag).unwrap();
//! assert_eq!(&buf, b"cluster data");
//! ```

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};

use crate::{Error, Result};

/// Key length of AES-256-GCM-SIV.
pub const KEY_LEN: usize = 32;
/// Nonce length of AES-256-GCM-SIV.
pub const NONCE_LEN: usize = 12;
/// Tag length of AES-256-GCM-SIV.
pub const TAG_LEN: usize = 16;

/// The tag, nonce, additional data or ciphertext did not authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("AES-256-GCM-SIV authentication failed: the ciphertext, its tag, nonce or context changed")]
pub struct Forged;

/// An AES-256-GCM-SIV key, ready to seal and open.
pub struct GcmSiv {
    key: LessSafeKey,
}

impl std::fmt::Debug for GcmSiv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcmSiv([redacted])")
    }
}

impl GcmSiv {
    /// A key from [`KEY_LEN`] bytes.
    ///
    /// # Errors
    /// [`Error::KeyLength`] for any other length; [`Error::Backend`] if aws-lc refuses it.
    pub fn new(key: &[u8]) -> Result<Self> {
        if key.len() != KEY_LEN {
            return Err(Error::KeyLength {
                what: "AES-256-GCM-SIV",
                got: key.len(),
                expected: "32",
            });
        }
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, key)
            .map_err(|_| Error::Backend("aws-lc refused an AES-256-GCM-SIV key".into()))?;
        Ok(GcmSiv {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypts `buf` in place and returns its tag, binding `aad`.
    ///
    /// # Errors
    /// [`Error::Backend`] if aws-lc fails (it does not for buffers below 2^36 bytes).
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| Error::Backend("AES-256-GCM-SIV seal failed".into()))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` and decrypts `buf` in place.
    ///
    /// # Errors
    /// [`Forged`] when anything changed; `buf` is then all zeros.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> std::result::Result<(), Forged> {
        match self.key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            tag,
            buf,
        ) {
            Ok(_) => Ok(()),
            Err(_) => {
                buf.fill(0);
                Err(Forged)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8452 Appendix C.2 (AEAD_AES_256_GCM_SIV), the first two vectors.
    #[test]
    fn rfc8452_vectors() {
        let key = hex::decode("0100000000000000000000000000000000000000000000000000000000000000")
            .unwrap();
        let nonce: [u8; 12] = hex::decode("030000000000000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        let k = GcmSiv::new(&key).unwrap();
        let tag = k.seal_in_place(&nonce, b"", &mut []).unwrap();
        assert_eq!(hex::encode(tag), "07f5f4169bbf55a8400cd47ea6fd400f");
        let mut buf = hex::decode("0100000000000000").unwrap();
        let tag = k.seal_in_place(&nonce, b"", &mut buf).unwrap();
        assert_eq!(
            format!("{}{}", hex::encode(&buf), hex::encode(tag)),
            "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28"
        );
        k.open_in_place(&nonce, b"", &mut buf, &tag).unwrap();
        assert_eq!(hex::encode(&buf), "0100000000000000");
    }

    #[test]
    fn any_change_is_refused_and_leaves_no_plaintext() {
        let k = GcmSiv::new(&[9u8; 32]).unwrap();
        let nonce = [5u8; 12];
        let plain = vec![0xA5u8; 4096];
        let mut ct = plain.clone();
        let tag = k.seal_in_place(&nonce, b"aad", &mut ct).unwrap();
        let mut ok = ct.clone();
        k.open_in_place(&nonce, b"aad", &mut ok, &tag).unwrap();
        assert_eq!(ok, plain);
        for bit in [0usize, 7, 8 * 2048 + 3, 8 * 4096 - 1] {
            let mut b = ct.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(k.open_in_place(&nonce, b"aad", &mut b, &tag), Err(Forged));
            assert!(b.iter().all(|&x| x == 0));
        }
        let mut b = ct.clone();
        assert!(k.open_in_place(&nonce, b"aaD", &mut b, &tag).is_err());
        let mut b = ct.clone();
        assert!(k.open_in_place(&[6u8; 12], b"aad", &mut b, &tag).is_err());
        let mut t = tag;
        t[15] ^= 0x80;
        let mut b = ct.clone();
        assert!(k.open_in_place(&nonce, b"aad", &mut b, &t).is_err());
        let other = GcmSiv::new(&[8u8; 32]).unwrap();
        let mut b = ct;
        assert!(other.open_in_place(&nonce, b"aad", &mut b, &tag).is_err());
        assert!(GcmSiv::new(&[0u8; 16]).is_err());
        assert_eq!(format!("{other:?}"), "GcmSiv([redacted])");
    }
}
