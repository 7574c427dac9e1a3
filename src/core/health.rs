//! Core: one node's health state: an atomic the data plane reads, the pure rise/fall machine
//! ([`super::machine`]) the checker ([`crate::control::checks`]) drives, and passive failure counting.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

pub use super::machine::{CheckKind, CheckResult, HealthView, Machine, MachineState, Phase, Transition};

/// Bit of `flags`: the machine says UP.
const UP: u8 = 1;
/// Bit of `flags`: the node said it is shutting down (Kuzzle's 503 `api.process.shutting_down`).
const LEAVING: u8 = 2;
/// Bit of `flags`: leaving for good: a node whose identity dies with its process (a Kuzzle 2 ID
/// card; restarted, it comes back under a new one) never comes back UP.
const FOR_GOOD: u8 = 4;

/// Whether a node said it is shutting down, as a binary upgrade hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leaving {
    /// It did not.
    #[default]
    No,
    /// Out of the rotation until checks bring it UP.
    UntilUp,
    /// Out for good: its identity ends with its process.
    ForGood,
}

/// One node's health: an atomic for the data plane, the state machine for the control plane.
#[derive(Debug)]
pub struct HealthState {
    /// What the data plane reads, in one load: `UP` mirrors `machine.is_up()` after every change;
    /// `LEAVING` is set by a request that met the node shutting down (it takes no traffic from
    /// that instant) and cleared when checks bring the node UP again.
    flags: AtomicU8,
    /// Only the checker task, operators and the stats page take this lock; never a request.
    machine: Mutex<Machine>,
    /// Failures seen on real traffic not yet applied: the request path only bumps this counter.
    passive_pending: AtomicU32,
    /// Wakes the checker so passive failures act at once (and trigger a fast re-check).
    kick: Notify,
    /// The last transition to UP, where `[health] slowstart` counts from: epoch milliseconds << 1,
    /// low bit set when it was the node's first (it joined); 0: UP since the gateway started, or
    /// never UP.
    up_at: AtomicU64,
}

impl HealthState {
    /// `up`: counted UP until checks say otherwise (start-up nodes); otherwise joining, DOWN until
    /// its first successful check.
    pub fn new(up: bool) -> Self {
        HealthState {
            flags: AtomicU8::new(if up { UP } else { 0 }),
            machine: Mutex::new(Machine::new(up, Instant::now(), crate::util::epoch_secs())),
            passive_pending: AtomicU32::new(0),
            kick: Notify::new(),
            up_at: AtomicU64::new(0),
        }
    }

    /// Health handed over by the old process on a binary upgrade: routed as it was there, checked
    /// again at once by this process's checker.
    pub fn restored(s: &MachineState, leaving: Leaving) -> Self {
        let leaving = match leaving {
            Leaving::No => 0,
            Leaving::UntilUp => LEAVING,
            Leaving::ForGood => LEAVING | FOR_GOOD,
        };
        let flags = if s.up { UP } else { 0 } | leaving;
        HealthState {
            flags: AtomicU8::new(flags),
            machine: Mutex::new(Machine::restore(s, Instant::now())),
            passive_pending: AtomicU32::new(0),
            kick: Notify::new(),
            // A slow start under way is not handed over: the new process routes it as a full node.
            up_at: AtomicU64::new(0),
        }
    }

    /// What a binary upgrade hands over: the machine and whether the node is leaving.
    pub fn export(&self) -> (MachineState, Leaving) {
        let flags = self.flags.load(Ordering::Relaxed);
        let leaving = if flags & FOR_GOOD != 0 {
            Leaving::ForGood
        } else if flags & LEAVING != 0 {
            Leaving::UntilUp
        } else {
            Leaving::No
        };
        (self.lock().export(Instant::now()), leaving)
    }

    /// Has a check of this node finished (passed or failed) since it was made?
    pub fn checked(&self) -> bool {
        self.lock().checked()
    }

