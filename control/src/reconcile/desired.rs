//! The pure half of reconciling: what this node should run, from the
//! desired state alone (no device, no socket): the mesh's services, the
//! DNS zones, the addresses on a TAP, the entries of the other nodes'
//! container ranges and the TAP's MACs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use vxmesh_dataplane::mesh::dns::ZoneSpec;
use vxmesh_dataplane::mesh::relay::Policy;
use vxmesh_dataplane::mesh::runtime::Desired;
use vxmesh_dataplane::mesh::spec::{Mode, Protocol};
use vxmesh_dataplane::overlay::EndpointEntry;
use vxmesh_dataplane::wire::MacAddr;

use crate::model::{Cluster, Network};

/// The TAP MAC of a node in a network: its first endpoint's MAC (by
/// default `02:42:<overlay ip>`, Docker's rule), or, for a member without
/// an endpoint, `02:43:<underlay ip>`.
pub(super) fn tap_mac(cluster: &Cluster, net: &Network, node: &str, underlay: Ipv4Addr) -> MacAddr {
    cluster
        .host_endpoint(net, node)
        .map(|e| e.mac)
        .unwrap_or_else(|| {
            let o = underlay.octets();
            MacAddr([0x02, 0x43, o[0], o[1], o[2], o[3]])
        })
}

/// What this node's mesh should do: in ingress mode a member of the
/// service's network listens and forwards to every task; in host mode only
/// a node with a local task listens, and only to its local tasks.
pub fn mesh_desired(cluster: &Cluster, node: &str) -> Vec<Desired> {
    let owners = owners(cluster);
    let addresses = cluster.addresses();
    let port = cluster.settings.mesh_relay_port;
    cluster
        .services
        .iter()
        .map(|s| {
            // TCP to a task on another node goes through that node's relay
            // (plain networks only: the relay leg is the underlay's TCP).
            let plain = cluster.network(&s.network).is_some_and(|n| !n.encrypted);
            let relays: HashMap<Ipv4Addr, SocketAddr> = if port != 0 && plain {
                s.tasks
                    .iter()
                    .filter_map(|t| {
                        let owner = *owners.get(&(s.network.as_str(), *t))?;
                        let at = *addresses.get(owner)?;
                        (owner != node).then(|| (*t, SocketAddr::new(at.into(), port)))
                    })
                    .collect()
            } else {
                HashMap::new()
            };
            let member = cluster.networks_of(node).any(|n| n.name == s.network);
            let local: Vec<Ipv4Addr> = s
                .tasks
                .iter()
                .copied()
                .filter(|t| cluster.owner(&s.network, *t) == Some(node))
                .collect();
            // The VIP listens on every member node, on each target port.
            let extra_listen = match s.vip {
                Some(vip) if member => s
                    .ports
                    .iter()
                    .map(|p| (p.protocol, SocketAddr::new(vip.into(), p.target), p.target))
                    .collect(),
                _ => Vec::new(),
            };
            match s.mode {
                Mode::Ingress => Desired {
                    spec: s.clone(),
                    tasks: s.tasks.clone(),
                    listen: member,
                    extra_listen,
                    relays,
                },
                Mode::Host => Desired {
                    spec: s.clone(),
                    listen: !local.is_empty(),
                    tasks: local,
                    extra_listen,
                    relays: HashMap::new(),
                },
            }
        })
        .collect()
}

/// The node owning each endpoint, by (network, address).
fn owners(cluster: &Cluster) -> HashMap<(&str, Ipv4Addr), &str> {
    cluster
        .endpoints
        .iter()
        .map(|e| ((e.network.as_str(), e.ip), e.node.as_str()))
        .collect()
}

