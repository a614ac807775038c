//! Desired state -> dataplane. Builds a new table snapshot and TAP set for
//! this node from a [`Cluster`], reusing what did not change: counters and
//! learned entries survive a reload, a TAP whose settings changed is
//! adjusted in place (a TAP is never torn down while its network stays).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use vxmesh_dataplane::io::addr;
use vxmesh_dataplane::io::worker::TapSet;
use vxmesh_dataplane::io::{Tap, TapConfig};
use vxmesh_dataplane::mesh::dns::ZoneSpec;
use vxmesh_dataplane::overlay::{
    Announcements, EndpointEntry, GlobalStats, LearnedFdb, NetStats, NetworkTable, Tables,
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
    /// Addresses added to the TAP beyond its own (VIPs, DNS).
    extra: BTreeSet<Ipv4Addr>,
    /// Local workload addresses to announce (`announce = true`).
    announce: Option<Arc<Announcements>>,
}

/// The reconciler of one node.
pub struct Reconciler {
    node: String,
    /// Networks with `announce = true` record local workload addresses
    /// (only where they can be published: the etcd store).
    announce: bool,
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
    #[error("network `{network}`: local addresses (VIPs, DNS): {source}")]
    Address {
        network: String,
        #[source]
        source: io::Error,
    },
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
            announce: false,
            global: Arc::new(GlobalStats::default()),
            nets: HashMap::new(),
        }
    }

    /// Lets networks with `announce = true` record local workload
    /// addresses from their TAPs (off by default).
    pub fn with_announce(mut self, on: bool) -> Reconciler {
        self.announce = on;
        self
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
        let addresses = cluster.addresses();
        for net in cluster.networks_of(&self.node) {
            let tap_cfg = TapConfig {
                name: net.tap_name(),
                mac: tap_mac(cluster, net, &self.node, local),
                mtu: net.mtu,
                address: cluster
                    .tap_address(net, &self.node)
                    .map(|ip| (ip, net.subnet.prefix_len())),
                offload: cluster.settings.offloads,
                queues: cluster.settings.effective_queues(),
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
                        extra: old.extra.clone(),
                        announce: old.announce.clone(),
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
                        extra: BTreeSet::new(),
                        announce: None,
                    }
                }
            };
            let mut state = state;
            state.extra = self.sync_addresses(net, &state, local_addresses(cluster, net))?;
            state.announce = self.announcements(net, &state);
            let endpoints: Vec<EndpointEntry> = cluster
                .endpoints_of(&net.name)
                .filter_map(|e| {
                    addresses.get(e.node.as_str()).map(|vtep| EndpointEntry {
                        ip: e.ip,
                        mac: e.mac,
                        vtep: *vtep,
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
                .with_learning(net.learning)
                .with_announce(state.announce.clone())
                .with_flood_limit(net.flood_pps),
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

    /// The announcement table of `net`: the one it had if its settings
    /// stayed, a new one if they changed, none when announcing is off.
    fn announcements(&self, net: &Network, state: &NetState) -> Option<Arc<Announcements>> {
        if !(self.announce && net.announce) {
            return None;
        }
        let fresh = Announcements::new(
            net.subnet.network(),
            net.subnet.prefix_len(),
            state.tap_cfg.address.map(|(ip, _)| ip),
            net.announce_cap,
            Duration::from_secs(net.ageing_s),
        );
        match &state.announce {
            Some(old) if old.same_settings(&fresh) => Some(old.clone()),
            _ => Some(Arc::new(fresh)),
        }
    }

    /// Puts `want` on the network's TAP as /32s and removes what it had
    /// beyond that; returns what is there now.
    fn sync_addresses(
        &self,
        net: &Network,
        state: &NetState,
        mut want: BTreeSet<Ipv4Addr>,
    ) -> Result<BTreeSet<Ipv4Addr>, ReconcileError> {
        // The TAP's own address is already there (and must stay).
        if let Some((own, _)) = state.tap_cfg.address {
            want.remove(&own);
        }
        let fail = |source: io::Error| ReconcileError::Address {
            network: net.name.clone(),
            source,
        };
        let ifindex = nix::net::if_::if_nametoindex(state.tap_cfg.name.as_str())
            .map_err(|e| fail(io::Error::from(e)))?;
        for ip in want.difference(&state.extra) {
            addr::add_v4(ifindex, *ip, 32).map_err(fail)?;
        }
        for ip in state.extra.difference(&want) {
            addr::del_v4(ifindex, *ip, 32).map_err(fail)?;
        }
        Ok(want)
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
            // The VIP listens on every member node, on each target port.
            let extra_listen = match s.vip {
                Some(vip) if member => s
                    .ports
                    .iter()
                    .map(|p| (p.protocol, SocketAddr::new(vip.into(), p.target), p.target))
                    .collect(),
                _ => Vec::new(),
            };
            match s.mode {
                Mode::Ingress => Desired {
                    spec: s.clone(),
                    tasks: s.tasks.clone(),
                    listen: member,
                    extra_listen,
                },
                Mode::Host => Desired {
                    spec: s.clone(),
                    listen: !local.is_empty(),
                    tasks: local,
                    extra_listen,
                },
            }
        })
        .collect()
}

/// The DNS zones this node serves: one per network it is a member of.
pub fn dns_zones(cluster: &Cluster, node: &str) -> Vec<ZoneSpec> {
    cluster
        .networks_of(node)
        .map(|net| ZoneSpec {
            network: net.name.clone(),
            addr: net.dns,
            domain: net.domain.clone(),
            forward: net.dns_forward.clone(),
            services: cluster
                .services
                .iter()
                .filter(|s| s.network == net.name)
                .map(|s| (s.name.clone(), s.vip))
                .collect(),
            endpoints: cluster
                .endpoints_of(&net.name)
                .filter_map(|e| e.name.clone().map(|n| (n, e.ip)))
                .collect(),
        })
        .collect()
}

/// The addresses this node adds to its TAP in `net`: the DNS responder's
/// and the VIP of every service of the network.
fn local_addresses(cluster: &Cluster, net: &Network) -> BTreeSet<Ipv4Addr> {
    let mut out: BTreeSet<Ipv4Addr> = cluster
        .services
        .iter()
        .filter(|s| s.network == net.name)
        .filter_map(|s| s.vip)
        .collect();
    out.insert(net.dns);
    out
}
