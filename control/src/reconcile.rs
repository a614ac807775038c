//! Desired state -> dataplane. Builds a new table snapshot and TAP set for
//! this node from a [`Cluster`], reusing what did not change: counters and
//! learned entries survive a reload, a TAP whose settings changed is
//! adjusted in place (a TAP is never torn down while its network stays).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use vxmesh_dataplane::crypto::{Crypto, CryptoConfig, NodeKey};
use vxmesh_dataplane::io::worker::TapSet;
use vxmesh_dataplane::io::{addr, netdev};
use vxmesh_dataplane::io::{Tap, TapConfig};
use vxmesh_dataplane::overlay::{
    Announcements, EndpointEntry, FloodLimiter, GlobalStats, LearnedFdb, NetStats, NetworkTable,
    Tables,
};
use vxmesh_dataplane::wire::MacAddr;

use crate::firewall::{Firewall, NetRules, Port};
use crate::model::{Cluster, Network};

mod desired;

pub use desired::{dns_zones, mesh_desired, relay_policy};
use desired::{pool_entries, port_mac, tap_mac, wanted_addresses};

/// What the reconciler keeps for one network between snapshots.
struct NetState {
    vni: u32,
    tap_cfg: TapConfig,
    tap: Arc<Tap>,
    stats: Arc<NetStats>,
    learned: Arc<LearnedFdb>,
    /// The flood limit's bucket, kept across reloads while `flood_pps`
    /// stays.
    flood: Arc<FloodLimiter>,
    fdb_cap: usize,
    ageing_s: u64,
    /// Addresses added beyond the TAP's own (VIPs, DNS; on a bridge also
    /// the node's own address), with their prefix length.
    extra: BTreeSet<(Ipv4Addr, u8)>,
    /// The bridge holding the TAP and the containers' veths (attachable
    /// networks), or `None` when the TAP holds the addresses itself.
    bridge: Option<String>,
    /// The MAC and MTU the bridge was last given (a reconcile that changes
    /// neither runs no command).
    bridge_cfg: Option<(MacAddr, u16)>,
    /// Local workload addresses to announce (`announce = true`).
    announce: Option<Arc<Announcements>>,
    /// The permanent neighbour entries installed for the endpoints, and
    /// the device they are on (the TAP, or the bridge).
    neigh: (String, BTreeMap<Ipv4Addr, MacAddr>),
}

/// The reconciler of one node.
pub struct Reconciler {
    node: String,
    /// Networks with `announce = true` record local workload addresses
    /// (only where they can be published: the etcd store).
    announce: bool,
    global: Arc<GlobalStats>,
    nets: HashMap<String, NetState>,
    firewall: Firewall,
    /// The daemon's sessions, handed to every snapshot.
    crypto: Arc<Crypto>,
    /// This node's static key (encrypted networks).
    node_key: Option<Arc<NodeKey>>,
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

impl Reconciler {
    pub fn new(node: impl Into<String>) -> Reconciler {
        let node = node.into();
        Reconciler {
            firewall: Firewall::new(&node),
            node,
            announce: false,
            global: Arc::new(GlobalStats::default()),
            nets: HashMap::new(),
            crypto: Arc::new(Crypto::default()),
            node_key: None,
        }
    }

    /// This node's static key: without one, encrypted networks carry
    /// nothing to or from this node.
    pub fn with_node_key(mut self, key: Option<Arc<NodeKey>>) -> Reconciler {
        self.node_key = key;
        self
    }

    pub fn node_key(&self) -> Option<&Arc<NodeKey>> {
        self.node_key.as_ref()
    }

