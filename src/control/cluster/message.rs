//! Control plane: parsing of untrusted Redis membership data (pub/sub messages, plugin discovery
//! members, Kuzzle 2 ID cards) into checked node candidates. Pure: no I/O.

use std::net::{IpAddr, SocketAddr};

use crate::control::config::valid_node_name;

/// Largest message or card accepted; a node descriptor is well under 1 KiB.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The pub/sub rooms that carry membership.
pub const ROOM_READY: &str = "cluster:ready";
pub const ROOM_HEARTBEAT: &str = "cluster:heartbeat";
pub const ROOM_REMOVE: &str = "cluster:remove";
/// Plugin discovery set and Kuzzle 2 ID card index.
pub const DISCOVERY_KEY: &str = "cluster:discovery";
pub const K2_INDEX_KEY: &str = "{cluster/node}/id-cards-index";

/// Why a piece of Redis data was dropped (also the metrics label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte cap")]
    TooLarge(usize),
    #[error("not JSON: {0}")]
    BadJson(String),
    #[error("wrong shape: {0}")]
    BadShape(String),
    #[error("unknown room {0:?}")]
    UnknownRoom(String),
    #[error("bad address: {0}")]
    BadAddress(String),
    #[error("address {0} is outside allowed_networks")]
    NotAllowed(IpAddr),
    #[error("bad node name {0:?}: use letters, digits, '_', '-', '.', '~'")]
    BadName(String),
    #[error("more than {0} messages waiting: Redis sends faster than membership can follow")]
    Overflow(usize),
    #[error("join refused: already {0} nodes from Redis ([cluster] max_nodes)")]
    MaxNodes(usize),
    #[error("join refused: more than {0} joins a second ([cluster] join_rate)")]
    JoinRate(u32),
    #[error("join refused: {0} is one of the gateway's own listeners")]
    OwnAddress(SocketAddr),
}

impl Reject {
    /// Short label for metrics and rate-limited logs.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::TooLarge(_) => "too_large",
            Reject::BadJson(_) => "bad_json",
            Reject::BadShape(_) => "bad_shape",
            Reject::UnknownRoom(_) => "unknown_room",
            Reject::BadAddress(_) => "bad_address",
            Reject::NotAllowed(_) => "not_allowed",
            Reject::BadName(_) => "bad_name",
            Reject::Overflow(_) => "overflow",
            Reject::MaxNodes(_) => "max_nodes",
            Reject::JoinRate(_) => "join_rate",
            Reject::OwnAddress(_) => "self",
        }
    }
}

/// What a membership message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ready,
    Heartbeat,
    Remove,
}

/// A checked node: identity, name (URL prefix), address for client traffic, readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Identity: the plugin's `pub` address, or the Kuzzle 2 card key.
    pub key: String,
    /// Node name (URL prefix): the descriptor's `name`, the card's id, or derived from the address.
    pub name: String,
    /// Where client traffic goes (checked against `allowed_networks`).
    pub addr: SocketAddr,
    /// `Some(true)`: the node says it is ready; `None`: it did not say.
    pub ready: Option<bool>,
}

/// Settings the checks need (from `[cluster]`).
#[derive(Debug, Clone)]
pub struct Rules {
    /// `[cluster] node_port`: the HTTP port of nodes whose descriptor gives no `http` URL.
    pub node_port: u16,
    /// `[cluster] allowed_networks`: a node announced outside them is refused.
    pub allowed: Vec<ipnet::IpNet>,
}

impl Rules {
    fn allow(&self, addr: SocketAddr) -> Result<SocketAddr, Reject> {
        if self.allowed.iter().any(|n| n.contains(&addr.ip())) {
            Ok(addr)
        } else {
            Err(Reject::NotAllowed(addr.ip()))
        }
    }
}

/// Parse one pub/sub message: `channel` is the room it arrived on, `payload` the plugin's
/// `[room, descriptor]` array.
pub fn parse_message(channel: &str, payload: &[u8], rules: &Rules) -> Result<(Kind, Candidate), Reject> {
    let kind = match channel {
        ROOM_READY => Kind::Ready,
        ROOM_HEARTBEAT => Kind::Heartbeat,
        ROOM_REMOVE => Kind::Remove,
        other => return Err(Reject::UnknownRoom(truncate(other))),
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(Reject::TooLarge(payload.len()));
    }
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| Reject::BadJson(e.to_string()))?;
    let arr = v.as_array().ok_or_else(|| Reject::BadShape("expected [room, node]".into()))?;
    let [room, node] = arr.as_slice() else {
        return Err(Reject::BadShape(format!("expected [room, node], got {} elements", arr.len())));
    };
    let room = room.as_str().ok_or_else(|| Reject::BadShape("room is not a string".into()))?;
    if room != channel {
        return Err(Reject::UnknownRoom(truncate(room)));
    }
    let mut c = parse_descriptor(node, rules)?;
    if kind == Kind::Ready {
        // Publishing on cluster:ready is itself the statement "I am ready".
        c.ready = Some(true);
    }
    Ok((kind, c))
}

