//! The Docker volume plugin protocol (legacy socket plugins, `VolumeDriver` 1.x), as Docker
//! 20.10 and Podman 4.3 speak it: `POST /Plugin.Activate`, `/VolumeDriver.Capabilities`,
//! `.Create`, `.Get`, `.List`, `.Mount`, `.Unmount`, `.Path`, `.Remove`, each with a JSON
//! body (the content type is not checked: Docker sends none).
//!
//! Errors carry a non-200 status *and* `{"Err": message}`: Podman takes an `Err` with 200
//! for success. Volume options (`docker volume create --opt`) name the key (`key-id`,
//! `key-file`), never hold it: engines store and show options. `Get`'s `Status` (what
//! `docker volume inspect` shows) says where the key comes from, never the key; its
//! `CreatedAt` is when the volume's create started.
//!
//! A request is parsed whole before anything is done: [`parse`] is pure (path and body
//! bytes in; a [`PluginRequest`] or a [`Refusal`] out, no I/O), fuzzed by the
//! `daemon_plugin` target in `fuzz/` and property-tested here.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use sealvol_host::export::BaseSpec;
use sealvol_host::keyring::KeyRef;
use sealvol_host::service::{params_from_options, CreateRequest, KeyChoice, UserId, VolumeState};
use sealvol_host::volume::{human_size, Params, VolumeId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{bounded, json_error, Reply, Request};
use crate::state::{blocking, classify, Daemon};

/// The content type of the plugin protocol.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The plugin's error body: `{"Err": message}` with a non-200 status.
pub fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(status, &json!({ "Err": message }))
}

/// Why a plugin request was refused before anything was done (parsing, no I/O): each is
/// an [`error`] reply with its status; messages are at most [`crate::http::MAX_MESSAGE`]
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a POST (405).
    Method,
    /// Not an endpoint of the protocol (404).
    NoRoute {
        /// The path, cut to 64 characters.
        path: String,
    },
    /// The body is not the JSON object the protocol sends (400).
    Body(String),
    /// The volume name (`Name`) is missing or breaks the id rules (400).
    Name(String),
    /// The mount id (`ID`) is missing or breaks its rules (400).
    MountId(String),
    /// The volume options (`Opts`) are refused (400): unknown, malformed, a key in an
    /// option, no key source.
    Options(String),
}

impl Refusal {
    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Method => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NoRoute { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Its message.
    pub fn message(&self) -> String {
        bounded(match self {
            Refusal::Method => "the volume plugin protocol uses POST".into(),
            Refusal::NoRoute { path } => {
                format!("{path:?} is not an endpoint of the volume plugin protocol")
            }
            Refusal::Body(m) | Refusal::Name(m) | Refusal::MountId(m) | Refusal::Options(m) => {
                m.clone()
            }
        })
    }

    /// The plugin's reply for it.
    pub fn reply(&self) -> Reply {
        error(self.status(), &self.message())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// What `docker volume create --opt ...` asked for: parameters and the key's source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeOptions {
    /// The volume's parameters.
    pub params: Params,
    /// Where its key comes from (an option names it; none holds it).
    pub key: KeyRef,
    /// Allow a sparse image larger than the free space.
    pub sparse_ok: bool,
}

/// A plugin request, parsed from its path and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginRequest {
    /// `/Plugin.Activate`.
    Activate,
    /// `/VolumeDriver.Capabilities`.
    Capabilities,
    /// `/VolumeDriver.List`.
    List,
    /// `/VolumeDriver.Create`.
    Create {
        /// The volume.
        id: VolumeId,
        /// Its options; `None` when the engine sent none (it creates a volume it forgot:
        /// an existing one is then simply there).
        options: Option<VolumeOptions>,
    },
    /// `/VolumeDriver.Remove`.
    Remove(VolumeId),
    /// `/VolumeDriver.Get`.
    Get(VolumeId),
    /// `/VolumeDriver.Path`.
    Path(VolumeId),
    /// `/VolumeDriver.Mount`.
    Mount {
        /// The volume.
        id: VolumeId,
        /// The mount id (a container).
        user: UserId,
    },
    /// `/VolumeDriver.Unmount`.
    Unmount {
        /// The volume.
        id: VolumeId,
        /// The mount id (a container).
        user: UserId,
    },
}

/// What a request names. Unknown fields are ignored (engines add some).
#[derive(Debug, Default, Deserialize)]
struct Body {
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "ID", default)]
    id: Option<String>,
}

