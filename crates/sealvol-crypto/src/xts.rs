//! AES-XTS over whole sectors with dm-crypt's `plain64` IV.
//!
//! Two backends compute the same function:
//! - [`Backend::AwsLc`]: aws-lc's `EVP_aes_256_xts`, one context per direction keyed once,
//!   with only the IV re-set per sector. aws-lc has no AES-128-XTS, so 32-byte keys always use
//!   the RustCrypto backend; aws-lc also refuses keys whose two halves are equal (the
//!   IEEE 1619-2018 / FIPS 140 key check).
//! - [`Backend::RustCrypto`]: RustCrypto `aes` with the XTS mode written here (IEEE 1619:
//!   `T = E_K2(IV)`, `C_j = E_K1(P_j ^ T_j) ^ T_j`, `T_{j+1} = T_j · α`), in one pass inside
//!   the cipher's backend, 64 blocks at a time on `aes`'s widest (VAES-512) path.
//!
//! Sector sizes are multiples of the 16-byte AES block, so ciphertext stealing (IEEE 1619
//! §5.3.2) never applies and is not implemented.

use crate::{Error, Result, SecretBytes};
use aes::cipher::array::ArraySize;
use aes::cipher::consts::U16;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit,
};
use aes::{Aes128, Aes128Enc, Aes192, Aes192Enc, Aes256, Aes256Enc, Block};
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

/// Most blocks one parallel call of the block cipher may take for the single-pass loop;
/// `aes` 0.9 uses 64 (VAES-512), 30 (VAES-256) or 8 (AES-NI). A backend with more falls
/// back to one block at a time.
const MAX_PAR: usize = 64;
/// Sectors whose initial tweaks are computed together (one batched `E_K2` call) before
/// their data goes through the data cipher in one backend session.
const SECTORS_PER_SESSION: usize = 64;
/// AES block size.
const BLOCK: usize = 16;

/// The 16-byte `plain64` IV: the 64-bit IV little-endian, then eight zero bytes.
pub(crate) fn plain64(iv: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&iv.to_le_bytes());
    out
}

/// Multiplies a tweak by α (x) in GF(2^128) with the XTS (little-endian) convention.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// Writes the tweaks `t, t·α, t·α², …` of `out.len() / 16` consecutive blocks into `out`
/// (16 little-endian bytes each) and leaves `t` at the next value.
///
/// Eight chains advance by α^8 each step (shift by a byte; the byte shifted out, `b`,
/// folds back in as the carry-less product `b · 0x87 = b ^ b<<1 ^ b<<2 ^ b<<7`). The
/// chains are kept as separate low and high 64-bit lanes, so every step is the same
/// shifts and XORs on eight lanes: independent work the compiler can vectorize.
#[inline(always)]
fn fill_run(out: &mut [u8], t: &mut u128) {
    const LANES: usize = 8;
    let mut lo = [0u64; LANES];
    let mut hi = [0u64; LANES];
    let mut x = *t;
    for i in 0..LANES {
        lo[i] = x as u64;
        hi[i] = (x >> 64) as u64;
        x = mul_alpha(x);
    }
    let mut groups = out.chunks_exact_mut(LANES * BLOCK);
    for g in &mut groups {
        for i in 0..LANES {
            g[i * BLOCK..i * BLOCK + 8].copy_from_slice(&lo[i].to_le_bytes());
            g[i * BLOCK + 8..(i + 1) * BLOCK].copy_from_slice(&hi[i].to_le_bytes());
        }
        for i in 0..LANES {
            let b = hi[i] >> 56;
            hi[i] = (hi[i] << 8) | (lo[i] >> 56);
            lo[i] = (lo[i] << 8) ^ b ^ (b << 1) ^ (b << 2) ^ (b << 7);
        }
    }
    let rest = groups.into_remainder();
    let left = rest.len() / BLOCK;
    for (i, tw) in rest.chunks_exact_mut(BLOCK).enumerate() {
        tw[..8].copy_from_slice(&lo[i].to_le_bytes());
        tw[8..].copy_from_slice(&hi[i].to_le_bytes());
    }
    // The remainder is shorter than a group, so lane `left` holds the next tweak.
    *t = u128::from(lo[left]) | u128::from(hi[left]) << 64;
}

/// `data ^= tweaks`, byte-wise over whole blocks: a plain loop the compiler turns into
/// the widest vector XOR the enclosing target features allow (64 bytes with AVX-512).
#[inline(always)]
fn xor_bytes(data: &mut [u8], tweaks: &[u8]) {
    for (d, t) in data.iter_mut().zip(tweaks) {
        *d ^= t;
    }
}

