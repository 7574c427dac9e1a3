//! Core: one Kuzzle node as the proxy sees it: address, live state (atomics), counters, connection pool.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::body::Counted;
use super::counters::NodeCounters;
use super::health::HealthState;
use crate::control::config::HealthSection;

/// Body sent to a node: the client's streamed body, or one held in memory (health checks, small
/// bodies kept so that their request can be re-sent, re-sent GETs).
pub type UpBody = Either<Counted<Incoming>, Full<Bytes>>;

/// A connection to a node, ready to carry one request at a time.
pub type Sender = http1::SendRequest<UpBody>;

/// Idle connections kept per node (shared out between the workers' pools); more than this are
/// closed when released.
const MAX_IDLE_PER_NODE: usize = 512;

/// Idle connections of one node, one queue per worker: a connection's task runs on the worker
/// that opened it, so a request only takes connections of its own worker (no cross-thread
/// wake-up per request).
struct Pools<C>(Box<[ArrayQueue<(C, Instant)>]>);

impl<C> Pools<C> {
    /// One queue per worker of `workers` (at least one).
    fn new(workers: usize) -> Pools<C> {
        let n = workers.max(1);
        Pools((0..n).map(|_| ArrayQueue::new((MAX_IDLE_PER_NODE / n).max(16))).collect())
    }

    /// This worker's queue.
    #[inline]
    fn mine(&self) -> &ArrayQueue<(C, Instant)> {
        &self.0[super::worker::index() % self.0.len()]
    }

    fn len(&self) -> usize {
        self.0.iter().map(ArrayQueue::len).sum()
    }

    /// Close what is past `pool_idle` or no longer `alive`. Bounded: one pass over what is in
    /// the pool now.
    fn expire(&self, pool_idle: Duration, alive: impl Fn(&C) -> bool) {
        for q in self.0.iter() {
            for _ in 0..q.len() {
                let Some((c, since)) = q.pop() else { break };
                if since.elapsed() < pool_idle && alive(&c) {
                    // Still fresh: back in the pool (a full pool drops it, like release does).
                    let _ = q.push((c, since));
                }
            }
        }
    }

    fn clear(&self) {
        for q in self.0.iter() {
            while q.pop().is_some() {}
        }
    }
}

/// Operator's override of a node, set through the ops listener; survives reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Normal: traffic as health allows.
    Ready = 0,
    /// No new traffic; existing requests and tunnels continue.
    Drain = 1,
    /// No traffic at all; tunnels are closed.
    Maint = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// Whether the node is still a member of the configuration / cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Configured or discovered: takes new traffic when healthy.
    Active = 0,
    /// Removed (reload, `cluster:remove`, heartbeat timeout): existing traffic only.
    Draining = 1,
}

/// How a node came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[[node]]` of the configuration file.
    Static,
    /// Redis pub/sub or the plugin's discovery set.
    Plugin,
    /// A Kuzzle 2 ID card.
    Kuzzle2,
}

