//! End to end: vxmeshd on hosts made of network namespaces.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::{Lab, FRONT_ONLY};
use vxmesh_netns::{icmp_ping, iperf3_tcp, require_root};

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn ping_ok(lab: &Lab, from: &str, dst: Ipv4Addr) {
    let p = icmp_ping(
        &lab.tb,
        &lab.tb.ns(from),
        dst,
        5,
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .expect("ping runs");
    assert_eq!(
        p.received, p.sent,
        "{from} -> {dst}: {} of {} replies",
        p.received, p.sent
    );
}

#[test]
fn three_hosts_reach_each_other_and_arp_never_floods() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("ovl3", 3, FRONT_ONLY);
    for h in ["h1", "h2", "h3"] {
        lab.no_ipv6(h);
        lab.start(h);
    }
    let before: u64 = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.counter(h, "front", "flood_copies"))
        .sum();
    let hosts = [("h1", 1u8), ("h2", 2), ("h3", 3)];
    for (from, _) in hosts {
        for (to, n) in hosts {
            if from != to {
                ping_ok(&lab, from, ov(n));
            }
        }
    }
    let after: u64 = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.counter(h, "front", "flood_copies"))
        .sum();
    // Every host holds its peers' entries, permanent (from the store; no
    // ARP that anyone answers can move them), so nothing was flooded.
    for (from, _) in hosts {
        for (to, n) in hosts {
            if from != to {
                let out = lab
                    .tb
                    .exec(
                        from,
                        &[
                            "ip",
                            "neigh",
                            "show",
                            &ov(n).to_string(),
                            "dev",
                            "vxm-front",
                        ],
                    )
                    .expect("ip neigh");
                let entry = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(entry.contains("PERMANENT"), "{from} -> {to}: {entry}");
            }
        }
    }
    assert_eq!(after, before, "no flood copies");
    // Bulk TCP over the overlay between every pair, both ways.
    let mut port = 5300;
    for (from, _) in hosts {
        for (to, n) in hosts {
            if from == to {
                continue;
            }
            port += 1;
            let (srv, cli) = (lab.tb.ns(to), lab.tb.ns(from));
            let gbit = iperf3_tcp(&mut lab.tb, &srv, &cli, ov(n), port, 2, 1).expect("iperf3");
            assert!(gbit > 0.01, "{from} -> {to}: {gbit} Gbit/s");
        }
    }
    // The outer source address is always the data-path address, and the
    // sockets are bound to it, never to 0.0.0.0.
    let ss = lab.tb.exec(&lab.tb.ns("h1"), &["ss", "-Hlun"]).expect("ss");
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        ss.contains("198.18.0.1:4789"),
        "bound to the data-path address: {ss}"
    );
    assert!(
        !ss.contains("0.0.0.0:4789") && !ss.contains("*:4789"),
        "{ss}"
    );
}

const TWO_NETWORKS: &str = vxmesh_netns::fixtures::TWO_NETWORKS;

#[test]
fn two_networks_on_the_same_hosts_stay_apart() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("ovl2n", 2, TWO_NETWORKS);
    for h in ["h1", "h2"] {
        lab.no_ipv6(h);
        lab.start(h);
    }
    ping_ok(&lab, "h1", ov(2));
    ping_ok(&lab, "h1", Ipv4Addr::new(10, 0, 10, 2));
    // Send to h2's `back` MAC through `front`: the frame travels on VNI 4096
    // and must never come out of h2's `back` TAP.
    let h1 = lab.tb.ns("h1");
    lab.tb
        .exec(
            &h1,
            &[
                "ip",
                "neigh",
                "replace",
                "10.0.9.2",
                "lladdr",
                "02:42:0a:00:0a:02",
                "dev",
                "vxm-front",
                "nud",
                "permanent",
            ],
        )
        .expect("neigh");
    let back_rx = lab.counter("h2", "back", "vxlan_rx_packets");
    let p = icmp_ping(
        &lab.tb,
        &h1,
        ov(2),
        3,
        Duration::from_millis(20),
        Duration::from_secs(2),
    )
    .expect("ping runs");
    assert_eq!(
        p.received, 0,
        "a frame addressed to another network's MAC got an answer"
    );
    assert_eq!(
        lab.counter("h2", "back", "vxlan_rx_packets"),
        back_rx,
        "nothing arrived on `back`"
    );
    assert!(lab.counter("h2", "front", "vxlan_rx_packets") > 0);
}

