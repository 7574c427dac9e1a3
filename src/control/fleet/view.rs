//! Control plane: the fleet as the stats show it (`/hastats` page, `;json`, `;csv`, `/metrics`):
//! the live gateways, per node the fleet's totals, rebalancing, the Redis link.

use std::fmt::Write as _;

use serde::Serialize;

/// A live gateway of the fleet (this one included).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayView {
    /// Its fleet name.
    pub name: String,
    /// Its client listener.
    pub address: String,
    /// Its machine's host name.
    pub host: String,
    /// Its ops listener.
    pub ops: String,
    /// Its version (a fleet mid-upgrade runs two).
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Since its start (its heartbeat's figure plus the heartbeat's age).
    pub uptime_ms: u64,
    /// Open client connections, WebSockets included.
    pub connections: u64,
    /// Open WebSocket tunnels.
    pub tunnels: u64,
    /// Its configuration's fingerprint.
    pub fingerprint: String,
    /// Its fingerprint is not the fleet's most common one (on a tie, every gateway whose
    /// fingerprint is not shared by all is flagged).
    pub config_differs: bool,
    /// Milliseconds since its last heartbeat reached this gateway (0: this gateway).
    pub last_seen_ms: u64,
    /// This gateway.
    #[serde(rename = "self")]
    pub me: bool,
    /// When the rebalancing it takes part in began (epoch ms), if any.
    pub rebalancing_since_ms: Option<u64>,
}

/// One node's totals over the fleet.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct NodeFleet {
    /// WebSocket tunnels on the node, every gateway's.
    pub tunnels: u64,
    /// Open requests plus tunnels, every gateway's.
    pub sessions: u64,
}

/// Rebalancing, as this gateway runs it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebalanceView {
    /// `[fleet] rebalance_websockets`.
    pub enabled: bool,
    /// `[fleet] rebalance_rate`: most closes a second by this gateway.
    pub rate: u32,
    /// `[fleet] rebalance_tolerance`, percent.
    pub tolerance_pct: u32,
    /// idle, closing, settling, paused.
    pub phase: &'static str,
    /// Epoch ms when the current rebalancing began (the fleet's earliest).
    pub since_ms: Option<u64>,
    /// Its round (1-based; 0 when idle).
    pub round: u32,
    /// WebSockets this gateway closed in the current rebalancing, and since start.
    pub moved: u64,
    /// WebSockets this gateway closed by rebalancing since start.
    pub moved_total: u64,
    /// Closes left in this round.
    pub left: u64,
    /// How the last rebalancing ended.
    pub outcome: Option<String>,
    /// Why it is paused or does not start.
    pub reason: Option<String>,
}

/// The fleet, as this gateway sees it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// This gateway's name.
    pub name: String,
    /// `[fleet] namespace`.
    pub namespace: String,
    /// Where the fleet's Redis is (credentials hidden).
    pub redis: String,
    /// The Redis link is healthy.
    pub connected: bool,
    /// Epoch ms of the current connection, or None.
    pub connected_since: Option<u64>,
    /// The last Redis failure.
    pub last_error: Option<String>,
    /// `[fleet] heartbeat`.
    pub heartbeat_ms: u64,
    /// `[fleet] ttl`.
    pub ttl_ms: u64,
    /// This gateway's configuration fingerprint.
    pub fingerprint: String,
    /// Every live gateway runs the same configuration.
    pub configs_agree: bool,
    /// Another process heartbeats under this gateway's name (names must be unique).
    pub name_clash: Option<String>,
    /// Operator state changes taken here and not yet in Redis.
    pub pending_states: usize,
    /// This gateway's rebalancing.
    pub rebalance: RebalanceView,
}

/// Which gateways run another configuration than the fleet's most common one (by position).
pub fn config_differs(fingerprints: &[&str]) -> Vec<bool> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for f in fingerprints {
        *counts.entry(f).or_default() += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    let leaders: Vec<&str> = counts.iter().filter(|(_, c)| **c == best).map(|(f, _)| *f).collect();
    fingerprints.iter().map(|f| if leaders.len() == 1 { *f != leaders[0] } else { counts.len() > 1 }).collect()
}

/// The fleet's Prometheus families (this gateway's own figures only: nothing a sum over the
/// gateways would count twice).
pub fn metrics(out: &mut String, v: &FleetView, gateways: usize, m: &super::FleetMetrics) {
    let p = crate::ops::metrics::PREFIX;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let mut single = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {p}{name} {help}\n# TYPE {p}{name} {kind}\n{p}{name} {value}");
    };
    single("fleet_redis_connected", "gauge", "1 while the fleet's Redis link is healthy.", u64::from(v.connected));
    single(
        "fleet_gateways",
        "gauge",
        "Live gateways this gateway sees in its fleet, itself included.",
        gateways as u64,
    );
    single(
        "fleet_config_differs",
        "gauge",
        "1 when this gateway runs another configuration than the fleet's most common one.",
        u64::from(!v.configs_agree),
    );
    single("fleet_redis_connects_total", "counter", "Connections to the fleet's Redis.", get(&m.connects));
    single("fleet_redis_errors_total", "counter", "Failed calls to the fleet's Redis.", get(&m.errors));
    single("fleet_messages_total", "counter", "Messages received on the fleet's channels.", get(&m.messages));
    single(
        "fleet_states_applied_total",
        "counter",
        "Operator states applied from the fleet (set through another gateway).",
        get(&m.applied),
    );
    single("fleet_states_written_total", "counter", "Operator states this gateway wrote to Redis.", get(&m.written));
    single(
        "fleet_pending_states",
        "gauge",
        "Operator state changes taken here, not yet in Redis.",
        v.pending_states as u64,
    );
    single(
        "rebalance_closes_total",
        "counter",
        "WebSockets this gateway closed (1012) to spread them over the nodes again.",
        get(&m.draws),
    );
    single(
        "rebalance_active",
        "gauge",
        "1 while a rebalancing is under way here.",
        u64::from(v.rebalance.phase != "idle"),
    );
    single(
        "rebalance_rate",
        "gauge",
        "Most WebSockets this gateway closes a second while rebalancing.",
        u64::from(v.rebalance.rate),
    );
    let _ = writeln!(
        out,
        "# HELP {p}fleet_dropped_total Fleet messages and records dropped, by reason.\n# TYPE {p}fleet_dropped_total counter"
    );
    for (l, c) in super::wire::REJECT_LABELS.iter().zip(m.dropped.iter()) {
        let _ = writeln!(out, "{p}fleet_dropped_total{{reason=\"{l}\"}} {}", get(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_odd_configuration_out_is_flagged() {
        assert_eq!(config_differs(&["a", "a", "b"]), vec![false, false, true]);
        assert_eq!(config_differs(&["a", "b"]), vec![true, true], "no majority: both flagged");
        assert_eq!(config_differs(&["a", "a"]), vec![false, false]);
        assert_eq!(config_differs(&["a"]), vec![false]);
        assert!(config_differs(&[]).is_empty());
    }
}
