//! LUKS1 interoperability with the real peers: qemu-img 7.2 (qemu's `luks` block driver)
//! and cryptsetup 2.6, both ways. These tests fail (never skip) when a tool is missing.
//!
//! qemu 7.2 cannot open a detached LUKS header (its `luks` driver gained `header=` in qemu
//! 9.0: `Block format 'luks' does not support the option 'header.filename'`), so detached
//! headers are checked against cryptsetup only, plus a test that pins qemu's refusal.

use sealvol_crypto::{HashAlg, SecretBytes};
use sealvol_luks::{data, luks1, AnyVolume, Error};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} must be installed for the LUKS1 interop tests: {e}"))
}

fn ok(tool: &str, args: &[&str]) -> Output {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

/// Deterministic plaintext with a recognisable marker.
fn plaintext(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    v[..16].copy_from_slice(b"SEALVOL-LUKS1-MK");
    v
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn key(&self, bytes: &[u8]) -> PathBuf {
        let k = self.path("key");
        std::fs::write(&k, bytes).unwrap();
        k
    }
}

/// Formats a sealvol LUKS1 volume (header on `hdr` when detached) and imports `plain`.
fn sealvol_volume(data_path: &Path, hdr: Option<&Path>, pass: &[u8], plain: &[u8]) {
    let vk = SecretBytes::random(64).unwrap();
    let opts = luks1::FormatOptions {
        detached: hdr.is_some(),
        ..Default::default()
    };
    let storage = rw(hdr.unwrap_or(data_path));
    let vol = luks1::Volume::format(storage, &opts, &vk, pass).unwrap();
    let seg = vol.data_segment().unwrap();
    let mut dev = rw(data_path);
    dev.set_len(seg.offset + plain.len() as u64).unwrap();
    data::import(&mut &plain[..], &mut dev, &seg, &vk, None, &mut |_| {}).unwrap();
    dev.sync_all().unwrap();
}

/// Decrypts the whole data segment with sealvol.
fn sealvol_read(data_path: &Path, hdr: Option<&Path>, pass: &[u8]) -> Vec<u8> {
    let mut vol = AnyVolume::open(File::open(hdr.unwrap_or(data_path)).unwrap()).unwrap();
    assert_eq!(vol.version(), 1);
    let u = vol.unlock(pass, None).unwrap();
    let seg = vol.data_segment().unwrap();
    let mut dev = File::open(data_path).unwrap();
    let len = seg.data_len(dev.metadata().unwrap().len()).unwrap();
    let mut out = Vec::new();
    data::export(&mut dev, &mut out, &seg, &u.volume_key, len, &mut |_| {}).unwrap();
    out
}

fn qemu_img_read(f: &Fixture, vol: &Path, key: &Path) -> Vec<u8> {
    let out = f.path("qemu.raw");
    let _ = std::fs::remove_file(&out);
    ok(
        "qemu-img",
        &[
            "convert",
            "--object",
            &format!("secret,id=sec0,file={}", p(key)),
            "--image-opts",
            &format!("driver=luks,file.filename={},key-secret=sec0", p(vol)),
            "-O",
            "raw",
            p(&out),
        ],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn qemu_img_reads_a_sealvol_luks1_volume() {
    let f = Fixture::new();
    let key = f.key(b"qemu passphrase");
    let vol = f.path("vol.img");
    let plain = plaintext(3 * MIB as usize + 4096);
    sealvol_volume(&vol, None, b"qemu passphrase", &plain);
    assert_eq!(qemu_img_read(&f, &vol, &key), plain);
    // The raw file holds no plaintext marker.
    let raw = std::fs::read(&vol).unwrap();
    assert!(!raw.windows(16).any(|w| w == b"SEALVOL-LUKS1-MK"));
}

#[test]
fn qemu_img_7_2_has_no_detached_luks_header_so_sealvol_checks_it_with_cryptsetup() {
    let f = Fixture::new();
    let key = f.key(b"detached");
    let (vol, hdr) = (f.path("data.img"), f.path("vol.hdr"));
    let plain = plaintext(MIB as usize);
    sealvol_volume(&vol, Some(&hdr), b"detached", &plain);
    let out = run(
        "qemu-img",
        &[
            "convert",
            "--object",
            &format!("secret,id=sec0,file={}", p(&key)),
            "--image-opts",
            &format!(
                "driver=luks,file.filename={},header.filename={},key-secret=sec0",
                p(&vol),
                p(&hdr)
            ),
            "-O",
            "raw",
            p(&f.path("out.raw")),
        ],
    );
    let version = String::from_utf8_lossy(&ok("qemu-img", &["--version"]).stdout).to_string();
    if version.contains("version 7.") || version.contains("version 8.") {
        assert!(
            !out.status.success(),
            "qemu {version} opened a detached header?"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("header"));
    }
    // cryptsetup opens the detached header and dumps the same volume key sealvol unlocks.
    ok(
        "cryptsetup",
        &[
            "open",
            "--test-passphrase",
            "--header",
            p(&hdr),
            "--key-file",
            p(&key),
            p(&vol),
        ],
    );
    let dumped = dump_volume_key(&vol, Some(&hdr), &key);
    let mut any = AnyVolume::open(File::open(&hdr).unwrap()).unwrap();
    assert_eq!(
        any.unlock(b"detached", None).unwrap().volume_key.expose(),
        &dumped[..]
    );
    assert_eq!(sealvol_read(&vol, Some(&hdr), b"detached"), plain);
}

#[test]
fn sealvol_reads_a_qemu_img_luks_volume() {
    let f = Fixture::new();
    let key = f.key(b"from qemu");
    let vol = f.path("q.luks");
    let plain = plaintext(2 * MIB as usize);
    let src = f.path("plain.raw");
    std::fs::write(&src, &plain).unwrap();
    let secret = format!("secret,id=sec0,file={}", p(&key));
    // qemu-img calibrates PBKDF2 by CPU time and, on a busy machine, sometimes gives up with
    // "Unable to get accurate CPU usage": try a few times before failing.
    let create = [
        "create",
        "-f",
        "luks",
        "--object",
        &secret,
        "-o",
        "key-secret=sec0,iter-time=10",
        p(&vol),
        "2M",
    ];
    if (0..4).all(|_| !run("qemu-img", &create).status.success()) {
        ok("qemu-img", &create);
    }
    ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "--object",
            &secret,
            "-f",
            "raw",
            p(&src),
            "--target-image-opts",
            &format!("driver=luks,file.filename={},key-secret=sec0", p(&vol)),
        ],
    );
    let any = AnyVolume::open(File::open(&vol).unwrap()).unwrap();
    let AnyVolume::Luks1(l1) = &any else {
        panic!("qemu-img wrote LUKS{}", any.version())
    };
    // qemu's defaults: aes-256 xts plain64, sha256, payload not aligned to 1 MiB.
    assert_eq!(l1.header().cipher(), "aes-xts-plain64");
    assert_eq!(l1.header().hash(), HashAlg::Sha256);
    assert_eq!(l1.header().key_bytes(), 64);
    assert_eq!(sealvol_read(&vol, None, b"from qemu"), plain);
    // And sealvol can add a key that qemu then uses.
    let mut any = AnyVolume::open(rw(&vol)).unwrap();
    let u = any.unlock(b"from qemu", None).unwrap();
    let slot = any
        .add_keyslot(
            &u.volume_key,
            b"second",
            &sealvol_luks::KdfParams::pbkdf2_min(),
            None,
        )
        .unwrap();
    any.remove_keyslot(u.keyslot).unwrap();
    assert_eq!(slot, 1);
    let key2 = f.key(b"second");
    assert_eq!(qemu_img_read(&f, &vol, &key2), plain);
}

fn dump_volume_key(dev: &Path, hdr: Option<&Path>, key: &Path) -> Vec<u8> {
    let mut args = vec![
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        p(key),
    ];
    if let Some(h) = hdr {
        args.extend(["--header", p(h)]);
    }
    args.push(p(dev));
    let text = String::from_utf8(ok("cryptsetup", &args).stdout).unwrap();
    let mut hex = String::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("MK dump:") {
            inside = true;
            hex.push_str(rest);
        } else if inside && line.starts_with('\t') {
            hex.push_str(line);
        } else if inside {
            break;
        }
    }
    let hex: String = hex.split_whitespace().collect();
    assert!(!hex.is_empty(), "no MK dump in:\n{text}");
    hex::decode(hex).unwrap()
}

