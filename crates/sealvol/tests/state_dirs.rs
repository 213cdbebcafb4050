//! sealvol's state directory (`--state-dir`) and runtime directory (`SEALVOL_RUN_DIR`) under
//! attack, with the real binary, FUSE, loop devices and mounts (needs root, as on the
//! project's machines):
//!
//! - a symbolic link (and, for files that are written or wiped, a hard link) planted at every
//!   path sealvol writes, pointing at a canary outside: the verb that writes there leaves the
//!   canary's bytes, mode and mtime alone and either refuses, naming the path, or removes the
//!   link;
//! - state and runtime directories that others could write in are refused with the fix; new
//!   ones are made 0700 whatever the umask;
//! - exports killed with SIGKILL (after mounting, and before recording themselves): `volume
//!   status` reports the mount, loop devices, the dead FUSE file and the dead export, `volume
//!   sweep` leaves nothing behind, and the volume opens again;
//! - an export's log carries no terminal colour codes.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

const CANARY: &[u8] = b"CANARY: sealvol must never write, truncate, zero or chmod this file";

/// A scratch root holding the state directory, the runtime directory, canaries and keys;
/// everything sealvol made there is destroyed, swept, unmounted and detached on drop.
struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    run: PathBuf,
    key: PathBuf,
    base: PathBuf,
}

impl Env {
    fn new() -> Self {
        need("mkfs.ext4");
        need("losetup");
        let tmp = tmpdir();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let (key, _) = machine_key(&root, "key");
        let base = root.join("base.raw");
        sparse_file(&base, 1 << 20);
        Env {
            state: root.join("state"),
            run: root.join("run"),
            _tmp: tmp,
            root,
            key,
            base,
        }
    }

    /// `sealvol ARGS` with this runtime directory, `env` set, under `umask`.
    fn exec(&self, args: &[&str], env: &[(&str, &str)], umask: Option<&str>) -> Run {
        let mut cmd = match umask {
            Some(m) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("umask {m} && exec \"$0\" \"$@\""), SEALVOL]);
                c
            }
            None => Command::new(SEALVOL),
        };
        cmd.args(args)
            .env("SEALVOL_RUN_DIR", &self.run)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Run {
            cmdline: format!(
                "SEALVOL_RUN_DIR={} sealvol {}",
                self.run.display(),
                args.join(" ")
            ),
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// `sealvol --json volume --state-dir STATE ARGS`.
    fn vol(&self, args: &[&str]) -> Run {
        let state = self.state.to_str().unwrap();
        let mut a = vec!["--json", "volume", "--state-dir", state];
        a.extend_from_slice(args);
        self.exec(&a, &[], None)
    }

    /// `sealvol --json vm --state-dir STATE ARGS`.
    fn vm(&self, args: &[&str]) -> Run {
        let state = self.state.to_str().unwrap();
        let mut a = vec!["--json", "vm", "--state-dir", state];
        a.extend_from_slice(args);
        self.exec(&a, &[], None)
    }

    fn create(&self, id: &str, extra: &[&str]) -> Run {
        let key = self.key.to_str().unwrap();
        let mut a = vec!["create", "--key-file", key, "--size", "16M"];
        a.extend_from_slice(extra);
        a.push(id);
        self.vol(&a)
    }

    fn open(&self, id: &str) -> Run {
        self.vol(&["open", "--key-file", self.key.to_str().unwrap(), id])
    }

    fn vm_create(&self, id: &str) -> Run {
        need("qemu-img");
        need("genisoimage");
        let base = self.base.to_str().unwrap();
        self.vm(&[
            "create",
            id,
            "--memory",
            "64M",
            "--disk-size",
            "16M",
            "--base",
            base,
        ])
    }

    fn image(&self, id: &str) -> PathBuf {
        self.state.join("volumes").join(id).join("disk.img")
    }

    fn mnt(&self, id: &str) -> PathBuf {
        self.state.join("mnt").join(id)
    }

    /// The runtime id of volume `id`'s image (`vol-<dev>-<ino>`).
    fn runtime_id(&self, id: &str) -> String {
        let m = std::fs::metadata(self.image(id)).unwrap();
        format!("vol-{:x}-{:x}", m.dev(), m.ino())
    }

    /// Every mount point under this root, and every loop device on a file under it.
    fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let root = self.root.to_str().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(root))
            .collect();
        let loops = loop_backings()
            .into_iter()
            .filter(|(_, b)| b.starts_with(root))
            .map(|(d, b)| format!("{d} on {b}"))
            .collect();
        (mounts, loops)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (sub, verb) in [("vm/records", "vm"), ("records", "volume")] {
            for e in std::fs::read_dir(self.state.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".json") {
                    let state = self.state.to_str().unwrap();
                    self.exec(&[verb, "--state-dir", state, "destroy", id], &[], None);
                }
            }
        }
        self.vol(&["sweep"]);
        let (mounts, _) = self.leftovers();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        for (dev, _) in loop_backings()
            .into_iter()
            .filter(|(_, b)| b.starts_with(self.root.to_str().unwrap()))
        {
            let _ = Command::new("losetup").arg("-d").arg(dev).output();
        }
    }
}

