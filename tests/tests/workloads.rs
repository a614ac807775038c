//! Hostile workloads (#17): one container on h1 and one process in h1's
//! own namespace attack the network while legitimate traffic runs between
//! other containers, from a container on h1 to one on h2, and through a
//! published port; the legitimate traffic must lose nothing, and every
//! attack must move the counter of the guard that stopped it.
//!
//! Topology (etcd store): h1, h2, h3 with vxmeshd; attachable network
//! `front` (10.0.9.0/24, learning on, a small FDB cap, DNS forwarding to a
//! resolver on h1's loopback); attachable network `back` (10.0.10.0/24) on
//! h1 only; containers (plain namespaces attached with vxmesh-cni): `a1`
//! (the attacker) and `v1` on h1, `w2` on h2 and `w3` on h3 (tasks of the
//! service `web`, published on 8080), `b1` on `back`; a client `cl` on the
//! underlay.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{backend, cni, etcd, Lab};
use serde_json::Value;
use vxmesh_netns::require_root;

/// Sends `count` crafted frames on `iface`: argv = iface kind count own_ip
/// [target_ip [target_mac]]. Kinds: arp_claim (ARP reply claiming
/// target_ip), mac_of (a UDP frame from target_mac), ip_of (a UDP packet
/// from target_ip), ra, redirect6, redirect4, dhcp_offer, mac_flood (each
/// frame from a new MAC). Prints how many it sent.
const ATTACK: &str = r#"
import socket, struct, sys
iface, kind, count, own_ip = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
target_ip = sys.argv[5] if len(sys.argv) > 5 else "10.0.9.2"
target_mac = sys.argv[6] if len(sys.argv) > 6 else "02:00:00:00:00:01"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
own = s.getsockname()[4]
def mac(m): return bytes(int(x, 16) for x in m.split(":"))
BC = b"\xff" * 6
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
def ipv4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload
def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
def ipv6_icmp(kind):
    body = struct.pack("!BBH", kind, 0, 0) + b"\0" * 36
    return (struct.pack("!IHBB", 0x60000000, len(body), 58, 255)
            + bytes.fromhex("fe800000000000000000000000000001")
            + bytes.fromhex("ff020000000000000000000000000001") + body)
def frame(i):
    if kind == "arp_claim":
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + own + socket.inet_aton(target_ip) + BC + socket.inet_aton(target_ip)
        return BC + own + b"\x08\x06" + arp
    if kind == "mac_of":
        return BC + mac(target_mac) + b"\x08\x00" + ipv4(own_ip, "10.0.9.255", 17, udp(9, 9, b"x"))
    if kind == "ip_of":
        return BC + own + b"\x08\x00" + ipv4(target_ip, "10.0.9.255", 17, udp(9, 9, b"x"))
    if kind == "ra":
        return mac("33:33:00:00:00:01") + own + b"\x86\xdd" + ipv6_icmp(134)
    if kind == "redirect6":
        return mac("33:33:00:00:00:01") + own + b"\x86\xdd" + ipv6_icmp(137)
    if kind == "redirect4":
        icmp = struct.pack("!BBH4s", 5, 1, 0, socket.inet_aton(own_ip)) + b"\0" * 28
        return BC + own + b"\x08\x00" + ipv4(own_ip, "10.0.9.255", 1, icmp)
    if kind == "dhcp_offer":
        bootp = bytes([2, 1, 6, 0]) + b"\0" * 232 + bytes([99, 130, 83, 99, 53, 1, 2, 255])
        return BC + own + b"\x08\x00" + ipv4(own_ip, "255.255.255.255", 17, udp(67, 68, bootp))
    if kind == "mac_flood":
        src = bytes([2, 0xee, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        return BC + src + b"\x88\xb5" + b"\0" * 46
    raise SystemExit("unknown kind " + kind)
sent = 0
for i in range(count):
    s.send(frame(i))
    sent += 1
print(sent)
"#;

const FRONT_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 254);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, last)
}

