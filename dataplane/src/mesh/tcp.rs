//! TCP through the mesh: accept on a published port (pausing on accept
//! errors that would repeat), admit the client under its per-source cap,
//! the service's limit and the node's budget, wait for its first byte, pick
//! a task, connect over the overlay (retrying other tasks within the same
//! client connection), optionally send a PROXY v2 header, then relay both
//! ways with half-close, an idle timeout, a write timeout and the task's
//! cut signal. The relay copies a direction's first bytes through a small
//! buffer and, once it turns out to be bulk, moves the rest with splice(2)
//! through a pipe (no copy through userspace), falling back to copying
//! where splice is refused or the budget has no descriptors for the pipes.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
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

use super::framed::{self, Framed};
use super::limits::{self, Backoff, Budget, Cost, Resources};
use super::relay;
use super::service::{ActiveGuard, OpenGuard, Service, Task};
use super::spec::ServiceSpec;
use crate::wire::proxy_v2;

/// Where a listener sends its connections; swapped on reload so a kept
/// listener follows its service's new settings.
pub struct Route {
    pub service: Arc<Service>,
    pub target: u16,
    /// The node's budget and accept counters, shared by every listener.
    pub res: Arc<Resources>,
}

/// Accepts until `stop` turns true. Connections already accepted go on.
pub async fn serve(l: TcpListener, route: Arc<ArcSwap<Route>>, mut stop: watch::Receiver<bool>) {
    let what = l
        .local_addr()
        .map(|a| format!("tcp/{a}"))
        .unwrap_or_default();
    let res = route.load().res.clone();
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            (client, peer) = limits::accept(&what, &mut backoff, &res.accept, || l.accept()) => {
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
    let lim = spec.limits;
    // Admission, cheapest refusal first; each is closed at once and
    // counted with its reason.
    let Some(_source) = svc.conn_sources.take(peer.ip(), lim.connections_per_source) else {
        svc.source_refused_connections.fetch_add(1, Relaxed);
        return;
    };
    let Some(_open) = OpenGuard::take(&svc.open_connections, spec.max_connections) else {
        // Over the service's limit: logged once per change.
        svc.refused_connections.fetch_add(1, Relaxed);
        svc.note_limit(true, "connections", spec.max_connections);
        return;
    };
    if spec.max_connections != 0
        && svc.open_connections.load(Relaxed) < u64::from(spec.max_connections) / 2
    {
        svc.note_limit(false, "connections", spec.max_connections);
    }
    let Some(_budget) = route.res.budget.take(Cost::TCP) else {
        svc.budget_refused_connections.fetch_add(1, Relaxed);
        return;
    };
    // A client that holds a place without a word goes before it costs a
    // task a connection, after the first-byte timeout or the idle timeout
    // if that is shorter. EOF counts as a first byte (the relay passes it
    // on). peek, not readable(): that may wake without data.
    let wait = match lim.first_byte_timeout {
        Duration::ZERO => None,
        fb => Some(fb.min(spec.idle_timeout)),
    };
    if let Some(wait) = wait {
        if timeout(wait, client.peek(&mut [0u8; 1])).await.is_err() {
            svc.first_byte_timeouts.fetch_add(1, Relaxed);
            return;
        }
    }
    let mut cands = Vec::with_capacity(3);
    svc.candidates(peer, &mut cands);
    let relays = svc.relays.load();
    for task in cands {
        let up = match upstream(&client, peer, &route, &spec, &task, relays.get(&task.addr)).await {
            Ok(up) => up,
            Err(Miss::Failed) => {
                svc.observe_connect(&task, false);
                continue;
            }
            Err(Miss::Abandoned) => return,
        };
        let _active = ActiveGuard::new(task.clone());
        let (idle, budget, wt) = (spec.idle_timeout, &route.res.budget, lim.write_timeout);
        let r = match up {
            Up::Direct(up) => relay(client, up, task_leg(&task), idle, budget, wt).await,
            Up::Relayed(mut c, via) => {
                let r = framed::relay(client, &mut c, task_leg(&task), idle, budget, wt).await;
                if matches!(r, Ok(true)) {
                    route.res.relay_pool.put(via, c);
                }
                r.map(drop)
            }
        };
        if r.as_ref().is_err_and(is_write_stall) {
            svc.write_timeouts.fetch_add(1, Relaxed);
        }
        return;
    }
    svc.no_backend.fetch_add(1, Relaxed);
}

/// A connection to one candidate task.
enum Up {
    /// Connected (and the PROXY v2 header, if asked for, sent).
    Direct(TcpStream),
    /// Through the relay of the task's node at the address, framed: the
    /// connection goes back to the pool if the client's ends cleanly.
    Relayed(Framed, SocketAddr),
}

/// Why a candidate task gave no connection.
enum Miss {
    /// The task did not take the connection: try the next one.
    Failed,
    /// Connected, but the header could not be written: the client goes.
    Abandoned,
}

/// Connects to `task` for `client`: through the relay of its node at
/// `via` (a task on another node, see [`relay`]: the task node writes the
/// header), or straight over the overlay.
async fn upstream(
    client: &TcpStream,
    peer: SocketAddr,
    route: &Route,
    spec: &ServiceSpec,
    task: &Arc<Task>,
    via: Option<&SocketAddr>,
) -> Result<Up, Miss> {
    let svc = &route.service;
    if let Some(via) = via {
        let req = relay::Request {
            task: SocketAddrV4::new(task.addr, route.target),
            client: peer,
            published: client.local_addr().unwrap_or(peer),
            proxy_v2: spec.proxy_protocol,
            framed: false,
        };
        let pool = &route.res.relay_pool;
        return match relay::connect(*via, &req, spec.connect_timeout, pool).await {
            Ok(up) => {
                svc.observe_connect(task, true);
                svc.relayed_connections.fetch_add(1, Relaxed);
                Ok(match up {
                    relay::Connected::Framed(c) => Up::Relayed(c, *via),
                    relay::Connected::Plain(s) => Up::Direct(s),
                })
            }
            Err(_) => Err(Miss::Failed),
        };
    }
    let addr = SocketAddr::new(task.addr.into(), route.target);
    let Ok(Ok(mut up)) = timeout(spec.connect_timeout, TcpStream::connect(addr)).await else {
        return Err(Miss::Failed);
    };
    svc.observe_connect(task, true);
    if spec.proxy_protocol {
        // The address the client connected to: asked only here, one
        // syscall fewer per connection without the header.
        let local = client.local_addr().unwrap_or(peer);
        let (hdr, n) = proxy_v2::encode(peer, local, proxy_v2::Transport::Stream);
        match timeout(spec.limits.write_timeout, up.write_all(&hdr[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Miss::Abandoned),
            Err(_) => {
                svc.write_timeouts.fetch_add(1, Relaxed);
                return Err(Miss::Abandoned);
            }
        }
    }
    Ok(Up::Direct(up))
}

/// A relay to `task`: its byte counters and its cut signal.
fn task_leg(task: &Task) -> Leg<'_> {
    Leg {
        bytes_in: &task.bytes_in,
        bytes_out: &task.bytes_out,
        cut: Some(task.cut.subscribe()),
    }
}

/// The error of a write that stayed blocked past the write timeout.
#[derive(Debug)]
struct WriteStall;

impl std::fmt::Display for WriteStall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the peer stopped reading: write blocked past the write timeout")
    }
}

