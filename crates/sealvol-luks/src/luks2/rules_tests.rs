//! One test per cryptsetup metadata rule ([`super::validate::RULES`]), named `rule_<name>`:
//! each shows a header the rule refuses (the error names the rule) and, where cryptsetup is
//! more lenient than a first guess, a neighbouring header it accepts.

use super::*;
use crate::luks2::validate::*;
use crate::luks2::validate::{Rule, CANONICAL_ID, RULES};

#[track_caller]
fn refused_by(v: &Value, rule: Rule) {
    match parse(v) {
        Err(Error::Invalid(msg)) => assert!(
            msg.contains(&format!("rule {}:", rule.name)),
            "refused, but not by rule {}: {msg}",
            rule.name
        ),
        Err(e) => panic!("expected rule {} to refuse, got {e:?}", rule.name),
        Ok(_) => panic!("rule {} should refuse {v}", rule.name),
    }
}

#[track_caller]
fn accepted(v: &Value) -> Header {
    parse(v).unwrap_or_else(|e| panic!("should be accepted: {e}\n{v}"))
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    edit(f)
}

/// A second luks2 keyslot after keyslot 0's area, listed by digest 0.
fn two_keyslots(v: &mut Value) {
    v["keyslots"]["1"] = second_keyslot(&(32768 + 258048).to_string());
    v["digests"]["0"]["keyslots"] = json!(["0", "1"]);
}

/// A keyslot of a type cryptsetup has no handler for.
fn foreign_keyslot(v: &mut Value) {
    v["keyslots"]["1"] = json!({"type": "future", "key_size": 64,
        "area": {"type": "sealed", "offset": "290816", "size": "4096"}});
}

#[test]
fn every_rule_has_a_test_and_a_row_in_the_docs() {
    let src = include_str!("rules_tests.rs");
    let docs = include_str!("../../../../docs/luks-validation.md");
    for r in RULES.iter().chain([&CANONICAL_ID]) {
        let f = format!("fn rule_{}()", r.name.replace('-', "_"));
        assert!(src.contains(&f), "no test {f}");
        assert!(
            docs.contains(&format!("`{}`", r.name)),
            "docs/luks-validation.md has no row for {}",
            r.name
        );
    }
}

#[test]
fn rule_id_canonical() {
    for id in ["01", "", "4294967296"] {
        let v = with(|v| {
            let k = v["keyslots"]["0"].clone();
            v["keyslots"][id] = json!({"type": "x", "key_size": 1,
                "area": {"type": "raw", "offset": "290816", "size": "4096"}});
            let _ = k;
        });
        refused_by_text(&v, CANONICAL_ID.name);
    }
    // Large canonical ids are fine (cryptsetup never reaches keyslot 40 either).
    let v = with(|v| {
        v["keyslots"]["40"] = json!({"type": "x", "key_size": 1,
            "area": {"type": "raw", "offset": "290816", "size": "4096"}});
        v["tokens"]["99"] = json!({"type": "t", "keyslots": ["40"]});
    });
    accepted(&v);
}

#[track_caller]
fn refused_by_text(v: &Value, name: &str) {
    let e = parse(v).expect_err("should be refused");
    assert!(e.to_string().contains(&format!("rule {name}:")), "{e}");
}

#[test]
fn rule_config_object() {
    refused_by(&with(|v| v["config"] = json!([])), REQ_CONFIG);
}

#[test]
fn rule_requirements_object() {
    refused_by(
        &with(|v| v["config"]["requirements"] = json!(["x"])),
        REQ_OBJECT,
    );
    // An empty requirements object (older cryptsetup left one behind) is fine.
    accepted(&with(|v| v["config"]["requirements"] = json!({})));
}

#[test]
fn rule_requirements_mandatory_strings() {
    refused_by(
        &with(|v| v["config"]["requirements"] = json!({"mandatory": [1]})),
        REQ_MANDATORY,
    );
    refused_by(
        &with(|v| v["config"]["requirements"] = json!({"mandatory": "x"})),
        REQ_MANDATORY,
    );
    accepted(&with(|v| {
        v["config"]["requirements"] = json!({"mandatory": ["future"], "optional": [1]})
    }));
}

