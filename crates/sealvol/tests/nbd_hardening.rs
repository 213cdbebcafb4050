//! `sealvol serve nbd` against hostile and careless clients: clients that vanish mid-request
//! (raw ones and a killed `qemu-img bench`), say nothing, hold every slot, do not read, or
//! pipeline 32 MiB writes; stopping under all of that; the unix socket's mode and who may
//! connect; TLS with qemu as the client.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sealvol_export::nbd::proto::{
    self, GoRequest, OptionHeader, OptionReplyHeader, Request, CMD_READ, CMD_WRITE, OPT_GO, REP_ACK,
};

/// A scratch directory with a volume, its key, and a private runtime dir for sealvol.
struct Setup {
    dir: tempfile::TempDir,
    vol: PathBuf,
    key: PathBuf,
    plain: Vec<u8>,
}

impl Setup {
    /// A volume of `mib` MiB holding random bytes.
    fn new(mib: usize) -> Setup {
        let dir = tmpdir();
        let (key, _) = machine_key(dir.path(), "key");
        let vol = dir.path().join("vol.img");
        let size = format!("{mib}M");
        sv([
            "format".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            "--size".as_ref(),
            size.as_ref(),
            vol.as_os_str(),
        ])
        .ok();
        let plain = random_bytes(mib << 20);
        let src = dir.path().join("plain.raw");
        std::fs::write(&src, &plain).unwrap();
        sv([
            "import".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            src.as_os_str(),
            vol.as_os_str(),
        ])
        .ok();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Setup {
            dir,
            vol,
            key,
            plain,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// `sealvol serve nbd ARGS VOLUME` (through `sh -c 'umask U; exec ...'` when `umask`).
    fn serve(&self, args: &[&str], umask: Option<&str>) -> Server {
        let mut argv: Vec<String> = vec![
            SEALVOL.into(),
            "serve".into(),
            "nbd".into(),
            "--key-file".into(),
            self.key.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.push(self.vol.display().to_string());
        let mut cmd = match umask {
            Some(u) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {u}; exec \"$@\""))
                    .arg("sh")
                    .args(&argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        // stderr to a file: a pipe nobody drains could fill and block the server's logging.
        let log = self.path(&format!("serve-{}.log", std::process::id()));
        let log = (0..)
            .map(|i| log.with_extension(format!("{i}.log")))
            .find(|p| !p.exists())
            .unwrap();
        cmd.env("SEALVOL_RUN_DIR", self.run_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Server {
            child: Some(cmd.spawn().expect("start sealvol serve nbd")),
            log,
        }
    }

    /// `sealvol ARGS` with this setup's runtime dir.
    fn sv(&self, args: &[&std::ffi::OsStr]) -> Run {
        let out = Command::new(SEALVOL)
            .args(args)
            .env("SEALVOL_RUN_DIR", self.run_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            cmdline: format!("sealvol {args:?}"),
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// The volume's plaintext through `sealvol export`.
    fn export(&self) -> Vec<u8> {
        let dst = self.path("export.raw");
        sv([
            "export".as_ref(),
            "--key-file".as_ref(),
            self.key.as_os_str(),
            self.vol.as_os_str(),
            dst.as_os_str(),
        ])
        .ok();
        std::fs::read(dst).unwrap()
    }
}

/// A running `sealvol serve nbd`; killed when dropped.
struct Server {
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits; returns how long the process took to exit, and its stderr.
    fn terminate(&mut self) -> (Duration, String) {
        let child = self.child.as_mut().unwrap();
        let t0 = Instant::now();
        signal(child.id(), "TERM");
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SIGTERM did not stop the server in 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = t0.elapsed();
        self.child = None;
        (took, std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Waits until the process exits by itself (within `limit`); returns its stderr.
    fn wait_exit(&mut self, limit: Duration) -> (i32, String) {
        let child = self.child.as_mut().unwrap();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        self.child = None;
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        (status.code().unwrap_or(-1), err)
    }

    /// The server's peak resident memory (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kb << 10
    }

    /// Resets the peak (VmHWM) to the current resident size.
    fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

fn wait_for(what: &str, limit: Duration, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_socket(sock: &Path) {
    wait_for("the NBD socket", Duration::from_secs(30), || {
        UnixStream::connect(sock).is_ok()
    });
}

fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// Runs `program ARGS` and asserts it finishes within `limit`.
#[track_caller]
fn run_within(limit: Duration, program: &Path, args: &[&str]) -> Run {
    let t0 = Instant::now();
    let r = run(program, args, None);
    assert!(
        t0.elapsed() < limit,
        "`{}` took {:?} (limit {limit:?})",
        r.cmdline,
        t0.elapsed()
    );
    r
}

/// A raw NBD client (std sockets and the protocol's own encoders).
struct Raw(UnixStream);

impl Raw {
    /// Connects and negotiates (NBD_OPT_GO) up to transmission.
    fn negotiated(sock: &Path) -> Raw {
        let mut s = UnixStream::connect(sock).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(greeting[..8], proto::NBDMAGIC.to_be_bytes());
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        let go = GoRequest {
            name: vec![],
            info: vec![],
        }
        .encode();
        let head = OptionHeader {
            option: OPT_GO,
            len: go.len() as u32,
        };
        s.write_all(&head.encode()).unwrap();
        s.write_all(&go).unwrap();
        loop {
            let mut h = [0u8; OptionReplyHeader::LEN];
            s.read_exact(&mut h).unwrap();
            let h = OptionReplyHeader::parse(&h).unwrap();
            let mut d = vec![0u8; h.len as usize];
            s.read_exact(&mut d).unwrap();
            if h.kind == REP_ACK {
                return Raw(s);
            }
            assert!(h.kind < 0x8000_0000, "GO refused: {h:?}");
        }
    }

    /// Sends `n` requests of `len` bytes (writes with their payload), reading nothing.
    /// Stops quietly if the server closes the connection.
    fn flood(&mut self, kind: u16, n: u64, len: u32) {
        let payload = vec![0xa5u8; if kind == CMD_WRITE { len as usize } else { 0 }];
        for i in 0..n {
            let r = Request {
                flags: 0,
                kind,
                cookie: i,
                offset: 0,
                len,
            };
            if self.0.write_all(&r.encode()).is_err() || self.0.write_all(&payload).is_err() {
                return;
            }
        }
    }
}

/// `qemu-img bench ... URI`, killed with SIGKILL after `after`.
fn kill_bench_mid_run(qemu_img: &Path, uri: &str, write: bool, after: Duration) {
    let mut args = vec!["bench", "-f", "raw", "-d", "16", "-s", "1M", "-c", "100000"];
    if write {
        args.push("-w");
    }
    args.push(uri);
    let mut child = Command::new(qemu_img)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let still_running = child.try_wait().unwrap().is_none();
    signal(child.id(), "KILL");
    let _ = child.wait();
    assert!(
        still_running,
        "qemu-img bench ended before it was killed: make -c larger"
    );
}

#[test]
fn nbd_vanished_raw_clients_and_killed_qemu_img_bench_leave_the_server_serving_and_stoppable() {
    let qemu_img = need("qemu-img");
    let s = Setup::new(32);
    let sock = s.path("nbd.sock");
    let mut server = s.serve(&["--socket", sock.to_str().unwrap()], None);
    wait_socket(&sock);
    let uri = unix_uri(&sock);
    // (a) raw clients: 16 x 1 MiB reads (or writes), then gone without reading a reply.
    for round in 0..6 {
        let kind = if round % 2 == 0 { CMD_READ } else { CMD_WRITE };
        let mut c = Raw::negotiated(&sock);
        c.flood(kind, 16, 1 << 20);
        drop(c);
    }
    // (b) qemu-img bench, reading and writing, killed mid-run.
    for round in 0..6 {
        kill_bench_mid_run(&qemu_img, &uri, round % 2 == 1, Duration::from_millis(400));
    }
    // Still serving, promptly.
    let info = run_within(
        Duration::from_secs(10),
        &qemu_img,
        &["info", "--output=json", &uri],
    )
    .ok()
    .json();
    assert_eq!(info["virtual-size"], 32 << 20);
    let out = s.path("out.raw");
    run_within(
        Duration::from_secs(20),
        &qemu_img,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 32 << 20);
    let (took, err) = server.terminate();
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?}\n{err}"
    );
    assert!(!sock.exists(), "the socket file is removed");
}

#[test]
fn nbd_handshake_limit_drops_a_silent_client_and_the_connection_cap_holds() {
    let s = Setup::new(8);
    let sock = s.path("nbd.sock");
    let mut server = s.serve(
        &[
            "--socket",
            sock.to_str().unwrap(),
            "--handshake-limit",
            "1",
            "--shared",
            "2",
        ],
        None,
    );
    wait_socket(&sock);
    // A client that connects and says nothing is dropped after the limit.
    let t0 = Instant::now();
    let mut silent = UnixStream::connect(&sock).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    silent
        .read_to_end(&mut all)
        .expect("the server closes a silent client (not a read timeout)");
    let took = t0.elapsed();
    assert_eq!(all.len(), 18, "the greeting, then nothing");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "dropped after {took:?}; --handshake-limit 1"
    );
    // Two idle clients hold both slots (once the silent one's slot is free: its thread
    // ends just after its socket closed); a third is refused at once.
    std::thread::sleep(Duration::from_millis(200));
    let a = Raw::negotiated(&sock);
    let b = Raw::negotiated(&sock);
    let mut third = UnixStream::connect(&sock).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 18];
    let n = third.read(&mut buf).expect("refused, not left waiting");
    assert_eq!(n, 0, "the third client gets no greeting");
    // A slot frees when a client leaves.
    drop(a);
    wait_for("a free slot", Duration::from_secs(5), || {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut g = [0u8; 8];
        c.read_exact(&mut g).is_ok()
    });
    drop(b);
    let (_, err) = server.terminate();
    assert!(
        err.contains("connection limit"),
        "refusals are logged:\n{err}"
    );
}

#[test]
fn nbd_in_flight_bound_holds_with_clients_pipelining_32mib_writes() {
    let s = Setup::new(64);
    let sock = s.path("nbd.sock");
    let bound: u64 = 32 << 20;
    let server = s.serve(
        &["--socket", sock.to_str().unwrap(), "--max-in-flight", "32M"],
        None,
    );
    wait_socket(&sock);
    server.reset_peak_rss();
    let base = server.peak_rss();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let mut c = Raw::negotiated(&sock);
                let mut r = c.0.try_clone().unwrap();
                let n = 6u64;
                let reader = std::thread::spawn(move || {
                    for _ in 0..n {
                        let mut h = [0u8; 16];
                        r.read_exact(&mut h).unwrap();
                        let (err, _) = proto::parse_simple_reply(&h).unwrap();
                        assert_eq!(err, 0);
                    }
                });
                c.flood(CMD_WRITE, n, 32 << 20);
                reader.join().unwrap();
            });
        }
    });
    let peak = server.peak_rss() - base;
    eprintln!("peak RSS growth: {} MiB (bound 32 MiB)", peak >> 20);
    // The bound, a second bound's worth for the allocator and the threads' stacks.
    assert!(
        peak < 2 * bound + (16 << 20),
        "peak RSS grew by {} MiB with --max-in-flight 32M",
        peak >> 20
    );
    drop(server);
}