impl std::error::Error for WriteStall {}

fn is_write_stall(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|x| x.is::<WriteStall>())
}

/// When a relay last moved a byte, for its idle timeout.
pub(super) struct Clock {
    epoch: Instant,
    /// Milliseconds since `epoch` at the last byte moved.
    last: AtomicU64,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    fn since_last(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Relaxed)))
    }
}

/// What one direction of a relay shares with the other: counters, the
/// idle clock, the write timeout and the budget the pipes are taken from.
pub(super) struct Dir<'a> {
    pub bytes: &'a AtomicU64,
    pub clock: &'a Clock,
    pub write_timeout: Duration,
    pub budget: &'a Arc<Budget>,
}

impl<'a> Dir<'a> {
    /// The two directions of a relay of `leg`: to the task (counted in
    /// `bytes_in`) and back.
    pub(super) fn pair(
        leg: &Leg<'a>,
        clock: &'a Clock,
        write_timeout: Duration,
        budget: &'a Arc<Budget>,
    ) -> (Dir<'a>, Dir<'a>) {
        let dir = |bytes| Dir {
            bytes,
            clock,
            write_timeout,
            budget,
        };
        (dir(leg.bytes_in), dir(leg.bytes_out))
    }

    /// Bytes moved: counted, and the idle clock restarts.
    pub(super) fn moved(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Relaxed);
        self.clock.touch();
    }
}

