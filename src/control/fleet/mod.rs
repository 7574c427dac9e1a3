//! Control plane: several gateways act as one through Redis (`[fleet]`): operator states shared,
//! one fleet view, WebSockets spread again after a scale-out.
//!
//! One task per gateway owns the fleet's Redis connections. Each heartbeat it stores and publishes
//! this gateway's counters (per node) and configuration fingerprint, and reads every live
//! gateway's and the operator states in the same atomic step ([`wire::BEAT_SCRIPT`]); between
//! heartbeats, pub/sub brings the others' heartbeats and state changes at once. Redis is the only
//! shared engine: no consensus of our own, Redis orders the state changes ([`states`]).
//!
//! The data plane never waits on it: operator states land in the core (`Core::remember_admin`),
//! the other gateways' tunnels per node in `Backend::set_remote` (fleet-wide leastconn), and
//! rebalancing draws go to `Backend::draw_tunnels`. Keys: [`wire::Keys`] (one hash tag, TTLs).
//! Without `[fleet]` nothing is read or written.

pub mod fingerprint;
pub mod rebalance;
pub mod states;
pub mod view;
pub mod wire;

mod task;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kuzzle_redis_link::{redact, Commands, Subscription, Target};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use self::rebalance::{NodeInput, Rebalancer};
use self::states::States;
use self::view::{FleetView, GatewayView, NodeFleet, RebalanceView};
use self::wire::{Beat, GatewayMsg, Keys, NodeCount, Reject, StateRecord, REJECT_LABELS};
use crate::control::config::{Config, FleetSection};
use crate::core::backend::{AdminState, Membership};
use crate::core::{Core, Lifecycle};
use crate::util::{epoch_ms, lock};

/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pushes waiting for the task; past that, messages are dropped (and counted).
const PUSH_QUEUE: usize = 4096;
/// The subscription connection is pinged this often (a dead one is replaced).
const PING_EVERY: Duration = Duration::from_secs(2);
/// Housekeeping period: peers that fell silent leave, remote loads are refreshed, rebalancing
/// steps (its pace is finer than a heartbeat).
const TICK: Duration = Duration::from_millis(50);
/// Heartbeat period while rebalancing, at most: the others' counts must be fresh for their
/// reconnecting clients not to all pick the same node.
const FAST_BEAT: Duration = Duration::from_millis(250);
/// The official SDK reconnects a fixed 1 s after a close: a round settles after that, plus a few
/// heartbeats.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// A WebSocket younger than this is never drawn (its client may still be subscribing).
const MIN_TUNNEL_AGE_MS: u64 = 2000;
/// How long an ops state change waits for Redis before answering "applied here only".
const WRITE_WAIT: Duration = Duration::from_secs(3);

/// Where this gateway listens (client, ops), read late: the listeners start after the fleet.
pub type Addrs = Arc<dyn Fn() -> (Option<SocketAddr>, Option<SocketAddr>) + Send + Sync>;

/// Fleet counters (for /metrics).
#[derive(Debug, Default)]
pub struct FleetMetrics {
    /// 1 while the fleet's Redis link is healthy.
    pub connected: AtomicU64,
    /// Successful connections (the first one included).
    pub connects: AtomicU64,
    /// Failed Redis calls and connection attempts.
    pub errors: AtomicU64,
    /// Messages received on the fleet's channels.
    pub messages: AtomicU64,
    /// Dropped messages and records, by [`REJECT_LABELS`] index.
    pub dropped: [AtomicU64; REJECT_LABELS.len()],
    /// Operator states applied from the fleet.
    pub applied: AtomicU64,
    /// Operator states this gateway wrote.
    pub written: AtomicU64,
    /// WebSockets closed by rebalancing draws.
    pub draws: AtomicU64,
}

/// Another gateway, as its last heartbeat said.
#[derive(Debug, Clone)]
struct Peer {
    /// Its last heartbeat: name, instance, address, counters, configuration fingerprint.
    beat: Beat,
    /// When a new heartbeat of it last reached us (our clock).
    seen: Instant,
}

/// The Redis link, for the view.
#[derive(Debug, Default)]
struct Link {
    /// Where the fleet's Redis is (credentials hidden).
    target: Option<String>,
    /// Epoch ms of the current connection (None while away).
    since_ms: Option<u64>,
    /// The last failure, shown while reconnecting.
    last_error: Option<String>,
}

