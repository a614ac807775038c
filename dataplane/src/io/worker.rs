//! The worker threads and the [`Dataplane`] handle that owns them.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::tap::Tap;
use super::udp::Underlay;
use crate::overlay::stats::{bump, PeerStats};
use crate::overlay::{Core, DropReason, Tables, Verdict};
use crate::wire::{arp, gro, gso, virtio, vxlan};

/// Most packets a worker handles per wake-up before it polls again.
pub const BATCH: usize = 64;
/// How long a worker sleeps in `poll` before it checks for a stop request
/// and beats its heartbeat.
const TICK: Duration = Duration::from_millis(100);
/// Room for the VXLAN header in front of a frame read from a TAP.
const HEADROOM: usize = vxlan::HEADER_LEN;
/// Largest datagram or frame a buffer holds.
const BUF_LEN: usize = 65536;

/// TAP devices by VNI, swapped together with the tables.
pub type TapSet = HashMap<u32, Arc<Tap>>;

struct Shared {
    tables: ArcSwap<Tables>,
    taps: ArcSwap<TapSet>,
    core: Core,
    underlay: Underlay,
    epoch: Instant,
    /// Reads per wake-up, TAP side and underlay side.
    tap_batches: BatchHistogram,
    udp_batches: BatchHistogram,
}

/// Upper bounds of the batch-size buckets (reads per wake-up).
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// How many reads a worker made per wake-up: a histogram of relaxed
/// atomics, one bucket per power of two up to [`BATCH`].
#[derive(Default, Debug)]
pub struct BatchHistogram {
    counts: [AtomicU64; BATCH_BUCKETS.len() + 1],
    sum: AtomicU64,
}

impl BatchHistogram {
    fn observe(&self, reads: usize) {
        if reads == 0 {
            return;
        }
        let r = reads as u64;
        let i = BATCH_BUCKETS
            .iter()
            .position(|b| r <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(r, Ordering::Relaxed);
    }

    /// (sum, count, per-bucket counts with upper bounds, the last infinite).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
            .iter()
            .map(|b| *b as f64)
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        (self.sum.load(Ordering::Relaxed) as f64, count, buckets)
    }
}

/// Which offloads are in use, for the status and `/metrics`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Offloads {
    /// Every TAP has a virtio-net header (TSO on the TAP).
    pub tap_vnet_hdr: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

