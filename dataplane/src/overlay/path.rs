//! The per-packet pipeline around the [`Core`], in both directions, with
//! its offloads. Pure like the core: buffers go in, and what must leave
//! goes out through the two small traits a driver implements, [`Taps`] and
//! [`Transmitter`] (the worker over real devices, the in-memory test over
//! vectors). Nothing here touches an fd or a clock.
//!
//! - [`TxPath`], TAP -> underlay: a read from a TAP (behind a virtio-net
//!   header when the TAP has them) has its partial checksum finished or is
//!   cut into segments (a TSO or USO super-frame), each segment goes
//!   through [`Core::handle_frame`], and consecutive datagrams to the same
//!   peer and flow are laid back to back into one [`Transmit`] (one send
//!   with UDP GSO; one by one where the socket has none). ARP replies go
//!   back into the TAP.
//! - [`RxPath`], underlay -> TAP: a read from the underlay (a run of
//!   datagrams with UDP GRO) goes datagram by datagram through
//!   [`Core::handle_datagram`]; what is delivered is joined with the
//!   segments before it (GRO) into one TAP write with a virtio-net header,
//!   or written as it came (a TAP without offloads gets plain frames, a
//!   TCP super-frame cut into segments). A UDP GSO frame the TAP refuses is
//!   cut and written datagram by datagram, and the TAP gets no more.
//!
//! Call protocol: a driver calls `frame`/`read` for every read of a turn,
//! then `flush` once at its end (and before the tables change), so nothing
//! is held between turns and nothing is reordered. Every drop is counted
//! here, send and TAP write errors included; the functions hand the drop
//! reason back too, for tests.

use std::net::Ipv4Addr;
use std::time::Instant;

use super::core::{Core, Verdict};
use super::stats::{bump, DropReason, NetStats};
use super::tables::{NetworkTable, Tables};
use crate::crypto::wire::{self as sealed, Kind, DATA_HEADER_LEN, TAG_LEN};
use crate::offload::{gro, gso, virtio};
use crate::wire::{arp, vxlan};

/// Largest frame or datagram the pipeline handles.
pub const BUF_LEN: usize = 65536;
/// Room for the VXLAN header in front of a frame.
const HEADROOM: usize = vxlan::HEADER_LEN;
/// Largest payload of one UDP GSO send (the kernel's limit is 64 KiB of
/// UDP payload in 64 segments).
const GSO_MAX_BYTES: usize = 65_000;
const GSO_MAX_SEGS: usize = 64;

/// Datagrams for one peer, after quinn-proto's `Transmit`: `contents` holds
/// them back to back, each `segment_size` long but possibly the last
/// (one datagram when `None`).
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub peer: Ipv4Addr,
    /// Flow hash of the inner frames: picks the UDP source port.
    pub flow: u32,
    pub contents: &'a [u8],
    pub segment_size: Option<usize>,
}

impl Transmit<'_> {
    /// How many datagrams it holds.
    pub fn segments(&self) -> usize {
        self.segment_size
            .map_or(1, |s| self.contents.len().div_ceil(s.max(1)))
    }
}

/// Why a [`Transmit`] did not leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The socket takes no run of datagrams in one send (no UDP GSO):
    /// nothing left; send them one by one.
    NoGso,
    /// The send failed.
    Failed,
}

/// What a TAP takes, beyond plain frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOffloads {
    /// Frames carry a virtio-net header both ways (TSO, GRO).
    pub vnet_hdr: bool,
    /// Runs of UDP datagrams may be written as one UDP GSO frame.
    pub uso_write: bool,
}

/// Why a TAP write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapError {
    /// The kernel does not take this kind of frame (`EINVAL`: a UDP GSO
    /// frame before Linux 6.2).
    Refused,
    Failed,
}

