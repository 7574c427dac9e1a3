//! The state one simulated node shares between its tasks: identity, knobs, real-time rooms and
//! the pool of nodes it has heard of on Redis.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::SimConfig;
use crate::lifecycle::Lifecycle;
use crate::realtime::Realtime;
use crate::stats::Stats;
use crate::util::{now_ms, random_uuid};

/// Kuzzle version reported by `server:info` in plugin (Kuzzle 1.x) mode.
const KUZZLE1_VERSION: &str = "1.10.3";
/// Kuzzle version reported in `--kuzzle2` mode (the current 2.x release).
const KUZZLE2_VERSION: &str = "2.56.0";
/// Most nodes the pool view keeps.
const POOL_CAP: usize = 512;

/// How the node names itself on the cluster protocol.
///
/// The default rule, so that every sim on one machine has a distinct identity: with the bound
/// address `IP:PORT` (an unspecified IP such as 0.0.0.0 or :: being replaced by the loopback
/// address), `pub` and `router` are both `tcp://IP:PORT` and `http` is `http://IP:PORT`.
/// `--pub` overrides `pub` and `router`; `--advertise-http` overrides `http`.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Random UUID, as each plugin 3.x node has.
    pub uuid: String,
    /// The node's identity in the plugin's pool (`tcp://ip:port`).
    pub pub_addr: String,
    /// The plugin's ZeroMQ router address; the sim has none, so it repeats `pub`.
    pub router: String,
    /// Where clients' HTTP / WebSocket traffic for this node goes.
    pub http: String,
    /// The IP written in the Kuzzle 2 ID card.
    pub ip: IpAddr,
}

impl Identity {
    fn new(cfg: &SimConfig, bound: SocketAddr) -> Identity {
        let ip = match bound.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        };
        let advertised = SocketAddr::new(ip, bound.port());
        let pub_addr = cfg.pub_addr.clone().unwrap_or_else(|| format!("tcp://{advertised}"));
        Identity {
            uuid: random_uuid(),
            router: pub_addr.clone(),
            pub_addr,
            http: cfg.advertise_http.clone().unwrap_or_else(|| format!("http://{advertised}")),
            ip,
        }
    }
}

/// The plugin 3.x node descriptor, extended with `name` and `http`; field order is fixed by the
/// struct so the JSON text is stable.
#[derive(Debug, Serialize)]
pub(crate) struct Descriptor<'a> {
    /// The node's random UUID (plugin 3.x's node id).
    pub uuid: &'a str,
    #[serde(rename = "pub")]
    /// `pub`: the node's identity in the pool (`cluster:remove` names the node by it).
    pub pub_addr: &'a str,
    /// `router`: the plugin's ZeroMQ router address (the sim repeats `pub`).
    pub router: &'a str,
    /// The ready knob, so the pool knows whether the node takes traffic.
    pub ready: bool,
    /// The node's name (its URL prefix on the gateway).
    pub name: &'a str,
    /// Where clients' HTTP / WebSocket traffic for the node goes.
    pub http: &'a str,
}

/// The member this node adds to `cluster:discovery` (and removes, as the very same string).
#[derive(Debug, Serialize)]
pub(crate) struct DiscoveryMember<'a> {
    #[serde(rename = "pub")]
    /// `pub`: the node's identity in the pool.
    pub pub_addr: &'a str,
    /// `router`: the plugin's ZeroMQ router address (the sim repeats `pub`).
    pub router: &'a str,
    /// The node's name (its URL prefix on the gateway).
    pub name: &'a str,
    /// Where clients' HTTP / WebSocket traffic for the node goes.
    pub http: &'a str,
}

/// A node heard of on Redis, with when it was last heard of.
struct PoolEntry {
    /// Its descriptor as heard, reported as is by the status route.
    descriptor: Value,
    /// When it was last heard of: after 2 x heartbeat of silence the node is gone.
    seen: Instant,
}

