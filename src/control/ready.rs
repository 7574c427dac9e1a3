//! Control plane: when a starting gateway can route, so that it takes clients only then. At once
//! with static nodes only (they start UP) or with the nodes and health an upgrade handed over;
//! with `[cluster]`, once Redis was read the first time and every node found there had its first
//! check (passed or failed), or after `[cluster] ready_timeout` whatever happened (a cluster whose
//! nodes are all down gets the gateway's 503, not a connection left waiting). `/healthz` says it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::cluster::ClusterState;
use crate::core::backend::{Membership, Origin};
use crate::core::snapshot::Snapshot;
use crate::core::{Core, Gate, Lifecycle};

/// How often the first checks are looked at while waiting for them: only during start-up, and a
/// check takes longer than this (a checker has no "first result" event to wait on).
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// Open `routable` once the gateway can route (`handed`: an upgrade brought the nodes and their
/// health from a process that could); the waiting task stops with `life.shutdown`.
pub fn start(core: Arc<Core>, cluster: Arc<ClusterState>, routable: Gate, handed: bool, life: &Lifecycle) {
    let config = core.config();
    let timeout = match config.cluster.as_ref() {
        Some(c) if !handed => c.ready_timeout.0,
        _ => {
            let why = if handed { "nodes and health handed over" } else { "static nodes start UP" };
            tracing::info!(why, "ready: routing from the first connection");
            routable.open();
            return;
        }
    };
    let stop = life.shutdown.clone();
    life.background.spawn(async move {
        let started = Instant::now();
        let done = async {
            cluster.synced.wait().await;
            while !first_checks_done(&core.snapshot()) {
                tokio::time::sleep(LOOK_EVERY).await;
            }
        };
        tokio::select! {
            _ = done => {
                let snap = core.snapshot();
                let up = snap.nodes.iter().filter(|b| b.eligible()).count();
                tracing::info!(
                    nodes = snap.nodes.len(),
                    up,
                    after_ms = started.elapsed().as_millis() as u64,
                    "ready: Redis read and every node found there checked once"
                );
            }
            _ = tokio::time::sleep(timeout) => {
                tracing::warn!(
                    ready_timeout = ?timeout,
                    redis_read = cluster.synced.is_open(),
                    "ready_timeout reached before the first membership read and checks were done: taking clients with what is known"
                );
            }
            _ = stop.cancelled() => return,
        }
        routable.open();
    });
}

/// Every node learned from Redis that is a member had its first check, passed or failed (static
/// nodes start UP and need none).
pub fn first_checks_done(s: &Snapshot) -> bool {
    s.nodes
        .iter()
        .filter(|b| b.origin != Origin::Static && b.membership() == Membership::Active)
        .all(|b| b.health.checked())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use crate::core::health::{CheckKind, CheckResult};
    use crate::core::registry::{Change, DynamicNode};

    fn check(b: &crate::core::backend::Backend, ok: bool) {
        let kind = if ok { CheckKind::L7OK } else { CheckKind::L4CON };
        b.health.apply(|m, now, e| m.record(CheckResult { kind, code: None, duration: Duration::ZERO, at: 0 }, now, e));
    }

    #[test]
    fn waits_for_the_first_check_of_every_discovered_node() {
        let config = Config::parse("[[node]]\nname = \"s\"\naddress = \"127.0.0.1:1\"\n", "t.toml").expect("valid");
        let core = Core::new(Arc::new(config), Vec::new(), Box::new(|_| {}), 1, Default::default());
        assert!(first_checks_done(&core.snapshot()), "static nodes need no check");
        let node =
            |n: &str, p: u16| DynamicNode { name: n.into(), addr: ([127, 0, 0, 1], p).into(), origin: Origin::Kuzzle2 };
        core.apply([Change::Upsert(node("a", 2)), Change::Upsert(node("b", 3))]);
        let snap = core.snapshot_full();
        assert!(!first_checks_done(&snap));
        check(snap.node("a").expect("a"), true);
        assert!(!first_checks_done(&snap), "b not checked yet");
        check(snap.node("b").expect("b"), false);
        assert!(first_checks_done(&snap), "a failed check counts: the node is known DOWN");
        // A node that left is not waited for.
        core.apply([Change::Upsert(node("c", 4))]);
        core.apply([Change::Remove("c".into())]);
        assert!(first_checks_done(&core.snapshot()));
    }
}
