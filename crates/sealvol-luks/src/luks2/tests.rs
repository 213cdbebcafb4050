//! Validation refusals, one small test per rule, over hand-made header copies.

use super::binary::{self, BinaryHeader};
use super::header::{write_header, Header};
use super::*;
use crate::Error;
use sealvol_crypto::SecretBytes;
use serde_json::{json, Value};
use std::io::Cursor;

/// A header cryptsetup 2.6 wrote (`luksFormat --pbkdf pbkdf2 --pbkdf-force-iterations 1000`).
const BASE: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"IiObm2876HKnAW/rVjizgmqxlv21NO2r3oy8g/FCVsw="}}},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"Ia/s7TC4O+HPHa4Cx7kVkeFxlP72rfcy+llJxnKjbxw=","digest":"Gj20BJ3U29gxgiPNWz+VFjcOQ2FqKqaKeosJwlS3xhw="}},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;

fn base() -> Value {
    serde_json::from_str(BASE).unwrap()
}

/// A primary copy of `hdr_size` bytes holding `json_area` (raw bytes, padded with NULs),
/// with a correct checksum.
fn copy_raw(json_area: &[u8], hdr_size: u64) -> Vec<u8> {
    let bin = BinaryHeader {
        secondary: false,
        version: 2,
        hdr_size,
        seqid: 7,
        label: "l".into(),
        checksum_alg: "sha256".into(),
        salt: [1; 64],
        uuid: "312b214d-2374-46c5-abff-b8977f739cae".into(),
        subsystem: String::new(),
        hdr_offset: 0,
    };
    let mut b = bin.encode();
    b.extend_from_slice(json_area);
    b.resize(hdr_size as usize, 0);
    let c = binary::checksum("sha256", &b).unwrap();
    binary::set_checksum(&mut b, &c);
    b
}

fn parse(v: &Value) -> Result<Header> {
    parse_header_bytes(&copy_raw(v.to_string().as_bytes(), 16384))
}

#[track_caller]
fn refused(v: &Value, needle: &str) {
    match parse(v) {
        Err(e @ (Error::Invalid(_) | Error::Unsupported { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
        Err(e) => panic!("expected Invalid mentioning {needle:?}, got {e:?}"),
        Ok(_) => panic!("accepted a header that must be refused ({needle})"),
    }
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    f(&mut v);
    v
}

fn second_keyslot(offset: &str) -> Value {
    let mut k = base()["keyslots"]["0"].clone();
    k["area"]["offset"] = json!(offset);
    k
}

#[test]
fn base_header_parses_and_reencodes_identically() {
    let h = parse(&base()).unwrap();
    assert_eq!(h.metadata().to_json_string(), BASE);
    assert_eq!(h.seqid(), 7);
    assert_eq!(h.label(), "l");
    assert_eq!(h.data_offset(), 16 << 20);
    assert_eq!(h.areas_len(), 16 << 20);
}

#[test]
fn overlapping_keyslot_areas_are_refused() {
    refused(
        &edit(|v| {
            v["keyslots"]["1"] = second_keyslot("36864");
            v["digests"]["0"]["keyslots"] = json!(["0", "1"]);
        }),
        "overlaps",
    );
    // Adjacent areas are fine.
    let ok = edit(|v| {
        v["keyslots"]["1"] = second_keyslot(&(32768 + 258048).to_string());
        v["digests"]["0"]["keyslots"] = json!(["0", "1"]);
    });
    parse(&ok).unwrap();
}

#[test]
fn keyslot_area_out_of_bounds_is_refused() {
    refused(
        &edit(|v| v["keyslots"]["0"]["area"]["offset"] = json!("16646144")),
        "runs past the end",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["area"]["offset"] = json!("16384")),
        "inside the header copies",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["area"]["size"] = json!("0")),
        "size 0",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["area"]["offset"] = json!("33000")),
        "aligned",
    );
}

