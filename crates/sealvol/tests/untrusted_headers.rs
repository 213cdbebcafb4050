//! Issue 9: keys and headers that would cost the owner their data or the host its time.
//!
//! - A passphrase (any script, any line ending, hex or base64 text) gets Argon2id; only a key
//!   that cannot be typed text gets the machine-key PBKDF2 at 1000 iterations.
//! - A key file other users can read gets a warning.
//! - A data segment (LUKS2) or payload (LUKS1) at offset 0 is valid only with a detached
//!   header; used attached it is refused for reading and writing, naming the offsets, and
//!   nothing is written.
//! - A header asking for hostile KDF costs is refused before any work, naming the keyslot and
//!   the option that raises the limit; SIGINT and SIGTERM end a running derivation at once.
//!
//! `cli_…` tests need only the binary; `cryptsetup_…` tests also run cryptsetup 2.6.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The keyslot KDF of `vol` as `sealvol dump --json` reports it.
fn keyslot_kdf(vol: &Path) -> Value {
    let d = sv(["--json", "dump", s(vol)]).ok().json();
    d["metadata"]["keyslots"]["0"]["kdf"].clone()
}

/// Formats a 1 MiB LUKS2 volume `name` with the key in `key` and `extra` options.
fn format(dir: &Path, name: &str, key: &Path, extra: &[&str]) -> PathBuf {
    let vol = dir.join(name);
    let mut args = vec!["format", "--key-file", s(key), "--size", "1M"];
    args.extend_from_slice(extra);
    args.push(s(&vol));
    sv(args).ok();
    vol
}

/// Passphrases that the old rule ("32+ bytes with a byte outside printable ASCII, or hex or
/// base64 text") took for machine keys and protected with 1000 PBKDF2 iterations.
#[test]
fn cli_passphrases_in_any_script_and_line_ending_get_argon2id() {
    let d = tmpdir();
    let phrases: [(&str, &[u8]); 8] = [
        (
            "cyrillic",
            "Пароль для моего тома: очень длинный".as_bytes(),
        ),
        (
            "german",
            "Größenwahnsinnige Schlüssel öffnen Türen\n".as_bytes(),
        ),
        ("chinese", "这是一个很长的中文密码用于测试".as_bytes()),
        ("emoji-32-bytes", "🔑🔑🔑🔑🔑🔑🔑🔑".as_bytes()),
        ("crlf", b"correct horse battery staple and more words\r\n"),
        (
            "hex",
            b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
        ("base64", b"q83vEjRWd4Gvh2aP5XyZ0bCdEfGhIjKlMnOpQrStUvWx\n"),
        ("ascii", b"correct horse battery staple"),
    ];
    for (name, phrase) in phrases {
        let key = write_secret(d.path(), name, phrase);
        // A short benchmark keeps the test fast; it does not change which KDF is chosen.
        let vol = format(
            d.path(),
            &format!("{name}.img"),
            &key,
            &["--iter-time", "50", "--pbkdf-memory", "16384"],
        );
        let kdf = keyslot_kdf(&vol);
        assert_eq!(kdf["type"], "argon2id", "{name}: {kdf}");
        sv(["test-key", "--key-file", s(&key), s(&vol)]).ok();
    }
}

#[test]
fn cli_keys_that_cannot_be_text_get_the_machine_kdf_and_others_only_when_asked() {
    let d = tmpdir();
    for len in [32usize, 64] {
        let mut key = random_bytes(len);
        key[0] = 0xff; // never UTF-8
        let kf = write_secret(d.path(), &format!("k{len}"), &key);
        let vol = format(d.path(), &format!("m{len}.img"), &kf, &[]);
        let kdf = keyslot_kdf(&vol);
        assert_eq!(kdf["type"], "pbkdf2", "{len}-byte random key: {kdf}");
        assert_eq!(json_u64(&kdf["iterations"]), 1000, "{kdf}");
    }
    // A binary key of another length may still be a passphrase in some encoding.
    let mut odd = random_bytes(48);
    odd[0] = 0xff;
    let kf = write_secret(d.path(), "k48", &odd);
    let vol = format(
        d.path(),
        "m48.img",
        &kf,
        &["--iter-time", "50", "--pbkdf-memory", "16384"],
    );
    assert_eq!(keyslot_kdf(&vol)["type"], "argon2id");
    // Hex text of a random key (what qemu's LUKS driver needs) is a machine key when the
    // user says so.
    let (hexf, _) = hex_key(d.path());
    let vol = format(d.path(), "hex.img", &hexf, &["--key-profile", "machine"]);
    let kdf = keyslot_kdf(&vol);
    assert_eq!(kdf["type"], "pbkdf2");
    assert_eq!(json_u64(&kdf["iterations"]), 1000);
}

#[test]
fn cli_key_files_readable_by_others_get_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmpdir();
    let (key, _) = machine_key(d.path(), "key");
    let vol = format(d.path(), "v.img", &key, &[]);
    let quiet = sv(["test-key", "--key-file", s(&key), s(&vol)]).ok();
    assert!(!quiet.err().contains("readable"), "{}", quiet.err());
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        sv(["test-key", "--key-file", s(&key), s(&vol)])
            .ok()
            .stderr_mentions("readable by other users")
            .stderr_mentions(&format!("mode {mode:04o}"))
            .stderr_mentions("chmod 600");
    }
}

