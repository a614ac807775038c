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
    let nft = write("vxbench.nft", &nft_rules(false))?;
    let nft_ov = write("vxbench-overlay.nft", &nft_rules(true))?;
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
    let mut nft_ovr = h1("nft-overlay");
    let mut haproxy = h1("haproxy");
    let mut splice = h1("haproxy-splice");
    let mut vx_ul = h1("vxmesh-underlay");
    let mut vx_nr = h1("vxmesh-overlay-norelay");
    let mut vx_ov = h1("vxmesh-overlay");
    nftr.setup.insert("ruleset".into(), nft_rules(false).into());
    nft_ovr
        .setup
        .insert("ruleset".into(), nft_rules(true).into());
    haproxy
        .setup
        .insert("config".into(), haproxy_cfg(false).into());
    splice
        .setup
        .insert("config".into(), haproxy_cfg(true).into());
    let norelay = cluster_norelay();
    vx_ov.setup.insert("cluster".into(), CLUSTER.into());
    vx_nr.setup.insert("cluster".into(), norelay.clone().into());
    vx_ul.setup.insert("cluster".into(), norelay.clone().into());
    let cli = vxmeshd.with_file_name("vxmesh");
    for tag in ["", "-norelay"] {
        for h in ["h1", "h2", "h3"] {
            let _ = std::fs::remove_file(s.out.join(format!("mesh-vxmeshd{tag}-{h}.log")));
        }
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
    let mut traffic = Traffic::default();

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
                tw_gone(&tb, r.name, round, false, notes)?;
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

        // (d) vxmesh: as deployed (the relay on), then without the relay:
        // through the overlay, and over the underlay (host routes in h1).
        let sets = [
            (CLUSTER, "", vec![(&mut vx_ov, false)]),
            (
                norelay.as_str(),
                "-norelay",
                vec![(&mut vx_nr, false), (&mut vx_ul, true)],
            ),
        ];
        let mut last_round = false;
        for (cluster, tag, mut systems) in sets {
            let set = DaemonSet {
                vxmeshd,
                cli: &cli,
                cluster,
                tag,
            };
            last_round |= !set.measure(&ctx, &mut tb, &mut systems, round, notes, &mut traffic);
        }

        // (e) nftables DNAT in h1 to the tasks' underlay addresses, then to
        // their overlay addresses over the kernel's vxlan, last (see
        // `tw_gone`: the fewer the switches between nft and HAProxy, the
        // fewer the waits; and no vxmeshd runs now, so the kernel's devices
        // may take port 4789 and the overlay's addresses).
        for (r, overlay, rules) in [(&mut nftr, false, &nft), (&mut nft_ovr, true, &nft_ov)] {
            if !s.wants(r.name) {
                continue;
            }
            tw_gone(&tb, r.name, round, overlay, notes)?;
            let t = target(UL[0], HTTP_PUB, IPERF_PUB, 2, vec![]);
            let rules = rules.to_str().context("temp path is not UTF-8")?;
            let devices = if overlay {
                kernel_overlay_up(&tb)
            } else {
                Ok(Vec::new())
            };
            let up = devices.and_then(|seen| {
                run(&tb, "h1", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
                run(&tb, "h1", &["nft", "-f", rules])?;
                Ok(seen)
            });
            match up {
                Ok(seen) => {
                    if round == 1 {
                        for (k, v) in seen {
                            r.setup.insert(k, v.into());
                        }
                    }
                    ctx.measure_round(&mut tb, r, round, &t);
                }
                Err(e) => r.fail(round, format!("{e:#}")),
            }
            if let Ok(c) = run(
                &tb,
                "h1",
                &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
            ) {
                r.setup.insert(
                    format!("h1 conntrack entries after round {round}"),
                    c.trim().into(),
                );
            }
            // Removed whatever happened: the next systems listen on h1's
            // ports, and vxmeshd binds 4789 and takes the overlay's addresses.
            let _ = run(&tb, "h1", &["nft", "delete", "table", "ip", "vxbench"]);
            run(&tb, "h1", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
            if overlay {
                kernel_overlay_down(&tb).context(
                    "the kernel's vxlan devices could not be deleted (vxmeshd would clash with them)",
                )?;
            }
        }

        if last_round {
            break;
        }
    }
    traffic.notes(notes);
    Ok(vec![
        direct, nftr, nft_ovr, haproxy, splice, vx_ul, vx_nr, vx_ov,
    ])
}

/// What went where on h1 per round and vxmesh system: bytes through its
/// TAP, and connections it relayed through the task nodes' relays.
#[derive(Default)]
pub(crate) struct Traffic {
    tap: std::collections::BTreeMap<&'static str, Vec<u64>>,
    relayed: std::collections::BTreeMap<&'static str, Vec<u64>>,
}

impl Traffic {
    fn notes(&self, notes: &mut Vec<String>) {
        for name in VXMESH {
            let (Some(tap), Some(relayed)) = (self.tap.get(name), self.relayed.get(name)) else {
                continue;
            };
            let mb: Vec<String> = tap
                .iter()
                .map(|b| format!("{:.0}", *b as f64 / 1e6))
                .collect();
            let n: Vec<String> = relayed.iter().map(u64::to_string).collect();
            notes.push(format!(
                "{name}: h1's TAP moved {} MB per round (rx + tx); h1 relayed {} connections per \
                 round through the task nodes' relays{}",
                mb.join(", "),
                n.join(", "),
                match name {
                    "vxmesh-underlay" =>
                        ": the upstream went over eth0, only health probes and ARP on the TAP",
                    "vxmesh-overlay" =>
                        ": the upstream went to the relays over eth0, only health probes and ARP \
                         on the TAP",
                    _ => "",
                }
            ));
        }
    }
}

/// The connections h1's mesh sent through a task node's relay so far
/// (both services).
fn relayed(tb: &Testbed, cli: &Path, sock: &Path) -> Option<u64> {
    let mut n = 0;
    for svc in ["web", "iperf"] {
        let v = cli_json(tb, cli, sock, &["service", "inspect", svc]).ok()?;
        n += v["relayed_connections"].as_u64()?;
    }
    Some(n)
}

/// One set of vxmeshd (h1..h3) on one cluster file; its logs go to
/// `mesh-vxmeshd<tag>-<host>.log`.
pub(crate) struct DaemonSet<'a> {
    pub(crate) vxmeshd: &'a Path,
    pub(crate) cli: &'a Path,
    pub(crate) cluster: &'a str,
    pub(crate) tag: &'a str,
}

