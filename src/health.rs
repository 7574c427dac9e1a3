//! Control plane: node health (placeholder state; the checker and its state machine come with the health issue).

use std::sync::atomic::{AtomicBool, Ordering};

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
}

/// Real traffic failed on `node` (connect refused, reset, timeout).
pub fn passive_failure(_gw: &std::sync::Arc<crate::state::Gateway>, _node: &std::sync::Arc<crate::backend::Backend>) {}

/// Real traffic succeeded on `node`.
pub fn passive_success(_node: &crate::backend::Backend) {}

/// Register the health checker for every backend the control plane creates.
pub fn install(_gw: &std::sync::Arc<crate::state::Gateway>) {}
