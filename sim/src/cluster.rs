//! The node's Redis side: plugin 3.x registration and heartbeats (or a Kuzzle 2 ID card), the
//! clean leave, the pool heard on pub/sub, and cross-node notifications; reconnects with backoff.
//!
//! Payloads (plugin mode; JSON texts, field order fixed):
//! - `SADD cluster:discovery {"pub","router","name","http"}` at start (and again on every
//!   heartbeat, so a restarted Redis gets the member back); `SREM` of the same text on leave.
//! - `PUBLISH cluster:ready ["cluster:ready", D]` when ready (at start, on reconnection and on a
//!   flip to ready), `PUBLISH cluster:heartbeat ["cluster:heartbeat", D]` right after and every
//!   heartbeat, and on any ready flip; `PUBLISH cluster:remove ["cluster:remove", D]` on leave;
//!   D = `{"uuid","pub","router","ready","name","http"}`.
//! - `PUBLISH cluster:notify:document ["cluster:notify:document",
//!   {"origin": uuid, "index", "collection", "body", "volatile", "_id"}]` on each realtime:publish.
//!
//! - The shared real-time state (`cluster:room_ids`, `cluster:room_counts:{index/collection}<roomId>`...)
//!   is written by its own task, see `roomstate`.
//!
//! Kuzzle 2 mode: `SET {cluster/node}/NAME {"id","ip","birthdate","topology":[]} PX 2*heartbeat`
//! and `SADD {cluster/node}/id-cards-index {cluster/node}/NAME` at start and every heartbeat;
//! `DEL` + `SREM` on leave.

use std::sync::Arc;
use std::time::Duration;

use kuzzle_redis_link::{CallError, Commands, Subscription, Target};
use redis::{Msg, PushKind, Value as RValue};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::{last_chance, unless_stopped, Backoff};
use crate::node::Node;
use crate::realtime::Published;
use crate::roomstate::{self, RoomSink};

/// Consecutive failed pings before a cluster subscription is rebuilt from scratch.
const PING_FAILURES: u32 = 3;
/// Cross-node notifications waiting for the Redis writer; past that they are dropped.
const CTL_QUEUE: usize = 4096;

pub(crate) const DISCOVERY: &str = "cluster:discovery";
pub(crate) const READY: &str = "cluster:ready";
pub(crate) const HEARTBEAT: &str = "cluster:heartbeat";
pub(crate) const REMOVE: &str = "cluster:remove";
pub(crate) const NOTIFY_DOCUMENT: &str = "cluster:notify:document";
pub(crate) const ID_CARD_PREFIX: &str = "{cluster/node}/";
pub(crate) const ID_CARDS_INDEX: &str = "{cluster/node}/id-cards-index";
const CHANNELS: [&str; 4] = [HEARTBEAT, READY, REMOVE, NOTIFY_DOCUMENT];

/// What the rest of the node asks of the Redis writer.
enum Ctl {
    /// Clean leave; answered once the goodbye is said (or could not be).
    Leave(oneshot::Sender<()>),
    /// A ready `cluster:notify:document` payload.
    Notify(String),
}

/// The real-time side's handle to publish cross-node notifications (never blocks).
#[derive(Clone)]
pub(crate) struct Publisher {
    /// The Redis writer's queue; `try_send` only, so a full queue drops the notification rather than
    /// block the request.
    tx: mpsc::Sender<Ctl>,
    /// This node's UUID, sent as `origin` so the node skips its own notification on the way back.
    uuid: String,
}

#[derive(Serialize)]
struct NotifyData<'a> {
    /// The publishing node's UUID: it ignores its own message (it notified its subscribers already).
    origin: &'a str,
    /// The index published on: only rooms on it (and `collection`) are notified.
    index: &'a str,
    /// The collection published on.
    collection: &'a str,
    /// The document: what the rooms' filters match, `_source` of the notifications.
    body: &'a Value,
    /// The publish request's volatile data, passed on to the subscribers as is.
    volatile: &'a Value,
    #[serde(rename = "_id")]
    /// The publish request's optional `_id` (`ids` filters match it).
    id: &'a Value,
}

impl Publisher {
    pub fn notify_document(&self, doc: &Published) {
        let data = NotifyData {
            origin: &self.uuid,
            index: &doc.index,
            collection: &doc.collection,
            body: &doc.body,
            volatile: &doc.volatile,
            id: &doc.id,
        };
        let Ok(payload) = serde_json::to_string(&(NOTIFY_DOCUMENT, data)) else { return };
        if self.tx.try_send(Ctl::Notify(payload)).is_err() {
            tracing::warn!("cross-node notification dropped: Redis writer busy or gone");
        }
    }
}

