//! Fuzzes the LUKS2 header parser with a round trip through the encoder.
//!
//! 1. `parse_header_bytes` on one header copy: any input either parses or is an error, never a
//!    panic; a parsed header's typed metadata re-encodes to JSON that parses to the same thing.
//! 2. `Volume::open` on the whole input as a device (both copies, recovery): if it opens and is
//!    writable, adding and then removing a token makes the library encode both copies; the
//!    result must reopen cleanly with the same metadata, and its primary copy must parse alone.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sealvol_luks::{parse_header_bytes, Metadata, Volume};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header_bytes(data) {
        let json = header.metadata().to_json();
        let again = Metadata::from_json(&json).expect("re-encoded metadata must parse");
        assert_eq!(again.to_json(), json, "metadata JSON round trip");
    }

    let Ok(mut vol) = Volume::open(Cursor::new(data.to_vec())) else {
        return;
    };
    if vol.read_only().is_some() {
        return;
    }
    let before = vol.header().metadata().to_json();
    let token = serde_json::json!({"type": "sealvol-fuzz", "keyslots": []});
    let Ok(id) = vol.add_token(token, None) else {
        return;
    };
    vol.remove_token(id).expect("removing the token just added");
    let storage = vol.into_storage();
    let reopened = Volume::open(storage).expect("a header sealvol wrote must reopen");
    assert!(
        !reopened.load_report().needs_repair,
        "both copies written by sealvol must be valid"
    );
    assert_eq!(
        reopened.header().metadata().to_json(),
        before,
        "metadata after token add/remove"
    );
    let hdr_size = reopened.header().hdr_size() as usize;
    let bytes = reopened.into_storage().into_inner();
    let primary = parse_header_bytes(&bytes[..hdr_size]).expect("re-encoded primary copy parses");
    assert_eq!(
        primary.metadata().to_json(),
        before,
        "primary copy metadata"
    );
});
