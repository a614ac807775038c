//! `vxmesh-bench overlay`: throughput, packet rate, latency and CPU of the
//! path h1 -> h2 over the underlay, the kernel's vxlan (with and without
//! offloads) and vxmesh, all measured in one run on one testbed, so that the
//! ratios compare figures taken under the same conditions.
//!
//! Shape (DESIGN.md, "Testbed and address plan"): hosts h1 and h2 on the
//! bridge, `198.18.0.1/24` and `.2`, MTU 1500; the overlay `front`, VNI 4096,
//! `10.0.9.0/24`, MTU 1450. The kernel's vxlan (`vxk0`) and vxmeshd both use
//! UDP port 4789, so the kernel devices are deleted before the daemons start.
//!
//! Every load is bounded (`iperf3 -t`, a hard timeout on every command) and
//! every namespace and process belongs to the [`Testbed`], which removes them
//! when it drops, also on error: failures propagate with `?`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use vxmesh_netns::{icmp_ping, require_root, workspace_bin, Proc, Testbed};

use crate::chart::{self, Panel};
use crate::iperf::{self, Mode, Outcome};
use crate::profile::{self, kind, CpuProfile, PathProfile, WakeProfile};
use crate::report::{append_log, format_table, loadavg, Machine};
use crate::stats::{median, ratio};

/// Underlay addresses of h1 and h2.
const UL: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
/// Overlay addresses of h1 and h2 (kernel vxlan and vxmesh alike).
const OV: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 9, 1), Ipv4Addr::new(10, 0, 9, 2)];
/// Underlay MTU.
const UNDERLAY_MTU: u32 = 1500;
/// The paths, in table order.
pub const PATHS: [&str; 4] = ["underlay", "kernel", "kernel-nooffload", "vxmesh"];
/// Bound on setup commands (`ip`, `bridge`, `ethtool`, `vxmesh status`).
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long vxmeshd gets to send READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two runs, so one's tail does not overlap the next.
const SETTLE: Duration = Duration::from_millis(500);
/// Interval of the latency pings.
const PING_INTERVAL: Duration = Duration::from_millis(1);

/// The cluster file for the two hosts: `config/lab.toml` without h3.
pub const CLUSTER: &str = vxmesh_netns::fixtures::TWO_HOSTS;

/// Arguments of `vxmesh-bench overlay`.
#[derive(clap::Args, Debug, Clone)]
pub struct OverlayArgs {
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
    /// Offered rate of the UDP runs (iperf3 -b): above what any path
    /// carries, so the figure is what the receiver got.
    #[arg(long, default_value = "2G")]
    pub udp_rate: String,
    /// Directory for overlay.json, overlay.png, overlay.txt and the daemons'
    /// logs.
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
    /// Smoke run: 2 s runs, 1 repetition, 200 pings.
    #[arg(long)]
    pub quick: bool,
    /// vxmeshd's `[settings] queues` (workers per side) [default: the
    /// daemon's, one per CPU].
    #[arg(long)]
    pub queues: Option<usize>,
    /// vxmeshd's `[settings] busy_poll_us` [default: the daemon's].
    #[arg(long)]
    pub busy_poll_us: Option<u64>,
    /// Skip the profiles (`perf` recordings of extra TCP, UDP 64 B and ping
    /// runs on the kernel's vxlan and vxmesh in the last round, written to
    /// overlay-profile.txt). They are taken whenever `perf` is installed.
    #[arg(long)]
    pub no_profile: bool,
}

/// The settings in force after defaults and `--quick`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Seconds per iperf3 run.
    pub secs: u32,
    /// Repetitions.
    pub reps: u32,
    /// Pings per repetition.
    pub pings: u32,
    /// UDP offered rate.
    pub udp_rate: String,
    /// Output directory.
    pub out: PathBuf,
    /// `[settings] queues` given to vxmeshd, when set.
    pub queues: Option<usize>,
    /// `[settings] busy_poll_us` given to vxmeshd, when set.
    pub busy_poll_us: Option<u64>,
    /// Profile the kernel's vxlan and vxmesh in the last round.
    pub profile: bool,
}

impl Settings {
    /// Resolves defaults: explicit values win over `--quick`.
    pub fn from_args(a: &OverlayArgs) -> Settings {
        let (secs, reps, pings) = if a.quick { (2, 1, 200) } else { (10, 3, 1000) };
        Settings {
            secs: a.secs.unwrap_or(secs).max(1),
            reps: a.reps.unwrap_or(reps).max(1),
            pings: a.pings.unwrap_or(pings).max(1),
            udp_rate: a.udp_rate.clone(),
            out: a.out.clone(),
            queues: a.queues,
            busy_poll_us: a.busy_poll_us,
            profile: !a.no_profile,
        }
    }

    /// The cluster file vxmeshd gets: [`CLUSTER`], with `queues` and
    /// `busy_poll_us` when set.
    pub fn cluster(&self) -> String {
        let mut extra = String::new();
        if let Some(q) = self.queues {
            extra += &format!("queues = {q}\n");
        }
        if let Some(b) = self.busy_poll_us {
            extra += &format!("busy_poll_us = {b}\n");
        }
        CLUSTER.replace(
            "underlay_mtu = 1500\n",
            &format!("underlay_mtu = 1500\n{extra}"),
        )
    }

    /// A rough duration of the whole run.
    pub fn estimate(&self) -> Duration {
        let per_run = f64::from(self.secs) + 1.5;
        let per_path = TESTS.len() as f64 * per_run + f64::from(self.pings) * 0.0012 + 1.0;
        let per_round = PATHS.len() as f64 * per_path + 3.0;
        // Two paths profiled: a TCP and a UDP run each, and the pings.
        let profile = if self.profile {
            2.0 * (2.0 * per_run + f64::from(self.pings) * 0.0015 + 3.0)
        } else {
            0.0
        };
        Duration::from_secs_f64(f64::from(self.reps) * per_round + profile + 3.0)
    }
}

