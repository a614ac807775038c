//! Software GRO: consecutive TCP segments of one flow, as they arrive from a
//! peer that cut a super-frame, are joined back into one super-frame and
//! handed to a TAP with a virtio-net GSO header. One TAP write then carries
//! what took dozens, and the receiving stack sees what a NIC's GRO would
//! give it. IPv4 only for now; anything else is written as it came.
//!
//! A segment joins the frame being built only when it is its exact
//! continuation: same Ethernet, IP and TCP headers except the IPv4 id,
//! lengths, checksums, sequence number and PSH; sequence number right after
//! the bytes so far; plain ACK (PSH allowed); every segment before it
//! exactly `mss` long (a shorter one ends the frame); and a TCP checksum
//! that verifies. The joined frame goes to the TAP with a partial checksum
//! that the kernel trusts, so a segment damaged on the way (a kernel vxlan
//! peer sends no outer UDP checksum by default) would otherwise be repaired
//! instead of dropped: one that does not verify is written alone, for the
//! receiving stack to drop.
//!
//! Runs of UDP datagrams of one flow are joined the same way into one UDP
//! GSO frame (`VIRTIO_NET_HDR_GSO_UDP_L4`, which tun takes since Linux 6.2):
//! the kernel cuts it back into the same datagrams when it delivers them,
//! and a flood of small datagrams costs one TAP write per run instead of
//! one per datagram (datagrams of up to 512 payload bytes: see
//! `MAX_UDP_JOIN_PAYLOAD`). A datagram joins only when the kernel's cut gives it
//! back byte for byte: same headers but for the IPv4 id (which must be the
//! previous one plus one, as the cut numbers them), lengths and checksums;
//! the same payload length as the first (a shorter one ends the run); and
//! a non-zero UDP checksum that verifies (the cut computes a fresh one, so
//! a datagram with a bad or absent checksum is written as it came, for the
//! receiving stack to judge).

use super::csum::{fold, sum};
use super::gso;
use super::virtio;

/// Room kept in front of the frame for the virtio-net header.
pub const LEAD: usize = virtio::LEN;
/// Largest super-frame built (IPv4 total length is 16 bits).
const MAX_IP: usize = 65_535;
/// Most datagrams joined into one UDP GSO frame (the kernel's cut refuses
/// more than `UDP_MAX_SEGMENTS`, 128 on 6.x).
const MAX_UDP_SEGS: usize = 64;
const UDP_HLEN: usize = 8;
/// Largest UDP payload that starts a run. Joining pays for small datagrams,
/// where the per-datagram TAP write is most of the cost: 64-byte iperf3
/// floods arrived at 1.34x the rate (134 vs 100 kpps, `vxmesh-bench overlay
/// --quick`, 2-core VM). Near the MTU it does not: 1400-byte floods fell
/// to 0.87x (84 vs 96 kpps), the receiver's socket taking a run of ~46
/// datagrams at once instead of one at a time while it reads.
const MAX_UDP_JOIN_PAYLOAD: usize = 512;

const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// What [`Gro::push`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Joined (or started) the frame being built.
    Joined,
    /// Does not continue the frame being built: [`Gro::finish`] it, then
    /// push again.
    Flush,
    /// Not a plain IPv4 TCP segment: write it as it is.
    Single,
}

/// What the checks of [`Gro::push`] found in a frame: offsets and fields
/// of a UDP datagram or TCP segment that may join, or neither.
#[derive(Clone, Copy, Debug)]
enum Parsed {
    /// (l3, l4, IPv4 id).
    Udp(usize, usize, u16),
    /// (l3, l4, data, seq, flags).
    Tcp(usize, usize, usize, u32, u8),
    Other,
}

/// Builds one super-frame at a time.
pub struct Gro {
    /// The frame last answered [`Push::Flush`] (address, length) and what
    /// its checks found, for [`Gro::restart`].
    refused: Option<(usize, usize, Parsed)>,
    /// Join UDP datagrams too (off where the TAP refuses UDP GSO frames).
    pub udp_runs: bool,
    /// What the frame being built carries.
    udp: bool,
    /// IPv4 id of the last datagram joined (UDP runs).
    last_id: u16,
    buf: Vec<u8>,
    /// Bytes of the frame (after LEAD); 0 when empty.
    len: usize,
    /// Header length (Ethernet + IP + TCP) of the frame being built.
    hdr: usize,
    l3: usize,
    l4: usize,
    mss: usize,
    segs: usize,
    next_seq: u32,
    /// The last segment was shorter than mss: nothing may follow.
    closed: bool,
    psh: bool,
}

impl Default for Gro {
    fn default() -> Self {
        Gro {
            refused: None,
            udp_runs: true,
            udp: false,
            last_id: 0,
            buf: vec![0u8; LEAD + MAX_IP + 18],
            len: 0,
            hdr: 0,
            l3: 0,
            l4: 0,
            mss: 0,
            segs: 0,
            next_seq: 0,
            closed: false,
            psh: false,
        }
    }
}