    pub fn crypto(&self) -> &Arc<Crypto> {
        &self.crypto
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
            // The node's identity in the network: its MAC and address go on
            // the TAP, or on the bridge when containers may attach (the TAP
            // is then a plain port with a MAC of its own).
            let node_mac = tap_mac(cluster, net, &self.node, local);
            let tap_cfg = TapConfig {
                name: net.tap_name(),
                mac: if net.attachable {
                    port_mac(node_mac)
                } else {
                    node_mac
                },
                mtu: net.mtu,
                address: cluster
                    .tap_address(net, &self.node)
                    .filter(|_| !net.attachable)
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
                        flood: FloodLimiter::reuse(same_vni.then_some(&old.flood), net.flood_pps),
                        fdb_cap: net.fdb_cap,
                        ageing_s: net.ageing_s,
                        extra: old.extra.clone(),
                        bridge: old.bridge.clone(),
                        bridge_cfg: old.bridge_cfg,
                        announce: old.announce.clone(),
                        neigh: old.neigh.clone(),
                    }
                }
                None => {
                    let tap = Tap::open(&tap_cfg).map_err(|source| ReconcileError::Tap {
                        network: net.name.clone(),
                        source,
                    })?;
                    changes.push(Change::NetworkAdded(net.name.clone()));
                    netdev::refuse_router_traffic(&tap_cfg.name);
                    // A TAP left by an earlier run keeps its addresses: the
                    // sync below changes only what differs.
                    let own = tap_cfg.address;
                    let found: BTreeSet<(Ipv4Addr, u8)> = netdev::addresses(&tap_cfg.name)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|a| Some(*a) != own)
                        .collect();
                    NetState {
                        vni: net.vni,
                        tap_cfg,
                        tap: Arc::new(tap),
                        stats: Arc::new(NetStats::default()),
                        learned: Arc::new(LearnedFdb::new(
                            net.fdb_cap,
                            Duration::from_secs(net.ageing_s),
                        )),
                        flood: FloodLimiter::reuse(None, net.flood_pps),
                        fdb_cap: net.fdb_cap,
                        ageing_s: net.ageing_s,
                        extra: found,
                        bridge: None,
                        bridge_cfg: None,
                        announce: None,
                        neigh: (String::new(), BTreeMap::new()),
                    }
                }
            };
            let mut state = state;
            self.sync_bridge(net, &mut state, node_mac)?;
            let want = wanted_addresses(cluster, net, &self.node, state.bridge.is_some());
            state.extra = self.sync_addresses(net, &state, want)?;
            state.announce = self.announcements(net, &state);
            let mut endpoints: Vec<EndpointEntry> = cluster
                .endpoints_of(&net.name)
                .filter_map(|e| {
                    addresses.get(e.node.as_str()).map(|vtep| EndpointEntry {
                        ip: e.ip,
                        mac: e.mac,
                        vtep: *vtep,
                    })
                })
                .collect();
            endpoints.extend(pool_entries(cluster, net, &addresses, &self.node));
            // On a bridge, what lives on this node (its containers, its own
            // address, DNS and VIPs) is answered there; the TAP never sees
            // an answer for it and no other node is asked.
            let on_bridge: Vec<Ipv4Addr> = if state.bridge.is_some() {
                cluster
                    .endpoints_of(&net.name)
                    .filter(|e| e.node == self.node)
                    .map(|e| e.ip)
                    .chain(state.extra.iter().map(|(ip, _)| *ip))
                    .collect()
            } else {
                Vec::new()
            };
            sync_neighbours(&mut state, &endpoints);
            let peers = cluster.members(net).into_iter().map(|n| n.address);
            tables.push(
                NetworkTable::new(
                    net.name.clone(),
                    net.vni,
                    net.mtu,
                    node_mac,
                    state.stats.clone(),
                    state.learned.clone(),
                )
                .with_peers(local, peers)
                .with_endpoints(local, &endpoints)
                .with_local(on_bridge)
                .with_learning(net.learning)
                .with_encryption(net.encrypted)
                .with_router_traffic(net.allow_ra, net.allow_dhcp)
                .with_announce(state.announce.clone())
                .with_flood_limiter(state.flood.clone()),
            );
            next.insert(net.name.clone(), state);
        }
        for (name, old) in &self.nets {
            if !next.contains_key(name) {
                changes.push(Change::NetworkRemoved(name.clone()));
                // The device goes with this process's last handle on it
                // (once the lanes let go of it).
                old.tap.remove_when_closed();
                // The network is gone from this node: its bridge goes too
                // (containers still on it lose the network with it).
                if let Some(br) = &old.bridge {
                    if let Err(e) = netdev::delete(br) {
                        tracing::warn!(bridge = %br, error = %e, "bridge not removed");
                    }
                }
            }
        }
        let taps: TapSet = next.values().map(|s| (s.vni, s.tap.clone())).collect();
        self.nets = next;
        self.sync_firewall(cluster);
        let keys = CryptoConfig {
            node: self.node_key.clone(),
            peers: cluster
                .networks
                .iter()
                .filter(|n| n.encrypted)
                .map(|n| cluster.members(n))
                .filter(|m| m.iter().any(|n| n.address == local))
                .flatten()
                .filter(|n| n.address != local)
                .map(|n| (n.address, n.public_key))
                .collect(),
            policy: cluster.settings.rekey(),
        };
        Ok((
            Tables::new(local, tables, self.global.clone()).with_crypto(self.crypto.clone(), keys),
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

    /// Creates (or finds) the bridge of an attachable network and makes
    /// the TAP its port. A bridge found from an earlier run keeps its
    /// container ports; its addresses are set again from the desired state.
    fn sync_bridge(
        &self,
        net: &Network,
        state: &mut NetState,
        node_mac: MacAddr,
    ) -> Result<(), ReconcileError> {
        let fail = |source: io::Error| ReconcileError::Tap {
            network: net.name.clone(),
            source,
        };
        if !net.attachable {
            if let Some(br) = state.bridge.take() {
                netdev::delete(&br).map_err(fail)?;
                state.extra.clear();
                state.bridge_cfg = None;
            }
            return Ok(());
        }
        let want = (node_mac, net.mtu);
        if state.bridge.is_some() && state.bridge_cfg == Some(want) {
            return Ok(());
        }
        let br = net.bridge_name();
        let fresh = state.bridge.is_none();
        netdev::ensure_bridge(&br, node_mac, net.mtu).map_err(fail)?;
        if fresh {
            // A bridge an earlier run left keeps its addresses (its
            // containers' gateway and DNS stay reachable across a restart):
            // the address sync changes only what differs.
            state.extra = netdev::addresses(&br).map_err(fail)?;
        }
        netdev::set_master(&state.tap_cfg.name, &br).map_err(fail)?;
        state.bridge = Some(br);
        state.bridge_cfg = Some(want);
        Ok(())
    }

    /// Puts `want` on the network's TAP (or bridge) and removes what it had
    /// beyond that; returns what is there now.
    fn sync_addresses(
        &self,
        net: &Network,
        state: &NetState,
        mut want: BTreeSet<(Ipv4Addr, u8)>,
    ) -> Result<BTreeSet<(Ipv4Addr, u8)>, ReconcileError> {
        // The TAP's own address is already there (and must stay).
        if let Some(own) = state.tap_cfg.address {
            want.remove(&own);
        }
        let fail = |source: io::Error| ReconcileError::Address {
            network: net.name.clone(),
            source,
        };
        let dev = state.bridge.as_deref().unwrap_or(&state.tap_cfg.name);
        let ifindex = nix::net::if_::if_nametoindex(dev).map_err(|e| fail(io::Error::from(e)))?;
        for (ip, prefix) in state.extra.difference(&want) {
            if *prefix == 32 {
                addr::del_v4(ifindex, *ip, 32).map_err(fail)?;
            } else {
                netdev::del_address(dev, *ip, *prefix).map_err(fail)?;
            }
        }
        for (ip, prefix) in want.difference(&state.extra) {
            if *prefix == 32 {
                addr::add_v4(ifindex, *ip, 32).map_err(fail)?;
            } else {
                // The subnet's address, with the prefix route the node's
                // own traffic to its containers takes.
                netdev::add_address(dev, *ip, *prefix).map_err(fail)?;
            }
        }
        Ok(want)
    }

    /// Writes the node's nftables table for the networks it now has (see
    /// [`crate::firewall`]). A failure is logged, not fatal: the dataplane's
    /// own checks still hold, but the DNS and VIP addresses then answer
    /// beyond their network.
    fn sync_firewall(&mut self, cluster: &Cluster) {
        let mut rules: Vec<NetRules> = cluster
            .networks_of(&self.node)
            .filter_map(|net| {
                let st = self.nets.get(&net.name)?;
                let mut guarded: Vec<Ipv4Addr> = vec![net.dns];
                guarded.extend(
                    cluster
                        .services
                        .iter()
                        .filter(|s| s.network == net.name)
                        .filter_map(|s| s.vip),
                );
                guarded.sort();
                guarded.dedup();
                let ports = if st.bridge.is_some() {
                    cluster
                        .endpoints_of(&net.name)
                        .filter(|e| e.node == self.node)
                        .filter_map(|e| {
                            e.container.as_ref().map(|key| Port {
                                dev: netdev::Veth::for_key(key).host,
                                mac: e.mac,
                                ip: e.ip,
                            })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Some(NetRules {
                    ports,
                    allow_ra: net.allow_ra,
                    allow_dhcp: net.allow_dhcp,
                    name: net.name.clone(),
                    devices: std::iter::once(st.tap_cfg.name.clone())
                        .chain(st.bridge.clone())
                        .collect(),
                    bridge: st.bridge.clone(),
                    subnet: (net.subnet.network(), net.subnet.prefix_len()),
                    guarded,
                })
            })
            .collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(e) = self.firewall.sync(&rules) {
            tracing::warn!(error = %e, "nftables guard table not written: DNS and VIPs answer beyond their networks, and routing into the overlay is not blocked");
        }
    }

    /// The bridge of `network` on this node, when it is attachable and
    /// this node is a member.
    pub fn bridge(&self, network: &str) -> Option<&str> {
        self.nets.get(network).and_then(|s| s.bridge.as_deref())
    }

    /// Forgets every network (their TAPs close once the dataplane lets go).
    /// A bridge with containers on it stays, with its addresses, so the
    /// containers keep talking locally and a restarted daemon finds it
    /// again; an empty one is removed.
    /// The devices this node runs now (TAPs and bridges), for the state
    /// file `vxmeshd --cleanup` reads.
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nets
            .values()
            .flat_map(|s| std::iter::once(s.tap_cfg.name.clone()).chain(s.bridge.clone()))
            .collect();
        v.sort();
        v
    }

    /// Every TAP queue's descriptor, named for a successor.
    pub fn descriptors(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        self.nets
            .values()
            .flat_map(|s| s.tap.descriptors())
            .collect()
    }

    /// Learned forwarding entries of every network, for a successor.
    pub fn learned(&self) -> Vec<(String, Arc<LearnedFdb>)> {
        self.nets
            .iter()
            .map(|(n, s)| (n.clone(), s.learned.clone()))
            .collect()
    }

    /// Takes the node off its networks for good (`vxmeshd --cleanup`): the
    /// firewall tables, every bridge (its containers lose the network with
    /// it) and every TAP, which the kernel removes once the lanes let go.
    pub fn clear(&mut self) {
        self.firewall.remove();
        for (name, s) in self.nets.drain() {
            s.tap.remove_when_closed();
            if let Some(br) = s.bridge {
                if let Err(e) = netdev::delete(&br) {
                    tracing::warn!(network = %name, bridge = %br, error = %e, "bridge not removed");
                }
            }
        }
    }
}

/// Makes the node's neighbour entries for the network's endpoints permanent
/// (on the TAP, or on the bridge): the kernel then never asks for them and
/// no ARP a workload sends can move them. The node's own addresses (its
/// address in the network, DNS, VIPs) are local and need none. A failure is
/// logged and the whole set written again at the next reconcile.
fn sync_neighbours(state: &mut NetState, endpoints: &[EndpointEntry]) {
    let dev = state
        .bridge
        .clone()
        .unwrap_or_else(|| state.tap_cfg.name.clone());
    let own: BTreeSet<Ipv4Addr> = state
        .tap_cfg
        .address
        .iter()
        .map(|(ip, _)| *ip)
        .chain(state.extra.iter().map(|(ip, _)| *ip))
        .collect();
    let want: BTreeMap<Ipv4Addr, MacAddr> = endpoints
        .iter()
        .filter(|e| !own.contains(&e.ip))
        .map(|e| (e.ip, e.mac))
        .collect();
    let empty = BTreeMap::new();
    let old = if state.neigh.0 == dev {
        &state.neigh.1
    } else {
        &empty
    };
    match netdev::sync_neighbours(&dev, old, &want) {
        Ok(()) => state.neigh = (dev, want),
        Err(e) => {
            tracing::warn!(device = %dev, error = %e, "permanent neighbour entries not written");
            state.neigh = (dev, BTreeMap::new());
        }
    }
}
