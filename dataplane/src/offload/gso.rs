//! Software segmentation of TCP super-frames (what a NIC's TSO does).
//!
//! Why: a Linux sender with TSO hands its vxlan device TCP segments of up to
//! 64 KiB. A real NIC cuts them to the MTU on the wire; between namespaces
//! (veth) nothing does, and the receiving UDP socket gets the whole super-
//! frame as one datagram. vxmeshd cuts it here, header by header, exactly as
//! TSO would, before the frames go into a TAP whose MTU they must fit.
//! (The virtio-net header route, handing the super-frame to the TAP with its
//! GSO type, is the offload issue's; this is the path that works on every
//! TAP.)

use super::csum::{fold, sum};
use super::virtio;

/// Why a frame could not be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not Ethernet + IPv4/IPv6 + TCP (or UDP, for [`segment_udp`]), or
    /// inconsistent lengths.
    NotTcp,
    /// The scratch buffer cannot hold one segment.
    NoRoom,
    /// A maximum segment size of zero.
    BadMss,
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Where the headers of a TCP frame end, found once per super-frame.
#[derive(Clone, Copy, Debug)]
struct Layout {
    l3: usize,
    l4: usize,
    /// First payload byte.
    data: usize,
    /// End of the IP packet (padding after it is ignored).
    end: usize,
    v4: bool,
}

/// (l3, l4, end of the IP packet, IPv4?) of an Ethernet frame (VLAN tag
/// allowed) holding an IPv4 or IPv6 packet of protocol `proto`, not a
/// fragment, with no IPv6 extension header.
fn ip_layout(frame: &[u8], proto: u8) -> Option<(usize, usize, usize, bool)> {
    if frame.len() < 14 {
        return None;
    }
    let (l3, ethertype) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 if frame.len() >= 18 => (18, u16::from_be_bytes([frame[16], frame[17]])),
        t => (14, t),
    };
    let ip = frame.get(l3..)?;
    let (l4, end, v4) = match ethertype {
        0x0800 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if ip[9] != proto || ihl < 20 || frag != 0 || total < ihl {
                return None;
            }
            (l3 + ihl, l3 + total, true)
        }
        0x86dd if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[6] != proto {
                return None;
            }
            (l3 + 40, l3 + 40 + plen, false)
        }
        _ => return None,
    };
    (end <= frame.len()).then_some((l3, l4, end, v4))
}

fn layout(frame: &[u8]) -> Option<Layout> {
    let (l3, l4, end, v4) = ip_layout(frame, 6)?;
    if l4 + 20 > end {
        return None;
    }
    let thl = usize::from(frame[l4 + 12] >> 4) * 4;
    if thl < 20 || l4 + thl > end {
        return None;
    }
    Some(Layout {
        l3,
        l4,
        data: l4 + thl,
        end,
        v4,
    })
}

/// The largest TCP payload per segment for an overlay MTU (the IP packet
/// size), given the super-frame's own header lengths; `None` if `frame` is
/// not a TCP frame.
pub fn mss_for(frame: &[u8], mtu: usize) -> Option<usize> {
    let l = layout(frame)?;
    mtu.checked_sub(l.data - l.l3).filter(|m| *m > 0)
}

/// Prepares a TCP super-frame to be written whole into a TAP opened with a
/// virtio-net header: stores the pseudo-header sum in the TCP checksum field
/// (what `F_NEEDS_CSUM` means) and returns the header that asks the kernel to
/// segment at `mss` if it ever must. `None` if `frame` is not TCP.
pub fn prepare_for_tap(frame: &mut [u8], mss: usize) -> Option<virtio::Header> {
    let l = layout(frame)?;
    let gso_type = if l.v4 {
        virtio::GSO_TCPV4
    } else {
        virtio::GSO_TCPV6
    };
    partial_for_tap(frame, &l, (6, 16), gso_type, mss)
}

/// Prepares a run of UDP datagrams joined into one frame (the UDP length
/// already covering the whole payload) to be written into a TAP as a UDP
/// GSO frame: stores the pseudo-header sum in the UDP checksum field and
/// returns the header that asks the kernel to cut it at `mss` payload
/// bytes. `None` if `frame` is not UDP.
pub fn prepare_udp_for_tap(frame: &mut [u8], mss: usize) -> Option<virtio::Header> {
    let l = udp_layout(frame)?;
    partial_for_tap(frame, &l, (17, 6), virtio::GSO_UDP_L4, mss)
}

