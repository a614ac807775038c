//! Real container runtimes in namespace hosts: a dockerd per host (its own
//! data and exec roots, started with `nsenter --net` so it keeps the host's
//! cgroup mounts) and rootful podman with its own containers.conf and CNI
//! directories; a busybox image built from Debian's busybox-static (with
//! iperf3 and its libraries copied in), imported without a registry.
//!
//! Guards: a [`Docker`] removes its containers and networks, stops dockerd
//! and unmounts what it left; a [`Podman`] removes its containers and
//! unmounts. Host-wide leftovers (`/run/containerd`, `/etc/docker/key.json`,
//! podman's lock and cache files) are removed when the last runtime guard of
//! the process goes, if they were not there before the first one came.
//! Declare them after the `Lab`, so they drop first (runtimes must let go of
//! their networks while the vxmesh plugin still answers).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::process::run_bounded;
use crate::testbed::{check_status, nsenter_command};
use crate::{Error, Proc, Testbed};

/// The Docker CLI that matches Debian's dockerd (a newer client may sit
/// earlier in PATH).
pub const DOCKER: &str = "/usr/bin/docker";
/// The longest one `docker` call may take.
pub const DOCKER_BOUND: Duration = Duration::from_secs(120);
/// The image every runtime of the testbed imports.
pub const IMAGE: &str = "vxmesh/busybox:1";

/// Host-wide paths the runtimes leave behind.
const LEFTOVERS: [&str; 8] = [
    "/run/containerd",
    "/opt/containerd",
    "/etc/docker/key.json",
    "/dev/shm/libpod_lock",
    "/var/lib/containers/cache",
    "/var/lib/cni",
    "/run/runc",
    "/run/libpod",
];

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BEFORE: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

fn enter() {
    let mut before = BEFORE.lock().unwrap();
    if LIVE.fetch_add(1, Ordering::SeqCst) == 0 {
        *before = LEFTOVERS
            .iter()
            .copied()
            .filter(|p| Path::new(p).exists())
            .collect();
    }
}

fn leave() {
    let before = BEFORE.lock().unwrap();
    if LIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
        for p in LEFTOVERS {
            if !before.contains(&p) {
                let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
            }
        }
    }
}

/// Unmounts everything mounted under `root` (deepest first).
fn unmount_under(root: &Path) {
    let Ok(m) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let root = root.to_string_lossy().to_string();
    let mut points: Vec<&str> = m
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| p.starts_with(&root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).output();
    }
}

/// A busybox root file system as a tarball for `docker import` / `podman
/// import`; with `iperf3`, the host's iperf3 and the libraries `ldd` names
/// are copied in.
pub fn image_tarball(dir: &Path, iperf3: bool) -> Result<PathBuf, Error> {
    let io = |what: String| move |e| Error::io(what, e);
    let r = dir.join("rootfs");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "www",
    ] {
        std::fs::create_dir_all(r.join(d)).map_err(io(format!("mkdir {}", r.join(d).display())))?;
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox"))
        .map_err(io("copy /bin/busybox (install busybox-static)".into()))?;
    let list = checked(
        Command::new("/bin/busybox").arg("--list-full"),
        "busybox --list-full",
    )?;
    for a in list.lines() {
        let p = r.join(a);
        if !p.exists() {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("mkdir {}", parent.display())))?;
            }
            std::os::unix::fs::symlink("/bin/busybox", &p)
                .map_err(io(format!("symlink {}", p.display())))?;
        }
    }
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io("write etc/passwd".into()))?;
    std::fs::write(r.join("etc/group"), "root:x:0:\n").map_err(io("write etc/group".into()))?;
    if iperf3 {
        // iperf3 and what it links.
        let iperf = "/usr/bin/iperf3";
        std::fs::copy(iperf, r.join("usr/bin/iperf3"))
            .map_err(io(format!("copy {iperf} (install iperf3)")))?;
        let ldd = checked(Command::new("ldd").arg(iperf), "ldd iperf3")?;
        for l in ldd.lines() {
            if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
                let to = r.join(p.trim_start_matches('/'));
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io(format!("mkdir {}", parent.display())))?;
                }
                std::fs::copy(p, &to).map_err(io(format!("copy {p}")))?;
            }
        }
    }
    let tar = dir.join("busybox.tar");
    checked(
        Command::new("tar")
            .arg("-C")
            .arg(&r)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar the image",
    )?;
    Ok(tar)
}

/// Runs `cmd`: its stdout, trimmed, or an [`Error::Command`] naming `what`.
fn checked(cmd: &mut Command, what: &str) -> Result<String, Error> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        cmd: what.to_string(),
        source,
    })?;
    let out = check_status(what, out)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Asserts success and returns stdout, trimmed.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The Docker plugin name of `host`'s vxmeshd: unique per testbed (Docker
/// finds plugins by name in the one host-wide directory).
pub fn plugin_name(tb: &Testbed, host: &str) -> String {
    format!("vxm-{}-{host}", tb.suffix())
}

/// The API socket of the dockerd [`Docker::start`] runs on `host`.
pub fn docker_socket(tb: &Testbed, host: &str) -> PathBuf {
    docker_root(tb, host).join("docker.sock")
}

