//! The sans-io overlay core: a frame from a TAP or a datagram from the
//! underlay, the current [`Tables`] and the time go in; a [`Verdict`] comes
//! out. It reads no fd and no clock, so the whole overlay can be stepped in
//! memory (see `dataplane/tests/inmem.rs`).
//!
//! Call protocol (what [`super::path`], the per-packet pipeline, does):
//! - TAP side: read a frame, call [`Core::handle_frame`]; on `Unicast` or
//!   `Flood` prepend the VXLAN header (see [`crate::wire::vxlan`]) and send
//!   to the peer(s) with a source port chosen from `flow`; on `ArpReply`
//!   write the reply buffer back into the same TAP.
//! - Underlay side: receive a datagram, call [`Core::handle_datagram`]; on
//!   `Deliver` write `datagram[offset..]` into the TAP of network `net`.
//! - Every `Drop` is already counted; the pipeline only counts what fails
//!   in the OS (send and TAP write errors) and what it actually transmitted.

use std::net::Ipv4Addr;
use std::time::Instant;

use super::announce::{self, Announcements};
use super::fdb::Learn;
use super::guard;
use super::stats::{bump, DropReason};
use super::tables::{NetworkTable, Tables};
use crate::offload::csum::{self, L4Csum};
use crate::offload::gso;
use crate::wire::{arp, flow, vxlan, MacAddr};

/// Ethernet header without a VLAN tag.
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// What to do with one frame or datagram.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'t> {
    /// Encapsulate with `vni` and send to one peer.
    Unicast { peer: Ipv4Addr, vni: u32, flow: u32 },
    /// Encapsulate with `vni` and send a copy to each peer (head-end
    /// replication of broadcast, multicast and unknown unicast).
    Flood {
        peers: &'t [Ipv4Addr],
        vni: u32,
        flow: u32,
    },
    /// An ARP reply of `len` bytes was written into the reply buffer; write
    /// it back into the TAP the request came from.
    ArpReply { len: usize },
    /// Write `datagram[offset..]` (the inner frame) into network `net`'s TAP.
    Deliver { net: usize, offset: usize },
    /// `datagram[offset..]` is a TCP super-frame larger than the overlay
    /// MTU (a TSO sender whose segments no NIC cut): cut it with
    /// [`crate::offload::gso::segment_tcp`] at `mss` and write every piece into
    /// network `net`'s TAP.
    DeliverSegmented {
        net: usize,
        offset: usize,
        mss: usize,
    },
    /// Dropped and counted.
    Drop(DropReason),
}

/// The overlay core. It holds no state of its own: everything it reads or
/// counts hangs off the [`Tables`] snapshot it is given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Core;

/// Length of the Ethernet header of `frame` (with one 802.1Q tag, if any),
/// or `None` when the frame is too short for it.
fn eth_header_len(frame: &[u8]) -> Option<usize> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == ETHERTYPE_VLAN {
        (frame.len() >= ETH_HLEN + 4).then_some(ETH_HLEN + 4)
    } else {
        Some(ETH_HLEN)
    }
}

