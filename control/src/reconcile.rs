//! Desired state -> dataplane. Builds a new table snapshot and TAP set for
//! this node from a [`Cluster`], reusing what did not change: counters and
//! learned entries survive a reload, a TAP whose settings changed is
//! adjusted in place (a TAP is never torn down while its network stays).

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use vxmesh_dataplane::io::worker::TapSet;
use vxmesh_dataplane::io::{Tap, TapConfig};
use vxmesh_dataplane::overlay::{
    EndpointEntry, GlobalStats, LearnedFdb, NetStats, NetworkTable, Tables,
};
use vxmesh_dataplane::wire::MacAddr;

use crate::model::{Cluster, Network};

/// What the reconciler keeps for one network between snapshots.
struct NetState {
    vni: u32,
    tap_cfg: TapConfig,
    tap: Arc<Tap>,
    stats: Arc<NetStats>,
    learned: Arc<LearnedFdb>,
    fdb_cap: usize,
    ageing_s: u64,
}

/// The reconciler of one node.
pub struct Reconciler {
    node: String,
    global: Arc<GlobalStats>,
    nets: HashMap<String, NetState>,
}

/// A change the reconciler made, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NetworkAdded(String),
    NetworkRemoved(String),
    TapChanged(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("node `{0}` is not in the cluster config")]
    UnknownNode(String),
    #[error("network `{network}`: {source}")]
    Tap {
        network: String,
        #[source]
        source: io::Error,
    },
}

/// The TAP MAC of a node in a network: its first endpoint's MAC (by
/// default `02:42:<overlay ip>`, Docker's rule), or, for a member without
/// an endpoint, `02:43:<underlay ip>`.
fn tap_mac(cluster: &Cluster, net: &Network, node: &str, underlay: Ipv4Addr) -> MacAddr {
    cluster
        .endpoints_of(&net.name)
        .find(|e| e.node == node)
        .map(|e| e.mac)
        .unwrap_or_else(|| {
            let o = underlay.octets();
            MacAddr([0x02, 0x43, o[0], o[1], o[2], o[3]])
        })
}

impl Reconciler {
    pub fn new(node: impl Into<String>) -> Reconciler {
        Reconciler {
            node: node.into(),
            global: Arc::new(GlobalStats::default()),
            nets: HashMap::new(),
        }
    }

    pub fn global(&self) -> &Arc<GlobalStats> {
        &self.global
    }

    /// This node's underlay address in `cluster`.
    pub fn local_address(&self, cluster: &Cluster) -> Result<Ipv4Addr, ReconcileError> {
        cluster
            .node(&self.node)
            .map(|n| n.address)
            .ok_or_else(|| ReconcileError::UnknownNode(self.node.clone()))
    }

