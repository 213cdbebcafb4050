//! `sealvol open`, `close`, `serve nbd`, `verity open` and the hidden `__export`: the command
//! line of `sealvol_host::export`, which checks, unlocks and serves. `open` (and `verity
//! open`) return once a background export serves the volume (it got the key on a pipe,
//! never argv or the environment); with `--foreground`, and for `serve nbd`, this process
//! serves until SIGTERM or SIGINT. `close` stops an export from outside.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use sealvol_host::export::{
    self, KeyInput, Launcher, Mode, MountSpec, NbdEndpoint, NbdSpec, OpenSpec, Ready,
    RootSignature, Serve, SourceSpec, VeritySpec,
};
use sealvol_host::state::StateDir;
use serde_json::json;

use crate::cli::{parse_size, KeyArgs, VolumeArgs};
use crate::output::Output;

/// How long `close` waits for an export to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
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
    /// The LUKS volume file (the data file when --header is given).
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

// ---------------------------------------------------------------------------------------------
// open, verity open, serve nbd: typed options, one library call, the report

/// What `open`, `verity open` and `serve nbd` print once the volume is served.
fn print_ready(out: &Output, r: &Ready) -> Result<()> {
    Ok(match r {
        Ready::Mounted(m) => out.result(
            &format!(
                "Opened {} on {} (loop device {}, export process {}).",
                m.volume.display(),
                m.mount_point.display(),
                m.loop_device.display(),
                m.pid,
            ),
            json!({
                "ok": true,
                "volume": m.volume,
                "mount_point": m.mount_point,
                "loop_device": m.loop_device,
                "fuse_file": m.fuse_file,
                "pid": m.pid,
                "read_only": m.read_only,
                "size": m.size,
                "mkfs": m.mkfs,
            }),
        ),
        Ready::Nbd(n) => out.result(
            &format!(
                "Serving {} over NBD at {} ({}{}); stop with SIGTERM, Ctrl-C or `sealvol close`.",
                n.volume.display(),
                n.endpoint,
                n.uri,
                if n.tls {
                    ", TLS only, with a client certificate"
                } else {
                    ""
                }
            ),
            json!({"volume": n.volume, "endpoint": n.endpoint, "uri": n.uri, "tls": n.tls, "pid": n.pid, "read_only": n.read_only}),
        ),
    }?)
}

/// Serves `spec` as `serve`: in this process when `foreground` (reporting once it serves),
/// else in a background export of this binary (reporting once it returns).
fn start(
    spec: &OpenSpec,
    key: KeyInput<'_>,
    serve: &Serve,
    foreground: bool,
    out: &Output,
) -> Result<()> {
    let run = StateDir::from_env();
    let limits = crate::commands::kdf_limits();
    if foreground {
        let mut report = |r: &Ready| {
            let _ = print_ready(out, r);
        };
        export::export(&run, spec, key, limits, serve, Mode::Here(&mut report))?;
        return Ok(());
    }
    let launcher = Launcher::default();
    let ready = export::export(
        &run,
        spec,
        key,
        limits,
        serve,
        Mode::Child {
            launcher: &launcher,
            log: None,
        },
    )?;
    print_ready(out, &ready)
}

pub fn open(a: OpenArgs, out: &Output) -> Result<()> {
    let spec = OpenSpec {
        volume: a.volume_path,
        read_only: a.read_only,
        source: SourceSpec::Luks {
            header: a.volume.header,
        },
    };
    let serve = Serve::Mount(MountSpec {
        mount_point: a.mount,
        mkfs: a.mkfs,
    });
    start(
        &spec,
        KeyInput::Source(&a.key.source()),
        &serve,
        a.foreground,
        out,
    )
}

/// `sealvol verity open`: checks the signature and the root hash, then mounts the image
/// read-only through verified reads (FUSE → loop → mount). A corrupt block fails the reads
/// that touch it with EIO.
pub fn verity_open(a: VerityOpenArgs, out: &Output) -> Result<()> {
    let spec = OpenSpec {
        volume: a.image,
        read_only: true,
        source: SourceSpec::Verity(VeritySpec {
            hash: a.hash_file,
            hash_offset: a.hash_offset,
            root: a.root,
            signature: match (a.signature, a.public_key) {
                (Some(signature), Some(public_key)) => Some(RootSignature {
                    signature,
                    public_key,
                }),
                _ => None,
            },
        }),
    };
    let serve = Serve::Mount(MountSpec {
        mount_point: a.mount,
        mkfs: None,
    });
    start(&spec, KeyInput::None, &serve, a.foreground, out)
}

pub fn serve(c: ServeCommand, out: &Output) -> Result<()> {
    match c {
        ServeCommand::Nbd(a) => {
            let spec = OpenSpec {
                volume: a.volume_path,
                read_only: a.read_only,
                source: SourceSpec::Luks {
                    header: a.volume.header,
                },
            };
            let endpoint = match (a.socket, a.listen) {
                (Some(p), _) => NbdEndpoint::Socket(p),
                (None, Some(addr)) => NbdEndpoint::Tcp(addr),
                (None, None) => anyhow::bail!("give --socket PATH or --listen 127.0.0.1:PORT"),
            };
            let serve = Serve::Nbd(NbdSpec {
                endpoint,
                tls_creds: a.tls_creds,
                insecure_plaintext: a.insecure_plaintext,
                name: a.name,
                max_connections: a.shared,
                handshake_limit: Duration::from_secs(a.handshake_limit),
                send_timeout: Duration::from_secs(a.send_timeout),
                max_in_flight: a.max_in_flight,
            });
            start(&spec, KeyInput::Source(&a.key.source()), &serve, true, out)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// close

pub fn close(a: CloseArgs, out: &Output) -> Result<()> {
    let closed = export::close(&StateDir::from_env(), &a.target, STOP_TIMEOUT)?;
    let Some(c) = closed else {
        let target = std::fs::canonicalize(&a.target).unwrap_or_else(|_| a.target.clone());
        out.result(
            &format!("{} is not open; nothing to do.", a.target.display()),
            json!({"closed": false, "target": target}),
        )?;
        return Ok(());
    };
    let e = &c.entry;
    let where_ = e
        .mount_point
        .as_ref()
        .map(|m| format!(" (was mounted on {})", m.display()))
        .or_else(|| e.nbd.as_ref().map(|n| format!(" (was served at {n})")))
        .unwrap_or_default();
    out.result(
        &format!("Closed {}{where_}.", e.volume.display()),
        json!({
            "closed": true,
            "volume": e.volume,
            "mount_point": e.mount_point,
            "loop_device": e.loop_device,
            "pid": e.pid,
            "export_was_running": c.stopped.export_was_running,
        }),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// __export

/// The background export of `open`, `verity open`, `volume` and `vm`: the library's child,
/// which reads its spec and key on stdin.
pub fn internal_export(_out: &Output) -> Result<()> {
    Ok(export::child::main()?)
}
