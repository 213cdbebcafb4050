//! `sealvol open` / `close` on real FUSE, loop devices, ext4 and mounts (needs root,
//! /dev/fuse and loop devices, as on the project's machines).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// A plaintext marker that must never appear in the volume file.
const MARKER: &[u8] = b"SEALVOL-PLAINTEXT-MARKER-7f3a9c";

/// Closes what a test opened, even when the test fails: `sealvol close`, then the blunt
/// tools for anything left.
struct Opened {
    dir: PathBuf,
}

impl Drop for Opened {
    fn drop(&mut self) {
        let _ = Command::new(SEALVOL).arg("close").arg(&self.dir).output();
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap_or("")))
}

/// A 64 MiB LUKS2 volume with a machine key.
fn volume(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, _) = machine_key(dir, "key");
    let vol = dir.join("vol.img");
    sv([
        "format".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--size".as_ref(),
        "64M".as_ref(),
        vol.as_os_str(),
    ])
    .ok();
    (vol, key)
}

fn open(vol: &Path, key: &Path, mnt: &Path, extra: &[&str]) -> (Opened, Value) {
    std::fs::create_dir_all(mnt).unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--json".as_ref(),
        "open".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--mount".as_ref(),
        mnt.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push(vol.as_os_str());
    let guard = Opened {
        dir: mnt.to_path_buf(),
    };
    let v = sv(args).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(is_mounted(mnt), "{} is mounted after open", mnt.display());
    (guard, v)
}

fn close(target: &Path) -> Value {
    sv(["--json".as_ref(), "close".as_ref(), target.as_os_str()])
        .ok()
        .json()
}

/// The process has exited (a zombie left for init to reap counts as gone).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn loop_mkfs_write_close_reopen_intact_and_no_plaintext_on_disk() {
    need("mkfs.ext4");
    let dir = tmpdir();
    let (vol, key) = volume(dir.path());
    let mnt = dir.path().join("mnt");
    let (guard, v) = open(&vol, &key, &mnt, &["--mkfs", "ext4"]);
    let loop_dev = v["loop_device"].as_str().unwrap().to_string();
    assert!(loop_dev.starts_with("/dev/loop"), "{v}");
    let pid = v["pid"].as_u64().unwrap();

    let text: Vec<u8> = MARKER
        .iter()
        .cycle()
        .take(MARKER.len() * 2000)
        .copied()
        .collect();
    let blob = random_bytes(5 << 20);
    write_synced(&mnt.join("marker.txt"), &text);
    std::fs::create_dir(mnt.join("sub")).unwrap();
    write_synced(&mnt.join("sub/blob.bin"), &blob);

    let c = close(&mnt);
    assert_eq!(c["closed"], true, "{c}");
    assert!(!is_mounted(&mnt));
    assert!(gone(pid), "the export stopped");
    let fuse_file = v["fuse_file"].as_str().unwrap();
    let losetup = run("losetup", ["-j", fuse_file], None).ok().out();
    assert!(losetup.trim().is_empty(), "loop detached: {losetup}");
    // Idempotent.
    assert_eq!(close(&mnt)["closed"], false);
    assert_eq!(close(&vol)["closed"], false);
    drop(guard);

    let raw = snapshot(&vol);
    assert!(!contains(&raw, MARKER), "the volume file holds plaintext");
    cryptsetup(["luksDump".as_ref(), vol.as_os_str()]).ok();

    let (_guard, _) = open(&vol, &key, &mnt, &[]);
    assert_eq!(std::fs::read(mnt.join("marker.txt")).unwrap(), text);
    assert!(std::fs::read(mnt.join("sub/blob.bin")).unwrap() == blob);
    // Closing by volume path works too.
    assert_eq!(close(&vol)["closed"], true);
}

