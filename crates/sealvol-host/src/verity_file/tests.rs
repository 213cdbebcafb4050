use std::os::unix::fs::PermissionsExt;

use super::*;

const BLOCKS: usize = 64;

/// A data file of 64 distinct 4 KiB blocks and where its tree goes.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("image");
    let bytes: Vec<u8> = (0..BLOCKS * 4096)
        .map(|i| (i / 4096 + i % 251) as u8)
        .collect();
    std::fs::write(&data, bytes).unwrap();
    (data, dir.join("image.hash"))
}

fn corrupt(path: &Path, at: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 1]).unwrap();
}

#[test]
fn format_verify_dump_and_read_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash) = image(dir.path());
    let mut req = FormatTree::new(&data, &hash);
    req.root_hash_file = Some(dir.path().join("root"));
    let (mut total, mut last) = (None, 0);
    struct Track<'a>(&'a mut Option<u64>, &'a mut u64);
    impl Progress for Track<'_> {
        fn start(&mut self, t: Option<u64>) {
            *self.0 = t;
        }
        fn at(&mut self, done: u64) {
            *self.1 = done;
        }
    }
    let made = format(&req, &mut Track(&mut total, &mut last)).unwrap();
    assert_eq!(total, Some((BLOCKS * 4096) as u64));
    assert_eq!(last, (BLOCKS * 4096) as u64, "running counts, not deltas");
    assert_eq!(made.tree.data_blocks, BLOCKS as u64);
    assert_eq!(made.tree.salt.len(), 64, "32 random salt bytes");
    assert!(made.warning.is_none());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root")).unwrap(),
        made.root_hash
    );
    let json = serde_json::to_value(&made).unwrap();
    assert_eq!(json["root_hash"], made.root_hash.as_str());
    assert_eq!(json["hash_algorithm"], "sha256");
    assert!(
        json.get("warning").is_none() && json.get("tree").is_none(),
        "{json}"
    );

    assert_eq!(dump(&hash, 0).unwrap(), made.tree);

    let root = Root::Hex(made.root_hash.clone());
    let v = verify(&VerifyTree::new(&data, &hash, root.clone()), &mut |_| {}).unwrap();
    assert!(v.ok && v.failures.is_empty() && v.signature.is_none());
    assert_eq!(v.data_blocks_ok, BLOCKS as u64);
    let json = serde_json::to_value(&v).unwrap();
    assert!(json["signature"].is_null() && json.get("first_bad_data_block").is_none());

    let mut out = Vec::new();
    let req = ReadTree {
        data: data.clone(),
        hash: hash.clone(),
        root: Root::File(dir.path().join("root")),
        tree: TreeOptions::default(),
    };
    let n = read(&req, ReadTo::Stream(&mut out), &mut |_| {}).unwrap();
    assert_eq!(n, (BLOCKS * 4096) as u64);
    assert!(out == std::fs::read(&data).unwrap());
}

#[test]
fn corrupt_blocks_are_reported_by_verify_and_stop_read() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash) = image(dir.path());
    let made = format(&FormatTree::new(&data, &hash), &mut |_| {}).unwrap();
    corrupt(&data, 3 * 4096 + 10);
    corrupt(&data, 9 * 4096);
    let root = Root::Hex(made.root_hash.clone());
    let v = verify(&VerifyTree::new(&data, &hash, root.clone()), &mut |_| {}).unwrap();
    assert!(!v.ok);
    assert_eq!(v.failures.len(), 1, "only the first without all");
    assert_eq!(v.failures[0].kind, "data_block");
    assert!(
        v.failures[0].message.contains("data block 3"),
        "{:?}",
        v.failures
    );
    assert_eq!(
        v.first_bad_data_block,
        Some(BlockAt {
            index: 3,
            offset: 3 * 4096
        })
    );
    let mut all = VerifyTree::new(&data, &hash, root.clone());
    all.all = true;
    let v = verify(&all, &mut |_| {}).unwrap();
    assert_eq!(v.failures.len(), 2);
    assert_eq!(v.data_blocks_ok, BLOCKS as u64 - 2);

    let req = ReadTree {
        data: data.clone(),
        hash: hash.clone(),
        root,
        tree: TreeOptions::default(),
    };
    let out = dir.path().join("out");
    match read(&req, ReadTo::File(&out), &mut |_| {}) {
        Err(e @ Error::CorruptData { bytes, .. }) => {
            assert!(e.is_clean_no());
            assert!(e.to_string().contains("data block 3"), "{e}");
            assert_eq!(bytes, 3 * 4096);
            assert_eq!(std::fs::metadata(&out).unwrap().len(), bytes);
        }
        other => panic!("{other:?}"),
    }

    // A wrong root hash: the top hash block fails, every data block is unverifiable.
    let wrong = Root::Hex("00".repeat(32));
    let v = verify(&VerifyTree::new(&data, &hash, wrong), &mut |_| {}).unwrap();
    assert_eq!(v.failures[0].kind, "root_hash");
    assert_eq!(v.data_blocks_ok, 0);
    // Not a root hash at all: an error, not a failed verification.
    let bad = Root::Hex("xyz".into());
    let e = verify(&VerifyTree::new(&data, &hash, bad), &mut |_| {}).unwrap_err();
    assert!(
        !e.is_clean_no() && e.to_string().contains("root hash"),
        "{e}"
    );
}

