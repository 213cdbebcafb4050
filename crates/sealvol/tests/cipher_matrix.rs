//! Every cipher, mode, key size, hash and sector size cryptsetup writes, read and written byte
//! for byte by sealvol (issue 11, item 4), against real peers:
//!
//! - `cryptsetup_aes_matrix`: the AES volumes cryptsetup makes on this host (plain files; no
//!   device-mapper needed): cryptsetup formats, random ciphertext goes into the data area,
//!   `sealvol export` must equal what `openssl` decrypts under the volume key cryptsetup dumps
//!   (`luksDump --dump-volume-key`); then `sealvol import` writes plaintext that the kernel's
//!   dm-crypt (the kernel oracle) reads back byte for byte. And sealvol formats the same
//!   combination: cryptsetup accepts it (`luksDump`, `open --test-passphrase`) and the
//!   kernel's dm-crypt reads what `sealvol import` wrote.
//! - `kernel_cipher_matrix`: Serpent, Twofish, Adiantum and AES-192-XTS, which cryptsetup on
//!   this host cannot make (its keyslot encryption would need the kernel crypto API and
//!   device-mapper): cryptsetup formats them INSIDE the kernel oracle's guest, dm-crypt writes
//!   plaintext through them, the volumes come out through a disk and `sealvol export` must
//!   read that plaintext; sealvol-formatted, sealvol-imported volumes of every combination
//!   go in on a second disk and the guest's dm-crypt must read them.
//!
//! The matrices. Host (AES, 65 volumes each way): every cipher/mode/key size meets every
//! hash and every header layout (LUKS1 with its 512-byte sectors; LUKS2 with 512, 1024,
//! 2048, 4096-byte sectors) in a Latin square: layout `l` of the `k`-th cipher/key size gets
//! hash `(l + k) mod 5`. The hash and the sector size act on different parts (keyslots and
//! digest vs. the data path), so this covers every pair that interacts at a fifth of the
//! full product's cost. Guest (70 volumes each way; a guest-made volume costs about a second
//! of TCG time): every cipher/mode family in every layout, with its key sizes and the five
//! hashes taking turns, so every family meets every key size, hash and layout. Each test
//! boots the guest once; the two run side by side.
//!
//! Needs (Debian): cryptsetup-bin openssl linux-image-amd64 qemu-system-x86 busybox-static
//! cpio kmod xz-utils; scripts/test installs them. A missing one fails the test.

mod common;
#[path = "common/guest.rs"]
mod guest;
#[path = "common/oracle.rs"]
mod oracle;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;
use oracle::KernelOracle;
use sha2::Digest;

/// Every volume file is this large and sits at a multiple of it on the transfer disks.
const SLOT: u64 = 4 << 20;
/// Plaintext bytes written into and checked in every volume.
const PLAIN_LEN: usize = 256 << 10;
const HASHES: [&str; 5] = ["sha256", "sha1", "sha512", "ripemd160", "whirlpool"];
/// (LUKS1?, sector size).
const LAYOUTS: [(bool, u32); 5] = [
    (true, 512),
    (false, 512),
    (false, 1024),
    (false, 2048),
    (false, 4096),
];
const XTS: [u32; 3] = [256, 384, 512];
const CBC: [u32; 3] = [128, 192, 256];
/// Modules the guest needs for these ciphers, hashes and cryptsetup's AF_ALG keyslot
/// encryption.
const MODULES: &[&str] = &[
    "serpent_generic",
    "twofish_generic",
    "adiantum",
    "chacha_generic",
    "nhpoly1305",
    "poly1305_generic",
    "essiv",
    "cbc",
    "sha512_generic",
    "rmd160",
    "wp512",
    "af_alg",
    "algif_skcipher",
];

#[derive(Clone, Debug)]
struct Combo {
    spec: String,
    bits: u32,
    hash: &'static str,
    luks1: bool,
    sector: u32,
}

impl Combo {
    fn name(&self) -> String {
        format!(
            "{} {} {}-bit {} {}",
            if self.luks1 { "luks1" } else { "luks2" },
            self.sector,
            self.bits,
            self.spec,
            self.hash
        )
    }

