//! Core: the counters per node and per frontend, atomics only, kept across reloads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Events per second over the last complete second (haproxy's *_rate), lock-free.
#[derive(Debug, Default)]
pub struct Rate {
    /// (second << 32) | count in that second.
    cur: AtomicU64,
    /// Count of the previous second.
    prev: AtomicU64,
    /// Highest complete-second count seen (haproxy's *_rate_max); `max()` also weighs the current one.
    max: AtomicU64,
}

impl Rate {
    pub fn tick(&self) {
        self.tick_at(crate::util::epoch_secs());
    }

    /// `tick` for a caller that has read the clock (`now`: seconds since the epoch).
    pub fn tick_at(&self, now: u64) {
        let sec = now & 0xffff_ffff;
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
        let sec = crate::util::epoch_secs() & 0xffff_ffff;
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

    /// All six classes, in order (1xx, 2xx, 3xx, 4xx, 5xx, other).
    pub fn all(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.get(i))
    }

    /// Responses of every class.
    pub fn total(&self) -> u64 {
        self.all().iter().sum()
    }
}

/// Names of the classes, as haproxy's `hrsp_*` suffixes and Prometheus `code` labels.
pub const STATUS_CLASS_NAMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Relaxed read of a counter (stats are advisory: no ordering with other counters needed).
#[inline]
pub fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Per-node counters (haproxy's server row). Monotonic, never reset by reloads.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Highest number of simultaneous requests plus tunnels (smax).
    pub max_active: AtomicU64,
    /// Requests and tunnels handled (stot).
    pub sessions_total: AtomicU64,
    /// Requests plus tunnels started per second (rate, rate_max).
    pub session_rate: Rate,
    /// WebSocket and other upgraded tunnels: open now, total.
    pub tunnels: AtomicU64,
    /// Tunnels opened so far (the open count is `tunnels`).
    pub tunnels_total: AtomicU64,
    /// Bytes from clients to the node (bin), request bodies and tunnels alike.
    pub bytes_in: AtomicU64,
    /// Bytes from the node to clients (bout).
    pub bytes_out: AtomicU64,
    /// Connection failures to the node (econ).
    pub connect_errors: AtomicU64,
    /// Broken or timed out responses (eresp).
    pub response_errors: AtomicU64,
    /// Retries on this node (wretr) and requests redispatched away from it (wredis).
    pub retries: AtomicU64,
    /// See `retries`: requests moved to another node after failing on this one.
    pub redispatches: AtomicU64,
    /// The node's responses by status class (hrsp_*).
    pub responses: StatusClasses,
    /// Epoch seconds of the last request sent to it.
    pub last_session: AtomicU64,
    /// Health-check history carried over from earlier `Backend`s of this name (read side only).
    pub health_carry: HealthCarry,
}

/// Keeps health-check counts (failed checks, DOWN transitions, downtime) monotonic per node name.
/// Those counts live in each `Backend`'s health state, which starts from zero when a node that
/// left for good comes back; this adds what the earlier incarnations had reached. Touched only by
/// the stats readers (control plane), never by the data plane.
#[derive(Debug, Default)]
pub struct HealthCarry(std::sync::Mutex<CarryState>);

#[derive(Debug, Default)]
struct CarryState {
    /// Identity of the backend last seen (address of its `Arc`), 0 before the first read.
    backend: usize,
    /// The counts `[failed_checks, down_transitions, downtime]` of that backend at the last read.
    last: [u64; 3],
    /// What earlier backends of this name had reached, added to the current one's counts.
    base: [u64; 3],
}

impl HealthCarry {
    /// Totals since the name was first seen, given the current backend's identity and its own
    /// counts `[failed_checks, down_transitions, downtime]`. Never decreases between calls.
    pub fn totals(&self, backend: usize, now: [u64; 3]) -> [u64; 3] {
        let mut st = crate::util::lock(&self.0);
        let reset = st.backend != 0 && (st.backend != backend || now.iter().zip(st.last).any(|(n, l)| *n < l));
        if reset {
            for i in 0..3 {
                st.base[i] += st.last[i];
            }
        }
        st.backend = backend;
        st.last = now;
        std::array::from_fn(|i| st.base[i] + now[i])
    }
}

