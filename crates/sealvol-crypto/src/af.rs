//! The LUKS anti-forensic information splitter (LUKS1 spec §2.4, used unchanged by LUKS2).

use crate::{HashAlg, Result, SecretBytes};

/// Splits `key` into `stripes` stripes of `key.len()` bytes (random stripes, then the key
/// XORed with the diffused accumulator). Returns `key.len() * stripes` bytes.
pub fn split(key: &[u8], stripes: u32, hash: HashAlg) -> Result<SecretBytes> {
    let _ = (key, stripes, hash);
    todo!()
}

/// Inverse of [`split`]: recovers a `key_len`-byte key from `material` (`key_len * stripes`
/// bytes).
pub fn merge(material: &[u8], key_len: usize, stripes: u32, hash: HashAlg) -> Result<SecretBytes> {
    let _ = (material, key_len, stripes, hash);
    todo!()
}
