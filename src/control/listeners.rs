//! Control plane: the listening sockets (bound, inherited on upgrade, re-bound on reload only when
//! their address changed); what serves each socket is given by the composition root.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::control::config::Config;

/// Errors starting the gateway or (re)binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener (client, stats, TLS).
        what: &'static str,
        /// The address it was to bind.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
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
    /// The client listener (`[gateway] listen`).
    pub http: std::net::TcpListener,
    /// The ops listener (`[stats] listen`): stats, metrics, reload, cluster status.
    pub stats: std::net::TcpListener,
    /// The TLS client listener (`[tls] listen`), None without `[tls]`.
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
    /// Which listener (what reloads and upgrades match on).
    kind: ListenerKind,
    /// The address from the configuration (what reloads compare), not the bound one (port 0).
    configured: SocketAddr,
    /// The bound address.
    local: SocketAddr,
    /// A duplicate of the socket the accept loop owns: handed to a new process on upgrade.
    fd: std::net::TcpListener,
    /// Stops this accept loop only; its connections are left alone.
    stop: CancellationToken,
}

/// Starts serving one listening socket (non-blocking) until its token is cancelled: spawns the
/// accept loop(s); fails when the socket cannot be registered with a runtime.
pub type ServeFn =
    Box<dyn Fn(ListenerKind, std::net::TcpListener, CancellationToken) -> std::io::Result<()> + Send + Sync>;

/// The listening side of a running gateway. Written by the control plane (start, reload, upgrade
/// handover) under a short sync lock; accept loops never take it.
pub struct LiveListeners {
    /// The serving listeners.
    live: Mutex<Vec<Live>>,
    /// Starts the accept loop(s) of a socket (given by the composition root).
    serve: ServeFn,
    /// Parent of every client accept loop's token: shutdown stops them all. The ops listener's
    /// is not its child: it answers `/healthz` 503 while a shutdown drains, until
    /// [`LiveListeners::stop_all`].
    shutdown: CancellationToken,
}

impl LiveListeners {
    pub fn new(serve: ServeFn, shutdown: CancellationToken) -> LiveListeners {
        LiveListeners { live: Mutex::new(Vec::new()), serve, shutdown }
    }

    /// Start serving `l` as the `kind` listener configured at `configured`.
    pub fn start(
        &self,
        kind: ListenerKind,
        configured: SocketAddr,
        l: std::net::TcpListener,
    ) -> Result<SocketAddr, StartError> {
        let live = self.serve_listener(kind, configured, l)?;
        let local = live.local;
        crate::util::lock(&self.live).push(live);
        Ok(local)
    }

    /// The configured address of each serving listener (what a reload compares).
    fn configured(&self) -> Vec<(ListenerKind, SocketAddr)> {
        crate::util::lock(&self.live).iter().map(|l| (l.kind, l.configured)).collect()
    }

    /// Bound addresses, by kind.
    pub fn local_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        crate::util::lock(&self.live).iter().find(|l| l.kind == kind).map(|l| l.local)
    }

    /// Every bound address (what a node announced at the gateway itself would point to).
    pub fn bound(&self) -> Vec<SocketAddr> {
        crate::util::lock(&self.live).iter().map(|l| l.local).collect()
    }

    /// The bound address of the listener of `kind`, if it serves.
    pub fn local_of(&self, kind: ListenerKind) -> Option<SocketAddr> {
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

    /// Stop the client accept loops (HTTP and TLS); the ops listener serves on.
    pub fn stop_clients(&self) {
        crate::util::lock(&self.live).retain(|l| {
            let client = l.kind != ListenerKind::Stats;
            if client {
                l.stop.cancel();
            }
            !client
        });
    }
}

/// New listeners bound (and a TLS acceptor built) for a configuration, not yet serving: made
/// before the configuration is applied so that a failure refuses the reload.
pub struct Rebind {
    /// Listeners bound for new or moved addresses, with what they serve; swapped in on commit.
    new: Vec<(ListenerKind, SocketAddr, std::net::TcpListener)>,
    /// Listeners to stop: their address changed, or the listener is gone from the configuration.
    retire: Vec<ListenerKind>,
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

impl LiveListeners {
    /// Bind what `config` needs that is not served yet; the old sockets keep serving meanwhile.
    pub fn prepare_rebind(&self, config: &Config) -> Result<Rebind, StartError> {
        let current = self.configured();
        let mut plan = Rebind { new: Vec::new(), retire: Vec::new() };
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
        Ok(plan)
    }

    /// Start serving the new listeners, then stop the retired ones: a changed address is served
    /// before the old one closes, and no connection of the old one is touched.
    pub fn commit_rebind(&self, plan: Rebind) {
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for (kind, configured, l) in plan.new {
            match self.serve_listener(kind, configured, l) {
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
        let mut live = crate::util::lock(&self.live);
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
        &self,
        kind: ListenerKind,
        configured: SocketAddr,
        std_listener: std::net::TcpListener,
    ) -> Result<Live, StartError> {
        let err = |source| StartError::Bind { what: kind.what(), addr: configured, source };
        std_listener.set_nonblocking(true).map_err(err)?;
        let local = std_listener.local_addr().map_err(err)?;
        let fd = std_listener.try_clone().map_err(err)?;
        let stop = match kind {
            ListenerKind::Stats => CancellationToken::new(),
            ListenerKind::Http | ListenerKind::Tls => self.shutdown.child_token(),
        };
        (self.serve)(kind, std_listener, stop.clone()).map_err(err)?;
        Ok(Live { kind, configured, local, fd, stop })
    }
}
