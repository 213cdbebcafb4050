//! The record of a volume (the journal of what exists): its parameters and LUKS facts.

use serde::{Deserialize, Serialize};

use crate::store::{Journaled, Phase, VolumeId};

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
    /// An overlay volume: `disk.img` is an encrypted copy-on-write overlay (`sealvol
    /// overlay`) over this shared, read-only base (a plain or dm-verity image), not a LUKS
    /// volume. Its file system is the base's (no `mkfs`); `size` is its virtual size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::overlay::BaseSpec>,
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
    /// An overlay volume's checkpoint when its export last stopped (`COUNTER:HEX`): the
    /// next open refuses any older state of the file (a copy put back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

impl Journaled for Record {
    fn id(&self) -> &VolumeId {
        &self.id
    }
    fn phase(&self) -> Phase {
        self.phase
    }
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }
    fn steps(&self) -> &[String] {
        &self.steps
    }
    fn steps_mut(&mut self) -> &mut Vec<String> {
        &mut self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                base: None,
            },
            steps: vec!["image".into()],
            uuid: None,
            header_area: None,
            created: 1,
            checkpoint: None,
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
}
