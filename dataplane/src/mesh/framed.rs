//! The relay's reusable connections. A TCP connection from the accepting
//! node to a task node's relay costs both nodes a connect, an accept and
//! two closes, twice the sockets HAProxy handles per client connection; for
//! short connections that is most of the relay's CPU. So the accepting
//! node keeps the relay connections that ended cleanly in a [`Pool`] and
//! sends the next request for that node over one of them.
//!
//! To end one client connection without closing the relay connection,
//! both directions carry frames after the status byte: a 4-byte header
//! (type, 0, length u16 big-endian) and, for data, the bytes.
//!
//! ```text
//! DATA (0) len bytes | EOF (1): this direction ended (a half-close) |
//! RAW (2): from here on this direction is the plain byte stream until FIN
//! ```
//!
//! A direction whose read fills the copy buffer is bulk: it sends RAW and
//! moves the rest by splice(2), exactly as an unframed relay does, and the
//! connection is not reused. A connection goes back to the pool only when
//! both directions ended with EOF frames; anything else (a reset, the idle
//! timeout, a cut, a malformed frame) closes it, and a reset is passed on to
//! the other side as before.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::limits::Budget;
use super::tcp::{
    both_ways, bulk, finish, io_ready, shutdown_write, watched, write_ready, Clock, Dir, Leg,
    COPY_CHUNK,
};

const HDR: usize = 4;
const DATA: u8 = 0;
const EOF: u8 = 1;
const RAW: u8 = 2;

/// How long an idle connection stays in the accepting node's pool. The task
/// node keeps one open for [`SERVER_IDLE`], longer, so that the accepting
/// node never picks a connection the other end is closing.
pub const POOL_IDLE: Duration = Duration::from_secs(10);
/// How long the task node waits for the next request on a used connection.
pub const SERVER_IDLE: Duration = Duration::from_secs(15);
/// Idle connections kept per task node.
pub const POOL_PER_NODE: usize = 64;

/// A relay connection in framed mode, with what was read past the frames
/// consumed so far (the next request or status can arrive in the same read
/// as the last frame).
#[derive(Debug)]
pub struct Framed {
    pub sock: TcpStream,
    rx: Rx,
}

impl Framed {
    pub fn new(sock: TcpStream) -> Framed {
        let _ = sock.set_nodelay(true);
        Framed {
            sock,
            rx: Rx::default(),
        }
    }

    /// Reads exactly `out.len()` bytes (a request, a status byte). EOF
    /// before them is `UnexpectedEof`.
    pub async fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        while self.rx.len() < out.len() {
            self.rx.fill(&self.sock).await?;
        }
        out.copy_from_slice(&self.rx.data()[..out.len()]);
        self.rx.consume(out.len());
        Ok(())
    }
}

/// The receive buffer of a [`Framed`] connection.
struct Rx {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rx({} bytes kept)", self.len())
    }
}

impl Default for Rx {
    fn default() -> Rx {
        Rx {
            buf: vec![0u8; HDR + COPY_CHUNK],
            start: 0,
            end: 0,
        }
    }
}

impl Rx {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads what the socket has (at least one byte) after what is kept.
    async fn fill(&mut self, s: &TcpStream) -> io::Result<()> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let end = self.end;
        let buf = &mut self.buf;
        let n = io_ready(s, Interest::READABLE, || s.try_read(&mut buf[end..])).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the relay connection closed inside a frame",
            ));
        }
        self.end += n;
        Ok(())
    }
}

/// How a framed direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// With an EOF frame: the connection can carry another.
    Framed,
    /// As a plain stream after RAW: the connection closes after this one.
    Raw,
}

async fn write_all(w: &TcpStream, d: &Dir<'_>, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        let n = write_ready(w, d.write_timeout, || w.try_write(b)).await?;
        b = &b[n..];
    }
    Ok(())
}

