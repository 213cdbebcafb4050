//! The crate's one error type.
//!
//! Every variant names what was found and, where it helps, what was expected and what the
//! user can do. No variant ever carries key material: passphrases, volume keys and derived
//! keys never reach an error message.

/// Which of the two LUKS2 header copies (LUKS2 on-disk format, §2: primary at offset 0,
/// secondary right after it at `hdr_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Copy {
    /// The primary copy, at offset 0 (magic `LUKS\xba\xbe`).
    Primary,
    /// The secondary copy, at offset `hdr_size` (magic `SKUL\xba\xbe`).
    Secondary,
}

impl std::fmt::Display for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Copy::Primary => "primary",
            Copy::Secondary => "secondary",
        })
    }
}

/// Errors from parsing, validating, unlocking and updating LUKS2 headers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on the storage, with what was being done.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the crate was doing (e.g. "reading the primary header").
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Neither header copy carries the LUKS magic.
    #[error("no LUKS header found: neither offset 0 nor any LUKS2 secondary header offset has the LUKS magic; is this the right device or header file?")]
    NotLuks,
    /// A LUKS header of a version this crate does not handle (LUKS1 is `1`).
    #[error("unsupported LUKS version {0}; sealvol reads LUKS1 and LUKS2 headers")]
    UnsupportedVersion(u16),
    /// Metadata that violates the LUKS2 format rules (found in a header, a backup, or a
    /// request such as [`FormatOptions`](crate::FormatOptions)).
    #[error("invalid LUKS metadata: {0}")]
    Invalid(String),
    /// A LUKS2-only feature (tokens, labels) asked of a LUKS1 volume.
    #[error("{0} exist only in LUKS2 and this is a LUKS1 volume; `cryptsetup convert --type luks2` converts it")]
    Luks2Only(String),
    /// A header copy that is damaged (bad checksum, bad magic, bad offsets).
    #[error("corrupt LUKS2 {copy} header: {reason}")]
    Corrupt {
        /// Which copy.
        copy: Copy,
        /// What is wrong with it.
        reason: String,
    },
    /// Both header copies are unusable.
    #[error("no valid LUKS2 header copy: primary: {primary}; secondary: {secondary}. Restore a header backup (luksHeaderBackup) if you have one")]
    NoValidHeader {
        /// Why the primary copy was refused.
        primary: String,
        /// Why the secondary copy was refused.
        secondary: String,
    },
    /// No keyslot opens with the given passphrase or key.
    #[error("no keyslot opens with this key")]
    WrongKey,
    /// The keyslot does not exist.
    #[error("keyslot {0} does not exist")]
    NoSuchKeyslot(u32),
    /// The keyslot is already in use.
    #[error("keyslot {0} is already in use; remove it first or choose another slot")]
    KeyslotInUse(u32),
    /// All 32 keyslots are in use, or the keyslots area has no room for another.
    #[error("no free keyslot: {0}")]
    NoFreeKeyslot(String),
    /// Refused to remove the last active keyslot (the volume would become unopenable).
    #[error("keyslot {0} is the last active keyslot; removing it makes the data unrecoverable. Use erase to destroy all keyslots on purpose")]
    LastKeyslot(u32),
    /// A cipher this crate refuses (`cipher_null`, `ecb`) or does not implement; `part` says
    /// which part of the specification (cipher, mode, IV generator, key size ...).
    #[error("unsupported cipher {spec:?}: {part} {found:?} is not supported; {hint}")]
    UnsupportedCipher {
        /// The specification as the header or request gives it.
        spec: String,
        /// The part that is not supported.
        part: sealvol_crypto::spec::CipherPart,
        /// That part as given.
        found: String,
        /// What is supported instead.
        hint: String,
    },
    /// A hash or KDF this crate does not implement.
    #[error("unsupported {what} {name:?}")]
    Unsupported {
        /// What kind of thing (e.g. "keyslot KDF hash").
        what: &'static str,
        /// Its name in the metadata.
        name: String,
    },
    /// A header that may be read but not changed (the host's wording of
    /// [`Error::Blocked`] for write verbs).
    #[error("the LUKS2 header is read-only for sealvol: {0}")]
    ReadOnly(String),
    /// The header is valid, but describes a state sealvol does not implement (a
    /// reencryption in progress or interrupted, hardware OPAL, dm-integrity, a requirement
    /// flag of a newer cryptsetup): it can be read and dumped, never opened or written.
    #[error("sealvol cannot open or change this LUKS2 volume: {0}")]
    Blocked(crate::luks2::Blocker),
    /// A keyslot sealvol cannot open (an unknown type, KDF, cipher or hash, or parameters it
    /// does not accept); the header and its other keyslots stay usable.
    #[error("keyslot {id} cannot be used by sealvol: {reason}; other keyslots still open the volume, and cryptsetup may open this one")]
    UnusableKeyslot {
        /// The keyslot.
        id: u32,
        /// What is missing: [`Error::UnsupportedCipher`] naming the part for an area cipher
        /// sealvol does not implement, [`Error::Unsupported`] for a type, KDF or hash,
        /// [`Error::Invalid`] for parameters it does not accept.
        reason: Box<Error>,
    },
    /// The token does not exist.
    #[error("token {0} does not exist")]
    NoSuchToken(u32),
    /// The token id is already in use.
    #[error("token {0} is already in use; remove it first or choose another id")]
    TokenInUse(u32),
    /// A token that is not a valid LUKS2 token object.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The JSON metadata would not fit the JSON area.
    #[error("the JSON metadata ({len} bytes) does not fit the {area}-byte JSON area; remove tokens or keyslots, or reformat with a larger metadata size")]
    MetadataTooLarge {
        /// Encoded length plus the terminating NUL.
        len: usize,
        /// Size of the JSON area.
        area: u64,
    },
    /// The storage is smaller than the header and keyslots area it must hold.
    #[error("the device is too small: {len} bytes, but the LUKS2 header and keyslots area need {needed} bytes")]
    DeviceTooSmall {
        /// Storage length.
        len: u64,
        /// Bytes required.
        needed: u64,
    },
    /// The plaintext source is longer than the data segment (streaming import).
    #[error("the source is larger than the data segment: capacity {capacity} bytes, source at least {at_least} bytes; grow the volume or use a smaller source")]
    SourceTooLarge {
        /// Bytes the segment holds.
        capacity: u64,
        /// Bytes of source seen so far.
        at_least: u64,
    },
    /// A length that is not a whole number of sectors.
    #[error("{len} bytes is not a whole number of {sector_size}-byte sectors")]
    Unaligned {
        /// The length.
        len: u64,
        /// The sector size.
        sector_size: u64,
    },
    /// The data device ended before the data segment did.
    #[error(
        "the data device is truncated: expected data up to byte {expected}, found only {found}"
    )]
    TruncatedData {
        /// Where the data should end.
        expected: u64,
        /// Where the device ended.
        found: u64,
    },
    /// A key derivation named by the header costs more than the caller's
    /// [`KdfLimits`](crate::KdfLimits); nothing was derived.
    #[error("{object} asks for {asked}, over the limit of {limit}; nothing was tried. The header decides how long and how much memory every unlock takes: raise the limit ({option}) only for a header you trust, or try another keyslot")]
    KdfOverLimit {
        /// What asked: `keyslot 3`, `the digest` ...
        object: String,
        /// What it asked for.
        asked: String,
        /// The limit.
        limit: String,
        /// The `sealvol` option that raises the limit.
        option: &'static str,
    },
    /// The data segment overlaps the header and keyslots of an attached header: writing data
    /// would destroy the keys, reading it would decrypt the header.
    #[error("the data segment starts at byte {data_offset}, inside the attached LUKS header and keyslot area that ends at byte {header_end}; such a header is only valid detached (pass --header FILE if this is a detached header); refusing to use it")]
    DataOverlapsHeader {
        /// Where the data segment (LUKS1 payload) starts.
        data_offset: u64,
        /// Where the header and keyslot area ends.
        header_end: u64,
    },
    /// An error from the crypto layer (other than an unsupported cipher, which is
    /// [`Error::UnsupportedCipher`]).
    #[error(transparent)]
    Crypto(sealvol_crypto::Error),
}

impl From<sealvol_crypto::Error> for Error {
    /// A crypto error; an unsupported cipher specification becomes
    /// [`Error::UnsupportedCipher`] with the same fields.
    fn from(e: sealvol_crypto::Error) -> Self {
        match e {
            sealvol_crypto::Error::UnsupportedCipher {
                spec,
                part,
                found,
                hint,
            } => Error::UnsupportedCipher {
                spec,
                part,
                found,
                hint,
            },
            other => Error::Crypto(other),
        }
    }
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
