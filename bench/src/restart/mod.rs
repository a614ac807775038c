//! `vxmesh-bench restart`: what traffic sees while h1's vxmeshd changes
//! hands, beside HAProxy reloading the same kind of published port, in one
//! run on the same hosts:
//!
//! - **handover**: SIGUSR2, the daemon hands its node to a new process
//!   (descriptors by SCM_RIGHTS) and leaves;
//! - **crash**: SIGKILL, then the next process started at once with the
//!   descriptors a stand-in for systemd's store kept (its real protocol:
//!   `FDSTORE=1`, `LISTEN_FDS`);
//! - **haproxy -sf**: HAProxy in h1 on port 8081 to the same task, reloaded
//!   with `-sf <old pid> -x <stats socket>` (listeners passed over).
//!
//! During each event h2 pings h1's overlay address every millisecond and
//! sends it a 50 kpps UDP stream across the overlay, and a client asks an
//! HTTP request every 10 ms through h1's published port (vxmesh) or
//! HAProxy's. Reported per event: the longest gap between ping replies,
//! pings and datagrams lost, HTTP requests failed (medians over rounds, and
//! the worst round).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use vxmesh_netns::fdstore::FdStore;
use vxmesh_netns::{workspace_bin, Testbed};

mod events;
mod streams;

use events::{haproxy, haproxy_cfg, reap, Node, HAPROXY_PORT};
use streams::{measure, Cost};

use crate::harness::report::{format_table, Machine};
use crate::harness::stats::median;

#[derive(clap::Args, Debug)]
pub struct RestartArgs {
    /// Rounds of the three events (medians and the worst are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Where the table and the JSON go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// The overlay benchmark's two hosts and a service `web` with its task on
/// h2, published on every node's port 8080.
fn cluster() -> String {
    format!(
        "{}{}",
        vxmesh_netns::fixtures::TWO_HOSTS,
        r#"
[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.2"]
ports = [{ published = 8080, target = 80, protocol = "tcp" }]
health = { kind = "tcp", interval_ms = 200, timeout_ms = 100, rise = 1, fall = 3 }
drain_ms = 5000
"#
    )
}

pub fn run_restart(args: RestartArgs) -> anyhow::Result<()> {
    let machine = Machine::probe();
    let mut tb = Testbed::new("brst")?;
    for (h, a) in [
        ("h1", "198.18.0.1/24"),
        ("h2", "198.18.0.2/24"),
        ("cl", "198.18.0.100/24"),
    ] {
        tb.add_host(h, a, 1500)?;
    }
    for h in ["h1", "h2"] {
        for k in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            tb.exec(&tb.ns(h), &["sysctl", "-qw", k])?;
        }
    }
    let cfg = tb.dir().join("vxmesh.toml");
    std::fs::write(&cfg, cluster())?;
    let bin = workspace_bin("vxmeshd");
    let dir = tb.dir().to_path_buf();
    let daemon_args = |h: &str| -> Vec<String> {
        vec![
            bin.display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "--node".into(),
            h.into(),
            "--socket".into(),
            dir.join(format!("{h}.sock")).display().to_string(),
            "--state-dir".into(),
            dir.join(format!("state-{h}")).display().to_string(),
        ]
    };
    let h2_args = daemon_args("h2");
    let h2_args: Vec<&str> = h2_args.iter().map(String::as_str).collect();
    tb.spawn_notify("h2", &h2_args, &[], Duration::from_secs(15))?;
    let backend = workspace_bin("vxmesh-bench-backend");
    let backend = backend.to_str().context("path")?.to_string();
    tb.spawn(
        "h2",
        &[&backend, "--listen", "10.0.9.2:80", "--name", "t2"],
        &[],
    )?;
    let mut node = Node {
        store: FdStore::bind(tb.dir()),
        args: daemon_args("h1"),
        log: tb.dir().join("h1-vxmeshd.log"),
        ns: tb.ns("h1"),
        current: None,
    };
    node.start()?;
    // The task is up on h1 before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(15);
    while tb
        .in_ns(&tb.ns("cl"), || {
            crate::http::get(
                SocketAddr::from(([198, 18, 0, 1], 8080)),
                "/",
                Duration::from_secs(1),
            )
            .is_err()
        })
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            bail!("web never answered through h1");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = tb.dir().join("haproxy.stats");
    let hcfg = tb.dir().join("haproxy.cfg");
    std::fs::write(&hcfg, haproxy_cfg(&stats))?;
    let mut hap = Some(haproxy(&tb, &hcfg, &stats, None)?);
    let mut costs: Vec<(&str, Vec<Cost>)> = vec![
        ("handover", vec![]),
        ("crash", vec![]),
        ("haproxy -sf", vec![]),
    ];
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        costs[0].1.push(measure(&tb, 8080, || node.handover())?);
        costs[1].1.push(measure(&tb, 8080, || node.crash())?);
        let c = measure(&tb, HAPROXY_PORT, || {
            let old = hap.take().map(|p| {
                let pid = p.0;
                std::mem::forget(p);
                pid
            });
            hap = Some(haproxy(&tb, &hcfg, &stats, old)?);
            Ok(())
        })?;
        // The ping and UDP streams cross the overlay, which HAProxy's
        // reload does not touch; only its HTTP figures are its own.
        costs[2].1.push(c);
        reap();
    }
    drop(hap);
    drop(node);
    report(&args, &machine, &costs)
}

