//! Control plane: what the fleet keeps in Redis and says on its channels: key names (one hash
//! tag), heartbeats, operator state records, the Lua scripts that write them, and the checks every
//! message passes (anyone who can publish on that Redis can send anything).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::config::{valid_fleet_name, valid_node_name};
use crate::core::backend::AdminState;

/// Largest message or stored record read (a heartbeat of 1024 nodes is ~60 KiB).
pub const MAX_MESSAGE: usize = 128 * 1024;
/// Most nodes one heartbeat may list.
pub const MAX_NODES: usize = 1024;
/// Largest count a heartbeat may carry (connections, tunnels, per node): a forged huge count
/// would otherwise steer every gateway's leastconn away from a node.
pub const MAX_COUNT: u64 = 10_000_000;
/// Most gateways read per heartbeat.
pub const MAX_GATEWAYS: usize = 256;
/// Most operator states kept in Redis (a larger hash is not read: forged).
pub const MAX_STATES: usize = 4096;

/// The fleet's key and channel names. Every key carries the hash tag `{namespace}`, so they all
/// live on one Redis Cluster slot (the scripts touch several at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{namespace}`: the hash tag every key starts with.
    tag: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Keys {
        Keys { tag: format!("{{{namespace}}}") }
    }

    /// STRING: one gateway's last heartbeat, with a TTL (`[fleet] ttl`).
    pub fn gateway(&self, name: &str) -> String {
        format!("{}{name}", self.gateway_prefix())
    }

    /// What gateway keys start with (the scripts append the name).
    pub fn gateway_prefix(&self) -> String {
        format!("{}:gateway:", self.tag)
    }

    /// SET: names of the gateways that heartbeat (members whose key expired are removed).
    pub fn index(&self) -> String {
        format!("{}:gateways", self.tag)
    }

    /// HASH: node name -> its operator state record.
    pub fn states(&self) -> String {
        format!("{}:states", self.tag)
    }

    /// STRING: the sequence number of the last operator state change.
    pub fn seq(&self) -> String {
        format!("{}:seq", self.tag)
    }

    /// Channel: heartbeats and goodbyes.
    pub fn gateways_channel(&self) -> String {
        format!("{}:gateways", self.tag)
    }

    /// Channel: operator state changes.
    pub fn states_channel(&self) -> String {
        format!("{}:states", self.tag)
    }
}

/// One node as a gateway counts it in its heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCount {
    /// WebSocket tunnels this gateway holds on the node.
    pub tunnels: u64,
    /// Open requests plus tunnels (what leastconn compares).
    pub active: u64,
}

/// A gateway's heartbeat: who it is, its counters, its configuration's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// `[fleet] name`: unique in the fleet.
    pub name: String,
    /// Random per process: tells a restarted gateway (or a name used twice) from the same one.
    pub instance: String,
    /// Host name of its machine.
    pub host: String,
    /// Its bound client listener (`[gateway] listen`).
    pub address: String,
    /// Its ops listener (`[stats] listen`).
    pub ops: String,
    /// Its version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Its process id (to find it on its machine).
    pub pid: u32,
    /// Epoch ms of its start.
    pub started_ms: u64,
    /// Epoch ms of this heartbeat (its clock: shown, never compared with ours).
    pub at_ms: u64,
    /// Heartbeat counter: a new value proves the gateway alive.
    pub beat: u64,
    /// Its configuration's fingerprint (`crate::control::fleet::fingerprint`).
    pub fingerprint: String,
    /// Open client connections, tunnels included.
    pub connections: u64,
    /// Open WebSocket tunnels.
    pub tunnels: u64,
    /// Per node: its tunnels and open requests there.
    pub nodes: BTreeMap<String, NodeCount>,
    /// Epoch ms when the rebalancing it takes part in began (None: not rebalancing). Gateways
    /// joining a rebalancing take the earliest, so a client moved by one is spared by the others.
    #[serde(default)]
    pub rebalance_since_ms: Option<u64>,
}

