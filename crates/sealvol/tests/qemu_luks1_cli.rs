//! Every CLI verb on LUKS1 volumes, checked against qemu-img (qemu's `luks` driver) and
//! cryptsetup. Peers missing is a failure, never a skip.

mod common;

use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_img_plaintext(dir: &Path, vol: &Path, key: &Path) -> Vec<u8> {
    need("qemu-img");
    let out = dir.join("qemu-out.raw");
    let _ = std::fs::remove_file(&out);
    run(
        "qemu-img",
        [
            "convert",
            "--object",
            &format!("secret,id=sec0,file={}", s(key)),
            "--image-opts",
            &format!("driver=luks,file.filename={},key-secret=sec0", s(vol)),
            "-O",
            "raw",
            s(&out),
        ],
        None,
    )
    .ok();
    std::fs::read(out).unwrap()
}

/// 32 random bytes as 64 hex digits (sealvol treats it as a machine key).
fn hex_machine_key(dir: &Path) -> std::path::PathBuf {
    let hex: String = random_bytes(32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_secret(dir, "key", hex.as_bytes())
}

#[test]
fn qemu_every_verb_works_on_a_luks1_volume() {
    let d = tmpdir();
    let dir = d.path();
    // qemu's secrets must be UTF-8: a machine key for qemu is written as hex text.
    let key = hex_machine_key(dir);
    let key2 = write_secret(dir, "key2", b"second passphrase");
    let key3 = write_secret(dir, "key3", b"third passphrase");
    let vol = dir.join("vol.img");
    let out = sv([
        "--json",
        "format",
        "--type",
        "luks1",
        "--key-file",
        s(&key),
        "--size",
        "4M",
        s(&vol),
    ])
    .ok()
    .json();
    assert_eq!(out["type"], "luks1");
    assert_eq!(out["sector_size"], 512);
    assert_eq!(out["data_offset"], 4096 * 512);
    cryptsetup(["luksDump", s(&vol)])
        .ok()
        .out()
        .contains("Version:       \t1")
        .then_some(())
        .expect("cryptsetup sees LUKS1");
    let dump = sv(["--json", "dump", s(&vol)]).ok().json();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["hash"], "sha256");

    // import → qemu-img reads the same plaintext.
    let plain = random_bytes(1 << 20);
    let src = write_secret(dir, "plain", &plain);
    sv(["import", "--key-file", s(&key), s(&src), s(&vol)]).ok();
    let q = qemu_img_plaintext(dir, &vol, &key);
    assert_eq!(&q[..plain.len()], &plain[..]);

    // Keys: a passphrase gets benchmarked PBKDF2 (never Argon2) in LUKS1.
    let r = sv([
        "--json",
        "add-key",
        "--key-file",
        s(&key),
        "--new-key-file",
        s(&key2),
        "--iter-time",
        "50",
        s(&vol),
    ])
    .ok()
    .json();
    assert_eq!(r["kdf"]["type"], "pbkdf2");
    assert_eq!(r["keyslot"], 1);
    assert_cs_opens(&key2, None, &vol);
    assert_eq!(
        qemu_img_plaintext(dir, &vol, &key2)[..plain.len()],
        plain[..]
    );
    sv([
        "add-key",
        "--pbkdf",
        "argon2id",
        "--key-file",
        s(&key),
        "--new-key-file",
        s(&key3),
        s(&vol),
    ])
    .code(2)
    .stderr_mentions("PBKDF2 only");
    sv([
        "change-key",
        "--key-file",
        s(&key2),
        "--new-key-file",
        s(&key3),
        "--pbkdf-force-iterations",
        "1000",
        s(&vol),
    ])
    .ok();
    assert_cs_refuses(&key2, None, &vol);
    assert_cs_opens(&key3, None, &vol);
    sv(["test-key", "--key-file", s(&key2), s(&vol)]).code(1);
    sv(["test-key", "--key-file", s(&key3), s(&vol)]).ok();
    sv(["remove-key", "--key-file", s(&key3), s(&vol)]).ok();
    sv(["remove-key", "--key-file", s(&key), s(&vol)])
        .code(2)
        .stderr_mentions("last active keyslot");

    // Tokens are LUKS2 only.
    sv(["token", "export", "--token-id", "0", s(&vol)])
        .code(2)
        .stderr_mentions("exist only in LUKS2");

    // Header backup / restore round trip (cryptsetup reads the backup too).
    let backup = dir.join("hdr.bak");
    sv(["header-backup", "--header-backup-file", s(&backup), s(&vol)]).ok();
    assert_cs_opens(&key, Some(&backup), &vol);
    sv(["repair", s(&vol)]).ok();
    sv(["erase", "--batch-mode", s(&vol)]).ok();
    sv(["test-key", "--key-file", s(&key), s(&vol)]).code(1);
    assert_cs_refuses(&key, None, &vol);
    sv([
        "header-restore",
        "--batch-mode",
        "--header-backup-file",
        s(&backup),
        s(&vol),
    ])
    .ok();
    sv(["test-key", "--key-file", s(&key), s(&vol)]).ok();

    // export gives the imported plaintext back.
    let dst = dir.join("out.raw");
    sv(["export", "--key-file", s(&key), s(&vol), s(&dst)]).ok();
    assert_eq!(&std::fs::read(&dst).unwrap()[..plain.len()], &plain[..]);
    // No plaintext on disk.
    let raw = std::fs::read(&vol).unwrap();
    assert!(!raw.windows(64).any(|w| w == &plain[..64]));

    // LUKS1 refuses LUKS2-only options.
    sv([
        "format",
        "--type",
        "luks1",
        "--sector-size",
        "4096",
        "--batch-mode",
        "--key-file",
        s(&key),
        s(&vol),
    ])
    .code(2)
    .stderr_mentions("512-byte sectors only");
    sv([
        "format",
        "--type",
        "luks1",
        "--label",
        "x",
        "--batch-mode",
        "--key-file",
        s(&key),
        s(&vol),
    ])
    .code(2)
    .stderr_mentions("only in LUKS2");
}

