//! `sealvol daemon`'s JSON API against its contract, `docs/openapi.json`: every route the
//! server has is documented and every documented operation is called; every request the
//! tests send as valid matches its request schema; every response's status is documented
//! for its operation and its body matches that response's schema. Then hostile requests:
//! oversized and malformed bodies, path-traversal ids, unknown routes and methods, and
//! concurrent destroys and opens of one volume; and no key in any reply, log or file.
//! Slow clients (headers or body never finished) are dropped at the request deadline
//! without stopping others, under a connection cap that holds; a daemon restarted after a
//! crash closes the exports it left lingering. The real binary serves; volumes are real
//! (FUSE, loop, ext4).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{assert_no_key, assert_no_key_in_tree, b64, Daemon};
use common::{need, random_bytes, tmpdir, write_secret};
use serde_json::{json, Value};

const DOC: &str = include_str!("../../../docs/openapi.json");

/// The document, and the operations it declares.
struct Contract {
    doc: Value,
    seen: std::sync::Mutex<BTreeSet<(String, String)>>,
}

impl Contract {
    fn new() -> Self {
        Contract {
            doc: serde_json::from_str(DOC).expect("docs/openapi.json is JSON"),
            seen: Default::default(),
        }
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (m, _) in item.as_object().unwrap() {
                if m != "parameters" {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// The documented template a concrete path is an instance of.
    #[track_caller]
    fn template(&self, path: &str) -> String {
        self.find_template(path)
            .unwrap_or_else(|| panic!("{path} is not a documented path"))
    }

    fn find_template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for t in self.doc["paths"].as_object().unwrap().keys() {
            let ts: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            if ts.len() == segs.len()
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
            {
                return Some(t.clone());
            }
        }
        None
    }

    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut s = schema.clone();
        s["components"] = self.doc["components"].clone();
        jsonschema::draft202012::new(&s).expect("the document's schemas compile")
    }

    #[track_caller]
    fn check(&self, schema: &Value, v: &Value, what: &str) {
        let val = self.validator(schema);
        let errors: Vec<String> = val
            .iter_errors(v)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match its schema: {errors:?}\n{v:#}"
        );
    }

    /// Sends a request the test means as valid (its body checked against the request
    /// schema), checks the response against the document, returns it.
    #[track_caller]
    fn call(&self, d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let t = self.template(path);
        let op = &self.doc["paths"][&t][method.to_lowercase()];
        assert!(op.is_object(), "{method} {t} is not documented");
        if let Some(b) = &body {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{method} {t} documents no request body");
            self.check(schema, b, &format!("the request body of {method} {t}"));
        }
        self.response(d, method, path, body.map(|b| b.to_string().into_bytes()))
    }

    /// Sends raw bytes (valid or not) and checks the response against the document.
    #[track_caller]
    fn response(&self, d: &Daemon, method: &str, path: &str, raw: Option<Vec<u8>>) -> (u16, Value) {
        let (status, bytes) = d
            .client()
            .request(method, path, raw.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: reply is not JSON ({e}): {bytes:?}"));
        // An undocumented path or method is answered with the API's error schema.
        let t = self.find_template(path);
        let op = t
            .as_ref()
            .map(|t| self.doc["paths"][t][method.to_lowercase()].clone())
            .filter(Value::is_object);
        match op {
            Some(op) => {
                let resp = &op["responses"][status.to_string()];
                assert!(
                    resp.is_object(),
                    "{method} {path} answered {status}, which its operation does not document: {v}"
                );
                let schema = &resp["content"]["application/json"]["schema"];
                self.check(
                    schema,
                    &v,
                    &format!("the {status} reply of {method} {path}"),
                );
                self.seen
                    .lock()
                    .unwrap()
                    .insert((method.to_string(), t.unwrap()));
            }
            None => {
                assert!(
                    status == 404 || status == 405,
                    "{method} {path}: {status} {v}"
                );
                self.check(
                    &json!({"$ref": "#/components/schemas/Error"}),
                    &v,
                    "an error reply",
                );
            }
        }
        (status, v)
    }
}

#[test]
fn daemon_api_matches_its_openapi_document_and_refuses_hostile_requests() {
    need("mkfs.ext4");
    need("losetup");
    let dir = tmpdir();
    let c = Contract::new();
    // Every route the server has is documented, and nothing else is.
    let routes: BTreeSet<(String, String)> = sealvol_daemon::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(routes, c.operations(), "server routes vs docs/openapi.json");

    let d = Daemon::start(dir.path(), None, &["--linger-ms", "0"]);
    let key = random_bytes(32);
    let other = random_bytes(32);
    let third = random_bytes(32);

    let (s, doc) = c.call(&d, "GET", "/v1/openapi.json", None);
    assert_eq!((s, &doc["openapi"]), (200, &json!("3.1.0")));
    let (s, st) = c.call(&d, "GET", "/v1/status", None);
    assert_eq!(s, 200);
    assert_eq!(st["daemon"]["pid"], json!(d.pid()));

    // Keys.
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/keys",
        Some(json!({"id": "k1", "key": b64(&key)})),
    );
    assert_eq!((s, &r["replaced"]), (200, &json!(false)));
    let (s, r) = c.call(&d, "GET", "/v1/keys", None);
    assert_eq!((s, &r["keys"]), (200, &json!(["k1"])));

    // A volume through its whole life.
    let create = json!({"id": "v1", "size": "64M", "key": {"key_id": "k1"}});
    let (s, r) = c.call(&d, "POST", "/v1/volumes", Some(create.clone()));
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["volume"]["key"], json!({"key_id": "k1"}));
    let (s, r) = c.call(&d, "POST", "/v1/volumes", Some(create));
    assert_eq!((s, &r["already_existed"]), (200, &json!(true)));
    let (s, r) = c.call(&d, "GET", "/v1/volumes", None);
    assert_eq!((s, r["volumes"].as_array().unwrap().len()), (200, 1));
    let (s, r) = c.call(&d, "POST", "/v1/volumes/v1/open", Some(json!({})));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["users"], json!([{"id": "api", "mounts": 1}]));
    let mnt = r["mount_path"].as_str().unwrap().to_string();
    std::fs::write(format!("{mnt}/f"), vec![7u8; 1 << 20]).unwrap();
    std::process::Command::new("sync").status().unwrap();
    // The throughput counters come from the export, about once a second.
    let mut written = 0;
    for _ in 0..50 {
        let (_, v) = c.call(&d, "GET", "/v1/volumes/v1", None);
        written = v["export"]["io"]["write_bytes"].as_u64().unwrap_or(0);
        if written >= 1 << 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(written >= 1 << 20, "write_bytes {written}");
    // In use: not destroyed, nothing changed.
    let (s, r) = c.call(&d, "DELETE", "/v1/volumes/v1", None);
    assert_eq!((s, &r["kind"]), (409, &json!("in_use")));
    assert!(std::path::Path::new(&format!("{mnt}/f")).exists());
    // Rekey: to a key handed over, then to a registered one.
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/v1/rekey",
        Some(json!({"new_key": {"base64": b64(&other)}})),
    );
    assert_eq!((s, &r["key"]), (200, &Value::Null), "{r}");
    c.call(
        &d,
        "POST",
        "/v1/keys",
        Some(json!({"id": "k3", "key": b64(&third)})),
    );
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/v1/rekey",
        Some(json!({"key": {"base64": b64(&other)}, "new_key": {"key_id": "k3"}})),
    );
    assert_eq!((s, &r["key"]), (200, &json!({"key_id": "k3"})), "{r}");
    // The old key no longer opens it: refused as a wrong key, typed.
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/v1/rekey",
        Some(json!({"key": {"key_id": "k1"}, "new_key": {"key_id": "k1"}})),
    );
    assert_eq!((s, &r["kind"]), (403, &json!("wrong_key")), "{r}");
    let (s, r) = c.call(&d, "POST", "/v1/volumes/v1/close", Some(json!({})));
    assert_eq!((s, &r["mounted"]), (200, &json!(false)), "{r}");
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/v1/open",
        Some(json!({"key": {"base64": b64(&key)}})),
    );
    assert_eq!((s, &r["kind"]), (403, &json!("wrong_key")), "{r}");
    let (s, r) = c.call(&d, "POST", "/v1/volumes/v1/open", None);
    assert_eq!(s, 200, "{r}");
    c.call(&d, "POST", "/v1/volumes/v1/close", None);
    // A key source that is not there.
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"id": "v9", "size": 67108864, "key": {"key_id": "nobody"}})),
    );
    assert_eq!((s, &r["kind"]), (412, &json!("key_unavailable")), "{r}");
    let loose = write_secret(dir.path(), "loose", &key);
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"id": "v9", "size": "64M", "key": {"key_file": loose}})),
    );
    assert_eq!((s, &r["kind"]), (412, &json!("key_unavailable")), "{r}");
    assert!(r["error"].as_str().unwrap().contains("chmod 0600"), "{r}");
    let (s, r) = c.call(&d, "GET", "/v1/volumes/v9", None);
    assert_eq!((s, &r["kind"]), (404, &json!("not_found")));
    let (s, _) = c.call(&d, "POST", "/v1/sweep", Some(json!({})));
    assert_eq!(s, 200);

    // Hostile requests: refused with the API's errors, nothing changed.
    let before = std::fs::read_dir(d.state.join("records")).unwrap().count();
    let big = format!("{{\"id\":\"k2\",\"key\":\"{}\"}}", "A".repeat(200 << 10));
    let (s, r) = c.response(&d, "POST", "/v1/keys", Some(big.into_bytes()));
    assert_eq!((s, &r["kind"]), (413, &json!("too_large")));
    for bad in [
        &b"{"[..],
        b"[]",
        b"{\"id\":\"v2\"}",
        b"\xff\xfe",
        b"{\"id\":\"v2\",\"size\":1,\"key\":{},\"x\":1}",
    ] {
        let (s, r) = c.response(&d, "POST", "/v1/volumes", Some(bad.to_vec()));
        assert_eq!((s, &r["kind"]), (400, &json!("invalid")), "{bad:?}: {r}");
    }
    let (s, r) = c.response(
        &d,
        "POST",
        "/v1/volumes",
        Some(
            json!({"id": "../../etc", "size": "64M", "key": {"key_id": "k1"}})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!((s, &r["kind"]), (400, &json!("invalid")), "{r}");
    let (s, r) = c.response(
        &d,
        "POST",
        "/v1/volumes",
        Some(
            json!({"id": "v2", "size": "64M", "key": {"key_id": "k1", "base64": "AAAA"}})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!(s, 400, "{r}");
    for p in [
        "/v1/volumes/..%2F..%2Fetc",
        "/v1/volumes/%2e%2e",
        "/v1/volumes/A",
        "/v1/volumes/a%00b",
        "/v1/volumes/.hidden/open",
    ] {
        let m = if p.ends_with("open") { "POST" } else { "GET" };
        let (s, r) = c.response(&d, m, p, None);
        assert_eq!((s, &r["kind"]), (400, &json!("invalid")), "{p}: {r}");
    }
    let (s, r) = c.response(&d, "GET", "/v1/volumes/../../etc/passwd", None);
    assert_eq!(s, 404, "{r}");
    let (s, _) = c.response(&d, "GET", "/v2/volumes", None);
    assert_eq!(s, 404);
    let (s, r) = c.response(&d, "PUT", "/v1/volumes", None);
    assert_eq!((s, &r["kind"]), (405, &json!("method")));
    assert_eq!(
        std::fs::read_dir(d.state.join("records")).unwrap().count(),
        before
    );

    // Concurrent destroys and opens of one volume: each call ends cleanly (done, in use,
    // or not found) and the volume ends consistent, with nothing stale.
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"id": "v2", "size": "64M", "key": {"key_id": "k1"}})),
    );
    assert_eq!(s, 201, "{r}");
    let c = Arc::new(c);
    let d = Arc::new(d);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (c, d) = (Arc::clone(&c), Arc::clone(&d));
            std::thread::spawn(move || {
                let (s, r) = if i % 2 == 0 {
                    c.call(&d, "POST", "/v1/volumes/v2/open", None)
                } else {
                    c.call(&d, "DELETE", "/v1/volumes/v2", None)
                };
                assert!([200, 404, 409].contains(&s), "{s} {r}");
                s
            })
        })
        .collect();
    let outcomes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (s, r) = c.call(&d, "GET", "/v1/volumes/v2", None);
    match s {
        200 => {
            assert!(r["stale"].as_array().unwrap().is_empty(), "{r}");
            assert!(
                r["export_alive"].as_bool().unwrap() && r["mounted"].as_bool().unwrap(),
                "{r}"
            );
            c.call(&d, "POST", "/v1/volumes/v2/close", None);
        }
        404 => assert!(outcomes.contains(&200)),
        _ => panic!("{s} {r}"),
    }
    let (_, r) = c.call(&d, "POST", "/v1/sweep", None);
    assert_eq!(
        r["actions"],
        json!([]),
        "a sweep after the race found work: {r}"
    );
    for id in ["v1", "v2"] {
        let (s, r) = c.call(&d, "DELETE", &format!("/v1/volumes/{id}"), None);
        assert_eq!(s, 200, "{r}");
    }
    let (s, r) = c.call(&d, "DELETE", "/v1/keys/k1", None);
    assert_eq!((s, &r["removed"]), (200, &json!(true)));

    // Every documented operation was called and answered by the contract.
    let seen = c.seen.lock().unwrap().clone();
    let missing: Vec<_> = c.operations().difference(&seen).cloned().collect();
    assert!(
        missing.is_empty(),
        "operations never exercised: {missing:?}"
    );

    // No key anywhere: the log, the state and runtime directories.
    let log = d.log_text();
    for k in [&key, &other, &third] {
        assert_no_key(log.as_bytes(), k, "the daemon's log");
        assert_no_key_in_tree(&d.state, k);
        assert_no_key_in_tree(&d.run, k);
    }
    assert!(
        log.contains("\"/v1/volumes\"") || log.contains("path=/v1/volumes"),
        "requests are logged"
    );
}

