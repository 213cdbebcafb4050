//! A parsed header as one JSON document: what `sealvol dump --json` prints and what a
//! daemon's API would return ([`AnyVolume::dump_json`]); and that document laid out as
//! `cryptsetup luksDump` prints a header ([`text`]).
//!
//! LUKS2: the binary-header fields, the state of both copies, whether sealvol may change the
//! header, and the JSON metadata verbatim (so fields this crate does not model are shown
//! too, in the text as well). LUKS1: every binary field, salts as hex. Nothing secret is in
//! a header, so nothing secret is in the document.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::{luks1, luks2, AnyVolume, Storage};

impl<S: Storage> AnyVolume<S> {
    /// The header as a JSON document (see the module docs for its fields).
    pub fn dump_json(&self) -> Value {
        match self {
            AnyVolume::Luks1(v) => luks1_json(v.header()),
            AnyVolume::Luks2(v) => luks2_json(v),
        }
    }
}

fn copy_state(r: &Result<u64, String>) -> Value {
    match r {
        Ok(seqid) => json!({"valid": true, "seqid": seqid}),
        Err(e) => json!({"valid": false, "error": e}),
    }
}

fn luks1_json(h: &luks1::Header) -> Value {
    let slots: Vec<Value> = h
        .keyslots()
        .iter()
        .enumerate()
        .map(|(i, k)| {
            json!({
                "id": i,
                "active": k.active,
                "iterations": k.iterations,
                "salt": hex::encode(k.salt),
                "key_material_offset": k.key_material_offset,
                "stripes": k.stripes,
            })
        })
        .collect();
    json!({
        "version": 1,
        "uuid": h.uuid(),
        "cipher": h.cipher(),
        "hash": h.hash_spec(),
        "unusable": h.usable().err().map(|e| e.to_string()),
        "payload_offset": h.payload_offset(),
        "key_bytes": h.key_bytes(),
        "mk_digest_iterations": h.mk_digest_iter(),
        "keyslots": slots,
    })
}

fn luks2_json<S: Storage>(vol: &luks2::Volume<S>) -> Value {
    let h = vol.header();
    let report = vol.load_report();
    json!({
        "version": 2,
        "uuid": h.uuid(),
        "label": h.label(),
        "subsystem": h.subsystem(),
        "epoch": h.seqid(),
        "metadata_size": h.hdr_size(),
        "keyslots_size": h.keyslots_size(),
        "copies": {
            "primary": copy_state(&report.primary),
            "secondary": copy_state(&report.secondary),
        },
        "read_only": vol.read_only(),
        "metadata": h.metadata().to_json(),
        "blockers": vol.blockers().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "unusable": unusable(vol),
    })
}

/// The objects sealvol cannot use and why: `{"keyslots": {"1": "..."}, "digests": {...},
/// "data_segment": "..."}` (empty maps and `null` when everything is usable).
fn unusable<S: Storage>(vol: &luks2::Volume<S>) -> Value {
    let md = vol.header().metadata();
    let keyslots: Map<String, Value> = md
        .keyslots
        .iter()
        .filter_map(|(id, k)| {
            k.unusable(*id)
                .map(|why| (id.to_string(), Value::from(why)))
        })
        .collect();
    let digests: Map<String, Value> = md
        .digests
        .iter()
        .filter_map(|(id, d)| d.unusable().map(|why| (id.to_string(), Value::from(why))))
        .collect();
    let data = vol.data_segment().err().map(|e| e.to_string());
    json!({"keyslots": keyslots, "digests": digests, "data_segment": data})
}

/// The document of [`AnyVolume::dump_json`] laid out as `cryptsetup luksDump` prints a
/// header (LUKS1 or LUKS2, by its `version`).
pub fn text(doc: &Value) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = match doc["version"].as_u64() {
        Some(1) => luks1_human(doc, &mut o),
        _ => luks2_human(doc, &mut o),
    };
    o.trim_end().to_string()
}

