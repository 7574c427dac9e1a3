//! Core: the node registry, pure: it applies a batch of changes (configuration, discovered nodes)
//! and returns the new snapshot with the backends it created and retired. The caller swaps it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{AdminState, Backend, Membership, Origin};
use super::counters::{NodeCounters, NodeTotals};
use super::health::{HealthState, Leaving, MachineState};
use super::snapshot::Snapshot;
use crate::control::config::{Config, HostPort, NodeTarget};
use crate::core::node_tls::{NodeTls, NodeTlsSet};

/// What each `[[node]]` host name resolved to (None: no address).
pub type Resolved = HashMap<HostPort, Option<SocketAddr>>;

/// How long the counters of a node that left are kept, so that it finds its history if it returns.
pub const COUNTERS_KEEP: Duration = Duration::from_secs(24 * 3600);

/// A node learned from Redis (pub/sub, discovery set or Kuzzle 2 ID card).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicNode {
    /// Node name (URL prefix); a static `[[node]]` of the same name shadows it.
    pub name: String,
    /// HTTP address client traffic goes to.
    pub addr: SocketAddr,
    /// Which source announced it (plugin or Kuzzle 2 ID card).
    pub origin: Origin,
}

/// One node as the old process had it (binary upgrade): used when the backend of that name is
/// made at that address with that origin, so it routes as it did there from the first request.
#[derive(Debug, Clone)]
pub struct RestoredNode {
    /// Where the old process reached it (another address now: a different node, checked afresh).
    pub addr: SocketAddr,
    /// How it was known (a static node of that name is not a discovered one).
    pub origin: Origin,
    /// Its health: UP/DOWN, the streak under way and the history.
    pub health: MachineState,
    /// It had said it was shutting down: it stays out of the rotation (until checks bring it UP,
    /// or for good).
    pub leaving: Leaving,
    /// Epoch seconds its operator state was set (0: never).
    pub admin_since: u64,
}

/// What a new process takes over from the old one on a binary upgrade (see `crate::control::handover`).
#[derive(Debug, Default)]
pub struct Restore {
    /// Nodes learned from Redis: members again at once, without waiting for Redis.
    pub dynamic: Vec<DynamicNode>,
    /// Health by node name (empty when the settings health depends on changed).
    pub nodes: HashMap<String, RestoredNode>,
    /// Operator states (DRAIN, MAINT) by node name.
    pub admin: HashMap<String, AdminState>,
    /// Counters by node name.
    pub counters: HashMap<String, NodeTotals>,
}

/// One change to the node set. Sources (reload, membership) produce them; the registry applies a
/// batch with one swap.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new (validated) configuration: static nodes are diffed, not restarted.
    Config(Arc<Config>),
    /// The TLS connectors of the configuration that comes in the same batch (built off the
    /// async threads: they read CA files).
    NodeTls(Arc<NodeTlsSet>),
    /// A discovered node joined or changed. A new one starts DOWN (joining): its checker starts at
    /// once and its first passing check lets traffic in; what Redis says is never a check.
    Upsert(DynamicNode),
    /// A discovered node left: it drains (existing traffic continues).
    Remove(String),
    /// The host names of static nodes, resolved again: a changed address applies like a reload.
    Resolved(Arc<Resolved>),
    /// What the old process handed over on a binary upgrade (applied with the first batch).
    Restore(Arc<Restore>),
}

/// What one batch did.
pub struct Applied {
    /// The snapshot to publish (None: nothing changed, keep the current one).
    pub snapshot: Option<Snapshot>,
    /// Backends made by this batch: their health checkers must start.
    pub created: Vec<Arc<Backend>>,
    /// Backends that left the member set by this batch (now draining).
    pub retired: Vec<Arc<Backend>>,
}

