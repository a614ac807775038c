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

/// One's complement sum of `data` (big-endian 16-bit words, odd byte
/// padded), added to `acc`; the result is at most 0xffff and goes through
/// [`fold`] like any accumulator.
///
/// This is the hot loop of segmentation and GRO (every segment's TCP
/// checksum), so it reads 8 bytes at a time: the sum of 32-bit words folds
/// to the same 16-bit sum (2^16 = 1 modulo 2^16 - 1), and it is taken over
/// little-endian words and byte-swapped at the end, which RFC 1071 (section
/// 2(B), byte order independence) shows gives the big-endian sum, without a
/// swap per word.
pub fn sum(data: &[u8], acc: u32) -> u32 {
    let mut s: u64 = 0;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        // Two 32-bit halves, each below 2^32: `s` cannot overflow before
        // 2^31 words (16 GiB), far beyond any frame.
        s += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut rest = words.remainder().chunks_exact(2);
    for c in &mut rest {
        s += u64::from(u16::from_le_bytes([c[0], c[1]]));
    }
    if let [b] = rest.remainder() {
        // The padded word is [b, 0]: b is its low byte read little-endian.
        s += u64::from(*b);
    }
    let le = fold64(s) as u16;
    fold64(u64::from(le.swap_bytes()) + u64::from(acc))
}

/// Folds a 64-bit accumulator to 16 bits, end-around carry (nonzero stays
/// nonzero, as in [`fold`]).
#[inline]
fn fold64(mut s: u64) -> u32 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
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

    #[test]
    fn rfc1071_example_and_edges() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let v = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&v, 0), 0xddf2);
        assert_eq!(
            sum(&v[..7], 0),
            fold(0x0001 + 0xf203 + 0xf4f5 + 0xf600).into()
        );
        // A nonzero sum congruent to 0 stays 0xffff; only all zeros give 0.
        assert_eq!(sum(&[0xff; 64], 0), 0xffff);
        assert_eq!(sum(&[0; 64], 0), 0);
        assert_eq!(sum(&[], u32::MAX), fold(u32::MAX).into());
    }

    /// The plain RFC 1071 loop, word by word, that `sum` must equal.
    fn reference_sum(data: &[u8], acc: u32) -> u32 {
        let mut a = u64::from(acc);
        for c in data.chunks(2) {
            let hi = u64::from(c[0]) << 8;
            a += hi | c.get(1).map_or(0, |b| u64::from(*b));
        }
        while a > 0xffff {
            a = (a & 0xffff) + (a >> 16);
        }
        a as u32
    }

    proptest::proptest! {
        #[test]
        fn the_wide_sum_equals_the_word_by_word_one(
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            acc in proptest::num::u32::ANY,
        ) {
            proptest::prop_assert_eq!(sum(&b, acc), reference_sum(&b, acc));
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = complete_l4(&mut b);
        }
    }
}
