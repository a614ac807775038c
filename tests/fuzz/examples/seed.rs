//! Regenerates the seed corpora in `tests/fuzz/corpus/<target>/` (run it
//! through `tests/fuzz/seed.sh`). Deterministic: the same files every run.
//!
//! Where the seeds come from:
//! - the frames the kernel's own vxlan device sent, captured by
//!   `dataplane/src/wire/testdata/capture-kernel-vxlan.sh` and kept in
//!   `vxmesh_dataplane::wire::vxlan::testdata` (outer IPv4 + UDP stripped:
//!   what the underlay socket hands vxmeshd);
//! - the PROXY v2 headers HAProxy sent, captured by
//!   `dataplane/src/wire/testdata/capture-haproxy-proxy-v2.sh`;
//! - `config/lab.toml` and variants of it with every optional key;
//! - synthetic frames (built with etherparse) for what no capture holds:
//!   TCP super-frames of a TSO sender, partial checksums (`CHECKSUM_PARTIAL`
//!   as Linux leaves them), 802.1Q tags, IPv6;
//! - for the offload targets (`gro`, `udp_gso`, `virtio_hdr`), the frames a
//!   TSO or USO sender and a TAP with `IFF_VNET_HDR` produce, built the
//!   same way, and TCP segments cut by vxmeshd's own `gso::segment_tcp`;
//! - for the admin API, the requests the `vxmesh` CLI sends (see
//!   `control/src/bin/vxmesh.rs`), each as a method byte, the target, a
//!   newline and the body.
//! - for the encrypted-network targets (`sealed_datagram`, `handshake`),
//!   the handshake messages and sealed datagrams of sessions made here, in
//!   memory, between the fuzz bodies' nodes (`bodies::crypto`, fixed node
//!   keys). Their ephemeral keys are random, so these seeds are the one
//!   exception: they differ on every run, and are written only into a
//!   corpus directory that is not there yet (remove it for new ones).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use etherparse::PacketBuilder;
use vxmesh_dataplane::crypto::wire::{DATA_OVERHEAD, INITIATION_LEN, RESPONSE_LEN};
use vxmesh_dataplane::offload::csum::{fold, sum};
use vxmesh_dataplane::offload::{gso, virtio};
use vxmesh_dataplane::wire::proxy_v2::{self, Transport};
use vxmesh_dataplane::wire::vxlan::{self, testdata};

// The fuzz bodies, for the nodes and sessions of the encrypted-network
// targets: the seeds are made with the very keys the bodies use.
#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

const MAC_H1: [u8; 6] = [0x02, 0x42, 10, 0, 9, 1];
const MAC_H2: [u8; 6] = [0x02, 0x42, 10, 0, 9, 2];
const IP_H1: [u8; 4] = [10, 0, 9, 1];
const IP_H2: [u8; 4] = [10, 0, 9, 2];
const IP6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const IP6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const VNI_FRONT: u32 = 4096;
const VNI_BACK: u32 = 4097;
const VNI_TINY: u32 = 4098;

/// The nodes of the encrypted-network bodies (and a stranger).
const IP_NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const IP_NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const IP_NODE3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// A VXLAN datagram from a kernel capture: outer IPv4 and UDP removed.
fn captured(datagram: &[u8]) -> Vec<u8> {
    datagram[testdata::OUTER_LEN..].to_vec()
}

/// The inner frame of a kernel capture.
fn captured_frame(datagram: &[u8]) -> Vec<u8> {
    captured(datagram)[vxlan::HEADER_LEN..].to_vec()
}

fn vxlan(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::HEADER_LEN];
    vxlan::write_header(&mut d, vni);
    d.extend_from_slice(frame);
    d
}

/// Bytes `0, 1, 2, ...` (mod 251, so no period lines up with a header).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn tcp_v4(vlan: bool, len: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_H2, MAC_H1);
    let tcp = |b: etherparse::PacketBuilderStep<etherparse::IpHeaders>| {
        b.tcp(40000, 5201, 1_000_000, 64240).ack(7).psh()
    };
    let b = if vlan {
        tcp(eth
            .single_vlan(0x123.try_into().expect("12-bit VLAN id"))
            .ipv4(IP_H2, IP_H1, 64))
    } else {
        tcp(eth.ipv4(IP_H2, IP_H1, 64))
    };
    let mut out = Vec::new();
    b.write(&mut out, &payload(len)).expect("frame builds");
    out
}

fn tcp_v6(len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_H2, MAC_H1)
        .ipv6(IP6_B, IP6_A, 64)
        .tcp(40000, 5201, 2_000_000, 64240)
        .ack(9)
        .fin();
    let mut out = Vec::new();
    b.write(&mut out, &payload(len)).expect("frame builds");
    out
}

