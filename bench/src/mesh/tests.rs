use super::*;

fn args(quick: bool) -> MeshArgs {
    MeshArgs {
        secs: None,
        reps: None,
        warmup: None,
        connections: 16,
        out: "x".into(),
        quick,
        systems: Vec::new(),
        no_profile: false,
    }
}

#[test]
fn quick_and_explicit_settings() {
    let s = Settings::from_args(&args(false));
    assert_eq!((s.secs, s.reps, s.warmup), (10, 3, 3));
    let s = Settings::from_args(&args(true));
    assert_eq!((s.secs, s.reps, s.warmup), (2, 1, 1));
    let a = MeshArgs {
        secs: Some(5),
        warmup: Some(0),
        ..args(true)
    };
    let s = Settings::from_args(&a);
    assert_eq!((s.secs, s.warmup), (5, 0));
    assert!(s.estimate() > Duration::from_secs(6 * 4 * 5));
}

#[test]
fn wrk_totals() {
    let out = "Running 10s test @ http://198.18.0.1:8080/1k\n  1 threads\n\
               WRKJSON {\"requests\":70000,\"bytes\":80000000,\"duration_us\":10000000,\
               \"connect\":0,\"read\":2,\"write\":0,\"status\":1,\"timeout\":0,\
               \"lat_p50_us\":210,\"lat_p99_us\":900}\n";
    let f = parse_wrk(out).unwrap();
    assert_eq!((f.requests, f.bytes), (70_000, 80_000_000));
    assert!((f.req_per_s - 7000.0).abs() < 1e-9);
    assert!((f.mb_per_s - 8.0).abs() < 1e-9);
    assert_eq!(f.errors.total(), 3);
    assert_eq!(
        wrk_error_total(&serde_json::to_value(&f.errors).unwrap()),
        3
    );
    assert!(parse_wrk("Requests/sec: 1\n").is_err());
    assert!(parse_wrk("WRKJSON {\"requests\":1}\n").is_err());
}

#[test]
fn configs() {
    assert!(haproxy_cfg(true).contains("option splice-auto"));
    assert!(!haproxy_cfg(false).contains("splice-auto"));
    for cfg in [haproxy_cfg(false), CLUSTER.to_string()] {
        // iperf3's servers are probed on the HTTP port, never their own.
        assert!(!cfg.contains(&format!("check port {IPERF_TASK}")));
    }
    assert!(haproxy_cfg(false).contains("balance source"));
    assert!(CLUSTER.contains("balance = \"maglev\""));
    assert!(CLUSTER.contains("port = 8000"));
    // As deployed: the default relay port, nothing set.
    assert!(!CLUSTER.contains("mesh_relay_port"));
    let norelay = cluster_norelay();
    assert!(
        norelay.contains("[settings]\nmesh_relay_port = 0\n"),
        "{norelay}"
    );
    assert_eq!(norelay.replace("mesh_relay_port = 0\n", ""), CLUSTER);
    let (ul, ov) = (nft_rules(false), nft_rules(true));
    for rules in [&ul, &ov] {
        assert!(rules.contains("jhash ip saddr mod 2"), "{rules}");
        assert!(
            rules.contains("ip daddr 198.18.0.1 tcp dport 8080 dnat to numgen random mod 2"),
            "{rules}"
        );
    }
    assert!(
        ul.contains("{ 0 : 198.18.0.2, 1 : 198.18.0.3 } : 5301"),
        "{ul}"
    );
    assert!(ul.contains("oifname \"eth0\" masquerade"), "{ul}");
    assert!(ov.contains("{ 0 : 10.0.9.2, 1 : 10.0.9.3 } : 8000"), "{ov}");
    assert!(
        ov.contains("ip daddr { 10.0.9.2, 10.0.9.3 } oifname \"vxk0\" masquerade"),
        "{ov}"
    );
    assert_eq!(
        ul.replace("198.18.0.2", "10.0.9.2")
            .replace("198.18.0.3", "10.0.9.3")
            .replace("\"eth0\"", "\"vxk0\""),
        ov
    );
    assert!(WRK_LUA.contains("WRKJSON "));
}

