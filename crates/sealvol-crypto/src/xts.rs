//! AES-XTS over whole sectors with dm-crypt's `plain64` IV.
//!
//! Two backends compute the same function:
//! - [`Backend::AwsLc`]: aws-lc's `EVP_aes_256_xts`, one context per direction keyed once,
//!   with only the IV re-set per sector. aws-lc has no AES-128-XTS, so 32-byte keys always use
//!   the RustCrypto backend; aws-lc also refuses keys whose two halves are equal (the
//!   IEEE 1619-2018 / FIPS 140 key check).
//! - [`Backend::RustCrypto`]: RustCrypto `aes` with the XTS mode written here (IEEE 1619:
//!   `T = E_K2(IV)`, `C_j = E_K1(P_j ^ T_j) ^ T_j`, `T_{j+1} = T_j · α`), encrypting blocks in
//!   batches of 64 so that `aes` can use its widest (VAES-512) path.
//!
//! Sector sizes are multiples of the 16-byte AES block, so ciphertext stealing (IEEE 1619
//! §5.3.2) never applies and is not implemented.

use crate::{Error, Result, SecretBytes};
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes128Enc, Aes256, Aes256Enc, Block};
use std::cell::Cell;
use std::marker::PhantomData;

/// Encryption sector size. dm-crypt accepts powers of two from 512 to 4096.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectorSize {
    /// 512 bytes (one IV unit per sector).
    S512,
    /// 1024 bytes.
    S1024,
    /// 2048 bytes.
    S2048,
    /// 4096 bytes (eight IV units per sector); the fastest and sealvol's default.
    S4096,
}

impl SectorSize {
    /// The size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            SectorSize::S512 => 512,
            SectorSize::S1024 => 1024,
            SectorSize::S2048 => 2048,
            SectorSize::S4096 => 4096,
        }
    }
    /// Number of 512-byte IV units in one sector.
    pub fn iv_units(self) -> u64 {
        (self.bytes() / 512) as u64
    }
}

impl TryFrom<u64> for SectorSize {
    type Error = crate::Error;
    fn try_from(v: u64) -> Result<Self> {
        match v {
            512 => Ok(SectorSize::S512),
            1024 => Ok(SectorSize::S1024),
            2048 => Ok(SectorSize::S2048),
            4096 => Ok(SectorSize::S4096),
            other => Err(crate::Error::SectorSize(other)),
        }
    }
}

/// Which implementation of AES-XTS to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// aws-lc `EVP_aes_*_xts` (VAES/AVX-512 where the CPU has it). The default.
    AwsLc,
    /// RustCrypto `aes` with sealvol's XTS loop. Cross-check and fallback.
    RustCrypto,
}

impl Backend {
    /// Whether this build includes the backend (`AwsLc` needs the `aws-lc` feature).
    pub fn is_available(self) -> bool {
        match self {
            Backend::AwsLc => cfg!(feature = "aws-lc"),
            Backend::RustCrypto => true,
        }
    }
}

/// AES blocks per call into the block cipher: `aes` 0.9's VAES-512 backend processes 64
/// blocks in parallel.
const BATCH: usize = 64;
/// AES block size.
const BLOCK: usize = 16;

/// The 16-byte `plain64` IV: the 64-bit IV little-endian, then eight zero bytes.
fn plain64(iv: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&iv.to_le_bytes());
    out
}

/// Multiplies a tweak by α (x) in GF(2^128) with the XTS (little-endian) convention.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

#[inline(always)]
fn xor_block(b: &mut Block, t: u128) {
    *b = Array::from((u128::from_le_bytes(b.0) ^ t).to_le_bytes());
}

/// XTS over RustCrypto `aes`: `D` is the data cipher (K1, both directions), `E` the tweak
/// cipher (K2, encryption only). The `aes` types zeroize their key schedules on drop.
struct SoftXts<D, E> {
    data: D,
    tweak: E,
}

