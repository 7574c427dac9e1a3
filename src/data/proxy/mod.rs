//! Data plane: one client request: route, pick a node, forward with retries, stream the response
//! or open a tunnel. Each step is a function; failures are [`ProxyError`]s that say whose fault
//! they are and whether the request may be sent again.

pub mod error;
pub mod headers;
pub(crate) mod resend;
mod strict;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;

use self::error::ProxyError;
use self::headers::{
    add_forwarded, closes_connection, crossed, is_websocket, strip_hop_by_hop, upgrade_of, GATEWAY_MARK,
};
use self::resend::{read_whole, refusal, refusal_length, Template};
use self::strict::{strict_framing, strict_target};
use crate::core::backend::{ActiveGuard, Backend, Sender, UpBody};
use crate::core::body::{BodyError, Counted, Direction, Tracked};
use crate::core::snapshot::Snapshot;
use crate::core::{Core, Lifecycle};
use crate::data::balance;
use crate::data::edge::access_log::{self, BytesIn, HttpRecord, Target};
use crate::data::edge::limits::{Place, RateVerdict};
use crate::data::edge::Edge;
use crate::data::route::{self, RouteError};
use crate::data::tunnel;

pin_project_lite::pin_project! {
    /// Body of a response to a client: a node's streamed body, or the gateway's own JSON; with
    /// the request's access log line, written when the body ends or is dropped.
    pub struct DownBody {
        // A node's streamed body (`Tracked`), or the gateway's own answer.
        #[pin]
        inner: Either<Tracked, Full<Bytes>>,
        // The line to write (None: no access log, or already written).
        log: Option<Box<HttpRecord>>,
        // Body bytes sent, for the line.
        sent: u64,
        // The body reached its end (else a drop means the client went away).
        ended: bool,
        // Why the body failed, if it did.
        failed: Option<&'static str>,
    }

    impl PinnedDrop for DownBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut r) = this.log.take() {
                if let Some(t) = *this.failed {
                    r.termination = t;
                } else if !*this.ended && !this.inner.is_end_stream() && r.termination == "--" {
                    // The client went away (or stopped reading) before the end.
                    r.termination = "CD";
                }
                r.log.http(&r, *this.sent);
            }
        }
    }
}

impl DownBody {
    /// A node's streamed body.
    pub fn node(body: Tracked) -> DownBody {
        DownBody { inner: Either::Left(body), log: None, sent: 0, ended: false, failed: None }
    }

    /// A body held whole (the gateway's own answers, a refusal read to be judged).
    pub fn full(bytes: Bytes) -> DownBody {
        DownBody { inner: Either::Right(Full::new(bytes)), log: None, sent: 0, ended: false, failed: None }
    }
}