/// This node's relay (see `vxmesh_dataplane::mesh::relay`): where it
/// listens (its data-path address, `[settings] mesh_relay_port`; none when
/// the port is 0 or the node has no task to serve: nothing listens that
/// has nothing to do) and what it serves: requests from the other nodes,
/// for its own tasks of services on plain networks, at their target ports.
pub fn relay_policy(cluster: &Cluster, node: &str) -> (Option<SocketAddr>, Policy) {
    let port = cluster.settings.mesh_relay_port;
    let Some(me) = cluster.node(node).filter(|_| port != 0) else {
        return (None, Policy::default());
    };
    let owners = owners(cluster);
    let targets: HashSet<SocketAddrV4> = cluster
        .services
        .iter()
        .filter(|s| cluster.network(&s.network).is_some_and(|n| !n.encrypted))
        .flat_map(|s| {
            let mine: Vec<Ipv4Addr> = s
                .tasks
                .iter()
                .copied()
                .filter(|t| owners.get(&(s.network.as_str(), *t)) == Some(&node))
                .collect();
            s.ports
                .iter()
                .filter(|p| p.protocol == Protocol::Tcp)
                .flat_map(move |p| {
                    mine.clone()
                        .into_iter()
                        .map(move |t| SocketAddrV4::new(t, p.target))
                })
        })
        .collect();
    if targets.is_empty() {
        return (None, Policy::default());
    }
    let peers = cluster
        .nodes
        .iter()
        .filter(|n| n.name != node)
        .map(|n| n.address)
        .collect();
    (
        Some(SocketAddr::new(me.address.into(), port)),
        Policy { peers, targets },
    )
}

/// The DNS zones this node serves: one per network it is a member of.
pub fn dns_zones(cluster: &Cluster, node: &str) -> Vec<ZoneSpec> {
    cluster
        .networks_of(node)
        .map(|net| ZoneSpec {
            network: net.name.clone(),
            addr: net.dns,
            domain: net.domain.clone(),
            forward: net.dns_forward.clone(),
            clients: (net.subnet.network(), net.subnet.prefix_len()),
            forward_qps: net.dns_forward_qps,
            services: cluster
                .services
                .iter()
                .filter(|s| s.network == net.name)
                .map(|s| (s.name.clone(), s.vip))
                .collect(),
            endpoints: cluster
                .endpoints_of(&net.name)
                .filter_map(|e| e.name.clone().map(|n| (n, e.ip)))
                .collect(),
        })
        .collect()
}

/// The addresses this node adds to its TAP in `net`: the DNS responder's
/// and the VIP of every service of the network, as /32s. On a bridge the
/// node's own address goes there too with the subnet's prefix (or, on a
/// node with containers only, the DNS address does), which brings the
/// route to the subnet.
pub(super) fn wanted_addresses(
    cluster: &Cluster,
    net: &Network,
    node: &str,
    bridge: bool,
) -> BTreeSet<(Ipv4Addr, u8)> {
    let mut out: BTreeSet<(Ipv4Addr, u8)> = cluster
        .services
        .iter()
        .filter(|s| s.network == net.name)
        .filter_map(|s| s.vip)
        .map(|ip| (ip, 32))
        .collect();
    if bridge {
        let own = cluster.tap_address(net, node).unwrap_or(net.dns);
        out.insert((own, net.subnet.prefix_len()));
        if own != net.dns {
            out.insert((net.dns, 32));
        }
    } else {
        out.insert((net.dns, 32));
    }
    out
}

/// With the cluster file, every node allocates container addresses from
/// its own range, and the others cannot hear of each allocation: they
/// forward every address of a remote node's range to that node, with the
/// MAC derived from the address (`02:42:<ip>`, the rule allocations use),
/// and answer ARP for it. Addresses an endpoint declares keep their own
/// entry.
pub(super) fn pool_entries(
    cluster: &Cluster,
    net: &Network,
    addresses: &HashMap<&str, Ipv4Addr>,
    node: &str,
) -> Vec<EndpointEntry> {
    let mut out = Vec::new();
    if net.pools.is_empty() {
        return out;
    }
    let declared: HashSet<Ipv4Addr> = cluster.endpoints_of(&net.name).map(|e| e.ip).collect();
    for (owner, range) in &net.pools {
        let Some(vtep) = addresses.get(owner.as_str()) else {
            continue;
        };
        if owner == node {
            continue;
        }
        for ip in range.hosts().filter(|ip| net.allocatable(*ip)) {
            if !declared.contains(&ip) {
                out.push(EndpointEntry {
                    ip,
                    mac: MacAddr::from_ipv4(ip),
                    vtep: *vtep,
                });
            }
        }
    }
    out
}

