//! `vxmesh-bench convergence`: how long a change made through the etcd store
//! takes to be live on every node. Three vxmeshd hosts on a real etcd
//! (Debian's etcd-server) in namespaces; each change is made with the CLI
//! on h1 and the clock stops when every host's admin API shows it (polled
//! through the CLI, so the resolution is a few milliseconds).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use vxmesh_testbed::{workspace_bin, Testbed};

#[derive(Args, Debug)]
pub struct ConvergenceArgs {
    /// Changes of each kind (service scale, endpoint add).
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Lease TTL of the daemons, seconds.
    #[arg(long, default_value_t = 3)]
    pub ttl: u32,
}

const ETCD: &str = "http://198.18.0.250:2379";

fn cli(sock: &PathBuf, args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(workspace_bin("vxmesh"))
        .arg("--socket")
        .arg(sock)
        .arg("--json")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("vxmesh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// Polls (bounded, 10 s) until `f` holds on every socket.
fn until_all(socks: &[PathBuf], f: impl Fn(&Value) -> bool, args: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in socks {
        loop {
            if f(&cli(s, args)?) {
                break;
            }
            if Instant::now() > deadline {
                bail!("change not live on {} within 10 s", s.display());
            }
        }
    }
    Ok(())
}

pub fn run_convergence(a: ConvergenceArgs) -> anyhow::Result<()> {
    let mut tb = Testbed::new("conv")?;
    tb.add_host("etcd", "198.18.0.250/24", 1500)?;
    let data = tb.dir().join("etcd-data");
    let peer = "http://127.0.0.1:2380";
    let etcd_ns = tb.ns("etcd");
    tb.spawn(
        &etcd_ns,
        &[
            "etcd",
            "--name",
            "e0",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen-client-urls",
            ETCD,
            "--advertise-client-urls",
            ETCD,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            &format!("e0={peer}"),
        ],
        &[],
    )?;
    let mut socks = Vec::new();
    for i in 1..=3u8 {
        let h = format!("h{i}");
        tb.add_host(&h, &format!("198.18.0.{i}/24"), 1500)?;
        let sock = tb.dir().join(format!("{h}.sock"));
        let ns = tb.ns(&h);
        let ttl = a.ttl.to_string();
        // vxmeshd retries etcd for up to 30 s, so etcd need not be up yet.
        tb.spawn_notify(
            &ns,
            &[
                workspace_bin("vxmeshd").to_str().unwrap(),
                "--store",
                "etcd",
                "--etcd-endpoints",
                ETCD,
                "--node",
                &h,
                "--address",
                &format!("198.18.0.{i}"),
                "--lease-ttl",
                &ttl,
                "--socket",
                sock.to_str().unwrap(),
            ],
            &[("RUST_LOG", "warn")],
            Duration::from_secs(40),
        )
        .with_context(|| format!("vxmeshd on {h}"))?;
        socks.push(sock);
    }
    let h1 = socks[0].clone();
    cli(
        &h1,
        &[
            "network",
            "create",
            "front",
            "--vni",
            "4096",
            "--subnet",
            "10.0.0.0/16",
        ],
    )?;
    for i in 1..=3 {
        cli(
            &h1,
            &[
                "endpoint",
                "add",
                "front",
                &format!("10.0.9.{i}"),
                "--node",
                &format!("h{i}"),
            ],
        )?;
    }
    cli(
        &h1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "front",
            "--task",
            "10.0.9.2",
            "-p",
            "8080:80",
        ],
    )?;
    let tasks = |v: &Value| v.as_array().map(|a| a.len()).unwrap_or(0);
    until_all(&socks, |v| tasks(v) == 1, &["service", "ps", "web"])?;

    let mut scale = Vec::new();
    for i in 0..a.changes {
        let want = if i % 2 == 0 { 2 } else { 1 };
        let list: Vec<&str> = ["10.0.9.2", "10.0.9.3"][..want].to_vec();
        let t0 = Instant::now();
        let mut args = vec!["service", "scale", "web"];
        args.extend(list);
        cli(&h1, &args)?;
        until_all(&socks, |v| tasks(v) == want, &["service", "ps", "web"])?;
        scale.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let mut add = Vec::new();
    for i in 0..a.changes {
        let ip = format!("10.0.{}.{}", 10 + i / 200, 1 + i % 200);
        let t0 = Instant::now();
        cli(&h1, &["endpoint", "add", "front", &ip, "--node", "h2"])?;
        let want = 4 + i;
        until_all(
            &socks,
            |v| v["endpoints"].as_array().map(|a| a.len()).unwrap_or(0) == want,
            &["network", "inspect", "front"],
        )?;
        add.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "CHANGE            N     p50 ms   p99 ms   max ms   (CLI on h1 -> live on h1, h2, h3)"
    );
    for (name, v) in [("service scale", scale), ("endpoint add", add)] {
        let n = v.len();
        let (p50, p99, max) = percentiles(v);
        println!("{name:<15} {n:>4} {p50:>9.1} {p99:>8.1} {max:>8.1}");
    }
    Ok(())
}