impl hyper::body::Body for DownBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let r = match this.inner.poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        if this.log.is_some() {
            match &r {
                Some(Ok(f)) => *this.sent += f.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(e)) => {
                    *this.failed = Some(match e.downcast_ref::<BodyError>() {
                        Some(BodyError::Stalled(_)) => "sD",
                        _ => "SD",
                    })
                }
                None => *this.ended = true,
            }
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Scheme clients used, for `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where a request came from.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client: the address of the PROXY protocol header when there is one, else the socket's
    /// peer. What `X-Forwarded-For`, `source` balancing, the limits and the access log see.
    pub addr: SocketAddr,
    /// How the client came (plain or TLS): the `X-Forwarded-Proto` sent to nodes.
    pub scheme: Scheme,
    /// `addr`'s IP as an `X-Forwarded-For` value, made once per connection.
    pub forwarded_for: HeaderValue,
    /// The client's place in the limits table when `[limits]` apply to it (None: no per-client
    /// limit, or an exempt network), found once per connection.
    pub place: Option<Place>,
    /// `addr` as the access log writes it (`ip:port`), made once per connection when the log is
    /// on (formatting it per request cost a tenth of a line).
    pub label: Option<Arc<str>>,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr, scheme: Scheme) -> ClientInfo {
        ClientInfo { addr, scheme, forwarded_for: headers::forwarded_for(addr), place: None, label: None }
    }

    /// The same, with its access log label made now.
    pub fn labelled(mut self) -> ClientInfo {
        self.label = Some(access_log::label(self.addr));
        self
    }
}

/// What the proxy reads: the core (snapshot, counters) and the lifecycle (tunnels are tracked
/// connections, closed at the end of a shutdown).
pub struct Context {
    /// Snapshot, counters and the change sink.
    pub core: Arc<Core>,
    /// Tunnels are tracked connections of it, closed at the end of a shutdown.
    pub life: Lifecycle,
    /// This gateway's loop mark ([`headers::instance_id`]): added to every forwarded request; a
    /// request that already carries it went round a loop.
    pub instance: HeaderValue,
    /// Limits table and access log.
    pub edge: Edge,
}

impl Context {
    pub fn new(core: Arc<Core>, life: Lifecycle) -> Context {
        let edge = Edge::new(life.clone(), core.frontend.clone());
        Context { core, life, instance: headers::instance_id(), edge }
    }
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
    let snap = ctx.core.snapshot_full();
    let mut log = begin_log(&ctx, &snap, &client, || (req.method().clone(), Target::Uri(req.uri().clone())));
    // Refused here, before any await: the refusal is no part of the request's future (which
    // every request allocates and moves whole).
    if let Some(refused) = admit(&ctx, &snap, &client) {
        if let Some(r) = log.as_mut() {
            r.termination = "PR";
        }
        frontend.responses.record(refused.status().as_u16());
        return Ok(with_log(refused, log));
    }
    let resp = match forward(&ctx, &snap, req, &client, &mut log).await {
        Ok(r) => r,
        Err(e) => {
            frontend.request_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = log.as_mut() {
                r.termination = e.termination();
            }
            json_error(e.status, &e.message)
        }
    };
    frontend.responses.record(resp.status().as_u16());
    Ok(with_log(resp, log))
}

/// The access log line of a request, when the access log is on (`request`: its method and
/// target, made only then).
pub fn begin_log(
    ctx: &Context,
    snap: &Snapshot,
    client: &ClientInfo,
    request: impl FnOnce() -> (Method, Target),
) -> Option<Box<HttpRecord>> {
    snap.config.access_log.as_ref()?;
    let (method, target) = request();
    let config = snap.config.clone();
    Some(Box::new(HttpRecord::new(config, ctx.edge.log.clone(), (client.addr, client.label.clone()), method, target)))
}

/// The response with its access log line, written when its body ends.
pub fn with_log(mut resp: Response<DownBody>, log: Option<Box<HttpRecord>>) -> Response<DownBody> {
    if let Some(mut r) = log {
        r.status = resp.status().as_u16();
        resp.body_mut().log = Some(r);
    }
    resp
}

/// `[limits] client_rate`: None when the request may go on, else the gateway's 429.
fn admit(ctx: &Context, snap: &Snapshot, client: &ClientInfo) -> Option<Response<DownBody>> {
    let l = &snap.config.limits;
    if l.client_rate == 0 {
        return None;
    }
    let table = ctx.edge.table(l);
    // Found once per connection; a connection opened before the limits were on finds it here.
    let place = match client.place {
        Some(p) => p,
        None if crate::data::edge::limited(l, client.addr.ip()) => table.place(client.addr.ip()),
        None => return None,
    };
    match table.request(place, l.client_rate, l.burst()) {
        RateVerdict::Allowed => None,
        RateVerdict::Untracked => {
            ctx.core.frontend.limited(crate::core::counters::LimitReason::TableFull);
            None
        }
        RateVerdict::Over(after) => {
            ctx.core.frontend.limited(crate::core::counters::LimitReason::Rate);
            let msg = format!("too many requests: over {} a second from this client", l.client_rate);
            Some(too_many(&msg, after))
        }
    }
}

/// The gateway's 429, with `Retry-After` (seconds).
pub fn too_many(message: &str, retry_after: u64) -> Response<DownBody> {
    let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// The gateway's own answer, in Kuzzle's envelope.
pub fn json_error(status: StatusCode, message: &str) -> Response<DownBody> {
    let mut resp = Response::new(DownBody::full(crate::data::envelope::body(status, message)));
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
    /// What a re-send needs (kept when another node could take it): a body-less request, or one
    /// whose small body is read whole first ([`Prepared::unread`]).
    template: Option<Template>,
    /// A body-less GET, HEAD or OPTIONS: re-sent whatever happened to the first try.
    idempotent: bool,
    /// A small body (Content-Length up to `[balance] resend_body`) still to read whole before the
    /// first try, so that it can be sent again.
    unread: Option<Incoming>,
    /// A body-less GET, HEAD or OPTIONS (prefixed or not, one node or several): sent again on a
    /// fresh connection if the pooled one it went on turns out closed (the keep-alive race).
    race: bool,
    /// Counts the streamed request body's bytes for the access log.
    counted_in: Option<Arc<AtomicU64>>,
    /// The access log line, while the attempts run (a WebSocket takes it for its own line).
    log: Option<Box<HttpRecord>>,
}

/// A try of a request on `node` (both paths' attempts): a retry counted on the node after the
/// first try, and the access log told the node and the retries so far.
pub(crate) fn count_try(node: &Arc<Backend>, tries: &mut u32, log: Option<&mut HttpRecord>) {
    if *tries > 0 {
        node.counters.retries.fetch_add(1, Ordering::Relaxed);
    }
    *tries += 1;
    if let Some(r) = log {
        r.retries = *tries - 1;
        r.node = Some(node.clone());
    }
}

async fn forward(
    ctx: &Context,
    snap: &Arc<Snapshot>,
    req: Request<Incoming>,
    client: &ClientInfo,
    log: &mut Option<Box<HttpRecord>>,
) -> Result<Response<DownBody>, ProxyError> {
    let (mut p, mut first) = prepare(ctx, snap, req, client, log.is_some())?;
    let cfg = &snap.config;
    if let Some(body) = p.unread.take() {
        let bytes = read_whole(body, cfg.balance.resend_body, cfg.timeouts.client.0).await?;
        ctx.core.frontend.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Some(r) = log.as_mut() {
            r.bytes_in = BytesIn::Known(bytes.len() as u64);
        }
        *first.body_mut() = Either::Right(Full::new(bytes.clone()));
        if let Some(t) = p.template.as_mut() {
            t.body = bytes;
        }
    }
    if let (Some(r), Some(c)) = (log.as_mut(), p.counted_in.take()) {
        r.bytes_in = BytesIn::Counted(c);
    }
    p.log = log.take();
    let r = attempts(ctx, snap, &mut p, first, client).await;
    *log = p.log.take();
    r
}

/// The attempts of one request: pick a node, get a connection, exchange; again on another node
/// (or on a fresh connection) when that is safe.
async fn attempts(
    ctx: &Context,
    snap: &Arc<Snapshot>,
    p: &mut Prepared,
    first: Request<UpBody>,
    client: &ClientInfo,
) -> Result<Response<DownBody>, ProxyError> {
    let cfg = &snap.config;
    let attempts = cfg.balance.retries + 1;
    let mut tried: Vec<usize> = Vec::new();
    let mut resent = false;
    // A pooled connection the node had closed meanwhile (the keep-alive race) is worth one more
    // try on a fresh connection, to the same node if need be.
    let mut raced = false;
    let mut fresh_only = false;
    // The last node's own "not executed" answer, passed on when no other node can take the request.
    let mut refused: Option<Box<Response<DownBody>>> = None;
    let mut pending = Some(first);
    let mut last = ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, "no node available");
    let mut attempt = 0;
    let mut tries = 0u32;
    while attempt < attempts {
        attempt += 1;
        let Some(idx) = choose(ctx, snap, p.pinned, client, &tried)? else { break };
        let node = snap.nodes[idx].clone();
        count_try(&node, &mut tries, p.log.as_deref_mut());
        let guard = node.track();
        // A pooled connection is taken without a future; only a new one is awaited (boxed: the
        // connect future is large, and inline it would be copied around with every request's).
        let pooled = if fresh_only { None } else { node.take_idle(cfg.timeouts.pool_idle.0) };
        // Taken from the pool at once: no time to log (as on the lane); else the wait is timed.
        let connecting = (p.log.is_some() && pooled.is_none()).then(Instant::now);
        let checkout = match pooled {
            Some(s) => Ok((s, true)),
            None if fresh_only => {
                Box::pin(node.connect(cfg.timeouts.connect.0, cfg.limits.response_head)).await.map(|s| (s, false))
            }
            None => {
                Box::pin(node.checkout(cfg.timeouts.connect.0, cfg.timeouts.pool_idle.0, cfg.limits.response_head))
                    .await
            }
        };
        fresh_only = false;
        let (sender, reused) = match checkout {
            Ok(s) => s,
            Err(e) => {
                let at = (idx, p.pinned.is_some(), attempt < attempts);
                last = ProxyError::connect_failed(&node, e, cfg, at, &mut tried);
                continue;
            }
        };
        if let Some(r) = p.log.as_mut() {
            r.connect = Some(connecting.map_or(Duration::ZERO, |t| t.elapsed()));
        }
        let Some(request) = pending.take() else { break };
        // What a re-send after a keep-alive race needs, kept only when that race is possible.
        if reused && p.race && !raced && p.template.is_none() {
            p.template = Some(Template::of(&request));
        }
        // Boxed: this future is over a kilobyte, and inline it made every move of the request's
        // future (hyper moves it into a box of its own) copy it along.
        let failure = match Box::pin(exchange(ctx, snap, &node, guard, sender, request, p)).await {
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
            // A pooled connection that broke before any byte of an answer to a body-less GET,
            // HEAD or OPTIONS: most likely the node closed it as it went idle, just as the request
            // left (the keep-alive race). Once, on a fresh connection, the same node allowed (a
            // request sent by prefix has no other); nothing is held against the node.
            Failure::Broke(_) if reused && p.race && !raced => {
                raced = true;
                fresh_only = true;
                let Some(t) = &p.template else { return Err(ProxyError::broke(&node)) };
                pending = Some(t.request());
                attempt -= 1;
                continue;
            }
            Failure::Broke(e) => e,
            // The node did not answer within `[timeouts] server`: with `retry_on_timeout`, an
            // idempotent request goes once to another node.
            Failure::TimedOut(e) => match &p.template {
                Some(t) if cfg.balance.retry_on_timeout && !resent && p.pinned.is_none() && p.idempotent => {
                    resent = true;
                    tried.push(idx);
                    node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                    pending = Some(t.request());
                    last = e;
                    continue;
                }
                _ => return Err(e),
            },
            // Not executed (Kuzzle shutting down or overloaded): any request may go to another
            // node, each node at most once, whatever `retries` and `redispatch` say.
            Failure::Refused(resp) => match &p.template {
                Some(t) if p.pinned.is_none() => {
                    tried.push(idx);
                    node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                    pending = Some(t.request());
                    refused = Some(resp);
                    attempt -= 1;
                    continue;
                }
                _ => return Ok(*resp),
            },
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
            Some(t) if !resent && p.pinned.is_none() && err.resend_safe(p.idempotent) => {
                resent = true;
                tried.push(idx);
                node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                pending = Some(t.request());
                attempt -= 1;
            }
            _ => return Err(err),
        }
    }
    match refused {
        Some(resp) => Ok(*resp),
        None => Err(last),
    }
}

/// Route the request and rewrite its headers; keep what a re-send of a body-less idempotent
/// request needs (a request with a body is never re-sent once written: it streams).
fn prepare(
    ctx: &Context,
    snap: &Snapshot,
    mut req: Request<Incoming>,
    client: &ClientInfo,
    logging: bool,
) -> Result<(Prepared, Request<UpBody>), ProxyError> {
    strict_framing(&req, &snap.config.limits)?;
    strict_target(&req)?;
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

    // Only WebSocket is forwarded as an upgrade: any other token (`h2c` above all: a tunnel that
    // would take the client past the gateway's rules) is dropped with the rest of the hop-by-hop
    // headers, and the request goes on as a plain one.
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
    let others = pinned.is_none() && snap.nodes.len() > 1;
    let bodiless = body.is_end_stream();
    let idempotent =
        others && upgrade.is_none() && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) && bodiless;
    let limit = snap.config.balance.resend_body as u64;
    let small = others && upgrade.is_none() && !bodiless && body.size_hint().exact().is_some_and(|n| n <= limit);
    let race = upgrade.is_none() && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) && bodiless;
    let mut counted_in = None;
    let (first_body, unread): (UpBody, _) = if small {
        (Either::Right(Full::new(Bytes::new())), Some(body))
    } else {
        let mut c = Counted::new(body, ctx.core.frontend.clone(), None, Direction::Inbound);
        if logging && !bodiless {
            counted_in = Some(c.count_mine());
        }
        (Either::Left(c), None)
    };
    let template = (others && (bodiless || small)).then(|| Template {
        method: parts.method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
        body: Bytes::new(),
    });
    let first = build(parts.method, uri, headers, first_body);
    Ok((Prepared { pinned, upgrade, slot, template, idempotent, unread, race, counted_in, log: None }, first))
}

/// How one exchange with a node failed.
enum Failure {
    /// The request was never written: here it is back, to send again.
    Unsent(Box<Request<UpBody>>),
    /// The node broke the exchange after the request was written.
    Broke(ProxyError),
    /// Nothing more to try (the client's fault, or the node's that no other node can mend).
    Final(ProxyError),
    /// The node did not answer within `[timeouts] server` (its answer may still come: the
    /// request may have run).
    TimedOut(ProxyError),
    /// The node answered that it did not execute the request (Kuzzle's 503 while shutting down
    /// or overloaded): its answer, to pass on if no other node can take the request.
    Refused(Box<Response<DownBody>>),
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
    let sent_at = Instant::now();
    let mut resp = match tokio::time::timeout(wait, sender.try_send_request(request)).await {
        Err(_) if upload_done.as_ref().is_some_and(|d| !d.load(Ordering::Relaxed)) => {
            // The client is still uploading: its slowness, not the node's.
            return Err(Failure::Final(ProxyError::body_late(wait)));
        }
        Err(_) => {
            let e = ProxyError::timed_out(node, wait);
            e.record(node, &cfg.health);
            return Err(Failure::TimedOut(e));
        }
        Ok(Err(e)) => return Err(classify(node, e)),
        Ok(Ok(resp)) => resp,
    };
    if let Some(r) = p.log.as_mut() {
        r.wait = Some(sent_at.elapsed());
        r.request_id = resp.headers().get(KUZZLE_REQUEST_ID).cloned();
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && p.upgrade.is_none() {
        // The connection now speaks something the client never asked for: nothing to relay.
        let e = ProxyError::unrequested_upgrade(node);
        e.record(node, &cfg.health);
        return Err(Failure::Final(e));
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && !resp.headers().get_all(header::UPGRADE).iter().any(is_websocket)
    {
        let e = ProxyError::not_websocket(node);
        e.record(node, &cfg.health);
        return Err(Failure::Final(e));
    }
    node.passive_success();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some((proto, client_up)) = p.upgrade.take() {
            let node_up = hyper::upgrade::on(&mut resp);
            let kill = kill.unwrap_or_else(|| node.tunnel_kill_token());
            let permit = p.slot.as_ref().and_then(|s| s.take());
            let opts = tunnel::RunOpts::of(cfg, is_websocket(&proto));
            // The session gets its own line when it ends, in place of the request's.
            let log = p.log.take().map(|r| Box::new(r.into_websocket(node.clone())));
            let t = tunnel::Tunnel { opts, guard, kill, log };
            tunnel::spawn(&ctx.life, &ctx.core.frontend, t, permit, client_up, node_up);
            let (mut parts, _) = resp.into_parts();
            let kept = parts.headers.get(header::UPGRADE).cloned().unwrap_or(proto);
            strip_hop_by_hop(&mut parts.headers, Some(kept));
            name_node(snap, node, &mut parts.headers);
            node.counters.responses.record(101);
            return Ok(Response::from_parts(parts, DownBody::full(Bytes::new())));
        }
    }
    node.counters.responses.record(resp.status().as_u16());
    let (mut parts, body) = resp.into_parts();
    // A connection the node closes after this answer goes back to no pool: the next request
    // would only find it closing (Kuzzle 2 closes after every answer).
    // Nor does one asked to switch protocols that answered otherwise: it is not trusted with
    // another request (as on the lane).
    let sender = (!closes_connection(&parts.headers, parts.version) && p.upgrade.is_none()).then_some(sender);
    // Transfer-Encoding wins (RFC 9112 6.3): hyper read the body chunked, so a Content-Length
    // beside it would make the client cut the body short.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, None);
    name_node(snap, node, &mut parts.headers);
    if parts.status == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(len) = refusal_length(&parts.headers) {
            // Rare (a node shutting down or overloaded): read the small body to see whether the
            // request ran; never on the path of any other answer.
            return refusal(ctx, node, parts, body, len, sender, wait).await;
        }
    }
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
                return Err(Failure::TimedOut(e));
            }
        }
    };
    let body = Tracked::new(body, first, sender, guard, wait);
    Ok(Response::from_parts(parts, DownBody::node(body)))
}

/// Kuzzle's id of the request, in its answers (the access log's `request_id`).
const KUZZLE_REQUEST_ID: HeaderName = HeaderName::from_static("x-kuzzle-request-id");

/// Name the node that answered in `[gateway] node_header` (over any value the node sent: real
/// Kuzzle 2 sends `undefined`).
#[inline]
fn name_node(snap: &Snapshot, node: &Backend, h: &mut HeaderMap) {
    if let (Some(name), Some(value)) = (&snap.node_header, &node.name_value) {
        h.insert(name.clone(), value.clone());
    }
}

/// Whose fault a failed send is, and how far the request got.
fn classify(node: &Backend, mut e: TrySendError<Request<UpBody>>) -> Failure {
    if let Some(back) = e.take_message() {
        return Failure::Unsent(Box::new(back));
    }
    if e.error().is_user() {
        // The client's own body failed (it went away mid-upload): not the node's fault, and the
        // node must not be marked down for it.
        return Failure::Final(ProxyError::body_cut_short());
    }
    tracing::debug!(node = %node.name, error = %e.error(), "node broke the exchange");
    Failure::Broke(ProxyError::broke(node))
}

/// The node for this attempt: the prefixed one (503 unless it may take traffic) or the balancer's pick.
pub(crate) fn choose(
    ctx: &Context,
    snap: &Snapshot,
    pinned: Option<usize>,
    client: &ClientInfo,
    tried: &[usize],
) -> Result<Option<usize>, ProxyError> {
    if let Some(i) = pinned {
        let node = &snap.nodes[i];
        if !node.eligible() {
            let why = node.unavailable_reason();
            return Err(ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, format!("node {} {why}", node.name)));
        }
        return Ok(Some(i));
    }
    let ramp = balance::Ramp::now(snap.config.health.slowstart.0, ctx.core.started_at);
    let picked = balance::pick(snap.config.balance.algorithm, &snap.nodes, &snap.cursor, client.addr.ip(), tried, ramp);
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
mod tests;
