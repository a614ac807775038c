//! One bounded iperf3 run between two testbed namespaces, TCP or UDP, with
//! its JSON report parsed and the CPU used during the client's run.
//!
//! The testbed's own `iperf3_tcp` returns only Gbit/s; the benchmark also
//! needs bytes (for CPU per Gbit), UDP packet counts and loss, so this module
//! runs iperf3 itself through the same testbed calls (`spawn`,
//! `exec_timeout_unchecked`, `stop`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::Value;
use vxmesh_netns::{Proc, Testbed};

use crate::cpu::Snapshot;

/// How long the one-off iperf3 server gets to start listening.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Hard bound on a client run beyond its `-t`.
const CLIENT_SLACK: Duration = Duration::from_secs(30);

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "proto", rename_all = "lowercase")]
pub enum Mode {
    /// TCP with `parallel` streams (`-P`).
    Tcp {
        /// Number of streams.
        parallel: u32,
    },
    /// UDP with `len`-byte payloads (`-l`) offered at `rate` (`-b`, e.g. "2G").
    Udp {
        /// Payload bytes per datagram.
        len: u32,
        /// Offered rate, iperf3 syntax.
        rate: String,
    },
}

impl Mode {
    /// The client's arguments after `-c addr -p port -t secs -J`.
    pub fn client_args(&self) -> Vec<String> {
        match self {
            Mode::Tcp { parallel } => vec!["-P".into(), parallel.max(&1).to_string()],
            Mode::Udp { len, rate } => vec![
                "-u".into(),
                "-l".into(),
                len.to_string(),
                "-b".into(),
                rate.clone(),
            ],
        }
    }
}

/// The figures taken from one iperf3 report, as the receiver saw them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Bytes the receiver got.
    pub bytes: u64,
    /// Duration of the measurement, seconds.
    pub seconds: f64,
    /// Received goodput, Gbit/s (10^9).
    pub gbit_per_s: f64,
    /// UDP: datagrams the receiver accounted for (received + lost).
    pub packets: Option<u64>,
    /// UDP: datagrams lost (sequence gaps seen by the receiver).
    pub lost_packets: Option<u64>,
    /// UDP: iperf3's loss percentage.
    pub lost_percent: Option<f64>,
    /// UDP: datagrams received per second, (packets - lost) / seconds.
    pub rx_pps: Option<f64>,
}

/// One run: the figures, the CPU used while the client ran and the parts of
/// the report kept as raw data.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Parsed figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Wall time of the client run, seconds.
    pub wall_s: f64,
    /// CPU seconds the whole machine was busy (all cores) while the client
    /// ran: load generator, kernel, daemons and anything else running.
    pub host_cpu_s: f64,
    /// CPU seconds used by the watched processes (the vxmeshd daemons), if
    /// any, while the client ran.
    pub watched_cpu_s: Option<f64>,
    /// `end.sum*` and `end.cpu_utilization_percent` of the report.
    pub iperf3_end: Value,
}

/// A made-up 10 s run for the report tests: `gbit` Gbit/s received, `pps`
/// datagrams per second without loss (UDP), the machine's CPU seconds.
#[cfg(test)]
pub(crate) fn test_outcome(gbit: f64, pps: Option<f64>, host_cpu_s: f64) -> Outcome {
    Outcome {
        figures: Figures {
            bytes: (gbit * 1e9 / 8.0 * 10.0) as u64,
            seconds: 10.0,
            gbit_per_s: gbit,
            packets: pps.map(|p| (p * 10.0) as u64),
            lost_packets: pps.map(|_| 0),
            lost_percent: pps.map(|_| 0.0),
            rx_pps: pps,
        },
        wall_s: 10.0,
        host_cpu_s,
        watched_cpu_s: None,
        iperf3_end: Value::Null,
    }
}

/// Parses an iperf3 `-J` client report. TCP: `end.sum_received`. UDP:
/// `end.sum_received` when it has packet counts (the receiver's view, iperf3
/// 3.10 and later), else `end.sum` (packets sent, loss as the receiver
/// reported it).
pub fn parse_report(report: &Value, udp: bool) -> Result<Figures, String> {
    if let Some(msg) = report.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {msg}"));
    }
    let end = report.get("end").ok_or("no `end` in the report")?;
    let sum = if udp {
        match end.get("sum_received") {
            Some(s) if s.get("packets").is_some() => s,
            _ => end.get("sum").ok_or("no end.sum in a UDP report")?,
        }
    } else {
        end.get("sum_received")
            .ok_or("no end.sum_received in a TCP report")?
    };
    let num = |k: &str| {
        sum.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("no numeric `{k}` in {sum}"))
    };
    let bytes = num("bytes")? as u64;
    let seconds = num("seconds")?;
    if seconds <= 0.0 {
        return Err(format!("a measurement of {seconds} s"));
    }
    let mut f = Figures {
        bytes,
        seconds,
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
        packets: None,
        lost_packets: None,
        lost_percent: None,
        rx_pps: None,
    };
    if udp {
        let packets = num("packets")? as u64;
        let lost = num("lost_packets")? as u64;
        f.packets = Some(packets);
        f.lost_packets = Some(lost);
        f.lost_percent = Some(num("lost_percent")?);
        f.rx_pps = Some(packets.saturating_sub(lost) as f64 / seconds);
    }
    Ok(f)
}

