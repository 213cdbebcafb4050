//! TLS for NBD (`NBD_OPT_STARTTLS`): x509 credentials laid out as qemu's `tls-creds-x509`
//! wants them, mutual authentication, and a pump thread that carries the TLS stream.
//!
//! Credentials: a directory with `ca-cert.pem` (the CA client certificates must chain to),
//! `server-cert.pem` (the server's certificate, its chain after it) and `server-key.pem`
//! (its private key, PKCS#8, PKCS#1 or SEC1) — the files of qemu's
//! `--object tls-creds-x509,dir=DIR,endpoint=server,verify-peer=on`, so one directory serves
//! both. The client certificate is the authentication: a client without one, or with one
//! no CA in `ca-cert.pem` signed, fails the TLS handshake. rustls has no TLS-PSK, so x509 is
//! the only kind of credential.
//!
//! Transport: after `NBD_OPT_STARTTLS` a pump thread owns the client's socket and a rustls
//! connection, and bridges it to one end of a local socket pair; the connection's ordinary
//! code (reader, workers, handshake) serves the other end as it serves a plain client. So
//! plain connections pay nothing for TLS, and every wait of the plain path (send timeout,
//! shutdown on stop) works unchanged on the TLS one. The pump holds at most 256 KiB of
//! plaintext and one chunk of records per direction, and ends when either side ends, when
//! the client reads no TLS data for the send timeout, or when the server stops.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::socket::Conn;
use crate::{Error, Result};

/// The files of a credentials directory, as qemu names them.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server's certificate (chain) file.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key file.
pub const SERVER_KEY: &str = "server-key.pem";

/// Server TLS credentials, loaded and checked.
#[derive(Clone)]
pub struct TlsCreds {
    dir: PathBuf,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCreds").field("dir", &self.dir).finish()
    }
}

impl TlsCreds {
    /// Loads `dir/ca-cert.pem`, `dir/server-cert.pem` and `dir/server-key.pem`.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the file that is missing or unusable and what it must hold.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let problem = |p: String| Error::Tls {
            dir: dir.to_path_buf(),
            problem: format!(
                "{p} (the directory holds {CA_CERT}, the CA that signs client certificates, \
                 {SERVER_CERT} and {SERVER_KEY}, as qemu's tls-creds-x509 expects)"
            ),
        };
        let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>> {
            let path = dir.join(name);
            let v = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| problem(format!("cannot read certificates from {name}: {e}")))?;
            if v.is_empty() {
                return Err(problem(format!("{name} holds no PEM certificate")));
            }
            Ok(v)
        };
        let ca = certs(CA_CERT)?;
        let chain = certs(SERVER_CERT)?;
        let key = PrivateKeyDer::from_pem_file(dir.join(SERVER_KEY))
            .map_err(|e| problem(format!("cannot read a private key from {SERVER_KEY}: {e}")))?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| problem(format!("a certificate in {CA_CERT} is not usable: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| problem(format!("cannot verify clients with {CA_CERT}: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| problem(format!("no TLS version: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                problem(format!(
                    "{SERVER_CERT} and {SERVER_KEY} do not make a usable pair: {e}"
                ))
            })?;
        Ok(TlsCreds {
            dir: dir.to_path_buf(),
            config: Arc::new(config),
        })
    }

    /// The directory the credentials came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn connection(&self) -> Result<ServerConnection> {
        ServerConnection::new(Arc::clone(&self.config)).map_err(|e| Error::Tls {
            dir: self.dir.clone(),
            problem: format!("cannot start a TLS session: {e}"),
        })
    }
}

