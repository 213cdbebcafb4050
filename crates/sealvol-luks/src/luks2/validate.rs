//! Cross-object rules of the LUKS2 metadata, as cryptsetup 2.6 enforces them
//! (`LUKS2_hdr_validate` in `lib/luks2/luks2_json_metadata.c`) plus a few stricter ones
//! where the host is the attacker. Arithmetic is checked: a sum that overflows is an error.

use super::metadata::Metadata;
use super::{BIN_HDR_LEN, MAX_KEYSLOTS_SIZE, METADATA_SIZES};
use crate::{Error, Result};

fn inv(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Checks `md` against the binary header's `hdr_size` (one header copy's size).
pub(crate) fn validate(md: &Metadata, hdr_size: u64) -> Result<()> {
    validate_config(md, hdr_size)?;
    validate_tokens(md)?;
    validate_digests(md)?;
    validate_segments(md)?;
    validate_keyslots(md)?;
    validate_areas(md, hdr_size)?;
    Ok(())
}

fn validate_config(md: &Metadata, hdr_size: u64) -> Result<()> {
    let c = &md.config;
    if !METADATA_SIZES.contains(&hdr_size) {
        return Err(inv(format!(
            "header size {hdr_size} is not one of the LUKS2 metadata sizes (16 KiB, 32 KiB, ... 4 MiB)"
        )));
    }
    let expected = hdr_size - BIN_HDR_LEN;
    if c.json_size != expected {
        return Err(inv(format!(
            "config.json_size is {} but the binary header's size {hdr_size} gives a {expected}-byte JSON area",
            c.json_size
        )));
    }
    if c.keyslots_size % 4096 != 0 || c.keyslots_size > MAX_KEYSLOTS_SIZE {
        return Err(inv(format!(
            "config.keyslots_size {} must be a multiple of 4096 and at most {MAX_KEYSLOTS_SIZE}",
            c.keyslots_size
        )));
    }
    // The first segment must start after both header copies and the keyslots area, unless
    // it starts at 0 (detached header).
    let min_offset = md.segments.values().map(|s| s.offset).min().unwrap_or(0);
    if min_offset != 0 {
        let end = areas_end(md, hdr_size)?;
        if min_offset < end {
            return Err(inv(format!(
                "config.keyslots_size {} is too large: header and keyslots area end at {end} but the data segment starts at {min_offset}",
                c.keyslots_size
            )));
        }
    }
    Ok(())
}

/// `2 * hdr_size + keyslots_size`, checked.
pub(crate) fn areas_end(md: &Metadata, hdr_size: u64) -> Result<u64> {
    hdr_size
        .checked_mul(2)
        .and_then(|v| v.checked_add(md.config.keyslots_size))
        .ok_or_else(|| inv("header and keyslots area size overflows".into()))
}

fn validate_tokens(md: &Metadata) -> Result<()> {
    for (id, t) in &md.tokens {
        for ks in token_keyslots(t) {
            if !md.keyslots.contains_key(&ks) {
                return Err(inv(format!(
                    "token {id} references keyslot {ks}, which does not exist"
                )));
            }
        }
    }
    Ok(())
}

/// The keyslot ids of a token already checked by the structural parse.
pub(crate) fn token_keyslots(t: &serde_json::Value) -> Vec<u32> {
    t.get("keyslots")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .filter_map(|s| super::json::parse_id(s, super::json::MAX_IDS))
                .collect()
        })
        .unwrap_or_default()
}

fn validate_digests(md: &Metadata) -> Result<()> {
    for (id, d) in &md.digests {
        for ks in &d.keyslots {
            if !md.keyslots.contains_key(ks) {
                return Err(inv(format!(
                    "digest {id} references keyslot {ks}, which does not exist"
                )));
            }
        }
        for seg in &d.segments {
            if !md.segments.contains_key(seg) {
                return Err(inv(format!(
                    "digest {id} references segment {seg}, which does not exist"
                )));
            }
        }
    }
    Ok(())
}

