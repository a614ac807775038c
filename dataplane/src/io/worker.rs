//! The worker threads and the [`Dataplane`] handle that owns them.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::tap::Tap;
use super::udp::Underlay;
use crate::offload::{gro, gso, virtio};
use crate::overlay::stats::{bump, PeerStats};
use crate::overlay::{Core, DropReason, Tables, Verdict};
use crate::wire::{arp, vxlan};

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
    /// Bumped with every new TAP set; lanes reload their poll list on a change.
    taps_gen: AtomicU64,
    /// How long a lane polls without sleeping after its last packet.
    busy_poll_us: AtomicU64,
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
    /// Every TAP hands over UDP super-frames (USO), cut here.
    pub tap_uso: bool,
    /// Every TAP takes runs of UDP datagrams as one UDP GSO frame.
    pub tap_uso_write: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

/// What a lane and its owner share: written only by the lane (apart from
/// `stop` and the kick), so the counters cost no cache-line contention.
struct WorkerCtl {
    stop: AtomicBool,
    /// Milliseconds since `Shared::epoch` of the last loop turn.
    heartbeat: AtomicU64,
    /// Frames read from TAP queues so far.
    tap_reads: AtomicU64,
    /// Underlay reads so far (each may hold several datagrams with UDP GRO).
    underlay_reads: AtomicU64,
    /// Wakes the lane at once: a new TAP set, or a stop request.
    kick: EventFd,
    /// The TAP-set generation the lane works with; the owner waits on it
    /// after a change so that no lane uses a TAP that went away.
    seen: Mutex<u64>,
    seen_cv: Condvar,
}

impl WorkerCtl {
    fn new() -> io::Result<WorkerCtl> {
        Ok(WorkerCtl {
            stop: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            tap_reads: AtomicU64::new(0),
            underlay_reads: AtomicU64::new(0),
            kick: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(io::Error::from)?,
            seen: Mutex::new(0),
            seen_cv: Condvar::new(),
        })
    }

    fn kick(&self) {
        let _ = self.kick.write(1);
    }

    /// One turn of the loop: heartbeat, and what it read into the batch
    /// histograms and the lane's own counters.
    fn turn(&self, sh: &Shared, tap: usize, underlay: usize) {
        self.heartbeat
            .store(sh.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if tap > 0 {
            sh.tap_batches.observe(tap);
            self.tap_reads.fetch_add(tap as u64, Ordering::Relaxed);
        }
        if underlay > 0 {
            sh.udp_batches.observe(underlay);
            self.underlay_reads
                .fetch_add(underlay as u64, Ordering::Relaxed);
        }
    }

    fn saw(&self, generation: u64) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = generation;
        self.seen_cv.notify_all();
    }
}

struct Worker {
    name: String,
    ctl: Arc<WorkerCtl>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(name: String, shared: &Arc<Shared>, lane: usize) -> io::Result<Worker> {
        let ctl = Arc::new(WorkerCtl::new()?);
        let (c, sh) = (ctl.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || lane_loop(sh, lane, &c))?;
        Ok(Worker {
            name,
            ctl,
            handle: Some(handle),
        })
    }