/// `(/dev/loopN, backing file)` of every attached loop device.
fn loop_backings() -> Vec<(String, String)> {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let b = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Some((format!("/dev/{n}"), b.trim_end().to_string()))
        })
        .collect()
}

/// A file (or directory) outside the state and runtime directories, and what it looked like.
struct Canary {
    path: PathBuf,
    mode: u32,
    ino: u64,
    mtime: (i64, i64),
}

impl Canary {
    fn file(env: &Env, name: &str) -> Self {
        let path = env.root.join(name);
        std::fs::write(&path, CANARY).unwrap();
        Self::seal(path, 0o640)
    }

    fn dir(env: &Env, name: &str) -> Self {
        let path = env.root.join(name);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), CANARY).unwrap();
        Self::seal(path, 0o750)
    }

    fn seal(path: PathBuf, mode: u32) -> Self {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        // An old mtime: any write would move it to now.
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        std::fs::File::open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let m = std::fs::metadata(&path).unwrap();
        Canary {
            ino: m.ino(),
            mode: m.mode(),
            mtime: (m.mtime(), m.mtime_nsec()),
            path,
        }
    }

    #[track_caller]
    fn untouched(&self, case: &str) {
        let m = std::fs::metadata(&self.path).unwrap();
        let bytes = if m.is_dir() {
            let names: Vec<_> = std::fs::read_dir(&self.path)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names, ["inside"], "{case}: the canary directory changed");
            std::fs::read(self.path.join("inside")).unwrap()
        } else {
            std::fs::read(&self.path).unwrap()
        };
        assert_eq!(bytes, CANARY, "{case}: the canary's bytes changed");
        assert_eq!(m.mode(), self.mode, "{case}: the canary's mode changed");
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            self.mtime,
            "{case}: the canary's mtime changed"
        );
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == self.path.to_str());
        assert!(!mounted, "{case}: something was mounted on the canary");
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Sym,
    Hard,
}

/// Plants a `link` to `canary` at `at` (its parent directories made as an attacker would).
#[track_caller]
fn plant(link: Link, at: &Path, canary: &Canary) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    // An attacker replaces what is there (a lock file left by an earlier call, say).
    if std::fs::symlink_metadata(at).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(at).unwrap();
    }
    let planted = match link {
        Link::Sym => std::os::unix::fs::symlink(&canary.path, at),
        Link::Hard => std::fs::hard_link(&canary.path, at),
    };
    if let Err(e) = planted {
        panic!("cannot plant a {link:?} link at {}: {e}", at.display());
    }
}

/// After the verb: the canary is untouched, and the verb either removed the planted link or
/// refused, naming the path.
#[track_caller]
fn verdict(case: &str, r: &Run, at: &Path, canary: &Canary) {
    canary.untouched(case);
    let m = std::fs::symlink_metadata(at);
    let still = m.is_ok_and(|m| m.file_type().is_symlink() || m.ino() == canary.ino);
    if r.code == 0 {
        assert!(
            !still,
            "{case}: the verb succeeded but left the planted link at {}\n{}",
            at.display(),
            r.err()
        );
    } else {
        let err = r.err();
        assert!(
            err.contains(at.to_str().unwrap()),
            "{case}: refused without naming {} (exit {}):\n{err}",
            at.display(),
            r.code
        );
    }
}

/// Removes a planted link left by a refusal, so that the next case starts clean.
fn unplant(at: &Path) {
    let _ = std::fs::remove_file(at);
}

