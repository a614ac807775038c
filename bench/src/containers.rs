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

use crate::report::{commit, format_table, Machine};
use crate::stats::{median, ratio};

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

/// What one path measured (all repetitions).
#[derive(Default, Debug)]
struct Figures {
    tcp1: Vec<f64>,
    tcp2: Vec<f64>,
    ping_p50_us: Vec<f64>,
}

fn ok(out: std::process::Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Gbit/s received of an iperf3 `-J` report.
fn iperf_gbit(json: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("no sum_received in {}", v["error"]))
}

/// Median of the `time=X ms` lines of a ping's output, in µs.
fn ping_p50_us(out: &str) -> Option<f64> {
    median(out.lines().filter_map(|l| {
        let t = l.split("time=").nth(1)?;
        t.split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .map(|ms| ms * 1000.0)
    }))
}

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
    let m = |v: &[f64]| median(v.iter().copied());
    let f = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
    let (sw, vm, ho) = (&figs[0], &figs[1], &figs[2]);
    let run_m: Vec<Option<f64>> = run_s.iter().map(|(_, v)| m(v)).collect();
    let headers: Vec<String> = [
        "",
        "swarm overlay",
        "vxmesh",
        "vxmesh hosts",
        "vxmesh/swarm",
        "vxmesh/hosts",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let row = |name: &str, a: Option<f64>, b: Option<f64>, c: Option<f64>, d: usize| {
        vec![
            name.to_string(),
            f(a, d),
            f(b, d),
            f(c, d),
            f(ratio(b, a), 3),
            f(ratio(b, c), 3),
        ]
    };
    let rows = vec![
        row(
            "TCP 1 stream, Gbit/s",
            m(&sw.tcp1),
            m(&vm.tcp1),
            m(&ho.tcp1),
            2,
        ),
        row("TCP -P 2, Gbit/s", m(&sw.tcp2), m(&vm.tcp2), m(&ho.tcp2), 2),
        row(
            "ping p50, µs",
            m(&sw.ping_p50_us),
            m(&vm.ping_p50_us),
            m(&ho.ping_p50_us),
            0,
        ),
        vec![
            "docker run --rm, s".into(),
            f(run_m[1], 3),
            f(run_m[0], 3),
            format!("bridge {}", f(run_m[2], 3)),
            f(ratio(run_m[0], run_m[1]), 3),
            format!("vs bridge {}", f(ratio(run_m[0], run_m[2]), 3)),
        ],
    ];
    let head = format!(
        "vxmesh-bench containers: container h1 -> container h2, iperf3 {} s per run, {} rep(s) (median shown), {} pings at 10 ms (busybox ping) per rep, {} docker runs per network\n\
         commit {}; machine: nproc {}, kernel {}, {}, {}\n\
         swarm overlay: Docker {} swarm, attachable overlay (kernel vxlan, UDP 4790); vxmesh: vxmeshd's Docker driver, etcd store; vxmesh hosts: h1 -> h2's own address on the vxmesh network\n",
        args.secs,
        args.reps,
        args.pings,
        args.runs,
        commit(),
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        machine.iperf3,
        ok(d1.docker(&["version", "-f", "{{.Server.Version}}"]), "docker version").unwrap_or_default(),
    );
    let text = format!("{head}\n{}", format_table(&headers, &rows));
    println!("\n{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("containers.txt"), &text)?;
    let j = json!({
        "commit": commit(),
        "secs": args.secs, "reps": args.reps, "pings": args.pings,
        "paths": PATHS.iter().zip(&figs).map(|(n, f)| json!({
            "path": n, "tcp1_gbit": f.tcp1, "tcp2_gbit": f.tcp2, "ping_p50_us": f.ping_p50_us,
        })).collect::<Vec<_>>(),
        "docker_run_s": run_s.iter().map(|(n, v)| json!({"network": n, "seconds": v})).collect::<Vec<_>>(),
        "ratios": {
            "tcp1_vxmesh_over_swarm": ratio(m(&vm.tcp1), m(&sw.tcp1)),
            "tcp2_vxmesh_over_swarm": ratio(m(&vm.tcp2), m(&sw.tcp2)),
            "ping_p50_vxmesh_over_swarm": ratio(m(&vm.ping_p50_us), m(&sw.ping_p50_us)),
            "tcp1_containers_over_hosts": ratio(m(&vm.tcp1), m(&ho.tcp1)),
            "docker_run_vxmesh_over_swarm": ratio(run_m[0], run_m[1]),
            "docker_run_vxmesh_over_bridge": ratio(run_m[0], run_m[2]),
        },
    });
    std::fs::write(
        args.out.join("containers.json"),
        serde_json::to_vec_pretty(&j)?,
    )?;
    drop(d2);
    drop(d1);
    Ok(())
}

/// One iperf3 TCP run on path `p` (0 swarm, 1 vxmesh, 2 hosts): Gbit/s.
#[allow(clippy::too_many_arguments)]
fn measure_tcp(
    tb: &Testbed,
    d1: &Docker,
    p: usize,
    s2: &str,
    v2: &str,
    host2: &str,
    secs: &str,
    streams: u32,
) -> anyhow::Result<f64> {
    let n = streams.to_string();
    let out = match p {
        0 => ok(
            d1.docker(&["exec", "s1", "iperf3", "-c", s2, "-t", secs, "-P", &n, "-J"]),
            "iperf3 swarm",
        )?,
        1 => ok(
            d1.docker(&["exec", "v1", "iperf3", "-c", v2, "-t", secs, "-P", &n, "-J"]),
            "iperf3 vxmesh",
        )?,
        _ => {
            let o = tb.exec(
                &tb.ns("h1"),
                &["iperf3", "-c", host2, "-t", secs, "-P", &n, "-J"],
            )?;
            String::from_utf8_lossy(&o.stdout).to_string()
        }
    };
    iperf_gbit(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_ping_lines_give_the_median() {
        let out = "PING 10.0.9.2 (10.0.9.2): 56 data bytes\n\
                   64 bytes from 10.0.9.2: seq=0 ttl=64 time=0.300 ms\n\
                   64 bytes from 10.0.9.2: seq=1 ttl=64 time=0.100 ms\n\
                   64 bytes from 10.0.9.2: seq=2 ttl=64 time=0.200 ms\n\
                   round-trip min/avg/max = 0.100/0.200/0.300 ms\n";
        assert_eq!(ping_p50_us(out), Some(200.0));
        assert_eq!(ping_p50_us("no replies"), None);
    }
}
