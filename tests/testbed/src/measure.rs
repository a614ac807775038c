//! Measurements run inside the testbed's namespaces, shared by tests, the lab
//! and the benchmarks: ICMP round trips with `ping`, a bulk TCP transfer done
//! in Rust, and `iperf3`. Every one is bounded in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{Error, Testbed};

/// Round-trip times of a `ping` run.
#[derive(Debug, Clone, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u32,
    /// Echo replies received (duplicates not counted).
    pub received: u32,
    /// Round-trip time of each reply, in microseconds, in arrival order.
    pub rtt_us: Vec<f64>,
}

impl PingStats {
    /// Fraction of requests without a reply, 0.0 to 1.0.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - f64::from(self.received) / f64::from(self.sent)
    }

    /// Mean round trip in µs; `None` without replies.
    pub fn avg(&self) -> Option<f64> {
        (!self.rtt_us.is_empty())
            .then(|| self.rtt_us.iter().sum::<f64>() / self.rtt_us.len() as f64)
    }

    /// Median round trip in µs; `None` without replies.
    pub fn p50(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    /// 99th percentile round trip in µs; `None` without replies.
    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }

    /// Nearest-rank percentile `p` (0 to 100) in µs; `None` without replies.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let mut v = self.rtt_us.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v.get(rank.clamp(1, v.len().max(1)) - 1).copied()
    }

    /// Parses the output of iputils `ping` (without `-q`), in the C locale.
    pub fn parse(output: &str) -> Result<PingStats, Error> {
        let bad = |reason: &str| Error::Parse {
            what: "ping",
            reason: reason.into(),
            output: output.into(),
        };
        let rtt_us = output
            .lines()
            .filter(|l| l.contains(" bytes from ") && !l.contains("DUP!"))
            .filter_map(|l| l.split_once("time=").map(|(_, t)| t))
            .map(|t| {
                let ms = t.trim_end_matches(" ms").trim();
                ms.parse::<f64>()
                    .map(|ms| ms * 1000.0)
                    .map_err(|_| bad("bad time= field"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // "5 packets transmitted, 5 received, 0% packet loss, time 4ms"
        let summary = output
            .lines()
            .find(|l| l.contains(" packets transmitted, "))
            .ok_or_else(|| bad("no summary line"))?;
        let mut fields = summary.split(", ");
        let mut count = |suffix: &str| {
            fields
                .next()
                .and_then(|f| f.strip_suffix(suffix))
                .and_then(|n| n.trim().parse::<u32>().ok())
                .ok_or_else(|| bad("malformed summary line"))
        };
        let sent = count(" packets transmitted")?;
        let received = count(" received")?;
        Ok(PingStats {
            sent,
            received,
            rtt_us,
        })
    }
}

/// Pings `dst` from namespace `ns`: `ping -n -c count -i interval -W 1`,
/// bounded by count × interval plus 10 s. See [`icmp_ping`].
pub fn ping(
    tb: &Testbed,
    ns: &str,
    dst: Ipv4Addr,
    count: u32,
    interval: Duration,
) -> Result<PingStats, Error> {
    icmp_ping(
        tb,
        ns,
        dst,
        count,
        interval,
        interval * count + Duration::from_secs(10),
    )
}

/// Pings `dst` from namespace `ns` (`ping -n -c count -i interval -W 1`,
/// per-reply times kept), killing ping after `timeout`. Lost replies are not
/// an error (check [`PingStats::received`]; ping ends about 1 s after its last
/// request when replies are missing); a timeout or a missing summary is.
pub fn icmp_ping(
    tb: &Testbed,
    ns: &str,
    dst: Ipv4Addr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Result<PingStats, Error> {
    let count_s = count.to_string();
    let interval_s = format!("{}", interval.as_secs_f64());
    let dst_s = dst.to_string();
    let args = [
        "ping",
        "-n",
        "-c",
        &count_s,
        "-i",
        &interval_s,
        "-W",
        "1",
        &dst_s,
    ];
    // ping exits 1 when replies are missing: parse, whatever the status.
    let out = tb.exec_timeout_unchecked(ns, &args, timeout)?;
    PingStats::parse(&String::from_utf8_lossy(&out.stdout)).map_err(|e| match e {
        Error::Parse {
            what,
            reason,
            output,
        } => Error::Parse {
            what,
            reason: format!(
                "{reason} ({}; stderr: {})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            output,
        },
        e => e,
    })
}

/// Result of a bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// Bytes the receiver got.
    pub bytes: u64,
    /// Time from the receiver accepting the connection to end of stream.
    pub elapsed: Duration,
}

impl Transfer {
    /// Goodput in Gbit/s (10^9 bits per second).
    pub fn gbit_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / secs / 1e9
    }
}

/// Chunk written per `write` call by the [`tcp_bulk`] client.
const CHUNK: usize = 256 * 1024;

/// A bulk TCP transfer done in Rust (no iperf3): a listener thread in
/// `server_ns` on `server_addr:port`, a client thread in `client_ns` sending
/// `bytes` bytes then closing its side, the receiver acknowledging the count.
/// The client starts only once the listener has signalled that it is bound.
/// Everything (bind, accept, every read and write) is bounded by `timeout`.
/// Returns what the receiver got; compare with `bytes`.
pub fn tcp_bulk(
    tb: &Testbed,
    server_ns: &str,
    client_ns: &str,
    server_addr: Ipv4Addr,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Transfer, Error> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((server_addr, port));
    let (ready_tx, ready_rx) = mpsc::channel();
    // Dropping `abort` wakes a receiver still waiting for its connection.
    let (abort, aborted) = UnixStream::pair().map_err(|e| Error::io("tcp_bulk: socketpair", e))?;
    let server = tb.thread_in_ns(server_ns, move || {
        receive(addr, deadline, ready_tx, aborted)
    })?;
    let join_server = |server: std::thread::JoinHandle<_>| match server.join() {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // The sender is dropped without a message when binding fails.
    if ready_rx.recv_timeout(left(deadline)).is_err() {
        return join_server(server).and_then(|_| Err(timeout_err(addr, "bind", timeout)));
    }
    let client = tb.thread_in_ns(client_ns, move || send(addr, bytes, deadline));
    let sent = match client.map(|c| c.join()) {
        Ok(Ok(result)) => result.and_then(|r| r),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => Err(e),
    };
    drop(abort);
    // The receiver's error explains the sender's (e.g. reset) better, unless
    // the sender never connected.
    match (join_server(server)?, sent) {
        (Some(transfer), Ok(_)) => Ok(transfer),
        (_, Err(e)) => Err(e),
        (None, Ok(_)) => Err(timeout_err(addr, "accept on", timeout)),
    }
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn timeout_err(addr: SocketAddr, step: &str, after: Duration) -> Error {
    Error::Timeout {
        cmd: format!("tcp_bulk {step} {addr}"),
        after,
        detail: String::new(),
    }
}

fn io_err(addr: SocketAddr, step: &str, deadline: Instant, e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut if Instant::now() >= deadline => {
            Error::Timeout {
                cmd: format!("tcp_bulk {step} {addr}"),
                after: Duration::ZERO,
                detail: " (deadline passed)".into(),
            }
        }
        _ => Error::io(format!("tcp_bulk {step} {addr}"), e),
    }
}

/// Receiver side: bind, signal readiness, accept, count to end of stream,
/// acknowledge the count (8 bytes, big endian).
fn receive(
    addr: SocketAddr,
    deadline: Instant,
    ready: mpsc::Sender<()>,
    aborted: UnixStream,
) -> Result<Option<Transfer>, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| io_err(addr, "bind", deadline, e))?;
    let _ = ready.send(());
    let mut fds = [
        PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        PollFd::new(aborted.as_fd(), PollFlags::POLLIN),
    ];
    let ms = PollTimeout::try_from(left(deadline)).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(0) => return Err(timeout_err(addr, "accept on", left(deadline))),
        Ok(_)
            if fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN)) => {}
        // The sender gave up before connecting: its error is the story.
        Ok(_) => return Ok(None),
        Err(e) => return Err(Error::sys(format!("tcp_bulk poll on {addr}"), e)),
    }
    let (mut stream, _) = listener
        .accept()
        .map_err(|e| io_err(addr, "accept on", deadline, e))?;
    let start = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        stream
            .set_read_timeout(Some(left(deadline)))
            .map_err(|e| io_err(addr, "read", deadline, e))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(addr, "read from client of", deadline, e)),
        }
    }
    let elapsed = start.elapsed();
    stream
        .set_write_timeout(Some(left(deadline)))
        .map_err(|e| io_err(addr, "ack", deadline, e))?;
    stream
        .write_all(&total.to_be_bytes())
        .map_err(|e| io_err(addr, "ack to client of", deadline, e))?;
    Ok(Some(Transfer {
        bytes: total,
        elapsed,
    }))
}

