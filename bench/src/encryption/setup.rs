//! The paths `encryption` measures, brought up on the testbed: node keys
//! and the cluster file with both vxmesh networks, the daemons and their
//! sessions, and the WireGuard tunnel.

use super::*;

/// The plain network's overlay addresses of h1 and h2.
pub(crate) const PLAIN: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 9, 1), Ipv4Addr::new(10, 0, 9, 2)];
/// The encrypted network's.
pub(crate) const SEALED: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 10, 1), Ipv4Addr::new(10, 0, 10, 2)];
/// The WireGuard tunnel's.
pub(crate) const WG: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 11, 1), Ipv4Addr::new(10, 0, 11, 2)];
/// WireGuard's UDP port on both hosts.
pub(crate) const WG_PORT: u16 = 51820;
/// Name of the encrypted network.
pub(crate) const SEALED_NET: &str = "sealed";
/// Where wireguard-go puts its control sockets (`<device>.sock`); the same
/// directory in every namespace, so device names must be unique.
const WG_SOCKET_DIR: &str = "/var/run/wireguard";

/// The cluster file: the overlay benchmark's two hosts and network `front`
/// ([`vxmesh_netns::fixtures::TWO_HOSTS`]), each node with its public key
/// (`keys`, h1's then h2's), and the encrypted network `sealed` with an
/// endpoint per host.
pub(crate) fn cluster(keys: &[String; 2]) -> anyhow::Result<String> {
    let mut c = vxmesh_netns::fixtures::TWO_HOSTS.to_string();
    for (ul, key) in UL.iter().zip(keys) {
        let line = format!("address = \"{ul}\"\n");
        if !c.contains(&line) {
            bail!("the two-hosts fixture has no line {line:?}");
        }
        c = c.replace(&line, &format!("{line}public_key = \"{key}\"\n"));
    }
    c += &format!(
        "\n[[networks]]\nname = \"{SEALED_NET}\"\nvni = 4100\nsubnet = \"10.0.10.0/24\"\nencrypted = true\n"
    );
    for (i, ip) in SEALED.iter().enumerate() {
        c += &format!(
            "\n[[endpoints]]\nnetwork = \"{SEALED_NET}\"\nnode = \"h{}\"\nip = \"{ip}\"\n",
            i + 1
        );
    }
    Ok(c)
}

