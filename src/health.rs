//! Control plane: node health (placeholder state; the checker and its state machine come with the health issue).
//!
//! The API below (`HealthState::is_up`, `set_up`, `view`, `HealthView`, `CheckResult`, `CheckKind`)
//! is what the data plane and the stats page read; keep it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    /// Failed checks (haproxy's chkfail).
    pub failed_checks: u64,
}

/// Health as the data plane reads it: one atomic.
#[derive(Debug)]
pub struct HealthState {
    up: AtomicBool,
}

impl HealthState {
    pub fn new(up: bool) -> Self {
        HealthState { up: AtomicBool::new(up) }
    }

    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn view(&self) -> HealthView {
        let up = self.is_up();
        HealthView {
            up,
            status: if up { "UP" } else { "DOWN" }.into(),
            last_check: None,
            last_change: 0,
            downtime: 0,
            down_transitions: 0,
            failed_checks: 0,
        }
    }
}

/// Real traffic failed on `node` (connect refused, reset, timeout).
pub fn passive_failure(_gw: &std::sync::Arc<crate::state::Gateway>, _node: &std::sync::Arc<crate::backend::Backend>) {}

/// Real traffic succeeded on `node`.
pub fn passive_success(_node: &crate::backend::Backend) {}

/// Register the health checker for every backend the control plane creates.
pub fn install(_gw: &std::sync::Arc<crate::state::Gateway>) {}
