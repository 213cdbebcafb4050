//! Helpers shared by the integration tests: running the real `sealvol` binary and its peers
//! (`cryptsetup` 2.6, `openssl`), scratch directories, keys in files, and an XTS oracle.
//!
//! Test names carry the peer they need (`cryptsetup_…`, `openssl_…`); `cli_…` tests need only
//! the binary. A missing peer is a failure with an install hint, never a skip.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub mod daemon;

/// The binary under test.
pub const SEALVOL: &str = env!("CARGO_BIN_EXE_sealvol");

/// Finds `tool` on `PATH` (plus `/usr/sbin` and `/sbin`, where Debian puts cryptsetup).
///
/// # Panics
/// If the tool is missing, with the command that installs it: these tests are never skipped.
pub fn need(tool: &str) -> PathBuf {
    let hint = match tool {
        "cryptsetup" => "apt-get install -y cryptsetup-bin",
        "openssl" => "apt-get install -y openssl",
        "qemu-img" => "apt-get install -y qemu-utils",
        "veritysetup" => "apt-get install -y cryptsetup-bin",
        "mksquashfs" | "unsquashfs" => "apt-get install -y squashfs-tools",
        "qemu-system-x86_64" => "apt-get install -y qemu-system-x86",
        "mkfs.erofs" => "apt-get install -y erofs-utils",
        _ => "install it with apt-get",
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    for dir in std::env::split_paths(&path).chain(extra) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is required by this test but is not installed: run `{hint}` \
         (scripts/test installs it). Tests that need a peer tool are never skipped."
    );
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn context(&self) -> String {
        format!(
            "command: {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            self.out(),
            self.err()
        )
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success\n{}", self.context());
        self
    }

    /// Asserts a specific exit status.
    #[track_caller]
    pub fn code(self, expected: i32) -> Self {
        assert_eq!(
            self.code,
            expected,
            "unexpected exit code\n{}",
            self.context()
        );
        self
    }

    /// Asserts a non-zero exit status.
    #[track_caller]
    pub fn fails(self) -> Self {
        assert_ne!(self.code, 0, "expected failure\n{}", self.context());
        self
    }

    /// Parses stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.context()))
    }

    /// Asserts stderr mentions `needle` (case-insensitive).
    #[track_caller]
    pub fn stderr_mentions(self, needle: &str) -> Self {
        assert!(
            self.err().to_lowercase().contains(&needle.to_lowercase()),
            "stderr should mention {needle:?}\n{}",
            self.context()
        );
        self
    }
}

/// Runs `program` with `args`, feeding `stdin` (or /dev/null) and capturing both outputs.
pub fn run<I, S>(program: impl AsRef<OsStr>, args: I, stdin: Option<&[u8]>) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = program.as_ref();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmdline = std::iter::once(program)
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            // The child may legitimately stop reading early (e.g. on an error).
            let _ = pipe.write_all(&bytes);
        })
    });
    let output = child.wait_with_output().expect("wait for child");
    if let Some(w) = writer {
        w.join().expect("stdin writer");
    }
    Run {
        cmdline,
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: output.stderr,
    }
}

/// Runs `sealvol ARGS` with stdin from /dev/null.
pub fn sv<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(SEALVOL, args, None)
}

/// Runs `sealvol ARGS` with `stdin` on its standard input.
pub fn sv_stdin<I, S>(args: I, stdin: &[u8]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(SEALVOL, args, Some(stdin))
}

/// Runs `cryptsetup ARGS`.
pub fn cryptsetup<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(need("cryptsetup"), args, None)
}

/// A scratch directory, removed when dropped.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sealvol-it-")
        .tempdir()
        .expect("create temp dir")
}

/// `n` bytes from the kernel's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// A random 32-byte key as 64 hex characters (text, as qemu's LUKS driver wants it) in a
/// 0600 file `key` in `dir`; returns the file and the hex text.
pub fn hex_key(dir: &Path) -> (PathBuf, String) {
    let hex = hex::encode(random_bytes(32));
    (write_secret(dir, "key", hex.as_bytes()), hex)
}

