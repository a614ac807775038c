//! The measuring loop of `mesh`: every system in turn, its rounds, and
//! the state the testbed is left in between.

use super::*;

/// Builds the testbed and measures every system, in rounds (each round
/// measures every system once, so that a passing load on the machine is
/// spread over all of them). The testbed is gone when this returns.
pub(crate) fn measure_all(
    s: &Settings,
    clk_tck: f64,
    vxmeshd: &Path,
    backend: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<SystemResult>> {
    let mut tb = Testbed::new("mesh")?;
    eprintln!("testbed {} (temp dir {})", tb.suffix(), tb.dir().display());
    for (i, ul) in UL.iter().enumerate() {
        tb.add_host(&format!("h{}", i + 1), &format!("{ul}/24"), UNDERLAY_MTU)?;
    }
    tb.add_host("cl", CLIENT, UNDERLAY_MTU)?;
    for ns in ["cl", "h1", "h2", "h3"] {
        for kv in SYSCTLS {
            run(&tb, ns, &["sysctl", "-q", "-w", kv])?;
        }
    }
    // The tasks: the HTTP server on every address of h2 and h3.
    let bin = backend.to_str().context("backend path is not UTF-8")?;
    let listen = format!("0.0.0.0:{HTTP_TASK}");
    for (h, name) in [("h2", "task2"), ("h3", "task3")] {
        let p = tb.spawn(h, &[bin, "--listen", &listen, "--name", name], &[])?;
        iperf::wait_listening(&p, HTTP_TASK, Duration::from_secs(10))?;
    }
    let dir = tb.dir().to_path_buf();
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let script = write("report.lua", WRK_LUA)?;
    let nft = write("vxbench.nft", NFT_RULES)?;
    let hap = write("haproxy.cfg", &haproxy_cfg(false))?;
    let hap_splice = write("haproxy-splice.cfg", &haproxy_cfg(true))?;
    let ctx = Ctx {
        s,
        clk_tck,
        script: script.to_str().context("temp path is not UTF-8")?.into(),
    };
    let h1 = |name| SystemResult::new(name, UL[0], HTTP_PUB, IPERF_PUB);
    let mut direct = SystemResult::new("direct", UL[1], HTTP_TASK, IPERF_TASK);
    let mut nftr = h1("nft");
    let mut haproxy = h1("haproxy");
    let mut splice = h1("haproxy-splice");
    let mut vx_ul = h1("vxmesh-underlay");
    let mut vx_ov = h1("vxmesh-overlay");
    nftr.setup.insert("ruleset".into(), NFT_RULES.into());
    haproxy
        .setup
        .insert("config".into(), haproxy_cfg(false).into());
    splice
        .setup
        .insert("config".into(), haproxy_cfg(true).into());
    vx_ul.setup.insert("cluster".into(), CLUSTER.into());
    vx_ov.setup.insert("cluster".into(), CLUSTER.into());
    let cli = vxmeshd.with_file_name("vxmesh");
    for h in ["h1", "h2", "h3"] {
        let _ = std::fs::remove_file(s.out.join(format!("mesh-vxmeshd-{h}.log")));
    }
    let balanced: &'static [&'static str] = &["h2", "h3"];
    let target = |addr, http, iperf, tasks, watch| Target {
        addr,
        http,
        iperf,
        iperf_servers: balanced,
        tasks,
        watch,
    };
    let mut tap_moved: [Vec<u64>; 2] = [Vec::new(), Vec::new()];

    for round in 1..=s.reps {
        eprintln!("--- round {round}/{} ---", s.reps);
        // (a) direct: the client straight to the task on h2.
        if s.wants("direct") {
            let t = Target {
                iperf_servers: &["h2"],
                ..target(UL[1], HTTP_TASK, IPERF_TASK, 1, vec![])
            };
            ctx.measure_round(&mut tb, &mut direct, round, &t);
        }

        // (c) HAProxy, without and with splice-auto.
        for (r, cfg) in [(&mut haproxy, &hap), (&mut splice, &hap_splice)] {
            if !s.wants(r.name) {
                continue;
            }
            if r.name == "haproxy" {
                tw_gone(&tb, r.name, round, notes)?;
            }
            match haproxy_up(&mut tb, cfg) {
                Ok(p) => {
                    let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, vec![p.pid]);
                    ctx.measure_round(&mut tb, r, round, &t);
                    if let Some(st) = p.exit_status() {
                        r.fail(
                            round,
                            format!("HAProxy exited during the runs: {st}: {}", p.log_tail(10)),
                        );
                    }
                    if !tb.stop(&p) {
                        bail!("HAProxy (pid {}) could not be stopped", p.pid);
                    }
                }
                Err(e) => r.fail(round, format!("{e:#}")),
            }
        }

        // (d) vxmesh: the full path over the overlay, then the mesh over
        // the underlay (host routes in h1).
        let mut last_round = false;
        'vx: {
            if !VXMESH.iter().any(|v| s.wants(v)) {
                break 'vx;
            }
            let daemons = match vxmesh_up(&mut tb, vxmeshd, &cli) {
                Ok(d) => d,
                Err(e) => {
                    vx_ov.fail(round, format!("{e:#}"));
                    vx_ul.fail(round, format!("{e:#}"));
                    break 'vx;
                }
            };
            let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
            for (i, r) in [&mut vx_ov, &mut vx_ul].into_iter().enumerate() {
                if !s.wants(r.name) {
                    continue;
                }
                let underlay = i == 1;
                if underlay {
                    if let Err(e) = underlay_routes(&tb, true) {
                        r.fail(round, format!("{e:#}"));
                        continue;
                    }
                }
                if round == 1 {
                    for dst in [OV[1], OV[2]] {
                        let d = dst.to_string();
                        if let Ok(route) = run(&tb, "h1", &["ip", "route", "get", &d]) {
                            r.setup
                                .insert(format!("h1: ip route get {d}"), route.trim().into());
                        }
                    }
                }
                let before = tap_bytes(&tb);
                let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, pids.clone());
                ctx.measure_round(&mut tb, r, round, &t);
                if let (Some(a), Some(b)) = (before, tap_bytes(&tb)) {
                    tap_moved[i].push(b.saturating_sub(a));
                }
                if let Ok(v) = cli_json(&tb, &cli, &daemons[0].2, &["service", "ps", "web"]) {
                    r.setup
                        .insert(format!("h1: service ps web after round {round}"), v);
                }
                if underlay {
                    if let Err(e) = underlay_routes(&tb, false) {
                        notes.push(format!("round {round}: {e:#}"));
                    }
                }
            }
            let mut stopped = true;
            for (h, p, _) in &daemons {
                if let Some(st) = p.exit_status() {
                    notes.push(format!(
                        "round {round}: vxmeshd in {h} exited during the runs: {st}"
                    ));
                }
                stopped &= tb.stop(p);
                let dest = s.out.join(format!("mesh-vxmeshd-{h}.log"));
                if let Err(e) = append_log(&p.log, &dest, round) {
                    notes.push(format!("could not copy {}: {e}", p.log.display()));
                }
            }
            if !stopped {
                notes.push(format!(
                    "round {round}: a vxmeshd could not be stopped; no further rounds"
                ));
                last_round = true;
            }
        }

        // (e) nftables DNAT in h1, last (see `tw_gone`: the fewer the
        // switches between nft and HAProxy, the fewer the waits).
        if s.wants("nft") {
            tw_gone(&tb, "nft", round, notes)?;
            let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, vec![]);
            let nft_s = nft.to_str().context("temp path is not UTF-8")?;
            let up = run(&tb, "h1", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
                .and_then(|_| run(&tb, "h1", &["nft", "-f", nft_s]));
            match up {
                Ok(_) => ctx.measure_round(&mut tb, &mut nftr, round, &t),
                Err(e) => nftr.fail(round, format!("{e:#}")),
            }
            if let Ok(c) = run(
                &tb,
                "h1",
                &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
            ) {
                nftr.setup.insert(
                    format!("h1 conntrack entries after round {round}"),
                    c.trim().into(),
                );
            }
            // Removed whatever happened: the next systems listen on h1's ports.
            let _ = run(&tb, "h1", &["nft", "delete", "table", "ip", "vxbench"]);
            run(&tb, "h1", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
        }

        if last_round {
            break;
        }
    }
    for (i, name) in ["vxmesh-overlay", "vxmesh-underlay"].iter().enumerate() {
        if !tap_moved[i].is_empty() {
            let mb: Vec<String> = tap_moved[i]
                .iter()
                .map(|b| format!("{:.0}", *b as f64 / 1e6))
                .collect();
            notes.push(format!(
                "{name}: h1's TAP moved {} MB per round (rx + tx){}",
                mb.join(", "),
                if i == 1 {
                    ": the mesh's upstream went over eth0, only health probes and ARP on the TAP"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(vec![direct, nftr, haproxy, splice, vx_ul, vx_ov])
}
