//! The events: h1's daemon handed over or crashed (under a stand-in for
//! systemd's descriptor store), and HAProxy reloaded with `-sf -x`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vxmesh_netns::fdstore::FdStore;
use vxmesh_netns::Testbed;

/// A process started outside the testbed's tracking (a daemon's successor,
/// one restarted by the stand-in, HAProxy's reloads): stopped by pid.
pub(super) struct Pid(pub(super) i32);

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
pub(super) fn reap() {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(s, nix::sys::wait::WaitStatus::StillAlive) {
            break;
        }
    }
}

/// h1's daemon as the events see it: under the stand-in for systemd.
pub(super) struct Node {
    pub(super) store: FdStore,
    pub(super) args: Vec<String>,
    pub(super) log: PathBuf,
    pub(super) ns: String,
    /// The process serving the node now.
    pub(super) current: Option<Pid>,
}

impl Node {
    /// Starts the daemon (the store fills as it comes up).
    pub(super) fn start(&mut self) -> anyhow::Result<()> {
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
    pub(super) fn handover(&mut self) -> anyhow::Result<()> {
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
    pub(super) fn crash(&mut self) -> anyhow::Result<()> {
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

pub(super) const HAPROXY_PORT: u16 = 8081;

pub(super) fn haproxy_cfg(stats: &std::path::Path) -> String {
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
pub(super) fn haproxy(
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
