//! The report of `encryption`: the table with the encrypted/plain and
//! encrypted/wireguard-go ratios beside their goals, the CPU cost of
//! encryption, what was in effect, and the JSON summary.

use super::*;

/// What each ratio column divides the encrypted path's figure by.
const AGAINST: [&str; 2] = ["plain", "wireguard-go"];

/// The value of a metric per path, in [`PATHS`] order.
pub(crate) fn row(m: &Metric, paths: &[PathResult]) -> Vec<Option<f64>> {
    by_name(&PATHS, paths, |r| r.name, m.get)
}

/// encrypted/plain and encrypted/wireguard-go of a row (none where the
/// row has no ratio).
pub(crate) fn ratios(m: &Metric, v: &[Option<f64>]) -> [Option<f64>; 2] {
    let (plain, encrypted, wg) = (v[0], v[1], v[2]);
    let both = [ratio(encrypted, plain), ratio(encrypted, wg)];
    both.map(|r| r.filter(|_| m.ratio))
}

/// Whether each goal of a row is met: `None` without a goal or a ratio.
pub(crate) fn verdicts(m: &Metric, r: &[Option<f64>; 2]) -> [Option<bool>; 2] {
    [0, 1].map(|i| Some(m.goals[i]?.met(r[i]?)))
}

/// The goal cell of the table: `>= 0.7 met`, `<= 1.2 MISSED`, `-`.
fn goal_cell(goal: Option<Goal>, met: Option<bool>) -> String {
    match (goal, met) {
        (Some(g), Some(true)) => format!("{} met", g.want()),
        (Some(g), Some(false)) => format!("{} MISSED", g.want()),
        (Some(g), None) => format!("{} ?", g.want()),
        (None, _) => "-".into(),
    }
}

/// Machine CPU per Gbit/s of encrypted minus plain in the TCP 1 stream
/// runs: what encryption costs, in cores per Gbit/s.
pub(crate) fn encryption_cpu_cost(paths: &[PathResult]) -> Option<f64> {
    let m = METRICS
        .iter()
        .find(|m| m.key == "tcp1_machine_cpu_per_gbit_per_s")?;
    let v = row(m, paths);
    Some(v[1]? - v[0]?)
}

/// The "in effect" line: the cipher, the MTUs and the offloads.
pub(crate) fn in_effect_line(run: &Run) -> String {
    let e = &run.in_effect;
    let mtu = |i: usize| {
        run.paths
            .get(i)
            .and_then(|p| p.mtu)
            .map_or("?".to_string(), |m| m.to_string())
    };
    let d = &e.vxmesh_dataplane;
    format!(
        "in effect: cipher {} ({}); MTU plain {}, encrypted {}, wireguard-go {} (set to the encrypted network's); \
         vxmesh: TAP vnet header (TSO) {}, UDP GSO {}, UDP GRO {}, {} lane(s), busy poll {} µs; \
         h1's encrypted TAP: {}; wireguard-go device: {}; {}",
        e.cipher.as_deref().unwrap_or("none"),
        e.sessions.join(", "),
        mtu(0),
        mtu(1),
        mtu(2),
        d["tap_vnet_hdr"],
        d["udp_gso"],
        d["udp_gro"],
        d["queues"],
        d["busy_poll_us"],
        e.tap_offloads.as_deref().unwrap_or("?"),
        e.wireguard_offloads.as_deref().unwrap_or("?"),
        e.tools.join(", "),
    )
}