/// (l3, l4) of an Ethernet frame holding exactly one unfragmented IPv4
/// packet of protocol `proto`, its header checksum verified (as Linux's
/// GRO does: the joined frame gets a fresh one, which would hide damage).
fn ipv4(frame: &[u8], proto: u8) -> Option<(usize, usize)> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let l3 = 14;
    let ip = &frame[l3..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != proto {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // Any fragment bit or offset (DF is fine), or padding after the packet.
    if ihl < 20 || frag & 0x3fff != 0 || l3 + total != frame.len() {
        return None;
    }
    if fold(sum(ip.get(..ihl)?, 0)) != 0xffff {
        return None;
    }
    Some((l3, l3 + ihl))
}

/// Sets the IPv4 total length of a joined frame and recomputes the header
/// checksum.
fn fix_ipv4(frame: &mut [u8], l3: usize, l4: usize) {
    let total = (frame.len() - l3) as u16;
    frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let c = !fold(sum(&frame[l3..l4], 0));
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// (l3, l4, data, seq, flags) of a plain IPv4 TCP segment with a payload
/// and a TCP checksum that verifies.
fn tcp_v4(frame: &[u8]) -> Option<(usize, usize, usize, u32, u8)> {
    let (l3, l4) = ipv4(frame, 6)?;
    if frame.len() < l4 + 20 {
        return None;
    }
    let thl = usize::from(frame[l4 + 12] >> 4) * 4;
    let data = l4 + thl;
    if thl < 20 || data >= frame.len() {
        return None;
    }
    let flags = frame[l4 + 13];
    if flags & !(TCP_PSH | TCP_ACK) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    if !l4_csum_ok(frame, l3, l4, 6) {
        return None;
    }
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    Some((l3, l4, data, seq, flags))
}

/// The TCP or UDP checksum of an IPv4 packet (`proto`, L4 header at `l4`,
/// running to the end of `frame`) verifies.
fn l4_csum_ok(frame: &[u8], l3: usize, l4: usize, proto: u8) -> bool {
    let len = (frame.len() - l4) as u32;
    // Pseudo-header (addresses, protocol, length) plus the segment.
    let pseudo = sum(&frame[l3 + 12..l3 + 20], u32::from(proto) + len);
    fold(sum(&frame[l4..], pseudo)) == 0xffff
}

/// (l3, l4, IPv4 id) of a plain IPv4 UDP datagram with a payload and a
/// non-zero UDP checksum that verifies.
fn udp_v4(frame: &[u8]) -> Option<(usize, usize, u16)> {
    let (l3, l4) = ipv4(frame, 17)?;
    let udp_len = frame.len().checked_sub(l4)?;
    if udp_len <= UDP_HLEN
        || usize::from(u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]])) != udp_len
        || frame[l4 + 6..l4 + 8] == [0, 0]
    {
        return None;
    }
    if !l4_csum_ok(frame, l3, l4, 17) {
        return None;
    }
    let id = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
    Some((l3, l4, id))
}

impl Gro {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame being built is a run of several UDP datagrams: finished,
    /// it is a UDP GSO frame.
    pub fn udp_run(&self) -> bool {
        self.len != 0 && self.udp && self.segs > 1
    }

    /// Offers one frame.
    pub fn push(&mut self, frame: &[u8]) -> Push {
        let parsed = self.parse(frame);
        let r = self.offer(frame, parsed);
        self.refused = (r == Push::Flush).then_some((frame.as_ptr() as usize, frame.len(), parsed));
        r
    }

    /// After [`Gro::finish`], offers the frame that [`Gro::push`] just
    /// answered [`Push::Flush`] to, without checking it a second time (the
    /// checks include a checksum pass over it). Any other frame is checked
    /// as `push` does.
    pub fn restart(&mut self, frame: &[u8]) -> Push {
        let parsed = match self.refused.take() {
            Some((at, len, p)) if (at, len) == (frame.as_ptr() as usize, frame.len()) => p,
            _ => self.parse(frame),
        };
        self.offer(frame, parsed)
    }

    /// The checks of a frame that may join.
    fn parse(&self, frame: &[u8]) -> Parsed {
        if let Some((l3, l4, id)) = udp_v4(frame).filter(|_| self.udp_runs) {
            return Parsed::Udp(l3, l4, id);
        }
        tcp_v4(frame).map_or(Parsed::Other, |(l3, l4, data, seq, flags)| {
            Parsed::Tcp(l3, l4, data, seq, flags)
        })
    }