fn body(raw: &[u8]) -> Result<Body, Refusal> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::default());
    }
    serde_json::from_slice::<Option<Body>>(raw)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            Refusal::Body(format!(
                "the request body is not the JSON object expected: {}",
                json_error(&e)
            ))
        })
}

fn name(b: &Body) -> Result<VolumeId, Refusal> {
    let n = b
        .name
        .as_deref()
        .ok_or_else(|| Refusal::Name("the request names no volume (Name)".into()))?;
    VolumeId::parse(n).map_err(|e| Refusal::Name(bounded(e.to_string())))
}

fn user(b: &Body) -> Result<UserId, Refusal> {
    let id =
        b.id.as_deref()
            .ok_or_else(|| Refusal::MountId("the request names no mount id (ID)".into()))?;
    UserId::parse(id).map_err(|e| Refusal::MountId(bounded(e.to_string())))
}

/// What is refused when a volume is created without a key source.
const NO_KEY_SOURCE: &str = "name the volume's key: --opt key-id=ID (a key registered through the daemon's API) or --opt key-file=/path (a file only root can read); volume options never hold the key itself";

fn options(opts: &BTreeMap<String, String>) -> Result<VolumeOptions, Refusal> {
    let (params, key, sparse_ok) =
        params_from_options(opts).map_err(|e| Refusal::Options(bounded(e.to_string())))?;
    let key = key.ok_or_else(|| Refusal::Options(NO_KEY_SOURCE.into()))?;
    Ok(VolumeOptions {
        params,
        key,
        sparse_ok,
    })
}

/// Parses one plugin request: the endpoint from `method` and `path`, then what its body
/// names. Pure: no I/O, no state. Endpoints that take nothing (Activate, Capabilities,
/// List) ignore their body.
///
/// # Errors
/// A [`Refusal`] saying what is wrong; nothing has been done.
pub fn parse(method: &Method, path: &str, raw: &[u8]) -> Result<PluginRequest, Refusal> {
    if method != Method::POST {
        return Err(Refusal::Method);
    }
    Ok(match path {
        "/Plugin.Activate" => PluginRequest::Activate,
        "/VolumeDriver.Capabilities" => PluginRequest::Capabilities,
        "/VolumeDriver.List" => PluginRequest::List,
        "/VolumeDriver.Create" => {
            let b = body(raw)?;
            let id = name(&b)?;
            let options = match b.opts.as_ref().filter(|o| !o.is_empty()) {
                Some(o) => Some(options(o)?),
                None => None,
            };
            PluginRequest::Create { id, options }
        }
        "/VolumeDriver.Remove" => PluginRequest::Remove(name(&body(raw)?)?),
        "/VolumeDriver.Get" => PluginRequest::Get(name(&body(raw)?)?),
        "/VolumeDriver.Path" => PluginRequest::Path(name(&body(raw)?)?),
        "/VolumeDriver.Mount" | "/VolumeDriver.Unmount" => {
            let b = body(raw)?;
            let (id, user) = (name(&b)?, user(&b)?);
            if path == "/VolumeDriver.Mount" {
                PluginRequest::Mount { id, user }
            } else {
                PluginRequest::Unmount { id, user }
            }
        }
        other => {
            return Err(Refusal::NoRoute {
                path: other.chars().take(64).collect(),
            })
        }
    })
}

