//! `vxmesh-bench convergence --simulated`: convergence at scale. Beside the
//! three real vxmeshd hosts, 1,000 simulated nodes (by default) that only
//! write to etcd: each registers `nodes/<name>` under its own lease, kept
//! alive at a third of its TTL, and puts its 100 endpoints under the same
//! lease, node and endpoints in one transaction (101 operations: below
//! etcd's default `--max-txn-ops` of 128; about 13 kB, far below the default
//! `--max-request-bytes` of 1.5 MiB; 100,000 keys of ~130 bytes are ~15 MB
//! of the default 2 GB quota). Measured, from the real hosts' admin APIs:
//!
//! - **initial load**: from the first write to all 100,000 endpoints being
//!   in every real host's running table;
//! - **changes**: service scale and endpoint add through the CLI on h1 to
//!   live on every real host, p50/p99, with the 100,000 present;
//! - **node loss**: a simulated node whose keep-alives stop (as if killed)
//!   or whose lease is revoked (a clean stop), to its endpoints leaving
//!   every real host's table, against the lease TTL;
//! - **table apply**: each host's `last_apply` after every change (validate:
//!   the snapshot assembled and checked; apply: tables built and swapped)
//!   and the `vxmesh_table_apply_seconds` histograms.
//!
//! The simulator runs on its own thread inside the namespace `sim` on the
//! underlay (a tokio runtime driving etcd-client); the bench talks to it
//! over a channel. Simulated nodes' addresses are in 198.19.0.0/16, where
//! nothing listens and no route leads: a frame flooded to them fails to
//! send and is counted, nothing leaves the testbed.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::convergence::{
    cli, live_endpoints, measure_changes, percentiles, print_changes, Cluster, ConvergenceArgs,
    ETCD,
};

/// The daemons' default key prefix.
const PREFIX: &str = "/vxmesh";
/// Connections the simulator spreads its requests and keep-alives over.
const CLIENTS: usize = 4;
/// Transactions in flight during the initial load (more only makes etcd's
/// apply lag its log on two cores).
const WRITERS: usize = 4;

/// Name, underlay address and endpoint `j` of simulated node `i`.
fn sim_name(i: u32) -> String {
    format!("s{i:04}")
}

fn sim_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// 10.1.0.1 upwards: clear of the real hosts' 10.0.x.y and of the VIP pool.
fn sim_endpoint(i: u32, j: u32, per: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i * per + j + 1)
}

enum Cmd {
    /// Grant every lease, start the keep-alives, write every node and
    /// endpoint; answers with the seconds the writes took.
    Load(std_mpsc::Sender<anyhow::Result<f64>>),
    /// Stop keeping node `i`'s lease alive (a killed node).
    Kill(u32, std_mpsc::Sender<anyhow::Result<()>>),
    /// Revoke node `i`'s lease (a clean stop).
    Revoke(u32, std_mpsc::Sender<anyhow::Result<()>>),
}

/// The simulator's state on its thread.
struct Sim {
    clients: Vec<Client>,
    nodes: u32,
    per: u32,
    ttl: i64,
    leases: Vec<i64>,
    keepers: Vec<JoinHandle<()>>,
}

impl Sim {
    fn client(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }

    async fn load(&mut self) -> anyhow::Result<f64> {
        // Leases first, granted in parallel over the connections; each is
        // kept alive from the moment it exists.
        let period = Duration::from_millis(self.ttl as u64 * 1000 / 3);
        let mut grants = Vec::new();
        for k in 0..CLIENTS {
            let mut c = self.client(k);
            let (nodes, ttl) = (self.nodes, self.ttl);
            grants.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (k as u32..nodes).step_by(CLIENTS) {
                    let id = c.lease_grant(ttl, None).await?.id();
                    let keeper = tokio::spawn(keep_alive(c.clone(), id, period));
                    ids.push((i, id, keeper));
                }
                Ok::<_, etcd_client::Error>(ids)
            }));
        }
        self.leases = vec![0; self.nodes as usize];
        let mut keepers: Vec<Option<JoinHandle<()>>> = (0..self.nodes).map(|_| None).collect();
        for g in grants {
            for (i, id, keeper) in g.await?? {
                self.leases[i as usize] = id;
                keepers[i as usize] = Some(keeper);
            }
        }
        self.keepers = keepers.into_iter().flatten().collect();
        // One transaction per node: its registration and its endpoints.
        let t0 = Instant::now();
        let next = Arc::new(AtomicU32::new(0));
        let leases = Arc::new(self.leases.clone());
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (mut c, next, leases) = (self.client(w), next.clone(), leases.clone());
            let (nodes, per, ttl) = (self.nodes, self.per, self.ttl);
            writers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= nodes {
                        return Ok::<_, etcd_client::Error>(());
                    }
                    let lease = leases[i as usize];
                    c.txn(Txn::new().and_then(node_ops(i, per, lease, ttl)))
                        .await?;
                }
            }));
        }
        for w in writers {
            w.await??;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Load(reply) => {
                let _ = reply.send(self.load().await);
            }
            Cmd::Kill(i, reply) => {
                let r = match self.keepers.get(i as usize) {
                    Some(k) => {
                        k.abort();
                        Ok(())
                    }
                    None => Err(anyhow!("no simulated node {i}")),
                };
                let _ = reply.send(r);
            }
            Cmd::Revoke(i, reply) => {
                if let Some(k) = self.keepers.get(i as usize) {
                    k.abort();
                }
                let id = self.leases.get(i as usize).copied().unwrap_or(0);
                let mut c = self.client(i as usize);
                let r = c.lease_revoke(id).await.map(|_| ()).map_err(Into::into);
                let _ = reply.send(r);
            }
        }
    }
}