    /// UP and not leaving: may take traffic as far as health goes.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.flags.load(Ordering::Relaxed) == UP
    }

    /// The machine's UP, leaving or not (what the stats page shows as health).
    pub fn machine_up(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & UP != 0
    }

    /// The node told a request it is shutting down, and no check has brought it UP since.
    pub fn leaving(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & LEAVING != 0
    }

    /// Data plane: the node refused a request because it is shutting down. It takes no new
    /// traffic from now on; the checker marks it DOWN (without closing its WebSockets: the node
    /// closes them itself once its pending requests are done) until checks bring it back UP, or
    /// for good when `for_good` (its identity ends with its process).
    pub fn note_leaving(&self, for_good: bool) {
        let bits = if for_good { LEAVING | FOR_GOOD } else { LEAVING };
        if self.flags.fetch_or(bits, Ordering::Relaxed) & LEAVING == 0 {
            self.kick.notify_one();
        }
    }

    /// Checker: the node is UP again, so it is no longer leaving (unless it left for good).
    fn clear_leaving(&self) {
        let _ = self
            .flags
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| (f & FOR_GOOD == 0).then_some(f & !LEAVING));
    }

    /// Force the state (tests, tools); the next checks continue from there.
    pub fn set_up(&self, up: bool) {
        self.apply(|m, now, epoch| m.force(up, now, epoch));
    }

    pub fn view(&self) -> HealthView {
        let mut v = self.lock().view(Instant::now());
        v.leaving = self.leaving();
        v
    }

    /// Change the machine and publish its state to the data plane's atomic. A transition to UP
    /// ends a leaving state (the node restarted and passed its checks).
    pub fn apply(&self, f: impl FnOnce(&mut Machine, Instant, u64) -> Transition) -> Transition {
        let mut m = self.lock();
        let first = m.joining();
        let t = f(&mut m, Instant::now(), crate::util::epoch_secs());
        if m.is_up() {
            self.flags.fetch_or(UP, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!UP, Ordering::Relaxed);
        }
        if t == Transition::Up {
            self.clear_leaving();
            self.up_at.store(crate::util::epoch_ms().max(1) << 1 | u64::from(first), Ordering::Relaxed);
        }
        t
    }

    /// When the node last came UP (epoch milliseconds) and whether that was its first time (it
    /// joined); None when it has been UP since the gateway started (no slow start then: it would
    /// only starve a running cluster), or after its ramp ended.
    #[inline]
    pub fn came_up(&self) -> Option<(u64, bool)> {
        match self.up_at.load(Ordering::Relaxed) {
            0 => None,
            v => Some((v >> 1, v & 1 == 1)),
        }
    }

    /// The ramp is over: the data plane stops computing it.
    pub fn ramp_done(&self) {
        self.up_at.store(0, Ordering::Relaxed);
    }

    /// Checker: a node marked leaving that the machine still counts UP goes DOWN now.
    pub fn apply_leaving(&self) -> Transition {
        if !self.leaving() {
            return Transition::None;
        }
        self.apply(|m, now, epoch| if m.is_up() { m.force(false, now, epoch) } else { Transition::None })
    }

    /// Read the machine (scheduling decisions).
    pub fn apply_read<T>(&self, f: impl FnOnce(&Machine) -> T) -> T {
        f(&self.lock())
    }

    /// Data plane: count one failure of real traffic (lock-free) and wake the checker.
    pub fn note_passive_failure(&self) {
        self.passive_pending.fetch_add(1, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// Data plane: real traffic went through, so earlier unapplied failures were not a streak.
    #[inline]
    pub fn note_passive_success(&self) {
        // Load first: the common case (nothing pending) must not write the shared cache line.
        if self.passive_pending.load(Ordering::Relaxed) != 0 {
            self.passive_pending.store(0, Ordering::Relaxed);
        }
    }

    /// Passive failures seen since the last call.
    pub fn take_passive(&self) -> u32 {
        self.passive_pending.swap(0, Ordering::Relaxed)
    }

    /// Resolves when the data plane reported a passive failure.
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        crate::util::lock(&self.machine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::machine::CheckKind;

    fn check(ok: bool) -> CheckResult {
        let kind = if ok { CheckKind::L7OK } else { CheckKind::L7STS };
        CheckResult { kind, code: None, duration: std::time::Duration::ZERO, at: 0 }
    }

    #[test]
    fn restored_health_routes_as_it_was() {
        let h = HealthState::new(true);
        h.apply(|m, now, e| m.record(check(false), now, e));
        h.note_leaving(false);
        let (m, leaving) = h.export();
        assert_eq!(leaving, Leaving::UntilUp);
        let r = HealthState::restored(&m, leaving);
        assert!(!r.is_up() && r.leaving() && r.checked(), "a leaving node stays out of the rotation");
        let r = HealthState::restored(&m, Leaving::No);
        assert!(r.is_up() && r.checked(), "UP with one failure seen");
        assert_eq!(r.view().status, "UP 2/3");
        assert!(!HealthState::new(false).checked());
        // Leaving for good stays so in the new process: passing checks do not bring it back.
        h.note_leaving(true);
        let (m, leaving) = h.export();
        assert_eq!(leaving, Leaving::ForGood);
        let r = HealthState::restored(&m, leaving);
        r.apply_leaving();
        for _ in 0..3 {
            r.apply(|m, now, e| m.record(check(true), now, e));
        }
        assert!(!r.is_up() && r.leaving());
    }

    #[test]
    fn leaving_takes_the_node_out_until_checks_bring_it_back() {
        let h = HealthState::new(true);
        assert!(h.is_up() && !h.leaving());
        h.note_leaving(false);
        // At once, before the checker runs: no traffic.
        assert!(!h.is_up() && h.leaving());
        // A passing check while the machine still says UP does not end it.
        assert_eq!(h.apply(|m, now, e| m.record(check(true), now, e)), Transition::None);
        assert!(!h.is_up() && h.leaving());
        // The checker marks it DOWN, and `rise` passing checks bring it back.
        assert_eq!(h.apply_leaving(), Transition::Down);
        assert_eq!(h.view().status, "DOWN");
        assert!(h.view().leaving);
        assert_eq!(h.apply(|m, now, e| m.record(check(true), now, e)), Transition::None);
        assert!(h.leaving(), "one pass of two is not UP yet");
        assert_eq!(h.apply(|m, now, e| m.record(check(true), now, e)), Transition::Up);
        assert!(h.is_up() && !h.leaving() && !h.view().leaving);
        // Failing checks while leaving keep it DOWN; leaving twice is idempotent.
        h.note_leaving(false);
        h.note_leaving(false);
        assert_eq!(h.apply_leaving(), Transition::Down);
        assert_eq!(h.apply_leaving(), Transition::None);
        assert_eq!(h.apply(|m, now, e| m.record(check(false), now, e)), Transition::None);
        assert!(!h.is_up() && h.leaving());
    }

    #[test]
    fn leaving_for_good_never_comes_back() {
        let h = HealthState::new(true);
        h.note_leaving(true);
        assert_eq!(h.apply_leaving(), Transition::Down);
        // Its liveness route may still answer while it finishes: no way back for this identity.
        for _ in 0..3 {
            h.apply(|m, now, e| m.record(check(true), now, e));
        }
        assert!(h.machine_up() && !h.is_up() && h.leaving());
    }
}
