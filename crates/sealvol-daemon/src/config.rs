//! What a daemon serves and where.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sealvol_luks::KdfLimits;

/// Where Docker looks for legacy volume plugins' sockets.
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";
/// The volume driver's default name (`docker volume create -d sealvol`).
pub const DEFAULT_PLUGIN_NAME: &str = "sealvol";
/// The API socket's default path.
pub const DEFAULT_API_SOCKET: &str = "/run/sealvol-daemon/api.sock";

/// The daemon's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The state directory (the volume manager's).
    pub state_dir: PathBuf,
    /// The runtime directory its exports record themselves in.
    pub run_dir: PathBuf,
    /// The volume plugin's unix socket (`None`: no volume plugin).
    pub plugin_socket: Option<PathBuf>,
    /// The JSON API's unix socket (made 0600; only root may connect).
    pub api_socket: PathBuf,
    /// Also serve the JSON API on this loopback TCP address (requires `api_token_file`).
    pub api_listen: Option<SocketAddr>,
    /// The file holding the bearer token TCP clients must send (root's, mode 0600).
    pub api_token_file: Option<PathBuf>,
    /// The limits on what a volume's header may ask of an unlock.
    pub kdf_limits: KdfLimits,
    /// How long a volume stays open after its last user unmounted it (a `docker run`
    /// mounts a volume twice in a row: once to copy image data into it, once to run), so
    /// that a new mount right after finds it open.
    pub linger: Duration,
    /// Connections served at once per socket (more wait to be accepted).
    pub max_connections: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time a client has to send a request's headers, and its body.
    pub request_timeout: Duration,
}

impl Config {
    /// A configuration for `state_dir` and `run_dir` with the defaults: the plugin socket
    /// `/run/docker/plugins/sealvol.sock`, the API on [`DEFAULT_API_SOCKET`] only.
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Config {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            plugin_socket: Some(
                PathBuf::from(DOCKER_PLUGIN_DIR).join(format!("{DEFAULT_PLUGIN_NAME}.sock")),
            ),
            api_socket: PathBuf::from(DEFAULT_API_SOCKET),
            api_listen: None,
            api_token_file: None,
            kdf_limits: KdfLimits::default(),
            linger: Duration::from_secs(2),
            max_connections: 64,
            max_body: 64 << 10,
            request_timeout: Duration::from_secs(10),
        }
    }
}
