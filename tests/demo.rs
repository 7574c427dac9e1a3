//! The demo as a newcomer runs it: a real `kuzzle-gateway demo` process with its three
//! `kuzzle-node-sim` processes; the stats auth it prints, a balanced request, a clean stop, and
//! with `--redis` nothing left behind in that Redis.
mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use redis::AsyncCommands;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

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

struct Demo {
    child: KillOnDrop,
    gw: SocketAddr,
    stats: SocketAddr,
}

fn start_demo(extra: &[&str]) -> Demo {
    let (gw, stats) =
        (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let node_port = three_free_ports().to_string();
    let mut child = Command::new(bin("kuzzle-gateway"))
        .args(["demo", "--listen", &gw.to_string(), "--stats", &stats.to_string(), "--node-port", &node_port])
        .args(["--sim", bin("kuzzle-node-sim").to_str().expect("utf-8 path")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("kuzzle-gateway demo starts");
    wait_line(&mut child, WAIT, "demo banner", |l| l.contains("kuzzle-gateway demo: gateway on").then(String::new));
    Demo { child: KillOnDrop(child), gw, stats }
}

/// SIGTERM, then the exit status within 20 s.
fn stop(d: &mut Demo) -> std::process::ExitStatus {
    let pid = d.child.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(sent.success(), "SIGTERM not delivered");
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Some(s) = d.child.0.try_wait().expect("wait") {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the demo did not stop within 20 s of SIGTERM");
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[tokio::test]
async fn demo_stats_use_the_printed_credentials_and_it_stops_cleanly() {
    let mut d = start_demo(&[]);
    let r = get(d.gw, "/_now").await;
    assert_eq!(r.status, 200, "balanced request through the demo");
    assert!(r.node().is_some_and(|n| n.starts_with("cluster_kuzzle_")), "answered by a demo node");
    assert_eq!(get(d.stats, "/hastats;csv").await.status, 401, "the demo's stats need auth");
    let wrong = basic("kuzzle", "nope");
    assert_eq!(request(d.stats, "GET", "/hastats;csv", &[("authorization", &wrong)], Bytes::new()).await.status, 401);
    let right = basic("kuzzle", "kuzzle");
    let csv = request(d.stats, "GET", "/hastats;csv", &[("authorization", &right)], Bytes::new()).await;
    assert_eq!(csv.status, 200, "the printed credentials work");
    assert_eq!(String::from_utf8_lossy(&csv.body).matches("cluster_kuzzle_").count(), 3, "three node rows");
    assert!(stop(&mut d).success(), "exit 0 after SIGTERM");
}

#[tokio::test]
async fn redis_demo_leaves_nothing_behind_in_its_redis() {
    let redis = RedisServer::start();
    let mut d = start_demo(&["--redis", &redis.url()]);
    let auth = basic("kuzzle", "kuzzle");
    eventually(WAIT, "three nodes joined through Redis", || async {
        let csv = request(d.stats, "GET", "/hastats;csv", &[("authorization", &auth)], Bytes::new()).await;
        (String::from_utf8_lossy(&csv.body).matches(",UP,").count() >= 3).then_some(())
    })
    .await;
    // A subscriber writes the shared real-time state (rooms, counts, the collection's version).
    let mut w = ws(d.gw, "/").await;
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
    assert!(stop(&mut d).success(), "exit 0 after SIGTERM");
    drop(w);
    let keys: Vec<String> = conn.keys("*").await.expect("KEYS");
    assert!(keys.is_empty(), "the demo left keys in its Redis: {keys:?}");
}
