//! The overlay in memory: several nodes built from the real per-packet
//! pipeline (`overlay::path` around the sans-io core, offloads included), a
//! fake underlay that carries datagrams between them, fake TAPs that record
//! what is written, and a virtual clock. No device, no socket: every
//! verdict of the core is checked end to end, and so are batching, GSO,
//! GRO and their fallbacks.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use vxmesh_dataplane::offload::virtio;
use vxmesh_dataplane::overlay::path::{
    RxPath, SendError, TapError, TapOffloads, Taps, Transmit, Transmitter, TxPath,
};
use vxmesh_dataplane::overlay::{
    Announcements, Core, DropReason, EndpointEntry, GlobalStats, LearnedFdb, NetStats,
    NetworkTable, Tables,
};
use vxmesh_dataplane::wire::{vxlan, MacAddr};

const VNI_FRONT: u32 = 4096;
const VNI_BACK: u32 = 4097;

fn ul(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}
fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}
fn ov_back(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 10, n)
}

/// One simulated host: its tables, the two halves of its pipeline and its
/// devices.
struct Host {
    addr: Ipv4Addr,
    tables: Tables,
    tx: TxPath,
    rx: RxPath,
    io: Devices,
}

/// A host's TAPs and underlay socket in memory.
#[derive(Default)]
struct Devices {
    /// What every TAP of the host takes.
    tap: TapOffloads,
    /// The TAPs refuse UDP GSO frames, as tun before Linux 6.2 does.
    refuse_udp_gso: bool,
    /// UDP GSO frames refused so far.
    refused: usize,
    /// The socket has UDP GSO.
    gso: bool,
    /// Frames written into each network's TAP: (vni, frame).
    tap_out: Vec<(u32, Vec<u8>)>,
    /// Every transmit that left: (peer, datagrams, segment size).
    sent: Vec<(Ipv4Addr, usize, Option<usize>)>,
    /// Datagrams on their way to the wire: (peer, datagram).
    out: Vec<(Ipv4Addr, Vec<u8>)>,
}

impl Taps for Devices {
    fn offloads(&self, _vni: u32) -> Option<TapOffloads> {
        Some(self.tap)
    }

    fn write(&mut self, vni: u32, frame: &[u8]) -> Result<(), TapError> {
        let udp_gso = virtio::Header::parse(frame).is_some_and(|h| h.gso() == virtio::GSO_UDP_L4);
        if self.tap.vnet_hdr && udp_gso && self.refuse_udp_gso {
            self.refused += 1;
            return Err(TapError::Refused);
        }
        self.tap_out.push((vni, frame.to_vec()));
        Ok(())
    }

    fn refuse_uso_write(&mut self, _vni: u32) {
        self.tap.uso_write = false;
    }
}

impl Transmitter for Devices {
    fn transmit(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        if t.segments() > 1 && !self.gso {
            return Err(SendError::NoGso);
        }
        self.sent.push((t.peer, t.segments(), t.segment_size));
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        for d in t.contents.chunks(seg) {
            self.out.push((t.peer, d.to_vec()));
        }
        Ok(())
    }
}

/// The fake underlay: (from, to, datagram), delivered in order.
struct Net {
    hosts: Vec<Host>,
    wire: VecDeque<(Ipv4Addr, Ipv4Addr, Vec<u8>)>,
    now: Instant,
    core: Core,
}

fn network(
    name: &str,
    vni: u32,
    local: Ipv4Addr,
    members: &[u8],
    eps: &[EndpointEntry],
    learning: bool,
    cap: usize,
) -> NetworkTable {
    let tap_mac = eps
        .iter()
        .find(|e| e.vtep == local)
        .map(|e| e.mac)
        .unwrap_or(MacAddr([2, 0x43, 0, 0, 0, 1]));
    NetworkTable::new(
        name,
        vni,
        1450,
        tap_mac,
        Arc::new(NetStats::default()),
        Arc::new(LearnedFdb::new(cap, Duration::from_secs(300))),
    )
    .with_peers(local, members.iter().map(|m| ul(*m)))
    .with_endpoints(local, eps)
    .with_learning(learning)
}

