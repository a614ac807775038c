//! The routing mesh's resources under attack: a node whose descriptors are
//! few, floods of connections and UDP sessions from one client, a silent
//! client, a UDP service with a small session cap, and UDP health checks.
//! Each test proves its guard fired by the counter it moves, and that the
//! daemon's descriptors and memory stay bounded while others are served.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::backend::{self, get, udp_ask};
use common::{sample, Lab, FRONT_ONLY};
use vxmesh_netns::{require_root, workspace_bin};

const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 2);

/// A published port on h1.
fn h1(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), port)
}

/// Two hosts (the task on h2), the attacker `cl` and a legitimate client
/// `ok`, with `services` added to the cluster file; h2's daemon and the
/// task are started, h1's daemon is left to the test.
fn lab(tag: &str, services: &str) -> (Lab, backend::Backend) {
    let mut lab = Lab::new(tag, 2, &format!("{FRONT_ONLY}\n{services}"));
    lab.tb.add_host("cl", "198.18.0.100/24", 1500).unwrap();
    lab.tb.add_host("ok", "198.18.0.101/24", 1500).unwrap();
    lab.start("h2");
    let task = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", TASK, false);
    (lab, task)
}

/// A `[[services]]` table for the task on h2.
fn service(name: &str, ports: &str, extra: &str) -> String {
    format!(
        "[[services]]\nname = \"{name}\"\nnetwork = \"front\"\ntasks = [\"10.0.9.2\"]\nports = [{ports}]\n{extra}\n"
    )
}

/// Starts h1's daemon with RLIMIT_NOFILE `soft:hard` (through prlimit,
/// which execs it in place) and waits for READY=1.
fn start_limited(lab: &mut Lab, soft: u64, hard: u64) {
    let bin = workspace_bin("vxmeshd");
    let (config, sock) = (lab.config.clone(), lab.socket("h1"));
    let ns = lab.tb.ns("h1");
    let nofile = format!("--nofile={soft}:{hard}");
    let p = lab
        .tb
        .spawn_notify(
            &ns,
            &[
                "prlimit",
                &nofile,
                "--",
                bin.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--node",
                "h1",
                "--socket",
                sock.to_str().unwrap(),
            ],
            &[("RUST_LOG", "info")],
            Duration::from_secs(10),
        )
        .expect("vxmeshd on h1 under prlimit");
    lab.daemons.push(("h1".into(), p));
}

fn h1_pid(lab: &Lab) -> u32 {
    lab.daemons.iter().find(|(h, _)| h == "h1").unwrap().1.pid
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The soft and hard `Max open files` of a process.
fn nofile(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let l = s.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v: Vec<u64> = l
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

fn inspect(lab: &Lab, svc: &str, key: &str) -> u64 {
    let s = lab.cli_json("h1", &["service", "inspect", svc]);
    s[key].as_u64().unwrap_or_else(|| panic!("no {key} in {s}"))
}

fn task_state(lab: &Lab, svc: &str) -> String {
    let ps = lab.cli_json("h1", &["service", "ps", svc]);
    ps[0]["state"].as_str().unwrap_or("absent").to_string()
}

/// Probes of the service's task so far.
fn probes(lab: &Lab, svc: &str) -> u64 {
    let ps = lab.cli_json("h1", &["service", "ps", svc]);
    ps[0]["probe_duration"]["count"].as_u64().unwrap()
}

/// Opens `n` TCP connections from `ns` to `to` that send nothing.
fn idle_flood(lab: &Lab, ns: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    lab.tb
        .in_ns(ns, move || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap())
                .collect()
        })
        .unwrap()
}

