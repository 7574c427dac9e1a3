//! Core: which data-plane worker the current thread is, so that a request takes pooled node
//! connections of its own worker (a connection's task runs on the worker that opened it).

use std::cell::Cell;

thread_local! {
    /// Set once by the worker thread at its start; 0 elsewhere (worker 0 is the main thread).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker running on this thread: 0 on the main thread and on any thread that is no worker.
#[inline]
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Mark this thread as worker `i` (called by `crate::data::workers` on the thread it starts).
pub fn set_index(i: usize) {
    INDEX.with(|c| c.set(i));
}
