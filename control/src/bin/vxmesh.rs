//! `vxmesh`: the command line, over vxmeshd's local admin API, and the lab.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vxmesh_control::api::{self, client, FdbEntry, NetworkInfo, NodeInfo, Status};
use vxmesh_control::lab;

/// vxmesh: VXLAN overlay networks in userspace.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The daemon's admin socket.
    #[arg(long, short = 'H', env = "VXMESH_SOCKET", default_value = api::DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a 3-host lab from network namespaces, prove the overlay works,
    /// print what was measured, and clean up.
    Lab(lab::LabArgs),
    /// The daemon's status: node, networks, counters, workers.
    Status,
    /// Networks (`ls`, `inspect NAME`).
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Endpoints: overlay addresses and the nodes that own them.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Nodes of the cluster.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Services of the routing mesh (`ls`, `ps NAME`, `inspect NAME`).
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// The daemon's Prometheus metrics (OpenMetrics text), as scraped.
    Metrics,
    /// The forwarding table (`show`).
    Fdb {
        #[command(subcommand)]
        cmd: FdbCmd,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// List networks.
    Ls,
    /// Show one network with its endpoints.
    Inspect { name: String },
    /// Create a network (etcd store).
    Create {
        name: String,
        /// VXLAN network identifier, 1..=16777215, unique.
        #[arg(long)]
        vni: u32,
        /// Overlay subnet, e.g. 10.0.9.0/24.
        #[arg(long)]
        subnet: String,
        /// Overlay MTU; default underlay MTU - 50.
        #[arg(long)]
        mtu: Option<u16>,
        /// Learn remote MACs from traffic.
        #[arg(long)]
        learning: bool,
        /// Nodes announce the addresses their workloads use on the TAP as
        /// endpoints (under their lease).
        #[arg(long)]
        announce: bool,
        /// Containers may attach (Docker's driver, vxmesh-cni): each member
        /// node bridges the TAP with the containers' veths.
        #[arg(long)]
        attachable: bool,
        /// Learned and announced entries expire after this idle time.
        #[arg(long)]
        ageing_s: Option<u64>,
        /// Member nodes that own no endpoint (repeat).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Resolver for names outside the cluster, address or address:port
        /// (repeat, asked in turn; default: such names are REFUSED).
        #[arg(long = "dns-forward")]
        dns_forward: Vec<String>,
        /// Forwarded DNS queries per second and client (default 50; 0: no
        /// limit).
        #[arg(long = "dns-forward-qps")]
        dns_forward_qps: Option<u32>,
        /// Most learned MACs kept (with --learning).
        #[arg(long = "fdb-cap")]
        fdb_cap: Option<usize>,
        /// Floods per second this node replicates into the network.
        #[arg(long = "flood-pps")]
        flood_pps: Option<u32>,
        /// Let workloads send router advertisements and redirects.
        #[arg(long = "allow-ra")]
        allow_ra: bool,
        /// Let workloads answer as DHCP servers.
        #[arg(long = "allow-dhcp")]
        allow_dhcp: bool,
    },
    /// Remove a network and its endpoints (refused while a service uses it).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// List endpoints of every network (or one).
    Ls { network: Option<String> },
    /// Add an endpoint: an overlay address and the node that owns it.
    Add {
        network: String,
        ip: std::net::Ipv4Addr,
        /// The node that runs it.
        #[arg(long)]
        node: String,
        /// Default 02:42:<ip>, Docker's rule.
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove an endpoint.
    Rm {
        network: String,
        ip: std::net::Ipv4Addr,
    },
}

/// Service settings; on `update` only the ones given change.
#[derive(clap::Args, Debug, Default)]
struct ServiceFlags {
    /// The overlay network of the tasks.
    #[arg(long)]
    network: Option<String>,
    /// A task's overlay address (repeat); it must be an endpoint.
    #[arg(long = "task")]
    tasks: Vec<std::net::Ipv4Addr>,
    /// PUBLISHED:TARGET[/tcp|udp] (repeat), like `docker service create -p`.
    #[arg(long = "publish", short = 'p')]
    publish: Vec<String>,
    /// maglev, round-robin or least-conn.
    #[arg(long)]
    balance: Option<String>,
    /// ingress (every node listens) or host (only nodes with a task).
    #[arg(long)]
    mode: Option<String>,
    /// Send a PROXY protocol v2 header to the tasks.
    #[arg(long)]
    proxy_protocol: bool,
    /// tcp, http:/PATH, or udp (an ICMP port unreachable is down).
    #[arg(long)]
    health: Option<String>,
    #[arg(long)]
    health_interval_ms: Option<u64>,
    #[arg(long)]
    health_timeout_ms: Option<u64>,
    #[arg(long)]
    rise: Option<u32>,
    #[arg(long)]
    fall: Option<u32>,
    /// Time connections to a leaving task may go on.
    #[arg(long)]
    drain_ms: Option<u64>,
}

impl ServiceFlags {
    /// The given settings as a (partial) `[[services]]` table in JSON.
    fn spec(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use serde_json::json;
        let mut m = serde_json::Map::new();
        if let Some(n) = &self.network {
            m.insert("network".into(), json!(n));
        }
        if !self.tasks.is_empty() {
            m.insert("tasks".into(), json!(self.tasks));
        }
        if !self.publish.is_empty() {
            let mut ports = Vec::new();
            for p in &self.publish {
                let (ports_part, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                let (a, b) = ports_part
                    .split_once(':')
                    .ok_or_else(|| format!("--publish {p}: expected PUBLISHED:TARGET[/tcp|udp]"))?;
                let a: u16 = a
                    .parse()
                    .map_err(|_| format!("--publish {p}: bad port `{a}`"))?;
                let b: u16 = b
                    .parse()
                    .map_err(|_| format!("--publish {p}: bad port `{b}`"))?;
                ports.push(json!({ "published": a, "target": b, "protocol": proto }));
            }
            m.insert("ports".into(), json!(ports));
        }
        if let Some(b) = &self.balance {
            m.insert("balance".into(), json!(b));
        }
        if let Some(x) = &self.mode {
            m.insert("mode".into(), json!(x));
        }
        if self.proxy_protocol {
            m.insert("proxy_protocol".into(), json!("v2"));
        }
        let mut h = serde_json::Map::new();
        match self.health.as_deref() {
            None => {}
            Some("tcp") => {
                h.insert("kind".into(), json!("tcp"));
            }
            Some(x) if x.starts_with("http") => {
                h.insert("kind".into(), json!("http"));
                let path = x.strip_prefix("http").unwrap_or("").trim_start_matches(':');
                h.insert(
                    "path".into(),
                    json!(if path.is_empty() { "/" } else { path }),
                );
            }
            Some("udp") => {
                h.insert("kind".into(), json!("udp"));
            }
            Some(x) => return Err(format!("--health {x}: expected tcp, http:/PATH or udp")),
        }
        for (k, v) in [
            ("interval_ms", self.health_interval_ms),
            ("timeout_ms", self.health_timeout_ms),
            ("rise", self.rise.map(u64::from)),
            ("fall", self.fall.map(u64::from)),
        ] {
            if let Some(v) = v {
                h.insert(k.into(), json!(v));
            }
        }
        if !h.is_empty() {
            m.insert("health".into(), serde_json::Value::Object(h));
        }
        if let Some(d) = self.drain_ms {
            m.insert("drain_ms".into(), json!(d));
        }
        Ok(m)
    }
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// List services with their ports and healthy tasks.
    Ls,
    /// The tasks of one service: health, connections, bytes.
    Ps { name: String },
    /// One service as JSON.
    Inspect { name: String },
    /// Create a service (etcd store).
    Create {
        name: String,
        #[command(flatten)]
        flags: ServiceFlags,
    },
    /// Change a service: only the settings given change (etcd store).
    Update {
        name: String,
        #[command(flatten)]
        flags: ServiceFlags,
    },
    /// Set a service's task list (etcd store): `scale web 10.0.9.2 10.0.9.3`.
    Scale {
        name: String,
        tasks: Vec<std::net::Ipv4Addr>,
    },
    /// Remove a service (etcd store).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List nodes.
    Ls,
}

#[derive(Subcommand, Debug)]
enum FdbCmd {
    /// Show static and learned entries.
    Show,
}

/// Exit codes: 0 ok, 1 the daemon answered with an error or the command
/// failed (an invalid value: the message says which), 2 bad usage, 3 the
/// daemon could not be reached, 4 no such object, 5 the store is the
/// cluster file (edit it and send SIGHUP), 6 the object already exists,
/// 7 the daemon cannot reach its store (etcd) right now.
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;
const EXIT_READ_ONLY: u8 = 5;
const EXIT_EXISTS: u8 = 6;
const EXIT_STORE_DOWN: u8 = 7;

/// A client error as (exit code, message), the daemon's `error` text
/// unwrapped.
fn client_err(e: client::ClientError) -> (u8, String) {
    match e {
        client::ClientError::Connect { .. } => (EXIT_UNREACHABLE, e.to_string()),
        client::ClientError::Status { status, body } => {
            let msg = serde_json::from_str::<api::ApiError>(&body)
                .map(|a| a.error)
                .unwrap_or(body);
            let code = match status {
                403 => EXIT_READ_ONLY,
                404 => EXIT_NOT_FOUND,
                409 => EXIT_EXISTS,
                503 => EXIT_STORE_DOWN,
                _ => 1,
            };
            (code, msg)
        }
        other => (1, other.to_string()),
    }
}

/// Sends a write and reports it: `{"ok": true, ...}` with --json, else the
/// object's name (like docker prints an ID).
async fn write(
    sock: &std::path::Path,
    json: bool,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
    what: &str,
) -> Result<(), (u8, String)> {
    client::request(sock, method, path, body.as_ref())
        .await
        .map_err(client_err)?;
    if json {
        print_json(&serde_json::json!({ "ok": true, "object": what }));
    } else {
        println!("{what}");
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialise")
    );
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    let sock = &cli.socket;
    let err = client_err;
    match cli.cmd {
        Cmd::Lab(args) => lab::run(args).map_err(|e| (1, format!("lab: {e:#}"))),
        Cmd::Status => {
            let s: Status = client::get(sock, "/v1/status").await.map_err(err)?;
            if cli.json {
                print_json(&s);
            } else {
                println!(
                    "node {} ({}), up {:.0}s, config {}",
                    s.node, s.address, s.uptime_s, s.config
                );
                println!("reloads: {} ok, {} failed", s.reloads_ok, s.reloads_failed);
                table(
                    &[
                        "NETWORK", "VNI", "TAP", "PEERS", "TX PKTS", "RX PKTS", "FLOOD", "ARP",
                        "DROPS",
                    ],
                    s.networks
                        .iter()
                        .map(|n| {
                            vec![
                                n.name.clone(),
                                n.vni.to_string(),
                                n.tap.clone(),
                                n.peers.len().to_string(),
                                n.stats.vxlan_tx_packets.to_string(),
                                n.stats.vxlan_rx_packets.to_string(),
                                n.stats.flood_copies.to_string(),
                                n.stats.arp_answered.to_string(),
                                n.stats.drops.values().sum::<u64>().to_string(),
                            ]
                        })
                        .collect(),
                );
                let g: Vec<String> = s
                    .global
                    .drops
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "underlay drops: {}",
                    if g.is_empty() {
                        "none".into()
                    } else {
                        g.join(" ")
                    }
                );
            }
            Ok(())
        }
        Cmd::Network {
            cmd:
                NetworkCmd::Create {
                    name,
                    vni,
                    subnet,
                    mtu,
                    learning,
                    announce,
                    attachable,
                    ageing_s,
                    nodes,
                    dns_forward,
                    dns_forward_qps,
                    fdb_cap,
                    flood_pps,
                    allow_ra,
                    allow_dhcp,
                },
        } => {
            let mut spec = serde_json::json!({ "name": name, "vni": vni, "subnet": subnet });
            if let Some(m) = mtu {
                spec["mtu"] = m.into();
            }
            if learning {
                spec["learning"] = true.into();
            }
            if announce {
                spec["announce"] = true.into();
            }
            if attachable {
                spec["attachable"] = true.into();
            }
            if let Some(a) = ageing_s {
                spec["ageing_s"] = a.into();
            }
            if !nodes.is_empty() {
                spec["nodes"] = nodes.into();
            }
            if !dns_forward.is_empty() {
                spec["dns_forward"] = dns_forward.into();
            }
            for (key, v) in [
                ("dns_forward_qps", dns_forward_qps.map(u64::from)),
                ("fdb_cap", fdb_cap.map(|c| c as u64)),
                ("flood_pps", flood_pps.map(u64::from)),
            ] {
                if let Some(v) = v {
                    spec[key] = v.into();
                }
            }
            for (key, on) in [("allow_ra", allow_ra), ("allow_dhcp", allow_dhcp)] {
                if on {
                    spec[key] = true.into();
                }
            }
            write(
                sock,
                cli.json,
                hyper::Method::POST,
                "/v1/networks",
                Some(spec),
                &name,
            )
            .await
        }
        Cmd::Network {
            cmd: NetworkCmd::Rm { name },
        } => {
            let path = format!("/v1/networks/{name}");
            write(sock, cli.json, hyper::Method::DELETE, &path, None, &name).await
        }
        Cmd::Endpoint { cmd } => match cmd {
            EndpointCmd::Add {
                network,
                ip,
                node,
                mac,
                name,
            } => {
                let mut spec = serde_json::json!({ "network": network, "ip": ip, "node": node });
                if let Some(m) = mac {
                    spec["mac"] = m.into();
                }
                if let Some(n) = name {
                    spec["name"] = n.into();
                }
                let what = format!("{network}/{ip}");
                write(
                    sock,
                    cli.json,
                    hyper::Method::POST,
                    "/v1/endpoints",
                    Some(spec),
                    &what,
                )
                .await
            }
            EndpointCmd::Rm { network, ip } => {
                let path = format!("/v1/endpoints/{network}/{ip}");
                let what = format!("{network}/{ip}");
                write(sock, cli.json, hyper::Method::DELETE, &path, None, &what).await
            }
            EndpointCmd::Ls { network } => {
                let nets: Vec<NetworkInfo> =
                    client::get(sock, "/v1/networks").await.map_err(err)?;
                let rows: Vec<serde_json::Value> = nets
                    .iter()
                    .filter(|n| network.as_ref().is_none_or(|w| *w == n.name))
                    .flat_map(|n| {
                        n.endpoints.iter().map(|e| {
                            serde_json::json!({ "network": n.name, "ip": e.ip, "mac": e.mac,
                                                "node": e.node, "name": e.name,
                                                "container": e.container, "service": e.service })
                        })
                    })
                    .collect();
                if cli.json {
                    print_json(&rows);
                } else {
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
                    table(
                        &[
                            "NETWORK",
                            "IP",
                            "MAC",
                            "NODE",
                            "NAME",
                            "CONTAINER",
                            "SERVICE",
                        ],
                        rows.iter()
                            .map(|r| {
                                [
                                    "network",
                                    "ip",
                                    "mac",
                                    "node",
                                    "name",
                                    "container",
                                    "service",
                                ]
                                .iter()
                                .map(|k| s(&r[*k]))
                                .collect()
                            })
                            .collect(),
                    );
                }
                Ok(())
            }
        },
        Cmd::Service {
            cmd: ServiceCmd::Create { name, flags },
        } => {
            let mut spec = flags.spec().map_err(|e| (2, e))?;
            spec.insert("name".into(), name.clone().into());
            if !spec.contains_key("network") {
                return Err((2, "service create needs --network".into()));
            }
            let body = serde_json::Value::Object(spec);
            write(
                sock,
                cli.json,
                hyper::Method::POST,
                "/v1/services",
                Some(body),
                &name,
            )
            .await
        }
        Cmd::Service {
            cmd: ServiceCmd::Update { name, flags },
        } => {
            let spec = flags.spec().map_err(|e| (2, e))?;
            if spec.is_empty() {
                return Err((
                    2,
                    "service update: give at least one setting to change".into(),
                ));
            }
            let path = format!("/v1/services/{name}");
            let body = serde_json::Value::Object(spec);
            write(
                sock,
                cli.json,
                hyper::Method::PATCH,
                &path,
                Some(body),
                &name,
            )
            .await
        }
        Cmd::Service {
            cmd: ServiceCmd::Scale { name, tasks },
        } => {
            let path = format!("/v1/services/{name}");
            let body = serde_json::json!({ "tasks": tasks });
            write(
                sock,
                cli.json,
                hyper::Method::PATCH,
                &path,
                Some(body),
                &name,
            )
            .await
        }
        Cmd::Service {
            cmd: ServiceCmd::Rm { name },
        } => {
            let path = format!("/v1/services/{name}");
            write(sock, cli.json, hyper::Method::DELETE, &path, None, &name).await
        }
        Cmd::Network { cmd } => {
            let nets: Vec<NetworkInfo> = client::get(sock, "/v1/networks").await.map_err(err)?;
            match cmd {
                NetworkCmd::Ls if cli.json => print_json(&nets),
                NetworkCmd::Ls => table(
                    &[
                        "NAME",
                        "VNI",
                        "SUBNET",
                        "MTU",
                        "NODES",
                        "ENDPOINTS",
                        "LOCAL",
                    ],
                    nets.iter()
                        .map(|n| {
                            vec![
                                n.name.clone(),
                                n.vni.to_string(),
                                n.subnet.clone(),
                                n.mtu.to_string(),
                                n.nodes.join(","),
                                n.endpoints.len().to_string(),
                                if n.local { "yes".into() } else { "no".into() },
                            ]
                        })
                        .collect(),
                ),
                NetworkCmd::Inspect { name } => {
                    let Some(n) = nets.into_iter().find(|n| n.name == name) else {
                        return Err((EXIT_NOT_FOUND, format!("no network named `{name}`")));
                    };
                    print_json(&n);
                }
                NetworkCmd::Create { .. } | NetworkCmd::Rm { .. } => {
                    unreachable!("handled above")
                }
            }
            Ok(())
        }
        Cmd::Service { cmd } => {
            let all: Vec<serde_json::Value> =
                client::get(sock, "/v1/services").await.map_err(err)?;
            let find = |name: &str| {
                all.iter()
                    .find(|s| s["name"] == name)
                    .cloned()
                    .ok_or_else(|| (EXIT_NOT_FOUND, format!("no service named `{name}`")))
            };
            let s = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match cmd {
                ServiceCmd::Ls if cli.json => print_json(&all),
                ServiceCmd::Ls => table(
                    &["NAME", "NETWORK", "MODE", "BALANCE", "PORTS", "TASKS UP"],
                    all.iter()
                        .map(|v| {
                            let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
                            let up = tasks
                                .iter()
                                .filter(|t| t["state"] == "up" || t["state"] == "slow_start")
                                .count();
                            let ports: Vec<String> = v["ports"]
                                .as_array()
                                .cloned()
                                .unwrap_or_default()
                                .iter()
                                .map(|p| {
                                    format!(
                                        "*:{}->{}/{}",
                                        p["published"],
                                        p["target"],
                                        s(&p["protocol"])
                                    )
                                })
                                .collect();
                            vec![
                                s(&v["name"]),
                                s(&v["network"]),
                                s(&v["mode"]),
                                s(&v["balance"]),
                                ports.join(","),
                                format!("{up}/{}", tasks.len()),
                            ]
                        })
                        .collect(),
                ),
                ServiceCmd::Ps { name } => {
                    let v = find(&name)?;
                    if cli.json {
                        print_json(&v["tasks"]);
                    } else {
                        table(
                            &[
                                "TASK",
                                "STATE",
                                "ACTIVE",
                                "TOTAL",
                                "BYTES IN",
                                "BYTES OUT",
                                "CONNECT FAILS",
                            ],
                            v["tasks"]
                                .as_array()
                                .cloned()
                                .unwrap_or_default()
                                .iter()
                                .map(|t| {
                                    [
                                        "addr",
                                        "state",
                                        "active",
                                        "total",
                                        "bytes_in",
                                        "bytes_out",
                                        "connect_failures",
                                    ]
                                    .iter()
                                    .map(|k| s(&t[*k]))
                                    .collect()
                                })
                                .collect(),
                        );
                    }
                }
                ServiceCmd::Inspect { name } => print_json(&find(&name)?),
                ServiceCmd::Create { .. }
                | ServiceCmd::Update { .. }
                | ServiceCmd::Scale { .. }
                | ServiceCmd::Rm { .. } => unreachable!("handled above"),
            }
            Ok(())
        }
        Cmd::Metrics => {
            let body = client::get_raw(sock, "/metrics").await.map_err(err)?;
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Cmd::Node { cmd: NodeCmd::Ls } => {
            let nodes: Vec<NodeInfo> = client::get(sock, "/v1/nodes").await.map_err(err)?;
            if cli.json {
                print_json(&nodes);
            } else {
                let st: Status = client::get(sock, "/v1/status").await.map_err(err)?;
                let s = &st.store;
                let health = if s.connected {
                    format!("connected, revision {}", s.revision)
                } else {
                    format!(
                        "UNREACHABLE for {:.0}s: forwarding on the last known state (revision {}){}",
                        s.since_s,
                        s.revision,
                        s.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                };
                println!("store: {} {} ({health})", s.backend, s.target);
                table(
                    &["NAME", "ADDRESS", "STATE", "NETWORKS", "SELF"],
                    nodes
                        .iter()
                        .map(|n| {
                            vec![
                                n.name.clone(),
                                n.address.clone(),
                                n.state.clone(),
                                n.networks.join(","),
                                if n.local { "*".into() } else { String::new() },
                            ]
                        })
                        .collect(),
                );
            }
            Ok(())
        }
        Cmd::Fdb { cmd: FdbCmd::Show } => {
            let rows: Vec<FdbEntry> = client::get(sock, "/v1/fdb").await.map_err(err)?;
            if cli.json {
                print_json(&rows);
            } else {
                // In the spirit of `bridge fdb show`.
                for r in rows {
                    let age = r.age_s.map(|a| format!(" age {a:.0}s")).unwrap_or_default();
                    let node = r.node.map(|n| format!(" node {n}")).unwrap_or_default();
                    println!(
                        "{} dev vxm-{} dst {}{node} {}{}",
                        r.mac, r.network, r.vtep, r.kind, age
                    );
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("vxmesh: {msg}");
            ExitCode::from(code)
        }
    }
}
