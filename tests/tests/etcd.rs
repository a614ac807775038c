//! End to end: three vxmeshd hosts on the etcd store (a real etcd from
//! Debian's etcd-server, in its own namespace on the underlay), driven only
//! by the `vxmesh` CLI: networks, endpoints and services created without a
//! file; a host killed with SIGKILL vanishes from the others within TTL + 1 s
//! and comes back when restarted; etcd away for 10 s under traffic breaks no
//! packet path; and the CLI's answers against the file store.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backend::{self, get};
use common::{etcd, Lab, FRONT_ONLY};
use nix::sys::signal::Signal;
use serde_json::Value;
use vxmesh_netns::{icmp_ping, require_root};

const TTL: u32 = 3;
const CLIENT: &str = "198.18.0.100";

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn node(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 18, 0, n).into(), port)
}

fn ok(lab: &Lab, host: &str, args: &[&str]) -> Value {
    lab.cli_json(host, args)
}

fn ping_ok(lab: &Lab, from: &str, dst: Ipv4Addr) {
    let p = icmp_ping(
        &lab.tb,
        &lab.tb.ns(from),
        dst,
        3,
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .expect("ping runs");
    assert_eq!(p.received, p.sent, "{from} -> {dst}: {p:?}");
}

fn who(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("").to_string()
}

/// Creates network `front` (10.0.9.0/24, VNI 4096, `extra` flags) from the
/// CLI on h1 with an endpoint 10.0.9.<n> on each host hn, and waits until
/// every host has the three.
fn front_on_three_hosts(lab: &Lab, extra: &[&str]) {
    let mut net = vec![
        "network",
        "create",
        "front",
        "--vni",
        "4096",
        "--subnet",
        "10.0.9.0/24",
    ];
    net.extend(extra);
    assert_eq!(ok(lab, "h1", &net)["ok"], true);
    for n in 1..=3u8 {
        let (ip, node) = (ov(n).to_string(), format!("h{n}"));
        ok(
            lab,
            "h1",
            &["endpoint", "add", "front", &ip, "--node", &node],
        );
    }
    for h in ["h1", "h2", "h3"] {
        let three = lab.until(Duration::from_secs(5), || {
            lab.endpoint_ips(h, "front").len() == 3
        });
        assert!(three.is_some(), "{h} did not get the three endpoints");
    }
}

/// Which tasks answer on `n`:8080 over `tries` requests; panics on a failure.
fn answering(lab: &Lab, n: u8, tries: usize) -> HashSet<String> {
    let cl = lab.tb.ns("cl");
    (0..tries)
        .map(|_| {
            let (body, _) = get(&lab.tb, &cl, node(n, 8080), "/")
                .unwrap_or_else(|e| panic!("h{n}:8080 failed: {e}"));
            who(&body)
        })
        .collect()
}

#[test]
fn etcd_cluster_converges_survives_a_dead_host_and_an_etcd_outage() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("etcd", 3, "");
    lab.tb
        .add_host("cl", &format!("{CLIENT}/24"), 1500)
        .expect("client");
    let mut etcd = etcd::start(&mut lab.tb);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());
    for h in ["h1", "h2", "h3"] {
        lab.no_ipv6(h);
        lab.start_etcd(h, &prefix, TTL);
    }
    // Every node registered; the store is up.
    let all_up = lab.until(Duration::from_secs(3), || {
        let nodes = ok(&lab, "h1", &["node", "ls"]);
        let nodes = nodes.as_array().unwrap();
        nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "up")
    });
    assert!(all_up.is_some(), "{}", ok(&lab, "h1", &["node", "ls"]));
    let st = lab.status("h2");
    assert_eq!(st["store"]["backend"], "etcd");
    assert_eq!(st["store"]["connected"], true);

    // 1. A network and its endpoints, from the CLI only: ping works.
    front_on_three_hosts(&lab, &[]);
    for (from, to) in [("h1", 2), ("h2", 3), ("h3", 1)] {
        ping_ok(&lab, from, ov(to));
    }
    // An existing network: exit 6; a bad one: exit 1 naming the reason.
    let dup = lab.cli(
        "h2",
        &[
            "network",
            "create",
            "front",
            "--vni",
            "4097",
            "--subnet",
            "10.0.7.0/24",
        ],
    );
    assert_eq!(dup.status.code(), Some(6), "{dup:?}");
    let bad = lab.cli(
        "h2",
        &[
            "network",
            "create",
            "back",
            "--vni",
            "0",
            "--subnet",
            "10.0.7.0/24",
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("vni 0"),
        "{bad:?}"
    );

    // 2. A service: the published port answers on all three hosts.
    let _b2 = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", ov(2), false);
    let _b3 = backend::start(&lab.tb, &lab.tb.ns("h3"), "task3", ov(3), false);
    ok(
        &lab,
        "h3",
        &[
            "service",
            "create",
            "web",
            "--network",
            "front",
            "--task",
            "10.0.9.2",
            "--task",
            "10.0.9.3",
            "-p",
            "8080:80/tcp",
            "--balance",
            "round-robin",
            "--health",
            "tcp",
            "--health-interval-ms",
            "200",
            "--health-timeout-ms",
            "100",
            "--rise",
            "2",
            "--fall",
            "2",
            "--drain-ms",
            "500",
        ],
    );
    let cl = lab.tb.ns("cl");
    for n in 1..=3u8 {
        let up = lab.until(Duration::from_secs(10), || {
            get(&lab.tb, &cl, node(n, 8080), "/").is_ok() && answering(&lab, n, 4).len() == 2
        });
        assert!(up.is_some(), "h{n}:8080 never served from both tasks");
    }
    let ls = ok(&lab, "h1", &["service", "ls"]);
    assert_eq!(ls[0]["name"], "web", "{ls}");

    // 3. kill -9 h3's daemon: its endpoint leaves h1's and h2's tables
    //    within TTL + 1 s, and the service keeps answering from task2.
    let killed = Instant::now();
    lab.tb
        .signal(lab.daemon("h3"), Signal::SIGKILL)
        .expect("kill h3");
    let limit = Duration::from_secs(u64::from(TTL) + 1);
    for h in ["h1", "h2"] {
        let gone = lab.until(limit + Duration::from_secs(2), || {
            !lab.endpoint_ips(h, "front")
                .contains(&"10.0.9.3".to_string())
                && lab.task_ips(h, "web") == ["10.0.9.2"]
        });
        assert!(gone.is_some(), "{h} still has h3's endpoint or task");
        let after = killed.elapsed();
        eprintln!("{h}: h3 removed {after:?} after the kill");
        assert!(
            after <= limit + Duration::from_millis(300),
            "{h}: removal took {after:?}"
        );
    }
    let nodes = ok(&lab, "h1", &["node", "ls"]);
    let h3 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "h3")
        .cloned();
    assert_eq!(
        h3.map(|n| n["state"].clone()),
        Some("down".into()),
        "{nodes}"
    );
    for n in 1..=2u8 {
        assert_eq!(answering(&lab, n, 4), HashSet::from(["task2".to_string()]));
    }

    // 4. Restart it: it rejoins and its task is used again.
    lab.start_etcd("h3", &prefix, TTL);
    for h in ["h1", "h2"] {
        assert!(
            lab.until(Duration::from_secs(5), || lab
                .endpoint_ips(h, "front")
                .len()
                == 3)
                .is_some(),
            "{h} did not see h3 again"
        );
    }
    ping_ok(&lab, "h1", ov(3));
    let back = lab.until(Duration::from_secs(10), || answering(&lab, 1, 4).len() == 2);
    assert!(back.is_some(), "task3 not used again after h3 rejoined");

    // 5. etcd away for 10 s under traffic: no packet path breaks.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let loop_thread = {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        lab.tb
            .thread_in_ns(&cl, move || {
                let mut n = 0u8;
                // Bounded: at most 2,000 rounds of 20 ms.
                for _ in 0..2000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    n = n % 3 + 1;
                    let to = node(n, 8080);
                    let r = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        .and_then(|mut s| {
                            use std::io::{Read, Write};
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
                            let mut out = Vec::new();
                            s.read_to_end(&mut out)?;
                            Ok(out)
                        });
                    requests.fetch_add(1, Ordering::SeqCst);
                    if !matches!(&r, Ok(b) if b.starts_with(b"HTTP/1.")) {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .expect("traffic thread")
    };
    etcd.kill(&lab.tb);
    let down = lab.until(Duration::from_secs(6), || {
        lab.status("h1")["store"]["connected"] == false
    });
    assert!(down.is_some(), "h1 never reported etcd unreachable");
    let table = lab.cli("h1", &["node", "ls"]);
    assert!(table.status.success());
    let out = std::process::Command::new(vxmesh_netns::workspace_bin("vxmesh"))
        .arg("--socket")
        .arg(lab.socket("h1"))
        .args(["node", "ls"])
        .output()
        .expect("vxmesh node ls");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("UNREACHABLE"), "node ls says nothing: {text}");
    let pinged = icmp_ping(
        &lab.tb,
        &lab.tb.ns("h2"),
        ov(3),
        100,
        Duration::from_millis(50),
        Duration::from_secs(15),
    )
    .expect("ping runs");
    // The rest of the 10 s.
    let waited = down.unwrap() + Duration::from_secs(5);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(waited));
    etcd.restart(&mut lab.tb);
    for h in ["h1", "h2", "h3"] {
        let up = lab.until(Duration::from_secs(10), || {
            lab.status(h)["store"]["connected"] == true
        });
        assert!(up.is_some(), "{h} did not reconnect to etcd");
    }
    // Nobody lost anybody across the outage.
    for h in ["h1", "h2", "h3"] {
        assert_eq!(lab.endpoint_ips(h, "front").len(), 3, "{h} lost endpoints");
    }
    stop.store(true, Ordering::SeqCst);
    loop_thread
        .join()
        .expect("traffic thread")
        .expect("in namespace");
    assert_eq!(
        pinged.received, pinged.sent,
        "overlay ping broke: {pinged:?}"
    );
    let (f, r) = (
        failures.load(Ordering::SeqCst),
        requests.load(Ordering::SeqCst),
    );
    assert!(r > 100, "only {r} requests ran");
    assert_eq!(f, 0, "{f} of {r} requests failed while etcd was away");

    // 6. Changes after etcd returns are applied everywhere.
    ok(&lab, "h2", &["service", "scale", "web", "10.0.9.2"]);
    for h in ["h1", "h2", "h3"] {
        assert!(
            lab.until(Duration::from_secs(5), || lab.task_ips(h, "web")
                == ["10.0.9.2"])
                .is_some(),
            "{h} did not apply the scale"
        );
    }
    ok(
        &lab,
        "h3",
        &["endpoint", "add", "front", "10.0.9.20", "--node", "h2"],
    );
    for h in ["h1", "h2", "h3"] {
        assert!(
            lab.until(Duration::from_secs(5), || lab
                .endpoint_ips(h, "front")
                .contains(&"10.0.9.20".to_string()))
                .is_some(),
            "{h} did not apply the new endpoint"
        );
    }
    ok(&lab, "h1", &["service", "rm", "web"]);
    assert!(lab
        .until(Duration::from_secs(5), || lab
            .task_ips("h3", "web")
            .is_empty())
        .is_some());
    let missing = lab.cli("h1", &["service", "rm", "web"]);
    assert_eq!(missing.status.code(), Some(4), "{missing:?}");
    ok(&lab, "h1", &["endpoint", "rm", "front", "10.0.9.20"]);
    ok(&lab, "h1", &["network", "rm", "front"]);
    assert!(lab
        .until(Duration::from_secs(5), || lab
            .endpoint_ips("h2", "front")
            .is_empty())
        .is_some());
}

