//! `sealvol volume …` on real loop devices, FUSE, ext4 and mounts (needs root, /dev/fuse and
//! loop devices, as on the project's machines): the provider's day, crash injection at every
//! step, concurrency, key hygiene, bad input, a full disk, and no key material left after
//! destroy (searched in the raw bytes of the file system holding the state directory).

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use sealvol_host::crash::CRASH_STEPS;
use serde_json::Value;

const MARKER: &[u8] = b"SEALVOL-LIFECYCLE-MARKER-2b7e";

/// A state directory on its own small ext4 file system (a loop-mounted file), so tests can
/// read the raw disk bytes and fill the disk. Everything is destroyed, swept and unmounted on
/// drop, even when the test fails.
struct StateFs {
    _tmp: tempfile::TempDir,
    fs_image: PathBuf,
    dir: PathBuf,
}

impl StateFs {
    fn new(size_mib: u64) -> Self {
        need("mkfs.ext4");
        need("losetup");
        let tmp = tmpdir();
        let fs_image = tmp.path().join("state.ext4");
        sparse_file(&fs_image, size_mib << 20);
        run(
            "mkfs.ext4",
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-b".as_ref(),
                "4096".as_ref(),
                fs_image.as_os_str(),
            ],
            None,
        )
        .ok();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        run(
            "mount",
            [
                "-o".as_ref(),
                "loop".as_ref(),
                fs_image.as_os_str(),
                dir.as_os_str(),
            ],
            None,
        )
        .ok();
        StateFs {
            _tmp: tmp,
            fs_image,
            dir,
        }
    }

    /// `sealvol --json volume --state-dir DIR ARGS`.
    fn sv(&self, args: &[&OsStr]) -> Run {
        sv(self.args(args))
    }

    fn args<'a>(&'a self, args: &[&'a OsStr]) -> Vec<&'a OsStr> {
        let mut v: Vec<&OsStr> = vec![
            "--json".as_ref(),
            "volume".as_ref(),
            "--state-dir".as_ref(),
            self.dir.as_os_str(),
        ];
        v.extend_from_slice(args);
        v
    }

    fn create(&self, id: &str, key: &Path, extra: &[&str]) -> Run {
        let mut a: Vec<&OsStr> = vec![
            "create".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            "--size".as_ref(),
            "64M".as_ref(),
        ];
        a.extend(extra.iter().map(OsStr::new));
        a.push(id.as_ref());
        self.sv(&a)
    }

    fn verb(&self, verb: &str, id: &str) -> Run {
        self.sv(&[verb.as_ref(), id.as_ref()])
    }

    fn open(&self, id: &str, key: &Path) -> Run {
        self.sv(&[
            "open".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            id.as_ref(),
        ])
    }

    fn mnt(&self, id: &str) -> PathBuf {
        self.dir.join("mnt").join(id)
    }

    fn image(&self, id: &str) -> PathBuf {
        self.dir.join("volumes").join(id).join("disk.img")
    }

    /// Every path under the state directory except the lock files.
    fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.dir, &self.dir, &mut out);
        out.retain(|p| !p.ends_with(".lock") && p != "locks" && p != "lost+found");
        out.sort();
        out
    }

    /// Syncs and reads the raw bytes of the state file system.
    fn raw(&self) -> Vec<u8> {
        run("sync", [OsStr::new("-f"), self.dir.as_os_str()], None).ok();
        std::fs::read(&self.fs_image).unwrap()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.strip_prefix(root).unwrap().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) && !is_mounted(&p) {
            walk(root, &p, out);
        }
    }
}

impl Drop for StateFs {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.dir.join("records")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".json") {
                    let _ = Command::new(SEALVOL)
                        .args(["volume", "--state-dir"])
                        .arg(&self.dir)
                        .args(["destroy", id])
                        .output();
                }
            }
        }
        let _ = Command::new(SEALVOL)
            .args(["volume", "--state-dir"])
            .arg(&self.dir)
            .arg("sweep")
            .output();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("mnt")) {
            for e in rd.flatten() {
                let _ = Command::new("umount").arg("-l").arg(e.path()).output();
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap_or("")))
}

fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

/// Runs `sealvol volume … create/destroy` with the crash hook set to `step`.
fn crash_at(st: &StateFs, step: &str, args: &[&OsStr]) -> i32 {
    let out = Command::new(SEALVOL)
        .args(st.args(args))
        .env("SEALVOL_TEST_CRASH_AT", step)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    out.status.signal().unwrap_or(0)
}

fn assert_gone(st: &StateFs, id: &str) {
    st.verb("status", id).code(1);
    assert!(
        !st.dir.join("volumes").join(id).exists(),
        "files of {id} left"
    );
    assert!(!st.mnt(id).exists(), "mount point of {id} left");
    assert!(!st.dir.join("records").join(format!("{id}.json")).exists());
}

/// Blocks of `bytes` (4096-aligned within it) whose first 32 bytes are not all equal.
fn block_prefixes(bytes: &[u8]) -> HashSet<Vec<u8>> {
    bytes
        .chunks_exact(4096)
        .map(|b| b[..32].to_vec())
        .filter(|p| p.iter().any(|&x| x != p[0]))
        .collect()
}

fn count_blocks(raw: &[u8], prefixes: &HashSet<Vec<u8>>) -> usize {
    raw.chunks_exact(4096)
        .filter(|b| prefixes.contains(&b[..32]))
        .count()
}

#[test]
fn loop_lifecycle_provider_day_leaves_nothing() {
    let st = StateFs::new(256);
    let keys = tmpdir();
    let (key, key_bytes) = machine_key(keys.path(), "key");
    let id = "web-1";

    let v = st.create(id, &key, &["--mount"]).ok().json();
    assert_eq!(v["created"], true);
    assert_eq!(v["mounted"], true);
    let mnt = PathBuf::from(v["mount_path"].as_str().unwrap());
    assert_eq!(mnt, st.mnt(id));
    std::fs::write(mnt.join("hello.txt"), MARKER).unwrap();

    // Same id, same parameters: a no-op that says so; other parameters: an error.
    let again = st.create(id, &key, &["--mount"]).ok().json();
    assert_eq!(again["already_existed"], true);
    st.create(id, &key, &["--fs", "ext2"])
        .code(2)
        .stderr_mentions("exists with other parameters");

    let b = st
        .sv(&[
            "bind-args".as_ref(),
            "--target".as_ref(),
            "/data".as_ref(),
            id.as_ref(),
        ])
        .ok()
        .json();
    assert_eq!(
        b["mount"],
        format!("type=bind,source={},target=/data", mnt.display())
    );
    assert_eq!(b["volume"], format!("{}:/data", mnt.display()));
    let human = sv([
        "volume".as_ref(),
        "--state-dir".as_ref(),
        st.dir.as_os_str(),
        "bind-args".as_ref(),
        "--target".as_ref(),
        "/data".as_ref(),
        OsStr::new(id),
    ])
    .ok()
    .out();
    assert!(
        human.contains("--mount type=bind,source=") && human.contains("-v "),
        "{human}"
    );

    let s = st.verb("status", id).ok().json();
    let pid = s["export_pid"].as_u64().unwrap();
    assert!(pid_alive(pid));
    let list = st.sv(&["list".as_ref()]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1);

    assert_eq!(st.verb("close", id).ok().json()["closed"], true);
    assert_eq!(st.verb("close", id).ok().json()["closed"], false);
    assert!(!is_mounted(&mnt));
    assert!(!pid_alive(pid));

    // The wrong key: exit 1, nothing changed.
    let (bad, _) = machine_key(keys.path(), "bad");
    let record = st.dir.join("records").join(format!("{id}.json"));
    let before = std::fs::read(&record).unwrap();
    st.open(id, &bad)
        .code(1)
        .stderr_mentions("no keyslot opens");
    assert_eq!(std::fs::read(&record).unwrap(), before);
    assert!(!is_mounted(&mnt));

    let o = st.open(id, &key).ok().json();
    assert_eq!(o["already_open"], false);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), MARKER);
    assert_eq!(st.open(id, &key).ok().json()["already_open"], true);

    // Capture the keyslot area (after both 16 KiB header copies) and check the raw-disk
    // search finds it before destroy.
    let image = st.image(id);
    let area = read_at(&image, 32768, 256000 & !4095);
    let prefixes = block_prefixes(&area);
    assert!(prefixes.len() > 40);
    let header_prefixes = block_prefixes(&read_at(&image, 0, 4096));
    assert!(count_blocks(&st.raw(), &prefixes) >= prefixes.len());
    let loops_before = loop_count();

    let d = st.verb("destroy", id).ok().json();
    assert_eq!(d["destroyed"], true);
    assert_eq!(st.verb("destroy", id).ok().json()["already_absent"], true);
    assert_gone(&st, id);
    assert!(
        st.tree()
            .iter()
            .all(|p| ["records", "volumes", "mnt"].contains(&p.as_str())),
        "{:?}",
        st.tree()
    );
    let s = st.sv(&["status".as_ref(), id.as_ref()]);
    assert_eq!(s.code, 1);
    assert!(
        loop_count() < loops_before,
        "the loop device was not detached"
    );
    let raw = st.raw();
    assert_eq!(
        count_blocks(&raw, &prefixes),
        0,
        "keyslot material left on disk"
    );
    assert_eq!(
        count_blocks(&raw, &header_prefixes),
        0,
        "header left on disk"
    );
    assert!(!contains(&raw, &key_bytes));
    assert!(!contains(&raw, MARKER));
    assert!(
        !contains(&raw, b"LUKS\xba\xbe"),
        "a LUKS header is left on disk"
    );
}