fn ep(ip: Ipv4Addr, host: u8) -> EndpointEntry {
    EndpointEntry {
        ip,
        mac: MacAddr::from_ipv4(ip),
        vtep: ul(host),
    }
}

/// h1..h3 in `front` (VNI 4096); h1 and h2 also in `back` (VNI 4097).
fn cluster(learning: bool, cap: usize) -> Net {
    let front = [ep(ov(1), 1), ep(ov(2), 2), ep(ov(3), 3)];
    let back = [ep(ov_back(1), 1), ep(ov_back(2), 2)];
    let hosts = (1..=3u8)
        .map(|h| {
            let mut nets = vec![network(
                "front",
                VNI_FRONT,
                ul(h),
                &[1, 2, 3],
                &front,
                learning,
                cap,
            )];
            if h <= 2 {
                nets.push(network(
                    "back",
                    VNI_BACK,
                    ul(h),
                    &[1, 2],
                    &back,
                    learning,
                    cap,
                ));
            }
            Host {
                addr: ul(h),
                tables: Tables::new(ul(h), nets, Arc::new(GlobalStats::default())),
                tx: TxPath::default(),
                rx: RxPath::default(),
                io: Devices {
                    gso: true,
                    ..Devices::default()
                },
            }
        })
        .collect();
    Net {
        hosts,
        wire: VecDeque::new(),
        now: Instant::now(),
        core: Core,
    }
}

fn datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::HEADER_LEN];
    vxlan::write_header(&mut d, vni);
    d.extend_from_slice(frame);
    d
}

impl Net {
    fn host(&self, addr: Ipv4Addr) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.addr == addr)
            .expect("known host")
    }

    fn stats(&self, h: usize, vni: u32) -> &NetStats {
        let t = &self.hosts[h].tables;
        &t.networks[t.network_by_vni(vni).expect("network exists")].stats
    }

    /// A workload on host `h` sends `frame` into network `vni`'s TAP (in
    /// one turn of the pipeline: the frame, then a flush).
    fn tap_send(&mut self, h: usize, vni: u32, frame: &[u8]) -> Option<DropReason> {
        let mut read = frame.to_vec();
        if self.hosts[h].io.tap.vnet_hdr {
            read.splice(0..0, [0u8; virtio::LEN]);
        }
        self.tap_turn(h, vni, &[read]).pop().flatten()
    }

    /// One turn of host `h`'s TAP side: `reads` as a TAP of its gives them
    /// (behind a virtio-net header where the TAP has them), then a flush;
    /// what the host sent goes onto the wire. Returns each read's drop.
    fn tap_turn(&mut self, h: usize, vni: u32, reads: &[Vec<u8>]) -> Vec<Option<DropReason>> {
        let host = &mut self.hosts[h];
        let net = host.tables.network_by_vni(vni).expect("network exists");
        let drops = reads
            .iter()
            .map(|r| {
                let mut r = r.clone();
                let t = &host.tables;
                host.tx
                    .frame(&self.core, t, net, &mut r, self.now, &mut host.io)
            })
            .collect();
        host.tx.flush(&host.tables, &mut host.io);
        for (peer, d) in host.io.out.drain(..) {
            self.wire.push_back((host.addr, peer, d));
        }
        drops
    }

    /// Carries every datagram on the wire until it is empty, in one turn of
    /// each host's underlay side (flushed at the end); returns the drop
    /// reasons seen on the way.
    fn run(&mut self) -> Vec<DropReason> {
        let mut drops = Vec::new();
        while let Some((from, to, mut d)) = self.wire.pop_front() {
            let Some(host) = self.hosts.iter_mut().find(|h| h.addr == to) else {
                continue;
            };
            let t = &host.tables;
            let got = host
                .rx
                .datagram(&self.core, t, from, &mut d, self.now, &mut host.io);
            drops.extend(got);
        }
        for host in &mut self.hosts {
            host.rx.flush(&host.tables, &mut host.io);
        }
        drops
    }
}

fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, dst_mac: MacAddr, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MacAddr::from_ipv4(src).0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, 7);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MacAddr::from_ipv4(sender).0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MacAddr::from_ipv4(sender).0);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn unicast_reaches_only_the_owner() {
    let mut n = cluster(false, 16);
    let f = udp_frame(ov(1), ov(3), MacAddr::from_ipv4(ov(3)), b"hello");
    assert_eq!(n.tap_send(0, VNI_FRONT, &f), None);
    assert!(n.run().is_empty());
    assert_eq!(n.host(ul(3)).io.tap_out, vec![(VNI_FRONT, f.clone())]);
    assert!(n.host(ul(2)).io.tap_out.is_empty());
    assert_eq!(n.stats(0, VNI_FRONT).flood_copies.load(Relaxed), 0);
}

#[test]
fn arp_for_a_known_endpoint_is_answered_without_flooding() {
    let mut n = cluster(false, 16);
    let req = arp_request(ov(1), ov(2));
    assert_eq!(n.tap_send(0, VNI_FRONT, &req), None);
    assert!(n.wire.is_empty(), "nothing crosses the underlay");
    let (vni, reply) = &n.host(ul(1)).io.tap_out[0];
    assert_eq!(*vni, VNI_FRONT);
    assert_eq!(&reply[0..6], &MacAddr::from_ipv4(ov(1)).0, "to the asker");
    assert_eq!(
        &reply[22..28],
        &MacAddr::from_ipv4(ov(2)).0,
        "sender hw = owner's MAC"
    );
    assert_eq!(&reply[28..32], &ov(2).octets());
    assert_eq!(n.stats(0, VNI_FRONT).arp_answered.load(Relaxed), 1);
    assert_eq!(n.stats(0, VNI_FRONT).flood_copies.load(Relaxed), 0);
}

#[test]
fn broadcast_and_unknown_unicast_go_to_every_peer_once() {
    let mut n = cluster(false, 16);
    n.tap_send(0, VNI_FRONT, &arp_request(ov(1), ov(77)));
    let unknown = udp_frame(ov(1), ov(78), MacAddr([2, 9, 9, 9, 9, 9]), b"x");
    n.tap_send(0, VNI_FRONT, &unknown);
    assert!(n.run().is_empty());
    for h in [ul(2), ul(3)] {
        assert_eq!(n.host(h).io.tap_out.len(), 2, "{h} got both frames once");
    }
    assert!(
        n.host(ul(1)).io.tap_out.is_empty(),
        "no copy back to the sender"
    );
    let s = n.stats(0, VNI_FRONT);
    assert_eq!(s.flooded_frames.load(Relaxed), 2);
    assert_eq!(s.flood_copies.load(Relaxed), 4);
}

#[test]
fn ipv6_neighbour_solicitation_is_flooded() {
    let mut n = cluster(false, 16);
    // Solicited-node multicast 33:33:ff:00:00:02 for fd00::2.
    let b = PacketBuilder::ethernet2(MacAddr::from_ipv4(ov(1)).0, [0x33, 0x33, 0xff, 0, 0, 2])
        .ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2],
            255,
        )
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        });
    let mut f = Vec::new();
    b.write(&mut f, &[0u8; 16]).expect("writing to a Vec");
    assert_eq!(n.tap_send(0, VNI_FRONT, &f), None);
    n.run();
    assert_eq!(n.host(ul(2)).io.tap_out, vec![(VNI_FRONT, f.clone())]);
    assert_eq!(n.host(ul(3)).io.tap_out, vec![(VNI_FRONT, f)]);
}

