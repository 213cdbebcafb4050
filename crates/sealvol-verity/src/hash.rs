//! Salted block digests, one block or many in parallel.
//!
//! dm-verity hashes every block (data or hash) with the salt: format 1 computes
//! `H(salt ‖ block)`, format 0 `H(block ‖ salt)` (cryptsetup `verify_hash_block`, the kernel's
//! `verity_hash`). The hasher state after the salt prefix is computed once and cloned per
//! block. `sha1`/`sha2` pick SHA-NI at run time.

use rayon::prelude::*;
use sha2::Digest as _;

use crate::params::{HashAlgorithm, HashType, Params, MAX_DIGEST_SIZE};

/// Fewest blocks one parallel task hashes: keeps task overhead far below hashing time.
const MIN_BLOCKS_PER_TASK: usize = 32;

/// A digest of at most 64 bytes, kept on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Digest {
    bytes: [u8; MAX_DIGEST_SIZE],
    len: usize,
}

impl Digest {
    pub(crate) fn from_slice(s: &[u8]) -> Self {
        let mut bytes = [0u8; MAX_DIGEST_SIZE];
        bytes[..s.len()].copy_from_slice(s);
        Digest {
            bytes,
            len: s.len(),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[derive(Clone)]
enum Prefix {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// Hashes blocks the way dm-verity does for one set of parameters.
#[derive(Clone)]
pub(crate) struct BlockHasher {
    prefix: Prefix,
    /// The salt to append (format 0); empty in format 1, whose salt is in `prefix`.
    suffix: Vec<u8>,
    digest_size: usize,
}

fn one<D: sha2::Digest + Clone>(prefix: &D, suffix: &[u8], block: &[u8], out: &mut [u8]) {
    let mut h = prefix.clone();
    h.update(block);
    if !suffix.is_empty() {
        h.update(suffix);
    }
    out.copy_from_slice(&h.finalize());
}

fn many<D: sha2::Digest + Clone + Send + Sync>(
    prefix: &D,
    suffix: &[u8],
    blocks: &[u8],
    block_size: usize,
    digest_size: usize,
    out: &mut [u8],
) {
    let n = blocks.len() / block_size;
    if n < 2 * MIN_BLOCKS_PER_TASK {
        for (b, o) in blocks
            .chunks_exact(block_size)
            .zip(out.chunks_exact_mut(digest_size))
        {
            one(prefix, suffix, b, o);
        }
        return;
    }
    blocks
        .par_chunks_exact(block_size)
        .zip(out.par_chunks_exact_mut(digest_size))
        .with_min_len(MIN_BLOCKS_PER_TASK)
        .for_each(|(b, o)| one(prefix, suffix, b, o));
}

impl BlockHasher {
    pub(crate) fn new(params: &Params) -> Self {
        let salt = params.salt().as_bytes();
        let (pre, suffix): (&[u8], Vec<u8>) = match params.hash_type() {
            HashType::Normal => (salt, Vec::new()),
            HashType::ChromeOs => (&[], salt.to_vec()),
        };
        let prefix = match params.algorithm() {
            HashAlgorithm::Sha1 => Prefix::Sha1(sha1::Sha1::new_with_prefix(pre)),
            HashAlgorithm::Sha256 => Prefix::Sha256(sha2::Sha256::new_with_prefix(pre)),
            HashAlgorithm::Sha384 => Prefix::Sha384(sha2::Sha384::new_with_prefix(pre)),
            HashAlgorithm::Sha512 => Prefix::Sha512(sha2::Sha512::new_with_prefix(pre)),
        };
        BlockHasher {
            prefix,
            suffix,
            digest_size: params.digest_size(),
        }
    }

    /// The digest of one block.
    pub(crate) fn digest(&self, block: &[u8]) -> Digest {
        let mut out = [0u8; MAX_DIGEST_SIZE];
        let o = &mut out[..self.digest_size];
        let s = &self.suffix;
        match &self.prefix {
            Prefix::Sha1(p) => one(p, s, block, o),
            Prefix::Sha256(p) => one(p, s, block, o),
            Prefix::Sha384(p) => one(p, s, block, o),
            Prefix::Sha512(p) => one(p, s, block, o),
        }
        Digest {
            bytes: out,
            len: self.digest_size,
        }
    }

    /// Digests of consecutive blocks of `block_size` bytes, packed back to back into `out`
    /// (`digest_size` bytes each), on the calling thread.
    pub(crate) fn digest_serial(&self, blocks: &[u8], block_size: usize, out: &mut [u8]) {
        debug_assert_eq!(out.len(), blocks.len() / block_size * self.digest_size);
        let s = &self.suffix;
        let pairs = blocks
            .chunks_exact(block_size)
            .zip(out.chunks_exact_mut(self.digest_size));
        match &self.prefix {
            Prefix::Sha1(p) => pairs.for_each(|(b, o)| one(p, s, b, o)),
            Prefix::Sha256(p) => pairs.for_each(|(b, o)| one(p, s, b, o)),
            Prefix::Sha384(p) => pairs.for_each(|(b, o)| one(p, s, b, o)),
            Prefix::Sha512(p) => pairs.for_each(|(b, o)| one(p, s, b, o)),
        }
    }

    /// Digests of consecutive blocks of `block_size` bytes, packed back to back into `out`
    /// (`digest_size` bytes each), computed on every core.
    pub(crate) fn digest_many(&self, blocks: &[u8], block_size: usize, out: &mut [u8]) {
        debug_assert_eq!(blocks.len() % block_size, 0);
        debug_assert_eq!(out.len(), blocks.len() / block_size * self.digest_size);
        let (s, d) = (&self.suffix, self.digest_size);
        match &self.prefix {
            Prefix::Sha1(p) => many(p, s, blocks, block_size, d, out),
            Prefix::Sha256(p) => many(p, s, blocks, block_size, d, out),
            Prefix::Sha384(p) => many(p, s, blocks, block_size, d, out),
            Prefix::Sha512(p) => many(p, s, blocks, block_size, d, out),
        }
    }
}

/// The salted digest of one block, as dm-verity computes it for these parameters: handy for
/// tests and for tools that check a single block.
pub fn block_digest(params: &Params, block: &[u8]) -> Vec<u8> {
    BlockHasher::new(params).digest(block).as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Salt;

    #[test]
    fn salt_position() {
        let salt = Salt::from_hex("0102").unwrap();
        let v1 = Params::new(
            HashType::Normal,
            HashAlgorithm::Sha256,
            512,
            512,
            1,
            salt.clone(),
        )
        .unwrap();
        let v0 = Params::new(HashType::ChromeOs, HashAlgorithm::Sha256, 512, 512, 1, salt).unwrap();
        let block = [7u8; 512];
        let mut pre = vec![1u8, 2];
        pre.extend_from_slice(&block);
        let mut post = block.to_vec();
        post.extend_from_slice(&[1, 2]);
        assert_eq!(
            block_digest(&v1, &block),
            sha2::Sha256::digest(&pre).to_vec()
        );
        assert_eq!(
            block_digest(&v0, &block),
            sha2::Sha256::digest(&post).to_vec()
        );
    }

    #[test]
    fn many_equals_one() {
        let p = Params::new(
            HashType::Normal,
            HashAlgorithm::Sha1,
            512,
            512,
            1,
            Salt::from_hex("aa").unwrap(),
        )
        .unwrap();
        let h = BlockHasher::new(&p);
        let blocks: Vec<u8> = (0..512 * 200).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = vec![0u8; 200 * 20];
        h.digest_many(&blocks, 512, &mut out);
        for (i, b) in blocks.chunks(512).enumerate() {
            assert_eq!(&out[i * 20..(i + 1) * 20], h.digest(b).as_slice());
        }
    }
}
