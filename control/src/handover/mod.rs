//! Handing a running node over to a new vxmeshd (an upgrade, or a plain
//! restart without an outage), and getting descriptors back from systemd
//! after a crash.
//!
//! **Handover.** The running daemon (the predecessor) listens on
//! `<admin socket>.handover`, a `SOCK_SEQPACKET` socket mode 0600 in the
//! admin socket's 0700 directory; it talks only to root or its own user
//! (SO_PEERCRED). A new daemon started with `--takeover` (or spawned by
//! the predecessor itself on SIGUSR2) connects and says `hello` with the
//! version it reads; the predecessor `offer`s its version. If the
//! successor cannot read it, it `decline`s: the predecessor stops cleanly
//! (its devices stay, they are persistent) and the successor starts afresh
//! once it is gone. Otherwise the predecessor sends every descriptor that
//! carries traffic (TAP queues, underlay sockets, published-port and VIP
//! listeners, DNS sockets, the admin, plugin and handover sockets), named,
//! then its saved state ([`Saved`]: learned forwarding entries, the etcd
//! lease), then `end`. Both processes now serve the same queues and
//! sockets; the successor builds its node from them ([`vxmesh_dataplane::io::inherit`]),
//! and once it is ready says `taken`. Only then does the predecessor stop
//! its lanes and accept loops, let the connections it relays finish (up to
//! the services' `drain_ms`), and exit without leaving the cluster. If the
//! successor fails or goes away before `taken`, the predecessor simply
//! runs on: it never stopped anything.
//!
//! **Crash.** Under systemd with a descriptor store (`FileDescriptorStoreMax=`
//! in the unit, `$FDSTORE` in the environment), the daemon keeps the same
//! named descriptors there ([`fdstore`]); a restart after a crash gets them
//! back as `LISTEN_FDS` and resumes without re-creating anything.

pub mod fdstore;
pub mod node;
#[allow(unsafe_code)]
pub mod wire;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use wire::{Conn, Frame, MAX_FDS};

/// The version of what follows `offer` (the names of descriptors and the
/// layout of [`Saved`]). A successor that reads another version declines.
pub const VERSION: u32 = 1;

/// At most this many descriptors and this much saved state are taken.
const MAX_TOTAL_FDS: usize = 4096;
const MAX_STATE: usize = 64 << 20;
/// Saved state is sent in pieces of this many bytes.
const CHUNK: usize = 48 * 1024;

/// The handover socket next to the admin socket `socket`.
pub fn path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".handover");
    PathBuf::from(p)
}

pub use crate::state::handed_over;

/// The state worth keeping across a handover.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// Learned forwarding entries (networks with `learning = true`).
    #[serde(default)]
    pub learned: Vec<Learned>,
    /// The etcd lease this node is registered under: the successor keeps
    /// it alive instead of registering afresh, so no other node ever sees
    /// this one leave.
    #[serde(default)]
    pub etcd_lease: Option<i64>,
    /// Tasks that were down or ejected, as (service, address): they start
    /// Down, not Up, until probes bring them back.
    #[serde(default)]
    pub unhealthy: Vec<(String, Ipv4Addr)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    pub network: String,
    pub mac: String,
    pub vtep: Ipv4Addr,
    /// How long ago it was last seen, so it ages out on time.
    pub age_ms: u64,
}

/// What the predecessor hands over.
pub struct Package {
    pub fds: Vec<(String, OwnedFd)>,
    pub saved: Saved,
}

/// How a handover conversation ended for the predecessor.
pub enum Event {
    /// The successor serves the node: stop and leave.
    Taken { pid: i32 },
    /// The successor cannot read this version: stop cleanly so it can
    /// start afresh (it waits for this process to exit).
    Declined { pid: i32, reason: String },
}

/// A descriptor name a successor accepts: printable ASCII without `:`
/// (so that the same names work in systemd's store), at most 255 bytes.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Serves the handover socket `listener` on a thread of its own until a
/// successor took the node over or `stop` is set. `collect` gathers what to
/// hand over (called only once a successor accepted). Refused conversations
/// are logged and change nothing.
pub fn serve(
    listener: OwnedFd,
    node: String,
    collect: impl Fn() -> io::Result<Package> + Send + 'static,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vxm-handover".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let conn = match wire::accept(&listener, Duration::from_millis(200)) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(error = %e, "handover socket: accept failed");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                // The connection closes after the outcome is logged.
                match converse(&conn, &node, &collect) {
                    Ok(Some(ev)) => {
                        if matches!(ev, Event::Taken { .. }) {
                            crate::state::set_handed_over();
                        }
                        let _ = events.send(ev);
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "handover refused; running on"),
                }
            }
        })
}

