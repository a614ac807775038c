//! The measurements of `containers`: one iperf3 run on a path, and what
//! iperf3 and busybox ping print.

use super::*;

/// What one path measured (all repetitions).
#[derive(Default, Debug)]
pub(crate) struct Figures {
    pub(crate) tcp1: Vec<f64>,
    pub(crate) tcp2: Vec<f64>,
    pub(crate) ping_p50_us: Vec<f64>,
}

pub(crate) fn ok(out: std::process::Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Gbit/s received of an iperf3 `-J` report.
pub(crate) fn iperf_gbit(json: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("no sum_received in {}", v["error"]))
}

/// Median of the `time=X ms` lines of a ping's output, in µs.
pub(crate) fn ping_p50_us(out: &str) -> Option<f64> {
    median(out.lines().filter_map(|l| {
        let t = l.split("time=").nth(1)?;
        t.split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .map(|ms| ms * 1000.0)
    }))
}

/// One iperf3 TCP run on path `p` (0 swarm, 1 vxmesh, 2 hosts): Gbit/s.
#[allow(clippy::too_many_arguments)]
pub(crate) fn measure_tcp(
    tb: &Testbed,
    d1: &Docker,
    p: usize,
    s2: &str,
    v2: &str,
    host2: &str,
    secs: &str,
    streams: u32,
) -> anyhow::Result<f64> {
    let n = streams.to_string();
    let out = match p {
        0 => ok(
            d1.docker(&["exec", "s1", "iperf3", "-c", s2, "-t", secs, "-P", &n, "-J"]),
            "iperf3 swarm",
        )?,
        1 => ok(
            d1.docker(&["exec", "v1", "iperf3", "-c", v2, "-t", secs, "-P", &n, "-J"]),
            "iperf3 vxmesh",
        )?,
        _ => {
            let o = tb.exec(
                &tb.ns("h1"),
                &["iperf3", "-c", host2, "-t", secs, "-P", &n, "-J"],
            )?;
            String::from_utf8_lossy(&o.stdout).to_string()
        }
    };
    iperf_gbit(&out)
}
