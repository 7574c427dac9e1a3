//! Counters a node keeps for tests (`GET /_sim/stats`): hits per health route, so a test can tell
//! which route a gateway checks with, and connections and requests, so it can tell whether a
//! client reuses connections.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// The health routes a gateway may check a node with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HealthRoute {
    /// `GET /_ready`: readiness (Kuzzle 2).
    Ready,
    /// `GET /_healthcheck` (lower case): liveness, always 200 (Kuzzle 2).
    Liveness,
    /// `GET /_healthCheck`: `server:healthCheck` of every service (three Elasticsearch calls on a
    /// real node).
    HealthCheck,
    /// `GET /_healthCheck?services=...`: the listed services only (cheap on a real node).
    HealthCheckServices,
    /// `GET /_plugin/cluster/health`: the cluster plugin 3.x's.
    PluginHealth,
}

impl HealthRoute {
    const ALL: [HealthRoute; 5] = [
        HealthRoute::Ready,
        HealthRoute::Liveness,
        HealthRoute::HealthCheck,
        HealthRoute::HealthCheckServices,
        HealthRoute::PluginHealth,
    ];

    /// The name the stats give it.
    pub fn key(self) -> &'static str {
        match self {
            HealthRoute::Ready => "/_ready",
            HealthRoute::Liveness => "/_healthcheck",
            HealthRoute::HealthCheck => "/_healthCheck",
            HealthRoute::HealthCheckServices => "/_healthCheck?services",
            HealthRoute::PluginHealth => "/_plugin/cluster/health",
        }
    }
}

/// The counters; relaxed atomics (tests read them after the fact).
#[derive(Default)]
pub(crate) struct Stats {
    /// Hits per health route, in [`HealthRoute::ALL`]'s order.
    health: [AtomicU64; 5],
    /// TCP connections accepted.
    connections: AtomicU64,
    /// HTTP requests received (WebSocket upgrades included, `/_sim/stats` itself excluded).
    http_requests: AtomicU64,
    /// WebSocket sessions opened.
    websockets: AtomicU64,
}

impl Stats {
    pub fn health_hit(&self, route: HealthRoute) {
        if let Some(i) = HealthRoute::ALL.iter().position(|r| *r == route) {
            self.health[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn websocket(&self) {
        self.websockets.fetch_add(1, Ordering::Relaxed);
    }

    /// `{"health": {"/_ready": n, ...}, "connections": n, "http_requests": n, "websockets": n}`.
    pub fn to_json(&self) -> Value {
        let health: serde_json::Map<String, Value> = HealthRoute::ALL
            .iter()
            .zip(&self.health)
            .map(|(r, n)| (r.key().to_owned(), Value::from(n.load(Ordering::Relaxed))))
            .collect();
        json!({
            "health": health,
            "connections": self.connections.load(Ordering::Relaxed),
            "http_requests": self.http_requests.load(Ordering::Relaxed),
            "websockets": self.websockets.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_route() {
        let s = Stats::default();
        s.health_hit(HealthRoute::Ready);
        s.health_hit(HealthRoute::Ready);
        s.health_hit(HealthRoute::HealthCheckServices);
        s.connection();
        s.http_request();
        s.websocket();
        let v = s.to_json();
        assert_eq!(v["health"]["/_ready"], 2);
        assert_eq!(v["health"]["/_healthCheck?services"], 1);
        assert_eq!(v["health"]["/_healthCheck"], 0);
        assert_eq!(v["health"]["/_healthcheck"], 0);
        assert_eq!(v["health"]["/_plugin/cluster/health"], 0);
        assert_eq!(
            (v["connections"].as_u64(), v["http_requests"].as_u64(), v["websockets"].as_u64()),
            (Some(1), Some(1), Some(1))
        );
    }
}
