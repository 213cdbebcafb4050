//! `sealvol verity …` against the real `veritysetup` (cryptsetup 2.6), `openssl` and
//! squashfs-tools: trees byte for byte in both directions, exit codes and messages on
//! corruption, signatures that openssl can check, and a squashfs read back through the tree.
//!
//! Test names carry the peer they need. A missing peer fails with an install hint.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

fn veritysetup<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(need("veritysetup"), args, None)
}

fn openssl<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(need("openssl"), args, None)
}

fn root_line(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("no `Root hash:` line in\n{out}"))
        .trim()
        .to_owned()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

const UUID: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

/// sealvol and veritysetup format the same data with the same options: equal hash files and
/// root hashes, and each verifies the other's tree.
fn both_ways(opts: &[&str], data_len: usize) {
    let dir = tmpdir();
    let data = dir.path().join("data.img");
    fs::write(&data, random_bytes(data_len)).unwrap();
    let ours = dir.path().join("ours.hash");
    let theirs = dir.path().join("theirs.hash");
    let no_sb = opts.contains(&"--no-superblock");
    let mut uuid = vec![];
    if !no_sb {
        uuid = vec![format!("--uuid={UUID}")];
    }

    let mut a = vec!["verity".to_string(), "format".into(), s(&data), s(&ours)];
    a.extend(opts.iter().map(|o| o.to_string()));
    a.extend(uuid.clone());
    let sv_out = sv(&a).ok().out();
    let sv_root = root_line(&sv_out);

    let mut b = vec!["format".to_string(), s(&data), s(&theirs)];
    b.extend(opts.iter().map(|o| o.to_string()));
    b.extend(uuid);
    let vs_out = veritysetup(&b).ok().out();
    assert_eq!(sv_root, root_line(&vs_out), "root hash for {opts:?}");
    assert!(
        fs::read(&ours).unwrap() == fs::read(&theirs).unwrap(),
        "hash devices differ for {opts:?}"
    );
    // Same listing lines as veritysetup, apart from the file name.
    assert_eq!(
        sv_out.lines().skip(1).collect::<Vec<_>>(),
        vs_out.lines().skip(1).collect::<Vec<_>>(),
        "format output for {opts:?}"
    );

    // Verify options: the superblock carries the parameters, else repeat them.
    let verify_opts: Vec<String> = if no_sb {
        opts.iter().map(|o| o.to_string()).collect()
    } else {
        opts.iter()
            .filter(|o| o.starts_with("--hash-offset"))
            .map(|o| o.to_string())
            .collect()
    };
    let mut v = vec!["verify".to_string(), s(&data), s(&ours), sv_root.clone()];
    v.extend(verify_opts.clone());
    veritysetup(&v).ok();
    let mut v = vec![
        "verity".to_string(),
        "verify".into(),
        s(&data),
        s(&theirs),
        sv_root,
    ];
    v.extend(verify_opts);
    sv(&v).ok();
}

#[test]
fn veritysetup_cli_defaults() {
    both_ways(&["--salt=00112233"], 3 << 20);
}

#[test]
fn veritysetup_cli_option_matrix() {
    let cases: &[&[&str]] = &[
        &["--salt=-"],
        &["--salt=ab", "--format=0"],
        &["--salt=ab", "--hash=sha1"],
        &[
            "--salt=ab",
            "--hash=sha512",
            "--data-block-size=512",
            "--hash-block-size=1024",
        ],
        &[
            "--salt=ab",
            "--data-block-size=1024",
            "--hash-block-size=512",
        ],
        &["--salt=ab", "--data-blocks=100"],
        &["--salt=ab", "--no-superblock"],
        &["--salt=ab", "--hash-offset=8192"],
        &[
            "--salt=ab",
            "--format=0",
            "--hash=sha256",
            "--data-block-size=2048",
        ],
    ];
    for opts in cases {
        both_ways(opts, (1 << 20) + 777);
    }
}

