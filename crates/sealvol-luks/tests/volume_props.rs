//! Volume-level properties over in-memory storage: damaged header copies recover or fail
//! cleanly, crashes during updates leave an openable header, and keyslot/token management.

use proptest::prelude::*;
use sealvol_crypto::SecretBytes;
use sealvol_luks::{Error, FormatOptions, HeaderCopy, KdfParams, Storage, Volume};
use serde_json::json;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::OnceLock;

const HDR: u64 = 16384;

fn small_opts() -> FormatOptions {
    FormatOptions {
        // Room for four 512-bit keyslots.
        keyslots_size: Some(4 * 258048 + 4 * 4096),
        ..FormatOptions::default()
    }
}

/// One formatted volume (bytes and volume key), shared by all cases.
fn base() -> &'static (Vec<u8>, Vec<u8>) {
    static BASE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let vk = SecretBytes::random(64).unwrap();
        let vol = Volume::format(Cursor::new(Vec::new()), &small_opts(), &vk, b"pw").unwrap();
        (vol.into_storage().into_inner(), vk.expose().to_vec())
    })
}

fn open(bytes: Vec<u8>) -> Result<Volume<Cursor<Vec<u8>>>, Error> {
    Volume::open(Cursor::new(bytes))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any single corrupted byte in either copy: open recovers from the other copy (same
    /// key, same data segment) or fails cleanly.
    #[test]
    fn single_corrupt_byte_recovers(secondary in any::<bool>(), at in 0..HDR, xor in 1u8..=255) {
        let (bytes, vk) = base();
        let mut b = bytes.clone();
        let off = if secondary { HDR + at } else { at };
        b[off as usize] ^= xor;
        let good = open(bytes.clone()).unwrap().data_segment().unwrap();
        match open(b) {
            Ok(mut vol) => {
                prop_assert!(vol.unlock(b"pw", None).unwrap().volume_key.ct_eq(vk));
                prop_assert_eq!(vol.data_segment().unwrap(), good);
                if vol.load_report().needs_repair {
                    prop_assert!(vol.repair().unwrap());
                    let mut again = open(vol.into_storage().into_inner()).unwrap();
                    prop_assert!(!again.load_report().needs_repair);
                    prop_assert!(again.load_report().primary.is_ok() && again.load_report().secondary.is_ok());
                    prop_assert!(again.unlock(b"pw", None).unwrap().volume_key.ct_eq(vk));
                }
            }
            Err(e) => prop_assert!(!matches!(e, Error::WrongKey), "{e:?}"),
        }
    }

    /// Arbitrary damage to both copies never panics.
    #[test]
    fn arbitrary_damage_never_panics(edits in prop::collection::vec((0..2 * HDR, any::<u8>()), 1..40)) {
        let (bytes, _) = base();
        let mut b = bytes.clone();
        for (at, v) in edits {
            b[at as usize] = v;
        }
        if let Ok(mut vol) = open(b) {
            let _ = vol.unlock(b"pw", None);
            let _ = vol.data_segment();
        }
    }
}

/// Storage that fails every write after `budget` bytes (the write that crosses the budget
/// is cut short): a crash at any byte.
struct Crashy {
    inner: Cursor<Vec<u8>>,
    budget: u64,
}

impl Read for Crashy {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}
impl Seek for Crashy {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}
impl Write for Crashy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.budget == 0 {
            return Err(std::io::Error::other("crash"));
        }
        let n = (buf.len() as u64).min(self.budget) as usize;
        self.budget -= n as u64;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Storage for Crashy {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A base volume with a second keyslot ("pw2", slot 1).
fn two_slots() -> &'static Vec<u8> {
    static TWO: OnceLock<Vec<u8>> = OnceLock::new();
    TWO.get_or_init(|| {
        let (bytes, vk) = base();
        let mut vol = open(bytes.clone()).unwrap();
        let vk = SecretBytes::from_slice(vk);
        vol.add_keyslot(&vk, b"pw2", &KdfParams::pbkdf2_min(), None)
            .unwrap();
        vol.into_storage().into_inner()
    })
}

fn unlocks(bytes: &[u8], pass: &[u8]) -> bool {
    open(bytes.to_vec()).unwrap().unlock(pass, None).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A crash at any byte of add_keyslot leaves a header that opens with the old
    /// passphrase.
    #[test]
    fn crash_during_add_keyslot(budget in 0u64..(300_000 + 2 * HDR)) {
        let (bytes, vk) = base();
        let vk = SecretBytes::from_slice(vk);
        let mut vol = Volume::open(Crashy { inner: Cursor::new(bytes.clone()), budget }).unwrap();
        let done = vol.add_keyslot(&vk, b"new", &KdfParams::pbkdf2_min(), None).is_ok();
        let after = vol.into_storage().inner.into_inner();
        prop_assert!(unlocks(&after, b"pw"));
        if done {
            prop_assert!(unlocks(&after, b"new"));
        }
    }

    /// A crash at any byte of change_key leaves a header where the old or the new
    /// passphrase opens.
    #[test]
    fn crash_during_change_key(budget in 0u64..(2 * 258_048 + 6 * HDR)) {
        let (bytes, _) = base();
        let mut vol = Volume::open(Crashy { inner: Cursor::new(bytes.clone()), budget }).unwrap();
        let done = vol.change_key(b"pw", b"new", None, None).is_ok();
        let after = vol.into_storage().inner.into_inner();
        prop_assert!(unlocks(&after, b"pw") || unlocks(&after, b"new"));
        if done {
            prop_assert!(unlocks(&after, b"new") && !unlocks(&after, b"pw"));
        }
    }

    /// A crash at any byte of remove_keyslot leaves the other keyslot working.
    #[test]
    fn crash_during_remove_keyslot(budget in 0u64..(258_048 + 3 * HDR)) {
        let bytes = two_slots();
        let mut vol = Volume::open(Crashy { inner: Cursor::new(bytes.clone()), budget }).unwrap();
        let done = vol.remove_keyslot(1).is_ok();
        let after = vol.into_storage().inner.into_inner();
        prop_assert!(unlocks(&after, b"pw"));
        if done {
            prop_assert!(!unlocks(&after, b"pw2"));
        }
    }
}

#[test]
fn keyslot_management() {
    let (bytes, vk) = base();
    let vk = SecretBytes::from_slice(vk);
    let mut vol = open(bytes.clone()).unwrap();
    let kdf = KdfParams::pbkdf2_min();
    assert!(matches!(
        vol.add_keyslot(&vk, b"a", &kdf, Some(0)),
        Err(Error::KeyslotInUse(0))
    ));
    let wrong = SecretBytes::random(64).unwrap();
    assert!(matches!(
        vol.add_keyslot(&wrong, b"a", &kdf, None),
        Err(Error::WrongKey)
    ));
    assert_eq!(vol.add_keyslot(&vk, b"five", &kdf, Some(5)).unwrap(), 5);
    assert_eq!(vol.add_keyslot(&vk, b"one", &kdf, None).unwrap(), 1);
    assert_eq!(vol.add_keyslot(&vk, b"two", &kdf, None).unwrap(), 2);
    // Four areas fill the keyslots area.
    assert!(matches!(
        vol.add_keyslot(&vk, b"x", &kdf, None),
        Err(Error::NoFreeKeyslot(_))
    ));
    let areas: Vec<(u64, u64)> = vol
        .header()
        .metadata()
        .keyslots
        .values()
        .map(|k| (k.area.offset, k.area.size))
        .collect();
    assert_eq!(areas.len(), 4);
    for (i, a) in areas.iter().enumerate() {
        for b in &areas[i + 1..] {
            assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:?} overlaps {b:?}");
        }
    }
    let freed = vol.header().metadata().keyslots[&1].area.offset;
    vol.remove_keyslot(1).unwrap();
    assert!(matches!(
        vol.remove_keyslot(1),
        Err(Error::NoSuchKeyslot(1))
    ));
    assert!(matches!(vol.unlock(b"one", None), Err(Error::WrongKey)));
    // The freed area is reused.
    assert_eq!(vol.add_keyslot(&vk, b"again", &kdf, None).unwrap(), 1);
    assert_eq!(vol.header().metadata().keyslots[&1].area.offset, freed);
    let seq = vol.header().seqid();
    let mut vol = open(vol.into_storage().into_inner()).unwrap();
    assert_eq!(vol.header().seqid(), seq);
    for (pass, slot) in [(&b"pw"[..], 0), (b"again", 1), (b"two", 2), (b"five", 5)] {
        assert_eq!(vol.unlock(pass, None).unwrap().keyslot, slot);
        assert_eq!(vol.unlock(pass, Some(slot)).unwrap().keyslot, slot);
    }
    assert!(matches!(vol.unlock(b"pw", Some(2)), Err(Error::WrongKey)));
    assert!(matches!(
        vol.unlock(b"pw", Some(9)),
        Err(Error::NoSuchKeyslot(9))
    ));
    for id in [0, 1, 2] {
        vol.remove_keyslot(id).unwrap();
    }
    assert!(matches!(vol.remove_keyslot(5), Err(Error::LastKeyslot(5))));
    assert!(vol
        .unlock(b"five", None)
        .unwrap()
        .volume_key
        .ct_eq(vk.expose()));
}

