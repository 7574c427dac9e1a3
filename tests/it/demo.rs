//! The demo as a newcomer runs it: a real `kuzzle-gateway demo` process with its three
//! `kuzzle-node-sim` processes; the stats auth it prints, a balanced request, a clean stop, and
//! with `--redis` nothing left behind in that Redis.
use crate::common;

use std::net::TcpListener as StdListener;

use bytes::Bytes;
use common::*;
use redis::AsyncCommands;
use serde_json::json;

/// A first port with the next two free as well (the demo's nodes take three in a row).
fn three_free_ports() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        let all = (0..3u16).all(|i| p.checked_add(i).is_some_and(|q| StdListener::bind(("127.0.0.1", q)).is_ok()));
        if all {
            return p;
        }
    }
    panic!("no three consecutive free ports on 127.0.0.1");
}

/// `kuzzle-gateway demo` on free ports, once it printed its banner.
fn start_demo(extra: &[&str]) -> Gateway {
    let (gw, stats) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let node_port = three_free_ports().to_string();
    let sim = bin("kuzzle-node-sim");
    Gateway::builder()
        .name("demo")
        .args(&["demo", "--listen", &gw, "--stats", &stats, "--node-port", &node_port])
        .args(&["--sim", sim.to_str().expect("utf-8 path")])
        .args(extra)
        .ready_on("kuzzle-gateway demo: gateway on")
        .start()
}

#[tokio::test]
async fn demo_stats_use_the_printed_credentials_and_it_stops_cleanly() {
    let mut d = start_demo(&[]);
    let (gw, stats) = (d.http(), d.ops());
    let r = get(gw, "/_now").await;
    assert_eq!(r.status, 200, "balanced request through the demo");
    assert!(r.node().is_some_and(|n| n.starts_with("cluster_kuzzle_")), "answered by a demo node");
    assert_eq!(get(stats, "/hastats;csv").await.status, 401, "the demo's stats need auth");
    let wrong = basic_auth("kuzzle", "nope");
    assert_eq!(request(stats, "GET", "/hastats;csv", &[("authorization", &wrong)], Bytes::new()).await.status, 401);
    // The banner's `curl -u USER:PASSWORD 'http://.../hastats;csv'`.
    let printed = d.wait_line("/hastats;csv", T);
    let (user, password) = printed
        .split_once("-u ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.split_once(':'))
        .unwrap_or_else(|| panic!("no credentials in {printed:?}"));
    let right = basic_auth(user, password);
    let csv = request(stats, "GET", "/hastats;csv", &[("authorization", &right)], Bytes::new()).await;
    assert_eq!(csv.status, 200, "the printed credentials work");
    assert_eq!(String::from_utf8_lossy(&csv.body).matches("cluster_kuzzle_").count(), 3, "three node rows");
    assert!(d.stop().success(), "exit 0 after SIGTERM");
}

#[tokio::test]
async fn redis_demo_leaves_nothing_behind_in_its_redis() {
    let redis = RedisServer::start();
    let mut d = start_demo(&["--redis", &redis.url()]);
    let (gw, stats) = (d.http(), d.ops());
    eventually(WAIT, "three nodes joined through Redis", || async {
        let csv = request(stats, "GET", "/hastats;csv", &[ops_auth()], Bytes::new()).await;
        (String::from_utf8_lossy(&csv.body).matches(",UP,").count() >= 3).then_some(())
    })
    .await;
    // A subscriber writes the shared real-time state (rooms, counts, the collection's version).
    let mut w = ws(gw, "/").await;
    subscribe(&mut w, "demo", "col", json!({}), "s1").await;
    let mut conn = redis.conn().await;
    eventually(WAIT, "real-time state in Redis", || {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = conn.keys("cluster:version*").await.expect("KEYS");
            (!keys.is_empty()).then_some(())
        }
    })
    .await;
    assert!(d.stop().success(), "exit 0 after SIGTERM");
    drop(w);
    let keys: Vec<String> = conn.keys("*").await.expect("KEYS");
    assert!(keys.is_empty(), "the demo left keys in its Redis: {keys:?}");
}
