//! The report of `containers`: the table with the vxmesh/swarm and
//! containers/hosts ratios, and the JSON.

use super::*;

/// The table's text and the JSON report of one run.
pub(crate) fn render(
    args: &ContainersArgs,
    machine: &Machine,
    figs: &[Figures],
    run_s: &[(&str, Vec<f64>)],
    docker_version: String,
) -> (String, Value) {
    let m = |v: &[f64]| median(v.iter().copied());
    let f = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
    let (sw, vm, ho) = (&figs[0], &figs[1], &figs[2]);
    let run_m: Vec<Option<f64>> = run_s.iter().map(|(_, v)| m(v)).collect();
    let headers: Vec<String> = [
        "",
        "swarm overlay",
        "vxmesh",
        "vxmesh hosts",
        "vxmesh/swarm",
        "vxmesh/hosts",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let row = |name: &str, a: Option<f64>, b: Option<f64>, c: Option<f64>, d: usize| {
        vec![
            name.to_string(),
            f(a, d),
            f(b, d),
            f(c, d),
            f(ratio(b, a), 3),
            f(ratio(b, c), 3),
        ]
    };
    let rows = vec![
        row(
            "TCP 1 stream, Gbit/s",
            m(&sw.tcp1),
            m(&vm.tcp1),
            m(&ho.tcp1),
            2,
        ),
        row("TCP -P 2, Gbit/s", m(&sw.tcp2), m(&vm.tcp2), m(&ho.tcp2), 2),
        row(
            "ping p50, µs",
            m(&sw.ping_p50_us),
            m(&vm.ping_p50_us),
            m(&ho.ping_p50_us),
            0,
        ),
        vec![
            "docker run --rm, s".into(),
            f(run_m[1], 3),
            f(run_m[0], 3),
            format!("bridge {}", f(run_m[2], 3)),
            f(ratio(run_m[0], run_m[1]), 3),
            format!("vs bridge {}", f(ratio(run_m[0], run_m[2]), 3)),
        ],
    ];
    let head = format!(
        "vxmesh-bench containers: container h1 -> container h2, iperf3 {} s per run, {} rep(s) (median shown), {} pings at 10 ms (busybox ping) per rep, {} docker runs per network\n\
         commit {}; machine: nproc {}, kernel {}, {}, {}\n\
         swarm overlay: Docker {} swarm, attachable overlay (kernel vxlan, UDP 4790); vxmesh: vxmeshd's Docker driver, etcd store; vxmesh hosts: h1 -> h2's own address on the vxmesh network\n",
        args.secs,
        args.reps,
        args.pings,
        args.runs,
        commit(),
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        machine.iperf3,
        docker_version,
    );
    let text = format!("{head}\n{}", format_table(&headers, &rows));
    let j = json!({
        "commit": commit(),
        "secs": args.secs, "reps": args.reps, "pings": args.pings,
        "paths": PATHS.iter().zip(figs).map(|(n, f)| json!({
            "path": n, "tcp1_gbit": f.tcp1, "tcp2_gbit": f.tcp2, "ping_p50_us": f.ping_p50_us,
        })).collect::<Vec<_>>(),
        "docker_run_s": run_s.iter().map(|(n, v)| json!({"network": n, "seconds": v})).collect::<Vec<_>>(),
        "ratios": {
            "tcp1_vxmesh_over_swarm": ratio(m(&vm.tcp1), m(&sw.tcp1)),
            "tcp2_vxmesh_over_swarm": ratio(m(&vm.tcp2), m(&sw.tcp2)),
            "ping_p50_vxmesh_over_swarm": ratio(m(&vm.ping_p50_us), m(&sw.ping_p50_us)),
            "tcp1_containers_over_hosts": ratio(m(&vm.tcp1), m(&ho.tcp1)),
            "docker_run_vxmesh_over_swarm": ratio(run_m[0], run_m[1]),
            "docker_run_vxmesh_over_bridge": ratio(run_m[0], run_m[2]),
        },
    });
    (text, j)
}
