//! Validation refusals, one small test per rule, over hand-made header copies.

use super::binary::{self, BinaryHeader};
use super::header::{write_header, Header};
use super::*;
use crate::Error;
use sealvol_crypto::SecretBytes;
use serde_json::{json, Value};
use std::io::Cursor;

/// A header cryptsetup 2.6 wrote (`luksFormat --pbkdf pbkdf2 --pbkdf-force-iterations 1000`).
pub(super) const BASE: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"IiObm2876HKnAW/rVjizgmqxlv21NO2r3oy8g/FCVsw="}}},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"Ia/s7TC4O+HPHa4Cx7kVkeFxlP72rfcy+llJxnKjbxw=","digest":"Gj20BJ3U29gxgiPNWz+VFjcOQ2FqKqaKeosJwlS3xhw="}},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;

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

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    f(&mut v);
    v
}

#[path = "rules_tests.rs"]
mod rules_tests;

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

/// Found by the `luks2_metadata` fuzzer: an integer past 2^64 in a field sealvol keeps
/// value for value (here an unknown digest's `iterations`) is a float to the JSON parser; the
/// text sealvol writes back must parse to the same value, which needs correctly rounded
/// float parsing (serde_json's `float_roundtrip`).
#[test]
fn huge_numbers_in_kept_fields_survive_a_write_back() {
    for n in [
        "10444444444444444444444444444400",
        "18446744073709551616",
        "1e308",
        "-2.5e-300",
    ] {
        let text = BASE.replacen(
            r#""type":"pbkdf2","keyslots""#,
            &format!(r#""type":"0bkdf2","n":{n},"keyslots""#),
            1,
        );
        let h = parse_header_bytes(&copy_raw(text.as_bytes(), 16384)).unwrap();
        let again = h.metadata().to_json_string();
        let h2 = parse_header_bytes(&copy_raw(again.as_bytes(), 16384)).unwrap();
        assert_eq!(h2.metadata(), h.metadata(), "{n} written back as {again}");
    }
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
fn unknown_requirement_refuses_opening_and_writing_but_not_reading() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        h.metadata.config.requirements = Some(Requirements {
            mandatory: Some(vec!["future-feature".into()]),
            extra: Default::default(),
        });
    });
    let ro = vol.read_only().unwrap();
    assert!(ro.contains("\"future-feature\""), "{ro}");
    let blocked = |e: Result<_>| match e {
        Err(Error::Blocked(Blocker::UnknownRequirement(f))) => assert_eq!(f, "future-feature"),
        Err(e) => panic!("expected the requirement to block, got {e:?}"),
        Ok(_) => panic!("expected the requirement to block"),
    };
    blocked(vol.unlock(b"pw", None).map(|_| ()));
    blocked(vol.data_segment().map(|_| ()));
    let seq = vol.header().seqid();
    let kdf = KdfParams::pbkdf2_min();
    blocked(vol.add_keyslot(&vk, b"x", &kdf, None).map(|_| ()));
    blocked(vol.remove_keyslot(0));
    blocked(vol.change_key(b"pw", b"x", None, None).map(|_| ()));
    blocked(
        vol.add_token(json!({"type": "t", "keyslots": []}), None)
            .map(|_| ()),
    );
    blocked(vol.erase());
    assert_eq!(vol.header().seqid(), seq);
    // Known flags of cryptsetup get their own explanation.
    for (flag, what) in [
        ("online-reencrypt-v2", "cryptsetup reencrypt --resume-only"),
        ("offline-reencrypt", "offline reencryption"),
        ("opal", "OPAL"),
        ("inline-hw-tags", "inline hardware integrity"),
    ] {
        let mut h = vol.header().clone();
        h.metadata.config.requirements = Some(Requirements {
            mandatory: Some(vec![flag.into()]),
            extra: Default::default(),
        });
        let why = super::state::blockers(&h.metadata)[0].to_string();
        assert!(why.contains(what), "{flag}: {why}");
    }
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

#[track_caller]
fn unusable_slot<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
    match r {
        Err(Error::UnusableKeyslot { reason, .. }) => {
            assert!(
                reason.to_string().contains(needle),
                "{reason:?} does not mention {needle:?}"
            )
        }
        other => panic!("expected an unusable keyslot ({needle}), got {other:?}"),
    }
}

