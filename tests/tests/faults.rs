//! Faults on the routing mesh's connections, each under legitimate traffic
//! that must go on unharmed: idle and half-open connections reclaimed by
//! the service's timeouts, and a task killed in the middle of transfers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{self, get, udp_ask};
use common::{Lab, FRONT_ONLY};
use nix::sys::signal::Signal;
use vxmesh_netns::require_root;

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

/// A `[[services]]` table on network `front` with one task.
fn service(name: &str, task: Ipv4Addr, ports: &str, extra: &str) -> String {
    format!(
        "\n[[services]]\nname = \"{name}\"\nnetwork = \"front\"\ntasks = [\"{task}\"]\nports = [{ports}]\n{extra}\n"
    )
}

/// A published port on h1.
fn h1(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), port)
}

/// `open_connections` and `open_sessions` of service `svc` on h1.
fn open(lab: &Lab, svc: &str) -> (u64, u64) {
    let s = lab.cli_json("h1", &["service", "inspect", svc]);
    (
        s["open_connections"].as_u64().unwrap(),
        s["open_sessions"].as_u64().unwrap(),
    )
}

/// Waits (bounded) until `web` through h1 serves a request from `cl`.
fn until_served(lab: &Lab, port: u16) {
    let cl = lab.tb.ns("cl");
    lab.until(Duration::from_secs(10), || {
        get(&lab.tb, &cl, h1(port), "/").is_ok()
    })
    .expect("the service never served");
}

/// Runs `f` while `cl` sends one request after another to h1:8080 (the
/// legitimate traffic); `f`'s result, how many requests were served and
/// why the others failed.
fn serving<T>(lab: &Lab, f: impl FnOnce() -> T) -> (T, u32, Vec<String>) {
    let done = AtomicBool::new(false);
    let cl = lab.tb.ns("cl");
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            let (mut ok, mut failed) = (0, Vec::new());
            while !done.load(Ordering::SeqCst) {
                match get(&lab.tb, &cl, h1(8080), "/") {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                // Pacing (about 100 requests/s), not synchronisation.
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        });
        let out = f();
        done.store(true, Ordering::SeqCst);
        let (ok, failed) = load.join().expect("request loop");
        (out, ok, failed)
    })
}

