use super::*;

fn args(quick: bool) -> OverlayArgs {
    OverlayArgs {
        rounds: RoundArgs {
            quick,
            ..Default::default()
        },
        udp_rate: "2G".into(),
        out: "x".into(),
        queues: None,
        busy_poll_us: None,
        no_profile: false,
    }
}

#[test]
fn queues_reach_the_cluster_file_only_when_given() {
    let s = Settings::from_args(&args(true));
    assert_eq!(s.cluster(), CLUSTER);
    let mut a = args(true);
    a.queues = Some(1);
    let c = Settings::from_args(&a).cluster();
    assert!(c.contains("underlay_mtu = 1500\nqueues = 1\n"), "{c}");
}

#[test]
fn rates() {
    assert_eq!(rate_bps("2G"), Some(2e9));
    assert_eq!(rate_bps("500m"), Some(5e8));
    assert_eq!(rate_bps("1000"), Some(1000.0));
    assert_eq!(rate_bps("fast"), None);
}

#[test]
fn quick_and_explicit_settings() {
    let s = Settings::from_args(&args(false));
    assert_eq!((s.secs, s.reps, s.pings), (10, 3, 1000));
    let s = Settings::from_args(&args(true));
    assert_eq!((s.secs, s.reps, s.pings), (2, 1, 200));
    let mut a = args(true);
    a.rounds.secs = Some(5);
    assert_eq!(Settings::from_args(&a).secs, 5);
}

#[test]
fn cluster_file_has_two_nodes_on_the_bench_addresses() {
    let count = |h: &str| CLUSTER.lines().filter(|l| l.trim() == h).count();
    assert_eq!(count("[[nodes]]"), 2);
    assert_eq!(count("[[endpoints]]"), 2);
    assert!(CLUSTER.contains("198.18.0.1") && CLUSTER.contains("198.18.0.2"));
    assert!(CLUSTER.contains("vni = 4096") && CLUSTER.contains("10.0.9.0/24"));
    assert!(!CLUSTER.contains("name = \"h3\""));
}

fn path(name: &'static str, gbit: [f64; 3]) -> PathResult {
    let mut p = PathResult::new(name, OV[1], "2G", 10);
    p.tests[0] = TestResult {
        key: "tcp1",
        mode: Mode::Tcp { parallel: 1 },
        secs: 10,
        reps: gbit
            .iter()
            .enumerate()
            .map(|(i, g)| Rep {
                rep: i as u32 + 1,
                error: None,
                outcome: Some(iperf::test_outcome(*g, None, 10.0)),
            })
            .chain(std::iter::once(Rep {
                rep: 4,
                error: Some("timeout".into()),
                outcome: None,
            }))
            .collect(),
    };
    p
}

#[test]
fn the_cpu_panel_comes_from_the_tcp_profiles() {
    let mut results = vec![path("kernel", [1.0; 3]), path("vxmesh", [1.0; 3])];
    assert_eq!(panels(&results).len(), 3, "no profile, no panel");
    let report = " 30.00% |iperf3 |[kernel.kallsyms] |[k] _copy_from_iter
 20.00% |swapper |[kernel.kallsyms] |[k] pv_native_safe_halt
 10.00% |vxm-lane-0 |[kernel.kallsyms] |[k] _copy_to_iter
 15.00% |vxm-lane-1 |[kernel.kallsyms] |[k] udp_sendmsg
 5.00% |vxm-lane-1 |vxmeshd |[.] lane_loop
 4.00% |vxm-lane-1 |libc.so.6 |[.] __memmove_avx512_unaligned_erms
";
    results[1].profile = Some(PathProfile {
        cpu: vec![CpuProfile::from_report("TCP 1 stream", "x".into(), report)],
        ..Default::default()
    });
    let p = panels(&results).pop().unwrap();
    assert!(p.title.starts_with("CPU in TCP 1 stream"));
    let got: Vec<(&str, Option<f64>)> = p.groups.iter().map(|(g, v)| (g.as_str(), v[1])).collect();
    assert_eq!(
        got,
        vec![
            ("iperf3", Some(30.0)),
            ("vxmeshd copy", Some(10.0)),
            ("vxmeshd kern", Some(15.0)),
            ("vxmeshd user", Some(9.0)),
            ("idle", Some(20.0)),
        ]
    );
    assert!(
        p.groups.iter().all(|(_, v)| v[0].is_none()),
        "kernel not profiled"
    );
}

#[test]
fn medians_ratios_and_table() {
    let results = vec![
        path("underlay", [20.0, 22.0, 21.0]),
        path("kernel", [16.0, 17.0, 18.0]),
        path("kernel-nooffload", [3.0, 3.2, 3.4]),
        path("vxmesh", [0.8, 0.9, 0.85]),
    ];
    let sum = summary(&results);
    let t = &sum["tcp1_gbit_per_s"];
    assert_eq!(t["kernel"], json!(17.0));
    assert!((t["vxmesh/kernel"].as_f64().unwrap() - 0.85 / 17.0).abs() < 1e-12);
    assert!((t["vxmesh/kernel-nooffload"].as_f64().unwrap() - 0.85 / 3.2).abs() < 1e-12);
    assert_eq!(sum["udp64_loss_percent"]["vxmesh/kernel"], Value::Null);
    let machine = Machine::probe();
    let text = table(&Settings::from_args(&args(true)), &machine, &results);
    assert!(text.contains("TCP 1 stream, Gbit/s"), "{text}");
    assert!(text.contains("0.050"), "{text}");
    assert!(text.contains("FAILURES (4)"), "{text}");
    let p = panels(&results);
    assert_eq!(
        p[0].groups[3],
        ("vxmesh".to_string(), vec![Some(0.85), None])
    );
    assert!(legend(&p).contains("orange bars: -P 2"));
    // The report serialises.
    serde_json::to_string(&results).unwrap();
}
