//! The worker threads and the [`Dataplane`] handle that owns them.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::lane::lane_loop;
pub use super::status::{
    all_turning, BatchHistogram, Batches, Offloads, WorkerStatus, BATCH_BUCKETS,
};
use super::tap::Tap;
use super::udp::Underlay;
use crate::overlay::{Core, Tables};

/// Most packets a worker handles per wake-up before it polls again.
pub const BATCH: usize = 64;
/// How long a worker sleeps in `poll` before it checks for a stop request
/// and beats its heartbeat.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// TAP devices by VNI, swapped together with the tables.
pub type TapSet = HashMap<u32, Arc<Tap>>;

pub(super) struct Shared {
    pub(super) tables: ArcSwap<Tables>,
    pub(super) taps: ArcSwap<TapSet>,
    /// Bumped with every new TAP set; lanes reload their poll list on a change.
    pub(super) taps_gen: AtomicU64,
    /// How long a lane polls without sleeping after its last packet.
    pub(super) busy_poll_us: AtomicU64,
    pub(super) core: Core,
    pub(super) underlay: Underlay,
    pub(super) epoch: Instant,
    /// Reads per wake-up, TAP side and underlay side.
    pub(super) tap_batches: BatchHistogram,
    pub(super) udp_batches: BatchHistogram,
    /// Datagrams per batch the TAP side sends to one peer (one `sendmsg`
    /// with UDP GSO).
    pub(super) tx_batches: BatchHistogram,
}

/// What a lane and its owner share: written only by the lane (apart from
/// `stop` and the kick), so the counters cost no cache-line contention.
pub(super) struct WorkerCtl {
    pub(super) stop: AtomicBool,
    /// Milliseconds since `Shared::epoch` of the last loop turn.
    pub(super) heartbeat: AtomicU64,
    /// Frames read from TAP queues so far.
    pub(super) tap_reads: AtomicU64,
    /// Underlay reads so far (each may hold several datagrams with UDP GRO).
    pub(super) underlay_reads: AtomicU64,
    /// Wakes the lane at once: a new TAP set, or a stop request.
    pub(super) kick: EventFd,
    /// The TAP-set generation the lane works with; the owner waits on it
    /// after a change so that no lane uses a TAP that went away.
    pub(super) seen: Mutex<u64>,
    pub(super) seen_cv: Condvar,
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
    pub(super) fn turn(&self, sh: &Shared, tap: usize, underlay: usize) {
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

    pub(super) fn saw(&self, generation: u64) {
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
    /// The key manager's thread and its stop flag (see `io::keys`).
    keys: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sh) = (stop.clone(), shared.clone());
        let keys = std::thread::Builder::new()
            .name("vxm-keys".into())
            .spawn(move || super::keys::key_loop(sh, st))?;
        let mut dp = Dataplane {
            shared,
            lanes,
            keys: Some((stop, keys)),
        };
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
        if let Some((stop, h)) = self.keys.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        self.shared.taps.store(Arc::new(TapSet::new()));
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}
