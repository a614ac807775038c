//! Where the time goes, for the closing question of every speed figure:
//! what limits it. Two recordings with `perf`, taken in extra runs after the
//! measured ones (sampling costs a little, so no figure in the table comes
//! from a profiled run):
//!
//! - [`record_cpu`]: `perf record` of every CPU (the `cpu-clock` software
//!   event: this guest has no PMU, see TESTBED-NOTES.md) while iperf3 runs,
//!   summarised by [`CpuProfile::from_report`] into the share of the
//!   machine each program took, vxmeshd's share split by kind of work
//!   (copies across the kernel boundary, copies inside vxmeshd, its own
//!   code, the rest of the kernel), and the top symbols.
//! - [`record_wakeups`]: `perf sched record` around a ping run, summarised
//!   by [`WakeProfile::from_timehist`] into how often each thread ran per
//!   echo, how long it waited for a CPU once woken (scheduling delay) and
//!   how long it ran: the anatomy of one round trip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::harness::stats::median;

/// Sampling frequency of [`record_cpu`], Hz per CPU.
const FREQ: &str = "999";
/// Symbols listed per profile.
const TOP: usize = 12;

/// `perf` runs here (`perf --version` succeeds).
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `perf record` of the whole machine running in the background; killed
/// (by its pid, it is ours) if still running when dropped.
pub struct Recording {
    child: Child,
    data: PathBuf,
    secs: u32,
}

/// Starts sampling every CPU into `data`: for `secs` seconds, the first
/// one skipped (`--delay`) so that a load started at the same time is
/// under way when sampling begins.
pub fn record_cpu(data: &Path, secs: u32) -> anyhow::Result<Recording> {
    let data_s = data.to_str().context("profile path is not UTF-8")?;
    let secs = secs.max(2);
    let child = Command::new("perf")
        .args([
            "record",
            "-a",
            "-e",
            "cpu-clock",
            "-F",
            FREQ,
            // Call graphs (frame pointers; the kernel's are reliable), for
            // [`CpuProfile::calls`]. The flat report ignores them.
            "-g",
            "--delay",
            "1000",
        ])
        .args(["-o", data_s, "--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    Ok(Recording {
        child,
        data: data.to_path_buf(),
        secs,
    })
}

impl Recording {
    /// Waits for the recording to end by itself (bounded: its seconds plus
    /// 30) and returns its data file.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(u64::from(self.secs) + 30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("perf record failed: {status}");
                }
                return Ok(self.data.clone());
            }
            if Instant::now() > deadline {
                bail!("perf record did not end in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `perf report` of a [`record_cpu`] file: one line per (command, DSO,
/// symbol), percentages of all samples.
pub fn report(data: &Path) -> anyhow::Result<String> {
    perf_report(data, "--no-children", "comm,dso,sym")
}

/// `perf report --children` of a [`record_cpu`] file: per (command,
/// symbol), the share of all samples spent in the symbol and below it,
/// then in it alone.
pub fn report_children(data: &Path) -> anyhow::Result<String> {
    perf_report(data, "--children", "comm,sym")
}

/// `perf report` of `data` as `|`-separated lines, call graphs folded.
fn perf_report(data: &Path, children: &str, sort: &str) -> anyhow::Result<String> {
    let data_s = data.to_str().context("profile path is not UTF-8")?;
    perf_stdout(&[
        "report", "-i", data_s, "--stdio", children, "-g", "none", "--sort", sort, "-t", "|",
    ])
}

/// One line of [`report_children`].
#[derive(Debug, Clone, PartialEq)]
pub struct Inclusive {
    /// % of all samples in the symbol and what it called.
    pub children: f64,
    /// % of all samples in the symbol itself.
    pub own: f64,
    pub comm: String,
    /// With perf's `[k]` or `[.]` mark.
    pub sym: String,
}

/// A report's percentage field (`11.55%`).
fn percent(field: Option<&str>) -> Option<f64> {
    field?.strip_suffix('%')?.parse().ok()
}

/// Parses [`report_children`]'s lines (`36.68% | 0.51% |vxm-lane-0 |[k]
/// do_syscall_64`); anything else is skipped.
pub fn parse_children(text: &str) -> Vec<Inclusive> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let (children, own) = (percent(f.next())?, percent(f.next())?);
            let (comm, sym) = (f.next()?, f.next()?);
            Some(Inclusive {
                children,
                own,
                comm: comm.into(),
                sym: sym.into(),
            })
        })
        .collect()
}