    /// `cryptsetup luksFormat` options (PBKDF2 at 1000 iterations: the KDF is not what is
    /// tested, and the guest is slow).
    fn cryptsetup_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "luksFormat".into(),
            "--batch-mode".into(),
            "--type".into(),
            if self.luks1 { "luks1" } else { "luks2" }.into(),
            "--cipher".into(),
            self.spec.clone(),
            "--key-size".into(),
            self.bits.to_string(),
            "--hash".into(),
            self.hash.into(),
            "--pbkdf-force-iterations".into(),
            "1000".into(),
        ];
        if !self.luks1 {
            a.extend(
                [
                    "--pbkdf",
                    "pbkdf2",
                    "--sector-size",
                    &self.sector.to_string(),
                    "--luks2-metadata-size",
                    "16k",
                    "--luks2-keyslots-size",
                    "1m",
                ]
                .map(String::from),
            );
        }
        a
    }

    /// `sealvol format` options for the same combination.
    fn sealvol_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "format".into(),
            "--batch-mode".into(),
            "--type".into(),
            if self.luks1 { "luks1" } else { "luks2" }.into(),
            "--cipher".into(),
            self.spec.clone(),
            "--key-size".into(),
            self.bits.to_string(),
            "--hash".into(),
            self.hash.into(),
            "--pbkdf".into(),
            "pbkdf2".into(),
            "--pbkdf-force-iterations".into(),
            "1000".into(),
        ];
        if !self.luks1 {
            a.extend(
                [
                    "--sector-size",
                    &self.sector.to_string(),
                    "--luks2-metadata-size",
                    "16384",
                    "--luks2-keyslots-size",
                    "1048576",
                ]
                .map(String::from),
            );
        }
        a
    }
}

/// The Latin square over `ciphers` (spec, key sizes): each cipher/key size in every layout,
/// the hash rotating so that it meets every hash too.
fn matrix(ciphers: &[(&str, &[u32])]) -> Vec<Combo> {
    let mut out = Vec::new();
    let mut k = 0;
    for (spec, sizes) in ciphers {
        for &bits in *sizes {
            for (l, &(luks1, sector)) in LAYOUTS.iter().enumerate() {
                out.push(Combo {
                    spec: spec.to_string(),
                    bits,
                    hash: HASHES[(l + k) % HASHES.len()],
                    luks1,
                    sector,
                });
            }
            k += 1;
        }
    }
    out
}