/// The node's TAP devices, by VNI.
pub trait Taps {
    /// What network `vni`'s TAP takes; `None` when the node has none.
    fn offloads(&self, vni: u32) -> Option<TapOffloads>;
    /// Writes one frame (behind a virtio-net header when the TAP has them).
    fn write(&mut self, vni: u32, frame: &[u8]) -> Result<(), TapError>;
    /// The TAP refused a UDP GSO frame: it gets no more of them.
    fn refuse_uso_write(&mut self, vni: u32);
}

/// The underlay socket.
pub trait Transmitter {
    fn transmit(&mut self, t: &Transmit<'_>) -> Result<(), SendError>;
}

/// TAP -> underlay: the buffers of one lane.
pub struct TxPath {
    batch: Batch,
    /// One segment at a time when a super-frame is cut.
    scratch: Vec<u8>,
    /// An ARP reply behind an empty virtio-net header (its first bytes,
    /// never written).
    reply: [u8; virtio::LEN + arp::REPLY_LEN],
}

/// Encapsulated frames to one peer, from one flow and one network, laid
/// out back to back for one UDP GSO send: every datagram but the last of
/// the same size, as UDP_SEGMENT requires.
struct Batch {
    buf: Vec<u8>,
    /// Length of every datagram but possibly the last.
    seg: usize,
    count: usize,
    /// (network, peer, flow).
    dest: Option<(usize, Ipv4Addr, u32)>,
    /// One flooded frame, encapsulated once and sent to every peer.
    flood: Vec<u8>,
    /// A copy of it sealed for one peer (encrypted networks).
    sealed: Vec<u8>,
}

impl Default for TxPath {
    fn default() -> Self {
        TxPath {
            batch: Batch {
                buf: Vec::with_capacity(BUF_LEN + 2048),
                seg: 0,
                count: 0,
                dest: None,
                flood: Vec::with_capacity(BUF_LEN),
                sealed: Vec::with_capacity(BUF_LEN + sealed::DATA_OVERHEAD),
            },
            scratch: vec![0u8; BUF_LEN],
            reply: [0u8; virtio::LEN + arp::REPLY_LEN],
        }
    }
}

impl TxPath {
    /// One read from network `net`'s TAP (`net` an index into
    /// `tables.networks`): the frame, behind a virtio-net header when the
    /// TAP has them. Returns the drop reason when it, or a segment cut
    /// from it, was dropped.
    pub fn frame(
        &mut self,
        core: &Core,
        tables: &Tables,
        net: usize,
        read: &mut [u8],
        now: Instant,
        io: &mut (impl Taps + Transmitter),
    ) -> Option<DropReason> {
        let Some(nt) = tables.networks.get(net) else {
            tables.global.drops.add(DropReason::UnknownVni);
            return Some(DropReason::UnknownVni);
        };
        let vnet = io_offloads(io, nt).vnet_hdr;
        let (batch, reply) = (&mut self.batch, &mut self.reply);
        let mut out = Out {
            core,
            tables,
            net,
            now,
            reply,
            io,
        };
        if !vnet {
            return batch.push(&mut out, read);
        }
        let Some(h) = virtio::Header::parse(read) else {
            return fail(&nt.stats, DropReason::Malformed).err();
        };
        let frame = &mut read[virtio::LEN..];
        match h.gso() {
            virtio::GSO_NONE => {
                let (s, o) = (usize::from(h.csum_start), usize::from(h.csum_offset));
                if h.flags & virtio::F_NEEDS_CSUM != 0 && !virtio::finish_csum(frame, s, o) {
                    // Offsets outside the frame: its checksum cannot be
                    // finished, and a peer would get it wrong.
                    return fail(&nt.stats, DropReason::Malformed).err();
                }
                batch.push(&mut out, frame)
            }
            gso_type @ (virtio::GSO_TCPV4 | virtio::GSO_TCPV6 | virtio::GSO_UDP_L4) => {
                // A TSO or USO super-frame: cut it here; the pieces queue
                // up for one UDP GSO send to their peer.
                let mss = usize::from(h.gso_size);
                let mut dropped = None;
                let emit = |seg: &[u8]| {
                    if let Some(r) = batch.push(&mut out, seg) {
                        dropped = Some(r);
                    }
                };
                let cut = if gso_type == virtio::GSO_UDP_L4 {
                    gso::segment_udp(frame, mss, &mut self.scratch, emit)
                } else {
                    gso::segment_tcp(frame, mss, &mut self.scratch, emit)
                };
                match cut {
                    Ok(_) => dropped,
                    Err(_) => fail(&nt.stats, DropReason::Malformed).err(),
                }
            }
            _ => fail(&nt.stats, DropReason::Malformed).err(),
        }
    }

