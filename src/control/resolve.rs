//! Control plane: resolve the host names of `[[node]]`s (the system resolver, on blocking threads,
//! never on the async ones), at start, on reload and every `[gateway] resolve_interval`. One task
//! owns the names and their addresses: the reload task tells it the new names (a message) and
//! applies its answer with the configuration, so a lookup in flight can never undo a reload.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

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

/// `names`, resolved on a blocking thread.
async fn resolve(names: Vec<HostPort>) -> Resolved {
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

/// What the reload task asks of the DNS task: resolve these names now, and from now on.
struct Follow {
    /// The host names of the new configuration.
    names: Vec<HostPort>,
    /// Its `[gateway] resolve_interval`.
    every: Duration,
    /// Their addresses, for the reload to apply with the configuration.
    reply: oneshot::Sender<Resolved>,
}

/// Talks to the DNS task (the reload task holds it).
#[derive(Clone)]
pub struct Dns(mpsc::Sender<Follow>);

impl Dns {
    /// Resolve the host names of `config` now (off the async threads), and have the task follow
    /// them from now on; the caller applies the answer in the same batch as `config`. A stopped
    /// task answers with a lookup of its own.
    pub async fn follow(&self, config: &Config) -> Resolved {
        let (reply, rx) = oneshot::channel();
        let ask = Follow { names: config.host_names(), every: interval(config), reply };
        if self.0.send(ask).await.is_ok() {
            if let Ok(r) = rx.await {
                return r;
            }
        }
        resolve(config.host_names()).await
    }
}

/// `[gateway] resolve_interval`, at least 100 ms.
fn interval(config: &Config) -> Duration {
    config.gateway.resolve_interval.0.max(Duration::from_millis(100))
}

/// Start the DNS task with the names of `config` and their addresses `last` (resolved at start);
/// it re-resolves them every `resolve_interval` and applies a changed result; stops with
/// `life.shutdown`.
pub fn start(core: Arc<Core>, config: &Config, mut last: Resolved, life: &Lifecycle) -> Dns {
    let (tx, mut rx) = mpsc::channel::<Follow>(4);
    let stop = life.shutdown.clone();
    let mut names = config.host_names();
    let mut every = interval(config);
    life.background.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                ask = rx.recv() => {
                    let Some(ask) = ask else { return };
                    // The reload applies this answer with its configuration: the next round
                    // compares with it.
                    (names, every) = (ask.names, ask.every);
                    last = resolve(names.clone()).await;
                    let _ = ask.reply.send(last.clone());
                    continue;
                }
                _ = stop.cancelled() => return,
            }
            let now = resolve(names.clone()).await;
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
    Dns(tx)
}
