//! Kernel truth: the Linux kernel's dm-crypt (in a throwaway qemu TCG guest, the kernel
//! oracle of `tests/common/oracle.rs`) opens volumes sealvol formatted and reads the plaintext
//! sealvol imported; and data the kernel writes through dm-crypt is what `sealvol export`
//! reads back. This is the proof that sealvol's bytes are what the kernel expects, on hosts
//! that have no device-mapper themselves.
//!
//! Needs (Debian): linux-image-amd64 qemu-system-x86 busybox-static cryptsetup-bin cpio kmod
//! xz-utils; scripts/test installs them. A missing oracle or package fails the test.

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "common/oracle.rs"]
mod oracle;

use common::*;
use oracle::KernelOracle;

fn sha256_hex(bytes: &[u8]) -> String {
    let r = run("sha256sum", Vec::<&str>::new(), Some(bytes)).ok();
    r.out().split_whitespace().next().unwrap().to_string()
}

struct Case {
    name: &'static str,
    sector: u32,
    detached: bool,
    pbkdf: &'static [&'static str],
}

#[test]
fn kernel_dmcrypt_opens_sealvol_volumes_both_ways() {
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let size: usize = 4 << 20;

    let cases = [
        Case {
            name: "a4096",
            sector: 4096,
            detached: false,
            pbkdf: &[],
        },
        Case {
            name: "a512",
            sector: 512,
            detached: false,
            pbkdf: &[],
        },
        Case {
            name: "d4096",
            sector: 4096,
            detached: true,
            pbkdf: &[
                "--pbkdf",
                "argon2id",
                "--pbkdf-memory",
                "64",
                "--pbkdf-force-iterations",
                "4",
            ],
        },
        Case {
            name: "d512",
            sector: 512,
            detached: true,
            pbkdf: &[],
        },
    ];

    let mut oracle = KernelOracle::new();
    oracle.file(&key);
    let mut script = String::from("set -e\nfail=0\n");
    let mut expected = Vec::new();
    for c in &cases {
        let vol = d.join(format!("{}.img", c.name));
        let hdr = d.join(format!("{}.hdr", c.name));
        let plain = random_bytes(size);
        let plain_path = d.join(format!("{}.plain", c.name));
        std::fs::write(&plain_path, &plain).unwrap();
        let mut args: Vec<String> = vec![
            "format".into(),
            "--key-file".into(),
            key.display().to_string(),
        ];
        args.extend([
            "--sector-size".into(),
            c.sector.to_string(),
            "--size".into(),
            size.to_string(),
        ]);
        args.extend(c.pbkdf.iter().map(|s| s.to_string()));
        if c.detached {
            args.extend(["--header".into(), hdr.display().to_string()]);
        }
        args.push(vol.display().to_string());
        sv(&args).ok();
        let mut imp: Vec<String> = vec![
            "import".into(),
            "--key-file".into(),
            key.display().to_string(),
        ];
        if c.detached {
            imp.extend(["--header".into(), hdr.display().to_string()]);
        }
        imp.extend([plain_path.display().to_string(), vol.display().to_string()]);
        sv(&imp).ok();

        // What the guest writes back through dm-crypt: a second plaintext, at the front.
        let back = random_bytes(1 << 20);
        let back_path = d.join(format!("{}.back", c.name));
        std::fs::write(&back_path, &back).unwrap();
        oracle.file(&back_path);

        let vol_dev = oracle.disk(&vol);
        let header_opt = if c.detached {
            format!("--header {}", oracle.disk(&hdr))
        } else {
            String::new()
        };
        let want = sha256_hex(&plain);
        script.push_str(&format!(
            "cryptsetup open {header_opt} --key-file /in/key {vol_dev} {n}\n\
             got=$(sha256sum /dev/mapper/{n} | cut -d' ' -f1)\n\
             if [ \"$got\" = {want} ]; then echo \"{n}: kernel reads sealvol's plaintext\"; else echo \"{n}: MISMATCH $got\"; fail=1; fi\n\
             dd if=/in/{n}.back of=/dev/mapper/{n} bs=1M count=1 conv=fsync 2>/dev/null\n\
             cryptsetup close {n}\n",
            n = c.name
        ));
        expected.push((c, vol, hdr, plain, back));
    }
    script.push_str("sync\nexit $fail\n");
    let stdout = oracle.run(&script).ok().to_string();
    for c in &cases {
        assert!(
            stdout.contains(&format!("{}: kernel reads sealvol's plaintext", c.name)),
            "guest did not confirm {}:\n{stdout}",
            c.name
        );
    }

    // The kernel wrote 1 MiB through dm-crypt into each volume: sealvol must read it back.
    for (c, vol, hdr, plain, back) in expected {
        let out_path = d.join(format!("{}.out", c.name));
        let mut args: Vec<String> = vec![
            "export".into(),
            "--key-file".into(),
            key.display().to_string(),
        ];
        if c.detached {
            args.extend(["--header".into(), hdr.display().to_string()]);
        }
        args.extend([vol.display().to_string(), out_path.display().to_string()]);
        sv(&args).ok();
        let got = std::fs::read(&out_path).unwrap();
        assert_eq!(got.len(), plain.len(), "{}: exported length", c.name);
        assert!(
            got[..back.len()] == back[..],
            "{}: sealvol does not read what dm-crypt wrote",
            c.name
        );
        assert!(
            got[back.len()..] == plain[back.len()..],
            "{}: data after the kernel's write changed",
            c.name
        );
    }
}

/// The oracle itself: a script's exit status and output come back, the guest has dm-crypt,
/// dm-verity and cryptsetup, and a disk written in the guest is written on the host.
#[test]
fn kernel_oracle_reports_what_the_guest_did() {
    let dir = tmpdir();
    let disk = dir.path().join("disk.img");
    sparse_file(&disk, 1 << 20);
    let mut oracle = KernelOracle::new();
    let dev = oracle.disk(&disk);
    let run = oracle.run(&format!(
        "test -d /sys/module/dm_crypt && test -d /sys/module/dm_verity || exit 9\n\
         cryptsetup --version\n\
         printf SEALVOL-ORACLE-WROTE | dd of={dev} bs=512 conv=fsync 2>/dev/null\n\
         echo guest-says-hello; exit 3\n"
    ));
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.output.contains("guest-says-hello"), "{}", run.output);
    assert!(run.output.contains("cryptsetup 2."), "{}", run.output);
    assert_eq!(read_at(&disk, 0, 20), b"SEALVOL-ORACLE-WROTE");
}
