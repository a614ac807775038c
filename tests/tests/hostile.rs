//! Hostile input and faults under traffic: a crash and restart, the
//! underlay link cut and restored, a flood of forged source MACs with
//! learning on, what listens where, a connection flood, broadcast and ARP
//! storms. Faults on the mesh's connections are in `faults.rs`.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{Lab, FRONT_ONLY};
use nix::sys::signal::Signal;
use vxmesh_netns::{icmp_ping, require_root, udp_stats, UdpFlood};

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn replies(lab: &Lab, from: &str, to: Ipv4Addr, count: u32) -> u32 {
    icmp_ping(
        &lab.tb,
        &lab.tb.ns(from),
        to,
        count,
        Duration::from_millis(20),
        Duration::from_secs(3),
    )
    .map(|p| p.received)
    .unwrap_or(0)
}

/// Polls until `from` reaches `to` again; returns how long it took.
fn until_reachable(lab: &Lab, from: &str, to: Ipv4Addr, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while replies(lab, from, to, 1) == 0 {
        assert!(t0.elapsed() < limit, "{from} -> {to} never came back");
    }
    t0.elapsed()
}

#[test]
fn a_killed_daemon_restarts_cleanly_and_traffic_resumes() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("kill9", 2, FRONT_ONLY);
    lab.start("h1");
    lab.start("h2");
    assert_eq!(replies(&lab, "h2", ov(1), 3), 3);
    let ifindex = |lab: &Lab| {
        let out = lab
            .tb
            .exec(&lab.tb.ns("h1"), &["ip", "-o", "link", "show", "vxm-front"])
            .expect("the TAP is there");
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()
            .unwrap()
            .to_string()
    };
    let before = ifindex(&lab);
    let (_, p) = lab.daemons.remove(0);
    lab.tb.signal(&p, Signal::SIGKILL).unwrap();
    lab.tb
        .wait_exit(&p, Duration::from_secs(5))
        .expect("killed");
    // The TAP is persistent: it stays, with no process behind it.
    assert_eq!(ifindex(&lab), before, "the TAP outlived the daemon");
    assert_eq!(replies(&lab, "h2", ov(1), 2), 0, "h1 is gone");
    // Restart with the stale admin socket file still there: replaced; the
    // TAP is reattached, not re-created.
    assert!(lab.socket("h1").exists());
    lab.start("h1");
    assert_eq!(ifindex(&lab), before, "the same TAP");
    let took = until_reachable(&lab, "h2", ov(1), Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(2),
        "overlay back {took:?} after the restart"
    );
}

#[test]
fn traffic_resumes_after_the_underlay_link_comes_back() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("linkcut", 2, FRONT_ONLY);
    lab.start("h1");
    lab.start("h2");
    assert_eq!(replies(&lab, "h1", ov(2), 3), 3);
    let h2 = lab.tb.ns("h2");
    lab.tb
        .exec(&h2, &["ip", "link", "set", "eth0", "down"])
        .unwrap();
    assert_eq!(replies(&lab, "h1", ov(2), 3), 0, "the link is cut");
    lab.tb
        .exec(&h2, &["ip", "link", "set", "eth0", "up"])
        .unwrap();
    until_reachable(&lab, "h1", ov(2), Duration::from_secs(10));
    assert_eq!(replies(&lab, "h1", ov(2), 5), 5);
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The VXLAN datagram of the MAC flood: VNI 4096, to h1's TAP MAC, from
/// source MAC 02:ee:<i>, ethertype 0x88b5 (IEEE local experimental).
fn forged(i: u64, d: &mut [u8]) {
    d[0] = 0x08;
    d[4..7].copy_from_slice(&[0x00, 0x10, 0x00]);
    d[8..14].copy_from_slice(&[0x02, 0x42, 10, 0, 9, 1]);
    let b = (i as u32).to_be_bytes();
    d[14..20].copy_from_slice(&[0x02, 0xee, b[0], b[1], b[2], b[3]]);
    d[20..22].copy_from_slice(&[0x88, 0xb5]);
}

