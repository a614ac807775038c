//! What each fuzz target does with one input, in one place: the libFuzzer
//! targets (`fuzz_targets/*.rs`) and the crash replay in the normal test
//! suite (`tests/tests/fuzz_regressions.rs`) both import this file with
//! `#[path]`, so a replayed crash runs exactly the code that found it.
//!
//! Every body takes raw bytes and must not panic on any of them. Besides
//! "no panic", each checks what the code under test promises in its docs
//! (a parsed header emits and parses back the same, a completed checksum
//! is not completed twice, segments fit the MTU, ...): a failed `assert!`
//! here is a finding like a panic in the product.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body as HttpBody;
use axum::http::{header, Method, Request, StatusCode, Uri};
use serde_json::{json, Value};
use tower::ServiceExt;
use vxmesh_control::config;
use vxmesh_control::daemon::{self, Options};
use vxmesh_control::model::Node;
use vxmesh_control::reconcile::{dns_zones, mesh_desired};
use vxmesh_control::store::doc::{self, Doc, Snapshot, View};
use vxmesh_control::store::Store;
use vxmesh_dataplane::mesh::dns;
use vxmesh_dataplane::mesh::service::Service;
use vxmesh_dataplane::offload::csum::{self, L4Csum};
use vxmesh_dataplane::offload::gso;
use vxmesh_dataplane::overlay::{
    Core, EndpointEntry, GlobalStats, LearnedFdb, NetStats, NetworkTable, Tables, Verdict,
};
use vxmesh_dataplane::wire::{arp, proxy_v2, MacAddr};

// The offload paths, in files of their own: the USO and TSO cuts and TAP
// reads with a virtio-net header (`cut.rs`), GRO (`gro.rs`); and encrypted
// networks, sealed datagrams and handshake messages (`crypto.rs`).
#[path = "bodies/crypto.rs"]
pub mod crypto;
#[path = "bodies/cut.rs"]
mod cut;
#[path = "bodies/gro.rs"]
mod gro_runs;
pub use crypto::{handshake, sealed_datagram};
pub use cut::{udp_gso, virtio_hdr};
pub use gro_runs::gro;

/// What a target does with one input.
pub type Body = fn(&[u8]);

/// Every target: its name (the `[[bin]]` in `tests/fuzz/Cargo.toml` and
/// the directory under `corpus/`, `artifacts/` and `regressions/`) and
/// its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("overlay_datagram", overlay_datagram),
    ("dns", dns),
    ("arp", arp),
    ("proxy_v2", proxy_v2),
    ("config", config),
    ("csum_gso", csum_gso),
    ("admin_api", admin_api),
    ("plugin_requests", plugin_requests),
    ("gro", gro),
    ("udp_gso", udp_gso),
    ("virtio_hdr", virtio_hdr),
    ("sealed_datagram", sealed_datagram),
    ("handshake", handshake),
];

/// What the pipeline segments into (`dataplane/src/overlay/path.rs`).
const SEGMENT_BUF: usize = vxmesh_dataplane::overlay::path::BUF_LEN;

/// VNIs of the fixture's networks. `front` and `back` are what the lab
/// runs; `tiny` has the smallest IPv4 MTU so that short inputs already
/// reach TCP segmentation; `solo` has no peer at all.
pub const VNI_FRONT: u32 = 4096;
pub const VNI_BACK: u32 = 4097;
pub const VNI_TINY: u32 = 4098;
pub const VNI_SOLO: u32 = 4099;
/// The overlay MTU of `tiny`.
pub const TINY_MTU: u16 = 68;