#[test]
fn rule_requirements_one_reencrypt_flag() {
    refused_by(
        &with(|v| {
            v["config"]["requirements"] =
                json!({"mandatory": ["online-reencrypt", "online-reencrypt-v9"]})
        }),
        REQ_ONE_REENCRYPT,
    );
}

#[test]
fn rule_tokens_object() {
    refused_by(&with(|v| v["tokens"] = json!([])), TOKENS_OBJECT);
    refused_by(
        &with(|v| {
            v.as_object_mut().unwrap().remove("tokens");
        }),
        TOKENS_OBJECT,
    );
}

#[test]
fn rule_token_id_numbered() {
    refused_by(
        &with(|v| v["tokens"]["a"] = json!({"type": "t", "keyslots": []})),
        TOKEN_ID,
    );
}

#[test]
fn rule_token_type() {
    refused_by(
        &with(|v| v["tokens"]["0"] = json!({"type": "", "keyslots": []})),
        TOKEN_TYPE,
    );
    refused_by(&with(|v| v["tokens"]["0"] = json!(7)), TOKEN_TYPE);
    // Any token type is accepted: cryptsetup only loads a plugin when the token is used.
    accepted(&with(|v| {
        v["tokens"]["0"] = json!({"type": "systemd-future", "keyslots": ["0"], "x": {}})
    }));
}

#[test]
fn rule_token_keyslots() {
    refused_by(
        &with(|v| v["tokens"]["0"] = json!({"type": "t", "keyslots": ["3"]})),
        TOKEN_KEYSLOTS,
    );
    refused_by(
        &with(|v| v["tokens"]["0"] = json!({"type": "t", "keyslots": [0]})),
        TOKEN_KEYSLOTS,
    );
    refused_by(
        &with(|v| v["tokens"]["0"] = json!({"type": "t"})),
        TOKEN_KEYSLOTS,
    );
}

#[test]
fn rule_digests_object() {
    refused_by(&with(|v| v["digests"] = json!(null)), DIGESTS_OBJECT);
}

#[test]
fn rule_digest_id_numbered() {
    refused_by(
        &with(|v| v["digests"]["x"] = json!({"type": "d", "keyslots": [], "segments": []})),
        DIGEST_ID,
    );
}

#[test]
fn rule_digest_type() {
    refused_by(
        &with(|v| v["digests"]["0"]["type"] = json!("")),
        DIGEST_TYPE,
    );
    // Unknown digest types are accepted (and open nothing); a second digest beyond
    // cryptsetup's 8 too.
    let h = accepted(&with(|v| {
        v["digests"]["9"] = json!({"type": "argon2-digest", "keyslots": [], "segments": []})
    }));
    assert!(h.metadata().digests[&9].unusable().is_some());
}

#[test]
fn rule_digest_keyslots() {
    refused_by(
        &with(|v| v["digests"]["0"]["keyslots"] = json!(["0", "1"])),
        DIGEST_KEYSLOTS,
    );
    refused_by(
        &with(|v| {
            v["digests"]["0"]
                .as_object_mut()
                .unwrap()
                .remove("keyslots");
        }),
        DIGEST_KEYSLOTS,
    );
}

#[test]
fn rule_digest_segments() {
    refused_by(
        &with(|v| v["digests"]["0"]["segments"] = json!(["0", "1"])),
        DIGEST_SEGMENTS,
    );
    refused_by(
        &with(|v| v["digests"]["0"]["segments"] = json!("0")),
        DIGEST_SEGMENTS,
    );
}

#[test]
fn rule_segments_object() {
    refused_by(
        &with(|v| {
            v["segments"] = json!({});
            v["digests"]["0"]["segments"] = json!([]);
        }),
        SEGMENTS_OBJECT,
    );
}

#[test]
fn rule_segment_id_numbered() {
    refused_by(
        &with(|v| v["segments"]["z"] = json!({"type": "linear", "offset": "0", "size": "512"})),
        SEGMENT_ID,
    );
}

#[test]
fn rule_segment_type_offset_size() {
    refused_by(
        &with(|v| v["segments"]["0"]["type"] = json!("")),
        SEGMENT_FIELDS,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["offset"] = json!(16777216)),
        SEGMENT_FIELDS,
    );
}

