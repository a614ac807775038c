//! Counters of the packet path. Plain relaxed atomics: the workers add, the
//! admin API and `/metrics` read. One [`NetStats`] per network lives across
//! table snapshots (the reconciler hands the same `Arc` to every new
//! snapshot), so a reload never resets a counter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why a frame or datagram was dropped. Each reason is a counter and a
/// `reason` label in the metrics; the hot path never logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its headers, or otherwise unparseable.
    Malformed,
    /// VXLAN header without the I flag (RFC 7348 section 5).
    BadFlags,
    /// Datagram from an address that is not a member node of the network.
    UnknownPeer,
    /// Datagram for a VNI this node does not have.
    UnknownVni,
    /// Frame larger than the overlay MTU allows.
    Mtu,
    /// Flood or unknown unicast in a network with no peer to send to.
    NoPeers,
    /// The underlay socket refused the datagram (buffer full, no route).
    SendError,
    /// The TAP device refused the frame.
    TapError,
    /// A flood over the network's flood rate limit.
    FloodRate,
    /// An ARP request from a local workload for an address that lives on
    /// this node's bridge (another local container, the node, its DNS or a
    /// VIP): answered on the bridge, never flooded to the other nodes.
    LocalTarget,
    /// A frame from a local workload with another endpoint's source MAC (or
    /// a multicast one, or an ARP sender MAC that is not the frame's), or
    /// from a peer with the MAC of an endpoint that is not that peer's.
    SpoofedMac,
    /// A frame from a local workload whose ARP sender or IPv4 source
    /// address is an endpoint with another MAC.
    SpoofedIp,
    /// An IPv6 router advertisement or redirect, or an ICMPv4 redirect,
    /// from a workload of a network that does not allow them.
    RogueRouter,
    /// A DHCP or DHCPv6 server message from a workload of a network that
    /// does not allow them.
    RogueDhcp,
    /// A plain VXLAN datagram for an encrypted network.
    Plaintext,
    /// A frame for a peer of an encrypted network with which there is no
    /// valid session (yet, or any more): nothing goes in plaintext.
    NoSession,
    /// A sealed datagram for a session this node does not have (or no
    /// longer has, or that belongs to another sender).
    UnknownSession,
    /// A sealed datagram that does not authenticate: tampered with, or
    /// not sealed with the session's key.
    BadSeal,
    /// A sealed datagram whose counter was seen already, or lies behind
    /// the receive window.
    Replayed,
}

impl DropReason {
    pub const COUNT: usize = 19;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::BadFlags,
        DropReason::UnknownPeer,
        DropReason::UnknownVni,
        DropReason::Mtu,
        DropReason::NoPeers,
        DropReason::SendError,
        DropReason::TapError,
        DropReason::FloodRate,
        DropReason::LocalTarget,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::RogueRouter,
        DropReason::RogueDhcp,
        DropReason::Plaintext,
        DropReason::NoSession,
        DropReason::UnknownSession,
        DropReason::BadSeal,
        DropReason::Replayed,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadFlags => "bad_flags",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::Mtu => "mtu",
            DropReason::NoPeers => "no_peers",
            DropReason::SendError => "send_error",
            DropReason::TapError => "tap_error",
            DropReason::FloodRate => "flood_rate",
            DropReason::LocalTarget => "local_target",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::RogueRouter => "rogue_router",
            DropReason::RogueDhcp => "rogue_dhcp",
            DropReason::Plaintext => "plaintext",
            DropReason::NoSession => "no_session",
            DropReason::UnknownSession => "unknown_session",
            DropReason::BadSeal => "bad_seal",
            DropReason::Replayed => "replayed",
        }
    }
}

/// Drop counters indexed by [`DropReason`].
#[derive(Default, Debug)]
pub struct Drops([AtomicU64; DropReason::COUNT]);

impl Drops {
    pub fn add(&self, reason: DropReason) {
        self.0[reason as usize].fetch_add(1, Relaxed);
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].load(Relaxed)
    }
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.get(*r)))
            .collect()
    }
}

/// Counters of one peer of one network.
#[derive(Default, Debug)]
pub struct PeerStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
}

/// A serialisable copy of [`PeerStats`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct PeerStatsSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

