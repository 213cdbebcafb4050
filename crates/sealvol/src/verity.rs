//! `sealvol verity …`: dm-verity hash trees and signed root hashes (issue 3).
//!
//! The verbs follow `veritysetup` (cryptsetup 2.6): `format DATA HASH` prints the root hash,
//! `verify DATA HASH ROOT` exits 0 when every block matches and 1 naming the first bad block;
//! `dump HASH` prints the superblock. On top: `sign`, `verify --signature`, `keygen`, and
//! `read` (verified reads of the image, what the kernel target would serve). The work is
//! `sealvol_host::verity_file`'s; here are the options and the printing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use sealvol_host::verity_file::{
    self as vf, FormatTree, ReadTo, ReadTree, Root, SignTree, SignatureCheck, TreeInfo,
    TreeOptions, Verification, VerifyTree,
};
use sealvol_verity::{HashAlgorithm, HashType, Salt, Uuid};
use serde_json::json;

use crate::output::{CleanNoWith, Output};

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

impl TreeArgs {
    /// The library's tree options.
    fn options(&self) -> Result<TreeOptions> {
        Ok(TreeOptions {
            algorithm: self
                .hash
                .as_deref()
                .map(HashAlgorithm::from_name)
                .transpose()?,
            hash_type: self.format.map(HashType::from_number).transpose()?,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            salt: self.salt.as_deref().map(Salt::from_hex).transpose()?,
            hash_offset: self.hash_offset,
            no_superblock: self.no_superblock,
        })
    }
}

/// ROOT, or else --root-hash-file.
fn root(root: Option<String>, file: Option<PathBuf>) -> Result<Root> {
    match (root, file) {
        (Some(r), _) => Ok(Root::Hex(r)),
        (None, Some(f)) => Ok(Root::File(f)),
        (None, None) => bail!("give the root hash (ROOT) or --root-hash-file"),
    }
}

/// veritysetup's format/dump listing.
fn header_lines(hash_path: &Path, t: &TreeInfo, root: Option<&str>) -> String {
    let mut s = format!("VERITY header information for {}\n", hash_path.display());
    s += &format!(
        "UUID:            \t{}\n",
        t.uuid.as_deref().unwrap_or_default()
    );
    s += &format!("Hash type:       \t{}\n", t.hash_type);
    s += &format!("Data blocks:     \t{}\n", t.data_blocks);
    s += &format!("Data block size: \t{}\n", t.data_block_size);
    s += &format!("Hash blocks:     \t{}\n", t.hash_blocks);
    s += &format!("Hash block size: \t{}\n", t.hash_block_size);
    s += &format!("Hash algorithm:  \t{}\n", t.hash_algorithm);
    s += &format!("Salt:            \t{}\n", t.salt);
    if let Some(r) = root {
        s += &format!("Root hash:      \t{r}\n");
    }
    if t.hash_offset == 0 {
        s += &format!("Hash device size: \t{} [bytes]\n", t.hash_device_size);
    }
    s.trim_end().to_owned()
}

pub fn format(a: FormatArgs, out: &Output) -> Result<()> {
    let req = FormatTree {
        tree: a.tree.options()?,
        uuid: a.uuid.as_deref().map(Uuid::parse).transpose()?,
        data: a.data,
        hash: a.hash_device,
        root_hash_file: a.root_hash_file,
    };
    let made = vf::format(&req, &mut out.bar("verity format"))?;
    if let Some(w) = &made.warning {
        out.note(&format!("warning: {w}"));
    }
    let human = header_lines(&made.hash_device, &made.tree, Some(&made.root_hash));
    Ok(out.result(&human, serde_json::to_value(&made)?)?)
}

