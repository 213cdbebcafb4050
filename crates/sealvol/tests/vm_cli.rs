//! `sealvol vm …` end to end, booted for real under TCG: a workload volume from `sealvol
//! volume create` becomes a VM's encrypted data disk (through qemu's LUKS driver, a `--type
//! luks1` volume, and through sealvol's NBD export); the guest mounts it and writes a file;
//! while qemu's LUKS driver reads it, `volume open` and a second VM's start are refused;
//! after `vm stop` the host reads the file back through `sealvol volume open`; `vm destroy
//! --destroy-data` leaves no qemu, no file and no volume. The seed ISO carries the ssh key;
//! no key is in any qemu or export command line, log or state file.
//!
//! The "base image" is a small raw file the guest ignores; the Debian kernel with a busybox
//! initramfs boots through --kernel/--initrd (common/guest.rs). Needs qemu-system-x86,
//! qemu-utils, genisoimage, linux-image-amd64, busybox-static, cpio, kmod, fuse3, e2fsprogs:
//! a missing one fails the test.

mod common;
#[path = "common/guest.rs"]
mod guest;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WROTE: &str = "GUEST-WROTE-IT-5d1e";
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsealvolTestKey0123456789 tester@host";

/// Finds the data disk by its size (16 MiB: 32768 sectors), mounts it, writes a file.
const GUEST: &str = "D=''; for b in /sys/block/vd*; do [ \"$(cat $b/size)\" = 32768 ] && D=/dev/${b##*/}; done\n\
     echo \"GUEST-DATA-DISK:$D\"; mkdir -p /data\n\
     if mount -t ext4 $D /data && echo GUEST-WROTE-IT-5d1e > /data/hello.txt && sync && umount /data; \
     then echo GUEST-DONE; else echo GUEST-FAILED; fi\nsleep 1000\n";

/// A scratch state directory whose VMs, volumes and exports are torn down on drop.
struct Host {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    run: PathBuf,
    vms: Vec<String>,
    volumes: Vec<String>,
}

impl Host {
    fn new() -> Self {
        for t in ["qemu-img", "genisoimage", "qemu-system-x86_64", "mkfs.ext4"] {
            need(t);
        }
        let tmp = tmpdir();
        let dir = tmp.path().to_path_buf();
        Host {
            state: dir.join("state"),
            run: dir.join("run"),
            dir,
            _tmp: tmp,
            vms: Vec::new(),
            volumes: Vec::new(),
        }
    }

    /// `sealvol ARGS` with this host's run dir and state dir (`verb` is `vm` or `volume`).
    fn sv(&self, verb: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut a: Vec<String> = vec![
            format!("SEALVOL_RUN_DIR={}", self.run.display()),
            SEALVOL.into(),
            "--json".into(),
            verb.into(),
            "--state-dir".into(),
            self.state.display().to_string(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        run("env", &a, stdin)
    }

    /// `sealvol vm ARGS` with the crash hook set to `step` (debug builds kill themselves
    /// there); returns the signal that ended it.
    fn crash(&self, step: &str, args: &[&str], stdin: Option<&str>) -> i32 {
        use std::io::Write;
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::process::Command::new(SEALVOL)
            .env("SEALVOL_RUN_DIR", &self.run)
            .env("SEALVOL_TEST_CRASH_AT", step)
            .args(["--json", "vm", "--state-dir"])
            .arg(&self.state)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait().unwrap().signal().unwrap_or(0)
    }

    /// Every qemu whose command line names this host's directory.
    fn qemus(&self) -> Vec<u32> {
        let needle = self.dir.display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("qemu-system") && c.contains(&needle)
                })
            })
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for id in self.vms.clone() {
            let _ = self.sv("vm", &["destroy", &id], None);
        }
        for id in self.volumes.clone() {
            let _ = self.sv("volume", &["destroy", &id], None);
        }
        for pid in self.qemus() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// Every file under `dir`, recursively (sockets and such skipped).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                out.extend(files(&e.path()));
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn assert_no_key_in(paths: &[PathBuf], key: &str, what: &str) {
    for p in paths {
        let b = std::fs::read(p).unwrap_or_default();
        assert!(
            !b.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key is in {} ({what})",
            p.display()
        );
    }
}

