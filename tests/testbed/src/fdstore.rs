//! A stand-in for systemd's notify socket with its file-descriptor store,
//! speaking the real protocol (`sd_notify(3)`, `sd_pid_notify_with_fds(3)`,
//! `sd_listen_fds(3)`): datagrams of `KEY=VALUE` lines on a unix socket,
//! `FDSTORE=1` with `FDNAME=` and the descriptors as `SCM_RIGHTS`,
//! `FDSTOREREMOVE=1`; and a restart that hands the stored descriptors to
//! the new process as descriptors 3.. with `LISTEN_FDS`, `LISTEN_FDNAMES`
//! and `LISTEN_PID`, as systemd does after `Restart=on-failure`.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// What the stand-in holds: the stored descriptors by name, in the order
/// they came, and every message as text.
#[derive(Default)]
pub struct Held {
    /// The stored descriptors, by name.
    pub fds: Vec<(String, OwnedFd)>,
    /// Every message, as text.
    pub messages: Vec<String>,
}

impl Held {
    /// True once a message said `line`, counting from message `from`.
    pub fn said(&self, from: usize, line: &str) -> bool {
        self.messages[from.min(self.messages.len())..]
            .iter()
            .any(|m| m.lines().any(|l| l == line))
    }

    /// The names held, in order.
    pub fn names(&self) -> Vec<&str> {
        self.fds.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The stand-in: a thread reads the notify socket all the time (as the
/// service manager does; a full socket would block the service).
pub struct FdStore {
    /// The notify socket (`NOTIFY_SOCKET`).
    pub path: PathBuf,
    held: Arc<(Mutex<Held>, Condvar)>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FdStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Owns `raw`, a new descriptor this process was just given (by
/// SCM_RIGHTS or F_DUPFD).
#[allow(unsafe_code)]
fn own(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` is open and nothing else in the process owns it: it
    // was created for this call's caller a moment ago.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// True when `a` and `b` are the same open file description (kcmp(2)
/// KCMP_FILE), the test systemd applies to ignore a descriptor it already
/// holds. (Comparing inodes would not do: every TAP queue is an open of
/// /dev/net/tun.)
#[allow(unsafe_code)]
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(std::process::id() as i32);
    // SAFETY: kcmp only compares two descriptors of this process, both
    // open for the duration of the call; it reads and writes no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a.as_raw_fd()),
            libc::c_long::from(b.as_raw_fd()),
        )
    };
    r == 0
}

impl FdStore {
    /// Binds the notify socket in `dir` and starts reading it.
    pub fn bind(dir: &std::path::Path) -> FdStore {
        let path = dir.join("fdstore-notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let held = Arc::new((Mutex::new(Held::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (held, stop) = (held.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some((text, fds)) = receive(&sock) {
                        let (h, cv) = &*held;
                        take(&mut h.lock().unwrap(), text, fds);
                        cv.notify_all();
                    }
                }
            })
        };
        FdStore {
            path,
            held,
            stop,
            reader: Some(reader),
        }
    }

    /// The environment a service under this stand-in gets.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.path.display().to_string()),
            ("FDSTORE".into(), "128".into()),
        ]
    }

    /// Waits until `until` holds (true) or `timeout` passes (false).
    pub fn wait(&self, timeout: Duration, until: impl Fn(&Held) -> bool) -> bool {
        let (h, cv) = &*self.held;
        let g = h.lock().unwrap();
        let (g, _) = cv.wait_timeout_while(g, timeout, |h| !until(h)).unwrap();
        until(&g)
    }

    /// How many messages came so far.
    pub fn messages(&self) -> usize {
        self.held.0.lock().unwrap().messages.len()
    }

    /// The names held now.
    pub fn names(&self) -> Vec<String> {
        let h = self.held.0.lock().unwrap();
        h.names().into_iter().map(String::from).collect()
    }

    /// Starts `args` in namespace `ns` (full name) as systemd restarts a
    /// service with a store: the stored descriptors as 3.., their names in
    /// `LISTEN_FDNAMES`, `LISTEN_PID` its own pid. Output goes to `log`.
    pub fn restart(&self, ns: &str, args: &[String], log: &std::path::Path) -> std::process::Child {
        // The stored descriptors at 100.. without close-on-exec, for bash
        // to move to 3.. (the numbers it would land on may be taken here).
        let held = self.held.0.lock().unwrap();
        let high: Vec<OwnedFd> = held
            .fds
            .iter()
            .map(|(_, fd)| {
                own(nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD(100)).expect("dup"))
            })
            .collect();
        let mut script = String::new();
        for (i, fd) in high.iter().enumerate() {
            script += &format!("exec {}<&{}; ", 3 + i, fd.as_raw_fd());
        }
        for fd in &high {
            script += &format!("exec {}<&-; ", fd.as_raw_fd());
        }
        let names: Vec<&str> = held.names();
        // systemd sets the variables only when it passes descriptors.
        if !high.is_empty() {
            script += &format!(
                "export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES='{}'; ",
                high.len(),
                names.join(":")
            );
        }
        script += "exec \"$@\"";
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", &script, "bash"])
            .args(args)
            .envs(self.env())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("restart");
        drop(high);
        drop(held);
        child
    }
}

/// One message and its descriptors, or none within the read timeout.
fn receive(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().map(own));
        }
    }
    let n = msg.bytes;
    Some((String::from_utf8_lossy(&buf[..n]).to_string(), fds))
}

/// Applies one message as systemd does: FDSTORE=1 keeps its descriptors
/// under FDNAME (one already held is ignored), FDSTOREREMOVE=1 drops every
/// descriptor of that name.
fn take(h: &mut Held, text: String, fds: Vec<OwnedFd>) {
    let has = |l: &str| text.lines().any(|x| x == l);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("FDNAME="))
        .unwrap_or("stored")
        .to_string();
    if has("FDSTORE=1") {
        for fd in fds {
            if !h.fds.iter().any(|(_, f)| same_file(f, &fd)) {
                h.fds.push((name.clone(), fd));
            }
        }
    } else if has("FDSTOREREMOVE=1") {
        h.fds.retain(|(n, _)| *n != name);
    }
    h.messages.push(text);
}
