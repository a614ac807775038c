//! Interop with the Linux kernel's own vxlan device: h3 runs `ip link add
//! ... type vxlan` (nolearning, static forwarding entries) instead of
//! vxmeshd, and is an equal member of the overlay.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{Lab, FRONT_ONLY};
use vxmesh_netns::{icmp_ping, iperf3_tcp, require_root};

fn ov(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, n)
}

/// The kernel's vxlan device on `host`, set up like vxmeshd would set up
/// its TAP (same name, MAC rule, MTU, address) with static entries for the
/// other members.
fn kernel_vxlan(lab: &Lab, host: &str, me: u8, others: &[u8]) {
    let ns = lab.tb.ns(host);
    let sh = |args: &[&str]| {
        lab.tb
            .exec(&ns, args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    };
    let local = format!("198.18.0.{me}");
    sh(&[
        "ip",
        "link",
        "add",
        "vxm-front",
        "type",
        "vxlan",
        "id",
        "4096",
        "dstport",
        "4789",
        "local",
        &local,
        "dev",
        "eth0",
        "nolearning",
    ]);
    let mac = format!("02:42:0a:00:09:{me:02x}");
    sh(&[
        "ip",
        "link",
        "set",
        "vxm-front",
        "address",
        &mac,
        "mtu",
        "1450",
        "up",
    ]);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("10.0.9.{me}/24"),
        "dev",
        "vxm-front",
    ]);
    for o in others {
        let dst = format!("198.18.0.{o}");
        sh(&[
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vxm-front",
            "dst",
            &dst,
        ]);
        let omac = format!("02:42:0a:00:09:{o:02x}");
        sh(&[
            "bridge",
            "fdb",
            "add",
            &omac,
            "dev",
            "vxm-front",
            "dst",
            &dst,
        ]);
    }
}

fn start_mixed(tag: &str) -> Lab {
    start_mixed_with(tag, FRONT_ONLY)
}

fn start_mixed_with(tag: &str, config: &str) -> Lab {
    let mut lab = Lab::new(tag, 3, config);
    lab.start("h1");
    lab.start("h2");
    kernel_vxlan(&lab, "h3", 3, &[1, 2]);
    lab
}

#[test]
fn kernel_vxlan_host_is_an_equal_member() {
    if !require_root() {
        return;
    }
    let mut lab = start_mixed("kvx");
    for (from, dst) in [("h1", ov(3)), ("h3", ov(1)), ("h2", ov(3)), ("h3", ov(2))] {
        let p = icmp_ping(
            &lab.tb,
            &lab.tb.ns(from),
            dst,
            5,
            Duration::from_millis(20),
            Duration::from_secs(5),
        )
        .expect("ping runs");
        assert_eq!(p.received, p.sent, "{from} -> {dst}");
    }
    let (h1, h3) = (lab.tb.ns("h1"), lab.tb.ns("h3"));
    let to_kernel = iperf3_tcp(&mut lab.tb, &h3, &h1, ov(3), 5401, 2, 1).expect("iperf3 h1->h3");
    let from_kernel = iperf3_tcp(&mut lab.tb, &h1, &h3, ov(1), 5402, 2, 1).expect("iperf3 h3->h1");
    assert!(
        to_kernel > 0.01 && from_kernel > 0.01,
        "{to_kernel} / {from_kernel} Gbit/s"
    );
}

