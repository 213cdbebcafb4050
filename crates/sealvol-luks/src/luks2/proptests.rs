//! Encode → parse round trips over random valid headers.

use super::header::Header;
use super::metadata::*;
use super::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

fn kdf() -> impl Strategy<Value = Kdf> {
    prop_oneof![
        (
            prop::sample::select(vec!["sha1", "sha256", "sha512"]),
            1000u32..u32::MAX,
            prop::collection::vec(any::<u8>(), 32)
        )
            .prop_map(|(h, iterations, salt)| Kdf::Pbkdf2 {
                hash: h.into(),
                iterations,
                salt
            }),
        (
            any::<bool>(),
            4u32..100,
            32u32..(4 << 20),
            1u32..5,
            prop::collection::vec(any::<u8>(), 32)
        )
            .prop_map(|(i, time, memory, cpus, salt)| Kdf::Argon2 {
                variant: if i {
                    Argon2Variant::Argon2i
                } else {
                    Argon2Variant::Argon2id
                },
                time,
                memory,
                cpus,
                salt
            }),
    ]
}

#[derive(Debug)]
struct Gen {
    hdr_size: u64,
    slots: Vec<(u32, u32, u64, Kdf, Option<u32>)>, // id, key bytes, gap pages before, kdf, priority
    slack_pages: u64,
    detached: bool,
    data_gap_pages: u64,
    sector: u32,
    seg_sectors: Option<u64>,
    iv_tweak: u64,
    digest_hash: &'static str,
    digest_len: usize,
    tokens: Vec<(u32, Vec<bool>, String)>,
    label: String,
    subsystem: String,
    seqid: u64,
    requirements: Option<Vec<String>>,
    flags: Option<Vec<String>>,
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        (
            prop::sample::select(METADATA_SIZES.to_vec()),
            prop::collection::btree_map(
                0u32..32,
                (
                    prop::sample::select(vec![32u32, 64]),
                    0u64..4,
                    kdf(),
                    prop::option::of(0u32..3),
                ),
                0..6,
            ),
            0u64..64,
            any::<bool>(),
            0u64..300,
            prop::sample::select(vec![512u32, 1024, 2048, 4096]),
            prop::option::of(1u64..1_000_000),
            any::<u64>(),
        ),
        (
            prop::sample::select(vec![
                ("sha1", 20usize),
                ("sha256", 32),
                ("sha512", 64),
                ("sha256", 20),
            ]),
            prop::collection::vec(
                (
                    0u32..32,
                    prop::collection::vec(any::<bool>(), 8),
                    "[ -~]{0,20}",
                ),
                0..4,
            ),
            "[a-zA-Z0-9 _.-]{0,47}",
            "[a-zA-Z0-9 _.-]{0,47}",
            any::<u64>(),
            prop::option::of(prop::collection::vec("[a-z0-9-]{1,12}", 0..3)),
            prop::option::of(prop::collection::vec("[a-z-]{1,12}", 0..3)),
        ),
    )
        .prop_map(|(a, b)| Gen {
            hdr_size: a.0,
            slots: a
                .1
                .into_iter()
                .map(|(id, (k, g, kdf, p))| (id, k, g, kdf, p))
                .collect(),
            slack_pages: a.2,
            detached: a.3,
            data_gap_pages: a.4,
            sector: a.5,
            seg_sectors: a.6,
            iv_tweak: a.7,
            digest_hash: b.0 .0,
            digest_len: b.0 .1,
            tokens: b.1,
            label: b.2,
            subsystem: b.3,
            seqid: b.4,
            requirements: b.5,
            flags: b.6,
        })
}

