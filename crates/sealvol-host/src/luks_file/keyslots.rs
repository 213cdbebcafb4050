//! Keyslots: test a key, add, remove and change keys, erase them all.

use sealvol_luks::{AnyVolume, KdfParams, KdfPolicy};
use serde::Serialize;

use super::{Access, HeaderFile, LuksFile};
use crate::{Error, Result};

/// What erasing leaves: any header backup made earlier still brings the key back.
pub const ERASE_WARNING: &str = "Any header backup made earlier (sealvol header-backup, \
cryptsetup luksHeaderBackup, a copy of the file) still holds the keyslots and brings the key \
back: destroy those copies too.";

/// A key added to a keyslot ([`LuksFile::add_key`], [`LuksFile::change_key`]). Serializes
/// as `sealvol add-key --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyAdded {
    /// The keyslot that holds the new key.
    pub keyslot: u32,
    /// Its KDF.
    pub kdf: KdfParams,
    /// When the KDF policy may have taken the new key for what it is not: what to say to
    /// the user ([`KdfPolicy::hint`]).
    #[serde(skip)]
    pub key_hint: Option<&'static str>,
}

/// The KDF for a new keyslot protecting `key` on `vol` by `policy` (LUKS1: PBKDF2 with the
/// header's hash), and the policy's hint about the key.
fn new_keyslot_kdf(
    policy: &KdfPolicy,
    key: &[u8],
    vol: &AnyVolume<HeaderFile>,
) -> Result<(KdfParams, Option<&'static str>)> {
    let mut policy = policy.clone();
    let luks1 = match vol {
        AnyVolume::Luks1(v) => {
            policy.hash = v.header().hash();
            true
        }
        AnyVolume::Luks2(_) => false,
    };
    Ok((policy.params_for(key, luks1)?, policy.hint(key)))
}

impl LuksFile {
    /// Whether `key` opens the volume (in keyslot `slot`, or in any): the keyslot it opens.
    /// Changes nothing.
    ///
    /// # Errors
    /// [`Error::WrongKey`] when it opens none; those of [`LuksFile::open`] and
    /// [`super::OpenLuks::unlock`].
    pub fn test_key(&self, key: &[u8], slot: Option<u32>) -> Result<u32> {
        Ok(self.open_verb(Access::Read)?.unlock(key, slot)?.keyslot)
    }

    /// Adds a keyslot for `new_key` (in `slot`, or the first free one), authorised by `key`;
    /// its KDF chosen by `kdf`.
    ///
    /// # Errors
    /// [`Error::WrongKey`] when `key` opens nothing (nothing written); [`Error::Luks`] for
    /// a slot in use, no free slot, a KDF the version cannot hold, a read-only header.
    pub fn add_key(
        &self,
        key: &[u8],
        new_key: &[u8],
        kdf: &KdfPolicy,
        slot: Option<u32>,
    ) -> Result<KeyAdded> {
        let mut open = self.open_to_change()?;
        let unlocked = open.unlock(key, None)?;
        let (params, key_hint) = new_keyslot_kdf(kdf, new_key, &open.vol)?;
        let keyslot = open
            .vol
            .add_keyslot(&unlocked.volume_key, new_key, &params, slot)?;
        tracing::info!(uuid = open.vol.uuid(), keyslot, "keyslot added");
        Ok(KeyAdded {
            keyslot,
            kdf: params,
            key_hint,
        })
    }

    /// Removes the keyslot `key` opens (never the last one: [`LuksFile::erase`] is for
    /// that). Returns its id.
    ///
    /// # Errors
    /// [`Error::WrongKey`]; [`Error::Luks`] for the last keyslot or a read-only header.
    pub fn remove_key(&self, key: &[u8]) -> Result<u32> {
        let mut open = self.open_to_change()?;
        let keyslot = open.unlock(key, None)?.keyslot;
        open.vol.remove_keyslot(keyslot)?;
        tracing::info!(uuid = open.vol.uuid(), keyslot, "keyslot removed");
        Ok(keyslot)
    }

    /// Replaces `key` (in keyslot `slot`, or wherever it opens) by `new_key`: the new
    /// keyslot is written before the old one is wiped.
    ///
    /// # Errors
    /// [`Error::WrongKey`] when `key` opens nothing (nothing written); as
    /// [`LuksFile::add_key`].
    pub fn change_key(
        &self,
        key: &[u8],
        new_key: &[u8],
        kdf: &KdfPolicy,
        slot: Option<u32>,
    ) -> Result<KeyAdded> {
        let mut open = self.open_to_change()?;
        let (params, key_hint) = new_keyslot_kdf(kdf, new_key, &open.vol)?;
        let keyslot = match open.vol.change_key(key, new_key, Some(&params), slot) {
            Err(sealvol_luks::Error::WrongKey) => {
                return Err(Error::WrongKey(
                    "no keyslot opens with the old key".to_string(),
                ))
            }
            r => r?,
        };
        tracing::info!(uuid = open.vol.uuid(), keyslot, "key changed");
        Ok(KeyAdded {
            keyslot,
            kdf: params,
            key_hint,
        })
    }

