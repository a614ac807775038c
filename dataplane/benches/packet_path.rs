//! Micro-benchmarks of the dataplane's pure parts, in packets per second on
//! one core: no TAP, no socket, only the sans-io core and the wire formats.
//!
//! Run with `cargo bench -p vxmesh-dataplane --bench packet_path`. Every
//! packet benchmark declares `Throughput::Elements(1)`, so criterion's
//! `thrpt` is packets/s; the GSO/GRO ones declare bytes of the super-frame.
//! Absolute numbers depend on the machine (and on its neighbours: the
//! project's machines are shared); compare runs on the same host only.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use vxmesh_dataplane::mesh::maglev::{self, Maglev};
use vxmesh_dataplane::offload::{gro, gso};
use vxmesh_dataplane::overlay::{
    Core, EndpointEntry, GlobalStats, LearnedFdb, NetStats, NetworkTable, Tables, Verdict,
};
use vxmesh_dataplane::wire::{arp, flow, vxlan, MacAddr};

const VNI: u32 = 4096;
const MTU: u16 = 1450;
/// Ethernet header + a full overlay-MTU IP packet.
const FULL_FRAME: usize = 14 + MTU as usize;
/// The whole IPv4/UDP frame is 1464 bytes: 14 + 20 + 8 + this.
const UDP_PAYLOAD: usize = MTU as usize - 20 - 8;

/// Underlay address of node `n`; this node is `ul(1)`.
fn ul(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

/// Overlay address number `i` (10.64.0.0 + i), distinct for any `i < 2^22`.
fn ov(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a40_0000 + i)
}

/// `n` endpoints spread over the remote nodes 2 and 3, plus endpoint 0 on
/// this node; all of them in one network with members 1..=3.
fn tables(n: u32) -> Tables {
    let eps: Vec<EndpointEntry> = (0..n)
        .map(|i| EndpointEntry {
            ip: ov(i),
            mac: MacAddr::from_ipv4(ov(i)),
            vtep: if i == 0 { ul(1) } else { ul(2 + (i % 2) as u8) },
        })
        .collect();
    let net = NetworkTable::new(
        "bench",
        VNI,
        MTU,
        MacAddr::from_ipv4(ov(0)),
        Arc::new(NetStats::default()),
        Arc::new(LearnedFdb::new(1024, Duration::from_secs(300))),
    )
    .with_peers(ul(1), [ul(1), ul(2), ul(3)])
    .with_endpoints(ul(1), &eps);
    Tables::new(ul(1), vec![net], Arc::new(GlobalStats::default()))
}

/// A 1464-byte IPv4/UDP frame from endpoint `src` to endpoint `dst`.
fn udp_frame(src: u32, dst: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MacAddr::from_ipv4(ov(src)).0, MacAddr::from_ipv4(ov(dst)).0)
        .ipv4(ov(src).octets(), ov(dst).octets(), 64)
        .udp(40000, 5201);
    let mut out = Vec::with_capacity(b.size(UDP_PAYLOAD));
    b.write(&mut out, &[0x5a; UDP_PAYLOAD])
        .expect("writing to a Vec");
    assert_eq!(out.len(), FULL_FRAME);
    out
}

/// A broadcast ARP request from endpoint `sender` for `target`.
fn arp_request(sender: u32, target: u32) -> Vec<u8> {
    let smac = MacAddr::from_ipv4(ov(sender)).0;
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&ov(sender).octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ov(target).octets());
    f
}

