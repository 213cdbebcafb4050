//! A parsed header as one JSON document: what `sealvol dump --json` prints and what a
//! daemon's API would return ([`AnyVolume::dump_json`]).
//!
//! LUKS2: the binary-header fields, the state of both copies, whether sealvol may change the
//! header, and the JSON metadata verbatim (so fields this crate does not model are shown
//! too). LUKS1: every binary field, salts as hex. Nothing secret is in a header, so nothing
//! secret is in the document.

use serde_json::{json, Value};

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
        "hash": h.hash().as_str(),
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
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Seek, SeekFrom, Write};

    use crate::{AnyVolume, NewHeader, Version};

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
}
