//! The local admin API: HTTP/1.1 with JSON bodies on a unix socket (mode
//! 0600, the only way to change anything without a token) and, if
//! configured, on a loopback TCP address (read-only unless a token file is
//! given; see [`listen`]). It is the CLI's only way into the daemon.
//! Resources live under `/v1/`.

/// The HTTP client over a unix socket the CLI (and the Docker driver) use.
pub use crate::unix_http as client;
pub mod listen;
pub mod server;

pub use crate::status::{DataplaneInfo, NetworkStatus, Status, WorkerInfo};

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::raw::{RawHealth, RawPort};

/// Default path of the admin socket.
pub const DEFAULT_SOCKET: &str = "/run/vxmesh/vxmeshd.sock";

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
    /// Datagrams between its nodes are sealed (`encrypted = true`).
    #[serde(default)]
    pub encrypted: bool,
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
