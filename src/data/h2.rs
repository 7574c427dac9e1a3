//! Data plane: one HTTP/2 client connection (ALPN `h2` on the TLS listener). Each stream becomes
//! the HTTP/1.1 request the nodes get (Host from `:authority`) and goes through the same proxy
//! path as HTTP/1.1: routing, prefixes, retries, headers, counters. No WebSocket over HTTP/2
//! (RFC 8441 is not offered, so browsers open an HTTP/1.1 connection for them).
//!
//! `[gateway] max_connections` bounds what clients make the gateway hold, node connections
//! included. An HTTP/1.1 connection carries one request at a time; an HTTP/2 one up to
//! [`MAX_CONCURRENT_STREAMS`]. So one open stream at a time rides on the connection's own slot and
//! every other open stream takes one more slot (waiting for either, as the accept loop waits),
//! held until its response body ends. A connection can always run one stream: no deadlock.
//!
//! A client that resets a stream frees that stream at once, but not the request its node is
//! running: each request runs on a task of its own that holds one of the connection's
//! [`MAX_CONCURRENT_STREAMS`] places at the nodes until the node answered, so resetting streams
//! one at a time (a paced "rapid reset") never gets more requests to the nodes at once than
//! the stream limit allows. Past [`RESET_BUDGET`] streams reset before their answer (and more
//! than half of its streams), the connection is cut, as nginx, Envoy and haproxy do.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::data::proxy::{self, ClientInfo, Context, DownBody};

/// Streams a client may have open at once (nginx's default is 128).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Streams a client may reset before their answer came: past this many (and past half of the
/// connection's streams), the connection is cut.
pub const RESET_BUDGET: u32 = 100;

/// hyper runs each stream as a task: on the connections tracker, so shutdown waits for them.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// One open stream of a connection, from its request to the end of its response body: counted
/// (idle detection) and holding a slot: the connection's own or one more under `max_connections`.
struct Open {
    /// The connection's open streams: the idle timer closes it only when none are.
    count: Arc<AtomicUsize>,
    /// The slot it holds until it ends (None only once the semaphores closed at process end).
    _slot: Option<OwnedSemaphorePermit>,
}

impl Open {
    /// Count a new stream and wait for a slot: the connection's own (preferred) or a shared one.
    async fn start(count: &Arc<AtomicUsize>, own: &Arc<Semaphore>, shared: &Arc<Semaphore>) -> Open {
        count.fetch_add(1, Ordering::AcqRel);
        // Counted first, so the guard's drop undoes it whatever happens to this future.
        let mut open = Open { count: count.clone(), _slot: None };
        // Closed semaphores (process end) let the stream go on without a slot.
        open._slot = tokio::select! {
            biased;
            p = own.clone().acquire_owned() => p.ok(),
            p = shared.clone().acquire_owned() => p.ok(),
        };
        open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream's [`Open`] and its place at the nodes until it ends
    /// or is dropped.
    struct Held {
        // The response body as the proxy made it.
        #[pin]
        body: DownBody,
        // The stream's count and slot, released when the body ends or is dropped (None: failed task).
        _open: Option<Open>,
        // The stream's place among the connection's requests at the nodes.
        _at_nodes: Option<OwnedSemaphorePermit>,
    }
}

/// Counts a stream whose answer the client did not wait for (its service future dropped before
/// the end); cuts the connection past the budget.
struct ResetWatch {
    /// The connection's streams reset before their answer.
    resets: Arc<AtomicU32>,
    /// The connection's streams.
    streams: Arc<AtomicU32>,
    /// Cancelled to cut the connection.
    cut: CancellationToken,
    /// The stream got its answer: its end is no reset.
    answered: bool,
}

impl Drop for ResetWatch {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let resets = self.resets.fetch_add(1, Ordering::Relaxed) + 1;
        if resets > RESET_BUDGET && resets * 2 > self.streams.load(Ordering::Relaxed) {
            self.cut.cancel();
        }
    }
}

