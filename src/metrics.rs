//! Control plane: Prometheus text exposition of the gateway's counters. Minimal for now; the ops issue completes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::state::Gateway;

pub fn render(gw: &Arc<Gateway>) -> String {
    let mut s = String::new();
    s.push_str("# HELP kuzzle_gateway_requests_total Client requests received.\n# TYPE kuzzle_gateway_requests_total counter\n");
    s.push_str(&format!("kuzzle_gateway_requests_total {}\n", gw.frontend.requests_total.load(Ordering::Relaxed)));
    s
}
