//! The JSON API for control planes (`docs/openapi.json` is its contract; the tests check
//! the server against it). Keys travel only in request bodies (`{"base64": ...}`), read
//! into zeroized buffers, decoded straight into `SecretBytes`; never in a path, a reply or
//! a log line.
//!
//! Every error is `{"error": message, "kind": kind}` with a non-2xx status: `invalid` 400,
//! `unauthorized` 401, `wrong_key` 403, `not_found`/`no_route` 404, `method` 405,
//! `timeout` 408, `in_use` 409, `key_unavailable` 412, `too_large` 413, `failed` 500.
//!
//! A request is parsed whole before anything is done: [`parse`] is pure (method, path and
//! body bytes in; an [`ApiRequest`] or a [`Refusal`] out, no I/O), fuzzed by the
//! `daemon_api` target in `fuzz/` and property-tested here; [`ApiRequest::to_http`] is its
//! inverse.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use hyper::{Method, StatusCode};
use sealvol_crypto::SecretBytes;
use sealvol_host::export::BaseSpec;
use sealvol_host::keyring::{KeyName, KeyRef};
use sealvol_host::service::{CreateRequest, KeyChoice};
use sealvol_host::volume::{parse_size, LuksType, Params, VolumeId};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::http::{bounded, json_error, Reply, Request};
use crate::state::{blocking, classify, Daemon};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Every route: method and path template (what `docs/openapi.json` must document).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("GET", "/v1/volumes"),
    ("POST", "/v1/volumes"),
    ("GET", "/v1/volumes/{id}"),
    ("DELETE", "/v1/volumes/{id}"),
    ("POST", "/v1/volumes/{id}/open"),
    ("POST", "/v1/volumes/{id}/close"),
    ("POST", "/v1/volumes/{id}/rekey"),
    ("POST", "/v1/sweep"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("DELETE", "/v1/keys/{id}"),
    ("GET", "/v1/openapi.json"),
];

/// The API's error body.
pub fn error(status: StatusCode, message: &str) -> Reply {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method",
        StatusCode::NOT_FOUND => "no_route",
        s if s.is_server_error() => "failed",
        _ => "invalid",
    };
    Reply::json(status, &json!({ "error": message, "kind": kind }))
}

fn fail(e: &sealvol_host::Error) -> Reply {
    let (status, kind) = classify(e);
    Reply::json(status, &json!({ "error": e.to_string(), "kind": kind }))
}

// ---------------------------------------------------------------------------------------
// Parsing: bytes in, a typed request or a typed refusal out; no I/O.

/// Why a request was refused before anything was done (parsing, no I/O). Each is an
/// [`error`] reply with its status and `kind`; messages are at most
/// [`crate::http::MAX_MESSAGE`] bytes and never quote a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No route has this path (404, `no_route`).
    NoRoute {
        /// The path, cut to 80 characters.
        path: String,
    },
    /// The route takes other methods (405, `method`).
    Method {
        /// The method sent.
        method: String,
        /// The path.
        path: String,
    },
    /// The body is missing, not JSON, or not the JSON the route takes (400, `invalid`).
    Body(String),
    /// A volume id or key id breaks the id rules (400, `invalid`): nothing is touched.
    Id(String),
    /// A key is malformed: not exactly one source, not base64, empty, a relative key file
    /// (400, `invalid`).
    Key(String),
    /// Another value is refused: a size, a LUKS type (400, `invalid`).
    Value(String),
}

impl Refusal {
    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NoRoute { .. } => StatusCode::NOT_FOUND,
            Refusal::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Its message.
    pub fn message(&self) -> String {
        let m = match self {
            Refusal::NoRoute { path } => {
                format!("there is no {path:?}; the API is under /v1 (see docs/openapi.json)")
            }
            Refusal::Method { method, path } => {
                format!("{method} is not allowed on {path}; see docs/openapi.json")
            }
            Refusal::Body(m) | Refusal::Id(m) | Refusal::Key(m) | Refusal::Value(m) => m.clone(),
        };
        bounded(m)
    }

    /// The API's reply for it.
    pub fn reply(&self) -> Reply {
        error(self.status(), &self.message())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// A key handed over in a request, decoded into a secret buffer: compared in constant
/// time, never printed.
pub struct GivenKey(pub SecretBytes);

impl PartialEq for GivenKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(other.0.expose())
    }
}

