//! Options of `volume create`, `open`, `close`, `status`, `list`, `destroy`, `sweep`,
//! `bind-args`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sealvol_host::volume::LuksType;

use super::{parse_size, KdfArgs, KeyArgs};

#[derive(Debug, Args)]
pub struct VolumeCmd {
    /// State directory holding the volumes (default: from the config file, else
    /// /var/lib/sealvol).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file: JSON, {"state_dir": "/path"} (default /etc/sealvol/config.json,
    /// when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: VolumeVerb,
}

#[derive(Debug, Subcommand)]
pub enum VolumeVerb {
    /// Create a workload's volume: sparse LUKS2 (or --type luks1) image (machine-key
    /// profile), file system, and with --mount, mounted under the state directory. Any
    /// failure undoes every step; the same id with the same parameters again is a no-op.
    Create(CreateArgs),
    /// Mount a volume on its mount point (idempotent). A wrong key: exit 1, nothing changed.
    Open(OpenArgs),
    /// Unmount a volume and stop its export, wiping the key from memory (idempotent).
    Close(IdArgs),
    /// Show a volume: phase, parameters, mount path, export process.
    Status(IdArgs),
    /// List every volume of the state directory.
    List,
    /// Destroy a volume: unmount, stop the export, wipe every keyslot and both header copies
    /// (and the detached header), delete its files. Destroying an absent id succeeds.
    /// A volume that a running VM uses as its data disk is refused (as by open and close):
    /// `sealvol vm stop` that VM first, or `sealvol vm destroy --destroy-data` both.
    Destroy(IdArgs),
    /// Repair what crashes left behind: undo interrupted creates, finish interrupted
    /// destroys, stop exports and unmount mounts that have no record or no live export.
    Sweep,
    /// Print the container runtime arguments that bind a mounted volume at --target.
    BindArgs(BindArgsArgs),
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Workload id: 1 to 63 of a-z 0-9 _ . - (starting with a letter or digit, no "..").
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Data size (K, M, G, T: powers of 1024), at least 16M for ext4. With --base: the
    /// overlay's virtual size (default: the base's).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, required_unless_present = "base")]
    pub size: Option<u64>,
    /// Make an overlay volume: an encrypted copy-on-write overlay (`sealvol overlay`) over
    /// this shared, read-only base image holding a file system (no mkfs: the volume starts
    /// as the base's file system, and every write goes under the volume's own key). With
    /// --base-hash and --base-root every read of the base is verified (dm-verity).
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["detached_header", "luks_type"])]
    pub base: Option<PathBuf>,
    /// The base's dm-verity tree (with superblock).
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
    /// File system to make (ext4, ext3, ext2, xfs, btrfs).
    #[arg(long, default_value = "ext4", value_name = "TYPE")]
    pub fs: String,
    /// Keep the LUKS header in its own file (volumes/ID/header.img), not on the image.
    /// A VM reads a LUKS1 data volume with a detached header through qemu's LUKS driver
    /// from qemu 9.0 on.
    #[arg(long)]
    pub detached_header: bool,
    /// On-disk format: luks2, or luks1 (what qemu's `luks` block driver reads, for a VM's
    /// data disk: 512-byte sectors, PBKDF2 keyslot).
    #[arg(
        long = "type",
        default_value = "luks2",
        value_name = "TYPE",
        value_parser = parse_luks_type
    )]
    pub luks_type: LuksType,
    /// Leave the volume mounted (at STATE_DIR/mnt/ID).
    #[arg(long)]
    pub mount: bool,
    /// Allow a sparse volume larger than the free space.
    #[arg(long)]
    pub sparse_ok: bool,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct BindArgsArgs {
    /// Path inside the container.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    #[arg(value_name = "ID")]
    pub id: String,
}

fn parse_luks_type(s: &str) -> std::result::Result<LuksType, String> {
    match s {
        "luks2" => Ok(LuksType::Luks2),
        "luks1" => Ok(LuksType::Luks1),
        other => Err(format!(
            "{other} is not a volume type; use luks2 (default) or luks1"
        )),
    }
}