/// Writes `bytes` to `dir/name` with mode 0600 and returns the path.
pub fn write_secret(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("create key file");
    f.write_all(bytes).expect("write key file");
    path
}

/// A fresh 32-byte random machine key in `dir/name`; returns (path, bytes).
pub fn machine_key(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let key = random_bytes(32);
    (write_secret(dir, name, &key), key)
}

/// Makes a sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) {
    fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .expect("create sparse file");
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).expect("open for read");
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {len} bytes at {offset} of {}: {e}", path.display()));
    buf
}

pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for write");
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Every byte of a file, for "nothing changed on disk" checks.
pub fn snapshot(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[track_caller]
pub fn assert_unchanged(path: &Path, before: &[u8], what: &str) {
    let after = snapshot(path);
    assert!(
        after.len() == before.len() && after == before,
        "{what} changed {} on disk (a failed command must change nothing)",
        path.display()
    );
}

/// Looks for `key` anywhere in a JSON tree (depth-first) and returns its value.
pub fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|child| find_key(child, key))),
        Value::Array(items) => items.iter().find_map(|child| find_key(child, key)),
        _ => None,
    }
}

/// A LUKS2 numeric field: JSON number or cryptsetup's string-encoded uint64.
pub fn json_u64(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().expect("u64"),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a uint64: {s:?}")),
        other => panic!("not a number: {other}"),
    }
}

/// cryptsetup's view of a header: `luksDump --dump-json-metadata` of the device holding it.
pub fn luks_json(header_device: &Path) -> Value {
    cryptsetup([
        OsStr::new("luksDump"),
        OsStr::new("--dump-json-metadata"),
        header_device.as_os_str(),
    ])
    .ok()
    .json()
}

/// The UUID cryptsetup reads from the binary header.
pub fn luks_uuid(header_device: &Path) -> String {
    let dump = cryptsetup([OsStr::new("luksDump"), header_device.as_os_str()]).ok();
    dump.out()
        .lines()
        .find_map(|l| l.strip_prefix("UUID:").map(|u| u.trim().to_owned()))
        .expect("UUID line in luksDump")
}

/// The data segment as cryptsetup describes it.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub offset: u64,
    pub sector_size: u64,
    pub iv_tweak: u64,
    /// `None` for a dynamic segment (to the end of the data device).
    pub size: Option<u64>,
}

pub fn segment(meta: &Value) -> Segment {
    let seg = &meta["segments"]["0"];
    assert_eq!(seg["type"], "crypt", "segment 0: {seg}");
    assert_eq!(seg["encryption"], "aes-xts-plain64", "segment 0: {seg}");
    Segment {
        offset: json_u64(&seg["offset"]),
        sector_size: json_u64(&seg["sector_size"]),
        iv_tweak: json_u64(&seg["iv_tweak"]),
        size: match &seg["size"] {
            Value::String(s) if s == "dynamic" => None,
            other => Some(json_u64(other)),
        },
    }
}

/// Rewrites the JSON metadata of both LUKS2 header copies on `device` with `edit` applied,
/// recomputing each copy's SHA-256 checksum (LUKS2 on-disk format §2: the checksum covers the
/// whole `hdr_size` bytes with its own 64-byte field at 448 zeroed). Written here from the
/// specification, independently of sealvol's encoder, so that tests can hand sealvol headers
/// that are valid for cryptsetup but hostile.
pub fn rewrite_luks2_json(device: &Path, edit: impl FnOnce(&mut Value)) {
    use sha2::Digest as _;
    let mut bytes = snapshot(device);
    let hdr_size = u64::from_be_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let json_area = &bytes[4096..hdr_size];
    let end = json_area
        .iter()
        .position(|&b| b == 0)
        .expect("NUL-terminated JSON");
    let mut meta: Value = serde_json::from_slice(&json_area[..end]).expect("LUKS2 JSON");
    edit(&mut meta);
    let text = serde_json::to_vec(&meta).unwrap();
    assert!(text.len() < hdr_size - 4096, "edited JSON does not fit");
    for copy in [0, hdr_size] {
        let h = &mut bytes[copy..copy + hdr_size];
        assert_eq!(&h[72..78], b"sha256", "checksum algorithm");
        h[4096..].fill(0);
        h[4096..4096 + text.len()].copy_from_slice(&text);
        h[448..512].fill(0);
        let sum = sha2::Sha256::digest(&*h);
        h[448..448 + 32].copy_from_slice(&sum);
    }
    write_at(device, 0, &bytes[..2 * hdr_size]);
}

