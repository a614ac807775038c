//! `vxmesh lab`: the default cluster (`config/lab.toml`, embedded) on three
//! hosts made of network namespaces on this machine. It starts a vxmeshd per
//! host, proves the overlay with ping and a bulk TCP transfer between every
//! pair ([`overlay`]), then the routing mesh and service discovery
//! ([`mesh`]: the published port answered through every node by tasks on
//! other nodes, the service's name resolved by every node's DNS), prints
//! what it measured (a table, or JSON with `--json`), and cleans up (or,
//! with `--keep`, leaves the lab up and prints how to enter it).
//!
//! Two kinds of tasks:
//! - by default ([`hosts`]), the cluster file's own store and its tasks as
//!   small HTTP servers in the hosts' namespaces; everything it needs is in
//!   the workspace and iproute2;
//! - with `--docker` ([`docker`]), the etcd store, a dockerd per host using
//!   vxmeshd's Docker driver, and busybox httpd containers labelled as the
//!   service's tasks; needs dockerd, etcd and busybox-static.
//!
//! The lab runs on a thread of its own; Ctrl-C or SIGTERM sets a flag that
//! every step checks ([`interrupted`]), so the lab stops at the next step
//! and removes everything it made on the way out (containers, networks,
//! dockerds, daemons, namespaces), as it does after a failure.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use vxmesh_netns::Testbed;

use crate::config;
use crate::model::Cluster;

pub mod docker;
pub mod hosts;
pub mod mesh;
pub mod overlay;
pub mod report;

use report::Report;

/// The default cluster file, as shipped in `config/lab.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/lab.toml");

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Leave the lab running; print the commands to enter each host.
    #[arg(long)]
    pub keep: bool,
    /// Use this cluster file instead of the embedded default (its nodes
    /// must use 198.18.0.0/15 addresses; each becomes a namespace).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Bytes sent by each bulk transfer.
    #[arg(long, default_value_t = 200 << 20)]
    pub bytes: u64,
    /// Path of vxmeshd (default: next to this binary).
    #[arg(long)]
    pub vxmeshd: Option<PathBuf>,
    /// The tasks are containers: a dockerd per host on vxmeshd's Docker
    /// driver (etcd store), busybox httpd containers labelled
    /// `vxmesh.service=<service>` (needs dockerd, etcd, busybox-static).
    #[arg(long)]
    pub docker: bool,
}

/// Set by Ctrl-C or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// `--json`: progress lines go to stderr, stdout holds only the JSON.
static JSON: AtomicBool = AtomicBool::new(false);

/// An error once Ctrl-C or SIGTERM came: every step of the lab asks.
pub fn interrupted() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A progress line: stdout, or stderr with `--json`.
pub fn note(line: impl Display) {
    if JSON.load(Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn sibling_binary(name: &str, given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found; build it with `cargo build --release --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// What every kind of lab needs: the cluster, its text, the binaries.
pub struct Setup {
    pub cluster: Cluster,
    pub text: String,
    pub vxmeshd: PathBuf,
    /// This binary (the CLI), for `vxmesh network create` and friends.
    pub cli: PathBuf,
    pub bytes: u64,
    pub keep: bool,
}

/// Runs the lab on a thread of its own until it ends, Ctrl-C or SIGTERM
/// (then it stops at its next step and cleans up).
pub async fn run(args: LabArgs, json: bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    JSON.store(json, Ordering::Relaxed);
    let setup = prepare(&args)?;
    let docker = args.docker;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lab".into())
        .spawn(move || {
            let _ = tx.send(build(setup, docker));
        })
        .context("starting the lab thread")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut rx = rx;
    let done = tokio::select! {
        r = &mut rx => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    let Some(done) = done else {
        return stop(rx).await;
    };
    let report = done.context("the lab thread ended without an answer")??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print();
    }
    let problems = report.problems();
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    note(report.verdict());
    Ok(())
}

/// After a signal: waits for the lab thread to clean up.
async fn stop(rx: tokio::sync::oneshot::Receiver<anyhow::Result<Report>>) -> anyhow::Result<()> {
    STOP.store(true, Ordering::Relaxed);
    eprintln!("lab: interrupted, removing what it made");
    let _ = rx.await;
    bail!("interrupted; the lab was removed")
}

fn prepare(args: &LabArgs) -> anyhow::Result<Setup> {
    let (text, path) = match &args.config {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.clone(),
        ),
        None => (
            DEFAULT_CONFIG.to_string(),
            PathBuf::from("config/lab.toml (embedded)"),
        ),
    };
    let cluster = config::parse(&path, &text)?;
    let underlay: ipnet::Ipv4Net = "198.18.0.0/15".parse().expect("a valid prefix");
    for n in &cluster.nodes {
        if !underlay.contains(&n.address) {
            bail!(
                "node {} has address {}: the lab only builds hosts in 198.18.0.0/15",
                n.name,
                n.address
            );
        }
    }
    Ok(Setup {
        vxmeshd: sibling_binary("vxmeshd", args.vxmeshd.as_ref())?,
        cli: std::env::current_exe().context("locating this binary")?,
        cluster,
        text,
        bytes: args.bytes,
        keep: args.keep,
    })
}

/// Builds the lab, measures, and removes it (the testbed's drop, after the
/// kind's own guards).
fn build(setup: Setup, docker: bool) -> anyhow::Result<Report> {
    let mut tb = Testbed::new(if docker { "labd" } else { "lab" })?;
    let mtu = u32::from(setup.cluster.settings.underlay_mtu);
    note(format_args!(
        "lab {}: {} hosts on a bridge, underlay MTU {mtu}{}",
        tb.suffix(),
        setup.cluster.nodes.len(),
        if docker {
            ", tasks in Docker containers"
        } else {
            ""
        }
    ));
    for n in &setup.cluster.nodes {
        interrupted()?;
        tb.add_host(&n.name, &format!("{}/24", n.address), mtu)?;
    }
    let report = if docker {
        docker::run(&mut tb, &setup)
    } else {
        hosts::run(&mut tb, &setup)
    };
    drop(tb);
    report
}

/// `--keep`: tells how to enter the lab and waits for Enter.
pub fn keep(tb: &Testbed, cluster: &Cluster, docker: Option<&Path>) {
    note("\nThe lab stays up. Enter a host with:");
    for n in &cluster.nodes {
        note(format_args!("  ip netns exec {} bash", tb.ns(&n.name)));
    }
    note(format_args!(
        "and ask a daemon with: vxmesh --socket {}/h1.sock status",
        tb.dir().display()
    ));
    if let Some(sock) = docker {
        note(format_args!(
            "and h1's dockerd with: /usr/bin/docker -H unix://{} ps",
            sock.display()
        ));
    }
    note("Press Enter to tear it down.");
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}
