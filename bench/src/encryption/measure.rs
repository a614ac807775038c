//! The measuring loop of `encryption`: the testbed and its three paths
//! brought up once, then rounds that measure each path in turn, then what
//! was in effect, and every process stopped by its pid.

use super::*;

/// The measuring state: settings, clock ticks, the next free port.
pub(crate) struct Ctx<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) clk_tck: f64,
    pub(crate) port: u16,
}

impl Ctx<'_> {
    /// One round on a path: checks that h2 answers on the path's address,
    /// then the pings and each iperf3 run once (a one-off server in h2 on
    /// the next port, the client in h1), appending to `r`. `watch`: pids
    /// whose CPU is accounted (the path's daemons or tunnel processes).
    pub(crate) fn round(
        &mut self,
        tb: &mut Testbed,
        r: &mut PathResult,
        round: u32,
        watch: &[u32],
    ) {
        let (name, dst, watched, s) = (r.name, r.dst, r.watched, self.s);
        match reach_and_ping(tb, name, dst, s.pings, (round, s.reps)) {
            Ok(p) => r.ping.push(p),
            Err(e) => return r.fail(round, e),
        }
        for (_, label, mode, reps) in r.runs(s) {
            std::thread::sleep(SETTLE);
            let port = self.port;
            self.port += 1;
            let res = iperf::run(
                tb,
                "h2",
                "h1",
                dst,
                port,
                s.secs,
                &mode,
                watch,
                self.clk_tck,
            );
            let line = match &res {
                Ok(o) => describe(o, watched),
                Err(e) => format!("ERROR {e:#}"),
            };
            eprintln!("[{name}] {label} {round}/{}: {line}", s.reps);
            reps.push(Rep::new(round, res));
        }
    }
}

/// Builds the testbed, brings up the three paths (both vxmesh networks on
/// one pair of daemons, then WireGuard with the encrypted network's MTU)
/// and measures them in rounds; then records what was in effect and stops
/// every process by its pid. The testbed (namespaces, processes) is gone
/// when this returns, whatever happened.
pub(crate) fn measure_all(
    s: &Settings,
    clk_tck: f64,
    vxmeshd: &Path,
    cli: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Run> {
    let mut tb = Testbed::new("benc")?;
    eprintln!("testbed {} (temp dir {})", tb.suffix(), tb.dir().display());
    for (i, ul) in UL.iter().enumerate() {
        tb.add_host(&format!("h{}", i + 1), &format!("{ul}/24"), UNDERLAY_MTU)?;
    }
    let (daemons, cluster) = vxmesh_up(&mut tb, vxmeshd, cli)?;
    let before = daemon_status(&tb, cli, "h1", &daemons[0].2);
    let mut plain = PathResult::new(PATHS[0], PLAIN[1], "vxmeshd");
    let mut sealed = PathResult::new(PATHS[1], SEALED[1], "vxmeshd");
    plain.mtu = network_mtu(&before, "front");
    sealed.mtu = network_mtu(&before, SEALED_NET);
    // The tunnel carries the same inner packets as the encrypted network.
    let wg_mtu = sealed.mtu.unwrap_or_else(|| {
        notes.push(format!(
            "vxmesh status gave no MTU for {SEALED_NET}: WireGuard MTU {}",
            UNDERLAY_MTU - ENCRYPTED_OVERHEAD
        ));
        UNDERLAY_MTU - ENCRYPTED_OVERHEAD
    });
    plain.setup.insert("cluster".into(), cluster.into());
    sealed
        .setup
        .insert("h1: vxmesh status before the runs".into(), before);
    let devices = wireguard_up(&mut tb, wg_mtu)?;
    let mut wg = PathResult::new(PATHS[2], WG[1], "wireguard-go");
    wg.mtu = Some(wg_mtu);
    let dev = devices[0].dev.clone();
    for args in [
        vec!["ip", "-d", "link", "show", "dev", &dev],
        vec!["wg", "show", &dev],
    ] {
        if let Ok(text) = daemon::run(&tb, "h1", &args, CMD_TIMEOUT) {
            wg.setup
                .insert(format!("h1: {}", args.join(" ")), text.into());
        }
    }

    let daemon_pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
    let wg_pids: Vec<u32> = devices.iter().map(|d| d.proc.pid).collect();
    let mut ctx = Ctx {
        s,
        clk_tck,
        port: 5201,
    };
    for round in 1..=s.reps {
        eprintln!("--- round {round}/{} ---", s.reps);
        ctx.round(&mut tb, &mut plain, round, &daemon_pids);
        ctx.round(&mut tb, &mut sealed, round, &daemon_pids);
        ctx.round(&mut tb, &mut wg, round, &wg_pids);
    }

    let mut in_effect = InEffect::default();
    for (h, p, sock) in &daemons {
        let status = daemon_status(&tb, cli, h, sock);
        for (peer, state, cipher) in sessions(&status) {
            if h == "h1" && in_effect.cipher.is_none() {
                in_effect.cipher.clone_from(&cipher);
            }
            in_effect.sessions.push(format!(
                "{h} -> {peer}: {state} {}",
                cipher.as_deref().unwrap_or("-")
            ));
        }
        if h == "h1" {
            in_effect.vxmesh_dataplane = status["dataplane"].clone();
            in_effect.tap_offloads =
                network_tap(&status, SEALED_NET).and_then(|tap| offloads(&tb, "h1", &tap).ok());
        }
        sealed
            .setup
            .insert(format!("{h}: vxmesh status after the runs"), status);
        if let Some(status) = p.exit_status() {
            notes.push(format!(
                "vxmeshd in {h} exited during the runs ({status}): {}",
                p.log_tail(10)
            ));
        }
    }
    in_effect.wireguard_offloads = offloads(&tb, "h1", &dev).ok();
    if let Ok(text) = daemon::run(&tb, "h1", &["wg", "show", &dev], CMD_TIMEOUT) {
        wg.setup
            .insert("h1: wg show after the runs".into(), text.into());
    }
    for d in &devices {
        if let Some(status) = d.proc.exit_status() {
            notes.push(format!(
                "wireguard-go in {} exited during the runs ({status}): {}",
                d.host,
                d.proc.log_tail(10)
            ));
        }
    }
    // Stopped by pid here; the testbed would do it too when it drops.
    let procs = devices
        .iter()
        .map(|d| (&d.host, &d.proc, "wireguard-go"))
        .chain(daemons.iter().map(|(h, p, _)| (h, p, "vxmeshd")));
    for (h, p, what) in procs {
        if !tb.stop(p) {
            notes.push(format!(
                "{what} in {h} (pid {}) could not be stopped",
                p.pid
            ));
        }
    }
    Ok(Run {
        paths: vec![plain, sealed, wg],
        in_effect,
    })
}