/// A node's monotonic counters as a binary upgrade hands them over (what is open now, rates
/// and the carried health history stay with each process).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeTotals {
    /// smax
    pub max_active: u64,
    /// stot
    pub sessions_total: u64,
    /// Tunnels opened so far.
    pub tunnels_total: u64,
    /// Bytes from clients to the node.
    pub bytes_in: u64,
    /// Bytes from the node to clients.
    pub bytes_out: u64,
    /// econ
    pub connect_errors: u64,
    /// eresp
    pub response_errors: u64,
    /// wretr
    pub retries: u64,
    /// wredis
    pub redispatches: u64,
    /// Responses by class (1xx .. 5xx, other).
    pub responses: [u64; 6],
    /// Epoch seconds of the last request sent to it.
    pub last_session: u64,
}

/// Add the old process's counts to the six classes (a new process continuing them).
fn restore_classes(c: &StatusClasses, v: &[u64; 6]) {
    for (a, v) in c.0.iter().zip(v) {
        a.fetch_add(*v, Ordering::Relaxed);
    }
}

impl NodeCounters {
    /// The totals to hand over.
    pub fn totals(&self) -> NodeTotals {
        NodeTotals {
            max_active: get(&self.max_active),
            sessions_total: get(&self.sessions_total),
            tunnels_total: get(&self.tunnels_total),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            connect_errors: get(&self.connect_errors),
            response_errors: get(&self.response_errors),
            retries: get(&self.retries),
            redispatches: get(&self.redispatches),
            responses: self.responses.all(),
            last_session: get(&self.last_session),
        }
    }

    /// Counters continuing from the old process's totals.
    pub fn from_totals(t: &NodeTotals) -> NodeCounters {
        let c = NodeCounters::default();
        for (a, v) in [
            (&c.max_active, t.max_active),
            (&c.sessions_total, t.sessions_total),
            (&c.tunnels_total, t.tunnels_total),
            (&c.bytes_in, t.bytes_in),
            (&c.bytes_out, t.bytes_out),
            (&c.connect_errors, t.connect_errors),
            (&c.response_errors, t.response_errors),
            (&c.retries, t.retries),
            (&c.redispatches, t.redispatches),
            (&c.last_session, t.last_session),
        ] {
            a.store(v, Ordering::Relaxed);
        }
        restore_classes(&c.responses, &t.responses);
        c
    }

    pub fn session_started(&self, active_now: u64) {
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.max_active.fetch_max(active_now, Ordering::Relaxed);
        // One clock read for both (~70 instructions a request).
        let now = crate::util::epoch_secs();
        self.session_rate.tick_at(now);
        self.last_session.store(now, Ordering::Relaxed);
    }
}

/// The client listener's counters (haproxy's frontend row).
#[derive(Debug, Default)]
pub struct FrontendCounters {
    /// Client connections open now, highest, total.
    pub connections: AtomicU64,
    /// Highest number of client connections at once (smax), kept across upgrades.
    pub max_connections: AtomicU64,
    /// The cap enforced on client connections (`[gateway] max_connections` or derived from the
    /// open-files limit), set at start.
    pub connection_limit: AtomicU64,
    /// Client connections accepted so far (stot).
    pub connections_total: AtomicU64,
    /// Client connections accepted per second (rate, conn_rate_max).
    pub connection_rate: Rate,
    /// HTTP requests received so far (req_tot).
    pub requests_total: AtomicU64,
    /// HTTP requests per second (req_rate).
    pub request_rate: Rate,
    /// WebSocket tunnels open now: their connections left `connections` when the upgrade took.
    pub tunnels: AtomicU64,
    /// Tunnels opened so far.
    pub tunnels_total: AtomicU64,
    /// Bytes from clients, bodies and tunnels alike (bin).
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients (bout).
    pub bytes_out: AtomicU64,
    /// Requests the gateway refused or failed itself (bad request, no node...).
    pub request_errors: AtomicU64,
    /// Responses sent to clients by status class, the gateway's own included (hrsp_*).
    pub responses: StatusClasses,
    /// Clients refused by `[limits]`, by [`LIMIT_REASONS`].
    pub limited: [AtomicU64; 3],
    /// Connections closed for their PROXY protocol header, by [`PROXY_REFUSALS`].
    pub proxy_refused: [AtomicU64; 5],
    /// HTTP/2 connections cut for resetting too many streams (rapid reset).
    pub h2_reset_floods: AtomicU64,
    /// SDK heartbeats (`{"p":1}`) the gateway answered itself (`[gateway] sdk_pings`).
    pub sdk_pings_answered: AtomicU64,
    /// The access log's own counters.
    pub access_log: AccessLogCounters,
}

