//! Data plane: header rules: hop-by-hop headers removed (RFC 9110 section 7.6.1), the upgrade pair kept,
//! `X-Forwarded-*` added, the gateway's loop mark (`X-Kuzzle-Gateway`) checked and added.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{ClientInfo, Scheme};
use crate::util::tokens;

/// Headers that concern one connection only (RFC 9110 section 7.6.1), never forwarded.
const HOP_COUNT: usize = 9;
/// A `static`, not a `const`: a const array of names is built (and dropped) at every use.
static HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    // RFC 7540 3.2.1: the settings of an `Upgrade: h2c`, which is never forwarded.
    HeaderName::from_static("http2-settings"),
];

/// The place of a (lower-case) name in [`HOP_BY_HOP`]: a match on the text is a length switch and
/// one comparison, where comparing names one by one cost ~70 instructions per header.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "http2-settings" => 8,
        _ => return None,
    })
}

/// Every forwarded request carries one of these per gateway it crossed (the gateway's instance id).
pub const GATEWAY_MARK: HeaderName = HeaderName::from_static("x-kuzzle-gateway");

/// A random id for one gateway instance, the value of its [`GATEWAY_MARK`].
pub fn instance_id() -> HeaderValue {
    HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>())).unwrap_or(HeaderValue::from_static("0"))
}

/// Did this request already cross the gateway whose mark is `id`? Compared in place (nothing is
/// allocated, and with no mark it is one failed lookup); a comma-joined list counts too.
#[inline]
pub fn crossed(h: &HeaderMap, id: &HeaderValue) -> bool {
    h.get_all(&GATEWAY_MARK).iter().any(|v| tokens(v.as_bytes()).any(|t| t == id.as_bytes()))
}

/// Does this response end its connection (`Connection: close`, or HTTP/1.0 without
/// `keep-alive`)? Real Kuzzle 2 closes after every answer: such a connection is not pooled.
pub fn closes_connection(h: &HeaderMap, version: http::Version) -> bool {
    let tokens = || h.get_all(http::header::CONNECTION).iter().flat_map(|v| tokens(v.as_bytes()));
    if version == http::Version::HTTP_10 {
        return !tokens().any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
    }
    tokens().any(|t| t.eq_ignore_ascii_case(b"close"))
}

/// Remove hop-by-hop headers; with `upgrade`, put back the `Connection: upgrade` + `Upgrade` pair.
/// One pass over the names first: most messages carry none, or only `Connection: keep-alive`, and
/// a lookup per hop-by-hop name (nine, on every request and response) cost more than the rest of
/// the header work.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    let mut present = [false; HOP_COUNT];
    let mut upgrade_header = false;
    for name in h.keys() {
        match hop_index(name.as_str()) {
            Some(i) => present[i] = true,
            None => upgrade_header |= name == header::UPGRADE,
        }
    }
    // `Connection` is HOP_BY_HOP[0].
    if present[0] {
        // Headers named by Connection are hop-by-hop too; `keep-alive` and `upgrade` go anyway
        // and `close` names no header, so the common tokens cost no allocation.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| tokens(v.as_bytes()))
            .filter(|t| !([&b"keep-alive"[..], b"upgrade", b"close", b""].iter().any(|c| t.eq_ignore_ascii_case(c))))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        // Connection can never remove Host: the node must see the target the client asked for.
        for n in named.into_iter().filter(|n| n != header::HOST) {
            h.remove(n);
        }
    }
    for (n, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(n);
    }
    if upgrade_header {
        h.remove(header::UPGRADE);
    }
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

/// Is this an HTTP/1.1 WebSocket upgrade request (`Connection: upgrade` + `Upgrade` naming
/// `websocket`)? The upgrade to forward (`websocket` alone: any other token, `h2c` first of all,
/// never reaches a node).
pub fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let wants = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if wants && h.get_all(header::UPGRADE).iter().any(is_websocket) {
        Some(HeaderValue::from_static("websocket"))
    } else {
        None
    }
}

