//! The results model of `overlay`: the tests each path runs, what a
//! repetition and a path measured, and the metrics of the table.

use super::*;

/// One kind of iperf3 run.
pub(crate) struct TestSpec {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) udp_len: Option<u32>,
    pub(crate) parallel: u32,
    /// Offered at the rate the kernel's vxlan received in the same round's
    /// `udp64` run, instead of the flood rate: the loss a path shows at a
    /// rate the kernel carries. Run on the kernel and vxmesh paths only.
    pub(crate) paced: bool,
}

/// The iperf3 runs made on each path, in order.
pub(crate) const TESTS: [TestSpec; 5] = [
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
    pub(crate) fn mode(&self, rate: &str) -> Mode {
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
    pub(crate) fn new(name: &'static str, dst: Ipv4Addr, udp_rate: &str, secs: u32) -> PathResult {
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
    pub(crate) fn fail(&mut self, round: u32, error: String) {
        eprintln!("[{}] round {round}: {error}", self.name);
        self.errors.push(format!("round {round}: {error}"));
    }

    /// True when not a single run of the path succeeded.
    pub(crate) fn no_data(&self) -> bool {
        self.ping.iter().all(|p| p.error.is_some())
            && self
                .tests
                .iter()
                .all(|t| t.reps.iter().all(|r| r.outcome.is_none()))
    }

    /// Median over the successful repetitions of run `key` of `f`.
    pub(crate) fn med(&self, key: &str, f: impl Fn(&Outcome) -> Option<f64>) -> Option<f64> {
        let t = self.tests.iter().find(|t| t.key == key)?;
        rep_median(&t.reps, f)
    }

    /// Median over the ping repetitions of `f`.
    pub(crate) fn ping_med(&self, f: impl Fn(&PingRep) -> Option<f64>) -> Option<f64> {
        ping_median(&self.ping, f)
    }

    /// Every failed repetition, as text.
    pub(crate) fn failures(&self) -> Vec<String> {
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

/// One row of the table.
pub(crate) struct Metric {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) decimals: usize,
    /// Whether vxmesh/kernel means something for this row.
    pub(crate) ratio: bool,
    pub(crate) get: fn(&PathResult) -> Option<f64>,
}

pub(crate) const METRICS: [Metric; 16] = [
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
