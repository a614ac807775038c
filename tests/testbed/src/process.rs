//! Processes started inside the testbed's namespaces.
//!
//! Every spawned process gets a watcher thread that blocks in
//! `waitid(WEXITED | WNOWAIT)`: it learns the exit status *without reaping*,
//! so the pid (and the process group of the same id) stays reserved until the
//! testbed drops. That is what makes signalling by pid safe at any time: a pid
//! of ours can never have been recycled for someone else's process.
//!
//! Readiness follows systemd's sd_notify protocol. The notify socket is a
//! filesystem path in the testbed directory, not an abstract socket: abstract
//! unix socket names are scoped to a network namespace, so a daemon inside a
//! host namespace could not reach one bound in the test's namespace.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::testbed::{netns_command, Testbed};
use crate::Error;

/// Time a process gets between SIGTERM and SIGKILL when the testbed drops.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Time allowed for a SIGKILLed process to be seen exiting.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Longest wait in one `recv` while waiting for readiness, so that an early
/// exit of the process is noticed quickly.
const READY_SLICE: Duration = Duration::from_millis(20);
/// Lines of log included in readiness errors.
const TAIL_LINES: usize = 30;

/// A process started by [`Testbed::spawn`] or [`Testbed::spawn_notify`].
/// The testbed owns its lifetime: it is stopped when the testbed drops.
#[derive(Debug)]
pub struct Proc {
    /// Its pid (that of the program itself: `ip netns exec` execs in place).
    pub pid: u32,
    /// Its log file: stdout and stderr, in the testbed directory.
    pub log: PathBuf,
    cmd: String,
    exit: Arc<ExitSlot>,
    notify: Option<UnixDatagram>,
}

impl Proc {
    /// The command line it was started with.
    pub fn cmdline(&self) -> &str {
        &self.cmd
    }

    /// The last `lines` lines of its log (lossily decoded).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = Vec::new();
        if let Err(e) = File::open(&self.log).and_then(|mut f| f.read_to_end(&mut text)) {
            return format!("(cannot read {}: {e})", self.log.display());
        }
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.get()
    }

    /// Waits up to `timeout` for it to exit; `None` if still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.exit.wait(timeout)
    }

    /// The next sd_notify message (e.g. `"STATUS=serving\nWATCHDOG=1"`),
    /// waiting up to `timeout`. Only messages sent after the one carrying
    /// `READY=1` are seen. `None` on timeout, or when the process was not
    /// started with [`Testbed::spawn_notify`].
    pub fn recv_notify(&self, timeout: Duration) -> Option<String> {
        recv_message(self.notify.as_ref()?, timeout)
    }
}

/// Exit status of a watched process, filled in by its watcher thread.
#[derive(Debug, Default)]
pub(crate) struct ExitSlot {
    status: Mutex<Option<ExitStatus>>,
    cv: Condvar,
}

