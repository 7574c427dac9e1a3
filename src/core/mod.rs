//! Core: what both planes share and that depends on nothing above it: nodes ([`backend`]), their
//! health state ([`health`], [`machine`]), counters, the routing [`snapshot`] and the pure
//! [`registry`] that makes snapshots. [`Core`] publishes them; [`Lifecycle`] says when to stop.

pub mod backend;
pub mod body;
pub mod counters;
pub mod health;
pub mod machine;
pub mod node_tls;
pub mod registry;
pub mod shed;
pub mod snapshot;
pub mod stall;
pub mod worker;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::backend::{AdminState, Backend};
use self::counters::FrontendCounters;
use self::registry::{Change, Registry, COUNTERS_KEEP};
use self::snapshot::Snapshot;
use crate::control::config::Config;

/// Called for every backend a change creates (the composition root starts its health checker).
pub type OnCreated = Box<dyn Fn(&Arc<Backend>) + Send + Sync>;

/// The node set as both planes see it: the data plane reads [`Core::snapshot`] (lock-free); the
/// control plane writes through [`Core::apply`] (a batch of changes, one swap).
pub struct Core {
    /// What the data plane reads, swapped whole by the control plane.
    snapshot: ArcSwap<Snapshot>,
    /// Client-side counters (the frontend row of the stats page).
    pub frontend: Arc<FrontendCounters>,
    /// Process start (uptime on the stats page).
    pub started_at: SystemTime,
    /// Writers only (reload, membership, ops, pruning); never taken on the request path.
    registry: Mutex<Registry>,
    /// Starts the health checker of every backend a change creates.
    on_created: OnCreated,
    /// The configuration for long-running control tasks (checkers, membership, fleet, DNS), to
    /// wait on: published by [`Core::apply`] with the snapshot that carries the same one, so
    /// the two never disagree.
    settings: tokio::sync::watch::Sender<Arc<Config>>,
}

impl Core {
    /// A core with `config` applied after `first` (e.g. the resolved host names) in the same batch:
    /// its static nodes count as UP until checks say otherwise.
    /// Each node keeps one connection pool per worker of the data plane's `workers`. Every
    /// configuration applied is published to `settings` (whose receivers may exist already: the
    /// checkers of the first nodes need one).
    pub fn new(
        config: Arc<Config>,
        first: Vec<Change>,
        on_created: OnCreated,
        workers: usize,
        settings: tokio::sync::watch::Sender<Arc<Config>>,
    ) -> Arc<Core> {
        let core = Arc::new(Core {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config.clone(), Vec::new(), 0, 0)),
            frontend: Arc::new(FrontendCounters::default()),
            started_at: SystemTime::now(),
            registry: Mutex::new(Registry::new(config.clone(), workers)),
            on_created,
            settings,
        });
        core.apply(first.into_iter().chain([Change::Config(config)]));
        core
    }

    /// The current snapshot (one atomic load; hold it for one request at most).
    #[inline]
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot, owned.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The configuration the data plane runs with now.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    /// A receiver of every configuration applied (the control plane's read path; the data
    /// plane reads the snapshot's).
    pub fn settings(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.settings.subscribe()
    }

    /// Apply a batch of changes with one swap. Returns true when the node set changed. Health
    /// checkers of new backends start after the registry lock is released.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> bool {
        let applied = {
            let mut reg = crate::util::lock(&self.registry);
            let applied = reg.apply(changes, self.cursor());
            if let Some(s) = applied.snapshot {
                let config = s.config.clone();
                // Swapped under the lock: two writers cannot publish out of order.
                self.snapshot.store(Arc::new(s));
                if !Arc::ptr_eq(&config, &self.settings.borrow()) {
                    self.settings.send_replace(config);
                }
                Some(applied.created)
            } else {
                None
            }
        };
        match applied {
            Some(created) => {
                for b in &created {
                    (self.on_created)(b);
                }
                true
            }
            None => false,
        }
    }

    /// Operator override of a node; kept across reloads. False if no such node is known.
    pub fn set_admin(&self, name: &str, state: AdminState) -> bool {
        crate::util::lock(&self.registry).set_admin(name, state)
    }

    /// Operator states by node name, those of nodes away for now included (binary upgrade).
    pub fn admin_states(&self) -> std::collections::HashMap<String, AdminState> {
        crate::util::lock(&self.registry).admin_states()
    }

    /// An operator state from the fleet (another gateway, or Redis): applied to the node if this
    /// gateway knows it, and remembered for it otherwise (it applies when the node appears).
    /// True when a known node took it.
    pub fn remember_admin(&self, name: &str, state: AdminState) -> bool {
        crate::util::lock(&self.registry).remember_admin(name, state)
    }

    /// Drop draining nodes that no longer carry traffic and the counters of long-gone names.
    pub fn prune(&self, now: Instant) {
        let mut reg = crate::util::lock(&self.registry);
        if let Some(s) = reg.prune(now, COUNTERS_KEEP, self.cursor()) {
            self.snapshot.store(Arc::new(s));
        }
    }

    fn cursor(&self) -> usize {
        self.snapshot.load().cursor.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A one-way latch, closed until the control plane opens it once (the gateway can route; the old
/// process let go of the sockets); accept loops and start-up steps wait on it. Clones share it.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn closed() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    /// A gate already open (nothing to wait for).
    pub fn opened() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(true)))
    }

    /// Open it (idempotent): every waiter goes on.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the gate is open.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// When things stop. Clones share the same tokens and trackers.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Stop accepting; let in-flight HTTP requests finish; background tasks end.
    pub shutdown: CancellationToken,
    /// Close every tunnel with a close frame (end of the shutdown grace).
    pub close_tunnels: CancellationToken,
    /// Cancelled once a new process took over the listening sockets (binary upgrade).
    pub handed_over: CancellationToken,
    /// Client connections and tunnels, waited on at shutdown.
    pub connections: TaskTracker,
    /// Background tasks (health, membership, watchers, ops): stopped by `shutdown`.
    pub background: TaskTracker,
}