/// Counters of one overlay network.
#[derive(Default, Debug)]
pub struct NetStats {
    /// Frames read from the TAP.
    pub tap_rx_packets: AtomicU64,
    pub tap_rx_bytes: AtomicU64,
    /// Frames written to the TAP (decapsulated, or ARP replies).
    pub tap_tx_packets: AtomicU64,
    pub tap_tx_bytes: AtomicU64,
    /// VXLAN datagrams sent to peers (each flood copy counts).
    pub vxlan_tx_packets: AtomicU64,
    pub vxlan_tx_bytes: AtomicU64,
    /// VXLAN datagrams accepted from peers.
    pub vxlan_rx_packets: AtomicU64,
    pub vxlan_rx_bytes: AtomicU64,
    /// Copies sent because a frame was broadcast, multicast or unknown unicast.
    pub flood_copies: AtomicU64,
    /// Frames that had to be flooded (one per frame, not per copy).
    pub flooded_frames: AtomicU64,
    /// ARP requests answered locally from the endpoint table.
    pub arp_answered: AtomicU64,
    /// MAC addresses learned from the underlay (learning on).
    pub learned: AtomicU64,
    /// Learning refused because the table was at its cap.
    pub fdb_full: AtomicU64,
    /// Learned entries a full table dropped (stalest first) to make room.
    pub fdb_evicted: AtomicU64,
    /// Local workload addresses seen on the TAP for the first time (to be
    /// announced), and those refused (at the cap or over the rate).
    pub announced: AtomicU64,
    pub announce_refused: AtomicU64,
    /// Inner TCP/UDP checksums the sender left partial, completed here.
    pub csum_completed: AtomicU64,
    /// TCP super-frames received whole and cut to the MTU here.
    pub gso_segmented: AtomicU64,
    pub drops: Drops,
    /// Per-peer counters, kept here (not in the snapshot) so they outlive
    /// reloads like the rest; looked up only when a snapshot is built.
    peers:
        std::sync::Mutex<std::collections::HashMap<std::net::Ipv4Addr, std::sync::Arc<PeerStats>>>,
}

/// Counters not tied to one network (datagrams dropped before their network
/// is known).
#[derive(Default, Debug)]
pub struct GlobalStats {
    pub drops: Drops,
    /// Datagrams read from the underlay socket, accepted or not.
    pub udp_rx_packets: AtomicU64,
}

/// A serialisable copy of [`NetStats`], for the admin API.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct NetStatsSnapshot {
    pub tap_rx_packets: u64,
    pub tap_rx_bytes: u64,
    pub tap_tx_packets: u64,
    pub tap_tx_bytes: u64,
    pub vxlan_tx_packets: u64,
    pub vxlan_tx_bytes: u64,
    pub vxlan_rx_packets: u64,
    pub vxlan_rx_bytes: u64,
    pub flood_copies: u64,
    pub flooded_frames: u64,
    pub arp_answered: u64,
    pub learned: u64,
    pub fdb_full: u64,
    #[serde(default)]
    pub fdb_evicted: u64,
    #[serde(default)]
    pub announced: u64,
    #[serde(default)]
    pub announce_refused: u64,
    pub csum_completed: u64,
    pub gso_segmented: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
    /// By peer underlay address.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, PeerStatsSnapshot>,
}

fn drops_map(d: &Drops) -> std::collections::BTreeMap<String, u64> {
    d.snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

impl NetStats {
    /// The counters of `peer`, created on first use.
    pub fn peer(&self, peer: std::net::Ipv4Addr) -> std::sync::Arc<PeerStats> {
        self.peers
            .lock()
            .expect("peer stats lock")
            .entry(peer)
            .or_default()
            .clone()
    }

    pub fn snapshot(&self) -> NetStatsSnapshot {
        NetStatsSnapshot {
            tap_rx_packets: self.tap_rx_packets.load(Relaxed),
            tap_rx_bytes: self.tap_rx_bytes.load(Relaxed),
            tap_tx_packets: self.tap_tx_packets.load(Relaxed),
            tap_tx_bytes: self.tap_tx_bytes.load(Relaxed),
            vxlan_tx_packets: self.vxlan_tx_packets.load(Relaxed),
            vxlan_tx_bytes: self.vxlan_tx_bytes.load(Relaxed),
            vxlan_rx_packets: self.vxlan_rx_packets.load(Relaxed),
            vxlan_rx_bytes: self.vxlan_rx_bytes.load(Relaxed),
            flood_copies: self.flood_copies.load(Relaxed),
            flooded_frames: self.flooded_frames.load(Relaxed),
            arp_answered: self.arp_answered.load(Relaxed),
            learned: self.learned.load(Relaxed),
            fdb_full: self.fdb_full.load(Relaxed),
            fdb_evicted: self.fdb_evicted.load(Relaxed),
            announced: self.announced.load(Relaxed),
            announce_refused: self.announce_refused.load(Relaxed),
            csum_completed: self.csum_completed.load(Relaxed),
            gso_segmented: self.gso_segmented.load(Relaxed),
            drops: drops_map(&self.drops),
            peers: self
                .peers
                .lock()
                .expect("peer stats lock")
                .iter()
                .map(|(a, p)| {
                    (
                        a.to_string(),
                        PeerStatsSnapshot {
                            tx_packets: p.tx_packets.load(Relaxed),
                            tx_bytes: p.tx_bytes.load(Relaxed),
                            rx_packets: p.rx_packets.load(Relaxed),
                            rx_bytes: p.rx_bytes.load(Relaxed),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// A serialisable copy of [`GlobalStats`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct GlobalStatsSnapshot {
    pub udp_rx_packets: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl GlobalStats {
    pub fn snapshot(&self) -> GlobalStatsSnapshot {
        GlobalStatsSnapshot {
            udp_rx_packets: self.udp_rx_packets.load(Relaxed),
            drops: drops_map(&self.drops),
        }
    }
}

/// Adds `n` to a counter; a short name for the hot path.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}
