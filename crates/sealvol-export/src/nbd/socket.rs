//! Sockets: the listening socket (a unix socket made 0600 without a moment of a wider mode,
//! or a loopback TCP port) and a client connection.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{Error, Result};

/// The socket send buffer asked for: a whole reply of [`PREFERRED_MAX`](super::PREFERRED_MAX)
/// bytes, so a reply goes out in one or two writes instead of many small wake-ups.
const SEND_BUFFER: usize = super::proto::PREFERRED_MAX as usize;

/// A client connection.
#[derive(Debug)]
pub enum Conn {
    /// Over a unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Conn {
    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    /// Asks for a send buffer that holds a whole large reply. Best effort.
    pub(crate) fn widen_send_buffer(&self) {
        if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(self, SEND_BUFFER) {
            tracing::debug!(error = %e, "could not widen the socket's send buffer");
        }
    }

    /// Makes a write that moves no byte for `t` fail (`SO_SNDTIMEO`).
    pub(crate) fn set_send_timeout(&self, t: Duration) -> io::Result<()> {
        let t = Some(t.max(Duration::from_millis(1)));
        match self {
            Conn::Unix(s) => s.set_write_timeout(t),
            Conn::Tcp(s) => s.set_write_timeout(t),
        }
    }

    /// Makes a read that gets no byte for `t` fail (`SO_RCVTIMEO`).
    pub(crate) fn set_receive_timeout(&self, t: Duration) -> io::Result<()> {
        let t = Some(t.max(Duration::from_millis(1)));
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_nonblocking(on),
            Conn::Tcp(s) => s.set_nonblocking(on),
        }
    }

    /// Shuts both directions down: every read and write on the socket, in any thread,
    /// returns at once.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
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

/// A listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    /// A unix socket at `path`, ours while its inode is `(dev, ino)`.
    Unix {
        listener: UnixListener,
        path: PathBuf,
        id: (u64, u64),
    },
    Tcp(TcpListener),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix { listener, .. } => listener.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

impl Listener {
    /// Makes `accept` return `WouldBlock` instead of waiting (a client that left between
    /// `poll` and `accept` must not hold the accept loop). Accepted sockets stay blocking:
    /// Linux does not pass the flag on.
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Unix { listener, .. } => listener.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
    }

    /// Accepts a client; TCP clients get `TCP_NODELAY`.
    pub(crate) fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix { listener, .. } => listener.accept().map(|(c, _)| Conn::Unix(c)),
            Listener::Tcp(l) => l.accept().map(|(c, _)| {
                let _ = c.set_nodelay(true);
                Conn::Tcp(c)
            }),
        }
    }

    /// Removes the socket file, if it is still the one we made.
    pub(crate) fn remove_socket_file(&self) {
        if let Listener::Unix { path, id, .. } = self {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if (m.dev(), m.ino()) == *id {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Binds a unix socket at `path` with mode 0600 whatever the umask.
///
/// How: `bind(2)` creates the socket file with the mode the umask leaves, and setting the
/// umask around it would change it for every thread of the process. So the socket is bound
/// inside a private directory made next to `path` with mode 0700 (a umask can only narrow
/// that), where nobody else can reach it; it is made 0600 there, then renamed to `path`
/// (same file system, so atomic) with `RENAME_NOREPLACE`, and the directory removed. At no
/// moment can another user connect through a wider mode.
///
/// `path` may be a stale socket (no server answers), which is replaced; a symlink or any
/// other file there is refused, and so is a socket a server answers on.
pub(crate) fn bind_unix(path: &Path) -> Result<Listener> {
    let stale = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(format!("cannot look at {}", path.display()), e)),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(invalid(format!(
                "{} is a symbolic link; sealvol does not replace it (a link could point the \
                 socket anywhere): remove it or choose another --socket path",
                path.display()
            )))
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(invalid(format!(
                "{} exists and is not a socket; choose another --socket path",
                path.display()
            )))
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(invalid(format!(
                    "a server is already listening on {}; stop it or choose another --socket path",
                    path.display()
                )));
            }
            true
        }
    };
    path.file_name()
        .ok_or_else(|| invalid(format!("{} names no file", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = private_dir(parent)?;
    let tmp = private.join("s");
    let result = (|| -> Result<Listener> {
        let listener = UnixListener::bind(&tmp).map_err(|e| {
            Error::io(
                format!(
                    "cannot listen on {} (bound first at {}; a unix socket path must be \
                     shorter than 108 bytes)",
                    path.display(),
                    tmp.display()
                ),
                e,
            )
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("cannot make {} 0600", tmp.display()), e))?;
        if stale {
            // Still a socket (checked again: the path may have changed since)?
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            Error::io(
                format!(
                    "cannot put the socket at {} (something appeared there meanwhile?)",
                    path.display()
                ),
                e.into(),
            )
        })?;
        let m = std::fs::symlink_metadata(path)
            .map_err(|e| Error::io(format!("cannot look at {}", path.display()), e))?;
        Ok(Listener::Unix {
            listener,
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    result
}

/// A new directory in `parent` with mode 0700 (never wider, whatever the umask).
fn private_dir(parent: &Path) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    for _ in 0..32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".sv{:x}", (pid ^ nanos).wrapping_add(n)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("cannot make a private directory in {}", parent.display()),
                    e,
                ))
            }
        }
    }
    Err(invalid(format!(
        "cannot make a private directory in {}: every name tried exists",
        parent.display()
    )))
}

/// Binds a TCP socket on `addr`.
pub(crate) fn bind_tcp(addr: std::net::SocketAddr) -> Result<Listener> {
    TcpListener::bind(addr)
        .map(Listener::Tcp)
        .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_socket_is_0600_and_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let l = bind_unix(&sock).unwrap();
        let m = std::fs::symlink_metadata(&sock).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no leftovers"
        );
        // Live: refused.
        let e = bind_unix(&sock).unwrap_err();
        assert!(e.to_string().contains("already listening"), "{e}");
        drop(l); // the file stays, stale now: replaced
        let l = bind_unix(&sock).unwrap();
        l.remove_socket_file();
        assert!(!sock.exists());

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind_unix(&file)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        assert!(bind_unix(&link)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn remove_leaves_a_socket_someone_else_put_there() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let l = bind_unix(&sock).unwrap();
        std::fs::remove_file(&sock).unwrap();
        let other = UnixListener::bind(&sock).unwrap();
        l.remove_socket_file();
        assert!(sock.exists(), "not ours: kept");
        drop(other);
    }
}
