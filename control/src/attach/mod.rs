//! Containers on the overlay: address allocation, endpoint registration
//! and the veth that hangs a container off its network's bridge. One core
//! serves both runtime interfaces: Docker's plugin protocol ([`docker`])
//! and the CNI plugin (`vxmesh-cni`, through `/v1/attachments`).
//!
//! Life of an attachment:
//! 1. **allocate**: a free address of the network (never the DNS address or
//!    the VIP pool) becomes an endpoint of this node with a `container`
//!    key: with etcd an endpoint document created with a compare-and-swap
//!    (a lost race retries the next address), with the cluster file an
//!    entry in this node's state file from the node's own `pools` range.
//!    Every node's reconcile then installs a static forwarding entry and
//!    answers ARP for it; nothing floods to find a container.
//! 2. **plumb**: a veth pair, the host end a port of the network's bridge
//!    (`vxb-<network>`, which also holds the TAP), the other end handed to
//!    the runtime (Docker moves it itself) or moved into the container's
//!    namespace, renamed and addressed (CNI).
//! 3. **release**: the endpoint goes from the store (every node drops it at
//!    once) and the veth is deleted.

pub mod docker;
mod own;
mod plumb;

pub use own::ensure_own_addresses;
use own::{cas_create, has_host_address, own_address};
use plumb::wait_applied;
pub use plumb::{attach_into, check, detach, plumb, unplumb};

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vxmesh_dataplane::wire::MacAddr;

use crate::ipam::{self, Attachment};
use crate::model::Network;
pub use crate::state::attachments::Attach;
use crate::state::State;
use crate::store::{Store, StoreError, Write};

/// Most addresses tried before an allocation gives up on lost races.
const MAX_TRIES: usize = 64;
/// How long plumbing waits for this node to apply its own new endpoint
/// (the bridge exists only once the node is a member of the network).
const APPLY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("vxmesh network `{0}` does not exist")]
    UnknownNetwork(String),
    #[error("vxmesh network `{0}` is not attachable: set `attachable = true` on it (cluster file) or create it with `vxmesh network create --attachable`")]
    NotAttachable(String),
    #[error("vxmesh network `{network}`: no free address left for a container in {range} ({capacity} usable outside the DNS address and the VIP pool, all in use)")]
    Exhausted {
        network: String,
        range: String,
        capacity: usize,
    },
    #[error("vxmesh network `{network}`: this node has no range in its `pools` (the cluster file gives each node one to allocate from)")]
    NoPool { network: String },
    #[error("vxmesh network `{network}`: {ip} {why}")]
    Unavailable {
        network: String,
        ip: Ipv4Addr,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("this node did not apply the change within {0:?} (see its log: was the store's state rejected?)")]
    NotApplied(Duration),
    #[error("{0}")]
    Device(#[from] std::io::Error),
    #[error("the state file: {0}")]
    StateFile(String),
}

/// What a runtime asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The vxmesh network.
    pub network: String,
    /// The attachment's key, unique on the node (`cni:<id>/<ifname>`).
    pub container: String,
    /// A static address (`docker run --ip`, CNI `IP=`).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// A MAC the runtime chose; default `02:42:<ip>`.
    #[serde(default)]
    pub mac: Option<String>,
    /// The container's name (answered by the network's DNS).
    #[serde(default)]
    pub name: Option<String>,
    /// The service the container is a task of.
    #[serde(default)]
    pub service: Option<String>,
    /// CNI: the container's network namespace and interface name; the
    /// daemon moves the veth there and configures it.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub ifname: Option<String>,
}

/// What the runtime gets back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachResponse {
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
    pub mtu: u16,
    pub dns: Ipv4Addr,
    pub domain: String,
    /// The veth: host end and (before the runtime moves it) container end.
    #[serde(default)]
    pub host_ifname: Option<String>,
    #[serde(default)]
    pub ifname: Option<String>,
}

/// One endpoint allocated for a container on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalAttachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub container: String,
    pub name: Option<String>,
    pub service: Option<String>,
}

/// The network `name` as this node runs it, checked for attaching.
fn attachable(st: &State, name: &str) -> Result<(Network, HashSet<Ipv4Addr>), AttachError> {
    let inner = st.inner.lock().expect("state lock poisoned");
    let net = inner
        .cluster
        .network(name)
        .cloned()
        .ok_or_else(|| AttachError::UnknownNetwork(name.to_string()))?;
    if !net.attachable {
        return Err(AttachError::NotAttachable(name.to_string()));
    }
    let mut taken: HashSet<Ipv4Addr> = inner.cluster.endpoints_of(name).map(|e| e.ip).collect();
    if let Store::Etcd(e) = &st.store {
        // Declared endpoints of nodes that are down hold their address too.
        e.with_snapshot(|snap| {
            for (_, spec) in snap.kind("endpoints") {
                if spec.get("network").and_then(Value::as_str) == Some(name) {
                    if let Some(ip) = spec
                        .get("ip")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                    {
                        taken.insert(ip);
                    }
                }
            }
        });
    }
    Ok((net, taken))
}