fn underlay(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

fn endpoint(ip: [u8; 4], host: u8) -> EndpointEntry {
    let ip = Ipv4Addr::from(ip);
    EndpointEntry {
        ip,
        mac: MacAddr::from_ipv4(ip),
        vtep: underlay(host),
    }
}

/// One network of node h1 (198.18.0.1) with members `hosts` (h1 included
/// or not: `with_peers` drops the local node).
fn network(name: &str, vni: u32, mtu: u16, hosts: &[u8], eps: &[EndpointEntry]) -> NetworkTable {
    let local = underlay(1);
    let tap_mac = eps
        .iter()
        .find(|e| e.vtep == local)
        .map(|e| e.mac)
        .unwrap_or(MacAddr([0x02, 0x43, 198, 18, 0, 1]));
    NetworkTable::new(
        name,
        vni,
        mtu,
        tap_mac,
        Arc::new(NetStats::default()),
        // A small cap, so that the fuzzer reaches "learned FDB full".
        Arc::new(LearnedFdb::new(2, Duration::from_secs(300))),
    )
    .with_peers(local, hosts.iter().map(|h| underlay(*h)))
    .with_endpoints(local, eps)
}

/// The snapshot of node h1 in a three-node cluster, as the reconciler
/// would build it (the kernel-captured vectors are VNI 4096, 10.0.9.0/24,
/// underlay 198.18.0.0/24: they land in `front`).
pub fn fixture() -> Tables {
    let front = [
        endpoint([10, 0, 9, 1], 1),
        endpoint([10, 0, 9, 2], 2),
        endpoint([10, 0, 9, 3], 3),
    ];
    let back = [endpoint([10, 0, 10, 1], 1), endpoint([10, 0, 10, 2], 2)];
    let nets = vec![
        network("front", VNI_FRONT, 1450, &[1, 2, 3], &front).with_learning(true),
        network("back", VNI_BACK, 1450, &[1, 2], &back),
        network("tiny", VNI_TINY, TINY_MTU, &[1, 2], &[]).with_learning(true),
        network("solo", VNI_SOLO, 1450, &[1], &[]),
    ];
    Tables::new(underlay(1), nets, Arc::new(GlobalStats::default()))
}

/// Length of the Ethernet header the core assumes (one 802.1Q tag or none).
fn l3_offset(frame: &[u8]) -> usize {
    if frame.len() >= 18 && frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// The input as a VXLAN datagram from two member nodes (h2 is in every
/// network with peers, h3 only in `front`), then as a frame from the TAP of
/// every network (and of one index past the end), now and an hour later
/// (learned entries expired).
pub fn overlay_datagram(data: &[u8]) {
    let tables = fixture();
    let core = Core;
    let now = Instant::now();
    for src in [underlay(2), underlay(3)] {
        let mut datagram = data.to_vec();
        match core.handle_datagram(&tables, src, &mut datagram, now) {
            Verdict::Deliver { net, offset } => {
                let n = &tables.networks[net];
                assert!(n.is_peer(src), "delivered from a non-member of {}", n.name);
                let inner = &datagram[offset..];
                assert!(
                    inner.len() >= 14 && inner.len() - l3_offset(inner) <= usize::from(n.mtu),
                    "delivered a {}-byte frame into MTU {}",
                    inner.len(),
                    n.mtu
                );
            }
            Verdict::DeliverSegmented { net, offset, mss } => {
                let n = &tables.networks[net];
                assert!(n.is_peer(src), "delivered from a non-member of {}", n.name);
                let inner = &datagram[offset..];
                let l3 = l3_offset(inner);
                let mut seg = vec![0u8; SEGMENT_BUF];
                let cut = gso::segment_tcp(inner, mss, &mut seg, |s| {
                    assert!(
                        s.len() - l3 <= usize::from(n.mtu),
                        "a {}-byte segment does not fit MTU {}",
                        s.len(),
                        n.mtu
                    );
                });
                // The core only asks for a cut it checked it can make.
                assert!(cut.is_ok(), "segment_tcp after DeliverSegmented: {cut:?}");
            }
            Verdict::Drop(_) => {}
            v => panic!("a datagram must be delivered or dropped, not {v:?}"),
        }
    }
    let mut reply = [0u8; arp::REPLY_LEN];
    for net in 0..=tables.networks.len() {
        for at in [now, now + Duration::from_secs(3600)] {
            match core.handle_frame(&tables, net, data, &mut reply, at) {
                Verdict::Unicast { peer, .. } => {
                    let n = &tables.networks[net];
                    assert!(
                        n.is_peer(peer),
                        "unicast to {peer}, not a peer of {}",
                        n.name
                    );
                }
                Verdict::Flood { peers, .. } => {
                    assert!(!peers.is_empty(), "flood to nobody");
                    assert!(!peers.contains(&tables.local), "flood to itself");
                }
                Verdict::ArpReply { len } => {
                    assert_eq!(len, arp::REPLY_LEN);
                    assert_eq!(
                        arp::parse_request(&reply[..len]),
                        None,
                        "reply is a request"
                    );
                }
                Verdict::Drop(_) => {}
                v => panic!("a TAP frame must not be delivered: {v:?}"),
            }
        }
    }
}

/// ARP request recognition and the reply written for it.
pub fn arp(data: &[u8]) {
    let Some(req) = arp::parse_request(data) else {
        return;
    };
    assert!(
        !req.sender_ip.is_unspecified(),
        "answered an RFC 5227 probe"
    );
    assert_ne!(req.sender_ip, req.target_ip, "answered a gratuitous ARP");
    let answer = MacAddr([0x02, 0x42, 10, 0, 9, 3]);
    let mut short = [0u8; arp::REPLY_LEN - 1];
    assert_eq!(arp::write_reply(&req, answer, &mut short), 0);
    assert_eq!(
        short,
        [0u8; arp::REPLY_LEN - 1],
        "wrote into a short buffer"
    );
    let mut out = [0u8; arp::REPLY_LEN + 1];
    assert_eq!(arp::write_reply(&req, answer, &mut out), arp::REPLY_LEN);
    let reply = &mut out[..arp::REPLY_LEN];
    assert_eq!(arp::parse_request(reply), None, "a reply is not a request");
    assert_eq!(
        &reply[0..6],
        &req.sender_mac.0,
        "sent back to the requester"
    );
    // The reply with its opcode turned into "request" is the question
    // asked the other way round: every field is where it belongs.
    reply[20..22].copy_from_slice(&[0, 1]);
    let back = arp::parse_request(reply);
    if req.target_ip.is_unspecified() {
        assert_eq!(back, None);
    } else {
        assert_eq!(
            back,
            Some(arp::ArpRequest {
                sender_mac: answer,
                sender_ip: req.target_ip,
                target_ip: req.sender_ip,
            })
        );
    }
}

/// PROXY v2 parsing, what it promises about partial input, and the
/// emit -> parse round trip.
pub fn proxy_v2(data: &[u8]) {
    use proxy_v2::{encode, Command, Error, Header, Packet};
    let (header, len) = match Header::parse(data) {
        Ok(parsed) => parsed,
        Err(Error::Incomplete) => return,
        Err(e) => {
            // Rejected from its first wrong byte: more bytes change nothing.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0; 64]);
            assert_eq!(
                Header::parse(&longer),
                Err(e),
                "more bytes changed the error"
            );
            return;
        }
    };
    assert!(
        len >= proxy_v2::HEADER_LEN && len <= data.len(),
        "length {len}"
    );
    for k in 0..len {
        assert_eq!(
            Header::parse(&data[..k]),
            Err(Error::Incomplete),
            "the first {k} of {len} bytes"
        );
    }
    let packet = Packet::new_checked(data).expect("parsed, so it checks");
    assert_eq!(packet.header_len(), len);
    assert_eq!(packet.payload(), &data[len..]);
    assert!(packet.tlvs().len() <= len - proxy_v2::HEADER_LEN);

    let mut out = [0u8; proxy_v2::MAX_EMIT_LEN];
    let n = header
        .emit(&mut out)
        .expect("MAX_EMIT_LEN holds any header");
    assert_eq!(n, header.buffer_len());
    assert_eq!(Header::parse(&out[..n]), Ok((header, n)), "emit -> parse");
    assert_eq!(header.emit(&mut [0u8; 64][..n - 1]), Err(Error::NoRoom));
    if let (Command::Proxy, Some((src, dst))) = (header.command, header.addresses) {
        let (buf, elen) = encode(src, dst, header.transport);
        assert_eq!(&buf[..elen], &out[..n], "encode and emit differ");
    }
}

/// The cluster file: parse and validate; errors name a line or explain
/// themselves, and a file that validates survives the pure helpers every
/// node runs on it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(Path::new("fuzz.toml"), text) {
        Ok(cluster) => {
            for node in &cluster.nodes {
                let _ = mesh_desired(&cluster, &node.name);
                for net in cluster.networks_of(&node.name) {
                    let _ = cluster.tap_address(net, &node.name);
                    let _ = cluster.members(net);
                    let _ = net.tap_name();
                }
            }
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without errors");
            let lines = text.matches('\n').count() + 1;
            for e in &errs.0 {
                assert!(e.line > 0 || !e.reason.is_empty(), "an empty error: {e:?}");
                assert!(e.line <= lines, "line {} of {lines}: {e:?}", e.line);
                assert!(e.line == 0 || e.column > 0, "column 0: {e:?}");
                let _ = e.to_string();
            }
        }
    }
}

