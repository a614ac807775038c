//! The cluster's rules over its raw tables ([`super::raw`]): names,
//! numbers and addresses of settings, nodes, networks and endpoints (the
//! services' in [`super::services`]). Every problem is collected with the
//! [`Place`] of the value, never only the first.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use vxmesh_dataplane::crypto::{wire::DATA_OVERHEAD, PublicKey};
use vxmesh_dataplane::mesh::spec::Protocol;
use vxmesh_dataplane::wire::MacAddr;

use super::mesh;
use super::raw::{Invalid, Item, Place, RawEndpoint, RawFile, RawNetwork, RawSettings, Table};
use super::{MAX_ANNOUNCE_CAP, MAX_DNS_FORWARD, MAX_NETWORK_NAME, MAX_POOL_ADDRESSES, OVERHEAD};
use crate::model::{Cluster, Endpoint, Network, Node, Settings};

/// The problems found so far.
#[derive(Default)]
pub(super) struct Errs(pub Vec<Invalid>);

impl Errs {
    pub fn at(&mut self, place: Place, reason: impl Into<String>) {
        self.0.push(Invalid {
            place,
            reason: reason.into(),
        });
    }
}

/// Checks `raw` against every rule: the cluster it describes, or every
/// rule it breaks, each turned into the caller's error by `locate` (which
/// knows where a [`Place`] is in the caller's own documents).
pub fn validate<E>(raw: &RawFile, locate: impl FnMut(Invalid) -> E) -> Result<Cluster, Vec<E>> {
    let (cluster, errs) = check(raw);
    if errs.0.is_empty() {
        Ok(cluster)
    } else {
        Err(errs.0.into_iter().map(locate).collect())
    }
}

/// The cluster `raw` describes (as far as it is valid) and its problems.
fn check(raw: &RawFile) -> (Cluster, Errs) {
    let mut errs = Errs::default();
    let settings = settings(&raw.settings, &mut errs);
    let nodes = nodes(raw, &mut errs);
    let node_names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut networks: Vec<Network> = Vec::new();
    let mut vnis = HashSet::new();
    for (i, n) in raw.networks.iter().enumerate() {
        let it = Item::new(Table::Networks, i);
        if networks.iter().any(|x| x.name == n.name) {
            errs.at(
                it.key("name"),
                format!("network `{}` is defined twice", n.name),
            );
        }
        if (1..=vxmesh_dataplane::wire::vxlan::MAX_VNI).contains(&n.vni) && !vnis.insert(n.vni) {
            errs.at(
                it.key("vni"),
                format!("vni {} is used by two networks", n.vni),
            );
        }
        networks.push(network(n, it, &settings, &node_names, &mut errs));
    }
    let endpoints = endpoints(&raw.endpoints, &networks, &node_names, &mut errs);
    let services = super::services::services(&raw.services, &networks, &endpoints, &mut errs);
    let relay = settings.mesh_relay_port;
    if relay != 0 {
        // The relay listens on each node's data-path address: a published
        // TCP port on all addresses would take it.
        let clash = services.iter().find(|s| {
            s.ports
                .iter()
                .any(|p| p.protocol == Protocol::Tcp && p.published == relay)
        });
        if let Some(s) = clash {
            errs.at(
                Item::new(Table::Settings, 0).key("mesh_relay_port"),
                format!(
                    "mesh_relay_port {relay} is published by service `{}` (pick another, or 0 for no relay)",
                    s.name
                ),
            );
        }
    }
    (
        Cluster {
            settings,
            nodes,
            networks,
            endpoints,
            services,
        },
        errs,
    )
}

