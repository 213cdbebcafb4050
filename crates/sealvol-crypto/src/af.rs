//! The LUKS anti-forensic information splitter (LUKS1 spec §2.4, used unchanged by LUKS2).
//!
//! A key of `n` bytes is stored as `stripes` stripes of `n` bytes: `stripes - 1` random
//! stripes `s_1 … s_{k-1}`, and a last stripe `key ^ d_{k-1}` where `d_0 = 0` and
//! `d_i = H(d_{i-1} ^ s_i)`. `H` is the spec's *diffuse* function: the buffer is cut into
//! digest-sized blocks, block `j` is replaced by `hash(be32(j) || block_j)`, and a final
//! partial block by that hash truncated. Destroying any one stripe destroys the key.
//!
//! ```
//! use sealvol_crypto::{af, HashAlg};
//! let key = [7u8; 64];
//! let material = af::split(&key, 4000, HashAlg::Sha256).unwrap();
//! assert_eq!(material.len(), 64 * 4000);
//! let back = af::merge(material.expose(), 64, 4000, HashAlg::Sha256).unwrap();
//! assert_eq!(back.expose(), &key);
//! ```

use crate::{Error, HashAlg, Result, SecretBytes};
use zeroize::Zeroize;

/// Replaces `buf` with its diffusion (LUKS1 spec §2.4, `H`): each digest-sized block `j`
/// becomes `hash(be32(j) || block)`, a trailing partial block the truncated hash.
pub fn diffuse(buf: &mut [u8], hash: HashAlg) {
    let ds = hash.output_len();
    for (j, block) in buf.chunks_mut(ds).enumerate() {
        let index = (j as u32).to_be_bytes();
        let mut h = hash.digest_parts(&[&index, block]);
        block.copy_from_slice(&h[..block.len()]);
        h.zeroize();
    }
}

/// `acc ^= other`.
fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// Checks `stripes ≥ 1`, a non-empty key, and that `key_len * stripes` fits in memory.
fn material_len(key_len: usize, stripes: u32) -> Result<usize> {
    if stripes == 0 {
        return Err(Error::KdfParams(
            "AF splitter: stripes must be at least 1 (LUKS uses 4000)".into(),
        ));
    }
    if key_len == 0 {
        return Err(Error::KdfParams(
            "AF splitter: key length must be at least 1 byte".into(),
        ));
    }
    key_len.checked_mul(stripes as usize).ok_or_else(|| {
        Error::KdfParams(format!(
            "AF splitter: {key_len}-byte key × {stripes} stripes overflows"
        ))
    })
}

/// Splits `key` into `stripes` stripes of `key.len()` bytes (random stripes, then the key
/// XORed with the diffused accumulator). Returns `key.len() * stripes` bytes.
///
/// # Errors
/// [`Error::KdfParams`] for an empty key, `stripes == 0` or a size overflow;
/// [`Error::Random`] if the system RNG fails.
pub fn split(key: &[u8], stripes: u32, hash: HashAlg) -> Result<SecretBytes> {
    let total = material_len(key.len(), stripes)?;
    let n = key.len();
    let mut material = SecretBytes::zeroed(total);
    let mut acc = SecretBytes::zeroed(n);
    {
        let out = material.expose_mut();
        let (random, last) = out.split_at_mut(total - n);
        getrandom::fill(random).map_err(|e| Error::Random(e.to_string()))?;
        for stripe in random.chunks_exact(n) {
            xor_into(acc.expose_mut(), stripe);
            diffuse(acc.expose_mut(), hash);
        }
        last.copy_from_slice(key);
        xor_into(last, acc.expose());
    }
    Ok(material)
}