#[test]
fn tokens() {
    let (bytes, _) = base();
    let mut vol = open(bytes.clone()).unwrap();
    let t = json!({"type": "sealvol-key", "keyslots": ["0"], "x": {"y": [1, "2"]}});
    assert_eq!(vol.add_token(t.clone(), None).unwrap(), 0);
    assert_eq!(
        vol.add_token(json!({"type": "b", "keyslots": []}), Some(7))
            .unwrap(),
        7
    );
    assert!(matches!(
        vol.add_token(t.clone(), Some(7)),
        Err(Error::TokenInUse(7))
    ));
    for bad in [
        json!([]),
        json!({"keyslots": []}),
        json!({"type": 1, "keyslots": []}),
        json!({"type": "t"}),
        json!({"type": "t", "keyslots": ["3"]}),
        json!({"type": "t", "keyslots": [0]}),
        json!({"type": "t", "keyslots": ["00"]}),
    ] {
        assert!(
            matches!(
                vol.add_token(bad.clone(), None),
                Err(Error::InvalidToken(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        vol.add_token(t.clone(), Some(32)),
        Err(Error::InvalidToken(_))
    ));
    let mut vol = open(vol.into_storage().into_inner()).unwrap();
    assert_eq!(vol.header().metadata().tokens[&0], t);
    vol.remove_token(0).unwrap();
    assert!(matches!(vol.remove_token(0), Err(Error::NoSuchToken(0))));
    // Tokens fill up.
    for _ in 0..31 {
        vol.add_token(json!({"type": "f", "keyslots": []}), None)
            .unwrap();
    }
    assert!(matches!(
        vol.add_token(json!({"type": "f", "keyslots": []}), None),
        Err(Error::InvalidToken(_))
    ));
}

#[test]
fn json_area_overflow_is_refused_without_writing() {
    let (bytes, _) = base();
    let mut vol = open(bytes.clone()).unwrap();
    let big = json!({"type": "big", "keyslots": [], "blob": "x".repeat(13000)});
    assert!(matches!(
        vol.add_token(big, None),
        Err(Error::MetadataTooLarge { .. })
    ));
    assert_eq!(vol.into_storage().into_inner(), *bytes);
}

#[test]
fn erase_destroys_every_keyslot() {
    let bytes = two_slots();
    let mut vol = open(bytes.clone()).unwrap();
    vol.add_token(json!({"type": "t", "keyslots": ["0", "1"]}), None)
        .unwrap();
    let area = (vol.header().keyslots_offset(), vol.header().keyslots_size());
    vol.erase().unwrap();
    let after = vol.into_storage().into_inner();
    let mut vol = open(after.clone()).unwrap();
    assert!(vol.header().metadata().keyslots.is_empty());
    assert!(vol.header().metadata().digests[&0].keyslots.is_empty());
    assert_eq!(vol.header().metadata().tokens[&0]["keyslots"], json!([]));
    assert!(matches!(vol.unlock(b"pw", None), Err(Error::WrongKey)));
    // The whole keyslots area was rewritten.
    let (o, n) = (area.0 as usize, area.1 as usize);
    let same = bytes[o..o + n]
        .chunks(4096)
        .zip(after[o..o + n].chunks(4096))
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(same, 0);
}

#[test]
fn stale_copy_is_detected_and_repaired() {
    let (bytes, vk) = base();
    let vk = SecretBytes::from_slice(vk);
    let mut vol = open(bytes.clone()).unwrap();
    vol.add_keyslot(&vk, b"new", &KdfParams::pbkdf2_min(), None)
        .unwrap();
    let new = vol.into_storage().into_inner();
    let mut after = new.clone();
    // Put back the old secondary copy: it is valid but older.
    after[HDR as usize..2 * HDR as usize].copy_from_slice(&bytes[HDR as usize..2 * HDR as usize]);
    let mut vol = open(after.clone()).unwrap();
    let r = vol.load_report();
    assert_eq!(r.used, HeaderCopy::Primary);
    assert!(r.needs_repair);
    assert_eq!(
        r.secondary.as_ref().unwrap() + 1,
        *r.primary.as_ref().unwrap()
    );
    assert!(vol.unlock(b"new", None).is_ok());
    // Old primary + new secondary: the secondary wins.
    let mut swapped = new.clone();
    swapped[..HDR as usize].copy_from_slice(&bytes[..HDR as usize]);
    let mut vol2 = open(swapped).unwrap();
    assert_eq!(vol2.load_report().used, HeaderCopy::Secondary);
    assert!(vol2.unlock(b"new", None).is_ok());
    assert!(vol2.repair().unwrap());
    let vol2 = open(vol2.into_storage().into_inner()).unwrap();
    assert!(!vol2.load_report().needs_repair);
    assert!(vol.repair().unwrap());
    assert!(!vol.repair().unwrap());
}

#[test]
fn header_backup_and_restore() {
    let (bytes, _) = base();
    let mut vol = open(bytes.clone()).unwrap();
    let backup = vol.header_backup().unwrap();
    assert_eq!(backup.len() as u64, vol.header_area_len());
    // Destroy the header, restore it.
    let mut damaged = bytes.clone();
    damaged[..2 * HDR as usize].fill(0);
    assert!(open(damaged.clone()).is_err());
    let mut vol = Volume::header_restore(Cursor::new(damaged), &backup).unwrap();
    assert!(vol.unlock(b"pw", None).is_ok());
    // A backup with a different data offset is refused over an existing header.
    let other = Volume::format(
        Cursor::new(Vec::new()),
        &FormatOptions {
            data_offset: Some(32 << 20),
            ..small_opts()
        },
        &SecretBytes::random(64).unwrap(),
        b"x",
    )
    .unwrap()
    .header_backup_owned();
    assert!(matches!(
        Volume::header_restore(Cursor::new(bytes.clone()), &other),
        Err(Error::Invalid(_))
    ));
    // Garbage is refused.
    assert!(Volume::header_restore(Cursor::new(bytes.clone()), &vec![0u8; backup.len()]).is_err());
    assert!(Volume::header_restore(Cursor::new(bytes.clone()), &backup[..HDR as usize]).is_err());
}

trait BackupOwned {
    fn header_backup_owned(self) -> Vec<u8>;
}
impl BackupOwned for Volume<Cursor<Vec<u8>>> {
    fn header_backup_owned(mut self) -> Vec<u8> {
        self.header_backup().unwrap()
    }
}

#[test]
fn not_luks_and_luks1_are_named() {
    assert!(matches!(open(vec![0u8; 1 << 20]), Err(Error::NotLuks)));
    assert!(matches!(open(Vec::new()), Err(Error::NotLuks)));
    let mut luks1 = vec![0u8; 1 << 20];
    luks1[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
    assert!(matches!(open(luks1), Err(Error::UnsupportedVersion(1))));
    // A truncated device.
    let (bytes, _) = base();
    let need = open(bytes.clone()).unwrap().header_area_len() as usize;
    assert!(matches!(
        open(bytes[..need - 4096].to_vec()),
        Err(Error::DeviceTooSmall { .. })
    ));
}

#[test]
fn data_segment_geometry() {
    let (bytes, vk) = base();
    let vol = open(bytes.clone()).unwrap();
    let seg = vol.data_segment().unwrap();
    assert_eq!(seg.offset, 2 << 20);
    assert_eq!(seg.size, None);
    assert_eq!(seg.key_size, 64);
    assert_eq!(seg.data_len((2 << 20) + 10_000).unwrap(), 8192);
    assert!(seg.data_len(1000).is_err());
    assert!(seg.cipher(&SecretBytes::from_slice(vk)).is_ok());
    assert!(seg.cipher(&SecretBytes::random(32).unwrap()).is_err());
    assert_eq!(seg.iv_at(8192), 16);
}
