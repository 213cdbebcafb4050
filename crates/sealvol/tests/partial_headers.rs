//! Issue 11: headers cryptsetup accepts are read by sealvol, partially where they must be.
//!
//! - A keyslot with a KDF sealvol does not implement: `sealvol dump` (text and JSON) lists it
//!   and why, the other keyslot still opens, naming the keyslot says what is missing, and a
//!   header sealvol writes back keeps that keyslot value for value (cryptsetup reads it).
//! - A reencryption cryptsetup started and left (`reencrypt --init-only`) and an unknown
//!   requirement flag: dumped, never opened or written, with what to run instead.
//! - A crypt segment with an empty `encryption`: cryptsetup refuses it, so does sealvol.
//!
//! Every test runs the real `sealvol` and `cryptsetup` 2.6.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A cryptsetup LUKS2 volume with keyslot 0 for `k0` and keyslot 1 for `k1` (PBKDF2 1000).
fn two_keyslots(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let img = dir.join("v.img");
    sparse_file(&img, 20 << 20);
    let k0 = write_secret(dir, "k0", b"first key");
    let k1 = write_secret(dir, "k1", b"second key");
    let fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    let mut a = vec![
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--key-file",
        s(&k0),
    ];
    a.extend(fast);
    a.push(s(&img));
    cryptsetup(&a).ok();
    let mut a = vec!["luksAddKey", "--batch-mode", "--key-file", s(&k0)];
    a.extend(fast);
    a.extend([s(&img), s(&k1)]);
    cryptsetup(&a).ok();
    (img, k0, k1)
}

#[test]
fn cryptsetup_unknown_kdf_keyslot_is_listed_skipped_and_preserved() {
    let d = tmpdir();
    let (img, k0, k1) = two_keyslots(d.path());
    let scrypt = json!({"type": "scrypt", "n": 1048576, "r": 8, "p": 1,
        "salt": "c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ="});
    rewrite_luks2_json(&img, |m| m["keyslots"]["1"]["kdf"] = scrypt.clone());
    // cryptsetup accepts the header (it validates only the kdf type of unknown KDFs).
    luks_json(&img);

    let doc = sv(["--json", "dump", s(&img)]).ok().json();
    let why = doc["unusable"]["keyslots"]["1"].as_str().unwrap();
    assert!(why.contains("scrypt"), "{doc}");
    assert!(doc["unusable"]["keyslots"].get("0").is_none(), "{doc}");
    let text = sv(["dump", s(&img)]).ok().out();
    assert!(
        text.lines()
            .any(|l| l.contains("Unusable:") && l.contains("scrypt")),
        "{text}"
    );
    // Keyslot 0 still opens; the keyslot the second key is in names what is missing.
    sv(["test-key", "--key-file", s(&k0), s(&img)]).ok();
    sv(["test-key", "--key-file", s(&k1), "--key-slot", "1", s(&img)])
        .fails()
        .stderr_mentions("scrypt");
    // Written back by sealvol (a new keyslot): the scrypt keyslot is still there, value for
    // value, and cryptsetup still reads the header and opens the new keyslot.
    let k2 = write_secret(d.path(), "k2", &random_bytes(32));
    sv([
        "add-key",
        "--key-file",
        s(&k0),
        "--new-key-file",
        s(&k2),
        s(&img),
    ])
    .ok();
    let meta = luks_json(&img);
    assert_eq!(meta["keyslots"]["1"]["kdf"], scrypt, "{meta}");
    // (cryptsetup stops at the first keyslot it cannot derive, so it is told which one.)
    cryptsetup([
        "open",
        "--test-passphrase",
        "--key-slot",
        "2",
        "--key-file",
        s(&k2),
        s(&img),
    ])
    .ok();
}

