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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kuzzle_redis_link::{redact, CallError, Commands, Subscription, Target};
use redis::{PushInfo, PushKind, Value};
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
    link: Link,
    peers: BTreeMap<String, Peer>,
    /// This gateway's last heartbeat (the view shows it beside the others).
    me: Option<Beat>,
    states: States,
    rebalance: RebalanceView,
    /// Another instance heartbeating under our name: (its instance, its address, when last heard;
    /// forgotten after `ttl`, e.g. the old process of a binary upgrade once it left).
    clash: Option<(String, String, Instant)>,
    /// Epoch second of the last warning about dropped input, and drops not logged since.
    last_warn: u64,
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
    let ctx = Task {
        fleet: fleet.clone(),
        settings,
        stop: life.shutdown.clone(),
        writes: rx,
        addrs,
        rebalancer: Rebalancer::new(std::time::Instant::now()),
        drawn: Vec::new(),
        beat_no: 0,
    };
    life.background.spawn(run(ctx));
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

/// The fleet task's own state.
struct Task {
    /// The shared half: the view, the states, the core.
    fleet: Arc<Fleet>,
    /// `[fleet]` follows reloads through it.
    settings: watch::Receiver<Arc<Config>>,
    /// The gateway's shutdown: the task says goodbye and ends.
    stop: tokio_util::sync::CancellationToken,
    /// State changes from the ops API.
    writes: mpsc::Receiver<Write>,
    /// Where this gateway listens (for its heartbeat).
    addrs: Addrs,
    /// This gateway's rebalancing.
    rebalancer: Rebalancer,
    /// Nodes drawn from at the last tick: did a tunnel take the draw?
    drawn: Vec<String>,
    /// This gateway's heartbeat counter.
    beat_no: u64,
}

/// Why a session ended.
enum End {
    Shutdown,
    /// `[fleet]` changed: start over.
    Reconfigured,
    /// Redis went away: back off, reconnect.
    Lost(CallError),
}

impl Task {
    fn section(&self) -> Option<FleetSection> {
        self.settings.borrow().fleet.clone()
    }

