//! Control plane: cluster membership from Redis (plugin pub/sub rooms, the plugin's
//! `cluster:discovery` set, Kuzzle 2 ID cards), plus the ops listener's cluster status and reset.
//!
//! One background task per gateway owns the Redis connections and the membership [`Table`]; it
//! only talks to the data plane through the core's change sink ([`Core::apply`], one batch per
//! event or poll), so Redis being slow or down never touches a client request. Settings come
//! from the settings watch.

pub mod conn;
pub mod membership;
pub mod message;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use self::conn::{CallError, Commands, Subscription, Target};
use self::membership::{MemberState, Table};
use self::message::{Reject, Rules, DISCOVERY_KEY, K2_INDEX_KEY, ROOM_HEARTBEAT, ROOM_READY, ROOM_REMOVE};
use crate::control::config::{ClusterSection, Config};
use crate::core::backend::{Membership, Origin};
use crate::core::registry::Change;
use crate::core::{Core, Gate, Lifecycle};
use crate::util::epoch_ms;

/// Prefix of Kuzzle 2 ID card keys (and their hash tag).
const K2_CARD_PREFIX: &str = "{cluster/node}/";
/// Most discovery members / ID cards read per poll: bounds memory if Redis holds garbage.
const MAX_MEMBERS: usize = 10_000;
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Pushes waiting for the membership task; past that, messages are dropped (and counted).
const PUSH_QUEUE: usize = 4096;
/// How often the subscription connection is pinged (a dead one is replaced).
const PING_EVERY: Duration = Duration::from_secs(2);
/// Bound on a whole status room count or reset.
const OPS_TIMEOUT: Duration = Duration::from_secs(30);

/// Drop reasons, in the order of `ClusterMetrics::dropped`. The last three are joins refused by
/// the membership table (cap, rate, the gateway's own address), not malformed data.
pub const DROP_REASONS: [&str; 11] = [
    "too_large",
    "bad_json",
    "bad_shape",
    "unknown_room",
    "bad_address",
    "not_allowed",
    "bad_name",
    "overflow",
    "max_nodes",
    "join_rate",
    "self",
];

/// The gateway's own bound listener addresses (client, TLS, ops), read by the membership task to
/// refuse a node announced at the gateway itself. A narrow handle: nothing else of the gateway.
pub type OwnAddrs = Arc<dyn Fn() -> Vec<std::net::SocketAddr> + Send + Sync>;

/// Membership counters (for /metrics and the status page).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Pub/sub messages received on the membership rooms.
    pub messages: AtomicU64,
    /// Messages, discovery members and ID cards dropped, by `DROP_REASONS` index.
    pub dropped: [AtomicU64; DROP_REASONS.len()],
    /// Nodes that joined (new identities taken into the table).
    pub joins: AtomicU64,
    /// Nodes that left (remove, heartbeat timeout, expired card, source turned off).
    pub leaves: AtomicU64,
    /// Successful (re)connections to Redis (the first one included).
    pub connects: AtomicU64,
    /// Failed Redis calls and connection attempts.
    pub errors: AtomicU64,
    /// 1 while the membership connection to Redis is healthy.
    pub connected: AtomicU64,
    /// Completed polls of the discovery set / ID cards.
    pub polls: AtomicU64,
}

