//! The TLS listener: HTTPS and WSS through it, clear start errors for bad certificate files, stalled handshakes cut.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_through_the_tls_listener() {
    let pki = Pki::new("ok");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1, &n2])))).await;
    let tls_addr = gw.tls_addr.expect("the TLS listener is up");
    let c = connector(&pki.der);

    // HTTPS GET: the node sees the scheme the client used.
    let r = https(&c, tls_addr, "/_sim/request").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let seen = if v["result"].get("headers").is_some() { &v["result"] } else { &v };
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{v}");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(seen["headers"]["host"], format!("localhost:{}", tls_addr.port()), "{v}");
    // Through a prefix.
    let r = https(&c, tls_addr, "/cluster_kuzzle_2/_now").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.node(), Some("cluster_kuzzle_2"));
    // The plain listener still says http.
    let r = get(gw.http_addr, "/_sim/request").await;
    let v = r.json();
    let seen = if v["result"].get("headers").is_some() { &v["result"] } else { &v };
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{v}");

    // wss: request/response, a subscription and its notification, then through a prefix.
    let mut w = wss(&c, tls_addr, "/").await;
    let r = call(&mut w, json!({"controller": "server", "action": "now", "requestId": "t1"})).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["room"], "t1");
    let r = call(
        &mut w,
        json!({"controller": "realtime", "action": "subscribe", "index": "i", "collection": "c", "body": {}, "requestId": "s"}),
    )
    .await;
    let channel = r["result"]["channel"].as_str().expect("channel").to_string();
    call(
        &mut w,
        json!({"controller": "realtime", "action": "publish", "index": "i", "collection": "c", "body": {"tls": true}, "requestId": "p"}),
    )
    .await;
    // The notification may come before or after the publish answer: look for it in both places.
    let deadline = Instant::now() + T;
    let mut got = false;
    w.send(Message::text("{\"p\":1}")).await.expect("send ping");
    let mut pong = false;
    while !(got && pong) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["room"] == channel.as_str() {
                    assert_eq!(v["result"]["_source"], json!({"tls": true}));
                    got = true;
                }
                if v == json!({"p": 2}) {
                    pong = true;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("wss ended: {other:?}"),
        }
    }
    assert!(got, "no notification over wss");
    assert!(pong, "no {{\"p\":2}} over wss");

    let mut w2 = wss(&c, tls_addr, "/cluster_kuzzle_1/").await;
    let r = call(&mut w2, json!({"controller": "server", "action": "info", "requestId": "i"})).await;
    assert_eq!(r["node"], "cluster_kuzzle_1");

    // Plain HTTP on the TLS port is refused without hurting the listener.
    let mut s = TcpStream::connect(tls_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("x-kuzzle-node"), "plain HTTP reached a node over the TLS port");
    // An untrusting client fails its handshake; a trusting one still works.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("other cert");
    let wrong = connector(other.cert.der());
    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    assert!(wrong.connect(name, tcp).await.is_err(), "a client that does not trust the certificate connected");
    assert_eq!(https(&c, tls_addr, "/_now").await.status, 200);

    drop((w, w2));
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_give_clear_start_errors() {
    let pki = Pki::new("bad");
    let missing = pki.dir.join("nope.pem");
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").expect("write");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("other cert");
    let other_key = pki.dir.join("other-key.pem");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).expect("write");

    let cases: [(&Path, &Path, &str); 4] = [
        (&missing, &pki.key, "nope.pem"),
        (&pki.cert, &missing, "nope.pem"),
        (&garbage, &pki.key, "garbage.pem"),
        (&pki.cert, &other_key, "do not match"),
    ];
    for (cert, key, needle) in cases {
        let cfg = Config::parse(&gateway_toml(&tls_section(cert, key)), "<test>").expect("config parses");
        match kuzzle_gateway::app::bind_and_start(cfg) {
            Ok(h) => {
                h.shutdown().await;
                panic!("gateway started with cert {} and key {}", cert.display(), key.display());
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "error should mention {needle:?}: {msg}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_and_holds_its_connection_slot_until_then() {
    let pki = Pki::new("stall");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("{}handshake_timeout = \"400ms\"\n{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    // Few connections: stalled handshakes hold them all (each accept loop also keeps one in hand
    // while it waits, so more stalled clients than the cap are opened).
    let text = gateway_toml(&toml).replacen("[gateway]\n", "[gateway]\nmax_connections = 4\n", 1);
    let gw = gateway(&text).await;
    let addr = gw.tls_addr.expect("TLS listener");

    // Clients that connect and say nothing, then a real one queued behind them.
    let t0 = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..6 {
        stalled.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let real = tokio::spawn({
        let c = connector(&pki.der);
        async move {
            let _s = tls_connect(&c, addr).await;
            Instant::now()
        }
    });
    let mut first_cut = None;
    for s in &mut stalled {
        let mut buf = [0u8; 16];
        let n =
            tokio::time::timeout(T, s.read(&mut buf)).await.expect("a stalled handshake is cut in time").unwrap_or(0);
        assert_eq!(n, 0, "the stalled connection is closed without a byte");
        first_cut.get_or_insert(t0.elapsed());
    }
    let cut = first_cut.expect("cut");
    assert!(cut >= Duration::from_millis(350) && cut < Duration::from_secs(5), "cut after {cut:?}, want ~400ms");
    let served_at = real.await.expect("real client").duration_since(t0);
    assert!(served_at >= Duration::from_millis(350), "the real client got a slot at {served_at:?}, before any cut");
    println!("stalled handshake cut after {cut:?}; the client queued behind 6 of them was served at {served_at:?}");
    gw.shutdown().await;
}