/// What a short read is followed by: its data, and the end if the socket
/// already has it.
fn after_short_read(r: &TcpStream, rest: &mut [u8]) -> io::Result<(usize, bool)> {
    match r.try_read(rest) {
        Ok(0) => Ok((0, true)),
        Ok(m) => Ok((m, false)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((0, false)),
        Err(e) => Err(e),
    }
}

/// The plain socket `r` into frames on `w`.
async fn frame_out(r: &TcpStream, w: &TcpStream, d: &Dir<'_>) -> io::Result<End> {
    // Room for a DATA frame and an EOF frame behind it.
    let mut buf = vec![0u8; HDR + COPY_CHUNK + HDR];
    loop {
        let body = HDR..HDR + COPY_CHUNK;
        let mut n = io_ready(r, Interest::READABLE, || r.try_read(&mut buf[body.clone()])).await?;
        if n == 0 {
            write_all(w, d, &[EOF, 0, 0, 0]).await?;
            return Ok(End::Framed);
        }
        // A task that answers and closes has usually sent its FIN by now:
        // one more read (the one the next turn would make anyway) finds it,
        // and the answer and its EOF frame leave in one write, one segment
        // and one wake-up of the other node instead of two.
        let mut eof = false;
        if n < COPY_CHUNK {
            let (more, end) = after_short_read(r, &mut buf[HDR + n..body.end])?;
            n += more;
            eof = end;
        }
        let len = (n as u16).to_be_bytes();
        buf[..HDR].copy_from_slice(&[DATA, 0, len[0], len[1]]);
        let mut out = HDR + n;
        if eof {
            buf[out..out + HDR].copy_from_slice(&[EOF, 0, 0, 0]);
            out += HDR;
        }
        write_all(w, d, &buf[..out]).await?;
        d.moved(n);
        if eof {
            return Ok(End::Framed);
        }
        if n == COPY_CHUNK {
            // Bulk: the rest as a plain stream, spliced.
            write_all(w, d, &[RAW, 0, 0, 0]).await?;
            drop(buf);
            bulk(r, w, d).await?;
            return Ok(End::Raw);
        }
    }
}

/// Frames from `r` (read through `rx`) to the plain socket `w`.
async fn frame_in(r: &TcpStream, rx: &mut Rx, w: &TcpStream, d: &Dir<'_>) -> io::Result<End> {
    loop {
        while rx.len() < HDR {
            rx.fill(r).await?;
        }
        let h = rx.data();
        let (kind, len) = (h[0], usize::from(u16::from_be_bytes([h[2], h[3]])));
        if h[1] != 0 || (kind != DATA && len != 0) || (kind == DATA && len == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed relay frame",
            ));
        }
        rx.consume(HDR);
        match kind {
            DATA => {
                let mut left = len;
                while left > 0 {
                    if rx.len() == 0 {
                        rx.fill(r).await?;
                    }
                    let take = left.min(rx.len());
                    write_all(w, d, &rx.data()[..take]).await?;
                    rx.consume(take);
                    d.moved(take);
                    left -= take;
                }
            }
            EOF => {
                shutdown_write(w)?;
                return Ok(End::Framed);
            }
            RAW => {
                let rest = rx.len();
                if rest > 0 {
                    write_all(w, d, rx.data()).await?;
                    rx.consume(rest);
                    d.moved(rest);
                }
                bulk(r, w, d).await?;
                return Ok(End::Raw);
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unknown relay frame type",
                ))
            }
        }
    }
}

/// Relays between the plain socket `plain` and the framed connection `conn`
/// as [`super::tcp::relay`] does (`leg.bytes_in` counts plain to framed,
/// `leg.bytes_out` the other way). `Ok(true)`: both directions ended with
/// EOF frames and `conn` can carry the next connection.
pub(super) async fn relay(
    plain: TcpStream,
    conn: &mut Framed,
    leg: Leg<'_>,
    idle: Duration,
    budget: &Arc<Budget>,
    write_timeout: Duration,
) -> io::Result<bool> {
    let _ = plain.set_nodelay(true);
    let clock = Clock::new();
    let (d_out, d_in) = Dir::pair(&leg, &clock, write_timeout, budget);
    let Framed { sock, rx } = conn;
    let both = both_ways(
        frame_out(&plain, &*sock, &d_out),
        frame_in(&*sock, rx, &plain, &d_in),
    );
    let r = watched(both, &clock, idle, leg.cut).await;
    let ends = finish(r, &[&plain, &*sock])?;
    Ok(ends == Some((End::Framed, End::Framed)))
}

