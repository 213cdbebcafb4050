//! States of a valid LUKS2 header that sealvol recognises but does not implement: what each
//! is, and what to run instead. Such a header is read and dumped, never opened or written
//! (cryptsetup's `LUKS2_unmet_requirements` and its reencryption, OPAL and integrity paths).

use super::metadata::Metadata;
use super::validate::{cstr, reencrypt_candidate};

/// Why a valid LUKS2 volume cannot be opened or changed by sealvol.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocker {
    /// A LUKS2 reencryption (or encryption, decryption) is in progress or was interrupted:
    /// the `online-reencrypt` requirement, a `reencrypt` keyslot, `backup-*` segments or more
    /// than one data segment.
    Reencryption {
        /// The evidence: the flag, keyslot or segments found.
        found: String,
    },
    /// The `offline-reencrypt` requirement of cryptsetup 2.0's offline reencryption tool.
    OfflineReencryption,
    /// Hardware OPAL self-encryption (`hw-opal*` segments or the `opal` requirement).
    Opal {
        /// The evidence.
        found: String,
    },
    /// A crypt segment with authenticated encryption on dm-integrity (`integrity` object).
    Integrity {
        /// The segment.
        segment: u32,
    },
    /// The `inline-hw-tags` requirement (integrity tags kept by the hardware).
    InlineHwTags,
    /// A requirement flag no cryptsetup release sealvol knows of writes: a newer
    /// cryptsetup made this header.
    UnknownRequirement(String),
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::Reencryption { found } => write!(
                f,
                "a LUKS2 reencryption is in progress or was interrupted ({found}); sealvol never touches a volume in that state: finish it with `cryptsetup reencrypt --resume-only DEVICE` (add `--header FILE` for a detached header)"
            ),
            Blocker::OfflineReencryption => f.write_str(
                "an offline reencryption (requirement \"offline-reencrypt\") was interrupted; finish or recover it with cryptsetup's reencryption tool before using the volume",
            ),
            Blocker::Opal { found } => write!(
                f,
                "the volume uses hardware OPAL self-encryption ({found}), which sealvol does not implement; open it with cryptsetup (`cryptsetup open`) on the OPAL drive"
            ),
            Blocker::Integrity { segment } => write!(
                f,
                "segment {segment} uses authenticated encryption on dm-integrity (an \"integrity\" object), which sealvol does not implement; open it with `cryptsetup open`"
            ),
            Blocker::InlineHwTags => f.write_str(
                "the volume needs inline hardware integrity tags (requirement \"inline-hw-tags\"), which sealvol does not implement; use cryptsetup 2.8 or later",
            ),
            Blocker::UnknownRequirement(flag) => write!(
                f,
                "the header has the mandatory requirement {flag:?}, which neither sealvol nor the cryptsetup releases it follows know: a newer cryptsetup made it; use that cryptsetup"
            ),
        }
    }
}

/// Every blocker of `md`, requirement flags first, without repeats.
pub(crate) fn blockers(md: &Metadata) -> Vec<Blocker> {
    let mut out: Vec<Blocker> = Vec::new();
    let mut push = |b: Blocker| {
        let same_kind = |x: &Blocker| std::mem::discriminant(x) == std::mem::discriminant(&b);
        if !out.iter().any(same_kind) {
            out.push(b);
        }
    };
    for flag in md.mandatory_requirements() {
        match cstr(flag) {
            f if reencrypt_candidate(f) => push(Blocker::Reencryption {
                found: format!("requirement {f:?}"),
            }),
            "offline-reencrypt" => push(Blocker::OfflineReencryption),
            "opal" => push(Blocker::Opal {
                found: "requirement \"opal\"".into(),
            }),
            "inline-hw-tags" => push(Blocker::InlineHwTags),
            f => push(Blocker::UnknownRequirement(f.to_string())),
        }
    }
    if let Some((id, _)) = md.keyslots.iter().find(|(_, k)| k.kind == "reencrypt") {
        push(Blocker::Reencryption {
            found: format!("reencrypt keyslot {id}"),
        });
    }
    let backups: Vec<u32> = md
        .segments
        .iter()
        .filter(|(_, s)| s.is_backup())
        .map(|(&id, _)| id)
        .collect();
    let regular = md.segments.len() - backups.len();
    if !backups.is_empty() || regular > 1 {
        push(Blocker::Reencryption {
            found: format!("{regular} data segments and backup segments {backups:?}"),
        });
    }
    for (&id, s) in &md.segments {
        if s.kind.starts_with("hw-opal") {
            push(Blocker::Opal {
                found: format!("segment {id} of type {:?}", s.kind),
            });
        }
        if s.integrity.is_some() || s.extra.contains_key("integrity") {
            push(Blocker::Integrity { segment: id });
        }
    }
    out
}
