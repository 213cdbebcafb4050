//! [`SectorCipher`]: every [`CipherSpec`] over whole sectors, exactly as dm-crypt computes it.
//!
//! The IV of sector `i` of a buffer is `first_iv + i * sector_size / 512` (dm-crypt counts
//! 512-byte units whatever the sector size; cryptsetup never sets `iv_large_sectors`), made
//! into bytes by the spec's [`IvGenerator`]:
//! - `plain64`: the 64-bit number little-endian, zero-padded to the IV size (16 bytes, 32 for
//!   Adiantum); `plain`: the same with the low 32 bits only (the IV wraps at 2^32).
//! - `essiv:HASH`: the `plain64` block encrypted with the block cipher keyed by
//!   `HASH(volume key)` (CBC only).
//!
//! The modes:
//! - XTS: AES through [`XtsCipher`] (aws-lc for 512-bit keys, unchanged hot path); Serpent and
//!   Twofish through the same single-pass XTS loop over the RustCrypto ciphers.
//! - CBC: one IV per encryption sector, the chain running over the whole sector. AES through
//!   aws-lc's `AES_cbc_encrypt` (measured with `bench/ciphers.sh` on the VAES machines:
//!   1.2-1.25x RustCrypto's `cbc` + `aes` encrypting, 1.1-1.35x decrypting); Serpent and
//!   Twofish through RustCrypto's `cbc`.
//!
//! Speed, one core, 4096-byte sectors (`bench/ciphers.sh`): aes-xts 512-bit about 22 GB/s
//! (aws-lc), other AES-XTS key sizes about 10 GB/s (RustCrypto), AES-CBC about 1.2-1.6 GB/s
//! encrypting (CBC encryption is serial) and 9-13 GB/s decrypting, Adiantum about
//! 0.4-0.6 GB/s, Serpent about 0.14 GB/s, Twofish about 3 MB/s (the `twofish` crate derives
//! its key-dependent S-boxes in every round instead of keeping tables: usable for small
//! volumes only).
//! - Adiantum: the `adiantum` crate (XChaCha12 or XChaCha20 with AES-256, RustCrypto traits)
//!   over the whole sector with a 32-byte tweak holding the IV.
//!
//! The key setup happens once in [`SectorCipher::new`]; each instance owns its key schedules
//! and a [`SecretBytes`] copy of the key (for [`SectorCipher::try_clone`]), all wiped on drop.

use std::cell::Cell;
use std::marker::PhantomData;

use aes::cipher::consts::U16;
use aes::cipher::{
    Array, BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt,
    BlockSizeUser, InnerIvInit, KeyInit,
};
use chacha20::{XChaCha12, XChaCha20};
use serpent::Serpent;
use twofish::Twofish;

use crate::spec::{AdiantumStream, BlockCipher, CipherMode, IvGenerator};
use crate::xts::{check_buffer, plain64, SoftXts};
use crate::{CipherSpec, Error, Result, SecretBytes, SectorSize, XtsCipher};

type Block = Array<u8, U16>;

/// One block cipher for ESSIV's IV encryption, keyed by the hash of the volume key.
enum EssivCipher {
    Aes128(aes::Aes128Enc),
    Aes192(aes::Aes192Enc),
    Aes256(aes::Aes256Enc),
    Serpent(Box<Serpent>),
    Twofish(Box<Twofish>),
}

impl EssivCipher {
    fn new(cipher: BlockCipher, salt: &[u8]) -> Result<Self> {
        let bad = |_| Error::KeyLength {
            what: "ESSIV",
            got: salt.len(),
            expected: "a key length of the block cipher",
        };
        Ok(match (cipher, salt.len()) {
            (BlockCipher::Aes, 16) => {
                EssivCipher::Aes128(KeyInit::new_from_slice(salt).map_err(bad)?)
            }
            (BlockCipher::Aes, 24) => {
                EssivCipher::Aes192(KeyInit::new_from_slice(salt).map_err(bad)?)
            }
            (BlockCipher::Aes, _) => {
                EssivCipher::Aes256(KeyInit::new_from_slice(salt).map_err(bad)?)
            }
            (BlockCipher::Serpent, _) => {
                EssivCipher::Serpent(Box::new(KeyInit::new_from_slice(salt).map_err(bad)?))
            }
            (BlockCipher::Twofish, _) => {
                EssivCipher::Twofish(Box::new(KeyInit::new_from_slice(salt).map_err(bad)?))
            }
        })
    }

    fn encrypt(&self, b: &mut Block) {
        match self {
            EssivCipher::Aes128(c) => c.encrypt_block(b),
            EssivCipher::Aes192(c) => c.encrypt_block(b),
            EssivCipher::Aes256(c) => c.encrypt_block(b),
            EssivCipher::Serpent(c) => c.encrypt_block(b),
            EssivCipher::Twofish(c) => c.encrypt_block(b),
        }
    }
}