/// Overlay volumes through the API: two volumes over one shared ext4 base (no size: the
/// base's), each mounted with the base's files and its own writes under its own layer, the
/// base never written; hostile bases refused and nothing made.
#[test]
fn daemon_api_makes_overlay_volumes_over_a_shared_base() {
    need("mkfs.ext4");
    need("losetup");
    let dir = tmpdir();
    let c = Contract::new();
    // The shared base: an ext4 image holding `shared`.
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("shared"), b"from the publisher\n").unwrap();
    let base = dir.path().join("base.img");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&base)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4 -d");
    let base_bytes = std::fs::read(&base).unwrap();
    let base_path = base.to_str().unwrap();

    let d = Daemon::start(dir.path(), None, &["--linger-ms", "0"]);
    let key = random_bytes(32);
    c.call(
        &d,
        "POST",
        "/v1/keys",
        Some(json!({"id": "k1", "key": b64(&key)})),
    );

    // Hostile or incomplete bases: refused, nothing made.
    for (body, why) in [
        (
            json!({"id": "o9", "base": {"image": "base.img"}, "key": {"key_id": "k1"}}),
            "absolute",
        ),
        (
            json!({"id": "o9", "base": {"image": base_path, "root": "ab"}, "key": {"key_id": "k1"}}),
            "verity base needs all",
        ),
        (
            json!({"id": "o9", "key": {"key_id": "k1"}}),
            "size is missing",
        ),
    ] {
        let (s, r) = c.response(
            &d,
            "POST",
            "/v1/volumes",
            Some(body.to_string().into_bytes()),
        );
        assert_eq!((s, &r["kind"]), (400, &json!("invalid")), "{body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(why), "{body}: {r}");
    }
    assert!(!d.state.join("volumes/o9").exists());

    for id in ["oa", "ob"] {
        let (s, r) = c.call(
            &d,
            "POST",
            "/v1/volumes",
            Some(json!({"id": id, "base": {"image": base_path}, "key": {"key_id": "k1"}})),
        );
        assert_eq!(s, 201, "{r}");
        assert_eq!(r["volume"]["params"]["base"]["kind"], json!("image"), "{r}");
        assert_eq!(
            r["volume"]["params"]["size"],
            json!(32 << 20),
            "the base's size: {r}"
        );
    }
    // Each sees the base's file and only its own writes.
    let (s, r) = c.call(&d, "POST", "/v1/volumes/oa/open", None);
    assert_eq!(s, 200, "{r}");
    let mnt_a = r["mount_path"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(format!("{mnt_a}/shared")).unwrap(),
        b"from the publisher\n"
    );
    std::fs::write(format!("{mnt_a}/own"), b"written in a").unwrap();
    let (s, r) = c.call(&d, "POST", "/v1/volumes/oa/close", None);
    assert_eq!((s, &r["mounted"]), (200, &json!(false)), "{r}");
    let (s, r) = c.call(&d, "POST", "/v1/volumes/ob/open", None);
    assert_eq!(s, 200, "{r}");
    let mnt_b = r["mount_path"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(format!("{mnt_b}/shared")).unwrap(),
        b"from the publisher\n"
    );
    assert!(
        !Path::new(&format!("{mnt_b}/own")).exists(),
        "a's write is not b's"
    );
    c.call(&d, "POST", "/v1/volumes/ob/close", None);
    // Rekey an overlay volume: its embedded LUKS2 keyslots change, the old key no longer
    // opens it, the new one does, and its data is still there.
    let other = random_bytes(32);
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/oa/rekey",
        Some(json!({"new_key": {"base64": b64(&other)}})),
    );
    assert_eq!(s, 200, "{r}");
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/oa/open",
        Some(json!({"key": {"key_id": "k1"}})),
    );
    assert_eq!((s, &r["kind"]), (403, &json!("wrong_key")), "{r}");
    let (s, r) = c.call(
        &d,
        "POST",
        "/v1/volumes/oa/open",
        Some(json!({"key": {"base64": b64(&other)}})),
    );
    assert_eq!(s, 200, "{r}");
    let mnt_a = r["mount_path"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(format!("{mnt_a}/own")).unwrap(),
        b"written in a"
    );
    c.call(&d, "POST", "/v1/volumes/oa/close", None);
    assert!(
        std::fs::read(&base).unwrap() == base_bytes,
        "the base is never written"
    );
    for id in ["oa", "ob"] {
        let (s, r) = c.call(&d, "DELETE", &format!("/v1/volumes/{id}"), None);
        assert_eq!(s, 200, "{r}");
    }
    assert_no_key(d.log_text().as_bytes(), &key, "the daemon's log");
    assert_no_key(d.log_text().as_bytes(), &other, "the daemon's log");
    assert_no_key_in_tree(&d.state, &key);
}

