use super::*;
use crate::{AnyVolume, Error, KdfParams};
use sealvol_crypto::{HashAlg, SecretBytes};
use std::io::Cursor;

fn fmt(opts: &FormatOptions, pass: &[u8]) -> (Volume<Cursor<Vec<u8>>>, SecretBytes) {
    let vk = SecretBytes::random(opts.key_size_bits as usize / 8).unwrap();
    let v = Volume::format(Cursor::new(Vec::new()), opts, &vk, pass).unwrap();
    (v, vk)
}

fn bytes(v: Volume<Cursor<Vec<u8>>>) -> Vec<u8> {
    v.into_storage().into_inner()
}

#[test]
fn format_matches_cryptsetup_layout() {
    let (v, _) = fmt(&FormatOptions::default(), b"pw");
    let h = v.header();
    // 64-byte key: 500 sectors of material, aligned to 8 sectors, from sector 8.
    let offs: Vec<u32> = h.keyslots().iter().map(|k| k.key_material_offset).collect();
    assert_eq!(offs, [8, 512, 1016, 1520, 2024, 2528, 3032, 3536]);
    assert_eq!(h.payload_offset(), 4096);
    assert_eq!(h.cipher(), "aes-xts-plain64");
    assert_eq!(h.active_keyslots(), [0]);
    let b = bytes(v);
    assert_eq!(&b[..8], b"LUKS\xba\xbe\x00\x01");
    assert_eq!(b.len(), 4096 * 512);
    // AES-128-XTS (32-byte key): 250 sectors → 256.
    let (v, _) = fmt(
        &FormatOptions {
            key_size_bits: 256,
            ..Default::default()
        },
        b"pw",
    );
    assert_eq!(v.header().keyslots()[1].key_material_offset, 264);
    assert_eq!(v.header().payload_offset(), 4096);
}

#[test]
fn encode_decode_round_trip_and_unlock() {
    let (mut v, vk) = fmt(&FormatOptions::default(), b"first");
    let h = Header::decode(&v.header().encode()).unwrap();
    assert_eq!(&h, v.header());
    let u = v.unlock(b"first", None).unwrap();
    assert!(u.volume_key.ct_eq(vk.expose()));
    assert!(matches!(v.unlock(b"wrong", None), Err(Error::WrongKey)));
    let b = bytes(v);
    let mut again = Volume::open(Cursor::new(b)).unwrap();
    assert_eq!(again.unlock(b"first", Some(0)).unwrap().keyslot, 0);
    assert!(matches!(
        again.unlock(b"first", Some(1)),
        Err(Error::NoSuchKeyslot(1))
    ));
}

#[test]
fn keyslots_add_change_remove_erase() {
    let (mut v, vk) = fmt(
        &FormatOptions {
            hash: HashAlg::Sha1,
            ..Default::default()
        },
        b"a",
    );
    assert_eq!(v.add_keyslot(&vk, b"b", 1000, None).unwrap(), 1);
    assert!(matches!(
        v.add_keyslot(&vk, b"c", 1000, Some(1)),
        Err(Error::KeyslotInUse(1))
    ));
    let wrong = SecretBytes::random(64).unwrap();
    assert!(matches!(
        v.add_keyslot(&wrong, b"c", 1000, None),
        Err(Error::WrongKey)
    ));
    let new = v.change_key(b"a", b"a2", None, None).unwrap();
    assert_eq!(new, 2);
    assert!(matches!(v.unlock(b"a", None), Err(Error::WrongKey)));
    assert_eq!(v.unlock(b"a2", None).unwrap().keyslot, 2);
    v.remove_keyslot(1).unwrap();
    assert!(matches!(v.remove_keyslot(2), Err(Error::LastKeyslot(2))));
    assert_eq!(v.header().active_keyslots(), [2]);
    let k = &v.header().keyslots()[0];
    assert!(!k.active && k.iterations == 0 && k.salt == [0; 32]);
    v.erase().unwrap();
    assert!(v.header().active_keyslots().is_empty());
    let mut re = Volume::open(Cursor::new(bytes(v))).unwrap();
    assert!(matches!(re.unlock(b"a2", None), Err(Error::WrongKey)));
}

