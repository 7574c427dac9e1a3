//! HTTP/2 clients over TLS: proxied to nodes over HTTP/1.1, turned off, counted against `max_connections`, idle connections closed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_proxied_to_nodes_over_http11() {
    let pki = Pki::new("h2");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let limits = "[limits]\nheaders = 20\nrequest_head = 4096\n";
    let gw =
        gateway(&gateway_toml(&format!("{}{limits}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1, &n2]))))
            .await;
    let addr = gw.tls_addr.expect("TLS listener");
    let port = addr.port();
    let before = stats_json(&gw).await["frontend"]["req_tot"].as_u64().expect("req_tot");
    let mut h2 = h2_conn(&any_cert(&[b"h2", b"http/1.1"]), addr).await;

    // Through a prefix: the node gets HTTP/1.1 with Host from :authority and the prefix stripped.
    let uri = format!("https://localhost:{port}/cluster_kuzzle_2/_sim/request?x=1");
    let req = http::Request::get(uri).body(Full::new(Bytes::new())).expect("request");
    let (version, r) = h2_send(&mut h2, req).await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(r.node(), Some("cluster_kuzzle_2"));
    let (method, path, headers) = seen(&r);
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/_sim/request?x=1"));
    assert_eq!(seen_header(&headers, "host"), Some(format!("localhost:{port}")));
    assert_eq!(seen_header(&headers, "x-forwarded-proto").as_deref(), Some("https"));
    assert!(seen_header(&headers, "x-kuzzle-gateway").is_some(), "the loop mark is added: {headers}");
    // The response carries no connection-specific header (h2 forbids them).
    for h in ["connection", "keep-alive", "transfer-encoding"] {
        assert!(r.headers.get(h).is_none(), "{h} in an HTTP/2 response");
    }

    // Streams multiplexed on the one connection, balanced over both nodes.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut s = h2.clone();
        let uri = format!("https://localhost:{port}/_now");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(uri).body(Full::new(Bytes::new())).expect("request");
            let (v, r) = h2_send(&mut s, req).await;
            assert_eq!((v, r.status), (http::Version::HTTP_2, 200));
            r.node().map(str::to_string)
        }));
    }
    let mut nodes = std::collections::BTreeSet::new();
    for t in tasks {
        nodes.insert(t.await.expect("task").expect("x-kuzzle-node"));
    }
    assert_eq!(nodes.len(), 2, "leastconn spreads concurrent streams: {nodes:?}");

    // A body streams to the node and back.
    let body = Bytes::from(vec![b'k'; 100_000]);
    let uri = format!("https://localhost:{port}/cluster_kuzzle_1/_sim/echo");
    let req = http::Request::post(uri).body(Full::new(body.clone())).expect("request");
    let (_, r) = h2_send(&mut h2, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);

    // [limits] apply: too many header lines get the proxy's 431 in Kuzzle's envelope.
    let mut b = http::Request::get(format!("https://localhost:{port}/_now"));
    for i in 0..30 {
        b = b.header(format!("x-h{i}"), "v");
    }
    let (_, r) = h2_send(&mut h2, b.body(Full::new(Bytes::new())).expect("request")).await;
    assert_envelope(&r, 431);
    // A Host that names another authority is malformed (RFC 9113 8.3.1).
    let req = http::Request::get(format!("https://localhost:{port}/_now"))
        .header("host", "elsewhere.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (_, r) = h2_send(&mut h2, req).await;
    assert_envelope(&r, 400);
    // Counted like HTTP/1.1 requests: 1 + 8 + 1 + 2 refused.
    let after = stats_json(&gw).await["frontend"]["req_tot"].as_u64().expect("req_tot");
    assert_eq!(after - before, 12, "HTTP/2 requests counted on the frontend");

    // A client offering only http/1.1 gets HTTP/1.1, and WebSockets still work beside h2.
    let s = connect_as(&any_cert(&[b"http/1.1"]), addr, "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = http1::handshake(TokioIo::new(s)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/_now").header("host", "localhost").body(Full::new(Bytes::new())).expect("req");
    let resp = h1.send_request(req).await.expect("response");
    assert_eq!((resp.version(), resp.status().as_u16()), (http::Version::HTTP_11, 200));
    let mut w = wss(&connector(&pki.der), addr, "/cluster_kuzzle_1/").await;
    let r = call(&mut w, json!({"controller": "server", "action": "info", "requestId": "i"})).await;
    assert_eq!(r["node"], "cluster_kuzzle_1");
    drop((w, h2, h1));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_can_be_turned_off() {
    let pki = Pki::new("h2-off");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("{}http2 = false\n{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    let gw = gateway(&gateway_toml(&toml)).await;
    let s = connect_as(&any_cert(&[b"h2", b"http/1.1"]), gw.tls_addr.expect("TLS"), "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "h2 offered with http2 = false");
    drop(s);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_count_against_max_connections_without_deadlock() {
    let pki = Pki::new("h2-cap");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    // Slow answers keep streams open long enough to pile up.
    assert_eq!(post(n1.addr, "/_sim/latency/200").await.status, 200);
    let toml = format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    let cap = 4;
    let gw = gateway(&gateway_toml(&toml).replacen("[gateway]\n", &format!("[gateway]\nmax_connections = {cap}\n"), 1))
        .await;
    let addr = gw.tls_addr.expect("TLS listener");
    let c = any_cert(&[b"h2"]);
    let (a, b) = (h2_conn(&c, addr).await, h2_conn(&c, addr).await);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let uri = format!("https://localhost:{}/_now", addr.port());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(uri).body(Full::new(Bytes::new())).expect("request");
            h2_send(&mut s, req).await.1.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("stream task"), 200, "every stream is served (no deadlock)");
    }
    let v = stats_json(&gw).await;
    let max = v["nodes"][0]["traffic"]["max"].as_u64().expect("node max");
    assert!((1..=cap).contains(&max), "the node had {max} requests at once from 24 streams; the cap is {cap}");
    println!("24 HTTP/2 streams on 2 connections, max_connections = {cap}: at most {max} at the node at once");
    drop((a, b));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_http2_connections_are_closed() {
    let pki = Pki::new("h2-idle");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("[timeouts]\nclient = \"500ms\"\n{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    let gw = gateway(&gateway_toml(&toml)).await;
    let addr = gw.tls_addr.expect("TLS listener");

    // A well-behaved client that stops sending requests gets a GOAWAY and its connection closes.
    let mut h2 = h2_conn(&any_cert(&[b"h2"]), addr).await;
    let (_, r) = h2_send(
        &mut h2,
        http::Request::get(format!("https://localhost:{}/_now", addr.port()))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 200);
    let t0 = Instant::now();
    eventually(Duration::from_secs(5), "the idle HTTP/2 connection closed", || {
        let closed = h2.is_closed();
        async move { closed.then_some(()) }
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(300), "closed after {:?}, before the idle timeout", t0.elapsed());

    // A client that says its preface and then nothing (it will not answer the GOAWAY's PING):
    // closed too, its slot freed.
    let mut s = connect_as(&any_cert(&[b"h2"]), addr, "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the silent HTTP/2 connection was not closed within 5 s");
    println!("silent HTTP/2 client closed after {:?} ([timeouts] client = 500ms)", t0.elapsed());
    eventually(Duration::from_secs(5), "no client connection left on the frontend", || async {
        (stats_json(&gw).await["frontend"]["cur"] == 0).then_some(())
    })
    .await;
    gw.shutdown().await;
}
