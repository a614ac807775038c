//! End to end: service discovery on the overlay. Workloads are the host
//! namespaces themselves (as in mesh.rs): h1 runs no task and asks its own
//! node's DNS responder, tasks run on h2 and h3.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::backend::{self, get};
use common::{sample, Lab, FRONT_ONLY};
use vxmesh_dataplane::mesh::dns::proto::op::{Message, MessageType, Query, ResponseCode};
use vxmesh_dataplane::mesh::dns::proto::rr::rdata::A;
use vxmesh_dataplane::mesh::dns::proto::rr::{Name, RData, Record, RecordType};
use vxmesh_netns::require_root;

/// The default DNS addresses: each subnet's last usable address.
const FRONT_DNS: &str = "10.0.9.254";
const BACK_DNS: &str = "10.0.10.254";
/// `back`'s forwarder: a resolver on loopback in a node's namespace (only
/// h1 runs one; on h2 nothing listens there).
const FORWARDER: &str = "127.0.0.1:5399";
/// What the test resolver answers for any name.
const FORWARDED_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// A stand-in upstream resolver at [`FORWARDER`] in namespace `ns`: answers
/// A [`FORWARDED_A`] (TTL 77) to every query, for at most `queries`
/// queries or until it hears nothing for 10 s.
fn test_resolver(lab: &Lab, ns: &str, queries: usize) -> std::thread::JoinHandle<usize> {
    let sock = lab
        .tb
        .in_ns(ns, || {
            UdpSocket::bind(FORWARDER).expect("bind the test resolver")
        })
        .expect("in namespace");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut served = 0;
        while served < queries {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            let q = Message::from_vec(&buf[..n]).expect("a forwarded query is intact");
            let mut a = q.clone();
            a.set_message_type(MessageType::Response);
            a.add_answer(Record::from_rdata(
                q.queries()[0].name().clone(),
                77,
                RData::A(A(FORWARDED_A)),
            ));
            sock.send_to(&a.to_vec().unwrap(), from).unwrap();
            served += 1;
        }
        served
    })
}

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

fn config() -> String {
    // h1 and h2 are also on `back`, where `api` lives.
    let front = FRONT_ONLY.replace(
        "ip = \"10.0.9.2\"\n",
        "ip = \"10.0.9.2\"\nname = \"web-2\"\n",
    );
    format!(
        r#"{front}
[[networks]]
name = "back"
vni = 4097
subnet = "10.0.10.0/24"
dns_forward = ["{FORWARDER}"]

[[endpoints]]
network = "back"
node = "h1"
ip = "10.0.10.1"
[[endpoints]]
network = "back"
node = "h2"
ip = "10.0.10.2"

[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.2", "10.0.9.3"]
ports = [{{ published = 8080, target = 80, protocol = "tcp" }}]
balance = "round-robin"
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }}

[[services]]
name = "db"
network = "front"
endpoint_mode = "dnsrr"
tasks = ["10.0.9.2", "10.0.9.3"]
ports = [{{ published = 8081, target = 80, protocol = "tcp" }}]
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }}

[[services]]
name = "api"
network = "back"
vip = "10.0.10.100"
tasks = ["10.0.10.2"]
ports = [{{ published = 8082, target = 80, protocol = "tcp" }}]
"#
    )
}

/// Sends `bytes` to `dns:53` from namespace `ns`; the reply, if any came
/// within `wait`.
fn raw(lab: &Lab, ns: &str, dns: &str, bytes: Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    let to = SocketAddr::new(dns.parse::<Ipv4Addr>().unwrap().into(), 53);
    lab.tb
        .in_ns(ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(wait)).unwrap();
            s.send_to(&bytes, to).unwrap();
            let mut buf = [0u8; 1500];
            s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
        })
        .expect("in namespace")
}

/// A query for the A records of `name`, with ID `id`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Message::new();
    q.set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    q.to_vec().unwrap()
}

