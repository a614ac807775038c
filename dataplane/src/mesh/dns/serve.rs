//! The responder's sockets: UDP and TCP loops around [`Zone`], forwarding
//! to the network's resolvers, and what keeps the responder from being
//! anyone's weapon or anyone's to exhaust:
//! - only the network's own subnet is answered ([`Zone::admits`]); a query
//!   from anywhere else (the underlay, another network) gets no answer at
//!   all, so a forged source cannot aim replies at a third party;
//! - forwarded queries are limited per client ([`ForwardLimiter`]) and a
//!   forwarded answer larger than the client asked for over UDP is cut to a
//!   truncated reply (TC set) that sends it to TCP, never passed on whole:
//!   no amplification;
//! - TCP: at most [`TCP_CONNS`] connections, [`TCP_CONNS_PER_SOURCE`] from
//!   one address, idle, read and write timeouts of [`TCP_IDLE`]; accept
//!   errors (descriptors run out) back off instead of spinning (the mesh's
//!   own [`limits::accept`] and [`PerSource`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;

use crate::mesh::limits::{self, Backoff, PerSource};

use super::{
    servfail, DnsStats, Outcome, Zone, EDNS_UDP, FORWARD_BUF, FORWARD_INFLIGHT, FORWARD_TIMEOUT,
    PLAIN_UDP, TCP_CONNS, TCP_IDLE,
};

/// TCP connections one client address may hold at once.
pub const TCP_CONNS_PER_SOURCE: usize = 8;
/// Clients the forward limiter keeps a bucket for; beyond that, buckets
/// idle for a second are dropped, and a new client that still finds no
/// room is refused until one frees.
const LIMITER_CLIENTS: usize = 4096;

