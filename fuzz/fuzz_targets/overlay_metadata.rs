//! The overlay's metadata parser and open path on hostile bytes: the input parses as a
//! root slot and as a map node; when it parses as a root, an overlay is opened from it
//! (its MAC and wrapped keys made valid with a fixed key, so the map loader, the allocator's
//! checks and reads run on the fuzzer's tree). Nothing may panic, hang or allocate
//! without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sealvol_overlay::__fuzz::metadata(data);
});
