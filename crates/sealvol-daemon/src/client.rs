//! A small blocking client of the daemon's unix sockets (hyper's HTTP/1 client), for tools,
//! tests and benchmarks: one request per connection.
//!
//! ```no_run
//! let c = sealvol_daemon::client::Client::new("/run/sealvol-daemon/api.sock");
//! let (status, body) = c.json("GET", "/v1/status", None)?;
//! assert_eq!(status, 200);
//! # Ok::<(), sealvol_daemon::Error>(())
//! ```

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::{Error, Result};

/// A client of one unix socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of `socket`, giving each request 10 minutes (a volume's create can take a
    /// while).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(600),
        }
    }

    /// Gives each request at most `t`.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sends `method path` with `body` (raw bytes) and returns the status and body.
    ///
    /// # Errors
    /// [`Error::Client`] when the socket does not answer, or not within the timeout.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let fail = |reason: String| Error::Client {
            context: format!("{method} {path} on {}", self.socket.display()),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let socket = self.socket.clone();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "sealvol")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| fail(e.to_string()))?;
        rt.block_on(async move {
            let go = async {
                let stream = tokio::net::UnixStream::connect(&socket)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                tokio::spawn(conn);
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .to_bytes();
                Ok((status, bytes.to_vec()))
            };
            tokio::time::timeout(self.timeout, go)
                .await
                .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
        })
    }

    /// Sends `method path` with `body` as JSON and parses the reply as JSON (`null` for an
    /// empty one).
    ///
    /// # Errors
    /// As [`Client::request`]; [`Error::Client`] for a reply that is not JSON.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let raw = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, reply) = self.request(method, path, raw.as_bytes())?;
        if reply.is_empty() {
            return Ok((status, serde_json::Value::Null));
        }
        let v = serde_json::from_slice(&reply).map_err(|e| Error::Client {
            context: format!("{method} {path}"),
            reason: format!(
                "the reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&reply)
            ),
        })?;
        Ok((status, v))
    }
}
