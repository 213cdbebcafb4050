//! Fuzzes the cipher specification parser (`sealvol_crypto::CipherSpec`) and the sector
//! ciphers it selects.
//!
//! The first byte is the key length, the rest the specification text (lossy UTF-8). Any input
//! parses or is an `UnsupportedCipher` error naming a part, never a panic. A parsed spec
//! prints back to the same text, splits into LUKS1 cipher-name / cipher-mode that parse to
//! the same spec, and its `SectorCipher` encrypts two 512-byte sectors and decrypts them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealvol_crypto::{CipherSpec, Error, SecretBytes, SectorCipher, SectorSize};

fuzz_target!(|data: &[u8]| {
    let Some((&len, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let spec = match CipherSpec::parse(&text, usize::from(len)) {
        Ok(s) => s,
        Err(Error::UnsupportedCipher { spec, .. }) => {
            assert!(
                text.starts_with(&spec),
                "the error quotes the input's start"
            );
            return;
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    };
    assert_eq!(spec.to_string(), text, "prints back");
    assert_eq!(
        CipherSpec::from_luks1(spec.cipher_name(), &spec.mode_name(), spec.key_len()).unwrap(),
        spec
    );
    let key = SecretBytes::from_vec((0..spec.key_len()).map(|i| i as u8 ^ 0x5c).collect());
    let mut c = SectorCipher::new(&spec, &key).expect("a parsed spec makes a cipher");
    let plain: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let mut buf = plain.clone();
    let iv = u64::from(len) << 30;
    c.encrypt_sectors(&mut buf, SectorSize::S512, iv).unwrap();
    assert_ne!(buf, plain);
    c.decrypt_sectors(&mut buf, SectorSize::S512, iv).unwrap();
    assert_eq!(buf, plain);
});
