//! The live state of one service on one node: its tasks with their health
//! and counters, and the balancer over the tasks that take new connections.
//! The balancer is rebuilt off the hot path whenever the set of eligible
//! tasks changes and published with one pointer swap.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;
use tracing::info;

use super::balance::Balancer;
use super::health::{Health, HealthConfig, Ramp, State, Transition};
use super::limits::PerSource;
use super::maglev;
use super::spec::ServiceSpec;

/// Upper bounds (seconds) of the health-check duration histogram.
pub const PROBE_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A fixed-bucket histogram of durations (relaxed atomics): health probes
/// here, table applies in the control plane.
pub struct DurationHistogram {
    /// Upper bounds of the buckets, in seconds, ascending.
    bounds: &'static [f64],
    /// One count per bucket of `bounds`, then one for +Inf.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// A copy of a [`DurationHistogram`]: per-bucket (not cumulative) counts
/// with their upper bounds, the last one infinite.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl DurationHistogram {
    /// An empty histogram with these bucket upper bounds (seconds).
    pub fn new(bounds: &'static [f64]) -> DurationHistogram {
        DurationHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        HistogramSnapshot {
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
        }
    }
}

/// One backend task of a service.
pub struct Task {
    pub addr: Ipv4Addr,
    pub health: Mutex<Health>,
    /// Connections (TCP) or sessions (UDP) open now.
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Bytes from clients to the task, and back.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connect_failures: AtomicU64,
    pub ejections: AtomicU64,
    /// How long health checks of this task took.
    pub probe_duration: DurationHistogram,
    /// Set to true when the task's connections must be cut (drain time
    /// over, or the node stops); every connection to it watches this.
    pub cut: watch::Sender<bool>,
}

impl Task {
    fn new(addr: Ipv4Addr, cfg: HealthConfig, now: Instant) -> Task {
        Task {
            addr,
            health: Mutex::new(Health::new(cfg, now)),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            probe_duration: DurationHistogram::new(&PROBE_BUCKETS),
            cut: watch::channel(false).0,
        }
    }

    pub fn state(&self) -> State {
        self.health.lock().expect("health lock").state()
    }

    pub fn accepts_new(&self) -> bool {
        self.health.lock().expect("health lock").accepts_new()
    }
}

/// Counts an open connection for as long as it lives.
pub struct ActiveGuard(Arc<Task>);

