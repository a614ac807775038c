//! The desired state: nodes, networks and endpoints, as read from a store.
//! Validated on the way in (see [`crate::config`]); everything here may
//! assume names resolve and addresses are unique.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use vxmesh_dataplane::crypto::{PublicKey, RekeyPolicy};
use vxmesh_dataplane::mesh::spec::ServiceSpec;
use vxmesh_dataplane::wire::MacAddr;

/// Cluster-wide settings (`[settings]` in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// VXLAN UDP port, listened on and sent to. Default 4789 (IANA).
    pub vxlan_port: u16,
    /// MTU of the underlay links; networks default to this minus 50.
    pub underlay_mtu: u16,
    /// Number of outer UDP source ports a node spreads its flows over.
    pub source_ports: usize,
    /// TAPs with virtio-net headers and TSO, UDP GSO on the underlay.
    pub offloads: bool,
    /// Worker threads on each side (TAP queues per network, receiving
    /// underlay sockets); 0 means one per CPU the daemon may run on.
    pub queues: usize,
    /// Microseconds a dataplane lane keeps polling without sleeping after
    /// its last packet (0: sleep at once). Trades CPU for latency: a lane
    /// that is still polling when the next packet comes saves a thread
    /// wake-up, tens of microseconds on a VM.
    pub busy_poll_us: u64,
    /// Sessions of encrypted networks are renewed after this many seconds
    /// ...
    pub rekey_s: u64,
    /// ... or after this many datagrams sent with one.
    pub rekey_messages: u64,
    /// TCP port of each node's mesh relay on its data-path address: the
    /// mesh's connections to tasks on other nodes go there over the
    /// underlay instead of through the overlay (0: off, always the overlay).
    pub mesh_relay_port: u16,
}

impl Settings {
    /// Most queues a setting (or the CPU count) may ask for.
    pub const MAX_QUEUES: usize = 16;
    /// The relay's port when the file does not set one.
    pub const DEFAULT_MESH_RELAY_PORT: u16 = 7950;
    /// Busy-poll budget when the file does not set one.
    pub const DEFAULT_BUSY_POLL_US: u64 = 0;
    /// Largest busy-poll budget accepted (10 ms: beyond that a lane is
    /// simply spinning).
    pub const MAX_BUSY_POLL_US: u64 = 10_000;

    /// The queue count in effect: `queues`, or with 0 the number of CPUs
    /// available to this process (its affinity mask, cgroup quota), at
    /// most [`Settings::MAX_QUEUES`].
    /// The rekey timers these settings give.
    pub fn rekey(&self) -> RekeyPolicy {
        RekeyPolicy {
            after: std::time::Duration::from_secs(self.rekey_s),
            after_messages: self.rekey_messages,
        }
    }

    pub fn effective_queues(&self) -> usize {
        match self.queues {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(Self::MAX_QUEUES),
            n => n,
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            vxlan_port: 4789,
            underlay_mtu: 1500,
            source_ports: 16,
            offloads: true,
            queues: 0,
            busy_poll_us: Settings::DEFAULT_BUSY_POLL_US,
            rekey_s: RekeyPolicy::DEFAULT_AFTER.as_secs(),
            rekey_messages: RekeyPolicy::DEFAULT_AFTER_MESSAGES,
            mesh_relay_port: Settings::DEFAULT_MESH_RELAY_PORT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// Data-path (underlay) address: bound by the VXLAN socket and always
    /// the outer source address.
    pub address: Ipv4Addr,
    /// Its static X25519 public key: encrypted networks make sessions only
    /// with nodes that have one.
    pub public_key: Option<PublicKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// Overlay MTU (the TAP's).
    pub mtu: u16,
    /// Member nodes beyond those that own an endpoint.
    pub extra_nodes: Vec<String>,
    /// Learn remote MACs from received traffic (off by default: the
    /// forwarding table comes from the endpoints, like Docker's peerdb).
    pub learning: bool,
    /// Every datagram between member nodes is sealed; plain ones are
    /// dropped (see `vxmesh_dataplane::crypto`).
    pub encrypted: bool,
    /// Most learned entries kept for this network.
    pub fdb_cap: usize,
    /// Learned entries expire after this many seconds without traffic.
    pub ageing_s: u64,
    /// Broadcast, multicast and unknown-unicast frames per second this node
    /// replicates into the network; more are dropped (0: no limit).
    pub flood_pps: u32,
    /// Nodes learn their local workloads' addresses from the TAP and
    /// publish them as endpoints under their lease (etcd store only).
    pub announce: bool,
    /// Most addresses one node announces in this network.
    pub announce_cap: usize,
    /// The DNS responder's address on every member node.
    pub dns: Ipv4Addr,
    /// Names may end in `.<domain>` (lowercase, no dots at the ends).
    pub domain: String,
    /// Resolvers asked for names outside the cluster, in turn (empty:
    /// those names are REFUSED).
    pub dns_forward: Vec<std::net::SocketAddr>,
    /// Containers may attach (Docker's `--attachable`): on each member node
    /// the TAP is a port of the bridge `vxb-<name>`, which holds the node's
    /// addresses in the network and one veth per local container.
    pub attachable: bool,
    /// Address ranges the nodes allocate container addresses from when the
    /// store is the cluster file (node name, range). With etcd the whole
    /// subnet is shared and allocated with a compare-and-swap instead.
    pub pools: Vec<(String, Ipv4Net)>,
    /// Workloads may send IPv6 router advertisements and redirects and
    /// ICMPv4 redirects (off: the overlay drops them).
    pub allow_ra: bool,
    /// Workloads may act as DHCP or DHCPv6 servers (off: dropped).
    pub allow_dhcp: bool,
    /// Queries a second one client may have forwarded to `dns_forward`;
    /// more are dropped unanswered (0: no limit).
    pub dns_forward_qps: u32,
}

impl Network {
    pub const DEFAULT_FDB_CAP: usize = 4096;
    pub const DEFAULT_AGEING_S: u64 = 300;
    pub const DEFAULT_FLOOD_PPS: u32 = 1000;
    pub const DEFAULT_DNS_FORWARD_QPS: u32 = 50;
    pub const DEFAULT_ANNOUNCE_CAP: usize = 256;
    pub const DEFAULT_DOMAIN: &'static str = "vxmesh";

    /// The default DNS address: the subnet's last usable address.
    pub fn default_dns(subnet: &Ipv4Net) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(subnet.broadcast()).saturating_sub(1))
    }