fn settings(raw: &RawSettings, errs: &mut Errs) -> Settings {
    let it = Item::new(Table::Settings, 0);
    let mut s = Settings::default();
    if let Some(p) = raw.vxlan_port {
        s.vxlan_port = p;
    }
    if let Some(m) = raw.underlay_mtu {
        if m < 576 + OVERHEAD {
            errs.at(
                it.key("underlay_mtu"),
                format!(
                    "underlay_mtu {m} is too small (at least {})",
                    576 + OVERHEAD
                ),
            );
        }
        s.underlay_mtu = m;
    }
    if let Some(o) = raw.offloads {
        s.offloads = o;
    }
    if let Some(q) = raw.queues {
        if q > Settings::MAX_QUEUES {
            errs.at(
                it.key("queues"),
                format!(
                    "queues must be 0 (one per CPU) to {}, not {q}",
                    Settings::MAX_QUEUES
                ),
            );
        }
        s.queues = q;
    }
    if let Some(b) = raw.busy_poll_us {
        if b > Settings::MAX_BUSY_POLL_US {
            errs.at(
                it.key("busy_poll_us"),
                format!(
                    "busy_poll_us must be 0 (off) to {}, not {b}",
                    Settings::MAX_BUSY_POLL_US
                ),
            );
        }
        s.busy_poll_us = b;
    }
    if let Some(r) = raw.rekey_seconds {
        if !(1..=86_400).contains(&r) {
            errs.at(
                it.key("rekey_seconds"),
                format!("rekey_seconds must be 1 to 86400 (a day), not {r}"),
            );
        }
        s.rekey_s = r;
    }
    if let Some(m) = raw.rekey_messages {
        if m < 1000 {
            errs.at(
                it.key("rekey_messages"),
                format!("rekey_messages must be at least 1000, not {m}"),
            );
        }
        s.rekey_messages = m;
    }
    if let Some(p) = raw.mesh_relay_port {
        s.mesh_relay_port = p;
    }
    if let Some(n) = raw.source_ports {
        if !(1..=1024).contains(&n) {
            errs.at(
                it.key("source_ports"),
                format!("source_ports must be 1 to 1024, not {n}"),
            );
        }
        s.source_ports = n;
    }
    s
}

fn nodes(raw: &RawFile, errs: &mut Errs) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut keys = HashSet::new();
    for (i, n) in raw.nodes.iter().enumerate() {
        let it = Item::new(Table::Nodes, i);
        if !valid_name(&n.name, 64) {
            errs.at(
                it.key("name"),
                format!("node name `{}` must be 1-64 of [a-zA-Z0-9_.-]", n.name),
            );
        }
        if !names.insert(n.name.as_str()) {
            errs.at(
                it.key("name"),
                format!("node `{}` is defined twice", n.name),
            );
        }
        let a = n.address;
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
            errs.at(
                it.key("address"),
                format!("node address {a} is not a unicast address"),
            );
        }
        if !addrs.insert(a) {
            errs.at(
                it.key("address"),
                format!("address {a} is used by two nodes"),
            );
        }
        let public_key = n
            .public_key
            .as_deref()
            .and_then(|text| match PublicKey::parse(text) {
                Ok(k) if !keys.insert(k) => {
                    errs.at(
                        it.key("public_key"),
                        format!(
                            "public_key {k} is used by two nodes (each node has a key of its own)"
                        ),
                    );
                    Some(k)
                }
                Ok(k) => Some(k),
                Err(e) => {
                    errs.at(it.key("public_key"), format!("public_key: {e}"));
                    None
                }
            });
        nodes.push(Node {
            name: n.name.clone(),
            address: a,
            public_key,
        });
    }
    nodes
}

