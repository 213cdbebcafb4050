//! Volumes made by `sealvol format` must be LUKS2 as cryptsetup 2.6 reads it: `luksDump`
//! accepts them, `open --test-passphrase` unlocks them, `luksDump --dump-volume-key` yields the
//! key sealvol encrypted with (checked through the openssl XTS oracle, both directions).

mod common;

use std::ffi::OsStr;

use common::*;

struct Case<'a> {
    sector_size: Option<u64>,
    detached: bool,
    kdf_args: &'a [&'a str],
    /// Expected keyslot KDF: (type, iterations or time, memory).
    expect_kdf: (&'a str, u64, Option<u64>),
}

fn sealvol_format_opens_in_cryptsetup(case: Case) {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let layout = Layout {
        data: d.join("vol.img"),
        header: case.detached.then(|| d.join("hdr.img")),
    };
    let mut extra: Vec<String> = vec!["--size".into(), "1M".into()];
    if let Some(ss) = case.sector_size {
        extra.extend(["--sector-size".into(), ss.to_string()]);
    }
    extra.extend(case.kdf_args.iter().map(|s| s.to_string()));
    let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    sv(layout.sv_args(&["format"], &key, &extra)).ok();

    // cryptsetup reads the header and unlocks the keyslot.
    cryptsetup([OsStr::new("luksDump"), layout.header_device().as_os_str()]).ok();
    assert_cs_opens(&key, layout.header.as_deref(), &layout.data);
    let (wrong, _) = machine_key(d, "wrong");
    assert_cs_refuses(&wrong, layout.header.as_deref(), &layout.data);

    let meta = luks_json(layout.header_device());
    let seg = segment(&meta);
    assert_eq!(
        seg.sector_size,
        case.sector_size.unwrap_or(4096),
        "sector size: {meta}"
    );
    if case.detached {
        assert_eq!(seg.offset, 0, "detached header: data starts at 0");
        let data_len = std::fs::metadata(&layout.data).unwrap().len();
        assert!(
            data_len >= 1 << 20,
            "data file holds the 1 MiB segment ({data_len} bytes)"
        );
    }
    let slots = meta["keyslots"].as_object().expect("keyslots");
    assert_eq!(slots.len(), 1, "one keyslot after format: {meta}");
    let kdf = &slots.values().next().unwrap()["kdf"];
    let (kind, cost, memory) = case.expect_kdf;
    assert_eq!(kdf["type"], kind, "keyslot kdf: {kdf}");
    if kind == "pbkdf2" {
        assert_eq!(
            json_u64(&kdf["iterations"]),
            cost,
            "pbkdf2 iterations: {kdf}"
        );
    } else {
        assert_eq!(json_u64(&kdf["time"]), cost, "argon2 time cost: {kdf}");
        assert_eq!(
            json_u64(&kdf["memory"]),
            memory.unwrap(),
            "argon2 memory: {kdf}"
        );
    }

    // Sector data: sealvol ↔ openssl with cryptsetup's volume key.
    check_data_against_openssl(d, &layout, &key);
}

#[test]
fn cryptsetup_openssl_sealvol_format_machine_key_default() {
    // A 32-byte random key gets the machine-key profile: PBKDF2 at 1000 iterations.
    sealvol_format_opens_in_cryptsetup(Case {
        sector_size: None,
        detached: false,
        kdf_args: &[],
        expect_kdf: ("pbkdf2", 1000, None),
    });
}

#[test]
fn cryptsetup_openssl_sealvol_format_512_sectors_pbkdf2() {
    sealvol_format_opens_in_cryptsetup(Case {
        sector_size: Some(512),
        detached: false,
        kdf_args: &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        expect_kdf: ("pbkdf2", 1000, None),
    });
}

#[test]
fn cryptsetup_openssl_sealvol_format_4096_sectors_argon2id() {
    sealvol_format_opens_in_cryptsetup(Case {
        sector_size: Some(4096),
        detached: false,
        kdf_args: &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32",
            "--pbkdf-force-iterations",
            "4",
        ],
        expect_kdf: ("argon2id", 4, Some(32)),
    });
}

#[test]
fn cryptsetup_openssl_sealvol_format_detached_header_4096() {
    sealvol_format_opens_in_cryptsetup(Case {
        sector_size: Some(4096),
        detached: true,
        kdf_args: &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        expect_kdf: ("pbkdf2", 1000, None),
    });
}

#[test]
fn cryptsetup_openssl_sealvol_format_detached_header_512_argon2id() {
    sealvol_format_opens_in_cryptsetup(Case {
        sector_size: Some(512),
        detached: true,
        kdf_args: &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32",
            "--pbkdf-force-iterations",
            "4",
        ],
        expect_kdf: ("argon2id", 4, Some(32)),
    });
}

/// The oracle itself: XTS composed from `openssl enc -aes-256-ecb` reproduces IEEE 1619
/// (IEEE P1619/D16 Annex B) vector 10: XTS-AES-256, data unit sequence number 0xff,
/// 512-byte data unit of bytes 00..ff repeated.
#[test]
fn openssl_xts_oracle_matches_ieee1619_vector_10() {
    let key = hex::decode(concat!(
        "2718281828459045235360287471352662497757247093699959574966967627",
        "3141592653589793238462643383279502884197169399375105820974944592"
    ))
    .unwrap();
    let plain: Vec<u8> = (0..512).map(|i| (i % 256) as u8).collect();
    let want = hex::decode(concat!(
        "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
        "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
        "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
        "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
        "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
        "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
        "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
        "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
        "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
        "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
        "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
        "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
        "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
        "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
        "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
        "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
    ))
    .unwrap();
    let ct = openssl_xts(false, &key, &[(0xff, plain.clone())]);
    assert_eq!(hex::encode(&ct[0]), hex::encode(&want));
    let back = openssl_xts(true, &key, &[(0xff, want)]);
    assert_eq!(back[0], plain);
}

/// `sealvol format --json` reports what it made, and cryptsetup agrees on the UUID.
#[test]
fn cryptsetup_sealvol_format_json_matches_header() {
    need("cryptsetup");
    let dir = tmpdir();
    let d = dir.path();
    let (key, _) = machine_key(d, "key");
    let vol = d.join("vol.img");
    let r = sv([
        OsStr::new("--json"),
        OsStr::new("format"),
        OsStr::new("--key-file"),
        key.as_os_str(),
        OsStr::new("--size"),
        OsStr::new("1M"),
        vol.as_os_str(),
    ])
    .ok();
    let j = r.json();
    for field in [
        "uuid",
        "volume",
        "header",
        "keyslot",
        "kdf",
        "sector_size",
        "data_offset",
    ] {
        assert!(j.get(field).is_some(), "format --json lacks {field:?}: {j}");
    }
    assert_eq!(j["uuid"].as_str().unwrap(), luks_uuid(&vol), "uuid: {j}");
    let seg = segment(&luks_json(&vol));
    assert_eq!(json_u64(&j["sector_size"]), seg.sector_size, "{j}");
    assert_eq!(json_u64(&j["data_offset"]), seg.offset, "{j}");
    assert_eq!(json_u64(&j["keyslot"]), 0, "{j}");
    let file_len = std::fs::metadata(&vol).unwrap().len();
    let data_area = seg.size.unwrap_or(file_len - seg.offset);
    assert_eq!(data_area, 1 << 20, "--size 1M sets the data area size");
}
