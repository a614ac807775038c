//! The commands that read: each asks one resource of the admin API and
//! prints it as a table (or as JSON with --json).

use std::path::Path;

use serde_json::Value;
use vxmesh_control::api::{client, FdbEntry, NetworkInfo, NodeInfo, Status};

use crate::args::{NetworkCmd, ServiceCmd};
use crate::{client_err, print_json, Failed, EXIT_NOT_FOUND};

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

pub async fn status(sock: &Path, json: bool) -> Result<(), Failed> {
    let s: Status = client::get(sock, "/v1/status").await.map_err(client_err)?;
    if json {
        print_json(&s);
        return Ok(());
    }
    println!(
        "node {} ({}), up {:.0}s, config {}",
        s.node, s.address, s.uptime_s, s.config
    );
    println!("reloads: {} ok, {} failed", s.reloads_ok, s.reloads_failed);
    table(
        &[
            "NETWORK", "VNI", "TAP", "PEERS", "TX PKTS", "RX PKTS", "FLOOD", "ARP", "DROPS",
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
    let e = &s.encryption;
    if !e.peers.is_empty() || e.public_key.is_some() {
        println!(
            "encryption: key {}",
            e.public_key
                .as_deref()
                .unwrap_or("none (encrypted networks carry nothing)")
        );
        table(
            &["PEER", "SESSION", "CIPHER", "AGE", "SENT", "RECEIVED"],
            e.peers
                .iter()
                .map(|p| {
                    vec![
                        p.address.clone(),
                        p.state.clone(),
                        p.cipher.clone().unwrap_or_else(|| "-".into()),
                        p.age_s.map_or("-".into(), |a| format!("{a:.0}s")),
                        p.sent.to_string(),
                        p.received.to_string(),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

pub async fn networks(sock: &Path, json: bool, cmd: &NetworkCmd) -> Result<(), Failed> {
    let nets: Vec<NetworkInfo> = client::get(sock, "/v1/networks")
        .await
        .map_err(client_err)?;
    match cmd {
        NetworkCmd::Inspect { name } => {
            let Some(n) = nets.into_iter().find(|n| &n.name == name) else {
                return Err((EXIT_NOT_FOUND, format!("no network named `{name}`")));
            };
            print_json(&n);
        }
        _ if json => print_json(&nets),
        _ => table(
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
    }
    Ok(())
}

/// One row of `endpoint ls`.
#[derive(serde::Serialize)]
struct EndpointRow<'a> {
    network: &'a str,
    ip: &'a str,
    mac: &'a str,
    node: &'a str,
    name: &'a Option<String>,
    container: &'a Option<String>,
    service: &'a Option<String>,
}

pub async fn endpoints(sock: &Path, json: bool, network: Option<&str>) -> Result<(), Failed> {
    let nets: Vec<NetworkInfo> = client::get(sock, "/v1/networks")
        .await
        .map_err(client_err)?;
    let rows: Vec<EndpointRow> = nets
        .iter()
        .filter(|n| network.is_none_or(|w| w == n.name))
        .flat_map(|n| {
            n.endpoints.iter().map(|e| EndpointRow {
                network: &n.name,
                ip: &e.ip,
                mac: &e.mac,
                node: &e.node,
                name: &e.name,
                container: &e.container,
                service: &e.service,
            })
        })
        .collect();
    if json {
        print_json(&rows);
        return Ok(());
    }
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
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
                vec![
                    r.network.to_string(),
                    r.ip.to_string(),
                    r.mac.to_string(),
                    r.node.to_string(),
                    o(r.name),
                    o(r.container),
                    o(r.service),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// A JSON value as a table cell (strings without quotes).
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn services_table(all: &[Value]) {
    table(
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
                            cell(&p["protocol"])
                        )
                    })
                    .collect();
                vec![
                    cell(&v["name"]),
                    cell(&v["network"]),
                    cell(&v["mode"]),
                    cell(&v["balance"]),
                    ports.join(","),
                    format!("{up}/{}", tasks.len()),
                ]
            })
            .collect(),
    );
}

fn tasks_table(service: &Value) {
    let keys = [
        "addr",
        "state",
        "active",
        "total",
        "bytes_in",
        "bytes_out",
        "connect_failures",
    ];
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
        service["tasks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| keys.iter().map(|k| cell(&t[*k])).collect())
            .collect(),
    );
}

pub async fn services(sock: &Path, json: bool, cmd: &ServiceCmd) -> Result<(), Failed> {
    // The mesh's status rows (the dataplane's `ServiceStatus`), read as JSON.
    let all: Vec<Value> = client::get(sock, "/v1/services")
        .await
        .map_err(client_err)?;
    let find = |name: &str| {
        all.iter()
            .find(|s| s["name"] == name)
            .cloned()
            .ok_or_else(|| (EXIT_NOT_FOUND, format!("no service named `{name}`")))
    };
    match cmd {
        ServiceCmd::Ps { name } if json => print_json(&find(name)?["tasks"]),
        ServiceCmd::Ps { name } => tasks_table(&find(name)?),
        ServiceCmd::Inspect { name } => print_json(&find(name)?),
        _ if json => print_json(&all),
        _ => services_table(&all),
    }
    Ok(())
}

pub async fn metrics(sock: &Path) -> Result<(), Failed> {
    let body = client::get_raw(sock, "/metrics")
        .await
        .map_err(client_err)?;
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

pub async fn nodes(sock: &Path, json: bool) -> Result<(), Failed> {
    let nodes: Vec<NodeInfo> = client::get(sock, "/v1/nodes").await.map_err(client_err)?;
    if json {
        print_json(&nodes);
        return Ok(());
    }
    let st: Status = client::get(sock, "/v1/status").await.map_err(client_err)?;
    let s = &st.store;
    let health = if s.connected {
        format!("connected, revision {}", s.revision)
    } else {
        format!(
            "UNREACHABLE for {:.0}s: forwarding on the last known state (revision {}){}",
            s.since_s,
            s.revision,
            s.last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
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
    Ok(())
}

pub async fn fdb(sock: &Path, json: bool) -> Result<(), Failed> {
    let rows: Vec<FdbEntry> = client::get(sock, "/v1/fdb").await.map_err(client_err)?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    // In the spirit of `bridge fdb show`.
    for r in rows {
        let age = r.age_s.map(|a| format!(" age {a:.0}s")).unwrap_or_default();
        let node = r.node.map(|n| format!(" node {n}")).unwrap_or_default();
        println!(
            "{} dev vxm-{} dst {}{node} {}{}",
            r.mac, r.network, r.vtep, r.kind, age
        );
    }
    Ok(())
}