#[test]
fn rule_segment_offset() {
    refused_by(
        &with(|v| v["segments"]["0"]["offset"] = json!("+16777216")),
        SEGMENT_OFFSET,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["offset"] = json!("16777217")),
        SEGMENT_OFFSET,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["offset"] = json!("18446744073709551616")),
        SEGMENT_OFFSET,
    );
    // Leading zeros are digits: accepted.
    accepted(&with(|v| v["segments"]["0"]["offset"] = json!("016777216")));
}

#[test]
fn rule_segment_size() {
    refused_by(
        &with(|v| v["segments"]["0"]["size"] = json!("0")),
        SEGMENT_SIZE,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["size"] = json!("1000")),
        SEGMENT_SIZE,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["size"] = json!("Dynamic")),
        SEGMENT_SIZE,
    );
}

#[test]
fn rule_segment_flags() {
    refused_by(
        &with(|v| v["segments"]["0"]["flags"] = json!("x")),
        SEGMENT_FLAGS,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["flags"] = json!([1])),
        SEGMENT_FLAGS,
    );
    accepted(&with(|v| {
        v["segments"]["0"]["flags"] = json!(["future-flag"])
    }));
}

fn linear(offset: &str, size: &str) -> Value {
    json!({"type": "linear", "offset": offset, "size": size})
}

#[test]
fn rule_segment_backup_last() {
    refused_by(
        &with(|v| {
            v["segments"]["0"]["size"] = json!("1048576");
            let mut b = linear("0", "512");
            b["flags"] = json!(["backup-x"]);
            v["segments"]["1"] = b;
            // Segment 2 is regular but comes after backup 1.
            v["segments"]["2"] = linear("33554432", "512");
        }),
        SEGMENT_BACKUP_ORDER,
    );
}

#[test]
fn rule_segment_crypt_fields() {
    refused_by(
        &with(|v| v["segments"]["0"]["encryption"] = json!("")),
        SEGMENT_CRYPT_FIELDS,
    );
    refused_by(
        &with(|v| {
            v["segments"]["0"]
                .as_object_mut()
                .unwrap()
                .remove("iv_tweak");
        }),
        SEGMENT_CRYPT_FIELDS,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["sector_size"] = json!("4096")),
        SEGMENT_CRYPT_FIELDS,
    );
    // Any cipher string is accepted (cryptsetup checks none at load): one sealvol
    // implements, and one it does not, which makes the segment unusable
    // (tests::a_cipher_sealvol_lacks_makes_only_that_object_unusable).
    accepted(&with(|v| {
        v["segments"]["0"]["encryption"] = json!("serpent-cbc-essiv:sha256")
    }));
    accepted(&with(|v| {
        v["segments"]["0"]["encryption"] = json!("camellia-xts-plain64")
    }));
}