/// What the gateways channel carries (and a gateway's key holds: the same text as its last beat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMsg {
    /// A heartbeat.
    Beat(Box<Beat>),
    /// A gateway stopping cleanly leaves the view at once (if the instance is the one heard).
    Bye {
        /// Its fleet name.
        name: String,
        /// The process that says goodbye.
        instance: String,
    },
}

/// An operator state change, as stored in the states hash and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRecord {
    /// Order of changes (Redis' INCR): a record with a lower one is older.
    #[serde(default)]
    pub seq: u64,
    /// The node (its name, as the gateways know it).
    pub node: String,
    /// READY, DRAIN or MAINT.
    pub state: AdminState,
    /// The gateway whose ops API took the change.
    pub by: String,
    /// Epoch ms when it was taken (that gateway's clock).
    pub at_ms: u64,
}

impl StateRecord {
    /// The record without its sequence number, minus the opening brace: the script adds
    /// `{"seq":N,` in front (Redis hands out N in the same atomic step).
    pub fn tail(&self) -> String {
        #[derive(Serialize)]
        struct NoSeq<'a> {
            /// See `StateRecord::node`.
            node: &'a str,
            /// See `StateRecord::state`.
            state: AdminState,
            /// See `StateRecord::by`.
            by: &'a str,
            /// See `StateRecord::at_ms`.
            at_ms: u64,
        }
        let text =
            serde_json::to_string(&NoSeq { node: &self.node, state: self.state, by: &self.by, at_ms: self.at_ms })
                .unwrap_or_default();
        text.strip_prefix('{').unwrap_or(&text).to_string()
    }

    /// The record as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a message or record was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("{0} bytes, more than {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("not the expected JSON: {0}")]
    BadJson(String),
    #[error("invalid gateway name {0:?}")]
    BadName(String),
    #[error("invalid node name {0:?}")]
    BadNode(String),
    #[error("implausible count {0} (at most {MAX_COUNT})")]
    BadCount(u64),
    #[error("{0} nodes, more than {MAX_NODES}")]
    TooMany(usize),
    #[error("state record stored under {0:?} names node {1:?}")]
    Mismatch(String, String),
}

/// Drop reasons, for metrics: in the order of [`Reject::label`]'s answers.
pub const REJECT_LABELS: [&str; 8] =
    ["too_large", "bad_json", "bad_name", "bad_node", "bad_count", "too_many", "mismatch", "overflow"];

