//! A workload VM with an encrypted data disk, booted for real: the Debian kernel (the
//! "base image" stand-in; its uncompressed vmlinux boots in about 2 s under TCG) with a
//! busybox initramfs. The guest reads a marker from the data disk and writes a line to it;
//! after qemu stops, the host reads the line back with `sealvol export`, and the raw volume
//! holds neither text. Both attachments: qemu's own LUKS driver (LUKS1, secret from a 0600
//! file deleted once qemu runs) and sealvol's NBD export.
//!
//! Needs linux-image-amd64, busybox-static, cpio, kmod, xz-utils, qemu-system-x86: a
//! missing one fails the test.

mod common;
#[path = "common/guest.rs"]
mod guest;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealvol_host::vm::{self, Accel, DataDisk, Stopped, VmSpec};

const MARKER: &[u8] = b"SEALVOL-VM-MARKER-7f3a";
const WROTE: &str = "GUEST-WROTE-IT-91c2";

/// The guest: print the marker it reads, write a line at 1 MiB (synced), report, wait.
const GUEST: &str = "echo \"GUEST-READ:$(dd if=/dev/vda bs=22 count=1 2>/dev/null)\"\n\
     echo GUEST-WROTE-IT-91c2 | dd of=/dev/vda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null\n\
     sync; echo GUEST-DONE\nsleep 1000\n";

/// A LUKS1 volume whose first bytes are the marker.
fn data_volume(dir: &Path, key: &Path) -> PathBuf {
    let vol = dir.join("data.luks");
    sv([
        "format",
        "--type",
        "luks1",
        "--key-file",
        key.to_str().unwrap(),
        // A random key as hex text (qemu's secret): a machine key, said so.
        "--key-profile",
        "machine",
        "--size",
        "4M",
        vol.to_str().unwrap(),
    ])
    .ok();
    let src = write_secret(dir, "marker", MARKER);
    sv([
        "import",
        "--key-file",
        key.to_str().unwrap(),
        src.to_str().unwrap(),
        vol.to_str().unwrap(),
    ])
    .ok();
    vol
}

fn boot(dir: &Path, data: DataDisk, secret: Option<vm::SecretPipe>) -> String {
    let (kernel, initrd) = guest::kernel_and_initrd(dir, &["virtio_pci", "virtio_blk"], GUEST);
    let spec = VmSpec {
        accel: Accel::Tcg,
        cpus: 1,
        memory_mib: 256,
        kernel: Some((
            kernel,
            initrd,
            "console=ttyS0 quiet panic=-1 rdinit=/init".into(),
        )),
        root_disk: None,
        root_nbd: None,
        seed_iso: None,
        data: Some(data),
        qmp_socket: dir.join("qmp.sock"),
        console_log: dir.join("console.log"),
        forwards: vec![],
    };
    let started = Instant::now();
    let mut child = vm::start(&spec).expect("qemu starts");
    // qemu has read the secret while creating its objects: our end of the pipe goes now.
    drop(secret);
    let log = loop {
        let log = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
        if log.contains("GUEST-DONE") {
            break log;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("qemu exited ({s}) before the guest finished:\n{log}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "the guest did not finish in 25 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let how = vm::stop(child.id(), &spec.qmp_socket, Duration::from_secs(2));
    assert!(matches!(how, Stopped::Acpi | Stopped::Killed), "{how:?}");
    let _ = child.wait();
    log
}

fn check_after(dir: &Path, vol: &Path, key: &Path, log: &str) {
    assert!(
        log.contains(&format!("GUEST-READ:{}", String::from_utf8_lossy(MARKER))),
        "the guest did not read the marker:\n{log}"
    );
    let out = dir.join("plain.out");
    sv([
        "export",
        "--key-file",
        key.to_str().unwrap(),
        vol.to_str().unwrap(),
        out.to_str().unwrap(),
    ])
    .ok();
    let plain = std::fs::read(&out).unwrap();
    assert_eq!(&plain[..MARKER.len()], MARKER);
    assert_eq!(&plain[1 << 20..(1 << 20) + WROTE.len()], WROTE.as_bytes());
    let raw = std::fs::read(vol).unwrap();
    for needle in [MARKER, WROTE.as_bytes()] {
        assert!(!raw.windows(needle.len()).any(|w| w == needle));
    }
}

#[test]
fn vm_tcg_guest_uses_luks1_data_disk_through_qemu_luks_driver() {
    let d = tmpdir();
    let dir = d.path();
    let (key, hex) = hex_key(dir);
    let vol = data_volume(dir, &key);
    // The key reaches qemu through a pipe (/dev/fd/N), never a file.
    let secret = vm::SecretPipe::new(hex.as_bytes()).unwrap();
    let log = boot(
        dir,
        DataDisk::Luks {
            volume: vol.clone(),
            header: None,
            secret_file: secret.path(),
        },
        Some(secret),
    );
    check_after(dir, &vol, &key, &log);
}

#[test]
fn vm_tcg_guest_uses_data_disk_through_sealvol_nbd_export() {
    let d = tmpdir();
    let dir = d.path();
    let (key, _) = hex_key(dir);
    let vol = data_volume(dir, &key);
    let sock = dir.join("nbd.sock");
    let mut server = Command::new(SEALVOL)
        .args(["serve", "nbd", "--key-file"])
        .arg(&key)
        .arg("--socket")
        .arg(&sock)
        .arg(&vol)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sealvol serve nbd");
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no NBD socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = boot(dir, DataDisk::Nbd { socket: sock }, None);
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    check_after(dir, &vol, &key, &log);
}
