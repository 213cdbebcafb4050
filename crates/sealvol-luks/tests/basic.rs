//! Format, open and unlock in memory.

use sealvol_crypto::SecretBytes;
use sealvol_luks::{FormatOptions, Volume};
use std::io::Cursor;

#[test]
fn format_open_unlock() {
    let vk = SecretBytes::random(64).unwrap();
    let opts = FormatOptions::default();
    let vol = Volume::format(Cursor::new(Vec::new()), &opts, &vk, b"pw").unwrap();
    let mut vol = Volume::open(vol.into_storage()).unwrap();
    assert!(!vol.load_report().needs_repair);
    let u = vol.unlock(b"pw", None).unwrap();
    assert_eq!(u.keyslot, 0);
    assert!(u.volume_key.ct_eq(vk.expose()));
    assert!(matches!(
        vol.unlock(b"nope", None),
        Err(sealvol_luks::Error::WrongKey)
    ));
}
