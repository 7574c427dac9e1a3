//! Ops: the `/hastats` views (HTML page, haproxy CSV, JSON), built from one read of the
//! gateway's counters and health into a plain [`StatsView`] that every format renders.

mod csv;
mod html;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::control::reload::{ReloadStats, ReloadStatus};
use crate::core::backend::{AdminState, Backend, Membership};
use crate::core::counters::{get, FrontendCounters, NodeCounters};
use crate::core::health::{CheckKind, HealthView, Phase};
use crate::core::Core;

pub use csv::{csv, HAPROXY_CSV_FIELDS};
pub use html::{html, HtmlOptions};

/// Status of a `[[node]]` whose host name has no address (the CSV says DOWN, as haproxy's parsers expect).
pub const DNS_NO_ADDRESS: &str = "DNS: no address";

/// Proxy name of every CSV row (the seed's haproxy config called its frontend and backend so).
pub const PXNAME: &str = "kuzzle";

/// Everything the stats formats show, read once (counters are relaxed atomics: each value is
/// exact, the set is not a transaction, as in haproxy).
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// The page's header: version, uptime, listeners, reloads, node counts, edge counters.
    pub process: ProcessView,
    /// The client listener's row (haproxy's FRONTEND).
    pub frontend: Traffic,
    /// Members first (config order), then nodes leaving the cluster.
    pub nodes: Vec<NodeView>,
    /// The total row over every node (haproxy's BACKEND).
    pub backend: BackendView,
    /// With `[fleet]`: every live gateway of the fleet, this one first (filled in by ops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<crate::control::fleet::view::GatewayView>>,
    /// With `[fleet]`: the fleet's link, configuration agreement and rebalancing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::control::fleet::view::FleetView>,
}

/// The process: haproxy's "General process information".
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    /// The gateway's version (Cargo package version).
    pub version: &'static str,
    /// Process id: tells a binary upgrade's new process from the old one.
    pub pid: u32,
    /// Epoch seconds.
    pub started_at: u64,
    /// Epoch seconds when the view was read: ages and durations are counted from it.
    pub now: u64,
    /// Seconds since start-up (`uptime_ms` in JSON).
    #[serde(rename = "uptime_ms", serialize_with = "crate::util::ms::from_secs")]
    pub uptime: u64,
    /// The `[balance] algorithm` in force.
    pub algorithm: &'static str,
    /// Auto-refresh period of the page, seconds.
    #[serde(rename = "refresh_ms", serialize_with = "crate::util::ms::from_secs")]
    pub refresh: u64,
    /// The `[gateway] listen` address.
    pub client_listen: String,
    /// The `[tls] listen` address, None without a TLS listener.
    pub tls_listen: Option<String>,
    /// The cap on client connections in force (configured or derived from the open-files limit).
    pub max_connections: u64,
    /// Configuration reloads applied since start-up.
    pub reloads_ok: u64,
    /// Configuration reloads refused since start-up.
    pub reloads_failed: u64,
    /// Outcome of the last reload, None if there was none.
    pub last_reload: Option<ReloadStatus>,
    /// Certificates served on the TLS listener and refused renewals (filled in by ops).
    pub tls: Option<crate::control::tls::TlsView>,
    /// Snapshot generation: increases with every change of the node set or configuration.
    pub generation: u64,
    /// Node rows, members and draining nodes alike.
    pub nodes_total: usize,
    /// Nodes that may take new traffic now.
    pub nodes_eligible: usize,
    /// What the edge refused, cut and logged.
    pub edge: EdgeView,
}

/// The edge's counters: `[limits]`, the PROXY protocol, HTTP/2 resets, the access log.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeView {
    /// Clients refused by `[limits]` (`rate`: 429s; `connections`: connections closed or
    /// answered 429), and clients not tracked for want of room in the table (`table_full`).
    pub limited: std::collections::BTreeMap<&'static str, u64>,
    /// Connections closed for their PROXY protocol header, by reason.
    pub proxy_refused: std::collections::BTreeMap<&'static str, u64>,
    /// HTTP/2 connections cut for resetting too many streams.
    pub h2_reset_floods: u64,
    /// SDK heartbeats the gateway answered itself instead of its nodes.
    pub sdk_pings_answered: u64,
    /// Access log lines written, dropped (writer behind), and its failed writes.
    pub access_log: AccessLogView,
}

/// The access log's counters.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLogView {
    /// Lines formatted.
    pub lines: u64,
    /// Lines dropped because the writer was too far behind.
    pub dropped: u64,
    /// Failed opens and writes.
    pub errors: u64,
}

