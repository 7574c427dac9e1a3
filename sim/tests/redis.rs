//! The sim's Redis side against a real `redis-server`: plugin 3.x registration, heartbeats, pool,
//! clean leave, kill, cross-node notifications, the shared real-time state, Kuzzle 2 ID cards, and
//! surviving a Redis restart.

mod common;

use std::time::Duration;

use common::*;
use kuzzle_node_sim::{SimConfig, SimHandle};
use redis::AsyncCommands;
use serde_json::{json, Value};

fn cfg(name: &str, r: &RedisServer) -> SimConfig {
    let mut c = SimConfig::new(name);
    c.redis = Some(r.url());
    c.heartbeat = Duration::from_millis(300);
    c
}

/// The `cluster:discovery` members, parsed.
async fn discovery(conn: &mut redis::aio::MultiplexedConnection) -> Vec<Value> {
    let members: Vec<String> = conn.smembers("cluster:discovery").await.expect("SMEMBERS");
    members
        .iter()
        .map(|m| serde_json::from_str(m).unwrap_or_else(|e| panic!("member {m:?} is not JSON: {e}")))
        .collect()
}

fn pool_pubs(status: &Value) -> Vec<String> {
    status["result"]["pool"]
        .as_array()
        .map_or_else(Vec::new, |p| p.iter().filter_map(|d| d["pub"].as_str().map(str::to_owned)).collect())
}