impl ExitSlot {
    /// Starts a watcher thread for `pid`, a child of this process.
    fn watch(pid: u32) -> Result<Arc<ExitSlot>, Error> {
        let slot = Arc::new(ExitSlot::default());
        let shared = slot.clone();
        std::thread::Builder::new()
            .name(format!("watch-{pid}"))
            .spawn(move || {
                let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
                let status = loop {
                    match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
                        Ok(WaitStatus::Exited(_, code)) => break ExitStatus::from_raw(code << 8),
                        Ok(WaitStatus::Signaled(_, sig, core)) => {
                            break ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 })
                        }
                        Ok(_) | Err(Errno::EINTR) => continue,
                        // Someone else reaped it (ECHILD): report "exit 255".
                        Err(_) => break ExitStatus::from_raw(255 << 8),
                    }
                };
                *shared.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                shared.cv.notify_all();
            })
            .map_err(|e| Error::io("spawn a watcher thread", e))?;
        Ok(slot)
    }

    fn get(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// A spawned process as the testbed tracks it. The `Child` is reaped only
/// when the testbed drops.
pub(crate) struct Tracked {
    pid: u32,
    cmd: String,
    child: Child,
    exit: Arc<ExitSlot>,
}

impl Testbed {
    /// Spawns a long-running process in namespace `ns` (short or full name)
    /// with extra environment `envs`, stdin from /dev/null and stdout/stderr
    /// appended to a log file in [`Testbed::dir`]. It runs in its own process
    /// group and is tracked: stopped (SIGTERM, then SIGKILL) when the testbed
    /// drops.
    pub fn spawn(&mut self, ns: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<Proc, Error> {
        self.spawn_inner(ns, args, envs, None, false)
    }

    /// Like [`Testbed::spawn`], entering only the network namespace
    /// (`nsenter --net`) and keeping the host's mounts. `ip netns exec`
    /// remounts /sys privately, where /sys/fs/cgroup is empty: container
    /// runtimes (dockerd, podman) need this instead.
    pub fn spawn_host_mounts(
        &mut self,
        ns: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Proc, Error> {
        self.spawn_inner(ns, args, envs, None, true)
    }

    /// Spawns a one-member etcd (Debian's `etcd-server`) in namespace `ns`,
    /// serving clients on `client_url` (e.g. `http://198.18.0.250:2379`),
    /// its peer port on loopback, its data in `data` (kept across restarts
    /// on the same directory). Does not wait for it to be healthy.
    pub fn spawn_etcd(&mut self, ns: &str, client_url: &str, data: &Path) -> Result<Proc, Error> {
        self.spawn_etcd_args(ns, client_url, data, &[])
    }

    /// [`Testbed::spawn_etcd`], then waits up to 20 s for its `/health` to
    /// say true (`client_url` is `http://address:port`).
    pub fn start_etcd(&mut self, ns: &str, client_url: &str, data: &Path) -> Result<Proc, Error> {
        let p = self.spawn_etcd(ns, client_url, data)?;
        let addr: std::net::SocketAddr =
            client_url
                .trim_start_matches("http://")
                .parse()
                .map_err(|e| Error::InvalidAddress {
                    addr: format!("{client_url} ({e})"),
                    reason: "not http://address:port",
                })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.etcd_healthy(ns, addr) {
            let reason = match p.exit_status() {
                Some(s) => format!("it exited: {s}"),
                None if Instant::now() > deadline => "not healthy within 20 s".into(),
                None => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            return Err(Error::NotReady {
                cmd: p.cmdline().to_string(),
                reason,
                log: p.log.clone(),
                log_tail: p.log_tail(30),
            });
        }
        Ok(p)
    }

    /// [`Testbed::spawn_etcd`] with more etcd flags (TLS files, a metrics
    /// listener, ...).
    pub fn spawn_etcd_args(
        &mut self,
        ns: &str,
        client_url: &str,
        data: &Path,
        extra: &[&str],
    ) -> Result<Proc, Error> {
        let peer = "http://127.0.0.1:2380";
        let data = data.to_string_lossy();
        let cluster = format!("e0={peer}");
        self.spawn(
            ns,
            &[
                "etcd",
                "--name",
                "e0",
                "--data-dir",
                &data,
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &cluster,
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
            &[],
        )
    }

    /// True when the etcd serving `client` (`address:port`) from namespace
    /// `ns` answers `GET /health` with `"health":"true"`.
    pub fn etcd_healthy(&self, ns: &str, client: std::net::SocketAddr) -> bool {
        use std::io::{Read, Write};
        self.in_ns(ns, move || {
            let Ok(mut s) =
                std::net::TcpStream::connect_timeout(&client, Duration::from_millis(500))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            if s.write_all(b"GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
                .is_err()
            {
                return false;
            }
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.contains("\"health\":\"true\"") || out.contains("\"health\": \"true\"")
        })
        .unwrap_or(false)
    }

    /// Like [`Testbed::spawn`], with `NOTIFY_SOCKET` set to a fresh unix
    /// datagram socket in the testbed directory; waits up to `timeout` for a
    /// message with the line `READY=1`. If the process exits first or time
    /// runs out, it is stopped and an [`Error::NotReady`] carries the tail of
    /// its log and the messages it did send. Messages after the `READY=1` one
    /// are read with [`Proc::recv_notify`]; earlier ones are dropped.
    pub fn spawn_notify(
        &mut self,
        ns: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Proc, Error> {
        let path = self.next_path("notify", "sock");
        let sock = UnixDatagram::bind(&path)
            .map_err(|e| Error::io(format!("bind notify socket {}", path.display()), e))?;
        let deadline = Instant::now() + timeout;
        let proc = self.spawn_inner(ns, args, envs, Some((sock, path)), false)?;
        let sock = proc
            .notify
            .as_ref()
            .expect("spawn_inner keeps the notify socket");
        let mut early = Vec::new();
        let failure = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break format!("no READY=1 within {timeout:?}");
            }
            // After an exit, one last non-blocking read: a message may have
            // been queued between the previous read and the exit check.
            let exited = proc.exit_status();
            let wait = if exited.is_some() {
                Duration::ZERO
            } else {
                left.min(READY_SLICE)
            };
            match recv_message(sock, wait) {
                Some(msg) if msg.lines().any(|l| l == "READY=1") => return Ok(proc),
                Some(msg) => early.push(msg.replace('\n', " ")),
                None => {
                    if let Some(status) = exited {
                        break format!("exited with {status} before READY=1");
                    }
                }
            }
        };
        let stopped = self.stop(&proc);
        let mut reason = failure;
        if !early.is_empty() {
            reason += &format!("; it sent {early:?}");
        }
        if !stopped {
            reason += " (and could not be stopped)";
        }
        Err(Error::NotReady {
            cmd: proc.cmd.clone(),
            reason,
            log: proc.log.clone(),
            log_tail: proc.log_tail(TAIL_LINES),
        })
    }

    /// Sends `sig` to a process this testbed started. [`Error::NotRunning`]
    /// if it has exited, [`Error::UnknownProcess`] if it is not ours.
    pub fn signal(&self, p: &Proc, sig: Signal) -> Result<(), Error> {
        let t = self.tracked(p)?;
        // The pid is not reaped before the testbed drops, so it is still ours.
        if let Some(status) = t.exit.get() {
            return Err(Error::NotRunning {
                pid: t.pid,
                cmd: t.cmd.clone(),
                status,
            });
        }
        kill(Pid::from_raw(t.pid as i32), sig)
            .map_err(|e| Error::sys(format!("kill({}, {sig}) for `{}`", t.pid, t.cmd), e))
    }

    /// Waits up to `timeout` for a process this testbed started to exit.
    /// `None` if it is still running (or is not ours).
    pub fn wait_exit(&self, p: &Proc, timeout: Duration) -> Option<ExitStatus> {
        self.tracked(p).ok()?.exit.wait(timeout)
    }

    /// Stops one process now: SIGTERM, a bounded wait, SIGKILL. True once it
    /// has exited.
    pub fn stop(&self, p: &Proc) -> bool {
        match self.tracked(p) {
            Ok(t) => terminate(std::slice::from_ref(t)),
            Err(_) => false,
        }
    }

    fn tracked(&self, p: &Proc) -> Result<&Tracked, Error> {
        self.procs
            .iter()
            .find(|t| t.pid == p.pid && Arc::ptr_eq(&t.exit, &p.exit))
            .ok_or(Error::UnknownProcess { pid: p.pid })
    }

    /// A fresh path `<dir>/<stem>-<n>.<ext>`.
    pub(crate) fn next_path(&mut self, stem: &str, ext: &str) -> PathBuf {
        let n = self.next_file;
        self.next_file += 1;
        self.dir().join(format!("{stem}-{n}.{ext}"))
    }

    fn spawn_inner(
        &mut self,
        ns: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        notify: Option<(UnixDatagram, PathBuf)>,
        host_mounts: bool,
    ) -> Result<Proc, Error> {
        let full = self.resolve(ns)?;
        let line = self.cmdline(ns, args);
        let prog = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("proc");
        let stem: String = format!("{ns}-{prog}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let log = self.next_path(&stem, "log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("open log {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| Error::io("dup log fd", e))?;
        // Started with default signal handling, as systemd starts a
        // service: a test run started in the background (`cmd &` in a
        // script) ignores SIGINT and SIGQUIT, and ignored signals survive
        // exec, so a spawned `sleep` would shrug off the SIGINT a test sends.
        let with_defaults: Vec<&str> = ["env", "--default-signal=HUP,INT,QUIT,TERM"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let mut cmd = if host_mounts {
            crate::testbed::nsenter_command(&full, &with_defaults)
        } else {
            netns_command(&full, &with_defaults)
        };
        cmd.envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some((_, path)) = &notify {
            cmd.env("NOTIFY_SOCKET", path);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
        let pid = child.id();
        let exit = match ExitSlot::watch(pid) {
            Ok(exit) => exit,
            Err(e) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                return Err(e);
            }
        };
        self.procs.push(Tracked {
            pid,
            cmd: line.clone(),
            child,
            exit: exit.clone(),
        });
        Ok(Proc {
            pid,
            log,
            cmd: line,
            exit,
            notify: notify.map(|(sock, _)| sock),
        })
    }
}

/// One datagram as text, waiting up to `timeout` (zero: do not wait).
fn recv_message(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = if timeout.is_zero() {
        sock.set_nonblocking(true).ok()?;
        let r = sock.recv(&mut buf);
        sock.set_nonblocking(false).ok()?;
        r.ok()?
    } else {
        sock.set_read_timeout(Some(timeout)).ok()?;
        sock.recv(&mut buf).ok()?
    };
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// SIGTERM to every running one, a bounded wait, SIGKILL to the rest, a
/// bounded wait. True when all have exited.
fn terminate(procs: &[Tracked]) -> bool {
    let send = |sig| {
        for t in procs.iter().filter(|t| t.exit.get().is_none()) {
            let _ = kill(Pid::from_raw(t.pid as i32), sig);
        }
    };
    let wait_all = |grace| {
        let deadline = Instant::now() + grace;
        procs.iter().all(|t| {
            t.exit
                .wait(deadline.saturating_duration_since(Instant::now()))
                .is_some()
        })
    };
    send(Signal::SIGTERM);
    if wait_all(TERM_GRACE) {
        return true;
    }
    send(Signal::SIGKILL);
    wait_all(KILL_GRACE)
}

/// Called by the testbed's Drop: stops every process, kills what is left of
/// their process groups (grandchildren), then reaps them. Never panics.
pub(crate) fn stop_all(procs: &mut Vec<Tracked>) {
    terminate(procs);
    for mut t in procs.drain(..) {
        // The leader is unreaped, so the group id is still ours.
        let _ = killpg(Pid::from_raw(t.pid as i32), Signal::SIGKILL);
        if t.exit.get().is_some() {
            let _ = t.child.wait();
        } else {
            eprintln!(
                "vxmesh-netns: pid {} (`{}`) survived SIGKILL; left behind",
                t.pid, t.cmd
            );
        }
    }
}

/// Runs a command to completion with captured output, bounded by `timeout`.
/// Past it, the command's process group is killed and [`Error::Timeout`]
/// carries whatever stderr was captured.
pub(crate) fn run_bounded(
    mut cmd: Command,
    line: &str,
    timeout: Duration,
) -> Result<Output, Error> {
    let deadline = Instant::now() + timeout;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        cmd: line.into(),
        source,
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        let mut pipe = pipe.expect("both pipes were requested");
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    drop(tx);
    let exit = ExitSlot::watch(child.id()).inspect_err(|_| {
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait();
    })?;
    let status = exit.wait(deadline.saturating_duration_since(Instant::now()));
    // Output pipes close when the process and anything it left behind exit.
    let mut streams = [Vec::new(), Vec::new()];
    let mut got = 0;
    while status.is_some() && got < 2 {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match rx.recv_timeout(left) {
            Ok((i, buf)) => {
                streams[i] = buf;
                got += 1;
            }
            Err(_) => break,
        }
    }
    if let (Some(status), 2) = (status, got) {
        let _ = child.wait();
        let [stdout, stderr] = streams;
        return Ok(Output {
            status,
            stdout,
            stderr,
        });
    }
    // Timed out (or a leftover holds the pipes): kill the whole group.
    let _ = killpg(pid, Signal::SIGKILL);
    exit.wait(KILL_GRACE);
    let _ = child.try_wait();
    while let Ok((i, buf)) = rx.recv_timeout(Duration::from_millis(500)) {
        streams[i] = buf;
    }
    let mut detail = String::new();
    for (name, bytes) in [("stdout", &streams[0]), ("stderr", &streams[1])] {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.trim().lines().collect();
        if !lines.is_empty() {
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            detail += &format!("\n--- {name} (last lines) ---\n{tail}");
        }
    }
    Err(Error::Timeout {
        cmd: line.into(),
        after: timeout,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_run_returns_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_bounded(cmd, "sh", Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn bounded_run_kills_on_timeout() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started >&2; sleep 30"]);
        let t0 = Instant::now();
        let err = run_bounded(cmd, "sleepy", Duration::from_millis(300)).unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Timeout { .. }) && msg.contains("started"),
            "{msg}"
        );
    }

    #[test]
    fn signalled_status_is_decoded() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let slot = ExitSlot::watch(child.id()).unwrap();
        assert_eq!(slot.wait(Duration::from_millis(50)), None);
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = slot.wait(Duration::from_secs(5)).expect("exited");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        let mut child = child;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
}
