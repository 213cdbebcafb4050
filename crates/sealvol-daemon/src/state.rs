//! What both front ends share: the service, how its blocking calls run, and how its errors
//! become HTTP statuses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use sealvol_host::service::Service;
use sealvol_host::volume::VolumeId;
use sealvol_luks::KdfPolicy;
use serde::Serialize;

/// The running daemon.
pub struct Daemon {
    /// The service: volumes, keys, users.
    pub service: Arc<Service>,
    /// The KDF policy of new keyslots.
    pub kdf: KdfPolicy,
    /// How long a volume stays open after its last unmount.
    pub linger: Duration,
    /// When it started.
    pub started: Instant,
    /// Where it serves (for `status`).
    pub info: Info,
}

/// Where the daemon serves, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The runtime directory.
    pub run_dir: PathBuf,
    /// The volume plugin's socket.
    pub plugin_socket: Option<PathBuf>,
    /// The API's socket.
    pub api_socket: PathBuf,
    /// The API's TCP address.
    pub api_listen: Option<String>,
}

/// Runs a blocking library call on the blocking pool.
pub async fn blocking<T, F>(f: F) -> sealvol_host::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> sealvol_host::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(sealvol_host::Error::Export {
            message: format!("the operation failed inside the daemon ({e}); see its log"),
        })
    })
}

/// The status and the error kind (the API's `kind`) of a library error.
pub fn classify(e: &sealvol_host::Error) -> (StatusCode, &'static str) {
    use sealvol_host::Error as E;
    if e.is_wrong_key() {
        return (StatusCode::FORBIDDEN, "wrong_key");
    }
    match e {
        E::NoSuchVolume { .. } => (StatusCode::NOT_FOUND, "not_found"),
        E::KeyUnavailable { .. } => (StatusCode::PRECONDITION_FAILED, "key_unavailable"),
        E::InUse { .. } | E::AlreadyOpen { .. } => (StatusCode::CONFLICT, "in_use"),
        E::Step { cause, .. } if matches!(**cause, E::KeyUnavailable { .. }) => {
            (StatusCode::PRECONDITION_FAILED, "key_unavailable")
        }
        E::Invalid(_) | E::Luks(_) | E::NotAHeader { .. } => (StatusCode::BAD_REQUEST, "invalid"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
    }
}

impl Daemon {
    /// Closes `id` once it has lingered unused for [`Daemon::linger`] (at once when that is
    /// zero, reporting a failure).
    pub async fn close_later(self: &Arc<Self>, id: VolumeId) -> sealvol_host::Result<()> {
        let svc = Arc::clone(&self.service);
        if self.linger.is_zero() {
            return blocking(move || svc.close_unused(&id)).await.map(|_| ());
        }
        let linger = self.linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let idc = id.clone();
            if let Err(e) = blocking(move || svc.close_unused(&idc)).await {
                tracing::warn!(id = %id, error = %e, "cannot close the unused volume; it stays open");
            }
        });
        Ok(())
    }

    /// The daemon's own numbers, for `status`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "rss_bytes": rss_bytes(),
            "keys": self.service.keys().names().len(),
            "linger_ms": self.linger.as_millis() as u64,
            "state_dir": self.info.state_dir,
            "run_dir": self.info.run_dir,
            "plugin_socket": self.info.plugin_socket,
            "api_socket": self.info.api_socket,
            "api_listen": self.info.api_listen,
        })
    }
}

/// This process's resident set, in bytes (`/proc/self/statm`), or 0.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}