    /// Sends what is queued: at the end of every turn.
    pub fn flush(&mut self, tables: &Tables, io: &mut impl Transmitter) {
        self.batch.flush(tables, io);
    }
}

/// What one read on the TAP side works with.
struct Out<'a, 'r, I> {
    core: &'a Core,
    tables: &'a Tables,
    net: usize,
    now: Instant,
    reply: &'r mut [u8; virtio::LEN + arp::REPLY_LEN],
    io: &'r mut I,
}

fn io_offloads(io: &impl Taps, nt: &NetworkTable) -> TapOffloads {
    io.offloads(nt.vni).unwrap_or_default()
}

impl Batch {
    /// Runs one frame through the core and queues, sends or floods it.
    fn push<I: Taps + Transmitter>(
        &mut self,
        o: &mut Out<'_, '_, I>,
        frame: &[u8],
    ) -> Option<DropReason> {
        let (tables, net) = (o.tables, o.net);
        let nt = &tables.networks[net];
        let reply = &mut o.reply[virtio::LEN..];
        match o.core.handle_frame(tables, net, frame, reply, o.now) {
            Verdict::Unicast { peer, vni, flow } => {
                // An encrypted network sends only what a valid session
                // seals (fail closed: no session, nothing sent).
                let sessions = nt.encrypted.then(|| tables.crypto.sessions.load());
                let key = match &sessions {
                    Some(s) => match s.sender(peer, o.now) {
                        Some(k) => Some(k),
                        None => return fail(&nt.stats, DropReason::NoSession).err(),
                    },
                    None => None,
                };
                let lead = if key.is_some() { DATA_HEADER_LEN } else { 0 };
                let tail = if key.is_some() { TAG_LEN } else { 0 };
                let len = lead + HEADROOM + frame.len() + tail;
                let fits = self.dest == Some((net, peer, flow))
                    && len <= self.seg
                    && self.buf.len() == self.count * self.seg
                    && self.buf.len() + len <= GSO_MAX_BYTES
                    && self.count < GSO_MAX_SEGS;
                if !fits {
                    self.flush(tables, o.io);
                    self.dest = Some((net, peer, flow));
                    self.seg = len;
                }
                let at = self.buf.len();
                self.buf.resize(at + len, 0);
                let body = at + lead;
                vxlan::write_header(&mut self.buf[body..body + HEADROOM], vni);
                self.buf[body + HEADROOM..at + len - tail].copy_from_slice(frame);
                if let Some(k) = key {
                    if !k.seal(&mut self.buf[at..]) {
                        self.buf.truncate(at);
                        if self.count == 0 {
                            self.dest = None;
                        }
                        return fail(&nt.stats, DropReason::NoSession).err();
                    }
                }
                self.count += 1;
                None
            }
            Verdict::Flood { peers, vni, flow } => {
                self.flush(tables, o.io);
                self.flood.clear();
                self.flood.resize(HEADROOM + frame.len(), 0);
                vxlan::write_header(&mut self.flood[..HEADROOM], vni);
                self.flood[HEADROOM..].copy_from_slice(frame);
                let mut dropped = None;
                let sessions = nt.encrypted.then(|| tables.crypto.sessions.load());
                for (i, peer) in peers.iter().enumerate() {
                    let contents: &[u8] = match &sessions {
                        None => &self.flood,
                        Some(s) => {
                            // One copy sealed for each peer, with its key.
                            let d = &mut self.sealed;
                            d.clear();
                            d.resize(DATA_HEADER_LEN, 0);
                            d.extend_from_slice(&self.flood);
                            d.resize(d.len() + TAG_LEN, 0);
                            if !s.sender(*peer, o.now).is_some_and(|k| k.seal(d)) {
                                nt.stats.drops.add(DropReason::NoSession);
                                dropped = Some(DropReason::NoSession);
                                continue;
                            }
                            &self.sealed
                        }
                    };
                    let t = Transmit {
                        peer: *peer,
                        flow,
                        contents,
                        segment_size: None,
                    };
                    if !send(o.io, nt, Some(i), &t) {
                        dropped = Some(DropReason::SendError);
                    }
                }
                dropped
            }
            Verdict::ArpReply { len } => {
                let lead = if io_offloads(&*o.io, nt).vnet_hdr {
                    0
                } else {
                    virtio::LEN
                };
                let frame = &o.reply[lead..virtio::LEN + len];
                write_tap(o.io, nt, frame).err()
            }
            Verdict::Drop(r) => Some(r),
            Verdict::Deliver { .. } | Verdict::DeliverSegmented { .. } => None,
        }
    }

