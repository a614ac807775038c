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
//! - `nft-overlay`: the same rules to the tasks' overlay addresses
//!   (`10.0.9.2`, `10.0.9.3`), reached over the kernel's vxlan between h1,
//!   h2 and h3 (`vxk0`: VNI, port and addresses as vxmesh's `front`, static
//!   FDB, MTU 1450; see [`crate::harness::kvxlan`]). vxmeshd binds the same
//!   port and puts the same addresses on its TAPs, so the devices are made
//!   for this system only, last in a round after every vxmeshd has stopped
//!   and `vxmeshd --cleanup` has removed its TAPs (they are persistent), and
//!   deleted after it (a failed deletion ends the benchmark); they are not
//!   made while any address of the overlay is on a device;
//! - `haproxy`, `haproxy-splice`: HAProxy `mode tcp` in h1 (`roundrobin` for
//!   HTTP, `balance source` for iperf3), without and with `option
//!   splice-auto`;
//! - `vxmesh-overlay`: vxmeshd on h1..h3 as deployed (the default
//!   `mesh_relay_port`) with two services (`web`, round-robin; `iperf`,
//!   maglev: client-address affinity) whose tasks are h2's and h3's overlay
//!   addresses: h1 sends each connection over the underlay to the task
//!   node's relay, which connects to the task locally;
//! - `vxmesh-overlay-norelay`: daemons on the same cluster file with
//!   `mesh_relay_port = 0`: the mesh proxy's upstream goes through h1's TAP,
//!   VXLAN and the task host's TAP (the deployed path before the relay);
//! - `vxmesh-underlay`: the `norelay` daemons with host routes in h1 that
//!   send the tasks' two overlay addresses over the underlay (`10.0.9.2/32
//!   via 198.18.0.2`): the mesh proxy relays exactly as HAProxy does, like
//!   for like. It runs without the relay because with it the routes would
//!   change nothing for the upstream (it goes to the relay's underlay
//!   address either way), only for the health probes.
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
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use vxmesh_netns::{require_root, workspace_bin, Proc, Testbed};

use crate::cpu::Snapshot;
use crate::harness::chart::Panel;
use crate::harness::report::{
    append_log, command_line, failures_section, format_table, loadavg, Machine,
};
use crate::harness::stats::{by_name, median, named, ratio};
use crate::harness::{daemon, output};
use crate::iperf::{self, Mode};

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
pub const SYSTEMS: [&str; 8] = [
    "direct",
    "nft",
    "nft-overlay",
    "haproxy",
    "haproxy-splice",
    "vxmesh-underlay",
    "vxmesh-overlay-norelay",
    "vxmesh-overlay",
];
/// Short names for the chart, in [`SYSTEMS`] order.
const SHORT: [&str; 8] = [
    "direct",
    "nft",
    "nft-ov",
    "haproxy",
    "hap+splice",
    "vxm-ul",
    "vxm-ov-norelay",
    "vxm-ov",
];
/// The vxmesh systems, each compared with [`BASELINES`].
const VXMESH: [&str; 3] = [
    "vxmesh-underlay",
    "vxmesh-overlay-norelay",
    "vxmesh-overlay",
];
/// The systems profiled (when `perf` is there): the mesh as deployed, its
/// path without the relay, and the two references of its goals.
pub const PROFILED: [&str; 4] = [
    "nft-overlay",
    "haproxy",
    "vxmesh-overlay-norelay",
    "vxmesh-overlay",
];
/// The mesh as deployed: the system the goals ([`Metric::goal`]) are for.
const DEPLOYED: &str = "vxmesh-overlay";
/// What the vxmesh figures are divided by.
const BASELINES: [&str; 4] = ["haproxy-splice", "haproxy", "nft", "nft-overlay"];
/// The kernel's vxlan device of `nft-overlay` in h1, h2 and h3.
const KERNEL_DEV: &str = "vxk0";

/// The cluster file: three nodes, the overlay `front`, two services on the
/// tasks of h2 and h3. Probes go to the HTTP port (a bare connect to an
/// iperf3 server can leave it "busy"). `dnsrr`: no VIP, so no VIP listener
/// on the target ports that the tasks' wildcard listeners would clash with
/// (clients come in through the published ports only).
pub const CLUSTER: &str = vxmesh_netns::fixtures::MESH_BENCH;