#[test]
fn cipher_null_keyslot_is_refused() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        let a = &mut h.metadata.keyslots.get_mut(&0).unwrap().area;
        a.encryption = Some("cipher_null".into());
        a.key_size = Some(0);
    });
    // The keyslot is unusable, and the reason is the crypto layer's refusal of the cipher.
    unusable_slot(vol.unlock(b"pw", None), "cipher_null");
    unusable_slot(vol.unlock(b"pw", Some(0)), "cipher_null");
    for r in [vol.unlock(b"pw", None), vol.unlock(b"pw", Some(0))] {
        assert!(
            matches!(&r, Err(Error::UnusableKeyslot { reason, .. })
                if matches!(**reason, Error::UnsupportedCipher { .. })),
            "{r:?}"
        );
    }
    // Ciphers sealvol does not implement are refused too, naming the part.
    let mut vol = rewrite(vol, |h| {
        let a = &mut h.metadata.keyslots.get_mut(&0).unwrap().area;
        a.encryption = Some("camellia-xts-plain64".into());
        a.key_size = Some(64);
    });
    unusable_slot(vol.unlock(b"pw", None), "camellia-xts-plain64");
    let r = vol.unlock(b"pw", None);
    assert!(
        matches!(&r, Err(Error::UnusableKeyslot { reason, .. })
        if matches!(**reason, Error::UnsupportedCipher {
            part: sealvol_crypto::spec::CipherPart::Cipher,
            ..
        })),
        "{r:?}"
    );
}

