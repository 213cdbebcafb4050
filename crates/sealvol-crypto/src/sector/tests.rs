use super::*;
use crate::spec::tests::all_supported;
use proptest::prelude::*;

const SIZES: [SectorSize; 4] = [
    SectorSize::S512,
    SectorSize::S1024,
    SectorSize::S2048,
    SectorSize::S4096,
];

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

/// `key = value` records separated by blank lines; `#` lines are comments.
fn records(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if !out.last().unwrap().is_empty() {
                out.push(Vec::new());
            }
        } else if !line.starts_with('#') {
            let (k, v) = line.split_once(" = ").unwrap();
            out.last_mut().unwrap().push((k.into(), v.into()));
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

fn get<'a>(r: &'a [(String, String)], k: &str) -> &'a str {
    &r.iter().find(|(n, _)| n == k).unwrap().1
}

fn backends() -> [AesBackend; 2] {
    [AesBackend::Fastest, AesBackend::RustCrypto]
}

fn key_for(spec: &CipherSpec, seed: u8) -> SecretBytes {
    SecretBytes::from_vec(
        (0..spec.key_len())
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect(),
    )
}

/// NIST SP 800-38A F.2.1, F.2.3, F.2.5 (CBC-AES128/192/256.Encrypt, four blocks), through
/// both AES-CBC engines.
#[test]
fn nist_sp800_38a_cbc_vectors() {
    let iv: [u8; 16] = unhex("000102030405060708090a0b0c0d0e0f")
        .try_into()
        .unwrap();
    let pt = unhex(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
         30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let cases = [
        (
            "2b7e151628aed2a6abf7158809cf4f3c",
            "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
        ),
        (
            "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
             571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
        ),
        (
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
        ),
    ];
    let mut ran = 0;
    for (key, ct) in cases {
        let key = unhex(key);
        for prefer_awslc in [true, false] {
            let mut e = CbcEngine::new(BlockCipher::Aes, &key, prefer_awslc).unwrap();
            let mut buf = pt.clone();
            e.sector(&mut buf, &iv, true);
            assert_eq!(
                hex::encode(&buf),
                hex::encode(unhex(ct)),
                "{} bits",
                key.len() * 8
            );
            e.sector(&mut buf, &iv, false);
            assert_eq!(buf, pt);
            ran += 1;
        }
    }
    assert_eq!(ran, 6);
}

/// aes-cbc-essiv:sha256, aes-cbc-plain64 and aes-cbc-plain sectors as OpenSSL computes them
/// (`tests/data/cbc_openssl.txt`), through the public API on both AES backends.
#[test]
fn openssl_cbc_sectors() {
    let pt: Vec<u8> = (0..1024u32).map(|i| ((i * 7 + 1) % 256) as u8).collect();
    let recs = records(include_str!("../../tests/data/cbc_openssl.txt"));
    assert_eq!(recs.len(), 4);
    for r in &recs {
        let key = SecretBytes::from_vec(unhex(get(r, "key")));
        let spec = CipherSpec::parse(get(r, "spec"), key.len()).unwrap();
        let ss = SectorSize::try_from(get(r, "sector").parse::<u64>().unwrap()).unwrap();
        let iv: u64 = get(r, "iv").parse().unwrap();
        let ct = unhex(get(r, "ct"));
        for backend in backends() {
            let mut c = SectorCipher::with_backend(&spec, &key, backend).unwrap();
            let mut buf = pt.clone();
            c.encrypt_sectors(&mut buf, ss, iv).unwrap();
            assert_eq!(hex::encode(&buf), hex::encode(&ct), "{spec} {backend:?}");
            c.decrypt_sectors(&mut buf, ss, iv).unwrap();
            assert_eq!(buf, pt, "{spec} {backend:?}");
        }
    }
}

/// Google's Adiantum reference vectors (32-byte tweak, 512-byte message) through the exact
/// types the engine instantiates (XChaCha12/XChaCha20 with AES-256).
#[test]
fn adiantum_reference_vectors() {
    let recs = records(include_str!("../../tests/data/adiantum_reference.txt"));
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let key = unhex(get(r, "key"));
        let tweak = unhex(get(r, "tweak"));
        let pt = unhex(get(r, "pt"));
        let ct = unhex(get(r, "ct"));
        let mut buf = pt.clone();
        match get(r, "stream") {
            "xchacha12" => {
                let c: adiantum::Cipher<XChaCha12, aes::Aes256> =
                    KeyInit::new_from_slice(&key).unwrap();
                c.encrypt(&mut buf, &tweak);
                assert_eq!(hex::encode(&buf), hex::encode(&ct));
                c.decrypt(&mut buf, &tweak);
            }
            "xchacha20" => {
                let c: adiantum::Cipher<XChaCha20, aes::Aes256> =
                    KeyInit::new_from_slice(&key).unwrap();
                c.encrypt(&mut buf, &tweak);
                assert_eq!(hex::encode(&buf), hex::encode(&ct));
                c.decrypt(&mut buf, &tweak);
            }
            other => panic!("stream {other}"),
        }
        assert_eq!(buf, pt);
    }
}

