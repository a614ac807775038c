//! `vxmesh-bench mesh`: the routing mesh against the load balancers it
//! replaces, all measured in one run on one testbed so that the ratios
//! compare figures taken under the same conditions.
//!
//! Shape: hosts h1, h2, h3 on the bridge (`198.18.0.1-3/24`, MTU 1500) and a
//! client namespace `cl` on it too (`198.18.0.100/24`). The tasks run on h2
//! and h3: `vxmesh-bench-backend` (HTTP/1.1 keep-alive, 1 KiB and 1 MiB
//! bodies) on port [`HTTP_TASK`] of every address, and for each iperf3 run a
//! one-off `iperf3 -s -1` on port [`IPERF_TASK`]. The client goes to h1's
//! published ports ([`HTTP_PUB`], [`IPERF_PUB`]) and h1 passes the
//! connection on to a task, by each of these systems in turn:
//!
//! - `direct`: no balancer, the client straight to the task on h2 (the
//!   limit);
//! - `nft`: nftables DNAT in h1 (`numgen random` for HTTP, `jhash ip saddr`
//!   for iperf3, so its two connections meet one server) with masquerade,
//!   `ip_forward=1` in h1 while it runs;
//! - `haproxy`, `haproxy-splice`: HAProxy `mode tcp` in h1 (`roundrobin` for
//!   HTTP, `balance source` for iperf3), without and with `option
//!   splice-auto`;
//! - `vxmesh-underlay`: vxmeshd on h1..h3 with two services (`web`,
//!   round-robin; `iperf`, maglev: client-address affinity) whose tasks are
//!   h2's and h3's overlay addresses, with host routes in h1 that send those
//!   two addresses over the underlay (`10.0.9.2/32 via 198.18.0.2`): the mesh
//!   proxy relays exactly as HAProxy does, like for like;
//! - `vxmesh-overlay`: the same daemons without the routes, the mesh
//!   proxy's upstream going through h1's TAP, VXLAN, and the task host's
//!   TAP: the full path as the mesh is meant to run.
//!
//! Each system gets, per round, a warm-up iperf3 run (HAProxy's splice-auto
//! takes seconds to engage) and then: iperf3 TCP 1 stream, new connections
//! per second (`wrk` with `Connection: close`, 1 KiB body), keep-alive
//! requests per second (1 KiB) and keep-alive MB/s (1 MiB), the machine's
//! CPU and the balancer's CPU sampled around each run.
//!
//! Everything is bounded in time (`iperf3 -t`, `wrk -d`, a hard timeout on
//! every command) and belongs to the [`Testbed`], which removes namespaces
//! and processes when it drops, also on error: failures propagate with `?`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use vxmesh_netns::{require_root, workspace_bin, Proc, Testbed};

use crate::chart::{self, Panel};
use crate::cpu::Snapshot;
use crate::iperf::{self, Mode};
use crate::report::{append_log, command_line, format_table, loadavg, Machine};
use crate::stats::{median, ratio};

/// Underlay addresses of h1, h2, h3.
const UL: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 1),
    Ipv4Addr::new(198, 18, 0, 2),
    Ipv4Addr::new(198, 18, 0, 3),
];
/// Overlay addresses of h1, h2, h3 (their TAPs).
const OV: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 9, 1),
    Ipv4Addr::new(10, 0, 9, 2),
    Ipv4Addr::new(10, 0, 9, 3),
];
/// The client namespace's address.
const CLIENT: &str = "198.18.0.100/24";
/// Underlay MTU.
const UNDERLAY_MTU: u32 = 1500;
/// Port of the tasks' HTTP server (every address of h2 and h3).
pub const HTTP_TASK: u16 = 8000;
/// Port of the tasks' iperf3 servers. Not [`IPERF_PUB`]: in ingress mode
/// every vxmeshd, the task hosts' included, listens on the published ports.
pub const IPERF_TASK: u16 = 5301;
/// HTTP port published on h1.
pub const HTTP_PUB: u16 = 8080;
/// iperf3 port published on h1.
pub const IPERF_PUB: u16 = 5201;
/// Bound on setup commands.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long vxmeshd gets to send READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a system gets to serve through its published port.
const SERVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two runs, so one's tail does not overlap the next.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest wait for the tasks' TIME_WAIT sockets towards h1's underlay
/// address to go (Linux keeps them 60 s).
const TW_WAIT: Duration = Duration::from_secs(70);
/// Hard bound on a wrk run beyond its `-d`.
const WRK_SLACK: Duration = Duration::from_secs(30);
/// Sysctls set in cl, h1, h2 and h3 (TESTBED-NOTES: with `Connection:
/// close` the client runs out of ports without them).
const SYSCTLS: [&str; 2] = [
    "net.ipv4.ip_local_port_range=1024 65000",
    "net.ipv4.tcp_tw_reuse=1",
];

/// The systems, in table order.
pub const SYSTEMS: [&str; 6] = [
    "direct",
    "nft",
    "haproxy",
    "haproxy-splice",
    "vxmesh-underlay",
    "vxmesh-overlay",
];
/// Short names for the chart, in [`SYSTEMS`] order.
const SHORT: [&str; 6] = ["direct", "nft", "haproxy", "hap+splice", "vxm-ul", "vxm-ov"];
/// The vxmesh systems, each compared with [`BASELINES`].
const VXMESH: [&str; 2] = ["vxmesh-underlay", "vxmesh-overlay"];
/// What the vxmesh figures are divided by.
const BASELINES: [&str; 3] = ["haproxy-splice", "haproxy", "nft"];

/// The cluster file: three nodes, the overlay `front`, two services on the
/// tasks of h2 and h3. Probes go to the HTTP port (a bare connect to an
/// iperf3 server can leave it "busy"). `dnsrr`: no VIP, so no VIP listener
/// on the target ports that the tasks' wildcard listeners would clash with
/// (clients come in through the published ports only).
pub const CLUSTER: &str = vxmesh_netns::fixtures::MESH_BENCH;

/// The nftables ruleset loaded in h1 for `nft`.
pub const NFT_RULES: &str = r#"table ip vxbench {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.18.0.1 tcp dport 8080 dnat to numgen random mod 2 map { 0 : 198.18.0.2, 1 : 198.18.0.3 } : 8000
    ip daddr 198.18.0.1 tcp dport 5201 dnat to jhash ip saddr mod 2 map { 0 : 198.18.0.2, 1 : 198.18.0.3 } : 5301
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr { 198.18.0.2, 198.18.0.3 } oifname "eth0" masquerade
  }
}
"#;

