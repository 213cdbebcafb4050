//! One parsed LUKS2 header and its two on-disk copies (LUKS2 on-disk format, §2): decoding
//! and checking a copy, encoding a copy, reading both copies and choosing one, as
//! cryptsetup's `LUKS2_disk_hdr_read` does.

use super::binary::{self, BinaryHeader, Magic};
use super::metadata::Metadata;
use super::{validate, BIN_HDR_LEN, HDR2_OFFSETS, MAX_HDR_SIZE, MIN_HDR_SIZE};
use crate::error::Copy;
use crate::storage::{self, Storage};
use crate::{Error, Result};

/// A parsed, validated LUKS2 header: the binary header fields plus the typed JSON
/// [`Metadata`].
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub(crate) hdr_size: u64,
    pub(crate) seqid: u64,
    pub(crate) label: String,
    pub(crate) subsystem: String,
    pub(crate) uuid: String,
    pub(crate) checksum_alg: String,
    /// Per-copy binary header salts: `[primary, secondary]`.
    pub(crate) salts: [[u8; binary::SALT_LEN]; 2],
    pub(crate) metadata: Metadata,
}

impl Header {
    /// The volume UUID (text form, as `cryptsetup luksUUID` prints it).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }
    /// The label (binary header `label`, at most 47 bytes; empty when unset).
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The subsystem (binary header `subsystem`, at most 47 bytes; empty when unset).
    pub fn subsystem(&self) -> &str {
        &self.subsystem
    }
    /// The sequence id ("Epoch" in `cryptsetup luksDump`), incremented on each update.
    pub fn seqid(&self) -> u64 {
        self.seqid
    }
    /// Bytes of one header copy (binary header plus JSON area): the metadata size.
    pub fn hdr_size(&self) -> u64 {
        self.hdr_size
    }
    /// Bytes of the JSON area (`hdr_size - 4096`).
    pub fn json_size(&self) -> u64 {
        self.hdr_size - BIN_HDR_LEN
    }
    /// The checksum algorithm named in the binary header (`sha256`).
    pub fn checksum_alg(&self) -> &str {
        &self.checksum_alg
    }
    /// The JSON metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// Bytes of the binary keyslots area (`config.keyslots_size`).
    pub fn keyslots_size(&self) -> u64 {
        self.metadata.config.keyslots_size
    }
    /// Offset of the keyslots area: right after both header copies (`2 * hdr_size`).
    pub fn keyslots_offset(&self) -> u64 {
        2 * self.hdr_size
    }
    /// Bytes the header occupies on its device: both copies plus the keyslots area
    /// (cryptsetup `LUKS2_hdr_and_areas_size`; what `luksHeaderBackup` saves).
    pub fn areas_len(&self) -> u64 {
        2 * self.hdr_size + self.metadata.config.keyslots_size
    }
    /// Offset in bytes of the first segment on the data device (0 for a detached header
    /// formatted without an offset).
    pub fn data_offset(&self) -> u64 {
        self.metadata
            .segments
            .values()
            .filter(|s| !s.is_backup())
            .map(|s| s.offset)
            .min()
            .unwrap_or(0)
    }
    /// `config.requirements.mandatory` (empty when none).
    pub fn requirements(&self) -> &[String] {
        self.metadata.mandatory_requirements()
    }

    /// Encodes one copy (`hdr_size` bytes) with its checksum.
    ///
    /// # Errors
    /// [`Error::MetadataTooLarge`] when the JSON does not fit the JSON area with its
    /// terminating NUL.
    pub(crate) fn encode_copy(&self, which: Copy) -> Result<Vec<u8>> {
        let json = self.metadata.to_json_string();
        let area = self.json_size();
        if json.len() as u64 >= area {
            return Err(Error::MetadataTooLarge {
                len: json.len() + 1,
                area,
            });
        }
        let secondary = which == Copy::Secondary;
        let bin = BinaryHeader {
            secondary,
            version: 2,
            hdr_size: self.hdr_size,
            seqid: self.seqid,
            label: self.label.clone(),
            checksum_alg: self.checksum_alg.clone(),
            salt: self.salts[usize::from(secondary)],
            uuid: self.uuid.clone(),
            subsystem: self.subsystem.clone(),
            hdr_offset: if secondary { self.hdr_size } else { 0 },
        };
        let mut buf = bin.encode();
        buf.extend_from_slice(json.as_bytes());
        buf.resize(self.hdr_size as usize, 0);
        let csum =
            binary::checksum(&self.checksum_alg, &buf).ok_or_else(|| Error::Unsupported {
                what: "header checksum algorithm",
                name: self.checksum_alg.clone(),
            })?;
        binary::set_checksum(&mut buf, &csum);
        Ok(buf)
    }

