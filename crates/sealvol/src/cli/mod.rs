//! What the user typed: clap definitions only, no syscalls.

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sealvol_host::keys::KeySource;
use sealvol_luks::KdfLimits;

pub mod daemon;
pub mod export;
pub mod luks;
pub mod overlay;
pub mod verity;
pub mod vm;
pub mod volume;

pub use luks::*;

/// Sealed volumes for workloads on untrusted hosts.
///
/// sealvol reads and writes LUKS2 volumes byte for byte as cryptsetup does, in userspace, on
/// plain files: no device-mapper needed. Keys come from a key file, stdin (`--key-file -`)
/// or a file descriptor (`--key-fd N`), never from the command line or the environment.
///
/// Exit codes: 0 success, 1 a clean "no" (wrong key, nothing opened), 2 error.
#[derive(Debug, Parser)]
#[command(
    name = "sealvol",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = EXAMPLES
)]
pub struct Cli {
    /// Print results as JSON on stdout (errors too, as {"error": ..., "exit_code": ...}).
    #[arg(long, global = true)]
    pub json: bool,

    /// Log what sealvol does on stderr (repeat for more detail). Keys are never logged.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(flatten)]
    pub limits: KdfLimitArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Bounds on the key derivation an existing header may ask for. The host that stores a
/// header may be the attacker: cryptsetup's format allows 2^32 - 1 iterations or passes and
/// 4 GiB of memory, which would make every unlock run for hours or exhaust memory. A header
/// over a limit is refused before any work, naming the keyslot; the defaults accept what
/// cryptsetup writes by default on any machine.
#[derive(Debug, Args, Clone, Copy)]
#[command(next_help_heading = "Limits on what a header may ask")]
pub struct KdfLimitArgs {
    /// Most Argon2 memory a keyslot may use, in KiB [default: 1048576 = 1 GiB].
    #[arg(long, global = true, value_name = "KIB")]
    pub kdf_max_memory: Option<u32>,
    /// Most PBKDF2 iterations a keyslot or digest may ask for [default: 67108864].
    #[arg(long, global = true, value_name = "N")]
    pub kdf_max_iterations: Option<u32>,
    /// Most Argon2 work, in passes over --kdf-max-memory (more passes over less memory are
    /// allowed, passes × memory stays within the bound) [default: 64].
    #[arg(long, global = true, value_name = "N")]
    pub kdf_max_passes: Option<u32>,
}

impl KdfLimitArgs {
    /// The limits, defaults filled in.
    pub fn limits(&self) -> sealvol_luks::KdfLimits {
        let d = sealvol_luks::KdfLimits::default();
        sealvol_luks::KdfLimits {
            max_memory_kib: self.kdf_max_memory.unwrap_or(d.max_memory_kib),
            max_pbkdf2_iterations: self.kdf_max_iterations.unwrap_or(d.max_pbkdf2_iterations),
            max_argon2_passes: self.kdf_max_passes.unwrap_or(d.max_argon2_passes),
        }
    }
}

const EXAMPLES: &str = "\
Examples:
  # A volume for a workload, keyed by a 32-byte machine key the consumer supplied:
  head -c 32 /dev/urandom > key                  # (the consumer's key, never in argv)
  sealvol format --key-file key --size 10G vol.img
  sealvol import --key-file key rootfs.ext4 vol.img
  sealvol export --key-file key vol.img copy.ext4

  # The consumer keeps the header: the host's disk then holds no keyslot at all.
  sealvol format --key-file key --header vol.hdr --size 10G vol.img

  # A second key, then retire the first:
  sealvol add-key --key-file key --new-key-file key2 vol.img
  sealvol remove-key --key-file key vol.img

  # Automation: every verb speaks JSON; exit 1 means \"no\" (wrong key), 2 an error.
  sealvol --json test-key --key-file key2 vol.img
  sealvol --json dump vol.img

