use super::*;
use proptest::prelude::*;

const SIZES: [SectorSize; 4] = [
    SectorSize::S512,
    SectorSize::S1024,
    SectorSize::S2048,
    SectorSize::S4096,
];

struct Vector {
    name: String,
    key: Vec<u8>,
    dusn: u64,
    pt: Vec<u8>,
    ct: Vec<u8>,
}

/// Parses `tests/data/ieee1619_xts.txt`.
fn vectors() -> Vec<Vector> {
    let text = include_str!("../../tests/data/ieee1619_xts.txt");
    let mut out = Vec::new();
    let mut name = String::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut flush = |name: &str, fields: &mut Vec<(String, String)>| {
        if fields.is_empty() {
            return;
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        out.push(Vector {
            name: name.to_string(),
            key: hex::decode(get("key")).unwrap(),
            dusn: u64::from_str_radix(&get("dusn"), 16).unwrap(),
            pt: hex::decode(get("pt")).unwrap(),
            ct: hex::decode(get("ct")).unwrap(),
        });
        fields.clear();
    };
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# IEEE 1619-2007 ") {
            name = c.to_string();
        } else if line.starts_with('#') || line.trim().is_empty() {
            flush(&name, &mut fields);
        } else {
            let (k, v) = line.split_once(" = ").unwrap();
            fields.push((k.to_string(), v.to_string()));
        }
    }
    flush(&name, &mut fields);
    out
}

fn secret(b: &[u8]) -> SecretBytes {
    SecretBytes::from_slice(b)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).unwrap();
    v
}

fn backends() -> Vec<Backend> {
    if Backend::AwsLc.is_available() {
        vec![Backend::AwsLc, Backend::RustCrypto]
    } else {
        vec![Backend::RustCrypto]
    }
}

