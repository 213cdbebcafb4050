//! Detached ed25519 signatures over a root hash *and* the tree parameters.
//!
//! A root hash alone does not pin an image: a host that may pick the salt, algorithm, block
//! sizes, hash type or data block count could present a different tree under a valid root. So
//! the signed message is a canonical text that names all of them:
//!
//! ```text
//! sealvol dm-verity root hash v1
//! hash-type 1
//! hash-algorithm sha256
//! data-block-size 4096
//! hash-block-size 4096
//! data-blocks 2048
//! salt 00112233
//! root-hash e2151ca874bb94594fc180c72386b91adedb8ce36bee8e71c4a444b70f095be4
//! ```
//!
//! Every line ends with a single `\n` (also the last); numbers are decimal without leading
//! zeros; hex is lowercase; an empty salt is written `-`. Nothing else (no UUID, no hash
//! offset: they do not change what the tree proves) is covered. Because the message is plain
//! bytes, `openssl pkeyutl -verify -rawin` checks a signature over it too.
//!
//! Key files (see [`SigningKey::from_key_file`], [`VerifyingKey::from_key_file`]):
//! - private: PKCS#8 (RFC 8410) PEM `-----BEGIN PRIVATE KEY-----` as written by
//!   `openssl genpkey -algorithm ed25519`, its DER form, or the raw 32-byte seed;
//! - public: SubjectPublicKeyInfo PEM `-----BEGIN PUBLIC KEY-----` as written by
//!   `openssl pkey -pubout`, its DER form, or the raw 32-byte key.
//!
//! Signatures are the raw 64 bytes of RFC 8032 (what `openssl pkeyutl -sign` writes), checked
//! with strict verification (no malleable or small-order forms).

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::params::Params;

/// First line of the signed message; changes if the encoding ever changes.
pub const MESSAGE_HEADER: &str = "sealvol dm-verity root hash v1";
/// Length of a signature in bytes.
pub const SIGNATURE_SIZE: usize = 64;

/// The canonical message a signature covers (see the module docs).
pub fn signed_message(params: &Params, root: &[u8]) -> Vec<u8> {
    format!(
        "{MESSAGE_HEADER}\nhash-type {}\nhash-algorithm {}\ndata-block-size {}\n\
         hash-block-size {}\ndata-blocks {}\nsalt {}\nroot-hash {}\n",
        params.hash_type().number(),
        params.algorithm().name(),
        params.data_block_size(),
        params.hash_block_size(),
        params.data_blocks(),
        params.salt().to_hex(),
        hex::encode(root),
    )
    .into_bytes()
}

fn looks_pem(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.trim_start().starts_with("-----BEGIN").then_some(text)
}

/// An ed25519 private key. Zeroized on drop; its Debug prints only the public key.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", self.verifying_key().to_hex())
    }
}

impl SigningKey {
    /// The key whose 32-byte seed is `seed` (RFC 8032 private key). Callers pass fresh
    /// random bytes to make a new key.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// Parses a private key file: PKCS#8 PEM or DER, or a raw 32-byte seed.
    ///
    /// # Errors
    /// [`Error::Key`] (the message never contains key bytes).
    pub fn from_key_file(bytes: &[u8]) -> Result<Self> {
        let bad = |detail: String| Error::Key {
            what: "private key",
            detail,
        };
        if let Some(pem) = looks_pem(bytes) {
            return ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                .map(SigningKey)
                .map_err(|e| bad(format!("PKCS#8 PEM not readable as ed25519 ({e})")));
        }
        if bytes.len() == 32 {
            let mut seed = Zeroizing::new([0u8; 32]);
            seed.copy_from_slice(bytes);
            return Ok(SigningKey::from_seed(&seed));
        }
        ed25519_dalek::SigningKey::from_pkcs8_der(bytes)
            .map(SigningKey)
            .map_err(|_| {
                bad(format!(
                    "{} bytes are neither PKCS#8 (PEM or DER) nor a raw 32-byte seed; make one \
                     with `openssl genpkey -algorithm ed25519` or `sealvol verity keygen`",
                    bytes.len()
                ))
            })
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), exactly as
    /// `openssl genpkey -algorithm ed25519` writes it: version 1 (RFC 8410 without the
    /// optional public key, which OpenSSL 3.0 cannot load).
    ///
    /// # Errors
    /// [`Error::Key`] if encoding fails (it does not for valid keys).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|e| Error::Key {
                what: "private key",
                detail: format!("cannot encode as PKCS#8 ({e})"),
            })
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Signs the canonical message for `params` and `root`.
    pub fn sign(&self, params: &Params, root: &[u8]) -> [u8; SIGNATURE_SIZE] {
        self.0.sign(&signed_message(params, root)).to_bytes()
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({})", self.to_hex())
    }
}

