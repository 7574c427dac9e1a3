//! Shared by the node's Redis tasks on top of `kuzzle_redis_link`: the target, backoff, stop-aware waits.

use std::time::Duration;

use kuzzle_redis_link::{Commands, Target};
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::SimError;

/// Reconnection backoff: first wait, and the cap it doubles up to.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where Redis is, from the configuration (`None` without Redis): the URLs are checked here, no
/// connection is made.
pub(crate) fn target_from_config(cfg: &SimConfig) -> Result<Option<Target>, SimError> {
    let Some(spec) = &cfg.redis else { return Ok(None) };
    let target = if cfg.redis_cluster {
        let seeds: Vec<String> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if seeds.is_empty() {
            return Err(SimError::Config("no Redis Cluster seed URL".into()));
        }
        Target::Cluster(seeds)
    } else {
        Target::Single(spec.clone())
    };
    target.check().map_err(|source| SimError::RedisUrl { url: spec.clone(), source })?;
    Ok(Some(target))
}

/// The connection for a last call before leaving: the current one, or (Redis may be back since
/// the last failure) one bounded attempt at a new one.
pub(crate) async fn last_chance<'a>(
    conn: &'a mut Option<Commands>,
    target: &Target,
    stop: &CancellationToken,
) -> Option<&'a Commands> {
    if conn.is_none() {
        *conn = unless_stopped(stop, Commands::connect(target)).await.and_then(Result::ok);
    }
    conn.as_ref()
}

/// Run `f` unless the node stops first (then `None`: the caller returns at once, saying nothing).
pub(crate) async fn unless_stopped<T>(stop: &CancellationToken, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        v = f => Some(v),
    }
}

/// Exponential backoff with jitter.
pub(crate) struct Backoff {
    /// The next wait before jitter: doubles at each step up to `BACKOFF_MAX`, back to `BACKOFF_MIN`
    /// on reset.
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    pub(crate) fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        // Up to +50 % jitter so that nodes restarted together do not retry in lockstep.
        let jitter = base.mul_f64(rand::random_range(0.0..0.5));
        base + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new();
        let first = b.step();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN.mul_f64(1.5));
        for _ in 0..20 {
            assert!(b.step() <= BACKOFF_MAX.mul_f64(1.5));
        }
        b.reset();
        assert!(b.step() <= BACKOFF_MIN.mul_f64(1.5));
    }
}