/// The IV bytes of CBC sectors: `plain64` or ESSIV.
struct CbcIv {
    essiv: Option<EssivCipher>,
}

impl CbcIv {
    fn new(iv: IvGenerator, cipher: BlockCipher, key: &[u8]) -> Result<Self> {
        Ok(CbcIv {
            essiv: match iv {
                IvGenerator::Essiv(hash) => {
                    let salt = SecretBytes::from_vec(hash.digest(key));
                    Some(EssivCipher::new(cipher, salt.expose())?)
                }
                IvGenerator::Plain | IvGenerator::Plain64 => None,
            },
        })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut b = Block::from(plain64(sector));
        if let Some(e) = &self.essiv {
            e.encrypt(&mut b);
        }
        b.0
    }
}

/// CBC over a RustCrypto block cipher: one encryptor and one decryptor, keyed once, whose IV
/// is reset for each sector.
struct SoftCbc<C: BlockCipherEncrypt + BlockCipherDecrypt> {
    enc: cbc::Encryptor<C>,
    dec: cbc::Decryptor<C>,
}

impl<C> SoftCbc<C>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser<BlockSize = U16> + KeyInit,
{
    fn new(key: &[u8], what: &'static str) -> Result<Self> {
        let bad = |_| Error::KeyLength {
            what,
            got: key.len(),
            expected: "16, 24 or 32",
        };
        let zero = Block::default();
        Ok(SoftCbc {
            enc: cbc::Encryptor::inner_iv_init(C::new_from_slice(key).map_err(bad)?, &zero),
            dec: cbc::Decryptor::inner_iv_init(C::new_from_slice(key).map_err(bad)?, &zero),
        })
    }

    fn sector(&mut self, data: &mut [u8], iv: &[u8; 16], encrypt: bool) {
        use aes::cipher::SetIvState as _;
        let (blocks, rest) = Block::slice_as_chunks_mut(data);
        debug_assert!(rest.is_empty());
        let iv = Block::from(*iv);
        if encrypt {
            self.enc.set_iv(&iv);
            self.enc.encrypt_blocks(blocks);
        } else {
            self.dec.set_iv(&iv);
            self.dec.decrypt_blocks(blocks);
        }
    }
}

/// The keyed CBC implementation.
enum CbcEngine {
    #[cfg(feature = "aws-lc")]
    AwsLcAes(crate::ffi::AesCbc),
    Aes128(Box<SoftCbc<aes::Aes128>>),
    Aes192(Box<SoftCbc<aes::Aes192>>),
    Aes256(Box<SoftCbc<aes::Aes256>>),
    Serpent(Box<SoftCbc<Serpent>>),
    Twofish(Box<SoftCbc<Twofish>>),
}

impl CbcEngine {
    fn new(cipher: BlockCipher, key: &[u8], prefer_awslc: bool) -> Result<Self> {
        // Without aws-lc every AES key goes to RustCrypto.
        let _ = prefer_awslc;
        Ok(match (cipher, key.len()) {
            #[cfg(feature = "aws-lc")]
            (BlockCipher::Aes, _) if prefer_awslc => {
                CbcEngine::AwsLcAes(crate::ffi::AesCbc::new(key)?)
            }
            (BlockCipher::Aes, 16) => CbcEngine::Aes128(Box::new(SoftCbc::new(key, "AES-CBC")?)),
            (BlockCipher::Aes, 24) => CbcEngine::Aes192(Box::new(SoftCbc::new(key, "AES-CBC")?)),
            (BlockCipher::Aes, _) => CbcEngine::Aes256(Box::new(SoftCbc::new(key, "AES-CBC")?)),
            (BlockCipher::Serpent, _) => {
                CbcEngine::Serpent(Box::new(SoftCbc::new(key, "Serpent-CBC")?))
            }
            (BlockCipher::Twofish, _) => {
                CbcEngine::Twofish(Box::new(SoftCbc::new(key, "Twofish-CBC")?))
            }
        })
    }

    fn sector(&mut self, data: &mut [u8], iv: &[u8; 16], encrypt: bool) {
        match self {
            #[cfg(feature = "aws-lc")]
            CbcEngine::AwsLcAes(c) if encrypt => c.encrypt(data, iv),
            #[cfg(feature = "aws-lc")]
            CbcEngine::AwsLcAes(c) => c.decrypt(data, iv),
            CbcEngine::Aes128(c) => c.sector(data, iv, encrypt),
            CbcEngine::Aes192(c) => c.sector(data, iv, encrypt),
            CbcEngine::Aes256(c) => c.sector(data, iv, encrypt),
            CbcEngine::Serpent(c) => c.sector(data, iv, encrypt),
            CbcEngine::Twofish(c) => c.sector(data, iv, encrypt),
        }
    }
}