impl DaemonSet<'_> {
    /// Starts the daemons and measures `systems` on them, each a round:
    /// (result, whether h1 gets host routes that send the tasks' overlay
    /// addresses over the underlay while it runs). Nothing when none is
    /// wanted. Returns false when a daemon could not be stopped (no further
    /// rounds then).
    pub(crate) fn measure(
        &self,
        ctx: &Ctx,
        tb: &mut Testbed,
        systems: &mut [(&mut SystemResult, bool)],
        round: u32,
        notes: &mut Vec<String>,
        traffic: &mut Traffic,
    ) -> bool {
        let s = ctx.s;
        if !systems.iter().any(|(r, _)| s.wants(r.name)) {
            return true;
        }
        let daemons = match vxmesh_up(tb, self.vxmeshd, self.cli, self.cluster) {
            Ok(d) => d,
            Err(e) => {
                for (r, _) in systems.iter_mut() {
                    r.fail(round, format!("{e:#}"));
                }
                return true;
            }
        };
        let sock = daemons[0].2.clone();
        let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
        for (r, routes) in systems.iter_mut() {
            let (r, routes) = (&mut **r, *routes);
            if !s.wants(r.name) {
                continue;
            }
            if r.name == "vxmesh-overlay-norelay" {
                if let Err(e) = tw_gone(tb, r.name, round, true, notes) {
                    r.fail(round, format!("{e:#}"));
                    continue;
                }
            }
            if routes {
                if let Err(e) = underlay_routes(tb, true) {
                    r.fail(round, format!("{e:#}"));
                    continue;
                }
            }
            if round == 1 {
                for dst in [OV[1], OV[2]] {
                    let d = dst.to_string();
                    if let Ok(route) = run(tb, "h1", &["ip", "route", "get", &d]) {
                        r.setup
                            .insert(format!("h1: ip route get {d}"), route.trim().into());
                    }
                }
            }
            let before = (tap_bytes(tb), relayed(tb, self.cli, &sock));
            let t = Target {
                addr: UL[0],
                http: HTTP_PUB,
                iperf: IPERF_PUB,
                iperf_servers: &["h2", "h3"],
                tasks: 2,
                watch: pids.clone(),
            };
            ctx.measure_round(tb, r, round, &t);
            if let (Some(a), Some(b)) = (before.0, tap_bytes(tb)) {
                traffic
                    .tap
                    .entry(r.name)
                    .or_default()
                    .push(b.saturating_sub(a));
            }
            if let (Some(a), Some(b)) = (before.1, relayed(tb, self.cli, &sock)) {
                let n = b.saturating_sub(a);
                r.setup.insert(
                    format!("h1: connections relayed through the task nodes in round {round}"),
                    n.into(),
                );
                traffic.relayed.entry(r.name).or_default().push(n);
            }
            if let Ok(v) = cli_json(tb, self.cli, &sock, &["service", "ps", "web"]) {
                r.setup
                    .insert(format!("h1: service ps web after round {round}"), v);
            }
            if routes {
                if let Err(e) = underlay_routes(tb, false) {
                    notes.push(format!("round {round}: {e:#}"));
                }
            }
        }
        let mut stopped = true;
        for (h, p, _) in &daemons {
            if let Some(st) = p.exit_status() {
                notes.push(format!(
                    "round {round}: vxmeshd{} in {h} exited during the runs: {st}",
                    self.tag
                ));
            }
            stopped &= tb.stop(p);
            let dest = s.out.join(format!("mesh-vxmeshd{}-{h}.log", self.tag));
            if let Err(e) = append_log(&p.log, &dest, round) {
                notes.push(format!("could not copy {}: {e}", p.log.display()));
            }
        }
        if !stopped {
            notes.push(format!(
                "round {round}: a vxmeshd{} could not be stopped; no further rounds",
                self.tag
            ));
            return false;
        }
        // The TAPs outlive the daemons (persistent, with the overlay's
        // addresses) and so does their nftables table: removed, so that
        // each set starts afresh and nft-overlay finds the addresses free.
        if let Err(e) = daemon::cleanup(tb, self.vxmeshd, &["h1", "h2", "h3"]) {
            notes.push(format!("round {round}: {e:#}"));
        }
        true
    }
}
