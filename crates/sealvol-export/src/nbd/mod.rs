//! An NBD server for one block device.
//!
//! Protocol: the fixed newstyle handshake of the NBD protocol (`doc/proto.md` of the
//! reference implementation), options `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_LIST`, `NBD_OPT_ABORT` and `NBD_OPT_STARTTLS` (others get `NBD_REP_ERR_UNSUP`,
//! structured replies included), then simple replies to `READ`, `WRITE` (with `FUA`),
//! `FLUSH`, `TRIM`, `WRITE_ZEROES` and `DISC`.
//!
//! Each connection has a reader (the connection's thread, which also takes in write
//! payloads and runs reads and writes of up to 64 KiB itself) and a few workers that run
//! the larger requests and send their replies, so a client with many requests in flight
//! (qemu keeps up to 16) keeps both cores busy. Requests are at most
//! [`MAX_REQUEST`] bytes; the block-size information advertises [`PREFERRED_MAX`], which
//! qemu honours.
//!
//! Nothing a client does can wedge the server ([`NbdOptions`] has the limits):
//! - at most [`NbdOptions::max_connections`] clients; more are refused (closed) and logged;
//! - the whole handshake (TLS included) must end within [`NbdOptions::handshake_timeout`];
//! - a reply the client does not read within [`NbdOptions::send_timeout`], or a request it
//!   stops sending halfway for that long, ends the connection; a client that vanishes ends
//!   it at once, with its workers, and every byte it held is freed;
//! - the bytes held for requests in flight (write payloads read, read replies not yet sent)
//!   stay under [`NbdOptions::max_in_flight`] across all connections; a single request
//!   larger than that runs alone;
//! - [`Server::serve`] returns within a fraction of a second of its stop flag, whatever the
//!   clients do, after flushing the device and removing the socket file.
//!
//! Access: the unix socket is made 0600 (only its owner, root for sealvol, connects); TCP
//! listens on loopback only, and only with TLS ([`tls::TlsCreds`], client certificates
//! required) unless plaintext is asked for explicitly ([`NbdOptions::allow_plaintext_tcp`]).
//! See [`handshake`] for the negotiation, [`proto`] for the wire format.

pub mod handshake;
pub mod proto;
pub mod tls;

mod budget;
mod socket;
mod transmit;

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use sealvol_block::BlockDevice;

use self::budget::Budget;
use self::handshake::{Export, Negotiated, Tls};
pub use self::proto::{MAX_REQUEST, PREFERRED_MAX};
pub use self::socket::Conn;
use self::socket::Listener;
use self::tls::TlsCreds;
use self::transmit::Setup;
use crate::{Error, Result};

/// How to serve.
#[derive(Clone, Debug)]
pub struct NbdOptions {
    /// Refuse writes, trims and zeroing (`NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
    /// The export's name; the empty name (the default export) is accepted too.
    pub name: String,
    /// Worker threads per connection (for requests above 64 KiB, flushes, trims and
    /// zeroing; smaller reads and writes run on the connection's own thread).
    pub workers: usize,
    /// Clients served at once; one more is refused (closed at once) and logged.
    pub max_connections: usize,
    /// Time a client has for the whole handshake (TLS included) before it is dropped.
    pub handshake_timeout: Duration,
    /// Time a client has to read a reply, or to finish sending a request it began (a
    /// write's payload), before its connection is ended. Idle time between requests is
    /// not limited.
    pub send_timeout: Duration,
    /// Bytes held for requests in flight across all connections: write payloads read and
    /// read replies not yet sent. A request larger than this still runs, alone.
    pub max_in_flight: usize,
    /// Speak only TLS (`NBD_OPT_STARTTLS` first), with these credentials.
    pub tls: Option<TlsCreds>,
    /// Let [`Server::bind_tcp`] serve plaintext without TLS (every local user can connect).
    pub allow_plaintext_tcp: bool,
}

/// Default of [`NbdOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Default of [`NbdOptions::handshake_timeout`] (as qemu-nbd's `--handshake-limit`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`NbdOptions::send_timeout`].
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`NbdOptions::max_in_flight`]: 64 MiB, room for a qemu client's 16 requests of
/// [`PREFERRED_MAX`] bytes.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64 << 20;

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            read_only: false,
            name: String::new(),
            workers: 2,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            tls: None,
            allow_plaintext_tcp: false,
        }
    }
}

/// What every connection of a server shares.
struct Ctx<'a> {
    dev: &'a dyn BlockDevice,
    opts: &'a NbdOptions,
    budget: Arc<Budget>,
    stop: &'a AtomicBool,
}

/// An NBD server bound to its socket.
pub struct Server {
    dev: Arc<dyn BlockDevice>,
    opts: NbdOptions,
    listener: Listener,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.endpoint())
            .field("opts", &self.opts)
            .finish()
    }
}