#[test]
fn cli_against_the_file_store_names_the_file() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("etcdcli", 1, FRONT_ONLY);
    lab.start("h1");
    let file = lab.config.display().to_string();
    for args in [
        &[
            "network",
            "create",
            "x",
            "--vni",
            "7",
            "--subnet",
            "10.0.7.0/24",
        ][..],
        &["network", "rm", "front"],
        &["endpoint", "add", "front", "10.0.9.9", "--node", "h1"],
        &["endpoint", "rm", "front", "10.0.9.1"],
        &["service", "create", "web", "--network", "front"],
        &["service", "scale", "web", "10.0.9.1"],
        &["service", "update", "web", "--balance", "maglev"],
        &["service", "rm", "web"],
    ] {
        let out = lab.cli("h1", args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&file) && err.contains("source of truth"),
            "{args:?}: {err}"
        );
    }
    // The read side: JSON shapes.
    let nodes = ok(&lab, "h1", &["node", "ls"]);
    let n = &nodes.as_array().unwrap()[0];
    for key in ["name", "address", "local", "networks", "state"] {
        assert!(n.get(key).is_some(), "node ls --json lacks {key}: {nodes}");
    }
    assert_eq!(n["state"], "static");
    let st = lab.status("h1");
    assert_eq!(st["store"]["backend"], "file");
    assert_eq!(st["store"]["target"], file);
    let eps = ok(&lab, "h1", &["endpoint", "ls"]);
    assert_eq!(eps.as_array().unwrap().len(), 3, "{eps}");
    for key in ["network", "ip", "mac", "node", "name"] {
        assert!(eps[0].get(key).is_some(), "endpoint ls --json lacks {key}");
    }
    let nets = ok(&lab, "h1", &["network", "ls"]);
    for key in [
        "name",
        "vni",
        "subnet",
        "mtu",
        "nodes",
        "endpoints",
        "local",
    ] {
        assert!(nets[0].get(key).is_some(), "network ls --json lacks {key}");
    }
    let none = lab.cli("h1", &["network", "inspect", "nope"]);
    assert_eq!(none.status.code(), Some(4));
}

