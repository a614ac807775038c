//! The benchmarks end to end, in miniature (the overlay one here first): `vxmesh-bench overlay`
//! with 1 s runs, one round and 20 pings, so that the command the README
//! gives keeps working from a clean checkout. Its figures are not judged
//! here (speed is measured in `bench/`, never in tests): the test checks
//! that it measures every path, profiles the kernel's vxlan and vxmesh,
//! writes its table, JSON, chart and profile, and removes its namespaces.
//! `containers`, `encryption` and `mesh` follow, each in miniature too.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use vxmesh_netns::{require_root, workspace_bin};

/// A directory for the report, removed when the test ends, also on failure.
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `vxmesh-bench <args> --out <dir>` (bounded by `timeout` s as a
/// whole; every step of a benchmark is bounded too) into a fresh `dir`
/// named after `tag`, asserts that it succeeded, and returns the directory
/// (removed when dropped) and its stderr; `None` when not root (outside CI
/// only: there it panics).
fn run_bench(tag: &str, args: &[&str], timeout: u32) -> Option<(OutDir, String)> {
    if !require_root() {
        return None;
    }
    let out = OutDir(
        std::env::temp_dir().join(format!("vxmesh-bench-{tag}-smoke-{}", std::process::id())),
    );
    let run = Command::new("timeout")
        .arg(timeout.to_string())
        .arg(workspace_bin("vxmesh-bench"))
        .args(args)
        .arg("--out")
        .arg(&out.0)
        .output()
        .expect("run vxmesh-bench");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        run.status.success(),
        "vxmesh-bench {} failed: {}\n{stderr}",
        args[0],
        run.status
    );
    Some((out, stderr))
}

/// The `paths` of a report, asserted to be named `names` (under `key`) in
/// that order.
fn paths<'a>(report: &'a Value, key: &str, names: &[&str]) -> &'a [Value] {
    let paths = report["paths"].as_array().expect("paths");
    let got: Vec<&str> = paths.iter().filter_map(|p| p[key].as_str()).collect();
    assert_eq!(got, names);
    paths
}

