//! The Redis link layer of kuzzle-gateway and kuzzle-node-sim: one Redis or a Redis Cluster, bounded commands, RESP3 pub/sub, masters, SCAN and pipelines.
//!
//! # Pieces
//! - [`Target`]: where Redis is (one server URL, or the seed URLs of a Redis Cluster).
//! - [`Commands`]: the command connection (cheap to clone; reconnects by itself).
//! - [`Subscription`]: a dedicated RESP3 connection whose pushes go to a caller's sender.
//! - [`Master`]: one direct connection per master, for [`Master::scan`] and [`Master::pipeline`].
//! - [`CallError`]: why a call failed; every call is bounded by [`CALL_TIMEOUT`] ([`bounded`]).
//! - [`redact`] and [`parse_masters`]: helpers for logs and `CLUSTER NODES`.
//!
//! Nothing here retries at the caller's level or runs a task: reconnection policy (backoff,
//! re-registration, re-subscription of a single server) belongs to the caller.
#![forbid(unsafe_code)]

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};

/// Bound on one Redis command (and on one connection attempt).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys one SCAN walk may visit before it stops: bounds time and memory.
pub const MAX_SCAN_KEYS: usize = 1_000_000;
/// Largest wait of a single-server command connection between its own reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// A failed Redis call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call (named by the `&str`) did not finish within [`CALL_TIMEOUT`].
    #[error("Redis {0} timed out after {CALL_TIMEOUT:?}")]
    Timeout(&'static str),
    /// Redis (or the client) answered the call named by the `&str` with an error.
    #[error("Redis {0}: {1}")]
    Redis(&'static str, redis::RedisError),
    /// The Redis Cluster's shape does not allow the call (no live master, wrong target...).
    #[error("Redis Cluster: {0}")]
    Topology(String),
    /// A subscription's connection ended (its pushes stopped, or it was disconnected).
    #[error("Redis subscription ended")]
    Closed,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server, by URL (`redis://host:port/db`).
    Single(String),
    /// A Redis Cluster, by the URLs of some of its nodes (the client learns the rest).
    Cluster(Vec<String>),
}

impl Target {
    /// Whether the URL(s) parse; no connection is made.
    pub fn check(&self) -> redis::RedisResult<()> {
        match self {
            Target::Single(url) => redis::Client::open(url.as_str()).map(drop),
            Target::Cluster(seeds) => ClusterClient::new(seeds.clone()).map(drop),
        }
    }

    /// A client for `url` that speaks RESP3 (needed for pushes on a multiplexed connection).
    fn resp3_client(url: &str) -> Result<redis::Client, CallError> {
        let info = url.into_connection_info().map_err(|e| CallError::Redis("URL", e))?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        redis::Client::open(info.set_redis_settings(settings)).map_err(|e| CallError::Redis("URL", e))
    }

    /// A cluster client builder with the call bounds (and two internal retries per command).
    fn cluster_builder(seeds: &[String]) -> ClusterClientBuilder {
        ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(CALL_TIMEOUT)
            .response_timeout(CALL_TIMEOUT)
            .retries(2)
    }
}

/// Run `f` (a Redis call named `what`) within [`CALL_TIMEOUT`].
pub async fn bounded<T>(
    what: &'static str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Err(_) => Err(CallError::Timeout(what)),
        Ok(r) => r.map_err(|e| CallError::Redis(what, e)),
    }
}

/// The command connection (not for pub/sub). Cheap to clone: clones share one connection.
#[derive(Clone)]
pub enum Commands {
    /// One server, through a connection manager that reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster; the client follows the slot map and reconnects by itself.
    Cluster(ClusterConnection),
}