#[test]
fn signatures_are_checked_before_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash) = image(dir.path());
    let made = format(&FormatTree::new(&data, &hash), &mut |_| {}).unwrap();
    let private = dir.path().join("signing.pem");
    let pair = keygen(&private, None).unwrap();
    let sig = dir.path().join("image.sig");
    let message = dir.path().join("image.msg");
    let signed = sign(&SignTree {
        hash: hash.clone(),
        root: Root::Hex(made.root_hash.clone()),
        tree: TreeOptions::default(),
        private_key: private.clone(),
        signature_out: sig.clone(),
        message_out: Some(message.clone()),
    })
    .unwrap();
    assert_eq!(signed.public_key, pair.public_key);
    assert_eq!(std::fs::read(&sig).unwrap().len(), verity::SIGNATURE_SIZE);
    assert_eq!(std::fs::read_to_string(&message).unwrap(), signed.message);

    let mut req = VerifyTree::new(&data, &hash, Root::Hex(made.root_hash.clone()));
    req.signature = Some(SignatureCheck {
        signature: sig.clone(),
        public_key: pair.public_key_file.clone(),
    });
    let v = verify(&req, &mut |_| {}).unwrap();
    assert_eq!(v.signature.unwrap().public_key, pair.public_key);

    // Another signer's key: refused, a clean no, before any block is hashed.
    let other = keygen(&dir.path().join("other.pem"), None).unwrap();
    req.signature = Some(SignatureCheck {
        signature: sig.clone(),
        public_key: other.public_key_file,
    });
    let mut hashed = false;
    let e = verify(&req, &mut |_| hashed = true).unwrap_err();
    assert!(
        matches!(e, Error::SignatureRefused { .. }) && e.is_clean_no(),
        "{e}"
    );
    assert!(!hashed);

    // A root hash that is not the tree's is never signed.
    let e = sign(&SignTree {
        hash: hash.clone(),
        root: Root::Hex("11".repeat(32)),
        tree: TreeOptions::default(),
        private_key: private,
        signature_out: dir.path().join("never.sig"),
        message_out: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("refusing to sign"), "{e}");
    assert!(!dir.path().join("never.sig").exists());
}

#[test]
fn keygen_makes_new_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("k.pem");
    let pair = keygen(&private, None).unwrap();
    assert_eq!(pair.public_key_file, dir.path().join("k.pem.pub"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(&pair.public_key_file), 0o644);
    assert!(std::fs::read_to_string(&private)
        .unwrap()
        .contains("PRIVATE KEY"));
    let before = std::fs::read(&private).unwrap();
    let e = keygen(&private, Some(&dir.path().join("new.pub"))).unwrap_err();
    assert!(e.to_string().contains("does not overwrite keys"), "{e}");
    assert!(std::fs::read(&private).unwrap() == before);
    assert!(!dir.path().join("new.pub").exists());
    // An existing public file: the private key is not written either.
    let fresh = dir.path().join("fresh.pem");
    let e = keygen(&fresh, Some(&pair.public_key_file)).unwrap_err();
    assert!(e.to_string().contains("does not overwrite keys"), "{e}");
    assert!(!fresh.exists());
}

#[test]
fn options_without_or_against_a_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash) = image(dir.path());
    let salt = Salt::from_hex("00112233").unwrap();
    let tree = TreeOptions {
        salt: Some(salt.clone()),
        no_superblock: true,
        data_block_size: Some(1024),
        ..TreeOptions::default()
    };
    let mut req = FormatTree::new(&data, &hash);
    req.tree = tree.clone();
    let made = format(&req, &mut |_| {}).unwrap();
    assert_eq!(made.tree.uuid, None);
    assert_eq!(made.tree.data_blocks, (BLOCKS * 4) as u64);
    let mut v = VerifyTree::new(&data, &hash, Root::Hex(made.root_hash.clone()));
    v.tree = tree.clone();
    assert!(verify(&v, &mut |_| {}).unwrap().ok);
    // Signing needs the block count when nothing stores it.
    let e = sign(&SignTree {
        hash: hash.clone(),
        root: Root::Hex(made.root_hash.clone()),
        tree,
        private_key: dir.path().join("none"),
        signature_out: dir.path().join("sig"),
        message_out: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("--data-blocks"), "{e}");

    // With a superblock, options that contradict it are refused, naming each.
    let made = format(&FormatTree::new(&data, &hash), &mut |_| {}).unwrap();
    let mut v = VerifyTree::new(&data, &hash, Root::Hex(made.root_hash));
    v.tree.salt = Some(salt);
    v.tree.data_block_size = Some(512);
    let e = verify(&v, &mut |_| {}).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("contradict")
            && m.contains("--salt 00112233")
            && m.contains("--data-block-size 512"),
        "{m}"
    );
}

#[test]
fn an_appended_tree_must_not_overlap_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = image(dir.path());
    let mut req = FormatTree::new(&data, &data);
    req.tree.hash_offset = 4096;
    let e = format(&req, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    req.tree.hash_offset = 100;
    let e = format(&req, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("100"), "{e}");
    req.tree.hash_offset = (BLOCKS * 4096) as u64;
    let made = format(&req, &mut |_| {}).unwrap();
    let mut v = VerifyTree::new(&data, &data, Root::Hex(made.root_hash));
    v.tree.hash_offset = (BLOCKS * 4096) as u64;
    v.tree.data_blocks = Some(BLOCKS as u64);
    assert!(verify(&v, &mut |_| {}).unwrap().ok);
}