#[test]
fn hostile_datagrams_are_counted_and_forwarding_goes_on() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("ovlbad", 2, FRONT_ONLY);
    lab.tb
        .add_host("rogue", "198.18.0.99/24", 1500)
        .expect("rogue host");
    for h in ["h1", "h2"] {
        lab.start(h);
    }
    ping_ok(&lab, "h2", ov(1));
    let target = "198.18.0.1:4789";
    let header = |vni: u32| {
        let v = vni.to_be_bytes();
        [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
    };
    let mut inner = vec![0u8; 60];
    inner[..6].copy_from_slice(&[0x02, 0x42, 10, 0, 9, 1]);
    inner[6..12].copy_from_slice(&[0x02, 0x42, 10, 0, 9, 2]);
    inner[12..14].copy_from_slice(&[0x08, 0x00]);
    let with = |h: [u8; 8], body: &[u8]| {
        let mut d = h.to_vec();
        d.extend_from_slice(body);
        d
    };
    // From a host that is not a member node.
    let bad_peer = vec![with(header(4096), &inner)];
    let sent = bad_peer.clone();
    lab.tb
        .in_ns(&lab.tb.ns("rogue"), move || {
            let s = UdpSocket::bind("198.18.0.99:0").unwrap();
            for d in sent {
                s.send_to(&d, target).unwrap();
            }
        })
        .unwrap();
    // From a member (h2's data-path address), but wrong or broken.
    let mut no_i = header(4096);
    no_i[0] = 0;
    let mut random = vec![0u8; 300];
    let mut x: u32 = 0x1234_5678;
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    random[0] = 0x08; // keep it past the flag check: a random inner frame
    let datagrams = vec![
        with(header(999), &inner),             // unknown VNI
        with(no_i, &inner),                    // I flag missing
        vec![0x08, 0, 0],                      // truncated header
        with(header(4096), &inner[..9]),       // truncated inner frame
        random,                                // random bytes (VNI from the noise)
        with(header(4096), &vec![0u8; 60000]), // giant
    ];
    lab.tb
        .in_ns(&lab.tb.ns("h2"), move || {
            let s = UdpSocket::bind("198.18.0.2:0").unwrap();
            for d in datagrams {
                s.send_to(&d, target).unwrap();
            }
        })
        .unwrap();
    // Counted by reason (the CLI reads the live counters).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let total = lab.global_drops("h1", "unknown_peer")
            + lab.global_drops("h1", "unknown_vni")
            + lab.global_drops("h1", "bad_flags")
            + lab.global_drops("h1", "malformed")
            + lab.net_drops("h1", "front", "malformed")
            + lab.net_drops("h1", "front", "mtu");
        if total >= 7 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(lab.global_drops("h1", "unknown_peer"), 1);
    assert!(
        lab.global_drops("h1", "unknown_vni") >= 1,
        "wrong VNI counted"
    );
    assert_eq!(lab.global_drops("h1", "bad_flags"), 1);
    assert_eq!(
        lab.global_drops("h1", "malformed"),
        1,
        "truncated header counted"
    );
    assert!(
        lab.net_drops("h1", "front", "malformed") >= 1,
        "truncated inner frame counted"
    );
    assert_eq!(lab.net_drops("h1", "front", "mtu"), 1, "giant counted");
    // And the daemon keeps forwarding.
    ping_ok(&lab, "h2", ov(1));
    ping_ok(&lab, "h1", ov(2));
}

