//! The health of one backend task, as a pure state machine.
//!
//! The async probe (in `probe`) and the connection path only report what
//! they saw: [`Health::observe_probe`] for an active probe's verdict,
//! [`Health::observe_connect`] for each connect to the task (passive health),
//! [`Health::tick`] when [`Health::next_deadline`] passes, and
//! [`Health::drain`] when the task leaves the configuration. Each call takes
//! the time as an argument and returns the [`Transition`] it caused, if any,
//! so the caller logs one line per state change and rebuilds the balancer.
//! Nothing here reads a clock, does I/O or panics.
//!
//! ```text
//!         fall failed probes        rise good probes
//!   Up ------------------------> Down ----------------> SlowStart --(slow_start)--> Up
//!   SlowStart -----------------> Down     (or straight to Up when slow_start = 0)
//!   Up, SlowStart --(passive_failures failed connects)--> Ejected
//!   Ejected --(eject_for elapsed, then rise good probes)--> SlowStart / Up
//!   any --(drain)--> Draining (terminal)
//! ```
//!
//! Hysteresis: a state changes only after `rise` (or `fall`) *consecutive*
//! probe results pointing the same way; one result the other way resets the
//! count, so a flapping task keeps its state. Every transition resets all
//! counters.

use std::time::{Duration, Instant};

/// Thresholds and times of the health state machine. `rise` and `fall`
/// below 1 act as 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Consecutive good probes that bring a Down (or Ejected) task back.
    pub rise: u32,
    /// Consecutive failed probes that take an Up (or SlowStart) task Down.
    pub fall: u32,
    /// How long a recovered task ramps its weight from 0 to 1; zero skips
    /// slow start.
    pub slow_start: Duration,
    /// Consecutive connect failures that eject a task; 0 turns passive
    /// ejection off.
    pub passive_failures: u32,
    /// How long a passively ejected task stays out before probes may bring
    /// it back.
    pub eject_for: Duration,
}

impl Default for HealthConfig {
    /// rise 2, fall 2, no slow start, ejection after 3 failed connects for
    /// 10 s.
    fn default() -> HealthConfig {
        HealthConfig {
            rise: 2,
            fall: 2,
            slow_start: Duration::ZERO,
            passive_failures: 3,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// Where a task stands. Only [`State::Up`] and [`State::SlowStart`] accept
/// new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Healthy: gets new connections at full weight.
    Up,
    /// `fall` consecutive probes failed: no new connections until `rise`
    /// consecutive probes succeed.
    Down,
    /// Recovered and warming up: gets new connections with a weight that
    /// grows linearly from 0 to 1 across `slow_start`, then becomes Up.
    SlowStart,
    /// Removed from the configuration or being stopped: gets no new
    /// connections; existing ones continue until they end or the drain
    /// deadline passes. Terminal: probes are ignored, and a task that comes
    /// back gets a fresh [`Health`].
    Draining,
    /// Passive ejection: `passive_failures` consecutive connects failed. No
    /// new connections for `eject_for`; after that, `rise` good probes bring
    /// it back.
    Ejected,
}

impl State {
    /// Whether a task in this state gets new connections.
    pub fn accepts_new(self) -> bool {
        matches!(self, State::Up | State::SlowStart)
    }
}

/// A state change, returned by the call that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

/// The health of one backend task.
#[derive(Clone, Debug)]
pub struct Health {
    cfg: HealthConfig,
    state: State,
    /// When the current state was entered (slow start ramp, ejection time).
    since: Instant,
    good_probes: u32,
    bad_probes: u32,
    bad_connects: u32,
    drain_deadline: Option<Instant>,
}

/// A slow start: the weight grows linearly from 0 at `since` to 1 at
/// `since + length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ramp {
    pub since: Instant,
    pub length: Duration,
}

impl Ramp {
    /// The weight at `now`, 0.0 to 1.0.
    pub fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.since).as_secs_f64();
        (elapsed / self.length.as_secs_f64()).clamp(0.0, 1.0)
    }
}

