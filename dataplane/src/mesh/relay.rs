//! The mesh's node-to-node leg. A node that accepts a connection for a
//! task on another node does not send the relayed bytes through its own
//! TAP, VXLAN and the task node's TAP: it opens a TCP connection over the
//! underlay to the task node's vxmeshd (this module's listener, on the
//! node's data-path address), names the task in a short request, and the
//! task node connects to the task locally and splices. Every relayed byte
//! then crosses one kernel TCP path per host, with the kernel's offloads,
//! and no userspace packet path at all.
//!
//! What stays where it was: the accepting node admits the client, checks
//! health, balances and counts, exactly as for a direct connection (the
//! request only carries the decision out). The task still sees the client:
//! the request carries the client's and the published addresses, and the
//! task node writes the PROXY v2 header when the service asks for one.
//!
//! Trust: a request is served only from a member node's address and only
//! for a task of a plain (unencrypted) network that this node owns, at a
//! target port of its service: a node cannot be made to connect anywhere
//! else. Encrypted networks never use this leg (it would carry their
//! traffic in clear over the underlay); they go over the overlay.
//!
//! Request (49 bytes), then one status byte back:
//!
//! ```text
//! "VXR1" | flags u8 (bit 0: PROXY v2, bit 1: framed) | task IPv4 (4) |
//! task port u16 | client: family u8 (4 or 6) | address (16, IPv4 in the
//! first 4) | port u16 | published: the same layout
//! ```
//!
//! A framed request (what the accepting node sends) asks for the reusable
//! mode of [`super::framed`]: the bytes of both directions go in frames, and
//! a connection whose client connection ended cleanly carries the next
//! request, so that most client connections cost the two nodes no relay
//! connect, accept or close at all. A relay that refuses the flag (a
//! vxmeshd from before it) is asked unframed, one connection per client,
//! for a while.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

use super::framed::{self, Framed};
use super::limits::{self, Backoff, Cost, Resources};
use super::tcp::{self, Leg};
use crate::wire::proxy_v2;

pub const MAGIC: [u8; 4] = *b"VXR1";
pub const REQUEST_LEN: usize = 4 + 1 + 6 + 2 * ADDR_LEN;
const ADDR_LEN: usize = 1 + 16 + 2;
const FLAG_PROXY_V2: u8 = 1;
const FLAG_FRAMED: u8 = 2;

/// The status byte the task node answers with.
pub const OK: u8 = 0;
/// Not a task this node serves (or not from a member node).
pub const REFUSED: u8 = 1;
/// The task did not take the connection.
pub const UNREACHABLE: u8 = 2;

/// How long a request may take to arrive, and its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One relayed connection, as asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub task: SocketAddrV4,
    pub client: SocketAddr,
    /// The address the client connected to (the PROXY v2 destination).
    pub published: SocketAddr,
    pub proxy_v2: bool,
    /// The reusable, framed mode ([`super::framed`]).
    pub framed: bool,
}

fn put_addr(out: &mut [u8], a: SocketAddr) {
    let (family, bytes) = match a.ip() {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (4, b)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    };
    out[0] = family;
    out[1..17].copy_from_slice(&bytes);
    out[17..19].copy_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([b[17], b[18]]);
    let ip: IpAddr = match b[0] {
        4 => Ipv4Addr::new(b[1], b[2], b[3], b[4]).into(),
        6 => Ipv6Addr::from(<[u8; 16]>::try_from(&b[1..17]).ok()?).into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = if self.proxy_v2 { FLAG_PROXY_V2 } else { 0 }
            | if self.framed { FLAG_FRAMED } else { 0 };
        out[5..9].copy_from_slice(&self.task.ip().octets());
        out[9..11].copy_from_slice(&self.task.port().to_be_bytes());
        put_addr(&mut out[11..11 + ADDR_LEN], self.client);
        put_addr(&mut out[11 + ADDR_LEN..], self.published);
        out
    }

    /// A request, or `None` for anything else (other magic, unknown flags,
    /// an unknown address family).
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<Request> {
        if b[..4] != MAGIC || b[4] & !(FLAG_PROXY_V2 | FLAG_FRAMED) != 0 {
            return None;
        }
        let task = SocketAddrV4::new(
            Ipv4Addr::new(b[5], b[6], b[7], b[8]),
            u16::from_be_bytes([b[9], b[10]]),
        );
        Some(Request {
            task,
            client: get_addr(&b[11..11 + ADDR_LEN])?,
            published: get_addr(&b[11 + ADDR_LEN..])?,
            proxy_v2: b[4] & FLAG_PROXY_V2 != 0,
            framed: b[4] & FLAG_FRAMED != 0,
        })
    }
}

