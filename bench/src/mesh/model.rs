//! The results model of `mesh`: the tests each system runs, wrk's
//! figures, what a repetition and a system measured, and the metrics of
//! the table.

use super::*;

/// One kind of run.
pub(crate) struct TestSpec {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
}

/// The runs made on each system, in order.
pub(crate) const TESTS: [TestSpec; 4] = [
    TestSpec {
        key: "iperf",
        label: "iperf3 TCP 1 stream",
    },
    TestSpec {
        key: "conn",
        label: "new connections (Connection: close, 1 KiB)",
    },
    TestSpec {
        key: "ka1k",
        label: "keep-alive 1 KiB",
    },
    TestSpec {
        key: "ka1m",
        label: "keep-alive 1 MiB",
    },
];

/// What wrk reported (through [`WRK_LUA`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrkFigures {
    /// Responses completed.
    pub requests: u64,
    /// Bytes read (heads and bodies).
    pub bytes: u64,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// requests / duration.
    pub req_per_s: f64,
    /// bytes / duration / 10^6.
    pub mb_per_s: f64,
    /// Socket errors: connect, read, write, timeout; and non-2xx answers.
    pub errors: WrkErrors,
    /// Median latency, µs.
    pub lat_p50_us: f64,
    /// 99th percentile latency, µs.
    pub lat_p99_us: f64,
}

/// wrk's error counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrkErrors {
    /// Failed connects.
    pub connect: u64,
    /// Failed reads.
    pub read: u64,
    /// Failed writes.
    pub write: u64,
    /// Responses with a status other than 2xx/3xx.
    pub status: u64,
    /// Requests that timed out.
    pub timeout: u64,
}

impl WrkErrors {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

/// Parses wrk's output: the `WRKJSON ` line [`WRK_LUA`] prints.
pub fn parse_wrk(stdout: &str) -> Result<WrkFigures, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .ok_or("no WRKJSON line in wrk's output")?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("WRKJSON: {e}: {line}"))?;
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("no numeric `{k}` in {line}"))
    };
    let duration_s = num("duration_us")? / 1e6;
    if duration_s <= 0.0 {
        return Err(format!("a run of {duration_s} s"));
    }
    let (requests, bytes) = (num("requests")?, num("bytes")?);
    Ok(WrkFigures {
        requests: requests as u64,
        bytes: bytes as u64,
        duration_s,
        req_per_s: requests / duration_s,
        mb_per_s: bytes / duration_s / 1e6,
        errors: WrkErrors {
            connect: num("connect")? as u64,
            read: num("read")? as u64,
            write: num("write")? as u64,
            status: num("status")? as u64,
            timeout: num("timeout")? as u64,
        },
        lat_p50_us: num("lat_p50_us")?,
        lat_p99_us: num("lat_p99_us")?,
    })
}

/// One repetition of a run.
#[derive(Debug, Serialize)]
pub struct Rep {
    /// 1-based repetition number.
    pub rep: u32,
    /// The error, when the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run's figure: Gbit/s (iperf), requests/s (conn, ka1k), MB/s
    /// (ka1m).
    pub value: Option<f64>,
    /// Wall time of the client, seconds.
    pub wall_s: f64,
    /// CPU seconds the whole machine was busy (all cores) meanwhile.
    pub host_cpu_s: f64,
    /// CPU seconds of the balancer's processes (HAProxy, or the three
    /// vxmeshd) meanwhile; none for direct and nft (kernel softirq).
    pub balancer_cpu_s: Option<f64>,
    /// The tool's own figures: iperf3's outcome or wrk's totals.
    pub detail: Value,
}

/// All repetitions of one kind of run on one system.
#[derive(Debug, Serialize)]
pub struct TestResult {
    /// `iperf`, `conn`, `ka1k` or `ka1m`.
    pub key: &'static str,
    /// The repetitions.
    pub reps: Vec<Rep>,
}

/// Everything measured on one system.
#[derive(Debug, Serialize)]
pub struct SystemResult {
    /// One of [`SYSTEMS`].
    pub name: &'static str,
    /// Where the client connects: HTTP and iperf3.
    pub http: SocketAddr,
    /// iperf3's address.
    pub iperf: SocketAddr,
    /// Rounds in which the system could not be measured, with the reason.
    pub errors: Vec<String>,
    /// How it was set up, and what it said about itself.
    pub setup: serde_json::Map<String, Value>,
    /// The runs.
    pub tests: Vec<TestResult>,
    /// Where the machine's time went in extra, profiled runs of the last
    /// round (systems in [`PROFILED`] only; see [`crate::profile`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::PathProfile>,
}

