//! The overlay's families: per network (TAP and VXLAN traffic, floods,
//! forwarding table, drops), per peer, the underlay socket and the
//! dataplane workers, their offloads and batches.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{counters, gauges, CounterFamily, Labels};
use crate::state::State;
use crate::status::Status;

/// Per network and peer, the underlay and the workers' idle time.
pub(super) fn networks(e: &mut DescriptorEncoder, status: &Status) -> fmt::Result {
    let net = |n: &crate::status::NetworkStatus| vec![("network", n.name.clone())];
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
    let enc = &status.encryption;
    gauges(
        e,
        "vxmesh_peer_session_established",
        "1 while this node has a session to send to a peer of an encrypted network with, else 0 (it gets nothing).",
        None,
        enc.peers
            .iter()
            .map(|p| {
                let up = if p.state == "established" { 1.0 } else { 0.0 };
                (vec![("peer", p.address.clone())], up)
            })
            .collect(),
    )?;
    let c = &enc.counters;
    for (name, help, v) in [
        ("vxmesh_handshake_initiations_sent", "Noise IK initiations sent to peers.", c.initiations_sent),
        ("vxmesh_handshake_responses_sent", "Noise IK responses sent to peers.", c.responses_sent),
        ("vxmesh_sessions_established", "Sessions made with peers, as initiator or responder (rekeys included).", c.sessions_established),
        ("vxmesh_handshakes_refused", "Handshake messages refused: malformed, forged, from an unknown or changed key, replayed, over the rate, or answering nothing.", c.handshakes_refused),
        ("vxmesh_handshakes_dropped", "Handshake messages dropped before the key manager read them (its queue was full).", c.handshakes_dropped),
    ] {
        counters(e, name, help, None, vec![(vec![], v)])?;
    }
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
    Ok(())
}

/// Reads each dataplane lane made.
pub(super) fn worker_reads(e: &mut DescriptorEncoder, status: &Status) -> fmt::Result {
    counters(
        e,
        "vxmesh_worker_reads",
        "Reads a dataplane lane made: frames from its TAP queues, or underlay reads.",
        None,
        status
            .workers
            .iter()
            .flat_map(|w| {
                [("tap", w.tap_reads), ("underlay", w.underlay_reads)]
                    .map(|(side, n)| (vec![("worker", w.name.clone()), ("side", side.into())], n))
            })
            .collect(),
    )?;
    Ok(())
}

/// Offloads in use and batch sizes.
pub(super) fn offloads(e: &mut DescriptorEncoder, st: &State) -> fmt::Result {
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

    Ok(())
}
