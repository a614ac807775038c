//! End to end: the routing mesh on three vxmeshd hosts, tasks on h2 and h3
//! only, a client namespace on the underlay.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::backend::{self, get, udp_ask};
use common::{Lab, FRONT_ONLY};
use nix::sys::signal::Signal;
use vxmesh_netns::require_root;

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn node(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 18, 0, n).into(), port)
}

const CLIENT: &str = "198.18.0.100";

fn service(balance: &str, extra: &str) -> String {
    format!(
        r#"{FRONT_ONLY}
[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.2", "10.0.9.3"]
ports = [{{ published = 8080, target = 80, protocol = "tcp" }},
         {{ published = 5353, target = 53, protocol = "udp" }}]
balance = "{balance}"
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }}
{extra}
"#
    )
}

/// Three hosts with daemons, tasks on h2 and h3, a client `cl`.
fn mesh_lab(tag: &str, config: &str, proxy: bool) -> (Lab, backend::Backend, backend::Backend) {
    let mut lab = Lab::new(tag, 3, config);
    lab.tb
        .add_host("cl", &format!("{CLIENT}/24"), 1500)
        .expect("client");
    for h in ["h1", "h2", "h3"] {
        lab.start(h);
    }
    let b2 = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", ov(2), proxy);
    let b3 = backend::start(&lab.tb, &lab.tb.ns("h3"), "task3", ov(3), proxy);
    settle(&lab);
    (lab, b2, b3)
}

