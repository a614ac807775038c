//! One lane's loop: poll, read, and hand every read to the pure pipeline
//! ([`crate::overlay::path`]), whose transmits and TAP writes come back
//! through [`Taps`] and [`Transmitter`] as syscalls on the lane's
//! descriptors. Nothing about packets is decided here.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::tap::Tap;
use super::worker::{Shared, TapSet, WorkerCtl, BATCH, TICK};
use crate::offload::virtio;
use crate::overlay::path::{
    RxPath, SendError, TapError, TapOffloads, Taps, Transmit, Transmitter, TxPath, BUF_LEN,
};
use crate::overlay::{DropReason, Tables};

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
pub(super) fn lane_loop(sh: Arc<Shared>, lane: usize, ctl: &WorkerCtl) {
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

/// TAP -> underlay: a lane's read buffer and its [`TxPath`].
struct TapSide {
    /// The frame, or with a virtio-net header: [virtio-net header (10) | frame].
    buf: Vec<u8>,
    path: TxPath,
}

impl TapSide {
    fn new() -> TapSide {
        TapSide {
            buf: vec![0u8; virtio::LEN + BUF_LEN],
            path: TxPath::default(),
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
        let lead = if tap.vnet_hdr() { virtio::LEN } else { 0 };
        let mut io = TapQueue { sh, tap, vni, q };
        let mut got = 0;
        for _ in 0..BATCH {
            let n = match tap.recv(q, &mut self.buf[..lead + BUF_LEN]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    tables.networks[net].stats.drops.add(DropReason::TapError);
                    break;
                }
            };
            got += 1;
            let _ = self
                .path
                .frame(&sh.core, tables, net, &mut self.buf[..n], now, &mut io);
        }
        self.path.flush(tables, &mut io);
        got
    }
}

fn offloads(tap: &Tap) -> TapOffloads {
    TapOffloads {
        vnet_hdr: tap.vnet_hdr(),
        uso_write: tap.uso_write(),
    }
}

fn tap_error(e: io::Error) -> TapError {
    if e.raw_os_error() == Some(libc::EINVAL) {
        TapError::Refused
    } else {
        TapError::Failed
    }
}

/// The TAP side's syscalls: queue `q` of network `vni`'s TAP (ARP replies)
/// and the underlay socket.
struct TapQueue<'a> {
    sh: &'a Shared,
    tap: &'a Tap,
    vni: u32,
    q: usize,
}

impl Taps for TapQueue<'_> {
    fn offloads(&self, vni: u32) -> Option<TapOffloads> {
        (vni == self.vni).then(|| offloads(self.tap))
    }

    fn write(&mut self, _vni: u32, frame: &[u8]) -> Result<(), TapError> {
        self.tap.send(self.q, frame).map(drop).map_err(tap_error)
    }

    fn refuse_uso_write(&mut self, _vni: u32) {
        self.tap.refuse_uso_write();
    }
}

impl Transmitter for TapQueue<'_> {
    fn transmit(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        let ul = &self.sh.underlay;
        if let Some(seg) = t.segment_size {
            self.sh.tx_batches.observe(t.segments());
            if t.segments() > 1 {
                return ul
                    .send_gso(t.flow, t.peer, t.contents, seg)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::Unsupported => SendError::NoGso,
                        _ => SendError::Failed,
                    });
            }
        }
        ul.send(t.flow, t.peer, t.contents)
            .map(drop)
            .map_err(|_| SendError::Failed)
    }
}

/// Underlay -> TAPs: a lane's read buffer for its underlay socket and its
/// [`RxPath`]; it writes through TAP queue `lane` (modulo the TAP's queue
/// count).
struct UnderlaySide {
    lane: usize,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
    path: RxPath,
}

impl UnderlaySide {
    fn new(lane: usize) -> UnderlaySide {
        UnderlaySide {
            lane,
            buf: vec![0u8; BUF_LEN],
            cmsg: nix::cmsg_space!(libc::c_int),
            path: RxPath::default(),
        }
    }

    /// Makes up to [`BATCH`] reads of the lane's socket and delivers what
    /// they hold; returns how many reads it made.
    fn turn(&mut self, sh: &Shared, tables: &Tables, taps: &TapSet, now: Instant) -> usize {
        let mut io = LaneTaps {
            all: taps,
            q: self.lane,
        };
        let mut got = 0;
        for _ in 0..BATCH {
            let Ok((n, src, stride)) = sh.underlay.recv(self.lane, &mut self.buf, &mut self.cmsg)
            else {
                break;
            };
            got += 1;
            let d = &mut self.buf[..n];
            let _ = self
                .path
                .read(&sh.core, tables, src, d, stride, now, &mut io);
        }
        self.path.flush(tables, &mut io);
        got
    }
}

/// The underlay side's TAP writes: queue `q` of every network's TAP.
struct LaneTaps<'a> {
    all: &'a TapSet,
    q: usize,
}

impl Taps for LaneTaps<'_> {
    fn offloads(&self, vni: u32) -> Option<TapOffloads> {
        self.all.get(&vni).map(|t| offloads(t))
    }

    fn write(&mut self, vni: u32, frame: &[u8]) -> Result<(), TapError> {
        let tap = self.all.get(&vni).ok_or(TapError::Failed)?;
        tap.send(self.q, frame).map(drop).map_err(tap_error)
    }

    fn refuse_uso_write(&mut self, vni: u32) {
        if let Some(t) = self.all.get(&vni) {
            t.refuse_uso_write();
        }
    }
}
