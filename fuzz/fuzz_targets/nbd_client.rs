//! Fuzzes the NBD server with arbitrary client bytes.
//!
//! 1. The handshake state machine over bytes in memory, with TLS off and with TLS required:
//!    any input ends in a negotiation result or an error, never a panic, and with TLS
//!    required nothing but option replies (no export data) is ever written.
//! 2. The whole server path for one connection (`serve_connection`: handshake, then the
//!    request reader, workers and replies) on a socket pair against a 1 MiB `MemDevice`,
//!    the input written by a client thread that then hangs up while another drains the
//!    replies: it must end (no hang), never panic, and allocate no more than one request
//!    (at most 32 MiB) beyond a 4 MiB in-flight budget.
//!
//! The first input byte picks the options (read-only, export name); the rest is the client.
#![no_main]

use std::io::{self, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sealvol_block::{BlockDevice, MemDevice};
use sealvol_export::nbd::handshake::{self, Export, Negotiated, Tls};
use sealvol_export::nbd::proto::{ClientFlags, TF_HAS_FLAGS};
use sealvol_export::nbd::{serve_connection, Conn, NbdOptions};

/// Client bytes in, server bytes out.
struct Duplex<'a> {
    input: Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// libFuzzer's `main` is not Rust's: SIGPIPE still kills, and a peer that hung up is a
/// normal event here (the server writes replies to a client that left, and the other way).
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it is
        // what Rust's own runtime does before `main`.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

fuzz_target!(|input: &[u8]| {
    ignore_sigpipe();
    let Some((&ctrl, client)) = input.split_first() else {
        return;
    };
    let name = if ctrl & 2 == 0 { "" } else { "vol" };

    // 1. The handshake in memory.
    let export = Export {
        name,
        size: 1 << 20,
        flags: TF_HAS_FLAGS,
        block_size: 512,
    };
    for tls in [Tls::Off, Tls::Required] {
        let mut d = Duplex {
            input: Cursor::new(client),
            output: Vec::new(),
        };
        let flags = ClientFlags {
            no_zeroes: ctrl & 4 != 0,
        };
        let r = handshake::negotiate(&mut d, &export, flags, tls);
        if tls == Tls::Required {
            assert_ne!(
                r.ok(),
                Some(Negotiated::Transmission),
                "no transmission before TLS"
            );
            // Only option replies (20-byte headers), never the 10+ bytes of export data
            // that NBD_OPT_EXPORT_NAME would send.
            let mut out = &d.output[..];
            while !out.is_empty() {
                assert!(out.len() >= 20 && out[..8] == 0x0003_e889_0455_65a9u64.to_be_bytes());
                let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
                out = &out[20 + len..];
            }
        }
    }

    // 2. One whole connection on a socket pair.
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
    let opts = NbdOptions {
        read_only: ctrl & 1 != 0,
        name: name.into(),
        max_in_flight: 4 << 20,
        send_timeout: Duration::from_secs(5),
        ..NbdOptions::default()
    };
    let (server_end, mut client_end) = UnixStream::pair().expect("socket pair");
    let mut writer = client_end.try_clone().expect("clone");
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let _ = serve_connection(&dev, &opts, Conn::Unix(server_end));
        });
        s.spawn(move || {
            let _ = writer.write_all(client);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut sink = [0u8; 64 << 10];
        while matches!(client_end.read(&mut sink), Ok(n) if n > 0) {}
        server.join().expect("the server thread does not panic");
    });
});
