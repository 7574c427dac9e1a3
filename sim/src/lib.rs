//! Simulated Kuzzle node: HTTP routes, WebSocket real-time API and the cluster's Redis behaviour.
//!
//! # As real Kuzzle 2
//! Where Kuzzle 2 (measured on 2.56) does something a gateway can see, the sim does it too:
//! `Connection: close` on every HTTP response ([`SimConfig::keep_alive`] keeps connections
//! instead, for benchmarks and pooling tests); an `X-Kuzzle-Request-Id` per request; `/_ready`,
//! `/_healthcheck` and `/_healthCheck?services=`; the graceful shutdown of
//! [`SimHandle::shutdown`]. Deliberate differences: the sim sends `x-kuzzle-node: NAME` where
//! Kuzzle 2.56 sends `X-Kuzzle-Node: undefined` (tests read it; the gateway overwrites it with the
//! serving node's name, so a gateway user sees no difference); hyper writes a reason phrase in
//! the status line (`200 OK`) where Kuzzle's uWebSockets writes none.
//!
//! # Layout
//! - [`config`]: [`SimConfig`], what one node is (name, Redis, mode, knobs at start).
//! - `node`: the state one node shares between its tasks (identity, knobs, Redis pool view).
//! - `lifecycle`: starting / serving / shutting down, and the HTTP requests in flight.
//! - `stats`: counters for tests (health-route hits, connections, requests), `GET /_sim/stats`.
//! - `server`: the accept loop and one task per connection (hyper http1, upgrades).
//! - `api`: the Kuzzle API actions (WebSocket and HTTP alike) and their HTTP routes.
//! - `http`: the HTTP routes, in Kuzzle's response envelope; `envelope` builds that envelope.
//! - `ws`: one WebSocket session (Kuzzle JSON requests, pings, notifications).
//! - `realtime` and `filters`: rooms, channels and the Koncorde filter subset behind them.
//! - `cluster`: the Redis side (plugin 3.x registration and heartbeats, or a Kuzzle 2 ID card;
//!   cross-node notifications), with reconnection.
//! - `link`: Redis plumbing the Redis tasks share (targets, bounded calls, backoff).
//! - `util`: leaf helpers (epoch milliseconds, random UUIDs).
//! - `roomstate`: plugin 3.x's shared real-time state in Redis (rooms, counts, clients), written
//!   off the request path, best-effort.
//! - `cli`: the `kuzzle-node-sim` command line ([`cli_main`]).
//!
//! Every task is spawned on one [`tokio_util::task::TaskTracker`] and watches one
//! [`tokio_util::sync::CancellationToken`]: [`SimHandle::kill`] cancels it (no goodbye at all),
//! [`SimHandle::shutdown`] first goes through Kuzzle's graceful shutdown (new requests rejected
//! with 503 for a window, the cluster left, requests in flight finished, WebSockets closed).
#![forbid(unsafe_code)]

mod api;
mod cli;
mod cluster;
pub mod config;
mod envelope;
mod filters;
mod http;
mod lifecycle;
mod link;
mod node;
mod realtime;
mod roomstate;
mod server;
mod stats;
mod util;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cli::cli_main;
pub use config::SimConfig;
pub use ws::SHUTDOWN_CLOSE;

/// Why a simulated node could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot work (zero heartbeat, bad URL, bad percentage...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Redis URL (or a cluster seed URL) does not parse.
    #[error("invalid Redis URL {url:?}: {source}")]
    RedisUrl {
        /// The URL as given (the whole seed list for a Redis Cluster).
        url: String,
        /// The Redis client's parse error.
        #[source]
        source: redis::RedisError,
    },
    /// The listener's own address cannot be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a clean leave may take before the node stops anyway (Redis may be down).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for the node's tasks to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful shutdown gives WebSocket sessions to end once told to.
