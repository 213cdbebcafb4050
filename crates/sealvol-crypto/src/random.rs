//! Random bytes in bulk, for wiping keyslot areas.
//!
//! Wiping a 16 MiB keyslots area straight from `getrandom` costs tens of milliseconds on
//! these hosts (the kernel generates a few hundred MB/s). [`fill_bulk`] instead draws a fresh
//! 64-byte key and starting IV from the OS and encrypts zeros with AES-256-XTS under them: the
//! output is AES keystream (each 16-byte block is AES of a distinct tweak-masked input), as
//! unpredictable as AES itself to anyone without the key, which is dropped (and zeroized)
//! when the call returns. This is a use of the cipher, not a new primitive.

use crate::{Result, SecretBytes, SectorSize, XtsCipher};

/// Below this, ask the OS directly.
const DIRECT_LIMIT: usize = 64 << 10;

/// Fills `buf` with cryptographically random bytes.
///
/// # Errors
/// [`Error::Random`](crate::Error::Random) when the OS generator fails, or a cipher
/// backend error.
pub fn fill_bulk(buf: &mut [u8]) -> Result<()> {
    if buf.len() <= DIRECT_LIMIT {
        return getrandom::fill(buf).map_err(|e| crate::Error::Random(e.to_string()));
    }
    let key = SecretBytes::random(64)?;
    let mut start = [0u8; 8];
    getrandom::fill(&mut start).map_err(|e| crate::Error::Random(e.to_string()))?;
    // Keep clear of IV wraparound whatever the buffer length.
    let first_iv = u64::from_le_bytes(start) >> 8;
    let mut cipher = XtsCipher::new(&key)?;
    let whole = buf.len() / 4096 * 4096;
    let (body, tail) = buf.split_at_mut(whole);
    body.fill(0);
    cipher.encrypt_sectors(body, SectorSize::S4096, first_iv)?;
    if !tail.is_empty() {
        getrandom::fill(tail).map_err(|e| crate::Error::Random(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_random_is_not_constant_and_differs_between_calls() {
        for len in [
            0usize,
            1,
            100,
            DIRECT_LIMIT,
            DIRECT_LIMIT + 1,
            (1 << 20) + 123,
        ] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            fill_bulk(&mut a).unwrap();
            fill_bulk(&mut b).unwrap();
            if len >= 16 {
                assert_ne!(a, b, "two fills of {len} bytes are equal");
                // Every 4 KiB block differs from its neighbour (distinct tweaks).
                for w in a.chunks(4096).collect::<Vec<_>>().windows(2) {
                    if w[1].len() == 4096 {
                        assert_ne!(w[0], w[1]);
                    }
                }
                // Roughly half the bits set.
                let ones: u64 = a.iter().map(|x| x.count_ones() as u64).sum();
                let bits = len as u64 * 8;
                assert!(
                    ones * 10 > bits * 4 && ones * 10 < bits * 6,
                    "{ones} of {bits} bits set"
                );
            }
        }
    }
}
