//! Volumes made by `cryptsetup luksFormat` (2.6) must open with sealvol: `dump`, `test-key`,
//! `import`/`export` (checked through the openssl XTS oracle with cryptsetup's volume key), and
//! keyslot changes made by sealvol must leave a header cryptsetup opens with the right keys
//! and refuses with the removed one.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;

const DATA_SIZE: u64 = 1 << 20;

/// `cryptsetup luksFormat --batch-mode --type luks2 ARGS [--header H] DATA KEY` on fresh files.
fn cs_format(dir: &Path, key: &Path, args: &[&str], detached: bool) -> Layout {
    let layout = Layout {
        data: dir.join("cs.img"),
        header: detached.then(|| dir.join("cs-hdr.img")),
    };
    // cryptsetup's default LUKS2 header (metadata + keyslots area) is 16 MiB.
    let len = if detached {
        DATA_SIZE
    } else {
        (16 << 20) + DATA_SIZE
    };
    sparse_file(&layout.data, len);
    let mut a: Vec<&OsStr> = vec![
        OsStr::new("luksFormat"),
        OsStr::new("--batch-mode"),
        OsStr::new("--type"),
        OsStr::new("luks2"),
    ];
    a.extend(args.iter().map(OsStr::new));
    if let Some(h) = &layout.header {
        a.extend([OsStr::new("--header"), h.as_os_str()]);
    }
    a.extend([layout.data.as_os_str(), key.as_os_str()]);
    cryptsetup(a).ok();
    layout
}

/// Runs `sealvol VERB [--header H] --key-file K EXTRA... VOLUME`.
fn sv_key(layout: &Layout, verb: &[&str], key: &Path, extra: &[&OsStr]) -> Run {
    sv(layout.sv_args(verb, key, extra))
}

/// What every cryptsetup-made volume must pass in sealvol.
fn sealvol_reads_cryptsetup_volume(dir: &Path, layout: &Layout, key: &Path) {
    let hdr = layout.header_args();
    let hdr: Vec<&OsStr> = hdr.iter().map(|p| p.as_os_str()).collect();

    // dump: human output names the UUID cryptsetup sees; --json parses and lists keyslots.
    let uuid = luks_uuid(layout.header_device());
    let mut a = vec![OsStr::new("dump")];
    a.extend(hdr.iter().copied());
    a.push(layout.data.as_os_str());
    let human = sv(&a).ok();
    assert!(
        human.out().contains(&uuid),
        "dump should show UUID {uuid}:\n{}",
        human.out()
    );
    let mut a = vec![OsStr::new("--json"), OsStr::new("dump")];
    a.extend(hdr.iter().copied());
    a.push(layout.data.as_os_str());
    let j = sv(&a).ok().json();
    let cs_meta = luks_json(layout.header_device());
    let slots = find_key(&j, "keyslots")
        .and_then(|v| v.as_object())
        .unwrap_or_else(|| panic!("dump --json has no keyslots object: {j}"));
    let cs_slots = cs_meta["keyslots"].as_object().unwrap();
    let mut ids: Vec<_> = slots.keys().collect();
    let mut cs_ids: Vec<_> = cs_slots.keys().collect();
    ids.sort();
    cs_ids.sort();
    assert_eq!(ids, cs_ids, "keyslot ids in dump --json vs cryptsetup");

    // test-key: the right key opens it, a wrong key is a clean "no".
    sv_key(layout, &["test-key"], key, &[]).code(0);
    let (wrong, _) = machine_key(dir, "wrong-key");
    sv_key(layout, &["test-key"], &wrong, &[]).code(1);

    // Data, both directions, against cryptsetup's volume key.
    check_data_against_openssl(dir, layout, key);
}