impl std::fmt::Debug for GivenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GivenKey({} bytes)", self.0.len())
    }
}

/// A key as a request gives it: the key itself, or where it comes from.
#[derive(Debug, PartialEq)]
pub enum KeySpec {
    /// The key itself (`{"base64": ...}`).
    Given(GivenKey),
    /// A registered key (`{"key_id": ...}`) or a root-only key file (`{"key_file": ...}`).
    Ref(KeyRef),
}

impl KeySpec {
    /// What the service takes.
    pub fn into_choice(self) -> KeyChoice {
        match self {
            KeySpec::Given(k) => KeyChoice::Given(k.0),
            KeySpec::Ref(r) => KeyChoice::Ref(r),
        }
    }
}

/// A volume to create, as `POST /v1/volumes` asks.
#[derive(Debug, PartialEq)]
pub struct CreateVolume {
    /// Its id.
    pub id: VolumeId,
    /// Its parameters (`fs` ext4 and `type` luks2 unless said).
    pub params: Params,
    /// Allow a sparse image larger than the free space.
    pub sparse_ok: bool,
    /// Its key.
    pub key: KeySpec,
}

/// A request of the API, parsed from its method, path and body.
#[derive(Debug, PartialEq)]
pub enum ApiRequest {
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/volumes`.
    ListVolumes,
    /// `POST /v1/volumes`.
    Create(CreateVolume),
    /// `GET /v1/volumes/{id}`.
    Get(VolumeId),
    /// `DELETE /v1/volumes/{id}`.
    Destroy(VolumeId),
    /// `POST /v1/volumes/{id}/open`, with a key or the volume's key source.
    Open {
        /// The volume.
        id: VolumeId,
        /// Its key (`None`: its recorded source).
        key: Option<KeySpec>,
    },
    /// `POST /v1/volumes/{id}/close`.
    Close(VolumeId),
    /// `POST /v1/volumes/{id}/rekey`.
    Rekey {
        /// The volume.
        id: VolumeId,
        /// The key now (`None`: its recorded source).
        key: Option<KeySpec>,
        /// The new key.
        new_key: KeySpec,
    },
    /// `POST /v1/sweep`.
    Sweep,
    /// `GET /v1/keys`.
    ListKeys,
    /// `POST /v1/keys`.
    AddKey {
        /// Its id.
        name: KeyName,
        /// The key.
        key: GivenKey,
    },
    /// `DELETE /v1/keys/{id}`.
    RemoveKey(KeyName),
    /// `GET /v1/openapi.json`.
    OpenApi,
}

/// Where a key comes from, in a request: exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyInput {
    /// The key itself, base64 (standard alphabet, padded).
    base64: Option<Zeroizing<String>>,
    /// A registered key.
    key_id: Option<String>,
    /// A key file only root can read.
    key_file: Option<PathBuf>,
}

impl KeyInput {
    fn spec(self) -> Result<KeySpec, Refusal> {
        match (self.base64, self.key_id, self.key_file) {
            (Some(b), None, None) => decode_key(&b).map(KeySpec::Given),
            (None, Some(id), None) => KeyName::parse(&id)
                .map(|n| KeySpec::Ref(KeyRef::Registered(n)))
                .map_err(|e| Refusal::Id(bounded(e.to_string()))),
            (None, None, Some(p)) if p.is_absolute() => Ok(KeySpec::Ref(KeyRef::File(p))),
            (None, None, Some(_)) => Err(Refusal::Key("key_file must be an absolute path".into())),
            _ => Err(Refusal::Key(
                "a key is exactly one of {\"base64\": KEY}, {\"key_id\": ID} or {\"key_file\": PATH}"
                    .into(),
            )),
        }
    }
}

fn decode_key(b64: &str) -> Result<GivenKey, Refusal> {
    // Decoded into a buffer reserved once, so that no copy is left in a freed one.
    let text = b64.trim().as_bytes();
    let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    base64::engine::general_purpose::STANDARD
        .decode_vec(text, &mut bytes)
        .map_err(|_| {
            Refusal::Key("the key is not base64 (standard alphabet, with padding)".into())
        })?;
    if bytes.is_empty() {
        return Err(Refusal::Key("the key is empty".into()));
    }
    Ok(GivenKey(SecretBytes::from_slice(&bytes)))
}

/// A size: bytes, or text with K, M, G, T.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// An overlay volume's shared, read-only base: a plain image, or a dm-verity one (`hash`,
/// `root`, `hash_offset`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseBody {
    image: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    hash_offset: Option<u64>,
    #[serde(default)]
    root: Option<String>,
}

impl BaseBody {
    fn spec(self) -> Result<BaseSpec, Refusal> {
        BaseSpec::from_parts(
            Some(PathBuf::from(self.image)),
            self.hash.map(PathBuf::from),
            self.hash_offset,
            self.root,
        )
        .map_err(|e| Refusal::Value(bounded(e.to_string())))
        .map(|b| b.expect("an image was given"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    base: Option<BaseBody>,
    #[serde(default)]
    fs: Option<String>,
    #[serde(default, rename = "type")]
    luks_type: Option<String>,
    #[serde(default)]
    detached_header: bool,
    #[serde(default)]
    sparse_ok: bool,
    key: KeyInput,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    #[serde(default)]
    key: Option<KeyInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyBody {
    #[serde(default)]
    key: Option<KeyInput>,
    new_key: KeyInput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    id: String,
    key: Zeroizing<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// The body as `T`; an empty (or blank) body is `empty()` when given, else refused.
fn body<T: DeserializeOwned>(raw: &[u8], empty: Option<fn() -> T>) -> Result<T, Refusal> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return match empty {
            Some(make) => Ok(make()),
            None => Err(Refusal::Body("the request needs a JSON body".into())),
        };
    }
    serde_json::from_slice(raw).map_err(|e| {
        Refusal::Body(format!(
            "the request body is not the JSON expected: {}",
            json_error(&e)
        ))
    })
}

fn volume_id(s: &str) -> Result<VolumeId, Refusal> {
    VolumeId::parse(s).map_err(|e| Refusal::Id(bounded(e.to_string())))
}

fn key_name(s: &str) -> Result<KeyName, Refusal> {
    KeyName::parse(s).map_err(|e| Refusal::Id(bounded(e.to_string())))
}

fn create_body(raw: &[u8]) -> Result<CreateVolume, Refusal> {
    let b: CreateBody = body(raw, None)?;
    let id = volume_id(&b.id)?;
    let base = b.base.map(BaseBody::spec).transpose()?;
    let size = match b.size {
        Some(Size::Bytes(n)) => n,
        Some(Size::Text(t)) => {
            parse_size(&t).map_err(|e| Refusal::Value(bounded(e.to_string())))?
        }
        // An overlay volume is its base's size unless told.
        None if base.is_some() => 0,
        None => {
            return Err(Refusal::Value(
                "size is missing (bytes, or text such as \"10G\"); only an overlay volume (base) may leave it out".into(),
            ))
        }
    };
    let luks_type = match b.luks_type.as_deref() {
        None | Some("luks2") => LuksType::Luks2,
        Some("luks1") => LuksType::Luks1,
        Some(other) => {
            return Err(Refusal::Value(format!(
                "type {:?}: use luks2 (default) or luks1",
                other.chars().take(16).collect::<String>()
            )))
        }
    };
    Ok(CreateVolume {
        id,
        params: Params {
            size,
            fs: b.fs.unwrap_or_else(|| "ext4".into()),
            detached_header: b.detached_header,
            luks_type,
            base,
        },
        sparse_ok: b.sparse_ok,
        key: b.key.spec()?,
    })
}

/// Parses one request of the API: the route from `method` and `path` (not decoded: a `%`
/// in an id is refused as a bad id), then the body the route takes. Pure: no I/O, no
/// state; what it returns is all a handler needs.
///
/// # Errors
/// A [`Refusal`] saying what is wrong; nothing has been done.
pub fn parse(method: &Method, path: &str, raw: &[u8]) -> Result<ApiRequest, Refusal> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Ok(match (segs.as_slice(), method) {
        (["v1", "status"], &Method::GET) => ApiRequest::Status,
        (["v1", "volumes"], &Method::GET) => ApiRequest::ListVolumes,
        (["v1", "volumes"], &Method::POST) => ApiRequest::Create(create_body(raw)?),
        (["v1", "volumes", id], &Method::GET) => ApiRequest::Get(volume_id(id)?),
        (["v1", "volumes", id], &Method::DELETE) => ApiRequest::Destroy(volume_id(id)?),
        (["v1", "volumes", id, "open"], &Method::POST) => {
            let id = volume_id(id)?;
            let b: OpenBody = body(raw, Some(OpenBody::default))?;
            ApiRequest::Open {
                id,
                key: b.key.map(KeyInput::spec).transpose()?,
            }
        }
        (["v1", "volumes", id, "close"], &Method::POST) => {
            let id = volume_id(id)?;
            let _: Empty = body(raw, Some(Empty::default))?;
            ApiRequest::Close(id)
        }
        (["v1", "volumes", id, "rekey"], &Method::POST) => {
            let id = volume_id(id)?;
            let b: RekeyBody = body(raw, None)?;
            ApiRequest::Rekey {
                id,
                key: b.key.map(KeyInput::spec).transpose()?,
                new_key: b.new_key.spec()?,
            }
        }
        (["v1", "sweep"], &Method::POST) => {
            let _: Empty = body(raw, Some(Empty::default))?;
            ApiRequest::Sweep
        }
        (["v1", "keys"], &Method::GET) => ApiRequest::ListKeys,
        (["v1", "keys"], &Method::POST) => {
            let b: KeyBody = body(raw, None)?;
            let name = key_name(&b.id)?;
            ApiRequest::AddKey {
                name,
                key: decode_key(&b.key)?,
            }
        }
        (["v1", "keys", id], &Method::DELETE) => ApiRequest::RemoveKey(key_name(id)?),
        (["v1", "openapi.json"], &Method::GET) => ApiRequest::OpenApi,
        (
            ["v1", "status" | "volumes" | "sweep" | "keys" | "openapi.json"]
            | ["v1", "volumes" | "keys", _]
            | ["v1", "volumes", _, "open" | "close" | "rekey"],
            _,
        ) => {
            return Err(Refusal::Method {
                method: method.to_string().chars().take(16).collect(),
                path: path.chars().take(80).collect(),
            })
        }
        _ => {
            return Err(Refusal::NoRoute {
                path: path.chars().take(80).collect(),
            })
        }
    })
}

fn key_json(k: &KeySpec) -> serde_json::Value {
    match k {
        KeySpec::Given(s) => json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(s.0.expose())
        }),
        KeySpec::Ref(r) => serde_json::to_value(r).expect("key references serialise"),
    }
}

impl ApiRequest {
    /// The request as a client sends it: method, path and body (the inverse of [`parse`]).
    /// A body holding a key is in a zeroized buffer (the JSON values built on the way are
    /// not: this is for tools, tests and the fuzzer, not for a long-lived process).
    pub fn to_http(&self) -> (Method, String, Zeroizing<Vec<u8>>) {
        let none = || Zeroizing::new(Vec::new());
        let js = |v: serde_json::Value| Zeroizing::new(v.to_string().into_bytes());
        match self {
            ApiRequest::Status => (Method::GET, "/v1/status".into(), none()),
            ApiRequest::ListVolumes => (Method::GET, "/v1/volumes".into(), none()),
            ApiRequest::Create(c) => {
                let mut b = json!({
                    "id": c.id,
                    "size": c.params.size,
                    "fs": c.params.fs,
                    "type": c.params.luks_type.as_str(),
                    "detached_header": c.params.detached_header,
                    "sparse_ok": c.sparse_ok,
                    "key": key_json(&c.key),
                });
                match &c.params.base {
                    Some(BaseSpec::Image { path }) => {
                        b["base"] = json!({ "image": path });
                    }
                    Some(BaseSpec::Verity { image, verity }) => {
                        b["base"] = json!({
                            "image": image,
                            "hash": verity.hash,
                            "hash_offset": verity.hash_offset,
                            "root": verity.root,
                        });
                    }
                    // Not in the API (a LUKS base needs a key of its own).
                    Some(BaseSpec::None | BaseSpec::Luks { .. }) | None => {}
                }
                (Method::POST, "/v1/volumes".into(), js(b))
            }
            ApiRequest::Get(id) => (Method::GET, format!("/v1/volumes/{id}"), none()),
            ApiRequest::Destroy(id) => (Method::DELETE, format!("/v1/volumes/{id}"), none()),
            ApiRequest::Open { id, key } => (
                Method::POST,
                format!("/v1/volumes/{id}/open"),
                match key {
                    Some(k) => js(json!({ "key": key_json(k) })),
                    None => none(),
                },
            ),
            ApiRequest::Close(id) => (Method::POST, format!("/v1/volumes/{id}/close"), none()),
            ApiRequest::Rekey { id, key, new_key } => {
                let mut b = json!({ "new_key": key_json(new_key) });
                if let Some(k) = key {
                    b["key"] = key_json(k);
                }
                (Method::POST, format!("/v1/volumes/{id}/rekey"), js(b))
            }
            ApiRequest::Sweep => (Method::POST, "/v1/sweep".into(), none()),
            ApiRequest::ListKeys => (Method::GET, "/v1/keys".into(), none()),
            ApiRequest::AddKey { name, key } => (
                Method::POST,
                "/v1/keys".into(),
                js(json!({
                    "id": name,
                    "key": base64::engine::general_purpose::STANDARD.encode(key.0.expose()),
                })),
            ),
            ApiRequest::RemoveKey(name) => (Method::DELETE, format!("/v1/keys/{name}"), none()),
            ApiRequest::OpenApi => (Method::GET, "/v1/openapi.json".into(), none()),
        }
    }
}

fn ok(v: &impl serde::Serialize) -> Reply {
    Reply::json(StatusCode::OK, v)
}

/// Answers one API request: [`parse`], then the service call it names.
pub async fn handle(d: Arc<Daemon>, req: Request) -> Reply {
    let parsed = match parse(&req.method, &req.path, &req.body) {
        Ok(r) => r,
        Err(refusal) => return refusal.reply(),
    };
    drop(req);
    let r = match parsed {
        ApiRequest::Status => status(d).await,
        ApiRequest::ListVolumes => list(d).await,
        ApiRequest::Create(c) => create(d, c).await,
        ApiRequest::Get(id) => get(d, id).await,
        ApiRequest::Destroy(id) => destroy(d, id).await,
        ApiRequest::Open { id, key } => open(d, id, key).await,
        ApiRequest::Close(id) => close(d, id).await,
        ApiRequest::Rekey { id, key, new_key } => rekey(d, id, key, new_key).await,
        ApiRequest::Sweep => sweep(d).await,
        ApiRequest::ListKeys => Ok(ok(&json!({ "keys": d.service.keys().names() }))),
        ApiRequest::AddKey { name, key } => add_key(d, name, key).await,
        ApiRequest::RemoveKey(name) => Ok(ok(&json!({ "removed": d.service.forget_key(&name) }))),
        ApiRequest::OpenApi => Ok(Reply {
            status: StatusCode::OK,
            body: OPENAPI.as_bytes().to_vec(),
        }),
    };
    r.unwrap_or_else(|e| e)
}

async fn status(d: Arc<Daemon>) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let volumes = blocking(move || svc.list()).await.map_err(|e| fail(&e))?;
    Ok(ok(&json!({ "daemon": d.summary(), "volumes": volumes })))
}

async fn list(d: Arc<Daemon>) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let volumes = blocking(move || svc.list()).await.map_err(|e| fail(&e))?;
    Ok(ok(&json!({ "volumes": volumes })))
}

async fn get(d: Arc<Daemon>, id: VolumeId) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let v = blocking(move || svc.status(&id))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&v))
}

async fn create(d: Arc<Daemon>, c: CreateVolume) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let kdf = d.kdf.clone();
    let made = blocking(move || {
        svc.create(CreateRequest {
            id: c.id,
            params: c.params,
            key: c.key.into_choice(),
            kdf,
            sparse_ok: c.sparse_ok,
        })
    })
    .await
    .map_err(|e| fail(&e))?;
    let status = if made.already_existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(Reply::json(status, &made))
}

async fn destroy(d: Arc<Daemon>, id: VolumeId) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let done = blocking(move || svc.remove(&id))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&done))
}

async fn open(d: Arc<Daemon>, id: VolumeId, key: Option<KeySpec>) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let key = key.map(KeySpec::into_choice);
    let v = blocking(move || svc.open(&id, key))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&v))
}

async fn close(d: Arc<Daemon>, id: VolumeId) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let v = blocking(move || svc.close(&id))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&v))
}

async fn rekey(
    d: Arc<Daemon>,
    id: VolumeId,
    key: Option<KeySpec>,
    new_key: KeySpec,
) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let kdf = d.kdf.clone();
    let old = key.map(KeySpec::into_choice);
    let new = new_key.into_choice();
    let r = blocking(move || svc.rekey(&id, old, new, &kdf))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&r))
}

async fn sweep(d: Arc<Daemon>) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let actions = blocking(move || svc.sweep()).await.map_err(|e| fail(&e))?;
    Ok(ok(&json!({ "actions": actions })))
}

async fn add_key(d: Arc<Daemon>, name: KeyName, key: GivenKey) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    let r = blocking(move || svc.register_key(name, key.0))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::LazyJust;

    use crate::strategies::{json_body, params};

    fn p(method: Method, path: &str, body: &str) -> Result<ApiRequest, Refusal> {
        parse(&method, path, body.as_bytes())
    }

    #[test]
    fn routes_bodies_and_refusals() {
        assert_eq!(p(Method::GET, "/v1/status", ""), Ok(ApiRequest::Status));
        let c = p(
            Method::POST,
            "/v1/volumes",
            r#"{"id":"v1","size":"64M","key":{"key_id":"k1"}}"#,
        )
        .unwrap();
        let ApiRequest::Create(c) = c else { panic!() };
        assert_eq!((c.params.size, c.params.fs.as_str()), (64 << 20, "ext4"));
        assert_eq!(
            c.key,
            KeySpec::Ref(KeyRef::Registered(KeyName::parse("k1").unwrap()))
        );
        let r = p(Method::POST, "/v1/keys", r#"{"id":"k","key":"AAEC"}"#).unwrap();
        assert_eq!(
            r,
            ApiRequest::AddKey {
                name: KeyName::parse("k").unwrap(),
                key: GivenKey(SecretBytes::from_slice(&[0, 1, 2])),
            }
        );
        assert_eq!(
            p(Method::POST, "/v1/volumes/v1/open", " \n"),
            Ok(ApiRequest::Open {
                id: VolumeId::parse("v1").unwrap(),
                key: None
            })
        );
        for (m, path, body, want) in [
            (Method::GET, "/v2/x", "", StatusCode::NOT_FOUND),
            (
                Method::PUT,
                "/v1/volumes",
                "",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::GET,
                "/v1/volumes/..%2Fetc",
                "",
                StatusCode::BAD_REQUEST,
            ),
            (Method::POST, "/v1/volumes", "{", StatusCode::BAD_REQUEST),
            (Method::POST, "/v1/volumes", "", StatusCode::BAD_REQUEST),
            (
                Method::POST,
                "/v1/keys",
                r#"{"id":"k","key":"!!"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/v1/keys",
                r#"{"id":"k","key":""}"#,
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let e = p(m.clone(), path, body).unwrap_err();
            assert_eq!(e.status(), want, "{m} {path} {body}: {e:?}");
        }
        assert!(matches!(
            p(Method::GET, "/v1/volumes/../../etc", ""),
            Err(Refusal::NoRoute { .. })
        ));
        assert!(matches!(
            p(Method::GET, "/v1/volumes/.hidden", ""),
            Err(Refusal::Id(_))
        ));
        assert!(matches!(
            p(
                Method::POST,
                "/v1/volumes/v/open",
                r#"{"key":{"key_id":"a","base64":"AAAA"}}"#
            ),
            Err(Refusal::Key(_))
        ));
        assert!(matches!(
            p(
                Method::POST,
                "/v1/volumes",
                r#"{"id":"v","size":"9Q","key":{"key_id":"a"}}"#
            ),
            Err(Refusal::Value(_))
        ));
    }

    #[test]
    fn a_key_in_the_wrong_place_is_not_quoted_back() {
        let key = "c2VjcmV0LWtleS1ieXRlcy1oZXJlLTAxMjM0NTY3";
        for (path, body) in [
            ("/v1/volumes/v/open", format!(r#"{{"key":"{key}"}}"#)),
            ("/v1/volumes/v/rekey", format!(r#"{{"new_key":"{key}"}}"#)),
            (
                "/v1/volumes",
                format!(r#"{{"id":"v","size":1,"key":["{key}"]}}"#),
            ),
            ("/v1/keys", format!(r#"{{"id":"k","key":{{"b":"{key}"}}}}"#)),
            ("/v1/keys", format!(r#"{{"id":"k","key":"{key}\u0000"}}"#)),
            ("/v1/sweep", format!(r#"{{"x":"{key}"}}"#)),
        ] {
            let e = parse(&Method::POST, path, body.as_bytes()).unwrap_err();
            assert!(!e.message().contains(&key[..16]), "{path}: {e}");
        }
    }

    fn id() -> impl Strategy<Value = VolumeId> {
        "[a-z0-9][a-z0-9_-]{0,20}".prop_map(|s| VolumeId::parse(&s).unwrap())
    }

    fn key_name() -> impl Strategy<Value = KeyName> {
        "[a-z0-9][a-z0-9_-]{0,20}".prop_map(|s| KeyName::parse(&s).unwrap())
    }

    fn key_spec() -> impl Strategy<Value = KeySpec> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 1..100)
                .prop_map(|k| KeySpec::Given(GivenKey(SecretBytes::from_vec(k)))),
            key_name().prop_map(|n| KeySpec::Ref(KeyRef::Registered(n))),
            "/[a-zA-Z0-9 ._/-]{0,40}".prop_map(|p| KeySpec::Ref(KeyRef::File(p.into()))),
        ]
    }

    fn request() -> impl Strategy<Value = ApiRequest> {
        let create = (id(), params(any::<u64>()), any::<bool>(), key_spec()).prop_map(
            |(id, params, sparse_ok, key)| {
                ApiRequest::Create(CreateVolume {
                    id,
                    params,
                    sparse_ok,
                    key,
                })
            },
        );
        prop_oneof![
            LazyJust::new(|| ApiRequest::Status),
            LazyJust::new(|| ApiRequest::ListVolumes),
            LazyJust::new(|| ApiRequest::Sweep),
            LazyJust::new(|| ApiRequest::ListKeys),
            LazyJust::new(|| ApiRequest::OpenApi),
            create,
            id().prop_map(ApiRequest::Get),
            id().prop_map(ApiRequest::Destroy),
            id().prop_map(ApiRequest::Close),
            (id(), prop::option::of(key_spec())).prop_map(|(id, key)| ApiRequest::Open { id, key }),
            (id(), prop::option::of(key_spec()), key_spec())
                .prop_map(|(id, key, new_key)| { ApiRequest::Rekey { id, key, new_key } }),
            (key_name(), prop::collection::vec(any::<u8>(), 1..100)).prop_map(|(name, k)| {
                ApiRequest::AddKey {
                    name,
                    key: GivenKey(SecretBytes::from_vec(k)),
                }
            }),
            key_name().prop_map(ApiRequest::RemoveKey),
        ]
    }

    fn methods() -> Vec<Method> {
        vec![
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::PATCH,
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            "/v1/(status|volumes|sweep|keys|openapi\\.json)",
            "/v1/(volumes|keys)/[ -~]{0,70}",
            "/v1/volumes/[ -~]{0,70}/(open|close|rekey)",
            "[ -~]{0,100}",
        ]
    }

    /// The fields the routes' bodies take (the base's too).
    const FIELDS: &[&str] = &[
        "id",
        "size",
        "key",
        "new_key",
        "base64",
        "key_id",
        "key_file",
        "type",
        "fs",
        "base",
        "image",
        "hash",
        "hash_offset",
        "root",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any request the API takes goes to bytes and back to the same request.
        #[test]
        fn valid_requests_round_trip(req in request()) {
            let (m, path, body) = req.to_http();
            let back = parse(&m, &path, &body);
            prop_assert_eq!(back.as_ref(), Ok(&req));
        }

        /// Arbitrary bytes, paths and methods: a request or a refusal, never a panic; a
        /// refusal is a 4xx with a bounded message; what parses goes back to itself.
        #[test]
        fn arbitrary_requests_never_panic(
            m in prop::sample::select(methods()),
            path in path(),
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                json_body(FIELDS),
            ],
        ) {
            match parse(&m, &path, &body) {
                Ok(req) => {
                    let (m2, p2, b2) = req.to_http();
                    prop_assert_eq!(&m2, &m);
                    let back = parse(&m2, &p2, &b2);
                    prop_assert_eq!(back.as_ref(), Ok(&req));
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
