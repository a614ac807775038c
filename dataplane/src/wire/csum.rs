//! Internet checksums (RFC 1071) and the completion of inner TCP/UDP
//! checksums that a sender left partial.
//!
//! Why: a Linux sender with checksum offload hands its vxlan device frames
//! whose inner L4 checksum holds only the pseudo-header sum
//! (`CHECKSUM_PARTIAL`), trusting the NIC to finish it. Between namespaces
//! (veth) nothing ever finishes it, and that metadata does not survive the
//! trip through a userspace socket, so vxmeshd must finish it itself before
//! the frame reaches its TAP, or the receiving stack drops every TCP segment.
//! Completing is safe: the field is changed only when it holds exactly the
//! pseudo-header sum and the full sum does not verify.

/// Folds a 32-bit one's complement accumulator to 16 bits.
#[inline]
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's complement sum of `data` (big-endian 16-bit words, odd byte padded).
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        if acc > 0xffff_0000 {
            acc = u32::from(fold(acc));
        }
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*b) << 8);
    }
    acc
}

/// What [`complete_l4`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Csum {
    /// Not IPv4/IPv6 TCP/UDP, a fragment, or truncated: left alone.
    NotApplicable,
    /// The checksum verified (or UDP over IPv4 without a checksum).
    Valid,
    /// The field held only the pseudo-header sum; it now holds the full one.
    Completed,
    /// Not a partial sum: left for the receiving stack to verify.
    Unchecked,
}

const ETH_HLEN: usize = 14;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Checks the TCP or UDP checksum of an Ethernet frame and completes it in
/// place when the sender left it partial. Never panics.
pub fn complete_l4(frame: &mut [u8]) -> L4Csum {
    let Some(l3) = l3_offset(frame) else {
        return L4Csum::NotApplicable;
    };
    let Some((l4, proto, pseudo, end)) = locate_l4(frame, l3) else {
        return L4Csum::NotApplicable;
    };
    let seg = &frame[l4..end];
    let field = match proto {
        PROTO_TCP if seg.len() >= 20 => 16,
        PROTO_UDP if seg.len() >= 8 => 6,
        _ => return L4Csum::NotApplicable,
    };
    let stored = u16::from_be_bytes([seg[field], seg[field + 1]]);
    if proto == PROTO_UDP && stored == 0 && frame[l3] >> 4 == 4 {
        return L4Csum::Valid;
    }
    if stored != fold(pseudo) {
        // Cheap test first: only a field that holds exactly the
        // pseudo-header sum can be partial. Anything else is the
        // receiving stack's to verify, as it would be without us.
        return L4Csum::Unchecked;
    }
    if fold(sum(seg, pseudo)) == 0xffff {
        return L4Csum::Valid;
    }
    // The field holds the pseudo-header sum, and the sum over the segment
    // with that seed is what the NIC would have inverted and stored.
    let seg = &mut frame[l4..end];
    seg[field] = 0;
    seg[field + 1] = 0;
    let mut full = !fold(sum(seg, pseudo));
    if proto == PROTO_UDP && full == 0 {
        full = 0xffff;
    }
    seg[field..field + 2].copy_from_slice(&full.to_be_bytes());
    L4Csum::Completed
}

fn l3_offset(frame: &[u8]) -> Option<usize> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 | 0x86dd => Some(ETH_HLEN),
        0x8100 if frame.len() >= ETH_HLEN + 4 => match u16::from_be_bytes([frame[16], frame[17]]) {
            0x0800 | 0x86dd => Some(ETH_HLEN + 4),
            _ => None,
        },
        _ => None,
    }
}

/// Offset of the L4 header, its protocol, the pseudo-header sum (with
/// the L4 length) and where the IP packet ends (Ethernet padding after it is
/// not summed).
fn locate_l4(frame: &[u8], l3: usize) -> Option<(usize, u8, u32, usize)> {
    let ip = &frame[l3..];
    match ip.first()? >> 4 {
        4 => {
            if ip.len() < 20 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ihl < 20 || total < ihl || total > ip.len() || frag & 0x3fff != 0 {
                return None;
            }
            let proto = ip[9];
            let pseudo = sum(&ip[12..20], u32::from(proto) + (total - ihl) as u32);
            Some((l3 + ihl, proto, pseudo, l3 + total))
        }
        6 => {
            if ip.len() < 40 {
                return None;
            }
            let proto = ip[6];
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if 40 + plen > ip.len() {
                return None;
            }
            let pseudo = sum(&ip[8..40], u32::from(proto) + plen as u32);
            Some((l3 + 40, proto, pseudo, l3 + 40 + plen))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
            .tcp(40000, 80, 1234, 64240);
        let mut out = Vec::new();
        b.write(&mut out, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        out
    }

    /// What Linux leaves in the field under CHECKSUM_PARTIAL: the folded
    /// pseudo-header sum, not inverted.
    fn make_partial(f: &mut [u8], field: usize) {
        let (l4, proto, pseudo, _) = locate_l4(f, 14).unwrap();
        assert!(proto == PROTO_TCP || proto == PROTO_UDP);
        f[l4 + field..l4 + field + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    }

    #[test]
    fn a_correct_checksum_is_left_alone() {
        let mut f = tcp_frame();
        let orig = f.clone();
        assert_eq!(complete_l4(&mut f), L4Csum::Unchecked);
        assert_eq!(f, orig);
    }

    #[test]
    fn a_partial_tcp_checksum_is_completed_to_the_real_one() {
        let good = tcp_frame();
        let mut f = good.clone();
        make_partial(&mut f, 16);
        assert_ne!(f, good);
        assert_eq!(complete_l4(&mut f), L4Csum::Completed);
        assert_eq!(
            f, good,
            "the completed checksum is the one etherparse computes"
        );
    }

    #[test]
    fn a_partial_udp_checksum_is_completed_over_ipv6() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5353, 53);
        let mut good = Vec::new();
        b.write(&mut good, b"query").unwrap();
        let mut f = good.clone();
        let (l4, _, pseudo, _) = locate_l4(&f, 14).unwrap();
        f[l4 + 6..l4 + 8].copy_from_slice(&fold(pseudo).to_be_bytes());
        assert_eq!(complete_l4(&mut f), L4Csum::Completed);
        assert_eq!(f, good);
    }

    #[test]
    fn a_corrupt_checksum_is_reported_not_rewritten() {
        let mut f = tcp_frame();
        let n = f.len();
        f[n - 1] ^= 0xff;
        let orig = f.clone();
        assert_eq!(complete_l4(&mut f), L4Csum::Unchecked);
        assert_eq!(f, orig);
    }

    #[test]
    fn ethernet_padding_is_not_summed() {
        let good = tcp_frame();
        let mut f = good.clone();
        make_partial(&mut f, 16);
        f.extend_from_slice(&[0xaa; 6]);
        assert_eq!(complete_l4(&mut f), L4Csum::Completed);
        assert_eq!(&f[..good.len()], &good[..]);
    }

    #[test]
    fn short_and_odd_frames_never_panic() {
        let good = tcp_frame();
        for n in 0..good.len() {
            let mut f = good[..n].to_vec();
            let _ = complete_l4(&mut f);
        }
        assert_eq!(complete_l4(&mut [0u8; 3]), L4Csum::NotApplicable);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = complete_l4(&mut b);
        }
    }
}
