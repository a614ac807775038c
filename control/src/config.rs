//! The cluster file: one TOML document, the same on every host, that lists
//! nodes, networks and endpoints. Parsing keeps byte spans so every error
//! names the file, the line and the reason; validation collects every error
//! instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;
use vxmesh_dataplane::wire::MacAddr;

use std::time::Duration;

use vxmesh_dataplane::mesh::balance::Algorithm;
use vxmesh_dataplane::mesh::spec::{
    ClientLimits, EndpointMode, Mode, PortSpec, Protocol, ServiceSpec,
};

use crate::model::{Cluster, Endpoint, Network, Node, Settings};

mod mesh;
pub use mesh::bad_path;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not tied to a place in the file.
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.reason
            )
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
    #[serde(default)]
    networks: Vec<Spanned<RawNetwork>>,
    #[serde(default)]
    endpoints: Vec<Spanned<RawEndpoint>>,
    #[serde(default)]
    services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    network: Spanned<String>,
    #[serde(default)]
    tasks: Vec<Spanned<Ipv4Addr>>,
    #[serde(default)]
    ports: Vec<Spanned<RawPort>>,
    balance: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    mode: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<String>>,
    drain_ms: Option<Spanned<u64>>,
    slow_start_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    udp_timeout_ms: Option<Spanned<u64>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    first_byte_timeout_ms: Option<Spanned<u64>>,
    write_timeout_ms: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u32>>,
    max_sessions: Option<Spanned<u32>>,
    max_connections_per_source: Option<Spanned<u32>>,
    max_sessions_per_source: Option<Spanned<u32>>,
    vip: Option<Spanned<Ipv4Addr>>,
    endpoint_mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    published: Spanned<u16>,
    target: Spanned<u16>,
    protocol: Option<Spanned<String>>,
    listen: Option<Spanned<std::net::IpAddr>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<Spanned<String>>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    path: Option<Spanned<String>>,
    status: Option<u16>,
    port: Option<Spanned<u16>>,
    passive_failures: Option<Spanned<u32>>,
    /// kind "udp": the probe's payload, and bytes its reply must hold.
    udp_send: Option<Spanned<String>>,
    udp_expect: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    vxlan_port: Option<u16>,
    underlay_mtu: Option<Spanned<u16>>,
    source_ports: Option<Spanned<usize>>,
    offloads: Option<bool>,
    queues: Option<Spanned<usize>>,
    busy_poll_us: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    address: Spanned<Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Spanned<String>,
    vni: Spanned<u32>,
    subnet: Spanned<Ipv4Net>,
    mtu: Option<Spanned<u16>>,
    /// Extra member nodes that have no endpoint in the network.
    #[serde(default)]
    nodes: Vec<Spanned<String>>,
    #[serde(default)]
    learning: bool,
    fdb_cap: Option<Spanned<u32>>,
    ageing_s: Option<Spanned<u64>>,
    flood_pps: Option<Spanned<u32>>,
    /// Announce local workload addresses learned from the TAP (etcd store).
    #[serde(default)]
    announce: bool,
    announce_cap: Option<Spanned<usize>>,
    /// The DNS responder's address (default: the last usable address).
    dns: Option<Spanned<Ipv4Addr>>,
    /// The cluster domain names may end in (default `vxmesh`).
    domain: Option<Spanned<String>>,
    /// Resolvers for names outside the cluster (default: none, REFUSED).
    #[serde(default)]
    dns_forward: Vec<Spanned<String>>,
    /// Containers may attach (a bridge holds the TAP and their veths).
    #[serde(default)]
    attachable: bool,
    /// Per-node ranges for container addresses (cluster file store).
    #[serde(default)]
    pools: Vec<Spanned<RawPool>>,
    /// Workloads may send router advertisements and redirects.
    #[serde(default)]
    allow_ra: bool,
    /// Workloads may answer as DHCP servers.
    #[serde(default)]
    allow_dhcp: bool,
    /// Forwarded DNS queries per second and client.
    dns_forward_qps: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    node: Spanned<String>,
    range: Spanned<Ipv4Net>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    network: Spanned<String>,
    node: Spanned<String>,
    ip: Spanned<Ipv4Addr>,
    mac: Option<Spanned<String>>,
    name: Option<String>,
    container: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
}

