//! `sealvol daemon` as the volume driver of the real engines: Docker 20.10 (`dockerd`, run by
//! the test with its own data and exec roots, `--iptables=false --bridge=none`, containers
//! with `--network none`) and Podman 4.3 (its own storage, `CONTAINERS_CONF` naming the
//! plugin), both running a busybox image imported from a rootfs the test makes.
//! `scripts/test` installs docker.io, podman and busybox-static; a missing engine fails.
//! `docker volume inspect` shows the volume's creation time (the plugin's `CreatedAt`).

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{assert_no_key, assert_no_key_in_tree, Daemon};
use common::{need, random_bytes, run, tmpdir, write_secret, Run};
use serde_json::Value;

const IMAGE: &str = "sealvol-it-busybox:1";

/// A busybox rootfs as a tar stream.
fn rootfs_tar(dir: &Path) -> Vec<u8> {
    let busybox = need("busybox");
    let root = dir.join("rootfs");
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "sleep", "sync", "ls", "dd", "head", "wc",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn plugin_name(engine: &str) -> String {
    format!("sealvol-it-{engine}-{}", std::process::id())
}

/// A dockerd of the test's own.
struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
    docker: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        need("dockerd");
        std::fs::create_dir_all(dir).unwrap();
        // docker.io's own client (a newer one elsewhere on PATH may be there too).
        let docker = if Path::new("/usr/bin/docker").exists() {
            PathBuf::from("/usr/bin/docker")
        } else {
            need("docker")
        };
        let mut d = Dockerd {
            dir: dir.to_path_buf(),
            child: None,
            docker,
        };
        d.spawn();
        d
    }

    fn sock(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new(need("dockerd"))
            .args([
                "--iptables=false",
                "--bridge=none",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("x"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("-H")
            .arg(self.sock())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let t = Instant::now();
        loop {
            if self.docker(["info"]).code == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not start within 60 s: {}",
                std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if t.elapsed() > Duration::from_secs(60) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn docker<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-H".into(), self.sock().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        run(&self.docker, all, None)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (their mounts), then the daemon; never a panic here.
        let docker = |args: &[&str]| {
            Command::new(&self.docker)
                .arg("-H")
                .arg(self.sock())
                .args(args)
                .output()
                .ok()
        };
        if let Some(o) = docker(&["ps", "-aq"]) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        self.stop();
    }
}

/// Waits until `f` holds (up to 15 s).
#[track_caller]
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(15), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn volume(d: &Daemon, id: &str) -> Value {
    let (s, v) = d.api("GET", &format!("/v1/volumes/{id}"), None);
    assert_eq!(s, 200, "{v}");
    v
}

/// Holds the image of volume `id` open, so that what a remove leaves in it can be read.
fn hold_image(d: &Daemon, id: &str) -> std::fs::File {
    std::fs::File::open(d.state.join("volumes").join(id).join("disk.img")).unwrap()
}

/// The first 32 MiB of an open image, as a file in `dir` (a LUKS2 header and the start of
/// the data), and whether `key` opens it (sealvol test-key, and cryptsetup when installed).
fn key_opens(dir: &Path, held: &std::fs::File, key: &Path) -> bool {
    use std::io::{Read, Seek};
    let mut f = held.try_clone().unwrap();
    f.rewind().unwrap();
    let mut head = Vec::new();
    f.take(32 << 20).read_to_end(&mut head).unwrap();
    let copy = dir.join("copy.img");
    std::fs::write(&copy, &head).unwrap();
    let sv = common::sv([
        "test-key",
        "--key-file",
        key.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    let cs = common::cs_test_passphrase(key, None, &copy);
    assert_eq!(sv.code == 0, cs == 0, "sealvol and cryptsetup disagree");
    sv.code == 0
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[track_caller]
fn assert_no_key_in_ps(key: &[u8]) {
    let ps = Command::new("ps").args(["auxeww"]).output().unwrap();
    assert_no_key(&ps.stdout, key, "ps auxeww");
}

#[test]
fn docker_volume_driver_lifecycle_restarts_sharing_and_keys() {
    need("mkfs.ext4");
    need("cryptsetup");
    let dir = tmpdir();
    let mut dk = Dockerd::start(&dir.path().join("docker"));
    let r = run(
        &dk.docker,
        ["-H", &dk.sock(), "import", "-", IMAGE],
        Some(&rootfs_tar(dir.path())),
    );
    assert_eq!(r.code, 0, "{}", r.err());
    let name = plugin_name("docker");
    let mut d = Daemon::start(&dir.path().join("sv"), Some(&name), &["--linger-ms", "300"]);
    let (key_path, key) = common::machine_key(dir.path(), "k");
    d.register_key("web", &key);
    let runc = |dk: &Dockerd, args: &[&str]| {
        let mut a = vec!["run", "--rm", "--network", "none"];
        a.extend_from_slice(args);
        dk.docker(a)
    };

    // create through docker; write in one container.
    let before = unix_now();
    dk.docker([
        "volume",
        "create",
        "-d",
        &name,
        "--opt",
        "size=64M",
        "--opt",
        "key-id=web",
        "web-1",
    ])
    .ok();
    let after = unix_now();
    // `docker volume inspect` shows when it was created (Get's CreatedAt, RFC 3339).
    let inspect: Value =
        serde_json::from_slice(&dk.docker(["volume", "inspect", "web-1"]).ok().stdout).unwrap();
    let created = inspect[0]["CreatedAt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let secs: u64 = run("date", ["-d", created.as_str(), "+%s"], None)
        .ok()
        .out()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&secs),
        "CreatedAt {created:?} ({secs}) is not between {before} and {after}: {inspect}"
    );
    runc(
        &dk,
        &[
            "-v",
            "web-1:/data",
            IMAGE,
            "sh",
            "-c",
            "echo written-before-restarts > /data/f && sync",
        ],
    )
    .ok();

    // dockerd and the sealvol daemon restart; the registered key is gone with the daemon's
    // memory, so a run fails and says so, changing nothing; registered again, it reads.
    dk.restart();
    d.restart();
    let r = runc(&dk, &["-v", "web-1:/data", IMAGE, "cat", "/data/f"]).fails();
    assert!(
        r.err().contains("is not available") && r.err().contains("POST /v1/keys"),
        "{}",
        r.err()
    );
    assert_eq!(volume(&d, "web-1")["mounts"], 0);
    d.register_key("web", &key);
    let r = runc(&dk, &["-v", "web-1:/data", IMAGE, "cat", "/data/f"]).ok();
    assert_eq!(r.out().trim(), "written-before-restarts");

    // Two containers share the volume: one mount each, the volume open until the last goes;
    // a restart of the sealvol daemon meanwhile changes nothing for them.
    let a = dk
        .docker([
            "run",
            "-d",
            "--network",
            "none",
            "-v",
            "web-1:/data",
            IMAGE,
            "sleep",
            "300",
        ])
        .ok()
        .out();
    let b = dk
        .docker([
            "run",
            "-d",
            "--network",
            "none",
            "-v",
            "web-1:/data",
            IMAGE,
            "sleep",
            "300",
        ])
        .ok()
        .out();
    let (a, b) = (a.trim().to_string(), b.trim().to_string());
    dk.docker(["exec", &a, "sh", "-c", "echo from-a > /data/shared && sync"])
        .ok();
    assert_eq!(
        dk.docker(["exec", &b, "cat", "/data/shared"])
            .ok()
            .out()
            .trim(),
        "from-a"
    );
    let v = volume(&d, "web-1");
    assert_eq!(v["users"].as_array().unwrap().len(), 2, "{v}");
    let pid = v["export"]["pid"].as_u64().unwrap();
    d.restart();
    let v = volume(&d, "web-1");
    assert_eq!(
        (
            v["users"].as_array().unwrap().len(),
            v["export"]["pid"].as_u64()
        ),
        (2, Some(pid)),
        "{v}"
    );
    dk.docker([
        "exec",
        &b,
        "sh",
        "-c",
        "echo from-b-after-restart > /data/shared && sync",
    ])
    .ok();
    assert_eq!(
        dk.docker(["exec", &a, "cat", "/data/shared"])
            .ok()
            .out()
            .trim(),
        "from-b-after-restart"
    );
    dk.docker(["rm", "-f", &a]).ok();
    std::thread::sleep(Duration::from_millis(800));
    let v = volume(&d, "web-1");
    assert!(
        v["export_alive"].as_bool().unwrap(),
        "closed while b uses it: {v}"
    );
    let r = dk.docker(["volume", "rm", "web-1"]);
    assert_ne!(r.code, 0, "removed while in use");
    dk.docker(["rm", "-f", &b]).ok();
    eventually("the last unmount closes it", || {
        !volume(&d, "web-1")["export_alive"].as_bool().unwrap()
    });

    // A volume whose key file holds another key, or is gone: the run fails and says why.
    let kf_dir = dir.path().join("keys");
    std::fs::create_dir(&kf_dir).unwrap();
    let (kf, kf_key) = common::machine_key(&kf_dir, "kf.key");
    let opt = format!("key-file={}", kf.display());
    dk.docker([
        "volume", "create", "-d", &name, "--opt", "size=64M", "--opt", &opt, "kf-1",
    ])
    .ok();
    runc(
        &dk,
        &["-v", "kf-1:/data", IMAGE, "sh", "-c", "echo x > /data/x"],
    )
    .ok();
    eventually("kf-1 closes after its last unmount", || {
        !volume(&d, "kf-1")["export_alive"].as_bool().unwrap()
    });
    let wrong = random_bytes(32);
    write_secret(&kf_dir, "kf.key", &wrong);
    let r = runc(&dk, &["-v", "kf-1:/data", IMAGE, "cat", "/data/x"]).fails();
    assert!(
        r.err().contains("no keyslot opens with this key"),
        "{}",
        r.err()
    );
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = runc(&dk, &["-v", "kf-1:/data", IMAGE, "cat", "/data/x"]).fails();
    assert!(r.err().contains("chmod 0600"), "{}", r.err());
    std::fs::remove_file(&kf).unwrap();
    let r = runc(&dk, &["-v", "kf-1:/data", IMAGE, "cat", "/data/x"]).fails();
    assert!(r.err().contains("cannot be opened"), "{}", r.err());
    assert_eq!(volume(&d, "kf-1")["mounts"], 0);
    // A key in the options is refused, and its value never echoed.
    let r = dk
        .docker([
            "volume",
            "create",
            "-d",
            &name,
            "--opt",
            "size=64M",
            "--opt",
            "key=c2VjcmV0LWtleQ==",
            "bad-1",
        ])
        .fails();
    assert!(
        r.err().contains("never goes in one") && !r.err().contains("c2VjcmV0"),
        "{}",
        r.err()
    );

    // Nothing shows a key: inspect, ps, the logs, the state and runtime directories.
    let inspect = dk.docker(["volume", "inspect", "web-1", "kf-1"]).ok();
    assert!(
        inspect.out().contains("registered key"),
        "{}",
        inspect.out()
    );
    for k in [&key, &kf_key, &wrong] {
        assert_no_key(&inspect.stdout, k, "docker volume inspect");
        assert_no_key_in_ps(k);
        assert_no_key(d.log_text().as_bytes(), k, "the daemon's log");
        assert_no_key(
            &std::fs::read(dk.dir.join("dockerd.log")).unwrap(),
            k,
            "dockerd's log",
        );
        assert_no_key_in_tree(&d.state, k);
        assert_no_key_in_tree(&d.run, k);
    }

    // docker volume rm crypto-erases: the old key opens nothing of what the image held.
    let held = hold_image(&d, "web-1");
    assert!(
        key_opens(dir.path(), &held, &key_path),
        "the check itself must see the key open first"
    );
    dk.docker(["volume", "rm", "web-1"]).ok();
    assert!(
        !key_opens(dir.path(), &held, &key_path),
        "the old key still opens the removed volume"
    );
    assert!(!d.state.join("volumes/web-1").exists());
    dk.docker(["volume", "rm", "kf-1"]).ok();
    let (_, list) = d.api("GET", "/v1/volumes", None);
    assert_eq!(list["volumes"], serde_json::json!([]));
}

#[test]
fn podman_volume_driver_lifecycle_and_erase() {
    need("mkfs.ext4");
    need("cryptsetup");
    let podman = need("podman");
    let dir = tmpdir();
    let name = plugin_name("podman");
    let d = Daemon::start(&dir.path().join("sv"), Some(&name), &["--linger-ms", "300"]);
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\n[engine.volume_plugins]\n{name} = \"{}\"\n",
            d.plugin.as_ref().unwrap().display()
        ),
    )
    .unwrap();
    let pm = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = Command::new(&podman);
        c.env("CONTAINERS_CONF", &conf)
            .arg("--root")
            .arg(dir.path().join("proot"))
            .arg("--runroot")
            .arg(dir.path().join("prun"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run podman");
        if let Some(b) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b).unwrap();
        }
        let o = child.wait_with_output().unwrap();
        Run {
            cmdline: format!("podman {}", args.join(" ")),
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: o.stderr,
        }
    };
    pm(&["import", "-", IMAGE], Some(&rootfs_tar(dir.path()))).ok();
    let (key_path, key) = common::machine_key(dir.path(), "k");
    d.register_key("pod", &key);
    pm(
        &[
            "volume",
            "create",
            "--driver",
            &name,
            "-o",
            "size=64M",
            "-o",
            "key-id=pod",
            "pod-1",
        ],
        None,
    )
    .ok();
    pm(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "pod-1:/data",
            IMAGE,
            "sh",
            "-c",
            "echo from-podman > /data/p && sync",
        ],
        None,
    )
    .ok();
    let r = pm(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "pod-1:/data",
            IMAGE,
            "cat",
            "/data/p",
        ],
        None,
    )
    .ok();
    assert_eq!(r.out().trim(), "from-podman");
    // A missing key fails the run with a message that says so (a non-200 reply: Podman
    // takes an Err with 200 for success).
    let (s, _) = d.api("DELETE", "/v1/keys/pod", None);
    assert_eq!(s, 200);
    eventually("the volume closes after its last unmount", || {
        !volume(&d, "pod-1")["export_alive"].as_bool().unwrap()
    });
    let r = pm(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "pod-1:/data",
            IMAGE,
            "cat",
            "/data/p",
        ],
        None,
    )
    .fails();
    assert!(
        r.err().contains("is not available") && r.err().contains("POST /v1/keys"),
        "{}",
        r.err()
    );
    d.register_key("pod", &key);
    let inspect = pm(&["volume", "inspect", "pod-1"], None).ok();
    assert_no_key(&inspect.stdout, &key, "podman volume inspect");
    assert_no_key_in_ps(&key);
    assert_no_key(d.log_text().as_bytes(), &key, "the daemon's log");
    assert_no_key_in_tree(&d.state, &key);
    let held = hold_image(&d, "pod-1");
    assert!(key_opens(dir.path(), &held, &key_path));
    pm(&["volume", "rm", "pod-1"], None).ok();
    assert!(
        !key_opens(dir.path(), &held, &key_path),
        "the old key still opens the removed volume"
    );
    let _ = pm(&["rmi", "-f", IMAGE], None);
}
