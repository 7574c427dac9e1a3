//! Plugin 3.x's shared real-time state in Redis: this node's rooms and subscribers, written by one task, best-effort.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::Value as RValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use kuzzle_redis_link::{CallError, Commands, Target};

use crate::link::{last_chance, unless_stopped, Backoff};
use crate::node::Node;
use crate::realtime::{ConnId, RoomRef, RoomUpdate};
use crate::util::now_ms;

/// SET of every room id, on its own slot.
pub(crate) const ROOM_IDS: &str = "cluster:room_ids";
/// SET of every `index/collection` with rooms, on its own slot.
pub(crate) const COLLECTIONS: &str = "cluster:collections";
/// Room entries and exits waiting for the writer; past that they are dropped (best-effort).
const QUEUE: usize = 4096;
/// At most one warning about dropped updates per this many milliseconds.
const WARN_EVERY_MS: u64 = 10_000;

/// Join: the listed clients enter a room (KEYS: room_clients, room_counts, filters_tree, filters,
/// version; ARGV: roomId, filters JSON, clients...). Idempotent: a client already in the room does
/// not count twice, so a replay after a reconnection is harmless. Returns how many entered.
const JOIN: &str = r"
local added = 0
for i = 3, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('INCR', KEYS[2])
    added = added + 1
  end
end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], ARGV[2])
if added > 0 then redis.call('INCR', KEYS[5]) end
return added
";

/// Leave: the listed clients leave a room (same KEYS; ARGV: roomId, clients...). A client not in
/// the room (its entry was dropped, or the state was reset) changes nothing, so a count never goes
/// below zero. At zero the room's keys go, and with the collection's last room its version counter
/// too (a node that leaves cleanly leaves nothing behind). Returns {left, room gone (0/1),
/// collection empty (0/1)}.
const LEAVE: &str = r"
local removed = 0
for i = 2, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('DECR', KEYS[2])
    removed = removed + 1
  end
end
if removed == 0 then return {0, 0, 0} end
redis.call('INCR', KEYS[5])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then return {removed, 0, 0} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then return {removed, 1, 0} end
redis.call('DEL', KEYS[5])
return {removed, 1, 1}
";

/// The key names of one room. Every key but the two global SETs carries the hash tag
/// `{index/collection}`, so one room's keys (and one collection's) share a Redis Cluster slot.
#[derive(Debug, PartialEq)]
struct Keys {
    /// `cluster:room_clients:{index/collection}ROOM`: SET of the room's clients (`uuid-conn`).
    clients: String,
    /// `cluster:room_counts:{index/collection}ROOM`: how many clients the room has.
    count: String,
    /// `cluster:filters_tree{index/collection}`: SET of the collection's room ids.
    tree: String,
    /// `cluster:filters:{index/collection}ROOM`: the room's filters JSON.
    filters: String,
    /// `cluster:version{index/collection}`: bumped at every change of the collection's rooms.
    version: String,
    /// The `cluster:collections` member.
    collection: String,
}

impl Keys {
    fn new(room: &RoomRef) -> Keys {
        let (id, collection) = (&room.id, format!("{}/{}", room.index, room.collection));
        let tag = format!("{{{collection}}}");
        Keys {
            clients: format!("cluster:room_clients:{tag}{id}"),
            count: format!("cluster:room_counts:{tag}{id}"),
            tree: format!("cluster:filters_tree{tag}"),
            filters: format!("cluster:filters:{tag}{id}"),
            version: format!("cluster:version{tag}"),
            collection,
        }
    }

    fn script(&self, lua: &str) -> redis::Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(lua).arg(5).arg(&self.clients).arg(&self.count).arg(&self.tree).arg(&self.filters).arg(&self.version);
        c
    }
}

/// The connection id written in `cluster:room_clients:*`: unique across nodes.
fn client_id(node: &Node, conn: ConnId) -> String {
    format!("{}-{conn}", node.identity.uuid)
}

