//! ARP for IPv4 over Ethernet (RFC 826): recognising a request a local
//! workload sent into its TAP, and writing the reply the overlay answers it
//! with (proxy ARP from the network's static table, so requests for known
//! addresses are never flooded across the underlay).
//!
//! Parsing uses etherparse's `Ethernet2Slice` and `ArpPacketSlice`; this
//! module only adds the policy (which requests to answer) and the reply
//! layout.

use std::net::Ipv4Addr;

use etherparse::{ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Slice};

use super::MacAddr;

/// Length of an Ethernet header plus an Ethernet/IPv4 ARP packet, without
/// padding: 14 + 28.
pub const REPLY_LEN: usize = 42;

const ETH_HLEN: usize = 14;
const _: () = assert!(REPLY_LEN == ETH_HLEN + etherparse::ArpEthIpv4Packet::LEN);

/// An ARP request worth answering: who has `target_ip`, tell `sender_ip`
/// at `sender_mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Recognises an ARP request in an untagged Ethernet `frame`: ethertype
/// 0x0806, htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4, op 1. Trailing
/// bytes (Ethernet padding to 60 bytes) are ignored.
///
/// Returns `None` for anything else, and also for the two requests that
/// must not be answered on someone's behalf: gratuitous ARP (sender IP ==
/// target IP, an announcement) and probes with sender IP 0.0.0.0 (RFC 5227
/// address conflict detection: answering would make the prober believe the
/// address is taken).
pub fn parse_request(frame: &[u8]) -> Option<ArpRequest> {
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).ok()?;
    if eth.ether_type() != EtherType::ARP {
        return None;
    }
    let arp = ArpPacketSlice::from_slice(eth.payload_slice()).ok()?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
        || arp.operation() != ArpOperation::REQUEST
    {
        return None;
    }
    let sender_mac = MacAddr(arp.sender_hw_addr().try_into().ok()?);
    let sender_ip = ipv4(arp.sender_protocol_addr())?;
    let target_ip = ipv4(arp.target_protocol_addr())?;
    if sender_ip.is_unspecified() || sender_ip == target_ip {
        return None;
    }
    Some(ArpRequest {
        sender_mac,
        sender_ip,
        target_ip,
    })
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// Writes into `out[..42]` the Ethernet frame answering `req` with
/// "`req.target_ip` is at `answer_mac`": Ethernet dst = requester's MAC,
/// src = `answer_mac`, ethertype ARP; ARP op 2, sender = (`answer_mac`,
/// `req.target_ip`), target = (`req.sender_mac`, `req.sender_ip`). This is
/// the frame the kernel's own `arp_send(ARPOP_REPLY, ..)` builds, minus the
/// padding to 60 bytes that a NIC would add (a TAP needs none).
///
/// Returns [`REPLY_LEN`], or 0 (writing nothing) if `out` is too short.
pub fn write_reply(req: &ArpRequest, answer_mac: MacAddr, out: &mut [u8]) -> usize {
    let Some(out) = out.get_mut(..REPLY_LEN) else {
        return 0;
    };
    let (eth, arp) = out.split_at_mut(ETH_HLEN);
    eth[0..6].copy_from_slice(&req.sender_mac.0);
    eth[6..12].copy_from_slice(&answer_mac.0);
    eth[12..14].copy_from_slice(&EtherType::ARP.0.to_be_bytes());
    let body = etherparse::ArpEthIpv4Packet {
        operation: ArpOperation::REPLY,
        sender_mac: answer_mac.0,
        sender_ipv4: req.target_ip.octets(),
        target_mac: req.sender_mac.0,
        target_ipv4: req.sender_ip.octets(),
    };
    arp.copy_from_slice(&body.to_bytes());
    REPLY_LEN
}
