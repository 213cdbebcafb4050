//! Command-line behaviour from docs/cli.md: exit codes, messages, `--json`, erase,
//! header backup and restore, tokens, header-copy recovery and repair, "a failed command
//! changes nothing on disk", and "no key byte in any output".

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A 1 MiB sealvol volume with a machine key, in a scratch dir.
struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
    key_bytes: Vec<u8>,
    vol: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tmpdir();
        let (key, key_bytes) = machine_key(dir.path(), "key");
        let vol = dir.path().join("vol.img");
        sv([
            OsStr::new("format"),
            OsStr::new("--key-file"),
            key.as_os_str(),
            OsStr::new("--size"),
            OsStr::new("1M"),
            vol.as_os_str(),
        ])
        .ok();
        Fixture {
            dir,
            key,
            key_bytes,
            vol,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn layout(&self) -> Layout {
        Layout {
            data: self.vol.clone(),
            header: None,
        }
    }

    /// `sealvol VERB --key-file KEY EXTRA... VOL`
    fn with_key(&self, verb: &[&str], key: &Path, extra: &[&OsStr]) -> Run {
        sv(self.layout().sv_args(verb, key, extra))
    }

    /// `sealvol ARGS... VOL` (no key option).
    fn bare(&self, args: &[&str]) -> Run {
        let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        a.push(self.vol.as_os_str());
        sv(a)
    }

    /// Imports `len` random bytes; returns them.
    fn import_random(&self, len: usize) -> Vec<u8> {
        let plain = random_bytes(len);
        let src = self.path("plain.bin");
        fs::write(&src, &plain).unwrap();
        sv([
            OsStr::new("import"),
            OsStr::new("--key-file"),
            self.key.as_os_str(),
            src.as_os_str(),
            self.vol.as_os_str(),
        ])
        .ok();
        plain
    }

    /// Exports the data segment with `key`.
    fn export(&self, key: &Path) -> Vec<u8> {
        let out = self.path("export.bin");
        sv([
            OsStr::new("export"),
            OsStr::new("--key-file"),
            key.as_os_str(),
            self.vol.as_os_str(),
            out.as_os_str(),
        ])
        .ok();
        fs::read(out).unwrap()
    }
}

#[test]
fn cli_wrong_key_exits_1_with_a_clear_message() {
    let f = Fixture::new();
    let (wrong, _) = machine_key(f.dir.path(), "wrong");
    f.with_key(&["test-key"], &f.key, &[]).code(0);
    let r = f.with_key(&["test-key"], &wrong, &[]).code(1);
    assert!(
        !r.err().trim().is_empty(),
        "wrong key should say why on stderr"
    );
    r.stderr_mentions("key");
    let out = f.path("out.bin");
    let r = sv([
        OsStr::new("export"),
        OsStr::new("--key-file"),
        wrong.as_os_str(),
        f.vol.as_os_str(),
        out.as_os_str(),
    ])
    .code(1);
    r.stderr_mentions("key");
    let (new, _) = machine_key(f.dir.path(), "new");
    f.with_key(
        &["add-key"],
        &wrong,
        &[OsStr::new("--new-key-file"), new.as_os_str()],
    )
    .code(1)
    .stderr_mentions("key");
}

#[test]
fn cli_keys_from_stdin_and_file_descriptors() {
    let f = Fixture::new();
    // --key-file - reads all of stdin, exactly.
    sv_stdin(
        [
            OsStr::new("test-key"),
            OsStr::new("--key-file"),
            OsStr::new("-"),
            f.vol.as_os_str(),
        ],
        &f.key_bytes,
    )
    .code(0);
    // Without a key option, the key comes from stdin too.
    sv_stdin([OsStr::new("test-key"), f.vol.as_os_str()], &f.key_bytes).code(0);
    // A trailing newline is part of the key (no stripping): wrong key.
    let mut with_nl = f.key_bytes.clone();
    with_nl.push(b'\n');
    sv_stdin([OsStr::new("test-key"), f.vol.as_os_str()], &with_nl).code(1);

    // --key-fd N and --new-key-fd N: the shell opens the key files on descriptors 3 and 4.
    let (new, _) = machine_key(f.dir.path(), "new");
    let script = r#"exec 3<"$2" 4<"$3"; "$1" add-key --key-fd 3 --new-key-fd 4 "$4""#;
    run(
        "bash",
        [
            OsStr::new("-c"),
            OsStr::new(script),
            OsStr::new("bash"),
            OsStr::new(SEALVOL),
            f.key.as_os_str(),
            new.as_os_str(),
            f.vol.as_os_str(),
        ],
        None,
    )
    .ok();
    let script = r#"exec 3<"$2"; "$1" test-key --key-fd 3 "$3""#;
    run(
        "bash",
        [
            OsStr::new("-c"),
            OsStr::new(script),
            OsStr::new("bash"),
            OsStr::new(SEALVOL),
            new.as_os_str(),
            f.vol.as_os_str(),
        ],
        None,
    )
    .code(0);
}

