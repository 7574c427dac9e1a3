//! Ops: the `/hastats` HTML page: one self-contained, auto-refreshing page in haproxy's
//! layout and colours (no external assets, no script), readable on a phone.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::{check_desc, human_duration, NodeView, StatsView, Traffic, PXNAME};

/// What the page needs from the request that asked for it.
#[derive(Debug, Clone, Default)]
pub struct HtmlOptions {
    /// Host name the browser used to reach the ops listener (from `Host`): node links point at
    /// the client port of that same host.
    pub host: Option<String>,
    /// `?norefresh`: leave the auto refresh out.
    pub no_refresh: bool,
    /// Path of the page (`[stats] uri`), for the refresh links.
    pub uri: String,
}

/// HTML-escape any dynamic string (names, addresses, messages all come from config or Redis).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encode a path segment (node names are their URL prefix).
fn seg(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn date(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch)).to_string()
}

const STYLE: &str = r#"
body{font-family:arial,helvetica,sans-serif;font-size:12px;color:#000;background:#fff;margin:8px}
h1{font-size:x-large;margin:0 0 .4em 0;color:#6020a0}
h1 small{font-size:small;color:#555;font-weight:normal}
h2{font-size:13px;color:#b00040;background:#e8e8d0;margin:0 0 4px 0;padding:2px 4px}
a{color:#004ab0}
.info{display:flex;flex-wrap:wrap;gap:8px 24px;margin-bottom:10px}
.info section{min-width:260px}
table.det td,table.det th{font-size:11px;text-align:left;padding:0 6px 0 0;white-space:nowrap;vertical-align:top}
table.det th{font-weight:bold}
table.lgd td{font-size:11px;padding:1px 6px;border:1px solid gray;white-space:nowrap}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table.tbl{border-collapse:collapse}
table.tbl td,table.tbl th{font-size:11px;border:1px solid gray;padding:2px 4px;white-space:nowrap}
table.tbl td{text-align:right}
table.tbl td.l{text-align:left}
table.tbl td.c{text-align:center}
/* On a narrow screen the table scrolls sideways under the node names. */
table.tbl tbody td:first-child{position:sticky;left:0;background:inherit}
table.tbl th.px{background:#b00040;color:#ffff40;text-align:left;font-size:12px}
table.tbl th.px a{color:#ffff40;text-decoration:none}
.titre{background:#20d0d0;color:#000;font-weight:bold;text-align:center}
.frontend,.backend{background:#e8e8d0}
.backend td{font-weight:bold}
.up{background:#c0ffc0}
.down{background:#ff9090}
.going_up{background:#ffd020}
.going_down{background:#ffffa0}
.drain{background:#20a0ff}
.maint{background:#c07820}
.nocheck{background:#e0e0e0}
tbody a{color:#000}
.bad{font-weight:bold}
.det .ok{color:#060}
.det .bad{color:#b00000}
.sub{color:#444;font-size:10px}
.links a{margin-right:12px}
.foot{color:#666;font-size:10px;margin-top:8px}
@media (prefers-color-scheme:dark){
body{color:#e8e6e3;background:#131516}
h1{color:#a265e0}
h2{color:#ff5190;background:#3e3e1f}
a{color:#3391ff}
.sub{color:#aaa}
.titre{background:#1aa6a6;color:#e8e6e3}
.frontend,.backend{background:#2f3437}
table.tbl th.px{background:#8d0033}
.up{background:#165900}
.down{background:#760000}
.going_up{background:#b99200}
.going_down{background:#6c6c00}
.drain{background:#006ab9}
.maint{background:#9a601a}
.nocheck{background:#2a2d2f}
tbody a{color:#e8e6e3}
.det .ok{color:#7c7}
.det .bad{color:#f77}
}
"#;

/// Columns under the two-line header: (group, span, [sub-columns]).
const GROUPS: [(&str, &[&str]); 9] = [
    ("Request rate", &["Cur", "Max"]),
    ("Sessions", &["Cur", "Max", "Limit", "Total", "LbTot", "Last"]),
    ("WS tunnels", &["Cur", "Total"]),
    ("Bytes", &["In", "Out"]),
    ("Errors", &["Req", "Conn", "Resp"]),
    ("Warnings", &["Retr", "Redis"]),
    ("HTTP responses", &["1xx", "2xx", "3xx", "4xx", "5xx", "other"]),
    ("Server", &["Status", "LastChk", "Wght", "Act", "Chk", "Dwn", "Dwntme"]),
    ("", &[]),
];

fn columns() -> usize {
    1 + GROUPS.iter().map(|(_, c)| c.len()).sum::<usize>()
}

fn td(o: &mut String, v: impl std::fmt::Display) {
    let _ = write!(o, "<td>{v}</td>");
}

fn td_opt(o: &mut String, v: Option<u64>) {
    match v {
        Some(v) => td(o, v),
        None => o.push_str("<td></td>"),
    }
}

/// Rate, sessions, tunnels, bytes, errors, warnings and responses cells.
fn traffic_cells(o: &mut String, t: &Traffic, frontend: bool) {
    let (rate, rate_max) = if frontend { (t.req_rate, t.req_rate_max) } else { (Some(t.rate), Some(t.rate_max)) };
    td_opt(o, rate);
    td_opt(o, rate_max);
    td(o, t.cur);
    td(o, t.max);
    td_opt(o, t.limit);
    td(o, t.total);
    if frontend {
        o.push_str("<td></td><td></td>");
    } else {
        td(o, t.total);
        td(o, t.last_session.map_or_else(|| "never".to_string(), human_duration));
    }
    td(o, t.tunnels);
    td(o, t.tunnels_total);
    td(o, t.bytes_in);
    td(o, t.bytes_out);
    td_opt(o, t.req_errors);
    if frontend {
        o.push_str("<td></td><td></td><td></td><td></td>");
    } else {
        td(o, t.conn_errors);
        td(o, t.resp_errors);
        td(o, t.retries);
        td(o, t.redispatches);
    }
    for v in t.responses {
        td(o, v);
    }
}

fn node_row(o: &mut String, n: &NodeView, link_base: &str) {
    let _ = write!(
        o,
        "<tr class=\"{}\" id=\"node-{}\"><td class=\"l\"><a href=\"{}/{}/\">{}</a><br /><span class=\"sub\">{}</span></td>",
        n.class.css(),
        esc(&n.name),
        esc(link_base),
        esc(&seg(&n.name)),
        esc(&n.name),
        esc(&n.address),
    );
    traffic_cells(o, &n.traffic, false);
    let leaving = if n.member { "" } else { " (leaving)" };
    // With [fleet]: who set the operator state, and when.
    let by = match (&n.admin_by, n.admin_at_ms) {
        (Some(by), Some(at)) => {
            format!("<br /><span class=\"sub\">{} by {} at {}</span>", esc(n.admin), esc(by), esc(&date(at / 1000)))
        }
        _ => String::new(),
    };
    let _ = write!(
        o,
        "<td class=\"c node-status\">{} {}{}{by}</td>",
        esc(&human_duration(n.lastchg)),
        esc(&n.status),
        leaving
    );
    match &n.health.last_check {
        Some(c) => {
            let code = c.code.map(|c| format!("/{c}")).unwrap_or_default();
            let class = if c.kind.is_ok() { "ok" } else { "bad" };
            let _ = write!(
                o,
                "<td class=\"c\" title=\"{}\"><span class=\"{class}\">{}{}</span> in {} ms</td>",
                esc(check_desc(c.kind)),
                c.kind.as_str(),
                esc(&code),
                c.duration.as_millis()
            );
        }
        None => o.push_str("<td class=\"c\">-</td>"),
    }
    td(o, n.weight);
    td(o, "Y");
    td(o, n.health.failed_checks);
    td(o, n.health.down_transitions);
    td(o, human_duration(n.health.downtime));
    o.push_str("</tr>\n");
}

fn process_info(o: &mut String, v: &StatsView) {
    let p = &v.process;
    let f = &v.frontend;
    o.push_str("<section><h2>General process information</h2><table class=\"det\">");
    let mut row = |k: &str, val: String| {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), val);
    };
    row("version", esc(p.version));
    row("pid", p.pid.to_string());
    row("uptime", format!("{} (since {})", human_duration(p.uptime), esc(&date(p.started_at))));
    row("connections", format!("{} now, {} max, limit {}, {} total", f.cur, f.max, p.max_connections, f.total));
    row("WebSocket tunnels", format!("{} open, {} total", f.tunnels, f.tunnels_total));
    row(
        "rates",
        format!(
            "{} conn/s (max {}), {} req/s (max {})",
            f.rate,
            f.rate_max,
            f.req_rate.unwrap_or(0),
            f.req_rate_max.unwrap_or(0)
        ),
    );
    row("nodes", format!("{} taking traffic / {} known, {}", p.nodes_eligible, p.nodes_total, esc(p.algorithm)));
    let reload = match &p.last_reload {
        None => "none since start".to_string(),
        Some(r) if r.ok => format!("<span class=\"ok\">OK</span> at {} ({})", esc(&date(r.at)), esc(&r.message)),
        Some(r) => format!("<span class=\"bad\">FAILED</span> at {}: {}", esc(&date(r.at)), esc(&r.message)),
    };
    row("last reload", reload);
    row("reloads", format!("{} ok, {} failed", p.reloads_ok, p.reloads_failed));
    let e = &p.edge;
    let pairs = |m: &std::collections::BTreeMap<&str, u64>| {
        m.iter().map(|(k, v)| format!("{v} {}", k.replace('_', " "))).collect::<Vec<_>>().join(", ")
    };
    row("limits", format!("refused: {}", pairs(&e.limited)));
    if e.proxy_refused.values().any(|v| *v > 0) {
        row("PROXY protocol", format!("closed: {}", pairs(&e.proxy_refused)));
    }
    if e.h2_reset_floods > 0 {
        row("HTTP/2", format!("{} connections cut for resetting too many streams", e.h2_reset_floods));
    }
    let l = &e.access_log;
    if l.lines > 0 || l.errors > 0 {
        row("access log", format!("{} lines, {} dropped, {} write errors", l.lines, l.dropped, l.errors));
    }
    if let Some(t) = &p.tls {
        for c in &t.certificates {
            let names = if c.names.is_empty() { "no names".to_string() } else { c.names.join(", ") };
            let state = match (c.status, &c.error) {
                ("refused", Some(e)) => format!(
                    "<span class=\"bad\">REFUSED</span> at {}: {}; serving the previous pair",
                    esc(&date(c.error_at.unwrap_or(0))),
                    esc(e)
                ),
                ("expired", _) => "<span class=\"bad\">EXPIRED</span>".to_string(),
                _ => "<span class=\"ok\">OK</span>".to_string(),
            };
            let what = format!(
                "{state} {} ({}), until {}, loaded {}",
                esc(&c.cert),
                esc(&names),
                esc(&date(c.not_after)),
                esc(&date(c.loaded_at))
            );
            row(&format!("TLS certificate ({})", c.place), what);
        }
        row(
            "TLS renewals",
            format!("{} loaded, {} refused; HTTP/2 {}", t.renewals, t.refused, if t.http2 { "on" } else { "off" }),
        );
    }
    o.push_str("</table></section>\n");
}

/// With `[fleet]`: the fleet's link, configuration agreement and rebalancing.
fn fleet_info(o: &mut String, v: &StatsView) {
    let Some(f) = &v.fleet else { return };
    o.push_str("<section id=\"fleet\"><h2>Fleet</h2><table class=\"det\">");
    let mut row = |k: &str, val: String| {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), val);
    };
    row("this gateway", format!("{} (namespace {})", esc(&f.name), esc(&f.namespace)));
    let link = if f.connected {
        format!("<span class=\"ok\">connected</span> to {}", esc(&f.redis))
    } else {
        format!(
            "<span class=\"bad\">UNREACHABLE</span> {}: {}; keeping the last known states",
            esc(&f.redis),
            esc(f.last_error.as_deref().unwrap_or("connecting"))
        )
    };
    row("Redis", link);
    let n = v.gateways.as_ref().map_or(0, Vec::len);
    row("gateways", format!("{n} live; heartbeat every {} ms, gone after {} ms of silence", f.heartbeat_ms, f.ttl_ms));
    let cfg = if f.configs_agree {
        format!("<span class=\"ok\">same on every gateway</span> ({})", esc(&f.fingerprint))
    } else {
        format!("<span class=\"bad\">DIFFERS</span> between gateways (this one: {})", esc(&f.fingerprint))
    };
    row("configuration", cfg);
    if let Some(c) = &f.name_clash {
        row("name", format!("<span class=\"bad\">USED TWICE</span>: also {}", esc(c)));
    }
    if f.pending_states > 0 {
        row("operator states", format!("{} change(s) taken here, not yet in Redis", f.pending_states));
    }
    let r = &f.rebalance;
    let rb = if !r.enabled {
        "off (rebalance_websockets = false)".to_string()
    } else {
        let mut t = format!("{}, at most {} closes/s, tolerance {} %", r.phase, r.rate, r.tolerance_pct);
        if let Some(since) = r.since_ms {
            let _ = write!(t, "; since {}, round {}, {} moved, {} left", date(since / 1000), r.round, r.moved, r.left);
        }
        if let Some(why) = &r.reason {
            let _ = write!(t, "; {why}");
        }
        if let Some(out) = &r.outcome {
            let _ = write!(t, "; last: {out}");
        }
        let _ = write!(t, "; {} moved since start", r.moved_total);
        esc(&t)
    };
    row("WebSocket rebalancing", rb);
    o.push_str("</table></section>\n");
}

/// With `[fleet]`: every live gateway, and per node the fleet's totals.
fn fleet_tables(o: &mut String, v: &StatsView) {
    let Some(gws) = &v.gateways else { return };
    o.push_str(
        "<h2>Gateways of the fleet</h2><div class=\"scroll\"><table class=\"tbl gateways\"><thead><tr class=\"titre\">",
    );
    for h in [
        "Name",
        "Address",
        "Ops",
        "Uptime",
        "Connections",
        "WS tunnels",
        "Config",
        "Last seen",
        "Version",
        "Rebalancing",
    ] {
        let _ = write!(o, "<th>{h}</th>");
    }
    o.push_str("</tr></thead><tbody>\n");
    for g in gws {
        let class = if g.config_differs { "going_up" } else { "up" };
        let me = if g.me { " (this one)" } else { "" };
        let cfg = if g.config_differs {
            format!("<span class=\"bad\">{} differs</span>", esc(&g.fingerprint))
        } else {
            esc(&g.fingerprint)
        };
        let _ = writeln!(
            o,
            "<tr class=\"{class} gateway\" data-gateway=\"{}\"><td class=\"l\">{}{me}<br /><span class=\"sub\">{}</span></td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{cfg}</td><td>{} ms ago</td><td>{}</td><td>{}</td></tr>",
            esc(&g.name),
            esc(&g.name),
            esc(&g.host),
            esc(&g.address),
            esc(&g.ops),
            esc(&human_duration(g.uptime_ms / 1000)),
            g.connections,
            g.tunnels,
            g.last_seen_ms,
            esc(&g.version),
            g.rebalancing_since_ms.map_or_else(|| "-".to_string(), |s| esc(&date(s / 1000))),
        );
    }
    o.push_str("</tbody></table></div>\n<h2>Nodes over the fleet</h2><div class=\"scroll\"><table class=\"tbl fleet-nodes\"><thead><tr class=\"titre\">");
    for h in ["Node", "Status here", "WS tunnels (fleet)", "Sessions (fleet)", "WS tunnels (here)", "Operator state"] {
        let _ = write!(o, "<th>{h}</th>");
    }
    o.push_str("</tr></thead><tbody>\n");
    for n in &v.nodes {
        let f = n.fleet.unwrap_or_default();
        let who = match (&n.admin_by, n.admin_at_ms) {
            (Some(by), Some(at)) => format!("{} by {} at {}", esc(n.admin), esc(by), esc(&date(at / 1000))),
            _ => esc(n.admin),
        };
        let _ = writeln!(
            o,
            "<tr class=\"{} fleet-node\" data-node=\"{}\"><td class=\"l\">{}</td><td class=\"c\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{who}</td></tr>",
            n.class.css(),
            esc(&n.name),
            esc(&n.name),
            esc(&n.status),
            f.tunnels,
            f.sessions,
            n.traffic.tunnels,
        );
    }
    o.push_str("</tbody></table></div>\n");
}

fn legend(o: &mut String) {
    o.push_str("<section><h2>Legend</h2><table class=\"lgd\">");
    let items = [
        ("up", "UP"),
        ("going_down", "UP, going down"),
        ("down", "DOWN"),
        ("going_up", "DOWN, going up"),
        ("drain", "DRAIN (no new traffic)"),
        ("maint", "MAINT"),
        ("nocheck", "no check"),
    ];
    for pair in items.chunks(2) {
        o.push_str("<tr>");
        for (class, label) in pair {
            let _ = write!(o, "<td class=\"{class}\">{label}</td>");
        }
        o.push_str("</tr>");
    }
    o.push_str("</table></section>\n");
}

/// Render a view (pure: what the tests use).
pub fn render(v: &StatsView, opts: &HtmlOptions, client_port: u16) -> String {
    let mut o = String::with_capacity(8192 + 2048 * v.nodes.len());
    let refresh = v.process.refresh;
    let uri = esc(&opts.uri);
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" />");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\" />");
    if !opts.no_refresh && refresh > 0 {
        let _ = write!(o, "<meta http-equiv=\"refresh\" content=\"{refresh}\" />");
    }
    o.push_str("<title>kuzzle-gateway statistics</title><style>");
    o.push_str(STYLE);
    o.push_str("</style></head>\n<body>\n");
    let _ = write!(
        o,
        "<h1>kuzzle-gateway statistics <small>version {}, pid {}</small></h1>\n<div class=\"info\">\n",
        esc(v.process.version),
        v.process.pid
    );
    process_info(&mut o, v);
    fleet_info(&mut o, v);
    legend(&mut o);
    o.push_str("<section class=\"links\"><h2>Display</h2><p>");
    if opts.no_refresh || refresh == 0 {
        let _ = write!(o, "Auto refresh off. <a href=\"{uri}\">Enable refresh</a>");
    } else {
        let _ = write!(o, "Refresh every {}. <a href=\"{uri}?norefresh\">Stop refresh</a>", human_duration(refresh));
    }
    let _ = write!(
        o,
        "</p><p><a href=\"{uri};csv\">CSV export</a><a href=\"{uri};json\">JSON export</a><a href=\"/metrics\">Prometheus metrics</a></p></section>\n</div>\n"
    );

    let host = opts.host.clone().unwrap_or_else(|| "localhost".into());
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    let link_base = format!("http://{host}:{client_port}");

    let cols = columns();
    o.push_str("<div class=\"scroll\"><table class=\"tbl\"><thead>\n");
    let _ = write!(
        o,
        "<tr><th class=\"px\" colspan=\"{cols}\">{PXNAME}</th></tr>\n<tr class=\"titre\"><th rowspan=\"2\">Name</th>"
    );
    for (g, sub) in GROUPS.iter().filter(|(_, s)| !s.is_empty()) {
        let _ = write!(o, "<th colspan=\"{}\">{g}</th>", sub.len());
    }
    o.push_str("</tr>\n<tr class=\"titre\">");
    for (_, sub) in GROUPS {
        for s in sub {
            let _ = write!(o, "<th>{s}</th>");
        }
    }
    o.push_str("</tr></thead>\n<tbody>\n");

    let _ = write!(
        o,
        "<tr class=\"frontend\" id=\"frontend\"><td class=\"l\">Frontend<br /><span class=\"sub\">{}</span></td>",
        esc(&v.process.client_listen)
    );
    traffic_cells(&mut o, &v.frontend, true);
    o.push_str("<td class=\"c\">OPEN</td><td></td><td></td><td></td><td></td><td></td><td></td></tr>\n");

    for n in &v.nodes {
        node_row(&mut o, n, &link_base);
    }

    let b = &v.backend;
    o.push_str("<tr class=\"backend\" id=\"backend\"><td class=\"l\">Backend</td>");
    traffic_cells(&mut o, &b.traffic, false);
    let _ = writeln!(
        o,
        "<td class=\"c\">{}</td><td></td><td>{}</td><td>{}</td><td></td><td>{}</td><td></td></tr>",
        b.status, b.weight, b.active_nodes, b.down_transitions
    );
    o.push_str("</tbody></table></div>\n");
    fleet_tables(&mut o, v);
    let _ = write!(
        o,
        "<p class=\"foot\">Generated {} UTC by kuzzle-gateway {}. Sessions = requests plus WebSocket tunnels; rates are per second over the last complete second.</p>\n</body></html>\n",
        esc(&date(v.process.now)),
        esc(v.process.version)
    );
    o
}

/// `/hastats`.
pub fn html(view: &StatsView, opts: &HtmlOptions, client_port: u16) -> String {
    render(view, opts, client_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_encodes() {
        assert_eq!(esc("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
        assert_eq!(seg("cluster_kuzzle_1"), "cluster_kuzzle_1");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn header_spans_match_columns() {
        // Name + every sub-column; the frontend and backend rows are written with the same count.
        assert_eq!(columns(), 1 + 2 + 6 + 2 + 2 + 3 + 2 + 6 + 7);
    }
}