/// Checksum completion and TCP segmentation on their own: the first byte
/// is the MSS, the rest a frame.
pub fn csum_gso(data: &[u8]) {
    let Some((&mss, frame)) = data.split_first() else {
        return;
    };
    let mss = usize::from(mss);
    let mut f = frame.to_vec();
    match csum::complete_l4(&mut f) {
        L4Csum::Completed => {
            // The full sum verifies now: completing twice is a bug.
            let again = csum::complete_l4(&mut f);
            assert!(
                matches!(again, L4Csum::Valid | L4Csum::Unchecked),
                "completed, then {again:?}"
            );
        }
        other => assert_eq!(f, frame, "{other:?} but the frame changed"),
    }

    // Room for any segment: headers + MSS <= the frame + 255. (Smaller
    // than the worker's buffer, so that inputs run fast.)
    let mut scratch = vec![0u8; frame.len() + 256];
    let mut again = scratch.clone();
    let mut emitted = 0usize;
    let mut first_len = 0usize;
    let mut last_len = 0usize;
    let result = gso::segment_tcp(frame, mss, &mut scratch, |s| {
        assert!(s.len() <= frame.len(), "a segment longer than its frame");
        if emitted == 0 {
            first_len = s.len();
        } else {
            // Every segment but the last carries exactly `mss` bytes.
            assert_eq!(last_len, first_len, "segment {} is short", emitted - 1);
        }
        last_len = s.len();
        assert!(last_len <= first_len, "the last segment is the longest");
        // A segment is already cut: cutting it again gives it back as is
        // (lengths, ids, flags and both checksums were all consistent).
        let mut copies = 0;
        let redo = gso::segment_tcp(s, mss, &mut again, |t| {
            assert_eq!(t, s, "re-cutting a segment changed it");
            copies += 1;
        });
        assert_eq!(redo, Ok(1), "re-cutting a segment");
        assert_eq!(copies, 1);
        emitted += 1;
    });
    match result {
        Ok(n) => assert_eq!(n, emitted, "count returned"),
        Err(e) => {
            assert_eq!(emitted, 0, "emitted segments, then failed with {e:?}");
            if mss == 0 {
                assert_eq!(e, gso::Error::BadMss);
            }
        }
    }
}