#[test]
fn rule_segment_crypt_integrity() {
    refused_by(
        &with(|v| v["segments"]["0"]["integrity"] = json!({"type": "hmac(sha256)"})),
        SEGMENT_CRYPT_INTEGRITY,
    );
    accepted(&with(
        |v| v["segments"]["0"]["integrity"] = json!({"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}),
    ));
}

#[test]
fn rule_segment_crypt_sector_size() {
    for bad in [json!(0), json!(1000), json!(-512), json!(4294967808u64)] {
        refused_by(
            &with(|v| v["segments"]["0"]["sector_size"] = bad),
            SEGMENT_CRYPT_SECTOR,
        );
    }
    // A multiple of 512 that is not a power of two passes validation (dm-crypt refuses it
    // later): accepted, the segment unusable.
    accepted(&with(|v| v["segments"]["0"]["sector_size"] = json!(1536)));
}

#[test]
fn rule_segment_crypt_iv_tweak() {
    refused_by(
        &with(|v| v["segments"]["0"]["iv_tweak"] = json!("-1")),
        SEGMENT_CRYPT_IV,
    );
    refused_by(
        &with(|v| v["segments"]["0"]["iv_tweak"] = json!("0x10")),
        SEGMENT_CRYPT_IV,
    );
}

#[test]
fn rule_segment_crypt_size_aligned() {
    refused_by(
        &with(|v| v["segments"]["0"]["size"] = json!("1536")),
        SEGMENT_CRYPT_ALIGNED,
    );
}

#[test]
fn rule_segment_crypt_digest() {
    refused_by(
        &with(|v| v["digests"]["0"]["segments"] = json!([])),
        SEGMENT_CRYPT_DIGEST,
    );
}

#[test]
fn rule_segment_opal() {
    let opal = |v: &mut Value| {
        let s = &mut v["segments"]["0"];
        s["type"] = json!("hw-opal-crypt");
        s["size"] = json!("1048576");
        s["opal_segment_number"] = json!(1);
        s["opal_key_size"] = json!(32);
        s["opal_segment_size"] = json!("1048576");
    };
    let h = accepted(&with(opal));
    assert!(matches!(
        super::state::blockers(h.metadata()).first(),
        Some(Blocker::Opal { .. })
    ));
    refused_by(
        &with(|v| {
            opal(v);
            v["segments"]["0"]["opal_segment_size"] = json!("512");
        }),
        SEGMENT_OPAL,
    );
    refused_by(
        &with(|v| {
            opal(v);
            v["segments"]["0"]["size"] = json!("dynamic");
        }),
        SEGMENT_OPAL,
    );
}

#[test]
fn rule_segment_regular_exists() {
    refused_by(
        &with(|v| v["segments"]["0"]["flags"] = json!(["backup-final"])),
        SEGMENT_REGULAR,
    );
}

#[test]
fn rule_segment_ids_contiguous() {
    refused_by(
        &with(|v| {
            v["segments"]["0"]["size"] = json!("1048576");
            v["segments"]["2"] = linear("33554432", "512");
        }),
        SEGMENT_GAPS,
    );
}

#[test]
fn rule_segment_dynamic_last() {
    refused_by(
        &with(|v| v["segments"]["1"] = linear("33554432", "512")),
        SEGMENT_DYNAMIC_LAST,
    );
}

#[test]
fn rule_segment_no_overlap() {
    refused_by(
        &with(|v| {
            v["segments"]["0"]["size"] = json!("1048576");
            v["segments"]["1"] = linear("17301504", "dynamic");
            v["segments"]["1"]["offset"] = json!("17039360");
        }),
        SEGMENT_OVERLAP,
    );
    // With a single segment cryptsetup does not check offset + size for overflow.
    accepted(&with(|v| {
        v["segments"]["0"]["size"] = json!("18446744073709547520")
    }));
}

#[test]
fn rule_segment_reencrypt_backups() {
    refused_by(
        &with(|v| {
            v["config"]["requirements"] = json!({"mandatory": ["online-reencrypt-v2"]});
        }),
        SEGMENT_REENCRYPT_BACKUPS,
    );
}

#[test]
fn rule_keyslots_object() {
    refused_by(&with(|v| v["keyslots"] = json!("")), DIGESTS_OBJECT);
    refused_by(
        &with(|v| {
            v["keyslots"] = json!([]);
            v["digests"] = json!({});
            v["segments"]["0"]["type"] = json!("linear");
        }),
        DIGESTS_OBJECT,
    );
    // The rule itself, once digests have passed: no keyslots object at all is caught
    // by the digest rule first in cryptsetup's order; its own refusal text is used when
    // keyslots is an object but a later reader expects one.
    assert_eq!(KEYSLOTS_OBJECT.cryptsetup, "hdr_validate_keyslots");
}

#[test]
fn rule_keyslot_id_numbered() {
    refused_by(
        &with(|v| {
            v["keyslots"]["k"] = json!({"type": "x", "key_size": 1,
                "area": {"type": "raw", "offset": "290816", "size": "4096"}});
        }),
        KEYSLOT_ID,
    );
}

#[test]
fn rule_keyslot_type_key_size() {
    refused_by(
        &with(|v| v["keyslots"]["0"]["key_size"] = json!(-1)),
        KEYSLOT_TYPE,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["key_size"] = json!(64.0)),
        KEYSLOT_TYPE,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["type"] = json!("")),
        KEYSLOT_TYPE,
    );
}

#[test]
fn rule_config_json_size() {
    refused_by(
        &with(|v| v["config"]["json_size"] = json!("12289")),
        CONFIG_JSON_SIZE,
    );
    refused_by(
        &with(|v| v["config"]["json_size"] = json!(12288)),
        CONFIG_JSON_SIZE,
    );
    // strtoull forms cryptsetup takes: a sign, leading white space.
    let h = accepted(&with(|v| v["config"]["json_size"] = json!(" +12288")));
    assert_eq!(h.metadata().config.json_size, 12288);
}

