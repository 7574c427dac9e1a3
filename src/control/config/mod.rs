//! Control plane: the TOML configuration, its validation, and errors that name file, line and key.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

/// Where `kuzzle-gateway` looks when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "proxy-configs/gateway.toml";

/// A configuration error: which file, where in it, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, 0 when the error is not tied to a place in the file (unreadable file).
    pub line: usize,
    /// Dotted key such as `timeouts.connect` or `node[2].name`, empty when unknown.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: key `{}`: {}", self.file, self.key, self.message),
            (l, true) => write!(f, "{}:{}: {}", self.file, l, self.message),
            (l, false) => write!(f, "{}:{}: key `{}`: {}", self.file, l, self.key, self.message),
        }
    }
}

/// A duration written as "500ms", "5s", "2h" (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"2h\""))
        })
    }
}

/// Balancing algorithm over the eligible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Round robin over eligible nodes.
    Roundrobin,
    /// Fewest open requests plus tunnels (haproxy's leastconn).
    #[default]
    Leastconn,
    /// Rendezvous hash of the client IP: stable while the node set is stable.
    Source,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Roundrobin => "roundrobin",
            Algorithm::Leastconn => "leastconn",
            Algorithm::Source => "source",
        }
    }
}

/// What happens to the WebSocket tunnels of a node that health checks mark DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnMarkedDown {
    /// Close them with a 1001 "going away" frame so SDKs reconnect elsewhere.
    #[default]
    ShutdownTunnels,
    /// Leave them alone.
    Keep,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub listen: SocketAddr,
    /// Worker threads; 0 = one per core. Not reloadable.
    pub threads: usize,
    /// How long shutdown waits for tunnels before closing them with a close frame.
    pub shutdown_grace: Dur,
    /// Old process lifetime cap after a binary upgrade or a shutdown (haproxy's hard-stop-after).
    pub hard_stop_after: Dur,
    /// Cap on concurrent client connections; 0 = what the open-files limit allows (see `fds`).
    pub max_connections: usize,
    /// Unix socket a new process asks for the listening sockets on (binary upgrade).
    pub upgrade_socket: Option<PathBuf>,
    /// After a node leaves (reload, Redis), its remaining tunnels are closed with 1001 after this
    /// long; unset = they stay until they end.
    pub drain_timeout: Option<Dur>,
    /// Reload when the configuration file changes on disk.
    pub watch: bool,
    /// How often `[[node]]` host names are resolved again (a changed address applies like a reload).
    pub resolve_interval: Dur,
    /// Response header naming the node that answered (real Kuzzle 2 sends `X-Kuzzle-Node:
    /// undefined`, so ops and tests cannot tell otherwise); written over the node's own; "" = off.
    pub node_header: String,
    /// Every client connection (plain and TLS) starts with a PROXY protocol v1 or v2 header: the
    /// gateway sits behind an L4 balancer (AWS NLB, keepalived + haproxy) and the header is the
    /// only place the client's address survives.
    pub proxy_protocol: bool,
    /// The networks of those L4 balancers: with `proxy_protocol`, a connection from elsewhere is
    /// closed (anyone else could claim any address in a header of their own).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            listen: SocketAddr::from(([0, 0, 0, 0], 7512)),
            threads: 0,
            shutdown_grace: Dur(Duration::from_secs(10)),
            hard_stop_after: Dur(Duration::from_secs(2 * 3600)),
            max_connections: 0,
            upgrade_socket: None,
            drain_timeout: None,
            watch: true,
            resolve_interval: Dur(Duration::from_secs(10)),
            node_header: "x-kuzzle-node".into(),
            proxy_protocol: false,
            proxy_protocol_from: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    pub connect: Dur,
    pub client: Dur,
    pub server: Dur,
    pub tunnel: Dur,
    /// Idle pooled connections to nodes are closed after this; keep it below the nodes' own
    /// keep-alive timeout (Node.js: 5 s) so a request never races a node closing its end.
    pub pool_idle: Dur,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            connect: Dur(Duration::from_secs(5)),
            client: Dur(Duration::from_secs(30)),
            server: Dur(Duration::from_secs(60)),
            tunnel: Dur(Duration::from_secs(2 * 3600)),
            pool_idle: Dur(Duration::from_secs(4)),
        }
    }
}

/// Size limits at the edge (haproxy-like defaults): what one client or node may make the gateway
/// hold, so memory stays bounded per connection; and what one client (an IP address, an IPv6
/// /64) may do: nginx's `limit_conn` / `limit_req`, haproxy's stick tables.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Bytes of a request head (request line and headers); more: 431.
    pub request_head: usize,
    /// Header lines of a request; more: 431.
    pub headers: usize,
    /// Bytes of a request target (path and query); more: 414.
    pub uri: usize,
    /// Bytes of a node's response head; more: 502.
    pub response_head: usize,
    /// Open connections per client, WebSockets included; one more is closed at once (or answered
    /// 429 when its request already came). 0 = off. At most [`MAX_CLIENT_CONNECTIONS`].
    pub client_connections: u32,
    /// Requests and WebSocket upgrades per second per client (token bucket); over it: 429 with
    /// `Retry-After`. 0 = off.
    pub client_rate: u32,
    /// The bucket's size: requests a client may make at once before `client_rate` applies;
    /// 0 = `client_rate`.
    pub client_burst: u32,
    /// Clients never limited (monitoring, the office, other gateways).
    pub exempt_networks: Vec<ipnet::IpNet>,
    /// Clients tracked at once (the table is allocated whole: 16 bytes each, so memory stays
    /// fixed whatever the clients do). Read at start only.
    pub client_table: usize,
}

/// Most open connections `[limits] client_connections` may allow a client (the count per client
/// is 16 bits wide in the limits table).
pub const MAX_CLIENT_CONNECTIONS: u32 = 65_535;

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            request_head: 32 * 1024,
            headers: 100,
            uri: 8 * 1024,
            response_head: 64 * 1024,
            client_connections: 0,
            client_rate: 0,
            client_burst: 0,
            exempt_networks: Vec::new(),
            client_table: 65_536,
        }
    }
}

impl LimitsSection {
    /// Is any per-client limit on (then the table exists and every connection is looked up)?
    pub fn per_client(&self) -> bool {
        self.client_connections > 0 || self.client_rate > 0
    }

