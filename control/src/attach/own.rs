//! This node's own address in an attachable network (the source of its
//! mesh and health-check traffic there), and the compare-and-swap that
//! gives any endpoint of this node its address in etcd.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use vxmesh_dataplane::wire::MacAddr;

use super::{attachable, wait_applied, AttachError, MAX_TRIES};
use crate::ipam::{self, Range};
use crate::model::Network;
use crate::state::State;
use crate::store::{Store, StoreError, Write};

/// Allocates this node's own address in attachable network `net` (etcd
/// store): the source of its mesh and health-check traffic to tasks on
/// other nodes (the DNS address is on every node and cannot be one). Like
/// Docker's per-node load-balancer address, it stays while the node is a
/// member. `None` when the network is full.
pub(super) async fn own_address(
    st: &State,
    net: &Network,
    range: &Range,
    taken: &HashSet<Ipv4Addr>,
    avoid: Option<Ipv4Addr>,
) -> Result<Option<Ipv4Addr>, AttachError> {
    let own: Vec<Ipv4Addr> = ipam::candidates(net, range, &st.node, taken)
        .into_iter()
        .filter(|ip| Some(*ip) != avoid)
        .collect();
    cas_create(
        st,
        &net.name,
        own,
        |ip| {
            json!({
                "network": net.name, "node": st.node, "ip": ip.to_string(),
                "mac": MacAddr::from_ipv4(ip).to_string(),
            })
        },
        |st, _| has_host_address(st, &net.name),
    )
    .await
}

/// Gives this node its own address in every attachable network it is a
/// member of without one (etcd store): a member listed in a network's
/// `nodes` serves the network's published ports before any container of
/// its own attaches. Run after each applied change; what it writes comes
/// back through the watch, and then there is nothing left to do.
pub async fn ensure_own_addresses(st: &State) {
    if !matches!(st.store, Store::Etcd(_)) {
        return;
    }
    let missing: Vec<String> = {
        let inner = st.inner.lock().expect("state lock poisoned");
        // Most clusters have no attachable network: skip the membership
        // scans after every change.
        if !inner.cluster.networks.iter().any(|n| n.attachable) {
            return;
        }
        inner
            .cluster
            .networks_of(&st.node)
            .filter(|n| n.attachable && inner.cluster.host_endpoint(n, &st.node).is_none())
            .map(|n| n.name.clone())
            .collect()
    };
    for name in missing {
        let _one = st.attach.alloc.lock().await;
        let Ok((net, taken)) = attachable(st, &name) else {
            continue;
        };
        if has_host_address(st, &name) {
            continue;
        }
        let range = Range::Shared(net.subnet);
        match own_address(st, &net, &range, &taken, None).await {
            Ok(Some(ip)) => tracing::info!(network = %name, %ip, "this node's own address"),
            Ok(None) => tracing::warn!(network = %name, "no address left for this node's own"),
            Err(e) => {
                tracing::warn!(network = %name, error = %e, "allocating this node's own address failed")
            }
        }
    }
}

/// True when this node has an address of its own (not a container's) in
/// `network`.
pub(super) fn has_host_address(st: &State, network: &str) -> bool {
    let inner = st.inner.lock().expect("state lock poisoned");
    inner
        .cluster
        .network(network)
        .is_some_and(|n| inner.cluster.host_endpoint(n, &st.node).is_some())
}

/// Creates the endpoint `spec(ip)` for the first address of `tries` that
/// no one else takes first (compare-and-swap in etcd), then waits until
/// this node runs it (`applied`). `None` when every try was taken.
pub(super) async fn cas_create(
    st: &State,
    network: &str,
    tries: Vec<Ipv4Addr>,
    spec: impl Fn(Ipv4Addr) -> Value,
    applied: impl Fn(&State, Ipv4Addr) -> bool,
) -> Result<Option<Ipv4Addr>, AttachError> {
    for ip in tries.into_iter().take(MAX_TRIES) {
        match st.store.write(Write::CreateEndpoint(spec(ip))).await {
            Ok(()) => {
                wait_applied(st, |st| applied(st, ip)).await?;
                tracing::info!(network, %ip, "address allocated");
                return Ok(Some(ip));
            }
            // Another node took it first: the next one.
            Err(StoreError::Exists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}