fn build(g: &Gen) -> Header {
    let mut keyslots = BTreeMap::new();
    let mut off = 2 * g.hdr_size;
    for (id, key, gap, kdf, prio) in &g.slots {
        off += gap * 4096;
        let size = keyslot_area_size(*key as usize);
        keyslots.insert(
            *id,
            Keyslot {
                kind: "luks2".into(),
                key_size: *key,
                af: Some(Af {
                    kind: "luks1".into(),
                    stripes: 4000,
                    hash: "sha256".into(),
                    extra: Map::new(),
                }),
                area: Area {
                    kind: "raw".into(),
                    offset: off,
                    size,
                    encryption: Some("aes-xts-plain64".into()),
                    key_size: Some(*key),
                    extra: Map::new(),
                },
                kdf: Some(kdf.clone()),
                priority: *prio,
                extra: Map::new(),
            },
        );
        off += size;
    }
    let keyslots_size = (off - 2 * g.hdr_size + g.slack_pages * 4096).max(4096);
    let end = 2 * g.hdr_size + keyslots_size;
    let data_offset = if g.detached {
        0
    } else {
        end.div_ceil(4096) * 4096 + g.data_gap_pages * 4096
    };
    let ids: Vec<u32> = keyslots.keys().copied().collect();
    let mut tokens = BTreeMap::new();
    for (tid, pick, s) in &g.tokens {
        let ks: Vec<Value> = ids
            .iter()
            .zip(pick)
            .filter(|(_, &p)| p)
            .map(|(i, _)| json!(i.to_string()))
            .collect();
        tokens.insert(
            *tid,
            json!({"type": "sealvol-test", "keyslots": ks, "s": s}),
        );
    }
    let segment = Segment {
        kind: "crypt".into(),
        offset: data_offset,
        size: g.seg_sectors.map(|n| n * u64::from(g.sector)),
        iv_tweak: Some(g.iv_tweak),
        encryption: Some("aes-xts-plain64".into()),
        sector_size: Some(g.sector),
        integrity: None,
        flags: None,
        extra: Map::new(),
    };
    let digest = Digest {
        kind: "pbkdf2".into(),
        keyslots: ids,
        segments: vec![0],
        params: Some(super::metadata::DigestParams {
            hash: g.digest_hash.into(),
            iterations: 1000,
            salt: vec![7; 32],
            digest: vec![9; g.digest_len],
        }),
        extra: Map::new(),
    };
    Header {
        hdr_size: g.hdr_size,
        seqid: g.seqid,
        label: g.label.clone(),
        subsystem: g.subsystem.clone(),
        uuid: "0e3a7d0c-7a55-4d0f-9a63-0c8d1c7b9e11".into(),
        checksum_alg: "sha256".into(),
        salts: [[3; 64], [4; 64]],
        metadata: Metadata {
            keyslots,
            tokens,
            segments: BTreeMap::from([(0, segment)]),
            digests: BTreeMap::from([(0, digest)]),
            config: Config {
                json_size: g.hdr_size - BIN_HDR_LEN,
                keyslots_size,
                flags: g.flags.clone(),
                requirements: g.requirements.clone().map(|m| Requirements {
                    mandatory: Some(m),
                    extra: Map::new(),
                }),
                extra: Map::new(),
            },
            extra: Map::new(),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn encode_parse_round_trip(g in gen()) {
        let h = build(&g);
        prop_assume!(h.metadata.config.keyslots_size <= MAX_KEYSLOTS_SIZE);
        h.validate().unwrap();
        for which in [Copy::Primary, Copy::Secondary] {
            let bytes = h.encode_copy(which).unwrap();
            prop_assert_eq!(bytes.len() as u64, h.hdr_size);
            let p = parse_header_bytes(&bytes).unwrap();
            prop_assert_eq!(&p.metadata, &h.metadata);
            prop_assert_eq!((&p.label, &p.subsystem, &p.uuid, p.seqid, p.hdr_size), (&h.label, &h.subsystem, &h.uuid, h.seqid, h.hdr_size));
            let i = usize::from(which == Copy::Secondary);
            prop_assert_eq!(p.salts[i], h.salts[i]);
            // Byte-exact: re-encoding the parsed header gives the same copy.
            prop_assert!(p.encode_copy(which).unwrap() == bytes);
        }
    }

    #[test]
    fn json_text_round_trip(g in gen()) {
        let h = build(&g);
        let text = h.metadata.to_json_string();
        let v: Value = serde_json::from_str(&text).unwrap();
        let md = Metadata::from_json(&v).unwrap();
        prop_assert_eq!(md.to_json_string(), text);
    }

    #[test]
    fn parse_never_panics_on_mutations(g in gen(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let h = build(&g);
        let mut bytes = h.encode_copy(Copy::Primary).unwrap();
        // Mutate within the binary header and the JSON text, then fix the checksum so the
        // JSON parser and validator see the damage.
        let json_end = 4096 + h.metadata.to_json_string().len() + 1;
        for (i, b) in &edits {
            let at = i.index(json_end);
            bytes[at] = *b;
        }
        if let Some(c) = binary::checksum("sha256", &bytes) {
            binary::set_checksum(&mut bytes, &c);
        }
        let _ = parse_header_bytes(&bytes);
    }
}

// ---- JSON-level mutations of a cryptsetup header: the metadata rules and the lenient model ----

/// Every path of `v` (object members and array elements).
fn json_paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                prefix.push(json!(k));
                out.push(prefix.clone());
                json_paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(json!(i));
                out.push(prefix.clone());
                json_paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match (cur, p) {
            (Value::Object(m), Value::String(k)) => m.get_mut(k)?,
            (Value::Array(a), Value::Number(n)) => a.get_mut(n.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Values that hit the rules: wrong types, edge numbers, numeric strings, known names.
fn pool() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 511, 512, 4000, 4096, 1536, 1 << 32])
            .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "0",
            "-1",
            "+4096",
            " 4096",
            "01",
            "512",
            "16777216",
            "18446744073709551616",
            "dynamic",
            "luks2",
            "reencrypt",
            "raw",
            "crypt",
            "linear",
            "hw-opal-crypt",
            "pbkdf2",
            "argon2id",
            "scrypt",
            "sha256",
            "whirlpool",
            "cipher_null",
            "backup-final",
            "in-reencryption",
            "online-reencrypt-v2",
            "future",
            "x\u{0}y",
        ])
        .prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!(["0"])),
        Just(json!(1.5)),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Remove(prop::sample::Index),
    Set(prop::sample::Index, Value),
    Add(prop::sample::Index, String, Value),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Remove),
        (any::<prop::sample::Index>(), pool()).prop_map(|(i, v)| Edit::Set(i, v)),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![
                "future",
                "priority",
                "flags",
                "integrity",
                "requirements",
                "time",
                "1",
                "2"
            ]),
            pool()
        )
            .prop_map(|(i, k, v)| Edit::Add(i, k.to_string(), v)),
    ]
}