/// Bytes of VXLAN over IPv4 around an inner frame: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const OVERHEAD: u16 = 50;
/// Longest network name: the TAP is `vxm-<name>` and interface names stop
/// at 15 bytes.
pub const MAX_NETWORK_NAME: usize = 11;
/// Most addresses a node may announce in one network.
pub const MAX_ANNOUNCE_CAP: usize = 65536;
/// Most resolvers one network forwards to (like resolv.conf's three, and one).
pub const MAX_DNS_FORWARD: usize = 4;
/// Largest per-node container range (a /22): every node installs a
/// forwarding entry for each address of the other nodes' ranges.
pub const MAX_POOL_ADDRESSES: u32 = 1024;

struct Lines<'a> {
    file: &'a Path,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(file: &'a Path, text: &str) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { file, starts }
    }

    fn error(&self, span: Option<Range<usize>>, reason: impl Into<String>) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let line = self.starts.partition_point(|&st| st <= s.start);
                (line, s.start - self.starts[line - 1] + 1)
            }
            None => (0, 0),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            reason: reason.into(),
        }
    }
}

/// Reads and validates a cluster file.
pub fn load(path: &Path) -> Result<Cluster, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            reason: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates a cluster document; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Cluster, ConfigErrors> {
    let lines = Lines::new(path, text);
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![lines.error(e.span(), e.message().trim().to_string())]))?;
    let mut errs = Vec::new();
    let mut err = |span: Range<usize>, reason: String| errs.push(lines.error(Some(span), reason));

    let mut settings = Settings::default();
    if let Some(p) = raw.settings.vxlan_port {
        settings.vxlan_port = p;
    }
    if let Some(m) = &raw.settings.underlay_mtu {
        if *m.get_ref() < 576 + OVERHEAD {
            err(
                m.span(),
                format!(
                    "underlay_mtu {} is too small (at least {})",
                    m.get_ref(),
                    576 + OVERHEAD
                ),
            );
        }
        settings.underlay_mtu = *m.get_ref();
    }
    if let Some(o) = raw.settings.offloads {
        settings.offloads = o;
    }
    if let Some(q) = &raw.settings.queues {
        if *q.get_ref() > Settings::MAX_QUEUES {
            err(
                q.span(),
                format!(
                    "queues must be 0 (one per CPU) to {}, not {}",
                    Settings::MAX_QUEUES,
                    q.get_ref()
                ),
            );
        }
        settings.queues = *q.get_ref();
    }
    if let Some(b) = &raw.settings.busy_poll_us {
        if *b.get_ref() > Settings::MAX_BUSY_POLL_US {
            err(
                b.span(),
                format!(
                    "busy_poll_us must be 0 (off) to {}, not {}",
                    Settings::MAX_BUSY_POLL_US,
                    b.get_ref()
                ),
            );
        }
        settings.busy_poll_us = *b.get_ref();
    }
    if let Some(n) = &raw.settings.source_ports {
        if !(1..=1024).contains(n.get_ref()) {
            err(
                n.span(),
                format!("source_ports must be 1 to 1024, not {}", n.get_ref()),
            );
        }
        settings.source_ports = *n.get_ref();
    }

    let mut nodes = Vec::new();
    let mut node_names = HashSet::new();
    let mut node_addrs = HashSet::new();
    for n in &raw.nodes {
        let n = n.get_ref();
        if !valid_name(n.name.get_ref(), 64) {
            err(
                n.name.span(),
                format!(
                    "node name `{}` must be 1-64 of [a-zA-Z0-9_.-]",
                    n.name.get_ref()
                ),
            );
        }
        if !node_names.insert(n.name.get_ref().clone()) {
            err(
                n.name.span(),
                format!("node `{}` is defined twice", n.name.get_ref()),
            );
        }
        let a = *n.address.get_ref();
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
            err(
                n.address.span(),
                format!("node address {a} is not a unicast address"),
            );
        }
        if !node_addrs.insert(a) {
            err(
                n.address.span(),
                format!("address {a} is used by two nodes"),
            );
        }
        nodes.push(Node {
            name: n.name.get_ref().clone(),
            address: a,
        });
    }

    let mut networks = Vec::new();
    let mut net_by_name: HashMap<String, Ipv4Net> = HashMap::new();
    let mut vnis = HashSet::new();
    for n in &raw.networks {
        let n = n.get_ref();
        let name = n.name.get_ref();
        if !valid_name(name, MAX_NETWORK_NAME) {
            err(n.name.span(), format!("network name `{name}` must be 1-{MAX_NETWORK_NAME} of [a-zA-Z0-9_.-] (the TAP is vxm-<name>)"));
        }
        if net_by_name.contains_key(name) {
            err(n.name.span(), format!("network `{name}` is defined twice"));
        }
        let vni = *n.vni.get_ref();
        if !(1..=vxmesh_dataplane::wire::vxlan::MAX_VNI).contains(&vni) {
            err(
                n.vni.span(),
                format!("vni {vni} is outside 1..=16777215 (24 bits)"),
            );
        } else if !vnis.insert(vni) {
            err(n.vni.span(), format!("vni {vni} is used by two networks"));
        }
        let subnet = *n.subnet.get_ref();
        if subnet.prefix_len() > 30 {
            err(
                n.subnet.span(),
                format!("subnet {subnet} is too small for endpoints (at most /30)"),
            );
        }
        if subnet.network() != subnet.addr() {
            err(
                n.subnet.span(),
                format!(
                    "subnet {subnet} has host bits set (did you mean {}?)",
                    subnet.trunc()
                ),
            );
        }
        let max_mtu = settings.underlay_mtu - OVERHEAD;
        let mtu = match &n.mtu {
            Some(m) if *m.get_ref() > max_mtu || *m.get_ref() < 576 => {
                err(
                    m.span(),
                    format!(
                        "mtu {} must be 576 to {max_mtu} (underlay MTU {} minus {OVERHEAD})",
                        m.get_ref(),
                        settings.underlay_mtu
                    ),
                );
                max_mtu
            }
            Some(m) => *m.get_ref(),
            None => max_mtu,
        };
        for member in &n.nodes {
            if !node_names.contains(member.get_ref()) {
                err(
                    member.span(),
                    format!("node `{}` is not defined in [[nodes]]", member.get_ref()),
                );
            }
        }
        let dns = match &n.dns {
            Some(d) => {
                let ip = *d.get_ref();
                if !usable(&subnet, ip) {
                    err(
                        d.span(),
                        format!("dns {ip} must be a usable address of subnet {subnet}"),
                    );
                }
                ip
            }
            None => Network::default_dns(&subnet),
        };
        let domain = match &n.domain {
            Some(d) => {
                let v = d.get_ref().trim_matches('.').to_ascii_lowercase();
                if !valid_domain(&v) {
                    err(d.span(), format!("domain `{}` must be dot-separated labels of 1-63 [a-z0-9-], at most 253 bytes", d.get_ref()));
                }
                v
            }
            None => Network::DEFAULT_DOMAIN.to_string(),
        };
        if n.dns_forward.len() > MAX_DNS_FORWARD {
            err(
                n.dns_forward[MAX_DNS_FORWARD].span(),
                format!("dns_forward takes at most {MAX_DNS_FORWARD} resolvers"),
            );
        }
        let mut dns_forward = Vec::new();
        for f in &n.dns_forward {
            let text = f.get_ref().trim();
            let addr = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match addr {
                None => err(
                    f.span(),
                    format!("dns_forward `{text}` must be an address, or address:port (port 53 by default)"),
                ),
                Some(a) if a.ip() == std::net::IpAddr::V4(dns) && a.port() == 53 => err(
                    f.span(),
                    format!("dns_forward {a} is the network's own DNS responder (a loop)"),
                ),
                Some(a) if a.port() == 0 || a.ip().is_unspecified() => err(
                    f.span(),
                    format!("dns_forward {a} needs a real address and a port other than 0"),
                ),
                Some(a) => dns_forward.push(a),
            }
        }
        let announce_cap = match &n.announce_cap {
            Some(c) if *c.get_ref() == 0 || *c.get_ref() > MAX_ANNOUNCE_CAP => {
                err(
                    c.span(),
                    format!(
                        "announce_cap {} must be 1 to {MAX_ANNOUNCE_CAP}",
                        c.get_ref()
                    ),
                );
                Network::DEFAULT_ANNOUNCE_CAP
            }
            Some(c) => *c.get_ref(),
            None => Network::DEFAULT_ANNOUNCE_CAP,
        };
        let mut pools: Vec<(String, Ipv4Net)> = Vec::new();
        for p in &n.pools {
            let p = p.get_ref();
            let (node, range) = (p.node.get_ref(), *p.range.get_ref());
            if !node_names.contains(node) {
                err(
                    p.node.span(),
                    format!("pool node `{node}` is not defined in [[nodes]]"),
                );
            }
            if range.trunc() != range || !subnet.contains(&range) {
                err(
                    p.range.span(),
                    format!("pool {range} must be a range inside the subnet {subnet}"),
                );
            } else if range.hosts().count() as u64 > u64::from(MAX_POOL_ADDRESSES) {
                err(
                    p.range.span(),
                    format!("pool {range} is larger than {MAX_POOL_ADDRESSES} addresses (a /22)"),
                );
            }
            if let Some((other, r)) = pools
                .iter()
                .find(|(o, r)| o == node || r.contains(&range) || range.contains(r))
            {
                err(
                    p.range.span(),
                    format!("pool {range} of node `{node}` overlaps pool {r} of node `{other}` (one range per node, disjoint)"),
                );
            }
            pools.push((node.clone(), range));
        }
        net_by_name.insert(name.clone(), subnet);
        networks.push(Network {
            allow_ra: n.allow_ra,
            allow_dhcp: n.allow_dhcp,
            dns_forward_qps: n
                .dns_forward_qps
                .unwrap_or(Network::DEFAULT_DNS_FORWARD_QPS),
            attachable: n.attachable,
            pools,
            announce: n.announce,
            announce_cap,
            dns,
            domain,
            dns_forward,
            name: name.clone(),
            vni,
            subnet,
            mtu,
            extra_nodes: n.nodes.iter().map(|s| s.get_ref().clone()).collect(),
            learning: n.learning,
            fdb_cap: mesh::FDB_CAP.get(&n.fdb_cap, Network::DEFAULT_FDB_CAP as u32, &mut err)
                as usize,
            ageing_s: mesh::AGEING.get(&n.ageing_s, Network::DEFAULT_AGEING_S, &mut err),
            flood_pps: mesh::FLOOD_PPS.get(&n.flood_pps, Network::DEFAULT_FLOOD_PPS, &mut err),
        });
    }

    let mut endpoints = Vec::new();
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    for e in &raw.endpoints {
        let e = e.get_ref();
        let net = e.network.get_ref();
        let ip = *e.ip.get_ref();
        match net_by_name.get(net) {
            None => err(
                e.network.span(),
                format!("network `{net}` is not defined in [[networks]]"),
            ),
            Some(subnet) => {
                if !subnet.contains(&ip) {
                    err(
                        e.ip.span(),
                        format!("{ip} is outside network `{net}`'s subnet {subnet}"),
                    );
                } else if ip == subnet.network() || ip == subnet.broadcast() {
                    err(
                        e.ip.span(),
                        format!("{ip} is the network or broadcast address of {subnet}"),
                    );
                } else if networks.iter().any(|n| &n.name == net && n.dns == ip) {
                    err(
                        e.ip.span(),
                        format!("{ip} is network `{net}`'s DNS address (move the endpoint, or set the network's `dns`)"),
                    );
                }
            }
        }
        if !node_names.contains(e.node.get_ref()) {
            err(
                e.node.span(),
                format!("node `{}` is not defined in [[nodes]]", e.node.get_ref()),
            );
        }
        if !ips.insert((net.clone(), ip)) {
            err(
                e.ip.span(),
                format!("{ip} is given to two endpoints of network `{net}`"),
            );
        }
        let mac = match &e.mac {
            None => MacAddr::from_ipv4(ip),
            Some(m) => match m.get_ref().parse::<MacAddr>() {
                Ok(mac) if mac.is_multicast() => {
                    err(m.span(), format!("{mac} is a multicast MAC address"));
                    mac
                }
                Ok(mac) => mac,
                Err(reason) => {
                    err(m.span(), reason);
                    MacAddr::default()
                }
            },
        };
        if !macs.insert((net.clone(), mac)) {
            err(
                e.ip.span(),
                format!("MAC {mac} is used twice in network `{net}`"),
            );
        }
        let container = e.container.as_ref().map(|c| {
            let id = c.get_ref();
            let ok = !id.is_empty()
                && id.len() <= 160
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
            if !ok {
                err(
                    c.span(),
                    format!("container `{id}` must be 1-160 of [a-zA-Z0-9_.:/-]"),
                );
            }
            id.clone()
        });
        let service = e.service.as_ref().map(|s| {
            if !valid_name(s.get_ref(), 63) {
                err(
                    s.span(),
                    format!("service `{}` must be 1-63 of [a-zA-Z0-9_.-]", s.get_ref()),
                );
            }
            s.get_ref().clone()
        });
        endpoints.push(Endpoint {
            network: net.clone(),
            node: e.node.get_ref().clone(),
            ip,
            mac,
            name: e.name.clone(),
            container,
            service,
        });
    }
    let mut services = services(&raw.services, &networks, &endpoints, &mut err);
    add_labelled_tasks(&mut services, &endpoints);
    for name in allocate_vips(&networks, &mut services) {
        let span = raw
            .services
            .iter()
            .find(|s| s.get_ref().name.get_ref() == &name)
            .map(|s| s.get_ref().name.span())
            .unwrap_or(0..0);
        err(
            span,
            format!("service `{name}`: no free address left for a VIP; set `vip`"),
        );
    }
    for s in &services {
        let Some(vip) = s.vip else { continue };
        if let Some(e) = endpoints
            .iter()
            .find(|e| e.network == s.network && e.ip == vip)
        {
            let span = raw
                .services
                .iter()
                .find(|r| r.get_ref().name.get_ref() == &s.name)
                .map(|r| {
                    r.get_ref()
                        .vip
                        .as_ref()
                        .map(|v| v.span())
                        .unwrap_or(r.get_ref().name.span())
                })
                .unwrap_or(0..0);
            err(
                span,
                format!(
                    "service `{}`'s VIP {vip} is also an endpoint (on node `{}`); keep endpoints out of the VIP pool or set `vip`",
                    s.name, e.node
                ),
            );
        }
    }
    if errs.is_empty() {
        Ok(Cluster {
            settings,
            nodes,
            networks,
            endpoints,
            services,
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

/// Endpoints that name a service are its tasks (containers started with a
/// selector), after the tasks the service lists itself.
pub fn add_labelled_tasks(services: &mut [ServiceSpec], endpoints: &[Endpoint]) {
    let labelled: Vec<&Endpoint> = endpoints.iter().filter(|e| e.service.is_some()).collect();
    if labelled.is_empty() {
        return;
    }
    for s in services {
        for e in &labelled {
            if e.network == s.network
                && e.service.as_deref() == Some(s.name.as_str())
                && !s.tasks.contains(&e.ip)
            {
                s.tasks.push(e.ip);
            }
        }
    }
}

/// An address endpoints, VIPs and the DNS responder may take: inside the
/// subnet, neither its network nor its broadcast address.
fn usable(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// FNV-1a (32 bit) of a service name: where its VIP search starts. Fixed
/// and documented, so every node (whatever built it) allocates the same.
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// Gives every `vip`-mode service without a configured VIP one from its
/// network's pool: the quarter of the subnet's usable addresses just below
/// the DNS address. A service starts at `fnv1a(name) % pool` and walks down
/// (wrapping) to the first address no configured VIP and no service before
/// it (in name order) took. The result depends only on the network and the
/// services' names and configured VIPs: the same on every node, and a
/// service keeps its VIP when others come and go unless they collide.
/// Returns the services that found no free address.
pub fn allocate_vips(networks: &[Network], services: &mut [ServiceSpec]) -> Vec<String> {
    let mut failed = Vec::new();
    let mut order: Vec<usize> = (0..services.len()).collect();
    order.sort_by(|a, b| services[*a].name.cmp(&services[*b].name));
    for net in networks {
        let mut taken: HashSet<Ipv4Addr> = services
            .iter()
            .filter(|s| s.network == net.name)
            .filter_map(|s| s.vip)
            .collect();
        taken.insert(net.dns);
        let first = u32::from(net.subnet.network()) + 1;
        let below = u32::from(net.dns).saturating_sub(first);
        let hosts = (1u64 << (32 - net.subnet.prefix_len())).saturating_sub(2);
        let pool = ((hosts / 4).max(1) as u32).min(below);
        for &i in &order {
            let s = &mut services[i];
            if s.network != net.name || s.vip.is_some() || s.endpoint_mode != EndpointMode::Vip {
                continue;
            }
            let start = if pool == 0 { 0 } else { fnv1a(&s.name) % pool };
            let found = (0..pool)
                .map(|k| Ipv4Addr::from(u32::from(net.dns) - 1 - (start + k) % pool))
                .find(|ip| !taken.contains(ip));
            match found {
                Some(ip) => {
                    taken.insert(ip);
                    s.vip = Some(ip);
                }
                None => failed.push(s.name.clone()),
            }
        }
    }
    failed
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validates `[[services]]`; errors go through `err`.
fn services(
    raw: &[Spanned<RawService>],
    networks: &[Network],
    endpoints: &[Endpoint],
    err: &mut impl FnMut(Range<usize>, String),
) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut published: HashMap<(Protocol, u16), String> = HashMap::new();
    let mut vips: HashMap<(String, Ipv4Addr), String> = HashMap::new();
    for s in raw {
        let s = s.get_ref();
        let name = s.name.get_ref();
        if !valid_name(name, 63) {
            err(
                s.name.span(),
                format!("service name `{name}` must be 1-63 of [a-zA-Z0-9_.-]"),
            );
        }
        if !names.insert(name.clone()) {
            err(s.name.span(), format!("service `{name}` is defined twice"));
        }
        let net = s.network.get_ref();
        if !networks.iter().any(|n| &n.name == net) {
            err(
                s.network.span(),
                format!("network `{net}` is not defined in [[networks]]"),
            );
        }
        let mut tasks = Vec::new();
        for t in &s.tasks {
            let ip = *t.get_ref();
            if !endpoints.iter().any(|e| &e.network == net && e.ip == ip) {
                err(t.span(), format!("task {ip} is not an endpoint of network `{net}` (add it to [[endpoints]] with the node that runs it)"));
            }
            if tasks.contains(&ip) {
                err(t.span(), format!("task {ip} is listed twice"));
            }
            tasks.push(ip);
        }
        let mut ports = Vec::new();
        for p in &s.ports {
            let p = p.get_ref();
            let protocol = match p.protocol.as_ref().map(|x| x.get_ref().as_str()) {
                None | Some("tcp") => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some(other) => {
                    let span = p
                        .protocol
                        .as_ref()
                        .map(|x| x.span())
                        .unwrap_or(p.published.span());
                    err(
                        span,
                        format!("protocol `{other}` must be \"tcp\" or \"udp\""),
                    );
                    Protocol::Tcp
                }
            };
            let (pub_port, target) = (*p.published.get_ref(), *p.target.get_ref());
            if pub_port == 0 || target == 0 {
                err(p.published.span(), "ports must be 1-65535".to_string());
            }
            if let Some(other) = published.insert((protocol, pub_port), name.clone()) {
                err(
                    p.published.span(),
                    format!(
                        "{}/{pub_port} is already published by service `{other}`",
                        protocol.as_str()
                    ),
                );
            }
            ports.push(PortSpec {
                protocol,
                published: pub_port,
                target,
                listen: p.listen.as_ref().map(|l| *l.get_ref()),
            });
        }
        let balance = match s.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("maglev", _)) => Algorithm::Maglev,
            Some(("round-robin", _)) => Algorithm::RoundRobin,
            Some(("least-conn", _)) => Algorithm::LeastConn,
            Some((other, span)) => {
                err(
                    span,
                    format!(
                        "balance `{other}` must be \"maglev\", \"round-robin\" or \"least-conn\""
                    ),
                );
                Algorithm::Maglev
            }
        };
        let mode = match s.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("ingress", _)) => Mode::Ingress,
            Some(("host", _)) => Mode::Host,
            Some((other, span)) => {
                err(
                    span,
                    format!("mode `{other}` must be \"ingress\" or \"host\""),
                );
                Mode::Ingress
            }
        };
        let proxy_protocol = match s
            .proxy_protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None => false,
            Some(("v2", _)) => true,
            Some((other, span)) => {
                err(span, format!("proxy_protocol `{other}` must be \"v2\""));
                false
            }
        };
        let health = mesh::health(s.health.as_ref(), &ports, s.name.span(), err);
        let endpoint_mode = match s
            .endpoint_mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("vip", _)) => EndpointMode::Vip,
            Some(("dnsrr", _)) => EndpointMode::Dnsrr,
            Some((other, span)) => {
                err(
                    span,
                    format!("endpoint_mode `{other}` must be \"vip\" or \"dnsrr\""),
                );
                EndpointMode::Vip
            }
        };
        let vip = s.vip.as_ref().map(|v| (*v.get_ref(), v.span()));
        if let Some((ip, span)) = &vip {
            if endpoint_mode == EndpointMode::Dnsrr {
                err(
                    span.clone(),
                    "a `dnsrr` service has no VIP; remove `vip`".to_string(),
                );
            }
            if let Some(n) = networks.iter().find(|n| &n.name == net) {
                if !usable(&n.subnet, *ip) {
                    err(
                        span.clone(),
                        format!(
                            "vip {ip} must be a usable address of `{net}`'s subnet {}",
                            n.subnet
                        ),
                    );
                } else if *ip == n.dns {
                    err(span.clone(), format!("vip {ip} is `{net}`'s DNS address"));
                }
            }
            if let Some(other) = vips.insert((net.clone(), *ip), name.clone()) {
                err(
                    span.clone(),
                    format!("vip {ip} is already service `{other}`'s"),
                );
            }
        }
        out.push(ServiceSpec {
            name: name.clone(),
            network: net.clone(),
            tasks,
            ports,
            balance,
            health,
            mode,
            proxy_protocol,
            drain: mesh::DRAIN.ms(&s.drain_ms, ServiceSpec::DEFAULT_DRAIN, err),
            slow_start: mesh::SLOW_START.ms(&s.slow_start_ms, Duration::ZERO, err),
            idle_timeout: mesh::IDLE_TIMEOUT.ms(&s.idle_timeout_ms, ServiceSpec::DEFAULT_IDLE, err),
            udp_timeout: mesh::UDP_TIMEOUT.ms(
                &s.udp_timeout_ms,
                ServiceSpec::DEFAULT_UDP_TIMEOUT,
                err,
            ),
            connect_timeout: mesh::CONNECT_TIMEOUT.ms(
                &s.connect_timeout_ms,
                ServiceSpec::DEFAULT_CONNECT_TIMEOUT,
                err,
            ),
            endpoint_mode,
            vip: vip
                .map(|v| v.0)
                .filter(|_| endpoint_mode == EndpointMode::Vip),
            max_connections: mesh::MAX_CONNECTIONS.get(
                &s.max_connections,
                ServiceSpec::DEFAULT_MAX_CONNECTIONS,
                err,
            ),
            max_sessions: mesh::MAX_SESSIONS.get(
                &s.max_sessions,
                ServiceSpec::DEFAULT_MAX_SESSIONS,
                err,
            ),
            limits: ClientLimits {
                connections_per_source: mesh::CONNECTIONS_PER_SOURCE.get(
                    &s.max_connections_per_source,
                    ClientLimits::DEFAULT_PER_SOURCE,
                    err,
                ),
                sessions_per_source: mesh::SESSIONS_PER_SOURCE.get(
                    &s.max_sessions_per_source,
                    ClientLimits::DEFAULT_PER_SOURCE,
                    err,
                ),
                first_byte_timeout: mesh::FIRST_BYTE_TIMEOUT.ms(
                    &s.first_byte_timeout_ms,
                    ClientLimits::DEFAULT_FIRST_BYTE,
                    err,
                ),
                write_timeout: mesh::WRITE_TIMEOUT.ms(
                    &s.write_timeout_ms,
                    ClientLimits::DEFAULT_WRITE,
                    err,
                ),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[nodes]]
name = "h1"
address = "198.18.0.1"
[[networks]]
name = "front"
vni = 1
subnet = "10.0.9.0/24"
[[endpoints]]
network = "front"
node = "h1"
ip = "10.0.9.1"
"#;

    fn svc(name: &str, extra: &str) -> String {
        format!("[[services]]\nname = \"{name}\"\nnetwork = \"front\"\n{extra}\n")
    }

    #[test]
    fn vips_are_allocated_from_the_pool_and_stable() {
        let c = parse(
            Path::new("t"),
            &format!(
                "{BASE}{}{}",
                svc("web", ""),
                svc("db", "endpoint_mode = \"dnsrr\"")
            ),
        )
        .unwrap();
        let net = &c.networks[0];
        assert_eq!(net.dns, Ipv4Addr::new(10, 0, 9, 254));
        assert_eq!(net.domain, "vxmesh");
        let web = c.services[0].vip.expect("web has a VIP");
        // The pool: the 63 addresses below .254.
        assert!((191..=253).contains(&web.octets()[3]), "{web}");
        assert_eq!(c.services[1].vip, None, "dnsrr has no VIP");
        // Adding a service (in front, in file order) keeps web's VIP.
        let c2 = parse(
            Path::new("t"),
            &format!("{BASE}{}{}", svc("aaa", ""), svc("web", "")),
        )
        .unwrap();
        assert_eq!(c2.services[1].vip, Some(web));
        assert_ne!(c2.services[0].vip, Some(web));
    }

    #[test]
    fn bad_discovery_settings_name_their_line() {
        let text = format!(
            "{}{}{}",
            BASE.replace(
                "subnet = \"10.0.9.0/24\"",
                "subnet = \"10.0.9.0/24\"\ndomain = \"a..b\""
            ),
            svc("web", "vip = \"10.0.8.1\""),
            svc("db", "endpoint_mode = \"dnsrr\"\nvip = \"10.0.9.50\""),
        );
        let errs = parse(Path::new("t"), &text).unwrap_err().to_string();
        assert!(errs.contains("domain `a..b`"), "{errs}");
        assert!(
            errs.contains("vip 10.0.8.1 must be a usable address"),
            "{errs}"
        );
        assert!(errs.contains("a `dnsrr` service has no VIP"), "{errs}");
        let on_dns = BASE.replace("ip = \"10.0.9.1\"", "ip = \"10.0.9.254\"");
        let errs = parse(Path::new("t"), &on_dns).unwrap_err().to_string();
        assert!(errs.contains("DNS address"), "{errs}");
    }

    #[test]
    fn dns_forward_takes_addresses_and_refuses_loops_with_their_line() {
        let with = |list: &str| {
            BASE.replace(
                "subnet = \"10.0.9.0/24\"",
                &format!("subnet = \"10.0.9.0/24\"\ndns_forward = [{list}]"),
            )
        };
        let c = parse(
            Path::new("t"),
            &with("\"198.18.0.53\", \"198.18.0.54:5353\""),
        )
        .unwrap();
        let want: Vec<SocketAddr> = vec![
            "198.18.0.53:53".parse().unwrap(),
            "198.18.0.54:5353".parse().unwrap(),
        ];
        assert_eq!(c.networks[0].dns_forward, want);
        assert!(parse(Path::new("t"), BASE).unwrap().networks[0]
            .dns_forward
            .is_empty());
        let errs = parse(
            Path::new("t"),
            &with("\"resolver\", \"10.0.9.254\", \"0.0.0.0:53\""),
        )
        .unwrap_err()
        .to_string();
        assert!(errs.contains("t:9:"), "the line: {errs}");
        assert!(
            errs.contains("dns_forward `resolver` must be an address"),
            "{errs}"
        );
        assert!(errs.contains("own DNS responder"), "{errs}");
        assert!(errs.contains("needs a real address"), "{errs}");
        let five = with(&["\"198.18.0.53\""; 5].join(", "));
        let errs = parse(Path::new("t"), &five).unwrap_err().to_string();
        assert!(errs.contains("at most 4 resolvers"), "{errs}");
    }

    #[test]
    fn busy_poll_is_off_by_default_and_bounded() {
        let c = parse(Path::new("t"), BASE).unwrap();
        assert_eq!(c.settings.busy_poll_us, 0);
        let c = parse(
            Path::new("t"),
            &format!("[settings]\nbusy_poll_us = 200\n{BASE}"),
        )
        .unwrap();
        assert_eq!(c.settings.busy_poll_us, 200);
        let errs = parse(
            Path::new("t"),
            &format!("[settings]\nbusy_poll_us = 20000\n{BASE}"),
        )
        .unwrap_err()
        .to_string();
        assert!(errs.contains("t:2:"), "the line: {errs}");
        assert!(
            errs.contains("busy_poll_us must be 0 (off) to 10000, not 20000"),
            "{errs}"
        );
    }

    #[test]
    fn queues_default_to_the_cpus_and_too_many_are_refused_with_their_line() {
        let c = parse(Path::new("t"), BASE).unwrap();
        assert_eq!(c.settings.queues, 0);
        assert!((1..=Settings::MAX_QUEUES).contains(&c.settings.effective_queues()));
        let c = parse(Path::new("t"), &format!("[settings]\nqueues = 3\n{BASE}")).unwrap();
        assert_eq!(c.settings.effective_queues(), 3);
        let errs = parse(Path::new("t"), &format!("[settings]\nqueues = 99\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(errs.contains("t:2"), "{errs}");
        assert!(
            errs.contains("queues must be 0 (one per CPU) to 16, not 99"),
            "{errs}"
        );
    }
}