/// Parse one `cluster:discovery` member (a JSON descriptor as a string).
pub fn parse_discovery_member(member: &[u8], rules: &Rules) -> Result<Candidate, Reject> {
    if member.len() > MAX_PAYLOAD {
        return Err(Reject::TooLarge(member.len()));
    }
    let v: serde_json::Value = serde_json::from_slice(member).map_err(|e| Reject::BadJson(e.to_string()))?;
    parse_descriptor(&v, rules)
}

/// A plugin node descriptor `{"pub", "router", "ready"?, "name"?, "http"?, "uuid"?}`.
pub fn parse_descriptor(node: &serde_json::Value, rules: &Rules) -> Result<Candidate, Reject> {
    let obj = node.as_object().ok_or_else(|| Reject::BadShape("node is not an object".into()))?;
    let pub_addr = match obj.get("pub") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(Reject::BadShape("\"pub\" is not a non-empty string".into())),
        None => return Err(Reject::BadShape("missing \"pub\"".into())),
    };
    let ready = match obj.get("ready") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(_) => return Err(Reject::BadShape("\"ready\" is not a boolean".into())),
    };
    let opt_str = |k: &str| match obj.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Reject::BadShape(format!("\"{k}\" is not a string"))),
    };
    let name = opt_str("name")?;
    let http = opt_str("http")?;
    let addr = match http {
        Some(h) => parse_url_addr(h, "http", 80)?,
        None => {
            let p = parse_url_addr(&pub_addr, "tcp", 0)?;
            SocketAddr::new(p.ip(), rules.node_port)
        }
    };
    let addr = rules.allow(addr)?;
    let name = match name {
        Some(n) if valid_node_name(n) => n.to_string(),
        Some(n) => return Err(Reject::BadName(truncate(n))),
        None => derived_name(addr, rules.node_port),
    };
    Ok(Candidate { key: pub_addr, name, addr, ready })
}

/// Parse a Kuzzle 2 ID card `{"id", "ip", "birthdate"?, "topology"?}` stored under `key`.
pub fn parse_card(key: &str, value: &[u8], rules: &Rules) -> Result<Candidate, Reject> {
    if value.len() > MAX_PAYLOAD {
        return Err(Reject::TooLarge(value.len()));
    }
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|e| Reject::BadJson(e.to_string()))?;
    let id = v
        .get("id")
        .and_then(|x| x.as_str())
        .ok_or_else(|| Reject::BadShape("ID card without a string \"id\"".into()))?;
    let ip = v
        .get("ip")
        .and_then(|x| x.as_str())
        .ok_or_else(|| Reject::BadShape("ID card without a string \"ip\"".into()))?;
    if !valid_node_name(id) {
        return Err(Reject::BadName(truncate(id)));
    }
    let ip: IpAddr =
        ip.parse().map_err(|_| Reject::BadAddress(format!("ip {:?} is not an IP address", truncate(ip))))?;
    let addr = rules.allow(SocketAddr::new(ip, rules.node_port))?;
    Ok(Candidate { key: key.to_string(), name: id.to_string(), addr, ready: None })
}

/// The name of a node that sent none: its IP with '.' and ':' turned into '_' (`10.0.0.5` ->
/// `10_0_0_5`), plus `_<port>` when its HTTP port is not `node_port`.
pub fn derived_name(addr: SocketAddr, node_port: u16) -> String {
    let mut n: String =
        addr.ip().to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if addr.port() != node_port {
        n.push('_');
        n.push_str(&addr.port().to_string());
    }
    n
}

/// `scheme://IP[:port][/...]` with an IP literal host (a descriptor is data from the network: no
/// DNS lookups on its behalf). `default_port` 0 means the port is required.
fn parse_url_addr(url: &str, scheme: &str, default_port: u16) -> Result<SocketAddr, Reject> {
    let bad = |why: &str| Reject::BadAddress(format!("{:?}: {why}", truncate(url)));
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| bad(&format!("expected {scheme}://IP:PORT")))?;
    let authority = rest.split('/').next().unwrap_or("");
    if let Ok(a) = authority.parse::<SocketAddr>() {
        return Ok(a);
    }
    let host = authority.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) if default_port != 0 => Ok(SocketAddr::new(ip, default_port)),
        Ok(_) => Err(bad("missing port")),
        Err(_) => Err(bad("host must be an IP address")),
    }
}

