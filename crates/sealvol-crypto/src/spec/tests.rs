use super::*;
use proptest::prelude::*;

fn part(spec: &str, key_len: usize) -> CipherPart {
    match CipherSpec::parse(spec, key_len) {
        Err(Error::UnsupportedCipher { part, .. }) => part,
        other => panic!("{spec} ({key_len}): expected UnsupportedCipher, got {other:?}"),
    }
}

/// Every specification sealvol supports, with every key length its mode allows.
pub(crate) fn all_supported() -> Vec<CipherSpec> {
    let mut names = Vec::new();
    for c in ["aes", "serpent", "twofish"] {
        for m in [
            "xts-plain64",
            "xts-plain",
            "cbc-essiv:sha256",
            "cbc-plain64",
            "cbc-plain",
        ] {
            names.push(format!("{c}-{m}"));
        }
    }
    names.push("serpent-cbc-essiv:sha1".into());
    names.push("serpent-cbc-essiv:ripemd160".into());
    for a in ["xchacha12,aes", "xchacha20,aes"] {
        names.push(format!("{a}-adiantum-plain64"));
        names.push(format!("{a}-adiantum-plain"));
    }
    let mut out = Vec::new();
    for n in names {
        for len in [16, 24, 32, 48, 64] {
            if let Ok(s) = CipherSpec::parse(&n, len) {
                out.push(s);
            }
        }
    }
    out
}

#[test]
fn supported_specs_parse_and_print_back() {
    let all = all_supported();
    // 3 ciphers x (2 xts x 3 sizes + 3 cbc x 3 sizes) + 2 serpent essiv x 3 + 4 adiantum.
    assert_eq!(all.len(), 3 * (2 * 3 + 3 * 3) + 2 * 3 + 4);
    for s in &all {
        let text = s.to_string();
        assert_eq!(CipherSpec::parse(&text, s.key_len()).unwrap(), *s, "{text}");
        assert_eq!(format!("{}-{}", s.cipher_name(), s.mode_name()), text);
        assert_eq!(
            CipherSpec::from_luks1(s.cipher_name(), &s.mode_name(), s.key_len()).unwrap(),
            *s
        );
        assert!(s.mode().key_lengths().contains(&s.key_len()));
    }
    let s = CipherSpec::parse("xchacha20,aes-adiantum-plain64", 32).unwrap();
    assert_eq!(s.mode(), CipherMode::Adiantum(AdiantumStream::XChaCha20));
    assert_eq!(s.cipher_name(), "xchacha20,aes");
    assert_eq!(s.mode_name(), "adiantum-plain64");
    assert_eq!(
        CipherSpec::parse("aes-xts-plain64", 64).unwrap(),
        CipherSpec::AES_XTS_PLAIN64_512
    );
    assert_eq!(
        CipherSpec::parse("twofish-cbc-plain", 24).unwrap().iv(),
        IvGenerator::Plain
    );
}

#[test]
fn each_refusal_names_its_part() {
    use CipherPart::*;
    let cases: &[(&str, usize, CipherPart)] = &[
        ("capi:xts(aes)-plain64", 64, Form),
        ("aes", 32, Form),
        ("aes:64-cbc-lmk", 32, Form),
        ("cipher_null-ecb", 0, Cipher),
        ("null", 0, Cipher),
        ("camellia-xts-plain64", 64, Cipher),
        ("AES-xts-plain64", 64, Cipher),
        ("aes-ecb", 32, Mode),
        ("aes-ctr-plain64", 32, Mode),
        ("aes-gcm-random", 32, Mode),
        ("aes-adiantum-plain64", 32, Mode),
        ("xchacha12,aes-xts-plain64", 32, Mode),
        ("aes-xts", 64, Iv),
        ("aes-xts-", 64, Iv),
        ("aes-cbc-benbi", 32, Iv),
        ("aes-cbc-lmk", 32, Iv),
        ("aes-cbc-tcw", 32, Iv),
        ("aes-cbc-eboiv", 32, Iv),
        ("aes-cbc-null", 32, Iv),
        ("aes-xts-plain64be", 64, Iv),
        ("aes-xts-essiv:sha256", 64, Iv),
        ("xchacha12,aes-adiantum-essiv:sha256", 32, Iv),
        ("aes-cbc-plain64:sha256", 32, Iv),
        ("aes-cbc-essiv", 32, IvHash),
        ("aes-cbc-essiv:md5", 32, IvHash),
        ("aes-cbc-essiv:sha1", 32, IvHash),
        ("twofish-cbc-essiv:sha512", 32, IvHash),
        ("aes-xts-plain64", 16, KeySize),
        ("aes-xts-plain64", 0, KeySize),
        ("serpent-xts-plain64", 40, KeySize),
        ("aes-cbc-plain64", 64, KeySize),
        ("xchacha12,aes-adiantum-plain64", 64, KeySize),
    ];
    for &(spec, len, want) in cases {
        assert_eq!(part(spec, len), want, "{spec} ({len} bytes)");
    }
    let e = CipherSpec::parse("aes-xts-plain64", 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("128 bits") && e.contains("256, 384, 512"), "{e}");
    let e = CipherSpec::parse("capi:xts(aes)-plain64", 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kernel crypto API"), "{e}");
    assert!(
        CipherSpec::parse("serpent-xts-plain64", 64).is_ok(),
        "control"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any string and key length: a typed answer, never a panic; an accepted spec prints back
    /// to itself.
    #[test]
    fn prop_any_string_parses_or_is_refused(s in ".{0,80}", len in 0usize..80) {
        if let Ok(spec) = CipherSpec::parse(&s, len) {
            prop_assert_eq!(spec.to_string(), s);
            prop_assert_eq!(spec.key_len(), len);
        }
    }

    /// Strings built from the grammar's own pieces.
    #[test]
    fn prop_grammar_pieces(
        name in prop::sample::select(vec!["aes", "serpent", "twofish", "xchacha12,aes", "xchacha20,aes", "des", "", "aes:2"]),
        mode in prop::sample::select(vec!["xts", "cbc", "adiantum", "ecb", "", "ctr"]),
        iv in prop::sample::select(vec!["plain64", "plain", "essiv:sha256", "essiv:sha1", "essiv:", "essiv", "benbi", "", "plain64:x"]),
        len in prop::sample::select(vec![0usize, 16, 24, 32, 40, 48, 64, 128]),
    ) {
        let spec = format!("{name}-{mode}-{iv}");
        match CipherSpec::parse(&spec, len) {
            Ok(s) => {
                prop_assert_eq!(s.to_string(), spec);
                prop_assert!(s.mode().key_lengths().contains(&len));
            }
            Err(Error::UnsupportedCipher { spec: got, .. }) => prop_assert_eq!(got, spec),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
