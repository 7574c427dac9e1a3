//! Control plane: what a binary upgrade hands the new process besides the sockets, as haproxy's
//! `server-state-file` does: the nodes learned from Redis (origin, identity, address), every
//! node's health and counters, operator states, the client-side counters. Versioned JSON; the new
//! process uses what it can, says what it could not, and then waits until it can route.
//!
//! What is used: nothing when the format version differs or the state does not parse; operator
//! states and counters whenever it parses; the node list and health verdicts only when the
//! settings they were learned under (`[cluster]` sources, Redis, addresses, `[health]` paths) are
//! those of the new process and the old one could route.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::control::cluster::membership::MemberState;
use crate::control::cluster::ClusterState;
use crate::control::config::Config;
use crate::core::backend::{AdminState, Membership, Origin};
use crate::core::counters::{FrontendTotals, NodeTotals};
use crate::core::health::{Leaving, MachineState};
use crate::core::registry::{DynamicNode, Restore, RestoredNode};
use crate::core::Core;

/// Format version of [`State`]; another version is not read at all.
pub const VERSION: u32 = 1;

/// What the old process hands over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// [`VERSION`] of the process that wrote it.
    pub version: u32,
    /// The old process could route (it had passed its own start-up wait): its node list is whole.
    pub routable: bool,
    /// The settings the nodes and their health were learned under.
    pub basis: Basis,
    /// Member nodes (draining ones stay with the old process).
    pub nodes: Vec<NodeState>,
    /// Members of the Redis membership table, by identity.
    pub members: Vec<MemberState>,
    /// Operator states by node name (names away for now included).
    pub admin: BTreeMap<String, AdminState>,
    /// Client-side counters.
    pub frontend: FrontendTotals,
}

/// One member node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Name (URL prefix).
    pub name: String,
    /// Where it was reached.
    pub addr: SocketAddr,
    /// Static, plugin or Kuzzle 2 ID card.
    pub origin: Origin,
    /// Health: UP/DOWN, the streak under way, history.
    pub health: MachineState,
    /// It had said it was shutting down (until checks bring it UP, or for good).
    pub leaving: Leaving,
    /// Epoch seconds its operator state was set (0: never).
    pub admin_since: u64,
    /// Its counters.
    pub counters: NodeTotals,
}

/// The settings a node list and its health verdicts depend on: another Redis, other sources,
/// other allowed networks or node port, TLS to nodes, other check paths make them another
/// process's business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basis {
    /// Where and how nodes were learned (None: no `[cluster]`).
    pub cluster: Option<ClusterBasis>,
    /// `[health] path`: the check static and plugin nodes passed.
    pub health_path: String,
    /// `[health] kuzzle2_path`: the check ID-card nodes passed.
    pub kuzzle2_path: String,
}

/// The `[cluster]` keys that decide which nodes there are, where, and how they are spoken to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBasis {
    /// One Redis.
    pub redis: Option<String>,
    /// Or a Redis Cluster's seeds.
    pub redis_cluster: Option<Vec<String>>,
    /// Sources: pub/sub rooms, discovery set, Kuzzle 2 ID cards.
    pub sources: [bool; 3],
    /// HTTP port of nodes known by their IP only.
    pub node_port: u16,
    /// Networks nodes may be announced in.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// HTTPS to the nodes, with which CA and name.
    pub node_tls: bool,
    /// CA bundle for the nodes' certificates.
    pub node_ca: Option<PathBuf>,
    /// Name their certificates must carry.
    pub node_server_name: Option<String>,
}

impl Basis {
    /// The basis of a configuration.
    pub fn of(config: &Config) -> Basis {
        Basis {
            cluster: config.cluster.as_ref().map(|c| ClusterBasis {
                redis: c.redis.clone(),
                redis_cluster: c.redis_cluster.clone(),
                sources: [c.pubsub, c.discovery, c.kuzzle2],
                node_port: c.node_port,
                allowed_networks: c.allowed_networks.clone(),
                node_tls: c.node_tls,
                node_ca: c.node_ca.clone(),
                node_server_name: c.node_server_name.clone(),
            }),
            health_path: config.health.path.clone(),
            kuzzle2_path: config.health.kuzzle2_path.clone(),
        }
    }