/// One node. Shared as `Arc<Backend>` between snapshots, in-flight requests and tunnels, so a
/// removed node lives until its last connection ends.
pub struct Backend {
    /// Node name: URL prefix, stats row, `node_header` value; its counters are kept under it.
    pub name: String,
    /// `name` as a header value, made once: the `[gateway] node_header` of every response it
    /// serves (None for a name that is no valid header value).
    pub name_value: Option<http::HeaderValue>,
    /// Where requests and checks connect (0.0.0.0:port while `unresolved`).
    pub addr: SocketAddr,
    /// How the node came to be known (stats, and what a membership source may remove).
    pub origin: Origin,
    /// A `[[node]]` whose host name has no address yet: DOWN, never checked nor picked, shown as
    /// "DNS: no address" (its `addr` is a placeholder).
    pub unresolved: bool,
    /// Counters; shared with any earlier or later `Backend` of the same name so history survives.
    pub counters: Arc<NodeCounters>,
    /// UP/DOWN and check history, written by the checker and passive failures.
    pub health: HealthState,
    /// Operator state (`AdminState` as u8): DRAIN and MAINT keep new traffic away.
    admin: AtomicU8,
    /// Epoch seconds of the last operator state change (0: never).
    admin_since: AtomicU64,
    /// `Membership` as u8: a draining node keeps its traffic but takes no new.
    membership: AtomicU8,
    /// Open requests plus tunnels: what leastconn compares.
    active: AtomicU64,
    /// Cancelled when the node must drop its tunnels (marked DOWN, MAINT); replaced afterwards.
    tunnel_kill: ArcSwap<CancellationToken>,
    /// Stops this node's background tasks (health checks) when it leaves for good.
    pub tasks: CancellationToken,
    /// Keep-alive connections to the node, one queue per worker, reused by later requests.
    idle: Pools<Sender>,
    /// The fast lane's keep-alive connections (plain sockets it writes requests to itself), one
    /// queue per worker: hyper's cannot carry its requests, nor it hyper's.
    raw: Pools<TcpStream>,
    /// HTTPS to this node (`[[node]] tls`, `[cluster] node_tls`); set by the registry at creation.
    pub tls: Option<crate::core::node_tls::NodeTls>,
    /// WebSocket rebalancing: draws that close some of this node's tunnels (`[fleet]`).
    pub shed: super::shed::Shed,
    /// Tunnels the other gateways of the fleet hold on this node, as of their last heartbeats
    /// (`[fleet]`; 0 without): leastconn counts them, so gateways do not all pick the same node.
    remote: AtomicU64,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).field("addr", &self.addr).finish()
    }
}

impl Backend {
    pub fn new(
        name: String,
        addr: SocketAddr,
        origin: Origin,
        counters: Arc<NodeCounters>,
        initially_up: bool,
        workers: usize,
    ) -> Self {
        let kill = CancellationToken::new();
        Backend {
            shed: super::shed::Shed::new(&kill),
            remote: AtomicU64::new(0),
            name_value: http::HeaderValue::from_str(&name).ok(),
            name,
            addr,
            origin,
            unresolved: false,
            counters,
            health: HealthState::new(initially_up),
            admin: AtomicU8::new(AdminState::Ready as u8),
            admin_since: AtomicU64::new(0),
            membership: AtomicU8::new(Membership::Active as u8),
            active: AtomicU64::new(0),
            tunnel_kill: ArcSwap::from_pointee(kill),
            tasks: CancellationToken::new(),
            idle: Pools::new(workers),
            raw: Pools::new(workers),
            tls: None,
        }
    }

    /// A static node `name` at 127.0.0.1:`port`, UP, with fresh counters (unit tests).
    #[cfg(test)]
    pub(crate) fn for_test(name: &str, port: u16) -> Self {
        Backend::new(name.into(), SocketAddr::from(([127, 0, 0, 1], port)), Origin::Static, Default::default(), true, 1)
    }

    /// A static node whose host name did not resolve: a placeholder that stays DOWN.
    pub fn unresolved(name: String, port: u16, counters: Arc<NodeCounters>) -> Self {
        let mut b = Backend::new(name, SocketAddr::from(([0, 0, 0, 0], port)), Origin::Static, counters, false, 1);
        b.unresolved = true;
        b
    }

    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    pub fn set_admin(&self, s: AdminState) {
        let old = AdminState::from_u8(self.admin.swap(s as u8, Ordering::Relaxed));
        if s != old {
            self.admin_since.store(crate::util::epoch_secs(), Ordering::Relaxed);
        }
        if s == AdminState::Maint && old != AdminState::Maint {
            self.kill_tunnels();
        }
    }

    /// When the operator state was set, as the old process recorded it (binary upgrade).
    pub fn restore_admin_since(&self, epoch: u64) {
        self.admin_since.store(epoch, Ordering::Relaxed);
    }

    /// Epoch seconds of the last operator state change (0: never changed).
    pub fn admin_since(&self) -> u64 {
        self.admin_since.load(Ordering::Relaxed)
    }