/// Produces the tweak sequence of consecutive blocks across sector boundaries: block `j`
/// of sector `s` gets `initial[s] · α^j`.
struct Tweaks<'a> {
    initial: &'a [u128],
    per_sector: usize,
    /// Index of the next block.
    index: usize,
    /// Tweak of the next block (valid when `index` is not at a sector start).
    t: u128,
}

impl Tweaks<'_> {
    /// Fills `out` with the tweaks of the next `out.len() / 16` blocks.
    #[inline(always)]
    fn fill(&mut self, out: &mut [u8]) {
        let blocks = out.len() / BLOCK;
        let mut off = 0;
        while off < blocks {
            let in_sector = self.index % self.per_sector;
            if in_sector == 0 {
                self.t = self.initial[self.index / self.per_sector];
            }
            let n = (self.per_sector - in_sector).min(blocks - off);
            fill_run(&mut out[off * BLOCK..(off + n) * BLOCK], &mut self.t);
            off += n;
            self.index += n;
        }
    }
}

/// The XTS data pass for one backend session: `C_j = E_K1(P_j ^ T_j) ^ T_j` (or the
/// decryption), in place, `P` blocks at a time so each group is loaded from memory once
/// and the cipher sees full parallel batches (sectors smaller than a batch are combined).
/// Per group: the tweaks into a small buffer, one vector XOR pass, the cipher, a second
/// XOR pass, all on data that stays in L1.
#[inline(always)]
fn xts_pass<P: ArraySize>(
    blocks: &mut [Block],
    tweaks: &mut Tweaks<'_>,
    mut par: impl FnMut(&mut Array<Block, P>),
    mut one: impl FnMut(&mut Block),
) {
    let mut tw = [0u8; MAX_PAR * BLOCK];
    let p = P::USIZE;
    let rest = if p > 1 && p <= MAX_PAR {
        let (chunks, rest) = Array::<Block, P>::slice_as_chunks_mut(blocks);
        for chunk in chunks {
            let tw = &mut tw[..p * BLOCK];
            tweaks.fill(tw);
            xor_bytes(Array::slice_as_flattened_mut(chunk.as_mut_slice()), tw);
            par(chunk);
            xor_bytes(Array::slice_as_flattened_mut(chunk.as_mut_slice()), tw);
        }
        rest
    } else {
        blocks
    };
    for b in rest {
        let tw = &mut tw[..BLOCK];
        tweaks.fill(tw);
        xor_bytes(b, tw);
        one(b);
        xor_bytes(b, tw);
    }
}

/// [`xts_pass`] as an encryption closure run inside the cipher's backend session.
struct EncPass<'a, 'b> {
    blocks: &'a mut [Block],
    tweaks: Tweaks<'b>,
}

impl BlockSizeUser for EncPass<'_, '_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for EncPass<'_, '_> {
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(mut self, backend: &B) {
        xts_pass::<B::ParBlocksSize>(
            self.blocks,
            &mut self.tweaks,
            |c| backend.encrypt_par_blocks_inplace(c),
            |b| backend.encrypt_block_inplace(b),
        );
    }
}

/// [`xts_pass`] as a decryption closure run inside the cipher's backend session.
struct DecPass<'a, 'b> {
    blocks: &'a mut [Block],
    tweaks: Tweaks<'b>,
}

impl BlockSizeUser for DecPass<'_, '_> {
    type BlockSize = U16;
}

impl BlockCipherDecClosure for DecPass<'_, '_> {
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(mut self, backend: &B) {
        xts_pass::<B::ParBlocksSize>(
            self.blocks,
            &mut self.tweaks,
            |c| backend.decrypt_par_blocks_inplace(c),
            |b| backend.decrypt_block_inplace(b),
        );
    }
}

/// XTS over a RustCrypto block cipher (`aes`, `serpent`, `twofish`): `D` is the data cipher
/// (K1, both directions), `E` the tweak cipher (K2, encryption only). The cipher types
/// zeroize their key schedules on drop (their `zeroize` features).
pub(crate) struct SoftXts<D, E> {
    data: D,
    tweak: E,
}