fn udp_v4(len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_H2, MAC_H1)
        .ipv4(IP_H2, IP_H1, 64)
        .udp(5353, 53);
    let mut out = Vec::new();
    b.write(&mut out, &payload(len)).expect("frame builds");
    out
}

/// UDP over IPv4 or IPv6, with or without an 802.1Q tag.
fn udp_frame(vlan: bool, v6: bool, len: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_H2, MAC_H1);
    let mut out = Vec::new();
    let p = payload(len);
    match (vlan, v6) {
        (false, false) => return udp_v4(len),
        (false, true) => eth.ipv6(IP6_B, IP6_A, 64).udp(5353, 53).write(&mut out, &p),
        (true, false) => eth
            .single_vlan(0x123.try_into().expect("12-bit VLAN id"))
            .ipv4(IP_H2, IP_H1, 64)
            .udp(5353, 53)
            .write(&mut out, &p),
        (true, true) => eth
            .single_vlan(0x123.try_into().expect("12-bit VLAN id"))
            .ipv6(IP6_B, IP6_A, 64)
            .udp(5353, 53)
            .write(&mut out, &p),
    }
    .expect("frame builds");
    out
}

/// IPv6 UDP to a multicast group (all-nodes), flooded like neighbour
/// discovery.
fn udp_v6_multicast() -> Vec<u8> {
    let mut group = [0u8; 16];
    group[0] = 0xff;
    group[1] = 0x02;
    group[15] = 1;
    let b = PacketBuilder::ethernet2(MAC_H1, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(IP6_A, group, 255)
        .udp(546, 547);
    let mut out = Vec::new();
    b.write(&mut out, b"solicit").expect("frame builds");
    out
}

/// Leaves the TCP/UDP checksum as Linux does under `CHECKSUM_PARTIAL`:
/// the folded pseudo-header sum, not inverted.
fn partial(mut frame: Vec<u8>) -> Vec<u8> {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let (l4, proto, pseudo) = if frame[l3] >> 4 == 4 {
        let l4 = l3 + usize::from(frame[l3] & 0x0f) * 4;
        let proto = frame[l3 + 9];
        let len = frame.len() - l4;
        (
            l4,
            proto,
            sum(&frame[l3 + 12..l3 + 20], u32::from(proto) + len as u32),
        )
    } else {
        let l4 = l3 + 40;
        let proto = frame[l3 + 6];
        let len = frame.len() - l4;
        (
            l4,
            proto,
            sum(&frame[l3 + 8..l3 + 40], u32::from(proto) + len as u32),
        )
    };
    let field = l4 + if proto == 6 { 16 } else { 6 };
    frame[field..field + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
    frame
}

/// An ARP request frame: `sender` asks who has `target`.
fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC_H1);
    f.extend_from_slice(&[0x08, 0x06]);
    let body = etherparse::ArpEthIpv4Packet {
        operation: etherparse::ArpOperation::REQUEST,
        sender_mac: MAC_H1,
        sender_ipv4: sender,
        target_mac: [0; 6],
        target_ipv4: target,
    };
    f.extend_from_slice(&body.to_bytes());
    f
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `name hex` lines of HAProxy's captured headers.
fn haproxy_headers(file: &Path) -> Vec<(String, Vec<u8>)> {
    fs::read_to_string(file)
        .expect("captured PROXY v2 headers")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, h) = l.split_once(' ').expect("`name hex`");
            (name.to_string(), hex(h.trim()))
        })
        .collect()
}

/// The lab's file with every optional key of the README's reference and a
/// service as `tests/tests/mesh.rs` writes one.
const LAB_EXTRAS: &str = r#"
[[networks]]
name = "back"
vni = 4097
subnet = "10.0.10.0/24"
mtu = 1400
nodes = ["h3"]
learning = true
fdb_cap = 16
ageing_s = 60

[[endpoints]]
network = "back"
node = "h1"
ip = "10.0.10.1"
mac = "02:42:0a:00:0a:01"
name = "db-1"

[[services]]
name = "web"
network = "front"
tasks = ["10.0.9.2", "10.0.9.3"]
ports = [{ published = 8080, target = 80, protocol = "tcp" },
         { published = 5353, target = 53, protocol = "udp" }]
balance = "maglev"
health = { kind = "http", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2, path = "/health", status = 200 }
mode = "ingress"
proxy_protocol = "v2"
drain_ms = 1000
"#;

/// Errors on several lines: validation collects them all.
const LAB_ERRORS: &str = r#"
[[networks]]
name = "a-name-far-too-long"
vni = 0
subnet = "10.0.9.0/24"

[[endpoints]]
network = "nowhere"
node = "h9"
ip = "10.0.9.1"
mac = "01:00:5e:00:00:01"
"#;

