//! The LUKS2 metadata rules of cryptsetup 2.8, ported one by one and applied to the JSON
//! value as found (before anything is typed), so that sealvol accepts exactly the headers
//! cryptsetup accepts and refuses exactly the ones it refuses.
//!
//! Sources: `LUKS2_hdr_validate` and its helpers in `lib/luks2/luks2_json_metadata.c`
//! (`hdr_validate_requirements`, `_tokens`, `_digests`, `_segments`, `_keyslots`, `_config`,
//! `_areas`, `_json_size`), `LUKS2_keyslots_validate` (`luks2_keyslot.c`) with the `luks2` and
//! `reencrypt` keyslot handlers (`luks2_keyslot_luks2.c`, `luks2_keyslot_reenc.c`), and the
//! repair cryptsetup applies before a second try (`LUKS2_hdr_repair`). Every rule is a
//! [`Rule`] in [`RULES`]; a refusal names the rule and the cryptsetup function it comes from.
//! The table of rules with their tests is `docs/luks-validation.md`.
//!
//! What these rules accept may still be unusable to sealvol (an unknown keyslot type or KDF,
//! a cipher it does not implement): that is decided per object when the object is used, never
//! by refusing the whole header. Two deliberate differences from cryptsetup are listed in the
//! docs: object ids must be canonical numbers (`"7"`, not `"07"` or `""`, below 2^32), and the
//! JSON text must be RFC 8259 JSON (cryptsetup's json-c parser also takes comments, single
//! quotes and other non-standard forms no cryptsetup writes).

use serde_json::{Map, Value};

use super::{BIN_HDR_LEN, MAX_KEYSLOTS_SIZE, METADATA_SIZES};
use crate::{Error, Result};

/// One validation rule: its name (used in errors, tests and the docs table) and the
/// cryptsetup function it ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Short name, e.g. `segment-crypt-encryption`.
    pub name: &'static str,
    /// The cryptsetup function that enforces it.
    pub cryptsetup: &'static str,
    /// What it requires.
    pub text: &'static str,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $func:literal, $text:literal;)*) => {
        $(pub(crate) const $id: Rule = Rule { name: $name, cryptsetup: $func, text: $text };)*
        /// Every LUKS2 metadata rule, in the order cryptsetup checks them.
        pub const RULES: &[Rule] = &[$($id),*];
    };
}

