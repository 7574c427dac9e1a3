//! Real-time rooms of one node: subscriptions of its WebSocket connections, channels, and the
//! fan-out of a published document to every matching subscriber.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::envelope::ApiError;
use crate::filters::Filter;
use crate::util::now_ms;

/// One WebSocket connection, as the registry knows it.
pub(crate) type ConnId = u64;

/// A document published with `realtime:publish`, here or on another node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Published {
    /// The index published on: only rooms on it (and `collection`) are notified.
    pub index: String,
    /// The collection published on.
    pub collection: String,
    /// The document: what the rooms' filters match, `_source` of the notifications.
    pub body: Value,
    /// The publish request's volatile data, copied into each notification.
    pub volatile: Value,
    /// The optional `_id` of the publish request.
    pub id: Value,
}

/// A room: its id and where it listens.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoomRef {
    /// The room id (the same index, collection and filters give the same id on every node).
    pub id: String,
    /// The index the room listens on (with `collection`, the hash tag of its Redis keys).
    pub index: String,
    /// The collection the room listens on.
    pub collection: String,
}

/// One connection entering or leaving a room on this node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RoomUpdate {
    Join {
        /// The room entered.
        room: RoomRef,
        /// The room's filters as canonical JSON text (the shared state's `cluster:filters:*`).
        filters: String,
        /// The connection entering (its first channel in the room).
        conn: ConnId,
    },
    Leave {
        /// The room left.
        room: RoomRef,
        /// The connection leaving (it unsubscribed, closed, or the node began shutting down).
        conn: ConnId,
    },
}

/// A room with local subscribers: what this node contributes to the shared state.
#[derive(Debug, Clone)]
pub(crate) struct RoomShare {
    /// The room (id, index, collection: what its Redis keys are named after).
    pub room: RoomRef,
    /// Its filters as canonical JSON text (written again on a replay).
    pub filters: String,
    /// The local connections subscribed to it (entered on a replay, withdrawn on a clean leave).
    pub conns: Vec<ConnId>,
}

/// Which notifications a channel receives (Kuzzle's `scope` option). A publish notification has
/// scope "in", so it goes to the "all" and "in" channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    All,
    In,
    Out,
    None,
}

impl Scope {
    fn parse(v: &Value) -> Result<Scope, ApiError> {
        match v {
            Value::Null => Ok(Scope::All),
            Value::String(s) => match s.as_str() {
                "all" => Ok(Scope::All),
                "in" => Ok(Scope::In),
                "out" => Ok(Scope::Out),
                "none" => Ok(Scope::None),
                other => Err(ApiError::bad_request(format!("invalid scope \"{other}\""))),
            },
            other => Err(ApiError::bad_request(format!("invalid scope {other}"))),
        }
    }

    fn gets_publish(self) -> bool {
        matches!(self, Scope::All | Scope::In)
    }
}

struct Room {
    /// The index the room listens on: a document published elsewhere skips the room.
    index: String,
    /// The collection the room listens on.
    collection: String,
    /// The compiled filters, matched against each published document.
    filter: Filter,
    /// The filters as canonical JSON text (what the shared state in Redis stores).
    filters: String,
    /// Subscribed connections and, for each, its channels in this room.
    subs: HashMap<ConnId, HashSet<String>>,
    /// Each channel's scope.
    channels: HashMap<String, Scope>,
}

struct Inner {
    /// Rooms with at least one local subscriber, by room id (a room left empty goes).
    rooms: HashMap<String, Room>,
    /// Outgoing queue of each live connection (notifications are pushed there, never awaited).
    conns: HashMap<ConnId, mpsc::Sender<Utf8Bytes>>,
}

impl Room {
    fn reference(&self, id: &str) -> RoomRef {
        RoomRef { id: id.to_owned(), index: self.index.clone(), collection: self.collection.clone() }
    }
}

/// Receives each room entry and exit; must not block.
type RoomReporter = Box<dyn Fn(RoomUpdate) + Send + Sync>;