#[test]
fn daemon_api_over_tcp_needs_the_token_and_logs_json() {
    let dir = tmpdir();
    let token = "tok-".to_string() + &hex::encode(random_bytes(16));
    let tf = write_secret(dir.path(), "token", token.as_bytes());
    // Loopback only; a token file others can read is refused.
    let out = std::process::Command::new(common::SEALVOL)
        .args([
            "daemon",
            "--no-plugin",
            "--api-listen",
            "0.0.0.0:0",
            "--api-token-file",
        ])
        .arg(&tf)
        .args(["--state-dir"])
        .arg(dir.path().join("s"))
        .args(["--api-socket"])
        .arg(dir.path().join("a.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{out:?}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let tfs = tf.to_str().unwrap().to_string();
    let d = Daemon::start(
        dir.path(),
        None,
        &[
            "--api-listen",
            &addr,
            "--api-token-file",
            &tfs,
            "--log-json",
        ],
    );
    let curl = need("curl");
    let get = |auth: Option<&str>| {
        let mut c = std::process::Command::new(&curl);
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(a) = auth {
            c.args(["-H", a]);
        }
        let o = c.arg(format!("http://{addr}/v1/status")).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(get(None), "401");
    assert_eq!(get(Some("Authorization: Bearer wrong-token-000000")), "401");
    assert_eq!(get(Some(&format!("Authorization: Bearer {token}"))), "200");
    let (s, _) = d.api("GET", "/v1/status", None);
    assert_eq!(s, 200);
    // One JSON object per line, none holding the token.
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    assert!(!log.contains(&token));
}

/// A raw connection to the API socket that sends `bytes`, then nothing more.
fn stalled(d: &Daemon, bytes: &[u8]) -> (std::os::unix::net::UnixStream, Instant) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(&d.api).unwrap();
    s.write_all(bytes).unwrap();
    (s, Instant::now())
}

/// Reads until the daemon closes `s`; what it sent and when it closed. Panics after
/// `limit`.
fn until_closed(s: &mut std::os::unix::net::UnixStream, limit: Duration) -> (Vec<u8>, Instant) {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Instant::now())
            }
            Err(e) => panic!("the daemon kept a slow client beyond {limit:?}: {e}"),
        }
    }
}

