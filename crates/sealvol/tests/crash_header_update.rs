//! Crash injection for header updates: `add-key`, `change-key` and `remove-key` are killed
//! with SIGKILL at every write they make to the header file, each time halfway through that
//! write (a torn write), through the debug-build hook `SEALVOL_TEST_CRASH_AT=header-write:N`.
//!
//! After every crash the volume must still open with a key that opened it before (or, for
//! change-key, with the old or the new key), the data must read back unchanged, and once
//! `sealvol repair` has run, cryptsetup must accept the header and agree on which keys open
//! it. Never may a crash leave a volume whose data remains while no key opens it.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use common::*;

const CRASH_ENV: &str = "SEALVOL_TEST_CRASH_AT";

/// Runs `sealvol ARGS` with the crash hook armed at write `n`; true if it was killed.
fn run_crashing(args: &[&str], n: u32) -> bool {
    let out = Command::new(SEALVOL)
        .args(args)
        .env(CRASH_ENV, format!("header-write:{n}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sealvol");
    if out.status.signal() == Some(9) {
        return true;
    }
    assert!(
        out.status.success(),
        "sealvol {args:?} (crash at {n}) failed without crashing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

fn opens(vol: &Path, key: &Path) -> bool {
    let r = sv([
        "test-key",
        "--key-file",
        key.to_str().unwrap(),
        vol.to_str().unwrap(),
    ]);
    assert!(r.code == 0 || r.code == 1, "test-key errored: {}", r.err());
    r.code == 0
}

fn exported(vol: &Path, key: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("export.out");
    sv([
        "export",
        "--key-file",
        key.to_str().unwrap(),
        vol.to_str().unwrap(),
        out.to_str().unwrap(),
    ])
    .ok();
    std::fs::read(out).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    pristine: std::path::PathBuf,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    plain: Vec<u8>,
}

/// A 4 MiB volume with key A (and, when `with_b`, key B too) holding random data.
fn setup(with_b: bool) -> Setup {
    let dir = tmpdir();
    let d = dir.path();
    let (a, _) = machine_key(d, "a");
    let (b, _) = machine_key(d, "b");
    let pristine = d.join("pristine.img");
    let p = pristine.to_str().unwrap();
    sv([
        "format",
        "--key-file",
        a.to_str().unwrap(),
        "--size",
        "4M",
        p,
    ])
    .ok();
    let plain = random_bytes(4 << 20);
    let plain_path = d.join("plain");
    std::fs::write(&plain_path, &plain).unwrap();
    sv([
        "import",
        "--key-file",
        a.to_str().unwrap(),
        plain_path.to_str().unwrap(),
        p,
    ])
    .ok();
    if with_b {
        sv([
            "add-key",
            "--key-file",
            a.to_str().unwrap(),
            "--new-key-file",
            b.to_str().unwrap(),
            p,
        ])
        .ok();
    }
    Setup {
        dir,
        pristine,
        a,
        b,
        plain,
    }
}

/// Crashes `args` (with VOLUME appended) at every header write in turn; after each crash calls
/// `check(volume, setup)`. Returns how many crash points there were.
fn crash_everywhere(s: &Setup, args: &[&str], check: impl Fn(&Path, &Setup)) -> u32 {
    let vol = s.dir.path().join("vol.img");
    let mut n = 1;
    loop {
        std::fs::copy(&s.pristine, &vol).unwrap();
        let mut full: Vec<&str> = args.to_vec();
        full.push(vol.to_str().unwrap());
        if !run_crashing(&full, n) {
            // The operation completed: every write point has been crashed at.
            check(&vol, s);
            return n - 1;
        }
        check(&vol, s);
        // After repair the header must satisfy cryptsetup too.
        sv(["repair", vol.to_str().unwrap()]).ok();
        cryptsetup(["luksDump", vol.to_str().unwrap()]).ok();
        for key in [&s.a, &s.b] {
            let ours = opens(&vol, key);
            let theirs = cs_test_passphrase(key, None, &vol) == 0;
            assert_eq!(
                ours, theirs,
                "sealvol and cryptsetup disagree on a key after crash {n}"
            );
        }
        n += 1;
        assert!(n < 64, "more than 64 header writes for one update");
    }
}

#[test]
fn cryptsetup_add_key_survives_a_crash_at_every_header_write() {
    let s = setup(false);
    let (a, b) = (
        s.a.to_str().unwrap().to_owned(),
        s.b.to_str().unwrap().to_owned(),
    );
    let points = crash_everywhere(
        &s,
        &["add-key", "--key-file", &a, "--new-key-file", &b],
        |vol, s| {
            assert!(
                opens(vol, &s.a),
                "the old key no longer opens after a crashed add-key"
            );
            assert!(exported(vol, &s.a, s.dir.path()) == s.plain, "data changed");
        },
    );
    assert!(points >= 3, "add-key made only {points} header writes");
}

#[test]
fn cryptsetup_change_key_survives_a_crash_at_every_header_write() {
    let s = setup(false);
    let (a, b) = (
        s.a.to_str().unwrap().to_owned(),
        s.b.to_str().unwrap().to_owned(),
    );
    let points = crash_everywhere(
        &s,
        &["change-key", "--key-file", &a, "--new-key-file", &b],
        |vol, s| {
            let key = if opens(vol, &s.a) {
                &s.a
            } else {
                assert!(
                    opens(vol, &s.b),
                    "neither the old nor the new key opens after a crash"
                );
                &s.b
            };
            assert!(exported(vol, key, s.dir.path()) == s.plain, "data changed");
        },
    );
    assert!(points >= 3, "change-key made only {points} header writes");
}

#[test]
fn cryptsetup_remove_key_survives_a_crash_at_every_header_write() {
    let s = setup(true);
    let b = s.b.to_str().unwrap().to_owned();
    let points = crash_everywhere(&s, &["remove-key", "--key-file", &b], |vol, s| {
        assert!(
            opens(vol, &s.a),
            "the kept key no longer opens after a crashed remove-key"
        );
        assert!(exported(vol, &s.a, s.dir.path()) == s.plain, "data changed");
    });
    assert!(points >= 2, "remove-key made only {points} header writes");
}
