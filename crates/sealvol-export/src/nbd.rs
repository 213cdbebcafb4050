//! An NBD server for one block device.
//!
//! Protocol: the fixed newstyle handshake of the NBD protocol (`doc/proto.md` of the
//! reference implementation), options `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_LIST` and `NBD_OPT_ABORT` (others get `NBD_REP_ERR_UNSUP`, structured replies
//! included), then simple replies to `READ`, `WRITE` (with `FUA`), `FLUSH`, `TRIM`,
//! `WRITE_ZEROES` and `DISC`.
//!
//! Each connection has a reader (the connection's thread, which also takes in write
//! payloads) and a few workers that run requests and send replies, so a client with many
//! requests in flight (qemu keeps up to 16) keeps both cores busy. Requests are at most
//! [`MAX_REQUEST`] bytes; the block-size information advertises [`PREFERRED_MAX`], which
//! qemu honours, so memory stays bounded.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use sealvol_block::BlockDevice;

use crate::{Error, Result};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1 << 0;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_TRIM: u16 = 1 << 5;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_FLAG_FUA: u16 = 1 << 0;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const ENOMEM: u32 = 12;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;
const ENOTSUP: u32 = 95;

/// Largest read or write accepted (the protocol's customary 32 MiB).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest request the block-size information asks clients to send.
pub const PREFERRED_MAX: u32 = 4 << 20;

/// The socket send buffer asked for: a whole reply of [`PREFERRED_MAX`] bytes.
const SEND_BUFFER: usize = PREFERRED_MAX as usize;
/// Largest option payload accepted during the handshake.
const MAX_OPTION: u32 = 64 << 10;

/// How to serve.
#[derive(Clone, Debug)]
pub struct NbdOptions {
    /// Refuse writes, trims and zeroing (`NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
    /// The export's name; the empty name (the default export) is accepted too.
    pub name: String,
    /// Worker threads per connection.
    pub workers: usize,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            read_only: false,
            name: String::new(),
            workers: 2,
        }
    }
}

