//! The composition root: the only place that starts things. It builds the core, wires health,
//! reload, membership, listeners and ops to it through narrow handles, and owns the shutdown.
//!
//! Start-up order: TLS material (certificates, node CA files) -> core (with the health checkers as
//! its "new backend" hook, and what an upgrade handed over; it publishes every configuration it
//! applies to the control plane's settings watch) -> membership -> readiness -> reload task -> listeners (each
//! kind served by the data plane or ops, accepting once its gate opens) -> file watch -> drain
//! upkeep. Process start and binary upgrade both come through [`run_process`]: a fresh start
//! serves ops at once and clients once it can route ([`crate::control::ready`]); an upgrade accepts
//! nothing until it can route and the old process let go of the sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::control::checks::Checkers;
use crate::control::cluster::ClusterState;
use crate::control::config::Config;
use crate::control::handover::Taken;
use crate::control::listeners::{ListenerKind, Listeners, LiveListeners, StartError};
use crate::control::reload::{ReloadHandle, ReloadStats, Reloader};
use crate::control::upgrade::UpgradeError;
use crate::core::{Core, Gate, Lifecycle};
use crate::data::proxy::{Context, Scheme};
use crate::data::serve::Frontdoor;
use crate::data::workers::Workers;
use crate::ops::Ops;

/// A running gateway: the handles its parts were given, and its bound addresses.
pub struct Handle {
    /// Nodes, snapshots, counters.
    pub core: Arc<Core>,
    /// Stop tokens and task trackers.
    pub life: Lifecycle,
    /// The listening sockets (re-bound on reload, handed over on upgrade).
    pub listeners: Arc<LiveListeners>,
    /// Asks the reload task for a reload.
    pub reload: ReloadHandle,
    /// Reload outcomes.
    pub reloads: Arc<ReloadStats>,
    /// Redis membership: status, counters, first read.
    pub cluster: Arc<ClusterState>,
    /// `[fleet]`: shared operator states, the fleet view, rebalancing.
    pub fleet: Arc<crate::control::fleet::Fleet>,
    /// Open once the gateway can route (what `/healthz` says): clients are accepted from then on
    /// (after an upgrade, once the old process also let go of the sockets).
    pub routable: Gate,
    /// After an upgrade, opened by [`Handle::accept`]: every accept loop waits for it (open from
    /// the start otherwise).
    accepting: Gate,
    /// Bound client address.
    pub http_addr: SocketAddr,
    /// Bound ops address.
    pub stats_addr: SocketAddr,
    /// Bound TLS address, if any.
    pub tls_addr: Option<SocketAddr>,
}

/// How a gateway starts.
pub enum Start {
    /// On sockets bound here: ops at once, clients once it can route.
    Fresh,
    /// On sockets taken from a running gateway, with what it handed over: nothing is accepted
    /// until [`Handle::accept`] (once it can route and the old process let go).
    Upgrade(Taken),
}

/// Start everything on already-bound listeners (bound here, or inherited on upgrade), clients
/// served on the current runtime only.
pub fn start(config: Config, listeners: Listeners) -> Result<Handle, StartError> {
    start_on(config, listeners, Arc::new(Workers::current()))
}

/// Start everything, clients served on every one of `workers` (the control plane runs on the
/// current runtime).
pub fn start_on(config: Config, listeners: Listeners, workers: Arc<Workers>) -> Result<Handle, StartError> {
    start_with(config, listeners, workers, Start::Fresh)
}

