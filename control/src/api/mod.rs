//! The local admin API: HTTP/1.1 with JSON bodies on a unix socket (mode
//! 0600, the only way to change anything without a token) and, if
//! configured, on a loopback TCP address (read-only unless a token file is
//! given; see [`listen`]). It is the CLI's only way into the daemon.
//! Resources live under `/v1/`.

pub mod client;
pub mod listen;
pub mod server;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::raw::{RawHealth, RawPort};
use vxmesh_dataplane::overlay::stats::{GlobalStatsSnapshot, NetStatsSnapshot};

/// Default path of the admin socket.
pub const DEFAULT_SOCKET: &str = "/run/vxmesh/vxmeshd.sock";

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FdbEntry {
    pub network: String,
    pub mac: String,
    /// Underlay address of the node behind the MAC.
    pub vtep: String,
    /// The node with that address (the entry's owner), if known.
    #[serde(default)]
    pub node: Option<String>,
    /// `static` (from the store) or `learned`.
    pub kind: String,
    /// Seconds since last seen (learned entries only).
    pub age_s: Option<f64>,
}

/// One row of `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    /// This daemon's own node.
    pub local: bool,
    /// Networks the node is a member of.
    pub networks: Vec<String>,
    /// `static` (file store), `up` (registered under a live lease) or
    /// `down` (owns declared endpoints but has no live lease).
    #[serde(default)]
    pub state: String,
}

/// One row of `GET /v1/networks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkInfo {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub mtu: u16,
    pub learning: bool,
    /// Member nodes.
    pub nodes: Vec<String>,
    pub endpoints: Vec<EndpointInfo>,
    /// True when this node is a member (and so has the TAP).
    pub local: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    pub ip: String,
    pub mac: String,
    pub node: String,
    pub name: Option<String>,
    /// The container it was allocated for (none: declared by an operator,
    /// or a node's own address).
    #[serde(default)]
    pub container: Option<String>,
    /// The service it is a task of, by its selector.
    #[serde(default)]
    pub service: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub error: String,
}

/// The body of every successful write (`released`: addresses a detach
/// gave back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WriteOk {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<usize>,
}

impl WriteOk {
    pub const OK: WriteOk = WriteOk {
        ok: true,
        released: None,
    };
}

/// `PATCH /v1/services/{name}`: the settings to change; one left out stays
/// as it is. The bodies of `POST /v1/networks`, `/v1/endpoints` and
/// `/v1/services` are the cluster file's tables
/// ([`crate::config::raw::RawNetwork`], `RawEndpoint`, `RawService`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<Ipv4Addr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<RawPort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
}

impl ServiceUpdate {
    pub fn is_empty(&self) -> bool {
        *self == ServiceUpdate::default()
    }
}
