//! Docker's plugin protocol: vxmeshd as a NetworkDriver and an IpamDriver
//! (libnetwork's "remote" API: JSON over HTTP on a unix socket in
//! `/run/docker/plugins`, discovered by name when a network first uses it).
//!
//! ```sh
//! docker network create -d vxmesh --ipam-driver vxmesh \
//!     --ipam-opt network=front --opt network=front front
//! docker run --network front --dns 10.0.9.254 --label vxmesh.service=web ...
//! ```
//!
//! The IPAM side allocates (see [`super::allocate`]): `RequestAddress`
//! registers the container's endpoint in the store, `ReleaseAddress`
//! removes it. The driver side makes the veth at `Join` (Docker moves it
//! into the container, names it `eth0` and sets the address) and deletes
//! it at `Leave`. The driver's scope is `local`: every host runs its own
//! `docker network create` for the same vxmesh network, as with any
//! plugin that does not share Docker's own cluster store. With `--docker-host`,
//! the daemon asks dockerd for each joined container's name and labels,
//! which give the endpoint its DNS name and its service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as AxPath, State as AxState};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tracing::{info, warn};

pub mod requests;

use requests::{
    address, generic, parse, pool_network, CreateNetwork, EndpointReq, NetworkRef, RequestAddress,
    RequestPool,
};
pub use requests::{decode, METHODS};

use super::{AttachError, AttachRequest};
use crate::state::State;
use crate::store::{Store, Write};

/// The address space our IPAM answers for.
pub const ADDRESS_SPACE: &str = "vxmesh";
/// Docker's request type for a network's gateway address.
const GATEWAY: &str = "com.docker.network.gateway";
/// The container label (or endpoint driver option) naming its service.
pub const SERVICE_LABEL: &str = "vxmesh.service";

/// Docker networks bound to vxmesh networks, kept in the state directory
/// so a restarted daemon still knows the networks Docker created earlier.
pub struct Plugin {
    pub name: String,
    state: Weak<State>,
    docker_host: Option<PathBuf>,
    path: PathBuf,
    networks: Mutex<BTreeMap<String, String>>,
    /// Endpoint ID -> (vxmesh network, address), from CreateEndpoint to
    /// DeleteEndpoint (Join names only the endpoint).
    endpoints: Mutex<BTreeMap<String, (String, Ipv4Addr)>>,
}

type Shared = Arc<Plugin>;

impl Plugin {
    pub fn new(
        name: &str,
        state: &Arc<State>,
        docker_host: Option<PathBuf>,
    ) -> Result<Plugin, AttachError> {
        let path = state
            .attach
            .state_dir
            .join(format!("{name}-docker-networks.json"));
        let networks = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| AttachError::StateFile(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(AttachError::StateFile(format!("{}: {e}", path.display()))),
        };
        Ok(Plugin {
            name: name.to_string(),
            state: Arc::downgrade(state),
            docker_host,
            path,
            networks: Mutex::new(networks),
            endpoints: Mutex::new(BTreeMap::new()),
        })
    }

    fn save(&self, map: &BTreeMap<String, String>) -> Result<(), AttachError> {
        let io =
            |e: std::io::Error| AttachError::StateFile(format!("{}: {e}", self.path.display()));
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(map).expect("map serialises"),
        )
        .map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    fn network_of(&self, docker_id: &str) -> Result<String, AttachError> {
        self.networks
            .lock()
            .expect("networks lock")
            .get(docker_id)
            .cloned()
            .ok_or_else(|| {
                AttachError::Invalid(format!(
                    "Docker network {docker_id} is not bound to a vxmesh network on this node (created before this daemon's state directory?)"
                ))
            })
    }
}

/// The socket path for plugin `name`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

pub fn router(p: Shared) -> Router {
    Router::new().route("/{method}", post(call)).with_state(p)
}

/// Docker's content type for plugin answers.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