/// TAP -> underlay: the verdict for a frame read into a buffer with
/// [`vxlan::HEADER_LEN`] bytes of headroom, the header written in front of
/// it, and the flow hash (computed by the core, carried in the verdict)
/// mapped to a UDP source port and a TX socket, as the worker does.
fn encapsulation(c: &mut Criterion) {
    let t = tables(10);
    let now = Instant::now();
    let mut buf = vec![0u8; vxlan::HEADER_LEN + FULL_FRAME];
    buf[vxlan::HEADER_LEN..].copy_from_slice(&udp_frame(0, 3));
    let mut reply = [0u8; arp::REPLY_LEN];

    let mut g = c.benchmark_group("encap");
    g.throughput(Throughput::Elements(1));
    g.bench_function("udp_1464", |b| {
        b.iter(|| {
            let (head, frame) = buf.split_at_mut(vxlan::HEADER_LEN);
            match Core.handle_frame(&t, 0, black_box(frame), &mut reply, now) {
                Verdict::Unicast { peer, vni, flow } => {
                    vxlan::write_header(head, vni);
                    let port = flow::src_port(flow, 0, 0);
                    let socket = flow::scale(flow, 2);
                    black_box((peer, port, socket, &buf[..vxlan::HEADER_LEN]));
                }
                v => panic!("unexpected verdict {v:?}"),
            }
        })
    });
    // The flow hash alone, for scale: it is part of the line above.
    let frame = udp_frame(0, 3);
    g.bench_function("flow_hash", |b| {
        b.iter(|| flow::flow_hash(black_box(&frame)))
    });
    g.finish();
}

/// Underlay -> TAP: a datagram from member node 2 for this node's endpoint.
/// The template is copied into a reused buffer every iteration (the core
/// may complete a checksum in place); the copy is part of the figure.
fn decapsulation(c: &mut Criterion) {
    let t = tables(10);
    let now = Instant::now();
    let mut template = vec![0u8; vxlan::HEADER_LEN];
    vxlan::write_header(&mut template, VNI);
    template.extend_from_slice(&udp_frame(2, 0));
    let mut d = template.clone();
    assert!(matches!(
        Core.handle_datagram(&t, ul(2), &mut d, now),
        Verdict::Deliver { .. }
    ));

    let mut g = c.benchmark_group("decap");
    g.throughput(Throughput::Elements(1));
    g.bench_function("udp_1464", |b| {
        b.iter(|| {
            d.copy_from_slice(&template);
            match Core.handle_datagram(&t, black_box(ul(2)), &mut d, now) {
                Verdict::Deliver { net, offset } => black_box((net, &d[offset..])),
                v => panic!("unexpected verdict {v:?}"),
            };
        })
    });
    g.finish();
}

/// A unicast to one endpoint of a network with 10, 1,000 and 100,000
/// static entries. One destination only, so its entry stays in cache: this
/// is the cost of the hash lookup, not of a cache miss.
fn fdb_lookup(c: &mut Criterion) {
    let now = Instant::now();
    let mut reply = [0u8; arp::REPLY_LEN];
    let mut g = c.benchmark_group("fdb_lookup");
    g.throughput(Throughput::Elements(1));
    for n in [10u32, 1_000, 100_000] {
        let t = tables(n);
        let frame = udp_frame(0, n / 2 + 1);
        assert!(matches!(
            Core.handle_frame(&t, 0, &frame, &mut reply, now),
            Verdict::Unicast { .. }
        ));
        g.bench_with_input(BenchmarkId::from_parameter(n), &frame, |b, frame| {
            b.iter(|| {
                match Core.handle_frame(&t, 0, black_box(frame), &mut reply, now) {
                    Verdict::Unicast { peer, .. } => black_box(peer),
                    v => panic!("unexpected verdict {v:?}"),
                };
            })
        });
    }
    g.finish();
}

/// An ARP request for a known endpoint, answered by the core.
fn arp_reply(c: &mut Criterion) {
    let t = tables(10);
    let now = Instant::now();
    let req = arp_request(0, 5);
    let mut reply = [0u8; arp::REPLY_LEN];
    let mut g = c.benchmark_group("arp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("answered_locally", |b| {
        b.iter(|| {
            match Core.handle_frame(&t, 0, black_box(&req), &mut reply, now) {
                Verdict::ArpReply { len } => black_box(&reply[..len]),
                v => panic!("unexpected verdict {v:?}"),
            };
        })
    });
    g.finish();
}

