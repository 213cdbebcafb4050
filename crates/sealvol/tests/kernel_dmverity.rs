//! Kernel truth for hash trees: the Linux kernel's dm-verity (in a throwaway qemu TCG guest,
//! via the kernel oracle of `tests/common/oracle.rs`) activates trees `sealvol verity format` built — a
//! squashfs with its tree appended, format 0 with sha1 and 512-byte blocks, and a tree without
//! superblock — mounts and reads them, and returns an I/O error for exactly the block sealvol
//! was told is corrupt.
//!
//! Needs (Debian): linux-image-amd64 qemu-system-x86 busybox-static cryptsetup-bin cpio kmod
//! xz-utils squashfs-tools; scripts/test installs them. A missing oracle or package fails.

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "common/oracle.rs"]
mod oracle;

use std::fs;
use std::path::Path;

use common::*;
use oracle::KernelOracle;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `sealvol --json verity format ARGS`: the root hash.
fn format(args: &[String]) -> String {
    let mut a = vec!["--json".to_string(), "verity".into(), "format".into()];
    a.extend(args.iter().cloned());
    sv(&a).ok().json()["root_hash"]
        .as_str()
        .expect("root_hash")
        .to_owned()
}

#[test]
fn kernel_dmverity_activates_sealvol_trees() {
    let mksquashfs = need("mksquashfs");
    let dir = tmpdir();
    let d = dir.path();

    // 1. A squashfs with its tree appended (vda).
    let src = d.join("rootfs");
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/os-release"), b"NAME=sealed\n").unwrap();
    fs::write(src.join("usr/bin/tool"), random_bytes(300_000)).unwrap();
    let sqfs = d.join("image.sqfs");
    run(
        &mksquashfs,
        [s(&src), s(&sqfs), "-noappend".into(), "-quiet".into()],
        None,
    )
    .ok();
    let sq_size = fs::metadata(&sqfs).unwrap().len();
    let sq_root = format(&[s(&sqfs), s(&sqfs), format!("--hash-offset={sq_size}")]);
    let sums = run(
        "sh",
        [
            "-c".to_string(),
            format!(
                "cd {} && sha256sum etc/os-release usr/bin/tool",
                src.display()
            ),
        ],
        None,
    )
    .ok()
    .out();
    fs::write(d.join("sums.expected"), &sums).unwrap();

    // 2. Format 0, sha1, 512-byte blocks, separate hash device (vdb data, vdc hash).
    let v0_data = d.join("v0.data");
    fs::write(&v0_data, random_bytes(1 << 20)).unwrap();
    let v0_hash = d.join("v0.hash");
    let v0_root = format(&[
        s(&v0_data),
        s(&v0_hash),
        "--format=0".into(),
        "--hash=sha1".into(),
        "--data-block-size=512".into(),
        "--hash-block-size=512".into(),
    ]);
    let v0_sum = run("sha256sum", [s(&v0_data)], None).ok().out();
    let v0_sum = v0_sum.split_whitespace().next().unwrap().to_owned();

    // 3. No superblock, 1024-byte data blocks, 300 of a larger file (vdd, vde). (sha256: the
    //    oracle's guest has no sha512 module loaded.)
    let ns_data = d.join("ns.data");
    fs::write(&ns_data, random_bytes(1 << 20)).unwrap();
    let ns_hash = d.join("ns.hash");
    let ns_opts = [
        "--no-superblock",
        "--hash=sha256",
        "--data-block-size=1024",
        "--hash-block-size=4096",
        "--salt=ab",
        "--data-blocks=300",
    ];
    let mut a = vec![s(&ns_data), s(&ns_hash)];
    a.extend(ns_opts.iter().map(|o| o.to_string()));
    let ns_root = format(&a);
    // The hash device must be a whole number of 512-byte sectors for qemu.
    let len = fs::metadata(&ns_hash).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&ns_hash)
        .unwrap()
        .set_len(len.div_ceil(4096) * 4096)
        .unwrap();

    // 4. A corrupted copy (vdf data, vdg hash): sealvol names block 37; the kernel must fail
    //    exactly that block.
    let bad_data = d.join("bad.data");
    fs::write(&bad_data, random_bytes(1 << 20)).unwrap();
    let bad_hash = d.join("bad.hash");
    let bad_root = format(&[s(&bad_data), s(&bad_hash)]);
    write_at(&bad_data, 37 * 4096 + 1234, b"!");
    sv(["verity", "verify", &s(&bad_data), &s(&bad_hash), &bad_root])
        .code(1)
        .stderr_mentions("data block 37");

    let script = format!(
        r#"
fail() {{ echo "FAIL: $*"; exit 1; }}
veritysetup open /dev/vda sq /dev/vda {sq_root} --hash-offset={sq_size} || fail "open squashfs"
mkdir -p /mnt/sq && mount -t squashfs -o ro /dev/mapper/sq /mnt/sq || fail "mount squashfs"
(cd /mnt/sq && sha256sum etc/os-release usr/bin/tool) > /tmp/sums || fail "read squashfs"
diff /tmp/sums /in/sums.expected || fail "file contents through dm-verity"
echo OK-squashfs

veritysetup open /dev/vdb v0 /dev/vdc {v0_root} || fail "open format 0"
sum=$(sha256sum /dev/mapper/v0 | cut -d' ' -f1)
[ "$sum" = "{v0_sum}" ] || fail "format 0 data: $sum"
echo OK-format0

veritysetup open {ns_opts} /dev/vdd ns /dev/vde {ns_root} || fail "open no-superblock"
dd if=/dev/mapper/ns of=/dev/null bs=1024 2>/dev/null || fail "read no-superblock"
echo OK-nosuperblock

veritysetup open /dev/vdf bad /dev/vdg {bad_root} || fail "open corrupted"
blockdev --setra 0 /dev/mapper/bad 2>/dev/null
dd if=/dev/mapper/bad of=/dev/null bs=4096 skip=38 count=1 2>/dev/null || fail "block 38 should read"
dd if=/dev/mapper/bad of=/dev/null bs=4096 skip=0 count=1 2>/dev/null || fail "block 0 should read"
if dd if=/dev/mapper/bad of=/dev/null bs=4096 skip=37 count=1 2>/dev/null; then fail "block 37 read despite corruption"; fi
echo OK-corruption
"#,
        ns_opts = ns_opts.join(" "),
    );
    let mut oracle = KernelOracle::new();
    oracle.file(&d.join("sums.expected"));
    for disk in [
        &sqfs, &v0_data, &v0_hash, &ns_data, &ns_hash, &bad_data, &bad_hash,
    ] {
        oracle.disk(disk);
    }
    let stdout = oracle.run(&script).ok().to_string();
    for marker in [
        "OK-squashfs",
        "OK-format0",
        "OK-nosuperblock",
        "OK-corruption",
    ] {
        assert!(stdout.contains(marker), "{marker} missing:\n{stdout}");
    }
}
