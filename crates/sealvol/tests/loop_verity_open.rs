//! `sealvol verity open`: squashfs and erofs images mounted through verified reads (FUSE →
//! loop → mount; needs root, /dev/fuse, loop devices, squashfs-tools and erofs-utils), with
//! the publisher's signature checked before anything is mounted.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::*;

struct Opened<'a>(&'a Path);

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        let _ = Command::new(SEALVOL).arg("close").arg(self.0).output();
        let _ = Command::new("umount").arg("-l").arg(self.0).output();
    }
}

fn verity_open(
    img: &Path,
    hash: &Path,
    root: &str,
    mnt: &Path,
    signed: Option<(&Path, &Path)>,
) -> Run {
    let mut a: Vec<&OsStr> = vec![
        "verity".as_ref(),
        "open".as_ref(),
        img.as_os_str(),
        "--hash".as_ref(),
        hash.as_os_str(),
        "--root".as_ref(),
        root.as_ref(),
        "--mount".as_ref(),
        mnt.as_os_str(),
    ];
    if let Some((sig, public)) = signed {
        a.extend([
            "--signature".as_ref(),
            sig.as_os_str(),
            "--public-key".as_ref(),
            public.as_os_str(),
        ]);
    }
    sv(a)
}

/// Builds an image of `src` at `img` with the file system's own tool, uncompressed so a
/// file's bytes can be found and corrupted in it.
fn make_image(fs: &str, src: &Path, img: &Path) {
    match fs {
        "squashfs" => run(
            need("mksquashfs"),
            [
                src.as_os_str(),
                img.as_os_str(),
                "-noappend".as_ref(),
                "-quiet".as_ref(),
                "-noI".as_ref(),
                "-noD".as_ref(),
                "-noF".as_ref(),
            ],
            None,
        ),
        "erofs" => run(
            need("mkfs.erofs"),
            ["--quiet".as_ref(), img.as_os_str(), src.as_os_str()],
            None,
        ),
        _ => unreachable!("{fs}"),
    }
    .ok();
}

/// The whole round: mount and read through the tree; a wrong root, a tampered signature or
/// a signature from another key refused with nothing mounted; the signed image mounts; one
/// corrupted data byte gives EIO on that file only.
fn verified_mount(fs: &str) {
    let dir = tmpdir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let a = random_bytes(200_000);
    let b = random_bytes(200_000);
    std::fs::write(src.join("a.bin"), &a).unwrap();
    std::fs::write(src.join("b.bin"), &b).unwrap();
    let img = dir.path().join(format!("img.{fs}"));
    make_image(fs, &src, &img);
    let hash = dir.path().join("img.hash");
    let v = sv([
        "--json".as_ref(),
        "verity".as_ref(),
        "format".as_ref(),
        img.as_os_str(),
        hash.as_os_str(),
    ])
    .ok()
    .json();
    let root = v["root_hash"].as_str().unwrap().to_string();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let empty = |what: &str| {
        assert!(
            std::fs::read_dir(&mnt).unwrap().next().is_none(),
            "{fs}: something is mounted after {what}"
        );
    };

    {
        let _g = Opened(&mnt);
        verity_open(&img, &hash, &root, &mnt, None).ok();
        assert!(std::fs::read(mnt.join("a.bin")).unwrap() == a, "{fs}");
        assert!(std::fs::read(mnt.join("b.bin")).unwrap() == b, "{fs}");
        assert!(std::fs::write(mnt.join("new"), b"x").is_err(), "read-only");
        sv(["close".as_ref(), mnt.as_os_str()]).ok();
    }

    // A wrong root hash: refused, nothing mounted.
    let wrong = format!(
        "{}{}",
        if root.starts_with('0') { "1" } else { "0" },
        &root[1..]
    );
    verity_open(&img, &hash, &wrong, &mnt, None)
        .code(1)
        .stderr_mentions("root hash");
    empty("a wrong root hash");

    // The publisher's signature: good opens; tampered, or made by another key, is refused.
    let (key, other) = (dir.path().join("pub.key"), dir.path().join("other.key"));
    for k in [&key, &other] {
        sv(["verity".as_ref(), "keygen".as_ref(), k.as_os_str()]).ok();
    }
    let sig = dir.path().join("root.sig");
    sv([
        "verity".as_ref(),
        "sign".as_ref(),
        "--private-key".as_ref(),
        key.as_os_str(),
        "--signature-out".as_ref(),
        sig.as_os_str(),
        hash.as_os_str(),
        root.as_ref(),
    ])
    .ok();
    let public = dir.path().join("pub.key.pub");
    {
        let _g = Opened(&mnt);
        verity_open(&img, &hash, &root, &mnt, Some((&sig, &public))).ok();
        assert!(std::fs::read(mnt.join("a.bin")).unwrap() == a, "{fs}");
        sv(["close".as_ref(), mnt.as_os_str()]).ok();
    }
    let other_public = dir.path().join("other.key.pub");
    verity_open(&img, &hash, &root, &mnt, Some((&sig, &other_public)))
        .code(1)
        .stderr_mentions("signature");
    empty("a signature by another key");
    let mut bad = std::fs::read(&sig).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let bad_sig = dir.path().join("bad.sig");
    std::fs::write(&bad_sig, &bad).unwrap();
    verity_open(&img, &hash, &root, &mnt, Some((&bad_sig, &public)))
        .code(1)
        .stderr_mentions("signature");
    empty("a tampered signature");

    // One corrupted data byte in b.bin: b fails with EIO, a reads fine.
    let mut image = std::fs::read(&img).unwrap();
    let at = image
        .windows(64)
        .position(|w| w == &b[100_000..100_064])
        .expect("b.bin is stored uncompressed");
    image[at + 10] ^= 1;
    std::fs::write(&img, &image).unwrap();
    let _g = Opened(&mnt);
    verity_open(&img, &hash, &root, &mnt, None).ok();
    assert!(std::fs::read(mnt.join("a.bin")).unwrap() == a, "{fs}");
    let err = std::fs::read(mnt.join("b.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{fs}: EIO: {err}");
    sv(["close".as_ref(), mnt.as_os_str()]).ok();
}

#[test]
fn loop_verity_squashfs_reads_checks_signatures_and_a_corrupt_block_gives_eio() {
    verified_mount("squashfs");
}

#[test]
fn loop_verity_erofs_reads_checks_signatures_and_a_corrupt_block_gives_eio() {
    verified_mount("erofs");
}
