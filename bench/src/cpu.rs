//! CPU time used by processes and by the whole machine, from `/proc`.
//!
//! There are no hardware counters in this guest (see TESTBED-NOTES.md), so
//! CPU is accounted in clock ticks: `utime + stime` of `/proc/<pid>/stat`
//! (all threads of the process) and the busy columns of `/proc/stat`.

use anyhow::{bail, Context};

/// Clock ticks per second (`getconf CLK_TCK`, normally 100).
pub fn clock_ticks() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running `getconf CLK_TCK`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<f64>() {
        Ok(t) if out.status.success() && t > 0.0 => Ok(t),
        _ => bail!("`getconf CLK_TCK` printed {:?}", text.trim()),
    }
}

/// `utime + stime` in ticks from the text of `/proc/<pid>/stat`. The command
/// name (field 2) is in parentheses and may hold spaces, so fields are
/// counted after the last `)`: state is field 3, utime 14, stime 15.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by process `pid` (all its threads).
pub fn pid_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_pid_stat(&text).with_context(|| format!("parsing {path}: {text:?}"))
}

/// Busy and total ticks of all CPUs since boot, from the `cpu ` line of
/// `/proc/stat`: busy is everything but idle and iowait.
pub fn parse_host_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest
    // time is already counted in user, so only the first 8 columns add up.
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Busy and total ticks of the machine so far.
pub fn host_ticks() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_host_stat(&text).context("parsing the `cpu ` line of /proc/stat")
}

/// A snapshot of the machine's busy ticks and of some processes' ticks.
#[derive(Debug, Clone)]
pub struct Snapshot {
    host_busy: u64,
    procs: Vec<u64>,
}

impl Snapshot {
    /// Reads `/proc/stat` and `/proc/<pid>/stat` of each pid.
    pub fn take(pids: &[u32]) -> anyhow::Result<Snapshot> {
        let (host_busy, _) = host_ticks()?;
        let procs = pids
            .iter()
            .map(|&p| pid_ticks(p))
            .collect::<anyhow::Result<_>>()?;
        Ok(Snapshot { host_busy, procs })
    }

    /// CPU seconds used between `self` and `later`: (machine, sum of the
    /// processes; `None` when no process was watched).
    pub fn seconds_until(&self, later: &Snapshot, clk_tck: f64) -> (f64, Option<f64>) {
        let host = later.host_busy.saturating_sub(self.host_busy) as f64 / clk_tck;
        let procs = (!self.procs.is_empty()).then(|| {
            self.procs
                .iter()
                .zip(&later.procs)
                .map(|(a, b)| b.saturating_sub(*a))
                .sum::<u64>() as f64
                / clk_tck
        });
        (host, procs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_stat_with_spaces_in_the_name() {
        let s = "1234 (vx mesh) d) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                 250 75 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_pid_stat(s), Some(325));
        assert_eq!(parse_pid_stat("1234 (x) S 1"), None);
    }

    #[test]
    fn host_stat() {
        let s = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_host_stat(s), Some((165, 1185)));
        assert_eq!(parse_host_stat("intr 1 2 3\n"), None);
    }

    #[test]
    fn own_process_and_host_are_readable() {
        let me = pid_ticks(std::process::id()).unwrap();
        let (busy, total) = host_ticks().unwrap();
        assert!(busy <= total && total > 0);
        let a = Snapshot::take(&[std::process::id()]).unwrap();
        let b = Snapshot::take(&[std::process::id()]).unwrap();
        let (host, procs) = a.seconds_until(&b, 100.0);
        assert!(host >= 0.0 && procs.unwrap() >= 0.0);
        let _ = me;
    }
}