    /// The token bucket's size.
    pub fn burst(&self) -> u32 {
        if self.client_burst == 0 {
            self.client_rate
        } else {
            self.client_burst
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSection {
    pub algorithm: Algorithm,
    pub retries: u32,
    pub redispatch: bool,
    /// Request bodies up to this many bytes (with a Content-Length) are read whole before they go
    /// to a node, so that a request a node refused unexecuted (Kuzzle's 503 "shutting down") can
    /// be sent to another; 0 = always stream (such a request then gets the node's 503).
    pub resend_body: usize,
    /// An idempotent request (body-less GET, HEAD, OPTIONS) that waited `[timeouts] server` on a
    /// node gone silent is sent once to another node instead of getting the 504 (haproxy's
    /// `retry-on response-timeout`). Off: a slow request is then run twice.
    pub retry_on_timeout: bool,
}

impl Default for BalanceSection {
    fn default() -> Self {
        BalanceSection {
            algorithm: Algorithm::Leastconn,
            retries: 3,
            redispatch: true,
            resend_body: 64 * 1024,
            retry_on_timeout: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Checked on static nodes and nodes of the cluster plugin.
    pub path: String,
    /// Checked on nodes found from Kuzzle 2 ID cards (see README: chosen on measured costs).
    pub kuzzle2_path: String,
    pub interval: Dur,
    /// Interval while a node is changing state (haproxy's fastinter); defaults to `interval`.
    pub fastinter: Option<Dur>,
    /// Interval while a node is DOWN (haproxy's downinter); defaults to `interval`.
    pub downinter: Option<Dur>,
    pub timeout: Dur,
    pub rise: u32,
    pub fall: u32,
    /// Count connect failures and timeouts of real traffic against a node.
    pub passive: bool,
    pub on_marked_down: OnMarkedDown,
    /// A node that joins or comes back UP gets a share of new traffic that grows from almost
    /// nothing to a full node's over this long (haproxy's `slowstart`): a cold Kuzzle is slower
    /// in its first seconds. 0 = off.
    pub slowstart: Dur,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            path: "/_plugin/cluster/health".into(),
            kuzzle2_path: KUZZLE2_HEALTH_PATH.into(),
            interval: Dur(Duration::from_secs(10)),
            fastinter: None,
            downinter: None,
            timeout: Dur(Duration::from_secs(2)),
            rise: 2,
            fall: 3,
            passive: true,
            on_marked_down: OnMarkedDown::ShutdownTunnels,
            slowstart: Dur(DEFAULT_SLOWSTART),
        }
    }
}

/// `[health] slowstart` by default (see README: health checks, for the measurement behind it).
pub const DEFAULT_SLOWSTART: Duration = Duration::from_secs(30);

/// Format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line; the field names are a contract (README: access log).
    #[default]
    Json,
    /// One line in the spirit of haproxy's `option httplog`.
    Text,
}

/// `[access_log]`: one line per HTTP request and per WebSocket session (nginx's `access_log`,
/// haproxy's `option httplog`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `"stdout"`, or a file (appended to; reopened on SIGUSR1, as logrotate's `postrotate` asks).
    pub path: String,
    /// JSON for log shippers, text for people.
    #[serde(default)]
    pub format: LogFormat,
    /// Query parameters whose values are written as `***` (Kuzzle takes its token as `jwt=` or
    /// `access_token=`: a log is no place for it).
    #[serde(default = "default_masked")]
    pub mask: Vec<String>,
}

fn default_masked() -> Vec<String> {
    vec!["jwt".into(), "access_token".into()]
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsSection {
    pub listen: SocketAddr,
    pub uri: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub refresh: Dur,
}

impl Default for StatsSection {
    fn default() -> Self {
        StatsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7575)),
            uri: "/hastats".into(),
            user: Some("kuzzle".into()),
            password: Some("kuzzle".into()),
            refresh: Dur(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default = "default_tls_listen")]
    pub listen: SocketAddr,
    /// The default pair (PEM chain, PEM key); optional when `[[tls.certificate]]` entries exist
    /// (then the first of them is the default).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// More pairs, chosen by SNI (`names`, or the certificate's DNS names).
    #[serde(default)]
    pub certificate: Vec<CertEntry>,
    /// A client that has not finished its handshake by then is cut (it holds a connection slot).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`).
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Reload a pair when its files change on disk (renewals by certbot, cert-manager...).
    #[serde(default = "default_true")]
    pub watch: bool,
}

/// One `[[tls.certificate]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names served this pair (`*.example.com` matches one label); empty: the certificate's
    /// DNS names (subjectAltName).
    #[serde(default)]
    pub names: Vec<String>,
}

/// A certificate pair as the configuration names it, with the key it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertPair {
    /// `tls` for `[tls] cert`/`key`, `tls.certificate[N]` for an entry.
    pub place: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

impl TlsSection {
    /// Every pair, the default first.
    pub fn pairs(&self) -> Vec<CertPair> {
        let mut v = Vec::with_capacity(self.certificate.len() + 1);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            v.push(CertPair { place: "tls".into(), cert: cert.clone(), key: key.clone(), names: Vec::new() });
        }
        for (i, c) in self.certificate.iter().enumerate() {
            v.push(CertPair {
                place: format!("tls.certificate[{i}]"),
                cert: c.cert.clone(),
                key: c.key.clone(),
                names: c.names.clone(),
            });
        }
        v
    }
}

fn default_tls_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}

fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_true() -> bool {
    true
}

