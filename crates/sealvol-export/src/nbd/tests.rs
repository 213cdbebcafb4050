//! Unit tests of the server: a MemDevice, socket pairs and a tiny client.

use super::proto::*;
use super::*;
use sealvol_block::MemDevice;
use std::io::{Read, Write};
use std::path::Path;

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

/// Appends a request (and its payload) to `m`.
fn request_bytes(
    m: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    data: &[u8],
) {
    m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
}

/// A tiny client for the tests.
struct Client(UnixStream);

impl Client {
    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.0.write_all(&m).unwrap();
    }

    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(read_u64(&mut self.0).unwrap(), REPLY_MAGIC_OPT);
        let opt = read_u32(&mut self.0).unwrap();
        let kind = read_u32(&mut self.0).unwrap();
        let len = read_u32(&mut self.0).unwrap();
        let mut d = vec![0u8; len as usize];
        self.0.read_exact(&mut d).unwrap();
        (opt, kind, d)
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) {
        let mut m = Vec::new();
        request_bytes(&mut m, kind, flags, cookie, offset, len, data);
        self.0.write_all(&m).unwrap();
    }

    fn simple(&mut self, data_len: usize) -> (u32, u64, Vec<u8>) {
        assert_eq!(read_u32(&mut self.0).unwrap(), SIMPLE_REPLY_MAGIC);
        let err = read_u32(&mut self.0).unwrap();
        let cookie = read_u64(&mut self.0).unwrap();
        let mut d = vec![0u8; if err == 0 { data_len } else { 0 }];
        self.0.read_exact(&mut d).unwrap();
        (err, cookie, d)
    }
}

fn start(
    dev: Arc<dyn BlockDevice>,
    opts: NbdOptions,
) -> (Client, std::thread::JoinHandle<Result<()>>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || serve_connection(&dev, &opts, Conn::Unix(a)));
    let mut c = Client(b);
    assert_eq!(read_u64(&mut c.0).unwrap(), NBDMAGIC);
    assert_eq!(read_u64(&mut c.0).unwrap(), IHAVEOPT);
    assert_eq!(
        read_u16(&mut c.0).unwrap(),
        FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
    );
    c.0.write_all(&(1u32 | CLIENT_NO_ZEROES).to_be_bytes())
        .unwrap();
    (c, t)
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

#[test]
fn handshake_options_then_io() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
    let opts = NbdOptions {
        name: "vol".into(),
        ..NbdOptions::default()
    };
    let (mut c, t) = start(Arc::clone(&dev), opts);
    c.option(OPT_LIST, &[]);
    let (_, kind, d) = c.reply();
    assert_eq!(kind, REP_SERVER);
    assert_eq!(&d[4..], b"vol");
    assert_eq!(c.reply().1, REP_ACK);
    c.option(99, &[]);
    assert_eq!(c.reply().1, REP_ERR_UNSUP);
    c.option(OPT_INFO, &go_data("nope", &[]));
    assert_eq!(c.reply().1, REP_ERR_UNKNOWN);
    c.option(OPT_INFO, &[1, 2, 3]);
    assert_eq!(c.reply().1, REP_ERR_INVALID);
    c.option(OPT_GO, &go_data("vol", &[INFO_BLOCK_SIZE]));
    let (opt, kind, info) = c.reply();
    assert_eq!((opt, kind), (OPT_GO, REP_INFO));
    assert_eq!(u64::from_be_bytes(info[2..10].try_into().unwrap()), 1 << 20);
    let flags = u16::from_be_bytes(info[10..12].try_into().unwrap());
    assert_eq!(flags & TF_READ_ONLY, 0);
    assert_ne!(flags & TF_SEND_TRIM, 0);
    let (_, kind, bs) = c.reply();
    assert_eq!(kind, REP_INFO);
    assert_eq!(u16::from_be_bytes([bs[0], bs[1]]), INFO_BLOCK_SIZE);
    assert_eq!(c.reply().1, REP_ACK);

    c.request(CMD_WRITE, CMD_FLAG_FUA, 7, 1000, 5, b"hello");
    assert_eq!(c.simple(0), (0, 7, vec![]));
    c.request(CMD_READ, 0, 8, 998, 9, &[]);
    assert_eq!(c.simple(9), (0, 8, b"\0\0hello\0\0".to_vec()));
    c.request(CMD_WRITE_ZEROES, 0, 9, 1001, 2, &[]);
    assert_eq!(c.simple(0).0, 0);
    c.request(CMD_READ, 0, 10, 1000, 5, &[]);
    assert_eq!(c.simple(5).2, b"h\0\0lo".to_vec());
    c.request(CMD_FLUSH, 0, 11, 0, 0, &[]);
    assert_eq!(c.simple(0).0, 0);
    c.request(CMD_READ, 0, 12, (1 << 20) - 2, 4, &[]);
    assert_eq!(c.simple(0).0, EINVAL);
    c.request(CMD_TRIM, 0, 13, 0, 4096, &[]);
    assert_eq!(c.simple(0).0, 0);
    c.request(CMD_DISC, 0, 14, 0, 0, &[]);
    t.join().unwrap().unwrap();
}