/// Everything one node's tasks share.
pub(crate) struct Node {
    /// The running name (with `fresh_id`'s suffix): logs, `node` of every answer, descriptor `name`,
    /// Kuzzle 2 ID card key.
    pub name: String,
    /// How the node names itself on the cluster protocol (uuid, pub, router, http, ip).
    pub identity: Identity,
    /// Kuzzle 2 mode: an ID card in Redis instead of plugin 3.x's registration and shared real-time
    /// state; also the version `server:info` reports.
    pub kuzzle2: bool,
    /// Heartbeat period: registration refresh, ID card TTL and pool expiry (both twice this), ping
    /// period of the subscription.
    pub heartbeat: Duration,
    /// Epoch ms at start (Kuzzle 2 ID card `birthdate`).
    pub birthdate: u64,
    /// Whether a Redis is configured (the status route then reports the pool heard on it).
    pub clustered: bool,
    /// Ready knob; a watch so the Redis side publishes a flip at once.
    ready: watch::Sender<bool>,
    /// Latency knob, in nanoseconds (atomics: read on every request, no lock).
    latency_ns: AtomicU64,
    /// Errors knob, 0..=100.
    error_percent: AtomicU8,
    /// Other nodes heard of on `cluster:heartbeat` / `cluster:ready`, keyed by `pub`.
    pool: Mutex<HashMap<String, PoolEntry>>,
    /// Real-time rooms and the WebSocket connections subscribed to them.
    pub realtime: Realtime,
    /// Keep HTTP connections open between requests (else `Connection: close`, as Kuzzle 2).
    pub keep_alive: bool,
    /// How long a graceful shutdown rejects new requests before the node stops.
    pub shutdown_window: Duration,
    /// Starting / serving / shutting down, and the HTTP requests in flight.
    pub lifecycle: Arc<Lifecycle>,
    /// Counters for tests (`/_sim/stats`).
    pub stats: Stats,
}

impl Node {
    pub fn new(cfg: &SimConfig, bound: SocketAddr) -> Node {
        let identity = Identity::new(cfg, bound);
        Node {
            realtime: Realtime::new(cfg.name.clone()),
            name: cfg.name.clone(),
            identity,
            kuzzle2: cfg.kuzzle2,
            heartbeat: cfg.heartbeat,
            birthdate: now_ms(),
            clustered: cfg.redis.is_some(),
            ready: watch::Sender::new(cfg.ready),
            latency_ns: AtomicU64::new(duration_ns(cfg.latency)),
            error_percent: AtomicU8::new(cfg.error_percent.min(100)),
            pool: Mutex::new(HashMap::new()),
            keep_alive: cfg.keep_alive,
            shutdown_window: cfg.shutdown_window,
            lifecycle: Arc::new(Lifecycle::new(cfg.start_delay)),
            stats: Stats::default(),
        }
    }

