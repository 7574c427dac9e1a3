//! Integration tests of the core gateway (data plane): balancing, prefixes, headers, WebSockets,
//! streamed and chunked bodies, connection pooling, failures and their error envelopes, malformed
//! input, `--check` and SIGTERM on the real binary. Simulated nodes run as real processes; the
//! gateway runs in-process on ephemeral ports unless the test is about the binary itself.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use kuzzle_gateway::core::backend::AdminState;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Balancing
// ---------------------------------------------------------------------------------------------

async fn spread(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut c = Client::connect(addr).await;
    let mut hits = HashMap::new();
    for _ in 0..n {
        let r = c.send("GET", "/_now", &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let node = r.node().expect("x-kuzzle-node").to_string();
        assert_eq!(r.json()["node"], node.as_str(), "envelope names the node that answered");
        *hits.entry(node).or_insert(0) += 1;
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_spreads_over_three_nodes_per_algorithm() {
    let sims: Vec<Sim> = names("cluster_kuzzle_", 3).iter().map(|n| Sim::start(n, &[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();

    // roundrobin: exact thirds.
    let gw = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"roundrobin\"\n{}", nodes_toml(&refs)))).await;
    let hits = spread(gw.http_addr, 30).await;
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(hits.values().all(|&h| h == 10), "roundrobin must split 30 requests 10/10/10: {hits:?}");
    gw.shutdown().await;

    // leastconn: sequential requests tie at 0 open, ties rotate: every node takes a share...
    let gw = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"leastconn\"\n{}", nodes_toml(&refs)))).await;
    let hits = spread(gw.http_addr, 30).await;
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(hits.values().all(|&h| h >= 3), "leastconn ties should rotate: {hits:?}");
    // ...and WebSocket tunnels count: with two nodes each holding one, the third takes everything.
    let mut a = ws(gw.http_addr, "/").await;
    let (ra, _) = ws_call(&mut a, kuzzle("server", "now", "a")).await;
    let mut b = ws(gw.http_addr, "/").await;
    let (rb, _) = ws_call(&mut b, kuzzle("server", "now", "b")).await;
    let (na, nb) = (ra["node"].as_str().expect("node").to_string(), rb["node"].as_str().expect("node").to_string());
    assert_ne!(na, nb, "the second tunnel should go to a node without one");
    let hits = spread(gw.http_addr, 10).await;
    assert_eq!(hits.len(), 1, "leastconn must avoid the nodes holding a tunnel: {hits:?}");
    assert!(!hits.contains_key(&na) && !hits.contains_key(&nb), "{hits:?} vs tunnels on {na}, {nb}");
    drop((a, b));
    gw.shutdown().await;

    // source: one client IP sticks to one node; many IPs reach several nodes.
    let gw = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"source\"\n{}", nodes_toml(&refs)))).await;
    let mut by_ip: HashMap<IpAddr, String> = HashMap::new();
    for i in 1..=24u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        let mut first: Option<String> = None;
        for _ in 0..3 {
            // A new connection each time: stickiness must not depend on keep-alive.
            let mut c = conn_from(ip, gw.http_addr).await;
            let r = collect(send_any(&mut c, "GET", "/_now", &[], AnyBody::Left(Full::default())).await).await;
            assert_eq!(r.status, 200);
            let node = r.node().expect("x-kuzzle-node").to_string();
            match &first {
                None => first = Some(node),
                Some(f) => assert_eq!(f, &node, "client {ip} moved between nodes"),
            }
        }
        by_ip.insert(ip, first.expect("one response"));
    }
    let used: std::collections::HashSet<&String> = by_ip.values().collect();
    assert!(used.len() >= 2, "24 client IPs all hashed to one node: {by_ip:?}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Prefix routing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_routing_including_tricky_paths() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let n10 = Sim::start("cluster_kuzzle_10", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1, &n2, &n10]))).await;
    let a = gw.http_addr;

    // (request path, node expected or None = any, path the node must see)
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("/cluster_kuzzle_1/_sim/request", Some("cluster_kuzzle_1"), "/_sim/request"),
        ("/cluster_kuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        ("/cluster_kuzzle_10/_sim/request", Some("cluster_kuzzle_10"), "/_sim/request"),
        ("/cluster_kuzzle_2/_sim/request?a=1&b=%2F", Some("cluster_kuzzle_2"), "/_sim/request?a=1&b=%2F"),
        // Dot segments resolve before the prefix is read, encoded or not.
        ("/cluster_kuzzle_1/../cluster_kuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        ("/cluster_kuzzle_1/%2e%2e/cluster_kuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        ("/cluster_kuzzle_1/%2E%2E/cluster_kuzzle_10/_sim/request", Some("cluster_kuzzle_10"), "/_sim/request"),
        ("/./cluster_kuzzle_1/./_sim/request", Some("cluster_kuzzle_1"), "/_sim/request"),
        ("/cluster_kuzzle_1/x/../_sim/request", Some("cluster_kuzzle_1"), "/_sim/request"),
        ("/cluster%5Fkuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        // A dot resolution that leaves the prefix: balanced.
        ("/cluster_kuzzle_1/../_sim/request", None, "/_sim/request"),
    ];
    for (path, node, want) in cases {
        for _ in 0..3 {
            let r = get(a, path).await;
            let (_, saw, _) = seen(&r);
            let via = r.node().expect("x-kuzzle-node");
            if let Some(n) = node {
                assert_eq!(via, *n, "{path} went to the wrong node");
            }
            assert_eq!(saw, *want, "{path}: node saw the wrong path");
            assert_eq!(sim_path(&r), *want, "{path}: x-sim-path");
        }
    }

    // `/<node>` alone is that node's `/`.
    let r = get(a, "/cluster_kuzzle_10").await;
    assert_eq!(r.node(), Some("cluster_kuzzle_10"));
    assert_eq!(sim_path(&r), "/");
    let r = get(a, "/cluster_kuzzle_1/").await;
    assert_eq!(r.node(), Some("cluster_kuzzle_1"));
    assert_eq!(sim_path(&r), "/");

    // Unknown first segments (also near-misses of a node name) are balanced with the whole path.
    for path in ["/cluster_kuzzle_3/_sim/request", "/cluster_kuzzle_1x/_sim/request", "/cluster_kuzzle_/_sim/request"] {
        let mut nodes = std::collections::HashSet::new();
        for _ in 0..6 {
            let r = get(a, path).await;
            assert_eq!(sim_path(&r), path, "{path} must reach a node whole");
            nodes.insert(r.node().expect("x-kuzzle-node").to_string());
        }
        assert!(nodes.len() >= 2, "{path} is no prefix: it must be balanced, went to {nodes:?}");
    }

    // Paths no node may see: 400 in Kuzzle's envelope.
    for path in [
        "/cluster_kuzzle_1%2F_now",
        "/cluster_kuzzle_1%2f..%2fcluster_kuzzle_2/_now",
        "/cluster_kuzzle_1%5C_now",
        "/..",
        "/%2e%2e/_now",
        "/cluster_kuzzle_1/../../_now",
        "/%zz/_now",
        "/cluster_kuzzle_1%/_now",
    ] {
        let r = get(a, path).await;
        let msg = assert_envelope(&r, 400);
        assert!(msg.starts_with("bad request"), "{path}: {msg}");
        assert!(r.node().is_none(), "{path} reached a node");
    }

    // WebSocket through a prefix reaches that node only.
    for _ in 0..4 {
        let mut w = ws(a, "/cluster_kuzzle_2/").await;
        let (resp, _) = ws_call(&mut w, kuzzle("server", "now", "n")).await;
        assert_eq!(resp["node"], "cluster_kuzzle_2", "{resp}");
    }
    let mut w = ws(a, "/cluster_kuzzle_10").await;
    let (resp, _) = ws_call(&mut w, kuzzle("server", "info", "i")).await;
    assert_eq!(resp["node"], "cluster_kuzzle_10", "{resp}");

    // A prefix of a node that may not take traffic: the gateway's 503, naming the node.
    let snap = gw.core.snapshot_full();
    snap.node("cluster_kuzzle_2").expect("node 2").health.set_up(false);
    let msg = assert_envelope(&get(a, "/cluster_kuzzle_2/_now").await, 503);
    assert!(msg.contains("cluster_kuzzle_2") && msg.contains("down"), "{msg}");
    snap.node("cluster_kuzzle_2").expect("node 2").health.set_up(true);
    assert!(gw.core.set_admin("cluster_kuzzle_2", AdminState::Maint));
    let msg = assert_envelope(&get(a, "/cluster_kuzzle_2/_now").await, 503);
    assert!(msg.contains("maintenance"), "{msg}");
    assert!(gw.core.set_admin("cluster_kuzzle_2", AdminState::Drain));
    assert_envelope(&get(a, "/cluster_kuzzle_2/_now").await, 503);
    // ...and the balancer keeps it out meanwhile.
    for _ in 0..6 {
        assert_ne!(get(a, "/_now").await.node(), Some("cluster_kuzzle_2"));
    }
    assert!(gw.core.set_admin("cluster_kuzzle_2", AdminState::Ready));
    assert_eq!(get(a, "/cluster_kuzzle_2/_now").await.node(), Some("cluster_kuzzle_2"));

    // A node removed by a reload while a tunnel still uses it: draining, its prefix answers 503.
    let mut held = ws(a, "/cluster_kuzzle_10/").await;
    let (resp, _) = ws_call(&mut held, kuzzle("server", "now", "h")).await;
    assert_eq!(resp["node"], "cluster_kuzzle_10");
    let cfg = kuzzle_gateway::control::config::Config::parse(
        &format!("[gateway]\nlisten = \"{a}\"\n[stats]\nlisten = \"{}\"\n{}", gw.stats_addr, nodes_toml(&[&n1, &n2])),
        "<reload>",
    )
    .expect("reload config");
    gw.apply_config(cfg);
    let msg = assert_envelope(&get(a, "/cluster_kuzzle_10/_now").await, 503);
    assert!(msg.contains("cluster_kuzzle_10"), "{msg}");
    let (resp, _) = ws_call(&mut held, kuzzle("server", "now", "h2")).await;
    assert_eq!(resp["node"], "cluster_kuzzle_10", "a drained node keeps its tunnels");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_forwarded_and_hop_by_hop_stripped() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1]))).await;
    let mut c = conn_from(IpAddr::from([127, 0, 0, 1]), gw.http_addr).await;
    let req = http::Request::builder()
        .method("PUT")
        .uri("/cluster_kuzzle_1/_sim/request?x=1")
        .header("host", "kuzzle.example:7512")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "gopher")
        .header("x-custom", "kept")
        .header("authorization", "Bearer abc")
        .body(AnyBody::Left(Full::new(Bytes::from_static(b"{\"a\":1}"))))
        .expect("request");
    c.ready().await.expect("ready");
    let r = collect(c.send_request(req).await.expect("response")).await;
    let (method, path, h) = seen(&r);
    assert_eq!(method, "PUT");
    assert_eq!(path, "/_sim/request?x=1");
    for gone in
        ["x-secret", "keep-alive", "proxy-authorization", "proxy-connection", "te", "transfer-encoding", "upgrade"]
    {
        assert!(seen_header(&h, gone).is_none(), "{gone} reached the node: {h}");
    }
    // Connection is the gateway's own business with the node: none of the client's tokens survive.
    if let Some(conn) = seen_header(&h, "connection") {
        assert!(!conn.to_ascii_lowercase().contains("x-secret"), "{conn}");
    }
    assert_eq!(seen_header(&h, "x-custom").as_deref(), Some("kept"));
    assert_eq!(seen_header(&h, "authorization").as_deref(), Some("Bearer abc"), "end-to-end auth passes");
    assert_eq!(seen_header(&h, "host").as_deref(), Some("kuzzle.example:7512"), "Host passes through");
    assert_eq!(seen_header(&h, "x-forwarded-for").as_deref(), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(seen_header(&h, "x-forwarded-proto").as_deref(), Some("http"), "the gateway states the scheme");
    assert_eq!(seen_header(&h, "x-forwarded-host").as_deref(), Some("kuzzle.example:7512"));
    assert_eq!(seen_header(&h, "content-length").as_deref(), Some("7"));

    // Without an incoming X-Forwarded-For, the client's address alone; from another loopback IP.
    let mut c = conn_from(IpAddr::from([127, 0, 0, 7]), gw.http_addr).await;
    let r = collect(send_any(&mut c, "GET", "/_sim/request", &[], AnyBody::Left(Full::default())).await).await;
    let (_, _, h) = seen(&r);
    assert_eq!(seen_header(&h, "x-forwarded-for").as_deref(), Some("127.0.0.7"));
    assert_eq!(seen_header(&h, "x-forwarded-host").as_deref(), Some("gw.test"));
    // The node's own headers come back (x-kuzzle-node), hop-by-hop ones do not.
    assert_eq!(r.node(), Some("cluster_kuzzle_1"));
    assert!(r.header("keep-alive").is_none());
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket session
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_through_the_gateway() {
    let sims: Vec<Sim> = names("cluster_kuzzle_", 2).iter().map(|n| Sim::start(n, &[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let gw = gateway(&gateway_toml(&nodes_toml(&refs))).await;
    let mut w = ws(gw.http_addr, "/").await;

    // Request / response: requestId echoed, room = requestId (what the SDKs match on).
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "req-1")).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["room"], "req-1", "{r}");
    assert!(r["result"]["now"].is_number(), "{r}");
    let node = r["node"].as_str().expect("node").to_string();
    let (r, _) = ws_call(&mut w, kuzzle("server", "info", "req-2")).await;
    assert_eq!(r["node"], node.as_str(), "a WebSocket stays on its node");

    // Subscribe, publish on the same connection: the notification comes back on the channel.
    let mut sub = kuzzle("realtime", "subscribe", "sub-1");
    sub["index"] = json!("idx");
    sub["collection"] = json!("col");
    sub["body"] = json!({});
    let (r, _) = ws_call(&mut w, sub).await;
    assert_eq!(r["status"], 200, "{r}");
    let channel = r["result"]["channel"].as_str().expect("channel").to_string();
    assert!(r["result"]["roomId"].is_string(), "{r}");
    let mut publ = kuzzle("realtime", "publish", "pub-1");
    publ["index"] = json!("idx");
    publ["collection"] = json!("col");
    publ["body"] = json!({"hello": "world", "n": 42});
    let (r, early) = ws_call(&mut w, publ).await;
    assert_eq!(r["status"], 200, "{r}");
    let is_note = |v: &Value| v["room"] == channel.as_str() && v["type"] == "document";
    let note = match early.into_iter().find(is_note) {
        Some(n) => n,
        None => ws_wait(&mut w, "notification", is_note).await.0,
    };
    assert_eq!(note["result"]["_source"], json!({"hello": "world", "n": 42}), "{note}");
    assert_eq!(note["action"], "publish");
    assert_eq!(note["scope"], "in");

    // Kuzzle's JSON ping, and a WebSocket ping.
    w.send(Message::text("{\"p\":1}")).await.expect("send");
    let (p, _) = ws_wait(&mut w, "{\"p\":2}", |v| v.get("p").is_some()).await;
    assert_eq!(p, json!({"p": 2}));
    w.send(Message::Ping(Bytes::from_static(b"hb"))).await.expect("ping");
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(Message::Pong(b)))) => {
                assert_eq!(&b[..], b"hb");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    }

    // A subscriber and a publisher on two connections, both through the node's prefix.
    let prefix = format!("/{node}/");
    let mut s = ws(gw.http_addr, &prefix).await;
    let mut p = ws(gw.http_addr, &prefix).await;
    let mut sub = kuzzle("realtime", "subscribe", "s");
    sub["index"] = json!("i2");
    sub["collection"] = json!("c2");
    sub["body"] = json!({});
    let (r, _) = ws_call(&mut s, sub).await;
    let ch2 = r["result"]["channel"].as_str().expect("channel").to_string();
    let mut publ = kuzzle("realtime", "publish", "p");
    publ["index"] = json!("i2");
    publ["collection"] = json!("c2");
    publ["body"] = json!({"x": 1});
    ws_call(&mut p, publ).await;
    let (note, _) = ws_wait(&mut s, "cross-connection notification", |v| v["room"] == ch2.as_str()).await;
    assert_eq!(note["result"]["_source"], json!({"x": 1}));

    // A large message both ways (several TCP reads and tunnel buffers).
    let big = "z".repeat(200_000);
    let mut publ = kuzzle("realtime", "publish", "big");
    publ["index"] = json!("i2");
    publ["collection"] = json!("c2");
    publ["body"] = json!({"big": big});
    ws_call(&mut p, publ).await;
    let (note, _) = ws_wait(&mut s, "big notification", |v| v["result"]["_source"]["big"].is_string()).await;
    assert_eq!(note["result"]["_source"]["big"].as_str().map(str::len), Some(200_000));

    // Closing from the client side ends the tunnel: the gateway's tunnel count returns to zero.
    for mut c in [w, s, p] {
        c.close(None).await.expect("close");
        while let Ok(Some(Ok(_))) = tokio::time::timeout(T, c.next()).await {}
    }
    eventually(T, "tunnels closed", || async { (gw.core.frontend.tunnels.load(Ordering::Relaxed) == 0).then_some(()) })
        .await;
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_bodies_streamed_and_chunked_both_ways() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1]))).await;
    let a = gw.http_addr;
    const MIB: usize = 1 << 20;
    let payload: Bytes = (0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();

    // 1 MiB request with a length, echoed.
    let mut c = Client::connect(a).await;
    let r = c.send("POST", "/_sim/echo", &[("content-type", "application/octet-stream")], payload.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), MIB);
    assert!(r.body == payload, "echoed body differs");

    assert_eq!(r.header("content-length"), Some("1048576"), "a body with a length keeps it");

    // 1 MiB response, chunked by the node: still chunked to the client (no buffering to count it).
    let r = c.send("GET", "/_sim/bytes/1048576", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), MIB);
    assert!(r.body.iter().all(|&b| b == b'x'));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));

    // Chunked request (no length), streamed: the first part of the echo comes back while the
    // client still holds the rest, so neither direction is buffered whole by the gateway.
    let mut s = conn_from(IpAddr::from([127, 0, 0, 1]), a).await;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tx.send(payload.slice(..64 * 1024)).await.expect("first chunk");
    let resp = send_any(&mut s, "POST", "/_sim/echo", &[], AnyBody::Right(ChanBody(rx))).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none(), "a chunked echo has no length");
    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(MIB);
    while got.len() < 64 * 1024 {
        let f = tokio::time::timeout(T, body.frame())
            .await
            .expect("first echoed bytes while the request is still open: something buffers")
            .expect("frame")
            .expect("frame ok");
        if let Ok(d) = f.into_data() {
            got.extend_from_slice(&d);
        }
    }
    for chunk in payload.slice(64 * 1024..).chunks(64 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.expect("chunk");
    }
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(30), body.collect()).await.expect("rest").expect("rest ok");
    got.extend_from_slice(&rest.to_bytes());
    assert_eq!(got.len(), MIB);
    assert!(got == payload[..], "chunked echo differs");

    // The counters saw the bytes (both ways, more than the payloads).
    assert!(gw.core.frontend.bytes_in.load(Ordering::Relaxed) >= 2 * MIB as u64);
    assert!(gw.core.frontend.bytes_out.load(Ordering::Relaxed) >= 3 * MIB as u64);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Connection pool
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_reused_but_never_after_upgrade_or_error() {
    // A node keeping its connections (real Kuzzle 2 closes after every response): pooling to test.
    let n1 = Sim::builder("cluster_kuzzle_1").keep_alive().start();
    let relay = Relay::start(n1.addr).await;
    let gw = gateway(&gateway_toml(&format!(
        "[timeouts]\nserver = \"700ms\"\npool_idle = \"30s\"\n[[node]]\nname = \"cluster_kuzzle_1\"\naddress = \"{}\"\n",
        relay.addr
    )))
    .await;
    let a = gw.http_addr;

    // Keep-alive client, and then fresh clients: one node connection serves them all.
    let mut c = Client::connect(a).await;
    for _ in 0..10 {
        assert_eq!(c.send("GET", "/_now", &[], Bytes::new()).await.status, 200);
    }
    for _ in 0..10 {
        assert_eq!(get(a, "/_now").await.status, 200);
    }
    // HEAD answers have no body to read: their connection goes back to the pool all the same.
    for _ in 0..3 {
        let r = c.send("HEAD", "/_now", &[], Bytes::new()).await;
        assert_eq!((r.status, r.body.len()), (200, 0));
    }
    assert_eq!(relay.accepted(), 1, "sequential requests must reuse one pooled node connection");

    // A WebSocket takes the pooled connection for good: the next request needs a new one.
    let mut w = ws(a, "/").await;
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "1")).await;
    assert_eq!(r["status"], 200);
    for _ in 0..5 {
        assert_eq!(c.send("GET", "/_now", &[], Bytes::new()).await.status, 200);
    }
    assert_eq!(relay.accepted(), 2, "an upgraded connection went back to the pool (or reuse stopped)");
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "2")).await;
    assert_eq!(r["status"], 200, "the tunnel still works beside the pooled requests");
    drop(w);

    // A request that timed out leaves its connection closed, never reused.
    let r = request(n1.addr, "POST", "/_sim/latency/2000", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "latency knob");
    // (A 504, not the node's late 200: the gateway gave up first.)
    assert_envelope(&c.send("GET", "/_now", &[], Bytes::new()).await, 504);
    let r = request(n1.addr, "POST", "/_sim/latency/0", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let before = relay.accepted();
    let r = c.send("GET", "/_sim/request", &[], Bytes::new()).await;
    let (_, path, _) = seen(&r);
    assert_eq!(path, "/_sim/request", "a late answer to the timed-out request must not leak");
    assert_eq!(relay.accepted(), before + 1, "the timed-out connection was reused");

    // A response cut short by the client leaves no connection in the pool either.
    let before = relay.accepted();
    {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(b"GET /_sim/bytes/268435456 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    } // dropped mid-body: 256 MiB cannot all sit in socket buffers
    let node = gw.core.snapshot().node("cluster_kuzzle_1").cloned().expect("node");
    eventually(T, "abandoned exchange and closed tunnel released", || async { (node.active() == 0).then_some(()) })
        .await;
    for _ in 0..3 {
        let r = c.send("GET", "/_sim/request", &[], Bytes::new()).await;
        assert_eq!(seen(&r).1, "/_sim/request");
    }
    assert!(relay.accepted() > before, "the connection of an abandoned response was reused");
    assert_eq!(node.idle_connections(), 1, "only the connection of the last request is pooled");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_costs_no_client_error() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let dead = free_port();
    for algo in ["roundrobin", "leastconn"] {
        let gw = gateway(&gateway_toml(&format!(
            "[balance]\nalgorithm = \"{algo}\"\n[[node]]\nname = \"dead\"\naddress = \"127.0.0.1:{dead}\"\n{}",
            nodes_toml(&[&n1])
        )))
        .await;
        let mut c = Client::connect(gw.http_addr).await;
        for i in 0..20 {
            let r = if i % 2 == 0 {
                c.send("GET", "/_now", &[], Bytes::new()).await
            } else {
                get(gw.http_addr, "/_now").await
            };
            assert_eq!(r.status, 200, "{algo}: request {i}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.node(), Some("cluster_kuzzle_1"));
        }
        // POST too: nothing was sent to the dead node, so a retry elsewhere is safe.
        let r = c.send("POST", "/_sim/echo", &[], Bytes::from_static(b"abc")).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
        let snap = gw.core.snapshot_full();
        let d = snap.node("dead").expect("dead node");
        assert!(d.counters.connect_errors.load(Ordering::Relaxed) > 0, "{algo}: the dead node was never tried");
        // Its prefix has no other node to go to: an error, not a hang.
        let r = get(gw.http_addr, "/dead/_now").await;
        let msg = assert_envelope(&r, 503);
        // "refused", or "down" once the failures marked it DOWN.
        assert!(msg.contains("dead"), "{msg}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_exchange_resends_idempotent_requests_only() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let (rude, task) = rude_node().await;
    let gw = gateway(&gateway_toml(&format!(
        "[balance]\nalgorithm = \"roundrobin\"\n[health]\ninterval = \"1h\"\nfall = 100\npassive = false\n\
         [[node]]\nname = \"rude\"\naddress = \"{rude}\"\n{}",
        nodes_toml(&[&n1])
    )))
    .await;
    // GETs that land on the rude node are re-sent once to the other node: no client error.
    for i in 0..4 {
        let r = get(gw.http_addr, "/_now").await;
        assert_eq!(r.status, 200, "GET {i}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.node(), Some("cluster_kuzzle_1"));
    }
    let snap = gw.core.snapshot_full();
    let rude_node = snap.node("rude").expect("rude node");
    assert!(rude_node.counters.redispatches.load(Ordering::Relaxed) >= 1, "no GET was re-sent");
    // A POST may have been applied by the node: never re-sent, the client gets a 502. Roundrobin
    // alternates, so of two POSTs exactly one meets the rude node.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = request(gw.http_addr, "POST", "/_sim/echo", &[], Bytes::from_static(b"x")).await;
        if r.status == 502 {
            let msg = assert_envelope(&r, 502);
            assert!(msg.contains("rude"), "{msg}");
        }
        statuses.push(r.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 502]);
    // A prefixed GET has nowhere else to go: 502 as well, not a hang.
    assert_envelope(&get(gw.http_addr, "/rude/_now").await, 502);
    task.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_at_all_gives_503_envelope() {
    // No node configured.
    let gw = gateway(&gateway_toml("")).await;
    let msg = assert_envelope(&get(gw.http_addr, "/_now").await, 503);
    assert!(msg.contains("no node available"), "{msg}");
    let msg = assert_envelope(&request(gw.http_addr, "POST", "/x", &[], Bytes::from_static(b"{}")).await, 503);
    assert!(msg.contains("no node available"), "{msg}");
    gw.shutdown().await;

    // Only nodes that refuse connections.
    let (d1, d2) = (free_port(), free_port());
    let gw = gateway(&gateway_toml(&format!(
        "[[node]]\nname = \"d1\"\naddress = \"127.0.0.1:{d1}\"\n[[node]]\nname = \"d2\"\naddress = \"127.0.0.1:{d2}\"\n"
    )))
    .await;
    let t0 = Instant::now();
    let msg = assert_envelope(&get(gw.http_addr, "/_now").await, 503);
    assert!(msg.contains("refused"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(5), "refusals must fail fast: {:?}", t0.elapsed());
    gw.shutdown().await;

    // Nodes present but all DOWN; a WebSocket handshake gets the same answer.
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1]))).await;
    assert_eq!(get(gw.http_addr, "/_now").await.status, 200);
    gw.core.snapshot().node("cluster_kuzzle_1").expect("node").health.set_up(false);
    assert_envelope(&get(gw.http_addr, "/_now").await, 503);
    let url = format!("ws://{}/", gw.http_addr);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("WebSocket with no node: expected a 503, got {other:?}"),
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_node_gives_504_after_server_timeout() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&format!("[timeouts]\nserver = \"500ms\"\n{}", nodes_toml(&[&n1])))).await;
    let r = request(n1.addr, "POST", "/_sim/latency/3000", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "latency knob");
    for path in ["/_now", "/cluster_kuzzle_1/_now"] {
        let t0 = Instant::now();
        let r = get(gw.http_addr, path).await;
        let took = t0.elapsed();
        let msg = assert_envelope(&r, 504);
        assert!(msg.contains("cluster_kuzzle_1"), "{msg}");
        // The status shows the gateway gave up before the node's 3 s; it waited the timeout first.
        assert!(took >= Duration::from_millis(450), "{path}: 504 before the timeout: {took:?}");
    }
    // A POST is not re-sent after a timeout (it may have been applied): one 504, the node saw one.
    let r = request(gw.http_addr, "POST", "/_sim/echo", &[], Bytes::from_static(b"once")).await;
    assert_envelope(&r, 504);
    // The node recovers: requests pass again.
    request(n1.addr, "POST", "/_sim/latency/0", &[], Bytes::new()).await;
    assert_eq!(get(gw.http_addr, "/_now").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stalling_mid_body_cannot_hang_a_client() {
    // A fake node: answers the head and 3 of 100 promised bytes, then says nothing, for a minute.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nx-kuzzle-node: stall\r\n\r\nabc").await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let gw = gateway(&gateway_toml(&format!(
        "[timeouts]\nserver = \"500ms\"\n[health]\ninterval = \"1h\"\n[[node]]\nname = \"stall\"\naddress = \"{node}\"\n"
    )))
    .await;
    // The node would stall for 60 s: the connection must end long before (server timeout 500ms).
    let (out, closed) =
        raw_until(gw.http_addr, b"GET /_now HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(30)).await;
    assert!(closed, "the client was left hanging on a stalled node");
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("abc"), "{out:?}");
    let snap = gw.core.snapshot_full();
    let b = snap.node("stall").expect("node");
    assert!(b.counters.response_errors.load(Ordering::Relaxed) >= 1);
    eventually(T, "stalled exchange released", || async { (b.active() == 0).then_some(()) }).await;
    assert_eq!(b.idle_connections(), 0, "a connection cut mid-body went back to the pool");
    task.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1]))).await;
    let a = gw.http_addr;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ] {
        let out = raw(a, garbage).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{:?} -> {out:?}", String::from_utf8_lossy(garbage));
    }
    // Valid HTTP, invalid path encoding: the gateway's own 400 envelope.
    let out = raw(a, b"GET /%zz/_now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"status\":400") && out.contains("percent-encoding"), "{out}");
    let out = raw(a, b"GET /%C3%28/_now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "invalid UTF-8 in the prefix segment: {out}");
    // HTTP/1.0 without Host is old but valid: served, then closed.
    let (out, closed) = raw_until(a, b"GET /cluster_kuzzle_1/_now HTTP/1.0\r\n\r\n", T).await;
    assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"node\":\"cluster_kuzzle_1\""), "{out}");
    assert!(closed, "an HTTP/1.0 exchange without keep-alive must end with the connection");
    // The gateway still serves afterwards.
    assert_eq!(get(a, "/_now").await.status, 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The binary: --check, SIGTERM
// ---------------------------------------------------------------------------------------------

#[test]
fn config_check_names_file_line_and_key() {
    let dir = scratch_dir("check");
    let cases: &[(&str, &str, usize, &str)] = &[
        ("unknown.toml", "[gateway]\nlisten = \"127.0.0.1:7512\"\nlistn = 3\n", 3, "gateway.listn"),
        ("duration.toml", "[timeouts]\nconnect = \"5s\"\nserver = \"soon\"\n", 3, "timeouts.server"),
        ("address.toml", "[[node]]\nname = \"a\"\naddress = \"nowhere:x\"\n", 3, "node[0].address"),
        (
            "dup.toml",
            "[[node]]\nname = \"n\"\naddress = \"127.0.0.1:1\"\n\n[[node]]\nname = \"n\"\naddress = \"127.0.0.1:2\"\n",
            6,
            "node[1].name",
        ),
        ("name.toml", "[[node]]\nname = \"a/b\"\naddress = \"127.0.0.1:1\"\n", 2, "node[0].name"),
        ("algo.toml", "[balance]\n\nalgorithm = \"random\"\n", 3, "balance.algorithm"),
        ("syntax.toml", "[gateway\nlisten = 1\n", 1, ""),
    ];
    for (file, text, line, key) in cases {
        let p = dir.join(file);
        std::fs::write(&p, text).expect("write config");
        let out = run_check(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        let place = format!("{}:{line}:", p.display());
        assert!(err.contains(&place), "{file}: message should name {place}: {err}");
        assert!(err.contains(key), "{file}: message should name key {key}: {err}");
    }
    // A missing file is an error naming it.
    let missing = dir.join("missing.toml");
    let out = run_check(&missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // A good file passes.
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[gateway]\nlisten = \"127.0.0.1:7512\"\n[timeouts]\nserver = \"5s\"\n[balance]\nalgorithm = \"source\"\n\
         [[node]]\nname = \"cluster_kuzzle_1\"\naddress = \"127.0.0.1:17601\"\n",
    )
    .expect("write");
    let out = run_check(&good);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The shipped configuration is valid too.
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proxy-configs/gateway.toml");
    if shipped.exists() {
        let out = run_check(&shipped);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_closes_tunnels_and_exits_0() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let relay = Relay::start(n1.addr).await;
    let mut gw = Gateway::start(&gateway_toml(&format!(
        "[[node]]\nname = \"cluster_kuzzle_1\"\naddress = \"{}\"\n",
        relay.addr
    )));
    let addr = gw.http();

    let mut w = ws(addr, "/").await;
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "1")).await;
    assert_eq!(r["status"], 200);

    // A request in flight when SIGTERM comes: the node takes 3 s to answer it.
    assert_eq!(request(n1.addr, "POST", "/_sim/latency/3000", &[], Bytes::new()).await.status, 200);
    let inflight = tokio::spawn(async move { get(addr, "/_sim/request").await });
    eventually(T, "request reached the node", || async {
        (relay.sim_requests.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;

    let t0 = Instant::now();
    gw.sigterm();

    // New connections are refused at once.
    eventually(Duration::from_secs(5), "listener closed", || async {
        TcpStream::connect(addr).await.err().map(|_| ())
    })
    .await;
    assert!(!inflight.is_finished(), "the in-flight request ended before its node answered");

    // The tunnel gets a 1001 close frame after the grace period.
    let close = loop {
        match tokio::time::timeout(T, w.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let took = t0.elapsed();
    let f = close.expect("close frame with a code");
    assert_eq!(f.code, CloseCode::Away, "{f:?}");
    assert!(took >= Duration::from_millis(900), "tunnel closed before the grace period: {took:?}");

    // The in-flight request finishes normally.
    let r = tokio::time::timeout(T, inflight).await.expect("in-flight request finished").expect("task");
    let (_, path, _) = seen(&r);
    assert_eq!(path, "/_sim/request");

    // And the process exits 0.
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).code(), Some(0), "exit status after SIGTERM");
}

/// A node that answers Kuzzle's "shutting down" 503 (as real Kuzzle 2 does for ~0.1-3 s after a
/// SIGTERM) has not run the request: any method goes to another node, and the node takes no more
/// traffic (LEAVING on /hastats) until checks bring it back UP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_refusals_are_resent_whatever_the_method() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let leaving = CannedNode::start(503, SHUTTING_DOWN_BODY).await;
    let gw = gateway(&gateway_toml(&format!(
        "[balance]\nalgorithm = \"roundrobin\"\n[health]\ninterval = \"1h\"\n\
         [[node]]\nname = \"leaving\"\naddress = \"{}\"\n{}",
        leaving.addr,
        nodes_toml(&[&n1])
    )))
    .await;
    let body = Bytes::from_static(br#"{"controller":"realtime","action":"publish"}"#);
    for (i, method) in ["POST", "GET", "PUT", "DELETE", "POST", "PATCH"].into_iter().enumerate() {
        let r = if method == "GET" || method == "DELETE" {
            request(gw.http_addr, method, "/_now", &[], Bytes::new()).await
        } else {
            request(gw.http_addr, method, "/_sim/echo", &[], body.clone()).await
        };
        // The node's own answer (a DELETE of /_now is its 404), never a 5xx.
        assert!(r.status < 500, "{method} {i}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        assert_eq!(r.node(), Some("cluster_kuzzle_1"), "{method} {i}");
        if method == "POST" || method == "PUT" {
            assert_eq!(r.body, body, "{method} {i}: the body reached the other node whole");
        }
    }
    // Roundrobin sent it the first request; its refusal took it out of the rotation at once.
    assert_eq!(
        leaving.answered_except("/_plugin/cluster/health"),
        1,
        "a node that said it is shutting down got more traffic"
    );
    let snap = gw.core.snapshot_full();
    let node = snap.node("leaving").expect("node");
    assert!(node.health.leaving() && !node.eligible());
    assert!(node.counters.redispatches.load(Ordering::Relaxed) >= 1);
    let v = request(gw.stats_addr, "GET", "/hastats;json", &[ops_auth()], Bytes::new()).await.json();
    let row = v["nodes"].as_array().expect("nodes").iter().find(|n| n["name"] == "leaving").cloned();
    assert_eq!(row.as_ref().map(|n| n["status"].clone()), Some(json!("LEAVING")), "{v}");
    // Its prefix names it: the gateway says why it cannot go there.
    let msg = assert_envelope(&get(gw.http_addr, "/leaving/_now").await, 503);
    assert!(msg.contains("shutting down"), "{msg}");
    gw.shutdown().await;
}

/// Only Kuzzle's "not executed" refusals are re-sent: another 503 is the node's answer and goes
/// to the client as it came, and a node that is overloaded is not taken out of the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_503s_pass_through_and_overload_is_resent_without_leaving() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let custom = r#"{"status":503,"error":{"id":"plugin.custom.unavailable","message":"try later"}}"#;
    let other = CannedNode::start(503, custom).await;
    let overloaded = r#"{"status":503,"error":{"id":"api.process.overloaded","message":"Request discarded"}}"#;
    let busy = CannedNode::start(503, overloaded).await;
    let gw = gateway(&gateway_toml(&format!(
        "[balance]\nalgorithm = \"roundrobin\"\n[health]\ninterval = \"1h\"\npassive = false\n\
         [[node]]\nname = \"other\"\naddress = \"{}\"\n[[node]]\nname = \"busy\"\naddress = \"{}\"\n{}",
        other.addr,
        busy.addr,
        nodes_toml(&[&n1])
    )))
    .await;
    let mut passed = 0;
    for i in 0..9 {
        let r = request(gw.http_addr, "POST", "/_sim/echo", &[], Bytes::from_static(b"{}")).await;
        match r.status {
            200 => assert_eq!(r.node(), Some("cluster_kuzzle_1"), "request {i}"),
            503 => {
                passed += 1;
                assert_eq!(std::str::from_utf8(&r.body).ok(), Some(custom), "request {i}: body changed");
                assert_eq!(r.node(), Some("other"), "the gateway names the node that answered");
            }
            s => panic!("request {i}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(passed >= 2, "the other node's 503 was never passed on ({passed})");
    let tried = busy.answered_except("/_plugin/cluster/health");
    assert!(tried >= 2, "an overloaded node stays in the rotation ({tried})");
    let snap = gw.core.snapshot_full();
    assert!(!snap.node("busy").expect("busy").health.leaving());
    // Every node refusing: the client gets the last node's own answer, not a gateway error.
    let r = get(gw.http_addr, "/busy/_now").await;
    assert_eq!((r.status, std::str::from_utf8(&r.body).ok()), (503, Some(overloaded)));
    gw.shutdown().await;
}

/// Real Kuzzle 2 answers `X-Kuzzle-Node: undefined`: the gateway names the node that answered in
/// `[gateway] node_header` (x-kuzzle-node by default, over the node's own value; "" = off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_name_the_node_that_answered() {
    let node = CannedNode::start(200, r#"{"status":200,"result":1}"#).await;
    for (setting, header, expect_kuzzle) in [
        (None, Some("x-kuzzle-node"), "kuzzle_a"),
        (Some("X-Served-By"), Some("x-served-by"), "undefined"),
        (Some(""), None, "undefined"),
    ] {
        let line = setting.map(|h| format!("node_header = {h:?}\n")).unwrap_or_default();
        let gw = gateway(&format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n{line}[stats]\nlisten = \"127.0.0.1:0\"\n\
             [[node]]\nname = \"kuzzle_a\"\naddress = \"{}\"\n",
            node.addr
        ))
        .await;
        let r = get(gw.http_addr, "/_now").await;
        assert_eq!(r.status, 200, "{setting:?}");
        assert_eq!(r.header("x-kuzzle-node"), Some(expect_kuzzle), "{setting:?}");
        if let Some(h) = header {
            assert_eq!(r.header(h), Some("kuzzle_a"), "{setting:?}");
        }
        gw.shutdown().await;
    }
}