/// The running Redis side of one node.
pub(crate) struct ClusterLink {
    /// The Redis writer's queue: notifications (through each [`Publisher`]) and the clean leave.
    ctl: mpsc::Sender<Ctl>,
    /// This node's UUID, handed to each [`Publisher`] as the notifications' `origin`.
    uuid: String,
    /// The shared real-time state writer (plugin mode only).
    rooms: Option<RoomSink>,
    /// Fired after the first registration attempt and the first subscription attempt.
    first: Vec<oneshot::Receiver<()>>,
}

impl ClusterLink {
    pub fn spawn(targets: Target, node: Arc<Node>, stop: &CancellationToken, tracker: &TaskTracker) -> Self {
        let targets = Arc::new(targets);
        let (ctl, ctl_rx) = mpsc::channel(CTL_QUEUE);
        let (reg_tx, reg_rx) = oneshot::channel();
        let (sub_tx, sub_rx) = oneshot::channel();
        tracker.spawn(registrar(targets.clone(), node.clone(), ctl_rx, stop.clone(), reg_tx));
        // The shared real-time state is plugin 3.x's; Kuzzle 2 keeps none in Redis.
        let rooms = (!node.kuzzle2).then(|| {
            let sink = roomstate::spawn(targets.clone(), node.clone(), stop, tracker);
            let reporter = sink.clone();
            node.realtime.set_sink(move |update| reporter.send(update));
            sink
        });
        tracker.spawn(subscriber(targets, node.clone(), stop.clone(), sub_tx));
        ClusterLink { ctl, uuid: node.identity.uuid.clone(), rooms, first: vec![reg_rx, sub_rx] }
    }

    pub fn publisher(&self) -> Publisher {
        Publisher { tx: self.ctl.clone(), uuid: self.uuid.clone() }
    }

    /// Wait (bounded) until registration and subscription were each attempted once.
    pub async fn first_attempt(&mut self, limit: Duration) {
        let all = futures_util::future::join_all(self.first.drain(..));
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("first Redis registration not done within {limit:?}; going on, retrying in the background");
        }
    }

    /// Say goodbye on Redis (bounded by `limit` in all): this node's share of the real-time
    /// state first, then the discovery member.
    pub async fn leave(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        if let Some(rooms) = &self.rooms {
            rooms.withdraw(deadline).await;
        }
        let (ack, done) = oneshot::channel();
        let asked = tokio::time::timeout_at(deadline, self.ctl.send(Ctl::Leave(ack))).await;
        if matches!(asked, Ok(Ok(()))) && tokio::time::timeout_at(deadline, done).await.is_err() {
            tracing::warn!("clean leave not confirmed within {limit:?}");
        }
    }
}

fn message(room: &str, data: &impl Serialize) -> String {
    serde_json::to_string(&(room, data)).unwrap_or_default()
}

/// Register (start or reconnection): plugin SADD + cluster:ready + heartbeat; Kuzzle 2 ID card.
async fn register(c: &Commands, node: &Node) -> Result<(), CallError> {
    if node.kuzzle2 {
        return refresh(c, node).await;
    }
    let member = serde_json::to_string(&node.discovery_member()).unwrap_or_default();
    c.query::<RValue>("SADD", redis::cmd("SADD").arg(DISCOVERY).arg(&member)).await?;
    let d = node.descriptor();
    if d.ready {
        c.publish(READY, &message(READY, &d)).await?;
    }
    c.publish(HEARTBEAT, &message(HEARTBEAT, &d)).await
}

/// Every heartbeat: plugin SADD (idempotent; restores the member after a Redis restart) and
/// cluster:heartbeat; Kuzzle 2 ID card SET with TTL and index SADD.
async fn refresh(c: &Commands, node: &Node) -> Result<(), CallError> {
    if node.kuzzle2 {
        let key = format!("{ID_CARD_PREFIX}{}", node.name);
        let card = serde_json::json!({
            "id": node.name,
            "ip": node.identity.ip.to_string(),
            "birthdate": node.birthdate,
            "topology": [],
        });
        let ttl_ms = u64::try_from(node.heartbeat.saturating_mul(2).as_millis()).unwrap_or(u64::MAX).max(1);
        c.query::<RValue>("SET", redis::cmd("SET").arg(&key).arg(card.to_string()).arg("PX").arg(ttl_ms)).await?;
        c.query::<RValue>("SADD", redis::cmd("SADD").arg(ID_CARDS_INDEX).arg(&key)).await?;
        return Ok(());
    }
    let member = serde_json::to_string(&node.discovery_member()).unwrap_or_default();
    c.query::<RValue>("SADD", redis::cmd("SADD").arg(DISCOVERY).arg(&member)).await?;
    c.publish(HEARTBEAT, &message(HEARTBEAT, &node.descriptor())).await
}

