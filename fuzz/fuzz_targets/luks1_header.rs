//! Fuzzes the LUKS1 binary header parser with a round trip through the encoder.
//!
//! 1. `luks1::Header::decode` on the input: any input either parses or is an error, never a
//!    panic; a parsed header encodes to 592 bytes that parse to the same header and encode
//!    to the same bytes.
//! 2. `luks1::Volume::open` on the whole input as a device: opens or is an error; an opened
//!    volume's data segment starts at its payload offset.
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
    let segment = vol
        .data_segment()
        .expect("an opened volume has a data segment");
    assert_eq!(
        segment.offset,
        u64::from(vol.header().payload_offset()) * 512
    );
    assert!(vol.header().area_len() <= data.len() as u64);
});