const WS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits, after its window, for HTTP requests still in flight (real
/// Kuzzle waits without limit).
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `start` waits for the first Redis registration and subscription before it returns
/// anyway (a node whose Redis is down still serves, and keeps retrying).
const FIRST_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// A running simulated node. Dropping it without [`SimHandle::shutdown`] acts as
/// [`SimHandle::kill`].
pub struct SimHandle {
    /// The address the node serves HTTP and WebSocket on (the listener's local address).
    pub addr: SocketAddr,
    /// The state the node's tasks share: name, identity, knobs, stats, lifecycle, rooms.
    node: Arc<node::Node>,
    /// Cancelled to stop every task of this node.
    stop: CancellationToken,
    /// Cancelled at the end of a graceful shutdown's window: WebSocket sessions end.
    closing: CancellationToken,
    /// Every task of this node, so shutdown can wait for them.
    tracker: TaskTracker,
    /// The Redis side, when the node has one: asked to say goodbye on a clean leave.
    cluster: Option<cluster::ClusterLink>,
}

impl SimHandle {
    /// The node's name (also its URL prefix on the gateway; with `fresh_id`, with its suffix).
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// The node's identity in the cluster protocol: its `pub` address (`tcp://ip:port`).
    pub fn pub_addr(&self) -> &str {
        &self.node.identity.pub_addr
    }

    /// The node's random UUID (as in plugin 3.x).
    pub fn uuid(&self) -> &str {
        &self.node.identity.uuid
    }

    /// The descriptor this node publishes right now (`{uuid, pub, router, ready, name, http}`).
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::to_value(self.node.descriptor()).unwrap_or(serde_json::Value::Null)
    }

    /// Ready knob: health routes answer "ok"/200 when true, "ko"/404 (503 for `/_healthCheck`
    /// and `/_ready`) when false; the next heartbeat carries the new flag. `/_healthcheck`
    /// (liveness) answers 200 either way.
    pub fn set_ready(&self, ready: bool) {
        self.node.set_ready(ready);
    }

    /// Latency knob: added before every HTTP answer but the health and `/_sim` control routes.
    pub fn set_latency(&self, latency: Duration) {
        self.node.set_latency(latency);
    }

    /// Errors knob: that share (0..=100) of HTTP requests, health and control routes aside,
    /// answer a 500 envelope.
    pub fn set_error_percent(&self, percent: u8) {
        self.node.set_error_percent(percent);
    }

    /// Counters for tests: hits per health route, connections, requests (as `GET /_sim/stats`).
    pub fn stats(&self) -> serde_json::Value {
        self.node.stats.to_json()
    }

    /// Graceful shutdown, as Kuzzle 2's on SIGTERM: log "Initiating shutdown...", then for the
    /// configured window ([`SimConfig::shutdown_window`]) answer every new HTTP request and
    /// WebSocket API request with 503 (`/_ready` 503, `/_healthcheck` 200) while requests already
    /// in progress finish; real-time subscriptions go and the node leaves the cluster at once
    /// (`cluster:remove` + `SREM cluster:discovery`, or the Kuzzle 2 ID card deleted and removed
    /// from its index), as Kuzzle's `kuzzle:shutdown` handlers do. After the window and the last
    /// request in flight, WebSockets are closed (see `ws::SHUTDOWN_CLOSE`), the listener closes
    /// and every task stops.
    pub async fn shutdown(mut self) {
        let node = self.node.clone();
        node.lifecycle.begin_shutdown();
        tracing::info!(node = %node.name, "Initiating shutdown...");
        let window_end = tokio::time::Instant::now() + node.shutdown_window;
        node.realtime.clear_subscriptions();
        if let Some(link) = self.cluster.take() {
            link.leave(LEAVE_TIMEOUT).await;
        }
        tokio::time::sleep_until(window_end).await;
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_TIMEOUT;
        if !node.lifecycle.wait_idle(deadline).await {
            tracing::warn!(
                node = %node.name,
                "{} HTTP requests still in flight {IN_FLIGHT_TIMEOUT:?} after the shutdown window; stopping anyway",
                node.lifecycle.in_flight()
            );
        }
        self.closing.cancel();
        // Each session ends on its own (after its close frame, when there is one).
        let closed_by = tokio::time::Instant::now() + WS_CLOSE_TIMEOUT;
        while node.realtime.connections() > 0 && tokio::time::Instant::now() < closed_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tracker.wait()).await.is_err() {
            tracing::warn!(node = %node.name, "some tasks did not stop within {STOP_TIMEOUT:?}");
        }
        tracing::info!(node = %node.name, "Halted.");
    }

    /// Abrupt stop, like SIGKILL: every task and connection is cancelled, nothing is said to Redis
    /// (the discovery member stays, a Kuzzle 2 ID card expires by itself).
    pub fn kill(mut self) {
        self.cluster.take();
        self.closing.cancel();
        self.stop.cancel();
        self.tracker.close();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // Idempotent: after shutdown or kill this changes nothing.
        self.stop.cancel();
        self.tracker.close();
    }
}

/// Start a simulated node on `listener`; returns once it serves (and, with Redis, once its first
/// registration and subscription were attempted, so a test can rely on them).
pub async fn start(mut cfg: SimConfig, listener: TcpListener) -> Result<SimHandle, SimError> {
    cfg.name = cfg.running_name();
    cfg.fresh_id = false;
    cfg.validate()?;
    let addr = listener.local_addr()?;
    let targets = link::target_from_config(&cfg)?;
    let node = Arc::new(node::Node::new(&cfg, addr));
    let stop = CancellationToken::new();
    let closing = CancellationToken::new();
    let tracker = TaskTracker::new();

    let mut link = targets.map(|t| cluster::ClusterLink::spawn(t, node.clone(), &stop, &tracker));
    // The real-time side publishes cross-node notifications through the link, when there is one.
    let publisher = link.as_ref().map(|l| l.publisher());
    let server = server::Server::new(node.clone(), publisher, stop.clone(), closing.clone(), tracker.clone());
    tracker.spawn(server.run(listener));

    if let Some(l) = &mut link {
        l.first_attempt(FIRST_REGISTRATION_TIMEOUT).await;
    }
    tracing::info!(node = %node.name, %addr, "serving");
    Ok(SimHandle { addr, node, stop, closing, tracker, cluster: link })
}
