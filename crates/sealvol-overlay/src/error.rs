//! The crate's one error type.

use crate::format::Checkpoint;

/// What went wrong with an overlay. No variant carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error of the storage below.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No keyslot of the embedded LUKS2 header opens with the key.
    #[error("wrong key: no keyslot of the overlay opens with it")]
    WrongKey,
    /// The embedded LUKS2 header refused (damaged, unsupported, or a KDF above the limits).
    #[error("the overlay's LUKS2 header: {0}")]
    Luks(sealvol_luks::Error),
    /// A cryptographic primitive failed (not an authentication failure).
    #[error("overlay crypto: {0}")]
    Crypto(#[from] sealvol_crypto::Error),
    /// Neither root slot holds a valid root: not an overlay, or both copies damaged.
    #[error("no valid overlay root: slot 0: {slot0}; slot 1: {slot1}")]
    NoValidRoot {
        /// Why slot 0 was refused.
        slot0: String,
        /// Why slot 1 was refused.
        slot1: String,
    },
    /// A root slot of an unknown format version.
    #[error("overlay format version {0} is not supported (this sealvol reads version 1)")]
    UnsupportedVersion(u32),
    /// Metadata that does not parse or does not authenticate: the host changed it or it is
    /// damaged. Nothing is read through it.
    #[error("overlay metadata: {what}: {why}")]
    Corrupt {
        /// The structure.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A data cluster failed authentication (its bytes, place or version changed).
    #[error(
        "cluster {cluster} of layer {layer} does not authenticate: the host changed or replayed it"
    )]
    Integrity {
        /// Logical cluster index.
        cluster: u64,
        /// The layer's UUID.
        layer: String,
    },
    /// The overlay is older than the expected checkpoint (a rollback to a saved copy).
    #[error(
        "rollback: the overlay is at checkpoint {found}, older than the expected {expected}; \
         the host presented an old copy"
    )]
    Rollback {
        /// What the file holds.
        found: Checkpoint,
        /// What the caller expected at least.
        expected: Checkpoint,
    },
    /// Same commit counter as the expected checkpoint but another root: a forked history.
    #[error(
        "the overlay is at checkpoint {found}, which differs from the expected {expected} at the \
         same counter: another history of this overlay"
    )]
    Diverged {
        /// What the file holds.
        found: Checkpoint,
        /// What the caller expected.
        expected: Checkpoint,
    },
    /// The base given at open is not the one the overlay was made over.
    #[error("the base is not the overlay's: {0}")]
    BaseMismatch(String),
    /// A lower layer is not the frozen layer this overlay pinned.
    #[error("lower layer {index} ({uuid}) is not the pinned snapshot: {why}")]
    LowerMismatch {
        /// Index in the chain (0 = right below).
        index: usize,
        /// The pinned UUID.
        uuid: String,
        /// What differs.
        why: String,
    },
    /// A write, discard or management operation on a read-only or frozen layer.
    #[error("the overlay is read-only: {0}")]
    ReadOnly(&'static str),
    /// No such generation in this layer.
    #[error("generation {0} is not a generation of this layer (see `status`)")]
    NoSuchGeneration(u32),
    /// The current generation cannot be retired.
    #[error("generation {0} is the one new writes use; rekey first, then retire it")]
    RetireCurrent(u32),
    /// Another generation is being retired.
    #[error("generation {0} is being retired; finish that retire first")]
    RetireInProgress(u32),
    /// A table is full.
    #[error("overlay limit: {0}")]
    Limit(String),
    /// The overlay hit an error in the middle of a commit and refuses further changes;
    /// reopen it (the file holds the last committed state).
    #[error("the overlay failed during a commit and must be reopened: {0}")]
    Failed(String),
    /// A request or option that makes no sense.
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

    /// Whether the error means the host changed or replayed something (metadata, data or a
    /// whole older copy).
    pub fn is_tampering(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Integrity { .. }
                | Error::Rollback { .. }
                | Error::Diverged { .. }
                | Error::NoValidRoot { .. }
                | Error::LowerMismatch { .. }
        )
    }
}

impl From<sealvol_luks::Error> for Error {
    fn from(e: sealvol_luks::Error) -> Self {
        match e {
            sealvol_luks::Error::WrongKey => Error::WrongKey,
            e => Error::Luks(e),
        }
    }
}

impl From<Error> for sealvol_block::Error {
    /// Read-only and range errors keep their block meaning; everything else is an I/O
    /// error without an OS errno, which exports answer with `EIO`.
    fn from(e: Error) -> Self {
        match e {
            Error::ReadOnly(why) => sealvol_block::Error::ReadOnly {
                what: "write to the overlay",
                why,
            },
            e => sealvol_block::Error::Io {
                context: "overlay".into(),
                source: std::io::Error::other(e),
            },
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
