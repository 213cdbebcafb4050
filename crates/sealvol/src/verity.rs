//! `sealvol verity …`: dm-verity hash trees and signed root hashes (issue 3).
//!
//! The verbs follow `veritysetup` (cryptsetup 2.6): `format DATA HASH` prints the root hash,
//! `verify DATA HASH ROOT` exits 0 when every block matches and 1 naming the first bad block;
//! `dump HASH` prints the superblock. On top: `sign`, `verify --signature`, `keygen`, and
//! `read` (verified reads of the image, what the kernel target would serve).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use sealvol_verity::{
    self as verity, Failure, HashAlgorithm, HashArea, HashType, Params, Report, Salt, Superblock,
    Uuid, VerityReader,
};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::output::Output;
use crate::CleanNo;

const EXAMPLES: &str = "\
Examples:
  mksquashfs rootfs/ image.sqfs
  sealvol verity format image.sqfs image.hash          # prints the root hash
  sealvol verity verify image.sqfs image.hash ROOT     # exit 0 ok, 1 corrupt, 2 error
  sealvol verity format image.sqfs image.sqfs --hash-offset 1073741824   # tree appended

  # Publisher: sign the root hash and the tree parameters; host: refuse unsigned changes.
  openssl genpkey -algorithm ed25519 -out signing.pem   # or: sealvol verity keygen signing.pem
  openssl pkey -in signing.pem -pubout -out signing.pub
  sealvol verity sign image.hash ROOT --private-key signing.pem --signature-out image.sig
  sealvol verity verify image.sqfs image.hash ROOT --signature image.sig --public-key signing.pub

The trees are dm-verity format 1 (or 0) with a veritysetup superblock: `veritysetup verify`
and the kernel's dm-verity accept them.";

/// dm-verity hash trees (like `veritysetup`), verified reads and signed root hashes.
#[derive(Debug, Subcommand)]
pub enum VerityCommand {
    /// Build the hash tree of DATA into HASH and print the root hash (`veritysetup format`).
    #[command(after_long_help = EXAMPLES)]
    Format(FormatArgs),
    /// Check every block of DATA against HASH and ROOT (`veritysetup verify`): exit 0 when it
    /// verifies, 1 naming the first bad block (every one with --all), 2 on errors. With
    /// --signature and --public-key, the root hash and parameters must be signed first.
    #[command(after_long_help = EXAMPLES)]
    Verify(VerifyArgs),
    /// Print the superblock of a hash device (`veritysetup dump`).
    Dump(DumpArgs),
    /// Sign the root hash together with the tree parameters (ed25519, detached).
    #[command(after_long_help = EXAMPLES)]
    Sign(SignArgs),
    /// Make an ed25519 key pair: PKCS#8 PEM private key (mode 0600) and SPKI PEM public key.
    Keygen(KeygenArgs),
    /// Copy DATA to OUTPUT through verified reads: fails on the first corrupt block, naming it.
    Read(ReadArgs),
    /// Mount IMAGE read-only through verified reads (FUSE → loop → mount); refuses when the
    /// signature or the root hash does not check out. Close with `sealvol close DIR`.
    Open(crate::open::VerityOpenArgs),
}