    /// Checks the metadata rules against this header's size (a JSON text too large for the
    /// area is [`Error::MetadataTooLarge`]).
    pub(crate) fn validate(&self) -> Result<()> {
        let len = self.metadata.to_json_string().len();
        if len as u64 >= self.json_size() {
            return Err(Error::MetadataTooLarge {
                len: len + 1,
                area: self.json_size(),
            });
        }
        validate::validate(&self.metadata, self.hdr_size)
    }
}

/// One decoded copy.
#[derive(Debug)]
pub(crate) struct ParsedCopy {
    pub bin: BinaryHeader,
    pub metadata: Metadata,
}

/// Why a copy was refused, and whether its `hdr_size` can still be trusted (the binary
/// header passed its sanity checks and checksum; only the JSON was refused).
#[derive(Debug)]
pub(crate) struct CopyError {
    pub error: Error,
    pub trusted_hdr_size: Option<u64>,
}

impl From<Error> for CopyError {
    fn from(error: Error) -> Self {
        CopyError {
            error,
            trusted_hdr_size: None,
        }
    }
}

fn corrupt(copy: Copy, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        copy,
        reason: reason.into(),
    }
}

/// Sanity checks of the binary header before the checksum (cryptsetup
/// `hdr_disk_sanity_check_pre`). Returns the decoded fields.
fn check_binary(b: &[u8], which: Copy, offset: u64) -> Result<BinaryHeader> {
    let bin = match (binary::magic(b), which) {
        (Magic::Primary, Copy::Primary) | (Magic::Secondary, Copy::Secondary) => {
            BinaryHeader::decode(b).ok_or_else(|| corrupt(which, "truncated binary header"))?
        }
        (Magic::Other, Copy::Primary) => return Err(Error::NotLuks),
        _ => {
            return Err(corrupt(
                which,
                format!("no {which} LUKS2 magic at offset {offset}"),
            ))
        }
    };
    if bin.version != 2 {
        return Err(Error::UnsupportedVersion(bin.version));
    }
    if bin.hdr_offset != offset {
        return Err(corrupt(
            which,
            format!(
                "hdr_offset field says {} but the copy was found at offset {offset}",
                bin.hdr_offset
            ),
        ));
    }
    if bin.hdr_size < MIN_HDR_SIZE || bin.hdr_size > MAX_HDR_SIZE {
        return Err(corrupt(
            which,
            format!("hdr_size {} is outside 16 KiB..4 MiB", bin.hdr_size),
        ));
    }
    if which == Copy::Secondary && bin.hdr_size != offset {
        return Err(corrupt(
            which,
            format!(
                "secondary copy at offset {offset} has hdr_size {}; they must be equal",
                bin.hdr_size
            ),
        ));
    }
    Ok(bin)
}

/// Parses the JSON area: `{` first, one JSON object, then only NUL bytes to the end of the
/// area, with at least one NUL (cryptsetup `validate_json_area`).
pub(crate) fn parse_json_area(area: &[u8]) -> Result<serde_json::Value> {
    if area.first() != Some(&b'{') {
        return Err(Error::Invalid(
            "the JSON area does not start with '{'".into(),
        ));
    }
    let Some(end) = area.iter().position(|&b| b == 0) else {
        return Err(Error::Invalid(
            "the JSON area has no terminating NUL byte".into(),
        ));
    };
    if let Some(p) = area[end..].iter().position(|&b| b != 0) {
        return Err(Error::Invalid(format!(
            "non-NUL byte 0x{:02x} after the JSON text at JSON area offset {}",
            area[end + p],
            end + p
        )));
    }
    let text = &area[..end];
    if text.last() != Some(&b'}') {
        return Err(Error::Invalid(
            "the JSON text does not end with '}' (trailing data after the object)".into(),
        ));
    }
    serde_json::from_slice(text)
        .map_err(|e| Error::Invalid(format!("JSON area does not parse: {e}")))
}

