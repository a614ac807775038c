//! The measuring loop of `overlay`: each path's rounds of iperf3 runs and
//! pings (with the CPU they cost), the busy-poll pings, the profiles.

use super::*;

/// The busy-poll budget of the extra vxmesh pings: above the 1 ms ping
/// interval, so that the lanes are still polling when the next echo comes.
pub const BUSY_POLL_PING_US: u64 = 2000;

/// The vxmesh pings repeated with `busy_poll_us` = [`BUSY_POLL_PING_US`].
#[derive(Debug, Serialize)]
pub struct BusyPing {
    /// The pings.
    #[serde(flatten)]
    pub ping: PingRep,
    /// CPU both daemons used while they ran, in % of one core.
    pub vxmeshd_cpu_percent: Option<f64>,
}

/// The measuring state: settings, clock ticks, the next free port.
pub(crate) struct Ctx<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) clk_tck: f64,
    pub(crate) port: u16,
    /// The kernel vxlan's received rate in this round's `udp64` run, bit/s
    /// of 64-byte payloads: what the paced run offers.
    pub(crate) paced_bps: Option<f64>,
}

impl Ctx<'_> {
    pub(crate) fn next_port(&mut self) -> u16 {
        let p = self.port;
        self.port = if self.port >= 60000 {
            5201
        } else {
            self.port + 1
        };
        p
    }

    /// One iperf3 run h1 -> h2 (`dst`) on the next port, after a pause.
    pub(crate) fn iperf(
        &mut self,
        tb: &mut Testbed,
        dst: Ipv4Addr,
        mode: &Mode,
        watch: &[u32],
    ) -> anyhow::Result<Outcome> {
        std::thread::sleep(SETTLE);
        let port = self.next_port();
        let secs = self.s.secs;
        iperf::run(tb, "h2", "h1", dst, port, secs, mode, watch, self.clk_tck)
    }

    /// One round on a path: checks that h2 answers on the path's address,
    /// then runs the pings and each iperf3 run once, appending to `r`.
    /// `watch`: pids whose CPU is accounted (the daemons).
    pub(crate) fn measure_round(
        &mut self,
        tb: &mut Testbed,
        r: &mut PathResult,
        round: u32,
        watch: &[u32],
    ) {
        let (name, dst, s) = (r.name, r.dst, self.s);
        match reach_and_ping(tb, name, dst, s.pings, (round, s.reps)) {
            Ok(p) => r.ping.push(p),
            Err(e) => return r.fail(round, e),
        }
        if name == "kernel" {
            self.paced_bps = None;
        }
        for (spec, t) in TESTS.iter().zip(r.tests.iter_mut()) {
            if spec.paced {
                let Some(bps) = self
                    .paced_bps
                    .filter(|_| matches!(name, "kernel" | "vxmesh"))
                else {
                    continue;
                };
                t.mode = Mode::Udp {
                    len: 64,
                    rate: format!("{bps:.0}"),
                };
            }
            let res = self.iperf(tb, dst, &t.mode, watch);
            let line = match &res {
                Ok(o) => describe(o, "vxmeshd"),
                Err(e) => format!("ERROR {e:#}"),
            };
            eprintln!("[{name}] {} {round}/{}: {line}", spec.label, s.reps);
            if let (Ok(o), "kernel", "udp64") = (&res, name, spec.key) {
                // iperf3's -b counts payload bits.
                self.paced_bps = o.figures.rx_pps.map(|pps| pps * 64.0 * 8.0);
            }
            t.reps.push(Rep::new(round, res));
        }
    }
}