#[test]
fn any_volume_dispatches_by_version_and_refuses_argon2_on_luks1() {
    let (v, vk) = fmt(&FormatOptions::default(), b"pw");
    let mut any = AnyVolume::open(Cursor::new(bytes(v))).unwrap();
    assert_eq!(any.version(), 1);
    let seg = any.data_segment().unwrap();
    assert_eq!(
        (seg.offset, seg.sector_size.bytes(), seg.key_size),
        (4096 * 512, 512, 64)
    );
    let argon = KdfParams::Argon2 {
        variant: sealvol_crypto::kdf::Argon2Variant::Argon2id,
        time: 4,
        memory_kib: 32,
        parallel: 1,
    };
    assert!(any.add_keyslot(&vk, b"x", &argon, None).is_err());
    let sha512 = KdfParams::Pbkdf2 {
        hash: HashAlg::Sha512,
        iterations: 1000,
    };
    let e = any.add_keyslot(&vk, b"x", &sha512, None).unwrap_err();
    assert!(e.to_string().contains("--hash sha256"), "{e}");
    assert_eq!(
        any.add_keyslot(&vk, b"x", &KdfParams::pbkdf2_min(), None)
            .unwrap(),
        1
    );
    assert!(any.luks2_mut("tokens").is_err());
    let backup = any.header_backup().unwrap();
    assert_eq!(backup.len() as u64, 3536 * 512 + 500 * 512);
    let mut dev = any.into_storage().into_inner();
    dev[..4096 * 512].fill(0);
    let mut restored = AnyVolume::header_restore(Cursor::new(dev), &backup).unwrap();
    assert_eq!(restored.unlock(b"x", None).unwrap().keyslot, 1);
}

fn valid_phdr() -> [u8; PHDR_LEN] {
    fmt(&FormatOptions::default(), b"pw").0.header().encode()
}

fn refused(mut b: [u8; PHDR_LEN], edit: impl FnOnce(&mut [u8; PHDR_LEN])) -> Error {
    edit(&mut b);
    Header::decode(&b).unwrap_err()
}