/// What a TAP opened with `IFF_VNET_HDR` hands the reader: the virtio-net
/// header, then the frame.
fn tap_read(h: virtio::Header, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; virtio::LEN];
    assert!(h.emit(&mut v));
    v.extend_from_slice(frame);
    v
}

/// The header Linux puts on a TSO or USO super-frame: the checksum left
/// partial at `csum_offset` of the L4 header starting at `l4`.
fn gso_header(gso_type: u8, l4: u16, hdr_len: u16, mss: u16, csum_offset: u16) -> virtio::Header {
    virtio::Header {
        flags: virtio::F_NEEDS_CSUM,
        gso_type,
        hdr_len,
        gso_size: mss,
        csum_start: l4,
        csum_offset,
    }
}

/// The records of a `gro` input (`tests/fuzz/bodies/offload.rs`, `gro`):
/// a frame as it came ...
fn gro_raw(out: &mut Vec<u8>, frame: &[u8]) {
    out.push(0);
    out.extend_from_slice(&(frame.len() as u16).to_le_bytes());
    out.extend_from_slice(frame);
}

/// ... the frame after the previous one in its flow (`bits`: 0x04 same
/// sequence number or id, 0x08 PSH, 0x10 payload damaged, 0x20 IPv4 header
/// checksum damaged) ...
fn gro_next(out: &mut Vec<u8>, bits: u8, len: u16, fill: u8) {
    out.push(2 | bits);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(fill);
}

/// ... a frame whose lengths and checksums the body sets ...
fn gro_repaired(out: &mut Vec<u8>, frame: &[u8]) {
    out.push(1);
    out.extend_from_slice(&(frame.len() as u16).to_le_bytes());
    out.extend_from_slice(frame);
}

/// ... and the end of a wake-up, after which the TAP takes UDP GSO frames
/// or not.
fn gro_wakeup(out: &mut Vec<u8>, udp_runs: bool) {
    out.push(if udp_runs { 3 | 0x04 } else { 3 });
}

/// A TCP segment of an established flow: ACK only.
fn tcp_ack(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_H2, MAC_H1)
        .ipv4(IP_H2, IP_H1, 64)
        .tcp(40000, 5201, 1_000_000, 64240)
        .ack(7)
        .write(&mut out, &payload(len))
        .expect("frame builds");
    out
}

