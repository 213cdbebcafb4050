/// Errors from the crypto layer. No variant ever carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key of the wrong size for the cipher or backend.
    #[error("invalid key length {got} bytes for {what}; expected {expected}")]
    KeyLength {
        /// The cipher or backend that rejected the key.
        what: &'static str,
        /// The length supplied.
        got: usize,
        /// The accepted lengths.
        expected: &'static str,
    },
    /// A buffer that is not a whole number of sectors.
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Unaligned {
        /// The buffer length in bytes.
        len: usize,
        /// The sector size in bytes.
        sector_size: usize,
    },
    /// A sector size dm-crypt does not accept.
    #[error("unsupported sector size {0}; use 512, 1024, 2048 or 4096")]
    SectorSize(u64),
    /// A cipher specification (or key size) sealvol does not implement; `part` says which
    /// part of it.
    #[error("unsupported cipher {spec:?}: {part} {found:?} is not supported; {hint}")]
    UnsupportedCipher {
        /// The whole specification as given.
        spec: String,
        /// The part that is not supported.
        part: crate::spec::CipherPart,
        /// That part as given (the key size in bits for [`crate::spec::CipherPart::KeySize`]).
        found: String,
        /// What is supported instead.
        hint: String,
    },
    /// A hash name LUKS allows but sealvol does not support.
    #[error("unsupported hash {0:?}; supported: sha1, sha256, sha512, ripemd160, whirlpool")]
    UnknownHash(String),
    /// KDF (or AF splitter) parameters out of range; the message names the parameter.
    #[error("invalid KDF parameters: {0}")]
    KdfParams(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// The cipher backend (aws-lc) failed or is not available; the message says which call.
    #[error("cipher backend error: {0}")]
    Backend(String),
    /// The last sector's IV does not fit in 64 bits (`plain64` would wrap).
    #[error(
        "IV overflow: {sectors} sectors of {iv_units} IV units starting at IV {first_iv} pass 2^64; \
         the sector offset is beyond what plain64 can address"
    )]
    IvOverflow {
        /// The IV of the first sector.
        first_iv: u64,
        /// The number of sectors in the buffer.
        sectors: u64,
        /// 512-byte IV units per sector.
        iv_units: u64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