#[test]
fn daemon_drops_slow_clients_at_the_deadline_and_the_connection_cap_holds() {
    let dir = tmpdir();
    let deadline = Duration::from_millis(1500);
    let d = Daemon::start(
        dir.path(),
        None,
        &["--request-timeout-ms", "1500", "--max-connections", "4"],
    );
    let quick = || {
        let t = Instant::now();
        let (s, v) = d
            .client()
            .with_timeout(Duration::from_secs(20))
            .json("GET", "/v1/status", None)
            .unwrap_or_else(|e| panic!("{e}: {}", d.log_text()));
        assert_eq!(s, 200, "{v}");
        t.elapsed()
    };
    quick();

    // Three slow clients at once, under the cap of 4: one sends nothing, one stops inside
    // its headers, one stops inside its body.
    let mut slow = [
        stalled(&d, b""),
        stalled(&d, b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Ty"),
        stalled(
            &d,
            b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":\"k\",",
        ),
    ];
    let t0 = Instant::now();
    // Others are served meanwhile, at once.
    for _ in 0..5 {
        let took = quick();
        assert!(took < Duration::from_millis(500), "a request took {took:?}");
    }
    assert!(
        t0.elapsed() < deadline,
        "the quick requests did not all run while the slow clients were held"
    );
    // Each slow client is dropped at the deadline; the one inside its body is told so.
    for (i, (s, opened)) in slow.iter_mut().enumerate() {
        let (got, closed) = until_closed(s, Duration::from_secs(15));
        let held = closed - *opened;
        assert!(
            held >= deadline - Duration::from_millis(100) && held < deadline * 4,
            "slow client {i} was held {held:?} (deadline {deadline:?})"
        );
        let text = String::from_utf8_lossy(&got);
        if i == 2 {
            assert!(
                text.starts_with("HTTP/1.1 408") && text.contains("\"kind\":\"timeout\""),
                "{text}"
            );
        } else {
            assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }

    // The cap holds: with 4 silent connections held, a fifth waits until the deadline
    // drops them, and is served then.
    let t1 = Instant::now();
    let _held: Vec<_> = (0..4).map(|_| stalled(&d, b"")).collect();
    std::thread::sleep(Duration::from_millis(200));
    quick();
    let waited = t1.elapsed();
    assert!(
        waited >= deadline - Duration::from_millis(100),
        "a fifth connection was served after {waited:?} while 4 were held (cap 4)"
    );
    assert!(
        waited < deadline * 4,
        "held connections were not dropped at the deadline: {waited:?}"
    );
    // And nothing is left behind: the next requests go through at once.
    for _ in 0..5 {
        assert!(quick() < Duration::from_millis(500));
    }
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn daemon_restarted_after_a_crash_closes_the_exports_left_lingering() {
    need("mkfs.ext4");
    need("losetup");
    let dir = tmpdir();
    let plugin = format!("sealvol-it-linger-{}", std::process::id());
    // A long linger: a volume unmounted by its last container stays open for a minute.
    let mut d = Daemon::start(dir.path(), Some(&plugin), &["--linger-ms", "60000"]);
    let key = random_bytes(32);
    d.register_key("k", &key);
    for id in ["idle", "used"] {
        let (s, r) = d.plugin_call(
            "/VolumeDriver.Create",
            json!({"Name": id, "Opts": {"size": "64M", "key-id": "k"}}),
        );
        assert_eq!(s, 200, "{r}");
    }
    let (s, r) = d.plugin_call("/VolumeDriver.Mount", json!({"Name": "idle", "ID": "c1"}));
    assert_eq!(s, 200, "{r}");
    let (s, r) = d.plugin_call("/VolumeDriver.Mount", json!({"Name": "used", "ID": "c2"}));
    assert_eq!(s, 200, "{r}");
    let used_mnt = r["Mountpoint"].as_str().unwrap().to_string();
    std::fs::write(format!("{used_mnt}/f"), b"still here").unwrap();
    let (s, r) = d.plugin_call("/VolumeDriver.Unmount", json!({"Name": "idle", "ID": "c1"}));
    assert_eq!(s, 200, "{r}");
    let status = |d: &Daemon, id: &str| {
        let (s, v) = d.api("GET", &format!("/v1/volumes/{id}"), None);
        assert_eq!(s, 200, "{v}");
        v
    };
    let idle = status(&d, "idle");
    assert_eq!(
        (&idle["mounts"], &idle["export_alive"]),
        (&json!(0), &json!(true)),
        "the volume lingers open after its last unmount: {idle}"
    );
    let idle_pid = idle["export_pid"].as_u64().unwrap();
    let used_pid = status(&d, "used")["export_pid"].as_u64().unwrap();

    // A crash while it lingers: nothing closes it then; the next start does.
    d.kill();
    assert!(Path::new(&format!("/proc/{idle_pid}")).exists());
    d.start_again();
    let log = d.log_text();
    assert!(
        log.contains("closed_idle=1") || log.contains("\"closed_idle\":1"),
        "{log}"
    );
    let idle = status(&d, "idle");
    assert_eq!(
        (
            &idle["export_alive"],
            &idle["mounted"],
            &idle["stale"],
            &idle["mounts"]
        ),
        (&json!(false), &json!(false), &json!([]), &json!(0)),
        "{idle}"
    );
    let t = Instant::now();
    while Path::new(&format!("/proc/{idle_pid}")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the export {idle_pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The volume its container still uses keeps its export and its data.
    let used = status(&d, "used");
    assert_eq!(
        (&used["export_pid"], &used["mounts"]),
        (&json!(used_pid), &json!(1)),
        "{used}"
    );
    assert_eq!(
        std::fs::read(format!("{used_mnt}/f")).unwrap(),
        b"still here"
    );

    // Clean up: the last user leaves, both go.
    let (s, r) = d.plugin_call("/VolumeDriver.Unmount", json!({"Name": "used", "ID": "c2"}));
    assert_eq!(s, 200, "{r}");
    for id in ["used", "idle"] {
        let (s, r) = d.api("POST", &format!("/v1/volumes/{id}/close"), None);
        assert_eq!(s, 200, "{r}");
        let (s, r) = d.api("DELETE", &format!("/v1/volumes/{id}"), None);
        assert_eq!(s, 200, "{r}");
    }
}

/// `program args` as the user `nobody`, with `caps` (e.g. `+dac_override`) kept across the
/// switch when given (setpriv, util-linux).
fn run_as_nobody(caps: Option<&str>, program: &Path, args: &[&str]) -> common::Run {
    let setpriv = need("setpriv");
    let mut argv: Vec<String> = vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
    ];
    if let Some(c) = caps {
        argv.push(format!("--inh-caps={c}"));
        argv.push(format!("--ambient-caps={c}"));
    }
    argv.push("--".into());
    argv.push(program.display().to_string());
    argv.extend(args.iter().map(|s| s.to_string()));
    common::run(setpriv, argv, None)
}

#[test]
fn daemon_sockets_are_0600_and_refuse_other_users_by_their_credentials() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let curl = need("curl");
    let dir = tmpdir();
    // Directories every user can enter: only the sockets' own modes and the daemon's check
    // of its peer stand in the way.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = dir.path().join("pub");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(&open, Some(open.join("plugin.sock")), &[], Some("000"));
    let plugin = d.plugin.clone().unwrap();
    for (sock, method, path) in [
        (&d.api, "GET", "/v1/status"),
        (&plugin, "POST", "/Plugin.Activate"),
    ] {
        let url = format!("http://localhost{path}");
        let meta = std::fs::symlink_metadata(sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{} under umask 000",
            sock.display()
        );
        let args = [
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "--unix-socket",
            sock.to_str().unwrap(),
            url.as_str(),
        ];
        let refusals = || {
            d.log_text()
                .matches("refused a connection from another user")
                .count()
        };
        let before = refusals();
        // Another user: the socket's mode denies the connection; the daemon never sees it.
        let r = run_as_nobody(None, &curl, &args);
        assert_eq!((r.code, r.out().as_str()), (7, "000"), "{r:?}");
        // Another user the mode does not stop (CAP_DAC_OVERRIDE): the daemon reads the
        // peer's credentials (SO_PEERCRED) and closes the connection unanswered (curl then
        // fails to connect or to receive, as the close races its connect).
        let r = run_as_nobody(Some("+dac_override"), &curl, &args);
        assert!(r.code != 0 && r.out() == "000", "{r:?}");
        let t = Instant::now();
        while refusals() != before + 1 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the daemon did not log the refusal of uid 65534: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Root is served.
        let r = common::run(&curl, args, None);
        assert_eq!((r.code, r.out().as_str()), (0, "200"), "{r:?}");
    }
    let log = d.log_text();
    assert_eq!(
        log.matches("refused a connection from another user")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("uid=65534"), "{log}");
}
