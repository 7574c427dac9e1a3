//! Data plane: the accept loop of a client listener and the serving of one client connection
//! (HTTP/1.1, keep-alive, upgrades, TLS handshake, graceful close on shutdown or hand-over).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::control::tls::TlsSlot;
use crate::core::counters::LimitReason;
use crate::data::edge::limits::{Admission, ConnGuard, CONNECTIONS_RETRY_AFTER};
use crate::data::edge::proxy_protocol::{self, Prefixed, Refusal};
use crate::data::proxy::{self, ClientInfo, Context, Scheme};
use crate::data::tunnel::Held;

/// What client accept loops share: the proxy's context, the TLS acceptor (swapped on reload) and
/// the connection cap.
pub struct Frontdoor {
    /// The proxy's context: every connection's requests are served with it.
    pub ctx: Arc<Context>,
    /// Read per connection: a reload with new certificates applies to the next handshake.
    pub tls: TlsSlot,
    /// `[gateway] max_connections`, fixed at start; shared by every client listener.
    pub limit: Arc<Semaphore>,
}

/// Accept clients until `stop`; each connection is served on the gateway's tracker and outlives
/// the loop (a re-bound or handed-over listener leaves its connections alone).
pub async fn accept_loop(door: Arc<Frontdoor>, listener: TcpListener, scheme: Scheme, stop: CancellationToken) {
    let limit = door.limit.clone();
    loop {
        // Backpressure: past the connection cap, stop accepting until one closes.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let ctx = door.ctx.clone();
        // Boxed: a connection's future is kilobytes, and tokio copies a task's future whole as it
        // spawns it and again as the task ends (measured: ~7,000 instructions per connection).
        // Two kinds of task: a plain connection's future is sized for the lane alone, not for a
        // TLS session and HTTP/2 (7,616 bytes for both in one future, each plain connection's).
        if scheme == Scheme::Https {
            // TCP_NODELAY at accept for TLS (a plain connection's is set by the lane when first
            // needed: `Lane::no_delay`).
            let _ = stream.set_nodelay(true);
            // TLS clients may speak HTTP/2, whose streams take slots of their own.
            let tls = door.tls.acceptor().map(|a| (a, limit.clone()));
            door.ctx.life.connections.spawn(Box::pin(serve_tls(ctx, stream, addr, permit, tls)));
        } else {
            door.ctx.life.connections.spawn(Box::pin(serve_plain(ctx, stream, addr, permit)));
        }
    }
}

/// A plain client connection, from its PROXY header (if any) to its close.
async fn serve_plain(ctx: Arc<Context>, stream: TcpStream, addr: SocketAddr, permit: OwnedSemaphorePermit) {
    let Some((stream, client, conn)) = admit(&ctx, stream, addr, Scheme::Http).await else { return };
    crate::data::lane::serve(ctx, stream, client, Held { permit: Some(permit), conn }).await;
}

/// A TLS client connection, from its PROXY header (if any) and handshake to its close: HTTP/2
/// when the client chose it by ALPN, else the lane.
async fn serve_tls(
    ctx: Arc<Context>,
    stream: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<(Arc<tokio_rustls::TlsAcceptor>, Arc<Semaphore>)>,
) {
    let Some((stream, client, conn)) = admit(&ctx, stream, addr, Scheme::Https).await else { return };
    let held = Held { permit: Some(permit), conn };
    let Some((acceptor, shared)) = tls else {
        tracing::warn!("TLS connection without a TLS configuration");
        return;
    };
    if let Some(s) = tls_handshake(&ctx, (*acceptor).clone(), stream).await {
        if crate::control::tls::is_h2(&s) {
            crate::data::h2::serve(ctx, s, client, held, shared).await;
        } else {
            crate::data::lane::serve(ctx, s, client, held).await;
        }
    }
}

/// A client stream: the socket, after the bytes read with its PROXY header (if any).
pub type ClientStream = Prefixed<TcpStream>;

