//! Data plane, fast lane: an HTTP/1.1 client connection served without hyper while its requests
//! are body-less GET, HEAD or OPTIONS or carry a short Content-Length body, each relayed to a
//! node on a plain pooled socket, and a WebSocket upgrade becomes a tunnel on both raw sockets;
//! at the first request it does not take, the connection goes on in hyper's path with its bytes.

mod answer;
mod splice;
pub mod wire;

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use self::wire::{Framing, NodeParsed, Parsed};
use crate::core::backend::{ActiveGuard, Backend};
use crate::core::snapshot::Snapshot;
use crate::data::edge::access_log::{BytesIn, HttpRecord, Target};
use crate::data::edge::proxy_protocol::Prefixed;
use crate::data::proxy::error::{Progress, ProxyError};
use crate::data::proxy::{self, resend, ClientInfo, Context, Scheme};
use crate::data::route;
use crate::data::send_timeout::SendTimeout;
use crate::data::serve::ClientStream;
use crate::data::tunnel::{self, Held, Tunnel};

/// A client stream the lane can hand to hyper's path, the bytes it read put back in front.
pub trait Rewind: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The stream hyper's path serves then.
    type Out: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The stream with `read` (bytes read from it and not taken) to be read again first.
    fn rewind(self, read: Vec<u8>) -> Self::Out;

    /// The client's socket when nothing stands between it and the gateway (no TLS): a long body
    /// may go to it with splice(2).
    fn plain(&self) -> Option<&TcpStream>;
}

impl Rewind for ClientStream {
    /// The same type as a connection hyper's path serves from its start: a tunnel takes its
    /// plain socket back out of hyper's upgrade by that type.
    type Out = ClientStream;

    fn rewind(self, mut read: Vec<u8>) -> ClientStream {
        let (tcp, pending) = self.into_parts();
        read.extend_from_slice(&pending);
        Prefixed::new(tcp, read)
    }

    fn plain(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }
}

impl Rewind for tokio_rustls::server::TlsStream<ClientStream> {
    type Out = Prefixed<tokio_rustls::server::TlsStream<ClientStream>>;

    fn rewind(self, read: Vec<u8>) -> Self::Out {
        Prefixed::new(self, read)
    }

    fn plain(&self) -> Option<&TcpStream> {
        None
    }
}

/// Serve a client connection (plain, or TLS without ALPN h2) on the fast lane; at the first
/// request the lane does not take (or a shutdown), hyper's path serves the rest of it.
pub async fn serve<S: Rewind>(ctx: Arc<Context>, stream: S, client: ClientInfo, held: Held) {
    ctx.core.frontend.connection_opened();
    // All boxed: inline, their states (kilobytes each) made this future as large as all, and
    // tokio copied it whole as the connection's task began. The lane's box is freed before what
    // comes next (a `match` on it would keep it for as long as a tunnel lasts).
    let next = Box::pin(run(&ctx, stream, &client)).await;
    match next {
        Next::Closed => {}
        Next::Hyper(stream) => {
            Box::pin(crate::data::serve::serve_counted(ctx.clone(), stream, client, held)).await;
        }
        Next::Tunnel(io, t) => {
            // As after hyper's upgrade: the connection ends, the tunnel counts on its own and
            // keeps the connection's place (`held`) until it closes. A task of its own: the
            // connection's (sized for a TLS handshake and the lane) is freed now, not held for as
            // long as the WebSocket lasts.
            ctx.core.frontend.connection_closed();
            let (frontend, close_all) = (ctx.core.frontend.clone(), ctx.life.close_tunnels.clone());
            let relay = tunnel::relay(frontend, close_all, t.tunnel, io, t.node, Some(held));
            ctx.life.connections.spawn(relay);
            return;
        }
    }
    ctx.core.frontend.connection_closed();
}

/// The size of the lane's future for one connection (a unit test bounds it).
#[cfg(test)]
pub fn run_future_size<S: Rewind>(ctx: &Context, stream: S, client: &ClientInfo) -> usize {
    std::mem::size_of_val(&run(ctx, stream, client))
}

/// How the lane lets go of a client connection.
enum Next<S: Rewind> {
    /// It is over (closed, timed out, or answered and closed).
    Closed,
    /// hyper's path serves the rest of it.
    Hyper(S::Out),
    /// A WebSocket the node accepted: the client (behind the bytes it sent after its upgrade
    /// request) and the node, relayed both ways.
    Tunnel(Prefixed<SendTimeout<S>>, Switched),
}