impl Reject {
    pub fn label(&self) -> &'static str {
        match self {
            Reject::TooLarge(_) => "too_large",
            Reject::BadJson(_) => "bad_json",
            Reject::BadName(_) => "bad_name",
            Reject::BadNode(_) => "bad_node",
            Reject::BadCount(_) => "bad_count",
            Reject::TooMany(_) => "too_many",
            Reject::Mismatch(..) => "mismatch",
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn count(v: u64) -> Result<u64, Reject> {
    if v > MAX_COUNT {
        Err(Reject::BadCount(v))
    } else {
        Ok(v)
    }
}

/// A gateways-channel message or a stored heartbeat, checked.
pub fn parse_gateway_msg(raw: &[u8]) -> Result<GatewayMsg, Reject> {
    if raw.len() > MAX_MESSAGE {
        return Err(Reject::TooLarge(raw.len()));
    }
    let msg: GatewayMsg = serde_json::from_slice(raw).map_err(|e| Reject::BadJson(e.to_string()))?;
    match &msg {
        GatewayMsg::Bye { name, instance } => {
            if !valid_fleet_name(name) || instance.len() > 64 {
                return Err(Reject::BadName(short(name)));
            }
        }
        GatewayMsg::Beat(b) => {
            if !valid_fleet_name(&b.name) {
                return Err(Reject::BadName(short(&b.name)));
            }
            for s in [&b.instance, &b.host, &b.address, &b.ops, &b.version, &b.fingerprint] {
                if s.len() > 256 || s.chars().any(char::is_control) {
                    return Err(Reject::BadJson(format!("a text field of {:?} is not plausible", short(&b.name))));
                }
            }
            if b.nodes.len() > MAX_NODES {
                return Err(Reject::TooMany(b.nodes.len()));
            }
            count(b.connections)?;
            count(b.tunnels)?;
            for (n, c) in &b.nodes {
                if !valid_node_name(n) {
                    return Err(Reject::BadNode(short(n)));
                }
                count(c.tunnels)?;
                count(c.active)?;
            }
        }
    }
    Ok(msg)
}

/// A states-channel message or a stored state record, checked.
pub fn parse_state(raw: &[u8]) -> Result<StateRecord, Reject> {
    if raw.len() > 4096 {
        return Err(Reject::TooLarge(raw.len()));
    }
    let r: StateRecord = serde_json::from_slice(raw).map_err(|e| Reject::BadJson(e.to_string()))?;
    if !valid_node_name(&r.node) {
        return Err(Reject::BadNode(short(&r.node)));
    }
    if !valid_fleet_name(&r.by) {
        return Err(Reject::BadName(short(&r.by)));
    }
    Ok(r)
}

/// Heartbeat and read, one atomic step: store this gateway's beat with its TTL, list it in the
/// index, refresh the TTLs of the states, publish the beat; then return the live gateways' beats
/// (index members whose key expired are removed), the states hash (unless it is implausibly
/// large) and the sequence number.
///
/// KEYS: gateway key, index, states, seq. ARGV: name, message, ttl ms, state ttl ms, gateways
/// channel, gateway key prefix, most gateways, most states.
/// Returns `{beats, states (field, value, ...), seq, states length}`.
pub const BEAT_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[2])
local names
if redis.call('SCARD', KEYS[2]) > tonumber(ARGV[7]) then
  names = redis.call('SRANDMEMBER', KEYS[2], ARGV[7])
else
  names = redis.call('SMEMBERS', KEYS[2])
end
local beats = {}
for _, n in ipairs(names) do
  local v = redis.call('GET', ARGV[6] .. n)
  if v then
    table.insert(beats, v)
  else
    redis.call('SREM', KEYS[2], n)
  end
end
local len = redis.call('HLEN', KEYS[3])
local states = {}
if len <= tonumber(ARGV[8]) then
  states = redis.call('HGETALL', KEYS[3])
end
return {beats, states, redis.call('GET', KEYS[4]) or '0', len}
"#;

/// An operator state change, one atomic step: the next sequence number, the record stored (a
/// READY too: it says who set it back and when), the TTLs refreshed, the record published.
///
/// KEYS: states, seq. ARGV: node, record tail (see [`StateRecord::tail`]), states channel, state
/// ttl ms, most states. Returns `{seq, record}`.
pub const SET_STATE_SCRIPT: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return redis.error_reply('fleet states hash full')
end
local seq = redis.call('INCR', KEYS[2])
local v = '{"seq":' .. seq .. ',' .. ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], v)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[3], v)
return {seq, v}
"#;

/// Put back the states a gateway remembers into a Redis that lost them (restarted empty, or an
/// older snapshot): only if Redis' sequence number is below the highest the gateway knows, so of
/// several gateways doing it at once one does.
///
/// KEYS: states, seq. ARGV: highest seq, state ttl ms, then node, record pairs. Returns 1 when
/// written, 0 when Redis already knew as much.
pub const RESEED_SCRIPT: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Forget an old record, only if it is still the one read (compare and delete).
///
/// KEYS: states. ARGV: node, record. Returns 1 when deleted.
pub const PRUNE_SCRIPT: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