impl EdgeView {
    fn of(f: &FrontendCounters) -> EdgeView {
        use crate::core::counters::{LIMIT_REASONS, PROXY_REFUSALS};
        EdgeView {
            limited: LIMIT_REASONS.iter().zip(&f.limited).map(|(k, v)| (*k, get(v))).collect(),
            proxy_refused: PROXY_REFUSALS.iter().zip(&f.proxy_refused).map(|(k, v)| (*k, get(v))).collect(),
            h2_reset_floods: get(&f.h2_reset_floods),
            sdk_pings_answered: get(&f.sdk_pings_answered),
            access_log: AccessLogView {
                lines: get(&f.access_log.lines),
                dropped: get(&f.access_log.dropped),
                errors: get(&f.access_log.errors),
            },
        }
    }
}

/// Traffic figures of one row (frontend, node or backend total).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// Open now: client connections (frontend), requests plus tunnels (node, backend).
    pub cur: u64,
    /// Peak of `cur` (smax).
    pub max: u64,
    /// The connection cap (frontend only: slim).
    pub limit: Option<u64>,
    /// Sessions so far: client connections (frontend), requests plus tunnels (node, backend).
    pub total: u64,
    /// Sessions (connections or requests + tunnels) per second over the last second.
    pub rate: u64,
    /// Peak of `rate` over any complete second.
    pub rate_max: u64,
    /// HTTP requests per second (frontend only).
    pub req_rate: Option<u64>,
    /// Peak of `req_rate` (frontend only).
    pub req_rate_max: Option<u64>,
    /// HTTP requests (frontend) or responses received from the node (node, backend).
    pub req_tot: u64,
    /// WebSocket tunnels open now.
    pub tunnels: u64,
    /// WebSocket tunnels opened so far.
    pub tunnels_total: u64,
    /// Bytes from clients (bin).
    pub bytes_in: u64,
    /// Bytes to clients (bout).
    pub bytes_out: u64,
    /// Requests the gateway answered itself with an error (frontend only).
    pub req_errors: Option<u64>,
    /// Failed connections to the node (econ; 0 on the frontend).
    pub conn_errors: u64,
    /// Broken or timed out node responses (eresp; 0 on the frontend).
    pub resp_errors: u64,
    /// Attempts after the first on a node (wretr; 0 on the frontend).
    pub retries: u64,
    /// Requests moved to another node after failing on this one (wredis; 0 on the frontend).
    pub redispatches: u64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [u64; 6],
    /// Seconds since the last session, None if never.
    #[serde(rename = "last_session_ms", serialize_with = "crate::util::ms::from_opt_secs")]
    pub last_session: Option<u64>,
}

/// One node row.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The node's name: the `[[node]]` name or the id it was discovered under.
    pub name: String,
    /// The address requests go to (ip:port; a placeholder while unresolved).
    pub address: String,
    /// How the node came to be known: configuration, plugin discovery or Kuzzle 2 ID card.
    pub origin: crate::core::backend::Origin,
    /// haproxy's status text: UP, DOWN, "UP 1/3", "DOWN 1/2", DRAIN, MAINT, "no check".
    pub status: String,
    /// Colour class of the row (haproxy's palette).
    pub class: StatusClass,
    /// Health checks say UP (whatever the operator state).
    pub up: bool,
    /// Operator state: "ready", "drain" or "maint".
    pub admin: &'static str,
    /// False once the node left the configuration or the cluster (it drains, then disappears).
    pub member: bool,
    /// Takes new traffic now.
    pub eligible: bool,
    /// The node's share of new traffic in percent of a full node's: 100 normally, 0 when it
    /// takes none, in between while it ramps up after coming UP (`[health] slowstart`).
    pub weight: u64,
    /// Check state and history: last check, failed checks, downtime, DOWN transitions.
    pub health: HealthView,
    /// Seconds since the status last changed (UP/DOWN, or an operator's DRAIN/MAINT).
    #[serde(rename = "lastchg_ms", serialize_with = "crate::util::ms::from_secs")]
    pub lastchg: u64,
    /// Pooled keep-alive connections to the node, idle now.
    pub idle_connections: usize,
    /// This gateway's traffic to the node.
    pub traffic: Traffic,
    /// Kept for scripts written against the first version of this feed.
    pub active: u64,
    /// Kept for scripts written against the first version of this feed (`traffic.total`).
    pub sessions_total: u64,
    /// With `[fleet]`: the node's totals over every gateway of the fleet (`traffic` is this
    /// gateway's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::control::fleet::view::NodeFleet>,
    /// With `[fleet]`: the gateway whose ops API set the operator state, when (epoch ms), and
    /// when this gateway applied it (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_by: Option<String>,
    /// With `[fleet]`: when the operator state was set, epoch ms (see `admin_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_at_ms: Option<u64>,
    /// With `[fleet]`: when this gateway applied the operator state, epoch ms (see `admin_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_applied_ms: Option<u64>,
}

