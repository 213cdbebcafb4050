//! Volume ids and the per-id record (the journal of what exists).

use serde::{Deserialize, Serialize};

use crate::safe_dir::SafeDir;
use crate::{Error, Result};

/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 63;

/// A workload id: `[a-z0-9][a-z0-9_.-]{0,62}` without `..`. It names files and directories
/// in the state directory, so nothing else is accepted (no `/`, no leading dot, no spaces,
/// no upper case that would collide on case-insensitive tooling).
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

/// What a volume was created with; a second `create` of the id must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Data area size in bytes.
    pub size: u64,
    /// File system type (`ext4` ...).
    pub fs: String,
    /// The LUKS header lives in its own file (`header.img`), not on the image.
    pub detached_header: bool,
    /// The LUKS version (records written before it existed are LUKS2).
    #[serde(default, rename = "type")]
    pub luks_type: LuksType,
}

/// The LUKS version of a volume: LUKS2 (the default), or LUKS1 for qemu's `luks` block
/// driver (512-byte sectors, PBKDF2 keyslots, attached header only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LuksType {
    /// LUKS2.
    #[default]
    Luks2,
    /// LUKS1.
    Luks1,
}

impl LuksType {
    /// The name in records, output and `--type`.
    pub fn as_str(self) -> &'static str {
        match self {
            LuksType::Luks2 => "luks2",
            LuksType::Luks1 => "luks1",
        }
    }
}

/// Where a volume is in its life.
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

/// The record of one id: `<state>/records/<id>.json`. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The id.
    pub id: VolumeId,
    /// Where it is in its life.
    pub phase: Phase,
    /// What it was created with.
    pub params: Params,
    /// Steps of the current operation that completed, in order (the journal).
    pub steps: Vec<String>,
    /// The LUKS UUID, once formatted.
    pub uuid: Option<String>,
    /// Bytes at the start of the image that hold the LUKS header and keyslots (attached
    /// header), once formatted: what `destroy` wipes.
    pub header_area: Option<u64>,
    /// Seconds since the epoch when `create` started.
    pub created: u64,
}

/// Reads the JSON record `name` in `dir`: `None` when there is none. `sweep` names the
/// command that repairs a damaged one; a link planted in its place is refused (not read).
pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    dir: &SafeDir,
    name: &str,
    sweep: &str,
) -> Result<Option<T>> {
    let Some(bytes) = dir.read(name)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::Invalid(format!(
            "the record {} is damaged ({e}); move it away and run `{sweep}`",
            dir.join(name).display()
        ))
    })
}

/// Writes the record `name` in `dir` atomically and durably (see [`SafeDir::write_atomic`]).
pub(crate) fn write_record(dir: &SafeDir, name: &str, bytes: &[u8]) -> Result<()> {
    dir.write_atomic(name, bytes, 0o600)
}

/// Removes `name` from `dir` (absent is fine) and makes the removal durable.
pub(crate) fn remove_durably(dir: &SafeDir, name: &str) -> Result<()> {
    dir.remove_file(name)?;
    dir.sync()
}

/// The ids named by the entries of `dir` (`<id><suffix>`, or `<id>` for an empty suffix),
/// sorted; names that are not valid ids are not sealvol's and are ignored.
pub(crate) fn ids_in(dir: Option<&SafeDir>, suffix: &str) -> Vec<VolumeId> {
    let Some(entries) = dir.and_then(|d| d.entries().ok()) else {
        return Vec::new();
    };
    let mut ids: Vec<VolumeId> = entries
        .into_iter()
        .filter_map(|(name, _)| VolumeId::parse(name.strip_suffix(suffix)?).ok())
        .collect();
    ids.sort();
    ids
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

    #[test]
    fn records_round_trip_and_refuse_bad_ids() {
        let r = Record {
            id: VolumeId::parse("w1").unwrap(),
            phase: Phase::Creating,
            params: Params {
                size: 1 << 26,
                fs: "ext4".into(),
                detached_header: false,
                luks_type: LuksType::Luks2,
            },
            steps: vec!["image".into()],
            uuid: None,
            header_area: None,
            created: 1,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"creating\""), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        let evil = text.replace("\"w1\"", "\"../x\"");
        assert!(serde_json::from_str::<Record>(&evil).is_err());
        // Records from before LUKS1 volumes existed are LUKS2.
        assert!(text.contains("\"type\":\"luks2\""), "{text}");
        let old = text.replace(",\"type\":\"luks2\"", "");
        assert_eq!(serde_json::from_str::<Record>(&old).unwrap(), r);
        let v1 = text.replace("\"luks2\"", "\"luks1\"");
        let v1 = serde_json::from_str::<Record>(&v1).unwrap();
        assert_eq!(v1.params.luks_type, LuksType::Luks1);
    }

    #[test]
    fn records_are_read_and_listed_through_the_safe_dir() {
        let t = tempfile::tempdir().unwrap();
        let dir = SafeDir::open_root(t.path()).unwrap();
        write_record(&dir, "a.json", b"1").unwrap();
        write_record(&dir, "a.json", b"2").unwrap();
        assert_eq!(read_record::<u32>(&dir, "a.json", "x").unwrap(), Some(2));
        write_record(&dir, "Bad.json", b"3").unwrap();
        assert_eq!(
            ids_in(Some(&dir), ".json"),
            vec![VolumeId::parse("a").unwrap()]
        );
        std::fs::write(t.path().join("b.json"), b"{").unwrap();
        let e = read_record::<u32>(&dir, "b.json", "sealvol volume sweep").unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        remove_durably(&dir, "a.json").unwrap();
        remove_durably(&dir, "a.json").unwrap();
        assert_eq!(read_record::<u32>(&dir, "a.json", "x").unwrap(), None);
    }
}
