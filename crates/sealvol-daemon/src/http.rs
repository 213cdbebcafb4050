//! The HTTP/1 server both front ends share (hyper does all the HTTP): accept loops on unix
//! sockets (root peers only) and loopback TCP (bearer token), a bound on connections, a
//! deadline for a request's headers and body, a bound on body size, bodies read into
//! zeroized buffers, one log line per request (method, path, status, time: never a body),
//! and a graceful stop that lets requests under way finish.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use zeroize::Zeroizing;

/// A request as the handlers see it: the body already read (bounded, zeroized on drop).
pub struct Request {
    /// Its method.
    pub method: Method,
    /// Its path (not decoded: a `%` in an id is refused as a bad id).
    pub path: String,
    /// Its body.
    pub body: Zeroizing<Vec<u8>>,
}

/// A handler's answer.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl Reply {
    /// `value` as JSON with `status`.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        Reply {
            status,
            body: serde_json::to_vec(value).expect("replies serialise"),
        }
    }
}

/// Longest message a refusal carries (an id or a field the client sent is quoted at most
/// this long).
pub const MAX_MESSAGE: usize = 512;

/// `message` cut to [`MAX_MESSAGE`] bytes at a character boundary.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// What is wrong with a body serde_json refused, without the values it holds: serde quotes
/// a string it did not expect (`invalid type: string "..."`), and a client that puts a key
/// in the wrong field must not get it back in a reply. Strings become `a string`; the rest
/// (what was expected, which field, line and column) stays.
pub fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE));
    let mut rest = text.as_str();
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        // serde prints the string with `{:?}`: it ends at the first quote not escaped.
        let mut chars = rest[at + "string \"".len()..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(at + "string \"".len() + i + 1);
                    break;
                }
                _ => {}
            }
        }
        match end {
            Some(e) => rest = &rest[e..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    bounded(out)
}

/// The future a handler returns.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
/// A front end: a request in, a reply out.
pub type Handler = Arc<dyn Fn(Request) -> ReplyFuture + Send + Sync>;
/// How a front end words a transport-level error (oversized body, deadline, token).
pub type ErrorBody = fn(StatusCode, &str) -> Reply;

/// A front end served on one or more listeners.
#[derive(Clone)]
pub struct Front {
    /// Its name in logs (`plugin`, `api`).
    pub name: &'static str,
    /// Its handler.
    pub handler: Handler,
    /// Its error bodies.
    pub error: ErrorBody,
    /// The content type of its replies.
    pub content_type: &'static str,
    /// Largest body.
    pub max_body: usize,
    /// Deadline for headers, and for the body.
    pub timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
}

/// Who may call over TCP: the bearer token (compared in constant time).
pub struct Token(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} bytes)", self.0.len())
    }
}

fn authorised(token: &Token, header: Option<&HeaderValue>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = header
        .map(HeaderValue::as_bytes)
        .and_then(|h| h.strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.len() == token.0.len() && bool::from(given.ct_eq(&token.0))
}

enum BodyError {
    TooLarge,
    Broken(String),
}

async fn read_body(mut body: Incoming, max: usize) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    // Reserved once so that growing never leaves a copy behind in a freed buffer.
    let mut buf = Zeroizing::new(Vec::with_capacity(max));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf)
}

async fn handle(
    front: Front,
    token: Option<Arc<Token>>,
    req: hyper::Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let reply = answer(&front, token.as_deref(), req).await;
    let ms = started.elapsed().as_millis() as u64;
    if reply.status.is_success() {
        tracing::info!(front = front.name, method = %method, path = %path, status = reply.status.as_u16(), ms, "request");
    } else {
        tracing::warn!(front = front.name, method = %method, path = %path, status = reply.status.as_u16(), ms, "request failed");
    }
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(front.content_type));
    resp
}

async fn answer(front: &Front, token: Option<&Token>, req: hyper::Request<Incoming>) -> Reply {
    if let Some(t) = token {
        if !authorised(t, req.headers().get(AUTHORIZATION)) {
            return (front.error)(
                StatusCode::UNAUTHORIZED,
                "this listener needs `Authorization: Bearer TOKEN` with the daemon's API token",
            );
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        (front.error)(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than {} bytes; nothing was done",
                front.max_body
            ),
        )
    };
    if declared.is_some_and(|n| n > front.max_body as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(front.timeout, read_body(body, front.max_body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Broken(e))) => {
            return (front.error)(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read: {e}"),
            )
        }
        Err(_) => {
            return (front.error)(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} ms (--request-timeout-ms); nothing was done",
                    front.timeout.as_millis()
                ),
            )
        }
    };
    (front.handler)(Request {
        method: parts.method,
        path: parts.uri.path().to_string(),
        body,
    })
    .await
}

/// Serves one connection until it closes or the server stops.
fn serve_connection<S>(
    stream: S,
    front: &Front,
    token: Option<Arc<Token>>,
    graceful: &GracefulShutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let f = front.clone();
    let svc = service_fn(move |req| {
        let f = f.clone();
        let token = token.clone();
        async move { Ok::<_, Infallible>(handle(f, token, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(front.timeout)
        .max_buf_size(64 << 10)
        .serve_connection(TokioIo::new(stream), svc);
    let conn = graceful.watch(conn);
    let name = front.name;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(front = name, error = %e, "connection ended");
        }
        drop(permit);
    });
}

/// Accepts on a unix socket until `stop` says so; only root (or this process's user) may
/// connect.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    front: Front,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    let slots = Arc::new(Semaphore::new(front.max_connections));
    let me = rustix::process::geteuid().as_raw();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("never closed"),
            _ = stop.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(front = front.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == me => {}
            Ok(c) => {
                tracing::warn!(
                    front = front.name,
                    uid = c.uid(),
                    "refused a connection from another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(front = front.name, error = %e, "cannot tell who connected; refused");
                continue;
            }
        }
        serve_connection(stream, &front, None, &graceful, permit);
    }
}

/// Accepts on a TCP socket until `stop` says so; every request needs `token`.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    front: Front,
    token: Arc<Token>,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    let slots = Arc::new(Semaphore::new(front.max_connections));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("never closed"),
            _ = stop.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(front = front.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        serve_connection(stream, &front, Some(Arc::clone(&token)), &graceful, permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        let t = Token(Zeroizing::new(b"s3cret-token".to_vec()));
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(authorised(&t, Some(&h("Bearer s3cret-token"))));
        assert!(!authorised(&t, Some(&h("Bearer s3cret-toke"))));
        assert!(!authorised(&t, Some(&h("Bearer s3cret-token2"))));
        assert!(!authorised(&t, Some(&h("bearer s3cret-token"))));
        assert!(!authorised(&t, Some(&h("s3cret-token"))));
        assert!(!authorised(&t, None));
    }
}
