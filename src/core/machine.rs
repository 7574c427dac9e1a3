//! Core: the pure health state machine (haproxy rise/fall semantics, counters, check
//! scheduling); no I/O, time is passed in so it can be tested with paused tokio time.

use std::time::Duration;

use tokio::time::Instant;

use crate::control::config::HealthSection;

/// Outcome of one check, in haproxy's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CheckKind {
    /// TCP connect succeeded (no HTTP check configured).
    L4OK,
    /// Connection refused / reset.
    L4CON,
    /// Connect timed out.
    L4TOUT,
    /// HTTP check answered 2xx/3xx.
    L7OK,
    /// HTTP check answered another status.
    L7STS,
    /// HTTP check timed out.
    L7TOUT,
    /// HTTP check answered garbage / closed.
    L7RSP,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::L4OK => "L4OK",
            CheckKind::L4CON => "L4CON",
            CheckKind::L4TOUT => "L4TOUT",
            CheckKind::L7OK => "L7OK",
            CheckKind::L7STS => "L7STS",
            CheckKind::L7TOUT => "L7TOUT",
            CheckKind::L7RSP => "L7RSP",
        }
    }
    pub fn is_ok(self) -> bool {
        matches!(self, CheckKind::L4OK | CheckKind::L7OK)
    }
}

/// One finished check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckResult {
    /// What the check found, in haproxy's words.
    pub kind: CheckKind,
    /// HTTP status when one came back.
    pub code: Option<u16>,
    /// How long the check took (shown as haproxy's `check_duration`).
    #[serde(
        rename = "duration_ms",
        serialize_with = "crate::util::ms::from_duration",
        deserialize_with = "crate::util::ms::to_duration"
    )]
    pub duration: Duration,
    /// Epoch seconds.
    pub at: u64,
}

/// Health as the stats page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthView {
    /// UP or DOWN: what the data plane routes by (`status` adds the streak).
    pub up: bool,
    /// Where the node is in its rise/fall cycle (what `status` says, typed).
    pub phase: Phase,
    /// haproxy-style status text: "UP", "DOWN", "UP 1/3" (going down), "DOWN 1/2" (going up), "no check".
    pub status: String,
    /// The last active check's result; None before the first one.
    pub last_check: Option<CheckResult>,
    /// Epoch seconds of the last UP/DOWN transition (or of creation).
    pub last_change: u64,
    /// Total seconds spent DOWN so far.
    #[serde(rename = "downtime_ms", serialize_with = "crate::util::ms::from_secs")]
    pub downtime: u64,
    /// Number of UP->DOWN transitions (haproxy's chkdown).
    pub down_transitions: u64,
    /// Failed checks (haproxy's chkfail); failures seen by passive checks count too.
    pub failed_checks: u64,
    /// The node said it is shutting down (set by [`super::health::HealthState::view`]; the machine
    /// itself does not know).
    pub leaving: bool,
}

/// Where a node is between UP and DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Up,
    /// UP with failures seen, not yet `fall` of them.
    GoingDown,
    Down,
    /// DOWN with successes seen, not yet `rise` of them.
    GoingUp,
}

/// Check scheduling and thresholds, read from `[health]` before every round so reloads apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between checks of a node that is steadily UP.
    pub interval: Duration,
    /// Between checks while a node is changing state (UP going down, DOWN going up).
    pub fastinter: Duration,
    /// Between checks of a node that is steadily DOWN.
    pub downinter: Duration,
    /// Consecutive passing checks that bring a DOWN node UP (`[health] rise`, at least 1).
    pub rise: u32,
    /// Consecutive failures that take an UP node DOWN (`[health] fall`, at least 1).
    pub fall: u32,
    /// Each delay is spread by up to +/- this percentage so checks of many nodes do not align.
    pub jitter_pct: u32,
}

/// Default spread of check delays (haproxy's `spread-checks` is often set to a few percent).
pub const DEFAULT_JITTER_PCT: u32 = 10;