/// Runs `iperf3 -s -1` in `server_ns` bound to `addr:port`, then `iperf3 -c
/// addr -p port -t secs -J <mode>` in `client_ns`, killed after `secs + 30`
/// s. The machine's CPU, and that of the processes `watch`, is sampled just
/// before and after the client. The server is stopped if it outlives the
/// test by 2 s.
#[allow(clippy::too_many_arguments)]
pub fn run(
    tb: &mut Testbed,
    server_ns: &str,
    client_ns: &str,
    addr: Ipv4Addr,
    port: u16,
    secs: u32,
    mode: &Mode,
    watch: &[u32],
    clk_tck: f64,
) -> anyhow::Result<Outcome> {
    let (addr_s, port_s) = (addr.to_string(), port.to_string());
    let server = tb.spawn(
        server_ns,
        &["iperf3", "-s", "-1", "-B", &addr_s, "-p", &port_s],
        &[],
    )?;
    let servers = [(server, port)];
    let result = client(
        tb, &servers, client_ns, &addr_s, port, secs, mode, watch, clk_tck,
    );
    finish(tb, &servers);
    result
}

/// Like [`run`] through a load balancer: a one-off `iperf3 -s -1 -p
/// server_port` (all addresses) in each of `server_ns`, the client to
/// `addr:port` (the balancer's published port), which picks one of them.
/// The servers that got no test are stopped afterwards.
#[allow(clippy::too_many_arguments)]
pub fn run_balanced(
    tb: &mut Testbed,
    server_ns: &[&str],
    server_port: u16,
    client_ns: &str,
    addr: Ipv4Addr,
    port: u16,
    secs: u32,
    mode: &Mode,
    watch: &[u32],
    clk_tck: f64,
) -> anyhow::Result<Outcome> {
    let port_s = server_port.to_string();
    let mut servers = Vec::new();
    for ns in server_ns {
        match tb.spawn(ns, &["iperf3", "-s", "-1", "-p", &port_s], &[]) {
            Ok(p) => servers.push((p, server_port)),
            Err(e) => {
                finish(tb, &servers);
                return Err(e.into());
            }
        }
    }
    let result = client(
        tb,
        &servers,
        client_ns,
        &addr.to_string(),
        port,
        secs,
        mode,
        watch,
        clk_tck,
    );
    finish(tb, &servers);
    result
}

