//! The forwarding tables: an immutable snapshot built by the control plane
//! off the hot path and published whole (`ArcSwap`). Workers load it once per
//! batch and never lock.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::announce::Announcements;
use super::fdb::LearnedFdb;
use super::limit::FloodLimiter;
use super::stats::{GlobalStats, NetStats, PeerStats};
use crate::crypto::{Crypto, CryptoConfig};
use crate::wire::MacAddr;

/// One endpoint of a network as the dataplane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Underlay address of the node that owns the endpoint.
    pub vtep: Ipv4Addr,
}

/// Everything the packet path needs to know about one overlay network.
#[derive(Debug)]
pub struct NetworkTable {
    pub name: String,
    pub vni: u32,
    /// Overlay MTU: the largest inner IP packet (the TAP's MTU).
    pub mtu: u16,
    /// MAC address of this node's TAP in this network.
    pub tap_mac: MacAddr,
    /// Other member nodes of this network: the flood list and the set of
    /// underlay sources accepted for this VNI.
    pub peers: Vec<Ipv4Addr>,
    /// Counters of each peer, in the order of `peers`.
    pub peer_stats: Vec<Arc<PeerStats>>,
    /// Static forwarding entries: remote MAC -> owning node.
    pub fdb: HashMap<MacAddr, Ipv4Addr>,
    /// IP -> MAC of every known endpoint, for the local ARP responder.
    pub arp: HashMap<Ipv4Addr, MacAddr>,
    /// Addresses on this node's bridge (attachable networks): local
    /// containers, the node's own, DNS, VIPs. ARP requests for them are
    /// answered on the bridge itself; the copy that reaches the TAP is
    /// dropped, so that no other node answers for them and no reply with a
    /// local MAC is written back into the TAP (the bridge would learn the
    /// local container behind the TAP and send its traffic away).
    pub local: HashSet<Ipv4Addr>,
    /// MACs of this node's own endpoints and TAP: no peer may send a frame
    /// from one of them (see [`super::guard`]).
    pub local_macs: HashSet<MacAddr>,
    /// Workloads may send IPv6 router advertisements and redirects and
    /// ICMPv4 redirects (off: they are dropped, see [`super::guard`]).
    pub allow_ra: bool,
    /// Workloads may answer as DHCP (v4 or v6) servers (off: dropped).
    pub allow_dhcp: bool,
    /// Learn remote MACs from received datagrams (off by default).
    pub learning: bool,
    /// Every datagram to and from the peers is sealed (see
    /// [`crate::crypto`]); plain ones are dropped.
    pub encrypted: bool,
    /// Broadcast/multicast/unknown-unicast frames per second this node
    /// replicates into the network (0: no limit); kept across snapshots
    /// while the rate stays (see [`FloodLimiter::reuse`]).
    pub flood: Arc<FloodLimiter>,
    /// Learned entries; kept across snapshots like `stats`.
    pub learned: Arc<LearnedFdb>,
    /// Local workload addresses seen on the TAP, to announce (`announce =
    /// true`, etcd store); kept across snapshots like `learned`.
    pub announce: Option<Arc<Announcements>>,
    pub stats: Arc<NetStats>,
}

impl NetworkTable {
    /// An empty table: no peers, no endpoints, learning off.
    pub fn new(
        name: impl Into<String>,
        vni: u32,
        mtu: u16,
        tap_mac: MacAddr,
        stats: Arc<NetStats>,
        learned: Arc<LearnedFdb>,
    ) -> NetworkTable {
        NetworkTable {
            name: name.into(),
            vni,
            mtu,
            tap_mac,
            peers: Vec::new(),
            peer_stats: Vec::new(),
            fdb: HashMap::new(),
            arp: HashMap::new(),
            local: HashSet::new(),
            local_macs: HashSet::from([tap_mac]),
            allow_ra: false,
            allow_dhcp: false,
            learning: false,
            encrypted: false,
            flood: Arc::new(FloodLimiter::new(0, 1)),
            learned,
            announce: None,
            stats,
        }
    }