pub fn is_websocket(v: &HeaderValue) -> bool {
    v.to_str().is_ok() && names_websocket(v.as_bytes())
}

/// Does an `Upgrade` value name `websocket` among its protocols (any letter case)?
pub fn names_websocket(v: &[u8]) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(b"websocket"))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's address as an `X-Forwarded-For` value: made once per connection, not per request.
pub fn forwarded_for(addr: std::net::SocketAddr) -> HeaderValue {
    let text = match addr.ip() {
        // Without `fmt`: its formatting was 6 % of a new connection's instructions.
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            crate::util::push_ipv4(&mut s, v4);
            s
        }
        ip => ip.to_string(),
    };
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("unknown"))
}

pub fn add_forwarded(h: &mut HeaderMap, client: &ClientInfo, host: Option<HeaderValue>) {
    // Several X-Forwarded-For lines form one list (RFC 9110 section 5.3): keep them all, in order.
    let mut prev = h.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).map(str::trim).peekable();
    let xff = if prev.peek().is_none() {
        client.forwarded_for.clone()
    } else {
        let mut xff = String::new();
        for p in prev.filter(|p| !p.is_empty()) {
            xff.push_str(p);
            xff.push_str(", ");
        }
        xff.push_str(client.forwarded_for.to_str().unwrap_or("unknown"));
        HeaderValue::from_str(&xff).unwrap_or_else(|_| client.forwarded_for.clone())
    };
    h.insert(X_FORWARDED_FOR, xff);
    let proto = match client.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_address_is_written_as_display_writes_it() {
        let mut ips: Vec<std::net::IpAddr> = Vec::new();
        for o in [0u8, 1, 9, 10, 42, 99, 100, 109, 110, 199, 200, 250, 255] {
            ips.push(std::net::Ipv4Addr::new(o, 255 - o, o / 2, o.wrapping_mul(7)).into());
        }
        ips.push("::1".parse().expect("v6"));
        ips.push("::ffff:10.0.0.1".parse().expect("mapped"));
        for ip in ips {
            let v = forwarded_for(std::net::SocketAddr::new(ip, 7512));
            assert_eq!(v.to_str().expect("ascii"), ip.to_string());
        }
    }

    #[test]
    fn a_closing_answer_is_told_apart() {
        use http::Version;
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONNECTION, HeaderValue::from_static(v));
            m
        };
        assert!(closes_connection(&h("close"), Version::HTTP_11));
        assert!(closes_connection(&h("Keep-Alive, Close"), Version::HTTP_11));
        assert!(!closes_connection(&h("keep-alive"), Version::HTTP_11));
        assert!(!closes_connection(&HeaderMap::new(), Version::HTTP_11));
        assert!(closes_connection(&HeaderMap::new(), Version::HTTP_10), "HTTP/1.0 closes by default");
        assert!(!closes_connection(&h("keep-alive"), Version::HTTP_10));
    }

    #[test]
    fn hop_index_follows_the_list() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n.as_str()), Some(i), "{n}");
        }
        assert_eq!(hop_index("host"), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("host, x-a"));
        h.insert(header::HOST, HeaderValue::from_static("gw:7512"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.get(header::HOST).map(|v| v.as_bytes()), Some(&b"gw:7512"[..]), "Connection: host removed Host");
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_of(&h).is_none());
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(upgrade_of(&h).is_some_and(|v| is_websocket(&v)));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(upgrade_of(&h).is_none(), "h2c is never forwarded");
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c, WebSocket"));
        assert_eq!(upgrade_of(&h).expect("websocket among them"), "websocket");
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"));
        strip_hop_by_hop(&mut h, None);
        assert!(h.is_empty(), "upgrade, connection and http2-settings go: {h:?}");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let c = ClientInfo::new("127.0.0.9:5".parse().expect("addr"), Scheme::Https);
        add_forwarded(&mut h, &c, Some(HeaderValue::from_static("gw:7512")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gw:7512");
    }
}
