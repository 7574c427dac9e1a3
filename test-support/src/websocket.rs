//! WebSocket client: connect, read JSON messages with bounds, and call Kuzzle's request/response protocol.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::wait::T;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Open a WebSocket to `ws://addr{path}`; the 101 must come from a simulated node (`x-kuzzle-node`).
pub async fn ws(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = ws_any(addr, path).await;
    assert!(resp.headers().get("x-kuzzle-node").is_some(), "WebSocket {addr}{path}: the 101 carries no x-kuzzle-node");
    ws
}

/// Open a WebSocket to `ws://addr{path}` on any server (real Kuzzle's 101 names no node); returns
/// the 101 too.
pub async fn ws_any(addr: SocketAddr, path: &str) -> (Ws, tokio_tungstenite::tungstenite::handshake::client::Response) {
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|_| panic!("WebSocket {url}: handshake timed out"))
        .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"));
    assert_eq!(resp.status(), 101, "WebSocket {url}: status");
    (ws, resp)
}

/// Next JSON text message within `timeout` (non-text frames skipped); `None` on timeout, close,
/// error or a text that is not JSON.
pub async fn ws_next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// The next JSON text message satisfying `f` within `within` (other messages skipped); `None`
/// on timeout, close or error.
pub async fn ws_next_json_where(ws: &mut Ws, within: Duration, f: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<Value>(&t) {
                Ok(v) if f(&v) => return Some(v),
                _ => continue,
            },
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// The next JSON text message satisfying `f`, within `T`, and the JSON messages that came
/// before it. Panics on timeout, close, error or a text that is not JSON.
pub async fn ws_wait(ws: &mut Ws, what: &str, f: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + T;
    let mut others = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"));
                if f(&v) {
                    return (v, others);
                }
                others.push(v);
            }
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("{what}: not within {T:?} (seen before: {others:?})"),
            other => panic!("{what}: {other:?} (seen before: {others:?})"),
        }
    }
}

/// Send a Kuzzle request and wait for its response; returns it and the messages that came
/// before (notifications). The response is the message naming the request (`requestId`, or
/// `room` as the SDKs match it) that is not a notification (those have a `type` and may carry
/// the publishing request's id).
pub async fn ws_call(ws: &mut Ws, req: Value) -> (Value, Vec<Value>) {
    let id = req["requestId"].as_str().expect("request needs a requestId").to_owned();
    tokio::time::timeout(T, ws.send(Message::text(req.to_string())))
        .await
        .unwrap_or_else(|_| panic!("request {id} not sent within {T:?}"))
        .unwrap_or_else(|e| panic!("WebSocket send of {id}: {e}"));
    ws_wait(ws, &format!("response to {id}"), |v| {
        (v["requestId"] == id.as_str() || v["room"] == id.as_str()) && v.get("type").is_none()
    })
    .await
}

/// Next close frame's code on a WebSocket (other messages skipped), or None if it ended without
/// one within `within`.
pub async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Which node answers a `server:now` on this WebSocket (the answer must be a 200).
pub async fn ws_node(ws: &mut Ws, id: &str) -> String {
    let (resp, _) = ws_call(ws, serde_json::json!({"controller": "server", "action": "now", "requestId": id})).await;
    assert_eq!(resp["status"], 200, "{resp}");
    resp["node"].as_str().unwrap_or_else(|| panic!("response without node: {resp}")).to_string()
}
