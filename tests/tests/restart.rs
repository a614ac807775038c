//! End to end: a node's network survives vxmeshd being handed over to a
//! new process (SIGUSR2, as an upgrade does it), crashing (SIGKILL, with
//! systemd's descriptor store played by a stand-in that speaks its
//! protocol), and a successor that reads another handover version; the
//! handover socket refuses strangers and bad frames.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{self, get, udp_ask};
use common::{Lab, FRONT_ONLY};
use nix::sys::signal::Signal;
use vxmesh_netns::fdstore::{FdStore, Held};
use vxmesh_netns::{require_root, PingStats, Testbed};

const CLIENT: &str = "198.18.0.100";

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn node(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 18, 0, n).into(), port)
}

/// `web` on every node's port 8080, tasks on h2 and h3; connections that
/// are open when a daemon stops get 10 s to finish.
fn config() -> String {
    format!(
        r#"{FRONT_ONLY}
[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.2", "10.0.9.3"]
ports = [{{ published = 8080, target = 80, protocol = "tcp" }},
         {{ published = 5353, target = 53, protocol = "udp" }}]
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 100, rise = 1, fall = 3 }}
drain_ms = 10000
"#
    )
}

/// Three hosts with daemons, tasks on h2 and h3, a client `cl`; returns
/// once h1 sees both tasks up.
fn lab(tag: &str) -> (Lab, backend::Backend, backend::Backend) {
    let mut lab = hosts(tag);
    lab.start("h1");
    let (b2, b3) = tasks(&mut lab);
    (lab, b2, b3)
}

/// The hosts, with daemons on h2 and h3 only.
fn hosts(tag: &str) -> Lab {
    let mut lab = Lab::new(tag, 3, &config());
    lab.tb
        .add_host("cl", &format!("{CLIENT}/24"), 1500)
        .expect("client");
    for h in ["h1", "h2", "h3"] {
        lab.no_ipv6(h);
    }
    lab.start("h2");
    lab.start("h3");
    lab
}

/// Starts the tasks and the iperf3 server; returns once h1 sees the tasks up.
fn tasks(lab: &mut Lab) -> (backend::Backend, backend::Backend) {
    start_iperf_server(lab);
    let b2 = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", ov(2), false);
    let b3 = backend::start(&lab.tb, &lab.tb.ns("h3"), "task3", ov(3), false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = lab.cli_json("h1", &["service", "ps", "web"]);
        let up = ps
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "up")
            .count();
        if up == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "tasks never up on h1: {ps}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (b2, b3)
}

/// The interface index of `dev` on `host` (a re-created device gets a new one).
fn ifindex(tb: &Testbed, host: &str, dev: &str) -> Option<u32> {
    let out = tb
        .exec_unchecked(&tb.ns(host), &["ip", "-o", "link", "show", "dev", dev])
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split(':').next()?.trim().parse().ok()
}