fn loop_count() -> usize {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("loop") && e.path().join("loop/backing_file").exists()
        })
        .count()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn loop_lifecycle_crash_at_every_step_then_sweep() {
    let st = StateFs::new(512);
    let keys = tmpdir();
    let (key, _) = machine_key(keys.path(), "key");
    let create = |id: &str, mount: bool| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = ["create", "--key-file"].iter().map(PathBuf::from).collect();
        v.push(key.clone());
        v.extend(["--size", "64M"].iter().map(PathBuf::from));
        if mount {
            v.push("--mount".into());
        }
        v.push(id.into());
        v
    };
    let steps: Vec<_> = CRASH_STEPS
        .iter()
        .filter(|s| s.starts_with("create:"))
        .collect();
    assert_eq!(steps.len(), 6, "create's crash steps: {steps:?}");
    for (i, step) in steps.into_iter().enumerate() {
        let id = format!("c{i}");
        let args = create(&id, false);
        let a: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
        assert_eq!(crash_at(&st, step, &a), 9, "{step}: the hook did not fire");
        let sw = st.sv(&["sweep".as_ref()]).ok().json();
        if *step == "create:ready" {
            // Ready: fully usable, with its file system.
            st.open(&id, &key).ok();
            std::fs::write(st.mnt(&id).join("f"), MARKER).unwrap();
            st.verb("close", &id).ok();
            st.open(&id, &key).ok();
            assert_eq!(std::fs::read(st.mnt(&id).join("f")).unwrap(), MARKER);
            st.verb("destroy", &id).ok();
        } else {
            assert!(
                sw["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["id"] == id.as_str()),
                "{step}: sweep did nothing: {sw}"
            );
        }
        assert_gone(&st, &id);
    }
    // A crash of a create that mounts, then create again: the sweep runs first.
    let args = create("cm", true);
    let a: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
    assert_eq!(crash_at(&st, "create:mkfs", &a), 9);
    let v = st.sv(&a).ok().json();
    assert_eq!(v["created"], true);
    assert!(!v["swept"].as_array().unwrap().is_empty());
    st.verb("destroy", "cm").ok();

    let steps: Vec<_> = CRASH_STEPS
        .iter()
        .filter(|s| s.starts_with("destroy:"))
        .collect();
    assert_eq!(steps.len(), 4, "destroy's crash steps: {steps:?}");
    for step in steps {
        let id = format!("d-{}", step.split(':').nth(1).unwrap());
        let args = create(&id, true);
        let a: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
        st.sv(&a).ok();
        std::fs::write(st.mnt(&id).join("f"), MARKER).unwrap();
        let pid = st.verb("status", &id).ok().json()["export_pid"]
            .as_u64()
            .unwrap();
        assert_eq!(
            crash_at(&st, step, &["destroy".as_ref(), id.as_ref()]),
            9,
            "{step}"
        );
        let sw = st.sv(&["sweep".as_ref()]).ok().json();
        assert!(
            sw["actions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["id"] == id.as_str()),
            "{step}: {sw}"
        );
        assert_gone(&st, &id);
        assert!(!pid_alive(pid), "{step}: export still running");
    }
    assert_eq!(st.sv(&["list".as_ref()]).ok().json(), Value::Array(vec![]));
    assert!(st.sv(&["sweep".as_ref()]).ok().json()["actions"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn loop_lifecycle_concurrent_calls_end_consistent() {
    let st = StateFs::new(1024);
    let keys = tmpdir();
    let (key, _) = machine_key(keys.path(), "key");
    let ids: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let (st, key) = (&st, &key);
            s.spawn(move || st.create(id, key, &["--mount"]).ok());
        }
    });
    let list = st.sv(&["list".as_ref()]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 8);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["mounted"] == true));
    std::thread::scope(|s| {
        for id in &ids {
            let st = &st;
            s.spawn(move || st.verb("destroy", id).ok());
        }
    });
    assert_eq!(st.sv(&["list".as_ref()]).ok().json(), Value::Array(vec![]));

    // 8 racing calls on one id: one creates, seven find it made.
    let created: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (st, key) = (&st, &key);
                s.spawn(move || st.create("one", key, &[]).ok().json()["created"] == true)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    let destroyed: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let st = &st;
                s.spawn(move || st.verb("destroy", "one").ok().json()["destroyed"] == true)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(destroyed.iter().filter(|c| **c).count(), 1, "{destroyed:?}");
    assert_gone(&st, "one");
    assert!(
        st.tree()
            .iter()
            .all(|p| ["records", "volumes", "mnt"].contains(&p.as_str())),
        "{:?}",
        st.tree()
    );
}