fn gro_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // A super-frame cut by vxmeshd's own segmenter, as a peer sends it.
    let mut cut = Vec::new();
    let mut scratch = vec![0u8; 2048];
    gso::segment_tcp(&tcp_v4(false, 4 * 900 + 300), 900, &mut scratch, |s| {
        gro_raw(&mut cut, s)
    })
    .expect("a TCP frame");

    // A long run: past the 64 KiB of one IPv4 packet, then a short one.
    let mut long = Vec::new();
    gro_raw(&mut long, &tcp_ack(1448));
    for i in 0..50 {
        gro_next(&mut long, 0, 1448, i);
    }
    gro_next(&mut long, 0x08, 100, 0);

    // PSH in the middle, a repeated sequence number, a short segment and
    // one after it, an end of wake-up.
    let mut edges = Vec::new();
    gro_raw(&mut edges, &tcp_ack(500));
    gro_next(&mut edges, 0, 500, 1);
    gro_next(&mut edges, 0x08, 500, 2);
    gro_next(&mut edges, 0x04, 500, 3);
    gro_next(&mut edges, 0, 200, 4);
    gro_next(&mut edges, 0, 500, 5);
    gro_wakeup(&mut edges, true);
    gro_next(&mut edges, 0, 500, 6);

    // Damaged on the way: the payload, then the IPv4 header checksum.
    let mut damaged = Vec::new();
    gro_raw(&mut damaged, &tcp_ack(300));
    gro_next(&mut damaged, 0, 300, 1);
    gro_next(&mut damaged, 0x10, 300, 2);
    gro_next(&mut damaged, 0, 300, 3);
    gro_next(&mut damaged, 0x20, 300, 4);
    gro_next(&mut damaged, 0, 300, 5);
    let mut udp_damaged = Vec::new();
    gro_raw(&mut udp_damaged, &udp_v4(64));
    gro_next(&mut udp_damaged, 0, 64, 1);
    gro_next(&mut udp_damaged, 0x20, 64, 2);
    gro_next(&mut udp_damaged, 0, 64, 3);
    gro_next(&mut udp_damaged, 0x10, 64, 4);

    // UDP: a run with a short end, the TAP refusing UDP GSO frames for a
    // while, then a run past the 64 datagrams of one frame.
    let mut udp = Vec::new();
    gro_raw(&mut udp, &udp_v4(64));
    for i in 0..9 {
        gro_next(&mut udp, 0, 64, i);
    }
    gro_next(&mut udp, 0, 40, 9);
    gro_wakeup(&mut udp, false);
    for i in 0..3 {
        gro_next(&mut udp, 0, 64, i);
    }
    gro_wakeup(&mut udp, true);
    for i in 0..70 {
        gro_next(&mut udp, 0, 32, i);
    }

    // Two flows and other traffic interleaved.
    let mut mixed = Vec::new();
    gro_raw(&mut mixed, &tcp_ack(600));
    gro_next(&mut mixed, 0, 600, 1);
    gro_raw(&mut mixed, &udp_v4(100));
    gro_next(&mut mixed, 0, 100, 2);
    gro_raw(&mut mixed, &captured_frame(testdata::KERNEL_ICMP_DATAGRAM));
    gro_raw(
        &mut mixed,
        &captured_frame(testdata::KERNEL_ARP_REQUEST_DATAGRAM),
    );
    gro_raw(&mut mixed, &tcp_v4(true, 300));
    gro_raw(&mut mixed, &tcp_v6(300));

    // IPv4 options (a 24-byte header) and TCP timestamps: the body sets
    // lengths and checksums, then the flow goes on.
    let mut opts = tcp_ack(700);
    opts.splice(34..34, [1, 1, 1, 0]);
    opts[14] = 0x46;
    opts.splice(54 + 4..54 + 4, [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    opts[58 - 20 + 12] = 0x80;
    let mut options = Vec::new();
    gro_repaired(&mut options, &opts);
    gro_next(&mut options, 0, 700, 1);
    gro_next(&mut options, 0, 700, 2);

    vec![
        ("tcp-tso-cut.bin", cut),
        ("tcp-past-64k.bin", long),
        ("tcp-psh-dup-short.bin", edges),
        ("tcp-damaged.bin", damaged),
        ("udp-damaged.bin", udp_damaged),
        ("udp-runs.bin", udp),
        ("mixed.bin", mixed),
        ("ip-and-tcp-options.bin", options),
    ]
}

fn virtio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let plain = virtio::Header::default();
    let csum = |start: u16, offset: u16| virtio::Header {
        flags: virtio::F_NEEDS_CSUM,
        csum_start: start,
        csum_offset: offset,
        ..plain
    };
    let tcp = partial(tcp_v4(false, 600));
    let beyond = tcp.len() as u16;
    vec![
        (
            "arp-request.bin",
            tap_read(
                plain,
                &captured_frame(testdata::KERNEL_ARP_REQUEST_DATAGRAM),
            ),
        ),
        ("tcp-partial.bin", tap_read(csum(34, 16), &tcp)),
        (
            "udp-partial.bin",
            tap_read(csum(34, 6), &partial(udp_v4(200))),
        ),
        (
            "csum-beyond-frame.bin",
            tap_read(csum(beyond - 1, 16), &tcp),
        ),
        ("csum-start-beyond.bin", tap_read(csum(beyond, 0), &tcp)),
        (
            "tso-v4.bin",
            tap_read(
                gso_header(virtio::GSO_TCPV4, 34, 54, 1398, 16),
                &partial(tcp_v4(false, 3 * 1398 + 77)),
            ),
        ),
        (
            "tso-v4-vlan-ecn.bin",
            tap_read(
                gso_header(virtio::GSO_TCPV4 | virtio::GSO_ECN, 38, 58, 700, 16),
                &partial(tcp_v4(true, 2000)),
            ),
        ),
        (
            "tso-v6.bin",
            tap_read(
                gso_header(virtio::GSO_TCPV6, 54, 74, 1378, 16),
                &partial(tcp_v6(3000)),
            ),
        ),
        (
            "uso-v4.bin",
            tap_read(
                gso_header(virtio::GSO_UDP_L4, 34, 42, 1400, 6),
                &partial(udp_v4(3000)),
            ),
        ),
        (
            "uso-v6.bin",
            tap_read(
                gso_header(virtio::GSO_UDP_L4, 54, 62, 512, 6),
                &partial(udp_frame(false, true, 1500)),
            ),
        ),
        (
            "ufo-refused.bin",
            tap_read(
                gso_header(virtio::GSO_UDP, 34, 42, 1400, 6),
                &partial(udp_v4(3000)),
            ),
        ),
        (
            "tso-mss-zero.bin",
            tap_read(gso_header(virtio::GSO_TCPV4, 34, 54, 0, 16), &tcp),
        ),
        ("header-only.bin", tap_read(plain, &[])),
        (
            "short-header.bin",
            vec![virtio::F_NEEDS_CSUM; virtio::LEN - 1],
        ),
    ]
}