async fn call(
    AxState(p): AxState<Shared>,
    AxPath(method): AxPath<String>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let out = match p.state.upgrade() {
        None => Err(AttachError::Invalid("vxmeshd is stopping".into())),
        Some(st) => dispatch(&p, &st, &method, &body).await,
    };
    // Docker's plugin client reads `Err` from an answer that is not 200
    // (and some of its callers ignore it in a 200).
    let (code, v) = match out {
        Ok(v) => (axum::http::StatusCode::OK, v),
        Err(e) => {
            warn!(plugin = %p.name, %method, error = %e, "docker plugin call refused");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "Err": format!("vxmesh: {e}") }),
            )
        }
    };
    (
        code,
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        Json(v),
    )
        .into_response()
}

/// The vxmesh network a request means: the `network` option, else the one
/// whose subnet is `pool`.
fn resolve(
    st: &State,
    opts: &BTreeMap<String, String>,
    pool: &str,
) -> Result<Option<String>, AttachError> {
    if let Some(n) = opts.get("network") {
        return Ok(Some(n.clone()));
    }
    if pool.is_empty() {
        return Err(AttachError::Invalid(
            "say which vxmesh network: --opt network=NAME and --ipam-opt network=NAME, or --subnet of an existing vxmesh network".into(),
        ));
    }
    let inner = st.inner.lock().expect("state lock poisoned");
    Ok(inner
        .cluster
        .networks
        .iter()
        .find(|n| n.subnet.to_string() == pool)
        .map(|n| n.name.clone()))
}

async fn dispatch(
    p: &Plugin,
    st: &Arc<State>,
    method: &str,
    body: &[u8],
) -> Result<Value, AttachError> {
    match method {
        "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "NetworkDriver.GetCapabilities" => {
            Ok(json!({ "Scope": "local", "ConnectivityScope": "global" }))
        }
        "NetworkDriver.CreateNetwork" => create_network(p, st, parse(body)?),
        "NetworkDriver.DeleteNetwork" => {
            let r: NetworkRef = parse(body)?;
            let mut map = p.networks.lock().expect("networks lock");
            if map.remove(&r.network_id).is_some() {
                p.save(&map)?;
            }
            Ok(json!({}))
        }
        "NetworkDriver.CreateEndpoint" => create_endpoint(p, st, parse(body)?).await,
        "NetworkDriver.DeleteEndpoint" => {
            let r: EndpointReq = parse(body)?;
            super::unplumb(&format!("docker:{}", r.endpoint_id))?;
            p.endpoints
                .lock()
                .expect("endpoints lock")
                .remove(&r.endpoint_id);
            Ok(json!({}))
        }
        "NetworkDriver.EndpointOperInfo" => Ok(json!({ "Value": {} })),
        "NetworkDriver.Join" => join(p, st, parse(body)?).await,
        "NetworkDriver.Leave" => {
            let r: EndpointReq = parse(body)?;
            super::unplumb(&format!("docker:{}", r.endpoint_id))?;
            Ok(json!({}))
        }
        "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete" => Ok(json!({})),
        "IpamDriver.GetCapabilities" => Ok(json!({ "RequiresMACAddress": false })),
        "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
            "LocalDefaultAddressSpace": ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": ADDRESS_SPACE,
        })),
        "IpamDriver.RequestPool" => request_pool(st, parse(body)?).await,
        "IpamDriver.ReleasePool" => Ok(json!({})),
        "IpamDriver.RequestAddress" => request_address(st, parse(body)?).await,
        "IpamDriver.ReleaseAddress" => {
            let r: RequestAddress = parse(body)?;
            let net = pool_network(&r.pool_id)?;
            let ip = address(&r.address)?;
            super::release(st, net, ip, None).await?;
            Ok(json!({}))
        }
        other => Err(AttachError::Invalid(format!("unknown call {other}"))),
    }
}

