//! Options of the LUKS verbs: `format`, `dump`, `test-key`, keyslots, `erase`, header
//! backup and restore, `repair`, tokens, `import`, `export`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{parse_size, KdfArgs, KeyArgs, NewKeyArgs, VolumeArgs};

#[derive(Debug, Args)]
pub struct FormatArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// On-disk format: luks2, or luks1 (what qemu's `luks` block driver reads; 512-byte
    /// sectors, PBKDF2 keyslots, no tokens or labels).
    #[arg(
        long = "type",
        short = 'M',
        default_value = "luks2",
        value_name = "TYPE"
    )]
    pub luks_type: String,
    /// Cipher specification, as cryptsetup names it: aes, serpent or twofish in xts-plain64,
    /// xts-plain, cbc-essiv:sha256, cbc-plain64 or cbc-plain; or
    /// xchacha12,aes-adiantum-plain64 / xchacha20,aes-adiantum-plain64.
    #[arg(long, short = 'c', default_value = "aes-xts-plain64")]
    pub cipher: String,
    /// Key size in bits: for XTS 512 (two AES-256 keys), 384 or 256; for CBC 256, 192 or
    /// 128; Adiantum 256 [default: the largest the cipher's mode allows, as cryptsetup].
    #[arg(long, short = 's', value_name = "BITS")]
    pub key_size: Option<u32>,
    /// Encryption sector size in bytes (512, 1024, 2048, 4096; default 4096, LUKS1 512 only).
    #[arg(long)]
    pub sector_size: Option<u64>,
    /// Keyslot to use for the first key.
    #[arg(long, short = 'S', value_name = "N")]
    pub key_slot: Option<u32>,
    /// Header label.
    #[arg(long)]
    pub label: Option<String>,
    /// Header subsystem.
    #[arg(long)]
    pub subsystem: Option<String>,
    /// Volume UUID (default: random).
    #[arg(long)]
    pub uuid: Option<String>,
    /// Size of each JSON metadata copy in bytes (16K..4M, a power of two).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub luks2_metadata_size: Option<u64>,
    /// Size of the keyslots area in bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub luks2_keyslots_size: Option<u64>,
    /// Data offset in 512-byte sectors (default: 16 MiB attached, 0 detached).
    #[arg(long, value_name = "SECTORS")]
    pub offset: Option<u64>,
    /// Data area size: the volume file is grown to hold this much data (K, M, G, T suffixes,
    /// powers of 1024). Without it an existing file keeps its size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Overwrite an existing LUKS header without asking.
    #[arg(long, short = 'q')]
    pub batch_mode: bool,
    /// The volume file (created if missing).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

impl FormatArgs {
    /// The library's request for these options.
    ///
    /// # Errors
    /// An unknown `--type` or `--hash`.
    pub fn request(&self) -> anyhow::Result<sealvol_host::luks_file::FormatRequest> {
        use anyhow::Context;
        Ok(sealvol_host::luks_file::FormatRequest {
            header: sealvol_luks::NewHeader {
                version: self.luks_type.parse()?,
                cipher: self.cipher.clone(),
                key_size_bits: self
                    .key_size
                    .unwrap_or_else(|| sealvol_luks::format::default_key_bits(&self.cipher)),
                sector_size: self.sector_size,
                detached: self.volume.header.is_some(),
                label: self.label.clone(),
                subsystem: self.subsystem.clone(),
                uuid: self.uuid.clone(),
                keyslot: self.key_slot,
                metadata_size: self.luks2_metadata_size,
                keyslots_size: self.luks2_keyslots_size,
                data_offset_sectors: self.offset,
                kdf: self.kdf.policy().context("--hash")?,
            },
            size: self.size,
            overwrite: self.batch_mode,
        })
    }
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct TestKeyArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Only try this keyslot.
    #[arg(long, short = 'S', value_name = "N")]
    pub key_slot: Option<u32>,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct AddKeyArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub new_key: NewKeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Keyslot for the new key (default: the first free one).
    #[arg(long, short = 'S', value_name = "N")]
    pub key_slot: Option<u32>,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RemoveKeyArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ChangeKeyArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub new_key: NewKeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Only accept the old key in this keyslot.
    #[arg(long, short = 'S', value_name = "N")]
    pub key_slot: Option<u32>,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'q')]
    pub batch_mode: bool,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct HeaderBackupArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// File to write the backup to (must not exist).
    #[arg(long, value_name = "FILE")]
    pub header_backup_file: PathBuf,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct HeaderRestoreArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Backup made by `header-backup` or `cryptsetup luksHeaderBackup`.
    #[arg(long, value_name = "FILE")]
    pub header_backup_file: PathBuf,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'q')]
    pub batch_mode: bool,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Add a JSON token (an object with "type" and "keyslots").
    Add(TokenAddArgs),
    /// Remove a token.
    Remove(TokenIdArgs),
    /// Print a token's JSON.
    Export(TokenIdArgs),
}

#[derive(Debug, Args)]
pub struct TokenAddArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// File holding the token JSON; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub json_file: PathBuf,
    /// Token id (default: the first free one).
    #[arg(long, value_name = "N")]
    pub token_id: Option<u32>,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct TokenIdArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[arg(long, value_name = "N")]
    pub token_id: u32,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Plaintext source file; `-` reads stdin (then give the key with --key-file FILE or --key-fd).
    #[arg(value_name = "SRC")]
    pub src: PathBuf,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
    /// Plaintext destination file (created or truncated); `-` writes stdout.
    #[arg(value_name = "DST")]
    pub dst: PathBuf,
}
