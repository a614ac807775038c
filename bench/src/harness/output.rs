//! The files a benchmark writes into its output directory: `<bench>.txt`
//! (the table, also printed), `<bench>.png` (the chart; without a font,
//! `<bench>-legend.txt` beside a chart without text) and `<bench>.json`
//! (the report), then the notes and what was written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde_json::Value;

use super::chart::{self, Panel};
use super::report::Machine;

/// What a benchmark takes down before its first namespace.
pub struct Start {
    /// The machine, its load average at the start.
    pub machine: Machine,
    /// Seconds since the epoch, for the report's `started_unix`.
    pub started_unix: u64,
    /// Clock ticks per second, for the CPU figures.
    pub clk_tck: f64,
    /// When the measuring began, for the report's `elapsed_s`.
    pub t0: Instant,
}

impl Start {
    /// At the end of the measuring: takes down the load average and
    /// returns the time it took.
    pub fn ended(&mut self) -> Duration {
        self.machine.loadavg_end = super::report::loadavg();
        self.t0.elapsed()
    }
}

/// Makes the output directory `out` and takes down the machine, the time
/// and the clock ticks.
pub fn start(out: &Path) -> anyhow::Result<Start> {
    let clk_tck = crate::cpu::clock_ticks()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(Start {
        machine: Machine::probe(),
        started_unix: started_unix(),
        clk_tck,
        t0: Instant::now(),
    })
}

/// Seconds since the epoch, for a report's `started_unix`.
pub fn started_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints the table and writes it to `<out>/<bench>.txt`.
pub fn table(out: &Path, bench: &str, text: &str) -> anyhow::Result<PathBuf> {
    println!("{text}");
    let txt = out.join(format!("{bench}.txt"));
    std::fs::write(&txt, text).with_context(|| format!("writing {}", txt.display()))?;
    Ok(txt)
}

/// Draws `panels` (`cols` columns, `size` pixels) to `<out>/<bench>.png`;
/// without a font, the legend goes to `<bench>-legend.txt` and a note says
/// so.
pub fn chart(
    out: &Path,
    bench: &str,
    panels: &[Panel],
    cols: usize,
    size: (u32, u32),
    legend: impl FnOnce(&[Panel]) -> String,
    notes: &mut Vec<String>,
) -> anyhow::Result<PathBuf> {
    let png = out.join(format!("{bench}.png"));
    let font = chart::load_font();
    chart::draw_grid(&png, panels, cols, size, font.is_some())?;
    if font.is_none() {
        let lp = out.join(format!("{bench}-legend.txt"));
        std::fs::write(&lp, legend(panels)).with_context(|| format!("writing {}", lp.display()))?;
        notes.push(format!(
            "no font found: chart without text, legend in {}",
            lp.display()
        ));
    }
    Ok(png)
}

/// Writes the report to `<out>/<bench>.json`.
pub fn json(out: &Path, bench: &str, report: &Value) -> anyhow::Result<PathBuf> {
    let jp = out.join(format!("{bench}.json"));
    let body = serde_json::to_string_pretty(report).context("serialising the report")?;
    std::fs::write(&jp, body).with_context(|| format!("writing {}", jp.display()))?;
    Ok(jp)
}

/// The closing lines: every note, the files written and the time taken;
/// an error when some of the compared things gave no figure at all.
pub fn finish(
    notes: &[String],
    files: &[&Path],
    elapsed: Duration,
    broken: &[&str],
) -> anyhow::Result<()> {
    for n in notes {
        eprintln!("note: {n}");
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!(
        "wrote {} in {:.0} s",
        names.join(", "),
        elapsed.as_secs_f64()
    );
    if !broken.is_empty() {
        bail!("no figure at all for: {}", broken.join(", "));
    }
    Ok(())
}
