//! The rules of `[[services]]`: names, networks, tasks, published ports,
//! balancing, modes and VIPs (limits and health in [`super::mesh`]), and the
//! VIP each `vip`-mode service without one gets from its network's pool.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use vxmesh_dataplane::mesh::balance::Algorithm;
use vxmesh_dataplane::mesh::spec::{
    ClientLimits, EndpointMode, Mode, PortSpec, Protocol, ServiceSpec,
};

use super::mesh;
use super::raw::{Item, RawPort, RawService, Table};
use super::validate::{usable, valid_name, Errs};
use crate::model::{Endpoint, Network};

/// Validates `[[services]]`, adds the tasks endpoints select and gives
/// VIPs out.
pub(super) fn services(
    raw: &[RawService],
    networks: &[Network],
    endpoints: &[Endpoint],
    errs: &mut Errs,
) -> Vec<ServiceSpec> {
    let ips: HashSet<(&str, Ipv4Addr)> = endpoints
        .iter()
        .map(|e| (e.network.as_str(), e.ip))
        .collect();
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut published: HashMap<(Protocol, u16), String> = HashMap::new();
    let mut vips: HashMap<(String, Ipv4Addr), String> = HashMap::new();
    for (i, s) in raw.iter().enumerate() {
        let it = Item::new(Table::Services, i);
        let name = &s.name;
        if !valid_name(name, 63) {
            errs.at(
                it.key("name"),
                format!("service name `{name}` must be 1-63 of [a-zA-Z0-9_.-]"),
            );
        }
        if !names.insert(name.clone()) {
            errs.at(it.key("name"), format!("service `{name}` is defined twice"));
        }
        let net = &s.network;
        let network = networks.iter().find(|n| &n.name == net);
        if network.is_none() {
            errs.at(
                it.key("network"),
                format!("network `{net}` is not defined in [[networks]]"),
            );
        }
        let mut tasks = Vec::new();
        for (k, &ip) in s.tasks.iter().enumerate() {
            if !ips.contains(&(net.as_str(), ip)) {
                errs.at(it.key("tasks").index(k), format!("task {ip} is not an endpoint of network `{net}` (add it to [[endpoints]] with the node that runs it)"));
            }
            if tasks.contains(&ip) {
                errs.at(
                    it.key("tasks").index(k),
                    format!("task {ip} is listed twice"),
                );
            }
            tasks.push(ip);
        }
        let ports = ports(&s.ports, it, name, &mut published, errs);
        let balance = match s.balance.as_deref() {
            None | Some("maglev") => Algorithm::Maglev,
            Some("round-robin") => Algorithm::RoundRobin,
            Some("least-conn") => Algorithm::LeastConn,
            Some(other) => {
                errs.at(
                    it.key("balance"),
                    format!(
                        "balance `{other}` must be \"maglev\", \"round-robin\" or \"least-conn\""
                    ),
                );
                Algorithm::Maglev
            }
        };
        let mode = match s.mode.as_deref() {
            None | Some("ingress") => Mode::Ingress,
            Some("host") => Mode::Host,
            Some(other) => {
                errs.at(
                    it.key("mode"),
                    format!("mode `{other}` must be \"ingress\" or \"host\""),
                );
                Mode::Ingress
            }
        };
        let proxy_protocol = match s.proxy_protocol.as_deref() {
            None => false,
            Some("v2") => true,
            Some(other) => {
                errs.at(
                    it.key("proxy_protocol"),
                    format!("proxy_protocol `{other}` must be \"v2\""),
                );
                false
            }
        };
        let health = mesh::health(s.health.as_ref(), &ports, it, errs);
        let endpoint_mode = match s.endpoint_mode.as_deref() {
            None | Some("vip") => EndpointMode::Vip,
            Some("dnsrr") => EndpointMode::Dnsrr,
            Some(other) => {
                errs.at(
                    it.key("endpoint_mode"),
                    format!("endpoint_mode `{other}` must be \"vip\" or \"dnsrr\""),
                );
                EndpointMode::Vip
            }
        };
        if let Some(ip) = s.vip {
            if endpoint_mode == EndpointMode::Dnsrr {
                errs.at(it.key("vip"), "a `dnsrr` service has no VIP; remove `vip`");
            }
            if let Some(n) = network {
                if !usable(&n.subnet, ip) {
                    errs.at(
                        it.key("vip"),
                        format!(
                            "vip {ip} must be a usable address of `{net}`'s subnet {}",
                            n.subnet
                        ),
                    );
                } else if ip == n.dns {
                    errs.at(it.key("vip"), format!("vip {ip} is `{net}`'s DNS address"));
                }
            }
            if let Some(other) = vips.insert((net.clone(), ip), name.clone()) {
                errs.at(
                    it.key("vip"),
                    format!("vip {ip} is already service `{other}`'s"),
                );
            }
        }
        let l = limits(s, it, errs);
        out.push(ServiceSpec {
            name: name.clone(),
            network: net.clone(),
            tasks,
            ports,
            balance,
            health,
            mode,
            proxy_protocol,
            endpoint_mode,
            vip: s.vip.filter(|_| endpoint_mode == EndpointMode::Vip),
            drain: l.drain,
            slow_start: l.slow_start,
            idle_timeout: l.idle_timeout,
            udp_timeout: l.udp_timeout,
            connect_timeout: l.connect_timeout,
            max_connections: l.max_connections,
            max_sessions: l.max_sessions,
            limits: l.limits,
        });
    }
    super::add_labelled_tasks(&mut out, endpoints);
    check_vips(raw, networks, endpoints, &mut out, errs);
    out
}