#[test]
fn area_arithmetic_overflow_is_refused() {
    refused(
        &edit(|v| v["keyslots"]["0"]["area"]["offset"] = json!("18446744073709551104")),
        "overflows",
    );
    refused(
        &edit(|v| {
            v["segments"]["0"]["offset"] = json!("18446744073709551104");
            v["segments"]["0"]["size"] = json!("4096");
        }),
        "overflows",
    );
}

#[test]
fn bad_json_size_is_refused() {
    refused(
        &edit(|v| v["config"]["json_size"] = json!("12289")),
        "json_size",
    );
    // A 32 KiB copy whose config still says 12288.
    let e = parse_header_bytes(&copy_raw(BASE.as_bytes(), 32768)).unwrap_err();
    assert!(e.to_string().contains("json_size"), "{e}");
}

#[test]
fn trailing_junk_after_json_is_refused() {
    for junk in [&b" "[..], b"\n", b"x", b"{}", b"\0x"] {
        let mut area = BASE.as_bytes().to_vec();
        area.extend_from_slice(junk);
        let e = parse_header_bytes(&copy_raw(&area, 16384)).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{junk:?}: {e:?}");
    }
    let mut lead = b" ".to_vec();
    lead.extend_from_slice(BASE.as_bytes());
    assert!(matches!(
        parse_header_bytes(&copy_raw(&lead, 16384)),
        Err(Error::Invalid(_))
    ));
    // JSON filling the whole area leaves no terminating NUL.
    let s = BASE.replace(
        "\"tokens\":{}",
        &format!(
            "\"tokens\":{{}},\"pad\":\"{}\"",
            "p".repeat(12288 - BASE.len() - 9)
        ),
    );
    assert_eq!(s.len(), 12288);
    let e = parse_header_bytes(&copy_raw(s.as_bytes(), 16384)).unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}

#[test]
fn bad_string_uint64_is_refused() {
    for bad in [
        "-1",
        "+32768",
        " 32768",
        "32768 ",
        "",
        "18446744073709551616",
        "0x8000",
        "3.2e4",
    ] {
        refused(
            &edit(|v| v["keyslots"]["0"]["area"]["offset"] = json!(bad)),
            "string-uint64",
        );
    }
    refused(
        &edit(|v| v["keyslots"]["0"]["area"]["offset"] = json!(32768)),
        "expected a string",
    );
    refused(
        &edit(|v| v["segments"]["0"]["iv_tweak"] = json!("-0")),
        "iv_tweak",
    );
    refused(
        &edit(|v| v["config"]["keyslots_size"] = json!("1e6")),
        "keyslots_size",
    );
    refused(&edit(|v| v["segments"]["0"]["size"] = json!("0")), "size");
    refused(
        &edit(|v| v["segments"]["0"]["size"] = json!("Dynamic")),
        "size",
    );
}

#[test]
fn bad_integers_are_refused() {
    refused(
        &edit(|v| v["keyslots"]["0"]["key_size"] = json!(-64)),
        "key_size",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["key_size"] = json!(64.0)),
        "key_size",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["key_size"] = json!(4294967296u64)),
        "key_size",
    );
    refused(
        &edit(|v| v["segments"]["0"]["sector_size"] = json!("4096")),
        "sector_size",
    );
}

#[test]
fn keyslots_size_rules() {
    refused(
        &edit(|v| v["config"]["keyslots_size"] = json!("16744449")),
        "multiple of 4096",
    );
    refused(
        &edit(|v| v["config"]["keyslots_size"] = json!("134221824")),
        "multiple of 4096",
    );
    // Keyslots area running into the data segment.
    refused(
        &edit(|v| v["config"]["keyslots_size"] = json!("16777216")),
        "too large",
    );
}

