//! The lab's second half: the routing mesh and service discovery. For the
//! first service of the cluster with a TCP port, a small HTTP server in each
//! task's host answers with that host's name; a client namespace on the
//! underlay asks every node's published port a few times, and each node's
//! DNS responder is asked for the service and its tasks.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vxmesh_dataplane::mesh::spec::Protocol;
use vxmesh_netns::Testbed;

use crate::model::Cluster;

/// Requests sent through each node.
const REQUESTS: usize = 6;
/// How long the task servers live at most (they stop with the lab).
const SERVER_LIFE: Duration = Duration::from_secs(300);

/// What one node's published port did.
pub struct MeshRow {
    pub via: String,
    pub addr: SocketAddr,
    /// Answering host -> requests it answered.
    pub answered: BTreeMap<String, u32>,
    pub failed: u32,
}

/// What the mesh half of the lab measured.
pub struct MeshReport {
    pub service: String,
    pub rows: Vec<MeshRow>,
    /// (node, responder address, name asked, addresses answered).
    pub dns: Vec<(String, Ipv4Addr, String, Vec<Ipv4Addr>)>,
    /// How many tasks the service has.
    pub tasks: usize,
}

/// What to ask: a service's published port on every member node and the
/// members' DNS responders.
pub struct Target {
    pub service: String,
    pub published: u16,
    /// (node, underlay address) of every member node.
    pub nodes: Vec<(String, Ipv4Addr)>,
    /// The network's DNS address (the same on every member).
    pub dns: Ipv4Addr,
    pub tasks: usize,
}

impl MeshReport {
    /// Prints the table.
    pub fn print(&self) {
        println!();
        println!(
            "{:<8} {:<6} {:<20} ANSWERED BY ({REQUESTS} requests)",
            "SERVICE", "VIA", "PUBLISHED"
        );
        for r in &self.rows {
            let mut by: Vec<String> = r
                .answered
                .iter()
                .map(|(h, n)| format!("{h} x{n}"))
                .collect();
            if r.failed > 0 {
                by.push(format!("FAILED x{}", r.failed));
            }
            println!(
                "{:<8} {:<6} {:<20} {}",
                self.service,
                r.via,
                r.addr,
                by.join(", ")
            );
        }
        for (node, at, name, ips) in &self.dns {
            let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
            println!(
                "DNS {node} ({at}): {name} -> {}",
                if ips.is_empty() {
                    "nothing".to_string()
                } else {
                    ips.join(", ")
                }
            );
        }
    }

    /// What is wrong, if anything: a node whose port failed a request or
    /// was answered only by its own tasks, a name that resolved to nothing.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rows {
            if r.failed > 0 {
                out.push(format!("{} failed {} requests", r.via, r.failed));
            }
            // A container answers `host/container`, a host server `host`.
            let host = |by: &str| by.split('/').next().unwrap_or_default().to_string();
            if !r.answered.keys().any(|by| host(by) != r.via) {
                out.push(format!("{} was answered by no task on another node", r.via));
            }
        }
        let tasks = self.tasks;
        for (node, _, name, ips) in &self.dns {
            if ips.is_empty() || (name.starts_with("tasks.") && ips.len() != tasks) {
                out.push(format!("{node}'s DNS answered {ips:?} for {name}"));
            }
        }
        out
    }
}