pub fn verify(a: VerifyArgs, out: &Output) -> Result<()> {
    let req = VerifyTree {
        tree: a.tree.options()?,
        root: root(a.root, a.root_hash_file)?,
        signature: match (a.signature, a.public_key) {
            (Some(signature), Some(public_key)) => Some(SignatureCheck {
                signature,
                public_key,
            }),
            _ => None,
        },
        data: a.data,
        hash: a.hash_device,
        all: a.all,
    };
    let v = match vf::verify(&req, &mut out.bar("verity verify")) {
        Err(e @ sealvol_host::Error::SignatureRefused { .. }) => {
            let details = json!({"signature": {"valid": false}});
            return Err(clean_no(e.to_string(), details));
        }
        r => r?,
    };
    report_verification(&req.data, req.all, &v, out)
}

/// A clean "no" (exit 1) whose JSON error document carries `details` (`failures`, …) next
/// to the `ok`, `error` and `exit_code` fields every failed command prints.
fn clean_no(message: String, details: serde_json::Value) -> anyhow::Error {
    anyhow!(CleanNoWith { message, details })
}

fn report_verification(data: &Path, all: bool, v: &Verification, out: &Output) -> Result<()> {
    if v.ok {
        let signed = match v.signature {
            Some(_) => " (signature valid)",
            None => "",
        };
        let human = format!(
            "Verification of {} succeeded: {} data blocks of {} bytes match root hash {}{signed}.",
            data.display(),
            v.tree.data_blocks,
            v.tree.data_block_size,
            v.root_hash
        );
        return Ok(out.result(&human, serde_json::to_value(v)?)?);
    }
    if all && !out.json() {
        for f in &v.failures {
            out.note(&format!("verification failed: {}", f.message));
        }
    }
    let more = match v.failures.len() {
        1 => String::new(),
        n => format!(" ({n} corrupt blocks in all)"),
    };
    let unverifiable = match v.data_blocks_unverifiable {
        0 => String::new(),
        n => format!("; {n} data blocks could not be checked below corrupt hash blocks"),
    };
    let msg = format!(
        "verification of {} failed: {}{more}{unverifiable}",
        data.display(),
        v.failures[0].message
    );
    Err(clean_no(msg, serde_json::to_value(v)?))
}

pub fn dump(a: DumpArgs, out: &Output) -> Result<()> {
    let info = vf::dump(&a.hash_device, a.hash_offset)?;
    let human = header_lines(&a.hash_device, &info, None);
    Ok(out.result(&human, serde_json::to_value(&info)?)?)
}

pub fn sign(a: SignArgs, out: &Output) -> Result<()> {
    let req = SignTree {
        tree: a.tree.options()?,
        root: root(a.root, a.root_hash_file)?,
        hash: a.hash_device,
        private_key: a.private_key,
        signature_out: a.signature_out,
        message_out: a.message_out,
    };
    let s = vf::sign(&req)?;
    let human = format!(
        "Signed root hash {} and its parameters with ed25519 key {}: {}",
        s.root_hash,
        s.public_key,
        s.signature.display()
    );
    Ok(out.result(&human, serde_json::to_value(&s)?)?)
}

pub fn keygen(a: KeygenArgs, out: &Output) -> Result<()> {
    let k = vf::keygen(&a.private_key, a.public_out.as_deref())?;
    let human = format!(
        "ed25519 key pair: private {} (PKCS#8 PEM, mode 0600), public {} (SPKI PEM), \
         public key {}",
        k.private_key.display(),
        k.public_key_file.display(),
        k.public_key
    );
    Ok(out.result(&human, serde_json::to_value(&k)?)?)
}

pub fn read(a: ReadArgs, out: &Output) -> Result<()> {
    let req = ReadTree {
        tree: a.tree.options()?,
        root: Root::Hex(a.root),
        data: a.data,
        hash: a.hash_device,
    };
    let to_stdout = a.output.as_os_str() == "-";
    let mut stdout = std::io::stdout().lock();
    let to = match to_stdout {
        true => ReadTo::Stream(&mut stdout),
        false => ReadTo::File(&a.output),
    };
    let bytes = vf::read(&req, to, &mut out.bar("verity read"))?;
    drop(stdout);
    if !to_stdout {
        let human = format!("{bytes} verified bytes written to {}", a.output.display());
        let json = json!({"ok": true, "bytes": bytes, "output": a.output});
        out.result(&human, json)?;
    }
    Ok(())
}