/// Inverse of [`split`]: recovers a `key_len`-byte key from `material` (`key_len * stripes`
/// bytes).
///
/// # Errors
/// [`Error::KdfParams`] if `material.len() != key_len * stripes`, `stripes == 0` or
/// `key_len == 0`.
pub fn merge(material: &[u8], key_len: usize, stripes: u32, hash: HashAlg) -> Result<SecretBytes> {
    let total = material_len(key_len, stripes)?;
    if material.len() != total {
        return Err(Error::KdfParams(format!(
            "AF splitter: key material is {} bytes; expected {key_len} × {stripes} = {total}",
            material.len()
        )));
    }
    let (random, last) = material.split_at(total - key_len);
    let mut acc = SecretBytes::zeroed(key_len);
    for stripe in random.chunks_exact(key_len) {
        xor_into(acc.expose_mut(), stripe);
        diffuse(acc.expose_mut(), hash);
    }
    xor_into(acc.expose_mut(), last);
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent, deliberately naive re-derivation of the spec, used as the KAT oracle:
    /// byte-wise loops, explicit index arithmetic, no shared helpers with the code above.
    fn reference_merge(material: &[u8], key_len: usize, stripes: usize, hash: HashAlg) -> Vec<u8> {
        let ds = hash.output_len();
        let mut d = vec![0u8; key_len];
        for s in 0..stripes - 1 {
            for i in 0..key_len {
                d[i] ^= material[s * key_len + i];
            }
            let mut next = Vec::with_capacity(key_len);
            let mut j = 0usize;
            while j * ds < key_len {
                let end = std::cmp::min((j + 1) * ds, key_len);
                let mut input = vec![(j >> 24) as u8, (j >> 16) as u8, (j >> 8) as u8, j as u8];
                input.extend_from_slice(&d[j * ds..end]);
                let h = hash.digest(&input);
                next.extend_from_slice(&h[..end - j * ds]);
                j += 1;
            }
            d = next;
        }
        (0..key_len)
            .map(|i| d[i] ^ material[(stripes - 1) * key_len + i])
            .collect()
    }

    fn patterned(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn merge_matches_reference_on_fixed_material() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            for (key_len, stripes) in [
                (16, 1),
                (32, 2),
                (64, 4000),
                (20, 3),
                (33, 7),
                (100, 5),
                (65, 11),
            ] {
                let material = patterned(key_len * stripes, key_len as u8);
                let got = merge(&material, key_len, stripes as u32, hash).unwrap();
                let want = reference_merge(&material, key_len, stripes, hash);
                assert_eq!(
                    got.expose(),
                    want,
                    "{hash} key_len={key_len} stripes={stripes}"
                );
            }
        }
    }

    #[test]
    fn fixed_kat_sha256() {
        // With 2 stripes of 32 zero bytes, d_1 = diffuse(0^32) = sha256(be32(0) || 0^32), so
        // the key is the last stripe XOR that hash. The hash value comes from
        // `head -c 36 /dev/zero | sha256sum`.
        let mut material = vec![0u8; 64];
        material[32..].copy_from_slice(&[0xff; 32]);
        let got = merge(&material, 32, 2, HashAlg::Sha256).unwrap();
        let h = hex::decode("6db65fd59fd356f6729140571b5bcd6bb3b83492a16e1bf0a3884442fc3c8a0e")
            .unwrap();
        let want: Vec<u8> = h.iter().map(|b| b ^ 0xff).collect();
        assert_eq!(got.expose(), want);
    }

    #[test]
    fn one_stripe_is_the_key() {
        let key = patterned(32, 9);
        let m = split(&key, 1, HashAlg::Sha1).unwrap();
        assert_eq!(m.expose(), key.as_slice());
    }

    #[test]
    fn round_trip() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            for (key_len, stripes) in [
                (1, 1),
                (16, 2),
                (32, 4000),
                (64, 4000),
                (20, 17),
                (63, 9),
                (129, 3),
            ] {
                let key = patterned(key_len, stripes as u8);
                let m = split(&key, stripes, hash).unwrap();
                assert_eq!(m.len(), key_len * stripes as usize);
                let back = merge(m.expose(), key_len, stripes, hash).unwrap();
                assert_eq!(back.expose(), key.as_slice(), "{hash} {key_len}x{stripes}");
                assert_eq!(
                    reference_merge(m.expose(), key_len, stripes as usize, hash),
                    key,
                    "reference merge of split output"
                );
            }
        }
    }

    #[test]
    fn split_is_randomized() {
        let key = [1u8; 32];
        let a = split(&key, 4, HashAlg::Sha256).unwrap();
        let b = split(&key, 4, HashAlg::Sha256).unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert!(split(&[1; 32], 0, HashAlg::Sha256).is_err());
        assert!(split(&[], 4, HashAlg::Sha256).is_err());
        assert!(merge(&[0; 64], 32, 0, HashAlg::Sha256).is_err());
        assert!(merge(&[0; 64], 0, 2, HashAlg::Sha256).is_err());
        let e = merge(&[0; 63], 32, 2, HashAlg::Sha256).unwrap_err();
        assert!(e.to_string().contains("63"), "{e}");
        assert!(merge(&[0; 65], 32, 2, HashAlg::Sha256).is_err());
        assert!(merge(&[0; 64], usize::MAX, u32::MAX, HashAlg::Sha256).is_err());
    }
}
