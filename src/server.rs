//! Process wiring: bind listeners, start the data plane accept loops and the control-plane tasks,
//! and run the graceful shutdown sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
}

/// Listening sockets, bound up front (or inherited from an older process on upgrade).
pub struct Listeners {
    pub http: TcpListener,
    pub stats: TcpListener,
    pub tls: Option<TcpListener>,
}

impl Listeners {
    /// Bind every listener the configuration names.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        Ok(Listeners {
            http: bind("client listener", config.gateway.listen).await?,
            stats: bind("stats listener", config.stats.listen).await?,
            tls: match &config.tls {
                Some(t) => Some(bind("TLS listener", t.listen).await?),
                None => None,
            },
        })
    }
}

pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(4096)
    });
    sock.map_err(|source| StartError::Bind { what, addr, source })
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
    gw.apply_config(config);

    let http_addr = listeners.http.local_addr().map_err(|source| StartError::Bind {
        what: "client listener",
        addr: gw.config().gateway.listen,
        source,
    })?;
    let stats_addr = listeners.stats.local_addr().unwrap_or(gw.config().stats.listen);
    let tls_addr = listeners.tls.as_ref().and_then(|l| l.local_addr().ok());

    let stop = gw.shutdown.clone();
    gw.background.spawn(accept_loop(gw.clone(), listeners.http, Scheme::Http, None, stop.clone()));
    if let (Some(l), Some(acceptor)) = (listeners.tls, tls) {
        gw.background.spawn(accept_loop(gw.clone(), l, Scheme::Https, Some(acceptor), stop.clone()));
    }
    gw.background.spawn(crate::ops::serve(gw.clone(), listeners.stats, stop.clone()));
    crate::control::start(&gw);
    tracing::info!(%http_addr, %stats_addr, ?tls_addr, nodes = gw.snapshot.load().nodes.len(), "kuzzle-gateway serving");
    Ok(Handle { gw, http_addr, stats_addr, tls_addr })
}

/// Bind the configured listeners and start.
pub async fn start(config: Config) -> Result<Handle, StartError> {
    let l = Listeners::bind(&config).await?;
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
}

/// Accept clients until `stop`; each connection is served on the gateway's tracker.
pub async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    scheme: Scheme,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(gw.config().gateway.max_connections.max(1)));
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
        let tls = tls.clone();
        gw.tracker.spawn(async move {
            let client = ClientInfo { addr, scheme };
            match tls {
                None => serve_conn(gw2, stream, client).await,
                Some(acceptor) => {
                    if let Some(s) = tls_handshake(&gw2, acceptor, stream).await {
                        serve_conn(gw2, s, client).await;
                    }
                }
            }
            drop(permit);
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

/// Serve one client connection (HTTP/1.1, keep-alive, upgrades) until it closes or shutdown.
pub async fn serve_conn<I>(gw: Arc<Gateway>, io: I, client: ClientInfo)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    gw.frontend.connection_opened();
    let timeout = gw.config().timeouts.client.0;
    let gw_svc = gw.clone();
    let svc = service_fn(move |req| proxy::handle(gw_svc.clone(), req, client));
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
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    gw.frontend.connection_closed();
}