/// sealvol add-key then remove-key on a cryptsetup volume: cryptsetup follows along.
fn sealvol_rekeys_cryptsetup_volume(dir: &Path, layout: &Layout, key: &Path) -> PathBuf {
    let (new_key, _) = machine_key(dir, "new-key");
    let r = sv(layout.sv_args(
        &["--json", "add-key"],
        key,
        &[OsStr::new("--new-key-file"), new_key.as_os_str()],
    ))
    .ok();
    assert!(
        r.json().get("keyslot").is_some(),
        "add-key --json: {}",
        r.out()
    );
    cryptsetup([OsStr::new("luksDump"), layout.header_device().as_os_str()]).ok();
    assert_cs_opens(&new_key, layout.header.as_deref(), &layout.data);
    assert_cs_opens(key, layout.header.as_deref(), &layout.data);

    sv(layout.sv_args(&["remove-key"], key, &[])).ok();
    cryptsetup([OsStr::new("luksDump"), layout.header_device().as_os_str()]).ok();
    assert_cs_refuses(key, layout.header.as_deref(), &layout.data);
    assert_cs_opens(&new_key, layout.header.as_deref(), &layout.data);
    sv(layout.sv_args(&["test-key"], key, &[])).code(1);
    sv(layout.sv_args(&["test-key"], &new_key, &[])).code(0);
    new_key
}

#[test]
fn cryptsetup_openssl_luksformat_defaults_low_memory() {
    // Defaults (argon2id, 4096-byte sectors chosen by cryptsetup or 512 on a file) with the
    // memory cost lowered so the test runs in milliseconds.
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let layout = cs_format(
        d,
        &key,
        &["--pbkdf-memory", "32", "--pbkdf-force-iterations", "4"],
        false,
    );
    assert_eq!(
        luks_json(&layout.data)["keyslots"]["0"]["kdf"]["type"],
        "argon2id"
    );
    sealvol_reads_cryptsetup_volume(d, &layout, &key);
    sealvol_rekeys_cryptsetup_volume(d, &layout, &key);
}

#[test]
fn cryptsetup_openssl_luksformat_pbkdf2_512_sectors() {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let layout = cs_format(
        d,
        &key,
        &[
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "512",
        ],
        false,
    );
    assert_eq!(segment(&luks_json(&layout.data)).sector_size, 512);
    sealvol_reads_cryptsetup_volume(d, &layout, &key);
    sealvol_rekeys_cryptsetup_volume(d, &layout, &key);
}

#[test]
fn cryptsetup_openssl_luksformat_argon2i_4096_sectors() {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let layout = cs_format(
        d,
        &key,
        &[
            "--pbkdf",
            "argon2i",
            "--pbkdf-memory",
            "32",
            "--pbkdf-force-iterations",
            "4",
            "--sector-size",
            "4096",
        ],
        false,
    );
    let meta = luks_json(&layout.data);
    assert_eq!(meta["keyslots"]["0"]["kdf"]["type"], "argon2i");
    assert_eq!(segment(&meta).sector_size, 4096);
    sealvol_reads_cryptsetup_volume(d, &layout, &key);
    sealvol_rekeys_cryptsetup_volume(d, &layout, &key);
}

#[test]
fn cryptsetup_openssl_luksformat_detached_header() {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let layout = cs_format(
        d,
        &key,
        &[
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "4096",
        ],
        true,
    );
    assert_eq!(segment(&luks_json(layout.header_device())).offset, 0);
    sealvol_reads_cryptsetup_volume(d, &layout, &key);
    sealvol_rekeys_cryptsetup_volume(d, &layout, &key);
}