impl<D, E> SoftXts<D, E>
where
    D: BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser<BlockSize = U16> + KeyInit,
    E: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16> + KeyInit,
{
    /// `key` is K1 || K2, each half a key of the block cipher; `what` and `expected` name
    /// the cipher and its key lengths in a key length error.
    pub(crate) fn new(key: &[u8], what: &'static str, expected: &'static str) -> Result<Self> {
        let (k1, k2) = key.split_at(key.len() / 2);
        let bad = |_| Error::KeyLength {
            what,
            got: key.len(),
            expected,
        };
        Ok(SoftXts {
            data: D::new_from_slice(k1).map_err(bad)?,
            tweak: E::new_from_slice(k2).map_err(bad)?,
        })
    }

    /// Transforms whole sectors of `sector_len` bytes in place; sector `i` uses IV
    /// `first_iv + i * iv_step` (the caller has checked that this does not overflow).
    ///
    /// Per session of up to [`SECTORS_PER_SESSION`] sectors: the initial tweaks
    /// `E_K2(plain64(IV))` in one batched call, then one single-pass data loop inside the
    /// K1 cipher's backend (so the key broadcast and CPU-feature dispatch happen once per
    /// session, and the blocks go through the backend's widest parallel path, 64 blocks
    /// with VAES-512).
    pub(crate) fn crypt(
        &self,
        buf: &mut [u8],
        sector_len: usize,
        first_iv: u64,
        iv_step: u64,
        encrypt: bool,
    ) {
        let per_sector = sector_len / BLOCK;
        let (blocks, rest) = Block::slice_as_chunks_mut(buf);
        debug_assert!(rest.is_empty() && per_sector > 0);
        let mut ivs = [Block::default(); SECTORS_PER_SESSION];
        let mut initial = [0u128; SECTORS_PER_SESSION];
        for (k, session) in blocks
            .chunks_mut(per_sector * SECTORS_PER_SESSION)
            .enumerate()
        {
            let sectors = session.len() / per_sector;
            let base = (k * SECTORS_PER_SESSION) as u64;
            for (i, iv) in ivs[..sectors].iter_mut().enumerate() {
                *iv = Block::from(plain64(first_iv + (base + i as u64) * iv_step));
            }
            self.tweak.encrypt_blocks(&mut ivs[..sectors]);
            for (t, iv) in initial.iter_mut().zip(&ivs[..sectors]) {
                *t = u128::from_le_bytes(iv.0);
            }
            let tweaks = Tweaks {
                initial: &initial[..sectors],
                per_sector,
                index: 0,
                t: 0,
            };
            if encrypt {
                self.data.encrypt_with_backend(EncPass {
                    blocks: session,
                    tweaks,
                });
            } else {
                self.data.decrypt_with_backend(DecPass {
                    blocks: session,
                    tweaks,
                });
            }
        }
    }
}

/// The keyed implementation behind an [`XtsCipher`].
enum Engine {
    #[cfg(feature = "aws-lc")]
    AwsLc(crate::ffi::EvpXts),
    Soft128(Box<SoftXts<Aes128, Aes128Enc>>),
    Soft192(Box<SoftXts<Aes192, Aes192Enc>>),
    Soft256(Box<SoftXts<Aes256, Aes256Enc>>),
}

/// AES-XTS (`aes-xts-plain64`) with a 32-byte (AES-128), 48-byte (AES-192) or 64-byte
/// (AES-256) key.
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
pub(crate) fn check_buffer(len: usize, sector_size: SectorSize, first_iv: u64) -> Result<()> {
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
    /// otherwise (and always for 32- and 48-byte keys, which aws-lc cannot do) RustCrypto.
    ///
    /// # Errors
    /// A key that is not 32, 48 or 64 bytes; a 64-byte key whose halves are equal (aws-lc
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
    /// - [`Error::KeyLength`]: a key that is not 32, 48 or 64 bytes, or a 32- or 48-byte key
    ///   with [`Backend::AwsLc`] (aws-lc has no AES-128-XTS or AES-192-XTS).
    /// - [`Error::Backend`]: [`Backend::AwsLc`] in a build without the `aws-lc` feature,
    ///   a key whose two halves are equal (aws-lc refuses it), or an aws-lc failure.
    pub fn with_backend(key: &SecretBytes, backend: Backend) -> Result<Self> {
        let k = key.expose();
        const EXPECTED: &str = "32 (AES-128-XTS), 48 (AES-192-XTS) or 64 (AES-256-XTS)";
        if !matches!(k.len(), 32 | 48 | 64) {
            return Err(Error::KeyLength {
                what: "AES-XTS",
                got: k.len(),
                expected: EXPECTED,
            });
        }
        const WHAT: &str = "AES-XTS";
        let engine = match backend {
            Backend::AwsLc => Self::awslc_engine(k)?,
            Backend::RustCrypto if k.len() == 32 => {
                Engine::Soft128(Box::new(SoftXts::new(k, WHAT, EXPECTED)?))
            }
            Backend::RustCrypto if k.len() == 48 => {
                Engine::Soft192(Box::new(SoftXts::new(k, WHAT, EXPECTED)?))
            }
            Backend::RustCrypto => Engine::Soft256(Box::new(SoftXts::new(k, WHAT, EXPECTED)?)),
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
                what: "AES-XTS with the aws-lc backend (aws-lc has no AES-128-XTS or AES-192-XTS; use Backend::RustCrypto)",
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

    /// Key length in bytes (32, 48 or 64).
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
            Engine::Soft192(x) => {
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
