//! dm-verity images on files: the `veritysetup` verbs over [`sealvol_verity`].
//!
//! [`format()`] builds the hash tree of a data file into a hash file (or appended to the data
//! file at a hash offset) and gives the root hash; [`verify`] checks every block, after the
//! signature when one is given, and reports what failed as data ([`Verification`]); [`dump`]
//! reads a superblock; [`sign`] signs a root hash with its parameters (ed25519); [`keygen`]
//! makes a key pair in new files (the private one mode 0600); [`read`] copies an image
//! through verified reads, as the kernel target would serve it.
//!
//! A refused signature is [`Error::SignatureRefused`] and a corrupt block met by [`read`] is
//! [`Error::CorruptData`]: clean "no"s ([`Error::is_clean_no`]). A corrupt block met by
//! [`verify`] is not an error: it is in the [`Verification`]'s failures.
//!
//! What it does not do: no tree format (that is `sealvol_verity`), no mounting or serving,
//! no printing.
//!
//! ```no_run
//! use sealvol_host::verity_file::{self, FormatTree, Root, VerifyTree};
//! let made = verity_file::format(&FormatTree::new("image.sqfs", "image.hash"), &mut |_| {})?;
//! let verify = VerifyTree::new("image.sqfs", "image.hash", Root::Hex(made.root_hash));
//! assert!(verity_file::verify(&verify, &mut |_| {})?.ok);
//! # Ok::<(), sealvol_host::Error>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sealvol_crypto::SecretBytes;
use sealvol_verity::{
    self as verity, Failure, HashAlgorithm, HashArea, HashType, Params, Salt, Superblock, Uuid,
    VerityReader,
};
use serde::Serialize;

use crate::luks_file::{Access, LuksFile};
use crate::progress::Progress;
use crate::{Error, Result};

/// What defines a tree, where it lives, and (without a superblock, or to check one) its
/// parameters: veritysetup's options. `None` means the superblock's value, or at format the
/// default (sha256, format 1, 4096-byte blocks, every whole data block, 32 random salt
/// bytes; without a superblock, no salt).
#[derive(Clone, Debug, Default)]
pub struct TreeOptions {
    /// `--hash`.
    pub algorithm: Option<HashAlgorithm>,
    /// `--format`.
    pub hash_type: Option<HashType>,
    /// `--data-block-size`.
    pub data_block_size: Option<u32>,
    /// `--hash-block-size`.
    pub hash_block_size: Option<u32>,
    /// `--data-blocks` (0 at format: every whole block).
    pub data_blocks: Option<u64>,
    /// `--salt`.
    pub salt: Option<Salt>,
    /// `--hash-offset`: byte offset of the hash area on the hash file (a multiple of 512).
    pub hash_offset: u64,
    /// `--no-superblock`: the parameters are not stored, and must be given every time.
    pub no_superblock: bool,
}

impl TreeOptions {
    fn area(&self) -> HashArea {
        HashArea {
            offset: self.hash_offset,
            superblock: !self.no_superblock,
        }
    }

    /// Parameters from the options alone (format, or no superblock).
    fn params(&self, data_blocks: u64, salt: Salt) -> verity::Result<Params> {
        Params::new(
            self.hash_type.unwrap_or(HashType::Normal),
            self.algorithm.unwrap_or(HashAlgorithm::Sha256),
            self.data_block_size.unwrap_or(4096),
            self.hash_block_size.unwrap_or(4096),
            data_blocks,
            salt,
        )
    }

