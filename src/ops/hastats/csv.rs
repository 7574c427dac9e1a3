//! Ops: `/hastats;csv`, haproxy 2.6's stats CSV (same header, same column order, same
//! row kinds) so that tools written for haproxy's CSV read the gateway's unchanged.

use std::fmt::Write as _;

use super::{check_desc, NodeView, StatsView, Traffic, PXNAME};

/// haproxy 2.6's CSV columns, in order, as `haproxy 2.6.12-1+deb12u4` (Debian 12) prints them on
/// `/hastats;csv` for an HTTP proxy: the 103 standard fields, the `-` separator, then the fields
/// of the ssl, h2 and h1 stats modules. Every row has exactly this many fields.
pub const HAPROXY_CSV_FIELDS: [&str; 128] = [
    "pxname",
    "svname",
    "qcur",
    "qmax",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "dreq",
    "dresp",
    "ereq",
    "econ",
    "eresp",
    "wretr",
    "wredis",
    "status",
    "weight",
    "act",
    "bck",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "qlimit",
    "pid",
    "iid",
    "sid",
    "throttle",
    "lbtot",
    "tracked",
    "type",
    "rate",
    "rate_lim",
    "rate_max",
    "check_status",
    "check_code",
    "check_duration",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
    "hanafail",
    "req_rate",
    "req_rate_max",
    "req_tot",
    "cli_abrt",
    "srv_abrt",
    "comp_in",
    "comp_out",
    "comp_byp",
    "comp_rsp",
    "lastsess",
    "last_chk",
    "last_agt",
    "qtime",
    "ctime",
    "rtime",
    "ttime",
    "agent_status",
    "agent_code",
    "agent_duration",
    "check_desc",
    "agent_desc",
    "check_rise",
    "check_fall",
    "check_health",
    "agent_rise",
    "agent_fall",
    "agent_health",
    "addr",
    "cookie",
    "mode",
    "algo",
    "conn_rate",
    "conn_rate_max",
    "conn_tot",
    "intercepted",
    "dcon",
    "dses",
    "wrew",
    "connect",
    "reuse",
    "cache_lookups",
    "cache_hits",
    "srv_icur",
    "src_ilim",
    "qtime_max",
    "ctime_max",
    "rtime_max",
    "ttime_max",
    "eint",
    "idle_conn_cur",
    "safe_conn_cur",
    "used_conn_cur",
    "need_conn_est",
    "uweight",
    "agg_server_status",
    "agg_server_check_status",
    "agg_check_status",
    "-",
    "ssl_sess",
    "ssl_reused_sess",
    "ssl_failed_handshake",
    "h2_headers_rcvd",
    "h2_data_rcvd",
    "h2_settings_rcvd",
    "h2_rst_stream_rcvd",
    "h2_goaway_rcvd",
    "h2_detected_conn_protocol_errors",
    "h2_detected_strm_protocol_errors",
    "h2_rst_stream_resp",
    "h2_goaway_resp",
    "h2_open_connections",
    "h2_backend_open_streams",
    "h2_total_connections",
    "h2_backend_total_streams",
    "h1_open_connections",
    "h1_open_streams",
    "h1_total_connections",
    "h1_total_streams",
    "h1_bytes_in",
    "h1_bytes_out",
    "h1_spliced_bytes_in",
    "h1_spliced_bytes_out",
];

/// One CSV row under construction: every column empty until set.
struct Row(Vec<String>);

impl Row {
    fn new() -> Row {
        Row(vec![String::new(); HAPROXY_CSV_FIELDS.len()])
    }

    /// Set a column by its haproxy name (names are compile-time constants checked by a test).
    fn set(&mut self, name: &str, v: impl ToString) -> &mut Row {
        if let Some(i) = HAPROXY_CSV_FIELDS.iter().position(|f| *f == name) {
            self.0[i] = v.to_string();
        }
        self
    }

    fn zero(&mut self, names: &[&str]) -> &mut Row {
        for n in names {
            self.set(n, 0);
        }
        self
    }

    /// haproxy ends every line, header included, with a comma.
    fn write(&self, out: &mut String) {
        for v in &self.0 {
            out.push_str(&escape(v));
            out.push(',');
        }
        out.push('\n');
    }
}

/// RFC 4180 quoting, only when needed (haproxy's own `csv_enc` does the same).
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\"")).into()
    } else {
        v.into()
    }
}

