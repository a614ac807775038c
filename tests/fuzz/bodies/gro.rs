//! GRO as the receive path drives it (`dataplane/src/overlay/path.rs`),
//! checked against the frames it was given. Part of `bodies.rs` (same
//! rules); the frame checks are `cut.rs`'s.

use super::cut::{check_cut, read_ip, rfc1071, Ip, TCP, TCP_PSH, UDP};
use vxmesh_dataplane::offload::gro::{self, Gro, Push};
use vxmesh_dataplane::offload::virtio;

/// Reads the records of a [`gro`] input.
struct Records<'a>(&'a [u8]);

impl<'a> Records<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8().unwrap_or(0), self.u8().unwrap_or(0)])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }
}

/// Record kinds of a [`gro`] input (low two bits of the record's first byte).
const GRO_RAW: u8 = 0;
const GRO_REPAIRED: u8 = 1;
const GRO_NEXT: u8 = 2;
const GRO_WAKEUP: u8 = 3;
/// Bits of a [`GRO_NEXT`] record.
const GRO_SAME_SEQ: u8 = 0x04;
const GRO_PSH: u8 = 0x08;
const GRO_DAMAGE_PAYLOAD: u8 = 0x10;
const GRO_DAMAGE_IP_CSUM: u8 = 0x20;
/// Bit of a [`GRO_WAKEUP`] record: the TAP takes UDP GSO frames.
const GRO_UDP_RUNS: u8 = 0x04;

