//! A small HTTP/1.1 client over a unix socket: the admin API's (for the
//! CLI) and dockerd's (for the Docker driver).

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach vxmeshd at {path}: {source} (is the daemon running? see --socket)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to vxmeshd: {0}")]
    Http(#[from] hyper::Error),
    #[error("vxmeshd answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer from vxmeshd: {0}")]
    Decode(#[from] serde_json::Error),
}

/// `GET path` on the admin socket, decoded from JSON.
pub async fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, ClientError> {
    let body = get_raw(socket, path).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// `GET path` on the admin socket, the body as bytes.
pub async fn get_raw(socket: &Path, path: &str) -> Result<Vec<u8>, ClientError> {
    request(socket, Method::GET, path, None).await
}

/// `method path` with an optional JSON body; the answer's body as bytes.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Vec<u8>, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let bytes = body
        .map(|b| serde_json::to_vec(b).expect("a JSON value serialises"))
        .unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "vxmeshd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("a request with static headers is valid");
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    drop(sender);
    let _ = conn.await;
    if status >= 400 {
        return Err(ClientError::Status {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}