impl Body for Held {
    type Data = <DownBody as Body>::Data;
    type Error = <DownBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serve one HTTP/2 connection until it closes, idles out (`[timeouts] client` without a request),
/// or the gateway stops (GOAWAY, then open streams finish). `permit` is its place under
/// `[gateway] max_connections`, held to the end.
pub async fn serve<I>(
    ctx: Arc<Context>,
    io: I,
    client: ClientInfo,
    held: crate::data::tunnel::Held,
    limit: Arc<Semaphore>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _held = held;
    ctx.core.frontend.connection_opened();
    let cfg = ctx.core.config();
    let timeout = cfg.timeouts.client.0;
    let in_flight = Arc::new(AtomicUsize::new(0));
    // Requests started since the idle timer last looked.
    let started = Arc::new(AtomicUsize::new(0));
    let (ctx_svc, in_flight_svc, started_svc) = (ctx.clone(), in_flight.clone(), started.clone());
    // The slot this connection holds (`held`), lent to one stream at a time.
    let own = Arc::new(Semaphore::new(1));
    // Requests of this connection at the nodes, reset streams' included.
    let at_nodes = Arc::new(Semaphore::new(MAX_CONCURRENT_STREAMS as usize));
    let (resets, streams, cut) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), CancellationToken::new());
    let client_svc = client.clone();
    let (resets_svc, streams_svc, cut_svc) = (resets.clone(), streams.clone(), cut.clone());
    let svc = service_fn(move |req: Request<Incoming>| {
        started_svc.fetch_add(1, Ordering::Relaxed);
        streams_svc.fetch_add(1, Ordering::Relaxed);
        let (ctx, count, own, limit) = (ctx_svc.clone(), in_flight_svc.clone(), own.clone(), limit.clone());
        let at_nodes = at_nodes.clone();
        let client = client_svc.clone();
        let watch = ResetWatch {
            resets: resets_svc.clone(),
            streams: streams_svc.clone(),
            cut: cut_svc.clone(),
            answered: false,
        };
        // Boxed, as on HTTP/1.1: the proxy's future is large.
        Box::pin(async move {
            // Moved in whole (a field alone would be captured, and the watch dropped at once).
            let mut watch = watch;
            let open = Open::start(&count, &own, &limit).await;
            // Closed only at process end: then the stream goes on without a place.
            let place = at_nodes.acquire_owned().await.ok();
            let tracker = ctx.life.connections.clone();
            // Its own task: a reset of the stream drops this future, not the request at the node,
            // which keeps its place until the node answered.
            let work = tracker.spawn(async move {
                let (method, uri) = (req.method().clone(), req.uri().clone());
                let resp = match as_http11(req) {
                    Ok(req) => match proxy::handle(ctx, req, client).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    },
                    Err(msg) => refuse(&ctx, &client, (&method, &uri), msg),
                };
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Held { body, _open: Some(open), _at_nodes: place })
            });
            let resp = match work.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP/2 stream task failed");
                    let (parts, body) =
                        proxy::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_parts();
                    Response::from_parts(parts, Held { body, _open: None, _at_nodes: None })
                }
            };
            watch.answered = true;
            Ok::<_, Infallible>(resp)
        })
    });
    let limits = &cfg.limits;
    let mut builder = http2::Builder::new(Tracked(ctx.life.connections.clone()));
    builder
        .timer(TokioTimer::new())
        // PINGs find a client that vanished (no FIN) while its streams wait on a slow node.
        .keep_alive_interval(timeout)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // What hyper's HTTP/1.1 buffer allows (twice `request_head`); the proxy answers 431 in
        // Kuzzle's envelope between the limit and this, h2 its bare 431 above.
        .max_header_list_size(u32::try_from(2 * limits.request_head).unwrap_or(u32::MAX));
    let io = crate::data::send_timeout::SendTimeout::new(io, timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut idle = tokio::time::interval(timeout);
    idle.reset();
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %client.addr, error = %e, "HTTP/2 client connection error");
                }
                break;
            }
            _ = idle.tick() => {
                // No request for a whole period and none open: close (GOAWAY).
                if started.swap(0, Ordering::Relaxed) == 0 && in_flight.load(Ordering::Relaxed) == 0 {
                    conn.as_mut().graceful_shutdown();
                    // A graceful close waits for the client's PING answer: a client gone silent
                    // never gives it, so the wait is bounded (then the socket is just closed).
                    let _ = tokio::time::timeout(timeout, conn.as_mut()).await;
                    break;
                }
            }
            _ = cut.cancelled() => {
                ctx.core.frontend.h2_reset_floods.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client = %client.addr, resets = resets.load(Ordering::Relaxed), "HTTP/2 connection cut: too many streams reset before their answer");
                break;
            }
            _ = ctx.life.shutdown.cancelled() => {
                // GOAWAY: the client opens new streams elsewhere; open ones finish, until the end of
                // the shutdown grace at most (as WebSocket tunnels).
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = ctx.life.close_tunnels.cancelled() => {}
                }
                break;
            }
        }
    }
    ctx.core.frontend.connection_closed();
}

