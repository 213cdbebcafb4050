//! Unit tests: preparing (typed wrong key, nothing started; verity refusals), the child's
//! command line (no key), and the parent's side of the handshake against stand-in children.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use sealvol_luks::NewHeader;

use super::child::{spawn, ChildSpec};
use super::*;

/// A machine key (not UTF-8: PBKDF2 at 1000 iterations, fast) and an attached LUKS2 volume
/// with 1 MiB of data.
fn volume(dir: &Path, name: &str, key: &[u8]) -> PathBuf {
    let built = NewHeader::default().build(key).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &built.bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(built.segment.offset + (1 << 20)).unwrap();
    path
}

const KEY: [u8; 32] = [0xff; 32];

fn key() -> SecretBytes {
    SecretBytes::from_slice(&KEY)
}

fn run_dir(dir: &Path) -> StateDir {
    StateDir::new(dir.join("run"))
}

#[test]
fn prepare_unlocks_and_a_wrong_key_is_typed_with_nothing_started() {
    let d = tempfile::tempdir().unwrap();
    let vol = volume(d.path(), "v.img", &KEY);
    let run = run_dir(d.path());
    let spec = OpenSpec::luks(&vol, None);
    let wrong = SecretBytes::from_slice(&[0xfe; 32]);
    let e = prepare(&run, &spec, KeyInput::Bytes(&wrong), KdfLimits::default()).unwrap_err();
    assert!(matches!(e, Error::WrongKey(_)), "{e}");
    assert!(e.is_wrong_key() && e.is_clean_no());
    assert!(
        run.list().is_empty(),
        "a refused prepare recorded something"
    );
    let id = volume_id(&vol).unwrap();
    assert!(!VolumeLock::is_held(&run, &id));
    assert!(
        !run.root().join(&id).exists(),
        "a refused prepare made a runtime directory"
    );

    let p = prepare(&run, &spec, KeyInput::Bytes(&key()), KdfLimits::default()).unwrap();
    assert_eq!(p.plan.volume(), std::fs::canonicalize(&vol).unwrap());
    assert_eq!(p.plan.id(), id);
    assert!(!p.plan.read_only() && !p.plan.is_verity());
    let vk = p.volume_key.as_ref().unwrap();
    let open = LuksFile::new(&vol, None)
        .open(Access::Read, KdfLimits::default())
        .unwrap();
    assert!(open.volume().verify_volume_key(vk).unwrap());
    // The device decrypts with it: 1 MiB of plaintext.
    let plan = p.plan.clone();
    let dev = device(&run, p).unwrap();
    assert_eq!(dev.device.size(), 1 << 20);
    let none = Prepared {
        plan,
        volume_key: None,
        base_key: None,
    };
    assert!(matches!(
        device(&run, none),
        Err(Error::Invalid(m)) if m.contains("no volume key")
    ));
}

/// An overlay of `size` bytes without a base, holding `data` at 0, and its checkpoint.
fn overlay(dir: &Path, name: &str, key: &[u8], data: &[u8]) -> (PathBuf, Checkpoint) {
    let path = dir.join(name);
    let (base, _) = crate::overlay::check_base(
        &BaseSpec::None,
        crate::overlay::BaseKey::None,
        KdfLimits::default(),
    )
    .unwrap();
    let what = crate::overlay::Create {
        size: Some(1 << 20),
        cluster_size: None,
        kdf: sealvol_luks::KdfParams::pbkdf2_min(),
        label: None,
    };
    crate::overlay::create(&path, key, &base, None, &what).unwrap();
    let run = run_dir(dir);
    let o = crate::overlay::open(
        Some(&run),
        &path,
        LayerKey::Key(key),
        OpenBase::Device(base.device(None).unwrap(), base.tag()),
        OpenHow::default(),
    )
    .unwrap();
    o.device.write_at(data, 0).unwrap();
    o.device.flush().unwrap();
    (path, o.device.checkpoint())
}