/// The backend total row.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    /// UP when at least one node takes traffic, else DOWN.
    pub status: &'static str,
    /// Sum of the nodes' weights (100 per node taking its full share).
    pub weight: u64,
    /// Nodes taking traffic now (weight above 0).
    pub active_nodes: u64,
    /// Sums of the node rows; peaks are the largest node's.
    pub traffic: Traffic,
    /// UP to DOWN changes summed over the nodes.
    pub down_transitions: u64,
}

/// Row colours, after haproxy's stats page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusClass {
    Up,
    Down,
    /// UP, failing checks ("UP 1/3").
    GoingDown,
    /// DOWN, passing checks ("DOWN 1/2").
    GoingUp,
    Drain,
    Maint,
    NoCheck,
}

impl StatusClass {
    pub fn css(self) -> &'static str {
        match self {
            StatusClass::Up => "up",
            StatusClass::Down => "down",
            StatusClass::GoingDown => "going_down",
            StatusClass::GoingUp => "going_up",
            StatusClass::Drain => "drain",
            StatusClass::Maint => "maint",
            StatusClass::NoCheck => "nocheck",
        }
    }
}

/// The status haproxy would print for a server with this health and operator state: MAINT wins,
/// a drained node shows DRAIN where haproxy would say UP ("DRAIN 1/3" while going down), and a
/// DOWN node stays DOWN whatever the operator said.
pub fn node_status(h: &HealthView, admin: AdminState, membership: Membership) -> (String, StatusClass) {
    if admin == AdminState::Maint {
        return ("MAINT".into(), StatusClass::Maint);
    }
    if h.leaving {
        // Told a request it is shutting down: no traffic until checks bring it back UP.
        return ("LEAVING".into(), StatusClass::Drain);
    }
    let draining = admin == AdminState::Drain || membership == Membership::Draining;
    let s = h.status.trim();
    if draining {
        if let Some(rest) = s.strip_prefix("UP") {
            return (format!("DRAIN{rest}"), StatusClass::Drain);
        }
        if s == "no check" {
            return ("DRAIN".into(), StatusClass::Drain);
        }
    }
    let class = match h.phase {
        Phase::Up => StatusClass::Up,
        Phase::GoingDown => StatusClass::GoingDown,
        Phase::Down => StatusClass::Down,
        Phase::GoingUp => StatusClass::GoingUp,
    };
    (s.to_string(), class)
}

/// haproxy's long description of a check result (`check_desc`).
pub fn check_desc(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::L4OK => "Layer4 check passed",
        CheckKind::L4CON => "Layer4 connection problem",
        CheckKind::L4TOUT => "Layer4 timeout",
        CheckKind::L7OK => "Layer7 check passed",
        CheckKind::L7STS => "Layer7 wrong status",
        CheckKind::L7TOUT => "Layer7 timeout",
        CheckKind::L7RSP => "Layer7 invalid response",
    }
}

fn node_traffic(b: &Backend, c: &NodeCounters, now: u64) -> Traffic {
    let last = get(&c.last_session);
    let responses = c.responses.all();
    Traffic {
        cur: b.active(),
        max: get(&c.max_active),
        limit: None,
        total: get(&c.sessions_total),
        rate: c.session_rate.per_sec(),
        rate_max: c.session_rate.max(),
        req_rate: None,
        req_rate_max: None,
        req_tot: responses.iter().sum(),
        tunnels: get(&c.tunnels),
        tunnels_total: get(&c.tunnels_total),
        bytes_in: get(&c.bytes_in),
        bytes_out: get(&c.bytes_out),
        req_errors: None,
        conn_errors: get(&c.connect_errors),
        resp_errors: get(&c.response_errors),
        retries: get(&c.retries),
        redispatches: get(&c.redispatches),
        responses,
        last_session: (last > 0).then(|| now.saturating_sub(last)),
    }
}

