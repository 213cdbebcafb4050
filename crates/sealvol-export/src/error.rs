//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong while serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The FUSE file could not be mounted.
    #[error("cannot mount the FUSE export on {path}: {source}; is /dev/fuse there (modprobe fuse) and are you root?")]
    Mount {
        /// The file to mount on.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An NBD client broke the protocol.
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    /// An NBD connection ended before the client was done with it.
    #[error("the NBD connection ended: {why}")]
    Ended {
        /// Why: the server stops, or the connection failed.
        why: String,
    },
    /// TLS credentials could not be loaded or used.
    #[error("TLS credentials in {dir}: {problem}")]
    Tls {
        /// The credentials directory.
        dir: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// Bad input, with what to do about it.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