/// Binds a Docker network to a vxmesh network (the IPAM pool must be ours
/// and match its subnet).
fn create_network(p: &Plugin, st: &State, r: CreateNetwork) -> Result<Value, AttachError> {
    if !r.ipv6_data.is_empty() {
        return Err(AttachError::Invalid(
            "IPv6 is not supported on vxmesh networks".into(),
        ));
    }
    let Some(v4) = r.ipv4_data.first() else {
        return Err(AttachError::Invalid("the network has no IPv4 pool".into()));
    };
    if v4.address_space != ADDRESS_SPACE {
        return Err(AttachError::Invalid(format!(
            "addresses must come from vxmesh's IPAM: add --ipam-driver {} (got address space `{}`)",
            p.name, v4.address_space
        )));
    }
    let name = resolve(st, &generic(&r.options), &v4.pool)?.ok_or_else(|| {
        AttachError::Invalid(format!("no vxmesh network has the subnet {}", v4.pool))
    })?;
    let (net, _) = super::attachable(st, &name)?;
    if net.subnet.to_string() != v4.pool {
        return Err(AttachError::Invalid(format!(
            "the subnet {} does not match vxmesh network `{name}`'s {}",
            v4.pool, net.subnet
        )));
    }
    let mut map = p.networks.lock().expect("networks lock");
    map.insert(r.network_id.clone(), name.clone());
    p.save(&map)?;
    info!(docker_network = %r.network_id, network = %name, "docker network bound");
    Ok(json!({}))
}

/// A free VNI for a network created through Docker: FNV-1a of the name in
/// 4096..=16777215, walking up past VNIs in use.
fn free_vni(st: &State, name: &str) -> u32 {
    let used: std::collections::HashSet<u32> = match &st.store {
        Store::Etcd(e) => e.with_snapshot(|s| {
            s.kind("networks")
                .filter_map(|(_, v)| v.get("vni").and_then(Value::as_u64).map(|v| v as u32))
                .collect()
        }),
        Store::File(_) => Default::default(),
    };
    let span = 16_777_215 - 4096 + 1;
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    (0..span)
        .map(|k| 4096 + (h % span + k) % span)
        .find(|v| !used.contains(v))
        .unwrap_or(4096)
}