impl Commands {
    /// Connect to `t`. A single Redis connects lazily (this never fails while Redis is down: the
    /// first command does); a cluster needs one reachable seed to learn the slot map.
    pub async fn connect(t: &Target) -> Result<Commands, CallError> {
        match t {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| CallError::Redis("URL", e))?;
                // Few internal retries: callers own their backoff and what follows a reconnection.
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(RECONNECT_MAX_DELAY);
                let m =
                    ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| CallError::Redis("connect", e))?;
                Ok(Commands::Single(m))
            }
            Target::Cluster(seeds) => {
                let client =
                    Target::cluster_builder(seeds).build().map_err(|e| CallError::Redis("cluster client", e))?;
                let c = bounded("cluster connect", client.get_async_connection()).await?;
                Ok(Commands::Cluster(c))
            }
        }
    }

    /// Run `cmd` (named `what` in errors) and convert its answer.
    pub async fn query<T: FromRedisValue>(&self, what: &'static str, cmd: &Cmd) -> Result<T, CallError> {
        match self {
            Commands::Single(m) => bounded(what, cmd.query_async(&mut m.clone())).await,
            Commands::Cluster(c) => bounded(what, cmd.query_async(&mut c.clone())).await,
        }
    }

    /// `PUBLISH channel payload` (on a cluster, it reaches subscribers on every node).
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), CallError> {
        self.query::<redis::Value>("PUBLISH", redis::cmd("PUBLISH").arg(channel).arg(payload)).await.map(drop)
    }

    /// One direct connection per master (a single Redis is its own master, named by its
    /// redacted URL; a cluster master by `ip:port`), for SCAN walks.
    pub async fn masters(&self, t: &Target) -> Result<Vec<(String, Master)>, CallError> {
        match (self, t) {
            (Commands::Single(m), Target::Single(url)) => Ok(vec![(redact(url), Master::Manager(m.clone()))]),
            (Commands::Cluster(_), Target::Cluster(_)) => {
                let nodes: String = self.query("CLUSTER NODES", redis::cmd("CLUSTER").arg("NODES")).await?;
                let addrs = parse_masters(&nodes);
                if addrs.is_empty() {
                    return Err(CallError::Topology("CLUSTER NODES lists no live master".into()));
                }
                let mut out = Vec::with_capacity(addrs.len());
                for a in addrs {
                    let client =
                        redis::Client::open(format!("redis://{a}/0")).map_err(|e| CallError::Redis("master URL", e))?;
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CALL_TIMEOUT))
                        .set_response_timeout(Some(CALL_TIMEOUT));
                    let c =
                        bounded("master connect", client.get_multiplexed_async_connection_with_config(&cfg)).await?;
                    out.push((a, Master::Direct(c)));
                }
                Ok(out)
            }
            _ => Err(CallError::Topology("connection does not match the configured target".into())),
        }
    }
}

/// A connection to one master.
pub enum Master {
    /// A single Redis: the command connection itself.
    Manager(ConnectionManager),
    /// One master of a Redis Cluster, connected directly.
    Direct(MultiplexedConnection),
}

impl Master {
    /// Run `cmd` (named `what` in errors) on this master.
    pub async fn query<T: FromRedisValue>(&mut self, what: &'static str, cmd: &Cmd) -> Result<T, CallError> {
        match self {
            Master::Manager(m) => bounded(what, cmd.query_async(m)).await,
            Master::Direct(c) => bounded(what, cmd.query_async(c)).await,
        }
    }

    /// Every key matching `pattern` on this master (SCAN, never KEYS), up to [`MAX_SCAN_KEYS`].
    pub async fn scan(&mut self, pattern: &str) -> Result<Vec<String>, CallError> {
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query("SCAN", redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000))
                .await?;
            keys.extend(batch);
            if next == 0 || keys.len() >= MAX_SCAN_KEYS {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Run the pipeline `p` (named `what` in errors) on this master; its keys must all live on
    /// this master (on a cluster, keys found by [`Master::scan`] on it do).
    pub async fn pipeline<T: FromRedisValue>(
        &mut self,
        what: &'static str,
        p: &redis::Pipeline,
    ) -> Result<T, CallError> {
        match self {
            Master::Manager(m) => bounded(what, p.query_async(m)).await,
            Master::Direct(c) => bounded(what, p.query_async(c)).await,
        }
    }
}

/// `ip:port` of every master not flagged as failing, from the text of `CLUSTER NODES`.
pub fn parse_masters(nodes: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else { continue };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|x| x.starts_with("fail") || *x == "noaddr") {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let a = addr.split('@').next().unwrap_or("");
        if !a.is_empty() && !a.starts_with(':') {
            out.push(a.to_string());
        }
    }
    out
}