/// A client connection.
#[derive(Debug)]
pub enum Conn {
    /// Over a unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    /// Asks for a send buffer that holds a whole large reply, so that a reply goes out in
    /// one or two writes instead of many small wake-ups of the client. Best effort.
    fn widen_send_buffer(&self) {
        let r = match self {
            Conn::Unix(s) => rustix::net::sockopt::set_socket_send_buffer_size(s, SEND_BUFFER),
            Conn::Tcp(s) => rustix::net::sockopt::set_socket_send_buffer_size(s, SEND_BUFFER),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not widen the socket's send buffer");
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write_vectored(bufs),
            Conn::Tcp(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
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

impl Server {
    /// Listens on the unix socket `path` (a stale socket file is replaced; any other file
    /// there is refused).
    ///
    /// # Errors
    /// [`Error::Invalid`] when `path` exists and is not a socket, or a server answers on it;
    /// [`Error::Io`] when binding fails.
    pub fn bind_unix(dev: Arc<dyn BlockDevice>, path: &Path, opts: NbdOptions) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(Error::Invalid(format!(
                    "{} exists and is not a socket; choose another --socket path",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Invalid(format!(
                    "a server is already listening on {}; stop it or choose another --socket path",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
        Ok(Server {
            dev,
            opts,
            listener: Listener::Unix(l, path.to_path_buf()),
        })
    }

    /// Listens on the loopback TCP address `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an address that is not loopback; [`Error::Io`] when binding
    /// fails (port in use).
    pub fn bind_tcp(dev: Arc<dyn BlockDevice>, addr: SocketAddr, opts: NbdOptions) -> Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "{addr} is not a loopback address; NBD has no authentication, so sealvol only \
                 listens on 127.0.0.1 or ::1 (use a unix socket to share it with a VM)"
            )));
        }
        let l = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
        Ok(Server {
            dev,
            opts,
            listener: Listener::Tcp(l),
        })
    }

    /// Where clients connect: the socket path or `host:port`.
    pub fn endpoint(&self) -> String {
        match &self.listener {
            Listener::Unix(_, p) => p.display().to_string(),
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
        }
    }

    /// Accepts and serves clients until `stop` is set, then closes every connection,
    /// flushes the device, and removes the socket file.
    ///
    /// # Errors
    /// [`Error::Io`] when accepting fails for good; the final flush's error.
    pub fn serve(&self, stop: &AtomicBool) -> Result<()> {
        let set_nb = match &self.listener {
            Listener::Unix(l, _) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        };
        set_nb.map_err(|e| Error::io("cannot configure the listening socket", e))?;
        let live: Mutex<Vec<(u64, Conn)>> = Mutex::new(Vec::new());
        let next_id = AtomicU64::new(0);
        let result = std::thread::scope(|s| -> Result<()> {
            while !stop.load(Ordering::SeqCst) {
                let accepted = match &self.listener {
                    Listener::Unix(l, _) => l.accept().map(|(c, _)| Conn::Unix(c)),
                    Listener::Tcp(l) => l.accept().map(|(c, _)| {
                        let _ = c.set_nodelay(true);
                        Conn::Tcp(c)
                    }),
                };
                let conn = match accepted {
                    Ok(c) => c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io("accepting a client", e)),
                };
                let set_blocking = match &conn {
                    Conn::Unix(c) => c.set_nonblocking(false),
                    Conn::Tcp(c) => c.set_nonblocking(false),
                };
                if set_blocking.is_err() {
                    continue;
                }
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                if let Ok(c) = conn.try_clone() {
                    live.lock().unwrap_or_else(|e| e.into_inner()).push((id, c));
                }
                let live = &live;
                s.spawn(move || {
                    tracing::info!(id, "NBD client connected");
                    match serve_connection(&self.dev, &self.opts, conn) {
                        Ok(()) => tracing::info!(id, "NBD client disconnected"),
                        Err(e) => tracing::warn!(id, error = %e, "NBD connection ended"),
                    }
                    live.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|(i, _)| *i != id);
                });
            }
            for (_, c) in live.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                c.shutdown();
            }
            Ok(())
        });
        if let Listener::Unix(_, p) = &self.listener {
            let _ = std::fs::remove_file(p);
        }
        let flushed = self
            .dev
            .flush()
            .map_err(|e| Error::io("final flush", io::Error::other(e.to_string())));
        result.and(flushed)
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(w: &mut impl Write, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

fn proto(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

fn io_err(e: io::Error) -> Error {
    Error::io("NBD connection", e)
}

/// The transmission flags of this export.
fn transmission_flags(dev: &dyn BlockDevice, opts: &NbdOptions) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
    if opts.read_only || dev.read_only() {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    }
    f
}

/// Runs the handshake; returns whether the client asked for transmission (`false`: it
/// aborted or went away).
fn handshake(dev: &dyn BlockDevice, opts: &NbdOptions, conn: &mut Conn) -> Result<bool> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.write_all(&hello).map_err(io_err)?;
    let client_flags = read_u32(conn).map_err(io_err)?;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let size = dev.size();
    let tflags = transmission_flags(dev, opts);
    loop {
        let magic = match read_u64(conn) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(io_err(e)),
        };
        if magic != IHAVEOPT {
            return Err(proto(format!("option magic {magic:#x}, expected IHAVEOPT")));
        }
        let opt = read_u32(conn).map_err(io_err)?;
        let len = read_u32(conn).map_err(io_err)?;
        if len > MAX_OPTION {
            return Err(proto(format!(
                "option {opt} carries {len} bytes; at most {MAX_OPTION}"
            )));
        }
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data).map_err(io_err)?;
        let name_ok = |n: &[u8]| n.is_empty() || n == opts.name.as_bytes();
        match opt {
            OPT_EXPORT_NAME => {
                if !name_ok(&data) {
                    // This option has no error reply: the server closes.
                    return Err(proto(format!(
                        "the client asked for export {:?}; this server has {:?}",
                        String::from_utf8_lossy(&data),
                        opts.name
                    )));
                }
                let mut m = Vec::with_capacity(134);
                m.extend_from_slice(&size.to_be_bytes());
                m.extend_from_slice(&tflags.to_be_bytes());
                if !no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                conn.write_all(&m).map_err(io_err)?;
                return Ok(true);
            }
            OPT_ABORT => {
                let _ = option_reply(conn, opt, REP_ACK, &[]);
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(conn, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                        .map_err(io_err)?;
                    continue;
                }
                let mut d = (opts.name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(opts.name.as_bytes());
                option_reply(conn, opt, REP_SERVER, &d).map_err(io_err)?;
                option_reply(conn, opt, REP_ACK, &[]).map_err(io_err)?;
            }
            OPT_INFO | OPT_GO => {
                // u32 name length, name, u16 number of info requests, u16 each.
                let parsed = (|| {
                    let nlen = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
                    let name = data.get(4..4 + nlen)?;
                    let rest = data.get(4 + nlen..)?;
                    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
                    let reqs = rest.get(2..)?;
                    if reqs.len() != 2 * n {
                        return None;
                    }
                    let reqs: Vec<u16> = reqs
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    Some((name.to_vec(), reqs))
                })();
                let Some((name, reqs)) = parsed else {
                    option_reply(
                        conn,
                        opt,
                        REP_ERR_INVALID,
                        b"malformed NBD_OPT_INFO/GO request",
                    )
                    .map_err(io_err)?;
                    continue;
                };
                if !name_ok(&name) {
                    let msg = format!("no export named {:?}", String::from_utf8_lossy(&name));
                    option_reply(conn, opt, REP_ERR_UNKNOWN, msg.as_bytes()).map_err(io_err)?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&tflags.to_be_bytes());
                option_reply(conn, opt, REP_INFO, &info).map_err(io_err)?;
                if reqs.contains(&INFO_BLOCK_SIZE) {
                    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    bs.extend_from_slice(&1u32.to_be_bytes());
                    bs.extend_from_slice(&dev.block_size().max(4096).to_be_bytes());
                    bs.extend_from_slice(&PREFERRED_MAX.to_be_bytes());
                    option_reply(conn, opt, REP_INFO, &bs).map_err(io_err)?;
                }
                option_reply(conn, opt, REP_ACK, &[]).map_err(io_err)?;
                if opt == OPT_GO {
                    return Ok(true);
                }
            }
            _ => {
                option_reply(conn, opt, REP_ERR_UNSUP, b"option not supported by sealvol")
                    .map_err(io_err)?;
            }
        }
    }
}

/// One request, ready for a worker.
struct Job {
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: Vec<u8>,
}

/// The NBD error number for a device error.
fn nbd_errno(e: &sealvol_block::Error) -> u32 {
    match e {
        sealvol_block::Error::ReadOnly { .. } => EPERM,
        sealvol_block::Error::OutOfRange { .. } => EINVAL,
        other => match other.errno() as u32 {
            x @ (EPERM | EIO | ENOMEM | EINVAL | ENOSPC | EOVERFLOW | ENOTSUP) => x,
            _ => EIO,
        },
    }
}

fn simple_reply(w: &Mutex<Conn>, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    if data.is_empty() {
        return w.write_all(&h);
    }
    // Header and data in as few writes as possible.
    let mut bufs = [io::IoSlice::new(&h), io::IoSlice::new(data)];
    let mut slices: &mut [io::IoSlice<'_>] = &mut bufs;
    while !slices.is_empty() {
        let n = w.write_vectored(slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn run_job(dev: &dyn BlockDevice, read_only: bool, job: &Job, buf: &mut Vec<u8>) -> (u32, bool) {
    let size = dev.size();
    let in_range = job
        .offset
        .checked_add(job.len.into())
        .is_some_and(|end| end <= size);
    let fua = |r: sealvol_block::Result<()>| {
        r.and_then(|()| {
            if job.flags & CMD_FLAG_FUA != 0 {
                dev.flush()
            } else {
                Ok(())
            }
        })
    };
    let writes = matches!(job.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && read_only {
        return (EPERM, false);
    }
    if matches!(job.kind, CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) && !in_range {
        return (if writes { ENOSPC } else { EINVAL }, false);
    }
    let result = match job.kind {
        CMD_READ => {
            buf.resize(job.len as usize, 0);
            return match dev.read_at(buf, job.offset) {
                Ok(()) => (0, true),
                Err(e) => {
                    tracing::error!(offset = job.offset, len = job.len, error = %e, "NBD read failed");
                    (nbd_errno(&e), false)
                }
            };
        }
        CMD_WRITE => fua(dev.write_at(&job.payload, job.offset)),
        CMD_FLUSH => dev.flush(),
        CMD_TRIM => fua(dev.discard(job.offset, job.len.into())),
        CMD_WRITE_ZEROES => fua(dev.write_zeroes(job.offset, job.len.into())),
        _ => return (EINVAL, false),
    };
    match result {
        Ok(()) => (0, false),
        Err(e) => {
            tracing::error!(kind = job.kind, offset = job.offset, len = job.len, error = %e, "NBD request failed");
            (nbd_errno(&e), false)
        }
    }
}

/// Serves one client: handshake, then requests until it disconnects.
///
/// # Errors
/// Protocol violations and I/O errors of the connection.
pub fn serve_connection(
    dev: &Arc<dyn BlockDevice>,
    opts: &NbdOptions,
    mut conn: Conn,
) -> Result<()> {
    if !handshake(dev.as_ref(), opts, &mut conn)? {
        return Ok(());
    }
    let read_only = opts.read_only || dev.read_only();
    conn.widen_send_buffer();
    let writer = Mutex::new(conn.try_clone().map_err(io_err)?);
    let failed = AtomicBool::new(false);
    let workers = opts.workers.max(1);
    let (tx, rx) = mpsc::sync_channel::<Job>(workers);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        match rx.recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        }
                    };
                    let (err, with_data) = run_job(dev.as_ref(), read_only, &job, &mut buf);
                    let data: &[u8] = if with_data { &buf } else { &[] };
                    if simple_reply(&writer, job.cookie, err, data).is_err() {
                        failed.store(true, Ordering::SeqCst);
                        return;
                    }
                    if buf.capacity() > PREFERRED_MAX as usize {
                        buf = Vec::new();
                    }
                }
            });
        }
        let result = (|| -> Result<()> {
            let mut head = [0u8; 28];
            loop {
                if failed.load(Ordering::SeqCst) {
                    return Err(proto("a reply could not be sent"));
                }
                match conn.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(io_err(e)),
                }
                let magic = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes"));
                if magic != REQUEST_MAGIC {
                    return Err(proto(format!("request magic {magic:#x}")));
                }
                let flags = u16::from_be_bytes(head[4..6].try_into().expect("2 bytes"));
                let kind = u16::from_be_bytes(head[6..8].try_into().expect("2 bytes"));
                let cookie = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
                let offset = u64::from_be_bytes(head[16..24].try_into().expect("8 bytes"));
                let len = u32::from_be_bytes(head[24..28].try_into().expect("4 bytes"));
                if kind == CMD_DISC {
                    return Ok(());
                }
                if matches!(kind, CMD_READ | CMD_WRITE) && len > MAX_REQUEST {
                    // A write's payload cannot be skipped safely at this size: hang up.
                    return Err(proto(format!(
                        "a request of {len} bytes; at most {MAX_REQUEST}"
                    )));
                }
                let mut payload = Vec::new();
                if kind == CMD_WRITE {
                    payload.resize(len as usize, 0);
                    conn.read_exact(&mut payload).map_err(io_err)?;
                }
                let job = Job {
                    kind,
                    flags,
                    cookie,
                    offset,
                    len,
                    payload,
                };
                if tx.send(job).is_err() {
                    return Err(proto("the workers stopped"));
                }
            }
        })();
        drop(tx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealvol_block::MemDevice;

    fn read_u16(r: &mut impl Read) -> io::Result<u16> {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    /// A tiny client for the tests.
    struct Client(UnixStream);

    impl Client {
        fn option(&mut self, opt: u32, data: &[u8]) {
            let mut m = IHAVEOPT.to_be_bytes().to_vec();
            m.extend_from_slice(&opt.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            self.0.write_all(&m).unwrap();
        }

        fn reply(&mut self) -> (u32, u32, Vec<u8>) {
            assert_eq!(read_u64(&mut self.0).unwrap(), REPLY_MAGIC_OPT);
            let opt = read_u32(&mut self.0).unwrap();
            let kind = read_u32(&mut self.0).unwrap();
            let len = read_u32(&mut self.0).unwrap();
            let mut d = vec![0u8; len as usize];
            self.0.read_exact(&mut d).unwrap();
            (opt, kind, d)
        }

        fn request(
            &mut self,
            kind: u16,
            flags: u16,
            cookie: u64,
            offset: u64,
            len: u32,
            data: &[u8],
        ) {
            let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
            m.extend_from_slice(&flags.to_be_bytes());
            m.extend_from_slice(&kind.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m.extend_from_slice(&offset.to_be_bytes());
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(data);
            self.0.write_all(&m).unwrap();
        }

        fn simple(&mut self, data_len: usize) -> (u32, u64, Vec<u8>) {
            assert_eq!(read_u32(&mut self.0).unwrap(), SIMPLE_REPLY_MAGIC);
            let err = read_u32(&mut self.0).unwrap();
            let cookie = read_u64(&mut self.0).unwrap();
            let mut d = vec![0u8; if err == 0 { data_len } else { 0 }];
            self.0.read_exact(&mut d).unwrap();
            (err, cookie, d)
        }
    }

    fn start(
        dev: Arc<dyn BlockDevice>,
        opts: NbdOptions,
    ) -> (Client, std::thread::JoinHandle<Result<()>>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_connection(&dev, &opts, Conn::Unix(a)));
        let mut c = Client(b);
        assert_eq!(read_u64(&mut c.0).unwrap(), NBDMAGIC);
        assert_eq!(read_u64(&mut c.0).unwrap(), IHAVEOPT);
        assert_eq!(
            read_u16(&mut c.0).unwrap(),
            FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
        );
        c.0.write_all(&(1u32 | CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
        (c, t)
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    #[test]
    fn handshake_options_then_io() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
        let opts = NbdOptions {
            name: "vol".into(),
            ..NbdOptions::default()
        };
        let (mut c, t) = start(Arc::clone(&dev), opts);
        c.option(OPT_LIST, &[]);
        let (_, kind, d) = c.reply();
        assert_eq!(kind, REP_SERVER);
        assert_eq!(&d[4..], b"vol");
        assert_eq!(c.reply().1, REP_ACK);
        c.option(99, &[]);
        assert_eq!(c.reply().1, REP_ERR_UNSUP);
        c.option(OPT_INFO, &go_data("nope", &[]));
        assert_eq!(c.reply().1, REP_ERR_UNKNOWN);
        c.option(OPT_INFO, &[1, 2, 3]);
        assert_eq!(c.reply().1, REP_ERR_INVALID);
        c.option(OPT_GO, &go_data("vol", &[INFO_BLOCK_SIZE]));
        let (opt, kind, info) = c.reply();
        assert_eq!((opt, kind), (OPT_GO, REP_INFO));
        assert_eq!(u64::from_be_bytes(info[2..10].try_into().unwrap()), 1 << 20);
        let flags = u16::from_be_bytes(info[10..12].try_into().unwrap());
        assert_eq!(flags & TF_READ_ONLY, 0);
        assert_ne!(flags & TF_SEND_TRIM, 0);
        let (_, kind, bs) = c.reply();
        assert_eq!(kind, REP_INFO);
        assert_eq!(u16::from_be_bytes([bs[0], bs[1]]), INFO_BLOCK_SIZE);
        assert_eq!(c.reply().1, REP_ACK);

        c.request(CMD_WRITE, CMD_FLAG_FUA, 7, 1000, 5, b"hello");
        assert_eq!(c.simple(0), (0, 7, vec![]));
        c.request(CMD_READ, 0, 8, 998, 9, &[]);
        assert_eq!(c.simple(9), (0, 8, b"\0\0hello\0\0".to_vec()));
        c.request(CMD_WRITE_ZEROES, 0, 9, 1001, 2, &[]);
        assert_eq!(c.simple(0).0, 0);
        c.request(CMD_READ, 0, 10, 1000, 5, &[]);
        assert_eq!(c.simple(5).2, b"h\0\0lo".to_vec());
        c.request(CMD_FLUSH, 0, 11, 0, 0, &[]);
        assert_eq!(c.simple(0).0, 0);
        c.request(CMD_READ, 0, 12, (1 << 20) - 2, 4, &[]);
        assert_eq!(c.simple(0).0, EINVAL);
        c.request(CMD_TRIM, 0, 13, 0, 4096, &[]);
        assert_eq!(c.simple(0).0, 0);
        c.request(CMD_DISC, 0, 14, 0, 0, &[]);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn read_only_export_refuses_writes_and_says_so() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4096));
        let opts = NbdOptions {
            read_only: true,
            ..NbdOptions::default()
        };
        let (mut c, t) = start(dev, opts);
        c.option(OPT_EXPORT_NAME, b"");
        let size = read_u64(&mut c.0).unwrap();
        let flags = read_u16(&mut c.0).unwrap();
        assert_eq!(size, 4096);
        assert_ne!(flags & TF_READ_ONLY, 0);
        c.request(CMD_WRITE, 0, 1, 0, 3, b"abc");
        assert_eq!(c.simple(0).0, EPERM);
        c.request(CMD_READ, 0, 2, 0, 3, &[]);
        assert_eq!(c.simple(3), (0, 2, vec![0, 0, 0]));
        drop(c);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn tcp_only_on_loopback() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4096));
        let err = Server::bind_tcp(
            Arc::clone(&dev),
            "0.0.0.0:0".parse().unwrap(),
            NbdOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let s =
            Server::bind_tcp(dev, "127.0.0.1:0".parse().unwrap(), NbdOptions::default()).unwrap();
        assert!(s.endpoint().starts_with("127.0.0.1:"));
    }

    #[test]
    fn server_serves_a_unix_socket_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(8192));
        let server = Server::bind_unix(dev, &sock, NbdOptions::default()).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| server.serve(&stop));
            let mut c = Client(UnixStream::connect(&sock).unwrap());
            assert_eq!(read_u64(&mut c.0).unwrap(), NBDMAGIC);
            // The server closes this idle client when it stops.
            stop.store(true, Ordering::SeqCst);
            h.join().unwrap().unwrap();
        });
        assert!(!sock.exists());
    }
}