/// The smaller design of the guest-made matrix (each volume there costs about a second of
/// TCG time): every cipher/mode family in every layout, its key sizes taking turns
/// (`layout mod sizes`) and the hash rotating with the family, so every family meets every
/// key size, every hash and every layout.
fn covering(ciphers: &[(&str, &[u32])]) -> Vec<Combo> {
    let mut out = Vec::new();
    for (f, (spec, sizes)) in ciphers.iter().enumerate() {
        for (l, &(luks1, sector)) in LAYOUTS.iter().enumerate() {
            out.push(Combo {
                spec: spec.to_string(),
                bits: sizes[l % sizes.len()],
                hash: HASHES[(l + f) % HASHES.len()],
                luks1,
                sector,
            });
        }
    }
    out
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The data segment's offset in bytes, as cryptsetup wrote it.
fn data_offset(c: &Combo, vol: &Path) -> u64 {
    if c.luks1 {
        let b = read_at(vol, 104, 4);
        u64::from(u32::from_be_bytes(b.try_into().unwrap())) * 512
    } else {
        let meta = luks_json(vol);
        let off = &meta["segments"]["0"]["offset"];
        off.as_str().unwrap().parse().unwrap()
    }
}

/// `openssl enc` with no padding.
fn openssl_enc(args: &[&str], key: &[u8], iv: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let k = hex::encode(key);
    let mut a: Vec<String> = vec!["enc".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    a.extend(["-nopad".into(), "-K".into(), k]);
    if let Some(iv) = iv {
        a.extend(["-iv".into(), hex::encode(iv)]);
    }
    let r = run(need("openssl"), &a, Some(data)).ok();
    assert_eq!(r.stdout.len(), data.len(), "openssl {a:?}");
    r.stdout
}

/// OpenSSL's decryption of one AES sector of `c` with volume key `vk` and 512-byte-unit IV
/// `n`: CBC straight from `openssl enc -d -aes-N-cbc` (the IV plain/plain64, or ESSIV:
/// `openssl enc -aes-256-ecb` of plain64 keyed by `openssl dgst -sha256` of the key); XTS
/// composed from `openssl enc -aes-N-ecb` (`common::openssl_xts`).
fn openssl_decrypt_sector(c: &Combo, vk: &[u8], n: u64, ct: &[u8]) -> Vec<u8> {
    if c.spec.starts_with("aes-xts-") {
        let n = if c.spec.ends_with("-plain") {
            n & 0xffff_ffff
        } else {
            n
        };
        return openssl_xts(true, vk, &[(n, ct.to_vec())]).remove(0);
    }
    let mut iv = [0u8; 16];
    if c.spec.ends_with("-plain") {
        iv[..4].copy_from_slice(&(n as u32).to_le_bytes());
    } else {
        iv[..8].copy_from_slice(&n.to_le_bytes());
    }
    if c.spec.contains("essiv:sha256") {
        let salt = run(need("openssl"), ["dgst", "-sha256", "-binary"], Some(vk))
            .ok()
            .stdout;
        iv = openssl_enc(&["-e", "-aes-256-ecb"], &salt, None, &iv)
            .try_into()
            .unwrap();
    }
    let cipher = format!("-aes-{}-cbc", vk.len() * 8);
    openssl_enc(&["-d", &cipher], vk, Some(&iv), ct)
}

/// Copies `file` (at most `SLOT` bytes) into `disk` at slot `i`.
fn put_slot(disk: &Path, i: usize, file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    assert!(bytes.len() as u64 <= SLOT);
    write_at(disk, i as u64 * SLOT, &bytes);
}

/// Guest script lines that open the LUKS volume in slot `i` of `dev` (copied to a file in
/// tmpfs) with dm-crypt and print `SV-READ <tag> <sha256 of the first PLAIN_LEN bytes>`.
fn guest_read(dev: &str, i: usize, tag: &str) -> String {
    format!(
        "dd if={dev} of=/tmp/r.img bs=1M skip={skip} count=4 2>/dev/null\n\
         if cryptsetup open --key-file /in/key /tmp/r.img r; then \
           echo \"SV-READ {tag} $(head -c {PLAIN_LEN} /dev/mapper/r | sha256sum | cut -d' ' -f1)\"; \
           cryptsetup close r; \
         else echo \"SV-READ {tag} open-failed\"; fi\n\
         rm -f /tmp/r.img\n",
        skip = i as u64 * (SLOT >> 20),
    )
}

/// A kernel oracle with the cipher modules, the key in `/in/key`, and OpenSSL's legacy
/// provider (cryptsetup's OpenSSL backend loads whirlpool from it at run time; the oracle
/// copies only what `ldd` lists); and the script lines that install the provider.
fn guest(key: &Path) -> (KernelOracle, String) {
    let mut oracle = KernelOracle::new();
    oracle.modules(MODULES);
    oracle.file(key);
    let legacy = Path::new("/usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so");
    assert!(
        legacy.exists(),
        "{} is missing: apt-get install -y libssl3",
        legacy.display()
    );
    oracle.file(legacy);
    let script = "mkdir -p /usr/lib/x86_64-linux-gnu/ossl-modules\n\
                  cp /in/legacy.so /usr/lib/x86_64-linux-gnu/ossl-modules/\n"
        .to_string();
    (oracle, script)
}

/// The hashes the guest printed, by tag.
fn guest_reads(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("SV-READ "))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(t, h)| (t.to_string(), h.to_string()))
        .collect()
}

/// sealvol formats `c` in a fresh SLOT-sized file and imports random plaintext; cryptsetup on
/// the host must accept the header (`luksDump` names the cipher; `open --test-passphrase`
/// when `host_can_open`). Returns the file and the plaintext's sha256.
fn sealvol_volume(
    dir: &Path,
    tag: &str,
    c: &Combo,
    key: &Path,
    host_can_open: bool,
) -> (PathBuf, String) {
    let vol = dir.join(format!("{tag}.img"));
    sparse_file(&vol, SLOT);
    let mut args = c.sealvol_args();
    args.extend(["--key-file".into(), s(key), s(&vol)]);
    sv(&args).ok();
    let dump = cryptsetup([OsStr::new("luksDump"), vol.as_os_str()])
        .ok()
        .out();
    let (cipher, mode) = if c.spec.starts_with("xchacha") {
        let (a, b) = c.spec.split_once("-adiantum").unwrap();
        (a.to_string(), format!("adiantum{b}"))
    } else {
        let (a, b) = c.spec.split_once('-').unwrap();
        (a.to_string(), b.to_string())
    };
    if c.luks1 {
        assert!(
            dump.contains(&format!("Cipher name:   \t{cipher}"))
                && dump.contains(&format!("Cipher mode:   \t{mode}"))
                && dump.contains(&format!("Hash spec:     \t{}", c.hash)),
            "{}: cryptsetup luksDump of sealvol's header:\n{dump}",
            c.name()
        );
    } else {
        assert!(
            dump.contains(&format!("cipher: {}", c.spec))
                && dump.contains(&format!("sector: {} [bytes]", c.sector))
                && dump.contains(&format!("Hash:       {}", c.hash)),
            "{}: cryptsetup luksDump of sealvol's header:\n{dump}",
            c.name()
        );
    }
    if host_can_open {
        assert_cs_opens(key, None, &vol);
    }
    let plain = random_bytes(PLAIN_LEN);
    let src = dir.join(format!("{tag}.plain"));
    std::fs::write(&src, &plain).unwrap();
    sv(["import", "--key-file", &s(key), &s(&src), &s(&vol)]).ok();
    std::fs::remove_file(&src).unwrap();
    (vol, sha256_hex(&plain))
}