/// A live subscription; dropping it closes its connection.
pub enum Subscription {
    /// One server: a RESP3 multiplexed connection. It does not re-subscribe after a
    /// disconnection (see [`Subscription::ends`]): the caller opens a new one.
    Single(MultiplexedConnection),
    /// A Redis Cluster: the client re-subscribes by itself after a reconnection or a failover.
    Cluster(ClusterConnection),
}

impl Subscription {
    /// Connect a dedicated RESP3 connection whose pushes (messages, subscription confirmations,
    /// disconnection notices) go to `tx`, and subscribe it to `channels`.
    pub async fn open(
        t: &Target,
        channels: &[String],
        tx: impl redis::aio::AsyncPushSender,
    ) -> Result<Subscription, CallError> {
        match t {
            Target::Single(url) => {
                let client = Target::resp3_client(url)?;
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_push_sender(tx);
                let mut c = bounded("connect", client.get_multiplexed_async_connection_with_config(&cfg)).await?;
                bounded("SUBSCRIBE", c.subscribe(channels)).await?;
                Ok(Subscription::Single(c))
            }
            Target::Cluster(seeds) => {
                // Classic PUBLISH reaches subscribers on every cluster node.
                let client = Target::cluster_builder(seeds)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()
                    .map_err(|e| CallError::Redis("cluster client", e))?;
                let mut c = bounded("cluster connect", client.get_async_connection()).await?;
                bounded("SUBSCRIBE", c.subscribe(channels)).await?;
                Ok(Subscription::Cluster(c))
            }
        }
    }

    /// Whether the client re-subscribes by itself after losing a connection (a cluster does);
    /// when it does, a failed ping may be transient.
    pub fn resubscribes_itself(&self) -> bool {
        matches!(self, Subscription::Cluster(_))
    }

    /// Whether `push` means this subscription is gone for good (a single server's
    /// disconnection notice), so the caller must open a new one.
    pub fn ends(&self, push: &PushInfo) -> bool {
        push.kind == PushKind::Disconnection && !self.resubscribes_itself()
    }

    /// A PING on the subscription's own connection (RESP3 allows commands there): proves it is
    /// alive.
    pub async fn ping(&mut self) -> Result<(), CallError> {
        match self {
            Subscription::Single(c) => {
                bounded("PING", redis::cmd("PING").query_async::<redis::Value>(c)).await.map(drop)
            }
            Subscription::Cluster(c) => bounded("PING", c.req_packed_command(&redis::cmd("PING"))).await.map(drop),
        }
    }
}

/// A Redis URL without its credentials, for logs and status.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_from_cluster_nodes() {
        let t = "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
                 b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922\n\
                 c3 127.0.0.1:7003@17003 master,fail - 0 0 3 connected\n\
                 d4 127.0.0.1:7004@17004 slave b2 0 0 2 connected\n\
                 e5 :0@0 master,noaddr - 0 0 4 disconnected\n";
        assert_eq!(parse_masters(t), vec!["127.0.0.1:7001".to_string(), "127.0.0.1:7002".to_string()]);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn check_parses_without_connecting() {
        assert!(Target::Single("redis://127.0.0.1:1/0".into()).check().is_ok());
        assert!(Target::Single("not a url".into()).check().is_err());
        assert!(Target::Cluster(vec!["redis://127.0.0.1:1".into()]).check().is_ok());
    }
}