fn put(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

const SLOT: usize = 208;

#[track_caller]
fn refused_by(b: [u8; PHDR_LEN], edit: impl FnOnce(&mut [u8; PHDR_LEN]), rule: &str) {
    let e = refused(b, edit);
    assert!(e.to_string().contains(&format!("rule {rule};")), "{e}");
}

fn loads(mut b: [u8; PHDR_LEN], edit: impl FnOnce(&mut [u8; PHDR_LEN])) -> Header {
    edit(&mut b);
    Header::decode(&b).unwrap_or_else(|e| panic!("cryptsetup loads this header: {e}"))
}

#[test]
fn rule_luks1_keyslots_no_overlap() {
    // Slot 1 starts inside slot 0.
    refused_by(
        valid_phdr(),
        |b| put(b, SLOT + 48 + 40, 100),
        "luks1-keyslots-no-overlap",
    );
}

#[test]
fn rule_luks1_keyslot_before_payload() {
    refused_by(
        valid_phdr(),
        |b| put(b, 104, 3600),
        "luks1-keyslot-before-payload",
    );
}

#[test]
fn luks1_offsets_use_cryptsetups_uint32_arithmetic() {
    // Slots 6 and 7 overlap, but slot 6's end wraps past 2^32 in cryptsetup's uint32 sum,
    // so cryptsetup (detached, no payload check) loads the header; so does sealvol.
    loads(valid_phdr(), |b| {
        put(b, 104, 0);
        put(b, SLOT + 6 * 48 + 40, u32::MAX - 100);
        put(b, SLOT + 7 * 48 + 40, u32::MAX - 50);
    });
}

#[test]
fn rule_luks1_stripes() {
    refused_by(valid_phdr(), |b| put(b, SLOT + 44, 1), "luks1-stripes");
    // Even for an inactive slot.
    refused_by(
        valid_phdr(),
        |b| put(b, SLOT + 7 * 48 + 44, 3999),
        "luks1-stripes",
    );
}

#[test]
fn rule_luks1_keyslot_after_header() {
    refused_by(
        valid_phdr(),
        |b| put(b, SLOT + 40, 1),
        "luks1-keyslot-after-header",
    );
    // 2^23 sectors * 512 wraps to 0 in cryptsetup's uint32 product.
    refused_by(
        valid_phdr(),
        |b| {
            put(b, 104, 0);
            put(b, SLOT + 7 * 48 + 40, 1 << 23);
        },
        "luks1-keyslot-after-header",
    );
}

#[test]
fn rule_luks1_hash_known() {
    refused_by(
        valid_phdr(),
        |b| b[72..78].copy_from_slice(b"md5\0\0\0"),
        "luks1-hash-known",
    );
    refused_by(
        valid_phdr(),
        |b| b[72..79].copy_from_slice(b"sha256 "),
        "luks1-hash-known",
    );
    let with_hash = |spec: &[u8]| {
        loads(valid_phdr(), |b| {
            b[72..104].fill(0);
            b[72..72 + spec.len()].copy_from_slice(spec);
        })
    };
    // Hashes cryptsetup knows but sealvol does not implement: loaded, not usable.
    for spec in [&b"SHA256"[..], b"sha3-256"] {
        let h = with_hash(spec);
        assert!(
            matches!(h.usable(), Err(Error::Unsupported { .. })),
            "{:?}",
            h.hash_spec()
        );
    }
    // Hashes cryptsetup knows that sealvol implements too (HashAlg): loaded and usable.
    for (spec, alg) in [
        (&b"ripemd160"[..], HashAlg::Ripemd160),
        (b"whirlpool", HashAlg::Whirlpool),
    ] {
        let h = with_hash(spec);
        h.usable()
            .unwrap_or_else(|e| panic!("{:?}: {e}", h.hash_spec()));
        assert_eq!(h.hash(), alg);
    }
}

#[test]
fn rule_luks1_key_bytes() {
    refused_by(valid_phdr(), |b| put(b, 108, 0), "luks1-key-bytes");
}

#[test]
fn what_cryptsetup_loads_is_read_even_when_sealvol_cannot_use_it() {
    let ok = valid_phdr();
    // cipher_null, another cipher, an odd key size, 0 digest iterations, an odd slot
    // state, a payload offset inside the header, a UUID without NUL: cryptsetup loads all
    // of these; sealvol reads them and refuses to use the ones it cannot.
    let h = loads(ok, |b| {
        b[8..40].fill(0);
        b[8..19].copy_from_slice(b"cipher_null");
    });
    assert!(matches!(h.usable(), Err(Error::UnsupportedCipher { .. })));
    let h = loads(ok, |b| b[40..43].copy_from_slice(b"cbc"));
    assert!(matches!(h.usable(), Err(Error::UnsupportedCipher { .. })));
    let h = loads(ok, |b| put(b, 108, 40));
    assert!(matches!(h.usable(), Err(Error::UnsupportedCipher { .. })));
    let h = loads(ok, |b| put(b, 164, 0));
    assert!(h.usable().is_err());
    let h = loads(ok, |b| put(b, SLOT + 48, 7));
    assert!(!h.keyslots()[1].active);
    loads(ok, |b| b[168..208].fill(b'a'));
    let e = refused(ok, |b| b[7] = 3);
    assert!(matches!(e, Error::UnsupportedVersion(3)), "{e}");
}

/// A LUKS1 header in any cipher cryptsetup writes and `CipherSpec` implements loads and is
/// usable; an unknown cipher name or mode loads (cryptsetup checks no cipher at load) and is
/// unusable with the part named, never unreadable.
#[test]
fn luks1_usable_follows_cipher_spec() {
    let with = |name: &str, mode: &str, key_bytes: u32| {
        loads(valid_phdr(), |b| {
            b[8..72].fill(0);
            b[8..8 + name.len()].copy_from_slice(name.as_bytes());
            b[40..40 + mode.len()].copy_from_slice(mode.as_bytes());
            put(b, 108, key_bytes);
        })
    };
    for (name, mode, key_bytes) in [
        ("aes", "xts-plain64", 48),
        ("serpent", "xts-plain64", 64),
        ("twofish", "xts-plain", 32),
        ("aes", "cbc-essiv:sha256", 32),
        ("serpent", "cbc-plain64", 16),
        ("twofish", "cbc-essiv:sha256", 24),
        ("xchacha12,aes", "adiantum-plain64", 32),
        ("xchacha20,aes", "adiantum-plain64", 32),
    ] {
        let h = with(name, mode, key_bytes);
        h.usable()
            .unwrap_or_else(|e| panic!("{name}-{mode} {key_bytes}: {e}"));
        let spec = h.cipher_spec().unwrap();
        assert_eq!(
            (spec.cipher_name(), spec.mode_name().as_str()),
            (name, mode)
        );
    }
    use sealvol_crypto::spec::CipherPart;
    for (name, mode, key_bytes, part) in [
        ("camellia", "xts-plain64", 64, CipherPart::Cipher),
        ("aes", "cbc-lmk", 32, CipherPart::Iv),
        ("aes", "ecb", 32, CipherPart::Mode),
        ("serpent", "xts-plain64", 16, CipherPart::KeySize),
    ] {
        let h = with(name, mode, key_bytes);
        assert_eq!(h.cipher(), format!("{name}-{mode}"));
        match h.usable() {
            Err(Error::UnsupportedCipher { part: p, .. }) => assert_eq!(p, part, "{name}-{mode}"),
            other => panic!("{name}-{mode} {key_bytes}: {other:?}"),
        }
    }
}

#[test]
fn detached_header_has_payload_zero_and_no_data() {
    let (v, _) = fmt(
        &FormatOptions {
            detached: true,
            ..Default::default()
        },
        b"pw",
    );
    assert_eq!(v.header().payload_offset(), 0);
    assert_eq!(v.data_segment().unwrap().offset, 0);
    assert_eq!(bytes(v).len() as u64, 4040 * 512);
}

/// Issue 9: a payload at offset 0 is valid only for a detached header; used attached, a data
/// write would overwrite the header and key material.
#[test]
fn payload_zero_is_refused_attached_and_used_detached() {
    let (v, _) = fmt(
        &FormatOptions {
            detached: true,
            ..Default::default()
        },
        b"pw",
    );
    let end = v.header_area_len();
    let e = v
        .data_segment_for(crate::HeaderPlacement::Attached)
        .unwrap_err();
    assert!(
        matches!(e, Error::DataOverlapsHeader { data_offset: 0, header_end } if header_end == end),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("byte 0") && msg.contains(&end.to_string()),
        "{msg}"
    );
    let seg = v
        .data_segment_for(crate::HeaderPlacement::Detached)
        .unwrap();
    assert_eq!(seg.offset, 0);
    // The usual attached layout passes.
    let (v, _) = fmt(&FormatOptions::default(), b"pw");
    assert_eq!(
        v.data_segment_for(crate::HeaderPlacement::Attached)
            .unwrap()
            .offset,
        4096 * 512
    );
}

/// Issue 9: a key slot or digest asking for more PBKDF2 iterations than the limit is refused
/// before any derivation, naming the object; a raised limit opens it.
#[test]
fn costly_keyslots_and_digests_are_refused_before_any_work() {
    let opts = FormatOptions {
        iterations: 20_000,
        ..Default::default()
    };
    let (mut v, vk) = fmt(&opts, b"pw");
    let tight = crate::KdfLimits {
        max_pbkdf2_iterations: 10_000,
        ..Default::default()
    };
    v.set_kdf_limits(tight);
    let e = v.unlock(b"pw", None).unwrap_err();
    assert!(
        matches!(&e, Error::KdfOverLimit { object, option: "--kdf-max-iterations", .. } if object == "keyslot 0"),
        "{e:?}"
    );
    // A wrong key gets the same refusal: nothing is tried.
    assert!(matches!(
        v.unlock(b"wrong", Some(0)),
        Err(Error::KdfOverLimit { .. })
    ));
    // The digest counts too (LUKS1 headers carry their own mk-digest-iter).
    v.set_kdf_limits(crate::KdfLimits {
        max_pbkdf2_iterations: 500,
        ..Default::default()
    });
    let e = v.verify_volume_key(&vk).unwrap_err();
    assert!(
        matches!(&e, Error::KdfOverLimit { object, .. } if object.contains("digest")),
        "{e:?}"
    );
    v.set_kdf_limits(crate::KdfLimits::default());
    assert!(v.unlock(b"pw", None).unwrap().volume_key.ct_eq(vk.expose()));
    // Through the version-independent front as well.
    let mut any = AnyVolume::open(v.into_storage()).unwrap();
    any.set_kdf_limits(tight);
    assert!(matches!(
        any.unlock(b"pw", None),
        Err(Error::KdfOverLimit { .. })
    ));
}
