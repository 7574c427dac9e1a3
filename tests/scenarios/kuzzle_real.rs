//! The real Kuzzle 2 server (npm kuzzle@2.56.0, `test-support/kuzzle-real`) as a 3-node cluster:
//! the facts the gateway's defaults rest on, checked against the real thing. No gateway here.
//! Needs node, npm (the install runs once, ~4 minutes on a fresh machine) and redis-server.

use crate::common;

use std::time::{Duration, Instant};

use futures_util::SinkExt;

use common::*;
use serde_json::Value;

/// Calls per route counted by the ES stand-in between two snapshots.
fn es_delta(before: &Value, after: &Value) -> Vec<(String, u64)> {
    let empty = serde_json::Map::new();
    let b = before["calls"].as_object().unwrap_or(&empty);
    let mut d: Vec<(String, u64)> = after["calls"]
        .as_object()
        .unwrap_or(&empty)
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) - b.get(k).and_then(Value::as_u64).unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kuzzle_cluster_health_routes_and_graceful_stop() {
    // One cluster at a time: real nodes load both cores, and the probes time a shutdown.
    let _one = one_at_a_time().await;
    let started = Instant::now();
    let mut c = KuzzleCluster::start(3);
    eprintln!("3 real Kuzzle nodes ready in {:.1?}", started.elapsed());

    // Every node: its own address, its own ID card, and every HTTP response closes its connection.
    let ids = c.node_ids();
    assert!(ids.iter().all(Option::is_some), "an ID card per node: {ids:?}");
    for i in 0..3 {
        let addr = c.node_addr(i);
        let card = c.id_card(i).expect("ID card");
        assert_eq!(card["ip"], addr.ip().to_string(), "the card names the node's own address");
        for path in ["/_now", "/_ready"] {
            let r = get(addr, path).await;
            assert_eq!(r.status, 200, "{addr}{path}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("connection"), Some("close"), "{addr}{path}: {:?}", r.headers);
        }
        assert!(get(addr, "/_now").await.json()["result"]["now"].is_u64());
    }

    eventually(Duration::from_secs(10), "every ID card lists the two peers", || async {
        (0..3)
            .all(|i| c.id_card(i).is_some_and(|card| card["topology"].as_array().map(Vec::len) == Some(2)))
            .then_some(())
    })
    .await;

    // /_healthCheck asks Elasticsearch (3 calls); with services=internalCache it asks only Redis.
    let addr = c.node_addr(0);
    let before = c.es_calls();
    let r = get(addr, "/_healthCheck").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["status"], "green", "{}", String::from_utf8_lossy(&r.body));
    let mid = c.es_calls();
    let d = es_delta(&before, &mid);
    assert!(d.iter().map(|(_, n)| n).sum::<u64>() >= 3, "/_healthCheck costs Elasticsearch calls: {d:?}");
    for route in ["GET /", "GET /_cluster/health", "GET /_cluster/stats"] {
        assert!(d.iter().any(|(k, _)| k == route), "/_healthCheck calls {route}: {d:?}");
    }
    let r = get(addr, "/_healthCheck?services=internalCache").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["result"]["services"]["internalCache"], "green");
    assert_eq!(es_delta(&mid, &c.es_calls()), vec![], "/_healthCheck?services=internalCache costs no ES call");
    assert_eq!(c.es_calls()["unknown"], 0, "the ES stand-in answered every call Kuzzle made");

    // SIGTERM: the node rejects new requests with 503 api.process.shutting_down (not executed),
    // then its listener goes away; its ID card leaves Redis; the others stay ready.
    let stopping = c.node_addr(1);
    let old_id = ids[1].clone().expect("id of node 1");
    c.stop_node(1);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "node 1 still answering 20 s after SIGTERM: {seen:?}");
        match http_get(stopping, "/_now", Duration::from_secs(2)) {
            Ok((200, _, _)) => seen.push("200".to_string()),
            Ok((503, head, body)) => {
                let v: Value = serde_json::from_slice(&body).expect("503 body is JSON");
                assert_eq!(v["error"]["id"], "api.process.shutting_down", "{v}");
                assert_eq!(v["status"], 503);
                assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
                seen.push("503".to_string());
            }
            Ok((s, _, body)) => panic!("unexpected {s} while stopping: {}", String::from_utf8_lossy(&body)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                seen.push("refused".to_string());
                break;
            }
            // The listener closing under an accepted connection (reset, empty reply).
            Err(e) => seen.push(format!("error: {}", e.kind())),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.dedup();
    eprintln!("GET /_now on a node after its SIGTERM: {seen:?}");
    assert!(seen.len() >= 2 || seen == ["refused"], "{seen:?}");
    assert!(c.wait_exit(1).success(), "a SIGTERMed Kuzzle exits 0");
    eventually(Duration::from_secs(10), "the stopped node's ID card leaves Redis", || async {
        c.id_card(1).is_none().then_some(())
    })
    .await;
    assert!(c.is_ready(0) && c.is_ready(2));

    // Restarted on the same address: a new node id, a new card.
    c.start_node(1);
    let new_id = c.node_ids()[1].clone().expect("a card after the restart");
    assert_ne!(new_id, old_id, "a node gets a new id at every start");

    // SIGKILL of the node and its IDCardRenewer: the card expires with its TTL.
    c.kill_node(2);
    assert!(!c.is_ready(2));
    eventually(Duration::from_secs(15), "a killed node's ID card expires", || async {
        c.id_card(2).is_none().then_some(())
    })
    .await;
    // A fourth node on a new address joins the two left.
    let k = c.add_node();
    assert_eq!(k, 3);
    assert!(c.node_addr(3).ip() != c.node_addr(2).ip());
    eventually(Duration::from_secs(10), "the new node sees its two live peers", || async {
        c.id_card(3).is_some_and(|card| card["topology"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;

    let t = Instant::now();
    drop(c);
    eprintln!("cluster dropped in {:.1?}; whole test {:.1?}", t.elapsed(), started.elapsed());
}

/// A GET's status on a fresh connection, None if the exchange failed.
async fn status_of(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut c = Client::try_connect(addr).await.ok()?;
    c.try_send("GET", path, &[], bytes::Bytes::new()).await.ok().map(|r| r.status)
}

/// What a gateway can see of one node, probe by probe, as comparable text: statuses, framing,
/// error ids, envelope shapes, WebSocket behaviour, and the shutdown sequence. `term` sends the
/// node SIGTERM (returns at once).
async fn observe(addr: std::net::SocketAddr, term: impl FnOnce()) -> std::collections::BTreeMap<String, String> {
    use std::collections::BTreeMap;
    let mut o = BTreeMap::new();
    // What the gateway and Kuzzle's SDKs read of an envelope (the sim adds `node`, real Kuzzle
    // `headers`: neither is read by the gateway).
    let shape = |v: &Value| {
        format!(
            "status {} error.id {} requestId {} result {}",
            v["status"],
            v["error"]["id"],
            v["requestId"].is_string(),
            if v["error"].is_null() { "present" } else { "null" }
        )
    };
    for path in ["/_now", "/_ready", "/_healthcheck", "/_healthCheck", "/_healthCheck?services=internalCache", "/nope"]
    {
        let r = get(addr, path).await;
        o.insert(format!("GET {path} status"), r.status.to_string());
        o.insert(format!("GET {path} connection"), format!("{:?}", r.header("connection")));
        let json = serde_json::from_slice::<Value>(&r.body).ok();
        o.insert(format!("GET {path} json"), json.is_some().to_string());
        if let Some(v) = json.filter(|_| path != "/_ready" && path != "/_healthcheck") {
            o.insert(format!("GET {path} envelope"), shape(&v));
        }
    }
    o.insert(
        "GET /_now result.now is a number".into(),
        get(addr, "/_now").await.json()["result"]["now"].is_u64().to_string(),
    );
    o.insert(
        "GET /_healthCheck result.status".into(),
        get(addr, "/_healthCheck").await.json()["result"]["status"].to_string(),
    );
    // Requests one after the other on one connection are all answered, each saying `close`
    // (Kuzzle closes only when asked). Two pipelined requests are not probed: real Kuzzle closes
    // without answering either, the simulator answers the first, and the gateway never pipelines.
    let mut c = Client::connect(addr).await;
    let both = [
        c.try_send("GET", "/_now", &[], bytes::Bytes::new()).await,
        c.try_send("GET", "/_now", &[], bytes::Bytes::new()).await,
    ];
    o.insert(
        "two requests on one connection".into(),
        format!("{:?}", both.map(|r| r.map(|r| r.status).map_err(|_| "broken"))),
    );

    // WebSocket: a request answered with its requestId as room; the SDK's JSON ping.
    let mut w = ws_any(addr, "/").await.0;
    let (r, _) =
        ws_call(&mut w, serde_json::json!({"controller": "server", "action": "now", "requestId": "fid-1"})).await;
    o.insert("ws server:now status".into(), r["status"].to_string());
    o.insert("ws server:now room".into(), r["room"].to_string());
    w.send(tokio_tungstenite::tungstenite::Message::Text(r#"{"p":1}"#.into())).await.expect("ping");
    let pong = ws_wait(&mut w, "the JSON pong", |v| v.get("p").is_some()).await.0;
    o.insert("ws {p:1}".into(), pong.to_string());

    // SIGTERM: new HTTP requests are refused unexecuted (503 shutting_down) until the node is
    // gone; /_ready says 503 and /_healthcheck 200 meanwhile; the open WebSocket then ends.
    term();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refusal = None;
    let (mut ready_503, mut live_200) = (false, false);
    while Instant::now() < deadline {
        match Client::try_connect(addr).await {
            Err(_) => break,
            Ok(mut c) => match c.try_send("GET", "/_now", &[], bytes::Bytes::new()).await {
                Ok(r) if r.status == 503 && refusal.is_none() => {
                    let v = r.json();
                    refusal = Some(format!(
                        "{} {} {} {}",
                        v["status"], v["error"]["id"], v["error"]["code"], v["error"]["message"]
                    ));
                    ready_503 = status_of(addr, "/_ready").await == Some(503);
                    live_200 = status_of(addr, "/_healthcheck").await == Some(200);
                }
                _ => {}
            },
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    o.insert("shutdown: first refusal".into(), format!("{refusal:?}"));
    o.insert("shutdown: /_ready during refusals".into(), ready_503.to_string());
    o.insert("shutdown: /_healthcheck during refusals".into(), live_200.to_string());
    o.insert("shutdown: ends refusing connections".into(), Client::try_connect(addr).await.is_err().to_string());
    // No close frame: the socket just ends with the process (1006 for the SDK), or a 1001.
    let code = close_code(&mut w, Duration::from_secs(10)).await;
    o.insert("shutdown: websocket close frame is not 1000".into(), (code != Some(1000)).to_string());
    o
}

/// One probe list against the simulator and against real Kuzzle: any difference a gateway can see
/// fails (the simulator is wrong where they differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_matches_real_kuzzle_where_a_gateway_looks() {
    // One cluster at a time: real nodes load both cores, and the probes time a shutdown.
    let _one = one_at_a_time().await;
    let mut real = tokio::task::block_in_place(|| KuzzleCluster::start(1));
    let real_addr = real.node_addr(0);
    let theirs = observe(real_addr, || real.stop_node(0)).await;
    let _ = tokio::task::block_in_place(|| real.wait_exit(0));

    let redis = RedisServer::start();
    let mut sim = Sim::start("fidelity", &["--kuzzle2", "--redis", &redis.url()]);
    let sim_addr = sim.addr;
    let pid = sim.pid();
    let ours = observe(sim_addr, || {
        signal(pid, Signal::TERM);
    })
    .await;
    sim.kill();
    let diff: Vec<String> = theirs
        .iter()
        .filter(|(k, v)| ours.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: real Kuzzle {v} / simulator {:?}", ours.get(k)))
        .collect();
    assert!(diff.is_empty(), "the simulator differs from real Kuzzle:\n{}\n\nreal: {theirs:#?}", diff.join("\n"));
    println!("real Kuzzle and the simulator agree on: {theirs:#?}");
    // The probes saw something: a refusal and its exact body.
    assert!(theirs["shutdown: first refusal"].contains("api.process.shutting_down"), "{theirs:#?}");
}