#[test]
fn loop_lifecycle_bad_input_changes_nothing() {
    let st = StateFs::new(16);
    let keys = tmpdir();
    let (key, _) = machine_key(keys.path(), "key");
    let before = st.tree();
    for (id, why) in [
        ("../etc", "starts with '.'"),
        ("a/b", "contains '/'"),
        ("Web", "starts with 'W'"),
        ("a..b", "\"..\""),
        (&"x".repeat(64)[..], "64 bytes"),
    ] {
        st.create(id, &key, &[]).code(2).stderr_mentions(why);
        st.verb("destroy", id)
            .code(2)
            .stderr_mentions("invalid volume id");
    }
    st.sv(&[
        "create".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
        "v".as_ref(),
    ])
    .code(2)
    .stderr_mentions("too small")
    .stderr_mentions("at least 16 MiB");
    st.sv(&[
        "create".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--size".as_ref(),
        "10G".as_ref(),
        "v".as_ref(),
    ])
    .code(2)
    .stderr_mentions("--sparse-ok");
    st.sv(&[
        "create".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--size".as_ref(),
        "12Q".as_ref(),
        "v".as_ref(),
    ])
    .code(2)
    .stderr_mentions("unknown size unit");
    st.open("nope", &key)
        .code(2)
        .stderr_mentions("there is no volume nope");
    assert_eq!(st.tree(), before);

    // A full disk during create: the 16 MiB header does not fit; rolled back, no files.
    let r = st.create("full", &key, &["--sparse-ok"]).code(2);
    let err = r.err();
    assert!(
        err.contains("step `format`") && err.contains("No space left"),
        "{err}"
    );
    assert!(err.contains("undone"), "{err}");
    assert_gone(&st, "full");
    assert!(
        st.tree()
            .iter()
            .all(|p| ["records", "volumes", "mnt"].contains(&p.as_str())),
        "{:?}",
        st.tree()
    );
}