impl<D, E> SoftXts<D, E>
where
    D: BlockCipherEncrypt
        + BlockCipherDecrypt
        + BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + KeyInit,
    E: BlockCipherEncrypt + BlockSizeUser<BlockSize = aes::cipher::consts::U16> + KeyInit,
{
    /// `key` is K1 || K2, each half an AES key.
    fn new(key: &[u8]) -> Result<Self> {
        let (k1, k2) = key.split_at(key.len() / 2);
        let bad = |_| Error::KeyLength {
            what: "AES-XTS",
            got: key.len(),
            expected: "32 or 64",
        };
        Ok(SoftXts {
            data: D::new_from_slice(k1).map_err(bad)?,
            tweak: E::new_from_slice(k2).map_err(bad)?,
        })
    }

    /// The initial tweak `E_K2(plain64(iv))` as a little-endian u128.
    #[inline]
    fn initial_tweak(&self, iv: u64) -> u128 {
        let mut t = Block::from(plain64(iv));
        self.tweak.encrypt_block(&mut t);
        u128::from_le_bytes(t.0)
    }

    /// Transforms whole sectors of `sector_len` bytes in place; sector `i` uses IV
    /// `first_iv + i * iv_step` (the caller has checked that this does not overflow).
    ///
    /// Blocks are gathered into batches of [`BATCH`] across sector boundaries, so even
    /// 512-byte sectors (32 blocks) reach the cipher 64 blocks at a time.
    fn crypt(&self, buf: &mut [u8], sector_len: usize, first_iv: u64, iv_step: u64, encrypt: bool) {
        let blocks_per_sector = sector_len / BLOCK;
        let (blocks, rest) = Block::slice_as_chunks_mut(buf);
        debug_assert!(rest.is_empty());
        let mut tweaks = [0u128; BATCH];
        let mut t = 0u128;
        let mut index = 0usize; // global block index
        for batch in blocks.chunks_mut(BATCH) {
            for (b, tw) in batch.iter_mut().zip(tweaks.iter_mut()) {
                if index % blocks_per_sector == 0 {
                    let sector = (index / blocks_per_sector) as u64;
                    t = self.initial_tweak(first_iv + sector * iv_step);
                }
                *tw = t;
                xor_block(b, t);
                t = mul_alpha(t);
                index += 1;
            }
            if encrypt {
                self.data.encrypt_blocks(batch);
            } else {
                self.data.decrypt_blocks(batch);
            }
            for (b, tw) in batch.iter_mut().zip(tweaks.iter()) {
                xor_block(b, *tw);
            }
        }
    }
}

/// The keyed implementation behind an [`XtsCipher`].
enum Engine {
    #[cfg(feature = "aws-lc")]
    AwsLc(crate::ffi::EvpXts),
    Soft128(Box<SoftXts<Aes128, Aes128Enc>>),
    Soft256(Box<SoftXts<Aes256, Aes256Enc>>),
}

/// AES-XTS (`aes-xts-plain64`) with a 32-byte (AES-128) or 64-byte (AES-256) key.
///
/// Sector `i` of a buffer gets the IV `first_iv + i * sector_size / 512`, written as a
/// 64-bit little-endian number followed by zeros (`plain64`). The key is set once; each
/// instance owns its cipher contexts, so it is `Send` but not `Sync`: use one per thread
/// ([`XtsCipher::try_clone`]) or [`ParallelXts`].
///
/// The instance keeps a [`SecretBytes`] copy of the key (for [`XtsCipher::try_clone`]);
/// it and the key schedules are wiped on drop.
///
/// ```compile_fail
/// fn need_sync<T: Sync>() {}
/// need_sync::<sealvol_crypto::XtsCipher>();
/// ```
pub struct XtsCipher {
    engine: Engine,
    key: SecretBytes,
    backend: Backend,
    /// Makes the type `!Sync` whatever the backend.
    _not_sync: PhantomData<Cell<()>>,
}

/// Checks that `len` is whole sectors and that the last sector's IV fits in 64 bits.
fn check_buffer(len: usize, sector_size: SectorSize, first_iv: u64) -> Result<()> {
    let n = sector_size.bytes();
    if len % n != 0 {
        return Err(Error::Unaligned {
            len,
            sector_size: n,
        });
    }
    let sectors = (len / n) as u64;
    if sectors > 0 {
        let units = sector_size.iv_units();
        (sectors - 1)
            .checked_mul(units)
            .and_then(|off| first_iv.checked_add(off))
            .ok_or(Error::IvOverflow {
                first_iv,
                sectors,
                iv_units: units,
            })?;
    }
    Ok(())
}

