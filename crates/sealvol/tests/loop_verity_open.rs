//! `sealvol verity open`: a squashfs image mounted through verified reads (FUSE → loop →
//! mount; needs root, /dev/fuse, loop devices and squashfs-tools).

mod common;

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

fn verity_open(img: &Path, hash: &Path, root: &str, mnt: &Path) -> Run {
    sv([
        "verity".as_ref(),
        "open".as_ref(),
        img.as_os_str(),
        "--hash".as_ref(),
        hash.as_os_str(),
        "--root".as_ref(),
        root.as_ref(),
        "--mount".as_ref(),
        mnt.as_os_str(),
    ])
}

#[test]
fn loop_verity_squashfs_reads_and_a_corrupt_block_gives_eio() {
    let mksquashfs = need("mksquashfs");
    let dir = tmpdir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let a = random_bytes(200_000);
    let b = random_bytes(200_000);
    std::fs::write(src.join("a.bin"), &a).unwrap();
    std::fs::write(src.join("b.bin"), &b).unwrap();
    let img = dir.path().join("img.sqfs");
    // Uncompressed, so b's bytes can be found and corrupted in the image.
    run(
        &mksquashfs,
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
    )
    .ok();
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

    {
        let _g = Opened(&mnt);
        verity_open(&img, &hash, &root, &mnt).ok();
        assert!(std::fs::read(mnt.join("a.bin")).unwrap() == a);
        assert!(std::fs::read(mnt.join("b.bin")).unwrap() == b);
        assert!(std::fs::write(mnt.join("new"), b"x").is_err(), "read-only");
        sv(["close".as_ref(), mnt.as_os_str()]).ok();
    }

    // A wrong root hash: refused, nothing mounted.
    let wrong = format!(
        "{}{}",
        if root.starts_with('0') { "1" } else { "0" },
        &root[1..]
    );
    verity_open(&img, &hash, &wrong, &mnt)
        .code(1)
        .stderr_mentions("root hash");
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "nothing mounted"
    );

    // One corrupted data byte in b.bin: b fails with EIO, a reads fine.
    let mut image = std::fs::read(&img).unwrap();
    let at = image
        .windows(64)
        .position(|w| w == &b[100_000..100_064])
        .expect("b.bin is stored uncompressed");
    image[at + 10] ^= 1;
    std::fs::write(&img, &image).unwrap();
    let _g = Opened(&mnt);
    verity_open(&img, &hash, &root, &mnt).ok();
    assert!(std::fs::read(mnt.join("a.bin")).unwrap() == a);
    let err = std::fs::read(mnt.join("b.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
    sv(["close".as_ref(), mnt.as_os_str()]).ok();
}