fn rep(v: Option<f64>, balancer: Option<f64>) -> Rep {
    Rep {
        rep: 1,
        error: v.is_none().then(|| "boom".to_string()),
        value: v,
        wall_s: 10.0,
        host_cpu_s: 10.0,
        balancer_cpu_s: balancer,
        detail: Value::Null,
    }
}

fn system(name: &'static str, base: f64) -> SystemResult {
    let mut s = SystemResult::new(name, UL[0], HTTP_PUB, IPERF_PUB);
    for (i, t) in s.tests.iter_mut().enumerate() {
        let v = base * (i + 1) as f64;
        t.reps = vec![
            rep(Some(v), Some(5.0)),
            rep(Some(v * 2.0), Some(5.0)),
            rep(Some(v * 3.0), Some(5.0)),
            rep(None, None),
        ];
    }
    s
}

#[test]
fn medians_ratios_goals_and_table() {
    // Bases in SYSTEMS order: direct, nft, nft-overlay, haproxy,
    // haproxy-splice, vxmesh-underlay, vxmesh-overlay-norelay, vxmesh-overlay.
    let results: Vec<SystemResult> = SYSTEMS
        .iter()
        .zip([10.0, 8.0, 5.0, 4.0, 5.0, 6.0, 2.0, 3.0])
        .map(|(n, b)| system(n, b))
        .collect();
    let sum = summary(&results);
    let t = &sum["iperf_gbit_per_s"];
    assert_eq!(t["haproxy-splice"], json!(10.0));
    assert_eq!(t["vxmesh-underlay/haproxy-splice"], json!(1.2));
    assert_eq!(t["vxmesh-overlay/haproxy"], json!(0.75));
    assert_eq!(t["vxmesh-overlay/nft-overlay"], json!(0.6));
    assert_eq!(t["vxmesh-overlay/vxmesh-overlay-norelay"], json!(1.5));
    // The goals are the deployed mesh's: 3/5 of nft-overlay < 1.0.
    assert_eq!(t["vxmesh-overlay goal"]["of"], json!("nft-overlay"));
    assert_eq!(t["vxmesh-overlay goal"]["met"], json!(false));
    assert!(t.get("vxmesh-underlay goal").is_none());
    // new conn/s: 3/4 of haproxy < 1.2.
    let c = &sum["new_conn_per_s"]["vxmesh-overlay goal"];
    assert_eq!((&c["of"], &c["met"]), (&json!("haproxy"), &json!(false)));
    assert_eq!(sum["iperf_balancer_cpu_percent"]["haproxy"], json!(50.0));
    assert!(sum["iperf_machine_busy_percent"]
        .get("vxmesh-underlay/nft")
        .is_none());
    let machine = Machine::probe();
    let tools = Tools {
        haproxy: "h".into(),
        nft: "n".into(),
        wrk: "w".into(),
    };
    let text = table(
        &Settings::from_args(&args(true)),
        &machine,
        &tools,
        &results,
    );
    for want in [
        "iperf3 TCP 1 stream, Gbit/s, vxmesh-underlay",
        "keep-alive MB/s (1 MiB), vxmesh-overlay-norelay",
        "/nft-overlay",
        "iperf3 TCP 1 stream, Gbit/s: vxmesh-overlay / nft-overlay",
        "new conn/s (close, 1 KiB): vxmesh-overlay / haproxy",
        "keep-alive MB/s (1 MiB): vxmesh-overlay / nft-overlay",
        "the relay, vxmesh-overlay / vxmesh-overlay-norelay: iperf3 TCP 1 stream, Gbit/s 1.500",
        "FAILURES (32)",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    assert_eq!(text.matches("not met").count(), 3, "{text}");
    // A goal met: the deployed mesh at 7.2 x haproxy's 6 new conn/s.
    let mut better = results;
    better[7] = system("vxmesh-overlay", 6.0);
    let text = table(&Settings::from_args(&args(true)), &machine, &tools, &better);
    assert_eq!(text.matches("goal met").count(), 3, "{text}");
    let p = panels(&better);
    assert_eq!(p.len(), 4);
    assert_eq!(p[0].groups[5], ("vxm-ul".to_string(), vec![Some(12.0)]));
    assert_eq!(p[0].groups[2].0, "nft-ov");
    assert!(legend(&p).contains("bottom right panel: keep-alive MB/s"));
    serde_json::to_string(&better).unwrap();
}
