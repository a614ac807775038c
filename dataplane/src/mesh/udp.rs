//! UDP through the mesh: a session per client address, bound to one task
//! through its own connected socket, with an idle timeout. Replies go back
//! from the published socket. A session whose task stopped taking traffic
//! (down, ejected, draining) moves to another task on the client's next
//! datagram instead of black-holing it (moby#36878).
//!
//! A datagram that would open a session is admitted under the client
//! address's per-source cap, the service's `max_sessions` and the node's
//! budget, or dropped and counted with its reason. A session owns no
//! buffer: replies are read into the worker thread's one, so a session
//! costs a socket and a few hundred bytes, not 64 KiB.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::limits::{BudgetGuard, Cost, SourceGuard};
use super::service::{ActiveGuard, Service, Task};
use super::tcp::Route;

/// The largest UDP payload (IPv4): the size of the buffers that must take
/// any datagram whole.
const MAX_DATAGRAM: usize = 65536;
/// Replies moved per wake-up of a session before it yields.
const REPLY_BATCH: usize = 64;

thread_local! {
    /// The buffer replies pass through on this worker thread.
    static REPLY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// One place among the service's open sessions, given back on drop.
struct Slot(Arc<Service>);

impl Slot {
    fn take(svc: &Arc<Service>, limit: u32) -> Option<Slot> {
        let now = svc.open_sessions.fetch_add(1, Relaxed);
        if limit != 0 && now >= u64::from(limit) {
            svc.open_sessions.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Slot(svc.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open_sessions.fetch_sub(1, Relaxed);
    }
}

pub struct Session {
    task: Arc<Task>,
    up: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    reply: tokio::task::JoinHandle<()>,
    /// What the session holds while it lives: its client's per-source
    /// place, its place in the service and its share of the node's budget.
    _held: (SourceGuard, Slot, BudgetGuard),
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reply.abort();
    }
}

/// The open sessions of one published UDP port, by client address.
pub type Sessions = Arc<DashMap<SocketAddr, Session>>;

/// The name a session's upstream socket goes by among handed-over
/// descriptors: the published port's name, then the client's address.
pub fn session_name(listener: SocketAddr, client: SocketAddr) -> String {
    format!(
        "{}/session/{}/{}",
        crate::io::inherit::listener_name("udp", listener),
        client.ip(),
        client.port()
    )
}

/// The upstream sockets of `sessions`, named for a successor.
pub fn descriptors(
    listener: SocketAddr,
    sessions: &Sessions,
) -> Vec<(String, std::os::fd::OwnedFd)> {
    use std::os::fd::AsFd;
    sessions
        .iter()
        .filter_map(|s| {
            let fd = s.up.as_fd().try_clone_to_owned().ok()?;
            Some((session_name(listener, *s.key()), fd))
        })
        .collect()
}

/// Serves one published UDP port until `stop` turns true; its sessions end
/// with it. Sessions a predecessor handed over (their upstream sockets,
/// named by [`session_name`]) go on: their clients keep their task and the
/// task keeps seeing the same source port.
pub async fn serve(
    sock: UdpSocket,
    route: Arc<ArcSwap<Route>>,
    mut stop: watch::Receiver<bool>,
    sessions: Sessions,
) {
    let sock = Arc::new(sock);
    let epoch = Instant::now();
    if let Ok(local) = sock.local_addr() {
        adopt(&sock, &sessions, local, &route.load(), epoch);
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let route = route.load();
        let live = sessions.get(&client).map(|s| {
            (
                s.task.accepts_new(),
                s.up.clone(),
                s.last.clone(),
                s.task.clone(),
            )
        });
        let (up, last, task) = match live {
            Some((true, up, last, task)) => (up, last, task),
            stale => {
                if stale.is_some() {
                    // Moving to another task: the old session gives its
                    // places back first.
                    sessions.remove(&client);
                }
                match open(&sock, &sessions, client, &route, epoch).await {
                    Some(x) => x,
                    None => continue,
                }
            }
        };
        if up.send(&buf[..n]).await.is_ok() {
            task.bytes_in.fetch_add(n as u64, Relaxed);
            last.store(epoch.elapsed().as_millis() as u64, Relaxed);
        }
    }
    sessions.clear();
}

/// Takes a place for a new session of `client`: its per-source place, its
/// place in the service and its share of the node's budget; `None` (and a
/// counted refusal) when one is not free.
fn admit(route: &Route, client: SocketAddr) -> Option<(SourceGuard, Slot, BudgetGuard)> {
    let svc = &route.service;
    let spec = svc.spec.load_full();
    let Some(source) = svc
        .session_sources
        .take(client.ip(), spec.limits.sessions_per_source)
    else {
        svc.source_refused_sessions.fetch_add(1, Relaxed);
        return None;
    };
    let max = spec.max_sessions;
    let Some(slot) = Slot::take(svc, max) else {
        svc.refused_sessions.fetch_add(1, Relaxed);
        svc.note_limit(true, "sessions", max);
        return None;
    };
    if max != 0 && svc.open_sessions.load(Relaxed) < u64::from(max) / 2 {
        svc.note_limit(false, "sessions", max);
    }
    let Some(budget) = route.res.budget.take(Cost::UDP) else {
        svc.budget_refused_sessions.fetch_add(1, Relaxed);
        return None;
    };
    Some((source, slot, budget))
}

async fn open(
    sock: &Arc<UdpSocket>,
    sessions: &Sessions,
    client: SocketAddr,
    route: &Route,
    epoch: Instant,
) -> Option<(Arc<UdpSocket>, Arc<AtomicU64>, Arc<Task>)> {
    let held = admit(route, client)?;
    let svc = &route.service;
    let mut cands = Vec::with_capacity(3);
    svc.candidates(client, &mut cands);
    let Some(task) = cands.into_iter().next() else {
        svc.no_backend.fetch_add(1, Relaxed);
        return None;
    };
    let up = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    up.connect(SocketAddr::new(task.addr.into(), route.target))
        .await
        .ok()?;
    Some(start(
        sock,
        sessions,
        client,
        route,
        task,
        Arc::new(up),
        held,
        epoch,
    ))
}

/// Registers a session and starts moving its replies.
#[allow(clippy::too_many_arguments)]
fn start(
    sock: &Arc<UdpSocket>,
    sessions: &Sessions,
    client: SocketAddr,
    route: &Route,
    task: Arc<Task>,
    up: Arc<UdpSocket>,
    held: (SourceGuard, Slot, BudgetGuard),
    epoch: Instant,
) -> (Arc<UdpSocket>, Arc<AtomicU64>, Arc<Task>) {
    let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let reply = tokio::spawn(reply_loop(
        sock.clone(),
        up.clone(),
        client,
        task.clone(),
        last.clone(),
        sessions.clone(),
        route.service.spec.load().udp_timeout,
        epoch,
    ));
    sessions.insert(
        client,
        Session {
            task: task.clone(),
            up: up.clone(),
            last: last.clone(),
            reply,
            _held: held,
        },
    );
    (up, last, task)
}

/// Takes over the sessions of the published port `local` that a
/// predecessor handed over: each upstream socket must be connected to a
/// task of the service at its target port, or it is closed.
fn adopt(
    sock: &Arc<UdpSocket>,
    sessions: &Sessions,
    local: SocketAddr,
    route: &Route,
    epoch: Instant,
) {
    let prefix = format!(
        "{}/session/",
        crate::io::inherit::listener_name("udp", local)
    );
    let mut n = 0;
    for (name, fd) in crate::io::inherit::take_prefix(&prefix) {
        let client = name[prefix.len()..]
            .split_once('/')
            .and_then(|(ip, port)| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?)));
        let std_up = std::net::UdpSocket::from(fd);
        let task = std_up.peer_addr().ok().and_then(|peer| {
            if peer.port() != route.target {
                return None;
            }
            let tasks = route.service.tasks.lock().expect("tasks lock");
            tasks
                .iter()
                .find(|t| std::net::IpAddr::from(t.addr) == peer.ip())
                .cloned()
        });
        let (Some(client), Some(task)) = (client, task) else {
            tracing::warn!(%name, "an inherited UDP session fits no task of the service; closed");
            continue;
        };
        let Some(held) = admit(route, client) else {
            continue;
        };
        let up = match std_up
            .set_nonblocking(true)
            .and_then(|()| UdpSocket::from_std(std_up))
        {
            Ok(u) => Arc::new(u),
            Err(e) => {
                tracing::warn!(%name, error = %e, "an inherited UDP session cannot be served; closed");
                continue;
            }
        };
        start(sock, sessions, client, route, task, up, held, epoch);
        n += 1;
    }
    if n > 0 {
        tracing::info!(listener = %local, sessions = n, "UDP sessions taken over");
    }
}

