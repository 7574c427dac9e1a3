//! Control plane: Redis access for membership, a thin layer over the shared `kuzzle_redis_link`.
//!
//! It reads the target from `[cluster]` and keeps the API the rest of `cluster` uses. Every call
//! has a bounded timeout; none of this runs on the request path.

use kuzzle_redis_link as link;
use redis::{Cmd, FromRedisValue};

use crate::control::config::ClusterSection;

pub use link::{parse_masters, redact, CallError, Master, CALL_TIMEOUT, MAX_SCAN_KEYS};

/// Where Redis is, from `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl Target {
    pub fn from_config(c: &ClusterSection) -> Option<Target> {
        match (&c.redis, &c.redis_cluster) {
            (Some(u), _) => Some(Target::Single(u.clone())),
            (None, Some(seeds)) if !seeds.is_empty() => Some(Target::Cluster(seeds.clone())),
            _ => None,
        }
    }

    /// The link layer's target (a copy: connecting is rare).
    fn link(&self) -> link::Target {
        match self {
            Target::Single(u) => link::Target::Single(u.clone()),
            Target::Cluster(s) => link::Target::Cluster(s.clone()),
        }
    }
}

/// The command connection (cheap to clone; reconnects by itself).
#[derive(Clone)]
pub struct Commands(link::Commands);

impl Commands {
    /// A single Redis connects lazily (never fails while Redis is down); a cluster needs one
    /// reachable seed to learn the slot map.
    pub async fn connect(t: &Target) -> Result<Commands, CallError> {
        link::Commands::connect(&t.link()).await.map(Commands)
    }

    pub async fn query<T: FromRedisValue>(&self, what: &'static str, cmd: &Cmd) -> Result<T, CallError> {
        self.0.query(what, cmd).await
    }

    /// One direct connection per master (a single Redis is its own master), for SCAN walks.
    pub async fn masters(&self, t: &Target) -> Result<Vec<(String, Master)>, CallError> {
        self.0.masters(&t.link()).await
    }
}

/// A live subscription; dropping it closes its connection.
pub struct Subscription(link::Subscription);

impl Subscription {
    /// Connect a dedicated RESP3 connection whose pushes go to `tx`, and subscribe.
    pub async fn open(
        t: &Target,
        channels: &[String],
        tx: impl redis::aio::AsyncPushSender,
    ) -> Result<Subscription, CallError> {
        link::Subscription::open(&t.link(), channels, tx).await.map(Subscription)
    }

    /// A command on the subscription's own connection (RESP3 allows it): proves it is alive.
    pub async fn ping(&mut self) -> Result<(), CallError> {
        self.0.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_config() {
        let mut c = ClusterSection::default();
        assert_eq!(Target::from_config(&c), None);
        c.redis_cluster = Some(vec!["redis://127.0.0.1:7001".into()]);
        assert_eq!(Target::from_config(&c), Some(Target::Cluster(vec!["redis://127.0.0.1:7001".into()])));
        assert_eq!(
            Target::from_config(&c).map(|t| t.link()),
            Some(link::Target::Cluster(vec!["redis://127.0.0.1:7001".into()]))
        );
        c.redis = Some("redis://127.0.0.1:6379/0".into());
        assert_eq!(Target::from_config(&c), Some(Target::Single("redis://127.0.0.1:6379/0".into())));
    }
}