#[test]
fn loop_state_planted_links_are_never_followed() {
    let env = Env::new();
    let both = [Link::Sym, Link::Hard];
    let mut n = 0;
    let mut next = |what: &str| {
        n += 1;
        format!("{what}{n}")
    };

    // The state directory, at `volume create` (which sweeps the id first), `destroy`, `sweep`.
    type Case = (&'static str, &'static [Link], &'static [&'static str]);
    let create_cases: &[Case] = &[
        ("records/ID.json", &[Link::Sym, Link::Hard], &[]),
        ("records/.ID.json.tmp", &[Link::Sym, Link::Hard], &[]),
        ("locks/ID.lock", &[Link::Sym, Link::Hard], &[]),
        ("sweep.lock", &[Link::Sym, Link::Hard], &[]),
        ("volumes/ID/disk.img", &[Link::Sym, Link::Hard], &[]),
        (
            "volumes/ID/header.img",
            &[Link::Sym, Link::Hard],
            &["--detached-header"],
        ),
        ("mnt/ID", &[Link::Sym], &[]),
    ];
    for (rel, links, extra) in create_cases {
        for &link in *links {
            let id = next("c");
            let case = format!("volume create with a {link:?} link at {rel}");
            let canary = Canary::file(&env, &format!("canary-{id}"));
            let at = env.state.join(rel.replace("ID", &id));
            // The state directory exists, as on a host that has used sealvol.
            if !env.state.exists() {
                env.vol(&["sweep"]).ok();
            }
            plant(link, &at, &canary);
            let r = env.create(&id, extra);
            verdict(&case, &r, &at, &canary);
            if r.code != 0 {
                unplant(&at);
            }
            env.vol(&["destroy", &id]).ok();
            canary.untouched(&format!("{case}, then destroy"));
        }
    }
    for (rel, extra) in [
        ("volumes/ID/disk.img", &[][..]),
        ("volumes/ID/header.img", &["--detached-header"][..]),
    ] {
        for link in both {
            let id = next("d");
            let case = format!("volume destroy with a {link:?} link at {rel}");
            let canary = Canary::file(&env, &format!("canary-{id}"));
            env.create(&id, extra).ok();
            let at = env.state.join(rel.replace("ID", &id));
            std::fs::remove_file(&at).unwrap();
            plant(link, &at, &canary);
            let r = env.vol(&["destroy", &id]);
            verdict(&case, &r, &at, &canary);
            let refused = r.json()["refused"].clone();
            assert!(
                refused
                    .as_array()
                    .is_some_and(|a| a.iter().any(|f| f["file"] == at.to_str().unwrap())),
                "{case}: destroy does not report the file it refused to wipe: {}",
                r.out()
            );
        }
        for link in both {
            let id = next("s");
            let case = format!("volume sweep with a {link:?} link at {rel} and no record");
            let canary = Canary::file(&env, &format!("canary-{id}"));
            let at = env.state.join(rel.replace("ID", &id));
            plant(link, &at, &canary);
            let r = env.vol(&["sweep"]);
            verdict(&case, &r, &at, &canary);
            assert!(r.code == 0 && !at.parent().unwrap().exists(), "{case}");
        }
    }

    // `volume open` of a closed volume: its files, its mount point, and every runtime path.
    env.create("o", &[]).ok();
    let rid = env.runtime_id("o");
    {
        let case = "volume open with a symbolic link to a directory at mnt/o";
        let canary = Canary::dir(&env, "canary-dir-mnt");
        let at = env.mnt("o");
        std::fs::remove_dir(&at).unwrap();
        plant(Link::Sym, &at, &canary);
        let r = env.open("o");
        verdict(case, &r, &at, &canary);
        env.vol(&["close", "o"]).ok();
    }
    {
        let case = "volume open with a symbolic link to a directory at RUN/ID";
        let canary = Canary::dir(&env, "canary-dir-run");
        let at = env.run.join(&rid);
        plant(Link::Sym, &at, &canary);
        let r = env.open("o");
        verdict(case, &r, &at, &canary);
        env.vol(&["close", "o"]).ok();
    }
    // Every runtime path, at `sealvol open` of the same image (the export's own set-up).
    let plain_mnt = env.root.join("plain-mnt");
    std::fs::create_dir(&plain_mnt).unwrap();
    let (image, mnt) = (env.image("o"), plain_mnt.to_str().unwrap());
    for rel in [
        "ID.json",
        ".ID.json.tmp",
        "ID.lock",
        "ID/disk",
        "ID/export.log",
    ] {
        for link in both {
            let case = format!("open with a {link:?} link at RUN/{rel}");
            let canary = Canary::file(&env, &format!("canary-{}", next("r")));
            let at = env.run.join(rel.replace("ID", &rid));
            plant(link, &at, &canary);
            let key = env.key.to_str().unwrap();
            let r = env.exec(
                &[
                    "open",
                    "--key-file",
                    key,
                    "--mount",
                    mnt,
                    image.to_str().unwrap(),
                ],
                &[],
                None,
            );
            verdict(&case, &r, &at, &canary);
            if r.code != 0 {
                unplant(&at);
            }
            env.exec(&["close", mnt], &[], None).ok();
            canary.untouched(&format!("{case}, then close"));
        }
    }
    for link in both {
        let case = format!("volume open with a {link:?} link in place of volumes/o/disk.img");
        let canary = Canary::file(&env, &format!("canary-{}", next("i")));
        let id = next("i");
        env.create(&id, &[]).ok();
        let at = env.image(&id);
        std::fs::remove_file(&at).unwrap();
        plant(link, &at, &canary);
        let r = env.open(&id);
        assert_ne!(r.code, 0, "{case}: opened a planted image");
        verdict(&case, &r, &at, &canary);
        env.vol(&["destroy", &id]).ok();
        canary.untouched(&format!("{case}, then destroy"));
    }
    env.vol(&["destroy", "o"]).ok();

    // The VM manager: vm create (no boot) and vm destroy.
    let vm_cases: &[(&str, &[Link])] = &[
        ("vm/records/ID.json", &[Link::Sym, Link::Hard]),
        ("vm/records/.ID.json.tmp", &[Link::Sym, Link::Hard]),
        ("vm/locks/ID.lock", &[Link::Sym, Link::Hard]),
        ("vm/sweep.lock", &[Link::Sym, Link::Hard]),
        ("vm/dirs/ID/overlay.qcow2", &[Link::Sym, Link::Hard]),
        ("vm/dirs/ID/seed.iso", &[Link::Sym, Link::Hard]),
        ("vm/dirs/ID/user-data", &[Link::Sym]),
    ];
    for (rel, links) in vm_cases {
        for &link in *links {
            let id = next("v");
            let case = format!("vm create with a {link:?} link at {rel}");
            let canary = Canary::file(&env, &format!("canary-{id}"));
            let at = env.state.join(rel.replace("ID", &id));
            plant(link, &at, &canary);
            let r = env.vm_create(&id);
            verdict(&case, &r, &at, &canary);
            if r.code != 0 {
                unplant(&at);
            }
            env.vm(&["destroy", &id]).ok();
            canary.untouched(&format!("{case}, then vm destroy"));
        }
    }
    for rel in ["console.log", "qemu.pid", "overlay.qcow2", "nbd.log"] {
        for link in both {
            let id = next("w");
            let case = format!("vm destroy with a {link:?} link at vm/dirs/ID/{rel}");
            let canary = Canary::file(&env, &format!("canary-{id}"));
            env.vm_create(&id).ok();
            let at = env.state.join("vm/dirs").join(&id).join(rel);
            let _ = std::fs::remove_file(&at);
            plant(link, &at, &canary);
            let r = env.vm(&["destroy", &id]);
            verdict(&case, &r, &at, &canary);
        }
    }
    let (mounts, loops) = env.leftovers();
    assert!(
        mounts.is_empty() && loops.is_empty(),
        "{mounts:?} {loops:?}"
    );
}

