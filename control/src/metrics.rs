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

mod dns;
mod mesh;
mod mesh_limits;
mod overlay;
mod store;

type Labels = Vec<(&'static str, String)>;
/// Name, help, unit and rows of one counter family.
type CounterFamily<'a> = (&'a str, &'a str, Option<&'a Unit>, Vec<(Labels, u64)>);

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
        let status = crate::status::build_status(&st);
        let (services, dns) = {
            let inner = st.inner.lock().expect("state lock poisoned");
            let dns: Vec<dns::DnsCounts> = inner
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
        overlay::networks(e, &status)?;
        dns::encode(e, &dns)?;
        overlay::worker_reads(e, &status)?;
        store::reloads(e, &status)?;
        overlay::offloads(e, &st)?;
        store::encode(e, &st)?;
        mesh::encode(e, &st, &services)?;
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

    /// A daemon on the file store that needs no root.
    fn daemon_on(c: crate::model::Cluster, tag: &str) -> std::sync::Arc<crate::state::State> {
        let opts = Options::file(
            PathBuf::from("t.toml"),
            "me",
            PathBuf::from("/nonexistent/vxmeshd.sock"),
            std::env::temp_dir().join(format!("vxmesh-metrics-{tag}-{}", std::process::id())),
        );
        daemon::start(&opts, c, Store::File(opts.config.clone())).expect("starts without root")
    }

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    #[tokio::test]
    async fn table_apply_time_is_exported_and_moves() {
        let st = daemon_on(cluster(1), "apply");
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
        let last = crate::status::build_status(&st).last_apply;
        assert_eq!((last.endpoints, last.nodes), (2000, 2));
        assert!(last.apply_s > 0.0);
    }

    /// Every domain's families are in the scrape, in the order they always
    /// had (the text is what dashboards and alerts were written against).
    #[tokio::test]
    async fn each_domain_encodes_its_families_in_order() {
        let st = daemon_on(cluster(1), "order");
        let text = super::render(&st);
        let want = [
            "# TYPE vxmesh_build_info gauge",
            "# TYPE vxmesh_tap_rx_packets counter",
            "# TYPE vxmesh_drops counter",
            "# TYPE vxmesh_peer_rx_bytes counter",
            "# TYPE vxmesh_worker_idle_seconds gauge",
            "# TYPE vxmesh_dns_queries counter",
            "# TYPE vxmesh_dns_guarded counter",
            "# TYPE vxmesh_worker_reads counter",
            "vxmesh_reloads_total{result=\"ok\"} 0",
            "# TYPE vxmesh_offload gauge",
            "# TYPE vxmesh_underlay_send_datagrams histogram",
            "# TYPE vxmesh_table_apply_seconds histogram",
            "vxmesh_store_up{store=\"file\"} 1",
            "vxmesh_store_quarantined_documents{store=\"file\"} 0",
            "# TYPE vxmesh_service_connections_active gauge",
            "# TYPE vxmesh_health_check_duration_seconds histogram",
            "# TYPE vxmesh_service_open gauge",
            "# TYPE vxmesh_service_no_backend counter",
        ];
        let mut from = 0;
        for w in want {
            let at = text[from..]
                .find(w)
                .unwrap_or_else(|| panic!("{w} missing or out of order in\n{text}"));
            from += at + w.len();
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
