//! Data plane threads: one current-thread runtime per worker, each accepting on its own handle of
//! every client listener, so that a client connection, its pooled node connections and its
//! tunnel all live on one thread (no work stealing, no cross-thread wake-up on the request path).
//!
//! Why clones of one listening socket rather than `SO_REUSEPORT` groups: a binary upgrade and a
//! re-bind hand over one socket per address (no connection waits in the queue of a socket that is
//! about to close), and the kernel wakes whichever worker is idle first.

use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub use crate::core::worker::index;

/// The runtimes client connections are served on. Worker 0 is the runtime the gateway was
/// started on (it also runs the control plane: health checks, Redis, reload, ops, which are
/// light); the others run on threads of their own until [`Workers::stop`].
pub struct Workers {
    /// Each worker's runtime, worker 0 first: accept loops are spawned on every one.
    handles: Vec<Handle>,
    /// The threads of workers 1.., joined by [`Workers::stop`].
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Ends the worker threads' runtimes.
    stop: CancellationToken,
}

impl Workers {
    /// Only the current runtime (tests, embedding, the demo): whatever its flavour.
    pub fn current() -> Workers {
        Workers { handles: vec![Handle::current()], threads: Mutex::default(), stop: CancellationToken::new() }
    }

    /// `n` workers: the current runtime and `n - 1` threads with a current-thread runtime each.
    pub fn spawn(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let stop = CancellationToken::new();
        let mut handles = vec![Handle::current()];
        let mut threads = Vec::with_capacity(n - 1);
        for i in 1..n {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let stop = stop.clone();
            let t = std::thread::Builder::new().name(format!("kg-worker-{i}")).spawn(move || {
                crate::core::worker::set_index(i);
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(stop.cancelled());
            })?;
            threads.push(t);
            let handle = rx.recv().map_err(|_| std::io::Error::other("worker thread died at start"))??;
            handles.push(handle);
        }
        Ok(Workers { handles, threads: Mutex::new(threads), stop })
    }

    /// How many workers there are (how many connection pools each node keeps).
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Every worker's runtime, worker 0 first.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// End the worker threads (after the gateway stopped: what still runs there is dropped).
    pub fn stop(&self) {
        self.stop.cancel();
        for t in crate::util::lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_on_its_own_thread_and_knows_its_index() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let w = Workers::spawn(3).expect("workers");
            assert_eq!(w.handles().len(), 3);
            let mut seen = Vec::new();
            for h in w.handles() {
                let got = h.spawn(async { (index(), std::thread::current().id()) }).await.expect("task");
                seen.push(got);
            }
            let indexes: Vec<usize> = seen.iter().map(|s| s.0).collect();
            assert_eq!(indexes, vec![0, 1, 2]);
            assert_eq!(seen[0].1, std::thread::current().id(), "worker 0 is the calling runtime");
            assert!(seen[1].1 != seen[2].1 && seen[1].1 != seen[0].1, "one thread per worker");
            w.stop();
            assert!(w.handles()[1].spawn(async {}).await.is_err(), "a stopped worker runs nothing");
        });
    }
}