/// Runs `op` when `w` is writable, until it does not block, or fails with
/// [`WriteStall`] after `limit`.
pub(super) async fn write_ready<R>(
    w: &TcpStream,
    limit: Duration,
    op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    match timeout(limit, io_ready(w, Interest::WRITABLE, op)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, WriteStall)),
    }
}

/// Bytes moved per splice(2) call: the default pipe capacity.
const PIPE_CHUNK: usize = 64 * 1024;

/// Passes the end of one direction on (half-close): the other direction
/// stays open until it ends too.
pub(super) fn shutdown_write(w: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(w).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// Runs `op` when `s` is ready for `interest`, until it does not block.
pub(super) async fn io_ready<R>(
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
async fn pump_splice(r: &TcpStream, w: &TcpStream, d: &Dir<'_>) -> io::Result<()> {
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
            left -= write_ready(w, d.write_timeout, || {
                splice(&pr, None, w, None, left, flags).map_err(io::Error::from)
            })
            .await?;
        }
        d.moved(n);
    }
}

/// Bytes of each direction's first reads, copied through a small buffer:
/// most connections (a request, a response) end within it and never pay
/// for two pipes (pipe2 and closes, four descriptors). A read that fills
/// the buffer means a bulk transfer, which then moves by splice(2), as
/// HAProxy's `option splice-auto` decides.
pub(super) const COPY_CHUNK: usize = 16 * 1024;

/// Copies one direction through `buf` until EOF, passed on as a half-close
/// (`Ok(true)`), or with `until_full` until a read fills `buf` (`Ok(false)`).
async fn copy(
    r: &TcpStream,
    w: &TcpStream,
    buf: &mut [u8],
    until_full: bool,
    d: &Dir<'_>,
) -> io::Result<bool> {
    loop {
        let n = io_ready(r, Interest::READABLE, || r.try_read(buf)).await?;
        if n == 0 {
            shutdown_write(w)?;
            return Ok(true);
        }
        let mut off = 0;
        while off < n {
            off += write_ready(w, d.write_timeout, || w.try_write(&buf[off..n])).await?;
        }
        d.moved(n);
        if until_full && n == buf.len() {
            return Ok(false);
        }
    }
}

/// One direction: copied while it is small, spliced once it is bulk, and
/// copied again where the kernel refuses splice(2). Without descriptors to
/// spare in the budget for the pipes it goes on through the small buffer.
async fn pump(r: &TcpStream, w: &TcpStream, d: &Dir<'_>) -> io::Result<()> {
    let mut small = vec![0u8; COPY_CHUNK];
    if copy(r, w, &mut small, true, d).await? {
        return Ok(());
    }
    drop(small);
    bulk(r, w, d).await
}

/// The rest of a direction once it is bulk, until EOF (passed on as a
/// half-close): spliced, or copied where splice is refused or the budget
/// has no descriptors for the pipes.
pub(super) async fn bulk(r: &TcpStream, w: &TcpStream, d: &Dir<'_>) -> io::Result<()> {
    let Some(_pipes) = d.budget.grow(Cost::SPLICE) else {
        let mut small = vec![0u8; COPY_CHUNK];
        return copy(r, w, &mut small, false, d).await.map(drop);
    };
    match pump_splice(r, w, d).await {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            // Rare (a socket type splice refuses); not charged to the
            // budget's memory.
            let mut big = vec![0u8; PIPE_CHUNK];
            copy(r, w, &mut big, false, d).await.map(drop)
        }
        other => other,
    }
}