impl ClusterMetrics {
    fn count_drop(&self, r: &Reject) {
        if let Some(i) = DROP_REASONS.iter().position(|l| *l == r.label()) {
            self.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Total dropped, every reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    fn json(&self) -> serde_json::Value {
        let dropped: serde_json::Map<String, serde_json::Value> = DROP_REASONS
            .iter()
            .zip(self.dropped.iter())
            .map(|(l, c)| (l.to_string(), c.load(Ordering::Relaxed).into()))
            .collect();
        serde_json::json!({
            "messages": self.messages.load(Ordering::Relaxed),
            "dropped": dropped,
            "joins": self.joins.load(Ordering::Relaxed),
            "leaves": self.leaves.load(Ordering::Relaxed),
            "connects": self.connects.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "connected": self.connected.load(Ordering::Relaxed) == 1,
            "polls": self.polls.load(Ordering::Relaxed),
        })
    }
}

/// Per-gateway membership state, shared by the membership task and the ops handlers (status,
/// reset, metrics).
pub struct ClusterState {
    /// Counters for /metrics and the status page.
    pub metrics: Arc<ClusterMetrics>,
    /// Opened once Redis was read the first time (every source of `[cluster]`) and what it held
    /// applied to the core: a starting gateway waits for it before it takes clients.
    pub synced: Gate,
    /// The members known from Redis (written by the membership task, read by ops).
    table: Mutex<Table>,
    /// The Redis connection in use, for status and reset.
    link: Mutex<Link>,
    /// Epoch second of the last drop warning, and drops not logged since (log rate limit).
    last_warn: AtomicU64,
    /// Drops not logged since the last drop warning (reported with the next one).
    suppressed: AtomicU64,
}

/// The current Redis connection, for status and reset.
#[derive(Default)]
struct Link {
    /// Where Redis is (the status page shows it, redacted; reset needs it).
    target: Option<Target>,
    /// The command connection, for room counts and reset from ops handlers.
    commands: Option<Commands>,
    /// Epoch ms of the connection in use, None while disconnected.
    connected_since_ms: Option<u64>,
    /// The last failed Redis call or connection, for the status page (cleared on connect).
    last_error: Option<String>,
}

impl ClusterState {
    pub(crate) fn new(own: OwnAddrs) -> ClusterState {
        let metrics = Arc::new(ClusterMetrics::default());
        ClusterState {
            table: Mutex::new(Table::new(metrics.clone()).with_own(own)),
            metrics,
            synced: Gate::closed(),
            link: Mutex::new(Link::default()),
            last_warn: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Log a dropped input at most once a second, counting what was not logged.
    fn dropped(&self, source: &str, r: &Reject) {
        self.metrics.count_drop(r);
        let now = epoch_ms() / 1000;
        if self.last_warn.swap(now, Ordering::Relaxed) != now {
            let more = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(source, reason = r.label(), suppressed = more, "cluster: dropped Redis input: {r}");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, e: &CallError) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        crate::util::lock(&self.link).last_error = Some(e.to_string());
    }

    /// The members to hand to a new process (binary upgrade).
    pub fn export(&self) -> Vec<MemberState> {
        crate::util::lock(&self.table).members.values().map(membership::Member::export).collect()
    }
}

/// What the membership task works with: the core's change sink, the settings watch, the stop token.
struct Ctx {
    /// Where the membership changes are applied.
    core: Arc<Core>,
    /// The configuration in force: `[cluster]` changes restart the session.
    settings: watch::Receiver<Arc<Config>>,
    /// Cancelled at shutdown: the task ends.
    stop: tokio_util::sync::CancellationToken,
    /// The shared state: table, link, counters.
    st: Arc<ClusterState>,
}

impl Ctx {
    fn cluster(&self) -> Option<ClusterSection> {
        self.settings.borrow().cluster.clone()
    }

    /// Apply the changes one membership step produced, with one swap.
    fn apply(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            self.core.apply(changes);
        }
    }

    /// Run `f` on the table and apply what it produced; count (and log, rate-limited) the joins
    /// it refused.
    fn with_table(&self, f: impl FnOnce(&mut Table, &mut Vec<Change>)) {
        let mut out = Vec::new();
        let refused = {
            let mut t = crate::util::lock(&self.st.table);
            f(&mut t, &mut out);
            std::mem::take(&mut t.refused)
        };
        for r in &refused {
            self.st.dropped("join", r);
        }
        self.apply(out);
    }
}

/// Start the membership task (it idles while no `[cluster]` is configured and follows reloads
/// through the settings watch); returns the state the ops handlers read.
/// `own` lists the gateway's listener addresses (nodes announced there are refused); `handed`
/// are the members an old process handed over on a binary upgrade (the core has their nodes).
pub fn start(
    core: Arc<Core>,
    settings: watch::Receiver<Arc<Config>>,
    own: OwnAddrs,
    handed: Vec<MemberState>,
    life: &Lifecycle,
) -> Arc<ClusterState> {
    let st = Arc::new(ClusterState::new(own));
    crate::util::lock(&st.table).restore(handed);
    let ctx = Ctx { core, settings, stop: life.shutdown.clone(), st: st.clone() };
    life.background.spawn(run(ctx));
    st
}

/// Why a session ended.
enum End {
    Shutdown,
    /// `[cluster]` changed: start over with the new settings.
    Reconfigured,
    /// Redis went away: back off, reconnect.
    Lost(CallError),
}

/// The membership task: connect, follow, reconnect with backoff, until shutdown.
async fn run(mut ctx: Ctx) {
    let st = ctx.st.clone();
    let mut backoff = BACKOFF_MIN;
    let mut previous: Option<ClusterSection> = None;
    loop {
        let current = ctx.cluster();
        if current != previous {
            apply_sources(&ctx, current.as_ref());
            previous = current.clone();
            backoff = BACKOFF_MIN;
        }
        let target = current.as_ref().and_then(Target::from_config);
        let (Some(c), Some(target)) = (current, target) else {
            // Nothing to follow: wait for a reload that adds [cluster].
            if wait(&mut ctx, None, &previous).await {
                return;
            }
            continue;
        };
        let end = match Commands::connect(&target).await {
            Ok(cmds) => {
                {
                    let mut l = crate::util::lock(&st.link);
                    l.target = Some(target.clone());
                    l.commands = Some(cmds.clone());
                }
                session(&mut ctx, &c, &target, &cmds, &mut backoff).await
            }
            Err(e) => End::Lost(e),
        };
        st.metrics.connected.store(0, Ordering::Relaxed);
        crate::util::lock(&st.link).connected_since_ms = None;
        match end {
            End::Shutdown => return,
            End::Reconfigured => continue,
            End::Lost(e) => {
                st.error(&e);
                tracing::warn!(error = %e, retry_in = ?backoff, "cluster: Redis unavailable; routing with the last known nodes");
                // Full jitter around the exponential step, so many gateways do not reconnect in step.
                let delay = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if wait(&mut ctx, Some(delay), &previous).await {
                    return;
                }
            }
        }
    }
}

/// Sleep `d` (forever with None), or less if `[cluster]` changes; true on shutdown.
async fn wait(ctx: &mut Ctx, d: Option<Duration>, current: &Option<ClusterSection>) -> bool {
    let sleep = async {
        match d {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return true,
            _ = &mut sleep => return false,
            r = ctx.settings.changed() => {
                if r.is_err() {
                    // The reload task is gone: the gateway is stopping.
                    return true;
                }
                if ctx.cluster() != *current {
                    return false;
                }
            }
        }
    }
}

/// Nodes of sources the configuration no longer enables leave.
fn apply_sources(ctx: &Ctx, c: Option<&ClusterSection>) {
    let plugin = c.is_some_and(|c| c.pubsub || c.discovery);
    let k2 = c.is_some_and(|c| c.kuzzle2);
    ctx.with_table(|t, out| {
        if !plugin {
            t.drop_origin(out, Origin::Plugin);
        }
        if !k2 {
            t.drop_origin(out, Origin::Kuzzle2);
        }
    });
}

/// One connected period: subscribe, read the sets, follow messages, expire silent nodes.
async fn session(ctx: &mut Ctx, c: &ClusterSection, target: &Target, cmds: &Commands, backoff: &mut Duration) -> End {
    let st = ctx.st.clone();
    let rules = Rules { node_port: c.node_port, allowed: c.allowed_networks.clone() };
    crate::util::lock(&st.table).set_limits(c.max_nodes, c.join_rate, c.join_burst);
    // Bounded: a flood of messages costs dropped messages, not memory. A lost disconnection
    // notice is covered by the ping.
    let (tx, mut rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
    let flood = st.clone();
    let push = move |p: PushInfo| match tx.try_send(p) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            flood.dropped("pubsub", &Reject::Overflow(PUSH_QUEUE));
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    };
    let mut sub = None;
    if c.pubsub {
        let rooms = [ROOM_READY, ROOM_HEARTBEAT, ROOM_REMOVE].map(String::from);
        match Subscription::open(target, &rooms, std::sync::Arc::new(push)).await {
            Ok(s) => sub = Some(s),
            Err(e) => return End::Lost(e),
        }
    } else {
        drop(push);
    }
    let since = Instant::now();
    // Right after a (re)connection Redis may have lost its data (restart without persistence)
    // while nodes have not re-registered yet: absence only counts as a leave after a grace.
    let grace_until = since + c.heartbeat_timeout.0;
    if let Err(e) = poll(ctx, c, cmds, &rules, false).await {
        return End::Lost(e);
    }
    // What Redis holds is in the core now (its checkers started): a starting gateway may go on.
    st.synced.open();
    *backoff = BACKOFF_MIN;
    st.metrics.connects.fetch_add(1, Ordering::Relaxed);
    st.metrics.connected.store(1, Ordering::Relaxed);
    {
        let mut l = crate::util::lock(&st.link);
        l.connected_since_ms = Some(epoch_ms());
        l.last_error = None;
    }
    tracing::info!(redis = %describe(target), "cluster: following membership in Redis");

    let mut poll_tick = tokio::time::interval(c.poll_interval.0.max(Duration::from_millis(50)));
    poll_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    poll_tick.reset();
    let mut expiry = tokio::time::interval(
        (c.heartbeat_timeout.0 / 10).clamp(Duration::from_millis(20), Duration::from_millis(250)),
    );
    expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.reset();
    let mut poll_failures = 0u32;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return End::Shutdown,
            r = ctx.settings.changed() => {
                if r.is_err() {
                    return End::Shutdown;
                }
                if ctx.cluster().as_ref() != Some(c) {
                    return End::Reconfigured;
                }
            }
            p = rx.recv(), if sub.is_some() => match p {
                None => return End::Lost(CallError::Topology("subscription closed".into())),
                Some(p) => {
                    if p.kind == PushKind::Disconnection {
                        return End::Lost(CallError::Topology("subscription connection lost".into()));
                    }
                    on_push(ctx, &rules, p);
                }
            },
            _ = poll_tick.tick() => {
                match poll(ctx, c, cmds, &rules, Instant::now() >= grace_until).await {
                    Ok(()) => poll_failures = 0,
                    Err(e) => {
                        st.error(&e);
                        poll_failures += 1;
                        // Without a subscription to notice it, repeated failures end the session.
                        if poll_failures >= 3 {
                            return End::Lost(e);
                        }
                    }
                }
            }
            _ = expiry.tick() => {
                let subscribed = sub.is_some();
                let snap = ctx.core.snapshot();
                ctx.with_table(|t, out| {
                    if subscribed {
                        t.expire(out, c.heartbeat_timeout.0, since, Instant::now());
                    }
                    t.note_up(&snap);
                });
            }
            _ = ping.tick(), if sub.is_some() => {
                if let Some(s) = sub.as_mut() {
                    if let Err(e) = s.ping().await {
                        return End::Lost(e);
                    }
                }
            }
        }
    }
}

/// One push from the subscription: a membership message, or bookkeeping to ignore.
fn on_push(ctx: &Ctx, rules: &Rules, p: PushInfo) {
    let st = &ctx.st;
    if p.kind != PushKind::Message {
        return;
    }
    st.metrics.messages.fetch_add(1, Ordering::Relaxed);
    let (Some(Value::BulkString(chan)), Some(Value::BulkString(payload))) = (p.data.first(), p.data.get(1)) else {
        st.dropped("pubsub", &Reject::BadShape("push without channel and payload".into()));
        return;
    };
    let chan = String::from_utf8_lossy(chan);
    match message::parse_message(&chan, payload, rules) {
        Ok((kind, cand)) => ctx.with_table(|t, out| t.on_message(out, kind, cand, Instant::now())),
        Err(r) => st.dropped(&chan, &r),
    }
}

/// Re-read the plugin discovery set and the Kuzzle 2 ID cards (each if enabled).
async fn poll(
    ctx: &Ctx,
    c: &ClusterSection,
    cmds: &Commands,
    rules: &Rules,
    may_remove: bool,
) -> Result<(), CallError> {
    let st = &ctx.st;
    // Both sources are read first, then applied as one batch: one swap per poll.
    let mut discovered = None;
    let mut carded = None;
    if c.discovery {
        let raw: Vec<Vec<u8>> =
            cmds.query("SMEMBERS cluster:discovery", redis::cmd("SMEMBERS").arg(DISCOVERY_KEY)).await?;
        let mut set = Vec::new();
        for m in raw.iter().take(MAX_MEMBERS) {
            match message::parse_discovery_member(m, rules) {
                Ok(cand) => set.push(cand),
                Err(r) => st.dropped(DISCOVERY_KEY, &r),
            }
        }
        discovered = Some(set);
    }
    if c.kuzzle2 {
        let index: Vec<String> =
            cmds.query("SMEMBERS id-cards-index", redis::cmd("SMEMBERS").arg(K2_INDEX_KEY)).await?;
        // Index members are card keys; a bare node id is accepted too. Anything else would
        // break the single-slot MGET on a Redis Cluster, so every key carries the hash tag.
        let keys: Vec<String> = index
            .into_iter()
            .take(MAX_MEMBERS)
            .map(|k| if k.starts_with(K2_CARD_PREFIX) { k } else { format!("{K2_CARD_PREFIX}{k}") })
            .collect();
        let mut cards = Vec::new();
        if !keys.is_empty() {
            let values: Vec<Option<Vec<u8>>> = cmds.query("MGET ID cards", redis::cmd("MGET").arg(&keys)).await?;
            for (k, v) in keys.iter().zip(values) {
                // A missing value is an expired card: a node that stopped refreshing it.
                let Some(v) = v else { continue };
                match message::parse_card(k, &v, rules) {
                    Ok(cand) => cards.push(cand),
                    Err(r) => st.dropped(K2_INDEX_KEY, &r),
                }
            }
        }
        carded = Some(cards);
    }
    ctx.with_table(|t, out| {
        if let Some(set) = discovered {
            t.on_discovery(out, set, may_remove, Instant::now());
        }
        if let Some(cards) = carded {
            t.on_cards(out, cards, may_remove, Instant::now());
        }
    });
    st.metrics.polls.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn describe(t: &Target) -> String {
    match t {
        Target::Single(u) => conn::redact(u),
        Target::Cluster(s) => s.iter().map(|u| conn::redact(u)).collect::<Vec<_>>().join(","),
    }
}

/// The gateway's view of the cluster (ops `GET /cluster/status`).
pub async fn status(st: &ClusterState, core: &Core) -> serde_json::Value {
    let (members, gone) = {
        let t = crate::util::lock(&st.table);
        let m: std::collections::HashMap<String, membership::Member> =
            t.members.values().map(|m| (m.name.clone(), m.clone())).collect();
        (m, t.gone.iter().cloned().collect::<Vec<_>>())
    };
    let snap = core.snapshot_full();
    let nodes: Vec<serde_json::Value> = snap
        .nodes
        .iter()
        .map(|b| {
            let m = members.get(&b.name);
            let up = b.health.is_up();
            let state = if b.membership() == Membership::Draining {
                "draining"
            } else if up {
                "up"
            } else if m.is_some_and(|m| !m.up_seen) {
                "joining"
            } else {
                "down"
            };
            serde_json::json!({
                "name": b.name,
                "address": b.addr.to_string(),
                "origin": b.origin,
                "state": state,
                "up": up,
                "admin": b.admin().as_str(),
                "ready": m.map(|m| m.ready),
                "identity": m.map(|m| m.key.clone()),
                "last_heartbeat": m.and_then(|m| m.last_seen_ms),
                "joined": m.map(|m| m.joined_ms),
                "health": b.health.view(),
                "connections": b.active(),
            })
        })
        .collect();
    let mut out = serde_json::json!({ "nodes": nodes });
    let gone: Vec<serde_json::Value> = gone
        .into_iter()
        .filter(|g| snap.node(&g.name).is_none())
        .map(|g| serde_json::json!({"name": g.name, "address": g.address, "origin": g.origin, "state": "gone", "reason": g.reason, "at": g.at}))
        .collect();
    out["gone"] = gone.into();
    let cfg = snap.config.cluster.clone();
    let (target, cmds, since, last_error) = {
        let l = crate::util::lock(&st.link);
        (l.target.clone(), l.commands.clone(), l.connected_since_ms, l.last_error.clone())
    };
    out["redis"] = serde_json::json!({
        "target": target.as_ref().map(describe),
        "mode": target.as_ref().map(|t| match t { Target::Single(_) => "single", Target::Cluster(_) => "cluster" }),
        "connected": st.metrics.connected.load(Ordering::Relaxed) == 1,
        "connected_since": since,
        "last_error": last_error,
        "sources": cfg.as_ref().map(|c| serde_json::json!({"pubsub": c.pubsub, "discovery": c.discovery, "kuzzle2": c.kuzzle2})),
    });
    out["metrics"] = st.metrics.json();
    // Only while connected: a status page must not wait on timeouts of an unreachable Redis.
    let connected = st.metrics.connected.load(Ordering::Relaxed) == 1;
    if let (Some(t), Some(cmds), true) = (target, cmds, connected) {
        match tokio::time::timeout(OPS_TIMEOUT, rooms(&t, &cmds)).await {
            Ok(Ok((rooms, subs))) => {
                out["rooms"] = rooms.into();
                out["subscribers"] = subs.into();
            }
            Ok(Err(e)) => out["rooms_error"] = e.to_string().into(),
            Err(_) => out["rooms_error"] = "timed out".into(),
        }
    }
    out
}

/// Real-time rooms (`SCARD cluster:room_ids`) and subscribers (sum of `cluster:room_counts:*`
/// on every master).
async fn rooms(t: &Target, cmds: &Commands) -> Result<(u64, u64), CallError> {
    let rooms: u64 = cmds.query("SCARD cluster:room_ids", redis::cmd("SCARD").arg("cluster:room_ids")).await?;
    let mut subs = 0u64;
    for (_, mut m) in cmds.masters(t).await? {
        let keys = m.scan("cluster:room_counts:*").await?;
        for chunk in keys.chunks(500) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("GET").arg(k);
            }
            let counts: Vec<Option<String>> = m.pipeline("GET room counts", &p).await?;
            subs += counts.iter().flatten().filter_map(|c| c.trim().parse::<u64>().ok()).sum::<u64>();
        }
    }
    Ok((rooms, subs))
}

