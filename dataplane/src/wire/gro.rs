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
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn seg(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
            .tcp(40000, 5201, seq, 512)
            .ack(99);
        let b = if psh { b.psh() } else { b };
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn consecutive_segments_join_into_what_tso_would_have_cut() {
        // Cut a super-frame with our own segmenter, join it back.
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let whole = seg(1000, &payload, true);
        let mut pieces = Vec::new();
        let mut scratch = vec![0u8; 2000];
        gso::segment_tcp(&whole, 1410, &mut scratch, |s| pieces.push(s.to_vec())).unwrap();
        let mut g = Gro::default();
        for p in &pieces {
            assert_eq!(g.push(p), Push::Joined);
        }
        let out = g.finish().unwrap().to_vec();
        let h = virtio::Header::parse(&out).unwrap();
        assert_eq!(h.gso_type, virtio::GSO_TCPV4);
        assert_eq!(h.gso_size, 1410);
        // Finishing the checksum as the kernel would gives the original frame
        // (IP id aside: the first segment's id is kept).
        let mut frame = out[LEAD..].to_vec();
        assert!(virtio::finish_csum(&mut frame, 34, 16));
        assert_eq!(frame, whole);
        assert!(g.is_empty());
    }

    #[test]
    fn a_gap_a_different_flow_or_a_short_segment_ends_the_frame() {
        let mut g = Gro::default();
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        assert_eq!(g.push(&seg(200, &[1; 100], false)), Push::Flush, "gap");
        assert_eq!(
            g.push(&seg(100, &[1; 50], false)),
            Push::Joined,
            "short joins"
        );
        assert_eq!(
            g.push(&seg(150, &[1; 100], false)),
            Push::Flush,
            "nothing after a short one"
        );
        g.finish();
        let mut other = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
            .tcp(40001, 5201, 0, 512) // another source port
            .ack(99)
            .write(&mut other, &[1; 10])
            .unwrap();
        assert_eq!(g.push(&seg(0, &[1; 10], false)), Push::Joined);
        assert_eq!(g.push(&other), Push::Flush);
    }

    #[test]
    fn restart_takes_the_refused_frame_and_checks_any_other() {
        let mut g = Gro::default();
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        let next = seg(500, &[1; 100], false);
        assert_eq!(g.push(&next), Push::Flush);
        g.finish();
        assert_eq!(g.restart(&next), Push::Joined);
        g.finish();
        // Not the refused frame: checked, so a bad checksum still shows.
        let mut bad = seg(0, &[1; 100], false);
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        assert_eq!(g.push(&seg(900, &[1; 100], false)), Push::Flush);
        g.finish();
        assert_eq!(g.restart(&bad), Push::Single);
    }

    #[test]
    fn a_segment_whose_checksum_fails_is_never_joined() {
        // Damaged on the way: joined, the kernel would trust the partial
        // checksum of the whole and never see the damage.
        let mut g = Gro::default();
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        let mut bad = seg(100, &[1; 100], false);
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert_eq!(g.push(&bad), Push::Single);
        // Nor does one start a frame.
        g.finish();
        assert!(g.is_empty());
        assert_eq!(g.push(&bad), Push::Single);
        assert!(g.is_empty());
        // The intact segment joins as before.
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        assert_eq!(g.push(&seg(100, &[1; 100], false)), Push::Joined);
    }

    #[test]
    fn a_frame_whose_ipv4_header_checksum_fails_is_never_joined() {
        // Found by the `gro` fuzz target: only the L4 checksum was checked,
        // and joining writes a fresh IPv4 header checksum, so a segment or
        // datagram damaged there reached the receiving stack as good.
        let damage = |mut f: Vec<u8>| {
            f[24] ^= 0x01;
            f
        };
        let mut g = Gro::default();
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        let bad = damage(seg(100, &[1; 100], false));
        assert_eq!(g.push(&bad), Push::Single);
        g.finish();
        assert_eq!(g.push(&bad), Push::Single, "nor does one start a frame");
        assert!(g.is_empty());
        assert_eq!(g.push(&datagram(1, &[1; 64])), Push::Joined);
        assert_eq!(g.push(&damage(datagram(2, &[1; 64]))), Push::Single);
        g.finish();
        // Intact, the same frames join.
        assert_eq!(g.push(&seg(0, &[1; 100], false)), Push::Joined);
        assert_eq!(g.push(&seg(100, &[1; 100], false)), Push::Joined);
        g.finish();
        assert_eq!(g.push(&datagram(1, &[1; 64])), Push::Joined);
        assert_eq!(g.push(&datagram(2, &[1; 64])), Push::Joined);
    }

    #[test]
    fn a_single_segment_goes_out_unchanged() {
        let s = seg(5, b"hello", true);
        let mut g = Gro::default();
        assert_eq!(g.push(&s), Push::Joined);
        let out = g.finish().unwrap();
        assert_eq!(&out[..LEAD], &[0u8; LEAD]);
        assert_eq!(&out[LEAD..], &s[..]);
        assert!(g.finish().is_none());
    }

    #[test]
    fn syn_and_garbage_are_single() {
        let mut g = Gro::default();
        let b = PacketBuilder::ethernet2([2; 6], [3; 6])
            .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
            .tcp(1, 2, 3, 4)
            .syn();
        let mut syn = Vec::new();
        b.write(&mut syn, &[]).unwrap();
        assert_eq!(g.push(&syn), Push::Single);
        assert_eq!(g.push(&[0u8; 30]), Push::Single);
        assert_eq!(g.push(&[]), Push::Single);
    }

    fn datagram(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
            .udp(40000, 5201)
            .write(&mut out, payload)
            .unwrap();
        out[18..20].copy_from_slice(&id.to_be_bytes());
        // The IPv4 header checksum again, after the id.
        out[24] = 0;
        out[25] = 0;
        let c = !fold(sum(&out[14..34], 0));
        out[24..26].copy_from_slice(&c.to_be_bytes());
        out
    }

    #[test]
    fn a_run_of_datagrams_becomes_one_udp_gso_frame_that_cuts_back_into_them() {
        let run: Vec<Vec<u8>> = (0..10u16)
            .map(|i| {
                let len = if i == 9 { 40 } else { 64 };
                let payload: Vec<u8> = (0..len).map(|b| (b as u16 * 3 + i) as u8).collect();
                datagram(0xfffa_u16.wrapping_add(i), &payload) // the id wraps
            })
            .collect();
        let mut g = Gro::default();
        for d in &run {
            assert_eq!(g.push(d), Push::Joined);
        }
        assert!(g.udp_run());
        let out = g.finish().unwrap().to_vec();
        let h = virtio::Header::parse(&out).unwrap();
        assert_eq!(h.gso_type, virtio::GSO_UDP_L4);
        assert_eq!(h.flags, virtio::F_NEEDS_CSUM);
        assert_eq!((h.gso_size, h.csum_start, h.csum_offset), (64, 34, 6));
        assert_eq!(usize::from(h.hdr_len), 42);
        assert_eq!(out.len() - LEAD, 42 + 9 * 64 + 40);
        // What the kernel's cut gives back is the run, byte for byte.
        let mut back = Vec::new();
        let mut scratch = vec![0u8; 2048];
        let n = gso::segment_udp(&out[LEAD..], 64, &mut scratch, |d| back.push(d.to_vec()));
        assert_eq!(n, Ok(10));
        assert_eq!(back, run);
    }

    #[test]
    fn datagrams_that_the_cut_would_not_give_back_are_not_joined() {
        let mut g = Gro::default();
        assert_eq!(g.push(&datagram(7, &[1; 64])), Push::Joined);
        assert_eq!(g.push(&datagram(9, &[1; 64])), Push::Flush, "id gap");
        assert_eq!(g.push(&datagram(8, &[1; 65])), Push::Flush, "longer");
        assert_eq!(g.push(&datagram(8, &[1; 10])), Push::Joined, "short ends");
        assert_eq!(g.push(&datagram(9, &[1; 10])), Push::Flush, "after short");
        g.finish();
        let mut bad = datagram(1, &[1; 64]);
        bad[42] ^= 0xff;
        assert_eq!(g.push(&bad), Push::Single, "checksum does not verify");
        let mut none = datagram(1, &[1; 64]);
        none[40] = 0;
        none[41] = 0;
        assert_eq!(g.push(&none), Push::Single, "no checksum");
        let mut other = datagram(2, &[1; 64]);
        assert_eq!(g.push(&datagram(1, &[1; 64])), Push::Joined);
        other[34] ^= 1; // another source port (checksum now off too)
        assert_eq!(g.push(&other), Push::Single);
        g.finish();
        // A TCP segment after a UDP run flushes it, and the reverse.
        assert_eq!(g.push(&datagram(1, &[1; 64])), Push::Joined);
        assert_eq!(g.push(&seg(0, &[1; 10], false)), Push::Flush);
        g.finish();
        assert_eq!(g.push(&seg(0, &[1; 10], false)), Push::Joined);
        assert_eq!(g.push(&datagram(1, &[1; 64])), Push::Flush);
        g.finish();
        // Near the MTU, joining does not pay: written as they came.
        assert_eq!(g.push(&datagram(1, &[1; 600])), Push::Single);
        // Off: a datagram is written as it came.
        g.udp_runs = false;
        assert_eq!(g.push(&datagram(1, &[1; 64])), Push::Single);
    }

    #[test]
    fn a_single_datagram_goes_out_unchanged() {
        let d = datagram(3, b"one");
        let mut g = Gro::default();
        assert_eq!(g.push(&d), Push::Joined);
        assert!(!g.udp_run());
        let out = g.finish().unwrap();
        assert_eq!(&out[..LEAD], &[0u8; LEAD]);
        assert_eq!(&out[LEAD..], &d[..]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..8)) {
            let mut g = Gro::default();
            for f in &frames {
                if g.push(f) == Push::Flush {
                    g.finish();
                    let _ = g.push(f);
                }
            }
            let _ = g.finish();
        }

        /// Any run of datagrams that GRO joins, the kernel's cut (here
        /// `segment_udp`, which does what `__udp_gso_segment` does) gives
        /// back byte for byte, whatever the addresses, ports, TTL, TOS, ids
        /// and sizes; whatever is not joined goes out alone, unchanged.
        #[test]
        fn joined_udp_runs_cut_back_into_the_datagrams(
            src in proptest::array::uniform4(proptest::num::u8::ANY),
            dst in proptest::array::uniform4(proptest::num::u8::ANY),
            ports in (proptest::num::u16::ANY, proptest::num::u16::ANY),
            ttl in 1u8..,
            tos in proptest::num::u8::ANY,
            id0 in proptest::num::u16::ANY,
            mss in 1usize..1400,
            count in 1usize..80,
            last in 1usize..1400,
            seed in proptest::num::u8::ANY,
        ) {
            let sizes: Vec<usize> = (0..count).map(|i| if i + 1 == count { last.min(mss) } else { mss }).collect();
            let run: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, len)| {
                let payload: Vec<u8> = (0..*len).map(|b| (b as u8).wrapping_mul(31) ^ seed ^ i as u8).collect();
                let mut out = Vec::new();
                let mut ip = etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::UDP, src, dst).unwrap();
                ip.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
                ip.identification = id0.wrapping_add(i as u16);
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                    .udp(ports.0, ports.1)
                    .write(&mut out, &payload)
                    .unwrap();
                out
            }).collect();
            let mut g = Gro::default();
            let mut pending: Vec<Vec<u8>> = Vec::new();
            let mut back: Vec<Vec<u8>> = Vec::new();
            let mut scratch = vec![0u8; 2048];
            let mut flush = |g: &mut Gro, pending: &mut Vec<Vec<u8>>, back: &mut Vec<Vec<u8>>| {
                let udp_run = g.udp_run();
                if let Some(out) = g.finish() {
                    let h = virtio::Header::parse(out).unwrap();
                    if udp_run {
                        proptest::prop_assert_eq!(h.gso_type, virtio::GSO_UDP_L4);
                        let n = gso::segment_udp(&out[LEAD..], usize::from(h.gso_size), &mut scratch, |d| back.push(d.to_vec())).unwrap();
                        proptest::prop_assert_eq!(n, pending.len());
                    } else {
                        proptest::prop_assert_eq!(h, virtio::Header::default());
                        back.push(out[LEAD..].to_vec());
                    }
                }
                pending.clear();
                Ok(())
            };
            for d in &run {
                match g.push(d) {
                    Push::Joined => pending.push(d.clone()),
                    Push::Flush => {
                        flush(&mut g, &mut pending, &mut back)?;
                        proptest::prop_assert_eq!(g.push(d), Push::Joined);
                        pending.push(d.clone());
                    }
                    Push::Single => {
                        flush(&mut g, &mut pending, &mut back)?;
                        back.push(d.clone());
                    }
                }
            }
            flush(&mut g, &mut pending, &mut back)?;
            proptest::prop_assert_eq!(back, run);
        }
    }
}