    /// Waits (at most `within`) until the lane works with TAP-set
    /// generation `generation` or later; false if it did not get there.
    fn wait_for(&self, generation: u64, within: Duration) -> bool {
        let seen = self.ctl.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, _) = self
            .ctl
            .seen_cv
            .wait_timeout_while(seen, within, |g| {
                *g < generation && self.handle.as_ref().is_some_and(|h| !h.is_finished())
            })
            .unwrap_or_else(|e| e.into_inner());
        *seen >= generation
    }

    fn stop(&mut self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        self.ctl.kick();
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
    /// Frames read from TAP queues so far.
    pub tap_reads: u64,
    /// Underlay reads so far.
    pub underlay_reads: u64,
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

/// The running packet path of one node: one lane per receiving underlay
/// socket, lane `i` serving that socket and queue `i` of every network's
/// TAP, in both directions.
///
/// Why one thread for both directions of a queue, and not a TAP worker and
/// an underlay worker: a request and its answer then cost one thread
/// wake-up on each node instead of two. The answer to a frame written
/// into TAP queue `i` comes back on queue `i` (the kernel's tun flow table
/// remembers the queue a flow was written through), usually within the
/// write itself (a ping is answered in the syscall that delivers it), so the
/// lane finds it on its next turn without sleeping. On a VM a wake-up of an
/// idle vCPU costs tens of microseconds; this halves them per round trip.
pub struct Dataplane {
    shared: Arc<Shared>,
    lanes: Vec<Worker>,
}

/// How long [`Dataplane::apply`] waits for every lane to take a new TAP set
/// up (a lane answers its kick within one turn: a batch of 64 reads per
/// side).
const APPLY_WAIT: Duration = Duration::from_secs(2);

impl Dataplane {
    /// Starts one lane per underlay socket.
    pub fn start(
        underlay: Underlay,
        core: Core,
        tables: Tables,
        taps: TapSet,
    ) -> io::Result<Dataplane> {
        let shared = Arc::new(Shared {
            tables: ArcSwap::from_pointee(tables),
            taps: ArcSwap::from_pointee(TapSet::new()),
            taps_gen: AtomicU64::new(0),
            busy_poll_us: AtomicU64::new(0),
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
            lanes = shared.underlay.receivers(),
            "underlay offloads"
        );
        let lanes = (0..shared.underlay.receivers())
            .map(|i| Worker::spawn(format!("vxm-lane-{i}"), &shared, i))
            .collect::<io::Result<Vec<_>>>()?;
        let mut dp = Dataplane { shared, lanes };
        dp.set_taps(taps)?;
        Ok(dp)
    }

    /// Publishes a new snapshot and TAP set. Returns once every lane works
    /// with the new set: a TAP that went away is then no longer read or
    /// written, and closes when the caller drops its last handle.
    pub fn apply(&mut self, tables: Tables, taps: TapSet) -> io::Result<()> {
        self.shared.tables.store(Arc::new(tables));
        self.set_taps(taps)
    }

    fn set_taps(&mut self, taps: TapSet) -> io::Result<()> {
        let same = {
            let cur = self.shared.taps.load();
            cur.len() == taps.len()
                && taps
                    .iter()
                    .all(|(v, t)| cur.get(v).is_some_and(|c| Arc::ptr_eq(c, t)))
        };
        if same {
            return Ok(());
        }
        self.shared.taps.store(Arc::new(taps));
        let generation = self.shared.taps_gen.fetch_add(1, Ordering::AcqRel) + 1;
        for l in &self.lanes {
            l.ctl.kick();
        }
        for l in &self.lanes {
            if !l.wait_for(generation, APPLY_WAIT) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not take the new TAP set up", l.name),
                ));
            }
        }
        Ok(())
    }

    /// How long a lane keeps polling without sleeping after its last
    /// packet: 0 sleeps at once. Takes effect at the lanes' next turn.
    pub fn set_busy_poll(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.shared.busy_poll_us.store(us, Ordering::Relaxed);
    }

    /// The busy-poll budget in force.
    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.shared.busy_poll_us.load(Ordering::Relaxed))
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

    /// Reads per turn of the lanes, TAP side and underlay side.
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
            tap_uso: !taps.is_empty() && taps.values().all(|t| t.uso()),
            tap_uso_write: !taps.is_empty() && taps.values().all(|t| t.uso_write()),
            udp_gso: self.shared.underlay.gso(),
            udp_gro: self.shared.underlay.gro(),
        }
    }

    /// One entry per lane.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        self.lanes
            .iter()
            .map(|w| WorkerStatus {
                name: w.name.clone(),
                idle_ms: now.saturating_sub(w.ctl.heartbeat.load(Ordering::Relaxed)),
                running: w.handle.as_ref().is_some_and(|h| !h.is_finished()),
                tap_reads: w.ctl.tap_reads.load(Ordering::Relaxed),
                underlay_reads: w.ctl.underlay_reads.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// True when every worker went round its loop within `within`: the
    /// systemd watchdog is fed only while this holds.
    pub fn healthy(&self, within: Duration) -> bool {
        all_turning(&self.workers(), within)
    }

    /// Stops every lane; the TAPs close when the last handle goes.
    pub fn stop(&mut self) {
        for w in &mut self.lanes {
            w.stop();
        }
        self.lanes.clear();
        self.shared.taps.store(Arc::new(TapSet::new()));
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One lane's poll list: its kick, its underlay socket, then queue `lane`
/// of each TAP that has one (a TAP with fewer queues than lanes is read
/// only by the lanes whose queue exists, so a flow is never read by two).
struct Sources {
    generation: u64,
    /// Every TAP by VNI: where datagrams from the underlay are written.
    all: Arc<TapSet>,
    /// (VNI, TAP) that have queue `lane`, in VNI order: what the lane reads.
    taps: Vec<(u32, Arc<Tap>)>,
}

impl Sources {
    fn load(sh: &Shared, lane: usize) -> Sources {
        // The generation first: `set_taps` bumps it after storing the set,
        // so the set read here is at least that new.
        let generation = sh.taps_gen.load(Ordering::Acquire);
        let all = sh.taps.load_full();
        let mut taps: Vec<(u32, Arc<Tap>)> = all
            .iter()
            .filter(|(_, t)| lane < t.queues())
            .map(|(v, t)| (*v, t.clone()))
            .collect();
        taps.sort_by_key(|(v, _)| *v);
        Sources {
            generation,
            all,
            taps,
        }
    }
}

/// The lane loop. Each turn polls the kick, the underlay socket and the
/// lane's TAP queues, then handles up to [`BATCH`] reads on each side that
/// is ready: the underlay first (answers to what went out), then the TAPs.
/// After a turn that found work the next poll does not wait (what was just
/// delivered is often answered at once); after an idle turn the lane keeps
/// polling without sleeping while the busy-poll budget since its last
/// packet lasts (yielding the CPU between polls), then sleeps in `poll`
/// until something arrives or [`TICK`] passes.
fn lane_loop(sh: Arc<Shared>, lane: usize, ctl: &WorkerCtl) {
    let mut to_udp = TapSide::new();
    let mut to_tap = UnderlaySide::new(lane);
    let mut last_work = Instant::now();
    let mut worked = false;
    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
    while !ctl.stop.load(Ordering::Relaxed) {
        // A TAP set and its poll list, kept until the set changes.
        let src = Sources::load(&sh, lane);
        ctl.saw(src.generation);
        let mut fds = Vec::with_capacity(2 + src.taps.len());
        fds.push(PollFd::new(ctl.kick.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(sh.underlay.rx(lane).as_fd(), PollFlags::POLLIN));
        for (_, t) in &src.taps {
            fds.push(PollFd::new(t.fd(lane), PollFlags::POLLIN));
        }
        while !ctl.stop.load(Ordering::Relaxed)
            && sh.taps_gen.load(Ordering::Acquire) == src.generation
        {
            let budget = Duration::from_micros(sh.busy_poll_us.load(Ordering::Relaxed));
            let spinning = !worked && last_work.elapsed() < budget;
            let timeout = if worked || spinning {
                PollTimeout::ZERO
            } else {
                PollTimeout::from(TICK.as_millis() as u16)
            };
            let (mut tap_reads, mut udp_reads) = (0, 0);
            if matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
                if ready(&fds[0]) {
                    let _ = ctl.kick.read();
                }
                let tables = sh.tables.load();
                let now = Instant::now();
                if ready(&fds[1]) {
                    udp_reads = to_tap.turn(&sh, &tables, &src.all, now);
                }
                for (k, (vni, tap)) in src.taps.iter().enumerate() {
                    if ready(&fds[2 + k]) {
                        tap_reads += to_udp.turn(&sh, &tables, *vni, tap, lane, now);
                    }
                }
            }
            ctl.turn(&sh, tap_reads, udp_reads);
            worked = tap_reads + udp_reads > 0;
            if worked {
                last_work = Instant::now();
            } else if spinning {
                std::thread::yield_now();
            }
        }
    }
}

/// TAP -> underlay: a lane's buffers for frames read from its TAP queues.
///
/// Every frame of a turn goes through [`TxBatch`]: consecutive frames to
/// the same peer and flow (the segments of a TSO super-frame, a run of
/// same-sized UDP datagrams or ACKs) leave in one `sendmsg` with
/// UDP_SEGMENT, the rest one by one; what is queued leaves before anything
/// else does and at the end of the turn, so nothing is reordered or held.
struct TapSide {
    /// The frame, or with a virtio-net header: [virtio-net header (10) | frame].
    buf: Vec<u8>,
    reply: [u8; arp::REPLY_LEN],
    tx: TxBatch,
    scratch: Vec<u8>,
}

impl TapSide {
    fn new() -> TapSide {
        TapSide {
            buf: vec![0u8; virtio::LEN + BUF_LEN],
            reply: [0u8; arp::REPLY_LEN],
            tx: TxBatch::new(),
            scratch: vec![0u8; BUF_LEN],
        }
    }

    /// Reads up to [`BATCH`] frames from queue `q` of network `vni`'s TAP
    /// and sends them on; returns how many were read.
    fn turn(
        &mut self,
        sh: &Shared,
        tables: &Tables,
        vni: u32,
        tap: &Tap,
        q: usize,
        now: Instant,
    ) -> usize {
        let Some(net) = tables.network_by_vni(vni) else {
            return 0;
        };
        let nt = &tables.networks[net];
        let stats = &nt.stats;
        let vnet = tap.vnet_hdr();
        let lead = if vnet { virtio::LEN } else { 0 };
        let (buf, reply, tx) = (&mut self.buf, &mut self.reply, &mut self.tx);
        let mut got = 0;
        for _ in 0..BATCH {
            let n = match tap.recv(q, &mut buf[..lead + BUF_LEN]) {
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
                    gso_type @ (virtio::GSO_TCPV4 | virtio::GSO_TCPV6 | virtio::GSO_UDP_L4) => {
                        // A TSO or USO super-frame: cut it here; the pieces
                        // queue up for one UDP GSO send to their peer.
                        let (frame, mss) = (&buf[lead..n], usize::from(h.gso_size));
                        let emit = |seg: &[u8]| tx.push(sh, tables, net, seg, reply, now, (tap, q));
                        let cut = if gso_type == virtio::GSO_UDP_L4 {
                            gso::segment_udp(frame, mss, &mut self.scratch, emit)
                        } else {
                            gso::segment_tcp(frame, mss, &mut self.scratch, emit)
                        };
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
            tx.push(sh, tables, net, &buf[lead..n], reply, now, (tap, q));
        }
        tx.flush(sh, nt);
        got
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

/// Writes one frame into queue `tap.1` of TAP `tap.0`, counting it or
/// its drop.
fn write_tap(tap: (&Tap, usize), stats: &crate::overlay::NetStats, frame: &[u8]) {
    if send_tap(tap, stats, frame).is_err() {
        stats.drops.add(DropReason::TapError);
    }
}

/// Like [`write_tap`], but hands the error back uncounted, for a caller
/// that can still deliver the frame another way.
fn send_tap(tap: (&Tap, usize), stats: &crate::overlay::NetStats, frame: &[u8]) -> io::Result<()> {
    tap.0.send(tap.1, frame)?;
    bump(&stats.tap_tx_packets, 1);
    bump(&stats.tap_tx_bytes, frame.len() as u64);
    Ok(())
}

/// Writes `frame` with virtio-net header `h` in front, built in `single`.
fn write_with(
    single: &mut [u8],
    tap: (&Tap, usize),
    stats: &crate::overlay::NetStats,
    h: virtio::Header,
    frame: &[u8],
) {
    let len = virtio::LEN + frame.len();
    if len > single.len() {
        stats.drops.add(DropReason::Mtu);
        return;
    }
    h.emit(&mut single[..virtio::LEN]);
    single[virtio::LEN..len].copy_from_slice(frame);
    write_tap(tap, stats, &single[..len]);
}

/// Underlay -> TAPs: a lane's buffers for datagrams read from its
/// underlay socket, for every network; it writes through TAP queue `lane`
/// (modulo the TAP's queue count).
struct UnderlaySide {
    lane: usize,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
    rx: Rx,
}

/// Datagrams land at offset 2, so that the 8-byte VXLAN header plus these
/// 2 bytes give room for a 10-byte virtio-net header right in front of the
/// inner frame. With UDP_GRO a read may hold a run of datagrams; each is
/// handled at its own offset, so the room exists only for the first: the
/// others go through `Rx::deliver`'s copies (GRO or segments).
const AT: usize = virtio::LEN - vxlan::HEADER_LEN;

impl UnderlaySide {
    fn new(lane: usize) -> UnderlaySide {
        UnderlaySide {
            lane,
            buf: vec![0u8; AT + BUF_LEN],
            cmsg: nix::cmsg_space!(libc::c_int),
            rx: Rx {
                seg: vec![0u8; BUF_LEN],
                single: vec![0u8; BUF_LEN + virtio::LEN],
                gro: gro::Gro::default(),
                gro_to: None,
                queue: lane,
            },
        }
    }

    /// Makes up to [`BATCH`] reads of the lane's socket and delivers what
    /// they hold; returns how many reads it made.
    fn turn(&mut self, sh: &Shared, tables: &Tables, taps: &TapSet, now: Instant) -> usize {
        let buf = &mut self.buf;
        let mut got = 0;
        for _ in 0..BATCH {
            let (n, src, stride) = match sh.underlay.recv(self.lane, &mut buf[AT..], &mut self.cmsg)
            {
                Ok(r) => {
                    got += 1;
                    r
                }
                Err(_) => break,
            };
            let stride = stride.unwrap_or(n).max(1);
            let mut off = AT;
            while off < AT + n {
                let end = (off + stride).min(AT + n);
                let verdict = sh
                    .core
                    .handle_datagram(tables, src, &mut buf[off..end], now);
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
                            self.rx
                                .deliver(tap, nt, &mut buf[off + vxlan::HEADER_LEN..end], mss)
                        }
                        None => nt.stats.drops.add(DropReason::TapError),
                    }
                }
                off = end;
            }
        }
        self.rx.flush_gro();
        got
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
        self.gro.udp_runs = tap.uso_write();
        match self.gro.push(inner) {
            gro::Push::Joined => self.hold_for(tap, stats),
            gro::Push::Flush => {
                self.flush_gro();
                if self.gro.restart(inner) == gro::Push::Joined {
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
        write_with(&mut self.single, (tap, self.queue), stats, h, frame);
    }

    /// Writes out the run held in `gro`, into the TAP it belongs to. Called
    /// before anything else goes out and at the end of every wake-up, so
    /// nothing waits in the buffer.
    ///
    /// A UDP GSO frame that the kernel refuses (older than 6.2) is cut here
    /// and written datagram by datagram, and the TAP gets no more of them.
    fn flush_gro(&mut self) {
        let udp_run = self.gro.udp_run();
        let out = self.gro.finish();
        let (Some(out), Some((tap, stats))) = (out, self.gro_to.take()) else {
            return;
        };
        let to = (&*tap, self.queue);
        match send_tap(to, &stats, out) {
            Ok(()) => {}
            Err(e) if udp_run && e.raw_os_error() == Some(libc::EINVAL) => {
                tap.refuse_uso_write();
                let mss = virtio::Header::parse(out).map_or(0, |h| usize::from(h.gso_size));
                let single = &mut self.single;
                let cut = gso::segment_udp(&out[virtio::LEN..], mss, &mut self.seg, |d| {
                    write_with(single, to, &stats, virtio::Header::default(), d)
                });
                if cut.is_err() {
                    stats.drops.add(DropReason::Malformed);
                }
            }
            Err(_) => stats.drops.add(DropReason::TapError),
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
            tap_reads: 0,
            underlay_reads: 0,
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