/// Whether the mesh closed `c` (EOF or reset), without waiting.
fn is_closed(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let r = c.peek(&mut [0u8; 1]);
    c.set_nonblocking(false).unwrap();
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Splits a flood into the connections the mesh closed and those it
/// holds, once every one is accounted for: closed at the client, or open
/// at h1 (`open_connections` of `svc`). Bounded by 10 s.
fn settle(lab: &Lab, svc: &str, conns: Vec<TcpStream>) -> (usize, Vec<TcpStream>) {
    let n = conns.len();
    lab.until(Duration::from_secs(10), || {
        let closed = conns.iter().filter(|c| is_closed(c)).count();
        closed + inspect(lab, svc, "open_connections") as usize == n
    })
    .unwrap_or_else(|| panic!("the flood never settled"));
    let (closed, held): (Vec<_>, Vec<_>) = conns.into_iter().partition(is_closed);
    (closed.len(), held)
}

#[test]
fn the_daemon_raises_its_fd_limit_and_a_spent_budget_spares_probes() {
    if !require_root() {
        return;
    }
    let (mut lab, _task) = lab(
        "fdbudget",
        &service(
            "web",
            "{ published = 8080, target = 80 }",
            "max_connections = 0\nmax_connections_per_source = 0\nfirst_byte_timeout_ms = 0\n\
             health = { kind = \"tcp\", interval_ms = 200, timeout_ms = 100 }",
        ),
    );
    start_limited(&mut lab, 256, 600);
    let pid = h1_pid(&lab);
    assert_eq!(nofile(pid), (600, 600), "soft limit raised to the hard one");
    let m = lab.scrape("h1");
    // 600 descriptors: half for the mesh's clients (two per connection).
    assert_eq!(
        sample(&m, r#"vxmesh_mesh_budget{resource="descriptors"}"#),
        300
    );
    lab.until(Duration::from_secs(10), || {
        get(&lab.tb, &lab.tb.ns("ok"), h1(8080), "/").is_ok()
    })
    .expect("served before the flood");
    // 400 idle connections from one client, no per-source cap: 150 fit.
    // (The task closes a connection that sends nothing after 5 s: what
    // follows is checked before that.)
    let flood = idle_flood(&lab, &lab.tb.ns("cl"), h1(8080), 400);
    let (closed, held) = settle(&lab, "web", flood);
    assert_eq!((held.len(), closed), (150, 250), "held / closed");
    assert_eq!(inspect(&lab, "web", "budget_refused_connections"), 250);
    let m = lab.scrape("h1");
    assert_eq!(
        sample(
            &m,
            r#"vxmesh_service_refused_total{service="web",kind="connections",reason="node_budget"}"#
        ),
        250
    );
    assert_eq!(
        sample(&m, r#"vxmesh_mesh_accept_errors_total{reason="exhausted"}"#),
        0,
        "the daemon never ran out of descriptors"
    );
    assert!(
        fds(pid) < 600,
        "descriptors stay under the limit: {}",
        fds(pid)
    );
    // Probes go on with the budget spent: the task stays up.
    let before = probes(&lab, "web");
    lab.until(Duration::from_secs(5), || probes(&lab, "web") >= before + 5)
        .expect("probes keep running");
    assert_eq!(task_state(&lab, "web"), "up");
    drop(held);
    lab.until(Duration::from_secs(10), || {
        inspect(&lab, "web", "open_connections") == 0
    })
    .expect("the flood's places given back");
    let (body, _) = get(&lab.tb, &lab.tb.ns("ok"), h1(8080), "/").expect("served after");
    assert!(body.starts_with("task2"));
}

#[test]
fn a_connection_flood_from_one_source_is_capped_and_silent_clients_time_out() {
    if !require_root() {
        return;
    }
    let (mut lab, _task) = lab(
        "connsrc",
        &service(
            "web",
            "{ published = 8080, target = 80 }",
            "max_connections_per_source = 10\nfirst_byte_timeout_ms = 3000",
        ),
    );
    lab.start("h1");
    let pid = h1_pid(&lab);
    let ok = lab.tb.ns("ok");
    lab.until(Duration::from_secs(10), || {
        get(&lab.tb, &ok, h1(8080), "/").is_ok()
    })
    .expect("served before the flood");
    let (fds0, rss0) = (fds(pid), rss_kib(pid));
    // 300 silent connections from `cl` while `ok` is served.
    let (flood, served) = std::thread::scope(|s| {
        let flood = s.spawn(|| idle_flood(&lab, &lab.tb.ns("cl"), h1(8080), 300));
        let mut served = 0;
        while !flood.is_finished() || served < 5 {
            let (body, _) = get(&lab.tb, &ok, h1(8080), "/").expect("legitimate client served");
            assert!(body.starts_with("task2"));
            served += 1;
            assert!(served < 10_000);
        }
        (flood.join().unwrap(), served)
    });
    let (closed, held) = settle(&lab, "web", flood);
    let during = fds(pid);
    assert_eq!((held.len(), closed), (10, 290), "held / closed at the cap");
    assert!(served >= 5);
    assert_eq!(inspect(&lab, "web", "source_refused_connections"), 290);
    let m = lab.scrape("h1");
    assert_eq!(
        sample(
            &m,
            r#"vxmesh_service_refused_total{service="web",kind="connections",reason="source_limit"}"#
        ),
        290
    );
    // Ten places held, no task connection for them yet: about 10 more
    // descriptors (slack for the admin API and probes).
    assert!(during <= fds0 + 10 + 16, "descriptors {fds0} -> {during}");
    let grew = rss_kib(pid).saturating_sub(rss0);
    assert!(grew < 16 * 1024, "memory stays bounded: grew {grew} KiB");
    // The ten that hold a place without a word are closed after 3 s.
    let t0 = Instant::now();
    let ended = lab
        .tb
        .in_ns(&lab.tb.ns("cl"), move || {
            use std::io::Read;
            held.into_iter()
                .filter(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    matches!(c.read(&mut [0u8; 1]), Ok(0))
                })
                .count()
        })
        .unwrap();
    assert_eq!(ended, 10, "closed by the first-byte timeout");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(inspect(&lab, "web", "first_byte_timeouts"), 10);
    let m = lab.scrape("h1");
    assert_eq!(
        sample(
            &m,
            r#"vxmesh_service_timeouts_total{service="web",kind="first_byte"}"#
        ),
        10
    );
    // The cap is free again for `cl`.
    let (body, _) = get(&lab.tb, &lab.tb.ns("cl"), h1(8080), "/").expect("cl served again");
    assert!(body.starts_with("task2"));
}

const UDP_SERVICES: &str = r#"
[[services]]
name = "flood"
network = "front"
tasks = ["10.0.9.2"]
ports = [{ published = 5353, target = 53, protocol = "udp" }]
max_sessions_per_source = 8
udp_timeout_ms = 60000
health = { interval_ms = 200, timeout_ms = 100 }

[[services]]
name = "capped"
network = "front"
tasks = ["10.0.9.2"]
ports = [{ published = 5354, target = 53, protocol = "udp" }]
max_sessions = 3
max_sessions_per_source = 0
udp_timeout_ms = 60000
health = { kind = "udp", udp_send = "ping", udp_expect = "task2:ping", interval_ms = 200, timeout_ms = 100 }
"#;

/// Sends `msg` from `s` to `to` and waits up to `wait` for the reply.
fn ask(s: &UdpSocket, to: SocketAddr, msg: &str, wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 1500];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).to_string())
}