#[test]
fn a_flood_of_forged_source_macs_stays_at_the_cap() {
    if !require_root() {
        return;
    }
    let config = FRONT_ONLY.replace(
        "subnet = \"10.0.9.0/24\"",
        "subnet = \"10.0.9.0/24\"\nlearning = true\nfdb_cap = 1000",
    );
    let mut lab = Lab::new("macs", 3, &config);
    for h in ["h1", "h2", "h3"] {
        lab.start(h);
    }
    let pid = lab.daemons[0].1.pid;
    let rss_before = rss_kib(pid);
    // 1,000,000 frames, each from a new MAC, sent by member h2 to h1 while
    // h3 pings h1. The sender keeps at most 256 datagrams in flight (sent,
    // not yet read by h1's daemon), so the flood is as fast as h1 takes it
    // and nothing is lost to a full queue on the way.
    const FRAMES: u64 = 1_000_000;
    let flood = UdpFlood {
        from: "198.18.0.2:47000".parse().unwrap(),
        to: "198.18.0.1:4789".parse().unwrap(),
        count: FRAMES,
        len: 8 + 60,
        limit: Duration::from_secs(60),
    };
    let before = udp_stats(pid).unwrap();
    let ready = move |sent| {
        let read = udp_stats(pid).unwrap().in_datagrams - before.in_datagrams;
        sent < read + 256
    };
    let (sent, pings) = lab.pinging("h3", ov(1), || {
        flood.run(&lab.tb, &lab.tb.ns("h2"), forged, ready).unwrap()
    });
    eprintln!(
        "flood: {} datagrams in {:.1?} ({:.0}/s, held back {} times); pings {}/{}",
        sent.sent,
        sent.elapsed,
        sent.rate(),
        sent.held_back,
        pings.received,
        pings.sent
    );
    assert_eq!(sent.sent, FRAMES, "the flood ran to the end in time");
    // Wait (bounded) until h1 has taken in what is still queued.
    let seen = |lab: &Lab| {
        let s = lab.status("h1");
        let n = &s["networks"][0];
        n["stats"]["learned"].as_u64().unwrap() + n["stats"]["fdb_full"].as_u64().unwrap()
    };
    lab.until(Duration::from_secs(10), || seen(&lab) >= FRAMES)
        .unwrap_or_else(|| {
            let lost = udp_stats(pid).unwrap().rcvbuf_errors - before.rcvbuf_errors;
            panic!(
                "h1 saw {} of {FRAMES} ({lost} lost to its socket buffer)",
                seen(&lab)
            )
        });
    let s = lab.status("h1");
    let n = &s["networks"][0];
    assert_eq!(
        n["fdb_learned"].as_u64().unwrap(),
        1000,
        "the table stops at its cap"
    );
    // A full table makes room once a second (stalest first), so learning
    // never stops for good; every MAC was either learned or refused, and
    // every learned one beyond the cap pushed an older one out.
    let st = &n["stats"];
    let (learned, full, evicted) = (
        st["learned"].as_u64().unwrap(),
        st["fdb_full"].as_u64().unwrap(),
        st["fdb_evicted"].as_u64().unwrap(),
    );
    assert_eq!(learned + full, FRAMES, "every refusal is counted: {n}");
    assert_eq!(learned - evicted, 1000, "evictions keep the cap: {n}");
    if sent.elapsed > Duration::from_secs(2) {
        assert!(evicted > 0, "a flood over seconds gets room made: {n}");
    }
    let grew = rss_kib(pid).saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "memory stays bounded: grew {grew} KiB");
    // Known endpoints kept working during the flood, and still do.
    assert!(
        pings.sent >= 10 && pings.received * 100 >= pings.sent * 95,
        "h3 -> h1 during the flood: {}/{} replies",
        pings.received,
        pings.sent
    );
    assert_eq!(replies(&lab, "h1", ov(3), 3), 3);
    assert_eq!(replies(&lab, "h2", ov(1), 3), 3);
    assert!(lab.daemons[0].1.exit_status().is_none(), "h1 stayed up");
}

#[test]
fn nothing_listens_beyond_what_is_configured() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("binds", 1, FRONT_ONLY);
    lab.start("h1");
    let ns = lab.tb.ns("h1");
    let udp = String::from_utf8(lab.tb.exec(&ns, &["ss", "-Hlun"]).unwrap().stdout).unwrap();
    let tcp = String::from_utf8(lab.tb.exec(&ns, &["ss", "-Hltn"]).unwrap().stdout).unwrap();
    for line in udp.lines() {
        // VXLAN on the data-path address; anything else (the DNS responder)
        // on the node's own overlay addresses, never on a wildcard.
        assert!(
            line.contains(" 198.18.0.1:") || line.contains(" 10.0.9."),
            "UDP bound to the data-path or an overlay address only: {line}"
        );
    }
    // TCP: only the DNS responder (on the network's DNS address, for
    // truncated answers); nothing else without services or --admin-addr.
    for line in tcp.lines() {
        assert!(
            line.contains(" 10.0.9.254:53 "),
            "no TCP listener but DNS without services or --admin-addr: {line}"
        );
    }
    assert_eq!(tcp.lines().count(), 1, "DNS over TCP listens: {tcp}");
}