#[test]
fn qemu_img_created_luks_volume_works_with_every_read_verb() {
    need("qemu-img");
    let d = tmpdir();
    let dir = d.path();
    let pass = write_secret(dir, "pass", b"qemu made this");
    let vol = dir.join("q.luks");
    let plain = random_bytes(2 << 20);
    let src = write_secret(dir, "plain", &plain);
    let secret = format!("secret,id=sec0,file={}", s(&pass));
    // qemu-img calibrates PBKDF2 by CPU time and, on a busy machine, sometimes gives up with
    // "Unable to get accurate CPU usage": try a few times before failing.
    let create = [
        "create",
        "-f",
        "luks",
        "--object",
        &secret,
        "-o",
        "key-secret=sec0,iter-time=10",
        s(&vol),
        "2M",
    ];
    if (0..4).all(|_| run("qemu-img", create, None).code != 0) {
        run("qemu-img", create, None).ok();
    }
    run(
        "qemu-img",
        [
            "convert",
            "-n",
            "--object",
            &secret,
            "-f",
            "raw",
            s(&src),
            "--target-image-opts",
            &format!("driver=luks,file.filename={},key-secret=sec0", s(&vol)),
        ],
        None,
    )
    .ok();
    sv(["test-key", "--key-file", s(&pass), s(&vol)]).ok();
    let dst = dir.join("out.raw");
    sv(["export", "--key-file", s(&pass), s(&vol), s(&dst)]).ok();
    assert_eq!(std::fs::read(&dst).unwrap(), plain);
    let dump = sv(["dump", s(&vol)]).ok().out();
    assert!(dump.contains("Version:       \t1"), "{dump}");
}

#[test]
fn qemu_detached_luks1_header_with_cryptsetup() {
    let d = tmpdir();
    let dir = d.path();
    let (key, _) = machine_key(dir, "key");
    let (vol, hdr) = (dir.join("data.img"), dir.join("vol.hdr"));
    sv([
        "format",
        "--type",
        "luks1",
        "--header",
        s(&hdr),
        "--key-file",
        s(&key),
        "--size",
        "1M",
        s(&vol),
    ])
    .ok();
    assert_eq!(std::fs::metadata(&vol).unwrap().len(), 1 << 20);
    assert_cs_opens(&key, Some(&hdr), &vol);
    let plain = random_bytes(1 << 20);
    let src = write_secret(dir, "plain", &plain);
    sv([
        "import",
        "--header",
        s(&hdr),
        "--key-file",
        s(&key),
        s(&src),
        s(&vol),
    ])
    .ok();
    let dst = dir.join("out.raw");
    sv([
        "export",
        "--header",
        s(&hdr),
        "--key-file",
        s(&key),
        s(&vol),
        s(&dst),
    ])
    .ok();
    assert_eq!(std::fs::read(&dst).unwrap(), plain);
}
