//! Fuzzes the daemon's Docker/Podman volume plugin request parser
//! (`sealvol_daemon::plugin::parse`): path and body bytes in, a typed request or a typed
//! refusal out, no I/O.
//!
//! The first byte's low bit picks POST or GET, the rest up to the first newline is the path
//! (lossy UTF-8), the remainder the body. Any input parses or is refused, never a panic. A
//! refusal is a 4xx whose message is non-empty and bounded; a request goes back to bytes
//! (`PluginRequest::to_http`) and parses to itself.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;
use sealvol_daemon::plugin::parse;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = if m & 1 == 0 {
        Method::POST
    } else {
        Method::GET
    };
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    match parse(&method, &path, body) {
        Ok(req) => {
            assert_eq!(method, Method::POST);
            let (p2, b2) = req.to_http();
            assert_eq!(parse(&Method::POST, p2, &b2), Ok(req), "round trip");
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "{e:?}");
            let msg = e.message();
            assert!(!msg.is_empty() && msg.len() <= sealvol_daemon::http::MAX_MESSAGE);
        }
    }
});
