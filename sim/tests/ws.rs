//! WebSocket side of the sim: Kuzzle requests and responses, pings, rooms and notifications.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use kuzzle_node_sim::SimConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_responses_and_pings() {
    let s = sim(SimConfig::new("wsnode")).await;
    let mut w = ws(s.addr, "/").await;

    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "r-1")).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["requestId"], "r-1");
    assert_eq!(r["room"], "r-1", "responses carry room = requestId");
    assert_eq!(r["node"], "wsnode");
    assert_eq!((r["controller"].as_str(), r["action"].as_str()), (Some("server"), Some("now")));
    assert!(r["result"]["now"].is_u64(), "{r}");
    let (r, _) = ws_call(&mut w, kuzzle("server", "info", "r-2")).await;
    assert_eq!(r["result"]["serverInfo"]["kuzzle"]["nodeName"], "wsnode");

    // Errors are envelopes with room = requestId, never silence.
    let (r, _) = ws_call(&mut w, kuzzle("document", "create", "r-3")).await;
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(r["error"]["status"], 404);
    assert!(r["error"]["message"].as_str().unwrap().contains("document"), "{r}");
    let (r, _) = ws_call(&mut w, json!({"action": "now", "requestId": "r-4"})).await;
    assert_eq!(r["status"], 400, "{r}");
    let mut bad = kuzzle("realtime", "subscribe", "r-5");
    bad["index"] = json!("i");
    let (r, _) = ws_call(&mut w, bad).await;
    assert_eq!(r["status"], 400, "subscribe without collection: {r}");
    let mut bad = kuzzle("realtime", "subscribe", "r-6");
    bad["index"] = json!("i");
    bad["collection"] = json!("c");
    bad["body"] = json!({"nonsense": {}});
    let (r, _) = ws_call(&mut w, bad).await;
    assert_eq!(r["status"], 400, "unknown filter keyword: {r}");
    let (r, _) = ws_call(
        &mut w,
        json!({"controller": "realtime", "action": "count", "requestId": "r-7", "body": {"roomId": "nope"}}),
    )
    .await;
    assert_eq!(r["status"], 404, "{r}");
    w.send(Message::text("not json")).await.expect("send");
    let (r, _) = ws_wait(&mut w, "answer to bad JSON", |v| v["status"] == 400).await;
    assert!(r["error"]["message"].is_string());

    // Kuzzle's JSON ping, and a WebSocket ping.
    w.send(Message::text("{\"p\":1}")).await.expect("send");
    let (p, _) = ws_wait(&mut w, "{\"p\":2}", |v| v.get("p").is_some()).await;
    assert_eq!(p, json!({"p": 2}));
    w.send(Message::Ping(Bytes::from_static(b"hb"))).await.expect("ping");
    let pong = tokio::time::timeout(T, async {
        loop {
            match w.next().await {
                Some(Ok(Message::Pong(b))) => return b,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"hb");

    // A close from the client ends the session cleanly: the close is answered, then EOF.
    w.close(None).await.expect("close");
    let end = tokio::time::timeout(T, async {
        let mut saw_close = false;
        while let Some(m) = w.next().await {
            match m {
                Ok(Message::Close(_)) => saw_close = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        saw_close
    })
    .await
    .expect("session ends in time");
    assert!(end, "the server answered the close frame");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_notify_count_unsubscribe() {
    let s = sim(SimConfig::new("rt")).await;
    let mut a = ws(s.addr, "/").await;
    let mut b = ws(s.addr, "/").await;

    let (room_a, ch_a) = subscribe(&mut a, "idx", "col", json!({}), "sa").await;
    assert!(ch_a.starts_with(&room_a), "channel = roomId + suffix: {ch_a}");
    // The same filters give the same room, on another connection too.
    let (room_b, ch_b) = subscribe(&mut b, "idx", "col", json!({}), "sb").await;
    assert_eq!(room_a, room_b);
    assert_eq!(ch_a, ch_b);
    let (room_eq, ch_eq) = subscribe(&mut b, "idx", "col", json!({"equals": {"color": "red"}}), "se").await;
    assert_ne!(room_eq, room_a);

    // A publishes: A itself and B get the notification.
    let early = publish(&mut a, "idx", "col", json!({"color": "blue", "n": 1}), "p1").await;
    let n = notification(&mut a, &ch_a, early).await;
    assert_eq!(n["type"], "document");
    assert_eq!(n["status"], 200);
    assert_eq!((n["index"].as_str(), n["collection"].as_str()), (Some("idx"), Some("col")));
    assert_eq!((n["controller"].as_str(), n["action"].as_str()), (Some("realtime"), Some("publish")));
    assert_eq!((n["scope"].as_str(), n["state"].as_str()), (Some("in"), Some("done")));
    assert!(n["timestamp"].is_u64());
    assert_eq!(n["volatile"], json!({"from": "p1"}));
    assert_eq!(n["result"], json!({"_id": null, "_source": {"color": "blue", "n": 1}}));
    assert_eq!(n["node"], "rt");
    let n = notification(&mut b, &ch_b, Vec::new()).await;
    assert_eq!(n["result"]["_source"]["n"], 1);
    // The equals filter did not match "blue".
    no_notification_before_sentinel(&mut b, &ch_eq).await;

    // "red" matches both rooms of B.
    publish(&mut a, "idx", "col", json!({"color": "red"}), "p2").await;
    let (_, before) = ws_wait(&mut b, "notification on the equals room", |v| v["room"] == ch_eq.as_str()).await;
    notification(&mut b, &ch_b, before).await;
    // Another collection reaches nobody.
    publish(&mut a, "idx", "other", json!({"color": "red"}), "p3").await;
    no_notification_before_sentinel(&mut b, &ch_b).await;

    // Count, unsubscribe, count.
    let count = |room: &str, id: &str| json!({"controller": "realtime", "action": "count", "requestId": id, "body": {"roomId": room}});
    let (r, _) = ws_call(&mut a, count(&room_a, "c1")).await;
    assert_eq!(r["result"], json!({"count": 2}), "{r}");
    let (r, _) = ws_call(
        &mut b,
        json!({"controller": "realtime", "action": "unsubscribe", "requestId": "u1", "body": {"roomId": room_b}}),
    )
    .await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["result"], json!({"roomId": room_b}));
    let (r, _) = ws_call(&mut a, count(&room_a, "c2")).await;
    assert_eq!(r["result"], json!({"count": 1}), "{r}");
    publish(&mut a, "idx", "col", json!({"color": "green"}), "p4").await;
    no_notification_before_sentinel(&mut b, &ch_b).await;

    // A closed connection leaves its rooms: A's room disappears once A is gone.
    drop(a);
    eventually(T, "room gone with its last subscriber", || {
        let addr = s.addr;
        let room = room_a.clone();
        async move {
            let mut c = ws(addr, "/").await;
            let (r, _) = ws_call(
                &mut c,
                json!({"controller": "realtime", "action": "count", "requestId": "c3", "body": {"roomId": room}}),
            )
            .await;
            (r["status"] == 404).then_some(())
        }
    })
    .await;
    s.shutdown().await;
}