/// HAProxy's configuration; `splice` adds `option splice-auto`.
pub fn haproxy_cfg(splice: bool) -> String {
    format!(
        "# vxmesh-bench mesh: HAProxy in h1{}
global
    # Each connection takes two descriptors; the hard limit here is 20000.
    maxconn 4000

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
{}
frontend web
    bind 198.18.0.1:8080
    default_backend web

backend web
    balance roundrobin
    server t2 198.18.0.2:8000 check inter 1s
    server t3 198.18.0.3:8000 check inter 1s

frontend iperf
    bind 198.18.0.1:5201
    default_backend iperf

backend iperf
    balance source
    server t2 198.18.0.2:5301 check port 8000 inter 1s
    server t3 198.18.0.3:5301 check port 8000 inter 1s
",
        if splice { ", with splice-auto" } else { "" },
        if splice {
            "    option splice-auto\n"
        } else {
            ""
        }
    )
}

/// A wrk script whose `done` prints the run's totals as one JSON line
/// after the marker `WRKJSON `.
const WRK_LUA: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"bytes":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"lat_p50_us":%.0f,"lat_p99_us":%.0f}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"#;

/// Arguments of `vxmesh-bench mesh`.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// Seconds of each iperf3 and wrk run [default: 10; 2 with --quick].
    #[arg(long)]
    pub secs: Option<u32>,
    /// Repetitions (rounds over every system); the table shows the median
    /// [default: 3; 1 with --quick].
    #[arg(long)]
    pub reps: Option<u32>,
    /// Seconds of the warm-up iperf3 run before each system's runs (HAProxy's
    /// splice-auto needs a few to engage); 0: none [default: 3; 1 with
    /// --quick].
    #[arg(long)]
    pub warmup: Option<u32>,
    /// wrk connections (`-c`; one thread, `-t1`).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Directory for mesh.json, mesh.png, mesh.txt and the daemons' logs.
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
    /// Smoke run: 2 s runs, 1 repetition, 1 s warm-up.
    #[arg(long)]
    pub quick: bool,
    /// Measure only these systems (comma-separated; the order stays the
    /// table's): direct, nft, haproxy, haproxy-splice, vxmesh-underlay,
    /// vxmesh-overlay [default: all].
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
}

/// The settings in force after defaults and `--quick`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Seconds per run.
    pub secs: u32,
    /// Repetitions.
    pub reps: u32,
    /// Seconds of warm-up per system and round.
    pub warmup: u32,
    /// wrk connections.
    pub connections: u32,
    /// Output directory.
    pub out: PathBuf,
    /// The systems measured.
    pub systems: Vec<String>,
}

impl Settings {
    /// Whether system `name` is measured.
    pub fn wants(&self, name: &str) -> bool {
        self.systems.iter().any(|s| s == name)
    }

    /// Resolves defaults: explicit values win over `--quick`.
    pub fn from_args(a: &MeshArgs) -> Settings {
        let (secs, reps, warmup) = if a.quick { (2, 1, 1) } else { (10, 3, 3) };
        Settings {
            secs: a.secs.unwrap_or(secs).max(1),
            reps: a.reps.unwrap_or(reps).max(1),
            warmup: a.warmup.unwrap_or(warmup),
            connections: a.connections.max(1),
            out: a.out.clone(),
            systems: if a.systems.is_empty() {
                SYSTEMS.iter().map(|s| s.to_string()).collect()
            } else {
                a.systems.clone()
            },
        }
    }

    /// A rough duration of the whole run.
    pub fn estimate(&self) -> Duration {
        let per_run = f64::from(self.secs) + 1.5;
        let warm = if self.warmup > 0 {
            f64::from(self.warmup) + 1.5
        } else {
            0.0
        };
        let per_system = TESTS.len() as f64 * per_run + warm + 2.0;
        let per_round = self.systems.len() as f64 * per_system + 8.0;
        Duration::from_secs_f64(f64::from(self.reps) * per_round + 5.0)
    }
}

/// One kind of run.
struct TestSpec {
    key: &'static str,
    label: &'static str,
}

/// The runs made on each system, in order.
const TESTS: [TestSpec; 4] = [
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
}

impl SystemResult {
    fn new(name: &'static str, addr: Ipv4Addr, http: u16, iperf: u16) -> SystemResult {
        SystemResult {
            name,
            http: SocketAddr::new(addr.into(), http),
            iperf: SocketAddr::new(addr.into(), iperf),
            errors: Vec::new(),
            setup: serde_json::Map::new(),
            tests: TESTS
                .iter()
                .map(|t| TestResult {
                    key: t.key,
                    reps: Vec::new(),
                })
                .collect(),
        }
    }

    fn fail(&mut self, round: u32, error: String) {
        eprintln!("[{}] round {round}: {error}", self.name);
        self.errors.push(format!("round {round}: {error}"));
    }

    fn no_data(&self) -> bool {
        self.tests
            .iter()
            .all(|t| t.reps.iter().all(|r| r.value.is_none()))
    }

    /// Median over the successful repetitions of run `key` of `f`.
    fn med(&self, key: &str, f: impl Fn(&Rep) -> Option<f64>) -> Option<f64> {
        let t = self.tests.iter().find(|t| t.key == key)?;
        median(t.reps.iter().filter(|r| r.value.is_some()).filter_map(f))
    }