/// Keeps lease `id` alive every `period` (the first at once) until the
/// task is aborted. A busy etcd answers "request timed out" now and then
/// (its apply lags its log during the load): the stream is opened again
/// and the keep-alive retried, as vxmeshd does, instead of letting the
/// lease lapse.
async fn keep_alive(mut c: Client, id: i64, period: Duration) {
    loop {
        if let Ok((mut keeper, mut answers)) = c.lease_keep_alive(id).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match answers.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    // The lease is gone: nothing left to keep.
                    Ok(Some(_)) => return,
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operations that register simulated node `i` and its endpoints.
fn node_ops(i: u32, per: u32, lease: i64, ttl: i64) -> Vec<TxnOp> {
    let name = sim_name(i);
    let under = || Some(PutOptions::new().with_lease(lease));
    let node = json!({
        "version": 1,
        "spec": { "name": name, "address": sim_address(i).to_string() },
        "lease": lease,
        "ttl_s": ttl,
    });
    let mut ops = vec![TxnOp::put(
        format!("{PREFIX}/nodes/{name}"),
        node.to_string(),
        under(),
    )];
    for j in 0..per {
        let ip = sim_endpoint(i, j, per).to_string();
        let doc = json!({
            "version": 1,
            "spec": { "network": "front", "node": name, "ip": ip },
        });
        ops.push(TxnOp::put(
            format!("{PREFIX}/endpoints/front/{ip}"),
            doc.to_string(),
            under(),
        ));
    }
    ops
}

/// The bench's handle on the simulator thread.
struct Simulator {
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    thread: Option<std::thread::JoinHandle<Result<anyhow::Result<()>, vxmesh_netns::Error>>>,
}

impl Simulator {
    fn start(c: &Cluster, nodes: u32, per: u32, ttl: i64) -> anyhow::Result<Simulator> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let thread =
            c.tb.thread_in_ns(&c.tb.ns("sim"), move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut clients = Vec::new();
                    for _ in 0..CLIENTS {
                        clients.push(Client::connect([ETCD], None).await?);
                    }
                    let mut sim = Sim {
                        clients,
                        nodes,
                        per,
                        ttl,
                        leases: Vec::new(),
                        keepers: Vec::new(),
                    };
                    while let Some(cmd) = rx.recv().await {
                        sim.handle(cmd).await;
                    }
                    for k in &sim.keepers {
                        k.abort();
                    }
                    Ok(())
                })
            })?;
        Ok(Simulator {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn ask<T>(&self, cmd: impl FnOnce(std_mpsc::Sender<T>) -> Cmd) -> anyhow::Result<T> {
        let (reply, answer) = std_mpsc::channel();
        self.tx
            .as_ref()
            .context("simulator stopped")?
            .send(cmd(reply))
            .map_err(|_| anyhow!("the simulator thread ended"))?;
        answer
            .recv()
            .map_err(|_| anyhow!("the simulator thread ended"))
    }

    /// Ends the thread (its leases then expire on their own).
    fn stop(&mut self) -> anyhow::Result<()> {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow!("the simulator thread panicked"))??
                .context("simulator")?;
        }
        Ok(())
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Join before the testbed drops: a live socket keeps a namespace.
        let _ = self.stop();
    }
}