/// The JSON report `<bench>.json` in `out`.
fn report(out: &OutDir, bench: &str) -> Value {
    let path = out.0.join(format!("{bench}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that the namespaces of the testbed the benchmark named on
/// stderr (`testbed <suffix> ...`) are gone; returns the suffix.
fn assert_testbed_gone(stderr: &str) -> String {
    let suffix = stderr
        .lines()
        .find_map(|l| l.strip_prefix("testbed "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the benchmark names its testbed");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !left.contains(suffix),
        "namespaces of {suffix} left: {left}"
    );
    suffix.to_string()
}

#[test]
fn overlay_benchmark_measures_every_path_and_writes_its_report() {
    let args = ["overlay", "--secs", "1", "--reps", "1", "--pings", "20"];
    let Some((out, stderr)) = run_bench("ovl", &args, 600) else {
        return;
    };
    let report = report(&out, "overlay");
    let names = ["underlay", "kernel", "kernel-nooffload", "vxmesh"];
    let paths = paths(&report, "name", &names);
    for p in paths {
        let name = &p["name"];
        let tcp1 = p["tests"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["key"] == "tcp1"))
            .unwrap_or_else(|| panic!("{name}: no tcp1 test"));
        let gbit = tcp1["reps"][0]["gbit_per_s"].as_f64().unwrap_or(0.0);
        assert!(gbit > 0.0, "{name}: no TCP figure: {tcp1}");
        assert!(
            p["ping"][0]["received"].as_u64().unwrap_or(0) > 0,
            "{name}: no ping replies: {}",
            p["ping"][0]
        );
    }
    let vxmesh = &paths[3];
    assert!(
        vxmesh["ping_busy_poll"][0]["received"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "busy-poll pings: {}",
        vxmesh["ping_busy_poll"]
    );

    let table = std::fs::read_to_string(out.0.join("overlay.txt")).expect("overlay.txt");
    assert!(
        table.contains("vxmesh/kernel") && table.contains("TCP 1 stream"),
        "{table}"
    );
    let png = std::fs::metadata(out.0.join("overlay.png")).expect("overlay.png");
    assert!(png.len() > 1000, "overlay.png is {} bytes", png.len());

    // perf is installed by tests/run.sh, so the profiles are taken.
    let profile = std::fs::read_to_string(out.0.join("overlay-profile.txt"))
        .expect("overlay-profile.txt (is perf installed?)");
    for want in [
        "== kernel ==",
        "== vxmesh ==",
        "%  vxmeshd",
        "vxm-lane",
        "runs per echo",
        "vxmeshd's system calls",
        "TAP writes",
    ] {
        assert!(
            profile.contains(want),
            "no `{want}` in the profile:\n{profile}"
        );
    }
    for p in [&paths[1], &paths[3]] {
        assert_eq!(
            p["profile"]["errors"],
            Value::Array(vec![]),
            "{}",
            p["name"]
        );
    }

    assert_testbed_gone(&stderr);
}

/// `vxmesh-bench containers` in miniature (1 s runs, one round): swarm's
/// overlay, vxmesh containers and vxmesh hosts each carry a transfer and
/// answer pings, `docker run` is timed on every network, the report is
/// written with its commit. Figures are not judged.
#[test]
fn containers_benchmark_measures_swarm_and_vxmesh_and_writes_its_report() {
    let args = [
        "containers",
        "--secs",
        "1",
        "--reps",
        "1",
        "--pings",
        "10",
        "--runs",
        "1",
    ];
    let Some((out, _)) = run_bench("ctr", &args, 600) else {
        return;
    };
    let j = report(&out, "containers");
    for p in paths(&j, "path", &["swarm", "vxmesh", "vxmesh-hosts"]) {
        assert!(p["tcp1_gbit"][0].as_f64().unwrap_or(0.0) > 0.0, "{p}");
        assert!(p["ping_p50_us"][0].as_f64().unwrap_or(0.0) > 0.0, "{p}");
    }
    for r in j["docker_run_s"].as_array().expect("docker runs") {
        assert!(r["seconds"][0].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    assert!(j["ratios"]["tcp1_vxmesh_over_swarm"].as_f64().is_some());
    let text = std::fs::read_to_string(out.0.join("containers.txt")).expect("containers.txt");
    assert!(
        text.contains("commit ") && text.contains("vxmesh/swarm"),
        "{text}"
    );
}

/// `vxmesh-bench encryption` in miniature (1 s runs, one round, 20 pings):
/// the plain and the encrypted vxmesh network and the wireguard-go tunnel
/// each carry TCP (1 stream and -P 2) and UDP and answer pings, the
/// sessions were established and the cipher is named, the report is
/// written with its commit and its ratios, and the namespaces are gone.
/// Figures are not judged.
#[test]
fn encryption_benchmark_measures_plain_encrypted_and_wireguard_and_writes_its_report() {
    let tiny = ["encryption", "--secs", "1", "--reps", "1", "--pings", "20"];
    let Some((out, stderr)) = run_bench("enc", &tiny, 300) else {
        return;
    };
    let j = report(&out, "encryption");
    let paths = paths(&j, "name", &["plain", "encrypted", "wireguard-go"]);
    for p in paths {
        let name = &p["name"];
        for key in ["tcp1", "tcp2"] {
            let gbit = p[key][0]["gbit_per_s"].as_f64().unwrap_or(0.0);
            assert!(gbit > 0.0, "{name}: no {key} figure: {}", p[key]);
        }
        let pps = p["udp64"][0]["rx_pps"].as_f64().unwrap_or(0.0);
        assert!(pps > 0.0, "{name}: no UDP figure: {}", p["udp64"]);
        assert!(
            p["ping"][0]["received"].as_u64().unwrap_or(0) > 0,
            "{name}: no ping replies: {}",
            p["ping"][0]
        );
        assert_eq!(p["errors"], Value::Array(vec![]), "{name}");
    }
    assert_eq!(
        paths[1]["mtu"], paths[2]["mtu"],
        "WireGuard's MTU is the encrypted network's"
    );
    let cipher = j["in_effect"]["cipher"]
        .as_str()
        .expect("a cipher in effect");
    assert!(
        ["aes-256-gcm", "chacha20-poly1305"].contains(&cipher),
        "{cipher}"
    );
    assert!(j["commit"].as_str().is_some_and(|c| !c.is_empty()));
    let cost = &j["encryption_cpu_cost_cores_per_gbit_per_s"];
    assert!(cost.as_f64().is_some(), "CPU cost of encryption: {cost}");
    let goals = j["goals"].as_array().expect("goals");
    assert!(
        goals.iter().all(|g| g["ratio"].as_f64().is_some()),
        "every goal has its ratio: {goals:?}"
    );
    let text = std::fs::read_to_string(out.0.join("encryption.txt")).expect("encryption.txt");
    for want in [
        "commit ",
        "encrypted/plain",
        "encrypted/wireguard-go",
        "in effect: cipher ",
        "encryption's CPU cost: ",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }

    // The testbed is gone, and so are wireguard-go's control sockets.
    let suffix = assert_testbed_gone(&stderr);
    let tail = suffix.split_once('-').map_or(&*suffix, |(_, t)| t);
    let sockets = std::fs::read_dir("/var/run/wireguard")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("wg{tail}h")))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(sockets.is_empty(), "wireguard-go sockets left: {sockets:?}");
}

/// `vxmesh-bench mesh` in miniature (1 s runs, one round, no warm-up) on
/// the systems that share the overlay's port and addresses: nft's DNAT over
/// the kernel's vxlan, and the mesh as deployed (the relay) and without the
/// relay. Each serves every run; the deployed mesh sends its connections
/// through the task nodes' relays and the other does not; the goals are
/// reported; the testbed is gone. Figures are not judged.
#[test]
fn mesh_benchmark_measures_nft_over_the_kernel_vxlan_and_the_mesh_with_and_without_the_relay() {
    let names = ["nft-overlay", "vxmesh-overlay-norelay", "vxmesh-overlay"];
    let systems = names.join(",");
    let args = [
        "mesh",
        "--systems",
        &systems,
        "--secs",
        "1",
        "--reps",
        "1",
        "--warmup",
        "0",
    ];
    let Some((out, stderr)) = run_bench("mesh", &args, 500) else {
        return;
    };
    let j = report(&out, "mesh");
    let all = j["systems"].as_array().expect("systems");
    let find = |name: &str| {
        all.iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no system {name}"))
    };
    for name in names {
        let s = find(name);
        assert_eq!(s["errors"], Value::Array(vec![]), "{name}");
        for t in s["tests"].as_array().expect("tests") {
            let v = t["reps"][0]["value"].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{name}: no figure: {t}");
        }
    }
    let relayed = |name: &str| {
        find(name)["setup"]["h1: connections relayed through the task nodes in round 1"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no relay count"))
    };
    assert!(relayed("vxmesh-overlay") > 0);
    assert_eq!(relayed("vxmesh-overlay-norelay"), 0);
    let dev = find("nft-overlay")["setup"]["h1: ip -d link show vxk0"]
        .as_str()
        .unwrap_or_default();
    assert!(dev.contains("vxlan id 4096"), "{dev}");
    for key in ["iperf_gbit_per_s", "keepalive_1m_mb_per_s"] {
        let g = &j["summary"][key]["vxmesh-overlay goal"];
        assert_eq!(g["of"], "nft-overlay", "{key}");
        assert!(g["ratio"].as_f64().is_some(), "{key}: {g}");
    }
    let text = std::fs::read_to_string(out.0.join("mesh.txt")).expect("mesh.txt");
    for want in [
        "iperf3 TCP 1 stream, Gbit/s: vxmesh-overlay / nft-overlay",
        "the relay, vxmesh-overlay / vxmesh-overlay-norelay",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // perf is installed by tests/run.sh: the profiled systems have
    // profiles, the mesh's with its system calls by kind.
    let profile = std::fs::read_to_string(out.0.join("mesh-profile.txt"))
        .expect("mesh-profile.txt (is perf installed?)");
    for want in [
        "== nft-overlay ==",
        "== vxmesh-overlay ==",
        "new connections",
        "%  vxmeshd",
        "%  connect",
        "%  wrk (the client)",
    ] {
        assert!(profile.contains(want), "no {want:?} in\n{profile}");
    }
    for name in names {
        assert_eq!(
            find(name)["profile"]["errors"],
            Value::Array(vec![]),
            "{name}"
        );
    }
    assert_testbed_gone(&stderr);
}