#[test]
fn veritysetup_cli_tree_appended_to_image() {
    let dir = tmpdir();
    let img = dir.path().join("img");
    let payload = random_bytes(2 << 20);
    fs::write(&img, &payload).unwrap();
    let offset = format!("--hash-offset={}", payload.len());
    let out = sv(["verity", "format", &s(&img), &s(&img), &offset, "--salt=ab"])
        .ok()
        .out();
    let root = root_line(&out);
    assert!(fs::metadata(&img).unwrap().len() > payload.len() as u64);
    assert!(read_at(&img, 0, payload.len()) == payload, "data changed");
    veritysetup(["verify", &s(&img), &s(&img), &root, &offset]).ok();
    sv(["verity", "verify", &s(&img), &s(&img), &root, &offset]).ok();
    // An offset inside the data is refused and changes nothing.
    let before = snapshot(&img);
    sv([
        "verity",
        "format",
        &s(&img),
        &s(&img),
        "--hash-offset=1048576",
    ])
    .code(2)
    .stderr_mentions("overlaps");
    assert_unchanged(&img, &before, "refused format");
}

#[test]
fn veritysetup_cli_known_answer_zeros() {
    let dir = tmpdir();
    let zeros = dir.path().join("zeros");
    fs::write(&zeros, vec![0u8; 8 << 20]).unwrap();
    let h = dir.path().join("h");
    let out = sv([
        "--json",
        "verity",
        "format",
        &s(&zeros),
        &s(&h),
        "--salt=00112233",
    ])
    .ok()
    .json();
    assert_eq!(
        out["root_hash"],
        "e2151ca874bb94594fc180c72386b91adedb8ce36bee8e71c4a444b70f095be4"
    );
    assert_eq!(out["hash_blocks"], 17);
    assert_eq!(out["hash_device_size"], 73728);
    let dump = sv(["--json", "verity", "dump", &s(&h)]).ok().json();
    assert_eq!(dump["salt"], "00112233");
    assert_eq!(dump["data_blocks"], 2048);
    let vs = veritysetup(["dump", &s(&h)]).ok().out();
    assert!(vs.contains("Salt:            \t00112233"), "{vs}");
}

struct Formatted {
    dir: tempfile::TempDir,
    data: PathBuf,
    hash: PathBuf,
    root: String,
}

fn formatted(blocks: usize) -> Formatted {
    let dir = tmpdir();
    let data = dir.path().join("data");
    let hash = dir.path().join("hash");
    fs::write(&data, random_bytes(blocks * 4096)).unwrap();
    let out = sv(["verity", "format", &s(&data), &s(&hash), "--salt=99"])
        .ok()
        .out();
    let root = root_line(&out);
    Formatted {
        dir,
        data,
        hash,
        root,
    }
}

fn flip(path: &Path, at: u64) {
    let b = read_at(path, at, 1)[0];
    write_at(path, at, &[b ^ 0x40]);
}

#[test]
fn veritysetup_cli_corrupt_data_block_is_named() {
    let f = formatted(600);
    flip(&f.data, 123 * 4096 + 99);
    let r = sv(["verity", "verify", &s(&f.data), &s(&f.hash), &f.root])
        .code(1)
        .stderr_mentions("data block 123")
        .stderr_mentions(&format!("offset {}", 123 * 4096));
    assert!(r.out().is_empty(), "nothing on stdout on failure");
    // veritysetup agrees that it is corrupt.
    veritysetup(["verify", &s(&f.data), &s(&f.hash), &f.root]).fails();

    flip(&f.data, 456 * 4096);
    let j = sv([
        "--json",
        "verity",
        "verify",
        "--all",
        &s(&f.data),
        &s(&f.hash),
        &f.root,
    ])
    .code(1)
    .json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["exit_code"], 1);
    assert_eq!(j["first_bad_data_block"]["index"], 123);
    let bad: Vec<u64> = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, vec![123, 456]);
    sv([
        "verity",
        "verify",
        "--all",
        &s(&f.data),
        &s(&f.hash),
        &f.root,
    ])
    .code(1)
    .stderr_mentions("data block 456");

    // Verified reads stop at the bad block, naming it.
    let out = f.dir.path().join("out");
    sv([
        "verity",
        "read",
        &s(&f.data),
        &s(&f.hash),
        &f.root,
        &s(&out),
    ])
    .code(1)
    .stderr_mentions("data block 123");
}