/// A 64 KiB IPv4 TCP super-frame (IP total length 65535) cut at mss 1410
/// into 47 segments, and the 47 segments joined back by GRO.
fn gso_gro(c: &mut Criterion) {
    const MSS: usize = 1410;
    let payload: Vec<u8> = (0..65_535u32 - 40).map(|i| (i * 7) as u8).collect();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
        .tcp(40000, 5201, 1_000, 64240)
        .psh()
        .ack(1);
    let mut whole = Vec::new();
    b.write(&mut whole, &payload).expect("writing to a Vec");
    let mut scratch = vec![0u8; 2048];
    let mut segs: Vec<Vec<u8>> = Vec::new();
    let n = gso::segment_tcp(&whole, MSS, &mut scratch, |s| segs.push(s.to_vec()))
        .expect("a TCP super-frame");
    assert_eq!(n, 47);
    let mut g = gro::Gro::default();
    assert!(segs.iter().all(|s| g.push(s) == gro::Push::Joined));
    assert!(g.finish().is_some());

    let mut grp = c.benchmark_group("offload");
    grp.throughput(Throughput::Bytes(whole.len() as u64));
    grp.bench_function("gso_segment_64k_mss1410", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let n = gso::segment_tcp(black_box(&whole), MSS, &mut scratch, |s| {
                bytes += black_box(s).len();
            });
            black_box((n, bytes))
        })
    });
    grp.bench_function("gro_join_47_segments", |b| {
        b.iter(|| {
            for s in &segs {
                let joined = g.push(black_box(s)) == gro::Push::Joined;
                assert!(joined, "every segment continues the frame");
            }
            black_box(g.finish().map(<[u8]>::len))
        })
    });
    grp.finish();
}

/// Building the Maglev table (65537 slots) for 10 backends, and one lookup.
fn maglev_table(c: &mut Criterion) {
    let keys: Vec<String> = (0..10).map(|i| format!("10.0.9.{}:80", i + 2)).collect();
    let m = Maglev::new(&keys);
    assert_eq!(m.len(), 10);

    let mut g = c.benchmark_group("maglev");
    g.throughput(Throughput::Elements(1));
    g.bench_function("build_10_backends", |b| {
        b.iter(|| Maglev::new(black_box(&keys)))
    });
    let mut hash = maglev::client_hash("10.0.9.100".parse().expect("an address"));
    g.bench_function("lookup", |b| {
        b.iter(|| {
            // A different slot every time: the 256 KiB table is not one line.
            hash = hash.wrapping_add(0x9e37_79b9);
            m.lookup(black_box(hash))
        })
    });
    g.finish();
}

/// Sealing and opening one full-MTU datagram of an encrypted network
/// (1418-byte inner packet: 8 + 14 + 1418 bytes sealed), with each cipher.
fn seal_open(c: &mut Criterion) {
    use vxmesh_dataplane::crypto::session::{PeerKeys, SessionTable};
    use vxmesh_dataplane::crypto::{Cipher, Keypair, RekeyPolicy};
    const SEALED: usize = 8 + 14 + 1418;
    let now = Instant::now();
    let mut g = c.benchmark_group("crypto");
    g.throughput(Throughput::Elements(1));
    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let tx = Keypair::new(ul(2), 1, 2, cipher, &k1, &k2, true, now);
        let rx = Arc::new(Keypair::new(ul(1), 2, 1, cipher, &k2, &k1, false, now));
        let table = SessionTable::new(
            [(
                ul(1),
                PeerKeys {
                    current: Some(rx),
                    ..PeerKeys::default()
                },
            )]
            .into(),
            RekeyPolicy::default(),
        );
        let mut d = vec![0u8; 16 + SEALED + 16];
        g.bench_function(BenchmarkId::new("seal_1440", cipher.as_str()), |b| {
            b.iter(|| black_box(tx.seal(black_box(&mut d))))
        });
        // Open needs a fresh counter each time: seal outside the timed part.
        g.bench_function(
            BenchmarkId::new("seal_and_open_1440", cipher.as_str()),
            |b| {
                b.iter(|| {
                    assert!(tx.seal(&mut d));
                    black_box(table.open(ul(1), black_box(&mut d), now).is_ok())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    encapsulation,
    decapsulation,
    fdb_lookup,
    arp_reply,
    gso_gro,
    maglev_table,
    seal_open
);
criterion_main!(benches);