/// The keyed implementation behind a [`SectorCipher`].
enum Engine {
    AesXts(XtsCipher),
    SerpentXts(Box<SoftXts<Serpent, Serpent>>),
    TwofishXts(Box<SoftXts<Twofish, Twofish>>),
    Cbc(CbcEngine, Box<CbcIv>),
    Adiantum12(Box<adiantum::Cipher<XChaCha12, aes::Aes256>>),
    Adiantum20(Box<adiantum::Cipher<XChaCha20, aes::Aes256>>),
}

/// Which implementation of AES a [`SectorCipher`] uses (the other ciphers have one each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AesBackend {
    /// aws-lc where it has the mode (AES-256-XTS, AES-CBC), RustCrypto elsewhere. The default.
    #[default]
    Fastest,
    /// RustCrypto `aes` only: the cross-check in tests.
    RustCrypto,
}

/// Sectors encrypted with one [`CipherSpec`], byte for byte as dm-crypt does.
///
/// ```
/// use sealvol_crypto::{CipherSpec, SecretBytes, SectorCipher, SectorSize};
/// let spec = CipherSpec::parse("twofish-cbc-essiv:sha256", 32)?;
/// let mut c = SectorCipher::new(&spec, &SecretBytes::random(32)?)?;
/// let mut buf = vec![7u8; 8192];
/// c.encrypt_sectors(&mut buf, SectorSize::S4096, 0)?;
/// c.decrypt_sectors(&mut buf, SectorSize::S4096, 0)?;
/// assert!(buf.iter().all(|&b| b == 7));
/// # Ok::<(), sealvol_crypto::Error>(())
/// ```
///
/// Like [`XtsCipher`] it is `Send` but not `Sync`: one per thread
/// ([`SectorCipher::try_clone`]).
pub struct SectorCipher {
    spec: CipherSpec,
    engine: Engine,
    key: SecretBytes,
    backend: AesBackend,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectorCipher")
            .field("spec", &self.spec.to_string())
            .field("key_len", &self.key.len())
            .field("backend", &self.backend)
            .finish()
    }
}

impl SectorCipher {
    /// The cipher of `spec` under `key` (whose length must be the spec's key length), with
    /// the fastest AES backend.
    ///
    /// # Errors
    /// [`Error::KeyLength`] for a key of another length than the spec's; aws-lc refusing a
    /// 512-bit AES-XTS key whose halves are equal ([`Error::Backend`]).
    pub fn new(spec: &CipherSpec, key: &SecretBytes) -> Result<Self> {
        Self::with_backend(spec, key, AesBackend::Fastest)
    }

    /// As [`SectorCipher::new`] with an explicit AES backend.
    ///
    /// # Errors
    /// As [`SectorCipher::new`].
    pub fn with_backend(spec: &CipherSpec, key: &SecretBytes, backend: AesBackend) -> Result<Self> {
        let k = key.expose();
        if k.len() != spec.key_len() {
            return Err(Error::KeyLength {
                what: "the cipher specification",
                got: k.len(),
                expected: "the specification's key size",
            });
        }
        const XTS_KEYS: &str = "32, 48 or 64";
        let engine = match spec.mode() {
            CipherMode::Xts(BlockCipher::Aes) => Engine::AesXts(match backend {
                AesBackend::Fastest => XtsCipher::new(key)?,
                AesBackend::RustCrypto => XtsCipher::with_backend(key, crate::Backend::RustCrypto)?,
            }),
            CipherMode::Xts(BlockCipher::Serpent) => {
                Engine::SerpentXts(Box::new(SoftXts::new(k, "Serpent-XTS", XTS_KEYS)?))
            }
            CipherMode::Xts(BlockCipher::Twofish) => {
                Engine::TwofishXts(Box::new(SoftXts::new(k, "Twofish-XTS", XTS_KEYS)?))
            }
            CipherMode::Cbc(c) => Engine::Cbc(
                CbcEngine::new(c, k, backend == AesBackend::Fastest)?,
                Box::new(CbcIv::new(spec.iv(), c, k)?),
            ),
            CipherMode::Adiantum(s) => {
                let bad = |_| Error::KeyLength {
                    what: "Adiantum",
                    got: k.len(),
                    expected: "32",
                };
                match s {
                    AdiantumStream::XChaCha12 => {
                        Engine::Adiantum12(Box::new(KeyInit::new_from_slice(k).map_err(bad)?))
                    }
                    AdiantumStream::XChaCha20 => {
                        Engine::Adiantum20(Box::new(KeyInit::new_from_slice(k).map_err(bad)?))
                    }
                }
            }
        };
        Ok(SectorCipher {
            spec: *spec,
            engine,
            key: key.duplicate(),
            backend,
            _not_sync: PhantomData,
        })
    }