/// One conversation, predecessor side.
fn converse(
    conn: &Conn,
    node: &str,
    collect: &dyn Fn() -> io::Result<Package>,
) -> io::Result<Option<Event>> {
    let (uid, pid) = conn.peer()?;
    let me = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("a connection from uid {uid} (pid {pid}): only root or uid {me} may take the node over"),
        ));
    }
    conn.set_timeout(Duration::from_secs(10))?;
    // Nothing the successor sends may carry descriptors.
    let recv = || -> io::Result<Frame> {
        let (f, fds) = conn.recv()?;
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pid {pid} sent {} descriptors where none belong", fds.len()),
            ));
        }
        Ok(f)
    };
    match recv()? {
        Frame::Hello { version, .. } => {
            info!(
                successor = pid,
                version, "a successor asks to take the node over"
            )
        }
        f => return Err(unexpected(pid, &f)),
    }
    conn.send(
        &Frame::Offer {
            version: VERSION,
            node: node.to_string(),
            pid: std::process::id(),
        },
        &[],
    )?;
    match recv()? {
        Frame::Accept => {}
        Frame::Decline { reason } => return Ok(Some(Event::Declined { pid, reason })),
        f => return Err(unexpected(pid, &f)),
    }
    let package = match collect() {
        Ok(p) => p,
        Err(e) => {
            let _ = conn.send(
                &Frame::Abort {
                    reason: e.to_string(),
                },
                &[],
            );
            return Err(e);
        }
    };
    for chunk in package.fds.chunks(MAX_FDS) {
        let names = chunk.iter().map(|(n, _)| n.clone()).collect();
        let fds: Vec<_> = chunk.iter().map(|(_, f)| f.as_fd()).collect();
        conn.send(&Frame::Fds { names }, &fds)?;
    }
    let state = serde_json::to_string(&package.saved).map_err(io::Error::other)?;
    for chunk in chunks(&state, CHUNK) {
        conn.send(
            &Frame::State {
                chunk: chunk.to_string(),
            },
            &[],
        )?;
    }
    conn.send(&Frame::End, &[])?;
    info!(
        successor = pid,
        descriptors = package.fds.len(),
        state_bytes = state.len(),
        "node handed over; waiting for the successor"
    );
    // The successor connects to etcd and starts everything before it says
    // so: give it time.
    conn.set_timeout(Duration::from_secs(60))?;
    match recv() {
        Ok(Frame::Taken) => Ok(Some(Event::Taken { pid })),
        Ok(Frame::Abort { reason }) => Err(io::Error::other(format!(
            "the successor (pid {pid}) gave up: {reason}"
        ))),
        Ok(f) => Err(unexpected(pid, &f)),
        Err(e) => Err(io::Error::other(format!(
            "the successor (pid {pid}) went away before taking over: {e}"
        ))),
    }
}

fn unexpected(pid: i32, f: &Frame) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("pid {pid} sent an unexpected {f:?}"),
    )
}

/// `s` in pieces of at most `n` bytes, cut at character boundaries.
fn chunks(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut cut = rest.len().min(n);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (a, b) = rest.split_at(cut);
        out.push(a);
        rest = b;
    }
    out
}

/// How asking a running daemon for its node ended, successor side.
pub enum Outcome {
    /// Its descriptors are in the inherit pool; say [`Takeover::done`]
    /// once this daemon serves the node.
    Taken(Takeover),
    /// It speaks another version and stops cleanly: start afresh once it
    /// is gone ([`Fallback::wait`]).
    Fallback(Fallback),
}

/// A predecessor making way.
pub struct Fallback {
    /// Its pid, as the kernel reported it for the connection.
    pub pid: i32,
}

impl Fallback {
    /// Waits up to `limit` until the predecessor has exited (it drains its
    /// connections first). A process that exited has closed its sockets and
    /// TAP queues, so they can be bound and attached again.
    pub fn wait(self, limit: Duration) -> io::Result<()> {
        if wire::wait_exit(self.pid, limit)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the running daemon (pid {}) did not stop within {limit:?}",
                    self.pid
                ),
            ))
        }
    }
}

pub struct Takeover {
    conn: Conn,
    pub saved: Saved,
    pub predecessor: i32,
}

impl Takeover {
    /// Tells the predecessor this daemon serves the node now.
    pub fn done(self) -> io::Result<()> {
        self.conn.send(&Frame::Taken, &[])
    }

    /// Tells the predecessor to run on.
    pub fn abort(self, reason: &str) {
        let _ = self.conn.send(
            &Frame::Abort {
                reason: reason.to_string(),
            },
            &[],
        );
    }
}