#[test]
fn cryptsetup_aes_matrix() {
    need("openssl");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    // AES-192-XTS (384 bits) needs the kernel crypto API for cryptsetup's keyslots: it is in
    // kernel_cipher_matrix.
    let combos = matrix(&[
        ("aes-xts-plain64", &[256, 512]),
        ("aes-xts-plain", &[256, 512]),
        ("aes-cbc-essiv:sha256", &CBC),
        ("aes-cbc-plain64", &CBC),
        ("aes-cbc-plain", &CBC),
    ]);
    assert_eq!(combos.len(), 13 * 5);

    let disk = d.join("disk.img");
    sparse_file(&disk, 2 * combos.len() as u64 * SLOT);
    let mut want = Vec::new();
    for (i, c) in combos.iter().enumerate() {
        // 1. cryptsetup formats; ciphertext of our choosing in the data area; sealvol's
        //    export is what openssl decrypts under the volume key cryptsetup dumps.
        let a = d.join(format!("a{i}.img"));
        sparse_file(&a, SLOT);
        let mut args = c.cryptsetup_args();
        args.extend(["--key-file".into(), s(&key), s(&a)]);
        cryptsetup(&args).ok();
        let off = data_offset(c, &a);
        let ct = random_bytes(PLAIN_LEN);
        write_at(&a, off, &ct);
        let vk = dump_volume_key(&a, &key);
        assert_eq!(vk.len() as u32 * 8, c.bits, "{}", c.name());
        let out = d.join("export.bin");
        sv(["export", "--key-file", &s(&key), &s(&a), &s(&out)]).ok();
        let plain = std::fs::read(&out).unwrap();
        assert_eq!(
            plain.len() as u64,
            SLOT - off,
            "{}: export length",
            c.name()
        );
        let ss = c.sector as usize;
        let last = PLAIN_LEN / ss - 1;
        for sector in [0, 1, last] {
            let at = sector * ss;
            let n = (at / 512) as u64;
            let expect = openssl_decrypt_sector(c, &vk, n, &ct[at..at + ss]);
            assert!(
                plain[at..at + ss] == expect[..],
                "{}: sector {sector}: sealvol's export differs from openssl's decryption",
                c.name()
            );
        }
        // 2. sealvol writes into cryptsetup's volume; the kernel reads it below.
        let q = random_bytes(PLAIN_LEN);
        let src = d.join("q.bin");
        std::fs::write(&src, &q).unwrap();
        sv(["import", "--key-file", &s(&key), &s(&src), &s(&a)]).ok();
        assert_cs_opens(&key, None, &a);
        put_slot(&disk, 2 * i, &a);
        want.push((
            format!("a{i}"),
            sha256_hex(&q),
            c.name() + " (cryptsetup-formatted)",
        ));
        std::fs::remove_file(&a).unwrap();

        // 3. sealvol formats: cryptsetup accepts it; the kernel reads what sealvol imported.
        let (b, hash) = sealvol_volume(d, &format!("b{i}"), c, &key, true);
        put_slot(&disk, 2 * i + 1, &b);
        want.push((format!("b{i}"), hash, c.name() + " (sealvol-formatted)"));
        std::fs::remove_file(&b).unwrap();
    }

    let (mut oracle, mut script) = guest(&key);
    let dev = oracle.ro_disk(&disk);
    for i in 0..combos.len() {
        script.push_str(&guest_read(&dev, 2 * i, &format!("a{i}")));
        script.push_str(&guest_read(&dev, 2 * i + 1, &format!("b{i}")));
    }
    let run = oracle.run(&script);
    let got = guest_reads(run.ok());
    for (tag, hash, name) in &want {
        assert_eq!(
            got.get(tag).map(String::as_str),
            Some(hash.as_str()),
            "{name}: the kernel's dm-crypt does not read what sealvol wrote\n{}",
            run.output
        );
    }
}