  # Crypto-erase at eviction (any header backup must be destroyed too):
  sealvol erase --batch-mode vol.img

The volumes are LUKS2: `cryptsetup open` opens them on a host with dm-crypt.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a LUKS2 volume (like `cryptsetup luksFormat`).
    ///
    /// A machine key (exactly 32 or 64 random bytes that are not text) gets a PBKDF2 keyslot
    /// at cryptsetup's minimum cost (1000 iterations), so formatting takes milliseconds;
    /// anything that may be a typed passphrase (any script, any line ending, hex or base64
    /// text) gets Argon2id with costs benchmarked as cryptsetup does (about 2 s, up to 1 GiB,
    /// capped by --pbkdf-memory). Say otherwise with --key-profile machine or --pbkdf.
    Format(FormatArgs),
    /// Print the header: keyslots, segments, digests, tokens (like `cryptsetup luksDump`).
    Dump(DumpArgs),
    /// Check whether a key opens the volume (exit 0 yes, 1 no); changes nothing.
    TestKey(TestKeyArgs),
    /// Add a keyslot for a new key, authorised by an existing key.
    AddKey(AddKeyArgs),
    /// Remove the keyslot that the given key opens (the last keyslot is kept: use `erase`).
    RemoveKey(RemoveKeyArgs),
    /// Replace a key: the new keyslot is written before the old one is wiped.
    ChangeKey(ChangeKeyArgs),
    /// Wipe every keyslot, making the data unrecoverable without a header backup.
    Erase(EraseArgs),
    /// Save the header and keyslot area to a file (it can unlock the volume: keep it safe).
    HeaderBackup(HeaderBackupArgs),
    /// Write a header backup back onto the volume.
    HeaderRestore(HeaderRestoreArgs),
    /// Rewrite a damaged header copy from the valid one.
    Repair(RepairArgs),
    /// Manage LUKS2 tokens (JSON objects in the header).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Encrypt plaintext from SRC into the volume's data segment (like `qemu-img convert`).
    Import(ImportArgs),
    /// Decrypt the volume's data segment into DST (like `qemu-img convert`).
    Export(ExportArgs),
    /// Verified read-only images: dm-verity hash trees and signed root hashes.
    #[command(subcommand)]
    Verity(verity::VerityCommand),
    /// Mount a volume's file system, with no device-mapper: FUSE file → loop device → mount.
    ///
    /// The key is read and checked first (exit 1 for a wrong key, nothing started); then a
    /// background export process serves the decrypted volume and `open` returns once the
    /// file system is mounted (or stays in the foreground with --foreground).
    Open(export::OpenArgs),
    /// Unmount a volume opened with `open` and stop its export, which wipes the key.
    /// Closing a volume that is not open does nothing and succeeds.
    Close(export::CloseArgs),
    /// Serve a volume's plaintext to qemu and other clients.
    #[command(subcommand)]
    Serve(export::ServeCommand),
    /// Encrypted, authenticated copy-on-write overlays over a shared base: per-extent keys,
    /// rekey and retire without rewriting, snapshots and clones, checkpoints against
    /// rollback (`open` and `serve nbd` serve an overlay file like a volume).
    #[command(subcommand)]
    Overlay(overlay::OverlayCommand),
    /// Workload volumes under a state directory: create, open, close, status, list, destroy
    /// (crypto-erase), sweep, bind-args. Crash-safe and idempotent.
    Volume(volume::VolumeCmd),
    /// Workload VMs under the state directory: create (qcow2 overlay, cloud-init seed),
    /// start (encrypted data disk through qemu's LUKS driver or sealvol's NBD export), stop,
    /// destroy, status, list, console-log, sweep.
    Vm(vm::VmCmd),
    /// Serve the Docker/Podman volume plugin and the JSON API (docs/daemon.md) until
    /// SIGTERM: volumes created with `docker volume create -d sealvol --opt size=1G --opt
    /// key-id=ID`, keys registered through the API (never in options, argv or files).
    Daemon(daemon::DaemonArgs),
    /// (internal) a background export (of `open`, `verity open`, `volume` and `vm`):
    /// `sealvol_host::export::child`; reads what to serve and the volume key on stdin.
    #[command(name = "__export", hide = true)]
    InternalExport,
}

/// The volume and where its header lives.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// Detached LUKS header file; VOLUME then holds only data.
    #[arg(long, value_name = "FILE")]
    pub header: Option<PathBuf>,
}

/// Where a key comes from. Without either option, the key is read from stdin.
#[derive(Debug, Args, Clone)]
pub struct KeyArgs {
    /// Read the key from FILE (its exact bytes); `-` reads all of stdin.
    #[arg(long, short = 'd', value_name = "FILE", conflicts_with = "key_fd")]
    pub key_file: Option<PathBuf>,
    /// Read the key from file descriptor N until end of file.
    #[arg(long, value_name = "N")]
    pub key_fd: Option<u32>,
}