    /// Wipes every keyslot: the data can no longer be decrypted (but see
    /// [`ERASE_WARNING`]). Returns the ids of the keyslots wiped.
    ///
    /// # Errors
    /// [`Error::NotConfirmed`] (after the header was read and checked, before any write)
    /// unless `confirmed`; [`Error::Luks`] for a read-only header.
    pub fn erase(&self, confirmed: bool) -> Result<Vec<u32>> {
        let mut open = self.open_to_change()?;
        if !confirmed {
            return Err(Error::NotConfirmed {
                question: format!(
                    "This wipes every keyslot of {}: its data becomes unreadable.",
                    self.data.display()
                ),
            });
        }
        let slots = open.vol.keyslots();
        open.vol.erase()?;
        tracing::info!(uuid = open.vol.uuid(), "keyslots erased");
        Ok(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::luks_file::FormatRequest;
    use sealvol_luks::{KdfLimits, NewHeader, Version};
    use std::path::Path;

    const KEY: &[u8] = &[0xff; 32];
    const KEY2: &[u8] = &[0xfe; 32];
    const WRONG: &[u8] = &[0x80; 32];

    fn formatted(dir: &Path, version: Version) -> LuksFile {
        let files = LuksFile::new(dir.join(format!("{}.img", version.as_str())), None);
        let request = FormatRequest {
            header: NewHeader {
                version,
                ..NewHeader::default()
            },
            size: Some(64 << 10),
            overwrite: false,
        };
        files.format(&request, KEY).unwrap();
        files
    }

    #[test]
    fn keys_are_added_changed_and_removed_on_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        for version in [Version::Luks1, Version::Luks2] {
            let files = formatted(dir.path(), version);
            let policy = KdfPolicy::default();
            let added = files.add_key(KEY, KEY2, &policy, Some(3)).unwrap();
            assert_eq!(added.keyslot, 3);
            assert!(matches!(
                added.kdf,
                KdfParams::Pbkdf2 {
                    iterations: 1000,
                    ..
                }
            ));
            assert_eq!(files.test_key(KEY2, None).unwrap(), 3);
            assert!(
                matches!(files.test_key(KEY2, Some(0)), Err(Error::WrongKey(m)) if m.contains("keyslot 0"))
            );

            let changed = files.change_key(KEY, WRONG, &policy, None).unwrap();
            assert!(matches!(files.test_key(KEY, None), Err(Error::WrongKey(_))));
            assert_eq!(files.test_key(WRONG, None).unwrap(), changed.keyslot);

            assert_eq!(files.remove_key(WRONG).unwrap(), changed.keyslot);
            // The last keyslot stays.
            assert!(matches!(
                files.remove_key(KEY2),
                Err(Error::Luks(e)) if matches!(*e, sealvol_luks::Error::LastKeyslot(3))
            ));
            assert_eq!(files.test_key(KEY2, None).unwrap(), 3);
        }
    }

    #[test]
    fn wrong_keys_are_typed_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks2);
        let before = std::fs::read(files.data()).unwrap();
        let policy = KdfPolicy::default();
        let wrong = |r: Result<KeyAdded>| matches!(r, Err(e) if e.is_wrong_key());
        assert!(wrong(files.add_key(WRONG, KEY2, &policy, None)));
        assert!(wrong(files.change_key(WRONG, KEY2, &policy, None)));
        assert!(matches!(files.remove_key(WRONG), Err(Error::WrongKey(_))));
        assert!(std::fs::read(files.data()).unwrap() == before);
    }

    #[test]
    fn a_luks1_keyslot_takes_the_header_hash_and_no_argon2() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks1);
        let policy = KdfPolicy {
            hash: sealvol_crypto::HashAlg::Sha512,
            ..KdfPolicy::default()
        };
        let added = files.add_key(KEY, KEY2, &policy, None).unwrap();
        assert!(matches!(
            added.kdf,
            KdfParams::Pbkdf2 {
                hash: sealvol_crypto::HashAlg::Sha256,
                ..
            }
        ));
        let argon = KdfPolicy {
            kind: Some(sealvol_luks::KdfKind::Argon2id),
            ..KdfPolicy::default()
        };
        let e = files.add_key(KEY, WRONG, &argon, None).unwrap_err();
        assert!(e.to_string().contains("PBKDF2 only"), "{e}");
    }

    #[test]
    fn erase_asks_first_then_wipes_every_keyslot() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks2);
        files
            .add_key(KEY, KEY2, &KdfPolicy::default(), None)
            .unwrap();
        let before = std::fs::read(files.data()).unwrap();
        match files.erase(false) {
            Err(Error::NotConfirmed { question }) => {
                assert!(question.contains("every keyslot"), "{question}")
            }
            other => panic!("{other:?}"),
        }
        assert!(std::fs::read(files.data()).unwrap() == before);
        assert_eq!(files.erase(true).unwrap(), vec![0, 1]);
        let open = files.open(Access::Read, KdfLimits::default()).unwrap();
        assert!(open.volume().keyslots().is_empty());
        assert!(matches!(files.test_key(KEY, None), Err(Error::WrongKey(_))));
    }
}