/// [`CLUSTER`] with `mesh_relay_port = 0`: no relay, the mesh's upstream
/// through the overlay (`vxmesh-overlay-norelay`, `vxmesh-underlay`).
pub fn cluster_norelay() -> String {
    CLUSTER.replacen("[settings]\n", "[settings]\nmesh_relay_port = 0\n", 1)
}

/// The nftables ruleset loaded in h1 for `nft` (tasks at their underlay
/// addresses, out of `eth0`) and `nft-overlay` (at their overlay addresses,
/// out of the kernel's vxlan device).
pub fn nft_rules(overlay: bool) -> String {
    let (t, oif) = if overlay {
        (&OV[1..], KERNEL_DEV)
    } else {
        (&UL[1..], "eth0")
    };
    format!(
        r#"table ip vxbench {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {h1} tcp dport {HTTP_PUB} dnat to numgen random mod 2 map {{ 0 : {a}, 1 : {b} }} : {HTTP_TASK}
    ip daddr {h1} tcp dport {IPERF_PUB} dnat to jhash ip saddr mod 2 map {{ 0 : {a}, 1 : {b} }} : {IPERF_TASK}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr {{ {a}, {b} }} oifname "{oif}" masquerade
  }}
}}
"#,
        h1 = UL[0],
        a = t[0],
        b = t[1],
    )
}

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
    /// table's): direct, nft, nft-overlay, haproxy, haproxy-splice,
    /// vxmesh-underlay, vxmesh-overlay-norelay, vxmesh-overlay [default:
    /// all].
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Skip the profiles (`perf` recordings of an extra iperf3 and an extra
    /// new-connections run of each system in [`PROFILED`] in the last round,
    /// written to mesh-profile.txt). They are taken whenever `perf` is
    /// installed.
    #[arg(long)]
    pub no_profile: bool,
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
    /// Whether the systems of [`PROFILED`] are profiled (last round).
    pub profile: bool,
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
            profile: !a.no_profile,
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
        let profiled = if self.profile {
            let n = PROFILED.iter().filter(|p| self.wants(p)).count();
            n as f64 * 2.0 * (per_run + 3.0)
        } else {
            0.0
        };
        // Two sets of daemons to start, and TIME_WAIT waits.
        let per_round = self.systems.len() as f64 * per_system + 16.0;
        Duration::from_secs_f64(f64::from(self.reps) * per_round + profiled + 5.0)
    }
}

mod ctx;
mod measure;
mod model;
mod render;
mod systems;

use ctx::*;
use measure::*;
pub use model::*;
use render::*;
use systems::*;

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
    let mut s = s;
    let mut notes = Vec::new();
    if s.profile && !crate::profile::available() {
        s.profile = false;
        notes.push("perf not found: no profiles (apt-get install linux-perf)".to_string());
    }
    let clk_tck = crate::cpu::clock_ticks()?;
    std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    let mut machine = Machine::probe();
    let tools = Tools::probe();
    let started = output::started_unix();
    eprintln!(
        "vxmesh-bench mesh: {} s runs, {} rep(s), {} s warm-up; about {} min; vxmeshd {}",
        s.secs,
        s.reps,
        s.warmup,
        s.estimate().as_secs().div_ceil(60),
        vxmeshd.display()
    );
    let t0 = Instant::now();
    let results = measure_all(&s, clk_tck, &vxmeshd, &backend, &mut notes)?;
    machine.loadavg_end = loadavg();
    let elapsed = t0.elapsed();

    let text = table(&s, &machine, &tools, &results);
    let txt = output::table(&s.out, "mesh", &text)?;
    let profiled: Vec<(&str, &crate::profile::PathProfile)> = results
        .iter()
        .filter_map(|r| r.profile.as_ref().map(|p| (r.name, p)))
        .collect();
    if !profiled.is_empty() {
        let pp = s.out.join("mesh-profile.txt");
        std::fs::write(
            &pp,
            crate::profile::render(&profiled, machine.git.as_deref()),
        )
        .with_context(|| format!("writing {}", pp.display()))?;
        notes.push(format!("profiles: {}", pp.display()));
    }

    let panels = panels(&results);
    let png = output::chart(&s.out, "mesh", &panels, 2, (1400, 900), legend, &mut notes)?;
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
    let jp = output::json(&s.out, "mesh", &report)?;
    let broken: Vec<&str> = results
        .iter()
        .filter(|r| s.wants(r.name) && r.no_data())
        .map(|r| r.name)
        .collect();
    output::finish(&notes, &[&txt, &jp, &png], elapsed, &broken)
}

#[cfg(test)]
mod tests;
