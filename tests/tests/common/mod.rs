//! Shared set-up for the end-to-end tests: a cluster file, a vxmeshd per
//! host (ready when it says READY=1 on its notify socket), and the admin
//! API read through the `vxmesh` CLI, so every test also exercises the CLI.

#![allow(dead_code)]

pub mod backend;
pub mod etcd;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use vxmesh_netns::{workspace_bin, PingStats, Proc, Testbed};

pub const FRONT_ONLY: &str = vxmesh_netns::fixtures::FRONT;

/// A testbed with hosts h1..hN on the underlay bridge and a cluster file.
pub struct Lab {
    pub tb: Testbed,
    pub config: PathBuf,
    pub daemons: Vec<(String, Proc)>,
}

impl Lab {
    /// Hosts `h1..=hn` at 198.18.0.<i>/24, MTU 1500, and the cluster file.
    pub fn new(tag: &str, hosts: u8, config: &str) -> Lab {
        let mut tb = Testbed::new(tag).expect("testbed");
        for i in 1..=hosts {
            tb.add_host(&format!("h{i}"), &format!("198.18.0.{i}/24"), 1500)
                .expect("host");
        }
        let path = tb.dir().join("vxmesh.toml");
        std::fs::write(&path, config).expect("write config");
        Lab {
            tb,
            config: path,
            daemons: Vec::new(),
        }
    }

    pub fn socket(&self, host: &str) -> PathBuf {
        self.tb.dir().join(format!("{host}.sock"))
    }

    /// Starts vxmeshd for `host` and waits for READY=1.
    pub fn start(&mut self, host: &str) {
        self.start_with(host, &[]);
    }

    /// Like [`Lab::start`], with extra environment variables.
    pub fn start_with(&mut self, host: &str, envs: &[(&str, &str)]) {
        let p = self.spawn_daemon(host, &[], envs);
        self.daemons.push((host.to_string(), p));
    }

    /// vxmeshd's command line for `host` (file store, its state in the
    /// testbed directory), then `extra`.
    pub fn daemon_args(&self, host: &str, extra: &[&str]) -> Vec<String> {
        let state = self.tb.dir().join(format!("state-{host}"));
        [
            workspace_bin("vxmeshd").to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
            "--node",
            host,
            "--socket",
            self.socket(host).to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts a vxmeshd for `host` with `extra` arguments and waits for
    /// READY=1, without counting it among [`Lab::daemons`].
    pub fn spawn_daemon(&mut self, host: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let args = self.daemon_args(host, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ns = self.tb.ns(host);
        self.tb
            .spawn_notify(
                &ns,
                &args,
                &[&[("RUST_LOG", "info")], envs].concat(),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("vxmeshd on {host} did not become ready: {e}"))
    }

    /// Waits up to 5 s until `host` relays at least one connection of
    /// `service` (readiness: the tasks' active counts); `what` names it in
    /// the failure.
    pub fn wait_active(&self, host: &str, service: &str, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let ps = self.cli_json(host, &["service", "ps", service]);
            let active: u64 = ps
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["active"].as_u64().unwrap())
                .sum();
            if active > 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what} never started");
        }
    }

    /// Creates the service `web` on network `front` through `host`'s CLI
    /// (etcd store): published on 8080 to port 80, TCP health, round robin,
    /// no task list (its tasks are containers that name it).
    pub fn create_web_service(&self, host: &str) {
        self.cli_json(
            host,
            &[
                "service",
                "create",
                "web",
                "--network",
                "front",
                "-p",
                "8080:80/tcp",
                "--health",
                "tcp",
                "--balance",
                "round-robin",
            ],
        );
    }

    /// The daemon of `host` among [`Lab::daemons`].
    pub fn daemon_of(&self, host: &str) -> &Proc {
        &self
            .daemons
            .iter()
            .find(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no daemon on {host}"))
            .1
    }

    /// Runs the CLI against `host`'s daemon and parses its JSON output.
    pub fn cli_json(&self, host: &str, args: &[&str]) -> Value {
        let out = self.cli(host, args);
        assert!(
            out.status.success(),
            "vxmesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("vxmesh --json prints JSON")
    }

    pub fn cli(&self, host: &str, args: &[&str]) -> std::process::Output {
        let sock = self.socket(host);
        std::process::Command::new(workspace_bin("vxmesh"))
            .arg("--socket")
            .arg(&sock)
            .arg("--json")
            .args(args)
            .output()
            .expect("run vxmesh")
    }

    /// `host`'s `/metrics`, through `vxmesh metrics`.
    pub fn scrape(&self, host: &str) -> String {
        let out = self.cli(host, &["metrics"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `/v1/status` of `host`.
    pub fn status(&self, host: &str) -> Value {
        self.cli_json(host, &["status"])
    }

    /// A counter of network `net` on `host` (`stats.<key>`).
    pub fn counter(&self, host: &str, net: &str, key: &str) -> u64 {
        let s = self.status(host);
        let n = s["networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == net)
            .unwrap_or_else(|| panic!("{host} has no network {net}: {s}"));
        n["stats"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {key}"))
    }

    /// A drop counter of network `net` on `host`.
    pub fn net_drops(&self, host: &str, net: &str, reason: &str) -> u64 {
        let s = self.status(host);
        let n = s["networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == net)
            .unwrap();
        n["stats"]["drops"][reason].as_u64().unwrap()
    }

    /// A drop counter not tied to a network.
    pub fn global_drops(&self, host: &str, reason: &str) -> u64 {
        self.status(host)["global"]["drops"][reason]
            .as_u64()
            .unwrap()
    }

    /// Turns IPv6 off on a host before its TAP exists, so the kernel sends
    /// no router or neighbour solicitations that would be (rightly) flooded.
    pub fn no_ipv6(&self, host: &str) {
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            self.tb
                .exec(&self.tb.ns(host), &["sysctl", "-qw", key])
                .expect("sysctl");
        }
    }

    /// Runs `f` while host `from` pings `to` (one echo request every 20 ms,
    /// each waiting up to 1 s for its reply): legitimate traffic alongside
    /// whatever `f` does. Returns `f`'s result and the pings.
    pub fn pinging<T>(&self, from: &str, to: Ipv4Addr, f: impl FnOnce() -> T) -> (T, PingStats) {
        let done = AtomicBool::new(false);
        let ns = self.tb.ns(from);
        std::thread::scope(|s| {
            let pings = s.spawn(|| {
                let mut all = PingStats {
                    sent: 0,
                    received: 0,
                    rtt_us: Vec::new(),
                };
                while !done.load(Ordering::SeqCst) {
                    let p = vxmesh_netns::echo(
                        &self.tb,
                        &ns,
                        to,
                        1,
                        Duration::from_millis(20),
                        Duration::from_secs(1),
                    )
                    .expect("echo");
                    all.sent += p.sent;
                    all.received += p.received;
                    all.rtt_us.extend(p.rtt_us);
                }
                all
            });
            let out = f();
            done.store(true, Ordering::SeqCst);
            (out, pings.join().expect("pinger"))
        })
    }
}

/// The value of one sample line `name{labels} value` of a scrape.
pub fn sample(scrape: &str, name_and_labels: &str) -> u64 {
    scrape
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{scrape}")) as u64
}

/// Runs vxmesh-cni with `command` for `container` (ifname eth0, netns
/// `netns`), `conf` on stdin: (exit ok, stdout as JSON).
pub fn cni(command: &str, container: &str, netns: &str, args: &str, conf: &str) -> (bool, Value) {
    use std::io::Write;
    let mut c = std::process::Command::new(workspace_bin("vxmesh-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}
