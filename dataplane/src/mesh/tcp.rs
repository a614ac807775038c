//! TCP through the mesh: accept on a published port, pick a task, connect
//! over the overlay (retrying other tasks within the same client
//! connection), optionally send a PROXY v2 header, then relay both ways with
//! half-close, an idle timeout and the task's cut signal.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

use super::service::{ActiveGuard, Service, Task};
use crate::wire::proxy_v2;

/// Where a listener sends its connections; swapped on reload so a kept
/// listener follows its service's new settings.
pub struct Route {
    pub service: Arc<Service>,
    pub target: u16,
}

/// Accepts until `stop` turns true. Connections already accepted go on.
pub async fn serve(l: TcpListener, route: Arc<ArcSwap<Route>>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((client, peer)) = r else { continue };
                let route = route.load_full();
                tokio::spawn(async move {
                    let local = client.local_addr().unwrap_or(peer);
                    handle(client, peer, local, route).await;
                });
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, local: SocketAddr, route: Arc<Route>) {
    let svc = &route.service;
    let spec = svc.spec.load_full();
    let mut cands = Vec::with_capacity(3);
    svc.candidates(peer, &mut cands);
    for task in cands {
        let addr = SocketAddr::new(task.addr.into(), route.target);
        match timeout(spec.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(mut up)) => {
                svc.observe_connect(&task, true);
                if spec.proxy_protocol {
                    let (hdr, n) = proxy_v2::encode(peer, local, proxy_v2::Transport::Stream);
                    if up.write_all(&hdr[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = relay(client, up, &task, spec.idle_timeout).await;
                return;
            }
            _ => svc.observe_connect(&task, false),
        }
    }
    svc.no_backend.fetch_add(1, Relaxed);
}

/// Milliseconds since `epoch`, for the idle clock.
fn ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    bytes: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: pass the FIN on, keep the other direction open.
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Relaxed);
        last.store(ms(epoch), Relaxed);
    }
}

/// Relays until both directions ended, the connection was idle for
/// `idle`, or the task's connections are cut.
async fn relay(
    client: TcpStream,
    up: TcpStream,
    task: &Arc<Task>,
    idle: Duration,
) -> io::Result<()> {
    let _active = ActiveGuard::new(task.clone());
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let both = async {
        let (a, b) = tokio::join!(
            pump(cr, uw, &task.bytes_in, &last, epoch),
            pump(ur, cw, &task.bytes_out, &last, epoch)
        );
        a.and(b)
    };
    let idle_watch = async {
        loop {
            let since = Duration::from_millis(ms(epoch).saturating_sub(last.load(Relaxed)));
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    let mut cut = task.cut.subscribe();
    tokio::select! {
        r = both => r,
        _ = idle_watch => Ok(()),
        _ = async { let _ = cut.wait_for(|c| *c).await; } => Ok(()),
    }
}