fn udp_gso_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with_mss = |mss: u16, frame: Vec<u8>| {
        let mut v = mss.to_le_bytes().to_vec();
        v.extend(frame);
        v
    };
    let mut padded = udp_v4(100);
    padded.extend_from_slice(&[0; 20]);
    vec![
        ("v4-mss1400.bin", with_mss(1400, partial(udp_v4(3000)))),
        ("v4-run-mss64.bin", with_mss(64, udp_v4(9 * 64 + 40))),
        ("v6-mss512.bin", with_mss(512, udp_frame(false, true, 1500))),
        (
            "v4-vlan-mss300.bin",
            with_mss(300, udp_frame(true, false, 1000)),
        ),
        ("v6-vlan-mss1.bin", with_mss(1, udp_frame(true, true, 20))),
        ("one-segment.bin", with_mss(65535, udp_v4(700))),
        ("empty-payload.bin", with_mss(8, udp_v4(0))),
        ("padded.bin", with_mss(30, padded)),
        ("mss-zero.bin", with_mss(0, udp_v4(50))),
    ]
}

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.join("../..");
    let testdata_dir = root.join("dataplane/src/wire/testdata");
    let lab = fs::read_to_string(root.join("config/lab.toml")).expect("config/lab.toml");

    let icmp = captured(testdata::KERNEL_ICMP_DATAGRAM);
    let mut no_i_flag = icmp.clone();
    no_i_flag[0] = 0;
    let mut unknown_vni = icmp.clone();
    unknown_vni[4..7].copy_from_slice(&[0x00, 0x20, 0x00]);
    let arp_req = captured_frame(testdata::KERNEL_ARP_REQUEST_DATAGRAM);
    let mut arp_padded = arp_req.clone();
    arp_padded.resize(60, 0);

    let mut seeds: Vec<(&str, &str, Vec<u8>)> = vec![
        // overlay_datagram: VXLAN datagrams ...
        ("overlay_datagram", "kernel-icmp-echo.vxlan", icmp.clone()),
        (
            "overlay_datagram",
            "kernel-arp-request.vxlan",
            captured(testdata::KERNEL_ARP_REQUEST_DATAGRAM),
        ),
        (
            "overlay_datagram",
            "kernel-arp-reply.vxlan",
            captured(testdata::KERNEL_ARP_REPLY_DATAGRAM),
        ),
        ("overlay_datagram", "no-i-flag.vxlan", no_i_flag),
        ("overlay_datagram", "unknown-vni.vxlan", unknown_vni),
        (
            "overlay_datagram",
            "tcp-partial-csum.vxlan",
            vxlan(VNI_FRONT, &partial(tcp_v4(false, 100))),
        ),
        (
            "overlay_datagram",
            "udp-partial-csum.vxlan",
            vxlan(VNI_BACK, &partial(udp_v4(64))),
        ),
        (
            "overlay_datagram",
            "tcp-vlan.vxlan",
            vxlan(VNI_FRONT, &tcp_v4(true, 40)),
        ),
        (
            "overlay_datagram",
            "tcp-super-frame-mtu1450.vxlan",
            vxlan(VNI_FRONT, &partial(tcp_v4(false, 3000))),
        ),
        (
            "overlay_datagram",
            "tcp-super-frame-tiny.vxlan",
            vxlan(VNI_TINY, &tcp_v4(false, 200)),
        ),
        (
            "overlay_datagram",
            "tcp6-super-frame-tiny.vxlan",
            vxlan(VNI_TINY, &tcp_v6(150)),
        ),
        // ... and TAP frames.
        (
            "overlay_datagram",
            "kernel-icmp-echo.frame",
            captured_frame(testdata::KERNEL_ICMP_DATAGRAM),
        ),
        (
            "overlay_datagram",
            "kernel-arp-request.frame",
            arp_req.clone(),
        ),
        (
            "overlay_datagram",
            "udp6-multicast.frame",
            udp_v6_multicast(),
        ),
        // arp
        ("arp", "kernel-arp-request.frame", arp_req.clone()),
        ("arp", "kernel-arp-request-padded.frame", arp_padded),
        (
            "arp",
            "kernel-arp-reply.frame",
            captured_frame(testdata::KERNEL_ARP_REPLY_DATAGRAM),
        ),
        ("arp", "gratuitous.frame", arp_request(IP_H1, IP_H1)),
        ("arp", "probe.frame", arp_request([0; 4], IP_H2)),
        // config
        ("config", "lab.toml", lab.clone().into_bytes()),
        (
            "config",
            "lab-every-key.toml",
            format!("{lab}{LAB_EXTRAS}").into_bytes(),
        ),
        (
            "config",
            "lab-errors.toml",
            format!("{lab}{LAB_ERRORS}").into_bytes(),
        ),
    ];

    // proxy_v2: HAProxy's headers, one followed by the connection's bytes,
    // and the kinds no capture holds.
    let captured_proxy = haproxy_headers(&testdata_dir.join("haproxy-proxy-v2.txt"));
    let mut proxy: Vec<(String, Vec<u8>)> = captured_proxy
        .iter()
        .map(|(n, b)| (format!("haproxy-{n}.bin"), b.clone()))
        .collect();
    let (_, v4) = captured_proxy
        .iter()
        .find(|(n, _)| n == "v4")
        .expect("a v4 header");
    let mut with_data = v4.clone();
    with_data.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    proxy.push(("haproxy-v4-then-request.bin".into(), with_data));
    let (buf, len) = proxy_v2::encode(
        "10.0.9.7:5353".parse().expect("address"),
        "198.18.0.1:53".parse().expect("address"),
        Transport::Dgram,
    );
    proxy.push(("emitted-v4-dgram.bin".into(), buf[..len].to_vec()));
    let mut unix = v4[..12].to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0x00, 0xd8]);
    unix.extend_from_slice(&[0u8; 216]);
    proxy.push(("unix-stream.bin".into(), unix));
    proxy.push((
        "v1-text.bin".into(),
        b"PROXY TCP4 10.0.9.7 198.18.0.1 40000 80\r\n".to_vec(),
    ));

    // csum_gso: an MSS byte, then a frame.
    let with_mss = |mss: u8, frame: Vec<u8>| {
        let mut v = vec![mss];
        v.extend(frame);
        v
    };
    seeds.extend([
        (
            "csum_gso",
            "tcp-partial-mss100.bin",
            with_mss(100, partial(tcp_v4(false, 450))),
        ),
        (
            "csum_gso",
            "tcp-vlan-mss64.bin",
            with_mss(64, tcp_v4(true, 200)),
        ),
        (
            "csum_gso",
            "tcp6-partial-mss200.bin",
            with_mss(200, partial(tcp_v6(700))),
        ),
        (
            "csum_gso",
            "udp-partial.bin",
            with_mss(1, partial(udp_v4(33))),
        ),
        (
            "csum_gso",
            "kernel-icmp-echo.bin",
            with_mss(255, captured_frame(testdata::KERNEL_ICMP_DATAGRAM)),
        ),
    ]);

    // admin_api: method byte (0 GET, 1 POST, 2 PATCH, 3 DELETE; +8 with
    // `content-type: application/json`, as the CLI sends), target, body.
    let request = |method: u8, target: &str, body: &str| {
        let mut v = vec![method];
        v.extend_from_slice(target.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(body.as_bytes());
        v
    };
    for (name, bytes) in [
        ("get-status.bin", request(8, "/v1/status", "")),
        ("get-networks.bin", request(8, "/v1/networks", "")),
        ("get-nodes.bin", request(8, "/v1/nodes", "")),
        ("get-fdb.bin", request(8, "/v1/fdb", "")),
        ("get-services.bin", request(8, "/v1/services", "")),
        ("get-metrics.bin", request(8, "/metrics", "")),
        ("get-unknown.bin", request(8, "/v2/anything?x=1", "")),
        (
            "network-create.bin",
            request(
                9,
                "/v1/networks",
                r#"{"name":"back","vni":4097,"subnet":"10.0.10.0/24","learning":true}"#,
            ),
        ),
        ("network-rm.bin", request(11, "/v1/networks/front", "")),
        (
            "endpoint-add.bin",
            request(
                9,
                "/v1/endpoints",
                r#"{"network":"front","ip":"10.0.9.4","node":"h3","name":"web-4"}"#,
            ),
        ),
        (
            "endpoint-rm.bin",
            request(11, "/v1/endpoints/front/10.0.9.2", ""),
        ),
        (
            "endpoint-rm-bad-ip.bin",
            request(11, "/v1/endpoints/front/10.0.9.300", ""),
        ),
        (
            "service-create.bin",
            request(
                9,
                "/v1/services",
                r#"{"name":"api","network":"front","tasks":["10.0.9.2"],"ports":[{"published":9090,"target":90,"protocol":"tcp"}],"balance":"least-conn","health":{"kind":"http","path":"/healthz","interval_ms":500}}"#,
            ),
        ),
        (
            "service-update.bin",
            request(
                10,
                "/v1/services/web",
                r#"{"tasks":["10.0.9.2"],"drain_ms":null}"#,
            ),
        ),
        ("service-rm.bin", request(11, "/v1/services/web", "")),
        ("post-not-json.bin", request(1, "/v1/networks", "name=back")),
        ("put-status.bin", request(12, "/v1/status", "{}")),
    ] {
        seeds.push(("admin_api", name, bytes));
    }

    // dns: queries as a stub resolver sends them (hickory builds them), an
    // EDNS one, a non-query opcode, and a response where a query belongs.
    for (name, bytes) in dns_seeds() {
        seeds.push(("dns", name, bytes));
    }

    for (target, list) in [
        ("gro", gro_seeds()),
        ("udp_gso", udp_gso_seeds()),
        ("virtio_hdr", virtio_seeds()),
    ] {
        for (name, bytes) in list {
            seeds.push((target, name, bytes));
        }
    }

    for target in [
        "overlay_datagram",
        "arp",
        "proxy_v2",
        "config",
        "csum_gso",
        "admin_api",
        "dns",
        "gro",
        "udp_gso",
        "virtio_hdr",
    ] {
        let dir = fuzz.join("corpus").join(target);
        // The seed directories hold nothing but seeds (`run.sh` grows its
        // corpus elsewhere), so they are rewritten whole.
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        fs::create_dir_all(&dir).expect("corpus directory");
    }
    let all = seeds
        .into_iter()
        .map(|(t, n, b)| (t.to_string(), n.to_string(), b))
        .chain(proxy.into_iter().map(|(n, b)| ("proxy_v2".into(), n, b)));
    let mut count = 0;
    for (target, name, bytes) in all {
        fs::write(fuzz.join("corpus").join(&target).join(&name), bytes).expect("write seed");
        count += 1;
    }
    // The encrypted-network targets: written only where there are none
    // yet, since they differ on every run (see the top of this file).
    for (target, list) in [
        ("sealed_datagram", sealed_seeds()),
        ("handshake", handshake_seeds()),
    ] {
        let dir = fuzz.join("corpus").join(target);
        if dir.exists() {
            println!(
                "kept the seeds in {} (remove it for new ones)",
                dir.display()
            );
            continue;
        }
        fs::create_dir_all(&dir).expect("corpus directory");
        for (name, bytes) in list {
            fs::write(dir.join(name), bytes).expect("write seed");
            count += 1;
        }
    }
    println!(
        "wrote {count} seeds under {}",
        fuzz.join("corpus").display()
    );
}

