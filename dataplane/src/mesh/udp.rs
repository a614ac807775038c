//! UDP through the mesh: a session per client address, bound to one task
//! through its own connected socket, with an idle timeout. Replies go back
//! from the published socket. A session whose task stopped taking traffic
//! (down, ejected, draining) moves to another task on the client's next
//! datagram instead of black-holing it (moby#36878).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::service::{ActiveGuard, Service, Task};
use super::tcp::Route;

struct Session {
    task: Arc<Task>,
    up: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    reply: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reply.abort();
    }
}

type Sessions = Arc<DashMap<SocketAddr, Session>>;

/// Serves one published UDP port until `stop` turns true; its sessions end
/// with it.
pub async fn serve(sock: UdpSocket, route: Arc<ArcSwap<Route>>, mut stop: watch::Receiver<bool>) {
    let sock = Arc::new(sock);
    let sessions: Sessions = Arc::new(DashMap::new());
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let route = route.load();
        let live = sessions
            .get(&client)
            .filter(|s| s.task.accepts_new())
            .map(|s| (s.up.clone(), s.last.clone(), s.task.clone()));
        let (up, last, task) = match live {
            Some(x) => x,
            None => match open(&sock, &sessions, client, &route, epoch).await {
                Some(x) => {
                    route
                        .service
                        .open_sessions
                        .store(sessions.len() as u64, Relaxed);
                    x
                }
                None => continue,
            },
        };
        if up.send(&buf[..n]).await.is_ok() {
            task.bytes_in.fetch_add(n as u64, Relaxed);
            last.store(epoch.elapsed().as_millis() as u64, Relaxed);
        }
    }
    sessions.clear();
}

async fn open(
    sock: &Arc<UdpSocket>,
    sessions: &Sessions,
    client: SocketAddr,
    route: &Route,
    epoch: Instant,
) -> Option<(Arc<UdpSocket>, Arc<AtomicU64>, Arc<Task>)> {
    let svc = &route.service;
    let max = svc.spec.load().max_sessions;
    if max != 0 && sessions.len() >= max as usize {
        svc.refused_sessions.fetch_add(1, Relaxed);
        svc.note_limit(true, "sessions", max);
        return None;
    }
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
    let up = Arc::new(up);
    let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let idle = svc.spec.load().udp_timeout;
    let reply = tokio::spawn(reply_loop(
        sock.clone(),
        up.clone(),
        client,
        svc.clone(),
        task.clone(),
        last.clone(),
        sessions.clone(),
        idle,
        epoch,
    ));
    sessions.insert(
        client,
        Session {
            task: task.clone(),
            up: up.clone(),
            last: last.clone(),
            reply,
        },
    );
    Some((up, last, task))
}

#[allow(clippy::too_many_arguments)]
async fn reply_loop(
    sock: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    client: SocketAddr,
    svc: Arc<Service>,
    task: Arc<Task>,
    last: Arc<AtomicU64>,
    sessions: Sessions,
    idle: Duration,
    epoch: Instant,
) {
    let _active = ActiveGuard::new(task.clone());
    let mut buf = vec![0u8; 65536];
    let mut cut = task.cut.subscribe();
    loop {
        let now = epoch.elapsed().as_millis() as u64;
        let since = Duration::from_millis(now.saturating_sub(last.load(Relaxed)));
        if since >= idle {
            break;
        }
        tokio::select! {
            r = up.recv(&mut buf) => {
                let Ok(n) = r else { break };
                if sock.send_to(&buf[..n], client).await.is_ok() {
                    task.bytes_out.fetch_add(n as u64, Relaxed);
                    last.store(epoch.elapsed().as_millis() as u64, Relaxed);
                }
            }
            _ = tokio::time::sleep(idle - since) => {}
            _ = async { let _ = cut.wait_for(|c| *c).await; } => break,
        }
    }
    // Remove this session unless the client was already moved to another,
    // and say so in the service's gauge (an expired session is reclaimed).
    sessions.remove_if(&client, |_, s| Arc::ptr_eq(&s.up, &up));
    svc.open_sessions.store(sessions.len() as u64, Relaxed);
}