    /// Name of the network's TAP device.
    pub fn tap_name(&self) -> String {
        format!("vxm-{}", self.name)
    }

    /// Name of the network's bridge on nodes where it is attachable.
    pub fn bridge_name(&self) -> String {
        format!("vxb-{}", self.name)
    }

    /// The VIP pool: the quarter of the subnet's usable addresses just
    /// below the DNS address (see `config::allocate_vips`), as an inclusive
    /// range of addresses.
    pub fn vip_pool(&self) -> std::ops::RangeInclusive<u32> {
        let first = u32::from(self.subnet.network()) + 1;
        let below = u32::from(self.dns).saturating_sub(first);
        let hosts = (1u64 << (32 - self.subnet.prefix_len())).saturating_sub(2);
        let pool = ((hosts / 4).max(1) as u32).min(below);
        let top = u32::from(self.dns).saturating_sub(1);
        (top + 1 - pool)..=top
    }

    /// True when containers may be given `ip`: a usable address of the
    /// subnet that is neither the DNS address nor in the VIP pool.
    pub fn allocatable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.dns
            && !self.vip_pool().contains(&u32::from(ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub network: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub name: Option<String>,
    /// The container this endpoint was allocated for (`docker:<endpoint
    /// id>`, `cni:<container id>/<ifname>`), or `None` for an endpoint an
    /// operator declared. Container endpoints never go on the TAP.
    pub container: Option<String>,
    /// The service this endpoint is a task of (a container's selector,
    /// given when it attaches).
    pub service: Option<String>,
}

/// The whole desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Cluster {
    pub settings: Settings,
    pub nodes: Vec<Node>,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub services: Vec<ServiceSpec>,
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// Endpoints of one network, in file order.
    pub fn endpoints_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.iter().filter(move |e| e.network == network)
    }

    /// Names of the nodes that take part in a network: owners of its
    /// endpoints and the nodes listed for it.
    pub fn members(&self, net: &Network) -> Vec<&Node> {
        // One pass over the endpoints (1,000 nodes x 100,000 endpoints
        // must not be a product).
        let owners: HashSet<&str> = self
            .endpoints_of(&net.name)
            .map(|e| e.node.as_str())
            .collect();
        self.nodes
            .iter()
            .filter(|n| {
                net.extra_nodes.contains(&n.name)
                    || owners.contains(n.name.as_str())
                    || net.pools.iter().any(|(p, _)| *p == n.name)
            })
            .collect()
    }

    /// True when `node` is a member of `net`.
    pub fn is_member(&self, net: &Network, node: &str) -> bool {
        self.node(node).is_some()
            && (net.extra_nodes.iter().any(|n| n == node)
                || net.pools.iter().any(|(p, _)| p == node)
                || self.endpoints_of(&net.name).any(|e| e.node == node))
    }

    /// The networks `node` is a member of.
    pub fn networks_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Network> + 'a {
        self.networks
            .iter()
            .filter(move |net| self.is_member(net, node))
    }

    /// Underlay address of every node, by name (for lookups in bulk).
    pub fn addresses(&self) -> HashMap<&str, Ipv4Addr> {
        self.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.address))
            .collect()
    }

    /// The address this node puts on its TAP in `net`: its first endpoint
    /// there, in file order. Further endpoints of the node are workloads
    /// behind the TAP (for example on a bridge with it).
    pub fn tap_address(&self, net: &Network, node: &str) -> Option<Ipv4Addr> {
        self.host_endpoint(net, node).map(|e| e.ip)
    }

    /// The node's own endpoint in `net`: its first one that is not a
    /// container's.
    pub fn host_endpoint<'a>(&'a self, net: &'a Network, node: &str) -> Option<&'a Endpoint> {
        self.endpoints_of(&net.name)
            .find(|e| e.node == node && e.container.is_none())
    }
}

impl Cluster {
    /// The node that owns an overlay address of a network.
    pub fn owner<'a>(&'a self, network: &'a str, ip: Ipv4Addr) -> Option<&'a str> {
        self.endpoints_of(network)
            .find(|e| e.ip == ip)
            .map(|e| e.node.as_str())
    }
}
