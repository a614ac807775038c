//! The lab's first table: ping and a bulk TCP transfer between every pair
//! of hosts, over their own addresses in the overlay network.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use vxmesh_netns::{echo, tcp_bulk, Testbed};

use super::interrupted;

/// One host pair.
pub struct Row {
    pub from: String,
    pub to: String,
    pub dst: Ipv4Addr,
    pub rtt_p50_us: f64,
    pub lost: u32,
    pub gbit: f64,
}

impl Row {
    pub fn to_json(&self) -> Value {
        json!({
            "from": self.from, "to": self.to, "dst": self.dst.to_string(),
            "rtt_p50_us": self.rtt_p50_us, "lost": self.lost, "gbit_per_s": self.gbit,
        })
    }

    /// True when the pair lost packets or moved no data.
    pub fn bad(&self) -> bool {
        self.lost > 0 || self.gbit <= 0.0
    }
}

/// Pings (20, 10 ms apart) and sends `bytes` over TCP from every host to
/// every other one; `hosts` are (host, its address in the network).
/// TCP ports from `*port` up.
pub fn prove(
    tb: &Testbed,
    hosts: &[(String, Ipv4Addr)],
    bytes: u64,
    port: &mut u16,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (from, _) in hosts {
        for (to, dst) in hosts {
            if from == to {
                continue;
            }
            interrupted()?;
            let ping = echo(
                tb,
                &tb.ns(from),
                *dst,
                20,
                Duration::from_millis(10),
                Duration::from_secs(5),
            )?;
            *port += 1;
            let xfer = tcp_bulk(
                tb,
                &tb.ns(to),
                &tb.ns(from),
                *dst,
                *port,
                bytes,
                Duration::from_secs(60),
            )?;
            rows.push(Row {
                from: from.clone(),
                to: to.clone(),
                dst: *dst,
                rtt_p50_us: ping.p50().unwrap_or(f64::NAN),
                lost: ping.sent - ping.received,
                gbit: xfer.gbit_per_s(),
            });
        }
    }
    Ok(rows)
}

/// The table.
pub fn print(rows: &[Row]) {
    println!();
    println!(
        "{:<6} {:<6} {:<12} {:>12} {:>6} {:>14}",
        "FROM", "TO", "OVERLAY IP", "RTT p50 µs", "LOST", "TCP Gbit/s"
    );
    for r in rows {
        println!(
            "{:<6} {:<6} {:<12} {:>12.0} {:>6} {:>14.2}",
            r.from, r.to, r.dst, r.rtt_p50_us, r.lost, r.gbit
        );
    }
}
