//! Data plane: one client request: route, pick a node, forward with retries, stream the response or open a tunnel.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body as _, Incoming};

use crate::backend::{Backend, ConnectError, UpBody};
use crate::balance;
use crate::body::{Counted, Direction, Tracked};
use crate::route::{self, RouteError};
use crate::state::{Gateway, Snapshot};
use crate::tunnel;

/// Body of a response to a client: a node's streamed body, or the gateway's own JSON.
pub type DownBody = Either<Tracked, Full<Bytes>>;

/// Scheme clients used, for `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub scheme: Scheme,
}

/// Entry point for every client request.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<DownBody>, Infallible> {
    gw.frontend.requests_total.fetch_add(1, Ordering::Relaxed);
    gw.frontend.request_rate.tick();
    let resp = match forward(&gw, req, client).await {
        Ok(r) => r,
        Err(e) => {
            gw.frontend.request_errors.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    };
    gw.frontend.responses.record(resp.status().as_u16());
    Ok(resp)
}

/// An error the gateway answers itself, in Kuzzle's envelope.
#[derive(Debug)]
pub struct GatewayError {
    pub status: StatusCode,
    pub message: String,
}

impl GatewayError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        GatewayError { status, message: message.into() }
    }

    pub fn into_response(self) -> Response<DownBody> {
        json_error(self.status, &self.message)
    }
}