    fn failures(&self) -> Vec<String> {
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

/// A goal a vxmesh figure is held to: at least `min` × the `of` system.
#[derive(Debug, Clone, Copy)]
struct Goal {
    of: &'static str,
    min: f64,
}

/// One row of the table.
struct Metric {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    /// Whether the vxmesh/baseline ratios mean something for this row.
    ratio: bool,
    goal: Option<Goal>,
    get: fn(&SystemResult) -> Option<f64>,
}

/// Percent of the whole machine (every core) busy during a run.
fn busy_percent(r: &Rep) -> Option<f64> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (r.wall_s > 0.0).then(|| 100.0 * r.host_cpu_s / r.wall_s / n)
}

/// Percent of one core the balancer used during a run.
fn balancer_percent(r: &Rep) -> Option<f64> {
    r.balancer_cpu_s
        .filter(|_| r.wall_s > 0.0)
        .map(|c| 100.0 * c / r.wall_s)
}

const METRICS: [Metric; 12] = [
    Metric {
        key: "iperf_gbit_per_s",
        label: "iperf3 TCP 1 stream, Gbit/s",
        decimals: 2,
        ratio: true,
        goal: Some(Goal {
            of: "haproxy-splice",
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
            of: "haproxy-splice",
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

/// Versions of the tools, for the report.
#[derive(Debug, Serialize)]
pub struct Tools {
    /// `haproxy -v`, first line.
    pub haproxy: String,
    /// `nft --version`.
    pub nft: String,
    /// `wrk -v`, first line (it prints it on stderr and exits 1).
    pub wrk: String,
}

impl Tools {
    fn probe() -> Tools {
        let wrk = std::process::Command::new("wrk")
            .arg("-v")
            .stdin(std::process::Stdio::null())
            .output()
            .map(|o| {
                let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
                t += &String::from_utf8_lossy(&o.stderr);
                crate::report::first_line(&t)
            })
            .unwrap_or_else(|_| "?".into());
        Tools {
            haproxy: command_line("/usr/sbin/haproxy", &["-v"]).unwrap_or_else(|| "?".into()),
            nft: command_line("nft", &["--version"]).unwrap_or_else(|| "?".into()),
            wrk,
        }
    }
}

/// Where one system's runs go and what they watch.
struct Target {
    /// Address the client connects to.
    addr: Ipv4Addr,
    /// HTTP port there.
    http: u16,
    /// iperf3 port there.
    iperf: u16,
    /// Hosts that run a one-off iperf3 server for each run.
    iperf_servers: &'static [&'static str],
    /// Tasks the HTTP probe must see answer before the runs.
    tasks: usize,
    /// Processes whose CPU is the balancer's.
    watch: Vec<u32>,
}

/// The measuring state.
struct Ctx<'a> {
    s: &'a Settings,
    clk_tck: f64,
    /// The wrk script's path.
    script: String,
}

impl Ctx<'_> {
    /// One round on a system: waits until it serves, warms up, then makes
    /// every run once, appending to `r`.
    fn measure_round(&self, tb: &mut Testbed, r: &mut SystemResult, round: u32, t: &Target) {
        let (name, s) = (r.name, self.s);
        match serves(tb, SocketAddr::new(t.addr.into(), t.http), t.tasks) {
            Ok(seen) => {
                if round == 1 {
                    r.setup
                        .insert("tasks answering the probe".into(), json!(seen));
                }
            }
            Err(e) => {
                r.fail(round, format!("{e:#}"));
                return;
            }
        }
        if s.warmup > 0 {
            let w = iperf::run_balanced(
                tb,
                t.iperf_servers,
                IPERF_TASK,
                "cl",
                t.addr,
                t.iperf,
                s.warmup,
                &Mode::Tcp { parallel: 1 },
                &t.watch,
                self.clk_tck,
            );
            match w {
                Ok(o) => eprintln!(
                    "[{name}] warm-up {round}/{}: {:.2} Gbit/s",
                    s.reps, o.figures.gbit_per_s
                ),
                Err(e) => eprintln!("[{name}] warm-up {round}/{}: ERROR {e:#}", s.reps),
            }
        }
        for (spec, res) in TESTS.iter().zip(r.tests.iter_mut()) {
            std::thread::sleep(SETTLE);
            let rep = match spec.key {
                "iperf" => self.iperf(tb, t, round),
                "conn" => self.wrk(tb, t, round, "/1k", true, |f| f.req_per_s),
                "ka1k" => self.wrk(tb, t, round, "/1k", false, |f| f.req_per_s),
                _ => self.wrk(tb, t, round, "/1m", false, |f| f.mb_per_s),
            };
            let line = match (&rep.error, rep.value) {
                (Some(e), _) => format!("ERROR {}", e.lines().next().unwrap_or("")),
                (None, v) => {
                    let unit = match spec.key {
                        "iperf" => "Gbit/s",
                        "ka1m" => "MB/s",
                        _ => "req/s",
                    };
                    let mut l = format!("{:.2} {unit}", v.unwrap_or(0.0));
                    if let Some(b) = busy_percent(&rep) {
                        let _ = write!(l, ", machine {b:.0} % busy");
                    }
                    if let Some(b) = balancer_percent(&rep) {
                        let _ = write!(l, ", balancer {b:.0} % of a core");
                    }
                    if let Some(n) = rep.detail.pointer("/errors").map(wrk_error_total) {
                        if n > 0 {
                            let _ = write!(l, ", {n} wrk errors");
                        }
                    }
                    l
                }
            };
            eprintln!("[{name}] {} {round}/{}: {line}", spec.label, s.reps);
            res.reps.push(rep);
        }
    }

    fn iperf(&self, tb: &mut Testbed, t: &Target, round: u32) -> Rep {
        let res = iperf::run_balanced(
            tb,
            t.iperf_servers,
            IPERF_TASK,
            "cl",
            t.addr,
            t.iperf,
            self.s.secs,
            &Mode::Tcp { parallel: 1 },
            &t.watch,
            self.clk_tck,
        );
        match res {
            Ok(o) => Rep {
                rep: round,
                error: None,
                value: Some(o.figures.gbit_per_s),
                wall_s: o.wall_s,
                host_cpu_s: o.host_cpu_s,
                balancer_cpu_s: o.watched_cpu_s,
                detail: serde_json::to_value(&o).unwrap_or(Value::Null),
            },
            Err(e) => failed(round, &e),
        }
    }

    /// `wrk -t1 -c<n> -d<secs>s` against `path` on the target's HTTP port,
    /// with `Connection: close` when `close`; the figure is `value` of the
    /// totals.
    fn wrk(
        &self,
        tb: &Testbed,
        t: &Target,
        round: u32,
        path: &str,
        close: bool,
        value: fn(&WrkFigures) -> f64,
    ) -> Rep {
        match self.wrk_inner(tb, t, path, close) {
            Ok((f, wall_s, host_cpu_s, balancer_cpu_s)) => {
                // A run with more errors than answers says nothing.
                let error = (f.errors.total() > f.requests / 100 + 10).then(|| {
                    format!(
                        "{} errors for {} requests: {:?}",
                        f.errors.total(),
                        f.requests,
                        f.errors
                    )
                });
                Rep {
                    rep: round,
                    value: error.is_none().then(|| value(&f)),
                    error,
                    wall_s,
                    host_cpu_s,
                    balancer_cpu_s,
                    detail: serde_json::to_value(&f).unwrap_or(Value::Null),
                }
            }
            Err(e) => failed(round, &e),
        }
    }

    fn wrk_inner(
        &self,
        tb: &Testbed,
        t: &Target,
        path: &str,
        close: bool,
    ) -> anyhow::Result<(WrkFigures, f64, f64, Option<f64>)> {
        let url = format!("http://{}:{}{path}", t.addr, t.http);
        let (c, d) = (
            format!("-c{}", self.s.connections),
            format!("-d{}s", self.s.secs),
        );
        let mut args = vec!["wrk", "-t1", &c, &d, "--timeout", "5s", "-s", &self.script];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let bound = Duration::from_secs(u64::from(self.s.secs)) + WRK_SLACK;
        let before = Snapshot::take(&t.watch)?;
        let start = Instant::now();
        let out = tb
            .exec_timeout_unchecked("cl", &args, bound)
            .context("wrk in cl")?;
        let wall_s = start.elapsed().as_secs_f64();
        let after = Snapshot::take(&t.watch)?;
        let (host, watched) = before.seconds_until(&after, self.clk_tck);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let f = parse_wrk(&stdout).map_err(|e| {
            anyhow!(
                "`{}`: {e} ({}): {}{}",
                args.join(" "),
                out.status,
                stdout.chars().take(1500).collect::<String>(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((f, wall_s, host, watched))
    }
}

fn wrk_error_total(v: &Value) -> u64 {
    ["connect", "read", "write", "status", "timeout"]
        .iter()
        .filter_map(|k| v.get(k).and_then(Value::as_u64))
        .sum()
}

fn failed(round: u32, e: &anyhow::Error) -> Rep {
    Rep {
        rep: round,
        error: Some(format!("{e:#}")),
        value: None,
        wall_s: 0.0,
        host_cpu_s: 0.0,
        balancer_cpu_s: None,
        detail: Value::Null,
    }
}

/// Waits until `GET /1k` from cl through `addr` has answered at least 4
/// times and `tasks` distinct tasks were among the answers, up to
/// [`SERVE_TIMEOUT`]. Returns the tasks seen.
fn serves(tb: &Testbed, addr: SocketAddr, tasks: usize) -> anyhow::Result<Vec<String>> {
    let res = tb.in_ns("cl", move || {
        let deadline = Instant::now() + SERVE_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        let (mut ok, mut last) = (0u32, String::from("no attempt"));
        while Instant::now() < deadline {
            match crate::http::get(addr, "/1k", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 && r.body == crate::http::SMALL => {
                    ok += 1;
                    let t = r.task.unwrap_or_default();
                    if !seen.contains(&t) {
                        seen.push(t);
                    }
                    if ok >= 4 && seen.len() >= tasks {
                        seen.sort();
                        return Ok(seen);
                    }
                    continue;
                }
                Ok(r) => last = format!("{r:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{ok} good answers, tasks {seen:?} (want {tasks}), last: {last}"
        ))
    })?;
    res.map_err(|e| anyhow!("{addr} does not serve from cl within {SERVE_TIMEOUT:?}: {e}"))
}

/// Runs a bounded command in a namespace and returns its stdout.
fn run(tb: &Testbed, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tb.exec_timeout(ns, args, CMD_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes through h1's TAP so far (received + sent), if it exists.
fn tap_bytes(tb: &Testbed) -> Option<u64> {
    let read = |dir: &str| -> Option<u64> {
        let path = format!("/sys/class/net/vxm-front/statistics/{dir}_bytes");
        run(tb, "h1", &["cat", &path]).ok()?.trim().parse().ok()
    };
    Some(read("rx")? + read("tx")?)
}

/// Waits (up to [`TW_WAIT`]) until the tasks hold no TIME_WAIT socket of an
/// underlay connection from h1 (`198.18.0.1` to `198.18.0.2/.3`). Such
/// sockets are left by the systems that reach the tasks over the underlay
/// from h1's address, HAProxy and nft alike, and the next system of the
/// other kind reuses their 4-tuples with timestamps from another clock:
/// nft's masqueraded SYNs carry the client's, HAProxy's carry h1's own.
/// The tasks then most likely refuse those SYNs (PAWS) and the connects
/// stall: HAProxy measured right after nft made 3.8 k instead of 8.8 k new
/// conn/s, and nft right after HAProxy 1.5 k instead of 9.5 k, with the
/// machine idle. (vxmesh's upstream goes to the tasks' overlay addresses:
/// other tuples.)
fn tw_gone(tb: &Testbed, name: &str, round: u32, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let count = || -> anyhow::Result<usize> {
        let mut n = 0;
        for (h, ul) in [("h2", UL[1]), ("h3", UL[2])] {
            let (src, dst) = (ul.to_string(), UL[0].to_string());
            let text = run(
                tb,
                h,
                &["ss", "-Htn", "state", "time-wait", "src", &src, "dst", &dst],
            )?;
            n += text.lines().filter(|l| !l.trim().is_empty()).count();
        }
        Ok(n)
    };
    let start = Instant::now();
    let first = count()?;
    let mut left = first;
    while left > 0 && start.elapsed() < TW_WAIT {
        std::thread::sleep(Duration::from_secs(1));
        left = count()?;
    }
    if first > 0 {
        let line = format!(
            "round {round}: before {name}, waited {:.0} s for {first} TIME_WAIT sockets on the \
             tasks from h1's underlay address to go ({left} left)",
            start.elapsed().as_secs_f64()
        );
        eprintln!("[{name}] {line}");
        notes.push(line);
    }
    Ok(())
}

/// Starts HAProxy in h1 with `cfg` and waits until it listens on both
/// published ports.
fn haproxy_up(tb: &mut Testbed, cfg: &Path) -> anyhow::Result<Proc> {
    let cfg = cfg.to_str().context("temp path is not UTF-8")?;
    let p = tb.spawn("h1", &["/usr/sbin/haproxy", "-f", cfg, "-db"], &[])?;
    for port in [HTTP_PUB, IPERF_PUB] {
        if let Err(e) = iperf::wait_listening(&p, port, Duration::from_secs(10)) {
            tb.stop(&p);
            return Err(e.context("starting HAProxy"));
        }
    }
    Ok(p)
}

/// Starts vxmeshd in h1, h2 and h3, each waited for until READY=1, then
/// until h1 sees every task of both services up.
fn vxmesh_up(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cli: &Path,
) -> anyhow::Result<Vec<(String, Proc, PathBuf)>> {
    let cfg = tb.dir().join("vxmesh.toml");
    std::fs::write(&cfg, CLUSTER).with_context(|| format!("writing {}", cfg.display()))?;
    let cfg_s = cfg.to_str().context("temp path is not UTF-8")?.to_string();
    let bin = vxmeshd.to_str().context("vxmeshd path is not UTF-8")?;
    let mut procs = Vec::new();
    for h in ["h1", "h2", "h3"] {
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
    let sock = procs[0].2.clone();
    let deadline = Instant::now() + SERVE_TIMEOUT;
    for svc in ["web", "iperf"] {
        loop {
            let ps = cli_json(tb, cli, &sock, &["service", "ps", svc]);
            let up = ps.as_ref().ok().and_then(Value::as_array).is_some_and(|a| {
                a.len() == 2 && a.iter().all(|t| t["state"].as_str() == Some("up"))
            });
            if up {
                break;
            }
            if Instant::now() >= deadline {
                bail!("h1 does not see both tasks of `{svc}` up: {ps:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(procs)
}

/// The CLI's JSON answer (`vxmesh --socket S --json args`), run in h1.
fn cli_json(tb: &Testbed, cli: &Path, sock: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let (cli, sock) = (
        cli.to_str().context("path is not UTF-8")?,
        sock.to_str().context("path is not UTF-8")?,
    );
    let mut a = vec![cli, "--socket", sock, "--json"];
    a.extend_from_slice(args);
    let text = run(tb, "h1", &a)?;
    serde_json::from_str(&text).with_context(|| format!("vxmesh {args:?} printed {text:?}"))
}

/// The host routes that send the tasks' overlay addresses from h1 over the
/// underlay (`add`) or remove them.
fn underlay_routes(tb: &Testbed, add: bool) -> anyhow::Result<()> {
    for i in 1..3 {
        let (dst, via) = (format!("{}/32", OV[i]), UL[i].to_string());
        let verb = if add { "replace" } else { "del" };
        run(
            tb,
            "h1",
            &["ip", "route", verb, &dst, "via", &via, "dev", "eth0"],
        )
        .with_context(|| format!("ip route {verb} {dst} in h1"))?;
    }
    Ok(())
}

/// Builds the testbed and measures every system, in rounds (each round
/// measures every system once, so that a passing load on the machine is
/// spread over all of them). The testbed is gone when this returns.
fn measure_all(
    s: &Settings,
    clk_tck: f64,
    vxmeshd: &Path,
    backend: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<SystemResult>> {
    let mut tb = Testbed::new("mesh")?;
    eprintln!("testbed {} (temp dir {})", tb.suffix(), tb.dir().display());
    for (i, ul) in UL.iter().enumerate() {
        tb.add_host(&format!("h{}", i + 1), &format!("{ul}/24"), UNDERLAY_MTU)?;
    }
    tb.add_host("cl", CLIENT, UNDERLAY_MTU)?;
    for ns in ["cl", "h1", "h2", "h3"] {
        for kv in SYSCTLS {
            run(&tb, ns, &["sysctl", "-q", "-w", kv])?;
        }
    }
    // The tasks: the HTTP server on every address of h2 and h3.
    let bin = backend.to_str().context("backend path is not UTF-8")?;
    let listen = format!("0.0.0.0:{HTTP_TASK}");
    for (h, name) in [("h2", "task2"), ("h3", "task3")] {
        let p = tb.spawn(h, &[bin, "--listen", &listen, "--name", name], &[])?;
        iperf::wait_listening(&p, HTTP_TASK, Duration::from_secs(10))?;
    }
    let dir = tb.dir().to_path_buf();
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let script = write("report.lua", WRK_LUA)?;
    let nft = write("vxbench.nft", NFT_RULES)?;
    let hap = write("haproxy.cfg", &haproxy_cfg(false))?;
    let hap_splice = write("haproxy-splice.cfg", &haproxy_cfg(true))?;
    let ctx = Ctx {
        s,
        clk_tck,
        script: script.to_str().context("temp path is not UTF-8")?.into(),
    };
    let h1 = |name| SystemResult::new(name, UL[0], HTTP_PUB, IPERF_PUB);
    let mut direct = SystemResult::new("direct", UL[1], HTTP_TASK, IPERF_TASK);
    let mut nftr = h1("nft");
    let mut haproxy = h1("haproxy");
    let mut splice = h1("haproxy-splice");
    let mut vx_ul = h1("vxmesh-underlay");
    let mut vx_ov = h1("vxmesh-overlay");
    nftr.setup.insert("ruleset".into(), NFT_RULES.into());
    haproxy
        .setup
        .insert("config".into(), haproxy_cfg(false).into());
    splice
        .setup
        .insert("config".into(), haproxy_cfg(true).into());
    vx_ul.setup.insert("cluster".into(), CLUSTER.into());
    vx_ov.setup.insert("cluster".into(), CLUSTER.into());
    let cli = vxmeshd.with_file_name("vxmesh");
    for h in ["h1", "h2", "h3"] {
        let _ = std::fs::remove_file(s.out.join(format!("mesh-vxmeshd-{h}.log")));
    }
    let balanced: &'static [&'static str] = &["h2", "h3"];
    let target = |addr, http, iperf, tasks, watch| Target {
        addr,
        http,
        iperf,
        iperf_servers: balanced,
        tasks,
        watch,
    };
    let mut tap_moved: [Vec<u64>; 2] = [Vec::new(), Vec::new()];

    for round in 1..=s.reps {
        eprintln!("--- round {round}/{} ---", s.reps);
        // (a) direct: the client straight to the task on h2.
        if s.wants("direct") {
            let t = Target {
                iperf_servers: &["h2"],
                ..target(UL[1], HTTP_TASK, IPERF_TASK, 1, vec![])
            };
            ctx.measure_round(&mut tb, &mut direct, round, &t);
        }

        // (c) HAProxy, without and with splice-auto.
        for (r, cfg) in [(&mut haproxy, &hap), (&mut splice, &hap_splice)] {
            if !s.wants(r.name) {
                continue;
            }
            if r.name == "haproxy" {
                tw_gone(&tb, r.name, round, notes)?;
            }
            match haproxy_up(&mut tb, cfg) {
                Ok(p) => {
                    let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, vec![p.pid]);
                    ctx.measure_round(&mut tb, r, round, &t);
                    if let Some(st) = p.exit_status() {
                        r.fail(
                            round,
                            format!("HAProxy exited during the runs: {st}: {}", p.log_tail(10)),
                        );
                    }
                    if !tb.stop(&p) {
                        bail!("HAProxy (pid {}) could not be stopped", p.pid);
                    }
                }
                Err(e) => r.fail(round, format!("{e:#}")),
            }
        }

        // (d) vxmesh: the full path over the overlay, then the mesh over
        // the underlay (host routes in h1).
        let mut last_round = false;
        'vx: {
            if !VXMESH.iter().any(|v| s.wants(v)) {
                break 'vx;
            }
            let daemons = match vxmesh_up(&mut tb, vxmeshd, &cli) {
                Ok(d) => d,
                Err(e) => {
                    vx_ov.fail(round, format!("{e:#}"));
                    vx_ul.fail(round, format!("{e:#}"));
                    break 'vx;
                }
            };
            let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
            for (i, r) in [&mut vx_ov, &mut vx_ul].into_iter().enumerate() {
                if !s.wants(r.name) {
                    continue;
                }
                let underlay = i == 1;
                if underlay {
                    if let Err(e) = underlay_routes(&tb, true) {
                        r.fail(round, format!("{e:#}"));
                        continue;
                    }
                }
                if round == 1 {
                    for dst in [OV[1], OV[2]] {
                        let d = dst.to_string();
                        if let Ok(route) = run(&tb, "h1", &["ip", "route", "get", &d]) {
                            r.setup
                                .insert(format!("h1: ip route get {d}"), route.trim().into());
                        }
                    }
                }
                let before = tap_bytes(&tb);
                let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, pids.clone());
                ctx.measure_round(&mut tb, r, round, &t);
                if let (Some(a), Some(b)) = (before, tap_bytes(&tb)) {
                    tap_moved[i].push(b.saturating_sub(a));
                }
                if let Ok(v) = cli_json(&tb, &cli, &daemons[0].2, &["service", "ps", "web"]) {
                    r.setup
                        .insert(format!("h1: service ps web after round {round}"), v);
                }
                if underlay {
                    if let Err(e) = underlay_routes(&tb, false) {
                        notes.push(format!("round {round}: {e:#}"));
                    }
                }
            }
            let mut stopped = true;
            for (h, p, _) in &daemons {
                if let Some(st) = p.exit_status() {
                    notes.push(format!(
                        "round {round}: vxmeshd in {h} exited during the runs: {st}"
                    ));
                }
                stopped &= tb.stop(p);
                let dest = s.out.join(format!("mesh-vxmeshd-{h}.log"));
                if let Err(e) = append_log(&p.log, &dest, round) {
                    notes.push(format!("could not copy {}: {e}", p.log.display()));
                }
            }
            if !stopped {
                notes.push(format!(
                    "round {round}: a vxmeshd could not be stopped; no further rounds"
                ));
                last_round = true;
            }
        }

        // (e) nftables DNAT in h1, last (see `tw_gone`: the fewer the
        // switches between nft and HAProxy, the fewer the waits).
        if s.wants("nft") {
            tw_gone(&tb, "nft", round, notes)?;
            let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, vec![]);
            let nft_s = nft.to_str().context("temp path is not UTF-8")?;
            let up = run(&tb, "h1", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
                .and_then(|_| run(&tb, "h1", &["nft", "-f", nft_s]));
            match up {
                Ok(_) => ctx.measure_round(&mut tb, &mut nftr, round, &t),
                Err(e) => nftr.fail(round, format!("{e:#}")),
            }
            if let Ok(c) = run(
                &tb,
                "h1",
                &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
            ) {
                nftr.setup.insert(
                    format!("h1 conntrack entries after round {round}"),
                    c.trim().into(),
                );
            }
            // Removed whatever happened: the next systems listen on h1's ports.
            let _ = run(&tb, "h1", &["nft", "delete", "table", "ip", "vxbench"]);
            run(&tb, "h1", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
        }

        if last_round {
            break;
        }
    }
    for (i, name) in ["vxmesh-overlay", "vxmesh-underlay"].iter().enumerate() {
        if !tap_moved[i].is_empty() {
            let mb: Vec<String> = tap_moved[i]
                .iter()
                .map(|b| format!("{:.0}", *b as f64 / 1e6))
                .collect();
            notes.push(format!(
                "{name}: h1's TAP moved {} MB per round (rx + tx){}",
                mb.join(", "),
                if i == 1 {
                    ": the mesh's upstream went over eth0, only health probes and ARP on the TAP"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(vec![direct, nftr, haproxy, splice, vx_ul, vx_ov])
}

/// The value of a metric per system, in [`SYSTEMS`] order.
fn row(m: &Metric, results: &[SystemResult]) -> Vec<Option<f64>> {
    SYSTEMS
        .iter()
        .map(|name| results.iter().find(|r| r.name == *name).and_then(m.get))
        .collect()
}

/// The value of system `name` in a row.
fn at(v: &[Option<f64>], name: &str) -> Option<f64> {
    SYSTEMS.iter().position(|s| *s == name).and_then(|i| v[i])
}

fn fmt(x: Option<f64>, d: usize) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.d$}"))
}

/// Whether a goal was met: "met", "NOT met" or "-" (no figure).
fn verdict(ratio: Option<f64>, goal: Goal) -> &'static str {
    match ratio {
        Some(r) if r >= goal.min => "met",
        Some(_) => "NOT met",
        None => "-",
    }
}

/// The text report: header, figures, ratios, notes.
fn table(s: &Settings, machine: &Machine, tools: &Tools, results: &[SystemResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vxmesh-bench mesh: cl -> h1:{HTTP_PUB} (HTTP) / h1:{IPERF_PUB} (iperf3) -> tasks on h2, h3; \
         {} s per run, {} rep(s) (median shown), wrk -t1 -c{}, {} s iperf3 warm-up per system and round",
        s.secs, s.reps, s.connections, s.warmup
    );
    let _ = writeln!(
        out,
        "order: each round measures direct, haproxy, haproxy-splice, vxmesh-overlay, \
         vxmesh-underlay, nft in turn; before haproxy and nft, the tasks' TIME_WAIT sockets \
         from h1's underlay address are waited out (the other one's tuples stall connects)"
    );
    let _ = writeln!(
        out,
        "machine: nproc {}, kernel {} ({}), load avg {} at start, {} at end{}\n\
         tools: {}; {}; {}; {}",
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        machine.loadavg_start,
        machine.loadavg_end,
        machine
            .git
            .as_ref()
            .map_or(String::new(), |g| format!(", build {g}")),
        machine.iperf3,
        tools.wrk,
        tools.haproxy,
        tools.nft,
    );
    let _ = writeln!(out);
    let mut headers: Vec<String> = vec!["".into()];
    headers.extend(SYSTEMS.iter().map(|p| p.to_string()));
    let mut rows = Vec::new();
    for m in &METRICS {
        let v = row(m, results);
        let mut cells = vec![m.label.to_string()];
        cells.extend(v.iter().map(|x| fmt(*x, m.decimals)));
        rows.push(cells);
    }
    out += &format_table(&headers, &rows);
    let _ = writeln!(out);

    let mut headers: Vec<String> = vec!["ratio".into()];
    headers.extend(BASELINES.iter().map(|b| format!("/{b}")));
    headers.push("goal".into());
    headers.push("".into());
    let mut rows = Vec::new();
    for m in METRICS.iter().filter(|m| m.ratio) {
        let v = row(m, results);
        for vx in VXMESH {
            let mut cells = vec![format!("{}, {vx}", m.label)];
            for b in BASELINES {
                cells.push(fmt(ratio(at(&v, vx), at(&v, b)), 3));
            }
            match m.goal {
                Some(g) => {
                    cells.push(format!(">= {:.1} x {}", g.min, g.of));
                    cells.push(verdict(ratio(at(&v, vx), at(&v, g.of)), g).into());
                }
                None => cells.extend(["-".to_string(), String::new()]),
            }
            rows.push(cells);
        }
    }
    out += &format_table(&headers, &rows);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Ratios divide the vxmesh figure by the other system's (higher is better for vxmesh).\n\
         vxmesh-underlay: the mesh relays to the tasks over the underlay (host routes in h1), like \
         HAProxy; vxmesh-overlay: through h1's TAP, VXLAN and the task host's TAP, as deployed.\n\
         Machine busy % is every core's busy time over all cores while the client ran (load \
         generator, kernel, balancer, tasks); balancer CPU is HAProxy's or the three vxmeshd's \
         (nft works in the kernel's softirq: not attributable)."
    );
    let failures: Vec<String> = results.iter().flat_map(SystemResult::failures).collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFAILURES ({}):", failures.len());
        for f in failures {
            let _ = writeln!(out, "  {}", f.lines().next().unwrap_or(""));
        }
    }
    out
}

/// The summary (medians, ratios, goals) as JSON.
fn summary(results: &[SystemResult]) -> Value {
    let mut map = serde_json::Map::new();
    for m in &METRICS {
        let v = row(m, results);
        let mut e = serde_json::Map::new();
        for (p, x) in SYSTEMS.iter().zip(&v) {
            e.insert((*p).into(), json!(x));
        }
        if m.ratio {
            for vx in VXMESH {
                for b in BASELINES {
                    e.insert(format!("{vx}/{b}"), json!(ratio(at(&v, vx), at(&v, b))));
                }
                if let Some(g) = m.goal {
                    let r = ratio(at(&v, vx), at(&v, g.of));
                    e.insert(
                        format!("{vx} goal"),
                        json!({"at_least": g.min, "of": g.of, "ratio": r, "met": r.map(|r| r >= g.min)}),
                    );
                }
            }
        }
        map.insert(m.key.into(), Value::Object(e));
    }
    Value::Object(map)
}

/// The chart's panels: one per main figure, a bar per system.
fn panels(results: &[SystemResult]) -> Vec<Panel> {
    METRICS
        .iter()
        .filter(|m| m.ratio)
        .map(|m| {
            let v = row(m, results);
            Panel {
                title: m.label.to_string(),
                series: vec!["median".into()],
                groups: SHORT
                    .iter()
                    .zip(v)
                    .map(|(s, x)| (s.to_string(), vec![x]))
                    .collect(),
            }
        })
        .collect()
}

/// A text legend for a chart drawn without fonts.
fn legend(panels: &[Panel]) -> String {
    let mut s = String::from(
        "mesh.png was drawn without text (no TrueType font found; set VXMESH_BENCH_FONT).\n",
    );
    let places = ["top left", "top right", "bottom left", "bottom right"];
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(s, "{} panel: {}", places.get(i).unwrap_or(&"next"), p.title);
        let _ = writeln!(
            s,
            "  bars left to right: {}",
            p.groups
                .iter()
                .map(|(g, _)| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

/// `vxmesh-bench mesh`.
pub fn run_mesh(args: MeshArgs) -> anyhow::Result<()> {
    if !require_root() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let s = Settings::from_args(&args);
    if let Some(bad) = s.systems.iter().find(|n| !SYSTEMS.contains(&n.as_str())) {
        bail!(
            "unknown system `{bad}`: the systems are {}",
            SYSTEMS.join(", ")
        );
    }
    // Panic with a clear message when missing, before any namespace exists.
    let vxmeshd = workspace_bin("vxmeshd");
    let backend = workspace_bin("vxmesh-bench-backend");
    let _ = workspace_bin("vxmesh");
    for (tool, package) in [("wrk", "wrk"), ("iperf3", "iperf3"), ("nft", "nftables")] {
        if command_line("sh", &["-c", &format!("command -v {tool}")]).is_none() {
            bail!("`{tool}` is not installed (apt-get install -y {package})");
        }
    }
    if !Path::new("/usr/sbin/haproxy").is_file() {
        bail!("/usr/sbin/haproxy is not installed (apt-get install -y haproxy)");
    }
    let clk_tck = crate::cpu::clock_ticks()?;
    std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    let mut machine = Machine::probe();
    let tools = Tools::probe();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "vxmesh-bench mesh: {} s runs, {} rep(s), {} s warm-up; about {} min; vxmeshd {}",
        s.secs,
        s.reps,
        s.warmup,
        s.estimate().as_secs().div_ceil(60),
        vxmeshd.display()
    );
    let t0 = Instant::now();
    let mut notes = Vec::new();
    let results = measure_all(&s, clk_tck, &vxmeshd, &backend, &mut notes)?;
    machine.loadavg_end = loadavg();
    let elapsed = t0.elapsed();

    let text = table(&s, &machine, &tools, &results);
    println!("{text}");
    let txt = s.out.join("mesh.txt");
    std::fs::write(&txt, &text).with_context(|| format!("writing {}", txt.display()))?;

    let panels = panels(&results);
    let png = s.out.join("mesh.png");
    let font = chart::load_font();
    chart::draw_grid(&png, &panels, 2, (1400, 900), font.is_some())?;
    if font.is_none() {
        let lp = s.out.join("mesh-legend.txt");
        std::fs::write(&lp, legend(&panels))
            .with_context(|| format!("writing {}", lp.display()))?;
        notes.push(format!(
            "no font found: chart without text, legend in {}",
            lp.display()
        ));
    }
    let report = json!({
        "bench": "mesh",
        "started_unix": started,
        "elapsed_s": elapsed.as_secs_f64(),
        "machine": machine,
        "tools": tools,
        "settings": s,
        "clk_tck": clk_tck,
        "summary": summary(&results),
        "systems": results,
        "notes": notes,
    });
    let jp = s.out.join("mesh.json");
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
        .filter(|r| s.wants(r.name) && r.no_data())
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

    fn args(quick: bool) -> MeshArgs {
        MeshArgs {
            secs: None,
            reps: None,
            warmup: None,
            connections: 16,
            out: "x".into(),
            quick,
            systems: Vec::new(),
        }
    }

    #[test]
    fn quick_and_explicit_settings() {
        let s = Settings::from_args(&args(false));
        assert_eq!((s.secs, s.reps, s.warmup), (10, 3, 3));
        let s = Settings::from_args(&args(true));
        assert_eq!((s.secs, s.reps, s.warmup), (2, 1, 1));
        let a = MeshArgs {
            secs: Some(5),
            warmup: Some(0),
            ..args(true)
        };
        let s = Settings::from_args(&a);
        assert_eq!((s.secs, s.warmup), (5, 0));
        assert!(s.estimate() > Duration::from_secs(6 * 4 * 5));
    }

    #[test]
    fn wrk_totals() {
        let out = "Running 10s test @ http://198.18.0.1:8080/1k\n  1 threads\n\
                   WRKJSON {\"requests\":70000,\"bytes\":80000000,\"duration_us\":10000000,\
                   \"connect\":0,\"read\":2,\"write\":0,\"status\":1,\"timeout\":0,\
                   \"lat_p50_us\":210,\"lat_p99_us\":900}\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!((f.requests, f.bytes), (70_000, 80_000_000));
        assert!((f.req_per_s - 7000.0).abs() < 1e-9);
        assert!((f.mb_per_s - 8.0).abs() < 1e-9);
        assert_eq!(f.errors.total(), 3);
        assert_eq!(
            wrk_error_total(&serde_json::to_value(&f.errors).unwrap()),
            3
        );
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
        assert!(parse_wrk("WRKJSON {\"requests\":1}\n").is_err());
    }

    #[test]
    fn configs() {
        assert!(haproxy_cfg(true).contains("option splice-auto"));
        assert!(!haproxy_cfg(false).contains("splice-auto"));
        for cfg in [haproxy_cfg(false), CLUSTER.to_string()] {
            // iperf3's servers are probed on the HTTP port, never their own.
            assert!(!cfg.contains(&format!("check port {IPERF_TASK}")));
        }
        assert!(haproxy_cfg(false).contains("balance source"));
        assert!(CLUSTER.contains("balance = \"maglev\""));
        assert!(CLUSTER.contains("port = 8000"));
        assert!(NFT_RULES.contains("jhash ip saddr mod 2"));
        assert!(WRK_LUA.contains("WRKJSON "));
    }

    fn rep(v: Option<f64>, balancer: Option<f64>) -> Rep {
        Rep {
            rep: 1,
            error: v.is_none().then(|| "boom".to_string()),
            value: v,
            wall_s: 10.0,
            host_cpu_s: 10.0,
            balancer_cpu_s: balancer,
            detail: Value::Null,
        }
    }

    fn system(name: &'static str, base: f64) -> SystemResult {
        let mut s = SystemResult::new(name, UL[0], HTTP_PUB, IPERF_PUB);
        for (i, t) in s.tests.iter_mut().enumerate() {
            let v = base * (i + 1) as f64;
            t.reps = vec![
                rep(Some(v), Some(5.0)),
                rep(Some(v * 2.0), Some(5.0)),
                rep(Some(v * 3.0), Some(5.0)),
                rep(None, None),
            ];
        }
        s
    }

    #[test]
    fn medians_ratios_goals_and_table() {
        let results: Vec<SystemResult> = SYSTEMS
            .iter()
            .zip([10.0, 8.0, 4.0, 5.0, 6.0, 3.0])
            .map(|(n, b)| system(n, b))
            .collect();
        let sum = summary(&results);
        let t = &sum["iperf_gbit_per_s"];
        assert_eq!(t["haproxy-splice"], json!(10.0));
        assert_eq!(t["vxmesh-underlay/haproxy-splice"], json!(1.2));
        assert_eq!(t["vxmesh-overlay/haproxy"], json!(0.75));
        assert_eq!(t["vxmesh-underlay goal"]["met"], json!(true));
        assert_eq!(t["vxmesh-overlay goal"]["met"], json!(false));
        // new conn/s: vxmesh-underlay 6/4 = 1.5 of haproxy >= 1.2.
        assert_eq!(
            sum["new_conn_per_s"]["vxmesh-underlay goal"]["met"],
            json!(true)
        );
        assert_eq!(sum["iperf_balancer_cpu_percent"]["haproxy"], json!(50.0));
        assert!(sum["iperf_machine_busy_percent"]
            .get("vxmesh-underlay/nft")
            .is_none());
        let machine = Machine::probe();
        let tools = Tools {
            haproxy: "h".into(),
            nft: "n".into(),
            wrk: "w".into(),
        };
        let text = table(
            &Settings::from_args(&args(true)),
            &machine,
            &tools,
            &results,
        );
        assert!(
            text.contains("iperf3 TCP 1 stream, Gbit/s, vxmesh-underlay"),
            "{text}"
        );
        assert!(text.contains("NOT met") && text.contains(" met"), "{text}");
        assert!(text.contains("FAILURES (24)"), "{text}");
        let p = panels(&results);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].groups[4], ("vxm-ul".to_string(), vec![Some(12.0)]));
        assert!(legend(&p).contains("bottom right panel: keep-alive MB/s"));
        serde_json::to_string(&results).unwrap();
    }
}
