//! The systems `mesh` compares, brought up on the testbed: nftables,
//! HAProxy, vxmeshd; and the checks that one serves.

use super::*;

/// Waits until `GET /1k` from cl through `addr` has answered at least 4
/// times and `tasks` distinct tasks were among the answers, up to
/// [`SERVE_TIMEOUT`]. Returns the tasks seen.
pub(crate) fn serves(tb: &Testbed, addr: SocketAddr, tasks: usize) -> anyhow::Result<Vec<String>> {
    let res = tb.in_ns("cl", move || {
        let deadline = Instant::now() + SERVE_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        let (mut ok, mut last) = (0u32, String::from("no attempt"));
        while Instant::now() < deadline {
            match crate::http::get(addr, "/1k", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 && r.body == crate::http::SMALL => {
                    ok += 1;
                    let t = r.task.unwrap_or_default();
                    if !seen.contains(&t) {
                        seen.push(t);
                    }
                    if ok >= 4 && seen.len() >= tasks {
                        seen.sort();
                        return Ok(seen);
                    }
                    continue;
                }
                Ok(r) => last = format!("{r:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{ok} good answers, tasks {seen:?} (want {tasks}), last: {last}"
        ))
    })?;
    res.map_err(|e| anyhow!("{addr} does not serve from cl within {SERVE_TIMEOUT:?}: {e}"))
}

/// Runs a bounded command in a namespace and returns its stdout.
pub(crate) fn run(tb: &Testbed, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    daemon::run(tb, ns, args, CMD_TIMEOUT)
}

/// Bytes through h1's TAP so far (received + sent), if it exists.
pub(crate) fn tap_bytes(tb: &Testbed) -> Option<u64> {
    let read = |dir: &str| -> Option<u64> {
        let path = format!("/sys/class/net/vxm-front/statistics/{dir}_bytes");
        run(tb, "h1", &["cat", &path]).ok()?.trim().parse().ok()
    };
    Some(read("rx")? + read("tx")?)
}

/// Waits (up to [`TW_WAIT`]) until the tasks hold no TIME_WAIT socket of an
/// underlay connection from h1 (`198.18.0.1` to `198.18.0.2/.3`). Such
/// sockets are left by the systems that reach the tasks over the underlay
/// from h1's address, HAProxy and nft alike, and the next system of the
/// other kind reuses their 4-tuples with timestamps from another clock:
/// nft's masqueraded SYNs carry the client's, HAProxy's carry h1's own.
/// The tasks then most likely refuse those SYNs (PAWS) and the connects
/// stall: HAProxy measured right after nft made 3.8 k instead of 8.8 k new
/// conn/s, and nft right after HAProxy 1.5 k instead of 9.5 k, with the
/// machine idle. (vxmesh's upstream goes to the tasks' overlay addresses:
/// other tuples.)
pub(crate) fn tw_gone(
    tb: &Testbed,
    name: &str,
    round: u32,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let count = || -> anyhow::Result<usize> {
        let mut n = 0;
        for (h, ul) in [("h2", UL[1]), ("h3", UL[2])] {
            let (src, dst) = (ul.to_string(), UL[0].to_string());
            let text = run(
                tb,
                h,
                &["ss", "-Htn", "state", "time-wait", "src", &src, "dst", &dst],
            )?;
            n += text.lines().filter(|l| !l.trim().is_empty()).count();
        }
        Ok(n)
    };
    let start = Instant::now();
    let first = count()?;
    let mut left = first;
    while left > 0 && start.elapsed() < TW_WAIT {
        std::thread::sleep(Duration::from_secs(1));
        left = count()?;
    }
    if first > 0 {
        let line = format!(
            "round {round}: before {name}, waited {:.0} s for {first} TIME_WAIT sockets on the \
             tasks from h1's underlay address to go ({left} left)",
            start.elapsed().as_secs_f64()
        );
        eprintln!("[{name}] {line}");
        notes.push(line);
    }
    Ok(())
}

/// Starts HAProxy in h1 with `cfg` and waits until it listens on both
/// published ports.
pub(crate) fn haproxy_up(tb: &mut Testbed, cfg: &Path) -> anyhow::Result<Proc> {
    let cfg = cfg.to_str().context("temp path is not UTF-8")?;
    let p = tb.spawn("h1", &["/usr/sbin/haproxy", "-f", cfg, "-db"], &[])?;
    for port in [HTTP_PUB, IPERF_PUB] {
        if let Err(e) = iperf::wait_listening(&p, port, Duration::from_secs(10)) {
            tb.stop(&p);
            return Err(e.context("starting HAProxy"));
        }
    }
    Ok(p)
}

/// Starts vxmeshd in h1, h2 and h3, each waited for until READY=1, then
/// until h1 sees every task of both services up.
pub(crate) fn vxmesh_up(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cli: &Path,
) -> anyhow::Result<Vec<(String, Proc, PathBuf)>> {
    let procs = daemon::start_daemons(tb, vxmeshd, CLUSTER, &["h1", "h2", "h3"], READY_TIMEOUT)?;
    let sock = procs[0].2.clone();
    let deadline = Instant::now() + SERVE_TIMEOUT;
    for svc in ["web", "iperf"] {
        loop {
            let ps = cli_json(tb, cli, &sock, &["service", "ps", svc]);
            let up = ps.as_ref().ok().and_then(Value::as_array).is_some_and(|a| {
                a.len() == 2 && a.iter().all(|t| t["state"].as_str() == Some("up"))
            });
            if up {
                break;
            }
            if Instant::now() >= deadline {
                bail!("h1 does not see both tasks of `{svc}` up: {ps:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(procs)
}

/// The CLI's JSON answer (`vxmesh --socket S --json args`), run in h1.
pub(crate) fn cli_json(
    tb: &Testbed,
    cli: &Path,
    sock: &Path,
    args: &[&str],
) -> anyhow::Result<Value> {
    let (cli, sock) = (
        cli.to_str().context("path is not UTF-8")?,
        sock.to_str().context("path is not UTF-8")?,
    );
    let mut a = vec![cli, "--socket", sock, "--json"];
    a.extend_from_slice(args);
    let text = run(tb, "h1", &a)?;
    serde_json::from_str(&text).with_context(|| format!("vxmesh {args:?} printed {text:?}"))
}

/// The host routes that send the tasks' overlay addresses from h1 over the
/// underlay (`add`) or remove them.
pub(crate) fn underlay_routes(tb: &Testbed, add: bool) -> anyhow::Result<()> {
    for i in 1..3 {
        let (dst, via) = (format!("{}/32", OV[i]), UL[i].to_string());
        let verb = if add { "replace" } else { "del" };
        run(
            tb,
            "h1",
            &["ip", "route", verb, &dst, "via", &via, "dev", "eth0"],
        )
        .with_context(|| format!("ip route {verb} {dst} in h1"))?;
    }
    Ok(())
}