#[test]
fn networks_are_isolated() {
    let mut n = cluster(false, 16);
    // h3 is not in `back`: a datagram it sends with back's VNI is refused.
    let f = udp_frame(ov_back(9), ov_back(1), MacAddr::from_ipv4(ov_back(1)), b"x");
    n.wire.push_back((ul(3), ul(1), datagram(VNI_BACK, &f)));
    assert_eq!(n.run(), vec![DropReason::UnknownPeer]);
    assert!(n.host(ul(1)).io.tap_out.is_empty());
    // A frame into `back` on h1 never reaches h3, even when flooded.
    n.tap_send(0, VNI_BACK, &arp_request(ov_back(1), ov_back(50)));
    n.run();
    assert_eq!(n.host(ul(2)).io.tap_out.len(), 1);
    assert!(n.host(ul(3)).io.tap_out.is_empty());
}

#[test]
fn hostile_datagrams_are_dropped_and_counted_by_reason() {
    let mut n = cluster(false, 16);
    let good = udp_frame(ov(2), ov(1), MacAddr::from_ipv4(ov(1)), b"ok");
    let stranger = Ipv4Addr::new(198, 18, 0, 99);
    n.wire
        .push_back((stranger, ul(1), datagram(VNI_FRONT, &good)));
    n.wire.push_back((ul(2), ul(1), datagram(999, &good)));
    let mut no_i = datagram(VNI_FRONT, &good);
    no_i[0] = 0;
    n.wire.push_back((ul(2), ul(1), no_i));
    n.wire.push_back((ul(2), ul(1), vec![0x08, 0, 0]));
    n.wire
        .push_back((ul(2), ul(1), datagram(VNI_FRONT, &[0u8; 10])));
    n.wire
        .push_back((ul(2), ul(1), datagram(VNI_FRONT, &vec![0u8; 1600])));
    n.wire.push_back((ul(2), ul(1), datagram(VNI_FRONT, &good)));
    let drops = n.run();
    assert_eq!(
        drops,
        vec![
            DropReason::UnknownPeer,
            DropReason::UnknownVni,
            DropReason::BadFlags,
            DropReason::Malformed,
            DropReason::Malformed,
            DropReason::Mtu,
        ]
    );
    assert_eq!(
        n.host(ul(1)).io.tap_out,
        vec![(VNI_FRONT, good)],
        "the good one still passes"
    );
    let g = &n.hosts[0].tables.global;
    assert_eq!(g.drops.get(DropReason::UnknownPeer), 1);
    assert_eq!(g.drops.get(DropReason::UnknownVni), 1);
    assert_eq!(g.drops.get(DropReason::BadFlags), 1);
    assert_eq!(g.drops.get(DropReason::Malformed), 1);
    let s = n.stats(0, VNI_FRONT);
    assert_eq!(s.drops.get(DropReason::Malformed), 1);
    assert_eq!(s.drops.get(DropReason::Mtu), 1);
}

#[test]
fn frames_over_the_overlay_mtu_are_dropped_at_the_tap() {
    let mut n = cluster(false, 16);
    let fits = udp_frame(ov(1), ov(2), MacAddr::from_ipv4(ov(2)), &[0u8; 1450 - 28]);
    let too_big = udp_frame(ov(1), ov(2), MacAddr::from_ipv4(ov(2)), &[0u8; 1450 - 27]);
    assert_eq!(n.tap_send(0, VNI_FRONT, &fits), None);
    assert_eq!(n.tap_send(0, VNI_FRONT, &too_big), Some(DropReason::Mtu));
    assert_eq!(
        n.tap_send(0, VNI_FRONT, &[0u8; 5]),
        Some(DropReason::Malformed)
    );
    assert_eq!(n.stats(0, VNI_FRONT).drops.get(DropReason::Mtu), 1);
}