/// The definition of XTS (IEEE 1619 §5.3.1), one block at a time over a RustCrypto cipher:
/// `T = E_K2(IV)`, `C_j = E_K1(P_j ^ T_j) ^ T_j`, `T_{j+1} = T_j · α`.
fn reference_xts<C: BlockCipherEncrypt + KeyInit + BlockSizeUser<BlockSize = U16>>(
    key: &[u8],
    sector: &mut [u8],
    iv: u64,
) {
    let (k1, k2) = key.split_at(key.len() / 2);
    let (c1, c2) = (
        C::new_from_slice(k1).unwrap(),
        C::new_from_slice(k2).unwrap(),
    );
    let mut t = Array::from(plain64(iv));
    c2.encrypt_block(&mut t);
    let mut t = u128::from_le_bytes(t.0);
    for block in sector.chunks_exact_mut(16) {
        let tb = t.to_le_bytes();
        let mut b = Array::<u8, U16>::default();
        for i in 0..16 {
            b[i] = block[i] ^ tb[i];
        }
        c1.encrypt_block(&mut b);
        for i in 0..16 {
            block[i] = b[i] ^ tb[i];
        }
        t = (t << 1) ^ ((t >> 127) * 0x87);
    }
}

/// The definition of CBC over one sector with a given IV.
fn reference_cbc<C: BlockCipherEncrypt + KeyInit + BlockSizeUser<BlockSize = U16>>(
    key: &[u8],
    sector: &mut [u8],
    iv: [u8; 16],
) {
    let c = C::new_from_slice(key).unwrap();
    let mut prev = iv;
    for block in sector.chunks_exact_mut(16) {
        let mut b = Array::<u8, U16>::default();
        for i in 0..16 {
            b[i] = block[i] ^ prev[i];
        }
        c.encrypt_block(&mut b);
        block.copy_from_slice(&b);
        prev = b.0;
    }
}