/// A kind of system call, by the kernel functions that carry it: each
/// counted with everything the kernel did inside it (softirqs run at its
/// end included).
pub type CallKind = (&'static str, &'static [&'static str]);

/// vxmeshd's overlay syscalls: where batching them (io_uring) or bypassing
/// the underlay's stack (AF_XDP) could save, and where they could not.
pub const OVERLAY_CALLS: &[CallKind] = &[
    (
        "TAP writes (the inner packet up the receiving stack, to the socket)",
        &["tun_chr_write_iter"],
    ),
    (
        "underlay sends (outer UDP/IP, veth, the peer's receive in softirq)",
        &["__sys_sendmsg", "__sys_sendmmsg", "__sys_sendto"],
    ),
    ("TAP reads", &["tun_chr_read_iter"]),
    ("underlay receives", &["__sys_recvmsg", "__sys_recvmmsg"]),
    ("poll", &["do_sys_poll"]),
];

/// vxmeshd's mesh syscalls: what a relayed connection costs.
pub const MESH_CALLS: &[CallKind] = &[
    // Only the outermost function of each call: a nested one would be
    // counted twice.
    ("accept", &["__sys_accept4"]),
    ("connect", &["__sys_connect"]),
    (
        "reads and writes (requests, small bodies; the TAP's too without the relay)",
        &[
            "ksys_read",
            "ksys_write",
            "__sys_recvfrom",
            "__sys_sendto",
            "do_writev",
        ],
    ),
    (
        "splice and its pipes",
        &["do_splice", "__do_splice", "do_pipe2"],
    ),
    (
        "close (with the FIN/RST it sends)",
        &["__x64_sys_close", "__fput"],
    ),
    ("epoll", &["do_epoll_wait", "do_epoll_ctl"]),
    (
        "socket options",
        &[
            "__sys_setsockopt",
            "__sys_getsockopt",
            "__sys_getsockname",
            "__sys_getpeername",
        ],
    ),
];

/// Label of every syscall together, in [`CpuProfile::calls`].
pub const ALL_CALLS: &str = "all system calls";
/// Label of the syscalls' own entry and exit, in [`CpuProfile::calls`].
pub const ENTRY_EXIT: &str = "syscall entry, exit, descriptor lookup (their own time)";
/// The symbols of a syscall's way in and out (not its work).
const ENTRY_EXIT_SYMS: &[&str] = &[
    "entry_SYSCALL_64",
    "entry_SYSCALL_64_after_hwframe",
    "do_syscall_64",
    "syscall_exit_to_user_mode",
    "exit_to_user_mode_loop",
    "syscall_return_via_sysret",
    "fdget",
    "__fget_light",
    "fput",
];

/// The kinds of `table`, [`ALL_CALLS`] and [`ENTRY_EXIT`] summed over
/// vxmeshd's threads, % of the machine, in that order.
pub fn calls(lines: &[Inclusive], table: &[CallKind]) -> Vec<(String, f64)> {
    let ours: Vec<&Inclusive> = lines.iter().filter(|l| is_vxmeshd(&l.comm)).collect();
    let sym = |l: &Inclusive| l.sym.trim_start_matches("[k] ").to_string();
    let children = |names: &[&str]| -> f64 {
        ours.iter()
            .filter(|l| names.contains(&sym(l).as_str()))
            .map(|l| l.children)
            .sum()
    };
    let mut out: Vec<(String, f64)> = table
        .iter()
        .map(|(label, names)| (label.to_string(), children(names)))
        .collect();
    out.push((
        ALL_CALLS.into(),
        children(&["entry_SYSCALL_64_after_hwframe"]),
    ));
    let own: f64 = ours
        .iter()
        .filter(|l| ENTRY_EXIT_SYMS.contains(&sym(l).as_str()))
        .map(|l| l.own)
        .fold(0.0, |a, b| a + b);
    out.push((ENTRY_EXIT.into(), own));
    out
}

/// What `perf args` prints on stdout, or why it failed.
fn perf_stdout(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("perf")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running perf {}", args[0]))?;
    if !out.status.success() {
        bail!("perf {} failed: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of [`report`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// % of all samples.
    pub percent: f64,
    pub comm: String,
    pub dso: String,
    /// With perf's `[k]` (kernel) or `[.]` (user) mark.
    pub sym: String,
}

/// Parses [`report`]'s lines (`11.55% |iperf3 |[kernel.kallsyms] |[k]
/// _copy_from_iter`); comments and anything else are skipped.
pub fn parse_report(text: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let pct = percent(f.next())?;
            let (comm, dso, sym) = (f.next()?, f.next()?, f.next()?);
            Some(Sample {
                percent: pct,
                comm: comm.into(),
                dso: dso.into(),
                sym: sym.into(),
            })
        })
        .collect()
}

/// Names of the programs and kinds of work a profile is split into.
pub mod kind {
    pub const VXMESHD: &str = "vxmeshd";
    pub const IPERF3: &str = "iperf3 (sender and receiver)";
    pub const IDLE: &str = "idle";
    pub const KSOFTIRQD: &str = "ksoftirqd";
    pub const OTHER: &str = "other";
    pub const HAPROXY: &str = "haproxy";
    pub const WRK: &str = "wrk (the client)";
    pub const TASKS: &str = "the tasks (vxmesh-bench-backend)";
    pub const KERNEL_COPIES: &str = "kernel: copies to and from vxmeshd (TAP, socket)";
    pub const KERNEL_REST: &str = "kernel: the rest (stack, syscalls, scheduling)";
    pub const LIBC_COPIES: &str = "vxmeshd: copies in its buffers (libc)";
    pub const OWN_CODE: &str = "vxmeshd: its own code";
    pub const OTHER_USER: &str = "vxmeshd: other user space";
}

/// vxmeshd's threads: its main thread, `vxm-lane-<i>`, `vxm-keys` and the
/// runtime's `vxm-rt` (not `vxmesh-bench-ba...`, the tasks).
fn is_vxmeshd(comm: &str) -> bool {
    comm == "vxmeshd" || comm.starts_with("vxm-")
}

/// Which program a sample belongs to, for [`CpuProfile::by_program`].
fn program(s: &Sample) -> &'static str {
    let c = s.comm.as_str();
    if is_vxmeshd(c) {
        kind::VXMESHD
    } else if c == "iperf3" {
        kind::IPERF3
    } else if c == "swapper" {
        kind::IDLE
    } else if c.starts_with("ksoftirqd") {
        kind::KSOFTIRQD
    } else if c == "haproxy" {
        kind::HAPROXY
    } else if c == "wrk" {
        kind::WRK
    } else if c.starts_with("http-") {
        // vxmesh-bench-backend's workers (`vxmesh_bench::http::serve`).
        kind::TASKS
    } else {
        kind::OTHER
    }
}

/// What kind of work a sample of vxmeshd is.
fn work(s: &Sample) -> &'static str {
    let kernel = s.sym.starts_with("[k]");
    let copy = [
        "copy_to_iter",
        "copy_from_iter",
        "copy_user",
        "copyout",
        "copyin",
    ]
    .iter()
    .any(|c| s.sym.contains(c));
    if kernel && copy {
        kind::KERNEL_COPIES
    } else if kernel {
        kind::KERNEL_REST
    } else if s.dso.starts_with("libc")
        && ["memmove", "memcpy", "memset"]
            .iter()
            .any(|c| s.sym.contains(c))
    {
        kind::LIBC_COPIES
    } else if s.dso == "vxmeshd" {
        kind::OWN_CODE
    } else {
        kind::OTHER_USER
    }
}