#[test]
fn kernel_cipher_matrix() {
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let mut ciphers: Vec<(&str, &[u32])> = Vec::new();
    for name in ["serpent", "twofish"] {
        for (mode, sizes) in [
            ("xts-plain64", &XTS[..]),
            ("xts-plain", &XTS[..]),
            ("cbc-essiv:sha256", &CBC[..]),
            ("cbc-plain64", &CBC[..]),
            ("cbc-plain", &CBC[..]),
        ] {
            let spec: &'static str = Box::leak(format!("{name}-{mode}").into_boxed_str());
            ciphers.push((spec, sizes));
        }
    }
    ciphers.push(("xchacha12,aes-adiantum-plain64", &[256]));
    ciphers.push(("xchacha20,aes-adiantum-plain64", &[256]));
    ciphers.push(("aes-xts-plain64", &[384]));
    ciphers.push(("aes-xts-plain", &[384]));
    let combos = covering(&ciphers);
    // 14 cipher/mode families, each in the 5 layouts.
    assert_eq!(combos.len(), 14 * 5);

    // The guest formats these (disk A, written there) and reads sealvol's (disk B).
    let made = d.join("made.img");
    sparse_file(&made, combos.len() as u64 * SLOT);
    let ours = d.join("ours.img");
    sparse_file(&ours, combos.len() as u64 * SLOT);
    let mut want = Vec::new();
    for (i, c) in combos.iter().enumerate() {
        let (b, hash) = sealvol_volume(d, &format!("b{i}"), c, &key, false);
        put_slot(&ours, i, &b);
        want.push((format!("b{i}"), hash, c.name()));
        std::fs::remove_file(&b).unwrap();
    }
    let plain = random_bytes(PLAIN_LEN);
    let plain_path = d.join("plain.bin");
    std::fs::write(&plain_path, &plain).unwrap();

    let (mut oracle, mut script) = guest(&key);
    oracle.file(&plain_path);
    let made_dev = oracle.disk(&made);
    let ours_dev = oracle.ro_disk(&ours);
    for (i, c) in combos.iter().enumerate() {
        let args = c.cryptsetup_args().join(" ");
        script.push_str(&format!(
            "truncate -s {SLOT} /tmp/m.img\n\
             if cryptsetup {args} --key-file /in/key /tmp/m.img && cryptsetup open --key-file /in/key /tmp/m.img m; then \
               dd if=/in/plain.bin of=/dev/mapper/m bs=64k conv=fsync 2>/dev/null; cryptsetup close m; \
               dd if=/tmp/m.img of={made_dev} bs=1M seek={seek} conv=notrunc 2>/dev/null; echo \"SV-MADE {i}\"; \
             else echo \"SV-MADE-FAILED {i}\"; fi\n\
             rm -f /tmp/m.img\n",
            seek = i as u64 * (SLOT >> 20),
        ));
        script.push_str(&guest_read(&ours_dev, i, &format!("b{i}")));
    }
    script.push_str("sync\n");
    let run = oracle
        .timeout(std::time::Duration::from_secs(900))
        .run(&script);
    let out = run.ok().to_string();

    // The kernel's dm-crypt reads every sealvol-formatted, sealvol-written volume.
    let got = guest_reads(&out);
    for (tag, hash, name) in &want {
        assert_eq!(
            got.get(tag).map(String::as_str),
            Some(hash.as_str()),
            "{name} (sealvol-formatted): the kernel's dm-crypt does not read what sealvol wrote\n{out}"
        );
    }
    // sealvol reads every volume cryptsetup made in the guest, as the kernel wrote it.
    let want_plain = sha256_hex(&plain);
    for (i, c) in combos.iter().enumerate() {
        assert!(
            out.lines().any(|l| l == format!("SV-MADE {i}")),
            "{}: cryptsetup in the guest could not make it\n{out}",
            c.name()
        );
        let a = d.join("a.img");
        std::fs::write(&a, read_at(&made, i as u64 * SLOT, SLOT as usize)).unwrap();
        let exported = d.join("a.out");
        sv(["export", "--key-file", &s(&key), &s(&a), &s(&exported)]).ok();
        let got = std::fs::read(&exported).unwrap();
        assert_eq!(
            sha256_hex(&got[..PLAIN_LEN]),
            want_plain,
            "{} (cryptsetup-formatted in the guest): sealvol does not read what dm-crypt wrote",
            c.name()
        );
    }
}
