//! Workload ids and phases: what names an entry of a store and where it is in its life.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 63;

/// A workload id, of a volume or a VM: `[a-z0-9][a-z0-9_.-]{0,62}` without `..`. It names
/// files and directories in the state directory, so nothing else is accepted (no `/`, no
/// leading dot, no spaces, no upper case that would collide on case-insensitive tooling).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(String);

impl VolumeId {
    /// Checks `s` against the id rules.
    ///
    /// # Errors
    /// [`Error::Invalid`] saying which rule `s` breaks.
    pub fn parse(s: &str) -> Result<Self> {
        let rule = "ids are 1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit, without '..'";
        let bad = |why: String| Error::Invalid(format!("invalid volume id {s:?}: {why}; {rule}"));
        if s.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if s.len() > MAX_ID_LEN {
            return Err(bad(format!("it is {} bytes long", s.len())));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(bad(format!("it starts with {:?}", first as char)));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(*c)))
        {
            return Err(bad(format!("it contains {c:?}")));
        }
        if s.contains("..") {
            return Err(bad("it contains \"..\"".into()));
        }
        Ok(VolumeId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VolumeId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        VolumeId::parse(&s)
    }
}

impl From<VolumeId> for String {
    fn from(id: VolumeId) -> String {
        id.0
    }
}

/// Where a volume or a VM is in its life: the phase of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `create` is under way (or crashed): a sweep undoes it.
    Creating,
    /// Usable.
    Ready,
    /// `destroy` is under way (or crashed): a sweep finishes it.
    Destroying,
}

impl Phase {
    /// The phase's name in records and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "creating",
            Phase::Ready => "ready",
            Phase::Destroying => "destroying",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_rules() {
        for good in ["a", "web-1", "0abc", "a.b_c-d", &"x".repeat(63)] {
            assert!(VolumeId::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("../etc", "starts with '.'"),
            ("a/b", "contains '/'"),
            ("a..b", "\"..\""),
            ("Web", "starts with 'W'"),
            ("-x", "starts with '-'"),
            ("a b", "contains ' '"),
            ("a\0", "contains '\\0'"),
            (&"x".repeat(64), "64 bytes"),
        ] {
            let err = VolumeId::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains("ids are 1 to 63 characters"), "{err}");
        }
    }
}
