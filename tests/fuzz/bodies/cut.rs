//! The segmenters of the offload paths (`dataplane/src/overlay/path.rs`): the
//! UDP segmentation (USO cut) of UDP GSO frames, the TSO cut, and what a
//! TAP read does with its virtio-net header; and the checks of a cut that
//! `gro.rs` shares. Part of `bodies.rs` (same rules: raw bytes in, never a
//! panic, checks that would catch a wrong answer).
//!
//! The checks read frames with their own small parser and a plain RFC 1071
//! sum ([`rfc1071`]), not the product's (`gso`'s layout, `csum::sum`'s
//! eight-bytes-at-a-time loop), so that a mistake in either shows up as a
//! disagreement.

use vxmesh_dataplane::offload::{gso, virtio};

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
pub(super) const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The one's complement sum of RFC 1071 section 4.1, two bytes at a time,
/// folded: the reference the product's sums are checked against.
pub(super) fn rfc1071(data: &[u8], seed: u32) -> u16 {
    let mut s = u64::from(seed);
    for c in data.chunks(2) {
        s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Where the headers of an Ethernet frame (one 802.1Q tag or none) with an
/// IPv4 or IPv6 packet end: what the checks expect of every frame the
/// segmenters accept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ip {
    pub(super) l3: usize,
    pub(super) l4: usize,
    /// End of the IP packet (what follows is padding).
    pub(super) end: usize,
    pub(super) v4: bool,
    pub(super) proto: u8,
}

/// An unfragmented IPv4 packet or an IPv6 one without extension headers,
/// its lengths within the frame.
pub(super) fn read_ip(f: &[u8]) -> Option<Ip> {
    let tagged = f.get(12..14)? == [0x81, 0x00];
    let l3 = if tagged { 18 } else { 14 };
    let ethertype = f.get(l3 - 2..l3)?;
    let ip = f.get(l3..)?;
    let be = |i: usize| usize::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
    let (l4, end, v4, proto) = match ethertype {
        [0x08, 0x00] if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || be(6) & 0x3fff != 0 || be(2) < ihl {
                return None;
            }
            (l3 + ihl, l3 + be(2), true, ip[9])
        }
        [0x86, 0xdd] if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            (l3 + 40, l3 + 40 + be(4), false, ip[6])
        }
        _ => return None,
    };
    (end <= f.len()).then_some(Ip {
        l3,
        l4,
        end,
        v4,
        proto,
    })
}

impl Ip {
    /// The IPv4 header checksum verifies (always true for IPv6).
    pub(super) fn header_ok(&self, f: &[u8]) -> bool {
        !self.v4 || rfc1071(&f[self.l3..self.l4], 0) == 0xffff
    }

    /// The pseudo-header sum (addresses, protocol, L4 length to `end`).
    pub(super) fn pseudo(&self, f: &[u8]) -> u32 {
        let addrs = if self.v4 {
            &f[self.l3 + 12..self.l3 + 20]
        } else {
            &f[self.l3 + 8..self.l3 + 40]
        };
        u32::from(rfc1071(
            addrs,
            u32::from(self.proto) + (self.end - self.l4) as u32,
        ))
    }

    /// The TCP or UDP checksum verifies.
    pub(super) fn l4_ok(&self, f: &[u8]) -> bool {
        rfc1071(&f[self.l4..self.end], self.pseudo(f)) == 0xffff
    }

    /// First payload byte of a TCP or UDP packet whose header fits (a TCP
    /// header of at least 20 bytes).
    pub(super) fn data(&self, f: &[u8]) -> Option<usize> {
        let hlen = match self.proto {
            TCP if self.l4 + 20 <= self.end => usize::from(f[self.l4 + 12] >> 4) * 4,
            UDP => 8,
            _ => return None,
        };
        let least = if self.proto == TCP { 20 } else { 8 };
        (hlen >= least && self.l4 + hlen <= self.end).then_some(self.l4 + hlen)
    }
}

/// What every segment of one cut (`gso::segment_tcp` or
/// `gso::segment_udp` of `frame` at `mss`) must be, checked as each is
/// emitted: the frame's headers with the segment's own lengths, IPv4 id
/// (the first plus the index), sequence number and flags, checksums that
/// verify, and the next `mss` bytes of the payload (fewer only for the last).
struct Cut<'a> {
    frame: &'a [u8],
    ip: Ip,
    data: usize,
    mss: usize,
    /// Payload bytes given out so far.
    off: usize,
    count: usize,
    short_seen: bool,
}

impl<'a> Cut<'a> {
    /// `None` when `frame` is not a packet of `proto` the cut accepts.
    fn new(frame: &'a [u8], proto: u8, mss: usize) -> Option<Cut<'a>> {
        let ip = read_ip(frame).filter(|ip| ip.proto == proto)?;
        let data = ip.data(frame)?;
        Some(Cut {
            frame,
            ip,
            data,
            mss,
            off: 0,
            count: 0,
            short_seen: false,
        })
    }

    fn payload(&self) -> &'a [u8] {
        &self.frame[self.data..self.ip.end]
    }