    /// Refuses options that contradict the superblock.
    fn check_against(&self, sb: &Superblock) -> Result<()> {
        let p = &sb.params;
        let mut mismatches = Vec::new();
        if let Some(h) = self.algorithm.filter(|&h| h != p.algorithm()) {
            mismatches.push(format!("--hash {h} (superblock: {})", p.algorithm()));
        }
        let checks: [(&str, Option<u64>, u64); 4] = [
            (
                "--format",
                self.hash_type.map(|t| t.number().into()),
                p.hash_type().number().into(),
            ),
            (
                "--data-block-size",
                self.data_block_size.map(u64::from),
                p.data_block_size().into(),
            ),
            (
                "--hash-block-size",
                self.hash_block_size.map(u64::from),
                p.hash_block_size().into(),
            ),
            ("--data-blocks", self.data_blocks, p.data_blocks()),
        ];
        for (name, given, stored) in checks {
            if let Some(g) = given.filter(|&g| g != stored) {
                mismatches.push(format!("{name} {g} (superblock: {stored})"));
            }
        }
        if let Some(s) = self.salt.as_ref().filter(|&s| s != p.salt()) {
            mismatches.push(format!(
                "--salt {} (superblock: {})",
                s.to_hex(),
                p.salt().to_hex()
            ));
        }
        if mismatches.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "options contradict the superblock: {}; drop them, or use --no-superblock",
            mismatches.join(", ")
        )))
    }
}

/// A trusted root hash: given in hex, or read from a file holding it in hex.
#[derive(Clone, Debug)]
pub enum Root {
    /// The hex text.
    Hex(String),
    /// A file with the hex text (`--root-hash-file`).
    File(PathBuf),
}

impl Root {
    fn parse(&self, params: &Params) -> Result<Vec<u8>> {
        let text = match self {
            Root::Hex(h) => h.clone(),
            Root::File(f) => std::fs::read_to_string(f).map_err(|e| {
                Error::io(format!("cannot read the root hash file {}", f.display()), e)
            })?,
        };
        verity::parse_root_hash(params, &text).map_err(|e| Error::verity("the root hash", e))
    }
}

/// A tree's parameters and place. Serializes as `sealvol verity dump --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TreeInfo {
    /// The superblock's UUID (none without a superblock).
    pub uuid: Option<String>,
    /// 1 (normal) or 0 (Chrome OS).
    pub hash_type: u32,
    /// `sha256` ...
    pub hash_algorithm: &'static str,
    /// Data blocks protected.
    pub data_blocks: u64,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash blocks in the tree.
    pub hash_blocks: u64,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// The salt in hex (empty for none).
    pub salt: String,
    /// Whether a superblock sits at the hash offset.
    pub superblock: bool,
    /// Byte offset of the hash area on the hash file.
    pub hash_offset: u64,
    /// Byte offset of the tree on the hash file.
    pub tree_offset: u64,
    /// Byte offset just past the tree (veritysetup's "Hash device size").
    pub hash_device_size: u64,
}

impl TreeInfo {
    fn new(params: &Params, uuid: Option<Uuid>, area: HashArea) -> Result<Self> {
        Ok(TreeInfo {
            uuid: uuid.map(|u| u.to_string()),
            hash_type: params.hash_type().number(),
            hash_algorithm: params.algorithm().name(),
            data_blocks: params.data_blocks(),
            data_block_size: params.data_block_size(),
            hash_blocks: params.geometry().hash_blocks,
            hash_block_size: params.hash_block_size(),
            salt: params.salt().to_hex(),
            superblock: area.superblock,
            hash_offset: area.offset,
            tree_offset: area.tree_offset(params.hash_block_size()),
            hash_device_size: area
                .end(params)
                .map_err(|e| Error::verity("the hash area", e))?,
        })
    }
}

fn open_read(path: &Path) -> Result<File> {
    LuksFile::open_file(path, Access::Read)
}

/// Size of a file or block device (a block device's metadata length is 0).
fn device_size(file: &mut File, path: &Path) -> Result<u64> {
    let measure = |e| Error::io(format!("cannot measure {}", path.display()), e);
    let len = file.seek(SeekFrom::End(0)).map_err(measure)?;
    file.seek(SeekFrom::Start(0)).map_err(measure)?;
    Ok(len)
}

/// Whether two paths name the same file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    sealvol_crypto::random::fill_bulk(&mut b)?;
    Ok(b)
}

/// A progress callback of `sealvol_verity` (byte deltas) as running counts.
fn running(progress: &mut dyn Progress) -> impl FnMut(u64) + '_ {
    let mut done = 0;
    move |n| {
        done += n;
        progress.at(done);
    }
}

