//! Control plane: the configuration's sections as the file writes them: every key, its type, its
//! default and what it is for. Which keys apply live is in [`super::keys`]; what is checked beyond
//! types, in [`super::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as "500ms", "5s", "2h" (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"2h\""))
        })
    }
}

/// Balancing algorithm over the eligible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnMarkedDown {
    /// Close them with a 1001 "going away" frame so SDKs reconnect elsewhere.
    #[default]
    ShutdownTunnels,
    /// Leave them alone.
    Keep,
}

/// The official SDKs' heartbeat, a `{"p":1}` text message every 2 s on every WebSocket, that
/// Kuzzle answers `{"p":2}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SdkPings {
    /// The gateway answers it, but for one in every `sdk_ping_forward` that goes on to the node
    /// (so the node sees the client, and a node that stopped answering is noticed by the SDK).
    #[default]
    Answer,
    /// Every heartbeat goes to the node, as through nginx or haproxy.
    Forward,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// The client listener (HTTP and WebSocket), Kuzzle's port 7512 by default.
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
    /// Who answers the SDKs' `{"p":1}` heartbeats: 100,000 clients send 50,000 a second, which
    /// cost a node a JSON parse each and the gateway two more socket writes each when forwarded.
    pub sdk_pings: SdkPings,
    /// With `sdk_pings = "answer"`: a WebSocket's heartbeat goes on to its node once in this long
    /// (below Kuzzle's 60 s WebSocket idle timeout; the longest a hung node goes unnoticed by an
    /// SDK whose health checks do not catch it first).
    pub sdk_ping_forward: Dur,
    /// HTTP/1.1 client connections (plain and TLS) are served by the fast lane (`src/data/lane`) while their
    /// requests are body-less GET, HEAD or OPTIONS: off sends every request through hyper's
    /// path (the same answers, more CPU per request).
    pub fast_lane: bool,
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
            sdk_pings: SdkPings::Answer,
            sdk_ping_forward: Dur(Duration::from_secs(10)),
            fast_lane: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    /// Most time a TCP (and TLS) connect to a node may take before the next node is tried.
    pub connect: Dur,
    /// Most time a client may take to send a request head or body (and idle keep-alive time).
    pub client: Dur,
    /// Most time a node may stay silent while answering (504 after it).
    pub server: Dur,
    /// A WebSocket tunnel idle in both directions this long is closed.
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSection {
    /// How a node is picked among the eligible ones.
    pub algorithm: Algorithm,
    /// Further attempts after a failed connect (or a refusal) before the client gets the error.
    pub retries: u32,
    /// Retries go to another node (haproxy's `option redispatch`) rather than the same one.
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Checked on static nodes and nodes of the cluster plugin.
    pub path: String,
    /// Checked on nodes found from Kuzzle 2 ID cards (docs/kuzzle-real.md: chosen on measured costs).
    pub kuzzle2_path: String,
    /// Time between two checks of a node in a steady state.
    pub interval: Dur,
    /// Interval while a node is changing state (haproxy's fastinter); defaults to `interval`.
    pub fastinter: Option<Dur>,
    /// Interval while a node is DOWN (haproxy's downinter); defaults to `interval`.
    pub downinter: Option<Dur>,
    /// A check without an answer by then fails.
    pub timeout: Dur,
    /// Passing checks in a row that bring a DOWN node UP.
    pub rise: u32,
    /// Failing checks in a row that take an UP node DOWN.
    pub fall: u32,
    /// Count connect failures and timeouts of real traffic against a node.
    pub passive: bool,
    /// What happens to the WebSockets of a node marked DOWN.
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

/// `[health] kuzzle2_path` by default: Kuzzle 2's liveness route, answered outside its request
/// funnel: no Elasticsearch call (`/_healthCheck` costs three), never queued behind a loaded
/// node's requests, and no 503 when a node merely queues (`/_ready` says 503 as soon as more than
/// `limits.concurrentRequests` run, which would take busy nodes out one after the other). A
/// node shutting down is known from its refusals instead (docs/failover.md, "Nodes shutting down").
pub const KUZZLE2_HEALTH_PATH: &str = "/_healthcheck";

/// `[health] slowstart` by default (docs/edge.md, "Why 30 s", for the measurement behind it).
pub const DEFAULT_SLOWSTART: Duration = Duration::from_secs(30);

/// Format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line; the field names are a contract (docs/edge.md, "Access log").
    #[default]
    Json,
    /// One line in the spirit of haproxy's `option httplog`.
    Text,
}

/// `[access_log]`: one line per HTTP request and per WebSocket session (nginx's `access_log`,
/// haproxy's `option httplog`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsSection {
    /// The ops listener (`/hastats`, `/metrics`, node states, reload); keep it private.
    pub listen: SocketAddr,
    /// Path of the stats page (`;csv` and `;json` appended give the exports).
    pub uri: String,
    /// Basic-auth user of the ops listener; None with `password` None: no auth.
    pub user: Option<String>,
    /// Basic-auth password of the ops listener.
    pub password: Option<String>,
    /// How often the stats page reloads itself in a browser.
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The TLS client listener (HTTPS, WSS, HTTP/2 by ALPN).
    #[serde(default = "default_tls_listen")]
    pub listen: SocketAddr,
    /// The default pair (PEM chain, PEM key); optional when `[[tls.certificate]]` entries exist
    /// (then the first of them is the default).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The default pair's PEM private key.
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
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
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names the pair serves; empty: the certificate's DNS names.
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The Redis the Kuzzle nodes sync through (`redis://host:port/db`).
    pub redis: Option<String>,
    /// A Redis Cluster's seed URLs instead of `redis`.
    pub redis_cluster: Option<Vec<String>>,
    /// Port of the nodes' client listener (the plugin's messages give only an IP).
    pub node_port: u16,
    /// A plugin node silent this long on pub/sub leaves (its traffic drains).
    pub heartbeat_timeout: Dur,
    /// Node addresses Redis may name; any other is refused (a forged publisher cannot point traffic outside).
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Listen to the plugin's pub/sub rooms (joins and leaves the moment they happen); each
    /// membership source can be turned off.
    pub pubsub: bool,
    /// Read the plugin's discovery set.
    pub discovery: bool,
    /// Read Kuzzle 2's node ID cards (the cluster built into Kuzzle 2).
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
    /// The TLS settings the three keys above make (no file read here: the connector is built
    /// from it by `crate::core::node_tls::NodeTlsSet`).
    #[serde(skip)]
    pub tls: Option<super::NodeTlsSpec>,
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name: its URL prefix `/<name>/`, its row on `/hastats`, its label in `/metrics`.
    pub name: String,
    /// `IP:PORT` or `HOST:PORT` (a host name is resolved at load and every `resolve_interval`).
    pub address: String,
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

/// The file's sections as read, before validation (`Config` is the validated form).
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    /// `[gateway]`: listeners, workers, shutdown and upgrade, edge switches.
    pub gateway: GatewaySection,
    /// `[timeouts]`.
    pub timeouts: TimeoutsSection,
    /// `[balance]`.
    pub balance: BalanceSection,
    /// `[health]`.
    pub health: HealthSection,
    /// `[stats]`: the ops listener.
    pub stats: StatsSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[tls]`, when the file has it.
    pub tls: Option<TlsSection>,
    /// `[cluster]`, when the file has it.
    pub cluster: Option<ClusterSection>,
    /// `[access_log]`, when the file has it.
    pub access_log: Option<AccessLogSection>,
    /// `[fleet]`, when the file has it.
    pub fleet: Option<FleetSection>,
    /// `[[node]]`s, in file order.
    pub node: Vec<NodeSection>,
}