impl PluginRequest {
    /// The request as an engine sends it: path and body (the inverse of [`parse`]; the
    /// method is always POST).
    pub fn to_http(&self) -> (&'static str, Vec<u8>) {
        let named = |id: &VolumeId| json!({ "Name": id });
        let (path, body) = match self {
            PluginRequest::Activate => ("/Plugin.Activate", None),
            PluginRequest::Capabilities => ("/VolumeDriver.Capabilities", None),
            PluginRequest::List => ("/VolumeDriver.List", Some(json!({}))),
            PluginRequest::Create { id, options } => {
                let mut opts = BTreeMap::new();
                if let Some(o) = options {
                    opts.insert("size", o.params.size.to_string());
                    opts.insert("fs", o.params.fs.clone());
                    opts.insert("type", o.params.luks_type.as_str().to_string());
                    opts.insert("detached-header", o.params.detached_header.to_string());
                    opts.insert("sparse-ok", o.sparse_ok.to_string());
                    match &o.params.base {
                        Some(BaseSpec::Image { path }) => {
                            opts.insert("base", path.display().to_string());
                        }
                        Some(BaseSpec::Verity { image, verity }) => {
                            opts.insert("base", image.display().to_string());
                            opts.insert("base-hash", verity.hash.display().to_string());
                            opts.insert("base-hash-offset", verity.hash_offset.to_string());
                            opts.insert("base-root", verity.root.clone());
                        }
                        // Not volume options (a LUKS base needs a key of its own).
                        Some(BaseSpec::None | BaseSpec::Luks { .. }) | None => {}
                    }
                    match &o.key {
                        KeyRef::Registered(n) => opts.insert("key-id", n.to_string()),
                        KeyRef::File(p) => opts.insert("key-file", p.display().to_string()),
                    };
                }
                (
                    "/VolumeDriver.Create",
                    Some(json!({ "Name": id, "Opts": opts })),
                )
            }
            PluginRequest::Remove(id) => ("/VolumeDriver.Remove", Some(named(id))),
            PluginRequest::Get(id) => ("/VolumeDriver.Get", Some(named(id))),
            PluginRequest::Path(id) => ("/VolumeDriver.Path", Some(named(id))),
            PluginRequest::Mount { id, user } => (
                "/VolumeDriver.Mount",
                Some(json!({ "Name": id, "ID": user })),
            ),
            PluginRequest::Unmount { id, user } => (
                "/VolumeDriver.Unmount",
                Some(json!({ "Name": id, "ID": user })),
            ),
        };
        (
            path,
            body.map_or_else(Vec::new, |b| b.to_string().into_bytes()),
        )
    }
}

fn fail(e: &sealvol_host::Error) -> Reply {
    let (status, _) = classify(e);
    error(status, &e.to_string())
}

fn ok(v: Value) -> Reply {
    Reply::json(StatusCode::OK, &v)
}

/// The mount point engines are told: the volume's, when a live export serves it.
fn mountpoint(v: &VolumeState) -> String {
    if v.volume.served() {
        v.volume.mount_path.display().to_string()
    } else {
        String::new()
    }
}

/// What `docker volume inspect` shows under `Status`: no key, only where it comes from.
fn status_map(v: &VolumeState) -> Value {
    json!({
        "phase": v.volume.phase.as_str(),
        "type": v.volume.params.luks_type.as_str(),
        "size": human_size(v.volume.params.size),
        "fs": v.volume.params.fs,
        "key": v.key.as_ref().map_or("handed over with each open".to_string(), |k| k.describe()),
        "key_available": v.key_available,
        "mounts": v.mounts,
        "export_pid": v.export.as_ref().map(|e| e.pid),
        "read_bytes": v.export.as_ref().map_or(0, |e| e.io.read_bytes),
        "write_bytes": v.export.as_ref().map_or(0, |e| e.io.write_bytes),
    })
}

/// RFC 3339 text of `secs` since the epoch (UTC), as Docker reads `CreatedAt`.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Answers one plugin request: [`parse`], then the service call it names.
pub async fn handle(d: Arc<Daemon>, req: Request) -> Reply {
    let parsed = match parse(&req.method, &req.path, &req.body) {
        Ok(r) => r,
        Err(refusal) => return refusal.reply(),
    };
    drop(req);
    match route(d, parsed).await {
        Ok(r) | Err(r) => r,
    }
}

