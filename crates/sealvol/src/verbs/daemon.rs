//! `sealvol daemon`: the options become a `sealvol_daemon::Config`, then one call.

use std::time::Duration;

use anyhow::Result;
use sealvol_daemon::config::DOCKER_PLUGIN_DIR;
use sealvol_daemon::Config;
use sealvol_host::state::StateDir;

use crate::cli::daemon::DaemonArgs;

pub fn run(a: DaemonArgs, verbose: u8) -> Result<()> {
    sealvol_daemon::init_logging(a.log_json, verbose);
    let state = sealvol_host::config::state_dir(a.state_dir.as_deref(), a.config.as_deref())?;
    let run_dir = match a.run_dir {
        Some(d) => d,
        None => StateDir::from_env().root().to_path_buf(),
    };
    let mut c = Config::new(state, run_dir);
    c.plugin_socket = if a.no_plugin {
        None
    } else {
        Some(a.plugin_socket.unwrap_or_else(|| {
            std::path::Path::new(DOCKER_PLUGIN_DIR).join(format!("{}.sock", a.plugin_name))
        }))
    };
    c.api_socket = a.api_socket;
    c.api_listen = a.api_listen;
    c.api_token_file = a.api_token_file;
    c.kdf_limits = crate::cli::kdf_limits();
    c.linger = Duration::from_millis(a.linger_ms);
    c.request_timeout = Duration::from_millis(a.request_timeout_ms);
    c.max_connections = usize::try_from(a.max_connections)?;
    Ok(sealvol_daemon::run(c)?)
}
