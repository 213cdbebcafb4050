//! Options of `vm create`, `start`, `stop`, `destroy`, `status`, `list`, `console-log`,
//! `sweep`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{parse_size, KdfArgs, KeyArgs};

#[derive(Debug, Args)]
pub struct VmCmd {
    /// State directory (shared with `sealvol volume`; default: from the config file, else
    /// /var/lib/sealvol). VMs live in its vm/ subdirectory.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file: JSON, {"state_dir": "/path"} (default /etc/sealvol/config.json,
    /// when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: VmVerb,
}

#[derive(Debug, Subcommand)]
pub enum VmVerb {
    /// Create a VM: a qcow2 overlay on the base image (or, with --encrypted-root, an
    /// encrypted sealvol overlay) and a cloud-init seed ISO (with the ssh key from
    /// --ssh-key). A failure undoes every step.
    Create(Box<CreateArgs>),
    /// Start a VM (idempotent). The key of its data volume and of its encrypted root disk
    /// comes from --key-file, --key-fd or stdin; a wrong key: exit 1, nothing started.
    Start(StartArgs),
    /// Stop a VM: ACPI power-off, then SIGKILL after --timeout; then its NBD export.
    Stop(StopArgs),
    /// Destroy a VM: stop it, delete its overlay, seed and record; with --destroy-data also
    /// crypto-erase its data volume. Destroying an absent id succeeds.
    Destroy(DestroyArgs),
    /// Show a VM: phase, qemu process, accelerator, files.
    Status(IdArgs),
    /// List every VM of the state directory.
    List,
    /// Print the VM's serial console log (of its current or last boot).
    ConsoleLog(IdArgs),
    /// Repair what crashes left behind: interrupted creates and destroys, qemu processes
    /// without records, stale pid files, NBD exports of VMs that are gone.
    Sweep,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// VM id: 1 to 63 of a-z 0-9 _ . - (starting with a letter or digit, no "..").
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Via {
    /// qemu's own LUKS driver (LUKS1 volumes, text keys; a detached header needs qemu 9.0).
    Luks,
    /// sealvol's NBD export (any LUKS volume, any key).
    Nbd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccelArg {
    Kvm,
    Tcg,
    Auto,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(value_name = "ID")]
    pub id: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory (K, M, G: powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: u64,
    /// Root disk size: the overlay's virtual size (K, M, G, T).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_size: u64,
    /// The read-only base image (any format qemu-img knows).
    #[arg(long, value_name = "IMAGE")]
    pub base: PathBuf,
    /// A workload volume (`sealvol volume create`) to attach as the data disk.
    #[arg(long, value_name = "VOLID")]
    pub data_volume: Option<String>,
    /// How the data disk reaches the guest.
    #[arg(long, value_enum, default_value = "nbd", requires = "data_volume")]
    pub data_via: Via,
    /// Forward a host port (on 127.0.0.1) to a guest port: HOST:GUEST/tcp. Repeatable.
    #[arg(long, value_name = "HOST:GUEST/tcp")]
    pub forward: Vec<String>,
    /// Public ssh key file to authorize in the guest (through the cloud-init seed).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Accelerator: kvm, tcg, or auto (probe KVM with a tiny guest, fall back to TCG).
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Boot this kernel directly (with --initrd and --append).
    #[arg(long, value_name = "VMLINUX", requires_all = ["initrd"])]
    pub kernel: Option<PathBuf>,
    /// The initrd for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(
        long,
        value_name = "ARGS",
        requires = "kernel",
        default_value = "console=ttyS0"
    )]
    pub append: String,
    /// Make the root disk an encrypted sealvol overlay over the (raw) base image instead of
    /// a qcow2: every block the guest writes is encrypted and authenticated under the key
    /// (--key-file, --key-fd or stdin; `vm start` asks for the same key), served to qemu over
    /// sealvol's NBD export, crypto-erased by `vm destroy`.
    #[arg(long)]
    pub encrypted_root: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the guest to power off before killing qemu.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub timeout: u64,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Also destroy the data volume (crypto-erase through `sealvol volume destroy`).
    #[arg(long)]
    pub destroy_data: bool,
    /// Seconds to wait for a running guest to power off before killing qemu.
    #[arg(long, default_value_t = 5, value_name = "S")]
    pub timeout: u64,
    #[arg(value_name = "ID")]
    pub id: String,
}