#[test]
fn cryptsetup_reads_a_sealvol_luks1_volume() {
    let f = Fixture::new();
    let key = f.key(b"cs passphrase");
    let vol = f.path("vol.img");
    sealvol_volume(&vol, None, b"cs passphrase", &plaintext(MIB as usize));
    let dump = String::from_utf8(ok("cryptsetup", &["luksDump", p(&vol)]).stdout).unwrap();
    assert!(dump.contains("Version:       \t1"), "{dump}");
    assert!(dump.contains("Payload offset:\t4096"), "{dump}");
    assert!(dump.contains("Key Slot 0: ENABLED"), "{dump}");
    ok(
        "cryptsetup",
        &["open", "--test-passphrase", "--key-file", p(&key), p(&vol)],
    );
    let wrong = f.path("wrong");
    std::fs::write(&wrong, b"nope").unwrap();
    let out = run(
        "cryptsetup",
        &[
            "open",
            "--test-passphrase",
            "--key-file",
            p(&wrong),
            p(&vol),
        ],
    );
    assert!(!out.status.success());
    let dumped = dump_volume_key(&vol, None, &key);
    let mut any = AnyVolume::open(File::open(&vol).unwrap()).unwrap();
    let u = any.unlock(b"cs passphrase", None).unwrap();
    assert_eq!(u.volume_key.expose(), &dumped[..]);
}

