//! Control plane: what a configuration must satisfy beyond its types (ranges, pairs of keys that
//! go together, addresses, names), checked in full: every mistake is reported, each at the line
//! of its key. Pure: no file, socket or DNS is touched here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::addr::{parse_node_target, valid_fleet_name, valid_node_name, valid_sni_name, NodeTarget};
use super::document::Places;
use super::schema::*;
use super::{Config, ConfigError, NodeTlsSpec, StaticNode};

/// Most data-plane workers `[gateway] threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// Most requests a second `[limits] client_rate` may allow (the buckets count microseconds).
pub const MAX_CLIENT_RATE: u32 = 1_000_000;

/// Most clients `[limits] client_table` may track (16 bytes each: 256 MiB).
pub const MAX_CLIENT_TABLE: usize = 1 << 24;

/// The mistakes found so far, each placed at its key's line (or its table's).
struct Mistakes<'a> {
    /// Named in every message.
    file: &'a str,
    /// Where the keys are.
    places: &'a Places,
    /// What was found, in check order.
    found: Vec<ConfigError>,
}

impl Mistakes<'_> {
    /// A mistake of `key`, at its line (or its table's).
    fn at(&mut self, key: &str, message: impl Into<String>) {
        let line = self.places.near(key);
        self.found.push(ConfigError { file: self.file.into(), line, key: key.into(), message: message.into() });
    }
}

/// Check the sections read from a file and build the configuration; `text` is the file's
/// (for the fleet's fingerprint). Every mistake is in the error, in the order of the file.
pub(super) fn check(raw: RawConfig, places: Places, file: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut m = Mistakes { file, places: &places, found: Vec::new() };
    let nodes = nodes(&raw.node, &mut m);
    gateway(&raw, &mut m);
    health(&raw.health, &mut m);
    durations(&raw, &mut m);
    limits(&raw.limits, &mut m);
    edge(&raw, &mut m);
    stats(&raw, &mut m);
    if let Some(t) = &raw.tls {
        tls(t, &raw, &mut m);
    }
    let cluster_tls = raw.cluster.as_ref().and_then(|c| cluster(c, &mut m));
    let fleet = raw.fleet.clone().and_then(|f| fleet(f, raw.cluster.as_ref(), raw.gateway.listen.port(), &mut m));
    if !m.found.is_empty() {
        let mut found = m.found;
        found.sort_by_key(|e| e.line);
        return Err(found);
    }
    // A [stats] table that names neither user nor password turns auth off ("omit both to disable
    // auth"); with no [stats] table at all the seed's kuzzle:kuzzle applies.
    let mut stats = raw.stats;
    if places.has("stats") && !places.has("stats.user") && !places.has("stats.password") {
        stats.user = None;
        stats.password = None;
    }
    Ok(Config {
        source: file.into(),
        gateway: raw.gateway,
        timeouts: raw.timeouts,
        balance: raw.balance,
        limits: raw.limits,
        health: raw.health,
        stats,
        tls: raw.tls,
        cluster: raw.cluster.map(|c| ClusterSection { tls: cluster_tls, ..c }),
        access_log: raw.access_log,
        fleet,
        nodes,
        fingerprint: crate::control::fleet::fingerprint::of_text(text),
        places,
    })
}

