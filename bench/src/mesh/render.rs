//! The report of `mesh`: the table with the ratios and goals, the JSON
//! summary and the chart's panels.

use super::*;

/// The value of a metric per system, in [`SYSTEMS`] order.
pub(crate) fn row(m: &Metric, results: &[SystemResult]) -> Vec<Option<f64>> {
    by_name(&SYSTEMS, results, |r| r.name, m.get)
}

/// The value of system `name` in a row.
pub(crate) fn at(v: &[Option<f64>], name: &str) -> Option<f64> {
    SYSTEMS.iter().position(|s| *s == name).and_then(|i| v[i])
}

pub(crate) fn fmt(x: Option<f64>, d: usize) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.d$}"))
}

/// Whether a goal was met: "goal met", "not met" or "-" (no figure).
pub(crate) fn verdict(ratio: Option<f64>, goal: Goal) -> &'static str {
    match ratio {
        Some(r) if r >= goal.min => "goal met",
        Some(_) => "not met",
        None => "-",
    }
}

/// What the relay changed: the deployed mesh over the one without it.
const NORELAY: &str = "vxmesh-overlay-norelay";

/// The text report: header, figures, ratios, notes.
pub(crate) fn table(
    s: &Settings,
    machine: &Machine,
    tools: &Tools,
    results: &[SystemResult],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vxmesh-bench mesh: cl -> h1:{HTTP_PUB} (HTTP) / h1:{IPERF_PUB} (iperf3) -> tasks on h2, h3; \
         {} s per run, {} rep(s) (median shown), wrk -t1 -c{}, {} s iperf3 warm-up per system and round",
        s.secs, s.reps, s.connections, s.warmup
    );
    let _ = writeln!(
        out,
        "order: each round measures direct, haproxy, haproxy-splice, vxmesh-overlay (its own \
         daemons), vxmesh-overlay-norelay and vxmesh-underlay (daemons with mesh_relay_port = 0), \
         nft, nft-overlay (kernel vxlan made for it, deleted after) in turn; before haproxy and \
         nft the tasks' TIME_WAIT sockets towards h1's underlay address are waited out, before \
         vxmesh-overlay-norelay and nft-overlay those towards its overlay address (the other \
         one's tuples stall connects)"
    );
    let _ = writeln!(
        out,
        "machine: nproc {}, kernel {} ({}), load avg {} at start, {} at end{}\n\
         tools: {}; {}; {}; {}",
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        machine.loadavg_start,
        machine.loadavg_end,
        machine
            .git
            .as_ref()
            .map_or(String::new(), |g| format!(", build {g}")),
        machine.iperf3,
        tools.wrk,
        tools.haproxy,
        tools.nft,
    );
    let _ = writeln!(out);
    let mut headers: Vec<String> = vec!["".into()];
    headers.extend(SYSTEMS.iter().map(|p| p.to_string()));
    let mut rows = Vec::new();
    for m in &METRICS {
        let v = row(m, results);
        let mut cells = vec![m.label.to_string()];
        cells.extend(v.iter().map(|x| fmt(*x, m.decimals)));
        rows.push(cells);
    }
    out += &format_table(&headers, &rows);
    let _ = writeln!(out);

    let mut headers: Vec<String> = vec!["ratio".into()];
    headers.extend(BASELINES.iter().map(|b| format!("/{b}")));
    let mut rows = Vec::new();
    for m in METRICS.iter().filter(|m| m.ratio) {
        let v = row(m, results);
        for vx in VXMESH {
            let mut cells = vec![format!("{}, {vx}", m.label)];
            for b in BASELINES {
                cells.push(fmt(ratio(at(&v, vx), at(&v, b)), 3));
            }
            rows.push(cells);
        }
    }
    out += &format_table(&headers, &rows);
    let _ = writeln!(out);

    let headers: Vec<String> = vec![
        format!("goal (issue 20), {DEPLOYED} (the mesh as deployed)"),
        "ratio".into(),
        "goal".into(),
        String::new(),
    ];
    let mut rows = Vec::new();
    for m in &METRICS {
        let Some(g) = m.goal else { continue };
        let v = row(m, results);
        let r = ratio(at(&v, DEPLOYED), at(&v, g.of));
        rows.push(vec![
            format!("{}: {DEPLOYED} / {}", m.label, g.of),
            fmt(r, 3),
            format!(">= {:.1}", g.min),
            verdict(r, g).to_string(),
        ]);
    }
    out += &format_table(&headers, &rows);
    let _ = writeln!(out);
    let relay: Vec<String> = METRICS
        .iter()
        .filter(|m| m.ratio)
        .map(|m| {
            let v = row(m, results);
            format!(
                "{} {}",
                m.label,
                fmt(ratio(at(&v, DEPLOYED), at(&v, NORELAY)), 3)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "the relay, {DEPLOYED} / {NORELAY}: {}\n",
        relay.join("; ")
    );
    let _ = writeln!(
        out,
        "Ratios divide the vxmesh figure by the other system's (higher is better for vxmesh).\n\
         nft-overlay: nft's DNAT to the tasks' overlay addresses over the kernel's vxlan (vxk0).\n\
         vxmesh-overlay: as deployed, h1 to the task node's relay over the underlay, connected to \
         the task there; vxmesh-overlay-norelay (mesh_relay_port = 0): through h1's TAP, VXLAN and \
         the task host's TAP; vxmesh-underlay: the norelay daemons with host routes in h1 that \
         send the tasks' addresses over the underlay, relaying like HAProxy.\n\
         Machine busy % is every core's busy time over all cores while the client ran (load \
         generator, kernel, balancer, tasks); balancer CPU is HAProxy's or the three vxmeshd's \
         (nft works in the kernel's softirq: not attributable)."
    );
    failures_section(&mut out, results.iter().flat_map(SystemResult::failures));
    out
}

/// The summary (medians, ratios, goals) as JSON.
pub(crate) fn summary(results: &[SystemResult]) -> Value {
    let mut map = serde_json::Map::new();
    for m in &METRICS {
        let v = row(m, results);
        let mut e = named(&SYSTEMS, &v);
        if m.ratio {
            for vx in VXMESH {
                for b in BASELINES {
                    e.insert(format!("{vx}/{b}"), json!(ratio(at(&v, vx), at(&v, b))));
                }
            }
            e.insert(
                format!("{DEPLOYED}/{NORELAY}"),
                json!(ratio(at(&v, DEPLOYED), at(&v, NORELAY))),
            );
        }
        if let Some(g) = m.goal {
            let r = ratio(at(&v, DEPLOYED), at(&v, g.of));
            e.insert(
                format!("{DEPLOYED} goal"),
                json!({"at_least": g.min, "of": g.of, "ratio": r, "met": r.map(|r| r >= g.min)}),
            );
        }
        map.insert(m.key.into(), Value::Object(e));
    }
    Value::Object(map)
}

/// The chart's panels: one per main figure, a bar per system.
pub(crate) fn panels(results: &[SystemResult]) -> Vec<Panel> {
    METRICS
        .iter()
        .filter(|m| m.ratio)
        .map(|m| {
            let v = row(m, results);
            Panel {
                title: m.label.to_string(),
                series: vec!["median".into()],
                groups: SHORT
                    .iter()
                    .zip(v)
                    .map(|(s, x)| (s.to_string(), vec![x]))
                    .collect(),
            }
        })
        .collect()
}

/// A text legend for a chart drawn without fonts.
pub(crate) fn legend(panels: &[Panel]) -> String {
    let mut s = String::from(
        "mesh.png was drawn without text (no TrueType font found; set VXMESH_BENCH_FONT).\n",
    );
    let places = ["top left", "top right", "bottom left", "bottom right"];
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(s, "{} panel: {}", places.get(i).unwrap_or(&"next"), p.title);
        let _ = writeln!(
            s,
            "  bars left to right: {}",
            p.groups
                .iter()
                .map(|(g, _)| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}
