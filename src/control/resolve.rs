//! Control plane: resolve the host names of `[[node]]`s (the system resolver, on blocking threads,
//! never on the async ones), at start, on reload and every `[gateway] resolve_interval`; a change
//! reaches the core as one `Change::Resolved` batch.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use tokio::sync::watch;

use crate::control::config::{Config, HostPort};
use crate::core::registry::{Change, Resolved};
use crate::core::{Core, Lifecycle};

/// One name: its first IPv4 address if it has one (nodes listen on IPv4 far more often), else its
/// first address; None when it has none.
pub fn lookup(h: &HostPort) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = match (h.host.as_str(), h.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::debug!(host = %h, error = %e, "DNS lookup failed");
            return None;
        }
    };
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied()
}

/// Every name of `names`, looked up on the calling thread.
fn lookup_all(names: Vec<HostPort>) -> Resolved {
    names.into_iter().map(|h| (h.clone(), lookup(&h))).collect()
}

/// Every host name of `config`, resolved on the calling thread (start-up, `--check`).
pub fn resolve_blocking(config: &Config) -> Resolved {
    lookup_all(config.host_names())
}

/// Every host name of `config`, resolved on a blocking thread.
pub async fn resolve(config: &Config) -> Resolved {
    let names = config.host_names();
    if names.is_empty() {
        return Resolved::new();
    }
    tokio::task::spawn_blocking(move || lookup_all(names)).await.unwrap_or_default()
}

/// Log the names that have no address (once per resolution that changed something).
pub fn warn_unresolved(r: &Resolved) {
    for (h, a) in r {
        if a.is_none() {
            tracing::warn!(host = %h, "DNS: no address for a [[node]] host name; the node stays DOWN until it resolves");
        }
    }
}

/// Re-resolve every `resolve_interval` (read from the settings watch each round); stops with
/// `life.shutdown`. Only a changed result is applied.
pub fn start(core: Arc<Core>, settings: watch::Receiver<Arc<Config>>, mut last: Resolved, life: &Lifecycle) {
    let stop = life.shutdown.clone();
    life.background.spawn(async move {
        loop {
            let every = settings.borrow().gateway.resolve_interval.0.max(std::time::Duration::from_millis(100));
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let config = settings.borrow().clone();
            let now = resolve(&config).await;
            if now != last {
                for (h, a) in &now {
                    if last.get(h) != Some(a) {
                        tracing::info!(host = %h, address = ?a, "DNS: a [[node]] host name resolves differently");
                    }
                }
                core.apply([Change::Resolved(Arc::new(now.clone()))]);
                last = now;
            }
        }
    });
}
