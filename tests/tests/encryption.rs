//! Encrypted networks end to end: hosts with node keys, an encrypted
//! network `sealed` beside a plain one `front` on the same hosts. What
//! crosses the underlay is captured (an AF_PACKET socket in a host's
//! namespace) and searched for what must not be there; forged, replayed
//! and plaintext datagrams are sent from the underlay and must be counted
//! and dropped while traffic goes on; rekeying, key changes, removal and a
//! restart are driven through the cluster file and the daemons.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Lab;
use nix::sys::signal::Signal;
use vxmesh_netns::{icmp_ping, iperf3_tcp, require_root, workspace_bin, Proc};

/// VNI of the encrypted network.
const SEALED_VNI: u32 = 4100;

fn sealed(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 10, n)
}

fn plain(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn underlay(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

/// Writes a new key into host `h`'s state directory (where vxmeshd finds
/// it) with `vxmesh key generate`; returns the public key it printed.
fn generate_key(path: &Path) -> String {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    let out = std::process::Command::new(workspace_bin("vxmesh"))
        .args(["key", "generate"])
        .arg(path)
        .output()
        .expect("run vxmesh key generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn key_file(lab: &Lab, host: u8) -> PathBuf {
    lab.tb
        .dir()
        .join(format!("state-h{host}"))
        .join("vxmesh-node.key")
}

/// The cluster: `nodes` (number, public key) with an endpoint each in the
/// encrypted network and in the plain one.
fn cluster(nodes: &[(u8, &str)], settings: &str) -> String {
    let mut s = format!("[settings]\n{settings}\n");
    for (n, key) in nodes {
        s += &format!(
            "[[nodes]]\nname = \"h{n}\"\naddress = \"{}\"\npublic_key = \"{key}\"\n",
            underlay(*n)
        );
    }
    s += &format!(
        "[[networks]]\nname = \"sealed\"\nvni = {SEALED_VNI}\nsubnet = \"10.0.10.0/24\"\nencrypted = true\n"
    );
    s += "[[networks]]\nname = \"front\"\nvni = 4096\nsubnet = \"10.0.9.0/24\"\n";
    for (n, _) in nodes {
        for (net, ip) in [("sealed", sealed(*n)), ("front", plain(*n))] {
            s += &format!("[[endpoints]]\nnetwork = \"{net}\"\nnode = \"h{n}\"\nip = \"{ip}\"\n");
        }
    }
    s
}

/// `hosts` hosts with keys, the cluster file, every daemon started and
/// every session established.
fn keyed_lab(tag: &str, hosts: u8, settings: &str) -> (Lab, Vec<String>) {
    let mut lab = Lab::new(tag, hosts, "");
    let keys: Vec<String> = (1..=hosts)
        .map(|h| generate_key(&key_file(&lab, h)))
        .collect();
    let nodes: Vec<(u8, &str)> = (1..=hosts).zip(keys.iter().map(String::as_str)).collect();
    std::fs::write(&lab.config, cluster(&nodes, settings)).unwrap();
    for h in 1..=hosts {
        lab.no_ipv6(&format!("h{h}"));
        lab.start(&format!("h{h}"));
    }
    for h in 1..=hosts {
        wait_sessions(&lab, &format!("h{h}"), hosts as usize - 1);
    }
    (lab, keys)
}

/// Peers of `host` whose session is established.
fn established(lab: &Lab, host: &str) -> Vec<String> {
    lab.status(host)["encryption"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "established")
        .map(|p| p["address"].as_str().unwrap().to_string())
        .collect()
}

fn wait_sessions(lab: &Lab, host: &str, peers: usize) {
    lab.until(Duration::from_secs(10), || {
        established(lab, host).len() == peers
    })
    .unwrap_or_else(|| {
        panic!(
            "{host}: sessions never established: {}",
            lab.status(host)["encryption"]
        )
    });
}

fn counter(lab: &Lab, host: &str, name: &str) -> u64 {
    lab.status(host)["encryption"]["counters"][name]
        .as_u64()
        .unwrap()
}

fn pings(lab: &Lab, from: &str, to: Ipv4Addr, count: u32) -> u32 {
    icmp_ping(
        &lab.tb,
        &lab.tb.ns(from),
        to,
        count,
        Duration::from_millis(50),
        Duration::from_secs(10),
    )
    .unwrap()
    .received
}

/// Records the UDP payload of every VXLAN-port datagram seen on `eth0`
/// (both directions) as `<source address> <payload hex>` lines, until the
/// `.stop` file appears or the time is up.
const CAPTURE: &str = r#"
import os, socket, sys, time
out, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.05)
print("ready", flush=True)
end = time.time() + secs
with open(out + ".tmp", "w") as f:
    while time.time() < end and not os.path.exists(out + ".stop"):
        try:
            fr = s.recv(70000)
        except socket.timeout:
            continue
        if len(fr) < 42 or fr[12:14] != b"\x08\x00" or fr[23] != 17:
            continue
        u = 14 + (fr[14] & 15) * 4
        if int.from_bytes(fr[u + 2:u + 4], "big") != 4789:
            continue
        f.write(socket.inet_ntoa(fr[26:30]) + " " + fr[u + 8:].hex() + "\n")
os.rename(out + ".tmp", out)
"#;

/// A running capture on one host.
struct Capture {
    proc: Proc,
    out: PathBuf,
}

fn capture(lab: &mut Lab, host: &str, name: &str) -> Capture {
    let out = lab.tb.dir().join(format!("{name}.cap"));
    let ns = lab.tb.ns(host);
    let proc = lab
        .tb
        .spawn(
            &ns,
            &["python3", "-c", CAPTURE, out.to_str().unwrap(), "30"],
            &[],
        )
        .unwrap();
    lab.until(Duration::from_secs(10), || {
        proc.log_tail(5).contains("ready")
    })
    .expect("the capture starts");
    Capture { proc, out }
}

/// Stops the capture; the datagrams it saw: (source, UDP payload).
fn finish(lab: &Lab, c: Capture) -> Vec<(Ipv4Addr, Vec<u8>)> {
    let stop = PathBuf::from(format!("{}.stop", c.out.display()));
    std::fs::write(stop, b"").unwrap();
    lab.until(Duration::from_secs(10), || c.out.exists())
        .expect("the capture ends");
    lab.tb.stop(&c.proc);
    std::fs::read_to_string(&c.out)
        .unwrap()
        .lines()
        .map(|l| {
            let (src, hex) = l.split_once(' ').unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (src.parse().unwrap(), bytes)
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends `count` datagrams holding `marker` from `from`'s overlay address
/// `src` to `dst`:7777 and returns how many arrived (read on `to`).
fn send_marked(
    lab: &Lab,
    from: &str,
    to: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    marker: &str,
) -> usize {
    let rx = lab
        .tb
        .in_ns(&lab.tb.ns(to), move || {
            UdpSocket::bind(SocketAddrV4::new(dst, 7777)).unwrap()
        })
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let m = marker.to_string();
    lab.tb
        .in_ns(&lab.tb.ns(from), move || {
            let s = UdpSocket::bind(SocketAddrV4::new(src, 0)).unwrap();
            for i in 0..20 {
                s.send_to(format!("{m} {i}").as_bytes(), SocketAddrV4::new(dst, 7777))
                    .unwrap();
            }
        })
        .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = rx.recv_from(&mut buf) {
        assert!(contains(&buf[..n], marker.as_bytes()));
        got += 1;
        if got == 20 {
            break;
        }
    }
    got
}

#[test]
fn three_hosts_talk_sealed_and_the_underlay_shows_nothing_inside() {
    if !require_root() {
        return;
    }
    let (mut lab, _) = keyed_lab("enc3", 3, "");
    for (from, to) in [("h1", 2), ("h1", 3), ("h2", 3), ("h3", 1)] {
        assert_eq!(pings(&lab, from, sealed(to), 3), 3, "{from} -> h{to}");
        assert_eq!(pings(&lab, from, plain(to), 3), 3, "plain {from} -> h{to}");
    }
    let (ns1, ns2) = (lab.tb.ns("h1"), lab.tb.ns("h2"));
    for (server, client, to) in [(&ns2, &ns1, sealed(2)), (&ns1, &ns2, sealed(1))] {
        let gbit = iperf3_tcp(&mut lab.tb, server, client, to, 5201, 2, 1).unwrap();
        assert!(gbit > 0.0, "iperf3 over the encrypted network");
    }
    // What the underlay carries, first for the plain network (the capture
    // finds the marker: it would see it), then for the encrypted one.
    let cap = capture(&mut lab, "h2", "plain");
    assert!(send_marked(&lab, "h1", "h2", plain(1), plain(2), "VXMESH-CLEAR-MARKER") > 0);
    let seen = finish(&lab, cap);
    assert!(
        seen.iter()
            .any(|(_, d)| contains(d, b"VXMESH-CLEAR-MARKER")),
        "the capture sees plain traffic"
    );
    let cap = capture(&mut lab, "h2", "sealed");
    assert!(
        send_marked(
            &lab,
            "h1",
            "h2",
            sealed(1),
            sealed(2),
            "VXMESH-SECRET-MARKER"
        ) > 0
    );
    let gbit = iperf3_tcp(&mut lab.tb, &ns2, &ns1, sealed(2), 5202, 1, 1).unwrap();
    assert!(gbit > 0.0);
    let seen = finish(&lab, cap);
    let from_h1: Vec<&Vec<u8>> = seen
        .iter()
        .filter(|(s, _)| *s == underlay(1))
        .map(|(_, d)| d)
        .collect();
    assert!(from_h1.len() > 20, "sealed datagrams were captured");
    // The inner IPv4 source and destination, back to back as in the header.
    let inner_ips = [sealed(1).octets(), sealed(2).octets()].concat();
    let mut vxlan = [0x08, 0, 0, 0, 0, 0, 0, 0];
    vxlan[4..7].copy_from_slice(&SEALED_VNI.to_be_bytes()[1..]);
    for d in &from_h1 {
        assert!(
            !contains(d, b"VXMESH-SECRET-MARKER"),
            "plaintext on the wire"
        );
        assert!(!contains(d, &inner_ips), "an inner IP header on the wire");
        assert!(
            !contains(d, &vxlan),
            "the VXLAN header of the VNI on the wire"
        );
    }
    // Sealed traffic is data messages (type 4) and handshakes only.
    let sealed_kinds = seen
        .iter()
        .filter(|(_, d)| d.first() != Some(&0x08))
        .all(|(_, d)| matches!(d[0], 1 | 2 | 4));
    assert!(sealed_kinds);
    // The metrics name the sessions.
    let m = lab.scrape("h1");
    assert!(
        m.contains("vxmesh_peer_session_established{peer=\"198.18.0.2\"} 1"),
        "{m}"
    );
}

#[test]
fn replayed_forged_and_plaintext_datagrams_are_dropped_and_counted() {
    if !require_root() {
        return;
    }
    let (mut lab, _) = keyed_lab("encbad", 3, "");
    lab.tb.add_host("evil", "198.18.0.66/24", 1500).unwrap();
    let cap = capture(&mut lab, "h2", "replay");
    assert_eq!(pings(&lab, "h1", sealed(2), 3), 3);
    let seen = finish(&lab, cap);
    let data = seen
        .iter()
        .find(|(s, d)| *s == underlay(1) && d.first() == Some(&4) && d.len() > 100)
        .map(|(_, d)| d.clone())
        .expect("a sealed datagram from h1");
    let send = |lab: &Lab, host: &str, src: Ipv4Addr, d: Vec<u8>| {
        lab.tb
            .in_ns(&lab.tb.ns(host), move || {
                let s = UdpSocket::bind(SocketAddrV4::new(src, 0)).unwrap();
                s.send_to(&d, SocketAddrV4::new(underlay(2), 4789)).unwrap();
            })
            .unwrap();
    };
    let before = |reason: &str| lab.global_drops("h2", reason);
    let (replayed0, bad0, unknown0) = (
        before("replayed"),
        before("bad_seal"),
        before("unknown_peer"),
    );
    let plain0 = lab.net_drops("h2", "sealed", "plaintext");
    // The captured datagram again, from h1's address.
    send(&lab, "h1", underlay(1), data.clone());
    lab.until(Duration::from_secs(5), || {
        lab.global_drops("h2", "replayed") > replayed0
    })
    .expect("a replayed datagram is counted");
    // One bit flipped inside the sealed part.
    let mut flipped = data.clone();
    flipped[40] ^= 0x01;
    send(&lab, "h1", underlay(1), flipped);
    lab.until(Duration::from_secs(5), || {
        lab.global_drops("h2", "bad_seal") > bad0
    })
    .expect("a forged datagram is counted");
    // A plaintext VXLAN datagram for the encrypted VNI from a member's
    // address (h3 is a member: its address proves nothing), then from a
    // host that is no member.
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 0, 0];
    vx[4..7].copy_from_slice(&SEALED_VNI.to_be_bytes()[1..]);
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0x42, 0x0a, 0x00, 0x0a, 0x03, 0x08, 0x06]);
    frame.resize(60, 0);
    vx.extend_from_slice(&frame);
    send(&lab, "h3", underlay(3), vx.clone());
    lab.until(Duration::from_secs(5), || {
        lab.net_drops("h2", "sealed", "plaintext") > plain0
    })
    .expect("plaintext for the encrypted network is counted");
    send(&lab, "evil", Ipv4Addr::new(198, 18, 0, 66), vx);
    lab.until(Duration::from_secs(5), || {
        lab.global_drops("h2", "unknown_peer") > unknown0
    })
    .expect("a non-member's datagram is counted");
    // None of it was delivered, and traffic goes on.
    assert_eq!(pings(&lab, "h1", sealed(2), 3), 3);
    assert_eq!(pings(&lab, "h3", sealed(2), 3), 3);
    assert_eq!(
        pings(&lab, "h1", plain(2), 3),
        3,
        "the plain network beside it"
    );
}

#[test]
fn rekeying_under_a_transfer_loses_nothing_and_renews_the_sessions() {
    if !require_root() {
        return;
    }
    let (mut lab, _) = keyed_lab("enckey", 2, "rekey_seconds = 1");
    let drops = |lab: &Lab| -> u64 {
        ["h1", "h2"]
            .iter()
            .map(|h| {
                ["unknown_session", "bad_seal", "replayed"]
                    .iter()
                    .map(|r| lab.global_drops(h, r))
                    .sum::<u64>()
                    + lab.net_drops(h, "sealed", "no_session")
            })
            .sum()
    };
    let (d0, s0) = (drops(&lab), counter(&lab, "h1", "sessions_established"));
    let (ns1, ns2) = (lab.tb.ns("h1"), lab.tb.ns("h2"));
    let gbit = iperf3_tcp(&mut lab.tb, &ns2, &ns1, sealed(2), 5201, 4, 1).unwrap();
    assert!(gbit > 0.0);
    let s1 = counter(&lab, "h1", "sessions_established");
    assert!(
        s1 >= s0 + 2,
        "sessions renewed under the transfer: {s0} -> {s1}"
    );
    let detail: Vec<String> = ["h1", "h2"]
        .iter()
        .map(|h| {
            format!(
                "{h}: {} {}",
                lab.status(h)["global"]["drops"],
                lab.status(h)["networks"][1]["stats"]["drops"]
            )
        })
        .collect();
    assert_eq!(
        drops(&lab),
        d0,
        "no datagram was lost to a rekey: {detail:?}"
    );
    assert_eq!(pings(&lab, "h2", sealed(1), 5), 5);
}

/// Stops `host`'s daemon (by its pid) and starts it again; the time from
/// its READY=1 until its sessions are back.
fn restart(lab: &mut Lab, host: &str, peers: usize) -> Duration {
    let i = lab.daemons.iter().position(|(h, _)| h == host).unwrap();
    let (_, old) = lab.daemons.remove(i);
    assert!(lab.tb.stop(&old));
    lab.start(host);
    let lab = &*lab;
    lab.until(Duration::from_secs(10), || {
        established(lab, host).len() == peers
    })
    .expect("sessions after the restart")
}

fn reload(lab: &Lab, host: &str, text: &str) {
    std::fs::write(&lab.config, text).unwrap();
    let ok = lab.status(host)["reloads_ok"].as_u64().unwrap();
    lab.tb.signal(lab.daemon_of(host), Signal::SIGHUP).unwrap();
    lab.until(Duration::from_secs(5), || {
        lab.status(host)["reloads_ok"].as_u64().unwrap() > ok
    })
    .unwrap_or_else(|| panic!("{host} did not reload: {}", lab.status(host)));
}

#[test]
fn a_changed_or_removed_key_is_refused_and_a_restarted_node_comes_back() {
    if !require_root() {
        return;
    }
    let (mut lab, keys) = keyed_lab("encnode", 3, "");
    // A restart with the same key: the sessions are back within a second.
    let back = restart(&mut lab, "h2", 2);
    assert!(
        back < Duration::from_secs(1),
        "sessions back after {back:?}"
    );
    assert_eq!(pings(&lab, "h1", sealed(2), 3), 3);
    assert_eq!(pings(&lab, "h2", sealed(3), 3), 3);
    // h3's key changes in the cluster (h3 itself still holds the old one):
    // from the reload on, h1 refuses it, and h2 still works.
    let other = generate_key(&lab.tb.dir().join("other.key"));
    let changed = cluster(&[(1, &keys[0]), (2, &keys[1]), (3, &other)], "");
    reload(&lab, "h1", &changed);
    lab.until(Duration::from_secs(5), || {
        !established(&lab, "h1").contains(&underlay(3).to_string())
    })
    .expect("h1 ends its session with h3");
    let refused0 = counter(&lab, "h1", "handshakes_refused");
    let stale0 = lab.global_drops("h1", "unknown_session");
    assert_eq!(
        pings(&lab, "h3", sealed(1), 3),
        0,
        "h3's old key is refused"
    );
    lab.until(Duration::from_secs(5), || {
        lab.global_drops("h1", "unknown_session") > stale0
            || counter(&lab, "h1", "handshakes_refused") > refused0
    })
    .expect("h3's datagrams or handshakes are counted as refused");
    assert_eq!(pings(&lab, "h2", sealed(1), 3), 3, "h2 is untouched");
    // h3 leaves the cluster: what it still sends is not a member's.
    let without = cluster(&[(1, &keys[0]), (2, &keys[1])], "");
    reload(&lab, "h1", &without);
    let unknown0 = lab.global_drops("h1", "unknown_peer");
    assert_eq!(pings(&lab, "h3", sealed(1), 3), 0);
    lab.until(Duration::from_secs(5), || {
        lab.global_drops("h1", "unknown_peer") > unknown0
    })
    .expect("a removed node's datagrams are refused");
    assert_eq!(pings(&lab, "h2", sealed(1), 3), 3);
}

#[test]
fn without_a_key_an_encrypted_network_carries_nothing_and_says_so() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("encnokey", 2, "");
    let k1 = generate_key(&key_file(&lab, 1));
    // h2 is listed with a key, but its daemon has none.
    let k2 = generate_key(&lab.tb.dir().join("unused.key"));
    std::fs::write(&lab.config, cluster(&[(1, &k1), (2, &k2)], "")).unwrap();
    lab.start("h1");
    lab.start("h2");
    let s = lab.status("h2");
    assert!(s["encryption"]["public_key"].is_null(), "{s}");
    assert_eq!(s["encryption"]["peers"][0]["state"], "no-node-key");
    let no_session0 = lab.net_drops("h2", "sealed", "no_session");
    assert_eq!(pings(&lab, "h2", sealed(1), 3), 0, "fail closed");
    assert!(lab.net_drops("h2", "sealed", "no_session") > no_session0);
    assert_eq!(
        lab.status("h1")["encryption"]["peers"][0]["state"],
        "no-session"
    );
    // The plain network on the same hosts is not affected.
    assert_eq!(pings(&lab, "h2", plain(1), 3), 3);
}

#[test]
fn on_etcd_nodes_publish_their_keys_and_the_cli_creates_an_encrypted_network() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("encetcd", 2, "");
    let mut etcd = common::etcd::start(&mut lab.tb);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());
    let mut keys = Vec::new();
    for h in 1..=2u8 {
        let host = format!("h{h}");
        // The etcd daemons keep their state in `<host>-state`.
        let file = lab
            .tb
            .dir()
            .join(format!("{host}-state"))
            .join("vxmesh-node.key");
        keys.push(generate_key(&file));
        lab.no_ipv6(&host);
        lab.start_etcd(&host, &prefix, 3);
    }
    // Both nodes registered (with their keys): h1's watch has seen them.
    lab.until(Duration::from_secs(5), || {
        let nodes = lab.cli_json("h1", &["node", "ls"]);
        nodes.as_array().unwrap().len() == 2
    })
    .unwrap_or_else(|| panic!("{}", lab.cli_json("h1", &["node", "ls"])));
    let created = lab.cli_json(
        "h1",
        &[
            "network",
            "create",
            "sealed",
            "--vni",
            "4100",
            "--subnet",
            "10.0.10.0/24",
            "--encrypted",
        ],
    );
    assert_eq!(created["ok"], true);
    for h in 1..=2u8 {
        let (ip, node) = (sealed(h).to_string(), format!("h{h}"));
        lab.cli_json("h1", &["endpoint", "add", "sealed", &ip, "--node", &node]);
    }
    for h in ["h1", "h2"] {
        wait_sessions(&lab, h, 1);
    }
    let net = lab.cli_json("h2", &["network", "inspect", "sealed"]);
    assert_eq!(net["encrypted"], true, "{net}");
    assert_eq!(net["mtu"], 1418, "underlay 1500 - 50 - 32");
    assert_eq!(pings(&lab, "h1", sealed(2), 3), 3);
    assert_eq!(
        lab.status("h2")["encryption"]["public_key"],
        keys[1].as_str(),
        "the key h2 loaded"
    );
    etcd.kill(&lab.tb);
}