fn docker_root(tb: &Testbed, host: &str) -> PathBuf {
    tb.dir().join(format!("docker-{host}"))
}

/// The vxmeshd arguments for `host` that serve Docker's plugin (named by
/// [`plugin_name`]) to the dockerd of [`Docker::start`], with a state
/// directory in the testbed.
pub fn plugin_args(tb: &Testbed, host: &str) -> Vec<String> {
    let state = tb.dir().join(format!("state-{host}"));
    vec![
        "--state-dir".into(),
        state.to_string_lossy().into_owned(),
        "--docker-plugin".into(),
        plugin_name(tb, host),
        "--docker-host".into(),
        docker_socket(tb, host).to_string_lossy().into_owned(),
    ]
}

/// Starts `vxmeshd` for `host` (underlay `address`) on the etcd store at
/// `etcd_url` under `prefix`, serving Docker's plugin ([`plugin_args`]),
/// its admin socket at `<testbed dir>/<host>.sock`; waits up to 30 s for
/// READY=1.
pub fn start_plugin_daemon(
    tb: &mut Testbed,
    vxmeshd: &Path,
    host: &str,
    address: &str,
    etcd_url: &str,
    prefix: &str,
) -> Result<Proc, Error> {
    let sock = tb.dir().join(format!("{host}.sock"));
    let (bin, sock) = (vxmeshd.to_string_lossy(), sock.to_string_lossy());
    let plugin = plugin_args(tb, host);
    let args: Vec<&str> = [
        &*bin,
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd_url,
        "--etcd-prefix",
        prefix,
        "--node",
        host,
        "--address",
        address,
        "--socket",
        &sock,
    ]
    .into_iter()
    .chain(plugin.iter().map(String::as_str))
    .collect();
    let ns = tb.ns(host);
    tb.spawn_notify(&ns, &args, &[], Duration::from_secs(30))
}

/// A dockerd in a namespace host.
pub struct Docker {
    /// The namespace host it runs in.
    pub host: String,
    /// Its API socket.
    pub sock: PathBuf,
    root: PathBuf,
    proc: Option<Proc>,
}

impl Docker {
    /// Starts dockerd in `host` (no docker0 bridge, no iptables: the host
    /// namespace is the test's) and waits for its API; imports the image.
    pub fn start(tb: &mut Testbed, host: &str, image: &Path) -> Result<Docker, Error> {
        enter();
        let root = docker_root(tb, host);
        let mut d = Docker {
            host: host.to_string(),
            sock: docker_socket(tb, host),
            root,
            proc: None,
        };
        std::fs::create_dir_all(&d.root)
            .map_err(|e| Error::io(format!("mkdir {}", d.root.display()), e))?;
        let arg = |p: &str| d.root.join(p).to_string_lossy().to_string();
        let host_arg = format!("unix://{}", d.sock.display());
        let proc = tb.spawn_host_mounts(
            host,
            &[
                "dockerd",
                "--data-root",
                &arg("data"),
                "--exec-root",
                &arg("exec"),
                "--pidfile",
                &arg("docker.pid"),
                "-H",
                &host_arg,
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-forward=false",
            ],
            &[],
        )?;
        // Ready when the API answers (dockerd has no notify socket here).
        let t0 = Instant::now();
        while !d
            .docker_output(&["version"])
            .is_ok_and(|o| o.status.success())
        {
            if t0.elapsed() > Duration::from_secs(30) || proc.exit_status().is_some() {
                return Err(Error::NotReady {
                    cmd: proc.cmdline().to_string(),
                    reason: "its API did not answer within 30 s".into(),
                    log: proc.log.clone(),
                    log_tail: proc.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        d.proc = Some(proc);
        let image = image.to_string_lossy();
        d.checked(&["import", "--change", "CMD [\"/bin/sh\"]", &image, IMAGE])?;
        Ok(d)
    }

    /// `docker args...` against this dockerd (any exit status), stopped
    /// after [`DOCKER_BOUND`]: a call that hangs (a plugin that does not
    /// answer, an IPAM loop) ends as an error, so a run still cleans up.
    fn docker_output(&self, args: &[&str]) -> Result<Output, Error> {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args);
        let line = format!("docker {} (on {})", args.join(" "), self.host);
        run_bounded(cmd, &line, DOCKER_BOUND)
    }

    /// `docker args...` against this dockerd (any exit status).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_output(args).expect("run docker")
    }

    /// `docker args...`, asserting success; stdout trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(
            self.docker(args),
            &format!("docker {args:?} on {}", self.host),
        )
    }

