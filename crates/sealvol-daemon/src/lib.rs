//! `sealvol daemon`: a long-running front end over the same library calls as the CLI
//! (`sealvol_host::service`, over the volume manager), serving
//!
//! - the **Docker volume plugin protocol** ([`plugin`]) on a unix socket
//!   (`/run/docker/plugins/sealvol.sock` by default), for Docker and Podman;
//! - a **JSON API** ([`api`], contract in `docs/openapi.json`) on a root-only unix socket
//!   and, optionally, on loopback TCP with a bearer token.
//!
//! HTTP is hyper's ([`http`]): bounded connections, body sizes and request deadlines; bodies
//! that may hold keys are read into zeroized buffers. Keys travel only in request bodies;
//! volume options and records only *name* them (a registered key, or a root-only key
//! file). Exports are processes of their own: stopping or restarting the daemon leaves them
//! serving, and at start it recovers ([`sealvol_host::service::Service::recover`]).
//!
//! What it does not do: no volume logic of its own (the service and the manager decide
//! everything), no HTTP parsing or JSON of its own (hyper, serde_json), no command line
//! (the `sealvol` binary's `daemon` verb builds a [`Config`] and calls [`run`]).
//!
//! ```no_run
//! let config = sealvol_daemon::Config::new("/var/lib/sealvol", "/run/sealvol");
//! sealvol_daemon::run(config)?; // until SIGTERM or SIGINT
//! # Ok::<(), sealvol_daemon::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
mod error;
pub mod http;
pub mod plugin;
pub mod state;
#[cfg(test)]
mod strategies;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hyper_util::server::graceful::GracefulShutdown;
use sealvol_host::service::Service;
use sealvol_host::state::StateDir;
use sealvol_host::volume::Manager;
use tokio::sync::watch;
use zeroize::Zeroizing;

pub use config::Config;
pub use error::{Error, Result};

use crate::http::{Front, Token};
use crate::state::{Daemon, Info};

/// Sets up logging for the daemon: `tracing` to stderr, one JSON object per line with
/// `json`, else text; `verbose` 0 is info (every request is logged), 1 debug, 2 trace.
pub fn init_logging(json: bool, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "sealvol={level},sealvol_daemon={level},sealvol_host={level},sealvol_export={level},sealvol_luks=warn,sealvol_crypto=warn,sealvol_block=warn"
    ));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        b.json().flatten_event(true).try_init()
    } else {
        b.try_init()
    };
}

/// Reads the API token: a file of root's (mode 0600 or narrower) holding 16 to 4096 bytes
/// (surrounding whitespace is not part of it).
fn read_token(path: &Path) -> Result<Token> {
    let bad = |reason: String, fix: &'static str| Error::Token {
        path: path.to_path_buf(),
        reason,
        fix,
    };
    let mode_fix = "make it root's and private: chown root: FILE && chmod 0600 FILE";
    let mut f = std::fs::File::open(path).map_err(|e| {
        bad(
            format!("cannot be opened ({e})"),
            "create it: head -c 32 /dev/urandom | base64 > FILE && chmod 0600 FILE",
        )
    })?;
    let meta = f
        .metadata()
        .map_err(|e| bad(format!("cannot be inspected ({e})"), "check it"))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(bad(
            format!(
                "it must be a regular file of root's that group and others cannot read (uid {}, mode {:04o})",
                meta.uid(),
                meta.mode() & 0o7777
            ),
            mode_fix,
        ));
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(4097));
    (&mut f)
        .take(4097)
        .read_to_end(&mut raw)
        .map_err(|e| bad(format!("cannot be read ({e})"), "check it"))?;
    let t = raw.trim_ascii();
    if t.len() < 16 || t.len() > 4096 || t.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(bad(
            format!(
                "it holds {} bytes; a token is 16 to 4096 bytes without spaces",
                t.len()
            ),
            "write a token into it: head -c 32 /dev/urandom | base64 > FILE",
        ));
    }
    Ok(Token(Zeroizing::new(t.to_vec())))
}

/// Makes the parent directory of a socket (0700 when made) and binds the socket 0600.
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io(format!("cannot make {}", parent.display()), e))?;
        }
    }
    let l = sealvol_export::nbd::bind_private_unix(path)?;
    l.set_nonblocking(true)
        .map_err(|e| Error::io(format!("cannot use {}", path.display()), e))?;
    tokio::net::UnixListener::from_std(l)
        .map_err(|e| Error::io(format!("cannot use {}", path.display()), e))
}