#[test]
fn dangling_references_are_refused() {
    refused(
        &edit(|v| v["digests"]["0"]["keyslots"] = json!(["0", "1"])),
        "keyslot 1",
    );
    refused(
        &edit(|v| v["digests"]["0"]["segments"] = json!(["0", "1"])),
        "segment 1",
    );
    refused(
        &edit(|v| v["tokens"]["0"] = json!({"type": "t", "keyslots": ["3"]})),
        "keyslot 3",
    );
    refused(
        &edit(|v| v["tokens"]["0"] = json!({"keyslots": []})),
        "type",
    );
    refused(
        &edit(|v| v["tokens"]["0"] = json!({"type": "t"})),
        "keyslots",
    );
    refused(
        &edit(|v| v["tokens"]["0"] = json!({"type": "t", "keyslots": [0]})),
        "string",
    );
}

#[test]
fn keyslot_and_segment_digest_rules() {
    // A luks2 keyslot in no digest.
    refused(
        &edit(|v| {
            v["keyslots"]["1"] = second_keyslot("294912");
        }),
        "exactly one",
    );
    // A crypt segment without digest.
    refused(
        &edit(|v| v["digests"]["0"]["segments"] = json!([])),
        "no digest",
    );
}

#[test]
fn bad_ids_are_refused() {
    for id in ["00", "01", "32", "a", "-1", " 1", ""] {
        refused(
            &edit(|v| {
                let t = json!({"type": "t", "keyslots": []});
                v["tokens"]
                    .as_object_mut()
                    .unwrap()
                    .insert(id.to_string(), t);
            }),
            "id",
        );
    }
    refused(
        &edit(|v| {
            let k = v["keyslots"]["0"].take();
            let ks = v["keyslots"].as_object_mut().unwrap();
            ks.clear();
            ks.insert("00".into(), k);
            v["digests"]["0"]["keyslots"] = json!(["00"]);
        }),
        "id",
    );
}

#[test]
fn segment_rules() {
    refused(
        &edit(|v| v["segments"]["0"]["offset"] = json!("16777217")),
        "multiple of 512",
    );
    refused(
        &edit(|v| v["segments"]["0"]["size"] = json!("1536")),
        "sector size",
    );
    for ss in [0, 3000, 8192, 256] {
        refused(
            &edit(|v| v["segments"]["0"]["sector_size"] = json!(ss)),
            "sector_size",
        );
    }
    refused(
        &edit(|v| {
            v["segments"] = json!({});
            v["digests"]["0"]["segments"] = json!([]);
        }),
        "empty",
    );
    refused(
        &edit(|v| v["segments"]["0"]["flags"] = json!([1])),
        "string",
    );
    // A gap in segment ids.
    refused(
        &edit(|v| {
            let s = v["segments"]["0"].take();
            v["segments"] = json!({ "1": s });
            v["digests"]["0"]["segments"] = json!(["1"]);
        }),
        "gap",
    );
    // Two overlapping segments.
    refused(
        &edit(|v| {
            let mut s0 = v["segments"]["0"].clone();
            s0["size"] = json!("8192");
            v["segments"]["1"] = v["segments"]["0"].clone();
            v["segments"]["1"]["offset"] = json!("16781312");
            v["segments"]["0"] = s0;
            v["digests"]["0"]["segments"] = json!(["0", "1"]);
        }),
        "overlap",
    );
}

#[test]
fn kdf_objects_must_have_exactly_their_fields() {
    refused(
        &edit(|v| v["keyslots"]["0"]["kdf"]["extra"] = json!(1)),
        "exactly 4 fields",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["kdf"]["type"] = json!("scrypt")),
        "scrypt",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["kdf"]["salt"] = json!("!!!")),
        "base64",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["kdf"]["salt"] = json!("AAAA")),
        "32 bytes",
    );
    refused(
        &edit(|v| v["digests"]["0"]["digest"] = json!("AAAA")),
        "20 to 64",
    );
    refused(
        &edit(|v| v["keyslots"]["0"]["af"]["type"] = json!("luks2")),
        "luks1",
    );
}