rules! {
    REQ_CONFIG = "config-object", "hdr_validate_requirements", "the top level has a \"config\" object";
    REQ_OBJECT = "requirements-object", "hdr_validate_requirements", "config.requirements, when present, is an object";
    REQ_MANDATORY = "requirements-mandatory-strings", "hdr_validate_requirements", "config.requirements.mandatory, when present, is an array of strings";
    REQ_ONE_REENCRYPT = "requirements-one-reencrypt-flag", "hdr_validate_requirements", "at most one online-reencrypt[-vN] flag";
    TOKENS_OBJECT = "tokens-object", "hdr_validate_tokens", "the top level has a \"tokens\" object";
    TOKEN_ID = "token-id-numbered", "hdr_validate_tokens", "token ids are decimal numbers";
    TOKEN_TYPE = "token-type", "LUKS2_token_validate", "each token is an object with a non-empty string \"type\"";
    TOKEN_KEYSLOTS = "token-keyslots", "LUKS2_token_validate", "each token has a \"keyslots\" array of strings naming existing keyslots";
    DIGESTS_OBJECT = "digests-object", "hdr_validate_digests", "the top level has \"digests\", \"keyslots\" and \"segments\" objects";
    DIGEST_ID = "digest-id-numbered", "hdr_validate_digests", "digest ids are decimal numbers";
    DIGEST_TYPE = "digest-type", "hdr_validate_digests", "each digest has a non-empty string \"type\"";
    DIGEST_KEYSLOTS = "digest-keyslots", "hdr_validate_digests", "each digest has a \"keyslots\" array of strings naming existing keyslots";
    DIGEST_SEGMENTS = "digest-segments", "hdr_validate_digests", "each digest has a \"segments\" array of strings naming existing segments";
    SEGMENTS_OBJECT = "segments-object", "hdr_validate_segments", "the top level has a non-empty \"segments\" object";
    SEGMENT_ID = "segment-id-numbered", "hdr_validate_segments", "segment ids are decimal numbers";
    SEGMENT_FIELDS = "segment-type-offset-size", "hdr_validate_segments", "each segment has non-empty strings \"type\", \"offset\" and \"size\"";
    SEGMENT_OFFSET = "segment-offset", "hdr_validate_segments", "a segment offset is a decimal uint64 and a multiple of 512";
    SEGMENT_SIZE = "segment-size", "hdr_validate_segments", "a segment size is \"dynamic\" or a non-zero decimal uint64, a multiple of 512";
    SEGMENT_FLAGS = "segment-flags", "hdr_validate_segments", "segment flags, when present, are an array of strings";
    SEGMENT_BACKUP_ORDER = "segment-backup-last", "hdr_validate_segments", "backup segments (flag backup-*) come after every regular segment";
    SEGMENT_CRYPT_FIELDS = "segment-crypt-fields", "hdr_validate_crypt_segment", "a crypt segment has non-empty strings \"iv_tweak\" and \"encryption\" and an integer \"sector_size\"";
    SEGMENT_CRYPT_INTEGRITY = "segment-crypt-integrity", "hdr_validate_crypt_segment", "a crypt segment's \"integrity\", when present, is an object with non-empty strings type, journal_encryption, journal_integrity";
    SEGMENT_CRYPT_SECTOR = "segment-crypt-sector-size", "hdr_validate_crypt_segment", "a crypt segment's sector_size is a uint32, non-zero, a multiple of 512";
    SEGMENT_CRYPT_IV = "segment-crypt-iv-tweak", "hdr_validate_crypt_segment", "a crypt segment's iv_tweak is a decimal uint64";
    SEGMENT_CRYPT_ALIGNED = "segment-crypt-size-aligned", "hdr_validate_crypt_segment", "a crypt segment's size is a multiple of its sector size";
    SEGMENT_CRYPT_DIGEST = "segment-crypt-digest", "hdr_validate_crypt_segment", "a crypt segment is listed by a digest";
    SEGMENT_OPAL = "segment-opal", "hdr_validate_segments", "a hw-opal* segment has a fixed size, integers opal_segment_number and opal_key_size, and a non-zero decimal opal_segment_size not below its size";
    SEGMENT_REGULAR = "segment-regular-exists", "hdr_validate_segments", "segment 0 is a regular (non-backup) segment";
    SEGMENT_GAPS = "segment-ids-contiguous", "hdr_validate_segments", "segment ids are 0, 1, ... without gaps";
    SEGMENT_DYNAMIC_LAST = "segment-dynamic-last", "validate_segment_intervals", "only the last regular segment may be \"dynamic\"";
    SEGMENT_OVERLAP = "segment-no-overlap", "validate_segment_intervals", "regular segments do not overlap (and offset + size does not overflow)";
    SEGMENT_REENCRYPT_BACKUPS = "segment-reencrypt-backups", "validate_reencrypt_segments", "with online-reencrypt, backup-final and backup-previous segments exist and every regular segment matches one of them";
    KEYSLOTS_OBJECT = "keyslots-object", "hdr_validate_keyslots", "the top level has a \"keyslots\" object";
    KEYSLOT_ID = "keyslot-id-numbered", "hdr_validate_keyslots", "keyslot ids are decimal numbers";
    KEYSLOT_TYPE = "keyslot-type-key-size", "LUKS2_keyslot_validate", "each keyslot has a non-empty string \"type\" and a uint32 \"key_size\"";
    CONFIG_JSON_SIZE = "config-json-size", "hdr_validate_config", "config.json_size is a number string (strtoull) and json_size + 4096 is a LUKS2 metadata size";
    CONFIG_KEYSLOTS_SIZE = "config-keyslots-size", "hdr_validate_config", "config.keyslots_size is a number string, a multiple of 4096, at most 128 MiB";
    CONFIG_DATA_OFFSET = "config-keyslots-before-data", "hdr_validate_config", "both header copies and the keyslots area end before the first regular segment (unless it starts at 0)";
    CONFIG_FLAGS = "config-flags", "hdr_validate_config", "config.flags, when present, is an array of strings";
    AREA_FIELDS = "keyslot-area-fields", "hdr_validate_areas", "each keyslot has an \"area\" object with a non-empty string type and decimal uint64 strings offset and size";
    AREA_BOUNDS = "keyslot-area-bounds", "validate_intervals", "a keyslot area lies in the keyslots area (after both copies, before 2 * metadata + keyslots_size), is not empty, does not overflow";
    AREA_OVERLAP = "keyslot-area-no-overlap", "validate_intervals", "keyslot areas do not overlap";
    JSON_SIZE = "json-size-matches", "hdr_validate_json_size", "config.json_size equals the binary header's JSON area and the JSON fits it";
    LUKS2_KEYSLOT_OBJECTS = "luks2-keyslot-objects", "luks2_keyslot_validate", "a luks2 keyslot has objects kdf, af and area";
    LUKS2_KEYSLOT_KDF = "luks2-keyslot-kdf", "luks2_keyslot_validate", "kdf has a non-empty string type; pbkdf2 has exactly type, hash, iterations (integer), salt; argon2i/argon2id exactly type, time, memory, cpus (integers), salt; other types are not checked";
    LUKS2_KEYSLOT_AF = "luks2-keyslot-af", "luks2_keyslot_validate", "af is {type: \"luks1\", hash: non-empty string, stripes: integer}";
    LUKS2_KEYSLOT_AREA = "luks2-keyslot-area-raw", "luks2_keyslot_validate", "the area of a luks2 keyslot is \"raw\" with a non-empty string encryption and an integer key_size";
    LUKS2_KEYSLOT_DIGEST = "luks2-keyslot-one-digest", "LUKS2_keyslots_validate", "a luks2 keyslot is listed by exactly one digest";
    REENCRYPT_KEYSLOT = "reencrypt-keyslot", "reenc_keyslot_validate", "a reencrypt keyslot has key_size 1, mode reencrypt|encrypt|decrypt, direction forward|backward, and its area's hash/sector_size (checksum) or shift_size (datashift) fields";
    REENCRYPT_COUNT = "reencrypt-keyslot-requirement", "LUKS2_keyslots_validate", "online-reencrypt needs a reencrypt keyslot; a reencrypt keyslot needs an online-reencrypt[-vN] flag; at most one reencrypt keyslot";
}

/// The refusal of `rule` at `path`.
fn fail(rule: Rule, path: &str, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{path}: {what} (rule {}: {}; cryptsetup {} refuses this header too)",
        rule.name, rule.text, rule.cryptsetup
    ))
}

/// A JSON string as C code sees it: up to the first NUL.
pub(crate) fn cstr(s: &str) -> &str {
    s.split('\0').next().unwrap_or("")
}

/// cryptsetup `numbered`: every character an ASCII digit (the empty string passes).
fn numbered(s: &str) -> bool {
    cstr(s).bytes().all(|b| b.is_ascii_digit())
}