/// The routes through `dev` on `host`.
fn routes(tb: &Testbed, host: &str, dev: &str) -> String {
    let out = tb
        .exec(&tb.ns(host), &["ip", "-4", "route", "show", "dev", dev])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What ran while a daemon changed hands.
struct Load {
    pings: PingStats,
    http_ok: u64,
    http_failed: Vec<String>,
    iperf_ok: Result<(), String>,
    long_bytes: usize,
}

/// Runs `during` while h2 pings h1's overlay address every 10 ms, the
/// client asks `web` through h1 every 20 ms, h1 sends an iperf3 transfer to
/// h2 across the overlay, and a long download through h1 is open.
fn under_load(lab: &Lab, during: impl FnOnce()) -> Load {
    let tb = &lab.tb;
    let done = AtomicBool::new(false);
    let cl = tb.ns("cl");
    // The long download, opened (and started) before anything happens.
    let long = tb
        .thread_in_ns(&cl, || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(node(1, 8080)).unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut n = 0usize;
            let mut buf = [0u8; 65536];
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            n
        })
        .unwrap();
    lab.wait_active("h1", "web", "the long download");
    std::thread::scope(|s| {
        let pings = s.spawn(|| {
            let mut all = PingStats {
                sent: 0,
                received: 0,
                rtt_us: Vec::new(),
            };
            while !done.load(Ordering::SeqCst) {
                let p = vxmesh_netns::echo(
                    tb,
                    &tb.ns("h2"),
                    ov(1),
                    1,
                    Duration::from_millis(10),
                    Duration::from_secs(1),
                )
                .expect("echo");
                all.sent += p.sent;
                all.received += p.received;
                all.rtt_us.extend(p.rtt_us);
                std::thread::sleep(Duration::from_millis(10));
            }
            all
        });
        let http = s.spawn(|| {
            let (mut ok, mut failed) = (0, Vec::new());
            while !done.load(Ordering::SeqCst) {
                match get(tb, &cl, node(1, 8080), "/") {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        });
        let iperf = s.spawn(|| {
            let out = tb
                .exec_timeout_unchecked(
                    &tb.ns("h1"),
                    &["iperf3", "-c", "10.0.9.2", "-p", "5201", "-t", "4", "-J"],
                    Duration::from_secs(20),
                )
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() && !text.contains("\"error\"") {
                Ok(())
            } else {
                Err(format!("iperf3 failed: {text}"))
            }
        });
        // Let every kind of traffic run a moment before the change.
        std::thread::sleep(Duration::from_millis(500));
        during();
        let iperf_ok = iperf.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::SeqCst);
        let (http_ok, http_failed) = http.join().unwrap();
        Load {
            pings: pings.join().unwrap(),
            http_ok,
            http_failed,
            iperf_ok,
            long_bytes: long.join().unwrap().unwrap(),
        }
    })
}

const SLOW_BYTES: usize =
    6_553_600 + "HTTP/1.1 200 OK\r\nContent-Length: 6553600\r\nConnection: close\r\n\r\n".len();

/// A daemon the stand-in for systemd started: killed and reaped when
/// dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the process `pid` (a daemon the test did not spawn through the
/// testbed) when dropped.
struct PidGuard(i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
}

fn start_iperf_server(lab: &mut Lab) {
    let ns = lab.tb.ns("h2");
    lab.tb
        .spawn(
            &ns,
            &["iperf3", "-s", "-1", "-B", "10.0.9.2", "-p", "5201"],
            &[],
        )
        .expect("iperf3 server");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab
            .tb
            .exec(&ns, &["ss", "-Hltn", "sport", "=", ":5201"])
            .unwrap();
        if !out.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "iperf3 server not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_handover_under_load_loses_no_request_and_keeps_the_devices() {
    if !require_root() {
        return;
    }
    let (lab, _b2, mut b3) = lab("handover");
    // task3 dies first: h1 sees it down, and so must its successor.
    b3.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = lab.cli_json("h1", &["service", "ps", "web"]);
        let down = ps
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["addr"] == "10.0.9.3" && t["state"] == "down");
        if down {
            break;
        }
        assert!(Instant::now() < deadline, "task3 never down on h1: {ps}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tap = ifindex(&lab.tb, "h1", "vxm-front").expect("h1's TAP");
    let old = lab.daemon_of("h1");
    // A UDP session through h1 before the handover.
    let client: SocketAddr = format!("{CLIENT}:40000").parse().unwrap();
    let ask = |msg: &str| udp_ask(&lab.tb, &lab.tb.ns("cl"), client, node(1, 5353), msg).unwrap();
    let first = ask("before");
    let task = first.split(':').next().unwrap().to_string();
    let mut successor = None;
    let load = under_load(&lab, || {
        lab.tb.signal(old, Signal::SIGUSR2).unwrap();
        // The successor says READY=1 on the same notify socket; the old
        // daemon then names it the service's main process and exits.
        let deadline = Instant::now() + Duration::from_secs(15);
        while successor.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no MAINPID= from the handover");
            if let Some(msg) = old.recv_notify(left) {
                successor = msg
                    .lines()
                    .find_map(|l| l.strip_prefix("MAINPID="))
                    .map(|p| p.parse::<i32>().unwrap());
            }
        }
    });
    let successor = PidGuard(successor.unwrap());
    let status = lab
        .tb
        .wait_exit(old, Duration::from_secs(15))
        .expect("the old daemon exits after the handover");
    assert!(
        status.success(),
        "old daemon: {status}\n{}",
        old.log_tail(40)
    );
    assert!(
        load.http_failed.is_empty() && load.http_ok > 20,
        "HTTP through h1: {} ok, failed: {:?}",
        load.http_ok,
        load.http_failed
    );
    let lost = load.pings.sent - load.pings.received;
    assert!(
        lost <= 2 && load.pings.sent > 50,
        "pings h2 -> h1: {} sent, {lost} lost",
        load.pings.sent
    );
    load.iperf_ok.expect("iperf3 across the overlay");
    assert_eq!(load.long_bytes, SLOW_BYTES, "the long download completed");
    assert_eq!(
        ifindex(&lab.tb, "h1", "vxm-front"),
        Some(tap),
        "the TAP was kept"
    );
    // The UDP session went over with its upstream socket: same task; the
    // task that was down started down.
    assert_eq!(ask("after"), format!("{task}:after"));
    let log = std::fs::read_to_string(&old.log).unwrap();
    assert!(
        log.contains("UDP sessions taken over"),
        "{}",
        old.log_tail(40)
    );
    assert!(
        log.contains("tasks down at the predecessor start down"),
        "{}",
        old.log_tail(40)
    );
    // The successor serves the admin socket, the overlay and the mesh.
    let st = lab.status("h1");
    assert_eq!(st["pid"].as_i64(), Some(successor.0 as i64), "{st}");
    let (body, _) = get(&lab.tb, &lab.tb.ns("cl"), node(1, 8080), "/").expect("served");
    assert!(body.starts_with("task"), "{body}");
    println!(
        "handover: http {} ok 0 failed, pings {} sent {lost} lost, long download whole",
        load.http_ok, load.pings.sent
    );
}