/// `[[node]]`s: names (URL prefixes, unique), addresses, TLS settings.
fn nodes(raw: &[NodeSection], m: &mut Mistakes<'_>) -> Vec<StaticNode> {
    let mut nodes = Vec::with_capacity(raw.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in raw.iter().enumerate() {
        let name = n.name.as_str();
        let key = format!("node[{i}].name");
        if !valid_node_name(name) {
            m.at(
                &key,
                format!(
                    "invalid node name {name:?}: it is also the URL prefix /{name}/, so use only letters, digits, '_', '-', '.', '~' (not \".\" or \"..\")"
                ),
            );
        } else if let Some(first) = seen.insert(name, m.places.near(&key)) {
            m.at(&key, format!("duplicate node name {name:?} (first defined at line {first})"));
        }
        let Some(target) = parse_node_target(&n.address) else {
            m.at(
                &format!("node[{i}].address"),
                format!(
                    "invalid address {:?}: expected HOST:PORT or IP:PORT such as \"kuzzle-1:7512\" or \"127.0.0.1:7512\"",
                    n.address
                ),
            );
            continue;
        };
        match node_tls(n.tls, n.ca.as_deref(), n.server_name.clone(), &target) {
            Ok(tls) => nodes.push(StaticNode { name: name.to_string(), target, tls }),
            Err((k, msg)) => m.at(&format!("node[{i}].{k}"), msg),
        }
    }
    nodes
}

/// TLS settings of a node: None without `tls = true` (then `ca` and `server_name` are mistakes);
/// the mistake names the key (`tls`, `ca`, `server_name`). The CA file is read later, when the
/// connector is built (`crate::core::node_tls::NodeTlsSet`).
fn node_tls(
    tls: bool,
    ca: Option<&std::path::Path>,
    server_name: Option<String>,
    target: &NodeTarget,
) -> Result<Option<NodeTlsSpec>, (&'static str, String)> {
    if !tls {
        return match (ca, &server_name) {
            (Some(_), _) => Err(("ca", "ca needs tls = true".into())),
            (None, Some(_)) => Err(("server_name", "server_name needs tls = true".into())),
            (None, None) => Ok(None),
        };
    }
    if let Some(n) = &server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            return Err(("server_name", format!("invalid server name {n:?}")));
        }
    }
    // A node known by name is checked against that name, as a browser would.
    let server_name = server_name.or(match target {
        NodeTarget::Host(h) => Some(h.host.clone()),
        NodeTarget::Addr(_) => None,
    });
    Ok(Some(NodeTlsSpec { ca: ca.map(std::path::Path::to_path_buf), server_name }))
}

/// `[gateway]`: node header, worker count.
fn gateway(raw: &RawConfig, m: &mut Mistakes<'_>) {
    if let Err(msg) = check_node_header(&raw.gateway.node_header) {
        m.at("gateway.node_header", msg);
    }
    // One thread per worker: a mistyped count must not try to start a hundred thousand.
    let n = raw.gateway.threads;
    if n > MAX_THREADS {
        m.at("gateway.threads", format!("{n} worker threads is too many: at most {MAX_THREADS} (0 = one per core)"));
    }
}

/// `[health]`: paths and counts.
fn health(h: &HealthSection, m: &mut Mistakes<'_>) {
    if !h.path.starts_with('/') {
        m.at("health.path", format!("health check path {:?} must start with '/'", h.path));
    }
    if !h.kuzzle2_path.starts_with('/') {
        m.at("health.kuzzle2_path", format!("health check path {:?} must start with '/'", h.kuzzle2_path));
    }
    if h.rise == 0 {
        m.at("health.rise", "rise and fall must be at least 1");
    }
    if h.fall == 0 {
        m.at("health.fall", "rise and fall must be at least 1");
    }
}

/// Durations that must be positive.
fn durations(raw: &RawConfig, m: &mut Mistakes<'_>) {
    let h = &raw.health;
    for (key, d) in [
        ("health.interval", Some(h.interval)),
        ("health.fastinter", h.fastinter),
        ("health.downinter", h.downinter),
        ("health.timeout", Some(h.timeout)),
        ("timeouts.connect", Some(raw.timeouts.connect)),
        ("timeouts.client", Some(raw.timeouts.client)),
        ("timeouts.server", Some(raw.timeouts.server)),
        ("timeouts.tunnel", Some(raw.timeouts.tunnel)),
        ("timeouts.pool_idle", Some(raw.timeouts.pool_idle)),
        ("gateway.drain_timeout", raw.gateway.drain_timeout),
        ("gateway.sdk_ping_forward", Some(raw.gateway.sdk_ping_forward)),
    ] {
        if d.is_some_and(|d| d.0.is_zero()) {
            m.at(key, "duration must be greater than zero");
        }
    }
}

