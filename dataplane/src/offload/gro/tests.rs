//! Tests of [`super`] (kept apart from the logic).

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