/// Sets a field of LUKS1 key slot `slot` in the binary header of `device` (big-endian u32 at
/// `208 + 48 * slot + field`: 0 active, 4 iterations, 40 key material offset, 44 stripes), or
/// of the header itself when `slot` is `None` (`field` is then the byte offset: 104 payload
/// offset, 164 mk-digest-iter). LUKS1 headers carry no checksum.
pub fn set_luks1_u32(device: &Path, slot: Option<usize>, field: u64, value: u32) {
    let at = slot.map_or(field, |s| 208 + 48 * s as u64 + field);
    write_at(device, at, &value.to_be_bytes());
}

/// `cryptsetup luksDump --dump-volume-key`: the volume key as cryptsetup unlocks it.
pub fn dump_volume_key(header_device: &Path, key_file: &Path) -> Vec<u8> {
    let out = key_file.with_extension("vk");
    cryptsetup([
        OsStr::new("luksDump"),
        OsStr::new("--dump-volume-key"),
        OsStr::new("--batch-mode"),
        OsStr::new("--key-file"),
        key_file.as_os_str(),
        OsStr::new("--volume-key-file"),
        out.as_os_str(),
        header_device.as_os_str(),
    ])
    .ok();
    let vk = fs::read(&out).expect("volume key file");
    fs::remove_file(&out).unwrap();
    vk
}

/// `cryptsetup open --test-passphrase`; returns its exit code.
pub fn cs_test_passphrase(key_file: &Path, header: Option<&Path>, data: &Path) -> i32 {
    let mut args = vec![
        OsStr::new("open"),
        OsStr::new("--test-passphrase"),
        OsStr::new("--key-file"),
        key_file.as_os_str(),
    ];
    if let Some(h) = header {
        args.push(OsStr::new("--header"));
        args.push(h.as_os_str());
    }
    args.push(data.as_os_str());
    cryptsetup(args).code
}

#[track_caller]
pub fn assert_cs_opens(key_file: &Path, header: Option<&Path>, data: &Path) {
    let code = cs_test_passphrase(key_file, header, data);
    assert_eq!(
        code,
        0,
        "cryptsetup open --test-passphrase should accept {}",
        key_file.display()
    );
}

#[track_caller]
pub fn assert_cs_refuses(key_file: &Path, header: Option<&Path>, data: &Path) {
    let code = cs_test_passphrase(key_file, header, data);
    assert_ne!(
        code,
        0,
        "cryptsetup open --test-passphrase should refuse {}",
        key_file.display()
    );
}

/// `openssl enc` in ECB mode, no padding: the AES oracle.
fn openssl_ecb(decrypt: bool, key: &[u8], data: &[u8]) -> Vec<u8> {
    let cipher = match key.len() {
        16 => "-aes-128-ecb",
        32 => "-aes-256-ecb",
        n => panic!("AES key of {n} bytes"),
    };
    let hexkey = hex::encode(key);
    let dir = if decrypt { "-d" } else { "-e" };
    let r = run(
        need("openssl"),
        ["enc", dir, cipher, "-nopad", "-K", hexkey.as_str()],
        Some(data),
    );
    assert_eq!(r.code, 0, "openssl enc failed: {}", r.err());
    assert_eq!(r.stdout.len(), data.len(), "openssl enc output length");
    r.stdout
}

/// Multiplies an XTS tweak by α in GF(2^128) (IEEE 1619 §5.2, little-endian byte order).
fn xts_double(t: &mut [u8; 16]) {
    let carry = t[15] >> 7;
    for i in (1..16).rev() {
        t[i] = (t[i] << 1) | (t[i - 1] >> 7);
    }
    t[0] <<= 1;
    if carry == 1 {
        t[0] ^= 0x87;
    }
}