/// The text report: header, table, CPU cost, in-effect line, goals,
/// failures.
pub(crate) fn table(s: &Settings, machine: &Machine, commit: &str, run: &Run) -> String {
    let paths = &run.paths;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vxmesh-bench encryption: h1 -> h2, iperf3 {} s per run, {} rep(s) (median shown), \
         {} pings at 1 ms per rep, UDP 64 B offered at {} pps",
        s.secs, s.reps, s.pings, s.udp_pps
    );
    let _ = writeln!(out, "commit {commit}; machine: {}", machine.describe());
    let _ = writeln!(
        out,
        "paths: plain = vxmesh network front, encrypted = vxmesh network {SEALED_NET} \
         (encrypted = true), both on one pair of vxmeshd (one cluster file); \
         wireguard-go = userspace WireGuard between the same hosts"
    );
    let _ = writeln!(
        out,
        "order: {} round(s), each measuring {} in turn",
        s.reps,
        PATHS.join(", ")
    );
    let _ = writeln!(out);
    let mut headers: Vec<String> = vec!["".into()];
    headers.extend(PATHS.iter().map(|p| p.to_string()));
    for a in AGAINST {
        headers.push(format!("encrypted/{a}"));
        headers.push("goal".into());
    }
    let fmt = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in &METRICS {
        let v = row(m, paths);
        let r = ratios(m, &v);
        let met = verdicts(m, &r);
        let mut cells = vec![m.label.to_string()];
        cells.extend(v.iter().map(|x| fmt(*x, m.decimals)));
        for i in 0..2 {
            cells.push(fmt(r[i], 3));
            cells.push(goal_cell(m.goals[i], met[i]));
        }
        rows.push(cells);
    }
    out += &format_table(&headers, &rows);
    let cpu = METRICS
        .iter()
        .find(|m| m.key == "tcp1_machine_cpu_per_gbit_per_s")
        .map(|m| row(m, paths))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nencryption's CPU cost: {} cores per Gbit/s (machine CPU per Gbit/s in TCP 1 stream, \
         encrypted {} - plain {})",
        encryption_cpu_cost(paths).map_or("-".into(), |c| format!("{c:+.3}")),
        fmt(cpu.get(1).copied().flatten(), 3),
        fmt(cpu.first().copied().flatten(), 3),
    );
    let _ = writeln!(out, "{}", in_effect_line(run));
    let goals = goals_json(paths);
    let list = goals.as_array().map(Vec::as_slice).unwrap_or_default();
    let met = list.iter().filter(|g| g["met"] == true).count();
    let _ = writeln!(out, "\ngoals (issue): {met} of {} met", list.len());
    for g in list {
        let _ = writeln!(
            out,
            "  {}: encrypted/{} {}: {} {}",
            g["label"].as_str().unwrap_or("?"),
            g["against"].as_str().unwrap_or("?"),
            g["want"].as_str().unwrap_or("?"),
            g["ratio"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.3}")),
            match g["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            },
        );
    }
    let _ = writeln!(
        out,
        "\nRatios divide the encrypted vxmesh figure by plain vxmesh's and by wireguard-go's \
         (Gbit/s and pps: higher is better; ping and CPU: lower is better). \"At least as good \
         as wireguard-go\" is a ratio >= 1 for throughput and packet rate and <= 1 for ping.\n\
         Machine CPU per Gbit/s is every core's busy time while the TCP client ran (iperf3, \
         kernel, daemons, tunnel and anything else running) over the Gbit received: cores \
         busy per Gbit/s. The vxmeshd / wireguard-go row counts only the two tunnel processes."
    );
    failures_section(&mut out, paths.iter().flat_map(PathResult::failures));
    out
}

/// The summary (medians and ratios) as JSON.
pub(crate) fn summary(paths: &[PathResult]) -> Value {
    let figure = |m: &Metric| {
        let v = row(m, paths);
        let against = AGAINST.iter().zip(ratios(m, &v));
        let mut e = named(&PATHS, &v);
        e.extend(against.map(|(a, r)| (format!("encrypted/{a}"), json!(r))));
        (m.key.to_string(), Value::Object(e))
    };
    Value::Object(METRICS.iter().map(figure).collect())
}

/// Every goal with its ratio and whether it is met (`null`: no figure).
pub(crate) fn goals_json(paths: &[PathResult]) -> Value {
    let mut out = Vec::new();
    for m in &METRICS {
        let r = ratios(m, &row(m, paths));
        let met = verdicts(m, &r);
        for i in 0..2 {
            if let Some(g) = m.goals[i] {
                out.push(json!({
                    "figure": m.key,
                    "label": m.label,
                    "against": AGAINST[i],
                    "want": g.want(),
                    "ratio": r[i],
                    "met": met[i],
                }));
            }
        }
    }
    Value::Array(out)
}