impl Ctx<'_> {
    /// The extra, profiled runs on a path (see [`profile`]): TCP 1 stream
    /// and the UDP 64 B flood under `perf record`, then the pings under
    /// `perf sched record`. Their figures go into the profile only.
    pub(crate) fn profile(&mut self, tb: &mut Testbed, r: &mut PathResult, watch: &[u32]) {
        let (name, dst, s) = (r.name, r.dst, self.s);
        let mut p = PathProfile::default();
        for key in ["tcp1", "udp64"] {
            let spec = TESTS.iter().find(|t| t.key == key).expect("known test");
            let data = s.out.join(format!("perf-{name}-{key}.data"));
            let res = profile::record_cpu(&data, s.secs).and_then(|rec| {
                let o = self.iperf(tb, dst, &spec.mode(&s.udp_rate), watch)?;
                let data = rec.finish()?;
                CpuProfile::from_data(
                    spec.label,
                    describe(&o, "vxmeshd"),
                    &data,
                    profile::OVERLAY_CALLS,
                )
            });
            let _ = std::fs::remove_file(&data);
            match res {
                Ok(c) => p.cpu.push(c),
                Err(e) => p.errors.push(format!("{}: {e:#}", spec.label)),
            }
        }
        match self.profile_pings(tb, r.name, dst) {
            Ok(w) => p.wakeups = Some(w),
            Err(e) => p.errors.push(format!("pings: {e:#}")),
        }
        for e in &p.errors {
            eprintln!("[{name}] profile: {e}");
        }
        r.profile = Some(p);
    }

    /// The pings of [`ping_rep`] run by `perf sched record` (so that the
    /// recording spans exactly the pings), summarised per thread.
    pub(crate) fn profile_pings(
        &self,
        tb: &Testbed,
        name: &str,
        dst: Ipv4Addr,
    ) -> anyhow::Result<WakeProfile> {
        let s = self.s;
        let data = s.out.join(format!("perf-{name}-sched.data"));
        let (count, interval, dst_s) = (
            s.pings.to_string(),
            PING_INTERVAL.as_secs_f64().to_string(),
            dst.to_string(),
        );
        let ping = [
            "ping", "-n", "-c", &count, "-i", &interval, "-W", "1", &dst_s,
        ];
        let cmd = profile::sched_command(&data, &ping)?;
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let timeout = PING_INTERVAL * s.pings + Duration::from_secs(30);
        let res = tb
            .exec_timeout_unchecked("h1", &args, timeout)
            .map_err(anyhow::Error::from)
            .and_then(|out| {
                let stats = vxmesh_netns::PingStats::parse(&String::from_utf8_lossy(&out.stdout))?;
                let text = profile::timehist(&data)?;
                Ok(WakeProfile::from_timehist(
                    &text,
                    stats.received,
                    stats.p50(),
                ))
            });
        let _ = std::fs::remove_file(&data);
        res
    }
}

