//! Control plane: the once-a-second upkeep of nodes: prune drained nodes that carry no traffic
//! any more, close the tunnels of nodes draining for longer than `drain_timeout`, and close pooled
//! node connections idle for `pool_idle` (an idle gateway holds no fd for them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::backend::Membership;
use crate::core::snapshot::Snapshot;
use crate::core::{Core, Lifecycle};

/// Start the upkeep loop; it stops with `life.shutdown`.
pub fn start(core: Arc<Core>, life: &Lifecycle) {
    let stop = life.shutdown.clone();
    life.background.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut draining = DrainClock::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let snap = core.snapshot();
                    draining.enforce(&snap, Instant::now());
                    for b in &snap.nodes {
                        b.expire_idle(snap.config.timeouts.pool_idle.0);
                    }
                    drop(snap);
                    core.prune(Instant::now());
                }
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// When each draining node started draining, to close its tunnels after `drain_timeout`.
#[derive(Default)]
struct DrainClock {
    /// By draining node (name, address): when it started draining, and whether its tunnels were closed.
    since: HashMap<(String, SocketAddr), (Instant, bool)>,
}

impl DrainClock {
    fn enforce(&mut self, snap: &Snapshot, now: Instant) {
        let timeout = snap.config.gateway.drain_timeout.map(|d| d.0);
        let mut seen = Vec::new();
        for b in snap.nodes.iter().filter(|b| b.membership() == Membership::Draining) {
            let key = (b.name.clone(), b.addr);
            let (since, killed) = self.since.entry(key.clone()).or_insert((now, false));
            if let Some(t) = timeout {
                if !*killed && now.duration_since(*since) >= t && b.active() > 0 {
                    tracing::info!(node = %b.name, drain_timeout = ?t, "drain timeout: closing the node's remaining tunnels");
                    b.kill_tunnels();
                    *killed = true;
                }
            }
            seen.push(key);
        }
        self.since.retain(|k, _| seen.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use crate::core::registry::Change;

    fn cfg(text: &str) -> Arc<Config> {
        Arc::new(Config::parse(text, "t.toml").expect("valid"))
    }

    #[tokio::test(start_paused = true)]
    async fn drain_clock_kills_tunnels_once_after_timeout() {
        let core = Core::new(
            cfg("[gateway]\ndrain_timeout = \"5s\"\n[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"),
            Vec::new(),
            Box::new(|_| {}),
            1,
            Default::default(),
        );
        let a = core.snapshot().node("a").cloned().expect("a");
        let _tunnel = a.track();
        let token = a.tunnel_kill_token();
        core.apply([Change::Config(cfg("[gateway]\ndrain_timeout = \"5s\"\n"))]);
        let mut clock = DrainClock::default();
        let t0 = Instant::now();
        clock.enforce(&core.snapshot(), t0);
        clock.enforce(&core.snapshot(), t0 + Duration::from_secs(4));
        assert!(!token.is_cancelled(), "killed before drain_timeout");
        clock.enforce(&core.snapshot(), t0 + Duration::from_secs(5));
        assert!(token.is_cancelled(), "not killed after drain_timeout");
    }
}
