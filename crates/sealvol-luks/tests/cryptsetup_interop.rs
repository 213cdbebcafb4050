//! Interoperability with the real cryptsetup (2.6): volumes cryptsetup makes open here with
//! the same volume key and re-encode to the same JSON; volumes made here pass cryptsetup's
//! luksDump, open --test-passphrase and --dump-volume-key. These tests fail (never skip)
//! when `cryptsetup` is missing.

use sealvol_crypto::kdf::Argon2Variant;
use sealvol_crypto::{HashAlg, SecretBytes, SectorSize};
use sealvol_luks::{Error, FormatOptions, KdfParams, Volume};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;

fn cryptsetup(args: &[&str]) -> Output {
    Command::new("cryptsetup").args(args).output().expect(
        "cryptsetup must be installed for the interop tests (Debian package cryptsetup-bin)",
    )
}

fn cs_ok(args: &[&str]) -> Output {
    let out = cryptsetup(args);
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn file(&self, name: &str, len: u64) -> PathBuf {
        let path = self.dir.path().join(name);
        File::create(&path).unwrap().set_len(len).unwrap();
        path
    }
    fn key(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// The volume key `cryptsetup luksDump --dump-volume-key` prints ("MK dump:" hex lines).
fn dumped_volume_key(device: &Path, header: Option<&Path>, key: &Path) -> Vec<u8> {
    let mut args = vec![
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        p(key),
    ];
    if let Some(h) = header {
        args.extend(["--header", p(h)]);
    }
    args.push(p(device));
    let out = cs_ok(&args);
    let text = String::from_utf8(out.stdout).unwrap();
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

/// The JSON area of the primary copy, parsed.
fn raw_json(path: &Path) -> serde_json::Value {
    let mut b = Vec::new();
    File::open(path).unwrap().read_to_end(&mut b).unwrap();
    let hdr_size = u64::from_be_bytes(b[8..16].try_into().unwrap()) as usize;
    let area = &b[4096..hdr_size];
    let end = area.iter().position(|&c| c == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

fn test_passphrase(device: &Path, header: Option<&Path>, key: &Path) -> Option<i32> {
    let mut args = vec![
        "open",
        "--test-passphrase",
        "--batch-mode",
        "--key-file",
        p(key),
    ];
    if let Some(h) = header {
        args.extend(["--header", p(h)]);
    }
    args.push(p(device));
    cryptsetup(&args).status.code()
}

/// Formats with cryptsetup, then opens and unlocks here: same key, same JSON.
fn cryptsetup_made(extra: &[&str], detached: bool, data_offset: u64) {
    let d = Dir::new();
    let dev = d.file("dev", 20 * MIB);
    let key = d.key("key", b"correct horse battery staple");
    // cryptsetup creates the detached header file itself.
    let hdr = d.dir.path().join("hdr");
    let mut args = vec![
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--key-file",
        p(&key),
    ];
    args.extend_from_slice(extra);
    if detached {
        args.extend(["--header", p(&hdr)]);
    }
    args.push(p(&dev));
    cs_ok(&args);
    let hpath = if detached { &hdr } else { &dev };
    let want = dumped_volume_key(&dev, detached.then_some(hdr.as_path()), &key);

    let mut vol = Volume::open(rw(hpath)).unwrap();
    assert!(!vol.load_report().needs_repair, "{:?}", vol.load_report());
    assert!(vol.read_only().is_none());
    let u = vol.unlock(b"correct horse battery staple", None).unwrap();
    assert_eq!(u.volume_key.expose(), want.as_slice());
    assert!(vol.verify_volume_key(&u.volume_key).unwrap());
    assert!(matches!(vol.unlock(b"wrong", None), Err(Error::WrongKey)));
    assert_eq!(vol.header().metadata().to_json(), raw_json(hpath));
    let seg = vol.data_segment().unwrap();
    assert_eq!(seg.key_size, want.len());
    assert_eq!(seg.offset, data_offset);
    // The backup is the same bytes cryptsetup's luksHeaderBackup writes.
    let backup_path = d.dir.path().join("backup");
    let mut bargs = vec!["luksHeaderBackup", "--header-backup-file", p(&backup_path)];
    if detached {
        bargs.extend(["--header", p(&hdr)]);
    }
    bargs.push(p(&dev));
    cs_ok(&bargs);
    let theirs = std::fs::read(&backup_path).unwrap();
    assert_eq!(vol.header_area_len(), theirs.len() as u64);
    assert!(vol.header_backup().unwrap() == theirs);
}

#[test]
fn cryptsetup_pbkdf2_opens() {
    cryptsetup_made(
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        false,
        16 * MIB,
    );
}

#[test]
fn cryptsetup_argon2id_opens() {
    cryptsetup_made(
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32",
            "--pbkdf-force-iterations",
            "4",
        ],
        false,
        16 * MIB,
    );
}

#[test]
fn cryptsetup_argon2i_opens() {
    cryptsetup_made(
        &[
            "--pbkdf",
            "argon2i",
            "--pbkdf-memory",
            "64",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
        false,
        16 * MIB,
    );
}

#[test]
fn cryptsetup_sector_512_key_256_label_opens() {
    cryptsetup_made(
        &[
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "512",
            "--key-size",
            "256",
            "--label",
            "mylabel",
            "--subsystem",
            "mysub",
        ],
        false,
        16 * MIB,
    );
}

#[test]
fn cryptsetup_detached_opens() {
    cryptsetup_made(
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        true,
        0,
    );
}

#[test]
fn cryptsetup_sha512_metadata_64k_opens() {
    cryptsetup_made(
        &[
            "--pbkdf",
            "pbkdf2",
            "--hash",
            "sha512",
            "--pbkdf-force-iterations",
            "1000",
            "--luks2-metadata-size",
            "64k",
            "--luks2-keyslots-size",
            "1m",
            "--offset",
            "8192",
        ],
        false,
        4 * MIB,
    );
}

#[test]
fn cryptsetup_keyslots_tokens_priorities() {
    let d = Dir::new();
    let dev = d.file("dev", 20 * MIB);
    let k0 = d.key("k0", b"zero");
    let k1 = d.key("k1", b"one");
    let k2 = d.key("k2", b"two");
    cs_ok(&[
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&k0),
        p(&dev),
    ]);
    for k in [&k1, &k2] {
        cs_ok(&[
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            p(&k0),
            p(&dev),
            p(k),
        ]);
    }
    cs_ok(&["config", "--priority", "prefer", "--key-slot", "2", p(&dev)]);
    cs_ok(&["config", "--priority", "ignore", "--key-slot", "1", p(&dev)]);
    let token = d.key("t.json", br#"{"type":"sealvol-test","keyslots":["1","2"],"nested":{"a":[1,2,{"b":null}]},"s":"x/y"}"#);
    cs_ok(&["token", "import", "--json-file", p(&token), p(&dev)]);
    let want = dumped_volume_key(&dev, None, &k0);

    let mut vol = Volume::open(rw(&dev)).unwrap();
    assert_eq!(vol.header().metadata().to_json(), raw_json(&dev));
    assert_eq!(vol.header().metadata().tokens.len(), 1);
    let u = vol.unlock(b"zero", None).unwrap();
    assert_eq!((u.keyslot, u.volume_key.expose()), (0, want.as_slice()));
    // Slot 1 is "ignore": only tried when named.
    assert!(matches!(vol.unlock(b"one", None), Err(Error::WrongKey)));
    assert_eq!(vol.unlock(b"one", Some(1)).unwrap().keyslot, 1);
    assert_eq!(vol.unlock(b"two", None).unwrap().keyslot, 2);

    // Our rewrite keeps everything cryptsetup wrote (token, priorities).
    let id = vol
        .add_token(serde_json::json!({"type": "ours", "keyslots": ["0"]}), None)
        .unwrap();
    assert_eq!(id, 1);
    let before = raw_json(&dev);
    assert_eq!(before, vol.header().metadata().to_json());
    let dump = String::from_utf8(cs_ok(&["luksDump", p(&dev)]).stdout).unwrap();
    assert!(
        dump.contains("sealvol-test") && dump.contains("ours"),
        "{dump}"
    );
    assert_eq!(test_passphrase(&dev, None, &k2), Some(0));
}

#[test]
fn add_and_remove_keyslot_on_cryptsetup_volume() {
    let d = Dir::new();
    let dev = d.file("dev", 20 * MIB);
    let k0 = d.key("k0", b"old key");
    let kn = d.key("kn", b"new key");
    cs_ok(&[
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&k0),
        p(&dev),
    ]);
    let want = dumped_volume_key(&dev, None, &k0);
    let mut vol = Volume::open(rw(&dev)).unwrap();
    let vk = vol.unlock(b"old key", None).unwrap().volume_key;
    let argon = KdfParams::Argon2 {
        variant: Argon2Variant::Argon2id,
        time: 4,
        memory_kib: 64,
        parallel: 1,
    };
    let id = vol.add_keyslot(&vk, b"new key", &argon, None).unwrap();
    assert_eq!(id, 1);
    drop(vol);
    assert_eq!(test_passphrase(&dev, None, &kn), Some(0));
    assert_eq!(dumped_volume_key(&dev, None, &kn), want);

    let mut vol = Volume::open(rw(&dev)).unwrap();
    vol.remove_keyslot(0).unwrap();
    assert!(matches!(vol.remove_keyslot(1), Err(Error::LastKeyslot(1))));
    drop(vol);
    assert_eq!(test_passphrase(&dev, None, &k0), Some(2));
    assert_eq!(test_passphrase(&dev, None, &kn), Some(0));
    cs_ok(&["luksDump", p(&dev)]);

    // luksChangeKey semantics.
    let kc = d.key("kc", b"changed");
    let mut vol = Volume::open(rw(&dev)).unwrap();
    let nid = vol.change_key(b"new key", b"changed", None, None).unwrap();
    assert_eq!(
        vol.header()
            .metadata()
            .keyslots
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![nid]
    );
    drop(vol);
    assert_eq!(test_passphrase(&dev, None, &kn), Some(2));
    assert_eq!(test_passphrase(&dev, None, &kc), Some(0));
    assert_eq!(dumped_volume_key(&dev, None, &kc), want);

    // luksErase semantics.
    let mut vol = Volume::open(rw(&dev)).unwrap();
    vol.erase().unwrap();
    assert!(vol.header().metadata().keyslots.is_empty());
    drop(vol);
    assert_ne!(test_passphrase(&dev, None, &kc), Some(0));
    let dump = String::from_utf8(cs_ok(&["luksDump", p(&dev)]).stdout).unwrap();
    assert!(!dump.contains("0: luks2"), "{dump}");
}

/// Formats here, then checks with cryptsetup.
fn sealvol_made(opts: FormatOptions, key_len: usize) {
    let d = Dir::new();
    let key = d.key("key", b"machine key bytes");
    let vk = SecretBytes::random(key_len).unwrap();
    let (dev, hdr) = if opts.detached {
        (d.file("dev", 8 * MIB), Some(d.file("hdr", 0)))
    } else {
        (d.file("dev", 0), None)
    };
    let hpath = hdr.clone().unwrap_or_else(|| dev.clone());
    let vol = Volume::format(rw(&hpath), &opts, &vk, b"machine key bytes").unwrap();
    let data_offset = vol.data_segment().unwrap().offset;
    let file = vol.into_storage();
    if !opts.detached {
        file.set_len(data_offset + 4 * MIB).unwrap();
    }
    drop(file);
    let mut dump_args = vec!["luksDump"];
    if let Some(h) = &hdr {
        dump_args.extend(["--header", p(h)]);
    }
    dump_args.push(p(&dev));
    let dump = String::from_utf8(cs_ok(&dump_args).stdout).unwrap();
    if let Some(l) = &opts.label {
        assert!(dump.contains(l.as_str()), "{dump}");
    }
    if let Some(u) = &opts.uuid {
        assert!(dump.contains(u.as_str()), "{dump}");
    }
    assert!(
        dump.contains(&format!("sector: {} [bytes]", opts.sector_size.bytes())),
        "{dump}"
    );
    assert_eq!(test_passphrase(&dev, hdr.as_deref(), &key), Some(0));
    let wrong = d.key("wrong", b"wrong");
    assert_eq!(test_passphrase(&dev, hdr.as_deref(), &wrong), Some(2));
    assert_eq!(dumped_volume_key(&dev, hdr.as_deref(), &key), vk.expose());

    // A keyslot cryptsetup adds opens here.
    let k2 = d.key("k2", b"second");
    let mut args = vec![
        "luksAddKey",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
    ];
    if let Some(h) = &hdr {
        args.extend(["--header", p(h)]);
    }
    args.extend([p(&dev), p(&k2)]);
    cs_ok(&args);
    let mut vol = Volume::open(rw(&hpath)).unwrap();
    let u = vol.unlock(b"second", None).unwrap();
    assert_eq!(u.keyslot, 1);
    assert!(u.volume_key.ct_eq(vk.expose()));
}

#[test]
fn sealvol_pbkdf2_min_opens_in_cryptsetup() {
    sealvol_made(FormatOptions::default(), 64);
}

#[test]
fn sealvol_argon2id_sector_512_opens_in_cryptsetup() {
    let opts = FormatOptions {
        sector_size: SectorSize::S512,
        kdf: KdfParams::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 4,
            memory_kib: 32,
            parallel: 1,
        },
        label: Some("sealvol label".into()),
        subsystem: Some("sealvol".into()),
        uuid: Some("0e3a7d0c-7a55-4d0f-9a63-0c8d1c7b9e11".into()),
        ..FormatOptions::default()
    };
    sealvol_made(opts, 64);
}

#[test]
fn sealvol_argon2i_key_256_opens_in_cryptsetup() {
    let opts = FormatOptions {
        key_size_bits: 256,
        kdf: KdfParams::Argon2 {
            variant: Argon2Variant::Argon2i,
            time: 4,
            memory_kib: 64,
            parallel: 2,
        },
        digest_hash: HashAlg::Sha512,
        ..FormatOptions::default()
    };
    sealvol_made(opts, 32);
}

#[test]
fn sealvol_detached_opens_in_cryptsetup() {
    let opts = FormatOptions {
        detached: true,
        ..FormatOptions::default()
    };
    sealvol_made(opts, 64);
}

#[test]
fn sealvol_custom_layout_opens_in_cryptsetup() {
    let opts = FormatOptions {
        metadata_size: 64 * 1024,
        keyslots_size: Some(MIB),
        kdf: KdfParams::Pbkdf2 {
            hash: HashAlg::Sha1,
            iterations: 1000,
        },
        ..FormatOptions::default()
    };
    sealvol_made(opts, 64);
}

#[test]
fn corrupted_primary_recovers_and_cryptsetup_agrees() {
    let d = Dir::new();
    let dev = d.file("dev", 20 * MIB);
    let key = d.key("key", b"k");
    cs_ok(&[
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
        p(&dev),
    ]);
    let want = dumped_volume_key(&dev, None, &key);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = rw(&dev);
        f.seek(SeekFrom::Start(5000)).unwrap();
        f.write_all(b"garbage").unwrap();
    }
    let mut vol = Volume::open(rw(&dev)).unwrap();
    let r = vol.load_report();
    assert!(r.primary.is_err() && r.secondary.is_ok() && r.needs_repair);
    assert_eq!(
        vol.unlock(b"k", None).unwrap().volume_key.expose(),
        want.as_slice()
    );
    assert!(vol.repair().unwrap());
    drop(vol);
    let vol = Volume::open(rw(&dev)).unwrap();
    assert!(!vol.load_report().needs_repair);
    // Both copies are valid for cryptsetup too: damaging the secondary still opens.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = rw(&dev);
        f.seek(SeekFrom::Start(16384 + 5000)).unwrap();
        f.write_all(b"garbage").unwrap();
    }
    assert_eq!(dumped_volume_key(&dev, None, &key), want);
}

#[test]
fn cryptsetup_reencryption_header_is_read_but_never_opened_or_written() {
    let d = Dir::new();
    let dev = d.file("dev", 20 * MIB);
    let key = d.key("key", b"k");
    cs_ok(&[
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
        p(&dev),
    ]);
    let want = dumped_volume_key(&dev, None, &key);
    // Writes the online-reencrypt-v2 requirement, a reencrypt keyslot and backup segments.
    cs_ok(&[
        "reencrypt",
        "--batch-mode",
        "--init-only",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
        p(&dev),
    ]);
    let before = std::fs::read(&dev).unwrap();
    let mut vol = Volume::open(rw(&dev)).unwrap();
    assert_eq!(vol.header().metadata().to_json(), raw_json(&dev));
    assert_eq!(
        vol.header().requirements(),
        ["online-reencrypt-v2".to_string()]
    );
    let why = vol.read_only().unwrap();
    assert!(why.contains("cryptsetup reencrypt --resume-only"), "{why}");
    // Never opened (the data is half old key, half new key), never written.
    let blocked = |r: Result<(), Error>| match r {
        Err(e @ Error::Blocked(sealvol_luks::luks2::Blocker::Reencryption { .. })) => {
            assert!(e.to_string().contains("--resume-only"), "{e}")
        }
        other => panic!("expected the reencryption to block, got {other:?}"),
    };
    blocked(vol.unlock(b"k", Some(0)).map(|_| ()));
    blocked(vol.unlock(b"k", None).map(|_| ()));
    blocked(vol.data_segment().map(|_| ()));
    let vk = SecretBytes::from_slice(&want);
    blocked(
        vol.add_keyslot(&vk, b"x", &KdfParams::pbkdf2_min(), None)
            .map(|_| ()),
    );
    blocked(vol.remove_keyslot(1));
    blocked(vol.erase());
    blocked(
        vol.add_token(serde_json::json!({"type": "t", "keyslots": []}), None)
            .map(|_| ()),
    );
    drop(vol);
    assert!(
        std::fs::read(&dev).unwrap() == before,
        "a read-only header was written"
    );
}

#[test]
fn cryptsetup_luks1_is_named_and_restore_of_their_backup_works() {
    let d = Dir::new();
    let dev = d.file("dev", 20 * MIB);
    let key = d.key("key", b"k");
    cs_ok(&[
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks1",
        "--iter-time",
        "1",
        "--key-file",
        p(&key),
        p(&dev),
    ]);
    assert!(matches!(
        Volume::open(rw(&dev)),
        Err(Error::UnsupportedVersion(1))
    ));

    // A cryptsetup luksHeaderBackup restored here over a wiped header opens in cryptsetup.
    let dev = d.file("dev2", 20 * MIB);
    cs_ok(&[
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        p(&key),
        p(&dev),
    ]);
    let want = dumped_volume_key(&dev, None, &key);
    let backup = d.dir.path().join("backup");
    cs_ok(&[
        "luksHeaderBackup",
        "--header-backup-file",
        p(&backup),
        p(&dev),
    ]);
    {
        use std::io::Write;
        let mut f = rw(&dev);
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
    }
    assert!(matches!(Volume::open(rw(&dev)), Err(Error::NotLuks)));
    let vol = Volume::header_restore(rw(&dev), &std::fs::read(&backup).unwrap()).unwrap();
    drop(vol);
    assert_eq!(dumped_volume_key(&dev, None, &key), want);
}