#[test]
fn an_overlay_is_prepared_with_its_layer_key_and_a_rollback_is_a_clean_no() {
    let d = tempfile::tempdir().unwrap();
    let run = run_dir(d.path());
    let (ov, first) = overlay(d.path(), "o.ov", &KEY, b"first");
    let saved = std::fs::read(&ov).unwrap();
    // A second commit, then the host puts the saved copy back.
    let spec = OpenSpec::for_volume(&ov, None, false, None, None).unwrap();
    assert!(matches!(spec.source, SourceSpec::Overlay(_)), "{spec:?}");
    let p = prepare(&run, &spec, KeyInput::Bytes(&key()), KdfLimits::default()).unwrap();
    assert!(p.plan.is_overlay());
    assert_eq!(p.volume_key.as_ref().unwrap().expose().len(), 64);
    let built = device(&run, p).unwrap();
    built.device.write_at(b"second", 0).unwrap();
    built.device.flush().unwrap();
    let second = built.checkpoint().unwrap();
    assert!(second.counter > first.counter);
    assert_eq!(run.checkpoint(&volume_id(&ov).unwrap()), Some(second));
    drop(built);
    std::fs::write(&ov, &saved).unwrap();
    let expect = OpenSpec::for_volume(&ov, None, false, None, Some(second.to_string())).unwrap();
    let e = prepare(&run, &expect, KeyInput::Bytes(&key()), KdfLimits::default()).unwrap_err();
    assert!(e.is_rollback() && e.is_clean_no(), "{e}");
    // The wrong key is a wrong key; a LUKS-only option is refused for an overlay.
    let wrong = SecretBytes::from_slice(&[0xfe; 32]);
    let e = prepare(&run, &spec, KeyInput::Bytes(&wrong), KdfLimits::default()).unwrap_err();
    assert!(e.is_wrong_key(), "{e}");
    assert!(OpenSpec::for_volume(&ov, Some("h".into()), false, None, None).is_err());
    // Opened as a LUKS volume, it says what it is.
    let e = prepare(
        &run,
        &OpenSpec::luks(&ov, None),
        KeyInput::Bytes(&key()),
        KdfLimits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("overlay"), "{e}");
}

#[test]
fn prepare_refuses_missing_files_and_a_volume_being_served() {
    let d = tempfile::tempdir().unwrap();
    let vol = volume(d.path(), "v.img", &KEY);
    let run = run_dir(d.path());
    let k = key();
    let e = prepare(
        &run,
        &OpenSpec::luks(d.path().join("none.img"), None),
        KeyInput::Bytes(&k),
        KdfLimits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = prepare(
        &run,
        &OpenSpec::luks(&vol, Some(d.path().join("missing.hdr"))),
        KeyInput::Bytes(&k),
        KdfLimits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing.hdr"), "{e}");
    // A claim held by a live export (this process, recorded): refused before the key.
    let id = volume_id(&vol).unwrap();
    let claim = VolumeLock::acquire(&run, &id, &vol).unwrap();
    run.save(&Entry {
        id: id.clone(),
        kind: "mount".into(),
        volume: std::fs::canonicalize(&vol).unwrap(),
        header: None,
        pid: crate::process::this_pid(),
        read_only: false,
        fuse_file: None,
        loop_device: None,
        mount_point: Some("/mnt/x".into()),
        nbd: None,
        started: 0,
    })
    .unwrap();
    let unreadable = KeySource::File(d.path().join("no-key-file"));
    let e = prepare(
        &run,
        &OpenSpec::luks(&vol, None),
        KeyInput::Source(&unreadable),
        KdfLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::AlreadyOpen { .. }), "{e}");
    drop(claim);
}

#[test]
fn a_replaced_header_refuses_the_handed_key_as_wrong() {
    let d = tempfile::tempdir().unwrap();
    let vol = volume(d.path(), "v.img", &KEY);
    let run = run_dir(d.path());
    let p = prepare(
        &run,
        &OpenSpec::luks(&vol, None),
        KeyInput::Bytes(&key()),
        KdfLimits::default(),
    )
    .unwrap();
    let vk = p.volume_key.unwrap();
    assert!(replan(&p.plan.spec(), Some(&vk), None).is_ok());
    // The same key, a new header (a new volume key): the handed key no longer opens it.
    volume(d.path(), "v.img", &KEY);
    let e = replan(&p.plan.spec(), Some(&vk), None).unwrap_err();
    assert!(
        matches!(e, Error::WrongKey(ref m) if m.contains("replaced")),
        "{e}"
    );
}

/// An image of 8 blocks of 4096 bytes with its tree in `hash`; returns the root in hex.
fn verity_image(dir: &Path) -> (PathBuf, PathBuf, String) {
    use sealvol_verity::{HashAlgorithm, HashArea, HashType, Params, Salt};
    let params = Params::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        4096,
        4096,
        8,
        Salt::from_hex("5a5a").unwrap(),
    )
    .unwrap();
    let data: Vec<u8> = (0..8 * 4096).map(|i| (i % 251) as u8).collect();
    let mut hash = std::io::Cursor::new(Vec::new());
    let tree = sealvol_verity::format(
        &data,
        &mut hash,
        &params,
        HashArea::with_superblock(0),
        None,
        &mut |_| {},
    )
    .unwrap();
    let (img, hash_path) = (dir.join("img"), dir.join("img.hash"));
    std::fs::write(&img, &data).unwrap();
    std::fs::write(&hash_path, hash.into_inner()).unwrap();
    (img, hash_path, hex::encode(tree.root()))
}

