//! The results model of `encryption`: what a path measured, what was in
//! effect, the metrics of the table and the goals they are judged by.

use super::*;

/// Everything measured on one path.
#[derive(Debug, Serialize)]
pub struct PathResult {
    /// One of [`PATHS`].
    pub name: &'static str,
    /// The address h1 sent to (h2's, on that path).
    pub dst: Ipv4Addr,
    /// The path's inner MTU (the TAP's, or the WireGuard device's).
    pub mtu: Option<u32>,
    /// Whose CPU `watched_cpu_s` is: both hosts' `vxmeshd` or both hosts'
    /// `wireguard-go`.
    pub watched: &'static str,
    /// Rounds in which the path could not be measured (setup or
    /// reachability), with the reason.
    pub errors: Vec<String>,
    /// How the path was set up: commands' outputs worth keeping.
    pub setup: serde_json::Map<String, Value>,
    /// Latency pings.
    pub ping: Vec<PingRep>,
    /// iperf3 TCP, 1 stream.
    pub tcp1: Vec<Rep>,
    /// iperf3 TCP, -P 2.
    pub tcp2: Vec<Rep>,
    /// iperf3 UDP, 64 B datagrams at the offered rate.
    pub udp64: Vec<Rep>,
}

impl PathResult {
    pub(crate) fn new(name: &'static str, dst: Ipv4Addr, watched: &'static str) -> PathResult {
        PathResult {
            name,
            dst,
            mtu: None,
            watched,
            errors: Vec::new(),
            setup: serde_json::Map::new(),
            ping: Vec::new(),
            tcp1: Vec::new(),
            tcp2: Vec::new(),
            udp64: Vec::new(),
        }
    }

    /// Records that the path could not be measured in `round`.
    pub(crate) fn fail(&mut self, round: u32, error: String) {
        eprintln!("[{}] round {round}: {error}", self.name);
        self.errors.push(format!("round {round}: {error}"));
    }

    /// The iperf3 runs of a round, in order: (key, label, what to send,
    /// where the repetitions go).
    pub(crate) fn runs(
        &mut self,
        s: &Settings,
    ) -> [(&'static str, &'static str, Mode, &mut Vec<Rep>); 3] {
        [
            (
                "tcp1",
                "TCP 1 stream",
                Mode::Tcp { parallel: 1 },
                &mut self.tcp1,
            ),
            (
                "tcp2",
                "TCP -P 2",
                Mode::Tcp { parallel: 2 },
                &mut self.tcp2,
            ),
            ("udp64", "UDP 64 B", s.udp_mode(), &mut self.udp64),
        ]
    }

    /// Every repetition of every iperf3 run, with the run's key.
    fn all_reps(&self) -> impl Iterator<Item = (&'static str, &Rep)> {
        let tcp1 = self.tcp1.iter().map(|r| ("tcp1", r));
        let tcp2 = self.tcp2.iter().map(|r| ("tcp2", r));
        tcp1.chain(tcp2)
            .chain(self.udp64.iter().map(|r| ("udp64", r)))
    }

    /// True when not a single run of the path succeeded.
    pub(crate) fn no_data(&self) -> bool {
        self.ping.iter().all(|p| p.error.is_some())
            && self.all_reps().all(|(_, r)| r.outcome.is_none())
    }

    /// Every failed repetition, as text.
    pub(crate) fn failures(&self) -> Vec<String> {
        let name = self.name;
        let setup = self.errors.iter().map(|e| format!("{name} {e}"));
        let pings = self.ping.iter().filter_map(|p| {
            let e = p.error.as_ref()?;
            Some(format!("{name} ping rep {}: {e}", p.rep))
        });
        let runs = self.all_reps().filter_map(|(key, r)| {
            let e = r.error.as_ref()?;
            Some(format!("{name} {key} rep {}: {e}", r.rep))
        });
        setup.chain(pings).chain(runs).collect()
    }
}

/// What the paths ran with, for the "in effect" line.
#[derive(Debug, Default, Serialize)]
pub struct InEffect {
    /// The cipher of h1's session with h2 (`vxmesh status`:
    /// `encryption.peers[].cipher`).
    pub cipher: Option<String>,
    /// Each host's sessions after the last round: `<host> -> <peer>:
    /// <state> <cipher>`.
    pub sessions: Vec<String>,
    /// h1's `dataplane` section of `vxmesh status` (offloads, lanes,
    /// batching).
    pub vxmesh_dataplane: Value,
    /// `ethtool -k` of h1's TAP of the encrypted network.
    pub tap_offloads: Option<String>,
    /// `ethtool -k` of h1's WireGuard device.
    pub wireguard_offloads: Option<String>,
    /// `wireguard-go --version` and `wg --version`, first lines.
    pub tools: Vec<String>,
}

/// What `measure_all` hands back: the paths and what was in effect.
#[derive(Debug)]
pub struct Run {
    /// The paths, in [`PATHS`] order.
    pub paths: Vec<PathResult>,
    /// What they ran with.
    pub in_effect: InEffect,
}

