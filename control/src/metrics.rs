//! `/metrics`: the daemon's counters in the OpenMetrics text format, through
//! `prometheus-client`. The counters live where the work happens (relaxed
//! atomics in the dataplane and the mesh); this collector reads them at
//! scrape time, so nothing is counted twice and the hot path knows nothing
//! of Prometheus. Names: `vxmesh_` prefix, base units, counters end in
//! `_total` (added by the encoder). config/METRICS.md lists every family.

use std::fmt;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::state::State;
use vxmesh_dataplane::mesh::service::HistogramSnapshot;

mod mesh_limits;

type Labels = Vec<(&'static str, String)>;
/// Name, help, unit and rows of one counter family.
type CounterFamily<'a> = (&'a str, &'a str, Option<&'a Unit>, Vec<(Labels, u64)>);

/// One per-task family of the mesh, filled row by row.
struct TaskFamily {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    counter: bool,
    rows: Vec<(Labels, f64)>,
}

impl TaskFamily {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, counter: bool) -> Self {
        TaskFamily {
            name,
            help,
            unit,
            counter,
            rows: Vec::new(),
        }
    }
}

/// Reads the daemon's state at each scrape.
pub struct DaemonCollector(Weak<State>);

impl fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, u64)>,
) -> fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, f64)>,
) -> fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram family of durations (seconds), one row per label set.
fn durations(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, HistogramSnapshot)>,
) -> fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in rows {
        fam.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum_seconds,
            h.count,
            &h.buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Some(st) = self.0.upgrade() else {
            return Ok(());
        };
        let status = crate::api::server::build_status(&st);
        let (services, dns) = {
            let inner = st.inner.lock().expect("state lock poisoned");
            let dns: Vec<(String, [u64; 12])> = inner
                .mesh
                .dns_status()
                .into_iter()
                .map(|(net, _, c)| {
                    let n = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    let all = [
                        n(&c.queries),
                        n(&c.answered),
                        n(&c.nxdomain),
                        n(&c.refused),
                        n(&c.malformed),
                        n(&c.forwarded),
                        n(&c.forward_failed),
                        n(&c.refused_source),
                        n(&c.rate_limited),
                        n(&c.truncated),
                        n(&c.tcp_refused),
                        n(&c.accept.exhausted) + n(&c.accept.other),
                    ];
                    (net, all)
                })
                .collect();
            (inner.mesh.status(), dns)
        };
        let e = &mut enc;
        gauges(
            e,
            "vxmesh_build_info",
            "Build information; the value is always 1.",
            None,
            vec![(
                vec![
                    ("version", status.version.clone()),
                    ("node", status.node.clone()),
                ],
                1.0,
            )],
        )?;
        let net = |n: &crate::api::NetworkStatus| vec![("network", n.name.clone())];
        macro_rules! per_network {
            ($name:expr, $help:expr, $unit:expr, $field:ident) => {
                counters(
                    e,
                    $name,
                    $help,
                    $unit,
                    status
                        .networks
                        .iter()
                        .map(|n| (net(n), n.stats.$field))
                        .collect(),
                )?;
            };
        }
        per_network!(
            "vxmesh_tap_rx_packets",
            "Frames read from the network's TAP.",
            None,
            tap_rx_packets
        );
        per_network!(
            "vxmesh_tap_rx",
            "Bytes read from the network's TAP.",
            Some(&Unit::Bytes),
            tap_rx_bytes
        );
        per_network!(
            "vxmesh_tap_tx_packets",
            "Frames written to the network's TAP.",
            None,
            tap_tx_packets
        );
        per_network!(
            "vxmesh_tap_tx",
            "Bytes written to the network's TAP.",
            Some(&Unit::Bytes),
            tap_tx_bytes
        );
        per_network!(
            "vxmesh_vxlan_tx_packets",
            "VXLAN datagrams sent to peers (each flood copy counts).",
            None,
            vxlan_tx_packets
        );
        per_network!(
            "vxmesh_vxlan_tx",
            "VXLAN bytes sent to peers.",
            Some(&Unit::Bytes),
            vxlan_tx_bytes
        );
        per_network!(
            "vxmesh_vxlan_rx_packets",
            "VXLAN datagrams accepted from peers.",
            None,
            vxlan_rx_packets
        );
        per_network!(
            "vxmesh_vxlan_rx",
            "VXLAN bytes accepted from peers.",
            Some(&Unit::Bytes),
            vxlan_rx_bytes
        );
        per_network!(
            "vxmesh_flood_copies",
            "Copies sent for broadcast, multicast and unknown unicast frames.",
            None,
            flood_copies
        );
        per_network!(
            "vxmesh_flooded_frames",
            "Frames that had to be flooded.",
            None,
            flooded_frames
        );
        per_network!(
            "vxmesh_arp_answered",
            "ARP requests answered locally from the endpoint table.",
            None,
            arp_answered
        );
        per_network!(
            "vxmesh_fdb_learned",
            "MAC addresses learned from the underlay.",
            None,
            learned
        );
        per_network!(
            "vxmesh_fdb_full",
            "Learned entries refused because the table was at its cap.",
            None,
            fdb_full
        );
        per_network!(
            "vxmesh_fdb_evicted",
            "Learned entries a full table dropped, stalest first, to make room for new ones (at most one sweep a second).",
            None,
            fdb_evicted
        );
        per_network!(
            "vxmesh_announced",
            "Local workload addresses seen on the TAP for the first time, to announce (announce = true).",
            None,
            announced
        );
        per_network!(
            "vxmesh_announce_refused",
            "Local workload addresses not announced: at announce_cap, or over 100 new a second.",
            None,
            announce_refused
        );
        per_network!(
            "vxmesh_csum_completed",
            "Inner checksums a sender left partial, completed here.",
            None,
            csum_completed
        );
        per_network!(
            "vxmesh_gso_segmented",
            "TCP super-frames received whole and cut to the MTU.",
            None,
            gso_segmented
        );
        let mut drops = Vec::new();
        for n in &status.networks {
            for (reason, v) in &n.stats.drops {
                drops.push((
                    vec![("network", n.name.clone()), ("reason", reason.clone())],
                    *v,
                ));
            }
        }
        for (reason, v) in &status.global.drops {
            drops.push((
                vec![("network", String::new()), ("reason", reason.clone())],
                *v,
            ));
        }
        counters(e, "vxmesh_drops", "Frames and datagrams dropped, by network (empty: before the network was known) and reason.", None, drops)?;
        let mut fdb = Vec::new();
        for n in &status.networks {
            fdb.push((
                vec![("network", n.name.clone()), ("kind", "static".into())],
                n.fdb_static as f64,
            ));
            fdb.push((
                vec![("network", n.name.clone()), ("kind", "learned".into())],
                n.fdb_learned as f64,
            ));
        }
        gauges(
            e,
            "vxmesh_fdb_entries",
            "Forwarding-table entries.",
            None,
            fdb,
        )?;
        gauges(
            e,
            "vxmesh_peers",
            "Other member nodes of the network.",
            None,
            status
                .networks
                .iter()
                .map(|n| (net(n), n.peers.len() as f64))
                .collect(),
        )?;
        let mut peer_rows: [CounterFamily; 4] = [
            (
                "vxmesh_peer_tx_packets",
                "VXLAN datagrams sent to a peer.",
                None,
                vec![],
            ),
            (
                "vxmesh_peer_tx",
                "VXLAN bytes sent to a peer.",
                Some(&Unit::Bytes),
                vec![],
            ),
            (
                "vxmesh_peer_rx_packets",
                "VXLAN datagrams accepted from a peer.",
                None,
                vec![],
            ),
            (
                "vxmesh_peer_rx",
                "VXLAN bytes accepted from a peer.",
                Some(&Unit::Bytes),
                vec![],
            ),
        ];
        for n in &status.networks {
            for (peer, p) in &n.stats.peers {
                let l = vec![("network", n.name.clone()), ("peer", peer.clone())];
                for (row, v) in
                    peer_rows
                        .iter_mut()
                        .zip([p.tx_packets, p.tx_bytes, p.rx_packets, p.rx_bytes])
                {
                    row.3.push((l.clone(), v));
                }
            }
        }
        for (name, help, unit, rows) in peer_rows {
            counters(e, name, help, unit, rows)?;
        }
        counters(
            e,
            "vxmesh_underlay_rx_packets",
            "Datagrams read from the underlay socket, accepted or not.",
            None,
            vec![(vec![], status.global.udp_rx_packets)],
        )?;
        gauges(
            e,
            "vxmesh_worker_idle",
            "Time since a dataplane worker last went round its loop.",
            Some(&Unit::Seconds),
            status
                .workers
                .iter()
                .map(|w| (vec![("worker", w.name.clone())], w.idle_ms as f64 / 1000.0))
                .collect(),
        )?;
        counters(
            e,
            "vxmesh_dns_queries",
            "Queries the network's DNS responder received (UDP datagrams and TCP messages).",
            None,
            dns.iter()
                .map(|(net, c)| (vec![("network", net.clone())], c[0]))
                .collect(),
        )?;
        counters(
            e,
            "vxmesh_dns_responses",
            "What the network's DNS responder did with a query, by result.",
            None,
            dns.iter()
                .flat_map(|(net, c)| {
                    [
                        "answered",
                        "nxdomain",
                        "refused",
                        "malformed",
                        "forwarded",
                        "forward_failed",
                    ]
                    .into_iter()
                    .zip(&c[1..7])
                    .map(|(r, v)| (vec![("network", net.clone()), ("result", r.into())], *v))
                })
                .collect(),
        )?;
        counters(
            e,
            "vxmesh_dns_guarded",
            "Queries and connections the network's DNS responder refused to serve, by guard.",
            None,
            dns.iter()
                .flat_map(|(net, c)| {
                    [
                        "outside_subnet",
                        "forward_rate",
                        "truncated",
                        "tcp_limit",
                        "accept_error",
                    ]
                    .into_iter()
                    .zip(&c[7..])
                    .map(|(r, v)| (vec![("network", net.clone()), ("guard", r.into())], *v))
                })
                .collect(),
        )?;
        counters(
            e,
            "vxmesh_worker_reads",
            "Reads a dataplane lane made: frames from its TAP queues, or underlay reads.",
            None,
            status
                .workers
                .iter()
                .flat_map(|w| {
                    [("tap", w.tap_reads), ("underlay", w.underlay_reads)].map(|(side, n)| {
                        (vec![("worker", w.name.clone()), ("side", side.into())], n)
                    })
                })
                .collect(),
        )?;
        counters(
            e,
            "vxmesh_reloads",
            "Config reloads, by result.",
            None,
            vec![
                (vec![("result", "ok".into())], status.reloads_ok),
                (vec![("result", "failed".into())], status.reloads_failed),
            ],
        )?;
        {
            let inner = st.inner.lock().expect("state lock poisoned");
            let o = inner.dataplane.offloads();
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            gauges(
                e,
                "vxmesh_offload",
                "1 for each offload in use: TAP virtio-net header with TSO, USO super-frames read from the TAPs, UDP GSO frames written into the TAPs, UDP GSO on send, UDP GRO on receive.",
                None,
                vec![
                    (vec![("offload", "tap_vnet_hdr".into())], flag(o.tap_vnet_hdr)),
                    (vec![("offload", "tap_uso".into())], flag(o.tap_uso)),
                    (vec![("offload", "tap_uso_write".into())], flag(o.tap_uso_write)),
                    (vec![("offload", "udp_gso".into())], flag(o.udp_gso)),
                    (vec![("offload", "udp_gro".into())], flag(o.udp_gro)),
                ],
            )?;
            let b = inner.dataplane.batches();
            let mut fam = e.encode_descriptor(
                "vxmesh_worker_batch_reads",
                "Reads a dataplane worker made per wake-up (TAP frames or underlay reads).",
                None,
                MetricType::Histogram,
            )?;
            for (side, h) in [("tap", b.tap_reads), ("underlay", b.underlay_reads)] {
                let (sum, count, buckets) = h.snapshot();
                let l: Labels = vec![("side", side.into())];
                fam.encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
            let mut fam = e.encode_descriptor(
                "vxmesh_underlay_send_datagrams",
                "Datagrams per send to one peer (one sendmsg with UDP GSO when it is on).",
                None,
                MetricType::Histogram,
            )?;
            let (sum, count, buckets) = b.tx_datagrams.snapshot();
            let none: Labels = vec![];
            fam.encode_family(&none)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        durations(
            e,
            "vxmesh_table_apply",
            "Time to turn a desired state into running tables: validate (read and check it), apply (build the table snapshot and swap it in).",
            [("validate", &st.times.validate), ("apply", &st.times.apply)]
                .into_iter()
                .map(|(step, h)| (vec![("step", step.into())], h.snapshot()))
                .collect(),
        )?;
        let store = st.store_status();
        let sl = || vec![("store", store.backend.clone())];
        gauges(
            e,
            "vxmesh_store_up",
            "1 while the desired-state store is reachable (the file store always is); 0 means fail static.",
            None,
            vec![(sl(), if store.connected { 1.0 } else { 0.0 })],
        )?;
        gauges(
            e,
            "vxmesh_store_revision",
            "Store revision of the last desired state applied (0 for the file store).",
            None,
            vec![(sl(), store.revision as f64)],
        )?;
        counters(
            e,
            "vxmesh_store_events",
            "Store watch events applied since start.",
            None,
            vec![(sl(), store.events)],
        )?;
        gauges(
            e,
            "vxmesh_store_quarantined_documents",
            "Documents under the store prefix left out because they are invalid (everything else applies); the keys and reasons are in the status.",
            None,
            vec![(sl(), store.quarantined.len() as f64)],
        )?;
        // The mesh, per service and task.
        let mut rows = [
            TaskFamily::new(
                "vxmesh_service_connections_active",
                "Open connections (TCP) or sessions (UDP) to the task.",
                None,
                false,
            ),
            TaskFamily::new(
                "vxmesh_service_connections",
                "Connections and sessions opened to the task.",
                None,
                true,
            ),
            TaskFamily::new(
                "vxmesh_service_rx",
                "Bytes from clients to the task.",
                Some(Unit::Bytes),
                true,
            ),
            TaskFamily::new(
                "vxmesh_service_tx",
                "Bytes from the task back to clients.",
                Some(Unit::Bytes),
                true,
            ),
            TaskFamily::new(
                "vxmesh_service_connect_failures",
                "Failed connects to the task.",
                None,
                true,
            ),
            TaskFamily::new(
                "vxmesh_service_ejections",
                "Times the task was ejected after failed connects.",
                None,
                true,
            ),
            TaskFamily::new(
                "vxmesh_service_task_up",
                "1 when the task takes new connections.",
                None,
                false,
            ),
        ];
        let mut no_backend = Vec::new();
        let mut open = Vec::new();
        for s in &services {
            no_backend.push((vec![("service", s.name.clone())], s.no_backend));
            for (kind, o) in [
                ("connections", s.open_connections),
                ("sessions", s.open_sessions),
            ] {
                let l = vec![("service", s.name.clone()), ("kind", kind.to_string())];
                open.push((l, o as f64));
            }
            for t in &s.tasks {
                let l = vec![("service", s.name.clone()), ("task", t.addr.clone())];
                let up = matches!(
                    t.state,
                    vxmesh_dataplane::mesh::health::State::Up
                        | vxmesh_dataplane::mesh::health::State::SlowStart
                );
                let vals = [
                    t.active as f64,
                    t.total as f64,
                    t.bytes_in as f64,
                    t.bytes_out as f64,
                    t.connect_failures as f64,
                    t.ejections as f64,
                    if up { 1.0 } else { 0.0 },
                ];
                for (row, v) in rows.iter_mut().zip(vals) {
                    row.rows.push((l.clone(), v));
                }
            }
        }
        for f in rows {
            if f.counter {
                let vals = f.rows.into_iter().map(|(l, v)| (l, v as u64)).collect();
                counters(e, f.name, f.help, f.unit.as_ref(), vals)?;
            } else {
                gauges(e, f.name, f.help, f.unit.as_ref(), f.rows)?;
            }
        }
        durations(
            e,
            "vxmesh_health_check_duration",
            "How long active health checks of a task took.",
            services
                .iter()
                .flat_map(|s| {
                    s.tasks.iter().map(|t| {
                        let l = vec![("service", s.name.clone()), ("task", t.addr.clone())];
                        (l, t.probe_duration.clone())
                    })
                })
                .collect(),
        )?;
        let res = st
            .inner
            .lock()
            .expect("state lock poisoned")
            .mesh
            .resources()
            .clone();
        mesh_limits::encode(e, &services, &res)?;
        gauges(
            e,
            "vxmesh_service_open",
            "Connections and sessions this node holds open for the service.",
            None,
            open,
        )?;
        counters(
            e,
            "vxmesh_service_no_backend",
            "Client connections refused because no task could take them.",
            None,
            no_backend,
        )?;
        Ok(())
    }
}

/// The registry behind `/metrics` for one daemon.
pub fn registry(state: &Arc<State>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(DaemonCollector(Arc::downgrade(state))));
    r
}