/// Where the machine's CPU went during one run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuProfile {
    /// What ran (e.g. "TCP 1 stream").
    pub run: String,
    /// What the run achieved meanwhile, as the table would say it.
    pub figure: String,
    /// % of the machine (all CPUs) per program, largest first; "idle" is
    /// what nobody used.
    pub by_program: Vec<(String, f64)>,
    /// vxmeshd's share split by kind of work, % of the machine.
    pub vxmeshd: Vec<(String, f64)>,
    /// The symbols that took most, % of the machine, with their command.
    pub top: Vec<(String, f64)>,
    /// vxmeshd's system calls by what they do, each with what the kernel
    /// did inside it, % of the machine ([`calls`]); empty without call
    /// graphs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<(String, f64)>,
}

/// Sums `pct` per key, largest first.
fn totals<'a>(items: impl Iterator<Item = (&'a str, f64)>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (k, v) in items {
        match out.iter_mut().find(|(n, _)| n == k) {
            Some((_, t)) => *t += v,
            None => out.push((k.to_string(), v)),
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

impl CpuProfile {
    /// Summarises [`report`]'s text.
    pub fn from_report(run: &str, figure: String, text: &str) -> CpuProfile {
        let samples = parse_report(text);
        let by_program = totals(samples.iter().map(|s| (program(s), s.percent)));
        let vxmeshd = totals(
            samples
                .iter()
                .filter(|s| program(s) == kind::VXMESHD)
                .map(|s| (work(s), s.percent)),
        );
        let mut busy: Vec<&Sample> = samples
            .iter()
            .filter(|s| program(s) != kind::IDLE)
            .collect();
        busy.sort_by(|a, b| b.percent.total_cmp(&a.percent));
        let top = busy
            .iter()
            .take(TOP)
            .map(|s| (format!("{:<14} {}", s.comm, s.sym), s.percent))
            .collect();
        CpuProfile {
            run: run.into(),
            figure,
            by_program,
            vxmeshd,
            top,
            calls: Vec::new(),
        }
    }

    /// The profile of a [`record_cpu`] file: [`report`] summarised, and
    /// vxmeshd's system calls from [`report_children`] when it ran.
    pub fn from_data(
        run: &str,
        figure: String,
        data: &Path,
        table: &[CallKind],
    ) -> anyhow::Result<CpuProfile> {
        let mut p = CpuProfile::from_report(run, figure, &report(data)?);
        if p.by_program.iter().any(|(k, _)| k == kind::VXMESHD) {
            p.calls = calls(&parse_children(&report_children(data)?), table);
        }
        Ok(p)
    }
}

/// The `perf sched record` command that wraps `workload`, writing `data`.
pub fn sched_command(data: &Path, workload: &[&str]) -> anyhow::Result<Vec<String>> {
    let data_s = data.to_str().context("profile path is not UTF-8")?;
    let mut args: Vec<String> = ["perf", "sched", "record", "-o", data_s, "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(workload.iter().map(|s| s.to_string()));
    Ok(args)
}

/// `perf sched timehist` of a recording: one line per time a thread left a
/// CPU, with its wait, scheduling delay and run time (ms).
pub fn timehist(data: &Path) -> anyhow::Result<String> {
    let data_s = data.to_str().context("profile path is not UTF-8")?;
    perf_stdout(&["sched", "timehist", "-i", data_s])
}

/// How one kind of thread took part in the round trips.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadTurns {
    /// `vxm-lane` (every lane of both daemons) or `ping`.
    pub thread: String,
    /// Times it got a CPU, per echo.
    pub runs_per_echo: f64,
    /// Median time from being woken to running, µs.
    pub sched_delay_p50_us: f64,
    /// Median time it ran once it had the CPU, µs.
    pub run_p50_us: f64,
}

/// The anatomy of the round trips of one ping run.
#[derive(Debug, Clone, Serialize)]
pub struct WakeProfile {
    /// Echo replies in the run.
    pub echoes: u32,
    /// RTT p50 of the recorded run (recording slows it a little), µs.
    pub rtt_p50_us: Option<f64>,
    pub threads: Vec<ThreadTurns>,
}

/// The kinds of thread [`WakeProfile::from_timehist`] follows.
const FOLLOWED: [&str; 2] = ["vxm-lane", "ping"];

impl WakeProfile {
    /// Summarises [`timehist`]'s text for `echoes` replies.
    pub fn from_timehist(text: &str, echoes: u32, rtt_p50_us: Option<f64>) -> WakeProfile {
        // "  16823.802276 [0000]  vxm-lane-0[22171/22167]   2.134   0.009   0.029"
        let mut turns: Vec<(&str, Vec<f64>, Vec<f64>)> = FOLLOWED
            .iter()
            .map(|t| (*t, Vec::new(), Vec::new()))
            .collect();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [_, cpu, task, _wait, delay, run] = f[..] else {
                continue;
            };
            if !cpu.starts_with('[') {
                continue;
            }
            let name = task.split('[').next().unwrap_or("");
            let (Ok(delay), Ok(run)) = (delay.parse::<f64>(), run.parse::<f64>()) else {
                continue;
            };
            if let Some(t) = turns.iter_mut().find(|(t, ..)| name.starts_with(t)) {
                t.1.push(delay * 1000.0);
                t.2.push(run * 1000.0);
            }
        }
        let threads = turns
            .into_iter()
            .filter(|(_, d, _)| !d.is_empty())
            .map(|(t, d, r)| ThreadTurns {
                thread: t.into(),
                runs_per_echo: d.len() as f64 / f64::from(echoes.max(1)),
                sched_delay_p50_us: median(d).unwrap_or(0.0),
                run_p50_us: median(r).unwrap_or(0.0),
            })
            .collect();
        WakeProfile {
            echoes,
            rtt_p50_us,
            threads,
        }
    }
}

/// Everything profiled on one path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathProfile {
    pub cpu: Vec<CpuProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wakeups: Option<WakeProfile>,
    /// What could not be profiled, and why.
    pub errors: Vec<String>,
}