/// The cluster the admin API fuzzer's daemon runs: its node `me` on
/// loopback (an ephemeral VXLAN port, one queue) is a member of no network,
/// so nothing needs root, no TAP is made and no packet leaves the process;
/// the network and its endpoints still fill `/v1/networks` and `/v1/nodes`.
const API_CLUSTER: &str = r#"
settings = { vxlan_port = 0, source_ports = 1, queues = 1 }
nodes = [{ name = "me", address = "127.0.0.1" }, { name = "h2", address = "198.18.0.2" }]
networks = [{ name = "front", vni = 4096, subnet = "10.0.9.0/24" }]
endpoints = [{ network = "front", node = "h2", ip = "10.0.9.2", name = "web-1" }]
"#;

/// The admin API over a daemon state built once per process (file store:
/// every write is refused as read-only), and the runtime its handlers run on.
fn api() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static API: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let path = PathBuf::from("fuzz-admin.toml");
        let cluster = config::parse(&path, API_CLUSTER).expect("the fuzz cluster is valid");
        let opts = Options::file(
            path.clone(),
            "me",
            PathBuf::from("/nonexistent/vxmeshd.sock"),
            std::env::temp_dir().join(format!("vxmesh-fuzz-{}", std::process::id())),
        );
        let state = rt
            .block_on(async { daemon::start(&opts, cluster, Store::File(path)) })
            .expect("the daemon state starts without root");
        let router = vxmesh_control::api::server::router(state);
        (rt, router)
    })
}

/// The resources `GET` must always serve (200, JSON).
const API_RESOURCES: &[&str] = &[
    "/v1/status",
    "/v1/networks",
    "/v1/nodes",
    "/v1/fdb",
    "/v1/services",
];

