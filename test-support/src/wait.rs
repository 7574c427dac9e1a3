//! Bounded waiting: the time limits every test shares and `eventually`, the one polling loop.

use std::future::Future;
use std::time::{Duration, Instant};

/// Bound of one awaited step (a response, a message, a state change).
pub const T: Duration = Duration::from_secs(10);

/// Bound of a process becoming ready (a sim printing its address, a Redis answering PING).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound of a convergence a test waits for: a node's state changed by checks or Redis, a gateway
/// following Redis, a demo's nodes joining. (A single step uses `T`.)
pub const WAIT: Duration = Duration::from_secs(20);

/// Pause between two polls of `eventually`.
pub const POLL: Duration = Duration::from_millis(20);

/// Poll `f` until it returns `Some`, every 20 ms, for at most `limit`; panics naming `what`.
pub async fn eventually<V, F, Fut>(limit: Duration, what: &str, f: F) -> V
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<V>>,
{
    eventually_every(limit, POLL, what, f).await
}

/// Poll `f` until it returns `Some`, every `every` (a test timing a transition polls more often),
/// for at most `limit`; panics naming `what`. The number of polls is bounded too (by `limit` /
/// `every`), so a fast-failing `f` cannot spin.
pub async fn eventually_every<V, F, Fut>(limit: Duration, every: Duration, what: &str, mut f: F) -> V
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<V>>,
{
    let deadline = Instant::now() + limit;
    let tries = limit.as_millis() / every.as_millis().max(1) + 2;
    for _ in 0..tries {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// One at a time: a test whose timings are the point (or that loads both cores for long: real
/// Kuzzle clusters, fleets of gateways, partitions) holds this for its whole run, so that no other
/// such test of its binary runs beside it. Process-wide: every module of a test binary shares it.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}