#[test]
fn loop_state_unsafe_directories_are_refused_and_new_ones_are_0700() {
    let env = Env::new();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;

    // Writable by others, or owned by another user: refused, with the fix.
    let open = env.root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = env.root.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    for (dir, why) in [(&open, "mode 0777"), (&theirs, "owned by uid 65534")] {
        let d = dir.to_str().unwrap();
        for verb in [&["list"][..], &["sweep"][..], &["status", "x"][..]] {
            let mut a = vec!["volume", "--state-dir", d];
            a.extend_from_slice(verb);
            let r = env.exec(&a, &[], None).code(2);
            let err = r.err();
            assert!(
                err.contains(why)
                    && err.contains(&format!("chown root: {d} && chmod 0700 {d}"))
                    && err.contains("choose another directory"),
                "state dir {d}, {verb:?}: {err}"
            );
        }
        // The same for the runtime directory.
        let r = env.exec(
            &[
                "volume",
                "--state-dir",
                env.state.to_str().unwrap(),
                "sweep",
            ],
            &[("SEALVOL_RUN_DIR", d)],
            None,
        );
        let err = r.err();
        assert!(
            r.code == 2 && err.contains(why) && err.contains("chmod 0700"),
            "runtime dir {d}: {err}"
        );
    }
    assert_eq!(mode(&open), 0o777, "a refused directory was changed");

    // Missing ones are made 0700 (their missing parents 0755) whatever the umask; so are the
    // files and directories sealvol makes in them.
    for mask in ["000", "077"] {
        let state = env.root.join(format!("new-{mask}/a/state"));
        let run = env.root.join(format!("run-{mask}/b/run"));
        let s = state.to_str().unwrap();
        let key = env.key.to_str().unwrap();
        let r = env.exec(
            &[
                "volume",
                "--state-dir",
                s,
                "create",
                "--key-file",
                key,
                "--size",
                "16M",
                "m",
            ],
            &[("SEALVOL_RUN_DIR", run.to_str().unwrap())],
            Some(mask),
        );
        r.ok();
        assert_eq!(mode(&state), 0o700, "umask {mask}: {}", state.display());
        assert_eq!(mode(state.parent().unwrap()), 0o755, "umask {mask}: parent");
        for sub in ["records", "volumes", "mnt", "locks", "volumes/m", "mnt/m"] {
            assert_eq!(mode(&state.join(sub)), 0o700, "umask {mask}: {sub}");
        }
        for f in [
            "records/m.json",
            "volumes/m/disk.img",
            "locks/m.lock",
            "sweep.lock",
        ] {
            assert_eq!(mode(&state.join(f)), 0o600, "umask {mask}: {f}");
        }
        assert_eq!(mode(&run), 0o700, "umask {mask}: {}", run.display());
        assert_eq!(
            mode(run.parent().unwrap()),
            0o755,
            "umask {mask}: run parent"
        );
        env.exec(
            &["volume", "--state-dir", s, "destroy", "m"],
            &[("SEALVOL_RUN_DIR", run.to_str().unwrap())],
            None,
        )
        .ok();
    }
}