#[test]
fn unknown_fields_are_preserved() {
    let v = edit(|v| {
        v["keyslots"]["0"]["vendor"] = json!({"x": [1, 2]});
        v["keyslots"]["0"]["area"]["hint"] = json!("h");
        v["segments"]["0"]["future"] = json!(true);
        v["digests"]["0"]["note"] = json!(null);
        v["config"]["flags"] = json!(["allow-discards"]);
        v["config"]["future"] = json!("y");
        v["top"] = json!({"a": 1});
        v["tokens"]["5"] = json!({"type": "t", "keyslots": ["0"], "k": {"z": 1}});
    });
    let h = parse(&v).unwrap();
    assert_eq!(h.metadata().to_json(), v);
}

#[test]
fn binary_header_sanity() {
    let good = copy_raw(BASE.as_bytes(), 16384);
    parse_header_bytes(&good).unwrap();
    // Wrong magic.
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(parse_header_bytes(&b), Err(Error::NotLuks)));
    // LUKS1 (same magic, version 1).
    let mut b = good.clone();
    b[7] = 1;
    assert!(matches!(
        parse_header_bytes(&b),
        Err(Error::UnsupportedVersion(1))
    ));
    // hdr_offset of a primary copy must be 0.
    let mut b = good.clone();
    b[263] = 1;
    assert!(matches!(parse_header_bytes(&b), Err(Error::Corrupt { .. })));
    // Checksum.
    let mut b = good.clone();
    b[5000] ^= 1;
    let e = parse_header_bytes(&b).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    // Bogus hdr_size.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert!(matches!(parse_header_bytes(&b), Err(Error::Corrupt { .. })));
    // Truncated.
    assert!(parse_header_bytes(&good[..10000]).is_err());
    assert!(parse_header_bytes(&good[..100]).is_err());
    assert!(matches!(parse_header_bytes(&[]), Err(Error::NotLuks)));
    // Unknown checksum algorithm.
    let mut b = good.clone();
    b[72..78].copy_from_slice(b"md5\0\0\0");
    assert!(parse_header_bytes(&b).is_err());
}

// ---- Volume-level rules over an in-memory volume ----

fn small_opts() -> FormatOptions {
    FormatOptions {
        keyslots_size: Some(4 * 258048 + 4096 * 4),
        ..FormatOptions::default()
    }
}

fn volume(vk: &SecretBytes) -> Volume<Cursor<Vec<u8>>> {
    Volume::format(Cursor::new(Vec::new()), &small_opts(), vk, b"pw").unwrap()
}

/// Rewrites both copies of `vol` with `f` applied to its header, and reopens.
fn rewrite(vol: Volume<Cursor<Vec<u8>>>, f: impl FnOnce(&mut Header)) -> Volume<Cursor<Vec<u8>>> {
    let mut h = vol.header().clone();
    f(&mut h);
    h.seqid += 1;
    let mut s = vol.into_storage();
    write_header(&mut s, &h).unwrap();
    Volume::open(s).unwrap()
}

#[test]
fn unknown_requirement_makes_the_volume_read_only() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        h.metadata.config.requirements = Some(Requirements {
            mandatory: Some(vec!["future-feature".into()]),
            extra: Default::default(),
        });
    });
    assert!(vol.read_only().is_some());
    // Reading still works.
    assert!(vol
        .unlock(b"pw", None)
        .unwrap()
        .volume_key
        .ct_eq(vk.expose()));
    let seq = vol.header().seqid();
    let kdf = KdfParams::pbkdf2_min();
    assert!(matches!(
        vol.add_keyslot(&vk, b"x", &kdf, None),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(vol.remove_keyslot(0), Err(Error::ReadOnly(_))));
    assert!(matches!(
        vol.change_key(b"pw", b"x", None, None),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(
        vol.add_token(json!({"type": "t", "keyslots": []}), None),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(vol.erase(), Err(Error::ReadOnly(_))));
    assert_eq!(vol.header().seqid(), seq);
}

#[test]
fn cipher_null_segment_is_refused() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        h.metadata.segments.get_mut(&0).unwrap().encryption = Some("cipher_null-ecb".into());
    });
    assert!(matches!(
        vol.data_segment(),
        Err(Error::UnsupportedCipher { .. })
    ));
    assert!(matches!(
        vol.unlock(b"pw", None),
        Err(Error::UnsupportedCipher { .. })
    ));
    assert!(matches!(
        vol.unlock(b"pw", Some(0)),
        Err(Error::UnsupportedCipher { .. })
    ));
}

