//! Fuzzes the daemon's JSON API request parser (`sealvol_daemon::api::parse`): method,
//! path and body bytes in, a typed request or a typed refusal out, no I/O.
//!
//! The first byte picks the method, the rest up to the first newline is the path (lossy
//! UTF-8, as hyper hands it over), the remainder the body. Any input parses or is refused,
//! never a panic. A refusal is a 4xx whose message is non-empty and bounded; a request
//! goes back to bytes (`ApiRequest::to_http`) and parses to itself.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;
use sealvol_daemon::api::parse;

const METHODS: [&str; 7] = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes())
        .expect("a known method");
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    match parse(&method, &path, body) {
        Ok(req) => {
            let (m2, p2, b2) = req.to_http();
            assert_eq!(m2, method, "the route's method");
            assert_eq!(parse(&m2, &p2, &b2).as_ref(), Ok(&req), "round trip");
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "{e:?}");
            let msg = e.message();
            assert!(!msg.is_empty() && msg.len() <= sealvol_daemon::http::MAX_MESSAGE);
        }
    }
});