#[test]
fn nbd_sigterm_and_close_stop_the_server_within_two_seconds_whatever_the_clients_do() {
    let s = Setup::new(32);
    let sock = s.path("nbd.sock");
    let misbehave = |sock: &Path| {
        let idle = Raw::negotiated(sock);
        let silent = UnixStream::connect(sock).unwrap();
        let mut not_reading = Raw::negotiated(sock);
        not_reading.flood(CMD_READ, 32, 1 << 20);
        let mut mid_request = Raw::negotiated(sock);
        let half = Request {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1,
            offset: 0,
            len: 4 << 20,
        };
        mid_request.0.write_all(&half.encode()).unwrap();
        mid_request.0.write_all(&vec![7u8; 1 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        (idle, silent, not_reading, mid_request)
    };
    // SIGTERM.
    let mut server = s.serve(&["--socket", sock.to_str().unwrap()], None);
    wait_socket(&sock);
    let clients = misbehave(&sock);
    let (took, err) = server.terminate();
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?}\n{err}"
    );
    assert!(!sock.exists());
    drop(clients);
    // `sealvol close`.
    let mut server = s.serve(&["--socket", sock.to_str().unwrap()], None);
    wait_socket(&sock);
    let clients = misbehave(&sock);
    let t0 = Instant::now();
    s.sv(&["close".as_ref(), s.vol.as_os_str()]).ok();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "sealvol close took {took:?}");
    server.wait_exit(Duration::from_secs(1));
    assert!(!sock.exists());
    drop(clients);
    // The volume opens again.
    let mut server = s.serve(&["--socket", sock.to_str().unwrap()], None);
    wait_socket(&sock);
    let mut c = Raw::negotiated(&sock);
    let r = Request {
        flags: 0,
        kind: CMD_READ,
        cookie: 9,
        offset: 0,
        len: 4096,
    };
    c.0.write_all(&r.encode()).unwrap();
    let mut h = [0u8; 16];
    c.0.read_exact(&mut h).unwrap();
    assert_eq!(proto::parse_simple_reply(&h).unwrap(), (0, 9));
    let mut d = vec![0u8; 4096];
    c.0.read_exact(&mut d).unwrap();
    assert!(d == s.plain[..4096]);
    server.terminate();
}