/// Serves `zone` on `sock` until `stop` turns true. Every datagram gets at
/// most one answer; nothing a client sends ends the loop. Forwarded
/// queries are answered from their own tasks, so a slow forwarder never
/// holds up the names of the cluster.
pub async fn serve(
    sock: UdpSocket,
    zone: Arc<ArcSwap<Zone>>,
    stats: Arc<DnsStats>,
    mut stop: watch::Receiver<bool>,
) {
    let sock = Arc::new(sock);
    let inflight = Arc::new(Semaphore::new(FORWARD_INFLIGHT));
    let turn = AtomicUsize::new(0);
    let mut limiter = ForwardLimiter::default();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let zone = zone.load();
        if !zone.admits(from.ip()) {
            stats.refused_source.fetch_add(1, Relaxed);
            continue;
        }
        let rotate = turn.fetch_add(1, Relaxed);
        match zone.answer(&buf[..n], rotate, &stats) {
            Outcome::Reply(reply) => {
                let _ = sock.send_to(&reply, from).await;
            }
            Outcome::Nothing => {}
            Outcome::Forward(to) => {
                if !limiter.allow(from.ip(), zone.forward_qps, Instant::now()) {
                    stats.rate_limited.fetch_add(1, Relaxed);
                    continue;
                }
                let query = buf[..n].to_vec();
                let Ok(permit) = inflight.clone().try_acquire_owned() else {
                    if let Some(b) = forward_failed(&query, &stats) {
                        let _ = sock.send_to(&b, from).await;
                    }
                    continue;
                };
                let (sock, stats) = (sock.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Some(b) = forwarded(&query, &to, &stats).await {
                        let b = fit_udp(&query, b, &stats);
                        let _ = sock.send_to(&b, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The largest UDP answer the client of `query` asked for: 512 bytes, or
/// its EDNS payload size (up to [`EDNS_UDP`]).
fn udp_limit(query: &[u8]) -> usize {
    Message::from_vec(query)
        .ok()
        .and_then(|m| m.extensions().as_ref().map(|e| e.max_payload()))
        .map_or(PLAIN_UDP, |p| {
            usize::from(p.clamp(PLAIN_UDP as u16, EDNS_UDP))
        })
}

/// `answer` when it fits what the client of `query` can take over UDP;
/// otherwise an empty truncated response (TC set) to the same question,
/// which tells the client to ask again over TCP.
fn fit_udp(query: &[u8], answer: Vec<u8>, stats: &DnsStats) -> Vec<u8> {
    if answer.len() <= udp_limit(query) {
        return answer;
    }
    stats.truncated.fetch_add(1, Relaxed);
    let Ok(q) = Message::from_vec(query) else {
        return servfail(query_id(query)).unwrap_or_default();
    };
    let mut out = Message::new();
    out.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_truncated(true);
    for question in q.queries() {
        out.add_query(Query::query(question.name().clone(), question.query_type()));
    }
    out.to_vec().unwrap_or_default()
}

/// Per-client token buckets for forwarded queries: `qps` a second with a
/// burst of as many. One task owns it (the UDP loop), so it takes no lock.
#[derive(Default)]
pub struct ForwardLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl ForwardLimiter {
    /// True when `client` may have one more query forwarded at `now`.
    pub fn allow(&mut self, client: IpAddr, qps: u32, now: Instant) -> bool {
        if qps == 0 {
            return true;
        }
        let rate = f64::from(qps);
        if !self.buckets.contains_key(&client) && self.buckets.len() >= LIMITER_CLIENTS {
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(1));
            if self.buckets.len() >= LIMITER_CLIENTS {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(client).or_insert((rate, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The answer of `to` to `query`, or SERVFAIL when none answered; counted.
async fn forwarded(query: &[u8], to: &[SocketAddr], stats: &DnsStats) -> Option<Vec<u8>> {
    match forward(query, to).await {
        Some(a) => {
            stats.forwarded.fetch_add(1, Relaxed);
            Some(a)
        }
        None => forward_failed(query, stats),
    }
}

/// SERVFAIL for a query that could not be forwarded, counted.
fn forward_failed(query: &[u8], stats: &DnsStats) -> Option<Vec<u8>> {
    stats.forward_failed.fetch_add(1, Relaxed);
    servfail(query_id(query)).ok()
}

/// The ID of a query [`Zone::answer`] found well formed.
fn query_id(q: &[u8]) -> u16 {
    u16::from_be_bytes([q[0], q[1]])
}

/// Serves `zone` over TCP on `l` (RFC 7766: clients retry there when a UDP
/// answer came back truncated) until `stop` turns true: messages with a
/// two-byte length in front, several per connection, answers never
/// truncated. Limits as the module says; a connection over them is closed
/// at once.
pub async fn serve_tcp(
    l: TcpListener,
    zone: Arc<ArcSwap<Zone>>,
    stats: Arc<DnsStats>,
    mut stop: watch::Receiver<bool>,
) {
    let conns = Arc::new(Semaphore::new(TCP_CONNS));
    let sources = Arc::new(PerSource::default());
    let turn = Arc::new(AtomicUsize::new(0));
    let mut backoff = Backoff::default();
    loop {
        let (c, from) = tokio::select! {
            c = limits::accept("dns", &mut backoff, &stats.accept, || l.accept()) => c,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        if !zone.load().admits(from.ip()) {
            stats.refused_source.fetch_add(1, Relaxed);
            continue;
        }
        // Over a limit: the connection is dropped, i.e. closed.
        let Some(slot) = sources.take(from.ip(), TCP_CONNS_PER_SOURCE as u32) else {
            stats.tcp_refused.fetch_add(1, Relaxed);
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            stats.tcp_refused.fetch_add(1, Relaxed);
            continue;
        };
        let (zone, stats, turn, mut stop) =
            (zone.clone(), stats.clone(), turn.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tcp_conn(c, &zone, &stats, &turn) => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
            }
            drop((permit, slot));
        });
    }
}

async fn tcp_conn(mut c: TcpStream, zone: &ArcSwap<Zone>, stats: &DnsStats, turn: &AtomicUsize) {
    let mut req = vec![0u8; usize::from(u16::MAX)];
    loop {
        let mut len = [0u8; 2];
        let Ok(Ok(_)) = timeout(TCP_IDLE, c.read_exact(&mut len)).await else {
            return;
        };
        let n = usize::from(u16::from_be_bytes(len));
        let Ok(Ok(_)) = timeout(TCP_IDLE, c.read_exact(&mut req[..n])).await else {
            return;
        };
        let rotate = turn.fetch_add(1, Relaxed);
        let outcome = zone.load().answer_tcp(&req[..n], rotate, stats);
        let reply = match outcome {
            Outcome::Reply(b) => b,
            Outcome::Nothing => return,
            Outcome::Forward(to) => match forwarded(&req[..n], &to, stats).await {
                Some(b) => b,
                None => return,
            },
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(2 + reply.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        // A client that does not read its answers loses the connection.
        let Ok(Ok(())) = timeout(TCP_IDLE, c.write_all(&out)).await else {
            return;
        };
    }
}

/// Asks each of `to` in turn for `query`, each for at most
/// [`FORWARD_TIMEOUT`], from a fresh socket (a fresh source port: an answer
/// can only come from the forwarder it was sent to). The first response
/// with the query's ID is the answer, passed back unchanged.
async fn forward(query: &[u8], to: &[SocketAddr]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; FORWARD_BUF];
    for up in to {
        let local: SocketAddr = match up {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(s) = UdpSocket::bind(local).await else {
            continue;
        };
        if s.connect(up).await.is_err() || s.send(query).await.is_err() {
            continue;
        }
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
                // A response (QR set) to this query; anything else is ignored.
                Ok(Ok(n)) if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 => {
                    return Some(buf[..n].to_vec());
                }
                Ok(Ok(_)) => continue,
                // Refused (port unreachable), an error, or the time is up.
                _ => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Edns;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::net::Ipv4Addr;

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// A response to `q` with `n` A records (about 16 bytes each).
    fn big_answer(q: &[u8], n: u8) -> Vec<u8> {
        let q = Message::from_vec(q).unwrap();
        let mut a = q.clone();
        a.set_message_type(MessageType::Response);
        for i in 0..n {
            a.add_answer(Record::from_rdata(
                q.queries()[0].name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(10, 99, 0, i))),
            ));
        }
        a.to_vec().unwrap()
    }

    #[test]
    fn a_forwarded_answer_never_exceeds_what_the_client_asked_for() {
        let st = DnsStats::default();
        let plain = query("example.com.", RecordType::A, None);
        let small = big_answer(&plain, 3);
        assert_eq!(fit_udp(&plain, small.clone(), &st), small);
        // 100 records (~1.6 KB) for a client that takes 512 bytes: a
        // truncated empty answer to the same question instead.
        let cut = fit_udp(&plain, big_answer(&plain, 100), &st);
        assert!(cut.len() <= PLAIN_UDP);
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.truncated());
        assert_eq!(m.id(), 0x1234);
        assert!(m.answers().is_empty());
        assert_eq!(m.queries().len(), 1);
        // An EDNS client that asked for 4096 gets at most EDNS_UDP.
        let edns = query("example.com.", RecordType::A, Some(4096));
        let fits = big_answer(&edns, 60);
        assert!(fits.len() > PLAIN_UDP && fits.len() <= usize::from(EDNS_UDP));
        assert_eq!(fit_udp(&edns, fits.clone(), &st), fits);
        let huge = big_answer(&edns, 200);
        assert!(Message::from_vec(&fit_udp(&edns, huge, &st))
            .unwrap()
            .truncated());
        assert_eq!(st.truncated.load(Relaxed), 2);
    }

    #[test]
    fn forwarding_is_limited_per_client() {
        let mut l = ForwardLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = Ipv4Addr::new(10, 0, 0, 5).into();
        let b: IpAddr = Ipv4Addr::new(10, 0, 0, 6).into();
        let granted = (0..100).filter(|_| l.allow(a, 10, t0)).count();
        assert_eq!(granted, 10, "a burst of qps, then nothing");
        // Another client is not held back by the first.
        assert!(l.allow(b, 10, t0));
        // Tokens come back with time, at the rate.
        assert!(l.allow(a, 10, t0 + Duration::from_millis(150)));
        assert!(!l.allow(a, 10, t0 + Duration::from_millis(150)));
        // 0: no limit.
        assert!((0..1000).all(|_| l.allow(a, 0, t0)));
        // A flood of distinct clients keeps the table bounded.
        let mut l = ForwardLimiter::default();
        for i in 0..(LIMITER_CLIENTS as u32 + 100) {
            let c: IpAddr = Ipv4Addr::from(0x0a00_0000 + i).into();
            l.allow(c, 10, t0);
        }
        assert!(l.buckets.len() <= LIMITER_CLIENTS);
    }

    #[tokio::test]
    async fn forward_skips_a_dead_forwarder_and_wrong_ids() {
        // A forwarder that is gone: its port answers with ICMP unreachable.
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        // A live one that first sends a response to another query.
        let live = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 512];
            let (n, from) = live.recv_from(&mut buf).unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut other = q.clone();
            other
                .set_id(q.id().wrapping_add(1))
                .set_message_type(MessageType::Response);
            live.send_to(&other.to_vec().unwrap(), from).unwrap();
            let mut a = q.clone();
            a.set_message_type(MessageType::Response)
                .add_answer(Record::from_rdata(
                    q.queries()[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(10, 99, 0, 1))),
                ));
            live.send_to(&a.to_vec().unwrap(), from).unwrap();
        });
        let q = query("example.com.", RecordType::A, None);
        let got = forward(&q, &[dead_addr, live_addr])
            .await
            .expect("an answer");
        server.join().unwrap();
        let m = Message::from_vec(&got).unwrap();
        assert_eq!(m.id(), 0x1234);
        assert_eq!(
            m.answers().len(),
            1,
            "the answer to this query, not the other"
        );
        // Nobody answers: no answer, and promptly (the refusal is seen).
        let t = std::time::Instant::now();
        assert_eq!(forward(&q, &[dead_addr]).await, None);
        assert!(t.elapsed() < FORWARD_TIMEOUT, "{:?}", t.elapsed());
    }
}
