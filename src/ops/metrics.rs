//! Ops: `/metrics`, the gateway's counters in Prometheus text format (0.0.4), with
//! `# HELP`/`# TYPE` for every family and a `node` label per node.
//!
//! Counters never go backwards: node counters are shared by name across reloads and rejoins
//! (`state::Registry`), health-check counts are carried over by `stats::HealthCarry`.

use std::fmt::Write as _;

use crate::core::counters::STATUS_CLASS_NAMES;
use crate::ops::hastats::{NodeView, StatsView, StatusClass};

/// Prefix of every metric name.
pub const PREFIX: &str = "kuzzle_gateway_";

/// Escape a label value (backslash, double quote, newline), as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes families one at a time: HELP and TYPE once, then the samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", v);
    }

    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{PREFIX}{name} {v}");
        } else {
            let _ = writeln!(self.0, "{PREFIX}{name}{{{labels}}} {v}");
        }
    }

    /// One family with one sample per node.
    fn per_node(&mut self, v: &StatsView, name: &str, kind: &str, help: &str, f: impl Fn(&NodeView) -> String) {
        self.family(name, kind, help);
        for n in &v.nodes {
            self.sample(name, &node_labels(n), f(n));
        }
    }
}

fn node_labels(n: &NodeView) -> String {
    format!("node=\"{}\"", label(&n.name))
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Render a view (pure: what the tests use).
pub fn render_view(v: &StatsView) -> String {
    let mut o = Out(String::with_capacity(4096 + 3072 * v.nodes.len()));
    let p = &v.process;
    let f = &v.frontend;

    o.family("build_info", "gauge", "Always 1; the version is a label.");
    o.sample("build_info", &format!("version=\"{}\"", label(p.version)), 1);
    o.single("start_time_seconds", "gauge", "Start time of the process, seconds since the epoch.", p.started_at);
    o.single("uptime_seconds", "gauge", "Seconds since the process started.", p.uptime);
    o.family("reloads_total", "counter", "Configuration reloads, by result.");
    o.sample("reloads_total", "result=\"ok\"", p.reloads_ok);
    o.sample("reloads_total", "result=\"failed\"", p.reloads_failed);
    if let Some(r) = &p.last_reload {
        o.single(
            "last_reload_success",
            "gauge",
            "1 if the last configuration reload was applied, 0 if refused.",
            u8::from(r.ok),
        );
        o.single("last_reload_timestamp_seconds", "gauge", "Time of the last configuration reload attempt.", r.at);
    }
    if let Some(t) = &p.tls {
        o.family(
            "tls_certificate_expiry_seconds",
            "gauge",
            "Expiry of each served TLS certificate, seconds since the epoch.",
        );
        for c in &t.certificates {
            o.sample("tls_certificate_expiry_seconds", &format!("cert=\"{}\"", label(&c.cert)), c.not_after);
        }
        o.family(
            "tls_certificate_refused",
            "gauge",
            "1 while a pair's files on disk are refused (the previous pair serves).",
        );
        for c in &t.certificates {
            o.sample("tls_certificate_refused", &format!("cert=\"{}\"", label(&c.cert)), u8::from(c.error.is_some()));
        }
        o.family("tls_renewals_total", "counter", "Certificate files changed on disk, by result.");
        o.sample("tls_renewals_total", "result=\"loaded\"", t.renewals);
        o.sample("tls_renewals_total", "result=\"refused\"", t.refused);
    }
    o.single("config_generation", "gauge", "Routing snapshot generation (increases with each change).", p.generation);

    o.single("connections", "gauge", "Client connections open now.", f.cur);
    o.single("connections_max", "gauge", "Highest number of simultaneous client connections.", f.max);
    o.single("connections_limit", "gauge", "Configured cap on client connections.", p.max_connections);
    o.single("connections_total", "counter", "Client connections accepted.", f.total);
    o.single("connection_rate", "gauge", "Client connections accepted during the last second.", f.rate);
    o.single("requests_total", "counter", "Client requests received.", f.req_tot);
    o.single("request_rate", "gauge", "Client requests received during the last second.", f.req_rate.unwrap_or(0));
    o.single(
        "request_errors_total",
        "counter",
        "Requests the gateway answered with its own error (bad request, no node, timeout).",
        f.req_errors.unwrap_or(0),
    );
    o.single("tunnels", "gauge", "WebSocket (upgraded) tunnels open now.", f.tunnels);
    o.single("tunnels_total", "counter", "WebSocket (upgraded) tunnels opened.", f.tunnels_total);
    o.single("bytes_in_total", "counter", "Bytes received from clients (bodies and tunnel data).", f.bytes_in);
    o.single("bytes_out_total", "counter", "Bytes sent to clients (bodies and tunnel data).", f.bytes_out);
    o.family("responses_total", "counter", "Responses sent to clients, by status class.");
    for (c, n) in STATUS_CLASS_NAMES.iter().zip(f.responses) {
        o.sample("responses_total", &format!("code=\"{c}\""), n);
    }
    let e = &p.edge;
    o.family("limited_total", "counter", "Clients refused by [limits] (rate: 429; connections: closed or 429), and clients left untracked for want of room in the limits table (table_full).");
    for (reason, n) in &e.limited {
        o.sample("limited_total", &format!("reason=\"{reason}\""), n);
    }
    o.family(
        "proxy_protocol_refused_total",
        "counter",
        "Connections closed for their PROXY protocol header, by reason.",
    );
    for (reason, n) in &e.proxy_refused {
        o.sample("proxy_protocol_refused_total", &format!("reason=\"{reason}\""), n);
    }
    o.single(
        "h2_reset_floods_total",
        "counter",
        "HTTP/2 connections cut for resetting too many streams before their answer.",
        e.h2_reset_floods,
    );
    o.single(
        "sdk_pings_answered_total",
        "counter",
        "SDK heartbeats ({\"p\":1}) the gateway answered itself instead of forwarding them ([gateway] sdk_pings).",
        e.sdk_pings_answered,
    );
    o.single("access_log_lines_total", "counter", "Access log lines formatted.", e.access_log.lines);
    o.single(
        "access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer was too far behind.",
        e.access_log.dropped,
    );
    o.single("access_log_errors_total", "counter", "Failed opens and writes of the access log.", e.access_log.errors);
    o.family("nodes", "gauge", "Nodes known (members and leaving ones), and those taking traffic.");
    o.sample("nodes", "state=\"known\"", p.nodes_total);
    o.sample("nodes", "state=\"eligible\"", p.nodes_eligible);

    o.per_node(v, "node_up", "gauge", "1 if health checks count the node UP.", |n| s(u8::from(n.up)));
    o.per_node(v, "node_eligible", "gauge", "1 if the node takes new traffic now (UP, ready, member).", |n| {
        s(u8::from(n.eligible))
    });
    o.per_node(
        v,
        "node_member",
        "gauge",
        "1 while the node is in the configuration or cluster, 0 while it leaves.",
        |n| s(u8::from(n.member)),
    );
    o.family("node_status", "gauge", "1 for the node's current status (haproxy's colours), 0 for the others.");
    let classes = [
        StatusClass::Up,
        StatusClass::GoingDown,
        StatusClass::Down,
        StatusClass::GoingUp,
        StatusClass::Drain,
        StatusClass::Maint,
        StatusClass::NoCheck,
    ];
    for n in &v.nodes {
        for c in classes {
            o.sample("node_status", &format!("{},state=\"{}\"", node_labels(n), c.css()), u8::from(n.class == c));
        }
    }
    o.family(
        "node_admin_state",
        "gauge",
        "1 for the operator state of the node (ready, drain, maint), 0 for the others.",
    );
    for n in &v.nodes {
        for a in ["ready", "drain", "maint"] {
            o.sample("node_admin_state", &format!("{},state=\"{a}\"", node_labels(n)), u8::from(n.admin == a));
        }
    }
    o.per_node(
        v,
        "node_weight",
        "gauge",
        "Share of new traffic in percent of a full node's (0: none; below 100 during slow start).",
        |n| s(n.weight),
    );
    o.per_node(v, "node_active", "gauge", "Requests plus tunnels open on the node now.", |n| s(n.traffic.cur));
    o.per_node(v, "node_active_max", "gauge", "Highest number of simultaneous requests plus tunnels.", |n| {
        s(n.traffic.max)
    });
    o.per_node(
        v,
        "node_sessions_total",
        "counter",
        "Requests and tunnels sent to the node (attempts included).",
        |n| s(n.traffic.total),
    );
    o.per_node(v, "node_session_rate", "gauge", "Sessions started on the node during the last second.", |n| {
        s(n.traffic.rate)
    });
    o.per_node(v, "node_tunnels", "gauge", "WebSocket tunnels open on the node now.", |n| s(n.traffic.tunnels));
    o.per_node(v, "node_tunnels_total", "counter", "WebSocket tunnels opened on the node.", |n| {
        s(n.traffic.tunnels_total)
    });
    o.per_node(v, "node_bytes_in_total", "counter", "Bytes sent by clients to the node.", |n| s(n.traffic.bytes_in));
    o.per_node(v, "node_bytes_out_total", "counter", "Bytes sent by the node to clients.", |n| s(n.traffic.bytes_out));
    o.per_node(v, "node_connect_errors_total", "counter", "Failed connections to the node (haproxy's econ).", |n| {
        s(n.traffic.conn_errors)
    });
    o.per_node(v, "node_response_errors_total", "counter", "Broken or timed out responses (haproxy's eresp).", |n| {
        s(n.traffic.resp_errors)
    });
    o.per_node(v, "node_retries_total", "counter", "Retried attempts on the node (haproxy's wretr).", |n| {
        s(n.traffic.retries)
    });
    o.per_node(v, "node_redispatches_total", "counter", "Requests moved away from the node (haproxy's wredis).", |n| {
        s(n.traffic.redispatches)
    });
    o.family("node_responses_total", "counter", "Responses from the node, by status class.");
    for n in &v.nodes {
        for (c, x) in STATUS_CLASS_NAMES.iter().zip(n.traffic.responses) {
            o.sample("node_responses_total", &format!("{},code=\"{c}\"", node_labels(n)), x);
        }
    }
    o.per_node(v, "node_idle_connections", "gauge", "Pooled idle connections to the node.", |n| s(n.idle_connections));
    o.per_node(v, "node_check_failures_total", "counter", "Failed health checks (haproxy's chkfail).", |n| {
        s(n.health.failed_checks)
    });
    o.per_node(v, "node_down_transitions_total", "counter", "UP to DOWN transitions (haproxy's chkdown).", |n| {
        s(n.health.down_transitions)
    });
    o.per_node(v, "node_downtime_seconds_total", "counter", "Seconds the node spent DOWN.", |n| s(n.health.downtime));
    o.per_node(v, "node_last_change_seconds", "gauge", "Seconds since the node's last UP/DOWN change.", |n| {
        s(n.lastchg)
    });
    let checked: Vec<&NodeView> = v.nodes.iter().filter(|n| n.health.last_check.is_some()).collect();
    if !checked.is_empty() {
        o.family("node_last_check_success", "gauge", "1 if the node's last health check passed.");
        for n in &checked {
            if let Some(c) = &n.health.last_check {
                o.sample("node_last_check_success", &node_labels(n), u8::from(c.kind.is_ok()));
            }
        }
        o.family("node_last_check_duration_seconds", "gauge", "Duration of the node's last health check.");
        for n in &checked {
            if let Some(c) = &n.health.last_check {
                o.sample("node_last_check_duration_seconds", &node_labels(n), c.duration.as_secs_f64());
            }
        }
    }
    o.0
}

/// `/metrics`.
pub fn render(view: &StatsView, cluster: &crate::control::cluster::ClusterMetrics) -> String {
    let mut out = Out(render_view(view));
    cluster_families(&mut out, cluster);
    out.0
}

/// The Redis membership counters (`cluster::ClusterMetrics`).
fn cluster_families(o: &mut Out, m: &crate::control::cluster::ClusterMetrics) {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    o.single(
        "cluster_redis_connected",
        "gauge",
        "1 while the Redis membership connection is healthy.",
        get(&m.connected),
    );
    o.single(
        "cluster_redis_connects_total",
        "counter",
        "Successful (re)connections to Redis for membership.",
        get(&m.connects),
    );
    o.single(
        "cluster_redis_errors_total",
        "counter",
        "Failed Redis calls and connection attempts (membership, status, reset).",
        get(&m.errors),
    );
    o.single(
        "cluster_messages_total",
        "counter",
        "Pub/sub messages received on the membership rooms.",
        get(&m.messages),
    );
    o.family(
        "cluster_dropped_total",
        "counter",
        "Redis messages, discovery members and ID cards dropped as invalid, by reason.",
    );
    for (reason, c) in crate::control::cluster::DROP_REASONS.iter().zip(m.dropped.iter()) {
        o.sample("cluster_dropped_total", &format!("reason=\"{}\"", label(reason)), get(c));
    }
    o.single("cluster_joins_total", "counter", "Nodes that joined through Redis membership.", get(&m.joins));
    o.single(
        "cluster_leaves_total",
        "counter",
        "Nodes that left (remove, heartbeat timeout, expired card, member removed).",
        get(&m.leaves),
    );
    o.single("cluster_polls_total", "counter", "Reads of the discovery set and Kuzzle 2 ID cards.", get(&m.polls));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
