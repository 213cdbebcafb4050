//! Options of `open`, `close`, `serve nbd` and `verity open`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::overlay::BaseArgs;
use super::{parse_size, KeyArgs, VolumeArgs};

#[derive(Debug, Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Empty directory to mount the volume's file system on.
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,
    /// Make a new file system of this type first (ext4, ext3, ext2, xfs, btrfs); it
    /// replaces whatever the volume held.
    #[arg(long, value_name = "TYPE")]
    pub mkfs: Option<String>,
    /// Open and mount read-only: nothing is written to the volume.
    #[arg(long, conflicts_with = "mkfs")]
    pub read_only: bool,
    /// Serve in this process until SIGTERM or SIGINT instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    #[command(flatten)]
    pub overlay: OverlayOpenArgs,
    /// The LUKS volume file (the data file when --header is given), or an overlay file.
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

/// What `open` and `serve nbd` take for an overlay (VOLUME an overlay file).
#[derive(Debug, Args, Clone, Default)]
pub struct OverlayOpenArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// Refuse an overlay older than this checkpoint (COUNTER:HEX, as `sealvol overlay
    /// checkpoint` or `close` printed it): a saved older copy of the file is a clean "no"
    /// (exit 1), nothing served.
    #[arg(long, value_name = "COUNTER:HEX")]
    pub expect_checkpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct CloseArgs {
    /// The mount point or the volume file given to `open` (or `serve nbd`).
    #[arg(value_name = "DIR|VOLUME")]
    pub target: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Serve the decrypted volume over NBD (qemu: `nbd+unix:///?socket=PATH`, or
    /// `nbd://127.0.0.1:PORT` with TLS) until SIGTERM, SIGINT or `sealvol close`.
    ///
    /// Nothing a client does can hold the server: at most --shared clients at once, each with
    /// --handshake-limit seconds to negotiate and --send-timeout seconds to read a reply, and
    /// at most --max-in-flight bytes of requests held across all of them. On SIGTERM, SIGINT
    /// or `sealvol close` every connection ends, the volume is flushed and the socket file
    /// removed, within a second or two.
    Nbd(ServeNbdArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("endpoint").required(true).multiple(false))]
pub struct ServeNbdArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Listen on this unix socket. It is made with mode 0600 whatever the umask, so only its
    /// owner (root) can connect. A stale socket there is replaced; any other file, or a
    /// symlink, is refused.
    #[arg(long, value_name = "PATH", group = "endpoint")]
    pub socket: Option<PathBuf>,
    /// Listen on this loopback TCP address (127.0.0.1:PORT or [::1]:PORT; port 0 picks one).
    /// Every local user can reach a TCP port, so this needs --tls-creds (or, knowingly,
    /// --insecure-plaintext).
    #[arg(long, value_name = "ADDR", group = "endpoint")]
    pub listen: Option<SocketAddr>,
    /// Speak only TLS, with the x509 credentials in DIR, laid out as for qemu's
    /// `--object tls-creds-x509,dir=DIR,endpoint=server`: ca-cert.pem (the CA that signs the
    /// client certificates), server-cert.pem and server-key.pem. A client must present a
    /// certificate signed by that CA; with qemu: `--object
    /// tls-creds-x509,id=tls0,dir=CLIENTDIR,endpoint=client` (CLIENTDIR holding ca-cert.pem,
    /// client-cert.pem, client-key.pem) and `tls-creds=tls0` in the NBD options. x509 only:
    /// there is no TLS-PSK. Works with --socket too.
    #[arg(long, value_name = "DIR", visible_alias = "tls-certificates")]
    pub tls_creds: Option<PathBuf>,
    /// Serve --listen without TLS: every local user can then read and write the volume's
    /// plaintext. Only for a machine whose every user you trust.
    #[arg(long, requires = "listen", conflicts_with = "tls_creds")]
    pub insecure_plaintext: bool,
    /// Serve at most NUM clients at once (as qemu-nbd's --shared); one more is refused
    /// (closed at once) and logged.
    #[arg(
        long = "shared",
        visible_alias = "max-connections",
        value_name = "NUM",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub shared: u32,
    /// Drop a client that has not finished the handshake (TLS included) after SECONDS, as
    /// qemu-nbd's --handshake-limit: a client that connects and says nothing, or sends its
    /// options a byte at a time, holds a slot no longer.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub handshake_limit: u64,
    /// End a connection whose client has not read a reply within SECONDS, or stopped
    /// sending a request halfway (a write's data) for that long: such a client must not hold
    /// the server's threads and memory. Idle time between requests is not limited.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub send_timeout: u64,
    /// Hold at most SIZE bytes (K, M, G) for requests in flight, across all clients: write
    /// data received and not yet written, read data not yet sent. Clients wait beyond it; a
    /// single request larger than SIZE (NBD allows 32 MiB) still runs, alone.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub max_in_flight: u64,
    /// Export name (default: the empty name, which qemu asks for).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
    #[command(flatten)]
    pub overlay: OverlayOpenArgs,
    /// The LUKS volume file (the data file when --header is given), or an overlay file.
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerityOpenArgs {
    /// The image (squashfs, erofs, ext4 ...) the hash tree protects.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The hash device, with its superblock (IMAGE itself when the tree is appended).
    #[arg(long = "hash", value_name = "FILE")]
    pub hash_file: PathBuf,
    /// Byte offset of the superblock and tree in the hash device.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub hash_offset: u64,
    /// The trusted root hash (hex).
    #[arg(long, value_name = "HEX")]
    pub root: String,
    /// Detached ed25519 signature over the root hash and parameters (`verity sign`).
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub signature: Option<PathBuf>,
    /// The publisher's public key (PEM or raw 32 bytes).
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub public_key: Option<PathBuf>,
    /// Empty directory to mount the image on (read-only).
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,
    /// Serve in this process until SIGTERM or SIGINT instead of in the background.
    #[arg(long)]
    pub foreground: bool,
}
