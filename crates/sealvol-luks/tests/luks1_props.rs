//! LUKS1 header properties over in-memory bytes: valid headers (written here from the
//! specification's layout, §2.4 and §2.5) parse and re-encode to the same bytes; one
//! corrupted byte in a real header is refused cleanly or still opens with the same key;
//! arbitrary bytes never panic the parser.

use proptest::prelude::*;
use sealvol_crypto::SecretBytes;
use sealvol_luks::luks1::{self, material_sectors, Header, Volume, PHDR_LEN};
use std::io::Cursor;
use std::sync::OnceLock;

/// One LUKS1 header in the specification's terms.
#[derive(Debug, Clone)]
struct Spec {
    hash: &'static str,
    key_bytes: u32,
    mk_digest: [u8; 20],
    mk_salt: [u8; 32],
    mk_iter: u32,
    uuid: String,
    /// (active, iterations, salt) per slot.
    slots: Vec<(bool, u32, [u8; 32])>,
    /// Sectors left free between key material areas, and after the last one.
    gap: u32,
    tail: u32,
    detached: bool,
}

impl Spec {
    /// The 592 bytes, every integer big-endian; the key material areas follow each other
    /// from sector 8, 4096-byte aligned, as cryptsetup lays them out.
    fn bytes(&self) -> [u8; PHDR_LEN] {
        let mut b = [0u8; PHDR_LEN];
        let text =
            |b: &mut [u8], at: usize, s: &str| b[at..at + s.len()].copy_from_slice(s.as_bytes());
        b[..6].copy_from_slice(b"LUKS\xba\xbe");
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        text(&mut b, 8, "aes");
        text(&mut b, 40, "xts-plain64");
        text(&mut b, 72, self.hash);
        b[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_salt);
        b[164..168].copy_from_slice(&self.mk_iter.to_be_bytes());
        text(&mut b, 168, &self.uuid);
        let secs = material_sectors(self.key_bytes) as u32;
        let step = (secs + self.gap).div_ceil(8) * 8;
        for (i, (active, iterations, salt)) in self.slots.iter().enumerate() {
            let at = 208 + i * 48;
            let state: u32 = if *active { 0x00AC_71F3 } else { 0x0000_DEAD };
            b[at..at + 4].copy_from_slice(&state.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&iterations.to_be_bytes());
            b[at + 8..at + 40].copy_from_slice(salt);
            b[at + 40..at + 44].copy_from_slice(&(8 + i as u32 * step).to_be_bytes());
            b[at + 44..at + 48].copy_from_slice(&4000u32.to_be_bytes());
        }
        b[104..108].copy_from_slice(&self.payload().to_be_bytes());
        b
    }

    fn payload(&self) -> u32 {
        if self.detached {
            return 0;
        }
        let secs = material_sectors(self.key_bytes) as u32;
        let step = (secs + self.gap).div_ceil(8) * 8;
        8 + 7 * step + secs + self.tail
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            prop::sample::select(vec!["sha1", "sha256", "sha512"]),
            prop::sample::select(vec![32u32, 64]),
            any::<[u8; 20]>(),
            any::<[u8; 32]>(),
            1u32..,
            "[ -~&&[^ ]]{0,39}",
        ),
        prop::collection::vec((any::<bool>(), 1u32.., any::<[u8; 32]>()), 8),
        0u32..5000,
        0u32..100_000,
        any::<bool>(),
    )
        .prop_map(
            |((hash, key_bytes, mk_digest, mk_salt, mk_iter, uuid), slots, gap, tail, detached)| {
                Spec {
                    hash,
                    key_bytes,
                    mk_digest,
                    mk_salt,
                    mk_iter,
                    uuid,
                    slots,
                    gap,
                    tail,
                    detached,
                }
            },
        )
}