fn apply(v: &mut Value, e: &Edit) {
    let mut paths = Vec::new();
    json_paths(v, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        return;
    }
    match e {
        Edit::Remove(i) => {
            let p = paths[i.index(paths.len())].clone();
            let (last, parent) = p.split_last().unwrap();
            match (at_mut(v, parent), last) {
                (Some(Value::Object(m)), Value::String(k)) => {
                    m.shift_remove(k);
                }
                (Some(Value::Array(a)), Value::Number(n)) => {
                    a.remove(n.as_u64().unwrap() as usize);
                }
                _ => {}
            }
        }
        Edit::Set(i, x) => {
            if let Some(t) = at_mut(v, &paths[i.index(paths.len())].clone()) {
                *t = x.clone();
            }
        }
        Edit::Add(i, k, x) => {
            if let Some(Value::Object(m)) = at_mut(v, &paths[i.index(paths.len())].clone()) {
                m.insert(k.clone(), x.clone());
            }
        }
    }
}

fn area_of(v: &Value) -> Vec<u8> {
    let mut a = v.to_string().into_bytes();
    a.resize(12288, 0);
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary edits of a cryptsetup header's JSON never panic the rules, the typed model
    /// or the dump; an accepted header re-encodes to JSON that passes every rule again and
    /// types to the same metadata.
    #[test]
    fn json_mutations_never_panic_and_accepted_ones_reencode_to_themselves(
        edits in prop::collection::vec(edit_strategy(), 1..5),
    ) {
        let mut v: Value = serde_json::from_str(super::tests::BASE).unwrap();
        for e in &edits {
            apply(&mut v, e);
        }
        let text = v.to_string();
        if text.len() >= 12288 {
            return Ok(());
        }
        let Ok(md) = parse_json_area(&area_of(&v), 16384) else {
            return Ok(());
        };
        let again = parse_json_area(&area_of(&md.to_json()), 16384);
        prop_assert!(again.is_ok(), "re-encoded metadata refused: {:?}", again.err());
        prop_assert_eq!(again.unwrap(), md.clone());
        for (id, k) in &md.keyslots {
            let _ = k.unusable(*id);
        }
        let _ = super::state::blockers(&md);
        let _ = crate::dump::text(&json!({"version": 2, "metadata": md.to_json()}));
    }

    /// Objects sealvol does not model (unknown keyslot types and KDFs, tokens, digests,
    /// fields anywhere) come back value for value.
    #[test]
    fn unknown_objects_are_written_back_value_for_value(
        kind in prop::sample::select(vec!["future", "luks3", "tpm2-sealed"]),
        kdf in prop::sample::select(vec!["scrypt", "balloon", "argon3"]),
        extra in pool(),
        token in pool(),
    ) {
        let mut v: Value = serde_json::from_str(super::tests::BASE).unwrap();
        v["keyslots"]["1"] = json!({"type": kind, "key_size": 32, "x": extra.clone(),
            "area": {"type": "sealed", "offset": "290816", "size": "8192", "y": extra.clone()}});
        v["keyslots"]["0"]["kdf"] = json!({"type": kdf, "salt": "c2FsdA==", "cost": extra.clone()});
        v["tokens"]["3"] = json!({"type": "t", "keyslots": ["1"], "payload": token});
        v["digests"]["1"] = json!({"type": "future-digest", "keyslots": [], "segments": [], "z": extra.clone()});
        v["segments"]["0"]["future"] = extra.clone();
        v["config"]["future"] = extra;
        let md = parse_json_area(&area_of(&v), 16384).unwrap();
        prop_assert_eq!(md.to_json(), v);
    }
}
