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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vxlan::testdata::{
        KERNEL_ARP_REPLY_DATAGRAM, KERNEL_ARP_REQUEST_DATAGRAM, OUTER_LEN,
    };
    use proptest::prelude::*;

    const INNER: usize = OUTER_LEN + crate::wire::vxlan::HEADER_LEN;
    const MAC_1: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x09, 0x01]);
    const MAC_3: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x09, 0x03]);

    /// "Who has 10.0.9.3? Tell 10.0.9.1", as the kernel's vxlan device in
    /// namespace A sent it (42 bytes, unpadded); captured by
    /// `testdata/capture-kernel-vxlan.sh`.
    fn kernel_request() -> &'static [u8] {
        &KERNEL_ARP_REQUEST_DATAGRAM[INNER..]
    }

    /// "10.0.9.3 is at 02:42:0a:00:09:03": the kernel of namespace B
    /// answering that request (same capture).
    fn kernel_reply() -> &'static [u8] {
        &KERNEL_ARP_REPLY_DATAGRAM[INNER..]
    }

    const REQUEST: ArpRequest = ArpRequest {
        sender_mac: MAC_1,
        sender_ip: Ipv4Addr::new(10, 0, 9, 1),
        target_ip: Ipv4Addr::new(10, 0, 9, 3),
    };

    /// The kernel's request with its ARP body patched by `f`.
    fn patched(f: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut v = kernel_request().to_vec();
        f(&mut v[ETH_HLEN..]);
        v
    }

    #[test]
    fn test_deconstruct() {
        let frame = kernel_request();
        assert_eq!(frame.len(), 42);
        let eth = Ethernet2Slice::from_slice_without_fcs(frame).unwrap();
        assert_eq!(eth.destination(), MacAddr::BROADCAST.0);
        assert_eq!(eth.ether_type(), EtherType::ARP);
        let arp = ArpPacketSlice::from_slice(eth.payload_slice()).unwrap();
        assert_eq!(arp.operation(), ArpOperation::REQUEST);
        assert_eq!(arp.target_hw_addr(), &[0; 6]);
    }

    #[test]
    fn test_parse() {
        assert_eq!(parse_request(kernel_request()), Some(REQUEST));
        // The 60-byte form a NIC would pad it to parses the same.
        let mut padded = kernel_request().to_vec();
        padded.resize(60, 0);
        assert_eq!(parse_request(&padded), Some(REQUEST));
    }

    #[test]
    fn test_construct() {
        // The request rebuilt from its parts is the kernel's, byte for byte.
        let mut frame = [0u8; REPLY_LEN];
        frame[..6].copy_from_slice(&MacAddr::BROADCAST.0);
        frame[6..12].copy_from_slice(&MAC_1.0);
        frame[12..14].copy_from_slice(&EtherType::ARP.0.to_be_bytes());
        let body = etherparse::ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: MAC_1.0,
            sender_ipv4: REQUEST.sender_ip.octets(),
            target_mac: [0; 6],
            target_ipv4: REQUEST.target_ip.octets(),
        };
        frame[ETH_HLEN..].copy_from_slice(&body.to_bytes());
        assert_eq!(&frame[..], kernel_request());
    }

    #[test]
    fn test_emit() {
        // Our answer on 10.0.9.3's behalf is exactly what 10.0.9.3's own
        // kernel sent.
        let mut out = [0xaau8; 64];
        assert_eq!(write_reply(&REQUEST, MAC_3, &mut out), REPLY_LEN);
        assert_eq!(&out[..REPLY_LEN], kernel_reply());
        assert_eq!(&out[REPLY_LEN..], &[0xaa; 64 - REPLY_LEN][..]);
        // A reply is not a request.
        assert_eq!(parse_request(&out[..REPLY_LEN]), None);
    }

    #[test]
    fn short_output_writes_nothing() {
        let mut out = [0xaau8; REPLY_LEN - 1];
        assert_eq!(write_reply(&REQUEST, MAC_3, &mut out), 0);
        assert_eq!(out, [0xaa; REPLY_LEN - 1]);
        assert_eq!(write_reply(&REQUEST, MAC_3, &mut []), 0);
    }

    #[test]
    fn requests_not_to_answer() {
        // Gratuitous ARP (RFC 5227 §3 announcement): sender IP == target IP.
        let gratuitous = patched(|a| a[24..28].copy_from_slice(&[10, 0, 9, 1]));
        assert_eq!(parse_request(&gratuitous), None);
        // Probe (RFC 5227 §2.1.1): sender IP 0.0.0.0.
        let probe = patched(|a| a[14..18].fill(0));
        assert_eq!(parse_request(&probe), None);
    }

    #[test]
    fn malformed_or_foreign() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("op reply", patched(|a| a[7] = 2)),
            ("htype 6 (IEEE 802)", patched(|a| a[1] = 6)),
            (
                "ptype IPv6",
                patched(|a| a[2..4].copy_from_slice(&[0x86, 0xdd])),
            ),
            ("hlen 8", patched(|a| a[4] = 8)),
            ("plen 16", patched(|a| a[5] = 16)),
            ("truncated", kernel_request()[..41].to_vec()),
            ("ethertype IPv4", {
                let mut v = kernel_request().to_vec();
                v[12..14].copy_from_slice(&[0x08, 0x00]);
                v
            }),
        ];
        for (what, frame) in &cases {
            assert_eq!(parse_request(frame), None, "{what}");
        }
        // 802.1Q-tagged: the TAP only carries untagged frames.
        let mut tagged = kernel_request()[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&kernel_request()[12..]);
        assert_eq!(parse_request(&tagged), None);
    }

    #[test]
    fn no_panic_on_any_prefix() {
        for n in 0..kernel_request().len() {
            assert_eq!(parse_request(&kernel_request()[..n]), None);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(req) = parse_request(&bytes) {
                let mut out = [0u8; REPLY_LEN];
                prop_assert_eq!(write_reply(&req, MAC_3, &mut out), REPLY_LEN);
            }
        }

        /// Random bodies behind a valid ARP/IPv4-over-Ethernet prefix, so
        /// the policy checks see garbage too; answers go back to the sender.
        #[test]
        fn arbitrary_arp_bodies(body in any::<[u8; 20]>(), op in 0u16..4) {
            let mut f = kernel_request()[..ETH_HLEN + 6].to_vec();
            f.extend_from_slice(&op.to_be_bytes());
            f.extend_from_slice(&body);
            if let Some(req) = parse_request(&f) {
                prop_assert_eq!(op, 1);
                prop_assert_ne!(req.sender_ip, req.target_ip);
                let mut out = [0u8; REPLY_LEN];
                write_reply(&req, MAC_3, &mut out);
                prop_assert_eq!(&out[..6], &body[..6]);
                prop_assert_eq!(&out[32..38], &body[..6]);
                prop_assert_eq!(&out[38..42], &body[6..10]);
                prop_assert_eq!(&out[28..32], &body[16..20]);
            }
        }
    }
}
