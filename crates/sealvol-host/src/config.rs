//! The host configuration file (`/etc/sealvol/config.json`): where the state directory is.
//!
//! ```no_run
//! let root = sealvol_host::config::state_dir(None, None)?; // /var/lib/sealvol by default
//! # Ok::<(), sealvol_host::Error>(())
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// The configuration file read when it exists.
pub const DEFAULT_CONFIG: &str = "/etc/sealvol/config.json";

/// What the configuration file may say. Unknown fields are refused (a typo must not be
/// silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    state_dir: Option<PathBuf>,
}

/// The state directory: `explicit` when given, else the one `config` names (a file that
/// must exist), else the one [`DEFAULT_CONFIG`] names when that file exists, else
/// [`crate::volume::DEFAULT_STATE_DIR`].
///
/// # Errors
/// [`Error::Invalid`] for a configuration file that is not the expected JSON;
/// [`Error::Io`] for one that cannot be read (a missing `config` included).
pub fn state_dir(explicit: Option<&Path>, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    let (path, required) = match config {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let cfg: Config = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "the config file {} is not valid ({e}); expected JSON like {{\"state_dir\": \"/var/lib/sealvol\"}}",
                path.display()
            ))
        })?,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Config::default(),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    Ok(cfg
        .state_dir
        .unwrap_or_else(|| PathBuf::from(crate::volume::DEFAULT_STATE_DIR)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_comes_from_the_option_the_file_or_the_default() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            state_dir(Some(Path::new("/x")), None).unwrap(),
            PathBuf::from("/x")
        );
        let cfg = d.path().join("c.json");
        std::fs::write(&cfg, br#"{"state_dir": "/srv/sealvol"}"#).unwrap();
        assert_eq!(
            state_dir(None, Some(&cfg)).unwrap(),
            PathBuf::from("/srv/sealvol")
        );
        std::fs::write(&cfg, br#"{"state-dir": "/srv"}"#).unwrap();
        let e = state_dir(None, Some(&cfg)).unwrap_err().to_string();
        assert!(e.contains("not valid") && e.contains("state_dir"), "{e}");
        let e = state_dir(None, Some(&d.path().join("none.json")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