#[test]
fn veritysetup_cli_corrupt_hash_block_and_wrong_root() {
    let f = formatted(600);
    // Level-0 block 2 (after the superblock block and the top block).
    flip(&f.hash, 4096 * 4 + 5);
    sv(["verity", "verify", &s(&f.data), &s(&f.hash), &f.root])
        .code(1)
        .stderr_mentions("hash block 2 of level 0")
        .stderr_mentions("offset 16384");
    veritysetup(["verify", &s(&f.data), &s(&f.hash), &f.root]).fails();

    let g = formatted(10);
    let mut wrong = g.root.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    sv(["verity", "verify", &s(&g.data), &s(&g.hash), &wrong])
        .code(1)
        .stderr_mentions("root hash");
    // Malformed input is an error (2), not a "no".
    sv(["verity", "verify", &s(&g.data), &s(&g.hash), "xyz"]).code(2);
    sv(["verity", "verify", &s(&g.data), &s(&g.hash), &g.root[..10]]).code(2);
    let missing = g.dir.path().join("missing");
    sv(["verity", "verify", &s(&missing), &s(&g.hash), &g.root])
        .code(2)
        .stderr_mentions("does not exist");
    sv(["verity", "verify", &s(&g.data), &s(&g.data), &g.root])
        .code(2)
        .stderr_mentions("superblock");
    // Options that contradict the superblock are refused.
    sv([
        "verity",
        "verify",
        &s(&g.data),
        &s(&g.hash),
        &g.root,
        "--hash=sha1",
    ])
    .code(2)
    .stderr_mentions("contradict");
}

#[test]
fn openssl_signature_interop_and_tampering() {
    let f = formatted(64);
    let d = f.dir.path();
    let key = d.join("signing.pem");
    let public = d.join("signing.pub");
    openssl(["genpkey", "-algorithm", "ed25519", "-out", &s(&key)]).ok();
    openssl(["pkey", "-in", &s(&key), "-pubout", "-out", &s(&public)]).ok();
    let sig = d.join("image.sig");
    let msg = d.join("image.msg");
    sv([
        "verity",
        "sign",
        &s(&f.hash),
        &f.root,
        "--private-key",
        &s(&key),
        "--signature-out",
        &s(&sig),
        "--message-out",
        &s(&msg),
    ])
    .ok();
    assert_eq!(fs::metadata(&sig).unwrap().len(), 64);
    // A root hash that is not this tree's is not signed.
    let mut wrong = f.root.clone().into_bytes();
    wrong[5] = if wrong[5] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    let nosig = d.join("nosig");
    sv([
        "verity",
        "sign",
        &s(&f.hash),
        &wrong,
        "--private-key",
        &s(&key),
        "--signature-out",
        &s(&nosig),
    ])
    .code(2)
    .stderr_mentions("refusing to sign");
    assert!(!nosig.exists());
    // openssl checks sealvol's signature over the documented message.
    let text = fs::read_to_string(&msg).unwrap();
    assert!(
        text.starts_with("sealvol dm-verity root hash v1\n"),
        "{text}"
    );
    assert!(text.contains(&format!("root-hash {}\n", f.root)), "{text}");
    openssl([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        &s(&public),
        "-rawin",
        "-in",
        &s(&msg),
        "-sigfile",
        &s(&sig),
    ])
    .ok();
    let verify = |sig: &Path, public: &Path, hash: &Path| {
        sv([
            "verity",
            "verify",
            &s(&f.data),
            &s(hash),
            &f.root,
            "--signature",
            &s(sig),
            "--public-key",
            &s(public),
        ])
    };
    verify(&sig, &public, &f.hash).ok();

    // A signature made by openssl over the same message verifies here.
    let sig2 = d.join("openssl.sig");
    openssl([
        "pkeyutl",
        "-sign",
        "-inkey",
        &s(&key),
        "-rawin",
        "-in",
        &s(&msg),
        "-out",
        &s(&sig2),
    ])
    .ok();
    verify(&sig2, &public, &f.hash).ok();

    // Tampered signature.
    let bad = d.join("bad.sig");
    let mut b = fs::read(&sig).unwrap();
    b[17] ^= 1;
    fs::write(&bad, &b).unwrap();
    verify(&bad, &public, &f.hash)
        .code(1)
        .stderr_mentions("signature");
    // Tampered parameter: the salt in the superblock (offset 88).
    let hash2 = d.join("hash2");
    fs::copy(&f.hash, &hash2).unwrap();
    flip(&hash2, 88);
    verify(&sig, &public, &hash2)
        .code(1)
        .stderr_mentions("signature");
    // Tampered data block count (offset 72): refused before any hashing.
    let hash3 = d.join("hash3");
    fs::copy(&f.hash, &hash3).unwrap();
    write_at(&hash3, 72, &[63]);
    verify(&sig, &public, &hash3).code(1);
    // Another key.
    let other = d.join("other.pem");
    sv(["verity", "keygen", &s(&other)]).ok();
    let other_pub = d.join("other.pem.pub");
    verify(&sig, &other_pub, &f.hash).code(1);
    // JSON: one document with the verdict.
    let j = sv([
        "--json",
        "verity",
        "verify",
        &s(&f.data),
        &s(&f.hash),
        &f.root,
        "--signature",
        &s(&sig),
        "--public-key",
        &s(&public),
    ])
    .ok()
    .json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["signature"]["valid"], true);
}