#[test]
fn vectors_file_is_complete() {
    let v = vectors();
    let names: Vec<_> = v
        .iter()
        .map(|v| v.name.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(names, ["1", "2", "4", "10", "11", "12", "13", "14"]);
    assert!(v.iter().all(|v| v.pt.len() == v.ct.len()));
}

/// Vectors with 512-byte data units run through the public API with 512-byte sectors and
/// `first_iv = dusn`, on every backend that supports the key.
#[test]
fn ieee1619_vectors_public_api() {
    let mut ran = 0;
    for v in vectors().iter().filter(|v| v.pt.len() == 512) {
        for backend in backends() {
            if backend == Backend::AwsLc && v.key.len() == 32 {
                continue; // aws-lc has no AES-128-XTS
            }
            let mut c = XtsCipher::with_backend(&secret(&v.key), backend).unwrap();
            let mut buf = v.pt.clone();
            c.encrypt_sectors(&mut buf, SectorSize::S512, v.dusn)
                .unwrap();
            assert_eq!(
                hex::encode(&buf),
                hex::encode(&v.ct),
                "{} {backend:?} encrypt",
                v.name
            );
            c.decrypt_sectors(&mut buf, SectorSize::S512, v.dusn)
                .unwrap();
            assert_eq!(buf, v.pt, "{} {backend:?} decrypt", v.name);
            ran += 1;
        }
    }
    // vector 4 on RustCrypto, vectors 10-14 on both backends.
    assert_eq!(ran, if Backend::AwsLc.is_available() { 11 } else { 6 });
}

/// Every vector (including the 32-byte data units of vectors 1 and 2) through the
/// RustCrypto XTS loop with the data unit as the "sector".
#[test]
fn ieee1619_vectors_soft_loop() {
    for v in vectors() {
        let mut buf = v.pt.clone();
        let unit = v.pt.len();
        let run = |buf: &mut [u8], enc: bool| match v.key.len() {
            32 => SoftXts::<Aes128, Aes128Enc>::new(&v.key, "AES-XTS", "32")
                .unwrap()
                .crypt(buf, unit, v.dusn, 1, enc),
            64 => SoftXts::<Aes256, Aes256Enc>::new(&v.key, "AES-XTS", "64")
                .unwrap()
                .crypt(buf, unit, v.dusn, 1, enc),
            _ => unreachable!(),
        };
        run(&mut buf, true);
        assert_eq!(hex::encode(&buf), hex::encode(&v.ct), "{}", v.name);
        run(&mut buf, false);
        assert_eq!(buf, v.pt, "{}", v.name);
    }
}

#[test]
fn awslc_refuses_equal_key_halves() {
    if !Backend::AwsLc.is_available() {
        return;
    }
    let key = secret(&[0x42; 64]);
    let e = XtsCipher::with_backend(&key, Backend::AwsLc).unwrap_err();
    assert!(matches!(e, Error::Backend(_)), "{e:?}");
    assert!(e.to_string().contains("halves are equal"), "{e}");
    assert!(XtsCipher::new(&key).is_err());
    // The pure-Rust backend accepts it (IEEE vector 1 uses such a key).
    assert!(XtsCipher::with_backend(&key, Backend::RustCrypto).is_ok());
}

#[test]
fn key_lengths() {
    for len in [0, 16, 31, 33, 47, 49, 63, 65, 128] {
        for backend in [Backend::AwsLc, Backend::RustCrypto] {
            let e = XtsCipher::with_backend(&SecretBytes::zeroed(len), backend).unwrap_err();
            assert!(
                matches!(e, Error::KeyLength { got, .. } if got == len),
                "{e:?}"
            );
        }
    }
    let k32 = SecretBytes::random(32).unwrap();
    let c = XtsCipher::new(&k32).unwrap();
    assert_eq!((c.key_len(), c.backend()), (32, Backend::RustCrypto));
    let e = XtsCipher::with_backend(&k32, Backend::AwsLc).unwrap_err();
    if Backend::AwsLc.is_available() {
        assert!(matches!(e, Error::KeyLength { got: 32, .. }), "{e:?}");
        assert!(e.to_string().contains("Backend::RustCrypto"), "{e}");
    } else {
        assert!(matches!(e, Error::Backend(_)), "{e:?}");
    }
    // AES-192-XTS: RustCrypto only.
    let k48 = SecretBytes::random(48).unwrap();
    let c = XtsCipher::new(&k48).unwrap();
    assert_eq!((c.key_len(), c.backend()), (48, Backend::RustCrypto));
    assert!(XtsCipher::with_backend(&k48, Backend::AwsLc).is_err());
    let k64 = SecretBytes::random(64).unwrap();
    let c = XtsCipher::new(&k64).unwrap();
    let want = if Backend::AwsLc.is_available() {
        Backend::AwsLc
    } else {
        Backend::RustCrypto
    };
    assert_eq!((c.key_len(), c.backend()), (64, want));
    assert!(!format!("{c:?}").contains(&hex::encode(k64.expose())[..8]));
}

#[test]
fn unaligned_and_overflow_are_refused() {
    let mut c = XtsCipher::new(&SecretBytes::random(64).unwrap()).unwrap();
    let mut buf = vec![0u8; 4096 + 512];
    let e = c
        .encrypt_sectors(&mut buf, SectorSize::S4096, 0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unaligned {
                len: 4608,
                sector_size: 4096
            }
        ),
        "{e:?}"
    );
    assert!(buf.iter().all(|&b| b == 0), "nothing written on error");
    let mut buf = vec![0u8; 100];
    assert!(c.decrypt_sectors(&mut buf, SectorSize::S512, 0).is_err());
    // Last sector's IV = u64::MAX - 7 + 8 overflows; u64::MAX - 7 as the only sector is fine.
    let mut buf = vec![0u8; 8192];
    let e = c
        .encrypt_sectors(&mut buf, SectorSize::S4096, u64::MAX - 7)
        .unwrap_err();
    assert!(matches!(e, Error::IvOverflow { .. }), "{e:?}");
    c.encrypt_sectors(&mut buf[..4096], SectorSize::S4096, u64::MAX - 7)
        .unwrap();
    // Empty buffers are a no-op.
    c.encrypt_sectors(&mut [], SectorSize::S4096, u64::MAX)
        .unwrap();
}

