//! The outer UDP source port, chosen from a hash of the inner flow, as the
//! kernel's `udp_flow_src_port()` (include/net/udp.h) does for its `vxlan`
//! device: every packet of one inner flow leaves from the same source port
//! (no reordering), different flows spread over the underlay's ECMP paths
//! and the receiver's RSS queues (RFC 7348 §5, "Source Port").
//!
//! # The hash
//!
//! [`flow_hash`] is fixed and versioned by this documentation, so nodes
//! built by different compilers (or in different languages) agree on it:
//! MurmurHash3 x86_32 (Austin Appleby's public domain reference,
//! little-endian 4-byte blocks) with seed [`SEED`] over a key of at most 40
//! bytes built from the inner frame:
//!
//! | frame                                      | key bytes                                              |
//! |--------------------------------------------|--------------------------------------------------------|
//! | IPv4, TCP/UDP, not a fragment              | `4, proto, 0, 0`, src addr, dst addr, src port, dst port |
//! | IPv4, other protocol or a fragment         | `4, proto, 0, 0`, src addr, dst addr                    |
//! | IPv6, next header TCP/UDP                  | `6, proto, 0, 0`, src addr, dst addr, src port, dst port |
//! | IPv6, other next header (incl. extensions) | `6, proto, 0, 0`, src addr, dst addr                    |
//! | anything else                              | `0, 0, ethertype (BE)`, src MAC, dst MAC                |
//! | shorter than an Ethernet header            | the frame's bytes                                      |
//!
//! Addresses and ports are in network byte order, as on the wire. One
//! 802.1Q/802.1ad tag in front of IPv4/IPv6 is skipped ("ethertype" in the
//! last row is the outer one). IPv4 fragments (MF set or a non-zero offset)
//! hash without ports, so all fragments of one datagram stay together; an
//! IPv6 fragment header shows up as next header 44 and so also hashes
//! without ports. A frame whose IP header does not parse, or whose L4
//! header is cut short, falls back to fewer fields; nothing here panics.
//!
//! This is not the kernel's hash (`skb_get_hash()` is siphash keyed with a
//! per-boot random secret), so byte-for-byte equal source ports are neither
//! possible nor needed: receivers do not look at the source port.

/// The MurmurHash3 seed: the bytes `"vxms"` read big-endian.
pub const SEED: u32 = 0x7678_6d73;

/// Linux's default `net.ipv4.ip_local_port_range`, the range
/// `udp_flow_src_port()` falls back to when `min >= max` (the `vxlan`
/// device's default: no `srcport MIN MAX` given).
pub const LOCAL_PORT_MIN: u16 = 32768;
/// Upper end of Linux's default `net.ipv4.ip_local_port_range`.
pub const LOCAL_PORT_MAX: u16 = 60999;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const KEY_MAX: usize = 4 + 16 + 16 + 4;

/// Hash of the inner flow of an Ethernet `frame`; see the module docs for
/// the exact definition. Total: any byte slice gives a value.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut key = [0u8; KEY_MAX];
    let len = flow_key(frame, &mut key);
    murmur3_32(&key[..len], SEED)
}

/// Fills `key` as tabled in the module docs and returns its length.
fn flow_key(frame: &[u8], key: &mut [u8; KEY_MAX]) -> usize {
    let Ok(eth) = etherparse::Ethernet2Slice::from_slice_without_fcs(frame) else {
        // Shorter than an Ethernet header: hash whatever is there.
        let n = frame.len().min(KEY_MAX);
        key[..n].copy_from_slice(&frame[..n]);
        return n;
    };
    let outer_type = eth.ether_type().0;
    let (ether_type, l3) = match outer_type {
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => match frame.get(ETH_HLEN..ETH_HLEN + VLAN_HLEN) {
            Some(tag) => (
                u16::from_be_bytes([tag[2], tag[3]]),
                &frame[ETH_HLEN + VLAN_HLEN..],
            ),
            None => (outer_type, &[][..]),
        },
        t => (t, eth.payload_slice()),
    };
    let ip_len = match ether_type {
        ETHERTYPE_IPV4 => ipv4_key(l3, key),
        ETHERTYPE_IPV6 => ipv6_key(l3, key),
        _ => None,
    };
    if let Some(n) = ip_len {
        return n;
    }
    key[..2].fill(0);
    key[2..4].copy_from_slice(&outer_type.to_be_bytes());
    key[4..10].copy_from_slice(&eth.source());
    key[10..16].copy_from_slice(&eth.destination());
    16
}