/// XTS-AES (IEEE 1619) over whole data units `(iv, bytes)`, with every AES operation done by
/// the `openssl` binary.
///
/// OpenSSL 3's `openssl enc` refuses XTS ("enc XTS ciphers not supported"), so the mode is
/// composed here from `openssl enc -aes-*-ecb`: the tweak is `AES-enc(K2, LE128(iv))`, each
/// block is `AES(K1, P ⊕ T) ⊕ T`, and `T` is doubled per block. dm-crypt's aes-xts-plain64
/// uses key = K1 ‖ K2 and the IV = little-endian 512-byte-sector number + iv_tweak, one data
/// unit per (512..4096-byte) sector. `openssl_xts_oracle_matches_ieee1619_vector_10` pins this
/// composition to the standard's test vector.
pub fn openssl_xts(decrypt: bool, key: &[u8], units: &[(u64, Vec<u8>)]) -> Vec<Vec<u8>> {
    assert!(
        key.len() == 32 || key.len() == 64,
        "XTS key of {} bytes",
        key.len()
    );
    let (k1, k2) = key.split_at(key.len() / 2);
    let mut ivs = Vec::with_capacity(16 * units.len());
    for (iv, _) in units {
        ivs.extend_from_slice(&iv.to_le_bytes());
        ivs.extend_from_slice(&[0u8; 8]);
    }
    let tweaks0 = openssl_ecb(false, k2, &ivs);
    let mut all_tweaks = Vec::new();
    let mut masked = Vec::new();
    for (i, (_, data)) in units.iter().enumerate() {
        assert!(
            data.len() % 16 == 0 && !data.is_empty(),
            "data unit of {} bytes",
            data.len()
        );
        let mut t: [u8; 16] = tweaks0[16 * i..16 * i + 16].try_into().unwrap();
        for block in data.chunks(16) {
            all_tweaks.extend_from_slice(&t);
            masked.extend(block.iter().zip(t.iter()).map(|(b, t)| b ^ t));
            xts_double(&mut t);
        }
    }
    let crypted = openssl_ecb(decrypt, k1, &masked);
    let out: Vec<u8> = crypted
        .iter()
        .zip(all_tweaks.iter())
        .map(|(b, t)| b ^ t)
        .collect();
    let mut result = Vec::with_capacity(units.len());
    let mut at = 0;
    for (_, data) in units {
        result.push(out[at..at + data.len()].to_vec());
        at += data.len();
    }
    result
}

/// Where a data volume and its header live.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The file holding the data segment (VOLUME on the command line).
    pub data: PathBuf,
    /// The detached header, if any.
    pub header: Option<PathBuf>,
}

impl Layout {
    /// The file that holds the LUKS2 header.
    pub fn header_device(&self) -> &Path {
        self.header.as_deref().unwrap_or(&self.data)
    }

    /// `--header FILE` when detached, nothing otherwise.
    pub fn header_args(&self) -> Vec<PathBuf> {
        match &self.header {
            Some(h) => vec![PathBuf::from("--header"), h.clone()],
            None => vec![],
        }
    }

    /// `sealvol VERB [--header H] --key-file K EXTRA... VOLUME`
    pub fn sv_args(&self, verb: &[&str], key: &Path, extra: &[&OsStr]) -> Vec<PathBuf> {
        let mut a: Vec<PathBuf> = verb.iter().map(PathBuf::from).collect();
        a.extend(self.header_args());
        a.push("--key-file".into());
        a.push(key.to_path_buf());
        a.extend(extra.iter().map(PathBuf::from));
        a.push(self.data.clone());
        a
    }
}

