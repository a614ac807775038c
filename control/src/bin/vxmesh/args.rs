//! The command line's arguments.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use vxmesh_control::api;
use vxmesh_control::lab;

/// vxmesh: VXLAN overlay networks in userspace.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// The daemon's admin socket.
    #[arg(long, short = 'H', env = "VXMESH_SOCKET", default_value = api::DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build a 3-host lab from network namespaces, prove the overlay works,
    /// print what was measured, and clean up.
    Lab(lab::LabArgs),
    /// The daemon's status: node, networks, counters, workers.
    Status,
    /// Networks (`ls`, `inspect NAME`).
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Endpoints: overlay addresses and the nodes that own them.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Nodes of the cluster.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Services of the routing mesh (`ls`, `ps NAME`, `inspect NAME`).
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// The daemon's Prometheus metrics (OpenMetrics text), as scraped.
    Metrics,
    /// The forwarding table (`show`).
    Fdb {
        #[command(subcommand)]
        cmd: FdbCmd,
    },
    /// Node keys for encrypted networks (no daemon needed).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Write a new private key to FILE (mode 0600, never overwriting one)
    /// and print its public key, for the node's `public_key` in the cluster.
    Generate { file: PathBuf },
    /// Print the public key of the private key in FILE.
    Public { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// List networks.
    Ls,
    /// Show one network with its endpoints.
    Inspect { name: String },
    /// Create a network (etcd store).
    Create {
        name: String,
        /// VXLAN network identifier, 1..=16777215, unique.
        #[arg(long)]
        vni: u32,
        /// Overlay subnet, e.g. 10.0.9.0/24.
        #[arg(long)]
        subnet: Ipv4Net,
        /// Overlay MTU; default underlay MTU - 50.
        #[arg(long)]
        mtu: Option<u16>,
        /// Learn remote MACs from traffic.
        #[arg(long)]
        learning: bool,
        /// Nodes announce the addresses their workloads use on the TAP as
        /// endpoints (under their lease).
        #[arg(long)]
        announce: bool,
        /// Containers may attach (Docker's driver, vxmesh-cni): each member
        /// node bridges the TAP with the containers' veths.
        #[arg(long)]
        attachable: bool,
        /// Learned and announced entries expire after this idle time.
        #[arg(long)]
        ageing_s: Option<u64>,
        /// Member nodes that own no endpoint (repeat).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Resolver for names outside the cluster, address or address:port
        /// (repeat, asked in turn; default: such names are REFUSED).
        #[arg(long = "dns-forward")]
        dns_forward: Vec<String>,
        /// Forwarded DNS queries per second and client (default 50; 0: no
        /// limit).
        #[arg(long = "dns-forward-qps")]
        dns_forward_qps: Option<u32>,
        /// Most learned MACs kept (with --learning).
        #[arg(long = "fdb-cap")]
        fdb_cap: Option<u32>,
        /// Floods per second this node replicates into the network.
        #[arg(long = "flood-pps")]
        flood_pps: Option<u32>,
        /// Let workloads send router advertisements and redirects.
        #[arg(long = "allow-ra")]
        allow_ra: bool,
        /// Let workloads answer as DHCP servers.
        #[arg(long = "allow-dhcp")]
        allow_dhcp: bool,
        /// Seal every datagram between nodes (Noise IK sessions; every
        /// member node needs a key). Not interoperable with kernel vxlan.
        #[arg(long)]
        encrypted: bool,
    },
    /// Remove a network and its endpoints (refused while a service uses it).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// List endpoints of every network (or one).
    Ls { network: Option<String> },
    /// Add an endpoint: an overlay address and the node that owns it.
    Add {
        network: String,
        ip: Ipv4Addr,
        /// The node that runs it.
        #[arg(long)]
        node: String,
        /// Default 02:42:<ip>, Docker's rule.
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove an endpoint.
    Rm { network: String, ip: Ipv4Addr },
}

/// Service settings; on `update` only the ones given change.
#[derive(clap::Args, Debug, Default)]
pub struct ServiceFlags {
    /// The overlay network of the tasks.
    #[arg(long)]
    pub network: Option<String>,
    /// A task's overlay address (repeat); it must be an endpoint.
    #[arg(long = "task")]
    pub tasks: Vec<Ipv4Addr>,
    /// PUBLISHED:TARGET[/tcp|udp] (repeat), like `docker service create -p`.
    #[arg(long = "publish", short = 'p')]
    pub publish: Vec<String>,
    /// maglev, round-robin or least-conn.
    #[arg(long)]
    pub balance: Option<String>,
    /// ingress (every node listens) or host (only nodes with a task).
    #[arg(long)]
    pub mode: Option<String>,
    /// Send a PROXY protocol v2 header to the tasks.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// tcp, http:/PATH, or udp (an ICMP port unreachable is down).
    #[arg(long)]
    pub health: Option<String>,
    #[arg(long)]
    pub health_interval_ms: Option<u64>,
    #[arg(long)]
    pub health_timeout_ms: Option<u64>,
    #[arg(long)]
    pub rise: Option<u32>,
    #[arg(long)]
    pub fall: Option<u32>,
    /// Time connections to a leaving task may go on.
    #[arg(long)]
    pub drain_ms: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// List services with their ports and healthy tasks.
    Ls,
    /// The tasks of one service: health, connections, bytes.
    Ps { name: String },
    /// One service as JSON.
    Inspect { name: String },
    /// Create a service (etcd store).
    Create {
        name: String,
        #[command(flatten)]
        flags: ServiceFlags,
    },
    /// Change a service: only the settings given change (etcd store).
    Update {
        name: String,
        #[command(flatten)]
        flags: ServiceFlags,
    },
    /// Set a service's task list (etcd store): `scale web 10.0.9.2 10.0.9.3`.
    Scale { name: String, tasks: Vec<Ipv4Addr> },
    /// Remove a service (etcd store).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes.
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum FdbCmd {
    /// Show static and learned entries.
    Show,
}