/// Reloads the running daemons with `busy_poll_us` = [`BUSY_POLL_PING_US`]
/// (rewritten cluster file, SIGHUP, then their status says it is in
/// force), pings as in the round with the CPU the daemons use meanwhile,
/// and reloads them back to the round's settings.
pub(crate) fn busy_poll_pings(
    tb: &Testbed,
    cli: &Path,
    daemons: &[(String, Proc, PathBuf)],
    s: &Settings,
    clk_tck: f64,
    round: u32,
) -> anyhow::Result<BusyPing> {
    let reload = |busy: Option<u64>| -> anyhow::Result<()> {
        let with = Settings {
            busy_poll_us: busy,
            ..s.clone()
        };
        daemon::write_cluster(tb, &with.cluster())?;
        for (_, p, _) in daemons {
            tb.signal(p, nix::sys::signal::Signal::SIGHUP)?;
        }
        let want = busy.unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (h, _, sock) in daemons {
            while daemon_status(tb, cli, h, sock)["dataplane"]["busy_poll_us"].as_u64()
                != Some(want)
            {
                if Instant::now() > deadline {
                    bail!("{h} did not take busy_poll_us = {want} up within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    };
    reload(Some(BUSY_POLL_PING_US))?;
    let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
    let before = crate::cpu::Snapshot::take(&pids)?;
    let started = Instant::now();
    let ping = ping_rep(tb, OV[1], s.pings, round);
    let wall = started.elapsed().as_secs_f64();
    let after = crate::cpu::Snapshot::take(&pids)?;
    let (_, daemons_s) = before.seconds_until(&after, clk_tck);
    eprintln!(
        "[vxmesh] ping with busy_poll_us = {BUSY_POLL_PING_US} {round}/{}: {}/{} replies, p50 {} µs, p99 {} µs, vxmeshd CPU {:.0} % of a core",
        s.reps,
        ping.received,
        ping.sent,
        ping.p50_us.map_or("-".into(), |v| format!("{v:.1}")),
        ping.p99_us.map_or("-".into(), |v| format!("{v:.1}")),
        daemons_s.map_or(f64::NAN, |c| 100.0 * c / wall),
    );
    reload(s.busy_poll_us)?;
    Ok(BusyPing {
        ping,
        vxmeshd_cpu_percent: daemons_s.map(|c| 100.0 * c / wall),
    })
}

/// Builds the testbed and measures every path, in rounds: each round
/// measures the underlay, sets up the kernel's vxlan and measures it with
/// and without offloads, deletes it, starts vxmeshd, measures it and stops
/// it. Interleaving spreads a passing load on the machine over every path
/// instead of one. The testbed (namespaces, processes) is gone when this
/// returns, whatever happened.
pub(crate) fn measure_all(
    s: &Settings,
    clk_tck: f64,
    vxmeshd: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<PathResult>> {
    let mut tb = Testbed::new("bench")?;
    eprintln!("testbed {} (temp dir {})", tb.suffix(), tb.dir().display());
    for (i, ul) in UL.iter().enumerate() {
        tb.add_host(&format!("h{}", i + 1), &format!("{ul}/24"), UNDERLAY_MTU)?;
    }
    let mut ctx = Ctx {
        s,
        clk_tck,
        port: 5201,
        paced_bps: None,
    };
    let new = |name, dst| PathResult::new(name, dst, &s.udp_rate, s.secs);
    let mut underlay = new("underlay", UL[1]);
    let mut kernel = new("kernel", OV[1]);
    let mut nooffload = new("kernel-nooffload", OV[1]);
    let mut vxmesh = new("vxmesh", OV[1]);
    let cli = vxmeshd.with_file_name("vxmesh");
    for h in ["h1", "h2"] {
        // Fresh logs for this run; each round's are appended.
        let _ = std::fs::remove_file(s.out.join(format!("vxmeshd-{h}.log")));
    }

    for round in 1..=s.reps {
        eprintln!("--- round {round}/{} ---", s.reps);
        ctx.measure_round(&mut tb, &mut underlay, round, &[]);

        match kernel_up(&tb) {
            Ok(setup) => {
                if round == 1 {
                    kernel.setup = setup;
                }
                ctx.measure_round(&mut tb, &mut kernel, round, &[]);
                if s.profile && round == s.reps {
                    ctx.profile(&mut tb, &mut kernel, &[]);
                }
                match kernel_offloads_off(&tb) {
                    Ok(setup) => {
                        if round == 1 {
                            nooffload.setup = setup;
                        }
                        ctx.measure_round(&mut tb, &mut nooffload, round, &[]);
                    }
                    Err(e) => nooffload.fail(round, format!("{e:#}")),
                }
            }
            Err(e) => {
                kernel.fail(round, format!("{e:#}"));
                nooffload.fail(round, format!("{e:#}"));
            }
        }
        // vxmeshd binds port 4789 too: the kernel devices must be gone.
        if let Err(e) = kernel_down(&tb) {
            vxmesh.fail(
                round,
                format!("not started, the kernel's vxk0 could not be deleted: {e:#}"),
            );
            break;
        }

        let daemons = match vxmesh_up(&mut tb, vxmeshd, &s.cluster()) {
            Ok(d) => d,
            Err(e) => {
                vxmesh.fail(round, format!("{e:#}"));
                continue;
            }
        };
        let pids: Vec<u32> = daemons.iter().map(|(_, p, _)| p.pid).collect();
        if round == 1 {
            vxmesh.setup.insert("cluster".into(), s.cluster().into());
            if let Ok(a) = run(&tb, "h1", &["ip", "-d", "addr", "show"]) {
                vxmesh.setup.insert("h1: ip -d addr show".into(), a.into());
            }
            if let Ok(o) = offloads(&tb, "h1", "vxm-front") {
                vxmesh
                    .setup
                    .insert("h1: offloads of vxm-front".into(), o.into());
            }
        }
        ctx.measure_round(&mut tb, &mut vxmesh, round, &pids);
        if s.profile && round == s.reps {
            ctx.profile(&mut tb, &mut vxmesh, &pids);
        }
        if s.busy_poll_us.is_none() {
            match busy_poll_pings(&tb, &cli, &daemons, s, clk_tck, round) {
                Ok(b) => vxmesh.ping_busy_poll.push(b),
                Err(e) => notes.push(format!("round {round}: busy-poll pings: {e:#}")),
            }
        }
        let mut stopped = true;
        for (h, p, sock) in &daemons {
            vxmesh.setup.insert(
                format!("{h}: vxmesh status after round {round}"),
                daemon_status(&tb, &cli, h, sock),
            );
            // Kernel-side drops (TAP queue, sockets) that the daemon's own
            // counters cannot see.
            if let Ok(text) = run(&tb, h, &["ip", "-s", "link", "show"]) {
                vxmesh.setup.insert(
                    format!("{h}: ip -s link show after round {round}"),
                    text.into(),
                );
            }
            if let Ok(text) = run(&tb, h, &["cat", "/proc/net/snmp"]) {
                let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
                vxmesh.setup.insert(
                    format!("{h}: Udp counters after round {round}"),
                    udp.join("\n").into(),
                );
            }
            if let Some(status) = p.exit_status() {
                notes.push(format!(
                    "round {round}: vxmeshd in {h} exited during the runs: {status}"
                ));
            }
            // Stopped now so that the next round's kernel vxlan gets the port.
            stopped &= tb.stop(p);
            let dest = s.out.join(format!("vxmeshd-{h}.log"));
            if let Err(e) = append_log(&p.log, &dest, round) {
                notes.push(format!("could not copy {}: {e}", p.log.display()));
            }
        }
        if !stopped {
            notes.push(format!(
                "round {round}: a vxmeshd could not be stopped; no further rounds"
            ));
            break;
        }
        // The daemons' devices outlive them (persistent TAPs and the mesh's
        // front device, with the overlay's addresses): removed, so that the
        // next round's kernel vxlan finds the overlay subnet free.
        if let Err(e) = daemon::cleanup(&tb, vxmeshd, &["h1", "h2"]) {
            notes.push(format!("round {round}: {e:#}"));
        }
    }
    for h in ["h1", "h2"] {
        let dest = s.out.join(format!("vxmeshd-{h}.log"));
        if dest.exists() {
            notes.push(format!("vxmeshd log of {h}: {}", dest.display()));
        }
    }
    Ok(vec![underlay, kernel, nooffload, vxmesh])
}