/// Runs one attack from namespace `ns` on `iface`; returns what was sent.
fn attack(lab: &Lab, ns: &str, iface: &str, kind: &str, count: u32, args: &[&str]) -> u64 {
    let count = count.to_string();
    let mut argv = vec!["python3", "-c", ATTACK, iface, kind, &count];
    argv.extend_from_slice(args);
    let out = lab.tb.exec(ns, &argv).expect("attack script");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Packets the drop rules of `host`'s nftables table (`family`: inet or
/// bridge) whose comment contains `what` have counted.
fn nft_drops(lab: &Lab, host: &str, family: &str, what: &str) -> u64 {
    let table = format!("vxmesh_{host}");
    let out = lab
        .tb
        .exec(host, &["nft", "-j", "list", "table", family, &table])
        .expect("nft list");
    let v: Value = serde_json::from_slice(&out.stdout).expect("nft json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"].as_str().is_some_and(|c| c.contains(what)))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// `vxmesh_dns_guarded_total` of `host`'s network `net` for `guard`.
fn dns_guarded(lab: &Lab, host: &str, net: &str, guard: &str) -> u64 {
    common::sample(
        &lab.scrape(host),
        &format!("vxmesh_dns_guarded_total{{network=\"{net}\",guard=\"{guard}\"}}"),
    )
}

/// A DNS query for `name` (type A, no EDNS) with ID `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends `queries` DNS queries for `name` from namespace `ns` to `to` and
/// collects every answer for `wait`: (bytes sent, answers).
fn ask_dns(
    lab: &Lab,
    ns: &str,
    to: Ipv4Addr,
    name: &str,
    queries: u16,
    wait: Duration,
) -> (usize, Vec<Vec<u8>>) {
    let name = name.to_string();
    lab.tb
        .in_ns(ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut sent = 0;
            for id in 0..queries {
                let q = dns_query(id, &name);
                sent += q.len();
                let _ = s.send_to(&q, (to, 53));
            }
            let mut answers = Vec::new();
            let end = Instant::now() + wait;
            let mut buf = [0u8; 4096];
            while Instant::now() < end {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    answers.push(buf[..n].to_vec());
                }
            }
            (sent, answers)
        })
        .expect("dns client")
}

/// A resolver on `ns`'s loopback port 5353 that answers every query with
/// 100 A records (about 1.6 KB): what an amplification attack wants to
/// reflect. Runs until `stop`.
fn big_resolver(lab: &Lab, ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = lab
        .tb
        .thread_in_ns(ns, move || {
            let s = UdpSocket::bind("127.0.0.1:5353").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let mut a = buf[..n].to_vec();
                a[2] |= 0x80; // QR
                a[6..8].copy_from_slice(&100u16.to_be_bytes());
                for i in 0..100u8 {
                    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 99, 0, i]);
                }
                let _ = s.send_to(&a, from);
            }
        })
        .expect("resolver thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("resolver ready");
    std::thread::spawn(move || {
        let _ = h.join();
    })
}

/// Attaches namespace `ns` (created here) to `net` through `host`'s
/// daemon with vxmesh-cni, at `addr`, optionally as a task of `service`.
fn attach(lab: &mut Lab, host: &str, ns: &str, net: &str, addr: Ipv4Addr, service: Option<&str>) {
    lab.tb.add_namespace(ns).expect("workload namespace");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"{net}","type":"vxmesh-cni","socket":"{}"}}"#,
        lab.socket(host).display()
    );
    let mut args = format!("IP={addr}");
    if let Some(s) = service {
        args.push_str(&format!(";VXMESH_SERVICE={s}"));
    }
    let path = format!("/run/netns/{}", lab.tb.ns(ns));
    let (ok, v) = cni(
        "ADD",
        &format!("{ns}-{}", lab.tb.suffix()),
        &path,
        &args,
        &conf,
    );
    assert!(ok, "attaching {ns}: {v}");
}