/// A connection the server is serving: its socket, to shut down on stop, and the end of its
/// handshake time while it negotiates.
struct Live {
    id: u64,
    conn: Conn,
    handshake_until: Option<Instant>,
}

impl Server {
    /// Listens on the unix socket `path`, made with mode 0600 whatever the umask. A stale
    /// socket file is replaced; a symlink, any other file, or a socket a server answers on
    /// is refused.
    ///
    /// # Errors
    /// [`Error::Invalid`] for what is refused; [`Error::Io`] when binding fails.
    pub fn bind_unix(dev: Arc<dyn BlockDevice>, path: &Path, opts: NbdOptions) -> Result<Self> {
        let listener = socket::bind_unix(path)?;
        Ok(Server {
            dev,
            opts,
            listener,
        })
    }

    /// Listens on the loopback TCP address `addr` (port 0 picks a free port). Needs TLS
    /// credentials in `opts.tls`, or `opts.allow_plaintext_tcp`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an address that is not loopback, or plaintext not allowed;
    /// [`Error::Io`] when binding fails (port in use).
    pub fn bind_tcp(dev: Arc<dyn BlockDevice>, addr: SocketAddr, opts: NbdOptions) -> Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "{addr} is not a loopback address; sealvol only listens on 127.0.0.1 or ::1 \
                 (use a unix socket to share the volume with a VM)"
            )));
        }
        if opts.tls.is_none() && !opts.allow_plaintext_tcp {
            return Err(Error::Invalid(format!(
                "a TCP port on {addr} without TLS would serve the plaintext volume to every \
                 local user; give TLS credentials (--tls-creds DIR: a directory with \
                 ca-cert.pem, server-cert.pem and server-key.pem, as qemu's tls-creds-x509 \
                 expects; clients then need a certificate signed by ca-cert.pem), use a unix \
                 socket (--socket PATH, mode 0600), or accept the risk with \
                 --insecure-plaintext"
            )));
        }
        Ok(Server {
            dev,
            opts,
            listener: socket::bind_tcp(addr)?,
        })
    }

    /// Where clients connect: the socket path or `host:port`.
    pub fn endpoint(&self) -> String {
        match &self.listener {
            Listener::Unix { path, .. } => path.display().to_string(),
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
        }
    }

    /// Accepts and serves clients until `stop` is set, then ends every connection (within
    /// a fraction of a second), flushes the device, and removes the socket file.
    ///
    /// # Errors
    /// [`Error::Io`] when accepting fails for good; the final flush's error.
    pub fn serve(&self, stop: &AtomicBool) -> Result<()> {
        let ctx = Ctx {
            dev: self.dev.as_ref(),
            opts: &self.opts,
            budget: Budget::new(self.opts.max_in_flight),
            stop,
        };
        self.listener
            .set_nonblocking()
            .map_err(|e| Error::io("cannot configure the listening socket", e))?;
        let live: Mutex<Vec<Live>> = Mutex::new(Vec::new());
        let lock_live = || live.lock().unwrap_or_else(|e| e.into_inner());
        let next_id = AtomicU64::new(0);
        let tick = Timespec::try_from(Duration::from_millis(100)).expect("a small duration");
        let result = std::thread::scope(|s| -> Result<()> {
            let result = loop {
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                let now = Instant::now();
                for l in lock_live().iter_mut() {
                    if l.handshake_until.is_some_and(|t| now >= t) {
                        tracing::warn!(
                            id = l.id,
                            limit_s = self.opts.handshake_timeout.as_secs_f32(),
                            "NBD client did not finish its handshake in time; dropping it"
                        );
                        l.handshake_until = None;
                        l.conn.shutdown();
                    }
                }
                let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
                match rustix::event::poll(&mut fds, Some(&tick)) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => {}
                    Err(e) => break Err(Error::io("waiting for clients", e.into())),
                }
                let conn = match self.listener.accept() {
                    Ok(c) if c.set_nonblocking(false).is_ok() => c,
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::Interrupted
                                | io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        continue
                    }
                    Err(e) => {
                        // Out of file descriptors or memory: refuse for now, keep serving.
                        tracing::warn!(error = %e, "cannot accept an NBD client");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let mut all = lock_live();
                if all.len() >= self.opts.max_connections {
                    drop(all);
                    tracing::warn!(
                        limit = self.opts.max_connections,
                        "refusing an NBD client: the connection limit is reached"
                    );
                    drop(conn);
                    continue;
                }
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let Ok(clone) = conn.try_clone() else {
                    continue;
                };
                all.push(Live {
                    id,
                    conn: clone,
                    handshake_until: Some(Instant::now() + self.opts.handshake_timeout),
                });
                drop(all);
                let ctx = &ctx;
                let lock_live = &lock_live;
                s.spawn(move || {
                    tracing::info!(id, "NBD client connected");
                    let negotiated = || {
                        if let Some(l) = lock_live().iter_mut().find(|l| l.id == id) {
                            l.handshake_until = None;
                        }
                    };
                    match serve_client(ctx, conn, &negotiated) {
                        Ok(()) => tracing::info!(id, "NBD client disconnected"),
                        Err(e) => tracing::warn!(id, error = %e, "NBD connection ended"),
                    }
                    lock_live().retain(|l| l.id != id);
                });
            };
            for l in lock_live().iter() {
                l.conn.shutdown();
            }
            ctx.budget.wake_all();
            result
        });
        self.listener.remove_socket_file();
        let flushed = self
            .dev
            .flush()
            .map_err(|e| Error::io("final flush", io::Error::other(e.to_string())));
        result.and(flushed)
    }
}

