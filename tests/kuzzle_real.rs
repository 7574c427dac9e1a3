//! The real Kuzzle 2 server (npm kuzzle@2.56.0, `test-support/kuzzle-real`) as a 3-node cluster:
//! the facts the gateway's defaults rest on, checked against the real thing. No gateway here.
//! Needs node, npm (the install runs once, ~4 minutes on a fresh machine) and redis-server.

mod common;

use std::time::{Duration, Instant};

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