#[test]
fn cli_missing_files_exit_2_naming_them() {
    let f = Fixture::new();
    let missing = f.path("no-such-volume.img");
    let r = sv([OsStr::new("dump"), missing.as_os_str()]).code(2);
    assert!(
        r.err().contains("no-such-volume.img"),
        "stderr names the file:\n{}",
        r.err()
    );

    let missing_key = f.path("no-such-key");
    let r = f.with_key(&["test-key"], &missing_key, &[]).code(2);
    assert!(
        r.err().contains("no-such-key"),
        "stderr names the key file:\n{}",
        r.err()
    );

    let missing_src = f.path("no-such-src.bin");
    let r = sv([
        OsStr::new("import"),
        OsStr::new("--key-file"),
        f.key.as_os_str(),
        missing_src.as_os_str(),
        f.vol.as_os_str(),
    ])
    .code(2);
    assert!(
        r.err().contains("no-such-src.bin"),
        "stderr names the source:\n{}",
        r.err()
    );

    // With --json, the error is also a JSON object on stdout.
    let r = sv([
        OsStr::new("--json"),
        OsStr::new("dump"),
        missing.as_os_str(),
    ])
    .code(2);
    let j = r.json();
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-volume.img")),
        "{j}"
    );
    assert_eq!(json_u64(&j["exit_code"]), 2, "{j}");
}