    /// `GET /_ready` answers 200: the ready knob is on, and the node is neither starting nor
    /// shutting down (as Kuzzle 2's: 200 only in its RUNNING state).
    pub fn is_ready_for_traffic(&self) -> bool {
        self.is_ready() && !self.lifecycle.is_starting() && !self.lifecycle.is_shutting_down()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn set_ready(&self, ready: bool) {
        // Only a real flip wakes the Redis side (which then heartbeats at once).
        self.ready.send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    pub fn watch_ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed))
    }

    pub fn set_latency(&self, latency: Duration) {
        self.latency_ns.store(duration_ns(latency), Ordering::Relaxed);
    }

    pub fn error_percent(&self) -> u8 {
        self.error_percent.load(Ordering::Relaxed)
    }

    pub fn set_error_percent(&self, percent: u8) {
        self.error_percent.store(percent.min(100), Ordering::Relaxed);
    }

    pub fn kuzzle_version(&self) -> &'static str {
        if self.kuzzle2 {
            KUZZLE2_VERSION
        } else {
            KUZZLE1_VERSION
        }
    }

    pub fn descriptor(&self) -> Descriptor<'_> {
        Descriptor {
            uuid: &self.identity.uuid,
            pub_addr: &self.identity.pub_addr,
            router: &self.identity.router,
            ready: self.is_ready(),
            name: &self.name,
            http: &self.identity.http,
        }
    }

    pub fn discovery_member(&self) -> DiscoveryMember<'_> {
        DiscoveryMember {
            pub_addr: &self.identity.pub_addr,
            router: &self.identity.router,
            name: &self.name,
            http: &self.identity.http,
        }
    }

    /// A descriptor heard on `cluster:heartbeat` or `cluster:ready`.
    pub fn pool_seen(&self, descriptor: Value) {
        let Some(key) = descriptor.get("pub").and_then(Value::as_str).map(str::to_owned) else {
            tracing::debug!(node = %self.name, "descriptor without pub dropped: {descriptor}");
            return;
        };
        if key == self.identity.pub_addr {
            return; // this node is always reported from its live state
        }
        if let Ok(mut pool) = self.pool.lock() {
            // Heartbeats are network input: past a few hundred nodes, forget the silent ones first
            // and refuse newcomers rather than grow without bound.
            if pool.len() >= POOL_CAP && !pool.contains_key(&key) {
                let horizon = self.heartbeat.saturating_mul(2);
                pool.retain(|_, e| e.seen.elapsed() <= horizon);
                if pool.len() >= POOL_CAP {
                    tracing::warn!(node = %self.name, "pool full ({POOL_CAP} nodes): {key} ignored");
                    return;
                }
            }
            pool.insert(key, PoolEntry { descriptor, seen: Instant::now() });
        }
    }

    /// A node named by `pub` on `cluster:remove`.
    pub fn pool_remove(&self, pub_addr: &str) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.remove(pub_addr);
        }
    }

    /// `/_plugin/cluster/status`: `count`, `current` (this node) and `pool` (every node known,
    /// this one included, sorted by `pub`). A node not heard of for 2 x heartbeat is gone, as in
    /// the plugin.
    pub fn status(&self) -> Value {
        let current = serde_json::to_value(self.descriptor()).unwrap_or(Value::Null);
        let mut pool = vec![current.clone()];
        if self.clustered {
            let horizon = self.heartbeat.saturating_mul(2);
            if let Ok(mut p) = self.pool.lock() {
                p.retain(|_, e| e.seen.elapsed() <= horizon);
                pool.extend(p.values().map(|e| e.descriptor.clone()));
            }
        }
        pool.sort_by(|a, b| a["pub"].as_str().cmp(&b["pub"].as_str()));
        json!({"count": pool.len(), "current": current, "pool": pool})
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_identity_follows_the_bound_address() {
        let cfg = SimConfig::new("n1");
        let id = Identity::new(&cfg, "0.0.0.0:7512".parse().unwrap());
        assert_eq!(id.pub_addr, "tcp://127.0.0.1:7512");
        assert_eq!(id.router, id.pub_addr);
        assert_eq!(id.http, "http://127.0.0.1:7512");
        let id = Identity::new(&cfg, "10.0.0.5:17601".parse().unwrap());
        assert_eq!(id.pub_addr, "tcp://10.0.0.5:17601");
        let id = Identity::new(&cfg, "[::]:80".parse().unwrap());
        assert_eq!(id.pub_addr, "tcp://[::1]:80");
    }

    #[test]
    fn overrides() {
        let mut cfg = SimConfig::new("n1");
        cfg.pub_addr = Some("tcp://10.1.1.1:7511".into());
        cfg.advertise_http = Some("http://10.1.1.1:7512".into());
        let id = Identity::new(&cfg, "127.0.0.1:1".parse().unwrap());
        assert_eq!(id.pub_addr, "tcp://10.1.1.1:7511");
        assert_eq!(id.http, "http://10.1.1.1:7512");
    }
}
