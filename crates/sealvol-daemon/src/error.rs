//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong starting or running the daemon (a request's failure is a response, not
/// an error of the daemon).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A library call failed.
    #[error(transparent)]
    Host(#[from] sealvol_host::Error),
    /// A socket could not be made.
    #[error(transparent)]
    Socket(#[from] sealvol_export::Error),
    /// The API token file is unusable.
    #[error("the API token file {path}: {reason}; {fix}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// What to do.
        fix: &'static str,
    },
    /// The configuration is refused.
    #[error("{0}")]
    Config(String),
    /// An I/O error outside the library calls.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A client request could not be made or answered (the client side: [`crate::client`]).
    #[error("{context}: {reason}")]
    Client {
        /// What was asked.
        context: String,
        /// Why it failed.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
