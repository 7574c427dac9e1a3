//! HTTP side of the sim: routes, envelope, headers, knobs, streaming helpers, stop.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use kuzzle_node_sim::SimConfig;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn assert_envelope(r: &Resp, node: &str, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-kuzzle-node"), Some(node));
    let v = r.json();
    for k in ["requestId", "status", "error", "controller", "action", "index", "collection", "volatile", "result"] {
        assert!(v.get(k).is_some(), "envelope misses {k}: {v}");
    }
    assert_eq!(v["status"], status);
    assert_eq!(v["node"], node);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_envelopes_and_headers() {
    let s = sim(SimConfig::new("node_a")).await;
    let a = s.addr;

    let v = assert_envelope(&get(a, "/_now").await, "node_a", 200);
    let now = v["result"]["now"].as_u64().expect("now");
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now.abs_diff(wall) < 60_000, "{now} vs {wall}");
    assert_eq!((v["controller"].as_str(), v["action"].as_str()), (Some("server"), Some("now")));

    let v = assert_envelope(&get(a, "/_serverInfo").await, "node_a", 200);
    assert_eq!(v["result"]["serverInfo"]["kuzzle"]["nodeName"], "node_a");
    assert!(v["result"]["serverInfo"]["kuzzle"]["version"].is_string());

    let v = assert_envelope(&get(a, "/_plugin/cluster/health").await, "node_a", 200);
    assert_eq!(v["result"], "ok");
    assert!(v["error"].is_null());
    let v = assert_envelope(&get(a, "/_healthCheck").await, "node_a", 200);
    assert_eq!(v["result"]["status"], "green");

    // Without Redis the pool is the node itself.
    let v = assert_envelope(&get(a, "/_plugin/cluster/status").await, "node_a", 200);
    assert_eq!(v["result"]["count"], 1);
    assert_eq!(v["result"]["current"]["pub"], s.pub_addr());
    assert_eq!(v["result"]["current"]["pub"], format!("tcp://{a}"), "default pub rule");
    assert_eq!(v["result"]["current"]["ready"], true);
    assert_eq!(v["result"]["pool"][0]["name"], "node_a");

    // Unknown route: Kuzzle's 404, naming the path; x-sim-path is the path and query as received.
    let r = get(a, "/no/such/route?a=1&b=%2F").await;
    let v = assert_envelope(&r, "node_a", 404);
    assert!(v["error"]["message"].as_str().unwrap().contains("/no/such/route"), "{v}");
    assert_eq!(v["error"]["status"], 404);
    assert_eq!(r.header("x-sim-path"), Some("/no/such/route?a=1&b=%2F"));
    assert_eq!(get(a, "/_now?x=%41").await.header("x-sim-path"), Some("/_now?x=%41"));

    // What the node received: method, path with query, lowercase headers (repeats as arrays).
    let r = request(
        a,
        "PUT",
        "/_sim/request?q=1",
        &[("X-Forwarded-For", "10.1.1.1"), ("x-two", "a"), ("x-two", "b")],
        Bytes::from_static(b"12345"),
    )
    .await;
    let v = assert_envelope(&r, "node_a", 200);
    let seen = &v["result"];
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/_sim/request?q=1");
    assert_eq!(seen["headers"]["x-forwarded-for"], "10.1.1.1");
    assert_eq!(seen["headers"]["x-two"], json!(["a", "b"]));
    assert_eq!(seen["headers"]["host"], a.to_string());
    assert_eq!(seen["body_length"], 5);

    // As Kuzzle: a request id per request, in the X-Kuzzle-Request-Id header and the envelope
    // (the client's own when it sends one).
    let r = get(a, "/_now").await;
    let id = r.header("x-kuzzle-request-id").expect("x-kuzzle-request-id").to_owned();
    assert_eq!(id.len(), 36, "uuid-like: {id}");
    assert_eq!(r.json()["requestId"], id.as_str());
    assert_ne!(get(a, "/_now").await.header("x-kuzzle-request-id"), Some(id.as_str()), "one per request");
    let r = request(a, "GET", "/_now", &[("x-kuzzle-request-id", "mine-1")], Bytes::new()).await;
    assert_eq!(r.header("x-kuzzle-request-id"), Some("mine-1"));
    assert_eq!(r.json()["requestId"], "mine-1");
    s.shutdown().await;
}

