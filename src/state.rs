//! Both planes meet here: the immutable routing `Snapshot` the data plane reads once per request,
//! and the `Gateway` whose registry (control plane, the only writer) builds and swaps snapshots.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{AdminState, Backend, Membership, Origin};
use crate::config::Config;
use crate::stats::{FrontendCounters, NodeCounters};

/// How long the counters of a node that left are kept, so that it finds its history if it returns.
pub const COUNTERS_KEEP: Duration = Duration::from_secs(24 * 3600);

/// What the data plane needs for one request: settings and nodes, swapped whole.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Members first (static in config order, then discovered by name), then draining nodes.
    pub nodes: Vec<Arc<Backend>>,
    names: HashMap<String, usize>,
    /// Round-robin / tie-break cursor.
    pub cursor: AtomicUsize,
    /// Increases with every swap.
    pub generation: u64,
}

impl Snapshot {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Backend>> {
        self.index_of(name).and_then(|i| self.nodes.get(i))
    }
}

/// A node learned from Redis (pub/sub, discovery set or Kuzzle 2 ID card).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicNode {
    pub name: String,
    pub addr: SocketAddr,
    pub origin: Origin,
    /// The node said it is ready: it may take traffic before its first health check passes.
    pub ready: bool,
}

/// Outcome of the last configuration reload, for logs and the stats page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    /// Epoch seconds.
    pub at: u64,
    pub message: String,
}

/// Control-plane state: only the control plane takes this lock, never the request path.
struct Registry {
    config: Arc<Config>,
    dynamic: BTreeMap<String, DynamicNode>,
    live: HashMap<String, Arc<Backend>>,
    draining: Vec<Arc<Backend>>,
    /// Counters by node name, kept after a node leaves so that it keeps its history if it returns.
    counters: HashMap<String, Arc<NodeCounters>>,
    /// Operator overrides by node name; survive reloads and rejoins.
    admin: HashMap<String, AdminState>,
    generation: u64,
    started: bool,
    /// When each name with kept counters was last a node: history is forgotten after
    /// `COUNTERS_KEEP` (Kuzzle 2 node ids are new at every start, so names keep coming).
    gone: HashMap<String, Instant>,
}

/// Hook the control plane calls for every new backend (the health checker registers here).
pub type BackendHook = Box<dyn Fn(&Arc<Gateway>, &Arc<Backend>) + Send + Sync>;

/// The running gateway: one per process.
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub frontend: Arc<FrontendCounters>,
    pub started_at: SystemTime,
    /// Stop accepting; let in-flight HTTP requests finish.
    pub shutdown: CancellationToken,
    /// Close every tunnel with a close frame (end of the shutdown grace).
    pub close_tunnels: CancellationToken,
    /// Client connections and tunnels, waited on at shutdown.
    pub tracker: TaskTracker,
    /// Background tasks (health, membership, watchers): stopped by `shutdown`.
    pub background: TaskTracker,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    last_reload: Mutex<Option<ReloadStatus>>,
    registry: Mutex<Registry>,
    on_new_backend: Mutex<Option<Arc<BackendHook>>>,
    /// Listening sockets and their accept loops (reload re-binds, upgrade hands them over).
    pub listeners: crate::server::LiveListeners,
}