/// `[limits]` sizes: hyper needs at least 8 KiB of read buffer; a node's head needs room for its
/// own headers.
fn limits(l: &LimitsSection, m: &mut Mistakes<'_>) {
    for (key, v, min) in [
        ("limits.request_head", l.request_head, 4096),
        ("limits.uri", l.uri, 64),
        ("limits.headers", l.headers, 8),
        ("limits.response_head", l.response_head, 8192),
    ] {
        if v < min {
            m.at(key, format!("{v} is too small: at least {min}"));
        }
    }
}

/// The edge keys (`[gateway] proxy_protocol*`, the per-client `[limits]`, `[access_log]`).
fn edge(raw: &RawConfig, m: &mut Mistakes<'_>) {
    let g = &raw.gateway;
    if g.proxy_protocol && g.proxy_protocol_from.is_empty() {
        m.at(
            "gateway.proxy_protocol",
            "proxy_protocol = true needs the L4 balancers' networks in proxy_protocol_from (e.g. [\"10.0.0.0/8\"]): \
             any other client could claim any address",
        );
    }
    if !g.proxy_protocol && !g.proxy_protocol_from.is_empty() {
        m.at("gateway.proxy_protocol_from", "proxy_protocol_from needs proxy_protocol = true");
    }
    let l = &raw.limits;
    if l.client_connections > MAX_CLIENT_CONNECTIONS {
        m.at(
            "limits.client_connections",
            format!("{} is too many: at most {MAX_CLIENT_CONNECTIONS} (0 = off)", l.client_connections),
        );
    }
    if l.client_rate > MAX_CLIENT_RATE {
        m.at(
            "limits.client_rate",
            format!("{} a second is more than can be told apart: at most {MAX_CLIENT_RATE} (0 = off)", l.client_rate),
        );
    }
    if l.client_burst > 0 && l.client_rate == 0 {
        m.at("limits.client_burst", "client_burst needs client_rate (requests per second, 0 = off)");
    }
    if !(1024..=MAX_CLIENT_TABLE).contains(&l.client_table) {
        m.at("limits.client_table", format!("{} clients: between 1024 and {MAX_CLIENT_TABLE}", l.client_table));
    }
    if let Some(a) = &raw.access_log {
        if a.path.trim().is_empty() {
            m.at("access_log.path", "path is \"stdout\" or a file; remove [access_log] to turn it off");
        }
        if let Some(bad) = a.mask.iter().find(|x| x.is_empty() || x.bytes().any(|b| b"&=# ".contains(&b))) {
            m.at("access_log.mask", format!("{bad:?} is no query parameter name"));
        }
    }
}

/// `[stats]`: the page's path, the credentials as the file writes them, the listener.
fn stats(raw: &RawConfig, m: &mut Mistakes<'_>) {
    if !raw.stats.uri.starts_with('/') {
        m.at("stats.uri", format!("stats uri {:?} must start with '/'", raw.stats.uri));
    }
    // Judged on what the file says: a default must never fill in half of the credentials
    // (`user = "ops"` alone would otherwise get the password "kuzzle").
    let (user, password) = (m.places.has("stats.user"), m.places.has("stats.password"));
    if user != password {
        let missing = if password { "user" } else { "password" };
        m.at(
            if user { "stats.user" } else { "stats.password" },
            format!("set both user and password, or neither (no auth): {missing} is missing"),
        );
    }
    if clash(raw.stats.listen, raw.gateway.listen) {
        m.at("stats.listen", "stats listener cannot share the client listener's address");
    }
}

/// Two listeners on one address; port 0 asks the OS for a free port: two such never clash.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a == b && a.port() != 0
}

