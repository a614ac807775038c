//! Containers on vxmesh networks, with the real runtimes: a dockerd per
//! host using vxmeshd's Docker network and IPAM driver, podman using
//! `vxmesh-cni`, all on the etcd store.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backend, cni, etcd, Lab};
use serde_json::Value;
use vxmesh_netns::runtime::{image_tarball, plugin_args, plugin_name, Docker, Podman, IMAGE};
use vxmesh_netns::{require_root, workspace_bin};

/// Starts vxmeshd on `host` (etcd store) serving the Docker plugin.
fn start_with_plugin(lab: &mut Lab, host: &str, prefix: &str) {
    let args = plugin_args(&lab.tb, host);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.start_etcd_args(host, prefix, 5, &args);
}

/// `docker network create` binding Docker network `net` on `d`'s host to
/// vxmesh network `net`; `subnet` makes vxmeshd create it on etcd.
fn docker_network(lab: &Lab, d: &Docker, net: &str, subnet: Option<&str>) {
    d.vxmesh_network(&plugin_name(&lab.tb, &d.host), net, subnet)
        .expect("docker network create");
}

/// The address of container `c` on Docker network `net`.
fn ip_of(d: &Docker, c: &str, net: &str) -> Ipv4Addr {
    d.ip_of(c, net).expect("the container's address")
}

