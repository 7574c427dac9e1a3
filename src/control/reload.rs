//! Control plane: the one reload path. The file watcher, SIGHUP and `POST /reload` send a request to
//! the reload task and await its answer; it reads and validates the file and builds its TLS
//! material on the blocking pool (the task runs on worker 0, which also serves clients), binds
//! changed listeners, has the DNS task resolve the new host names, and applies the configuration
//! to the core in one swap (the core publishes it to the control plane's settings watch).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::control::config::{Config, ConfigErrors};
use crate::control::listeners::{LiveListeners, StartError};
use crate::control::resolve::Dns;
use crate::control::tls::TlsSlot;
use crate::core::node_tls::NodeTlsSet;
use crate::core::registry::Change;
use crate::core::{Core, Lifecycle};

/// Why a reload was refused (the gateway keeps the last good configuration).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has mistakes (every one of them).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A new listen address cannot be bound.
    #[error("{file}: {source}")]
    Listen {
        /// The configuration file.
        file: String,
        /// Why the address cannot be bound.
        source: StartError,
    },
    /// A new certificate pair does not load.
    #[error("{file}: TLS: {message}")]
    Tls {
        /// The configuration file.
        file: String,
        /// Which pair, and why it does not load.
        message: String,
    },
    /// The reload task has ended.
    #[error("the gateway is stopping")]
    Stopped,
}

/// Outcome of the last configuration reload, for logs and the stats page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Applied (true) or refused.
    pub ok: bool,
    /// Epoch seconds.
    pub at: u64,
    /// The summary of what changed, or every reason it was refused.
    pub message: String,
}

/// Reload counters and the last outcome (read by the stats page and metrics).
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied.
    pub ok: AtomicU64,
    /// Reloads refused.
    pub failed: AtomicU64,
    /// The last outcome, for the stats page.
    last: Mutex<Option<ReloadStatus>>,
}

impl ReloadStats {
    /// Count a reload outcome and keep it as the last one.
    pub fn record(&self, ok: bool, message: String) {
        let n = if ok { &self.ok } else { &self.failed };
        n.fetch_add(1, Ordering::Relaxed);
        *crate::util::lock(&self.last) = Some(ReloadStatus { ok, at: crate::util::epoch_secs(), message });
    }

    pub fn last(&self) -> Option<ReloadStatus> {
        crate::util::lock(&self.last).clone()
    }
}

type Reply = oneshot::Sender<Result<String, ReloadError>>;

/// Asks the reload task for a reload; cheap to clone (the watcher, SIGHUP and ops each hold one).
#[derive(Clone)]
pub struct ReloadHandle(mpsc::Sender<Reply>);

impl ReloadHandle {
    /// Reload and wait for the outcome: the summary line, or why the file was refused.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.map_err(|_| ReloadError::Stopped)?;
        rx.await.map_err(|_| ReloadError::Stopped)?
    }
}

/// What the reload task writes to.
pub struct Reloader {
    /// Where the configuration is applied (and published to the control plane).
    pub core: Arc<Core>,
    /// Re-bound when a listen address changes.
    pub listeners: Arc<LiveListeners>,
    /// The TLS listener's certificates, re-read on every reload.
    pub tls: TlsSlot,
    /// The DNS task, told the new host names.
    pub dns: Dns,
    /// Outcomes, for the stats page and metrics.
    pub stats: Arc<ReloadStats>,
}

/// Requests waiting for the reload task.
pub struct Requests(mpsc::Receiver<Reply>);

/// The handle triggers use, and the queue the reload task will read.
pub fn channel() -> (ReloadHandle, Requests) {
    // Reloads are rare: a short queue; one reload runs at a time, in arrival order.
    let (tx, rx) = mpsc::channel::<Reply>(16);
    (ReloadHandle(tx), Requests(rx))
}

/// Start the reload task; it stops with `life.shutdown`.
pub fn start(requests: Requests, r: Reloader, life: &Lifecycle) {
    let mut rx = requests.0;
    let stop = life.shutdown.clone();
    life.background.spawn(async move {
        loop {
            let reply = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = stop.cancelled() => return,
            };
            let _ = reply.send(r.reload().await);
        }
    });
}