/// An unprivileged system user for the access tests: (name, uid, gid).
fn unprivileged_user() -> (String, String, String) {
    let name = "sealvol-nbd-test";
    if !Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        let useradd = need("useradd");
        // Racing another test process that creates it too is fine.
        let _ = Command::new(useradd)
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status();
    }
    let id = |flag: &str| run("id", [flag, name], None).ok().out().trim().to_string();
    (name.to_string(), id("-u"), id("-g"))
}

/// Runs `program ARGS` as the unprivileged user (setpriv, no supplementary groups).
fn run_as(user: &(String, String, String), program: &Path, args: &[&str]) -> Run {
    let setpriv = need("setpriv");
    let mut argv = vec![
        format!("--reuid={}", user.1),
        format!("--regid={}", user.2),
        "--clear-groups".to_string(),
        "--".to_string(),
        program.display().to_string(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    run(setpriv, argv, None)
}

/// A directory every user can enter (the temp dirs are 0700).
fn open_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn nbd_socket_is_0600_under_umask_000_and_other_users_are_denied() {
    let qemu_img = need("qemu-img");
    let user = unprivileged_user();
    let s = Setup::new(8);
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pub_dir = open_dir(s.dir.path(), "pub");
    let sock = pub_dir.join("nbd.sock");
    let mut server = s.serve(&["--socket", sock.to_str().unwrap()], Some("000"));
    wait_socket(&sock);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the socket's mode under umask 000"
    );
    assert_eq!(
        std::fs::read_dir(&pub_dir).unwrap().count(),
        1,
        "no temporary names left next to the socket"
    );
    let uri = unix_uri(&sock);
    run_as(&user, &qemu_img, &["info", &uri])
        .fails()
        .stderr_mentions("Permission denied");
    // Root still gets in.
    run(&qemu_img, ["info", &uri], None).ok();
    server.terminate();
}

#[test]
fn nbd_listen_without_tls_is_refused_unless_insecure_is_said() {
    let s = Setup::new(8);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A server that starts (the old behaviour) is killed and fails the test.
    let mut server = s.serve(&["--listen", &addr], None);
    let (code, err) = server.wait_exit(Duration::from_secs(10));
    assert_ne!(code, 0);
    assert!(
        err.contains("--tls-creds") && err.contains("--insecure-plaintext"),
        "the refusal says how to give certificates:\n{err}"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "nothing listens"
    );
    // Said explicitly, it serves.
    let mut server = s.serve(&["--listen", &addr, "--insecure-plaintext"], None);
    wait_for("the NBD port", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    server.terminate();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in
/// the directory layouts qemu's tls-creds-x509 reads: `DIR/server/{ca-cert,server-cert,
/// server-key}.pem` and `DIR/client/{ca-cert,client-cert,client-key}.pem`. With `other_ca`,
/// the client certificate is signed by a different CA.
fn make_certs(dir: &Path, name: &str, other_ca: bool) -> (PathBuf, PathBuf) {
    let openssl = need("openssl");
    let base = dir.join(name);
    std::fs::create_dir_all(&base).unwrap();
    let f = |n: &str| base.join(n).display().to_string();
    let ossl = |args: &[&str]| {
        run(&openssl, args, None).ok();
    };
    std::fs::write(
        base.join("ext.cnf"),
        "[req]\ndistinguished_name=dn\n[dn]\n\
         [ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         [server]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
         [client]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let make_ca = |key: &str, cert: &str, cn: &str| {
        ossl(&["genrsa", "-out", &f(key), "2048"]);
        ossl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-key",
            &f(key),
            "-subj",
            cn,
            "-out",
            &f(cert),
            "-config",
            &f("ext.cnf"),
            "-extensions",
            "ca",
        ]);
    };
    let issue = |key: &str, cert: &str, cn: &str, ext: &str, ca_key: &str, ca_cert: &str| {
        ossl(&["genrsa", "-out", &f(key), "2048"]);
        ossl(&[
            "req",
            "-new",
            "-key",
            &f(key),
            "-subj",
            cn,
            "-out",
            &f("req.csr"),
            "-config",
            &f("ext.cnf"),
        ]);
        ossl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &f("req.csr"),
            "-CA",
            &f(ca_cert),
            "-CAkey",
            &f(ca_key),
            "-CAcreateserial",
            "-out",
            &f(cert),
            "-extfile",
            &f("ext.cnf"),
            "-extensions",
            ext,
        ]);
    };
    make_ca("ca-key.pem", "ca.pem", "/CN=sealvol test CA");
    issue(
        "server-key.pem",
        "server-cert.pem",
        "/CN=127.0.0.1",
        "server",
        "ca-key.pem",
        "ca.pem",
    );
    let client_ca = if other_ca {
        make_ca("other-ca-key.pem", "other-ca.pem", "/CN=another CA");
        ("other-ca-key.pem", "other-ca.pem")
    } else {
        ("ca-key.pem", "ca.pem")
    };
    issue(
        "client-key.pem",
        "client-cert.pem",
        "/CN=qemu client",
        "client",
        client_ca.0,
        client_ca.1,
    );
    let server = base.join("server");
    let client = base.join("client");
    for (d, files) in [
        (
            &server,
            [
                ("ca.pem", "ca-cert.pem"),
                ("server-cert.pem", "server-cert.pem"),
                ("server-key.pem", "server-key.pem"),
            ],
        ),
        (
            &client,
            [
                ("ca.pem", "ca-cert.pem"),
                ("client-cert.pem", "client-cert.pem"),
                ("client-key.pem", "client-key.pem"),
            ],
        ),
    ] {
        std::fs::create_dir_all(d).unwrap();
        for (from, to) in files {
            std::fs::copy(base.join(from), d.join(to)).unwrap();
        }
    }
    (server, client)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tls_object(dir: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        dir.display()
    )
}