/// Serpent and Twofish in XTS and CBC (every IV generator and key size) equal the modes'
/// definitions written out one block at a time; AES too (its IEEE 1619 / NIST vectors are
/// above).
#[test]
fn modes_match_their_definitions_for_every_block_cipher() {
    let mut checked = 0;
    for spec in all_supported() {
        let Some(block) = spec.mode().block_cipher() else {
            continue;
        };
        let key = key_for(&spec, 3);
        let k = key.expose();
        for ss in [SectorSize::S512, SectorSize::S4096] {
            let pt: Vec<u8> = (0..ss.bytes() * 2).map(|i| (i * 13) as u8).collect();
            let first_iv = 0xffff_fff0u64 + 7;
            let mut want = pt.clone();
            for (i, sector) in want.chunks_exact_mut(ss.bytes()).enumerate() {
                let n = first_iv + i as u64 * ss.iv_units();
                let n = if spec.iv() == IvGenerator::Plain {
                    n & 0xffff_ffff
                } else {
                    n
                };
                match (spec.mode(), block) {
                    (CipherMode::Xts(_), BlockCipher::Serpent) => {
                        reference_xts::<Serpent>(k, sector, n)
                    }
                    (CipherMode::Xts(_), BlockCipher::Twofish) => {
                        reference_xts::<Twofish>(k, sector, n)
                    }
                    (CipherMode::Xts(_), BlockCipher::Aes) => match k.len() {
                        32 => reference_xts::<aes::Aes128>(k, sector, n),
                        48 => reference_xts::<aes::Aes192>(k, sector, n),
                        _ => reference_xts::<aes::Aes256>(k, sector, n),
                    },
                    (_, _) => {
                        let iv = CbcIv::new(spec.iv(), block, k).unwrap().iv(n);
                        match (block, k.len()) {
                            (BlockCipher::Serpent, _) => reference_cbc::<Serpent>(k, sector, iv),
                            (BlockCipher::Twofish, _) => reference_cbc::<Twofish>(k, sector, iv),
                            (BlockCipher::Aes, 16) => reference_cbc::<aes::Aes128>(k, sector, iv),
                            (BlockCipher::Aes, 24) => reference_cbc::<aes::Aes192>(k, sector, iv),
                            (BlockCipher::Aes, _) => reference_cbc::<aes::Aes256>(k, sector, iv),
                        }
                    }
                }
            }
            for backend in backends() {
                let mut c = SectorCipher::with_backend(&spec, &key, backend).unwrap();
                let mut buf = pt.clone();
                c.encrypt_sectors(&mut buf, ss, first_iv).unwrap();
                assert!(buf == want, "{spec} {}-bit {ss:?} {backend:?}", k.len() * 8);
                c.decrypt_sectors(&mut buf, ss, first_iv).unwrap();
                assert!(buf == pt, "{spec} {ss:?} {backend:?} decrypt");
            }
            checked += 1;
        }
    }
    // 3 ciphers x 15 xts/cbc spec+size pairs, 6 serpent essiv:sha1/ripemd160; 2 sector sizes.
    assert_eq!(checked, (3 * 15 + 6) * 2);
}

/// ESSIV with sha256 keys the IV cipher with 256 bits whatever the data key size, and is not
/// plain64.
#[test]
fn essiv_iv_is_the_encrypted_plain64() {
    let key = [0x11u8; 16];
    let ivs = CbcIv::new(IvGenerator::Essiv(HashAlg::Sha256), BlockCipher::Aes, &key).unwrap();
    let salt = HashAlg::Sha256.digest(&key);
    let c = aes::Aes256Enc::new_from_slice(&salt).unwrap();
    let mut b = Array::from(plain64(77));
    c.encrypt_block(&mut b);
    assert_eq!(ivs.iv(77), b.0);
    assert_ne!(ivs.iv(77), plain64(77));
}

use crate::HashAlg;

