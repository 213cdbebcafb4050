//! Options of `sealvol daemon`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// State directory holding the volumes (default: from the config file, else
    /// /var/lib/sealvol).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file: JSON, {"state_dir": "/path"} (default /etc/sealvol/config.json,
    /// when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Runtime directory of the exports (default: $SEALVOL_RUN_DIR, else /run/sealvol).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// The JSON API's unix socket (made 0600; only root may connect).
    #[arg(long, value_name = "PATH", default_value = sealvol_daemon::config::DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// Also serve the API on this loopback TCP address (127.0.0.1:PORT or [::1]:PORT);
    /// every request then needs `Authorization: Bearer TOKEN` (--api-token-file).
    #[arg(long, value_name = "ADDR", requires = "api_token_file")]
    pub api_listen: Option<SocketAddr>,
    /// File holding the API's bearer token for --api-listen (root's, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// The volume driver's name: Docker and Podman find it as
    /// /run/docker/plugins/NAME.sock (`docker volume create -d NAME`).
    #[arg(long, value_name = "NAME", default_value = sealvol_daemon::config::DEFAULT_PLUGIN_NAME, conflicts_with_all = ["plugin_socket", "no_plugin"])]
    pub plugin_name: String,
    /// The volume plugin's socket, instead of /run/docker/plugins/NAME.sock.
    #[arg(long, value_name = "PATH")]
    pub plugin_socket: Option<PathBuf>,
    /// Serve no volume plugin (the API only).
    #[arg(long)]
    pub no_plugin: bool,
    /// Milliseconds a volume stays open after its last unmount (a `docker run` unmounts
    /// and mounts again at once); 0 closes at once.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub linger_ms: u64,
    /// Milliseconds a client has to send a request's headers, and then its body; a client
    /// that is slower is dropped (a body: answered 408), freeing its connection.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Connections served at once on each socket; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_connections: u64,
    /// Log one JSON object per line (for log collectors) instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Stay in the foreground (the default and only mode: a service manager or a container
    /// runs it; the unit file is contrib/sealvol-daemon.service). Accepted for clarity.
    #[arg(long)]
    pub foreground: bool,
}