#[test]
fn a_crash_restart_gets_the_stored_descriptors_back_and_resumes_at_once() {
    if !require_root() {
        return;
    }
    let mut lab = hosts("crash");
    let store = FdStore::bind(lab.tb.dir());
    let ns = lab.tb.ns("h1");
    let args = lab.daemon_args("h1", &[]);
    let log = lab.tb.dir().join("h1-under-fdstore.log");
    let first = ChildGuard(store.restart(&ns, &args, &log));
    let stored = |s: &Held| {
        let n = s.names();
        s.said(0, "READY=1")
            && ["tap/vxm-front/0", "underlay/rx/0", "admin", "handover"]
                .iter()
                .all(|want| n.contains(want))
            && n.iter().any(|x| x.starts_with("tcp/"))
    };
    assert!(
        store.wait(Duration::from_secs(10), stored),
        "the daemon did not fill the store: {:?}\n{}",
        store.names(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (_b2, _b3) = tasks(&mut lab);
    let tap = ifindex(&lab.tb, "h1", "vxm-front").expect("h1's TAP");
    let before = routes(&lab.tb, "h1", "vxm-front");
    assert!(before.contains("10.0.9.0/24"), "{before}");
    let mut first = Some(first);
    let mut second = None;
    let load = under_load(&lab, || {
        let mut f = first.take().unwrap();
        f.0.kill().unwrap();
        f.0.wait().unwrap();
        // Nothing of the node went with the process.
        assert_eq!(
            ifindex(&lab.tb, "h1", "vxm-front"),
            Some(tap),
            "the TAP stayed"
        );
        assert_eq!(routes(&lab.tb, "h1", "vxm-front"), before, "routes stayed");
        let from = store.messages();
        let started = Instant::now();
        let child = ChildGuard(store.restart(&ns, &args, &log));
        // The first echo answered through h1's TAP by the new process.
        loop {
            let p = vxmesh_netns::echo(
                &lab.tb,
                &lab.tb.ns("h2"),
                ov(1),
                1,
                Duration::from_millis(1),
                Duration::from_millis(20),
            )
            .unwrap();
            if p.received > 0 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never back");
        }
        second = Some((child, started.elapsed(), from));
    });
    let (_second, back, from) = second.unwrap();
    assert!(
        store.wait(Duration::from_secs(10), |s| s.said(from, "READY=1")),
        "the restarted daemon never said READY=1"
    );
    assert_eq!(
        ifindex(&lab.tb, "h1", "vxm-front"),
        Some(tap),
        "the TAP was reused"
    );
    assert_eq!(routes(&lab.tb, "h1", "vxm-front"), before);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("TAP queues taken over") && text.contains("underlay sockets taken over"),
        "the restart took the stored descriptors: {text}"
    );
    load.iperf_ok
        .expect("iperf3 across the overlay survived the crash");
    let lost = load.pings.sent - load.pings.received;
    println!(
        "crash: overlay back {} ms after the new process started; pings {} sent {lost} lost; http {} ok {} failed",
        back.as_millis(),
        load.pings.sent,
        load.http_ok,
        load.http_failed.len()
    );
    assert!(
        back < Duration::from_millis(200),
        "the overlay carried traffic again only {back:?} after the restart"
    );
}

/// h1 and h2 with daemons on the plain network (no services).
fn plain(tag: &str, hosts: u8) -> Lab {
    let mut lab = Lab::new(tag, hosts, FRONT_ONLY);
    for i in 1..=hosts {
        let h = format!("h{i}");
        lab.no_ipv6(&h);
    }
    lab.start("h1");
    lab.start("h2");
    lab
}

/// True when h2 reaches h1's overlay address.
fn h1_answers(lab: &Lab) -> bool {
    let p = vxmesh_netns::echo(
        &lab.tb,
        &lab.tb.ns("h2"),
        ov(1),
        5,
        Duration::from_millis(20),
        Duration::from_secs(3),
    )
    .unwrap();
    p.received >= 4
}

#[test]
fn a_successor_of_another_version_makes_way_and_starts_on_the_same_devices() {
    if !require_root() {
        return;
    }
    let mut lab = plain("fallback", 2);
    let tap = ifindex(&lab.tb, "h1", "vxm-front").expect("h1's TAP");
    let i = lab.daemons.iter().position(|(h, _)| h == "h1").unwrap();
    let (_, old) = lab.daemons.remove(i);
    // The successor claims a handover version this daemon does not speak:
    // it declines the offer, the old daemon stops cleanly, the new one
    // starts once it is gone (spawn_daemon waits for its READY=1).
    let new = lab.spawn_daemon("h1", &["--takeover", "--handover-version", "99"], &[]);
    let status = lab
        .tb
        .wait_exit(&old, Duration::from_secs(10))
        .expect("the old daemon stopped");
    assert!(status.success(), "{}", old.log_tail(30));
    assert!(
        old.log_tail(30).contains("reads another version"),
        "{}",
        old.log_tail(30)
    );
    assert!(
        new.log_tail(60).contains("declined the handover"),
        "{}",
        new.log_tail(60)
    );
    assert_eq!(
        ifindex(&lab.tb, "h1", "vxm-front"),
        Some(tap),
        "the TAP was reused, not re-created"
    );
    assert_eq!(lab.status("h1")["pid"].as_u64(), Some(u64::from(new.pid)));
    assert!(h1_answers(&lab), "the overlay works after the fallback");
}

mod raw {
    //! A handover client that says what the test wants, however wrong.
    use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
    use std::path::Path;

    use nix::sys::socket::{
        self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
    };

    pub struct Raw(pub OwnedFd);

    impl Raw {
        pub fn connect(path: &Path) -> Raw {
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            socket::connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
            let tv = nix::sys::time::TimeVal::new(10, 0);
            socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv).unwrap();
            Raw(fd)
        }

        pub fn send(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<usize> {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
            socket::sendmsg::<()>(
                self.0.as_raw_fd(),
                &[std::io::IoSlice::new(body)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
        }

        /// The next frame as text, or `None` once the daemon closed the
        /// connection (descriptors that come with it are closed).
        pub fn recv(&self) -> Option<String> {
            let mut buf = vec![0u8; 70_000];
            let mut space = nix::cmsg_space!([RawFd; 253]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let m = socket::recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .ok()?;
            for c in m.cmsgs().ok()? {
                if let socket::ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        let _ = nix::unistd::close(r);
                    }
                }
            }
            let n = m.bytes;
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
        }
    }
}

#[test]
fn the_handover_socket_refuses_strangers_and_bad_frames_and_the_daemon_runs_on() {
    if !require_root() {
        return;
    }
    let mut lab = plain("badhand", 3);
    let path = {
        let mut p = lab.socket("h1").into_os_string();
        p.push(".handover");
        std::path::PathBuf::from(p)
    };
    let tap = ifindex(&lab.tb, "h1", "vxm-front").unwrap();
    let h1 = lab.daemon_of("h1");
    let refusals = |lab: &Lab| {
        std::fs::read_to_string(&lab.daemon_of("h1").log)
            .unwrap()
            .matches("handover refused")
            .count()
    };
    // A user other than root cannot reach the socket at all.
    let args = lab.daemon_args("h1", &["--takeover"]);
    let mut stranger = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    stranger.extend(args.iter().map(String::as_str));
    let out = lab.tb.exec_unchecked(&lab.tb.ns("h1"), &stranger).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("taking the node over") && err.contains("ermission denied"),
        "{err}"
    );
    // Root, saying wrong things: each is refused and logged, nothing changes.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        ("garbage", vec![b"\xff\x00not json".to_vec()], false),
        ("an unknown frame", vec![br#"{"gimme":{}}"#.to_vec()], false),
        (
            "taken before hello",
            vec![br#"{"taken":null}"#.to_vec()],
            false,
        ),
        ("a frame over 64 KiB", vec![vec![b' '; 66_000]], false),
        (
            "hello with a descriptor",
            vec![br#"{"hello":{"version":1,"pid":1}}"#.to_vec()],
            true,
        ),
        (
            "hello, then nonsense",
            vec![
                br#"{"hello":{"version":1,"pid":1}}"#.to_vec(),
                b"{\"end\":7}".to_vec(),
            ],
            false,
        ),
    ];
    for (what, frames, with_fd) in cases {
        let before = refusals(&lab);
        let c = raw::Raw::connect(&path);
        let _ = socket2::SockRef::from(&c.0).set_send_buffer_size(1 << 20);
        for (i, f) in frames.iter().enumerate() {
            let fds: Vec<BorrowedFd<'_>> = if with_fd { vec![a.as_fd()] } else { vec![] };
            let _ = c.send(f, &fds);
            if i + 1 < frames.len() {
                let offer = c.recv().unwrap_or_default();
                assert!(offer.contains("\"offer\""), "{what}: {offer}");
            }
        }
        // The daemon answers a bad frame by closing the connection.
        while let Some(frame) = c.recv() {
            assert!(frame.contains("\"offer\""), "{what}: {frame}");
        }
        assert_eq!(refusals(&lab), before + 1, "{what} was refused and logged");
    }
    // A client that takes everything and walks away: the daemon runs on.
    let c = raw::Raw::connect(&path);
    c.send(br#"{"hello":{"version":1,"pid":1}}"#, &[]).unwrap();
    assert!(c.recv().unwrap().contains("\"offer\""));
    c.send(br#"{"accept":null}"#, &[]).unwrap();
    while let Some(f) = c.recv() {
        if f.contains("\"end\"") {
            break;
        }
    }
    let before = refusals(&lab);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while refusals(&lab) == before {
        assert!(Instant::now() < deadline, "the walk-away was not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lab.tb.wait_exit(h1, Duration::ZERO).is_none(),
        "h1's daemon runs on"
    );
    assert_eq!(ifindex(&lab.tb, "h1", "vxm-front"), Some(tap));
    assert!(h1_answers(&lab));
    assert_eq!(lab.status("h1")["pid"].as_u64(), Some(u64::from(h1.pid)));
    // A fake predecessor on h3 offers descriptors of the wrong kind: the
    // successor refuses them and stops, saying why.
    let fake_path = {
        let mut p = lab.socket("h3").into_os_string();
        p.push(".handover");
        std::path::PathBuf::from(p)
    };
    let listener = lab
        .tb
        .in_ns(&lab.tb.ns("h3"), {
            let p = fake_path.clone();
            move || vxmesh_control::handover::wire::bind(&p).unwrap()
        })
        .unwrap();
    let fake = std::thread::spawn(move || {
        use vxmesh_control::handover::wire::{self, Frame};
        let conn = wire::accept(&listener, Duration::from_secs(20))
            .unwrap()
            .expect("a successor");
        assert!(matches!(conn.recv().unwrap().0, Frame::Hello { .. }));
        conn.send(
            &Frame::Offer {
                version: vxmesh_control::handover::VERSION,
                node: "h3".into(),
                pid: 1,
            },
            &[],
        )
        .unwrap();
        assert_eq!(conn.recv().unwrap().0, Frame::Accept);
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        conn.send(
            &Frame::Fds {
                names: vec!["tap/vxm-front/0".into(), "tap/vxm-front/1".into()],
            },
            &[pipe_r.as_fd(), pipe_r.as_fd()],
        )
        .unwrap();
        conn.send(&Frame::State { chunk: "{}".into() }, &[])
            .unwrap();
        conn.send(&Frame::End, &[]).unwrap();
        // The successor gives up: an abort, or it just goes.
        if let Ok((f, _)) = conn.recv() {
            assert!(matches!(f, Frame::Abort { .. } | Frame::Taken), "{f:?}");
        }
    });
    let ns3 = lab.tb.ns("h3");
    let args3 = lab.daemon_args("h3", &["--takeover"]);
    let args3: Vec<&str> = args3.iter().map(String::as_str).collect();
    let p = lab.tb.spawn(&ns3, &args3, &[]).unwrap();
    let st = lab
        .tb
        .wait_exit(&p, Duration::from_secs(20))
        .expect("the successor stops");
    assert!(!st.success());
    assert!(
        p.log_tail(20).contains("not a queue of this TAP"),
        "{}",
        p.log_tail(20)
    );
    fake.join().unwrap();
}

#[test]
fn a_service_restart_under_the_store_drains_keeps_the_sockets_and_hands_the_state_on() {
    if !require_root() {
        return;
    }
    let mut lab = hosts("svcrst");
    let store = FdStore::bind(lab.tb.dir());
    let ns = lab.tb.ns("h1");
    let args = lab.daemon_args("h1", &[]);
    let log = lab.tb.dir().join("h1-under-fdstore.log");
    let mut first = Some(ChildGuard(store.restart(&ns, &args, &log)));
    assert!(store.wait(Duration::from_secs(10), |h| h.said(0, "READY=1")
        && h.names().contains(&"tap/vxm-front/0")));
    let (_b2, _b3) = tasks(&mut lab);
    let tap = ifindex(&lab.tb, "h1", "vxm-front").expect("h1's TAP");
    let mut second = None;
    let load = under_load(&lab, || {
        // `systemctl restart`: SIGTERM, the old process drains and exits,
        // systemd starts the next one with the store.
        let mut f = first.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(f.0.id() as i32);
        nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        assert!(f.0.wait().unwrap().success());
        assert!(
            store.wait(Duration::ZERO, |h| h.names().contains(&"state")),
            "SIGTERM left the saved state in the store: {:?}",
            store.names()
        );
        let from = store.messages();
        let child = ChildGuard(store.restart(&ns, &args, &log));
        assert!(store.wait(Duration::from_secs(10), |h| h.said(from, "READY=1")));
        second = Some(child);
    });
    let _second = second.unwrap();
    assert!(
        load.http_failed.is_empty(),
        "HTTP through h1: {} ok, failed: {:?}",
        load.http_ok,
        load.http_failed
    );
    assert_eq!(
        load.long_bytes, SLOW_BYTES,
        "the old process let the download finish"
    );
    load.iperf_ok.expect("iperf3 across the overlay");
    let lost = load.pings.sent - load.pings.received;
    assert!(lost <= 2, "pings: {} sent, {lost} lost", load.pings.sent);
    assert_eq!(ifindex(&lab.tb, "h1", "vxm-front"), Some(tap));
    assert!(
        store.wait(Duration::from_secs(2), |h| !h.names().contains(&"state")),
        "the next process took the saved state out of the store"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("state kept in the descriptor store"),
        "{text}"
    );
    assert!(text.contains("TAP queues taken over"), "{text}");
    println!(
        "service restart: http {} ok 0 failed, pings {} sent {lost} lost, long download whole",
        load.http_ok, load.pings.sent
    );
}
