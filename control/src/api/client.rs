//! A small client for the admin API over its unix socket.

use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
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
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "vxmeshd")
        .body(Empty::<Bytes>::new())
        .expect("a GET request with a static header is valid");
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