#[test]
fn a_session_flood_from_one_source_is_capped_and_memory_stays_bounded() {
    if !require_root() {
        return;
    }
    let (mut lab, _task) = lab("udpsrc", UDP_SERVICES);
    lab.start("h1");
    let pid = h1_pid(&lab);
    let ok = lab.tb.ns("ok");
    lab.until(Duration::from_secs(10), || {
        udp_ask(
            &lab.tb,
            &ok,
            "198.18.0.101:0".parse().unwrap(),
            h1(5353),
            "hi",
        )
        .is_ok()
    })
    .expect("served before the flood");
    let (fds0, rss0) = (fds(pid), rss_kib(pid));
    // 8 sessions kept, then 2000 datagrams from 2000 other ports of `cl`,
    // sent 100 at a time: each batch fits h1's socket buffer, and the next
    // goes once the daemon has counted the last one, so a loaded machine
    // drops none of them before the daemon reads them.
    let cl = lab.tb.ns("cl");
    let kept: Vec<UdpSocket> = lab
        .tb
        .in_ns(&cl, || {
            (0..8)
                .map(|_| UdpSocket::bind("198.18.0.100:0").unwrap())
                .collect()
        })
        .unwrap();
    for s in &kept {
        assert!(ask(s, h1(5353), "mine", Duration::from_secs(2)).is_some());
    }
    for batch in 1..=20u64 {
        lab.tb
            .in_ns(&cl, || {
                for _ in 0..100 {
                    let s = UdpSocket::bind("198.18.0.100:0").unwrap();
                    s.send_to(b"flood", h1(5353)).unwrap();
                }
            })
            .unwrap();
        lab.until(Duration::from_secs(10), || {
            inspect(&lab, "flood", "source_refused_sessions") >= batch * 100
        })
        .unwrap_or_else(|| panic!("batch {batch} of the flood is refused"));
    }
    // Any answer to the flood would come to a socket already closed; the
    // kept sessions still work.
    let answered = kept
        .iter()
        .filter(|s| {
            ask(s, h1(5353), "again", Duration::from_secs(2)).as_deref() == Some("task2:again")
        })
        .count();
    assert_eq!(answered, 8, "the sessions opened before the flood go on");
    let refused = inspect(&lab, "flood", "source_refused_sessions");
    assert_eq!(refused, 2000, "every datagram of the flood is refused");
    assert_eq!(
        inspect(&lab, "flood", "open_sessions"),
        9,
        "8 of cl, 1 of ok"
    );
    let m = lab.scrape("h1");
    assert_eq!(
        sample(
            &m,
            r#"vxmesh_service_refused_total{service="flood",kind="sessions",reason="source_limit"}"#
        ),
        refused
    );
    let (fds1, grew) = (fds(pid), rss_kib(pid).saturating_sub(rss0));
    assert!(fds1 <= fds0 + 8 + 16, "descriptors {fds0} -> {fds1}");
    assert!(grew < 16 * 1024, "memory stays bounded: grew {grew} KiB");
    // Another client is served during and after.
    let r = udp_ask(
        &lab.tb,
        &ok,
        "198.18.0.101:0".parse().unwrap(),
        h1(5353),
        "still",
    )
    .unwrap();
    assert_eq!(r, "task2:still");
    drop(kept);
}

