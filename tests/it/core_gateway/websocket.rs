//! A WebSocket session through the gateway.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_through_the_gateway() {
    let sims: Vec<Sim> = names("cluster_kuzzle_", 2).iter().map(|n| Sim::start(n, &[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    // The lane relays upgrades (the default); hyper's path, with it off, must behave the same.
    for lane in [true, false] {
        let gw = gateway(&with_fast_lane(&gateway_toml(&nodes_toml(&refs)), lane)).await;
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
        eventually(T, "tunnels closed", || async {
            (gw.core.frontend.tunnels.load(Ordering::Relaxed) == 0).then_some(())
        })
        .await;
        gw.shutdown().await;
    }
}

/// The SDK heartbeat `{"p":1}`: answered by the gateway itself (`sdk_pings = "answer"`, the
/// default) even while the node cannot answer; with `"forward"` every one goes to the node, and
/// the gateway answers none (its counter says who answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_heartbeats_are_answered_by_the_gateway_unless_forwarded() {
    let sim = Sim::start("cluster_kuzzle_1", &[]);
    for (mode, gateway_answers) in [("answer", true), ("forward", false)] {
        // Health checks far apart: a stopped node stays UP (and its tunnel open) for the test.
        let toml = gateway_toml(&format!("{}[health]\ninterval = \"60s\"\n", nodes_toml(&[&sim]))).replacen(
            "[gateway]\n",
            &format!("[gateway]\nsdk_pings = \"{mode}\"\n"),
            1,
        );
        let gw = gateway(&toml).await;
        let mut w = ws(gw.http_addr, "/").await;
        assert_eq!(sdk_heartbeat(&mut w).await.ok(), Some(json!({"p": 2})), "{mode}: answered");
        if gateway_answers {
            // The node stops: it reads and answers nothing, the gateway still does.
            signal(sim.pid(), Signal::STOP);
            let answer = sdk_heartbeat(&mut w).await;
            signal(sim.pid(), Signal::CONT);
            assert_eq!(answer.ok(), Some(json!({"p": 2})), "{mode}: the gateway answers while the node cannot");
        } else {
            assert_eq!(sdk_heartbeat(&mut w).await.ok(), Some(json!({"p": 2})), "{mode}: the node answers");
        }
        // Either way the session goes on.
        let (r, _) = ws_call(&mut w, kuzzle("server", "now", "after")).await;
        assert_eq!(r["status"], 200, "{mode}: {r}");
        // Who answered: both heartbeats fall within the first forward period.
        let m = request(gw.stats_addr, "GET", "/metrics", &[ops_auth()], Bytes::new()).await;
        let answered = if gateway_answers { 2 } else { 0 };
        let line = format!("kuzzle_gateway_sdk_pings_answered_total {answered}\n");
        assert!(String::from_utf8_lossy(&m.body).contains(&line), "{mode}: no {line:?} in /metrics");
        gw.shutdown().await;
    }
}

/// Send `{"p":1}`; the first `{"p":...}` message within 1 s.
async fn sdk_heartbeat(w: &mut Ws) -> Result<Value, tokio::time::error::Elapsed> {
    w.send(Message::text("{\"p\":1}")).await.expect("send");
    tokio::time::timeout(Duration::from_secs(1), ws_wait(w, "{\"p\":2}", |v| v.get("p").is_some()))
        .await
        .map(|(p, _)| p)
}

/// Frames that arrive in the same packet as the upgrade exchange (the client's right behind its
/// request, the node's right behind its 101) were read before the tunnel began (by the lane, or by
/// hyper with the lane off): they must be relayed first, whichever stream type the tunnel works on; and a half-close still reaches the
/// node as one (the node's socket is shut down for real, not through hyper's no-op shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_upgrade_exchange_are_relayed() {
    // A node that answers the upgrade and sends a frame in the same write, then reports what the
    // client sent after its request head.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    let (node, task) = fake_node(move |mut c| {
        let tx = tx.clone();
        async move {
            let Some(mut got) = read_request(&mut c).await else { return };
            if !got.starts_with(b"GET /ws") {
                // A health check or anything else: a plain answer.
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                return;
            }
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(got.len(), |i| i + 4);
            let _ = c
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x0anode-first",
                )
                .await;
            // The client's frame: 6 bytes of header (masked, zero key) and 12 of payload.
            let mut buf = [0u8; 4096];
            while got.len() < head_end + 18 {
                match tokio::time::timeout(T, c.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = tx.send(got[head_end..].to_vec()).await;
            // The client's half-close must reach the node as one (an end of stream, not a reset).
            let end = match tokio::time::timeout(T, c.read(&mut buf)).await {
                Ok(Ok(0)) => b"eof".to_vec(),
                other => format!("{other:?}").into_bytes(),
            };
            let _ = tx.send(end).await;
        }
    })
    .await;
    for lane in [true, false] {
        let extra = format!("[health]\ninterval = \"1h\"\n[[node]]\nname = \"n1\"\naddress = \"{node}\"\n");
        let gw = gateway(&with_fast_lane(&gateway_toml(&extra), lane)).await;
        let mut c = TcpStream::connect(gw.http_addr).await.expect("connect");
        let mut hello = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        hello.extend_from_slice(b"\x81\x8c\x00\x00\x00\x00client-first");
        c.write_all(&hello).await.expect("write");
        let from_client = tokio::time::timeout(T, rx.recv()).await.expect("node got nothing").expect("node");
        assert_eq!(from_client, b"\x81\x8c\x00\x00\x00\x00client-first", "{}", String::from_utf8_lossy(&from_client));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"node-first") {
            match tokio::time::timeout(T, c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!("no node frame ({other:?}): {}", String::from_utf8_lossy(&got)),
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
        c.shutdown().await.expect("half-close");
        let end = tokio::time::timeout(T, rx.recv()).await.expect("node saw no end").expect("node");
        assert_eq!(end, b"eof", "lane {lane}: {}", String::from_utf8_lossy(&end));
        gw.shutdown().await;
    }
    task.abort();
}
