//! `vxmesh lab`: the default cluster (`config/lab.toml`, embedded) on three
//! hosts made of network namespaces on this machine. It starts a vxmeshd per
//! host, proves the overlay with ping and a bulk TCP transfer between every
//! pair, then the routing mesh and service discovery ([`mesh`]: the
//! published port answered through every node by tasks on other nodes, the
//! service's name resolved by every node's DNS), prints what it measured,
//! and cleans up (or, with `--keep`, leaves the lab up and prints how to
//! enter it).
//!
//! Everything it needs is in the workspace and iproute2: ping and the
//! transfer are done in Rust, so it runs on a machine without iputils or
//! iperf3.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use vxmesh_testbed::{echo, tcp_bulk, Testbed};

use crate::config;

pub mod mesh;

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
}

fn vxmeshd_path(args: &LabArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.vxmeshd {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let p = me.with_file_name("vxmeshd");
    if !p.exists() {
        bail!(
            "{} not found; build it with `cargo build --release --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// One row of the result table.
struct Row {
    from: String,
    to: String,
    dst: Ipv4Addr,
    rtt_p50_us: f64,
    lost: u32,
    gbit: f64,
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
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
    let daemon = vxmeshd_path(&args)?;
    let mut tb = Testbed::new("lab")?;
    let cfg_path = tb.dir().join("vxmesh.toml");
    std::fs::write(&cfg_path, &text)?;
    let mtu = u32::from(cluster.settings.underlay_mtu);
    println!(
        "lab {}: {} hosts on a bridge, underlay MTU {mtu}",
        tb.suffix(),
        cluster.nodes.len()
    );
    for n in &cluster.nodes {
        tb.add_host(&n.name, &format!("{}/24", n.address), mtu)?;
    }
    for n in &cluster.nodes {
        let sock = tb.dir().join(format!("{}.sock", n.name));
        let ns = tb.ns(&n.name);
        tb.spawn_notify(
            &ns,
            &[
                daemon.to_str().context("vxmeshd path is not UTF-8")?,
                "--config",
                cfg_path.to_str().context("temp path is not UTF-8")?,
                "--node",
                &n.name,
                "--socket",
                sock.to_str().context("temp path is not UTF-8")?,
            ],
            &[],
            Duration::from_secs(10),
        )
        .with_context(|| format!("starting vxmeshd on {}", n.name))?;
        println!(
            "  {:<4} {:<12} vxmeshd ready (admin socket {})",
            n.name,
            n.address,
            sock.display()
        );
    }
    let mut rows = Vec::new();
    let mut port = 5201;
    for net in &cluster.networks {
        let eps: Vec<_> = cluster
            .nodes
            .iter()
            .filter_map(|n| {
                cluster
                    .tap_address(net, &n.name)
                    .map(|ip| (n.name.clone(), ip))
            })
            .collect();
        for (from, _) in &eps {
            for (to, dst) in &eps {
                if from == to {
                    continue;
                }
                let ping = echo(
                    &tb,
                    &tb.ns(from),
                    *dst,
                    20,
                    Duration::from_millis(10),
                    Duration::from_secs(5),
                )?;
                port += 1;
                let xfer = tcp_bulk(
                    &tb,
                    &tb.ns(to),
                    &tb.ns(from),
                    *dst,
                    port,
                    args.bytes,
                    Duration::from_secs(60),
                )?;
                rows.push(Row {
                    from: from.clone(),
                    to: to.clone(),
                    dst: *dst,
                    rtt_p50_us: ping.p50().unwrap_or(f64::NAN),
                    lost: ping.sent - ping.received,
                    gbit: xfer.gbit_per_s(),
                });
            }
        }
    }
    println!();
    println!(
        "{:<6} {:<6} {:<12} {:>12} {:>6} {:>14}",
        "FROM", "TO", "OVERLAY IP", "RTT p50 µs", "LOST", "TCP Gbit/s"
    );
    for r in &rows {
        println!(
            "{:<6} {:<6} {:<12} {:>12.0} {:>6} {:>14.2}",
            r.from, r.to, r.dst, r.rtt_p50_us, r.lost, r.gbit
        );
    }
    let bad: Vec<&Row> = rows
        .iter()
        .filter(|r| r.lost > 0 || r.gbit <= 0.0)
        .collect();
    let mesh = mesh::prove(&mut tb, &cluster)?;
    let mesh_problems = match &mesh {
        Some(m) => {
            m.print();
            m.problems()
        }
        None => Vec::new(),
    };
    if args.keep {
        keep(&tb, &cluster);
    }
    drop(tb);
    if !bad.is_empty() {
        bail!(
            "{} of {} paths lost packets or moved no data",
            bad.len(),
            rows.len()
        );
    }
    if !mesh_problems.is_empty() {
        bail!("the mesh: {}", mesh_problems.join("; "));
    }
    match &mesh {
        Some(m) => println!(
            "\noverlay OK: every pair reached each other; mesh OK: `{}` answered through every node by tasks on other nodes, its name resolved everywhere; the lab was removed",
            m.service
        ),
        None => println!("\noverlay OK: every pair reached each other; the lab was removed"),
    }
    Ok(())
}

/// `--keep`: tells how to enter the lab and waits for Enter.
fn keep(tb: &Testbed, cluster: &crate::model::Cluster) {
    println!("\nThe lab stays up. Enter a host with:");
    for n in &cluster.nodes {
        println!("  ip netns exec {} bash", tb.ns(&n.name));
    }
    println!(
        "and ask a daemon with: vxmesh --socket {}/h1.sock status",
        tb.dir().display()
    );
    println!("Press Enter to tear it down.");
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}