/// `[tls]`: its listener, its pairs as written (the files are loaded by `crate::control::tls`).
fn tls(t: &TlsSection, raw: &RawConfig, m: &mut Mistakes<'_>) {
    if clash(t.listen, raw.gateway.listen) || clash(t.listen, raw.stats.listen) {
        m.at("tls.listen", "TLS listener cannot share the client or stats listener's address");
    }
    match (&t.cert, &t.key) {
        (Some(_), None) => m.at("tls.cert", "set both cert and key: key is missing"),
        (None, Some(_)) => m.at("tls.key", "set both cert and key: cert is missing"),
        (None, None) if t.certificate.is_empty() => {
            m.at("tls", "[tls] needs cert and key, or [[tls.certificate]] entries")
        }
        _ => {}
    }
    if t.handshake_timeout.0.is_zero() {
        m.at("tls.handshake_timeout", "duration must be greater than zero");
    }
    for (i, c) in t.certificate.iter().enumerate() {
        if let Some(bad) = c.names.iter().find(|n| !valid_sni_name(n)) {
            m.at(
                &format!("tls.certificate[{i}].names"),
                format!("invalid name {bad:?}: expected a DNS name such as \"api.example.com\" or \"*.example.com\""),
            );
        }
    }
}

/// `[cluster]`: one Redis source, TLS to the nodes it finds, positive durations and counts.
/// Gives the nodes' TLS settings.
fn cluster(c: &ClusterSection, m: &mut Mistakes<'_>) -> Option<NodeTlsSpec> {
    match (&c.redis, &c.redis_cluster) {
        (Some(_), Some(_)) => m.at("cluster.redis_cluster", "set either redis or redis_cluster, not both"),
        (None, None) => m.at("cluster", "[cluster] needs redis = \"redis://host:port/0\" or redis_cluster = [...]"),
        (Some(u), None) => {
            if let Err(msg) = check_redis_url(u, false) {
                m.at("cluster.redis", msg);
            }
        }
        (None, Some(list)) => {
            if list.is_empty() {
                m.at("cluster.redis_cluster", "redis_cluster needs at least one seed URL");
            }
            if let Some(msg) = list.iter().find_map(|u| check_redis_url(u, true).err()) {
                m.at("cluster.redis_cluster", msg);
            }
        }
    }
    let mut spec = None;
    if c.node_tls || c.node_ca.is_some() || c.node_server_name.is_some() {
        // Nodes from Redis are known by IP: no host name to default to.
        let any = NodeTarget::Addr(SocketAddr::from(([0, 0, 0, 0], 0)));
        match node_tls(c.node_tls, c.node_ca.as_deref(), c.node_server_name.clone(), &any) {
            Ok(s) => spec = s,
            Err((k, msg)) => m.at(&format!("cluster.node_{k}"), msg),
        }
    }
    if c.heartbeat_timeout.0.is_zero() {
        m.at("cluster.heartbeat_timeout", "durations must be greater than zero");
    }
    if c.poll_interval.0.is_zero() {
        m.at("cluster.poll_interval", "durations must be greater than zero");
    }
    if c.ready_timeout.0.is_zero() || c.ready_timeout.0 > MAX_READY_TIMEOUT {
        m.at("cluster.ready_timeout", format!("must be more than zero and at most {}s", MAX_READY_TIMEOUT.as_secs()));
    }
    for (key, v) in [
        ("cluster.max_nodes", c.max_nodes as u64),
        ("cluster.join_rate", u64::from(c.join_rate)),
        ("cluster.join_burst", u64::from(c.join_burst)),
    ] {
        if v == 0 {
            m.at(key, "must be at least 1");
        }
    }
    spec
}

