//! The cluster's tables as written, before any rule is checked: the shape
//! of the cluster file's `[settings]`, `[[nodes]]`, `[[networks]]`,
//! `[[endpoints]]` and `[[services]]`, and of the etcd store's JSON
//! documents (each document's `spec` is one of these tables). Both stores
//! deserialize into these types and hand them to [`super::validate`]; a
//! [`Place`] says where in them a value sits, and each store turns it into
//! its own location (file:line:column, or a document key).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A whole cluster as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub settings: RawSettings,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub networks: Vec<RawNetwork>,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    pub services: Vec<RawService>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_mtu: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ports: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offloads: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_poll_us: Option<u64>,
    /// Seconds after which a session of an encrypted network is renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rekey_seconds: Option<u64>,
    /// Datagrams after which a session is renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rekey_messages: Option<u64>,
    /// TCP port of the mesh relay between nodes (0: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_relay_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    pub address: Ipv4Addr,
    /// The node's X25519 public key, base64 (encrypted networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Extra member nodes that have no endpoint in the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub learning: bool,
    /// Every datagram between nodes is sealed (Noise IK sessions).
    #[serde(default, skip_serializing_if = "is_false")]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb_cap: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood_pps: Option<u32>,
    /// Announce local workload addresses learned from the TAP (etcd store).
    #[serde(default, skip_serializing_if = "is_false")]
    pub announce: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_cap: Option<usize>,
    /// The DNS responder's address (default: the last usable address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Ipv4Addr>,
    /// The cluster domain names may end in (default `vxmesh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Resolvers for names outside the cluster (default: none, REFUSED).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_forward: Vec<String>,
    /// Containers may attach (a bridge holds the TAP and their veths).
    #[serde(default, skip_serializing_if = "is_false")]
    pub attachable: bool,
    /// Per-node ranges for container addresses (cluster file store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<RawPool>,
    /// Workloads may send router advertisements and redirects.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_ra: bool,
    /// Workloads may answer as DHCP servers.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_dhcp: bool,
    /// Forwarded DNS queries per second and client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_forward_qps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub node: String,
    pub range: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub network: String,
    pub node: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub network: String,
    #[serde(default)]
    pub tasks: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ports: Vec<RawPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_source: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    pub published: u16,
    pub target: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_failures: Option<u32>,
    /// kind "udp": the probe's payload, and bytes its reply must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_send: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_expect: Option<String>,
}

/// Which table of a [`RawFile`] a value is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Settings,
    Nodes,
    Networks,
    Endpoints,
    Services,
}

impl Table {
    /// The table's name in the file (and the key prefix in etcd).
    pub fn name(self) -> &'static str {
        match self {
            Table::Settings => "settings",
            Table::Nodes => "nodes",
            Table::Networks => "networks",
            Table::Endpoints => "endpoints",
            Table::Services => "services",
        }
    }
}

/// One step inside a table: a key, or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(&'static str),
    Index(usize),
}

/// Where a value sits in a [`RawFile`]: the table, the element (for the
/// array tables; 0 for `settings`) and the steps inside it (empty: the
/// element itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub table: Table,
    pub index: usize,
    pub steps: Vec<Step>,
}

/// One element of a table, to name places inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub table: Table,
    pub index: usize,
}

impl Item {
    pub fn new(table: Table, index: usize) -> Item {
        Item { table, index }
    }

    /// The element itself.
    pub fn place(self) -> Place {
        Place {
            table: self.table,
            index: self.index,
            steps: Vec::new(),
        }
    }

    /// Key `key` of the element.
    pub fn key(self, key: &'static str) -> Place {
        self.place().key(key)
    }
}

impl Place {
    pub fn key(mut self, key: &'static str) -> Place {
        self.steps.push(Step::Key(key));
        self
    }

    pub fn index(mut self, i: usize) -> Place {
        self.steps.push(Step::Index(i));
        self
    }
}

/// A rule a value breaks, and where the value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub place: Place,
    pub reason: String,
}
