//! Service discovery: the embedded DNS responder of one network on one node.
//!
//! Each node runs one UDP responder per overlay network it is a member of,
//! at the network's DNS address (the same on every node; the control plane
//! puts it on the node's TAP). It answers A queries from the network's
//! [`Zone`]:
//!
//! | name (optionally `.<domain>`) | answer | TTL |
//! |---|---|---|
//! | `<service>` (`endpoint_mode = "vip"`) | the service's VIP | [`VIP_TTL`] |
//! | `<service>` (`endpoint_mode = "dnsrr"`) | its healthy tasks | [`TASK_TTL`] |
//! | `tasks.<service>` | its healthy tasks | [`TASK_TTL`] |
//! | an endpoint's `name` | the endpoint's address | [`TASK_TTL`] |
//!
//! A known name asked for another type gets an empty NOERROR answer; an
//! unknown name in the cluster domain (one label, `tasks.*`, or ending in
//! `.<domain>`) gets NXDOMAIN. Anything else goes, unchanged, to the
//! network's forwarders in turn when it has some (`dns_forward`; their
//! answer is passed back as it came, SERVFAIL when none answers within
//! [`FORWARD_TIMEOUT`]) and is REFUSED when it has none.
//!
//! Task lists are read at query time from the same [`Service`] the routing
//! mesh balances with, so an answer never names a task the mesh would not
//! send a connection to: a task that goes down leaves the answers as soon as
//! the node's probes mark it down. Parsing and emitting are hickory-proto's;
//! [`Zone::respond`] is pure (bytes in, bytes out) and never panics.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use serde::Serialize;

use super::service::Service;

mod serve;
pub use serve::{serve, serve_tcp, ForwardLimiter, TCP_CONNS_PER_SOURCE};

/// The DNS wire library, re-exported so callers (and tests) use the same
/// version.
pub use hickory_proto as proto;

/// TTL of a VIP answer: a VIP changes only with the configuration.
pub const VIP_TTL: u32 = 10;
/// TTL of task and endpoint addresses: they follow health and membership.
pub const TASK_TTL: u32 = 1;
/// Largest answer over UDP without EDNS (RFC 1035 section 4.2.1).
const PLAIN_UDP: usize = 512;
/// Largest answer we send to an EDNS client (the DNS flag day 2020 value).
const EDNS_UDP: u16 = 1232;
/// How long one forwarder has to answer before the next is asked.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight per responder; more get SERVFAIL at once,
/// so a workload that floods names outside the cluster cannot pile up
/// sockets and tasks on its node.
const FORWARD_INFLIGHT: usize = 256;
/// Largest forwarded answer passed back (EDNS clients may ask for more
/// than [`EDNS_UDP`]; the forwarder sizes its answer to what they asked).
const FORWARD_BUF: usize = 4096;
/// TCP connections one responder serves at once; more are closed at once.
const TCP_CONNS: usize = 64;
/// A TCP client that sends nothing for this long is closed (RFC 7766
/// section 6.2.3 asks for seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the control plane wants served for one network on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSpec {
    pub network: String,
    /// The responder's address (on the node's TAP in the network).
    pub addr: Ipv4Addr,
    /// The cluster domain, lowercase, without dots at either end.
    pub domain: String,
    /// Services of the network: name and VIP (`None`: dnsrr).
    pub services: Vec<(String, Option<Ipv4Addr>)>,
    /// Endpoints of the network that have a name.
    pub endpoints: Vec<(String, Ipv4Addr)>,
    /// Resolvers asked, in turn, for names outside the cluster (empty:
    /// those are REFUSED).
    pub forward: Vec<SocketAddr>,
    /// The network's subnet (address, prefix length): the only clients
    /// answered.
    pub clients: (Ipv4Addr, u8),
    /// Queries a second one client may have forwarded (0: no limit).
    pub forward_qps: u32,
}

struct ZoneService {
    vip: Option<Ipv4Addr>,
    service: Arc<Service>,
}

/// The names of one network, with live handles on its services.
pub struct Zone {
    domain: String,
    services: HashMap<String, ZoneService>,
    endpoints: HashMap<String, Vec<Ipv4Addr>>,
    forward: Arc<[SocketAddr]>,
    /// Network and mask of the clients answered.
    clients: (u32, u32),
    forward_qps: u32,
}

/// What becomes of one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// A well-formed query for a name outside the cluster: pass it on to
    /// these resolvers, the forwarders of the zone that decided so.
    Forward(Arc<[SocketAddr]>),
    /// Nothing to send (not a query, or too broken to answer).
    Nothing,
}