/// What ops and the stats read and the task writes (one lock, never held across an await).
struct Shared {
    /// The `[fleet]` in force (None: no fleet).
    section: Option<FleetSection>,
    /// The Redis link, for the view.
    link: Link,
    /// The other live gateways by `[fleet] name` (forgotten after `ttl` without a heartbeat).
    peers: BTreeMap<String, Peer>,
    /// This gateway's last heartbeat (the view shows it beside the others).
    me: Option<Beat>,
    /// Operator states: the last applied per node, and this gateway's not yet in Redis.
    states: States,
    /// WebSocket rebalancing as this gateway runs it, for the view.
    rebalance: RebalanceView,
    /// Another instance heartbeating under our name: (its instance, its address, when last heard;
    /// forgotten after `ttl`, e.g. the old process of a binary upgrade once it left).
    clash: Option<(String, String, Instant)>,
    /// Epoch second of the last warning about dropped input, and drops not logged since.
    last_warn: u64,
    /// Drops not logged since `last_warn` (reported with the next warning).
    suppressed: u64,
}

/// An operator state change for the task to write.
struct Write {
    /// The change, as taken by the ops API (no seq yet).
    record: StateRecord,
    /// Its seq once Redis stored it, or why it stays pending.
    reply: oneshot::Sender<Result<u64, String>>,
}

/// The fleet: handles for ops and the stats; the task does the Redis work.
pub struct Fleet {
    /// Operator states are applied here; snapshots give the nodes to count.
    core: Arc<Core>,
    /// The state ops and the stats read and the task writes.
    shared: Mutex<Shared>,
    /// Ops' state changes, to the task.
    tx: mpsc::Sender<Write>,
    /// Counters for /metrics.
    pub metrics: FleetMetrics,
    /// This process (a restarted gateway is another instance of the same name).
    instance: String,
    /// Epoch ms of this process' start (heartbeats carry it: uptime on the others' pages).
    started_ms: u64,
}

/// How an ops state change went.
#[derive(Debug, PartialEq, Eq)]
pub enum SetOutcome {
    /// No `[fleet]`: this gateway only.
    Local,
    /// Stored in Redis with this sequence number and published to the fleet.
    Shared(u64),
    /// Applied here; Redis did not take it (why): it is written when Redis answers again.
    Pending(String),
}

impl Fleet {
    /// Whether `[fleet]` is configured.
    pub fn enabled(&self) -> bool {
        lock(&self.shared).section.is_some()
    }

    fn name(&self) -> Option<String> {
        lock(&self.shared).section.as_ref().map(|f| f.name().to_string())
    }