/// The accepting node's idle relay connections, per task node relay.
#[derive(Default, Debug)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(Framed, Instant)>>>,
    /// Relays that refused a framed request (an older vxmeshd), with when:
    /// asked unframed for [`POOL_IDLE`] from then.
    legacy: Mutex<HashMap<SocketAddr, Instant>>,
    pub stats: PoolStats,
}

/// Counters of a [`Pool`].
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Requests sent over a pooled connection.
    pub reused: AtomicU64,
    /// Pooled connections found closed by the other end, replaced.
    pub stale: AtomicU64,
}

impl Pool {
    /// The most recently pooled connection to `via` still young enough;
    /// older ones are closed.
    pub fn take(&self, via: SocketAddr) -> Option<Framed> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        let list = idle.get_mut(&via)?;
        while let Some((c, since)) = list.pop() {
            if since.elapsed() < POOL_IDLE {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `c` for the next request to `via`, when there is room.
    pub fn put(&self, via: SocketAddr, c: Framed) {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        let list = idle.entry(via).or_default();
        list.retain(|(_, since)| since.elapsed() < POOL_IDLE);
        if list.len() < POOL_PER_NODE {
            list.push((c, Instant::now()));
        }
    }

    /// Closes every pooled connection (the daemon stops or hands over).
    pub fn clear(&self) {
        self.idle.lock().expect("pool lock poisoned").clear();
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        let idle = self.idle.lock().expect("pool lock poisoned");
        idle.values().map(Vec::len).sum()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn is_legacy(&self, via: SocketAddr) -> bool {
        let legacy = self.legacy.lock().expect("pool lock poisoned");
        legacy.get(&via).is_some_and(|t| t.elapsed() < POOL_IDLE)
    }

    pub(super) fn mark_legacy(&self, via: SocketAddr) {
        let mut legacy = self.legacy.lock().expect("pool lock poisoned");
        legacy.insert(via, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn budget() -> Arc<Budget> {
        Arc::new(Budget::new(1000, 1 << 30))
    }

    /// One client connection through a framed hop: the client sends `ask`
    /// and half-closes, the task (which must get exactly `ask`) answers
    /// `answer` and closes; the two relays between them use `x` and `y`.
    /// Returns what the client got and whether each relay could reuse its
    /// end of the framed connection.
    async fn exchange(
        x: &mut Framed,
        y: &mut Framed,
        ask: &[u8],
        answer: &[u8],
    ) -> (Vec<u8>, bool, bool) {
        let (mut app, a) = pair().await;
        let (d, mut task) = pair().await;
        let (b, s, n) = (budget(), AtomicU64::new(0), AtomicU64::new(0));
        let leg = || Leg {
            bytes_in: &s,
            bytes_out: &n,
            cut: None,
        };
        let t = Duration::from_secs(5);
        let app_side = async {
            app.write_all(ask).await.unwrap();
            app.shutdown().await.unwrap();
            let mut got = Vec::new();
            app.read_to_end(&mut got).await.unwrap();
            got
        };
        let task_side = async {
            let mut got = Vec::new();
            task.read_to_end(&mut got).await.unwrap();
            assert!(got == ask, "the task got the request whole");
            task.write_all(answer).await.unwrap();
            task.shutdown().await.unwrap();
        };
        let (got, l, r, ()) = tokio::join!(
            app_side,
            relay(a, x, leg(), t, &b, t),
            relay(d, y, leg(), t, &b, t),
            task_side
        );
        (got, l.unwrap(), r.unwrap())
    }

    #[tokio::test]
    async fn short_exchanges_end_with_eof_frames_and_the_connection_carries_the_next() {
        let (x, y) = pair().await;
        let (mut x, mut y) = (Framed::new(x), Framed::new(y));
        for round in 0..3u8 {
            let (got, l, r) = exchange(&mut x, &mut y, &[b'q', round], &[b'a', round, 9, 9]).await;
            assert_eq!(got, [b'a', round, 9, 9]);
            assert!(l && r, "round {round}: both ends ended with EOF frames");
        }
    }

    #[tokio::test]
    async fn a_bulk_direction_goes_raw_arrives_whole_and_the_connection_is_not_reused() {
        let (x, y) = pair().await;
        let (mut x, mut y) = (Framed::new(x), Framed::new(y));
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (got, l, r) = exchange(&mut x, &mut y, b"GET", &body).await;
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the bytes arrive in order");
        assert!(!l && !r, "a raw direction ends the connection's reuse");
    }

    #[tokio::test]
    async fn a_short_read_is_followed_by_the_end_when_the_socket_has_it() {
        let (mut task, plain) = pair().await;
        task.write_all(b"hi").await.unwrap();
        plain.readable().await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(plain.try_read(&mut buf).unwrap(), 2);
        assert_eq!(after_short_read(&plain, &mut buf).unwrap(), (0, false));
        task.shutdown().await.unwrap();
        plain.readable().await.unwrap();
        assert_eq!(after_short_read(&plain, &mut buf).unwrap(), (0, true));
    }

    #[tokio::test]
    async fn an_answer_and_its_end_arrive_as_a_data_and_an_eof_frame() {
        let (mut task, plain) = pair().await;
        let (x, mut y) = pair().await;
        task.write_all(b"hello").await.unwrap();
        task.shutdown().await.unwrap();
        let (b, s, n, clock) = (budget(), AtomicU64::new(0), AtomicU64::new(0), Clock::new());
        let leg = Leg {
            bytes_in: &s,
            bytes_out: &n,
            cut: None,
        };
        let (d, _) = Dir::pair(&leg, &clock, Duration::from_secs(5), &b);
        assert_eq!(frame_out(&plain, &x, &d).await.unwrap(), End::Framed);
        drop(x);
        let mut wire = Vec::new();
        y.read_to_end(&mut wire).await.unwrap();
        let expected = [DATA, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', EOF, 0, 0, 0];
        assert_eq!(wire, expected);
        assert_eq!(
            s.load(std::sync::atomic::Ordering::Relaxed),
            5,
            "counted plain to framed"
        );
    }

    #[tokio::test]
    async fn a_malformed_frame_resets_the_plain_side() {
        let (x, mut y) = pair().await;
        let mut x = Framed::new(x);
        let (mut app, a) = pair().await;
        let (b, s, n) = (budget(), AtomicU64::new(0), AtomicU64::new(0));
        let t = Duration::from_secs(5);
        let leg = Leg {
            bytes_in: &s,
            bytes_out: &n,
            cut: None,
        };
        y.write_all(&[DATA, 7, 0, 1, b'x']).await.unwrap();
        let r = relay(a, &mut x, leg, t, &b, t).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut got = Vec::new();
        let e = app.read_to_end(&mut got).await;
        assert!(
            e.is_err(),
            "the client sees a reset, not a clean end: {e:?}"
        );
    }

    #[tokio::test]
    async fn the_pool_hands_back_young_connections_only() {
        let pool = Pool::default();
        let via: SocketAddr = "198.18.0.2:7950".parse().unwrap();
        assert!(pool.take(via).is_none());
        let (x, _y) = pair().await;
        pool.put(via, Framed::new(x));
        assert_eq!(pool.len(), 1);
        assert!(pool.take(via).is_some());
        assert!(pool.is_empty());
        assert!(!pool.is_legacy(via));
        pool.mark_legacy(via);
        assert!(pool.is_legacy(via));
    }
}