/// The room registry of one node. Critical sections are short and never await.
pub(crate) struct Realtime {
    /// The node's name: logs and the `node` of each notification.
    node: String,
    /// The next connection id (from 1, never reused).
    next_id: AtomicU64,
    /// Rooms and connections, under one lock so a dispatch sees both consistent.
    inner: Mutex<Inner>,
    /// Where a connection entering or leaving a room is reported (plugin mode with Redis only).
    /// Called under the registry's lock, so it must not block (the Redis writer's queue is
    /// non-blocking); updates are then reported in the registry's order. A callback, so that the
    /// registry does not depend on the Redis side.
    sink: OnceLock<RoomReporter>,
}

fn internal() -> ApiError {
    ApiError::new(500, "core.fatal.unexpected_error", "real-time registry unavailable")
}

impl Realtime {
    pub fn new(node: String) -> Realtime {
        Realtime {
            node,
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner { rooms: HashMap::new(), conns: HashMap::new() }),
            sink: OnceLock::new(),
        }
    }

    /// Report room entries and exits to `sink` from now on (set once, at start).
    pub fn set_sink(&self, sink: impl Fn(RoomUpdate) + Send + Sync + 'static) {
        if self.sink.set(Box::new(sink)).is_err() {
            tracing::warn!(node = %self.node, "real-time state sink already set");
        }
    }

    fn report(&self, update: impl FnOnce() -> RoomUpdate) {
        if let Some(sink) = self.sink.get() {
            sink(update());
        }
    }

    /// Every room with local subscribers, and who they are (for a replay or a clean leave).
    pub fn shares(&self) -> Vec<RoomShare> {
        let Ok(g) = self.inner.lock() else { return Vec::new() };
        g.rooms
            .iter()
            .map(|(id, r)| RoomShare {
                room: r.reference(id),
                filters: r.filters.clone(),
                conns: r.subs.keys().copied().collect(),
            })
            .collect()
    }

    /// A new connection and the queue its notifications go to.
    pub fn register(&self, tx: mpsc::Sender<Utf8Bytes>) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.inner.lock() {
            g.conns.insert(id, tx);
        }
        id
    }

    /// A closed connection: every subscription it had goes, and rooms left empty with it.
    pub fn unregister(&self, conn: ConnId) {
        if let Ok(mut g) = self.inner.lock() {
            g.conns.remove(&conn);
            g.rooms.retain(|id, r| {
                if r.subs.remove(&conn).is_some() {
                    self.report(|| RoomUpdate::Leave { room: r.reference(id), conn });
                }
                !r.subs.is_empty()
            });
        }
    }

    /// Every subscription of every connection goes, the connections stay: what Kuzzle does as it
    /// begins shutting down (its hotel clerk clears them on `kuzzle:shutdown`).
    pub fn clear_subscriptions(&self) {
        if let Ok(mut g) = self.inner.lock() {
            for (id, r) in g.rooms.drain() {
                for conn in r.subs.keys() {
                    self.report(|| RoomUpdate::Leave { room: r.reference(&id), conn: *conn });
                }
            }
        }
    }

    /// Live WebSocket connections.
    pub fn connections(&self) -> usize {
        self.inner.lock().map_or(0, |g| g.conns.len())
    }

    /// `realtime:subscribe`: returns (roomId, channel).
    pub fn subscribe(
        &self,
        conn: ConnId,
        index: &str,
        collection: &str,
        filters: &Value,
        request: &Value,
    ) -> Result<(String, String), ApiError> {
        let filter = Filter::compile(filters)?;
        let scope = Scope::parse(request.get("scope").unwrap_or(&Value::Null))?;
        for opt in ["users", "state"] {
            if let Some(v) = request.get(opt) {
                if !(v.is_null() || v.is_string()) {
                    return Err(ApiError::bad_request(format!("invalid {opt} option {v}")));
                }
            }
        }
        let room_id = room_id(index, collection, filters);
        // The channel depends on the options that change what a subscriber receives, as Kuzzle's.
        let channel = format!(
            "{room_id}-{:016x}",
            fnv1a(format!("{scope:?}|{}|{}", request["users"], request["state"]).as_bytes())
        );
        let mut g = self.inner.lock().map_err(|_| internal())?;
        let room = g.rooms.entry(room_id.clone()).or_insert_with(|| Room {
            index: index.to_owned(),
            collection: collection.to_owned(),
            filter,
            filters: canonical_text(filters),
            subs: HashMap::new(),
            channels: HashMap::new(),
        });
        room.channels.insert(channel.clone(), scope);
        let entered = !room.subs.contains_key(&conn);
        room.subs.entry(conn).or_default().insert(channel.clone());
        if entered {
            self.report(|| RoomUpdate::Join { room: room.reference(&room_id), filters: room.filters.clone(), conn });
        }
        Ok((room_id, channel))
    }

    /// `realtime:unsubscribe`.
    pub fn unsubscribe(&self, conn: ConnId, room_id: &str) -> Result<(), ApiError> {
        let mut g = self.inner.lock().map_err(|_| internal())?;
        let Some(room) = g.rooms.get_mut(room_id) else { return Err(not_found(room_id)) };
        if room.subs.remove(&conn).is_none() {
            return Err(ApiError::new(
                412,
                "core.realtime.not_subscribed",
                format!("Not subscribed to room \"{room_id}\"."),
            ));
        }
        self.report(|| RoomUpdate::Leave { room: room.reference(room_id), conn });
        if room.subs.is_empty() {
            g.rooms.remove(room_id);
        }
        Ok(())
    }

    /// `realtime:count`: connections subscribed to the room on this node.
    pub fn count(&self, room_id: &str) -> Result<usize, ApiError> {
        let g = self.inner.lock().map_err(|_| internal())?;
        g.rooms.get(room_id).map(|r| r.subs.len()).ok_or_else(|| not_found(room_id))
    }

    /// Notify every local subscriber of a room matching `doc`; returns how many notifications
    /// were queued. A connection whose queue is full misses this one (it is too slow).
    pub fn dispatch(&self, doc: &Published) -> usize {
        let Ok(g) = self.inner.lock() else { return 0 };
        let mut sent = 0;
        let timestamp = now_ms();
        for (room_id, room) in &g.rooms {
            if room.index != doc.index || room.collection != doc.collection {
                continue;
            }
            if !room.filter.matches(&doc.body, doc.id.as_str()) {
                continue;
            }
            // One text per channel, shared by every connection on it.
            let mut texts: HashMap<&str, Utf8Bytes> = HashMap::new();
            for (conn, channels) in &room.subs {
                let Some(tx) = g.conns.get(conn) else { continue };
                for ch in channels {
                    if !room.channels.get(ch).is_some_and(|s| s.gets_publish()) {
                        continue;
                    }
                    let text = texts.entry(ch.as_str()).or_insert_with(|| self.notification(ch, doc, timestamp));
                    match tx.try_send(text.clone()) {
                        Ok(()) => sent += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(node = %self.node, conn, room = %room_id, "notification dropped: slow client");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        sent
    }

    fn notification(&self, channel: &str, doc: &Published, timestamp: u64) -> Utf8Bytes {
        json!({
            "type": "document",
            "room": channel,
            "status": 200,
            "requestId": Value::Null,
            "index": doc.index,
            "collection": doc.collection,
            "controller": "realtime",
            "action": "publish",
            "protocol": "websocket",
            "scope": "in",
            "state": "done",
            "event": "publish",
            "timestamp": timestamp,
            "volatile": doc.volatile,
            "result": {"_id": doc.id, "_source": doc.body},
            "node": self.node,
        })
        .to_string()
        .into()
    }
}

fn not_found(room_id: &str) -> ApiError {
    ApiError::new(404, "core.realtime.room_not_found", format!("Room \"{room_id}\" not found."))
}

/// A stable room id: the same index, collection and filters give the same id on every node.
pub(crate) fn room_id(index: &str, collection: &str, filters: &Value) -> String {
    let canon = canonical_text(filters);
    let h1 = fnv1a(format!("{index}\u{0}{collection}\u{0}{canon}").as_bytes());
    let h2 = fnv1a(format!("{canon}\u{0}{collection}\u{0}{index}").as_bytes());
    format!("{h1:016x}{h2:016x}")
}

/// The filters as JSON text with object keys sorted (null being `{}`).
fn canonical_text(v: &Value) -> String {
    let mut out = String::new();
    canonical(v, &mut out);
    out
}

/// JSON text with object keys sorted, so that key order does not change the room.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        // `{}` and null are the same filter.
        Value::Null => out.push_str("{}"),
        other => out.push_str(&other.to_string()),
    }
}

/// 64-bit FNV-1a: small, stable across builds and machines (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_stable_and_key_order_free() {
        let a = room_id("i", "c", &json!({"and": [{"equals": {"a": 1}}], "x": {"b": 1, "a": 2}}));
        let b = room_id("i", "c", &json!({"x": {"a": 2, "b": 1}, "and": [{"equals": {"a": 1}}]}));
        assert_eq!(a, b);
        assert_eq!(room_id("i", "c", &json!({})), room_id("i", "c", &Value::Null));
        assert_ne!(room_id("i", "c", &json!({})), room_id("i", "d", &json!({})));
        assert_eq!(a.len(), 32);
    }

    #[tokio::test]
    async fn subscribe_dispatch_unsubscribe() {
        let rt = Realtime::new("n".into());
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        let c1 = rt.register(tx1);
        let c2 = rt.register(tx2);
        let (room, ch) = rt.subscribe(c1, "i", "c", &json!({}), &json!({})).unwrap();
        let (room2, ch2) = rt.subscribe(c2, "i", "c", &json!({"equals": {"k": 1}}), &json!({})).unwrap();
        assert_ne!(room, room2);
        assert!(ch.starts_with(&room));
        let (_, none_ch) = rt.subscribe(c2, "i", "c", &json!({}), &json!({"scope": "out"})).unwrap();
        assert_ne!(none_ch, ch);
        assert_eq!(rt.count(&room).unwrap(), 2);

        let doc = Published {
            index: "i".into(),
            collection: "c".into(),
            body: json!({"k": 2}),
            volatile: json!({"v": 1}),
            id: Value::Null,
        };
        assert_eq!(rt.dispatch(&doc), 1, "only the {{}} room matches, the scope-out channel gets nothing");
        let n: Value = serde_json::from_str(rx1.recv().await.unwrap().as_str()).unwrap();
        assert_eq!(n["room"], ch.as_str());
        assert_eq!(n["result"]["_source"], json!({"k": 2}));
        assert_eq!(n["volatile"], json!({"v": 1}));
        assert!(rx2.try_recv().is_err());

        let doc = Published { body: json!({"k": 1}), ..doc };
        assert_eq!(rt.dispatch(&doc), 2);
        let n: Value = serde_json::from_str(rx2.recv().await.unwrap().as_str()).unwrap();
        assert_eq!(n["room"], ch2.as_str());

        rt.unsubscribe(c1, &room).unwrap();
        assert_eq!(rt.count(&room).unwrap(), 1);
        assert_eq!(rt.unsubscribe(c1, &room).unwrap_err().status, 412);
        rt.unregister(c2);
        assert_eq!(rt.count(&room).unwrap_err().status, 404);
        assert_eq!(rt.count(&room2).unwrap_err().status, 404);
    }

    #[test]
    fn clear_subscriptions_keeps_connections_and_reports_each_leave() {
        let rt = Realtime::new("n".into());
        let left = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = left.clone();
        rt.set_sink(move |u| {
            if let RoomUpdate::Leave { conn, .. } = u {
                seen.lock().unwrap().push(conn);
            }
        });
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, _rx2) = mpsc::channel(8);
        let c1 = rt.register(tx1);
        let c2 = rt.register(tx2);
        let (room, _) = rt.subscribe(c1, "i", "c", &json!({}), &json!({})).unwrap();
        rt.subscribe(c2, "i", "c", &json!({}), &json!({})).unwrap();
        rt.subscribe(c2, "i", "d", &json!({}), &json!({})).unwrap();
        rt.clear_subscriptions();
        assert_eq!(rt.connections(), 2, "connections stay");
        assert_eq!(rt.count(&room).unwrap_err().status, 404, "rooms go");
        let mut l = left.lock().unwrap().clone();
        l.sort_unstable();
        assert_eq!(l, vec![c1, c2, c2]);
        let doc = Published {
            index: "i".into(),
            collection: "c".into(),
            body: json!({}),
            volatile: Value::Null,
            id: Value::Null,
        };
        assert_eq!(rt.dispatch(&doc), 0);
        assert!(rx1.try_recv().is_err());
    }
}