    /// An operator's state change through this gateway's ops API: applied here at once, then
    /// shared with the fleet (waits a few seconds at most for Redis). The caller checked that the
    /// node exists.
    pub async fn set_state(&self, node: &str, state: AdminState) -> SetOutcome {
        let Some(name) = self.name() else {
            self.core.set_admin(node, state);
            return SetOutcome::Local;
        };
        let now = epoch_ms();
        let record = StateRecord { seq: 0, node: node.to_string(), state, by: name, at_ms: now };
        self.core.remember_admin(node, state);
        lock(&self.shared).states.local(record.clone(), now);
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Write { record, reply }).is_err() {
            return SetOutcome::Pending("the fleet task is busy or stopped".into());
        }
        match tokio::time::timeout(WRITE_WAIT, rx).await {
            Ok(Ok(Ok(seq))) => SetOutcome::Shared(seq),
            Ok(Ok(Err(e))) => SetOutcome::Pending(e),
            Ok(Err(_)) => SetOutcome::Pending("the fleet task stopped".into()),
            Err(_) => SetOutcome::Pending(format!("Redis did not answer within {WRITE_WAIT:?}")),
        }
    }

    /// Apply states read before the gateway started (see [`preload`]).
    pub fn seed(&self, records: Vec<StateRecord>) {
        let now = epoch_ms();
        let mut st = lock(&self.shared);
        for r in records {
            let node = r.node.clone();
            if let Some(s) = st.states.on_record(r, now) {
                self.core.remember_admin(&node, s);
            }
        }
    }

    /// Log a dropped input at most once a second (the rest are counted).
    fn dropped(&self, source: &str, r: &Reject) {
        if let Some(i) = REJECT_LABELS.iter().position(|l| *l == r.label()) {
            self.metrics.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
        let now = epoch_ms() / 1000;
        let mut st = lock(&self.shared);
        if st.last_warn != now {
            st.last_warn = now;
            let more = std::mem::take(&mut st.suppressed);
            drop(st);
            tracing::warn!(
                source,
                reason = r.label(),
                suppressed = more,
                "fleet: ignored a message or record from Redis ({r}); keeping the last good state"
            );
        } else {
            st.suppressed += 1;
        }
    }

    /// Totals per node over the fleet: this gateway's live counts plus the others' last
    /// heartbeats.
    fn node_totals(&self, st: &Shared) -> HashMap<String, NodeFleet> {
        let mut totals: HashMap<String, NodeFleet> = HashMap::new();
        for b in &self.core.snapshot().nodes {
            let t = totals.entry(b.name.clone()).or_default();
            t.tunnels += b.counters.tunnels.load(Ordering::Relaxed);
            t.sessions += b.active();
        }
        for p in st.peers.values() {
            for (n, c) in &p.beat.nodes {
                let t = totals.entry(n.clone()).or_default();
                t.tunnels += c.tunnels;
                t.sessions += c.active;
            }
        }
        totals
    }

    /// The live gateways, this one first.
    fn gateways(&self, st: &Shared) -> Vec<GatewayView> {
        let now = Instant::now();
        let now_ms = epoch_ms();
        let mut v = Vec::new();
        if let Some(me) = &st.me {
            let mut g = gateway_view(me, 0, true);
            g.uptime_ms = now_ms.saturating_sub(self.started_ms);
            // Live counts rather than the last heartbeat's.
            let f = &self.core.frontend;
            g.tunnels = f.tunnels.load(Ordering::Relaxed);
            g.connections = f.connections.load(Ordering::Relaxed) + g.tunnels;
            v.push(g);
        }
        for p in st.peers.values() {
            let age = now.saturating_duration_since(p.seen).as_millis() as u64;
            v.push(gateway_view(&p.beat, age, false));
        }
        let fps: Vec<&str> = v.iter().map(|g| g.fingerprint.as_str()).collect();
        let flags = view::config_differs(&fps);
        for (g, d) in v.iter_mut().zip(flags) {
            g.config_differs = d;
        }
        v
    }

    fn fleet_view(&self, st: &Shared, gateways: &[GatewayView]) -> Option<FleetView> {
        let f = st.section.as_ref()?;
        let cfg = self.core.config();
        Some(FleetView {
            name: f.name().to_string(),
            namespace: f.namespace.clone(),
            redis: st.link.target.clone().unwrap_or_else(|| describe(&target_of(f))),
            connected: self.metrics.connected.load(Ordering::Relaxed) == 1,
            connected_since: st.link.since_ms,
            last_error: st.link.last_error.clone(),
            heartbeat_ms: f.heartbeat.0.as_millis() as u64,
            ttl_ms: f.ttl.0.as_millis() as u64,
            fingerprint: cfg.fingerprint.clone(),
            configs_agree: !gateways.iter().any(|g| g.config_differs),
            name_clash: st.clash.as_ref().map(|(i, a, _)| format!("instance {i} at {a}")),
            pending_states: st.states.pending.len(),
            rebalance: st.rebalance.clone(),
        })
    }

    /// Add the fleet to a stats view: the gateways, per node the fleet's totals and who set its
    /// operator state and when. Nothing without `[fleet]`.
    pub fn fill(&self, v: &mut crate::ops::hastats::StatsView) {
        let st = lock(&self.shared);
        if st.section.is_none() {
            return;
        }
        let gateways = self.gateways(&st);
        let totals = self.node_totals(&st);
        for n in &mut v.nodes {
            n.fleet = Some(totals.get(&n.name).copied().unwrap_or_default());
            if let Some(k) = st.states.known.get(&n.name) {
                n.admin_by = Some(k.record.by.clone());
                n.admin_at_ms = Some(k.record.at_ms);
                n.admin_applied_ms = Some(k.applied_ms);
            }
        }
        v.fleet = self.fleet_view(&st, &gateways);
        v.gateways = Some(gateways);
    }

    /// The fleet's Prometheus families (empty without `[fleet]`).
    pub fn metrics_text(&self) -> String {
        let st = lock(&self.shared);
        let gateways = self.gateways(&st);
        let mut out = String::new();
        if let Some(v) = self.fleet_view(&st, &gateways) {
            view::metrics(&mut out, &v, gateways.len(), &self.metrics);
        }
        out
    }

    /// `GET /fleet/status`: the fleet as this gateway knows it, states and raw heartbeats included.
    pub fn status_json(&self) -> serde_json::Value {
        let st = lock(&self.shared);
        let gateways = self.gateways(&st);
        let Some(v) = self.fleet_view(&st, &gateways) else {
            return serde_json::json!({"enabled": false});
        };
        let totals: BTreeMap<String, NodeFleet> = self.node_totals(&st).into_iter().collect();
        let states: Vec<serde_json::Value> = st
            .states
            .known
            .values()
            .map(|k| {
                serde_json::json!({
                    "node": k.record.node, "state": k.record.state, "by": k.record.by, "at_ms": k.record.at_ms,
                    "seq": k.record.seq, "applied_ms": k.applied_ms, "pending": st.states.pending.contains_key(&k.record.node),
                })
            })
            .collect();
        serde_json::json!({
            "enabled": true,
            "fleet": v,
            "gateways": gateways,
            "nodes": totals,
            "states": states,
            "heartbeats": st.peers.values().map(|p| &p.beat).collect::<Vec<_>>(),
        })
    }
}

