//! The status document (`GET /v1/status`, `vxmesh status`, the systemd
//! STATUS line, and the figures `/metrics` is made of): a read of the
//! node's state, below the admin API and the metrics that both serve it.

use serde::{Deserialize, Serialize};
use vxmesh_dataplane::crypto::CryptoCounters;
use vxmesh_dataplane::overlay::stats::{GlobalStatsSnapshot, NetStatsSnapshot};

use crate::state::State;

/// `GET /v1/status`: the daemon at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub address: String,
    pub version: String,
    /// The daemon's process id (after a handover: the successor's).
    #[serde(default)]
    pub pid: u32,
    pub uptime_s: f64,
    pub config: String,
    pub vxlan_port: u16,
    /// Outer UDP source ports the node spreads its flows over.
    pub source_ports: Vec<u16>,
    /// Where the desired state comes from and whether it is reachable
    /// (`connected: false`: forwarding on the last known state).
    #[serde(default)]
    pub store: crate::store::StoreStatus,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_error: Option<String>,
    /// The last desired state applied: how long validating and applying it
    /// took, and its size.
    #[serde(default)]
    pub last_apply: crate::timing::LastApply,
    pub networks: Vec<NetworkStatus>,
    pub global: GlobalStatsSnapshot,
    pub workers: Vec<WorkerInfo>,
    /// Offloads and batching in effect.
    #[serde(default)]
    pub dataplane: DataplaneInfo,
    /// Encrypted networks: this node's key and its sessions.
    #[serde(default)]
    pub encryption: EncryptionStatus,
}

/// This node's key and its session with every peer of an encrypted
/// network.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EncryptionStatus {
    /// This node's public key (none: encrypted networks carry nothing).
    pub public_key: Option<String>,
    pub peers: Vec<PeerSession>,
    pub counters: CryptoCounters,
}

/// The session with one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerSession {
    pub address: String,
    /// `established`, `no-session` (a handshake is due or under way: the
    /// peer gets nothing until it completes), `no-peer-key` (the cluster
    /// has no public key for it), `no-node-key` (this node has none).
    pub state: String,
    pub cipher: Option<String>,
    /// Age of the session sent with, seconds.
    pub age_s: Option<f64>,
    /// Datagrams sealed with it / opened with it.
    pub sent: u64,
    pub received: u64,
    /// This node started its handshake.
    pub initiator: bool,
}

/// What the packet path runs with and how well it batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DataplaneInfo {
    /// TAPs with a virtio-net header (TSO from the kernel).
    pub tap_vnet_hdr: bool,
    /// The TAPs hand over UDP super-frames (USO).
    #[serde(default)]
    pub tap_uso: bool,
    /// Runs of UDP datagrams go into the TAPs as one UDP GSO frame.
    #[serde(default)]
    pub tap_uso_write: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
    /// `[settings] busy_poll_us` in force.
    #[serde(default)]
    pub busy_poll_us: u64,
    /// Underlay receiving sockets (and TAP queues per network).
    pub queues: usize,
    /// Means since start: frames read from a TAP per wake-up, underlay
    /// reads per wake-up, datagrams per send to a peer.
    pub tap_reads_per_wakeup: f64,
    pub underlay_reads_per_wakeup: f64,
    pub datagrams_per_send: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkStatus {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub tap: String,
    pub tap_mac: String,
    pub mtu: u16,
    pub learning: bool,
    /// Datagrams between nodes are sealed.
    #[serde(default)]
    pub encrypted: bool,
    /// Underlay addresses of the other member nodes.
    pub peers: Vec<String>,
    pub endpoints: usize,
    pub fdb_static: usize,
    pub fdb_learned: usize,
    /// Local workload addresses this node announces (`announce = true`).
    #[serde(default)]
    pub announced: usize,
    pub stats: NetStatsSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    pub name: String,
    pub idle_ms: u64,
    pub running: bool,
    /// Frames read from the lane's TAP queues so far.
    #[serde(default)]
    pub tap_reads: u64,
    /// Reads of the lane's underlay socket so far (each may hold several
    /// datagrams with UDP GRO).
    #[serde(default)]
    pub underlay_reads: u64,
}