async fn route(d: Arc<Daemon>, req: PluginRequest) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    Ok(match req {
        PluginRequest::Activate => ok(json!({ "Implements": ["VolumeDriver"] })),
        PluginRequest::Capabilities => ok(json!({ "Capabilities": { "Scope": "local" } })),
        PluginRequest::Create { id, options } => {
            let kdf = d.kdf.clone();
            blocking(move || {
                let Some(o) = options else {
                    // An engine creates a volume it does not know yet with no options (a
                    // `docker run -v NAME:/dir` after the engine forgot it): an existing
                    // volume is then simply there; a new one needs its options.
                    if svc.manager().status(&id)?.is_some() {
                        return Ok(());
                    }
                    return params_from_options(&BTreeMap::new()).map(|_| ());
                };
                svc.create(CreateRequest {
                    id,
                    params: o.params,
                    key: KeyChoice::Ref(o.key),
                    kdf,
                    sparse_ok: o.sparse_ok,
                })
                .map(|_| ())
            })
            .await
            .map(|()| ok(json!({ "Err": "" })))
            .map_err(|e| fail(&e))?
        }
        PluginRequest::Remove(id) => blocking(move || svc.remove(&id))
            .await
            .map(|_| ok(json!({ "Err": "" })))
            .map_err(|e| fail(&e))?,
        PluginRequest::Mount { id, user } => blocking(move || svc.mount(&id, &user))
            .await
            .map(|m| ok(json!({ "Mountpoint": m.mount_point, "Err": "" })))
            .map_err(|e| fail(&e))?,
        PluginRequest::Unmount { id, user } => {
            let idc = id.clone();
            let u = blocking(move || svc.release(&idc, &user))
                .await
                .map_err(|e| fail(&e))?;
            if u.mounts == 0 {
                d.close_later(id).await.map_err(|e| fail(&e))?;
            }
            ok(json!({ "Err": "" }))
        }
        PluginRequest::Get(id) => {
            let (v, created) = blocking(move || {
                let v = svc.status(&id)?;
                let created = svc.manager().load(&id)?.map(|r| r.created);
                Ok((v, created))
            })
            .await
            .map_err(|e| fail(&e))?;
            let mut volume = json!({
                "Name": v.volume.id,
                "Mountpoint": mountpoint(&v),
                "Status": status_map(&v),
            });
            // `docker volume inspect` shows it; Docker parses it as RFC 3339.
            if let Some(c) = created {
                volume["CreatedAt"] = json!(rfc3339(c));
            }
            ok(json!({ "Volume": volume, "Err": "" }))
        }
        PluginRequest::List => {
            let vs = blocking(move || svc.list()).await.map_err(|e| fail(&e))?;
            let list: Vec<Value> = vs
                .iter()
                .map(|v| json!({ "Name": v.volume.id, "Mountpoint": mountpoint(v) }))
                .collect();
            ok(json!({ "Volumes": list, "Err": "" }))
        }
        PluginRequest::Path(id) => {
            let v = blocking(move || svc.status(&id))
                .await
                .map_err(|e| fail(&e))?;
            ok(json!({ "Mountpoint": mountpoint(&v), "Err": "" }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::{json_body, params};
    use proptest::prelude::*;
    use sealvol_host::keyring::KeyName;
    use sealvol_host::volume::LuksType;

    fn post(path: &str, body: &str) -> Result<PluginRequest, Refusal> {
        parse(&Method::POST, path, body.as_bytes())
    }

    #[test]
    fn endpoints_bodies_and_refusals() {
        assert_eq!(post("/Plugin.Activate", ""), Ok(PluginRequest::Activate));
        // Endpoints that take nothing ignore what they are sent.
        assert_eq!(post("/VolumeDriver.List", "{"), Ok(PluginRequest::List));
        let id = VolumeId::parse("web-1").unwrap();
        // Podman omits Opts when empty; Docker sends null or {}.
        for b in [
            r#"{"Name":"web-1"}"#,
            r#"{"Name":"web-1","Opts":null}"#,
            r#"{"Name":"web-1","Opts":{}}"#,
        ] {
            assert_eq!(
                post("/VolumeDriver.Create", b),
                Ok(PluginRequest::Create {
                    id: id.clone(),
                    options: None
                })
            );
        }
        assert_eq!(
            post(
                "/VolumeDriver.Create",
                r#"{"Name":"web-1","Opts":{"size":"1G","key-id":"web"},"Extra":1}"#
            ),
            Ok(PluginRequest::Create {
                id: id.clone(),
                options: Some(VolumeOptions {
                    params: Params {
                        size: 1 << 30,
                        fs: "ext4".into(),
                        detached_header: false,
                        luks_type: LuksType::Luks2,
                        base: None,
                    },
                    key: KeyRef::Registered(KeyName::parse("web").unwrap()),
                    sparse_ok: false,
                })
            })
        );
        assert_eq!(
            post("/VolumeDriver.Unmount", r#"{"Name":"web-1","ID":"abc"}"#),
            Ok(PluginRequest::Unmount {
                id,
                user: UserId::parse("abc").unwrap()
            })
        );
        assert_eq!(
            parse(&Method::GET, "/Plugin.Activate", b""),
            Err(Refusal::Method)
        );
        for (path, body, want) in [
            ("/VolumeDriver.Nope", "{}", StatusCode::NOT_FOUND),
            ("/VolumeDriver.Get", "{}", StatusCode::BAD_REQUEST),
            (
                "/VolumeDriver.Get",
                r#"{"Name":"../x"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/VolumeDriver.Mount",
                r#"{"Name":"a"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/VolumeDriver.Mount",
                r#"{"Name":"a","ID":"a/b"}"#,
                StatusCode::BAD_REQUEST,
            ),
            ("/VolumeDriver.Remove", "[1]", StatusCode::BAD_REQUEST),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"a","Opts":{"size":"1G"}}"#,
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let e = post(path, body).unwrap_err();
            assert_eq!(e.status(), want, "{path} {body}: {e:?}");
        }
        // A key in an option is refused without quoting it.
        let e = post(
            "/VolumeDriver.Create",
            r#"{"Name":"a","Opts":{"size":"1G","key":"c2VjcmV0LWtleQ=="}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, Refusal::Options(_)) && !e.message().contains("c2VjcmV0"));
        let e = post("/VolumeDriver.Create", r#"{"Name":"c2VjcmV0LWtleQ==x"}"#).unwrap_err();
        assert!(matches!(e, Refusal::Name(_)));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    fn id() -> impl Strategy<Value = VolumeId> {
        "[a-z0-9][a-z0-9_-]{0,20}".prop_map(|s| VolumeId::parse(&s).unwrap())
    }

    fn user() -> impl Strategy<Value = UserId> {
        "[A-Za-z0-9_.:-]{1,64}".prop_map(|s| UserId::parse(&s).unwrap())
    }

    fn options() -> impl Strategy<Value = VolumeOptions> {
        (
            params(1..u64::MAX),
            any::<bool>(),
            prop_oneof![
                "[a-z0-9][a-z0-9_-]{0,20}"
                    .prop_map(|n| KeyRef::Registered(KeyName::parse(&n).unwrap())),
                "/[a-zA-Z0-9 ._/-]{0,40}".prop_map(|p| KeyRef::File(p.into())),
            ],
        )
            .prop_map(|(params, sparse_ok, key)| VolumeOptions {
                params,
                key,
                sparse_ok,
            })
    }

    fn request() -> impl Strategy<Value = PluginRequest> {
        prop_oneof![
            Just(PluginRequest::Activate),
            Just(PluginRequest::Capabilities),
            Just(PluginRequest::List),
            (id(), prop::option::of(options()))
                .prop_map(|(id, options)| PluginRequest::Create { id, options }),
            id().prop_map(PluginRequest::Remove),
            id().prop_map(PluginRequest::Get),
            id().prop_map(PluginRequest::Path),
            (id(), user()).prop_map(|(id, user)| PluginRequest::Mount { id, user }),
            (id(), user()).prop_map(|(id, user)| PluginRequest::Unmount { id, user }),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            "/(Plugin\\.Activate|VolumeDriver\\.(Capabilities|Create|Get|List|Mount|Unmount|Path|Remove))",
            "[ -~]{0,80}",
        ]
    }

    /// The fields engines' bodies and volume options carry.
    const FIELDS: &[&str] = &[
        "Name",
        "ID",
        "Opts",
        "size",
        "key-id",
        "key-file",
        "type",
        "fs",
        "base",
        "base-hash",
        "base-root",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any request an engine may send goes to bytes and back to the same request.
        #[test]
        fn valid_requests_round_trip(req in request()) {
            let (path, body) = req.to_http();
            prop_assert_eq!(parse(&Method::POST, path, &body), Ok(req));
        }

        /// Arbitrary paths and bodies: a request or a refusal, never a panic; a refusal is a
        /// 4xx with a bounded message; what parses goes back to itself.
        #[test]
        fn arbitrary_requests_never_panic(
            post in any::<bool>(),
            path in path(),
            body in prop_oneof![prop::collection::vec(any::<u8>(), 0..200), json_body(FIELDS)],
        ) {
            let m = if post { Method::POST } else { Method::GET };
            match parse(&m, &path, &body) {
                Ok(req) => {
                    let (p2, b2) = req.to_http();
                    prop_assert_eq!(parse(&Method::POST, p2, &b2), Ok(req));
                }
                Err(e) => {
                    prop_assert!(e.status().is_client_error());
                    prop_assert!(!e.message().is_empty());
                    prop_assert!(e.message().len() <= crate::http::MAX_MESSAGE);
                }
            }
        }
    }
}