/// SIGHUP sends a reload request, until `life.shutdown`.
#[cfg(unix)]
pub fn sighup(handle: ReloadHandle, life: &Lifecycle) {
    let stop = life.shutdown.clone();
    life.background.spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /reload instead");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = handle.reload().await;
                }
                _ = stop.cancelled() => return,
            }
        }
    });
}

#[cfg(not(unix))]
pub fn sighup(_: ReloadHandle, _: &Lifecycle) {}

impl Reloader {
    /// Re-read the configuration file, validate it, bind any listener whose address changed, and
    /// apply it; on any error keep the last good configuration and record the refusal.
    async fn reload(&self) -> Result<String, ReloadError> {
        let old = self.core.config();
        let path = old.source.clone();
        let tls = self.tls.clone();
        let file = path.clone();
        // Files (the configuration, CA bundles, certificates) are read on the blocking pool.
        let read = tokio::task::spawn_blocking(move || {
            let new = Config::load_for_reload(Path::new(&file))?;
            let node_tls = NodeTlsSet::build(&new)?;
            // Certificates are re-read on every reload: renewed files at the same paths take effect.
            let tls = tls.prepare(&new).map_err(|e| ReloadError::Tls { file: file.clone(), message: e.to_string() })?;
            Ok::<_, ReloadError>((new, node_tls, tls))
        })
        .await
        .map_err(|_| ReloadError::Stopped)
        .and_then(|r| r);
        let result = read.and_then(|(new, node_tls, tls)| {
            let plan = self
                .listeners
                .prepare_rebind(&new)
                .map_err(|source| ReloadError::Listen { file: path.clone(), source })?;
            Ok((new, node_tls, tls, plan))
        });
        match result {
            Ok((new, node_tls, tls, plan)) => {
                let fixed = crate::control::config::keys::restart_only_changes(&old, &new);
                if !fixed.is_empty() {
                    tracing::warn!(
                        settings = ?fixed,
                        "these settings changed but cannot change live: they apply after a restart or `kuzzle-gateway --upgrade`"
                    );
                }
                let listeners = plan.summary();
                let mut summary = change_summary(&old, &new);
                summary.extend(tls.kept());
                // The DNS task resolves the new names (and follows them from now on); the
                // addresses, the TLS connectors and the file apply in one swap.
                let resolved = self.dns.follow(&new).await;
                crate::control::resolve::warn_unresolved(&resolved);
                let new = Arc::new(new);
                self.core.apply([
                    Change::Resolved(Arc::new(resolved)),
                    Change::NodeTls(Arc::new(node_tls)),
                    Change::Config(new.clone()),
                ]);
                self.tls.commit(tls);
                self.listeners.commit_rebind(plan);
                let msg = format!("reloaded {path}{}", join(&summary, &listeners));
                tracing::info!(file = %path, changes = ?summary, listeners = ?listeners, "configuration reloaded");
                self.stats.record(true, msg.clone());
                Ok(msg)
            }
            Err(e) => {
                tracing::error!("configuration refused, keeping the last good one: {e}");
                self.stats.record(false, e.to_string());
                Err(e)
            }
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
    if old.limits != new.limits {
        v.push("limits".into());
    }
    if old.access_log != new.access_log {
        v.push(match &new.access_log {
            Some(a) => format!("access log: {}", a.path),
            None => "access log: off".into(),
        });
    }
    if (old.gateway.proxy_protocol, &old.gateway.proxy_protocol_from)
        != (new.gateway.proxy_protocol, &new.gateway.proxy_protocol_from)
    {
        v.push(format!("PROXY protocol: {}", if new.gateway.proxy_protocol { "on" } else { "off" }));
    }
    if old.fleet != new.fleet {
        v.push("fleet".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, "t.toml").expect("valid")
    }

    #[test]
    fn summary_lists_node_and_setting_changes() {
        let old = cfg("[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
        let new = cfg("[balance]\nalgorithm = \"roundrobin\"\n[[node]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n");
        assert_eq!(change_summary(&old, &new), vec!["nodes added: b", "nodes removed: a", "balance: roundrobin"]);
    }
}