    /// The specification this cipher implements.
    pub fn spec(&self) -> &CipherSpec {
        &self.spec
    }

    /// A new instance with the same spec, key and backend, for another thread.
    ///
    /// # Errors
    /// As [`SectorCipher::new`].
    pub fn try_clone(&self) -> Result<Self> {
        Self::with_backend(&self.spec, &self.key, self.backend)
    }

    /// Encrypts `buf` in place; `buf.len()` must be a multiple of `sector_size`. Sector `i`
    /// has the IV `first_iv + i * sector_size / 512`.
    ///
    /// # Errors
    /// [`Error::Unaligned`] for a partial sector, [`Error::IvOverflow`] if a 64-bit IV would
    /// pass 2^64 (`plain` wraps at 2^32 as dm-crypt does and never overflows),
    /// [`Error::Backend`] if aws-lc fails. On error `buf` may be partly transformed.
    pub fn encrypt_sectors(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
    ) -> Result<()> {
        self.crypt(buf, sector_size, first_iv, true)
    }

    /// Decrypts `buf` in place; see [`SectorCipher::encrypt_sectors`].
    ///
    /// # Errors
    /// As [`SectorCipher::encrypt_sectors`].
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
        if self.spec.iv() != IvGenerator::Plain {
            check_buffer(buf.len(), sector_size, first_iv)?;
            return self.run(buf, sector_size, first_iv, encrypt);
        }
        // `plain`: the IV is the sector number mod 2^32. Runs of sectors whose IVs do not
        // wrap go through the 64-bit path with IVs below 2^32.
        let n = sector_size.bytes();
        if buf.len() % n != 0 {
            return Err(Error::Unaligned {
                len: buf.len(),
                sector_size: n,
            });
        }
        let step = sector_size.iv_units();
        let mut iv = first_iv & 0xffff_ffff;
        let mut rest = buf;
        while !rest.is_empty() {
            let before_wrap = ((1u64 << 32) - iv).div_ceil(step);
            let sectors = ((rest.len() / n) as u64).min(before_wrap) as usize;
            let (run, tail) = rest.split_at_mut(sectors * n);
            self.run(run, sector_size, iv, encrypt)?;
            iv = (iv + sectors as u64 * step) & 0xffff_ffff;
            rest = tail;
        }
        Ok(())
    }

    /// Crypts whole sectors whose 64-bit IVs (checked) start at `first_iv`.
    fn run(
        &mut self,
        buf: &mut [u8],
        sector_size: SectorSize,
        first_iv: u64,
        encrypt: bool,
    ) -> Result<()> {
        let n = sector_size.bytes();
        let step = sector_size.iv_units();
        match &mut self.engine {
            Engine::AesXts(x) if encrypt => x.encrypt_sectors(buf, sector_size, first_iv)?,
            Engine::AesXts(x) => x.decrypt_sectors(buf, sector_size, first_iv)?,
            Engine::SerpentXts(x) => x.crypt(buf, n, first_iv, step, encrypt),
            Engine::TwofishXts(x) => x.crypt(buf, n, first_iv, step, encrypt),
            Engine::Cbc(c, ivs) => {
                for (i, sector) in buf.chunks_exact_mut(n).enumerate() {
                    let iv = ivs.iv(first_iv + i as u64 * step);
                    c.sector(sector, &iv, encrypt);
                }
            }
            Engine::Adiantum12(a) => {
                adiantum_sectors(buf, n, first_iv, step, encrypt, |s, t, e| {
                    if e {
                        a.encrypt(s, t)
                    } else {
                        a.decrypt(s, t)
                    }
                })
            }
            Engine::Adiantum20(a) => {
                adiantum_sectors(buf, n, first_iv, step, encrypt, |s, t, e| {
                    if e {
                        a.encrypt(s, t)
                    } else {
                        a.decrypt(s, t)
                    }
                })
            }
        }
        Ok(())
    }
}

/// Adiantum over each sector with the 32-byte tweak `plain64(IV)` (dm-crypt's IV of size
/// 32: the little-endian sector number, then zeros).
fn adiantum_sectors(
    buf: &mut [u8],
    n: usize,
    first_iv: u64,
    step: u64,
    encrypt: bool,
    mut f: impl FnMut(&mut [u8], &[u8], bool),
) {
    let mut tweak = [0u8; 32];
    for (i, sector) in buf.chunks_exact_mut(n).enumerate() {
        tweak[..8].copy_from_slice(&(first_iv + i as u64 * step).to_le_bytes());
        f(sector, &tweak, encrypt);
    }
}

#[cfg(test)]
mod tests;