/// A WebSocket the node accepted (its `101` went to the client): the node's side of the tunnel.
struct Switched {
    /// The node's socket, behind what it sent after its `101` head.
    node: Prefixed<TcpStream>,
    /// The tunnel's rules, node guard, kill switch and log line.
    tunnel: Tunnel,
}

/// Client bytes read per system call at least (the buffer grows by this much when it runs low).
const READ_CHUNK: usize = 4096;

/// Node bytes read per system call while a long body is relayed.
const RELAY_CHUNK: usize = 64 * 1024;

/// Bytes of a request that surely fit one TCP segment (an IPv6 minimum MTU less the headers).
const ONE_SEGMENT: usize = 1200;

/// A usual head's room in the request and answer buffers.
const HEAD_ROOM: usize = 1024;

/// A body this long (or less) that came with its head goes out in the same write as the head.
const COPY_WITH_HEAD: usize = 16 * 1024;

/// One client connection on the lane: its stream and buffers.
struct Lane<'a, S> {
    /// The proxy's context (snapshot, counters, lifecycle).
    ctx: &'a Context,
    /// Who the client is (`X-Forwarded-For`, balancing, the access log).
    client: &'a ClientInfo,
    /// The client, whose writes are cut after `[timeouts] client` without progress.
    io: SendTimeout<S>,
    /// Client bytes read and not yet taken: the next request head, or pipelined ones.
    buf: Vec<u8>,
    /// The current request as nodes get it (kept for a second attempt).
    req: Vec<u8>,
    /// The node's bytes of the current answer.
    nbuf: Vec<u8>,
    /// The client's answer head (and the start of its body) before it is written.
    out: Vec<u8>,
    /// TCP_NODELAY is on (a TLS socket's is set at accept; a plain one's when first needed).
    nodelay: bool,
    /// A whole head is read and its body is still coming: the bytes the request takes in all
    /// (nothing is parsed again before they are here). A stall or a half-close now is answered
    /// (408, 400) rather than met with a silent close.
    awaiting_body: Option<usize>,
    /// Set when a node switched the connection to a WebSocket: the lane ends, the tunnel begins.
    switched: Option<Switched>,
}

/// A request the lane took, ready for a node.
struct Job {
    /// The node its prefix names, if any.
    pinned: Option<usize>,
    /// A HEAD: its answer has no body.
    head_only: bool,
    /// A body-less GET, HEAD or OPTIONS: another try after the node may have read it is safe.
    idempotent: bool,
    /// A WebSocket upgrade: a `101` makes a tunnel of the connection.
    upgrade: bool,
    /// Bytes of its body (at the end of the request in `Lane::req`): counted for each node tried.
    body: u64,
    /// The client asked to close after the answer.
    close: bool,
    /// Its access log line, when the log is on.
    log: Option<Box<HttpRecord>>,
}

/// What the client's buffer holds.
enum Prep {
    Partial,
    /// Not for the lane: hyper's path takes the connection from this request on.
    Other,
    Job(Job),
}

/// How one exchange with a node failed before anything went to the client.
enum Failure {
    /// The request could not be written.
    Unsent,
    /// The node broke the exchange before its answer was whole (no byte went to the client).
    Broke(ProxyError),
    /// Nothing more to try.
    Final(ProxyError),
    /// No answer within `[timeouts] server`.
    TimedOut(ProxyError),
    /// Kuzzle's "not executed" 503: the client's whole answer, passed on if no other node takes
    /// the request.
    /// Its bool: the answer says `Connection: close` (the connection ends after it).
    Refused(Vec<u8>, u64, bool),
}