    /// A state to apply from the fleet.
    fn apply(&self, node: &str, state: AdminState) {
        self.fleet.core.remember_admin(node, state);
        self.fleet.metrics.applied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node, state = state.as_str(), "fleet: operator state applied");
    }

    /// This gateway's heartbeat now.
    fn beat(&mut self, f: &FleetSection) -> Beat {
        self.beat_no += 1;
        let snap = self.fleet.core.snapshot();
        let (client, ops) = (self.addrs)();
        let nodes = snap
            .nodes
            .iter()
            .take(wire::MAX_NODES)
            .map(|b| {
                (b.name.clone(), NodeCount { tunnels: b.counters.tunnels.load(Ordering::Relaxed), active: b.active() })
            })
            .collect();
        let fr = &self.fleet.core.frontend;
        let tunnels = fr.tunnels.load(Ordering::Relaxed);
        Beat {
            name: f.name().to_string(),
            instance: self.fleet.instance.clone(),
            host: host_name(),
            address: client.map(|a| a.to_string()).unwrap_or_default(),
            ops: ops.map(|a| a.to_string()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_ms: self.fleet.started_ms,
            at_ms: epoch_ms(),
            beat: self.beat_no,
            fingerprint: snap.config.fingerprint.clone(),
            connections: fr.connections.load(Ordering::Relaxed) + tunnels,
            tunnels,
            nodes,
            rebalance_since_ms: self.rebalancer.since_ms,
        }
    }

    /// A heartbeat of another gateway (a message, or read with ours).
    fn on_beat(&self, st: &mut Shared, me: &str, b: Beat, now: Instant) {
        if b.name == me {
            if b.instance != self.fleet.instance {
                if st.clash.as_ref().is_none_or(|(i, _, _)| *i != b.instance) {
                    tracing::warn!(
                        name = me,
                        other = %b.instance,
                        address = %b.address,
                        "fleet: another gateway heartbeats under this gateway's name; fleet names must be unique"
                    );
                }
                st.clash = Some((b.instance.clone(), b.address.clone(), now));
            }
            return;
        }
        match st.peers.get_mut(&b.name) {
            Some(p) if p.beat.instance == b.instance && p.beat.beat >= b.beat => {}
            Some(p) => {
                p.beat = b;
                p.seen = now;
            }
            None => {
                tracing::info!(gateway = %b.name, address = %b.address, "fleet: a gateway joined the view");
                st.peers.insert(b.name.clone(), Peer { beat: b, seen: now });
            }
        }
    }

    /// Peers silent for `ttl` leave the view (and a name clash not heard of since is forgotten).
    fn expire(&self, ttl: Duration, now: Instant) {
        let mut st = lock(&self.fleet.shared);
        if st.clash.as_ref().is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > ttl) {
            st.clash = None;
        }
        st.peers.retain(|name, p| {
            let keep = now.saturating_duration_since(p.seen) <= ttl;
            if !keep {
                tracing::info!(gateway = %name, "fleet: a gateway left the view (no heartbeat within ttl)");
            }
            keep
        });
    }

    /// Every node's count of the others' tunnels, for leastconn (0 for all without a fleet).
    fn refresh_remote(&self) {
        let st = lock(&self.fleet.shared);
        let mut remote: HashMap<&str, u64> = HashMap::new();
        for p in st.peers.values() {
            for (n, c) in &p.beat.nodes {
                *remote.entry(n.as_str()).or_default() += c.tunnels;
            }
        }
        for b in &self.fleet.core.snapshot().nodes {
            b.set_remote(remote.get(b.name.as_str()).copied().unwrap_or(0));
        }
    }

    fn on_push(&self, f: &FleetSection, keys: &Keys, p: PushInfo) {
        if p.kind != PushKind::Message {
            return;
        }
        let fleet = &self.fleet;
        fleet.metrics.messages.fetch_add(1, Ordering::Relaxed);
        let (Some(Value::BulkString(chan)), Some(Value::BulkString(payload))) = (p.data.first(), p.data.get(1)) else {
            return;
        };
        let chan = String::from_utf8_lossy(chan);
        if chan == keys.states_channel() {
            match wire::parse_state(payload) {
                Ok(r) => {
                    let node = r.node.clone();
                    let applied = lock(&fleet.shared).states.on_record(r, epoch_ms());
                    if let Some(s) = applied {
                        self.apply(&node, s);
                    }
                }
                Err(r) => fleet.dropped(&chan, &r),
            }
        } else if chan == keys.gateways_channel() {
            match wire::parse_gateway_msg(payload) {
                Ok(GatewayMsg::Beat(b)) => {
                    let mut st = lock(&fleet.shared);
                    self.on_beat(&mut st, f.name(), *b, Instant::now());
                }
                Ok(GatewayMsg::Bye { name, instance }) => {
                    let mut st = lock(&fleet.shared);
                    if st.peers.get(&name).is_some_and(|p| p.beat.instance == instance) {
                        st.peers.remove(&name);
                        tracing::info!(gateway = %name, "fleet: a gateway stopped");
                    }
                }
                Err(r) => fleet.dropped(&chan, &r),
            }
        }
    }

    /// Heartbeat and read (one script), then reconcile the states.
    async fn beat_and_read(&mut self, f: &FleetSection, keys: &Keys, cmds: &Commands) -> Result<(), CallError> {
        let started = Instant::now();
        let beat = self.beat(f);
        let msg = serde_json::to_string(&GatewayMsg::Beat(Box::new(beat.clone()))).unwrap_or_default();
        let ttl_ms = f.ttl.0.as_millis() as u64;
        let state_ttl_ms = f.state_ttl.0.as_millis() as u64;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(wire::BEAT_SCRIPT)
            .arg(4)
            .arg(keys.gateway(f.name()))
            .arg(keys.index())
            .arg(keys.states())
            .arg(keys.seq())
            .arg(f.name())
            .arg(&msg)
            .arg(ttl_ms)
            .arg(state_ttl_ms)
            .arg(keys.gateways_channel())
            .arg(keys.gateway_prefix())
            .arg(wire::MAX_GATEWAYS)
            .arg(wire::MAX_STATES);
        let (beats, hash, seq, len): (Vec<Vec<u8>>, Vec<Vec<u8>>, String, u64) =
            cmds.query("fleet heartbeat", &cmd).await?;
        let fleet = self.fleet.clone();
        // Peers read now; those missing from the index expired (or left) unless heard of since.
        let mut live = Vec::new();
        {
            let mut st = lock(&fleet.shared);
            st.me = Some(beat);
            for raw in &beats {
                match wire::parse_gateway_msg(raw) {
                    Ok(GatewayMsg::Beat(b)) => {
                        live.push(b.name.clone());
                        self.on_beat(&mut st, f.name(), *b, Instant::now());
                    }
                    Ok(GatewayMsg::Bye { .. }) => {}
                    Err(r) => {
                        drop(st);
                        fleet.dropped("gateway key", &r);
                        st = lock(&fleet.shared);
                    }
                }
            }
            st.peers.retain(|n, p| live.contains(n) || p.seen > started);
        }
        if len as usize > wire::MAX_STATES {
            fleet.dropped("states hash", &Reject::TooMany(len as usize));
        }
        let mut records = Vec::with_capacity(hash.len() / 2);
        for pair in hash.chunks(2) {
            let [field, raw] = pair else { continue };
            let field = String::from_utf8_lossy(field);
            match wire::parse_state(raw) {
                Ok(r) if r.node == field => records.push((r, String::from_utf8_lossy(raw).into_owned())),
                Ok(r) => fleet.dropped("states hash", &Reject::Mismatch(field.into_owned(), r.node)),
                Err(r) => fleet.dropped("states hash", &r),
            }
        }
        let redis_seq: u64 = seq.trim().parse().unwrap_or(0);
        let snap = fleet.core.snapshot_full();
        let plan = lock(&fleet.shared)
            .states
            .reconcile(records, redis_seq, epoch_ms(), state_ttl_ms, |n| snap.node(n).is_some());
        for (node, s) in &plan.apply {
            self.apply(node, *s);
        }
        if let Some((max, records)) = plan.reseed {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(wire::RESEED_SCRIPT).arg(2).arg(keys.states()).arg(keys.seq()).arg(max).arg(state_ttl_ms);
            for r in &records {
                cmd.arg(&r.node).arg(r.to_json());
            }
            let done: u64 = cmds.query("fleet reseed", &cmd).await?;
            if done == 1 {
                tracing::warn!(
                    states = records.len(),
                    seq = max,
                    "fleet: Redis had lost the operator states (restarted empty?): put back what this gateway knew"
                );
            }
        }
        for r in plan.write {
            tracing::info!(node = %r.node, state = r.state.as_str(), "fleet: sharing a state change taken while Redis was away");
            self.write_state(f, keys, cmds, r).await?;
        }
        for (node, raw) in plan.prune {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(wire::PRUNE_SCRIPT).arg(1).arg(keys.states()).arg(&node).arg(raw);
            cmds.query::<u64>("fleet prune", &cmd).await?;
        }
        Ok(())
    }

    /// Write one state change (seq from Redis, stored, published); returns its seq.
    async fn write_state(
        &self,
        f: &FleetSection,
        keys: &Keys,
        cmds: &Commands,
        r: StateRecord,
    ) -> Result<u64, CallError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(wire::SET_STATE_SCRIPT)
            .arg(2)
            .arg(keys.states())
            .arg(keys.seq())
            .arg(&r.node)
            .arg(r.tail())
            .arg(keys.states_channel())
            .arg(f.state_ttl.0.as_millis() as u64)
            .arg(wire::MAX_STATES);
        let (seq, _stored): (u64, String) = cmds.query("fleet state change", &cmd).await?;
        self.fleet.metrics.written.fetch_add(1, Ordering::Relaxed);
        lock(&self.fleet.shared).states.confirmed(StateRecord { seq, ..r }, epoch_ms());
        Ok(seq)
    }

    /// One housekeeping step: silent peers leave, remote loads follow, rebalancing steps.
    fn tick(&mut self, f: Option<&FleetSection>, connected: bool) {
        let now = Instant::now();
        if let Some(f) = f {
            self.expire(f.ttl.0, now);
        }
        self.refresh_remote();
        let snap = self.fleet.core.snapshot_full();
        // Did the draws of the last tick close something?
        for node in std::mem::take(&mut self.drawn) {
            let Some(b) = snap.node(&node) else { continue };
            if b.shed.budget() > 0 {
                b.shed.cancel_draw();
                self.rebalancer.exhausted(&node);
            } else {
                self.rebalancer.moved_one();
                self.fleet.metrics.draws.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(f) = f else { return };
        let peers_since;
        let inputs: Vec<NodeInput> = {
            let st = lock(&self.fleet.shared);
            peers_since = st.peers.values().filter_map(|p| p.beat.rebalance_since_ms).min();
            snap.nodes
                .iter()
                .filter(|b| !b.unresolved)
                .map(|b| {
                    let own = b.counters.tunnels.load(Ordering::Relaxed);
                    let others: u64 =
                        st.peers.values().filter_map(|p| p.beat.nodes.get(&b.name)).map(|c| c.tunnels).sum();
                    NodeInput {
                        name: b.name.clone(),
                        fleet: own + others,
                        own,
                        participant: b.membership() == Membership::Active && b.admin() == AdminState::Ready,
                        healthy: b.health.is_up(),
                    }
                })
                .collect()
        };
        let s = rebalance::Settings {
            enabled: f.rebalance_websockets,
            rate: f.rebalance_rate,
            tolerance: f.rebalance_tolerance,
            settle: RECONNECT_DELAY + Duration::from_millis(500) + 3 * beat_period(f, true),
            confirm: (2 * f.heartbeat.0).max(RECONNECT_DELAY) + Duration::from_millis(500),
        };
        let i = rebalance::Inputs {
            nodes: &inputs,
            connected,
            peers_since,
            now: std::time::Instant::now(),
            now_ms: epoch_ms(),
            jitter: rand::random::<f64>(),
        };
        let draw = self.rebalancer.tick(&s, &i);
        if let (Some(node), Some(since)) = (draw, self.rebalancer.since_ms) {
            if let Some(b) = snap.node(&node) {
                // Never a WebSocket opened after the rebalancing began, nor a brand new one (a
                // client still subscribing).
                b.draw_tunnels(1, since.min(epoch_ms().saturating_sub(MIN_TUNNEL_AGE_MS)));
                self.drawn.push(node);
            }
        }
        let r = &self.rebalancer;
        lock(&self.fleet.shared).rebalance = RebalanceView {
            enabled: f.rebalance_websockets,
            rate: f.rebalance_rate,
            tolerance_pct: f.rebalance_tolerance,
            phase: r.phase.as_str(),
            since_ms: r.since_ms,
            round: r.round,
            moved: r.moved,
            moved_total: r.moved_total,
            left: r.left(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
        };
    }
}

/// The heartbeat period: `[fleet] heartbeat`, shorter while rebalancing.
fn beat_period(f: &FleetSection, rebalancing: bool) -> Duration {
    if rebalancing {
        f.heartbeat.0.min(FAST_BEAT)
    } else {
        f.heartbeat.0
    }
}

fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The fleet task: connect, follow, reconnect with backoff, until shutdown.
async fn run(mut t: Task) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let section = t.section();
        {
            let mut st = lock(&t.fleet.shared);
            if section.is_none() && st.section.is_some() {
                st.peers.clear();
                st.me = None;
                st.rebalance = RebalanceView::default();
            }
            st.section = section.clone();
        }
        let Some(f) = section else {
            t.rebalancer = Rebalancer::new(std::time::Instant::now());
            t.tick(None, false);
            if wait(&mut t, None, None).await {
                return;
            }
            continue;
        };
        let target = target_of(&f);
        lock(&t.fleet.shared).link.target = Some(describe(&target));
        let end = match Commands::connect(&target).await {
            Ok(cmds) => session(&mut t, &f, &target, &cmds, &mut backoff).await,
            Err(e) => End::Lost(e),
        };
        t.fleet.metrics.connected.store(0, Ordering::Relaxed);
        lock(&t.fleet.shared).link.since_ms = None;
        match end {
            End::Shutdown => return,
            End::Reconfigured => continue,
            End::Lost(e) => {
                t.fleet.metrics.errors.fetch_add(1, Ordering::Relaxed);
                lock(&t.fleet.shared).link.last_error = Some(e.to_string());
                tracing::warn!(error = %e, retry_in = ?backoff, "fleet: Redis unavailable; keeping the last known operator states");
                let delay = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if wait(&mut t, Some(&f), Some(delay)).await {
                    return;
                }
            }
        }
    }
}