#[test]
fn learning_fills_the_table_up_to_its_cap_and_no_further() {
    let mut n = cluster(true, 4);
    // Workloads behind h2 with MACs no config knows.
    for i in 0..10u8 {
        let src = MacAddr([2, 0xaa, 0, 0, 0, i]);
        let b = PacketBuilder::ethernet2(src.0, MacAddr::from_ipv4(ov(1)).0)
            .ipv4([10, 0, 9, 100 + i], ov(1).octets(), 64)
            .udp(1, 2);
        let mut f = Vec::new();
        b.write(&mut f, b"x").expect("writing to a Vec");
        n.wire.push_back((ul(2), ul(1), datagram(VNI_FRONT, &f)));
    }
    n.run();
    let t = &n.hosts[0].tables;
    let front = &t.networks[t.network_by_vni(VNI_FRONT).expect("front")];
    // The fifth MAC made room (one entry went, stalest first); the other
    // five found the table full within the same second.
    assert_eq!(front.learned.len(), 4);
    assert_eq!(front.stats.learned.load(Relaxed), 5);
    assert_eq!(front.stats.fdb_evicted.load(Relaxed), 1);
    assert_eq!(front.stats.fdb_full.load(Relaxed), 5);
    let (learned, _, _) = front.learned.entries(n.now)[0];
    let unknown = (0..10u8)
        .map(|i| MacAddr([2, 0xaa, 0, 0, 0, i]))
        .find(|m| front.learned.lookup(*m, n.now).is_none())
        .expect("six MACs were not kept");
    // A learned MAC is now sent unicast, not flooded.
    let to_learned = udp_frame(ov(1), ov(100), learned, b"y");
    n.tap_send(0, VNI_FRONT, &to_learned);
    assert_eq!(n.wire.len(), 1);
    assert_eq!(n.wire[0].1, ul(2));
    // An unknown one is still flooded.
    n.wire.clear();
    let to_unknown = udp_frame(ov(1), ov(109), unknown, b"z");
    n.tap_send(0, VNI_FRONT, &to_unknown);
    assert_eq!(n.wire.len(), 2);
}

#[test]
fn learning_is_off_by_default() {
    let mut n = cluster(false, 4);
    let b = PacketBuilder::ethernet2([2, 0xaa, 0, 0, 0, 1], MacAddr::from_ipv4(ov(1)).0)
        .ipv4([10, 0, 9, 100], ov(1).octets(), 64)
        .udp(1, 2);
    let mut f = Vec::new();
    b.write(&mut f, b"x").expect("writing to a Vec");
    n.wire.push_back((ul(2), ul(1), datagram(VNI_FRONT, &f)));
    n.run();
    let t = &n.hosts[0].tables;
    assert_eq!(t.networks[0].learned.len(), 0);
}

#[test]
fn a_tcp_super_frame_from_a_tso_sender_is_cut_to_the_mtu() {
    let mut n = cluster(false, 16);
    let payload = vec![0x5a; 20_000];
    let b = PacketBuilder::ethernet2(MacAddr::from_ipv4(ov(2)).0, MacAddr::from_ipv4(ov(1)).0)
        .ipv4(ov(2).octets(), ov(1).octets(), 64)
        .tcp(5201, 40000, 1, 64240)
        .ack(1);
    let mut f = Vec::new();
    b.write(&mut f, &payload).expect("writing to a Vec");
    n.wire.push_back((ul(2), ul(1), datagram(VNI_FRONT, &f)));
    assert!(n.run().is_empty());
    let out = &n.host(ul(1)).io.tap_out;
    assert_eq!(out.len(), 20_000usize.div_ceil(1410));
    assert!(out.iter().all(|(_, s)| s.len() <= 14 + 1450));
    let carried: usize = out.iter().map(|(_, s)| s.len() - 54).sum();
    assert_eq!(carried, 20_000);
    assert_eq!(n.stats(0, VNI_FRONT).gso_segmented.load(Relaxed), 1);
}

