//! The one error type of this crate.

use std::io;

/// Everything that can go wrong while describing, building, verifying or signing a dm-verity
/// hash tree.
///
/// A *verification failure* of a whole image is not an error: [`crate::verify`] returns it in a
/// [`crate::Report`]. Errors here are bad parameters, unreadable input, or (for
/// [`crate::VerityReader`], which has no report) a block that failed verification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the data or hash device failed.
    #[error("I/O error while {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The hash algorithm is not one this crate implements.
    #[error(
        "unsupported hash algorithm {name:?}: use sha256 (the default), sha512, sha384 or sha1"
    )]
    UnsupportedAlgorithm {
        /// The name as given or as found in the superblock.
        name: String,
    },

    /// A hash type (format) other than 0 (Chrome OS) or 1 (normal).
    #[error("unsupported hash type (format) {0}: dm-verity knows 0 (Chrome OS) and 1 (normal)")]
    UnsupportedHashType(u32),

    /// A block size that veritysetup refuses.
    #[error(
        "invalid {which} block size {size}: it must be a power of two from 512 to 524288 bytes \
         (the kernel activates only sizes up to the page size, 4096)"
    )]
    BlockSize {
        /// "data" or "hash".
        which: &'static str,
        /// The size given.
        size: u64,
    },

    /// A salt longer than the superblock can hold.
    #[error("salt of {0} bytes is too long: at most 256 bytes")]
    SaltTooLong(usize),

    /// A salt or root hash that is not hex.
    #[error("{what} is not valid hex ({found:?}): give an even number of hex digits")]
    Hex {
        /// What was being parsed.
        what: &'static str,
        /// The text found (never a secret).
        found: String,
    },

    /// Zero data blocks: nothing to protect.
    #[error("the data area has no complete block of {block_size} bytes: nothing to hash")]
    NoDataBlocks {
        /// The data block size.
        block_size: u32,
    },

    /// Sizes that overflow 64-bit (signed, as veritysetup uses `off_t`) offsets.
    #[error("device offset overflow: {what}")]
    Overflow {
        /// What overflowed.
        what: &'static str,
    },

    /// More than 63 tree levels.
    #[error("too many tree levels ({0}) for a verity volume: at most 63")]
    TooManyLevels(u32),

    /// A hash offset that is not a multiple of 512 bytes.
    #[error("unsupported hash offset {0}: it must be a multiple of 512 bytes")]
    HashOffset(u64),

    /// The data device ends before the last data block.
    #[error(
        "the data device holds {available} bytes but {data_blocks} blocks of {block_size} bytes \
         need {needed}: lower --data-blocks or check the file"
    )]
    DataTooShort {
        /// Blocks the parameters name.
        data_blocks: u64,
        /// Data block size.
        block_size: u32,
        /// Bytes needed.
        needed: u64,
        /// Bytes found.
        available: u64,
    },

    /// The hash device ends before the end of the tree.
    #[error(
        "the hash device ends at byte {available} but the hash tree needs {needed} bytes: \
         wrong file, wrong --hash-offset, or a truncated tree"
    )]
    HashTooShort {
        /// Bytes needed (end of the tree).
        needed: u64,
        /// Bytes found.
        available: u64,
    },

    /// The data area and the hash area overlap in one file.
    #[error(
        "data area (ends at byte {data_end}) overlaps with hash area (starts at byte \
         {hash_start}): lower --data-blocks or raise --hash-offset"
    )]
    Overlap {
        /// End of the data area.
        data_end: u64,
        /// Start of the hash area (superblock or tree).
        hash_start: u64,
    },

    /// A superblock that is not valid, with the rule that failed.
    #[error("invalid verity superblock: {0}")]
    Superblock(String),

    /// A root hash of the wrong length for the algorithm.
    #[error("root hash has {found} bytes but {algorithm} digests have {expected}")]
    RootHashLength {
        /// Digest name.
        algorithm: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        found: usize,
    },

    /// A data block whose digest does not match the verified hash tree.
    #[error(
        "data block {index} (byte offset {offset}) failed verification: the data is corrupt or \
         was changed after the hash tree was built"
    )]
    DataBlockCorrupt {
        /// Index of the data block.
        index: u64,
        /// Byte offset of the block on the data device.
        offset: u64,
    },

    /// A hash block whose digest does not match its parent (or the root hash).
    #[error(
        "hash block {index} of tree level {level} (byte offset {offset} of the hash device) \
         failed verification{}",
        if *top { ": it does not match the root hash (wrong root hash, or a corrupt tree)" } else { "" }
    )]
    HashBlockCorrupt {
        /// Tree level, 0 being the level that holds the data blocks' digests.
        level: u32,
        /// Index of the block within its level.
        index: u64,
        /// Byte offset on the hash device.
        offset: u64,
        /// Whether this is the top block, checked against the root hash.
        top: bool,
    },

    /// A read past the end of the protected data.
    #[error("data block {index} is past the end of the protected data ({data_blocks} blocks)")]
    OutOfRange {
        /// The block asked for.
        index: u64,
        /// The number of data blocks.
        data_blocks: u64,
    },

    /// A key file that is neither PKCS#8/SPKI (PEM or DER) nor 32 raw bytes.
    #[error("{what} is not an ed25519 key: {detail}")]
    Key {
        /// "private key" or "public key".
        what: &'static str,
        /// Why it was refused (never key bytes).
        detail: String,
    },

    /// A signature file that is not 64 bytes.
    #[error("a signature is 64 raw bytes (ed25519), found {0} bytes")]
    SignatureLength(usize),

    /// The signature does not verify over the root hash and parameters.
    #[error(
        "signature verification failed: the root hash or a tree parameter (salt, algorithm, \
         block sizes, data blocks, hash type) differs from what was signed, or the key is wrong"
    )]
    BadSignature,
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
