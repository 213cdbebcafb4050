//! AES-XTS over whole sectors with dm-crypt's `plain64` IV.

use crate::{Result, SecretBytes};

/// Encryption sector size. dm-crypt accepts powers of two from 512 to 4096.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectorSize {
    S512,
    S1024,
    S2048,
    S4096,
}

impl SectorSize {
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

/// AES-XTS (`aes-xts-plain64`) with a 32-byte (AES-128) or 64-byte (AES-256) key.
///
/// Sector `i` of a buffer gets the IV `first_iv + i * sector_size / 512`, written as a
/// 64-bit little-endian number followed by zeros (`plain64`). The key is set once; each
/// instance owns its cipher contexts, so it is `Send` but not `Sync`: use one per thread
/// ([`XtsCipher::try_clone`]) or [`ParallelXts`].
pub struct XtsCipher {
    _todo: (),
}

impl XtsCipher {
    /// Cipher with the default backend (aws-lc when built with it).
    ///
    /// # Errors
    /// A key that is not 32 or 64 bytes.
    pub fn new(key: &SecretBytes) -> Result<Self> {
        let _ = key;
        todo!()
    }
    pub fn with_backend(key: &SecretBytes, backend: Backend) -> Result<Self> {
        let _ = (key, backend);
        todo!()
    }
    pub fn backend(&self) -> Backend {
        todo!()
    }
    /// Key length in bytes (32 or 64).
    pub fn key_len(&self) -> usize {
        todo!()
    }
    /// A new instance with the same key and backend, for another thread.
    pub fn try_clone(&self) -> Result<Self> {
        todo!()
    }
    /// Encrypts `buf` in place; `buf.len()` must be a multiple of `sector_size`.
    pub fn encrypt_sectors(&mut self, buf: &mut [u8], sector_size: SectorSize, first_iv: u64) -> Result<()> {
        let _ = (buf, sector_size, first_iv);
        todo!()
    }
    /// Decrypts `buf` in place; `buf.len()` must be a multiple of `sector_size`.
    pub fn decrypt_sectors(&mut self, buf: &mut [u8], sector_size: SectorSize, first_iv: u64) -> Result<()> {
        let _ = (buf, sector_size, first_iv);
        todo!()
    }
}

/// Several [`XtsCipher`]s with one key, splitting large buffers across threads
/// (`std::thread::scope`); small buffers stay on the calling thread.
pub struct ParallelXts {
    _todo: (),
}

impl ParallelXts {
    /// `threads` workers (at least 1).
    pub fn new(key: &SecretBytes, backend: Backend, threads: usize) -> Result<Self> {
        let _ = (key, backend, threads);
        todo!()
    }
    pub fn threads(&self) -> usize {
        todo!()
    }
    pub fn encrypt_sectors(&mut self, buf: &mut [u8], sector_size: SectorSize, first_iv: u64) -> Result<()> {
        let _ = (buf, sector_size, first_iv);
        todo!()
    }
    pub fn decrypt_sectors(&mut self, buf: &mut [u8], sector_size: SectorSize, first_iv: u64) -> Result<()> {
        let _ = (buf, sector_size, first_iv);
        todo!()
    }
}