#[test]
fn a_broadcast_storm_is_cut_at_the_flood_limit_and_unicast_goes_on() {
    let mut n = cluster(false, 16);
    let t = &mut n.hosts[0].tables;
    let i = t.network_by_vni(VNI_FRONT).unwrap();
    let limited = std::mem::replace(
        &mut t.networks[i],
        NetworkTable::new(
            "x",
            1,
            1450,
            MacAddr([2; 6]),
            Arc::default(),
            Arc::new(LearnedFdb::new(1, Duration::from_secs(1))),
        ),
    )
    .with_flood_limit(100);
    t.networks[i] = limited;
    let storm = arp_request(ov(1), ov(99));
    let dropped = (0..1000)
        .filter(|_| n.tap_send(0, VNI_FRONT, &storm) == Some(DropReason::FloodRate))
        .count();
    assert_eq!(
        dropped, 900,
        "a burst of 100, then nothing within the same instant"
    );
    assert_eq!(n.stats(0, VNI_FRONT).drops.get(DropReason::FloodRate), 900);
    n.wire.clear();
    let f = udp_frame(ov(1), ov(2), MacAddr::from_ipv4(ov(2)), b"still here");
    assert_eq!(n.tap_send(0, VNI_FRONT, &f), None, "unicast is not limited");
    n.now += Duration::from_millis(100);
    assert_eq!(n.tap_send(0, VNI_FRONT, &storm), None, "the bucket refills");
}

#[test]
fn local_workload_sources_are_recorded_for_announcement_within_the_cap() {
    let mut n = cluster(false, 16);
    let table = Arc::new(Announcements::new(
        Ipv4Addr::new(10, 0, 9, 0),
        24,
        Some(ov(1)),
        1,
        Duration::from_secs(300),
    ));
    let h1 = &mut n.hosts[0].tables;
    let front = h1.network_by_vni(VNI_FRONT).unwrap();
    let net = std::mem::replace(
        &mut h1.networks[front],
        network("x", 1, ul(1), &[], &[], false, 1),
    );
    h1.networks[front] = net.with_announce(Some(table.clone()));
    // The TAP itself (10.0.9.1, its own MAC) and a known endpoint's
    // address are never recorded.
    for f in [
        arp_request(ov(1), ov(3)),
        udp_frame(ov(2), ov(3), MacAddr::from_ipv4(ov(3)), b"x"),
    ] {
        let _ = n.tap_send(0, VNI_FRONT, &f);
    }
    assert!(table.is_empty());
    // A workload behind the TAP: its ARP request is answered locally and
    // its address recorded, once.
    assert_eq!(n.tap_send(0, VNI_FRONT, &arp_request(ov(50), ov(3))), None);
    let f = udp_frame(ov(50), ov(3), MacAddr::from_ipv4(ov(3)), b"hi");
    assert_eq!(n.tap_send(0, VNI_FRONT, &f), None);
    assert_eq!(
        table.entries(n.now),
        vec![(ov(50), MacAddr::from_ipv4(ov(50)))]
    );
    assert_eq!(n.stats(0, VNI_FRONT).announced.load(Relaxed), 1);
    // A second one is over the cap of 1: refused and counted, still sent.
    let f = udp_frame(ov(51), ov(3), MacAddr::from_ipv4(ov(3)), b"hi");
    assert_eq!(n.tap_send(0, VNI_FRONT, &f), None);
    assert_eq!(table.len(), 1);
    assert_eq!(n.stats(0, VNI_FRONT).announce_refused.load(Relaxed), 1);
    // Outside the subnet: ignored.
    let f = udp_frame(ov_back(9), ov(3), MacAddr::from_ipv4(ov(3)), b"hi");
    let _ = n.tap_send(0, VNI_FRONT, &f);
    assert_eq!(n.stats(0, VNI_FRONT).announce_refused.load(Relaxed), 1);
}

/// A TCP super-frame of `len` payload bytes from ov(1) to ov(2), as a TSO
/// sender hands it to its TAP (one IPv4 packet, all headers filled in).
fn tcp_super_frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let b = PacketBuilder::ethernet2(MacAddr::from_ipv4(ov(1)).0, MacAddr::from_ipv4(ov(2)).0)
        .ipv4(ov(1).octets(), ov(2).octets(), 64)
        .tcp(40000, 5201, 1000, 64240)
        .ack(1);
    let mut f = Vec::new();
    b.write(&mut f, &payload).expect("writing to a Vec");
    f
}