/// Start everything as `how` says, clients served on every one of `workers`.
pub fn start_with(
    config: Config,
    listeners: Listeners,
    workers: Arc<Workers>,
    how: Start,
) -> Result<Handle, StartError> {
    let tls = crate::control::tls::Tls::start(&config).map_err(|e| StartError::Tls(e.to_string()))?;
    warn_default_credentials(&config);
    let node_tls = crate::core::node_tls::NodeTlsSet::build(&config).map_err(|e| StartError::Tls(e.to_string()))?;
    let config = Arc::new(config);
    let life = Lifecycle::default();
    // The core publishes every configuration it applies here; the checkers of its first nodes
    // need a receiver before it exists.
    let (settings_tx, settings) = watch::channel(config.clone());

    let checkers = Checkers { settings: settings.clone(), life: life.clone() };
    // Host names resolve before the first snapshot, so named nodes start UP like addressed ones.
    let resolved = crate::control::resolve::resolve_blocking(&config);
    crate::control::resolve::warn_unresolved(&resolved);
    let (upgrade, taken) = match how {
        Start::Fresh => (false, Taken::default()),
        Start::Upgrade(t) => (true, t),
    };
    let mut first = vec![
        crate::core::registry::Change::Resolved(Arc::new(resolved.clone())),
        crate::core::registry::Change::NodeTls(Arc::new(node_tls)),
    ];
    first.extend(taken.restore.map(crate::core::registry::Change::Restore));
    let core = Core::new(config.clone(), first, Box::new(move |b| checkers.spawn(b)), workers.count(), settings_tx);
    if let Some(f) = &taken.frontend {
        core.frontend.restore(f);
    }

    let limit =
        crate::control::fds::max_connections(config.gateway.max_connections, crate::control::fds::raise_nofile());
    core.frontend.connection_limit.store(limit as u64, std::sync::atomic::Ordering::Relaxed);
    let ctx = Arc::new(Context::new(core.clone(), life.clone()));
    crate::data::edge::start(&ctx.edge, &life);
    let door = Arc::new(Frontdoor { ctx, tls: tls.clone(), limit: Arc::new(Semaphore::new(limit)) });
    let reloads = Arc::new(ReloadStats::default());
    // The listeners start after membership (ops serves its status): the handle reads them late.
    let own_listeners: Arc<std::sync::OnceLock<Arc<LiveListeners>>> = Arc::default();
    let own: crate::control::cluster::OwnAddrs = {
        let l = own_listeners.clone();
        Arc::new(move || l.get().map(|l| l.bound()).unwrap_or_default())
    };
    let cluster = crate::control::cluster::start(core.clone(), settings.clone(), own, taken.members, &life);
    let fleet = {
        let l = own_listeners.clone();
        let addrs: crate::control::fleet::Addrs = Arc::new(move || {
            let of = |k| l.get().and_then(|l| l.local_of(k));
            (of(ListenerKind::Http), of(ListenerKind::Stats))
        });
        crate::control::fleet::start(core.clone(), settings.clone(), addrs, &life)
    };
    let routable = Gate::closed();
    crate::control::ready::start(core.clone(), cluster.clone(), routable.clone(), taken.routable, &life);
    // A fresh start answers probes at once and takes clients once it can route; an upgrade takes
    // nothing before the old process let go (it serves meanwhile).
    let accepting = if upgrade { Gate::closed() } else { Gate::opened() };
    let (client_gate, ops_gate) =
        if upgrade { (accepting.clone(), accepting.clone()) } else { (routable.clone(), Gate::opened()) };

    // The reload handle exists before the task, so that ops (which the listeners serve) can hold
    // it and the task can hold the listeners.
    let (reload, requests) = crate::control::reload::channel();
    let ops = Arc::new(Ops {
        core: core.clone(),
        reload: reload.clone(),
        reloads: reloads.clone(),
        cluster: cluster.clone(),
        fleet: fleet.clone(),
        life: life.clone(),
        tls: tls.clone(),
        routable: routable.clone(),
    });
    let serve = {
        let (door, life) = (door.clone(), life.clone());
        move |kind: ListenerKind, l: std::net::TcpListener, stop: tokio_util::sync::CancellationToken| {
            let scheme = match kind {
                ListenerKind::Http => Scheme::Http,
                ListenerKind::Tls => Scheme::Https,
                ListenerKind::Stats => {
                    // Ops is control plane: served here, next to the tasks it reports on.
                    let (ops, l, gate) = (ops.clone(), tokio::net::TcpListener::from_std(l)?, ops_gate.clone());
                    life.background.spawn(async move {
                        tokio::select! {
                            _ = gate.wait() => crate::ops::serve(ops, l, stop).await,
                            _ = stop.cancelled() => {}
                        }
                    });
                    return Ok(());
                }
            };
            // Every worker accepts on its own handle of the socket, registered with its own
            // runtime, once the gate opens (connections wait in the kernel's queue until then).
            for h in workers.handles() {
                let (door, l, stop, gate) = (door.clone(), l.try_clone()?, stop.clone(), client_gate.clone());
                life.background.spawn_on(
                    async move {
                        let l = match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %e, "a worker cannot serve a client listener");
                                return;
                            }
                        };
                        tokio::select! {
                            _ = gate.wait() => {}
                            _ = stop.cancelled() => return,
                        }
                        crate::data::serve::accept_loop(door, l, scheme, stop).await;
                    },
                    h,
                );
            }
            Ok(())
        }
    };
    let live = Arc::new(LiveListeners::new(Box::new(serve), life.shutdown.clone()));
    let _ = own_listeners.set(live.clone());
    let dns = crate::control::resolve::start(core.clone(), &config, resolved, &life);
    crate::control::reload::start(
        requests,
        Reloader { core: core.clone(), listeners: live.clone(), tls: door.tls.clone(), dns, stats: reloads.clone() },
        &life,
    );
    crate::control::reload::sighup(reload.clone(), &life);

    let http_addr = live.start(ListenerKind::Http, config.gateway.listen, listeners.http)?;
    let stats_addr = live.start(ListenerKind::Stats, config.stats.listen, listeners.stats)?;
    let tls_addr = match (listeners.tls, config.tls.as_ref()) {
        (Some(l), Some(t)) => Some(live.start(ListenerKind::Tls, t.listen, l)?),
        _ => None,
    };

    crate::control::config_watch::start(&config, reload.clone(), &life);
    crate::control::tls::renew::start(tls, &life);
    crate::control::drain::start(core.clone(), &life);
    tracing::info!(%http_addr, %stats_addr, ?tls_addr, nodes = core.snapshot().nodes.len(), "kuzzle-gateway serving");
    Ok(Handle {
        core,
        life,
        listeners: live,
        reload,
        reloads,
        cluster,
        fleet,
        routable,
        accepting,
        http_addr,
        stats_addr,
        tls_addr,
    })
}