impl Health {
    /// A freshly configured task starts **Up**: it gets traffic at once, and
    /// the first `fall` failed probes take it out.
    ///
    /// Why not Down until `rise` probes pass: the control plane adds a task
    /// only once its container runs (and, with a Docker HEALTHCHECK, is
    /// healthy), as Docker's own routing mesh does; starting Down would add
    /// `rise` probe intervals to every deployment and scale-up, and would
    /// lose all traffic on a daemon restart until probes come back. A task
    /// that is not ready is caught by the first `fall` probes, or sooner by
    /// passive ejection. Slow start is not applied at creation (as in
    /// HAProxy and nginx, it applies to a task coming back): a whole service
    /// created at once would otherwise start with every weight at 0.
    pub fn new(cfg: HealthConfig, now: Instant) -> Health {
        Health {
            cfg,
            state: State::Up,
            since: now,
            good_probes: 0,
            bad_probes: 0,
            bad_connects: 0,
            drain_deadline: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration this machine runs with.
    pub fn config(&self) -> HealthConfig {
        self.cfg
    }

    /// Whether the task gets new connections (Up or SlowStart).
    pub fn accepts_new(&self) -> bool {
        self.state.accepts_new()
    }

    /// The deadline given to [`Health::drain`], while draining.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline
    }

    /// While ejected, when probes start to count again.
    pub fn ejected_until(&self) -> Option<Instant> {
        match self.state {
            State::Ejected => self.since.checked_add(self.cfg.eject_for),
            _ => None,
        }
    }

    /// The slow start under way: SlowStart with a non-zero `slow_start`.
    pub fn ramp(&self) -> Option<Ramp> {
        (self.state == State::SlowStart && !self.cfg.slow_start.is_zero()).then_some(Ramp {
            since: self.since,
            length: self.cfg.slow_start,
        })
    }

    /// The balancing weight at `now`: 0.0 when not accepting new
    /// connections, `elapsed / slow_start` (0.0 to 1.0) during slow start,
    /// 1.0 when Up.
    pub fn weight(&self, now: Instant) -> f64 {
        match self.state {
            State::Up => 1.0,
            State::SlowStart => self.ramp().map_or(1.0, |r| r.weight(now)),
            State::Down | State::Draining | State::Ejected => 0.0,
        }
    }

    /// When the caller must act next without an event: the end of slow
    /// start (call [`Health::tick`]) or the drain deadline (cut the
    /// remaining connections). `None` otherwise.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::SlowStart => self.since.checked_add(self.cfg.slow_start),
            State::Draining => self.drain_deadline,
            State::Up | State::Down | State::Ejected => None,
        }
    }

    /// An active probe's verdict. `fall` consecutive failures take Up or
    /// SlowStart to Down; `rise` consecutive successes take Down, or Ejected
    /// once `eject_for` has elapsed, to SlowStart (Up if `slow_start` is
    /// zero). Probes while ejected and before `eject_for` are not counted;
    /// a draining task ignores probes.
    pub fn observe_probe(&mut self, ok: bool, now: Instant) -> Option<Transition> {
        match self.state {
            State::Draining => return None,
            State::Ejected if now.saturating_duration_since(self.since) < self.cfg.eject_for => {
                return None;
            }
            _ => {}
        }
        if ok {
            self.good_probes = self.good_probes.saturating_add(1);
            self.bad_probes = 0;
        } else {
            self.bad_probes = self.bad_probes.saturating_add(1);
            self.good_probes = 0;
        }
        match self.state {
            State::Up | State::SlowStart if self.bad_probes >= self.cfg.fall.max(1) => {
                self.enter(State::Down, now)
            }
            State::Down | State::Ejected if self.good_probes >= self.cfg.rise.max(1) => {
                let to = if self.cfg.slow_start.is_zero() {
                    State::Up
                } else {
                    State::SlowStart
                };
                self.enter(to, now)
            }
            _ => None,
        }
    }

    /// A connect to the task succeeded or failed (passive health). Counted
    /// only while the task accepts new connections: `passive_failures`
    /// consecutive failures eject it (0 = never), a success resets the
    /// count.
    pub fn observe_connect(&mut self, ok: bool, now: Instant) -> Option<Transition> {
        if !self.accepts_new() {
            return None;
        }
        if ok {
            self.bad_connects = 0;
            return None;
        }
        self.bad_connects = self.bad_connects.saturating_add(1);
        let limit = self.cfg.passive_failures;
        if limit > 0 && self.bad_connects >= limit {
            self.enter(State::Ejected, now)
        } else {
            None
        }
    }

    /// Time passed: SlowStart becomes Up once `slow_start` has elapsed.
    /// Nothing else happens on a tick.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        if self.state == State::SlowStart
            && now.saturating_duration_since(self.since) >= self.cfg.slow_start
        {
            self.enter(State::Up, now)
        } else {
            None
        }
    }

    /// Starts draining: no new connections; existing ones may run until
    /// `deadline`. From any state; draining again keeps the state and moves
    /// the deadline only earlier (a stop during a config removal shortens
    /// the drain, never lengthens it).
    pub fn drain(&mut self, now: Instant, deadline: Instant) -> Option<Transition> {
        if self.state == State::Draining {
            self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
            return None;
        }
        self.drain_deadline = Some(deadline);
        self.enter(State::Draining, now)
    }

    /// Starts Down, as a predecessor that handed its node over last saw the
    /// task: `rise` good probes bring it back (a new task otherwise starts
    /// Up). A task draining here is left as it is.
    pub fn resume_down(&mut self, now: Instant) -> Option<Transition> {
        if self.state == State::Draining {
            return None;
        }
        self.enter(State::Down, now)
    }

    fn enter(&mut self, to: State, now: Instant) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        self.since = now;
        self.good_probes = 0;
        self.bad_probes = 0;
        self.bad_connects = 0;
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg(rise: u32, fall: u32, slow_start: u64, passive: u32, eject_for: u64) -> HealthConfig {
        HealthConfig {
            rise,
            fall,
            slow_start: Duration::from_secs(slow_start),
            passive_failures: passive,
            eject_for: Duration::from_secs(eject_for),
        }
    }

    fn tr(from: State, to: State) -> Option<Transition> {
        Some(Transition { from, to })
    }

    #[test]
    fn starts_up() {
        let t0 = Instant::now();
        let h = Health::new(HealthConfig::default(), t0);
        assert_eq!(h.state(), State::Up);
        assert!(h.accepts_new());
        assert_eq!(h.weight(t0), 1.0);
        assert_eq!(h.next_deadline(), None);
        assert_eq!(h.drain_deadline(), None);
    }

    #[test]
    fn fall_hysteresis() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(2, 2, 0, 0, 10), t0);
        assert_eq!(h.observe_probe(false, t0), None);
        assert_eq!(h.state(), State::Up, "one bad probe is not enough");
        assert_eq!(h.observe_probe(false, t0 + S), tr(State::Up, State::Down));
        assert!(!h.accepts_new());
        assert_eq!(h.weight(t0 + S), 0.0);

        // Flapping never reaches Down.
        let mut h = Health::new(cfg(2, 2, 0, 0, 10), t0);
        for i in 0..20 {
            assert_eq!(h.observe_probe(i % 2 == 0, t0 + S * i), None);
            assert_eq!(h.state(), State::Up);
        }
    }

    #[test]
    fn detection_takes_exactly_fall_probes() {
        let t0 = Instant::now();
        for fall in 1..=6 {
            let mut h = Health::new(cfg(2, fall, 0, 0, 10), t0);
            for i in 1..fall {
                assert_eq!(h.observe_probe(false, t0 + S * i), None, "fall {fall}");
            }
            assert_eq!(
                h.observe_probe(false, t0 + S * fall),
                tr(State::Up, State::Down)
            );
        }
    }

    #[test]
    fn rise_hysteresis() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(3, 1, 0, 0, 10), t0);
        assert_eq!(h.observe_probe(false, t0), tr(State::Up, State::Down));
        assert_eq!(h.observe_probe(true, t0 + S), None);
        assert_eq!(h.observe_probe(true, t0 + S * 2), None);
        assert_eq!(h.observe_probe(false, t0 + S * 3), None, "reset");
        assert_eq!(h.observe_probe(true, t0 + S * 4), None);
        assert_eq!(h.observe_probe(true, t0 + S * 5), None);
        assert_eq!(
            h.observe_probe(true, t0 + S * 6),
            tr(State::Down, State::Up)
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(0, 0, 0, 0, 10), t0);
        assert_eq!(h.observe_probe(false, t0), tr(State::Up, State::Down));
        assert_eq!(h.observe_probe(true, t0), tr(State::Down, State::Up));
    }

    #[test]
    fn slow_start_ramp() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(1, 1, 10, 0, 10), t0);
        h.observe_probe(false, t0);
        let t1 = t0 + S * 5;
        assert_eq!(h.observe_probe(true, t1), tr(State::Down, State::SlowStart));
        assert!(h.accepts_new());
        assert_eq!(h.next_deadline(), Some(t1 + S * 10));
        for (ms, w) in [
            (0, 0.0),
            (1_000, 0.1),
            (2_500, 0.25),
            (5_000, 0.5),
            (9_000, 0.9),
            (10_000, 1.0),
            (99_000, 1.0),
        ] {
            let at = t1 + Duration::from_millis(ms);
            assert!((h.weight(at) - w).abs() < 1e-9, "{ms} ms: {}", h.weight(at));
        }
        // A time before the state was entered reads as its start.
        assert_eq!(h.weight(t0), 0.0);
        assert_eq!(h.tick(t1 + S * 9), None);
        assert_eq!(h.state(), State::SlowStart);
        assert_eq!(h.tick(t1 + S * 10), tr(State::SlowStart, State::Up));
        assert_eq!(h.weight(t1 + S * 10), 1.0);
        assert_eq!(h.next_deadline(), None);
        assert_eq!(h.tick(t1 + S * 11), None);
    }

    #[test]
    fn slow_start_task_can_fall() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(1, 2, 10, 0, 10), t0);
        h.observe_probe(false, t0);
        h.observe_probe(false, t0);
        h.observe_probe(true, t0 + S);
        assert_eq!(h.state(), State::SlowStart);
        assert_eq!(h.observe_probe(false, t0 + S * 2), None);
        assert_eq!(
            h.observe_probe(false, t0 + S * 3),
            tr(State::SlowStart, State::Down)
        );
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn passive_ejection_and_return() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(2, 2, 0, 3, 10), t0);
        assert_eq!(h.observe_connect(false, t0), None);
        assert_eq!(h.observe_connect(false, t0), None);
        assert_eq!(
            h.observe_connect(true, t0),
            None,
            "a success resets the count"
        );
        assert_eq!(h.observe_connect(false, t0), None);
        assert_eq!(h.observe_connect(false, t0), None);
        assert_eq!(
            h.observe_connect(false, t0 + S),
            tr(State::Up, State::Ejected)
        );
        assert!(!h.accepts_new());
        assert_eq!(h.weight(t0 + S), 0.0);
        assert_eq!(h.ejected_until(), Some(t0 + S * 11));
        assert_eq!(h.next_deadline(), None);

        // Probes inside eject_for do not count, good or bad.
        for i in 2..11 {
            assert_eq!(h.observe_probe(true, t0 + S * i), None);
            assert_eq!(h.observe_probe(false, t0 + S * i), None);
        }
        // Late connects to an ejected task do not count either.
        assert_eq!(h.observe_connect(true, t0 + S * 5), None);
        assert_eq!(h.state(), State::Ejected);
        // After eject_for, rise good probes bring it back.
        assert_eq!(h.observe_probe(true, t0 + S * 11), None);
        assert_eq!(
            h.observe_probe(true, t0 + S * 12),
            tr(State::Ejected, State::Up)
        );
        assert_eq!(h.ejected_until(), None);
        // The connect count starts over.
        assert_eq!(h.observe_connect(false, t0 + S * 13), None);
        assert_eq!(h.observe_connect(false, t0 + S * 13), None);
        assert_eq!(
            h.observe_connect(false, t0 + S * 13),
            tr(State::Up, State::Ejected)
        );
    }

    #[test]
    fn passive_off() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(2, 2, 0, 0, 10), t0);
        for _ in 0..100 {
            assert_eq!(h.observe_connect(false, t0), None);
        }
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn draining_ignores_probes() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(1, 1, 5, 1, 10), t0);
        let deadline = t0 + S * 30;
        assert_eq!(h.drain(t0, deadline), tr(State::Up, State::Draining));
        assert_eq!(h.drain_deadline(), Some(deadline));
        assert_eq!(h.next_deadline(), Some(deadline));
        for i in 0..10 {
            assert_eq!(h.observe_probe(i % 3 != 0, t0 + S * i), None);
            assert_eq!(h.observe_connect(false, t0 + S * i), None);
            assert_eq!(h.tick(t0 + S * i), None);
            assert_eq!(h.state(), State::Draining);
            assert!(!h.accepts_new());
            assert_eq!(h.weight(t0 + S * i), 0.0);
        }
        // Draining again: no transition, the deadline only moves earlier.
        assert_eq!(h.drain(t0, t0 + S * 60), None);
        assert_eq!(h.drain_deadline(), Some(deadline));
        assert_eq!(h.drain(t0, t0 + S * 20), None);
        assert_eq!(h.drain_deadline(), Some(t0 + S * 20));
    }

    #[test]
    fn drain_from_every_state() {
        let t0 = Instant::now();
        let mut down = Health::new(cfg(1, 1, 5, 1, 10), t0);
        down.observe_probe(false, t0);
        let mut slow = down.clone();
        slow.observe_probe(true, t0);
        let mut ejected = Health::new(cfg(1, 1, 5, 1, 10), t0);
        ejected.observe_connect(false, t0);
        for (mut h, from) in [
            (down, State::Down),
            (slow, State::SlowStart),
            (ejected, State::Ejected),
        ] {
            assert_eq!(h.state(), from);
            assert_eq!(h.drain(t0, t0 + S), tr(from, State::Draining));
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Probe(bool),
        Connect(bool),
        Tick,
        Drain,
    }

    /// `{description, config, events (seconds since start, event), expected
    /// state after each event}`.
    struct Case {
        description: &'static str,
        config: HealthConfig,
        events: &'static [(u64, Ev)],
        expected: &'static [State],
    }

    #[test]
    fn sequences() {
        use Ev::*;
        use State::*;
        let cases = [
            Case {
                description: "default: two bad probes down, two good up",
                config: HealthConfig::default(),
                events: &[
                    (1, Probe(false)),
                    (2, Probe(false)),
                    (3, Probe(true)),
                    (4, Probe(true)),
                ],
                expected: &[Up, Down, Down, Up],
            },
            Case {
                description: "flapping stays up",
                config: HealthConfig::default(),
                events: &[
                    (1, Probe(false)),
                    (2, Probe(true)),
                    (3, Probe(false)),
                    (4, Probe(true)),
                ],
                expected: &[Up, Up, Up, Up],
            },
            Case {
                description: "flapping while down stays down",
                config: cfg(2, 1, 0, 0, 10),
                events: &[
                    (1, Probe(false)),
                    (2, Probe(true)),
                    (3, Probe(false)),
                    (4, Probe(true)),
                ],
                expected: &[Down, Down, Down, Down],
            },
            Case {
                description: "recovery through slow start",
                config: cfg(1, 1, 5, 0, 10),
                events: &[
                    (1, Probe(false)),
                    (2, Probe(true)),
                    (6, Tick),
                    (7, Tick),
                    (8, Probe(true)),
                ],
                expected: &[Down, SlowStart, SlowStart, Up, Up],
            },
            Case {
                description: "ejection, ignored probes, return after eject_for",
                config: cfg(2, 2, 0, 2, 10),
                events: &[
                    (1, Connect(false)),
                    (2, Connect(false)),
                    (5, Probe(true)),
                    (11, Probe(true)),
                    (12, Probe(true)),
                    (13, Probe(true)),
                ],
                expected: &[Up, Ejected, Ejected, Ejected, Ejected, Up],
            },
            Case {
                description: "ejected in slow start, back into slow start",
                config: cfg(1, 1, 5, 1, 3),
                events: &[
                    (1, Probe(false)),
                    (2, Probe(true)),
                    (3, Connect(false)),
                    (4, Probe(true)),
                    (6, Probe(true)),
                    (11, Tick),
                ],
                expected: &[Down, SlowStart, Ejected, Ejected, SlowStart, Up],
            },
            Case {
                description: "connects to a down task are not counted",
                config: cfg(1, 1, 0, 1, 10),
                events: &[(1, Probe(false)), (2, Connect(false)), (3, Probe(true))],
                expected: &[Down, Down, Up],
            },
            Case {
                description: "drain is terminal",
                config: HealthConfig::default(),
                events: &[
                    (1, Probe(false)),
                    (2, Drain),
                    (3, Probe(false)),
                    (4, Probe(false)),
                    (5, Probe(true)),
                    (6, Tick),
                ],
                expected: &[Up, Draining, Draining, Draining, Draining, Draining],
            },
        ];
        for case in &cases {
            assert_eq!(
                case.events.len(),
                case.expected.len(),
                "{}",
                case.description
            );
            let t0 = Instant::now();
            let mut h = Health::new(case.config, t0);
            for (i, (&(at, ev), &want)) in case.events.iter().zip(case.expected).enumerate() {
                let now = t0 + S * at as u32;
                let before = h.state();
                let t = apply(&mut h, ev, now);
                assert_eq!(h.state(), want, "{}: event {i} {ev:?}", case.description);
                let expect_t = (before != want).then_some(Transition {
                    from: before,
                    to: want,
                });
                assert_eq!(t, expect_t, "{}: event {i} {ev:?}", case.description);
            }
        }
    }

    fn apply(h: &mut Health, ev: Ev, now: Instant) -> Option<Transition> {
        match ev {
            Ev::Probe(ok) => h.observe_probe(ok, now),
            Ev::Connect(ok) => h.observe_connect(ok, now),
            Ev::Tick => h.tick(now),
            Ev::Drain => h.drain(now, now + Duration::from_secs(30)),
        }
    }

    fn event() -> impl Strategy<Value = (u64, Ev)> {
        let ev = prop_oneof![
            any::<bool>().prop_map(Ev::Probe),
            any::<bool>().prop_map(Ev::Connect),
            Just(Ev::Tick),
            Just(Ev::Drain),
        ];
        (0u64..4_000, ev)
    }

    fn config() -> impl Strategy<Value = HealthConfig> {
        (0u32..5, 0u32..5, 0u64..5_000, 0u32..5, 0u64..10_000).prop_map(|(r, f, ss, p, e)| {
            HealthConfig {
                rise: r,
                fall: f,
                slow_start: Duration::from_millis(ss),
                passive_failures: p,
                eject_for: Duration::from_millis(e),
            }
        })
    }

    proptest! {
        #[test]
        fn any_sequence_is_consistent(
            config in config(),
            events in proptest::collection::vec(event(), 0..200),
        ) {
            let t0 = Instant::now();
            let mut h = Health::new(config, t0);
            let mut now = t0;
            let mut drained = false;
            for (step_ms, ev) in events {
                now += Duration::from_millis(step_ms);
                let before = h.state();
                let t = apply(&mut h, ev, now);
                let after = h.state();
                match t {
                    Some(t) => prop_assert_eq!((t.from, t.to), (before, after)),
                    None => prop_assert_eq!(before, after),
                }
                prop_assert_ne!(Some(before), t.map(|t| t.to));
                drained |= after == State::Draining;
                prop_assert_eq!(drained, after == State::Draining, "draining is terminal");
                prop_assert_eq!(h.accepts_new(), matches!(after, State::Up | State::SlowStart));
                let w = h.weight(now);
                prop_assert!((0.0..=1.0).contains(&w));
                if !h.accepts_new() {
                    prop_assert_eq!(w, 0.0);
                }
                if after == State::Up {
                    prop_assert_eq!(w, 1.0);
                }
                prop_assert_eq!(
                    h.next_deadline().is_some(),
                    matches!(after, State::SlowStart | State::Draining)
                );
                prop_assert_eq!(h.drain_deadline().is_some(), drained);
            }
        }
    }
}