/// What a TAP with virtio-net headers gives for `frame` from a TSO sender
/// cutting at `mss` (the header of include/uapi/linux/virtio_net.h).
fn tso_read(frame: &[u8], mss: u16) -> Vec<u8> {
    let h = virtio::Header {
        flags: virtio::F_NEEDS_CSUM,
        gso_type: virtio::GSO_TCPV4,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut r = vec![0u8; virtio::LEN];
    assert!(h.emit(&mut r));
    r.extend_from_slice(frame);
    r
}

const VNET: TapOffloads = TapOffloads {
    vnet_hdr: true,
    uso_write: false,
};
/// 20,000 bytes cut at 1410.
const SEGS: usize = 15;
/// One encapsulated segment: VXLAN + Ethernet + IPv4 + TCP + 1410.
const SEG_DATAGRAM: usize = vxlan::HEADER_LEN + 54 + 1410;

#[test]
fn a_tso_super_frame_from_a_tap_is_cut_and_leaves_in_one_gso_send() {
    let mut n = cluster(false, 16);
    n.hosts[0].io.tap = VNET;
    let whole = tcp_super_frame(20_000);
    assert_eq!(
        n.tap_turn(0, VNI_FRONT, &[tso_read(&whole, 1410)]),
        vec![None]
    );
    assert_eq!(
        n.hosts[0].io.sent,
        vec![(ul(2), SEGS, Some(SEG_DATAGRAM))],
        "every segment in one send with UDP GSO"
    );
    let s = n.stats(0, VNI_FRONT);
    assert_eq!(s.vxlan_tx_packets.load(Relaxed), SEGS as u64);
    assert!(n.run().is_empty());
    // h2's TAP has no offloads: it gets the segments as plain frames.
    let out = &n.host(ul(2)).io.tap_out;
    assert_eq!(out.len(), SEGS);
    assert!(out
        .iter()
        .all(|(_, f)| f[..6] == MacAddr::from_ipv4(ov(2)).0 && f.len() <= 14 + 1450));
    let carried: Vec<u8> = out.iter().flat_map(|(_, f)| f[54..].to_vec()).collect();
    assert_eq!(carried, whole[54..], "the payload, in order");
}

#[test]
fn without_udp_gso_the_segments_leave_one_by_one() {
    let mut n = cluster(false, 16);
    n.hosts[0].io.tap = VNET;
    n.hosts[0].io.gso = false;
    let whole = tcp_super_frame(20_000);
    assert_eq!(
        n.tap_turn(0, VNI_FRONT, &[tso_read(&whole, 1410)]),
        vec![None]
    );
    let sent = &n.hosts[0].io.sent;
    assert_eq!(sent.len(), SEGS, "one send per datagram");
    assert!(sent.iter().all(|s| *s == (ul(2), 1, None)), "{sent:?}");
    let s = n.stats(0, VNI_FRONT);
    assert_eq!(s.vxlan_tx_packets.load(Relaxed), SEGS as u64);
    assert_eq!(s.drops.get(DropReason::SendError), 0);
    assert!(n.run().is_empty());
    assert_eq!(n.host(ul(2)).io.tap_out.len(), SEGS);
}

#[test]
fn consecutive_tcp_segments_reach_a_vnet_tap_as_one_gso_write() {
    let mut n = cluster(false, 16);
    n.hosts[0].io.tap = VNET;
    n.hosts[1].io.tap = VNET;
    let whole = tcp_super_frame(20_000);
    let _ = n.tap_turn(0, VNI_FRONT, &[tso_read(&whole, 1410)]);
    assert_eq!(n.wire.len(), SEGS);
    assert!(n.run().is_empty());
    let out = &n.host(ul(2)).io.tap_out;
    assert_eq!(out.len(), 1, "GRO joined the segments into one TAP write");
    let h = virtio::Header::parse(&out[0].1).expect("a virtio-net header");
    assert_eq!(h.gso(), virtio::GSO_TCPV4);
    assert_eq!(h.gso_size, 1410);
    assert_eq!(h.flags, virtio::F_NEEDS_CSUM);
    // Finishing the checksum as the kernel does gives the frame sent.
    let mut frame = out[0].1[virtio::LEN..].to_vec();
    let (start, offset) = (usize::from(h.csum_start), usize::from(h.csum_offset));
    assert!(virtio::finish_csum(&mut frame, start, offset));
    assert_eq!(frame, whole);
    assert_eq!(n.stats(1, VNI_FRONT).tap_tx_packets.load(Relaxed), 1);
}

/// `count` UDP datagrams of one flow from ov(1) to ov(2), 100 payload
/// bytes each, IPv4 ids `first`, `first + 1`, ... (as a sender numbers
/// them).
fn udp_run(first: u16, count: u16) -> Vec<Vec<u8>> {
    use vxmesh_dataplane::offload::csum::{fold, sum};
    (first..first + count)
        .map(|id| {
            let payload = [id as u8; 100];
            let mut f = udp_frame(ov(1), ov(2), MacAddr::from_ipv4(ov(2)), &payload);
            f[18..20].copy_from_slice(&id.to_be_bytes());
            f[24..26].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&f[14..34], 0));
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        })
        .collect()
}