    fn segment(&mut self, s: &[u8]) {
        let (f, ip, data, i) = (self.frame, self.ip, self.data, self.count);
        let l4 = ip.l4;
        assert!(!self.short_seen, "segment {i} after a short one");
        assert!(
            s.len() >= data,
            "segment {i}: {} bytes, headers {data}",
            s.len()
        );
        let chunk = &s[data..];
        let rest = &self.payload()[self.off..];
        assert!(
            chunk.len() <= self.mss,
            "segment {i}: {} > mss {}",
            chunk.len(),
            self.mss
        );
        assert!(
            rest.starts_with(chunk) && (!chunk.is_empty() || rest.is_empty()),
            "segment {i}: not the next {} payload bytes at {}",
            chunk.len(),
            self.off
        );
        let last = chunk.len() == rest.len();
        self.short_seen = chunk.len() < self.mss;

        let got = read_ip(s).expect("a segment is an IP packet");
        assert_eq!(
            (got.l3, got.l4, got.end),
            (ip.l3, l4, s.len()),
            "segment {i} lengths"
        );
        assert!(got.header_ok(s), "segment {i}: IPv4 header checksum");
        assert!(got.l4_ok(s), "segment {i}: L4 checksum");
        assert_eq!(
            s[..ip.l3 + 2],
            f[..ip.l3 + 2],
            "segment {i}: Ethernet, version, TOS"
        );
        if ip.v4 {
            let id0 = u16::from_be_bytes([f[ip.l3 + 4], f[ip.l3 + 5]]);
            let id = u16::from_be_bytes([s[ip.l3 + 4], s[ip.l3 + 5]]);
            assert_eq!(id, id0.wrapping_add(i as u16), "segment {i}: IPv4 id");
            assert_eq!(
                s[ip.l3 + 6..ip.l3 + 10],
                f[ip.l3 + 6..ip.l3 + 10],
                "segment {i}: flags, TTL"
            );
            assert_eq!(
                s[ip.l3 + 12..l4],
                f[ip.l3 + 12..l4],
                "segment {i}: addresses, options"
            );
        } else {
            assert_eq!(
                s[ip.l3 + 6..l4],
                f[ip.l3 + 6..l4],
                "segment {i}: IPv6 header"
            );
        }
        assert_eq!(s[l4..l4 + 4], f[l4..l4 + 4], "segment {i}: ports");
        if ip.proto == UDP {
            let len = usize::from(u16::from_be_bytes([s[l4 + 4], s[l4 + 5]]));
            assert_eq!(len, s.len() - l4, "segment {i}: UDP length");
            assert_ne!(
                s[l4 + 6..l4 + 8],
                [0, 0],
                "segment {i}: UDP checksum left out"
            );
        } else {
            let seq = |b: &[u8]| u32::from_be_bytes([b[l4 + 4], b[l4 + 5], b[l4 + 6], b[l4 + 7]]);
            assert_eq!(
                seq(s),
                seq(f).wrapping_add(self.off as u32),
                "segment {i}: sequence"
            );
            assert_eq!(
                s[l4 + 8..l4 + 13],
                f[l4 + 8..l4 + 13],
                "segment {i}: ack, offset"
            );
            let mut flags = f[l4 + 13];
            if !last {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            assert_eq!(s[l4 + 13], flags, "segment {i}: flags");
            assert_eq!(
                s[l4 + 14..l4 + 16],
                f[l4 + 14..l4 + 16],
                "segment {i}: window"
            );
            assert_eq!(
                s[l4 + 18..data],
                f[l4 + 18..data],
                "segment {i}: urgent, options"
            );
        }
        self.off += chunk.len();
        self.count += 1;
    }

    /// After the cut returned `Ok(n)`: all of it came out, in as many
    /// segments as `mss` asks for.
    fn done(&self, n: usize) {
        let len = self.payload().len();
        assert_eq!(n, self.count, "segments returned vs emitted");
        assert_eq!(self.off, len, "payload bytes given out");
        assert_eq!(
            n,
            len.div_ceil(self.mss).max(1),
            "segments for {len} bytes at {}",
            self.mss
        );
    }
}

/// Runs `gso::segment_tcp` or `gso::segment_udp` (`proto`) as the workers
/// do, with a buffer as large as theirs for any frame that fits it, and
/// checks the answer and every segment. `each` sees the segments too.
/// Returns whether the cut was made.
pub(super) fn check_cut(frame: &[u8], proto: u8, mss: usize, mut each: impl FnMut(&[u8])) -> bool {
    // A segment is never longer than its frame (+1: the room check asks
    // for one payload byte even when there is none).
    let mut scratch = vec![0u8; frame.len() + 1];
    let mut expect = Cut::new(frame, proto, mss);
    let mut emitted = 0;
    let emit = |s: &[u8]| {
        emitted += 1;
        expect
            .as_mut()
            .expect("a segment of a frame the cut refuses")
            .segment(s);
        each(s);
    };
    let result = if proto == UDP {
        gso::segment_udp(frame, mss, &mut scratch, emit)
    } else {
        gso::segment_tcp(frame, mss, &mut scratch, emit)
    };
    match (result, &expect) {
        (Ok(n), Some(cut)) => {
            cut.done(n);
            true
        }
        (Ok(n), None) => panic!("cut a packet the checks refuse into {n}"),
        (Err(e), _) => {
            assert_eq!(emitted, 0, "emitted segments, then {e:?}");
            assert_ne!(e, gso::Error::NoRoom, "the worker's buffer always has room");
            if mss == 0 {
                assert_eq!(e, gso::Error::BadMss);
            } else {
                assert!(
                    expect.is_none(),
                    "refused a {proto} packet the checks accept: {e:?}"
                );
            }
            false
        }
    }
}

/// The USO cut: the first two bytes (little-endian) the segment size, as a
/// virtio-net header's `gso_size`, the rest a frame. Segments are checked
/// as in [`check_cut`], and each is already cut: cutting it again gives it
/// back byte for byte.
pub fn udp_gso(data: &[u8]) {
    let Some((mss, frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mss = usize::from(u16::from_le_bytes(*mss));
    let mut again = Vec::new();
    check_cut(frame, UDP, mss, |s| {
        again.resize(s.len() + 1, 0);
        let mut copies = 0;
        let redo = gso::segment_udp(s, mss, &mut again, |t| {
            assert_eq!(t, s, "re-cutting a datagram changed it");
            copies += 1;
        });
        assert_eq!((redo, copies), (Ok(1), 1), "re-cutting a datagram");
    });
}

/// One TAP read: a virtio-net header and the frame behind it, exactly what
/// `TxPath::frame` in `dataplane/src/overlay/path.rs` gets from the kernel,
/// and what it does with it (the same decision, step by step: checksum
/// completion for a plain frame, the TSO or USO cut for a super-frame, a
/// drop for anything else).
///
/// The header parses from any 10 bytes and emits back the same bytes; a
/// checksum completion whose offsets point outside the frame is refused
/// and changes nothing (the path then drops the frame as malformed), one inside changes only its field, to the sum the
/// kernel would have stored; a cut gives segments that pass [`check_cut`].
pub fn virtio_hdr(data: &[u8]) {
    let Some(h) = virtio::Header::parse(data) else {
        assert!(
            data.len() < virtio::LEN,
            "refused a {}-byte header",
            data.len()
        );
        return;
    };
    let mut out = [0u8; virtio::LEN];
    assert!(h.emit(&mut out));
    assert_eq!(out, data[..virtio::LEN], "parse -> emit");
    assert!(!h.emit(&mut out[..virtio::LEN - 1]), "emitted into 9 bytes");

    let frame = &data[virtio::LEN..];
    let mss = usize::from(h.gso_size);
    match h.gso() {
        virtio::GSO_NONE if h.flags & virtio::F_NEEDS_CSUM != 0 => {
            finish_csum(frame, usize::from(h.csum_start), usize::from(h.csum_offset));
        }
        virtio::GSO_TCPV4 | virtio::GSO_TCPV6 => {
            check_cut(frame, TCP, mss, |_| {});
        }
        virtio::GSO_UDP_L4 => {
            check_cut(frame, UDP, mss, |_| {});
        }
        // A plain frame goes on as it came; any other GSO type is dropped
        // as malformed, nothing of it reaches a peer.
        _ => {}
    }
}

/// `virtio::finish_csum` on a copy of `frame`, checked.
fn finish_csum(frame: &[u8], start: usize, offset: usize) {
    let mut f = frame.to_vec();
    let field = start + offset;
    let fits = start < f.len() && field + 2 <= f.len();
    assert_eq!(
        virtio::finish_csum(&mut f, start, offset),
        fits,
        "start {start} offset {offset}"
    );
    if !fits {
        assert_eq!(f, frame, "refused, but the frame changed");
        return;
    }
    assert_eq!(f[..field], frame[..field], "changed before the field");
    assert_eq!(
        f[field + 2..],
        frame[field + 2..],
        "changed after the field"
    );
    // The field held the seed (the pseudo-header sum); the sum from
    // `start` over the finished bytes plus that seed now verifies, as the
    // receiver's check would. (At an odd distance from `start` the field
    // straddles two words and no such identity holds; Linux does the same.)
    if offset.is_multiple_of(2) {
        let seed = u16::from_be_bytes([frame[field], frame[field + 1]]);
        assert_eq!(
            rfc1071(&f[start..], u32::from(seed)),
            0xffff,
            "finished sum"
        );
    }
}
