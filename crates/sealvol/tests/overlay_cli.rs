//! `sealvol overlay …` and overlays served by `open` / `serve nbd` / `volume create --base`,
//! against real peers: ext4 and `e2fsck`, loop devices and FUSE mounts, `qemu-img` and
//! `qemu-io` over NBD. Every test has its own runtime directory (`SEALVOL_RUN_DIR`).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A scratch directory with its own runtime directory; every mount made through it is
/// closed when it is dropped.
struct Env {
    dir: tempfile::TempDir,
    mounts: std::cell::RefCell<Vec<PathBuf>>,
}

impl Env {
    fn new() -> Self {
        let e = Env {
            dir: tmpdir(),
            mounts: Default::default(),
        };
        std::fs::create_dir_all(e.run_dir()).unwrap();
        e
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run_dir(&self) -> PathBuf {
        self.p("run")
    }

    /// `sealvol ARGS` with this test's runtime directory.
    fn sv<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = Command::new(SEALVOL)
            .env("SEALVOL_RUN_DIR", self.run_dir())
            .env_remove("RUST_LOG")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run sealvol");
        Run {
            cmdline: format!("sealvol {args:?}"),
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// A new empty mount point.
    fn mnt(&self, name: &str) -> PathBuf {
        let m = self.p(name);
        std::fs::create_dir_all(&m).unwrap();
        self.mounts.borrow_mut().push(m.clone());
        m
    }

    /// `open --json` of the overlay `ov` (with `extra` options) on `mnt`.
    fn open(&self, ov: &Path, key: &Path, base: &[&OsStr], extra: &[&str], mnt: &Path) -> Run {
        let mut a: Vec<&OsStr> = vec!["--json".as_ref(), "open".as_ref(), "--key-file".as_ref()];
        a.push(key.as_os_str());
        a.extend_from_slice(base);
        a.extend(extra.iter().map(OsStr::new));
        a.extend(["--mount".as_ref(), mnt.as_os_str(), ov.as_os_str()]);
        self.sv(a)
    }

    /// `close --json`: the checkpoint it printed.
    fn close(&self, target: &Path) -> String {
        let v = self
            .sv(["--json".as_ref(), "close".as_ref(), target.as_os_str()])
            .ok()
            .json();
        assert_eq!(v["closed"], true, "{v}");
        v["checkpoint"].as_str().expect("a checkpoint").to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for m in self.mounts.borrow().iter() {
            let _ = Command::new(SEALVOL)
                .env("SEALVOL_RUN_DIR", self.run_dir())
                .arg("close")
                .arg(m)
                .output();
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}

/// A 64 MiB ext4 image (4 KiB blocks, the overlay's sector) holding `base.txt`.
fn ext4_base(e: &Env) -> PathBuf {
    let img = e.p("base.img");
    sparse_file(&img, 64 << 20);
    run(
        need("mkfs.ext4"),
        ["-q", "-F", "-b", "4096", "-E", "root_owner=0:0"]
            .iter()
            .map(OsStr::new)
            .chain([img.as_os_str()]),
        None,
    )
    .ok();
    // The file goes in through the kernel's ext4, mounted from a loop device.
    let m = e.p("mkbase");
    std::fs::create_dir_all(&m).unwrap();
    run(
        "mount",
        [
            "-o".as_ref(),
            "loop".as_ref(),
            img.as_os_str(),
            m.as_os_str(),
        ],
        None,
    )
    .ok();
    std::fs::write(m.join("base.txt"), b"from the shared base\n").unwrap();
    run("umount", [m.as_os_str()], None).ok();
    img
}

/// `verity format` of `img` into `img.hash`: the base options of a verified base.
fn verity_base(e: &Env, img: &Path) -> Vec<std::ffi::OsString> {
    let hash = img.with_extension("hash");
    let v = e
        .sv([
            "--json".as_ref(),
            "verity".as_ref(),
            "format".as_ref(),
            img.as_os_str(),
            hash.as_os_str(),
        ])
        .ok()
        .json();
    let root = v["root_hash"].as_str().unwrap().to_string();
    vec![
        "--base".into(),
        img.into(),
        "--base-hash".into(),
        hash.into(),
        "--base-root".into(),
        root.into(),
    ]
}

fn os(v: &[std::ffi::OsString]) -> Vec<&OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

fn create(e: &Env, ov: &Path, key: &Path, base: &[&OsStr], extra: &[&str]) -> Value {
    let mut a: Vec<&OsStr> = vec![
        "--json".as_ref(),
        "overlay".as_ref(),
        "create".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ];
    a.extend_from_slice(base);
    a.extend(extra.iter().map(OsStr::new));
    a.push(ov.as_os_str());
    e.sv(a).ok().json()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn sha(path: &Path) -> String {
    run("sha256sum", [path], None).ok().out()[..64].to_string()
}

/// `e2fsck -fn` of the overlay's plaintext, read over NBD by `qemu-img convert`: exit 0.
fn fsck_over_nbd(e: &Env, ov: &Path, key: &Path, base: &[&OsStr]) {
    let sock = e.p("fsck.sock");
    let s = Serving::start(e, ov, key, base, &sock, &["--read-only"]);
    let raw = e.p("fsck.raw");
    s.copy_to(&raw);
    drop(s);
    let r = run(
        need("e2fsck"),
        ["-f".as_ref(), "-n".as_ref(), raw.as_os_str()],
        None,
    );
    assert_eq!(r.code, 0, "e2fsck found damage:\n{}\n{}", r.out(), r.err());
    std::fs::remove_file(raw).unwrap();
}

/// A `sealvol serve nbd` of an overlay in the foreground, stopped (SIGTERM) when dropped.
struct Serving {
    child: Option<Child>,
    sock: PathBuf,
}

impl Serving {
    fn start(e: &Env, ov: &Path, key: &Path, base: &[&OsStr], sock: &Path, extra: &[&str]) -> Self {
        let child = Command::new(SEALVOL)
            .env("SEALVOL_RUN_DIR", e.run_dir())
            .args(["--json", "serve", "nbd", "--key-file"])
            .arg(key)
            .args(base)
            .args(extra)
            .arg("--socket")
            .arg(sock)
            .arg(ov)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sealvol serve nbd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the NBD socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        Serving {
            child: Some(child),
            sock: sock.to_path_buf(),
        }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    /// The whole export's plaintext into the raw file `out`, read by `qemu-img convert`.
    fn copy_to(&self, out: &Path) {
        run(
            need("qemu-img"),
            [
                "convert".as_ref(),
                "-f".as_ref(),
                "raw".as_ref(),
                "-O".as_ref(),
                "raw".as_ref(),
                self.uri().as_ref(),
                out.as_os_str(),
            ],
            None,
        )
        .ok();
    }

    /// SIGTERM, then what it printed: its ready line and its stop line (with the checkpoint).
    fn stop(mut self) -> (i32, String) {
        let child = self.child.take().unwrap();
        run("kill", [child.id().to_string()], None).ok();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).output();
            let _ = c.wait();
        }
    }
}

/// A mounted ext4 on an overlay over a dm-verity-verified base: the export is killed
/// (SIGKILL) in the middle of a large write; the overlay reopens (ext4 replays its journal),
/// what was synced before is there, and `e2fsck -fn` finds the file system clean. The base
/// is never written, and the key is in no argv, environment or log.
#[test]
fn overlay_over_verity_base_survives_a_killed_export_and_fsck() {
    let e = Env::new();
    let (key, key_bytes) = machine_key(e.dir.path(), "key");
    let img = ext4_base(&e);
    let base = verity_base(&e, &img);
    let base_sha = sha(&img);
    let ov = e.p("ov.img");
    create(&e, &ov, &key, &os(&base), &[]);
    let m = e.mnt("m");
    let r = e.open(&ov, &key, &os(&base), &[], &m).ok();
    let opened = r.json();
    let pid = opened["pid"].as_u64().unwrap();
    assert_eq!(
        std::fs::read(m.join("base.txt")).unwrap(),
        b"from the shared base\n"
    );
    // The key nowhere a host user could read it.
    for what in ["cmdline", "environ"] {
        let b = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(!contains(&b, &key_bytes), "the key in the export's {what}");
    }
    let synced = random_bytes(3 << 20);
    std::fs::write(m.join("synced.bin"), &synced).unwrap();
    run("sync", ["-f".as_ref(), m.as_os_str()], None).ok();
    // Writes that go on until the export is killed under them (each pass rewrites 32 MiB
    // and fsyncs; the loop ends on the first failed write).
    let mut dd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while dd if=/dev/urandom of={} bs=1M count=32 conv=fsync 2>/dev/null; do :; done",
            m.join("big.bin").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        dd.try_wait().unwrap().is_none(),
        "the writes failed before the export was killed"
    );
    run("kill", ["-9".to_string(), pid.to_string()], None).ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dd.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = dd.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut logs = r.stdout.clone();
    logs.extend(r.stderr);
    for entry in std::fs::read_dir(e.run_dir()).unwrap().flatten() {
        logs.extend(std::fs::read(entry.path().join("export.log")).unwrap_or_default());
    }
    assert!(!contains(&logs, &key_bytes), "the key in a log");
    assert!(
        !contains(&logs, hex::encode(&key_bytes).as_bytes()),
        "the key in a log"
    );
    // `close` clears what the dead export left (the mount, the loop device, its record).
    e.sv(["close".as_ref(), m.as_os_str()]).ok();
    assert_eq!(sha(&img), base_sha, "the base was written");

    // Reopened: the kernel replays ext4's journal; what was synced is there.
    e.open(&ov, &key, &os(&base), &[], &m).ok();
    assert!(std::fs::read(m.join("synced.bin")).unwrap() == synced);
    std::fs::write(m.join("after.txt"), b"after the crash").unwrap();
    e.close(&m);
    fsck_over_nbd(&e, &ov, &key, &os(&base));
    assert_eq!(sha(&img), base_sha, "the base was written");

    // Another verified image of the same size as the base is refused: the overlay recorded
    // its base's root hash.
    let other = e.p("other.img");
    std::fs::copy(&img, &other).unwrap();
    write_at(&other, 40 << 20, b"another image");
    let other_base = verity_base(&e, &other);
    e.open(&ov, &key, &os(&other_base), &[], &m)
        .fails()
        .stderr_mentions("not the overlay's");
    assert_eq!(
        std::fs::read_dir(&m).unwrap().count(),
        0,
        "something was mounted"
    );
}

/// A saved older copy of the overlay file put back is refused by `--expect-checkpoint`
/// with exit code 1 (`--json`: the error as JSON), nothing mounted; the checkpoint `close`
/// printed is what `overlay checkpoint` says, and the current file opens with it.
#[test]
fn an_older_copy_is_refused_with_expect_checkpoint() {
    let e = Env::new();
    let (key, _) = machine_key(e.dir.path(), "key");
    let img = ext4_base(&e);
    let base = vec!["--base".into(), img.clone().into_os_string()];
    let ov = e.p("ov.img");
    create(&e, &ov, &key, &os(&base), &[]);
    let m = e.mnt("m");
    e.open(&ov, &key, &os(&base), &[], &m).ok();
    std::fs::write(m.join("one"), b"1").unwrap();
    // While served, `overlay checkpoint` needs no key: what the export's last flush recorded.
    run("sync", ["-f".as_ref(), m.as_os_str()], None).ok();
    let live = e
        .sv([
            "--json".as_ref(),
            "overlay".as_ref(),
            "checkpoint".as_ref(),
            ov.as_os_str(),
        ])
        .ok()
        .json();
    assert_eq!(live["verified"], false, "{live}");
    assert!(live["served_by"].as_u64().is_some(), "{live}");
    let first = e.close(&m);
    assert!(
        live["checkpoint"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= first.split(':').next().unwrap().parse::<u64>().unwrap()
    );
    let saved = std::fs::read(&ov).unwrap();
    e.open(&ov, &key, &os(&base), &["--expect-checkpoint", &first], &m)
        .ok();
    std::fs::write(m.join("two"), b"2").unwrap();
    let second = e.close(&m);
    assert_ne!(first, second);
    let v = e
        .sv([
            "--json".as_ref(),
            "overlay".as_ref(),
            "checkpoint".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            ov.as_os_str(),
        ])
        .ok()
        .json();
    assert_eq!(v["checkpoint"], second.as_str(), "{v}");

    // The host puts the saved copy back.
    std::fs::write(&ov, &saved).unwrap();
    let r = e
        .open(&ov, &key, &os(&base), &["--expect-checkpoint", &second], &m)
        .code(1);
    let err = r.json();
    assert!(err["error"].as_str().unwrap().contains("rollback"), "{err}");
    assert_eq!(
        std::fs::read_dir(&m).unwrap().count(),
        0,
        "something was mounted"
    );
    // Without the expectation the old copy opens (what the checkpoint is for).
    e.open(&ov, &key, &os(&base), &["--expect-checkpoint", &first], &m)
        .ok();
    assert!(m.join("one").exists() && !m.join("two").exists());
    e.close(&m);
}

/// qemu's own NBD client writes and reads an overlay over a plain base image: reads are the
/// base where nothing was written, the written pattern where it was, it survives a restart,
/// the base file is never written and `--read-only` refuses writes.
#[test]
fn qemu_img_reads_and_writes_an_overlay_over_nbd() {
    let e = Env::new();
    let (key, _) = machine_key(e.dir.path(), "key");
    let img = e.p("base.raw");
    let base_bytes = random_bytes(16 << 20);
    std::fs::write(&img, &base_bytes).unwrap();
    let base_sha = sha(&img);
    let base = vec!["--base".into(), img.clone().into_os_string()];
    let ov = e.p("ov.img");
    create(&e, &ov, &key, &os(&base), &[]);
    let sock = e.p("nbd.sock");
    let s = Serving::start(&e, &ov, &key, &os(&base), &sock, &[]);
    let qemu_io = need("qemu-io");
    run(
        &qemu_io,
        ["-f", "raw", "-c", "write -P 0xab 1M 3M", &s.uri()],
        None,
    )
    .ok();
    let (code, out) = s.stop();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"checkpoint\""),
        "no checkpoint printed: {out}"
    );

    let s = Serving::start(&e, &ov, &key, &os(&base), &sock, &["--read-only"]);
    let raw = e.p("out.raw");
    s.copy_to(&raw);
    let got = std::fs::read(&raw).unwrap();
    assert_eq!(got.len(), 16 << 20);
    assert!(
        got[..1 << 20] == base_bytes[..1 << 20],
        "the base before the write"
    );
    assert!(
        got[1 << 20..4 << 20].iter().all(|&b| b == 0xab),
        "the write"
    );
    assert!(
        got[4 << 20..] == base_bytes[4 << 20..],
        "the base after the write"
    );
    let w = run(&qemu_io, ["-f", "raw", "-c", "write 0 4k", &s.uri()], None);
    assert!(
        w.code != 0
            || w.out().contains("failed")
            || w.err().contains("ermission")
            || w.err().contains("read-only"),
        "a read-only export took a write: {} {}",
        w.out(),
        w.err()
    );
    drop(s);
    assert_eq!(sha(&img), base_sha, "the base was written");
}

/// Snapshot, then clone: what the clone writes (through its own mount, with its own key)
/// is invisible to the overlay that goes on over the same snapshot, and the other way
/// round; the source's key does not open the clone.
#[test]
fn clone_writes_are_invisible_to_the_source_through_mounts() {
    let e = Env::new();
    let (key, _) = machine_key(e.dir.path(), "key");
    let (key2, _) = machine_key(e.dir.path(), "key2");
    let img = ext4_base(&e);
    let base = vec!["--base".into(), img.clone().into_os_string()];
    let ov = e.p("ov.img");
    create(&e, &ov, &key, &os(&base), &[]);
    let m = e.mnt("m");
    e.open(&ov, &key, &os(&base), &[], &m).ok();
    std::fs::write(m.join("shared.txt"), b"before the snapshot").unwrap();
    e.close(&m);
    let snap = e.p("snap.img");
    let v = e
        .sv([
            "--json".as_ref(),
            "overlay".as_ref(),
            "snapshot".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            ov.as_os_str(),
            snap.as_os_str(),
        ])
        .ok()
        .json();
    assert_eq!(v["top"]["lower"][0], snap.to_str().unwrap(), "{v}");
    let clone = e.p("clone.img");
    e.sv([
        "overlay".as_ref(),
        "clone".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--new-key-file".as_ref(),
        key2.as_os_str(),
        snap.as_os_str(),
        clone.as_os_str(),
    ])
    .ok();
    // The clone: its own key only.
    let c = e.mnt("c");
    e.open(&clone, &key, &os(&base), &[], &c).code(1);
    e.open(&clone, &key2, &os(&base), &[], &c).ok();
    assert_eq!(
        std::fs::read(c.join("shared.txt")).unwrap(),
        b"before the snapshot"
    );
    std::fs::write(c.join("shared.txt"), b"changed in the clone").unwrap();
    std::fs::write(c.join("clone-only.txt"), b"clone").unwrap();
    e.close(&c);
    // The source goes on over the snapshot, untouched by the clone, and writes its own.
    e.open(&ov, &key, &os(&base), &[], &m).ok();
    assert_eq!(
        std::fs::read(m.join("shared.txt")).unwrap(),
        b"before the snapshot"
    );
    assert!(!m.join("clone-only.txt").exists());
    std::fs::write(m.join("source-only.txt"), b"source").unwrap();
    e.close(&m);
    e.open(&clone, &key2, &os(&base), &[], &c).ok();
    assert!(!c.join("source-only.txt").exists());
    assert_eq!(
        std::fs::read(c.join("shared.txt")).unwrap(),
        b"changed in the clone"
    );
    e.close(&c);

    // Flattened, the clone stands on the base alone: the snapshot can go.
    let f = keyed(&e, "flatten", &key2, &clone, &[]).ok().json();
    assert_eq!(f["layers"], 1, "{f}");
    let s = keyed(&e, "status", &key2, &clone, &[]).ok().json();
    assert_eq!(s["lower_files"], serde_json::json!([]), "{s}");
    std::fs::rename(&snap, e.p("snap.moved")).unwrap();
    e.open(&clone, &key2, &os(&base), &[], &c).ok();
    assert_eq!(
        std::fs::read(c.join("shared.txt")).unwrap(),
        b"changed in the clone"
    );
    assert_eq!(
        std::fs::read(c.join("base.txt")).unwrap(),
        b"from the shared base\n"
    );
    e.close(&c);
    // The source still needs its snapshot, and says which file is missing.
    e.open(&ov, &key, &os(&base), &[], &m)
        .fails()
        .stderr_mentions("snap.img");
}

fn keyed(e: &Env, verb: &str, key: &Path, ov: &Path, extra: &[&str]) -> Run {
    let mut a: Vec<&OsStr> = vec![
        "--json".as_ref(),
        "overlay".as_ref(),
        verb.as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ];
    a.extend(extra.iter().map(OsStr::new));
    a.push(ov.as_os_str());
    e.sv(a)
}

/// Rekey, then retire the old generation, through the CLI: the data written under both
/// generations reads back through a mount, the old generation is gone from `status`; then
/// the keyslot verbs: a new key added opens it, the old one removed no longer does (exit 1).
#[test]
fn rekey_retire_and_keyslots_through_the_cli() {
    let e = Env::new();
    let (key, _) = machine_key(e.dir.path(), "key");
    let (key2, _) = machine_key(e.dir.path(), "key2");
    let ov = e.p("ov.img");
    create(&e, &ov, &key, &[], &["--size", "32M"]);
    let m = e.mnt("m");
    e.open(&ov, &key, &[], &["--mkfs", "ext4"], &m).ok();
    let one = random_bytes(2 << 20);
    std::fs::write(m.join("one"), &one).unwrap();
    e.close(&m);
    let r = keyed(&e, "rekey", &key, &ov, &[]).ok().json();
    assert_eq!(r["generation"], 2, "{r}");
    e.open(&ov, &key, &[], &[], &m).ok();
    let two = random_bytes(2 << 20);
    std::fs::write(m.join("two"), &two).unwrap();
    e.close(&m);
    let s = keyed(&e, "status", &key, &ov, &[]).ok().json();
    let gens = s["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2, "{s}");
    assert!(gens[0]["bytes"].as_u64().unwrap() >= 2 << 20, "{s}");
    let r = keyed(&e, "retire", &key, &ov, &["--generation", "1"])
        .ok()
        .json();
    assert_eq!(
        (r["generation"].as_u64(), r["into"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    let s = keyed(&e, "status", &key, &ov, &[]).ok().json();
    let gens = s["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 1, "{s}");
    assert_eq!(gens[0]["id"], 2, "{s}");
    // Retiring the current generation is refused.
    keyed(&e, "retire", &key, &ov, &["--generation", "2"]).fails();
    e.open(&ov, &key, &[], &[], &m).ok();
    assert!(std::fs::read(m.join("one")).unwrap() == one);
    assert!(std::fs::read(m.join("two")).unwrap() == two);
    e.close(&m);

    // Keyslots of the embedded header.
    e.sv([
        "overlay".as_ref(),
        "add-key".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--new-key-file".as_ref(),
        key2.as_os_str(),
        ov.as_os_str(),
    ])
    .ok();
    keyed(&e, "status", &key2, &ov, &[]).ok();
    keyed(&e, "remove-key", &key, &ov, &[]).ok();
    keyed(&e, "status", &key, &ov, &[]).code(1);
    e.open(&ov, &key, &[], &[], &m).code(1);
    e.open(&ov, &key2, &[], &[], &m).ok();
    assert!(std::fs::read(m.join("two")).unwrap() == two);
    e.close(&m);
}

/// `volume create --base`: an overlay volume over a shared ext4 image, mounted with the
/// base's files; its record says so; close records the checkpoint, and an older copy of its
/// disk put back is refused at the next open (exit 1); destroy removes it and leaves the
/// shared base as it was.
#[test]
fn volume_create_with_a_base_round_trip() {
    let e = Env::new();
    let (key, _) = machine_key(e.dir.path(), "key");
    let img = ext4_base(&e);
    let base_sha = sha(&img);
    let state = e.p("state");
    let vol = |args: &[&OsStr]| {
        let mut a: Vec<&OsStr> = vec![
            "--json".as_ref(),
            "volume".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ];
        a.extend_from_slice(args);
        e.sv(a)
    };
    let v = vol(&[
        "create".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--base".as_ref(),
        img.as_os_str(),
        "--mount".as_ref(),
        "w1".as_ref(),
    ])
    .ok()
    .json();
    assert_eq!(v["created"], true, "{v}");
    let mnt = state.join("mnt/w1");
    e.mounts.borrow_mut().push(mnt.clone());
    assert_eq!(
        std::fs::read(mnt.join("base.txt")).unwrap(),
        b"from the shared base\n"
    );
    std::fs::write(mnt.join("mine.txt"), b"w1").unwrap();
    let s = vol(&["status".as_ref(), "w1".as_ref()]).ok().json();
    assert!(
        s.to_string().contains("base.img"),
        "the record names its base: {s}"
    );
    vol(&["close".as_ref(), "w1".as_ref()]).ok();
    let disk = state.join("volumes/w1/disk.img");
    let saved = std::fs::read(&disk).unwrap();
    let open = |k: &Path| {
        vol(&[
            "open".as_ref(),
            "--key-file".as_ref(),
            k.as_os_str(),
            "w1".as_ref(),
        ])
    };
    open(&key).ok();
    std::fs::write(mnt.join("later.txt"), b"later").unwrap();
    vol(&["close".as_ref(), "w1".as_ref()]).ok();
    // An older copy of the disk is refused; the current one opens.
    let current = std::fs::read(&disk).unwrap();
    std::fs::write(&disk, &saved).unwrap();
    let r = open(&key).code(1);
    assert!(
        r.out().contains("rollback") || r.err().contains("rollback"),
        "{}",
        r.out()
    );
    std::fs::write(&disk, &current).unwrap();
    open(&key).ok();
    assert_eq!(std::fs::read(mnt.join("mine.txt")).unwrap(), b"w1");
    assert_eq!(std::fs::read(mnt.join("later.txt")).unwrap(), b"later");
    // Destroy crypto-erases the overlay's key area (its LUKS2 header and both root slots)
    // before it deletes the file.
    let d = vol(&["destroy".as_ref(), "w1".as_ref()]).ok().json();
    assert_eq!(d["wiped"][0]["file"], disk.to_str().unwrap(), "{d}");
    assert_eq!(
        d["wiped"][0]["bytes"],
        sealvol_host::overlay::KEY_AREA,
        "{d}"
    );
    assert_eq!(d["refused"], serde_json::json!([]), "{d}");
    assert!(!disk.exists());
    assert_eq!(sha(&img), base_sha, "the shared base was written");
}

/// An overlay over a LUKS volume opened read-only with its own key: the base's files read
/// through the overlay, the base's ciphertext never changes; a wrong base key is a clean
/// "no" (exit 1), and both keys from one stream are refused.
#[test]
fn an_overlay_over_a_luks_base_needs_the_base_s_own_key() {
    let e = Env::new();
    let (key, _) = machine_key(e.dir.path(), "key");
    let (bkey, _) = machine_key(e.dir.path(), "bkey");
    let (wrong, _) = machine_key(e.dir.path(), "wrong");
    let lb = e.p("lb.img");
    e.sv([
        "format".as_ref(),
        "--key-file".as_ref(),
        bkey.as_os_str(),
        "--size".as_ref(),
        "32M".as_ref(),
        lb.as_os_str(),
    ])
    .ok();
    let m = e.mnt("m");
    e.open(&lb, &bkey, &[], &["--mkfs", "ext4"], &m).ok();
    std::fs::write(m.join("in-luks.txt"), b"luks base").unwrap();
    e.sv(["close".as_ref(), m.as_os_str()]).ok();
    let lb_sha = sha(&lb);
    let base = |k: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--base".into(),
            lb.clone().into(),
            "--base-luks".into(),
            "--base-key-file".into(),
            k.into(),
        ]
    };
    let ov = e.p("ov.img");
    create(&e, &ov, &key, &os(&base(&bkey)), &[]);
    e.open(&ov, &key, &os(&base(&wrong)), &[], &m).code(1);
    e.open(&ov, &key, &os(&base(&key)), &[], &m)
        .code(2)
        .stderr_mentions("cannot both come from");
    e.open(&ov, &key, &os(&base(&bkey)), &[], &m).ok();
    assert_eq!(std::fs::read(m.join("in-luks.txt")).unwrap(), b"luks base");
    std::fs::write(m.join("in-overlay.txt"), b"overlay").unwrap();
    e.close(&m);
    assert_eq!(sha(&lb), lb_sha, "the LUKS base was written");
}