/// The answer code and sorted A records of `reply`, checked to answer `id`.
fn a_records(reply: &[u8], id: u16) -> (ResponseCode, Vec<Ipv4Addr>) {
    let m = Message::from_vec(reply).expect("a DNS message");
    assert_eq!(m.id(), id);
    let mut ips: Vec<Ipv4Addr> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    ips.sort();
    (m.response_code(), ips)
}

/// Asks `dns` from `host` for the A records of `name`.
fn resolve(lab: &Lab, host: &str, dns: &str, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    let reply = raw(
        lab,
        &lab.tb.ns(host),
        dns,
        a_query(7, name),
        Duration::from_secs(2),
    )
    .unwrap_or_else(|| panic!("no answer from {dns} for {name}"));
    a_records(&reply, 7)
}

/// Asks `dns` over TCP from `host`, each of `names` in turn on one
/// connection; the answer codes and A records, in order.
fn resolve_tcp(
    lab: &Lab,
    host: &str,
    dns: &str,
    names: &[&str],
) -> Vec<(ResponseCode, Vec<Ipv4Addr>)> {
    use std::io::{Read, Write};
    let to = SocketAddr::new(dns.parse::<Ipv4Addr>().unwrap().into(), 53);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    lab.tb
        .in_ns(&lab.tb.ns(host), move || {
            let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .expect("DNS over TCP accepts");
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            names
                .iter()
                .map(|name| {
                    let q = a_query(9, name);
                    let mut out = (q.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&q);
                    c.write_all(&out).unwrap();
                    let mut len = [0u8; 2];
                    c.read_exact(&mut len).expect("an answer over TCP");
                    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    c.read_exact(&mut m).unwrap();
                    a_records(&m, 9)
                })
                .collect()
        })
        .expect("in namespace")
}