/// The neighbour entry `host` has for `addr` on `dev`: "lladdr STATE".
fn neighbour(lab: &Lab, host: &str, dev: &str, addr: Ipv4Addr) -> String {
    let out = lab
        .tb
        .exec(
            host,
            &["ip", "neigh", "show", &addr.to_string(), "dev", dev],
        )
        .expect("ip neigh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_hostile_workload_disturbs_nobody_and_every_guard_counts_what_it_stopped() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("hostw", 3, "");
    lab.tb
        .add_host("cl", "198.18.0.100/24", 1500)
        .expect("client host");
    let (_etcd, prefix) = etcd::with_etcd(&mut lab);
    for h in ["h1", "h2", "h3"] {
        let state = lab.tb.dir().join(format!("state-{h}"));
        lab.start_etcd_args(h, &prefix, 5, &["--state-dir", state.to_str().unwrap()]);
    }
    // h1 validates the network against the nodes it has seen: wait until
    // its watch has all three (h3 registers last).
    let all_up = lab.until(Duration::from_secs(5), || {
        let nodes = lab.cli_json("h1", &["node", "ls"]);
        let nodes = nodes.as_array().unwrap();
        nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "up")
    });
    assert!(all_up.is_some(), "{}", lab.cli_json("h1", &["node", "ls"]));
    let stop = Arc::new(AtomicBool::new(false));
    let resolver = big_resolver(&lab, "h1", stop.clone());
    lab.cli_json(
        "h1",
        &[
            "network",
            "create",
            "front",
            "--vni",
            "4096",
            "--subnet",
            "10.0.9.0/24",
            "--attachable",
            "--learning",
            "--fdb-cap",
            "64",
            "--dns-forward",
            "127.0.0.1:5353",
            "--dns-forward-qps",
            "20",
            "--node",
            "h1",
            "--node",
            "h2",
            "--node",
            "h3",
        ],
    );
    lab.cli_json(
        "h1",
        &[
            "network",
            "create",
            "back",
            "--vni",
            "4097",
            "--subnet",
            "10.0.10.0/24",
            "--attachable",
            "--node",
            "h1",
        ],
    );
    lab.create_web_service("h1");
    let (a1, v1, w2, w3) = (ip(20), ip(21), ip(34), ip(50));
    attach(&mut lab, "h1", "a1", "front", a1, None);
    attach(&mut lab, "h1", "v1", "front", v1, None);
    attach(&mut lab, "h2", "w2", "front", w2, Some("web"));
    attach(&mut lab, "h3", "w3", "front", w3, Some("web"));
    attach(
        &mut lab,
        "h1",
        "b1",
        "back",
        Ipv4Addr::new(10, 0, 10, 20),
        None,
    );
    let _web2 = backend::start(&lab.tb, "w2", "w2", w2, false);
    let _web3 = backend::start(&lab.tb, "w3", "w3", w3, false);
    let published: SocketAddr = "198.18.0.1:8080".parse().unwrap();
    let both = lab.until(Duration::from_secs(20), || {
        let seen: std::collections::BTreeSet<String> = (0..6)
            .filter_map(|_| backend::get(&lab.tb, "cl", published, "/").ok())
            .map(|(b, _)| b.split_whitespace().next().unwrap_or_default().to_string())
            .collect();
        seen.len() == 2
    });
    assert!(
        both.is_some(),
        "web is answered by w2 and w3 through h1: tasks {:?}",
        lab.task_ips("h1", "web")
    );
    let w2_mac = lab.tb.exec("w2", &["cat", "/sys/class/net/eth0/address"]);
    let w2_mac = String::from_utf8_lossy(&w2_mac.expect("w2 mac").stdout)
        .trim()
        .to_string();
    let before = |lab: &Lab| {
        (
            nft_drops(lab, "h1", "bridge", ": spoofed"),
            nft_drops(lab, "h1", "bridge", "rogue router"),
            nft_drops(lab, "h1", "bridge", "rogue dhcp"),
        )
    };
    let (spoof0, router0, dhcp0) = before(&lab);

    // Legitimate traffic for the whole attack: HTTP through the published
    // port, pings v1 -> w2 (across the attacker's bridge) and w2 -> w3.
    let failed = AtomicU64::new(0);
    let answered = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let (((), v1_pings), w2_pings) = lab.pinging("w2", w3, || {
        lab.pinging("v1", w2, || {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let end = Instant::now() + Duration::from_secs(120);
                    while !done.load(Ordering::SeqCst) && Instant::now() < end {
                        match backend::get(&lab.tb, "cl", published, "/") {
                            Ok(_) => answered.fetch_add(1, Ordering::SeqCst),
                            Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                        };
                    }
                });
                run_attacks(&lab, &w2_mac);
                done.store(true, Ordering::SeqCst);
            })
        })
    });
    eprintln!(
        "legitimate: http {} ok / {} failed; v1->w2 {}/{}; w2->w3 {}/{}",
        answered.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        v1_pings.received,
        v1_pings.sent,
        w2_pings.received,
        w2_pings.sent
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    assert!(answered.load(Ordering::SeqCst) > 10);
    for (what, p) in [("v1 -> w2", &v1_pings), ("w2 -> w3", &w2_pings)] {
        assert!(p.sent > 10, "{what}: {} sent", p.sent);
        assert_eq!(p.received, p.sent, "{what} lost nothing");
    }
    // The container's attacks were stopped at its bridge port.
    let (spoof1, router1, dhcp1) = before(&lab);
    eprintln!(
        "bridge guards on h1: spoofed {}, rogue router {}, rogue dhcp {}",
        spoof1 - spoof0,
        router1 - router0,
        dhcp1 - dhcp0
    );
    // arp_claim x2 (100 each), mac_of, ip_of, mac_flood (all from a1).
    assert!(
        spoof1 - spoof0 >= 100 * 4 + 500,
        "spoofed: {}",
        spoof1 - spoof0
    );
    assert!(
        router1 - router0 >= 150,
        "rogue router: {}",
        router1 - router0
    );
    assert!(dhcp1 - dhcp0 >= 50, "rogue dhcp: {}", dhcp1 - dhcp0);
    // The host-network attacks were stopped by the overlay core on h1.
    let drops = |r: &str| lab.net_drops("h1", "front", r);
    eprintln!(
        "core guards on h1: spoofed_ip {}, spoofed_mac {}, rogue_router {}, rogue_dhcp {}",
        drops("spoofed_ip"),
        drops("spoofed_mac"),
        drops("rogue_router"),
        drops("rogue_dhcp")
    );
    assert!(drops("spoofed_ip") >= 100, "spoofed_ip");
    assert!(drops("spoofed_mac") >= 100, "spoofed_mac");
    assert!(drops("rogue_router") >= 150, "rogue_router");
    assert!(drops("rogue_dhcp") >= 50, "rogue_dhcp");
    // A forged VXLAN frame from h3 with w2's MAC (w2 lives on h2).
    let forged_before = drops("spoofed_mac");
    forge_from_h3(&lab, &w2_mac);
    let moved = lab.until(Duration::from_secs(5), || {
        drops("spoofed_mac") >= forged_before + 20
    });
    assert!(
        moved.is_some(),
        "h1 refuses a peer speaking for another's MAC"
    );
    // The MAC flood from h1's namespace reached h2 (learning on, cap 64):
    // the table stayed at its cap and made room.
    let st = lab.status("h2");
    let front = st["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "front")
        .unwrap()
        .clone();
    eprintln!(
        "h2 learned table: {} entries, learned {}, full {}, evicted {}",
        front["fdb_learned"],
        front["stats"]["learned"],
        front["stats"]["fdb_full"],
        front["stats"]["fdb_evicted"]
    );
    assert!(front["fdb_learned"].as_u64().unwrap() <= 64);
    assert!(front["stats"]["fdb_full"].as_u64().unwrap() > 0);
    // h1's own neighbour entries for the endpoints never moved.
    let n = neighbour(&lab, "h1", "vxb-front", w2);
    assert!(
        n.contains(&w2_mac) && n.contains("PERMANENT"),
        "h1's entry for w2: {n}"
    );
    // The TAP and bridge refuse router advertisements and redirects.
    for dev in ["vxm-front", "vxb-front"] {
        let p = format!("/proc/sys/net/ipv4/conf/{dev}/accept_redirects");
        let out = lab.tb.exec("h1", &["cat", &p]).expect("sysctl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{p}");
    }

    dns_guards(&lab);
    stop.store(true, Ordering::SeqCst);
    let _ = resolver.join();
}

/// Every attack, from the container a1 (through its bridge port) and from
/// a process in h1's own namespace writing straight onto the TAP (a
/// host-network workload: only the overlay core stands between it and the
/// other nodes), there from an address no endpoint has.
fn run_attacks(lab: &Lab, w2_mac: &str) {
    let (a1, w2, w3, v1) = (ip(20), ip(34), ip(50), ip(21));
    for (ns, iface, own) in [("a1", "eth0", a1), ("h1", "vxm-front", ip(99))] {
        let own = own.to_string();
        let run = |kind: &str, n: u32, extra: &[&str]| {
            let mut args = vec![own.as_str()];
            args.extend_from_slice(extra);
            let sent = attack(lab, ns, iface, kind, n, &args);
            assert_eq!(sent, u64::from(n), "{ns} {kind}");
        };
        // ARP spoofing of a task and of a local endpoint.
        run("arp_claim", 100, &[&w2.to_string()]);
        if ns == "a1" {
            run("arp_claim", 100, &[&v1.to_string()]);
        }
        run("mac_of", 100, &["10.0.9.2", w2_mac]);
        run("ip_of", 100, &[&w3.to_string()]);
        run("ra", 100, &[]);
        run("redirect6", 25, &[]);
        run("redirect4", 25, &[]);
        run("dhcp_offer", 50, &[]);
        run("mac_flood", 500, &[]);
    }
}

/// VXLAN datagrams from h3 to h1 carrying a frame from `mac` (w2's, on h2).
fn forge_from_h3(lab: &Lab, mac: &str) {
    let mac: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    lab.tb
        .in_ns("h3", move || {
            let s = UdpSocket::bind("198.18.0.3:0").unwrap();
            let mut d = vec![0x08, 0, 0, 0, 0, 0x10, 0x00, 0];
            d.extend_from_slice(&[0xff; 6]);
            d.extend_from_slice(&mac);
            d.extend_from_slice(&[0x88, 0xb5]);
            d.extend_from_slice(&[0; 46]);
            for _ in 0..20 {
                s.send_to(&d, "198.18.0.1:4789").unwrap();
            }
        })
        .expect("forger");
}

/// DNS: answered for the network's own clients, refused from the underlay
/// and from another network, and no amplifier.
fn dns_guards(lab: &Lab) {
    // The network's own client resolves the service.
    let (_, answers) = ask_dns(lab, "v1", FRONT_DNS, "web", 1, Duration::from_millis(500));
    assert_eq!(answers.len(), 1, "v1 resolves web");
    // From the underlay (a route to the DNS address via h1, inside the
    // client's own namespace): no answer, counted by h1's table.
    lab.tb
        .exec(
            "cl",
            &["ip", "route", "add", "10.0.9.254/32", "via", "198.18.0.1"],
        )
        .expect("route in cl");
    let from_dev = nft_drops(lab, "h1", "inet", "dns/vip from another device");
    let (_, answers) = ask_dns(lab, "cl", FRONT_DNS, "web", 5, Duration::from_millis(500));
    assert!(answers.is_empty(), "the underlay gets no answer");
    assert!(nft_drops(lab, "h1", "inet", "dns/vip from another device") >= from_dev + 5);
    // From the other network's container, through its own gateway.
    lab.tb
        .exec(
            "b1",
            &[
                "ip",
                "route",
                "replace",
                "10.0.9.254/32",
                "via",
                "10.0.10.254",
            ],
        )
        .expect("route in b1");
    let from_dev = nft_drops(lab, "h1", "inet", "dns/vip from another device");
    let (_, answers) = ask_dns(lab, "b1", FRONT_DNS, "web", 5, Duration::from_millis(500));
    assert!(answers.is_empty(), "another network gets no answer");
    assert!(nft_drops(lab, "h1", "inet", "dns/vip from another device") >= from_dev + 5);
    // Amplification: 100 queries for an outside name whose answer is 1.6 KB.
    let (limited, cut) = (
        dns_guarded(lab, "h1", "front", "forward_rate"),
        dns_guarded(lab, "h1", "front", "truncated"),
    );
    let (sent, answers) = ask_dns(
        lab,
        "a1",
        FRONT_DNS,
        "big.example",
        100,
        Duration::from_secs(3),
    );
    let got: usize = answers.iter().map(Vec::len).sum();
    eprintln!(
        "amplification attempt: {sent} bytes sent, {} answers, {got} bytes back",
        answers.len()
    );
    assert!(
        answers.iter().all(|a| a.len() <= 512),
        "no answer over 512 bytes"
    );
    assert!(got <= sent * 2, "{got} bytes back for {sent}");
    assert!(dns_guarded(lab, "h1", "front", "forward_rate") >= limited + 50);
    assert!(dns_guarded(lab, "h1", "front", "truncated") > cut);
}
