//! The crate's one error type.

/// What went wrong in a block device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request passes the end of the device.
    #[error(
        "{what} of {len} bytes at offset {offset} passes the end of the device ({size} bytes); \
         keep requests inside the device"
    )]
    OutOfRange {
        /// The operation.
        what: &'static str,
        /// First byte of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Size of the device.
        size: u64,
    },
    /// A write, discard or zeroing on a read-only device.
    #[error("cannot {what}: the device is read-only ({why})")]
    ReadOnly {
        /// The refused operation.
        what: &'static str,
        /// Why the device is read-only.
        why: &'static str,
    },
    /// An I/O error of the layer below.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The sector cipher failed.
    #[error("sector cipher: {0}")]
    Crypto(#[from] sealvol_crypto::Error),
    /// The LUKS data segment cannot be used on this device.
    #[error("LUKS data segment: {0}")]
    Luks(#[from] sealvol_luks::Error),
    /// A dm-verity check failed or the tree could not be read.
    #[error("dm-verity: {0}")]
    Verity(#[from] sealvol_verity::Error),
    /// A request or configuration that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The `errno` value that best describes the error, for FUSE and NBD replies.
    pub fn errno(&self) -> i32 {
        match self {
            Error::OutOfRange { .. } | Error::Invalid(_) => rustix::io::Errno::INVAL.raw_os_error(),
            Error::ReadOnly { .. } => rustix::io::Errno::ROFS.raw_os_error(),
            Error::Io { source, .. } => source
                .raw_os_error()
                .unwrap_or(rustix::io::Errno::IO.raw_os_error()),
            Error::Crypto(_) | Error::Luks(_) | Error::Verity(_) => {
                rustix::io::Errno::IO.raw_os_error()
            }
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