/// `plain` is the sector number mod 2^32: a buffer whose IVs cross 2^32 wraps to 0, and
/// `xts-plain` at IV 2^32 + n is `xts-plain64` at n.
#[test]
fn plain_wraps_at_2_pow_32() {
    let k = SecretBytes::from_vec((0..64u8).collect());
    let plain = CipherSpec::parse("aes-xts-plain", 64).unwrap();
    let plain64 = CipherSpec::parse("aes-xts-plain64", 64).unwrap();
    let pt: Vec<u8> = (0..4096 * 4).map(|i| (i * 3) as u8).collect();
    let mut a = pt.clone();
    SectorCipher::new(&plain, &k)
        .unwrap()
        .encrypt_sectors(&mut a, SectorSize::S4096, (1 << 32) - 16)
        .unwrap();
    let mut b = pt.clone();
    let mut c64 = SectorCipher::new(&plain64, &k).unwrap();
    c64.encrypt_sectors(&mut b[..8192], SectorSize::S4096, (1 << 32) - 16)
        .unwrap();
    c64.encrypt_sectors(&mut b[8192..], SectorSize::S4096, 0)
        .unwrap();
    assert_eq!(a, b);
    // No overflow error for plain near 2^64; plain64 refuses.
    let mut buf = vec![0u8; 8192];
    SectorCipher::new(&plain, &k)
        .unwrap()
        .encrypt_sectors(&mut buf, SectorSize::S4096, u64::MAX - 3)
        .unwrap();
    assert!(matches!(
        c64.encrypt_sectors(&mut buf, SectorSize::S4096, u64::MAX - 3),
        Err(Error::IvOverflow { .. })
    ));
}

#[test]
fn aes_xts_is_xts_cipher_and_keys_must_fit_the_spec() {
    let spec = CipherSpec::AES_XTS_PLAIN64_512;
    let key = SecretBytes::random(64).unwrap();
    let mut a = vec![5u8; 8192];
    let mut b = a.clone();
    SectorCipher::new(&spec, &key)
        .unwrap()
        .encrypt_sectors(&mut a, SectorSize::S4096, 9)
        .unwrap();
    XtsCipher::new(&key)
        .unwrap()
        .encrypt_sectors(&mut b, SectorSize::S4096, 9)
        .unwrap();
    assert_eq!(a, b);
    let e = SectorCipher::new(&spec, &SecretBytes::random(32).unwrap()).unwrap_err();
    assert!(matches!(e, Error::KeyLength { got: 32, .. }), "{e}");
    let c = SectorCipher::new(&spec, &key).unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("aes-xts-plain64") && !shown.contains(&hex::encode(&key.expose()[..6])));
    let mut odd = vec![0u8; 700];
    let mut c = c.try_clone().unwrap();
    assert!(matches!(
        c.encrypt_sectors(&mut odd, SectorSize::S512, 0),
        Err(Error::Unaligned { .. })
    ));
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&c);
}

fn spec_strategy() -> impl Strategy<Value = CipherSpec> {
    prop::sample::select(all_supported())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// For every spec: the multi-sector path equals crypting one sector at a time with its
    /// own IV, decryption inverts it, and both AES backends agree.
    #[test]
    fn prop_multi_sector_equals_single_sector(
        spec in spec_strategy(),
        ss in prop::sample::select(SIZES.to_vec()),
        sectors in 1usize..5,
        first_iv in prop_oneof![0u64..1 << 20, (u64::MAX - (1 << 20))..(u64::MAX - 64), ((1u64 << 32) - 40)..((1u64 << 32) + 8)],
        seed in any::<u8>(),
    ) {
        let key = key_for(&spec, seed);
        let pt: Vec<u8> = (0..ss.bytes() * sectors).map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8).collect();
        let mut whole = pt.clone();
        let mut c = SectorCipher::new(&spec, &key).unwrap();
        c.encrypt_sectors(&mut whole, ss, first_iv).unwrap();
        let mut single = pt.clone();
        for (i, s) in single.chunks_exact_mut(ss.bytes()).enumerate() {
            c.encrypt_sectors(s, ss, first_iv.wrapping_add(i as u64 * ss.iv_units())).unwrap();
        }
        prop_assert!(whole == single);
        prop_assert!(whole != pt);
        let mut soft = pt.clone();
        SectorCipher::with_backend(&spec, &key, AesBackend::RustCrypto).unwrap().encrypt_sectors(&mut soft, ss, first_iv).unwrap();
        prop_assert!(soft == whole);
        c.decrypt_sectors(&mut whole, ss, first_iv).unwrap();
        prop_assert!(whole == pt);
    }
}
