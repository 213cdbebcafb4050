//! The Docker volume plugin protocol (legacy socket plugins, `VolumeDriver` 1.x), as Docker
//! 20.10 and Podman 4.3 speak it: `POST /Plugin.Activate`, `/VolumeDriver.Capabilities`,
//! `.Create`, `.Get`, `.List`, `.Mount`, `.Unmount`, `.Path`, `.Remove`, each with a JSON
//! body (the content type is not checked: Docker sends none).
//!
//! Errors carry a non-200 status *and* `{"Err": message}`: Podman takes an `Err` with 200
//! for success. Volume options (`docker volume create --opt`) name the key (`key-id`,
//! `key-file`), never hold it: engines store and show options. `Get`'s `Status` (what
//! `docker volume inspect` shows) says where the key comes from, never the key.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use sealvol_host::service::{params_from_options, CreateRequest, KeyChoice, UserId, VolumeState};
use sealvol_host::volume::{human_size, VolumeId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{Reply, Request};
use crate::state::{blocking, classify, Daemon};

/// The content type of the plugin protocol.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The plugin's error body: `{"Err": message}` with a non-200 status.
pub fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(status, &json!({ "Err": message }))
}

/// What a request names. Unknown fields are ignored (engines add some).
#[derive(Debug, Deserialize)]
struct Body {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "ID", default)]
    id: Option<String>,
}

fn parse(req: &Request) -> Result<Body, Reply> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body {
            name: None,
            opts: None,
            id: None,
        });
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the request body is not the JSON object expected: {e}"),
        )
    })
}

fn name(b: &Body) -> Result<VolumeId, Reply> {
    let n = b.name.as_deref().ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "the request names no volume (Name)",
        )
    })?;
    VolumeId::parse(n).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))
}

fn user(b: &Body) -> Result<UserId, Reply> {
    let id = b.id.as_deref().ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "the request names no mount id (ID)",
        )
    })?;
    UserId::parse(id).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))
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

/// Answers one plugin request.
pub async fn handle(d: Arc<Daemon>, req: Request) -> Reply {
    if req.method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the volume plugin protocol uses POST",
        );
    }
    let body = match parse(&req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match route(d, &req.path, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn route(d: Arc<Daemon>, path: &str, body: Body) -> Result<Reply, Reply> {
    let svc = Arc::clone(&d.service);
    Ok(match path {
        "/Plugin.Activate" => ok(json!({ "Implements": ["VolumeDriver"] })),
        "/VolumeDriver.Capabilities" => ok(json!({ "Capabilities": { "Scope": "local" } })),
        "/VolumeDriver.Create" => {
            let id = name(&body)?;
            let opts = body.opts.unwrap_or_default();
            let kdf = d.kdf.clone();
            blocking(move || {
                // An engine creates a volume it does not know yet with no options (a
                // `docker run -v NAME:/dir` after the engine forgot it): an existing volume
                // is then simply there.
                if opts.is_empty() && svc.manager().status(&id)?.is_some() {
                    return Ok(());
                }
                let (params, key, sparse_ok) = params_from_options(&opts)?;
                let key = key.ok_or_else(|| {
                    sealvol_host::Error::Invalid(
                        "name the volume's key: --opt key-id=ID (a key registered through the daemon's API) or --opt key-file=/path (a file only root can read); volume options never hold the key itself".into(),
                    )
                })?;
                svc.create(CreateRequest {
                    id,
                    params,
                    key: KeyChoice::Ref(key),
                    kdf,
                    sparse_ok,
                })
                .map(|_| ())
            })
            .await
            .map(|()| ok(json!({ "Err": "" })))
            .map_err(|e| fail(&e))?
        }
        "/VolumeDriver.Remove" => {
            let id = name(&body)?;
            blocking(move || svc.remove(&id))
                .await
                .map(|_| ok(json!({ "Err": "" })))
                .map_err(|e| fail(&e))?
        }
        "/VolumeDriver.Mount" => {
            let id = name(&body)?;
            let user = user(&body)?;
            blocking(move || svc.mount(&id, &user))
                .await
                .map(|m| ok(json!({ "Mountpoint": m.mount_point, "Err": "" })))
                .map_err(|e| fail(&e))?
        }
        "/VolumeDriver.Unmount" => {
            let id = name(&body)?;
            let user = user(&body)?;
            let idc = id.clone();
            let u = blocking(move || svc.release(&idc, &user))
                .await
                .map_err(|e| fail(&e))?;
            if u.mounts == 0 {
                d.close_later(id).await.map_err(|e| fail(&e))?;
            }
            ok(json!({ "Err": "" }))
        }
        "/VolumeDriver.Get" => {
            let id = name(&body)?;
            let v = blocking(move || svc.status(&id))
                .await
                .map_err(|e| fail(&e))?;
            ok(json!({
                "Volume": {
                    "Name": v.volume.id,
                    "Mountpoint": mountpoint(&v),
                    "Status": status_map(&v),
                },
                "Err": "",
            }))
        }
        "/VolumeDriver.List" => {
            let vs = blocking(move || svc.list()).await.map_err(|e| fail(&e))?;
            let list: Vec<Value> = vs
                .iter()
                .map(|v| json!({ "Name": v.volume.id, "Mountpoint": mountpoint(v) }))
                .collect();
            ok(json!({ "Volumes": list, "Err": "" }))
        }
        "/VolumeDriver.Path" => {
            let id = name(&body)?;
            let v = blocking(move || svc.status(&id))
                .await
                .map_err(|e| fail(&e))?;
            ok(json!({ "Mountpoint": mountpoint(&v), "Err": "" }))
        }
        other => {
            return Err(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "{:?} is not an endpoint of the volume plugin protocol",
                    other.chars().take(64).collect::<String>()
                ),
            ))
        }
    })
}