/// One row of `GET /v1/fdb`.
/// The status document (also used for the systemd STATUS line).
pub fn build_status(st: &State) -> Status {
    let inner = st.inner.lock().expect("state lock poisoned");
    let tables = inner.dataplane.tables();
    let cluster = &inner.cluster;
    let networks = tables
        .networks
        .iter()
        .map(|n| {
            let subnet = cluster
                .network(&n.name)
                .map(|c| c.subnet.to_string())
                .unwrap_or_default();
            NetworkStatus {
                name: n.name.clone(),
                vni: n.vni,
                subnet,
                tap: format!("vxm-{}", n.name),
                tap_mac: n.tap_mac.to_string(),
                mtu: n.mtu,
                learning: n.learning,
                encrypted: n.encrypted,
                peers: n.peers.iter().map(|p| p.to_string()).collect(),
                endpoints: n.arp.len(),
                fdb_static: n.fdb.len(),
                fdb_learned: n.learned.len(),
                announced: n.announce.as_ref().map(|a| a.len()).unwrap_or(0),
                stats: n.stats.snapshot(),
            }
        })
        .collect();
    Status {
        node: st.node.clone(),
        address: tables.local.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_s: st.started.elapsed().as_secs_f64(),
        config: st.config_path.display().to_string(),
        vxlan_port: inner.dataplane.underlay().port(),
        source_ports: inner.dataplane.underlay().source_ports(),
        store: st.store_status(),
        reloads_ok: inner.reloads_ok,
        reloads_failed: inner.reloads_failed,
        last_reload_error: inner.last_reload_error.clone(),
        last_apply: st.times.last(),
        networks,
        global: tables.global.snapshot(),
        workers: inner
            .dataplane
            .workers()
            .into_iter()
            .map(|w| WorkerInfo {
                name: w.name,
                idle_ms: w.idle_ms,
                running: w.running,
                tap_reads: w.tap_reads,
                underlay_reads: w.underlay_reads,
            })
            .collect(),
        dataplane: {
            let o = inner.dataplane.offloads();
            let b = inner.dataplane.batches();
            DataplaneInfo {
                tap_vnet_hdr: o.tap_vnet_hdr,
                tap_uso: o.tap_uso,
                tap_uso_write: o.tap_uso_write,
                busy_poll_us: inner.dataplane.busy_poll().as_micros() as u64,
                udp_gso: o.udp_gso,
                udp_gro: o.udp_gro,
                queues: inner.dataplane.underlay().receivers(),
                tap_reads_per_wakeup: b.tap_reads.mean(),
                underlay_reads_per_wakeup: b.underlay_reads.mean(),
                datagrams_per_send: b.tx_datagrams.mean(),
            }
        },
        encryption: encryption(&tables),
    }
}

fn encryption(tables: &vxmesh_dataplane::overlay::Tables) -> EncryptionStatus {
    let sessions = tables.crypto.sessions.load();
    let now = std::time::Instant::now();
    let mut peers: Vec<PeerSession> = tables
        .keys
        .peers
        .iter()
        .map(|(addr, key)| {
            let k = sessions.sender(*addr, now);
            let state = match (&tables.keys.node, key, k) {
                (None, _, _) => "no-node-key",
                (_, None, _) => "no-peer-key",
                (_, _, None) => "no-session",
                _ => "established",
            };
            PeerSession {
                address: addr.to_string(),
                state: state.into(),
                cipher: k.map(|k| k.cipher().as_str().to_string()),
                age_s: k.map(|k| now.saturating_duration_since(k.created).as_secs_f64()),
                sent: k.map_or(0, |k| k.sent()),
                received: k.map_or(0, |k| {
                    k.rx_datagrams.load(std::sync::atomic::Ordering::Relaxed)
                }),
                initiator: k.is_some_and(|k| k.initiator),
            }
        })
        .collect();
    peers.sort_by(|a, b| a.address.cmp(&b.address));
    EncryptionStatus {
        public_key: tables.keys.node.as_ref().map(|k| k.public().to_string()),
        peers,
        counters: tables.crypto.stats.snapshot(),
    }
}
