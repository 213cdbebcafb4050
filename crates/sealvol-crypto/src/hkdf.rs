//! HKDF-SHA512 (RFC 5869), for deriving one key per extent from a master key.
//!
//! A thin, typed front for RustCrypto's `hkdf` crate. After the extract step it keeps the
//! HMAC state keyed with the pseudorandom key (the SHA-512 states after the inner and outer
//! pads), so each expansion of one output block costs two SHA-512 compressions instead of
//! four (the overlay derives a key per 4 KiB cluster read or written: keying HMAC anew was
//! half of its SHA-512 time). Those states are wiped on drop (`sha2`'s and `hmac`'s
//! `zeroize` features), as is every copy an expansion makes. Nothing here implements HMAC or
//! SHA-512.
//!
//! ```
//! use sealvol_crypto::hkdf::HkdfSha512;
//! let master = [7u8; 64];
//! let kdf = HkdfSha512::new(None, &master);
//! let k1 = kdf.expand(&[b"label", b"nonce-1"], 32).unwrap();
//! let k2 = kdf.expand(&[b"label", b"nonce-2"], 32).unwrap();
//! assert_ne!(k1.expose(), k2.expose());
//! ```

use crate::{Error, Result, SecretBytes};

/// Largest output of one expansion: 255 blocks of SHA-512 (RFC 5869 §2.3).
pub const MAX_OUTPUT: usize = 255 * 64;

/// HKDF with SHA-512, after the extract step: holds HMAC keyed with the pseudorandom key.
pub struct HkdfSha512 {
    hkdf: ::hkdf::Hkdf<sha2::Sha512>,
}

impl std::fmt::Debug for HkdfSha512 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HkdfSha512([redacted])")
    }
}

impl HkdfSha512 {
    /// HKDF-Extract(`salt`, `ikm`): `None` is the RFC's default salt (64 zero bytes).
    pub fn new(salt: Option<&[u8]>, ikm: &[u8]) -> Self {
        let (mut prk, hkdf) = ::hkdf::Hkdf::<sha2::Sha512>::extract(salt, ikm);
        zeroize::Zeroize::zeroize(&mut prk[..]);
        HkdfSha512 { hkdf }
    }

    /// HKDF-Expand(PRK, `info` = the concatenation of `info`'s parts) into `out`.
    ///
    /// # Errors
    /// [`Error::KdfParams`] when `out` is empty or longer than [`MAX_OUTPUT`].
    pub fn expand_into(&self, info: &[&[u8]], out: &mut [u8]) -> Result<()> {
        if out.is_empty() || out.len() > MAX_OUTPUT {
            return Err(Error::KdfParams(format!(
                "HKDF-SHA512 output of {} bytes; expected 1..={MAX_OUTPUT}",
                out.len()
            )));
        }
        self.hkdf
            .expand_multi_info(info, out)
            .map_err(|_| Error::KdfParams(format!("HKDF-SHA512 cannot expand {} bytes", out.len())))
    }

    /// HKDF-Expand into a new secret of `len` bytes.
    ///
    /// # Errors
    /// As [`HkdfSha512::expand_into`].
    pub fn expand(&self, info: &[&[u8]], len: usize) -> Result<SecretBytes> {
        let mut out = SecretBytes::zeroed(len);
        self.expand_into(info, out.expose_mut())?;
        Ok(out)
    }
}

/// One-shot HKDF-SHA512: extract with `salt`, expand `info` to `len` bytes.
///
/// # Errors
/// As [`HkdfSha512::expand_into`].
pub fn hkdf_sha512(
    salt: Option<&[u8]>,
    ikm: &[u8],
    info: &[&[u8]],
    len: usize,
) -> Result<SecretBytes> {
    HkdfSha512::new(salt, ikm).expand(info, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed with `openssl kdf -kdfopt digest:SHA512 ... HKDF` (OpenSSL 3.0).
    #[test]
    fn matches_openssl() {
        let ikm = [0x0b; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let got = hkdf_sha512(Some(&salt), &ikm, &[&info], 42).unwrap();
        assert_eq!(
            hex::encode(got.expose()),
            "832390086cda71fb47625bb5ceb168e4c8e26a1a16ed34d9fc7fe92c1481579338da362cb8d9f925d7cb"
        );
        // No salt, info split in parts: the parts are concatenated.
        let ikm = [0x11; 64];
        let got = hkdf_sha512(None, &ikm, &[b"seal", b"", b"vol"], 44).unwrap();
        assert_eq!(
            hex::encode(got.expose()),
            "fb4cd2e996f1efaf7164ad486a20a27cbf626f955ac7afdceaa4ce6f3e27704945f27fcc88a68aea5c86235f"
        );
    }

    #[test]
    fn lengths_are_checked_and_debug_hides_the_key() {
        let k = HkdfSha512::new(None, b"ikm");
        assert!(k.expand(&[b"x"], 0).is_err());
        assert!(k.expand(&[b"x"], MAX_OUTPUT + 1).is_err());
        assert_eq!(k.expand(&[b"x"], MAX_OUTPUT).unwrap().len(), MAX_OUTPUT);
        assert_eq!(format!("{k:?}"), "HkdfSha512([redacted])");
    }
}
