//! Health routes as Kuzzle 2.56 has them (`/_ready`, `/_healthcheck`, `/_healthCheck` with and
//! without `services=`), the plugin's, and the per-route hit counts of `/_sim/stats`.

mod common;

use std::time::Duration;

use common::*;
use kuzzle_node_sim::SimConfig;
use serde_json::json;

/// Status and JSON body of a GET.
async fn check(a: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let r = get(a, path).await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_liveness_and_health_check() {
    let s = sim(SimConfig::new("healthy")).await;
    let a = s.addr;

    let (st, v) = check(a, "/_ready").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["status"].as_u64(), v["error"].is_null(), v["result"].is_null()), (Some(200), true, true), "{v}");
    assert_eq!(check(a, "/_healthcheck").await.0, 200);

    let (st, v) = check(a, "/_healthCheck").await;
    assert_eq!(st, 200);
    assert_eq!(
        v["result"],
        json!({"status": "green", "services": {"internalCache": "green", "memoryStorage": "green", "storageEngine": "green"}})
    );
    // Any services= list: only those services (the cheap check a gateway should use).
    let (st, v) = check(a, "/_healthCheck?services=internalCache").await;
    assert_eq!(st, 200);
    assert_eq!(v["result"], json!({"status": "green", "services": {"internalCache": "green"}}));
    let (_, v) = check(a, "/_healthCheck?services=internalCache,storageEngine").await;
    assert_eq!(v["result"]["services"], json!({"internalCache": "green", "storageEngine": "green"}));
    let (st, v) = check(a, "/_healthCheck?services=nothing").await;
    assert_eq!((st, v["result"].clone()), (200, json!({"status": "green", "services": {}})));

    // Not ready: /_ready and /_healthCheck (any form) 503, liveness still 200.
    assert_eq!(post(a, "/_sim/ready/false").await.status, 200);
    let (st, v) = check(a, "/_ready").await;
    assert_eq!((st, v["status"].as_u64()), (503, Some(503)), "{v}");
    assert_eq!(check(a, "/_healthcheck").await.0, 200);
    assert_eq!(check(a, "/_healthCheck").await.0, 503);
    let (st, v) = check(a, "/_healthCheck?services=internalCache").await;
    assert_eq!((st, v["result"].clone()), (503, json!({"status": "red", "services": {"internalCache": "red"}})));
    assert_eq!(check(a, "/_plugin/cluster/health").await.0, 404);
    s.set_ready(true);
    assert_eq!(check(a, "/_ready").await.0, 200);

    // The same action over a WebSocket.
    let mut w = ws(a, "/").await;
    let (r, _) = ws_call(
        &mut w,
        json!({"controller": "server", "action": "healthCheck", "requestId": "h1", "services": "memoryStorage"}),
    )
    .await;
    assert_eq!(r["result"], json!({"status": "green", "services": {"memoryStorage": "green"}}), "{r}");

    // Hits per route: a test can tell which route a gateway checks with.
    let stats = get(a, "/_sim/stats").await.json()["result"].clone();
    assert_eq!(
        stats["health"],
        json!({"/_ready": 3, "/_healthcheck": 2, "/_healthCheck": 2, "/_healthCheck?services": 4, "/_plugin/cluster/health": 1}),
        "{stats}"
    );
    assert_eq!(s.stats()["health"], stats["health"], "the library reads the same counters");
    assert_eq!(stats["websockets"], 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_starting() {
    let mut cfg = SimConfig::new("slowstart");
    cfg.start_delay = Duration::from_millis(800);
    let s = sim(cfg).await;
    let a = s.addr;
    // Starting: /_ready 503, everything else served.
    assert_eq!(check(a, "/_ready").await.0, 503);
    assert_eq!(check(a, "/_healthcheck").await.0, 200);
    assert_eq!(check(a, "/_now").await.0, 200);
    eventually(T, "/_ready 200 once started", || async { (get(a, "/_ready").await.status == 200).then_some(()) }).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes_ignore_latency_and_errors_knobs() {
    let mut cfg = SimConfig::new("knobbed");
    cfg.latency = Duration::from_secs(3);
    cfg.error_percent = 100;
    let s = sim(cfg).await;
    let a = s.addr;
    let t0 = std::time::Instant::now();
    for path in ["/_ready", "/_healthcheck", "/_healthCheck", "/_healthCheck?services=internalCache", "/_sim/stats"] {
        assert_eq!(check(a, path).await.0, 200, "{path}");
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    s.kill();
}
