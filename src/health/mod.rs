//! Control plane: node health. Active HTTP checks and passive checks (failures on real traffic)
//! feed a pure rise/fall state machine; the data plane reads one atomic per node.
//!
//! Layout: [`machine`] is the pure state machine and scheduling (no I/O), [`probe`] does the I/O
//! (one checker task per node). The API here (`HealthState::is_up`, `set_up`, `view`,
//! `HealthView`, `CheckResult`, `CheckKind`, `passive_failure`, `passive_success`, `install`) is
//! what the data plane and the stats page use.

pub mod machine;
pub mod probe;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::state::Gateway;
use machine::{Machine, Transition};

/// Outcome of one check, in haproxy's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CheckResult {
    pub kind: CheckKind,
    /// HTTP status when one came back.
    pub code: Option<u16>,
    pub duration: Duration,
    /// Epoch seconds.
    pub at: u64,
}

/// Health as the stats page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthView {
    pub up: bool,
    /// haproxy-style status text: "UP", "DOWN", "UP 1/3" (going down), "DOWN 1/2" (going up), "no check".
    pub status: String,
    pub last_check: Option<CheckResult>,
    /// Epoch seconds of the last UP/DOWN transition (or of creation).
    pub last_change: u64,
    /// Total seconds spent DOWN so far.
    pub downtime: u64,
    /// Number of UP->DOWN transitions (haproxy's chkdown).
    pub down_transitions: u64,
    /// Failed checks (haproxy's chkfail); failures seen by passive checks count too.
    pub failed_checks: u64,
}

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

/// Real traffic failed on `node` (connect refused, reset, timeout). Lock-free: the node's checker
/// applies it (it can mark the node DOWN before the next active check) unless `[health] passive`
/// is off.
pub fn passive_failure(health: &crate::config::HealthSection, node: &Backend) {
    if health.passive {
        node.health.note_passive_failure();
    }
}

/// Real traffic succeeded on `node`.
#[inline]
pub fn passive_success(node: &Backend) {
    node.health.note_passive_success();
}

/// Register the health checker for every backend the control plane creates (call before the
/// first `apply_config`).
pub fn install(gw: &Arc<Gateway>) {
    gw.set_backend_hook(Box::new(probe::spawn_checker));
}

#[cfg(test)]
pub(crate) mod tests {
    /// Wait (bounded: 10 000 steps of 1 ms, paused or real time) until `f` holds.
    pub async fn wait_until(f: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if f() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("condition not reached within 10 000 steps");
    }
}
