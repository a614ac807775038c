//! The systems `mesh` compares, brought up on the testbed: nftables,
//! HAProxy, vxmeshd; and the checks that one serves.

use super::*;
use crate::harness::kvxlan;

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

/// Waits (up to [`TW_WAIT`]) until the tasks hold no TIME_WAIT socket of a
/// connection from h1 to their HTTP or iperf3 port: over the underlay
/// (`198.18.0.1` to `198.18.0.2/.3`), or with `overlay` over the overlay
/// (`10.0.9.1` to `10.0.9.2/.3`). Such sockets are left by the systems that
/// reach the tasks from the same h1 address, and the next system of another
/// kind reuses their 4-tuples with timestamps from another clock: nft's
/// masqueraded SYNs carry the client's, HAProxy's and the mesh proxy's carry
/// h1's own. The tasks then most likely refuse those SYNs (PAWS) and the
/// connects stall: HAProxy measured right after nft made 3.8 k instead of
/// 8.8 k new conn/s, and nft right after HAProxy 1.5 k instead of 9.5 k,
/// with the machine idle. Over the underlay that is nft against HAProxy;
/// over the overlay nft-overlay against vxmesh-overlay-norelay (the mesh's
/// upstream from h1's TAP address). vxmesh-underlay's upstream leaves from
/// h1's underlay address to the overlay addresses, and the relay's from the
/// task node itself: other tuples.
pub(crate) fn tw_gone(
    tb: &Testbed,
    name: &str,
    round: u32,
    overlay: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (addrs, what) = if overlay {
        (OV, "overlay")
    } else {
        (UL, "underlay")
    };
    let (http, iperf) = (format!(":{HTTP_TASK}"), format!(":{IPERF_TASK}"));
    let count = || -> anyhow::Result<usize> {
        let mut n = 0;
        for (h, task) in [("h2", addrs[1]), ("h3", addrs[2])] {
            let (src, dst) = (task.to_string(), addrs[0].to_string());
            let text = run(
                tb,
                h,
                &[
                    "ss",
                    "-Htn",
                    "state",
                    "time-wait",
                    "src",
                    &src,
                    "dst",
                    &dst,
                    "(",
                    "sport",
                    "=",
                    &http,
                    "or",
                    "sport",
                    "=",
                    &iperf,
                    ")",
                ],
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
             tasks from h1's {what} address to go ({left} left)",
            start.elapsed().as_secs_f64()
        );
        eprintln!("[{name}] {line}");
        notes.push(line);
    }
    Ok(())
}

/// h1, h2 and h3 as members of the kernel's overlay (`nft-overlay`).
fn kernel_members() -> [kvxlan::Member<'static>; 3] {
    let ns = ["h1", "h2", "h3"];
    std::array::from_fn(|i| kvxlan::Member {
        ns: ns[i],
        underlay: UL[i],
        overlay: OV[i],
    })
}

/// Makes the kernel's vxlan between h1, h2 and h3 ([`KERNEL_DEV`], the
/// overlay's addresses): refused while any of them is on a device (a TAP of
/// a vxmeshd still up). Returns h1's device and FDB for the report.
pub(crate) fn kernel_overlay_up(tb: &Testbed) -> anyhow::Result<Vec<(String, String)>> {
    let made = kvxlan::up(tb, KERNEL_DEV, 24, &kernel_members());
    if let Err(e) = made {
        let _ = kernel_overlay_down(tb);
        return Err(e);
    }
    let mut seen = Vec::new();
    for (key, args) in [
        (
            "ip -d link show",
            &["ip", "-d", "link", "show", "dev", KERNEL_DEV][..],
        ),
        (
            "bridge fdb show",
            &["bridge", "fdb", "show", "dev", KERNEL_DEV][..],
        ),
    ] {
        seen.push((format!("h1: {key} {KERNEL_DEV}"), run(tb, "h1", args)?));
    }
    Ok(seen)
}

/// Deletes the kernel's vxlan devices wherever they are.
pub(crate) fn kernel_overlay_down(tb: &Testbed) -> anyhow::Result<()> {
    kvxlan::down(tb, KERNEL_DEV, &kernel_members())
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

/// Starts vxmeshd on `cluster` in h1, h2 and h3, each waited for until
/// READY=1, then until h1 sees every task of both services up. On failure
/// no daemon is left running (their TAPs would hold the overlay's
/// addresses).
pub(crate) fn vxmesh_up(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cli: &Path,
    cluster: &str,
) -> anyhow::Result<Vec<(String, Proc, PathBuf)>> {
    let procs = daemon::start_daemons(tb, vxmeshd, cluster, &["h1", "h2", "h3"], READY_TIMEOUT)?;
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
                for (_, p, _) in &procs {
                    tb.stop(p);
                }
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
