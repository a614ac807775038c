//! Parts of the reports that every benchmark shares: what the machine is,
//! daemons' logs kept per round, and plain-text tables.

use std::path::Path;

use serde::Serialize;

/// The commit the binaries come from, and whether the tree had changes
/// (with the folders they are in, so that a reader can tell whether they
/// touch what was measured).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let status = git(&["status", "--porcelain", "--untracked-files=no"]);
    match changed_folders(&status) {
        Some(folders) => format!("{head} (with uncommitted changes in {folders})"),
        None => head,
    }
}

/// The folders (first two path components) of the files `git status
/// --porcelain` lists, comma-separated; `None` when it lists none.
pub fn changed_folders(porcelain: &str) -> Option<String> {
    let mut folders: Vec<String> = Vec::new();
    for line in porcelain.lines() {
        // "XY path" or "XY old -> new"; the file as it is now is the last.
        let Some(path) = line.get(3..).and_then(|p| p.rsplit(" -> ").next()) else {
            continue;
        };
        let parts: Vec<&str> = path.trim_matches('"').split('/').collect();
        let folder = match parts.len() {
            1 => ".".to_string(),
            2 => parts[0].to_string(),
            _ => format!("{}/{}", parts[0], parts[1]),
        };
        if !folders.contains(&folder) {
            folders.push(folder);
        }
    }
    (!folders.is_empty()).then(|| folders.join(", "))
}

/// What the machine is, for the report.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs available (nproc).
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// First `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `iperf3 --version`, first line.
    pub iperf3: String,
    /// /proc/loadavg when the run started.
    pub loadavg_start: String,
    /// /proc/loadavg when the run ended.
    pub loadavg_end: String,
    /// `git describe` of the workspace the binary was built in, if known.
    pub git: Option<String>,
}

impl Machine {
    /// `nproc 2, kernel <release> (<cpu>), <iperf3>, load avg <start> at
    /// start, <end> at end`, for a report's header.
    pub fn describe(&self) -> String {
        format!(
            "nproc {}, kernel {} ({}), {}, load avg {} at start, {} at end",
            self.nproc,
            self.kernel,
            self.cpu_model,
            self.iperf3,
            self.loadavg_start,
            self.loadavg_end,
        )
    }
}

/// The first line of `s`, trimmed.
pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The first line of what `prog args` prints, when it succeeds.
pub fn command_line(prog: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| first_line(&String::from_utf8_lossy(&out.stdout)))
}

/// The three load averages of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    /// Reads what the machine is now (load average at start included).
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_default();
        let git = std::env::current_exe().ok().and_then(|exe| {
            let dir = exe.parent()?.to_str()?.to_string();
            command_line("git", &["-C", &dir, "describe", "--always", "--dirty"])
        });
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpu_model,
            iperf3: command_line("iperf3", &["--version"]).unwrap_or_else(|| "?".into()),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            git,
        }
    }
}

/// Appends a daemon's log to `dest`, under a header naming the round.
pub fn append_log(src: &Path, dest: &Path, round: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let text = std::fs::read(src)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dest)?;
    writeln!(f, "===== round {round} =====")?;
    f.write_all(&text)
}

/// A plain-text table: the first column left-aligned, the others
/// right-aligned, two spaces apart, a rule of dashes under the headers.
pub fn format_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = rows
        .iter()
        .map(Vec::len)
        .chain(std::iter::once(headers.len()))
        .max()
        .unwrap_or(0);
    let mut w = vec![0usize; cols];
    for r in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                l += c;
                l += &" ".repeat(pad);
            } else {
                l += "  ";
                l += &" ".repeat(pad);
                l += c;
            }
        }
        l.trim_end().to_string()
    };
    let mut out = line(headers);
    out.push('\n');
    out += &"-".repeat(w.iter().sum::<usize>() + 2 * cols.saturating_sub(1));
    out.push('\n');
    for r in rows {
        out += &line(r);
        out.push('\n');
    }
    out
}

/// Appends the `FAILURES (n):` section of a table (the first line of each
/// failure), if there is any.
pub fn failures_section(out: &mut String, failures: impl Iterator<Item = String>) {
    let failures: Vec<String> = failures.collect();
    if !failures.is_empty() {
        out.push_str(&format!("\nFAILURES ({}):\n", failures.len()));
        for f in failures {
            out.push_str(&format!("  {}\n", f.lines().next().unwrap_or("")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_folders_of_a_status() {
        assert_eq!(changed_folders(""), None);
        let st = " M tests/fuzz/Cargo.toml\n M tests/fuzz/bodies.rs\nM  bench/src/lib.rs\n\
                  R  a/b/c.rs -> d/e/f.rs\n M Cargo.lock\n";
        assert_eq!(
            changed_folders(st).as_deref(),
            Some("tests/fuzz, bench/src, d/e, .")
        );
    }

    #[test]
    fn tables_align() {
        let h: Vec<String> = ["", "a", "bbb"].iter().map(|s| s.to_string()).collect();
        let rows = vec![
            vec!["row one".to_string(), "1.5".into(), "2".into()],
            vec!["r2".to_string(), "10.25".into(), "-".into()],
        ];
        let t = format_table(&h, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "             a  bbb");
        assert_eq!(lines[1], "-".repeat(7 + 5 + 3 + 4));
        assert_eq!(lines[2], "row one    1.5    2");
        assert_eq!(lines[3], "r2       10.25    -");
    }
}