#[test]
fn rule_config_keyslots_size() {
    refused_by(
        &with(|v| v["config"]["keyslots_size"] = json!("16744449")),
        CONFIG_KEYSLOTS_SIZE,
    );
    refused_by(
        &with(|v| v["config"]["keyslots_size"] = json!("268435456")),
        CONFIG_KEYSLOTS_SIZE,
    );
}

#[test]
fn rule_config_keyslots_before_data() {
    refused_by(
        &with(|v| v["config"]["keyslots_size"] = json!("16777216")),
        CONFIG_DATA_OFFSET,
    );
    // A detached header (data at 0) may have any keyslots size up to the maximum.
    accepted(&with(|v| {
        v["segments"]["0"]["offset"] = json!("0");
        v["config"]["keyslots_size"] = json!("134217728");
    }));
}

#[test]
fn rule_config_flags() {
    refused_by(
        &with(|v| v["config"]["flags"] = json!([true])),
        CONFIG_FLAGS,
    );
    accepted(&with(|v| {
        v["config"]["flags"] = json!(["allow-discards", "future"])
    }));
}

#[test]
fn rule_keyslot_area_fields() {
    refused_by(
        &with(|v| v["keyslots"]["0"]["area"]["offset"] = json!("0x8000")),
        AREA_FIELDS,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["area"]["size"] = json!("99999999999999999999")),
        AREA_FIELDS,
    );
}

#[test]
fn rule_keyslot_area_bounds() {
    refused_by(
        &with(|v| v["keyslots"]["0"]["area"]["offset"] = json!("16384")),
        AREA_BOUNDS,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["area"]["offset"] = json!("16646144")),
        AREA_BOUNDS,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["area"]["size"] = json!("18446744073709551615")),
        AREA_BOUNDS,
    );
    // Areas need not be 512-byte aligned for cryptsetup.
    accepted(&with(|v| {
        v["keyslots"]["0"]["area"]["offset"] = json!("32769")
    }));
}

#[test]
fn rule_keyslot_area_no_overlap() {
    refused_by(
        &with(|v| {
            v["keyslots"]["1"] = second_keyslot("36864");
            v["digests"]["0"]["keyslots"] = json!(["0", "1"]);
        }),
        AREA_OVERLAP,
    );
    accepted(&with(two_keyslots));
}

#[test]
fn rule_json_size_matches() {
    // A 32 KiB json_size in a 16 KiB copy (detached, the keyslot after two 32 KiB copies).
    refused_by(
        &with(|v| {
            v["config"]["json_size"] = json!("28672");
            v["segments"]["0"]["offset"] = json!("0");
            v["keyslots"]["0"]["area"]["offset"] = json!("65536");
        }),
        JSON_SIZE,
    );
}

#[test]
fn rule_luks2_keyslot_objects() {
    refused_by(
        &with(|v| {
            v["keyslots"]["0"].as_object_mut().unwrap().remove("af");
        }),
        LUKS2_KEYSLOT_OBJECTS,
    );
}

#[test]
fn rule_luks2_keyslot_kdf() {
    refused_by(
        &with(|v| {
            v["keyslots"]["0"]["kdf"]
                .as_object_mut()
                .unwrap()
                .remove("hash");
        }),
        LUKS2_KEYSLOT_KDF,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["kdf"]["iterations"] = json!("1000")),
        LUKS2_KEYSLOT_KDF,
    );
    // Extra kdf fields (cryptsetup < 2.0.3 left them) are repaired away, not refused.
    let h = accepted(&with(|v| {
        v["keyslots"]["0"]["kdf"]["time"] = json!(4);
        v["keyslots"]["0"]["kdf"]["memory"] = json!(1024);
    }));
    assert!(h.metadata().keyslots[&0].kdf.is_some());
    // A KDF cryptsetup does not know is accepted; the keyslot is unusable, named.
    let h = accepted(&with(|v| {
        v["keyslots"]["0"]["kdf"] = json!({"type": "scrypt", "n": 16384, "salt": "x"})
    }));
    let why = h.metadata().keyslots[&0].unusable(0).unwrap();
    assert!(why.contains("scrypt"), "{why}");
    // Odd pbkdf2 parameters pass validation too (cryptsetup fails only when unlocking).
    accepted(&with(|v| {
        v["keyslots"]["0"]["kdf"]["iterations"] = json!(-5);
        v["keyslots"]["0"]["kdf"]["salt"] = json!("not base64!");
    }));
}

