//! Data plane wiring: the listening sockets (bound, inherited on upgrade, re-bound on reload only
//! when their address changed), the accept loops, and the graceful shutdown sequence.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::proxy::{self, ClientInfo, Scheme};
use crate::state::Gateway;

/// Errors starting the gateway or (re)binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
}

/// The three listeners a gateway can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Clients, `[gateway] listen`.
    Http,
    /// Ops, `[stats] listen`.
    Stats,
    /// Clients over TLS, `[tls] listen`.
    Tls,
}

impl ListenerKind {
    pub fn what(self) -> &'static str {
        match self {
            ListenerKind::Http => "client listener",
            ListenerKind::Stats => "stats listener",
            ListenerKind::Tls => "TLS listener",
        }
    }

    /// The address the configuration asks for (None: this listener is not configured).
    pub fn configured(self, config: &Config) -> Option<SocketAddr> {
        match self {
            ListenerKind::Http => Some(config.gateway.listen),
            ListenerKind::Stats => Some(config.stats.listen),
            ListenerKind::Tls => config.tls.as_ref().map(|t| t.listen),
        }
    }

    pub const ALL: [ListenerKind; 3] = [ListenerKind::Http, ListenerKind::Stats, ListenerKind::Tls];
}

/// Listening sockets, bound up front (or inherited from an older process on upgrade).
pub struct Listeners {
    pub http: std::net::TcpListener,
    pub stats: std::net::TcpListener,
    pub tls: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Bind every listener the configuration names.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        Ok(Listeners {
            http: bind_std(ListenerKind::Http.what(), config.gateway.listen)?,
            stats: bind_std(ListenerKind::Stats.what(), config.stats.listen)?,
            tls: match &config.tls {
                Some(t) => Some(bind_std(ListenerKind::Tls.what(), t.listen)?),
                None => None,
            },
        })
    }
}

/// Bind and listen without a runtime: a non-blocking std listener (the reload path is sync).
pub fn bind_std(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(4096)
    })
    .and_then(|l| l.into_std());
    sock.map_err(|source| StartError::Bind { what, addr, source })
}

/// One serving listener.
struct Live {
    kind: ListenerKind,
    /// The address from the configuration (what reloads compare), not the bound one (port 0).
    configured: SocketAddr,
    local: SocketAddr,
    /// A duplicate of the socket the accept loop owns: handed to a new process on upgrade.
    fd: std::net::TcpListener,
    /// Stops this accept loop only; its connections are left alone.
    stop: CancellationToken,
}

/// The listening side of a running gateway. Written by the control plane (start, reload, upgrade
/// handover) under a short sync lock; accept loops never take it.
#[derive(Default)]
pub struct LiveListeners {
    live: Mutex<Vec<Live>>,
    /// The TLS acceptor, swapped on reload (new certificate files) without touching the socket.
    tls: ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// Connection cap shared by the client accept loops (`gateway.max_connections`, fixed at start).
    limit: OnceLock<Arc<Semaphore>>,
    /// Serialises reloads from all triggers (file watcher, SIGHUP, `POST /reload`).
    pub reload_lock: Mutex<()>,
    /// Cancelled once a new process took over the listening sockets (binary upgrade).
    pub handed_over: CancellationToken,
}