/// A goal from the issue, on a ratio: at least or at most `bound`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Goal {
    /// The ratio must be at least `bound` (higher is better), else at most.
    pub at_least: bool,
    /// The bound.
    pub bound: f64,
}

impl Goal {
    pub(crate) const fn at_least(bound: f64) -> Option<Goal> {
        Some(Goal {
            at_least: true,
            bound,
        })
    }

    pub(crate) const fn at_most(bound: f64) -> Option<Goal> {
        Some(Goal {
            at_least: false,
            bound,
        })
    }

    /// Whether `ratio` meets the goal.
    pub fn met(&self, ratio: f64) -> bool {
        if self.at_least {
            ratio >= self.bound
        } else {
            ratio <= self.bound
        }
    }

    /// `>= 0.7` or `<= 1.2`.
    pub fn want(&self) -> String {
        let op = if self.at_least { ">=" } else { "<=" };
        format!("{op} {:.1}", self.bound)
    }
}

/// One row of the table.
pub(crate) struct Metric {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) decimals: usize,
    /// Whether the ratios mean something for this row.
    pub(crate) ratio: bool,
    /// The goals on encrypted/plain and on encrypted/wireguard-go.
    pub(crate) goals: [Option<Goal>; 2],
    pub(crate) get: fn(&PathResult) -> Option<f64>,
}

/// A row with ratios: `key`, `label` (`decimals` shown), its `goals`, and
/// how the figure is taken from a path.
const fn metric(
    (key, label, decimals): (&'static str, &'static str, usize),
    goals: [Option<Goal>; 2],
    get: fn(&PathResult) -> Option<f64>,
) -> Metric {
    Metric {
        key,
        label,
        decimals,
        ratio: true,
        goals,
        get,
    }
}

/// The goals for throughput: at least 0.7 of plain vxmesh, at
/// least as much as wireguard-go.
const TCP_GOALS: [Option<Goal>; 2] = [Goal::at_least(0.7), Goal::at_least(1.0)];
/// No goal.
const NONE: [Option<Goal>; 2] = [None, None];

fn tcp1(p: &PathResult) -> Option<f64> {
    rep_median(&p.tcp1, |o| Some(o.figures.gbit_per_s))
}

fn tcp2(p: &PathResult) -> Option<f64> {
    rep_median(&p.tcp2, |o| Some(o.figures.gbit_per_s))
}

fn udp64_pps(p: &PathResult) -> Option<f64> {
    rep_median(&p.udp64, |o| o.figures.rx_pps)
}

fn ping_ms(p: &PathResult, f: fn(&PingRep) -> Option<f64>) -> Option<f64> {
    ping_median(&p.ping, f).map(|us| us / 1e3)
}

/// Machine CPU per Gbit/s in the TCP 1 stream runs.
fn machine_per_gbit(p: &PathResult) -> Option<f64> {
    rep_median(&p.tcp1, |o| Some(o.host_cpu_s / gbits(o)))
}

/// CPU of the watched processes per Gbit/s in the TCP 1 stream runs.
fn watched_per_gbit(p: &PathResult) -> Option<f64> {
    rep_median(&p.tcp1, |o| o.watched_cpu_s.map(|c| c / gbits(o)))
}

/// The table's rows. The goals are the issue's: encrypted TCP at least 0.7
/// of plain vxmesh, ping p50 at most 1.2 of plain vxmesh, and at least as
/// good as the userspace WireGuard reference (higher throughput and packet
/// rate, lower latency).
pub(crate) const METRICS: [Metric; 8] = [
    metric(
        ("tcp1_gbit_per_s", "TCP 1 stream, Gbit/s", 2),
        TCP_GOALS,
        tcp1,
    ),
    metric(("tcp2_gbit_per_s", "TCP -P 2, Gbit/s", 2), TCP_GOALS, tcp2),
    metric(
        ("udp64_rx_pps", "UDP 64 B received, pps", 0),
        [None, Goal::at_least(1.0)],
        udp64_pps,
    ),
    Metric {
        ratio: false,
        ..metric(("udp64_loss_percent", "UDP 64 B loss, %", 2), NONE, |p| {
            rep_median(&p.udp64, |o| o.figures.lost_percent)
        })
    },
    metric(
        ("ping_p50_ms", "ping p50, ms", 3),
        [Goal::at_most(1.2), Goal::at_most(1.0)],
        |p| ping_ms(p, |r| r.p50_us),
    ),
    metric(("ping_p99_ms", "ping p99, ms", 3), NONE, |p| {
        ping_ms(p, |r| r.p99_us)
    }),
    metric(
        (
            "tcp1_machine_cpu_per_gbit_per_s",
            "machine CPU per Gbit/s (TCP 1), cores",
            3,
        ),
        NONE,
        machine_per_gbit,
    ),
    metric(
        (
            "tcp1_tunnel_cpu_per_gbit_per_s",
            "vxmeshd / wireguard-go CPU per Gbit/s (TCP 1), cores",
            3,
        ),
        NONE,
        watched_per_gbit,
    ),
];