/// Reads so far on `side` (`tap_reads`, `underlay_reads`) of `host`'s
/// dataplane lanes, in name order.
fn worker_reads(lab: &Lab, host: &str, side: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = lab.status(host)["workers"]
        .as_array()
        .expect("workers in the status")
        .iter()
        .filter_map(|w| {
            let name = w["name"].as_str()?;
            Some((name.to_string(), w[side].as_u64().unwrap_or(0)))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn each_queue_has_its_worker_and_parallel_flows_use_them_all() {
    if !require_root() {
        return;
    }
    let config = format!("[settings]\nqueues = 2\n{FRONT_ONLY}");
    let mut lab = Lab::new("ovlq", 2, &config);
    for h in ["h1", "h2"] {
        lab.no_ipv6(h);
        lab.start(h);
    }
    // The daemon holds both queues of its TAP.
    let pid = lab.daemons[0].1.pid;
    let queues = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.lines().any(|l| l == "iff:\tvxm-front"))
        .count();
    assert_eq!(queues, 2, "descriptors attached to vxm-front");
    ping_ok(&lab, "h1", ov(2));
    // 16 streams: the kernel spreads them over the TAP queues by flow hash
    // on h1 and over the receiving sockets by outer 4-tuple on h2; the
    // chance that all land on one of two is 2^-15.
    let (srv, cli) = (lab.tb.ns("h2"), lab.tb.ns("h1"));
    let gbit = iperf3_tcp(&mut lab.tb, &srv, &cli, ov(2), 5401, 2, 16).expect("iperf3");
    assert!(gbit > 0.01, "16 streams h1 -> h2: {gbit} Gbit/s");
    for (host, side) in [("h1", "tap_reads"), ("h2", "underlay_reads")] {
        let reads = worker_reads(&lab, host, side);
        assert_eq!(reads.len(), 2, "{host}: {reads:?}");
        for (name, n) in &reads {
            assert!(*n >= 100, "{host}'s {name} read only {n}: {reads:?}");
        }
    }
}

/// Two hosts on `front` without IPv6 chatter, daemons running, h1 -> h2
/// reachable.
fn two_hosts_up(tag: &str) -> Lab {
    two_hosts_up_with(tag, &[])
}

/// [`two_hosts_up`] with extra environment variables for both daemons.
fn two_hosts_up_with(tag: &str, envs: &[(&str, &str)]) -> Lab {
    let mut lab = Lab::new(tag, 2, FRONT_ONLY);
    for h in ["h1", "h2"] {
        lab.no_ipv6(h);
        lab.start_with(h, envs);
    }
    ping_ok(&lab, "h1", ov(2));
    lab
}

/// The payload of test datagram `seq`: its number, then a pattern of it.
fn udp_payload(seq: u32) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((0..96u32).map(|i| (i * 7 + seq) as u8));
    p
}

/// Binds a UDP receiver at `ov(2):port` in h2 (8 MiB buffer, as far as the
/// host allows) and collects `total` datagrams, or what came within 5 s of
/// silence; returns once it is bound.
fn udp_receiver(
    lab: &Lab,
    port: u16,
    total: usize,
) -> std::thread::JoinHandle<Result<Vec<Vec<u8>>, vxmesh_netns::Error>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let recv = lab
        .tb
        .thread_in_ns(&lab.tb.ns("h2"), move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            s.set_recv_buffer_size(8 << 20).unwrap();
            s.bind(&std::net::SocketAddr::from((ov(2), port)).into())
                .unwrap();
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while got.len() < total {
                match s.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            got
        })
        .unwrap();
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver bound");
    recv
}

/// Every datagram arrived, unchanged and in order.
fn assert_datagrams(got: &[Vec<u8>], total: u32) {
    assert_eq!(got.len(), total as usize, "datagrams received");
    for (seq, d) in got.iter().enumerate() {
        assert_eq!(
            d,
            &udp_payload(seq as u32),
            "datagram {seq} changed or out of order"
        );
    }
}

/// Bursts of same-sized UDP datagrams from one socket reach the receiver
/// whole and in order, and the receiving node wrote them into its TAP as
/// UDP GSO runs (fewer TAP writes than datagrams): the kernel took the
/// frames and cut them back into exactly what was sent.
#[test]
fn udp_bursts_arrive_whole_and_in_order_through_fewer_tap_writes() {
    if !require_root() {
        return;
    }
    const BURSTS: u32 = 40;
    const PER_BURST: u32 = 50;
    const TOTAL: u32 = BURSTS * PER_BURST;
    let lab = two_hosts_up("ovludp");
    let recv = udp_receiver(&lab, 5600, TOTAL as usize);
    let writes_before = lab.counter("h2", "front", "tap_tx_packets");
    send_bursts(&lab, 5600, BURSTS, PER_BURST);
    let got = recv.join().unwrap().unwrap();
    let writes = lab.counter("h2", "front", "tap_tx_packets") - writes_before;
    assert_datagrams(&got, TOTAL);
    assert!(
        writes < u64::from(TOTAL) / 2,
        "{TOTAL} datagrams took {writes} TAP writes on h2: runs were not joined"
    );
}

