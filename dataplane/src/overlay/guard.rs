//! What a workload may send, and what a peer may claim: the per-endpoint
//! source checks of the overlay (like Cilium's, unlike Docker's overlay,
//! which forwards whatever a container writes).
//!
//! On the TAP side a frame is refused when
//! - its source MAC is a remote endpoint's (it would pull that endpoint's
//!   traffic to this node once another node learned it), or is multicast;
//! - it is ARP whose sender MAC is not the frame's source MAC, or whose
//!   sender address is an endpoint with another MAC (ARP spoofing and
//!   gratuitous ARP for someone else's address);
//! - it is IPv4 whose source address is an endpoint with another MAC;
//! - it is an IPv6 router advertisement or redirect, an ICMPv4 redirect
//!   (rogue routers), or a DHCPv4/DHCPv6 server message (rogue DHCP), unless
//!   the network allows them.
//!
//! On the underlay side a frame is refused when its source MAC belongs to
//! an endpoint the tables place on another node than the sender, or on this
//! node: a member node may only speak for its own workloads.
//!
//! Every check reads only the frame and the snapshot; nothing is parsed
//! beyond the headers the decision needs, and every length is checked.

use std::net::Ipv4Addr;

use super::stats::DropReason;
use super::tables::NetworkTable;
use crate::wire::MacAddr;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

const ICMP_REDIRECT: u8 = 5;
const ICMPV6_RA: u8 = 134;
const ICMPV6_REDIRECT: u8 = 137;

const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;
const DHCPV6_CLIENT: u16 = 546;

/// IPv6 extension headers walked to find the upper layer (RFC 8200 4.1).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
/// More extension headers than this and the packet is refused: no
/// legitimate workload needs them, and an RA must not hide behind them
/// (RFC 7113).
const MAX_EXT_HEADERS: usize = 8;

/// Why a frame from a local workload may not leave this node, if it may not.
/// `hlen` is the length of its Ethernet header (VLAN tag included).
pub fn check_tap(n: &NetworkTable, frame: &[u8], hlen: usize) -> Option<DropReason> {
    let smac = MacAddr::from_slice(&frame[6..12]);
    if smac.is_multicast() || n.fdb.contains_key(&smac) {
        return Some(DropReason::SpoofedMac);
    }
    let ethertype = u16::from_be_bytes([frame[hlen - 2], frame[hlen - 1]]);
    let l3 = &frame[hlen..];
    match ethertype {
        ETHERTYPE_ARP => check_arp(n, smac, l3),
        ETHERTYPE_IPV4 => check_ipv4(n, smac, l3),
        ETHERTYPE_IPV6 => check_ipv6(n, l3),
        _ => None,
    }
}

/// Why a frame that member `src` sent may not be delivered, if it may not.
pub fn check_underlay(n: &NetworkTable, frame: &[u8], src: Ipv4Addr) -> Option<DropReason> {
    let smac = MacAddr::from_slice(&frame[6..12]);
    if n.local_macs.contains(&smac) {
        return Some(DropReason::SpoofedMac);
    }
    match n.fdb.get(&smac) {
        Some(owner) if *owner != src => Some(DropReason::SpoofedMac),
        _ => None,
    }
}

/// True when `ip` is an endpoint whose MAC is not `mac`.
fn claims_other(n: &NetworkTable, ip: Ipv4Addr, mac: MacAddr) -> bool {
    matches!(n.arp.get(&ip), Some(owner) if *owner != mac)
}

fn check_arp(n: &NetworkTable, smac: MacAddr, arp: &[u8]) -> Option<DropReason> {
    // htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) spa(4) tha(6) tpa(4)
    if arp.len() < 28 {
        return Some(DropReason::Malformed);
    }
    if arp[2..4] != [0x08, 0x00] || arp[4] != 6 || arp[5] != 4 {
        // Not IPv4 over Ethernet: nothing of ours to claim.
        return None;
    }
    let sha = MacAddr::from_slice(&arp[8..14]);
    if sha != smac {
        return Some(DropReason::SpoofedMac);
    }
    let spa = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    claims_other(n, spa, smac).then_some(DropReason::SpoofedIp)
}

fn check_ipv4(n: &NetworkTable, smac: MacAddr, ip: &[u8]) -> Option<DropReason> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    if claims_other(n, src, smac) {
        return Some(DropReason::SpoofedIp);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Only a first fragment carries the upper-layer header.
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    if ihl < 20 || ip.len() < ihl || !first_fragment {
        return None;
    }
    let l4 = &ip[ihl..];
    match ip[9] {
        PROTO_ICMP if !n.allow_ra && l4.first() == Some(&ICMP_REDIRECT) => {
            Some(DropReason::RogueRouter)
        }
        PROTO_UDP if !n.allow_dhcp && l4.len() >= 4 => {
            let (sport, dport) = ports(l4);
            (sport == DHCP_SERVER && dport == DHCP_CLIENT).then_some(DropReason::RogueDhcp)
        }
        _ => None,
    }
}