/// The OpenMetrics text of one scrape.
pub fn render(state: &Arc<State>) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(state))
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config;
    use crate::daemon::{self, Options};
    use crate::store::Store;

    /// A node on loopback that is a member of no network: no TAP, no root.
    fn cluster(endpoints: usize) -> crate::model::Cluster {
        let mut text = String::from(
            r#"settings = { vxlan_port = 0, source_ports = 1, queues = 1 }
nodes = [{ name = "me", address = "127.0.0.1" }, { name = "h2", address = "198.18.0.2" }]
networks = [{ name = "front", vni = 4096, subnet = "10.0.0.0/16" }]
"#,
        );
        for i in 0..endpoints {
            text.push_str(&format!(
                "[[endpoints]]\nnetwork = \"front\"\nnode = \"h2\"\nip = \"10.0.{}.{}\"\n",
                1 + i / 200,
                1 + i % 200
            ));
        }
        config::parse(Path::new("t.toml"), &text).expect("valid")
    }

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    #[tokio::test]
    async fn table_apply_time_is_exported_and_moves() {
        let opts = Options::file(
            PathBuf::from("t.toml"),
            "me",
            PathBuf::from("/nonexistent/vxmeshd.sock"),
            std::env::temp_dir().join(format!("vxmesh-metrics-{}", std::process::id())),
        );
        let st = daemon::start(&opts, cluster(1), Store::File(opts.config.clone()))
            .expect("starts without root");
        let count = r#"vxmesh_table_apply_seconds_count{step="apply"}"#;
        let before = super::render(&st);
        assert!(
            before.contains("# TYPE vxmesh_table_apply_seconds histogram"),
            "{before}"
        );
        // The start-up build counts as the first apply.
        assert_eq!(sample(&before, count), 1.0);
        st.apply(cluster(2000)).expect("applies");
        let after = super::render(&st);
        assert_eq!(sample(&after, count), 2.0);
        let sum = r#"vxmesh_table_apply_seconds_sum{step="apply"}"#;
        assert!(sample(&after, sum) > sample(&before, sum));
        let last = crate::api::server::build_status(&st).last_apply;
        assert_eq!((last.endpoints, last.nodes), (2000, 2));
        assert!(last.apply_s > 0.0);
    }
}