/// How a name resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; its A records (possibly none: no healthy task).
    Addrs(Vec<Ipv4Addr>, u32),
    /// The name exists but has no records of the asked type.
    NoData,
    NxDomain,
    Refused,
}

/// Counters of one responder.
#[derive(Default, Debug, Serialize)]
pub struct DnsStats {
    pub queries: AtomicU64,
    pub answered: AtomicU64,
    pub nxdomain: AtomicU64,
    pub refused: AtomicU64,
    /// Datagrams that were not a well-formed query (answered FORMERR when
    /// the header could be read, dropped otherwise).
    pub malformed: AtomicU64,
    /// Queries a forwarder answered (its answer passed back).
    pub forwarded: AtomicU64,
    /// Queries no forwarder answered in time, or refused for too many in
    /// flight (SERVFAIL).
    pub forward_failed: AtomicU64,
    /// Queries from outside the network's subnet (the underlay, another
    /// network): not answered.
    pub refused_source: AtomicU64,
    /// Queries for outside names over a client's forwarding rate: dropped
    /// unanswered.
    pub rate_limited: AtomicU64,
    /// Forwarded answers larger than the client could take over UDP,
    /// replaced by an empty truncated answer (it asks again over TCP).
    pub truncated: AtomicU64,
    /// TCP connections closed at once: over the responder's or one
    /// client's connection limit.
    pub tcp_refused: AtomicU64,
    /// Failed accepts on the TCP listener.
    #[serde(skip)]
    pub accept: super::limits::AcceptStats,
}

impl Zone {
    /// Builds the zone of `spec`; `service` looks up the live service of a
    /// name (services the mesh does not run are left out).
    pub fn new(spec: &ZoneSpec, service: impl Fn(&str) -> Option<Arc<Service>>) -> Zone {
        let services = spec
            .services
            .iter()
            .filter_map(|(name, vip)| {
                service(name).map(|s| {
                    (
                        name.to_ascii_lowercase(),
                        ZoneService {
                            vip: *vip,
                            service: s,
                        },
                    )
                })
            })
            .collect();
        let mut endpoints: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for (name, ip) in &spec.endpoints {
            endpoints
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(*ip);
        }
        Zone {
            domain: spec.domain.to_ascii_lowercase(),
            services,
            endpoints,
            forward: spec.forward.clone().into(),
            clients: {
                let (net, len) = spec.clients;
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                (u32::from(net) & mask, mask)
            },
            forward_qps: spec.forward_qps,
        }
    }