/// luksDump's LUKS1 layout.
fn luks1_human(h: &Value, o: &mut String) -> std::fmt::Result {
    writeln!(o, "LUKS header information")?;
    writeln!(o, "Version:       \t1")?;
    writeln!(o, "Cipher:        \t{}", s(h, "cipher"))?;
    writeln!(o, "Hash spec:     \t{}", s(h, "hash"))?;
    writeln!(o, "Payload offset:\t{}", num(h, "payload_offset"))?;
    writeln!(
        o,
        "MK bits:       \t{}",
        h["key_bytes"].as_u64().unwrap_or(0).saturating_mul(8)
    )?;
    writeln!(o, "MK iterations: \t{}", num(h, "mk_digest_iterations"))?;
    writeln!(o, "UUID:          \t{}", s(h, "uuid"))?;
    if let Some(why) = h["unusable"].as_str() {
        writeln!(o, "Unusable:      \t{why}")?;
    }
    let slots = h["keyslots"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, k) in slots.iter().enumerate() {
        if k["active"].as_bool() == Some(true) {
            writeln!(o, "\nKey Slot {i}: ENABLED")?;
            writeln!(o, "\tIterations:         \t{}", num(k, "iterations"))?;
            writeln!(
                o,
                "\tKey material offset:\t{}",
                num(k, "key_material_offset")
            )?;
            writeln!(o, "\tAF stripes:         \t{}", num(k, "stripes"))?;
        } else {
            writeln!(o, "Key Slot {i}: DISABLED")?;
        }
    }
    Ok(())
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn num(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "?".into(),
    }
}

/// base64 field shown as hex bytes in rows of 16, as luksDump does.
fn hex_block(b64: &str, indent: &str) -> String {
    let bytes = match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(b) => b,
        Err(_) => return format!("(invalid base64: {b64})"),
    };
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

fn entries(v: &Value, key: &str) -> Vec<(String, Value)> {
    let mut items: Vec<(String, Value)> = v
        .get(key)
        .and_then(Value::as_object)
        .map(|m: &Map<String, Value>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    items.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX));
    items
}

