//! Keys a long-running front end (the daemon) holds in memory under names, and where a
//! volume's key comes from when the caller cannot hand it over itself (a container engine
//! stores and shows every volume option, so an option may only *name* a key).
//!
//! - [`KeyRing`]: named keys in memory only ([`SecretBytes`]: zeroized on drop, never
//!   printed), bounded in count and size; nothing here writes a key anywhere.
//! - [`KeyRef`]: a registered key's name, or the path of a key file that only root can read
//!   ([`read_root_key_file`] refuses any other). A `KeyRef` is what a record may keep.
//!
//! ```
//! use sealvol_host::keyring::{KeyName, KeyRef, KeyRing};
//! let ring = KeyRing::default();
//! let name = KeyName::parse("web-1")?;
//! ring.insert(name.clone(), sealvol_crypto::SecretBytes::from_slice(b"k"))?;
//! let key = ring.resolve(&KeyRef::Registered(name))?;
//! assert_eq!(key.expose(), b"k");
//! # Ok::<(), sealvol_host::Error>(())
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sealvol_crypto::SecretBytes;
use serde::{Deserialize, Serialize};

use crate::store::VolumeId;
use crate::{Error, Result};

/// Most keys a ring holds.
pub const MAX_KEYS: usize = 1024;
/// Largest key a ring holds, in bytes (a passphrase or a machine key; cryptsetup's 8 MiB key
/// files are for other uses).
pub const MAX_RING_KEY: usize = 4096;

/// The name of a registered key: the same rules as a volume id (`[a-z0-9][a-z0-9_.-]*`,
/// at most 63 bytes, no `..`), so it can appear in a URL path and in volume options.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyName(String);

impl KeyName {
    /// Checks `s` against the name rules.
    ///
    /// # Errors
    /// [`Error::Invalid`] saying which rule `s` breaks.
    pub fn parse(s: &str) -> Result<Self> {
        VolumeId::parse(s)
            .map(|id| KeyName(id.as_str().to_string()))
            .map_err(|e| Error::Invalid(e.to_string().replace("volume id", "key id")))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for KeyName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        KeyName::parse(&s)
    }
}

impl From<KeyName> for String {
    fn from(n: KeyName) -> String {
        n.0
    }
}

/// Where a volume's key comes from: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRef {
    /// A key registered in the [`KeyRing`] under this name.
    #[serde(rename = "key_id")]
    Registered(KeyName),
    /// A key file only root can read (an absolute path; see [`read_root_key_file`]).
    #[serde(rename = "key_file")]
    File(PathBuf),
}

impl KeyRef {
    /// How the source is named in messages and status (never the key).
    pub fn describe(&self) -> String {
        match self {
            KeyRef::Registered(n) => format!("registered key \"{n}\""),
            KeyRef::File(p) => format!("key file {}", p.display()),
        }
    }
}

/// Named keys in memory.
#[derive(Default)]
pub struct KeyRing {
    keys: Mutex<BTreeMap<KeyName, SecretBytes>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("names", &self.names())
            .finish()
    }
}

impl KeyRing {
    /// Holds `key` under `name`, replacing (and wiping) any key of that name. Returns
    /// whether one was replaced.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty key, one over [`MAX_RING_KEY`] bytes, or a new name
    /// when the ring holds [`MAX_KEYS`] already.
    pub fn insert(&self, name: KeyName, key: SecretBytes) -> Result<bool> {
        if key.is_empty() || key.len() > MAX_RING_KEY {
            return Err(Error::Invalid(format!(
                "key {name:?} is {} bytes; a registered key is 1 to {MAX_RING_KEY} bytes",
                key.len()
            )));
        }
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.contains_key(&name) && keys.len() >= MAX_KEYS {
            return Err(Error::Invalid(format!(
                "{MAX_KEYS} keys are registered already; remove keys no volume needs first"
            )));
        }
        Ok(keys.insert(name, key).is_some())
    }

    /// Forgets (and wipes) the key `name`. Returns whether there was one.
    pub fn remove(&self, name: &KeyName) -> bool {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(name).is_some()
    }

    /// Whether a key `name` is held.
    pub fn contains(&self, name: &KeyName) -> bool {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.contains_key(name)
    }

    /// The names held, in order.
    pub fn names(&self) -> Vec<KeyName> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.keys().cloned().collect()
    }

    /// A copy of the key `source` names: from the ring, or read from the key file.
    ///
    /// # Errors
    /// [`Error::KeyUnavailable`] when no key of that name is registered, or the key file
    /// is missing, unreadable or readable by others than root.
    pub fn resolve(&self, source: &KeyRef) -> Result<SecretBytes> {
        match source {
            KeyRef::Registered(name) => {
                let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                keys.get(name)
                    .map(SecretBytes::duplicate)
                    .ok_or_else(|| Error::KeyUnavailable {
                        key: source.describe(),
                        reason: "no key of that id is registered with the daemon (registered keys live in its memory only, so a restart forgets them)".into(),
                        fix: format!("register it again: POST /v1/keys {{\"id\": \"{name}\", \"key\": BASE64}}"),
                    })
            }
            KeyRef::File(path) => read_root_key_file(path),
        }
    }
}