/// Sender side: connect, write `bytes` bytes, half-close, read the ack.
fn send(addr: SocketAddr, bytes: u64, deadline: Instant) -> Result<u64, Error> {
    let mut stream = TcpStream::connect_timeout(&addr, left(deadline))
        .map_err(|e| io_err(addr, "connect to", deadline, e))?;
    let buf = vec![0x5au8; CHUNK];
    let mut rest = bytes;
    while rest > 0 {
        let n = rest.min(CHUNK as u64) as usize;
        stream
            .set_write_timeout(Some(left(deadline)))
            .map_err(|e| io_err(addr, "write", deadline, e))?;
        stream
            .write_all(&buf[..n])
            .map_err(|e| io_err(addr, "write to", deadline, e))?;
        rest -= n as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| io_err(addr, "shutdown to", deadline, e))?;
    let mut ack = [0u8; 8];
    stream
        .set_read_timeout(Some(left(deadline)))
        .map_err(|e| io_err(addr, "read ack", deadline, e))?;
    stream
        .read_exact(&mut ack)
        .map_err(|e| io_err(addr, "read ack from", deadline, e))?;
    Ok(u64::from_be_bytes(ack))
}

/// How long the iperf3 server gets to start listening.
const IPERF3_LISTEN_WAIT: Duration = Duration::from_secs(5);

