//! Endpoint announcement (etcd store, networks with `announce = true`): the
//! EVPN / Docker NetworkDB idea. The dataplane records the addresses local
//! workloads use on the TAP (see `vxmesh_dataplane::overlay::announce`);
//! every [`PERIOD`] this task publishes the new ones as endpoints owned by
//! this node (`<prefix>/endpoints/<network>/<ip>`, the same document as a
//! configured endpoint, with the MAC seen, under the node's lease) and
//! withdraws those that aged out (`ageing_s` without a frame). Every node's
//! watch then installs a static forwarding entry and answers ARP for the
//! address locally: traffic to it is never flooded.
//!
//! What is published is what passes the same checks as an operator's write
//! (a free key, a unique MAC, not a VIP or the DNS address); an address
//! already declared (configured, or another node's) is left alone. A crash
//! withdraws everything with the lease; a clean stop revokes the lease.
//! Only documents that carry this node's lease are ever withdrawn, never a
//! configured endpoint.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};
use vxmesh_dataplane::wire::MacAddr;

use crate::state::State;
use crate::store::doc::{endpoint_key, Snapshot};
use crate::store::etcd::EtcdStore;
use crate::store::StoreError;

/// How often the TAPs' tables are compared with the store.
pub const PERIOD: Duration = Duration::from_millis(250);
/// An address whose publication failed is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What to publish (seen, not in the store) and what to withdraw (announced
/// by `node` under a lease but no longer seen, or seen with another MAC) in
/// `network`.
pub fn diff(
    snap: &Snapshot,
    network: &str,
    node: &str,
    seen: &[(Ipv4Addr, MacAddr)],
) -> (Vec<(Ipv4Addr, MacAddr)>, Vec<Ipv4Addr>) {
    let prefix = format!("endpoints/{network}/");
    let field = |spec: &Value, f: &str| spec.get(f).and_then(Value::as_str).map(str::to_string);
    let ours: HashMap<Ipv4Addr, Option<String>> = snap
        .docs
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(_, d)| d.lease.is_some() && field(&d.spec, "node").as_deref() == Some(node))
        .filter_map(|(_, d)| Some((field(&d.spec, "ip")?.parse().ok()?, field(&d.spec, "mac"))))
        .collect();
    let publish = seen
        .iter()
        .filter(|(ip, _)| !snap.docs.contains_key(&endpoint_key(network, *ip)))
        .copied()
        .collect();
    let seen: HashMap<Ipv4Addr, String> = seen.iter().map(|(i, m)| (*i, m.to_string())).collect();
    let mut withdraw: Vec<Ipv4Addr> = ours
        .into_iter()
        .filter(|(ip, mac)| seen.get(ip) != mac.as_ref())
        .map(|(ip, _)| ip)
        .collect();
    withdraw.sort();
    (publish, withdraw)
}

/// Publishes and withdraws this node's workload addresses until `stop`.
pub async fn run(state: Weak<State>, store: Arc<EtcdStore>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tried: HashMap<(String, Ipv4Addr), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(st) = state.upgrade() else { return };
        let tables = st.tables();
        drop(st);
        let lease = store.lease_id();
        if lease == 0 {
            // Not registered right now: nothing can be published under it.
            continue;
        }
        let now = Instant::now();
        tried.retain(|_, t| now.saturating_duration_since(*t) < RETRY_AFTER);
        for n in &tables.networks {
            let Some(a) = &n.announce else { continue };
            for ip in a.expire(now) {
                info!(network = %n.name, %ip, "local address aged out; withdrawing it");
            }
            let seen = a.entries(now);
            let node = &store.node().name;
            let (publish, withdraw) = store.with_snapshot(|s| diff(s, &n.name, node, &seen));
            for ip in withdraw {
                if let Err(e) = store.withdraw(&n.name, ip, lease).await {
                    warn!(network = %n.name, %ip, error = %e, "withdrawing an announced address failed; retrying");
                }
            }
            for (ip, mac) in publish {
                if tried.insert((n.name.clone(), ip), now).is_some() {
                    continue;
                }
                match store.announce(&n.name, ip, mac, lease).await {
                    Ok(()) => info!(network = %n.name, %ip, %mac, "local address announced"),
                    // Declared meanwhile (by an operator, or another node).
                    Err(StoreError::Exists(_)) => {}
                    Err(e) => warn!(network = %n.name, %ip, %mac, error = %e,
                                    "local address not announced; trying again in 5 s"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Doc;
    use serde_json::json;

    const WL: MacAddr = MacAddr([2, 0xaa, 0, 0, 0, 0x32]);

    fn ep(node: &str, ip: &str, mac: Option<&str>, lease: Option<i64>) -> (String, Doc) {
        let mut spec = json!({"network": "front", "node": node, "ip": ip});
        if let Some(m) = mac {
            spec["mac"] = m.into();
        }
        let d = Doc {
            lease,
            ..Doc::new(spec)
        };
        (format!("endpoints/front/{ip}"), d)
    }

    #[test]
    fn publishes_the_new_withdraws_only_its_own_announcements() {
        let wl = WL.to_string();
        let snap = Snapshot {
            docs: [
                // Configured for h1: never withdrawn.
                ep("h1", "10.0.9.1", None, None),
                // Announced by h1, still seen.
                ep("h1", "10.0.9.50", Some(&wl), Some(7)),
                // Announced by h1, gone from the TAP.
                ep("h1", "10.0.9.51", Some(&wl), Some(7)),
                // Announced by h2: not h1's business.
                ep("h2", "10.0.9.60", Some(&wl), Some(8)),
                ("networks/front".into(), Doc::new(json!({"name": "front"}))),
            ]
            .into_iter()
            .collect(),
            revision: 1,
            ..Snapshot::default()
        };
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let seen = [
            (ip("10.0.9.50"), WL),
            (ip("10.0.9.52"), WL),
            (ip("10.0.9.60"), WL),
        ];
        let (publish, withdraw) = diff(&snap, "front", "h1", &seen);
        assert_eq!(publish, vec![(ip("10.0.9.52"), WL)]);
        assert_eq!(withdraw, vec![ip("10.0.9.51")]);
        // The workload behind 10.0.9.50 changed its MAC: withdrawn (and
        // published again with the new one next time).
        let other = MacAddr([2, 0xbb, 0, 0, 0, 1]);
        let (_, withdraw) = diff(&snap, "front", "h1", &[(ip("10.0.9.50"), other)]);
        assert_eq!(withdraw, vec![ip("10.0.9.50"), ip("10.0.9.51")]);
    }
}