/// The data check of the interop list, both directions:
///
/// 1. plaintext written with `sealvol import` decrypts, with the volume key cryptsetup dumps,
///    under the openssl XTS oracle for sampled sectors;
/// 2. sectors encrypted by the oracle and written into the file come back from `sealvol export`.
pub fn check_data_against_openssl(dir: &Path, layout: &Layout, key_file: &Path) {
    need("openssl");
    let meta = luks_json(layout.header_device());
    let seg = segment(&meta);
    if layout.header.is_some() {
        assert_eq!(
            seg.offset, 0,
            "a detached header's data segment starts at 0"
        );
    }
    let vk = dump_volume_key(layout.header_device(), key_file);
    assert!(
        vk.len() == 64 || vk.len() == 32,
        "volume key of {} bytes",
        vk.len()
    );
    let ss = seg.sector_size;
    let data_len = fs::metadata(&layout.data).unwrap().len();
    let seg_len = seg.size.unwrap_or(data_len - seg.offset);
    let iv_of = |sector: u64| sector * ss / 512 + seg.iv_tweak;

    // 1. sealvol import → openssl decrypt.
    let n_sectors = (64 * 1024 / ss).max(16);
    let plain = random_bytes((n_sectors * ss) as usize);
    let src = dir.join("import-src.bin");
    fs::write(&src, &plain).unwrap();
    let mut args = vec![OsStr::new("import")];
    let hdr = layout.header_args();
    args.extend(hdr.iter().map(|p| p.as_os_str()));
    args.extend([
        OsStr::new("--key-file"),
        key_file.as_os_str(),
        src.as_os_str(),
        layout.data.as_os_str(),
    ]);
    sv(&args).ok();
    let samples = [0, 1, n_sectors / 2, n_sectors - 1];
    let units: Vec<(u64, Vec<u8>)> = samples
        .iter()
        .map(|&s| {
            let ct = read_at(&layout.data, seg.offset + s * ss, ss as usize);
            let pt = &plain[(s * ss) as usize..((s + 1) * ss) as usize];
            assert_ne!(ct, pt, "sector {s} is stored in the clear");
            (iv_of(s), ct)
        })
        .collect();
    let decrypted = openssl_xts(true, &vk, &units);
    for (&s, got) in samples.iter().zip(&decrypted) {
        let want = &plain[(s * ss) as usize..((s + 1) * ss) as usize];
        assert!(
            got == want,
            "sector {s} ({ss}-byte sectors, iv {}) written by sealvol import does not decrypt \
             with cryptsetup's volume key under openssl XTS",
            iv_of(s)
        );
    }

    // 2. openssl encrypt → sealvol export.
    let total = seg_len / ss;
    assert!(
        total > n_sectors + 4,
        "segment too small for the test: {total} sectors"
    );
    let targets = [2, n_sectors + 1, total - 1];
    let new_plain: Vec<(u64, Vec<u8>)> = targets
        .iter()
        .map(|&s| (iv_of(s), random_bytes(ss as usize)))
        .collect();
    let encrypted = openssl_xts(false, &vk, &new_plain);
    for (&s, ct) in targets.iter().zip(&encrypted) {
        write_at(&layout.data, seg.offset + s * ss, ct);
    }
    let out = dir.join("export-out.bin");
    let mut args = vec![OsStr::new("export")];
    args.extend(hdr.iter().map(|p| p.as_os_str()));
    args.extend([
        OsStr::new("--key-file"),
        key_file.as_os_str(),
        layout.data.as_os_str(),
        out.as_os_str(),
    ]);
    sv(&args).ok();
    let exported = fs::read(&out).unwrap();
    assert_eq!(
        exported.len() as u64,
        seg_len,
        "export writes the whole data segment"
    );
    for (&s, (_, want)) in targets.iter().zip(&new_plain) {
        let got = &exported[(s * ss) as usize..((s + 1) * ss) as usize];
        assert!(
            got == want.as_slice(),
            "sector {s} encrypted by openssl XTS is not what sealvol export returns"
        );
    }
    // Untouched imported sectors still read back.
    assert!(
        exported[..ss as usize] == plain[..ss as usize],
        "sector 0 after export"
    );
    let last = n_sectors - 1;
    assert!(
        exported[(last * ss) as usize..((last + 1) * ss) as usize]
            == plain[(last * ss) as usize..((last + 1) * ss) as usize],
        "sector {last} after export"
    );
}