/// Control-plane state: only the control plane holds it, never the request path.
pub struct Registry {
    /// The configuration in force (static nodes, TLS to nodes).
    config: Arc<Config>,
    /// Data-plane workers: each backend keeps one connection pool per worker.
    workers: usize,
    /// Addresses of the static nodes' host names.
    resolved: Arc<Resolved>,
    /// TLS connectors of the configuration in force, by setting.
    node_tls: Arc<NodeTlsSet>,
    /// Nodes learned from Redis, by name.
    dynamic: BTreeMap<String, DynamicNode>,
    /// The member backends by name (what the snapshot routes to).
    live: HashMap<String, Arc<Backend>>,
    /// Backends that left but still carry traffic.
    draining: Vec<Arc<Backend>>,
    /// Counters by node name, kept after a node leaves so that it keeps its history if it returns.
    counters: HashMap<String, Arc<NodeCounters>>,
    /// Operator overrides by node name; survive reloads and rejoins.
    admin: HashMap<String, AdminState>,
    /// Health handed over by an old process: read by the next rebuild only (a node that joins
    /// later is checked afresh).
    restored: HashMap<String, RestoredNode>,
    /// Increases with every snapshot built.
    generation: u64,
    /// The first snapshot was built (its static nodes start UP).
    started: bool,
    /// When each name with kept counters was last a node: history is forgotten after
    /// `COUNTERS_KEEP` (Kuzzle 2 node ids are new at every start, so names keep coming).
    gone: HashMap<String, Instant>,
}

impl Registry {
    /// An empty registry for a data plane of `workers` workers.
    pub fn new(config: Arc<Config>, workers: usize) -> Registry {
        Registry {
            config,
            workers,
            resolved: Arc::default(),
            node_tls: Arc::default(),
            dynamic: BTreeMap::new(),
            live: HashMap::new(),
            draining: Vec::new(),
            counters: HashMap::new(),
            admin: HashMap::new(),
            restored: HashMap::new(),
            generation: 0,
            started: false,
            gone: HashMap::new(),
        }
    }