/// Clear the real-time state in Redis (ops `POST /cluster/reset`): every `cluster*` key but
/// `cluster:discovery` on every master, then `cluster:sync` `state:reset` to the nodes.
pub async fn reset(st: &ClusterState) -> Result<serde_json::Value, String> {
    let (target, cmds) = {
        let l = crate::util::lock(&st.link);
        (l.target.clone(), l.commands.clone())
    };
    let (Some(target), Some(cmds)) = (target, cmds) else {
        return Err("not connected to Redis yet".into());
    };
    match tokio::time::timeout(OPS_TIMEOUT, reset_on(&target, &cmds)).await {
        Ok(r) => r.map_err(|e| {
            st.error(&e);
            e.to_string()
        }),
        Err(_) => Err(format!("reset did not finish within {OPS_TIMEOUT:?}")),
    }
}

async fn reset_on(t: &Target, cmds: &Commands) -> Result<serde_json::Value, CallError> {
    let mut deleted = 0u64;
    let mut masters = Vec::new();
    for (name, mut m) in cmds.masters(t).await? {
        let keys: Vec<String> = m.scan("cluster*").await?.into_iter().filter(|k| k != DISCOVERY_KEY).collect();
        for chunk in keys.chunks(500) {
            // One DEL per key: keys of one master may still sit in different slots.
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("DEL").arg(k);
            }
            let n: Vec<u64> = m.pipeline("DEL", &p).await?;
            deleted += n.iter().sum::<u64>();
        }
        masters.push(name);
    }
    let payload = serde_json::json!(["cluster:sync", {"event": "state:reset"}]).to_string();
    let receivers: u64 =
        cmds.query("PUBLISH cluster:sync", redis::cmd("PUBLISH").arg("cluster:sync").arg(payload)).await?;
    tracing::info!(deleted, ?masters, receivers, "cluster: real-time state reset");
    Ok(serde_json::json!({"deleted": deleted, "masters": masters, "notified": receivers}))
}
