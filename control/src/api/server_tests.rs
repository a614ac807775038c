//! The admin API's routes over a daemon that needs no root (its node is a
//! member of no network), served on a unix socket in a temporary directory
//! and asked through the CLI's own client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::oneshot;

use super::{build_status, serve_unix, store_error};
use crate::api::{client, ApiError, NetworkInfo, NodeInfo, Status, WriteOk};
use crate::daemon::{self, Options};
use crate::state::State;
use crate::store::{Store, StoreError};

fn cluster() -> crate::model::Cluster {
    crate::config::parse(
        Path::new("t.toml"),
        r#"settings = { vxlan_port = 0, source_ports = 1, queues = 1 }
nodes = [{ name = "me", address = "127.0.0.1" }, { name = "h2", address = "198.18.0.2" }]
networks = [{ name = "front", vni = 4096, subnet = "10.0.9.0/24" }]
endpoints = [{ network = "front", node = "h2", ip = "10.0.9.2", name = "db" }]
"#,
    )
    .expect("valid")
}

/// A daemon and its API on a socket; dropping the sender stops the server.
struct Served {
    st: Arc<State>,
    sock: PathBuf,
    _stop: oneshot::Sender<()>,
    dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(tag: &str) -> Served {
    let dir = std::env::temp_dir().join(format!("vxmesh-api-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let opts = Options::file(
        PathBuf::from("t.toml"),
        "me",
        sock.clone(),
        dir.join("state"),
    );
    let st = daemon::start(&opts, cluster(), Store::File(opts.config.clone()))
        .expect("starts without root");
    let l = UnixListener::bind(&sock).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve_unix(l, st.clone(), async {
        let _ = rx.await;
    }));
    Served {
        st,
        sock,
        _stop: tx,
        dir,
    }
}

#[tokio::test]
async fn reads_describe_the_running_cluster() {
    let s = serve("reads").await;
    let status: Status = client::get(&s.sock, "/v1/status").await.unwrap();
    assert_eq!(status.node, "me");
    assert_eq!(status.store.backend, "file");
    assert!(status.store.connected);
    assert!(status.networks.is_empty(), "me has no TAP");
    let nets: Vec<NetworkInfo> = client::get(&s.sock, "/v1/networks").await.unwrap();
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].nodes, ["h2"]);
    assert!(!nets[0].local);
    assert_eq!(nets[0].endpoints[0].name.as_deref(), Some("db"));
    let nodes: Vec<NodeInfo> = client::get(&s.sock, "/v1/nodes").await.unwrap();
    let me = nodes.iter().find(|n| n.name == "me").unwrap();
    assert!(me.local && me.state == "static", "{nodes:?}");
    let metrics = client::get_raw(&s.sock, "/metrics").await.unwrap();
    assert!(String::from_utf8_lossy(&metrics).contains("vxmesh_build_info"));
    assert_eq!(build_status(&s.st).node, "me");
}

#[tokio::test]
async fn writes_to_the_file_store_are_refused_with_403_and_why() {
    let s = serve("writes").await;
    let spec = serde_json::json!({ "name": "back", "vni": 4097, "subnet": "10.0.8.0/24" });
    let e = client::request(&s.sock, hyper::Method::POST, "/v1/networks", Some(&spec))
        .await
        .unwrap_err();
    let client::ClientError::Status { status, body } = e else {
        panic!("{e:?}")
    };
    assert_eq!(status, 403);
    let body: ApiError = serde_json::from_str(&body).unwrap();
    assert!(body.error.contains("source of truth"), "{}", body.error);
    let e = client::get_raw(&s.sock, "/v2/nothing").await.unwrap_err();
    assert!(
        matches!(e, client::ClientError::Status { status: 404, .. }),
        "{e:?}"
    );
}

#[test]
fn store_errors_map_to_their_status_codes() {
    use axum::http::StatusCode as S;
    let cases = [
        (StoreError::ReadOnly("f".into()), S::FORBIDDEN),
        (StoreError::NotFound("x".into()), S::NOT_FOUND),
        (StoreError::Exists("x".into()), S::CONFLICT),
        (StoreError::Duplicate("x".into()), S::CONFLICT),
        (StoreError::Invalid("x".into()), S::BAD_REQUEST),
        (StoreError::Unavailable("x".into()), S::SERVICE_UNAVAILABLE),
        (StoreError::Refused("x".into()), S::SERVICE_UNAVAILABLE),
    ];
    for (e, want) in cases {
        assert_eq!(store_error(e).status(), want);
    }
    assert_eq!(
        serde_json::to_value(WriteOk::OK).unwrap(),
        serde_json::json!({ "ok": true })
    );
}
