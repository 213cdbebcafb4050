//! `sealvol serve nbd` read and written by qemu's own NBD client (`qemu-img`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A running `sealvol serve nbd`, stopped (SIGTERM) when dropped.
struct Serving {
    child: Child,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .output();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(vol: &Path, key: &Path, endpoint: &[&str], extra: &[&str]) -> Serving {
    // The test's own runtime dir, not the machine's /run/sealvol.
    let run_dir = vol.parent().unwrap().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut cmd = Command::new(SEALVOL);
    cmd.env("SEALVOL_RUN_DIR", &run_dir)
        .args(["serve", "nbd", "--key-file"])
        .arg(key)
        .args(endpoint)
        .args(extra)
        .arg(vol)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Serving {
        child: cmd.spawn().expect("start sealvol serve nbd"),
    }
}

fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A 32 MiB volume holding `plain` (random bytes).
fn volume(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let (key, _) = machine_key(dir, "key");
    let vol = dir.join("vol.img");
    sv([
        "format".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--size".as_ref(),
        "32M".as_ref(),
        vol.as_os_str(),
    ])
    .ok();
    let plain = random_bytes(32 << 20);
    let src = dir.join("plain.raw");
    std::fs::write(&src, &plain).unwrap();
    sv([
        "import".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        src.as_os_str(),
        vol.as_os_str(),
    ])
    .ok();
    (vol, key, plain)
}

fn export(vol: &Path, key: &Path, dst: &Path) -> Vec<u8> {
    sv([
        "export".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        vol.as_os_str(),
        dst.as_os_str(),
    ])
    .ok();
    std::fs::read(dst).unwrap()
}

#[test]
fn nbd_qemu_img_convert_over_unix_socket_equals_sealvol_export() {
    let qemu_img = need("qemu-img");
    let dir = tmpdir();
    let (vol, key, plain) = volume(dir.path());
    let sock = dir.path().join("nbd.sock");
    let _s = serve(&vol, &key, &["--socket", sock.to_str().unwrap()], &[]);
    wait_for("the NBD socket", || sock.exists());
    let out = dir.path().join("via-nbd.raw");
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    run(
        &qemu_img,
        [
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ],
        None,
    )
    .ok();
    let via_nbd = std::fs::read(&out).unwrap();
    let via_export = export(&vol, &key, &dir.path().join("via-export.raw"));
    assert!(via_nbd == via_export, "NBD and export disagree");
    assert!(via_nbd == plain);
    // qemu-img info sees the size.
    let info = run(&qemu_img, ["info", "--output=json", &uri], None)
        .ok()
        .json();
    assert_eq!(info["virtual-size"], 32 << 20);
}

#[test]
fn nbd_writes_from_qemu_over_tcp_land_encrypted() {
    let qemu_img = need("qemu-img");
    let dir = tmpdir();
    let (vol, key, _) = volume(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _s = serve(&vol, &key, &["--listen", &addr], &["--insecure-plaintext"]);
    wait_for("the NBD port", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let mut new = random_bytes(32 << 20);
    new[..4096].fill(0); // a zero run: qemu may send it as write-zeroes
    let src = dir.path().join("new.raw");
    std::fs::write(&src, &new).unwrap();
    let uri = format!("nbd://{addr}");
    run(
        &qemu_img,
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &uri,
        ],
        None,
    )
    .ok();
    drop(_s);
    let back = export(&vol, &key, &dir.path().join("back.raw"));
    assert!(back == new, "what qemu wrote reads back");
    let raw = snapshot(&vol);
    assert!(
        !raw.windows(64).any(|w| w == &new[8192..8256]),
        "ciphertext only"
    );
}

#[test]
fn nbd_read_only_refuses_writes_and_wrong_key_exits_1() {
    let qemu_img = need("qemu-img");
    let dir = tmpdir();
    let (vol, key, plain) = volume(dir.path());
    let before = snapshot(&vol);
    let (bad, _) = machine_key(dir.path(), "bad");
    let sock = dir.path().join("ro.sock");
    let status = Command::new(SEALVOL)
        .env("SEALVOL_RUN_DIR", dir.path().join("run"))
        .args(["serve", "nbd", "--key-file"])
        .arg(&bad)
        .arg("--socket")
        .arg(&sock)
        .arg(&vol)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "a wrong key exits 1");
    assert!(!sock.exists());

    let _s = serve(
        &vol,
        &key,
        &["--socket", sock.to_str().unwrap()],
        &["--read-only"],
    );
    wait_for("the NBD socket", || sock.exists());
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let src = dir.path().join("junk.raw");
    std::fs::write(&src, random_bytes(1 << 20)).unwrap();
    run(
        &qemu_img,
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &uri,
        ],
        None,
    )
    .fails();
    let out = dir.path().join("ro.raw");
    run(
        &qemu_img,
        [
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ],
        None,
    )
    .ok();
    assert!(std::fs::read(&out).unwrap() == plain);
    drop(_s);
    assert_unchanged(&vol, &before, "a read-only NBD export");
}