/// Bound what untrusted text we echo into logs.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            node_port: 7512,
            allowed: vec!["10.0.0.0/8".parse().expect("net"), "127.0.0.0/8".parse().expect("net")],
        }
    }

    #[test]
    fn plugin3_member_uses_host_of_pub_and_node_port() {
        let c = parse_discovery_member(br#"{"pub":"tcp://10.0.0.5:7511","router":"tcp://10.0.0.5:7510"}"#, &rules())
            .expect("valid");
        assert_eq!(c.addr, "10.0.0.5:7512".parse().expect("addr"));
        assert_eq!(c.name, "10_0_0_5");
        assert_eq!(c.key, "tcp://10.0.0.5:7511");
        assert_eq!(c.ready, None);
    }

    #[test]
    fn new_style_descriptor_and_rooms() {
        let p = br#"["cluster:heartbeat",{"pub":"tcp://127.0.0.1:9","router":"tcp://127.0.0.1:8","name":"cluster_kuzzle_1","http":"http://127.0.0.1:4000","ready":false}]"#;
        let (k, c) = parse_message(ROOM_HEARTBEAT, p, &rules()).expect("valid");
        assert_eq!(k, Kind::Heartbeat);
        assert_eq!((c.name.as_str(), c.addr.port(), c.ready), ("cluster_kuzzle_1", 4000, Some(false)));
        let r = br#"["cluster:ready",{"pub":"tcp://127.0.0.1:9"}]"#;
        let (k, c) = parse_message(ROOM_READY, r, &rules()).expect("valid");
        assert_eq!((k, c.ready, c.name.as_str()), (Kind::Ready, Some(true), "127_0_0_1"));
        assert_eq!(parse_message("cluster:sync", r, &rules()).unwrap_err().label(), "unknown_room");
        assert_eq!(parse_message(ROOM_REMOVE, r, &rules()).unwrap_err().label(), "unknown_room", "room mismatch");
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let r = rules();
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "bad_json"),
            (b"{}", "bad_shape"),
            (b"[\"cluster:heartbeat\"]", "bad_shape"),
            (b"[\"cluster:heartbeat\", 3]", "bad_shape"),
            (br#"["cluster:heartbeat", {"pub": 5}]"#, "bad_shape"),
            (br#"["cluster:heartbeat", {"pub": "tcp://x"}]"#, "bad_address"),
            (br#"["cluster:heartbeat", {"pub": "tcp://host.example:1"}]"#, "bad_address"),
            (br#"["cluster:heartbeat", {"pub": "tcp://8.8.8.8:7511"}]"#, "not_allowed"),
            (br#"["cluster:heartbeat", {"pub": "tcp://10.1.1.1:7511", "http": "http://8.8.8.8:1"}]"#, "not_allowed"),
            (br#"["cluster:heartbeat", {"pub": "tcp://10.1.1.1:7511", "name": "a/b"}]"#, "bad_name"),
            (br#"["cluster:heartbeat", {"pub": "tcp://10.1.1.1:7511", "ready": "yes"}]"#, "bad_shape"),
        ];
        for (p, label) in cases {
            let e = parse_message(ROOM_HEARTBEAT, p, &r).unwrap_err();
            assert_eq!(e.label(), *label, "{}: {e}", String::from_utf8_lossy(p));
        }
        let huge = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(parse_message(ROOM_HEARTBEAT, &huge, &r).unwrap_err().label(), "too_large");
    }

    #[test]
    fn kuzzle2_cards() {
        let r = rules();
        let c = parse_card(
            "{cluster/node}/knode-a-1",
            br#"{"id":"knode-a-1","ip":"127.0.0.2","birthdate":1,"topology":[]}"#,
            &r,
        )
        .expect("valid");
        assert_eq!((c.name.as_str(), c.addr), ("knode-a-1", "127.0.0.2:7512".parse().expect("addr")));
        assert_eq!(parse_card("k", br#"{"id":"x","ip":"1.2.3.4"}"#, &r).unwrap_err().label(), "not_allowed");
        assert_eq!(parse_card("k", br#"{"id":"x"}"#, &r).unwrap_err().label(), "bad_shape");
        assert_eq!(parse_card("k", br#"{"id":"x","ip":"nope"}"#, &r).unwrap_err().label(), "bad_address");
    }

    #[test]
    fn derived_names_are_valid() {
        for a in ["10.0.0.5:7512", "[::1]:7512", "127.0.0.1:9000"] {
            let n = derived_name(a.parse().expect("addr"), 7512);
            assert!(valid_node_name(&n), "{n}");
        }
        assert_eq!(derived_name("127.0.0.1:9000".parse().expect("addr"), 7512), "127_0_0_1_9000");
    }
}