#[test]
fn cli_json_outputs_parse() {
    let f = Fixture::new();
    let d = f.dir.path();

    let j = f
        .with_key(&["--json", "test-key"], &f.key, &[])
        .code(0)
        .json();
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(json_u64(&j["keyslot"]), 0, "{j}");
    let (wrong, _) = machine_key(d, "wrong");
    let j = f
        .with_key(&["--json", "test-key"], &wrong, &[])
        .code(1)
        .json();
    assert_eq!(j["ok"], false, "{j}");
    assert!(j["keyslot"].is_null(), "{j}");
    // --json after the verb works too.
    let j = f
        .with_key(&["test-key", "--json"], &f.key, &[])
        .code(0)
        .json();
    assert_eq!(j["ok"], true, "{j}");

    let (k2, _) = machine_key(d, "k2");
    let j = f
        .with_key(
            &["--json", "add-key"],
            &f.key,
            &[OsStr::new("--new-key-file"), k2.as_os_str()],
        )
        .ok()
        .json();
    assert_eq!(json_u64(&j["keyslot"]), 1, "{j}");
    let (k3, _) = machine_key(d, "k3");
    let j = f
        .with_key(
            &["--json", "change-key"],
            &k2,
            &[OsStr::new("--new-key-file"), k3.as_os_str()],
        )
        .ok()
        .json();
    assert!(j.get("keyslot").is_some(), "{j}");
    let j = f.with_key(&["--json", "remove-key"], &k3, &[]).ok().json();
    assert!(j.get("removed_keyslot").is_some(), "{j}");

    let src = f.path("src.bin");
    fs::write(&src, random_bytes(64 * 1024)).unwrap();
    let j = sv([
        OsStr::new("--json"),
        OsStr::new("import"),
        OsStr::new("--key-file"),
        f.key.as_os_str(),
        src.as_os_str(),
        f.vol.as_os_str(),
    ])
    .ok()
    .json();
    assert_eq!(json_u64(&j["bytes"]), 64 * 1024, "{j}");
    assert!(j["seconds"].as_f64().is_some(), "{j}");
    let out = f.path("out.bin");
    let j = sv([
        OsStr::new("--json"),
        OsStr::new("export"),
        OsStr::new("--key-file"),
        f.key.as_os_str(),
        f.vol.as_os_str(),
        out.as_os_str(),
    ])
    .ok()
    .json();
    assert_eq!(json_u64(&j["bytes"]), 1 << 20, "{j}");

    let tok = f.path("tok.json");
    fs::write(&tok, r#"{"type":"sealvol-test","keyslots":[]}"#).unwrap();
    let j = sv([
        OsStr::new("--json"),
        OsStr::new("token"),
        OsStr::new("add"),
        OsStr::new("--json-file"),
        tok.as_os_str(),
        f.vol.as_os_str(),
    ])
    .ok()
    .json();
    assert!(j["token_id"].is_u64(), "{j}");

    let j = f.bare(&["--json", "dump"]).ok().json();
    assert!(find_key(&j, "keyslots").is_some(), "{j}");
    assert!(find_key(&j, "segments").is_some(), "{j}");
}

#[test]
fn cryptsetup_erase_kills_the_key() {
    need("cryptsetup");
    let f = Fixture::new();
    f.import_random(8192);
    assert_cs_opens(&f.key, None, &f.vol);
    let r = f.bare(&["erase", "--batch-mode"]).ok();
    // It says plainly that an earlier header backup would bring the key back.
    let said = format!("{}{}", r.out(), r.err()).to_lowercase();
    assert!(
        said.contains("backup"),
        "erase should warn about header backups:\n{said}"
    );
    f.with_key(&["test-key"], &f.key, &[]).code(1);
    assert_cs_refuses(&f.key, None, &f.vol);
    let meta = luks_json(&f.vol);
    assert!(
        meta["keyslots"].as_object().is_none_or(|m| m.is_empty()),
        "no keyslot left after erase: {meta}"
    );
}

#[test]
fn cryptsetup_header_backup_restore_round_trip() {
    need("cryptsetup");
    let f = Fixture::new();
    let plain = f.import_random(64 * 1024);
    let backup = f.path("hdr.backup");
    sv([
        OsStr::new("header-backup"),
        OsStr::new("--header-backup-file"),
        backup.as_os_str(),
        f.vol.as_os_str(),
    ])
    .ok();
    assert!(fs::metadata(&backup).unwrap().len() > 0, "backup written");
    // cryptsetup reads sealvol's backup file as a header.
    cryptsetup([OsStr::new("luksDump"), backup.as_os_str()]).ok();

    f.bare(&["erase", "--batch-mode"]).ok();
    f.with_key(&["test-key"], &f.key, &[]).code(1);

    sv([
        OsStr::new("header-restore"),
        OsStr::new("--header-backup-file"),
        backup.as_os_str(),
        OsStr::new("--batch-mode"),
        f.vol.as_os_str(),
    ])
    .ok();
    f.with_key(&["test-key"], &f.key, &[]).code(0);
    assert_cs_opens(&f.key, None, &f.vol);
    let out = f.export(&f.key);
    assert!(
        out[..plain.len()] == plain[..],
        "data readable again after header-restore"
    );
}

#[test]
fn cryptsetup_token_add_export_remove() {
    need("cryptsetup");
    let f = Fixture::new();
    let token = serde_json::json!({"type": "sealvol-test", "keyslots": ["0"], "x": {"y": 1}});
    let tok = f.path("tok.json");
    fs::write(&tok, token.to_string()).unwrap();
    let r = sv([
        OsStr::new("--json"),
        OsStr::new("token"),
        OsStr::new("add"),
        OsStr::new("--json-file"),
        tok.as_os_str(),
        f.vol.as_os_str(),
    ])
    .ok();
    let id = json_u64(&r.json()["token_id"]);
    let meta = luks_json(&f.vol);
    assert_eq!(
        meta["tokens"][id.to_string()],
        token,
        "cryptsetup sees the token: {meta}"
    );

    // From stdin, at a chosen id.
    let token2 = serde_json::json!({"type": "sealvol-other", "keyslots": []});
    run(
        SEALVOL,
        [
            OsStr::new("token"),
            OsStr::new("add"),
            OsStr::new("--json-file"),
            OsStr::new("-"),
            OsStr::new("--token-id"),
            OsStr::new("7"),
            f.vol.as_os_str(),
        ],
        Some(token2.to_string().as_bytes()),
    )
    .ok();

    let exported = sv([
        OsStr::new("token"),
        OsStr::new("export"),
        OsStr::new("--token-id"),
        OsStr::new(&id.to_string()),
        f.vol.as_os_str(),
    ])
    .ok()
    .json();
    assert_eq!(exported, token);
    let exported = f.bare(&["token", "export", "--token-id", "7"]).ok().json();
    assert_eq!(exported, token2);

    f.bare(&["token", "remove", "--token-id", &id.to_string()])
        .ok();
    f.bare(&["token", "export", "--token-id", &id.to_string()])
        .code(2);
    let meta = luks_json(&f.vol);
    assert!(
        meta["tokens"].get(id.to_string()).is_none(),
        "token removed: {meta}"
    );
    assert_eq!(meta["tokens"]["7"], token2, "other token kept: {meta}");
    assert_cs_opens(&f.key, None, &f.vol);
}

#[test]
fn cryptsetup_corrupted_primary_header_recovers_and_repair_fixes_it() {
    need("cryptsetup");
    let f = Fixture::new();
    let plain = f.import_random(16 * 1024);
    let meta = luks_json(&f.vol);
    let json_size = json_u64(&meta["config"]["json_size"]);
    let hdr_size = json_size + 4096; // binary header + JSON area = one copy

    // Damage the primary copy's binary header (label field and beyond: checksum breaks).
    write_at(&f.vol, 0x18, &[0xA5; 0x100]);
    f.with_key(&["test-key"], &f.key, &[]).code(0);
    let out = f.export(&f.key);
    assert!(
        out[..plain.len()] == plain[..],
        "data readable through the secondary copy"
    );

    f.bare(&["repair"]).ok();
    cryptsetup([OsStr::new("luksDump"), f.vol.as_os_str()]).ok();
    // Prove the primary copy is whole again: now damage the secondary; both tools still work.
    write_at(&f.vol, hdr_size + 0x18, &[0x5A; 0x100]);
    cryptsetup([OsStr::new("luksDump"), f.vol.as_os_str()]).ok();
    assert_cs_opens(&f.key, None, &f.vol);
    f.with_key(&["test-key"], &f.key, &[]).code(0);
}

#[test]
fn cryptsetup_corrupted_primary_json_recovers() {
    need("cryptsetup");
    let f = Fixture::new();
    // Damage the primary copy's JSON area (checksummed with the binary header).
    write_at(&f.vol, 4096 + 10, b"garbage garbage garbage");
    f.with_key(&["test-key"], &f.key, &[]).code(0);
    f.bare(&["repair"]).ok();
    let meta = luks_json(&f.vol);
    assert!(meta["keyslots"].get("0").is_some(), "{meta}");
    // With the secondary damaged too, only a repaired primary can answer.
    let json_size = json_u64(&meta["config"]["json_size"]);
    write_at(
        &f.vol,
        json_size + 4096 + 4096 + 10,
        b"garbage garbage garbage",
    );
    assert_cs_opens(&f.key, None, &f.vol);
    f.with_key(&["test-key"], &f.key, &[]).code(0);
}

#[test]
fn cli_failed_commands_change_nothing_on_disk() {
    let f = Fixture::new();
    let d = f.dir.path();
    f.import_random(8192);
    let (wrong, _) = machine_key(d, "wrong");
    let (new, _) = machine_key(d, "new");
    let before = snapshot(&f.vol);
    let new_arg = [OsStr::new("--new-key-file"), new.as_os_str()];

    f.with_key(&["add-key"], &wrong, &new_arg).fails();
    assert_unchanged(&f.vol, &before, "add-key with a wrong key");
    f.with_key(&["change-key"], &wrong, &new_arg).fails();
    assert_unchanged(&f.vol, &before, "change-key with a wrong key");
    f.with_key(&["remove-key"], &wrong, &[]).fails();
    assert_unchanged(&f.vol, &before, "remove-key with a wrong key");
    f.with_key(&["remove-key"], &f.key, &[]).fails();
    assert_unchanged(&f.vol, &before, "remove-key of the last keyslot");
    let missing = f.path("missing-new-key");
    f.with_key(
        &["add-key"],
        &f.key,
        &[OsStr::new("--new-key-file"), missing.as_os_str()],
    )
    .code(2);
    assert_unchanged(&f.vol, &before, "add-key with a missing new key file");

    let src = f.path("src.bin");
    fs::write(&src, random_bytes(8192)).unwrap();
    sv([
        OsStr::new("import"),
        OsStr::new("--key-file"),
        wrong.as_os_str(),
        src.as_os_str(),
        f.vol.as_os_str(),
    ])
    .fails();
    assert_unchanged(&f.vol, &before, "import with a wrong key");

    // format over an existing LUKS header without --batch-mode.
    f.with_key(&["format"], &new, &[]).fails();
    assert_unchanged(&f.vol, &before, "format over an existing header");

    // erase without --batch-mode on a non-terminal stdin is an error.
    f.bare(&["erase"]).code(2);
    assert_unchanged(&f.vol, &before, "erase without --batch-mode");

    // header-restore from a file that is not a LUKS header.
    let junk = f.path("junk.hdr");
    fs::write(&junk, random_bytes(64 * 1024)).unwrap();
    sv([
        OsStr::new("header-restore"),
        OsStr::new("--header-backup-file"),
        junk.as_os_str(),
        OsStr::new("--batch-mode"),
        f.vol.as_os_str(),
    ])
    .fails();
    assert_unchanged(&f.vol, &before, "header-restore from junk");

    // token remove of a token that does not exist; token add of invalid JSON.
    f.bare(&["token", "remove", "--token-id", "9"]).fails();
    assert_unchanged(&f.vol, &before, "token remove of a missing token");
    let bad = f.path("bad.json");
    fs::write(&bad, "{not json").unwrap();
    sv([
        OsStr::new("token"),
        OsStr::new("add"),
        OsStr::new("--json-file"),
        bad.as_os_str(),
        f.vol.as_os_str(),
    ])
    .code(2);
    assert_unchanged(&f.vol, &before, "token add of invalid JSON");
}

/// No byte of any key (passphrase, new key, volume key) may appear in any output, in raw,
/// hex or base64 form, including with -v and --json.
#[test]
fn cryptsetup_no_key_bytes_in_any_output() {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, key_bytes) = machine_key(d, "key");
    let (new, new_bytes) = machine_key(d, "new");
    let (third, third_bytes) = machine_key(d, "third");
    let (wrong, wrong_bytes) = machine_key(d, "wrong");
    let src = d.join("src.bin");
    fs::write(&src, random_bytes(32 * 1024)).unwrap();
    let out = d.join("out.bin");
    let tok = d.join("tok.json");
    fs::write(&tok, r#"{"type":"sealvol-test","keyslots":["0"]}"#).unwrap();

    let p = |p: &Path| p.as_os_str().to_owned();
    let s = |s: &str| OsStr::new(s).to_owned();
    let k = |k: &Path| vec![s("--key-file"), p(k)];
    let mut runs: Vec<Run> = Vec::new();
    let mut volume_keys = Vec::new();
    // The whole life of a volume, once with -v and once with -v --json.
    for (n, flags) in [vec![s("-v")], vec![s("-v"), s("--json")]]
        .iter()
        .enumerate()
    {
        let vol = d.join(format!("vol{n}.img"));
        let backup = d.join(format!("hdr{n}.backup"));
        let cmds: Vec<Vec<std::ffi::OsString>> = vec![
            [
                vec![s("format")],
                k(&key),
                vec![s("--size"), s("1M"), p(&vol)],
            ]
            .concat(),
            vec![s("dump"), p(&vol)],
            [vec![s("test-key")], k(&key), vec![p(&vol)]].concat(),
            [vec![s("test-key")], k(&wrong), vec![p(&vol)]].concat(),
            [vec![s("import")], k(&key), vec![p(&src), p(&vol)]].concat(),
            [vec![s("import")], k(&wrong), vec![p(&src), p(&vol)]].concat(),
            [vec![s("export")], k(&key), vec![p(&vol), p(&out)]].concat(),
            [
                vec![s("add-key")],
                k(&key),
                vec![s("--new-key-file"), p(&new), p(&vol)],
            ]
            .concat(),
            [
                vec![s("add-key")],
                k(&wrong),
                vec![s("--new-key-file"), p(&new), p(&vol)],
            ]
            .concat(),
            [
                vec![s("change-key")],
                k(&new),
                vec![s("--new-key-file"), p(&third), p(&vol)],
            ]
            .concat(),
            [vec![s("remove-key")], k(&third), vec![p(&vol)]].concat(),
            vec![s("token"), s("add"), s("--json-file"), p(&tok), p(&vol)],
            vec![s("token"), s("export"), s("--token-id"), s("0"), p(&vol)],
            vec![
                s("header-backup"),
                s("--header-backup-file"),
                p(&backup),
                p(&vol),
            ],
            vec![s("repair"), p(&vol)],
            vec![s("erase"), s("--batch-mode"), p(&vol)],
            [vec![s("test-key")], k(&key), vec![p(&vol)]].concat(),
        ];
        for cmd in &cmds {
            let mut args = flags.clone();
            args.extend(cmd.iter().cloned());
            runs.push(sv(&args));
        }
        // The volume key, as cryptsetup unlocks it from the backup (taken before erase).
        volume_keys.push(dump_volume_key(&backup, &key));
    }
    // The sequence did what it says (so the outputs checked are the real ones).
    assert_eq!(runs[0].code, 0, "format: {}", runs[0].err());
    assert_eq!(runs[3].code, 1, "test-key with the wrong key");
    assert_eq!(runs[16].code, 1, "test-key after erase");

    let secrets: [(&str, &[u8]); 6] = [
        ("key", &key_bytes),
        ("new key", &new_bytes),
        ("third key", &third_bytes),
        ("wrong key", &wrong_bytes),
        ("volume key", &volume_keys[0]),
        ("volume key", &volume_keys[1]),
    ];
    for r in &runs {
        let text = [r.stdout.as_slice(), r.stderr.as_slice()].concat();
        let lower = String::from_utf8_lossy(&text).to_lowercase();
        let nospace: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
        for (name, secret) in &secrets {
            // Any 16 consecutive bytes of a secret, raw or as hex, would be a leak.
            for window in secret.windows(16).step_by(8) {
                assert!(
                    !text.windows(window.len()).any(|w| w == window),
                    "raw {name} bytes in the output of `{}`",
                    r.cmdline
                );
                let h = hex::encode(window);
                assert!(
                    !nospace.contains(&h),
                    "{name} in hex in the output of `{}`",
                    r.cmdline
                );
                let spaced = window
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(!lower.contains(&spaced), "{name} in hex in `{}`", r.cmdline);
            }
            let b64 = base64_encode(secret);
            assert!(
                !String::from_utf8_lossy(&text).contains(&b64[..20]),
                "{name} in base64 in the output of `{}`",
                r.cmdline
            );
        }
    }
}

/// Standard base64 (RFC 4648), enough for the leak check.
fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn cli_import_from_stdin_export_to_stdout() {
    let f = Fixture::new();
    let plain = random_bytes(3 * 4096);
    run(
        SEALVOL,
        [
            OsStr::new("import"),
            OsStr::new("--key-file"),
            f.key.as_os_str(),
            OsStr::new("-"),
            f.vol.as_os_str(),
        ],
        Some(&plain),
    )
    .ok();
    let r = sv([
        OsStr::new("export"),
        OsStr::new("--key-file"),
        f.key.as_os_str(),
        f.vol.as_os_str(),
        OsStr::new("-"),
    ])
    .ok();
    assert_eq!(
        r.stdout.len(),
        1 << 20,
        "export - writes the whole data segment to stdout"
    );
    assert!(
        r.stdout[..plain.len()] == plain[..],
        "stdin → volume → stdout round trip"
    );
}