#[test]
fn cipher_null_keyslot_is_refused() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        let a = &mut h.metadata.keyslots.get_mut(&0).unwrap().area;
        a.encryption = Some("cipher_null".into());
        a.key_size = Some(0);
    });
    assert!(matches!(
        vol.unlock(b"pw", None),
        Err(Error::UnsupportedCipher { .. })
    ));
    assert!(matches!(
        vol.unlock(b"pw", Some(0)),
        Err(Error::UnsupportedCipher { .. })
    ));
    // Ciphers sealvol does not implement are refused too, naming the part.
    let mut vol = rewrite(vol, |h| {
        let a = &mut h.metadata.keyslots.get_mut(&0).unwrap().area;
        a.encryption = Some("camellia-xts-plain64".into());
        a.key_size = Some(64);
    });
    assert!(matches!(
        vol.unlock(b"pw", None),
        Err(Error::UnsupportedCipher {
            part: sealvol_crypto::spec::CipherPart::Cipher,
            ..
        })
    ));
}

#[test]
fn segment_with_integrity_or_bad_stripes_is_refused() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        h.metadata
            .keyslots
            .get_mut(&0)
            .unwrap()
            .af
            .as_mut()
            .unwrap()
            .stripes = 3999;
    });
    assert!(matches!(vol.unlock(b"pw", Some(0)), Err(Error::Invalid(_))));
    let vol = rewrite(vol, |h| {
        h.metadata.segments.get_mut(&0).unwrap().integrity = Some(
            json!({"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}),
        );
    });
    assert!(matches!(
        vol.data_segment(),
        Err(Error::UnsupportedCipher { .. })
    ));
}

#[test]
fn excessive_argon2_cost_is_refused_before_deriving() {
    let vk = SecretBytes::random(64).unwrap();
    // Beyond the default KdfLimits: refused by the limit, before the format's own bounds.
    let mut vol = rewrite(volume(&vk), |h| {
        h.metadata.keyslots.get_mut(&0).unwrap().kdf = Some(Kdf::Argon2 {
            variant: sealvol_crypto::kdf::Argon2Variant::Argon2id,
            time: 4,
            memory: u32::MAX,
            cpus: 1,
            salt: vec![0; 32],
        });
    });
    assert!(matches!(
        vol.unlock(b"pw", Some(0)),
        Err(Error::KdfOverLimit { .. })
    ));
    // Outside cryptsetup's own bounds even with no limit.
    vol.set_kdf_limits(crate::KdfLimits::unlimited());
    assert!(matches!(vol.unlock(b"pw", Some(0)), Err(Error::Invalid(_))));
    for (time, memory, cpus) in [(4, 64, 0), (4, 64, 64), (0, 64, 1)] {
        let mut vol = rewrite(volume(&vk), |h| {
            h.metadata.keyslots.get_mut(&0).unwrap().kdf = Some(Kdf::Argon2 {
                variant: sealvol_crypto::kdf::Argon2Variant::Argon2id,
                time,
                memory,
                cpus,
                salt: vec![0; 32],
            });
        });
        assert!(matches!(vol.unlock(b"pw", Some(0)), Err(Error::Invalid(_))));
    }
}

#[test]
fn format_refuses_bad_options() {
    let vk = SecretBytes::random(64).unwrap();
    let bad = [
        FormatOptions {
            cipher: "cipher_null".into(),
            ..FormatOptions::default()
        },
        FormatOptions {
            cipher: "aes-cbc-essiv:sha256".into(),
            ..FormatOptions::default()
        },
        FormatOptions {
            key_size_bits: 384,
            ..FormatOptions::default()
        },
        FormatOptions {
            key_size_bits: 256,
            ..FormatOptions::default()
        },
        FormatOptions {
            metadata_size: 20000,
            ..FormatOptions::default()
        },
        FormatOptions {
            keyslots_size: Some(4097),
            ..FormatOptions::default()
        },
        FormatOptions {
            keyslots_size: Some(4096),
            ..FormatOptions::default()
        },
        FormatOptions {
            data_offset: Some(16384),
            ..FormatOptions::default()
        },
        FormatOptions {
            data_offset: Some((16 << 20) + 512),
            ..FormatOptions::default()
        },
        FormatOptions {
            label: Some("x".repeat(48)),
            ..FormatOptions::default()
        },
        FormatOptions {
            uuid: Some("not-a-uuid".into()),
            ..FormatOptions::default()
        },
        FormatOptions {
            keyslot: Some(32),
            ..FormatOptions::default()
        },
        FormatOptions {
            digest_iterations: 999,
            ..FormatOptions::default()
        },
        FormatOptions {
            kdf: KdfParams::Pbkdf2 {
                hash: sealvol_crypto::HashAlg::Sha256,
                iterations: 10,
            },
            ..FormatOptions::default()
        },
        FormatOptions {
            kdf: KdfParams::Argon2 {
                variant: sealvol_crypto::kdf::Argon2Variant::Argon2id,
                time: 1,
                memory_kib: 32,
                parallel: 1,
            },
            ..FormatOptions::default()
        },
    ];
    for opts in bad {
        let mut s = Cursor::new(Vec::new());
        let r = Volume::format(&mut s, &opts, &vk, b"pw");
        assert!(r.is_err(), "accepted {opts:?}");
        assert!(s.get_ref().is_empty(), "wrote to disk for {opts:?}");
    }
}

/// Issue 9: a data segment at offset 0 (legal only for a detached header) is refused when the
/// header is attached, naming both offsets; detached it is used.
#[test]
fn data_at_offset_zero_is_refused_attached() {
    let vk = SecretBytes::random(64).unwrap();
    let vol = rewrite(volume(&vk), |h| {
        h.metadata.segments.get_mut(&0).unwrap().offset = 0;
    });
    let end = vol.header_area_len();
    let e = vol
        .data_segment_for(crate::HeaderPlacement::Attached)
        .unwrap_err();
    assert!(
        matches!(e, Error::DataOverlapsHeader { data_offset: 0, header_end } if header_end == end),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!("ends at byte {end}")),
        "{e}"
    );
    assert_eq!(
        vol.data_segment_for(crate::HeaderPlacement::Detached)
            .unwrap()
            .offset,
        0
    );
    let vol = volume(&vk);
    let seg = vol
        .data_segment_for(crate::HeaderPlacement::Attached)
        .unwrap();
    assert!(seg.offset >= vol.header_area_len());
}

