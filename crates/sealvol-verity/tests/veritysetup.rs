//! The library against the real `veritysetup` (cryptsetup 2.6): equal hash devices byte for
//! byte and equal root hashes for equal inputs, in both directions, for every option
//! combination veritysetup supports. A missing veritysetup fails the test with an install hint.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use sealvol_verity::{
    format, read_superblock, verify, HashAlgorithm, HashArea, HashTree, HashType, Params, Salt,
    Superblock, Uuid, VerityReader,
};

const UUID: &str = "12345678-1234-4234-9234-123456789abc";

fn veritysetup() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join("veritysetup");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`veritysetup` is required by this test but is not installed: run \
         `apt-get install -y cryptsetup-bin` (scripts/test installs it). Never skipped."
    );
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn vs(args: &[&str]) -> Out {
    let o = Command::new(veritysetup())
        .args(args)
        .output()
        .expect("run veritysetup");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn root_of(out: &Out) -> Vec<u8> {
    assert_eq!(
        out.code, 0,
        "veritysetup failed: {}{}",
        out.stdout, out.stderr
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Root hash:"))
        .unwrap_or_else(|| panic!("no root hash in {}", out.stdout));
    hex::decode(line.split_whitespace().last().unwrap()).unwrap()
}

/// Deterministic, non-repeating data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Case {
    hash_type: HashType,
    alg: HashAlgorithm,
    dbs: u32,
    hbs: u32,
    salt: &'static str,
    data_len: usize,
    data_blocks: Option<u64>,
    superblock: bool,
    hash_offset: u64,
}

const BASE: Case = Case {
    hash_type: HashType::Normal,
    alg: HashAlgorithm::Sha256,
    dbs: 4096,
    hbs: 4096,
    salt: "00112233",
    data_len: 1 << 20,
    data_blocks: None,
    superblock: true,
    hash_offset: 0,
};

fn vs_args(c: &Case, data: &Path, hash: &Path) -> Vec<String> {
    let mut a = vec![
        "format".to_string(),
        data.display().to_string(),
        hash.display().to_string(),
        format!("--format={}", c.hash_type.number()),
        format!("--hash={}", c.alg.name()),
        format!("--data-block-size={}", c.dbs),
        format!("--hash-block-size={}", c.hbs),
        format!("--salt={}", c.salt),
    ];
    if c.superblock {
        a.push(format!("--uuid={UUID}"));
    } else {
        a.push("--no-superblock".into());
    }
    if let Some(n) = c.data_blocks {
        a.push(format!("--data-blocks={n}"));
    }
    if c.hash_offset != 0 {
        a.push(format!("--hash-offset={}", c.hash_offset));
    }
    a
}

fn params(c: &Case) -> Params {
    let blocks = c
        .data_blocks
        .unwrap_or(c.data_len as u64 / u64::from(c.dbs));
    Params::new(
        c.hash_type,
        c.alg,
        c.dbs,
        c.hbs,
        blocks,
        Salt::from_hex(c.salt).unwrap(),
    )
    .unwrap()
}

fn area(c: &Case) -> HashArea {
    HashArea {
        offset: c.hash_offset,
        superblock: c.superblock,
    }
}

/// veritysetup format → same bytes as ours; each side verifies the other's tree.
fn check(c: Case) {
    let dir = tempfile::tempdir().unwrap();
    let img = data(c.data_len, c.data_len as u64 ^ u64::from(c.dbs));
    let data_path = dir.path().join("data");
    let hash_path = dir.path().join("hash");
    std::fs::write(&data_path, &img).unwrap();
    let args = vs_args(&c, &data_path, &hash_path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let theirs_root = root_of(&vs(&args));
    let theirs = std::fs::read(&hash_path).unwrap();

    let p = params(&c);
    let mut ours = Cursor::new(Vec::new());
    let tree = format(
        &img,
        &mut ours,
        &p,
        area(&c),
        Some(Uuid::parse(UUID).unwrap()),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(hex::encode(tree.root()), hex::encode(&theirs_root), "{c:?}");
    let ours = ours.into_inner();
    assert_eq!(ours.len(), theirs.len(), "hash device size {c:?}");
    assert!(ours == theirs, "hash device bytes differ: {c:?}");

    // veritysetup's tree verifies here, and through the reader.
    let report = verify(
        &img,
        &mut Cursor::new(&theirs),
        &p,
        area(&c),
        &theirs_root,
        true,
        &mut |_| {},
    )
    .unwrap();
    assert!(report.is_ok(), "{c:?}: {report:?}");
    assert_eq!(report.data_blocks_ok, p.data_blocks());
    if c.superblock {
        let sb = read_superblock(&mut Cursor::new(&theirs), c.hash_offset).unwrap();
        assert_eq!(sb.params, p);
        assert_eq!(sb.uuid.to_string(), UUID);
    }
    let mut reader = VerityReader::new(
        Cursor::new(&img),
        Cursor::new(&theirs),
        p.clone(),
        area(&c),
        &theirs_root,
    )
    .unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
    assert!(all[..] == img[..p.data_size() as usize], "{c:?}");

    // Our tree, written to a file, passes veritysetup verify.
    let ours_path = dir.path().join("ours");
    std::fs::write(&ours_path, &ours).unwrap();
    let mut vargs = vec![
        "verify".to_string(),
        data_path.display().to_string(),
        ours_path.display().to_string(),
        hex::encode(tree.root()),
    ];
    if !c.superblock {
        vargs.extend(vs_args(&c, &data_path, &ours_path).into_iter().skip(3));
    } else if c.hash_offset != 0 {
        vargs.push(format!("--hash-offset={}", c.hash_offset));
    }
    let vargs: Vec<&str> = vargs.iter().map(String::as_str).collect();
    let out = vs(&vargs);
    assert_eq!(
        out.code, 0,
        "veritysetup verify refused ours {c:?}: {}",
        out.stderr
    );
}

#[test]
fn veritysetup_default_sha256() {
    check(BASE);
}

#[test]
fn veritysetup_block_sizes() {
    for dbs in [512, 1024, 2048, 4096, 8192] {
        for hbs in [512, 1024, 4096, 8192] {
            check(Case {
                dbs,
                hbs,
                data_len: 300 * 1024 + 512 * 3,
                ..BASE
            });
        }
    }
}

#[test]
fn veritysetup_algorithms_and_formats() {
    for alg in HashAlgorithm::ALL {
        for hash_type in [HashType::Normal, HashType::ChromeOs] {
            for salt in [
                "-",
                "ab",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            ] {
                check(Case {
                    alg,
                    hash_type,
                    salt,
                    hbs: 512,
                    dbs: 1024,
                    data_len: 700 * 1024,
                    ..BASE
                });
            }
        }
    }
}

#[test]
fn veritysetup_long_salt_and_many_levels() {
    check(Case {
        salt: Box::leak("5a".repeat(256).into_boxed_str()),
        dbs: 512,
        hbs: 512,
        alg: HashAlgorithm::Sha512,
        data_len: 2 << 20,
        ..BASE
    });
}

#[test]
fn veritysetup_no_superblock_and_offsets() {
    check(Case {
        superblock: false,
        ..BASE
    });
    check(Case {
        hash_offset: 1536,
        ..BASE
    });
    check(Case {
        hash_offset: 8192,
        hbs: 1024,
        ..BASE
    });
    check(Case {
        superblock: false,
        hash_offset: 8192,
        ..BASE
    });
    // Without a superblock veritysetup rounds the offset *down* to a hash block.
    check(Case {
        superblock: false,
        hash_offset: 1536,
        ..BASE
    });
}

#[test]
fn veritysetup_data_blocks_smaller_than_file() {
    for n in [1, 2, 127, 128, 129, 200] {
        check(Case {
            data_blocks: Some(n),
            ..BASE
        });
    }
}

#[test]
fn veritysetup_tree_appended_to_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = data(1 << 20, 7);
    let theirs_path = dir.path().join("theirs.img");
    std::fs::write(&theirs_path, &img).unwrap();
    let offset = 1u64 << 20;
    let t = theirs_path.display().to_string();
    let out = vs(&[
        "format",
        &t,
        &t,
        &format!("--hash-offset={offset}"),
        "--salt=ab",
        &format!("--uuid={UUID}"),
    ]);
    let root = root_of(&out);
    let theirs = std::fs::read(&theirs_path).unwrap();

    let p = Params::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        4096,
        4096,
        256,
        Salt::from_hex("ab").unwrap(),
    )
    .unwrap();
    let a = HashArea::with_superblock(offset);
    a.check_overlap(&p).unwrap();
    let mut ours = Cursor::new(img.clone());
    let data_view = Cursor::new(img.clone());
    let tree = format(
        &data_view,
        &mut ours,
        &p,
        a,
        Some(Uuid::parse(UUID).unwrap()),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(tree.root(), &root[..]);
    assert!(ours.get_ref()[..] == theirs[..], "appended tree differs");
    assert!(HashArea::with_superblock(512 * 1024)
        .check_overlap(&p)
        .is_err());
}

#[test]
fn veritysetup_known_answers_zeros() {
    // 8 MiB of zeros with fixed salts: the root hash veritysetup computes now must equal ours.
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 8 << 20];
    let data_path = dir.path().join("zeros");
    std::fs::write(&data_path, &zeros).unwrap();
    let cases: &[(&str, u32, &str, u32)] = &[
        ("sha256", 1, "00112233", 512),
        ("sha256", 1, "00112233", 1024),
        ("sha256", 1, "00112233", 4096),
        ("sha256", 0, "00112233", 4096),
        ("sha256", 1, "-", 4096),
        ("sha1", 1, "00112233", 4096),
    ];
    for &(alg, ht, salt, bs) in cases {
        let hash_path = dir.path().join(format!("h-{alg}-{ht}-{bs}-{salt}"));
        let theirs = root_of(&vs(&[
            "format",
            data_path.to_str().unwrap(),
            hash_path.to_str().unwrap(),
            &format!("--hash={alg}"),
            &format!("--format={ht}"),
            &format!("--salt={salt}"),
            &format!("--data-block-size={bs}"),
            &format!("--hash-block-size={bs}"),
        ]));
        let p = Params::new(
            HashType::from_number(ht).unwrap(),
            HashAlgorithm::from_name(alg).unwrap(),
            bs,
            bs,
            (8 << 20) / u64::from(bs),
            Salt::from_hex(salt).unwrap(),
        )
        .unwrap();
        let tree = HashTree::build(&zeros, &p, &mut |_| {}).unwrap();
        assert_eq!(
            hex::encode(tree.root()),
            hex::encode(&theirs),
            "{alg} format {ht} salt {salt} block {bs}"
        );
        let sb = Superblock::parse(&std::fs::read(&hash_path).unwrap()).unwrap();
        assert_eq!(sb.params, p);
    }
}

#[test]
fn veritysetup_known_answer_pinned() {
    // Pinned from veritysetup 2.6.1: `veritysetup format zeros.img h --salt 00112233` over
    // 8 MiB of zeros.
    let p = Params::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        4096,
        4096,
        2048,
        Salt::from_hex("00112233").unwrap(),
    )
    .unwrap();
    let tree = HashTree::build(&vec![0u8; 8 << 20], &p, &mut |_| {}).unwrap();
    assert_eq!(
        hex::encode(tree.root()),
        "e2151ca874bb94594fc180c72386b91adedb8ce36bee8e71c4a444b70f095be4"
    );
}