/// The parameters for verify, sign and read: the superblock's, checked against the
/// options, or with `no_superblock` the options' (the data size gives the block count).
fn load_params(
    hash_path: &Path,
    hash: &mut File,
    data_size: Option<u64>,
    tree: &TreeOptions,
) -> Result<(Params, Option<Uuid>)> {
    if tree.no_superblock {
        let dbs = u64::from(tree.data_block_size.unwrap_or(4096));
        let blocks = match (tree.data_blocks, data_size) {
            (Some(n), _) => n,
            (None, Some(size)) => size / dbs,
            (None, None) => {
                return Err(Error::Invalid(
                    "without a superblock the parameters are not stored: give --data-blocks, \
                     and --hash, --format, --data-block-size, --hash-block-size and --salt as \
                     at format"
                        .into(),
                ))
            }
        };
        let salt = tree.salt.clone().unwrap_or_default();
        let params = tree
            .params(blocks, salt)
            .map_err(|e| Error::verity("the tree options", e))?;
        return Ok((params, None));
    }
    let sb = read_superblock(hash_path, hash, tree.hash_offset)?;
    tree.check_against(&sb)?;
    Ok((sb.params, Some(sb.uuid)))
}

fn read_superblock(path: &Path, hash: &mut File, offset: u64) -> Result<Superblock> {
    verity::read_superblock(hash, offset).map_err(|e| {
        Error::verity(
            format!(
                "cannot read the verity superblock of {} at offset {offset}",
                path.display()
            ),
            e,
        )
    })
}

/// What [`format()`] builds.
#[derive(Clone, Debug)]
pub struct FormatTree {
    /// The data file or device (read only).
    pub data: PathBuf,
    /// Where the tree goes (created if missing); may be `data` itself with a hash offset.
    pub hash: PathBuf,
    /// The tree.
    pub tree: TreeOptions,
    /// The superblock's UUID (default random).
    pub uuid: Option<Uuid>,
    /// Also write the root hash (hex) to this file.
    pub root_hash_file: Option<PathBuf>,
}

impl FormatTree {
    /// The default tree of `data` into `hash`.
    pub fn new(data: impl Into<PathBuf>, hash: impl Into<PathBuf>) -> Self {
        FormatTree {
            data: data.into(),
            hash: hash.into(),
            tree: TreeOptions::default(),
            uuid: None,
            root_hash_file: None,
        }
    }
}

/// A tree built. Serializes as `sealvol verity format --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Formatted {
    /// The tree.
    #[serde(flatten)]
    pub tree: TreeInfo,
    /// The root hash in hex.
    pub root_hash: String,
    /// The data file.
    pub data: PathBuf,
    /// The hash file.
    pub hash_device: PathBuf,
    /// A data block size the kernel cannot activate (over the page size): what to say.
    #[serde(skip)]
    pub warning: Option<String>,
}