/// The profiles as text, path by path (`overlay-profile.txt`).
pub fn render(paths: &[(&str, &PathProfile)], build: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(b) = build {
        let _ = writeln!(s, "build {b}");
    }
    let _ = writeln!(
        s,
        "Where the time goes: perf, in extra runs after the measured ones (last round).\n\
         CPU: `perf record -a -e cpu-clock -F {FREQ}`, % of the whole machine (all CPUs).\n\
         Round trips: `perf sched record` around the pings; a thread's run is one stay on a CPU."
    );
    for (name, p) in paths {
        let _ = writeln!(s, "\n== {name} ==");
        for c in &p.cpu {
            let _ = writeln!(s, "\n{} ({}):", c.run, c.figure);
            let _ = writeln!(s, "  by program:");
            for (k, v) in &c.by_program {
                let _ = writeln!(s, "    {v:6.1} %  {k}");
            }
            if !c.vxmeshd.is_empty() {
                let _ = writeln!(s, "  vxmeshd by kind of work:");
                for (k, v) in &c.vxmeshd {
                    let _ = writeln!(s, "    {v:6.1} %  {k}");
                }
            }
            if !c.calls.is_empty() {
                let _ = writeln!(
                    s,
                    "  vxmeshd's system calls, each with the kernel's work inside it:"
                );
                for (k, v) in &c.calls {
                    // perf prints tiny shares as -0.00.
                    let v = if v.abs() < 0.05 { 0.0 } else { *v };
                    let _ = writeln!(s, "    {v:6.1} %  {k}");
                }
            }
            let _ = writeln!(s, "  top symbols:");
            for (k, v) in &c.top {
                let _ = writeln!(s, "    {v:6.1} %  {k}");
            }
        }
        if let Some(w) = &p.wakeups {
            let rtt = w.rtt_p50_us.map_or("-".into(), |v| format!("{v:.0} µs"));
            let _ = writeln!(
                s,
                "\nround trips ({} echoes, RTT p50 {rtt} while recorded):",
                w.echoes
            );
            for t in &w.threads {
                let _ = write!(
                    s,
                    "  {:<9} {:4.1} runs per echo, woken -> running p50 {:5.1} µs",
                    t.thread, t.runs_per_echo, t.sched_delay_p50_us
                );
                // ping's stays span its wait for the next interval: not
                // the round trip's.
                if t.thread != "ping" {
                    let _ = write!(s, ", ran p50 {:5.1} µs", t.run_p50_us);
                }
                let _ = writeln!(s);
            }
        }
        for e in &p.errors {
            let _ = writeln!(s, "  not profiled: {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# comment line
 11.55% |iperf3         |[kernel.kallsyms]   |[k] _copy_from_iter
 9.49%  |swapper        |[kernel.kallsyms]   |[k] pv_native_safe_halt
 5.88%  |vxm-lane-1     |[kernel.kallsyms]   |[k] _copy_from_iter
 3.44%  |vxm-lane-1     |[kernel.kallsyms]   |[k] _copy_to_iter
 2.48%  |vxm-lane-1     |vxmeshd             |[.] vxmesh_dataplane::io::worker::lane_loop
 2.05%  |vxm-lane-0     |libc.so.6           |[.] __memmove_avx512_unaligned_erms
 1.57%  |vxm-lane-0     |[kernel.kallsyms]   |[k] _raw_spin_unlock_irqrestore
 0.50%  |kworker/0:1    |[kernel.kallsyms]   |[k] process_one_work
";

    #[test]
    fn report_lines_are_parsed_and_comments_skipped() {
        let s = parse_report(REPORT);
        assert_eq!(s.len(), 8);
        assert_eq!(
            s[0],
            Sample {
                percent: 11.55,
                comm: "iperf3".into(),
                dso: "[kernel.kallsyms]".into(),
                sym: "[k] _copy_from_iter".into(),
            }
        );
    }

    #[test]
    fn samples_add_up_per_program_and_per_kind_of_work() {
        let p = CpuProfile::from_report("TCP", "8 Gbit/s".into(), REPORT);
        let get = |v: &[(String, f64)], k: &str| {
            v.iter()
                .find(|(n, _)| n == k)
                .map(|(_, x)| (x * 100.0).round() / 100.0)
        };
        assert_eq!(get(&p.by_program, "vxmeshd"), Some(15.42));
        assert_eq!(get(&p.by_program, "idle"), Some(9.49));
        assert_eq!(get(&p.by_program, "other"), Some(0.5));
        assert_eq!(p.by_program[0].0, "vxmeshd", "largest first");
        assert_eq!(
            get(
                &p.vxmeshd,
                "kernel: copies to and from vxmeshd (TAP, socket)"
            ),
            Some(9.32)
        );
        assert_eq!(
            get(&p.vxmeshd, "vxmeshd: copies in its buffers (libc)"),
            Some(2.05)
        );
        assert_eq!(get(&p.vxmeshd, "vxmeshd: its own code"), Some(2.48));
        assert_eq!(
            get(&p.vxmeshd, "kernel: the rest (stack, syscalls, scheduling)"),
            Some(1.57)
        );
        // Idle is no symbol worth listing.
        assert!(p.top.iter().all(|(k, _)| !k.contains("safe_halt")));
        assert!(p.top[0].0.starts_with("iperf3"));
    }

    #[test]
    fn round_trips_are_counted_per_thread_kind() {
        let text = "\
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
   16823.812013 [0001]  ping[22385]                         0.000      0.000      2.000
   16823.812052 [0000]  vxm-lane-0[22165/22161]             1.924      0.032      0.024
   16823.812072 [0000]  vxm-lane-0[22171/22167]                                          awakened: vxm-lane-0[22165/22161]
   16823.812076 [0000]  vxm-lane-0[22171/22167]             1.978      0.008      0.022
   16823.812105 [0000]  vxm-lane-1[22165/22161]             0.023      0.004      0.020
   16823.814016 [0001]  ping[22385]                         0.000      0.002      2.001
   16823.814020 [0001]  sshd[100]                           0.000      0.100      0.100
";
        let w = WakeProfile::from_timehist(text, 2, Some(70.0));
        assert_eq!(
            w.threads,
            vec![
                ThreadTurns {
                    thread: "vxm-lane".into(),
                    runs_per_echo: 1.5,
                    sched_delay_p50_us: 8.0,
                    run_p50_us: 22.0,
                },
                ThreadTurns {
                    thread: "ping".into(),
                    runs_per_echo: 1.0,
                    sched_delay_p50_us: 1.0,
                    run_p50_us: 2000.5,
                },
            ]
        );
        let text = render(
            &[(
                "vxmesh",
                &PathProfile {
                    wakeups: Some(w),
                    ..Default::default()
                },
            )],
            Some("abc1234"),
        );
        assert!(text.starts_with("build abc1234\n"), "{text}");
        assert!(text.contains("vxm-lane   1.5 runs per echo"), "{text}");
    }

    #[test]
    fn syscalls_are_summed_over_vxmeshd_threads_with_what_ran_inside() {
        let text = "\
 36.68% | 0.51%  |vxm-lane-0     |[k] do_syscall_64
 36.68% | 0.00%  |vxm-lane-0     |[k] entry_SYSCALL_64_after_hwframe
 13.68% | 0.04%  |vxm-lane-0     |[k] __sys_sendmsg
 11.41% | 0.19%  |vxm-lane-0     |[k] tun_chr_write_iter
  2.00% | 0.00%  |vxm-lane-1     |[k] tun_chr_write_iter
  1.24% | 0.13%  |vxm-lane-0     |[k] do_sys_poll
  0.29% | 0.24%  |vxm-lane-0     |[k] fdget
 20.00% | 0.10%  |iperf3         |[k] __sys_sendmsg
  5.00% | 0.00%  |http-3         |[k] do_syscall_64
";
        let lines = parse_children(text);
        assert_eq!(lines.len(), 9);
        let c = calls(&lines, OVERLAY_CALLS);
        let get = |k: &str| {
            c.iter()
                .find(|(n, _)| n.starts_with(k))
                .map(|(_, v)| (v * 100.0).round() / 100.0)
        };
        assert_eq!(get("TAP writes"), Some(13.41), "both lanes");
        assert_eq!(get("underlay sends"), Some(13.68), "iperf3's are not ours");
        assert_eq!(get("poll"), Some(1.24));
        assert_eq!(get(ALL_CALLS), Some(36.68));
        assert_eq!(get(ENTRY_EXIT), Some(0.75));
        let s = Sample {
            percent: 1.0,
            comm: "http-3".into(),
            dso: "x".into(),
            sym: "[k] x".into(),
        };
        assert_eq!(program(&s), kind::TASKS);
    }
}