/// What happens to a new connection before any HTTP or TLS: its PROXY protocol header (when
/// `[gateway] proxy_protocol`: the client's real address), then `[limits] client_connections`.
/// None: the connection was refused (closed, or answered 429) and counted.
async fn admit(
    ctx: &Context,
    mut stream: TcpStream,
    peer: SocketAddr,
    scheme: Scheme,
) -> Option<(ClientStream, ClientInfo, Option<ConnGuard>)> {
    let cfg = ctx.core.config();
    let f = &ctx.core.frontend;
    let (addr, rest) = if cfg.gateway.proxy_protocol {
        let read = if proxy_protocol::allowed(peer.ip(), &cfg.gateway.proxy_protocol_from) {
            proxy_protocol::read_header(&mut stream, peer, cfg.timeouts.client.0).await
        } else {
            Err(Refusal::NotAllowed)
        };
        match read {
            Ok(r) => r,
            Err(why) => {
                f.proxy_refused[why as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, ?why, "connection closed: PROXY protocol header refused");
                return None;
            }
        }
    } else {
        (peer, Vec::new())
    };
    let stream = Prefixed::new(stream, rest);
    let mut client = ClientInfo::new(addr, scheme);
    if cfg.access_log.is_some() {
        client = client.labelled();
    }
    let l = &cfg.limits;
    let mut conn = None;
    if crate::data::edge::limited(l, addr.ip()) {
        let table = ctx.edge.table(l);
        client.place = Some(table.place(addr.ip()));
        if l.client_connections > 0 {
            match table.open(addr.ip(), l.client_connections) {
                Admission::Counted(g) => conn = Some(g),
                Admission::Untracked => f.limited(LimitReason::TableFull),
                Admission::Over => {
                    f.limited(LimitReason::Connections);
                    too_many_connections(stream, scheme, l.client_connections).await;
                    return None;
                }
            }
        }
    }
    Some((stream, client, conn))
}

/// A connection over `[limits] client_connections`: closed at once; a plain HTTP client whose
/// request already came gets a 429 first (a TLS one cannot be answered before its handshake).
async fn too_many_connections(mut stream: ClientStream, scheme: Scheme, limit: u32) {
    use tokio::io::AsyncWriteExt;
    if scheme != Scheme::Http {
        return;
    }
    if !drain_arrived(&stream) {
        return;
    }
    let msg = format!("too many connections: this client already has {limit} open");
    let body = crate::data::envelope::body(http::StatusCode::TOO_MANY_REQUESTS, &msg);
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        CONNECTIONS_RETRY_AFTER.as_secs(),
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Read what already came on a refused connection (closing with unread bytes would reset it and
/// lose the answer); nothing is waited for. True: the client sent something. A function of its
/// own: its buffer is not kept in the state of every connection's future.
fn drain_arrived(stream: &ClientStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut came = !stream.pending().is_empty();
    for _ in 0..16 {
        match stream.get_ref().try_read(&mut buf) {
            Ok(n) if n > 0 => came = true,
            _ => break,
        }
    }
    came
}

async fn tls_handshake(
    ctx: &Context,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: ClientStream,
) -> Option<tokio_rustls::server::TlsStream<ClientStream>> {
    // Runs under the connection's permit: a stalled handshake holds a slot until it is cut.
    let t = crate::control::tls::handshake_timeout(&ctx.core.config());
    match tokio::time::timeout(t, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(timeout = ?t, "TLS handshake timed out");
            None
        }
    }
}

/// hyper's own cap on header lines when none is set (`http1::Builder::max_headers`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// After a hand-over, how long an idle keep-alive connection of the old process waits for one more
/// request (answered with `Connection: close`) before it is closed: closing an idle connection
/// races with a client sending on it, answering its next request with `close` does not.
pub const HANDOVER_KEEPALIVE_LINGER: Duration = Duration::from_secs(5);

/// Serve one client connection (HTTP/1.1, keep-alive, upgrades) until it closes or shutdown.
/// `held` is this connection's place under `[gateway] max_connections` and its count under
/// `[limits] client_connections`; an upgrade hands them on to its tunnel, so long-lived
/// WebSockets keep counting.
pub async fn serve_conn<I>(ctx: Arc<Context>, io: I, client: ClientInfo, held: Held)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ctx.core.frontend.connection_opened();
    serve_counted(ctx.clone(), io, client, held).await;
    ctx.core.frontend.connection_closed();
}