fn cmdline(pid: u64) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// A VM whose data disk is a workload volume, read through `via` (qemu's own LUKS driver,
/// or sealvol's NBD export); `detached`: the volume's header is in a file of its own (qemu 9.0
/// and later read it through the LUKS driver's `header` option).
fn vm_round_trip(via: &str, detached: bool) {
    let mut h = Host::new();
    let dir = h.dir.clone();
    let (key, hex) = hex_key(&dir);
    let keyf = key.to_str().unwrap();
    let name = if detached {
        format!("{via}-hdr")
    } else {
        via.to_string()
    };
    let (vol, vm) = (format!("data-{name}"), format!("web-{name}"));
    h.volumes.push(vol.clone());
    h.vms.push(vm.clone());

    // qemu's LUKS driver reads LUKS1 only.
    let luks_type = if via == "luks" { "luks1" } else { "luks2" };
    let mut create = vec![
        "create",
        &vol,
        "--type",
        luks_type,
        "--size",
        "16M",
        "--key-file",
        keyf,
        // A random key written as hex text (qemu's secret): say it is a machine key.
        "--key-profile",
        "machine",
    ];
    if detached {
        create.push("--detached-header");
    }
    let made = h.sv("volume", &create, None).ok().json();
    assert_eq!(made["params"]["type"], luks_type);
    assert_eq!(made["params"]["detached_header"], detached);
    let image = h.state.join("volumes").join(&vol).join("disk.img");

    let base = dir.join("base.raw");
    sparse_file(&base, 1 << 20);
    // Each test its own host port: the tests run in parallel.
    let port = match (via, detached) {
        ("luks", false) => 40022,
        ("nbd", _) => 40023,
        _ => 40024,
    };
    let fwd = format!("{port}:22/tcp");
    let ssh = dir.join("id.pub");
    std::fs::write(&ssh, format!("{SSH_KEY}\n")).unwrap();
    let (kernel, initrd) =
        guest::kernel_and_initrd(&dir, &["virtio_pci", "virtio_blk", "ext4"], GUEST);
    let created = h
        .sv(
            "vm",
            &[
                "create",
                &vm,
                "--cpus",
                "1",
                "--memory",
                "256M",
                "--disk-size",
                "32M",
                "--base",
                base.to_str().unwrap(),
                "--data-volume",
                &vol,
                "--data-via",
                via,
                "--forward",
                &fwd,
                "--ssh-key",
                ssh.to_str().unwrap(),
                "--accel",
                "tcg",
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--append",
                "console=ttyS0 quiet panic=-1 rdinit=/init",
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(created["phase"], "ready");
    let vmdir = h.state.join("vm/dirs").join(&vm);
    let iso = std::fs::read(vmdir.join("seed.iso")).unwrap();
    assert!(
        iso.windows(SSH_KEY.len()).any(|w| w == SSH_KEY.as_bytes()),
        "the seed ISO lacks the ssh key"
    );

    // A wrong key: exit 1, nothing running.
    let wrong = write_secret(
        &dir,
        "wrong",
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    h.sv(
        "vm",
        &["start", &vm, "--key-file", wrong.to_str().unwrap()],
        None,
    )
    .code(1);
    assert!(h.qemus().is_empty());

    let t = Instant::now();
    let started = h
        .sv(
            "vm",
            &["-v", "start", &vm, "--key-file", "-"],
            Some(hex.as_bytes()),
        )
        .ok();
    assert!(!started.err().contains(&hex) && !started.out().contains(&hex));
    let st = started.json();
    let qemu = st["qemu_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no qemu pid: {st}\n{}", started.err()));
    assert_eq!(st["accel"], "tcg");
    assert!(
        !vmdir.join("data.secret").exists(),
        "a qemu secret file exists"
    );
    let mut pids = vec![qemu];
    if via == "nbd" {
        pids.push(st["nbd_pid"].as_u64().expect("nbd pid"));
    }
    for p in &pids {
        let c = cmdline(*p);
        assert!(!c.is_empty() && !c.contains(&hex), "key or nothing in {c}");
    }
    if via == "luks" {
        // qemu's LUKS driver gets the detached header as its `header` node, or none.
        let hdr = h.state.join("volumes").join(&vol).join("header.img");
        let c = cmdline(qemu);
        assert_eq!(
            c.contains(&format!(
                "\"header\":{{\"driver\":\"file\",\"filename\":\"{}\"}}",
                hdr.display()
            )),
            detached,
            "{c}"
        );
    }
    // Idempotent start.
    assert_eq!(
        h.sv("vm", &["start", &vm, "--key-file", keyf], None)
            .ok()
            .json()["already_running"],
        true
    );

    // The running VM's data disk is not the volume manager's to open, close or destroy:
    // each is refused naming the VM, and qemu (and its NBD export) run on.
    for verb in [
        vec!["open", &vol, "--key-file", keyf],
        vec!["close", &vol],
        vec!["destroy", &vol],
    ] {
        h.sv("volume", &verb, None)
            .code(2)
            .stderr_mentions(&format!("data disk of running VM {vm}"));
    }
    for p in &pids {
        assert!(!cmdline(*p).is_empty(), "process {p} stopped");
    }
    assert!(image.exists(), "the data volume's image went");
    assert_eq!(
        h.sv("volume", &["status", &vol], None).ok().json()["data_disk_of"],
        serde_json::json!([vm])
    );

    if via == "luks" {
        // qemu holds the volume's claim while it reads it: no second VM.
        let vm2 = format!("{vm}-b");
        let args = [
            "create",
            &vm2,
            "--cpus",
            "1",
            "--memory",
            "128M",
            "--disk-size",
            "32M",
            "--base",
        ];
        let mut args = args.to_vec();
        let base_s = base.to_str().unwrap();
        args.extend([
            base_s,
            "--data-volume",
            &vol,
            "--data-via",
            via,
            "--accel",
            "tcg",
        ]);
        h.sv("vm", &args, None).ok();
        h.sv("vm", &["start", &vm2, "--key-file", keyf], None)
            .code(2)
            .stderr_mentions("in use");
        assert_eq!(h.qemus(), vec![qemu as u32], "a second qemu runs");
        h.sv("vm", &["destroy", &vm2], None).ok();
    }

    let log = loop {
        let log = h.sv("vm", &["console-log", &vm], None).ok().json()["log"]
            .as_str()
            .unwrap()
            .to_string();
        if log.contains("GUEST-DONE") || log.contains("GUEST-FAILED") {
            break log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the guest did not finish in 30 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("GUEST-DONE"), "the guest failed:\n{log}");
    let listed = h.sv("vm", &["list"], None).ok().json();
    assert_eq!(listed[0]["running"], true);

    let stopped = h
        .sv("vm", &["stop", &vm, "--timeout", "1"], None)
        .ok()
        .json();
    assert!(
        ["acpi", "killed"].contains(&stopped["how"].as_str().unwrap()),
        "{stopped}"
    );
    assert!(h.qemus().is_empty(), "qemu still runs after stop");
    for p in &pids {
        assert!(cmdline(*p).is_empty(), "process {p} still runs after stop");
    }
    assert_eq!(
        h.sv("vm", &["status", &vm], None).ok().json()["running"],
        false
    );
    assert_eq!(
        h.sv("volume", &["status", &vol], None).ok().json()["data_disk_of"],
        serde_json::json!([])
    );

    // The host reads the guest's file through the volume's own export.
    let opened = h
        .sv("volume", &["open", &vol, "--key-file", keyf], None)
        .ok()
        .json();
    let mnt = PathBuf::from(opened["mount_path"].as_str().unwrap());
    let text = std::fs::read_to_string(mnt.join("hello.txt")).unwrap();
    assert_eq!(text.trim(), WROTE);
    h.sv("volume", &["close", &vol], None).ok();
    let raw = std::fs::read(&image).unwrap();
    assert!(
        !raw.windows(WROTE.len()).any(|w| w == WROTE.as_bytes()),
        "plaintext on disk"
    );

    // No key anywhere sealvol wrote (records, logs, console, seed, state).
    let mut all = files(&h.state);
    all.extend(files(&h.run));
    assert_no_key_in(&all, &hex, "state");

    let d = h
        .sv("vm", &["destroy", &vm, "--destroy-data"], None)
        .ok()
        .json();
    assert_eq!(d["already_absent"], false);
    assert_eq!(d["data_destroyed"]["already_absent"], false);
    assert!(h.qemus().is_empty());
    assert!(!vmdir.exists());
    assert!(files(&h.state.join("vm/records")).is_empty());
    assert!(
        files(&h.state.join("volumes")).is_empty(),
        "{:?}",
        files(&h.state)
    );
    h.sv("volume", &["status", &vol], None).code(1);
    assert_eq!(
        h.sv("vm", &["list"], None).ok().json(),
        serde_json::json!([])
    );
    assert_eq!(
        h.sv("vm", &["sweep"], None).ok().json()["actions"],
        serde_json::json!([])
    );
}

/// The guest of the encrypted root disk: finds it by its size (32 MiB: 65536 sectors), prints
/// what the base holds at 0, writes a line at 1 MiB.
const ROOT_GUEST: &str =
    "D=''; for b in /sys/block/vd*; do [ \"$(cat $b/size)\" = 65536 ] && D=/dev/${b##*/}; done\n\
     echo \"GUEST-ROOT-DISK:$D:$(dd if=$D bs=20 count=1 2>/dev/null)\"\n\
     if echo GUEST-WROTE-IT-5d1e | dd of=$D bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; \
     then echo GUEST-DONE; else echo GUEST-FAILED; fi\nsleep 1000\n";

/// `vm create --encrypted-root`: the root disk is a sealvol overlay over the raw base, served
/// to qemu over NBD with the VM's key; the guest reads the base through it and writes; the
/// overlay file holds no plaintext, the base is not written, the host reads the guest's
/// line back through `serve nbd`; start without the right key starts nothing; destroy
/// wipes it all.
#[test]
fn vm_cli_encrypted_root_disk_through_sealvol_nbd() {
    let mut h = Host::new();
    let dir = h.dir.clone();
    let (key, hex) = hex_key(&dir);
    let keyf = key.to_str().unwrap();
    let vm = "enc-root".to_string();
    h.vms.push(vm.clone());
    let base = dir.join("base.raw");
    sparse_file(&base, 16 << 20);
    write_at(&base, 0, b"BASE-MARKER-3b9e7a10");
    let base_before = std::fs::read(&base).unwrap();
    let (kernel, initrd) =
        guest::kernel_and_initrd(&dir, &["virtio_pci", "virtio_blk"], ROOT_GUEST);
    let created = h
        .sv(
            "vm",
            &[
                "create",
                &vm,
                "--memory",
                "256M",
                "--disk-size",
                "32M",
                "--base",
                base.to_str().unwrap(),
                "--encrypted-root",
                "--key-file",
                keyf,
                "--key-profile",
                "machine",
                "--accel",
                "tcg",
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--append",
                "console=ttyS0 quiet panic=-1 rdinit=/init",
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(created["params"]["encrypted_root"], true, "{created}");
    let vmdir = h.state.join("vm/dirs").join(&vm);
    let root = vmdir.join("root.ov");
    assert_eq!(created["overlay"], root.to_str().unwrap());
    assert!(!vmdir.join("overlay.qcow2").exists());
    let as_created = std::fs::read(&root).unwrap();

    // A wrong key: exit 1, nothing running.
    let wrong = write_secret(&dir, "wrong", b"0123456789abcdef0123456789abcdef");
    h.sv(
        "vm",
        &["start", &vm, "--key-file", wrong.to_str().unwrap()],
        None,
    )
    .code(1);
    assert!(h.qemus().is_empty());

    let started = h
        .sv(
            "vm",
            &["start", &vm, "--key-file", "-"],
            Some(hex.as_bytes()),
        )
        .ok();
    let st = started.json();
    let qemu = st["qemu_pid"].as_u64().expect("qemu pid");
    let export = st["root_nbd_pid"].as_u64().expect("root export pid");
    for p in [qemu, export] {
        let c = cmdline(p);
        assert!(!c.is_empty() && !c.contains(&hex), "key or nothing in {c}");
    }
    assert!(cmdline(qemu).contains("root.nbd.sock"), "{}", cmdline(qemu));
    let console = vmdir.join("console.log");
    let t = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("GUEST-DONE") || log.contains("GUEST-FAILED") {
            break log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the guest did not finish in 30 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("GUEST-DONE"), "the guest failed:\n{log}");
    assert!(
        log.contains(":BASE-MARKER-3b9e7a10"),
        "the guest did not read the base through its root disk:\n{log}"
    );
    h.sv("vm", &["stop", &vm, "--timeout", "1"], None).ok();
    assert!(h.qemus().is_empty());
    assert!(cmdline(export).is_empty(), "the root export still runs");

    // The record keeps the checkpoint the root disk stopped at: the copy as created, put
    // back, is refused at the next start (exit 1), nothing running.
    let record = std::fs::read_to_string(h.state.join(format!("vm/records/{vm}.json"))).unwrap();
    assert!(record.contains("root_checkpoint"), "{record}");
    let current = std::fs::read(&root).unwrap();
    std::fs::write(&root, &as_created).unwrap();
    h.sv("vm", &["start", &vm, "--key-file", keyf], None)
        .code(1)
        .stderr_mentions("rollback");
    assert!(h.qemus().is_empty());
    std::fs::write(&root, &current).unwrap();

    // The overlay holds no plaintext; the base is as it was; the line reads back.
    let raw = std::fs::read(&root).unwrap();
    assert!(!raw.windows(WROTE.len()).any(|w| w == WROTE.as_bytes()));
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base was written"
    );
    let sock = dir.join("check.sock");
    let mut serve = std::process::Command::new(SEALVOL)
        .env("SEALVOL_RUN_DIR", &h.run)
        .args(["serve", "nbd", "--read-only", "--key-file", keyf, "--base"])
        .arg(&base)
        .arg("--socket")
        .arg(&sock)
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no NBD socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = dir.join("root.raw");
    run(
        need("qemu-img"),
        [
            "convert".to_string(),
            "-f".into(),
            "raw".into(),
            "-O".into(),
            "raw".into(),
            format!("nbd+unix:///?socket={}", sock.display()),
            out.display().to_string(),
        ],
        None,
    )
    .ok();
    let _ = std::process::Command::new("kill")
        .arg(serve.id().to_string())
        .status();
    let _ = serve.wait();
    let plain = std::fs::read(&out).unwrap();
    assert_eq!(&plain[..20], b"BASE-MARKER-3b9e7a10");
    assert_eq!(&plain[1 << 20..(1 << 20) + WROTE.len()], WROTE.as_bytes());

    let mut all = files(&h.state);
    all.extend(files(&h.run));
    assert_no_key_in(&all, &hex, "state");
    h.sv("vm", &["destroy", &vm], None).ok();
    assert!(!vmdir.exists());
    assert!(h.qemus().is_empty());
}

#[test]
fn vm_cli_data_disk_through_qemu_luks_driver() {
    vm_round_trip("luks", false);
}

/// Issue 10: a data volume with a detached LUKS1 header through qemu's LUKS driver (qemu 9.0
/// and later; scripts/test installs qemu 10 from bookworm-backports).
#[test]
fn vm_cli_data_disk_with_a_detached_header_through_qemu_luks_driver() {
    vm_round_trip("luks", true);
}

#[test]
fn vm_cli_data_disk_through_sealvol_nbd_export() {
    vm_round_trip("nbd", false);
}

/// Bad input names what was wrong and leaves nothing behind.
#[test]
fn vm_cli_bad_input_changes_nothing() {
    let h = Host::new();
    let base = h.dir.join("base.raw");
    sparse_file(&base, 1 << 20);
    let b = base.to_str().unwrap();
    let create = |extra: &[&str]| {
        let mut a = vec![
            "create",
            "w",
            "--memory",
            "128M",
            "--disk-size",
            "8M",
            "--base",
            b,
        ];
        a.extend_from_slice(extra);
        h.sv("vm", &a, None).fails().err()
    };
    assert!(create(&["--data-volume", "nope"]).contains("no data volume nope"));
    assert!(create(&["--forward", "22"]).contains("HOST:GUEST/tcp"));
    assert!(create(&["--ssh-key", b]).contains("public ssh key"));
    let e = h
        .sv(
            "vm",
            &[
                "create",
                "w",
                "--memory",
                "128M",
                "--disk-size",
                "8M",
                "--base",
                "/nonexistent",
            ],
            None,
        )
        .fails()
        .err();
    assert!(e.contains("does not exist"), "{e}");
    assert!(h
        .sv(
            "vm",
            &[
                "create",
                "../x",
                "--memory",
                "1M",
                "--disk-size",
                "8M",
                "--base",
                b
            ],
            None
        )
        .fails()
        .err()
        .contains("invalid volume id"));
    assert!(files(&h.state.join("vm/dirs")).is_empty());
    assert!(files(&h.state.join("vm/records")).is_empty());
    h.sv("vm", &["status", "w"], None).code(1);
}

/// Sweep: a qemu whose record is gone is killed and its files removed; a record whose qemu
/// died is cleared with its pid file.
#[test]
fn vm_cli_sweep_kills_orphans_and_clears_dead_vms() {
    let h = Host::new();
    let base = h.dir.join("base.raw");
    sparse_file(&base, 1 << 20);
    let b = base.to_str().unwrap();
    for id in ["orphan", "dead"] {
        let a = [
            "create",
            id,
            "--memory",
            "64M",
            "--disk-size",
            "8M",
            "--base",
            b,
            "--accel",
            "tcg",
        ];
        h.sv("vm", &a, None).ok();
        h.sv("vm", &["start", id], None).ok();
    }
    assert_eq!(h.qemus().len(), 2);
    let dead = h.sv("vm", &["status", "dead"], None).ok().json()["qemu_pid"]
        .as_u64()
        .unwrap();
    std::fs::remove_file(h.state.join("vm/records/orphan.json")).unwrap();
    std::process::Command::new("kill")
        .args(["-9", &dead.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    while !cmdline(dead).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let swept = h.sv("vm", &["sweep"], None).ok().json();
    let text = swept["actions"].to_string();
    assert!(text.contains("orphan") && text.contains("dead"), "{text}");
    assert!(h.qemus().is_empty(), "an orphan qemu survived the sweep");
    assert!(!h.state.join("vm/dirs/orphan").exists());
    assert!(!h.state.join("vm/dirs/dead/qemu.pid").exists());
    assert_eq!(
        h.sv("vm", &["status", "dead"], None).ok().json()["running"],
        false
    );
    h.sv("vm", &["destroy", "dead"], None).ok();
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A crash (SIGKILL, from the debug-build hook) at every step of `vm create`, `vm start` and
/// `vm destroy --destroy-data`, then `vm sweep`: an interrupted create is undone, a qemu
/// that a crashed start left unrecorded is killed, an interrupted destroy is finished with
/// its data volume as it was asked; no qemu, file or key is left behind, and no key ever
/// reached the state directory.
#[test]
fn vm_cli_crash_at_every_step_then_sweep() {
    let mut h = Host::new();
    let base = h.dir.join("base.raw");
    sparse_file(&base, 1 << 20);
    let b = base.to_str().unwrap().to_string();
    let (key, hex) = hex_key(&h.dir);
    let keyf = key.to_str().unwrap().to_string();
    let volume = |h: &mut Host, vol: &str| {
        h.volumes.push(vol.into());
        let a = [
            "create",
            vol,
            "--type",
            "luks1",
            "--size",
            "16M",
            "--key-file",
            &keyf,
            "--key-profile",
            "machine",
        ];
        h.sv("volume", &a, None).ok();
    };
    let create = |id: &'static str, vol: &'static str| -> Vec<String> {
        [
            "create",
            id,
            "--memory",
            "64M",
            "--disk-size",
            "8M",
            "--base",
            &b,
            "--data-volume",
            vol,
            "--data-via",
            "luks",
            "--accel",
            "tcg",
        ]
        .map(String::from)
        .to_vec()
    };
    let sweep = |h: &Host| h.sv("vm", &["sweep"], None).ok().json()["actions"].to_string();

    volume(&mut h, "crash-data");
    h.vms.push("c".into());
    for step in ["vm-create:journal", "vm-create:overlay", "vm-create:seed"] {
        let a = create("c", "crash-data");
        assert_eq!(
            h.crash(step, &strs(&a), None),
            9,
            "{step}: the hook did not fire"
        );
        let actions = sweep(&h);
        assert!(
            actions.contains("undid an interrupted create"),
            "{step}: {actions}"
        );
        assert!(
            !h.state.join("vm/dirs/c").exists(),
            "{step}: the VM's files stayed"
        );
        assert!(files(&h.state.join("vm/records")).is_empty(), "{step}");
        h.sv("vm", &["status", "c"], None).code(1);
        h.sv("volume", &["status", "crash-data"], None).ok();
        assert_eq!(sweep(&h), "[]", "{step}: a second sweep found more");
    }

    // A start that dies once qemu runs, before the record names it.
    h.vms.push("s".into());
    h.sv("vm", &strs(&create("s", "crash-data")), None).ok();
    let a = ["start", "s", "--key-file", "-"];
    assert_eq!(h.crash("vm-start:spawned", &a, Some(&hex)), 9);
    assert_eq!(h.qemus().len(), 1, "qemu should outlive the crashed start");
    let mut all = files(&h.state);
    all.extend(files(&h.run));
    assert_no_key_in(&all, &hex, "after a crashed start");
    let actions = sweep(&h);
    assert!(actions.contains("killed qemu"), "{actions}");
    assert!(
        h.qemus().is_empty(),
        "the unrecorded qemu survived the sweep"
    );
    // The volume's claim went with that qemu: the VM starts again.
    h.sv("vm", &["start", "s", "--key-file", &keyf], None).ok();
    h.sv("vm", &["destroy", "s", "--timeout", "0"], None).ok();
    assert!(h.qemus().is_empty());

    // Destroy with its data volume, interrupted at each step: the sweep finishes both.
    h.vms.push("d".into());
    for (step, vol) in [
        ("vm-destroy:journal", "d1"),
        ("vm-destroy:stop", "d2"),
        ("vm-destroy:data", "d3"),
        ("vm-destroy:files", "d4"),
    ] {
        volume(&mut h, vol);
        let image = h.state.join("volumes").join(vol).join("disk.img");
        assert!(image.exists());
        h.sv("vm", &strs(&create("d", vol)), None).ok();
        h.sv("vm", &["start", "d", "--key-file", &keyf], None).ok();
        let a = ["destroy", "d", "--destroy-data", "--timeout", "0"];
        assert_eq!(h.crash(step, &a, None), 9, "{step}: the hook did not fire");
        let actions = sweep(&h);
        assert!(
            actions.contains(&format!("with its data volume {vol}")),
            "{step}: {actions}"
        );
        assert!(h.qemus().is_empty(), "{step}: qemu survived");
        assert!(
            !h.state.join("vm/dirs/d").exists(),
            "{step}: the VM's files stayed"
        );
        h.sv("vm", &["status", "d"], None).code(1);
        h.sv("volume", &["status", vol], None).code(1);
        assert!(!image.exists(), "{step}: the data volume's image stayed");
        assert_eq!(sweep(&h), "[]", "{step}: a second sweep found more");
    }
    h.sv("volume", &["destroy", "crash-data"], None).ok();
}