/// A service's ports; a port published twice (by any service) is an error.
fn ports(
    raw: &[RawPort],
    it: Item,
    name: &str,
    published: &mut HashMap<(Protocol, u16), String>,
    errs: &mut Errs,
) -> Vec<PortSpec> {
    let mut ports = Vec::new();
    for (k, p) in raw.iter().enumerate() {
        let at = |key| it.key("ports").index(k).key(key);
        let protocol = match p.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                errs.at(
                    at("protocol"),
                    format!("protocol `{other}` must be \"tcp\" or \"udp\""),
                );
                Protocol::Tcp
            }
        };
        let (pub_port, target) = (p.published, p.target);
        if pub_port == 0 || target == 0 {
            errs.at(at("published"), "ports must be 1-65535");
        }
        if let Some(other) = published.insert((protocol, pub_port), name.to_string()) {
            errs.at(
                at("published"),
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
            listen: p.listen,
        });
    }
    ports
}

/// A service's timeouts and limits.
struct Limits {
    drain: Duration,
    slow_start: Duration,
    idle_timeout: Duration,
    udp_timeout: Duration,
    connect_timeout: Duration,
    max_connections: u32,
    max_sessions: u32,
    limits: ClientLimits,
}

/// A service's timeouts and limits, every one bounded.
fn limits(s: &RawService, it: Item, errs: &mut Errs) -> Limits {
    Limits {
        drain: mesh::DRAIN.ms(s.drain_ms, ServiceSpec::DEFAULT_DRAIN, it, errs),
        slow_start: mesh::SLOW_START.ms(s.slow_start_ms, Duration::ZERO, it, errs),
        idle_timeout: mesh::IDLE_TIMEOUT.ms(s.idle_timeout_ms, ServiceSpec::DEFAULT_IDLE, it, errs),
        udp_timeout: mesh::UDP_TIMEOUT.ms(
            s.udp_timeout_ms,
            ServiceSpec::DEFAULT_UDP_TIMEOUT,
            it,
            errs,
        ),
        connect_timeout: mesh::CONNECT_TIMEOUT.ms(
            s.connect_timeout_ms,
            ServiceSpec::DEFAULT_CONNECT_TIMEOUT,
            it,
            errs,
        ),
        max_connections: mesh::MAX_CONNECTIONS.get(
            s.max_connections,
            ServiceSpec::DEFAULT_MAX_CONNECTIONS,
            it.key("max_connections"),
            errs,
        ),
        max_sessions: mesh::MAX_SESSIONS.get(
            s.max_sessions,
            ServiceSpec::DEFAULT_MAX_SESSIONS,
            it.key("max_sessions"),
            errs,
        ),
        limits: ClientLimits {
            connections_per_source: mesh::CONNECTIONS_PER_SOURCE.get(
                s.max_connections_per_source,
                ClientLimits::DEFAULT_PER_SOURCE,
                it.key("max_connections_per_source"),
                errs,
            ),
            sessions_per_source: mesh::SESSIONS_PER_SOURCE.get(
                s.max_sessions_per_source,
                ClientLimits::DEFAULT_PER_SOURCE,
                it.key("max_sessions_per_source"),
                errs,
            ),
            first_byte_timeout: mesh::FIRST_BYTE_TIMEOUT.ms(
                s.first_byte_timeout_ms,
                ClientLimits::DEFAULT_FIRST_BYTE,
                it,
                errs,
            ),
            write_timeout: mesh::WRITE_TIMEOUT.ms(
                s.write_timeout_ms,
                ClientLimits::DEFAULT_WRITE,
                it,
                errs,
            ),
        },
    }
}

/// Gives out VIPs, and refuses a service without a free one or whose VIP
/// is also an endpoint.
fn check_vips(
    raw: &[RawService],
    networks: &[Network],
    endpoints: &[Endpoint],
    services: &mut [ServiceSpec],
    errs: &mut Errs,
) {
    let item = |name: &str| {
        let i = raw.iter().position(|s| s.name == name).unwrap_or(0);
        Item::new(Table::Services, i)
    };
    for name in super::allocate_vips(networks, services) {
        errs.at(
            item(&name).key("name"),
            format!("service `{name}`: no free address left for a VIP; set `vip`"),
        );
    }
    for s in services.iter() {
        let Some(vip) = s.vip else { continue };
        if let Some(e) = endpoints
            .iter()
            .find(|e| e.network == s.network && e.ip == vip)
        {
            let it = item(&s.name);
            let configured = raw.get(it.index).is_some_and(|r| r.vip.is_some());
            let at = if configured {
                it.key("vip")
            } else {
                it.key("name")
            };
            errs.at(
                at,
                format!(
                    "service `{}`'s VIP {vip} is also an endpoint (on node `{}`); keep endpoints out of the VIP pool or set `vip`",
                    s.name, e.node
                ),
            );
        }
    }
}
