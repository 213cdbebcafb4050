//! A real `sealvol daemon` for the tests: its own state, runtime and socket paths in a
//! scratch directory, its log in a file there, stopped (SIGTERM) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::SEALVOL;

pub struct Daemon {
    pub dir: PathBuf,
    pub api: PathBuf,
    pub plugin: Option<PathBuf>,
    pub log: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    extra: Vec<String>,
    umask: Option<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon in `dir`; with `plugin`, its volume plugin socket is
    /// /run/docker/plugins/<plugin>.sock.
    pub fn start(dir: &Path, plugin: Option<&str>, extra: &[&str]) -> Daemon {
        let plugin = plugin.map(|p| PathBuf::from(format!("/run/docker/plugins/{p}.sock")));
        Daemon::start_with(dir, plugin, extra, None)
    }

    /// Starts a daemon in `dir` with its volume plugin socket at `plugin`, under `umask`
    /// (through `sh -c 'umask U; exec ...'`) when given.
    pub fn start_with(
        dir: &Path,
        plugin: Option<PathBuf>,
        extra: &[&str],
        umask: Option<&str>,
    ) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            api: dir.join("api.sock"),
            plugin,
            log: dir.join("daemon.log"),
            state: dir.join("state"),
            run: dir.join("run"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            umask: umask.map(str::to_string),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = match &self.umask {
            Some(u) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {u}; exec \"$@\""))
                    .arg("sh")
                    .arg(SEALVOL);
                c
            }
            None => Command::new(SEALVOL),
        };
        c.arg("daemon")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--run-dir")
            .arg(&self.run)
            .arg("--api-socket")
            .arg(&self.api);
        match &self.plugin {
            Some(p) => c.arg("--plugin-socket").arg(p),
            None => c.arg("--no-plugin"),
        };
        c.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(c.spawn().expect("start sealvol daemon"));
        let t = Instant::now();
        // Ready when its sockets answer (a crashed daemon leaves the files behind).
        let answers = |p: &Path| std::os::unix::net::UnixStream::connect(p).is_ok();
        while !answers(&self.api) || self.plugin.as_ref().is_some_and(|p| !answers(p)) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({st}): {}", self.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the daemon did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let t = Instant::now();
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(60) {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the daemon did not stop on SIGTERM: {}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL (a crash: no shutdown, its sockets left behind), then waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts it again after [`Daemon::stop`] or [`Daemon::kill`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.spawn();
    }

    /// A client of its volume plugin socket.
    pub fn plugin_client(&self) -> sealvol_daemon::client::Client {
        sealvol_daemon::client::Client::new(self.plugin.as_ref().expect("a plugin socket"))
    }

    /// A plugin protocol request (always POST).
    pub fn plugin_call(&self, endpoint: &str, body: Value) -> (u16, Value) {
        self.plugin_client()
            .json("POST", endpoint, Some(&body))
            .unwrap_or_else(|e| panic!("{e}: {}", self.log_text()))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> sealvol_daemon::client::Client {
        sealvol_daemon::client::Client::new(&self.api)
    }

    /// A JSON request to the API.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.client()
            .json(method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{e}: {}", self.log_text()))
    }

    /// Registers `key` as `id`.
    pub fn register_key(&self, id: &str, key: &[u8]) {
        let (s, v) = self.api("POST", "/v1/keys", Some(json!({"id": id, "key": b64(key)})));
        assert_eq!(s, 200, "{v}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn b64(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Every form a key could leak in: raw bytes, base64, hex (both cases).
pub fn key_forms(key: &[u8]) -> Vec<Vec<u8>> {
    vec![
        key.to_vec(),
        b64(key).into_bytes(),
        hex::encode(key).into_bytes(),
        hex::encode_upper(key).into_bytes(),
    ]
}

/// Panics if any form of `key` is in `haystack` (named `what`).
#[track_caller]
pub fn assert_no_key(haystack: &[u8], key: &[u8], what: &str) {
    for form in key_forms(key) {
        assert!(
            !haystack.windows(form.len()).any(|w| w == form.as_slice()),
            "a form of the key appears in {what}"
        );
    }
}

/// Panics if any file under `dir` holds a form of `key`.
pub fn assert_no_key_in_tree(dir: &Path, key: &[u8]) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            // Mounted volumes hold the workload's data, not ours to search.
            if !is_mountpoint(&p) {
                assert_no_key_in_tree(&p, key);
            }
        } else if ft.is_file()
            && p.file_name()
                .is_some_and(|n| n != "disk.img" && n != "disk")
        {
            if let Ok(b) = std::fs::read(&p) {
                assert_no_key(&b, key, &p.display().to_string());
            }
        }
    }
}

/// Whether something is mounted on `p` (/proc/self/mountinfo).
pub fn is_mountpoint(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}