fn ipv4_key(l3: &[u8], key: &mut [u8; KEY_MAX]) -> Option<usize> {
    let ip = etherparse::Ipv4HeaderSlice::from_slice(l3).ok()?;
    let proto = ip.protocol().0;
    key[..4].copy_from_slice(&[4, proto, 0, 0]);
    key[4..8].copy_from_slice(&ip.source());
    key[8..12].copy_from_slice(&ip.destination());
    let fragment = ip.is_fragmenting_payload();
    let l4 = l3.get(ip.slice().len()..).unwrap_or(&[]);
    Some(12 + ports(proto, fragment, l4, &mut key[12..16]))
}

fn ipv6_key(l3: &[u8], key: &mut [u8; KEY_MAX]) -> Option<usize> {
    let ip = etherparse::Ipv6HeaderSlice::from_slice(l3).ok()?;
    let proto = ip.next_header().0;
    key[..4].copy_from_slice(&[6, proto, 0, 0]);
    key[4..20].copy_from_slice(&ip.source());
    key[20..36].copy_from_slice(&ip.destination());
    let l4 = l3.get(ip.slice().len()..).unwrap_or(&[]);
    Some(36 + ports(proto, false, l4, &mut key[36..40]))
}

/// Copies the 4 port bytes of a TCP/UDP header into `out`; returns 4, or 0
/// when there are no ports to use.
fn ports(proto: u8, fragment: bool, l4: &[u8], out: &mut [u8]) -> usize {
    if fragment || !(proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        return 0;
    }
    match l4.get(..4) {
        Some(p) => {
            out.copy_from_slice(p);
            4
        }
        None => 0,
    }
}

/// MurmurHash3 x86_32 (reference: `MurmurHash3_x86_32` in Austin Appleby's
/// SMHasher `MurmurHash3.cpp`, public domain).
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, &byte) in tail.iter().enumerate() {
            k |= u32::from(byte) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    fmix32(h)
}