/// Where the second key of add-key / change-key comes from.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct NewKeyArgs {
    /// Read the new key from FILE (its exact bytes); `-` reads all of stdin.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// Read the new key from file descriptor N until end of file.
    #[arg(long, value_name = "N")]
    pub new_key_fd: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pbkdf {
    Pbkdf2,
    Argon2i,
    Argon2id,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyProfile {
    /// Machine key if the key cannot be typed text (exactly 32 or 64 bytes that are not
    /// UTF-8, as `head -c 32 /dev/urandom` makes), else passphrase (hex or base64 text too).
    Auto,
    /// PBKDF2 at 1000 iterations: say so for high-entropy keys only (a random key written
    /// as hex for qemu, say).
    Machine,
    /// Argon2id, benchmarked like cryptsetup.
    Passphrase,
}

/// Key-derivation choices for a new keyslot.
#[derive(Debug, Args, Clone)]
pub struct KdfArgs {
    /// Key-derivation function for the keyslot (default: by --key-profile).
    #[arg(long, value_enum)]
    pub pbkdf: Option<Pbkdf>,
    /// Use exactly N iterations (PBKDF2) or N passes (Argon2) instead of benchmarking.
    #[arg(long, value_name = "N")]
    pub pbkdf_force_iterations: Option<u32>,
    /// Benchmark target for the KDF in milliseconds (cryptsetup's --iter-time; default 2000).
    #[arg(long, short = 'i', value_name = "MS")]
    pub iter_time: Option<u32>,
    /// Argon2 memory cost in KiB (maximum when benchmarking; default 1048576).
    #[arg(long, alias = "kdf-memory", value_name = "KIB")]
    pub pbkdf_memory: Option<u32>,
    /// Argon2 threads (default: min(4, CPUs)).
    #[arg(long, value_name = "N")]
    pub pbkdf_parallel: Option<u32>,
    /// Hash for PBKDF2, the AF splitter and (LUKS2) the volume key digest: sha1, sha256,
    /// sha512, ripemd160 or whirlpool.
    #[arg(long, value_name = "HASH", default_value = "sha256")]
    pub hash: String,
    /// How to treat the key when --pbkdf is not given.
    #[arg(long, value_enum, default_value = "auto")]
    pub key_profile: KeyProfile,
}

impl KdfArgs {
    /// The library's KDF policy for these options.
    ///
    /// # Errors
    /// An unknown `--hash`.
    pub fn policy(&self) -> Result<sealvol_luks::KdfPolicy, sealvol_crypto::Error> {
        use sealvol_luks::{KdfKind, KeyProfile as P};
        Ok(sealvol_luks::KdfPolicy {
            kind: self.pbkdf.map(|p| match p {
                Pbkdf::Pbkdf2 => KdfKind::Pbkdf2,
                Pbkdf::Argon2i => KdfKind::Argon2i,
                Pbkdf::Argon2id => KdfKind::Argon2id,
            }),
            force_iterations: self.pbkdf_force_iterations,
            iter_time: self
                .iter_time
                .map(|ms| std::time::Duration::from_millis(ms.into())),
            max_memory_kib: self.pbkdf_memory,
            parallel: self.pbkdf_parallel,
            hash: self.hash.parse()?,
            profile: match self.key_profile {
                KeyProfile::Auto => P::Auto,
                KeyProfile::Machine => P::Machine,
                KeyProfile::Passphrase => P::Passphrase,
            },
        })
    }
}

impl KeyArgs {
    /// The source these options name.
    pub fn source(&self) -> KeySource {
        KeySource::from_options(self.key_file.as_deref(), self.key_fd)
    }
}

impl NewKeyArgs {
    /// The source these options name.
    pub fn source(&self) -> KeySource {
        KeySource::from_options(self.new_key_file.as_deref(), self.new_key_fd)
    }
}

/// The limits every header this process opens is held to (`--kdf-max-*`), set once by
/// `main` from the global options.
static KDF_LIMITS: OnceLock<KdfLimits> = OnceLock::new();

/// Sets the process's KDF limits (once, from `main`).
pub fn set_kdf_limits(limits: KdfLimits) {
    let _ = KDF_LIMITS.set(limits);
}

/// The limits on what opened headers may ask of an unlock.
pub fn kdf_limits() -> KdfLimits {
    KDF_LIMITS.get().copied().unwrap_or_default()
}

/// Parses a byte size for clap: `sealvol_host::volume::parse_size`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    sealvol_host::volume::parse_size(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("10X").unwrap_err().contains("unknown size unit"));
    }
}