fn ports(l4: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

fn check_ipv6(n: &NetworkTable, ip: &[u8]) -> Option<DropReason> {
    if n.allow_ra && n.allow_dhcp {
        return None;
    }
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let mut next = ip[6];
    let mut at = 40;
    for _ in 0..=MAX_EXT_HEADERS {
        let rest = &ip[at.min(ip.len())..];
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                if rest.len() < 2 {
                    return Some(DropReason::RogueRouter);
                }
                next = rest[0];
                at += (usize::from(rest[1]) + 1) * 8;
            }
            FRAGMENT => {
                if rest.len() < 8 {
                    return Some(DropReason::RogueRouter);
                }
                let offset = u16::from_be_bytes([rest[2], rest[3]]) >> 3;
                if offset != 0 {
                    // A later fragment: its first one was checked.
                    return None;
                }
                next = rest[0];
                at += 8;
            }
            PROTO_ICMPV6 => {
                // A first fragment that does not hold the ICMPv6 type is
                // refused: nothing could check what it reassembles to.
                let Some(&kind) = rest.first() else {
                    return Some(DropReason::RogueRouter);
                };
                let router = kind == ICMPV6_RA || kind == ICMPV6_REDIRECT;
                return (router && !n.allow_ra).then_some(DropReason::RogueRouter);
            }
            PROTO_UDP => {
                if rest.len() < 4 {
                    return None;
                }
                // Servers and relays answer clients on port 546.
                let (_, dport) = ports(rest);
                return (dport == DHCPV6_CLIENT && !n.allow_dhcp).then_some(DropReason::RogueDhcp);
            }
            _ => return None,
        }
    }
    Some(DropReason::RogueRouter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::fdb::LearnedFdb;
    use crate::overlay::stats::NetStats;
    use crate::overlay::tables::EndpointEntry;
    use std::sync::Arc;
    use std::time::Duration;

    const TAP: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 1]);
    const LOCAL: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 5]);
    const REMOTE: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 2]);
    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const OTHER_PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn table() -> NetworkTable {
        NetworkTable::new(
            "front",
            4096,
            1450,
            TAP,
            Arc::new(NetStats::default()),
            Arc::new(LearnedFdb::new(16, Duration::from_secs(60))),
        )
        .with_peers(ME, [PEER, OTHER_PEER])
        .with_endpoints(
            ME,
            &[
                EndpointEntry {
                    ip: ip(1),
                    mac: TAP,
                    vtep: ME,
                },
                EndpointEntry {
                    ip: ip(5),
                    mac: LOCAL,
                    vtep: ME,
                },
                EndpointEntry {
                    ip: ip(2),
                    mac: REMOTE,
                    vtep: PEER,
                },
            ],
        )
    }

    fn eth(src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha.0);
        a.extend_from_slice(&spa.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&tpa.octets());
        a
    }

    fn ipv4(src: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&ip(9).octets());
        p.extend_from_slice(l4);
        p
    }

    fn ipv6(next: u8, after: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 255];
        p.extend_from_slice(&[0xfe; 32]);
        p.extend_from_slice(after);
        p
    }

    fn tap(n: &NetworkTable, f: &[u8]) -> Option<DropReason> {
        check_tap(n, f, 14)
    }

    #[test]
    fn a_workload_speaks_for_itself() {
        let n = table();
        let own = arp(2, LOCAL, ip(5), ip(2));
        assert_eq!(tap(&n, &eth(LOCAL, ETHERTYPE_ARP, &own)), None);
        let probe = arp(1, LOCAL, Ipv4Addr::UNSPECIFIED, ip(5));
        assert_eq!(tap(&n, &eth(LOCAL, ETHERTYPE_ARP, &probe)), None);
        let p = ipv4(ip(5), PROTO_UDP, &[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        assert_eq!(tap(&n, &eth(LOCAL, ETHERTYPE_IPV4, &p)), None);
        // An address no endpoint has (announced workloads) is its own.
        let p = ipv4(ip(77), PROTO_UDP, &[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        let stranger = MacAddr([0x02, 0, 0, 0, 0, 77]);
        assert_eq!(tap(&n, &eth(stranger, ETHERTYPE_IPV4, &p)), None);
        // The node itself.
        let p = ipv4(ip(1), PROTO_ICMP, &[8, 0, 0, 0]);
        assert_eq!(tap(&n, &eth(TAP, ETHERTYPE_IPV4, &p)), None);
    }

    #[test]
    fn another_endpoints_mac_or_address_is_refused() {
        let n = table();
        let p = ipv4(ip(5), PROTO_ICMP, &[8, 0, 0, 0]);
        assert_eq!(
            tap(&n, &eth(REMOTE, ETHERTYPE_IPV4, &p)),
            Some(DropReason::SpoofedMac)
        );
        let group = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(
            tap(&n, &eth(group, ETHERTYPE_IPV4, &p)),
            Some(DropReason::SpoofedMac)
        );
        // Gratuitous ARP for a remote endpoint's address, and a reply
        // claiming a local one's.
        let garp = arp(1, LOCAL, ip(2), ip(2));
        assert_eq!(
            tap(&n, &eth(LOCAL, ETHERTYPE_ARP, &garp)),
            Some(DropReason::SpoofedIp)
        );
        let reply = arp(2, MacAddr([2, 0, 0, 0, 0, 9]), ip(1), ip(2));
        assert_eq!(
            tap(&n, &eth(MacAddr([2, 0, 0, 0, 0, 9]), ETHERTYPE_ARP, &reply)),
            Some(DropReason::SpoofedIp)
        );
        // Sender MAC that is not the frame's.
        let lie = arp(2, REMOTE, ip(5), ip(2));
        assert_eq!(
            tap(&n, &eth(LOCAL, ETHERTYPE_ARP, &lie)),
            Some(DropReason::SpoofedMac)
        );
        let spoofed = ipv4(ip(2), PROTO_ICMP, &[8, 0, 0, 0]);
        assert_eq!(
            tap(&n, &eth(LOCAL, ETHERTYPE_IPV4, &spoofed)),
            Some(DropReason::SpoofedIp)
        );
        assert_eq!(
            tap(&n, &eth(LOCAL, ETHERTYPE_ARP, &[0; 10])),
            Some(DropReason::Malformed)
        );
    }

    #[test]
    fn rogue_routers_and_dhcp_servers_are_refused_unless_allowed() {
        let mut n = table();
        let redirect = ipv4(ip(5), PROTO_ICMP, &[ICMP_REDIRECT, 0, 0, 0]);
        let offer = ipv4(ip(5), PROTO_UDP, &[0, 67, 0, 68, 0, 8, 0, 0]);
        let ra = ipv6(PROTO_ICMPV6, &[ICMPV6_RA, 0, 0, 0]);
        let redirect6 = ipv6(PROTO_ICMPV6, &[ICMPV6_REDIRECT, 0, 0, 0]);
        // An RA behind a hop-by-hop and a destination options header.
        let hidden = ipv6(
            HOP_BY_HOP,
            &[
                DEST_OPTS,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                PROTO_ICMPV6,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                ICMPV6_RA,
                0,
            ],
        );
        // A first fragment too short to hold the ICMPv6 type.
        let cut = ipv6(FRAGMENT, &[PROTO_ICMPV6, 0, 0, 1, 0, 0, 0, 1]);
        let dhcp6 = ipv6(PROTO_UDP, &[2, 35, 2, 34, 0, 8, 0, 0]);
        let cases = [
            (ETHERTYPE_IPV4, &redirect, DropReason::RogueRouter),
            (ETHERTYPE_IPV4, &offer, DropReason::RogueDhcp),
            (ETHERTYPE_IPV6, &ra, DropReason::RogueRouter),
            (ETHERTYPE_IPV6, &redirect6, DropReason::RogueRouter),
            (ETHERTYPE_IPV6, &hidden, DropReason::RogueRouter),
            (ETHERTYPE_IPV6, &cut, DropReason::RogueRouter),
            (ETHERTYPE_IPV6, &dhcp6, DropReason::RogueDhcp),
        ];
        for (et, p, want) in &cases {
            assert_eq!(tap(&n, &eth(LOCAL, *et, p)), Some(*want), "{want:?}");
        }
        // Clients may still ask: a solicitation and a DHCP discover pass.
        let rs = ipv6(PROTO_ICMPV6, &[133, 0, 0, 0]);
        assert_eq!(tap(&n, &eth(LOCAL, ETHERTYPE_IPV6, &rs)), None);
        let discover = ipv4(ip(5), PROTO_UDP, &[0, 68, 0, 67, 0, 8, 0, 0]);
        assert_eq!(tap(&n, &eth(LOCAL, ETHERTYPE_IPV4, &discover)), None);
        n.allow_ra = true;
        n.allow_dhcp = true;
        for (et, p, _) in &cases {
            assert_eq!(tap(&n, &eth(LOCAL, *et, p)), None);
        }
    }

    #[test]
    fn a_peer_speaks_only_for_its_own_endpoints() {
        let n = table().with_endpoints(ME, &[]);
        let mut n = n;
        n.local_macs.insert(LOCAL);
        let f = eth(REMOTE, ETHERTYPE_IPV4, &[]);
        assert_eq!(check_underlay(&n, &f, PEER), None);
        assert_eq!(
            check_underlay(&n, &f, OTHER_PEER),
            Some(DropReason::SpoofedMac)
        );
        let f = eth(LOCAL, ETHERTYPE_IPV4, &[]);
        assert_eq!(check_underlay(&n, &f, PEER), Some(DropReason::SpoofedMac));
        let unknown = eth(MacAddr([2, 1, 2, 3, 4, 5]), ETHERTYPE_IPV4, &[]);
        assert_eq!(check_underlay(&n, &unknown, OTHER_PEER), None);
    }

    proptest::proptest! {
        #[test]
        fn no_frame_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 14..200)) {
            let n = table();
            let _ = check_tap(&n, &bytes, 14);
            let _ = check_underlay(&n, &bytes, PEER);
        }
    }
}