/// Sets the lengths (IPv4 total, UDP) and checksums (IPv4 header, TCP,
/// UDP) of an IPv4 frame as its sender would have; other frames stay as
/// they are.
fn repair(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let (l3, l4) = (14, 14 + ihl);
    let Ok(total) = u16::try_from(f.len() - l3) else {
        return;
    };
    if ihl < 20 || l4 > f.len() {
        return;
    }
    f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    let field = match f[l3 + 9] {
        TCP if l4 + 20 <= f.len() => l4 + 16,
        UDP if l4 + 8 <= f.len() => {
            let len = (f.len() - l4) as u16;
            f[l4 + 4..l4 + 6].copy_from_slice(&len.to_be_bytes());
            l4 + 6
        }
        _ => 0,
    };
    f[l3 + 10..l3 + 12].fill(0);
    let c = !rfc1071(&f[l3..l4], 0);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    if field != 0 {
        f[field..field + 2].fill(0);
        let ip = Ip {
            l3,
            l4,
            end: f.len(),
            v4: true,
            proto: f[l3 + 9],
        };
        let c = match !rfc1071(&f[l4..], ip.pseudo(f)) {
            0 if ip.proto == UDP => 0xffff,
            c => c,
        };
        f[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// The frame that follows `prev` in its flow (a [`GRO_NEXT`] record): the
/// same headers, `len` payload bytes made from `fill`, the sequence number
/// after `prev`'s payload (TCP) or the next IPv4 id (UDP), unless `op`
/// asks otherwise, lengths and checksums set, then the damage `op` asks
/// for. `None` when `prev` is not an IPv4 TCP or UDP frame.
fn next_of(prev: &[u8], op: u8, len: usize, fill: u8) -> Option<Vec<u8>> {
    let ip = read_ip(prev).filter(|ip| ip.v4 && ip.l3 == 14)?;
    let data = ip.data(prev)?;
    let mut f = prev[..data].to_vec();
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill));
    let l4 = ip.l4;
    if op & GRO_SAME_SEQ == 0 {
        if ip.proto == TCP {
            let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
            let next = seq.wrapping_add((ip.end - data) as u32);
            f[l4 + 4..l4 + 8].copy_from_slice(&next.to_be_bytes());
        } else {
            let id = u16::from_be_bytes([f[18], f[19]]).wrapping_add(1);
            f[18..20].copy_from_slice(&id.to_be_bytes());
        }
    }
    if ip.proto == TCP {
        f[l4 + 13] = (f[l4 + 13] & !TCP_PSH) | (op & GRO_PSH);
    }
    repair(&mut f);
    if op & GRO_DAMAGE_PAYLOAD != 0 {
        let last = f.len() - 1;
        f[last] ^= 0x40;
    }
    if op & GRO_DAMAGE_IP_CSUM != 0 {
        f[24] ^= 0x01;
    }
    Some(f)
}

/// GRO as the receive path drives it (`RxPath::deliver` and
/// `flush_gro` in `dataplane/src/overlay/path.rs`), over a run of frames
/// described by records. The first byte of a record:
///
/// - [`GRO_RAW`]: a 16-bit little-endian length, then the frame;
/// - [`GRO_REPAIRED`]: the same, with lengths and checksums then set right
///   ([`repair`]), so that mutated headers still reach the joining checks;
/// - [`GRO_NEXT`]: the frame after the previous one in its flow
///   ([`next_of`]): a 16-bit payload length and a fill byte follow;
/// - [`GRO_WAKEUP`]: the end of a wake-up (what is held is written out),
///   after which the TAP takes UDP GSO frames or not ([`GRO_UDP_RUNS`]).
///
/// Every frame offered comes out once, in order: written alone and
/// unchanged, or inside one joined frame that the kernel's cut (the same
/// `gso` cut the worker falls back on) gives back, byte for byte for UDP,
/// and for TCP but for the IPv4 id and where PSH sits. A frame damaged
/// on the way is never joined. Joined frames fit one IPv4 packet and their
/// virtio-net header says what the kernel needs to cut and checksum them.
pub fn gro(data: &[u8]) {
    let mut rec = Records(data);
    let mut g = Gro::default();
    g.udp_runs = true;
    let mut fresh = Gro::default();
    // What `g` holds, in order, each with whether it was damaged on purpose.
    let mut held: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut prev: Vec<u8> = Vec::new();
    while let Some(op) = rec.u8() {
        let (frame, damaged) = match op & 3 {
            GRO_RAW | GRO_REPAIRED => {
                let n = usize::from(rec.u16());
                let mut f = rec.take(n).to_vec();
                if op & 3 == GRO_REPAIRED {
                    repair(&mut f);
                }
                (f, false)
            }
            GRO_NEXT => {
                // Payloads up to 4 KiB: enough to reach the 64 KiB limit in
                // a few records, cheap enough to keep inputs fast.
                let (len, fill) = (usize::from(rec.u16()) % 4096, rec.u8().unwrap_or(0));
                match next_of(&prev, op, len, fill) {
                    Some(f) => (f, op & (GRO_DAMAGE_PAYLOAD | GRO_DAMAGE_IP_CSUM) != 0),
                    None => continue,
                }
            }
            kind => {
                debug_assert_eq!(kind, GRO_WAKEUP);
                flush(&mut g, &mut held);
                g.udp_runs = op & GRO_UDP_RUNS != 0;
                continue;
            }
        };
        match g.push(&frame) {
            Push::Joined => held.push((frame.clone(), damaged)),
            Push::Flush => {
                assert!(!g.is_empty(), "Flush with nothing held");
                flush(&mut g, &mut held);
                let again = g.restart(&frame);
                // `restart` skips the checks: it must answer what they would.
                fresh.udp_runs = g.udp_runs;
                assert_eq!(fresh.push(&frame), again, "restart vs push");
                fresh.finish();
                match again {
                    Push::Joined => held.push((frame.clone(), damaged)),
                    Push::Single => {}
                    Push::Flush => panic!("Flush with nothing held"),
                }
            }
            // Written alone, after what was held.
            Push::Single => flush(&mut g, &mut held),
        }
        prev = frame;
    }
    flush(&mut g, &mut held);
    assert!(g.finish().is_none(), "finished twice");
}

/// Writes out what `g` holds and checks it against the frames it was
/// given (`held`, emptied).
fn flush(g: &mut Gro, held: &mut Vec<(Vec<u8>, bool)>) {
    let udp_run = g.udp_run();
    let out = g.finish().map(<[u8]>::to_vec);
    assert!(g.is_empty(), "still holding after finish");
    let Some(out) = out else {
        assert!(
            held.is_empty(),
            "{} frame(s) held, none written",
            held.len()
        );
        return;
    };
    assert!(!held.is_empty(), "wrote a frame never given");
    assert!(
        held.len() == 1 || held.iter().all(|(_, d)| !d),
        "a damaged frame joined with others"
    );
    let mut held: Vec<Vec<u8>> = held.drain(..).map(|(f, _)| f).collect();
    let h = virtio::Header::parse(&out).expect("a virtio-net header in front");
    let frame = &out[gro::LEAD..];
    if held.len() == 1 {
        assert_eq!(h, virtio::Header::default(), "one frame, yet a GSO header");
        assert_eq!(frame, &held[0][..], "a frame written alone changed");
        assert!(!udp_run, "a run of one is not a UDP run");
        return;
    }
    // A joined frame: one IPv4 packet with what the kernel needs.
    let ip = read_ip(frame).expect("a joined frame is IPv4");
    assert!(
        ip.v4 && ip.l3 == 14 && ip.end == frame.len(),
        "joined: {ip:?}"
    );
    assert!(ip.header_ok(frame), "joined: IPv4 header checksum");
    let data = ip.data(frame).expect("joined: TCP or UDP");
    let first = read_ip(&held[0])
        .and_then(|i| i.data(&held[0]))
        .expect("first frame");
    let mss = held[0].len() - first;
    let (gso_type, field) = if ip.proto == UDP {
        assert!(udp_run, "UDP, joined, yet not a UDP run");
        assert!(
            held.len() <= 64 && mss <= 512,
            "a UDP run of {} at {mss}",
            held.len()
        );
        (virtio::GSO_UDP_L4, 6)
    } else {
        assert!(!udp_run, "a TCP frame called a UDP run");
        (virtio::GSO_TCPV4, 16)
    };
    assert_eq!(
        h,
        virtio::Header {
            flags: virtio::F_NEEDS_CSUM,
            gso_type,
            hdr_len: data as u16,
            gso_size: mss as u16,
            csum_start: ip.l4 as u16,
            csum_offset: field,
        },
        "joined frame's header"
    );
    assert!(
        frame.len() - data > mss,
        "joined, yet no longer than one segment"
    );
    // The kernel finishes the checksum: the whole then verifies.
    let mut whole = frame.to_vec();
    assert!(virtio::finish_csum(&mut whole, ip.l4, usize::from(field)));
    assert!(ip.l4_ok(&whole), "joined frame's finished checksum");

    // The kernel's cut gives back what was joined.
    let mut back = Vec::new();
    let cut = check_cut(&whole, ip.proto, mss, |s| back.push(s.to_vec()));
    assert!(cut, "the kernel's cut of a joined frame failed");
    assert_eq!(back.len(), held.len(), "segments vs frames joined");
    let any_psh = ip.proto == TCP && held.iter().any(|f| f[ip.l4 + 13] & TCP_PSH != 0);
    let joined = held.len();
    for (i, (b, f)) in back.iter_mut().zip(held.iter_mut()).enumerate() {
        if ip.proto == TCP {
            // TSO numbers ids from the first; PSH goes on the last.
            let last = i + 1 == joined;
            assert_eq!(b[ip.l4 + 13] & TCP_PSH != 0, last && any_psh, "PSH of {i}");
            for x in [&mut *b, &mut *f] {
                x[18..20].fill(0);
                x[24..26].fill(0);
                x[ip.l4 + 13] &= !TCP_PSH;
                x[ip.l4 + 16..ip.l4 + 18].fill(0);
            }
        }
        assert_eq!(b, f, "frame {i} of {joined} did not come back");
    }
}