impl Timing {
    pub fn from_config(h: &HealthSection) -> Timing {
        Timing {
            interval: h.interval.0,
            fastinter: h.fastinter.map_or(h.interval.0, |d| d.0),
            downinter: h.downinter.map_or(h.interval.0, |d| d.0),
            rise: h.rise.max(1),
            fall: h.fall.max(1),
            jitter_pct: DEFAULT_JITTER_PCT,
        }
    }
}

/// What a recorded result did to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// DOWN -> UP: the node takes traffic again.
    Up,
    /// UP -> DOWN: no new traffic; tunnels may be closed.
    Down,
}

/// One node's health history. Consecutive semantics as haproxy's `health` counter: while UP, any
/// success resets the failure streak; while DOWN, any failure resets the success streak.
#[derive(Debug, Clone)]
pub struct Machine {
    /// UP or DOWN: what the data plane routes by.
    up: bool,
    /// Consecutive failures while UP, or consecutive successes while DOWN.
    streak: u32,
    /// A node that joined after start-up and was never UP: its first success is enough.
    joining: bool,
    /// Successes in a row that bring it UP (`set_limits`; 2 until the checker sets it).
    rise: u32,
    /// Failures in a row that take it DOWN (`set_limits`; 3 until the checker sets it).
    fall: u32,
    /// The last active check's result (None: not checked yet).
    last_check: Option<CheckResult>,
    /// Epoch seconds of the last transition (or of creation).
    last_change: u64,
    /// Start of the current DOWN period (None while UP): `downtime` adds it when it ends.
    down_since: Option<Instant>,
    /// DOWN time of finished DOWN periods.
    downtime: Duration,
    /// UP -> DOWN transitions so far (haproxy's chkdown).
    down_transitions: u64,
    /// Failed checks so far, passive failures included (haproxy's chkfail).
    failed_checks: u64,
}

/// A machine as a binary upgrade hands it to the new process: times are epoch values or
/// durations (an `Instant` means nothing in another process); thresholds are not carried (the
/// new process's checker sets its own from `[health]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineState {
    /// UP or DOWN: what the data plane routes by.
    pub up: bool,
    /// Consecutive failures while UP, or successes while DOWN, so a streak under way continues.
    pub streak: u32,
    /// Never UP since it joined: its first passing check is enough.
    pub joining: bool,
    /// The last check's result (the stats page shows it).
    pub last_check: Option<CheckResult>,
    /// Epoch seconds of the last transition.
    pub last_change: u64,
    /// DOWN time so far, the current DOWN period included, in milliseconds.
    pub downtime_ms: u64,
    /// UP -> DOWN transitions so far (haproxy's chkdown).
    pub down_transitions: u64,
    /// Failed checks so far (haproxy's chkfail).
    pub failed_checks: u64,
}