/// The workload's MAC behind h1's TAP, and its address, which no key
/// declares.
const WL_MAC: &str = "02:aa:00:00:00:32";
const WL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 50);

/// True when `host`'s forwarding table sends `mac` to node `node`.
fn fdb_owner(lab: &Lab, host: &str, mac: &str) -> Option<String> {
    let rows = ok(lab, host, &["fdb", "show"]);
    rows.as_array()?
        .iter()
        .find(|r| r["mac"] == mac)
        .and_then(|r| r["node"].as_str().map(str::to_string))
}

#[test]
fn announced_workload_is_reached_without_flooding_and_withdrawn_when_idle() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("etcdann", 3, "");
    let _etcd = etcd::start(&mut lab.tb);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());
    for h in ["h1", "h2", "h3"] {
        lab.no_ipv6(h);
        lab.start_etcd(h, &prefix, TTL);
    }
    front_on_three_hosts(&lab, &["--announce", "--ageing-s", "4"]);

    // A workload behind h1's TAP (a macvlan on it, in its own namespace)
    // with an address that is in no key.
    let (h1, h3) = (lab.tb.ns("h1"), lab.tb.ns("h3"));
    lab.tb.add_namespace("w1").expect("namespace w1");
    lab.no_ipv6("w1");
    let w1 = lab.tb.ns("w1");
    let wl = WL_IP.to_string();
    for (ns, args) in [
        (
            &h1,
            &[
                "ip",
                "link",
                "add",
                "link",
                "vxm-front",
                "name",
                "wl0",
                "address",
                WL_MAC,
                "type",
                "macvlan",
                "mode",
                "bridge",
            ][..],
        ),
        (&h1, &["ip", "link", "set", "wl0", "netns", &w1]),
        (
            &w1,
            &["ip", "addr", "add", &format!("{wl}/24"), "dev", "wl0"],
        ),
        (&w1, &["ip", "link", "set", "wl0", "up"]),
    ] {
        lab.tb.exec(ns, args).expect("workload interface");
    }
    assert!(!lab.endpoint_ips("h2", "front").contains(&wl));

    // It talks: h1 learns it from the TAP and announces it; h2 and h3
    // install it as h1's, as an endpoint like a configured one.
    ping_ok(&lab, "w1", ov(3));
    for h in ["h2", "h3"] {
        let owned = lab.until(Duration::from_secs(5), || {
            fdb_owner(&lab, h, WL_MAC).as_deref() == Some("h1")
        });
        assert!(
            owned.is_some(),
            "{h}: no entry for {WL_MAC} owned by h1: {}",
            ok(&lab, h, &["fdb", "show"])
        );
    }
    let eps = ok(&lab, "h3", &["endpoint", "ls", "front"]);
    let e = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip"] == wl.as_str())
        .unwrap_or_else(|| panic!("{wl} is not an endpoint: {eps}"));
    assert_eq!(
        (e["node"].as_str(), e["mac"].as_str()),
        (Some("h1"), Some(WL_MAC))
    );
    let st = lab.status("h1");
    assert_eq!(st["networks"][0]["announced"], 1, "{st}");

    // Unicast to it is never flooded: h3 holds a permanent neighbour
    // entry for it (written from the store; no ARP, which a workload could
    // answer falsely) even after a flush, and the echo goes straight to h1.
    lab.tb
        .exec(&h3, &["ip", "neigh", "flush", "dev", "vxm-front"])
        .expect("neigh flush");
    let neigh = lab
        .tb
        .exec(&h3, &["ip", "neigh", "show", &wl, "dev", "vxm-front"])
        .expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    assert!(
        neigh.contains(WL_MAC) && neigh.contains("PERMANENT"),
        "h3's entry for the announced workload: {neigh}"
    );
    let flooded = |h: &str| lab.counter(h, "front", "flooded_frames");
    let before = [flooded("h1"), flooded("h3")];
    ping_ok(&lab, "h3", WL_IP);
    assert_eq!(
        [flooded("h1"), flooded("h3")],
        before,
        "unicast was flooded"
    );

    // Idle for longer than ageing_s: h1 withdraws it, everyone drops it.
    let gone = lab.until(Duration::from_secs(20), || {
        ["h2", "h3"]
            .iter()
            .all(|h| fdb_owner(&lab, h, WL_MAC).is_none())
    });
    assert!(gone.is_some(), "{WL_MAC} not withdrawn after going idle");
    assert!(!lab.endpoint_ips("h2", "front").contains(&wl));
}