#[test]
fn verity_roots_and_signatures_that_do_not_verify_are_clean_noes() {
    let d = tempfile::tempdir().unwrap();
    let (img, hash, root) = verity_image(d.path());
    let run = run_dir(d.path());
    let spec = |root: &str, signature| OpenSpec {
        volume: img.clone(),
        read_only: true,
        source: SourceSpec::Verity(VeritySpec {
            hash: hash.clone(),
            hash_offset: 0,
            root: root.into(),
            signature,
        }),
    };
    let p = prepare(
        &run,
        &spec(&root, None),
        KeyInput::None,
        KdfLimits::default(),
    )
    .unwrap();
    assert!(p.plan.is_verity() && p.plan.read_only() && p.volume_key.is_none());
    assert_eq!(device(&run, p).unwrap().device.size(), 8 * 4096);

    let wrong = format!(
        "{}{}",
        if root.starts_with('0') { "1" } else { "0" },
        &root[1..]
    );
    let e = prepare(
        &run,
        &spec(&wrong, None),
        KeyInput::None,
        KdfLimits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::NotVerified(ref m) if m.contains("root hash")),
        "{e}"
    );
    assert!(e.is_clean_no() && !e.is_wrong_key());

    // A signature by a key that did not sign it.
    let signer = sealvol_verity::SigningKey::from_key_file(&[1; 32]).unwrap();
    let other = sealvol_verity::SigningKey::from_key_file(&[2; 32]).unwrap();
    let mut f = std::fs::File::open(&hash).unwrap();
    let sb = sealvol_verity::read_superblock(&mut f, 0).unwrap();
    let root_bytes = hex::decode(&root).unwrap();
    let sig = signer.sign(&sb.params, &root_bytes);
    let (sig_path, pub_path, other_path) = (
        d.path().join("sig"),
        d.path().join("pub"),
        d.path().join("other"),
    );
    std::fs::write(&sig_path, sig).unwrap();
    std::fs::write(&pub_path, signer.verifying_key().to_bytes()).unwrap();
    std::fs::write(&other_path, other.verifying_key().to_bytes()).unwrap();
    let signed = |public_key: &Path| {
        Some(RootSignature {
            signature: sig_path.clone(),
            public_key: public_key.to_path_buf(),
        })
    };
    prepare(
        &run,
        &spec(&root, signed(&pub_path)),
        KeyInput::None,
        KdfLimits::default(),
    )
    .unwrap();
    let e = prepare(
        &run,
        &spec(&root, signed(&other_path)),
        KeyInput::None,
        KdfLimits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::NotVerified(ref m) if m.contains("signature")),
        "{e}"
    );
}