/// A frame of node 1's workload 10.0.9.1 for node 2's 10.0.9.2: `frame`
/// (built the other way round) with its Ethernet and IPv4 addresses
/// swapped, which leaves both checksums as they were (the sums do not
/// depend on the order of the words).
fn from_h1(mut frame: Vec<u8>) -> Vec<u8> {
    let (dst, src) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut src[..6]);
    if frame[12..14] == [0x08, 0x00] {
        let (a, b) = frame[26..34].split_at_mut(4);
        a.swap_with_slice(b);
    }
    frame
}

fn flipped(d: &[u8], at: usize, bit: u8) -> Vec<u8> {
    let mut d = d.to_vec();
    d[at] ^= bit;
    d
}

/// `sealed_datagram`: VXLAN datagrams from node 1 (the body seals each as
/// it is; these reach node 2's TAP), datagrams sealed by node 1 over a
/// session made here (in the fuzzer they find no session, but have the
/// layout), damaged copies of them, and an initiation (queued for the key
/// manager).
fn sealed_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pair = bodies::crypto::sealed_pair();
    let icmp = captured(testdata::KERNEL_ICMP_DATAGRAM);
    let arp = captured(testdata::KERNEL_ARP_REQUEST_DATAGRAM);
    let sealed_icmp = pair.seal(&icmp);
    let last = sealed_icmp.len() - 1;
    let keepalive = pair.seal(&[]);
    let (_, mut m1) = bodies::crypto::key_manager(1, 2);
    let mut out = Vec::new();
    m1.tick(Instant::now(), &mut out);
    let initiation = bodies::crypto::only(out, IP_NODE2, INITIATION_LEN, "an initiation");
    vec![
        ("kernel-icmp-echo.vxlan", icmp.clone()),
        ("kernel-arp-request.vxlan", arp.clone()),
        (
            "udp-partial-csum.vxlan",
            vxlan(VNI_FRONT, &from_h1(partial(udp_v4(64)))),
        ),
        (
            "tcp-super-frame-mtu1450.vxlan",
            vxlan(VNI_FRONT, &from_h1(partial(tcp_v4(false, 3000)))),
        ),
        (
            "tcp-super-frame-tiny.vxlan",
            vxlan(VNI_TINY, &from_h1(tcp_v4(false, 200))),
        ),
        // The source MAC of 10.0.9.2, which lives on node 2 itself.
        ("spoofed-mac.vxlan", vxlan(VNI_FRONT, &tcp_v4(false, 40))),
        ("unknown-vni.vxlan", vxlan(VNI_BACK, &from_h1(udp_v4(20)))),
        ("sealed-icmp.bin", sealed_icmp.clone()),
        ("sealed-arp.bin", pair.seal(&arp)),
        ("sealed-keepalive.bin", keepalive.clone()),
        ("sealed-truncated.bin", sealed_icmp[..last].to_vec()),
        ("sealed-header-only.bin", sealed_icmp[..16].to_vec()),
        ("sealed-reserved-set.bin", flipped(&sealed_icmp, 1, 0x01)),
        ("sealed-counter-flipped.bin", flipped(&sealed_icmp, 8, 0x01)),
        ("sealed-tag-flipped.bin", flipped(&sealed_icmp, last, 0x80)),
        (
            "keepalive-truncated.bin",
            keepalive[..DATA_OVERHEAD - 1].to_vec(),
        ),
        ("initiation.bin", initiation),
    ]
}