/// Clean leave: plugin cluster:remove + SREM; Kuzzle 2 card DEL + SREM from the index.
async fn goodbye(c: &Commands, node: &Node) -> Result<(), CallError> {
    if node.kuzzle2 {
        let key = format!("{ID_CARD_PREFIX}{}", node.name);
        c.query::<RValue>("DEL", redis::cmd("DEL").arg(&key)).await?;
        c.query::<RValue>("SREM", redis::cmd("SREM").arg(ID_CARDS_INDEX).arg(&key)).await?;
        return Ok(());
    }
    let member = serde_json::to_string(&node.discovery_member()).unwrap_or_default();
    let removed = c.publish(REMOVE, &message(REMOVE, &node.descriptor())).await;
    // The member goes even if the broadcast failed: a stale member outlives the node otherwise.
    c.query::<RValue>("SREM", redis::cmd("SREM").arg(DISCOVERY).arg(&member)).await?;
    removed
}

/// The writer: registration, heartbeats, ready flips, notifications out, leave.
async fn registrar(
    targets: Arc<Target>,
    node: Arc<Node>,
    mut ctl: mpsc::Receiver<Ctl>,
    stop: CancellationToken,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut ready_rx = node.watch_ready();
    let mut conn: Option<Commands> = None;
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    let mut tick = tokio::time::interval_at(Instant::now() + node.heartbeat, node.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if conn.is_none() && Instant::now() >= retry_at {
            let attempt = unless_stopped(&stop, async {
                let c = Commands::connect(&targets).await?;
                register(&c, &node).await?;
                Ok::<_, CallError>(c)
            })
            .await;
            match attempt {
                None => return,
                Some(Ok(c)) => {
                    tracing::info!(node = %node.name, "registered on Redis");
                    conn = Some(c);
                    backoff.reset();
                    tick.reset();
                }
                Some(Err(e)) => {
                    let wait = backoff.step();
                    tracing::warn!(node = %node.name, "Redis registration failed ({e}); retrying in {wait:?}");
                    retry_at = Instant::now() + wait;
                }
            }
            if let Some(f) = first.take() {
                let _ = f.send(());
            }
        }
        let outcome: Option<Result<(), CallError>> = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(retry_at), if conn.is_none() => continue,
            c = ctl.recv() => match c {
                None => return,
                Some(Ctl::Leave(ack)) => {
                    if let Some(c) = last_chance(&mut conn, &targets, &stop).await {
                        match unless_stopped(&stop, goodbye(c, &node)).await {
                            Some(Ok(())) => tracing::info!(node = %node.name, "left the cluster"),
                            Some(Err(e)) => tracing::warn!(node = %node.name, "clean leave incomplete: {e}"),
                            None => {}
                        }
                    }
                    let _ = ack.send(());
                    return;
                }
                Some(Ctl::Notify(payload)) => match conn.as_ref() {
                    Some(c) => unless_stopped(&stop, c.publish(NOTIFY_DOCUMENT, &payload)).await,
                    None => {
                        tracing::debug!(node = %node.name, "Redis down: cross-node notification dropped");
                        Some(Ok(()))
                    }
                },
            },
            _ = tick.tick() => match conn.as_ref() {
                Some(c) => unless_stopped(&stop, refresh(c, &node)).await,
                None => Some(Ok(())),
            },
            changed = ready_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let ready = *ready_rx.borrow_and_update();
                match conn.as_ref() {
                    Some(c) if !node.kuzzle2 => {
                        let d = node.descriptor();
                        let r = unless_stopped(&stop, async {
                            if ready {
                                c.publish(READY, &message(READY, &d)).await?;
                            }
                            c.publish(HEARTBEAT, &message(HEARTBEAT, &d)).await
                        })
                        .await;
                        tick.reset();
                        r
                    }
                    _ => Some(Ok(())),
                }
            }
        };
        match outcome {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(node = %node.name, "Redis call failed ({e}); reconnecting");
                conn = None;
                retry_at = Instant::now();
            }
        }
    }
}

/// The reader: keeps a subscription to the cluster channels, reconnecting with backoff.
async fn subscriber(target: Arc<Target>, node: Arc<Node>, stop: CancellationToken, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut backoff = Backoff::new();
    loop {
        let r = follow(&target, &node, &stop, &mut first, &mut backoff).await;
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
        match r {
            Ok(()) => return, // stopped
            Err(e) => {
                let wait = backoff.step();
                tracing::warn!(node = %node.name, "Redis subscription lost ({e}); retrying in {wait:?}");
                if unless_stopped(&stop, tokio::time::sleep(wait)).await.is_none() {
                    return;
                }
            }
        }
    }
}