#[test]
fn idle_and_half_open_connections_are_reclaimed_by_the_timeouts() {
    if !require_root() {
        return;
    }
    let config = FRONT_ONLY.to_string()
        + &service(
            "web",
            ov(2),
            "{ published = 8080, target = 80 }, { published = 5353, target = 53, protocol = \"udp\" }",
            "idle_timeout_ms = 1500\nudp_timeout_ms = 1500",
        );
    let mut lab = Lab::new("idle", 2, &config);
    lab.tb.add_host("cl", "198.18.0.100/24", 1500).unwrap();
    // The client that vanishes.
    lab.tb.add_host("gone", "198.18.0.101/24", 1500).unwrap();
    lab.start("h1");
    lab.start("h2");
    let _task = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", ov(2), false);
    until_served(&lab, 8080);
    let (cl, gone) = (lab.tb.ns("cl"), lab.tb.ns("gone"));

    // Half-open: `gone` connects, then its link goes down and its socket
    // closes; the FIN never arrives, h1 still sees the connection open.
    let (tx, rx) = std::sync::mpsc::channel();
    let (drop_tx, drop_rx) = std::sync::mpsc::channel::<()>();
    let half = lab
        .tb
        .thread_in_ns(&gone, move || {
            let s = TcpStream::connect_timeout(&h1(8080), Duration::from_secs(3)).unwrap();
            tx.send(()).unwrap();
            let _ = drop_rx.recv_timeout(Duration::from_secs(20));
            drop(s);
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5)).expect("connected");
    // Idle: `cl` connects and sends nothing; it reads until h1 closes.
    let idle = lab
        .tb
        .thread_in_ns(&cl, || {
            let mut s = TcpStream::connect_timeout(&h1(8080), Duration::from_secs(3)).unwrap();
            let t0 = Instant::now();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r = s.read(&mut [0u8; 1]);
            (t0.elapsed(), r.map_err(|e| e.kind()))
        })
        .unwrap();
    // A UDP session that goes quiet.
    let from: SocketAddr = "198.18.0.100:40001".parse().unwrap();
    assert_eq!(
        udp_ask(&lab.tb, &cl, from, h1(5353), "hi").unwrap(),
        "task2:hi"
    );
    lab.until(Duration::from_secs(5), || open(&lab, "web") == (2, 1))
        .unwrap_or_else(|| panic!("both connections relayed: {:?}", open(&lab, "web")));
    lab.tb
        .exec(&gone, &["ip", "link", "set", "eth0", "down"])
        .unwrap();
    drop_tx.send(()).unwrap();
    half.join().unwrap().unwrap();

    // Meanwhile legitimate requests go on, and a long transfer that is
    // never idle for 1.5 s (100 chunks 20 ms apart) outlives the timeout.
    let ((idle, slow), served, failed) = serving(&lab, || {
        let slow = get(&lab.tb, &cl, h1(8080), "/slow");
        (idle.join().unwrap().unwrap(), slow)
    });
    // With the legitimate traffic over, nothing is left open.
    let reclaimed = lab.until(Duration::from_secs(5), || open(&lab, "web") == (0, 0));
    let (slow, _) = slow.expect("the busy transfer was not cut");
    assert_eq!(slow.len(), 6_553_600, "the busy transfer completed");
    let (after, read) = idle;
    assert_eq!(read, Ok(0), "the idle client saw the mesh close (EOF)");
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_secs(4),
        "closed after the 1.5 s idle timeout, not the task's 5 s: {after:?}"
    );
    assert!(
        reclaimed.is_some(),
        "open connections and sessions back to 0: {:?}",
        open(&lab, "web")
    );
    let est = lab
        .tb
        .exec(
            &lab.tb.ns("h1"),
            &["ss", "-Htn", "state", "established", "dst", "198.18.0.101"],
        )
        .unwrap();
    assert!(
        est.stdout.is_empty(),
        "h1 holds no connection to the vanished client: {}",
        String::from_utf8_lossy(&est.stdout)
    );
    assert!(
        served >= 5 && failed.is_empty(),
        "legitimate requests: {served} served, failed: {failed:?}"
    );
}

/// A task as its own process (so it can be SIGKILLed): listens on
/// argv[1]:argv[2], says READY=1 on $NOTIFY_SOCKET, and per connection
/// reads one byte: `D` streams 64 KiB chunks to the client, anything else
/// holds the connection without reading. Stops by itself after 60 s.
const TASK: &str = r#"
import os, socket, sys, threading, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(64)
end = time.monotonic() + 60
chunk = b"x" * 65536
def serve(c):
    cmd = c.recv(1)
    try:
        while cmd and time.monotonic() < end:
            if cmd == b"D":
                c.sendall(chunk)
            else:
                time.sleep(0.05)
    except OSError:
        pass
    c.close()
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while time.monotonic() < end:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// How a client's stream through the mesh ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The mesh closed it: EOF or a reset.
    Closed(ErrorKind),
    /// Nothing happened for 10 s.
    Hung,
}

fn ended(r: std::io::Result<usize>) -> Option<End> {
    match r {
        Ok(0) => Some(End::Closed(ErrorKind::UnexpectedEof)),
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Some(End::Hung)
        }
        Err(e) => Some(End::Closed(e.kind())),
    }
}