/// `[fleet]`, with its defaults filled in (Redis from `[cluster]`, the name from the host name
/// and the client port). None on a mistake.
fn fleet(
    mut f: FleetSection,
    cluster: Option<&ClusterSection>,
    port: u16,
    m: &mut Mistakes<'_>,
) -> Option<FleetSection> {
    let before = m.found.len();
    match (&f.redis, &f.redis_cluster) {
        (Some(_), Some(_)) => m.at("fleet.redis_cluster", "set redis or redis_cluster, not both"),
        (Some(u), None) => {
            if let Err(msg) = check_redis_url(u, false) {
                m.at("fleet.redis", msg);
            }
        }
        (None, Some(list)) => {
            if list.is_empty() {
                m.at("fleet.redis_cluster", "redis_cluster needs at least one seed URL");
            }
            if let Some(msg) = list.iter().find_map(|u| check_redis_url(u, true).err()) {
                m.at("fleet.redis_cluster", msg);
            }
        }
        (None, None) => match cluster {
            Some(c) if c.redis.is_some() || c.redis_cluster.is_some() => {
                f.redis = c.redis.clone();
                f.redis_cluster = if c.redis.is_some() { None } else { c.redis_cluster.clone() };
            }
            _ => m.at("fleet", "[fleet] needs redis or redis_cluster (or a [cluster] that has one)"),
        },
    }
    let name = f.name.clone().unwrap_or_else(|| format!("{}:{port}", host_name()));
    if !valid_fleet_name(&name) {
        m.at(
            "fleet.name",
            format!("invalid fleet name {name:?}: letters, digits, '_', '-', '.', '~', ':' only, at most 128"),
        );
    }
    f.name = Some(name);
    if !valid_fleet_name(&f.namespace) || f.namespace.len() > 64 {
        m.at(
            "fleet.namespace",
            format!("invalid namespace {:?}: letters, digits, '_', '-', '.', '~', ':' only, at most 64", f.namespace),
        );
    }
    if f.heartbeat.0 < Duration::from_millis(50) {
        m.at("fleet.heartbeat", "at least 50ms");
    } else if f.ttl.0 < f.heartbeat.0 * 2 {
        m.at(
            "fleet.ttl",
            format!("at least twice heartbeat ({:?}): one late heartbeat must not drop a gateway", f.heartbeat.0),
        );
    } else if f.state_ttl.0 < f.ttl.0 {
        m.at("fleet.state_ttl", "at least ttl");
    }
    if !(1..=10_000).contains(&f.rebalance_rate) {
        m.at("fleet.rebalance_rate", format!("{} closes a second: between 1 and 10000", f.rebalance_rate));
    }
    if !(1..=100).contains(&f.rebalance_tolerance) {
        m.at("fleet.rebalance_tolerance", format!("{} %: between 1 and 100", f.rebalance_tolerance));
    }
    (m.found.len() == before).then_some(f)
}

/// `[gateway] node_header`: empty (off) or a header name the gateway may set on a response
/// without changing how it is framed or routed.
fn check_node_header(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(());
    }
    let h = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}: letters, digits and '-' only, or \"\" for none"))?;
    const FRAMING: [&str; 8] =
        ["connection", "content-length", "transfer-encoding", "upgrade", "keep-alive", "te", "trailer", "set-cookie"];
    if FRAMING.contains(&h.as_str()) {
        return Err(format!("header {name:?} cannot name the node: the gateway and clients rely on its meaning"));
    }
    Ok(())
}

/// A Redis URL: `redis://` or `rediss://`; database 0 only for a Redis Cluster.
fn check_redis_url(u: &str, cluster: bool) -> Result<(), String> {
    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
        return Err(format!("invalid Redis URL {u:?}: expected redis://host:port[/db]"));
    }
    let db = u.split('/').nth(3).unwrap_or("");
    if cluster && !db.is_empty() && db != "0" {
        return Err(format!("Redis Cluster supports database 0 only, {u:?} names database {db}"));
    }
    Ok(())
}

/// This machine's host name (for the default fleet name), "gateway" if it has none.
fn host_name() -> String {
    let u = rustix::system::uname();
    let n = u.nodename().to_string_lossy().into_owned();
    let n: String = n.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).collect();
    if n.is_empty() {
        "gateway".into()
    } else {
        n
    }
}