/// Stores the pseudo-header sum of protocol `proto` in the L4 checksum at
/// `field` (offset in the L4 header) and returns the virtio-net header that
/// has the kernel finish it and cut the frame at `mss` as `gso_type`.
fn partial_for_tap(
    frame: &mut [u8],
    l: &Layout,
    (proto, field): (u32, usize),
    gso_type: u8,
    mss: usize,
) -> Option<virtio::Header> {
    let pseudo = pseudo_sum(frame, l, proto, l.end - l.l4);
    frame[l.l4 + field..l.l4 + field + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    Some(virtio::Header {
        flags: virtio::F_NEEDS_CSUM,
        gso_type,
        hdr_len: l.data as u16,
        gso_size: u16::try_from(mss).ok()?,
        csum_start: l.l4 as u16,
        csum_offset: field as u16,
    })
}

/// Cuts a TCP super-frame into frames of at most `mss` payload bytes, built
/// one at a time in `scratch` and handed to `emit`. Returns how many were
/// emitted. Each segment gets the original headers with its own sequence
/// number, IPv4 id and lengths, FIN/PSH only on the last, CWR only on the
/// first, and full IP and TCP checksums.
pub fn segment_tcp(
    frame: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, Error> {
    if mss == 0 {
        return Err(Error::BadMss);
    }
    let l = layout(frame).ok_or(Error::NotTcp)?;
    let hdr = l.data;
    let payload = &frame[l.data..l.end];
    if scratch.len() < hdr + mss.min(payload.len().max(1)) {
        return Err(Error::NoRoom);
    }
    let seq0 = u32::from_be_bytes([
        frame[l.l4 + 4],
        frame[l.l4 + 5],
        frame[l.l4 + 6],
        frame[l.l4 + 7],
    ]);
    let id0 = u16::from_be_bytes([frame[l.l3 + 4], frame[l.l3 + 5]]);
    let flags0 = frame[l.l4 + 13];
    let chunks = payload.len().div_ceil(mss).max(1);
    for i in 0..chunks {
        let off = i * mss;
        let chunk = &payload[off..(off + mss).min(payload.len())];
        let len = hdr + chunk.len();
        let out = &mut scratch[..len];
        out[..hdr].copy_from_slice(&frame[..hdr]);
        out[hdr..].copy_from_slice(chunk);
        let tcp_len = len - l.l4;
        set_ip_header(out, &l, id0.wrapping_add(i as u16));
        let tcp = l.l4;
        out[tcp + 4..tcp + 8].copy_from_slice(&seq0.wrapping_add(off as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < chunks {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        out[tcp + 13] = flags;
        out[tcp + 16] = 0;
        out[tcp + 17] = 0;
        let pseudo = pseudo_sum(out, &l, 6, tcp_len);
        let c = !fold(sum(&out[tcp..], pseudo));
        out[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        emit(out);
    }
    Ok(chunks)
}

/// Cuts a UDP GSO frame (one UDP header, the payload of several datagrams)
/// into datagrams of at most `mss` payload bytes, as the kernel's
/// `__udp_gso_segment` does: each gets the original headers with its own
/// lengths, the IPv4 id plus its index, and full IP and UDP checksums.
/// IPv4 and IPv6, Ethernet framed. Returns how many were emitted.
pub fn segment_udp(
    frame: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, Error> {
    if mss == 0 {
        return Err(Error::BadMss);
    }
    let l = udp_layout(frame).ok_or(Error::NotTcp)?;
    let hdr = l.l4 + 8;
    let payload = &frame[hdr..l.end];
    if scratch.len() < hdr + mss.min(payload.len().max(1)) {
        return Err(Error::NoRoom);
    }
    let id0 = u16::from_be_bytes([frame[l.l3 + 4], frame[l.l3 + 5]]);
    let chunks = payload.len().div_ceil(mss).max(1);
    for i in 0..chunks {
        let chunk = &payload[i * mss..((i + 1) * mss).min(payload.len())];
        let len = hdr + chunk.len();
        let out = &mut scratch[..len];
        out[..hdr].copy_from_slice(&frame[..hdr]);
        out[hdr..].copy_from_slice(chunk);
        let udp_len = (len - l.l4) as u16;
        set_ip_header(out, &l, id0.wrapping_add(i as u16));
        let u = l.l4;
        out[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[u + 6] = 0;
        out[u + 7] = 0;
        let pseudo = pseudo_sum(out, &l, 17, usize::from(udp_len));
        // RFC 768: a computed zero is sent as all ones.
        let c = match !fold(sum(&out[u..], pseudo)) {
            0 => 0xffff,
            c => c,
        };
        out[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
        emit(out);
    }
    Ok(chunks)
}

/// Sets the IP header of a segment that ends at `out.len()`: its length,
/// and for IPv4 its id and header checksum.
fn set_ip_header(out: &mut [u8], l: &Layout, id: u16) {
    let len = out.len();
    if l.v4 {
        let ip = &mut out[l.l3..l.l4];
        ip[2..4].copy_from_slice(&((len - l.l3) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[10] = 0;
        ip[11] = 0;
        let c = !fold(sum(ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        out[l.l3 + 4..l.l3 + 6].copy_from_slice(&((len - l.l4) as u16).to_be_bytes());
    }
}

/// The pseudo-header sum (addresses, protocol, L4 length) of a segment.
fn pseudo_sum(out: &[u8], l: &Layout, proto: u32, l4_len: usize) -> u32 {
    let addrs = if l.v4 {
        &out[l.l3 + 12..l.l3 + 20]
    } else {
        &out[l.l3 + 8..l.l3 + 40]
    };
    sum(addrs, proto + l4_len as u32)
}

/// Where the headers of an Ethernet + IPv4/IPv6 + UDP frame end.
fn udp_layout(frame: &[u8]) -> Option<Layout> {
    let (l3, l4, end, v4) = ip_layout(frame, 17)?;
    (l4 + 8 <= end).then_some(Layout {
        l3,
        l4,
        data: l4 + 8,
        end,
        v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn super_frame(v6: bool, payload: &[u8], fin: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            b.ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
        };
        let mut b = b.tcp(40000, 5201, 1_000_000, 64240).psh().ack(7);
        if fin {
            b = b.fin();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn check(v6: bool) {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let f = super_frame(v6, &payload, true);
        let mss = mss_for(&f, 1450).unwrap();
        assert_eq!(mss, if v6 { 1450 - 60 } else { 1450 - 40 });
        let mut scratch = vec![0u8; 2000];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment_tcp(&f, mss, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, payload.len().div_ceil(mss));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() - 14 <= 1450, "segment {i} fits the MTU");
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = p.transport else {
                panic!("TCP")
            };
            assert_eq!(tcp.sequence_number(), 1_000_000 + (i * mss) as u32);
            assert_eq!(tcp.fin(), i == n - 1, "FIN only on the last");
            assert_eq!(tcp.psh(), i == n - 1, "PSH only on the last");
            // Checksums verify, as a receiving stack would check them.
            let l = layout(s).unwrap();
            let pseudo = if v6 {
                sum(&s[l.l3 + 8..l.l3 + 40], 6 + (s.len() - l.l4) as u32)
            } else {
                assert_eq!(fold(sum(&s[l.l3..l.l4], 0)), 0xffff, "IPv4 header checksum");
                sum(&s[l.l3 + 12..l.l3 + 20], 6 + (s.len() - l.l4) as u32)
            };
            assert_eq!(fold(sum(&s[l.l4..], pseudo)), 0xffff, "TCP checksum");
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload, "the payload, in order, nothing lost");
    }

    #[test]
    fn ipv4_super_frame_is_cut_like_tso() {
        check(false);
    }

    #[test]
    fn ipv6_super_frame_is_cut_like_tso() {
        check(true);
    }

    #[test]
    fn small_frames_and_garbage() {
        let f = super_frame(false, b"x", false);
        let mut scratch = vec![0u8; 2000];
        let mut segs = 0;
        assert_eq!(segment_tcp(&f, 1410, &mut scratch, |_| segs += 1), Ok(1));
        assert_eq!(
            segment_tcp(&f[..30], 1410, &mut scratch, |_| {}),
            Err(Error::NotTcp)
        );
        assert_eq!(segment_tcp(&f, 0, &mut scratch, |_| {}), Err(Error::BadMss));
        assert_eq!(
            segment_tcp(&f, 1410, &mut [0u8; 10], |_| {}),
            Err(Error::NoRoom)
        );
        for n in 0..f.len() {
            let _ = segment_tcp(&f[..n], 100, &mut scratch, |_| {});
        }
    }

    #[test]
    fn a_super_frame_prepared_for_the_tap_finishes_to_the_right_checksum() {
        let payload = vec![7u8; 3000];
        let good = super_frame(false, &payload, false);
        let mut f = good.clone();
        let h = prepare_for_tap(&mut f, 1410).unwrap();
        assert_eq!(h.gso_type, virtio::GSO_TCPV4);
        assert_eq!((h.csum_start, h.csum_offset, h.gso_size), (34, 16, 1410));
        // What the kernel does with NEEDS_CSUM gives back the real checksum.
        assert!(virtio::finish_csum(&mut f, 34, 16));
        assert_eq!(f, good);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300), mss in 1usize..100) {
            let mut scratch = vec![0u8; 400];
            let _ = segment_tcp(&b, mss, &mut scratch, |_| {});
        }
    }
}