/// What a TAP with virtio-net headers gets for a frame written alone.
fn plain_write(frame: &[u8]) -> Vec<u8> {
    [&[0u8; virtio::LEN][..], frame].concat()
}

#[test]
fn a_run_of_udp_datagrams_leaves_in_one_send_and_reaches_a_uso_tap_as_one_write() {
    let mut n = cluster(false, 16);
    n.hosts[1].io.tap = TapOffloads {
        vnet_hdr: true,
        uso_write: true,
    };
    let run = udp_run(1, 5);
    assert_eq!(n.tap_turn(0, VNI_FRONT, &run), vec![None; 5]);
    assert_eq!(
        n.hosts[0].io.sent,
        vec![(ul(2), 5, Some(vxlan::HEADER_LEN + run[0].len()))]
    );
    assert!(n.run().is_empty());
    let out = &n.host(ul(2)).io.tap_out;
    assert_eq!(out.len(), 1, "one UDP GSO frame");
    let h = virtio::Header::parse(&out[0].1).expect("a virtio-net header");
    assert_eq!((h.gso(), h.gso_size), (virtio::GSO_UDP_L4, 100));
    // The kernel's cut gives the datagrams back, byte for byte.
    let mut cut = Vec::new();
    let mut scratch = vec![0u8; 2048];
    vxmesh_dataplane::offload::gso::segment_udp(&out[0].1[virtio::LEN..], 100, &mut scratch, |d| {
        cut.push(d.to_vec())
    })
    .expect("a UDP GSO frame");
    assert_eq!(cut, run);
}

#[test]
fn a_tap_that_refuses_udp_gso_frames_gets_the_datagrams_one_by_one_from_then_on() {
    let mut n = cluster(false, 16);
    n.hosts[1].io.tap = TapOffloads {
        vnet_hdr: true,
        uso_write: true,
    };
    n.hosts[1].io.refuse_udp_gso = true;
    let first = udp_run(1, 5);
    let _ = n.tap_turn(0, VNI_FRONT, &first);
    assert!(n.run().is_empty());
    let h2 = &n.host(ul(2)).io;
    assert_eq!(h2.refused, 1);
    assert!(!h2.tap.uso_write, "no more UDP GSO frames for this TAP");
    let want: Vec<_> = first.iter().map(|f| (VNI_FRONT, plain_write(f))).collect();
    assert_eq!(h2.tap_out, want, "cut and written one by one");
    // The next run is not joined at all.
    let second = udp_run(6, 5);
    let _ = n.tap_turn(0, VNI_FRONT, &second);
    assert!(n.run().is_empty());
    let h2 = &n.host(ul(2)).io;
    assert_eq!(h2.refused, 1, "never offered another UDP GSO frame");
    assert_eq!(h2.tap_out.len(), 10);
    assert_eq!(h2.tap_out[9], (VNI_FRONT, plain_write(&second[4])));
    assert_eq!(n.stats(1, VNI_FRONT).tap_tx_packets.load(Relaxed), 10);
    assert_eq!(n.stats(1, VNI_FRONT).drops.get(DropReason::TapError), 0);
}
