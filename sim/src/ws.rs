//! One WebSocket session: the upgrade handshake, Kuzzle JSON requests and their responses,
//! Kuzzle's JSON ping, and the notifications of the rooms the connection subscribed to.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::cluster::Publisher;
use crate::envelope::{ApiError, Envelope};
use crate::node::Node;
use crate::realtime::{ConnId, Published};

/// Notifications queued for one connection before it counts as too slow and misses some.
const NOTIFY_QUEUE: usize = 4096;

/// How the end of a graceful shutdown ends the node's WebSocket sessions.
///
/// `None`: the TCP connection is closed with no WebSocket close frame. That is what Kuzzle 2.56
/// does: its shutdown ends in `process.exit(0)` and nothing closes the sockets before (the
/// client's WebSocket reports 1006, abnormal closure; the SDK reconnects). `Some((code, reason))`
/// sends that close frame first, e.g. `Some((1001, "going away"))`.
pub const SHUTDOWN_CLOSE: Option<(u16, &str)> = None;
/// How long a session may take to send its shutdown close frame.
const CLOSE_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What one session needs from its node.
#[derive(Clone)]
pub(crate) struct WsContext {
    /// The node served: API actions, room registry, lifecycle, stats.
    pub node: Arc<Node>,
    /// Where a publish goes to the other nodes (None without Redis).
    pub publisher: Option<Publisher>,
    /// Cancelled to stop every task of the node at once.
    pub stop: CancellationToken,
    /// Cancelled at the end of a graceful shutdown: sessions end as [`SHUTDOWN_CLOSE`] says.
    pub closing: CancellationToken,
}

impl WsContext {
    /// A published document goes to this node's subscribers and, through Redis, to the other
    /// nodes' (never blocks).
    pub fn fan_out(&self, doc: &Published) {
        self.node.realtime.dispatch(doc);
        if let Some(p) = &self.publisher {
            p.notify_document(doc);
        }
    }
}

/// Whether a request asks for a WebSocket upgrade (on any path, as Kuzzle accepts).
pub(crate) fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    req.method() == Method::GET && has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The 101 answer to a valid handshake, or why it is refused.
pub(crate) fn handshake(headers: &HeaderMap) -> Result<Response<()>, ApiError> {
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    if !version_ok {
        return Err(ApiError::bad_request("WebSocket upgrade: Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::bad_request("WebSocket upgrade: missing Sec-WebSocket-Key"));
    };
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| ApiError::bad_request("WebSocket upgrade: bad key"))?;
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}

/// Removes the connection from the room registry however the session ends (cancellation too).
struct Registration {
    /// The node whose room registry holds the connection.
    node: Arc<Node>,
    /// The connection's id there, unregistered on drop.
    conn: ConnId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.realtime.unregister(self.conn);
    }
}

/// Run one session on an upgraded connection until the peer closes it or the node stops.
pub(crate) async fn session(upgraded: hyper::upgrade::Upgraded, cx: WsContext) {
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let (tx, mut notes) = mpsc::channel::<Utf8Bytes>(NOTIFY_QUEUE);
    let reg = Registration { node: cx.node.clone(), conn: cx.node.realtime.register(tx) };
    let conn = reg.conn;
    let (mut sink, mut stream) = ws.split();
    cx.node.stats.websocket();
    tracing::debug!(node = %cx.node.name, conn, "websocket session open");
    loop {
        // Biased: queued notifications go out before the next request is read, so a client sees
        // them in a deterministic order relative to its later responses.
        let out = tokio::select! {
            biased;
            _ = cx.stop.cancelled() => break,
            _ = cx.closing.cancelled() => {
                if let Some((code, reason)) = SHUTDOWN_CLOSE {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let sent = tokio::time::timeout(CLOSE_FRAME_TIMEOUT, sink.send(Message::Close(Some(frame))));
                    let _ = tokio::select! { _ = cx.stop.cancelled() => Ok(Ok(())), r = sent => r };
                }
                break;
            }
            note = notes.recv() => match note {
                Some(text) => Message::Text(text),
                None => break,
            },
            msg = stream.next() => match msg {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(node = %cx.node.name, conn, "websocket read: {e}");
                    break;
                }
                Some(Ok(Message::Text(t))) => match on_text(&cx, conn, t.as_str()) {
                    Some(m) => m,
                    None => continue,
                },
                Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                    Ok(t) => match on_text(&cx, conn, t) {
                        Some(m) => m,
                        None => continue,
                    },
                    Err(_) => continue,
                },
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the closing reply: send it, then end the session.
                    let _ = tokio::select! { _ = cx.stop.cancelled() => Ok(()), r = sink.close() => r };
                    break;
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; flushing sends it now.
                    let flushed = tokio::select! { _ = cx.stop.cancelled() => break, r = sink.flush() => r };
                    if flushed.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(_)) => continue,
            },
        };
        let sent = tokio::select! { _ = cx.stop.cancelled() => break, r = sink.send(out) => r };
        if let Err(e) = sent {
            tracing::debug!(node = %cx.node.name, conn, "websocket write: {e}");
            break;
        }
    }
    tracing::debug!(node = %cx.node.name, conn, "websocket session closed");
    drop(reg);
}

/// Answer one text frame; a publish also notifies local subscribers (this connection included,
/// after its response is queued first) and the other nodes.
fn on_text(cx: &WsContext, conn: ConnId, text: &str) -> Option<Message> {
    let Ok(req) = serde_json::from_str::<Value>(text) else {
        let env = Envelope::err(ApiError::new(400, "api.assert.invalid_argument", "invalid JSON request"));
        return Some(Message::text(env.render(&cx.node.name)));
    };
    // Kuzzle's JSON ping (browsers cannot send WebSocket pings).
    if req.get("p").and_then(Value::as_i64) == Some(1) && req.get("controller").is_none() {
        return Some(Message::text(json!({"p": 2}).to_string()));
    }
    // A node shutting down rejects every request (Kuzzle's entry point does, before its API).
    let (mut env, published) = if cx.node.lifecycle.is_shutting_down() {
        (api::reject(&req, ApiError::ws_shutting_down()), None)
    } else {
        api::handle(&cx.node, Some(conn), &req)
    };
    // The SDKs match a WebSocket response on `room`, which Kuzzle sets to the requestId.
    env.room = Some(env.request_id.clone());
    let msg = Message::text(env.render(&cx.node.name));
    if let Some(doc) = published {
        // The response goes out first in the session loop; notifications queue behind it for
        // this connection because they are sent on the next loop turns.
        cx.fan_out(&doc);
    }
    Some(msg)
}