/// Counts dropped updates and warns about them at most every [`WARN_EVERY_MS`].
#[derive(Default)]
struct Drops {
    /// Updates dropped since the last warning, which reports them.
    dropped: AtomicU64,
    /// Epoch ms of the last warning (at most one every `WARN_EVERY_MS`).
    last_warn_ms: AtomicU64,
}

impl Drops {
    fn note(&self, node: &str, why: &dyn std::fmt::Display) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < WARN_EVERY_MS
            || self.last_warn_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let n = self.dropped.swap(0, Ordering::Relaxed);
        tracing::warn!(node, "{n} real-time state update(s) not written to Redis ({why}); the state is best-effort");
    }
}

enum RoomCtl {
    Update(RoomUpdate),
    /// Clean leave: withdraw every local subscriber; answered when done (or impossible).
    Withdraw(oneshot::Sender<()>),
}

/// The real-time registry's handle to the writer (never blocks).
#[derive(Clone)]
pub(crate) struct RoomSink {
    /// The writer's queue; `try_send` only, as the registry reports under its lock: a full queue
    /// drops the update.
    tx: mpsc::Sender<RoomCtl>,
    /// Dropped updates, shared with the writer (which also counts those it cannot write to Redis).
    drops: Arc<Drops>,
    /// The node's name, for the warnings.
    node: Arc<str>,
}