/// Sends datagrams 0.. from h1 to `ov(2):port` in `bursts` back-to-back
/// bursts of `per_burst`, pausing 2 ms between bursts.
fn send_bursts(lab: &Lab, port: u16, bursts: u32, per_burst: u32) {
    lab.tb
        .in_ns(&lab.tb.ns("h1"), move || {
            let s = UdpSocket::bind((ov(1), 0)).unwrap();
            s.connect((ov(2), port)).unwrap();
            for b in 0..bursts {
                for i in 0..per_burst {
                    s.send(&udp_payload(b * per_burst + i)).unwrap();
                }
                // Let the burst drain before the next (bounded).
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .unwrap();
}

/// Sends datagrams 0.. from h1 to `ov(2):port` as `sends` UDP_SEGMENT
/// sends of `per_send` datagrams each, pausing 2 ms between sends.
fn send_gso(lab: &Lab, port: u16, sends: u32, per_send: u32) {
    lab.tb
        .in_ns(&lab.tb.ns("h1"), move || {
            let s = UdpSocket::bind((ov(1), 0)).unwrap();
            s.connect((ov(2), port)).unwrap();
            let size = udp_payload(0).len() as i32;
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::UdpGsoSegment, &size)
                .unwrap();
            for k in 0..sends {
                let buf: Vec<u8> = (0..per_send)
                    .flat_map(|i| udp_payload(k * per_send + i))
                    .collect();
                assert_eq!(s.send(&buf).unwrap(), buf.len());
                // One super-frame at a time (bounded).
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .unwrap();
}

/// On a kernel before 6.2 (emulated on both daemons with
/// `VXMESH_EMULATE_PRE_6_2=1`) a TAP offers no USO and refuses UDP GSO
/// writes. The first run joined for h2's TAP is refused, cut and written
/// datagram by datagram; nothing is joined after that; and every datagram
/// arrives whole and in order, from a plain sender and from a UDP_SEGMENT
/// sender (whose super-frames the kernel now cuts before h1's TAP).
#[test]
fn before_linux_6_2_udp_falls_back_to_single_writes_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let lab = two_hosts_up_with(
        "ovlold",
        &[(vxmesh_dataplane::io::tap::EMULATE_PRE_6_2, "1")],
    );
    let flags = |h: &str| lab.status(h)["dataplane"].clone();
    for h in ["h1", "h2"] {
        let f = flags(h);
        assert_eq!(f["tap_uso"], false, "no USO on {h}'s TAP: {f}");
    }

    const BURSTS: u32 = 20;
    const PER_BURST: u32 = 50;
    const TOTAL: u32 = BURSTS * PER_BURST;
    let recv = udp_receiver(&lab, 5602, TOTAL as usize);
    let writes_before = lab.counter("h2", "front", "tap_tx_packets");
    send_bursts(&lab, 5602, BURSTS, PER_BURST);
    let got = recv.join().unwrap().unwrap();
    let writes = lab.counter("h2", "front", "tap_tx_packets") - writes_before;
    assert_datagrams(&got, TOTAL);
    let f = flags("h2");
    assert_eq!(f["tap_uso_write"], false, "the refusal was noticed: {f}");
    assert!(
        writes >= u64::from(TOTAL),
        "{TOTAL} datagrams in {writes} TAP writes on h2: runs were still joined"
    );

    let recv = udp_receiver(&lab, 5603, 400);
    send_gso(&lab, 5603, 20, 20);
    assert_datagrams(&recv.join().unwrap().unwrap(), 400);
}

/// A sender using UDP_SEGMENT (one send, many datagrams, as QUIC stacks
/// do) hands h1's TAP UDP super-frames (USO); vxmeshd cuts them into the
/// datagrams the kernel would have made, and they arrive whole and in order.
#[test]
fn udp_gso_sends_are_cut_into_their_datagrams() {
    if !require_root() {
        return;
    }
    const SENDS: u32 = 20;
    const PER_SEND: u32 = 20;
    const TOTAL: u32 = SENDS * PER_SEND;
    let lab = two_hosts_up("ovluso");
    let offloads = lab.status("h1")["dataplane"].clone();
    assert_eq!(offloads["tap_uso"], true, "USO on h1's TAP: {offloads}");
    let tap_reads = |lab: &Lab| -> u64 {
        worker_reads(lab, "h1", "tap_reads")
            .iter()
            .map(|(_, n)| n)
            .sum()
    };
    let recv = udp_receiver(&lab, 5601, TOTAL as usize);
    let reads_before = tap_reads(&lab);
    send_gso(&lab, 5601, SENDS, PER_SEND);
    let got = recv.join().unwrap().unwrap();
    let reads = tap_reads(&lab) - reads_before;
    assert_datagrams(&got, TOTAL);
    assert!(
        reads < u64::from(TOTAL) / 2,
        "{TOTAL} datagrams took {reads} TAP reads on h1: no super-frames"
    );
}