/// `handshake`: node 1's initiation to node 2 (a new node 2 accepts it),
/// node 1's response to an initiation of node 2's, and what must be
/// refused: damaged copies of both, an initiation with a stranger's key
/// from node 1's address, one for another node's key, a keepalive.
fn handshake_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use bodies::crypto::{key_manager, only, sealed_pair};
    let now = Instant::now();
    let initiation = |me: u8, peer: u8, to: Ipv4Addr| {
        let (_, mut m) = key_manager(me, peer);
        let mut out = Vec::new();
        m.tick(now, &mut out);
        only(out, to, INITIATION_LEN, "an initiation")
    };
    let init = initiation(1, 2, IP_NODE2);
    let init2 = initiation(2, 1, IP_NODE1);
    let (_, mut m1) = key_manager(1, 2);
    let mut out = Vec::new();
    m1.handshake(IP_NODE2, &init2, now, &mut out)
        .expect("node 1 answers node 2");
    let resp = only(out, IP_NODE2, RESPONSE_LEN, "node 1's response");
    vec![
        ("initiation.bin", init.clone()),
        ("initiation-other-index.bin", flipped(&init, 4, 0x01)),
        ("initiation-reserved-set.bin", flipped(&init, 2, 0x01)),
        (
            "initiation-ephemeral-flipped.bin",
            flipped(&init, 8 + 5, 0x01),
        ),
        (
            "initiation-static-flipped.bin",
            flipped(&init, 8 + 40, 0x01),
        ),
        (
            "initiation-payload-flipped.bin",
            flipped(&init, 8 + 90, 0x01),
        ),
        (
            "initiation-truncated.bin",
            init[..INITIATION_LEN - 1].to_vec(),
        ),
        ("initiation-extended.bin", [&init[..], &[0]].concat()),
        ("initiation-wrong-key.bin", initiation(3, 2, IP_NODE2)),
        ("initiation-for-node3.bin", initiation(1, 3, IP_NODE3)),
        ("response.bin", resp.clone()),
        ("response-reserved-set.bin", flipped(&resp, 1, 0x01)),
        (
            "response-ephemeral-flipped.bin",
            flipped(&resp, 12 + 3, 0x01),
        ),
        (
            "response-tag-flipped.bin",
            flipped(&resp, RESPONSE_LEN - 1, 0x01),
        ),
        ("response-truncated.bin", resp[..RESPONSE_LEN - 1].to_vec()),
        ("keepalive.bin", sealed_pair().seal(&[])),
    ]
}