/// Where a relay counts its bytes (client to task, and back) and what cuts
/// it short.
pub(super) struct Leg<'a> {
    pub bytes_in: &'a AtomicU64,
    pub bytes_out: &'a AtomicU64,
    /// Set to true when the connection must end (the task's cut).
    pub cut: Option<watch::Receiver<bool>>,
}

/// Relays until both directions ended, one failed (then both sockets are
/// reset; a write blocked for `write_timeout` fails with [`WriteStall`]),
/// the connection was idle for `idle`, or `leg.cut` turns true.
pub(super) async fn relay(
    client: TcpStream,
    up: TcpStream,
    leg: Leg<'_>,
    idle: Duration,
    budget: &Arc<Budget>,
    write_timeout: Duration,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let clock = Clock::new();
    let (d_in, d_out) = Dir::pair(&leg, &clock, write_timeout, budget);
    let both = both_ways(pump(&client, &up, &d_in), pump(&up, &client, &d_out));
    let r = watched(both, &clock, idle, leg.cut).await;
    finish(r, &[&client, &up]).map(drop)
}

/// Both directions of a relay: a direction that ends (EOF, passed on as a
/// half-close) leaves the other running; one that fails (a reset: the task
/// died, the client vanished) ends both, or the other side would wait for
/// bytes that never come until the idle timeout.
pub(super) async fn both_ways<A, B>(
    a: impl std::future::Future<Output = io::Result<A>>,
    b: impl std::future::Future<Output = io::Result<B>>,
) -> io::Result<(A, B)> {
    tokio::pin!(a, b);
    tokio::select! {
        r = &mut a => { let x = r?; Ok((x, b.await?)) }
        r = &mut b => { let y = r?; Ok((a.await?, y)) }
    }
}