/// Plaintext the pump holds on its way to the local side, at most.
const DOWN_MAX: usize = 256 << 10;
/// One read of plaintext from the local side.
const CHUNK: usize = 64 << 10;
/// How often an idle pump looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Carries TLS between the client's socket `raw` and the local socket `local` until one of
/// them ends, the client stops reading for `send_timeout`, or `stop` is set.
///
/// # Errors
/// A failed TLS handshake (the client's certificate is refused, ...), or a socket error.
pub(crate) fn pump(
    mut raw: Conn,
    mut tls: ServerConnection,
    mut local: UnixStream,
    send_timeout: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let io_err = |what: &str, e: io::Error| Error::io(format!("TLS pump: {what}"), e);
    raw.set_nonblocking(true)
        .map_err(|e| io_err("non-blocking socket", e))?;
    local
        .set_nonblocking(true)
        .map_err(|e| io_err("non-blocking socket", e))?;
    let mut down: Vec<u8> = Vec::new();
    let mut down_at = 0usize;
    let mut chunk = vec![0u8; CHUNK];
    let mut local_done = false;
    let mut peer_done = false;
    let mut local_hup = false;
    let mut last_sent = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut moved = false;
        // TLS records out to the client.
        while tls.wants_write() {
            match tls.write_tls(&mut raw) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    moved = true;
                    last_sent = Instant::now();
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(io_err("sending to the client", e)),
            }
        }
        if local_done && !tls.wants_write() {
            return Ok(());
        }
        // Plaintext from the client, to the local side.
        if down_at == down.len() && !peer_done {
            down.clear();
            down_at = 0;
            while down.len() < DOWN_MAX {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => {
                        peer_done = true;
                        break;
                    }
                    Ok(n) => down.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        peer_done = true; // closed without close_notify
                        break;
                    }
                }
            }
        }
        while down_at < down.len() {
            match local.write(&down[down_at..]) {
                Ok(n) => {
                    down_at += n;
                    moved = true;
                }
                Err(e) if would_block(&e) => break,
                Err(_) => return Ok(()), // the connection ended
            }
        }
        if peer_done && down_at == down.len() {
            return Ok(()); // the client is gone; dropping `local` ends the connection
        }
        // Plaintext from the local side, to the client: only while no records wait, so
        // a client that does not read holds up the local side, not our memory.
        let take_local = !tls.is_handshaking() && !tls.wants_write() && !local_done;
        if take_local {
            match local.read(&mut chunk) {
                Ok(0) => {
                    tls.send_close_notify();
                    local_done = true;
                    moved = true;
                }
                Ok(n) => {
                    tls.writer()
                        .write_all(&chunk[..n])
                        .map_err(|e| io_err("encrypting", e))?;
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    tls.send_close_notify();
                    local_done = true;
                }
            }
        }
        // TLS records in from the client: only once its plaintext went on.
        let take_raw = down_at == down.len() && !peer_done && tls.wants_read();
        if take_raw {
            match tls.read_tls(&mut raw) {
                Ok(0) => {
                    peer_done = true;
                    moved = true;
                }
                Ok(_) => {
                    moved = true;
                    if let Err(e) = tls.process_new_packets() {
                        // Tell the client why (the alert), best effort.
                        let _ = tls.write_tls(&mut raw);
                        return Err(Error::Protocol(format!("TLS: {e}")));
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(io_err("reading from the client", e)),
            }
        }
        if moved {
            continue;
        }
        if tls.wants_write() && last_sent.elapsed() > send_timeout {
            return Err(io_err(
                "sending to the client",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client read nothing for {} s",
                        send_timeout.as_secs_f32()
                    ),
                ),
            ));
        }
        let mut raw_ev = PollFlags::empty();
        if tls.wants_write() {
            raw_ev |= PollFlags::OUT;
        }
        if take_raw {
            raw_ev |= PollFlags::IN;
        }
        let mut local_ev = PollFlags::empty();
        if down_at < down.len() {
            local_ev |= PollFlags::OUT;
        }
        if take_local {
            local_ev |= PollFlags::IN;
        }
        let timeout = Timespec::try_from(POLL).expect("a small duration");
        let mut fds = [PollFd::new(&raw, raw_ev), PollFd::new(&local, local_ev)];
        // A hung-up local side we are not reading would wake poll at once, again and again.
        let n = if local_hup && local_ev.is_empty() {
            1
        } else {
            2
        };
        match rustix::event::poll(&mut fds[..n], Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err("waiting", e.into())),
        }
        let bad = PollFlags::HUP | PollFlags::ERR;
        if fds[0].revents().intersects(bad) && !fds[0].revents().contains(PollFlags::IN) {
            return Ok(()); // the client is gone
        }
        if n == 2 && fds[1].revents().intersects(bad) {
            local_hup = true;
        }
    }
}
