//! Data plane: one client request: route, pick a node, forward with retries, stream the response
//! or open a tunnel. Each step is a function; failures are [`ProxyError`]s that say whose fault
//! they are and whether the request may be sent again.

pub mod error;
pub mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;

use self::error::ProxyError;
use self::headers::{add_forwarded, crossed, is_websocket, strip_hop_by_hop, upgrade_of, GATEWAY_MARK};
use crate::balance;
use crate::core::backend::{ActiveGuard, Backend, Sender, UpBody};
use crate::core::body::{Counted, Direction, Tracked};
use crate::core::snapshot::Snapshot;
use crate::core::{Core, Lifecycle};
use crate::route::{self, RouteError};
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
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// `addr`'s IP as an `X-Forwarded-For` value, made once per connection.
    pub forwarded_for: HeaderValue,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr, scheme: Scheme) -> ClientInfo {
        ClientInfo { addr, scheme, forwarded_for: headers::forwarded_for(addr) }
    }
}

/// What the proxy reads: the core (snapshot, counters) and the lifecycle (tunnels are tracked
/// connections, closed at the end of a shutdown).
pub struct Context {
    pub core: Arc<Core>,
    pub life: Lifecycle,
    /// This gateway's loop mark ([`headers::instance_id`]): added to every forwarded request; a
    /// request that already carries it went round a loop.
    pub instance: HeaderValue,
}