/// C `strtoull(s, &end, 10)` with `*end == 0 && errno == 0` (cryptsetup `json_str_to_uint64`):
/// leading white space, an optional sign (a minus negates modulo 2^64), decimal digits, no
/// overflow, nothing after.
pub(crate) fn strtoull(s: &str) -> Option<u64> {
    let s = cstr(s);
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() {
        // No conversion: the end pointer stays at the start of the string.
        return s.is_empty().then_some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = digits.parse().ok()?;
    Some(if neg { v.wrapping_neg() } else { v })
}

fn is_int(v: &Value) -> bool {
    matches!(v, Value::Number(n) if n.is_i64() || n.is_u64())
}

/// cryptsetup `validate_json_uint32` on an integer.
fn is_u32(v: &Value) -> bool {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => (0..=i64::from(u32::MAX)).contains(&i),
            (None, Some(_)) => false,
            _ => false,
        },
        _ => false,
    }
}

/// cryptsetup `json_contains` for an object member.
fn member<'a>(o: &'a Value, key: &str) -> Option<&'a Value> {
    o.as_object().and_then(|m| m.get(key))
}

fn obj<'a>(o: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    member(o, key).and_then(Value::as_object)
}

fn int<'a>(o: &'a Value, key: &str) -> Option<&'a Value> {
    member(o, key).filter(|v| is_int(v))
}

fn arr<'a>(o: &'a Value, key: &str) -> Option<&'a Vec<Value>> {
    member(o, key).and_then(Value::as_array)
}

/// cryptsetup `json_contains_string`: a string with at least one character before any NUL.
fn string<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    member(o, key)
        .and_then(Value::as_str)
        .filter(|s| !cstr(s).is_empty())
}

fn all_strings(a: &[Value]) -> bool {
    a.iter().all(Value::is_string)
}

/// `validate_keyslots_array` / `validate_segments_array`: strings naming object members of
/// `section`.
fn names_existing(a: &[Value], section: Option<&Value>) -> std::result::Result<(), String> {
    for (i, v) in a.iter().enumerate() {
        let Some(s) = v.as_str() else {
            return Err(format!("element {i} is not a string"));
        };
        if !section
            .and_then(|sec| sec.get(cstr(s)))
            .is_some_and(Value::is_object)
        {
            return Err(format!("element {i} ({s:?}) names no existing object"));
        }
    }
    Ok(())
}

/// Which requirement flags a header carries, as cryptsetup classifies them
/// (`LUKS2_config_get_requirements`).
#[derive(Default, Debug)]
pub(crate) struct Reqs {
    pub online_reencrypt: bool,
    /// Flags no cryptsetup release knows (`CRYPT_REQUIREMENT_UNKNOWN`).
    pub unknown: bool,
}