#[test]
fn max_sessions_refuses_new_sessions_and_keeps_the_open_ones() {
    if !require_root() {
        return;
    }
    let (mut lab, _task) = lab("udpcap", UDP_SERVICES);
    lab.start("h1");
    let (replies, late) = lab
        .tb
        .in_ns(&lab.tb.ns("cl"), || {
            let socks: Vec<UdpSocket> = (0..6)
                .map(|_| UdpSocket::bind("198.18.0.100:0").unwrap())
                .collect();
            // Until the first answers (the daemon is ready at once, the
            // probe may still run), then one datagram from each of the rest.
            let t0 = Instant::now();
            while ask(&socks[0], h1(5354), "one", Duration::from_millis(300)).is_none() {
                assert!(t0.elapsed() < Duration::from_secs(10), "never served");
            }
            let replies: Vec<bool> = socks[1..]
                .iter()
                .map(|s| ask(s, h1(5354), "x", Duration::from_millis(500)).is_some())
                .collect();
            let late = socks[..3]
                .iter()
                .filter(|s| {
                    ask(s, h1(5354), "y", Duration::from_secs(2)).as_deref() == Some("task2:y")
                })
                .count();
            (replies, late)
        })
        .unwrap();
    assert_eq!(
        replies,
        [true, true, false, false, false],
        "the 4th to 6th sessions are refused"
    );
    assert_eq!(late, 3, "the three sessions go on");
    assert_eq!(inspect(&lab, "capped", "refused_sessions"), 3);
    assert_eq!(inspect(&lab, "capped", "open_sessions"), 3);
    let m = lab.scrape("h1");
    assert_eq!(
        sample(
            &m,
            r#"vxmesh_service_refused_total{service="capped",kind="sessions",reason="service_limit"}"#
        ),
        3
    );
}

#[test]
fn udp_only_services_are_health_checked() {
    if !require_root() {
        return;
    }
    let (mut lab, mut task) = lab("udphc", UDP_SERVICES);
    lab.start("h1");
    // `flood` has the default check (ICMP port unreachable is down),
    // `capped` a payload and the reply it wants.
    let both = |lab: &Lab, want: &str| {
        lab.until(Duration::from_secs(10), || {
            task_state(lab, "flood") == want && task_state(lab, "capped") == want
        })
    };
    let before = (probes(&lab, "flood"), probes(&lab, "capped"));
    lab.until(Duration::from_secs(5), || {
        probes(&lab, "flood") > before.0 + 2 && probes(&lab, "capped") > before.1 + 2
    })
    .expect("UDP-only services are probed");
    both(&lab, "up").expect("up while the task answers");
    task.stop();
    both(&lab, "down").unwrap_or_else(|| {
        panic!(
            "down once the task stopped: flood {}, capped {}",
            task_state(&lab, "flood"),
            task_state(&lab, "capped")
        )
    });
    let ok = lab.tb.ns("ok");
    let _task = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", TASK, false);
    both(&lab, "up").expect("up again when the task is back");
    let r = udp_ask(
        &lab.tb,
        &ok,
        "198.18.0.101:0".parse().unwrap(),
        h1(5354),
        "back",
    )
    .unwrap();
    assert_eq!(r, "task2:back");
}
