//! The report of `overlay`: the table with the vxmesh/kernel ratios, the
//! JSON summary and the chart's panels.

use super::*;

/// The value of a metric per path, in [`PATHS`] order.
pub(crate) fn row(m: &Metric, results: &[PathResult]) -> Vec<Option<f64>> {
    by_name(&PATHS, results, |r| r.name, m.get)
}

/// vxmesh/kernel and vxmesh/kernel-nooffload of a row.
pub(crate) fn ratios(m: &Metric, v: &[Option<f64>]) -> [Option<f64>; 2] {
    if !m.ratio {
        return [None, None];
    }
    [ratio(v[3], v[1]), ratio(v[3], v[2])]
}

/// The text report: header, table, notes.
/// What vxmeshd ran with, from h1's and h2's status after the last round:
/// offloads, queues, and how well it batched (means over the round).
pub(crate) fn vxmesh_in_effect(results: &[PathResult]) -> Option<String> {
    let vx = results.iter().find(|r| r.name == "vxmesh")?;
    let last = |h: &str| {
        let prefix = format!("{h}: vxmesh status after round ");
        vx.setup
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.parse::<u32>().ok()?, v)))
            .max_by_key(|(round, _)| *round)
            .map(|(_, v)| v["dataplane"].clone())
            .filter(|d| d.is_object())
    };
    let (h1, h2) = (last("h1")?, last("h2")?);
    let f = |d: &Value, k: &str| d[k].as_f64().unwrap_or(f64::NAN);
    Some(format!(
        "vxmesh in effect: TAP vnet header (TSO) {}, UDP GSO runs into the TAP {}, UDP GSO {}, \
         UDP GRO {}, {} lane(s), busy poll {} µs; \
         h1 (sender) read {:.1} TAP frames per wake-up and sent {:.1} datagrams per sendmsg; \
         h2 (receiver) made {:.1} underlay reads per wake-up",
        h1["tap_vnet_hdr"],
        h2["tap_uso_write"],
        h1["udp_gso"],
        h1["udp_gro"],
        h1["queues"],
        h1["busy_poll_us"],
        f(&h1, "tap_reads_per_wakeup"),
        f(&h1, "datagrams_per_send"),
        f(&h2, "underlay_reads_per_wakeup"),
    ))
}

pub(crate) fn table(s: &Settings, machine: &Machine, results: &[PathResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vxmesh-bench overlay: h1 -> h2, iperf3 {} s per run, {} rep(s) (median shown), \
         {} pings at 1 ms per rep, UDP offered at {}",
        s.secs, s.reps, s.pings, s.udp_rate
    );
    if let Some(bps) = rate_bps(&s.udp_rate).filter(|b| *b > 0.0) {
        let offered: Vec<String> = TESTS
            .iter()
            .filter_map(|t| t.udp_len)
            .map(|len| format!("{:.0} kpps at {len} B", bps / (f64::from(len) * 8.0) / 1e3))
            .collect();
        let _ = writeln!(
            out,
            "UDP offered: {} (a path that receives about that with little loss is not saturated)",
            offered.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "order: {} round(s), each measuring underlay, kernel, kernel-nooffload, vxmesh in turn",
        s.reps
    );
    let _ = writeln!(
        out,
        "machine: {}{}",
        machine.describe(),
        machine
            .git
            .as_ref()
            .map_or(String::new(), |g| format!(", build {g}")),
    );
    let _ = writeln!(out);
    let mut headers: Vec<String> = vec!["".into()];
    headers.extend(PATHS.iter().map(|p| p.to_string()));
    headers.push("vxmesh/kernel".into());
    headers.push("vxmesh/kernel-nooffload".into());
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in &METRICS {
        let v = row(m, results);
        let fmt = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
        let mut cells = vec![m.label.to_string()];
        cells.extend(v.iter().map(|x| fmt(*x, m.decimals)));
        cells.extend(ratios(m, &v).iter().map(|x| fmt(*x, 3)));
        rows.push(cells);
    }
    out += &format_table(&headers, &rows);
    if let Some(line) = vxmesh_in_effect(results) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Ratios divide the vxmesh figure by the kernel's (Gbit/s and kpps: higher is better for \
         vxmesh; RTT and CPU: lower is better).\nMachine CPU is every core's busy time while the \
         TCP client ran (iperf3, kernel, daemons and anything else running), per Gbit received."
    );
    failures_section(&mut out, results.iter().flat_map(PathResult::failures));
    out
}