/// iperf3 TCP throughput in Gbit/s, as received (`end.sum_received`).
///
/// Starts a one-off server (`iperf3 -s -1 --forceflush -B addr -p port`,
/// log in the testbed directory) in `server_ns`,
/// waits until its socket listens (iperf3 has no readiness signal, so its
/// `/proc/<pid>/net/tcp` is polled, bounded; a probe connection would be
/// taken as the one test), runs `iperf3 -c addr -p port -t secs -P parallel
/// -J` in `client_ns` with a hard timeout of `secs + 30` s, and parses the
/// JSON report.
pub fn iperf3_tcp(
    tb: &mut Testbed,
    server_ns: &str,
    client_ns: &str,
    server_addr: Ipv4Addr,
    port: u16,
    secs: u32,
    parallel: u32,
) -> Result<f64, Error> {
    let (addr, port_s) = (server_addr.to_string(), port.to_string());
    let server = tb.spawn(
        server_ns,
        &[
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
            "-B",
            &addr,
            "-p",
            &port_s,
        ],
        &[],
    )?;
    let result = wait_listening(&server, port, IPERF3_LISTEN_WAIT).and_then(|()| {
        let (secs_s, par_s) = (secs.to_string(), parallel.max(1).to_string());
        let args = [
            "iperf3", "-c", &addr, "-p", &port_s, "-t", &secs_s, "-P", &par_s, "-J",
        ];
        let bound = Duration::from_secs(u64::from(secs) + 30);
        let out = tb
            .exec_timeout_unchecked(client_ns, &args, bound)
            .map_err(|e| match e {
                Error::Timeout { cmd, after, detail } => Error::Timeout {
                    cmd,
                    after,
                    detail: format!(
                        "{detail}\n--- iperf3 server log ---\n{}",
                        server.log_tail(20)
                    ),
                },
                e => e,
            })?;
        let json = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(&json).map_err(|e| Error::Parse {
            what: "iperf3 -J",
            reason: e.to_string(),
            output: format!("{json}{}", String::from_utf8_lossy(&out.stderr)),
        })?;
        if let Some(msg) = report.get("error").and_then(|e| e.as_str()) {
            return Err(Error::Command {
                cmd: tb.cmdline(client_ns, &args),
                status: out.status,
                stderr: format!("{msg}\n--- server log ---\n{}", server.log_tail(10)),
            });
        }
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|bps| bps / 1e9)
            .ok_or_else(|| Error::Parse {
                what: "iperf3 -J",
                reason: "no end.sum_received.bits_per_second".into(),
                output: json.into_owned(),
            })
    });
    // The one-off server exits after its test; make sure of it.
    if server.wait_exit(Duration::from_secs(2)).is_none() {
        tb.stop(&server);
    }
    result
}

