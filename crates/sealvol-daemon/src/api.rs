//! The JSON API for control planes (`docs/openapi.json` is its contract; the tests check
//! the server against it). Keys travel only in request bodies (`{"base64": ...}`), read
//! into zeroized buffers, decoded straight into `SecretBytes`; never in a path, a reply or
//! a log line.
//!
//! Every error is `{"error": message, "kind": kind}` with a non-2xx status: `invalid` 400,
//! `unauthorized` 401, `wrong_key` 403, `not_found`/`no_route` 404, `method` 405,
//! `timeout` 408, `in_use` 409, `key_unavailable` 412, `too_large` 413, `failed` 500.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use hyper::{Method, StatusCode};
use sealvol_crypto::SecretBytes;
use sealvol_host::keyring::{KeyName, KeyRef};
use sealvol_host::service::{CreateRequest, KeyChoice};
use sealvol_host::volume::{parse_size, LuksType, Params, VolumeId};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::http::{Reply, Request};
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

fn invalid(message: impl Into<String>) -> Reply {
    error(StatusCode::BAD_REQUEST, &message.into())
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
    fn choice(self) -> Result<KeyChoice, Reply> {
        match (self.base64, self.key_id, self.key_file) {
            (Some(b), None, None) => decode_key(&b).map(KeyChoice::Given),
            (None, Some(id), None) => KeyName::parse(&id)
                .map(|n| KeyChoice::Ref(KeyRef::Registered(n)))
                .map_err(|e| invalid(e.to_string())),
            (None, None, Some(p)) if p.is_absolute() => Ok(KeyChoice::Ref(KeyRef::File(p))),
            (None, None, Some(_)) => Err(invalid("key_file must be an absolute path")),
            _ => Err(invalid(
                "a key is exactly one of {\"base64\": KEY}, {\"key_id\": ID} or {\"key_file\": PATH}",
            )),
        }
    }
}

fn decode_key(b64: &str) -> Result<SecretBytes, Reply> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim().as_bytes())
        .map_err(|_| invalid("the key is not base64 (standard alphabet, with padding)"))?;
    let key = SecretBytes::from_vec(bytes);
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    Ok(key)
}

/// A size: bytes, or text with K, M, G, T.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    size: Size,
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

/// The body as `T`; an empty body is `T::default()` when `empty_ok`.
fn body<T: DeserializeOwned>(req: &Request, empty: Option<fn() -> T>) -> Result<T, Reply> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        if let Some(make) = empty {
            return Ok(make());
        }
        return Err(invalid("the request needs a JSON body"));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| invalid(format!("the request body is not the JSON expected: {e}")))
}

fn volume_id(s: &str) -> Result<VolumeId, Reply> {
    VolumeId::parse(s).map_err(|e| invalid(e.to_string()))
}

fn ok(v: &impl serde::Serialize) -> Reply {
    Reply::json(StatusCode::OK, v)
}

/// Answers one API request.
pub async fn handle(d: Arc<Daemon>, req: Request) -> Reply {
    let path = req.path.clone();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method.clone();
    let r = match (segs.as_slice(), &m) {
        (["v1", "status"], &Method::GET) => status(d).await,
        (["v1", "volumes"], &Method::GET) => list(d).await,
        (["v1", "volumes"], &Method::POST) => create(d, &req).await,
        (["v1", "volumes", id], &Method::GET) => get(d, id).await,
        (["v1", "volumes", id], &Method::DELETE) => destroy(d, id).await,
        (["v1", "volumes", id, "open"], &Method::POST) => open(d, id, &req).await,
        (["v1", "volumes", id, "close"], &Method::POST) => close(d, id, &req).await,
        (["v1", "volumes", id, "rekey"], &Method::POST) => rekey(d, id, &req).await,
        (["v1", "sweep"], &Method::POST) => sweep(d, &req).await,
        (["v1", "keys"], &Method::GET) => Ok(ok(&json!({ "keys": d.service.keys().names() }))),
        (["v1", "keys"], &Method::POST) => add_key(d, &req).await,
        (["v1", "keys", id], &Method::DELETE) => remove_key(d, id),
        (["v1", "openapi.json"], &Method::GET) => Ok(Reply {
            status: StatusCode::OK,
            body: OPENAPI.as_bytes().to_vec(),
        }),
        (
            ["v1", "status" | "volumes" | "sweep" | "keys" | "openapi.json"]
            | ["v1", "volumes" | "keys", _]
            | ["v1", "volumes", _, "open" | "close" | "rekey"],
            _,
        ) => Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{m} is not allowed on {path}; see docs/openapi.json"),
        )),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            &format!(
                "there is no {:?}; the API is under /v1 (see docs/openapi.json)",
                path.chars().take(80).collect::<String>()
            ),
        )),
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