    /// Which part differs, for the log (never the values: Redis URLs may hold a password).
    fn differs(&self, other: &Basis) -> &'static str {
        if self.cluster != other.cluster {
            "the [cluster] settings changed"
        } else {
            "the [health] check paths changed"
        }
    }
}

/// The state of a running gateway, to hand over (`routable`: it takes clients).
pub fn capture(core: &Core, cluster: &ClusterState, routable: bool) -> State {
    let snap = core.snapshot_full();
    let nodes = snap
        .nodes
        .iter()
        .filter(|b| b.membership() == Membership::Active && !b.unresolved)
        .map(|b| {
            let (health, leaving) = b.health.export();
            NodeState {
                name: b.name.clone(),
                addr: b.addr,
                origin: b.origin,
                health,
                leaving,
                admin_since: b.admin_since(),
                counters: b.counters.totals(),
            }
        })
        .collect();
    State {
        version: VERSION,
        routable,
        basis: Basis::of(&snap.config),
        nodes,
        members: cluster.export(),
        admin: core.admin_states().into_iter().collect(),
        frontend: core.frontend.totals(),
    }
}

/// What the new process takes from a handed state.
#[derive(Debug, Default)]
pub struct Taken {
    /// For the registry's first batch (None: nothing usable).
    pub restore: Option<Arc<Restore>>,
    /// For the membership table (empty unless the node list is used).
    pub members: Vec<MemberState>,
    /// Client-side counters to continue from.
    pub frontend: Option<FrontendTotals>,
    /// The node list and health came along from a process that could route: this one can route
    /// from its first connection.
    pub routable: bool,
    /// What was used, or why not, for the log.
    pub note: String,
}