/// An SNI name in the configuration: a DNS name, or `*.` and a DNS name.
pub fn valid_sni_name(n: &str) -> bool {
    let host = n.strip_prefix("*.").unwrap_or(n);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub redis: Option<String>,
    pub redis_cluster: Option<Vec<String>>,
    pub node_port: u16,
    pub heartbeat_timeout: Dur,
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Membership sources, each can be turned off.
    pub pubsub: bool,
    pub discovery: bool,
    pub kuzzle2: bool,
    /// How often the plugin discovery set and the Kuzzle 2 ID cards are re-read.
    pub poll_interval: Dur,
    /// Most nodes learned from Redis at once; joins beyond are dropped (and counted).
    pub max_nodes: usize,
    /// New members admitted per second (token bucket); refreshes of known members are free.
    pub join_rate: u32,
    /// Joins admitted at once before `join_rate` applies (the bucket's size).
    pub join_burst: u32,
    /// Speak HTTPS (and WSS) to the nodes learned from Redis.
    pub node_tls: bool,
    /// CA bundle for their certificates (default: the system's).
    pub node_ca: Option<PathBuf>,
    /// Name their certificates must carry (default: each node's IP address).
    pub node_server_name: Option<String>,
    /// How long a starting gateway (or an upgrade that could not use the old process's state)
    /// waits for the first membership read and the first check of each node it found before it
    /// takes clients anyway (a cluster with every node down still gets the gateway's 503).
    pub ready_timeout: Dur,
    /// Built from the three keys above when the file is read.
    #[serde(skip)]
    pub tls: Option<crate::control::tls::upstream::NodeTls>,
}

/// Longest `[cluster] ready_timeout`: the old process of an upgrade waits this long (and a step
/// more) for the new one to be able to route.
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis: None,
            redis_cluster: None,
            node_port: 7512,
            heartbeat_timeout: Dur(Duration::from_secs(10)),
            allowed_networks: ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            pubsub: true,
            discovery: true,
            kuzzle2: true,
            poll_interval: Dur(Duration::from_secs(1)),
            max_nodes: 64,
            join_rate: 20,
            join_burst: 64,
            node_tls: false,
            node_ca: None,
            node_server_name: None,
            ready_timeout: Dur(Duration::from_secs(5)),
            tls: None,
        }
    }
}

/// `[fleet]`: several gateways act as one through Redis: operator states shared, one fleet view
/// on `/hastats`, WebSockets spread again after a scale-out. Nothing is written to Redis without it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// One Redis for the fleet's keys; default: `[cluster] redis` (filled in when the file is read).
    pub redis: Option<String>,
    /// A Redis Cluster's seed URLs instead; default: `[cluster] redis_cluster`.
    pub redis_cluster: Option<Vec<String>>,
    /// This gateway's name in the fleet, unique in it; default: host name and client listen port
    /// (`host:7512`), filled in when the file is read.
    pub name: Option<String>,
    /// Prefix and Redis Cluster hash tag of the fleet's keys and channels: gateways with the same
    /// namespace on the same Redis form one fleet (two fleets may share a Redis).
    pub namespace: String,
    /// How often this gateway publishes its heartbeat (counters, config fingerprint) and reads the
    /// others'.
    pub heartbeat: Dur,
    /// A gateway silent this long leaves the fleet view (and its heartbeat key expires).
    pub ttl: Dur,
    /// How long operator states stay in Redis once no gateway is left to refresh them.
    pub state_ttl: Dur,
    /// Close a bounded share of this gateway's WebSockets on over-loaded nodes (close code 1012,
    /// clients reconnect) when the fleet-wide counts per node are uneven, e.g. after a node joined.
    pub rebalance_websockets: bool,
    /// Pace of rebalancing: most WebSockets this gateway closes per second (spread with jitter).
    pub rebalance_rate: u32,
    /// A node within this many percent of the fleet's mean count of WebSockets per node is
    /// balanced; rebalancing starts when one is not and stops when all are.
    pub rebalance_tolerance: u32,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            redis: None,
            redis_cluster: None,
            name: None,
            namespace: "kuzzle-gateway".into(),
            heartbeat: Dur(Duration::from_secs(1)),
            ttl: Dur(Duration::from_secs(5)),
            state_ttl: Dur(Duration::from_secs(7 * 24 * 3600)),
            rebalance_websockets: false,
            rebalance_rate: 10,
            rebalance_tolerance: 10,
        }
    }
}

impl FleetSection {
    /// The fleet's name of this gateway (always set on a parsed configuration).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// A fleet name or namespace: letters, digits and `_ - . ~ :`, 1 to 128 bytes (it is part of
/// Redis key names and shown on pages).
pub fn valid_fleet_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~' | b':'))
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    /// Speak HTTPS (and WSS) to this node.
    #[serde(default)]
    pub tls: bool,
    /// CA bundle trusted for the node's certificate (default: the system's).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name the node's certificate must carry (default: the address' host name, else its IP).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Raw file shape; `Config` is the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: GatewaySection,
    #[serde(default)]
    timeouts: TimeoutsSection,
    #[serde(default)]
    balance: BalanceSection,
    #[serde(default)]
    health: HealthSection,
    #[serde(default)]
    stats: StatsSection,
    #[serde(default)]
    limits: LimitsSection,
    tls: Option<TlsSection>,
    cluster: Option<ClusterSection>,
    access_log: Option<AccessLogSection>,
    fleet: Option<FleetSection>,
    #[serde(default)]
    node: Vec<NodeSection>,
}

/// A statically configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    pub name: String,
    pub target: NodeTarget,
    /// TLS to the node (`tls = true`), ready to connect with.
    pub tls: Option<crate::control::tls::upstream::NodeTls>,
}

/// Where a static node is: an address, or a host name resolved at load and every
/// `[gateway] resolve_interval` (nodes in Docker, Compose and Kubernetes have names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeTarget {
    Addr(SocketAddr),
    Host(HostPort),
}

/// A host name and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeTarget::Addr(a) => a.fmt(f),
            NodeTarget::Host(h) => h.fmt(f),
        }
    }
}

/// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (a DNS name: letters, digits, '-', '.', '_').
pub fn parse_node_target(s: &str) -> Option<NodeTarget> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(NodeTarget::Addr(a));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // An all-digit name would be a mistyped IP address: refuse it rather than ask the resolver.
    let ok =
        host.len() <= 253 && host.split('.').all(label_ok) && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    ok.then(|| NodeTarget::Host(HostPort { host: host.to_ascii_lowercase(), port }))
}