    /// Offers a checked frame.
    fn offer(&mut self, frame: &[u8], parsed: Parsed) -> Push {
        let (l3, l4, data, seq, flags) = match parsed {
            Parsed::Udp(l3, l4, id) => return self.push_udp(frame, l3, l4, id),
            Parsed::Tcp(l3, l4, data, seq, flags) => (l3, l4, data, seq, flags),
            Parsed::Other => return Push::Single,
        };
        if self.len != 0 && self.udp {
            return Push::Flush;
        }
        let payload = frame.len() - data;
        if self.len == 0 {
            if !self.start(frame, (l3, l4, data), false) {
                return Push::Single;
            }
            self.next_seq = seq.wrapping_add(payload as u32);
            self.psh = flags & TCP_PSH != 0;
            return Push::Joined;
        }
        let cur = &self.buf[LEAD..LEAD + self.hdr];
        let same_headers = self.same_up_to_ports(frame, l3, l4, data)
            && frame[l4 + 8..l4 + 13] == cur[l4 + 8..l4 + 13] // ack, offset
            && frame[l4 + 14..l4 + 16] == cur[l4 + 14..l4 + 16] // window
            && frame[l4 + 18..data] == cur[l4 + 18..data]; // urgent, options
        if !same_headers || seq != self.next_seq || !self.continues(l3, payload) {
            return Push::Flush;
        }
        self.append(&frame[data..]);
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.psh |= flags & TCP_PSH != 0;
        Push::Joined
    }

    /// Starts a frame with `frame` (its (l3, l4, data) offsets given);
    /// false if it does not fit the buffer.
    fn start(&mut self, frame: &[u8], (l3, l4, data): (usize, usize, usize), udp: bool) -> bool {
        if LEAD + frame.len() > self.buf.len() {
            return false;
        }
        self.buf[LEAD..LEAD + frame.len()].copy_from_slice(frame);
        (self.len, self.hdr, self.l3, self.l4) = (frame.len(), data, l3, l4);
        (self.mss, self.segs, self.closed, self.udp) = (frame.len() - data, 1, false, udp);
        true
    }

    /// Same Ethernet header, IPv4 header bar id, lengths and checksum, and
    /// same ports as the frame being built.
    fn same_up_to_ports(&self, frame: &[u8], l3: usize, l4: usize, data: usize) -> bool {
        let cur = &self.buf[LEAD..LEAD + self.hdr];
        data == self.hdr
            && l4 == self.l4
            && frame[..l3 + 2] == cur[..l3 + 2] // Ethernet, IP version/IHL/TOS
            && frame[l3 + 6..l3 + 10] == cur[l3 + 6..l3 + 10] // flags, TTL, protocol
            && frame[l3 + 12..l4 + 4] == cur[l3 + 12..l4 + 4] // addresses, options, ports
    }

    /// A segment of `payload` bytes may follow: nothing short came before,
    /// it is no longer than the first, and the joined packet stays within
    /// the buffer and the IPv4 length.
    fn continues(&self, l3: usize, payload: usize) -> bool {
        !self.closed
            && payload <= self.mss
            && self.len + payload <= self.buf.len() - LEAD
            && self.len - l3 + payload <= MAX_IP
    }

    /// Appends a segment's payload; a short one closes the frame.
    fn append(&mut self, payload: &[u8]) {
        self.buf[LEAD + self.len..LEAD + self.len + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        self.segs += 1;
        self.closed = payload.len() < self.mss;
    }

    /// Offers one UDP datagram (`udp_v4` said so).
    fn push_udp(&mut self, frame: &[u8], l3: usize, l4: usize, id: u16) -> Push {
        let data = l4 + UDP_HLEN;
        let payload = frame.len() - data;
        if self.len == 0 {
            if payload > MAX_UDP_JOIN_PAYLOAD || !self.start(frame, (l3, l4, data), true) {
                return Push::Single;
            }
            self.last_id = id;
            return Push::Joined;
        }
        if !self.udp
            || !self.same_up_to_ports(frame, l3, l4, data)
            || id != self.last_id.wrapping_add(1)
            || self.segs >= MAX_UDP_SEGS
            || !self.continues(l3, payload)
        {
            return Push::Flush;
        }
        self.append(&frame[data..]);
        self.last_id = id;
        Push::Joined
    }

    /// Completes the frame being built and returns it with its virtio-net
    /// header in front, ready for one TAP write; `None` when empty. A single
    /// segment goes out unchanged with an empty header.
    pub fn finish(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let frame = &mut self.buf[LEAD..LEAD + len];
        let header = if self.segs == 1 {
            virtio::Header::default()
        } else {
            let (l3, l4) = (self.l3, self.l4);
            fix_ipv4(frame, l3, l4);
            if self.udp {
                let udp_len = (len - l4) as u16;
                frame[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
                gso::prepare_udp_for_tap(frame, self.mss)?
            } else {
                if self.psh {
                    frame[l4 + 13] |= TCP_PSH;
                }
                gso::prepare_for_tap(frame, self.mss)?
            }
        };
        header.emit(&mut self.buf[..LEAD]);
        Some(&self.buf[..LEAD + len])
    }
}

#[cfg(test)]
mod tests;