/// Raw HTTP/1.1 exchange on one connection: everything the node sent until it closed (or `T`).
async fn exchange(a: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    raw_until(a, bytes, T).await
}

/// Like real Kuzzle 2: `Connection: close` on every response, then the connection closes; a
/// second request pipelined on the same connection gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closes_after_every_response() {
    let s = sim(SimConfig::new("closer")).await;
    let a = s.addr;
    for path in ["/_now", "/_healthCheck", "/no/such/route", "/_sim/bytes/10"] {
        let (text, closed) = exchange(a, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        assert!(closed, "{path}: the node did not close the connection:\n{text}");
        assert!(text.starts_with("HTTP/1.1 "), "{path}: {text}");
        assert!(text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{path}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{path}: {text}");
    }
    // Even when the client asks for keep-alive.
    let (text, closed) = exchange(a, b"GET /_now HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").await;
    assert!(closed && text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{text}");
    // Two requests pipelined: one answer, then the connection closes.
    let (text, closed) =
        exchange(a, b"GET /_now HTTP/1.1\r\nHost: x\r\n\r\nGET /_serverInfo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(closed, "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "the pipelined request was answered: {text}");
    assert!(text.contains("\"now\""), "{text}");
    // A client holding the connection sees it end after its first answer.
    let mut c = Client::connect(a).await;
    assert_eq!(c.send("GET", "/_now", &[], Bytes::new()).await.header("connection"), Some("close"));
    assert!(c.try_send("GET", "/_now", &[], Bytes::new()).await.is_err(), "second request on a closed connection");
    // A WebSocket upgrade is unaffected.
    let mut w = ws(a, "/").await;
    assert_eq!(ws_node(&mut w, "u1").await, "closer");
    assert_eq!(ws_node(&mut w, "u2").await, "closer");
    let stats = get(a, "/_sim/stats").await.json();
    // 4 paths + keep-alive asked + pipelined + held client + WebSocket + this one.
    assert_eq!(stats["result"]["connections"], 9, "one connection per request: {stats}");
    assert_eq!(stats["result"]["http_requests"], 8, "the pipelined request was never read: {stats}");
    s.shutdown().await;
}

/// With the keep-alive switch: no `Connection: close`, one connection serves many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_switch_keeps_connections() {
    let mut cfg = SimConfig::new("keeper");
    cfg.keep_alive = true;
    let s = sim(cfg).await;
    let a = s.addr;
    let mut c = Client::connect(a).await;
    for _ in 0..3 {
        let r = c.send("GET", "/_now", &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);
    }
    let (text, closed) = raw_until(
        a,
        b"GET /_now HTTP/1.1\r\nHost: x\r\n\r\nGET /_serverInfo HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(!closed, "the connection stays open: {text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "both pipelined requests answered: {text}");
    // A client asking to close still gets its way.
    let (text, closed) = exchange(a, b"GET /_now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(closed, "{text}");
    assert_eq!(s.stats()["connections"], 3, "{}", s.stats());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knobs_ready_latency_errors() {
    let mut cfg = SimConfig::new("knobs");
    cfg.ready = false;
    let s = sim(cfg).await;
    let a = s.addr;

    // Not ready from the start.
    let v = assert_envelope(&get(a, "/_plugin/cluster/health").await, "knobs", 404);
    assert_eq!(v["result"], "ko");
    assert_eq!(v["error"]["message"], "ko");
    assert_envelope(&get(a, "/_healthCheck").await, "knobs", 503);

    assert_envelope(&post(a, "/_sim/ready/true").await, "knobs", 200);
    assert_envelope(&get(a, "/_plugin/cluster/health").await, "knobs", 200);
    assert_envelope(&get(a, "/_healthCheck").await, "knobs", 200);
    assert_envelope(&post(a, "/_sim/ready/false").await, "knobs", 200);
    assert_envelope(&get(a, "/_healthCheck").await, "knobs", 503);
    s.set_ready(true);
    assert_envelope(&get(a, "/_plugin/cluster/health").await, "knobs", 200);

    // Bad knob values are 400s.
    assert_envelope(&post(a, "/_sim/ready/maybe").await, "knobs", 400);
    assert_envelope(&post(a, "/_sim/latency/soon").await, "knobs", 400);
    assert_envelope(&post(a, "/_sim/errors/101").await, "knobs", 400);

    // Latency: every answer but health and control routes waits.
    assert_envelope(&post(a, "/_sim/latency/400").await, "knobs", 200);
    let t0 = Instant::now();
    assert_envelope(&get(a, "/_now").await, "knobs", 200);
    assert!(t0.elapsed() >= Duration::from_millis(400), "latency not applied: {:?}", t0.elapsed());
    let t0 = Instant::now();
    get(a, "/_plugin/cluster/health").await;
    get(a, "/_healthCheck").await;
    post(a, "/_sim/errors/0").await;
    assert!(t0.elapsed() < Duration::from_millis(400), "health and control routes are exempt: {:?}", t0.elapsed());
    s.set_latency(Duration::ZERO);
    let t0 = Instant::now();
    get(a, "/_now").await;
    assert!(t0.elapsed() < Duration::from_millis(400));

    // Errors: 100 % answer 500, health and control routes aside.
    assert_envelope(&post(a, "/_sim/errors/100").await, "knobs", 200);
    for _ in 0..5 {
        let v = assert_envelope(&get(a, "/_now").await, "knobs", 500);
        assert_eq!(v["error"]["status"], 500);
    }
    assert_eq!(get(a, "/_sim/request").await.status, 500);
    assert_envelope(&get(a, "/_plugin/cluster/health").await, "knobs", 200);
    // About half with 50 %.
    s.set_error_percent(50);
    let mut errors = 0;
    for _ in 0..200 {
        if get(a, "/_now").await.status == 500 {
            errors += 1;
        }
    }
    assert!((40..=160).contains(&errors), "{errors}/200 errors at 50 %");
    assert_envelope(&post(a, "/_sim/errors/0").await, "knobs", 200);
    assert_envelope(&get(a, "/_now").await, "knobs", 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_bytes_stream() {
    let s = sim(SimConfig::new("streams")).await;
    let a = s.addr;
    const MIB: usize = 1 << 20;
    let payload: Bytes = (0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();

    // 1 MiB with a length, echoed as octets.
    let r = request(a, "POST", "/_sim/echo", &[("content-type", "application/octet-stream")], payload.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-kuzzle-node"), Some("streams"));
    assert!(r.body == payload, "echoed body differs ({} bytes)", r.body.len());

    // 1 MiB generated, chunked.
    let r = get(a, "/_sim/bytes/1048576").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), MIB);
    assert!(r.body.iter().all(|b| *b == b'x'));
    assert!(r.headers.get("content-length").is_none());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(get(a, "/_sim/bytes/0").await.body.len(), 0);
    assert_eq!(get(a, "/_sim/bytes/lots").await.status, 400);

    // Chunked request: the echo starts while the request is still open (no whole-body buffer).
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tx.send(payload.slice(..64 * 1024)).await.expect("first chunk");
    let mut c = Client::connect(a).await;
    let resp = c.send_streaming("POST", "/_sim/echo", &[], ChanBody(rx).boxed_unsync()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(MIB);
    while got.len() < 64 * 1024 {
        let f = tokio::time::timeout(T, body.frame())
            .await
            .expect("echo bytes while the request is still open")
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
    let rest = tokio::time::timeout(T, body.collect()).await.expect("rest in time").expect("rest");
    got.extend_from_slice(&rest.to_bytes());
    assert!(got == payload[..], "chunked echo differs ({} bytes)", got.len());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_shutdown_stop_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for kill in [true, false] {
        // A node keeping connections, so that one is still open when the node stops.
        let mut cfg = SimConfig::new("stopper");
        cfg.keep_alive = true;
        cfg.shutdown_window = Duration::from_millis(100);
        let s = sim(cfg).await;
        let a = s.addr;
        // A keep-alive connection held open across the stop is cut too.
        let mut held = tokio::net::TcpStream::connect(a).await.expect("connect");
        held.write_all(b"GET /_now HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(T, held.read(&mut buf)).await.expect("answer in time").expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        if kill {
            s.kill();
        } else {
            s.shutdown().await;
        }
        let n = tokio::time::timeout(T, held.read(&mut buf)).await.expect("held connection closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "held connection still open after stop (kill={kill})");
        eventually(T, "listener closed", || async { tokio::net::TcpStream::connect(a).await.is_err().then_some(()) })
            .await;
    }
}

/// Kuzzle 2's HTTP API: the routes `GET /_publicApi` lists, and the generic `POST /_query`; a
/// publish over HTTP reaches WebSocket subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuzzle_api_over_http() {
    let s = sim(SimConfig::new("api")).await;
    let a = s.addr;
    let post = |body: &str| Bytes::from(body.to_owned());

    let api = assert_envelope(&get(a, "/_publicApi").await, "api", 200);
    assert_eq!(api["result"]["server"]["now"]["http"], json!([{"verb": "GET", "url": "/_now"}]));
    let v = assert_envelope(&get(a, "/").await, "api", 200);
    assert_eq!((v["controller"].as_str(), v["action"].as_str()), (Some("server"), Some("info")));
    assert_eq!(v["result"]["serverInfo"]["kuzzle"]["api"]["routes"], api["result"], "server:info lists the API too");

    let v = assert_envelope(
        &request(
            a,
            "POST",
            "/_query",
            &[("x-kuzzle-request-id", "q1")],
            post(r#"{"controller":"server","action":"now","requestId":"ignored"}"#),
        )
        .await,
        "api",
        200,
    );
    assert_eq!(v["requestId"], "q1", "over HTTP, Kuzzle's envelope carries the X-Kuzzle-Request-Id");
    assert!(v["result"]["now"].is_u64(), "{v}");
    assert_envelope(&request(a, "POST", "/_query", &[], post("[1]")).await, "api", 400);
    let v = assert_envelope(
        &request(
            a,
            "POST",
            "/_query",
            &[],
            post(r#"{"controller":"realtime","action":"subscribe","index":"i","collection":"c"}"#),
        )
        .await,
        "api",
        400,
    );
    assert_eq!(v["error"]["id"], "api.assert.unsupported_protocol", "no subscription without a connection");

    let mut w = ws(a, "/").await;
    let (_, channel) = subscribe(&mut w, "i", "c", json!({}), "s1").await;
    let v = assert_envelope(
        &request(a, "POST", "/i/c/_publish?_id=d%201", &[("x-kuzzle-volatile", r#"{"v":1}"#)], post(r#"{"k":1}"#))
            .await,
        "api",
        200,
    );
    assert_eq!(v["result"], json!({"published": true}));
    assert_eq!((v["index"].as_str(), v["collection"].as_str()), (Some("i"), Some("c")));
    let n = notification(&mut w, &channel, Vec::new()).await;
    assert_eq!(n["result"], json!({"_id": "d 1", "_source": {"k": 1}}));
    assert_eq!(n["volatile"], json!({"v": 1}));

    // Bad input is a Kuzzle error envelope; a route with the wrong verb is not found.
    assert_envelope(&request(a, "POST", "/i/c/_publish", &[], post("not json")).await, "api", 400);
    assert_envelope(&request(a, "POST", "/i/c/_publish", &[], Bytes::new()).await, "api", 400);
    assert_envelope(&request(a, "POST", "/i/c/_publish", &[("x-kuzzle-volatile", "{")], post("{}")).await, "api", 400);
    let v = assert_envelope(&get(a, "/i/c/_publish").await, "api", 404);
    assert_eq!(v["error"]["id"], "network.http.url_not_found");
    s.shutdown().await;
}