impl Gateway {
    /// A gateway with no nodes yet; `apply_config` gives it its first snapshot.
    pub fn new(config: Config) -> Arc<Gateway> {
        let config = Arc::new(config);
        let snap = Snapshot {
            config: config.clone(),
            nodes: Vec::new(),
            names: HashMap::new(),
            cursor: AtomicUsize::new(0),
            generation: 0,
        };
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snap),
            frontend: Arc::new(FrontendCounters::default()),
            started_at: SystemTime::now(),
            shutdown: CancellationToken::new(),
            close_tunnels: CancellationToken::new(),
            tracker: TaskTracker::new(),
            background: TaskTracker::new(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload: Mutex::new(None),
            registry: Mutex::new(Registry {
                config,
                dynamic: BTreeMap::new(),
                live: HashMap::new(),
                draining: Vec::new(),
                counters: HashMap::new(),
                admin: HashMap::new(),
                generation: 0,
                started: false,
                gone: HashMap::new(),
            }),
            on_new_backend: Mutex::new(None),
            listeners: Default::default(),
        })
    }

    /// Register the function run for each new backend (e.g. start its health checker).
    pub fn set_backend_hook(&self, hook: BackendHook) {
        *crate::util::lock(&self.on_new_backend) = Some(Arc::new(hook));
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    /// Install a (validated) configuration: nodes are diffed, not restarted.
    pub fn apply_config(self: &Arc<Self>, config: Config) {
        let mut reg = crate::util::lock(&self.registry);
        reg.config = Arc::new(config);
        self.rebuild(&mut reg);
    }

    /// Record a reload outcome (success or refusal) for logs and the stats page.
    pub fn record_reload(&self, ok: bool, message: String) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
        *crate::util::lock(&self.last_reload) = Some(ReloadStatus { ok, at: crate::util::epoch_secs(), message });
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        crate::util::lock(&self.last_reload).clone()
    }

    /// Add or update a discovered node. Returns true if the node set changed.
    pub fn upsert_dynamic(self: &Arc<Self>, node: DynamicNode) -> bool {
        let mut reg = crate::util::lock(&self.registry);
        if reg.dynamic.get(&node.name) == Some(&node) {
            return false;
        }
        reg.dynamic.insert(node.name.clone(), node);
        self.rebuild(&mut reg);
        true
    }

    /// Forget a discovered node (drained: existing traffic continues). Returns true if it was known.
    pub fn remove_dynamic(self: &Arc<Self>, name: &str) -> bool {
        let mut reg = crate::util::lock(&self.registry);
        if reg.dynamic.remove(name).is_none() {
            return false;
        }
        self.rebuild(&mut reg);
        true
    }

    /// Names of discovered nodes of one origin (membership sources reconcile against this).
    pub fn dynamic_names(&self, origin: Origin) -> Vec<String> {
        crate::util::lock(&self.registry)
            .dynamic
            .values()
            .filter(|n| n.origin == origin)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Operator override of a node; kept across reloads. False if no such node is known.
    pub fn set_admin(&self, name: &str, state: AdminState) -> bool {
        let mut reg = crate::util::lock(&self.registry);
        let found = reg.live.get(name).cloned().or_else(|| reg.draining.iter().find(|b| b.name == name).cloned());
        match found {
            Some(b) => {
                b.set_admin(state);
                reg.admin.insert(name.to_string(), state);
                true
            }
            None => false,
        }
    }

    /// Drop draining nodes that no longer carry traffic, and the counters of names gone for more
    /// than `COUNTERS_KEEP`; run every second by the control plane.
    pub fn prune(self: &Arc<Self>) {
        self.prune_at(Instant::now(), COUNTERS_KEEP);
    }

    fn prune_at(self: &Arc<Self>, now: Instant, keep: Duration) {
        let mut reg = crate::util::lock(&self.registry);
        let Registry { counters, live, draining, gone, .. } = &mut *reg;
        counters.retain(|name, _| {
            if live.contains_key(name) || draining.iter().any(|b| &b.name == name) {
                gone.remove(name);
                return true;
            }
            let since = *gone.entry(name.clone()).or_insert(now);
            let kept = now.saturating_duration_since(since) < keep;
            if !kept {
                gone.remove(name);
            }
            kept
        });
        let before = reg.draining.len();
        reg.draining.retain(|b| {
            let keep = b.active() > 0;
            if !keep {
                b.tasks.cancel();
                b.clear_pool();
            }
            keep
        });
        if reg.draining.len() != before {
            self.rebuild(&mut reg);
        }
    }

    /// Every node the registry knows now (members and draining), for status pages.
    pub fn all_nodes(&self) -> Vec<Arc<Backend>> {
        self.snapshot.load().nodes.clone()
    }

    /// Rebuild the snapshot from the registry, reusing surviving backends, then swap once.
    fn rebuild(self: &Arc<Self>, reg: &mut Registry) {
        let first = !reg.started;
        reg.started = true;
        let config = reg.config.clone();

        // Desired members: static first (config order), then discovered ones not shadowed by a static name.
        let mut desired: Vec<(String, SocketAddr, Origin, bool)> = Vec::new();
        for n in &config.nodes {
            desired.push((n.name.clone(), n.addr, Origin::Static, first));
        }
        for d in reg.dynamic.values() {
            if config.nodes.iter().any(|s| s.name == d.name) {
                tracing::warn!(node = %d.name, "discovered node shadowed by a static [[node]] of the same name");
                continue;
            }
            desired.push((d.name.clone(), d.addr, d.origin, d.ready));
        }

        let mut new_live: HashMap<String, Arc<Backend>> = HashMap::with_capacity(desired.len());
        let mut order: Vec<Arc<Backend>> = Vec::with_capacity(desired.len());
        let mut created: Vec<Arc<Backend>> = Vec::new();
        for (name, addr, origin, up) in desired {
            let reuse = match reg.live.remove(&name) {
                Some(b) if b.addr == addr => Some(b),
                Some(old) => {
                    retire(&mut reg.draining, old);
                    None
                }
                None => {
                    // A draining node that comes back at the same address is revived as is.
                    let pos = reg.draining.iter().position(|b| b.name == name && b.addr == addr);
                    pos.map(|p| reg.draining.swap_remove(p))
                }
            };
            let b = match reuse {
                Some(b) => {
                    b.set_membership(Membership::Active);
                    b
                }
                None => {
                    let counters = reg.counters.entry(name.clone()).or_default().clone();
                    let b = Arc::new(Backend::new(name.clone(), addr, origin, counters, up));
                    if let Some(s) = reg.admin.get(&name) {
                        b.set_admin(*s);
                    }
                    created.push(b.clone());
                    b
                }
            };
            order.push(b.clone());
            new_live.insert(name, b);
        }
        for (_, old) in reg.live.drain() {
            retire(&mut reg.draining, old);
        }
        reg.live = new_live;

        // Draining nodes stay visible (prefix answers 503, stats show them) until their traffic ends.
        let draining: Vec<Arc<Backend>> =
            reg.draining.iter().filter(|d| !reg.live.contains_key(&d.name)).cloned().collect();
        order.extend(draining);
        let names = order.iter().enumerate().map(|(i, b)| (b.name.clone(), i)).collect();
        reg.generation += 1;
        let old = self.snapshot.load();
        let snap = Snapshot {
            config,
            nodes: order,
            names,
            cursor: AtomicUsize::new(old.cursor.load(Ordering::Relaxed)),
            generation: reg.generation,
        };
        self.snapshot.store(Arc::new(snap));

        let hook = crate::util::lock(&self.on_new_backend).clone();
        if let Some(hook) = hook {
            for b in &created {
                hook(self, b);
            }
        }
    }
}

