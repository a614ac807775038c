//! The runs a path is measured with, shared by the benchmarks that compare
//! paths between h1 and h2 (`overlay`, `encryption`): a repetition of the
//! latency pings and of an iperf3 run as they go into a report, a check
//! that a path carries anything at all, a one-line summary of a run, a
//! device's offloads and what a vxmeshd says about itself.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use serde_json::Value;
use vxmesh_netns::{icmp_ping, Testbed};

use super::daemon;
use super::stats::median;
use crate::iperf::Outcome;

/// Interval of the latency pings.
pub const PING_INTERVAL: Duration = Duration::from_millis(1);
/// Bound on setup and inspection commands (`ip`, `ethtool`, `vxmesh
/// status`, `wg`).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long and how often a path is measured: the arguments `overlay` and
/// `encryption` share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RoundArgs {
    /// Seconds of each iperf3 run [default: 10; 2 with --quick].
    #[arg(long)]
    pub secs: Option<u32>,
    /// Repetitions of each measurement; the table shows the median
    /// [default: 3; 1 with --quick].
    #[arg(long)]
    pub reps: Option<u32>,
    /// Pings (at 1 ms intervals) per repetition [default: 1000; 200 with
    /// --quick].
    #[arg(long)]
    pub pings: Option<u32>,
    /// Smoke run: 2 s runs, 1 repetition, 200 pings.
    #[arg(long)]
    pub quick: bool,
}

impl RoundArgs {
    /// (seconds per run, repetitions, pings per repetition) in force:
    /// explicit values win over `--quick`, none is below 1.
    pub fn resolve(&self) -> (u32, u32, u32) {
        let (secs, reps, pings) = if self.quick {
            (2, 1, 200)
        } else {
            (10, 3, 1000)
        };
        (
            self.secs.unwrap_or(secs).max(1),
            self.reps.unwrap_or(reps).max(1),
            self.pings.unwrap_or(pings).max(1),
        )
    }
}

/// One repetition of the latency pings.
#[derive(Debug, Serialize)]
pub struct PingRep {
    /// 1-based repetition number.
    pub rep: u32,
    /// The error, when ping could not run or its output was not understood.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Echo requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Median RTT, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile RTT, µs.
    pub p99_us: Option<f64>,
    /// Mean RTT, µs.
    pub avg_us: Option<f64>,
    /// Every RTT, µs, in arrival order.
    pub rtt_us: Vec<f64>,
}

impl PingRep {
    /// The progress line of a repetition: replies, p50 and p99.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} replies, p50 {} µs, p99 {} µs{}",
            self.received,
            self.sent,
            self.p50_us.map_or("-".into(), |v| format!("{v:.1}")),
            self.p99_us.map_or("-".into(), |v| format!("{v:.1}")),
            self.error
                .as_ref()
                .map_or(String::new(), |e| format!(" ERROR {e}")),
        )
    }
}

/// `pings` echo requests from h1 to `dst` at [`PING_INTERVAL`].
pub fn ping_rep(tb: &Testbed, dst: Ipv4Addr, pings: u32, round: u32) -> PingRep {
    let timeout = PING_INTERVAL * pings + Duration::from_secs(15);
    match icmp_ping(tb, "h1", dst, pings, PING_INTERVAL, timeout) {
        Ok(p) => PingRep {
            rep: round,
            error: (p.received == 0).then(|| "no reply".to_string()),
            sent: p.sent,
            received: p.received,
            p50_us: p.p50(),
            p99_us: p.p99(),
            avg_us: p.avg(),
            rtt_us: p.rtt_us,
        },
        Err(e) => PingRep {
            rep: round,
            error: Some(e.to_string()),
            sent: 0,
            received: 0,
            p50_us: None,
            p99_us: None,
            avg_us: None,
            rtt_us: Vec::new(),
        },
    }
}

/// The start of a round on a path: checks that h2 answers on `dst` at all,
/// then `pings` echo requests (progress line under `name`). An error, as
/// text, when the path carries nothing: the round is not measured.
pub fn reach_and_ping(
    tb: &Testbed,
    name: &str,
    dst: Ipv4Addr,
    pings: u32,
    (round, reps): (u32, u32),
) -> Result<PingRep, String> {
    reachable(tb, dst).map_err(|e| format!("{e:#}"))?;
    let p = ping_rep(tb, dst, pings, round);
    eprintln!("[{name}] ping {round}/{reps}: {}", p.describe());
    Ok(p)
}