#[test]
fn read_only_export_refuses_writes_and_says_so() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4096));
    let opts = NbdOptions {
        read_only: true,
        ..NbdOptions::default()
    };
    let (mut c, t) = start(dev, opts);
    c.option(OPT_EXPORT_NAME, b"");
    let size = read_u64(&mut c.0).unwrap();
    let flags = read_u16(&mut c.0).unwrap();
    assert_eq!(size, 4096);
    assert_ne!(flags & TF_READ_ONLY, 0);
    c.request(CMD_WRITE, 0, 1, 0, 3, b"abc");
    assert_eq!(c.simple(0).0, EPERM);
    c.request(CMD_READ, 0, 2, 0, 3, &[]);
    assert_eq!(c.simple(3), (0, 2, vec![0, 0, 0]));
    drop(c);
    t.join().unwrap().unwrap();
}

#[test]
fn tcp_only_on_loopback() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4096));
    let err = Server::bind_tcp(
        Arc::clone(&dev),
        "0.0.0.0:0".parse().unwrap(),
        NbdOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    let err = Server::bind_tcp(
        Arc::clone(&dev),
        "127.0.0.1:0".parse().unwrap(),
        NbdOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--tls-creds"), "{err}");
    let opts = NbdOptions {
        allow_plaintext_tcp: true,
        ..NbdOptions::default()
    };
    let s = Server::bind_tcp(dev, "127.0.0.1:0".parse().unwrap(), opts).unwrap();
    assert!(s.endpoint().starts_with("127.0.0.1:"));
}

#[test]
fn server_serves_a_unix_socket_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(8192));
    let server = Server::bind_unix(dev, &sock, NbdOptions::default()).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| server.serve(&stop));
        let mut c = Client(UnixStream::connect(&sock).unwrap());
        assert_eq!(read_u64(&mut c.0).unwrap(), NBDMAGIC);
        // The server closes this idle client when it stops.
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap().unwrap();
    });
    assert!(!sock.exists());
}

/// A client at the start of transmission on `sock` (NBD_OPT_GO done).
fn negotiated(sock: &Path) -> Client {
    let mut c = Client(UnixStream::connect(sock).unwrap());
    c.greeted();
    c.option(OPT_GO, &go_data("", &[]));
    while c.reply().1 != REP_ACK {}
    c
}

impl Client {
    fn greeted(&mut self) {
        assert_eq!(read_u64(&mut self.0).unwrap(), NBDMAGIC);
        assert_eq!(read_u64(&mut self.0).unwrap(), IHAVEOPT);
        read_u16(&mut self.0).unwrap();
        self.0
            .write_all(&(1u32 | CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
    }

    /// Sends `n` requests of `len` bytes (writes carry their payload) without reading.
    fn flood(&mut self, kind: u16, n: u64, len: u32) {
        let payload = vec![0x5a; if kind == CMD_WRITE { len as usize } else { 0 }];
        for i in 0..n {
            self.request(kind, 0, i, i * u64::from(len), len, &payload);
        }
    }
}

/// Runs `f` in a thread and fails the test when it takes longer than `limit`.
fn within<T: Send>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let t0 = Instant::now();
        let h = s.spawn(f);
        while !h.is_finished() {
            assert!(t0.elapsed() < limit, "{what} took longer than {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join().unwrap()
    })
}

/// Serves `opts` on a fresh unix socket in a scope; `f` gets the socket path and the stop flag.
fn with_server(opts: NbdOptions, f: impl FnOnce(&Path, &AtomicBool)) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    let server = Server::bind_unix(dev, &sock, opts).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| server.serve(&stop));
        f(&sock, &stop);
        stop.store(true, Ordering::SeqCst);
        within(Duration::from_secs(2), "stopping the server", || {
            h.join().unwrap().unwrap()
        });
    });
    assert!(!sock.exists(), "the socket file is removed");
}