#[test]
fn iv_counts_512_byte_units() {
    // Encrypting several sectors at once equals encrypting them one by one, sector `i` at
    // IV `first_iv + i * sector_size / 512`.
    for backend in backends() {
        let key = SecretBytes::random(64).unwrap();
        let mut c = XtsCipher::with_backend(&key, backend).unwrap();
        for ss in SIZES {
            let pt = random_bytes(ss.bytes() * 3);
            let mut whole = pt.clone();
            c.encrypt_sectors(&mut whole, ss, 100).unwrap();
            let mut parts = pt.clone();
            for (i, s) in parts.chunks_mut(ss.bytes()).enumerate() {
                c.encrypt_sectors(s, ss, 100 + i as u64 * ss.iv_units())
                    .unwrap();
            }
            assert_eq!(whole, parts, "{backend:?} {ss:?}");
        }
    }
}

#[test]
fn backends_agree_on_random_input() {
    if !Backend::AwsLc.is_available() {
        return;
    }
    for ss in SIZES {
        for first_iv in [
            0u64,
            1,
            7,
            0xffff_ffff,
            1 << 40,
            u64::MAX - 1024,
            u64::MAX - 64 * 8,
        ] {
            let key = SecretBytes::random(64).unwrap();
            let mut a = XtsCipher::with_backend(&key, Backend::AwsLc).unwrap();
            let mut r = XtsCipher::with_backend(&key, Backend::RustCrypto).unwrap();
            let pt = random_bytes(ss.bytes() * 7);
            let (mut x, mut y) = (pt.clone(), pt.clone());
            a.encrypt_sectors(&mut x, ss, first_iv).unwrap();
            r.encrypt_sectors(&mut y, ss, first_iv).unwrap();
            assert_eq!(x, y, "{ss:?} iv {first_iv:#x}");
            assert_ne!(x, pt);
            r.decrypt_sectors(&mut x, ss, first_iv).unwrap();
            a.decrypt_sectors(&mut y, ss, first_iv).unwrap();
            assert_eq!((x.as_slice(), y.as_slice()), (pt.as_slice(), pt.as_slice()));
        }
    }
}

#[test]
fn aes128_round_trip_and_differs_from_aes256() {
    let key = SecretBytes::random(32).unwrap();
    let mut c = XtsCipher::new(&key).unwrap();
    for ss in SIZES {
        let pt = random_bytes(ss.bytes() * 3);
        let mut buf = pt.clone();
        c.encrypt_sectors(&mut buf, ss, 42).unwrap();
        assert_ne!(buf, pt);
        c.decrypt_sectors(&mut buf, ss, 42).unwrap();
        assert_eq!(buf, pt);
    }
}

#[test]
fn try_clone_is_equivalent_and_send() {
    fn assert_send<T: Send>(_: &T) {}
    let key = SecretBytes::random(64).unwrap();
    for backend in backends() {
        let c = XtsCipher::with_backend(&key, backend).unwrap();
        let mut d = c.try_clone().unwrap();
        assert_eq!(d.backend(), backend);
        assert_send(&d);
        let pt = random_bytes(8192);
        let mut x = pt.clone();
        let handle = std::thread::spawn(move || {
            let mut c = c;
            let mut y = pt;
            c.encrypt_sectors(&mut y, SectorSize::S4096, 9).unwrap();
            y
        });
        d.encrypt_sectors(&mut x, SectorSize::S4096, 9).unwrap();
        assert_eq!(handle.join().unwrap(), x);
    }
}

#[test]
fn parallel_matches_single() {
    let key = SecretBytes::random(64).unwrap();
    for backend in backends() {
        let mut single = XtsCipher::with_backend(&key, backend).unwrap();
        for threads in [0, 1, 2, 3, 4] {
            let mut par = ParallelXts::new(&key, backend, threads).unwrap();
            assert_eq!(par.threads(), threads.max(1));
            // Sizes below, at and above the threshold, including uneven splits.
            for len in [
                4096,
                PARALLEL_THRESHOLD - 4096,
                PARALLEL_THRESHOLD,
                PARALLEL_THRESHOLD + 3 * 4096,
                3 << 20,
            ] {
                for ss in [SectorSize::S512, SectorSize::S4096] {
                    let pt = random_bytes(len);
                    let (mut x, mut y) = (pt.clone(), pt.clone());
                    single.encrypt_sectors(&mut x, ss, 1000).unwrap();
                    par.encrypt_sectors(&mut y, ss, 1000).unwrap();
                    assert_eq!(x, y, "{backend:?} threads={threads} len={len} {ss:?}");
                    par.decrypt_sectors(&mut y, ss, 1000).unwrap();
                    assert_eq!(y, pt);
                }
            }
        }
        let mut par = ParallelXts::new(&key, backend, 2).unwrap();
        let mut odd = vec![0u8; PARALLEL_THRESHOLD + 100];
        assert!(matches!(
            par.encrypt_sectors(&mut odd, SectorSize::S512, 0),
            Err(Error::Unaligned { .. })
        ));
        let mut big = vec![0u8; 2 << 20];
        assert!(matches!(
            par.encrypt_sectors(&mut big, SectorSize::S4096, u64::MAX - 100),
            Err(Error::IvOverflow { .. })
        ));
    }
}

