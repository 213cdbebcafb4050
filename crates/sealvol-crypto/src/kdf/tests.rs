use super::*;

fn pbkdf2_hex(alg: HashAlg, pw: &[u8], salt: &[u8], iterations: u32, len: usize) -> String {
    let mut out = vec![0u8; len];
    pbkdf2(alg, pw, salt, iterations, &mut out).unwrap();
    hex::encode(out)
}

#[test]
fn pbkdf2_sha1_rfc6070() {
    let v = |pw: &[u8], salt: &[u8], c, len| pbkdf2_hex(HashAlg::Sha1, pw, salt, c, len);
    assert_eq!(
        v(b"password", b"salt", 1, 20),
        "0c60c80f961f0e71f3a9b524af6012062fe037a6"
    );
    assert_eq!(
        v(b"password", b"salt", 2, 20),
        "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
    );
    assert_eq!(
        v(b"password", b"salt", 4096, 20),
        "4b007901b765489abead49d926f721d065a429c1"
    );
    assert_eq!(
        v(
            b"passwordPASSWORDpassword",
            b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
            4096,
            25
        ),
        "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"
    );
    assert_eq!(
        v(b"pass\0word", b"sa\0lt", 4096, 16),
        "56fa6aa75548099dcc37d7f03425e0c3"
    );
}

/// RFC 6070 vector 4 (2^24 iterations): slow in debug builds.
#[test]
#[ignore = "16777216 iterations; run with --ignored"]
fn pbkdf2_sha1_rfc6070_slow() {
    assert_eq!(
        pbkdf2_hex(HashAlg::Sha1, b"password", b"salt", 16_777_216, 20),
        "eefe3d61cd4da4e4e9945b3d6ba2158c2634e984"
    );
}

#[test]
fn pbkdf2_sha256_known() {
    let v = |pw: &[u8], salt: &[u8], c, len| pbkdf2_hex(HashAlg::Sha256, pw, salt, c, len);
    // RFC 7914 §11.
    assert_eq!(
        v(b"passwd", b"salt", 1, 64),
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
         49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
    );
    assert_eq!(
        v(b"Password", b"NaCl", 80000, 64),
        "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56\
         a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"
    );
    // RFC 6070's inputs with SHA-256 (widely published; re-checked with Python hashlib).
    assert_eq!(
        v(b"password", b"salt", 1, 32),
        "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
    );
    assert_eq!(
        v(b"password", b"salt", 4096, 32),
        "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
    );
}

#[test]
fn pbkdf2_sha512_known() {
    // From Python: hashlib.pbkdf2_hmac('sha512', b'password', b'salt', c, len).hex()
    assert_eq!(
        pbkdf2_hex(HashAlg::Sha512, b"password", b"salt", 1000, 64),
        "afe6c5530785b6cc6b1c6453384731bd5ee432ee549fd42fb6695779ad8a1c5b\
         f59de69c48f774efc4007d5298f9033c0241d5ab69305e7b64eceeb8d834cfec"
    );
    // Longer than one hash block: two output blocks, the second truncated.
    assert_eq!(
        pbkdf2_hex(HashAlg::Sha512, b"password", b"salt", 1, 100),
        "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
         c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce\
         7b532e206c2967d4c7d2ffa460539fc4d4e5eec70125d74c6c7cf86d25284f29\
         7907fcea"
    );
}

/// RIPEMD-160 and Whirlpool, each over more than one output block (a 40-byte key from a
/// 20-byte hash, an 80-byte key from a 64-byte hash). Expected values from OpenSSL 3:
/// `openssl kdf -keylen N -kdfopt digest:D -kdfopt pass:password -kdfopt salt:salt
/// -kdfopt iter:1000 PBKDF2` (whirlpool with `-provider legacy -provider default`).
#[test]
fn pbkdf2_ripemd160_and_whirlpool_known() {
    assert_eq!(
        pbkdf2_hex(HashAlg::Ripemd160, b"password", b"salt", 1000, 40),
        "b5c5682c46fdb315930cfc54e82d0987e6ef938fee9320191bfbac2700de4ed4\
         518152edc1ea7755"
    );
    assert_eq!(
        pbkdf2_hex(HashAlg::Whirlpool, b"password", b"salt", 1000, 80),
        "5ad7361484c7dde6b23e573c4b61d1fd16023fd6c0170d0b26d70f7ac8c683f0\
         6e767804750357b4032297c2ad36cbd84d01476c1298826b71f605dbcda9e055\
         1157b44f4853587dfee108124e83c94d"
    );
}

#[test]
fn pbkdf2_bad_params() {
    let mut out = [0u8; 32];
    assert!(matches!(
        pbkdf2(HashAlg::Sha256, b"p", b"s", 0, &mut out),
        Err(Error::KdfParams(_))
    ));
    assert!(matches!(
        pbkdf2(HashAlg::Sha256, b"p", b"s", 1, &mut []),
        Err(Error::KdfParams(_))
    ));
}

fn argon2_hex(variant: Argon2Variant, t: u32, m: u32, p: u32, len: usize) -> String {
    let mut out = vec![0u8; len];
    argon2(variant, b"password", b"somesalt", t, m, p, &mut out).unwrap();
    hex::encode(out)
}