#[test]
fn vanished_clients_end_their_connections() {
    for kind in [CMD_READ, CMD_WRITE] {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(32 << 20));
        let (mut c, t) = start(dev, NbdOptions::default());
        c.option(OPT_GO, &go_data("", &[]));
        while c.reply().1 != REP_ACK {}
        c.flood(kind, 16, 1 << 20);
        drop(c); // gone, nothing read
        let r = within(Duration::from_secs(5), "ending a vanished client", || {
            t.join().unwrap()
        });
        if kind == CMD_WRITE {
            // The payloads were all there: the writes ran, their replies found nobody.
            assert!(r.is_err());
        }
    }
}

#[test]
fn a_client_that_reads_no_reply_is_dropped_after_the_send_timeout() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    let opts = NbdOptions {
        send_timeout: Duration::from_millis(300),
        ..NbdOptions::default()
    };
    let (mut c, t) = start(dev, opts);
    c.option(OPT_GO, &go_data("", &[]));
    while c.reply().1 != REP_ACK {}
    c.flood(CMD_READ, 64, 1 << 20);
    let err = within(Duration::from_secs(5), "the send timeout", || {
        t.join().unwrap().unwrap_err()
    });
    assert!(format!("{err}").contains("did not read a reply"), "{err}");
    drop(c);
}

#[test]
fn server_stops_within_two_seconds_whatever_the_clients_do() {
    with_server(NbdOptions::default(), |sock, _| {
        let idle = negotiated(sock);
        let silent = UnixStream::connect(sock).unwrap();
        let mut not_reading = negotiated(sock);
        not_reading.flood(CMD_READ, 64, 1 << 20);
        let mut mid_request = negotiated(sock);
        mid_request.request(CMD_WRITE, 0, 1, 0, 1 << 20, &[1; 4096]);
        std::thread::sleep(Duration::from_millis(300));
        // Kept open while the server stops (with_server times it).
        std::mem::forget((idle, silent, not_reading, mid_request));
    });
}

#[test]
fn vanished_clients_leave_the_server_serving() {
    with_server(NbdOptions::default(), |sock, _| {
        for kind in [CMD_READ, CMD_WRITE, CMD_READ, CMD_WRITE] {
            let mut c = negotiated(sock);
            c.flood(kind, 16, 1 << 20);
        }
        within(
            Duration::from_secs(5),
            "a new client after vanished ones",
            || {
                let mut c = negotiated(sock);
                c.request(CMD_READ, 0, 7, 0, 4096, &[]);
                assert_eq!(c.simple(4096).0, 0);
            },
        );
    });
}

#[test]
fn connection_cap_refuses_extra_clients_and_a_slot_frees() {
    let opts = NbdOptions {
        max_connections: 2,
        ..NbdOptions::default()
    };
    with_server(opts, |sock, _| {
        let a = negotiated(sock);
        let _b = negotiated(sock);
        let mut extra = UnixStream::connect(sock).unwrap();
        let mut buf = [0u8; 8];
        let n = within(Duration::from_secs(2), "refusing the third client", || {
            extra.read(&mut buf).unwrap_or(0)
        });
        assert_eq!(n, 0, "the third client is closed without a greeting");
        drop(a);
        within(Duration::from_secs(3), "a freed slot", || loop {
            let mut c = UnixStream::connect(sock).unwrap();
            if read_u64(&mut c).is_ok_and(|m| m == NBDMAGIC) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        });
    });
}