/// An iperf3 rate (`-b`: a number with an optional k, M, G or T suffix,
/// powers of 1000) in bit/s; `None` when not understood.
pub fn rate_bps(rate: &str) -> Option<f64> {
    let rate = rate.trim();
    let (num, mult) = match rate.chars().last()? {
        'k' | 'K' => (&rate[..rate.len() - 1], 1e3),
        'm' | 'M' => (&rate[..rate.len() - 1], 1e6),
        'g' | 'G' => (&rate[..rate.len() - 1], 1e9),
        't' | 'T' => (&rate[..rate.len() - 1], 1e12),
        _ => (rate, 1.0),
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// One kind of iperf3 run.
struct TestSpec {
    key: &'static str,
    label: &'static str,
    udp_len: Option<u32>,
    parallel: u32,
    /// Offered at the rate the kernel's vxlan received in the same round's
    /// `udp64` run, instead of the flood rate: the loss a path shows at a
    /// rate the kernel carries. Run on the kernel and vxmesh paths only.
    paced: bool,
}

/// The iperf3 runs made on each path, in order.
const TESTS: [TestSpec; 5] = [
    TestSpec {
        key: "tcp1",
        label: "TCP 1 stream",
        udp_len: None,
        parallel: 1,
        paced: false,
    },
    TestSpec {
        key: "tcp2",
        label: "TCP -P 2",
        udp_len: None,
        parallel: 2,
        paced: false,
    },
    TestSpec {
        key: "udp64",
        label: "UDP 64 B",
        udp_len: Some(64),
        parallel: 1,
        paced: false,
    },
    TestSpec {
        key: "udp64paced",
        label: "UDP 64 B at the kernel's rate",
        udp_len: Some(64),
        parallel: 1,
        paced: true,
    },
    TestSpec {
        key: "udp1400",
        label: "UDP 1400 B",
        udp_len: Some(1400),
        parallel: 1,
        paced: false,
    },
];

impl TestSpec {
    fn mode(&self, rate: &str) -> Mode {
        match self.udp_len {
            Some(len) => Mode::Udp {
                len,
                rate: rate.into(),
            },
            None => Mode::Tcp {
                parallel: self.parallel,
            },
        }
    }
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

/// All repetitions of one kind of run on one path.
#[derive(Debug, Serialize)]
pub struct TestResult {
    /// `tcp1`, `tcp2`, `udp64` or `udp1400`.
    pub key: &'static str,
    /// What iperf3 was asked to send.
    pub mode: Mode,
    /// Seconds per run.
    pub secs: u32,
    /// The repetitions.
    pub reps: Vec<Rep>,
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

/// Everything measured on one path.
#[derive(Debug, Serialize)]
pub struct PathResult {
    /// One of [`PATHS`].
    pub name: &'static str,
    /// The address h1 sent to (h2's, on that path).
    pub dst: Ipv4Addr,
    /// Rounds in which the path could not be measured (setup or
    /// reachability), with the reason.
    pub errors: Vec<String>,
    /// How the path was set up (first round): commands' outputs worth
    /// keeping.
    pub setup: serde_json::Map<String, Value>,
    /// Latency pings.
    pub ping: Vec<PingRep>,
    /// iperf3 runs.
    pub tests: Vec<TestResult>,
    /// vxmesh only: the pings again with the lanes busy-polling.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ping_busy_poll: Vec<BusyPing>,
    /// Where the time went (kernel and vxmesh, last round), when profiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<PathProfile>,
}

impl PathResult {
    fn new(name: &'static str, dst: Ipv4Addr, udp_rate: &str, secs: u32) -> PathResult {
        PathResult {
            name,
            dst,
            errors: Vec::new(),
            setup: serde_json::Map::new(),
            ping: Vec::new(),
            ping_busy_poll: Vec::new(),
            profile: None,
            tests: TESTS
                .iter()
                .map(|t| TestResult {
                    key: t.key,
                    mode: t.mode(udp_rate),
                    secs,
                    reps: Vec::new(),
                })
                .collect(),
        }
    }

    /// Records that the path could not be measured in `round`.
    fn fail(&mut self, round: u32, error: String) {
        eprintln!("[{}] round {round}: {error}", self.name);
        self.errors.push(format!("round {round}: {error}"));
    }

    /// True when not a single run of the path succeeded.
    fn no_data(&self) -> bool {
        self.ping.iter().all(|p| p.error.is_some())
            && self
                .tests
                .iter()
                .all(|t| t.reps.iter().all(|r| r.outcome.is_none()))
    }

    /// Median over the successful repetitions of run `key` of `f`.
    fn med(&self, key: &str, f: impl Fn(&Outcome) -> Option<f64>) -> Option<f64> {
        let t = self.tests.iter().find(|t| t.key == key)?;
        median(
            t.reps
                .iter()
                .filter_map(|r| r.outcome.as_ref())
                .filter_map(f),
        )
    }

    /// Median over the ping repetitions of `f`.
    fn ping_med(&self, f: impl Fn(&PingRep) -> Option<f64>) -> Option<f64> {
        median(self.ping.iter().filter(|p| p.error.is_none()).filter_map(f))
    }

    /// Every failed repetition, as text.
    fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{} {e}", self.name))
            .collect();
        for p in &self.ping {
            if let Some(e) = &p.error {
                v.push(format!("{} ping rep {}: {e}", self.name, p.rep));
            }
        }
        for t in &self.tests {
            for r in &t.reps {
                if let Some(e) = &r.error {
                    v.push(format!("{} {} rep {}: {e}", self.name, t.key, r.rep));
                }
            }
        }
        v
    }
}

/// Gbit received in a run (10^9 bits).
fn gbits(o: &Outcome) -> f64 {
    o.figures.bytes as f64 * 8.0 / 1e9
}

/// One row of the table.
struct Metric {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    /// Whether vxmesh/kernel means something for this row.
    ratio: bool,
    get: fn(&PathResult) -> Option<f64>,
}

const METRICS: [Metric; 16] = [
    Metric {
        key: "tcp1_gbit_per_s",
        label: "TCP 1 stream, Gbit/s",
        decimals: 2,
        ratio: true,
        get: |p| p.med("tcp1", |o| Some(o.figures.gbit_per_s)),
    },
    Metric {
        key: "tcp2_gbit_per_s",
        label: "TCP -P 2, Gbit/s",
        decimals: 2,
        ratio: true,
        get: |p| p.med("tcp2", |o| Some(o.figures.gbit_per_s)),
    },
    Metric {
        key: "udp64_rx_kpps",
        label: "UDP 64 B received, kpps",
        decimals: 1,
        ratio: true,
        get: |p| p.med("udp64", |o| o.figures.rx_pps.map(|x| x / 1e3)),
    },
    Metric {
        key: "udp64_loss_percent",
        label: "UDP 64 B loss, %",
        decimals: 1,
        ratio: false,
        get: |p| p.med("udp64", |o| o.figures.lost_percent),
    },
    Metric {
        key: "udp64paced_rx_kpps",
        label: "UDP 64 B at kernel's rate, kpps",
        decimals: 1,
        ratio: true,
        get: |p| p.med("udp64paced", |o| o.figures.rx_pps.map(|x| x / 1e3)),
    },
    Metric {
        key: "udp64paced_loss_percent",
        label: "UDP 64 B at kernel's rate, loss %",
        decimals: 2,
        ratio: false,
        get: |p| p.med("udp64paced", |o| o.figures.lost_percent),
    },
    Metric {
        key: "udp1400_rx_kpps",
        label: "UDP 1400 B received, kpps",
        decimals: 1,
        ratio: true,
        get: |p| p.med("udp1400", |o| o.figures.rx_pps.map(|x| x / 1e3)),
    },
    Metric {
        key: "udp1400_rx_gbit_per_s",
        label: "UDP 1400 B received, Gbit/s",
        decimals: 2,
        ratio: true,
        get: |p| p.med("udp1400", |o| Some(o.figures.gbit_per_s)),
    },
    Metric {
        key: "udp1400_loss_percent",
        label: "UDP 1400 B loss, %",
        decimals: 1,
        ratio: false,
        get: |p| p.med("udp1400", |o| o.figures.lost_percent),
    },
    Metric {
        key: "ping_p50_us",
        label: "ping RTT p50, µs",
        decimals: 1,
        ratio: true,
        get: |p| p.ping_med(|r| r.p50_us),
    },
    Metric {
        key: "ping_p50_busy_poll_us",
        label: "ping p50, vxmesh busy-polling, µs",
        decimals: 1,
        ratio: true,
        get: |p| {
            if p.ping_busy_poll.is_empty() {
                p.ping_med(|r| r.p50_us)
            } else {
                median(
                    p.ping_busy_poll
                        .iter()
                        .filter(|b| b.ping.error.is_none())
                        .filter_map(|b| b.ping.p50_us),
                )
            }
        },
    },
    Metric {
        key: "busy_poll_cpu_percent",
        label: "vxmeshd CPU busy-polling, % of 1 core",
        decimals: 0,
        ratio: false,
        get: |p| {
            median(
                p.ping_busy_poll
                    .iter()
                    .filter_map(|b| b.vxmeshd_cpu_percent),
            )
        },
    },
    Metric {
        key: "ping_p99_us",
        label: "ping RTT p99, µs",
        decimals: 1,
        ratio: true,
        get: |p| p.ping_med(|r| r.p99_us),
    },
    Metric {
        key: "tcp1_machine_cpu_s_per_gbit",
        label: "machine CPU s/Gbit (TCP 1)",
        decimals: 3,
        ratio: true,
        get: |p| p.med("tcp1", |o| Some(o.host_cpu_s / gbits(o))),
    },
    Metric {
        key: "tcp1_vxmeshd_cpu_s_per_gbit",
        label: "vxmeshd CPU s/Gbit (TCP 1)",
        decimals: 3,
        ratio: false,
        get: |p| p.med("tcp1", |o| o.watched_cpu_s.map(|c| c / gbits(o))),
    },
    Metric {
        key: "tcp1_vxmeshd_cpu_percent",
        label: "vxmeshd CPU, % of 1 core (TCP 1)",
        decimals: 0,
        ratio: false,
        get: |p| p.med("tcp1", |o| o.watched_cpu_s.map(|c| 100.0 * c / o.wall_s)),
    },
];

/// `pings` echo requests from h1 to `dst` at [`PING_INTERVAL`].
fn ping_rep(tb: &Testbed, dst: Ipv4Addr, pings: u32, round: u32) -> PingRep {
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

/// The busy-poll budget of the extra vxmesh pings: above the 1 ms ping
/// interval, so that the lanes are still polling when the next echo comes.
pub const BUSY_POLL_PING_US: u64 = 2000;

/// The vxmesh pings repeated with `busy_poll_us` = [`BUSY_POLL_PING_US`].
#[derive(Debug, Serialize)]
pub struct BusyPing {
    /// The pings.
    #[serde(flatten)]
    pub ping: PingRep,
    /// CPU both daemons used while they ran, in % of one core.
    pub vxmeshd_cpu_percent: Option<f64>,
}

/// The measuring state: settings, clock ticks, the next free port.
struct Ctx<'a> {
    s: &'a Settings,
    clk_tck: f64,
    port: u16,
    /// The kernel vxlan's received rate in this round's `udp64` run, bit/s
    /// of 64-byte payloads: what the paced run offers.
    paced_bps: Option<f64>,
}

impl Ctx<'_> {
    fn next_port(&mut self) -> u16 {
        let p = self.port;
        self.port = if self.port >= 60000 {
            5201
        } else {
            self.port + 1
        };
        p
    }

    /// One iperf3 run h1 -> h2 (`dst`) on the next port, after a pause.
    fn iperf(
        &mut self,
        tb: &mut Testbed,
        dst: Ipv4Addr,
        mode: &Mode,
        watch: &[u32],
    ) -> anyhow::Result<Outcome> {
        std::thread::sleep(SETTLE);
        let port = self.next_port();
        let secs = self.s.secs;
        iperf::run(tb, "h2", "h1", dst, port, secs, mode, watch, self.clk_tck)
    }

    /// One round on a path: checks that h2 answers on the path's address,
    /// then runs the pings and each iperf3 run once, appending to `r`.
    /// `watch`: pids whose CPU is accounted (the daemons).
    fn measure_round(&mut self, tb: &mut Testbed, r: &mut PathResult, round: u32, watch: &[u32]) {
        let (name, dst, s) = (r.name, r.dst, self.s);
        if let Err(e) = reachable(tb, dst) {
            r.fail(round, format!("{e:#}"));
            return;
        }
        let p = ping_rep(tb, dst, s.pings, round);
        eprintln!(
            "[{name}] ping {round}/{}: {}/{} replies, p50 {} µs, p99 {} µs{}",
            s.reps,
            p.received,
            p.sent,
            p.p50_us.map_or("-".into(), |v| format!("{v:.1}")),
            p.p99_us.map_or("-".into(), |v| format!("{v:.1}")),
            p.error
                .as_ref()
                .map_or(String::new(), |e| format!(" ERROR {e}")),
        );
        r.ping.push(p);
        if name == "kernel" {
            self.paced_bps = None;
        }
        for (spec, t) in TESTS.iter().zip(r.tests.iter_mut()) {
            if spec.paced {
                let Some(bps) = self
                    .paced_bps
                    .filter(|_| matches!(name, "kernel" | "vxmesh"))
                else {
                    continue;
                };
                t.mode = Mode::Udp {
                    len: 64,
                    rate: format!("{bps:.0}"),
                };
            }
            let res = self.iperf(tb, dst, &t.mode, watch);
            let line = match &res {
                Ok(o) => describe(o),
                Err(e) => format!("ERROR {e:#}"),
            };
            eprintln!("[{name}] {} {round}/{}: {line}", spec.label, s.reps);
            if let (Ok(o), "kernel", "udp64") = (&res, name, spec.key) {
                // iperf3's -b counts payload bits.
                self.paced_bps = o.figures.rx_pps.map(|pps| pps * 64.0 * 8.0);
            }
            t.reps.push(match res {
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
            });
        }
    }
}

impl Ctx<'_> {
    /// The extra, profiled runs on a path (see [`profile`]): TCP 1 stream
    /// and the UDP 64 B flood under `perf record`, then the pings under
    /// `perf sched record`. Their figures go into the profile only.
    fn profile(&mut self, tb: &mut Testbed, r: &mut PathResult, watch: &[u32]) {
        let (name, dst, s) = (r.name, r.dst, self.s);
        let mut p = PathProfile::default();
        for key in ["tcp1", "udp64"] {
            let spec = TESTS.iter().find(|t| t.key == key).expect("known test");
            let data = s.out.join(format!("perf-{name}-{key}.data"));
            let res = profile::record_cpu(&data, s.secs).and_then(|rec| {
                let o = self.iperf(tb, dst, &spec.mode(&s.udp_rate), watch)?;
                let data = rec.finish()?;
                let text = profile::report(&data)?;
                Ok(CpuProfile::from_report(spec.label, describe(&o), &text))
            });
            let _ = std::fs::remove_file(&data);
            match res {
                Ok(c) => p.cpu.push(c),
                Err(e) => p.errors.push(format!("{}: {e:#}", spec.label)),
            }
        }
        match self.profile_pings(tb, r.name, dst) {
            Ok(w) => p.wakeups = Some(w),
            Err(e) => p.errors.push(format!("pings: {e:#}")),
        }
        for e in &p.errors {
            eprintln!("[{name}] profile: {e}");
        }
        r.profile = Some(p);
    }

    /// The pings of [`ping_rep`] run by `perf sched record` (so that the
    /// recording spans exactly the pings), summarised per thread.
    fn profile_pings(
        &self,
        tb: &Testbed,
        name: &str,
        dst: Ipv4Addr,
    ) -> anyhow::Result<WakeProfile> {
        let s = self.s;
        let data = s.out.join(format!("perf-{name}-sched.data"));
        let (count, interval, dst_s) = (
            s.pings.to_string(),
            PING_INTERVAL.as_secs_f64().to_string(),
            dst.to_string(),
        );
        let ping = [
            "ping", "-n", "-c", &count, "-i", &interval, "-W", "1", &dst_s,
        ];
        let cmd = profile::sched_command(&data, &ping)?;
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let timeout = PING_INTERVAL * s.pings + Duration::from_secs(30);
        let res = tb
            .exec_timeout_unchecked("h1", &args, timeout)
            .map_err(anyhow::Error::from)
            .and_then(|out| {
                let stats = vxmesh_netns::PingStats::parse(&String::from_utf8_lossy(&out.stdout))?;
                let text = profile::timehist(&data)?;
                Ok(WakeProfile::from_timehist(
                    &text,
                    stats.received,
                    stats.p50(),
                ))
            });
        let _ = std::fs::remove_file(&data);
        res
    }
}

/// A one-line summary of a run for the progress log.
fn describe(o: &Outcome) -> String {
    let f = &o.figures;
    let mut s = format!("{:.2} Gbit/s", f.gbit_per_s);
    if let (Some(pps), Some(loss)) = (f.rx_pps, f.lost_percent) {
        let _ = write!(s, ", {:.1} kpps received, {loss:.1} % lost", pps / 1e3);
    }
    let _ = write!(s, ", machine CPU {:.1} s", o.host_cpu_s);
    if let Some(c) = o.watched_cpu_s {
        let _ = write!(s, ", vxmeshd CPU {c:.1} s");
    }
    s
}

/// Pings `dst` from h1 until a reply comes (ARP, a daemon's first packets),
/// up to about 10 s.
fn reachable(tb: &Testbed, dst: Ipv4Addr) -> anyhow::Result<()> {
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

/// Runs a bounded command in a host and returns its stdout.
fn run(tb: &Testbed, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tb.exec_timeout(ns, args, CMD_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates `vxk0` in h1 and h2: kernel vxlan, VNI 4096, port 4789, static
/// FDB (an all-zero entry for flooding to the other host, and its MAC).
/// Returns the devices' details for the report.
fn kernel_up(tb: &Testbed) -> anyhow::Result<serde_json::Map<String, Value>> {
    for (me, other) in [(0usize, 1usize), (1, 0)] {
        let h = format!("h{}", me + 1);
        let (local, remote) = (UL[me].to_string(), UL[other].to_string());
        let mac = format!("02:42:0a:00:09:{:02x}", me + 1);
        let other_mac = format!("02:42:0a:00:09:{:02x}", other + 1);
        let addr = format!("{}/24", OV[me]);
        let steps = [
            format!(
                "ip link add vxk0 type vxlan id 4096 dstport 4789 local {local} dev eth0 nolearning"
            ),
            format!("ip link set dev vxk0 mtu 1450 address {mac}"),
            format!("ip addr add {addr} dev vxk0"),
            "ip link set dev vxk0 up".to_string(),
            format!("bridge fdb append 00:00:00:00:00:00 dev vxk0 dst {remote}"),
            format!("bridge fdb add {other_mac} dev vxk0 dst {remote} static"),
        ];
        for step in &steps {
            let args: Vec<&str> = step.split_whitespace().collect();
            run(tb, &h, &args).with_context(|| format!("kernel vxlan setup in {h}"))?;
        }
    }
    let mut setup = serde_json::Map::new();
    setup.insert(
        "h1: ip -d link show vxk0".into(),
        run(tb, "h1", &["ip", "-d", "link", "show", "dev", "vxk0"])?.into(),
    );
    setup.insert(
        "h1: bridge fdb show dev vxk0".into(),
        run(tb, "h1", &["bridge", "fdb", "show", "dev", "vxk0"])?.into(),
    );
    setup.insert(
        "h1: offloads of vxk0".into(),
        offloads(tb, "h1", "vxk0")?.into(),
    );
    Ok(setup)
}

/// The segmentation and receive offload lines of `ethtool -k dev`.
fn offloads(tb: &Testbed, ns: &str, dev: &str) -> anyhow::Result<String> {
    let text = run(tb, ns, &["ethtool", "-k", dev])?;
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

/// `ethtool -K vxk0 tso off gso off gro off` in both hosts.
fn kernel_offloads_off(tb: &Testbed) -> anyhow::Result<serde_json::Map<String, Value>> {
    for h in ["h1", "h2"] {
        run(
            tb,
            h,
            &[
                "ethtool", "-K", "vxk0", "tso", "off", "gso", "off", "gro", "off",
            ],
        )
        .with_context(|| format!("turning offloads off on vxk0 in {h}"))?;
    }
    let mut setup = serde_json::Map::new();
    setup.insert(
        "h1: offloads of vxk0".into(),
        offloads(tb, "h1", "vxk0")?.into(),
    );
    Ok(setup)
}

/// Deletes `vxk0` in both hosts (both tried; the first error is returned).
fn kernel_down(tb: &Testbed) -> anyhow::Result<()> {
    let results: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| run(tb, h, &["ip", "link", "del", "dev", "vxk0"]))
        .collect();
    for r in results {
        r.context("deleting vxk0")?;
    }
    Ok(())
}

/// Writes the cluster file and starts vxmeshd in h1 and h2, each waited for
/// until READY=1.
/// Writes the daemons' cluster file (one per testbed) and returns its path.
fn write_cluster(tb: &Testbed, cluster: &str) -> anyhow::Result<PathBuf> {
    let cfg = tb.dir().join("vxmesh.toml");
    std::fs::write(&cfg, cluster).with_context(|| format!("writing {}", cfg.display()))?;
    Ok(cfg)
}

fn vxmesh_up(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cluster: &str,
) -> anyhow::Result<Vec<(String, Proc, PathBuf)>> {
    let cfg = write_cluster(tb, cluster)?;
    let cfg_s = cfg.to_str().context("temp path is not UTF-8")?.to_string();
    let bin = vxmeshd.to_str().context("vxmeshd path is not UTF-8")?;
    let mut procs = Vec::new();
    for h in ["h1", "h2"] {
        let sock = tb.dir().join(format!("{h}.sock"));
        let sock_s = sock.to_str().context("temp path is not UTF-8")?;
        let p = tb
            .spawn_notify(
                h,
                &[bin, "--config", &cfg_s, "--node", h, "--socket", sock_s],
                &[("NO_COLOR", "1")],
                READY_TIMEOUT,
            )
            .with_context(|| format!("starting vxmeshd in {h}"))?;
        eprintln!("[vxmesh] vxmeshd ready in {h} (pid {})", p.pid);
        procs.push((h.to_string(), p, sock));
    }
    Ok(procs)
}

/// Reloads the running daemons with `busy_poll_us` = [`BUSY_POLL_PING_US`]
/// (rewritten cluster file, SIGHUP, then their status says it is in
/// force), pings as in the round with the CPU the daemons use meanwhile,
/// and reloads them back to the round's settings.
fn busy_poll_pings(
    tb: &Testbed,
    cli: &Path,
    daemons: &[(String, Proc, PathBuf)],
    s: &Settings,
    clk_tck: f64,
    round: u32,
) -> anyhow::Result<BusyPing> {
    let reload = |busy: Option<u64>| -> anyhow::Result<()> {
        let with = Settings {
            busy_poll_us: busy,
            ..s.clone()
        };
        write_cluster(tb, &with.cluster())?;
        for (_, p, _) in daemons {
            tb.signal(p, nix::sys::signal::Signal::SIGHUP)?;
        }
        let want = busy.unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (h, _, sock) in daemons {
            while daemon_status(tb, cli, h, sock)["dataplane"]["busy_poll_us"].as_u64()
                != Some(want)
            {
                if Instant::now() > deadline {
                    bail!("{h} did not take busy_poll_us = {want} up within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    };
    reload(Some(BUSY_POLL_PING_US))?;
    let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
    let before = crate::cpu::Snapshot::take(&pids)?;
    let started = Instant::now();
    let ping = ping_rep(tb, OV[1], s.pings, round);
    let wall = started.elapsed().as_secs_f64();
    let after = crate::cpu::Snapshot::take(&pids)?;
    let (_, daemons_s) = before.seconds_until(&after, clk_tck);
    eprintln!(
        "[vxmesh] ping with busy_poll_us = {BUSY_POLL_PING_US} {round}/{}: {}/{} replies, p50 {} µs, p99 {} µs, vxmeshd CPU {:.0} % of a core",
        s.reps,
        ping.received,
        ping.sent,
        ping.p50_us.map_or("-".into(), |v| format!("{v:.1}")),
        ping.p99_us.map_or("-".into(), |v| format!("{v:.1}")),
        daemons_s.map_or(f64::NAN, |c| 100.0 * c / wall),
    );
    reload(s.busy_poll_us)?;
    Ok(BusyPing {
        ping,
        vxmeshd_cpu_percent: daemons_s.map(|c| 100.0 * c / wall),
    })
}

/// What the daemons say about themselves (`vxmesh --json status`), if the
/// CLI is next to vxmeshd.
fn daemon_status(tb: &Testbed, cli: &Path, h: &str, sock: &Path) -> Value {
    if !cli.is_file() {
        return Value::Null;
    }
    let (Some(cli), Some(sock)) = (cli.to_str(), sock.to_str()) else {
        return Value::Null;
    };
    match run(tb, h, &[cli, "--socket", sock, "--json", "status"]) {
        Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Err(e) => Value::String(format!("{e:#}")),
    }
}

/// Builds the testbed and measures every path, in rounds: each round
/// measures the underlay, sets up the kernel's vxlan and measures it with
/// and without offloads, deletes it, starts vxmeshd, measures it and stops
/// it. Interleaving spreads a passing load on the machine over every path
/// instead of one. The testbed (namespaces, processes) is gone when this
/// returns, whatever happened.
fn measure_all(
    s: &Settings,
    clk_tck: f64,
    vxmeshd: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<PathResult>> {
    let mut tb = Testbed::new("bench")?;
    eprintln!("testbed {} (temp dir {})", tb.suffix(), tb.dir().display());
    for (i, ul) in UL.iter().enumerate() {
        tb.add_host(&format!("h{}", i + 1), &format!("{ul}/24"), UNDERLAY_MTU)?;
    }
    let mut ctx = Ctx {
        s,
        clk_tck,
        port: 5201,
        paced_bps: None,
    };
    let new = |name, dst| PathResult::new(name, dst, &s.udp_rate, s.secs);
    let mut underlay = new("underlay", UL[1]);
    let mut kernel = new("kernel", OV[1]);
    let mut nooffload = new("kernel-nooffload", OV[1]);
    let mut vxmesh = new("vxmesh", OV[1]);
    let cli = vxmeshd.with_file_name("vxmesh");
    for h in ["h1", "h2"] {
        // Fresh logs for this run; each round's are appended.
        let _ = std::fs::remove_file(s.out.join(format!("vxmeshd-{h}.log")));
    }

    for round in 1..=s.reps {
        eprintln!("--- round {round}/{} ---", s.reps);
        ctx.measure_round(&mut tb, &mut underlay, round, &[]);

        match kernel_up(&tb) {
            Ok(setup) => {
                if round == 1 {
                    kernel.setup = setup;
                }
                ctx.measure_round(&mut tb, &mut kernel, round, &[]);
                if s.profile && round == s.reps {
                    ctx.profile(&mut tb, &mut kernel, &[]);
                }
                match kernel_offloads_off(&tb) {
                    Ok(setup) => {
                        if round == 1 {
                            nooffload.setup = setup;
                        }
                        ctx.measure_round(&mut tb, &mut nooffload, round, &[]);
                    }
                    Err(e) => nooffload.fail(round, format!("{e:#}")),
                }
            }
            Err(e) => {
                kernel.fail(round, format!("{e:#}"));
                nooffload.fail(round, format!("{e:#}"));
            }
        }
        // vxmeshd binds port 4789 too: the kernel devices must be gone.
        if let Err(e) = kernel_down(&tb) {
            vxmesh.fail(
                round,
                format!("not started, the kernel's vxk0 could not be deleted: {e:#}"),
            );
            break;
        }

        let daemons = match vxmesh_up(&mut tb, vxmeshd, &s.cluster()) {
            Ok(d) => d,
            Err(e) => {
                vxmesh.fail(round, format!("{e:#}"));
                continue;
            }
        };
        let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
        if round == 1 {
            vxmesh.setup.insert("cluster".into(), s.cluster().into());
            if let Ok(a) = run(&tb, "h1", &["ip", "-d", "addr", "show"]) {
                vxmesh.setup.insert("h1: ip -d addr show".into(), a.into());
            }
            if let Ok(o) = offloads(&tb, "h1", "vxm-front") {
                vxmesh
                    .setup
                    .insert("h1: offloads of vxm-front".into(), o.into());
            }
        }
        ctx.measure_round(&mut tb, &mut vxmesh, round, &pids);
        if s.profile && round == s.reps {
            ctx.profile(&mut tb, &mut vxmesh, &pids);
        }
        if s.busy_poll_us.is_none() {
            match busy_poll_pings(&tb, &cli, &daemons, s, clk_tck, round) {
                Ok(b) => vxmesh.ping_busy_poll.push(b),
                Err(e) => notes.push(format!("round {round}: busy-poll pings: {e:#}")),
            }
        }
        let mut stopped = true;
        for (h, p, sock) in &daemons {
            vxmesh.setup.insert(
                format!("{h}: vxmesh status after round {round}"),
                daemon_status(&tb, &cli, h, sock),
            );
            // Kernel-side drops (TAP queue, sockets) that the daemon's own
            // counters cannot see.
            if let Ok(text) = run(&tb, h, &["ip", "-s", "link", "show"]) {
                vxmesh.setup.insert(
                    format!("{h}: ip -s link show after round {round}"),
                    text.into(),
                );
            }
            if let Ok(text) = run(&tb, h, &["cat", "/proc/net/snmp"]) {
                let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
                vxmesh.setup.insert(
                    format!("{h}: Udp counters after round {round}"),
                    udp.join("\n").into(),
                );
            }
            if let Some(status) = p.exit_status() {
                notes.push(format!(
                    "round {round}: vxmeshd in {h} exited during the runs: {status}"
                ));
            }
            // Stopped now so that the next round's kernel vxlan gets the port.
            stopped &= tb.stop(p);
            let dest = s.out.join(format!("vxmeshd-{h}.log"));
            if let Err(e) = append_log(&p.log, &dest, round) {
                notes.push(format!("could not copy {}: {e}", p.log.display()));
            }
        }
        if !stopped {
            notes.push(format!(
                "round {round}: a vxmeshd could not be stopped; no further rounds"
            ));
            break;
        }
    }
    for h in ["h1", "h2"] {
        let dest = s.out.join(format!("vxmeshd-{h}.log"));
        if dest.exists() {
            notes.push(format!("vxmeshd log of {h}: {}", dest.display()));
        }
    }
    Ok(vec![underlay, kernel, nooffload, vxmesh])
}

/// The value of a metric per path, in [`PATHS`] order.
fn row(m: &Metric, results: &[PathResult]) -> Vec<Option<f64>> {
    PATHS
        .iter()
        .map(|name| results.iter().find(|r| r.name == *name).and_then(m.get))
        .collect()
}

/// vxmesh/kernel and vxmesh/kernel-nooffload of a row.
fn ratios(m: &Metric, v: &[Option<f64>]) -> [Option<f64>; 2] {
    if !m.ratio {
        return [None, None];
    }
    [ratio(v[3], v[1]), ratio(v[3], v[2])]
}

/// The text report: header, table, notes.
/// What vxmeshd ran with, from h1's and h2's status after the last round:
/// offloads, queues, and how well it batched (means over the round).
fn vxmesh_in_effect(results: &[PathResult]) -> Option<String> {
    let vx = results.iter().find(|r| r.name == "vxmesh")?;
    let last = |h: &str| {
        let prefix = format!("{h}: vxmesh status after round ");
        vx.setup
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.parse::<u32>().ok()?, v)))
            .max_by_key(|(round, _)| *round)
            .map(|(_, v)| v["dataplane"].clone())
            .filter(|d| d.is_object())
    };
    let (h1, h2) = (last("h1")?, last("h2")?);
    let f = |d: &Value, k: &str| d[k].as_f64().unwrap_or(f64::NAN);
    Some(format!(
        "vxmesh in effect: TAP vnet header (TSO) {}, UDP GSO runs into the TAP {}, UDP GSO {}, \
         UDP GRO {}, {} lane(s), busy poll {} µs; \
         h1 (sender) read {:.1} TAP frames per wake-up and sent {:.1} datagrams per sendmsg; \
         h2 (receiver) made {:.1} underlay reads per wake-up",
        h1["tap_vnet_hdr"],
        h2["tap_uso_write"],
        h1["udp_gso"],
        h1["udp_gro"],
        h1["queues"],
        h1["busy_poll_us"],
        f(&h1, "tap_reads_per_wakeup"),
        f(&h1, "datagrams_per_send"),
        f(&h2, "underlay_reads_per_wakeup"),
    ))
}

fn table(s: &Settings, machine: &Machine, results: &[PathResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vxmesh-bench overlay: h1 -> h2, iperf3 {} s per run, {} rep(s) (median shown), \
         {} pings at 1 ms per rep, UDP offered at {}",
        s.secs, s.reps, s.pings, s.udp_rate
    );
    if let Some(bps) = rate_bps(&s.udp_rate).filter(|b| *b > 0.0) {
        let offered: Vec<String> = TESTS
            .iter()
            .filter_map(|t| t.udp_len)
            .map(|len| format!("{:.0} kpps at {len} B", bps / (f64::from(len) * 8.0) / 1e3))
            .collect();
        let _ = writeln!(
            out,
            "UDP offered: {} (a path that receives about that with little loss is not saturated)",
            offered.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "order: {} round(s), each measuring underlay, kernel, kernel-nooffload, vxmesh in turn",
        s.reps
    );
    let _ = writeln!(
        out,
        "machine: nproc {}, kernel {} ({}), {}, load avg {} at start, {} at end{}",
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        machine.iperf3,
        machine.loadavg_start,
        machine.loadavg_end,
        machine
            .git
            .as_ref()
            .map_or(String::new(), |g| format!(", build {g}")),
    );
    let _ = writeln!(out);
    let mut headers: Vec<String> = vec!["".into()];
    headers.extend(PATHS.iter().map(|p| p.to_string()));
    headers.push("vxmesh/kernel".into());
    headers.push("vxmesh/kernel-nooffload".into());
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in &METRICS {
        let v = row(m, results);
        let fmt = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
        let mut cells = vec![m.label.to_string()];
        cells.extend(v.iter().map(|x| fmt(*x, m.decimals)));
        cells.extend(ratios(m, &v).iter().map(|x| fmt(*x, 3)));
        rows.push(cells);
    }
    out += &format_table(&headers, &rows);
    if let Some(line) = vxmesh_in_effect(results) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Ratios divide the vxmesh figure by the kernel's (Gbit/s and kpps: higher is better for \
         vxmesh; RTT and CPU: lower is better).\nMachine CPU is every core's busy time while the \
         TCP client ran (iperf3, kernel, daemons and anything else running), per Gbit received."
    );
    let failures: Vec<String> = results.iter().flat_map(PathResult::failures).collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFAILURES ({}):", failures.len());
        for f in failures {
            let _ = writeln!(out, "  {}", f.lines().next().unwrap_or(""));
        }
    }
    out
}

/// The summary (medians and ratios) as JSON.
fn summary(results: &[PathResult]) -> Value {
    let mut map = serde_json::Map::new();
    for m in &METRICS {
        let v = row(m, results);
        let mut e = serde_json::Map::new();
        for (p, x) in PATHS.iter().zip(&v) {
            e.insert((*p).into(), json!(x));
        }
        let [k, kn] = ratios(m, &v);
        e.insert("vxmesh/kernel".into(), json!(k));
        e.insert("vxmesh/kernel-nooffload".into(), json!(kn));
        map.insert(m.key.into(), Value::Object(e));
    }
    Value::Object(map)
}

/// The chart's panels: TCP Gbit/s, UDP received kpps and ping p50 per path.
fn panels(results: &[PathResult]) -> Vec<Panel> {
    let by_key = |k: &str| {
        METRICS
            .iter()
            .find(|m| m.key == k)
            .map(|m| row(m, results))
            .unwrap_or_default()
    };
    let panel = |title: &str, series: [(&str, &str); 2]| {
        let rows: Vec<Vec<Option<f64>>> = series.iter().map(|(_, k)| by_key(k)).collect();
        Panel {
            title: title.into(),
            series: series.iter().map(|(n, _)| n.to_string()).collect(),
            groups: PATHS
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), rows.iter().map(|r| r[i]).collect()))
                .collect(),
        }
    };
    let mut out = vec![
        panel(
            "TCP throughput h1 -> h2, Gbit/s",
            [("1 stream", "tcp1_gbit_per_s"), ("-P 2", "tcp2_gbit_per_s")],
        ),
        panel(
            "UDP received h1 -> h2, kpps",
            [("64 B", "udp64_rx_kpps"), ("1400 B", "udp1400_rx_kpps")],
        ),
        panel(
            "ping RTT p50 h1 -> h2, µs (lower is better)",
            [
                ("as configured", "ping_p50_us"),
                ("vxmesh busy-polling", "ping_p50_busy_poll_us"),
            ],
        ),
    ];
    out.extend(cpu_panel(results));
    out
}

/// Where the machine's CPU went during the profiled TCP 1 stream runs, on
/// the kernel's vxlan and on vxmesh; `None` when neither was profiled.
fn cpu_panel(results: &[PathResult]) -> Option<Panel> {
    let tcp = |name: &str| {
        let r = results.iter().find(|r| r.name == name)?;
        r.profile
            .as_ref()?
            .cpu
            .iter()
            .find(|c| c.run == "TCP 1 stream")
    };
    let (kernel, vxmesh) = (tcp("kernel"), tcp("vxmesh"));
    if kernel.is_none() && vxmesh.is_none() {
        return None;
    }
    // (label, which list, entries summed).
    const BARS: [(&str, bool, &[&str]); 5] = [
        ("iperf3", false, &[kind::IPERF3]),
        ("vxmeshd copy", true, &[kind::KERNEL_COPIES]),
        ("vxmeshd kern", true, &[kind::KERNEL_REST]),
        (
            "vxmeshd user",
            true,
            &[kind::OWN_CODE, kind::LIBC_COPIES, kind::OTHER_USER],
        ),
        ("idle", false, &[kind::IDLE]),
    ];
    let value = |c: Option<&CpuProfile>, work: bool, keys: &[&str]| {
        let c = c?;
        let list = if work { &c.vxmeshd } else { &c.by_program };
        if list.is_empty() {
            // No vxmeshd on this path: no bar rather than a zero.
            return None;
        }
        // fold, not sum: an empty f64 sum is -0.0.
        Some(
            list.iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .fold(0.0, |t, (_, v)| t + v),
        )
    };
    Some(Panel {
        title: "CPU in TCP 1 stream (perf), % of the machine".into(),
        series: vec!["kernel vxlan".into(), "vxmesh".into()],
        groups: BARS
            .iter()
            .map(|(label, work, keys)| {
                (
                    label.to_string(),
                    vec![value(kernel, *work, keys), value(vxmesh, *work, keys)],
                )
            })
            .collect(),
    })
}

/// A text legend for a chart drawn without fonts.
fn legend(panels: &[Panel]) -> String {
    let mut s = String::from(
        "overlay.png was drawn without text (no TrueType font found; set VXMESH_BENCH_FONT).\n",
    );
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(s, "panel {} (rows of two): {}", i + 1, p.title);
        let _ = writeln!(
            s,
            "  groups left to right: {}",
            p.groups
                .iter()
                .map(|(g, _)| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (j, name) in p.series.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {} bars: {name}",
                chart::COLOR_NAMES[j % chart::COLOR_NAMES.len()]
            );
        }
    }
    s
}

/// `vxmesh-bench overlay`.
pub fn run_overlay(args: OverlayArgs) -> anyhow::Result<()> {
    if !require_root() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let mut s = Settings::from_args(&args);
    let mut notes = Vec::new();
    if s.profile && !profile::available() {
        s.profile = false;
        notes.push("perf not found: no profiles (apt-get install linux-perf)".to_string());
    }
    // Panics with a clear message when missing, before any namespace exists.
    let vxmeshd = workspace_bin("vxmeshd");
    let clk_tck = crate::cpu::clock_ticks()?;
    std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    let mut machine = Machine::probe();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "vxmesh-bench overlay: {} s runs, {} rep(s), {} pings; about {} min; vxmeshd {}",
        s.secs,
        s.reps,
        s.pings,
        s.estimate().as_secs().div_ceil(60),
        vxmeshd.display()
    );
    let t0 = Instant::now();
    let results = measure_all(&s, clk_tck, &vxmeshd, &mut notes)?;
    machine.loadavg_end = loadavg();
    let elapsed = t0.elapsed();

    let text = table(&s, &machine, &results);
    println!("{text}");
    let txt = s.out.join("overlay.txt");
    std::fs::write(&txt, &text).with_context(|| format!("writing {}", txt.display()))?;

    let profiled: Vec<(&str, &PathProfile)> = results
        .iter()
        .filter_map(|r| r.profile.as_ref().map(|p| (r.name, p)))
        .collect();
    if !profiled.is_empty() {
        let pp = s.out.join("overlay-profile.txt");
        std::fs::write(&pp, profile::render(&profiled))
            .with_context(|| format!("writing {}", pp.display()))?;
        notes.push(format!("profiles: {}", pp.display()));
    }

    let panels = panels(&results);
    let png = s.out.join("overlay.png");
    let font = chart::load_font();
    chart::draw_grid(&png, &panels, 2, (1300, 1000), font.is_some())?;
    if font.is_none() {
        let lp = s.out.join("overlay-legend.txt");
        std::fs::write(&lp, legend(&panels))
            .with_context(|| format!("writing {}", lp.display()))?;
        notes.push(format!(
            "no font found: chart without text, legend in {}",
            lp.display()
        ));
    }

    let report = json!({
        "bench": "overlay",
        "started_unix": started,
        "elapsed_s": elapsed.as_secs_f64(),
        "machine": machine,
        "settings": s,
        "clk_tck": clk_tck,
        "summary": summary(&results),
        "paths": results,
        "notes": notes,
    });
    let jp = s.out.join("overlay.json");
    let body = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(&jp, body).with_context(|| format!("writing {}", jp.display()))?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    eprintln!(
        "wrote {}, {} and {} in {:.0} s",
        txt.display(),
        jp.display(),
        png.display(),
        elapsed.as_secs_f64()
    );
    let broken: Vec<&str> = results
        .iter()
        .filter(|r| r.no_data())
        .map(|r| r.name)
        .collect();
    if !broken.is_empty() {
        bail!("no figure at all for: {}", broken.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(quick: bool) -> OverlayArgs {
        OverlayArgs {
            secs: None,
            reps: None,
            pings: None,
            udp_rate: "2G".into(),
            out: "x".into(),
            quick,
            queues: None,
            busy_poll_us: None,
            no_profile: false,
        }
    }

    #[test]
    fn queues_reach_the_cluster_file_only_when_given() {
        let s = Settings::from_args(&args(true));
        assert_eq!(s.cluster(), CLUSTER);
        let mut a = args(true);
        a.queues = Some(1);
        let c = Settings::from_args(&a).cluster();
        assert!(c.contains("underlay_mtu = 1500\nqueues = 1\n"), "{c}");
    }

    #[test]
    fn rates() {
        assert_eq!(rate_bps("2G"), Some(2e9));
        assert_eq!(rate_bps("500m"), Some(5e8));
        assert_eq!(rate_bps("1000"), Some(1000.0));
        assert_eq!(rate_bps("fast"), None);
    }

    #[test]
    fn quick_and_explicit_settings() {
        let s = Settings::from_args(&args(false));
        assert_eq!((s.secs, s.reps, s.pings), (10, 3, 1000));
        let s = Settings::from_args(&args(true));
        assert_eq!((s.secs, s.reps, s.pings), (2, 1, 200));
        let a = OverlayArgs {
            secs: Some(5),
            ..args(true)
        };
        assert_eq!(Settings::from_args(&a).secs, 5);
    }

    #[test]
    fn cluster_file_has_two_nodes_on_the_bench_addresses() {
        let count = |h: &str| CLUSTER.lines().filter(|l| l.trim() == h).count();
        assert_eq!(count("[[nodes]]"), 2);
        assert_eq!(count("[[endpoints]]"), 2);
        assert!(CLUSTER.contains("198.18.0.1") && CLUSTER.contains("198.18.0.2"));
        assert!(CLUSTER.contains("vni = 4096") && CLUSTER.contains("10.0.9.0/24"));
        assert!(!CLUSTER.contains("name = \"h3\""));
    }

    fn outcome(gbit: f64, pps: Option<f64>) -> Outcome {
        Outcome {
            figures: iperf::Figures {
                bytes: (gbit * 1e9 / 8.0 * 10.0) as u64,
                seconds: 10.0,
                gbit_per_s: gbit,
                packets: pps.map(|p| (p * 10.0) as u64),
                lost_packets: pps.map(|_| 0),
                lost_percent: pps.map(|_| 0.0),
                rx_pps: pps,
            },
            wall_s: 10.0,
            host_cpu_s: 10.0,
            watched_cpu_s: None,
            iperf3_end: Value::Null,
        }
    }

    fn path(name: &'static str, gbit: [f64; 3]) -> PathResult {
        let mut p = PathResult::new(name, OV[1], "2G", 10);
        p.tests[0] = TestResult {
            key: "tcp1",
            mode: Mode::Tcp { parallel: 1 },
            secs: 10,
            reps: gbit
                .iter()
                .enumerate()
                .map(|(i, g)| Rep {
                    rep: i as u32 + 1,
                    error: None,
                    outcome: Some(outcome(*g, None)),
                })
                .chain(std::iter::once(Rep {
                    rep: 4,
                    error: Some("timeout".into()),
                    outcome: None,
                }))
                .collect(),
        };
        p
    }

    #[test]
    fn the_cpu_panel_comes_from_the_tcp_profiles() {
        let mut results = vec![path("kernel", [1.0; 3]), path("vxmesh", [1.0; 3])];
        assert_eq!(panels(&results).len(), 3, "no profile, no panel");
        let report = " 30.00% |iperf3 |[kernel.kallsyms] |[k] _copy_from_iter
 20.00% |swapper |[kernel.kallsyms] |[k] pv_native_safe_halt
 10.00% |vxm-lane-0 |[kernel.kallsyms] |[k] _copy_to_iter
 15.00% |vxm-lane-1 |[kernel.kallsyms] |[k] udp_sendmsg
 5.00% |vxm-lane-1 |vxmeshd |[.] lane_loop
 4.00% |vxm-lane-1 |libc.so.6 |[.] __memmove_avx512_unaligned_erms
";
        results[1].profile = Some(PathProfile {
            cpu: vec![CpuProfile::from_report("TCP 1 stream", "x".into(), report)],
            ..Default::default()
        });
        let p = panels(&results).pop().unwrap();
        assert!(p.title.starts_with("CPU in TCP 1 stream"));
        let got: Vec<(&str, Option<f64>)> =
            p.groups.iter().map(|(g, v)| (g.as_str(), v[1])).collect();
        assert_eq!(
            got,
            vec![
                ("iperf3", Some(30.0)),
                ("vxmeshd copy", Some(10.0)),
                ("vxmeshd kern", Some(15.0)),
                ("vxmeshd user", Some(9.0)),
                ("idle", Some(20.0)),
            ]
        );
        assert!(
            p.groups.iter().all(|(_, v)| v[0].is_none()),
            "kernel not profiled"
        );
    }

    #[test]
    fn medians_ratios_and_table() {
        let results = vec![
            path("underlay", [20.0, 22.0, 21.0]),
            path("kernel", [16.0, 17.0, 18.0]),
            path("kernel-nooffload", [3.0, 3.2, 3.4]),
            path("vxmesh", [0.8, 0.9, 0.85]),
        ];
        let sum = summary(&results);
        let t = &sum["tcp1_gbit_per_s"];
        assert_eq!(t["kernel"], json!(17.0));
        assert!((t["vxmesh/kernel"].as_f64().unwrap() - 0.85 / 17.0).abs() < 1e-12);
        assert!((t["vxmesh/kernel-nooffload"].as_f64().unwrap() - 0.85 / 3.2).abs() < 1e-12);
        assert_eq!(sum["udp64_loss_percent"]["vxmesh/kernel"], Value::Null);
        let machine = Machine::probe();
        let text = table(&Settings::from_args(&args(true)), &machine, &results);
        assert!(text.contains("TCP 1 stream, Gbit/s"), "{text}");
        assert!(text.contains("0.050"), "{text}");
        assert!(text.contains("FAILURES (4)"), "{text}");
        let p = panels(&results);
        assert_eq!(
            p[0].groups[3],
            ("vxmesh".to_string(), vec![Some(0.85), None])
        );
        assert!(legend(&p).contains("orange bars: -P 2"));
        // The report serialises.
        serde_json::to_string(&results).unwrap();
    }
}