async fn request_pool(st: &State, r: RequestPool) -> Result<Value, AttachError> {
    if r.v6 {
        return Err(AttachError::Invalid(
            "IPv6 is not supported on vxmesh networks".into(),
        ));
    }
    let name = match resolve(st, &r.options, &r.pool)? {
        Some(n) => n,
        None => {
            return Err(AttachError::Invalid(format!(
                "no vxmesh network has the subnet {}; name one with --ipam-opt network=NAME",
                r.pool
            )))
        }
    };
    let exists = st
        .inner
        .lock()
        .expect("state lock poisoned")
        .cluster
        .network(&name)
        .is_some()
        || matches!(&st.store, Store::Etcd(e) if e.with_snapshot(|s| s.docs.contains_key(&crate::store::doc::network_key(&name))));
    if !exists {
        // On etcd, a network Docker names with a subnet is created.
        if r.pool.is_empty() || !matches!(st.store, Store::Etcd(_)) {
            return Err(AttachError::UnknownNetwork(name));
        }
        let vni = match r.options.get("vni") {
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| AttachError::Invalid(format!("vni `{v}` is not a number")))?,
            None => free_vni(st, &name),
        };
        let spec = json!({ "name": name, "vni": vni, "subnet": r.pool, "attachable": true });
        match st.store.write(Write::CreateNetwork(spec)).await {
            Ok(()) | Err(crate::store::StoreError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        info!(network = %name, vni, subnet = %r.pool, "network created for docker");
    }
    // The network may come from the store a moment after its write.
    let net = st
        .inner
        .lock()
        .expect("state lock poisoned")
        .cluster
        .network(&name)
        .cloned();
    let subnet = match net {
        Some(n) if !n.attachable => return Err(AttachError::NotAttachable(name)),
        Some(n) => n.subnet.to_string(),
        None => r.pool.clone(),
    };
    if !r.pool.is_empty() && r.pool != subnet {
        return Err(AttachError::Invalid(format!(
            "the subnet {} does not match vxmesh network `{name}`'s {subnet}",
            r.pool
        )));
    }
    Ok(json!({ "PoolID": format!("vxmesh/{name}"), "Pool": subnet, "Data": {} }))
}

async fn request_address(st: &State, r: RequestAddress) -> Result<Value, AttachError> {
    let name = pool_network(&r.pool_id)?;
    if r.options.get("RequestAddressType").map(String::as_str) == Some(GATEWAY) {
        // Docker wants a gateway; the network's DNS address is on every
        // node's bridge, so it is one the container can really reach.
        let inner = st.inner.lock().expect("state lock poisoned");
        let net = inner
            .cluster
            .network(name)
            .ok_or_else(|| AttachError::UnknownNetwork(name.to_string()))?;
        if !r.address.is_empty() && address(&r.address)? != net.dns {
            return Err(AttachError::Invalid(format!(
                "the gateway of a vxmesh network is its DNS address {}",
                net.dns
            )));
        }
        return Ok(
            json!({ "Address": format!("{}/{}", net.dns, net.subnet.prefix_len()), "Data": {} }),
        );
    }
    let ip = if r.address.is_empty() {
        None
    } else {
        Some(address(&r.address)?)
    };
    let req = AttachRequest {
        network: name.to_string(),
        container: "docker".into(),
        ip,
        mac: r
            .options
            .get("com.docker.network.endpoint.macaddress")
            .filter(|m| !m.is_empty())
            .cloned(),
        ..AttachRequest::default()
    };
    // Docker's IPAM calls carry no container: every allocation of this
    // node gets its own key from its address.
    let a = super::allocate_with(st, &req, false).await?;
    Ok(json!({ "Address": format!("{}/{}", a.ip, a.prefix), "Data": {} }))
}

async fn create_endpoint(p: &Plugin, st: &State, r: EndpointReq) -> Result<Value, AttachError> {
    let net = p.network_of(&r.network_id)?;
    let iface = r.interface.unwrap_or_default();
    let ip = address(&iface.address)?;
    let a = super::local_attachments(st)
        .into_iter()
        .find(|a| a.network == net && a.ip == ip)
        .ok_or_else(|| {
            AttachError::Invalid(format!(
                "{ip} was not allocated by vxmesh on this node (use --ipam-driver {})",
                p.name
            ))
        })?;
    let svc = r
        .options
        .get(SERVICE_LABEL)
        .and_then(Value::as_str)
        .map(str::to_string);
    if svc.is_some() {
        super::label(st, &net, ip, a.name.as_deref(), svc.as_deref()).await?;
    }
    p.endpoints
        .lock()
        .expect("endpoints lock")
        .insert(r.endpoint_id.clone(), (net.clone(), ip));
    if iface.mac_address.is_empty() {
        Ok(json!({ "Interface": { "MacAddress": a.mac } }))
    } else {
        if iface.mac_address.to_lowercase() != a.mac {
            return Err(AttachError::Invalid(format!(
                "a vxmesh endpoint's MAC follows its address ({}); drop --mac-address",
                a.mac
            )));
        }
        Ok(json!({}))
    }
}

async fn join(p: &Plugin, st: &Arc<State>, r: EndpointReq) -> Result<Value, AttachError> {
    let Some((net, ip)) = p
        .endpoints
        .lock()
        .expect("endpoints lock")
        .get(&r.endpoint_id)
        .cloned()
    else {
        return Err(AttachError::Invalid(format!(
            "endpoint {} was not created through this daemon",
            r.endpoint_id
        )));
    };
    let a = super::local_attachments(st)
        .into_iter()
        .find(|a| a.network == net && a.ip == ip)
        .ok_or_else(|| AttachError::Invalid(format!("{ip} is not allocated on this node")))?;
    let (n, _) = super::attachable(st, &net)?;
    let mac = a
        .mac
        .parse()
        .unwrap_or(vxmesh_dataplane::wire::MacAddr::from_ipv4(a.ip));
    let resp = super::response(&n, a.ip, mac);
    let v = super::plumb(st, &resp, &format!("docker:{}", r.endpoint_id)).await?;
    if let Some(docker) = p.docker_host.clone() {
        let st = Arc::downgrade(st);
        let eid = r.endpoint_id.clone();
        tokio::spawn(async move { name_endpoint(st, docker, eid, net, ip).await });
    }
    Ok(json!({
        "InterfaceName": { "SrcName": v.peer, "DstPrefix": "eth" },
        "DisableGatewayService": true,
    }))
}

/// How long a joined endpoint's container is looked for in dockerd (it
/// shows in the network only once Docker has finished the join).
const NAME_WAIT: Duration = Duration::from_secs(30);

/// Asks dockerd for the container behind endpoint `eid` and gives the endpoint the container's name and its
/// `vxmesh.service` label.
async fn name_endpoint(st: Weak<State>, docker: PathBuf, eid: String, net: String, ip: Ipv4Addr) {
    let deadline = tokio::time::Instant::now() + NAME_WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // The container list carries every container's endpoints, name and
    // labels in one answer, and takes no container's lock (an inspect waits
    // for a container that is still starting). Each ask is bounded: a call
    // dockerd does not answer is asked again, never waited on for good.
    let (name, labels) = loop {
        tick.tick().await;
        if tokio::time::Instant::now() > deadline {
            warn!(endpoint = %eid, "dockerd never showed the container of this endpoint; it has no DNS name or service");
            return;
        }
        let ask = crate::unix_http::get::<Value>(&docker, "/containers/json?all=1");
        let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(2), ask).await else {
            continue;
        };
        let hit = list.as_array().and_then(|cs| {
            cs.iter().find(|c| {
                c.pointer("/NetworkSettings/Networks")
                    .and_then(Value::as_object)
                    .is_some_and(|nets| {
                        nets.values()
                            .any(|n| n.get("EndpointID").and_then(Value::as_str) == Some(&eid))
                    })
            })
        });
        if let Some(c) = hit {
            let name = c
                .pointer("/Names/0")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            break (name, c.get("Labels").cloned());
        }
    };
    let service = labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(st) = st.upgrade() else { return };
    let name = (!name.is_empty()).then_some(name);
    match super::label(&st, &net, ip, name.as_deref(), service.as_deref()).await {
        Ok(()) => {
            info!(network = %net, %ip, name = ?name, service = ?service, "container endpoint named")
        }
        Err(e) => warn!(network = %net, %ip, error = %e, "naming the container endpoint failed"),
    }
}