/// A detached header (data offset 0) used as if attached to a volume file: every verb that
/// reads or writes data refuses, naming the offsets, and the file is unchanged.
fn check_offset_zero_refused(dir: &Path, header: &Path, key: &Path, what: &str) {
    // The header's bytes at the start of a 32 MiB "volume": the attached layout.
    let vol = dir.join(format!("{what}-attached.img"));
    let mut bytes = std::fs::read(header).unwrap();
    bytes.resize(32 << 20, 0);
    std::fs::write(&vol, &bytes).unwrap();
    let src = dir.join("plain");
    std::fs::write(&src, random_bytes(64 << 10)).unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let sock = dir.join("nbd.sock");
    let out = dir.join("out");
    for verb in [
        vec!["import", "--key-file", s(key), s(&src), s(&vol)],
        vec!["export", "--key-file", s(key), s(&vol), s(&out)],
        vec![
            "open",
            "--key-file",
            s(key),
            "--mount",
            s(&mnt),
            "--mkfs",
            "ext4",
            s(&vol),
        ],
        vec![
            "serve",
            "nbd",
            "--key-file",
            s(key),
            "--socket",
            s(&sock),
            s(&vol),
        ],
    ] {
        let r = sv(&verb)
            .code(2)
            .stderr_mentions("starts at byte 0")
            .stderr_mentions("--header");
        assert!(r.err().contains("ends at byte"), "{what}: {}", r.err());
        assert_unchanged(&vol, &bytes, &format!("{what}: {}", verb[0]));
        assert!(!out.exists() && !sock.exists(), "{what}: {}", verb[0]);
    }
    // Detached, as it was made, the same header works.
    let data = dir.join(format!("{what}-data.img"));
    sparse_file(&data, 1 << 20);
    sv([
        "import",
        "--key-file",
        s(key),
        "--header",
        s(header),
        s(&src),
        s(&data),
    ])
    .ok();
}

#[test]
fn cryptsetup_data_at_offset_zero_is_refused_with_an_attached_header() {
    let d = tmpdir();
    let dir = d.path();
    let (key, _) = machine_key(dir, "key");
    // sealvol's detached LUKS2 and LUKS1 headers: data offset 0.
    for (name, ty) in [("luks2", "luks2"), ("luks1", "luks1")] {
        let header = dir.join(format!("{name}.hdr"));
        let data = dir.join(format!("{name}.data"));
        sv([
            "format",
            "--type",
            ty,
            "--key-file",
            s(&key),
            "--header",
            s(&header),
            "--size",
            "1M",
            s(&data),
        ])
        .ok();
        check_offset_zero_refused(dir, &header, &key, name);
    }
    // cryptsetup's own detached LUKS2 header: offset 0 as well.
    let header = dir.join("cs.hdr");
    let data = dir.join("cs.data");
    sparse_file(&data, 1 << 20);
    sparse_file(&header, 16 << 20);
    cryptsetup([
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        s(&key),
        "--header",
        s(&header),
        s(&data),
    ])
    .ok();
    assert_eq!(segment(&luks_json(&header)).offset, 0);
    check_offset_zero_refused(dir, &header, &key, "cryptsetup");
}

/// How long `sealvol ARGS` took, and what it said.
fn timed(args: &[&str]) -> (Run, Duration) {
    let t = Instant::now();
    let r = sv(args);
    (r, t.elapsed())
}