    /// Builds the snapshot for `cluster`, creating or adjusting TAPs as
    /// needed. On error nothing already running is changed, except TAPs
    /// created for new networks, which close again when dropped.
    pub fn plan(
        &mut self,
        cluster: &Cluster,
    ) -> Result<(Tables, TapSet, Vec<Change>), ReconcileError> {
        let local = self.local_address(cluster)?;
        let mut changes = Vec::new();
        let mut next: HashMap<String, NetState> = HashMap::new();
        let mut tables = Vec::new();
        for net in cluster.networks_of(&self.node) {
            let tap_cfg = TapConfig {
                name: net.tap_name(),
                mac: tap_mac(cluster, net, &self.node, local),
                mtu: net.mtu,
                address: cluster
                    .tap_address(net, &self.node)
                    .map(|ip| (ip, net.subnet.prefix_len())),
                offload: cluster.settings.offloads,
            };
            let state = match self.nets.get(&net.name) {
                Some(old) => {
                    let same_vni = old.vni == net.vni;
                    if old.tap_cfg != tap_cfg {
                        old.tap
                            .reconfigure(&old.tap_cfg, &tap_cfg)
                            .map_err(|source| ReconcileError::Tap {
                                network: net.name.clone(),
                                source,
                            })?;
                        changes.push(Change::TapChanged(net.name.clone()));
                    }
                    let learned =
                        if same_vni && old.fdb_cap == net.fdb_cap && old.ageing_s == net.ageing_s {
                            old.learned.clone()
                        } else {
                            Arc::new(LearnedFdb::new(
                                net.fdb_cap,
                                Duration::from_secs(net.ageing_s),
                            ))
                        };
                    NetState {
                        vni: net.vni,
                        tap_cfg,
                        tap: old.tap.clone(),
                        stats: if same_vni {
                            old.stats.clone()
                        } else {
                            Arc::new(NetStats::default())
                        },
                        learned,
                        fdb_cap: net.fdb_cap,
                        ageing_s: net.ageing_s,
                    }
                }
                None => {
                    let tap = Tap::open(&tap_cfg).map_err(|source| ReconcileError::Tap {
                        network: net.name.clone(),
                        source,
                    })?;
                    changes.push(Change::NetworkAdded(net.name.clone()));
                    NetState {
                        vni: net.vni,
                        tap_cfg,
                        tap: Arc::new(tap),
                        stats: Arc::new(NetStats::default()),
                        learned: Arc::new(LearnedFdb::new(
                            net.fdb_cap,
                            Duration::from_secs(net.ageing_s),
                        )),
                        fdb_cap: net.fdb_cap,
                        ageing_s: net.ageing_s,
                    }
                }
            };
            let endpoints: Vec<EndpointEntry> = cluster
                .endpoints_of(&net.name)
                .filter_map(|e| {
                    cluster.node(&e.node).map(|n| EndpointEntry {
                        ip: e.ip,
                        mac: e.mac,
                        vtep: n.address,
                    })
                })
                .collect();
            let peers = cluster.members(net).into_iter().map(|n| n.address);
            tables.push(
                NetworkTable::new(
                    net.name.clone(),
                    net.vni,
                    net.mtu,
                    state.tap_cfg.mac,
                    state.stats.clone(),
                    state.learned.clone(),
                )
                .with_peers(local, peers)
                .with_endpoints(local, &endpoints)
                .with_learning(net.learning),
            );
            next.insert(net.name.clone(), state);
        }
        for name in self.nets.keys() {
            if !next.contains_key(name) {
                changes.push(Change::NetworkRemoved(name.clone()));
            }
        }
        let taps: TapSet = next.values().map(|s| (s.vni, s.tap.clone())).collect();
        self.nets = next;
        Ok((
            Tables::new(local, tables, self.global.clone()),
            taps,
            changes,
        ))
    }

    /// Forgets every network (their TAPs close once the dataplane lets go).
    pub fn clear(&mut self) {
        self.nets.clear();
    }
}

/// What this node's mesh should do: in ingress mode a member of the
/// service's network listens and forwards to every task; in host mode only
/// a node with a local task listens, and only to its local tasks.
pub fn mesh_desired(
    cluster: &Cluster,
    node: &str,
) -> Vec<vxmesh_dataplane::mesh::runtime::Desired> {
    use vxmesh_dataplane::mesh::runtime::Desired;
    use vxmesh_dataplane::mesh::spec::Mode;
    cluster
        .services
        .iter()
        .map(|s| {
            let member = cluster.networks_of(node).any(|n| n.name == s.network);
            let local: Vec<Ipv4Addr> = s
                .tasks
                .iter()
                .copied()
                .filter(|t| cluster.owner(&s.network, *t) == Some(node))
                .collect();
            match s.mode {
                Mode::Ingress => Desired {
                    spec: s.clone(),
                    tasks: s.tasks.clone(),
                    listen: member,
                },
                Mode::Host => Desired {
                    spec: s.clone(),
                    listen: !local.is_empty(),
                    tasks: local,
                },
            }
        })
        .collect()
}
