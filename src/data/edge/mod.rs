//! Data plane: what happens to a client around the proxying itself, as edge proxies do it: the
//! PROXY protocol header of an L4 balancer ([`proxy_protocol`]), per-client limits ([`limits`])
//! and the access log ([`access_log`]). [`Edge`] holds their shared state; [`start`] runs the
//! control side (SIGUSR1 reopens the log; the last lines are written at shutdown).

pub mod access_log;
pub mod limits;
pub mod proxy_protocol;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use self::access_log::AccessLog;
use self::limits::ClientTable;
use crate::control::config::LimitsSection;
use crate::core::counters::FrontendCounters;
use crate::core::Lifecycle;

/// The edge state of one gateway, shared by every worker.
pub struct Edge {
    /// Allocated whole the first time a per-client limit is on (`[limits] client_table` then):
    /// memory stays fixed whatever clients do.
    table: OnceLock<Arc<ClientTable>>,
    /// The access log: workers hand it their lines, its writer task writes them.
    pub log: Arc<AccessLog>,
}

impl Edge {
    pub fn new(life: Lifecycle, frontend: Arc<FrontendCounters>) -> Edge {
        Edge { table: OnceLock::new(), log: Arc::new(AccessLog::new(life, frontend)) }
    }

    /// The limits table, made on first use.
    pub fn table(&self, limits: &LimitsSection) -> &Arc<ClientTable> {
        self.table.get_or_init(|| Arc::new(ClientTable::new(limits.client_table)))
    }

    /// The limits table if it was ever made (stats).
    pub fn table_if_made(&self) -> Option<&Arc<ClientTable>> {
        self.table.get()
    }
}

/// Is this client subject to `[limits]` (a limit is on and it is not in `exempt_networks`)?
pub fn limited(limits: &LimitsSection, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    limits.per_client() && !limits.exempt_networks.iter().any(|n| n.contains(&ip))
}

/// The edge's control side, on the background tracker: SIGUSR1 reopens the access log file;
/// once the gateway stops and its connections are done, every worker's last lines are written.
pub fn start(edge: &Edge, life: &Lifecycle) {
    let log = edge.log.clone();
    let (stop, connections) = (life.shutdown.clone(), life.connections.clone());
    // Registered now, not when the task first runs: from here on SIGUSR1 never takes its default
    // action (ending the process).
    #[cfg(unix)]
    let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1());
    life.background.spawn(async move {
        #[cfg(unix)]
        match usr1 {
            Ok(mut usr1) => loop {
                tokio::select! {
                    _ = usr1.recv() => log.reopen(),
                    _ = stop.cancelled() => break,
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGUSR1: the access log file is not reopened on it");
                stop.cancelled().await;
            }
        }
        #[cfg(not(unix))]
        stop.cancelled().await;
        // Lines come until the last connection ends (the stop waits for them, then for this).
        connections.wait().await;
        log.finish().await;
    });
}
