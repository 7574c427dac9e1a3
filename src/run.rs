//! Process lifecycle: start the gateway, wait for SIGTERM/SIGINT, shut down gracefully.

use crate::config::Config;
use crate::server;

/// Run until SIGTERM or SIGINT, then drain and return.
pub async fn run_until_signal(config: Config) -> Result<(), server::StartError> {
    let handle = server::start(config).await?;
    wait_for_stop_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