/// The request as an HTTP/1.1 node must get it: origin-form target, Host from `:authority`.
/// (h2 itself refuses connection-specific headers in requests, so no upgrade comes this way.)
fn as_http11<B>(mut req: Request<B>) -> Result<Request<B>, &'static str> {
    // RFC 9113 8.3.1: every request but CONNECT has a `:path` (h2 lets one without through, as
    // an empty path that reads as "/": it must not reach a node as `GET /`).
    if req.method() != http::Method::CONNECT && !has_path(req.uri()) {
        return Err("bad request: no :path");
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if let Some(a) = authority {
        let value = HeaderValue::from_str(&a).map_err(|_| "bad request: invalid :authority")?;
        // RFC 9113 8.3.1: a Host that names another authority makes the request malformed.
        if req.headers().get(header::HOST).is_some_and(|h| h != value) {
            return Err("bad request: Host and :authority differ");
        }
        req.headers_mut().insert(header::HOST, value);
    }
    // RFC 9113 8.2.3: HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one.
    if req.headers().get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = req.headers().get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect();
        let value = HeaderValue::from_bytes(&joined.join(&b"; "[..])).map_err(|_| "bad request: invalid cookie")?;
        req.headers_mut().insert(header::COOKIE, value);
    }
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let origin: Uri = target.parse().map_err(|_| "bad request: invalid path")?;
    *req.uri_mut() = origin;
    // From here on this is the HTTP/1.1 request the node gets: the proxy's rule that HTTP/1.1
    // needs exactly one Host applies (a request with neither Host nor :authority gets its 400).
    *req.version_mut() = Version::HTTP_11;
    Ok(req)
}

/// Did the request carry a `:path`? Without one, h2 builds a URI whose path is empty but reads
/// as "/" (`as_str`, `path`); only comparing it with such an empty path tells them apart.
fn has_path(uri: &Uri) -> bool {
    let Some(pq) = uri.path_and_query() else { return false };
    if pq.as_str() != "/" {
        return true;
    }
    // (h2 drops `:scheme` without `:authority`, and refuses a request with both and no `:path`.)
    let empty: Option<PathAndQuery> =
        Uri::from_parts(http::uri::Parts::default()).ok().and_then(|u| u.path_and_query().cloned());
    empty.is_none_or(|e| *pq != e)
}

/// The gateway's 400 for a malformed HTTP/2 request, counted (and logged) like the proxy's own
/// errors.
fn refuse(ctx: &Context, client: &ClientInfo, (method, uri): (&http::Method, &Uri), msg: &str) -> Response<DownBody> {
    let f = &ctx.core.frontend;
    f.requests_total.fetch_add(1, Ordering::Relaxed);
    f.request_rate.tick();
    f.request_errors.fetch_add(1, Ordering::Relaxed);
    f.responses.record(400);
    let snap = ctx.core.snapshot_full();
    let log = proxy::begin_log(ctx, &snap, client, || {
        (method.clone(), crate::data::edge::access_log::Target::Uri(uri.clone()))
    })
    .map(|mut r| {
        r.termination = "PR";
        r
    });
    proxy::with_log(proxy::json_error(StatusCode::BAD_REQUEST, msg), log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(Version::HTTP_2);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn authority_becomes_host_and_the_target_its_origin_form() {
        let r = as_http11(req("https://api.example.com:7443/cluster_kuzzle_1/_now?x=1", None)).expect("ok");
        assert_eq!(r.headers()[header::HOST], "api.example.com:7443");
        assert_eq!(r.uri().to_string(), "/cluster_kuzzle_1/_now?x=1");
        assert_eq!(r.version(), Version::HTTP_11);
        let r = as_http11(req("https://a.test/", Some("a.test"))).expect("same host");
        assert_eq!(r.headers().get_all(header::HOST).iter().count(), 1);
        assert!(as_http11(req("https://a.test/", Some("b.test"))).is_err(), "Host naming another authority");
        let r = as_http11(req("/x", Some("a.test"))).expect("no authority: Host kept");
        assert_eq!(r.headers()[header::HOST], "a.test");
        let mut split = req("https://a.test/", None);
        split.headers_mut().append(header::COOKIE, HeaderValue::from_static("a=1"));
        split.headers_mut().append(header::COOKIE, HeaderValue::from_static("b=2"));
        let r = as_http11(split).expect("cookies");
        // What h2 makes of a request with neither `:path` nor `:authority`: an empty URI.
        let no_path =
            Request::builder().uri(Uri::from_parts(Default::default()).expect("uri")).body(()).expect("request");
        assert_eq!(as_http11(no_path).err(), Some("bad request: no :path"));
        assert!(as_http11(req("https://a.test/", None)).is_ok(), "an explicit / is a path");
        let cookies: Vec<_> = r.headers().get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, vec!["a=1; b=2"], "split cookies joined for HTTP/1.1");
    }
}