/// Where the tree lives and, without a superblock, what it is.
#[derive(Debug, Args, Clone)]
pub struct TreeArgs {
    /// Hash algorithm: sha256, sha512, sha384, sha1 (default sha256).
    #[arg(long = "hash", value_name = "ALG")]
    pub hash: Option<String>,
    /// Hash type: 1 (normal, default) or 0 (Chrome OS).
    #[arg(long = "format", value_name = "0|1")]
    pub format: Option<u32>,
    /// Data block size in bytes (power of two, 512..524288; default 4096).
    #[arg(long, value_name = "BYTES")]
    pub data_block_size: Option<u32>,
    /// Hash block size in bytes (power of two, 512..524288; default 4096).
    #[arg(long, value_name = "BYTES")]
    pub hash_block_size: Option<u32>,
    /// Number of data blocks to protect (default: all whole blocks of DATA).
    #[arg(long, value_name = "N")]
    pub data_blocks: Option<u64>,
    /// Salt in hex; `-` for none (format's default: 32 random bytes).
    #[arg(long, value_name = "HEX")]
    pub salt: Option<String>,
    /// Byte offset of the hash area on HASH (a multiple of 512); with HASH = DATA the tree is
    /// appended to the data.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub hash_offset: u64,
    /// No superblock: the parameters are not stored and must be given every time.
    #[arg(long)]
    pub no_superblock: bool,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The data device or image file (read only).
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// Where the tree goes (created if missing); may be DATA itself with --hash-offset.
    #[arg(value_name = "HASH")]
    pub hash_device: PathBuf,
    #[command(flatten)]
    pub tree: TreeArgs,
    /// UUID for the superblock (default: random).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Also write the root hash (hex) to FILE.
    #[arg(long, value_name = "FILE")]
    pub root_hash_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The data device or image file.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// The hash device (may be DATA itself with --hash-offset).
    #[arg(value_name = "HASH")]
    pub hash_device: PathBuf,
    /// The root hash in hex (or give --root-hash-file).
    #[arg(value_name = "ROOT", required_unless_present = "root_hash_file")]
    pub root: Option<String>,
    #[command(flatten)]
    pub tree: TreeArgs,
    /// Read the root hash (hex) from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "root")]
    pub root_hash_file: Option<PathBuf>,
    /// Report every corrupt block, not just the first.
    #[arg(long)]
    pub all: bool,
    /// Detached signature over the root hash and parameters (64 raw bytes).
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub signature: Option<PathBuf>,
    /// The signer's ed25519 public key (SPKI PEM or DER, or 32 raw bytes).
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub public_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The hash device.
    #[arg(value_name = "HASH")]
    pub hash_device: PathBuf,
    /// Byte offset of the superblock on HASH.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub hash_offset: u64,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The hash device whose superblock holds the parameters (or give them with
    /// --no-superblock and the tree options).
    #[arg(value_name = "HASH")]
    pub hash_device: PathBuf,
    /// The root hash in hex (or give --root-hash-file).
    #[arg(value_name = "ROOT", required_unless_present = "root_hash_file")]
    pub root: Option<String>,
    #[command(flatten)]
    pub tree: TreeArgs,
    /// Read the root hash (hex) from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "root")]
    pub root_hash_file: Option<PathBuf>,
    /// The ed25519 private key: PKCS#8 PEM or DER (`openssl genpkey -algorithm ed25519`), or a
    /// raw 32-byte seed.
    #[arg(long, value_name = "FILE")]
    pub private_key: PathBuf,
    /// Where to write the signature (64 raw bytes, as `openssl pkeyutl -sign` writes).
    #[arg(long, value_name = "FILE")]
    pub signature_out: PathBuf,
    /// Also write the exact signed message (for `openssl pkeyutl -verify -rawin`).
    #[arg(long, value_name = "FILE")]
    pub message_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Private key file to create (PKCS#8 PEM, mode 0600; refuses to overwrite).
    #[arg(value_name = "PRIVATE")]
    pub private_key: PathBuf,
    /// Public key file (SPKI PEM; default PRIVATE with `.pub` appended).
    #[arg(long, value_name = "FILE")]
    pub public_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The data device or image file.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// The hash device.
    #[arg(value_name = "HASH")]
    pub hash_device: PathBuf,
    /// The root hash in hex.
    #[arg(value_name = "ROOT")]
    pub root: String,
    /// Where the verified bytes go (`-` for stdout).
    #[arg(value_name = "OUTPUT")]
    pub output: PathBuf,
    #[command(flatten)]
    pub tree: TreeArgs,
}

pub fn run(command: VerityCommand, out: &Output) -> Result<()> {
    match command {
        VerityCommand::Format(a) => format(a, out),
        VerityCommand::Verify(a) => verify(a, out),
        VerityCommand::Dump(a) => dump(a, out),
        VerityCommand::Sign(a) => sign(a, out),
        VerityCommand::Keygen(a) => keygen(a, out),
        VerityCommand::Read(a) => read(a, out),
        VerityCommand::Open(a) => crate::open::verity_open(a, out),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn open_read(path: &Path) -> Result<File> {
    File::open(path).with_context(|| match std::fs::metadata(path) {
        Err(_) => format!("{} does not exist; check the path", path.display()),
        Ok(_) => format!("cannot open {}", path.display()),
    })
}

/// Size of a file or block device (a block device's metadata length is 0).
fn device_size(file: &mut File, path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let len = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("cannot measure {}", path.display()))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// Whether two paths name the same file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn area(tree: &TreeArgs) -> HashArea {
    HashArea {
        offset: tree.hash_offset,
        superblock: !tree.no_superblock,
    }
}

fn algorithm(tree: &TreeArgs) -> Result<HashAlgorithm> {
    Ok(HashAlgorithm::from_name(
        tree.hash.as_deref().unwrap_or("sha256"),
    )?)
}

/// Parameters given on the command line (no superblock, or format).
fn params_from_args(tree: &TreeArgs, data_blocks: u64, salt: Salt) -> Result<Params> {
    Ok(Params::new(
        HashType::from_number(tree.format.unwrap_or(1))?,
        algorithm(tree)?,
        tree.data_block_size.unwrap_or(4096),
        tree.hash_block_size.unwrap_or(4096),
        data_blocks,
        salt,
    )?)
}

/// The tree parameters for verify/sign/read: from the superblock, or from the options with
/// --no-superblock. Options that contradict a superblock are refused.
fn load_params(
    hash_path: &Path,
    hash: &mut File,
    data_size: Option<u64>,
    tree: &TreeArgs,
) -> Result<(Params, Option<Uuid>)> {
    if tree.no_superblock {
        let dbs = u64::from(tree.data_block_size.unwrap_or(4096));
        let blocks = match (tree.data_blocks, data_size) {
            (Some(n), _) => n,
            (None, Some(size)) => size / dbs,
            (None, None) => bail!(
                "without a superblock the parameters are not stored: give --data-blocks, and \
                 --hash, --format, --data-block-size, --hash-block-size and --salt as at format"
            ),
        };
        let salt = Salt::from_hex(tree.salt.as_deref().unwrap_or("-"))?;
        return Ok((params_from_args(tree, blocks, salt)?, None));
    }
    let sb = verity::read_superblock(hash, tree.hash_offset).with_context(|| {
        format!(
            "cannot read the verity superblock of {} at offset {}",
            hash_path.display(),
            tree.hash_offset
        )
    })?;
    check_against_superblock(&sb, tree)?;
    Ok((sb.params, Some(sb.uuid)))
}

fn check_against_superblock(sb: &Superblock, tree: &TreeArgs) -> Result<()> {
    let p = &sb.params;
    let mut mismatches = Vec::new();
    if let Some(h) = &tree.hash {
        if HashAlgorithm::from_name(h)? != p.algorithm() {
            mismatches.push(format!("--hash {h} (superblock: {})", p.algorithm()));
        }
    }
    let checks: [(&str, Option<u64>, u64); 4] = [
        (
            "--format",
            tree.format.map(u64::from),
            u64::from(p.hash_type().number()),
        ),
        (
            "--data-block-size",
            tree.data_block_size.map(u64::from),
            u64::from(p.data_block_size()),
        ),
        (
            "--hash-block-size",
            tree.hash_block_size.map(u64::from),
            u64::from(p.hash_block_size()),
        ),
        ("--data-blocks", tree.data_blocks, p.data_blocks()),
    ];
    for (name, given, stored) in checks {
        if let Some(g) = given {
            if g != stored {
                mismatches.push(format!("{name} {g} (superblock: {stored})"));
            }
        }
    }
    if let Some(s) = &tree.salt {
        if Salt::from_hex(s)? != *p.salt() {
            mismatches.push(format!("--salt {s} (superblock: {})", p.salt().to_hex()));
        }
    }
    if !mismatches.is_empty() {
        bail!(
            "options contradict the superblock: {}; drop them, or use --no-superblock",
            mismatches.join(", ")
        );
    }
    Ok(())
}

fn root_hash(params: &Params, root: Option<&str>, file: Option<&Path>) -> Result<Vec<u8>> {
    let text = match (root, file) {
        (Some(r), _) => r.to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the root hash file {}", f.display()))?,
        (None, None) => bail!("give the root hash (ROOT) or --root-hash-file"),
    };
    Ok(verity::parse_root_hash(params, &text)?)
}

/// veritysetup's format/dump listing.
fn header_lines(
    hash_path: &Path,
    params: &Params,
    uuid: Option<Uuid>,
    root: Option<&[u8]>,
    area: HashArea,
) -> Result<String> {
    let mut s = format!("VERITY header information for {}\n", hash_path.display());
    let uuid = uuid.map(|u| u.to_string()).unwrap_or_default();
    s += &format!("UUID:            \t{uuid}\n");
    s += &format!("Hash type:       \t{}\n", params.hash_type().number());
    s += &format!("Data blocks:     \t{}\n", params.data_blocks());
    s += &format!("Data block size: \t{}\n", params.data_block_size());
    s += &format!("Hash blocks:     \t{}\n", params.geometry().hash_blocks);
    s += &format!("Hash block size: \t{}\n", params.hash_block_size());
    s += &format!("Hash algorithm:  \t{}\n", params.algorithm());
    s += &format!("Salt:            \t{}\n", params.salt().to_hex());
    if let Some(r) = root {
        s += &format!("Root hash:      \t{}\n", hex::encode(r));
    }
    if area.offset == 0 {
        s += &format!("Hash device size: \t{} [bytes]\n", area.end(params)?);
    }
    Ok(s.trim_end().to_owned())
}

fn params_json(params: &Params, uuid: Option<Uuid>, area: HashArea) -> Result<Value> {
    Ok(json!({
        "uuid": uuid.map(|u| u.to_string()),
        "hash_type": params.hash_type().number(),
        "hash_algorithm": params.algorithm().name(),
        "data_blocks": params.data_blocks(),
        "data_block_size": params.data_block_size(),
        "hash_blocks": params.geometry().hash_blocks,
        "hash_block_size": params.hash_block_size(),
        "salt": params.salt().to_hex(),
        "superblock": area.superblock,
        "hash_offset": area.offset,
        "tree_offset": area.tree_offset(params.hash_block_size()),
        "hash_device_size": area.end(params)?,
    }))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow!("cannot get random bytes: {e}"))?;
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Verbs

fn format(a: FormatArgs, out: &Output) -> Result<()> {
    let area = area(&a.tree);
    area.check()?;
    let mut data = open_read(&a.data)?;
    let data_size = device_size(&mut data, &a.data)?;
    let dbs = a.tree.data_block_size.unwrap_or(4096);
    let data_blocks = match a.tree.data_blocks {
        Some(0) | None => data_size / u64::from(dbs),
        Some(n) => n,
    };
    let salt = match a.tree.salt.as_deref() {
        Some(s) => Salt::from_hex(s)?,
        None => Salt::new(random_bytes::<{ verity::DEFAULT_SALT_SIZE }>()?.to_vec())?,
    };
    let params = params_from_args(&a.tree, data_blocks, salt).with_context(|| {
        format!(
            "{} ({data_size} bytes) cannot be formatted with these options",
            a.data.display()
        )
    })?;
    if params.data_block_size() > 4096 {
        out.note(&format!(
            "warning: the kernel cannot activate a device whose data block size ({}) exceeds \
             the page size (4096)",
            params.data_block_size()
        ));
    }
    let uuid = if area.superblock {
        Some(match &a.uuid {
            Some(u) => Uuid::parse(u)?,
            None => Uuid::from_random_bytes(random_bytes()?),
        })
    } else {
        None
    };
    let same = a.hash_device.exists() && same_file(&a.data, &a.hash_device);
    if same {
        area.check_overlap(&params)?;
    }
    let mut hash = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&a.hash_device)
        .with_context(|| format!("cannot open {} for writing", a.hash_device.display()))?;
    let bar = out.progress(Some(params.data_size()), "verity format");
    let tree = verity::format(&data, &mut hash, &params, area, uuid, &mut |n| bar.inc(n))
        .with_context(|| format!("cannot build the hash tree of {}", a.data.display()))?;
    bar.finish_and_clear();
    hash.sync_all()
        .with_context(|| format!("cannot sync {}", a.hash_device.display()))?;
    let root_hex = hex::encode(tree.root());
    if let Some(f) = &a.root_hash_file {
        std::fs::write(f, &root_hex).with_context(|| format!("cannot write {}", f.display()))?;
    }
    let mut j = params_json(&params, uuid, area)?;
    j["root_hash"] = json!(root_hex);
    j["data"] = json!(a.data);
    j["hash_device"] = json!(a.hash_device);
    out.result(
        &header_lines(&a.hash_device, &params, uuid, Some(tree.root()), area)?,
        j,
    )?;
    Ok(())
}

fn failure_json(f: &Failure) -> Value {
    match *f {
        Failure::DataBlock { index, offset } => {
            json!({"kind": "data_block", "index": index, "offset": offset, "message": f.to_string()})
        }
        Failure::HashBlock {
            level,
            index,
            offset,
            top,
        } => json!({
            "kind": if top { "root_hash" } else { "hash_block" },
            "level": level, "index": index, "offset": offset, "message": f.to_string(),
        }),
    }
}

fn verify(a: VerifyArgs, out: &Output) -> Result<()> {
    let area = area(&a.tree);
    area.check()?;
    let mut data = open_read(&a.data)?;
    let data_size = device_size(&mut data, &a.data)?;
    let mut hash = open_read(&a.hash_device)?;
    let (params, uuid) = load_params(&a.hash_device, &mut hash, Some(data_size), &a.tree)?;
    let root = root_hash(&params, a.root.as_deref(), a.root_hash_file.as_deref())?;

    // The signature first: an unsigned tree is not worth hashing.
    let mut signer = None;
    if let (Some(sig_path), Some(key_path)) = (&a.signature, &a.public_key) {
        let key_bytes = std::fs::read(key_path)
            .with_context(|| format!("cannot read the public key {}", key_path.display()))?;
        let key = verity::VerifyingKey::from_key_file(&key_bytes)
            .with_context(|| format!("{} is not usable", key_path.display()))?;
        let sig = std::fs::read(sig_path)
            .with_context(|| format!("cannot read the signature {}", sig_path.display()))?;
        match key.verify(&params, &root, &sig) {
            Ok(()) => signer = Some(key.to_hex()),
            Err(e @ verity::Error::BadSignature) | Err(e @ verity::Error::SignatureLength(_)) => {
                let msg = format!("signature {} refused: {e}", sig_path.display());
                return clean_no(msg, json!({"signature": {"valid": false}}));
            }
            Err(e) => return Err(e.into()),
        }
    }

    let bar = out.progress(Some(params.data_size()), "verity verify");
    let report = verity::verify(&data, &mut hash, &params, area, &root, a.all, &mut |n| {
        bar.inc(n)
    })
    .with_context(|| format!("cannot verify {}", a.data.display()))?;
    bar.finish_and_clear();
    report_verification(&a, &params, uuid, area, &root, &report, signer, out)
}

#[allow(clippy::too_many_arguments)]
fn report_verification(
    a: &VerifyArgs,
    params: &Params,
    uuid: Option<Uuid>,
    area: HashArea,
    root: &[u8],
    report: &Report,
    signer: Option<String>,
    out: &Output,
) -> Result<()> {
    let mut j = params_json(params, uuid, area)?;
    j["ok"] = json!(report.is_ok());
    j["root_hash"] = json!(hex::encode(root));
    j["data_blocks_ok"] = json!(report.data_blocks_ok);
    j["data_blocks_unverifiable"] = json!(report.data_blocks_unverifiable);
    j["failures"] = report.failures.iter().map(failure_json).collect();
    if let Some((index, offset)) = report.first_bad_data_block() {
        j["first_bad_data_block"] = json!({"index": index, "offset": offset});
    }
    j["signature"] = match signer {
        Some(k) => json!({"valid": true, "public_key": k}),
        None => json!(null),
    };
    if report.is_ok() {
        let signed = if j["signature"].is_null() {
            String::new()
        } else {
            " (signature valid)".to_owned()
        };
        out.result(
            &format!(
                "Verification of {} succeeded: {} data blocks of {} bytes match root hash {}{signed}.",
                a.data.display(),
                params.data_blocks(),
                params.data_block_size(),
                hex::encode(root)
            ),
            j,
        )?;
        return Ok(());
    }
    if a.all && !out.json() {
        for f in &report.failures {
            out.note(&format!("verification failed: {f}"));
        }
    }
    let first = &report.failures[0];
    let more = if report.failures.len() > 1 {
        format!(" ({} corrupt blocks in all)", report.failures.len())
    } else {
        String::new()
    };
    let unverifiable = if report.data_blocks_unverifiable > 0 {
        format!(
            "; {} data blocks could not be checked below corrupt hash blocks",
            report.data_blocks_unverifiable
        )
    } else {
        String::new()
    };
    let msg = format!(
        "verification of {} failed: {first}{more}{unverifiable}",
        a.data.display()
    );
    clean_no(msg, j)
}

/// A clean "no" (exit 1) whose JSON error document carries `details` (`failures`, …) next
/// to the `ok`, `error` and `exit_code` fields every failed command prints.
fn clean_no(msg: String, details: Value) -> Result<()> {
    Err(anyhow!(crate::CleanNoWith {
        message: msg,
        details,
    }))
}

fn dump(a: DumpArgs, out: &Output) -> Result<()> {
    let mut hash = open_read(&a.hash_device)?;
    let sb = verity::read_superblock(&mut hash, a.hash_offset).with_context(|| {
        format!(
            "cannot read the verity superblock of {} at offset {}",
            a.hash_device.display(),
            a.hash_offset
        )
    })?;
    let area = HashArea::with_superblock(a.hash_offset);
    out.result(
        &header_lines(&a.hash_device, &sb.params, Some(sb.uuid), None, area)?,
        params_json(&sb.params, Some(sb.uuid), area)?,
    )?;
    Ok(())
}

fn sign(a: SignArgs, out: &Output) -> Result<()> {
    let mut hash = open_read(&a.hash_device)?;
    let (params, _) = load_params(&a.hash_device, &mut hash, None, &a.tree)?;
    let root = root_hash(&params, a.root.as_deref(), a.root_hash_file.as_deref())?;
    if verity::root_matches_tree(&mut hash, &params, area(&a.tree), &root)? == Some(false) {
        bail!(
            "root hash {} is not the root of the tree on {}: refusing to sign it (check the \
             root hash and --hash-offset)",
            hex::encode(&root),
            a.hash_device.display()
        );
    }
    let key_bytes = Zeroizing::new(
        std::fs::read(&a.private_key)
            .with_context(|| format!("cannot read the private key {}", a.private_key.display()))?,
    );
    let key = verity::SigningKey::from_key_file(&key_bytes)
        .with_context(|| format!("{} is not usable", a.private_key.display()))?;
    let sig = key.sign(&params, &root);
    std::fs::write(&a.signature_out, sig)
        .with_context(|| format!("cannot write {}", a.signature_out.display()))?;
    if let Some(m) = &a.message_out {
        std::fs::write(m, verity::signed_message(&params, &root))
            .with_context(|| format!("cannot write {}", m.display()))?;
    }
    let public = key.verifying_key().to_hex();
    out.result(
        &format!(
            "Signed root hash {} and its parameters with ed25519 key {public}: {}",
            hex::encode(&root),
            a.signature_out.display()
        ),
        json!({
            "root_hash": hex::encode(&root),
            "signature": a.signature_out,
            "public_key": public,
            "message": String::from_utf8_lossy(&verity::signed_message(&params, &root)),
        }),
    )?;
    Ok(())
}

fn create_new(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| match path.exists() {
            true => format!("{} exists: sealvol does not overwrite keys", path.display()),
            false => format!("cannot create {}", path.display()),
        })
}