/// Parses and checks one copy from `b` (which holds at least the whole copy), found at
/// `offset`.
pub(crate) fn parse_copy(b: &[u8], which: Copy, offset: u64) -> Result<ParsedCopy, CopyError> {
    let bin = check_binary(b, which, offset)?;
    let size = bin.hdr_size as usize;
    if b.len() < size {
        return Err(corrupt(
            which,
            format!(
                "truncated: hdr_size is {size} bytes but only {} are present",
                b.len()
            ),
        )
        .into());
    }
    let copy = &b[..size];
    binary::verify_checksum(&bin.checksum_alg, copy).map_err(|r| corrupt(which, r))?;
    let trusted = Some(bin.hdr_size);
    let json_res = parse_json_area(&copy[binary::LEN..]).and_then(|mut v| {
        validate::repair(&mut v);
        validate::check(&v, bin.hdr_size)?;
        Metadata::from_json(&v)
    });
    match json_res {
        Ok(metadata) => Ok(ParsedCopy { bin, metadata }),
        Err(error) => Err(CopyError {
            error,
            trusted_hdr_size: trusted,
        }),
    }
}

/// Builds a header from a chosen copy and the other copy's salt (if any).
pub(crate) fn header_from(
    p: ParsedCopy,
    other_salt: Option<[u8; binary::SALT_LEN]>,
) -> Result<Header> {
    let other = match other_salt {
        Some(s) => s,
        None => super::random_array()?,
    };
    let salts = if p.bin.secondary {
        [other, p.bin.salt]
    } else {
        [p.bin.salt, other]
    };
    Ok(Header {
        hdr_size: p.bin.hdr_size,
        seqid: p.bin.seqid,
        label: p.bin.label,
        subsystem: p.bin.subsystem,
        uuid: p.bin.uuid,
        checksum_alg: p.bin.checksum_alg,
        salts,
        metadata: p.metadata,
    })
}

/// Reads one copy at `offset` from storage of `len` bytes.
fn read_copy<S: Storage + ?Sized>(
    s: &mut S,
    len: u64,
    which: Copy,
    offset: u64,
) -> Result<ParsedCopy, CopyError> {
    if offset.checked_add(BIN_HDR_LEN).is_none_or(|e| e > len) {
        return Err(if which == Copy::Primary {
            Error::NotLuks
        } else {
            corrupt(
                which,
                format!("the device ({len} bytes) ends before offset {offset} + 4096"),
            )
        }
        .into());
    }
    let mut b = vec![0u8; binary::LEN];
    storage::read_at(s, offset, &mut b, &format!("the {which} binary header"))?;
    let bin = check_binary(&b, which, offset)?;
    if offset + bin.hdr_size > len {
        return Err(corrupt(
            which,
            format!(
                "the device ({len} bytes) ends inside the copy (offset {offset}, size {})",
                bin.hdr_size
            ),
        )
        .into());
    }
    b.resize(bin.hdr_size as usize, 0);
    storage::read_at(
        s,
        offset + BIN_HDR_LEN,
        &mut b[binary::LEN..],
        &format!("the {which} JSON area"),
    )?;
    parse_copy(&b, which, offset)
}

/// What [`Volume::open`](crate::Volume::open) found in the two header copies.
#[derive(Debug)]
pub struct LoadReport {
    /// The primary copy: its seqid if valid, otherwise why it was refused.
    pub primary: std::result::Result<u64, String>,
    /// The secondary copy: its seqid if valid, otherwise why it was refused.
    pub secondary: std::result::Result<u64, String>,
    /// The copy in use (the valid one with the higher seqid; the primary on a tie).
    pub used: Copy,
    /// One copy is damaged or older than the other: [`Volume::repair`](crate::Volume::repair)
    /// rewrites it.
    pub needs_repair: bool,
}