/// A client of h1:8081 in `cl` that sends `hello`, says on `ready` when
/// bytes flow, then sends `more` (a byte the task never reads, if any) and
/// keeps reading (`D`) or writing (`U`) until the stream ends. Returns how
/// and when it ended.
fn stream_client(
    lab: &Lab,
    hello: &'static [u8],
    more: &'static [u8],
    ready: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Result<(End, Instant), vxmesh_netns::Error>> {
    lab.tb
        .thread_in_ns(&lab.tb.ns("cl"), move || {
            let mut s = TcpStream::connect_timeout(&h1(8081), Duration::from_secs(3)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(hello).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut first = true;
            loop {
                let r = if hello == b"D" {
                    s.read(&mut buf)
                } else {
                    s.write(&buf)
                };
                if let Some(end) = ended(r) {
                    return (end, Instant::now());
                }
                if first {
                    first = false;
                    if !more.is_empty() {
                        s.write_all(more).unwrap();
                    }
                    ready.send(()).unwrap();
                }
            }
        })
        .unwrap()
}

#[test]
fn a_task_killed_mid_transfer_closes_its_clients_cleanly() {
    if !require_root() {
        return;
    }
    // `stream` on the task that dies (h2), `web` on one that lives (h3).
    let config = FRONT_ONLY.to_string()
        + &service("web", ov(3), "{ published = 8080, target = 80 }", "")
        + &service("stream", ov(2), "{ published = 8081, target = 81 }", "");
    let mut lab = Lab::new("taskkill", 3, &config);
    lab.tb.add_host("cl", "198.18.0.100/24", 1500).unwrap();
    for h in ["h1", "h2", "h3"] {
        lab.start(h);
    }
    let _web = backend::start(&lab.tb, &lab.tb.ns("h3"), "task3", ov(3), false);
    let h2 = lab.tb.ns("h2");
    let task = lab
        .tb
        .spawn_notify(
            &h2,
            &["python3", "-c", TASK, "10.0.9.2", "81"],
            &[],
            Duration::from_secs(10),
        )
        .expect("the stream task is ready");
    until_served(&lab, 8080);
    let cl = lab.tb.ns("cl");

    let (ready, streaming) = std::sync::mpsc::channel();
    // Downloading; downloading with a byte the task never reads (so its
    // death is a reset, not a FIN); uploading to a task that never reads.
    let clients = [
        ("download", stream_client(&lab, b"D", b"", ready.clone())),
        (
            "download+unread",
            stream_client(&lab, b"D", b"?", ready.clone()),
        ),
        ("upload", stream_client(&lab, b"U", b"", ready.clone())),
    ];
    for _ in &clients {
        streaming
            .recv_timeout(Duration::from_secs(5))
            .expect("every client streams");
    }
    // A long transfer on the other task runs across the kill, and
    // requests to it go on throughout.
    let (ends, served, failed, slow) = std::thread::scope(|s| {
        let slow = s.spawn(|| get(&lab.tb, &cl, h1(8080), "/slow"));
        lab.until(Duration::from_secs(5), || open(&lab, "web").0 == 1)
            .expect("the long transfer started");
        let (ends, served, failed) = serving(&lab, || {
            lab.tb.signal(&task, Signal::SIGKILL).unwrap();
            let killed = Instant::now();
            lab.tb
                .wait_exit(&task, Duration::from_secs(5))
                .expect("the task died");
            let ends = clients.map(|(name, c)| {
                let (end, at) = c.join().unwrap().unwrap();
                (name, end, at.saturating_duration_since(killed))
            });
            (ends, slow.join().unwrap())
        });
        (ends.0, served, failed, ends.1)
    });
    eprintln!("after the kill: {ends:?}; {served} requests served on the other task");
    for (name, end, after) in &ends {
        assert!(
            matches!(end, End::Closed(_)) && *after < Duration::from_secs(3),
            "{name}: a clean close soon after the kill, got {end:?} after {after:?}"
        );
    }
    let (body, _) = slow.expect("the other task's transfer");
    assert_eq!(body.len(), 6_553_600, "the other task's transfer completed");
    assert!(
        served >= 3 && failed.is_empty(),
        "the other task's clients: {served} served, failed: {failed:?}"
    );
    let (open_conns, _) = open(&lab, "stream");
    assert_eq!(open_conns, 0, "the dead task's connections are gone");
}