    pub fn membership(&self) -> Membership {
        if self.membership.load(Ordering::Relaxed) == Membership::Draining as u8 {
            Membership::Draining
        } else {
            Membership::Active
        }
    }

    pub fn set_membership(&self, m: Membership) {
        self.membership.store(m as u8, Ordering::Relaxed);
    }

    /// May this node take a new request or tunnel?
    #[inline]
    pub fn eligible(&self) -> bool {
        self.health.is_up()
            && self.admin.load(Ordering::Relaxed) == AdminState::Ready as u8
            && self.membership.load(Ordering::Relaxed) == Membership::Active as u8
    }

    /// Why the node takes no traffic, for the 503 a prefixed request gets (checked in the order
    /// an operator acts on: leaving, shutting down, maintenance, down).
    pub fn unavailable_reason(&self) -> &'static str {
        if self.membership() == Membership::Draining {
            "is leaving the cluster"
        } else if self.health.leaving() {
            "is shutting down"
        } else if self.admin() != AdminState::Ready {
            "is in maintenance"
        } else {
            "is down"
        }
    }

    /// The node's share of new traffic, in percent of a full node's: 0 when it takes none, 100
    /// when it takes its full share, in between during `[health] slowstart` after it came UP
    /// (at least 1: a node in slow start always gets some). Times in epoch milliseconds; a node
    /// whose first UP came before `from_ms` (found in the gateway's first seconds: its initial
    /// membership, running already) has no slow start, as haproxy never applies it at start.
    #[inline]
    pub fn weight(&self, slowstart_ms: u64, now_ms: u64, from_ms: u64) -> u32 {
        if !self.eligible() {
            return 0;
        }
        if slowstart_ms == 0 {
            return FULL_WEIGHT;
        }
        let up_at = match self.health.came_up() {
            Some((at, first)) if !(first && at < from_ms) => at,
            _ => return FULL_WEIGHT,
        };
        let w = ramp(now_ms.saturating_sub(up_at), slowstart_ms);
        if w == FULL_WEIGHT {
            self.health.ramp_done();
        }
        w
    }

    /// Open requests plus tunnels.
    #[inline]
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Count one request or tunnel on this node until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.session_started(now);
        ActiveGuard { backend: self.clone() }
    }

    /// A token cancelled when this node's tunnels must close.
    pub fn tunnel_kill_token(&self) -> CancellationToken {
        (**self.tunnel_kill.load()).clone()
    }

    /// Close every tunnel currently open on this node (with a 1001 close frame for WebSockets).
    pub fn kill_tunnels(&self) {
        let new = Arc::new(CancellationToken::new());
        let old = self.tunnel_kill.swap(new.clone());
        self.shed.rebase(&new);
        old.cancel();
    }

    /// Ask `n` of this node's tunnels opened before `before_ms` (epoch ms) to close with 1012
    /// (WebSocket rebalancing); see [`super::shed::Shed`].
    pub fn draw_tunnels(&self, n: u64, before_ms: u64) {
        self.shed.draw(n, before_ms, &self.tunnel_kill.load());
    }

    /// Tunnels the rest of the fleet holds on this node (last heartbeats).
    #[inline]
    pub fn remote(&self) -> u64 {
        self.remote.load(Ordering::Relaxed)
    }

    /// Set by the fleet task after each heartbeat it reads.
    pub fn set_remote(&self, n: u64) {
        self.remote.store(n, Ordering::Relaxed);
    }

    /// What leastconn compares: this gateway's open requests and tunnels on the node, plus the
    /// tunnels the rest of the fleet holds there.
    #[inline]
    pub fn load(&self) -> u64 {
        self.active() + self.remote()
    }

    /// An idle pooled connection of this worker that is ready now, if any (no await: the common
    /// case of every request). Stale ones met on the way are closed.
    pub fn take_idle(&self, pool_idle: Duration) -> Option<Sender> {
        let (sender, since) = self.pop_fresh(pool_idle)?;
        if sender.is_ready() {
            return Some(sender);
        }
        // Still finishing an upload its node answered early: back in the pool for `checkout`,
        // which may wait for it.
        let _ = self.idle.mine().push((sender, since));
        None
    }

    /// This worker's next pooled connection that is neither past `pool_idle` nor closed (the
    /// stale ones met on the way are dropped).
    fn pop_fresh(&self, pool_idle: Duration) -> Option<(Sender, Instant)> {
        let idle = self.idle.mine();
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < pool_idle && !sender.is_closed() {
                return Some((sender, since));
            }
        }
        None
    }

    /// An idle pooled connection (`reused` = true), or a new one. Errors are connect failures:
    /// nothing was sent.
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        pool_idle: Duration,
        max_head: usize,
    ) -> Result<(Sender, bool), ConnectError> {
        while let Some((mut sender, _)) = self.pop_fresh(pool_idle) {
            // A released connection is normally ready at once; it may still be finishing the
            // upload of a request body its node answered early: wait a bounded time, then drop it.
            // The common case needs no timer at all.
            if sender.is_ready() {
                return Ok((sender, true));
            }
            if let Ok(Ok(())) = tokio::time::timeout(connect_timeout, sender.ready()).await {
                return Ok((sender, true));
            }
        }
        self.connect(connect_timeout, max_head).await.map(|s| (s, false))
    }

    /// Real traffic failed on this node (connect refused, reset, timeout). Lock-free: the node's
    /// checker applies it (it can mark the node DOWN before the next active check) unless
    /// `[health] passive` is off.
    pub fn passive_failure(&self, health: &HealthSection) {
        if health.passive {
            self.health.note_passive_failure();
        }
    }

    /// Real traffic succeeded on this node.
    #[inline]
    pub fn passive_success(&self) {
        self.health.note_passive_success();
    }

    /// Idle pooled connections right now, every worker's (stats, tests).
    pub fn idle_connections(&self) -> usize {
        self.idle.len() + self.raw.len()
    }

    /// A fresh connection (also used by the health checker). A response head over `max_head`
    /// bytes fails the exchange (the client gets a 502), so a node cannot make the gateway hold
    /// an unbounded head.
    pub async fn connect(&self, connect_timeout: Duration, max_head: usize) -> Result<Sender, ConnectError> {
        let stream = self.connect_tcp(connect_timeout).await?;
        // hyper may write a request's head and body apart: Nagle must not hold the second.
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => handshake(NodeStream(stream), max_head).await,
            Some(tls) => match tls.connect(stream, self.addr.ip(), connect_timeout).await {
                Ok(s) => handshake(s, max_head).await,
                Err(crate::core::node_tls::Error::Timeout) => Err(ConnectError::Timeout),
                Err(crate::core::node_tls::Error::Handshake) => Err(ConnectError::Tls),
            },
        }
    }

    /// A plain TCP connection to the node (no TLS: the fast lane, and the start of `connect`),
    /// TCP_NODELAY left to the caller (the lane writes a request at once: a short one needs none).
    pub async fn connect_tcp(&self, connect_timeout: Duration) -> Result<TcpStream, ConnectError> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(ConnectError::Refused),
            Ok(Err(e)) if is_local_shortage(&e) => return Err(ConnectError::Local(e.kind())),
            Ok(Err(e)) => return Err(ConnectError::Io(e.kind())),
            Ok(Ok(s)) => s,
        };
        Ok(stream)
    }

    /// A fast-lane connection of this worker idle for less than `pool_idle` and with nothing to
    /// read, if any: one with bytes waiting (a late body, a node's 408) or closed by its node is
    /// dropped on the way. The reactor's readiness is looked at first: a connection it has seen
    /// nothing on is taken without a system call.
    pub fn take_raw(&self, pool_idle: Duration) -> Option<TcpStream> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let idle = self.raw.mine();
        while let Some((s, since)) = idle.pop() {
            if since.elapsed() < pool_idle && (s.poll_read_ready(&mut cx).is_pending() || quiet(&s)) {
                return Some(s);
            }
        }
        None
    }

    /// Give a fast-lane connection back after a complete exchange.
    pub fn release_raw(&self, stream: TcpStream) {
        let _ = self.raw.mine().push((stream, Instant::now()));
    }

    /// Give a connection back after a complete exchange.
    pub fn release(&self, sender: Sender) {
        if !sender.is_closed() {
            let _ = self.idle.mine().push((sender, Instant::now()));
        }
    }

    /// Drop every pooled idle connection (node removed).
    pub fn clear_pool(&self) {
        self.idle.clear();
        self.raw.clear();
    }

    /// Close pooled connections idle for `pool_idle` or closed by the node, so an idle gateway
    /// holds no fd for them (checkout skips them too, but only when traffic comes). Bounded: one
    /// pass over what is in the pool now.
    pub fn expire_idle(&self, pool_idle: Duration) {
        self.idle.expire(pool_idle, |s| !s.is_closed());
        // Off the request path: one non-blocking read each.
        self.raw.expire(pool_idle, quiet);
    }
}