/// Median over the ping repetitions that worked of `f`.
pub fn ping_median(pings: &[PingRep], f: impl Fn(&PingRep) -> Option<f64>) -> Option<f64> {
    median(pings.iter().filter(|p| p.error.is_none()).filter_map(f))
}

/// One repetition of an iperf3 run: its outcome or why it failed.
#[derive(Debug, Serialize)]
pub struct Rep {
    /// 1-based repetition number.
    pub rep: u32,
    /// The error, when the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The outcome, when it succeeded.
    #[serde(flatten)]
    pub outcome: Option<Outcome>,
}

impl Rep {
    /// The repetition `round` of a run that gave `res`.
    pub fn new(round: u32, res: anyhow::Result<Outcome>) -> Rep {
        match res {
            Ok(o) => Rep {
                rep: round,
                error: None,
                outcome: Some(o),
            },
            Err(e) => Rep {
                rep: round,
                error: Some(format!("{e:#}")),
                outcome: None,
            },
        }
    }
}

/// Median over the repetitions that worked of `f`.
pub fn rep_median(reps: &[Rep], f: impl Fn(&Outcome) -> Option<f64>) -> Option<f64> {
    median(reps.iter().filter_map(|r| r.outcome.as_ref()).filter_map(f))
}

/// Gbit received in a run (10^9 bits).
pub fn gbits(o: &Outcome) -> f64 {
    o.figures.bytes as f64 * 8.0 / 1e9
}

/// A one-line summary of a run for the progress log; `watched` names the
/// processes whose CPU was accounted.
pub fn describe(o: &Outcome, watched: &str) -> String {
    use std::fmt::Write as _;
    let f = &o.figures;
    let mut s = format!("{:.2} Gbit/s", f.gbit_per_s);
    if let (Some(pps), Some(loss)) = (f.rx_pps, f.lost_percent) {
        let _ = write!(s, ", {:.1} kpps received, {loss:.1} % lost", pps / 1e3);
    }
    let _ = write!(s, ", machine CPU {:.1} s", o.host_cpu_s);
    if let Some(c) = o.watched_cpu_s {
        let _ = write!(s, ", {watched} CPU {c:.1} s");
    }
    s
}

/// Pings `dst` from h1 until a reply comes (ARP, a daemon's first packets,
/// a handshake), up to about 10 s.
pub fn reachable(tb: &Testbed, dst: Ipv4Addr) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..5 {
        let p = icmp_ping(
            tb,
            "h1",
            dst,
            5,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )?;
        if p.received > 0 {
            return Ok(());
        }
        last = format!("{}/{} replies", p.received, p.sent);
    }
    bail!("h1 cannot ping {dst} ({last})")
}

/// The segmentation and receive offload lines of `ethtool -k dev`.
pub fn offloads(tb: &Testbed, ns: &str, dev: &str) -> anyhow::Result<String> {
    let text = daemon::run(tb, ns, &["ethtool", "-k", dev], CMD_TIMEOUT)?;
    Ok(text
        .lines()
        .filter(|l| {
            [
                "tcp-segmentation-offload:",
                "generic-segmentation-offload:",
                "generic-receive-offload:",
                "tx-checksumming:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; "))
}

/// What a daemon says about itself (`vxmesh --json status`), if the CLI is
/// next to vxmeshd; its error as a string otherwise.
pub fn daemon_status(tb: &Testbed, cli: &Path, h: &str, sock: &Path) -> Value {
    if !cli.is_file() {
        return Value::Null;
    }
    let (Some(cli), Some(sock)) = (cli.to_str(), sock.to_str()) else {
        return Value::Null;
    };
    match daemon::run(
        tb,
        h,
        &[cli, "--socket", sock, "--json", "status"],
        CMD_TIMEOUT,
    ) {
        Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Err(e) => Value::String(format!("{e:#}")),
    }
}
