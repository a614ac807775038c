//! Software GRO: consecutive TCP segments of one flow, as they arrive from a
//! peer that cut a super-frame, are joined back into one super-frame and
//! handed to a TAP with a virtio-net GSO header. One TAP write then carries
//! what took dozens, and the receiving stack sees what a NIC's GRO would
//! give it. IPv4 only for now; anything else is written as it came.
//!
//! A segment joins the frame being built only when it is its exact
//! continuation: same Ethernet, IP and TCP headers except the IPv4 id,
//! lengths, checksums, sequence number and PSH; sequence number right after
//! the bytes so far; plain ACK (PSH allowed); and every segment before it
//! exactly `mss` long (a shorter one ends the frame).

use super::csum::{fold, sum};
use super::gso;
use super::virtio;

/// Room kept in front of the frame for the virtio-net header.
pub const LEAD: usize = virtio::LEN;
/// Largest super-frame built (IPv4 total length is 16 bits).
const MAX_IP: usize = 65_535;

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

/// Builds one super-frame at a time.
pub struct Gro {
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

/// (l3, l4, data, seq, flags) of a plain IPv4 TCP segment with a payload.
fn tcp_v4(frame: &[u8]) -> Option<(usize, usize, usize, u32, u8)> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let l3 = 14;
    let ip = &frame[l3..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // Any fragment bit or offset (DF is fine), or padding after the packet.
    if ihl < 20 || frag & 0x3fff != 0 || l3 + total != frame.len() {
        return None;
    }
    let l4 = l3 + ihl;
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
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    Some((l3, l4, data, seq, flags))
}

impl Gro {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offers one frame.
    pub fn push(&mut self, frame: &[u8]) -> Push {
        let Some((l3, l4, data, seq, flags)) = tcp_v4(frame) else {
            return Push::Single;
        };
        let payload = frame.len() - data;
        if self.len == 0 {
            if LEAD + frame.len() > self.buf.len() {
                return Push::Single;
            }
            self.buf[LEAD..LEAD + frame.len()].copy_from_slice(frame);
            (self.len, self.hdr, self.l3, self.l4) = (frame.len(), data, l3, l4);
            (self.mss, self.segs, self.next_seq) = (payload, 1, seq.wrapping_add(payload as u32));
            self.closed = false;
            self.psh = flags & TCP_PSH != 0;
            return Push::Joined;
        }
        let cur = &self.buf[LEAD..LEAD + self.hdr];
        let same_headers = data == self.hdr
            && l4 == self.l4
            && frame[..l3 + 2] == cur[..l3 + 2] // Ethernet, IP version/IHL/TOS
            && frame[l3 + 6..l3 + 10] == cur[l3 + 6..l3 + 10] // flags, TTL, protocol
            && frame[l3 + 12..l4] == cur[l3 + 12..l4] // addresses, options
            && frame[l4..l4 + 4] == cur[l4..l4 + 4] // ports
            && frame[l4 + 8..l4 + 13] == cur[l4 + 8..l4 + 13] // ack, offset
            && frame[l4 + 14..l4 + 16] == cur[l4 + 14..l4 + 16] // window
            && frame[l4 + 18..data] == cur[l4 + 18..data]; // urgent, options
        let fits = self.len + payload <= self.buf.len() - LEAD && self.len - l3 + payload <= MAX_IP;
        if !same_headers || self.closed || seq != self.next_seq || payload > self.mss || !fits {
            return Push::Flush;
        }
        self.buf[LEAD + self.len..LEAD + self.len + payload].copy_from_slice(&frame[data..]);
        self.len += payload;
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.closed = payload < self.mss;
        self.psh |= flags & TCP_PSH != 0;
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
            let total = (len - l3) as u16;
            frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            frame[l3 + 10] = 0;
            frame[l3 + 11] = 0;
            let c = !fold(sum(&frame[l3..l4], 0));
            frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            if self.psh {
                frame[l4 + 13] |= TCP_PSH;
            }
            gso::prepare_for_tap(frame, self.mss)?
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
        let mut other = seg(0, &[1; 10], false);
        other[14 + 20] ^= 1; // another source port
        assert_eq!(g.push(&seg(0, &[1; 10], false)), Push::Joined);
        assert_eq!(g.push(&other), Push::Flush);
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
    fn syn_udp_and_garbage_are_single() {
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
    }
}