/// Reads a key file that only root can read: an absolute path to a regular file (not a
/// symbolic link), owned by root, with no permission for group or others, 1 byte to
/// [`crate::keys::MAX_KEY_BYTES`] long. The checks are on the open descriptor, so the file
/// checked is the file read.
///
/// # Errors
/// [`Error::KeyUnavailable`] saying which check failed and the fix.
pub fn read_root_key_file(path: &Path) -> Result<SecretBytes> {
    let unavailable = |reason: String, fix: &str| Error::KeyUnavailable {
        key: format!("key file {}", path.display()),
        reason,
        fix: fix.to_string(),
    };
    if !path.is_absolute() {
        return Err(unavailable(
            "the path is relative".into(),
            "name the key file by its absolute path",
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .map_err(|e| {
            unavailable(
                format!("it cannot be opened ({e}; a symbolic link is refused)"),
                "create it as a regular file: install -m 0600 -o root /dev/stdin FILE",
            )
        })?;
    let meta = file
        .metadata()
        .map_err(|e| unavailable(format!("it cannot be inspected ({e})"), "check the file"))?;
    let fix_mode = "make it root's and private: chown root: FILE && chmod 0600 FILE";
    if !meta.is_file() {
        return Err(unavailable("it is not a regular file".into(), fix_mode));
    }
    if meta.uid() != 0 {
        return Err(unavailable(
            format!("it is owned by uid {}, not root", meta.uid()),
            fix_mode,
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unavailable(
            format!(
                "its mode {:04o} lets group or others at it",
                meta.mode() & 0o7777
            ),
            fix_mode,
        ));
    }
    let limit = crate::keys::MAX_KEY_BYTES;
    let mut bytes = Vec::new();
    let read = (&file).take(limit + 1).read_to_end(&mut bytes);
    // The read buffer becomes the secret (wiped on drop) before anything can fail.
    let len = bytes.len();
    let buf = SecretBytes::from_vec(bytes);
    read.map_err(|e| unavailable(format!("it cannot be read ({e})"), "check the file"))?;
    if len == 0 || len as u64 > limit {
        return Err(unavailable(
            format!("it holds {len} bytes; a key is 1 to {limit} bytes"),
            "write the key into it",
        ));
    }
    Ok(buf)
}

/// `O_NOFOLLOW`, through rustix (the value the kernel uses on this platform).
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_ring_holds_bounded_keys_by_name_and_never_prints_them() {
        let ring = KeyRing::default();
        let a = KeyName::parse("a").unwrap();
        assert!(!ring
            .insert(a.clone(), SecretBytes::from_slice(b"secret-one"))
            .unwrap());
        assert!(ring
            .insert(a.clone(), SecretBytes::from_slice(b"secret-two"))
            .unwrap());
        assert_eq!(
            ring.resolve(&KeyRef::Registered(a.clone()))
                .unwrap()
                .expose(),
            b"secret-two"
        );
        assert!(!format!("{ring:?}").contains("secret"));
        let e = ring
            .insert(a.clone(), SecretBytes::from_slice(&[1; MAX_RING_KEY + 1]))
            .unwrap_err();
        assert!(e.to_string().contains("1 to 4096 bytes"), "{e}");
        assert!(ring.insert(a.clone(), SecretBytes::zeroed(0)).is_err());
        assert!(ring.remove(&a));
        assert!(!ring.remove(&a));
        let e = ring.resolve(&KeyRef::Registered(a)).unwrap_err();
        assert!(
            matches!(e, Error::KeyUnavailable { .. }) && e.to_string().contains("POST /v1/keys"),
            "{e}"
        );
        for i in 0..MAX_KEYS {
            let n = KeyName::parse(&format!("k{i}")).unwrap();
            ring.insert(n, SecretBytes::from_slice(b"x")).unwrap();
        }
        let e = ring
            .insert(
                KeyName::parse("one-more").unwrap(),
                SecretBytes::from_slice(b"x"),
            )
            .unwrap_err();
        assert!(e.to_string().contains("1024 keys"), "{e}");
        // Replacing a held name is still allowed when full.
        ring.insert(KeyName::parse("k0").unwrap(), SecretBytes::from_slice(b"y"))
            .unwrap();
    }

    #[test]
    fn names_follow_the_id_rules_and_refs_serialise_without_keys() {
        assert!(KeyName::parse("web-1").is_ok());
        let e = KeyName::parse("../x").unwrap_err().to_string();
        assert!(e.contains("invalid key id"), "{e}");
        let r: KeyRef = serde_json::from_str(r#"{"key_id":"web-1"}"#).unwrap();
        assert_eq!(r, KeyRef::Registered(KeyName::parse("web-1").unwrap()));
        assert!(serde_json::from_str::<KeyRef>(r#"{"key_id":"A/B"}"#).is_err());
        let f = KeyRef::File("/etc/k".into());
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"key_file":"/etc/k"}"#
        );
    }

    #[test]
    fn only_root_s_private_key_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, b"file-key").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let root = rustix::process::geteuid().is_root();
        match read_root_key_file(&p) {
            Ok(k) => {
                assert!(root);
                assert_eq!(k.expose(), b"file-key");
            }
            Err(e) => assert!(!root && e.to_string().contains("not root"), "{e}"),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_root_key_file(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
        let e = read_root_key_file(Path::new("k")).unwrap_err().to_string();
        assert!(e.contains("relative"), "{e}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = read_root_key_file(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = read_root_key_file(&d.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be opened"), "{e}");
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        if root {
            let e = read_root_key_file(&p).unwrap_err().to_string();
            assert!(e.contains("holds 0 bytes"), "{e}");
        }
    }
}