#[test]
fn a_connection_flood_is_refused_cleanly_at_the_service_limit() {
    if !require_root() {
        return;
    }
    let config = format!(
        "{FRONT_ONLY}\n[[services]]\nname = \"web\"\nnetwork = \"front\"\ntasks = [\"10.0.9.2\"]\nports = [{{ published = 8080, target = 80 }}]\nmax_connections = 5\n"
    );
    let mut lab = Lab::new("connfl", 2, &config);
    lab.tb.add_host("cl", "198.18.0.100/24", 1500).unwrap();
    lab.start("h1");
    lab.start("h2");
    let _task = common::backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", ov(2), false);
    let cl = lab.tb.ns("cl");
    // 20 idle connections at once: 5 are relayed, 15 closed at once.
    let (held, closed) = lab
        .tb
        .in_ns(&cl, || {
            use std::io::Read;
            let conns: Vec<std::net::TcpStream> = (0..20)
                .map(|_| std::net::TcpStream::connect("198.18.0.1:8080").unwrap())
                .collect();
            let (mut held, mut closed) = (0, 0);
            for mut c in conns {
                c.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut b = [0u8; 1];
                match c.read(&mut b) {
                    Ok(0) => closed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
                    _ => held += 1, // still open: relayed to the task
                }
            }
            (held, closed)
        })
        .unwrap();
    assert_eq!((held, closed), (5, 15), "held / closed");
    let svc = lab.cli_json("h1", &["service", "inspect", "web"]);
    assert_eq!(svc["refused_connections"], 15);
    // The flood is over: a normal request is served again.
    let (body, _) = common::backend::get(&lab.tb, &cl, "198.18.0.1:8080".parse().unwrap(), "/")
        .expect("served after the flood");
    assert!(body.starts_with("task2"));
}

/// Three hosts with daemons, the network's floods limited to 100 frames/s.
fn flood_limited_lab(tag: &str) -> Lab {
    let config = FRONT_ONLY.replace(
        "subnet = \"10.0.9.0/24\"",
        "subnet = \"10.0.9.0/24\"\nflood_pps = 100",
    );
    let mut lab = Lab::new(tag, 3, &config);
    for h in ["h1", "h2", "h3"] {
        lab.start(h);
    }
    lab
}

/// What `flood_limited_lab` floods in `elapsed` seconds: 100 frames/s plus
/// the bucket's burst (100) and a margin.
fn assert_within_flood_rate(flooded: u64, elapsed: f64) {
    assert!(
        (flooded as f64) <= 100.0 + 100.0 * elapsed + 20.0,
        "what was flooded stayed within 100 frames/s plus the burst: {flooded} in {elapsed:.1} s"
    );
}

const BROADCAST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("vxm-front", 0))
frame = bytes.fromhex("ffffffffffff02420a000901" + "0806" + "0001080006040001" + "02420a000901" + "0a000901" + "000000000000" + "0a000963")
for _ in range(int(sys.argv[1])):
    s.send(frame)
"#;

#[test]
fn a_broadcast_storm_is_rate_limited_and_unicast_goes_on() {
    if !require_root() {
        return;
    }
    let lab = flood_limited_lab("bstorm");
    // 5,000 ARP requests for an address nobody has, as fast as python sends.
    lab.tb
        .exec(&lab.tb.ns("h1"), &["python3", "-c", BROADCAST, "5000"])
        .unwrap();
    // Some of the storm never reaches the daemon (the TAP's queue overflows
    // in the kernel); what does is either flooded, within the limit, or
    // dropped as flood_rate. Wait (bounded) until the counters settle.
    let t0 = Instant::now();
    let mut last = (0, 0);
    loop {
        let now = (
            lab.net_drops("h1", "front", "flood_rate"),
            lab.counter("h1", "front", "flooded_frames"),
        );
        if now == last && now.0 > 0 || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (limited, flooded) = last;
    let elapsed = t0.elapsed().as_secs_f64() + 1.0;
    // How much of the storm the kernel let through its 1000-frame TAP
    // queue varies with the machine's load; at least that queue's worth
    // does, and all of it beyond the limit's burst is cut.
    assert!(
        limited >= 500 && limited + flooded >= 900,
        "the storm was cut at h1: {limited} dropped, {flooded} flooded"
    );
    assert_within_flood_rate(flooded, elapsed);
    assert_eq!(replies(&lab, "h1", ov(2), 3), 3, "unicast goes on");
}

/// An ARP storm from the workload on a host's TAP: argv[1] requests at
/// argv[2] per second, every other one for a known endpoint (10.0.9.2 and
/// .3, answered on the host) and the rest for 100 addresses nobody has
/// (flooded, so rate limited). Prints the known and unknown requests the
/// kernel took.
const ARP_STORM: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("vxm-front", 0))
me = bytes.fromhex("02420a000901")
def request(last):
    return b"\xff" * 6 + me + b"\x08\x06" + bytes.fromhex("0001080006040001") + me + bytes([10, 0, 9, 1]) + bytes(6) + bytes([10, 0, 9, last])