#[test]
fn cryptsetup_openssl_luksformat_aes_xts_256_bit_key() {
    // aes-xts-plain64 with a 256-bit key (AES-128-XTS).
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let layout = cs_format(
        d,
        &key,
        &[
            "--key-size",
            "256",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
        false,
    );
    sealvol_reads_cryptsetup_volume(d, &layout, &key);
}

#[test]
fn cryptsetup_luksformat_several_keyslots_and_a_token() {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (k0, _) = machine_key(d, "k0");
    let (k1, _) = machine_key(d, "k1");
    let (k5, _) = machine_key(d, "k5");
    let pbkdf2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    let layout = cs_format(d, &k0, &pbkdf2, false);
    let vol = layout.data.clone();
    let mut a: Vec<&OsStr> = vec![OsStr::new("luksAddKey"), OsStr::new("--batch-mode")];
    a.extend(pbkdf2.iter().map(OsStr::new));
    a.extend([
        OsStr::new("--key-file"),
        k0.as_os_str(),
        vol.as_os_str(),
        k1.as_os_str(),
    ]);
    cryptsetup(&a).ok();
    let mut a: Vec<&OsStr> = vec![OsStr::new("luksAddKey"), OsStr::new("--batch-mode")];
    a.extend(pbkdf2.iter().map(OsStr::new));
    a.extend([
        OsStr::new("--new-key-slot"),
        OsStr::new("5"),
        OsStr::new("--key-file"),
        k0.as_os_str(),
        vol.as_os_str(),
        k5.as_os_str(),
    ]);
    cryptsetup(&a).ok();
    let token = serde_json::json!({
        "type": "sealvol-test",
        "keyslots": ["5"],
        "note": "kept verbatim",
        "nested": {"a": [1, 2, 3]}
    });
    let token_file = d.join("token.json");
    std::fs::write(&token_file, token.to_string()).unwrap();
    cryptsetup([
        OsStr::new("token"),
        OsStr::new("import"),
        OsStr::new("--json-file"),
        token_file.as_os_str(),
        OsStr::new("--token-id"),
        OsStr::new("3"),
        vol.as_os_str(),
    ])
    .ok();

    // Every key opens, and test-key reports which keyslot.
    for (k, slot) in [(&k0, 0), (&k1, 1), (&k5, 5)] {
        let r = sv(layout.sv_args(&["--json", "test-key"], k, &[])).code(0);
        let j = r.json();
        assert_eq!(j["ok"], true, "{j}");
        assert_eq!(
            json_u64(&j["keyslot"]),
            slot,
            "test-key --json keyslot for {}",
            k.display()
        );
    }
    sv(layout.sv_args(
        &["test-key"],
        &k5,
        &[OsStr::new("--key-slot"), OsStr::new("5")],
    ))
    .code(0);
    sv(layout.sv_args(
        &["test-key"],
        &k5,
        &[OsStr::new("--key-slot"), OsStr::new("0")],
    ))
    .code(1);

    // The token: visible in dump --json, exported verbatim.
    let dump = sv([OsStr::new("--json"), OsStr::new("dump"), vol.as_os_str()])
        .ok()
        .json();
    let tokens = find_key(&dump, "tokens").expect("tokens in dump --json");
    assert_eq!(tokens["3"], token, "token 3 in dump --json");
    let exported = sv([
        OsStr::new("token"),
        OsStr::new("export"),
        OsStr::new("--token-id"),
        OsStr::new("3"),
        vol.as_os_str(),
    ])
    .ok()
    .json();
    assert_eq!(exported, token, "token export");

    sealvol_reads_cryptsetup_volume(d, &layout, &k0);

    // Removing keyslot 5 (which the token references) through sealvol: cryptsetup still
    // accepts the header, the token survives unassigned, the other keys still open.
    sv(layout.sv_args(&["remove-key"], &k5, &[])).ok();
    let meta = luks_json(&vol);
    assert!(
        meta["keyslots"].get("5").is_none(),
        "keyslot 5 removed: {meta}"
    );
    assert_eq!(
        meta["tokens"]["3"]["type"], "sealvol-test",
        "token kept: {meta}"
    );
    assert_eq!(
        meta["tokens"]["3"]["note"], "kept verbatim",
        "token kept: {meta}"
    );
    assert_cs_refuses(&k5, None, &vol);
    assert_cs_opens(&k0, None, &vol);
    assert_cs_opens(&k1, None, &vol);

    // add-key into a chosen slot, then cryptsetup opens with it.
    let (k7, _) = machine_key(d, "k7");
    sv(layout.sv_args(
        &["add-key"],
        &k1,
        &[
            OsStr::new("--new-key-file"),
            k7.as_os_str(),
            OsStr::new("--key-slot"),
            OsStr::new("7"),
        ],
    ))
    .ok();
    assert!(
        luks_json(&vol)["keyslots"].get("7").is_some(),
        "keyslot 7 added"
    );
    assert_cs_opens(&k7, None, &vol);
    assert_cs_opens(&k0, None, &vol);
}
