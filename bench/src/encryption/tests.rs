use super::*;
use crate::iperf::Outcome;

/// Settings from the command line `args` (after the subcommand).
fn settings(args: &[&str]) -> Settings {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: EncryptionArgs,
    }
    Settings::from_args(&Cli::parse_from([&["encryption"][..], args].concat()).a)
}

#[test]
fn settings_and_the_udp_load() {
    let full = settings(&[]);
    let quick = settings(&["--quick", "--reps", "5"]);
    assert_eq!(
        [
            (full.secs, full.reps, full.pings),
            (quick.secs, quick.reps, quick.pings)
        ],
        [(10, 3, 1000), (2, 5, 200)]
    );
    assert_eq!(full.out, PathBuf::from("bench/results"));
    // iperf3's -b counts payload bits: 150 kpps of 64 B.
    let udp = Mode::Udp {
        len: 64,
        rate: "76800000".into(),
    };
    assert_eq!((full.udp_pps, full.udp_mode()), (150_000, udp));
}

#[test]
fn the_cluster_has_both_networks_and_the_keys() {
    let keys = ["KEY1=".to_string(), "KEY2=".to_string()];
    let c = cluster(&keys).unwrap();
    assert!(
        c.contains("address = \"198.18.0.1\"\npublic_key = \"KEY1=\"\n"),
        "{c}"
    );
    assert!(
        c.contains("address = \"198.18.0.2\"\npublic_key = \"KEY2=\"\n"),
        "{c}"
    );
    assert!(c.contains("name = \"front\"") && c.contains("vni = 4096"));
    assert!(
        c.contains("name = \"sealed\"\nvni = 4100\nsubnet = \"10.0.10.0/24\"\nencrypted = true")
    );
    assert_eq!(c.matches("network = \"sealed\"").count(), 2);
    assert!(c.contains("ip = \"10.0.10.2\""));
}

#[test]
fn status_parsing() {
    let status = json!({
        "networks": [
            {"name": "front", "mtu": 1450, "tap": "vxm-front"},
            {"name": "sealed", "mtu": 1418, "tap": "vxm-sealed"},
        ],
        "encryption": {"peers": [
            {"address": "198.18.0.2", "state": "established", "cipher": "aes-256-gcm"},
        ]},
    });
    assert_eq!(network_mtu(&status, "sealed"), Some(1418));
    assert_eq!(network_mtu(&status, "front"), Some(1450));
    assert_eq!(network_mtu(&status, "other"), None);
    assert_eq!(
        network_tap(&status, "sealed").as_deref(),
        Some("vxm-sealed")
    );
    assert_eq!(
        sessions(&status),
        vec![(
            "198.18.0.2".to_string(),
            "established".to_string(),
            Some("aes-256-gcm".to_string())
        )]
    );
    assert!(sessions(&Value::Null).is_empty());
}

#[test]
fn goals() {
    let g = Goal::at_least(0.7).unwrap();
    assert!(g.met(0.7) && !g.met(0.69));
    assert_eq!(g.want(), ">= 0.7");
    let g = Goal::at_most(1.2).unwrap();
    assert!(g.met(1.2) && !g.met(1.21));
    assert_eq!(g.want(), "<= 1.2");
}

/// A run with half the machine's CPU in the watched processes.
fn outcome(gbit: f64, pps: Option<f64>, cpu_s: f64) -> Outcome {
    Outcome {
        watched_cpu_s: Some(cpu_s / 2.0),
        ..iperf::test_outcome(gbit, pps, cpu_s)
    }
}

fn path(name: &'static str, gbit: f64, pps: f64, p50_us: f64, cpu_s: f64) -> PathResult {
    let mut p = PathResult::new(name, Ipv4Addr::new(10, 0, 9, 2), "vxmeshd");
    for rep in 1..=3 {
        let g = gbit * (0.9 + 0.05 * f64::from(rep));
        p.tcp1.push(Rep::new(rep, Ok(outcome(g, None, cpu_s))));
        p.tcp2.push(Rep::new(rep, Ok(outcome(g, None, cpu_s))));
        p.udp64
            .push(Rep::new(rep, Ok(outcome(0.05, Some(pps), cpu_s))));
        p.ping.push(PingRep {
            rep,
            error: None,
            sent: 10,
            received: 10,
            p50_us: Some(p50_us),
            p99_us: Some(2.0 * p50_us),
            avg_us: Some(p50_us),
            rtt_us: vec![p50_us; 10],
        });
    }
    p.udp64
        .push(Rep::new(4, Err(anyhow::anyhow!("iperf3 timed out"))));
    p
}

#[test]
fn ratios_goals_cost_and_table() {
    let run = Run {
        paths: vec![
            path("plain", 10.0, 100_000.0, 70.0, 20.0),
            path("encrypted", 8.0, 90_000.0, 80.0, 20.0),
            path("wireguard-go", 2.0, 60_000.0, 100.0, 10.0),
        ],
        in_effect: InEffect {
            cipher: Some("aes-256-gcm".into()),
            ..Default::default()
        },
    };
    let sum = summary(&run.paths);
    let t = &sum["tcp1_gbit_per_s"];
    assert_eq!(t["plain"], json!(10.0));
    assert!((t["encrypted/plain"].as_f64().unwrap() - 0.8).abs() < 1e-9);
    assert!((t["encrypted/wireguard-go"].as_f64().unwrap() - 4.0).abs() < 1e-9);
    assert_eq!(sum["udp64_loss_percent"]["encrypted/plain"], Value::Null);
    assert!((sum["ping_p50_ms"]["encrypted"].as_f64().unwrap() - 0.08).abs() < 1e-12);
    // CPU per Gbit/s: 20 CPU s over 80 Gbit against 20 over 100.
    let cost = encryption_cpu_cost(&run.paths).unwrap();
    assert!((cost - (0.25 - 0.2)).abs() < 1e-9, "{cost}");
    let goals = goals_json(&run.paths);
    let goals = goals.as_array().unwrap();
    assert_eq!(goals.len(), 7);
    assert!(goals.iter().all(|g| g["met"] == true), "{goals:?}");
    let machine = Machine::probe();
    let text = table(&settings(&["--quick"]), &machine, "abc1234", &run);
    for want in [
        "commit abc1234",
        "encrypted/plain",
        "encrypted/wireguard-go",
        ">= 0.7 met",
        "<= 1.2 met",
        "cipher aes-256-gcm",
        "encryption's CPU cost: +0.050 cores per Gbit/s",
        "goals (issue): 7 of 7 met",
        "FAILURES (3)",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // A path far behind misses its goals.
    let mut slow = run;
    slow.paths[1] = path("encrypted", 5.0, 90_000.0, 100.0, 20.0);
    let text = table(&settings(&["--quick"]), &machine, "x", &slow);
    assert!(
        text.contains(">= 0.7 MISSED") && text.contains("<= 1.2 MISSED"),
        "{text}"
    );
    assert!(!slow.paths[1].no_data());
    assert!(PathResult::new("plain", Ipv4Addr::new(10, 0, 9, 2), "vxmeshd").no_data());
    serde_json::to_string(&slow.paths).unwrap();
}