/// Move a backend out of the member set: no new traffic, existing traffic continues.
fn retire(draining: &mut Vec<Arc<Backend>>, b: Arc<Backend>) {
    tracing::info!(node = %b.name, addr = %b.addr, "node removed: draining");
    b.set_membership(Membership::Draining);
    b.clear_pool();
    if !draining.iter().any(|d| Arc::ptr_eq(d, &b)) {
        draining.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: &[(&str, u16)]) -> Config {
        let mut text = String::new();
        for (n, p) in nodes {
            text.push_str(&format!("[[node]]\nname = \"{n}\"\naddress = \"127.0.0.1:{p}\"\n"));
        }
        Config::parse(&text, "t.toml").expect("valid")
    }

    #[test]
    fn reload_diffs_nodes() {
        let gw = Gateway::new(Config::default());
        gw.apply_config(cfg(&[("a", 1), ("b", 2)]));
        let s1 = gw.snapshot.load_full();
        assert_eq!(s1.nodes.len(), 2);
        assert!(s1.nodes.iter().all(|b| b.eligible()), "start-up nodes count as UP");
        let a1 = s1.node("a").cloned().expect("a");
        a1.counters.bytes_in.fetch_add(7, Ordering::Relaxed);

        let guard = s1.node("b").expect("b").track();
        gw.apply_config(cfg(&[("a", 1), ("c", 3)]));
        let s2 = gw.snapshot.load_full();
        assert!(Arc::ptr_eq(&a1, s2.node("a").expect("a kept")), "surviving node reused");
        let b = s2.node("b").expect("draining b still visible");
        assert_eq!(b.membership(), Membership::Draining);
        assert!(!b.eligible());
        assert!(!s2.node("c").expect("c").eligible(), "a node added by reload waits for a health check");
        drop(guard);
        gw.prune();
        assert!(gw.snapshot.load().node("b").is_none(), "drained node pruned once idle");

        gw.apply_config(cfg(&[("a", 1), ("b", 2)]));
        let b = gw.snapshot.load_full().node("b").cloned().expect("b back");
        assert_eq!(b.counters.sessions_total.load(Ordering::Relaxed), 1, "history kept across leave and return");
    }

    #[test]
    fn history_of_gone_nodes_is_forgotten_after_a_while() {
        let gw = Gateway::new(Config::default());
        gw.apply_config(cfg(&[("a", 1), ("b", 2)]));
        let b = gw.snapshot.load().node("b").cloned().expect("b");
        drop(b.track());
        gw.apply_config(cfg(&[("a", 1)]));
        let t0 = Instant::now();
        gw.prune_at(t0, Duration::from_secs(10));
        assert!(gw.snapshot.load().node("b").is_none(), "idle drained node pruned");
        gw.prune_at(t0 + Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(crate::util::lock(&gw.registry).counters.len(), 2, "history kept for a while");
        // Gone since the prune at t0 + 5 s (at t0 it was still draining).
        gw.prune_at(t0 + Duration::from_secs(16), Duration::from_secs(10));
        assert_eq!(crate::util::lock(&gw.registry).counters.len(), 1, "history of b forgotten");
        gw.apply_config(cfg(&[("a", 1), ("b", 2)]));
        let b = gw.snapshot.load().node("b").cloned().expect("b back");
        assert_eq!(b.counters.sessions_total.load(Ordering::Relaxed), 0, "a fresh history");
    }

    #[test]
    fn admin_state_survives_reload_and_dynamic_nodes_merge() {
        let gw = Gateway::new(Config::default());
        gw.apply_config(cfg(&[("a", 1)]));
        assert!(gw.set_admin("a", AdminState::Drain));
        assert!(!gw.set_admin("zz", AdminState::Drain));
        gw.apply_config(cfg(&[("a", 9)]));
        assert_eq!(gw.snapshot.load().node("a").expect("a").admin(), AdminState::Drain);
        let d = DynamicNode {
            name: "d".into(),
            addr: "127.0.0.1:5".parse().expect("addr"),
            origin: Origin::Plugin,
            ready: true,
        };
        assert!(gw.upsert_dynamic(d.clone()));
        assert!(!gw.upsert_dynamic(d));
        assert!(gw.snapshot.load().node("d").expect("d").eligible());
        assert_eq!(gw.dynamic_names(Origin::Plugin), vec!["d".to_string()]);
        assert!(gw.remove_dynamic("d"));
        assert_eq!(gw.snapshot.load().node("d").map(|b| b.membership()), Some(Membership::Draining));
    }
}