/// Has this idle socket nothing to read? One the node closed reads its end, and one with a byte
/// it should not have sent is out of step: either way it is done.
fn quiet(s: &TcpStream) -> bool {
    matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A node's weight when it takes its full share (weights are percents of it).
pub const FULL_WEIGHT: u32 = 100;

/// Slow start: the weight `elapsed_ms` into a ramp of `slowstart_ms`, growing linearly from 1 to
/// [`FULL_WEIGHT`] (haproxy's `slowstart`).
pub fn ramp(elapsed_ms: u64, slowstart_ms: u64) -> u32 {
    if slowstart_ms == 0 || elapsed_ms >= slowstart_ms {
        return FULL_WEIGHT;
    }
    ((u64::from(FULL_WEIGHT) * elapsed_ms / slowstart_ms) as u32).clamp(1, FULL_WEIGHT - 1)
}

/// Counts one open request or tunnel on a node for leastconn and stats.
#[derive(Debug)]
pub struct ActiveGuard {
    /// The node counted; its active count drops when the guard does.
    pub backend: Arc<Backend>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Out of a local resource (open files, kernel buffers, memory): the gateway's own problem, which
/// says nothing about the node it was connecting to.
pub fn is_local_shortage(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|n| {
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].iter().any(|x| x.raw_os_error() == n)
    })
}

