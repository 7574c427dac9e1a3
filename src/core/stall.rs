//! Core: a deadline on silence (a node quiet in the middle of a body, a client that stopped
//! reading): no timer exists until the first wait, and none is touched while data flows.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The silence timer of one stream.
#[derive(Debug, Default)]
pub struct Stall {
    /// Made on the first wait and reset for the next ones (boxed: it rides in values that are moved
    /// whole, such as a response, and most of them never wait).
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait (the clock is read when a wait starts, not on every
    /// poll of it).
    armed: bool,
}

impl Stall {
    /// Data moved: the next wait starts a new clock.
    #[inline]
    pub fn progress(&mut self) {
        self.armed = false;
    }

    /// The stream is waiting: Ready once it has waited `limit` without progress.
    pub fn poll_wait(&mut self, limit: Duration, cx: &mut Context<'_>) -> Poll<()> {
        match self.timer.as_mut() {
            Some(t) if !self.armed => t.as_mut().reset(Instant::now() + limit),
            Some(_) => {}
            None => self.timer = Some(Box::pin(tokio::time::sleep(limit))),
        }
        self.armed = true;
        match self.timer.as_mut() {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}