impl XtsCipher {
    /// Cipher with the default backend: aws-lc for 64-byte keys when built with it,
    /// otherwise (and always for 32-byte keys, which aws-lc cannot do) RustCrypto.
    ///
    /// # Errors
    /// A key that is not 32 or 64 bytes; a 64-byte key whose halves are equal (aws-lc
    /// refuses it).
    pub fn new(key: &SecretBytes) -> Result<Self> {
        let backend = if cfg!(feature = "aws-lc") && key.len() == 64 {
            Backend::AwsLc
        } else {
            Backend::RustCrypto
        };
        Self::with_backend(key, backend)
    }

    /// Cipher with an explicit backend.
    ///
    /// # Errors
    /// - [`Error::KeyLength`]: a key that is not 32 or 64 bytes, or a 32-byte key with
    ///   [`Backend::AwsLc`] (aws-lc has no AES-128-XTS).
    /// - [`Error::Backend`]: [`Backend::AwsLc`] in a build without the `aws-lc` feature,
    ///   a key whose two halves are equal (aws-lc refuses it), or an aws-lc failure.
    pub fn with_backend(key: &SecretBytes, backend: Backend) -> Result<Self> {
        let k = key.expose();
        if k.len() != 32 && k.len() != 64 {
            return Err(Error::KeyLength {
                what: "AES-XTS",
                got: k.len(),
                expected: "32 (AES-128-XTS) or 64 (AES-256-XTS)",
            });
        }
        let engine = match backend {
            Backend::AwsLc => Self::awslc_engine(k)?,
            Backend::RustCrypto if k.len() == 32 => Engine::Soft128(Box::new(SoftXts::new(k)?)),
            Backend::RustCrypto => Engine::Soft256(Box::new(SoftXts::new(k)?)),
        };
        Ok(XtsCipher {
            engine,
            key: key.duplicate(),
            backend,
            _not_sync: PhantomData,
        })
    }

    #[cfg(feature = "aws-lc")]
    fn awslc_engine(k: &[u8]) -> Result<Engine> {
        if k.len() != 64 {
            return Err(Error::KeyLength {
                what: "AES-XTS with the aws-lc backend (aws-lc has no AES-128-XTS; use Backend::RustCrypto)",
                got: k.len(),
                expected: "64",
            });
        }
        let (k1, k2) = k.split_at(32);
        if bool::from(subtle::ConstantTimeEq::ct_eq(k1, k2)) {
            return Err(Error::Backend(
                "aws-lc refuses an AES-XTS key whose two halves are equal (IEEE 1619 / FIPS 140 key \
                 check); use a freshly generated random key"
                    .into(),
            ));
        }
        Ok(Engine::AwsLc(crate::ffi::EvpXts::new(k)?))
    }

    #[cfg(not(feature = "aws-lc"))]
    fn awslc_engine(_k: &[u8]) -> Result<Engine> {
        Err(Error::Backend(
            "sealvol-crypto was built without the \"aws-lc\" feature; use Backend::RustCrypto"
                .into(),
        ))
    }

    /// The backend this instance uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Key length in bytes (32 or 64).
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// A new instance with the same key and backend, for another thread.
    ///
    /// # Errors
    /// An aws-lc failure while setting up the new contexts.
    pub fn try_clone(&self) -> Result<Self> {
        Self::with_backend(&self.key, self.backend)
    }

    /// Encrypts `buf` in place; `buf.len()` must be a multiple of `sector_size`.
    ///
    /// # Errors
    /// [`Error::Unaligned`] for a partial sector, [`Error::IvOverflow`] if the last IV passes
    /// 2^64, [`Error::Backend`] if aws-lc fails. On error `buf` may be partly transformed.
    pub fn encrypt_sectors(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
    ) -> Result<()> {
        self.crypt(buf, sector_size, first_iv, true)
    }

    /// Decrypts `buf` in place; `buf.len()` must be a multiple of `sector_size`.
    ///
    /// # Errors
    /// As for [`XtsCipher::encrypt_sectors`].
    pub fn decrypt_sectors(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
    ) -> Result<()> {
        self.crypt(buf, sector_size, first_iv, false)
    }