/// HTTP/1.1 on a fresh node connection (plain or TLS).
async fn handshake<S>(stream: S, max_head: usize) -> Result<Sender, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(max_head.max(8192))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ConnectError::Io(std::io::ErrorKind::Other))?;
    // The connection task ends when the node closes it or every `Sender` is dropped. Boxed: the
    // connection is over a kilobyte, and spawning it inline copied it whole several times (one
    // connection per request when nodes close after every answer, as Kuzzle 2 does).
    tokio::spawn(Box::pin(conn.with_upgrades()));
    Ok(sender)
}

/// A plain connection to a node as hyper's client holds it: the socket, but for a shutdown that
/// does nothing. hyper shuts a connection down before dropping it, one system call per request
/// when the node closes after every answer (as Kuzzle 2 does) for nothing the close does not do
/// itself: the answer was read whole, so the close sends the same FIN. A tunnel takes the socket
/// back out ([`NodeStream::into_inner`]) and half-closes it for real.
#[derive(Debug)]
pub struct NodeStream(
    /// The socket itself: every read and write goes to it unchanged.
    TcpStream,
);

impl NodeStream {
    /// The socket, shutdowns and all.
    pub fn into_inner(self) -> TcpStream {
        self.0
    }
}

impl tokio::io::AsyncRead for NodeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for NodeStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Why a connection to a node could not be made (nothing was sent: safe to retry anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The gateway ran out of a local resource (EMFILE, ENFILE, ENOBUFS, ENOMEM): never a mark
    /// against the node.
    #[error("no local resource to connect with: {0}")]
    Local(std::io::ErrorKind),
    #[error("connection refused")]
    Refused,
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(std::io::ErrorKind),
    /// The TLS handshake failed (certificate not trusted, wrong name, no TLS on the port).
    #[error("TLS handshake failed")]
    Tls,
}
