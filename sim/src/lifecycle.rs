//! Where one node is in its life, as Kuzzle's own state says it: starting (`/_ready` 503),
//! serving, or shutting down (new requests rejected); and the HTTP requests still in flight,
//! which a graceful shutdown waits for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The life of one node. Shared by its tasks; read on every request (atomics, no lock).
pub(crate) struct Lifecycle {
    /// When the node started: with `start_delay`, when it stops "starting".
    born: Instant,
    /// How long the node says it is starting (`/_ready` 503) after `born`.
    start_delay: Duration,
    /// Set once, when a graceful shutdown begins: from then on new requests are rejected.
    shutting_down: AtomicBool,
    /// HTTP requests begun and not finished (their response body not yet sent whole).
    in_flight: AtomicUsize,
    /// Woken each time `in_flight` drops to zero.
    idle: Notify,
}

/// One HTTP request in flight; the count drops when this is dropped (the response body done).
pub(crate) struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    pub fn new(start_delay: Duration) -> Lifecycle {
        Lifecycle {
            born: Instant::now(),
            start_delay,
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Still within the start delay (Kuzzle's STARTING state).
    pub fn is_starting(&self) -> bool {
        self.born.elapsed() < self.start_delay
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Enter the shutting-down state; true the first time only.
    pub fn begin_shutdown(&self) -> bool {
        !self.shutting_down.swap(true, Ordering::AcqRel)
    }

    /// Count one HTTP request in flight until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Wait until no HTTP request is in flight, or `deadline`; true when none is left.
    pub async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starting_then_serving() {
        let l = Lifecycle::new(Duration::from_secs(2));
        assert!(l.is_starting());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!l.is_starting());
        assert!(!Lifecycle::new(Duration::ZERO).is_starting());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_once_and_in_flight_wait() {
        let l = Arc::new(Lifecycle::new(Duration::ZERO));
        assert!(!l.is_shutting_down());
        assert!(l.begin_shutdown());
        assert!(!l.begin_shutdown(), "only the first call begins it");
        assert!(l.is_shutting_down());

        assert!(l.wait_idle(Instant::now()).await, "nothing in flight");
        let a = l.enter();
        let b = l.enter();
        assert_eq!(l.in_flight(), 2);
        assert!(!l.wait_idle(Instant::now() + Duration::from_secs(1)).await, "times out with requests left");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.wait_idle(Instant::now() + Duration::from_secs(60)).await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request still in flight");
        drop(b);
        assert!(waiter.await.unwrap());
        assert_eq!(l.in_flight(), 0);
    }
}