fn dns_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use vxmesh_dataplane::mesh::dns::proto::op::{Edns, Message, MessageType, OpCode, Query};
    use vxmesh_dataplane::mesh::dns::proto::rr::{Name, RecordType};
    let query = |id: u16, name: &str, t: RecordType| {
        let mut m = Message::new();
        m.set_id(id)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).expect("a name"), t));
        m
    };
    let bytes = |m: &Message| m.to_vec().expect("a message encodes");
    let mut edns = query(5, "tasks.web.vxmesh.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    edns.set_edns(e);
    let mut notify = query(6, "web", RecordType::A);
    notify.set_op_code(OpCode::Notify);
    let mut response = query(7, "web", RecordType::A);
    response.set_message_type(MessageType::Response);
    vec![
        ("a-web.bin", bytes(&query(1, "web", RecordType::A))),
        (
            "a-tasks-web.bin",
            bytes(&query(2, "tasks.web", RecordType::A)),
        ),
        (
            "a-db-fqdn.bin",
            bytes(&query(3, "db.vxmesh.", RecordType::A)),
        ),
        ("aaaa-one.bin", bytes(&query(4, "one", RecordType::AAAA))),
        ("a-tasks-edns.bin", bytes(&edns)),
        (
            "a-outside.bin",
            bytes(&query(8, "example.com.", RecordType::A)),
        ),
        (
            "a-unknown.bin",
            bytes(&query(9, "nope.vxmesh.", RecordType::A)),
        ),
        ("notify.bin", bytes(&notify)),
        ("response.bin", bytes(&response)),
    ]
}