#[test]
fn cryptsetup_hostile_kdf_costs_are_refused_before_any_work() {
    let d = tmpdir();
    let dir = d.path();
    let (key, _) = machine_key(dir, "key");
    let (new, _) = machine_key(dir, "new");
    // (case, the object named, the option named, the edit)
    type Case = (&'static str, &'static str, &'static str, fn(&mut Value));
    let cases: [Case; 4] = [
        (
            "pbkdf2-iterations",
            "keyslot 0",
            "--kdf-max-iterations",
            |m| {
                m["keyslots"]["0"]["kdf"]["iterations"] = 4294967295u32.into();
            },
        ),
        ("argon2-memory", "keyslot 0", "--kdf-max-memory", |m| {
            m["keyslots"]["0"]["kdf"] = serde_json::json!({
                "type": "argon2id", "time": 4, "memory": 4194304, "cpus": 1,
                "salt": m["keyslots"]["0"]["kdf"]["salt"].clone()
            });
        }),
        ("argon2-passes", "keyslot 0", "--kdf-max-passes", |m| {
            m["keyslots"]["0"]["kdf"] = serde_json::json!({
                "type": "argon2id", "time": 4294967295u32, "memory": 1048576, "cpus": 4,
                "salt": m["keyslots"]["0"]["kdf"]["salt"].clone()
            });
        }),
        (
            "digest-iterations",
            "digest 0",
            "--kdf-max-iterations",
            |m| {
                m["digests"]["0"]["iterations"] = 4294967295u32.into();
            },
        ),
    ];
    for (name, object, option, edit) in cases {
        let vol = format(dir, &format!("{name}.img"), &key, &[]);
        rewrite_luks2_json(&vol, edit);
        // cryptsetup takes the header as valid: the costs are legal, only hostile.
        cryptsetup(["luksDump", s(&vol)]).ok();
        let before = snapshot(&vol);
        for verb in [
            vec!["test-key", "--key-file", s(&key), s(&vol)],
            vec![
                "test-key",
                "--key-file",
                s(&key),
                "--key-slot",
                "0",
                s(&vol),
            ],
            vec![
                "add-key",
                "--key-file",
                s(&key),
                "--new-key-file",
                s(&new),
                s(&vol),
            ],
        ] {
            let (r, took) = timed(&verb);
            let r = r.code(2).stderr_mentions(object).stderr_mentions(option);
            assert!(
                took < Duration::from_secs(2),
                "{name}: {} took {took:?}: {}",
                verb[0],
                r.err()
            );
            assert_unchanged(&vol, &before, &format!("{name}: {}", verb[0]));
        }
        // JSON mode reports the same refusal.
        let r = sv(["--json", "test-key", "--key-file", s(&key), s(&vol)]).code(2);
        assert!(r.json()["error"].as_str().unwrap().contains(option));
    }
}

#[test]
fn cli_hostile_luks1_iterations_are_refused_and_limits_can_be_raised() {
    let d = tmpdir();
    let dir = d.path();
    let (key, _) = machine_key(dir, "key");
    let vol = dir.join("v1.img");
    sv([
        "format",
        "--type",
        "luks1",
        "--key-file",
        s(&key),
        "--size",
        "1M",
        s(&vol),
    ])
    .ok();
    let good = snapshot(&vol);
    // Key slot 0 asking for 2^32 - 1 iterations; then the master key digest.
    set_luks1_u32(&vol, Some(0), 4, u32::MAX);
    let (r, took) = timed(&["test-key", "--key-file", s(&key), s(&vol)]);
    r.code(2)
        .stderr_mentions("keyslot 0")
        .stderr_mentions("4294967295")
        .stderr_mentions("--kdf-max-iterations");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    std::fs::write(&vol, &good).unwrap();
    set_luks1_u32(&vol, None, 164, u32::MAX);
    timed(&["test-key", "--key-file", s(&key), s(&vol)])
        .0
        .code(2)
        .stderr_mentions("digest");

    // A header over a tightened limit opens once the limit allows it.
    let vol = format(
        dir,
        "v2.img",
        &key,
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "20000"],
    );
    sv([
        "test-key",
        "--kdf-max-iterations",
        "10000",
        "--key-file",
        s(&key),
        s(&vol),
    ])
    .code(2)
    .stderr_mentions("20000 PBKDF2 iterations");
    sv([
        "--kdf-max-iterations",
        "20000",
        "test-key",
        "--key-file",
        s(&key),
        s(&vol),
    ])
    .ok();
}

/// SIGINT and SIGTERM end a long key derivation at once, and a writer interrupted while
/// deriving has written nothing.
#[test]
fn cli_sigint_and_sigterm_interrupt_a_running_kdf() {
    // A child inherits an ignored SIGINT: a test run started as a background job of a
    // shell without job control (`cmd &` in a script) could never pass this, so say so.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn in /proc/self/status");
    assert!(
        ignored & (1 << (2 - 1)) == 0,
        "SIGINT is ignored in this test's environment (started as `cmd &` by a shell \
         without job control?): run the tests in the foreground or with job control"
    );
    let d = tmpdir();
    let dir = d.path();
    let (key, _) = machine_key(dir, "key");
    let (new, _) = machine_key(dir, "new");
    let vol = format(dir, "slow.img", &key, &[]);
    // Within the default limit, but many seconds of work.
    rewrite_luks2_json(&vol, |m| {
        m["keyslots"]["0"]["kdf"]["iterations"] = 60_000_000u32.into();
    });
    let before = snapshot(&vol);
    for (signal, verb) in [
        ("INT", "test-key"),
        ("TERM", "test-key"),
        ("INT", "add-key"),
    ] {
        let mut cmd = Command::new(SEALVOL);
        cmd.args([verb, "--key-file", s(&key)]);
        if verb == "add-key" {
            cmd.args(["--new-key-file", s(&new)]);
        }
        let mut child = KillOnDrop(
            cmd.arg(&vol)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let child = &mut child.0;
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{verb} finished before the signal: the derivation is not long enough to test"
        );
        let sent = Instant::now();
        run("kill", [format!("-{signal}"), child.id().to_string()], None).ok();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(1),
                "{verb} still running 1 s after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success(), "{verb} after SIG{signal}: {status}");
        assert_unchanged(&vol, &before, &format!("{verb} after SIG{signal}"));
    }
}

/// A child process killed when the test ends, whether it passed or panicked (a failed
/// check must not leave a key derivation running for minutes).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
