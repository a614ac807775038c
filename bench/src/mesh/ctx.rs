//! One system's rounds of `mesh`: the tools found, the target a system
//! is reached at, and the iperf3 and wrk runs of a round.

use super::*;
use crate::profile::{self, CpuProfile, PathProfile};

/// Versions of the tools, for the report.
#[derive(Debug, Serialize)]
pub struct Tools {
    /// `haproxy -v`, first line.
    pub haproxy: String,
    /// `nft --version`.
    pub nft: String,
    /// `wrk -v`, first line (it prints it on stderr and exits 1).
    pub wrk: String,
}

impl Tools {
    pub(crate) fn probe() -> Tools {
        let wrk = std::process::Command::new("wrk")
            .arg("-v")
            .stdin(std::process::Stdio::null())
            .output()
            .map(|o| {
                let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
                t += &String::from_utf8_lossy(&o.stderr);
                crate::harness::report::first_line(&t)
            })
            .unwrap_or_else(|_| "?".into());
        Tools {
            haproxy: command_line("/usr/sbin/haproxy", &["-v"]).unwrap_or_else(|| "?".into()),
            nft: command_line("nft", &["--version"]).unwrap_or_else(|| "?".into()),
            wrk,
        }
    }
}

/// Where one system's runs go and what they watch.
pub(crate) struct Target {
    /// Address the client connects to.
    pub(crate) addr: Ipv4Addr,
    /// HTTP port there.
    pub(crate) http: u16,
    /// iperf3 port there.
    pub(crate) iperf: u16,
    /// Hosts that run a one-off iperf3 server for each run.
    pub(crate) iperf_servers: &'static [&'static str],
    /// Tasks the HTTP probe must see answer before the runs.
    pub(crate) tasks: usize,
    /// Processes whose CPU is the balancer's.
    pub(crate) watch: Vec<u32>,
}

/// The measuring state.
pub(crate) struct Ctx<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) clk_tck: f64,
    /// The wrk script's path.
    pub(crate) script: String,
}

