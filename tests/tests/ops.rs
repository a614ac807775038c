//! Operations: metrics after traffic, the systemd notify protocol, SIGHUP
//! with a good and a broken file, SIGTERM and SIGINT, and the unit file.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{sample, Lab, FRONT_ONLY};
use nix::sys::signal::Signal;
use vxmesh_netns::{icmp_ping, require_root, workspace_bin};

#[test]
fn metrics_count_exactly_what_crossed_the_overlay() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("metr", 2, FRONT_ONLY);
    for h in ["h1", "h2"] {
        lab.no_ipv6(h);
        lab.start(h);
    }
    let tx = "vxmesh_vxlan_tx_packets_total{network=\"front\"}";
    let rx = "vxmesh_vxlan_rx_packets_total{network=\"front\"}";
    let (a1, a2) = (lab.scrape("h1"), lab.scrape("h2"));
    let p = icmp_ping(
        &lab.tb,
        &lab.tb.ns("h1"),
        Ipv4Addr::new(10, 0, 9, 2),
        10,
        Duration::from_millis(10),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(p.received, 10);
    let (b1, b2) = (lab.scrape("h1"), lab.scrape("h2"));
    // Ten echo requests out of h1 into h2, ten replies back; ARP never
    // crossed (each node holds permanent neighbour entries for the
    // endpoints, and answers any ARP that is asked on the node).
    assert_eq!(sample(&b1, tx) - sample(&a1, tx), 10);
    assert_eq!(sample(&b2, rx) - sample(&a2, rx), 10);
    assert_eq!(sample(&b2, tx) - sample(&a2, tx), 10);
    assert_eq!(sample(&b1, rx) - sample(&a1, rx), 10);
    let flood = "vxmesh_flood_copies_total{network=\"front\"}";
    assert_eq!(sample(&b1, flood), sample(&a1, flood), "h1 flooded nothing");
    assert_eq!(sample(&b2, flood), sample(&a2, flood), "h2 flooded nothing");
    let peer_tx = "vxmesh_peer_tx_packets_total{network=\"front\",peer=\"198.18.0.2\"}";
    assert_eq!(
        sample(&b1, peer_tx) - sample(&a1, peer_tx),
        10,
        "per peer, too"
    );
    let flood = "vxmesh_flood_copies_total{network=\"front\"}";
    assert_eq!(sample(&b1, flood), sample(&a1, flood));
    // Families an operator relies on are there, with their types.
    for family in [
        "# TYPE vxmesh_build_info gauge",
        "# TYPE vxmesh_drops counter",
        "# TYPE vxmesh_fdb_entries gauge",
        "# TYPE vxmesh_reloads counter",
        "# TYPE vxmesh_worker_idle_seconds gauge",
        "# TYPE vxmesh_worker_batch_reads histogram",
        "# TYPE vxmesh_underlay_send_datagrams histogram",
        "vxmesh_offload{offload=\"udp_gro\"} 1",
        "# EOF",
    ] {
        assert!(b1.contains(family), "{family} missing");
    }
    // Every ping went through both workers: batches were counted.
    assert!(sample(&b1, "vxmesh_worker_batch_reads_count{side=\"underlay\"}") >= 10);
    // ... and by the lanes that read them (however many queues).
    let udp_reads = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("vxmesh_worker_reads_total{worker=\"vxm-lane-"))
            .filter(|l| l.contains("side=\"underlay\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(udp_reads(&b1) - udp_reads(&a1) >= 10.0, "per-worker reads");
    // Each echo request left h1 in a send of its own (nothing else queued).
    let sends = "vxmesh_underlay_send_datagrams_count";
    assert!(sample(&b1, sends) - sample(&a1, sends) >= 10);
    let dp = &lab.status("h1")["dataplane"];
    assert_eq!(dp["udp_gro"], true, "{dp}");
    assert!(dp["datagrams_per_send"].as_f64().unwrap() >= 1.0, "{dp}");
    // h2 and h3 (h3 is in the file even though it runs no daemon here).
    assert_eq!(
        sample(&b1, "vxmesh_fdb_entries{network=\"front\",kind=\"static\"}"),
        2
    );
}

#[test]
fn notify_protocol_reload_and_stop() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("notify", 2, FRONT_ONLY);
    lab.start("h2");
    // h1 with a watchdog: WATCHDOG=1 must keep coming.
    let bin = workspace_bin("vxmeshd");
    let sock = lab.socket("h1");
    let state = lab.tb.dir().join("state-h1");
    let ns = lab.tb.ns("h1");
    let p = lab
        .tb
        .spawn_notify(
            &ns,
            &[
                bin.to_str().unwrap(),
                "--config",
                lab.config.to_str().unwrap(),
                "--node",
                "h1",
                "--socket",
                sock.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
            &[("WATCHDOG_USEC", "400000")],
            Duration::from_secs(10),
        )
        .expect("READY=1");
    let mut saw_watchdog = false;
    for _ in 0..10 {
        match p.recv_notify(Duration::from_secs(1)) {
            Some(m) if m.contains("WATCHDOG=1") => {
                saw_watchdog = true;
                break;
            }
            _ => {}
        }
    }
    assert!(saw_watchdog, "no WATCHDOG=1 while the workers turn");
    let ping = |lab: &Lab| {
        icmp_ping(
            &lab.tb,
            &lab.tb.ns("h1"),
            Ipv4Addr::new(10, 0, 9, 2),
            3,
            Duration::from_millis(10),
            Duration::from_secs(5),
        )
        .unwrap()
        .received
    };
    assert_eq!(ping(&lab), 3);
    // A broken file on SIGHUP: rejected with file:line, counted, and the
    // running config keeps forwarding.
    let good = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(&lab.config, good.replace("vni = 4096", "vni = \"many\"")).unwrap();
    lab.tb.signal(&p, Signal::SIGHUP).unwrap();
    let mut status = lab.status("h1");
    for _ in 0..100 {
        if status["reloads_failed"] == 1 {
            break;
        }
        // The daemon handles the signal asynchronously; re-read its status.
        std::thread::sleep(Duration::from_millis(20));
        status = lab.status("h1");
    }
    assert_eq!(status["reloads_failed"], 1);
    let err = status["last_reload_error"].as_str().unwrap();
    assert!(
        err.contains("vxmesh.toml:") && err.contains("invalid type"),
        "{err}"
    );
    assert_eq!(ping(&lab), 3, "the old config still forwards");
    // A good change applies: a second network appears.
    let more = format!("{good}\n[[networks]]\nname = \"back\"\nvni = 4097\nsubnet = \"10.0.10.0/24\"\nnodes = [\"h1\"]\n");
    std::fs::write(&lab.config, more).unwrap();
    lab.tb.signal(&p, Signal::SIGHUP).unwrap();
    for _ in 0..100 {
        if lab.status("h1")["reloads_ok"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = lab.status("h1");
    assert_eq!(status["reloads_ok"], 1);
    assert_eq!(status["networks"].as_array().unwrap().len(), 2);
    lab.tb
        .exec(&ns, &["ip", "link", "show", "vxm-back"])
        .expect("the new TAP exists");
    assert_eq!(ping(&lab), 3);
    // SIGTERM: STOPPING=1, exit 0, the socket gone, the TAPs kept for the
    // next start.
    lab.tb.signal(&p, Signal::SIGTERM).unwrap();
    let mut saw_stopping = false;
    while let Some(m) = p.recv_notify(Duration::from_secs(3)) {
        if m.contains("STOPPING=1") {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping, "no STOPPING=1");
    let st = lab
        .tb
        .wait_exit(&p, Duration::from_secs(10))
        .expect("vxmeshd exits");
    assert!(st.success(), "exit status {st:?}");
    let links = |lab: &Lab| {
        let l = lab.tb.exec(&ns, &["ip", "-o", "link"]).unwrap();
        String::from_utf8_lossy(&l.stdout).to_string()
    };
    let tables = |lab: &Lab| {
        let t = lab.tb.exec(&ns, &["nft", "list", "tables"]).unwrap();
        String::from_utf8_lossy(&t.stdout).to_string()
    };
    let l = links(&lab);
    assert!(
        l.contains("vxm-front") && l.contains("vxm-back"),
        "TAPs kept: {l}"
    );
    assert!(tables(&lab).contains("vxmesh_h1"), "{}", tables(&lab));
    assert!(!sock.exists(), "admin socket removed");
    // --cleanup takes the node off the network for good.
    let out = lab
        .tb
        .exec(
            &ns,
            &[
                bin.to_str().unwrap(),
                "--node",
                "h1",
                "--socket",
                sock.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--cleanup",
            ],
        )
        .expect("--cleanup");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("removed 2 device(s)"), "{said}");
    assert!(
        !links(&lab).contains("vxm-"),
        "TAPs removed: {}",
        links(&lab)
    );
    assert!(!tables(&lab).contains("vxmesh_h1"), "{}", tables(&lab));
}

#[test]
fn sigint_is_a_fast_stop() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("sigint", 1, FRONT_ONLY);
    lab.start("h1");
    let (_, p) = &lab.daemons[0];
    lab.tb.signal(p, Signal::SIGINT).unwrap();
    let st = lab
        .tb
        .wait_exit(p, Duration::from_secs(5))
        .expect("exits at once");
    assert!(st.success());
}

#[test]
fn bad_config_is_refused_at_start_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("vxmesh-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let text = FRONT_ONLY.replace("ip = \"10.0.9.3\"", "ip = \"10.0.8.3\"");
    let line = 1 + text.lines().position(|l| l.contains("10.0.8.3")).unwrap();
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(workspace_bin("vxmeshd"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("bad.toml:{line}:6:"))
            && err.contains("outside network `front`'s subnet"),
        "{err}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    if !require_root() {
        return;
    }
    // systemd-analyze checks that the commands exist: point them at the
    // binaries just built, in a copy of the unit.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/vxmeshd.service"
    ))
    .unwrap();
    let bin = workspace_bin("vxmeshd");
    let dir = std::env::temp_dir().join(format!("vxmesh-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vxmeshd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/vxmeshd", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("vxmeshd.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn the_vxlan_owner_table_loads_and_drops_vxlan_from_other_sockets() {
    if !require_root() {
        return;
    }
    let mut tb = vxmesh_netns::Testbed::new("nftown").unwrap();
    tb.add_host("h1", "198.18.0.1/24", 1500).unwrap();
    tb.add_host("h2", "198.18.0.2/24", 1500).unwrap();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/vxlan-owner.nft");
    let broken = tb.dir().join("broken.nft");
    std::fs::write(
        &broken,
        std::fs::read_to_string(file)
            .unwrap()
            .replace("counter drop", "counter dorp"),
    )
    .unwrap();
    // nft resolves the cgroup path when it reads the file: a private mount
    // of /sys/fs/cgroup (a tmpfs, in a mount namespace of its own) holds
    // the directory, so no real cgroup is made. Then, from this (root)
    // process, which is not in vxmeshd's cgroup: VXLAN to h2 is refused,
    // other UDP is not.
    let script = format!(
        r#"set -e
mount -t tmpfs none /sys/fs/cgroup
mkdir -p /sys/fs/cgroup/system.slice/vxmeshd.service
if nft -c -f {broken} 2>/dev/null; then echo "broken file accepted"; exit 1; fi
nft -c -f {file}
nft -f {file}
nft -f {file}
python3 - <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"\x08\0\0\0\0\0\x01\0", ("198.18.0.2", 4789))
    print("vxlan sent")
except PermissionError:
    print("vxlan refused")
s.sendto(b"hello", ("198.18.0.2", 4790))
print("other sent")
PY
nft list table inet vxmesh_owner
"#,
        broken = broken.display()
    );
    let out = tb
        .exec_unchecked(&tb.ns("h1"), &["unshare", "-m", "sh", "-c", &script])
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("vxlan refused") && text.contains("other sent"),
        "{text}"
    );
    // Loaded twice, one table; its drop counted the datagram.
    assert_eq!(text.matches("table inet vxmesh_owner").count(), 1, "{text}");
    assert!(text.contains("counter packets 1 "), "{text}");
}

#[test]
fn check_validates_the_etcd_options_without_connecting() {
    // No namespace: --check connects to nothing.
    let dir = std::env::temp_dir().join(format!("vxmesh-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cred = dir.join("cred");
    std::fs::write(&cred, "vxmesh:secret\n").unwrap();
    let check = |extra: &[&str]| {
        let out = std::process::Command::new(workspace_bin("vxmeshd"))
            .args([
                "--config",
                "/nonexistent/vxmesh.toml",
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://198.18.0.250:2379",
                "--check",
            ])
            .args(extra)
            .env_remove("VXMESH_STORE")
            .output()
            .expect("run vxmeshd --check");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("options ok"), "{text}");
    let (code, text) = check(&["--etcd-credentials", cred.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--etcd-allow-insecure-auth"), "{text}");
    let (code, text) = check(&["--etcd-ca", "/nonexistent/ca.pem"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("https://"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
