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
    /// Datagrams per flush of a [`TxBatch`] (one `sendmsg` with UDP GSO).
    tx_batches: BatchHistogram,
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

/// The batching histograms, for the status and `/metrics`.
pub struct Batches<'a> {
    /// Frames read from a TAP per wake-up.
    pub tap_reads: &'a BatchHistogram,
    /// Reads of the underlay socket per wake-up (each may hold several
    /// datagrams with UDP GRO).
    pub underlay_reads: &'a BatchHistogram,
    /// Datagrams per send to one peer (one `sendmsg` with UDP GSO).
    pub tx_datagrams: &'a BatchHistogram,
}

impl BatchHistogram {
    /// Mean per observation; 0 before the first.
    pub fn mean(&self) -> f64 {
        let (sum, count, _) = self.snapshot();
        if count == 0 {
            0.0
        } else {
            sum / count as f64
        }
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

/// What a worker thread and its owner share: written only by the worker
/// (apart from `stop`), so the counters cost no cache-line contention.
#[derive(Default)]
struct WorkerCtl {
    stop: AtomicBool,
    /// Milliseconds since `Shared::epoch` of the last loop turn.
    heartbeat: AtomicU64,
    /// Frames or datagrams read so far.
    reads: AtomicU64,
}

impl WorkerCtl {
    /// One turn of the loop: heartbeat, and the reads of the last wake-up
    /// into the batch histogram and the worker's own counter.
    fn turn(&self, sh: &Shared, hist: &BatchHistogram, got: usize) {
        self.heartbeat
            .store(sh.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if got > 0 {
            hist.observe(got);
            self.reads.fetch_add(got as u64, Ordering::Relaxed);
        }
    }
}

struct Worker {
    name: String,
    ctl: Arc<WorkerCtl>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(
        name: String,
        shared: &Arc<Shared>,
        body: impl FnOnce(Arc<Shared>, &WorkerCtl) + Send + 'static,
    ) -> io::Result<Worker> {
        let ctl = Arc::new(WorkerCtl::default());
        let (c, sh) = (ctl.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || body(sh, &c))?;
        Ok(Worker {
            name,
            ctl,
            handle: Some(handle),
        })
    }

    fn stop(&mut self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
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
    /// Frames (TAP workers) or datagrams (underlay workers) read so far.
    pub reads: u64,
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
    /// One per receiving underlay socket.
    udp: Vec<Worker>,
    /// One per queue of each network's TAP.
    taps: HashMap<u32, Vec<Worker>>,
}

impl Dataplane {
    /// Starts one worker per underlay socket and one per TAP queue.
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
            tx_batches: BatchHistogram::default(),
        });
        let gro_on = shared.underlay.enable_gro();
        tracing::info!(
            udp_gro = gro_on,
            gso = shared.underlay.gso(),
            receivers = shared.underlay.receivers(),
            "underlay offloads"
        );
        let udp = (0..shared.underlay.receivers())
            .map(|i| {
                Worker::spawn(format!("vxm-udp-{i}"), &shared, move |sh, ctl| {
                    underlay_loop(sh, i, ctl)
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
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
            for mut w in self.taps.remove(&vni).unwrap_or_default() {
                w.stop();
            }
        }
        for (vni, tap) in taps {
            if self.taps.contains_key(&vni) {
                continue;
            }
            let workers = (0..tap.queues())
                .map(|q| {
                    let tap = tap.clone();
                    let name = format!("vxm-tap-{vni}-{q}");
                    Worker::spawn(name, &self.shared, move |sh, ctl| {
                        tap_loop(sh, vni, &tap, q, ctl)
                    })
                })
                .collect::<io::Result<Vec<_>>>()?;
            self.taps.insert(vni, workers);
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
    pub fn batches(&self) -> Batches<'_> {
        Batches {
            tap_reads: &self.shared.tap_batches,
            underlay_reads: &self.shared.udp_batches,
            tx_datagrams: &self.shared.tx_batches,
        }
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
        self.udp
            .iter()
            .chain(self.taps.values().flatten())
            .map(|w| WorkerStatus {
                name: w.name.clone(),
                idle_ms: now.saturating_sub(w.ctl.heartbeat.load(Ordering::Relaxed)),
                running: w.handle.as_ref().is_some_and(|h| !h.is_finished()),
                reads: w.ctl.reads.load(Ordering::Relaxed),
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
        for w in &mut self.udp {
            w.stop();
        }
        for mut w in self.taps.drain().flat_map(|(_, ws)| ws) {
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

/// TAP -> underlay for queue `q` of one network's TAP.
///
/// Every frame of a wake-up goes through [`TxBatch`]: consecutive frames to
/// the same peer and flow (the segments of a TSO super-frame, a run of
/// same-sized UDP datagrams or ACKs) leave in one `sendmsg` with
/// UDP_SEGMENT, the rest one by one; what is queued leaves before anything
/// else does and at the end of the wake-up, so nothing is reordered or held.
fn tap_loop(sh: Arc<Shared>, vni: u32, tap: &Tap, q: usize, ctl: &WorkerCtl) {
    let vnet = tap.vnet_hdr();
    // The frame, or with a virtio-net header: [virtio-net header (10) | frame].
    let lead = if vnet { virtio::LEN } else { 0 };
    let mut buf = vec![0u8; lead + BUF_LEN];
    let mut reply = [0u8; arp::REPLY_LEN];
    let mut tx = TxBatch::new();
    let mut scratch = vec![0u8; BUF_LEN];
    let mut got = 0usize;
    while !ctl.stop.load(Ordering::Relaxed) {
        ctl.turn(&sh, &sh.tap_batches, std::mem::take(&mut got));
        if !wait_readable(&tap.fd(q)) {
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
            let n = match tap.recv(q, &mut buf) {
                Ok(n) => {
                    got += 1;
                    n
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
                        // A TSO super-frame: cut it here; the pieces queue
                        // up for one UDP GSO send to their peer.
                        let mss = usize::from(h.gso_size);
                        let cut = gso::segment_tcp(&buf[lead..n], mss, &mut scratch, |seg| {
                            tx.push(&sh, &tables, net, seg, &mut reply, now, (tap, q))
                        });
                        if cut.is_err() {
                            stats.drops.add(DropReason::Malformed);
                        }
                        continue;
                    }
                    _ => {
                        stats.drops.add(DropReason::Malformed);
                        continue;
                    }
                }
            }
            tx.push(&sh, &tables, net, &buf[lead..n], &mut reply, now, (tap, q));
        }
        tx.flush(&sh, nt);
    }
}

/// Encapsulated frames on their way to one peer, from one flow, laid out
/// back to back for a single UDP GSO send: every datagram but the last of
/// the same size, as UDP_SEGMENT requires.
struct TxBatch {
    buf: Vec<u8>,
    /// Length of every datagram but possibly the last.
    seg: usize,
    count: usize,
    dest: Option<(std::net::Ipv4Addr, u32)>,
    /// One flooded segment, encapsulated once and sent to every peer.
    flood: Vec<u8>,
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
            flood: Vec::with_capacity(BUF_LEN),
        }
    }

    /// Runs one segment through the core and queues, sends or floods it.
    /// `tables` is the snapshot of this wake-up, `net` the index of the
    /// TAP's network in it.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        sh: &Shared,
        tables: &Tables,
        net: usize,
        frame: &[u8],
        reply: &mut [u8; arp::REPLY_LEN],
        now: Instant,
        tap: (&Tap, usize),
    ) {
        let nt = &tables.networks[net];
        match sh.core.handle_frame(tables, net, frame, reply, now) {
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
                self.flood.clear();
                self.flood.resize(HEADROOM + frame.len(), 0);
                vxlan::write_header(&mut self.flood[..HEADROOM], vni);
                self.flood[HEADROOM..].copy_from_slice(frame);
                for (i, peer) in peers.iter().enumerate() {
                    send(
                        sh,
                        &nt.stats,
                        nt.peer_stats.get(i),
                        flow,
                        *peer,
                        &self.flood,
                    );
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
            sh.tx_batches.observe(self.count);
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
    tap: (&Tap, usize),
    stats: &crate::overlay::NetStats,
    reply: &mut [u8; arp::REPLY_LEN],
    len: usize,
) {
    if tap.0.vnet_hdr() {
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

/// Writes one frame into queue `tap.1` of TAP `tap.0`.
fn write_tap(tap: (&Tap, usize), stats: &crate::overlay::NetStats, frame: &[u8]) {
    match tap.0.send(tap.1, frame) {
        Ok(_) => {
            bump(&stats.tap_tx_packets, 1);
            bump(&stats.tap_tx_bytes, frame.len() as u64);
        }
        Err(_) => stats.drops.add(DropReason::TapError),
    }
}

/// Underlay -> TAPs, for every network, from receiving socket `i`; it
/// writes through TAP queue `i` (modulo the queue count).
fn underlay_loop(sh: Arc<Shared>, i: usize, ctl: &WorkerCtl) {
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
        gro_to: None,
        queue: i,
    };
    let mut got = 0usize;
    while !ctl.stop.load(Ordering::Relaxed) {
        ctl.turn(&sh, &sh.udp_batches, std::mem::take(&mut got));
        if !wait_readable(sh.underlay.rx(i)) {
            continue;
        }
        let tables = sh.tables.load();
        let taps = sh.taps.load();
        let now = Instant::now();
        for _ in 0..BATCH {
            let (n, src, stride) = match sh.underlay.recv(i, &mut buf[AT..], &mut cmsg) {
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
        rx.flush_gro();
    }
}

/// The receive side's buffers: one per job, owned by the worker.
struct Rx {
    /// One segment at a time when a super-frame is cut.
    seg: Vec<u8>,
    /// A frame with a virtio-net header put in front.
    single: Vec<u8>,
    gro: gro::Gro,
    /// Where the frame held in `gro` goes: its TAP and its network's
    /// counters (a run never spans two networks).
    gro_to: Option<(Arc<Tap>, Arc<crate::overlay::NetStats>)>,
    /// The TAP queue this worker writes through.
    queue: usize,
}

impl Rx {
    /// Writes one inner frame (or super-frame, `mss` given) into its TAP.
    fn deliver(
        &mut self,
        tap: &Arc<Tap>,
        nt: &crate::overlay::NetworkTable,
        inner: &mut [u8],
        mss: Option<usize>,
    ) {
        let stats = &nt.stats;
        let q = self.queue;
        if !tap.vnet_hdr() {
            match mss {
                None => write_tap((tap, q), stats, inner),
                Some(mss) => {
                    let cut = gso::segment_tcp(inner, mss, &mut self.seg, |s| {
                        write_tap((tap, q), stats, s)
                    });
                    if cut.is_err() {
                        stats.drops.add(DropReason::Malformed);
                    }
                }
            }
            return;
        }
        if let Some(mss) = mss {
            // A whole super-frame: into the TAP as one GSO frame.
            self.flush_gro();
            let Some(h) = gso::prepare_for_tap(inner, mss) else {
                stats.drops.add(DropReason::Malformed);
                return;
            };
            self.write_with(tap, stats, h, inner);
            return;
        }
        if self
            .gro_to
            .as_ref()
            .is_some_and(|(t, _)| !Arc::ptr_eq(t, tap))
        {
            self.flush_gro();
        }
        match self.gro.push(inner) {
            gro::Push::Joined => self.hold_for(tap, stats),
            gro::Push::Flush => {
                self.flush_gro();
                if self.gro.push(inner) == gro::Push::Joined {
                    self.hold_for(tap, stats);
                } else {
                    self.write_with(tap, stats, virtio::Header::default(), inner);
                }
            }
            gro::Push::Single => {
                self.flush_gro();
                self.write_with(tap, stats, virtio::Header::default(), inner);
            }
        }
    }

    /// Notes where the run now held in `gro` goes, when it just started.
    fn hold_for(&mut self, tap: &Arc<Tap>, stats: &Arc<crate::overlay::NetStats>) {
        if self.gro_to.is_none() {
            self.gro_to = Some((tap.clone(), stats.clone()));
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
        write_tap((tap, self.queue), stats, &self.single[..len]);
    }

    /// Writes out the run held in `gro`, into the TAP it belongs to. Called
    /// before anything else goes out and at the end of every wake-up, so
    /// nothing waits in the buffer.
    fn flush_gro(&mut self) {
        let out = self.gro.finish();
        if let (Some(out), Some((tap, stats))) = (out, self.gro_to.take()) {
            write_tap((&tap, self.queue), &stats, out);
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
            reads: 0,
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