#[test]
fn the_child_spec_line_names_everything_but_the_key_and_round_trips() {
    let spec = ChildSpec {
        run_dir: "/run/x".into(),
        open: OpenSpec::luks("/v/disk.img", Some("/v/-header.img".into())),
        serve: Serve::Nbd(NbdSpec {
            name: "-odd\nname".into(),
            ..NbdSpec::socket("/v/nbd.sock")
        }),
    };
    let mut input = spec.to_line().unwrap();
    assert_eq!(input.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    let text = String::from_utf8(input.clone()).unwrap();
    for want in ["/run/x", "/v/-header.img", "/v/nbd.sock", "/v/disk.img"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(!text.to_lowercase().contains("key"), "{text}");
    // The key follows the line: any bytes, newlines included.
    input.extend_from_slice(b"key\nbytes\n");
    let (back, key) = ChildSpec::from_input(&input).unwrap();
    assert_eq!(back, spec);
    assert_eq!(key, b"key\nbytes\n");
    let mount = ChildSpec {
        serve: Serve::Mount(MountSpec {
            mount_point: "/m".into(),
            mkfs: Some("ext4".into()),
        }),
        open: OpenSpec {
            read_only: true,
            ..OpenSpec::luks("/v/disk.img", None)
        },
        ..spec
    };
    let line = mount.to_line().unwrap();
    assert_eq!(ChildSpec::from_input(&line).unwrap().0, mount);
    // No spec line, or one that does not parse: refused with what it is.
    let e = ChildSpec::from_input(b"{\"run_dir\":")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no export spec line"), "{e}");
    let e = ChildSpec::from_input(b"{}\nkey").unwrap_err().to_string();
    assert!(e.contains("does not parse"), "{e}");
    // Paths that are not UTF-8 cannot travel in JSON: a clear refusal.
    use std::os::unix::ffi::OsStrExt;
    let odd = ChildSpec {
        run_dir: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/run/\xff")),
        ..mount
    };
    assert!(odd.to_line().unwrap_err().to_string().contains("UTF-8"));
}

/// A stand-in export: a shell script run as the launcher's executable.
fn script(dir: &Path, name: &str, body: &str) -> Launcher {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o755))
        .unwrap();
    drop(f);
    Launcher::new(p)
}

