//! Control plane: the background loops that change the gateway's state (pruning drained nodes,
//! SIGHUP) and the one reload path every trigger goes through.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::state::Gateway;

/// Start the control-plane loops; they stop with `gw.shutdown`.
pub fn start(gw: &Arc<Gateway>) {
    let g = gw.clone();
    gw.background.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => g.prune(),
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
                    _ = hup.recv() => { let _ = reload(&g); }
                    _ = g.shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// Re-read the configuration file, validate it, and apply it (or keep the last good one).
pub fn reload(gw: &Arc<Gateway>) -> Result<(), ConfigError> {
    let path = gw.config().source.clone();
    let result = Config::load(Path::new(&path)).map(|c| gw.apply_config(c));
    match &result {
        Ok(()) => {
            tracing::info!(file = %path, "configuration reloaded");
            gw.record_reload(true, format!("reloaded {path}"));
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration refused; keeping the last good one");
            gw.record_reload(false, e.to_string());
        }
    }
    result
}
