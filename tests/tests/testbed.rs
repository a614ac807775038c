//! The testbed itself, for real (root): hosts on the bridge reach each other,
//! measurements work, readiness works, and nothing is left behind on drop,
//! even when a test panics.

use std::net::{Ipv4Addr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use vxmesh_netns::{iperf3_tcp, ping, require_root, tcp_bulk, Error, Testbed, SWITCH};

const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Two hosts, h1 (198.18.0.1) and h2 (198.18.0.2), on the bridge.
fn two_hosts(tag: &str) -> Testbed {
    let mut tb = Testbed::new(tag).expect("testbed");
    tb.add_host("h1", "198.18.0.1/24", 1500).expect("h1");
    tb.add_host("h2", "198.18.0.2/24", 1500).expect("h2");
    tb
}

/// Namespaces whose name ends with `-<suffix>`.
fn leftovers(suffix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.ends_with(&format!("-{suffix}")))
        .map(String::from)
        .collect()
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends READY=1, then its child's pid, then a watchdog ping, then waits.
const NOTIFY_PY: &str = r#"
import os, socket, subprocess, time
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
child = subprocess.Popen(["sleep", "1003"])
s.sendto(b"STATUS=starting", addr)
s.sendto(b"READY=1\nSTATUS=serving", addr)
s.sendto(("STATUS=child=%d" % child.pid).encode(), addr)
s.sendto(b"WATCHDOG=1", addr)
print("notified", flush=True)
time.sleep(1000)
"#;

#[test]
fn hosts_on_the_bridge_ping_each_other() {
    if !require_root() {
        return;
    }
    let tb = two_hosts("tbping");
    for (from, to) in [("h1", H2), ("h2", H1)] {
        let p = ping(&tb, from, to, 5, Duration::from_millis(10)).expect("ping runs");
        assert_eq!(p.received, p.sent, "{from} -> {to}: {p:?}");
        assert_eq!((p.sent, p.rtt_us.len()), (5, 5));
        assert!(p.p50().unwrap() > 0.0 && p.p99().unwrap() >= p.p50().unwrap());
    }
    // Nothing answers at an unused address: loss, not an error.
    let p = ping(
        &tb,
        "h1",
        Ipv4Addr::new(198, 18, 0, 77),
        2,
        Duration::from_millis(10),
    )
    .expect("ping runs");
    assert_eq!((p.sent, p.received), (2, 0));
    // The hosts' eth0 and the bridge ports carry the requested MTU.
    let out = tb
        .exec("h1", &["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("mtu 1500"));
    let out = tb
        .exec(SWITCH, &["ip", "-o", "link", "show", "master", "br0"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn tcp_bulk_moves_every_byte() {
    if !require_root() {
        return;
    }
    let tb = two_hosts("tbbulk");
    let bytes = 64 << 20;
    let t = tcp_bulk(&tb, "h2", "h1", H2, 5201, bytes, Duration::from_secs(30)).expect("transfer");
    assert_eq!(t.bytes, bytes);
    assert!(t.gbit_per_s() > 0.0, "{t:?}");
    eprintln!("tcp_bulk h1 -> h2: {:.2} Gbit/s", t.gbit_per_s());
    // The receiver cannot bind an address its host lacks: an error at once.
    let t0 = Instant::now();
    let not_h2 = Ipv4Addr::new(198, 18, 0, 9);
    let err = tcp_bulk(&tb, "h2", "h1", not_h2, 5202, 1, Duration::from_secs(20)).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{err} after {:?}",
        t0.elapsed()
    );
    assert!(err.to_string().contains("bind 198.18.0.9:5202"), "{err}");
    // A sender that cannot connect ends the transfer at once, with its error.
    let mut tb = tb;
    tb.add_namespace("lonely").unwrap();
    let t0 = Instant::now();
    let err = tcp_bulk(&tb, "h2", "lonely", H2, 5203, 1, Duration::from_secs(20)).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{err} after {:?}",
        t0.elapsed()
    );
    assert!(
        err.to_string().contains("connect to 198.18.0.2:5203"),
        "{err}"
    );
}

#[test]
fn iperf3_reports_throughput() {
    if !require_root() {
        return;
    }
    let mut tb = two_hosts("tbiperf");
    let gbit = iperf3_tcp(&mut tb, "h2", "h1", H2, 5301, 1, 1).expect("iperf3");
    assert!(gbit > 0.1, "{gbit} Gbit/s");
    eprintln!("iperf3 h1 -> h2: {gbit:.2} Gbit/s");
}

#[test]
fn links_namespaces_and_threads_inside_them() {
    if !require_root() {
        return;
    }
    let mut tb = two_hosts("tblink");
    let c = tb.add_namespace("c").unwrap();
    assert_eq!(c, tb.ns("c"));
    tb.link(
        "h1",
        "veth-c",
        Some("10.1.0.1/30"),
        "c",
        "eth1",
        Some("10.1.0.2/30"),
        1450,
    )
    .expect("link");
    let p = ping(
        &tb,
        &c,
        Ipv4Addr::new(10, 1, 0, 1),
        3,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 3);
    let out = tb.exec(&c, &["ip", "-o", "link", "show", "eth1"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("mtu 1450"));
    // A socket made in an in_ns thread lives in that namespace.
    let in_h1 = tb.in_ns("h1", || {
        UdpSocket::bind("198.18.0.1:0")
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    let in_h2 = tb.in_ns("h2", || {
        UdpSocket::bind("198.18.0.1:0")
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(in_h1.unwrap(), Ok(()));
    assert_eq!(in_h2.unwrap(), Err(std::io::ErrorKind::AddrNotAvailable));
    // Guard rails: foreign namespaces, addresses outside the test ranges,
    // duplicate names.
    assert!(matches!(
        tb.exec("init", &["true"]),
        Err(Error::UnknownNamespace(_))
    ));
    assert!(matches!(
        tb.add_host("h3", "192.168.0.3/24", 1500),
        Err(Error::InvalidAddress { .. })
    ));
    assert!(matches!(
        tb.add_host("h1", "198.18.0.5/24", 1500),
        Err(Error::InvalidName { .. })
    ));
    let dup = tb.link("h1", "veth-c", None, "h2", "x", None, 1500);
    assert!(matches!(dup, Err(Error::InvalidName { .. })), "{dup:?}");
}

#[test]
fn exec_errors_carry_the_command_and_stderr() {
    if !require_root() {
        return;
    }
    let tb = Testbed::new("tbexec").unwrap();
    let err = tb
        .exec(SWITCH, &["sh", "-c", "echo nope >&2; exit 4"])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&tb.ns(SWITCH)) && msg.contains("nope") && msg.contains("4"),
        "{msg}"
    );
    let out = tb.exec_unchecked(SWITCH, &["sh", "-c", "exit 4"]).unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = tb
        .exec_timeout(SWITCH, &["sleep", "30"], Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[test]
fn spawned_process_logs_signals_and_exit() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new("tbproc").unwrap();
    let p = tb
        .spawn(
            SWITCH,
            &["sh", "-c", "echo hello; echo \"$GREETING\" >&2"],
            &[("GREETING", "world")],
        )
        .unwrap();
    let status = tb.wait_exit(&p, Duration::from_secs(10)).expect("exits");
    assert!(status.success());
    assert_eq!(p.log_tail(2), "hello\nworld");
    assert!(p.log.starts_with(tb.dir()));
    assert!(matches!(
        tb.signal(&p, Signal::SIGTERM),
        Err(Error::NotRunning { .. })
    ));
    let q = tb.spawn(SWITCH, &["sleep", "1000"], &[]).unwrap();
    assert_eq!(tb.wait_exit(&q, Duration::from_millis(50)), None);
    tb.signal(&q, Signal::SIGINT).unwrap();
    let status = tb
        .wait_exit(&q, Duration::from_secs(10))
        .expect("exits on SIGINT");
    assert_eq!(status.signal(), Some(Signal::SIGINT as i32));
}

#[test]
fn spawn_notify_waits_for_ready_and_reads_later_messages() {
    if !require_root() {
        return;
    }
    let mut tb = two_hosts("tbready");
    let p = tb
        .spawn_notify(
            "h1",
            &["python3", "-c", NOTIFY_PY],
            &[],
            Duration::from_secs(20),
        )
        .expect("ready");
    let child = p
        .recv_notify(Duration::from_secs(5))
        .expect("child pid message");
    let child: u32 = child
        .strip_prefix("STATUS=child=")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        p.recv_notify(Duration::from_secs(5)).as_deref(),
        Some("WATCHDOG=1")
    );
    assert_eq!(p.recv_notify(Duration::from_millis(50)), None);
    assert!(alive(child));
    let (suffix, pid, dir) = (tb.suffix().to_string(), p.pid, tb.dir().to_path_buf());
    drop(tb);
    // The daemon, its orphaned child (same process group) and everything else went away.
    assert!(
        !alive(pid) && !alive(child),
        "pid {pid} or child {child} survived"
    );
    assert!(leftovers(&suffix).is_empty(), "{:?}", leftovers(&suffix));
    assert!(!dir.exists());
}

#[test]
fn spawn_notify_reports_early_exit_and_timeout_with_the_log() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new("tbnotrdy").unwrap();
    let t0 = Instant::now();
    let err = tb
        .spawn_notify(
            SWITCH,
            &["sh", "-c", "echo boom: bad config >&2; exit 3"],
            &[],
            Duration::from_secs(20),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NotReady { .. }), "{msg}");
    assert!(
        msg.contains("boom: bad config") && msg.contains("exit status: 3"),
        "{msg}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "noticed the exit late: {:?}",
        t0.elapsed()
    );
    let err = tb
        .spawn_notify(
            SWITCH,
            &["sh", "-c", "echo still starting; exec sleep 1000"],
            &[],
            Duration::from_millis(300),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no READY=1 within") && msg.contains("still starting"),
        "{msg}"
    );
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    if !require_root() {
        return;
    }
    let mut tb = two_hosts("tbdrop");
    tb.add_namespace("x").unwrap();
    tb.link("x", "a", None, "h1", "b", None, 1500).unwrap();
    let p = tb.spawn("h2", &["sleep", "1001"], &[]).unwrap();
    let (suffix, dir) = (tb.suffix().to_string(), tb.dir().to_path_buf());
    assert_eq!(leftovers(&suffix).len(), 4, "sw, h1, h2, x");
    assert!(dir.is_dir());
    drop(tb);
    assert!(leftovers(&suffix).is_empty(), "{:?}", leftovers(&suffix));
    assert!(!dir.exists() && !alive(p.pid));

    let mut seen: Option<(String, PathBuf)> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut tb = two_hosts("tbpanic");
        tb.spawn("h1", &["sleep", "1002"], &[]).unwrap();
        seen = Some((tb.suffix().to_string(), tb.dir().to_path_buf()));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let (suffix, dir) = seen.expect("the testbed was built");
    assert!(leftovers(&suffix).is_empty(), "{:?}", leftovers(&suffix));
    assert!(!dir.exists());
}

#[test]
fn concurrent_testbeds_get_distinct_names() {
    if !require_root() {
        return;
    }
    let a = Testbed::new("tbpar").unwrap();
    let b = Testbed::new("tbpar").unwrap();
    assert_ne!(a.suffix(), b.suffix());
    assert_ne!(a.ns(SWITCH), b.ns(SWITCH));
    assert!(a
        .suffix()
        .starts_with(&format!("tbpar-{}-", std::process::id())));
}