/// One formatted volume (bytes, volume key, data offset), shared by all cases.
fn base() -> &'static (Vec<u8>, Vec<u8>, u64) {
    static BASE: OnceLock<(Vec<u8>, Vec<u8>, u64)> = OnceLock::new();
    BASE.get_or_init(|| {
        let vk = SecretBytes::random(64).unwrap();
        let opts = luks1::FormatOptions::default();
        let vol = Volume::format(Cursor::new(Vec::new()), &opts, &vk, b"pw").unwrap();
        let offset = vol.data_segment().unwrap().offset;
        (
            vol.into_storage().into_inner(),
            vk.expose().to_vec(),
            offset,
        )
    })
}

/// Whether unlocking costs little: a corrupted iteration count can ask for billions.
fn cheap(h: &Header) -> bool {
    const MAX: u32 = 100_000;
    h.mk_digest_iter() <= MAX
        && h.keyslots()
            .iter()
            .all(|k| !k.active || k.iterations <= MAX)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A valid header parses to what it says and encodes back to the same bytes.
    #[test]
    fn valid_headers_round_trip(s in spec()) {
        let bytes = s.bytes();
        let h = Header::decode(&bytes).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        prop_assert_eq!(h.hash().as_str(), s.hash);
        prop_assert_eq!(h.key_bytes(), s.key_bytes);
        prop_assert_eq!(h.payload_offset(), s.payload());
        prop_assert_eq!(h.mk_digest_iter(), s.mk_iter);
        prop_assert_eq!(h.uuid(), s.uuid.as_str());
        let active: Vec<u32> = (0..8).filter(|&i| s.slots[i as usize].0).collect();
        prop_assert_eq!(h.active_keyslots(), active);
        prop_assert_eq!(h.encode(), bytes);
        prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    /// Any single corrupted byte of the binary header: refused cleanly, or the volume
    /// opens and either refuses the passphrase cleanly or yields the same volume key; its
    /// data starts at the payload offset, the original one unless that field was hit.
    #[test]
    fn one_corrupted_byte_is_refused_or_opens_with_the_same_key(
        at in 0usize..PHDR_LEN,
        flip in 1u8..=255,
    ) {
        let (bytes, vk, offset) = base();
        let mut b = bytes.clone();
        b[at] ^= flip;
        let Ok(mut vol) = Volume::open(Cursor::new(b)) else {
            return Ok(());
        };
        // A header cryptsetup loads but sealvol cannot use (a damaged cipher name, hash or
        // key size) is read, and refuses its data and keyslots cleanly.
        let Ok(seg) = vol.data_segment() else {
            prop_assert!(vol.header().usable().is_err());
            prop_assert!(vol.unlock(b"pw", None).is_err());
            return Ok(());
        };
        prop_assert_eq!(seg.offset, u64::from(vol.header().payload_offset()) * 512);
        if !(104..108).contains(&at) {
            prop_assert_eq!(seg.offset, *offset);
        }
        if !cheap(vol.header()) {
            return Ok(());
        }
        if let Ok(u) = vol.unlock(b"pw", None) {
            prop_assert_eq!(u.volume_key.expose(), &vk[..]);
        }
    }

    /// Arbitrary bytes, with or without a LUKS1 magic and version in front: an error or a
    /// header that round-trips, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        mut b in prop::collection::vec(any::<u8>(), 0..1200),
        magic in any::<bool>(),
    ) {
        if magic && b.len() >= 8 {
            b[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
        }
        if let Ok(h) = Header::decode(&b) {
            prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }
        let _ = Volume::open(Cursor::new(b));
    }

    /// Several corrupted bytes of a real header: never a panic.
    #[test]
    fn many_corrupted_bytes_never_panic(
        hits in prop::collection::vec((0usize..PHDR_LEN, any::<u8>()), 1..16),
    ) {
        let mut b = base().0.clone();
        for (at, v) in hits {
            b[at] = v;
        }
        if let Ok(mut vol) = Volume::open(Cursor::new(b)) {
            if cheap(vol.header()) {
                let _ = vol.unlock(b"pw", None);
            }
        }
    }
}