/// `volume status --json` of `id`, with what it must say about a killed export.
#[track_caller]
fn assert_reports_dead_export(env: &Env, id: &str, case: &str) -> Value {
    let s = env.vol(&["status", id]).ok().json();
    assert_eq!(s["mounted"], true, "{case}: {s}");
    assert_eq!(s["export_alive"], false, "{case}: {s}");
    assert_eq!(s["export_pid"], Value::Null, "{case}: {s}");
    assert!(
        s["mount_source"]
            .as_str()
            .is_some_and(|m| m.starts_with("/dev/loop")),
        "{case}: {s}"
    );
    assert_eq!(s["loop_device"], s["mount_source"], "{case}: {s}");
    assert!(
        !s["loop_devices"].as_array().unwrap().is_empty(),
        "{case}: {s}"
    );
    assert_eq!(s["fuse_mounted"], true, "{case}: {s}");
    assert_eq!(s["fuse_alive"], false, "{case}: {s}");
    let stale = s["stale"].as_array().unwrap();
    assert!(stale.len() >= 3, "{case}: {s}");
    assert!(
        s["stale_fix"].as_str().is_some_and(|f| f.contains("sweep")),
        "{case}: {s}"
    );
    let human = env
        .exec(
            &[
                "volume",
                "--state-dir",
                env.state.to_str().unwrap(),
                "status",
                id,
            ],
            &[],
            None,
        )
        .ok()
        .out();
    assert!(
        human.contains("dead: ENOTCONN") && human.contains("sweep` clears it"),
        "{case}: {human}"
    );
    s
}

/// After a sweep: no mount, no loop device, no runtime record, directory, log or lock of `id`.
#[track_caller]
fn assert_swept(env: &Env, id: &str, rid: &str, case: &str) {
    let (mounts, loops) = env.leftovers();
    assert!(mounts.is_empty(), "{case}: mounts left: {mounts:?}");
    assert!(loops.is_empty(), "{case}: loop devices left: {loops:?}");
    for name in [
        format!("{rid}.json"),
        rid.to_string(),
        format!("{rid}.lock"),
    ] {
        assert!(
            std::fs::symlink_metadata(env.run.join(&name)).is_err(),
            "{case}: {} left",
            env.run.join(&name).display()
        );
    }
    let s = env.vol(&["status", id]);
    if s.code == 0 {
        let s = s.json();
        assert_eq!(s["stale"], Value::Array(vec![]), "{case}: {s}");
        assert_eq!(s["mounted"], false, "{case}: {s}");
    }
}