/// One admin API request: the first byte picks the method (low 3 bits) and
/// whether the body is declared JSON (bit 3); up to the first newline is
/// the request target, the rest the body. The router must answer every
/// request without a panic or a 5xx; the known resources answer `GET` with
/// 200 and JSON (`/metrics` with OpenMetrics text). A `POST` body also goes
/// through what the etcd store checks before it writes (`doc::assemble` of
/// the snapshot with the new document), which must not panic either, and
/// a document of one kind never brings in nodes or objects of another.
pub fn admin_api(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let method = [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::PUT,
        Method::HEAD,
        Method::OPTIONS,
        Method::GET,
    ][usize::from(sel & 7)]
    .clone();
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    // What hyper would refuse before the router sees it is out of scope.
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let path = uri.path().to_string();
    let mut req = Request::builder().method(method.clone()).uri(uri);
    if sel & 8 != 0 {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(HttpBody::from(body.to_vec()))
        .expect("method and URI are valid");
    let (rt, router) = api();
    let resp = rt
        .block_on(router.clone().oneshot(req))
        .expect("the router is infallible");
    let status = resp.status();
    let bytes = rt
        .block_on(axum::body::to_bytes(resp.into_body(), 64 << 20))
        .expect("the answer's body");
    assert!(
        !status.is_server_error(),
        "{method} {path} -> {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if method == Method::GET && API_RESOURCES.contains(&path.as_str()) {
        assert_eq!(status, StatusCode::OK, "GET {path}");
        serde_json::from_slice::<Value>(&bytes).expect("a resource is JSON");
    }
    if method == Method::GET && path == "/metrics" {
        assert_eq!(status, StatusCode::OK, "GET /metrics");
        assert!(bytes.ends_with(b"# EOF\n"), "OpenMetrics ends with # EOF");
    }
    if method == Method::POST {
        store_create(&path, body);
    }
}

/// What the etcd store does with a `POST` before it writes: the key from
/// the spec, then the snapshot with the new document assembled and
/// validated like a cluster file (`View::Declared`).
fn store_create(path: &str, body: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let field = |f: &str| spec.get(f).and_then(Value::as_str).map(str::to_string);
    let (kind, key) = match path {
        "/v1/networks" => ("networks", field("name").map(|n| doc::network_key(&n))),
        "/v1/services" => ("services", field("name").map(|n| doc::service_key(&n))),
        "/v1/endpoints" => (
            "endpoints",
            field("network")
                .zip(field("ip").and_then(|ip| ip.parse::<Ipv4Addr>().ok()))
                .map(|(net, ip)| doc::endpoint_key(&net, ip)),
        ),
        _ => return,
    };
    let Some(key) = key else {
        return;
    };
    let docs = [
        ("nodes/h2", json!({"name": "h2", "address": "198.18.0.2"})),
        (
            "networks/front",
            json!({"name": "front", "vni": 4096, "subnet": "10.0.9.0/24"}),
        ),
        (
            "endpoints/front/10.0.9.2",
            json!({"network": "front", "node": "h2", "ip": "10.0.9.2"}),
        ),
        (
            "services/web",
            json!({"name": "web", "network": "front", "tasks": ["10.0.9.2"],
                   "ports": [{"published": 8080, "target": 80}]}),
        ),
    ];
    let mut snap = Snapshot {
        docs: docs
            .iter()
            .map(|(k, v)| (k.to_string(), Doc::new(v.clone())))
            .collect(),
        revision: 1,
        ..Snapshot::default()
    };
    if snap.docs.contains_key(&key) {
        return; // 409 Conflict, before any validation
    }
    snap.docs.insert(key, Doc::new(spec.clone()));
    let me = Node {
        name: "h1".into(),
        address: Ipv4Addr::new(198, 18, 0, 1),
        public_key: None,
    };
    let Ok((cluster, _)) = doc::assemble(&snap, &me, View::Declared, "fuzz") else {
        return;
    };
    // h1, h2, and for an endpoint its owner (a placeholder when unknown).
    let nodes = cluster.nodes.len();
    let (networks, services) = (cluster.networks.len(), cluster.services.len());
    let fits = match kind {
        "networks" => nodes == 2 && networks <= 2 && services == 1,
        "services" => nodes == 2 && networks == 1 && services <= 2,
        _ => nodes <= 3 && networks == 1 && services == 1,
    };
    assert!(
        fits,
        "a {kind} document made {nodes} nodes, {networks} networks, {services} services"
    );
    assert!(
        cluster.nodes.iter().all(|n| n.name == "h1"
            || n.name == "h2"
            || (kind == "endpoints" && Some(&n.name) == field("node").as_ref())),
        "a {kind} document brought in node(s) {:?}",
        cluster.nodes
    );
}

/// The names a node serves, built the way the daemon builds them: a
/// cluster file through `dns_zones` and `mesh_desired`, a `vip` service,
/// a `dnsrr` one and named endpoints.
const DNS_CLUSTER: &str = include_str!("../../config/fixtures/dns.toml");

fn dns_zone() -> &'static (dns::Zone, dns::DnsStats) {
    static ZONE: OnceLock<(dns::Zone, dns::DnsStats)> = OnceLock::new();
    ZONE.get_or_init(|| {
        let cluster = config::parse(Path::new("dns.toml"), DNS_CLUSTER).expect("valid cluster");
        let services: Vec<Arc<Service>> = mesh_desired(&cluster, "h1")
            .into_iter()
            .map(|d| Arc::new(Service::new(d.spec, &d.tasks)))
            .collect();
        let spec = dns_zones(&cluster, "h1").pop().expect("front's zone");
        let zone = dns::Zone::new(&spec, |name| {
            services
                .iter()
                .find(|s| s.spec.load().name == name)
                .cloned()
        });
        (zone, dns::DnsStats::default())
    })
}

