//! Control plane: the one reload path every trigger goes through (file watcher, SIGHUP,
//! `POST /reload`): validate, bind changed listeners, swap; plus the background loops that prune
//! drained nodes and enforce `drain_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::Membership;
use crate::config::{Config, ConfigError};
use crate::server::StartError;
use crate::state::Gateway;

/// Why a reload was refused (the gateway keeps the last good configuration).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{file}: {source}")]
    Listen { file: String, source: StartError },
}

/// Start the control-plane loops (pruning, drain timeout, SIGHUP, file watch); they stop with
/// `gw.shutdown`.
pub fn start(gw: &Arc<Gateway>) {
    let g = gw.clone();
    gw.background.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut draining = DrainClock::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    draining.enforce(&g, Instant::now());
                    g.prune();
                }
                _ = g.shutdown.cancelled() => return,
            }
        }
    });
    #[cfg(unix)]
    {
        let g = gw.clone();
        gw.background.spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; reload with POST /reload instead");
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading");
                        let _ = reload(&g);
                    }
                    _ = g.shutdown.cancelled() => return,
                }
            }
        });
    }
    crate::watch::start(gw);
}

/// Settings read once at start: a change is accepted (the rest of the file applies) but only
/// takes effect after a restart or a binary upgrade.
pub fn not_reloadable(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.gateway.threads != new.gateway.threads {
        v.push("gateway.threads");
    }
    if old.gateway.max_connections != new.gateway.max_connections {
        v.push("gateway.max_connections");
    }
    if old.gateway.upgrade_socket != new.gateway.upgrade_socket {
        v.push("gateway.upgrade_socket");
    }
    if old.gateway.watch != new.gateway.watch {
        v.push("gateway.watch");
    }
    v
}

/// Re-read the configuration file, validate it, bind any listener whose address changed, and
/// apply it; on any error keep the last good configuration and record the refusal.
pub fn reload(gw: &Arc<Gateway>) -> Result<(), ReloadError> {
    // One reload at a time, whatever triggered it; sync code only, never held across an await.
    let _one = gw.listeners.reload_lock.lock().unwrap_or_else(PoisonError::into_inner);
    let old = gw.config();
    let path = old.source.clone();
    let result = Config::load(Path::new(&path)).map_err(ReloadError::from).and_then(|new| {
        let plan = crate::server::prepare_rebind(gw, &new)
            .map_err(|source| ReloadError::Listen { file: path.clone(), source })?;
        Ok((new, plan))
    });
    match result {
        Ok((new, plan)) => {
            let fixed = not_reloadable(&old, &new);
            if !fixed.is_empty() {
                tracing::warn!(
                    settings = ?fixed,
                    "these settings changed but cannot change live: they apply after a restart or `kuzzle-gateway --upgrade`"
                );
            }
            let listeners = plan.summary();
            let summary = change_summary(&old, &new);
            gw.apply_config(new);
            crate::server::commit_rebind(gw, plan);
            let msg = format!("reloaded {path}{}", join(&summary, &listeners));
            tracing::info!(file = %path, changes = ?summary, listeners = ?listeners, "configuration reloaded");
            gw.record_reload(true, msg);
            Ok(())
        }
        Err(e) => {
            tracing::error!("configuration refused, keeping the last good one: {e}");
            gw.record_reload(false, e.to_string());
            Err(e)
        }
    }
}

fn join(a: &[String], b: &[String]) -> String {
    let all: Vec<&str> = a.iter().chain(b).map(String::as_str).collect();
    if all.is_empty() {
        String::new()
    } else {
        format!(": {}", all.join("; "))
    }
}

/// What changed, in a few words, for the log and the stats page.
pub fn change_summary(old: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    let added: Vec<&str> = new.nodes.iter().filter(|n| !old.nodes.contains(n)).map(|n| n.name.as_str()).collect();
    let removed: Vec<&str> = old.nodes.iter().filter(|n| !new.nodes.contains(n)).map(|n| n.name.as_str()).collect();
    if !added.is_empty() {
        v.push(format!("nodes added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        v.push(format!("nodes removed: {}", removed.join(", ")));
    }
    if old.balance != new.balance {
        v.push(format!("balance: {}", new.balance.algorithm.as_str()));
    }
    if old.timeouts != new.timeouts {
        v.push("timeouts".into());
    }
    if old.health != new.health {
        v.push("health".into());
    }
    if old.stats != new.stats {
        v.push("stats".into());
    }
    if old.tls != new.tls {
        v.push("tls".into());
    }
    v
}

/// When each draining node started draining, to close its tunnels after `drain_timeout`.
#[derive(Default)]
struct DrainClock {
    since: HashMap<(String, SocketAddr), (Instant, bool)>,
}

impl DrainClock {
    fn enforce(&mut self, gw: &Gateway, now: Instant) {
        let snap = gw.snapshot.load();
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

    fn cfg(text: &str) -> Config {
        Config::parse(text, "t.toml").expect("valid")
    }

    #[test]
    fn fixed_settings_are_named() {
        let old = cfg("[gateway]\nthreads = 2\n");
        let new = cfg("[gateway]\nthreads = 4\nmax_connections = 10\n[balance]\nalgorithm = \"source\"\n");
        assert_eq!(not_reloadable(&old, &new), vec!["gateway.threads", "gateway.max_connections"]);
        assert!(not_reloadable(&old, &old).is_empty());
    }

    #[test]
    fn summary_lists_node_and_setting_changes() {
        let old = cfg("[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
        let new = cfg("[balance]\nalgorithm = \"roundrobin\"\n[[node]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n");
        assert_eq!(change_summary(&old, &new), vec!["nodes added: b", "nodes removed: a", "balance: roundrobin"]);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_clock_kills_tunnels_once_after_timeout() {
        let gw = Gateway::new(Config::default());
        gw.apply_config(cfg("[gateway]\ndrain_timeout = \"5s\"\n[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"));
        let a = gw.snapshot.load().node("a").cloned().expect("a");
        let _tunnel = a.track();
        let token = a.tunnel_kill_token();
        gw.apply_config(cfg("[gateway]\ndrain_timeout = \"5s\"\n"));
        let mut clock = DrainClock::default();
        let t0 = Instant::now();
        clock.enforce(&gw, t0);
        clock.enforce(&gw, t0 + Duration::from_secs(4));
        assert!(!token.is_cancelled(), "killed before drain_timeout");
        clock.enforce(&gw, t0 + Duration::from_secs(5));
        assert!(token.is_cancelled(), "not killed after drain_timeout");
    }
}