#[test]
fn sealvol_reads_cryptsetup_luks1_volumes_and_cryptsetup_follows_sealvol_keyslot_changes() {
    for (hash, key_size) in [("sha256", "512"), ("sha1", "256"), ("sha512", "512")] {
        let f = Fixture::new();
        let key = f.key(b"cryptsetup made me");
        let vol = f.path("vol.img");
        File::create(&vol).unwrap().set_len(4 * MIB).unwrap();
        ok(
            "cryptsetup",
            &[
                "luksFormat",
                "--type",
                "luks1",
                "--batch-mode",
                "--hash",
                hash,
                "--key-size",
                key_size,
                "--iter-time",
                "10",
                "--key-file",
                p(&key),
                p(&vol),
            ],
        );
        let dumped = dump_volume_key(&vol, None, &key);
        let mut any = AnyVolume::open(rw(&vol)).unwrap();
        assert_eq!(any.version(), 1);
        let u = any.unlock(b"cryptsetup made me", None).unwrap();
        assert_eq!(u.volume_key.expose(), &dumped[..], "{hash}");
        // Data written with the dumped key by sealvol reads back through cryptsetup's key.
        let kdf = sealvol_luks::KdfParams::Pbkdf2 {
            hash: hash.parse().unwrap(),
            iterations: 1000,
        };
        let new = any
            .change_key(
                b"cryptsetup made me",
                b"changed by sealvol",
                Some(&kdf),
                None,
            )
            .unwrap();
        drop(any);
        let key2 = f.path("key2");
        std::fs::write(&key2, b"changed by sealvol").unwrap();
        ok(
            "cryptsetup",
            &[
                "open",
                "--test-passphrase",
                "--key-slot",
                &new.to_string(),
                "--key-file",
                p(&key2),
                p(&vol),
            ],
        );
        assert!(!run(
            "cryptsetup",
            &["open", "--test-passphrase", "--key-file", p(&key), p(&vol)]
        )
        .status
        .success());
        assert_eq!(dump_volume_key(&vol, None, &key2), dumped);
        // Erase: cryptsetup sees no enabled keyslot.
        let mut any = AnyVolume::open(rw(&vol)).unwrap();
        any.erase().unwrap();
        drop(any);
        let d = String::from_utf8(ok("cryptsetup", &["luksDump", p(&vol)]).stdout).unwrap();
        assert!(!d.contains("ENABLED"), "{d}");
        assert!(matches!(
            AnyVolume::open(File::open(&vol).unwrap())
                .unwrap()
                .unlock(b"changed by sealvol", None),
            Err(Error::WrongKey)
        ));
    }
}

#[test]
fn cryptsetup_detached_luks1_header_opens_with_sealvol() {
    let f = Fixture::new();
    let key = f.key(b"detached cs");
    let (vol, hdr) = (f.path("data.img"), f.path("vol.hdr"));
    File::create(&vol).unwrap().set_len(2 * MIB).unwrap();
    File::create(&hdr).unwrap().set_len(4 * MIB).unwrap();
    ok(
        "cryptsetup",
        &[
            "luksFormat",
            "--type",
            "luks1",
            "--batch-mode",
            "--iter-time",
            "10",
            "--header",
            p(&hdr),
            "--key-file",
            p(&key),
            p(&vol),
        ],
    );
    let dumped = dump_volume_key(&vol, Some(&hdr), &key);
    let mut any = AnyVolume::open(File::open(&hdr).unwrap()).unwrap();
    assert_eq!(
        any.unlock(b"detached cs", None)
            .unwrap()
            .volume_key
            .expose(),
        &dumped[..]
    );
    assert_eq!(any.data_segment().unwrap().offset, 0);
}

/// Every refusal rule, checked against cryptsetup too: each mutated header is refused by
/// both.
#[test]
fn sealvol_and_cryptsetup_refuse_the_same_broken_headers() {
    let f = Fixture::new();
    let key = f.key(b"pw");
    let good = f.path("good.img");
    sealvol_volume(&good, None, b"pw", &plaintext(4096));
    let bytes = std::fs::read(&good).unwrap();
    let slot = 208;
    fn put(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("overlap", Box::new(move |b| put(b, slot + 48 + 40, 100))),
        ("past the payload", Box::new(|b| put(b, 104, 3600))),
        ("stripes", Box::new(move |b| put(b, slot + 44, 2))),
        ("past the payload", Box::new(|b| put(b, 104, 1))),
    ];
    for (what, edit) in cases {
        let mut b = bytes.clone();
        edit(&mut b);
        let path = f.path("bad.img");
        std::fs::write(&path, &b).unwrap();
        let e = AnyVolume::open(File::open(&path).unwrap()).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
        let out = run(
            "cryptsetup",
            &["open", "--test-passphrase", "--key-file", p(&key), p(&path)],
        );
        assert!(
            !out.status.success(),
            "cryptsetup accepted the {what} header"
        );
    }
}