/// `online-reencrypt` or `online-reencrypt-v<digits>` (cryptsetup `reencrypt_candidate_flag`).
pub(crate) fn reencrypt_candidate(flag: &str) -> bool {
    let flag = cstr(flag);
    flag == "online-reencrypt"
        || flag
            .strip_prefix("online-reencrypt-v")
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// The requirement flags cryptsetup 2.8 knows (`requirements_flags`).
pub(crate) const KNOWN_REQUIREMENTS: [&str; 6] = [
    "offline-reencrypt",
    "online-reencrypt-v2",
    "online-reencrypt-v3",
    "online-reencrypt",
    "inline-hw-tags",
    "opal",
];

fn mandatory(top: &Value) -> Vec<&str> {
    member(top, "config")
        .and_then(|c| member(c, "requirements"))
        .and_then(|r| member(r, "mandatory"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map(cstr).unwrap_or(""))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn requirements(top: &Value) -> Reqs {
    let mut r = Reqs::default();
    for f in mandatory(top) {
        match f {
            "online-reencrypt" | "online-reencrypt-v2" | "online-reencrypt-v3" => {
                r.online_reencrypt = true
            }
            f if KNOWN_REQUIREMENTS.contains(&f) => {}
            _ => r.unknown = true,
        }
    }
    r
}

/// cryptsetup `LUKS2_hdr_repair`: pbkdf2 and argon2 `kdf` objects of luks2 keyslots lose
/// fields that do not belong to their type (cryptsetup before 2.0.3 could leave the previous
/// type's parameters behind). cryptsetup repairs before its second validation; the outcome
/// is the same as repairing first.
pub(crate) fn repair(top: &mut Value) {
    let Some(Value::Object(keyslots)) = top.get_mut("keyslots") else {
        return;
    };
    for ks in keyslots.values_mut() {
        let Some(ks) = ks.as_object_mut() else {
            continue;
        };
        if ks.get("type").and_then(Value::as_str).map(cstr) != Some("luks2") {
            continue;
        }
        let Some(Value::Object(kdf)) = ks.get_mut("kdf") else {
            continue;
        };
        let keep: &[&str] = match kdf.get("type").and_then(Value::as_str).map(cstr) {
            Some("pbkdf2") => &["type", "salt", "hash", "iterations"],
            Some("argon2i" | "argon2id") => &["type", "salt", "time", "memory", "cpus"],
            _ => continue,
        };
        kdf.retain(|k, _| keep.contains(&k.as_str()));
    }
}

/// Checks the (repaired) JSON metadata of a copy whose binary header says `hdr_size`.
pub(crate) fn check(top: &Value, hdr_size: u64) -> Result<()> {
    if !top.is_object() {
        return Err(Error::Invalid(
            "the JSON metadata is not an object (cryptsetup validate_luks2_json_object)".into(),
        ));
    }
    check_canonical_ids(top)?;
    check_requirements(top)?;
    check_tokens(top)?;
    check_digests(top)?;
    check_segments(top)?;
    check_keyslots(top)?;
    check_config(top)?;
    check_areas(top)?;
    check_json_size(top, hdr_size)?;
    check_keyslot_handlers(top)?;
    Ok(())
}

/// sealvol's one stricter rule on ids: a section key is a canonical decimal number below
/// 2^32. cryptsetup's `numbered()` also takes `"07"` and `""`, but looks every object up by
/// `%u`, so such an object is unreachable; no cryptsetup writes one.
pub(crate) const CANONICAL_ID: Rule = Rule {
    name: "id-canonical",
    cryptsetup: "(sealvol only; see docs/luks-validation.md)",
    text: "keyslot, token, segment and digest ids are canonical decimal numbers below 2^32 (no leading zeros, not empty)",
};

fn check_canonical_ids(top: &Value) -> Result<()> {
    for sec in ["keyslots", "tokens", "segments", "digests"] {
        let Some(m) = obj(top, sec) else { continue };
        for k in m.keys() {
            if numbered(k) && super::json::parse_id(k, u32::MAX).is_none() {
                return Err(Error::Invalid(format!(
                    "{sec}: id {k:?} is not a canonical number (rule {}: {}; cryptsetup accepts it but never reaches such an object, and no cryptsetup writes one)",
                    CANONICAL_ID.name, CANONICAL_ID.text
                )));
            }
        }
    }
    Ok(())
}

fn check_requirements(top: &Value) -> Result<()> {
    let Some(config) = member(top, "config").filter(|c| c.is_object()) else {
        return Err(fail(REQ_CONFIG, "metadata", "missing object \"config\""));
    };
    let mut candidates = 0;
    if let Some(req) = member(config, "requirements") {
        if !req.is_object() {
            return Err(fail(REQ_OBJECT, "config.requirements", "not an object"));
        }
        if let Some(m) = member(req, "mandatory") {
            let Some(a) = m.as_array() else {
                return Err(fail(
                    REQ_MANDATORY,
                    "config.requirements.mandatory",
                    "not an array",
                ));
            };
            for (i, v) in a.iter().enumerate() {
                let Some(s) = v.as_str() else {
                    return Err(fail(
                        REQ_MANDATORY,
                        &format!("config.requirements.mandatory[{i}]"),
                        "not a string",
                    ));
                };
                if reencrypt_candidate(s) {
                    candidates += 1;
                }
            }
        }
    }
    if candidates > 1 {
        return Err(fail(
            REQ_ONE_REENCRYPT,
            "config.requirements.mandatory",
            format_args!("{candidates} online-reencrypt flags"),
        ));
    }
    Ok(())
}

fn check_tokens(top: &Value) -> Result<()> {
    let Some(tokens) = obj(top, "tokens") else {
        return Err(fail(TOKENS_OBJECT, "metadata", "missing object \"tokens\""));
    };
    let keyslots = member(top, "keyslots");
    for (id, t) in tokens {
        let path = format!("tokens.{id}");
        if !numbered(id) {
            return Err(fail(TOKEN_ID, &path, "the id is not a number"));
        }
        if keyslots.is_none() {
            return Err(fail(TOKEN_KEYSLOTS, "metadata", "no \"keyslots\" section"));
        }
        if string(t, "type").is_none() {
            return Err(fail(TOKEN_TYPE, &path, "missing or empty string \"type\""));
        }
        let Some(a) = arr(t, "keyslots") else {
            return Err(fail(TOKEN_KEYSLOTS, &path, "missing array \"keyslots\""));
        };
        names_existing(a, keyslots)
            .map_err(|e| fail(TOKEN_KEYSLOTS, &format!("{path}.keyslots"), e))?;
    }
    Ok(())
}

fn check_digests(top: &Value) -> Result<()> {
    let (Some(digests), Some(_), Some(_)) = (
        obj(top, "digests"),
        obj(top, "keyslots"),
        obj(top, "segments"),
    ) else {
        return Err(fail(
            DIGESTS_OBJECT,
            "metadata",
            "missing object \"digests\", \"keyslots\" or \"segments\"",
        ));
    };
    let keyslots = member(top, "keyslots");
    let segments = member(top, "segments");
    for (id, d) in digests {
        let path = format!("digests.{id}");
        if !numbered(id) {
            return Err(fail(DIGEST_ID, &path, "the id is not a number"));
        }
        if string(d, "type").is_none() {
            return Err(fail(DIGEST_TYPE, &path, "missing or empty string \"type\""));
        }
        let Some(ks) = arr(d, "keyslots") else {
            return Err(fail(DIGEST_KEYSLOTS, &path, "missing array \"keyslots\""));
        };
        let Some(segs) = arr(d, "segments") else {
            return Err(fail(DIGEST_SEGMENTS, &path, "missing array \"segments\""));
        };
        names_existing(ks, keyslots)
            .map_err(|e| fail(DIGEST_KEYSLOTS, &format!("{path}.keyslots"), e))?;
        names_existing(segs, segments)
            .map_err(|e| fail(DIGEST_SEGMENTS, &format!("{path}.segments"), e))?;
    }
    Ok(())
}

/// cryptsetup `json_segment_is_backup`: a flag starting with `backup-`.
fn is_backup(seg: &Value) -> bool {
    arr(seg, "flags").is_some_and(|f| {
        f.iter()
            .any(|s| s.as_str().is_some_and(|s| cstr(s).starts_with("backup-")))
    })
}

fn has_flag(seg: &Value, flag: &str) -> bool {
    arr(seg, "flags").is_some_and(|f| f.iter().any(|s| s.as_str().map(cstr) == Some(flag)))
}

/// C `atoi` of an all-digit key (wrapping like the 32-bit int it returns on glibc for
/// in-range values; ids are canonical here, so this is the plain value).
fn atoi(key: &str) -> i64 {
    cstr(key).parse::<i64>().unwrap_or(i64::MAX)
}

fn check_crypt_segment(
    id: &str,
    seg: &Value,
    digests: &Map<String, Value>,
    size: u64,
) -> Result<()> {
    let path = format!("segments.{id}");
    let (Some(iv), Some(_), Some(ss)) = (
        string(seg, "iv_tweak"),
        string(seg, "encryption"),
        int(seg, "sector_size"),
    ) else {
        return Err(fail(
            SEGMENT_CRYPT_FIELDS,
            &path,
            "missing or empty \"iv_tweak\" or \"encryption\", or no integer \"sector_size\"",
        ));
    };
    if let Some(integrity) = member(seg, "integrity") {
        if !integrity.is_object()
            || string(integrity, "type").is_none()
            || string(integrity, "journal_encryption").is_none()
            || string(integrity, "journal_integrity").is_none()
        {
            return Err(fail(
                SEGMENT_CRYPT_INTEGRITY,
                &format!("{path}.integrity"),
                "not an object with non-empty strings type, journal_encryption and journal_integrity",
            ));
        }
    }
    if !is_u32(ss) {
        return Err(fail(
            SEGMENT_CRYPT_SECTOR,
            &path,
            format_args!("sector_size {ss}"),
        ));
    }
    let ss = ss.as_u64().unwrap_or(0);
    if ss == 0 || ss % 512 != 0 {
        return Err(fail(
            SEGMENT_CRYPT_SECTOR,
            &path,
            format_args!("sector_size {ss}"),
        ));
    }
    if !numbered(iv) || strtoull(iv).is_none() {
        return Err(fail(
            SEGMENT_CRYPT_IV,
            &path,
            format_args!("iv_tweak {iv:?}"),
        ));
    }
    if size % ss != 0 {
        return Err(fail(
            SEGMENT_CRYPT_ALIGNED,
            &path,
            format_args!("size {size} is not a multiple of sector_size {ss}"),
        ));
    }
    let listed = digests.values().any(|d| {
        arr(d, "segments").is_some_and(|a| a.iter().any(|s| s.as_str().map(cstr) == Some(cstr(id))))
    });
    if !listed {
        return Err(fail(
            SEGMENT_CRYPT_DIGEST,
            &path,
            "no digest lists this segment",
        ));
    }
    Ok(())
}

fn check_segments(top: &Value) -> Result<()> {
    let Some(segments) = obj(top, "segments") else {
        return Err(fail(
            SEGMENTS_OBJECT,
            "metadata",
            "missing object \"segments\"",
        ));
    };
    if segments.is_empty() {
        return Err(fail(SEGMENTS_OBJECT, "segments", "empty"));
    }
    let Some(digests) = obj(top, "digests") else {
        return Err(fail(
            DIGESTS_OBJECT,
            "metadata",
            "missing object \"digests\"",
        ));
    };
    let count = segments.len() as i64;
    let mut first_backup: i64 = -1;
    for (id, seg) in segments {
        let path = format!("segments.{id}");
        if !numbered(id) {
            return Err(fail(SEGMENT_ID, &path, "the id is not a number"));
        }
        let (Some(kind), Some(offset), Some(size)) = (
            string(seg, "type"),
            string(seg, "offset"),
            string(seg, "size"),
        ) else {
            return Err(fail(
                SEGMENT_FIELDS,
                &path,
                "missing or empty string \"type\", \"offset\" or \"size\"",
            ));
        };
        let offset = match (numbered(offset), strtoull(offset)) {
            (true, Some(v)) => v,
            _ => {
                return Err(fail(
                    SEGMENT_OFFSET,
                    &path,
                    format_args!("offset {offset:?}"),
                ))
            }
        };
        let size = if cstr(size) != "dynamic" {
            match (numbered(size), strtoull(size)) {
                (true, Some(v)) if v != 0 => v,
                _ => return Err(fail(SEGMENT_SIZE, &path, format_args!("size {size:?}"))),
            }
        } else {
            0
        };
        if offset % 512 != 0 {
            return Err(fail(SEGMENT_OFFSET, &path, format_args!("offset {offset}")));
        }
        if size % 512 != 0 {
            return Err(fail(SEGMENT_SIZE, &path, format_args!("size {size}")));
        }
        if let Some(flags) = member(seg, "flags") {
            if !flags.as_array().is_some_and(|a| all_strings(a)) {
                return Err(fail(
                    SEGMENT_FLAGS,
                    &path,
                    "flags is not an array of strings",
                ));
            }
        }
        let i = atoi(id);
        if is_backup(seg) {
            if first_backup < 0 || i < first_backup {
                first_backup = i;
            }
        } else if first_backup >= 0 && i >= first_backup {
            return Err(fail(
                SEGMENT_BACKUP_ORDER,
                &path,
                format_args!("regular segment {i} comes after backup segment {first_backup}"),
            ));
        }
        let kind = cstr(kind);
        if kind == "crypt" {
            check_crypt_segment(id, seg, digests, size)?;
        }
        if kind.starts_with("hw-opal") {
            let opal_size = string(seg, "opal_segment_size");
            let ok = size != 0
                && int(seg, "opal_segment_number").is_some()
                && int(seg, "opal_key_size").is_some()
                && opal_size
                    .filter(|s| numbered(s))
                    .and_then(strtoull)
                    .is_some_and(|o| o != 0 && size <= o);
            if !ok {
                return Err(fail(
                    SEGMENT_OPAL,
                    &path,
                    "incomplete or inconsistent OPAL fields",
                ));
            }
            if kind == "hw-opal-crypt" {
                check_crypt_segment(id, seg, digests, size)?;
            }
        }
    }
    if first_backup == 0 {
        return Err(fail(
            SEGMENT_REGULAR,
            "segments",
            "segment 0 is a backup segment",
        ));
    }
    if first_backup >= count {
        return Err(fail(
            SEGMENT_GAPS,
            "segments",
            format_args!("backup segment {first_backup} after a gap"),
        ));
    }
    let regular = if first_backup < 0 {
        count
    } else {
        first_backup
    };
    let mut iv: Vec<(u64, u64)> = Vec::with_capacity(regular as usize);
    for i in 0..regular {
        let Some(seg) = segments.get(&i.to_string()) else {
            return Err(fail(
                SEGMENT_GAPS,
                "segments",
                format_args!("no segment {i}"),
            ));
        };
        let off = string(seg, "offset").and_then(strtoull).unwrap_or(0);
        let size = string(seg, "size").and_then(strtoull).unwrap_or(0);
        iv.push((off, if size == 0 { u64::MAX } else { size }));
    }
    for (i, &(off, len)) in iv.iter().enumerate() {
        if len == u64::MAX && i + 1 != iv.len() {
            return Err(fail(
                SEGMENT_DYNAMIC_LAST,
                &format!("segments.{i}"),
                "\"dynamic\" but not the last regular segment",
            ));
        }
        for (j, &(o2, l2)) in iv.iter().enumerate() {
            if i == j {
                continue;
            }
            if l2 != u64::MAX && o2 > u64::MAX - l2 {
                return Err(fail(
                    SEGMENT_OVERLAP,
                    &format!("segments.{j}"),
                    format_args!("offset {o2} + size {l2} overflows"),
                ));
            }
            if off >= o2 && (l2 == u64::MAX || off < o2 + l2) {
                return Err(fail(
                    SEGMENT_OVERLAP,
                    &format!("segments.{i}"),
                    format_args!("overlaps segment {j}"),
                ));
            }
        }
    }
    for i in regular..count {
        if !segments.contains_key(&i.to_string()) {
            return Err(fail(
                SEGMENT_GAPS,
                "segments",
                format_args!("no segment {i}"),
            ));
        }
    }
    check_reencrypt_segments(top, segments, regular, count)
}

/// cryptsetup `json_segment_cmp`.
fn same_segment(a: &Value, b: &Value) -> bool {
    let (Some(ta), Some(tb)) = (
        member(a, "type").and_then(Value::as_str),
        member(b, "type").and_then(Value::as_str),
    ) else {
        return false;
    };
    if cstr(ta) != cstr(tb) {
        return false;
    }
    if cstr(ta) == "crypt" {
        let ss = |s: &Value| member(s, "sector_size").and_then(Value::as_i64);
        let cipher = |s: &Value| {
            member(s, "encryption")
                .and_then(Value::as_str)
                .map(cstr)
                .unwrap_or("null")
                .to_string()
        };
        return ss(a) == ss(b) && cipher(a) == cipher(b);
    }
    true
}

fn check_reencrypt_segments(
    top: &Value,
    segments: &Map<String, Value>,
    first_backup: i64,
    count: i64,
) -> Result<()> {
    if !requirements(top).online_reencrypt {
        return Ok(());
    }
    let get = |i: i64| segments.get(&i.to_string());
    let mut final_ = None;
    let mut previous = None;
    for i in first_backup..count {
        let Some(s) = get(i) else {
            return Err(fail(
                SEGMENT_GAPS,
                "segments",
                format_args!("no segment {i}"),
            ));
        };
        if has_flag(s, "backup-final") {
            final_ = Some(s);
        } else if has_flag(s, "backup-previous") {
            previous = Some(s);
        }
    }
    let (Some(fin), Some(prev)) = (final_, previous) else {
        return Err(fail(
            SEGMENT_REENCRYPT_BACKUPS,
            "segments",
            "online reencryption without both backup-final and backup-previous segments",
        ));
    };
    for i in 0..first_backup {
        let Some(s) = get(i) else {
            return Err(fail(
                SEGMENT_GAPS,
                "segments",
                format_args!("no segment {i}"),
            ));
        };
        let ok = if has_flag(s, "in-reencryption") {
            same_segment(s, fin)
        } else {
            same_segment(s, fin) || same_segment(s, prev)
        };
        if !ok {
            return Err(fail(
                SEGMENT_REENCRYPT_BACKUPS,
                &format!("segments.{i}"),
                "matches neither backup segment",
            ));
        }
    }
    Ok(())
}

fn check_keyslots(top: &Value) -> Result<()> {
    let Some(keyslots) = obj(top, "keyslots") else {
        return Err(fail(
            KEYSLOTS_OBJECT,
            "metadata",
            "missing object \"keyslots\"",
        ));
    };
    for (id, k) in keyslots {
        let path = format!("keyslots.{id}");
        if !numbered(id) {
            return Err(fail(KEYSLOT_ID, &path, "the id is not a number"));
        }
        if string(k, "type").is_none() || !int(k, "key_size").is_some_and(is_u32) {
            return Err(fail(
                KEYSLOT_TYPE,
                &path,
                "missing or empty string \"type\", or \"key_size\" is not a uint32",
            ));
        }
    }
    Ok(())
}

/// `json_size + 4096` (the metadata size), as cryptsetup computes it (wrapping).
fn metadata_size(top: &Value) -> u64 {
    member(top, "config")
        .and_then(|c| member(c, "json_size"))
        .and_then(Value::as_str)
        .and_then(strtoull)
        .unwrap_or(0)
        .wrapping_add(BIN_HDR_LEN)
}

fn keyslots_size(top: &Value) -> u64 {
    member(top, "config")
        .and_then(|c| member(c, "keyslots_size"))
        .and_then(Value::as_str)
        .and_then(strtoull)
        .unwrap_or(0)
}

fn check_config(top: &Value) -> Result<()> {
    let Some(config) = member(top, "config").filter(|c| c.is_object()) else {
        return Err(fail(REQ_CONFIG, "metadata", "missing object \"config\""));
    };
    let Some(js) = string(config, "json_size").and_then(strtoull) else {
        return Err(fail(
            CONFIG_JSON_SIZE,
            "config.json_size",
            "not a number string",
        ));
    };
    let md = js.wrapping_add(BIN_HDR_LEN);
    let Some(ks) = string(config, "keyslots_size").and_then(strtoull) else {
        return Err(fail(
            CONFIG_KEYSLOTS_SIZE,
            "config.keyslots_size",
            "not a number string",
        ));
    };
    if !METADATA_SIZES.contains(&md) {
        return Err(fail(
            CONFIG_JSON_SIZE,
            "config.json_size",
            format_args!("{js} + 4096 is not a LUKS2 metadata size"),
        ));
    }
    if ks % 4096 != 0 || ks > MAX_KEYSLOTS_SIZE {
        return Err(fail(
            CONFIG_KEYSLOTS_SIZE,
            "config.keyslots_size",
            format_args!("{ks}"),
        ));
    }
    // json_segments_get_minimal_offset: the first regular segment at 0 short-cuts to 0.
    let mut min = u64::MAX;
    if let Some(segs) = obj(top, "segments") {
        for s in segs.values() {
            if is_backup(s) {
                continue;
            }
            let off = member(s, "offset")
                .and_then(Value::as_str)
                .and_then(strtoull)
                .unwrap_or(0);
            if off == 0 {
                min = 0;
                break;
            }
            min = min.min(off);
        }
    }
    if min != 0 && (min < ks || min - ks < 2 * md) {
        return Err(fail(
            CONFIG_DATA_OFFSET,
            "config.keyslots_size",
            format_args!(
                "{ks} bytes of keyslots after two {md}-byte copies do not end before the data at {min}"
            ),
        ));
    }
    if let Some(flags) = member(config, "flags") {
        if !flags.as_array().is_some_and(|a| all_strings(a)) {
            return Err(fail(
                CONFIG_FLAGS,
                "config.flags",
                "not an array of strings",
            ));
        }
    }
    Ok(())
}

fn check_areas(top: &Value) -> Result<()> {
    let (Some(keyslots), Some(_)) = (obj(top, "keyslots"), obj(top, "segments")) else {
        return Err(fail(
            KEYSLOTS_OBJECT,
            "metadata",
            "missing keyslots or segments",
        ));
    };
    let md = metadata_size(top);
    let end = md.wrapping_mul(2).wrapping_add(keyslots_size(top));
    let mut iv: Vec<(&str, u64, u64)> = Vec::with_capacity(keyslots.len());
    for (id, k) in keyslots {
        let path = format!("keyslots.{id}.area");
        let area = member(k, "area").filter(|a| a.is_object());
        let fields = area.and_then(|a| {
            string(a, "type")?;
            let off = string(a, "offset").filter(|s| numbered(s))?;
            let len = string(a, "size").filter(|s| numbered(s))?;
            Some((off, len))
        });
        let Some((off, len)) = fields else {
            return Err(fail(
                AREA_FIELDS,
                &path,
                "missing or malformed type, offset or size",
            ));
        };
        let (Some(off), Some(len)) = (strtoull(off), strtoull(len)) else {
            return Err(fail(AREA_FIELDS, &path, "offset or size beyond uint64"));
        };
        iv.push((id, off, len));
    }
    for (i, &(id, off, len)) in iv.iter().enumerate() {
        let path = format!("keyslots.{id}.area");
        if off < md.wrapping_mul(2) {
            return Err(fail(
                AREA_BOUNDS,
                &path,
                format_args!("offset {off} lies inside the header copies"),
            ));
        }
        if len == 0 {
            return Err(fail(AREA_BOUNDS, &path, "size 0"));
        }
        if off > u64::MAX - len {
            return Err(fail(AREA_BOUNDS, &path, "offset + size overflows"));
        }
        if off + len > end {
            return Err(fail(
                AREA_BOUNDS,
                &path,
                format_args!(
                    "[{off}, {}) runs past the keyslots area end {end}",
                    off + len
                ),
            ));
        }
        for (j, &(other, o2, l2)) in iv.iter().enumerate() {
            if i == j {
                continue;
            }
            if o2 > u64::MAX - l2 {
                return Err(fail(
                    AREA_BOUNDS,
                    &format!("keyslots.{other}.area"),
                    "offset + size overflows",
                ));
            }
            if off >= o2 && off < o2 + l2 {
                return Err(fail(
                    AREA_OVERLAP,
                    &path,
                    format_args!("overlaps keyslot {other}'s area"),
                ));
            }
        }
    }
    Ok(())
}

fn check_json_size(top: &Value, hdr_size: u64) -> Result<()> {
    let area = hdr_size.wrapping_sub(BIN_HDR_LEN);
    let js = member(top, "config")
        .and_then(|c| member(c, "json_size"))
        .and_then(Value::as_str)
        .and_then(strtoull)
        .unwrap_or(0);
    if js != area {
        return Err(fail(
            JSON_SIZE,
            "config.json_size",
            format_args!(
                "{js} but the binary header's size {hdr_size} gives a {area}-byte JSON area"
            ),
        ));
    }
    let len = top.to_string().len() as u64;
    if len > area {
        return Err(fail(
            JSON_SIZE,
            "metadata",
            format_args!("{len} bytes of JSON do not fit the {area}-byte area"),
        ));
    }
    Ok(())
}

fn check_luks2_keyslot(path: &str, k: &Value) -> Result<()> {
    let (Some(kdf), Some(af), Some(area)) = (
        member(k, "kdf").filter(|v| v.is_object()),
        member(k, "af").filter(|v| v.is_object()),
        member(k, "area").filter(|v| v.is_object()),
    ) else {
        return Err(fail(
            LUKS2_KEYSLOT_OBJECTS,
            path,
            "missing object kdf, af or area",
        ));
    };
    let Some(kind) = string(kdf, "type") else {
        return Err(fail(
            LUKS2_KEYSLOT_KDF,
            &format!("{path}.kdf"),
            "missing or empty type",
        ));
    };
    let n = kdf.as_object().map_or(0, Map::len);
    let ok = match cstr(kind) {
        "pbkdf2" => {
            n == 4
                && string(kdf, "hash").is_some()
                && int(kdf, "iterations").is_some()
                && string(kdf, "salt").is_some()
        }
        "argon2i" | "argon2id" => {
            n == 5
                && int(kdf, "time").is_some()
                && int(kdf, "memory").is_some()
                && int(kdf, "cpus").is_some()
                && string(kdf, "salt").is_some()
        }
        _ => true,
    };
    if !ok {
        return Err(fail(
            LUKS2_KEYSLOT_KDF,
            &format!("{path}.kdf"),
            format_args!("a {kind} kdf with missing, mistyped or extra fields"),
        ));
    }
    let af_ok = string(af, "type").map(cstr) == Some("luks1")
        && string(af, "hash").is_some()
        && int(af, "stripes").is_some();
    if !af_ok {
        return Err(fail(
            LUKS2_KEYSLOT_AF,
            &format!("{path}.af"),
            "not a luks1 splitter",
        ));
    }
    let area_ok = string(area, "type").map(cstr) == Some("raw")
        && string(area, "encryption").is_some()
        && int(area, "key_size").is_some()
        && string(area, "offset").is_some()
        && string(area, "size").is_some();
    if !area_ok {
        return Err(fail(
            LUKS2_KEYSLOT_AREA,
            &format!("{path}.area"),
            "not a raw area with encryption and key_size",
        ));
    }
    Ok(())
}

fn check_reencrypt_keyslot(path: &str, k: &Value) -> Result<()> {
    let bad = |what: &str| fail(REENCRYPT_KEYSLOT, path, what);
    let area = member(k, "area").ok_or_else(|| bad("no area"))?;
    let area_type = member(area, "type")
        .and_then(Value::as_str)
        .map(cstr)
        .ok_or_else(|| bad("no area type"))?;
    let (Some(ks), Some(mode), Some(dir)) = (
        int(k, "key_size"),
        string(k, "mode"),
        string(k, "direction"),
    ) else {
        return Err(bad("missing key_size, mode or direction"));
    };
    if !is_u32(ks) || ks.as_u64() != Some(1) {
        return Err(bad("key_size is not 1"));
    }
    if !matches!(cstr(mode), "reencrypt" | "encrypt" | "decrypt") {
        return Err(bad("mode is not reencrypt, encrypt or decrypt"));
    }
    if !matches!(cstr(dir), "forward" | "backward") {
        return Err(bad("direction is not forward or backward"));
    }
    if matches!(area_type, "checksum" | "datashift-checksum") {
        let (Some(_), Some(ss)) = (string(area, "hash"), int(area, "sector_size")) else {
            return Err(bad("a checksum area without hash or sector_size"));
        };
        let v = ss.as_u64().unwrap_or(0);
        if !is_u32(ss) || v < 512 || !v.is_power_of_two() {
            return Err(bad("the checksum sector_size is not a power of two >= 512"));
        }
    } else if matches!(area_type, "datashift" | "datashift-journal") {
        let Some(shift) = string(area, "shift_size") else {
            return Err(bad("a datashift area without shift_size"));
        };
        let v = strtoull(shift).unwrap_or(0);
        if v == 0 || v % 512 != 0 {
            return Err(bad("shift_size is 0 or not a multiple of 512"));
        }
    }
    Ok(())
}

fn check_keyslot_handlers(top: &Value) -> Result<()> {
    let Some(keyslots) = obj(top, "keyslots") else {
        return Err(fail(
            KEYSLOTS_OBJECT,
            "metadata",
            "missing object \"keyslots\"",
        ));
    };
    let digests = obj(top, "digests");
    let mut reencrypt = 0;
    for (id, k) in keyslots {
        let path = format!("keyslots.{id}");
        match member(k, "type").and_then(Value::as_str).map(cstr) {
            Some("luks2") => {
                check_luks2_keyslot(&path, k)?;
                let name = atoi(id).to_string();
                let n = digests.map_or(0, |d| {
                    d.values()
                        .filter(|d| {
                            arr(d, "keyslots").is_some_and(|a| {
                                a.iter()
                                    .any(|s| s.as_str().map(cstr) == Some(name.as_str()))
                            })
                        })
                        .count()
                });
                if n != 1 {
                    return Err(fail(
                        LUKS2_KEYSLOT_DIGEST,
                        &path,
                        format_args!("listed by {n} digests"),
                    ));
                }
            }
            Some("reencrypt") => {
                check_reencrypt_keyslot(&path, k)?;
                reencrypt += 1;
            }
            _ => {}
        }
    }
    let reqs = requirements(top);
    if reqs.online_reencrypt && reencrypt == 0 {
        return Err(fail(
            REENCRYPT_COUNT,
            "keyslots",
            "online-reencrypt without a reencrypt keyslot",
        ));
    }
    if reencrypt > 0 && !mandatory(top).into_iter().any(reencrypt_candidate) {
        return Err(fail(
            REENCRYPT_COUNT,
            "keyslots",
            "a reencrypt keyslot without an online-reencrypt requirement",
        ));
    }
    if reencrypt > 1 {
        return Err(fail(
            REENCRYPT_COUNT,
            "keyslots",
            "more than one reencrypt keyslot",
        ));
    }
    Ok(())
}

/// Checks typed metadata sealvol is about to write: the same rules, on its JSON form.
pub(crate) fn validate(md: &super::metadata::Metadata, hdr_size: u64) -> Result<()> {
    check(&md.to_json(), hdr_size)
}
