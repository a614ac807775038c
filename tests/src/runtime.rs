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

use crate::testbed::nsenter_command;
use crate::{Proc, Testbed};

/// The Docker CLI that matches Debian's dockerd (a newer client may sit
/// earlier in PATH).
pub const DOCKER: &str = "/usr/bin/docker";
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

/// A busybox root file system with iperf3 (and the libraries `ldd` names),
/// as a tarball for `docker import` / `podman import`.
pub fn image_tarball(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "www",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox-static installed");
    let list = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .unwrap();
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        let p = r.join(a);
        if !p.exists() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/bin/busybox", &p).unwrap();
        }
    }
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    // iperf3 and what it links.
    let iperf = "/usr/bin/iperf3";
    std::fs::copy(iperf, r.join("usr/bin/iperf3")).expect("iperf3 installed");
    let ldd = Command::new("ldd").arg(iperf).output().unwrap();
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = l
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            let to = r.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&p, &to).unwrap();
        }
    }
    let tar = dir.join("busybox.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&r)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {out:?}");
    tar
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
    pub fn start(tb: &mut Testbed, host: &str, image: &Path) -> Docker {
        enter();
        let root = tb.dir().join(format!("docker-{host}"));
        std::fs::create_dir_all(&root).unwrap();
        let sock = root.join("docker.sock");
        let arg = |p: &str| root.join(p).to_string_lossy().to_string();
        let host_arg = format!("unix://{}", sock.display());
        let proc = tb
            .spawn_host_mounts(
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
            )
            .expect("spawn dockerd");
        let d = Docker {
            host: host.to_string(),
            sock,
            root,
            proc: Some(proc),
        };
        // Ready when the API answers (dockerd has no notify socket here).
        let t0 = Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "dockerd on {host} not up: {}",
                d.proc.as_ref().unwrap().log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(&host_arg)
            .args(["import", "--change", "CMD [\"/bin/sh\"]"])
            .arg(image)
            .arg(IMAGE)
            .output()
            .unwrap();
        ok(out, "docker import");
        d
    }

    /// `docker args...` against this dockerd (any exit status).
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// `docker args...`, asserting success; stdout trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(
            self.docker(args),
            &format!("docker {args:?} on {}", self.host),
        )
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