impl RoomSink {
    pub fn send(&self, update: RoomUpdate) {
        match self.tx.try_send(RoomCtl::Update(update)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.drops.note(&self.node, &"writer queue full"),
            // The node is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Remove this node's subscribers from the shared state, waiting at most until `deadline`.
    pub async fn withdraw(&self, deadline: Instant) {
        let (ack, done) = oneshot::channel();
        let asked = tokio::time::timeout_at(deadline, self.tx.send(RoomCtl::Withdraw(ack))).await;
        if matches!(asked, Ok(Ok(()))) && tokio::time::timeout_at(deadline, done).await.is_err() {
            tracing::warn!(node = %self.node, "real-time state not withdrawn from Redis in time");
        }
    }
}

/// Start the writer; it stops with `stop` (or after a withdraw).
pub(crate) fn spawn(
    targets: Arc<Target>,
    node: Arc<Node>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> RoomSink {
    let (tx, rx) = mpsc::channel(QUEUE);
    let drops = Arc::new(Drops::default());
    let sink = RoomSink { tx, drops: drops.clone(), node: node.name.as_str().into() };
    tracker.spawn(writer(targets, node, rx, stop.clone(), drops));
    sink
}

/// Enter `clients` into `room`: the room's keys in one script, then the two global SETs, each
/// its own command (their slots differ from the room's).
async fn join(c: &Commands, room: &RoomRef, filters: &str, clients: &[String]) -> Result<(), CallError> {
    let k = Keys::new(room);
    let mut cmd = k.script(JOIN);
    cmd.arg(&room.id).arg(filters).arg(clients);
    c.query::<RValue>("EVAL join", &cmd).await?;
    c.query::<RValue>("SADD", redis::cmd("SADD").arg(ROOM_IDS).arg(&room.id)).await?;
    c.query::<RValue>("SADD", redis::cmd("SADD").arg(COLLECTIONS).arg(&k.collection)).await?;
    Ok(())
}

/// Take `clients` out of `room`; when it empties, out of `cluster:room_ids` too (and the collection
/// out of `cluster:collections` when it has no room left). Those two SETs cannot be changed
/// atomically with the room: after a removal, a room (or collection) another node re-created
/// meanwhile is put back.
async fn leave(c: &Commands, room: &RoomRef, clients: &[String]) -> Result<(), CallError> {
    let k = Keys::new(room);
    let mut cmd = k.script(LEAVE);
    cmd.arg(&room.id).arg(clients);
    let r: Vec<i64> = c.query("EVAL leave", &cmd).await?;
    let (room_gone, collection_gone) = (r.get(1) == Some(&1), r.get(2) == Some(&1));
    if room_gone {
        c.query::<RValue>("SREM", redis::cmd("SREM").arg(ROOM_IDS).arg(&room.id)).await?;
        if c.query::<bool>("EXISTS", redis::cmd("EXISTS").arg(&k.count)).await? {
            c.query::<RValue>("SADD", redis::cmd("SADD").arg(ROOM_IDS).arg(&room.id)).await?;
        }
    }
    if collection_gone {
        c.query::<RValue>("SREM", redis::cmd("SREM").arg(COLLECTIONS).arg(&k.collection)).await?;
        if c.query::<bool>("EXISTS", redis::cmd("EXISTS").arg(&k.tree)).await? {
            c.query::<RValue>("SADD", redis::cmd("SADD").arg(COLLECTIONS).arg(&k.collection)).await?;
        }
    }
    Ok(())
}

async fn apply(c: &Commands, node: &Node, update: &RoomUpdate) -> Result<(), CallError> {
    match update {
        RoomUpdate::Join { room, filters, conn } => join(c, room, filters, &[client_id(node, *conn)]).await,
        RoomUpdate::Leave { room, conn } => leave(c, room, &[client_id(node, *conn)]).await,
    }
}

/// After a (re)connection: every local subscriber again (a restarted Redis is empty; on a Redis
/// that kept the state this changes nothing).
async fn replay(c: &Commands, node: &Node) -> Result<(), CallError> {
    for share in node.realtime.shares() {
        let clients: Vec<String> = share.conns.iter().map(|conn| client_id(node, *conn)).collect();
        join(c, &share.room, &share.filters, &clients).await?;
    }
    Ok(())
}

/// What this writer put in Redis and has not taken out yet, by room id: a clean leave takes all
/// of it out, including entries whose exit was dropped (Redis slow or away when the client left).
#[derive(Default)]
struct Written(HashMap<String, (RoomRef, Vec<ConnId>)>);

impl Written {
    fn joined(&mut self, room: &RoomRef, conns: &[ConnId]) {
        let e = self.0.entry(room.id.clone()).or_insert_with(|| (room.clone(), Vec::new()));
        for c in conns {
            if !e.1.contains(c) {
                e.1.push(*c);
            }
        }
    }

    fn left(&mut self, room: &RoomRef, conn: ConnId) {
        if let Some(e) = self.0.get_mut(&room.id) {
            e.1.retain(|c| *c != conn);
            if e.1.is_empty() {
                self.0.remove(&room.id);
            }
        }
    }
}

/// Clean leave: every local subscriber out, and everything written for subscribers gone since
/// (leaving is idempotent: a client not in a room changes nothing).
async fn withdraw_all(c: &Commands, node: &Node, written: &Written) -> Result<(), CallError> {
    for share in node.realtime.shares() {
        let clients: Vec<String> = share.conns.iter().map(|conn| client_id(node, *conn)).collect();
        leave(c, &share.room, &clients).await?;
    }
    for (room, conns) in written.0.values() {
        let clients: Vec<String> = conns.iter().map(|conn| client_id(node, *conn)).collect();
        leave(c, room, &clients).await?;
    }
    Ok(())
}

/// How often the writer checks whether Redis restarted (and lost the state).
const RESTART_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The server's run_id (changes when Redis restarts); None on a Redis Cluster, where each master
/// has its own, or when it cannot be read.
async fn run_id(c: &Commands) -> Option<String> {
    if !matches!(c, Commands::Single(_)) {
        return None;
    }
    let info: String = c.query("INFO", redis::cmd("INFO").arg("server")).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|v| v.trim().to_string())
}

/// The writer: its own command connection (a burst of room updates never delays heartbeats),
/// updates applied in the registry's order, dropped while Redis is unreachable.
async fn writer(
    targets: Arc<Target>,
    node: Arc<Node>,
    mut rx: mpsc::Receiver<RoomCtl>,
    stop: CancellationToken,
    drops: Arc<Drops>,
) {
    let mut conn: Option<Commands> = None;
    let mut written = Written::default();
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    // The connection manager reconnects by itself, so a restarted (empty) Redis shows up only as
    // a new server run_id: checked every second, it triggers a replay. A reset keeps the run_id.
    let mut run: Option<String> = None;
    let mut tick = tokio::time::interval(RESTART_CHECK);
    loop {
        if conn.is_none() && Instant::now() >= retry_at {
            let attempt = unless_stopped(&stop, async {
                let c = Commands::connect(&targets).await?;
                replay(&c, &node).await?;
                let id = run_id(&c).await;
                Ok::<_, CallError>((c, id))
            })
            .await;
            match attempt {
                None => return,
                Some(Ok((c, id))) => {
                    tracing::debug!(node = %node.name, "real-time state writer connected");
                    for share in node.realtime.shares() {
                        written.joined(&share.room, &share.conns);
                    }
                    conn = Some(c);
                    run = id;
                    backoff.reset();
                }
                Some(Err(e)) => {
                    let wait = backoff.step();
                    // The registrar warns about an unreachable Redis already.
                    tracing::debug!(node = %node.name, "real-time state writer: {e}; retrying in {wait:?}");
                    retry_at = Instant::now() + wait;
                }
            }
        }
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(retry_at), if conn.is_none() => continue,
            _ = tick.tick(), if conn.is_some() && run.is_some() => {
                if let Some(c) = conn.as_ref() {
                    let now = unless_stopped(&stop, run_id(c)).await.flatten();
                    if now.is_some() && now != run {
                        tracing::debug!(node = %node.name, "Redis restarted: writing the real-time state again");
                        if let Some(Err(e)) = unless_stopped(&stop, replay(c, &node)).await {
                            drops.note(&node.name, &e);
                            conn = None;
                            retry_at = Instant::now() + backoff.step();
                            continue;
                        }
                        run = now;
                    }
                }
                continue;
            }
            m = rx.recv() => m,
        };
        match msg {
            None => return,
            Some(RoomCtl::Update(update)) => {
                let Some(c) = conn.as_ref() else {
                    drops.note(&node.name, &"Redis unreachable");
                    continue;
                };
                match unless_stopped(&stop, apply(c, &node, &update)).await {
                    None => return,
                    Some(Ok(())) => match &update {
                        RoomUpdate::Join { room, conn: id, .. } => written.joined(room, &[*id]),
                        RoomUpdate::Leave { room, conn: id } => written.left(room, *id),
                    },
                    Some(Err(e)) => {
                        // A failed join may have written part of its keys: leaving covers them.
                        if let RoomUpdate::Join { room, conn: id, .. } = &update {
                            written.joined(room, &[*id]);
                        }
                        drops.note(&node.name, &e);
                        conn = None;
                        retry_at = Instant::now() + backoff.step();
                    }
                }
            }
            Some(RoomCtl::Withdraw(ack)) => {
                if let Some(c) = last_chance(&mut conn, &targets, &stop).await {
                    match unless_stopped(&stop, withdraw_all(c, &node, &written)).await {
                        Some(Ok(())) => tracing::debug!(node = %node.name, "real-time state withdrawn"),
                        Some(Err(e)) => tracing::warn!(node = %node.name, "real-time state not withdrawn: {e}"),
                        None => {}
                    }
                }
                let _ = ack.send(());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_share_the_collection_tag() {
        let room = RoomRef { id: "r1".into(), index: "idx".into(), collection: "col".into() };
        let k = Keys::new(&room);
        assert_eq!(k.clients, "cluster:room_clients:{idx/col}r1");
        assert_eq!(k.count, "cluster:room_counts:{idx/col}r1");
        assert_eq!(k.tree, "cluster:filters_tree{idx/col}");
        assert_eq!(k.filters, "cluster:filters:{idx/col}r1");
        assert_eq!(k.version, "cluster:version{idx/col}");
        assert_eq!(k.collection, "idx/col");
    }

    #[test]
    fn drops_warn_at_most_once_per_period() {
        let d = Drops::default();
        d.note("n", &"x");
        assert_eq!(d.dropped.load(Ordering::Relaxed), 0, "the first drop warns at once");
        d.note("n", &"x");
        d.note("n", &"x");
        assert_eq!(d.dropped.load(Ordering::Relaxed), 2, "later ones wait for the next period");
    }
}