/// Between sessions: wait `d` (forever with None) or until `[fleet]` changes, still answering ops
/// (changes stay pending) and keeping the view honest (silent peers leave). True on shutdown.
async fn wait(t: &mut Task, f: Option<&FleetSection>, d: Option<Duration>) -> bool {
    let sleep = async {
        match d {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: each turn awaits one event; the sleep ends it at the latest.
    loop {
        tokio::select! {
            _ = t.stop.cancelled() => return true,
            _ = &mut sleep => return false,
            r = t.settings.changed() => {
                if r.is_err() {
                    return true;
                }
                if t.section().as_ref() != f {
                    return false;
                }
            }
            w = t.writes.recv() => match w {
                Some(w) => {
                    let _ = w.reply.send(Err("Redis unreachable: applied on this gateway; shared when Redis answers again".into()));
                }
                None => return true,
            },
            _ = tick.tick(), if f.is_some() => t.tick(f, false),
        }
    }
}

/// One connected period: subscribe, heartbeat and read, follow messages, rebalance.
async fn session(t: &mut Task, f: &FleetSection, target: &Target, cmds: &Commands, backoff: &mut Duration) -> End {
    let keys = Keys::new(&f.namespace);
    let mut f = f.clone();
    let fleet = t.fleet.clone();
    let (tx, mut rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
    let flood = fleet.clone();
    let push = move |p: PushInfo| match tx.try_send(p) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            if let Some(i) = REJECT_LABELS.iter().position(|l| *l == "overflow") {
                flood.metrics.dropped[i].fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    };
    let channels = [keys.gateways_channel(), keys.states_channel()];
    let mut sub = match Subscription::open(target, &channels, Arc::new(push)).await {
        Ok(s) => s,
        Err(e) => return End::Lost(e),
    };
    if let Err(e) = t.beat_and_read(&f, &keys, cmds).await {
        return End::Lost(e);
    }
    *backoff = BACKOFF_MIN;
    fleet.metrics.connects.fetch_add(1, Ordering::Relaxed);
    fleet.metrics.connected.store(1, Ordering::Relaxed);
    {
        let mut st = lock(&fleet.shared);
        st.link.since_ms = Some(epoch_ms());
        st.link.last_error = None;
    }
    tracing::info!(redis = %describe(target), name = f.name(), namespace = %f.namespace, "fleet: connected");
    t.refresh_remote();

    let mut next_beat = Instant::now() + beat_period(&f, t.rebalancer.active());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut failures = 0u32;
    let end = loop {
        tokio::select! {
            _ = t.stop.cancelled() => break End::Shutdown,
            r = t.settings.changed() => {
                if r.is_err() {
                    break End::Shutdown;
                }
                match t.section() {
                    Some(n) if link_part(&n) == link_part(&f) => f = n,
                    _ => break End::Reconfigured,
                }
            }
            p = rx.recv() => match p {
                None => break End::Lost(CallError::Closed),
                Some(p) if sub.ends(&p) => break End::Lost(CallError::Closed),
                Some(p) => t.on_push(&f, &keys, p),
            },
            w = t.writes.recv() => match w {
                None => break End::Shutdown,
                Some(w) => {
                    let r = t.write_state(&f, &keys, cmds, w.record).await.map_err(|e| {
                        fleet.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        format!("{e}: applied on this gateway; shared when Redis answers again")
                    });
                    let _ = w.reply.send(r);
                }
            },
            _ = tokio::time::sleep_until(next_beat) => {
                next_beat = Instant::now() + beat_period(&f, t.rebalancer.active());
                match t.beat_and_read(&f, &keys, cmds).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        fleet.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        lock(&fleet.shared).link.last_error = Some(e.to_string());
                        failures += 1;
                        if failures >= 2 {
                            break End::Lost(e);
                        }
                    }
                }
            }
            _ = tick.tick() => t.tick(Some(&f), true),
            _ = ping.tick() => {
                if let Err(e) = sub.ping().await {
                    break End::Lost(e);
                }
            }
        }
    };
    if matches!(end, End::Shutdown | End::Reconfigured) {
        bye(t, &f, &keys, cmds).await;
    }
    end
}

/// Leave the fleet cleanly (bounded): the key goes if it is still ours, and a goodbye is published.
async fn bye(t: &Task, f: &FleetSection, keys: &Keys, cmds: &Commands) {
    let msg = serde_json::to_string(&GatewayMsg::Bye { name: f.name().into(), instance: t.fleet.instance.clone() })
        .unwrap_or_default();
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(wire::BYE_SCRIPT)
        .arg(2)
        .arg(keys.gateway(f.name()))
        .arg(keys.index())
        .arg(f.name())
        .arg(format!("\"instance\":\"{}\"", t.fleet.instance))
        .arg(msg)
        .arg(keys.gateways_channel());
    match cmds.query::<u64>("fleet goodbye", &cmd).await {
        Ok(_) => tracing::info!(name = f.name(), "fleet: left"),
        Err(e) => tracing::warn!(error = %e, "fleet: could not say goodbye (the key expires with its ttl)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;

    #[test]
    fn fleet_keys_default_from_cluster_and_errors_name_line_and_key() {
        let c = Config::parse(
            "[gateway]\nlisten = \"127.0.0.1:7600\"\n[cluster]\nredis = \"redis://r:6379/0\"\n[fleet]\n",
            "g.toml",
        )
        .expect("valid");
        let f = c.fleet.expect("fleet");
        assert_eq!(f.redis.as_deref(), Some("redis://r:6379/0"), "[cluster] redis by default");
        assert!(f.name().ends_with(":7600"), "host name and client port: {}", f.name());
        assert_eq!((f.heartbeat.0, f.ttl.0), (Duration::from_secs(1), Duration::from_secs(5)));
        assert!(!f.rebalance_websockets);
        let c = Config::parse("[cluster]\nredis_cluster = [\"redis://a:1\"]\n[fleet]\nname = \"x\"\n", "g.toml")
            .expect("valid");
        assert_eq!(c.fleet.expect("fleet").redis_cluster, Some(vec!["redis://a:1".to_string()]));
        for (text, line, key) in [
            ("[fleet]\n", 1, "fleet"),
            ("[fleet]\nredis = \"r:1\"\n", 2, "fleet.redis"),
            ("[fleet]\nredis = \"redis://a:1\"\nname = \"a b\"\n", 3, "fleet.name"),
            ("[fleet]\nredis = \"redis://a:1\"\nheartbeat = \"1s\"\nttl = \"1s\"\n", 4, "fleet.ttl"),
            ("[fleet]\nredis = \"redis://a:1\"\nrebalance_rate = 0\n", 3, "fleet.rebalance_rate"),
            ("[fleet]\nredis = \"redis://a:1\"\nrebalance_tolerance = 200\n", 3, "fleet.rebalance_tolerance"),
            ("[fleet]\nredis = \"redis://a:1\"\nnamespace = \"{x}\"\n", 3, "fleet.namespace"),
            ("[fleet]\nredis = \"redis://a:1\"\nredis_cluster = [\"redis://b:1\"]\n", 3, "fleet.redis_cluster"),
            ("[fleet]\nredis = \"redis://a:1\"\nrebalance = true\n", 3, "fleet.rebalance"),
        ] {
            let e = Config::parse(text, "g.toml").expect_err(text);
            assert_eq!((e.line, e.key.as_str()), (line, key), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("g.toml:{line}:")), "{e}");
        }
    }

    #[test]
    fn the_link_part_ignores_rebalancing_keys() {
        let a = FleetSection { name: Some("a".into()), ..FleetSection::default() };
        let b = FleetSection { rebalance_websockets: true, rebalance_rate: 50, ..a.clone() };
        assert_eq!(link_part(&a), link_part(&b), "rebalancing changes apply without reconnecting");
        let c = FleetSection { namespace: "other".into(), ..a.clone() };
        assert_ne!(link_part(&a), link_part(&c));
    }

    #[test]
    fn leastconn_counts_the_other_gateways_websockets() {
        use crate::core::backend::{Backend, Origin};
        let nodes: Vec<Arc<crate::core::backend::Backend>> = (0..2)
            .map(|i| {
                Arc::new(Backend::new(
                    format!("n{i}"),
                    format!("127.0.0.1:{}", 1000 + i).parse().expect("addr"),
                    Origin::Static,
                    Default::default(),
                    true,
                    1,
                ))
            })
            .collect();
        let _local = nodes[1].track();
        // Locally n0 is emptier, but the rest of the fleet holds 40 WebSockets there.
        nodes[0].set_remote(40);
        let cursor = std::sync::atomic::AtomicUsize::new(0);
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        for _ in 0..4 {
            let got = crate::data::balance::pick(
                crate::control::config::Algorithm::Leastconn,
                &nodes,
                &cursor,
                ip,
                &[],
                Default::default(),
            );
            assert_eq!(got, Some(1), "the fleet-wide emptier node");
        }
        nodes[0].set_remote(0);
        assert_eq!(
            crate::data::balance::pick(
                crate::control::config::Algorithm::Leastconn,
                &nodes,
                &cursor,
                ip,
                &[],
                Default::default()
            ),
            Some(0)
        );
    }
}