/// Builds the hash tree of `req.data` into `req.hash` (`veritysetup format`) and syncs it.
/// `progress` counts data bytes hashed.
///
/// # Errors
/// [`Error::Io`] for the files; [`Error::Verity`] for options the format refuses, or a tree
/// that would overlap the data in the same file.
pub fn format(req: &FormatTree, progress: &mut dyn Progress) -> Result<Formatted> {
    let area = req.tree.area();
    area.check()
        .map_err(|e| Error::verity("--hash-offset", e))?;
    let mut data = open_read(&req.data)?;
    let data_size = device_size(&mut data, &req.data)?;
    let dbs = req.tree.data_block_size.unwrap_or(4096);
    let data_blocks = match req.tree.data_blocks {
        Some(0) | None => data_size / u64::from(dbs),
        Some(n) => n,
    };
    let salt = match &req.tree.salt {
        Some(s) => s.clone(),
        None => Salt::new(random::<{ verity::DEFAULT_SALT_SIZE }>()?.to_vec())
            .map_err(|e| Error::verity("the salt", e))?,
    };
    let params = req.tree.params(data_blocks, salt).map_err(|e| {
        Error::verity(
            format!(
                "{} ({data_size} bytes) cannot be formatted with these options",
                req.data.display()
            ),
            e,
        )
    })?;
    let warning = (params.data_block_size() > 4096).then(|| {
        format!(
            "the kernel cannot activate a device whose data block size ({}) exceeds the page \
             size (4096)",
            params.data_block_size()
        )
    });
    let uuid = match (area.superblock, req.uuid) {
        (false, _) => None,
        (true, Some(u)) => Some(u),
        (true, None) => Some(Uuid::from_random_bytes(random()?)),
    };
    if req.hash.exists() && same_file(&req.data, &req.hash) {
        area.check_overlap(&params)
            .map_err(|e| Error::verity(format!("{}", req.hash.display()), e))?;
    }
    let mut hash = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&req.hash)
        .map_err(|e| Error::io(format!("cannot open {} for writing", req.hash.display()), e))?;
    progress.start(Some(params.data_size()));
    let tree = verity::format(
        &data,
        &mut hash,
        &params,
        area,
        uuid,
        &mut running(progress),
    )
    .map_err(|e| {
        Error::verity(
            format!("cannot build the hash tree of {}", req.data.display()),
            e,
        )
    })?;
    hash.sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", req.hash.display()), e))?;
    let root_hash = hex::encode(tree.root());
    if let Some(f) = &req.root_hash_file {
        std::fs::write(f, &root_hash)
            .map_err(|e| Error::io(format!("cannot write {}", f.display()), e))?;
    }
    Ok(Formatted {
        tree: TreeInfo::new(&params, uuid, area)?,
        root_hash,
        data: req.data.clone(),
        hash_device: req.hash.clone(),
        warning,
    })
}

/// A signature to check before anything is hashed.
#[derive(Clone, Debug)]
pub struct SignatureCheck {
    /// The detached signature (64 raw bytes).
    pub signature: PathBuf,
    /// The signer's ed25519 public key (SPKI PEM or DER, or 32 raw bytes).
    pub public_key: PathBuf,
}

/// What [`verify`] checks.
#[derive(Clone, Debug)]
pub struct VerifyTree {
    /// The data file or device.
    pub data: PathBuf,
    /// The hash file (may be `data` itself with a hash offset).
    pub hash: PathBuf,
    /// The trusted root hash.
    pub root: Root,
    /// The tree.
    pub tree: TreeOptions,
    /// Report every corrupt block, not just the first.
    pub all: bool,
    /// Check this signature over the root hash and parameters first.
    pub signature: Option<SignatureCheck>,
}

impl VerifyTree {
    /// Checks `data` against the tree with a superblock on `hash` and `root`.
    pub fn new(data: impl Into<PathBuf>, hash: impl Into<PathBuf>, root: Root) -> Self {
        VerifyTree {
            data: data.into(),
            hash: hash.into(),
            root,
            tree: TreeOptions::default(),
            all: false,
            signature: None,
        }
    }
}

/// A place where the image does not match its tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureInfo {
    /// `data_block`, `hash_block`, or `root_hash` (the top hash block: a wrong root hash or
    /// a corrupt tree).
    pub kind: &'static str,
    /// The tree level of a hash block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// Index of the block (in its level, for a hash block).
    pub index: u64,
    /// Byte offset on the data or hash file.
    pub offset: u64,
    /// What it means, in words.
    pub message: String,
}

impl From<&Failure> for FailureInfo {
    fn from(f: &Failure) -> Self {
        let message = f.to_string();
        match *f {
            Failure::DataBlock { index, offset } => FailureInfo {
                kind: "data_block",
                level: None,
                index,
                offset,
                message,
            },
            Failure::HashBlock {
                level,
                index,
                offset,
                top,
            } => FailureInfo {
                kind: if top { "root_hash" } else { "hash_block" },
                level: Some(level),
                index,
                offset,
                message,
            },
        }
    }
}

/// A data block, by index and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockAt {
    /// Index.
    pub index: u64,
    /// Byte offset on the data file.
    pub offset: u64,
}