/// `spawn` of a fresh prepare of `vol`, retried while another test thread's fork still
/// holds the script open for writing (ETXTBSY).
fn spawn_with(run: &StateDir, vol: &Path, launcher: &Launcher) -> Result<Ready> {
    loop {
        let p = prepare(
            run,
            &OpenSpec::luks(vol, None),
            KeyInput::Bytes(&key()),
            KdfLimits::default(),
        )
        .unwrap();
        let serve = Serve::Nbd(NbdSpec::socket("/nowhere/nbd.sock"));
        match spawn(run, p, &serve, launcher, None) {
            Err(Error::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

#[test]
fn the_parent_reads_one_message_and_hands_the_key_on_stdin_only() {
    let d = tempfile::tempdir().unwrap();
    let vol = volume(d.path(), "v.img", &KEY);
    let run = run_dir(d.path());

    // The spec arrives as one line on stdin, the volume key whole after it; the only
    // argument is the verb.
    let echo = script(
        d.path(),
        "echo",
        r#"read -r spec; case "$spec" in *'"run_dir"'*) ok=spec;; *) ok=nospec;; esac; n=$(wc -c); echo "{\"status\":\"error\",\"message\":\"$ok, $n bytes after it; $1 $#\"}""#,
    );
    let e = spawn_with(&run, &vol, &echo).unwrap_err();
    assert!(
        matches!(e, Error::Export { ref message } if message == "spec, 64 bytes after it; __export 1"),
        "{e}"
    );

    let wrong = script(
        d.path(),
        "wrong",
        r#"cat >/dev/null; echo '{"status":"wrong_key","message":"no keyslot"}'"#,
    );
    let e = spawn_with(&run, &vol, &wrong).unwrap_err();
    assert!(
        matches!(e, Error::WrongKey(ref m) if m == "no keyslot"),
        "{e}"
    );

    let ready = script(
        d.path(),
        "ready",
        r#"cat >/dev/null; echo '{"status":"ready","ready":{"kind":"nbd","volume":"/v","endpoint":"/s","uri":"nbd+unix:///?socket=/s","tls":false,"pid":7,"read_only":false}}'; sleep 0.2"#,
    );
    let r = spawn_with(&run, &vol, &ready).unwrap();
    assert_eq!(r.pid(), 7);
    assert!(matches!(r, Ready::Nbd(ref n) if n.endpoint == "/s"));

    // Dies without a report: its log's end is the error.
    let dies = script(d.path(), "dies", "echo 'boom: it broke' >&2; exit 3");
    let e = spawn_with(&run, &vol, &dies).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("without reporting") && m.contains("boom: it broke"),
        "{m}"
    );
    let e = spawn_with(&run, &vol, &Launcher::new(d.path().join("no-such-exe"))).unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e}");
}

/// Any UTF-8 path (leading dashes, `=`, newlines and quotes included), name and limits.
fn any_path() -> impl proptest::strategy::Strategy<Value = std::path::PathBuf> {
    use proptest::prelude::*;
    "[^\u{0}]{1,24}".prop_map(std::path::PathBuf::from)
}

proptest::proptest! {
    /// Whatever the parent asks for reaches the child whole, and the key after it untouched.
    #[test]
    fn any_spec_survives_the_childs_stdin(
        run_dir in any_path(),
        volume in any_path(),
        header in proptest::option::of(any_path()),
        read_only: bool,
        verity in proptest::option::of((any_path(), proptest::num::u64::ANY, "[0-9a-f]{0,64}")),
        serve_kind in 0u8..3,
        mount_point in any_path(),
        mkfs in proptest::option::of("[a-z0-9]{1,8}"),
        socket in any_path(),
        tls_creds in proptest::option::of(any_path()),
        insecure_plaintext: bool,
        name in "[^\u{0}]{0,12}",
        max_connections: u32,
        limits in (0u64..1 << 40, 0u64..1 << 40),
        max_in_flight: u64,
        key in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
    ) {
        let source = match verity {
            Some((hash, hash_offset, root)) => SourceSpec::Verity(VeritySpec {
                hash,
                hash_offset,
                root,
                signature: None,
            }),
            None => SourceSpec::Luks { header },
        };
        let nbd = |endpoint| Serve::Nbd(NbdSpec {
            endpoint,
            tls_creds: tls_creds.clone(),
            insecure_plaintext,
            name: name.clone(),
            max_connections,
            handshake_limit: Duration::from_millis(limits.0),
            send_timeout: Duration::from_millis(limits.1),
            max_in_flight,
        });
        let serve = match serve_kind {
            0 => Serve::Mount(MountSpec { mount_point, mkfs }),
            1 => nbd(NbdEndpoint::Socket(socket)),
            _ => nbd(NbdEndpoint::Tcp("[::1]:10809".parse().unwrap())),
        };
        let spec = ChildSpec {
            run_dir,
            open: OpenSpec { volume, read_only, source },
            serve,
        };
        let mut input = spec.to_line().unwrap();
        input.extend_from_slice(&key);
        let (back, rest) = ChildSpec::from_input(&input).unwrap();
        proptest::prop_assert_eq!(back, spec);
        proptest::prop_assert_eq!(rest, &key[..]);
    }
}