/// How often an idle subscription is checked with a PING.
fn ping_period(node: &Node) -> Duration {
    node.heartbeat.clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// One subscription (RESP3 pushes; on a Redis Cluster a classic PUBLISH reaches subscribers on
/// every node). `Ok` only when the node stops.
async fn follow(
    target: &Target,
    node: &Node,
    stop: &CancellationToken,
    first: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Backoff,
) -> Result<(), CallError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let channels = CHANNELS.map(String::from);
    let Some(sub) = unless_stopped(stop, Subscription::open(target, &channels, tx)).await else {
        return Ok(());
    };
    let mut sub = sub?;
    subscribed_now(node, first, backoff);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_period(node), ping_period(node));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            p = rx.recv() => match p {
                Some(push) if push.kind == PushKind::Message => {
                    if let Some(msg) = Msg::from_push_info(push) {
                        on_message(node, &msg);
                    }
                }
                Some(push) if sub.ends(&push) => return Err(CallError::Closed),
                // Subscription confirmations; a Redis Cluster client's reconnections (it
                // re-subscribes by itself).
                Some(push) => tracing::debug!(node = %node.name, "redis push {:?}", push.kind),
                None => return Err(CallError::Closed),
            },
            _ = ping.tick() => match sub.ping().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // A cluster client may be between two nodes: rebuild it only if the cluster
                    // stays unreachable. A single server's connection is gone at once.
                    if !sub.resubscribes_itself() || failures >= PING_FAILURES {
                        return Err(e);
                    }
                }
            },
        }
    }
}

fn subscribed_now(node: &Node, first: &mut Option<oneshot::Sender<()>>, backoff: &mut Backoff) {
    tracing::info!(node = %node.name, "subscribed to the cluster channels");
    backoff.reset();
    if let Some(f) = first.take() {
        let _ = f.send(());
    }
}

/// One pub/sub message: pool updates and notifications from other nodes. Malformed messages
/// (this is network input) are logged and dropped.
fn on_message(node: &Node, msg: &Msg) {
    let channel = msg.get_channel_name();
    let parsed: Result<(String, Value), _> = serde_json::from_slice(msg.get_payload_bytes());
    let Ok((_room, data)) = parsed else {
        tracing::debug!(node = %node.name, channel, "malformed cluster message dropped");
        return;
    };
    match channel {
        HEARTBEAT | READY => node.pool_seen(data),
        REMOVE => match data.get("pub").and_then(Value::as_str) {
            Some(p) => node.pool_remove(p),
            None => tracing::debug!(node = %node.name, "cluster:remove without pub dropped"),
        },
        NOTIFY_DOCUMENT => match parse_notify(&data) {
            Some((origin, _)) if origin == node.identity.uuid => {} // notified locally already
            Some((_, doc)) => {
                node.realtime.dispatch(&doc);
            }
            None => tracing::debug!(node = %node.name, "malformed cluster:notify:document dropped"),
        },
        _ => {}
    }
}

fn parse_notify(data: &Value) -> Option<(&str, Published)> {
    let origin = data.get("origin")?.as_str()?;
    let doc = Published {
        index: data.get("index")?.as_str()?.to_owned(),
        collection: data.get("collection")?.as_str()?.to_owned(),
        body: data.get("body").filter(|b| b.is_object())?.clone(),
        volatile: data.get("volatile").cloned().unwrap_or(Value::Null),
        id: data.get("_id").cloned().unwrap_or(Value::Null),
    };
    Some((origin, doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notify_payload_round_trip() {
        let doc = Published {
            index: "i".into(),
            collection: "c".into(),
            body: json!({"a": 1}),
            volatile: json!({"v": true}),
            id: Value::Null,
        };
        let data = NotifyData {
            origin: "u1",
            index: &doc.index,
            collection: &doc.collection,
            body: &doc.body,
            volatile: &doc.volatile,
            id: &doc.id,
        };
        let text = serde_json::to_string(&(NOTIFY_DOCUMENT, data)).unwrap();
        assert!(text.starts_with("[\"cluster:notify:document\",{\"origin\":\"u1\",\"index\":\"i\""), "{text}");
        let (room, v): (String, Value) = serde_json::from_str(&text).unwrap();
        assert_eq!(room, NOTIFY_DOCUMENT);
        let (origin, back) = parse_notify(&v).unwrap();
        assert_eq!(origin, "u1");
        assert_eq!(back, doc);
        assert!(parse_notify(&json!({"origin": "u", "index": "i", "collection": "c", "body": 3})).is_none());
    }
}
