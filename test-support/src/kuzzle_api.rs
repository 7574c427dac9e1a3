//! Kuzzle API shapes: request objects, real-time subscribe/publish/notification over a WebSocket, error envelopes.

use serde_json::{json, Value};

use crate::http_client::Resp;
use crate::websocket::{ws_call, ws_wait, Ws};

/// A Kuzzle request.
pub fn kuzzle(controller: &str, action: &str, request_id: &str) -> Value {
    json!({"controller": controller, "action": action, "requestId": request_id})
}

/// Subscribe to index/collection with `filters`; returns (roomId, channel).
pub async fn subscribe(w: &mut Ws, index: &str, collection: &str, filters: Value, id: &str) -> (String, String) {
    let mut req = kuzzle("realtime", "subscribe", id);
    req["index"] = json!(index);
    req["collection"] = json!(collection);
    req["body"] = filters;
    let (r, _) = ws_call(w, req).await;
    assert_eq!(r["status"], 200, "{r}");
    (
        r["result"]["roomId"].as_str().expect("roomId").to_owned(),
        r["result"]["channel"].as_str().expect("channel").to_owned(),
    )
}

/// Publish a document (volatile `{"from": id}`); returns the messages that came before the response.
pub async fn publish(w: &mut Ws, index: &str, collection: &str, body: Value, id: &str) -> Vec<Value> {
    let mut req = kuzzle("realtime", "publish", id);
    req["index"] = json!(index);
    req["collection"] = json!(collection);
    req["body"] = body;
    req["volatile"] = json!({"from": id});
    let (r, early) = ws_call(w, req).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["result"], json!({"published": true}));
    early
}

/// The document notification for `channel` (possibly already received in `early`).
pub async fn notification(w: &mut Ws, channel: &str, early: Vec<Value>) -> Value {
    let is = |v: &Value| v["room"] == channel && v["type"] == "document";
    match early.into_iter().find(|v| is(v)) {
        Some(n) => n,
        None => ws_wait(w, &format!("notification on {channel}"), is).await.0,
    }
}

/// Nothing but (optionally) unrelated messages arrives before the response to a sentinel request:
/// proves that no notification for `channel` was sent before it.
pub async fn no_notification_before_sentinel(w: &mut Ws, channel: &str) {
    let (_, early) = ws_call(w, kuzzle("server", "now", "sentinel")).await;
    assert!(!early.iter().any(|v| v["room"] == channel), "unexpected notification: {early:?}");
}

/// Assert a Kuzzle error envelope with `status` (HTTP status, JSON, `status`, `error.status`, no
/// result); returns its `error.message`.
pub fn assert_envelope(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "body: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["error"]["status"], status, "{v}");
    assert!(v["result"].is_null(), "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {v}"));
    assert!(!msg.is_empty());
    msg.to_string()
}

/// Real Kuzzle's answer to any request while it shuts down (kuzzle-real-facts.md): 503, not executed.
pub const SHUTTING_DOWN_BODY: &str = r#"{"status":503,"error":{"id":"api.process.shutting_down","code":33685511,"message":"Rejected: this node is shutting down."}}"#;