/// Gives the servers 2 s in all to exit on their own (the one that served
/// the test does), then stops those still running.
fn finish(tb: &Testbed, servers: &[(Proc, u16)]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for (s, _) in servers {
        let left = deadline.saturating_duration_since(Instant::now());
        if s.wait_exit(left).is_none() {
            tb.stop(s);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn client(
    tb: &Testbed,
    servers: &[(Proc, u16)],
    client_ns: &str,
    addr: &str,
    port: u16,
    secs: u32,
    mode: &Mode,
    watch: &[u32],
    clk_tck: f64,
) -> anyhow::Result<Outcome> {
    for (server, port) in servers {
        wait_listening(server, *port, LISTEN_WAIT)?;
    }
    let logs = || {
        servers
            .iter()
            .map(|(s, _)| s.log_tail(10))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let (port_s, secs_s) = (port.to_string(), secs.to_string());
    let extra = mode.client_args();
    let mut args = vec!["iperf3", "-c", addr, "-p", &port_s, "-t", &secs_s, "-J"];
    args.extend(extra.iter().map(String::as_str));
    let bound = Duration::from_secs(u64::from(secs)) + CLIENT_SLACK;
    let before = Snapshot::take(watch)?;
    let start = Instant::now();
    let out = tb
        .exec_timeout_unchecked(client_ns, &args, bound)
        .with_context(|| format!("iperf3 client in {client_ns}"))?;
    let wall_s = start.elapsed().as_secs_f64();
    let after = Snapshot::take(watch)?;
    let (host_cpu_s, watched_cpu_s) = before.seconds_until(&after, clk_tck);
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "iperf3 -J output is not JSON ({e}; {}): {}{}\n--- server log(s) ---\n{}",
            out.status,
            text.chars().take(2000).collect::<String>(),
            String::from_utf8_lossy(&out.stderr),
            logs()
        )
    })?;
    let udp = matches!(mode, Mode::Udp { .. });
    let figures = parse_report(&report, udp).map_err(|e| {
        anyhow!(
            "`{}` in {client_ns}: {e} ({})\n--- server log(s) ---\n{}",
            args.join(" "),
            out.status,
            logs()
        )
    })?;
    let mut kept = serde_json::Map::new();
    if let Some(end) = report.get("end").and_then(Value::as_object) {
        for (k, v) in end {
            if k.starts_with("sum") || k == "cpu_utilization_percent" {
                kept.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(Outcome {
        figures,
        wall_s,
        host_cpu_s,
        watched_cpu_s,
        iperf3_end: Value::Object(kept),
    })
}

/// True when a `/proc/net/tcp{,6}` table has a socket listening on `port`.
fn table_listens(table: &str, port: u16) -> bool {
    let needle = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // Columns: sl local_address rem_address st ...; 0A is LISTEN.
        cols.len() > 3 && cols[1].ends_with(&needle) && cols[3] == "0A"
    })
}

/// Waits until `p` listens on TCP `port`, reading its own namespace's view
/// in `/proc/<pid>/net/tcp{,6}` (a probe connection would be taken by the
/// one-off server as its test).
pub fn wait_listening(p: &Proc, port: u16, max: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + max;
    loop {
        for file in ["tcp", "tcp6"] {
            let table =
                std::fs::read_to_string(format!("/proc/{}/net/{file}", p.pid)).unwrap_or_default();
            if table_listens(&table, port) {
                return Ok(());
            }
        }
        if let Some(status) = p.exit_status() {
            bail!(
                "`{}` exited ({status}) before listening: {}",
                p.cmdline(),
                p.log_tail(10)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "`{}` did not listen on port {port} within {max:?}: {}",
                p.cmdline(),
                p.log_tail(10)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tcp_report() {
        let r = json!({"end": {"sum_sent": {"bytes": 2_000_000_000u64, "seconds": 10.0},
            "sum_received": {"bytes": 1_250_000_000u64, "seconds": 10.0, "bits_per_second": 1e9}}});
        let f = parse_report(&r, false).unwrap();
        assert_eq!(f.bytes, 1_250_000_000);
        assert!((f.gbit_per_s - 1.0).abs() < 1e-9);
        assert_eq!(f.rx_pps, None);
    }

    #[test]
    fn udp_report_prefers_the_receiver() {
        let r = json!({"end": {
            "sum": {"bytes": 6400, "seconds": 2.0, "packets": 100, "lost_packets": 10, "lost_percent": 10.0},
            "sum_received": {"bytes": 5760, "seconds": 2.0, "packets": 90, "lost_packets": 30, "lost_percent": 33.3}}});
        let f = parse_report(&r, true).unwrap();
        assert_eq!((f.packets, f.lost_packets), (Some(90), Some(30)));
        assert_eq!(f.rx_pps, Some(30.0));
        let old = json!({"end": {"sum": {"bytes": 6400, "seconds": 2.0, "packets": 100,
            "lost_packets": 10, "lost_percent": 10.0}}});
        assert_eq!(parse_report(&old, true).unwrap().rx_pps, Some(45.0));
    }

    #[test]
    fn errors_are_reported() {
        let r = json!({"error": "unable to connect to server"});
        assert!(parse_report(&r, false)
            .unwrap_err()
            .contains("unable to connect"));
        assert!(parse_report(&json!({}), true).is_err());
    }

    #[test]
    fn listening_sockets() {
        let t = "  sl  local_address rem_address   st tx_queue\n   \
                 0: 020012C6:1451 00000000:0000 0A 00000000:00000000\n   \
                 1: 020012C6:1452 010012C6:D3B0 01 00000000:00000000\n";
        assert!(table_listens(t, 0x1451));
        assert!(!table_listens(t, 0x1452), "established, not listening");
        assert!(!table_listens(t, 80));
    }

    #[test]
    fn client_args() {
        assert_eq!(Mode::Tcp { parallel: 2 }.client_args(), ["-P", "2"]);
        let u = Mode::Udp {
            len: 64,
            rate: "2G".into(),
        };
        assert_eq!(u.client_args(), ["-u", "-l", "64", "-b", "2G"]);
    }
}