fn validate_segments(md: &Metadata) -> Result<()> {
    if md.segments.is_empty() {
        return Err(inv("the segments section is empty".into()));
    }
    let mut first_backup: Option<u32> = None;
    for (&id, s) in &md.segments {
        if s.offset % 512 != 0 {
            return Err(inv(format!(
                "segment {id} offset {} is not a multiple of 512",
                s.offset
            )));
        }
        if let Some(size) = s.size {
            if size % 512 != 0 {
                return Err(inv(format!(
                    "segment {id} size {size} is not a multiple of 512"
                )));
            }
            if s.offset.checked_add(size).is_none() {
                return Err(inv(format!(
                    "segment {id} offset {} + size {size} overflows",
                    s.offset
                )));
            }
        }
        if s.is_backup() {
            first_backup = Some(first_backup.map_or(id, |b| b.min(id)));
        } else if first_backup.is_some_and(|b| id >= b) {
            return Err(inv(format!(
                "regular segment {id} comes after a backup segment"
            )));
        }
        if s.kind == "crypt" {
            let ss = s.sector_size.unwrap_or(0);
            if !matches!(ss, 512 | 1024 | 2048 | 4096) {
                return Err(inv(format!(
                    "segment {id} sector_size {ss} is not 512, 1024, 2048 or 4096"
                )));
            }
            if let Some(size) = s.size {
                if size % u64::from(ss) != 0 {
                    return Err(inv(format!(
                        "segment {id} size {size} is not a multiple of its sector size {ss}"
                    )));
                }
            }
            if md.digest_of_segment(id).is_none() {
                return Err(inv(format!("crypt segment {id} has no digest")));
            }
        }
    }
    // Ids must be 0..n without gaps; regular segments come first.
    for (i, &id) in md.segments.keys().enumerate() {
        if id as usize != i {
            return Err(inv(format!("gap in segment ids before segment {id}")));
        }
    }
    let regular: Vec<_> = md.segments.iter().filter(|(_, s)| !s.is_backup()).collect();
    if regular.is_empty() {
        return Err(inv("no regular (non-backup) segment".into()));
    }
    for (i, (ida, a)) in regular.iter().enumerate() {
        if a.size.is_none() && i + 1 != regular.len() {
            return Err(inv(format!(
                "segment {ida} has size \"dynamic\" but is not the last regular segment"
            )));
        }
        for (idb, b) in &regular {
            if ida == idb {
                continue;
            }
            let b_end = b.size.map(|s| b.offset + s);
            if a.offset >= b.offset && b_end.is_none_or(|e| a.offset < e) {
                return Err(inv(format!("segments {ida} and {idb} overlap")));
            }
        }
    }
    Ok(())
}

fn validate_keyslots(md: &Metadata) -> Result<()> {
    let reqs = md.mandatory_requirements();
    let online_reencrypt = reqs.iter().any(|r| r.starts_with("online-reencrypt"));
    let mut reencrypt = 0;
    for (&id, k) in &md.keyslots {
        if k.kind == "luks2" {
            let n = md
                .digests
                .values()
                .filter(|d| d.keyslots.contains(&id))
                .count();
            if n != 1 {
                return Err(inv(format!(
                    "keyslot {id} is assigned to {n} digests; it must be assigned to exactly one"
                )));
            }
        } else if k.kind == "reencrypt" {
            reencrypt += 1;
        }
    }
    if reencrypt > 0 && !online_reencrypt {
        return Err(inv(
            "a reencrypt keyslot exists but config.requirements lacks online-reencrypt".into(),
        ));
    }
    if online_reencrypt && reencrypt != 1 {
        return Err(inv(format!(
            "online reencryption needs exactly one reencrypt keyslot, found {reencrypt}"
        )));
    }
    Ok(())
}

fn validate_areas(md: &Metadata, hdr_size: u64) -> Result<()> {
    let start = 2 * hdr_size;
    let end = areas_end(md, hdr_size)?;
    let mut iv: Vec<(u32, u64, u64)> = Vec::with_capacity(md.keyslots.len());
    for (&id, k) in &md.keyslots {
        let (off, len) = (k.area.offset, k.area.size);
        if off < start {
            return Err(inv(format!(
                "keyslot {id} area offset {off} lies inside the header copies (keyslots area starts at {start})"
            )));
        }
        if len == 0 {
            return Err(inv(format!("keyslot {id} area has size 0")));
        }
        if off % 512 != 0 || len % 512 != 0 {
            return Err(inv(format!(
                "keyslot {id} area (offset {off}, size {len}) is not 512-byte aligned"
            )));
        }
        let aend = off.checked_add(len).ok_or_else(|| {
            inv(format!(
                "keyslot {id} area offset {off} + size {len} overflows"
            ))
        })?;
        if aend > end {
            return Err(inv(format!(
                "keyslot {id} area [{off}, {aend}) runs past the end of the keyslots area at {end}"
            )));
        }
        for &(other, o_off, o_end) in &iv {
            if off < o_end && o_off < aend {
                return Err(inv(format!(
                    "keyslot {id} area [{off}, {aend}) overlaps keyslot {other} area [{o_off}, {o_end})"
                )));
            }
        }
        iv.push((id, off, aend));
    }
    Ok(())
}
