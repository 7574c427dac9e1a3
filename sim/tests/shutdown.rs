//! Kuzzle 2's graceful shutdown: for a window, new HTTP and WebSocket API requests are rejected
//! with 503 while requests in progress finish; the node leaves the cluster at once; then its
//! WebSockets are closed, it stops listening, and the process exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use kuzzle_node_sim::SimConfig;
use redis::AsyncCommands;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Kuzzle 2.56's HTTP answer to a request arriving while it shuts down (byte for byte).
const SHUTTING_DOWN: &str = r#"{"status":503,"error":{"id":"api.process.shutting_down","code":33685511,"message":"Rejected: this node is shutting down."}}"#;

fn assert_rejected(r: &Resp, node: &str) {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(std::str::from_utf8(&r.body).unwrap(), SHUTTING_DOWN);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("x-kuzzle-node"), Some(node));
    assert_eq!(r.header("x-kuzzle-request-id").map(str::len), Some(36));
}

/// How a WebSocket session ended: `Some(code)` after a close frame, `None` when the connection
/// ended without one.
async fn ws_end(w: &mut Ws) -> Option<u16> {
    let end = tokio::time::timeout(T, async {
        loop {
            match w.next().await {
                Some(Ok(Message::Close(f))) => return Some(f.map_or(1005, |f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    });
    end.await.expect("the WebSocket ends in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_window_rejects_finishes_in_flight_leaves_and_closes() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut cfg = SimConfig::new("knode-leaving");
    cfg.redis = Some(redis.url());
    cfg.kuzzle2 = true;
    // Heartbeats well inside the window: a node re-registering after its leave would show.
    cfg.heartbeat = Duration::from_millis(200);
    cfg.shutdown_window = Duration::from_millis(1500);
    let s = sim(cfg).await;
    let a = s.addr;
    let card = "{cluster/node}/knode-leaving";
    assert!(conn.exists::<_, bool>(card).await.unwrap(), "registered");

    // A WebSocket open before, with a subscription.
    let mut w = ws(a, "/").await;
    let (_, _channel) = subscribe(&mut w, "i", "c", json!({}), "sub").await;
    // A slow request in progress when the shutdown begins (counted by the node as it arrives;
    // the WebSocket's upgrade and the latency setting were counted before).
    assert_eq!(post(a, "/_sim/latency/800").await.status, 200);
    let requests =
        move || async move { get(a, "/_sim/stats").await.json()["result"]["http_requests"].as_u64().unwrap_or(0) };
    let before = requests().await;
    let slow = tokio::spawn(async move { get(a, "/_now").await });
    eventually(T, "the slow request in flight", || async { (requests().await > before).then_some(()) }).await;

    let t0 = Instant::now();
    let stopping = tokio::spawn(s.shutdown());

    // The window: new requests on new connections answered 503, the exact body.
    eventually(T, "rejections", || async { (get(a, "/_now").await.status == 503).then_some(()) }).await;
    assert_rejected(&get(a, "/_now").await, "knode-leaving");
    assert_rejected(&get(a, "/_serverInfo").await, "knode-leaving");
    assert_rejected(&get(a, "/_healthCheck").await, "knode-leaving");
    assert_rejected(&get(a, "/_healthCheck?services=internalCache").await, "knode-leaving");
    assert_rejected(&request(a, "POST", "/i/c/_publish", &[], bytes::Bytes::from_static(b"{}")).await, "knode-leaving");
    // Readiness and liveness answer outside Kuzzle's API: 503 and 200.
    assert_eq!(get(a, "/_ready").await.status, 503);
    assert_eq!(get(a, "/_healthcheck").await.status, 200);
    // The cluster is left at once, while the node still answers.
    eventually(T, "ID card deleted", || {
        let mut conn = conn.clone();
        async move { (!conn.exists::<_, bool>(card).await.unwrap()).then_some(()) }
    })
    .await;
    let indexed: bool = conn.sismember("{cluster/node}/id-cards-index", card).await.unwrap();
    assert!(!indexed, "removed from the index");
    assert_eq!(get(a, "/_now").await.status, 503, "still answering after leaving the cluster");

    // WebSocket API requests are rejected too, in an envelope the SDK matches to its request.
    let (r, _) = ws_call(&mut w, json!({"controller": "server", "action": "now", "requestId": "late"})).await;
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!((r["requestId"].as_str(), r["room"].as_str()), (Some("late"), Some("late")));
    assert_eq!(r["error"]["id"], "network.entrypoint.shutting_down", "{r}");
    assert_eq!(r["error"]["code"], 0x0304_0003);
    assert!(r["result"].is_null());
    // Kuzzle's JSON ping still gets its pong.
    w.send(Message::text(r#"{"p":1}"#)).await.unwrap();
    let (p, _) = ws_wait(&mut w, "pong", |v| v.get("p").is_some()).await;
    assert_eq!(p, json!({"p": 2}));

    // The request in progress finished normally.
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["result"]["now"].is_u64());

    // Then the WebSockets close, the listener closes, the shutdown returns.
    let end = ws_end(&mut w).await;
    assert_eq!(end, kuzzle_node_sim::SHUTDOWN_CLOSE.map(|(code, _)| code), "how the WebSocket ended");
    assert!(t0.elapsed() >= Duration::from_millis(1500), "closed before the window ended: {:?}", t0.elapsed());
    tokio::time::timeout(T, stopping).await.expect("shutdown returns").unwrap();
    assert!(tokio::net::TcpStream::connect(a).await.is_err(), "still listening");
    assert!(!conn.exists::<_, bool>(card).await.unwrap(), "the ID card came back after the leave");
}

/// A request slower than the window is still waited for, and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_outlasting_the_window_completes() {
    let mut cfg = SimConfig::new("patient");
    cfg.shutdown_window = Duration::from_millis(200);
    cfg.latency = Duration::from_millis(1500);
    let s = sim(cfg).await;
    let a = s.addr;
    let slow = tokio::spawn(async move { get(a, "/_serverInfo").await });
    eventually(T, "in flight", || async {
        (get(a, "/_sim/stats").await.json()["result"]["http_requests"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let t0 = Instant::now();
    s.shutdown().await;
    assert!(t0.elapsed() >= Duration::from_millis(1000), "did not wait for the request: {:?}", t0.elapsed());
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["serverInfo"]["kuzzle"]["nodeName"], "patient");
}

/// The binary: SIGTERM logs "Initiating shutdown...", rejects during the window, exits 0.
/// Runs the `kuzzle-node-sim` binary of the workspace (`cargo build --workspace --bins` first,
/// as scripts/test does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_rejects_then_exits_zero() {
    let child = Command::new(bin("kuzzle-node-sim"))
        .args(["--listen", "127.0.0.1:0", "--name", "termed", "--shutdown-window", "1s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kuzzle-node-sim");
    let mut child = KillOnDrop(child);
    let addr = wait_line(&mut child.0, READY_TIMEOUT, "kuzzle-node-sim termed", |l| {
        l.split(" listening on ").nth(1).map(|a| a.trim().to_string())
    });
    let a: std::net::SocketAddr = addr.parse().unwrap();
    assert_eq!(get(a, "/_now").await.status, 200);
    let mut held = ws(a, "/").await;

    let t0 = Instant::now();
    signal(child.0.id(), Signal::TERM);
    eventually(T, "503 after SIGTERM", || async { (get(a, "/_now").await.status == 503).then_some(()) }).await;
    assert_rejected(&get(a, "/_now").await, "termed");

    let mut stderr = child.0.stderr.take().unwrap();
    let status = wait_exit(&mut child.0, T).expect("kuzzle-node-sim exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(t0.elapsed() >= Duration::from_secs(1), "exited before the window ended: {:?}", t0.elapsed());
    assert_eq!(ws_end(&mut held).await, kuzzle_node_sim::SHUTDOWN_CLOSE.map(|(code, _)| code));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("Initiating shutdown..."), "{log}");
}
