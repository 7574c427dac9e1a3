//! Redis plumbing shared by the node's Redis tasks: targets, command connections, bounded calls,
//! reconnection backoff and stop-aware waits.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Value as RValue};
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::SimError;

/// Bound of every Redis call (connect, command, subscribe).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff: first wait, and the cap it doubles up to.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why one Redis exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis {0} timed out after {CALL_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("redis subscription ended")]
    Closed,
}

pub(crate) async fn bounded<T, E: Into<LinkError>>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(LinkError::Timeout(what)),
    }
}

/// Where Redis is: one server, or the seeds of a Redis Cluster.
pub(crate) enum RedisTargets {
    Single(redis::Client),
    Cluster(Vec<String>),
}

impl RedisTargets {
    /// Parse the configured URLs (no connection is made here).
    pub fn from_config(cfg: &SimConfig) -> Result<Option<RedisTargets>, SimError> {
        let Some(spec) = &cfg.redis else { return Ok(None) };
        if !cfg.redis_cluster {
            let client = redis::Client::open(spec.as_str())
                .map_err(|source| SimError::RedisUrl { url: spec.clone(), source })?;
            return Ok(Some(RedisTargets::Single(client)));
        }
        let seeds: Vec<String> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if seeds.is_empty() {
            return Err(SimError::Config("no Redis Cluster seed URL".into()));
        }
        ClusterClient::new(seeds.clone()).map_err(|source| SimError::RedisUrl { url: spec.clone(), source })?;
        Ok(Some(RedisTargets::Cluster(seeds)))
    }
}

/// A connection for commands (not pub/sub).
pub(crate) enum Cmds {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Cmds {
    pub(crate) async fn connect(t: &RedisTargets) -> Result<Cmds, LinkError> {
        match t {
            RedisTargets::Single(client) => {
                // Few internal retries: the registrar owns the backoff and re-registration.
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1);
                let m = bounded("connect", ConnectionManager::new_with_config(client.clone(), cfg)).await?;
                Ok(Cmds::Single(m))
            }
            RedisTargets::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(CALL_TIMEOUT)
                    .response_timeout(CALL_TIMEOUT)
                    .retries(2)
                    .build()?;
                Ok(Cmds::Cluster(bounded("connect", client.get_async_connection()).await?))
            }
        }
    }

    pub(crate) async fn call<T: FromRedisValue>(&mut self, what: &'static str, cmd: &Cmd) -> Result<T, LinkError> {
        match self {
            Cmds::Single(c) => bounded(what, cmd.query_async(c)).await,
            Cmds::Cluster(c) => bounded(what, cmd.query_async(c)).await,
        }
    }

    pub(crate) async fn publish(&mut self, channel: &str, payload: &str) -> Result<(), LinkError> {
        self.call::<RValue>("PUBLISH", redis::cmd("PUBLISH").arg(channel).arg(payload)).await.map(drop)
    }
}

/// The connection for a last call before leaving: the current one, or (Redis may be back since
/// the last failure) one bounded attempt at a new one.
pub(crate) async fn last_chance<'a>(
    conn: &'a mut Option<Cmds>,
    targets: &RedisTargets,
    stop: &CancellationToken,
) -> Option<&'a mut Cmds> {
    if conn.is_none() {
        *conn = unless_stopped(stop, Cmds::connect(targets)).await.and_then(Result::ok);
    }
    conn.as_mut()
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