impl Config {
    /// The host names of static nodes (what the resolver looks up).
    pub fn host_names(&self) -> Vec<HostPort> {
        let mut v: Vec<HostPort> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.target {
                NodeTarget::Host(h) => Some(h.clone()),
                NodeTarget::Addr(_) => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// File it came from (for messages).
    pub source: String,
    pub gateway: GatewaySection,
    pub timeouts: TimeoutsSection,
    pub balance: BalanceSection,
    pub health: HealthSection,
    pub stats: StatsSection,
    pub limits: LimitsSection,
    pub tls: Option<TlsSection>,
    pub cluster: Option<ClusterSection>,
    /// None: no access log.
    pub access_log: Option<AccessLogSection>,
    /// `[fleet]`: shared operator states, fleet view and rebalancing through Redis.
    pub fleet: Option<FleetSection>,
    pub nodes: Vec<StaticNode>,
    /// Fingerprint of the file's settings, per-gateway keys left out (listen addresses, threads,
    /// upgrade socket, fleet name): gateways of one fleet that run the same configuration show
    /// the same one (`crate::control::fleet::fingerprint`).
    pub fingerprint: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: "<default>".into(),
            gateway: GatewaySection::default(),
            timeouts: TimeoutsSection::default(),
            balance: BalanceSection::default(),
            health: HealthSection::default(),
            stats: StatsSection::default(),
            limits: LimitsSection::default(),
            tls: None,
            cluster: None,
            access_log: None,
            fleet: None,
            nodes: Vec::new(),
            fingerprint: crate::control::fleet::fingerprint::of_text(""),
        }
    }
}

/// TLS settings of a node: None without `tls = true` (then `ca` and `server_name` are errors);
/// the error names the key (`tls`, `ca`, `server_name`) and says what is wrong.
fn node_tls(
    tls: bool,
    ca: Option<&Path>,
    server_name: Option<String>,
    target: &NodeTarget,
) -> Result<Option<crate::control::tls::upstream::NodeTls>, (&'static str, String)> {
    if !tls {
        return match (ca, &server_name) {
            (Some(_), _) => Err(("ca", "ca needs tls = true".into())),
            (None, Some(_)) => Err(("server_name", "server_name needs tls = true".into())),
            (None, None) => Ok(None),
        };
    }
    // A node known by name is checked against that name, as a browser would.
    let name = server_name.clone().or(match target {
        NodeTarget::Host(h) => Some(h.host.clone()),
        NodeTarget::Addr(_) => None,
    });
    crate::control::tls::upstream::NodeTls::new(ca, name).map(Some).map_err(|m| {
        (
            if ca.is_some() {
                "ca"
            } else if server_name.is_some() {
                "server_name"
            } else {
                "tls"
            },
            m,
        )
    })
}

/// A node name must be a plain URL path segment: it is matched verbatim as `/<name>/`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'))
}

/// Most data-plane workers `[gateway] threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// `[health] kuzzle2_path` by default: Kuzzle 2's liveness route, answered outside its request
/// funnel: no Elasticsearch call (`/_healthCheck` costs three), never queued behind a loaded
/// node's requests, and no 503 when a node merely queues (`/_ready` says 503 as soon as more than
/// `limits.concurrentRequests` run, which would take busy nodes out one after the other). A
/// node shutting down is known from its refusals instead (README: health checks).
pub const KUZZLE2_HEALTH_PATH: &str = "/_healthcheck";