    /// True when `client` is in the network's subnet: nobody else is
    /// answered (not the underlay, not another network's workloads).
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        let client = match client {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return false,
            },
        };
        let (net, mask) = self.clients;
        u32::from(client) & mask == net
    }

    /// The healthy tasks of a service, in address order: the tasks its
    /// balancer may pick right now.
    fn healthy(s: &Service) -> Vec<Ipv4Addr> {
        s.pick.load().tasks.iter().map(|t| t.addr).collect()
    }

    /// Resolves `name` (any case, with or without the final dot) for
    /// `qtype`.
    pub fn resolve(&self, name: &str, qtype: RecordType) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let (rel, in_domain) = if name == self.domain {
            ("", true)
        } else {
            match name.strip_suffix(&self.domain) {
                Some(r) if r.ends_with('.') => (&r[..r.len() - 1], true),
                _ => (name.as_str(), false),
            }
        };
        let found = if let Some(s) = self.services.get(rel) {
            Some(match s.vip {
                Some(vip) => (vec![vip], VIP_TTL),
                None => (Self::healthy(&s.service), TASK_TTL),
            })
        } else if let Some(s) = rel
            .strip_prefix("tasks.")
            .and_then(|r| self.services.get(r))
        {
            Some((Self::healthy(&s.service), TASK_TTL))
        } else {
            self.endpoints.get(rel).map(|ips| (ips.clone(), TASK_TTL))
        };
        match found {
            Some((ips, ttl)) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                Answer::Addrs(ips, ttl)
            }
            Some(_) => Answer::NoData,
            None if in_domain || !rel.contains('.') || rel.starts_with("tasks.") => {
                Answer::NxDomain
            }
            None => Answer::Refused,
        }
    }

    /// Answers one datagram from the zone alone. `None`: nothing to send
    /// (not a query, or too broken to answer); a name outside the cluster
    /// gets REFUSED here even when the zone has forwarders ([`Zone::answer`]
    /// says when to forward). `rotate` turns multi-address answers so that
    /// clients that take the first address spread.
    pub fn respond(&self, req: &[u8], rotate: usize, stats: &DnsStats) -> Option<Vec<u8>> {
        match self.answer_within(req, rotate, stats, false, false) {
            Outcome::Reply(bytes) => Some(bytes),
            Outcome::Forward(_) | Outcome::Nothing => None,
        }
    }

    /// What to do with one datagram: as [`Zone::respond`], but a
    /// well-formed query for a name outside the cluster becomes
    /// [`Outcome::Forward`] when the zone has forwarders.
    pub fn answer(&self, req: &[u8], rotate: usize, stats: &DnsStats) -> Outcome {
        self.answer_within(req, rotate, stats, true, false)
    }

    /// The same for a query that came over TCP: the answer is never
    /// truncated (up to the 64 KiB a TCP message can hold).
    pub fn answer_tcp(&self, req: &[u8], rotate: usize, stats: &DnsStats) -> Outcome {
        self.answer_within(req, rotate, stats, true, true)
    }

    fn answer_within(
        &self,
        req: &[u8],
        rotate: usize,
        stats: &DnsStats,
        forwarding: bool,
        tcp: bool,
    ) -> Outcome {
        stats.queries.fetch_add(1, Relaxed);
        let reply = |b: Result<Vec<u8>, _>| b.map_or(Outcome::Nothing, Outcome::Reply);
        let msg = match Message::from_vec(req) {
            Ok(m) => m,
            Err(_) => {
                stats.malformed.fetch_add(1, Relaxed);
                let Some(h) = req.get(..12).and_then(|b| Header::from_bytes(b).ok()) else {
                    return Outcome::Nothing;
                };
                if h.message_type() != MessageType::Query {
                    return Outcome::Nothing;
                }
                return reply(
                    Message::error_msg(h.id(), h.op_code(), ResponseCode::FormErr).to_vec(),
                );
            }
        };
        if msg.message_type() != MessageType::Query {
            stats.malformed.fetch_add(1, Relaxed);
            return Outcome::Nothing;
        }
        if msg.op_code() != OpCode::Query {
            return reply(
                Message::error_msg(msg.id(), msg.op_code(), ResponseCode::NotImp).to_vec(),
            );
        }
        let [q] = msg.queries() else {
            stats.malformed.fetch_add(1, Relaxed);
            return reply(
                Message::error_msg(msg.id(), msg.op_code(), ResponseCode::FormErr).to_vec(),
            );
        };
        let found = self.resolve(&q.name().to_ascii(), q.query_type());
        if found == Answer::Refused && forwarding && !self.forward.is_empty() {
            return Outcome::Forward(self.forward.clone());
        }
        let mut out = Message::new();
        out.set_id(msg.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(msg.recursion_desired())
            .set_recursion_available(false)
            .add_query(Query::query(q.name().clone(), q.query_type()));
        let limit = match msg.extensions() {
            Some(e) => {
                let mut edns = Edns::new();
                edns.set_max_payload(EDNS_UDP);
                out.set_edns(edns);
                e.max_payload().clamp(PLAIN_UDP as u16, EDNS_UDP) as usize
            }
            None => PLAIN_UDP,
        };
        let limit = if tcp { usize::from(u16::MAX) } else { limit };
        let mut answers = Vec::new();
        match found {
            Answer::Addrs(mut ips, ttl) => {
                if !ips.is_empty() {
                    let n = rotate % ips.len();
                    ips.rotate_left(n);
                }
                out.set_authoritative(true);
                answers = ips
                    .into_iter()
                    .map(|ip| Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))))
                    .collect();
                stats.answered.fetch_add(1, Relaxed);
            }
            Answer::NoData => {
                out.set_authoritative(true);
                stats.answered.fetch_add(1, Relaxed);
            }
            Answer::NxDomain => {
                out.set_authoritative(true)
                    .set_response_code(ResponseCode::NXDomain);
                stats.nxdomain.fetch_add(1, Relaxed);
            }
            Answer::Refused => {
                out.set_response_code(ResponseCode::Refused);
                stats.refused.fetch_add(1, Relaxed);
            }
        }
        // Too many tasks for one datagram: send what fits, flagged truncated.
        let mut keep = answers.len();
        loop {
            let mut m = out.clone();
            m.add_answers(answers[..keep].iter().cloned());
            if keep < answers.len() {
                m.set_truncated(true);
            }
            match m.to_vec() {
                Ok(bytes) if bytes.len() <= limit || keep == 0 => return Outcome::Reply(bytes),
                Ok(_) => keep = keep.saturating_sub(1 + (keep / 8)),
                Err(_) => return reply(servfail(msg.id())),
            }
        }
    }
}

