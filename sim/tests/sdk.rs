//! The official Kuzzle SDK (npm kuzzle-sdk v7), unchanged, against two sims linked by Redis: tests/sdk/sdk-check.js over WebSocket and HTTP.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use kuzzle_node_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_works_unchanged() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    need("node");
    assert!(
        dir.join("node_modules/kuzzle-sdk").is_dir(),
        "this test needs the Kuzzle SDK installed: run `npm install` in {} (scripts/test does it)",
        dir.display()
    );
    let redis = RedisServer::start();
    let with_redis = |name: &str| {
        let mut c = SimConfig::new(name);
        c.redis = Some(redis.url());
        c
    };
    // `start` returns once each node's Redis subscription was attempted: a publish on one reaches
    // the other's subscribers from then on.
    let a = sim(with_redis("sdk_a")).await;
    let b = sim(with_redis("sdk_b")).await;
    let (host, port) = (a.addr.ip().to_string(), a.addr.port().to_string());
    let (peer_host, peer_port) = (b.addr.ip().to_string(), b.addr.port().to_string());
    let out = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::new("node")
            .arg("sdk-check.js")
            .args([&host, &port, &peer_host, &peer_port])
            .current_dir(&dir)
            .output(),
    )
    .await
    .expect("sdk-check.js finished within 40 s")
    .expect("run node sdk-check.js");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk-check.js failed ({}):\n{text}", out.status);
    assert!(text.contains("sdk-check OK"), "{text}");
    // HTTP publish here, WebSocket notification there: the document crossed Redis.
    assert!(text.contains("http-to-peer publish answered by sdk_a, notified by sdk_b"), "{text}");
    assert!(text.contains("websocket-to-peer publish answered by sdk_a, notified by sdk_b"), "{text}");

    // The discovery routes the SDK's HTTP protocol uses, as Kuzzle 2 serves them.
    let api = get(a.addr, "/_publicApi").await.json();
    assert_eq!(api["result"]["realtime"]["publish"]["http"][0]["url"], "/:index/:collection/_publish");
    for path in ["/", "/_serverInfo"] {
        let v = get(a.addr, path).await.json();
        assert_eq!((v["status"].as_u64(), v["action"].as_str()), (Some(200), Some("info")), "{path}: {v}");
        assert_eq!(v["result"]["serverInfo"]["kuzzle"]["nodeName"], "sdk_a", "{path}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