/// Who may ask this node for what; swapped whole on every apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Underlay addresses of the other member nodes.
    pub peers: HashSet<Ipv4Addr>,
    /// This node's tasks of plain networks, at their services' target
    /// ports (TCP).
    pub targets: HashSet<SocketAddrV4>,
}

/// Counters of the relay listener.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub accepted: AtomicU64,
    /// Requests refused: not from a member node, malformed, or not for a
    /// task of this node.
    pub refused: AtomicU64,
    /// The task did not take the connection.
    pub unreachable: AtomicU64,
    pub active: AtomicU64,
    /// Requests served on a connection that had carried an earlier one.
    pub reused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A serialisable copy of [`RelayStats`].
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RelayCounters {
    pub accepted: u64,
    pub refused: u64,
    pub unreachable: u64,
    pub active: u64,
    pub reused: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The accepting side ([`framed::Pool`]): requests sent over a pooled
    /// connection, and pooled connections found closed and replaced.
    #[serde(default)]
    pub pool_reused: u64,
    #[serde(default)]
    pub pool_stale: u64,
    /// Idle pooled connections now.
    #[serde(default)]
    pub pool_idle: u64,
}

impl RelayStats {
    pub fn snapshot(&self) -> RelayCounters {
        RelayCounters {
            accepted: self.accepted.load(Relaxed),
            refused: self.refused.load(Relaxed),
            unreachable: self.unreachable.load(Relaxed),
            active: self.active.load(Relaxed),
            reused: self.reused.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            pool_reused: 0,
            pool_stale: 0,
            pool_idle: 0,
        }
    }
}

/// What a relayed connection on the task node works with.
pub struct Serve {
    pub policy: Arc<ArcSwap<Policy>>,
    pub res: Arc<Resources>,
    pub stats: Arc<RelayStats>,
    /// How long the task's connect and an idle connection may take.
    pub connect_timeout: Duration,
    pub idle: Duration,
    pub write_timeout: Duration,
}

/// Accepts relay requests until `stop` turns true.
pub async fn serve(l: TcpListener, s: Arc<Serve>, mut stop: watch::Receiver<bool>) {
    let what = l
        .local_addr()
        .map(|a| format!("relay/{a}"))
        .unwrap_or_default();
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            (c, peer) = limits::accept(&what, &mut backoff, &s.res.accept, || l.accept()) => {
                tokio::spawn(handle(c, peer, s.clone(), stop.clone()));
            }
            _ = async { let _ = stop.wait_for(|v| *v).await; } => return,
        }
    }
}

fn is_member(s: &Serve, peer: SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(a) => s.policy.load().peers.contains(&a),
        IpAddr::V6(_) => false,
    }
}

/// One connection from another node: its requests, one after the other
/// while they are framed and end cleanly. Between two, the connection
/// waits [`framed::SERVER_IDLE`] for the next, or until the relay stops.
async fn handle(c: TcpStream, peer: SocketAddr, s: Arc<Serve>, mut stop: watch::Receiver<bool>) {
    if !is_member(&s, peer) {
        // Closed without a word: nothing to learn for a stranger.
        s.stats.refused.fetch_add(1, Relaxed);
        return;
    }
    let Some(_budget) = s.res.budget.take(Cost::TCP) else {
        s.stats.refused.fetch_add(1, Relaxed);
        return;
    };
    let mut c = Framed::new(c);
    let mut buf = [0u8; REQUEST_LEN];
    for served in 0u64.. {
        let wait = if served == 0 {
            REQUEST_TIMEOUT
        } else {
            framed::SERVER_IDLE
        };
        let next = tokio::select! {
            r = timeout(wait, c.read_exact(&mut buf)) => r,
            _ = stop.wait_for(|v| *v) => return,
        };
        if served > 0 {
            match next {
                // Closed by the other node between two requests: its pool
                // let it go.
                Ok(Err(_)) | Err(_) => return,
                Ok(Ok(())) => {}
            }
            if !is_member(&s, peer) {
                s.stats.refused.fetch_add(1, Relaxed);
                return;
            }
            s.stats.reused.fetch_add(1, Relaxed);
        }
        let req = match next {
            Ok(Ok(())) => Request::decode(&buf),
            _ => None,
        };
        match serve_one(c, req, &s).await {
            Some(next) => c = next,
            None => return,
        }
    }
}