#[test]
fn loop_lifecycle_keys_stay_out_of_argv_env_logs_and_state() {
    let st = StateFs::new(256);
    let keys = tmpdir();
    let (_, key_bytes) = machine_key(keys.path(), "key");
    let hex_key = hex::encode(&key_bytes);
    let args = st.args(&[
        "-vv".as_ref(),
        "create".as_ref(),
        "--size".as_ref(),
        "64M".as_ref(),
        "--mount".as_ref(),
        "k1".as_ref(),
    ]);
    let r = sv_stdin(args, &key_bytes).ok();
    let pid = st.verb("status", "k1").ok().json()["export_pid"]
        .as_u64()
        .unwrap();
    for what in ["cmdline", "environ"] {
        let b = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(
            !contains(&b, &key_bytes) && !contains(&b, hex_key.as_bytes()),
            "{what}"
        );
    }
    let mut logs = r.stderr.clone();
    logs.extend(r.stdout);
    for e in std::fs::read_dir("/run/sealvol")
        .into_iter()
        .flatten()
        .flatten()
    {
        let log = e.path().join("export.log");
        logs.extend(std::fs::read(log).unwrap_or_default());
    }
    st.verb("close", "k1").ok();
    let o = sv_stdin(
        st.args(&["-vv".as_ref(), "open".as_ref(), "k1".as_ref()]),
        &key_bytes,
    )
    .ok();
    logs.extend(o.stderr);
    let d = st
        .sv(&["-vv".as_ref(), "destroy".as_ref(), "k1".as_ref()])
        .ok();
    logs.extend(d.stderr);
    assert!(!contains(&logs, &key_bytes) && !contains(&logs, hex_key.as_bytes()));
    assert!(
        String::from_utf8_lossy(&logs).contains("running"),
        "no debug log captured"
    );
    let raw = st.raw();
    assert!(!contains(&raw, &key_bytes) && !contains(&raw, hex_key.as_bytes()));
}

/// Kills a helper process when dropped, even if the test fails.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn loop_lifecycle_destroy_of_a_busy_mount_retries_then_detaches_lazily() {
    let st = StateFs::new(256);
    let keys = tmpdir();
    let (key, _) = machine_key(keys.path(), "key");
    let id = "busy-1";
    let v = st.create(id, &key, &["--mount"]).ok().json();
    let mnt = PathBuf::from(v["mount_path"].as_str().unwrap());
    std::fs::write(mnt.join("held.txt"), MARKER).unwrap();
    // A process with its working directory and an open file inside the mount keeps it busy.
    let holder = Holder(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3<held.txt; exec sleep 60")
            .current_dir(&mnt)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        pid_alive(u64::from(holder.0.id())),
        "the holder did not start"
    );

    let started = std::time::Instant::now();
    let d = st.verb("destroy", id).ok().json();
    let took = started.elapsed();
    assert_eq!(d["destroyed"], true, "{d}");
    // The busy mount was retried for a bounded time, then detached lazily.
    assert!(
        took >= std::time::Duration::from_secs(1),
        "destroy did not wait for the busy mount ({took:?})"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "destroy waited {took:?}"
    );
    assert!(
        !is_mounted(&mnt),
        "the mount point is still mounted after destroy"
    );
    assert_gone(&st, id);
    drop(holder);
    // With the last user gone, nothing of the volume is left anywhere.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let raw = st.raw();
    assert!(
        !contains(&raw, b"LUKS\xba\xbe"),
        "a LUKS header is left on the state disk"
    );
    // No dead FUSE mount of the volume is left behind (it would break the next export there).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = st.dir.to_str().unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(state) && l.contains("fuse")),
        "a FUSE mount of the destroyed volume is left:\n{mounts}"
    );
}