    /// `docker args...`: stdout trimmed, or the failure as an error.
    pub fn checked(&self, args: &[&str]) -> Result<String, Error> {
        let what = format!("docker {} (on {})", args.join(" "), self.host);
        let out = check_status(&what, self.docker_output(args)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `docker network create` of a Docker network `net` served by the
    /// vxmesh plugin `plugin`, bound to the vxmesh network of that name;
    /// with `subnet`, vxmeshd creates it on the etcd store if it is new.
    pub fn vxmesh_network(
        &self,
        plugin: &str,
        net: &str,
        subnet: Option<&str>,
    ) -> Result<String, Error> {
        let opt = format!("network={net}");
        let mut args = vec![
            "network",
            "create",
            "-d",
            plugin,
            "--ipam-driver",
            plugin,
            "--ipam-opt",
            &opt,
            "--opt",
            &opt,
        ];
        if let Some(s) = subnet {
            args.extend(["--subnet", s]);
        }
        args.push(net);
        self.checked(&args)
    }

    /// The address of container `c` on Docker network `net`.
    pub fn ip_of(&self, c: &str, net: &str) -> Result<std::net::Ipv4Addr, Error> {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        let out = self.checked(&["inspect", "-f", &f, c])?;
        out.parse().map_err(|e| Error::Parse {
            what: "docker inspect",
            reason: format!("the address of {c} on {net}: {e}"),
            output: out.clone(),
        })
    }

    /// Runs `cmd` in container `c`.
    pub fn exec(&self, c: &str, cmd: &[&str]) -> Output {
        let mut a = vec!["exec", c];
        a.extend_from_slice(cmd);
        self.docker(&a)
    }

    /// Removes every container and custom network of this dockerd (before
    /// the plugin goes: each call that needs a missing plugin blocks ~15 s).
    fn remove_all(&self) {
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut a = vec!["rm", "-f"];
            a.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&a);
        }
        let nets = self.docker(&["network", "ls", "-q", "--filter", "type=custom"]);
        for n in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
            let _ = self.docker(&["network", "rm", n]);
        }
    }

    /// Stops dockerd now (the guard does it otherwise).
    pub fn stop(&mut self, tb: &Testbed) {
        self.remove_all();
        if let Some(p) = self.proc.take() {
            tb.stop(&p);
        }
        unmount_under(&self.root);
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.proc.is_some() {
            // No testbed here: dockerd is still stopped by the testbed's
            // own guard; this removes what would block it.
            self.remove_all();
            // SIGTERM through the pidfile: dockerd removes its mounts.
            if let Ok(pid) = std::fs::read_to_string(self.root.join("docker.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                    let t0 = Instant::now();
                    while Path::new(&format!("/proc/{pid}")).exists()
                        && t0.elapsed() < Duration::from_secs(10)
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        unmount_under(&self.root);
        leave();
    }
}

/// Rootful podman in a namespace host, CNI backend, with vxmesh-cni.
pub struct Podman {
    /// The namespace host it runs in.
    pub host: String,
    ns: String,
    /// Its containers.conf.
    pub conf: PathBuf,
    /// Its CNI configuration directory.
    pub cni_conf: PathBuf,
    root: PathBuf,
}

impl Podman {
    /// Writes podman's containers.conf and a CNI config dir holding the
    /// vxmesh-cni plugin (configured by `conflist`), imports the image.
    pub fn new(tb: &Testbed, host: &str, image: &Path, cni_bin: &Path) -> Podman {
        enter();
        let root = tb.dir().join(format!("podman-{host}"));
        let cni_conf = root.join("cni-conf");
        let cni_dir = root.join("cni-bin");
        std::fs::create_dir_all(&cni_conf).unwrap();
        std::fs::create_dir_all(&cni_dir).unwrap();
        std::fs::copy(cni_bin, cni_dir.join("vxmesh-cni")).unwrap();
        let conf = root.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\ncni_plugin_dirs = [\"{}\"]\n",
                cni_conf.display(),
                cni_dir.display()
            ),
        )
        .unwrap();
        let p = Podman {
            host: host.to_string(),
            ns: tb.ns(host),
            conf,
            cni_conf,
            root,
        };
        ok(
            p.podman(&[
                "import",
                "--change",
                "CMD [\"/bin/sh\"]",
                image.to_str().unwrap(),
                IMAGE,
            ]),
            "podman import",
        );
        p
    }

    /// A CNI network `name` served by vxmesh-cni through `socket`.
    pub fn add_network(&self, name: &str, socket: &Path) {
        std::fs::write(
            self.cni_conf.join(format!("{name}.conflist")),
            format!(
                "{{\"cniVersion\": \"1.0.0\", \"name\": \"{name}\", \"plugins\": [{{\"type\": \"vxmesh-cni\", \"network\": \"{name}\", \"socket\": \"{}\"}}]}}",
                socket.display()
            ),
        )
        .unwrap();
    }

    /// `podman args...` in its namespace with its configuration.
    pub fn podman(&self, args: &[&str]) -> Output {
        let root = self.root.join("root");
        let run = self.root.join("runroot");
        let (root, run) = (root.to_string_lossy(), run.to_string_lossy());
        let mut all = vec!["podman", "--root", &root, "--runroot", &run];
        all.extend_from_slice(args);
        nsenter_command(&self.ns, &all)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .expect("run podman")
    }

    /// `podman args...`, asserting success; stdout trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(
            self.podman(args),
            &format!("podman {args:?} on {}", self.host),
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        unmount_under(&self.root);
        leave();
    }
}