/// Columns every row kind fills from its traffic.
fn traffic(r: &mut Row, t: &Traffic) {
    r.set("scur", t.cur)
        .set("smax", t.max)
        .set("stot", t.total)
        .set("bin", t.bytes_in)
        .set("bout", t.bytes_out)
        .set("rate", t.rate)
        .set("rate_max", t.rate_max)
        .set("req_tot", t.req_tot)
        .set("dresp", 0)
        .set("wrew", 0)
        .set("eint", 0);
    for (name, v) in ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"].iter().zip(t.responses)
    {
        r.set(name, v);
    }
    // The modules' section: "-" marks its start (as in haproxy); TLS sessions are not counted.
    r.set("-", "-").zero(&["ssl_sess", "ssl_reused_sess", "ssl_failed_handshake"]);
}

fn common(r: &mut Row, svname: &str, pid: u32, kind: u8) {
    r.set("pxname", PXNAME).set("svname", svname).set("pid", pid).set("iid", 1).set("type", kind).set("mode", "http");
}

/// Columns of the backend side (node and BACKEND rows).
fn server_side(r: &mut Row, t: &Traffic) {
    r.zero(&["qcur", "qmax", "bck", "cli_abrt", "srv_abrt", "qtime", "ctime", "rtime", "ttime"])
        .zero(&["qtime_max", "ctime_max", "rtime_max", "ttime_max", "connect", "reuse"])
        .set("econ", t.conn_errors)
        .set("eresp", t.resp_errors)
        .set("wretr", t.retries)
        .set("wredis", t.redispatches)
        .set("lbtot", t.total)
        .set("lastsess", t.last_session.map_or(-1, |s| s as i64));
}

fn frontend_row(v: &StatsView, stopping: bool) -> Row {
    let t = &v.frontend;
    let mut r = Row::new();
    common(&mut r, "FRONTEND", v.process.pid, 0);
    traffic(&mut r, t);
    r.set("slim", t.limit.unwrap_or(0))
        .zero(&["rate_lim", "intercepted", "dses", "cache_lookups", "cache_hits"])
        // haproxy's denied requests (`http-request deny`) and connections (`tcp-request
        // connection reject`): the gateway's 429s, and the connections it closed at once.
        .set("dreq", v.process.edge.limited.get("rate").copied().unwrap_or(0))
        .set(
            "dcon",
            v.process.edge.limited.get("connections").copied().unwrap_or(0)
                + v.process.edge.proxy_refused.values().sum::<u64>(),
        )
        .zero(&["comp_in", "comp_out", "comp_byp", "comp_rsp"])
        .set("ereq", t.req_errors.unwrap_or(0))
        .set("status", if stopping { "STOP" } else { "OPEN" })
        .set("sid", 0)
        .set("req_rate", t.req_rate.unwrap_or(0))
        .set("req_rate_max", t.req_rate_max.unwrap_or(0))
        .set("conn_rate", t.rate)
        .set("conn_rate_max", t.rate_max)
        .set("conn_tot", t.total)
        .set("h1_open_connections", t.cur)
        .set("h1_total_connections", t.total)
        .set("h1_total_streams", t.req_tot)
        .set("h1_bytes_in", t.bytes_in)
        .set("h1_bytes_out", t.bytes_out);
    r
}

fn node_row(v: &StatsView, sid: usize, n: &NodeView, rise: u32, fall: u32) -> Row {
    let t = &n.traffic;
    let h = &n.health;
    let mut r = Row::new();
    common(&mut r, &n.name, v.process.pid, 2);
    traffic(&mut r, t);
    server_side(&mut r, t);
    r.set("status", if n.status == super::DNS_NO_ADDRESS { "DOWN" } else { &n.status })
        .set("weight", n.weight)
        .set("uweight", crate::core::backend::FULL_WEIGHT)
        .set("act", 1)
        .set("chkfail", h.failed_checks)
        .set("chkdown", h.down_transitions)
        .set("lastchg", n.lastchg)
        .set("downtime", h.downtime)
        .set("sid", sid)
        .set("hanafail", 0)
        .set("check_rise", rise)
        .set("check_fall", fall)
        .set("addr", &n.address)
        .set("srv_icur", n.idle_connections)
        .set("idle_conn_cur", n.idle_connections)
        .set("used_conn_cur", t.cur)
        .set("safe_conn_cur", 0)
        .set("need_conn_est", 0);
    if let Some(c) = &h.last_check {
        r.set("check_status", c.kind.as_str())
            .set("check_duration", c.duration.as_millis())
            .set("check_desc", check_desc(c.kind))
            .set(
                "last_chk",
                c.code.map_or_else(|| check_desc(c.kind).to_string(), |code| format!("HTTP status {code}")),
            );
        if let Some(code) = c.code {
            r.set("check_code", code);
        }
    }
    r
}