/// Partial usability meets `CipherSpec`: in a serpent volume, a keyslot whose area cipher
/// sealvol does not implement is unusable (the reason is `UnsupportedCipher` naming the part)
/// while the others unlock; a segment in such a cipher makes only the data unusable: the
/// header still opens and dumps, naming both.
#[test]
fn a_cipher_sealvol_lacks_makes_only_that_object_unusable() {
    use sealvol_crypto::spec::CipherPart;
    let vk = SecretBytes::random(32).unwrap();
    let opts = FormatOptions {
        cipher: "serpent-cbc-essiv:sha256".into(),
        key_size_bits: 256,
        ..small_opts()
    };
    let mut vol = Volume::format(Cursor::new(Vec::new()), &opts, &vk, b"pw").unwrap();
    let id = vol
        .add_keyslot(&vk, b"second", &KdfParams::pbkdf2_min(), None)
        .unwrap();
    let mut vol = rewrite(vol, |h| {
        h.metadata.keyslots.get_mut(&id).unwrap().area.encryption = Some("serpent-cbc-lmk".into());
    });
    assert!(vol
        .unlock(b"pw", None)
        .unwrap()
        .volume_key
        .ct_eq(vk.expose()));
    let r = vol.unlock(b"second", Some(id));
    assert!(
        matches!(&r, Err(Error::UnusableKeyslot { id: i, reason })
            if *i == id && matches!(**reason, Error::UnsupportedCipher { part: CipherPart::Iv, .. })),
        "{r:?}"
    );
    // Only keyslot `id` opens with "second", and it is unusable: its reason, not WrongKey.
    let r = vol.unlock(b"second", None);
    assert!(matches!(r, Err(Error::WrongKey)), "{r:?}");
    let any = crate::AnyVolume::Luks2(vol);
    let doc = any.dump_json();
    let why = doc["unusable"]["keyslots"][id.to_string()]
        .as_str()
        .unwrap();
    assert!(why.contains("IV generator \"lmk\""), "{why}");
    assert!(doc["unusable"]["keyslots"].get("0").is_none());
    assert!(doc["unusable"]["data_segment"].is_null());
    let crate::AnyVolume::Luks2(vol) = any else {
        unreachable!()
    };
    // The segment in a cipher sealvol lacks: the header opens, the data is unusable.
    let mut vol = rewrite(vol, |h| {
        h.metadata.segments.get_mut(&0).unwrap().encryption = Some("camellia-cbc-plain64".into());
    });
    assert!(vol.blockers().is_empty());
    assert!(matches!(
        vol.data_segment(),
        Err(Error::UnsupportedCipher {
            part: CipherPart::Cipher,
            ..
        })
    ));
    assert!(matches!(
        vol.unlock(b"pw", None),
        Err(Error::UnsupportedCipher { .. })
    ));
    let doc = crate::AnyVolume::Luks2(vol).dump_json();
    let why = doc["unusable"]["data_segment"].as_str().unwrap();
    assert!(why.contains("camellia"), "{why}");
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
    unusable_slot(vol.unlock(b"pw", Some(0)), "3999 AF stripes");
    let vol = rewrite(vol, |h| {
        h.metadata.segments.get_mut(&0).unwrap().integrity = Some(
            json!({"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}),
        );
    });
    assert!(matches!(
        vol.data_segment(),
        Err(Error::Blocked(Blocker::Integrity { segment: 0 }))
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
    unusable_slot(vol.unlock(b"pw", Some(0)), "Argon2 cost");
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
        unusable_slot(vol.unlock(b"pw", Some(0)), "Argon2 cost");
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
        h.metadata
            .digests
            .get_mut(&0)
            .unwrap()
            .params
            .as_mut()
            .unwrap()
            .iterations = u32::MAX;
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

/// Keyslot 1: a luks2 keyslot whose KDF sealvol does not implement, after keyslot 0.
fn add_scrypt_keyslot(h: &mut Header) {
    let mut k = h.metadata.keyslots[&0].clone();
    k.area.offset += k.area.size;
    k.kdf = None;
    k.extra.insert(
        "kdf".into(),
        json!({"type": "scrypt", "n": 1048576, "salt": "c2FsdA=="}),
    );
    h.metadata.keyslots.insert(1, k);
    h.metadata.digests.get_mut(&0).unwrap().keyslots.push(1);
}

#[test]
fn an_unknown_kdf_leaves_the_rest_usable_dumped_and_preserved() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), add_scrypt_keyslot);
    let foreign = vol.header().metadata().to_json()["keyslots"]["1"].clone();
    // Keyslot 0 still unlocks; keyslot 1 names what is missing.
    assert!(vol
        .unlock(b"pw", None)
        .unwrap()
        .volume_key
        .ct_eq(vk.expose()));
    match vol.unlock(b"pw", Some(1)) {
        Err(e @ Error::UnusableKeyslot { id: 1, .. }) => {
            assert!(e.to_string().contains("scrypt"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Dump (JSON and text) lists it and why.
    let any = crate::AnyVolume::Luks2(vol);
    let doc = any.dump_json();
    let why = doc["unusable"]["keyslots"]["1"].as_str().unwrap();
    assert!(why.contains("scrypt"), "{why}");
    assert!(doc["unusable"]["keyslots"].get("0").is_none());
    let text = crate::dump::text(&doc);
    assert!(
        text.lines()
            .any(|l| l.starts_with("\tUnusable:") && l.contains("scrypt")),
        "{text}"
    );
    // Writing the header back keeps the unknown keyslot value for value.
    let crate::AnyVolume::Luks2(mut vol) = any else {
        unreachable!()
    };
    let id = vol
        .add_keyslot(&vk, b"second", &KdfParams::pbkdf2_min(), None)
        .unwrap();
    assert_eq!(id, 2);
    let vol = Volume::open(vol.into_storage()).unwrap();
    assert_eq!(vol.header().metadata().to_json()["keyslots"]["1"], foreign);
    let mut vol = vol;
    assert_eq!(vol.unlock(b"second", None).unwrap().keyslot, 2);
}

#[test]
fn only_unusable_keyslots_give_the_reason_not_wrong_key() {
    let vk = SecretBytes::random(64).unwrap();
    let mut vol = rewrite(volume(&vk), |h| {
        add_scrypt_keyslot(h);
        h.metadata.keyslots.get_mut(&0).unwrap().priority = Some(0);
    });
    // Keyslot 0 is "ignore" (only tried when named), keyslot 1 unusable.
    assert!(matches!(
        vol.unlock(b"pw", None),
        Err(Error::UnusableKeyslot { id: 1, .. })
    ));
    assert_eq!(vol.unlock(b"pw", Some(0)).unwrap().keyslot, 0);
}

#[test]
fn checksum_algorithm_names_resolve_as_openssl_resolves_them() {
    // cryptsetup (OpenSSL backend) reads "SHA256" and "sha2-256" as sha256.
    for name in ["SHA256", "sha2-256", "Sha-256"] {
        let mut b = copy_raw(BASE.as_bytes(), 16384);
        b[72..104].fill(0);
        b[72..72 + name.len()].copy_from_slice(name.as_bytes());
        let c = binary::checksum(name, &b).unwrap();
        binary::set_checksum(&mut b, &c);
        parse_header_bytes(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
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