impl VerifyingKey {
    /// Parses a public key file: SubjectPublicKeyInfo PEM or DER, or the raw 32 bytes.
    ///
    /// # Errors
    /// [`Error::Key`].
    pub fn from_key_file(bytes: &[u8]) -> Result<Self> {
        let bad = |detail: String| Error::Key {
            what: "public key",
            detail,
        };
        if let Some(pem) = looks_pem(bytes) {
            if pem.contains("PRIVATE KEY") {
                return Err(bad(
                    "this is a private key: pass the public key (`openssl pkey -pubout`, or \
                     the .pub file `sealvol verity keygen` writes)"
                        .into(),
                ));
            }
            return ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
                .map(VerifyingKey)
                .map_err(|e| bad(format!("PEM not readable as an ed25519 public key ({e})")));
        }
        if bytes.len() == 32 {
            let mut raw = [0u8; 32];
            raw.copy_from_slice(bytes);
            return ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map(VerifyingKey)
                .map_err(|_| bad("32 bytes that are not a valid curve point".into()));
        }
        ed25519_dalek::VerifyingKey::from_public_key_der(bytes)
            .map(VerifyingKey)
            .map_err(|_| {
                bad(format!(
                    "{} bytes are neither SubjectPublicKeyInfo (PEM or DER) nor a raw 32-byte key",
                    bytes.len()
                ))
            })
    }

    /// The key as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    /// [`Error::Key`] if encoding fails (it does not for valid keys).
    pub fn to_public_key_pem(&self) -> Result<String> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::Key {
                what: "public key",
                detail: format!("cannot encode as SubjectPublicKeyInfo ({e})"),
            })
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The raw key in hex (a fingerprint for humans and JSON).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// Checks `signature` over the canonical message for `params` and `root`.
    ///
    /// # Errors
    /// [`Error::SignatureLength`] for anything but 64 bytes, [`Error::BadSignature`] when it
    /// does not verify.
    pub fn verify(&self, params: &Params, root: &[u8], signature: &[u8]) -> Result<()> {
        let sig: [u8; SIGNATURE_SIZE] = signature
            .try_into()
            .map_err(|_| Error::SignatureLength(signature.len()))?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        self.0
            .verify_strict(&signed_message(params, root), &sig)
            .map_err(|_| Error::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{HashAlgorithm, HashType, Salt};

    fn params(salt: &str) -> Params {
        Params::new(
            HashType::Normal,
            HashAlgorithm::Sha256,
            4096,
            4096,
            2048,
            Salt::from_hex(salt).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn message_is_canonical() {
        let m = signed_message(&params("00112233"), &[0xab; 32]);
        let text = String::from_utf8(m).unwrap();
        assert_eq!(
            text,
            format!(
                "sealvol dm-verity root hash v1\nhash-type 1\nhash-algorithm sha256\n\
                 data-block-size 4096\nhash-block-size 4096\ndata-blocks 2048\nsalt 00112233\n\
                 root-hash {}\n",
                "ab".repeat(32)
            )
        );
        let m = String::from_utf8(signed_message(&params("-"), &[1; 32])).unwrap();
        assert!(m.contains("\nsalt -\n"));
    }

    #[test]
    fn sign_verify_tamper() {
        let key = SigningKey::from_seed(&[9; 32]);
        let pubkey = key.verifying_key();
        let root = [0x42u8; 32];
        let sig = key.sign(&params("aa"), &root);
        pubkey.verify(&params("aa"), &root, &sig).unwrap();
        assert!(matches!(
            pubkey.verify(&params("ab"), &root, &sig),
            Err(Error::BadSignature)
        ));
        let mut other_root = root;
        other_root[0] ^= 1;
        assert!(pubkey.verify(&params("aa"), &other_root, &sig).is_err());
        let mut bad_sig = sig;
        bad_sig[10] ^= 1;
        assert!(pubkey.verify(&params("aa"), &root, &bad_sig).is_err());
        assert!(pubkey.verify(&params("aa"), &root, &sig[..63]).is_err());
    }

    #[test]
    fn key_files_round_trip() {
        let key = SigningKey::from_seed(&[3; 32]);
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::from_key_file(pem.as_bytes()).unwrap();
        assert_eq!(again.verifying_key(), key.verifying_key());
        let raw = SigningKey::from_key_file(&[3; 32]).unwrap();
        assert_eq!(raw.verifying_key(), key.verifying_key());
        let pub_pem = key.verifying_key().to_public_key_pem().unwrap();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            VerifyingKey::from_key_file(pub_pem.as_bytes()).unwrap(),
            key.verifying_key()
        );
        assert!(VerifyingKey::from_key_file(pem.as_bytes()).is_err());
        assert!(SigningKey::from_key_file(b"junk").is_err());
        assert!(!format!("{key:?}").contains(&hex::encode([3u8; 32])));
    }
}