fn backend_row(v: &StatsView, algo: &str) -> Row {
    let b = &v.backend;
    let t = &b.traffic;
    let mut r = Row::new();
    common(&mut r, "BACKEND", v.process.pid, 1);
    traffic(&mut r, t);
    server_side(&mut r, t);
    r.set("slim", v.process.max_connections)
        .zero(&["dreq", "comp_in", "comp_out", "comp_byp", "comp_rsp", "cache_lookups", "cache_hits"])
        .set("status", b.status)
        .set("weight", b.weight)
        .set("uweight", b.active_nodes * u64::from(crate::core::backend::FULL_WEIGHT))
        .set("act", b.active_nodes)
        .set("chkdown", b.down_transitions)
        .set("sid", 0)
        .set("algo", algo)
        .set("h1_open_streams", t.cur);
    r
}

/// Render a view (pure: what tests and `csv` use).
pub fn render(v: &StatsView, rise: u32, fall: u32, stopping: bool) -> String {
    let mut out = String::with_capacity(1024 * (v.nodes.len() + 3));
    out.push_str("# ");
    for f in HAPROXY_CSV_FIELDS {
        let _ = write!(out, "{f},");
    }
    out.push('\n');
    frontend_row(v, stopping).write(&mut out);
    for (i, n) in v.nodes.iter().enumerate() {
        node_row(v, i + 1, n, rise, fall).write(&mut out);
    }
    backend_row(v, v.process.algorithm).write(&mut out);
    fleet_rows(v, &mut out);
    out
}

/// Proxy name of the fleet's per-node totals (`[fleet]`): a tool that reads proxy `kuzzle` only
/// sees what haproxy would show.
pub const FLEET_PXNAME: &str = "kuzzle-fleet";
/// Proxy name of the fleet's gateways (`[fleet]`), one row each.
pub const GATEWAYS_PXNAME: &str = "kuzzle-gateways";

/// With `[fleet]`: one `kuzzle-fleet` row per node (scur: sessions over every gateway) and one
/// `kuzzle-gateways` row per live gateway (scur: its connections; lastchg: its uptime; lastsess:
/// seconds since its last heartbeat; check_desc: its configuration fingerprint; last_chk says
/// whether it differs from the fleet's).
fn fleet_rows(v: &StatsView, out: &mut String) {
    let Some(gws) = &v.gateways else { return };
    for (i, n) in v.nodes.iter().enumerate() {
        let f = n.fleet.unwrap_or_default();
        let mut r = Row::new();
        r.set("pxname", FLEET_PXNAME)
            .set("svname", &n.name)
            .set("pid", v.process.pid)
            .set("iid", 2)
            .set("sid", i + 1)
            .set("type", 2)
            .set("mode", "http")
            .set("scur", f.sessions)
            .set("status", if n.status == super::DNS_NO_ADDRESS { "DOWN" } else { &n.status })
            .set("weight", n.weight)
            .set("addr", &n.address);
        r.write(out);
    }
    for (i, g) in gws.iter().enumerate() {
        let mut r = Row::new();
        r.set("pxname", GATEWAYS_PXNAME)
            .set("svname", &g.name)
            .set("pid", g.pid)
            .set("iid", 3)
            .set("sid", i + 1)
            .set("type", 2)
            .set("mode", "http")
            .set("scur", g.connections)
            .set("status", "UP")
            .set("addr", &g.address)
            .set("lastchg", g.uptime_ms / 1000)
            .set("lastsess", g.last_seen_ms / 1000)
            .set("check_desc", format!("config {}", g.fingerprint))
            .set("last_chk", if g.config_differs { "configuration differs" } else { "configuration same" });
        r.write(out);
    }
}

/// `/hastats;csv`: the `# pxname,...` header, FRONTEND, one row per node, BACKEND.
pub fn csv(view: &StatsView, health: &crate::control::config::HealthSection, stopping: bool) -> String {
    render(view, health.rise, health.fall, stopping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_name_used_exists() {
        let src = include_str!("csv.rs").split("#[cfg(test)]").next().unwrap_or_default();
        // Each `.set("name"` / zero list entry must be a real haproxy column, or it would be lost.
        let mut names = Vec::new();
        for part in src.split(".set(\"").skip(1) {
            names.push(part.split('"').next().unwrap_or_default());
        }
        for part in src.split("zero(&[").skip(1) {
            let list = part.split(']').next().unwrap_or_default();
            names.extend(list.split(',').map(|s| s.trim().trim_matches('"')).filter(|s| !s.is_empty()));
        }
        assert!(names.len() > 60, "scan found the column names");
        for name in names {
            assert!(HAPROXY_CSV_FIELDS.contains(&name), "unknown haproxy CSV column {name:?}");
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a"), "a");
        assert_eq!(escape("a,b"), "\"a,b\"");
        assert_eq!(escape("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
