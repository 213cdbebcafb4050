//! `sealvol volume create --type luks1` (the format qemu's LUKS driver reads) through a
//! workload's whole life on real loop devices, FUSE, ext4 and mounts (needs root): create
//! mounted, write, close, open, read, destroy, nothing left. cryptsetup checks the header.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const MARKER: &str = "SEALVOL-LUKS1-LIFECYCLE-7c3a";

/// A scratch state directory; whatever a failed test left is destroyed on drop.
struct Host {
    _tmp: tempfile::TempDir,
    state: PathBuf,
}

impl Host {
    fn sv(&self, args: &[&str]) -> Run {
        let mut a = vec!["--json", "volume", "--state-dir"];
        a.push(self.state.to_str().unwrap());
        a.extend_from_slice(args);
        sv(a)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.sv(&["destroy", "w1"]);
    }
}

fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out.retain(|p| p.extension().is_none_or(|x| x != "lock") && !p.ends_with("locks"));
    out
}

#[test]
fn loop_luks1_volume_lifecycle() {
    let tmp = tmpdir();
    let h = Host {
        state: tmp.path().join("state"),
        _tmp: tmp,
    };
    let (key, _) = machine_key(h._tmp.path(), "key");
    let key = key.to_str().unwrap();

    // A LUKS1 volume may keep its header in a file of its own (qemu 9.0 and later read it
    // through the LUKS driver's `header`): cryptsetup opens it with --header, destroy wipes
    // both files.
    let made = h
        .sv(&[
            "create",
            "w0",
            "--type",
            "luks1",
            "--detached-header",
            "--size",
            "16M",
            "--key-file",
            key,
        ])
        .ok()
        .json();
    assert_eq!(made["params"]["detached_header"], true);
    let hdr = PathBuf::from(made["header"].as_str().unwrap());
    let data = PathBuf::from(made["image"].as_str().unwrap());
    let dump = cryptsetup(["luksDump".as_ref(), hdr.as_os_str()])
        .ok()
        .out();
    assert!(
        dump.lines()
            .any(|l| l.starts_with("Version:") && l.trim_end().ends_with('1')),
        "{dump}"
    );
    assert_cs_opens(Path::new(key), Some(&hdr), &data);
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        16 << 20,
        "the data file holds only data"
    );
    h.sv(&["destroy", "w0"]).ok();
    assert!(!hdr.exists() && !data.exists());

    let made = h
        .sv(&[
            "create",
            "w1",
            "--type",
            "luks1",
            "--mount",
            "--size",
            "16M",
            "--key-file",
            key,
        ])
        .ok()
        .json();
    assert_eq!(made["params"]["type"], "luks1");
    assert_eq!(made["mounted"], true);
    let image = PathBuf::from(made["image"].as_str().unwrap());
    let dump = cryptsetup(["luksDump".as_ref(), image.as_os_str()])
        .ok()
        .out();
    assert!(
        dump.lines()
            .any(|l| l.starts_with("Version:") && l.trim_end().ends_with('1')),
        "{dump}"
    );
    assert_cs_opens(Path::new(key), None, &image);

    // The same id as LUKS2 is another volume.
    h.sv(&["create", "w1", "--size", "16M", "--key-file", key])
        .code(2)
        .stderr_mentions("exists with other parameters");

    let mnt = PathBuf::from(made["mount_path"].as_str().unwrap());
    std::fs::write(mnt.join("hello.txt"), MARKER).unwrap();
    h.sv(&["close", "w1"]).ok();
    assert!(!mnt.join("hello.txt").exists());
    let raw = std::fs::read(&image).unwrap();
    assert!(!raw.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));

    let opened = h.sv(&["open", "w1", "--key-file", key]).ok().json();
    assert_eq!(opened["params"]["type"], "luks1");
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        MARKER
    );
    let listed = h.sv(&["list"]).ok().json();
    assert_eq!(listed[0]["params"]["type"], "luks1");

    let d = h.sv(&["destroy", "w1"]).ok().json();
    assert_eq!(d["destroyed"], true);
    assert!(!image.exists());
    let left: Vec<_> = tree(&h.state).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    h.sv(&["status", "w1"]).code(1);
}
