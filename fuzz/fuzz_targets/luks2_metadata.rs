//! Fuzzes the LUKS2 metadata rules and the lenient typed model with JSON areas alone (no
//! binary header, no checksum: every input reaches the JSON paths): keyslot KDF objects,
//! unknown keyslot, segment, digest and token types, requirement flags, reencryption and
//! OPAL segments.
//!
//! 1. `parse_json_area` never panics; a JSON area it accepts has typed metadata whose JSON
//!    passes every rule again and types to the same metadata (what sealvol writes back, it
//!    reads back), whose objects can each say whether and why they are unusable, and whose
//!    dump lays out without a panic.
//! 2. The rules alone never panic on any JSON value the input parses to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealvol_luks::luks2::parse_json_area;

const HDR_SIZE: u64 = 16384;

fuzz_target!(|data: &[u8]| {
    let mut area = data.to_vec();
    area.resize(HDR_SIZE as usize - 4096, 0);
    let Ok(md) = parse_json_area(&area, HDR_SIZE) else {
        return;
    };
    let json = md.to_json_string();
    let mut again = json.clone().into_bytes();
    again.resize(HDR_SIZE as usize - 4096, 0);
    let md2 = parse_json_area(&again, HDR_SIZE).expect("re-encoded accepted metadata must pass");
    assert_eq!(md2, md, "typed metadata round trip");
    for (id, k) in &md.keyslots {
        let _ = k.unusable(*id);
        let _ = k.effective_priority();
    }
    for d in md.digests.values() {
        let _ = d.unusable();
    }
    let doc = serde_json::json!({"version": 2, "metadata": md.to_json(),
        "blockers": [], "unusable": {}});
    let _ = sealvol_luks::dump::text(&doc);
});