#[test]
fn rule_luks2_keyslot_af() {
    refused_by(
        &with(|v| v["keyslots"]["0"]["af"]["type"] = json!("luks2")),
        LUKS2_KEYSLOT_AF,
    );
    refused_by(
        &with(|v| v["keyslots"]["0"]["af"]["stripes"] = json!("4000")),
        LUKS2_KEYSLOT_AF,
    );
    accepted(&with(|v| v["keyslots"]["0"]["af"]["stripes"] = json!(-1)));
}

#[test]
fn rule_luks2_keyslot_area_raw() {
    refused_by(
        &with(|v| v["keyslots"]["0"]["area"]["type"] = json!("journal")),
        LUKS2_KEYSLOT_AREA,
    );
    refused_by(
        &with(|v| {
            v["keyslots"]["0"]["area"]
                .as_object_mut()
                .unwrap()
                .remove("encryption");
        }),
        LUKS2_KEYSLOT_AREA,
    );
}

#[test]
fn rule_luks2_keyslot_one_digest() {
    refused_by(
        &with(|v| v["digests"]["0"]["keyslots"] = json!([])),
        LUKS2_KEYSLOT_DIGEST,
    );
    refused_by(
        &with(|v| {
            v["digests"]["1"] = v["digests"]["0"].clone();
        }),
        LUKS2_KEYSLOT_DIGEST,
    );
    // A keyslot of an unknown type needs no digest.
    accepted(&with(foreign_keyslot));
}

fn reencrypt(v: &mut Value) {
    v["config"]["requirements"] = json!({"mandatory": ["online-reencrypt-v2"]});
    v["keyslots"]["1"] = json!({"type": "reencrypt", "key_size": 1, "mode": "reencrypt",
        "direction": "forward",
        "area": {"type": "checksum", "offset": "290816", "size": "4096",
                 "hash": "sha256", "sector_size": 4096}});
    v["segments"]["0"]["flags"] = json!(["in-reencryption"]);
    let mut fin = v["segments"]["0"].clone();
    fin["flags"] = json!(["backup-final"]);
    let mut prev = fin.clone();
    prev["flags"] = json!(["backup-previous"]);
    v["segments"]["1"] = fin;
    v["segments"]["2"] = prev;
    v["digests"]["0"]["segments"] = json!(["0", "1", "2"]);
}

#[test]
fn rule_reencrypt_keyslot() {
    let h = accepted(&with(reencrypt));
    assert!(matches!(
        super::state::blockers(h.metadata()).first(),
        Some(Blocker::Reencryption { .. })
    ));
    for (field, bad) in [
        ("mode", json!("shuffle")),
        ("direction", json!("sideways")),
        ("key_size", json!(64)),
    ] {
        refused_by(
            &with(|v| {
                reencrypt(v);
                v["keyslots"]["1"][field] = bad;
            }),
            REENCRYPT_KEYSLOT,
        );
    }
    refused_by(
        &with(|v| {
            reencrypt(v);
            v["keyslots"]["1"]["area"]["sector_size"] = json!(1000);
        }),
        REENCRYPT_KEYSLOT,
    );
    refused_by(
        &with(|v| {
            reencrypt(v);
            v["keyslots"]["1"]["area"]["type"] = json!("datashift");
        }),
        REENCRYPT_KEYSLOT,
    );
}

#[test]
fn rule_reencrypt_keyslot_requirement() {
    refused_by(
        &with(|v| {
            reencrypt(v);
            v["config"]["requirements"] = json!({"mandatory": []});
        }),
        REENCRYPT_COUNT,
    );
    refused_by(
        &with(|v| {
            reencrypt(v);
            v["keyslots"]["1"]["type"] = json!("reencrypt-future");
        }),
        REENCRYPT_COUNT,
    );
}

#[test]
fn strtoull_is_c_strtoull() {
    assert_eq!(strtoull("12288"), Some(12288));
    assert_eq!(strtoull(" \t+12288"), Some(12288));
    assert_eq!(strtoull("-1"), Some(u64::MAX));
    assert_eq!(strtoull(""), Some(0));
    for bad in ["+", " ", "1 ", "0x10", "18446744073709551616", "1e3"] {
        assert_eq!(strtoull(bad), None, "{bad:?}");
    }
}