struct Worker {
    name: String,
    stop: Arc<AtomicBool>,
    /// Milliseconds since `Shared::epoch` of the last loop turn.
    heartbeat: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(
        name: String,
        shared: &Arc<Shared>,
        body: impl FnOnce(Arc<Shared>, &AtomicBool, &AtomicU64) + Send + 'static,
    ) -> io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = Arc::new(AtomicU64::new(0));
        let (s, h, sh) = (stop.clone(), heartbeat.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || body(sh, &s, &h))?;
        Ok(Worker {
            name,
            stop,
            heartbeat,
            handle: Some(handle),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Health of one worker thread, for the watchdog and the admin API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerStatus {
    pub name: String,
    /// Time since the worker last went round its loop.
    pub idle_ms: u64,
    pub running: bool,
}

/// The watchdog's rule: every worker thread alive and round its loop
/// within `within`. A worker stuck in a syscall or a loop stops beating,
/// and the daemon then withholds WATCHDOG=1 so systemd restarts it.
pub fn all_turning(workers: &[WorkerStatus], within: Duration) -> bool {
    !workers.is_empty()
        && workers
            .iter()
            .all(|w| w.running && w.idle_ms <= within.as_millis() as u64)
}

/// The running packet path of one node.
pub struct Dataplane {
    shared: Arc<Shared>,
    udp: Worker,
    taps: HashMap<u32, Worker>,
}

impl Dataplane {
    /// Starts the underlay worker and one worker per TAP.
    pub fn start(
        underlay: Underlay,
        core: Core,
        tables: Tables,
        taps: TapSet,
    ) -> io::Result<Dataplane> {
        let shared = Arc::new(Shared {
            tables: ArcSwap::from_pointee(tables),
            taps: ArcSwap::from_pointee(TapSet::new()),
            core,
            underlay,
            epoch: Instant::now(),
            tap_batches: BatchHistogram::default(),
            udp_batches: BatchHistogram::default(),
        });
        let udp = Worker::spawn("vxm-udp".into(), &shared, underlay_loop)?;
        let mut dp = Dataplane {
            shared,
            udp,
            taps: HashMap::new(),
        };
        dp.sync_workers(taps)?;
        Ok(dp)
    }

    /// Publishes a new snapshot and TAP set: workers of networks that went
    /// away stop (their TAP closes), new networks get a worker, the others
    /// pick the new tables up at their next wake-up.
    pub fn apply(&mut self, tables: Tables, taps: TapSet) -> io::Result<()> {
        self.shared.tables.store(Arc::new(tables));
        self.sync_workers(taps)
    }

    fn sync_workers(&mut self, taps: TapSet) -> io::Result<()> {
        self.shared.taps.store(Arc::new(taps.clone()));
        let gone: Vec<u32> = self
            .taps
            .keys()
            .filter(|v| !taps.contains_key(v))
            .copied()
            .collect();
        for vni in gone {
            if let Some(mut w) = self.taps.remove(&vni) {
                w.stop();
            }
        }
        for (vni, tap) in taps {
            if self.taps.contains_key(&vni) {
                continue;
            }
            let name = format!("vxm-tap-{vni}");
            let w = Worker::spawn(name, &self.shared, move |sh, stop, hb| {
                tap_loop(sh, vni, tap, stop, hb)
            })?;
            self.taps.insert(vni, w);
        }
        Ok(())
    }

    /// The snapshot in use now.
    pub fn tables(&self) -> Arc<Tables> {
        self.shared.tables.load_full()
    }

    pub fn core(&self) -> &Core {
        &self.shared.core
    }

    pub fn underlay(&self) -> &Underlay {
        &self.shared.underlay
    }

    /// Reads per wake-up of the TAP workers and of the underlay worker.
    pub fn batches(&self) -> (&BatchHistogram, &BatchHistogram) {
        (&self.shared.tap_batches, &self.shared.udp_batches)
    }

    /// The offloads in use now.
    pub fn offloads(&self) -> Offloads {
        let taps = self.shared.taps.load();
        Offloads {
            tap_vnet_hdr: !taps.is_empty() && taps.values().all(|t| t.vnet_hdr()),
            udp_gso: self.shared.underlay.gso(),
            udp_gro: self.shared.underlay.gro(),
        }
    }

    /// One entry per worker thread.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        std::iter::once(&self.udp)
            .chain(self.taps.values())
            .map(|w| WorkerStatus {
                name: w.name.clone(),
                idle_ms: now.saturating_sub(w.heartbeat.load(Ordering::Relaxed)),
                running: w.handle.as_ref().is_some_and(|h| !h.is_finished()),
            })
            .collect()
    }

    /// True when every worker went round its loop within `within`: the
    /// systemd watchdog is fed only while this holds.
    pub fn healthy(&self, within: Duration) -> bool {
        all_turning(&self.workers(), within)
    }

    /// Stops every worker; the TAPs close when the last handle goes.
    pub fn stop(&mut self) {
        self.udp.stop();
        for (_, mut w) in self.taps.drain() {
            w.stop();
        }
        self.shared.taps.store(Arc::new(TapSet::new()));
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `fd` is readable or a tick passes; false on a tick.
fn wait_readable(fd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = TICK.as_millis() as u16;
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

fn beat(sh: &Shared, hb: &AtomicU64) {
    hb.store(sh.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// TAP -> underlay for one network.
fn tap_loop(sh: Arc<Shared>, vni: u32, tap: Arc<Tap>, stop: &AtomicBool, hb: &AtomicU64) {
    let vnet = tap.vnet_hdr();
    // [VXLAN header room | frame], or with a virtio-net header:
    // [2 spare | virtio-net header (10), overwritten by the VXLAN header | frame].
    let lead = if vnet { virtio::LEN } else { HEADROOM };
    let mut buf = vec![0u8; lead + BUF_LEN];
    let mut reply = [0u8; arp::REPLY_LEN];
    let mut tx = TxBatch::new();
    let mut scratch = vec![0u8; BUF_LEN];
    let mut got = 0usize;
    while !stop.load(Ordering::Relaxed) {
        sh.tap_batches.observe(std::mem::take(&mut got));
        beat(&sh, hb);
        if !wait_readable(&tap.fd()) {
            continue;
        }
        let tables = sh.tables.load();
        let Some(net) = tables.network_by_vni(vni) else {
            continue;
        };
        let nt = &tables.networks[net];
        let stats = &nt.stats;
        let now = Instant::now();
        for _ in 0..BATCH {
            let read_at = if vnet { 0 } else { HEADROOM };
            let n = match tap.recv(&mut buf[read_at..]) {
                Ok(n) => {
                    got += 1;
                    read_at + n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    stats.drops.add(DropReason::TapError);
                    break;
                }
            };
            if vnet {
                let Some(h) = virtio::Header::parse(&buf[..n]) else {
                    stats.drops.add(DropReason::Malformed);
                    continue;
                };
                match h.gso() {
                    virtio::GSO_NONE => {
                        if h.flags & virtio::F_NEEDS_CSUM != 0 {
                            let (s, o) = (usize::from(h.csum_start), usize::from(h.csum_offset));
                            virtio::finish_csum(&mut buf[lead..n], s, o);
                        }
                    }
                    virtio::GSO_TCPV4 | virtio::GSO_TCPV6 => {
                        // A TSO super-frame: cut it here, send the pieces
                        // to their peer with one UDP GSO call.
                        let mss = usize::from(h.gso_size);
                        let cut = gso::segment_tcp(&buf[lead..n], mss, &mut scratch, |seg| {
                            tx.push(&sh, nt, seg, &mut reply, now, &tap)
                        });
                        if cut.is_err() {
                            stats.drops.add(DropReason::Malformed);
                        }
                        tx.flush(&sh, nt);
                        continue;
                    }
                    _ => {
                        stats.drops.add(DropReason::Malformed);
                        continue;
                    }
                }
            }
            let frame_at = lead;
            let frame = &buf[frame_at..n];
            let verdict = sh.core.handle_frame(&tables, net, frame, &mut reply, now);
            let d = frame_at - HEADROOM..n;
            match verdict {
                Verdict::Unicast { peer, vni, flow } => {
                    vxlan::write_header(&mut buf[d.start..frame_at], vni);
                    let ps = nt.peer_index(peer).and_then(|i| nt.peer_stats.get(i));
                    send(&sh, stats, ps, flow, peer, &buf[d]);
                }
                Verdict::Flood { peers, vni, flow } => {
                    vxlan::write_header(&mut buf[d.start..frame_at], vni);
                    for (i, peer) in peers.iter().enumerate() {
                        let ps = nt.peer_stats.get(i);
                        send(&sh, stats, ps, flow, *peer, &buf[d.clone()]);
                    }
                }
                Verdict::ArpReply { len } => write_frame(&tap, stats, &mut reply, len),
                Verdict::Deliver { .. } | Verdict::DeliverSegmented { .. } | Verdict::Drop(_) => {}
            }
        }
    }
}

/// Encapsulated segments of one super-frame on their way to one peer, laid
/// out back to back for a single UDP GSO send.
struct TxBatch {
    buf: Vec<u8>,
    /// Length of every datagram but possibly the last.
    seg: usize,
    count: usize,
    dest: Option<(std::net::Ipv4Addr, u32)>,
}

/// Largest payload of one UDP GSO send (the kernel's limit is 64 KiB of
/// UDP payload in 64 segments).
const GSO_MAX_BYTES: usize = 65_000;
const GSO_MAX_SEGS: usize = 64;

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            buf: Vec::with_capacity(BUF_LEN + 2048),
            seg: 0,
            count: 0,
            dest: None,
        }
    }

    /// Runs one segment through the core and queues, sends or floods it.
    fn push(
        &mut self,
        sh: &Shared,
        nt: &crate::overlay::NetworkTable,
        frame: &[u8],
        reply: &mut [u8; arp::REPLY_LEN],
        now: Instant,
        tap: &Tap,
    ) {
        let tables = sh.tables.load();
        let Some(net) = tables.network_by_vni(nt.vni) else {
            return;
        };
        match sh.core.handle_frame(&tables, net, frame, reply, now) {
            Verdict::Unicast { peer, vni, flow } => {
                let len = HEADROOM + frame.len();
                let fits = self.dest == Some((peer, flow))
                    && len <= self.seg
                    && self.buf.len() == self.count * self.seg
                    && self.buf.len() + len <= GSO_MAX_BYTES
                    && self.count < GSO_MAX_SEGS;
                if !fits {
                    self.flush(sh, nt);
                    self.dest = Some((peer, flow));
                    self.seg = len;
                }
                let at = self.buf.len();
                self.buf.resize(at + len, 0);
                vxlan::write_header(&mut self.buf[at..at + HEADROOM], vni);
                self.buf[at + HEADROOM..].copy_from_slice(frame);
                self.count += 1;
            }
            Verdict::Flood { peers, vni, flow } => {
                self.flush(sh, nt);
                let mut d = vec![0u8; HEADROOM + frame.len()];
                vxlan::write_header(&mut d[..HEADROOM], vni);
                d[HEADROOM..].copy_from_slice(frame);
                for (i, peer) in peers.iter().enumerate() {
                    send(sh, &nt.stats, nt.peer_stats.get(i), flow, *peer, &d);
                }
            }
            Verdict::ArpReply { len } => write_frame(tap, &nt.stats, reply, len),
            _ => {}
        }
    }

    /// Sends what is queued.
    fn flush(&mut self, sh: &Shared, nt: &crate::overlay::NetworkTable) {
        if let Some((peer, flow)) = self.dest.take() {
            let stats = &nt.stats;
            match sh.underlay.send_segments(flow, peer, &self.buf, self.seg) {
                Ok(n) => {
                    bump(&stats.vxlan_tx_packets, n as u64);
                    bump(&stats.vxlan_tx_bytes, self.buf.len() as u64);
                    if let Some(p) = nt.peer_index(peer).and_then(|i| nt.peer_stats.get(i)) {
                        bump(&p.tx_packets, n as u64);
                        bump(&p.tx_bytes, self.buf.len() as u64);
                    }
                }
                Err(_) => stats.drops.add(DropReason::SendError),
            }
        }
        self.buf.clear();
        self.count = 0;
    }
}

/// Writes an ARP reply (or any frame the node itself makes) into a TAP,
/// with an empty virtio-net header in front when the TAP wants one.
fn write_frame(
    tap: &Tap,
    stats: &crate::overlay::NetStats,
    reply: &mut [u8; arp::REPLY_LEN],
    len: usize,
) {
    if tap.vnet_hdr() {
        let mut b = [0u8; virtio::LEN + arp::REPLY_LEN];
        b[virtio::LEN..virtio::LEN + len].copy_from_slice(&reply[..len]);
        write_tap(tap, stats, &b[..virtio::LEN + len]);
    } else {
        write_tap(tap, stats, &reply[..len]);
    }
}

fn send(
    sh: &Shared,
    stats: &crate::overlay::NetStats,
    peer_stats: Option<&Arc<PeerStats>>,
    flow: u32,
    peer: std::net::Ipv4Addr,
    d: &[u8],
) {
    match sh.underlay.send(flow, peer, d) {
        Ok(_) => {
            bump(&stats.vxlan_tx_packets, 1);
            bump(&stats.vxlan_tx_bytes, d.len() as u64);
            if let Some(p) = peer_stats {
                bump(&p.tx_packets, 1);
                bump(&p.tx_bytes, d.len() as u64);
            }
        }
        Err(_) => stats.drops.add(DropReason::SendError),
    }
}

fn write_tap(tap: &Tap, stats: &crate::overlay::NetStats, frame: &[u8]) {
    match tap.send(frame) {
        Ok(_) => {
            bump(&stats.tap_tx_packets, 1);
            bump(&stats.tap_tx_bytes, frame.len() as u64);
        }
        Err(_) => stats.drops.add(DropReason::TapError),
    }
}

/// Underlay -> TAPs, for every network.
fn underlay_loop(sh: Arc<Shared>, stop: &AtomicBool, hb: &AtomicU64) {
    // Datagrams land at offset 2, so that the 8-byte VXLAN header plus
    // these 2 bytes give room for a 10-byte virtio-net header right in front
    // of the inner frame. With UDP_GRO a read may hold a run of datagrams;
    // each is handled at its own offset, so the room exists only for the
    // first: the others go through `Rx::deliver`'s copies (GRO or segments).
    const AT: usize = virtio::LEN - vxlan::HEADER_LEN;
    let mut buf = vec![0u8; AT + BUF_LEN];
    let mut cmsg = nix::cmsg_space!(libc::c_int);
    let mut rx = Rx {
        seg: vec![0u8; BUF_LEN],
        single: vec![0u8; BUF_LEN + virtio::LEN],
        gro: gro::Gro::default(),
        gro_vni: None,
    };
    let gro_on = sh.underlay.enable_gro();
    tracing::info!(
        udp_gro = gro_on,
        gso = sh.underlay.gso(),
        "underlay offloads"
    );
    let mut got = 0usize;
    while !stop.load(Ordering::Relaxed) {
        sh.udp_batches.observe(std::mem::take(&mut got));
        beat(&sh, hb);
        if !wait_readable(sh.underlay.rx()) {
            continue;
        }
        let tables = sh.tables.load();
        let taps = sh.taps.load();
        let now = Instant::now();
        for _ in 0..BATCH {
            let (n, src, stride) = match sh.underlay.recv(&mut buf[AT..], &mut cmsg) {
                Ok(r) => {
                    got += 1;
                    r
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            };
            let stride = stride.unwrap_or(n).max(1);
            let mut off = AT;
            while off < AT + n {
                let end = (off + stride).min(AT + n);
                let verdict = sh
                    .core
                    .handle_datagram(&tables, src, &mut buf[off..end], now);
                if let Verdict::Deliver { net, .. } | Verdict::DeliverSegmented { net, .. } =
                    verdict
                {
                    let mss = match verdict {
                        Verdict::DeliverSegmented { mss, .. } => Some(mss),
                        _ => None,
                    };
                    let nt = &tables.networks[net];
                    match taps.get(&nt.vni) {
                        Some(tap) => {
                            rx.deliver(tap, nt, &mut buf[off + vxlan::HEADER_LEN..end], mss)
                        }
                        None => nt.stats.drops.add(DropReason::TapError),
                    }
                }
                off = end;
            }
        }
        rx.flush(&taps, &tables);
    }
}

/// The receive side's buffers: one per job, owned by the worker.
struct Rx {
    /// One segment at a time when a super-frame is cut.
    seg: Vec<u8>,
    /// A frame with a virtio-net header put in front.
    single: Vec<u8>,
    gro: gro::Gro,
    /// The TAP (by VNI) the frame in `gro` is for.
    gro_vni: Option<u32>,
}

impl Rx {
    /// Writes one inner frame (or super-frame, `mss` given) into its TAP.
    fn deliver(
        &mut self,
        tap: &Tap,
        nt: &crate::overlay::NetworkTable,
        inner: &mut [u8],
        mss: Option<usize>,
    ) {
        let stats = &nt.stats;
        if !tap.vnet_hdr() {
            match mss {
                None => write_tap(tap, stats, inner),
                Some(mss) => {
                    let cut =
                        gso::segment_tcp(inner, mss, &mut self.seg, |s| write_tap(tap, stats, s));
                    if cut.is_err() {
                        stats.drops.add(DropReason::Malformed);
                    }
                }
            }
            return;
        }
        if let Some(mss) = mss {
            // A whole super-frame: into the TAP as one GSO frame.
            self.flush_gro(tap, nt);
            let Some(h) = gso::prepare_for_tap(inner, mss) else {
                stats.drops.add(DropReason::Malformed);
                return;
            };
            self.write_with(tap, stats, h, inner);
            return;
        }
        if self.gro_vni.is_some_and(|v| v != nt.vni) {
            self.flush_gro(tap, nt);
        }
        match self.gro.push(inner) {
            gro::Push::Joined => self.gro_vni = Some(nt.vni),
            gro::Push::Flush => {
                self.flush_gro(tap, nt);
                if self.gro.push(inner) == gro::Push::Joined {
                    self.gro_vni = Some(nt.vni);
                } else {
                    self.write_with(tap, stats, virtio::Header::default(), inner);
                }
            }
            gro::Push::Single => {
                self.flush_gro(tap, nt);
                self.write_with(tap, stats, virtio::Header::default(), inner);
            }
        }
    }

    fn write_with(
        &mut self,
        tap: &Tap,
        stats: &crate::overlay::NetStats,
        h: virtio::Header,
        frame: &[u8],
    ) {
        let len = virtio::LEN + frame.len();
        if len > self.single.len() {
            stats.drops.add(DropReason::Mtu);
            return;
        }
        h.emit(&mut self.single[..virtio::LEN]);
        self.single[virtio::LEN..len].copy_from_slice(frame);
        write_tap(tap, stats, &self.single[..len]);
    }

    fn flush_gro(&mut self, tap: &Tap, nt: &crate::overlay::NetworkTable) {
        if let Some(out) = self.gro.finish() {
            write_tap(tap, &nt.stats, out);
        }
        self.gro_vni = None;
    }

    /// End of a wake-up: nothing may wait in the GRO buffer.
    fn flush(&mut self, taps: &TapSet, tables: &Tables) {
        let Some(vni) = self.gro_vni else {
            return;
        };
        let tap = taps.get(&vni);
        let nt = tables.network_by_vni(vni).map(|i| &tables.networks[i]);
        match (tap, nt) {
            (Some(tap), Some(nt)) => self.flush_gro(tap, nt),
            _ => {
                let _ = self.gro.finish();
                self.gro_vni = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(idle_ms: u64, running: bool) -> WorkerStatus {
        WorkerStatus {
            name: "w".into(),
            idle_ms,
            running,
        }
    }

    #[test]
    fn one_stuck_or_dead_worker_stops_the_watchdog() {
        let within = Duration::from_millis(500);
        assert!(all_turning(&[w(100, true), w(120, true)], within));
        assert!(!all_turning(&[w(100, true), w(900, true)], within), "stuck");
        assert!(!all_turning(&[w(100, true), w(0, false)], within), "exited");
        assert!(!all_turning(&[], within), "no worker is not healthy");
    }
}