    /// Sets the flood list; `local` (this node) is never its own peer.
    pub fn with_peers(
        mut self,
        local: Ipv4Addr,
        peers: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Self {
        let mut peers: Vec<Ipv4Addr> = peers.into_iter().filter(|p| *p != local).collect();
        peers.sort();
        peers.dedup();
        self.peer_stats = peers.iter().map(|p| self.stats.peer(*p)).collect();
        self.peers = peers;
        self
    }

    /// Fills the ARP and forwarding tables; entries owned by `local` are
    /// answered by ARP but never sent to the underlay.
    pub fn with_endpoints(mut self, local: Ipv4Addr, endpoints: &[EndpointEntry]) -> Self {
        for e in endpoints {
            self.arp.insert(e.ip, e.mac);
            if e.vtep != local {
                self.fdb.insert(e.mac, e.vtep);
            } else {
                self.local_macs.insert(e.mac);
            }
        }
        self
    }

    /// Sets the addresses that live on this node's bridge (see `local`).
    pub fn with_local(mut self, ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.local = ips.into_iter().collect();
        self
    }

    /// Limits floods to `pps` frames per second with a burst of as many
    /// (0: no limit).
    pub fn with_flood_limit(self, pps: u32) -> Self {
        self.with_flood_limiter(FloodLimiter::reuse(None, pps))
    }

    /// Floods go through `limiter`, shared with earlier snapshots.
    pub fn with_flood_limiter(mut self, limiter: Arc<FloodLimiter>) -> Self {
        self.flood = limiter;
        self
    }

    /// Records local workload addresses seen on the TAP in `a`.
    pub fn with_announce(mut self, a: Option<Arc<Announcements>>) -> Self {
        self.announce = a;
        self
    }

    /// Lets workloads send router advertisements and redirects (`ra`) and
    /// DHCP server messages (`dhcp`).
    pub fn with_router_traffic(mut self, ra: bool, dhcp: bool) -> Self {
        self.allow_ra = ra;
        self.allow_dhcp = dhcp;
        self
    }

    /// Seals every datagram of this network (see [`crate::crypto`]).
    pub fn with_encryption(mut self, on: bool) -> Self {
        self.encrypted = on;
        self
    }

    pub fn with_learning(mut self, on: bool) -> Self {
        self.learning = on;
        self
    }

    /// Position of `addr` in the flood list (and in `peer_stats`).
    pub fn peer_index(&self, addr: Ipv4Addr) -> Option<usize> {
        // Flood lists are short (one entry per member node); a linear scan
        // beats hashing at these sizes.
        self.peers.iter().position(|p| *p == addr)
    }

    pub fn is_peer(&self, addr: Ipv4Addr) -> bool {
        self.peer_index(addr).is_some()
    }
}

/// The whole snapshot for one node.
#[derive(Debug)]
pub struct Tables {
    /// This node's data-path (underlay) address.
    pub local: Ipv4Addr,
    pub networks: Vec<NetworkTable>,
    by_vni: HashMap<u32, usize>,
    members: HashSet<Ipv4Addr>,
    pub global: Arc<GlobalStats>,
    /// Sessions and handshake queue, shared by every snapshot of a daemon.
    pub crypto: Arc<Crypto>,
    /// Keys and timers for the key manager.
    pub keys: CryptoConfig,
}

impl Tables {
    pub fn new(local: Ipv4Addr, networks: Vec<NetworkTable>, global: Arc<GlobalStats>) -> Tables {
        let by_vni = networks
            .iter()
            .enumerate()
            .map(|(i, n)| (n.vni, i))
            .collect();
        let members = networks
            .iter()
            .flat_map(|n| n.peers.iter().copied())
            .collect();
        Tables {
            local,
            networks,
            by_vni,
            members,
            global,
            crypto: Arc::new(Crypto::default()),
            keys: CryptoConfig::default(),
        }
    }

    /// Seals with `crypto` (the daemon's one, kept across snapshots) under
    /// `keys`.
    pub fn with_crypto(mut self, crypto: Arc<Crypto>, keys: CryptoConfig) -> Self {
        self.crypto = crypto;
        self.keys = keys;
        self
    }

    /// Index of the network with this VNI.
    pub fn network_by_vni(&self, vni: u32) -> Option<usize> {
        self.by_vni.get(&vni).copied()
    }

    /// True when `addr` is a peer of at least one of this node's networks.
    pub fn is_member(&self, addr: Ipv4Addr) -> bool {
        self.members.contains(&addr)
    }
}
