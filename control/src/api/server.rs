//! The admin API server (axum), serving the daemon's [`State`].

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Path as AxPath;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use tokio::net::{TcpListener, UnixListener};

use super::listen::{self, Limits, TcpAccess};
use super::{ApiError, EndpointInfo, FdbEntry, NetworkInfo, NodeInfo, Status, WriteOk};
use crate::state::State;
pub use crate::status::build_status;
use crate::store::{StoreError, Write};
use serde_json::Value;
use std::net::Ipv4Addr;
use vxmesh_dataplane::mesh::service::ServiceStatus;

type Shared = Arc<State>;

/// The routes, over the daemon state.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/networks", get(networks).post(network_create))
        .route("/v1/networks/{name}", delete(network_rm))
        .route("/v1/endpoints", post(endpoint_create))
        .route("/v1/endpoints/{network}/{ip}", delete(endpoint_rm))
        .route("/v1/nodes", get(nodes))
        .route("/v1/fdb", get(fdb))
        .route("/v1/services", get(services).post(service_create))
        .route(
            "/v1/services/{name}",
            patch(service_update).delete(service_rm),
        )
        .route("/v1/attachments", get(attachments).post(attachment_add))
        .route("/v1/attachments/check", post(attachment_check))
        .route("/v1/attachments/{key}", delete(attachment_del))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ApiError {
            error:
                "no such resource; see /v1/status, /v1/networks, /v1/nodes, /v1/fdb, /v1/services"
                    .into(),
        }),
    )
        .into_response()
}

/// Serves the API on the unix socket until the future resolves: every
/// resource, within [`Limits::UNIX`].
pub async fn serve_unix(
    l: UnixListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(l, router(state), Limits::UNIX, shutdown).await
}

/// Serves the API on a loopback TCP listener until the future resolves:
/// reads for anyone whose Host header names the listener, writes only with
/// the token (see [`TcpAccess`]), within [`Limits::TCP`].
pub async fn serve_tcp(
    l: TcpListener,
    state: Shared,
    access: TcpAccess,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routes = router(state).layer(axum::middleware::from_fn_with_state(
        Arc::new(access),
        listen::tcp_guard,
    ));
    listen::serve(l, routes, Limits::TCP, shutdown).await
}

async fn status(AxState(st): AxState<Shared>) -> Json<Status> {
    Json(build_status(&st))
}

async fn networks(AxState(st): AxState<Shared>) -> Json<Vec<NetworkInfo>> {
    let inner = st.inner.lock().expect("state lock poisoned");
    let c = &inner.cluster;
    Json(
        c.networks
            .iter()
            .map(|n| {
                let members = c.members(n);
                NetworkInfo {
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet.to_string(),
                    mtu: n.mtu,
                    learning: n.learning,
                    encrypted: n.encrypted,
                    local: members.iter().any(|m| m.name == st.node),
                    nodes: members.iter().map(|m| m.name.clone()).collect(),
                    endpoints: c
                        .endpoints_of(&n.name)
                        .map(|e| EndpointInfo {
                            ip: e.ip.to_string(),
                            mac: e.mac.to_string(),
                            node: e.node.clone(),
                            name: e.name.clone(),
                            container: e.container.clone(),
                            service: e.service.clone(),
                        })
                        .collect(),
                }
            })
            .collect(),
    )
}

async fn nodes(AxState(st): AxState<Shared>) -> Json<Vec<NodeInfo>> {
    let inner = st.inner.lock().expect("state lock poisoned");
    let c = &inner.cluster;
    Json(
        c.nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                address: n.address.to_string(),
                local: n.name == st.node,
                networks: c.networks_of(&n.name).map(|x| x.name.clone()).collect(),
                state: match st.store {
                    crate::store::Store::File(_) => "static".into(),
                    crate::store::Store::Etcd(_) => "up".into(),
                },
            })
            .chain(st.store.down_nodes().into_iter().map(|name| NodeInfo {
                name,
                address: String::new(),
                local: false,
                networks: Vec::new(),
                state: "down".into(),
            }))
            .collect(),
    )
}

async fn fdb(AxState(st): AxState<Shared>) -> Json<Vec<FdbEntry>> {
    let (tables, owners) = {
        let inner = st.inner.lock().expect("state lock poisoned");
        let owners: std::collections::HashMap<Ipv4Addr, String> = inner
            .cluster
            .nodes
            .iter()
            .map(|n| (n.address, n.name.clone()))
            .collect();
        (inner.dataplane.tables(), owners)
    };
    let owner = |vtep: &Ipv4Addr| owners.get(vtep).cloned();
    let now = Instant::now();
    let mut rows = Vec::new();
    for n in &tables.networks {
        let mut stat: Vec<_> = n.fdb.iter().collect();
        stat.sort();
        rows.extend(stat.into_iter().map(|(mac, vtep)| FdbEntry {
            network: n.name.clone(),
            mac: mac.to_string(),
            vtep: vtep.to_string(),
            node: owner(vtep),
            kind: "static".into(),
            age_s: None,
        }));
        let mut learned = n.learned.entries(now);
        learned.sort_by_key(|e| e.0);
        rows.extend(learned.into_iter().map(|(mac, vtep, age)| FdbEntry {
            network: n.name.clone(),
            mac: mac.to_string(),
            vtep: vtep.to_string(),
            node: owner(&vtep),
            kind: "learned".into(),
            age_s: Some(age.as_secs_f64()),
        }));
    }
    Json(rows)
}