/// Captures, on h2's underlay link, the first `n` VXLAN datagrams whose inner
/// ethertype is 0x88b5 (IEEE local experimental), as whole frames.
const CAPTURE: &str = r#"
import socket, sys, binascii
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
s.settimeout(10)
print("ready", flush=True)
got = 0
while got < int(sys.argv[1]):
    f = s.recv(65535)
    ip = f[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 17:
        continue
    udp = ip[ihl:]
    if int.from_bytes(udp[2:4], "big") != 4789 or udp[8 + 8 + 12:8 + 8 + 14] != b"\x88\xb5":
        continue
    print(binascii.hexlify(f).decode(), flush=True)
    got += 1
"#;

const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn vxmeshd_emits_what_the_kernel_emits() {
    if !require_root() {
        return;
    }
    let mut lab = start_mixed("kvxb");
    let h2 = lab.tb.ns("h2");
    let cap = lab
        .tb
        .spawn(&h2, &["python3", "-u", "-c", CAPTURE, "2"], &[])
        .expect("capture");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&cap.log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(
            Instant::now() < deadline,
            "capture never got ready: {}",
            cap.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The same inner frame, to h2's MAC, from h1 (vxmeshd) and h3 (kernel).
    let mut inner = Vec::new();
    inner.extend_from_slice(&[0x02, 0x42, 10, 0, 9, 2]);
    inner.extend_from_slice(&[0x02, 0x42, 10, 0, 9, 0x63]);
    inner.extend_from_slice(&[0x88, 0xb5]);
    inner.extend((0..100u8).map(|i| i.wrapping_mul(7)));
    for host in ["h1", "h3"] {
        lab.tb
            .exec(
                &lab.tb.ns(host),
                &["python3", "-c", SEND, "vxm-front", &hex(&inner)],
            )
            .expect("send the inner frame");
    }
    let status = lab.tb.wait_exit(&cap, Duration::from_secs(10));
    let log = std::fs::read_to_string(&cap.log).unwrap();
    assert!(status.is_some_and(|s| s.success()), "capture failed: {log}");
    let frames: Vec<Vec<u8>> = log.lines().filter(|l| l.len() > 100).map(unhex).collect();
    assert_eq!(frames.len(), 2, "{log}");
    let by_src = |a: u8| {
        frames
            .iter()
            .find(|f| f[14 + 12..14 + 16] == [198, 18, 0, a])
            .unwrap_or_else(|| panic!("no datagram from 198.18.0.{a}: {log}"))
    };
    let (ours, kernel) = (by_src(1), by_src(3));
    let (oip, kip) = (&ours[14..34], &kernel[14..34]);
    assert_eq!(oip[0], kip[0], "version and header length");
    assert_eq!(oip[1], kip[1], "TOS");
    assert_eq!(oip[2..4], kip[2..4], "total length");
    assert_eq!(oip[6] & 0xe0, kip[6] & 0xe0, "flags (DF)");
    assert_eq!(oip[8], kip[8], "TTL");
    assert_eq!(oip[9], 17, "UDP");
    assert_eq!(oip[16..20], kip[16..20], "to h2");
    let (oudp, kudp) = (&ours[34..42], &kernel[34..42]);
    assert_eq!(oudp[2..4], kudp[2..4], "destination port 4789");
    assert_eq!(oudp[4..6], kudp[4..6], "UDP length");
    let sport = u16::from_be_bytes([oudp[0], oudp[1]]);
    assert!(
        (32768..=60999).contains(&sport),
        "outer source port {sport} from the ephemeral range, like the kernel's"
    );
    assert_eq!(
        oudp[6..8] == [0, 0],
        kudp[6..8] == [0, 0],
        "outer UDP checksum present in both or in neither"
    );
    assert_eq!(ours[42..50], kernel[42..50], "VXLAN header byte for byte");
    assert_eq!(
        ours[42..50],
        [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00],
        "flags 0x08, VNI 4096"
    );
    assert_eq!(&ours[50..], &inner[..], "the inner frame unchanged");
    assert_eq!(&kernel[50..], &inner[..]);
}

/// TCP both ways between vxmeshd (h1) and the kernel (h3), for one
/// combination of offloads on either side; checksums must come out right
/// whichever side offloads what (a wrong one stalls TCP, so iperf3 fails).
fn offload_combination(tag: &str, vxmesh_offloads: bool, kernel_offloads: bool) {
    let config = format!("[settings]\noffloads = {vxmesh_offloads}\n{FRONT_ONLY}");
    let mut lab = start_mixed_with(tag, &config);
    let h3 = lab.tb.ns("h3");
    if !kernel_offloads {
        lab.tb
            .exec(
                &h3,
                &[
                    "ethtool",
                    "-K",
                    "vxm-front",
                    "tx",
                    "off",
                    "tso",
                    "off",
                    "gso",
                    "off",
                    "gro",
                    "off",
                ],
            )
            .expect("ethtool");
        lab.tb
            .exec(
                &h3,
                &[
                    "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            )
            .expect("ethtool");
    }
    let h1 = lab.tb.ns("h1");
    let st = lab.status("h1");
    assert!(st["workers"].as_array().is_some());
    let to_kernel = iperf3_tcp(&mut lab.tb, &h3, &h1, ov(3), 5501, 2, 1).expect("iperf3 h1->h3");
    let from_kernel = iperf3_tcp(&mut lab.tb, &h1, &h3, ov(1), 5502, 2, 1).expect("iperf3 h3->h1");
    assert!(
        to_kernel > 0.01 && from_kernel > 0.01,
        "vxmesh offloads {vxmesh_offloads}, kernel offloads {kernel_offloads}: {to_kernel} / {from_kernel} Gbit/s"
    );
    // Nothing was dropped as malformed on the way.
    let drops = lab.net_drops("h1", "front", "malformed");
    assert_eq!(
        drops, 0,
        "malformed drops with offloads {vxmesh_offloads}/{kernel_offloads}"
    );
}

#[test]
fn every_offload_combination_interoperates() {
    if !require_root() {
        return;
    }
    for (i, (ours, kernels)) in [(true, true), (true, false), (false, true), (false, false)]
        .into_iter()
        .enumerate()
    {
        offload_combination(&format!("kvxo{i}"), ours, kernels);
    }
}