/// Serves one request on `c`; gives `c` back when it can carry the next.
async fn serve_one(mut c: Framed, req: Option<Request>, s: &Serve) -> Option<Framed> {
    let Some(req) = req.filter(|r| s.policy.load().targets.contains(&r.task)) else {
        s.stats.refused.fetch_add(1, Relaxed);
        let _ = timeout(REQUEST_TIMEOUT, c.sock.write_all(&[REFUSED])).await;
        return None;
    };
    let up = match timeout(
        s.connect_timeout,
        TcpStream::connect(SocketAddr::V4(req.task)),
    )
    .await
    {
        Ok(Ok(up)) => up,
        _ => {
            s.stats.unreachable.fetch_add(1, Relaxed);
            let _ = timeout(REQUEST_TIMEOUT, c.sock.write_all(&[UNREACHABLE])).await;
            return None;
        }
    };
    let mut up = up;
    if req.proxy_v2 {
        let (hdr, n) = proxy_v2::encode(req.client, req.published, proxy_v2::Transport::Stream);
        if !matches!(
            timeout(s.write_timeout, up.write_all(&hdr[..n])).await,
            Ok(Ok(()))
        ) {
            s.stats.unreachable.fetch_add(1, Relaxed);
            let _ = timeout(REQUEST_TIMEOUT, c.sock.write_all(&[UNREACHABLE])).await;
            return None;
        }
    }
    if !matches!(
        timeout(REQUEST_TIMEOUT, c.sock.write_all(&[OK])).await,
        Ok(Ok(()))
    ) {
        return None;
    }
    s.stats.accepted.fetch_add(1, Relaxed);
    s.stats.active.fetch_add(1, Relaxed);
    let budget = &s.res.budget;
    let again = if req.framed {
        // Here the plain side is the task: task to node is bytes_out.
        let leg = Leg {
            bytes_in: &s.stats.bytes_out,
            bytes_out: &s.stats.bytes_in,
            cut: None,
        };
        let clean = framed::relay(up, &mut c, leg, s.idle, budget, s.write_timeout).await;
        clean.unwrap_or(false).then_some(c)
    } else {
        let leg = Leg {
            bytes_in: &s.stats.bytes_in,
            bytes_out: &s.stats.bytes_out,
            cut: None,
        };
        // An unframed connection carries one request.
        let _ = tcp::relay(c.sock, up, leg, s.idle, budget, s.write_timeout).await;
        None
    };
    s.stats.active.fetch_sub(1, Relaxed);
    again
}

/// The accepting node's side: a connection to task `req.task` through the
/// relay of its node at `via`, ready to carry the client's bytes (the
/// task node has written the PROXY v2 header if `req` asked for it). A
/// pooled connection is tried first; one the other end closed is replaced
/// by a new one without counting against the task.
pub async fn connect(
    via: SocketAddr,
    req: &Request,
    limit: Duration,
    pool: &framed::Pool,
) -> io::Result<Connected> {
    let ask = async {
        if !pool.is_legacy(via) {
            let framed = Request {
                framed: true,
                ..*req
            };
            while let Some(mut c) = pool.take(via) {
                match ask_on(&mut c, &framed).await {
                    Ok(()) => {
                        pool.stats.reused.fetch_add(1, Relaxed);
                        return Ok(Connected::Framed(c));
                    }
                    // An answer: the relay is alive and said no.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::PermissionDenied | io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        return Err(e)
                    }
                    Err(_) => {
                        pool.stats.stale.fetch_add(1, Relaxed);
                    }
                }
            }
            let mut c = Framed::new(TcpStream::connect(via).await?);
            match ask_on(&mut c, &framed).await {
                Ok(()) => return Ok(Connected::Framed(c)),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    // An older relay refuses the flag; a newer one refuses
                    // only what it would refuse unframed too. Asked
                    // unframed below either way.
                    pool.mark_legacy(via);
                }
                Err(e) => return Err(e),
            }
        }
        let mut c = Framed::new(TcpStream::connect(via).await?);
        ask_on(&mut c, req).await?;
        Ok(Connected::Plain(c.sock))
    };
    timeout(limit, ask).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "relay request timed out",
        ))
    })
}