/// The access log's counters (on /metrics and /hastats).
#[derive(Debug, Default)]
pub struct AccessLogCounters {
    /// Lines formatted (counted as each worker hands its buffer over: up to a second late).
    pub lines: AtomicU64,
    /// Lines dropped: the writer was too far behind (its queue full).
    pub dropped: AtomicU64,
    /// Failed opens and writes (each failure of a streak counted, one warning per streak).
    pub errors: AtomicU64,
}

/// Why `[limits]` refused a client: over `client_rate` (a 429), over `client_connections` (closed,
/// or a 429), or not tracked because the limits table had no room near its place (served: the
/// table never grows; counted so that a table too small shows).
pub const LIMIT_REASONS: [&str; 3] = ["rate", "connections", "table_full"];

/// Index of a reason in [`LIMIT_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    Rate = 0,
    Connections = 1,
    TableFull = 2,
}

/// Why a connection was closed before any HTTP: it came from outside `proxy_protocol_from`, its
/// header was malformed, it closed before a whole header, its header was too slow, or too big.
pub const PROXY_REFUSALS: [&str; 5] = ["not_allowed", "malformed", "truncated", "timeout", "too_big"];

impl FrontendCounters {
    /// Count one client refused by `[limits]`.
    pub fn limited(&self, why: LimitReason) {
        self.limited[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The client side's monotonic counters as a binary upgrade hands them over.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrontendTotals {
    /// Highest number of client connections at once.
    pub max_connections: u64,
    /// Client connections accepted so far.
    pub connections_total: u64,
    /// Requests so far.
    pub requests_total: u64,
    /// Tunnels opened so far.
    pub tunnels_total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Requests the gateway refused or failed itself.
    pub request_errors: u64,
    /// Responses by class (1xx .. 5xx, other).
    pub responses: [u64; 6],
}

impl FrontendCounters {
    /// The totals to hand over.
    pub fn totals(&self) -> FrontendTotals {
        FrontendTotals {
            max_connections: get(&self.max_connections),
            connections_total: get(&self.connections_total),
            requests_total: get(&self.requests_total),
            tunnels_total: get(&self.tunnels_total),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            request_errors: get(&self.request_errors),
            responses: self.responses.all(),
        }
    }

    /// Continue from the old process's totals (added to what this one counted so far).
    pub fn restore(&self, t: &FrontendTotals) {
        self.max_connections.fetch_max(t.max_connections, Ordering::Relaxed);
        for (a, v) in [
            (&self.connections_total, t.connections_total),
            (&self.requests_total, t.requests_total),
            (&self.tunnels_total, t.tunnels_total),
            (&self.bytes_in, t.bytes_in),
            (&self.bytes_out, t.bytes_out),
            (&self.request_errors, t.request_errors),
        ] {
            a.fetch_add(v, Ordering::Relaxed);
        }
        restore_classes(&self.responses, &t.responses);
    }

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
    fn health_carry_is_monotonic_across_backends() {
        let c = HealthCarry::default();
        assert_eq!(c.totals(1, [2, 1, 10]), [2, 1, 10]);
        assert_eq!(c.totals(1, [3, 1, 12]), [3, 1, 12]);
        // The node left and came back: a new backend starts from zero.
        assert_eq!(c.totals(2, [0, 0, 0]), [3, 1, 12]);
        assert_eq!(c.totals(2, [1, 1, 4]), [4, 2, 16]);
    }

    #[test]
    fn totals_carry_over() {
        let c = NodeCounters::default();
        c.session_started(3);
        c.bytes_in.fetch_add(10, Ordering::Relaxed);
        c.responses.record(503);
        let t = c.totals();
        let back: NodeTotals = serde_json::from_value(serde_json::to_value(&t).expect("json")).expect("back");
        let n = NodeCounters::from_totals(&back);
        assert_eq!(n.totals(), t);
        assert_eq!((get(&n.sessions_total), get(&n.max_active), n.responses.get(4)), (1, 3, 1));

        let f = FrontendCounters::default();
        f.connection_opened();
        f.requests_total.fetch_add(5, Ordering::Relaxed);
        let g = FrontendCounters::default();
        g.requests_total.fetch_add(1, Ordering::Relaxed);
        g.restore(&f.totals());
        assert_eq!((get(&g.requests_total), get(&g.connections_total), get(&g.max_connections)), (6, 1, 1));
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
