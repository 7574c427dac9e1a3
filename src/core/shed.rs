//! Core: WebSocket rebalancing's hook in a node: a draw asks some of its tunnels to close; every
//! tunnel of the node wakes, the first ones that qualify close, the others wait again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// The draws of one node (one per `Backend`; the fleet task draws, tunnels answer).
#[derive(Debug)]
pub struct Shed {
    /// Cancelled to wake this node's tunnels for a draw, then replaced. A child of the node's kill
    /// token, so a kill (DOWN, MAINT) wakes the same waiters: a tunnel waits on one token only.
    wave: ArcSwap<CancellationToken>,
    /// Tunnels the current draw may still close.
    budget: AtomicU64,
    /// Only a tunnel opened before this (epoch ms) may be drawn: a client moved once in a
    /// rebalancing opened its new tunnel after the rebalancing began, so it is never drawn again
    /// in the same one.
    before_ms: AtomicU64,
    /// Tunnels closed by draws since start (for stats).
    closed: AtomicU64,
}

impl Shed {
    /// Draws of a node whose kill token is `kill`.
    pub fn new(kill: &CancellationToken) -> Shed {
        Shed {
            wave: ArcSwap::from_pointee(kill.child_token()),
            budget: AtomicU64::new(0),
            before_ms: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }
    }

    /// The token a tunnel of this node waits on now.
    pub fn wave(&self) -> CancellationToken {
        (**self.wave.load()).clone()
    }

    /// The node's kill token was replaced by `kill`: later waves descend from it.
    pub fn rebase(&self, kill: &CancellationToken) {
        self.wave.store(Arc::new(kill.child_token()));
    }

    /// Ask `n` tunnels opened before `before_ms` to close (a draw replaces the previous one's
    /// budget). Every tunnel of the node wakes once.
    pub fn draw(&self, n: u64, before_ms: u64, kill: &CancellationToken) {
        self.before_ms.store(before_ms, Ordering::Relaxed);
        self.budget.store(n, Ordering::Release);
        let old = self.wave.swap(Arc::new(kill.child_token()));
        old.cancel();
    }

    /// Called by a tunnel opened at `opened_ms` that a wave woke: true when it is drawn (it must
    /// close now), false when it should wait again.
    pub fn drawn(&self, opened_ms: u64) -> bool {
        if opened_ms >= self.before_ms.load(Ordering::Relaxed) {
            return false;
        }
        let took = self.budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1)).is_ok();
        if took {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    /// What the current draw has not closed yet (no tunnel qualified, or not woken yet).
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Acquire)
    }

    /// End the current draw: no tunnel closes for it any more.
    pub fn cancel_draw(&self) {
        self.budget.store(0, Ordering::Release);
    }

    /// Tunnels closed by draws since start.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draw_wakes_every_waiter_and_closes_only_old_tunnels_up_to_its_budget() {
        let kill = CancellationToken::new();
        let s = Shed::new(&kill);
        let w = s.wave();
        assert!(!w.is_cancelled());
        s.draw(2, 1000, &kill);
        assert!(w.is_cancelled(), "the waiters of the old wave wake");
        assert!(!s.wave().is_cancelled(), "a fresh wave to wait on");
        assert!(!s.drawn(1000), "opened after the rebalancing began: never drawn");
        assert!(s.drawn(10) && s.drawn(20));
        assert!(!s.drawn(30), "budget spent");
        assert_eq!((s.budget(), s.closed()), (0, 2));
        s.draw(5, 1000, &kill);
        s.cancel_draw();
        assert!(!s.drawn(1));
    }

    #[test]
    fn a_kill_wakes_the_waiters_of_the_wave_too() {
        let kill = CancellationToken::new();
        let s = Shed::new(&kill);
        let w = s.wave();
        kill.cancel();
        assert!(w.is_cancelled());
        let next = CancellationToken::new();
        s.rebase(&next);
        assert!(!s.wave().is_cancelled());
    }
}
