//! Options of `verity format`, `verify`, `dump`, `sign`, `keygen`, `read` and `open`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    Open(super::export::VerityOpenArgs),
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