/// Moves the replies queued on `up` to `client` through the thread's
/// buffer, without waiting: the bytes sent, and a reply the published
/// socket could not take at once (to be sent by the caller, who may wait).
/// `Err` when the session's socket failed (an ICMP error from the task).
fn forward_replies(
    up: &UdpSocket,
    sock: &UdpSocket,
    client: SocketAddr,
) -> io::Result<(u64, Option<Vec<u8>>)> {
    REPLY_BUF.with_borrow_mut(|buf| {
        let mut sent = 0u64;
        for _ in 0..REPLY_BATCH {
            let n = match up.try_recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            match sock.try_send_to(&buf[..n], client) {
                Ok(_) => sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((sent, Some(buf[..n].to_vec())));
                }
                // The client is unreachable: this reply is lost, as it
                // would be on the wire.
                Err(_) => {}
            }
        }
        Ok((sent, None))
    })
}

#[allow(clippy::too_many_arguments)]
async fn reply_loop(
    sock: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    client: SocketAddr,
    task: Arc<Task>,
    last: Arc<AtomicU64>,
    sessions: Sessions,
    idle: Duration,
    epoch: Instant,
) {
    let _active = ActiveGuard::new(task.clone());
    let mut cut = task.cut.subscribe();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    loop {
        let since = Duration::from_millis(now_ms().saturating_sub(last.load(Relaxed)));
        if since >= idle {
            break;
        }
        tokio::select! {
            r = up.readable() => {
                if r.is_err() {
                    break;
                }
                let Ok((mut sent, pending)) = forward_replies(&up, &sock, client) else {
                    break;
                };
                if let Some(p) = pending {
                    if sock.send_to(&p, client).await.is_ok() {
                        sent += p.len() as u64;
                    }
                }
                if sent > 0 {
                    task.bytes_out.fetch_add(sent, Relaxed);
                    last.store(now_ms(), Relaxed);
                }
            }
            _ = tokio::time::sleep(idle - since) => {}
            _ = async { let _ = cut.wait_for(|c| *c).await; } => break,
        }
    }
    // Remove this session unless the client was already moved to another;
    // dropping it gives its places back (an expired session is reclaimed).
    sessions.remove_if(&client, |_, s| Arc::ptr_eq(&s.up, &up));
}