#[test]
fn handshake_limit_drops_silent_and_dribbling_clients() {
    let opts = NbdOptions {
        handshake_timeout: Duration::from_millis(300),
        ..NbdOptions::default()
    };
    with_server(opts, |sock, _| {
        let t0 = Instant::now();
        let mut silent = Client(UnixStream::connect(sock).unwrap());
        silent.greeted();
        let mut dribbler = Client(UnixStream::connect(sock).unwrap());
        dribbler.greeted();
        let head = OptionHeader {
            option: OPT_LIST,
            len: 0,
        }
        .encode();
        let mut cut = false;
        for b in head.iter().cycle().take(200) {
            if dribbler.0.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            if t0.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = dribbler.0.read_to_end(&mut rest);
        assert!(
            cut || t0.elapsed() < Duration::from_secs(3),
            "dribbler dropped"
        );
        let rest = within(Duration::from_secs(3), "dropping a silent client", || {
            let mut rest = Vec::new();
            silent.0.read_to_end(&mut rest).map(|_| rest)
        });
        assert!(rest.unwrap().is_empty());
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // A prompt client is served.
        let mut c = negotiated(sock);
        std::thread::sleep(Duration::from_millis(500));
        c.request(CMD_READ, 0, 1, 0, 512, &[]);
        assert_eq!(c.simple(512).0, 0, "the limit ends with the handshake");
    });
}

#[test]
fn a_client_that_stops_mid_payload_is_dropped_and_an_idle_one_is_not() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(8 << 20));
    let opts = NbdOptions {
        send_timeout: Duration::from_millis(300),
        ..NbdOptions::default()
    };
    let (mut c, t) = start(Arc::clone(&dev), opts.clone());
    c.option(OPT_GO, &go_data("", &[]));
    while c.reply().1 != REP_ACK {}
    // Idle for longer than the timeout between requests: still served.
    std::thread::sleep(Duration::from_millis(800));
    c.request(CMD_READ, 0, 1, 0, 512, &[]);
    assert_eq!(c.simple(512).0, 0);
    // Half a write's payload, then nothing.
    c.request(CMD_WRITE, 0, 2, 0, 1 << 20, &[3; 1 << 19]);
    let err = within(Duration::from_secs(3), "dropping a stalled request", || {
        t.join().unwrap().unwrap_err()
    });
    assert!(format!("{err}").contains("and then nothing"), "{err}");
    drop(c);
}

#[test]
fn pipelined_small_and_large_requests_get_their_own_replies() {
    // Small reads and writes run on the connection's thread, large ones on workers: sent
    // back to back (several per recv), every request gets the reply with its cookie and
    // its own data, whatever order they finish in.
    with_server(NbdOptions::default(), |sock, _| {
        let mut c = negotiated(sock);
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let small = |i: u64| vec![i as u8 ^ 0xa5; 4096];
        let mut expect: std::collections::HashMap<u64, usize> = Default::default();
        let mut batch = Vec::new();
        let mut queue = |kind: u16, cookie: u64, offset: u64, len: u32, data: &[u8]| {
            request_bytes(&mut batch, kind, 0, cookie, offset, len, data);
        };
        queue(CMD_WRITE, 1000, 0, big.len() as u32, &big);
        for i in 0..32u64 {
            queue(CMD_WRITE, i, (2 << 20) + i * 4096, 4096, &small(i));
        }
        c.0.write_all(&batch).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..33 {
            let (err, cookie, _) = c.simple(0);
            assert_eq!(err, 0, "write {cookie}");
            assert!(seen.insert(cookie), "one reply per request");
        }
        batch.clear();
        let mut queue = |kind: u16, cookie: u64, offset: u64, len: u32| {
            request_bytes(&mut batch, kind, 0, cookie, offset, len, &[]);
            expect.insert(cookie, len as usize);
        };
        queue(CMD_READ, 1000, 0, big.len() as u32);
        for i in 0..32u64 {
            queue(CMD_READ, i, (2 << 20) + i * 4096, 4096);
        }
        c.0.write_all(&batch).unwrap();
        for _ in 0..33 {
            assert_eq!(read_u32(&mut c.0).unwrap(), SIMPLE_REPLY_MAGIC);
            assert_eq!(read_u32(&mut c.0).unwrap(), 0);
            let cookie = read_u64(&mut c.0).unwrap();
            let len = expect.remove(&cookie).expect("a cookie we sent, once");
            let mut d = vec![0u8; len];
            c.0.read_exact(&mut d).unwrap();
            if cookie == 1000 {
                assert!(d == big, "the large read has the large write's data");
            } else {
                assert_eq!(d, small(cookie), "read {cookie}");
            }
        }
        assert!(expect.is_empty());
    });
}
