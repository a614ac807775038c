//! `vxmesh-bench containers`: containers on a vxmesh network against
//! containers on **Docker swarm's own overlay** (kernel vxlan inside
//! libnetwork's sandboxes), on the same two namespace hosts with the same
//! two dockerds, in one run:
//!
//! - container-to-container iperf3 TCP (1 stream and -P 2) and ping p50
//!   across hosts, vxmesh / swarm;
//! - the same between the hosts themselves over the vxmesh network (each
//!   node's own address on its bridge), containers / hosts: what attaching
//!   costs;
//! - the time of `docker run --rm` on the vxmesh network, on the swarm
//!   overlay and on a Docker bridge network.
//!
//! Swarm's data path uses UDP 4790 (`--data-path-port`) so that it and
//! vxmeshd (4789) share the hosts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use vxmesh_netns::runtime::{image_tarball, plugin_name, start_plugin_daemon, Docker, IMAGE};
use vxmesh_netns::{workspace_bin, Testbed};

use crate::harness::report::{commit, format_table, Machine};
use crate::harness::stats::{median, ratio};

#[derive(clap::Args, Debug)]
pub struct ContainersArgs {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    pub secs: u32,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Pings per repetition (10 ms apart).
    #[arg(long, default_value_t = 200)]
    pub pings: u32,
    /// `docker run` timings per network.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Where the table and the JSON go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

const ETCD: &str = "198.18.0.250";
const PATHS: [&str; 3] = ["swarm", "vxmesh", "vxmesh-hosts"];

mod measure;
mod render;

use measure::*;
use render::*;

pub fn run_containers(args: ContainersArgs) -> anyhow::Result<()> {
    let machine = Machine::probe();
    let mut tb = Testbed::new("bctr")?;
    tb.add_host("h1", "198.18.0.1/24", 1500)?;
    tb.add_host("h2", "198.18.0.2/24", 1500)?;
    tb.add_host("etcd", &format!("{ETCD}/24"), 1500)?;
    let data = tb.dir().join("etcd-data");
    let etcd_ns = tb.ns("etcd");
    tb.start_etcd(&etcd_ns, &format!("http://{ETCD}:2379"), &data)?;
    let prefix = format!("/{}", tb.suffix());
    let vxmeshd = workspace_bin("vxmeshd");
    let cli = workspace_bin("vxmesh");
    let mut plugins = Vec::new();
    let url = format!("http://{ETCD}:2379");
    for (h, a) in [("h1", "198.18.0.1"), ("h2", "198.18.0.2")] {
        start_plugin_daemon(&mut tb, &vxmeshd, h, a, &url, &prefix)?;
        plugins.push(plugin_name(&tb, h));
    }
    let h1_sock = tb.dir().join("h1.sock");
    let vx = |args: &[&str]| {
        std::process::Command::new(&cli)
            .arg("--socket")
            .arg(&h1_sock)
            .args(args)
            .output()
    };
    ok(
        vx(&[
            "network",
            "create",
            "front",
            "--vni",
            "4096",
            "--subnet",
            "10.0.9.0/24",
            "--attachable",
        ])?,
        "vxmesh network create",
    )?;
    let image = image_tarball(tb.dir(), true)?;
    let d1 = Docker::start(&mut tb, "h1", &image)?;
    let d2 = Docker::start(&mut tb, "h2", &image)?;
    let ds = [&d1, &d2];
    // Docker swarm's overlay, the reference.
    ok(
        d1.docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "198.18.0.1",
            "--data-path-addr",
            "198.18.0.1",
            "--data-path-port",
            "4790",
        ]),
        "docker swarm init",
    )?;
    let token = ok(
        d1.docker(&["swarm", "join-token", "-q", "worker"]),
        "join-token",
    )?;
    ok(
        d2.docker(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            "198.18.0.2",
            "--data-path-addr",
            "198.18.0.2",
            "198.18.0.1:2377",
        ]),
        "docker swarm join",
    )?;
    ok(
        d1.docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "10.0.77.0/24",
            "ov",
        ]),
        "swarm overlay network",
    )?;
    for (d, p) in ds.iter().zip(&plugins) {
        d.vxmesh_network(p, "front", None)?;
        ok(
            d.docker(&["network", "create", "-d", "bridge", "br"]),
            "bridge network",
        )?;
    }
    // Containers: s1/s2 on swarm's overlay, v1/v2 on vxmesh.
    for (d, i) in [(&d1, 1), (&d2, 2)] {
        for (net, c) in [("ov", format!("s{i}")), ("front", format!("v{i}"))] {
            ok(
                d.docker(&[
                    "run",
                    "-d",
                    "--name",
                    &c,
                    "--network",
                    net,
                    IMAGE,
                    "sleep",
                    "3600",
                ]),
                "docker run",
            )?;
        }
    }
    for c in ["s2", "v2"] {
        ok(
            d2.docker(&["exec", "-d", c, "iperf3", "-s"]),
            "iperf3 server",
        )?;
    }
    let s2 = d2.ip_of("s2", "ov")?.to_string();
    let v2 = d2.ip_of("v2", "front")?.to_string();
    // The hosts' own addresses on the vxmesh network.
    let inspect: Value =
        serde_json::from_slice(&vx(&["--json", "network", "inspect", "front"])?.stdout)?;
    let host2 = inspect["endpoints"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["node"] == "h2" && e["container"].is_null())
                .and_then(|e| e["ip"].as_str().map(str::to_string))
        })
        .context("h2's own address on front")?;
    let h2 = tb.ns("h2");
    tb.spawn(&h2, &["iperf3", "-s"], &[])?;
    // Ready: each server answers a short run.
    let secs = args.secs.to_string();
    let count = args.pings.to_string();
    let h1 = tb.ns("h1");
    let mut figs: Vec<Figures> = PATHS.iter().map(|_| Figures::default()).collect();
    let warm = |path: usize| -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let r = measure_tcp(&tb, &d1, path, &s2, &v2, &host2, "1", 1);
            if r.is_ok() || t0.elapsed() > Duration::from_secs(20) {
                return r.map(|_| ());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for (p, name) in PATHS.iter().enumerate() {
        warm(p).with_context(|| format!("{name} never carried a first transfer"))?;
    }
    for rep in 0..args.reps {
        for (p, name) in PATHS.iter().enumerate() {
            let t1 = measure_tcp(&tb, &d1, p, &s2, &v2, &host2, &secs, 1)?;
            let t2 = measure_tcp(&tb, &d1, p, &s2, &v2, &host2, &secs, 2)?;
            let target = [&s2, &v2, &host2][p];
            let ping_args = ["ping", "-c", &count, "-i", "0.01", target.as_str()];
            let out = match p {
                0 => ok(
                    d1.docker(&[&["exec", "s1"][..], &ping_args].concat()),
                    "ping",
                )?,
                1 => ok(
                    d1.docker(&[&["exec", "v1"][..], &ping_args].concat()),
                    "ping",
                )?,
                _ => {
                    let o = tb.exec(&h1, &[&["/bin/busybox"][..], &ping_args].concat())?;
                    String::from_utf8_lossy(&o.stdout).to_string()
                }
            };
            let p50 = ping_p50_us(&out).context("no ping replies")?;
            println!(
                "round {}/{}: {name:<13} TCP {t1:.2} / -P 2 {t2:.2} Gbit/s, ping p50 {p50:.0} µs",
                rep + 1,
                args.reps
            );
            figs[p].tcp1.push(t1);
            figs[p].tcp2.push(t2);
            figs[p].ping_p50_us.push(p50);
        }
    }
    // docker run --rm on each network.
    let mut run_s: Vec<(&str, Vec<f64>)> = vec![("front", vec![]), ("ov", vec![]), ("br", vec![])];
    for _ in 0..args.runs {
        for (net, v) in run_s.iter_mut() {
            let t = Instant::now();
            ok(
                d1.docker(&["run", "--rm", "--network", net, IMAGE, "true"]),
                "docker run --rm",
            )?;
            v.push(t.elapsed().as_secs_f64());
        }
    }
    let _ = d2.docker(&["swarm", "leave", "--force"]);
    let _ = d1.docker(&["swarm", "leave", "--force"]);
    let version = ok(
        d1.docker(&["version", "-f", "{{.Server.Version}}"]),
        "docker version",
    );
    let (text, j) = render(&args, &machine, &figs, &run_s, version.unwrap_or_default());
    println!("\n{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("containers.txt"), &text)?;
    std::fs::write(
        args.out.join("containers.json"),
        serde_json::to_vec_pretty(&j)?,
    )?;
    drop(d2);
    drop(d1);
    Ok(())
}

#[cfg(test)]
mod tests;