async fn status(s: &SimHandle) -> Value {
    get(s.addr, "/_plugin/cluster/status").await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_registration_heartbeats_pool_and_leave() {
    let r = RedisServer::start();
    let mut conn = r.conn().await;
    let mut sub = r.subscriber(&["cluster:heartbeat", "cluster:ready", "cluster:remove"]).await;

    let n1 = sim(cfg("cluster_kuzzle_1", &r)).await;
    // On start: discovery member, cluster:ready and a first heartbeat, without waiting a period.
    let members = discovery(&mut conn).await;
    let m1 = members.iter().find(|m| m["pub"] == n1.pub_addr()).unwrap_or_else(|| panic!("n1 not in {members:?}"));
    assert_eq!(m1["router"], n1.pub_addr());
    assert_eq!(m1["name"], "cluster_kuzzle_1");
    assert_eq!(m1["http"], format!("http://{}", n1.addr));
    let ready = sub.wait("cluster:ready of n1", |ch, v| ch == "cluster:ready" && v[1]["pub"] == n1.pub_addr()).await;
    assert_eq!(ready[0], "cluster:ready", "payload is [room, data]");
    let d = &ready[1];
    assert_eq!(d["ready"], true);
    assert_eq!(d["name"], "cluster_kuzzle_1");
    assert_eq!(d["uuid"], n1.uuid());
    assert_eq!(d["http"], format!("http://{}", n1.addr));
    assert_eq!(d["router"], n1.pub_addr());
    let hb = sub.wait("heartbeat of n1", |ch, v| ch == "cluster:heartbeat" && v[1]["pub"] == n1.pub_addr()).await;
    assert_eq!(hb[0], "cluster:heartbeat");
    // ...and then periodically.
    for _ in 0..2 {
        sub.wait("periodic heartbeat", |ch, v| ch == "cluster:heartbeat" && v[1]["uuid"] == n1.uuid()).await;
    }

    // Two nodes see each other in their pools.
    let n2 = sim(cfg("cluster_kuzzle_2", &r)).await;
    assert_ne!(n1.pub_addr(), n2.pub_addr(), "identities are unique per listen address");
    for (a, b) in [(&n1, &n2), (&n2, &n1)] {
        let want = b.pub_addr().to_owned();
        eventually(T, "pool lists the other node", || async {
            let st = status(a).await;
            (pool_pubs(&st).contains(&want) && st["result"]["count"] == 2).then_some(())
        })
        .await;
    }

    // Ready flips are published at once (not at the next period).
    n2.set_ready(false);
    sub.wait("heartbeat with ready=false", |ch, v| {
        ch == "cluster:heartbeat" && v[1]["pub"] == n2.pub_addr() && v[1]["ready"] == false
    })
    .await;
    assert_eq!(get(n2.addr, "/_plugin/cluster/health").await.status, 404);
    assert_eq!(post(n2.addr, "/_sim/ready/true").await.status, 200);
    sub.wait("cluster:ready again", |ch, v| {
        ch == "cluster:ready" && v[1]["pub"] == n2.pub_addr() && v[1]["ready"] == true
    })
    .await;

    // Clean leave: cluster:remove, member gone, and n1's pool forgets n2.
    let (pub2, uuid2) = (n2.pub_addr().to_owned(), n2.uuid().to_owned());
    n2.shutdown().await;
    let rm = sub.wait("cluster:remove of n2", |ch, v| ch == "cluster:remove" && v[1]["pub"] == pub2.as_str()).await;
    assert_eq!(rm[1]["uuid"], uuid2.as_str());
    let members = discovery(&mut conn).await;
    assert!(!members.iter().any(|m| m["pub"] == pub2.as_str()), "n2's member removed: {members:?}");
    assert!(members.iter().any(|m| m["pub"] == n1.pub_addr()), "n1's member stays: {members:?}");
    eventually(T, "n1 forgets n2", || async { (!pool_pubs(&status(&n1).await).contains(&pub2)).then_some(()) }).await;

    // Kill: no goodbye. The member stays; heartbeats stop; n1's pool drops it after 2 x heartbeat.
    let n3 = sim(cfg("cluster_kuzzle_3", &r)).await;
    let pub3 = n3.pub_addr().to_owned();
    eventually(T, "n1 sees n3", || async { pool_pubs(&status(&n1).await).contains(&pub3).then_some(()) }).await;
    n3.kill();
    eventually(T, "n1 drops the silent n3", || async {
        (!pool_pubs(&status(&n1).await).contains(&pub3)).then_some(())
    })
    .await;
    let members = discovery(&mut conn).await;
    assert!(members.iter().any(|m| m["pub"] == pub3.as_str()), "a killed node leaves its member: {members:?}");
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_notifications() {
    let r = RedisServer::start();
    let mut notes = r.subscriber(&["cluster:notify:document"]).await;
    let n1 = sim(cfg("x1", &r)).await;
    let n2 = sim(cfg("x2", &r)).await;
    let mut s1 = ws(n1.addr, "/").await;
    let mut s2 = ws(n2.addr, "/").await;
    let mut p2 = ws(n2.addr, "/").await;
    let (_, ch1) = subscribe(&mut s1, "idx", "col", json!({}), "s1").await;
    let (_, ch2) = subscribe(&mut s2, "idx", "col", json!({"equals": {"k": "v"}}), "s2").await;

    // Published on node 2: node 1's subscriber and node 2's both get it, each from its own node.
    publish(&mut p2, "idx", "col", json!({"k": "v", "n": 1}), "pub-1").await;
    let n = notification(&mut s1, &ch1, Vec::new()).await;
    assert_eq!(n["result"]["_source"], json!({"k": "v", "n": 1}));
    assert_eq!(n["node"], "x1");
    assert_eq!(n["volatile"], json!({"from": "pub-1"}));
    let n = notification(&mut s2, &ch2, Vec::new()).await;
    assert_eq!(n["node"], "x2");

    // What went over Redis.
    let m = notes.wait("cluster:notify:document", |_, v| v[1]["body"]["n"] == 1).await;
    assert_eq!(m[0], "cluster:notify:document");
    assert_eq!(m[1]["origin"], n2.uuid());
    assert_eq!((m[1]["index"].as_str(), m[1]["collection"].as_str()), (Some("idx"), Some("col")));

    // The origin does not notify twice: exactly one notification on node 2's subscriber.
    publish(&mut p2, "idx", "col", json!({"k": "v", "n": 2}), "pub-2").await;
    let (n, _) = ws_wait(&mut s2, "second notification", |v| v["room"] == ch2.as_str()).await;
    assert_eq!(n["result"]["_source"]["n"], 2);
    // n=2 arrived after n=1 only once each: a third publish's notification is the next one.
    publish(&mut p2, "idx", "col", json!({"k": "v", "n": 3}), "pub-3").await;
    let (n, _) = ws_wait(&mut s2, "third notification", |v| v["room"] == ch2.as_str()).await;
    assert_eq!(n["result"]["_source"]["n"], 3, "a duplicate of n=2 came first: {n}");

    // A notification injected on Redis by another origin reaches local subscribers; garbage is ignored.
    let mut conn = r.conn().await;
    let _: i64 = conn.publish("cluster:notify:document", "not json").await.expect("publish");
    let _: i64 = conn
        .publish("cluster:notify:document", "[\"cluster:notify:document\", {\"origin\": 1}]")
        .await
        .expect("publish");
    let injected = json!(["cluster:notify:document", {"origin": "someone-else", "index": "idx", "collection": "col", "body": {"k": "v", "n": 4}, "volatile": null}]);
    let _: i64 = conn.publish("cluster:notify:document", injected.to_string()).await.expect("publish");
    let (n, _) =
        ws_wait(&mut s1, "injected notification", |v| v["room"] == ch1.as_str() && v["result"]["_source"]["n"] == 4)
            .await;
    assert_eq!(n["node"], "x1");
    n1.shutdown().await;
    n2.shutdown().await;
}

/// A room's subscriber count in `cluster:room_counts:{index/collection}<roomId>`, if the key exists.
async fn room_count(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<i64> {
    conn.get(key).await.expect("GET room count")
}

/// Wait until the room's count key holds `want` (`None`: the key is gone).
async fn wait_count(conn: &redis::aio::MultiplexedConnection, key: &str, want: Option<i64>) {
    eventually(T, &format!("{key} == {want:?}"), || {
        let mut conn = conn.clone();
        async move { (room_count(&mut conn, key).await == want).then_some(()) }
    })
    .await;
}

/// What the gateway's `POST /cluster/reset` does: SCAN + DEL of every `cluster*` key but
/// `cluster:discovery`.
async fn reset(conn: &mut redis::aio::MultiplexedConnection) {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("cluster*")
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await
            .expect("SCAN");
        for k in keys.iter().filter(|k| k.as_str() != "cluster:discovery") {
            let _: i64 = conn.del(k).await.expect("DEL");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_realtime_state() {
    let r = RedisServer::start();
    let mut conn = r.conn().await;
    let n1 = sim(cfg("rt1", &r)).await;
    let filters = json!({"equals": {"k": "v"}});

    // Two clients of one node in one room.
    let mut a = ws(n1.addr, "/").await;
    let mut b = ws(n1.addr, "/").await;
    let (room, _) = subscribe(&mut a, "idx", "col", filters.clone(), "a").await;
    let (room_b, _) = subscribe(&mut b, "idx", "col", json!({"equals": {"k": "v"}}), "b").await;
    assert_eq!(room, room_b);
    // The same connection on another channel of the room does not count twice.
    let mut again = kuzzle("realtime", "subscribe", "a2");
    again["index"] = json!("idx");
    again["collection"] = json!("col");
    again["body"] = filters.clone();
    again["scope"] = json!("out");
    assert_eq!(ws_call(&mut a, again).await.0["status"], 200);
    let count_key = format!("cluster:room_counts:{{idx/col}}{room}");
    let clients_key = format!("cluster:room_clients:{{idx/col}}{room}");
    let filters_key = format!("cluster:filters:{{idx/col}}{room}");
    wait_count(&conn, &count_key, Some(2)).await;
    let rooms: i64 = conn.scard("cluster:room_ids").await.expect("SCARD");
    assert_eq!(rooms, 1);
    let ids: Vec<String> = conn.smembers("cluster:room_ids").await.expect("SMEMBERS");
    assert_eq!(ids, [room.as_str()]);
    let cols: Vec<String> = conn.smembers("cluster:collections").await.expect("SMEMBERS");
    assert_eq!(cols, ["idx/col"]);
    let tree: Vec<String> = conn.smembers("cluster:filters_tree{idx/col}").await.expect("SMEMBERS");
    assert_eq!(tree, [room.as_str()]);
    let stored: Option<String> = conn.get(&filters_key).await.expect("GET filters");
    assert_eq!(stored.as_deref(), Some(r#"{"equals":{"k":"v"}}"#));
    let clients: Vec<String> = conn.smembers(&clients_key).await.expect("SMEMBERS");
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert!(clients.iter().all(|c| c.starts_with(n1.uuid())), "client ids are node-unique: {clients:?}");
    let version: i64 = conn.get("cluster:version{idx/col}").await.expect("GET version");
    assert_eq!(version, 2, "one bump per change");

    // One disconnects: 1. Both: the room is gone, and so is the collection.
    drop(a);
    wait_count(&conn, &count_key, Some(1)).await;
    let rooms: i64 = conn.scard("cluster:room_ids").await.expect("SCARD");
    assert_eq!(rooms, 1);
    let n: i64 = conn.scard(&clients_key).await.expect("SCARD");
    assert_eq!(n, 1);
    drop(b);
    wait_count(&conn, &count_key, None).await;
    // cluster:room_ids and cluster:collections are on other slots: updated by the next commands.
    eventually(T, "room and collection out of the global SETs", || {
        let mut conn = conn.clone();
        async move {
            let rooms: i64 = conn.scard("cluster:room_ids").await.expect("SCARD");
            let cols: i64 = conn.scard("cluster:collections").await.expect("SCARD");
            (rooms == 0 && cols == 0).then_some(())
        }
    })
    .await;
    // Nothing is left behind, the collection's version counter included (a shared Redis stays clean).
    let keys = [clients_key.as_str(), filters_key.as_str(), "cluster:filters_tree{idx/col}", "cluster:collections"];
    for key in keys.into_iter().chain(["cluster:version{idx/col}"]) {
        let exists: bool = conn.exists(key).await.expect("EXISTS");
        assert!(!exists, "{key} left behind");
    }

    // Two nodes in one room; unsubscribe, clean leave of a node, kill.
    let n2 = sim(cfg("rt2", &r)).await;
    let mut c = ws(n1.addr, "/").await;
    let mut d = ws(n2.addr, "/").await;
    subscribe(&mut c, "idx", "col", filters.clone(), "c").await;
    subscribe(&mut d, "idx", "col", filters.clone(), "d").await;
    wait_count(&conn, &count_key, Some(2)).await;
    let mut unsub = kuzzle("realtime", "unsubscribe", "u");
    unsub["body"] = json!({"roomId": room});
    assert_eq!(ws_call(&mut d, unsub).await.0["status"], 200);
    wait_count(&conn, &count_key, Some(1)).await;
    subscribe(&mut d, "idx", "col", filters.clone(), "d2").await;
    wait_count(&conn, &count_key, Some(2)).await;
    // A clean leave withdraws the node's subscribers before it returns.
    n2.shutdown().await;
    assert_eq!(room_count(&mut conn, &count_key).await, Some(1));

    // After a reset (the gateway's POST /cluster/reset), leaving rooms never makes counts negative.
    reset(&mut conn).await;
    let mut unsub = kuzzle("realtime", "unsubscribe", "u2");
    unsub["body"] = json!({"roomId": room});
    assert_eq!(ws_call(&mut c, unsub).await.0["status"], 200);
    let mut e = ws(n1.addr, "/").await;
    let (other, _) = subscribe(&mut e, "other", "col", json!({}), "e").await;
    let other_key = format!("cluster:room_counts:{{other/col}}{other}");
    // Updates are applied in order: once e's entry is there, c's exit was handled.
    wait_count(&conn, &other_key, Some(1)).await;
    assert_eq!(room_count(&mut conn, &count_key).await, None, "the reset room stays blank");
    // The room's SADD follows its count (other slots): wait for it, then only e's room is listed.
    let ids: Vec<String> = eventually(T, "e's room in cluster:room_ids", || {
        let mut conn = conn.clone();
        let other = other.clone();
        async move {
            let ids: Vec<String> = conn.smembers("cluster:room_ids").await.expect("SMEMBERS");
            ids.contains(&other).then_some(ids)
        }
    })
    .await;
    assert_eq!(ids, vec![other.clone()], "the reset room must not come back");

    // A kill says nothing: the subscriber's contribution stays (as a crashed plugin node's would).
    n1.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(room_count(&mut conn, &other_key).await, Some(1));
}

/// As real Kuzzle 2, a node started with `fresh_id` has a new id, and ID card, at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuzzle2_fresh_id_per_start() {
    let r = RedisServer::start();
    let mut conn = r.conn().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut c = cfg("knode-fresh", &r);
        c.kuzzle2 = true;
        c.fresh_id = true;
        let n = sim(c).await;
        let id = n.name().to_owned();
        assert!(id.starts_with("knode-fresh-") && id.len() == "knode-fresh-".len() + 5, "{id}");
        let card: Option<String> = conn.get(format!("{{cluster/node}}/{id}")).await.expect("GET card");
        let card: Value = serde_json::from_str(&card.expect("ID card under the new id")).expect("card JSON");
        assert_eq!(card["id"], id.as_str());
        assert_eq!(get(n.addr, "/_now").await.header("x-kuzzle-node"), Some(id.as_str()));
        ids.push(id);
        n.kill();
    }
    // Two starts under the same name; a clash of the 5 random digits is a 1-in-100,000 chance.
    assert_ne!(ids[0], ids[1], "a new id at every start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuzzle2_id_card() {
    let r = RedisServer::start();
    let mut conn = r.conn().await;
    let mut c = cfg("knode-sim-1", &r);
    c.kuzzle2 = true;
    c.heartbeat = Duration::from_millis(400);
    let n = sim(c).await;
    let key = "{cluster/node}/knode-sim-1";

    let card: Option<String> = conn.get(key).await.expect("GET card");
    let card: Value = serde_json::from_str(&card.expect("ID card present at start")).expect("card JSON");
    assert_eq!(card["id"], "knode-sim-1");
    assert_eq!(card["ip"], "127.0.0.1");
    assert!(card["birthdate"].is_u64());
    assert_eq!(card["topology"], json!([]));
    let ttl: i64 = conn.pttl(key).await.expect("PTTL");
    assert!(ttl > 0 && ttl <= 800, "TTL is 2 x heartbeat: {ttl} ms");
    let indexed: bool = conn.sismember("{cluster/node}/id-cards-index", key).await.expect("SISMEMBER");
    assert!(indexed);
    // No plugin registration in this mode.
    let members: Vec<String> = conn.smembers("cluster:discovery").await.expect("SMEMBERS");
    assert!(members.is_empty(), "{members:?}");
    // Kuzzle 2's health route.
    assert_eq!(get(n.addr, "/_healthCheck").await.status, 200);

    // Refreshed: still there after more than one TTL.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let exists: bool = conn.exists(key).await.expect("EXISTS");
    assert!(exists, "the card is refreshed every heartbeat");

    // Clean leave: card and index entry gone.
    n.shutdown().await;
    let exists: bool = conn.exists(key).await.expect("EXISTS");
    assert!(!exists);
    let indexed: bool = conn.sismember("{cluster/node}/id-cards-index", key).await.expect("SISMEMBER");
    assert!(!indexed);

    // Kill: the card is left to expire by itself (the index entry stays, as with Kuzzle 2).
    let mut c = cfg("knode-sim-2", &r);
    c.kuzzle2 = true;
    c.heartbeat = Duration::from_millis(300);
    let n = sim(c).await;
    let key = "{cluster/node}/knode-sim-2";
    let exists: bool = conn.exists(key).await.expect("EXISTS");
    assert!(exists);
    n.kill();
    eventually(T, "killed node's card expires", || {
        let mut conn = conn.clone();
        async move { (!conn.exists::<_, bool>(key).await.expect("EXISTS")).then_some(()) }
    })
    .await;
    let indexed: bool = conn.sismember("{cluster/node}/id-cards-index", key).await.expect("SISMEMBER");
    assert!(indexed, "a killed node does not clean the index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let mut r = RedisServer::start();
    let n = sim(cfg("phoenix", &r)).await;
    let mut s = ws(n.addr, "/").await;
    let (_, ch) = subscribe(&mut s, "i", "c", json!({}), "s").await;

    r.kill();
    // Still serving HTTP and WebSocket without Redis.
    assert_eq!(get(n.addr, "/_now").await.status, 200);
    let early = publish(&mut s, "i", "c", json!({"local": true}), "p-down").await;
    notification(&mut s, &ch, early).await;

    // An empty Redis comes back: the node registers again and resubscribes.
    r.restart();
    let mut conn = r.conn().await;
    eventually(Duration::from_secs(15), "member re-added after the restart", || {
        let mut conn = conn.clone();
        async move { (!discovery(&mut conn).await.is_empty()).then_some(()) }
    })
    .await;
    let mut sub = r.subscriber(&["cluster:heartbeat"]).await;
    sub.wait("heartbeats again", |_, v| v[1]["pub"] == n.pub_addr()).await;
    // The shared real-time state is written again for the subscriber still connected.
    eventually(Duration::from_secs(15), "room replayed after the restart", || {
        let mut conn = conn.clone();
        async move { (conn.scard::<_, i64>("cluster:room_ids").await.expect("SCARD") == 1).then_some(()) }
    })
    .await;
    let injected = json!(["cluster:notify:document", {"origin": "other", "index": "i", "collection": "c", "body": {"n": 9}, "volatile": {}}]);
    eventually(Duration::from_secs(15), "resubscribed to cluster:notify:document", || {
        let mut conn = conn.clone();
        let text = injected.to_string();
        async move {
            let receivers: i64 = conn.publish("cluster:notify:document", text).await.expect("publish");
            (receivers > 0).then_some(())
        }
    })
    .await;
    let (note, _) =
        ws_wait(&mut s, "notification via the new subscription", |v| v["result"]["_source"]["n"] == 9).await;
    assert_eq!(note["room"], ch.as_str());
    let _ = &mut conn;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_then_registers() {
    let port = free_port();
    let mut c = SimConfig::new("early_bird");
    c.redis = Some(format!("redis://127.0.0.1:{port}/0"));
    c.heartbeat = Duration::from_millis(300);
    let t0 = std::time::Instant::now();
    let n = sim(c).await;
    assert!(t0.elapsed() < Duration::from_secs(6), "start is bounded when Redis is down: {:?}", t0.elapsed());
    assert_eq!(get(n.addr, "/_plugin/cluster/health").await.status, 200, "serves without Redis");

    let r = RedisServer::start_on(port, &[]);
    let mut conn = r.conn().await;
    eventually(Duration::from_secs(15), "registered once Redis is up", || {
        let mut conn = conn.clone();
        async move { (!discovery(&mut conn).await.is_empty()).then_some(()) }
    })
    .await;
    let members = discovery(&mut conn).await;
    assert_eq!(members[0]["pub"], n.pub_addr());
    n.shutdown().await;
    assert!(discovery(&mut conn).await.is_empty(), "clean leave after a late registration");
}
