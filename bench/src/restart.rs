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

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use vxmesh_netns::fdstore::FdStore;
use vxmesh_netns::{workspace_bin, Testbed};

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

const CLUSTER: &str = r#"
[[nodes]]
name = "h1"
address = "198.18.0.1"
[[nodes]]
name = "h2"
address = "198.18.0.2"

[[networks]]
name = "front"
vni = 4096
subnet = "10.0.9.0/24"

[[endpoints]]
network = "front"
node = "h1"
ip = "10.0.9.1"
[[endpoints]]
network = "front"
node = "h2"
ip = "10.0.9.2"

[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.2"]
ports = [{ published = 8080, target = 80, protocol = "tcp" }]
health = { kind = "tcp", interval_ms = 200, timeout_ms = 100, rise = 1, fall = 3 }
drain_ms = 5000
"#;

/// What one event cost the traffic.
#[derive(Debug, Default, Clone)]
struct Cost {
    ping_gap_ms: f64,
    pings_lost: u64,
    pings_sent: u64,
    udp_lost: u64,
    udp_sent: u64,
    http_failed: u64,
    http_ok: u64,
}

/// A process started outside the testbed's tracking (a daemon's successor,
/// one restarted by the stand-in, HAProxy's reloads): stopped by pid.
struct Pid(i32);

impl Drop for Pid {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !gone(self.0) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// True once `pid` has exited (a zombie counts: it holds nothing).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

/// Reaps children that exit (successors and reloads are not waited for
/// otherwise), so that `gone` sees them go.
fn reap() {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(s, nix::sys::wait::WaitStatus::StillAlive) {
            break;
        }
    }
}

/// Runs the three streams while `event` happens; `port` is the published
/// port the HTTP loop asks.
fn measure(
    tb: &Testbed,
    port: u16,
    event: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Cost> {
    let stop = Arc::new(AtomicBool::new(false));
    // The UDP sink on h1's overlay address: the highest gap in sequence
    // numbers is not needed, only how many arrived.
    let got = Arc::new(AtomicU64::new(0));
    let sink = tb.thread_in_ns(&tb.ns("h1"), {
        let (stop, got) = (stop.clone(), got.clone());
        move || -> std::io::Result<()> {
            let s = UdpSocket::bind("10.0.9.1:9000")?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut buf = [0u8; 2048];
            // Drains for a moment after the sender stopped.
            let mut quiet_since = None;
            loop {
                match s.recv(&mut buf) {
                    Ok(_) => {
                        got.fetch_add(1, Ordering::Relaxed);
                        quiet_since = None;
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_millis(300) {
                            return Ok(());
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    })?;
    let sender = tb.thread_in_ns(&tb.ns("h2"), {
        let stop = stop.clone();
        move || -> std::io::Result<u64> {
            let s = UdpSocket::bind("10.0.9.2:0")?;
            let to = SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 1), 9000);
            let payload = [0u8; 64];
            let start = Instant::now();
            let mut sent = 0u64;
            // 50 datagrams every millisecond: 50 kpps.
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_micros() as u64) / 20;
                while sent < due {
                    let _ = s.send_to(&payload, to);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(sent)
        }
    })?;
    let pinger = tb.thread_in_ns(&tb.ns("h2"), {
        let stop = stop.clone();
        move || ping_stream(Ipv4Addr::new(10, 0, 9, 1), &stop)
    })?;
    let http = tb.thread_in_ns(&tb.ns("cl"), {
        let stop = stop.clone();
        move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            let to = SocketAddr::from(([198, 18, 0, 1], port));
            while !stop.load(Ordering::Relaxed) {
                let r = crate::http::get(to, "/", Duration::from_secs(5));
                if r.is_ok_and(|r| r.status == 200) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        }
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    let r = event();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let udp_sent = sender.join().expect("sender")??;
    sink.join().expect("sink")??;
    let (pings_sent, pings_got, gap) = pinger.join().expect("pinger")??;
    let (http_ok, http_failed) = http.join().expect("http")?;
    r?;
    Ok(Cost {
        ping_gap_ms: gap.as_secs_f64() * 1000.0,
        pings_lost: pings_sent - pings_got,
        pings_sent,
        udp_lost: udp_sent.saturating_sub(got.load(Ordering::Relaxed)),
        udp_sent,
        http_failed,
        http_ok,
    })
}

/// The ICMP checksum of `b` (RFC 1071).
fn icmp_csum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Echo requests every millisecond until `stop`: (sent, answered, the
/// longest time between two answers).
fn ping_stream(to: Ipv4Addr, stop: &AtomicBool) -> std::io::Result<(u64, u64, Duration)> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    let mut s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_nonblocking(true)?;
    let dst = SocketAddrV4::new(to, 0).into();
    let id = (std::process::id() as u16) ^ 0x4d4d;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut gap = Duration::ZERO;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let due = start.elapsed().as_millis() as u64;
        while sent <= due {
            let mut pkt = [0u8; 16];
            pkt[0] = 8;
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
            let c = icmp_csum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            let _ = s.send_to(&pkt, &dst);
            sent += 1;
        }
        while let Ok(n) = s.read(&mut buf) {
            // A raw socket hands over the IP header too.
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n < ihl + 8 || buf[12..16] != to.octets() {
                continue;
            }
            let icmp = &buf[ihl..n];
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                got += 1;
                let now = Instant::now();
                gap = gap.max(now - last);
                last = now;
            }
        }
        // Pacing, not synchronisation.
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((sent, got, gap))
}

/// h1's daemon as the events see it: under the stand-in for systemd.
struct Node {
    store: FdStore,
    args: Vec<String>,
    log: PathBuf,
    ns: String,
    /// The process serving the node now.
    current: Option<Pid>,
}

impl Node {
    /// Starts the daemon (the store fills as it comes up).
    fn start(&mut self) -> anyhow::Result<()> {
        let from = self.store.messages();
        let child = self.store.restart(&self.ns, &self.args, &self.log);
        self.current = Some(Pid(child.id() as i32));
        std::mem::forget(child);
        if !self
            .store
            .wait(Duration::from_secs(15), |h| h.said(from, "READY=1"))
        {
            bail!(
                "vxmeshd on h1 did not become ready; see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    fn pid(&self) -> i32 {
        self.current.as_ref().map(|p| p.0).unwrap_or(0)
    }

    /// SIGUSR2, then the successor's MAINPID= and the old process gone.
    fn handover(&mut self) -> anyhow::Result<()> {
        let from = self.store.messages();
        let old = self.pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGUSR2,
        )?;
        let main = std::sync::Mutex::new(None);
        let said = self.store.wait(Duration::from_secs(15), |h| {
            let m = h.messages[from.min(h.messages.len())..]
                .iter()
                .find_map(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("MAINPID="))
                        .map(String::from)
                });
            let found = m.is_some();
            *main.lock().unwrap() = m;
            found
        });
        let new: i32 = match (said, main.into_inner().unwrap()) {
            (true, Some(p)) => p.parse()?,
            _ => bail!("no successor took the node over"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !gone(old) {
            reap();
            if Instant::now() > deadline {
                bail!("the old daemon did not exit after the handover");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reap();
        // The old one is gone: forget its guard, guard the successor.
        if let Some(p) = self.current.take() {
            std::mem::forget(p);
        }
        self.current = Some(Pid(new));
        Ok(())
    }

    /// SIGKILL, then at once the next process with the stored descriptors.
    fn crash(&mut self) -> anyhow::Result<()> {
        let old = self.pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        while !gone(old) {
            reap();
            std::thread::sleep(Duration::from_millis(1));
        }
        reap();
        if let Some(p) = self.current.take() {
            std::mem::forget(p);
        }
        self.start()
    }
}

const HAPROXY_PORT: u16 = 8081;

fn haproxy_cfg(stats: &std::path::Path) -> String {
    format!(
        "global\n    stats socket {} mode 600 level admin expose-fd listeners\n    maxconn 4000\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend web\n    bind 198.18.0.1:{HAPROXY_PORT}\n    default_backend tasks\n\
         backend tasks\n    server t2 10.0.9.2:80\n",
        stats.display()
    )
}

/// HAProxy in h1, started or reloaded with `-sf <pid> -x <stats socket>`;
/// waits for its listener.
fn haproxy(
    tb: &Testbed,
    cfg: &std::path::Path,
    stats: &std::path::Path,
    old: Option<i32>,
) -> anyhow::Result<Pid> {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        tb.ns("h1"),
        "/usr/sbin/haproxy".into(),
        "-f".into(),
        cfg.display().to_string(),
        "-db".into(),
    ];
    if let Some(p) = old {
        args.extend([
            "-x".into(),
            stats.display().to_string(),
            "-sf".into(),
            p.to_string(),
        ]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tb.dir().join("haproxy.log"))?;
    let child = std::process::Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting haproxy")?;
    let pid = Pid(child.id() as i32);
    std::mem::forget(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stats.exists() || old.is_none() && !listening(tb, HAPROXY_PORT) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(tb.dir().join("haproxy.log")).unwrap_or_default();
            bail!("haproxy did not start: {log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

fn listening(tb: &Testbed, port: u16) -> bool {
    tb.exec(
        &tb.ns("h1"),
        &["ss", "-Hltn", "sport", "=", &format!(":{port}")],
    )
    .map(|o| !o.stdout.is_empty())
    .unwrap_or(false)
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
    std::fs::write(&cfg, CLUSTER)?;
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
