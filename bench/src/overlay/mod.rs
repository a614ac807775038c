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
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use vxmesh_netns::{require_root, workspace_bin, Proc, Testbed};

use crate::harness::chart::{self, Panel};
use crate::harness::report::{append_log, failures_section, format_table, Machine};
use crate::harness::runs::{
    daemon_status, describe, gbits, offloads, ping_median, ping_rep, reach_and_ping, rep_median,
    PingRep, Rep, RoundArgs, CMD_TIMEOUT, PING_INTERVAL,
};
use crate::harness::stats::{by_name, median, named, ratio};
use crate::harness::{daemon, output};
use crate::iperf::{self, Mode, Outcome};
use crate::profile::{self, kind, CpuProfile, PathProfile, WakeProfile};

/// Underlay addresses of h1 and h2.
const UL: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
/// Overlay addresses of h1 and h2 (kernel vxlan and vxmesh alike).
const OV: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 9, 1), Ipv4Addr::new(10, 0, 9, 2)];
/// Underlay MTU.
const UNDERLAY_MTU: u32 = 1500;
/// The paths, in table order.
pub const PATHS: [&str; 4] = ["underlay", "kernel", "kernel-nooffload", "vxmesh"];
/// How long vxmeshd gets to send READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two runs, so one's tail does not overlap the next.
const SETTLE: Duration = Duration::from_millis(500);

/// The cluster file for the two hosts: `config/lab.toml` without h3.
pub const CLUSTER: &str = vxmesh_netns::fixtures::TWO_HOSTS;

/// Arguments of `vxmesh-bench overlay`.
#[derive(clap::Args, Debug, Clone)]
pub struct OverlayArgs {
    /// Seconds, repetitions, pings, --quick.
    #[command(flatten)]
    pub rounds: RoundArgs,
    /// Offered rate of the UDP runs (iperf3 -b): above what any path
    /// carries, so the figure is what the receiver got.
    #[arg(long, default_value = "2G")]
    pub udp_rate: String,
    /// Directory for overlay.json, overlay.png, overlay.txt and the daemons'
    /// logs.
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
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
        let (secs, reps, pings) = a.rounds.resolve();
        Settings {
            secs,
            reps,
            pings,
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

mod measure;
mod model;
mod paths;
mod render;

use measure::*;
pub use model::*;
use paths::*;
use render::*;

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
    let mut start = output::start(&s.out)?;
    let clk_tck = start.clk_tck;
    eprintln!(
        "vxmesh-bench overlay: {} s runs, {} rep(s), {} pings; about {} min; vxmeshd {}",
        s.secs,
        s.reps,
        s.pings,
        s.estimate().as_secs().div_ceil(60),
        vxmeshd.display()
    );
    let results = measure_all(&s, clk_tck, &vxmeshd, &mut notes)?;
    let elapsed = start.ended();
    let machine = &start.machine;

    let text = table(&s, machine, &results);
    let txt = output::table(&s.out, "overlay", &text)?;

    let profiled: Vec<(&str, &PathProfile)> = results
        .iter()
        .filter_map(|r| r.profile.as_ref().map(|p| (r.name, p)))
        .collect();
    if !profiled.is_empty() {
        let pp = s.out.join("overlay-profile.txt");
        std::fs::write(&pp, profile::render(&profiled, machine.git.as_deref()))
            .with_context(|| format!("writing {}", pp.display()))?;
        notes.push(format!("profiles: {}", pp.display()));
    }

    let panels = panels(&results);
    let png = output::chart(
        &s.out,
        "overlay",
        &panels,
        2,
        (1300, 1000),
        legend,
        &mut notes,
    )?;
    let report = json!({
        "bench": "overlay",
        "started_unix": start.started_unix,
        "elapsed_s": elapsed.as_secs_f64(),
        "machine": machine,
        "settings": s,
        "clk_tck": clk_tck,
        "summary": summary(&results),
        "paths": results,
        "notes": notes,
    });
    let jp = output::json(&s.out, "overlay", &report)?;
    let broken: Vec<&str> = results
        .iter()
        .filter(|r| r.no_data())
        .map(|r| r.name)
        .collect();
    output::finish(&notes, &[&txt, &jp, &png], elapsed, &broken)
}

#[cfg(test)]
mod tests;