#[test]
fn loop_fsynced_data_survives_kill_9_of_the_export() {
    need("mkfs.ext4");
    let dir = tmpdir();
    let (vol, key) = volume(dir.path());
    let mnt = dir.path().join("mnt");
    let (guard, v) = open(&vol, &key, &mnt, &["--mkfs", "ext4"]);
    let pid = v["pid"].as_u64().unwrap();
    let data = random_bytes(3 << 20);
    write_synced(&mnt.join("durable.bin"), &data);
    // fsync of the directory makes the new name durable too.
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();

    run("kill", ["-9".to_string(), pid.to_string()], None).ok();
    for _ in 0..100 {
        if gone(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // close cleans up after a dead export.
    let c = close(&mnt);
    assert_eq!(c["closed"], true, "{c}");
    assert_eq!(c["export_was_running"], false, "{c}");
    assert!(!is_mounted(&mnt));
    drop(guard);

    let (_guard, _) = open(&vol, &key, &mnt, &[]);
    assert!(std::fs::read(mnt.join("durable.bin")).unwrap() == data);
    close(&mnt);
}

#[test]
fn loop_bad_input_is_refused_and_changes_nothing() {
    need("mkfs.ext4");
    let dir = tmpdir();
    let (vol, key) = volume(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let before = snapshot(&vol);
    let (bad_key, _) = machine_key(dir.path(), "bad");

    // Wrong key: exit 1, nothing mounted, nothing recorded.
    let o = |extra: &[&std::ffi::OsStr]| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["open".as_ref()];
        a.extend_from_slice(extra);
        sv(a)
    };
    o(&[
        "--key-file".as_ref(),
        bad_key.as_os_str(),
        "--mount".as_ref(),
        mnt.as_os_str(),
        "--mkfs".as_ref(),
        "ext4".as_ref(),
        vol.as_os_str(),
    ])
    .code(1)
    .stderr_mentions("no keyslot opens");
    assert!(!is_mounted(&mnt));

    // A mount point that is not empty.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    o(&[
        "--key-file".as_ref(),
        key.as_os_str(),
        "--mount".as_ref(),
        full.as_os_str(),
        vol.as_os_str(),
    ])
    .code(2)
    .stderr_mentions("not empty");

    // A mount point that does not exist.
    o(&[
        "--key-file".as_ref(),
        key.as_os_str(),
        "--mount".as_ref(),
        dir.path().join("nowhere").as_os_str(),
        vol.as_os_str(),
    ])
    .code(2)
    .stderr_mentions("does not exist");

    // A missing detached header.
    o(&[
        "--key-file".as_ref(),
        key.as_os_str(),
        "--header".as_ref(),
        dir.path().join("missing.hdr").as_os_str(),
        "--mount".as_ref(),
        mnt.as_os_str(),
        vol.as_os_str(),
    ])
    .code(2)
    .stderr_mentions("missing.hdr");

    // A volume with no file system, opened without --mkfs.
    o(&[
        "--key-file".as_ref(),
        key.as_os_str(),
        "--mount".as_ref(),
        mnt.as_os_str(),
        vol.as_os_str(),
    ])
    .code(2)
    .stderr_mentions("--mkfs");
    assert!(!is_mounted(&mnt));
    assert_unchanged(&vol, &before, "refused opens");
    let id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&vol).unwrap();
        format!("vol-{:x}-{:x}", m.dev(), m.ino())
    };
    assert!(
        !Path::new(&format!("/run/sealvol/{id}.json")).exists(),
        "refused opens left a record"
    );
    assert!(
        !Path::new(&format!("/run/sealvol/{id}")).exists(),
        "refused opens left files"
    );

    // Already open: the second open is refused, the first keeps working.
    let (_guard, _) = open(&vol, &key, &mnt, &["--mkfs", "ext4"]);
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    o(&[
        "--key-file".as_ref(),
        key.as_os_str(),
        "--mount".as_ref(),
        mnt2.as_os_str(),
        vol.as_os_str(),
    ])
    .code(2)
    .stderr_mentions("already open");
    assert!(!is_mounted(&mnt2));
    std::fs::write(mnt.join("still-works"), b"yes").unwrap();

    // A busy file system is not closed, and stays usable.
    let busy = std::fs::File::open(mnt.join("still-works")).unwrap();
    sv(["close".as_ref(), mnt.as_os_str()])
        .code(2)
        .stderr_mentions("busy");
    assert!(is_mounted(&mnt));
    drop(busy);
    close(&mnt);
}

#[test]
fn loop_read_only_open_writes_nothing() {
    need("mkfs.ext4");
    let dir = tmpdir();
    let (vol, key) = volume(dir.path());
    let mnt = dir.path().join("mnt");
    {
        let (_g, _) = open(&vol, &key, &mnt, &["--mkfs", "ext4"]);
        std::fs::write(mnt.join("f"), b"content").unwrap();
        close(&mnt);
    }
    let before = snapshot(&vol);
    let (_g, v) = open(&vol, &key, &mnt, &["--read-only"]);
    assert_eq!(v["read_only"], true);
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"content");
    let err = std::fs::write(mnt.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    close(&mnt);
    assert_unchanged(&vol, &before, "a read-only open");
}

#[test]
fn loop_detached_header_and_512_byte_sectors() {
    need("mkfs.ext4");
    let dir = tmpdir();
    let (key, _) = machine_key(dir.path(), "key");
    let vol = dir.path().join("data.img");
    let hdr = dir.path().join("vol.hdr");
    sv([
        "format".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--header".as_ref(),
        hdr.as_os_str(),
        "--sector-size".as_ref(),
        "512".as_ref(),
        "--size".as_ref(),
        "48M".as_ref(),
        vol.as_os_str(),
    ])
    .ok();
    let mnt = dir.path().join("mnt");
    let hdr_s = hdr.to_str().unwrap();
    let (_g, _) = open(&vol, &key, &mnt, &["--header", hdr_s, "--mkfs", "ext4"]);
    write_synced(&mnt.join("m"), MARKER);
    close(&mnt);
    assert!(!contains(&snapshot(&vol), MARKER));
    let (_g2, _) = open(&vol, &key, &mnt, &["--header", hdr_s]);
    assert_eq!(std::fs::read(mnt.join("m")).unwrap(), MARKER);
    close(&mnt);
}