/// A connection through a relay, as [`connect`] got it.
pub enum Connected {
    /// Framed: can go back to the pool when its client connection ends
    /// cleanly.
    Framed(Framed),
    /// One client connection, then closed (a relay from before framing).
    Plain(TcpStream),
}

/// Sends `req` on `c` and reads the status.
async fn ask_on(c: &mut Framed, req: &Request) -> io::Result<()> {
    c.sock.write_all(&req.encode()).await?;
    let mut status = [0u8; 1];
    c.read_exact(&mut status).await?;
    match status[0] {
        OK => Ok(()),
        REFUSED => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the task node refused the relay request",
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "the task did not take the connection",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn requests_round_trip_and_strangers_are_refused() {
        let r = Request {
            task: "10.0.9.2:80".parse().unwrap(),
            client: "198.18.0.100:40000".parse().unwrap(),
            published: "[2001:db8::1]:8080".parse().unwrap(),
            proxy_v2: true,
            framed: true,
        };
        let b = r.encode();
        assert_eq!(Request::decode(&b), Some(r));
        let mut other = b;
        other[0] = b'X';
        assert_eq!(Request::decode(&other), None);
        let mut flags = b;
        flags[4] = 0x80;
        assert_eq!(Request::decode(&flags), None);
        let mut family = b;
        family[11] = 5;
        assert_eq!(Request::decode(&family), None);
    }

    async fn listener(policy: Policy) -> (SocketAddr, Arc<Serve>, watch::Sender<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = Arc::new(Serve {
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            res: Arc::new(Resources::new(limits::Budget::new(1000, 1 << 30))),
            stats: Arc::default(),
            connect_timeout: Duration::from_secs(1),
            idle: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
        });
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(l, s.clone(), rx));
        (addr, s, stop)
    }

    /// A task listener on loopback and a relay that lets 127.0.0.1 reach it.
    async fn task_behind_relay() -> (
        TcpListener,
        SocketAddrV4,
        SocketAddr,
        Arc<Serve>,
        watch::Sender<bool>,
    ) {
        let task = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(task_addr) = task.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address");
        };
        let (via, s, stop) = listener(Policy {
            peers: [Ipv4Addr::LOCALHOST].into(),
            targets: [task_addr].into(),
        })
        .await;
        (task, task_addr, via, s, stop)
    }

    fn request(task: SocketAddrV4, proxy_v2: bool) -> Request {
        Request {
            task,
            client: "198.18.0.100:40000".parse().unwrap(),
            published: "198.18.0.1:8080".parse().unwrap(),
            proxy_v2,
            framed: false,
        }
    }

    #[tokio::test]
    async fn a_relayed_connection_reaches_only_an_allowed_task_with_the_client_in_proxy_v2() {
        let (task, task_addr, via, s, _stop) = task_behind_relay().await;
        let req = request(task_addr, true);
        let pool = framed::Pool::default();
        pool.mark_legacy(via);
        let Connected::Plain(mut up) = connect(via, &req, Duration::from_secs(2), &pool)
            .await
            .unwrap()
        else {
            panic!("asked unframed, got framed");
        };
        let (mut t, _) = task.accept().await.unwrap();
        let mut hdr = [0u8; 28];
        t.read_exact(&mut hdr).await.unwrap();
        let (parsed, _) = proxy_v2::Header::parse(&hdr).expect("a PROXY v2 header");
        assert_eq!(parsed.addresses, Some((req.client, req.published)));
        up.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        t.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        t.write_all(b"pong").await.unwrap();
        up.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"pong");
        assert_eq!(s.stats.accepted.load(Relaxed), 1);
        // Another port of the same host is not a task: refused.
        let elsewhere = Request {
            task: SocketAddrV4::new(Ipv4Addr::LOCALHOST, task_addr.port() ^ 1),
            ..req
        };
        let e = connect(via, &elsewhere, Duration::from_secs(2), &pool)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(s.stats.refused.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_node_that_is_no_member_gets_nothing() {
        let (via, s, _stop) = listener(Policy::default()).await;
        let req = Request {
            task: "127.0.0.1:9".parse().unwrap(),
            client: "127.0.0.1:1".parse().unwrap(),
            published: "127.0.0.1:2".parse().unwrap(),
            proxy_v2: false,
            framed: false,
        };
        let pool = framed::Pool::default();
        assert!(connect(via, &req, Duration::from_secs(2), &pool)
            .await
            .is_err());
        for _ in 0..100 {
            if s.stats.refused.load(Relaxed) == 1 {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the stranger was not counted");
    }

    /// One client connection through the relay at `via` with `pool`: sends
    /// `ask`, half-closes, and returns what came back; the task (accepted
    /// from `task`) answers `answer` and closes.
    async fn exchange(
        via: SocketAddr,
        pool: &framed::Pool,
        task: &TcpListener,
        req: &Request,
        ask: &[u8],
        answer: &[u8],
    ) -> Vec<u8> {
        let budget = Arc::new(limits::Budget::new(100, 1 << 30));
        let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
        let up = connect(via, req, Duration::from_secs(2), pool)
            .await
            .unwrap();
        let Connected::Framed(mut c) = up else {
            panic!("a current relay answers framed");
        };
        // The client: one end of a loopback pair; the relay gets the other.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (plain, _) = l.accept().await.unwrap();
        let (mut t, _) = task.accept().await.unwrap();
        let leg = Leg {
            bytes_in: &a,
            bytes_out: &b,
            cut: None,
        };
        let t5 = Duration::from_secs(5);
        let relayed = framed::relay(plain, &mut c, leg, t5, &budget, t5);
        let client_side = async {
            client.write_all(ask).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let task_side = async {
            let mut got = Vec::new();
            t.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, ask);
            t.write_all(answer).await.unwrap();
            t.shutdown().await.unwrap();
        };
        let (clean, got, ()) = tokio::join!(relayed, client_side, task_side);
        if clean.unwrap() {
            pool.put(via, c);
        }
        got
    }

    #[tokio::test]
    async fn connections_that_end_cleanly_reuse_one_relay_connection_and_a_closed_one_is_replaced()
    {
        let (task, task_addr, via, s, stop) = task_behind_relay().await;
        let req = request(task_addr, false);
        let pool = framed::Pool::default();
        for i in 0..3u8 {
            let got = exchange(via, &pool, &task, &req, &[b'q', i], &[b'a', i]).await;
            assert_eq!(got, [b'a', i]);
            assert_eq!(pool.len(), 1, "the relay connection went back to the pool");
        }
        assert_eq!(pool.stats.reused.load(Relaxed), 2);
        assert_eq!(s.stats.accepted.load(Relaxed), 3);
        assert_eq!(s.stats.reused.load(Relaxed), 2);
        // A pooled connection the other end has closed (here: by hand) is
        // counted stale and replaced by a new one; the request goes through.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        drop(l.accept().await.unwrap());
        pool.put(via, framed::Framed::new(dead));
        let got = exchange(via, &pool, &task, &req, b"q", b"a").await;
        assert_eq!(got, b"a");
        assert_eq!(pool.stats.stale.load(Relaxed), 1);
        // The relay stops: the connections idle between two requests close.
        stop.send(true).unwrap();
        let mut idle = Vec::new();
        while let Some(c) = pool.take(via) {
            idle.push(c);
        }
        assert!(!idle.is_empty());
        for c in &idle {
            let mut b = [0u8; 1];
            let n = loop {
                c.sock.readable().await.unwrap();
                match c.sock.try_read(&mut b) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => break r,
                }
            };
            assert!(matches!(n, Ok(0) | Err(_)), "closed by the relay: {n:?}");
        }
    }
}