/// A signature that verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignatureInfo {
    /// Always `true` (a refused one is [`Error::SignatureRefused`]).
    pub valid: bool,
    /// The signer's public key in hex.
    pub public_key: String,
}

/// What [`verify`] found. Serializes as `sealvol verity verify --json` prints it (on a
/// failure, as the details of its error document).
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// The tree.
    #[serde(flatten)]
    pub tree: TreeInfo,
    /// Every block verified.
    pub ok: bool,
    /// The root hash in hex.
    pub root_hash: String,
    /// Data blocks hashed and found good.
    pub data_blocks_ok: u64,
    /// Data blocks not checked below a corrupt hash block.
    pub data_blocks_unverifiable: u64,
    /// What failed: hash blocks top-down, then data blocks; only the first unless all
    /// were asked for.
    pub failures: Vec<FailureInfo>,
    /// The first data block that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_data_block: Option<BlockAt>,
    /// The signature, when one was checked.
    pub signature: Option<SignatureInfo>,
}

/// Reads the public key and the signature of `check` and verifies them over `params` and
/// `root` (what [`verify`] does first, and what mounting a signed image needs); returns the
/// signer's key in hex.
///
/// # Errors
/// [`Error::SignatureRefused`] for a signature that does not verify (a clean "no");
/// [`Error::Io`] and [`Error::Verity`] for files that cannot be read or keys that cannot be
/// used.
pub fn check_signature(check: &SignatureCheck, params: &Params, root: &[u8]) -> Result<String> {
    let key_bytes = std::fs::read(&check.public_key).map_err(|e| {
        Error::io(
            format!("cannot read the public key {}", check.public_key.display()),
            e,
        )
    })?;
    let key = verity::VerifyingKey::from_key_file(&key_bytes)
        .map_err(|e| Error::verity(format!("{} is not usable", check.public_key.display()), e))?;
    let sig = std::fs::read(&check.signature).map_err(|e| {
        Error::io(
            format!("cannot read the signature {}", check.signature.display()),
            e,
        )
    })?;
    match key.verify(params, root, &sig) {
        Ok(()) => Ok(key.to_hex()),
        Err(e @ (verity::Error::BadSignature | verity::Error::SignatureLength(_))) => {
            Err(Error::SignatureRefused {
                signature: check.signature.clone(),
                reason: Box::new(e),
            })
        }
        Err(e) => Err(Error::verity("cannot check the signature", e)),
    }
}

/// Checks every block of `req.data` against the tree and the root hash (`veritysetup
/// verify`), after the signature when one is given: an unsigned tree is not worth
/// hashing. `progress` counts data bytes hashed.
///
/// # Errors
/// [`Error::SignatureRefused`] (a clean "no"); [`Error::Io`], [`Error::Invalid`] and
/// [`Error::Verity`] for files, options and trees that cannot be checked at all. Corrupt
/// blocks are not errors: see [`Verification::ok`].
pub fn verify(req: &VerifyTree, progress: &mut dyn Progress) -> Result<Verification> {
    let area = req.tree.area();
    area.check()
        .map_err(|e| Error::verity("--hash-offset", e))?;
    let mut data = open_read(&req.data)?;
    let data_size = device_size(&mut data, &req.data)?;
    let mut hash = open_read(&req.hash)?;
    let (params, uuid) = load_params(&req.hash, &mut hash, Some(data_size), &req.tree)?;
    let root = req.root.parse(&params)?;
    let signature = match &req.signature {
        Some(check) => Some(SignatureInfo {
            valid: true,
            public_key: check_signature(check, &params, &root)?,
        }),
        None => None,
    };
    progress.start(Some(params.data_size()));
    let report = verity::verify(
        &data,
        &mut hash,
        &params,
        area,
        &root,
        req.all,
        &mut running(progress),
    )
    .map_err(|e| Error::verity(format!("cannot verify {}", req.data.display()), e))?;
    Ok(Verification {
        tree: TreeInfo::new(&params, uuid, area)?,
        ok: report.is_ok(),
        root_hash: hex::encode(&root),
        data_blocks_ok: report.data_blocks_ok,
        data_blocks_unverifiable: report.data_blocks_unverifiable,
        failures: report.failures.iter().map(FailureInfo::from).collect(),
        first_bad_data_block: report
            .first_bad_data_block()
            .map(|(index, offset)| BlockAt { index, offset }),
        signature,
    })
}

