//! What one simulated node is: its name, its Redis, its mode and the knobs it starts with.

use std::time::Duration;

use crate::SimError;

/// Default of [`SimConfig::shutdown_window`] (and of `--shutdown-window`).
pub const DEFAULT_SHUTDOWN_WINDOW: Duration = Duration::from_secs(1);

/// Configuration of one simulated node. Build it with [`SimConfig::new`] and change fields.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Node name: the `name` of its descriptor (its URL prefix on the gateway), the Kuzzle 2 node
    /// id, and the `node` field / `x-kuzzle-node` header of every answer.
    pub name: String,
    /// Redis URL (`redis://127.0.0.1:6379/0`), or with `redis_cluster` a comma-separated list of
    /// cluster seed URLs. `None`: no cluster behaviour at all.
    pub redis: Option<String>,
    /// `redis` lists the seeds of a Redis Cluster (database 0 only).
    pub redis_cluster: bool,
    /// Behave as a Kuzzle 2.11+ node (ID card with TTL) instead of a cluster-plugin 3.x node.
    pub kuzzle2: bool,
    /// Heartbeat period (plugin mode) or ID card refresh period (the card's TTL is twice this).
    pub heartbeat: Duration,
    /// Ready at start (health routes answer ok).
    pub ready: bool,
    /// Added before every HTTP answer but the health and control routes.
    pub latency: Duration,
    /// Share (0..=100) of HTTP requests, health and control routes aside, answering 500.
    pub error_percent: u8,
    /// `http` of the descriptor (`http://ip:port`); default: the bound address, an unspecified IP
    /// (0.0.0.0 / ::) being advertised as the loopback address.
    pub advertise_http: Option<String>,
    /// `pub` (and `router`) of the descriptor, the node's identity; default
    /// `tcp://<listen ip>:<listen port>`, unique per listen address (see `node::Identity`).
    pub pub_addr: Option<String>,
    /// Keep HTTP connections open between requests. Off by default because real Kuzzle 2 sends
    /// `Connection: close` on every HTTP response and closes; on for benchmarks and for tests about
    /// a client's connection pooling.
    pub keep_alive: bool,
    /// How long a graceful shutdown keeps the node up answering new requests with Kuzzle's 503
    /// `api.process.shutting_down` before it closes its WebSockets and stops (real Kuzzle: about
    /// 0.1 to 3 s). Requests already in progress are waited for besides.
    pub shutdown_window: Duration,
    /// How long after start `GET /_ready` answers 503 (Kuzzle's "starting" state); the node serves
    /// everything else meanwhile.
    pub start_delay: Duration,
    /// Append `-NNNNN` (random digits) to `name` at start: real Kuzzle 2 picks a new node id every
    /// time it starts, so a restarted node is a new node (a new ID card) to its cluster and to a
    /// gateway. Off by default: tests name their nodes.
    pub fresh_id: bool,
}

impl SimConfig {
    /// Defaults: no Redis, plugin mode, heartbeat 5 s, ready, no latency, no errors,
    /// `Connection: close` on every response, a 1 s shutdown window, no start delay.
    pub fn new(name: impl Into<String>) -> Self {
        SimConfig {
            name: name.into(),
            redis: None,
            redis_cluster: false,
            kuzzle2: false,
            heartbeat: Duration::from_secs(5),
            ready: true,
            latency: Duration::ZERO,
            error_percent: 0,
            advertise_http: None,
            pub_addr: None,
            keep_alive: false,
            shutdown_window: DEFAULT_SHUTDOWN_WINDOW,
            start_delay: Duration::ZERO,
            fresh_id: false,
        }
    }

    /// The name the node runs under: `name`, with a new `-NNNNN` each call when `fresh_id`.
    pub(crate) fn running_name(&self) -> String {
        if self.fresh_id {
            format!("{}-{:05}", self.name, rand::random_range(0..100_000u32))
        } else {
            self.name.clone()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SimError> {
        if self.name.is_empty() {
            return Err(SimError::Config("the node name is empty".into()));
        }
        // The name is also a header value and a Redis key part: keep it printable and short.
        if self.name.len() > 200 || !self.name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(SimError::Config(format!(
                "node name {:?} must be 1 to 200 visible ASCII characters",
                self.name
            )));
        }
        if self.heartbeat.is_zero() {
            return Err(SimError::Config("heartbeat must be more than zero".into()));
        }
        if self.error_percent > 100 {
            return Err(SimError::Config(format!("error percent {} is over 100", self.error_percent)));
        }
        if self.redis_cluster && self.redis.is_none() {
            return Err(SimError::Config("redis_cluster is set but no seed URL is given".into()));
        }
        Ok(())
    }
}