/// `vxmesh_table_apply_seconds` `_count` and `_sum` of one step, from a
/// host's `/metrics`.
fn apply_histogram(sock: &PathBuf, step: &str) -> anyhow::Result<(f64, f64)> {
    let out = std::process::Command::new(vxmesh_netns::workspace_bin("vxmesh"))
        .arg("--socket")
        .arg(sock)
        .arg("metrics")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |suffix: &str| {
        let name = format!("vxmesh_table_apply_seconds_{suffix}{{step=\"{step}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow!("{name} not in {}'s metrics", sock.display()))
    };
    Ok((value("count")?, value("sum")?))
}

#[derive(Serialize)]
struct Report {
    sim_nodes: u32,
    sim_endpoints: u32,
    sim_ttl_s: i64,
    daemon_ttl_s: u32,
    load_write_s: f64,
    load_live_s: f64,
    scale_ms: Vec<f64>,
    add_ms: Vec<f64>,
    kill_ms: Vec<f64>,
    revoke_ms: Vec<f64>,
    validate_s: Vec<f64>,
    apply_s: Vec<f64>,
    /// Per host: (applies, mean seconds) of each step over the whole run.
    histograms: Vec<(String, f64, f64, f64, f64)>,
}

pub fn run(a: &ConvergenceArgs) -> anyhow::Result<()> {
    if a.sim_endpoints > 127 || a.sim_nodes > 2500 {
        bail!("--sim-endpoints is at most 127 (one transaction per node) and --sim-nodes at most 2500");
    }
    let mut c = Cluster::start(a.ttl)?;
    c.tb.add_host("sim", "198.18.0.251/24", 1500)?;
    let limit = Duration::from_secs(a.timeout);
    let mut sim = Simulator::start(&c, a.sim_nodes, a.sim_endpoints, a.sim_ttl)?;
    let total = (a.sim_nodes * a.sim_endpoints) as usize + 3;

    // (a) The initial load.
    let t0 = Instant::now();
    let write_s = sim.ask(Cmd::Load)??;
    eprintln!("written to etcd in {write_s:.1} s; waiting for the hosts");
    c.until_endpoints(total, Duration::from_secs(600).max(limit))?;
    let live_s = t0.elapsed().as_secs_f64();
    eprintln!("live on every host after {live_s:.1} s");

    // (b) Changes with everything present, (d) the applies they caused.
    let ch = measure_changes(&c, a.changes, total, limit)?;
    let mut now = total + a.changes;

    // (c) Simulated nodes lost: keep-alives stopped, then leases revoked.
    let (mut kill_ms, mut revoke_ms) = (Vec::new(), Vec::new());
    for k in 0..a.kills {
        for (revoke, out) in [(false, &mut kill_ms), (true, &mut revoke_ms)] {
            let node = (2 * k + u32::from(revoke)) * 7 % a.sim_nodes;
            let t0 = Instant::now();
            if revoke {
                sim.ask(|r| Cmd::Revoke(node, r))??;
            } else {
                sim.ask(|r| Cmd::Kill(node, r))??;
            }
            now -= a.sim_endpoints as usize;
            c.until_endpoints(now, Duration::from_secs(a.sim_ttl as u64) + limit)?;
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut histograms = Vec::new();
    for (i, s) in c.socks.iter().enumerate() {
        let (vn, vs) = apply_histogram(s, "validate")?;
        let (an, asum) = apply_histogram(s, "apply")?;
        histograms.push((format!("h{}", i + 1), vn, vs / vn, an, asum / an));
    }
    let end = live_endpoints(&cli(&c.socks[0], &["status"])?);
    sim.stop()?;

    println!(
        "SCALE  {} simulated nodes x {} endpoints (+3 real hosts), simulated lease TTL {} s, daemons' {} s",
        a.sim_nodes, a.sim_endpoints, a.sim_ttl, a.ttl
    );
    println!(
        "initial load      {total} endpoints written in {write_s:.1} s, live on h1, h2, h3 after {live_s:.1} s"
    );
    print_changes(
        &ch,
        &format!("CLI on h1 -> live on h1, h2, h3, {total}+ endpoints present"),
    );
    println!("NODE LOSS         N     p50 ms   p99 ms   max ms   (to its {} endpoints gone from h1, h2, h3; TTL {} s)", a.sim_endpoints, a.sim_ttl);
    for (name, v) in [("keep-alive stop", &kill_ms), ("lease revoked", &revoke_ms)] {
        let (p50, p99, max) = percentiles(v.to_vec());
        println!("{name:<15} {:>4} {p50:>9.1} {p99:>8.1} {max:>8.1}", v.len());
    }
    println!("TABLE APPLY       N     p50 ms   p99 ms   max ms   (per host, after each change, {total}+ endpoints)");
    for (name, v) in [("validate", &ch.validate_s), ("apply", &ch.apply_s)] {
        let ms: Vec<f64> = v.iter().map(|s| s * 1000.0).collect();
        let (p50, p99, max) = percentiles(ms);
        println!("{name:<15} {:>4} {p50:>9.1} {p99:>8.1} {max:>8.1}", v.len());
    }
    println!(
        "HOST   validate: n  mean ms   apply: n  mean ms   (vxmesh_table_apply_seconds, whole run)"
    );
    for (h, vn, vm, an, am) in &histograms {
        println!(
            "{h:<6} {vn:>11} {:>8.1} {an:>10} {:>8.1}",
            vm * 1000.0,
            am * 1000.0
        );
    }
    let report = Report {
        sim_nodes: a.sim_nodes,
        sim_endpoints: a.sim_endpoints,
        sim_ttl_s: a.sim_ttl,
        daemon_ttl_s: a.ttl,
        load_write_s: write_s,
        load_live_s: live_s,
        scale_ms: ch.scale_ms.clone(),
        add_ms: ch.add_ms.clone(),
        kill_ms,
        revoke_ms,
        validate_s: ch.validate_s.clone(),
        apply_s: ch.apply_s.clone(),
        histograms,
    };
    let out = PathBuf::from("bench/out");
    std::fs::create_dir_all(&out)?;
    let path = out.join("convergence-simulated.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}; {end} endpoints live at the end", path.display());
    Ok(())
}