impl LiveListeners {
    /// Bound addresses, by kind.
    pub fn local_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        crate::util::lock(&self.live).iter().find(|l| l.kind == kind).map(|l| l.local)
    }

    /// Call `f` with the serving sockets (for fd passing); the lock is held only during `f`.
    pub fn with_fds<T>(&self, f: impl FnOnce(&[(ListenerKind, SocketAddr, BorrowedFd<'_>)]) -> T) -> T {
        let live = crate::util::lock(&self.live);
        let fds: Vec<_> = live.iter().map(|l| (l.kind, l.configured, l.fd.as_fd())).collect();
        f(&fds)
    }

    /// Stop every accept loop (the sockets close once this process no longer holds them).
    pub fn stop_all(&self) {
        for l in crate::util::lock(&self.live).drain(..) {
            l.stop.cancel();
        }
    }
}

/// New listeners bound (and a TLS acceptor built) for a configuration, not yet serving: made
/// before the configuration is applied so that a failure refuses the reload.
pub struct Rebind {
    new: Vec<(ListenerKind, SocketAddr, std::net::TcpListener)>,
    /// Listeners to stop: their address changed, or the listener is gone from the configuration.
    retire: Vec<ListenerKind>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Rebind {
    /// Human summary for the reload log line.
    pub fn summary(&self) -> Vec<String> {
        let mut s: Vec<String> = self.new.iter().map(|(k, a, _)| format!("{} now on {a}", k.what())).collect();
        for k in &self.retire {
            if !self.new.iter().any(|(n, _, _)| n == k) {
                s.push(format!("{} closed", k.what()));
            }
        }
        s
    }
}

/// Bind what `config` needs that is not served yet; the old sockets keep serving meanwhile.
pub fn prepare_rebind(gw: &Gateway, config: &Config) -> Result<Rebind, StartError> {
    let current: Vec<(ListenerKind, SocketAddr)> =
        crate::util::lock(&gw.listeners.live).iter().map(|l| (l.kind, l.configured)).collect();
    let mut plan = Rebind { new: Vec::new(), retire: Vec::new(), tls: None };
    for kind in ListenerKind::ALL {
        let want = kind.configured(config);
        let have = current.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a);
        if want == have {
            continue;
        }
        if let Some(addr) = want {
            plan.new.push((kind, addr, bind_std(kind.what(), addr)?));
        }
        if have.is_some() {
            plan.retire.push(kind);
        }
    }
    // Certificates are re-read on every reload: renewed files at the same paths take effect.
    if let Some(t) = &config.tls {
        plan.tls = Some(crate::tls::acceptor(t).map_err(StartError::Tls)?);
    }
    Ok(plan)
}

/// Start serving the new listeners, then stop the retired ones: a changed address is served
/// before the old one closes, and no connection of the old one is touched.
pub fn commit_rebind(gw: &Arc<Gateway>, plan: Rebind) {
    gw.listeners.tls.store(plan.tls.map(Arc::new));
    let mut started = Vec::new();
    let mut failed = Vec::new();
    for (kind, configured, l) in plan.new {
        match serve_listener(gw, kind, configured, l) {
            Ok(live) => {
                tracing::info!(listener = kind.what(), addr = %live.local, "listening (new address)");
                started.push(live);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot serve a re-bound listener: keeping the old one");
                failed.push(kind);
            }
        }
    }
    let mut live = crate::util::lock(&gw.listeners.live);
    // Only retire a listener whose replacement is serving: never leave a kind with none.
    for kind in plan.retire.into_iter().filter(|k| !failed.contains(k)) {
        if let Some(pos) = live.iter().position(|l| l.kind == kind) {
            let old = live.remove(pos);
            old.stop.cancel();
            tracing::info!(listener = kind.what(), addr = %old.local, "old listener closed");
        }
    }
    live.extend(started);
}

/// Spawn the accept loop of one listener; returns its record (not yet registered).
fn serve_listener(
    gw: &Arc<Gateway>,
    kind: ListenerKind,
    configured: SocketAddr,
    std_listener: std::net::TcpListener,
) -> Result<Live, StartError> {
    let err = |source| StartError::Bind { what: kind.what(), addr: configured, source };
    std_listener.set_nonblocking(true).map_err(err)?;
    let local = std_listener.local_addr().map_err(err)?;
    let fd = std_listener.try_clone().map_err(err)?;
    let listener = TcpListener::from_std(std_listener).map_err(err)?;
    let stop = gw.shutdown.child_token();
    match kind {
        ListenerKind::Http => {
            gw.background.spawn(accept_loop(gw.clone(), listener, Scheme::Http, stop.clone()));
        }
        ListenerKind::Tls => {
            gw.background.spawn(accept_loop(gw.clone(), listener, Scheme::Https, stop.clone()));
        }
        ListenerKind::Stats => {
            gw.background.spawn(crate::ops::serve(gw.clone(), listener, stop.clone()));
        }
    }
    Ok(Live { kind, configured, local, fd, stop })
}

/// A running gateway.
pub struct Handle {
    pub gw: Arc<Gateway>,
    pub http_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
}

/// Start everything on already-bound listeners.
pub async fn start_with(config: Config, listeners: Listeners) -> Result<Handle, StartError> {
    let tls = match &config.tls {
        Some(t) => Some(crate::tls::acceptor(t).map_err(StartError::Tls)?),
        None => None,
    };
    let gw = Gateway::new(config.clone());
    crate::health::install(&gw);
    let _ = gw.listeners.limit.set(Arc::new(Semaphore::new(config.gateway.max_connections.max(1))));
    gw.listeners.tls.store(tls.map(Arc::new));
    let tls_listen = config.tls.as_ref().map(|t| t.listen);
    let http_listen = config.gateway.listen;
    let stats_listen = config.stats.listen;
    gw.apply_config(config);

    let mut live = vec![
        serve_listener(&gw, ListenerKind::Http, http_listen, listeners.http)?,
        serve_listener(&gw, ListenerKind::Stats, stats_listen, listeners.stats)?,
    ];
    if let (Some(l), Some(addr)) = (listeners.tls, tls_listen) {
        live.push(serve_listener(&gw, ListenerKind::Tls, addr, l)?);
    }
    let http_addr = live[0].local;
    let stats_addr = live[1].local;
    let tls_addr = live.get(2).map(|l| l.local);
    crate::util::lock(&gw.listeners.live).extend(live);

    crate::control::start(&gw);
    // Redis membership: idles until a [cluster] section is configured, follows reloads.
    crate::cluster::start(&gw);
    tracing::info!(%http_addr, %stats_addr, ?tls_addr, nodes = gw.snapshot.load().nodes.len(), "kuzzle-gateway serving");
    Ok(Handle { gw, http_addr, stats_addr, tls_addr })
}

/// Bind the configured listeners and start.
pub async fn start(config: Config) -> Result<Handle, StartError> {
    let l = Listeners::bind(&config)?;
    start_with(config, l).await
}

impl Handle {
    /// Graceful stop: stop accepting, let requests finish, close tunnels after the grace period
    /// with a close frame, and give up after `hard_stop_after`.
    pub async fn shutdown(self) {
        shutdown(&self.gw).await;
    }
}

pub async fn shutdown(gw: &Arc<Gateway>) {
    let cfg = gw.config();
    tracing::info!(grace = ?cfg.gateway.shutdown_grace.0, "shutting down: no new connections");
    gw.shutdown.cancel();
    gw.listeners.stop_all();
    gw.tracker.close();
    gw.background.close();
    if tokio::time::timeout(cfg.gateway.shutdown_grace.0, gw.tracker.wait()).await.is_err() {
        tracing::info!(open = gw.tracker.len(), "grace period over: closing tunnels");
        gw.close_tunnels.cancel();
        let hard = cfg.gateway.hard_stop_after.0.min(Duration::from_secs(30));
        if tokio::time::timeout(hard, gw.tracker.wait()).await.is_err() {
            tracing::warn!(open = gw.tracker.len(), "connections still open: exiting anyway");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), gw.background.wait()).await;
    // Close idle keep-alive connections to the nodes now rather than when the process exits.
    for b in gw.all_nodes() {
        b.clear_pool();
    }
}

/// After a binary upgrade: this process no longer accepts; in-flight requests finish, WebSocket
/// tunnels stay until their clients or nodes close them, or until `hard_stop_after`.
pub async fn drain_after_handover(gw: &Arc<Gateway>, stop_now: impl std::future::Future<Output = ()>) {
    let cfg = gw.config();
    gw.listeners.stop_all();
    gw.shutdown.cancel();
    gw.tracker.close();
    gw.background.close();
    tracing::info!(open = gw.tracker.len(), hard_stop_after = ?cfg.gateway.hard_stop_after.0, "handed over: draining");
    tokio::select! {
        _ = gw.tracker.wait() => tracing::info!("last connection closed"),
        _ = tokio::time::sleep(cfg.gateway.hard_stop_after.0) => {
            tracing::info!(open = gw.tracker.len(), "hard_stop_after reached: closing tunnels");
        }
        _ = stop_now => tracing::info!(open = gw.tracker.len(), "stop signal while draining: closing tunnels"),
    }
    gw.close_tunnels.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), gw.tracker.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), gw.background.wait()).await;
}

