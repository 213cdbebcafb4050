//! The 4096-byte LUKS2 binary header (LUKS2 on-disk format, §2.1, `struct luks2_hdr_disk`).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 6 | magic: `LUKS\xba\xbe` (primary) or `SKUL\xba\xbe` (secondary) |
//! | 6 | 2 | version (big-endian), 2 |
//! | 8 | 8 | hdr_size: binary header + JSON area, bytes |
//! | 16 | 8 | seqid: incremented on every update |
//! | 24 | 48 | label, NUL-terminated |
//! | 72 | 32 | checksum_alg, e.g. `sha256` |
//! | 104 | 64 | salt, random per copy |
//! | 168 | 40 | uuid, NUL-terminated text |
//! | 208 | 48 | subsystem, NUL-terminated |
//! | 256 | 8 | hdr_offset: offset of this copy on the device |
//! | 264 | 184 | padding |
//! | 448 | 64 | csum over the whole copy with this field zeroed |
//! | 512 | 3584 | padding |
//!
//! All integers are big-endian.

/// Size of the binary header.
pub(crate) const LEN: usize = 4096;
pub(crate) const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
pub(crate) const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
pub(crate) const LABEL_LEN: usize = 48;
pub(crate) const UUID_LEN: usize = 40;
pub(crate) const SALT_LEN: usize = 64;
const CSUM_ALG_LEN: usize = 32;
const CSUM_OFF: usize = 448;
const CSUM_LEN: usize = 64;

/// The decoded fields of one binary header.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BinaryHeader {
    pub secondary: bool,
    pub version: u16,
    pub hdr_size: u64,
    pub seqid: u64,
    pub label: String,
    pub checksum_alg: String,
    pub salt: [u8; SALT_LEN],
    pub uuid: String,
    pub subsystem: String,
    pub hdr_offset: u64,
}

impl std::fmt::Debug for BinaryHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryHeader")
            .field("secondary", &self.secondary)
            .field("version", &self.version)
            .field("hdr_size", &self.hdr_size)
            .field("seqid", &self.seqid)
            .field("label", &self.label)
            .field("uuid", &self.uuid)
            .field("hdr_offset", &self.hdr_offset)
            .finish_non_exhaustive()
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-terminated text field (the last byte is forced to NUL as cryptsetup does).
fn text(b: &[u8]) -> String {
    let b = &b[..b.len() - 1];
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_text(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// What the magic says.
pub(crate) enum Magic {
    Primary,
    Secondary,
    Other,
}

pub(crate) fn magic(b: &[u8]) -> Magic {
    if b.len() < 6 {
        Magic::Other
    } else if &b[..6] == MAGIC_PRIMARY {
        Magic::Primary
    } else if &b[..6] == MAGIC_SECONDARY {
        Magic::Secondary
    } else {
        Magic::Other
    }
}

impl BinaryHeader {
    /// Decodes the fields of `b` (at least [`LEN`] bytes). Checks only the magic.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let secondary = match magic(b) {
            Magic::Primary => false,
            Magic::Secondary => true,
            Magic::Other => return None,
        };
        if b.len() < LEN {
            return None;
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&b[104..104 + SALT_LEN]);
        Some(BinaryHeader {
            secondary,
            version: be16(b, 6),
            hdr_size: be64(b, 8),
            seqid: be64(b, 16),
            label: text(&b[24..24 + LABEL_LEN]),
            checksum_alg: text(&b[72..72 + CSUM_ALG_LEN]),
            salt,
            uuid: text(&b[168..168 + UUID_LEN]),
            subsystem: text(&b[208..208 + LABEL_LEN]),
            hdr_offset: be64(b, 256),
        })
    }

    /// Encodes the 4096 bytes with a zeroed checksum field.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LEN];
        b[..6].copy_from_slice(if self.secondary {
            MAGIC_SECONDARY
        } else {
            MAGIC_PRIMARY
        });
        b[6..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.hdr_size.to_be_bytes());
        b[16..24].copy_from_slice(&self.seqid.to_be_bytes());
        put_text(&mut b[24..24 + LABEL_LEN], &self.label);
        put_text(&mut b[72..72 + CSUM_ALG_LEN], &self.checksum_alg);
        b[104..104 + SALT_LEN].copy_from_slice(&self.salt);
        put_text(&mut b[168..168 + UUID_LEN], &self.uuid);
        put_text(&mut b[208..208 + LABEL_LEN], &self.subsystem);
        b[256..264].copy_from_slice(&self.hdr_offset.to_be_bytes());
        b
    }
}

/// The checksum of one copy (`copy` = binary header + JSON area, `hdr_size` bytes) with the
/// csum field treated as zero. `None` for an algorithm this crate does not implement.
pub(crate) fn checksum(alg: &str, copy: &[u8]) -> Option<Vec<u8>> {
    fn run<D: sha2::Digest>(copy: &[u8]) -> Vec<u8> {
        let mut h = D::new();
        h.update(&copy[..CSUM_OFF]);
        h.update([0u8; CSUM_LEN]);
        h.update(&copy[CSUM_OFF + CSUM_LEN..]);
        h.finalize().to_vec()
    }
    // cryptsetup writes sha256; it verifies with any hash its crypto backend knows. These
    // are the ones sealvol verifies (docs/luks-validation.md lists the difference).
    // OpenSSL (cryptsetup's backend) resolves names without case and with its aliases.
    match alg.to_ascii_lowercase().as_str() {
        "sha1" | "sha-1" | "ssl3-sha1" => Some(run::<sha1::Sha1>(copy)),
        "sha224" | "sha-224" | "sha2-224" => Some(run::<sha2::Sha224>(copy)),
        "sha256" | "sha-256" | "sha2-256" => Some(run::<sha2::Sha256>(copy)),
        "sha384" | "sha-384" | "sha2-384" => Some(run::<sha2::Sha384>(copy)),
        "sha512" | "sha-512" | "sha2-512" => Some(run::<sha2::Sha512>(copy)),
        _ => None,
    }
}

/// The stored checksum bytes (the first `len` of the 64-byte field).
pub(crate) fn stored_checksum(copy: &[u8], len: usize) -> &[u8] {
    &copy[CSUM_OFF..CSUM_OFF + len]
}

/// Writes `csum` into the checksum field.
pub(crate) fn set_checksum(copy: &mut [u8], csum: &[u8]) {
    copy[CSUM_OFF..CSUM_OFF + CSUM_LEN].fill(0);
    copy[CSUM_OFF..CSUM_OFF + csum.len()].copy_from_slice(csum);
}

/// Checks the stored checksum of `copy` (constant-time compare is not needed: the checksum
/// is public).
pub(crate) fn verify_checksum(alg: &str, copy: &[u8]) -> Result<(), String> {
    let Some(c) = checksum(alg, copy) else {
        return Err(format!(
            "unsupported checksum algorithm {alg:?} (sha1, sha224, sha256, sha384 and sha512 are supported)"
        ));
    };
    if stored_checksum(copy, c.len()) != c.as_slice() {
        return Err(format!("{alg} checksum mismatch"));
    }
    Ok(())
}