fn frontend_traffic(f: &FrontendCounters, limit: u64) -> Traffic {
    // An upgraded connection leaves the connection count when its tunnel starts: count it back,
    // as haproxy counts a tunnelled session until it ends.
    let cur = get(&f.connections) + get(&f.tunnels);
    Traffic {
        cur,
        max: get(&f.max_connections).max(cur),
        limit: Some(limit),
        total: get(&f.connections_total),
        rate: f.connection_rate.per_sec(),
        rate_max: f.connection_rate.max(),
        req_rate: Some(f.request_rate.per_sec()),
        req_rate_max: Some(f.request_rate.max()),
        req_tot: get(&f.requests_total),
        tunnels: get(&f.tunnels),
        tunnels_total: get(&f.tunnels_total),
        bytes_in: get(&f.bytes_in),
        bytes_out: get(&f.bytes_out),
        req_errors: Some(get(&f.request_errors)),
        conn_errors: 0,
        resp_errors: 0,
        retries: 0,
        redispatches: 0,
        responses: f.responses.all(),
        last_session: None,
    }
}

fn node_view(b: &Arc<Backend>, now: u64, started: u64, ramp: crate::data::balance::Ramp) -> NodeView {
    let mut health = b.health.view();
    // Health counts as totals since the name was first seen, like the traffic counters.
    let [failed, downs, downtime] = b
        .counters
        .health_carry
        .totals(Arc::as_ptr(b) as usize, [health.failed_checks, health.down_transitions, health.downtime]);
    (health.failed_checks, health.down_transitions, health.downtime) = (failed, downs, downtime);
    let admin = b.admin();
    let membership = b.membership();
    let (status, class) = match node_status(&health, admin, membership) {
        // A host name without an address: say why it is DOWN (MAINT and DRAIN still show).
        (_, StatusClass::Down | StatusClass::GoingUp) if b.unresolved => {
            (DNS_NO_ADDRESS.to_string(), StatusClass::Down)
        }
        other => other,
    };
    let eligible = b.eligible();
    let since = status_since(health.last_change, b.admin_since(), started);
    let traffic = node_traffic(b, &b.counters, now);
    NodeView {
        name: b.name.clone(),
        address: b.addr.to_string(),
        origin: b.origin,
        status,
        class,
        up: health.up,
        admin: admin.as_str(),
        member: membership == Membership::Active,
        eligible,
        weight: u64::from(b.weight(ramp.slowstart_ms, ramp.now_ms, ramp.from_ms)),
        lastchg: now.saturating_sub(since),
        health,
        idle_connections: b.idle_connections(),
        active: traffic.cur,
        sessions_total: traffic.total,
        traffic,
        fleet: None,
        admin_by: None,
        admin_at_ms: None,
        admin_applied_ms: None,
    }
}

/// When the status shown began: the latest of the last UP/DOWN change and the operator's last
/// state change (a MAINT set an hour after start-up counts from then), else start-up.
fn status_since(last_change: u64, admin_since: u64, started: u64) -> u64 {
    match last_change.max(admin_since) {
        0 => started,
        t => t,
    }
}

/// The backend total: sums of the node rows; maxima are the largest node's (the gateway keeps no
/// separate backend-wide peak).
fn backend_view(nodes: &[NodeView]) -> BackendView {
    let mut t = Traffic::default();
    let mut last: Option<u64> = None;
    for n in nodes {
        let x = &n.traffic;
        t.cur += x.cur;
        t.max = t.max.max(x.max);
        t.total += x.total;
        t.rate += x.rate;
        t.rate_max = t.rate_max.max(x.rate_max);
        t.req_tot += x.req_tot;
        t.tunnels += x.tunnels;
        t.tunnels_total += x.tunnels_total;
        t.bytes_in += x.bytes_in;
        t.bytes_out += x.bytes_out;
        t.conn_errors += x.conn_errors;
        t.resp_errors += x.resp_errors;
        t.retries += x.retries;
        t.redispatches += x.redispatches;
        for (a, b) in t.responses.iter_mut().zip(x.responses) {
            *a += b;
        }
        if let Some(l) = x.last_session {
            last = Some(last.map_or(l, |m: u64| m.min(l)));
        }
    }
    t.rate_max = t.rate_max.max(t.rate);
    t.max = t.max.max(t.cur);
    t.last_session = last;
    let weight: u64 = nodes.iter().map(|n| n.weight).sum();
    BackendView {
        status: if weight > 0 { "UP" } else { "DOWN" },
        weight,
        active_nodes: nodes.iter().filter(|n| n.weight > 0).count() as u64,
        down_transitions: nodes.iter().map(|n| n.health.down_transitions).sum(),
        traffic: t,
    }
}