/// `{"status": N, "error": {"status": N, "message": "..."}, "result": null}` with the matching status.
pub fn json_error(status: StatusCode, message: &str) -> Response<DownBody> {
    let body = serde_json::json!({
        "requestId": null,
        "status": status.as_u16(),
        "error": { "status": status.as_u16(), "message": message },
        "controller": null,
        "action": null,
        "index": null,
        "collection": null,
        "volatile": null,
        "result": null,
    });
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Headers that concern one connection only (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Remove hop-by-hop headers; with `upgrade`, put back the `Connection: upgrade` + `Upgrade` pair.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`)?
fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let wants = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if wants {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn is_websocket(v: &HeaderValue) -> bool {
    v.to_str().is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

async fn forward(
    gw: &Arc<Gateway>,
    mut req: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<DownBody>, GatewayError> {
    let snap = gw.snapshot.load_full();
    let routed = route::route(req.uri().path(), req.uri().query(), |seg| snap.index_of(seg)).map_err(|e| {
        let msg = match e {
            RouteError::AboveRoot => "bad request: the path climbs above the root",
            RouteError::EncodedSlash => "bad request: encoded slash in the first path segment",
            RouteError::BadEncoding => "bad request: invalid percent-encoding in the path",
        };
        GatewayError::new(StatusCode::BAD_REQUEST, msg)
    })?;
    let uri: Uri = match req.uri().path_and_query() {
        // Nothing to rewrite: reuse the parsed request target (no copy).
        Some(pq) if routed.unchanged() => Uri::from(pq.clone()),
        _ => routed
            .path_and_query()
            .parse()
            .map_err(|_| GatewayError::new(StatusCode::BAD_REQUEST, "bad request: invalid path"))?,
    };
    let pinned = routed.node;

    let upgrade = if req.version() == Version::HTTP_11 { upgrade_of(req.headers()) } else { None };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let slot = upgrade.as_ref().and_then(|_| parts.extensions.get::<Arc<tunnel::PermitSlot>>().cloned());
    let mut headers = parts.headers;
    let host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut headers, upgrade.clone());
    add_forwarded(&mut headers, client, host);

    // A body-less idempotent request may be re-sent once if its node breaks before answering.
    // The copy costs an allocation: only make it when there is another node to re-send to.
    let resendable = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && body.is_end_stream()
        && upgrade.is_none()
        && pinned.is_none()
        && snap.nodes.len() > 1;
    let cfg = &snap.config;
    // A small body of known length is read first and kept: if the node resets the connection
    // without having read the request (it died), the request goes to another node, POST included.
    let keep_body = !body.is_end_stream()
        && upgrade.is_none()
        && pinned.is_none()
        && snap.nodes.len() > 1
        && body.size_hint().exact().is_some_and(|n| n <= RESEND_BODY_MAX);
    let body = Counted::new(body, gw.frontend.clone(), None, Direction::Inbound);
    let (first_body, kept): (UpBody, Option<Bytes>) = if keep_body {
        let bytes = match tokio::time::timeout(cfg.timeouts.client.0, body.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(_)) => {
                return Err(GatewayError::new(StatusCode::BAD_REQUEST, "bad request: request body cut short"))
            }
            Err(_) => return Err(GatewayError::new(StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
        };
        (Either::Right(Full::new(bytes.clone())), Some(bytes))
    } else {
        (Either::Left(body), None)
    };
    let template = (resendable || kept.is_some()).then(|| (parts.method.clone(), uri.clone(), headers.clone()));
    let mut pending = Some(build(parts.method, uri, headers, first_body));
    let attempts = cfg.balance.retries + 1;
    let mut tried: Vec<usize> = Vec::new();
    let mut resent = false;
    let mut last_err = GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, "no node available");
    let mut attempt = 0;
    while attempt < attempts {
        attempt += 1;
        let Some(idx) = choose(&snap, pinned, client, &tried)? else {
            break;
        };
        let node = snap.nodes[idx].clone();
        if attempt > 1 {
            node.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let guard = node.track();
        let (mut sender, reused) = match node.checkout(cfg.timeouts.connect.0, cfg.timeouts.pool_idle.0).await {
            Ok(s) => s,
            Err(e) => {
                note_connect_failure(&cfg.health, &node, e);
                last_err = connect_error(&node, e);
                if cfg.balance.redispatch && pinned.is_none() {
                    tried.push(idx);
                    if attempt < attempts {
                        node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
        };
        let Some(mut request) = pending.take() else { break };
        // Taken before the exchange: a node marked DOWN meanwhile must still close this tunnel.
        let kill = upgrade.as_ref().map(|_| node.tunnel_kill_token());
        let mut upload_done = None;
        match request.body_mut() {
            Either::Left(body) => {
                body.set_node(node.counters.clone());
                if !body.is_end_stream() {
                    upload_done = Some(body.track_end());
                }
            }
            Either::Right(full) => {
                let n = full.size_hint().exact().unwrap_or(0);
                node.counters.bytes_in.fetch_add(n, Ordering::Relaxed);
            }
        }
        let send = sender.try_send_request(request);
        let result = match tokio::time::timeout(cfg.timeouts.server.0, send).await {
            Err(_) if upload_done.as_ref().is_some_and(|d| !d.load(Ordering::Relaxed)) => {
                // The client is still uploading: its slowness, not the node's.
                return Err(GatewayError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not received within {:?}", cfg.timeouts.server.0),
                ));
            }
            Err(_) => {
                node.counters.response_errors.fetch_add(1, Ordering::Relaxed);
                crate::health::passive_failure(&cfg.health, &node);
                return Err(GatewayError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("node {} did not answer within {:?}", node.name, cfg.timeouts.server.0),
                ));
            }
            Ok(r) => r,
        };
        match result {
            Ok(mut resp) => {
                crate::health::passive_success(&node);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let (Some(client_up), Some(proto)) = (client_upgrade, &upgrade) {
                        let node_up = hyper::upgrade::on(&mut resp);
                        let kill = kill.unwrap_or_else(|| node.tunnel_kill_token());
                        let permit = slot.as_ref().and_then(|s| s.take());
                        tunnel::spawn(gw, guard, kill, permit, client_up, node_up, is_websocket(proto));
                        let (mut parts, _) = resp.into_parts();
                        let kept = parts.headers.get(header::UPGRADE).cloned().unwrap_or_else(|| proto.clone());
                        strip_hop_by_hop(&mut parts.headers, Some(kept));
                        node.counters.responses.record(101);
                        return Ok(Response::from_parts(parts, Either::Right(Full::new(Bytes::new()))));
                    }
                }
                node.counters.responses.record(resp.status().as_u16());
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers, None);
                let body = Counted::new(body, gw.frontend.clone(), Some(node.counters.clone()), Direction::Outbound);
                let body = Tracked::new(body, sender, guard, cfg.timeouts.server.0);
                return Ok(Response::from_parts(parts, Either::Left(body)));
            }
            Err(mut e) => {
                if let Some(back) = e.take_message() {
                    // Never written: safe to send again. A pooled connection that had closed
                    // meanwhile costs no attempt (the pool is finite, so this ends); a fresh one
                    // that fails at once counts like a failed connect.
                    pending = Some(back);
                    if reused {
                        attempt -= 1;
                    } else {
                        node.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                        crate::health::passive_failure(&cfg.health, &node);
                        last_err = GatewayError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("no node available: node {} closed the connection at once", node.name),
                        );
                        if cfg.balance.redispatch && pinned.is_none() {
                            tried.push(idx);
                        }
                    }
                    continue;
                }
                if e.error().is_user() {
                    // The client's own body failed (it went away mid-upload): not the node's fault,
                    // and the node must not be marked down for it.
                    return Err(GatewayError::new(StatusCode::BAD_REQUEST, "bad request: request body cut short"));
                }
                node.counters.response_errors.fetch_add(1, Ordering::Relaxed);
                crate::health::passive_failure(&cfg.health, &node);
                tracing::debug!(node = %node.name, error = %e.error(), "node broke the exchange");
                // Body-less GET/HEAD/OPTIONS: re-sent whatever happened. A kept body: only when
                // the node reset the connection, so it never read the whole request.
                let again = resendable || node_never_read(e.error());
                match (&template, resent) {
                    (Some((m, u, h)), false) if pinned.is_none() && again => {
                        resent = true;
                        tried.push(idx);
                        node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                        let body = Full::new(kept.clone().unwrap_or_default());
                        pending = Some(build(m.clone(), u.clone(), h.clone(), Either::Right(body)));
                        attempt -= 1;
                        continue;
                    }
                    _ => {
                        return Err(GatewayError::new(
                            StatusCode::BAD_GATEWAY,
                            format!("node {} closed the connection before answering", node.name),
                        ))
                    }
                }
            }
        }
    }
    Err(last_err)
}

/// Request bodies up to this size (known Content-Length) are kept so that their request can be
/// re-sent when the node reset the connection before reading it.
const RESEND_BODY_MAX: u64 = 64 * 1024;

/// Did the node reset the connection (or was it gone when the request was written)? A node that
/// read the whole request and then died closes with a FIN; a reset means request bytes were still
/// unread in its socket (or arrived after it closed), so it cannot have acted on the request.
fn node_never_read(e: &hyper::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe);
        }
        src = s.source();
    }
    false
}

/// The node for this attempt: the prefixed one (503 unless it may take traffic) or the balancer's pick.
fn choose(
    snap: &Snapshot,
    pinned: Option<usize>,
    client: ClientInfo,
    tried: &[usize],
) -> Result<Option<usize>, GatewayError> {
    if let Some(i) = pinned {
        let node = &snap.nodes[i];
        if !node.eligible() {
            let why = if node.membership() == crate::backend::Membership::Draining {
                "is leaving the cluster"
            } else if node.admin() != crate::backend::AdminState::Ready {
                "is in maintenance"
            } else {
                "is down"
            };
            return Err(GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, format!("node {} {why}", node.name)));
        }
        return Ok(Some(i));
    }
    let picked = balance::pick(snap.config.balance.algorithm, &snap.nodes, &snap.cursor, client.addr.ip(), tried);
    if picked.is_none() && tried.is_empty() {
        return Err(GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, "no node available"));
    }
    Ok(picked)
}

/// The error left when every attempt failed to connect: 504 for a timeout, else 503 (as haproxy
/// does: nothing reached a node, so the service is unavailable rather than a node misbehaving).
fn connect_error(node: &Backend, e: ConnectError) -> GatewayError {
    match e {
        ConnectError::Timeout => {
            GatewayError::new(StatusCode::GATEWAY_TIMEOUT, format!("node {}: connect timed out", node.name))
        }
        e => GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no node available: node {}: {e}", node.name)),
    }
}

fn note_connect_failure(health: &crate::config::HealthSection, node: &Backend, e: ConnectError) {
    node.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(node = %node.name, error = %e, "connect failed");
    crate::health::passive_failure(health, node);
}

fn build(method: Method, uri: Uri, headers: HeaderMap, body: UpBody) -> Request<UpBody> {
    let mut r = Request::new(body);
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers;
    r
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn add_forwarded(h: &mut HeaderMap, client: ClientInfo, host: Option<HeaderValue>) {
    // Several X-Forwarded-For lines form one list (RFC 9110 section 5.3): keep them all, in order.
    let mut xff = String::new();
    for prev in h.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
        let prev = prev.trim();
        if !prev.is_empty() {
            xff.push_str(prev);
            xff.push_str(", ");
        }
    }
    let _ = write!(xff, "{}", client.addr.ip());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    let proto = match client.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_of(&h).is_none());
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(upgrade_of(&h).is_some_and(|v| is_websocket(&v)));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let c = ClientInfo { addr: "127.0.0.9:5".parse().expect("addr"), scheme: Scheme::Https };
        add_forwarded(&mut h, c, Some(HeaderValue::from_static("gw:7512")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gw:7512");
    }

    #[test]
    fn error_envelope() {
        let r = json_error(StatusCode::SERVICE_UNAVAILABLE, "no node available");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