fn report(
    args: &RestartArgs,
    machine: &Machine,
    costs: &[(&str, Vec<Cost>)],
) -> anyhow::Result<()> {
    let med = |v: &[Cost], f: fn(&Cost) -> f64| median(v.iter().map(f)).unwrap_or(0.0);
    let max = |v: &[Cost], f: fn(&Cost) -> f64| v.iter().map(f).fold(0.0, f64::max);
    let headers: Vec<String> = [
        "event",
        "ping gap ms p50",
        "(worst)",
        "pings lost",
        "UDP lost",
        "(of)",
        "HTTP failed",
        "(of)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows = Vec::new();
    let mut j = Vec::new();
    for (name, v) in costs {
        let overlay = *name != "haproxy -sf";
        let cell = |x: f64, on: bool| if on { format!("{x:.0}") } else { "-".into() };
        rows.push(vec![
            name.to_string(),
            cell(med(v, |c| c.ping_gap_ms), overlay),
            cell(max(v, |c| c.ping_gap_ms), overlay),
            cell(med(v, |c| c.pings_lost as f64), overlay),
            cell(med(v, |c| c.udp_lost as f64), overlay),
            cell(med(v, |c| c.udp_sent as f64), overlay),
            format!("{:.0}", med(v, |c| c.http_failed as f64)),
            format!("{:.0}", med(v, |c| (c.http_ok + c.http_failed) as f64)),
        ]);
        j.push(json!({
            "event": name,
            "rounds": v.iter().map(|c| json!({
                "ping_gap_ms": c.ping_gap_ms, "pings_sent": c.pings_sent, "pings_lost": c.pings_lost,
                "udp_sent": c.udp_sent, "udp_lost": c.udp_lost,
                "http_ok": c.http_ok, "http_failed": c.http_failed,
            })).collect::<Vec<_>>(),
        }));
    }
    let commit = crate::harness::report::commit();
    let text = format!(
        "vxmesh-bench restart: h1's vxmeshd handed over (SIGUSR2), crashed (SIGKILL, restarted at once with the descriptors a stand-in for systemd's store kept), and HAProxy in h1 reloaded (-sf -x), {} round(s) (medians, worst gap in brackets)\n\
         commit {commit}; machine: nproc {}, kernel {}, {}\n\
         streams during each event: 1 ms ping h2 -> h1 (overlay), 50 kpps UDP h2 -> h1 (overlay, 64 B), HTTP every 10 ms client -> h1's published port (vxmesh :8080, HAProxy :8081, same task)\n\n{}",
        args.rounds,
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        format_table(&headers, &rows)
    );
    print!("{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("restart.txt"), &text)?;
    std::fs::write(
        args.out.join("restart.json"),
        serde_json::to_string_pretty(
            &json!({ "commit": commit, "machine": machine, "events": j }),
        )?,
    )?;
    Ok(())
}
