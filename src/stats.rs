//! Data plane counters: per node and per frontend, atomics only, kept across reloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Events per second over the last complete second (haproxy's *_rate), lock-free.
#[derive(Debug, Default)]
pub struct Rate {
    /// (second << 32) | count in that second.
    cur: AtomicU64,
    /// Count of the previous second.
    prev: AtomicU64,
    max: AtomicU64,
}

impl Rate {
    pub fn tick(&self) {
        let sec = now_secs() & 0xffff_ffff;
        let cur = self.cur.load(Ordering::Relaxed);
        if cur >> 32 == sec {
            self.cur.fetch_add(1, Ordering::Relaxed);
        } else if self.cur.compare_exchange(cur, (sec << 32) | 1, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let count = cur & 0xffff_ffff;
            let prev = if (cur >> 32) + 1 == sec { count } else { 0 };
            self.prev.store(prev, Ordering::Relaxed);
            self.max.fetch_max(prev, Ordering::Relaxed);
        } else {
            self.cur.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events during the last complete second.
    pub fn per_sec(&self) -> u64 {
        let sec = now_secs() & 0xffff_ffff;
        let cur = self.cur.load(Ordering::Relaxed);
        match sec.wrapping_sub(cur >> 32) {
            0 => self.prev.load(Ordering::Relaxed),
            1 => cur & 0xffff_ffff,
            _ => 0,
        }
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed).max(self.per_sec())
    }
}

/// HTTP responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
#[derive(Debug, Default)]
pub struct StatusClasses(pub [AtomicU64; 6]);

impl StatusClasses {
    pub fn record(&self, status: u16) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

/// Per-node counters (haproxy's server row). Monotonic, never reset by reloads.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Highest number of simultaneous requests plus tunnels (smax).
    pub max_active: AtomicU64,
    /// Requests and tunnels handled (stot).
    pub sessions_total: AtomicU64,
    pub session_rate: Rate,
    /// WebSocket and other upgraded tunnels: open now, total.
    pub tunnels: AtomicU64,
    pub tunnels_total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Connection failures to the node (econ).
    pub connect_errors: AtomicU64,
    /// Broken or timed out responses (eresp).
    pub response_errors: AtomicU64,
    /// Retries on this node (wretr) and requests redispatched away from it (wredis).
    pub retries: AtomicU64,
    pub redispatches: AtomicU64,
    pub responses: StatusClasses,
    /// Epoch seconds of the last request sent to it.
    pub last_session: AtomicU64,
}

impl NodeCounters {
    pub fn session_started(&self, active_now: u64) {
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.max_active.fetch_max(active_now, Ordering::Relaxed);
        self.session_rate.tick();
        self.last_session.store(now_secs(), Ordering::Relaxed);
    }
}

/// The client listener's counters (haproxy's frontend row).
#[derive(Debug, Default)]
pub struct FrontendCounters {
    /// Client connections open now, highest, total.
    pub connections: AtomicU64,
    pub max_connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connection_rate: Rate,
    pub requests_total: AtomicU64,
    pub request_rate: Rate,
    pub tunnels: AtomicU64,
    pub tunnels_total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Requests the gateway refused or failed itself (bad request, no node...).
    pub request_errors: AtomicU64,
    pub responses: StatusClasses,
}

impl FrontendCounters {
    pub fn connection_opened(&self) {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_connections.fetch_max(now, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connection_rate.tick();
    }
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let c = StatusClasses::default();
        for s in [101, 200, 204, 302, 404, 502, 600] {
            c.record(s);
        }
        assert_eq!((0..6).map(|i| c.get(i)).collect::<Vec<_>>(), vec![1, 2, 1, 1, 1, 1]);
    }

    #[test]
    fn rate_counts_current_second() {
        let r = Rate::default();
        for _ in 0..5 {
            r.tick();
        }
        assert!(r.max() <= 5);
    }
}