/// Binds a unix socket at `path` with mode 0600 whatever the umask, as the NBD server does
/// (bound in a private 0700 directory, made 0600, renamed into place; a stale socket is
/// replaced, a symlink, another file or a socket a server answers on is refused): for other
/// servers of root-only sockets (the daemon's API and volume plugin).
///
/// # Errors
/// [`Error::Invalid`] for what is refused at `path`; [`Error::Io`] when binding fails.
pub fn bind_private_unix(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    match socket::bind_unix(path)? {
        Listener::Unix { listener, .. } => Ok(listener),
        Listener::Tcp(_) => unreachable!("bind_unix makes unix sockets"),
    }
}

/// Serves one client on `conn`: handshake (TLS when `opts.tls` is set), then requests until
/// it disconnects. For a server use [`Server::serve`], which also bounds the handshake's
/// time, the number of clients, and stops; this serves a single connection (tests, fuzzing).
///
/// # Errors
/// Protocol violations and I/O errors of the connection.
pub fn serve_connection(dev: &Arc<dyn BlockDevice>, opts: &NbdOptions, conn: Conn) -> Result<()> {
    let never = AtomicBool::new(false);
    let ctx = Ctx {
        dev: dev.as_ref(),
        opts,
        budget: Budget::new(opts.max_in_flight),
        stop: &never,
    };
    serve_client(&ctx, conn, &|| {})
}

/// The transmission flags of this export.
fn transmission_flags(dev: &dyn BlockDevice, opts: &NbdOptions) -> u16 {
    use self::proto::*;
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
    if opts.read_only || dev.read_only() {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    }
    f
}

/// Handshake, TLS if asked, transmission. `negotiated` is called once the client chose the
/// export (the handshake's time limit ends there).
fn serve_client(ctx: &Ctx<'_>, mut raw: Conn, negotiated: &dyn Fn()) -> Result<()> {
    let opts = ctx.opts;
    let io_err = |e: io::Error| Error::io("NBD connection", e);
    raw.set_send_timeout(opts.send_timeout).map_err(io_err)?;
    let export = Export {
        name: &opts.name,
        size: ctx.dev.size(),
        flags: transmission_flags(ctx.dev, opts),
        block_size: ctx.dev.block_size(),
    };
    let setup = Setup {
        dev: ctx.dev,
        read_only: opts.read_only || ctx.dev.read_only(),
        workers: opts.workers,
        send_timeout: opts.send_timeout,
        budget: &ctx.budget,
        stop: ctx.stop,
    };
    let client = handshake::greet(&mut raw)?;
    let tls = if opts.tls.is_some() {
        Tls::Required
    } else {
        Tls::Off
    };
    match handshake::negotiate(&mut raw, &export, client, tls)? {
        Negotiated::Aborted => Ok(()),
        Negotiated::Transmission => {
            negotiated();
            transmit::transmission(&setup, raw)
        }
        Negotiated::StartTls => {
            let creds = opts.tls.as_ref().ok_or_else(|| {
                Error::Protocol("STARTTLS acknowledged without credentials".into())
            })?;
            let session = creds.connection()?;
            let (local, remote) = UnixStream::pair().map_err(io_err)?;
            std::thread::scope(|s| {
                let pump = s.spawn(|| tls::pump(raw, session, remote, opts.send_timeout, ctx.stop));
                let served = (|| -> Result<()> {
                    let mut conn = Conn::Unix(local);
                    conn.set_send_timeout(opts.send_timeout).map_err(io_err)?;
                    match handshake::negotiate(&mut conn, &export, client, Tls::Active)? {
                        Negotiated::Transmission => {
                            negotiated();
                            transmit::transmission(&setup, conn)
                        }
                        _ => Ok(()),
                    }
                })(); // `conn` is closed here: the pump sends close_notify and ends
                let pumped = pump
                    .join()
                    .unwrap_or_else(|_| Err(Error::Protocol("the TLS pump panicked".into())));
                // A refused certificate ends the pump first; its error says why.
                pumped.and(served)
            })
        }
    }
}

#[cfg(test)]
mod tests;