/// The superblock at `offset` of `hash` (`veritysetup dump`).
///
/// # Errors
/// [`Error::Io`]; [`Error::Verity`] when there is no valid superblock there.
pub fn dump(hash: &Path, offset: u64) -> Result<TreeInfo> {
    let mut file = open_read(hash)?;
    let sb = read_superblock(hash, &mut file, offset)?;
    TreeInfo::new(&sb.params, Some(sb.uuid), HashArea::with_superblock(offset))
}

/// What [`sign`] signs.
#[derive(Clone, Debug)]
pub struct SignTree {
    /// The hash file whose superblock holds the parameters (or give them in `tree` with
    /// `no_superblock`).
    pub hash: PathBuf,
    /// The root hash to sign.
    pub root: Root,
    /// The tree.
    pub tree: TreeOptions,
    /// The ed25519 private key: PKCS#8 PEM or DER, or a raw 32-byte seed.
    pub private_key: PathBuf,
    /// Where the signature goes (64 raw bytes, as `openssl pkeyutl -sign` writes).
    pub signature_out: PathBuf,
    /// Also write the exact signed message here (for `openssl pkeyutl -verify -rawin`).
    pub message_out: Option<PathBuf>,
}

/// A signature made. Serializes as `sealvol verity sign --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Signed {
    /// The root hash signed, in hex.
    pub root_hash: String,
    /// The signature file.
    pub signature: PathBuf,
    /// The signer's public key in hex.
    pub public_key: String,
    /// The signed message (text: the parameters and the root hash).
    pub message: String,
}

/// Signs the root hash together with the tree parameters (ed25519, detached). A root hash
/// that is not the root of the tree on the hash file is refused (when the tree can be read).
///
/// # Errors
/// [`Error::Invalid`] for a root hash that is not the tree's; [`Error::Io`] and
/// [`Error::Verity`] for the files and keys.
pub fn sign(req: &SignTree) -> Result<Signed> {
    let mut hash = open_read(&req.hash)?;
    let (params, _) = load_params(&req.hash, &mut hash, None, &req.tree)?;
    let root = req.root.parse(&params)?;
    let matches = verity::root_matches_tree(&mut hash, &params, req.tree.area(), &root)
        .map_err(|e| Error::verity(format!("cannot read the tree on {}", req.hash.display()), e))?;
    if matches == Some(false) {
        return Err(Error::Invalid(format!(
            "root hash {} is not the root of the tree on {}: refusing to sign it (check the \
             root hash and --hash-offset)",
            hex::encode(&root),
            req.hash.display()
        )));
    }
    let key_bytes = SecretBytes::from_vec(std::fs::read(&req.private_key).map_err(|e| {
        Error::io(
            format!("cannot read the private key {}", req.private_key.display()),
            e,
        )
    })?);
    let key = verity::SigningKey::from_key_file(key_bytes.expose())
        .map_err(|e| Error::verity(format!("{} is not usable", req.private_key.display()), e))?;
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    };
    write(&req.signature_out, &key.sign(&params, &root))?;
    let message = verity::signed_message(&params, &root);
    if let Some(m) = &req.message_out {
        write(m, &message)?;
    }
    Ok(Signed {
        root_hash: hex::encode(&root),
        signature: req.signature_out.clone(),
        public_key: key.verifying_key().to_hex(),
        message: String::from_utf8_lossy(&message).into_owned(),
    })
}

/// A key pair made. Serializes as `sealvol verity keygen --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyPair {
    /// The private key file (PKCS#8 PEM, mode 0600).
    pub private_key: PathBuf,
    /// The public key file (SPKI PEM).
    pub public_key_file: PathBuf,
    /// The public key in hex.
    pub public_key: String,
}