/// One `[[networks]]` table (names and VNIs unique across tables are
/// checked by the caller).
fn network(
    n: &RawNetwork,
    it: Item,
    settings: &Settings,
    node_names: &HashSet<&str>,
    errs: &mut Errs,
) -> Network {
    let name = &n.name;
    if !valid_name(name, MAX_NETWORK_NAME) {
        errs.at(it.key("name"), format!("network name `{name}` must be 1-{MAX_NETWORK_NAME} of [a-zA-Z0-9_.-] (the TAP is vxm-<name>)"));
    }
    let vni = n.vni;
    if !(1..=vxmesh_dataplane::wire::vxlan::MAX_VNI).contains(&vni) {
        errs.at(
            it.key("vni"),
            format!("vni {vni} is outside 1..=16777215 (24 bits)"),
        );
    }
    let subnet = n.subnet;
    if subnet.prefix_len() > 30 {
        errs.at(
            it.key("subnet"),
            format!("subnet {subnet} is too small for endpoints (at most /30)"),
        );
    }
    if subnet.network() != subnet.addr() {
        errs.at(
            it.key("subnet"),
            format!(
                "subnet {subnet} has host bits set (did you mean {}?)",
                subnet.trunc()
            ),
        );
    }
    // A sealed datagram carries 32 bytes more (see `crypto::wire`).
    let overhead = OVERHEAD + if n.encrypted { DATA_OVERHEAD as u16 } else { 0 };
    let max_mtu = settings.underlay_mtu - overhead;
    let mtu = match n.mtu {
        Some(m) if m > max_mtu || m < 576 => {
            let why = if n.encrypted { ", encrypted" } else { "" };
            errs.at(
                it.key("mtu"),
                format!(
                    "mtu {m} must be 576 to {max_mtu} (underlay MTU {} minus {overhead}{why})",
                    settings.underlay_mtu
                ),
            );
            max_mtu
        }
        Some(m) => m,
        None => max_mtu,
    };
    for (k, member) in n.nodes.iter().enumerate() {
        if !node_names.contains(member.as_str()) {
            errs.at(
                it.key("nodes").index(k),
                format!("node `{member}` is not defined in [[nodes]]"),
            );
        }
    }
    let dns = match n.dns {
        Some(ip) => {
            if !usable(&subnet, ip) {
                errs.at(
                    it.key("dns"),
                    format!("dns {ip} must be a usable address of subnet {subnet}"),
                );
            }
            ip
        }
        None => Network::default_dns(&subnet),
    };
    let domain = match &n.domain {
        Some(d) => {
            let v = d.trim_matches('.').to_ascii_lowercase();
            if !valid_domain(&v) {
                errs.at(it.key("domain"), format!("domain `{d}` must be dot-separated labels of 1-63 [a-z0-9-], at most 253 bytes"));
            }
            v
        }
        None => Network::DEFAULT_DOMAIN.to_string(),
    };
    let dns_forward = dns_forward(n, it, dns, errs);
    let announce_cap = match n.announce_cap {
        Some(c) if c == 0 || c > MAX_ANNOUNCE_CAP => {
            errs.at(
                it.key("announce_cap"),
                format!("announce_cap {c} must be 1 to {MAX_ANNOUNCE_CAP}"),
            );
            Network::DEFAULT_ANNOUNCE_CAP
        }
        Some(c) => c,
        None => Network::DEFAULT_ANNOUNCE_CAP,
    };
    let pools = pools(n, it, node_names, errs);
    Network {
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
        extra_nodes: n.nodes.clone(),
        learning: n.learning,
        encrypted: n.encrypted,
        fdb_cap: mesh::FDB_CAP.get(
            n.fdb_cap,
            Network::DEFAULT_FDB_CAP as u32,
            it.key("fdb_cap"),
            errs,
        ) as usize,
        ageing_s: mesh::AGEING.get(
            n.ageing_s,
            Network::DEFAULT_AGEING_S,
            it.key("ageing_s"),
            errs,
        ),
        flood_pps: mesh::FLOOD_PPS.get(
            n.flood_pps,
            Network::DEFAULT_FLOOD_PPS,
            it.key("flood_pps"),
            errs,
        ),
    }
}

fn dns_forward(n: &RawNetwork, it: Item, dns: Ipv4Addr, errs: &mut Errs) -> Vec<SocketAddr> {
    let at = |k: usize| it.key("dns_forward").index(k);
    if n.dns_forward.len() > MAX_DNS_FORWARD {
        errs.at(
            at(MAX_DNS_FORWARD),
            format!("dns_forward takes at most {MAX_DNS_FORWARD} resolvers"),
        );
    }
    let mut out = Vec::new();
    for (k, f) in n.dns_forward.iter().enumerate() {
        let text = f.trim();
        let addr = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match addr {
            None => errs.at(
                at(k),
                format!(
                    "dns_forward `{text}` must be an address, or address:port (port 53 by default)"
                ),
            ),
            Some(a) if a.ip() == IpAddr::V4(dns) && a.port() == 53 => errs.at(
                at(k),
                format!("dns_forward {a} is the network's own DNS responder (a loop)"),
            ),
            Some(a) if a.port() == 0 || a.ip().is_unspecified() => errs.at(
                at(k),
                format!("dns_forward {a} needs a real address and a port other than 0"),
            ),
            Some(a) => out.push(a),
        }
    }
    out
}