async fn services(AxState(st): AxState<Shared>) -> Json<Vec<ServiceStatus>> {
    Json(st.inner.lock().expect("state lock poisoned").mesh.status())
}

async fn metrics(AxState(st): AxState<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&st),
    )
        .into_response()
}

/// The answer to a failed write: 403 when the file is the source of truth,
/// 404 no such object, 409 already exists, 400 invalid, 503 store away.
fn store_error(e: StoreError) -> Response {
    let code = match &e {
        StoreError::ReadOnly(_) => READ_ONLY,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Exists(_) => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Duplicate(_) => StatusCode::CONFLICT,
        StoreError::Etcd(_) | StoreError::Unavailable(_) | StoreError::Refused(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (
        code,
        Json(ApiError {
            error: e.to_string(),
        }),
    )
        .into_response()
}

/// Writes refused because the file is the source of truth.
const READ_ONLY: StatusCode = StatusCode::FORBIDDEN;

async fn write(st: &State, w: Write, ok: StatusCode) -> Response {
    match st.store.write(w).await {
        Ok(()) => (ok, Json(WriteOk::OK)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn network_create(AxState(st): AxState<Shared>, Json(spec): Json<Value>) -> Response {
    write(&st, Write::CreateNetwork(spec), StatusCode::CREATED).await
}

async fn network_rm(AxState(st): AxState<Shared>, AxPath(name): AxPath<String>) -> Response {
    write(&st, Write::RemoveNetwork(name), StatusCode::OK).await
}

async fn endpoint_create(AxState(st): AxState<Shared>, Json(spec): Json<Value>) -> Response {
    write(&st, Write::CreateEndpoint(spec), StatusCode::CREATED).await
}

async fn endpoint_rm(
    AxState(st): AxState<Shared>,
    AxPath((network, ip)): AxPath<(String, Ipv4Addr)>,
) -> Response {
    write(&st, Write::RemoveEndpoint { network, ip }, StatusCode::OK).await
}

async fn service_create(AxState(st): AxState<Shared>, Json(spec): Json<Value>) -> Response {
    write(&st, Write::CreateService(spec), StatusCode::CREATED).await
}

async fn service_update(
    AxState(st): AxState<Shared>,
    AxPath(name): AxPath<String>,
    Json(patch): Json<Value>,
) -> Response {
    write(&st, Write::UpdateService { name, patch }, StatusCode::OK).await
}

async fn service_rm(AxState(st): AxState<Shared>, AxPath(name): AxPath<String>) -> Response {
    write(&st, Write::RemoveService(name), StatusCode::OK).await
}

/// The answer to a failed attachment: 404 unknown network, 409 no address
/// left or the address is taken, 400 otherwise (503 when etcd is away).
fn attach_error(e: crate::attach::AttachError) -> Response {
    use crate::attach::AttachError as E;
    let code = match &e {
        E::UnknownNetwork(_) => StatusCode::NOT_FOUND,
        E::Exhausted { .. } | E::Unavailable { .. } => StatusCode::CONFLICT,
        E::Store(StoreError::Etcd(_) | StoreError::Unavailable(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        E::NotApplied(_) | E::Device(_) | E::StateFile(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    (
        code,
        Json(ApiError {
            error: e.to_string(),
        }),
    )
        .into_response()
}

/// This node's container endpoints.
async fn attachments(AxState(st): AxState<Shared>) -> Json<Vec<crate::attach::LocalAttachment>> {
    Json(crate::attach::local_attachments(&st))
}

/// CNI ADD: allocate, plumb and configure inside the namespace.
async fn attachment_add(
    AxState(st): AxState<Shared>,
    Json(req): Json<crate::attach::AttachRequest>,
) -> Response {
    match crate::attach::attach_into(&st, &req).await {
        Ok(a) => (StatusCode::CREATED, Json(a)).into_response(),
        Err(e) => attach_error(e),
    }
}

/// CNI CHECK.
async fn attachment_check(
    AxState(st): AxState<Shared>,
    Json(req): Json<crate::attach::AttachRequest>,
) -> Response {
    match crate::attach::check(&st, &req) {
        Ok(()) => Json(WriteOk::OK).into_response(),
        Err(e) => attach_error(e),
    }
}

/// CNI DEL (idempotent: an unknown key releases nothing and succeeds).
async fn attachment_del(AxState(st): AxState<Shared>, AxPath(key): AxPath<String>) -> Response {
    match crate::attach::detach(&st, &key).await {
        Ok(n) => Json(WriteOk {
            ok: true,
            released: Some(n),
        })
        .into_response(),
        Err(e) => attach_error(e),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