/// Serve requests until the client closes, times out, sends one the lane does not take (then
/// the stream, with what was read of it, for hyper's path) or switches to a WebSocket.
async fn run<S: Rewind>(ctx: &Context, stream: S, client: &ClientInfo) -> Next<S> {
    let timeout = ctx.core.config().timeouts.client.0;
    // One timer and one shutdown watch per connection, re-armed per request (as hyper's).
    let token = ctx.life.shutdown.clone();
    let mut stop = pin!(token.cancelled());
    let mut idle = pin!(tokio::time::sleep(timeout));
    let stream_is_tls = stream.plain().is_none();
    let mut lane = Lane {
        ctx,
        client,
        io: SendTimeout::new(stream, timeout),
        buf: Vec::new(),
        // Room for a usual head at once: grown from empty, each took several reallocations.
        req: Vec::with_capacity(HEAD_ROOM),
        nbuf: Vec::new(),
        out: Vec::with_capacity(HEAD_ROOM),
        // A TLS socket's is set at accept.
        nodelay: stream_is_tls,
        awaiting_body: None,
        switched: None,
    };
    loop {
        let snap = ctx.core.snapshot_full();
        let mut armed = false;
        let job = loop {
            if !lane.buf.is_empty() {
                match lane.prepare(&snap) {
                    Prep::Job(j) => break j,
                    Prep::Other => return Next::Hyper(lane.hand_over()),
                    Prep::Partial => {}
                }
            }
            if token.is_cancelled() {
                return Next::Hyper(lane.hand_over());
            }
            if !armed {
                // hyper's header read timeout: from the start of the wait for a head.
                idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                armed = true;
            }
            if lane.buf.capacity() - lane.buf.len() < READ_CHUNK / 4 {
                lane.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                r = lane.io.read_buf(&mut lane.buf) => match r {
                    Ok(0) if lane.awaiting_body.is_some() => {
                        lane.body_stopped(&snap, ProxyError::body_cut_short()).await;
                        return Next::Closed;
                    }
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {}
                },
                _ = &mut idle => {
                    if lane.awaiting_body.is_some() {
                        lane.body_stopped(&snap, ProxyError::body_late(timeout)).await;
                    }
                    return Next::Closed;
                }
                _ = &mut stop => return Next::Hyper(lane.hand_over()),
            }
        };
        // A TLS stream may hold the end of the answer until flushed (a plain socket has nothing).
        if !lane.handle(&snap, job).await || lane.io.flush().await.is_err() {
            if let Some(sw) = lane.switched.take() {
                lane.no_delay();
                // The client's first frames may have come behind its upgrade request.
                return Next::Tunnel(Prefixed::new(lane.io, lane.buf), sw);
            }
            // TLS: its close_notify. A plain socket's close sends the FIN itself: one call fewer.
            if lane.io.get_ref().plain().is_none() {
                let _ = lane.io.shutdown().await;
            }
            return Next::Closed;
        }
        lane.no_delay();
        // A long head or body grew a buffer: an idle connection holds no more than a read's worth.
        if lane.buf.is_empty() && lane.buf.capacity() > READ_CHUNK {
            lane.buf = Vec::new();
        } else if lane.buf.capacity() > 2 * READ_CHUNK && lane.buf.len() <= READ_CHUNK {
            // A few pipelined bytes behind a long body.
            lane.buf.shrink_to(READ_CHUNK);
        }
        if lane.nbuf.capacity() > 2 * READ_CHUNK {
            lane.nbuf = Vec::new();
        }
        if lane.out.capacity() > 2 * READ_CHUNK {
            lane.out = Vec::new();
        }
        // A request with a body (up to `resend_body`) is kept whole for a second try until answered.
        if lane.req.capacity() > 2 * READ_CHUNK {
            lane.req = Vec::with_capacity(HEAD_ROOM);
        }
    }
}