/// Probes that ran before the tasks listened may have failed. Settled:
/// every node has probed every task at least `rise` (2) more times since
/// the tasks started, and sees them up.
fn settle(lab: &Lab) {
    let probes = |lab: &Lab, h: &str| -> Vec<(String, u64, String)> {
        lab.cli_json(h, &["service", "ps", "web"])
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["addr"].as_str().unwrap().to_string(),
                    t["probe_duration"]["count"].as_u64().unwrap(),
                    t["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for h in ["h1", "h2", "h3"] {
        let start = probes(lab, h);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = probes(lab, h);
            let settled = now.iter().all(|(addr, count, state)| {
                let before = start
                    .iter()
                    .find(|s| &s.0 == addr)
                    .map(|s| s.1)
                    .unwrap_or(0);
                *count >= before + 2 && state == "up"
            });
            if settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tasks never settled on {h}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn task_state(lab: &Lab, host: &str, task: &str) -> String {
    let ps = lab.cli_json(host, &["service", "ps", "web"]);
    ps.as_array()
        .unwrap()
        .iter()
        .find(|t| t["addr"] == task)
        .map(|t| t["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "absent".into())
}

fn who(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn every_node_serves_spreads_and_survives_a_dead_task() {
    if !require_root() {
        return;
    }
    let (lab, _b2, mut b3) = mesh_lab("mesh", &service("round-robin", ""), false);
    let cl = lab.tb.ns("cl");
    // Every node serves, h1 included (it runs no task), and spreads.
    for n in 1..=3u8 {
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let (body, _) = get(&lab.tb, &cl, node(n, 8080), "/").expect("request served");
            seen.insert(who(&body));
        }
        assert_eq!(
            seen,
            HashSet::from(["task2".to_string(), "task3".to_string()]),
            "through h{n}"
        );
    }
    // UDP through h1, from six client ports; remember who answered each.
    let from = |i: u16| SocketAddr::new(CLIENT.parse::<Ipv4Addr>().unwrap().into(), 40000 + i);
    for i in 0..6 {
        let r = udp_ask(&lab.tb, &cl, from(i), node(1, 5353), "ping").expect("udp echo");
        assert!(r.ends_with(":ping"), "{r}");
    }
    // Kill task3 under a steady request loop: no request fails (a failed
    // connect is retried on the other task within the client's
    // connection), and active health marks it down in time.
    let killed = Instant::now();
    b3.stop();
    let mut down_after = None;
    let mut served = 0;
    while killed.elapsed() < Duration::from_millis(1500) {
        let (body, _) = get(&lab.tb, &cl, node(1, 8080), "/").expect("no request fails");
        served += 1;
        let state = task_state(&lab, "h1", "10.0.9.3");
        // Down (active probes) or ejected (failed connects), whichever is first.
        if down_after.is_none() && (state == "down" || state == "ejected") {
            down_after = Some(killed.elapsed());
        }
        if down_after.is_some() {
            assert_eq!(who(&body), "task2", "a down task gets no new connections");
        }
    }
    let down_after = down_after.expect("task3 marked down");
    // fall × interval + one timeout, plus one interval of slack for the probe phase.
    assert!(
        down_after <= Duration::from_millis(2 * 200 + 100 + 200),
        "detected after {down_after:?}"
    );
    assert!(served > 5);
    // UDP sessions that were on task3 moved to task2.
    for i in 0..6 {
        let r = udp_ask(&lab.tb, &cl, from(i), node(1, 5353), "again")
            .expect("udp after the task died");
        assert_eq!(r, "task2:again");
    }
}

#[test]
fn maglev_sends_a_client_to_the_same_task_from_every_node() {
    if !require_root() {
        return;
    }
    let (lab, _b2, _b3) = mesh_lab("maglev", &service("maglev", ""), false);
    let cl = lab.tb.ns("cl");
    let mut tasks = HashSet::new();
    for n in 1..=3u8 {
        for _ in 0..3 {
            let (body, _) = get(&lab.tb, &cl, node(n, 8080), "/").expect("served");
            tasks.insert(who(&body));
        }
    }
    assert_eq!(
        tasks.len(),
        1,
        "one client, one task, whichever node: {tasks:?}"
    );
}

#[test]
fn proxy_protocol_v2_gives_the_task_the_real_client() {
    if !require_root() {
        return;
    }
    let (lab, _b2, _b3) = mesh_lab("ppv2", &service("maglev", "proxy_protocol = \"v2\""), true);
    let cl = lab.tb.ns("cl");
    for n in 1..=3u8 {
        let (body, local) = get(&lab.tb, &cl, node(n, 8080), "/").expect("served");
        let client = body.split_whitespace().nth(1).unwrap_or("");
        assert_eq!(
            client,
            local.to_string(),
            "the task saw the client's own address and port"
        );
    }
}

#[test]
fn host_mode_listens_only_where_a_task_runs() {
    if !require_root() {
        return;
    }
    let (lab, _b2, _b3) = mesh_lab("hostm", &service("round-robin", "mode = \"host\""), false);
    let cl = lab.tb.ns("cl");
    let refused = get(&lab.tb, &cl, node(1, 8080), "/");
    assert!(
        refused.is_err(),
        "h1 has no task and must not listen: {refused:?}"
    );
    for _ in 0..4 {
        let (body, _) = get(&lab.tb, &cl, node(2, 8080), "/").expect("h2 serves");
        assert_eq!(who(&body), "task2", "h2 forwards only to its own task");
    }
}

#[test]
fn a_removed_task_drains_and_its_long_transfer_completes() {
    if !require_root() {
        return;
    }
    let (lab, _b2, _b3) = mesh_lab("drain", &service("round-robin", ""), false);
    let cl = lab.tb.ns("cl");
    // Find a client connection that lands on task3 (round robin alternates).
    let tb = &lab.tb;
    let mut long = None;
    for _ in 0..4 {
        let (body, _) = get(tb, &cl, node(1, 8080), "/").expect("served");
        if who(&body) == "task2" {
            // The next connection goes to task3.
            let cl2 = cl.clone();
            long = Some(
                tb.thread_in_ns(&cl2, || {
                    use std::io::{Read, Write};
                    let mut s = std::net::TcpStream::connect(node(1, 8080)).unwrap();
                    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                        .unwrap();
                    let mut n = 0usize;
                    let mut buf = [0u8; 65536];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(_) => break,
                        }
                    }
                    n
                })
                .unwrap(),
            );
            break;
        }
    }
    let long = long.expect("a connection to task3 started");
    // Wait until that connection is open at h1 (readiness: active count).
    lab.wait_active("h1", "web", "the long transfer");
    // The listener's socket before the reload (its inode).
    let listener = |lab: &Lab| {
        let out = lab
            .tb
            .exec(&lab.tb.ns("h1"), &["ss", "-Hltne", "sport", "=", ":8080"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .find(|w| w.starts_with("ino:"))
            .unwrap_or_else(|| panic!("no listener on :8080: {text}"))
            .to_string()
    };
    let before = listener(&lab);
    // Remove task3 from the config and reload every node.
    let cfg = service("round-robin", "").replace(
        "tasks = [\"10.0.9.2\", \"10.0.9.3\"]",
        "tasks = [\"10.0.9.2\"]",
    );
    std::fs::write(&lab.config, cfg).unwrap();
    for (_, p) in &lab.daemons {
        lab.tb.signal(p, Signal::SIGHUP).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while task_state(&lab, "h1", "10.0.9.3") != "draining" {
        assert!(Instant::now() < deadline, "task3 never started draining");
    }
    // New connections go to task2 only; the open one finishes whole.
    for _ in 0..4 {
        let (body, _) = get(tb, &cl, node(1, 8080), "/").expect("served");
        assert_eq!(who(&body), "task2");
    }
    assert_eq!(
        listener(&lab),
        before,
        "the listener was kept, not reopened"
    );
    let got = long.join().unwrap().unwrap();
    let header = "HTTP/1.1 200 OK\r\nContent-Length: 6553600\r\nConnection: close\r\n\r\n".len();
    assert_eq!(
        got,
        header + 6_553_600,
        "the draining task's transfer completed"
    );
}

/// Sends a relay request (see `vxmesh_dataplane::mesh::relay`) for `task`
/// from namespace `ns` to `via`; the status byte, or None if the relay
/// closed without one.
fn ask_relay(lab: &Lab, ns: &str, via: SocketAddr, task: std::net::SocketAddrV4) -> Option<u8> {
    use std::io::{Read, Write};
    use vxmesh_dataplane::mesh::relay::Request;
    let req = Request {
        task,
        client: "198.18.0.100:40000".parse().unwrap(),
        published: node(1, 8080),
        proxy_v2: false,
        framed: false,
    };
    lab.tb
        .in_ns(ns, move || {
            let mut s = std::net::TcpStream::connect_timeout(&via, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = s.write_all(&req.encode());
            let mut b = [0u8; 1];
            s.read_exact(&mut b).ok().map(|_| b[0])
        })
        .unwrap()
}

#[test]
fn connections_to_other_nodes_tasks_go_through_their_relay_and_only_there() {
    if !require_root() {
        return;
    }
    let (lab, _b2, _b3) = mesh_lab("relay", &service("round-robin", ""), false);
    let cl = lab.tb.ns("cl");
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let (body, _) = get(&lab.tb, &cl, node(1, 8080), "/").expect("served through h1");
        seen.insert(who(&body));
    }
    assert_eq!(
        seen,
        HashSet::from(["task2".to_string(), "task3".to_string()])
    );
    // h1 has no task: every connection went over the underlay to the
    // task's node, which connected locally.
    let svc = lab.cli_json("h1", &["service", "inspect", "web"]);
    assert!(svc["relayed_connections"].as_u64().unwrap() >= 6, "{svc}");
    let served: u64 = ["h2", "h3"]
        .iter()
        .map(|h| common::sample(&lab.scrape(h), "vxmesh_relay_accepted_total"))
        .sum();
    assert!(served >= 6, "the task nodes served the relayed connections");
    // Connections that ended cleanly left their relay connections in h1's
    // pool; the next one goes over one of them (no connect between nodes).
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::sample(&lab.scrape("h1"), "vxmesh_relay_pool_idle") < 1 {
        assert!(
            Instant::now() < deadline,
            "no relay connection went back to the pool"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reused0 = common::sample(&lab.scrape("h1"), "vxmesh_relay_pool_reused_total");
    let served0: u64 = ["h2", "h3"]
        .iter()
        .map(|h| common::sample(&lab.scrape(h), "vxmesh_relay_reused_total"))
        .sum();
    get(&lab.tb, &cl, node(1, 8080), "/").expect("served over a pooled relay connection");
    assert!(common::sample(&lab.scrape("h1"), "vxmesh_relay_pool_reused_total") > reused0);
    let served1: u64 = ["h2", "h3"]
        .iter()
        .map(|h| common::sample(&lab.scrape(h), "vxmesh_relay_reused_total"))
        .sum();
    assert!(
        served1 > served0,
        "a task node served a second request on one connection"
    );
    // The relay serves only member nodes, and only their tasks.
    let task2: std::net::SocketAddrV4 = "10.0.9.2:80".parse().unwrap();
    let refused0 = common::sample(&lab.scrape("h2"), "vxmesh_relay_refused_total");
    assert_eq!(
        ask_relay(&lab, &cl, node(2, 7950), task2),
        None,
        "not a member"
    );
    let h1 = lab.tb.ns("h1");
    assert_eq!(
        ask_relay(&lab, &h1, node(2, 7950), "10.0.9.2:22".parse().unwrap()),
        Some(vxmesh_dataplane::mesh::relay::REFUSED),
        "not a task port"
    );
    assert_eq!(
        ask_relay(&lab, &h1, node(2, 7950), "198.18.0.100:80".parse().unwrap()),
        Some(vxmesh_dataplane::mesh::relay::REFUSED),
        "not a task at all"
    );
    assert_eq!(
        ask_relay(&lab, &h1, node(2, 7950), task2),
        Some(vxmesh_dataplane::mesh::relay::OK),
        "a member asking for a task of the node"
    );
    let refused = common::sample(&lab.scrape("h2"), "vxmesh_relay_refused_total");
    assert_eq!(refused, refused0 + 3);
}