/// Kills `pid` and waits until every one of its threads is gone (a multi-threaded export's
/// leader is a zombie while its other threads are still exiting and holding its files).
fn kill9(pid: u64) {
    run("kill", ["-9".to_string(), pid.to_string()], None).ok();
    let dead = |stat: &str| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with(['Z', 'X']))
    };
    for _ in 0..500 {
        let gone = match std::fs::read_dir(format!("/proc/{pid}/task")) {
            Err(_) => true,
            Ok(tasks) => tasks
                .flatten()
                .all(|t| std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| dead(&s))),
        };
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("export {pid} did not die");
}

#[test]
fn loop_state_killed_exports_are_reported_and_swept() {
    let env = Env::new();
    let key = env.key.to_str().unwrap().to_string();
    let state = env.state.to_str().unwrap().to_string();

    // 1. `volume create --mount` killed after mkfs (the crash hook), then its export killed.
    let r = env.exec(
        &[
            "volume",
            "--state-dir",
            &state,
            "create",
            "--key-file",
            &key,
            "--size",
            "16M",
            "--mount",
            "a",
        ],
        &[("SEALVOL_TEST_CRASH_AT", "create:mkfs")],
        None,
    );
    assert_eq!(
        r.code,
        -1,
        "create:mkfs: the crash hook did not fire\n{}",
        r.err()
    );
    let rid = env.runtime_id("a");
    let pid: u64 = std::fs::read_to_string(env.run.join(format!("{rid}.json")))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["pid"].as_u64())
        .expect("the export recorded itself");
    kill9(pid);
    let s = assert_reports_dead_export(&env, "a", "create --mount killed");
    assert_eq!(s["phase"], "creating", "{s}");
    assert_eq!(s["recorded_export_pid"], pid, "{s}");
    let sw = env.vol(&["sweep"]).ok().json();
    assert!(!sw["actions"].as_array().unwrap().is_empty(), "{sw}");
    assert_swept(&env, "a", &rid, "create --mount killed");
    env.vol(&["status", "a"]).code(1);

    // 2. `volume open`, then its export killed with SIGKILL.
    env.create("b", &[]).ok();
    env.open("b").ok();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(env.mnt("b").join("kept")).unwrap();
        f.write_all(CANARY).unwrap();
        f.sync_all().unwrap();
        std::fs::File::open(env.mnt("b"))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    let pid = env.vol(&["status", "b"]).ok().json()["export_pid"]
        .as_u64()
        .unwrap();
    let rid = env.runtime_id("b");
    kill9(pid);
    let s = assert_reports_dead_export(&env, "b", "open, export killed");
    assert_eq!(s["recorded_export_pid"], pid, "{s}");
    env.vol(&["sweep"]).ok();
    assert_swept(&env, "b", &rid, "open, export killed");
    env.open("b").ok();
    assert_eq!(std::fs::read(env.mnt("b").join("kept")).unwrap(), CANARY);
    env.vol(&["close", "b"]).ok();

    // 3. `volume open` whose export is killed after mounting and before recording itself.
    let r = env.exec(
        &[
            "volume",
            "--state-dir",
            &state,
            "open",
            "--key-file",
            &key,
            "b",
        ],
        &[("SEALVOL_TEST_CRASH_AT", "export:mounted")],
        None,
    );
    assert_eq!(r.code, 2, "export:mounted: {}", r.err());
    assert!(
        !env.run.join(format!("{rid}.json")).exists(),
        "the export recorded itself before the hook"
    );
    let s = assert_reports_dead_export(&env, "b", "export killed before recording");
    assert_eq!(s["recorded_export_pid"], Value::Null, "{s}");
    env.vol(&["sweep"]).ok();
    assert_swept(&env, "b", &rid, "export killed before recording");
    env.open("b").ok();
    assert_eq!(std::fs::read(env.mnt("b").join("kept")).unwrap(), CANARY);
    env.vol(&["destroy", "b"]).ok();
    assert_swept(&env, "b", &rid, "destroyed");
}

#[test]
fn loop_state_export_logs_carry_no_colour_codes() {
    let env = Env::new();
    env.create("l", &["--mount"]).ok();
    let log = env.run.join(env.runtime_id("l")).join("export.log");
    let text = std::fs::read(&log).unwrap();
    // The export logs at info level (`-v`): lines with levels, which a terminal would colour.
    assert!(
        String::from_utf8_lossy(&text).contains("INFO"),
        "no log lines in {}",
        log.display()
    );
    assert!(
        !text.contains(&0x1b),
        "{} carries terminal escape codes:\n{}",
        log.display(),
        String::from_utf8_lossy(&text)
    );
    env.vol(&["destroy", "l"]).ok();
}