/// Runs the daemon until SIGTERM or SIGINT: claims the state directory, recovers (sweep,
/// users counted before a reboot dropped, exports its users need opened again), binds the
/// sockets, serves. On a signal it stops accepting, lets requests under way finish, closes
/// volumes left open without users, and removes its sockets; exports in use keep serving.
///
/// # Errors
/// A state directory another daemon serves or that is unsafe; a socket or token that
/// cannot be used; the recovery's sweep failing.
pub fn run(config: Config) -> Result<()> {
    if config.api_listen.is_some_and(|a| !a.ip().is_loopback()) {
        return Err(Error::Config(format!(
            "--api-listen {} is not a loopback address; the API serves keys and volumes, so it listens on 127.0.0.1 or [::1] only",
            config.api_listen.expect("checked")
        )));
    }
    let token = match (&config.api_listen, &config.api_token_file) {
        (Some(_), Some(f)) => Some(Arc::new(read_token(f)?)),
        (Some(_), None) => {
            return Err(Error::Config(
                "--api-listen needs --api-token-file FILE (a root-only file holding the bearer token clients send)".into(),
            ))
        }
        (None, _) => None,
    };
    let manager = Manager::new(&config.state_dir, StateDir::new(&config.run_dir))
        .with_kdf_limits(config.kdf_limits);
    let service = Arc::new(Service::new(manager)?);
    let recovered = service.recover()?;
    tracing::info!(
        rebooted = recovered.rebooted.len(),
        swept = recovered.swept.len(),
        reopened = recovered.reopened.len(),
        closed_idle = recovered.closed_idle.len(),
        waiting_for_key = recovered.waiting_for_key.len(),
        "recovered"
    );
    for (id, why) in &recovered.waiting_for_key {
        tracing::warn!(id = %id, reason = %why, "users wait for this volume's key");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("sealvol-daemon")
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the daemon's runtime", e))?;
    let daemon = Arc::new(Daemon {
        service: Arc::clone(&service),
        kdf: sealvol_luks::KdfPolicy::default(),
        linger: config.linger,
        started: Instant::now(),
        info: Info {
            state_dir: service.manager().root().to_path_buf(),
            run_dir: config.run_dir.clone(),
            plugin_socket: config.plugin_socket.clone(),
            api_socket: config.api_socket.clone(),
            api_listen: config.api_listen.map(|a| a.to_string()),
        },
    });
    let result = rt.block_on(serve(&config, Arc::clone(&daemon), token));
    // Requests under way have finished; the blocking pool is idle.
    drop(rt);
    let closed = service.close_idle();
    tracing::info!(
        closed_idle = closed.len(),
        "daemon stopped; exports in use keep serving"
    );
    result
}

async fn serve(config: &Config, daemon: Arc<Daemon>, token: Option<Arc<Token>>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = Vec::new();
    let mut sockets = Vec::new();

    let d = Arc::clone(&daemon);
    let api = Front {
        name: "api",
        handler: Arc::new(move |req| Box::pin(api::handle(Arc::clone(&d), req))),
        error: api::error,
        content_type: "application/json",
        max_body: config.max_body,
        timeout: config.request_timeout,
        max_connections: config.max_connections,
    };
    let l = bind(&config.api_socket)?;
    sockets.push(config.api_socket.clone());
    tasks.push(tokio::spawn(http::serve_unix(
        l,
        api.clone(),
        stop_rx.clone(),
        Arc::clone(&graceful),
    )));
    if let (Some(addr), Some(token)) = (config.api_listen, token) {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
        tasks.push(tokio::spawn(http::serve_tcp(
            l,
            api,
            token,
            stop_rx.clone(),
            Arc::clone(&graceful),
        )));
    }
    if let Some(p) = &config.plugin_socket {
        let d = Arc::clone(&daemon);
        let plugin = Front {
            name: "plugin",
            handler: Arc::new(move |req| Box::pin(plugin::handle(Arc::clone(&d), req))),
            error: plugin::error,
            content_type: plugin::CONTENT_TYPE,
            max_body: config.max_body,
            timeout: config.request_timeout,
            max_connections: config.max_connections,
        };
        let l = bind(p)?;
        sockets.push(p.clone());
        tasks.push(tokio::spawn(http::serve_unix(
            l,
            plugin,
            stop_rx.clone(),
            Arc::clone(&graceful),
        )));
    }
    tracing::info!(
        api = %config.api_socket.display(),
        plugin = ?config.plugin_socket,
        api_listen = ?config.api_listen,
        pid = std::process::id(),
        "serving"
    );

    wait_for_signal().await;
    tracing::info!("stopping: no new connections; requests under way finish");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for s in &sockets {
        let _ = std::fs::remove_file(s);
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(std::time::Duration::from_secs(120), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still under way after 120 s; stopping anyway");
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::info!("SIGHUP ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_files_are_root_s_private_and_sized() {
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8], mode: u32| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = file("good", b"  0123456789abcdef-token\n", 0o600);
        assert_eq!(&read_token(&good).unwrap().0[..], b"0123456789abcdef-token");
        for (name, text, mode, why) in [
            (
                "loose",
                &b"0123456789abcdef-token"[..],
                0o640,
                "group and others",
            ),
            ("short", b"short-token", 0o600, "16 to 4096 bytes"),
            (
                "spaced",
                b"0123456789 abcdef-token",
                0o600,
                "without spaces",
            ),
            ("long", &[b'a'; 5000][..], 0o600, "16 to 4096 bytes"),
        ] {
            let e = read_token(&file(name, text, mode)).unwrap_err().to_string();
            assert!(e.contains(why), "{name}: {e}");
            // The refusal never quotes the file's content.
            assert!(!e.contains("abcdef-token"), "{name}: {e}");
        }
        let e = read_token(&d.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be opened"), "{e}");
    }
}