/// Issue 9: hostile KDF costs (2^32 - 1 PBKDF2 iterations or Argon2 passes, 4 GiB of Argon2
/// memory, a costly digest) are refused at once, before any derivation, naming the object
/// and the option that raises the limit; within a raised limit the volume opens.
#[test]
fn hostile_kdf_costs_are_refused_at_once() {
    use sealvol_crypto::kdf::Argon2Variant;
    let vk = SecretBytes::random(64).unwrap();
    let argon = |time, memory| Kdf::Argon2 {
        variant: Argon2Variant::Argon2id,
        time,
        memory,
        cpus: 1,
        salt: vec![0; 32],
    };
    let pbkdf2 = |iterations| Kdf::Pbkdf2 {
        hash: "sha256".into(),
        iterations,
        salt: vec![0; 32],
    };
    for (kdf, option) in [
        (pbkdf2(u32::MAX), "--kdf-max-iterations"),
        (argon(u32::MAX, 1 << 20), "--kdf-max-passes"),
        (argon(4, 4 << 20), "--kdf-max-memory"),
    ] {
        let mut vol = rewrite(volume(&vk), |h| {
            h.metadata.keyslots.get_mut(&0).unwrap().kdf = Some(kdf.clone());
        });
        for slot in [None, Some(0)] {
            let t = std::time::Instant::now();
            let e = vol.unlock(b"pw", slot).unwrap_err();
            assert!(t.elapsed() < std::time::Duration::from_millis(200));
            match &e {
                Error::KdfOverLimit {
                    object, option: o, ..
                } => {
                    assert_eq!(object, "keyslot 0");
                    assert_eq!(*o, option);
                }
                other => panic!("expected KdfOverLimit, got {other:?}"),
            }
        }
    }
    let mut vol = rewrite(volume(&vk), |h| {
        h.metadata.digests.get_mut(&0).unwrap().iterations = u32::MAX;
    });
    let e = vol.unlock(b"pw", None).unwrap_err();
    assert!(
        matches!(&e, Error::KdfOverLimit { object, .. } if object == "digest 0"),
        "{e:?}"
    );
    assert!(matches!(
        vol.verify_volume_key(&vk),
        Err(Error::KdfOverLimit { .. })
    ));
    // A header over a tightened limit opens once the limit is raised again.
    let mut vol = volume(&vk);
    vol.set_kdf_limits(crate::KdfLimits {
        max_pbkdf2_iterations: 999,
        ..Default::default()
    });
    assert!(matches!(
        vol.unlock(b"pw", None),
        Err(Error::KdfOverLimit { .. })
    ));
    vol.set_kdf_limits(crate::KdfLimits::default());
    assert!(vol
        .unlock(b"pw", None)
        .unwrap()
        .volume_key
        .ct_eq(vk.expose()));
}

