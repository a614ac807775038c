//! `vxmesh lab`, the README's first command, run as a user runs it (the
//! built binary, `--json`): its verdicts are checked against what it
//! reports, and it must leave nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;
use vxmesh_netns::{require_root, workspace_bin};

/// Runs `vxmesh lab --json ARGS` (small transfers): its JSON report.
fn lab(args: &[&str]) -> Value {
    let out = Command::new(workspace_bin("vxmesh"))
        .args(["lab", "--json", "--bytes", "10000000"])
        .args(args)
        .output()
        .expect("run vxmesh lab");
    assert!(
        out.status.success(),
        "vxmesh lab {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json prints one document");
    assert_eq!(report["problems"], Value::Array(vec![]), "{report:#}");
    let suffix = report["suffix"].as_str().expect("a suffix").to_string();
    assert!(!suffix.is_empty());
    // Nothing left: no namespace, no plugin socket of the run.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(!ns.contains(&suffix), "namespaces left behind: {ns}");
    if let Ok(dir) = std::fs::read_dir("/run/docker/plugins") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            assert!(!name.contains(&suffix), "plugin socket left behind: {name}");
        }
    }
    assert!(
        !std::env::temp_dir()
            .join(format!("vxmesh-{suffix}"))
            .exists(),
        "the lab's directory (dockerd state, logs) was left behind"
    );
    report
}

/// Every host pair moved data and lost nothing.
fn overlay_ok(report: &Value) {
    let rows = report["overlay"].as_array().expect("overlay rows");
    assert_eq!(rows.len(), 6, "3 hosts, 6 ordered pairs: {rows:?}");
    for r in rows {
        assert_eq!(r["lost"], 0, "{r}");
        assert!(r["gbit_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn lab_with_docker_answers_through_every_node_by_containers_on_other_hosts() {
    if !require_root() {
        return;
    }
    let report = lab(&["--docker"]);
    assert_eq!(report["tasks"], "containers");
    overlay_ok(&report);
    // One container per host, each in the network, each pinging the next
    // host's container by name: resolved to its address, every ping back.
    let containers = report["containers"].as_array().expect("containers");
    let by_name: BTreeMap<&str, (&str, &str)> = containers
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                (c["host"].as_str().unwrap(), c["ip"].as_str().unwrap()),
            )
        })
        .collect();
    let hosts: BTreeSet<&str> = by_name.values().map(|v| v.0).collect();
    assert_eq!(hosts.len(), 3, "a container on every host: {containers:?}");
    for c in containers {
        assert!(c["ip"].as_str().unwrap().starts_with("10.0.9."), "{c}");
        let p = &c["ping"];
        let to = by_name[p["to"].as_str().unwrap()];
        assert_ne!(to.0, c["host"], "pinged a container on another host: {c}");
        assert_eq!(p["resolved"], to.1, "the name resolved to its address: {c}");
        assert!(p["sent"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(p["received"], p["sent"], "{c}");
    }
    // The service through every node: answered only by the containers
    // (`host/container`), among them one on another host; nothing failed.
    let mesh = &report["mesh"];
    assert_eq!(mesh["service"], "web");
    assert_eq!(mesh["tasks"], 3);
    let via = mesh["via"].as_array().expect("mesh rows");
    assert_eq!(via.len(), 3, "{via:?}");
    for row in via {
        let node = row["node"].as_str().unwrap();
        assert_eq!(row["failed"], 0, "{row}");
        let answered = row["answered"].as_object().unwrap();
        let mut other = false;
        for (by, n) in answered {
            let (host, name) = by.split_once('/').expect("host/container");
            assert_eq!(by_name.get(name).map(|v| v.0), Some(host), "{row}");
            assert!(n.as_u64().unwrap() > 0);
            other |= host != node;
        }
        assert!(
            other,
            "{node} answered by a container on another host: {row}"
        );
    }
    // Every node's DNS: tasks.web is the containers, a container's name
    // its address.
    let ips: BTreeSet<&str> = by_name.values().map(|v| v.1).collect();
    let dns = mesh["dns"].as_array().expect("dns rows");
    let mut names = 0;
    for q in dns {
        let answers: BTreeSet<&str> = q["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        match q["name"].as_str().unwrap() {
            "web" => assert_eq!(answers.len(), 1, "{q}"),
            "tasks.web" => assert_eq!(answers, ips, "{q}"),
            name => {
                names += 1;
                assert_eq!(answers, BTreeSet::from([by_name[name].1]), "{q}");
            }
        }
    }
    assert_eq!(names, 3, "each node asked for a container by name: {dns:?}");
}

#[test]
fn lab_without_docker_answers_through_every_node_by_tasks_on_other_nodes() {
    if !require_root() {
        return;
    }
    let report = lab(&[]);
    assert_eq!(report["tasks"], "host servers");
    assert!(report["containers"].is_null());
    overlay_ok(&report);
    for row in report["mesh"]["via"].as_array().expect("mesh rows") {
        let node = row["node"].as_str().unwrap();
        assert_eq!(row["failed"], 0, "{row}");
        let answered = row["answered"].as_object().unwrap();
        assert!(answered.keys().any(|h| h != node), "{row}");
    }
}
