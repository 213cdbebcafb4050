//! Fuzzes the LUKS1 binary header parser with a round trip through the encoder.
//!
//! 1. `luks1::Header::decode` on the input: any input either parses or is an error, never a
//!    panic; a parsed header encodes to 592 bytes that parse to the same header and encode
//!    to the same bytes.
//! 2. `luks1::Volume::open` on the whole input as a device: opens or is an error; an opened
//!    volume sealvol can use has its data segment at its payload offset.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sealvol_luks::luks1::{Header, Volume};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::decode(data) {
        let bytes = header.encode();
        let again = Header::decode(&bytes).expect("an encoded header must parse");
        assert_eq!(again, header, "header round trip");
        assert_eq!(again.encode(), bytes, "encoding is canonical");
    }

    let Ok(vol) = Volume::open(Cursor::new(data.to_vec())) else {
        return;
    };
    // A header cryptsetup loads but sealvol cannot use (cipher, hash, key size) has no
    // data segment for sealvol; every other opened volume has one.
    let Ok(segment) = vol.data_segment() else {
        assert!(
            vol.header().usable().is_err(),
            "a usable header has a data segment"
        );
        return;
    };
    assert_eq!(
        segment.offset,
        u64::from(vol.header().payload_offset()) * 512
    );
    assert!(vol.header().area_len() <= data.len() as u64);
});