/// Entry point for every client request.
pub async fn handle(
    ctx: Arc<Context>,
    req: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<DownBody>, Infallible> {
    let frontend = &ctx.core.frontend;
    frontend.requests_total.fetch_add(1, Ordering::Relaxed);
    frontend.request_rate.tick();
    let resp = match forward(&ctx, req, &client).await {
        Ok(r) => r,
        Err(e) => {
            frontend.request_errors.fetch_add(1, Ordering::Relaxed);
            json_error(e.status, &e.message)
        }
    };
    frontend.responses.record(resp.status().as_u16());
    Ok(resp)
}

/// The gateway's own answer, in Kuzzle's envelope.
pub fn json_error(status: StatusCode, message: &str) -> Response<DownBody> {
    let mut resp = Response::new(Either::Right(Full::new(crate::envelope::body(status, message))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A client request made ready for the nodes: routed, headers rewritten, body kept if small.
struct Prepared {
    /// The node the prefix names, if any.
    pinned: Option<usize>,
    /// The upgrade asked for (`Upgrade` header value) and the client side of it.
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    /// The connection's `max_connections` permit, handed to a tunnel.
    slot: Option<Arc<tunnel::PermitSlot>>,
    /// What a re-send of a body-less idempotent request needs: method, target, headers.
    template: Option<(Method, Uri, HeaderMap)>,
    /// A body-less GET, HEAD or OPTIONS: re-sent whatever happened to the first try.
    idempotent: bool,
}

async fn forward(ctx: &Context, req: Request<Incoming>, client: &ClientInfo) -> Result<Response<DownBody>, ProxyError> {
    let snap = ctx.core.snapshot_full();
    let (mut p, first) = prepare(ctx, &snap, req, client)?;
    let cfg = &snap.config;
    let attempts = cfg.balance.retries + 1;
    let mut tried: Vec<usize> = Vec::new();
    let mut resent = false;
    let mut pending = Some(first);
    let mut last = ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, "no node available");
    let mut attempt = 0;
    while attempt < attempts {
        attempt += 1;
        let Some(idx) = choose(&snap, p.pinned, client, &tried)? else { break };
        let node = snap.nodes[idx].clone();
        if attempt > 1 {
            node.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let guard = node.track();
        // A pooled connection is taken without a future; only a new one is awaited (boxed: the
        // connect future is large, and inline it would be copied around with every request's).
        let pooled = node.take_idle(cfg.timeouts.pool_idle.0);
        let checkout = match pooled {
            Some(s) => Ok((s, true)),
            None => {
                Box::pin(node.checkout(cfg.timeouts.connect.0, cfg.timeouts.pool_idle.0, cfg.limits.response_head))
                    .await
            }
        };
        let (sender, reused) = match checkout {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(node = %node.name, error = %e, "connect failed");
                last = ProxyError::connect(&node, e);
                last.record(&node, &cfg.health);
                if cfg.balance.redispatch && p.pinned.is_none() {
                    tried.push(idx);
                    if attempt < attempts {
                        node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
        };
        let Some(request) = pending.take() else { break };
        // Boxed: this future is over a kilobyte, and inline it made every move of the request's
        // future (hyper moves it into a box of its own) copy it along.
        let failure = match Box::pin(exchange(ctx, &snap, &node, guard, sender, request, &mut p)).await {
            Ok(resp) => return Ok(resp),
            Err(f) => f,
        };
        let err = match failure {
            Failure::Final(e) => return Err(e),
            // Never written: safe to send again. A pooled connection that had closed meanwhile
            // costs no attempt (the pool is finite, so this ends); a fresh one that fails at once
            // counts like a failed connect.
            Failure::Unsent(back) => {
                pending = Some(*back);
                if reused {
                    attempt -= 1;
                    continue;
                }
                ProxyError::closed_at_once(&node)
            }
            Failure::Broke(e) => e,
        };
        err.record(&node, &cfg.health);
        if err.progress == error::Progress::NothingSent {
            if cfg.balance.redispatch && p.pinned.is_none() {
                tried.push(idx);
            }
            last = err;
            continue;
        }
        // Sent but not answered: only a copy of a request that is safe to send again goes, once.
        match &p.template {
            Some((m, u, h)) if !resent && p.pinned.is_none() && err.resend_safe(p.idempotent) => {
                resent = true;
                tried.push(idx);
                node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                pending = Some(build(m.clone(), u.clone(), h.clone(), Either::Right(Full::new(Bytes::new()))));
                attempt -= 1;
            }
            _ => return Err(err),
        }
    }
    Err(last)
}

/// Route the request and rewrite its headers; keep what a re-send of a body-less idempotent
/// request needs (a request with a body is never re-sent once written: it streams).
fn prepare(
    ctx: &Context,
    snap: &Snapshot,
    mut req: Request<Incoming>,
    client: &ClientInfo,
) -> Result<(Prepared, Request<UpBody>), ProxyError> {
    strict_framing(&req, &snap.config.limits)?;
    if crossed(req.headers(), &ctx.instance) {
        // Sent back here by a node that is (or leads to) this gateway: forwarding would go round.
        return Err(ProxyError::gateway(
            StatusCode::LOOP_DETECTED,
            "loop detected: the request already crossed this gateway",
        ));
    }
    let routed = route::route(req.uri().path(), req.uri().query(), |seg| snap.index_of(seg)).map_err(|e| {
        let msg = match e {
            RouteError::AboveRoot => "bad request: the path climbs above the root",
            RouteError::EncodedSlash => "bad request: encoded slash in the first path segment",
            RouteError::BadEncoding => "bad request: invalid percent-encoding in the path",
        };
        ProxyError::client(StatusCode::BAD_REQUEST, msg)
    })?;
    let uri: Uri = match req.uri().path_and_query() {
        // Nothing to rewrite: reuse the parsed request target (no copy).
        Some(pq) if routed.unchanged() => Uri::from(pq.clone()),
        _ => routed
            .path_and_query()
            .parse()
            .map_err(|_| ProxyError::client(StatusCode::BAD_REQUEST, "bad request: invalid path"))?,
    };
    let pinned = routed.node;

    let upgrade = if req.version() == Version::HTTP_11 { upgrade_of(req.headers()) } else { None };
    let upgrade = upgrade.map(|u| (u, hyper::upgrade::on(&mut req)));
    let (parts, body) = req.into_parts();
    let slot = upgrade.as_ref().and_then(|_| parts.extensions.get::<Arc<tunnel::PermitSlot>>().cloned());
    let mut headers = parts.headers;
    let host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut headers, upgrade.as_ref().map(|(u, _)| u.clone()));
    add_forwarded(&mut headers, client, host);
    headers.append(GATEWAY_MARK, ctx.instance.clone());

    // A copy costs an allocation: only make one when there is another node to re-send to.
    let others = upgrade.is_none() && pinned.is_none() && snap.nodes.len() > 1;
    let idempotent =
        others && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) && body.is_end_stream();
    let first_body: UpBody = Either::Left(Counted::new(body, ctx.core.frontend.clone(), None, Direction::Inbound));
    let template = idempotent.then(|| (parts.method.clone(), uri.clone(), headers.clone()));
    let first = build(parts.method, uri, headers, first_body);
    Ok((Prepared { pinned, upgrade, slot, template, idempotent }, first))
}

/// RFC 9112 strictness on what hyper lets through: HTTP/1.1 needs exactly one Host (two Hosts let
/// the gateway and a node disagree on the target). (A request with both Content-Length and
/// Transfer-Encoding never gets here ambiguous: hyper reads it chunked and drops the length.)
/// Then `[limits]`: the target (414), the header count and the head's size (431). hyper's own
/// buffer caps a head at twice the limit (its bare 431); under that, the answer is Kuzzle's.
fn strict_framing<B>(req: &Request<B>, limits: &crate::config::LimitsSection) -> Result<(), ProxyError> {
    let h = req.headers();
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.uri {
        return Err(ProxyError::client(
            StatusCode::URI_TOO_LONG,
            format!("request target of {target} bytes is over the {}-byte limit", limits.uri),
        ));
    }
    if h.len() > limits.headers {
        return Err(ProxyError::client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("{} header lines, over the limit of {}", h.len(), limits.headers),
        ));
    }
    // Size as on the wire: "name: value\r\n" per line, plus the request line.
    let head = target + h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + 16;
    if head > limits.request_head {
        return Err(ProxyError::client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head of about {head} bytes is over the {}-byte limit", limits.request_head),
        ));
    }
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(ProxyError::client(StatusCode::BAD_REQUEST, "bad request: HTTP/1.1 needs exactly one Host header"));
    }
    Ok(())
}

/// How one exchange with a node failed.
enum Failure {
    /// The request was never written: here it is back, to send again.
    Unsent(Box<Request<UpBody>>),
    /// The node broke the exchange after the request was written.
    Broke(ProxyError),
    /// Nothing more to try (the client's fault, or a timeout).
    Final(ProxyError),
}

/// Send one request on `sender` and turn the node's answer into the client's response (a
/// streamed body, or a tunnel after `101 Switching Protocols`).
async fn exchange(
    ctx: &Context,
    snap: &Snapshot,
    node: &Arc<Backend>,
    guard: ActiveGuard,
    mut sender: Sender,
    mut request: Request<UpBody>,
    p: &mut Prepared,
) -> Result<Response<DownBody>, Failure> {
    let cfg = &snap.config;
    // Taken before the exchange: a node marked DOWN meanwhile must still close this tunnel.
    let kill = p.upgrade.as_ref().map(|_| node.tunnel_kill_token());
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
    let wait = cfg.timeouts.server.0;
    let mut resp = match tokio::time::timeout(wait, sender.try_send_request(request)).await {
        Err(_) if upload_done.as_ref().is_some_and(|d| !d.load(Ordering::Relaxed)) => {
            // The client is still uploading: its slowness, not the node's.
            let msg = format!("request body not received within {wait:?}");
            return Err(Failure::Final(ProxyError::client(StatusCode::REQUEST_TIMEOUT, msg)));
        }
        Err(_) => {
            let e = ProxyError::timed_out(node, wait);
            e.record(node, &cfg.health);
            return Err(Failure::Final(e));
        }
        Ok(Err(e)) => return Err(classify(node, e)),
        Ok(Ok(resp)) => resp,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && p.upgrade.is_none() {
        // The connection now speaks something the client never asked for: nothing to relay.
        let e = ProxyError::unrequested_upgrade(node);
        e.record(node, &cfg.health);
        return Err(Failure::Final(e));
    }
    node.passive_success();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some((proto, client_up)) = p.upgrade.take() {
            let node_up = hyper::upgrade::on(&mut resp);
            let kill = kill.unwrap_or_else(|| node.tunnel_kill_token());
            let permit = p.slot.as_ref().and_then(|s| s.take());
            let idle = cfg.timeouts.tunnel.0;
            let ws = is_websocket(&proto);
            tunnel::spawn(&ctx.life, &ctx.core.frontend, idle, guard, kill, permit, client_up, node_up, ws);
            let (mut parts, _) = resp.into_parts();
            let kept = parts.headers.get(header::UPGRADE).cloned().unwrap_or(proto);
            strip_hop_by_hop(&mut parts.headers, Some(kept));
            node.counters.responses.record(101);
            return Ok(Response::from_parts(parts, Either::Right(Full::new(Bytes::new()))));
        }
    }
    node.counters.responses.record(resp.status().as_u16());
    let (mut parts, body) = resp.into_parts();
    // Transfer-Encoding wins (RFC 9112 6.3): hyper read the body chunked, so a Content-Length
    // beside it would make the client cut the body short.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, None);
    let mut body = Counted::new(body, ctx.core.frontend.clone(), Some(node.counters.clone()), Direction::Outbound);
    // The first frame is read before the head goes out: a node that sends a head and then closes
    // (or stalls) gets the client a 502 (504), not a response cut before its first byte. In the
    // common case the frame came with the head and this does not wait.
    let first = if body.is_end_stream() {
        None
    } else {
        // Usually the frame came in the same read as the head: take it without arming a timer.
        let ready = body.frame().now_or_never();
        let frame = match ready {
            Some(f) => Ok(f),
            None => tokio::time::timeout(wait, body.frame()).await,
        };
        match frame {
            Ok(Some(Ok(f))) => Some(f),
            Ok(None) => None,
            Ok(Some(Err(_))) => {
                let e = ProxyError::broke(node);
                e.record(node, &cfg.health);
                return Err(Failure::Final(e));
            }
            Err(_) => {
                let e = ProxyError::timed_out(node, wait);
                e.record(node, &cfg.health);
                return Err(Failure::Final(e));
            }
        }
    };
    let body = Tracked::new(body, first, sender, guard, wait);
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// Whose fault a failed send is, and how far the request got.
fn classify(node: &Backend, mut e: TrySendError<Request<UpBody>>) -> Failure {
    if let Some(back) = e.take_message() {
        return Failure::Unsent(Box::new(back));
    }
    if e.error().is_user() {
        // The client's own body failed (it went away mid-upload): not the node's fault, and the
        // node must not be marked down for it.
        return Failure::Final(ProxyError::client(StatusCode::BAD_REQUEST, "bad request: request body cut short"));
    }
    tracing::debug!(node = %node.name, error = %e.error(), "node broke the exchange");
    Failure::Broke(ProxyError::broke(node))
}

/// The node for this attempt: the prefixed one (503 unless it may take traffic) or the balancer's pick.
fn choose(
    snap: &Snapshot,
    pinned: Option<usize>,
    client: &ClientInfo,
    tried: &[usize],
) -> Result<Option<usize>, ProxyError> {
    if let Some(i) = pinned {
        let node = &snap.nodes[i];
        if !node.eligible() {
            let why = if node.membership() == crate::core::backend::Membership::Draining {
                "is leaving the cluster"
            } else if node.admin() != crate::core::backend::AdminState::Ready {
                "is in maintenance"
            } else {
                "is down"
            };
            return Err(ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, format!("node {} {why}", node.name)));
        }
        return Ok(Some(i));
    }
    let picked = balance::pick(snap.config.balance.algorithm, &snap.nodes, &snap.cursor, client.addr.ip(), tried);
    if picked.is_none() && tried.is_empty() {
        return Err(ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, "no node available"));
    }
    Ok(picked)
}

fn build(method: Method, uri: Uri, headers: HeaderMap, body: UpBody) -> Request<UpBody> {
    let mut r = Request::new(body);
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope() {
        let r = json_error(StatusCode::SERVICE_UNAVAILABLE, "no node available");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