/// Container endpoints of `net` as `host`'s daemon has them: (ip, mac,
/// node, name).
fn endpoints(lab: &Lab, host: &str, net: &str) -> Vec<(String, String, String, Option<String>)> {
    let v = lab.cli_json(host, &["network", "inspect", net]);
    v["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["container"].is_string())
                .map(|e| {
                    (
                        e["ip"].as_str().unwrap_or_default().to_string(),
                        e["mac"].as_str().unwrap_or_default().to_string(),
                        e["node"].as_str().unwrap_or_default().to_string(),
                        e["name"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fdb_has(lab: &Lab, host: &str, mac: &str, node: &str) -> bool {
    lab.cli_json(host, &["fdb", "show"])
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["mac"] == mac && e["node"] == node && e["kind"] == "static")
}

fn ping(out: std::process::Output) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
}

/// The host ends of container veths in `host`'s namespace.
fn veths(lab: &Lab, host: &str) -> Vec<String> {
    let out = lab
        .tb
        .exec(&lab.tb.ns(host), &["ip", "-o", "link", "show"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("vxh") || n.starts_with("vxc"))
        .collect()
}

#[test]
fn docker_and_podman_containers_on_three_hosts_reach_each_other_by_address_and_name() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("ctr", 3, "");
    let (_etcd, prefix) = etcd::with_etcd(&mut lab);
    start_with_plugin(&mut lab, "h1", &prefix);
    start_with_plugin(&mut lab, "h2", &prefix);
    lab.start_etcd("h3", &prefix, 5);
    let image = image_tarball(lab.tb.dir(), true).expect("image");
    let d1 = Docker::start(&mut lab.tb, "h1", &image).expect("dockerd on h1");
    let d2 = Docker::start(&mut lab.tb, "h2", &image).expect("dockerd on h2");
    let pm = Podman::new(&lab.tb, "h3", &image, &workspace_bin("vxmesh-cni"));
    pm.add_network("front", &lab.socket("h3"));

    // h1's Docker creates the vxmesh network on etcd (a subnet and no
    // such network yet); h2's binds to it by name.
    docker_network(&lab, &d1, "front", Some("10.0.9.0/24"));
    docker_network(&lab, &d2, "front", None);
    let net = lab.cli_json("h1", &["network", "inspect", "front"]);
    assert_eq!(net["subnet"], "10.0.9.0/24");
    let run = ["run", "-d", "--network", "front", "--dns", "10.0.9.254"];
    d1.ok(&[&run[..], &["--name", "c1", IMAGE, "sleep", "600"]].concat());
    d2.ok(&[&run[..], &["--name", "c2", IMAGE, "sleep", "600"]].concat());
    pm.ok(&[&run[..], &["--name", "p3", IMAGE, "sleep", "600"]].concat());
    let c1 = ip_of(&d1, "c1", "front");
    let c2 = ip_of(&d2, "c2", "front");
    let p3_addr = pm.ok(&["exec", "p3", "ip", "-4", "-o", "addr", "show", "eth0"]);
    let p3: Ipv4Addr = p3_addr
        .split_whitespace()
        .find(|w| w.contains('/'))
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("p3's address in {p3_addr:?}"));
    let all = [c1, c2, p3];
    assert!(
        all.iter().all(|ip| ip.octets()[..3] == [10, 0, 9]),
        "{all:?}"
    );
    assert!(c1 != c2 && c2 != p3 && c1 != p3, "{all:?}");

    // Every node has every container as a static entry owned by its node
    // (nothing to learn, nothing to flood) once the names have arrived.
    let named = lab.until(Duration::from_secs(10), || {
        let e = endpoints(&lab, "h3", "front");
        ["c1", "c2", "p3"]
            .iter()
            .all(|n| e.iter().any(|x| x.3.as_deref() == Some(n)))
    });
    assert!(
        named.is_some(),
        "names: {:?}",
        endpoints(&lab, "h3", "front")
    );
    let eps = endpoints(&lab, "h1", "front");
    let mac = |ip: Ipv4Addr| {
        eps.iter()
            .find(|e| e.0 == ip.to_string())
            .map(|e| e.1.clone())
            .unwrap_or_else(|| panic!("{ip} in {eps:?}"))
    };
    let (mac2, mac3) = (mac(c2), mac(p3));
    assert!(fdb_has(&lab, "h1", &mac2, "h2"), "h1 fdb has c2 at h2");
    assert!(fdb_has(&lab, "h1", &mac3, "h3"), "h1 fdb has p3 at h3");
    assert!(fdb_has(&lab, "h3", &mac(c1), "h1"), "h3 fdb has c1 at h1");

    // By address, every way round, across hosts; ARP answered by the nodes.
    let arp_before = lab.counter("h1", "front", "arp_answered");
    let (s2, s3, s1) = (c2.to_string(), p3.to_string(), c1.to_string());
    assert!(
        ping(d1.exec("c1", &["ping", "-c", "3", "-W", "2", &s2])),
        "c1 -> c2"
    );
    assert!(
        ping(d1.exec("c1", &["ping", "-c", "3", "-W", "2", &s3])),
        "c1 -> p3"
    );
    assert!(
        ping(pm.podman(&["exec", "p3", "ping", "-c", "3", "-W", "2", &s1])),
        "p3 -> c1"
    );
    assert!(
        ping(d2.exec("c2", &["ping", "-c", "3", "-W", "2", &s3])),
        "c2 -> p3"
    );
    assert!(
        lab.counter("h1", "front", "arp_answered") > arp_before,
        "ARP answered on h1"
    );
    // By name: Docker's resolver forwards to the network's DNS (--dns);
    // podman's container asks it directly.
    assert!(
        ping(d1.exec("c1", &["ping", "-c", "2", "-W", "2", "c2"])),
        "c1 -> c2 by name"
    );
    assert!(
        ping(d1.exec("c1", &["ping", "-c", "2", "-W", "2", "p3"])),
        "c1 -> p3 by name"
    );
    assert!(
        ping(pm.podman(&["exec", "p3", "ping", "-c", "2", "-W", "2", "c1"])),
        "p3 -> c1 by name"
    );

    // iperf3 between containers on two hosts.
    d2.ok(&["exec", "-d", "c2", "iperf3", "-s", "-1"]);
    let listening = lab.until(Duration::from_secs(5), || {
        let o = d2.exec("c2", &["netstat", "-ltn"]);
        String::from_utf8_lossy(&o.stdout).contains(":5201")
    });
    assert!(listening.is_some(), "iperf3 server in c2");
    let out = d1.ok(&["exec", "c1", "iperf3", "-c", &s2, "-t", "2", "-J"]);
    let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(bps > 1e8, "iperf3 c1 -> c2 carried {bps} bit/s");

    // docker rm -f: the endpoint leaves every node within a second.
    let resolves = |out: std::process::Output, ip: &str| {
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w == ["Address:", ip]
        })
    };
    assert!(
        resolves(d1.exec("c1", &["nslookup", "c2", "10.0.9.254"]), &s2),
        "c2 resolves"
    );
    d2.ok(&["rm", "-f", "c2"]);
    let gone = lab.until(Duration::from_secs(1), || {
        ["h1", "h3"].iter().all(|h| {
            !endpoints(&lab, h, "front").iter().any(|e| e.0 == s2) && !fdb_has(&lab, h, &mac2, "h2")
        })
    });
    assert!(
        gone.is_some(),
        "c2's endpoint still on h1/h3: {:?}",
        endpoints(&lab, "h1", "front")
    );
    assert!(
        !resolves(d1.exec("c1", &["nslookup", "c2", "10.0.9.254"]), &s2),
        "c2 still resolves"
    );
    assert!(
        veths(&lab, "h2").is_empty(),
        "h2 veths left: {:?}",
        veths(&lab, "h2")
    );
    // And podman's: rm leaves nothing behind on h3.
    pm.ok(&["rm", "-f", "-t", "0", "p3"]);
    let gone = lab.until(Duration::from_secs(1), || {
        !endpoints(&lab, "h1", "front").iter().any(|e| e.0 == s3)
    });
    assert!(gone.is_some(), "p3's endpoint left on h1");
    assert!(
        veths(&lab, "h3").is_empty(),
        "h3 veths left: {:?}",
        veths(&lab, "h3")
    );
    drop(pm);
    drop(d2);
    drop(d1);
}

#[test]
fn fifty_containers_never_share_an_address_and_an_exhausted_pool_is_a_clear_error() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("ipam", 2, "");
    let (_etcd, prefix) = etcd::with_etcd(&mut lab);
    start_with_plugin(&mut lab, "h1", &prefix);
    start_with_plugin(&mut lab, "h2", &prefix);
    // A /28 for exhaustion: 14 usable, minus the DNS address (.14) and a
    // VIP pool of 3 (.11-.13): 10 for containers.
    lab.attachable_network("front", 4096, "10.0.9.0/24");
    lab.attachable_network("tiny", 4097, "10.0.10.0/28");
    let image = image_tarball(lab.tb.dir(), true).expect("image");
    let mut d1 = Docker::start(&mut lab.tb, "h1", &image).expect("dockerd on h1");
    let mut d2 = Docker::start(&mut lab.tb, "h2", &image).expect("dockerd on h2");
    for d in [&d1, &d2] {
        docker_network(&lab, d, "front", None);
        docker_network(&lab, d, "tiny", None);
    }
    // 50 containers, alternating hosts.
    for i in 0..50 {
        let d = if i % 2 == 0 { &d1 } else { &d2 };
        let name = format!("n{i}");
        d.ok(&[
            "run",
            "-d",
            "--network",
            "front",
            "--name",
            &name,
            IMAGE,
            "sleep",
            "600",
        ]);
    }
    let eps = endpoints(&lab, "h1", "front");
    let ips: std::collections::HashSet<&String> = eps.iter().map(|e| &e.0).collect();
    assert_eq!(eps.len(), 50, "{eps:?}");
    assert_eq!(ips.len(), 50, "an address was given twice: {eps:?}");
    assert_eq!(eps.iter().filter(|e| e.2 == "h1").count(), 25);
    for (i, d) in [(0, &d1), (1, &d2)] {
        let c = format!("n{i}");
        let ip = ip_of(d, &c, "front").to_string();
        assert!(ips.contains(&ip), "{c}'s {ip} registered");
    }

    // A restart of h1's daemon keeps every allocation (and the containers'
    // links: the bridge with their veths stays).
    // (Address, MAC, node): names arrive from dockerd a moment later.
    let allocations = |lab: &Lab, host: &str| {
        let mut v: Vec<(String, String, String)> = endpoints(lab, host, "front")
            .into_iter()
            .map(|e| (e.0, e.1, e.2))
            .collect();
        v.sort();
        v
    };
    let before = allocations(&lab, "h2");
    assert!(lab.tb.stop(lab.daemon("h1")), "h1's vxmeshd stops");
    start_with_plugin(&mut lab, "h1", &prefix);
    assert_eq!(
        allocations(&lab, "h1"),
        before,
        "allocations after the restart"
    );
    let n2 = ip_of(&d1, "n2", "front").to_string();
    assert!(
        ping(d2.exec("n1", &["ping", "-c", "2", "-W", "2", &n2])),
        "n1 (h2) -> n2 (h1) after the restart"
    );
    // A new container after the restart gets an address nobody has.
    d1.ok(&[
        "run",
        "-d",
        "--network",
        "front",
        "--name",
        "late",
        IMAGE,
        "sleep",
        "600",
    ]);
    let late = ip_of(&d1, "late", "front").to_string();
    assert!(!ips.contains(&late), "{late} given twice");

    // Exhaustion: 10 addresses in `tiny`, one of them each node's own
    // (taken at its first container there): the 9th container fails with a
    // clear error and leaves nothing behind.
    for i in 0..8 {
        let d = if i % 2 == 0 { &d1 } else { &d2 };
        let name = format!("t{i}");
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tiny",
            "--name",
            &name,
            IMAGE,
            "sleep",
            "600",
        ]);
    }
    let veths_before = veths(&lab, "h1");
    let out = d1.docker(&[
        "run",
        "-d",
        "--network",
        "tiny",
        "--name",
        "t8",
        IMAGE,
        "sleep",
        "600",
    ]);
    assert!(!out.status.success(), "the 9th container started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no free address left") && err.contains("tiny"),
        "docker run said: {err}"
    );
    assert_eq!(endpoints(&lab, "h1", "tiny").len(), 8);
    assert_eq!(
        veths(&lab, "h1"),
        veths_before,
        "no veth left by the failed run"
    );
    let _ = d1.docker(&["rm", "-f", "t8"]);

    // Everything removed: every address released everywhere.
    d1.stop(&lab.tb);
    d2.stop(&lab.tb);
    let released = lab.until(Duration::from_secs(5), || {
        endpoints(&lab, "h2", "front").is_empty() && endpoints(&lab, "h2", "tiny").is_empty()
    });
    assert!(
        released.is_some(),
        "left: {:?}",
        endpoints(&lab, "h2", "front")
    );
    assert!(veths(&lab, "h1").is_empty() && veths(&lab, "h2").is_empty());
}

