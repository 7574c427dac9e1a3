//! Core: the immutable routing snapshot the data plane reads once per request.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::backend::Backend;
use crate::control::config::Config;

/// What the data plane needs for one request: settings and nodes, swapped whole.
pub struct Snapshot {
    /// The configuration in force: a request reads its settings here, consistent with its nodes.
    pub config: Arc<Config>,
    /// Members first (static in config order, then discovered by name), then draining nodes.
    pub nodes: Vec<Arc<Backend>>,
    /// Index in `nodes` by name: the URL prefix a request may route by.
    names: HashMap<String, usize>,
    /// Round-robin / tie-break cursor.
    pub cursor: AtomicUsize,
    /// Increases with every swap.
    pub generation: u64,
    /// `[gateway] node_header`, parsed once per snapshot (None: off).
    pub node_header: Option<http::HeaderName>,
    /// No node is reached over TLS: the fast lane may take requests (its node sockets are plain).
    pub plain_nodes: bool,
}

impl Snapshot {
    /// A snapshot of `nodes` in that order; the cursor carries on from `cursor`.
    pub fn new(config: Arc<Config>, nodes: Vec<Arc<Backend>>, cursor: usize, generation: u64) -> Snapshot {
        let names = nodes.iter().enumerate().map(|(i, b)| (b.name.clone(), i)).collect();
        // Validated with the configuration; an unparsable name (never expected) means no header.
        let node_header = http::HeaderName::from_bytes(config.gateway.node_header.as_bytes()).ok();
        let plain_nodes = nodes.iter().all(|b| b.tls.is_none());
        Snapshot { config, nodes, names, cursor: AtomicUsize::new(cursor), generation, node_header, plain_nodes }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Backend>> {
        self.index_of(name).and_then(|i| self.nodes.get(i))
    }
}