#[test]
fn mul_alpha_matches_bytewise_definition() {
    // IEEE 1619 §5.2: shift the 16-byte little-endian value left by one bit; a carry out of
    // byte 15 XORs 0x87 into byte 0.
    fn bytewise(t: [u8; 16]) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut carry = 0u8;
        for j in 0..16 {
            out[j] = (t[j] << 1) | carry;
            carry = t[j] >> 7;
        }
        if carry == 1 {
            out[0] ^= 0x87;
        }
        out
    }
    for _ in 0..1000 {
        let t: [u8; 16] = random_bytes(16).try_into().unwrap();
        assert_eq!(mul_alpha(u128::from_le_bytes(t)).to_le_bytes(), bytewise(t));
    }
    assert_eq!(mul_alpha(1u128 << 127), 0x87);
}

fn sector_size_strategy() -> impl Strategy<Value = SectorSize> {
    prop::sample::select(SIZES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip_and_backends_agree(
        key in prop::collection::vec(any::<u8>(), 64),
        ss in sector_size_strategy(),
        sectors in 0usize..6,
        first_iv in prop_oneof![0u64..1 << 20, (u64::MAX - (1 << 20))..(u64::MAX - 64)],
        seed in any::<u8>(),
    ) {
        let (k1, k2) = key.split_at(32);
        prop_assume!(k1 != k2);
        let key = SecretBytes::from_slice(&key);
        let pt: Vec<u8> = (0..ss.bytes() * sectors).map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8).collect();
        let mut outputs = Vec::new();
        for backend in backends() {
            let mut c = XtsCipher::with_backend(&key, backend).unwrap();
            let mut buf = pt.clone();
            c.encrypt_sectors(&mut buf, ss, first_iv).unwrap();
            outputs.push(buf.clone());
            c.decrypt_sectors(&mut buf, ss, first_iv).unwrap();
            prop_assert_eq!(&buf, &pt);
        }
        for o in &outputs[1..] {
            prop_assert_eq!(o, &outputs[0]);
        }
    }

    #[test]
    fn prop_aes128_round_trip(
        key in prop::collection::vec(any::<u8>(), 32),
        ss in sector_size_strategy(),
        sectors in 1usize..4,
        first_iv in any::<u32>(),
    ) {
        let mut c = XtsCipher::new(&SecretBytes::from_slice(&key)).unwrap();
        let pt: Vec<u8> = (0..ss.bytes() * sectors).map(|i| i as u8).collect();
        let mut buf = pt.clone();
        c.encrypt_sectors(&mut buf, ss, u64::from(first_iv)).unwrap();
        c.decrypt_sectors(&mut buf, ss, u64::from(first_iv)).unwrap();
        prop_assert_eq!(buf, pt);
    }
}

#[test]
fn fill_run_matches_serial_doubling() {
    for len in [0usize, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 256] {
        let start = u128::from_le_bytes(random_bytes(16).try_into().unwrap());
        let mut serial = Vec::new();
        let mut t = start;
        for _ in 0..len {
            serial.extend_from_slice(&t.to_le_bytes());
            t = mul_alpha(t);
        }
        let mut out = vec![0u8; len * 16];
        let mut t2 = start;
        fill_run(&mut out, &mut t2);
        assert_eq!(out, serial, "len {len}");
        assert_eq!(t2, t, "next tweak after {len}");
    }
}
