//! A real etcd (Debian's `etcd-server`) for the end-to-end tests: one
//! member in its own namespace `etcd` on the underlay bridge at
//! [`ETCD_ADDR`], data in the testbed directory, started and killed through
//! the testbed (so the guard stops it), and vxmeshd daemons that use it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use vxmesh_netns::{workspace_bin, Proc, Testbed};

use super::Lab;

pub const ETCD_ADDR: &str = "198.18.0.250";
pub const ETCD_URL: &str = "http://198.18.0.250:2379";

/// An etcd member of the testbed.
pub struct Etcd {
    pub proc: Option<Proc>,
    pub data: PathBuf,
}

/// Adds the `etcd` namespace on the underlay and starts etcd there.
/// An etcd for `lab` and the key prefix of this testbed's cluster.
pub fn with_etcd(lab: &mut Lab) -> (Etcd, String) {
    let e = start(&mut lab.tb);
    (e, format!("/{}", lab.tb.suffix()))
}

pub fn start(tb: &mut Testbed) -> Etcd {
    tb.add_host("etcd", &format!("{ETCD_ADDR}/24"), 1500)
        .expect("etcd host");
    let mut e = Etcd {
        proc: None,
        data: tb.dir().join("etcd-data"),
    };
    e.restart(tb);
    e
}

impl Etcd {
    /// Starts etcd (again, on the same data directory) and waits for
    /// `/health` to say true (at most 20 s).
    pub fn restart(&mut self, tb: &mut Testbed) {
        let p = tb
            .start_etcd(&tb.ns("etcd"), ETCD_URL, &self.data)
            .expect("etcd healthy");
        self.proc = Some(p);
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self, tb: &Testbed) {
        let p = self.proc.take().expect("etcd running");
        tb.signal(&p, Signal::SIGKILL).expect("kill etcd");
        assert!(
            tb.wait_exit(&p, Duration::from_secs(5)).is_some(),
            "etcd did not exit"
        );
    }
}

/// Runs `f` with an etcd client of `endpoint` (options `opts`) on a
/// one-thread runtime inside the etcd namespace: writes the tests make
/// behind the daemons' backs.
pub fn with_client<T: Send + 'static>(
    tb: &Testbed,
    endpoint: &str,
    opts: Option<etcd_client::ConnectOptions>,
    f: impl AsyncFnOnce(&mut etcd_client::Client) -> Result<T, etcd_client::Error> + Send + 'static,
) -> T {
    let endpoint = endpoint.to_string();
    tb.in_ns(&tb.ns("etcd"), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let connect = etcd_client::Client::connect([endpoint.as_str()], opts);
            let mut c = tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .expect("etcd connect within 10 s")
                .expect("etcd connect");
            tokio::time::timeout(Duration::from_secs(10), f(&mut c))
                .await
                .expect("etcd answers within 10 s")
                .expect("etcd request")
        })
    })
    .expect("enter the etcd namespace")
}

/// Puts `value` at `key` in the testbed's plain etcd.
pub fn put_raw(tb: &Testbed, key: &str, value: &[u8]) {
    let (key, value) = (key.to_string(), value.to_vec());
    with_client(tb, ETCD_URL, None, async move |c| {
        c.put(key, value, None).await.map(|_| ())
    });
}

/// Deletes `key` from the testbed's plain etcd.
pub fn delete_raw(tb: &Testbed, key: &str) {
    let key = key.to_string();
    with_client(tb, ETCD_URL, None, async move |c| {
        c.delete(key, None).await.map(|_| ())
    });
}

/// GET /health from inside the etcd namespace.
pub fn healthy(tb: &Testbed) -> bool {
    let addr: SocketAddr = format!("{ETCD_ADDR}:2379").parse().unwrap();
    tb.etcd_healthy(&tb.ns("etcd"), addr)
}

impl Lab {
    /// Starts vxmeshd for `host` (address 198.18.0.<i>) on the etcd store
    /// under `prefix`, and waits for READY=1. Replaces an earlier entry of
    /// the host in `daemons`.
    pub fn start_etcd(&mut self, host: &str, prefix: &str, ttl: u32) {
        self.start_etcd_args(host, prefix, ttl, &[]);
    }

    /// `vxmesh network create NAME --vni VNI --subnet SUBNET --attachable`
    /// through h1's daemon.
    pub fn attachable_network(&self, name: &str, vni: u32, subnet: &str) {
        let vni = vni.to_string();
        self.cli_json(
            "h1",
            &[
                "network",
                "create",
                name,
                "--vni",
                &vni,
                "--subnet",
                subnet,
                "--attachable",
            ],
        );
    }

    /// [`Lab::start_etcd`] with extra daemon arguments.
    pub fn start_etcd_args(&mut self, host: &str, prefix: &str, ttl: u32, extra: &[&str]) {
        self.start_etcd_at(host, ETCD_URL, prefix, ttl, extra)
    }

    /// [`Lab::start_etcd_args`] on another etcd endpoint (TLS).
    pub fn start_etcd_at(
        &mut self,
        host: &str,
        endpoint: &str,
        prefix: &str,
        ttl: u32,
        extra: &[&str],
    ) {
        let bin = workspace_bin("vxmeshd");
        let sock = self.socket(host);
        let ns = self.tb.ns(host);
        let addr = format!("198.18.0.{}", host.trim_start_matches('h'));
        let ttl = ttl.to_string();
        // A state directory in the testbed (the instance id lives there),
        // unless the test names one.
        let own_state: Vec<String> = if extra.contains(&"--state-dir") {
            Vec::new()
        } else {
            let dir = self.tb.dir().join(format!("{host}-state"));
            vec!["--state-dir".into(), dir.to_string_lossy().into_owned()]
        };
        let p = self
            .tb
            .spawn_notify(
                &ns,
                &[
                    bin.to_str().unwrap(),
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    endpoint,
                    "--etcd-prefix",
                    prefix,
                    "--lease-ttl",
                    &ttl,
                    "--node",
                    host,
                    "--address",
                    &addr,
                    "--socket",
                    sock.to_str().unwrap(),
                ]
                .into_iter()
                .chain(own_state.iter().map(String::as_str))
                .chain(extra.iter().copied())
                .collect::<Vec<_>>(),
                &[("RUST_LOG", "info")],
                Duration::from_secs(40),
            )
            .unwrap_or_else(|e| panic!("vxmeshd on {host} did not become ready: {e}"));
        self.daemons.retain(|(h, _)| h != host);
        self.daemons.push((host.to_string(), p));
    }

    /// The daemon process of `host`.
    pub fn daemon(&self, host: &str) -> &Proc {
        &self
            .daemons
            .iter()
            .find(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no daemon for {host}"))
            .1
    }

    /// Polls `f` every 50 ms until it is true or `limit` passes; the time
    /// it took, or `None`.
    pub fn until(&self, limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
        let t0 = Instant::now();
        loop {
            if f() {
                return Some(t0.elapsed());
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The endpoint addresses `host`'s daemon has in network `net`
    /// (`vxmesh network inspect`), empty if it has no such network.
    pub fn endpoint_ips(&self, host: &str, net: &str) -> Vec<String> {
        let out = self.cli(host, &["network", "inspect", net]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["ip"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The task addresses of service `svc` on `host` (`vxmesh service ps`).
    pub fn task_ips(&self, host: &str, svc: &str) -> Vec<String> {
        let out = self.cli(host, &["service", "ps", svc]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut ips: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["addr"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }
}