impl Core {
    /// A frame the local workloads sent into network `net`'s TAP.
    /// `reply` must hold at least [`arp::REPLY_LEN`] bytes.
    pub fn handle_frame<'t>(
        &self,
        tables: &'t Tables,
        net: usize,
        frame: &[u8],
        reply: &mut [u8],
        now: Instant,
    ) -> Verdict<'t> {
        let Some(n) = tables.networks.get(net) else {
            tables.global.drops.add(DropReason::UnknownVni);
            return Verdict::Drop(DropReason::UnknownVni);
        };
        let st = &n.stats;
        bump(&st.tap_rx_packets, 1);
        bump(&st.tap_rx_bytes, frame.len() as u64);
        let Some(hlen) = eth_header_len(frame) else {
            return drop(n, DropReason::Malformed);
        };
        if frame.len() - hlen > usize::from(n.mtu) {
            return drop(n, DropReason::Mtu);
        }
        if let Some(reason) = guard::check_tap(n, frame, hlen) {
            return drop(n, reason);
        }
        if let Some(a) = &n.announce {
            note_source(n, a, frame, hlen, now);
        }
        let dst = MacAddr::from_slice(&frame[0..6]);
        if dst.is_multicast() {
            if let Some(req) = arp::parse_request(frame) {
                if n.local.contains(&req.target_ip) {
                    return drop(n, DropReason::LocalTarget);
                }
                if let Some(mac) = n.arp.get(&req.target_ip) {
                    let len = arp::write_reply(&req, *mac, reply);
                    if len > 0 {
                        bump(&st.arp_answered, 1);
                        return Verdict::ArpReply { len };
                    }
                }
            }
            return flood(n, frame, now);
        }
        let peer = n
            .fdb
            .get(&dst)
            .copied()
            .or_else(|| n.learning.then(|| n.learned.lookup(dst, now)).flatten());
        match peer {
            Some(peer) => Verdict::Unicast {
                peer,
                vni: n.vni,
                flow: flow::flow_hash(frame),
            },
            None => flood(n, frame, now),
        }
    }

    /// A datagram that arrived on the underlay socket from `src`. An inner
    /// TCP/UDP checksum the sender left partial is completed in place (see
    /// [`crate::offload::csum`]).
    pub fn handle_datagram<'t>(
        &self,
        tables: &'t Tables,
        src: Ipv4Addr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Verdict<'t> {
        let g = &tables.global;
        bump(&g.udp_rx_packets, 1);
        // Unknown senders are refused before any byte of theirs is parsed.
        if !tables.is_member(src) {
            g.drops.add(DropReason::UnknownPeer);
            return Verdict::Drop(DropReason::UnknownPeer);
        }
        self.handle_vxlan(tables, src, datagram, now, false)
    }

    /// The VXLAN datagram a sealed one from `src` held, once opened (see
    /// [`crate::crypto`]): the sender is a member whose session proved it.
    pub fn handle_opened<'t>(
        &self,
        tables: &'t Tables,
        src: Ipv4Addr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Verdict<'t> {
        self.handle_vxlan(tables, src, datagram, now, true)
    }

    fn handle_vxlan<'t>(
        &self,
        tables: &'t Tables,
        src: Ipv4Addr,
        datagram: &mut [u8],
        now: Instant,
        sealed: bool,
    ) -> Verdict<'t> {
        let g = &tables.global;
        let packet = match vxlan::Packet::new_checked(&*datagram) {
            Ok(p) => p,
            Err(vxlan::Error::MissingIFlag) => {
                g.drops.add(DropReason::BadFlags);
                return Verdict::Drop(DropReason::BadFlags);
            }
            Err(_) => {
                g.drops.add(DropReason::Malformed);
                return Verdict::Drop(DropReason::Malformed);
            }
        };
        let Some(net) = tables.network_by_vni(packet.vni()) else {
            g.drops.add(DropReason::UnknownVni);
            return Verdict::Drop(DropReason::UnknownVni);
        };
        let n = &tables.networks[net];
        let Some(peer) = n.peer_index(src) else {
            // A member node, but not of this network: it must not inject
            // frames here (Docker's CVE-2023-28840 class of bug).
            return drop(n, DropReason::UnknownPeer);
        };
        if n.encrypted && !sealed {
            // Whoever sent it: a member's address proves nothing on an
            // untrusted underlay (CVE-2023-28841: plaintext injected into
            // an encrypted overlay).
            return drop(n, DropReason::Plaintext);
        }
        let datagram_len = datagram.len() as u64;
        let inner = &mut datagram[vxlan::HEADER_LEN..];
        let Some(hlen) = eth_header_len(inner) else {
            return drop(n, DropReason::Malformed);
        };
        if let Some(reason) = guard::check_underlay(n, inner, src) {
            return drop(n, reason);
        }
        let st = &n.stats;
        if inner.len() - hlen > usize::from(n.mtu) {
            return match gso::mss_for(inner, usize::from(n.mtu)) {
                Some(mss) => {
                    count_rx(n, peer, datagram_len);
                    bump(&st.gso_segmented, 1);
                    Verdict::DeliverSegmented {
                        net,
                        offset: vxlan::HEADER_LEN,
                        mss,
                    }
                }
                None => drop(n, DropReason::Mtu),
            };
        }
        count_rx(n, peer, datagram_len);
        if n.learning {
            let smac = MacAddr::from_slice(&inner[6..12]);
            if !smac.is_multicast() && !n.fdb.contains_key(&smac) {
                match n.learned.learn(smac, src, now) {
                    Learn::Added => bump(&st.learned, 1),
                    Learn::AddedEvicting(n) => {
                        bump(&st.learned, 1);
                        bump(&st.fdb_evicted, n);
                    }
                    Learn::Full => bump(&st.fdb_full, 1),
                    Learn::Refreshed => {}
                }
            }
        }
        if csum::complete_l4(inner) == L4Csum::Completed {
            bump(&st.csum_completed, 1);
        }
        Verdict::Deliver {
            net,
            offset: vxlan::HEADER_LEN,
        }
    }
}

/// Records the source of a local workload's frame for announcement: a new
/// address in the subnet that is no endpoint yet (see [`announce`]).
fn note_source(n: &NetworkTable, a: &Announcements, frame: &[u8], hlen: usize, now: Instant) {
    let Some((ip, mac)) = announce::source(frame, hlen) else {
        return;
    };
    if mac.is_multicast() || mac == n.tap_mac || !a.candidate(ip) {
        return;
    }
    if a.refresh(ip, mac, now) || n.arp.contains_key(&ip) {
        return;
    }
    match a.add(ip, mac, now) {
        announce::Add::Added => bump(&n.stats.announced, 1),
        announce::Add::Full | announce::Add::RateLimited => bump(&n.stats.announce_refused, 1),
    }
}

fn count_rx(n: &NetworkTable, peer: usize, bytes: u64) {
    bump(&n.stats.vxlan_rx_packets, 1);
    bump(&n.stats.vxlan_rx_bytes, bytes);
    if let Some(p) = n.peer_stats.get(peer) {
        bump(&p.rx_packets, 1);
        bump(&p.rx_bytes, bytes);
    }
}

fn drop<'t>(n: &NetworkTable, reason: DropReason) -> Verdict<'t> {
    n.stats.drops.add(reason);
    Verdict::Drop(reason)
}

fn flood<'t>(n: &'t NetworkTable, frame: &[u8], now: Instant) -> Verdict<'t> {
    if n.peers.is_empty() {
        return drop(n, DropReason::NoPeers);
    }
    if !n.flood.allow(now) {
        return drop(n, DropReason::FloodRate);
    }
    bump(&n.stats.flooded_frames, 1);
    bump(&n.stats.flood_copies, n.peers.len() as u64);
    Verdict::Flood {
        peers: &n.peers,
        vni: n.vni,
        flow: flow::flow_hash(frame),
    }
}