impl MeshReport {
    /// The JSON of `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "service": self.service,
            "tasks": self.tasks,
            "via": self.rows.iter().map(|r| serde_json::json!({
                "node": r.via, "published": r.addr.to_string(),
                "answered": r.answered, "failed": r.failed,
            })).collect::<Vec<_>>(),
            "dns": self.dns.iter().map(|(node, at, name, ips)| serde_json::json!({
                "node": node, "server": at.to_string(), "name": name,
                "answers": ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Serves HTTP on `addr` in `ns` until `stop`, answering `body`.
fn serve(
    tb: &Testbed,
    ns: &str,
    addr: SocketAddr,
    body: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    tb.thread_in_ns(ns, move || {
        let l = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < SERVER_LIFE {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("the task server did not start")?
        .with_context(|| format!("binding {addr}"))
}

/// One GET from `ns` to `to`: the body.
fn get(tb: &Testbed, ns: &str, to: SocketAddr) -> anyhow::Result<Option<String>> {
    Ok(tb.in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
    })?)
}

/// An A query for `name` to `server` from `ns`: the addresses answered
/// (none on a timeout).
pub fn resolve(
    tb: &Testbed,
    ns: &str,
    server: Ipv4Addr,
    name: &str,
) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut q = vec![0x4c, 0x41, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let qlen = q.len();
    Ok(tb
        .in_ns(ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.send_to(&q, (server, 53)).ok()?;
            let mut buf = [0u8; 1500];
            let n = s.recv(&mut buf).ok()?;
            Some(answers(&buf[..n], qlen))
        })?
        .unwrap_or_default())
}

/// The A records of a response whose question is `qlen` bytes long
/// (answers follow it; names in them are compressed pointers or labels).
fn answers(msg: &[u8], qlen: usize) -> Vec<Ipv4Addr> {
    let count = msg
        .get(6..8)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let mut at = qlen;
    let mut out = Vec::new();
    for _ in 0..count {
        // The owner name: a pointer (2 bytes) or labels up to a zero.
        loop {
            match msg.get(at) {
                Some(b) if b & 0xc0 == 0xc0 => {
                    at += 2;
                    break;
                }
                Some(0) => {
                    at += 1;
                    break;
                }
                Some(l) => at += 1 + usize::from(*l),
                None => return out,
            }
        }
        let Some(h) = msg.get(at..at + 10) else {
            return out;
        };
        let (kind, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            usize::from(u16::from_be_bytes([h[8], h[9]])),
        );
        at += 10;
        if kind == 1 && len == 4 {
            if let Some(a) = msg.get(at..at + 4) {
                out.push(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            }
        }
        at += len;
    }
    out
}

/// Runs the mesh half for the first service with a TCP port; `None` when
/// the cluster has no such service.
pub fn prove(tb: &mut Testbed, cluster: &Cluster) -> anyhow::Result<Option<MeshReport>> {
    let Some((svc, port)) = cluster.services.iter().find_map(|s| {
        s.ports
            .iter()
            .find(|p| p.protocol == Protocol::Tcp)
            .map(|p| (s, p))
    }) else {
        return Ok(None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_servers = StopOnDrop(stop.clone());
    for t in &svc.tasks {
        let Some(owner) = cluster.owner(&svc.network, *t) else {
            continue;
        };
        serve(
            tb,
            &tb.ns(owner),
            SocketAddr::new((*t).into(), port.target),
            format!("{owner}\n"),
            stop.clone(),
        )?;
    }
    let net = cluster
        .network(&svc.network)
        .context("the service's network")?;
    let target = Target {
        service: svc.name.clone(),
        published: port.published,
        nodes: cluster
            .members(net)
            .iter()
            .map(|n| (n.name.clone(), n.address))
            .collect(),
        dns: net.dns,
        tasks: svc.tasks.len(),
    };
    measure(tb, &target).map(Some)
}

/// Asks every member node's published port and DNS responder, from a
/// client namespace `cl` on the underlay (in the first node's /24).
pub fn measure(tb: &mut Testbed, t: &Target) -> anyhow::Result<MeshReport> {
    let first = t.nodes.first().context("no member nodes")?;
    let o = first.1.octets();
    tb.add_host("cl", &format!("{}.{}.{}.200/24", o[0], o[1], o[2]), 1500)?;
    let cl = tb.ns("cl");
    // Ready once every node's DNS names every task (it answers the tasks
    // its health checks passed): measured before that, a node would send
    // everything to the tasks that rose first. Bounded; what is still
    // missing then is reported as a problem below.
    let t0 = Instant::now();
    for (node, _) in &t.nodes {
        let name = format!("tasks.{}", t.service);
        while resolve(tb, &tb.ns(node), t.dns, &name)?.len() < t.tasks {
            super::interrupted()?;
            if t0.elapsed() > Duration::from_secs(15) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut rows = Vec::new();
    for (name, address) in &t.nodes {
        let addr = SocketAddr::new((*address).into(), t.published);
        // Ready once a first request is answered (the tasks' health checks
        // must rise first).
        let t0 = Instant::now();
        while get(tb, &cl, addr)?.is_none() {
            super::interrupted()?;
            if t0.elapsed() > Duration::from_secs(15) {
                bail!("{addr} (node {name}) answered nothing within 15 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut row = MeshRow {
            via: name.clone(),
            addr,
            answered: BTreeMap::new(),
            failed: 0,
        };
        for _ in 0..REQUESTS {
            match get(tb, &cl, addr)? {
                Some(by) => *row.answered.entry(by).or_default() += 1,
                None => row.failed += 1,
            }
        }
        rows.push(row);
    }
    let mut dns = Vec::new();
    for (node, _) in &t.nodes {
        for name in [t.service.clone(), format!("tasks.{}", t.service)] {
            let ips = resolve(tb, &tb.ns(node), t.dns, &name)?;
            dns.push((node.clone(), t.dns, name, ips));
        }
    }
    Ok(MeshReport {
        service: t.service.clone(),
        rows,
        dns,
        tasks: t.tasks,
    })
}

/// Stops the task servers when the lab ends, whichever way.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_are_read_from_an_answer() {
        // Question "web" A IN (5 + 4 bytes after the 12-byte header), then
        // two answers with compressed owner names.
        let mut m = vec![0x4c, 0x41, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
        for ip in [[10, 0, 9, 2], [10, 0, 9, 3]] {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
            m.extend_from_slice(&ip);
        }
        assert_eq!(
            answers(&m, 21),
            vec![Ipv4Addr::new(10, 0, 9, 2), Ipv4Addr::new(10, 0, 9, 3)]
        );
        // Truncated: what was whole, nothing more, no panic.
        assert_eq!(
            answers(&m[..m.len() - 2], 21),
            vec![Ipv4Addr::new(10, 0, 9, 2)]
        );
        assert!(answers(&m[..5], 21).is_empty());
    }
}
