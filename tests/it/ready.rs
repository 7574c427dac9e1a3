//! Readiness with Redis membership, the gateway in-process: `/healthz` answers 503 until Redis was
//! read and every node found there had its first check, 200 after, 503 while shutting down;
//! `/livez` answers 200 throughout; a client that connects meanwhile waits and is served by a
//! node, never answered "no node".

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use kuzzle_gateway::app::Handle;

/// Kuzzle 2 ID-card membership only, checked on `/_healthCheck` (the sim's readiness route).
fn k2_toml(redis_port: u16, node_port: u16, check_timeout: &str) -> String {
    gateway_toml(&format!(
        "[health]\npath = \"/_healthCheck\"\nkuzzle2_path = \"/_healthCheck\"\ninterval = \"200ms\"\n\
         timeout = \"{check_timeout}\"\nrise = 1\nfall = 2\n\
         [cluster]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\npubsub = false\ndiscovery = false\n\
         node_port = {node_port}\npoll_interval = \"100ms\"\nready_timeout = \"60s\"\n"
    ))
}

async fn probe(h: &Handle, path: &str) -> (u16, String) {
    let r = request(h.stats_addr, "GET", path, &[], Bytes::new()).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// A Kuzzle 2 ID card as a node writes it (no expiry: the test removes nothing).
fn write_card(redis: &RedisServer, id: &str, ip: &str) {
    let mut c = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("test Redis connection");
    let key = format!("{{cluster/node}}/{id}");
    let card = serde_json::json!({"id": id, "ip": ip, "birthdate": 0, "topology": []}).to_string();
    let _: () = redis::cmd("SET").arg(&key).arg(card).query(&mut c).expect("SET card");
    let _: i64 = redis::cmd("SADD").arg("{cluster/node}/id-cards-index").arg(&key).query(&mut c).expect("SADD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_until_redis_is_read_then_200_and_503_while_shutting_down() {
    // Nothing listens on the Redis port yet: the gateway cannot read membership. Its static node
    // starts UP (it keeps a WebSocket open during the shutdown below).
    let redis_port = free_port();
    let node = Sim::start("static-node", &[]);
    let h = gateway(&format!("{}{}", k2_toml(redis_port, free_port(), "1s"), nodes_toml(&[&node]))).await;
    eventually(T, "two failed attempts to reach Redis", || async {
        (h.cluster.metrics.errors.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    let (status, body) = probe(&h, "/healthz").await;
    assert_eq!(status, 503, "no membership read yet: {body}");
    assert!(body.contains("starting"), "{body}");
    assert_eq!(probe(&h, "/livez").await.0, 200, "alive all the same");
    assert!(!h.routable.is_open());

    // Redis comes (no node registered): once read, the gateway can route (its own 503 then).
    let _redis = RedisServer::start_on(redis_port, &[]);
    eventually(T, "/healthz 200 once Redis was read", || async {
        (probe(&h, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    assert!(h.cluster.synced.is_open());

    // A WebSocket keeps the drain going (`shutdown_grace` 1 s): meanwhile /healthz says 503.
    let tunnel = ws(h.http_addr, "/static-node/").await;
    let (stats, life) = (h.stats_addr, h.life.clone());
    let watcher = tokio::spawn(async move {
        eventually(T, "shutdown started", || async { life.shutdown.is_cancelled().then_some(()) }).await;
        let healthz = request(stats, "GET", "/healthz", &[], Bytes::new()).await;
        let livez = request(stats, "GET", "/livez", &[], Bytes::new()).await;
        // Still draining: the tunnel is open until the grace period ends.
        let open = life.connections.len();
        (healthz.status, String::from_utf8_lossy(&healthz.body).into_owned(), livez.status, open)
    });
    h.shutdown().await;
    let (healthz, body, livez, open) = watcher.await.expect("watcher");
    assert_eq!((healthz, livez), (503, 200), "while shutting down: {body}");
    assert!(body.contains("shutting down"), "{body}");
    assert!(open >= 1, "the probe ran during the drain");
    drop(tunnel);
    assert!(tokio::net::TcpStream::connect(h.stats_addr).await.is_err(), "ops listener closed at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_the_first_check_of_every_node_found_in_redis() {
    let redis = RedisServer::start();
    let node_port = free_port();
    // A healthy node, and one that accepts connections but never answers: its first check can
    // only end with the check timeout (2 s).
    let ok = Sim::start_on(
        &format!("127.0.0.2:{node_port}"),
        "knode-ok",
        &["--redis", &redis.url(), "--kuzzle2", "--heartbeat", "300ms"],
    );
    let _mute = std::net::TcpListener::bind(("127.0.0.5", node_port)).expect("mute node");
    write_card(&redis, "knode-mute", "127.0.0.5");
    eventually(T, "the healthy node's card in Redis", || async {
        let mut c = redis.conn().await;
        let n: i64 = redis::cmd("SCARD").arg("{cluster/node}/id-cards-index").query_async(&mut c).await.ok()?;
        (n >= 2).then_some(())
    })
    .await;

    let h = gateway(&k2_toml(redis.port, node_port, "2s")).await;
    // A client that connects now is not answered until the gateway can route.
    let early = tokio::spawn(get(h.http_addr, "/_now"));
    eventually(T, "Redis read", || async { h.cluster.synced.is_open().then_some(()) }).await;
    let (status, body) = probe(&h, "/healthz").await;
    assert_eq!(status, 503, "Redis read, but knode-mute not checked yet: {body}");
    assert!(!early.is_finished(), "the early client was answered before the gateway could route");

    eventually(T, "/healthz 200 after the mute node's check timed out", || async {
        (probe(&h, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let snap = h.core.snapshot();
    assert!(snap.node("knode-ok").is_some_and(|b| b.eligible()), "the healthy node is UP");
    assert!(snap.node("knode-mute").is_some_and(|b| !b.eligible()), "the mute node is DOWN");
    drop(snap);
    let early = early.await.expect("early client");
    assert_eq!((early.status, early.node()), (200, Some("knode-ok")), "{}", String::from_utf8_lossy(&early.body));
    for _ in 0..20 {
        let r = get(h.http_addr, "/_now").await;
        assert_eq!((r.status, r.node()), (200, Some("knode-ok")), "{}", String::from_utf8_lossy(&r.body));
    }
    drop(ok);
    h.shutdown().await;
}
