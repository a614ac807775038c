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