async fn get(d: Arc<Daemon>, id: &str) -> Result<Reply, Reply> {
    let id = volume_id(id)?;
    let svc = Arc::clone(&d.service);
    let v = blocking(move || svc.status(&id))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&v))
}

async fn create(d: Arc<Daemon>, req: &Request) -> Result<Reply, Reply> {
    let b: CreateBody = body(req, None)?;
    let id = volume_id(&b.id)?;
    let size = match b.size {
        Size::Bytes(n) => n,
        Size::Text(t) => parse_size(&t).map_err(|e| invalid(e.to_string()))?,
    };
    let luks_type = match b.luks_type.as_deref() {
        None | Some("luks2") => LuksType::Luks2,
        Some("luks1") => LuksType::Luks1,
        Some(other) => {
            return Err(invalid(format!(
                "type {:?}: use luks2 (default) or luks1",
                other.chars().take(16).collect::<String>()
            )))
        }
    };
    let params = Params {
        size,
        fs: b.fs.unwrap_or_else(|| "ext4".into()),
        detached_header: b.detached_header,
        luks_type,
        base: None,
    };
    let key = b.key.choice()?;
    let svc = Arc::clone(&d.service);
    let kdf = d.kdf.clone();
    let sparse_ok = b.sparse_ok;
    let made = blocking(move || {
        svc.create(CreateRequest {
            id,
            params,
            key,
            kdf,
            sparse_ok,
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

async fn destroy(d: Arc<Daemon>, id: &str) -> Result<Reply, Reply> {
    let id = volume_id(id)?;
    let svc = Arc::clone(&d.service);
    let done = blocking(move || svc.remove(&id))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&done))
}

async fn open(d: Arc<Daemon>, id: &str, req: &Request) -> Result<Reply, Reply> {
    let id = volume_id(id)?;
    let b: OpenBody = body(req, Some(OpenBody::default))?;
    let key = b.key.map(KeyInput::choice).transpose()?;
    let svc = Arc::clone(&d.service);
    let v = blocking(move || svc.open(&id, key))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&v))
}

async fn close(d: Arc<Daemon>, id: &str, req: &Request) -> Result<Reply, Reply> {
    let id = volume_id(id)?;
    let _: Empty = body(req, Some(Empty::default))?;
    let svc = Arc::clone(&d.service);
    let v = blocking(move || svc.close(&id))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&v))
}

async fn rekey(d: Arc<Daemon>, id: &str, req: &Request) -> Result<Reply, Reply> {
    let id = volume_id(id)?;
    let b: RekeyBody = body(req, None)?;
    let old = b.key.map(KeyInput::choice).transpose()?;
    let new = b.new_key.choice()?;
    let svc = Arc::clone(&d.service);
    let kdf = d.kdf.clone();
    let r = blocking(move || svc.rekey(&id, old, new, &kdf))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&r))
}

async fn sweep(d: Arc<Daemon>, req: &Request) -> Result<Reply, Reply> {
    let _: Empty = body(req, Some(Empty::default))?;
    let svc = Arc::clone(&d.service);
    let actions = blocking(move || svc.sweep()).await.map_err(|e| fail(&e))?;
    Ok(ok(&json!({ "actions": actions })))
}

async fn add_key(d: Arc<Daemon>, req: &Request) -> Result<Reply, Reply> {
    let b: KeyBody = body(req, None)?;
    let name = KeyName::parse(&b.id).map_err(|e| invalid(e.to_string()))?;
    let key = decode_key(&b.key)?;
    drop(b);
    let svc = Arc::clone(&d.service);
    let r = blocking(move || svc.register_key(name, key))
        .await
        .map_err(|e| fail(&e))?;
    Ok(ok(&r))
}

fn remove_key(d: Arc<Daemon>, id: &str) -> Result<Reply, Reply> {
    let name = KeyName::parse(id).map_err(|e| invalid(e.to_string()))?;
    Ok(ok(&json!({ "removed": d.service.forget_key(&name) })))
}