    /// Sends what is queued, datagram by datagram where the socket has no
    /// UDP GSO (up to the first that fails).
    fn flush(&mut self, tables: &Tables, io: &mut impl Transmitter) {
        if let Some((net, peer, flow)) = self.dest.take() {
            let nt = &tables.networks[net];
            let t = Transmit {
                peer,
                flow,
                contents: &self.buf,
                segment_size: Some(self.seg),
            };
            match io.transmit(&t) {
                Ok(()) => count_tx(nt, nt.peer_index(peer), self.count, self.buf.len()),
                Err(SendError::NoGso) => {
                    for d in self.buf.chunks(self.seg.max(1)) {
                        let one = Transmit {
                            contents: d,
                            segment_size: None,
                            ..t
                        };
                        if !send(io, nt, nt.peer_index(peer), &one) {
                            break;
                        }
                    }
                }
                Err(SendError::Failed) => nt.stats.drops.add(DropReason::SendError),
            }
        }
        self.buf.clear();
        self.count = 0;
    }
}

/// Sends one datagram, counting it (against peer `peer` of the network
/// too) or its failure.
fn send(
    io: &mut impl Transmitter,
    nt: &NetworkTable,
    peer: Option<usize>,
    t: &Transmit<'_>,
) -> bool {
    match io.transmit(t) {
        Ok(()) => {
            count_tx(nt, peer, 1, t.contents.len());
            true
        }
        Err(_) => {
            nt.stats.drops.add(DropReason::SendError);
            false
        }
    }
}

fn count_tx(nt: &NetworkTable, peer: Option<usize>, packets: usize, bytes: usize) {
    bump(&nt.stats.vxlan_tx_packets, packets as u64);
    bump(&nt.stats.vxlan_tx_bytes, bytes as u64);
    if let Some(p) = peer.and_then(|i| nt.peer_stats.get(i)) {
        bump(&p.tx_packets, packets as u64);
        bump(&p.tx_bytes, bytes as u64);
    }
}

/// Counts a drop and hands its reason back.
fn fail(stats: &NetStats, reason: DropReason) -> Result<(), DropReason> {
    stats.drops.add(reason);
    Err(reason)
}

/// Writes one frame into network `nt`'s TAP, counting it or its drop.
fn write_tap(io: &mut impl Taps, nt: &NetworkTable, frame: &[u8]) -> Result<(), DropReason> {
    match io.write(nt.vni, frame) {
        Ok(()) => {
            bump(&nt.stats.tap_tx_packets, 1);
            bump(&nt.stats.tap_tx_bytes, frame.len() as u64);
            Ok(())
        }
        Err(_) => {
            nt.stats.drops.add(DropReason::TapError);
            Err(DropReason::TapError)
        }
    }
}

/// Writes `frame` behind virtio-net header `h`, built in `single`.
fn write_with(
    single: &mut [u8],
    io: &mut impl Taps,
    nt: &NetworkTable,
    h: virtio::Header,
    frame: &[u8],
) -> Result<(), DropReason> {
    let len = virtio::LEN + frame.len();
    if len > single.len() {
        nt.stats.drops.add(DropReason::Mtu);
        return Err(DropReason::Mtu);
    }
    h.emit(&mut single[..virtio::LEN]);
    single[virtio::LEN..len].copy_from_slice(frame);
    write_tap(io, nt, &single[..len])
}

/// Underlay -> TAPs: the buffers of one lane.
pub struct RxPath {
    /// One segment at a time when a super-frame is cut.
    seg: Vec<u8>,
    /// A frame with a virtio-net header put in front.
    single: Vec<u8>,
    gro: gro::Gro,
    /// The network whose TAP the frame held in `gro` goes to (a run never
    /// spans two networks).
    gro_to: Option<usize>,
}

impl Default for RxPath {
    fn default() -> Self {
        RxPath {
            seg: vec![0u8; BUF_LEN],
            single: vec![0u8; BUF_LEN + virtio::LEN],
            gro: gro::Gro::default(),
            gro_to: None,
        }
    }
}

impl RxPath {
    /// One read of the underlay socket from `src`: one datagram, or with
    /// UDP GRO a run of them, each `stride` bytes long but the last.
    /// Returns the drop reason of the last datagram dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &mut self,
        core: &Core,
        tables: &Tables,
        src: Ipv4Addr,
        buf: &mut [u8],
        stride: Option<usize>,
        now: Instant,
        io: &mut impl Taps,
    ) -> Option<DropReason> {
        let stride = stride.unwrap_or(buf.len()).max(1);
        let mut dropped = None;
        for d in buf.chunks_mut(stride) {
            if let Some(r) = self.datagram(core, tables, src, d, now, io) {
                dropped = Some(r);
            }
        }
        dropped
    }