/// `both` until it ends (`Some`), or `None` when the relay was idle for
/// `idle` or `cut` turned true first.
pub(super) async fn watched<T>(
    both: impl std::future::Future<Output = io::Result<T>>,
    clock: &Clock,
    idle: Duration,
    mut cut: Option<watch::Receiver<bool>>,
) -> Option<io::Result<T>> {
    let idle_watch = async {
        loop {
            let since = clock.since_last();
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        r = both => Some(r),
        _ = idle_watch => None,
        _ = async {
            match cut.as_mut() {
                Some(c) => { let _ = c.wait_for(|c| *c).await; }
                None => std::future::pending::<()>().await,
            }
        } => None,
    }
}

/// A relay's result for its caller: a failure is passed on to both
/// sockets as a reset, so that a transfer cut short never looks to the
/// other side like one that ended (FIN). `Ok(None)`: idle or cut.
pub(super) fn finish<T>(r: Option<io::Result<T>>, socks: &[&TcpStream]) -> io::Result<Option<T>> {
    match r {
        Some(Err(e)) => {
            for s in socks {
                let _ = socket2::SockRef::from(*s).set_linger(Some(Duration::ZERO));
            }
            Err(e)
        }
        Some(Ok(v)) => Ok(Some(v)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::limits::Budget;
    use crate::mesh::service::tests::spec;
    use crate::mesh::spec::ServiceSpec;
    use std::net::Ipv4Addr;
    use tokio::io::AsyncReadExt;

    /// A task on loopback that sends endless bytes to whoever connects.
    async fn firehose() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let chunk = vec![7u8; 64 * 1024];
                    while s.write_all(&chunk).await.is_ok() {}
                });
            }
        });
        port
    }

    /// The mesh's accept loop on loopback in front of `target`, for a
    /// service with `spec`; the service and the published address.
    async fn mesh(
        spec: ServiceSpec,
        target: u16,
    ) -> (Arc<Service>, SocketAddr, watch::Sender<bool>) {
        let svc = Arc::new(Service::new(spec, &[Ipv4Addr::LOCALHOST]));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let route = Arc::new(ArcSwap::from_pointee(Route {
            service: svc.clone(),
            target,
            res: Arc::new(Resources::new(Budget::new(1000, 1 << 30))),
        }));
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(l, route, rx));
        (svc, addr, stop)
    }

    /// Polls `cond` every 10 ms for up to 10 s.
    async fn until(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_reset_after_the_write_timeout() {
        let mut sp = spec(Duration::ZERO);
        sp.limits.write_timeout = Duration::from_millis(200);
        let (svc, addr, _stop) = mesh(sp, firehose().await).await;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut c = sock.connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        // The client never reads: the relay's writes to it block, then fail.
        assert!(
            until(|| svc.write_timeouts.load(Relaxed) == 1).await,
            "the stalled write was counted"
        );
        assert!(until(|| svc.open_connections.load(Relaxed) == 0).await);
        // What was buffered drains, then the reset ends the stream.
        let mut buf = vec![0u8; 1 << 16];
        let end = loop {
            match c.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e.kind()),
            }
        };
        assert_eq!(end, Err(io::ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_first_byte_timeout() {
        let mut sp = spec(Duration::ZERO);
        sp.limits.first_byte_timeout = Duration::from_millis(200);
        let (svc, addr, _stop) = mesh(sp, firehose().await).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut talker = TcpStream::connect(addr).await.unwrap();
        talker.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 16];
        assert!(talker.read(&mut b).await.unwrap() > 0, "relayed");
        let t0 = Instant::now();
        assert_eq!(silent.read(&mut b).await.unwrap(), 0, "closed");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(svc.first_byte_timeouts.load(Relaxed), 1);
        assert_eq!(
            svc.tasks.lock().unwrap()[0].total.load(Relaxed),
            1,
            "no task connection for it"
        );
    }

    #[tokio::test]
    async fn one_source_is_held_to_its_cap_and_others_are_not() {
        let mut sp = spec(Duration::ZERO);
        sp.limits.connections_per_source = 2;
        let (svc, addr, _stop) = mesh(sp, firehose().await).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"x").await.unwrap();
            let mut b = [0u8; 16];
            assert!(c.read(&mut b).await.unwrap() > 0);
            held.push(c);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 16];
        assert_eq!(third.read(&mut b).await.unwrap(), 0, "closed at once");
        assert_eq!(svc.source_refused_connections.load(Relaxed), 1);
        assert_eq!(svc.conn_sources.held(Ipv4Addr::LOCALHOST.into()), 2);
        drop(held);
        assert!(until(|| svc.conn_sources.held(Ipv4Addr::LOCALHOST.into()) == 0).await);
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.write_all(b"x").await.unwrap();
        assert!(
            again.read(&mut b).await.unwrap() > 0,
            "a place is free again"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_and_counts() {
        let mut sp = spec(Duration::ZERO);
        sp.limits.connections_per_source = 0;
        let target = firehose().await;
        let svc = Arc::new(Service::new(sp, &[Ipv4Addr::LOCALHOST]));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let res = Arc::new(Resources::new(Budget::new(Cost::TCP.fds, 1 << 30)));
        let route = Arc::new(ArcSwap::from_pointee(Route {
            service: svc.clone(),
            target,
            res: res.clone(),
        }));
        let (_stop, rx) = watch::channel(false);
        tokio::spawn(serve(l, route, rx));
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"x").await.unwrap();
        let mut b = [0u8; 16];
        assert!(first.read(&mut b).await.unwrap() > 0);
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(second.read(&mut b).await.unwrap(), 0, "no budget left");
        assert_eq!(svc.budget_refused_connections.load(Relaxed), 1);
        assert_eq!(res.budget.status().refused, 1);
        // The first direction to go bulk found no descriptors for pipes
        // and went on copying: it still flows.
        assert!(first.read(&mut b).await.unwrap() > 0);
    }
}