impl SystemResult {
    pub(crate) fn new(name: &'static str, addr: Ipv4Addr, http: u16, iperf: u16) -> SystemResult {
        SystemResult {
            name,
            http: SocketAddr::new(addr.into(), http),
            iperf: SocketAddr::new(addr.into(), iperf),
            errors: Vec::new(),
            setup: serde_json::Map::new(),
            profile: None,
            tests: TESTS
                .iter()
                .map(|t| TestResult {
                    key: t.key,
                    reps: Vec::new(),
                })
                .collect(),
        }
    }

    pub(crate) fn fail(&mut self, round: u32, error: String) {
        eprintln!("[{}] round {round}: {error}", self.name);
        self.errors.push(format!("round {round}: {error}"));
    }

    pub(crate) fn no_data(&self) -> bool {
        self.tests
            .iter()
            .all(|t| t.reps.iter().all(|r| r.value.is_none()))
    }

    /// Median over the successful repetitions of run `key` of `f`.
    pub(crate) fn med(&self, key: &str, f: impl Fn(&Rep) -> Option<f64>) -> Option<f64> {
        let t = self.tests.iter().find(|t| t.key == key)?;
        median(t.reps.iter().filter(|r| r.value.is_some()).filter_map(f))
    }

    pub(crate) fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{} {e}", self.name))
            .collect();
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

/// A goal the mesh as deployed ([`DEPLOYED`]) is held to (issue 20): at
/// least `min` × the `of` system.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    pub(crate) of: &'static str,
    pub(crate) min: f64,
}

/// One row of the table.
pub(crate) struct Metric {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) decimals: usize,
    /// Whether the vxmesh/baseline ratios mean something for this row.
    pub(crate) ratio: bool,
    /// What [`DEPLOYED`] is held to on this row.
    pub(crate) goal: Option<Goal>,
    pub(crate) get: fn(&SystemResult) -> Option<f64>,
}

/// Percent of the whole machine (every core) busy during a run.
pub(crate) fn busy_percent(r: &Rep) -> Option<f64> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (r.wall_s > 0.0).then(|| 100.0 * r.host_cpu_s / r.wall_s / n)
}

/// Percent of one core the balancer used during a run.
pub(crate) fn balancer_percent(r: &Rep) -> Option<f64> {
    r.balancer_cpu_s
        .filter(|_| r.wall_s > 0.0)
        .map(|c| 100.0 * c / r.wall_s)
}

pub(crate) const METRICS: [Metric; 12] = [
    Metric {
        key: "iperf_gbit_per_s",
        label: "iperf3 TCP 1 stream, Gbit/s",
        decimals: 2,
        ratio: true,
        goal: Some(Goal {
            of: "nft-overlay",
            min: 1.0,
        }),
        get: |s| s.med("iperf", |r| r.value),
    },
    Metric {
        key: "new_conn_per_s",
        label: "new conn/s (close, 1 KiB)",
        decimals: 0,
        ratio: true,
        goal: Some(Goal {
            of: "haproxy",
            min: 1.2,
        }),
        get: |s| s.med("conn", |r| r.value),
    },
    Metric {
        key: "keepalive_1k_req_per_s",
        label: "keep-alive req/s (1 KiB)",
        decimals: 0,
        ratio: true,
        goal: None,
        get: |s| s.med("ka1k", |r| r.value),
    },
    Metric {
        key: "keepalive_1m_mb_per_s",
        label: "keep-alive MB/s (1 MiB)",
        decimals: 0,
        ratio: true,
        goal: Some(Goal {
            of: "nft-overlay",
            min: 1.0,
        }),
        get: |s| s.med("ka1m", |r| r.value),
    },
    Metric {
        key: "iperf_machine_busy_percent",
        label: "machine busy %, iperf3",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("iperf", busy_percent),
    },
    Metric {
        key: "conn_machine_busy_percent",
        label: "machine busy %, new conn",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("conn", busy_percent),
    },
    Metric {
        key: "ka1k_machine_busy_percent",
        label: "machine busy %, keep-alive 1 KiB",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("ka1k", busy_percent),
    },
    Metric {
        key: "ka1m_machine_busy_percent",
        label: "machine busy %, keep-alive 1 MiB",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("ka1m", busy_percent),
    },
    Metric {
        key: "iperf_balancer_cpu_percent",
        label: "balancer CPU % of a core, iperf3",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("iperf", balancer_percent),
    },
    Metric {
        key: "conn_balancer_cpu_percent",
        label: "balancer CPU % of a core, new conn",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("conn", balancer_percent),
    },
    Metric {
        key: "ka1k_balancer_cpu_percent",
        label: "balancer CPU % of a core, ka 1 KiB",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("ka1k", balancer_percent),
    },
    Metric {
        key: "ka1m_balancer_cpu_percent",
        label: "balancer CPU % of a core, ka 1 MiB",
        decimals: 0,
        ratio: false,
        goal: None,
        get: |s| s.med("ka1m", balancer_percent),
    },
];