/// Reads both copies and picks one (cryptsetup `LUKS2_disk_hdr_read` without the
/// auto-recovery write).
pub(crate) fn read_header<S: Storage + ?Sized>(s: &mut S) -> Result<(Header, LoadReport)> {
    let len = storage::len(s)?;
    let primary = read_copy(s, len, Copy::Primary, 0);
    let trusted = match &primary {
        Ok(p) => Some(p.bin.hdr_size),
        Err(e) => e.trusted_hdr_size,
    };
    let secondary = match trusted {
        Some(size) => read_copy(s, len, Copy::Secondary, size),
        None => {
            // No trustworthy size: probe every possible secondary offset.
            let mut last: Option<CopyError> = None;
            let mut found = None;
            for &off in HDR2_OFFSETS.iter() {
                match read_copy(s, len, Copy::Secondary, off) {
                    Ok(p) => {
                        found = Some(Ok(p));
                        break;
                    }
                    Err(e) => {
                        // A checksum-valid copy with bad JSON is the one that counts.
                        if e.trusted_hdr_size.is_some() {
                            found = Some(Err(e));
                            break;
                        }
                        last = Some(e);
                    }
                }
            }
            found.unwrap_or_else(|| {
                Err(CopyError::from(corrupt(
                    Copy::Secondary,
                    format!(
                        "no valid secondary copy at any of the offsets 16 KiB .. 4 MiB (last: {})",
                        last.map(|e| e.error.to_string()).unwrap_or_default()
                    ),
                )))
            })
        }
    };
    let other_salt = |o: &Result<ParsedCopy, CopyError>| o.as_ref().ok().map(|p| p.bin.salt);
    let (used, needs_repair) = match (&primary, &secondary) {
        (Ok(p), Ok(q)) if q.bin.seqid > p.bin.seqid => (Copy::Secondary, true),
        (Ok(p), Ok(q)) => (Copy::Primary, p.bin.seqid != q.bin.seqid),
        (Ok(_), Err(_)) => (Copy::Primary, true),
        (Err(_), Ok(_)) => (Copy::Secondary, true),
        (Err(pe), Err(se)) => {
            if matches!(pe.error, Error::NotLuks | Error::UnsupportedVersion(_))
                && se.trusted_hdr_size.is_none()
            {
                let Err(pe) = primary else { unreachable!() };
                return Err(pe.error);
            }
            return Err(Error::NoValidHeader {
                primary: pe.error.to_string(),
                secondary: se.error.to_string(),
            });
        }
    };
    let report = LoadReport {
        primary: primary
            .as_ref()
            .map(|p| p.bin.seqid)
            .map_err(|e| match e.error {
                Error::NotLuks => "no LUKS2 magic at offset 0 (damaged or wiped)".to_string(),
                ref other => other.to_string(),
            }),
        secondary: secondary
            .as_ref()
            .map(|p| p.bin.seqid)
            .map_err(|e| e.error.to_string()),
        used,
        needs_repair,
    };
    let header = match used {
        Copy::Primary => {
            let salt = other_salt(&secondary);
            header_from(primary.map_err(|e| e.error)?, salt)?
        }
        Copy::Secondary => {
            let salt = other_salt(&primary);
            header_from(secondary.map_err(|e| e.error)?, salt)?
        }
    };
    let needed = header.areas_len();
    if len < needed {
        return Err(Error::DeviceTooSmall { len, needed });
    }
    Ok((header, report))
}

/// Writes both copies: the primary, a durability barrier, the secondary, another barrier.
/// A crash at any point leaves at least one valid copy (the old or the new one).
pub(crate) fn write_header<S: Storage + ?Sized>(s: &mut S, h: &Header) -> Result<()> {
    let p = h.encode_copy(Copy::Primary)?;
    let q = h.encode_copy(Copy::Secondary)?;
    storage::write_at(s, 0, &p, "the primary header")?;
    storage::sync(s, "writing the primary header")?;
    storage::write_at(s, h.hdr_size, &q, "the secondary header")?;
    storage::sync(s, "writing the secondary header")?;
    Ok(())
}

/// Writes one copy and syncs.
pub(crate) fn write_copy<S: Storage + ?Sized>(s: &mut S, h: &Header, which: Copy) -> Result<()> {
    let b = h.encode_copy(which)?;
    let off = if which == Copy::Secondary {
        h.hdr_size
    } else {
        0
    };
    storage::write_at(s, off, &b, &format!("the {which} header"))?;
    storage::sync(s, &format!("writing the {which} header"))
}