/// [`serve_conn`] for a connection already counted open (the fast lane hands its own over).
pub async fn serve_counted<I>(ctx: Arc<Context>, io: I, client: ClientInfo, held: Held)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::new(crate::data::tunnel::PermitSlot::new(held));
    // One read of the settings for the whole connection (a reload applies to the next one).
    let cfg = ctx.core.config();
    let timeout = cfg.timeouts.client.0;
    let ctx_svc = ctx.clone();
    // Requests started on this connection: lets a draining connection close right after a response.
    let started = Arc::new(tokio::sync::Notify::new());
    let busy = Arc::new(AtomicBool::new(false));
    let (started_svc, busy_svc) = (started.clone(), busy.clone());
    let peer = client.addr;
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(slot.clone());
        }
        busy_svc.store(true, Ordering::Release);
        started_svc.notify_one();
        let fut = proxy::handle(ctx_svc.clone(), req, client.clone());
        let (busy, ctx) = (busy_svc.clone(), ctx_svc.clone());
        // Boxed: hyper would otherwise move this large future around by value (measured: ~9% CPU).
        Box::pin(async move {
            let mut r = fut.await;
            busy.store(false, Ordering::Release);
            // Draining: say so, so the client opens its next request elsewhere instead of racing
            // our close of an idle keep-alive connection.
            if ctx.life.shutdown.is_cancelled() {
                if let Ok(resp) = &mut r {
                    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                }
            }
            r
        })
    });
    let mut builder = http1::Builder::new();
    // hyper's read buffer is what a client holding an unfinished head costs: capped at twice the
    // limit (the service answers 431 in Kuzzle's envelope between the two), and a head never
    // grows the buffer past it.
    let limits = &cfg.limits;
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true)
        // A client that half-closes after its request (`shutdown(SHUT_WR)`: `nc -N`, some
        // balancers' checks) still gets its answer, as from haproxy and Node.js.
        .half_close(true)
        .max_buf_size((2 * limits.request_head).max(8192));
    // hyper parses up to 100 header lines in arrays on the stack; an explicit cap makes it
    // allocate and fill two arrays for every request head (measured: ~6 % of the gateway's
    // instructions per request). So only a limit above that sets one; at or under it, a head of
    // more than 100 lines gets hyper's bare 431, and Kuzzle's 431 answers the lines in between.
    if limits.headers > HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(2 * limits.headers);
    }
    // A client that stops reading is cut after `[timeouts] client` without progress.
    let io = crate::data::send_timeout::SendTimeout::new(io, timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(client = %peer, error = %e, "client connection error");
            }
        }
        _ = ctx.life.shutdown.cancelled() => {
            // A permit left by an earlier request says nothing about now: drop it, then look.
            let _ = started.notified().now_or_never();
            if ctx.life.handed_over.is_cancelled() && !busy.load(Ordering::Acquire) {
                // Wait for the next request (its response then says `Connection: close`), or idle out.
                let linger = tokio::time::sleep(HANDOVER_KEEPALIVE_LINGER.min(timeout));
                tokio::pin!(linger);
                tokio::select! {
                    _ = started.notified() => {}
                    _ = &mut linger => {}
                    _ = ctx.life.close_tunnels.cancelled() => {}
                    _ = conn.as_mut() => return,
                }
            }
            conn.as_mut().graceful_shutdown();
            // In-flight requests may finish past the grace period (only tunnels are closed then);
            // `shutdown` bounds the whole wait by `hard_stop_after`.
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use crate::core::{Core, Lifecycle};

    #[tokio::test]
    async fn a_plain_connections_futures_stay_small() {
        // Every plain client connection's task holds its future for as long as it is open, and a
        // new connection's allocations and copies grow with it: a TLS session and HTTP/2 had made
        // it 7,616 bytes, header arrays kept across awaits made the lane's 5,128.
        let config = Config::parse("[[node]]\nname = \"s\"\naddress = \"127.0.0.1:1\"\n", "t.toml").expect("valid");
        let core = Core::new(Arc::new(config), Vec::new(), Box::new(|_| {}), 1, Default::default());
        let ctx = Arc::new(Context::new(core, Lifecycle::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (a, (b, _)) = (a.expect("connect"), b.expect("accept"));
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let conn = serve_plain(ctx.clone(), a, addr, permit);
        let size = std::mem::size_of_val(&conn);
        assert!(
            size <= 1024,
            "a plain connection's future is {size} bytes (888 in a release build and 928 in a debug one when this test was written)"
        );
        let client = ClientInfo::new(addr, Scheme::Http);
        let lane = crate::data::lane::run_future_size(&ctx, Prefixed::new(b, Vec::new()), &client);
        assert!(
            lane <= 2560,
            "the lane's future is {lane} bytes (2,176 in a release build and 2,232 in a debug one when this test was written)"
        );
    }
}