known = [request(2), request(3)]
unknown = [request(n) for n in range(100, 200)]
total, rate = int(sys.argv[1]), float(sys.argv[2])
sent = [0, 0]
t0 = time.monotonic()
for i in range(total):
    frame = known[(i // 2) % 2] if i % 2 else unknown[(i // 2) % 100]
    try:
        s.send(frame)
        sent[i % 2] += 1
    except OSError:
        pass
    if i % 100 == 99:
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
print(sent[1], sent[0])
"#;

#[test]
fn an_arp_storm_is_answered_or_limited_and_known_endpoints_resolve() {
    if !require_root() {
        return;
    }
    let lab = flood_limited_lab("arpstorm");
    let h1 = lab.tb.ns("h1");
    let answered_before = lab.counter("h1", "front", "arp_answered");
    // 60,000 requests over 3 s from h1's workload, while h1 pings h2 and,
    // in a loop, forgets h3's address and resolves it again.
    let t0 = Instant::now();
    let ((storm, resolved), pings) = lab.pinging("h1", ov(2), || {
        std::thread::scope(|s| {
            let storm = s.spawn(|| {
                lab.tb
                    .exec_timeout(
                        &h1,
                        &["python3", "-c", ARP_STORM, "60000", "20000"],
                        Duration::from_secs(30),
                    )
                    .expect("the storm ran")
            });
            let mut resolved = (0, 0);
            while !storm.is_finished() {
                lab.tb
                    .exec(&h1, &["ip", "neigh", "flush", "to", "10.0.9.3"])
                    .unwrap();
                resolved.0 += replies(&lab, "h1", ov(3), 1);
                resolved.1 += 1;
            }
            (storm.join().unwrap(), resolved)
        })
    });
    let out = String::from_utf8_lossy(&storm.stdout).to_string();
    let (known, unknown): (u64, u64) = out
        .split_once(' ')
        .map(|(k, u)| (k.trim().parse().unwrap(), u.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("storm output: {out:?}"));
    // Wait (bounded) until the counters settle.
    let counters = |lab: &Lab| {
        (
            lab.counter("h1", "front", "arp_answered") - answered_before,
            lab.net_drops("h1", "front", "flood_rate"),
            lab.counter("h1", "front", "flooded_frames"),
        )
    };
    let mut last = counters(&lab);
    lab.until(Duration::from_secs(5), || {
        let now = counters(&lab);
        std::mem::replace(&mut last, now) == now
    });
    let (answered, limited, flooded) = last;
    let elapsed = t0.elapsed().as_secs_f64();
    eprintln!(
        "storm: {known} known + {unknown} unknown in {elapsed:.1} s; answered {answered}, \
         limited {limited}, flooded {flooded}; h1 resolved h3 {}/{}; pings {}/{}",
        resolved.0, resolved.1, pings.received, pings.sent
    );
    assert!(known + unknown >= 50_000, "the storm was sent: {out}");
    assert!(
        answered * 10 >= known * 9,
        "requests for known endpoints are answered on the host: {answered} of {known}"
    );
    assert!(
        (limited + flooded) * 10 >= unknown * 9 && limited > flooded * 10,
        "requests for unknown addresses are cut at h1: {limited} dropped, {flooded} flooded of {unknown}"
    );
    assert_within_flood_rate(flooded, elapsed);
    assert!(
        resolved.1 >= 3 && resolved.0 == resolved.1,
        "h1 resolved h3 again each time during the storm: {resolved:?}"
    );
    assert!(
        pings.sent >= 10 && pings.received * 100 >= pings.sent * 95,
        "h1 -> h2 during the storm: {}/{} replies",
        pings.received,
        pings.sent
    );
    assert!(lab.daemons[0].1.exit_status().is_none(), "h1 stayed up");
    assert_eq!(replies(&lab, "h3", ov(1), 3), 3);
}
