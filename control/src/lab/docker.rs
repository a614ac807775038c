//! `vxmesh lab --docker`: the tasks are real containers. The hosts share an
//! etcd (in a namespace `etcd` on the underlay, .250 of the first node's
//! /24); each runs a vxmeshd on it serving Docker's network and IPAM driver
//! under a name of its own, and a dockerd in the host's namespace (the
//! testbed's [`Docker`] guard). The cluster file's first service with a TCP
//! port and its network are created on etcd through the CLI, then on every
//! host a Docker network on the driver and one busybox httpd container
//! labelled `vxmesh.service=<service>`, answering `<host>/<container>`.
//!
//! It then proves, through the containers: each pings the next host's
//! container by name (Docker's resolver forwards names of other hosts to
//! the network's DNS); every pair of hosts over their own addresses in the
//! network; the service's port answered through every node by containers
//! on other hosts; and the service, its tasks and the containers' names
//! resolved by every node's DNS.
//!
//! The guards remove it all whichever way the run ends: containers and
//! Docker networks first (while the drivers still answer), then the
//! dockerds (by the pid in their pidfile, their mounts undone), then the
//! daemons, etcd, the namespaces and the state directories.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use vxmesh_dataplane::mesh::spec::Protocol;
use vxmesh_netns::runtime::{image_tarball, plugin_name, start_plugin_daemon, Docker, IMAGE};
use vxmesh_netns::Testbed;

use super::report::Report;
use super::{interrupted, mesh, note, overlay, Setup};

/// Pings per container pair (200 ms apart).
const PINGS: &str = "5";

/// One container of the service.
pub struct Container {
    pub name: String,
    pub host: String,
    pub ip: Ipv4Addr,
}

/// One container pinging another host's container by name.
pub struct Ping {
    pub from: String,
    pub to: String,
    /// The address the name resolved to, if it did.
    pub resolved: Option<Ipv4Addr>,
    /// Its real address.
    pub want: Ipv4Addr,
    pub sent: u32,
    pub received: u32,
    pub rtt_p50_us: f64,
}

/// The containers and what they proved.
pub struct Containers {
    pub list: Vec<Container>,
    pub pings: Vec<Ping>,
}

impl Containers {
    pub fn print(&self) {
        println!();
        println!(
            "{:<10} {:<6} {:<12} PING BY NAME",
            "CONTAINER", "HOST", "IP"
        );
        for (c, p) in self.list.iter().zip(&self.pings) {
            let resolved = p.resolved.map_or("nothing".to_string(), |i| i.to_string());
            println!(
                "{:<10} {:<6} {:<12} {} -> {resolved}: {}/{} answered, p50 {:.0} µs",
                c.name, c.host, c.ip, p.to, p.received, p.sent, p.rtt_p50_us
            );
        }
    }

    pub fn to_json(&self) -> Value {
        let ping = |p: &Ping| {
            json!({
                "to": p.to, "resolved": p.resolved.map(|i| i.to_string()),
                "sent": p.sent, "received": p.received, "rtt_p50_us": p.rtt_p50_us,
            })
        };
        Value::Array(
            self.list
                .iter()
                .zip(&self.pings)
                .map(|(c, p)| {
                    json!({ "name": c.name, "host": c.host, "ip": c.ip.to_string(), "ping": ping(p) })
                })
                .collect(),
        )
    }

    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.pings {
            if p.resolved != Some(p.want) {
                out.push(format!(
                    "{} resolved {} to {:?}, not {}",
                    p.from, p.to, p.resolved, p.want
                ));
            }
            if p.sent == 0 || p.received < p.sent {
                out.push(format!(
                    "{} pinging {}: {} of {} answered",
                    p.from, p.to, p.received, p.sent
                ));
            }
        }
        out
    }
}

