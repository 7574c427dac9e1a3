//! Core: one node's health state: an atomic the data plane reads, the pure rise/fall machine
//! ([`super::machine`]) the checker ([`crate::health`]) drives, and passive failure counting.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

pub use super::machine::{CheckKind, CheckResult, HealthView, Machine, Phase, Transition};

/// One node's health: an atomic for the data plane, the state machine for the control plane.
#[derive(Debug)]
pub struct HealthState {
    /// What the data plane reads: mirrors `machine.is_up()` after every change.
    up: AtomicBool,
    /// Only the checker task, operators and the stats page take this lock; never a request.
    machine: Mutex<Machine>,
    /// Failures seen on real traffic not yet applied: the request path only bumps this counter.
    passive_pending: AtomicU32,
    /// Wakes the checker so passive failures act at once (and trigger a fast re-check).
    kick: Notify,
}

impl HealthState {
    /// `up`: counted UP until checks say otherwise (start-up nodes); otherwise joining, DOWN until
    /// its first successful check.
    pub fn new(up: bool) -> Self {
        HealthState {
            up: AtomicBool::new(up),
            machine: Mutex::new(Machine::new(up, Instant::now(), crate::util::epoch_secs())),
            passive_pending: AtomicU32::new(0),
            kick: Notify::new(),
        }
    }

    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Force the state (tests, tools); the next checks continue from there.
    pub fn set_up(&self, up: bool) {
        self.apply(|m, now, epoch| m.force(up, now, epoch));
    }

    pub fn view(&self) -> HealthView {
        self.lock().view(Instant::now())
    }

    /// Change the machine and publish its state to the data plane's atomic.
    pub fn apply(&self, f: impl FnOnce(&mut Machine, Instant, u64) -> Transition) -> Transition {
        let mut m = self.lock();
        let t = f(&mut m, Instant::now(), crate::util::epoch_secs());
        self.up.store(m.is_up(), Ordering::Relaxed);
        t
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