#[test]
fn openssl_reads_keygen_keys() {
    let dir = tmpdir();
    let key = dir.path().join("k.pem");
    let j = sv(["--json", "verity", "keygen", &s(&key)]).ok().json();
    let public = dir.path().join("k.pem.pub");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let derived = openssl(["pkey", "-in", &s(&key), "-pubout"]).ok().out();
    assert_eq!(derived, fs::read_to_string(&public).unwrap());
    assert_eq!(j["public_key"].as_str().unwrap().len(), 64);
    // Never overwrites.
    sv(["verity", "keygen", &s(&key)])
        .code(2)
        .stderr_mentions("exists");
    let out = openssl(["pkey", "-in", &s(&key), "-text", "-noout"])
        .ok()
        .out();
    assert!(out.contains("ED25519"), "{out}");
}

fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn squashfs_veritysetup_cli_image_round_trip() {
    let mksquashfs = need("mksquashfs");
    let unsquashfs = need("unsquashfs");
    let dir = tmpdir();
    let src = dir.path().join("rootfs");
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/os-release"), b"NAME=sealed\n").unwrap();
    fs::write(src.join("usr/bin/tool"), random_bytes(700_000)).unwrap();
    fs::write(src.join("usr/empty"), b"").unwrap();
    let img = dir.path().join("image.sqfs");
    run(
        &mksquashfs,
        [
            s(&src),
            s(&img),
            "-noappend".into(),
            "-quiet".into(),
            "-no-progress".into(),
        ],
        None,
    )
    .ok();
    // The tree is appended to the image, as image publishers ship it.
    let size = fs::metadata(&img).unwrap().len();
    let offset = format!("--hash-offset={size}");
    let j = sv(["--json", "verity", "format", &s(&img), &s(&img), &offset])
        .ok()
        .json();
    let root = j["root_hash"].as_str().unwrap().to_owned();
    assert_eq!(j["data_blocks"].as_u64().unwrap(), size / 4096);
    veritysetup(["verify", &s(&img), &s(&img), &root, &offset]).ok();
    sv(["verity", "verify", &s(&img), &s(&img), &root, &offset]).ok();

    // Every file's bytes, read through the tree.
    let verified = dir.path().join("verified.sqfs");
    sv([
        "verity",
        "read",
        &s(&img),
        &s(&img),
        &root,
        &s(&verified),
        &offset,
    ])
    .ok();
    assert_eq!(fs::metadata(&verified).unwrap().len(), size);
    let out = dir.path().join("out");
    run(
        &unsquashfs,
        ["-no-progress".into(), "-d".into(), s(&out), s(&verified)],
        None,
    )
    .ok();
    assert_eq!(files_under(&out), files_under(&src));

    // One flipped byte in the image: verify and reads name the block.
    flip(&img, 4096 * 3 + 10);
    sv(["verity", "verify", &s(&img), &s(&img), &root, &offset])
        .code(1)
        .stderr_mentions("data block 3");
    sv([
        "verity",
        "read",
        &s(&img),
        &s(&img),
        &root,
        &s(&verified),
        &offset,
    ])
    .code(1)
    .stderr_mentions("data block 3");
}