/// Read the gateway once into a [`StatsView`].
pub fn collect(core: &Core, reloads: &ReloadStats) -> StatsView {
    let snap = core.snapshot();
    let cfg = &snap.config;
    let now = crate::util::epoch_secs();
    let started = core.started_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ramp = crate::data::balance::Ramp::now(cfg.health.slowstart.0, core.started_at);
    let nodes: Vec<NodeView> = snap.nodes.iter().map(|b| node_view(b, now, started, ramp)).collect();
    let backend = backend_view(&nodes);
    let max_conn = core.frontend.connection_limit.load(Ordering::Relaxed);
    StatsView {
        process: ProcessView {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at: started,
            now,
            uptime: now.saturating_sub(started),
            algorithm: cfg.balance.algorithm.as_str(),
            refresh: cfg.stats.refresh.0.as_secs(),
            client_listen: cfg.gateway.listen.to_string(),
            tls_listen: cfg.tls.as_ref().map(|t| t.listen.to_string()),
            max_connections: max_conn,
            reloads_ok: reloads.ok.load(Ordering::Relaxed),
            reloads_failed: reloads.failed.load(Ordering::Relaxed),
            last_reload: reloads.last(),
            tls: None,
            generation: snap.generation,
            nodes_total: nodes.len(),
            nodes_eligible: nodes.iter().filter(|n| n.eligible).count(),
            edge: EdgeView::of(&core.frontend),
        },
        frontend: frontend_traffic(&core.frontend, max_conn),
        nodes,
        backend,
        gateways: None,
        fleet: None,
    }
}

/// `/hastats;json`: the same view as the page, as one JSON document.
pub fn json(view: &StatsView) -> String {
    serde_json::to_string(view).unwrap_or_else(|e| format!("{{\"error\":\"stats: {e}\"}}"))
}

/// `1d2h`, `3m4s`, `5s`: haproxy's compact durations.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_state_shows_since_it_was_set() {
        assert_eq!(status_since(100, 0, 50), 100, "no operator change: the last UP/DOWN change");
        assert_eq!(status_since(100, 3700, 50), 3700, "MAINT set later: counts from then");
        assert_eq!(status_since(0, 0, 50), 50, "nothing yet: start-up");
        let b = Backend::for_test("n", 1);
        assert_eq!(b.admin_since(), 0);
        b.set_admin(AdminState::Maint);
        assert!(b.admin_since() >= crate::util::epoch_secs() - 1, "the change is stamped");
    }

    fn hv(status: &str, up: bool) -> HealthView {
        HealthView {
            up,
            phase: match status {
                "UP" => Phase::Up,
                "DOWN" => Phase::Down,
                s if s.starts_with("UP") => Phase::GoingDown,
                _ => Phase::GoingUp,
            },
            status: status.into(),
            last_check: None,
            last_change: 0,
            downtime: 0,
            down_transitions: 0,
            failed_checks: 0,
            leaving: false,
        }
    }

    #[test]
    fn statuses_as_haproxy_prints_them() {
        use AdminState::*;
        use Membership::*;
        let cases = [
            ("UP", true, Ready, Active, "UP", StatusClass::Up),
            ("UP 1/3", true, Ready, Active, "UP 1/3", StatusClass::GoingDown),
            ("DOWN 1/2", false, Ready, Active, "DOWN 1/2", StatusClass::GoingUp),
            ("DOWN", false, Ready, Active, "DOWN", StatusClass::Down),
            ("UP", true, Drain, Active, "DRAIN", StatusClass::Drain),
            ("UP 1/3", true, Drain, Active, "DRAIN 1/3", StatusClass::Drain),
            ("UP", true, Ready, Draining, "DRAIN", StatusClass::Drain),
            ("DOWN", false, Drain, Active, "DOWN", StatusClass::Down),
            ("UP", true, Maint, Active, "MAINT", StatusClass::Maint),
            ("DOWN", false, Maint, Draining, "MAINT", StatusClass::Maint),
        ];
        for (h, up, a, m, want, class) in cases {
            assert_eq!(node_status(&hv(h, up), a, m), (want.to_string(), class), "{h} {a:?} {m:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(7260), "2h1m");
        assert_eq!(human_duration(90_000), "1d1h");
    }
}
