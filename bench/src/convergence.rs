//! `vxmesh-bench convergence`: how long a change made through the etcd store
//! takes to be live on every node. Three vxmeshd hosts on a real etcd
//! (Debian's etcd-server) in namespaces; each change is made with the CLI
//! on h1 and the clock stops when every host's admin API shows it in its
//! running tables (`vxmesh status`: the endpoints of the network's table;
//! `vxmesh service ps`: the task list), polled through the CLI, so the
//! resolution is a few milliseconds.
//!
//! `--simulated` runs the same on top of 1,000 simulated nodes and 100,000
//! endpoints (see [`crate::simulated`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use vxmesh_netns::{workspace_bin, Testbed};

use crate::simulated;

#[derive(Args, Debug)]
pub struct ConvergenceArgs {
    /// Changes of each kind (service scale, endpoint add).
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Lease TTL of the daemons, seconds.
    #[arg(long, default_value_t = 3)]
    pub ttl: u32,
    /// Also run simulated nodes that only write to and watch etcd, each
    /// with its endpoints under its own lease, and measure at that scale.
    #[arg(long)]
    pub simulated: bool,
    /// Simulated nodes (with --simulated).
    #[arg(long, default_value_t = 1000)]
    pub sim_nodes: u32,
    /// Endpoints of each simulated node (with --simulated; at most 127).
    #[arg(long, default_value_t = 100)]
    pub sim_endpoints: u32,
    /// Lease TTL of the simulated nodes, seconds.
    #[arg(long, default_value_t = 5)]
    pub sim_ttl: i64,
    /// Simulated nodes stopped (keep-alive ended) and as many revoked, one
    /// at a time (with --simulated).
    #[arg(long, default_value_t = 3)]
    pub kills: u32,
    /// Longest wait for one change to be live everywhere, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

pub const ETCD: &str = "http://198.18.0.250:2379";
/// The overlay network: a /14, room for 100,000 endpoints below its VIP
/// pool (10.3.0.0 up, a quarter of the subnet under the DNS address).
pub const SUBNET: &str = "10.0.0.0/14";

pub fn cli(sock: &PathBuf, args: &[&str]) -> anyhow::Result<Value> {
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

/// (p50, p99, max).
pub fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// Polls (bounded by `limit`) until `f` holds on every socket.
pub fn until_all(
    socks: &[PathBuf],
    limit: Duration,
    f: impl Fn(&Value) -> bool,
    args: &[&str],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for s in socks {
        loop {
            let v = cli(s, args)?;
            if f(&v) {
                break;
            }
            if Instant::now() > deadline {
                let mut last = v.to_string();
                last.truncate(600);
                bail!(
                    "change not live on {} within {limit:?}; last answer: {last}",
                    s.display()
                );
            }
        }
    }
    Ok(())
}

/// Endpoints in the running table of network `front` (`vxmesh status`).
pub fn live_endpoints(status: &Value) -> usize {
    status["networks"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "front"))
        .and_then(|n| n["endpoints"].as_u64())
        .unwrap_or(0) as usize
}

fn task_count(v: &Value) -> usize {
    v.as_array().map(|a| a.len()).unwrap_or(0)
}

/// etcd and three vxmeshd hosts in namespaces, network `front` with an
/// endpoint on each host and a service `web` with one task.
pub struct Cluster {
    pub tb: Testbed,
    /// Admin sockets of h1, h2, h3.
    pub socks: Vec<PathBuf>,
}

impl Cluster {
    pub fn start(ttl: u32) -> anyhow::Result<Cluster> {
        let mut tb = Testbed::new("conv")?;
        tb.add_host("etcd", "198.18.0.250/24", 1500)?;
        let data = tb.dir().join("etcd-data");
        tb.spawn_etcd(&tb.ns("etcd"), ETCD, &data)?;
        let mut socks = Vec::new();
        for i in 1..=3u8 {
            let h = format!("h{i}");
            tb.add_host(&h, &format!("198.18.0.{i}/24"), 1500)?;
            let sock = tb.dir().join(format!("{h}.sock"));
            let ns = tb.ns(&h);
            let ttl = ttl.to_string();
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
        let net = [
            "network", "create", "front", "--vni", "4096", "--subnet", SUBNET,
        ];
        cli(&h1, &net)?;
        for i in 1..=3 {
            let (ip, node) = (format!("10.0.9.{i}"), format!("h{i}"));
            cli(&h1, &["endpoint", "add", "front", &ip, "--node", &node])?;
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
        let c = Cluster { tb, socks };
        c.until_tasks(1, Duration::from_secs(10))?;
        Ok(c)
    }

    fn until_tasks(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        until_all(
            &self.socks,
            limit,
            |v| task_count(v) == n,
            &["service", "ps", "web"],
        )
    }

    /// Polls until every host runs exactly `n` endpoints in `front`.
    pub fn until_endpoints(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        until_all(&self.socks, limit, |v| live_endpoints(v) == n, &["status"])
    }
}

/// What [`measure_changes`] found: milliseconds from the CLI call to live
/// on every host.
pub struct Changes {
    pub scale_ms: Vec<f64>,
    pub add_ms: Vec<f64>,
    /// After each change, every host's `last_apply` (validate and apply
    /// seconds), for the table-apply time at this size.
    pub validate_s: Vec<f64>,
    pub apply_s: Vec<f64>,
}

impl Changes {
    fn sample_applies(&mut self, c: &Cluster) -> anyhow::Result<()> {
        for s in &c.socks {
            let last = &cli(s, &["status"])?["last_apply"];
            self.validate_s
                .push(last["validate_s"].as_f64().unwrap_or(f64::NAN));
            self.apply_s
                .push(last["apply_s"].as_f64().unwrap_or(f64::NAN));
        }
        Ok(())
    }
}

/// `changes` service scales (1 <-> 2 tasks), then `changes` endpoint adds
/// (owned by h2), each from the CLI on h1 until live on every host.
/// `endpoints` is how many `front` runs before the first add.
pub fn measure_changes(
    c: &Cluster,
    changes: usize,
    endpoints: usize,
    limit: Duration,
) -> anyhow::Result<Changes> {
    let h1 = &c.socks[0];
    let mut out = Changes {
        scale_ms: Vec::new(),
        add_ms: Vec::new(),
        validate_s: Vec::new(),
        apply_s: Vec::new(),
    };
    for i in 0..changes {
        let want = if i % 2 == 0 { 2 } else { 1 };
        let t0 = Instant::now();
        let mut args = vec!["service", "scale", "web"];
        args.extend(&["10.0.9.2", "10.0.9.3"][..want]);
        cli(h1, &args)?;
        c.until_tasks(want, limit)?;
        out.scale_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        out.sample_applies(c)?;
    }
    for i in 0..changes {
        let ip = format!("10.0.{}.{}", 10 + i / 200, 1 + i % 200);
        let t0 = Instant::now();
        cli(h1, &["endpoint", "add", "front", &ip, "--node", "h2"])?;
        c.until_endpoints(endpoints + 1 + i, limit)?;
        out.add_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        out.sample_applies(c)?;
    }
    Ok(out)
}

/// The p50/p99/max table of the change latencies.
pub fn print_changes(ch: &Changes, what: &str) {
    println!("CHANGE            N     p50 ms   p99 ms   max ms   ({what})");
    for (name, v) in [
        ("service scale", &ch.scale_ms),
        ("endpoint add", &ch.add_ms),
    ] {
        let n = v.len();
        let (p50, p99, max) = percentiles(v.clone());
        println!("{name:<15} {n:>4} {p50:>9.1} {p99:>8.1} {max:>8.1}");
    }
}

pub fn run_convergence(a: ConvergenceArgs) -> anyhow::Result<()> {
    if a.simulated {
        return simulated::run(&a);
    }
    let c = Cluster::start(a.ttl)?;
    let limit = Duration::from_secs(a.timeout);
    let ch = measure_changes(&c, a.changes, 3, limit)?;
    print_changes(&ch, "CLI on h1 -> live on h1, h2, h3");
    Ok(())
}