/// The file's text and its name for errors.
fn read_text(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(e) => Err(ConfigError { file, line: 0, key: String::new(), message: format!("cannot read: {e}") }),
    }
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, file) = read_text(path)?;
        Config::parse(&text, &file)
    }

    /// Read and validate a file for a running gateway: as [`Config::load`], but an empty file is
    /// refused. A tool that writes the file in place truncates it first, and a watcher can read it
    /// in between; all defaults and no node is never what a running cluster was meant to become.
    pub fn load_for_reload(path: &Path) -> Result<Config, ConfigError> {
        let (text, file) = read_text(path)?;
        if text.trim().is_empty() {
            return Err(ConfigError {
                file,
                line: 0,
                key: String::new(),
                message: "the file is empty (still being written?): the running configuration stays".into(),
            });
        }
        Config::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => (line_of(text, span.start), key_at(text, span.start)),
                None => (0, String::new()),
            };
            ConfigError { file: file.into(), line, key, message: e.message().trim().to_string() }
        })?;
        let err =
            |line: usize, key: &str, message: String| ConfigError { file: file.into(), line, key: key.into(), message };

        let mut nodes = Vec::with_capacity(raw.node.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, n) in raw.node.iter().enumerate() {
            let name = n.name.get_ref();
            let nline = line_of(text, n.name.span().start);
            if !valid_node_name(name) {
                return Err(err(
                    nline,
                    &format!("node[{i}].name"),
                    format!(
                        "invalid node name {name:?}: it is also the URL prefix /{name}/, so use only letters, digits, '_', '-', '.', '~' (not \".\" or \"..\")"
                    ),
                ));
            }
            if let Some(first) = seen.insert(name.clone(), nline) {
                return Err(err(
                    nline,
                    &format!("node[{i}].name"),
                    format!("duplicate node name {name:?} (first defined at line {first})"),
                ));
            }
            let aline = line_of(text, n.address.span().start);
            let target = parse_node_target(n.address.get_ref()).ok_or_else(|| {
                err(
                    aline,
                    &format!("node[{i}].address"),
                    format!(
                        "invalid address {:?}: expected HOST:PORT or IP:PORT such as \"kuzzle-1:7512\" or \"127.0.0.1:7512\"",
                        n.address.get_ref()
                    ),
                )
            })?;
            let tls = node_tls(n.tls, n.ca.as_deref(), n.server_name.clone(), &target).map_err(|(k, m)| {
                let key = format!("node[{i}].{k}");
                err(locate(text, &key), &key, m)
            })?;
            nodes.push(StaticNode { name: name.clone(), target, tls });
        }

        let place = |key: &str| find_key(text, key);
        let h = &raw.health;
        if !h.path.starts_with('/') {
            let (l, k) = place("health.path");
            return Err(err(l, &k, format!("health check path {:?} must start with '/'", h.path)));
        }
        if !h.kuzzle2_path.starts_with('/') {
            let (l, k) = place("health.kuzzle2_path");
            return Err(err(l, &k, format!("health check path {:?} must start with '/'", h.kuzzle2_path)));
        }
        if let Err(m) = check_node_header(&raw.gateway.node_header) {
            let (l, k) = place("gateway.node_header");
            return Err(err(l, &k, m));
        }
        if h.rise == 0 || h.fall == 0 {
            let (l, k) = place(if h.rise == 0 { "health.rise" } else { "health.fall" });
            return Err(err(l, &k, "rise and fall must be at least 1".into()));
        }
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
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                let (l, k) = place(key);
                return Err(err(l, &k, "duration must be greater than zero".into()));
            }
        }
        // hyper needs at least 8 KiB of read buffer; a node's head needs room for its own headers.
        let l = &raw.limits;
        for (key, v, min) in [
            ("limits.request_head", l.request_head, 4096),
            ("limits.uri", l.uri, 64),
            ("limits.headers", l.headers, 8),
            ("limits.response_head", l.response_head, 8192),
        ] {
            if v < min {
                let (line, k) = place(key);
                return Err(err(line, &k, format!("{v} is too small: at least {min}")));
            }
        }
        // One thread per worker: a mistyped count must not try to start a hundred thousand.
        if raw.gateway.threads > MAX_THREADS {
            let (line, k) = place("gateway.threads");
            let v = raw.gateway.threads;
            return Err(err(
                line,
                &k,
                format!("{v} worker threads is too many: at most {MAX_THREADS} (0 = one per core)"),
            ));
        }
        check_edge(&raw).map_err(|(key, m)| {
            let (line, k) = place(key);
            err(line, &k, m)
        })?;
        if !raw.stats.uri.starts_with('/') {
            let (l, k) = place("stats.uri");
            return Err(err(l, &k, format!("stats uri {:?} must start with '/'", raw.stats.uri)));
        }
        // Judged on what the file says: a default must never fill in half of the credentials
        // (`user = "ops"` alone would otherwise get the password "kuzzle").
        let stats_keys = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("stats").and_then(|s| s.as_table().cloned()))
            .map(|t| (t.contains_key("user"), t.contains_key("password")));
        if let Some((user, password)) = stats_keys.filter(|(u, p)| u != p) {
            let (l, k) = place(if user { "stats.user" } else { "stats.password" });
            let missing = if password { "user" } else { "password" };
            return Err(err(l, &k, format!("set both user and password, or neither (no auth): {missing} is missing")));
        }
        // Port 0 asks the OS for a free port: two such listeners never clash.
        let clash = |a: SocketAddr, b: SocketAddr| a == b && a.port() != 0;
        if clash(raw.stats.listen, raw.gateway.listen) {
            let (l, k) = place("stats.listen");
            return Err(err(l, &k, "stats listener cannot share the client listener's address".into()));
        }
        if let Some(t) = &raw.tls {
            if clash(t.listen, raw.gateway.listen) || clash(t.listen, raw.stats.listen) {
                let (l, k) = place("tls.listen");
                return Err(err(l, &k, "TLS listener cannot share the client or stats listener's address".into()));
            }
            match (&t.cert, &t.key) {
                (Some(_), None) | (None, Some(_)) => {
                    let (l, k) = place(if t.cert.is_some() { "tls.cert" } else { "tls.key" });
                    let missing = if t.cert.is_some() { "key" } else { "cert" };
                    return Err(err(l, &k, format!("set both cert and key: {missing} is missing")));
                }
                (None, None) if t.certificate.is_empty() => {
                    let (l, k) = place("tls");
                    return Err(err(l, &k, "[tls] needs cert and key, or [[tls.certificate]] entries".into()));
                }
                _ => {}
            }
            if t.handshake_timeout.0.is_zero() {
                let (l, k) = place("tls.handshake_timeout");
                return Err(err(l, &k, "duration must be greater than zero".into()));
            }
            for (i, c) in t.certificate.iter().enumerate() {
                if let Some(bad) = c.names.iter().find(|n| !valid_sni_name(n)) {
                    let l = locate(text, &format!("tls.certificate[{i}].names"));
                    return Err(err(
                        l,
                        &format!("tls.certificate[{i}].names"),
                        format!("invalid name {bad:?}: expected a DNS name such as \"api.example.com\" or \"*.example.com\""),
                    ));
                }
            }
        }
        let mut cluster_tls = None;
        if let Some(c) = &raw.cluster {
            match (&c.redis, &c.redis_cluster) {
                (Some(_), Some(_)) => {
                    let (l, k) = place("cluster.redis_cluster");
                    return Err(err(l, &k, "set either redis or redis_cluster, not both".into()));
                }
                (None, None) => {
                    let (l, k) = place("cluster");
                    return Err(err(
                        l,
                        &k,
                        "[cluster] needs redis = \"redis://host:port/0\" or redis_cluster = [...]".into(),
                    ));
                }
                (Some(u), None) => check_redis_url(u, false).map_err(|m| {
                    let (l, k) = place("cluster.redis");
                    err(l, &k, m)
                })?,
                (None, Some(list)) => {
                    if list.is_empty() {
                        let (l, k) = place("cluster.redis_cluster");
                        return Err(err(l, &k, "redis_cluster needs at least one seed URL".into()));
                    }
                    for u in list {
                        check_redis_url(u, true).map_err(|m| {
                            let (l, k) = place("cluster.redis_cluster");
                            err(l, &k, m)
                        })?;
                    }
                }
            }
            if c.node_tls || c.node_ca.is_some() || c.node_server_name.is_some() {
                // Nodes from Redis are known by IP: no host name to default to.
                let any = NodeTarget::Addr(SocketAddr::from(([0, 0, 0, 0], 0)));
                cluster_tls = node_tls(c.node_tls, c.node_ca.as_deref(), c.node_server_name.clone(), &any).map_err(
                    |(k, m)| {
                        let (l, key) = place(&format!("cluster.node_{k}"));
                        err(l, &key, m)
                    },
                )?;
            }
            if c.heartbeat_timeout.0.is_zero() || c.poll_interval.0.is_zero() {
                let (l, k) = place("cluster.heartbeat_timeout");
                return Err(err(l, &k, "durations must be greater than zero".into()));
            }
            if c.ready_timeout.0.is_zero() || c.ready_timeout.0 > MAX_READY_TIMEOUT {
                let (l, k) = place("cluster.ready_timeout");
                return Err(err(l, &k, format!("must be more than zero and at most {}s", MAX_READY_TIMEOUT.as_secs())));
            }
            for (key, v) in [
                ("cluster.max_nodes", c.max_nodes as u64),
                ("cluster.join_rate", u64::from(c.join_rate)),
                ("cluster.join_burst", u64::from(c.join_burst)),
            ] {
                if v == 0 {
                    let (l, k) = place(key);
                    return Err(err(l, &k, "must be at least 1".into()));
                }
            }
        }

        let fleet = match raw.fleet {
            None => None,
            Some(f) => Some(check_fleet(f, raw.cluster.as_ref(), raw.gateway.listen.port()).map_err(|(key, m)| {
                let (l, k) = place(&key);
                err(l, &k, m)
            })?),
        };

        // A [stats] table that names neither user nor password turns auth off ("omit both to
        // disable auth"); with no [stats] table at all the seed's kuzzle:kuzzle applies.
        let mut stats = raw.stats;
        let stats_table =
            text.parse::<toml::Table>().ok().and_then(|t| t.get("stats").and_then(|s| s.as_table().cloned()));
        if stats_table.is_some_and(|t| !t.contains_key("user") && !t.contains_key("password")) {
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
        })
    }
}