#[test]
fn nbd_tls_with_qemu_reads_and_writes_and_refuses_strangers() {
    let qemu_img = need("qemu-img");
    let s = Setup::new(16);
    let (server_dir, client_dir) = make_certs(s.dir.path(), "good", false);
    let (_, stranger_dir) = make_certs(s.dir.path(), "other", true);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = s.serve(
        &[
            "--listen",
            &addr,
            "--tls-creds",
            server_dir.to_str().unwrap(),
        ],
        None,
    );
    wait_for("the NBD port", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let opts = format!("driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0");
    // Reads back exactly the plaintext.
    let out = s.path("via-tls.raw");
    run_within(
        Duration::from_secs(30),
        &qemu_img,
        &[
            "convert",
            "--object",
            &tls_object(&client_dir),
            "--image-opts",
            &opts,
            "-O",
            "raw",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(std::fs::read(&out).unwrap() == s.plain, "TLS read-back");
    // Writes through.
    let new = random_bytes(16 << 20);
    let src = s.path("new.raw");
    std::fs::write(&src, &new).unwrap();
    run_within(
        Duration::from_secs(30),
        &qemu_img,
        &[
            "convert",
            "-n",
            "--object",
            &tls_object(&client_dir),
            "-f",
            "raw",
            src.to_str().unwrap(),
            "--target-image-opts",
            &opts,
        ],
    )
    .ok();
    // A client certificate from another CA is refused, and so is a client without TLS.
    run_within(
        Duration::from_secs(30),
        &qemu_img,
        &[
            "info",
            "--object",
            &tls_object(&stranger_dir),
            "--image-opts",
            &opts,
        ],
    )
    .fails();
    run_within(
        Duration::from_secs(30),
        &qemu_img,
        &["info", &format!("nbd://{addr}")],
    )
    .fails()
    .stderr_mentions("TLS");
    // An unprivileged local user without a client certificate gets nothing either.
    let user = unprivileged_user();
    let ca_only = open_dir(&std::env::temp_dir(), &format!("sv-ca-only-{port}"));
    std::fs::copy(client_dir.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
    std::fs::set_permissions(
        ca_only.join("ca-cert.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let denied = run_as(
        &user,
        &qemu_img,
        &[
            "info",
            "--object",
            &tls_object(&ca_only),
            "--image-opts",
            &opts,
        ],
    );
    let _ = std::fs::remove_dir_all(&ca_only);
    denied.fails();
    run_as(&user, &qemu_img, &["info", &format!("nbd://{addr}")]).fails();
    let (took, err) = server.terminate();
    assert!(took < Duration::from_secs(2), "{took:?}\n{err}");
    assert!(s.export() == new, "what qemu wrote over TLS reads back");
}