/// Reads busybox ping's output: the address the name resolved to, sent,
/// received, and the median of the `time=` figures in µs.
fn parse_ping(out: &str) -> (Option<Ipv4Addr>, u32, u32, f64) {
    let resolved = out
        .lines()
        .next()
        .and_then(|l| l.split('(').nth(1))
        .and_then(|l| l.split(')').next())
        .and_then(|a| a.parse().ok());
    let stat = |word: &str| {
        out.lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| {
                l.split(',')
                    .find(|part| part.contains(word))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok().map(|ms| ms * 1000.0))
        .collect();
    times.sort_by(f64::total_cmp);
    let p50 = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    (resolved, stat("transmitted"), stat("received"), p50)
}

/// `vxmesh --socket SOCK --json ARGS...`: stdout.
fn cli(setup: &Setup, sock: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&setup.cli)
        .arg("--socket")
        .arg(sock)
        .arg("--json")
        .args(args)
        .output()
        .context("running vxmesh")?;
    if !out.status.success() {
        bail!(
            "vxmesh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until every node's balancer has `want` tasks of `service`, all
/// up (their health checks rose), at most 30 s.
fn wait_tasks(setup: &Setup, tb: &Testbed, service: &str, want: usize) -> anyhow::Result<()> {
    let t0 = Instant::now();
    for n in &setup.cluster.nodes {
        let sock = tb.dir().join(format!("{}.sock", n.name));
        loop {
            interrupted()?;
            let tasks: Value =
                serde_json::from_str(&cli(setup, &sock, &["service", "ps", service])?)?;
            let up = tasks.as_array().map_or(0, |a| {
                a.iter()
                    .filter(|t| t["state"] == "up" || t["state"] == "slow_start")
                    .count()
            });
            if up == want {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{}'s balancer has {up} of {want} tasks up after 30 s: {tasks}",
                    n.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

pub fn run(tb: &mut Testbed, setup: &Setup) -> anyhow::Result<Report> {
    let cluster = &setup.cluster;
    let (svc, port) = cluster
        .services
        .iter()
        .find_map(|s| {
            s.ports
                .iter()
                .find(|p| p.protocol == Protocol::Tcp)
                .map(|p| (s, p))
        })
        .context("--docker needs a service with a TCP port in the cluster file")?;
    let net = cluster
        .network(&svc.network)
        .context("the service's network")?;
    let first = cluster.nodes.first().context("no nodes")?.address.octets();
    let etcd = Ipv4Addr::new(first[0], first[1], first[2], 250);
    tb.add_host("etcd", &format!("{etcd}/24"), 1500)?;
    let url = format!("http://{etcd}:2379");
    let (etcd_ns, data) = (tb.ns("etcd"), tb.dir().join("etcd-data"));
    tb.start_etcd(&etcd_ns, &url, &data)?;
    note(format_args!("  etcd {etcd:<13} ready"));
    let prefix = format!("/{}", tb.suffix());
    for n in &cluster.nodes {
        interrupted()?;
        let address = n.address.to_string();
        start_plugin_daemon(tb, &setup.vxmeshd, &n.name, &address, &url, &prefix)
            .with_context(|| format!("starting vxmeshd on {}", n.name))?;
        note(format_args!(
            "  {:<4} {:<12} vxmeshd ready, Docker plugin {}",
            n.name,
            n.address,
            plugin_name(tb, &n.name)
        ));
    }
    let h1 = tb.dir().join(format!("{}.sock", cluster.nodes[0].name));
    let (vni, subnet) = (net.vni.to_string(), net.subnet.to_string());
    // No `--node`: a node becomes a member with its first container. A
    // member has the subnet on its bridge already, and a Docker network
    // created without `--subnet` on such a host loops in dockerd (its
    // allocator refuses a pool that overlaps a route and asks again), so
    // the Docker networks below also give the subnet.
    cli(
        setup,
        &h1,
        &[
            "network",
            "create",
            &net.name,
            "--vni",
            &vni,
            "--subnet",
            &subnet,
            "--attachable",
        ],
    )?;
    let publish = format!("{}:{}/tcp", port.published, port.target);
    cli(
        setup,
        &h1,
        &[
            "service",
            "create",
            &svc.name,
            "--network",
            &net.name,
            "-p",
            &publish,
            "--balance",
            "round-robin",
            "--health",
            "tcp",
            "--health-interval-ms",
            "200",
            "--health-timeout-ms",
            "200",
            "--rise",
            "1",
            "--fall",
            "2",
        ],
    )?;
    note(format_args!(
        "  network {} (VNI {vni}, {subnet}) and service {} (:{publish}) created on etcd",
        net.name, svc.name
    ));
    let image = image_tarball(tb.dir(), false)?;
    // Dropped before the testbed: containers and networks go while the
    // drivers still answer.
    let mut dockers: Vec<Docker> = Vec::new();
    let mut list = Vec::new();
    let (dns, label) = (net.dns.to_string(), format!("vxmesh.service={}", svc.name));
    for n in &cluster.nodes {
        interrupted()?;
        let d = Docker::start(tb, &n.name, &image)?;
        dockers.push(d);
        let d = dockers.last().expect("just pushed");
        d.vxmesh_network(&plugin_name(tb, &n.name), &net.name, Some(&subnet))?;
        let name = format!("{}-{}", svc.name, n.name);
        let cmd = format!(
            "echo {}/{name} > /www/index.html; exec httpd -f -p {} -h /www",
            n.name, port.target
        );
        d.checked(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net.name,
            "--dns",
            &dns,
            "--label",
            &label,
            IMAGE,
            "sh",
            "-c",
            &cmd,
        ])?;
        let ip = d.ip_of(&name, &net.name)?;
        note(format_args!(
            "  {:<4} dockerd ready; container {name} at {ip}",
            n.name
        ));
        list.push(Container {
            name,
            host: n.name.clone(),
            ip,
        });
    }
    wait_tasks(setup, tb, &svc.name, list.len())?;
    let mut pings = Vec::new();
    for (i, (c, d)) in list.iter().zip(&dockers).enumerate() {
        interrupted()?;
        let to = &list[(i + 1) % list.len()];
        let out = d.docker(&[
            "exec", &c.name, "ping", "-c", PINGS, "-i", "0.2", "-W", "2", &to.name,
        ]);
        let (resolved, sent, received, rtt_p50_us) =
            parse_ping(&String::from_utf8_lossy(&out.stdout));
        pings.push(Ping {
            from: c.name.clone(),
            to: to.name.clone(),
            resolved,
            want: to.ip,
            sent,
            received,
            rtt_p50_us,
        });
    }
    // The hosts' own addresses in the network (taken with their first
    // container there), for the host-pair table.
    let inspect: Value =
        serde_json::from_str(&cli(setup, &h1, &["network", "inspect", &net.name])?)?;
    let mut hosts = Vec::new();
    for n in &cluster.nodes {
        let ip = inspect["endpoints"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|e| e["node"] == n.name.as_str() && e["container"].is_null())
            })
            .and_then(|e| e["ip"].as_str()?.parse().ok())
            .with_context(|| format!("{}'s own address in {}: {inspect}", n.name, net.name))?;
        hosts.push((n.name.clone(), ip));
    }
    let mut tcp_port = 5201;
    let rows = overlay::prove(tb, &hosts, setup.bytes, &mut tcp_port)?;
    interrupted()?;
    let target = mesh::Target {
        service: svc.name.clone(),
        published: port.published,
        nodes: cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.address))
            .collect(),
        dns: net.dns,
        tasks: list.len(),
    };
    let mut m = mesh::measure(tb, &target)?;
    // Each node's DNS asked for the next host's container by name.
    for (i, n) in cluster.nodes.iter().enumerate() {
        let c = &list[(i + 1) % list.len()];
        let ips = mesh::resolve(tb, &tb.ns(&n.name), net.dns, &c.name)?;
        m.dns.push((n.name.clone(), net.dns, c.name.clone(), ips));
    }
    if setup.keep {
        super::keep(tb, cluster, dockers.first().map(|d| d.sock.as_path()));
    }
    drop(dockers);
    Ok(Report {
        suffix: tb.suffix().to_string(),
        docker: Some(Containers { list, pings }),
        overlay: rows,
        mesh: Some(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_ping_output_is_read() {
        let out = "PING web-h2 (10.0.9.12): 56 data bytes\n\
                   64 bytes from 10.0.9.12: seq=0 ttl=64 time=0.412 ms\n\
                   64 bytes from 10.0.9.12: seq=1 ttl=64 time=0.300 ms\n\
                   64 bytes from 10.0.9.12: seq=2 ttl=64 time=0.500 ms\n\
                   \n--- web-h2 ping statistics ---\n\
                   3 packets transmitted, 3 packets received, 0% packet loss\n\
                   round-trip min/avg/max = 0.300/0.404/0.500 ms\n";
        let (ip, sent, received, p50) = parse_ping(out);
        assert_eq!(ip, Some(Ipv4Addr::new(10, 0, 9, 12)));
        assert_eq!((sent, received), (3, 3));
        assert!((p50 - 412.0).abs() < 1e-6, "{p50}");
        // A name that did not resolve: nothing, no panic.
        let (ip, sent, received, p50) = parse_ping("ping: bad address 'web-h2'\n");
        assert_eq!((ip, sent, received), (None, 0, 0));
        assert!(p50.is_nan());
    }
}
