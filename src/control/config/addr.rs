//! Control plane: the names and addresses a configuration writes: node addresses (`IP:PORT`,
//! `HOST:PORT`), node names (URL prefixes), SNI names, fleet names.

use std::net::SocketAddr;

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
    /// The host name, resolved at load and every `[gateway] resolve_interval`.
    pub host: String,
    /// The node's HTTP port.
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

/// A node name must be a plain URL path segment: it is matched verbatim as `/<name>/`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'))
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

/// A fleet name or namespace: letters, digits and `_ - . ~ :`, 1 to 128 bytes (it is part of
/// Redis key names and shown on pages).
pub fn valid_fleet_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~' | b':'))
}