    fn crypt(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
        encrypt: bool,
    ) -> Result<()> {
        check_buffer(buf.len(), sector_size, first_iv)?;
        let n = sector_size.bytes();
        let step = sector_size.iv_units();
        match &mut self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(evp) => {
                let mut iv = first_iv;
                for sector in buf.chunks_exact_mut(n) {
                    let ivb = plain64(iv);
                    if encrypt {
                        evp.encrypt_sector(sector, &ivb)?;
                    } else {
                        evp.decrypt_sector(sector, &ivb)?;
                    }
                    // Cannot overflow past the last sector: checked by `check_buffer`.
                    iv = iv.wrapping_add(step);
                }
                Ok(())
            }
            Engine::Soft128(x) => {
                x.crypt(buf, n, first_iv, step, encrypt);
                Ok(())
            }
            Engine::Soft256(x) => {
                x.crypt(buf, n, first_iv, step, encrypt);
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XtsCipher")
            .field("backend", &self.backend)
            .field("key_len", &self.key.len())
            .finish()
    }
}

/// Buffers at least this large are split across threads by [`ParallelXts`].
pub const PARALLEL_THRESHOLD: usize = 1 << 20;

/// Several [`XtsCipher`]s with one key, splitting large buffers across threads
/// (`std::thread::scope`); small buffers stay on the calling thread.
///
/// A buffer of at least [`PARALLEL_THRESHOLD`] bytes is cut on sector boundaries into one
/// chunk per worker (each chunk's first IV computed from its offset); the calling thread
/// takes the first chunk and scoped threads the others.
#[derive(Debug)]
pub struct ParallelXts {
    workers: Vec<XtsCipher>,
}

impl ParallelXts {
    /// `threads` workers (at least 1; 0 is treated as 1).
    ///
    /// # Errors
    /// As for [`XtsCipher::with_backend`].
    pub fn new(key: &SecretBytes, backend: Backend, threads: usize) -> Result<Self> {
        let first = XtsCipher::with_backend(key, backend)?;
        let mut workers = Vec::with_capacity(threads.max(1));
        for _ in 1..threads.max(1) {
            workers.push(first.try_clone()?);
        }
        workers.insert(0, first);
        Ok(ParallelXts { workers })
    }

    /// Number of workers.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Encrypts `buf` in place; see [`XtsCipher::encrypt_sectors`].
    ///
    /// # Errors
    /// As for [`XtsCipher::encrypt_sectors`].
    pub fn encrypt_sectors(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
    ) -> Result<()> {
        self.crypt(buf, sector_size, first_iv, true)
    }

    /// Decrypts `buf` in place; see [`XtsCipher::decrypt_sectors`].
    ///
    /// # Errors
    /// As for [`XtsCipher::decrypt_sectors`].
    pub fn decrypt_sectors(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
    ) -> Result<()> {
        self.crypt(buf, sector_size, first_iv, false)
    }

    fn crypt(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
        encrypt: bool,
    ) -> Result<()> {
        check_buffer(buf.len(), sector_size, first_iv)?;
        let run =
            |w: &mut XtsCipher, chunk: &mut [u8], iv: u64| w.crypt(chunk, sector_size, iv, encrypt);
        let n = sector_size.bytes();
        let sectors = buf.len() / n;
        if self.workers.len() == 1 || buf.len() < PARALLEL_THRESHOLD || sectors < 2 {
            return run(&mut self.workers[0], buf, first_iv);
        }
        let per_chunk = sectors.div_ceil(self.workers.len());
        let chunk_iv = |k: usize| first_iv + (k * per_chunk) as u64 * sector_size.iv_units();
        std::thread::scope(|s| {
            let mut chunks = buf.chunks_mut(per_chunk * n).zip(self.workers.iter_mut());
            let (first_chunk, first_worker) = chunks.next().expect("at least one chunk");
            let handles: Vec<_> = chunks
                .enumerate()
                .map(|(k, (chunk, w))| {
                    let iv = chunk_iv(k + 1);
                    s.spawn(move || run(w, chunk, iv))
                })
                .collect();
            let mut result = run(first_worker, first_chunk, first_iv);
            for h in handles {
                let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests;