#[test]
fn cryptsetup_interrupted_reencryption_is_dumped_never_opened_or_written() {
    let d = tmpdir();
    let (img, k0, _) = two_keyslots(d.path());
    cryptsetup([
        "reencrypt",
        "--batch-mode",
        "--init-only",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        s(&k0),
        "--key-slot",
        "0",
        s(&img),
    ])
    .ok();
    let before = snapshot(&img);
    let doc = sv(["--json", "dump", s(&img)]).ok().json();
    let blockers = doc["blockers"].to_string();
    assert!(
        blockers.contains("cryptsetup reencrypt --resume-only"),
        "{doc}"
    );
    let text = sv(["dump", s(&img)]).ok().out();
    assert!(text.contains("Blocked:"), "{text}");
    for args in [
        vec!["test-key", "--key-file", s(&k0), s(&img)],
        vec!["export", "--key-file", s(&k0), s(&img), "-"],
        vec!["remove-key", "--key-file", s(&k0), s(&img)],
        vec!["erase", "--batch-mode", s(&img)],
    ] {
        let r = sv(&args).fails().stderr_mentions("--resume-only");
        assert!(
            !r.err().to_lowercase().contains("corrupt"),
            "{args:?} calls a reencryption corruption: {}",
            r.err()
        );
    }
    assert_unchanged(&img, &before, "a header in reencryption");
    // cryptsetup still sees its reencryption.
    let meta = luks_json(&img);
    assert!(meta["config"]["requirements"]["mandatory"]
        .to_string()
        .contains("online-reencrypt"));
}

#[test]
fn cryptsetup_unknown_requirement_is_dumped_and_named_never_opened() {
    let d = tmpdir();
    let (img, k0, _) = two_keyslots(d.path());
    rewrite_luks2_json(&img, |m| {
        m["config"]["requirements"] = json!({"mandatory": ["future-feature-x"]})
    });
    luks_json(&img);
    let before = snapshot(&img);
    let doc: Value = sv(["--json", "dump", s(&img)]).ok().json();
    assert!(
        doc["blockers"].to_string().contains("future-feature-x"),
        "{doc}"
    );
    sv(["test-key", "--key-file", s(&k0), s(&img)])
        .fails()
        .stderr_mentions("future-feature-x");
    let k2 = write_secret(d.path(), "k2", &random_bytes(32));
    sv([
        "add-key",
        "--key-file",
        s(&k0),
        "--new-key-file",
        s(&k2),
        s(&img),
    ])
    .fails()
    .stderr_mentions("future-feature-x");
    assert_unchanged(&img, &before, "a header with an unknown requirement");
}

#[test]
fn cryptsetup_empty_segment_cipher_is_refused_by_both() {
    let d = tmpdir();
    let (img, k0, _) = two_keyslots(d.path());
    rewrite_luks2_json(&img, |m| m["segments"]["0"]["encryption"] = json!(""));
    cryptsetup(["luksDump", s(&img)]).fails();
    sv(["dump", s(&img)])
        .fails()
        .stderr_mentions("segment-crypt-fields");
    sv(["test-key", "--key-file", s(&k0), s(&img)]).fails();
}

/// OPAL and dm-integrity segments (made by JSON surgery that `cryptsetup luksDump` accepts:
/// this host has neither an OPAL drive nor dm-integrity for a real one): dumped, refused
/// with what they are and what to run, never written.
#[test]
fn cryptsetup_opal_and_integrity_segments_are_dumped_and_refused_by_name() {
    let d = tmpdir();
    type Surgery = fn(&mut Value);
    let cases: [(&str, Surgery, &str); 2] = [
        (
            "opal",
            |m| {
                let s = &mut m["segments"]["0"];
                s["type"] = json!("hw-opal-crypt");
                s["size"] = json!("1048576");
                s["opal_segment_number"] = json!(1);
                s["opal_key_size"] = json!(32);
                s["opal_segment_size"] = json!("1048576");
            },
            "OPAL",
        ),
        (
            "integrity",
            |m| {
                m["segments"]["0"]["integrity"] = json!({"type": "hmac(sha256)",
                    "journal_encryption": "none", "journal_integrity": "none"})
            },
            "dm-integrity",
        ),
    ];
    for (name, surgery, what) in cases {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (img, k0, _) = two_keyslots(&dir);
        rewrite_luks2_json(&img, surgery);
        cryptsetup(["luksDump", s(&img)]).ok();
        let before = snapshot(&img);
        let doc = sv(["--json", "dump", s(&img)]).ok().json();
        assert!(doc["blockers"].to_string().contains(what), "{name}: {doc}");
        sv(["test-key", "--key-file", s(&k0), s(&img)])
            .fails()
            .stderr_mentions(what)
            .stderr_mentions("cryptsetup");
        sv(["remove-key", "--key-file", s(&k0), s(&img)])
            .fails()
            .stderr_mentions(what);
        assert_unchanged(&img, &before, name);
    }
}