fn create_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            let context = match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    format!("{} exists: sealvol does not overwrite keys", path.display())
                }
                _ => format!("cannot create {}", path.display()),
            };
            Error::io(context, e)
        })?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(Error::io(format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

/// Makes an ed25519 key pair in two new files: `private` (PKCS#8 PEM, mode 0600) and
/// `public` (SPKI PEM; default `private` with `.pub` appended). Neither file may exist.
///
/// # Errors
/// [`Error::Io`] when a file exists or cannot be written (nothing is left behind).
pub fn keygen(private: &Path, public: Option<&Path>) -> Result<KeyPair> {
    let public_path = match public {
        Some(p) => p.to_path_buf(),
        None => {
            let mut s = private.as_os_str().to_owned();
            s.push(".pub");
            PathBuf::from(s)
        }
    };
    let seed = SecretBytes::random(32)?;
    let seed: &[u8; 32] = seed.expose().try_into().expect("32 bytes were asked for");
    let key = verity::SigningKey::from_seed(seed);
    let pem = key
        .to_pkcs8_pem()
        .map_err(|e| Error::verity("cannot encode the private key", e))?;
    let public = key.verifying_key();
    let public_pem = public
        .to_public_key_pem()
        .map_err(|e| Error::verity("cannot encode the public key", e))?;
    if public_path.exists() {
        return Err(Error::Invalid(format!(
            "{} exists: sealvol does not overwrite keys",
            public_path.display()
        )));
    }
    create_new(private, 0o600, pem.as_bytes())?;
    if let Err(e) = create_new(&public_path, 0o644, public_pem.as_bytes()) {
        let _ = std::fs::remove_file(private);
        return Err(e);
    }
    Ok(KeyPair {
        private_key: private.to_path_buf(),
        public_key_file: public_path,
        public_key: public.to_hex(),
    })
}

/// What [`read`] reads.
#[derive(Clone, Debug)]
pub struct ReadTree {
    /// The data file or device.
    pub data: PathBuf,
    /// The hash file.
    pub hash: PathBuf,
    /// The trusted root hash.
    pub root: Root,
    /// The tree.
    pub tree: TreeOptions,
}

/// Where [`read`] writes the verified bytes.
pub enum ReadTo<'a> {
    /// A file, created or truncated.
    File(&'a Path),
    /// A stream the caller owns (standard output).
    Stream(&'a mut dyn Write),
}

/// Copies the protected data to `to` through verified reads (what the kernel target would
/// serve), stopping at the first corrupt block. Returns the bytes written.
///
/// # Errors
/// [`Error::CorruptData`] naming the block (a clean "no"; what came before it was written);
/// [`Error::Io`], [`Error::Invalid`] and [`Error::Verity`] for files, options and trees.
pub fn read(req: &ReadTree, to: ReadTo<'_>, progress: &mut dyn Progress) -> Result<u64> {
    let area = req.tree.area();
    area.check()
        .map_err(|e| Error::verity("--hash-offset", e))?;
    let mut data = open_read(&req.data)?;
    let data_size = device_size(&mut data, &req.data)?;
    let mut hash = open_read(&req.hash)?;
    let (params, _) = load_params(&req.hash, &mut hash, Some(data_size), &req.tree)?;
    let root = req.root.parse(&params)?;
    let total = params.data_size();
    let mut reader = VerityReader::new(data, hash, params, area, &root)
        .map_err(|e| Error::verity(format!("cannot read {}", req.data.display()), e))?;
    let mut file;
    let (sink, name): (&mut dyn Write, String) = match to {
        ReadTo::Stream(w) => (w, "the output".into()),
        ReadTo::File(path) => {
            file = File::create(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            (&mut file, path.display().to_string())
        }
    };
    progress.start(Some(total));
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::CorruptData {
                    data: req.data.clone(),
                    bytes: done,
                    reason: e,
                })
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", req.data.display()), e)),
        };
        sink.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("cannot write {name}"), e))?;
        done += n as u64;
        progress.at(done);
    }
    sink.flush()
        .map_err(|e| Error::io(format!("cannot write {name}"), e))?;
    Ok(done)
}

#[cfg(test)]
mod tests;