/// Most requests a second `[limits] client_rate` may allow (the buckets count microseconds).
pub const MAX_CLIENT_RATE: u32 = 1_000_000;

/// Most clients `[limits] client_table` may track (16 bytes each: 256 MiB).
pub const MAX_CLIENT_TABLE: usize = 1 << 24;

/// The edge keys (`[gateway] proxy_protocol*`, the per-client `[limits]`, `[access_log]`): the
/// key and what is wrong with it.
fn check_edge(raw: &RawConfig) -> Result<(), (&'static str, String)> {
    let g = &raw.gateway;
    if g.proxy_protocol && g.proxy_protocol_from.is_empty() {
        return Err((
            "gateway.proxy_protocol",
            "proxy_protocol = true needs the L4 balancers' networks in proxy_protocol_from (e.g. [\"10.0.0.0/8\"]): \
             any other client could claim any address"
                .into(),
        ));
    }
    if !g.proxy_protocol && !g.proxy_protocol_from.is_empty() {
        return Err(("gateway.proxy_protocol_from", "proxy_protocol_from needs proxy_protocol = true".into()));
    }
    let l = &raw.limits;
    if l.client_connections > MAX_CLIENT_CONNECTIONS {
        return Err((
            "limits.client_connections",
            format!("{} is too many: at most {MAX_CLIENT_CONNECTIONS} (0 = off)", l.client_connections),
        ));
    }
    if l.client_rate > MAX_CLIENT_RATE {
        return Err((
            "limits.client_rate",
            format!("{} a second is more than can be told apart: at most {MAX_CLIENT_RATE} (0 = off)", l.client_rate),
        ));
    }
    if l.client_burst > 0 && l.client_rate == 0 {
        return Err(("limits.client_burst", "client_burst needs client_rate (requests per second, 0 = off)".into()));
    }
    if !(1024..=MAX_CLIENT_TABLE).contains(&l.client_table) {
        return Err((
            "limits.client_table",
            format!("{} clients: between 1024 and {MAX_CLIENT_TABLE}", l.client_table),
        ));
    }
    if let Some(a) = &raw.access_log {
        if a.path.trim().is_empty() {
            return Err(("access_log.path", "path is \"stdout\" or a file; remove [access_log] to turn it off".into()));
        }
        if let Some(bad) = a.mask.iter().find(|m| m.is_empty() || m.bytes().any(|b| b"&=# ".contains(&b))) {
            return Err(("access_log.mask", format!("{bad:?} is no query parameter name")));
        }
    }
    Ok(())
}

/// Validate `[fleet]` and fill in its defaults (Redis from `[cluster]`, the name from the host
/// name and the client port). Errors name the key (`fleet.name`...).
fn check_fleet(
    mut f: FleetSection,
    cluster: Option<&ClusterSection>,
    port: u16,
) -> Result<FleetSection, (String, String)> {
    let e = |k: &str, m: String| (format!("fleet.{k}"), m);
    match (&f.redis, &f.redis_cluster) {
        (Some(_), Some(_)) => {
            return Err(e("redis_cluster", "set redis or redis_cluster, not both".into()));
        }
        (Some(u), None) => check_redis_url(u, false).map_err(|m| e("redis", m))?,
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(e("redis_cluster", "redis_cluster needs at least one seed URL".into()));
            }
            for u in list {
                check_redis_url(u, true).map_err(|m| e("redis_cluster", m))?;
            }
        }
        (None, None) => match cluster {
            Some(c) if c.redis.is_some() || c.redis_cluster.is_some() => {
                f.redis = c.redis.clone();
                f.redis_cluster = if c.redis.is_some() { None } else { c.redis_cluster.clone() };
            }
            _ => {
                return Err((
                    "fleet".into(),
                    "[fleet] needs redis or redis_cluster (or a [cluster] that has one)".into(),
                ))
            }
        },
    }
    let name = f.name.clone().unwrap_or_else(|| format!("{}:{port}", host_name()));
    if !valid_fleet_name(&name) {
        return Err(e(
            "name",
            format!("invalid fleet name {name:?}: letters, digits, '_', '-', '.', '~', ':' only, at most 128"),
        ));
    }
    f.name = Some(name);
    if !valid_fleet_name(&f.namespace) || f.namespace.len() > 64 {
        return Err(e(
            "namespace",
            format!("invalid namespace {:?}: letters, digits, '_', '-', '.', '~', ':' only, at most 64", f.namespace),
        ));
    }
    if f.heartbeat.0 < Duration::from_millis(50) {
        return Err(e("heartbeat", "at least 50ms".into()));
    }
    if f.ttl.0 < f.heartbeat.0 * 2 {
        return Err(e(
            "ttl",
            format!("at least twice heartbeat ({:?}): one late heartbeat must not drop a gateway", f.heartbeat.0),
        ));
    }
    if f.state_ttl.0 < f.ttl.0 {
        return Err(e("state_ttl", "at least ttl".into()));
    }
    if !(1..=10_000).contains(&f.rebalance_rate) {
        return Err(e("rebalance_rate", format!("{} closes a second: between 1 and 10000", f.rebalance_rate)));
    }
    if !(1..=100).contains(&f.rebalance_tolerance) {
        return Err(e("rebalance_tolerance", format!("{} %: between 1 and 100", f.rebalance_tolerance)));
    }
    Ok(f)
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

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(0, |s| s.matches('\n').count()) + 1
}