fn luks2_human(doc: &Value, o: &mut String) -> std::fmt::Result {
    let meta = &doc["metadata"];
    let none = |x: &str, what: &str| {
        if x.is_empty() {
            format!("(no {what})")
        } else {
            x.to_string()
        }
    };
    writeln!(o, "LUKS header information")?;
    writeln!(o, "Version:       \t2")?;
    writeln!(o, "Epoch:         \t{}", num(doc, "epoch"))?;
    writeln!(o, "Metadata area: \t{} [bytes]", num(doc, "metadata_size"))?;
    writeln!(o, "Keyslots area: \t{} [bytes]", num(doc, "keyslots_size"))?;
    writeln!(o, "UUID:          \t{}", s(doc, "uuid"))?;
    writeln!(o, "Label:         \t{}", none(s(doc, "label"), "label"))?;
    writeln!(
        o,
        "Subsystem:     \t{}",
        none(s(doc, "subsystem"), "subsystem")
    )?;
    let config = meta.get("config").cloned().unwrap_or(Value::Null);
    let flags: Vec<&str> = config
        .get("flags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    writeln!(
        o,
        "Flags:       \t{}",
        if flags.is_empty() {
            "(no flags)".into()
        } else {
            flags.join(" ")
        }
    )?;
    let blockers = doc["blockers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for b in blockers.iter().filter_map(Value::as_str) {
        writeln!(o, "Blocked:       \t{b}")?;
    }
    if blockers.is_empty() {
        if let Some(reason) = doc["read_only"].as_str() {
            writeln!(o, "Read-only:     \t{reason}")?;
        }
    }
    let unusable = &doc["unusable"];

    writeln!(o, "\nData segments:")?;
    for (id, seg) in entries(meta, "segments") {
        writeln!(o, "  {id}: {}", s(&seg, "type"))?;
        writeln!(o, "\toffset: {} [bytes]", num(&seg, "offset"))?;
        let size = num(&seg, "size");
        if size == "dynamic" {
            writeln!(o, "\tlength: (whole device)")?;
        } else {
            writeln!(o, "\tlength: {size} [bytes]")?;
        }
        writeln!(o, "\tcipher: {}", s(&seg, "encryption"))?;
        writeln!(o, "\tsector: {} [bytes]", num(&seg, "sector_size"))?;
    }
    if blockers.is_empty() {
        if let Some(why) = unusable["data_segment"].as_str() {
            writeln!(o, "  unusable: {why}")?;
        }
    }

    let digests = entries(meta, "digests");
    writeln!(o, "\nKeyslots:")?;
    for (id, ks) in entries(meta, "keyslots") {
        writeln!(o, "  {id}: {}", s(&ks, "type"))?;
        if let Some(why) = unusable["keyslots"][id.as_str()].as_str() {
            writeln!(o, "\tUnusable:   {why}")?;
        }
        writeln!(
            o,
            "\tKey:        {} bits",
            ks.get("key_size")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .saturating_mul(8)
        )?;
        let prio = match ks.get("priority").and_then(Value::as_u64) {
            Some(0) => "ignored",
            Some(2) => "high",
            _ => "normal",
        };
        writeln!(o, "\tPriority:   {prio}")?;
        let area = ks.get("area").cloned().unwrap_or(Value::Null);
        writeln!(o, "\tCipher:     {}", s(&area, "encryption"))?;
        writeln!(
            o,
            "\tCipher key: {} bits",
            area.get("key_size")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .saturating_mul(8)
        )?;
        let kdf = ks.get("kdf").cloned().unwrap_or(Value::Null);
        writeln!(o, "\tPBKDF:      {}", s(&kdf, "type"))?;
        if s(&kdf, "type") == "pbkdf2" {
            writeln!(o, "\tHash:       {}", s(&kdf, "hash"))?;
            writeln!(o, "\tIterations: {}", num(&kdf, "iterations"))?;
        } else {
            writeln!(o, "\tTime cost:  {}", num(&kdf, "time"))?;
            writeln!(o, "\tMemory:     {}", num(&kdf, "memory"))?;
            writeln!(o, "\tThreads:    {}", num(&kdf, "cpus"))?;
        }
        writeln!(
            o,
            "\tSalt:       {}",
            hex_block(s(&kdf, "salt"), "\t            ")
        )?;
        let af = ks.get("af").cloned().unwrap_or(Value::Null);
        writeln!(o, "\tAF stripes: {}", num(&af, "stripes"))?;
        writeln!(o, "\tAF hash:    {}", s(&af, "hash"))?;
        writeln!(o, "\tArea offset:{} [bytes]", num(&area, "offset"))?;
        writeln!(o, "\tArea length:{} [bytes]", num(&area, "size"))?;
        for (did, d) in &digests {
            let refs = d.get("keyslots").and_then(Value::as_array);
            if refs.is_some_and(|r| r.iter().any(|x| x.as_str() == Some(id.as_str()))) {
                writeln!(o, "\tDigest ID:  {did}")?;
            }
        }
    }

    writeln!(o, "Tokens:")?;
    for (id, tok) in entries(meta, "tokens") {
        writeln!(o, "  {id}: {}", s(&tok, "type"))?;
        if let Some(slots) = tok.get("keyslots").and_then(Value::as_array) {
            for k in slots.iter().filter_map(Value::as_str) {
                writeln!(o, "\tKeyslot:    {k}")?;
            }
        }
    }

    writeln!(o, "Digests:")?;
    for (id, d) in &digests {
        writeln!(o, "  {id}: {}", s(d, "type"))?;
        if let Some(why) = unusable["digests"][id.as_str()].as_str() {
            writeln!(o, "\tUnusable:   {why}")?;
        }
        writeln!(o, "\tHash:       {}", s(d, "hash"))?;
        writeln!(o, "\tIterations: {}", num(d, "iterations"))?;
        writeln!(
            o,
            "\tSalt:       {}",
            hex_block(s(d, "salt"), "\t            ")
        )?;
        writeln!(
            o,
            "\tDigest:     {}",
            hex_block(s(d, "digest"), "\t            ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Seek, SeekFrom, Write};

    use super::text;
    use crate::{AnyVolume, NewHeader, Version};
    use serde_json::Value;

    fn built(version: Version) -> Cursor<Vec<u8>> {
        let h = NewHeader {
            version,
            label: (version == Version::Luks2).then(|| "web".to_string()),
            ..NewHeader::default()
        }
        .build(&[0xff; 32])
        .unwrap();
        Cursor::new(h.bytes)
    }

    #[test]
    fn luks2_document_has_both_copies_and_the_metadata_verbatim() {
        let mut bytes = built(Version::Luks2);
        let vol = AnyVolume::open(bytes.clone()).unwrap();
        let doc = vol.dump_json();
        assert_eq!(doc["version"], 2);
        assert_eq!(doc["label"], "web");
        assert_eq!(doc["uuid"], vol.uuid());
        assert_eq!(doc["copies"]["primary"]["valid"], true);
        assert_eq!(doc["copies"]["secondary"]["valid"], true);
        assert_eq!(doc["read_only"], serde_json::Value::Null);
        assert_eq!(doc["metadata"]["keyslots"]["0"]["kdf"]["type"], "pbkdf2");
        assert_eq!(doc["metadata"]["config"]["json_size"], "12288");

        // A damaged primary: the document says which copy is bad and why.
        bytes.seek(SeekFrom::Start(0x18)).unwrap();
        bytes.write_all(&[0xa5; 0x40]).unwrap();
        let doc = AnyVolume::open(bytes).unwrap().dump_json();
        assert_eq!(doc["copies"]["primary"]["valid"], false);
        assert!(doc["copies"]["primary"]["error"]
            .as_str()
            .unwrap()
            .contains("checksum"));
        assert_eq!(doc["copies"]["secondary"]["valid"], true);
    }

    #[test]
    fn luks1_document_has_every_keyslot_with_hex_salts() {
        let vol = AnyVolume::open(built(Version::Luks1)).unwrap();
        let doc = vol.dump_json();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["cipher"], "aes-xts-plain64");
        assert_eq!(doc["hash"], "sha256");
        let slots = doc["keyslots"].as_array().unwrap();
        assert_eq!(slots.len(), 8);
        assert_eq!(slots[0]["active"], true);
        assert_eq!(slots[1]["active"], false);
        let salt = slots[0]["salt"].as_str().unwrap();
        assert_eq!(salt.len(), 64);
        assert!(salt.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    fn doc(version: Version) -> Value {
        AnyVolume::open(built(version)).unwrap().dump_json()
    }

    #[test]
    fn luks2_is_laid_out_as_luks_dump() {
        let text = text(&doc(Version::Luks2));
        for line in [
            "Version:       \t2",
            "Label:         \tweb",
            "Subsystem:     \t(no subsystem)",
            "  0: crypt",
            "\tlength: (whole device)",
            "  0: luks2",
            "\tPBKDF:      pbkdf2",
            "\tIterations: 1000",
            "\tDigest ID:  0",
            "Tokens:",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        // Salts as rows of 16 hex bytes.
        let salt = text.lines().find(|l| l.starts_with("\tSalt:")).unwrap();
        assert_eq!(salt.split_whitespace().count(), 17, "{salt}");
    }

    #[test]
    fn luks1_is_laid_out_as_luks_dump() {
        let text = text(&doc(Version::Luks1));
        assert!(text.starts_with("LUKS header information\nVersion:       \t1\n"));
        assert!(text.contains("MK bits:       \t512\n"));
        assert!(text.contains("\nKey Slot 0: ENABLED\n\tIterations:         \t1000\n"));
        assert!(text.ends_with("Key Slot 7: DISABLED"), "{text}");
    }
}