fn gateway_view(b: &Beat, age_ms: u64, me: bool) -> GatewayView {
    GatewayView {
        name: b.name.clone(),
        address: b.address.clone(),
        host: b.host.clone(),
        ops: b.ops.clone(),
        version: b.version.clone(),
        pid: b.pid,
        uptime_ms: b.at_ms.saturating_sub(b.started_ms) + age_ms,
        connections: b.connections,
        tunnels: b.tunnels,
        fingerprint: b.fingerprint.clone(),
        config_differs: false,
        last_seen_ms: age_ms,
        me,
        rebalancing_since_ms: b.rebalance_since_ms,
    }
}

/// Where the fleet's Redis is.
fn target_of(f: &FleetSection) -> Target {
    match (&f.redis, &f.redis_cluster) {
        (Some(u), _) => Target::Single(u.clone()),
        (None, Some(s)) => Target::Cluster(s.clone()),
        // Validation fills one in; an empty seed list fails to connect, loudly.
        (None, None) => Target::Cluster(Vec::new()),
    }
}

fn describe(t: &Target) -> String {
    match t {
        Target::Single(u) => redact(u),
        Target::Cluster(s) => s.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
    }
}

/// The settings that need a new Redis session when they change (the rebalancing ones apply live).
fn link_part(f: &FleetSection) -> FleetSection {
    FleetSection { rebalance_websockets: false, rebalance_rate: 1, rebalance_tolerance: 1, ..f.clone() }
}

/// Start the fleet task (idle without `[fleet]`, it follows reloads); returns the handle ops and
/// the stats use.
pub fn start(core: Arc<Core>, settings: watch::Receiver<Arc<Config>>, addrs: Addrs, life: &Lifecycle) -> Arc<Fleet> {
    let (tx, rx) = mpsc::channel(64);
    let fleet = Arc::new(Fleet {
        core,
        shared: Mutex::new(Shared {
            section: None,
            link: Link::default(),
            peers: BTreeMap::new(),
            me: None,
            states: States::default(),
            rebalance: RebalanceView::default(),
            clash: None,
            last_warn: 0,
            suppressed: 0,
        }),
        tx,
        metrics: FleetMetrics::default(),
        instance: format!("{:016x}", rand::random::<u64>()),
        started_ms: epoch_ms(),
    });
    let section = settings.borrow().fleet.clone();
    lock(&fleet.shared).section = section;
    let ctx = task::Task {
        fleet: fleet.clone(),
        settings,
        stop: life.shutdown.clone(),
        writes: rx,
        addrs,
        rebalancer: Rebalancer::new(std::time::Instant::now()),
        drawn: Vec::new(),
        beat_no: 0,
    };
    life.background.spawn(task::run(ctx));
    fleet
}

/// Read the operator states from the fleet's Redis before the gateway serves (bounded: a Redis
/// that does not answer within 2 s leaves it to the fleet task, which applies them as soon as it
/// connects).
pub async fn preload(config: &Config) -> Vec<StateRecord> {
    let Some(f) = &config.fleet else { return Vec::new() };
    let keys = Keys::new(&f.namespace);
    let read = async {
        let cmds = Commands::connect(&target_of(f)).await?;
        let len: u64 = cmds.query("HLEN fleet states", redis::cmd("HLEN").arg(keys.states())).await?;
        if len as usize > wire::MAX_STATES {
            return Ok(Vec::new());
        }
        cmds.query::<Vec<(String, Vec<u8>)>>("HGETALL fleet states", redis::cmd("HGETALL").arg(keys.states())).await
    };
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(pairs)) => pairs.into_iter().filter_map(|(_, v)| wire::parse_state(&v).ok()).collect(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "fleet: operator states not read before start; applied once Redis answers");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("fleet: Redis did not answer within 2 s; operator states apply once it does");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests;