/// A gateway stopping cleanly: its key and index entry go, and a goodbye is published; only if the
/// key is still its own (a newer process with the same name, after `--upgrade`, keeps its own).
///
/// KEYS: gateway key, index. ARGV: name, `"instance":"<id>"`, bye message, gateways channel.
pub const BYE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and not string.find(v, ARGV[2], 1, true) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(name: &str) -> Beat {
        Beat {
            name: name.into(),
            instance: "abc".into(),
            host: "h".into(),
            address: "127.0.0.1:7512".into(),
            ops: "127.0.0.1:7575".into(),
            version: "0.1.0".into(),
            pid: 1,
            started_ms: 1,
            at_ms: 2,
            beat: 3,
            fingerprint: "f".into(),
            connections: 4,
            tunnels: 2,
            nodes: [("n1".to_string(), NodeCount { tunnels: 2, active: 3 })].into(),
            rebalance_since_ms: None,
        }
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("kg");
        for key in [k.gateway("gw-a"), k.index(), k.states(), k.seq()] {
            assert!(key.starts_with("{kg}:"), "{key}");
        }
        assert_eq!(k.gateway("a"), format!("{}a", k.gateway_prefix()));
    }

    #[test]
    fn heartbeats_round_trip_and_forgeries_are_refused() {
        let m = GatewayMsg::Beat(Box::new(beat("gw-a")));
        let text = serde_json::to_string(&m).expect("json");
        assert!(text.starts_with("{\"beat\":{"), "{text}");
        assert_eq!(parse_gateway_msg(text.as_bytes()), Ok(m));
        let bye = serde_json::to_vec(&GatewayMsg::Bye { name: "gw-a".into(), instance: "x".into() }).expect("json");
        assert!(matches!(parse_gateway_msg(&bye), Ok(GatewayMsg::Bye { .. })));

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "bad_json"),
            (b"{\"beat\":{\"name\":\"x\"}}".to_vec(), "bad_json"),
            (vec![b' '; MAX_MESSAGE + 1], "too_large"),
        ];
        for (raw, label) in cases {
            assert_eq!(parse_gateway_msg(&raw).map_err(|r| r.label()), Err(label));
        }
        let mut b = beat("gw a");
        let bad = |b: &Beat| serde_json::to_vec(&GatewayMsg::Beat(Box::new(b.clone()))).expect("json");
        assert_eq!(parse_gateway_msg(&bad(&b)).map_err(|r| r.label()), Err("bad_name"));
        b = beat("gw");
        b.nodes.insert("../x".into(), NodeCount::default());
        assert_eq!(parse_gateway_msg(&bad(&b)).map_err(|r| r.label()), Err("bad_node"));
        b = beat("gw");
        b.nodes.insert("n2".into(), NodeCount { tunnels: u64::MAX, active: 0 });
        assert_eq!(parse_gateway_msg(&bad(&b)).map_err(|r| r.label()), Err("bad_count"));
        b = beat("gw");
        b.host = "a\nb".into();
        assert_eq!(parse_gateway_msg(&bad(&b)).map_err(|r| r.label()), Err("bad_json"));
    }

    #[test]
    fn state_records_take_their_seq_from_the_script() {
        let r = StateRecord { seq: 0, node: "n1".into(), state: AdminState::Drain, by: "gw-a".into(), at_ms: 5 };
        let stored = format!("{{\"seq\":12,{}", r.tail());
        let back = parse_state(stored.as_bytes()).expect("parses");
        assert_eq!(back, StateRecord { seq: 12, ..r.clone() });
        assert_eq!(parse_state(back.to_json().as_bytes()), Ok(back));
        for bad in [
            r#"{"seq":1,"node":"n1","state":"off","by":"g","at_ms":1}"#,
            r#"{"seq":1,"node":"a/b","state":"drain","by":"g","at_ms":1}"#,
            r#"{"seq":1,"node":"n1","state":"drain","by":"","at_ms":1}"#,
            r#"{"seq":-1,"node":"n1","state":"drain","by":"g","at_ms":1}"#,
            r#"{"seq":1,"node":"n1","state":"drain","by":"g","at_ms":1,"evil":true}"#,
        ] {
            assert!(parse_state(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