impl Machine {
    /// A node counted UP (`up`, the nodes the gateway starts with) or joining (DOWN until its
    /// first successful check).
    pub fn new(up: bool, now: Instant, epoch: u64) -> Machine {
        Machine {
            up,
            streak: 0,
            joining: !up,
            rise: 2,
            fall: 3,
            last_check: None,
            last_change: epoch,
            down_since: (!up).then_some(now),
            downtime: Duration::ZERO,
            down_transitions: 0,
            failed_checks: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Never UP yet (a node that joined after the gateway started).
    pub fn joining(&self) -> bool {
        self.joining
    }

    /// Has any check finished (passed or failed) since this machine was made?
    pub fn checked(&self) -> bool {
        self.last_check.is_some()
    }

    /// The state to hand to a new process (binary upgrade).
    pub fn export(&self, now: Instant) -> MachineState {
        MachineState {
            up: self.up,
            streak: self.streak,
            joining: self.joining,
            last_check: self.last_check,
            last_change: self.last_change,
            downtime_ms: u64::try_from(self.downtime(now).as_millis()).unwrap_or(u64::MAX),
            down_transitions: self.down_transitions,
            failed_checks: self.failed_checks,
        }
    }

    /// A machine continuing from `s` (handed over by the old process): a DOWN node's current DOWN
    /// period restarts at `now`, the time before it already counted in `downtime_ms`.
    pub fn restore(s: &MachineState, now: Instant) -> Machine {
        Machine {
            up: s.up,
            streak: s.streak,
            joining: s.joining,
            rise: 2,
            fall: 3,
            last_check: s.last_check,
            last_change: s.last_change,
            down_since: (!s.up).then_some(now),
            downtime: Duration::from_millis(s.downtime_ms),
            down_transitions: s.down_transitions,
            failed_checks: s.failed_checks,
        }
    }

    /// Apply (possibly reloaded) thresholds; a streak already past a lowered threshold acts at
    /// the next result.
    pub fn set_limits(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Record one active check.
    pub fn record(&mut self, r: CheckResult, now: Instant, epoch: u64) -> Transition {
        self.last_check = Some(r);
        if r.kind.is_ok() {
            self.success(now, epoch)
        } else {
            self.failed_checks += 1;
            self.failure(now, epoch)
        }
    }

    /// Record `n` failures seen on real traffic (passive checks). They count like failed checks
    /// but only against a node that is UP: a DOWN node gets no traffic to judge it by.
    pub fn record_passive(&mut self, n: u32, now: Instant, epoch: u64) -> Transition {
        let mut t = Transition::None;
        for _ in 0..n {
            if !self.up {
                break;
            }
            self.failed_checks += 1;
            if self.failure(now, epoch) == Transition::Down {
                t = Transition::Down;
            }
        }
        t
    }

    /// Operator or test override: set the state at once.
    pub fn force(&mut self, up: bool, now: Instant, epoch: u64) -> Transition {
        if up == self.up {
            self.streak = 0;
            return Transition::None;
        }
        self.set(up, now, epoch)
    }

    fn success(&mut self, now: Instant, epoch: u64) -> Transition {
        if self.up {
            self.streak = 0;
            return Transition::None;
        }
        self.streak += 1;
        if self.joining || self.streak >= self.rise {
            return self.set(true, now, epoch);
        }
        Transition::None
    }

    fn failure(&mut self, now: Instant, epoch: u64) -> Transition {
        if !self.up {
            self.streak = 0;
            return Transition::None;
        }
        self.streak += 1;
        if self.streak >= self.fall {
            return self.set(false, now, epoch);
        }
        Transition::None
    }

    fn set(&mut self, up: bool, now: Instant, epoch: u64) -> Transition {
        self.up = up;
        self.streak = 0;
        self.last_change = epoch;
        if up {
            self.joining = false;
            if let Some(since) = self.down_since.take() {
                self.downtime += now.saturating_duration_since(since);
            }
            Transition::Up
        } else {
            self.down_transitions += 1;
            self.down_since = Some(now);
            Transition::Down
        }
    }

    /// haproxy's status text: "UP", "UP 2/3" (one failure seen, two more to go down), "DOWN",
    /// "DOWN 1/2" (one success seen out of two needed to go up).
    pub fn status(&self) -> String {
        match (self.up, self.streak) {
            (true, 0) => "UP".into(),
            (true, f) => format!("UP {}/{}", self.fall.saturating_sub(f).max(1), self.fall),
            (false, 0) => "DOWN".into(),
            (false, s) => format!("DOWN {}/{}", s.min(self.rise), self.rise),
        }
    }

    /// Total DOWN time, the current DOWN period included.
    pub fn downtime(&self, now: Instant) -> Duration {
        self.downtime + self.down_since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Delay before the next check: `fastinter` while changing state (or joining), `downinter`
    /// while DOWN, `interval` while UP; spread by the jitter (`rand01` uniform in [0, 1)).
    pub fn next_delay(&self, t: &Timing, rand01: f64) -> Duration {
        let base = if self.streak > 0 || self.joining {
            t.fastinter
        } else if self.up {
            t.interval
        } else {
            t.downinter
        };
        let spread = f64::from(t.jitter_pct.min(100)) / 100.0;
        let factor = 1.0 + spread * (2.0 * rand01.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(factor).max(Duration::from_millis(1))
    }

    pub fn phase(&self) -> Phase {
        match (self.up, self.streak) {
            (true, 0) => Phase::Up,
            (true, _) => Phase::GoingDown,
            (false, 0) => Phase::Down,
            (false, _) => Phase::GoingUp,
        }
    }

    pub fn view(&self, now: Instant) -> HealthView {
        HealthView {
            up: self.up,
            phase: self.phase(),
            status: self.status(),
            last_check: self.last_check,
            last_change: self.last_change,
            downtime: self.downtime(now).as_secs(),
            down_transitions: self.down_transitions,
            failed_checks: self.failed_checks,
            leaving: false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn json_durations_are_milliseconds() {
        let c = CheckResult { kind: CheckKind::L7OK, code: Some(200), duration: Duration::from_micros(604_104), at: 1 };
        let v = serde_json::to_value(c).expect("json");
        assert_eq!(v["duration_ms"], 604, "{v}");
        assert!(v.get("duration").is_none(), "no {{secs, nanos}} object: {v}");
    }

    fn res(kind: CheckKind) -> CheckResult {
        CheckResult { kind, code: None, duration: Duration::from_millis(1), at: 0 }
    }

    fn ok() -> CheckResult {
        res(CheckKind::L7OK)
    }

    fn ko() -> CheckResult {
        CheckResult { code: Some(404), ..res(CheckKind::L7STS) }
    }

    /// The timing the checker's tests use too: interval 10 s, fastinter 1 s, downinter 30 s, 2/3.
    pub(crate) fn timing() -> Timing {
        Timing {
            interval: Duration::from_secs(10),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(30),
            rise: 2,
            fall: 3,
            jitter_pct: 0,
        }
    }

    #[test]
    fn fall_then_rise_with_haproxy_texts() {
        let t0 = Instant::now();
        let mut m = Machine::new(true, t0, 100);
        assert_eq!(m.status(), "UP");
        assert_eq!(m.record(ko(), t0, 101), Transition::None);
        assert_eq!(m.status(), "UP 2/3");
        assert_eq!(m.record(ko(), t0, 102), Transition::None);
        assert_eq!(m.status(), "UP 1/3");
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.record(ko(), t1, 103), Transition::Down);
        assert_eq!(m.status(), "DOWN");
        assert!(!m.is_up());
        assert_eq!(m.record(ok(), t1, 104), Transition::None);
        assert_eq!(m.status(), "DOWN 1/2");
        let t2 = t1 + Duration::from_secs(7);
        assert_eq!(m.record(ok(), t2, 105), Transition::Up);
        let v = m.view(t2 + Duration::from_secs(100));
        assert_eq!(
            (v.up, v.status.as_str(), v.last_change, v.downtime, v.down_transitions, v.failed_checks),
            (true, "UP", 105, 7, 1, 3)
        );
        assert_eq!(v.last_check.map(|c| c.kind), Some(CheckKind::L7OK));
    }

    #[test]
    fn streaks_are_consecutive() {
        let t0 = Instant::now();
        let mut m = Machine::new(true, t0, 0);
        for _ in 0..5 {
            m.record(ko(), t0, 0);
            m.record(ko(), t0, 0);
            m.record(ok(), t0, 0);
        }
        assert!(m.is_up(), "two failures then a success never reach fall=3");
        for _ in 0..3 {
            m.record(ko(), t0, 0);
        }
        assert!(!m.is_up());
        for _ in 0..5 {
            m.record(ok(), t0, 0);
            m.record(ko(), t0, 0);
        }
        assert!(!m.is_up(), "one success then a failure never reach rise=2");
        assert_eq!(m.view(t0).failed_checks, 18);
    }

    #[test]
    fn joining_node_goes_up_on_first_success_only() {
        let t0 = Instant::now();
        let mut m = Machine::new(false, t0, 0);
        assert_eq!(m.status(), "DOWN");
        assert_eq!(m.record(ok(), t0 + Duration::from_secs(2), 0), Transition::Up);
        assert_eq!(m.view(t0 + Duration::from_secs(2)).downtime, 2);
        m.record(ko(), t0, 0);
        m.record(ko(), t0, 0);
        assert_eq!(m.record(ko(), t0, 0), Transition::Down);
        assert_eq!(m.record(ok(), t0, 0), Transition::None, "once it was UP, rise applies again");
        assert_eq!(m.record(ok(), t0, 0), Transition::Up);
    }

    #[test]
    fn passive_failures_count_only_while_up() {
        let t0 = Instant::now();
        let mut m = Machine::new(true, t0, 0);
        assert_eq!(m.record_passive(2, t0, 0), Transition::None);
        assert_eq!(m.status(), "UP 1/3");
        assert_eq!(m.record_passive(5, t0, 0), Transition::Down);
        assert_eq!(m.view(t0).failed_checks, 3, "failures past DOWN are not counted");
        assert_eq!(m.record_passive(1, t0, 0), Transition::None);
        assert_eq!(m.view(t0).down_transitions, 1);
    }

    #[test]
    fn limits_follow_reloads_and_force_overrides() {
        let t0 = Instant::now();
        let mut m = Machine::new(true, t0, 0);
        m.set_limits(1, 1);
        assert_eq!(m.record(ko(), t0, 0), Transition::Down);
        m.set_limits(0, 0);
        assert_eq!(m.record(ok(), t0, 0), Transition::Up, "limits are at least 1");
        assert_eq!(m.force(false, t0, 0), Transition::Down);
        assert_eq!(m.force(false, t0, 0), Transition::None);
        assert_eq!(m.force(true, t0, 0), Transition::Up);
    }

    #[test]
    fn delays_by_state() {
        let t = timing();
        let t0 = Instant::now();
        let mut m = Machine::new(true, t0, 0);
        assert_eq!(m.next_delay(&t, 0.5), t.interval);
        m.record(ko(), t0, 0);
        assert_eq!(m.next_delay(&t, 0.5), t.fastinter, "going down");
        m.record(ko(), t0, 0);
        m.record(ko(), t0, 0);
        assert_eq!(m.next_delay(&t, 0.5), t.downinter, "down");
        m.record(ok(), t0, 0);
        assert_eq!(m.next_delay(&t, 0.5), t.fastinter, "going up");
        let joining = Machine::new(false, t0, 0);
        assert_eq!(joining.next_delay(&t, 0.5), t.fastinter, "joining nodes are checked fast");
    }

    #[test]
    fn a_handed_over_machine_continues_where_it_was() {
        let t0 = Instant::now();
        let mut m = Machine::new(true, t0, 100);
        for _ in 0..3 {
            m.record(ko(), t0, 101);
        }
        assert!(!m.is_up() && m.checked());
        m.record(ok(), t0 + Duration::from_secs(4), 102);
        let s = m.export(t0 + Duration::from_secs(4));
        // Through JSON, as the upgrade socket carries it.
        let s: MachineState = serde_json::from_value(serde_json::to_value(&s).expect("json")).expect("back");
        assert_eq!((s.up, s.streak, s.downtime_ms, s.down_transitions, s.failed_checks), (false, 1, 4000, 1, 3));
        let t1 = Instant::now();
        let mut r = Machine::restore(&s, t1);
        assert_eq!(r.status(), "DOWN 1/2", "the streak under way continues");
        assert_eq!(r.view(t1 + Duration::from_secs(1)).downtime, 5, "downtime continues from the old total");
        assert_eq!(r.record(ok(), t1, 103), Transition::Up, "one more pass makes rise = 2");
        assert_eq!(r.view(t1).last_check.map(|c| c.kind), Some(CheckKind::L7OK));
        assert_eq!(s.last_check.map(|c| c.duration), Some(Duration::from_millis(1)), "duration_ms read back");
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let t = Timing { jitter_pct: 10, ..timing() };
        let m = Machine::new(true, Instant::now(), 0);
        assert_eq!(m.next_delay(&t, 0.0), Duration::from_secs(9));
        assert_eq!(m.next_delay(&t, 0.5), Duration::from_secs(10));
        assert!(m.next_delay(&t, 0.999_999) <= Duration::from_secs(11));
        assert!(m.next_delay(&t, 0.999_999) > Duration::from_millis(10_990));
    }
}