/// Asks the daemon on the handover socket at `path` for its node, speaking
/// version `speak` (normally [`VERSION`]).
pub fn take_over(path: &Path, speak: u32) -> io::Result<Outcome> {
    let conn = Conn::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display())))?;
    let (uid, peer_pid) = conn.peer()?;
    let me = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is served by uid {uid}, not root", path.display()),
        ));
    }
    conn.set_timeout(Duration::from_secs(30))?;
    conn.send(
        &Frame::Hello {
            version: speak,
            pid: std::process::id(),
        },
        &[],
    )?;
    let (version, pid) = match conn.recv()?.0 {
        Frame::Offer { version, pid, node } => {
            info!(predecessor = pid, version, %node, "the running daemon offers its node");
            (version, pid as i32)
        }
        f => return Err(unexpected(0, &f)),
    };
    if version != speak {
        let reason = format!("it offers version {version}; this daemon reads {speak}");
        conn.send(
            &Frame::Decline {
                reason: reason.clone(),
            },
            &[],
        )?;
        warn!(predecessor = pid, %reason, "declined the handover: starting afresh once it stopped");
        return Ok(Outcome::Fallback(Fallback { pid: peer_pid }));
    }
    conn.send(&Frame::Accept, &[])?;
    let mut named: Vec<(String, OwnedFd)> = Vec::new();
    let mut state = String::new();
    let fail = |conn: &Conn, why: String| {
        let _ = conn.send(
            &Frame::Abort {
                reason: why.clone(),
            },
            &[],
        );
        io::Error::new(io::ErrorKind::InvalidData, why)
    };
    loop {
        let (frame, fds) = conn.recv()?;
        match frame {
            Frame::Fds { names } => {
                if names.len() != fds.len() || names.iter().any(|n| !valid_name(n)) {
                    return Err(fail(
                        &conn,
                        format!(
                            "{} names for {} descriptors, or a name that is not one",
                            names.len(),
                            fds.len()
                        ),
                    ));
                }
                named.extend(names.into_iter().zip(fds));
                if named.len() > MAX_TOTAL_FDS {
                    return Err(fail(&conn, "too many descriptors".into()));
                }
            }
            Frame::State { chunk } if fds.is_empty() => {
                state.push_str(&chunk);
                if state.len() > MAX_STATE {
                    return Err(fail(&conn, "saved state too large".into()));
                }
            }
            Frame::End if fds.is_empty() => break,
            Frame::Abort { reason } => {
                return Err(io::Error::other(format!(
                    "the running daemon gave up: {reason}"
                )))
            }
            f => return Err(fail(&conn, format!("unexpected {f:?}"))),
        }
    }
    let saved: Saved = serde_json::from_str(&state)
        .map_err(|e| fail(&conn, format!("the saved state does not read: {e}")))?;
    info!(
        predecessor = pid,
        descriptors = named.len(),
        learned = saved.learned.len(),
        "took the node's descriptors and state"
    );
    vxmesh_dataplane::io::inherit::offer(named);
    Ok(Outcome::Taken(Takeover {
        conn,
        saved,
        predecessor: pid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A predecessor serving a handover socket in a fresh directory, handing
    /// over one pipe named `test/pipe` and `saved`.
    fn predecessor(
        saved: Saved,
    ) -> (
        tempdir::Dir,
        tokio::sync::mpsc::UnboundedReceiver<Event>,
        Arc<AtomicBool>,
    ) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("h.handover");
        let listener = wire::bind(&path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        serve(
            listener,
            "h1".into(),
            move || {
                let (r, _w) = nix::unistd::pipe()?;
                Ok(Package {
                    fds: vec![("test/pipe".into(), r)],
                    saved: saved.clone(),
                })
            },
            tx,
            stop.clone(),
        )
        .unwrap();
        (dir, rx, stop)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "vxmesh-handover-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_successor_gets_the_descriptors_and_state_and_the_predecessor_hears_taken() {
        let saved = Saved {
            etcd_lease: Some(42),
            ..Saved::default()
        };
        let (dir, mut events, _stop) = predecessor(saved.clone());
        let Outcome::Taken(t) = take_over(&dir.0.join("h.handover"), VERSION).unwrap() else {
            panic!("no takeover");
        };
        assert_eq!(t.saved, saved);
        assert!(vxmesh_dataplane::io::inherit::take("test/pipe").is_some());
        t.done().unwrap();
        let ev = events.blocking_recv().unwrap();
        assert!(matches!(ev, Event::Taken { .. }));
        assert!(handed_over());
    }

    #[test]
    fn a_successor_of_another_version_declines_and_the_predecessor_makes_way() {
        let (dir, mut events, _stop) = predecessor(Saved::default());
        let out = take_over(&dir.0.join("h.handover"), VERSION + 1).unwrap();
        assert!(matches!(out, Outcome::Fallback(_)));
        match events.blocking_recv().unwrap() {
            Event::Declined { reason, .. } => assert!(reason.contains("reads 2"), "{reason}"),
            Event::Taken { .. } => panic!("taken"),
        }
    }

    #[test]
    fn chunks_cut_at_char_boundaries() {
        let s = "aé".repeat(10);
        let parts = chunks(&s, 4);
        assert!(parts.iter().all(|p| p.len() <= 4));
        assert_eq!(parts.concat(), s);
    }

    #[test]
    fn names_fit_systemds_rules() {
        assert!(valid_name("tcp/198.18.0.1/8080"));
        assert!(!valid_name("tcp/198.18.0.1:8080"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(256)));
    }

    #[test]
    fn saved_state_round_trips_and_refuses_unknown_fields() {
        let s = Saved {
            learned: vec![Learned {
                network: "front".into(),
                mac: "02:42:0a:00:09:02".into(),
                vtep: "198.18.0.2".parse().unwrap(),
                age_ms: 1200,
            }],
            etcd_lease: Some(7),
            unhealthy: vec![("web".into(), "10.0.9.3".parse().unwrap())],
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Saved>(&text).unwrap(), s);
        assert!(serde_json::from_str::<Saved>("{\"later\":1}").is_err());
    }
}