impl Ctx<'_> {
    /// One round on a system: waits until it serves, warms up, then makes
    /// every run once, appending to `r`.
    pub(crate) fn measure_round(
        &self,
        tb: &mut Testbed,
        r: &mut SystemResult,
        round: u32,
        t: &Target,
    ) {
        let (name, s) = (r.name, self.s);
        match serves(tb, SocketAddr::new(t.addr.into(), t.http), t.tasks) {
            Ok(seen) => {
                if round == 1 {
                    r.setup
                        .insert("tasks answering the probe".into(), json!(seen));
                }
            }
            Err(e) => {
                r.fail(round, format!("{e:#}"));
                return;
            }
        }
        if s.warmup > 0 {
            let w = iperf::run_balanced(
                tb,
                t.iperf_servers,
                IPERF_TASK,
                "cl",
                t.addr,
                t.iperf,
                s.warmup,
                &Mode::Tcp { parallel: 1 },
                &t.watch,
                self.clk_tck,
            );
            match w {
                Ok(o) => eprintln!(
                    "[{name}] warm-up {round}/{}: {:.2} Gbit/s",
                    s.reps, o.figures.gbit_per_s
                ),
                Err(e) => eprintln!("[{name}] warm-up {round}/{}: ERROR {e:#}", s.reps),
            }
        }
        for (spec, res) in TESTS.iter().zip(r.tests.iter_mut()) {
            std::thread::sleep(SETTLE);
            let rep = match spec.key {
                "iperf" => self.iperf(tb, t, round),
                "conn" => self.wrk(tb, t, round, "/1k", true, |f| f.req_per_s),
                "ka1k" => self.wrk(tb, t, round, "/1k", false, |f| f.req_per_s),
                _ => self.wrk(tb, t, round, "/1m", false, |f| f.mb_per_s),
            };
            let line = match (&rep.error, rep.value) {
                (Some(e), _) => format!("ERROR {}", e.lines().next().unwrap_or("")),
                (None, v) => {
                    let unit = match spec.key {
                        "iperf" => "Gbit/s",
                        "ka1m" => "MB/s",
                        _ => "req/s",
                    };
                    let mut l = format!("{:.2} {unit}", v.unwrap_or(0.0));
                    if let Some(b) = busy_percent(&rep) {
                        let _ = write!(l, ", machine {b:.0} % busy");
                    }
                    if let Some(b) = balancer_percent(&rep) {
                        let _ = write!(l, ", balancer {b:.0} % of a core");
                    }
                    if let Some(n) = rep.detail.pointer("/errors").map(wrk_error_total) {
                        if n > 0 {
                            let _ = write!(l, ", {n} wrk errors");
                        }
                    }
                    l
                }
            };
            eprintln!("[{name}] {} {round}/{}: {line}", spec.label, s.reps);
            res.reps.push(rep);
        }
        if s.profile && round == s.reps && PROFILED.contains(&name) {
            r.profile = Some(self.profile(tb, name, t));
        }
    }

    /// An extra iperf3 run and an extra new-connections run under `perf
    /// record` (see [`crate::profile`]); their figures go into the profile
    /// only.
    fn profile(&self, tb: &mut Testbed, name: &str, t: &Target) -> PathProfile {
        // Sampling starts a second into a run: a profiled run lasts 3 s
        // at least, however short the measured ones.
        let s = Settings {
            secs: self.s.secs.max(3),
            ..self.s.clone()
        };
        let this = Ctx {
            s: &s,
            clk_tck: self.clk_tck,
            script: self.script.clone(),
        };
        let mut p = PathProfile::default();
        for key in ["iperf", "conn"] {
            let spec = TESTS.iter().find(|x| x.key == key).expect("known test");
            std::thread::sleep(SETTLE);
            let data = s.out.join(format!("perf-mesh-{name}-{key}.data"));
            let res = profile::record_cpu(&data, s.secs).and_then(|rec| {
                let figure = if key == "iperf" {
                    let rep = this.iperf(tb, t, 0);
                    let v = rep
                        .value
                        .with_context(|| rep.error.clone().unwrap_or_else(|| "no figure".into()))?;
                    format!("{v:.2} Gbit/s")
                } else {
                    let (f, ..) = this.wrk_inner(tb, t, "/1k", true)?;
                    format!("{:.0} new connections/s", f.req_per_s)
                };
                let data = rec.finish()?;
                CpuProfile::from_data(spec.label, figure, &data, profile::MESH_CALLS)
            });
            let _ = std::fs::remove_file(&data);
            match res {
                Ok(c) => p.cpu.push(c),
                Err(e) => p.errors.push(format!("{}: {e:#}", spec.label)),
            }
        }
        for e in &p.errors {
            eprintln!("[{name}] profile: {e}");
        }
        p
    }

    pub(crate) fn iperf(&self, tb: &mut Testbed, t: &Target, round: u32) -> Rep {
        let res = iperf::run_balanced(
            tb,
            t.iperf_servers,
            IPERF_TASK,
            "cl",
            t.addr,
            t.iperf,
            self.s.secs,
            &Mode::Tcp { parallel: 1 },
            &t.watch,
            self.clk_tck,
        );
        match res {
            Ok(o) => Rep {
                rep: round,
                error: None,
                value: Some(o.figures.gbit_per_s),
                wall_s: o.wall_s,
                host_cpu_s: o.host_cpu_s,
                balancer_cpu_s: o.watched_cpu_s,
                detail: serde_json::to_value(&o).unwrap_or(Value::Null),
            },
            Err(e) => failed(round, &e),
        }
    }

    /// `wrk -t1 -c<n> -d<secs>s` against `path` on the target's HTTP port,
    /// with `Connection: close` when `close`; the figure is `value` of the
    /// totals.
    pub(crate) fn wrk(
        &self,
        tb: &Testbed,
        t: &Target,
        round: u32,
        path: &str,
        close: bool,
        value: fn(&WrkFigures) -> f64,
    ) -> Rep {
        match self.wrk_inner(tb, t, path, close) {
            Ok((f, wall_s, host_cpu_s, balancer_cpu_s)) => {
                // A run with more errors than answers says nothing.
                let error = (f.errors.total() > f.requests / 100 + 10).then(|| {
                    format!(
                        "{} errors for {} requests: {:?}",
                        f.errors.total(),
                        f.requests,
                        f.errors
                    )
                });
                Rep {
                    rep: round,
                    value: error.is_none().then(|| value(&f)),
                    error,
                    wall_s,
                    host_cpu_s,
                    balancer_cpu_s,
                    detail: serde_json::to_value(&f).unwrap_or(Value::Null),
                }
            }
            Err(e) => failed(round, &e),
        }
    }

    pub(crate) fn wrk_inner(
        &self,
        tb: &Testbed,
        t: &Target,
        path: &str,
        close: bool,
    ) -> anyhow::Result<(WrkFigures, f64, f64, Option<f64>)> {
        let url = format!("http://{}:{}{path}", t.addr, t.http);
        let (c, d) = (
            format!("-c{}", self.s.connections),
            format!("-d{}s", self.s.secs),
        );
        let mut args = vec!["wrk", "-t1", &c, &d, "--timeout", "5s", "-s", &self.script];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let bound = Duration::from_secs(u64::from(self.s.secs)) + WRK_SLACK;
        let before = Snapshot::take(&t.watch)?;
        let start = Instant::now();
        let out = tb
            .exec_timeout_unchecked("cl", &args, bound)
            .context("wrk in cl")?;
        let wall_s = start.elapsed().as_secs_f64();
        let after = Snapshot::take(&t.watch)?;
        let (host, watched) = before.seconds_until(&after, self.clk_tck);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let f = parse_wrk(&stdout).map_err(|e| {
            anyhow!(
                "`{}`: {e} ({}): {}{}",
                args.join(" "),
                out.status,
                stdout.chars().take(1500).collect::<String>(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((f, wall_s, host, watched))
    }
}

pub(crate) fn wrk_error_total(v: &Value) -> u64 {
    ["connect", "read", "write", "status", "timeout"]
        .iter()
        .filter_map(|k| v.get(k).and_then(Value::as_u64))
        .sum()
}

pub(crate) fn failed(round: u32, e: &anyhow::Error) -> Rep {
    Rep {
        rep: round,
        error: Some(format!("{e:#}")),
        value: None,
        wall_s: 0.0,
        host_cpu_s: 0.0,
        balancer_cpu_s: None,
        detail: Value::Null,
    }
}