/// The summary (medians and ratios) as JSON.
pub(crate) fn summary(results: &[PathResult]) -> Value {
    let mut map = serde_json::Map::new();
    for m in &METRICS {
        let v = row(m, results);
        let mut e = named(&PATHS, &v);
        let [k, kn] = ratios(m, &v);
        e.insert("vxmesh/kernel".into(), json!(k));
        e.insert("vxmesh/kernel-nooffload".into(), json!(kn));
        map.insert(m.key.into(), Value::Object(e));
    }
    Value::Object(map)
}

/// The chart's panels: TCP Gbit/s, UDP received kpps and ping p50 per path.
pub(crate) fn panels(results: &[PathResult]) -> Vec<Panel> {
    let by_key = |k: &str| {
        METRICS
            .iter()
            .find(|m| m.key == k)
            .map(|m| row(m, results))
            .unwrap_or_default()
    };
    let panel = |title: &str, series: [(&str, &str); 2]| {
        let rows: Vec<Vec<Option<f64>>> = series.iter().map(|(_, k)| by_key(k)).collect();
        Panel {
            title: title.into(),
            series: series.iter().map(|(n, _)| n.to_string()).collect(),
            groups: PATHS
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), rows.iter().map(|r| r[i]).collect()))
                .collect(),
        }
    };
    let mut out = vec![
        panel(
            "TCP throughput h1 -> h2, Gbit/s",
            [("1 stream", "tcp1_gbit_per_s"), ("-P 2", "tcp2_gbit_per_s")],
        ),
        panel(
            "UDP received h1 -> h2, kpps",
            [("64 B", "udp64_rx_kpps"), ("1400 B", "udp1400_rx_kpps")],
        ),
        panel(
            "ping RTT p50 h1 -> h2, µs (lower is better)",
            [
                ("as configured", "ping_p50_us"),
                ("vxmesh busy-polling", "ping_p50_busy_poll_us"),
            ],
        ),
    ];
    out.extend(cpu_panel(results));
    out
}

/// Where the machine's CPU went during the profiled TCP 1 stream runs, on
/// the kernel's vxlan and on vxmesh; `None` when neither was profiled.
pub(crate) fn cpu_panel(results: &[PathResult]) -> Option<Panel> {
    let tcp = |name: &str| {
        let r = results.iter().find(|r| r.name == name)?;
        r.profile
            .as_ref()?
            .cpu
            .iter()
            .find(|c| c.run == "TCP 1 stream")
    };
    let (kernel, vxmesh) = (tcp("kernel"), tcp("vxmesh"));
    if kernel.is_none() && vxmesh.is_none() {
        return None;
    }
    // (label, which list, entries summed).
    const BARS: [(&str, bool, &[&str]); 5] = [
        ("iperf3", false, &[kind::IPERF3]),
        ("vxmeshd copy", true, &[kind::KERNEL_COPIES]),
        ("vxmeshd kern", true, &[kind::KERNEL_REST]),
        (
            "vxmeshd user",
            true,
            &[kind::OWN_CODE, kind::LIBC_COPIES, kind::OTHER_USER],
        ),
        ("idle", false, &[kind::IDLE]),
    ];
    let value = |c: Option<&CpuProfile>, work: bool, keys: &[&str]| {
        let c = c?;
        let list = if work { &c.vxmeshd } else { &c.by_program };
        if list.is_empty() {
            // No vxmeshd on this path: no bar rather than a zero.
            return None;
        }
        // fold, not sum: an empty f64 sum is -0.0.
        Some(
            list.iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .fold(0.0, |t, (_, v)| t + v),
        )
    };
    Some(Panel {
        title: "CPU in TCP 1 stream (perf), % of the machine".into(),
        series: vec!["kernel vxlan".into(), "vxmesh".into()],
        groups: BARS
            .iter()
            .map(|(label, work, keys)| {
                (
                    label.to_string(),
                    vec![value(kernel, *work, keys), value(vxmesh, *work, keys)],
                )
            })
            .collect(),
    })
}

/// A text legend for a chart drawn without fonts.
pub(crate) fn legend(panels: &[Panel]) -> String {
    let mut s = String::from(
        "overlay.png was drawn without text (no TrueType font found; set VXMESH_BENCH_FONT).\n",
    );
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(s, "panel {} (rows of two): {}", i + 1, p.title);
        let _ = writeln!(
            s,
            "  groups left to right: {}",
            p.groups
                .iter()
                .map(|(g, _)| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (j, name) in p.series.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {} bars: {name}",
                chart::COLOR_NAMES[j % chart::COLOR_NAMES.len()]
            );
        }
    }
    s
}