/// Known answers from the reference implementation's CLI (Debian package `argon2`,
/// version 0x13), e.g. `echo -n password | argon2 somesalt -id -t 2 -m 16 -p 4 -l 32 -r`.
#[test]
fn argon2_reference_cli_kats() {
    use Argon2Variant::{Argon2i, Argon2id};
    // argon2 somesalt -id -t 2 -m 16 -p 4 -l 32 -r   (2^16 KiB)
    assert_eq!(
        argon2_hex(Argon2id, 2, 1 << 16, 4, 32),
        "1a9677b0afe81fda7b548895e7a1bfeb8668ffc19a530e37e088a668fab1c02a"
    );
    // argon2 somesalt -i -t 3 -m 12 -p 1 -l 32 -r
    assert_eq!(
        argon2_hex(Argon2i, 3, 1 << 12, 1, 32),
        "896874eaf0fc172dbbc1ff67a67e855d68825f82baa56e947b5067cf3d3b67c0"
    );
    // argon2 somesalt -id -t 4 -k 32 -p 1 -l 64 -r   (cryptsetup's minimum cost)
    assert_eq!(
        argon2_hex(Argon2id, 4, 32, 1, 64),
        "9c98dfa40f7f3c16220cba610fabb0f73a9c5fec9aceaea12ef51a1a7ab5e08e\
         6057147572e42ef94b1b327627501f9d8bdc9797c69d59c77fe7a523a45d0f2e"
    );
    // argon2 somesalt -i -t 1 -k 64 -p 2 -l 16 -r
    assert_eq!(
        argon2_hex(Argon2i, 1, 64, 2, 16),
        "e12c71fd4a94af47eb717b0e0c0e5e6b"
    );
    // argon2 somesalt -id -t 3 -k 8 -p 1 -l 24 -r
    assert_eq!(
        argon2_hex(Argon2id, 3, 8, 1, 24),
        "bf4795086cbe5af578554684e30ae9b2c681f5e19498631f"
    );
}

#[test]
fn argon2_bad_params() {
    let mut out = [0u8; 32];
    let run = |t, m, p, salt: &[u8], out: &mut [u8]| {
        argon2(Argon2Variant::Argon2id, b"pw", salt, t, m, p, out)
    };
    assert!(matches!(
        run(0, 64, 1, b"saltsalt", &mut out),
        Err(Error::KdfParams(_))
    ));
    assert!(matches!(
        run(1, 4, 1, b"saltsalt", &mut out),
        Err(Error::KdfParams(_))
    ));
    assert!(matches!(
        run(1, 64, 0, b"saltsalt", &mut out),
        Err(Error::KdfParams(_))
    ));
    assert!(matches!(
        run(1, 64, 1, b"short", &mut out),
        Err(Error::KdfParams(_))
    ));
    assert!(matches!(
        run(1, 64, 1, b"saltsalt", &mut [0u8; 3]),
        Err(Error::KdfParams(_))
    ));
    let e = run(1, 64, 1, b"short", &mut out).unwrap_err().to_string();
    assert!(e.contains("argon2id") && !e.contains("pw"), "{e}");
}

#[test]
fn benchmark_pbkdf2_is_bounded_and_scales() {
    let start = Instant::now();
    let short = benchmark_pbkdf2(HashAlg::Sha256, 32, Duration::from_millis(1));
    assert_eq!(short, PBKDF2_MIN_ITERATIONS.max(short));
    let long = benchmark_pbkdf2(HashAlg::Sha256, 32, Duration::from_millis(200));
    assert!(long >= short, "{long} < {short}");
    assert!(long > PBKDF2_MIN_ITERATIONS);
    // Tiny target: cryptsetup's floor.
    assert_eq!(
        benchmark_pbkdf2(HashAlg::Sha1, 20, Duration::ZERO),
        PBKDF2_MIN_ITERATIONS
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn benchmark_argon2_respects_bounds() {
    let start = Instant::now();
    // A tiny target: the floor (4 passes, 32 KiB).
    let (t, m) = benchmark_argon2(Argon2Variant::Argon2id, Duration::ZERO, 1 << 20, 1);
    assert_eq!((t, m), (ARGON2_MIN_TIME, ARGON2_MIN_MEMORY_KIB));
    // A small memory cap: memory stops at the cap, time grows.
    let (t, m) = benchmark_argon2(Argon2Variant::Argon2id, Duration::from_millis(100), 64, 1);
    assert_eq!(m, 64);
    assert!(t > ARGON2_MIN_TIME, "t = {t}");
    // A generous cap: memory grows first, time stays at the floor.
    let (t, m) = benchmark_argon2(
        Argon2Variant::Argon2i,
        Duration::from_millis(50),
        1 << 20,
        2,
    );
    assert_eq!(t, ARGON2_MIN_TIME);
    assert!(m > 1024 && m <= 1 << 20, "m = {m}");
    // Lanes need 8 KiB each; a cap below the minimum is raised.
    let (_, m) = benchmark_argon2(Argon2Variant::Argon2id, Duration::ZERO, 1, 8);
    assert_eq!(m, 64);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn next_params_follow_cryptsetup_order() {
    let ms = Duration::from_millis;
    // Too fast: memory first.
    assert_eq!(
        next_argon2_params(4, 1024, 32, 1 << 20, ms(10), ms(100)),
        (4, 10240)
    );
    // Too fast and memory capped: time grows.
    assert_eq!(
        next_argon2_params(4, 1024, 32, 2048, ms(10), ms(100)),
        (20, 2048)
    );
    // Too slow: time first...
    assert_eq!(
        next_argon2_params(16, 1024, 32, 1 << 20, ms(200), ms(100)),
        (8, 1024)
    );
    // ...then memory once time is at the floor.
    assert_eq!(
        next_argon2_params(4, 1024, 32, 1 << 20, ms(200), ms(100)),
        (4, 512)
    );
    assert_eq!(
        next_argon2_params(4, 64, 32, 1 << 20, ms(1000), ms(100)),
        (4, 32)
    );
}
