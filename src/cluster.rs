//! Control plane: Redis cluster membership, status and reset (the cluster-sync issue completes it).

use std::sync::Arc;

use crate::state::Gateway;

/// The gateway's view of the cluster.
pub async fn status(gw: &Arc<Gateway>) -> serde_json::Value {
    let nodes: Vec<_> = gw
        .all_nodes()
        .iter()
        .map(|b| serde_json::json!({"name": b.name, "address": b.addr_str, "up": b.health.is_up()}))
        .collect();
    serde_json::json!({ "nodes": nodes })
}

/// Clear the real-time state in Redis.
pub async fn reset(_gw: &Arc<Gateway>) -> Result<serde_json::Value, String> {
    Err("no [cluster] Redis configured".into())
}