/// An ops listener reachable from elsewhere with the seed's well-known `kuzzle:kuzzle` is an open door.
fn warn_default_credentials(config: &Config) {
    let s = &config.stats;
    if !s.listen.ip().is_loopback() && s.user.as_deref() == Some("kuzzle") && s.password.as_deref() == Some("kuzzle") {
        tracing::warn!(
            listen = %s.listen,
            "the ops listener is not on loopback and uses the default credentials kuzzle:kuzzle: set [stats] user and password"
        );
    }
}

/// Bind the configured listeners and start.
pub fn bind_and_start(config: Config) -> Result<Handle, StartError> {
    let l = Listeners::bind(&config)?;
    start(config, l)
}

/// Run a gateway on `listeners` until `shutdown` resolves (graceful stop) or a newer process took
/// over its sockets (then drain and return).
pub async fn run(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    start(config, listeners)?.serve_until(shutdown).await;
    Ok(())
}

/// The process: bind (or, with `upgrade`, take over the running gateway's sockets and state) and
/// run until SIGTERM/SIGINT, clients served on `workers`.
pub async fn run_process(config: Config, upgrade: bool, workers: Arc<Workers>) -> Result<(), UpgradeError> {
    let h = if upgrade {
        let (listeners, mut handover) = crate::control::upgrade::take_over(&config).await?;
        let taken = crate::control::handover::take(handover.take_state(), &config);
        tracing::info!(routable = taken.routable, "state of the running gateway: {}", taken.note);
        // Operator states the fleet keeps in Redis apply from the first request (bounded wait).
        let states = crate::control::fleet::preload(&config).await;
        let h = start_with(config, listeners, workers, Start::Upgrade(taken))?;
        h.fleet.seed(states);
        if !h.routable.is_open() {
            tracing::info!(
                "waiting for the first membership read and node checks before taking the sockets over; the running gateway serves meanwhile"
            );
        }
        // Bounded by `[cluster] ready_timeout`.
        h.routable.wait().await;
        handover.finish().await?;
        h.accept();
        h
    } else {
        let listeners = Listeners::bind(&config)?;
        let states = crate::control::fleet::preload(&config).await;
        let h = start_on(config, listeners, workers)?;
        h.fleet.seed(states);
        h
    };
    h.serve_until(wait_for_stop_signal()).await;
    Ok(())
}