#[test]
fn containers_labelled_with_a_service_are_its_tasks_and_scaling_changes_what_answers() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("ctask", 2, "");
    lab.tb
        .add_host("cl", "198.18.0.100/24", 1500)
        .expect("client host");
    let (_etcd, prefix) = etcd::with_etcd(&mut lab);
    start_with_plugin(&mut lab, "h1", &prefix);
    start_with_plugin(&mut lab, "h2", &prefix);
    lab.attachable_network("front", 4096, "10.0.9.0/24");
    lab.create_web_service("h1");
    let image = image_tarball(lab.tb.dir(), true).expect("image");
    let d1 = Docker::start(&mut lab.tb, "h1", &image).expect("dockerd on h1");
    let d2 = Docker::start(&mut lab.tb, "h2", &image).expect("dockerd on h2");
    for d in [&d1, &d2] {
        docker_network(&lab, d, "front", None);
    }
    let web = |d: &Docker, name: &str| {
        let cmd = format!("echo {name} > /www/index.html; exec httpd -f -p 80 -h /www");
        d.ok(&[
            "run",
            "-d",
            "--network",
            "front",
            "--name",
            name,
            "--label",
            "vxmesh.service=web",
            IMAGE,
            "sh",
            "-c",
            &cmd,
        ]);
    };
    web(&d1, "w1");
    web(&d2, "w2");
    // Answered through either node, by containers on both.
    let answers = |lab: &Lab, n: usize| -> std::collections::BTreeSet<String> {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..n {
            let node = if i % 2 == 0 {
                "198.18.0.1"
            } else {
                "198.18.0.2"
            };
            let to: SocketAddr = format!("{node}:8080").parse().unwrap();
            match backend::get(&lab.tb, "cl", to, "/") {
                Ok((body, _)) => {
                    seen.insert(body.trim().to_string());
                }
                Err(e) => {
                    seen.insert(format!("error via {node}: {e}"));
                }
            }
        }
        seen
    };
    let want = |names: &[&str]| -> std::collections::BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    };
    // Each container's service comes from its label, read from dockerd
    // just after it joined, and its health must rise: allow for a loaded
    // machine.
    let up = lab.until(Duration::from_secs(20), || {
        answers(&lab, 8) == want(&["w1", "w2"])
    });
    assert!(
        up.is_some(),
        "answers: {:?}; tasks on h1: {:?}, on h2: {:?}; endpoints {:?}",
        answers(&lab, 8),
        lab.task_ips("h1", "web"),
        lab.task_ips("h2", "web"),
        endpoints(&lab, "h1", "front")
    );

    // A request loop through h1 runs while the service scales 2 -> 4 -> 1;
    // every request must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let (s, ns) = (stop.clone(), lab.tb.ns("cl"));
    let looper = lab
        .tb
        .thread_in_ns(&ns, move || {
            use std::io::{Read, Write};
            let to: SocketAddr = "198.18.0.1:8080".parse().unwrap();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !s.load(Ordering::Relaxed) && ok + (failed.len() as u32) < 5000 {
                let r = (|| -> std::io::Result<String> {
                    let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                    let mut out = String::new();
                    c.read_to_string(&mut out)?;
                    Ok(out)
                })();
                match r {
                    Ok(t) if t.starts_with("HTTP/1.") && t.contains(" 200 ") => ok += 1,
                    Ok(t) => failed.push(format!("answer {:?}", t.lines().next())),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
        .unwrap();
    web(&d1, "w3");
    web(&d2, "w4");
    // A container's service comes from its label, read from dockerd just
    // after it joined: allow for a loaded machine.
    let four = lab.until(Duration::from_secs(20), || {
        answers(&lab, 16) == want(&["w1", "w2", "w3", "w4"])
    });
    assert!(
        four.is_some(),
        "after scaling up: {:?}; endpoints on h1: {:?}; tasks on h1: {:?}, on h2: {:?}",
        answers(&lab, 16),
        endpoints(&lab, "h1", "front"),
        lab.task_ips("h1", "web"),
        lab.task_ips("h2", "web")
    );
    for c in ["w2", "w3"] {
        let d = if c == "w3" { &d1 } else { &d2 };
        d.ok(&["rm", "-f", c]);
    }
    d2.ok(&["rm", "-f", "w4"]);
    // A stopped container leaves at once (its endpoint goes with it), not
    // after a health check fails (fall x interval is longer than this).
    let left = lab.until(Duration::from_millis(500), || {
        lab.task_ips("h2", "web").len() == 1
    });
    assert!(
        left.is_some(),
        "tasks after the removals: {:?}",
        lab.task_ips("h2", "web")
    );
    assert_eq!(answers(&lab, 8), want(&["w1"]));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = looper.join().unwrap().unwrap();
    assert!(ok > 20, "the loop ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    drop(d2);
    drop(d1);
}

/// One plugin call on the Docker plugin socket: (status, body as JSON).
fn plugin_call(sock: &std::path::Path, method: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("plugin socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[test]
fn both_plugin_interfaces_refuse_bad_input_and_leave_nothing_half_made() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("cbad", 1, "");
    lab.tb.add_namespace("c1").expect("container namespace");
    let (_etcd, prefix) = etcd::with_etcd(&mut lab);
    start_with_plugin(&mut lab, "h1", &prefix);
    lab.attachable_network("front", 4096, "10.0.9.0/24");
    lab.cli_json(
        "h1",
        &[
            "network",
            "create",
            "plain",
            "--vni",
            "4097",
            "--subnet",
            "10.0.10.0/24",
        ],
    );
    let sock = std::path::Path::new("/run/docker/plugins")
        .join(format!("{}.sock", plugin_name(&lab.tb, "h1")));

    // Docker's protocol.
    let (code, v) = plugin_call(&sock, "Plugin.Activate", "{}");
    assert_eq!(
        (code, v["Implements"].clone()),
        (200, serde_json::json!(["NetworkDriver", "IpamDriver"]))
    );
    let refused = |method: &str, body: &str, says: &str| {
        let (code, v) = plugin_call(&sock, method, body);
        let err = v["Err"].as_str().unwrap_or_default().to_string();
        assert!(
            code == 500 && err.contains(says),
            "{method} {body}: {code} {v}"
        );
    };
    refused(
        "NetworkDriver.CreateNetwork",
        "{not json",
        "malformed request",
    );
    refused(
        "IpamDriver.RequestPool",
        r#"{"Pool":"","Options":null}"#,
        "say which vxmesh network",
    );
    refused(
        "IpamDriver.RequestPool",
        r#"{"Pool":"10.0.77.0/24","Options":{"network":"front"}}"#,
        "does not match",
    );
    refused(
        "IpamDriver.RequestPool",
        r#"{"Options":{"network":"nope"}}"#,
        "does not exist",
    );
    refused(
        "IpamDriver.RequestPool",
        r#"{"Options":{"network":"plain"}}"#,
        "not attachable",
    );
    refused(
        "IpamDriver.RequestPool",
        r#"{"Options":{"network":"front"},"V6":true}"#,
        "IPv6",
    );
    refused(
        "NetworkDriver.CreateNetwork",
        r#"{"NetworkID":"n1","Options":{},"IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"10.0.9.0/24"}]}"#,
        "--ipam-driver",
    );
    refused(
        "NetworkDriver.CreateNetwork",
        r#"{"NetworkID":"n1","Options":{"com.docker.network.generic":{"network":"front"}},"IPv4Data":[{"AddressSpace":"vxmesh","Pool":"10.0.8.0/24"}]}"#,
        "does not match",
    );
    refused(
        "NetworkDriver.Join",
        r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/x"}"#,
        "not created",
    );
    refused(
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"default/x","Address":""}"#,
        "not a vxmesh pool",
    );
    refused(
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"vxmesh/front","Address":"10.0.9.254"}"#,
        "reserved",
    );
    refused("NetworkDriver.Frobnicate", "{}", "unknown call");
    // The good path of the IPAM side, then its release (twice: idempotent).
    let (code, pool) = plugin_call(
        &sock,
        "IpamDriver.RequestPool",
        r#"{"Options":{"network":"front"}}"#,
    );
    assert_eq!(
        (code, pool["PoolID"].as_str(), pool["Pool"].as_str()),
        (200, Some("vxmesh/front"), Some("10.0.9.0/24"))
    );
    let (code, a) = plugin_call(
        &sock,
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"vxmesh/front","Address":"10.0.9.7"}"#,
    );
    assert_eq!((code, a["Address"].as_str()), (200, Some("10.0.9.7/24")));
    refused(
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"vxmesh/front","Address":"10.0.9.7"}"#,
        "already in use",
    );
    for _ in 0..2 {
        let (code, _) = plugin_call(
            &sock,
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"vxmesh/front","Address":"10.0.9.7"}"#,
        );
        assert_eq!(code, 200);
    }
    assert!(
        endpoints(&lab, "h1", "front").is_empty(),
        "{:?}",
        endpoints(&lab, "h1", "front")
    );

    // CNI.
    let ns = format!("/run/netns/{}", lab.tb.ns("c1"));
    let conf = |net: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{net}","type":"vxmesh-cni","socket":"{}"}}"#,
            lab.socket("h1").display()
        )
    };
    let (ok, v) = cni("ADD", "bad1", &ns, "", "{not json");
    assert!(!ok && v["code"] == 6, "{v}");
    let (ok, v) = cni("ADD", "bad1", &ns, "", &conf("nope"));
    assert!(
        !ok && v["code"] == 101 && v["msg"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    let (ok, v) = cni("ADD", "bad1", &ns, "", &conf("plain"));
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("not attachable"),
        "{v}"
    );
    let (ok, v) = cni("ADD", "bad1", "/run/netns/no-such-ns", "", &conf("front"));
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    let (ok, v) = cni("ADD", "bad1", &ns, "IP=10.0.10.5", &conf("front"));
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("outside the subnet"),
        "{v}"
    );
    let (ok, v) = cni("DEL", "never-added", &ns, "", &conf("front"));
    assert!(ok, "DEL of an unknown container succeeds: {v}");
    assert!(
        endpoints(&lab, "h1", "front").is_empty(),
        "nothing half made"
    );
    assert!(
        veths(&lab, "h1").is_empty(),
        "no veth: {:?}",
        veths(&lab, "h1")
    );

    // A good ADD, the same ADD again (same answer), CHECK, DEL twice.
    let (ok, first) = cni("ADD", "good1", &ns, "K8S_POD_NAME=web-1", &conf("front"));
    assert!(ok, "{first}");
    let ip = first["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(first["interfaces"][1]["name"], "eth0");
    assert_eq!(first["dns"]["nameservers"][0], "10.0.9.254");
    let (ok, again) = cni("ADD", "good1", &ns, "K8S_POD_NAME=web-1", &conf("front"));
    assert!(ok && again["ips"][0]["address"] == ip.as_str(), "{again}");
    let (ok, v) = cni("CHECK", "good1", &ns, "", &conf("front"));
    assert!(ok, "{v}");
    let bare = ip.split('/').next().unwrap().to_string();
    let eps = endpoints(&lab, "h1", "front");
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(
        (eps[0].0.as_str(), eps[0].3.as_deref()),
        (bare.as_str(), Some("web-1"))
    );
    // The container reaches the node over its veth and the bridge.
    let node_ip = lab.cli_json("h1", &["network", "inspect", "front"])["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["container"].is_null())
        .map(|e| e["ip"].as_str().unwrap().to_string())
        .expect("the node's own address");
    let out = lab
        .tb
        .exec(&lab.tb.ns("c1"), &["ping", "-c", "2", "-W", "2", &node_ip])
        .unwrap();
    assert!(out.status.success(), "c1 -> node {node_ip}");
    for _ in 0..2 {
        let (ok, v) = cni("DEL", "good1", &ns, "", &conf("front"));
        assert!(ok, "{v}");
    }
    let (ok, _) = cni("CHECK", "good1", &ns, "", &conf("front"));
    assert!(!ok, "CHECK after DEL fails");
    assert!(endpoints(&lab, "h1", "front").is_empty());
    assert!(veths(&lab, "h1").is_empty(), "{:?}", veths(&lab, "h1"));
}