    /// One datagram from `src`: a plain VXLAN one, or one of the messages
    /// of encrypted networks (see [`crate::crypto::wire`]): a handshake
    /// message goes to the key manager, a sealed datagram is opened in
    /// place and what it held goes on as a VXLAN datagram.
    pub fn datagram(
        &mut self,
        core: &Core,
        tables: &Tables,
        src: Ipv4Addr,
        d: &mut [u8],
        now: Instant,
        io: &mut impl Taps,
    ) -> Option<DropReason> {
        let kind = sealed::kind(d);
        if kind != Kind::Vxlan {
            let g = &tables.global;
            bump(&g.udp_rx_packets, 1);
            if !tables.is_member(src) {
                g.drops.add(DropReason::UnknownPeer);
                return Some(DropReason::UnknownPeer);
            }
        }
        let (d, verdict) = match kind {
            Kind::Vxlan => {
                let v = core.handle_datagram(tables, src, d, now);
                (d, v)
            }
            Kind::Initiation | Kind::Response => {
                tables.crypto.handshake_in(src, d);
                return None;
            }
            Kind::Data => match tables.crypto.sessions.load().open(src, d, now) {
                Err(reason) => {
                    tables.global.drops.add(reason);
                    return Some(reason);
                }
                // A keepalive: it confirmed its session, and holds nothing.
                Ok(r) if r.is_empty() => return None,
                Ok(r) => {
                    let d = &mut d[r];
                    let v = core.handle_opened(tables, src, d, now);
                    (d, v)
                }
            },
        };
        let (net, offset, mss) = match verdict {
            Verdict::Deliver { net, offset } => (net, offset, None),
            Verdict::DeliverSegmented { net, offset, mss } => (net, offset, Some(mss)),
            Verdict::Drop(r) => return Some(r),
            _ => return None,
        };
        let nt = &tables.networks[net];
        let Some(tap) = io.offloads(nt.vni) else {
            return fail(&nt.stats, DropReason::TapError).err();
        };
        self.deliver(tables, net, tap, &mut d[offset..], mss, io)
            .err()
    }

