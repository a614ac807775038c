//! The benchmarks end to end, in miniature (the overlay one here first): `vxmesh-bench overlay`
//! with 1 s runs, one round and 20 pings, so that the command the README
//! gives keeps working from a clean checkout. Its figures are not judged
//! here (speed is measured in `bench/`, never in tests): the test checks
//! that it measures every path, profiles the kernel's vxlan and vxmesh,
//! writes its table, JSON, chart and profile, and removes its namespaces.

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

#[test]
fn overlay_benchmark_measures_every_path_and_writes_its_report() {
    if !require_root() {
        return;
    }
    let out =
        OutDir(std::env::temp_dir().join(format!("vxmesh-bench-smoke-{}", std::process::id())));
    let bench = workspace_bin("vxmesh-bench");
    // Every step of the benchmark is bounded; `timeout` bounds the whole.
    let run = Command::new("timeout")
        .arg("600")
        .arg(&bench)
        .args([
            "overlay", "--secs", "1", "--reps", "1", "--pings", "20", "--out",
        ])
        .arg(&out.0)
        .output()
        .expect("run vxmesh-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "vxmesh-bench overlay failed: {}\n{stderr}",
        run.status
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.0.join("overlay.json")).expect("overlay.json"))
            .expect("overlay.json is JSON");
    let paths = report["paths"].as_array().expect("paths");
    let names: Vec<&str> = paths.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["underlay", "kernel", "kernel-nooffload", "vxmesh"]);
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

    // The testbed the benchmark named on stderr is gone.
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
}

/// `vxmesh-bench containers` in miniature (1 s runs, one round): swarm's
/// overlay, vxmesh containers and vxmesh hosts each carry a transfer and
/// answer pings, `docker run` is timed on every network, the report is
/// written with its commit. Figures are not judged.
#[test]
fn containers_benchmark_measures_swarm_and_vxmesh_and_writes_its_report() {
    if !require_root() {
        return;
    }
    let out =
        OutDir(std::env::temp_dir().join(format!("vxmesh-bench-ctr-smoke-{}", std::process::id())));
    let run = Command::new("timeout")
        .arg("600")
        .arg(workspace_bin("vxmesh-bench"))
        .args([
            "containers",
            "--secs",
            "1",
            "--reps",
            "1",
            "--pings",
            "10",
            "--runs",
            "1",
            "--out",
        ])
        .arg(&out.0)
        .output()
        .expect("run vxmesh-bench");
    assert!(
        run.status.success(),
        "vxmesh-bench containers failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let j: Value = serde_json::from_slice(
        &std::fs::read(out.0.join("containers.json")).expect("containers.json"),
    )
    .expect("containers.json is JSON");
    let paths = j["paths"].as_array().expect("paths");
    let names: Vec<&str> = paths.iter().filter_map(|p| p["path"].as_str()).collect();
    assert_eq!(names, ["swarm", "vxmesh", "vxmesh-hosts"]);
    for p in paths {
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