/// Serves the plugin on `/run/docker/plugins/<name>.sock` (or `dir`) until
/// `shutdown`; the socket is removed at the end.
pub async fn serve(
    plugin: Plugin,
    dir: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(tokio::task::JoinHandle<()>, std::os::fd::OwnedFd)> {
    use std::os::fd::AsFd;
    let path = socket_path(dir, &plugin.name);
    let inherited = vxmesh_dataplane::io::inherit::take(&inherit_name(&plugin.name));
    let l = match inherited {
        // A predecessor's socket, still at the path: keep serving it.
        Some(fd) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)?
        }
        None => {
            std::fs::create_dir_all(dir)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let l = tokio::net::UnixListener::bind(&path)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            l
        }
    };
    let fd = l.as_fd().try_clone_to_owned()?;
    info!(socket = %path.display(), "docker plugin listening");
    let app = router(Arc::new(plugin));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).with_graceful_shutdown(shutdown).await {
            warn!(error = %e, "docker plugin server stopped");
        }
        // A successor serves this very socket: the path stays.
        if !crate::state::handed_over() {
            let _ = std::fs::remove_file(&path);
        }
    });
    Ok((task, fd))
}

/// The plugin socket's name among handed-over descriptors.
pub fn inherit_name(plugin: &str) -> String {
    format!("docker/{plugin}")
}