    /// Apply a batch; `cursor` is the balancer position to carry into the new snapshot.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>, cursor: usize) -> Applied {
        let mut changed = false;
        for c in changes {
            match c {
                Change::Config(config) => {
                    self.config = config;
                    changed = true;
                }
                Change::Upsert(node) => {
                    if self.dynamic.get(&node.name) != Some(&node) {
                        self.dynamic.insert(node.name.clone(), node);
                        changed = true;
                    }
                }
                Change::Remove(name) => changed |= self.dynamic.remove(&name).is_some(),
                Change::NodeTls(t) => {
                    self.node_tls = t;
                    changed = true;
                }
                Change::Resolved(r) => {
                    if *r != *self.resolved {
                        self.resolved = r;
                        changed = true;
                    }
                }
                Change::Restore(r) => {
                    for d in &r.dynamic {
                        self.dynamic.insert(d.name.clone(), d.clone());
                    }
                    self.admin.extend(r.admin.iter().map(|(n, s)| (n.clone(), *s)));
                    for (name, t) in &r.counters {
                        self.counters.entry(name.clone()).or_insert_with(|| Arc::new(NodeCounters::from_totals(t)));
                    }
                    self.restored = r.nodes.clone();
                    changed = true;
                }
            }
        }
        if !changed && self.started {
            return Applied { snapshot: None, created: Vec::new(), retired: Vec::new() };
        }
        self.rebuild(cursor)
    }

    /// Operator override of a node; kept across reloads. False if no such node is known.
    pub fn set_admin(&mut self, name: &str, state: AdminState) -> bool {
        let found = self.live.get(name).cloned().or_else(|| self.draining.iter().find(|b| b.name == name).cloned());
        match found {
            Some(b) => {
                b.set_admin(state);
                self.admin.insert(name.to_string(), state);
                true
            }
            None => false,
        }
    }

    /// An operator state for `name` whether or not the node is known yet (fleet states): kept
    /// for it, applied to it now if it is known. True when a known node took it.
    pub fn remember_admin(&mut self, name: &str, state: AdminState) -> bool {
        self.admin.insert(name.to_string(), state);
        let found = self.live.get(name).cloned().or_else(|| self.draining.iter().find(|b| b.name == name).cloned());
        found.map(|b| b.set_admin(state)).is_some()
    }

    /// Drop draining nodes that no longer carry traffic, and the counters of names gone for more
    /// than `keep`. Returns a snapshot to publish when the node set changed.
    pub fn prune(&mut self, now: Instant, keep: Duration, cursor: usize) -> Option<Snapshot> {
        let Registry { counters, live, draining, gone, .. } = self;
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
        let before = self.draining.len();
        self.draining.retain(|b| {
            let keep = b.active() > 0;
            if !keep {
                b.tasks.cancel();
                b.clear_pool();
            }
            keep
        });
        if self.draining.len() == before {
            return None;
        }
        self.rebuild(cursor).snapshot
    }

    /// Operator states by node name (kept for names away for now too).
    pub fn admin_states(&self) -> HashMap<String, AdminState> {
        self.admin.clone()
    }

    /// Names with kept counters (history), for tests and stats.
    pub fn kept_histories(&self) -> usize {
        self.counters.len()
    }

    /// Rebuild the node list from the desired state, reusing surviving backends.
    fn rebuild(&mut self, cursor: usize) -> Applied {
        let first = !self.started;
        self.started = true;
        let config = self.config.clone();

        // Desired members: static first (config order), then discovered ones not shadowed by a static name.
        // A static host name without an address is a placeholder (`addr` None here) that stays DOWN.
        let mut desired: Vec<Desired> = Vec::new();
        for n in &config.nodes {
            let (addr, port) = match &n.target {
                NodeTarget::Addr(a) => (Some(*a), a.port()),
                NodeTarget::Host(h) => (self.resolved.get(h).copied().flatten(), h.port),
            };
            desired.push(Desired {
                name: n.name.clone(),
                addr,
                port,
                origin: Origin::Static,
                up: first,
                tls: match &n.tls {
                    None => None,
                    Some(spec) => match self.node_tls.get(spec) {
                        Some(t) => Some(t.clone()),
                        // Never in plain text when TLS was asked for.
                        None => {
                            tracing::error!(node = %n.name, "no TLS connector built for this node: left out");
                            continue;
                        }
                    },
                },
            });
        }
        let cluster_tls = config.cluster.as_ref().and_then(|c| c.tls.as_ref());
        let cluster_tls = match cluster_tls {
            None => Ok(None),
            Some(spec) => self.node_tls.get(spec).cloned().map(Some).ok_or(()),
        };
        for d in self.dynamic.values() {
            if config.nodes.iter().any(|s| s.name == d.name) {
                tracing::warn!(node = %d.name, "discovered node shadowed by a static [[node]] of the same name");
                continue;
            }
            // Never UP on Redis' word: anyone who can publish there could otherwise take traffic.
            let Ok(tls) = cluster_tls.clone() else {
                tracing::error!(node = %d.name, "no TLS connector built for [cluster] node_tls: left out");
                continue;
            };
            desired.push(Desired {
                name: d.name.clone(),
                addr: Some(d.addr),
                port: d.addr.port(),
                origin: d.origin,
                up: false,
                tls,
            });
        }

        let mut new_live: HashMap<String, Arc<Backend>> = HashMap::with_capacity(desired.len());
        let mut order: Vec<Arc<Backend>> = Vec::with_capacity(desired.len());
        let mut created = Vec::new();
        let mut retired = Vec::new();
        for Desired { name, addr, port, origin, up, tls } in desired {
            // A node whose TLS settings changed is a new backend: its pooled connections speak the old way.
            let same = |b: &Backend| {
                b.tls == tls
                    && match addr {
                        Some(a) => !b.unresolved && b.addr == a,
                        None => b.unresolved && b.addr.port() == port,
                    }
            };
            let reuse = match self.live.remove(&name) {
                Some(b) if same(&b) => Some(b),
                Some(old) => {
                    retire(&mut self.draining, &mut retired, old);
                    None
                }
                None => {
                    // A draining node that comes back at the same address is revived as is.
                    let pos = self.draining.iter().position(|b| b.name == name && same(b));
                    pos.map(|p| self.draining.swap_remove(p))
                }
            };
            let b = match reuse {
                Some(b) => {
                    b.set_membership(Membership::Active);
                    b
                }
                None => {
                    let counters = self.counters.entry(name.clone()).or_default().clone();
                    let mut b = match addr {
                        Some(a) => Backend::new(name.clone(), a, origin, counters, up, self.workers),
                        None => Backend::unresolved(name.clone(), port, counters),
                    };
                    b.tls = tls;
                    let restored = self.restored.remove(&name).filter(|r| Some(r.addr) == addr && r.origin == origin);
                    if let Some(r) = &restored {
                        b.health = HealthState::restored(&r.health, r.leaving);
                    }
                    let b = Arc::new(b);
                    if let Some(s) = self.admin.get(&name) {
                        b.set_admin(*s);
                    }
                    if let Some(since) = restored.map(|r| r.admin_since).filter(|s| *s > 0) {
                        b.restore_admin_since(since);
                    }
                    created.push(b.clone());
                    b
                }
            };
            order.push(b.clone());
            new_live.insert(name, b);
        }
        for (_, old) in self.live.drain() {
            retire(&mut self.draining, &mut retired, old);
        }
        self.live = new_live;
        self.restored.clear();

        // Draining nodes stay visible (prefix answers 503, stats show them) until their traffic ends.
        order.extend(self.draining.iter().filter(|d| !self.live.contains_key(&d.name)).cloned());
        self.generation += 1;
        Applied { snapshot: Some(Snapshot::new(config, order, cursor, self.generation)), created, retired }
    }
}