fn pools(
    n: &RawNetwork,
    it: Item,
    node_names: &HashSet<&str>,
    errs: &mut Errs,
) -> Vec<(String, Ipv4Net)> {
    let subnet = n.subnet;
    let mut pools: Vec<(String, Ipv4Net)> = Vec::new();
    for (k, p) in n.pools.iter().enumerate() {
        let at = |key| it.key("pools").index(k).key(key);
        let (node, range) = (&p.node, p.range);
        if !node_names.contains(node.as_str()) {
            errs.at(
                at("node"),
                format!("pool node `{node}` is not defined in [[nodes]]"),
            );
        }
        if range.trunc() != range || !subnet.contains(&range) {
            errs.at(
                at("range"),
                format!("pool {range} must be a range inside the subnet {subnet}"),
            );
        } else if range.hosts().count() as u64 > u64::from(MAX_POOL_ADDRESSES) {
            errs.at(
                at("range"),
                format!("pool {range} is larger than {MAX_POOL_ADDRESSES} addresses (a /22)"),
            );
        }
        if let Some((other, r)) = pools
            .iter()
            .find(|(o, r)| o == node || r.contains(&range) || range.contains(r))
        {
            errs.at(
                at("range"),
                format!("pool {range} of node `{node}` overlaps pool {r} of node `{other}` (one range per node, disjoint)"),
            );
        }
        pools.push((node.clone(), range));
    }
    pools
}

fn endpoints(
    raw: &[RawEndpoint],
    networks: &[Network],
    node_names: &HashSet<&str>,
    errs: &mut Errs,
) -> Vec<Endpoint> {
    let by_name: HashMap<&str, &Network> = networks.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out = Vec::with_capacity(raw.len());
    let mut ips = HashSet::with_capacity(raw.len());
    let mut macs = HashSet::with_capacity(raw.len());
    for (i, e) in raw.iter().enumerate() {
        let it = Item::new(Table::Endpoints, i);
        let endpoint = endpoint(e, it, &by_name, node_names, errs);
        let net = e.network.as_str();
        let ip = endpoint.ip;
        if !ips.insert((net, ip)) {
            errs.at(
                it.key("ip"),
                format!("{ip} is given to two endpoints of network `{net}`"),
            );
        }
        if !macs.insert((net, endpoint.mac)) {
            errs.at(
                it.key("ip"),
                format!("MAC {} is used twice in network `{net}`", endpoint.mac),
            );
        }
        out.push(endpoint);
    }
    out
}

/// One `[[endpoints]]` table, on its own (addresses and MACs unique in a
/// network are checked by the caller).
fn endpoint(
    e: &RawEndpoint,
    it: Item,
    networks: &HashMap<&str, &Network>,
    node_names: &HashSet<&str>,
    errs: &mut Errs,
) -> Endpoint {
    let net = &e.network;
    let ip = e.ip;
    match networks.get(net.as_str()) {
        None => errs.at(
            it.key("network"),
            format!("network `{net}` is not defined in [[networks]]"),
        ),
        Some(n) => {
            let subnet = n.subnet;
            if !subnet.contains(&ip) {
                errs.at(
                    it.key("ip"),
                    format!("{ip} is outside network `{net}`'s subnet {subnet}"),
                );
            } else if ip == subnet.network() || ip == subnet.broadcast() {
                errs.at(
                    it.key("ip"),
                    format!("{ip} is the network or broadcast address of {subnet}"),
                );
            } else if n.dns == ip {
                errs.at(
                    it.key("ip"),
                    format!("{ip} is network `{net}`'s DNS address (move the endpoint, or set the network's `dns`)"),
                );
            }
        }
    }
    if !node_names.contains(e.node.as_str()) {
        errs.at(
            it.key("node"),
            format!("node `{}` is not defined in [[nodes]]", e.node),
        );
    }
    let mac = match &e.mac {
        None => MacAddr::from_ipv4(ip),
        Some(m) => match m.parse::<MacAddr>() {
            Ok(mac) if mac.is_multicast() => {
                errs.at(it.key("mac"), format!("{mac} is a multicast MAC address"));
                mac
            }
            Ok(mac) => mac,
            Err(reason) => {
                errs.at(it.key("mac"), reason);
                MacAddr::default()
            }
        },
    };
    if let Some(id) = &e.container {
        let ok = !id.is_empty()
            && id.len() <= 160
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
        if !ok {
            errs.at(
                it.key("container"),
                format!("container `{id}` must be 1-160 of [a-zA-Z0-9_.:/-]"),
            );
        }
    }
    if let Some(s) = &e.service {
        if !valid_name(s, 63) {
            errs.at(
                it.key("service"),
                format!("service `{s}` must be 1-63 of [a-zA-Z0-9_.-]"),
            );
        }
    }
    Endpoint {
        network: net.clone(),
        node: e.node.clone(),
        ip,
        mac,
        name: e.name.clone(),
        container: e.container.clone(),
        service: e.service.clone(),
    }
}

pub(super) fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// An address endpoints, VIPs and the DNS responder may take: inside the
/// subnet, neither its network nor its broadcast address.
pub(super) fn usable(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
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