/// One datagram to a network's DNS responder: whatever it sends back is a
/// well-formed response to the same ID that fits a plain or EDNS UDP
/// answer, and every datagram is counted once by what became of it. The
/// same bytes as a TCP message get the same kind of answer, never
/// truncated, and nothing is ever forwarded (the zone has no forwarders).
pub fn dns(data: &[u8]) {
    use std::sync::atomic::Ordering::Relaxed;
    use vxmesh_dataplane::mesh::dns::proto::op::{Message, MessageType};
    use vxmesh_dataplane::mesh::dns::Outcome;
    let (zone, stats) = dns_zone();
    let before = stats.queries.load(Relaxed);
    let reply = zone.respond(data, data.len(), stats);
    assert!(stats.queries.load(Relaxed) > before, "not counted");
    let tcp = zone.answer_tcp(data, data.len(), stats);
    assert!(
        !matches!(tcp, Outcome::Forward(_)),
        "no forwarders, nothing forwarded"
    );
    let Some(reply) = reply else {
        assert_eq!(tcp, Outcome::Nothing, "TCP answers what UDP answers");
        return;
    };
    assert!(reply.len() <= 1232, "a reply of {} bytes", reply.len());
    let same_id = u16::from_be_bytes([data[0], data[1]]);
    let m = Message::from_vec(&reply).expect("every reply parses");
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.id(), same_id, "same ID");
    let Outcome::Reply(tcp) = tcp else {
        panic!("UDP answered, TCP did not");
    };
    let t = Message::from_vec(&tcp).expect("every TCP reply parses");
    assert_eq!((t.id(), t.response_code()), (same_id, m.response_code()));
    assert!(!t.truncated(), "a TCP answer is never truncated");
    assert!(t.answers().len() >= m.answers().len());
}

/// The container runtimes' requests: the first byte picks a Docker plugin
/// call (`attach::docker::METHODS`, past their count: the CNI
/// configuration), the rest is its body; for CNI the body's first line is
/// `CNI_ARGS`. Decoding never panics, whatever arrives.
pub fn plugin_requests(data: &[u8]) {
    use vxmesh_control::attach::docker;
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let methods = docker::METHODS;
    match methods.get(usize::from(pick)) {
        Some(m) => {
            let _ = docker::decode(m, body);
        }
        None => {
            let split = body.iter().position(|b| *b == b'\n').unwrap_or(0);
            let args = String::from_utf8_lossy(&body[..split]).into_owned();
            let conf = body.get(split + 1..).unwrap_or_default();
            let _ = vxmesh_control::cni::decode(conf, &args);
        }
    }
}