/// Accept clients until `stop`; each connection is served on the gateway's tracker and outlives
/// the loop (a re-bound or handed-over listener leaves its connections alone).
pub async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener, scheme: Scheme, stop: CancellationToken) {
    let limit =
        gw.listeners.limit.get_or_init(|| Arc::new(Semaphore::new(gw.config().gateway.max_connections.max(1)))).clone();
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
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        // Read per connection: a reload with new certificates applies to the next handshake.
        let tls = if scheme == Scheme::Https { gw.listeners.tls.load_full() } else { None };
        gw.tracker.spawn(async move {
            let client = ClientInfo { addr, scheme };
            match tls {
                None if scheme == Scheme::Https => tracing::warn!("TLS connection without a TLS configuration"),
                None => serve_conn(gw2, stream, client, Some(permit)).await,
                Some(acceptor) => {
                    if let Some(s) = tls_handshake(&gw2, (*acceptor).clone(), stream).await {
                        serve_conn(gw2, s, client, Some(permit)).await;
                    }
                }
            }
        });
    }
}

async fn tls_handshake(
    gw: &Gateway,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let t = gw.config().timeouts.client.0;
    match tokio::time::timeout(t, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// After a hand-over, how long an idle keep-alive connection of the old process waits for one more
/// request (answered with `Connection: close`) before it is closed: closing an idle connection
/// races with a client sending on it, answering its next request with `close` does not.
pub const HANDOVER_KEEPALIVE_LINGER: Duration = Duration::from_secs(5);

/// Serve one client connection (HTTP/1.1, keep-alive, upgrades) until it closes or shutdown.
/// `permit` is this connection's place under `[gateway] max_connections`; an upgrade hands it on to
/// its tunnel, so long-lived WebSockets keep counting against the cap.
pub async fn serve_conn<I>(
    gw: Arc<Gateway>,
    io: I,
    client: ClientInfo,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    gw.frontend.connection_opened();
    let slot = Arc::new(crate::tunnel::PermitSlot::new(permit));
    let timeout = gw.config().timeouts.client.0;
    let gw_svc = gw.clone();
    // Requests started on this connection: lets a draining connection close right after a response.
    let started = Arc::new(tokio::sync::Notify::new());
    let busy = Arc::new(AtomicBool::new(false));
    let (started_svc, busy_svc) = (started.clone(), busy.clone());
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(slot.clone());
        }
        busy_svc.store(true, Ordering::Release);
        started_svc.notify_one();
        let fut = proxy::handle(gw_svc.clone(), req, client);
        let (busy, gw) = (busy_svc.clone(), gw_svc.clone());
        // Boxed: hyper would otherwise move this large future around by value (measured: ~9% CPU).
        Box::pin(async move {
            let mut r = fut.await;
            busy.store(false, Ordering::Release);
            // Draining: say so, so the client opens its next request elsewhere instead of racing
            // our close of an idle keep-alive connection.
            if gw.shutdown.is_cancelled() {
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
    builder.timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(client = %client.addr, error = %e, "client connection error");
            }
        }
        _ = gw.shutdown.cancelled() => {
            // A permit left by an earlier request says nothing about now: drop it, then look.
            let _ = started.notified().now_or_never();
            if gw.listeners.handed_over.is_cancelled() && !busy.load(Ordering::Acquire) {
                // Wait for the next request (its response then says `Connection: close`), or idle out.
                let linger = tokio::time::sleep(HANDOVER_KEEPALIVE_LINGER.min(timeout));
                tokio::pin!(linger);
                tokio::select! {
                    _ = started.notified() => {}
                    _ = &mut linger => {}
                    _ = gw.close_tunnels.cancelled() => {}
                    _ = conn.as_mut() => {
                        gw.frontend.connection_closed();
                        return;
                    }
                }
            }
            conn.as_mut().graceful_shutdown();
            // In-flight requests may finish past the grace period (only tunnels are closed then);
            // `shutdown` bounds the whole wait by `hard_stop_after`.
            let _ = conn.await;
        }
    }
    gw.frontend.connection_closed();
}
