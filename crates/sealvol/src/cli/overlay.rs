//! Options of `overlay create | status | checkpoint | rekey | retire | snapshot | clone |
//! flatten | add-key | change-key | remove-key`, and the base options `open` and `serve nbd`
//! take for an overlay.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{parse_size, KdfArgs, KeyArgs, NewKeyArgs};

#[derive(Debug, Subcommand)]
pub enum OverlayCommand {
    /// Make a new overlay file over a base: a plain image (--base), a dm-verity image
    /// (--base with --base-hash and --base-root: every read verified), a LUKS volume opened
    /// read-only (--base-luks), or none (--size, zeros). One keyslot for the key; the
    /// keyslot's KDF by --key-profile (a machine key gets PBKDF2 at minimum cost, a
    /// passphrase Argon2id).
    Create(CreateArgs),
    /// Show sizes, bytes per key generation, the chain of lower layers and the last
    /// checkpoint.
    Status(KeyedArgs),
    /// Print the last durable checkpoint (COUNTER:HEX), to give back with `open
    /// --expect-checkpoint`: any older copy of the file is then refused. For an overlay an
    /// export serves: the checkpoint of its last flush (no key needed).
    Checkpoint(CheckpointArgs),
    /// Start a new key generation: every write from now on uses a new master key; data
    /// written before stays readable under its own.
    Rekey(KeyedArgs),
    /// Re-encrypt one key generation's data under the current one, then erase its key from
    /// the file (resumable: after a crash, run it again).
    Retire(RetireArgs),
    /// Freeze the overlay's state as SNAPSHOT (a new name in its directory) and go on in a
    /// new layer over it at OVERLAY, with the same keys.
    Snapshot(SnapshotArgs),
    /// Make NEW, a new overlay over the frozen SOURCE (a snapshot) whose writes use a new,
    /// unrelated master key, opened by the new key (--new-key-file): the per-workload key over
    /// a shared base.
    Clone(CloneArgs),
    /// Copy into the overlay every cluster its lower layers hold, then drop the chain: it
    /// then stands on its base alone (resumable).
    Flatten(KeyedArgs),
    /// Add a keyslot for a new key to the overlay's embedded LUKS2 header.
    AddKey(KeyChangeArgs),
    /// Replace a key: the new keyslot is written before the old one is wiped.
    ChangeKey(KeyChangeArgs),
    /// Remove the keyslot the key opens (never the last one).
    RemoveKey(CheckpointArgs),
}

/// Where an overlay's base is, for `overlay create`, `open` and `serve nbd`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Overlay base")]
pub struct BaseArgs {
    /// The overlay's base, only ever read: a plain image, the data of a dm-verity image
    /// (with --base-hash and --base-root), or a LUKS volume (with --base-luks). VOLUME is
    /// then an overlay file (`sealvol overlay create`).
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<PathBuf>,
    /// The base's dm-verity tree (with superblock; the image itself when appended): every
    /// read of the base is verified against --base-root.
    #[arg(long, value_name = "FILE", requires_all = ["base", "base_root"])]
    pub base_hash: Option<PathBuf>,
    /// Byte offset of the superblock and tree in --base-hash.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 0,
        requires = "base_hash"
    )]
    pub base_hash_offset: u64,
    /// The base's trusted verity root hash (hex).
    #[arg(long, value_name = "HEX", requires = "base_hash")]
    pub base_root: Option<String>,
    /// Detached ed25519 signature over the base's root hash (`verity sign`), checked first.
    #[arg(long, value_name = "FILE", requires_all = ["base_hash", "base_public_key"])]
    pub base_signature: Option<PathBuf>,
    /// The publisher's public key for --base-signature.
    #[arg(long, value_name = "FILE", requires = "base_signature")]
    pub base_public_key: Option<PathBuf>,
    /// The base is a LUKS volume, opened read-only with its own key (--base-key-file).
    #[arg(long, requires = "base", conflicts_with = "base_hash")]
    pub base_luks: bool,
    /// The LUKS base's detached header.
    #[arg(long, value_name = "FILE", requires = "base_luks")]
    pub base_header: Option<PathBuf>,
    /// Read the LUKS base's key from FILE (`-` reads stdin).
    #[arg(
        long,
        value_name = "FILE",
        requires = "base_luks",
        conflicts_with = "base_key_fd"
    )]
    pub base_key_file: Option<PathBuf>,
    /// Read the LUKS base's key from file descriptor N.
    #[arg(long, value_name = "N", requires = "base_luks")]
    pub base_key_fd: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    #[command(flatten)]
    pub base: BaseArgs,
    /// Virtual size (K, M, G, T; default: the base's size; required without a base).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Cluster size: the unit of encryption and copy on write, 4K to 1M (default 4K).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cluster_size: Option<u64>,
    /// LUKS2 label of the embedded header.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// The new overlay file (must not exist).
    #[arg(value_name = "OVERLAY")]
    pub overlay: PathBuf,
}

/// An overlay and its key.
#[derive(Debug, Args)]
pub struct KeyedArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Refuse an overlay older than this checkpoint (COUNTER:HEX).
    #[arg(long, value_name = "COUNTER:HEX")]
    pub expect_checkpoint: Option<String>,
    /// The overlay file.
    #[arg(value_name = "OVERLAY")]
    pub overlay: PathBuf,
}

/// An overlay and its key, for verbs that check no checkpoint.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The overlay file.
    #[arg(value_name = "OVERLAY")]
    pub overlay: PathBuf,
}

#[derive(Debug, Args)]
pub struct RetireArgs {
    #[command(flatten)]
    pub keyed: KeyedArgs,
    /// The generation to retire (see `status`; not the current one: rekey first).
    #[arg(long, value_name = "GEN")]
    pub generation: u32,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub keyed: KeyedArgs,
    /// The frozen snapshot's new name, in the overlay's directory.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: PathBuf,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub new_key: NewKeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// The frozen overlay (a snapshot) to clone.
    #[arg(value_name = "SOURCE")]
    pub source: PathBuf,
    /// The new overlay file (must not exist).
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeyChangeArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub new_key: NewKeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// The overlay file.
    #[arg(value_name = "OVERLAY")]
    pub overlay: PathBuf,
}