/// Waits until process `p` has a TCP socket listening on `port`, reading
/// `/proc/<pid>/net/tcp{,6}` (the process's own namespace view).
fn wait_listening(p: &crate::Proc, port: u16, max: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + max;
    let needle = format!(":{port:04X} ");
    loop {
        for file in ["tcp", "tcp6"] {
            let path = format!("/proc/{}/net/{file}", p.pid);
            let table = std::fs::read_to_string(&path).unwrap_or_default();
            // Columns: sl local_address rem_address st ...; 0A is LISTEN.
            let listening = table.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
            });
            if listening {
                return Ok(());
            }
        }
        if let Some(status) = p.exit_status() {
            return Err(Error::NotRunning {
                pid: p.pid,
                cmd: format!("{} ({})", p.cmdline(), p.log_tail(10)),
                status,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                cmd: p.cmdline().into(),
                after: max,
                detail: format!(" to listen on port {port}; log: {}", p.log_tail(10)),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING_OK: &str = "\
PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.
64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=0.045 ms
64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=0.030 ms
64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=0.090 ms (DUP!)
64 bytes from 198.18.0.2: icmp_seq=3 ttl=64 time=1.20 ms

--- 198.18.0.2 ping statistics ---
3 packets transmitted, 3 received, +1 duplicates, 0% packet loss, time 2ms
rtt min/avg/max/mdev = 0.030/0.425/1.200/0.548 ms
";

    const PING_LOST: &str = "\
PING 198.18.0.9 (198.18.0.9) 56(84) bytes of data.
From 198.18.0.1 icmp_seq=1 Destination Host Unreachable

--- 198.18.0.9 ping statistics ---
2 packets transmitted, 0 received, +1 errors, 100% packet loss, time 1010ms
";

    #[test]
    fn parses_replies_and_summary() {
        let s = PingStats::parse(PING_OK).unwrap();
        assert_eq!((s.sent, s.received), (3, 3));
        assert_eq!(s.rtt_us.len(), 3, "the duplicate is not a reply");
        assert!((s.rtt_us[0] - 45.0).abs() < 1e-9);
        assert_eq!(s.p50(), Some(45.0));
        assert_eq!(s.p99(), Some(1200.0));
        assert!((s.avg().unwrap() - 425.0).abs() < 1e-9);
        assert_eq!(s.loss(), 0.0);
    }

    #[test]
    fn parses_total_loss() {
        let s = PingStats::parse(PING_LOST).unwrap();
        assert_eq!((s.sent, s.received), (2, 0));
        assert_eq!((s.avg(), s.p50()), (None, None));
        assert_eq!(s.loss(), 1.0);
    }

    #[test]
    fn missing_summary_is_an_error() {
        assert!(PingStats::parse("ping: connect: Network is unreachable\n").is_err());
    }

    #[test]
    fn goodput() {
        let t = Transfer {
            bytes: 1_250_000_000,
            elapsed: Duration::from_secs(1),
        };
        assert!((t.gbit_per_s() - 10.0).abs() < 1e-9);
    }
}