/// The MAC of a bridged TAP: the node's MAC in the network with its second
/// byte changed, so that the bridge (which answers as the node) and its
/// TAP port never share one.
pub(super) fn port_mac(node: MacAddr) -> MacAddr {
    let mut m = node.0;
    m[1] ^= 0x80;
    MacAddr(m)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// h1 and h2 in `front`, h3 a member without endpoint; `web` in ingress
    /// mode on both tasks, `local` in host mode on h2's task; h2 has a
    /// container range.
    fn cluster() -> Cluster {
        crate::config::parse(
            Path::new("t.toml"),
            r#"
nodes = [{ name = "h1", address = "198.18.0.1" },
         { name = "h2", address = "198.18.0.2" },
         { name = "h3", address = "198.18.0.3" }]
[[networks]]
name = "front"
vni = 4096
subnet = "10.0.9.0/24"
nodes = ["h3"]
pools = [{ node = "h2", range = "10.0.9.64/30" }]
[[endpoints]]
network = "front"
node = "h1"
ip = "10.0.9.1"
name = "db"
[[endpoints]]
network = "front"
node = "h2"
ip = "10.0.9.2"
[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.1", "10.0.9.2"]
ports = [{ published = 8080, target = 80 }]
[[services]]
name = "local"
network = "front"
mode = "host"
endpoint_mode = "dnsrr"
tasks = ["10.0.9.2"]
ports = [{ published = 9090, target = 90 }]
"#,
        )
        .expect("valid")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ingress_listens_on_every_member_and_host_mode_only_beside_a_task() {
        let c = cluster();
        let vip = c.services[0].vip.expect("web has a VIP");
        let on = |node: &str| mesh_desired(&c, node);
        let h1 = on("h1");
        assert!(h1[0].listen, "ingress: a member listens");
        assert_eq!(h1[0].tasks, [ip("10.0.9.1"), ip("10.0.9.2")]);
        assert_eq!(
            h1[0].extra_listen,
            [(
                vxmesh_dataplane::mesh::spec::Protocol::Tcp,
                SocketAddr::new(vip.into(), 80),
                80
            )],
            "the VIP listens on the target port"
        );
        assert!(!h1[1].listen, "host mode: no local task, no listener");
        assert!(h1[1].tasks.is_empty());
        assert!(h1[1].extra_listen.is_empty(), "dnsrr has no VIP");
        let h2 = on("h2");
        assert!(h2[1].listen);
        assert_eq!(h2[1].tasks, [ip("10.0.9.2")]);
        // A node outside the network neither listens nor binds the VIP.
        let stranger = on("h9");
        assert!(!stranger[0].listen && stranger[0].extra_listen.is_empty());
    }

    #[test]
    fn tasks_on_other_nodes_go_through_their_relay_which_serves_only_its_own() {
        let c = cluster();
        let h1 = mesh_desired(&c, "h1");
        let relay = |n: u8| SocketAddr::new(Ipv4Addr::new(198, 18, 0, n).into(), 7950);
        assert_eq!(
            h1[0].relays,
            HashMap::from([(ip("10.0.9.2"), relay(2))]),
            "h1's own task is reached directly"
        );
        let (at, policy) = relay_policy(&c, "h2");
        assert_eq!(at, Some(relay(2)));
        assert_eq!(
            policy.targets,
            HashSet::from([
                SocketAddrV4::new(ip("10.0.9.2"), 80),
                SocketAddrV4::new(ip("10.0.9.2"), 90)
            ])
        );
        assert_eq!(
            policy.peers,
            HashSet::from([ip("198.18.0.1"), ip("198.18.0.3")])
        );
        // Off, and never for an encrypted network.
        let mut off = c.clone();
        off.settings.mesh_relay_port = 0;
        assert!(mesh_desired(&off, "h1")[0].relays.is_empty());
        assert_eq!(relay_policy(&off, "h2").0, None);
        let mut sealed = c.clone();
        sealed.networks[0].encrypted = true;
        assert!(mesh_desired(&sealed, "h1")[0].relays.is_empty());
        assert_eq!(relay_policy(&sealed, "h2"), (None, Policy::default()));
        // A node with no task of its own does not listen.
        assert_eq!(relay_policy(&c, "h3"), (None, Policy::default()));
    }

    #[test]
    fn each_member_serves_its_networks_zone_with_names_and_vips() {
        let c = cluster();
        let zones = dns_zones(&c, "h3");
        assert_eq!(zones.len(), 1, "h3 is a member without endpoint");
        let z = &zones[0];
        assert_eq!((z.addr, z.domain.as_str()), (ip("10.0.9.254"), "vxmesh"));
        assert_eq!(z.clients, (ip("10.0.9.0"), 24));
        assert_eq!(
            z.services,
            [
                ("web".to_string(), c.services[0].vip),
                ("local".to_string(), None)
            ]
        );
        assert_eq!(z.endpoints, [("db".to_string(), ip("10.0.9.1"))]);
        assert!(dns_zones(&c, "h9").is_empty());
    }

    #[test]
    fn a_tap_holds_dns_and_vips_and_a_bridge_the_nodes_own_address() {
        let c = cluster();
        let net = c.network("front").unwrap();
        let vip = c.services[0].vip.unwrap();
        let tap = wanted_addresses(&c, net, "h1", false);
        assert_eq!(tap, BTreeSet::from([(vip, 32), (ip("10.0.9.254"), 32)]));
        let bridge = wanted_addresses(&c, net, "h1", true);
        assert_eq!(
            bridge,
            BTreeSet::from([(vip, 32), (ip("10.0.9.1"), 24), (ip("10.0.9.254"), 32)])
        );
        // Without an endpoint of its own the DNS address brings the route.
        let h3 = wanted_addresses(&c, net, "h3", true);
        assert!(h3.contains(&(ip("10.0.9.254"), 24)), "{h3:?}");
    }

    #[test]
    fn other_nodes_ranges_are_forwarded_to_their_owner() {
        let c = cluster();
        let net = c.network("front").unwrap();
        let addresses: HashMap<&str, Ipv4Addr> = c
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.address))
            .collect();
        let on_h1 = pool_entries(&c, net, &addresses, "h1");
        let ips: Vec<Ipv4Addr> = on_h1.iter().map(|e| e.ip).collect();
        assert_eq!(ips, [ip("10.0.9.65"), ip("10.0.9.66")]);
        assert!(on_h1.iter().all(|e| e.vtep == ip("198.18.0.2")));
        assert_eq!(on_h1[0].mac, MacAddr::from_ipv4(ip("10.0.9.65")));
        assert!(
            pool_entries(&c, net, &addresses, "h2").is_empty(),
            "its own"
        );
    }

    #[test]
    fn tap_macs_follow_the_first_endpoint_or_the_underlay() {
        let c = cluster();
        let net = c.network("front").unwrap();
        let h1 = tap_mac(&c, net, "h1", ip("198.18.0.1"));
        assert_eq!(h1, MacAddr::from_ipv4(ip("10.0.9.1")));
        let h3 = tap_mac(&c, net, "h3", ip("198.18.0.3"));
        assert_eq!(h3, MacAddr([0x02, 0x43, 198, 18, 0, 3]));
        let port = port_mac(h1);
        assert_ne!(port, h1);
        assert_eq!(port_mac(port), h1, "one bit flipped");
    }
}
