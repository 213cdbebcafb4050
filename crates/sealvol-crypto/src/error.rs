/// Errors from the crypto layer. No variant ever carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid key length {got} bytes for {what}; expected {expected}")]
    KeyLength { what: &'static str, got: usize, expected: &'static str },
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Unaligned { len: usize, sector_size: usize },
    #[error("unsupported sector size {0}; use 512, 1024, 2048 or 4096")]
    SectorSize(u64),
    #[error("unsupported hash {0:?}; supported: sha1, sha256, sha512")]
    UnknownHash(String),
    #[error("invalid KDF parameters: {0}")]
    KdfParams(String),
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("cipher backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