fn keygen(a: KeygenArgs, out: &Output) -> Result<()> {
    let public_path = a.public_out.clone().unwrap_or_else(|| {
        let mut s = a.private_key.clone().into_os_string();
        s.push(".pub");
        PathBuf::from(s)
    });
    let seed = Zeroizing::new(random_bytes::<32>()?);
    let key = verity::SigningKey::from_seed(&seed);
    let pem = key.to_pkcs8_pem()?;
    let public = key.verifying_key();
    let public_pem = public.to_public_key_pem()?;
    if public_path.exists() {
        bail!(
            "{} exists: sealvol does not overwrite keys",
            public_path.display()
        );
    }
    let mut f = create_new(&a.private_key, 0o600)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    let mut p = create_new(&public_path, 0o644)?;
    p.write_all(public_pem.as_bytes())?;
    p.sync_all()?;
    out.result(
        &format!(
            "ed25519 key pair: private {} (PKCS#8 PEM, mode 0600), public {} (SPKI PEM), \
             public key {}",
            a.private_key.display(),
            public_path.display(),
            public.to_hex()
        ),
        json!({
            "private_key": a.private_key,
            "public_key_file": public_path,
            "public_key": public.to_hex(),
        }),
    )?;
    Ok(())
}

fn read(a: ReadArgs, out: &Output) -> Result<()> {
    let area = area(&a.tree);
    area.check()?;
    let mut data = open_read(&a.data)?;
    let data_size = device_size(&mut data, &a.data)?;
    let mut hash = open_read(&a.hash_device)?;
    let (params, _) = load_params(&a.hash_device, &mut hash, Some(data_size), &a.tree)?;
    let root = verity::parse_root_hash(&params, &a.root)?;
    let total = params.data_size();
    let mut reader = VerityReader::new(data, hash, params, area, &root)?;
    let to_stdout = a.output.as_os_str() == "-";
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(&a.output)
                .with_context(|| format!("cannot create {}", a.output.display()))?,
        )
    };
    let bar = out.progress(Some(total), "verity read");
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                bar.finish_and_clear();
                return Err(anyhow!(CleanNo(format!(
                    "verified read of {} stopped after {done} bytes: {e}",
                    a.data.display()
                ))));
            }
            Err(e) => return Err(e).context("cannot read the image"),
        };
        sink.write_all(&buf[..n])?;
        done += n as u64;
        bar.inc(n as u64);
    }
    sink.flush()?;
    bar.finish_and_clear();
    if !to_stdout {
        out.result(
            &format!("{done} verified bytes written to {}", a.output.display()),
            json!({"ok": true, "bytes": done, "output": a.output}),
        )?;
    }
    Ok(())
}
