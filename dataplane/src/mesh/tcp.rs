//! TCP through the mesh: accept on a published port, pick a task, connect
//! over the overlay (retrying other tasks within the same client
//! connection), optionally send a PROXY v2 header, then relay both ways with
//! half-close, an idle timeout and the task's cut signal. The relay copies
//! a direction's first bytes through a small buffer and, once it turns out
//! to be bulk, moves the rest with splice(2) through a pipe (no copy through
//! userspace), falling back to copying where splice is refused.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::unistd::pipe2;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

use super::service::{ActiveGuard, OpenGuard, Service, Task};
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
                tokio::spawn(handle(client, peer, route));
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, route: Arc<Route>) {
    let svc = &route.service;
    let spec = svc.spec.load_full();
    let Some(_open) = OpenGuard::take(&svc.open_connections, spec.max_connections) else {
        // Over the service's limit: closed at once, counted, logged once.
        svc.refused_connections.fetch_add(1, Relaxed);
        svc.note_limit(true, "connections", spec.max_connections);
        return;
    };
    if spec.max_connections != 0
        && svc.open_connections.load(Relaxed) < u64::from(spec.max_connections) / 2
    {
        svc.note_limit(false, "connections", spec.max_connections);
    }
    let mut cands = Vec::with_capacity(3);
    svc.candidates(peer, &mut cands);
    for task in cands {
        let addr = SocketAddr::new(task.addr.into(), route.target);
        match timeout(spec.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(mut up)) => {
                svc.observe_connect(&task, true);
                if spec.proxy_protocol {
                    // The address the client connected to: asked only here,
                    // one syscall fewer per connection without the header.
                    let local = client.local_addr().unwrap_or(peer);
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

/// Bytes moved per splice(2) call: the default pipe capacity.
const PIPE_CHUNK: usize = 64 * 1024;

/// Passes the end of one direction on (half-close): the other direction
/// stays open until it ends too.
fn shutdown_write(w: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(w).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// Runs `op` when `s` is ready for `interest`, until it does not block.
async fn io_ready<R>(
    s: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// One direction through a pipe with splice(2): the bytes never enter
/// userspace. `Err(Unsupported)` before the first byte means the caller
/// should fall back to copying.
async fn pump_splice(
    r: &TcpStream,
    w: &TcpStream,
    bytes: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    let (pr, pw) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = io_ready(r, Interest::READABLE, || {
            splice(r, None, &pw, None, PIPE_CHUNK, flags).map_err(io::Error::from)
        })
        .await?;
        if n == 0 {
            return shutdown_write(w);
        }
        let mut left = n;
        while left > 0 {
            left -= io_ready(w, Interest::WRITABLE, || {
                splice(&pr, None, w, None, left, flags).map_err(io::Error::from)
            })
            .await?;
        }
        bytes.fetch_add(n as u64, Relaxed);
        last.store(ms(epoch), Relaxed);
    }
}

/// Bytes of each direction's first reads, copied through a small buffer:
/// most connections (a request, a response) end within it and never pay
/// for two pipes (pipe2 and closes, four descriptors). A read that fills
/// the buffer means a bulk transfer, which then moves by splice(2), as
/// HAProxy's `option splice-auto` decides.
const COPY_CHUNK: usize = 16 * 1024;

/// Copies one direction through `buf` until EOF, passed on as a half-close
/// (`Ok(true)`), or with `until_full` until a read fills `buf` (`Ok(false)`).
async fn copy(
    r: &TcpStream,
    w: &TcpStream,
    buf: &mut [u8],
    until_full: bool,
    bytes: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<bool> {
    loop {
        let n = io_ready(r, Interest::READABLE, || r.try_read(buf)).await?;
        if n == 0 {
            shutdown_write(w)?;
            return Ok(true);
        }
        let mut off = 0;
        while off < n {
            off += io_ready(w, Interest::WRITABLE, || w.try_write(&buf[off..n])).await?;
        }
        bytes.fetch_add(n as u64, Relaxed);
        last.store(ms(epoch), Relaxed);
        if until_full && n == buf.len() {
            return Ok(false);
        }
    }
}

/// One direction: copied while it is small, spliced once it is bulk, and
/// copied again where the kernel refuses splice(2).
async fn pump(
    r: &TcpStream,
    w: &TcpStream,
    bytes: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    let mut small = vec![0u8; COPY_CHUNK];
    if copy(r, w, &mut small, true, bytes, last, epoch).await? {
        return Ok(());
    }
    drop(small);
    match pump_splice(r, w, bytes, last, epoch).await {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            let mut big = vec![0u8; PIPE_CHUNK];
            copy(r, w, &mut big, false, bytes, last, epoch)
                .await
                .map(drop)
        }
        other => other,
    }
}

/// Relays until both directions ended, one failed (then both sockets are
/// reset), the connection was idle for `idle`, or the task's connections
/// are cut.
async fn relay(
    client: TcpStream,
    up: TcpStream,
    task: &Arc<Task>,
    idle: Duration,
) -> io::Result<()> {
    let _active = ActiveGuard::new(task.clone());
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let both = async {
        let to_task = pump(&client, &up, &task.bytes_in, &last, epoch);
        let to_client = pump(&up, &client, &task.bytes_out, &last, epoch);
        tokio::pin!(to_task, to_client);
        // A direction that ends (EOF, passed on as a half-close) leaves the
        // other running; one that fails (a reset: the task died, the client
        // vanished) ends both, or the other side would wait for bytes that
        // never come until the idle timeout.
        tokio::select! {
            r = &mut to_task => { r?; to_client.await }
            r = &mut to_client => { r?; to_task.await }
        }
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
    let r = tokio::select! {
        r = both => r,
        _ = idle_watch => Ok(()),
        _ = async { let _ = cut.wait_for(|c| *c).await; } => Ok(()),
    };
    if r.is_err() {
        // Pass the failure on as a reset, so that a transfer cut short
        // never looks to the other side like one that ended (FIN).
        for s in [&client, &up] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    r
}
