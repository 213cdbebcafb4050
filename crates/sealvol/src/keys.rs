//! Where the command line says a key comes from: `--key-file`/`--key-fd` (and the `--new-*`
//! pair) as a [`KeySource`], which `sealvol_host::keys` reads.

pub use sealvol_host::keys::KeySource;

use crate::cli::{KeyArgs, NewKeyArgs};

impl KeyArgs {
    /// The source these options name.
    pub fn source(&self) -> KeySource {
        KeySource::from_options(self.key_file.as_deref(), self.key_fd)
    }
}

impl NewKeyArgs {
    /// The source these options name.
    pub fn source(&self) -> KeySource {
        KeySource::from_options(self.new_key_file.as_deref(), self.new_key_fd)
    }
}