/// Read what the old process sent (`raw`: None from an older gateway that sends no state) and
/// keep what `config` can use.
pub fn take(raw: Option<serde_json::Value>, config: &Config) -> Taken {
    let nothing = |note: String| Taken { note, ..Taken::default() };
    let Some(raw) = raw else {
        return nothing("the running gateway sent no state (an older version)".into());
    };
    match raw.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        v => return nothing(format!("state format {v:?}, this version reads {VERSION}")),
    }
    let s: State = match serde_json::from_value(raw) {
        Ok(s) => s,
        Err(e) => return nothing(format!("unreadable state: {e}")),
    };
    let counters: HashMap<String, NodeTotals> = s.nodes.iter().map(|n| (n.name.clone(), n.counters.clone())).collect();
    let mut restore = Restore { admin: s.admin.into_iter().collect(), counters, ..Restore::default() };
    let basis = Basis::of(config);
    let (members, routable, note) = if s.basis != basis {
        (Vec::new(), false, format!("operator states and counters used; not the nodes: {}", s.basis.differs(&basis)))
    } else {
        restore.dynamic = s
            .nodes
            .iter()
            .filter(|n| n.origin != Origin::Static)
            .map(|n| DynamicNode { name: n.name.clone(), addr: n.addr, origin: n.origin })
            .collect();
        restore.nodes = s
            .nodes
            .into_iter()
            .map(|n| {
                let r = RestoredNode {
                    addr: n.addr,
                    origin: n.origin,
                    health: n.health,
                    leaving: n.leaving,
                    admin_since: n.admin_since,
                };
                (n.name, r)
            })
            .collect();
        let note = if s.routable {
            format!("{} nodes with their health, operator states and counters used", restore.nodes.len())
        } else {
            "nodes used, but the running gateway could not route yet".into()
        };
        (s.members, s.routable, note)
    };
    Taken { restore: Some(Arc::new(restore)), members, frontend: Some(s.frontend), routable, note }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::Change;

    fn cfg(text: &str) -> Arc<Config> {
        Arc::new(Config::parse(text, "t.toml").expect("valid"))
    }

    const CLUSTER: &str = "[cluster]\nredis = \"redis://127.0.0.1:1/0\"\n";

    /// A running gateway's core with a static node `s` and a discovered node `k` (checked, UP),
    /// `k` in DRAIN; its state as JSON.
    fn old_state(text: &str) -> serde_json::Value {
        let config = cfg(&format!("{text}[[node]]\nname = \"s\"\naddress = \"127.0.0.1:1\"\n"));
        let core = Core::new(config.clone(), Vec::new(), Box::new(|_| {}), 1, Default::default());
        let k = DynamicNode { name: "k".into(), addr: "127.0.0.1:2".parse().expect("addr"), origin: Origin::Kuzzle2 };
        core.apply([Change::Upsert(k)]);
        let b = core.snapshot().node("k").cloned().expect("k");
        b.health.set_up(true);
        b.counters.sessions_total.fetch_add(9, std::sync::atomic::Ordering::Relaxed);
        assert!(core.set_admin("k", AdminState::Drain));
        let own: crate::control::cluster::OwnAddrs = Arc::new(Vec::new);
        let cluster = crate::control::cluster::ClusterState::new(own);
        serde_json::to_value(capture(&core, &cluster, true)).expect("json")
    }

    /// The core a new process would build with what it took.
    fn new_core(text: &str, taken: &Taken) -> Arc<Core> {
        let config = cfg(&format!("{text}[[node]]\nname = \"s\"\naddress = \"127.0.0.1:1\"\n"));
        Core::new(
            config,
            taken.restore.iter().map(|r| Change::Restore(r.clone())).collect(),
            Box::new(|_| {}),
            1,
            Default::default(),
        )
    }

    #[test]
    fn same_settings_route_at_once() {
        let taken = take(Some(old_state(CLUSTER)), &cfg(CLUSTER));
        assert!(taken.routable, "{}", taken.note);
        let core = new_core(CLUSTER, &taken);
        let k = core.snapshot().node("k").cloned().expect("k is a member without Redis");
        assert!(k.health.is_up() && k.admin() == AdminState::Drain);
        assert_eq!(k.counters.sessions_total.load(std::sync::atomic::Ordering::Relaxed), 9);
    }

    #[test]
    fn changed_settings_keep_only_operator_states_and_counters() {
        let other = "[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nnode_port = 7000\n";
        let taken = take(Some(old_state(CLUSTER)), &cfg(other));
        assert!(!taken.routable && taken.note.contains("[cluster]"), "{}", taken.note);
        assert!(!taken.note.contains("redis://"), "no Redis URL in logs: {}", taken.note);
        let core = new_core(other, &taken);
        assert!(core.snapshot().node("k").is_none(), "the node list is learned again");
        assert_eq!(core.admin_states().get("k"), Some(&AdminState::Drain), "kept for when k comes back");
        let health = format!("{CLUSTER}[health]\nkuzzle2_path = \"/_healthCheck\"\n");
        assert!(take(Some(old_state(CLUSTER)), &cfg(&health)).note.contains("[health]"));
    }

    #[test]
    fn another_version_or_no_state_is_not_used() {
        let mut raw = old_state(CLUSTER);
        raw["version"] = 99.into();
        let taken = take(Some(raw), &cfg(CLUSTER));
        assert!(taken.restore.is_none() && !taken.routable && taken.note.contains("99"), "{}", taken.note);
        let taken = take(None, &cfg(CLUSTER));
        assert!(taken.restore.is_none() && taken.note.contains("older version"));
        let mut raw = old_state(CLUSTER);
        raw["nodes"] = "garbage".into();
        assert!(take(Some(raw), &cfg(CLUSTER)).note.contains("unreadable"));
    }
}