/// Writes a new node key for `host` where its vxmeshd finds it (its state
/// directory) with `vxmesh key generate`; the public key it printed.
pub(crate) fn node_key(tb: &Testbed, cli: &Path, host: &str) -> anyhow::Result<String> {
    let dir = daemon::state_dir(tb, host);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("vxmesh-node.key");
    let out = std::process::Command::new(cli)
        .args(["key", "generate"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running vxmesh key generate")?;
    if !out.status.success() {
        bail!(
            "vxmesh key generate {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if key.is_empty() {
        bail!("vxmesh key generate printed no public key");
    }
    Ok(key)
}

/// The daemons of h1 and h2: (host, process, admin socket).
pub(crate) type Daemons = Vec<(String, Proc, PathBuf)>;

/// Keys for h1 and h2, the cluster file, both daemons started (READY=1)
/// and every session of the encrypted network established.
pub(crate) fn vxmesh_up(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cli: &Path,
) -> anyhow::Result<(Daemons, String)> {
    let keys = [node_key(tb, cli, "h1")?, node_key(tb, cli, "h2")?];
    let cluster = cluster(&keys)?;
    let daemons = daemon::start_daemons(tb, vxmeshd, &cluster, &["h1", "h2"], READY_TIMEOUT)?;
    for (h, _, sock) in &daemons {
        wait_sessions(tb, cli, h, sock)?;
    }
    Ok((daemons, cluster))
}

/// The sessions in `status` (`vxmesh status --json`): (peer, state,
/// cipher).
pub(crate) fn sessions(status: &Value) -> Vec<(String, String, Option<String>)> {
    let peers = status["encryption"]["peers"].as_array();
    peers
        .into_iter()
        .flatten()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("?").to_string();
            (
                s("address"),
                s("state"),
                p["cipher"].as_str().map(String::from),
            )
        })
        .collect()
}

/// Waits (bounded by [`SESSION_TIMEOUT`]) until `host` has a session with
/// each of its peers in state `established`.
fn wait_sessions(tb: &Testbed, cli: &Path, host: &str, sock: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + SESSION_TIMEOUT;
    loop {
        let status = daemon_status(tb, cli, host, sock);
        let s = sessions(&status);
        if !s.is_empty() && s.iter().all(|(_, state, _)| state == "established") {
            eprintln!("[encrypted] {host}: sessions established: {s:?}");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{host}: the encrypted network's sessions were not established within {SESSION_TIMEOUT:?}: {}",
                status["encryption"]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The MTU `vxmesh status` gives network `name`.
pub(crate) fn network_mtu(status: &Value, name: &str) -> Option<u32> {
    let nets = status["networks"].as_array()?;
    let n = nets.iter().find(|n| n["name"] == name)?;
    n["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())
}

/// The TAP of network `name` in `vxmesh status`.
pub(crate) fn network_tap(status: &Value, name: &str) -> Option<String> {
    let nets = status["networks"].as_array()?;
    let n = nets.iter().find(|n| n["name"] == name)?;
    n["tap"].as_str().map(String::from)
}

/// The WireGuard device of host `i` (0 or 1): unique on the machine, as
/// wireguard-go's control socket is named after it, made of the testbed's
/// suffix (`<tag>-<pid>-<n>`) without the tag.
pub(crate) fn wg_device(tb: &Testbed, i: usize) -> anyhow::Result<String> {
    let suffix = tb.suffix();
    let tail = suffix.split_once('-').map_or(suffix, |(_, t)| t);
    let name = format!("wg{tail}h{}", i + 1);
    if name.len() > 15 {
        bail!("WireGuard device name {name:?} is longer than 15 characters");
    }
    Ok(name)
}

/// A WireGuard device running: its host, its wireguard-go and its name.
pub(crate) struct WgDevice {
    pub(crate) host: String,
    pub(crate) proc: Proc,
    pub(crate) dev: String,
}

/// Starts wireguard-go in h1 and h2 and configures the tunnel with `wg`:
/// a key pair each (in the testbed directory), port [`WG_PORT`], each host
/// the other's only peer with its tunnel address as the only allowed IP
/// (so nothing but 10.0.11.0/24 is routed into it), MTU `mtu`, up.
pub(crate) fn wireguard_up(tb: &mut Testbed, mtu: u32) -> anyhow::Result<Vec<WgDevice>> {
    let mut devices = Vec::new();
    let mut public = Vec::new();
    for i in 0..2 {
        let host = format!("h{}", i + 1);
        let dev = wg_device(tb, i)?;
        let key = tb.dir().join(format!("wg-{host}.key"));
        let private = wg_run(tb, &host, &["wg", "genkey"])?;
        write_private(&key, private.trim())?;
        let key_s = key.to_str().context("temp path is not UTF-8")?;
        public.push(
            wg_run(tb, &host, &["sh", "-c", &format!("wg pubkey < '{key_s}'")])?
                .trim()
                .to_string(),
        );
        let proc = tb
            .spawn(
                &host,
                &["wireguard-go", "-f", &dev],
                &[("WG_PROCESS_FOREGROUND", "1"), ("LOG_LEVEL", "error")],
            )
            .with_context(|| format!("starting wireguard-go in {host}"))?;
        eprintln!("[wireguard-go] {dev} in {host} (pid {})", proc.pid);
        wait_socket(&proc, &dev)?;
        devices.push(WgDevice { host, proc, dev });
    }
    for (i, d) in devices.iter().enumerate() {
        let other = 1 - i;
        let key = tb.dir().join(format!("wg-{}.key", d.host));
        let key_s = key.to_str().context("temp path is not UTF-8")?;
        let (port, endpoint, allowed) = (
            WG_PORT.to_string(),
            format!("{}:{WG_PORT}", UL[other]),
            format!("{}/32", WG[other]),
        );
        let addr = format!("{}/24", WG[i]);
        let mtu_s = mtu.to_string();
        let steps: [&[&str]; 3] = [
            &[
                "wg",
                "set",
                &d.dev,
                "private-key",
                key_s,
                "listen-port",
                &port,
                "peer",
                &public[other],
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            &["ip", "addr", "add", &addr, "dev", &d.dev],
            &["ip", "link", "set", "dev", &d.dev, "mtu", &mtu_s, "up"],
        ];
        for step in steps {
            wg_run(tb, &d.host, step).with_context(|| format!("WireGuard setup in {}", d.host))?;
        }
    }
    Ok(devices)
}

/// A bounded setup command in `host`: its stdout.
fn wg_run(tb: &Testbed, host: &str, args: &[&str]) -> anyhow::Result<String> {
    daemon::run(tb, host, args, CMD_TIMEOUT)
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{key}").with_context(|| format!("writing {}", path.display()))
}

/// Waits (up to 5 s) for wireguard-go's control socket of `dev`, which
/// `wg` talks to; an error with its log if it exits first.
fn wait_socket(p: &Proc, dev: &str) -> anyhow::Result<()> {
    let sock = Path::new(WG_SOCKET_DIR).join(format!("{dev}.sock"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        if let Some(status) = p.exit_status() {
            bail!("wireguard-go {dev} exited ({status}): {}", p.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!(
                "wireguard-go made no {} within 5 s: {}",
                sock.display(),
                p.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
