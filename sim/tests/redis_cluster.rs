//! The sim against a real 3-master Redis Cluster: registration, heartbeats, Kuzzle 2 card,
//! cross-node notification, the shared real-time state's slots, and clean leave.

mod common;

use std::time::Duration;

use common::*;
use kuzzle_node_sim::SimConfig;
use redis::AsyncCommands;
use serde_json::{json, Value};

fn cfg(name: &str, c: &RedisCluster) -> SimConfig {
    let mut s = SimConfig::new(name);
    s.redis = Some(c.seeds());
    s.redis_cluster = true;
    s.heartbeat = Duration::from_millis(300);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_master_cluster() {
    let cluster = RedisCluster::start();
    let mut conn = cluster.conn().await;

    // A plain subscriber on the last master sees heartbeats published through any master.
    let port = cluster.ports()[2];
    let mut ps = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("pubsub");
    ps.subscribe("cluster:heartbeat").await.expect("subscribe");
    let mut hb = ps.into_on_message();

    let n1 = sim(cfg("c1", &cluster)).await;
    let n2 = sim(cfg("c2", &cluster)).await;
    let mut k2cfg = cfg("knode-c3", &cluster);
    k2cfg.kuzzle2 = true;
    let n3 = sim(k2cfg).await;

    let members: Vec<String> = conn.smembers("cluster:discovery").await.expect("SMEMBERS");
    let members: Vec<Value> = members.iter().filter_map(|m| serde_json::from_str(m).ok()).collect();
    for n in [&n1, &n2] {
        assert!(members.iter().any(|m| m["pub"] == n.pub_addr()), "{} missing from {members:?}", n.name());
    }
    let card: Option<String> = conn.get("{cluster/node}/knode-c3").await.expect("GET card");
    assert!(card.is_some_and(|c| c.contains("\"id\":\"knode-c3\"")));
    let ttl: i64 = conn.pttl("{cluster/node}/knode-c3").await.expect("PTTL");
    assert!(ttl > 0 && ttl <= 600, "{ttl}");

    let seen = tokio::time::timeout(T, async {
        while let Some(m) = futures_util::StreamExt::next(&mut hb).await {
            let v: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap_or(Value::Null);
            if v[1]["pub"] == n1.pub_addr() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "heartbeat of c1 seen on another master");

    // The nodes hear each other through the cluster.
    let want = n2.pub_addr().to_owned();
    eventually(T, "c1's pool lists c2", || async {
        let st = get(n1.addr, "/_plugin/cluster/status").await.json();
        st["result"]["pool"].as_array().is_some_and(|p| p.iter().any(|d| d["pub"] == want.as_str())).then_some(())
    })
    .await;

    // Cross-node notification: published on c2, received on c1's and the Kuzzle 2 node's subscribers.
    let mut s1 = ws(n1.addr, "/").await;
    let mut s3 = ws(n3.addr, "/").await;
    let mut p2 = ws(n2.addr, "/").await;
    let (room, ch1) = subscribe(&mut s1, "idx", "col", json!({}), "s1").await;
    let (_, ch3) = subscribe(&mut s3, "idx", "col", json!({}), "s3").await;
    publish(&mut p2, "idx", "col", json!({"via": "cluster"}), "p").await;
    let n = notification(&mut s1, &ch1, Vec::new()).await;
    assert_eq!(n["result"]["_source"], json!({"via": "cluster"}));
    assert_eq!(n["node"], "c1");
    let n = notification(&mut s3, &ch3, Vec::new()).await;
    assert_eq!(n["node"], "knode-c3");

    // The shared real-time state: c1's subscriber only (a Kuzzle 2 node writes none). Every key
    // of the room carries the tag {idx/col}: one slot, on the master that owns it.
    let count_key = format!("cluster:room_counts:{{idx/col}}{room}");
    eventually(T, "room count 1", || {
        let mut conn = conn.clone();
        let key = count_key.clone();
        async move { (conn.get::<_, Option<i64>>(key).await.expect("GET") == Some(1)).then_some(()) }
    })
    .await;
    let tagged = [
        count_key.clone(),
        format!("cluster:room_clients:{{idx/col}}{room}"),
        format!("cluster:filters:{{idx/col}}{room}"),
        "cluster:filters_tree{idx/col}".to_owned(),
        "cluster:version{idx/col}".to_owned(),
    ];
    let masters = Masters::connect(&cluster).await;
    let mut tag_owner = None;
    for key in &tagged {
        let owner = masters.holder(key).await;
        assert_eq!(*tag_owner.get_or_insert(owner), owner, "{key} is not with the other keys of its room");
    }
    for key in ["cluster:room_ids", "cluster:collections"] {
        masters.holder(key).await;
    }
    let ids: Vec<String> = conn.smembers("cluster:room_ids").await.expect("SMEMBERS");
    assert_eq!(ids, [room.as_str()]);

    // Clean leaves; c1's leave withdraws its subscriber: the room is gone.
    let pub1 = n1.pub_addr().to_owned();
    n1.shutdown().await;
    let exists: bool = conn.exists(&count_key).await.expect("EXISTS");
    assert!(!exists, "c1's subscriber withdrawn on leave");
    let ids: Vec<String> = conn.smembers("cluster:room_ids").await.expect("SMEMBERS");
    assert!(ids.is_empty(), "{ids:?}");
    n3.shutdown().await;
    let members: Vec<String> = conn.smembers("cluster:discovery").await.expect("SMEMBERS");
    assert!(!members.iter().any(|m| m.contains(&pub1)), "{members:?}");
    let exists: bool = conn.exists("{cluster/node}/knode-c3").await.expect("EXISTS");
    assert!(!exists);
    n2.shutdown().await;
}

/// Plain connections to each master, to see where a key really is.
struct Masters {
    nodes: Vec<Master>,
}

struct Master {
    port: u16,
    conn: redis::aio::MultiplexedConnection,
    /// The slot ranges it owns (inclusive).
    slots: Vec<(u16, u16)>,
}

impl Masters {
    async fn connect(cluster: &RedisCluster) -> Masters {
        let mut nodes = Vec::new();
        for &port in &cluster.ports() {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("master connection");
            let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.expect("CLUSTER NODES");
            let me = text.lines().find(|l| l.contains("myself")).expect("myself line");
            // Fields 8.. are slot ranges "a-b" or single slots "a".
            let ranges = me
                .split_whitespace()
                .skip(8)
                .filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            nodes.push(Master { port, conn: c, slots: ranges });
        }
        Masters { nodes }
    }

    /// The port of the master owning `key`'s slot, after checking that this master holds it (and
    /// no other master does).
    async fn holder(&self, key: &str) -> u16 {
        let mut c = self.nodes[0].conn.clone();
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut c).await.expect("KEYSLOT");
        let mut holders = Vec::new();
        for m in &self.nodes {
            let mut c = m.conn.clone();
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1000)
                .query_async(&mut c)
                .await
                .expect("GETKEYSINSLOT");
            if keys.iter().any(|k| k == key) {
                holders.push(m.port);
            }
        }
        let owner = self.nodes.iter().find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))).map(|m| m.port);
        assert_eq!(holders.len(), 1, "{key} (slot {slot}) held by {holders:?}");
        assert_eq!(Some(holders[0]), owner, "{key} (slot {slot}) is not on the master owning its slot");
        holders[0]
    }
}
