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
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// List services with their ports and healthy tasks.
    Ls,
    /// The tasks of one service: health, connections, bytes.
    Ps { name: String },
    /// One service as JSON.
    Inspect { name: String },
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
/// failed, 3 the daemon could not be reached, 4 no such object.
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;

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
    let err = |e: client::ClientError| {
        let code = match e {
            client::ClientError::Connect { .. } => EXIT_UNREACHABLE,
            _ => 1,
        };
        (code, e.to_string())
    };
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
                table(
                    &["NAME", "ADDRESS", "NETWORKS", "SELF"],
                    nodes
                        .iter()
                        .map(|n| {
                            vec![
                                n.name.clone(),
                                n.address.clone(),
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
                    println!(
                        "{} dev vxm-{} dst {} {}{}",
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