fn servfail(id: u16) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    Message::error_msg(id, OpCode::Query, ResponseCode::ServFail).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::balance::Algorithm;
    use crate::mesh::health::State;
    use crate::mesh::spec::{EndpointMode, HealthSpec, Mode, ServiceSpec};
    use hickory_proto::rr::Name;
    use std::time::{Duration, Instant};

    fn spec(name: &str, mode: EndpointMode, vip: Option<Ipv4Addr>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            network: "front".into(),
            tasks: Vec::new(),
            ports: Vec::new(),
            balance: Algorithm::RoundRobin,
            health: HealthSpec::default(),
            mode: Mode::Ingress,
            proxy_protocol: false,
            drain: Duration::from_secs(1),
            slow_start: Duration::ZERO,
            idle_timeout: Duration::from_secs(1),
            udp_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            endpoint_mode: mode,
            vip,
            max_connections: 0,
            max_sessions: 0,
            limits: Default::default(),
        }
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 9, n)
    }

    /// `web` (VIP .200, tasks .2 .3), `db` (dnsrr, tasks .4 .5), endpoint
    /// `web-1` at .2.
    fn zone() -> (Zone, Arc<Service>) {
        let web = Arc::new(Service::new(
            spec("web", EndpointMode::Vip, Some(ip(200))),
            &[ip(2), ip(3)],
        ));
        let db = Arc::new(Service::new(
            spec("db", EndpointMode::Dnsrr, None),
            &[ip(5), ip(4)],
        ));
        let zs = ZoneSpec {
            network: "front".into(),
            addr: ip(254),
            domain: "vxmesh".into(),
            services: vec![
                ("web".into(), Some(ip(200))),
                ("db".into(), None),
                ("gone".into(), None),
            ],
            endpoints: vec![("web-1".into(), ip(2))],
            forward: Vec::new(),
            clients: (Ipv4Addr::new(10, 0, 9, 0), 24),
            forward_qps: 0,
        };
        let (w, d) = (web.clone(), db.clone());
        let z = Zone::new(&zs, move |n| match n {
            "web" => Some(w.clone()),
            "db" => Some(d.clone()),
            _ => None,
        });
        (z, web)
    }

    #[test]
    fn names_resolve() {
        let (z, _) = zone();
        let a = RecordType::A;
        assert_eq!(z.resolve("web", a), Answer::Addrs(vec![ip(200)], VIP_TTL));
        assert_eq!(
            z.resolve("WEB.vxmesh.", a),
            Answer::Addrs(vec![ip(200)], VIP_TTL)
        );
        assert_eq!(
            z.resolve("tasks.web", a),
            Answer::Addrs(vec![ip(2), ip(3)], TASK_TTL)
        );
        assert_eq!(
            z.resolve("db.vxmesh", a),
            Answer::Addrs(vec![ip(4), ip(5)], TASK_TTL)
        );
        assert_eq!(z.resolve("web-1", a), Answer::Addrs(vec![ip(2)], TASK_TTL));
        assert_eq!(z.resolve("web", RecordType::AAAA), Answer::NoData);
        assert_eq!(z.resolve("gone", a), Answer::NxDomain);
        assert_eq!(z.resolve("tasks.nope", a), Answer::NxDomain);
        assert_eq!(z.resolve("x.y.vxmesh", a), Answer::NxDomain);
        assert_eq!(z.resolve("example.com", a), Answer::Refused);
    }

    #[test]
    fn a_down_task_leaves_the_answers() {
        let (z, web) = zone();
        let t3 = web.tasks.lock().unwrap()[1].clone();
        let now = Instant::now();
        let mut tr = None;
        for _ in 0..2 {
            tr = tr.or(t3.health.lock().unwrap().observe_probe(false, now));
        }
        web.transition(&t3, tr.expect("down after fall probes"));
        assert_eq!(t3.state(), State::Down);
        assert_eq!(
            z.resolve("tasks.web", RecordType::A),
            Answer::Addrs(vec![ip(2)], TASK_TTL)
        );
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn wire_answers() {
        let (z, _) = zone();
        let st = DnsStats::default();
        let r = Message::from_vec(
            &z.respond(&query("tasks.web.", RecordType::A), 1, &st)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.id(), 0x1234);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        let ips: Vec<_> = r
            .answers()
            .iter()
            .map(|a| match a.data() {
                RData::A(A(ip)) => *ip,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ips, vec![ip(3), ip(2)], "rotated by one");
        assert_eq!(r.answers()[0].ttl(), TASK_TTL);
        let r =
            Message::from_vec(&z.respond(&query("nope.", RecordType::A), 0, &st).unwrap()).unwrap();
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        let r = Message::from_vec(
            &z.respond(&query("example.com.", RecordType::A), 0, &st)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert_eq!(st.nxdomain.load(Relaxed), 1);
        assert_eq!(st.refused.load(Relaxed), 1);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let (z, _) = zone();
        let st = DnsStats::default();
        assert_eq!(z.respond(&[], 0, &st), None);
        assert_eq!(z.respond(&[1, 2, 3], 0, &st), None);
        // A header claiming one question, then garbage.
        let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        bad.extend_from_slice(&[0x3f, b'x', b'y']);
        let r = Message::from_vec(&z.respond(&bad, 0, &st).unwrap()).unwrap();
        assert_eq!(r.id(), 0xabcd);
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // A response is never answered (no reflection loops).
        let mut resp = query("web.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(z.respond(&resp, 0, &st), None);
        assert!(st.malformed.load(Relaxed) >= 3);
    }

    /// A zone with one dnsrr service `big` of `n` healthy tasks.
    fn big_zone(n: u8) -> Zone {
        let tasks: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        let s = Arc::new(Service::new(spec("big", EndpointMode::Dnsrr, None), &tasks));
        let zs = ZoneSpec {
            network: "front".into(),
            addr: ip(254),
            domain: "vxmesh".into(),
            services: vec![("big".into(), None)],
            endpoints: Vec::new(),
            forward: Vec::new(),
            clients: (Ipv4Addr::new(10, 0, 9, 0), 24),
            forward_qps: 0,
        };
        Zone::new(&zs, |_| Some(s.clone()))
    }

    #[test]
    fn a_long_task_list_is_truncated_to_fit() {
        let z = big_zone(100);
        let bytes = z
            .respond(&query("big.", RecordType::A), 0, &DnsStats::default())
            .unwrap();
        assert!(bytes.len() <= PLAIN_UDP);
        let r = Message::from_vec(&bytes).unwrap();
        assert!(r.truncated());
        assert!(!r.answers().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let (z, _) = zone();
            let _ = z.respond(&bytes, 0, &DnsStats::default());
        }
    }

    #[test]
    fn an_answer_over_tcp_is_never_truncated() {
        let z = big_zone(200);
        let st = DnsStats::default();
        let q = query("big.", RecordType::A);
        let Outcome::Reply(udp) = z.answer(&q, 0, &st) else {
            panic!("no UDP answer")
        };
        let Outcome::Reply(tcp) = z.answer_tcp(&q, 0, &st) else {
            panic!("no TCP answer")
        };
        let (udp, tcp) = (
            Message::from_vec(&udp).unwrap(),
            Message::from_vec(&tcp).unwrap(),
        );
        assert!(udp.truncated() && udp.answers().len() < 200);
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 200);
    }

    fn forwarding_zone(forward: Vec<SocketAddr>) -> Zone {
        let zs = ZoneSpec {
            network: "front".into(),
            addr: ip(254),
            domain: "vxmesh".into(),
            services: Vec::new(),
            endpoints: vec![("web-1".into(), ip(2))],
            forward,
            clients: (Ipv4Addr::new(10, 0, 9, 0), 24),
            forward_qps: 0,
        };
        Zone::new(&zs, |_| None)
    }

    #[test]
    fn only_names_outside_the_cluster_are_forwarded() {
        let up: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let z = forwarding_zone(vec![up]);
        let st = DnsStats::default();
        let ext = query("example.com.", RecordType::A);
        assert_eq!(z.answer(&ext, 0, &st), Outcome::Forward(vec![up].into()));
        // The cluster's own names, known or not, never leave the node.
        for name in ["web-1.", "nope.", "tasks.x.", "a.b.vxmesh."] {
            let Outcome::Reply(r) = z.answer(&query(name, RecordType::A), 0, &st) else {
                panic!("{name} was not answered here");
            };
            let code = Message::from_vec(&r).unwrap().response_code();
            assert_ne!(code, ResponseCode::Refused, "{name}");
        }
        // The pure path, and a zone without forwarders: REFUSED.
        let code = |r: Vec<u8>| Message::from_vec(&r).unwrap().response_code();
        assert_eq!(
            code(z.respond(&ext, 0, &st).unwrap()),
            ResponseCode::Refused
        );
        let bare = forwarding_zone(Vec::new());
        let Outcome::Reply(r) = bare.answer(&ext, 0, &st) else {
            panic!("forwarded without forwarders")
        };
        assert_eq!(code(r), ResponseCode::Refused);
    }
}