impl<S: Rewind> Lane<'_, S> {
    /// The stream for hyper's path: what was read and not taken goes first.
    fn hand_over(mut self) -> S::Out {
        self.no_delay();
        self.io.into_inner().rewind(self.buf)
    }

    /// Write `out`; `last`: nothing follows it on this connection ([`write_last`]).
    async fn write_out(&mut self, last: bool) -> std::io::Result<()> {
        if last {
            write_last(&mut self.io, &self.out).await
        } else {
            self.io.write_all(&self.out).await
        }
    }

    /// TCP_NODELAY on a plain client socket, as nginx's `tcp_nodelay`: from the second request on
    /// or an answer written in several writes (Nagle holds a small write behind unacknowledged
    /// bytes, up to the client's delayed ACK). A connection closed after a one-write answer, as
    /// with a new connection per request, never needs it and saves the call.
    fn no_delay(&mut self) {
        if !self.nodelay {
            self.nodelay = true;
            if let Some(t) = self.io.get_ref().plain() {
                let _ = t.set_nodelay(true);
            }
        }
    }

    /// Judge the buffered head; a request the lane takes is routed and made ready for the nodes.
    fn prepare(&mut self, snap: &Snapshot) -> Prep {
        let cfg = &snap.config;
        // Per-client rates and TLS to the nodes are hyper's path's alone.
        if !cfg.gateway.fast_lane || cfg.limits.client_rate != 0 || !snap.plain_nodes {
            return Prep::Other;
        }
        if self.awaiting_body.is_some_and(|whole| self.buf.len() < whole) {
            return Prep::Partial;
        }
        let mut hs = wire::request_headers();
        let head = match wire::parse_request(&self.buf, &mut hs, limits(cfg)) {
            Parsed::Partial => return Prep::Partial,
            Parsed::Other => return Prep::Other,
            Parsed::Take(h) => h,
        };
        // A path the router refuses is hyper's path's to answer at once, body or not.
        let (path, query) = head.path_query();
        let Ok(routed) = route::route(path, query, |seg| snap.index_of(seg)) else { return Prep::Other };
        // The body is read whole first (it is short): a second try can send it again.
        let whole = head.len + head.body as usize;
        self.awaiting_body = (self.buf.len() < whole).then_some(whole);
        if self.awaiting_body.is_some() {
            let missing = whole - self.buf.len();
            if self.buf.capacity() - self.buf.len() < missing {
                self.buf.reserve(missing.max(READ_CHUNK));
            }
            return Prep::Partial;
        }
        let proto = match self.client.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let added = wire::Added {
            forwarded_for: self.client.forwarded_for.as_bytes(),
            proto,
            mark: self.ctx.instance.as_bytes(),
        };
        self.req.clear();
        wire::encode_request(&head, &hs, &routed.path_and_query(), &added, &mut self.req);
        self.req.extend_from_slice(&self.buf[head.len..whole]);
        let log = self.log_of(snap, &head);
        if head.body > 0 {
            self.ctx.core.frontend.bytes_in.fetch_add(head.body, Ordering::Relaxed);
        }
        let mut job = Job {
            pinned: routed.node,
            head_only: head.head_only(),
            idempotent: head.idempotent(),
            upgrade: head.upgrade,
            body: head.body,
            close: head.close,
            log,
        };
        if let Some(r) = job.log.as_mut().filter(|_| head.body > 0) {
            r.bytes_in = BytesIn::Known(head.body);
        }
        if whole == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..whole);
        }
        Prep::Job(job)
    }

    /// One request: its answer relayed, or the gateway's own. False: close the connection.
    async fn handle(&mut self, snap: &Arc<Snapshot>, mut job: Job) -> bool {
        let f = &self.ctx.core.frontend;
        f.requests_total.fetch_add(1, Ordering::Relaxed);
        f.request_rate.tick();
        match self.attempts(snap, &mut job).await {
            Ok(keep) => keep,
            Err(e) => self.fail(&mut job, e).await,
        }
    }

    /// The gateway's own answer to a request that failed, in Kuzzle's envelope. False: close.
    async fn fail(&mut self, job: &mut Job, e: ProxyError) -> bool {
        self.ctx.core.frontend.request_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = job.log.as_mut() {
            r.termination = e.termination();
        }
        let close = job.close || self.ctx.life.shutdown.is_cancelled();
        let body = crate::data::envelope::body(e.status, &e.message);
        self.out.clear();
        wire::encode_own(e.status, &body, None, close, &date(), &mut self.out);
        let sent = self.write_out(close).await.is_ok();
        self.finish(job, e.status.as_u16(), body.len() as u64, sent);
        sent && !close
    }

    /// A request whose body stopped coming: `why` answered as hyper's path answers it (408 after
    /// `[timeouts] client`, `cR`; 400 when the client half-closed mid-body, `CR`), then the close.
    async fn body_stopped(&mut self, snap: &Snapshot, why: ProxyError) {
        let f = &self.ctx.core.frontend;
        f.requests_total.fetch_add(1, Ordering::Relaxed);
        f.request_rate.tick();
        // In a block: the header array (2 KiB) is not kept in this future's state.
        let log = {
            let mut hs = wire::request_headers();
            match wire::parse_request(&self.buf, &mut hs, limits(&snap.config)) {
                Parsed::Take(h) => self.log_of(snap, &h),
                _ => None,
            }
        };
        let mut job =
            Job { pinned: None, head_only: false, idempotent: false, upgrade: false, body: 0, close: true, log };
        self.fail(&mut job, why).await;
    }

    /// The access log line of a request, when the log is on.
    fn log_of(&self, snap: &Snapshot, head: &wire::Head<'_>) -> Option<Box<HttpRecord>> {
        proxy::begin_log(self.ctx, snap, self.client, || {
            let method = http::Method::from_bytes(head.method.as_bytes()).unwrap_or_default();
            (method, Target::Plain(head.target.to_owned()))
        })
    }

    /// The request's end: its status counted, its access log line written.
    fn finish(&self, job: &mut Job, status: u16, sent: u64, whole: bool) {
        self.ctx.core.frontend.responses.record(status);
        if let Some(mut r) = job.log.take() {
            r.status = status;
            if !whole && r.termination == "--" {
                r.termination = "CD";
            }
            r.log.http(&r, sent);
        }
    }

    /// The attempts of one request (the rules of hyper's path, `proxy::attempts`, for a request
    /// whose body, if any, is read whole): pick a node, take or open a connection, exchange; again
    /// on another node, or on a fresh connection after a keep-alive race, when that is safe (after
    /// the node may have read it: only a body-less GET, HEAD or OPTIONS).
    async fn attempts(&mut self, snap: &Arc<Snapshot>, job: &mut Job) -> Result<bool, ProxyError> {
        let cfg = &snap.config;
        let attempts = cfg.balance.retries + 1;
        // Another node may take the request again (hyper's path keeps a copy only then).
        let others = job.pinned.is_none() && snap.nodes.len() > 1;
        let mut tried: Vec<usize> = Vec::new();
        let (mut resent, mut raced, mut fresh_only) = (false, false, false);
        let mut refused: Option<(Vec<u8>, u64, bool)> = None;
        let mut last = ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, "no node available");
        let (mut attempt, mut tries) = (0, 0u32);
        while attempt < attempts {
            attempt += 1;
            let Some(idx) = proxy::choose(self.ctx, snap, job.pinned, self.client, &tried)? else { break };
            let node = snap.nodes[idx].clone();
            proxy::count_try(&node, &mut tries, job.log.as_deref_mut());
            let guard = node.track();
            let pooled = if fresh_only { None } else { node.take_raw(cfg.timeouts.pool_idle.0) };
            fresh_only = false;
            let reused = pooled.is_some();
            // A pooled connection took no time to get (two clock reads a request fewer).
            let connecting = (job.log.is_some() && !reused).then(Instant::now);
            let stream = match pooled {
                Some(s) => s,
                None => match Box::pin(node.connect_tcp(cfg.timeouts.connect.0)).await {
                    Ok(s) => s,
                    Err(e) => {
                        let at = (idx, job.pinned.is_some(), attempt < attempts);
                        last = ProxyError::connect_failed(&node, e, cfg, at, &mut tried);
                        continue;
                    }
                },
            };
            if let Some(r) = job.log.as_mut() {
                r.connect = Some(connecting.map_or(Duration::ZERO, |t| t.elapsed()));
            }
            let err = match self.exchange(snap, &node, guard, stream, job).await {
                Ok(keep) => return Ok(keep),
                Err(Failure::Final(e)) => return Err(e),
                // Never written: a pooled connection that had closed costs no attempt (the pool
                // is finite); a fresh one counts like a failed connect.
                Err(Failure::Unsent) if reused => {
                    attempt -= 1;
                    continue;
                }
                Err(Failure::Unsent) => ProxyError::closed_at_once(&node),
                // The keep-alive race: once, on a fresh connection, the same node allowed.
                Err(Failure::Broke(_)) if reused && !raced && job.idempotent => {
                    raced = true;
                    fresh_only = true;
                    attempt -= 1;
                    continue;
                }
                Err(Failure::Broke(e)) => e,
                Err(Failure::TimedOut(e)) => {
                    if others && cfg.balance.retry_on_timeout && !resent && job.idempotent {
                        resent = true;
                        tried.push(idx);
                        node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                        last = e;
                        continue;
                    }
                    return Err(e);
                }
                Err(Failure::Refused(answer, body, closes)) => {
                    if others {
                        tried.push(idx);
                        node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                        refused = Some((answer, body, closes));
                        attempt -= 1;
                        continue;
                    }
                    return Ok(self.pass_on(job, answer, body, closes).await);
                }
            };
            err.record(&node, &cfg.health);
            if err.progress == Progress::NothingSent {
                if cfg.balance.redispatch && job.pinned.is_none() {
                    tried.push(idx);
                }
                last = err;
                continue;
            }
            if others && !resent && err.resend_safe(job.idempotent) {
                resent = true;
                tried.push(idx);
                node.counters.redispatches.fetch_add(1, Ordering::Relaxed);
                attempt -= 1;
            } else {
                return Err(err);
            }
        }
        match refused {
            Some((answer, body, closes)) => Ok(self.pass_on(job, answer, body, closes).await),
            None => Err(last),
        }
    }

    /// A node's "not executed" 503 that no other node could take: to the client as it came.
    /// `closes`: it says `Connection: close`, decided when it was encoded (a drain that began since
    /// is met at the next request, which hyper's path answers with the close).
    async fn pass_on(&mut self, job: &mut Job, answer: Vec<u8>, body: u64, closes: bool) -> bool {
        self.out = answer;
        let sent = self.write_out(closes).await.is_ok();
        self.ctx.core.frontend.bytes_out.fetch_add(body, Ordering::Relaxed);
        self.finish(job, 503, body, sent);
        sent && !closes
    }

    /// Read from the node until `deadline`; Ok(0): it closed.
    async fn node_read(
        &mut self,
        stream: &mut TcpStream,
        deadline: tokio::time::Instant,
    ) -> Result<usize, Option<std::io::Error>> {
        if self.nbuf.capacity() - self.nbuf.len() < READ_CHUNK / 4 {
            self.nbuf.reserve(READ_CHUNK);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut self.nbuf)).await {
            Err(_) => Err(None),
            Ok(Err(e)) => Err(Some(e)),
            Ok(Ok(n)) => Ok(n),
        }
    }

    /// Send the request on `stream` and relay the node's answer to the client. Ok(keep): the
    /// answer went out (whole, or cut: then keep is false).
    async fn exchange(
        &mut self,
        snap: &Snapshot,
        node: &Arc<Backend>,
        guard: ActiveGuard,
        mut stream: TcpStream,
        job: &mut Job,
    ) -> Result<bool, Failure> {
        let cfg = &snap.config;
        let wait = cfg.timeouts.server.0;
        // Taken before the exchange: a node marked DOWN meanwhile must still close this tunnel.
        let mut kill = job.upgrade.then(|| node.tunnel_kill_token());
        // As on hyper's path, `[timeouts] server` bounds the write and the wait for the head.
        let deadline = tokio::time::Instant::now() + wait;
        if job.body > 0 {
            node.counters.bytes_in.fetch_add(job.body, Ordering::Relaxed);
        }
        // One write: a request in one segment is never held by Nagle (the answer to the last
        // one acknowledged everything before it); a longer one's last segment could be, until
        // the node acknowledges the others. Node connections that close after every answer (as
        // real Kuzzle's) save the call.
        if self.req.len() > ONE_SEGMENT {
            let _ = stream.set_nodelay(true);
        }
        match tokio::time::timeout_at(deadline, stream.write_all(&self.req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Failure::Unsent),
            Err(_) => {
                let e = ProxyError::timed_out(node, wait);
                e.record(node, &cfg.health);
                return Err(Failure::TimedOut(e));
            }
        }
        let sent_at = job.log.is_some().then(Instant::now);
        self.nbuf.clear();
        // The answer's head (1xx interim answers skipped).
        let mut close = job.close;
        let (status, framing, closes, len, refusal) = loop {
            // A switch's kill token and the node's bytes behind its `101`. Set in the block below
            // and awaited after it: the header array (3 KiB) is not kept in this future's state.
            let mut switched = None;
            if !self.nbuf.is_empty() {
                let mut hs = wire::response_headers();
                match wire::parse_response(&self.nbuf, &mut hs, job.head_only) {
                    NodeParsed::Partial => {}
                    NodeParsed::Bad => return Err(Failure::Broke(ProxyError::broke(node))),
                    NodeParsed::Head(a) if a.status == 101 => {
                        let Some(kill) = kill.take() else {
                            // The connection now speaks something the client never asked for.
                            let e = ProxyError::unrequested_upgrade(node);
                            e.record(node, &cfg.health);
                            return Err(Failure::Final(e));
                        };
                        // Only a switch to what the client asked for (RFC 6455 4.1).
                        let Some(upgrade) = hs[..a.count]
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
                            .map(|h| h.value)
                            .filter(|v| crate::data::proxy::headers::names_websocket(v))
                        else {
                            let e = ProxyError::not_websocket(node);
                            e.record(node, &cfg.health);
                            return Err(Failure::Final(e));
                        };
                        self.out.clear();
                        let node_header = node_header(snap, node);
                        let o = wire::Out { node_header, close: false, upgrade: Some(upgrade), date: &date() };
                        wire::encode_response(&a, &hs, &o, &mut self.out);
                        switched = Some((kill, self.nbuf[a.len..].to_vec()));
                    }
                    NodeParsed::Head(a) if a.status < 200 => {
                        let n = a.len;
                        self.nbuf.drain(..n);
                        continue;
                    }
                    NodeParsed::Head(a) => {
                        if let Some(r) = job.log.as_mut() {
                            r.wait = sent_at.map(|t| t.elapsed());
                            r.request_id = hs[..a.count]
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("x-kuzzle-request-id"))
                                .and_then(|h| HeaderValue::from_bytes(h.value).ok());
                        }
                        let node_header = node_header(snap, node);
                        let refusal = match a.framing {
                            Framing::Length(n) if a.status == 503 && n <= resend::REFUSAL_BODY_MAX => Some(n),
                            _ => None,
                        };
                        // Draining: say so, so the client opens its next request elsewhere.
                        close |= self.ctx.life.shutdown.is_cancelled();
                        self.out.clear();
                        let o = wire::Out { node_header, close, upgrade: None, date: &date() };
                        wire::encode_response(&a, &hs, &o, &mut self.out);
                        break (a.status, a.framing, a.closes, a.len, refusal);
                    }
                }
            }
            if let Some((kill, early)) = switched {
                return self.switch(snap, node, guard, kill, stream, early, job, sent_at).await;
            }
            if self.nbuf.len() > cfg.limits.response_head {
                return Err(Failure::Broke(ProxyError::broke(node)));
            }
            match self.node_read(&mut stream, deadline).await {
                Ok(0) | Err(Some(_)) => return Err(Failure::Broke(ProxyError::broke(node))),
                Ok(_) => {}
                Err(None) => {
                    let e = ProxyError::timed_out(node, wait);
                    e.record(node, &cfg.health);
                    return Err(Failure::TimedOut(e));
                }
            }
        };
        node.passive_success();
        node.counters.responses.record(status);
        if let Some(n) = refusal {
            return self.refusal(cfg, node, stream, status, len, n, closes, close, job).await;
        }
        // The first bytes of the body before the head goes out: a node that sends a head and
        // then closes (or stalls) gets the client a 502 (504), not an answer cut at once.
        let needs_body = match framing {
            Framing::Length(n) => n > 0,
            Framing::Chunked | Framing::UntilClose => true,
            Framing::None => false,
        };
        if needs_body && self.nbuf.len() == len {
            match self.node_read(&mut stream, tokio::time::Instant::now() + wait).await {
                // A body that ends with the close may be empty.
                Ok(0) if framing == Framing::UntilClose => {}
                Ok(0) | Err(Some(_)) => {
                    let e = ProxyError::broke(node);
                    e.record(node, &cfg.health);
                    return Err(Failure::Final(e));
                }
                Ok(_) => {}
                Err(None) => {
                    let e = ProxyError::timed_out(node, wait);
                    e.record(node, &cfg.health);
                    return Err(Failure::TimedOut(e));
                }
            }
        }
        // A chunked body malformed from its first bytes is the node's fault before the head went
        // out: a 502, as on hyper's path (which reads the first chunk before the head goes out).
        if framing == Framing::Chunked && wire::Chunks::default().feed(&self.nbuf[len..]).is_err() {
            let e = ProxyError::broke(node);
            e.record(node, &cfg.health);
            return Err(Failure::Final(e));
        }
        let relayed = self.relay(cfg, &mut stream, framing, len, close).await;
        let (whole, payload, reusable) = match relayed {
            Ok((payload, reusable)) => (true, payload, reusable),
            Err((payload, why)) => {
                if why != "CD" {
                    // The node broke or stalled mid-body (its connection is never reused).
                    node.counters.response_errors.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(r) = job.log.as_mut() {
                    r.termination = why;
                }
                (false, payload, false)
            }
        };
        self.ctx.core.frontend.bytes_out.fetch_add(payload, Ordering::Relaxed);
        node.counters.bytes_out.fetch_add(payload, Ordering::Relaxed);
        // A connection that was asked to switch and did not is not trusted with another request.
        if whole && reusable && !closes && !job.upgrade {
            node.release_raw(stream);
        }
        drop(guard);
        self.finish(job, status, payload, whole);
        Ok(whole && !close)
    }

    /// The node switched to a WebSocket (its `101` head is in `self.out`, `early` is what it sent
    /// behind it): the answer goes to the client and the lane hands both sockets to a tunnel
    /// (`Ok(false)`: the lane's loop ends, [`Lane::switched`] is set).
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &mut self,
        snap: &Snapshot,
        node: &Arc<Backend>,
        guard: ActiveGuard,
        kill: tokio_util::sync::CancellationToken,
        stream: TcpStream,
        early: Vec<u8>,
        job: &mut Job,
        sent_at: Option<Instant>,
    ) -> Result<bool, Failure> {
        node.passive_success();
        node.counters.responses.record(101);
        self.ctx.core.frontend.responses.record(101);
        let log = job.log.take().map(|mut r| {
            r.wait = sent_at.map(|t| t.elapsed());
            Box::new(r.into_websocket(node.clone()))
        });
        let sent = self.io.write_all(&self.out).await.is_ok() && self.io.flush().await.is_ok();
        if !sent {
            // The client left before its answer: the session's line says so, as on hyper's path.
            if let Some(r) = log {
                r.never_opened();
            }
            return Ok(false);
        }
        // Frames go out as they come, as on every other tunnel.
        let _ = stream.set_nodelay(true);
        let opts = tunnel::RunOpts::of(&snap.config, true);
        let tunnel = Tunnel { opts, guard, kill, log };
        self.switched = Some(Switched { node: Prefixed::new(stream, early), tunnel });
        Ok(false)
    }
}

