//! The hidden `__export` verb's arguments: what `sealvol_host::export::child::ChildSpec::args`
//! writes, parsed back into that spec. Nothing else: the verb then calls the library's child
//! entry point.
//!
//! Self-contained on purpose (clap and `sealvol_host` only): the host crate's lifecycle tests
//! include this file, being a program that re-executes itself as a background export the way
//! `sealvol` does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sealvol_host::export::child::ChildSpec;
use sealvol_host::export::{
    MountSpec, NbdEndpoint, NbdSpec, OpenSpec, Serve, SourceSpec, VeritySpec,
};

/// (internal) What a background export serves; its key comes on stdin.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("serve").required(true).multiple(false))]
pub struct InternalArgs {
    /// The runtime directory.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The detached LUKS header.
    #[arg(long)]
    pub header: Option<PathBuf>,
    /// Serve read-only.
    #[arg(long)]
    pub read_only: bool,
    /// A verity image's hash device.
    #[arg(long, requires = "verity_root", conflicts_with = "header")]
    pub verity_hash: Option<PathBuf>,
    /// The superblock's offset in the hash device.
    #[arg(long, default_value_t = 0)]
    pub verity_hash_offset: u64,
    /// The trusted root hash (hex).
    #[arg(long, requires = "verity_hash")]
    pub verity_root: Option<String>,
    /// Mount the file system here.
    #[arg(long, group = "serve")]
    pub mount: Option<PathBuf>,
    /// Make this file system first.
    #[arg(long, requires = "mount")]
    pub mkfs: Option<String>,
    /// Serve NBD on this unix socket.
    #[arg(long, group = "serve")]
    pub nbd_socket: Option<PathBuf>,
    /// Serve NBD on this loopback TCP address.
    #[arg(long, group = "serve")]
    pub nbd_listen: Option<SocketAddr>,
    /// TLS credentials directory.
    #[arg(long)]
    pub tls_creds: Option<PathBuf>,
    /// TCP without TLS.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// NBD clients at once.
    #[arg(long, default_value_t = 16)]
    pub shared: u32,
    /// NBD handshake limit (ms).
    #[arg(long, default_value_t = 10_000)]
    pub handshake_limit_ms: u64,
    /// NBD send timeout (ms).
    #[arg(long, default_value_t = 30_000)]
    pub send_timeout_ms: u64,
    /// NBD bytes in flight.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_in_flight: u64,
    /// NBD export name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// The volume file.
    pub volume_path: PathBuf,
}

impl InternalArgs {
    /// The spec these arguments carry.
    pub fn into_spec(self) -> ChildSpec {
        let source = match (self.verity_hash, self.verity_root) {
            (Some(hash), Some(root)) => SourceSpec::Verity(VeritySpec {
                hash,
                hash_offset: self.verity_hash_offset,
                root,
                signature: None,
            }),
            _ => SourceSpec::Luks {
                header: self.header,
            },
        };
        let nbd = |endpoint| {
            Serve::Nbd(NbdSpec {
                endpoint,
                tls_creds: self.tls_creds.clone(),
                insecure_plaintext: self.insecure_plaintext,
                name: self.name.clone(),
                max_connections: self.shared,
                handshake_limit: Duration::from_millis(self.handshake_limit_ms),
                send_timeout: Duration::from_millis(self.send_timeout_ms),
                max_in_flight: self.max_in_flight,
            })
        };
        let serve = match (self.mount, self.nbd_socket, self.nbd_listen) {
            (Some(mount_point), _, _) => Serve::Mount(MountSpec {
                mount_point,
                mkfs: self.mkfs.clone(),
            }),
            (None, Some(p), _) => nbd(NbdEndpoint::Socket(p)),
            (None, None, Some(addr)) => nbd(NbdEndpoint::Tcp(addr)),
            (None, None, None) => {
                unreachable!("clap requires one of --mount, --nbd-socket, --nbd-listen")
            }
        };
        ChildSpec {
            run_dir: self.run_dir,
            open: OpenSpec {
                volume: self.volume_path,
                read_only: self.read_only,
                source,
            },
            serve,
        }
    }
}