/// Three daemons, tasks on h2 and h3, every task up on h1 after probes
/// that ran since the tasks listen.
fn dns_lab(tag: &str) -> (Lab, backend::Backend, backend::Backend) {
    let mut lab = Lab::new(tag, 3, &config());
    for h in ["h1", "h2", "h3"] {
        lab.start(h);
    }
    let b2 = backend::start(&lab.tb, &lab.tb.ns("h2"), "task2", ov(2), false);
    let b3 = backend::start(&lab.tb, &lab.tb.ns("h3"), "task3", ov(3), false);
    for svc in ["web", "db"] {
        let probes = |lab: &Lab| -> Vec<(String, u64, String)> {
            lab.cli_json("h1", &["service", "ps", svc])
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["addr"].as_str().unwrap().to_string(),
                        t["probe_duration"]["count"].as_u64().unwrap(),
                        t["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let start = probes(&lab);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = probes(&lab);
            if now.iter().all(|(a, c, st)| {
                let before = start.iter().find(|s| &s.0 == a).map(|s| s.1).unwrap_or(0);
                *c >= before + 2 && st == "up"
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "{svc} never settled: {now:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (lab, b2, b3)
}

fn who(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn a_service_name_resolves_to_a_vip_balanced_on_the_clients_node() {
    if !require_root() {
        return;
    }
    let (lab, _b2, mut b3) = dns_lab("dnsvip");
    let h1 = lab.tb.ns("h1");
    let (rc, vip) = resolve(&lab, "h1", FRONT_DNS, "web");
    assert_eq!(rc, ResponseCode::NoError);
    assert_eq!(vip.len(), 1, "one VIP: {vip:?}");
    let vip = vip[0];
    assert!(vip != ov(2) && vip != ov(3), "a VIP, not a task: {vip}");
    // The same name with the cluster domain, and from another node.
    assert_eq!(resolve(&lab, "h1", FRONT_DNS, "web.vxmesh.").1, vec![vip]);
    assert_eq!(resolve(&lab, "h3", FRONT_DNS, "web").1, vec![vip]);
    // h1 connects to VIP:target; both tasks serve, and h1's own mesh did
    // the balancing (its counters moved).
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let (body, _) = get(&lab.tb, &h1, SocketAddr::new(vip.into(), 80), "/").expect("served");
        seen.insert(who(&body));
    }
    assert_eq!(seen, HashSet::from(["task2".into(), "task3".into()]));
    let total: u64 = lab
        .cli_json("h1", &["service", "ps", "web"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["total"].as_u64().unwrap())
        .sum();
    assert!(
        total >= 6,
        "h1's mesh balanced the VIP connections: {total}"
    );
    // tasks.web lists both tasks, then only task2 once task3 dies.
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "tasks.web"),
        (ResponseCode::NoError, vec![ov(2), ov(3)])
    );
    let killed = Instant::now();
    b3.stop();
    loop {
        let (_, ips) = resolve(&lab, "h1", FRONT_DNS, "tasks.web");
        if ips == vec![ov(2)] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "task3 still answered: {ips:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone_after = killed.elapsed();
    // fall × interval + one timeout, plus one interval of slack for the probe phase.
    assert!(
        gone_after <= Duration::from_millis(2 * 200 + 100 + 200),
        "task3 left the answers after {gone_after:?}"
    );
    for _ in 0..4 {
        let (body, _) = get(&lab.tb, &h1, SocketAddr::new(vip.into(), 80), "/").expect("served");
        assert_eq!(who(&body), "task2");
    }
}

#[test]
fn names_are_scoped_dnsrr_answers_tasks_and_junk_is_survived() {
    if !require_root() {
        return;
    }
    let (lab, _b2, _b3) = dns_lab("dnsscope");
    // dnsrr: the name answers with the tasks themselves.
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "db"),
        (ResponseCode::NoError, vec![ov(2), ov(3)])
    );
    // An endpoint's name.
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "web-2"),
        (ResponseCode::NoError, vec![ov(2)])
    );
    // The same over TCP, two queries on one connection (where clients go
    // when a UDP answer is truncated).
    assert_eq!(
        resolve_tcp(&lab, "h3", FRONT_DNS, &["db", "nope"]),
        vec![
            (ResponseCode::NoError, vec![ov(2), ov(3)]),
            (ResponseCode::NXDomain, vec![]),
        ]
    );
    // `back`'s responder knows `api` (at its configured VIP) but not `web`.
    assert_eq!(
        resolve(&lab, "h1", BACK_DNS, "api"),
        (ResponseCode::NoError, vec![Ipv4Addr::new(10, 0, 10, 100)])
    );
    assert_eq!(
        resolve(&lab, "h1", BACK_DNS, "web").0,
        ResponseCode::NXDomain
    );
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "api").0,
        ResponseCode::NXDomain
    );
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "nope").0,
        ResponseCode::NXDomain
    );
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "example.com").0,
        ResponseCode::Refused
    );
    // `back` forwards other names: h1's resolver answers them through h1's
    // responder, unchanged (its TTL); the cluster's names never go there.
    let upstream = test_resolver(&lab, &lab.tb.ns("h1"), 2);
    assert_eq!(
        resolve(&lab, "h1", BACK_DNS, "example.com"),
        (ResponseCode::NoError, vec![FORWARDED_A])
    );
    assert_eq!(
        resolve(&lab, "h1", BACK_DNS, "nope").0,
        ResponseCode::NXDomain,
        "a cluster name is answered here, not forwarded"
    );
    // On h2 nothing listens at the forwarder's address: SERVFAIL, at once
    // (the refusal is seen, no 2 s wait; resolve() gives up after 2 s).
    assert_eq!(
        resolve(&lab, "h2", BACK_DNS, "example.org").0,
        ResponseCode::ServFail
    );
    assert_eq!(
        resolve(&lab, "h1", BACK_DNS, "example.net"),
        (ResponseCode::NoError, vec![FORWARDED_A])
    );
    assert_eq!(upstream.join().unwrap(), 2, "exactly the two outside names");
    // Junk: empty, short, a header with a broken question, a response, a
    // large random blob. Each gets FORMERR or nothing; the responder stays.
    let h1 = lab.tb.ns("h1");
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, b'x'],
        vec![0, 7, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    let mut x: u32 = 12345;
    junk.push(
        (0..1400)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect(),
    );
    for j in junk {
        if let Some(reply) = raw(&lab, &h1, FRONT_DNS, j, Duration::from_millis(300)) {
            let m = Message::from_vec(&reply).expect("replies are well formed");
            assert_eq!(m.response_code(), ResponseCode::FormErr);
        }
    }
    assert_eq!(
        resolve(&lab, "h1", FRONT_DNS, "db"),
        (ResponseCode::NoError, vec![ov(2), ov(3)]),
        "the responder still answers"
    );
    // The operator sees the same in /metrics, per network and result.
    let m = lab.scrape("h1");
    let front = |r: &str| {
        sample(
            &m,
            &format!("vxmesh_dns_responses_total{{network=\"front\",result=\"{r}\"}}"),
        )
    };
    assert!(front("answered") >= 3, "db twice, web-2");
    assert!(front("nxdomain") >= 2, "api, nope");
    assert!(front("refused") >= 1, "example.com");
    assert!(front("malformed") >= 4, "the junk");
    assert!(sample(&m, "vxmesh_dns_queries_total{network=\"front\"}") >= 10);
    let back = |r: &str| {
        sample(
            &m,
            &format!("vxmesh_dns_responses_total{{network=\"back\",result=\"{r}\"}}"),
        )
    };
    assert!(back("nxdomain") >= 2, "web and nope from back");
    assert_eq!(back("forwarded"), 2, "example.com and example.net");
    assert_eq!(back("refused"), 0);
    let h2 = lab.scrape("h2");
    let failed = "vxmesh_dns_responses_total{network=\"back\",result=\"forward_failed\"}";
    assert_eq!(sample(&h2, failed), 1, "example.org on h2");
}

