//! Tests of [`super`]: one lane's pipeline over recording fakes (the
//! multi-node harness is `dataplane/tests/inmem.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::overlay::{EndpointEntry, GlobalStats, LearnedFdb};
use crate::wire::MacAddr;

/// A TAP and a socket that record what they are given.
#[derive(Default)]
struct Recorder {
    tap: TapOffloads,
    written: Vec<Vec<u8>>,
    sent: Vec<(Ipv4Addr, Vec<u8>, Option<usize>)>,
}

impl Taps for Recorder {
    fn offloads(&self, _vni: u32) -> Option<TapOffloads> {
        Some(self.tap)
    }
    fn write(&mut self, _vni: u32, frame: &[u8]) -> Result<(), TapError> {
        self.written.push(frame.to_vec());
        Ok(())
    }
    fn refuse_uso_write(&mut self, _vni: u32) {
        self.tap.uso_write = false;
    }
}

impl Transmitter for Recorder {
    fn transmit(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        self.sent
            .push((t.peer, t.contents.to_vec(), t.segment_size));
        Ok(())
    }
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// One network (VNI 4096) shared with PEER, where 10.0.9.2 lives.
fn tables() -> Tables {
    let eps = [
        EndpointEntry {
            ip: Ipv4Addr::new(10, 0, 9, 1),
            mac: MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 9, 1)),
            vtep: LOCAL,
        },
        EndpointEntry {
            ip: Ipv4Addr::new(10, 0, 9, 2),
            mac: MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 9, 2)),
            vtep: PEER,
        },
    ];
    let net = NetworkTable::new(
        "front",
        4096,
        1450,
        eps[0].mac,
        Arc::default(),
        Arc::new(LearnedFdb::new(16, Duration::from_secs(300))),
    )
    .with_peers(LOCAL, [LOCAL, PEER])
    .with_endpoints(LOCAL, &eps);
    Tables::new(LOCAL, vec![net], Arc::new(GlobalStats::default()))
}

/// A UDP frame from 10.0.9.1 to 10.0.9.2.
fn frame(payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(
        MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 9, 1)).0,
        MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 9, 2)).0,
    )
    .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
    .udp(40000, 7);
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

#[test]
fn a_transmit_counts_its_datagrams() {
    let t = |len: usize, seg| Transmit {
        peer: PEER,
        flow: 0,
        contents: &[0u8; 100][..len],
        segment_size: seg,
    };
    assert_eq!(t(100, None).segments(), 1);
    assert_eq!(t(100, Some(50)).segments(), 2);
    assert_eq!(t(99, Some(50)).segments(), 2);
    assert_eq!(t(50, Some(50)).segments(), 1);
}

#[test]
fn frames_to_one_peer_leave_together_at_the_flush_and_not_before() {
    let (t, mut io, mut tx) = (tables(), Recorder::default(), TxPath::default());
    let now = Instant::now();
    for _ in 0..3 {
        let mut f = frame(b"same size");
        assert_eq!(tx.frame(&Core, &t, 0, &mut f, now, &mut io), None);
    }
    assert!(io.sent.is_empty(), "held until the flush");
    tx.flush(&t, &mut io);
    let len = vxlan::HEADER_LEN + frame(b"same size").len();
    assert_eq!(io.sent.len(), 1);
    assert_eq!(
        (io.sent[0].0, io.sent[0].1.len(), io.sent[0].2),
        (PEER, 3 * len, Some(len))
    );
    assert_eq!(
        t.networks[0]
            .stats
            .vxlan_tx_packets
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

/// `frame` behind a virtio-net header asking for its checksum to be
/// finished at (`start`, `offset`).
fn needs_csum(frame: &[u8], start: u16, offset: u16) -> Vec<u8> {
    let h = virtio::Header {
        flags: virtio::F_NEEDS_CSUM,
        csum_start: start,
        csum_offset: offset,
        ..virtio::Header::default()
    };
    let mut r = vec![0u8; virtio::LEN];
    assert!(h.emit(&mut r));
    r.extend_from_slice(frame);
    r
}

#[test]
fn a_frame_whose_checksum_offsets_are_out_of_range_is_dropped_and_counted() {
    let (t, mut tx) = (tables(), TxPath::default());
    let mut io = Recorder {
        tap: TapOffloads {
            vnet_hdr: true,
            uso_write: false,
        },
        ..Recorder::default()
    };
    let now = Instant::now();
    let f = frame(b"partial checksum");
    let stats = &t.networks[0].stats;
    for (start, offset) in [(f.len() as u16, 0), (34, f.len() as u16), (34, 65_535)] {
        let mut read = needs_csum(&f, start, offset);
        let got = tx.frame(&Core, &t, 0, &mut read, now, &mut io);
        assert_eq!(got, Some(DropReason::Malformed), "({start}, {offset})");
    }
    tx.flush(&t, &mut io);
    assert!(io.sent.is_empty(), "nothing sent on");
    assert_eq!(stats.drops.get(DropReason::Malformed), 3);
    // In range (the UDP checksum at 34 + 6), it is finished and sent.
    let mut read = needs_csum(&f, 34, 6);
    assert_eq!(tx.frame(&Core, &t, 0, &mut read, now, &mut io), None);
    tx.flush(&t, &mut io);
    assert_eq!(io.sent.len(), 1);
    assert_eq!(stats.drops.get(DropReason::Malformed), 3);
}