    /// Writes out the run held for GRO: at the end of every turn.
    pub fn flush(&mut self, tables: &Tables, io: &mut impl Taps) {
        self.flush_gro(tables, io);
    }

    /// Writes one inner frame (or super-frame, `mss` given) into network
    /// `net`'s TAP.
    fn deliver(
        &mut self,
        tables: &Tables,
        net: usize,
        tap: TapOffloads,
        inner: &mut [u8],
        mss: Option<usize>,
        io: &mut impl Taps,
    ) -> Result<(), DropReason> {
        let nt = &tables.networks[net];
        if !tap.vnet_hdr {
            let Some(mss) = mss else {
                return write_tap(io, nt, inner);
            };
            let mut res = Ok(());
            let cut = gso::segment_tcp(inner, mss, &mut self.seg, |s| {
                res = res.and(write_tap(io, nt, s));
            });
            return cut.map_or_else(|_| fail(&nt.stats, DropReason::Malformed), |_| res);
        }
        if let Some(mss) = mss {
            // A whole super-frame: into the TAP as one GSO frame.
            self.flush_gro(tables, io);
            let Some(h) = gso::prepare_for_tap(inner, mss) else {
                return fail(&nt.stats, DropReason::Malformed);
            };
            return write_with(&mut self.single, io, nt, h, inner);
        }
        if self.gro_to.is_some_and(|n| n != net) {
            self.flush_gro(tables, io);
        }
        self.gro.udp_runs = tap.uso_write;
        let pushed = match self.gro.push(inner) {
            gro::Push::Flush => {
                self.flush_gro(tables, io);
                self.gro.restart(inner)
            }
            gro::Push::Single => {
                self.flush_gro(tables, io);
                gro::Push::Single
            }
            joined => joined,
        };
        if pushed == gro::Push::Joined {
            self.gro_to.get_or_insert(net);
            return Ok(());
        }
        write_with(&mut self.single, io, nt, virtio::Header::default(), inner)
    }

    /// Writes out the run held in `gro`, into the TAP it belongs to: before
    /// anything else goes out and at the end of every turn, so nothing
    /// waits in the buffer.
    ///
    /// A UDP GSO frame that the kernel refuses (older than 6.2) is cut here
    /// and written datagram by datagram, and the TAP gets no more of them.
    fn flush_gro(&mut self, tables: &Tables, io: &mut impl Taps) {
        let udp_run = self.gro.udp_run();
        let out = self.gro.finish();
        let (Some(out), Some(net)) = (out, self.gro_to.take()) else {
            return;
        };
        let nt = &tables.networks[net];
        match io.write(nt.vni, out) {
            Ok(()) => {
                bump(&nt.stats.tap_tx_packets, 1);
                bump(&nt.stats.tap_tx_bytes, out.len() as u64);
            }
            Err(TapError::Refused) if udp_run => {
                io.refuse_uso_write(nt.vni);
                let mss = virtio::Header::parse(out).map_or(0, |h| usize::from(h.gso_size));
                let single = &mut self.single;
                let cut = gso::segment_udp(&out[virtio::LEN..], mss, &mut self.seg, |d| {
                    let _ = write_with(single, io, nt, virtio::Header::default(), d);
                });
                if cut.is_err() {
                    nt.stats.drops.add(DropReason::Malformed);
                }
            }
            Err(_) => nt.stats.drops.add(DropReason::TapError),
        }
    }
}

#[cfg(test)]
mod tests;