/// This node's container endpoints, from what it runs.
pub fn local_attachments(st: &State) -> Vec<LocalAttachment> {
    let inner = st.inner.lock().expect("state lock poisoned");
    inner
        .cluster
        .endpoints
        .iter()
        .filter(|e| e.node == st.node && e.container.is_some())
        .map(|e| LocalAttachment {
            network: e.network.clone(),
            ip: e.ip,
            mac: e.mac.to_string(),
            container: e.container.clone().unwrap_or_default(),
            name: e.name.clone(),
            service: e.service.clone(),
        })
        .collect()
}

fn response(net: &Network, ip: Ipv4Addr, mac: MacAddr) -> AttachResponse {
    AttachResponse {
        network: net.name.clone(),
        ip,
        prefix: net.subnet.prefix_len(),
        mac: mac.to_string(),
        mtu: net.mtu,
        dns: net.dns,
        domain: net.domain.clone(),
        host_ifname: None,
        ifname: None,
    }
}

/// Allocates an address for `req` and registers its endpoint. Asking again
/// for a container key that already holds an address of the network
/// returns that address (runtimes retry).
pub async fn allocate(st: &State, req: &AttachRequest) -> Result<AttachResponse, AttachError> {
    allocate_with(st, req, true).await
}

/// [`allocate`], with `reuse = false` for callers whose key is not unique
/// per container (Docker's IPAM calls name no container).
pub async fn allocate_with(
    st: &State,
    req: &AttachRequest,
    reuse: bool,
) -> Result<AttachResponse, AttachError> {
    let _one = st.attach.alloc.lock().await;
    let (net, taken) = attachable(st, &req.network)?;
    if let Some(a) = local_attachments(st)
        .into_iter()
        .find(|a| reuse && a.network == req.network && a.container == req.container)
    {
        let mac = a.mac.parse().unwrap_or(MacAddr::from_ipv4(a.ip));
        return Ok(response(&net, a.ip, mac));
    }
    let mac_req = match &req.mac {
        Some(m) => Some(
            m.parse::<MacAddr>()
                .map_err(|e| AttachError::Invalid(format!("mac `{m}`: {e}")))?,
        ),
        None => None,
    };
    let shared = matches!(st.store, Store::Etcd(_));
    let range = ipam::range_for(&net, &st.node, shared).ok_or_else(|| AttachError::NoPool {
        network: net.name.clone(),
    })?;
    let tries: Vec<Ipv4Addr> = match req.ip {
        Some(ip) => {
            let why = if !net.subnet.contains(&ip) {
                Some(format!("is outside the subnet {}", net.subnet))
            } else if !net.allocatable(ip) {
                Some(
                    "is reserved (the network's own, broadcast or DNS address, or the VIP pool)"
                        .to_string(),
                )
            } else if !range.net().contains(&ip) {
                Some(format!("is outside this node's pool {}", range.net()))
            } else if taken.contains(&ip) {
                Some("is already in use".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                return Err(AttachError::Unavailable {
                    network: net.name.clone(),
                    ip,
                    why,
                });
            }
            vec![ip]
        }
        None => ipam::candidates(&net, &range, &st.node, &taken),
    };
    let exhausted = || AttachError::Exhausted {
        network: net.name.clone(),
        range: range.net().to_string(),
        capacity: ipam::capacity(&net, &range),
    };
    match &st.store {
        Store::Etcd(_) => {
            let mut taken = taken;
            if !has_host_address(st, &net.name) {
                let got = own_address(st, &net, &range, &taken, req.ip)
                    .await?
                    .ok_or_else(exhausted)?;
                taken.insert(got);
            }
            let tries: Vec<Ipv4Addr> = match req.ip {
                Some(ip) => vec![ip],
                None => ipam::candidates(&net, &range, &st.node, &taken),
            };
            let (name, key) = (net.name.as_str(), req.container.as_str());
            let got = cas_create(
                st,
                &net.name,
                tries,
                |ip| {
                    let mac = mac_req.unwrap_or(MacAddr::from_ipv4(ip));
                    let mut spec = json!({
                        "network": net.name, "node": st.node, "ip": ip.to_string(),
                        "mac": mac.to_string(), "container": req.container,
                    });
                    if let Some(n) = &req.name {
                        spec["name"] = json!(n);
                    }
                    if let Some(s) = &req.service {
                        spec["service"] = json!(s);
                    }
                    spec
                },
                // Allocated means this node runs the endpoint: the
                // runtime's next call (Docker's CreateEndpoint, the veth on
                // the bridge) finds it.
                |st, ip| {
                    local_attachments(st)
                        .iter()
                        .any(|a| a.network == name && a.ip == ip && a.container == key)
                },
            )
            .await?;
            match (got, req.ip) {
                (Some(ip), _) => Ok(response(
                    &net,
                    ip,
                    mac_req.unwrap_or(MacAddr::from_ipv4(ip)),
                )),
                (None, Some(ip)) => Err(AttachError::Unavailable {
                    network: net.name.clone(),
                    ip,
                    why: "was taken meanwhile".into(),
                }),
                (None, None) => Err(exhausted()),
            }
        }
        Store::File(_) => {
            let Some(ip) = tries.first().copied() else {
                return Err(exhausted());
            };
            let mac = mac_req.unwrap_or(MacAddr::from_ipv4(ip));
            edit_local(st, |list| {
                list.push(Attachment {
                    network: net.name.clone(),
                    ip,
                    mac: mac.to_string(),
                    container: req.container.clone(),
                    name: req.name.clone(),
                    service: req.service.clone(),
                });
            })?;
            Ok(response(&net, ip, mac))
        }
    }
}

/// Changes this node's state file and applies the result.
fn edit_local(st: &State, f: impl FnOnce(&mut Vec<Attachment>)) -> Result<(), AttachError> {
    {
        let mut guard = st.attach.local.lock().expect("allocations lock");
        let local = guard
            .as_mut()
            .ok_or_else(|| AttachError::Invalid("no state file with this store".into()))?;
        let mut list = local.list().to_vec();
        f(&mut list);
        local
            .store(list)
            .map_err(|e| AttachError::StateFile(e.to_string()))?;
    }
    st.reload()
        .map_err(|e| AttachError::Invalid(e.to_string()))?;
    Ok(())
}

/// Releases the endpoint at `ip` of `network` if this node allocated it
/// for a container (and `container`, when given, is its key). Releasing
/// what is not there is no error: runtimes repeat their cleanups.
pub async fn release(
    st: &State,
    network: &str,
    ip: Ipv4Addr,
    container: Option<&str>,
) -> Result<bool, AttachError> {
    let mine = local_attachments(st).into_iter().chain(
        // Allocations of the state file that a reload left out are ours too.
        st.attach.local_list().into_iter().map(|a| LocalAttachment {
            network: a.network,
            ip: a.ip,
            mac: a.mac,
            container: a.container,
            name: a.name,
            service: a.service,
        }),
    );
    let found = mine
        .filter(|a| a.network == network && a.ip == ip)
        .any(|a| container.is_none_or(|c| c == a.container));
    if !found && !etcd_owns(st, network, ip, container) {
        return Ok(false);
    }
    match &st.store {
        Store::Etcd(_) => {
            match st
                .store
                .write(Write::RemoveEndpoint {
                    network: network.to_string(),
                    ip,
                })
                .await
            {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Store::File(_) => edit_local(st, |list| {
            list.retain(|a| !(a.network == network && a.ip == ip));
        })?,
    }
    Ok(true)
}

/// With etcd, an endpoint document of this node with a container key (one
/// this node's reconcile left out, for example because its network went
/// away and came back) is this node's to release too.
fn etcd_owns(st: &State, network: &str, ip: Ipv4Addr, container: Option<&str>) -> bool {
    let Store::Etcd(e) = &st.store else {
        return false;
    };
    let key = crate::store::doc::endpoint_key(network, ip);
    e.with_snapshot(|snap| {
        snap.docs.get(&key).is_some_and(|d| {
            let c = d.spec.get("container").and_then(Value::as_str);
            d.spec.get("node").and_then(Value::as_str) == Some(st.node.as_str())
                && c.is_some()
                && container.is_none_or(|want| c == Some(want))
        })
    })
}

/// Releases every endpoint of container key `container` on this node.
pub async fn release_container(st: &State, container: &str) -> Result<usize, AttachError> {
    let mut n = 0;
    let all: Vec<(String, Ipv4Addr)> = local_attachments(st)
        .into_iter()
        .filter(|a| a.container == container)
        .map(|a| (a.network, a.ip))
        .chain(
            st.attach
                .local_list()
                .into_iter()
                .filter(|a| a.container == container)
                .map(|a| (a.network, a.ip)),
        )
        .collect();
    for (net, ip) in all {
        if release(st, &net, ip, Some(container)).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// Sets the name and (or) the service of a container's endpoint; `None`
/// leaves that one as it is.
pub async fn label(
    st: &State,
    network: &str,
    ip: Ipv4Addr,
    name: Option<&str>,
    service: Option<&str>,
) -> Result<(), AttachError> {
    match &st.store {
        Store::Etcd(_) => {
            let mut patch = json!({});
            if let Some(n) = name {
                patch["name"] = json!(n);
            }
            if let Some(s) = service {
                patch["service"] = json!(s);
            }
            st.store
                .write(Write::UpdateEndpoint {
                    network: network.to_string(),
                    ip,
                    patch,
                })
                .await?;
        }
        Store::File(_) => edit_local(st, |list| {
            for a in list.iter_mut() {
                if a.network == network && a.ip == ip {
                    if let Some(n) = name {
                        a.name = Some(n.to_string());
                    }
                    if let Some(s) = service {
                        a.service = Some(s.to_string());
                    }
                }
            }
        })?,
    }
    Ok(())
}