/// Write a connection's last bytes. On a plain socket the answer and the FIN leave in one
/// segment: `send(MSG_MORE)` holds the bytes, `shutdown(SHUT_WR)` tacks the FIN on and sends both.
/// A FIN of its own cost a loopback segment, the client's ACK of it and a wake-up of the client
/// per closed connection (`SYSCALLS=1 bench/perf.sh`: 12 -> 10 segments per new-connection request).
/// Not the held bytes and `close()` alone: a close with client bytes unread in the kernel resets
/// the connection and drops what it holds unsent; the shutdown sends them first.
async fn write_last<S: Rewind>(io: &mut SendTimeout<S>, buf: &[u8]) -> std::io::Result<()> {
    use rustix::net::{send, shutdown, SendFlags, Shutdown};
    let mut from = 0;
    if let Some(t) = io.get_ref().plain() {
        // NOSIGNAL: a client that reset is an error here, never a SIGPIPE.
        let more = || send(t, buf, SendFlags::MORE | SendFlags::NOSIGNAL).map_err(std::io::Error::from);
        match t.try_io(tokio::io::Interest::WRITABLE, more) {
            Ok(n) if n == buf.len() => {
                // A failure here (the client reset) leaves nothing to send.
                let _ = shutdown(t, Shutdown::Write);
                return Ok(());
            }
            // The rest goes below, without MSG_MORE: that write sends what is held.
            Ok(n) => from = n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    io.write_all(&buf[from..]).await
}

/// What a request must be under to take the lane: `[limits]`, and `[balance] resend_body` for
/// a body (read whole so that it can be sent again).
fn limits(cfg: &crate::control::config::Config) -> wire::Limits {
    let l = &cfg.limits;
    wire::Limits { uri: l.uri, headers: l.headers, head: l.request_head, body: cfg.balance.resend_body as u64 }
}

/// `[gateway] node_header` and the node's name, when the answers name their node.
fn node_header<'a>(snap: &'a Snapshot, node: &'a Backend) -> Option<(&'a str, &'a [u8])> {
    match (&snap.node_header, &node.name_value) {
        (Some(n), Some(v)) => Some((n.as_str(), v.as_bytes())),
        _ => None,
    }
}

/// Today's `Date` value (RFC 9110 5.6.7), formatted once a second per worker thread.
fn date() -> [u8; 29] {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let (at, v) = d.get();
        if at == secs {
            return v;
        }
        let mut v = [b' '; 29];
        let s = httpdate::fmt_http_date(now);
        let n = s.len().min(29);
        v[..n].copy_from_slice(&s.as_bytes()[..n]);
        d.set((secs, v));
        v
    })
}