#[test]
fn kdf_params_render_as_the_cli_names_them() {
    let p = KdfParams::pbkdf2_min();
    assert_eq!(p.to_string(), "pbkdf2-sha256, 1000 iterations");
    assert_eq!(
        serde_json::to_value(p).unwrap(),
        json!({"type": "pbkdf2", "hash": "sha256", "iterations": 1000})
    );
    let a = KdfParams::Argon2 {
        variant: Argon2Variant::Argon2id,
        time: 4,
        memory_kib: 65536,
        parallel: 2,
    };
    assert_eq!(
        a.to_string(),
        "argon2id, time 4, memory 65536 KiB, 2 threads"
    );
    assert_eq!(
        serde_json::to_value(a).unwrap(),
        json!({"type": "argon2id", "time": 4, "memory": 65536, "cpus": 2})
    );
}

/// Keyslots of a volume in any cipher: the first one's area and every added one's use the
/// data segment's cipher and key size (cryptsetup `crypt_keyslot_get_encryption`), and each
/// opens with its own passphrase.
#[test]
fn keyslots_use_the_segment_cipher() {
    for (cipher, key_len) in [
        ("serpent-cbc-essiv:sha256", 32),
        ("twofish-xts-plain", 48),
        ("aes-cbc-plain", 16),
        ("xchacha20,aes-adiantum-plain64", 32),
    ] {
        let vk = SecretBytes::random(key_len).unwrap();
        let opts = FormatOptions {
            cipher: cipher.into(),
            key_size_bits: key_len as u32 * 8,
            ..small_opts()
        };
        let mut vol = Volume::format(Cursor::new(Vec::new()), &opts, &vk, b"pw").unwrap();
        let id = vol
            .add_keyslot(&vk, b"second", &KdfParams::pbkdf2_min(), None)
            .unwrap();
        let md = &vol.header().metadata;
        for k in [0, id] {
            let area = &md.keyslots[&k].area;
            assert_eq!(
                area.encryption.as_deref(),
                Some(cipher),
                "{cipher} slot {k}"
            );
            assert_eq!(area.key_size, Some(key_len as u32), "{cipher} slot {k}");
        }
        for (pw, slot) in [(&b"pw"[..], 0), (&b"second"[..], id)] {
            let u = vol.unlock(pw, None).unwrap();
            assert_eq!(u.keyslot, slot);
            assert!(u.volume_key.ct_eq(vk.expose()), "{cipher}");
        }
        assert!(matches!(vol.unlock(b"wrong", None), Err(Error::WrongKey)));
    }
}