impl Handle {
    /// After an upgrade, once the old process let go of the sockets: accept on them.
    pub fn accept(&self) {
        self.accepting.open();
    }

    /// Offer the sockets and the state to a future upgrade, then wait for `shutdown` (graceful
    /// stop) or for a newer process to take the sockets (drain).
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) {
        let state: crate::control::upgrade::StateFn = {
            let (core, cluster, routable) = (self.core.clone(), self.cluster.clone(), self.routable.clone());
            Arc::new(move || {
                let s = crate::control::handover::capture(&core, &cluster, routable.is_open());
                serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
            })
        };
        crate::control::upgrade::listen(&self.config(), self.listeners.clone(), &self.life, state);
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => self.shutdown().await,
            _ = self.life.handed_over.cancelled() => {
                self.drain_after_handover(shutdown).await;
                tracing::info!("old process done after upgrade");
            }
        }
    }

    /// The configuration the gateway runs with now.
    pub fn config(&self) -> Arc<Config> {
        self.core.config()
    }

    /// Install an already validated configuration without a file (tests, embedding): nodes are
    /// diffed as on reload (the core tells the control plane). Listeners are not re-bound; the
    /// configuration must not ask for TLS to nodes (no connectors are built here).
    pub fn apply_config(&self, config: Config) {
        self.core.apply([crate::core::registry::Change::Config(Arc::new(config))]);
    }

    /// Graceful stop: stop accepting clients (`/healthz` says 503 from now on, the ops listener
    /// serves until the end), let requests finish, close tunnels after the grace period with a
    /// close frame, and give up after `hard_stop_after`.
    pub async fn shutdown(&self) {
        let cfg = self.config();
        let life = &self.life;
        tracing::info!(grace = ?cfg.gateway.shutdown_grace.0, "shutting down: no new connections");
        life.shutdown.cancel();
        self.listeners.stop_clients();
        life.connections.close();
        life.background.close();
        if tokio::time::timeout(cfg.gateway.shutdown_grace.0, life.connections.wait()).await.is_err() {
            tracing::info!(open = life.connections.len(), "grace period over: closing tunnels");
            life.close_tunnels.cancel();
            let hard = cfg.gateway.hard_stop_after.0.min(Duration::from_secs(30));
            if tokio::time::timeout(hard, life.connections.wait()).await.is_err() {
                tracing::warn!(open = life.connections.len(), "connections still open: exiting anyway");
            }
        }
        self.listeners.stop_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), life.background.wait()).await;
        // Close idle keep-alive connections to the nodes now rather than when the process exits.
        for b in &self.core.snapshot().nodes {
            b.clear_pool();
        }
    }

    /// After a binary upgrade: this process no longer accepts; in-flight requests finish, WebSocket
    /// tunnels stay until their clients or nodes close them, or until `hard_stop_after`.
    pub async fn drain_after_handover(&self, stop_now: impl Future<Output = ()>) {
        let cfg = self.config();
        let life = &self.life;
        self.listeners.stop_all();
        life.shutdown.cancel();
        life.connections.close();
        life.background.close();
        tracing::info!(open = life.connections.len(), hard_stop_after = ?cfg.gateway.hard_stop_after.0, "handed over: draining");
        tokio::select! {
            _ = life.connections.wait() => tracing::info!("last connection closed"),
            _ = tokio::time::sleep(cfg.gateway.hard_stop_after.0) => {
                tracing::info!(open = life.connections.len(), "hard_stop_after reached: closing tunnels");
            }
            _ = stop_now => tracing::info!(open = life.connections.len(), "stop signal while draining: closing tunnels"),
        }
        life.close_tunnels.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), life.connections.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), life.background.wait()).await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