/// MurmurHash3's 32-bit finalizer: every input bit affects every output bit.
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Maps `hash` uniformly onto `0..n` without a division: the kernel's
/// `reciprocal_scale()` (include/linux/kernel.h). Returns 0 when `n` is 0.
pub const fn scale(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// The outer UDP source port for a flow hash, exactly as the kernel's
/// `udp_flow_src_port(net, skb, min, max, use_eth)` maps `skb_get_hash()`:
///
/// ```c
/// if (min >= max)
///         inet_get_local_port_range(net, &min, &max);
/// hash ^= hash << 16;
/// return htons((((u64) hash * (max - min)) >> 32) + min);
/// ```
///
/// So the result lies in `min..max` (`max` itself is never chosen), and
/// when `min >= max` the range is Linux's default local port range
/// [`LOCAL_PORT_MIN`]..[`LOCAL_PORT_MAX`] (we cannot read the sysctl here:
/// no I/O). The fold `hash ^= hash << 16` mixes the low half into the high
/// half, the only bits the scaling keeps. Returned in host byte order.
pub const fn src_port(hash: u32, min: u16, max: u16) -> u16 {
    let (min, max) = if min >= max {
        (LOCAL_PORT_MIN, LOCAL_PORT_MAX)
    } else {
        (min, max)
    };
    let hash = hash ^ (hash << 16);
    scale(hash, (max - min) as u32) as u16 + min
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vxlan::testdata::{
        KERNEL_ARP_REQUEST_DATAGRAM, KERNEL_ICMP_DATAGRAM, OUTER_LEN,
    };
    use proptest::prelude::*;

    const INNER: usize = OUTER_LEN + crate::wire::vxlan::HEADER_LEN;

    /// Inner frame of the kernel-captured ICMP echo 10.0.9.1 -> 10.0.9.2
    /// (`testdata/capture-kernel-vxlan.sh`).
    fn kernel_icmp() -> &'static [u8] {
        &KERNEL_ICMP_DATAGRAM[INNER..]
    }

    /// Inner frame of the kernel-captured ARP request (same script).
    fn kernel_arp() -> &'static [u8] {
        &KERNEL_ARP_REQUEST_DATAGRAM[INNER..]
    }

    fn udp4(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0x42, 10, 0, 0, 1], [2, 0x42, 10, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(src_port, dst_port)
            .write(&mut v, b"payload")
            .unwrap();
        v
    }

    fn tcp6(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 1;
        let mut b = a;
        b[15] = 2;
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0x42, 10, 0, 0, 1], [2, 0x42, 10, 0, 0, 2])
            .ipv6(a, b, 64)
            .tcp(src_port, dst_port, 1, 1024)
            .write(&mut v, b"payload")
            .unwrap();
        v
    }

    /// `frame` with an 802.1Q tag (VLAN 100) inserted after the MACs.
    fn tagged(frame: &[u8]) -> Vec<u8> {
        let mut v = frame[..12].to_vec();
        v.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        v.extend_from_slice(&frame[12..]);
        v
    }

    /// Published MurmurHash3 x86_32 vectors (SMHasher's reference
    /// implementation; the same values are listed on Wikipedia's
    /// MurmurHash page and in most ports' test suites).
    #[test]
    fn murmur3_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"abc", 0), 0xb3dd_93fa);
        assert_eq!(murmur3_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
    }

    /// Golden values: computed independently with a Python transcription of
    /// the reference MurmurHash3 over the keys tabled in the module docs.
    /// Changing any of them changes every node's source ports: don't.
    #[test]
    fn golden_flow_hashes() {
        // key 04 01 00 00 | 10.0.9.1 | 10.0.9.2 (ICMP: no ports)
        assert_eq!(flow_hash(kernel_icmp()), 0x0745_89e0);
        // key 00 00 08 06 | 02:42:0a:00:09:01 | ff:ff:ff:ff:ff:ff
        assert_eq!(flow_hash(kernel_arp()), 0xe70b_f686);
        // key 04 11 00 00 | 10.0.0.1 | 10.0.0.2 | 40000 | 53
        assert_eq!(flow_hash(&udp4(40000, 53)), 0x2903_3bc5);
        // key 06 06 00 00 | fd00::1 | fd00::2 | 40000 | 443
        assert_eq!(flow_hash(&tcp6(40000, 443)), 0xa229_cadc);
    }

    #[test]
    fn one_vlan_tag_is_looked_through() {
        assert_eq!(flow_hash(&tagged(&udp4(40000, 53))), 0x2903_3bc5);
        assert_eq!(flow_hash(&tagged(&tcp6(40000, 443))), 0xa229_cadc);
        assert_eq!(flow_hash(&tagged(kernel_icmp())), 0x0745_89e0);
    }

    #[test]
    fn ports_are_part_of_the_flow() {
        let mut seen: Vec<u32> = (1..=2000).map(|p| flow_hash(&udp4(p, 4789))).collect();
        seen.extend((1..=2000).map(|p| flow_hash(&tcp6(40000, p))));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4000);
        assert_ne!(flow_hash(&udp4(1, 2)), flow_hash(&udp4(2, 1)));
    }

    #[test]
    fn fragments_hash_without_ports() {
        let set_mf = |mut f: Vec<u8>| {
            f[14 + 6] |= 0x20;
            f
        };
        let a = set_mf(udp4(1000, 53));
        let b = set_mf(udp4(2000, 53));
        assert_eq!(flow_hash(&a), flow_hash(&b));
        assert_ne!(flow_hash(&a), flow_hash(&udp4(1000, 53)));
        // A later fragment (offset 185 * 8) starts with payload, not ports.
        let mut c = udp4(3000, 53);
        c[14 + 6..14 + 8].copy_from_slice(&185u16.to_be_bytes());
        assert_eq!(flow_hash(&c), flow_hash(&a));
    }

    #[test]
    fn spread_over_64_buckets() {
        const N: u32 = 64_000;
        let mut buckets = [0u32; 64];
        for i in 0..N {
            let frame = udp4(1024 + (i % 60_000) as u16, 4789 + (i / 60_000) as u16);
            buckets[scale(flow_hash(&frame), 64) as usize] += 1;
        }
        // Mean 1000, binomial sd ~31: +-15% is a ~5 sigma band.
        for (i, &n) in buckets.iter().enumerate() {
            assert!((850..=1150).contains(&n), "bucket {i}: {n}");
        }
    }

    #[test]
    fn scale_is_reciprocal_scale() {
        assert_eq!(scale(0, 64), 0);
        assert_eq!(scale(u32::MAX, 64), 63);
        assert_eq!(scale(0x8000_0000, 64), 32);
        assert_eq!(scale(u32::MAX, 1), 0);
        assert_eq!(scale(u32::MAX, 0), 0);
        assert_eq!(scale(u32::MAX, u32::MAX), u32::MAX - 1);
    }

    /// Worked by hand from `udp_flow_src_port()`:
    /// `hash ^= hash << 16; port = ((u64)hash * (max - min) >> 32) + min`.
    #[test]
    fn src_port_matches_udp_flow_src_port() {
        // 1..65535: 0x80000000 << 16 is 0, so 0x80000000 * 65534 >> 32 = 32767.
        assert_eq!(src_port(0x8000_0000, 1, 65535), 32768);
        // 0xffffffff folds to 0x0000ffff: 0xffff * 65534 >> 32 = 0.
        assert_eq!(src_port(0xffff_ffff, 1, 65535), 1);
        assert_eq!(src_port(0, 1, 65535), 1);
        // min >= max: Linux's default local port range 32768..60999, where
        // 0xffff0000 * 28231 >> 32 = 28230; 60999 itself is unreachable.
        assert_eq!(src_port(0, 0, 0), 32768);
        assert_eq!(src_port(0xffff_0000, 0, 0), 60998);
        assert_eq!(src_port(0xffff_0000, 5000, 5000), 60998);
        // A one-port range.
        assert_eq!(src_port(0xdead_beef, 4000, 4001), 4000);
    }

    #[test]
    fn no_panic_on_any_prefix() {
        let frames = [
            kernel_icmp().to_vec(),
            kernel_arp().to_vec(),
            udp4(40000, 53),
            tcp6(40000, 443),
            tagged(&udp4(40000, 53)),
            tagged(&tcp6(40000, 443)),
        ];
        for f in &frames {
            for n in 0..=f.len() {
                let _ = flow_hash(&f[..n]);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = flow_hash(&bytes);
        }

        /// Random bytes behind a plausible Ethernet header, so the IPv4,
        /// IPv6 and VLAN paths see garbage too.
        #[test]
        fn arbitrary_l3_never_panics(
            ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806]),
            inner in prop::sample::select(vec![0x0800u16, 0x86dd]),
            first in prop::sample::select(vec![0x45u8, 0x46, 0x4f, 0x60, 0x00]),
            rest in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&ethertype.to_be_bytes());
            if ethertype == 0x8100 || ethertype == 0x88a8 {
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&inner.to_be_bytes());
            }
            f.push(first);
            f.extend_from_slice(&rest);
            let _ = flow_hash(&f);
        }

        #[test]
        fn src_port_stays_in_range(hash in any::<u32>(), min in any::<u16>(), max in any::<u16>()) {
            let p = src_port(hash, min, max);
            if min < max {
                prop_assert!(min <= p && p < max);
            } else {
                prop_assert!((LOCAL_PORT_MIN..LOCAL_PORT_MAX).contains(&p));
            }
        }
    }
}