/// Best-effort dotted key for an error at `offset`: the enclosing table header plus the key on that line.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let mut table = String::new();
    for l in text[..line_start].lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    if line.starts_with('[') {
        return line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
    }
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Line of a key in the text, also inside an array of tables (`tls.certificate[1].cert`: the key
/// in the second `[[tls.certificate]]`); the table header if the key is absent, 0 if neither is.
pub fn locate(text: &str, dotted: &str) -> usize {
    let Some((table, rest)) = dotted.split_once('[') else { return find_key(text, dotted).0 };
    let (idx, key) = rest.split_once(']').unwrap_or((rest, ""));
    let idx: usize = idx.parse().unwrap_or(0);
    let key = key.trim_start_matches('.');
    let (mut n, mut inside, mut header) = (0, false, 0);
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            inside = false;
            if t.starts_with("[[") && t.trim_matches(|c| c == '[' || c == ']').trim() == table {
                if n == idx {
                    inside = true;
                    header = i + 1;
                }
                n += 1;
            }
            continue;
        }
        if inside && !key.is_empty() && t.split('=').next().unwrap_or("").trim() == key {
            return i + 1;
        }
    }
    header
}

/// Line of `table.key` in the text (for semantic errors); the table header if the key is absent.
fn find_key(text: &str, dotted: &str) -> (usize, String) {
    let (table, key) = dotted.split_once('.').unwrap_or((dotted, ""));
    let mut in_table = false;
    let mut header_line = 0;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(|c| c == '[' || c == ']').trim() == table;
            if in_table {
                header_line = i + 1;
            }
            continue;
        }
        if in_table && !key.is_empty() {
            let k = t.split('=').next().unwrap_or("").trim();
            if k == key {
                return (i + 1, dotted.to_string());
            }
        }
    }
    (header_line, dotted.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_interface() {
        let c = Config::parse("", "t.toml").expect("empty config is valid");
        assert_eq!(c.gateway.listen.port(), 7512);
        assert_eq!(c.balance.algorithm, Algorithm::Leastconn);
        assert_eq!(c.health.path, "/_plugin/cluster/health");
        assert_eq!(c.stats.uri, "/hastats");
        assert_eq!(c.timeouts.tunnel.0, Duration::from_secs(7200));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::parse("[gateway]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n", "g.toml").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.key, "gateway.listn", "{e}");
        assert!(e.to_string().starts_with("g.toml:3:"), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_duration_and_address() {
        let e = Config::parse("[timeouts]\nconnect = \"5 parsecs\"\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "timeouts.connect"), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = Config::parse("[[node]]\nname = \"a\"\naddress = \"nowhere\"\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "node[0].address"), "{e}");
        assert!(e.message.contains("HOST:PORT or IP:PORT"), "{e}");
    }

    #[test]
    fn stats_user_without_password_is_an_error() {
        let e = Config::parse("[stats]\nuser = \"ops\"\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "stats.user"), "{e}");
        assert!(e.message.contains("password is missing"), "{e}");
        let e = Config::parse("[stats]\npassword = \"pw\"\n", "g.toml").unwrap_err();
        assert_eq!(e.key, "stats.password", "{e}");
        let c = Config::parse("[stats]\nuser = \"ops\"\npassword = \"pw\"\n", "g.toml").expect("both");
        assert_eq!((c.stats.user.as_deref(), c.stats.password.as_deref()), (Some("ops"), Some("pw")));
    }

    #[test]
    fn node_addresses_take_host_names() {
        let host = |h: &str, port| NodeTarget::Host(HostPort { host: h.into(), port });
        assert_eq!(parse_node_target("kuzzle-1:7512"), Some(host("kuzzle-1", 7512)));
        assert_eq!(parse_node_target("Kuzzle.Svc.Cluster.Local.:7512"), Some(host("kuzzle.svc.cluster.local", 7512)));
        assert_eq!(parse_node_target("127.0.0.1:7512"), Some(NodeTarget::Addr("127.0.0.1:7512".parse().expect("ip"))));
        assert_eq!(parse_node_target("[::1]:7512"), Some(NodeTarget::Addr("[::1]:7512".parse().expect("ip6"))));
        for bad in [
            "kuzzle-1",
            "kuzzle-1:0",
            "kuzzle-1:70000",
            ":7512",
            "bad host:1",
            "-x:1",
            "a..b:1",
            "300.1.2.3:1",
            "h/x:1",
            "h:1:2",
        ] {
            assert_eq!(parse_node_target(bad), None, "{bad:?} accepted");
        }
        let c = Config::parse("[[node]]\nname = \"a\"\naddress = \"kuzzle-1:7512\"\n[[node]]\nname = \"b\"\naddress = \"kuzzle-1:7512\"\n", "g.toml")
            .expect("host names are valid");
        assert_eq!(c.host_names(), vec![HostPort { host: "kuzzle-1".into(), port: 7512 }], "looked up once");
    }

    #[test]
    fn duplicate_and_invalid_names() {
        let t =
            "[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[node]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n";
        let e = Config::parse(t, "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (5, "node[1].name"), "{e}");
        assert!(e.message.contains("first defined at line 2"), "{e}");
        for bad in ["a/b", "..", "", "a b", "a%2fb"] {
            let t = format!("[[node]]\nname = {bad:?}\naddress = \"127.0.0.1:1\"\n");
            assert!(Config::parse(&t, "g.toml").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listeners_clash_unless_ephemeral() {
        let t = "[gateway]\nlisten = \"127.0.0.1:0\"\n[stats]\nlisten = \"127.0.0.1:0\"\n";
        assert!(Config::parse(t, "g.toml").is_ok(), "port 0 twice is two free ports");
        let t = "[gateway]\nlisten = \"127.0.0.1:9\"\n[stats]\nlisten = \"127.0.0.1:9\"\n";
        let e = Config::parse(t, "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "stats.listen"), "{e}");
        let t = "[gateway]\nlisten = \"127.0.0.1:9\"\n[tls]\nlisten = \"127.0.0.1:9\"\ncert = \"c\"\nkey = \"k\"\n";
        let e = Config::parse(t, "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "tls.listen"), "{e}");
    }

    #[test]
    fn worker_threads_are_bounded() {
        let e = Config::parse("[gateway]\nthreads = 100000\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "gateway.threads"), "{e}");
        assert!(e.to_string().contains("at most 1024"), "{e}");
        assert_eq!(Config::parse("[gateway]\nthreads = 2\n", "g.toml").expect("valid").gateway.threads, 2);
    }

    #[test]
    fn tls_pairs_and_their_errors() {
        let t = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[tls.certificate]]\ncert = \"a.pem\"\nkey = \"ak.pem\"\nnames = [\"*.a.test\"]\n";
        let c = Config::parse(t, "g.toml").expect("valid");
        let tls = c.tls.expect("tls");
        let places: Vec<String> = tls.pairs().into_iter().map(|p| p.place).collect();
        assert_eq!(places, vec!["tls", "tls.certificate[0]"]);
        assert_eq!(tls.handshake_timeout.0, Duration::from_secs(10));
        assert!(tls.http2 && tls.watch);
        let e = Config::parse("[tls]\ncert = \"c.pem\"\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "tls.cert"), "{e}");
        assert!(e.message.contains("key is missing"), "{e}");
        let e = Config::parse("[tls]\nlisten = \"127.0.0.1:0\"\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (1, "tls"), "{e}");
        let t = "[tls]\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\nnames = [\"a b\"]\n";
        let e = Config::parse(t, "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (8, "tls.certificate[1].names"), "{e}");
        assert_eq!(locate(t, "tls.certificate[1].key"), 7);
        assert_eq!(locate(t, "tls.certificate[0]"), 2);
        for ok in ["a.test", "*.a.test", "xn--bcher-kva.example"] {
            assert!(valid_sni_name(ok), "{ok}");
        }
        for bad in ["", "*", "a.*.test", "a..b", "*.", "a b"] {
            assert!(!valid_sni_name(bad), "{bad}");
        }
    }

    #[test]
    fn semantic_errors_point_at_key() {
        let e = Config::parse("[health]\ninterval = \"1s\"\nrise = 0\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "health.rise"), "{e}");
        let e = Config::parse("[cluster]\nnode_port = 1\n", "g.toml").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = Config::parse("[cluster]\nredis_cluster = [\"redis://a:1/3\"]\n", "g.toml").unwrap_err();
        assert!(e.message.contains("database 0"), "{e}");
        let redis = "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\n";
        let c = Config::parse(redis, "g.toml").expect("valid");
        assert_eq!(c.cluster.map(|c| c.ready_timeout.0), Some(Duration::from_secs(5)));
        for bad in ["0s", "61s"] {
            let e = Config::parse(&format!("{redis}ready_timeout = \"{bad}\"\n"), "g.toml").unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (3, "cluster.ready_timeout"), "{e}");
        }
    }

    #[test]
    fn edge_keys_and_their_errors() {
        let c = Config::parse("", "g.toml").expect("defaults");
        assert!(!c.gateway.proxy_protocol && c.access_log.is_none() && !c.limits.per_client());
        assert_eq!(
            (c.limits.client_table, c.health.slowstart.0, c.balance.retry_on_timeout),
            (65_536, DEFAULT_SLOWSTART, false)
        );
        let t = "[gateway]\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]\n[limits]\nclient_connections = 20\nclient_rate = 50\nexempt_networks = [\"192.0.2.0/24\"]\n[health]\nslowstart = \"30s\"\n[access_log]\npath = \"stdout\"\nformat = \"text\"\n";
        let c = Config::parse(t, "g.toml").expect("valid");
        assert_eq!(c.limits.burst(), 50, "client_burst defaults to client_rate");
        let a = c.access_log.expect("access log");
        assert_eq!((a.format, a.mask), (LogFormat::Text, vec!["jwt".to_string(), "access_token".to_string()]));
        for (t, line, key) in [
            ("[gateway]\nproxy_protocol = true\n", 2, "gateway.proxy_protocol"),
            ("[gateway]\nproxy_protocol_from = [\"10.0.0.0/8\"]\n", 2, "gateway.proxy_protocol_from"),
            ("[limits]\nclient_connections = 70000\n", 2, "limits.client_connections"),
            ("[limits]\nclient_burst = 5\n", 2, "limits.client_burst"),
            ("[limits]\nclient_table = 10\n", 2, "limits.client_table"),
            ("[limits]\nclient_rate = 2000000\n", 2, "limits.client_rate"),
            ("[access_log]\npath = \"\"\n", 2, "access_log.path"),
            ("[access_log]\npath = \"x\"\nmask = [\"a=b\"]\n", 3, "access_log.mask"),
            ("[access_log]\npath = \"x\"\nformat = \"xml\"\n", 3, "access_log.format"),
            ("[health]\nslowstart = \"soon\"\n", 2, "health.slowstart"),
        ] {
            let e = Config::parse(t, "g.toml").unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (line, key), "{t}: {e}");
        }
    }

    #[test]
    fn node_header_and_kuzzle2_path() {
        let c = Config::parse("", "g.toml").expect("defaults");
        assert_eq!(
            (c.gateway.node_header.as_str(), c.health.kuzzle2_path.as_str()),
            ("x-kuzzle-node", "/_healthcheck")
        );
        assert_eq!(c.balance.resend_body, 65536);
        for ok in ["", "X-Served-By", "x-kuzzle-node"] {
            Config::parse(&format!("[gateway]\nnode_header = {ok:?}\n"), "g.toml").expect(ok);
        }
        for bad in ["x served", "content-length", "Connection", "é"] {
            let e = Config::parse(&format!("[gateway]\nnode_header = {bad:?}\n"), "g.toml").unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (2, "gateway.node_header"), "{bad}: {e}");
        }
        let e = Config::parse("[health]\nkuzzle2_path = \"_ready\"\n", "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "health.kuzzle2_path"), "{e}");
    }
}