impl ActiveGuard {
    pub fn new(task: Arc<Task>) -> ActiveGuard {
        task.active.fetch_add(1, Relaxed);
        task.total.fetch_add(1, Relaxed);
        ActiveGuard(task)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// The balancer and the tasks its indices refer to, with what each task's
/// health was when it was built (rebuilt on every health change): the
/// per-connection path reads only this, no lock.
pub struct Pick {
    pub balancer: Balancer,
    pub tasks: Vec<Arc<Task>>,
    /// Per task: its slow start, if one is under way.
    pub ramps: Vec<Option<Ramp>>,
}

/// One service's runtime.
pub struct Service {
    pub spec: ArcSwap<ServiceSpec>,
    /// Every task, including draining ones.
    pub tasks: Mutex<Vec<Arc<Task>>>,
    pub pick: ArcSwap<Pick>,
    /// Connections refused because no task could take them.
    pub no_backend: AtomicU64,
    /// Counter behind the slow-start draws.
    draws: AtomicU64,
    /// TCP connections (accepted) and UDP sessions open on this node.
    pub open_connections: AtomicU64,
    pub open_sessions: AtomicU64,
    /// Refused at the service's limits (max_connections, max_sessions).
    pub refused_connections: AtomicU64,
    pub refused_sessions: AtomicU64,
    /// What each client address holds (per-source caps).
    pub conn_sources: Arc<PerSource>,
    pub session_sources: Arc<PerSource>,
    /// Refused because the client address held its per-source cap.
    pub source_refused_connections: AtomicU64,
    pub source_refused_sessions: AtomicU64,
    /// Refused because the node's budget was spent.
    pub budget_refused_connections: AtomicU64,
    pub budget_refused_sessions: AtomicU64,
    /// Clients closed for sending nothing within `first_byte_timeout`.
    pub first_byte_timeouts: AtomicU64,
    /// Connections reset because a write stayed blocked `write_timeout`.
    pub write_timeouts: AtomicU64,
    /// The limit is being hit now (for one log line per change).
    at_limit: std::sync::atomic::AtomicBool,
    /// Tasks on other nodes reached through their node's relay (see
    /// [`super::relay`]), by task address: the relay's address.
    pub relays: ArcSwap<std::collections::HashMap<Ipv4Addr, std::net::SocketAddr>>,
    /// Connections that went through a relay.
    pub relayed_connections: AtomicU64,
}

fn health_config(spec: &ServiceSpec) -> HealthConfig {
    HealthConfig {
        rise: spec.health.rise.max(1),
        fall: spec.health.fall.max(1),
        slow_start: spec.slow_start,
        passive_failures: spec.health.passive_failures,
        ..HealthConfig::default()
    }
}

impl Service {
    /// A service with `tasks` (the ones this node may use).
    pub fn new(spec: ServiceSpec, tasks: &[Ipv4Addr]) -> Service {
        let now = Instant::now();
        let cfg = health_config(&spec);
        let list: Vec<Arc<Task>> = tasks
            .iter()
            .map(|a| Arc::new(Task::new(*a, cfg, now)))
            .collect();
        let s = Service {
            pick: ArcSwap::from_pointee(Pick {
                balancer: Balancer::new(spec.balance, Vec::new()),
                tasks: Vec::new(),
                ramps: Vec::new(),
            }),
            spec: ArcSwap::from_pointee(spec),
            tasks: Mutex::new(list),
            no_backend: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            open_sessions: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            refused_sessions: AtomicU64::new(0),
            conn_sources: Arc::default(),
            session_sources: Arc::default(),
            source_refused_connections: AtomicU64::new(0),
            source_refused_sessions: AtomicU64::new(0),
            budget_refused_connections: AtomicU64::new(0),
            budget_refused_sessions: AtomicU64::new(0),
            first_byte_timeouts: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            at_limit: std::sync::atomic::AtomicBool::new(false),
            relays: ArcSwap::default(),
            relayed_connections: AtomicU64::new(0),
        };
        s.rebuild();
        s
    }

    pub fn name(&self) -> String {
        self.spec.load().name.clone()
    }

    /// Rebuilds the balancer from the tasks that take new connections, in
    /// address order so that every node builds the same Maglev table.
    pub fn rebuild(&self) {
        let spec = self.spec.load();
        let mut eligible: Vec<(Arc<Task>, Option<Ramp>)> = self
            .tasks
            .lock()
            .expect("tasks lock")
            .iter()
            .filter_map(|t| {
                let h = t.health.lock().expect("health lock");
                h.accepts_new().then(|| (t.clone(), h.ramp()))
            })
            .collect();
        eligible.sort_by_key(|(t, _)| t.addr);
        let keys = eligible.iter().map(|(t, _)| t.addr.to_string()).collect();
        let (tasks, ramps) = eligible.into_iter().unzip();
        self.pick.store(Arc::new(Pick {
            balancer: Balancer::new(spec.balance, keys),
            tasks,
            ramps,
        }));
    }

    /// Applies a new spec and task list: new tasks join, removed tasks
    /// drain (no new connections; existing ones until they end or the drain
    /// time is over). Returns the tasks that started draining.
    pub fn update(&self, spec: ServiceSpec, tasks: &[Ipv4Addr]) -> Vec<Arc<Task>> {
        let now = Instant::now();
        let cfg = health_config(&spec);
        let drain = spec.drain;
        self.spec.store(Arc::new(spec));
        let mut draining = Vec::new();
        {
            let mut list = self.tasks.lock().expect("tasks lock");
            for t in list.iter() {
                if !tasks.contains(&t.addr) {
                    let mut h = t.health.lock().expect("health lock");
                    if h.state() != State::Draining {
                        h.drain(now, now + drain);
                        draining.push(t.clone());
                    }
                }
            }
            for a in tasks {
                if !list
                    .iter()
                    .any(|t| t.addr == *a && t.state() != State::Draining)
                {
                    list.retain(|t| t.addr != *a);
                    list.push(Arc::new(Task::new(*a, cfg, now)));
                }
            }
        }
        self.rebuild();
        draining
    }

    /// Forgets drained tasks whose last connection ended.
    pub fn reap(&self) {
        self.tasks
            .lock()
            .expect("tasks lock")
            .retain(|t| !(t.state() == State::Draining && t.active.load(Relaxed) == 0));
    }

    /// Records a health transition: log line and balancer rebuild.
    pub fn transition(&self, task: &Task, t: Transition) {
        info!(service = %self.name(), task = %task.addr, from = ?t.from, to = ?t.to, "task health changed");
        if t.to == State::Ejected {
            task.ejections.fetch_add(1, Relaxed);
        }
        self.rebuild();
    }

    /// Up to `out.len()` distinct tasks for a client, best first. Takes no
    /// lock, and reads the clock only while the first candidate is in slow
    /// start.
    pub fn candidates(&self, client: SocketAddr, out: &mut Vec<Arc<Task>>) {
        let pick = self.pick.load();
        let mut idx = [0usize; 3];
        let active = |i: usize| pick.tasks[i].active.load(Relaxed);
        let n = pick
            .balancer
            .candidates(maglev::client_hash(client.ip()), &active, &mut idx);
        out.clear();
        out.extend(idx[..n].iter().map(|i| pick.tasks[*i].clone()));
        // Slow start: a task that came up recently takes only its weight's
        // share of the connections that would go to it; the rest go to the
        // next candidate. The draw is a fixed hash of a per-service counter,
        // so it spreads evenly without a random source.
        let ramp = if out.len() > 1 {
            pick.ramps[idx[0]]
        } else {
            None
        };
        if let Some(ramp) = ramp {
            let w = ramp.weight(Instant::now());
            if w < 1.0 {
                let draw = self.draws.fetch_add(1, Relaxed);
                let x = crate::wire::flow::murmur3_32(&draw.to_le_bytes(), 0x736c_6f77);
                if f64::from(x) / f64::from(u32::MAX) >= w {
                    out.rotate_left(1);
                }
            }
        }
    }

    /// Logs when the service starts or stops hitting one of its limits: one
    /// line per change, never one per refused connection.
    pub fn note_limit(&self, hit: bool, what: &str, limit: u32) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.at_limit.swap(hit, SeqCst) != hit {
            if hit {
                tracing::warn!(service = %self.name(), what, limit, "limit reached: refusing more");
            } else {
                tracing::info!(service = %self.name(), what, limit, "back under the limit");
            }
        }
    }

    /// A connect to `task` succeeded or failed (passive health).
    pub fn observe_connect(&self, task: &Task, ok: bool) {
        if !ok {
            task.connect_failures.fetch_add(1, Relaxed);
        }
        let t = task
            .health
            .lock()
            .expect("health lock")
            .observe_connect(ok, Instant::now());
        if let Some(t) = t {
            self.transition(task, t);
        }
    }

    pub fn status(&self) -> ServiceStatus {
        let spec = self.spec.load();
        let tasks = self
            .tasks
            .lock()
            .expect("tasks lock")
            .iter()
            .map(|t| TaskStatus {
                addr: t.addr.to_string(),
                state: t.state(),
                active: t.active.load(Relaxed),
                total: t.total.load(Relaxed),
                bytes_in: t.bytes_in.load(Relaxed),
                bytes_out: t.bytes_out.load(Relaxed),
                connect_failures: t.connect_failures.load(Relaxed),
                ejections: t.ejections.load(Relaxed),
                probe_duration: t.probe_duration.snapshot(),
            })
            .collect();
        ServiceStatus {
            name: spec.name.clone(),
            network: spec.network.clone(),
            mode: spec.mode,
            balance: spec.balance,
            ports: spec.ports.clone(),
            proxy_protocol: spec.proxy_protocol,
            no_backend: self.no_backend.load(Relaxed),
            open_connections: self.open_connections.load(Relaxed),
            open_sessions: self.open_sessions.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
            refused_sessions: self.refused_sessions.load(Relaxed),
            source_refused_connections: self.source_refused_connections.load(Relaxed),
            source_refused_sessions: self.source_refused_sessions.load(Relaxed),
            budget_refused_connections: self.budget_refused_connections.load(Relaxed),
            budget_refused_sessions: self.budget_refused_sessions.load(Relaxed),
            first_byte_timeouts: self.first_byte_timeouts.load(Relaxed),
            write_timeouts: self.write_timeouts.load(Relaxed),
            relayed_connections: self.relayed_connections.load(Relaxed),
            tasks,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub addr: String,
    pub state: State,
    pub active: u64,
    pub total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect_failures: u64,
    pub ejections: u64,
    pub probe_duration: HistogramSnapshot,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub network: String,
    pub mode: super::spec::Mode,
    pub balance: super::balance::Algorithm,
    pub ports: Vec<super::spec::PortSpec>,
    pub proxy_protocol: bool,
    pub no_backend: u64,
    pub open_connections: u64,
    pub open_sessions: u64,
    /// Refused at `max_connections` / `max_sessions`.
    pub refused_connections: u64,
    pub refused_sessions: u64,
    /// Refused at `max_connections_per_source` / `max_sessions_per_source`.
    pub source_refused_connections: u64,
    pub source_refused_sessions: u64,
    /// Refused because the node's budget of descriptors or memory was spent.
    pub budget_refused_connections: u64,
    pub budget_refused_sessions: u64,
    pub first_byte_timeouts: u64,
    pub write_timeouts: u64,
    /// Connections relayed through a task node's relay (the underlay leg)
    /// rather than over the overlay.
    pub relayed_connections: u64,
    pub tasks: Vec<TaskStatus>,
}

/// Counts one open connection or session of a service while it lives.
pub struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    /// Takes a place under `limit` (0: none); `None` when full.
    pub fn take(counter: &'a AtomicU64, limit: u32) -> Option<OpenGuard<'a>> {
        let now = counter.fetch_add(1, Relaxed);
        if limit != 0 && now >= u64::from(limit) {
            counter.fetch_sub(1, Relaxed);
            return None;
        }
        Some(OpenGuard(counter))
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mesh::balance::Algorithm;
    use crate::mesh::spec::{EndpointMode, HealthSpec, Mode};
    use std::time::Duration;

    pub(crate) fn spec(slow_start: Duration) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            network: "front".into(),
            tasks: vec![],
            ports: vec![],
            balance: Algorithm::RoundRobin,
            health: HealthSpec::default(),
            mode: Mode::Ingress,
            proxy_protocol: false,
            drain: Duration::from_secs(30),
            slow_start,
            idle_timeout: Duration::from_secs(60),
            udp_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            endpoint_mode: EndpointMode::Vip,
            vip: None,
            max_connections: 0,
            max_sessions: 0,
            limits: Default::default(),
        }
    }

    /// Takes a task down and brings it back: it is then in slow start.
    fn bounce(svc: &Service, task: &Task) {
        let now = std::time::Instant::now();
        for ok in [false, false, true, true] {
            // The health lock must be released before `transition` takes it.
            let change = task.health.lock().unwrap().observe_probe(ok, now);
            if let Some(t) = change {
                svc.transition(task, t);
            }
        }
    }

    /// How many of 1000 new connections (distinct client ports) pick `task` first.
    fn picks_of(svc: &Service, task: Ipv4Addr) -> usize {
        let mut out = Vec::new();
        (0..1000u16)
            .filter(|&port| {
                svc.candidates(SocketAddr::from(([198, 18, 0, 100], port)), &mut out);
                out[0].addr == task
            })
            .count()
    }

    #[test]
    fn a_task_in_slow_start_gets_only_a_small_share_at_first() {
        let a = Ipv4Addr::new(10, 0, 9, 2);
        let b = Ipv4Addr::new(10, 0, 9, 3);
        let svc = Service::new(spec(Duration::from_secs(3600)), &[a, b]);
        let tb = svc
            .tasks
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.addr == b)
            .cloned()
            .unwrap();
        bounce(&svc, &tb);
        assert_eq!(tb.state(), State::SlowStart);
        let to_b = picks_of(&svc, b);
        // Weight is about 0 right after it came up: almost all go to `a`.
        assert!(to_b < 20, "{to_b} of 1000 went to the task in slow start");
    }

    #[test]
    fn without_slow_start_a_returning_task_takes_its_full_share() {
        let a = Ipv4Addr::new(10, 0, 9, 2);
        let b = Ipv4Addr::new(10, 0, 9, 3);
        let svc = Service::new(spec(Duration::ZERO), &[a, b]);
        let tb = svc
            .tasks
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.addr == b)
            .cloned()
            .unwrap();
        bounce(&svc, &tb);
        assert_eq!(tb.state(), State::Up);
        let to_b = picks_of(&svc, b);
        assert!((400..=600).contains(&to_b), "round robin: {to_b} of 1000");
    }

    #[test]
    fn with_every_task_down_there_is_no_candidate() {
        let svc = Service::new(
            spec(Duration::from_secs(3600)),
            &[Ipv4Addr::new(10, 0, 9, 2)],
        );
        let task = svc.tasks.lock().unwrap()[0].clone();
        let now = std::time::Instant::now();
        while task.state() != State::Down {
            let change = task.health.lock().unwrap().observe_probe(false, now);
            if let Some(t) = change {
                svc.transition(&task, t);
            }
        }
        let mut out = Vec::new();
        svc.candidates(SocketAddr::from(([198, 18, 0, 100], 1)), &mut out);
        assert!(out.is_empty());
        assert!(svc.pick.load().ramps.is_empty());
    }
}