/// A node the new snapshot must have: where it is, how it came, whether it starts UP, its TLS.
struct Desired {
    /// Node name: the key of the live map and of the kept counters.
    name: String,
    /// Where it is; None for a host name that did not resolve (a placeholder that stays DOWN).
    addr: Option<SocketAddr>,
    /// The port even without an address: an unresolved placeholder keeps it.
    port: u16,
    /// How it came: static, plugin or Kuzzle 2.
    origin: Origin,
    /// Starts UP: only static nodes of the first snapshot do; the others wait for a passing check.
    up: bool,
    /// HTTPS to the node; a change makes a new backend (pooled connections speak the old way).
    tls: Option<NodeTls>,
}

/// Move a backend out of the member set: no new traffic, existing traffic continues.
fn retire(draining: &mut Vec<Arc<Backend>>, retired: &mut Vec<Arc<Backend>>, b: Arc<Backend>) {
    tracing::info!(node = %b.name, addr = %b.addr, "node removed: draining");
    b.set_membership(Membership::Draining);
    b.clear_pool();
    if !draining.iter().any(|d| Arc::ptr_eq(d, &b)) {
        retired.push(b.clone());
        draining.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: &[(&str, u16)]) -> Change {
        let mut text = String::new();
        for (n, p) in nodes {
            text.push_str(&format!("[[node]]\nname = \"{n}\"\naddress = \"127.0.0.1:{p}\"\n"));
        }
        Change::Config(Arc::new(Config::parse(&text, "t.toml").expect("valid")))
    }

    /// Apply and return the published snapshot (the test's stand-in for the swap).
    fn apply(r: &mut Registry, c: Vec<Change>) -> Snapshot {
        r.apply(c, 0).snapshot.expect("a new snapshot")
    }

    #[test]
    fn reload_diffs_nodes() {
        let mut r = Registry::new(Arc::new(Config::default()), 1);
        let s1 = apply(&mut r, vec![cfg(&[("a", 1), ("b", 2)])]);
        assert_eq!(s1.nodes.len(), 2);
        assert!(s1.nodes.iter().all(|b| b.eligible()), "start-up nodes count as UP");
        let a1 = s1.node("a").cloned().expect("a");
        a1.counters.bytes_in.fetch_add(7, std::sync::atomic::Ordering::Relaxed);

        let guard = s1.node("b").expect("b").track();
        let applied = r.apply(vec![cfg(&[("a", 1), ("c", 3)])], 0);
        assert_eq!(applied.created.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(applied.retired.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["b"]);
        let s2 = applied.snapshot.expect("snapshot");
        assert!(Arc::ptr_eq(&a1, s2.node("a").expect("a kept")), "surviving node reused");
        let b = s2.node("b").expect("draining b still visible");
        assert_eq!(b.membership(), Membership::Draining);
        assert!(!b.eligible());
        assert!(!s2.node("c").expect("c").eligible(), "a node added by reload waits for a health check");
        drop(guard);
        let s3 = r.prune(Instant::now(), COUNTERS_KEEP, 0).expect("pruned");
        assert!(s3.node("b").is_none(), "drained node pruned once idle");

        let s4 = apply(&mut r, vec![cfg(&[("a", 1), ("b", 2)])]);
        let b = s4.node("b").cloned().expect("b back");
        assert_eq!(b.counters.sessions_total.load(std::sync::atomic::Ordering::Relaxed), 1, "history kept");
    }

    #[test]
    fn history_of_gone_nodes_is_forgotten_after_a_while() {
        let mut r = Registry::new(Arc::new(Config::default()), 1);
        let s = apply(&mut r, vec![cfg(&[("a", 1), ("b", 2)])]);
        drop(s.node("b").expect("b").track());
        apply(&mut r, vec![cfg(&[("a", 1)])]);
        let t0 = Instant::now();
        let keep = Duration::from_secs(10);
        assert!(r.prune(t0, keep, 0).expect("pruned").node("b").is_none(), "idle drained node pruned");
        r.prune(t0 + Duration::from_secs(5), keep, 0);
        assert_eq!(r.kept_histories(), 2, "history kept for a while");
        // Gone since the prune at t0 + 5 s (at t0 it was still draining).
        r.prune(t0 + Duration::from_secs(16), keep, 0);
        assert_eq!(r.kept_histories(), 1, "history of b forgotten");
        let s = apply(&mut r, vec![cfg(&[("a", 1), ("b", 2)])]);
        let b = s.node("b").cloned().expect("b back");
        assert_eq!(b.counters.sessions_total.load(std::sync::atomic::Ordering::Relaxed), 0, "a fresh history");
    }

    #[test]
    fn one_batch_one_snapshot_and_nothing_changed_publishes_nothing() {
        let mut r = Registry::new(Arc::new(Config::default()), 1);
        apply(&mut r, vec![cfg(&[])]);
        let joins: Vec<Change> = (0..50)
            .map(|i| {
                Change::Upsert(DynamicNode {
                    name: format!("n{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                    origin: Origin::Plugin,
                })
            })
            .collect();
        let applied = r.apply(joins.clone(), 0);
        assert_eq!(applied.created.len(), 50);
        assert_eq!(applied.snapshot.expect("one snapshot").generation, 2, "50 joins, one swap");
        assert!(r.apply(joins, 0).snapshot.is_none(), "the same set again changes nothing");
    }

    #[test]
    fn a_node_whose_tls_settings_change_is_a_new_backend() {
        let dir = std::env::temp_dir().join(format!("kgw-registry-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        let write_ca = || {
            let ck = rcgen::generate_simple_self_signed(vec!["n.test".to_string()]).expect("cert");
            std::fs::write(&ca, ck.cert.pem()).expect("write");
        };
        write_ca();
        let node = |tls: &str| {
            let text = format!("[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n{tls}");
            let config = Config::parse(&text, "t.toml").expect("valid");
            let tls = crate::core::node_tls::NodeTlsSet::build(&config).expect("CA file");
            vec![Change::NodeTls(Arc::new(tls)), Change::Config(Arc::new(config))]
        };
        let with_ca = format!("tls = true\nca = {:?}\n", ca.display().to_string());
        let mut r = Registry::new(Arc::new(Config::default()), 1);
        let plain = apply(&mut r, node("")).node("a").cloned().expect("a");
        assert!(plain.tls.is_none());
        let tls = apply(&mut r, node(&with_ca)).node("a").cloned().expect("a");
        assert!(tls.tls.is_some() && !Arc::ptr_eq(&plain, &tls), "plain -> TLS: a new backend");
        let same = apply(&mut r, node(&with_ca)).node("a").cloned().expect("a");
        assert!(Arc::ptr_eq(&tls, &same), "same settings, same CA: the backend (and its pool) stays");
        write_ca();
        let renewed = apply(&mut r, node(&with_ca)).node("a").cloned().expect("a");
        assert!(!Arc::ptr_eq(&tls, &renewed), "another CA file: a new backend (its pool trusted the old one)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_names_resolve_late_and_change_like_a_reload() {
        let text = "[[node]]\nname = \"k\"\naddress = \"kuzzle-1:7512\"\n";
        let config = Arc::new(Config::parse(text, "t.toml").expect("valid"));
        let h = crate::control::config::HostPort { host: "kuzzle-1".into(), port: 7512 };
        let resolved = |a: Option<&str>| {
            Change::Resolved(Arc::new(Resolved::from([(h.clone(), a.map(|a| a.parse().expect("addr")))])))
        };
        let mut r = Registry::new(config.clone(), 1);
        let s = apply(&mut r, vec![resolved(None), Change::Config(config.clone())]);
        let k = s.node("k").cloned().expect("an unresolved node is still a node (its prefix answers 503)");
        assert!(k.unresolved && !k.eligible(), "no address: DOWN, never picked");

        let applied = r.apply(vec![resolved(Some("10.0.0.7:7512"))], 0);
        let s = applied.snapshot.expect("the address is a change");
        let k2 = s.node("k").cloned().expect("k");
        assert_eq!((k2.unresolved, k2.addr), (false, "10.0.0.7:7512".parse().expect("addr")));
        assert_eq!(applied.created.len(), 1, "a checker starts for the resolved node");

        let _busy = k2.track();
        let s = apply(&mut r, vec![resolved(Some("10.0.0.8:7512"))]);
        assert_eq!(
            s.node("k").expect("k").addr,
            "10.0.0.8:7512".parse().expect("addr"),
            "new connections go to the new address"
        );
        assert_eq!(k2.membership(), Membership::Draining, "the old address drains");
        assert!(
            r.apply(vec![resolved(Some("10.0.0.8:7512"))], 0).snapshot.is_none(),
            "the same answer changes nothing"
        );
    }

    #[test]
    fn handed_over_nodes_route_as_they_did() {
        let old_health = |up: bool| {
            let h = HealthState::new(up);
            h.apply(|m, now, e| {
                m.record(
                    crate::core::machine::CheckResult {
                        kind: crate::core::machine::CheckKind::L7OK,
                        code: Some(200),
                        duration: Duration::ZERO,
                        at: 1,
                    },
                    now,
                    e,
                )
            });
            h.export().0
        };
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let restored = |p: u16, origin: Origin, up: bool| RestoredNode {
            addr: addr(p),
            origin,
            health: old_health(up),
            leaving: Leaving::No,
            admin_since: 7,
        };
        let k = DynamicNode { name: "k".into(), addr: addr(5), origin: Origin::Kuzzle2 };
        let restore = Restore {
            dynamic: vec![k.clone()],
            nodes: HashMap::from([
                ("k".into(), restored(5, Origin::Kuzzle2, false)),
                ("a".into(), restored(1, Origin::Static, true)),
                // Moved since: the restored health is not this node's.
                ("b".into(), restored(9, Origin::Static, true)),
            ]),
            admin: HashMap::from([("a".into(), AdminState::Drain)]),
            counters: HashMap::from([("a".into(), NodeTotals { sessions_total: 41, ..NodeTotals::default() })]),
        };
        let mut r = Registry::new(Arc::new(Config::default()), 1);
        let Change::Config(config) = cfg(&[("a", 1), ("b", 2)]) else { unreachable!() };
        let s = apply(&mut r, vec![Change::Restore(Arc::new(restore)), Change::Config(config)]);
        let k_node = s.node("k").cloned().expect("the discovered node is a member without Redis");
        assert!(k_node.health.is_up() && k_node.health.checked(), "routable at once: its health came along");
        let a = s.node("a").expect("a");
        assert_eq!((a.admin(), a.admin_since()), (AdminState::Drain, 7), "operator state and its time kept");
        assert_eq!(a.counters.sessions_total.load(std::sync::atomic::Ordering::Relaxed), 41);
        assert!(a.health.checked(), "a's history came along");
        assert!(!s.node("b").expect("b").health.checked(), "b moved: checked afresh (UP as a start-up node)");
        // Redis confirms the node: nothing changes; a later join is checked afresh.
        assert!(r.apply(vec![Change::Upsert(k)], 0).snapshot.is_none());
        let s = apply(&mut r, vec![Change::Remove("k".into())]);
        drop(s);
        r.prune(Instant::now(), COUNTERS_KEEP, 0);
        let back = DynamicNode { name: "k".into(), addr: addr(5), origin: Origin::Kuzzle2 };
        let s = apply(&mut r, vec![Change::Upsert(back)]);
        assert!(!s.node("k").expect("k").health.is_up(), "a rejoin waits for its own check");
    }

    #[test]
    fn admin_state_survives_reload_and_dynamic_nodes_merge() {
        let mut r = Registry::new(Arc::new(Config::default()), 1);
        apply(&mut r, vec![cfg(&[("a", 1)])]);
        assert!(r.set_admin("a", AdminState::Drain));
        assert!(!r.set_admin("zz", AdminState::Drain));
        let s = apply(&mut r, vec![cfg(&[("a", 9)])]);
        assert_eq!(s.node("a").expect("a").admin(), AdminState::Drain);
        let d = DynamicNode { name: "d".into(), addr: "127.0.0.1:5".parse().expect("addr"), origin: Origin::Plugin };
        let s = apply(&mut r, vec![Change::Upsert(d.clone())]);
        assert!(!s.node("d").expect("d").eligible(), "a node learned from Redis waits for a passing check");
        assert!(r.apply(vec![Change::Upsert(d)], 0).snapshot.is_none());
        let s = apply(&mut r, vec![Change::Remove("d".into())]);
        assert_eq!(s.node("d").map(|b| b.membership()), Some(Membership::Draining));
    }
}
