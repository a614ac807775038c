//! `vxmesh-bench encryption`: what sealing every datagram costs, h1 -> h2
//! on one testbed in one run, over three paths:
//!
//! - `plain`: the vxmesh network `front` (VNI 4096, `10.0.9.0/24`, MTU
//!   underlay - 50 = 1450);
//! - `encrypted`: the vxmesh network `sealed` (VNI 4100, `10.0.10.0/24`,
//!   `encrypted = true`, MTU underlay - 82 = 1418), Noise IK sessions and
//!   AES-256-GCM or ChaCha20-Poly1305;
//! - `wireguard-go`: a userspace WireGuard tunnel between the same hosts
//!   (`10.0.11.0/24`, UDP 51820), Debian's `wireguard-go` configured with
//!   `wg`, its MTU set to the encrypted network's (the kernel here has no
//!   WireGuard module, so the userspace one is the reference).
//!
//! Both vxmesh networks are served by the same two daemons, on one cluster
//! file: each daemon starts once with its node key in its state directory,
//! and the sessions are established (bounded wait) before anything is
//! measured. wireguard-go runs beside them on its own port. Every round
//! measures the three paths in turn (pings, iperf3 TCP 1 stream and -P 2,
//! UDP 64 B at a fixed offered rate), so a passing load on the machine
//! falls on every path rather than one; the table shows medians, the
//! encrypted/plain and encrypted/wireguard-go ratios and the goals.
//!
//! Every load is bounded (`iperf3 -t`, a count of pings, a fixed UDP rate,
//! a hard timeout on every command); every process is the [`Testbed`]'s
//! and is stopped by its pid, and the testbed removes the namespaces when
//! it drops, also on error: failures propagate with `?`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use vxmesh_netns::{require_root, workspace_bin, Proc, Testbed};

use crate::harness::report::{command_line, commit, failures_section, format_table, Machine};
use crate::harness::runs::{
    daemon_status, describe, gbits, offloads, ping_median, reach_and_ping, rep_median, PingRep,
    Rep, RoundArgs, CMD_TIMEOUT,
};
use crate::harness::stats::{by_name, named, ratio};
use crate::harness::{daemon, output};
use crate::iperf::{self, Mode};

mod measure;
mod model;
mod render;
mod setup;

use measure::*;
pub use model::*;
use render::*;
use setup::*;

/// Underlay addresses of h1 and h2.
const UL: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
/// Underlay MTU.
const UNDERLAY_MTU: u32 = 1500;
/// vxmesh's overhead on an encrypted network (outer IPv4, UDP, VXLAN,
/// inner Ethernet and the seal): its MTU is the underlay's less this.
const ENCRYPTED_OVERHEAD: u32 = 82;
/// The paths, in table order.
pub const PATHS: [&str; 3] = ["plain", "encrypted", "wireguard-go"];
/// How long vxmeshd gets to send READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the sessions of the encrypted network get to be established.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two runs, so one's tail does not overlap the next.
const SETTLE: Duration = Duration::from_millis(500);

/// Arguments of `vxmesh-bench encryption`.
#[derive(clap::Args, Debug, Clone)]
pub struct EncryptionArgs {
    /// Seconds, repetitions, pings, --quick.
    #[command(flatten)]
    pub rounds: RoundArgs,
    /// Datagrams per second the UDP 64 B runs offer (a fixed, bounded
    /// load; the figure is what h2 received).
    #[arg(long, default_value_t = 150_000)]
    pub udp_pps: u32,
    /// Directory for encryption.txt and encryption.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
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
    /// UDP 64 B offered rate, datagrams per second.
    pub udp_pps: u32,
    /// Output directory.
    pub out: PathBuf,
}

impl Settings {
    /// Resolves defaults: explicit values win over `--quick`.
    pub fn from_args(a: &EncryptionArgs) -> Settings {
        let (secs, reps, pings) = a.rounds.resolve();
        Settings {
            secs,
            reps,
            pings,
            udp_pps: a.udp_pps.max(1),
            out: a.out.clone(),
        }
    }

    /// What iperf3 sends in the UDP runs: 64 B datagrams at `udp_pps`
    /// (iperf3's -b counts payload bits).
    pub fn udp_mode(&self) -> Mode {
        Mode::Udp {
            len: 64,
            rate: (u64::from(self.udp_pps) * 64 * 8).to_string(),
        }
    }

    /// A rough duration of the whole run.
    pub fn estimate(&self) -> Duration {
        let per_run = f64::from(self.secs) + 1.5;
        let per_path = 3.0 * per_run + f64::from(self.pings) * 0.0012 + 1.0;
        Duration::from_secs_f64(f64::from(self.reps) * PATHS.len() as f64 * per_path + 10.0)
    }
}

/// `vxmesh-bench encryption`.
pub fn run_encryption(args: EncryptionArgs) -> anyhow::Result<()> {
    if !require_root() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let s = Settings::from_args(&args);
    let mut versions = Vec::new();
    for (tool, package) in [("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")] {
        match command_line(tool, &["--version"]) {
            // "wireguard-go v0.0.20220316", "wireguard-tools v1.0.20210914 - <site>".
            Some(v) => versions.push(v.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
            None => bail!("{tool} not found: apt-get install {package}"),
        }
    }
    // Panics with a clear message when missing, before any namespace exists.
    let vxmeshd = workspace_bin("vxmeshd");
    let cli = workspace_bin("vxmesh");
    let mut start = output::start(&s.out)?;
    eprintln!(
        "vxmesh-bench encryption: {} s runs, {} rep(s), {} pings, UDP 64 B at {} pps; about {} min; vxmeshd {}",
        s.secs,
        s.reps,
        s.pings,
        s.udp_pps,
        s.estimate().as_secs().div_ceil(60),
        vxmeshd.display()
    );
    let mut notes = Vec::new();
    let mut run = measure_all(&s, start.clk_tck, &vxmeshd, &cli, &mut notes)?;
    run.in_effect.tools = versions;
    let elapsed = start.ended();

    let commit = commit();
    let text = table(&s, &start.machine, &commit, &run);
    let txt = output::table(&s.out, "encryption", &text)?;
    let report = json!({
        "bench": "encryption",
        "commit": commit,
        "started_unix": start.started_unix,
        "elapsed_s": elapsed.as_secs_f64(),
        "machine": start.machine,
        "settings": s,
        "clk_tck": start.clk_tck,
        "in_effect": run.in_effect,
        "summary": summary(&run.paths),
        "goals": goals_json(&run.paths),
        "encryption_cpu_cost_cores_per_gbit_per_s": encryption_cpu_cost(&run.paths),
        "paths": run.paths,
        "notes": notes,
    });
    let jp = output::json(&s.out, "encryption", &report)?;
    let broken: Vec<&str> = run
        .paths
        .iter()
        .filter(|r| r.no_data())
        .map(|r| r.name)
        .collect();
    output::finish(&notes, &[&txt, &jp], elapsed, &broken)
}

#[cfg(test)]
mod tests;
