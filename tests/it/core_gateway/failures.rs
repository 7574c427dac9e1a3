//! Failures and their answers: dead, slow, stalling and refusing nodes, broken exchanges, no node at all, malformed requests.

use super::*;

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
    let (node, task) = fake_node(|mut c| async move {
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).await;
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nx-kuzzle-node: stall\r\n\r\nabc").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
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

/// The stall timer counts each silence on its own: a node that pauses several times mid-body, each
/// pause under `[timeouts] server` but all of them well over it, delivers its whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pausing_mid_body_under_the_limit_each_time_is_not_cut() {
    let (node, task) = fake_node(|mut c| async move {
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).await;
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nabc").await;
        // 4 pauses of 300 ms: 1.2 s of silence in all, 0.3 s at a time, server = 500ms.
        for part in [&b"def"[..], b"ghi", b"jkl"] {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = c.write_all(part).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await;
    let gw = gateway(&gateway_toml(&format!(
        "[timeouts]\nserver = \"500ms\"\n[health]\ninterval = \"1h\"\n[[node]]\nname = \"slow\"\naddress = \"{node}\"\n"
    )))
    .await;
    let (out, _) =
        raw_until(gw.http_addr, b"GET /_now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(10))
            .await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("abcdefghijkl"), "{out:?}");
    let snap = gw.core.snapshot_full();
    let b = snap.node("slow").expect("node");
    assert_eq!(b.counters.response_errors.load(Ordering::Relaxed), 0, "the body was cut as stalled");
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