#[test]
fn a_task_listening_on_every_address_shadows_the_vip_and_the_node_runs_on() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("dnsshd", 3, &config());
    // h2's task holds 0.0.0.0:80 (and :53) before h2's daemon starts: the
    // daemon cannot have VIP:80 (nor its DNS responder) on h2, and must
    // still come up.
    let _b2 = backend::start(
        &lab.tb,
        &lab.tb.ns("h2"),
        "task2",
        Ipv4Addr::UNSPECIFIED,
        false,
    );
    for h in ["h1", "h2", "h3"] {
        lab.start(h);
    }
    // h3's task binds its overlay address, which exists once h3's TAP does.
    let _b3 = backend::start(&lab.tb, &lab.tb.ns("h3"), "task3", ov(3), false);
    let log = std::fs::read_to_string(&lab.daemons[1].1.log).unwrap();
    assert!(
        log.contains("VIP listener unavailable on this node"),
        "h2 says why it has no VIP listener:\n{log}"
    );
    // The task's :53 on every address takes the responder's port too.
    assert!(
        log.contains("DNS responder unavailable on this node"),
        "h2 says why it has no DNS responder:\n{log}"
    );
    let (rc, vip) = resolve(&lab, "h1", FRONT_DNS, "web");
    assert_eq!(rc, ResponseCode::NoError);
    let vip = SocketAddr::new(vip[0].into(), 80);
    // On h2 the VIP reaches the local task directly; h1 still balances.
    let h2 = lab.tb.ns("h2");
    for _ in 0..3 {
        let (body, _) = get(&lab.tb, &h2, vip, "/").expect("served on h2");
        assert_eq!(who(&body), "task2");
    }
    let h1 = lab.tb.ns("h1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "h1 saw only {seen:?}");
        if let Ok((body, _)) = get(&lab.tb, &h1, vip, "/") {
            seen.insert(who(&body));
        }
    }
}
