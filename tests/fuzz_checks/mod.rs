//! Checks shared by the fuzz targets (fuzz/fuzz_targets/*.rs) and the corpus replay (tests/it/fuzz_replay.rs): each takes raw fuzzer bytes and panics when an invariant the gateway documents breaks.
// Each fuzz target includes this file for one of its checks; the rest is unused there.
#![allow(dead_code)]

use kuzzle_gateway::control::cluster::message::{
    self, Candidate, Kind, Reject, Rules, MAX_PAYLOAD, ROOM_HEARTBEAT, ROOM_READY, ROOM_REMOVE,
};
use kuzzle_gateway::control::config::{valid_node_name, Config};
use kuzzle_gateway::data::lane::wire::{self, Framing, NodeParsed, Parsed};
use kuzzle_gateway::data::route::{self, RouteError};
use kuzzle_gateway::data::tunnel::FrameTracker;

// ---------------------------------------------------------------------------------------------
// route: the `/<node name>/...` prefix rule of src/route.rs

/// The fixed node-name set every route check uses (prefixes of each other on purpose).
pub const NODES: [&str; 6] = ["cluster_kuzzle_1", "cluster_kuzzle_2", "cluster_kuzzle_10", "n", "a.b", "~x-y"];

pub fn lookup(seg: &str) -> Option<usize> {
    NODES.iter().position(|n| *n == seg)
}

/// What src/route.rs's documented rule says a path routes to, computed independently of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Err(RouteError),
    /// Node index in [`NODES`] and the path it is sent as.
    Node(usize, String),
    /// No node: the balancer gets the dot-resolved path.
    Balancer(String),
}

/// Strict RFC 3986 percent-decoding (`%` then exactly two hex digits), then UTF-8.
pub fn strict_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = (*b.get(i + 1)? as char).to_digit(16)?;
            let lo = (*b.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3986 `remove_dot_segments` with encoded dots counted (rule 1); `None` when it climbs above
/// the root. `path` starts with '/'.
pub fn resolve(path: &str) -> Option<String> {
    let segs: Vec<&str> = path[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match strict_decode(seg).as_deref() {
            Some(".") => trailing = last,
            Some("..") => {
                out.pop()?;
                trailing = last;
            }
            _ => {
                out.push(seg);
                trailing = false;
            }
        }
    }
    let mut s = String::new();
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing || s.is_empty() {
        s.push('/');
    }
    Some(s)
}

/// Rules 1 to 3 of src/route.rs for a path that starts with '/' (what hyper hands the proxy).
pub fn expected_route(path: &str) -> Expected {
    let Some(resolved) = resolve(path) else { return Expected::Err(RouteError::AboveRoot) };
    let first_end = resolved[1..].find('/').map_or(resolved.len(), |i| i + 1);
    let first = &resolved[1..first_end];
    if first.is_empty() {
        return Expected::Balancer(resolved);
    }
    let Some(decoded) = strict_decode(first) else { return Expected::Err(RouteError::BadEncoding) };
    if decoded.contains(['/', '\\']) {
        return Expected::Err(RouteError::EncodedSlash);
    }
    match lookup(&decoded) {
        Some(i) => {
            let rest = &resolved[first_end..];
            Expected::Node(i, if rest.is_empty() { "/".to_string() } else { rest.to_string() })
        }
        None => Expected::Balancer(resolved),
    }
}

/// Fuzz input: text (lossy UTF-8) as `path[?query]`.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    check_percent_decode(path);
    route_path(path, query);
}

/// Route one path and query and hold the result to the rule.
pub fn route_path(path: &str, query: Option<&str>) {
    // Any string at all: no panic.
    let got = route::route(path, query, lookup);
    if !path.starts_with('/') {
        return;
    }
    let got = got.map(|r| {
        assert_eq!(r.query, query, "query must pass unchanged");
        let pq = r.path_and_query().into_owned();
        assert_eq!(
            pq,
            match query {
                Some(q) => format!("{}?{q}", r.path),
                None => r.path.to_string(),
            }
        );
        if r.unchanged() {
            assert_eq!(&*r.path, path, "an unchanged route must keep the request's path");
        }
        let out = r.path.into_owned();
        // A routed path never climbs above the root: it starts at the root and holds no dot
        // segment a node or a later hop could resolve.
        assert!(out.starts_with('/'), "routed path {out:?} does not start with '/' (from {path:?})");
        for seg in out[1..].split('/') {
            let d = strict_decode(seg);
            assert!(
                !matches!(d.as_deref(), Some(".") | Some("..")),
                "routed path {out:?} keeps dot segment {seg:?} (from {path:?})"
            );
        }
        match r.node {
            Some(i) => Expected::Node(i, out),
            None => Expected::Balancer(out),
        }
    });
    let got = got.unwrap_or_else(Expected::Err);
    let want = expected_route(path);
    assert_eq!(got, want, "route({path:?}) disagrees with the documented rule");
    // The balancer's path routes to the balancer again, unchanged: resolving is idempotent.
    if let Expected::Balancer(p) = &got {
        let again = route::route(p, None, lookup).expect("a routed path routes again");
        assert!(again.node.is_none() && again.path.as_ref() == p.as_str(), "re-routing {p:?} gave {again:?}");
    }
}

/// `percent_decode` agrees with strict RFC 3986 decoding, and never grows its input.
pub fn check_percent_decode(s: &str) {
    let got = route::percent_decode(s);
    let want = strict_decode(s);
    match (&got, &want) {
        (Ok(g), Some(w)) => assert_eq!(g, w, "percent_decode({s:?})"),
        (Err(e), None) => assert_eq!(*e, RouteError::BadEncoding),
        _ => panic!("percent_decode({s:?}) = {got:?}, strict decoding gives {want:?}"),
    }
    if let Ok(g) = got {
        assert!(g.len() <= s.len());
        if !s.contains('%') {
            assert_eq!(g, s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config: Config::parse never panics, and errors name the file

pub const CONFIG_FILE: &str = "fuzz.toml";

/// Fuzz input: TOML text (lossy UTF-8).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, CONFIG_FILE) {
        Ok(c) => {
            assert_eq!(c.source, CONFIG_FILE);
            let mut names = std::collections::HashSet::new();
            for n in &c.nodes {
                assert!(valid_node_name(&n.name), "accepted invalid node name {:?}", n.name);
                assert!(names.insert(n.name.as_str()), "accepted duplicate node name {:?}", n.name);
            }
            assert!(c.health.rise >= 1 && c.health.fall >= 1);
            assert!(c.health.path.starts_with('/') && c.stats.uri.starts_with('/'));
            assert_eq!(c.stats.user.is_some(), c.stats.password.is_some(), "user without password");
        }
        Err(e) => {
            assert_eq!(e.file, CONFIG_FILE);
            let shown = e.to_string();
            assert!(shown.starts_with(CONFIG_FILE), "error does not name the file: {shown}");
            let lines = text.matches('\n').count() + 1;
            assert!(e.line <= lines, "error line {} past the end ({lines} lines): {shown}", e.line);
            assert!(!e.message.is_empty(), "empty error message: {shown}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cluster_message: parsing of untrusted Redis membership data

/// The rules the cluster checks use: a few networks, or none at all.
pub fn rules(open: bool) -> Rules {
    let nets: &[&str] = if open { &["10.0.0.0/8", "127.0.0.0/8", "::1/128", "fd00::/8"] } else { &[] };
    Rules { node_port: 7512, allowed: nets.iter().map(|n| n.parse().expect("test network")).collect() }
}

/// Fuzz input: byte 0 picks the parser, the room and the rules; the rest is `channel-or-key \n
/// payload` (the channel part is used only when byte 0 asks for a fuzzed room, or for a card key).
pub fn cluster_message(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let rules = rules(sel & 0x10 == 0);
    let (head, payload) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let head = String::from_utf8_lossy(head);
    match sel % 3 {
        0 => {
            let channel = match (sel >> 2) & 3 {
                0 => ROOM_READY,
                1 => ROOM_HEARTBEAT,
                2 => ROOM_REMOVE,
                _ => &*head,
            };
            let r = message::parse_message(channel, payload, &rules);
            assert_eq!(r, message::parse_message(channel, payload, &rules), "not deterministic");
            match r {
                Ok((kind, c)) => {
                    let want = match channel {
                        ROOM_READY => Kind::Ready,
                        ROOM_HEARTBEAT => Kind::Heartbeat,
                        ROOM_REMOVE => Kind::Remove,
                        other => panic!("accepted a message on room {other:?}"),
                    };
                    assert_eq!(kind, want);
                    if kind == Kind::Ready {
                        assert_eq!(c.ready, Some(true), "cluster:ready means ready");
                    }
                    check_candidate(&c, payload, &rules);
                    assert!(!c.key.is_empty(), "a descriptor's identity is its non-empty \"pub\"");
                }
                Err(e) => check_reject(&e),
            }
        }
        1 => match message::parse_discovery_member(payload, &rules) {
            Ok(c) => {
                check_candidate(&c, payload, &rules);
                assert!(!c.key.is_empty(), "a descriptor's identity is its non-empty \"pub\"");
            }
            Err(e) => check_reject(&e),
        },
        _ => match message::parse_card(&head, payload, &rules) {
            Ok(c) => {
                check_candidate(&c, payload, &rules);
                // Its key as given (the poller always passes a prefixed, non-empty one).
                assert_eq!(c.key, head, "a card's identity is its key");
                assert_eq!(c.addr.port(), rules.node_port, "a card's node listens on node_port");
                assert_eq!(c.ready, None);
            }
            Err(e) => check_reject(&e),
        },
    }
}

fn check_candidate(c: &Candidate, payload: &[u8], rules: &Rules) {
    assert!(payload.len() <= MAX_PAYLOAD, "accepted {} bytes", payload.len());
    assert!(rules.allowed.iter().any(|n| n.contains(&c.addr.ip())), "accepted {} outside allowed_networks", c.addr);
    assert!(valid_node_name(&c.name), "accepted node name {:?}", c.name);
}

/// A rejection goes to the logs and the metrics: a known label, a bounded single-line message.
fn check_reject(e: &Reject) {
    assert!(!e.label().is_empty());
    let msg = e.to_string();
    assert!(msg.len() <= 2048, "{}-byte rejection message: {msg:.200}", msg.len());
    assert!(!msg.contains(['\n', '\r']), "rejection message spans lines: {msg:?}");
}

// ---------------------------------------------------------------------------------------------
// ws_frames: the WebSocket frame tracker of src/tunnel.rs

/// Frame boundaries of a whole stream, parsed independently of the tracker: for each byte offset
/// that ends a frame (and 0), whether that frame was a close frame.
pub fn frame_ends(stream: &[u8]) -> Vec<(usize, bool)> {
    let mut ends = vec![(0, false)];
    let mut p = 0usize;
    loop {
        let (Some(&b0), Some(&b1)) = (stream.get(p), stream.get(p + 1)) else { return ends };
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hdr = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
        let Some(h) = stream.get(p..p + hdr) else { return ends };
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            8 => u64::from_be_bytes(h[2..10].try_into().expect("eight bytes")),
            _ => u64::from(b1 & 0x7f),
        };
        let end = (p + hdr) as u128 + u128::from(len);
        if end > stream.len() as u128 {
            return ends;
        }
        p = end as usize;
        ends.push((p, b0 & 0x0f == 0x8));
    }
}

/// Fuzz input: byte 0 = k (mod 8) chunk sizes in the next k bytes (cycled; 0 means an empty
/// chunk), then one byte of `stop_at_boundary` flags (cycled), then the stream.
pub fn ws_frames(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else { return };
    let k = usize::from(k % 8).min(rest.len());
    let (sizes, rest) = rest.split_at(k);
    let Some((&stops, stream)) = rest.split_first() else { return };
    let ends = frame_ends(stream);

    // Whole: everything is consumed.
    let mut whole = FrameTracker::default();
    assert_eq!(whole.advance(stream, false), stream.len());
    let last_end = ends.last().map_or(0, |e| e.0);
    assert_eq!(whole.at_boundary(), last_end == stream.len());

    // Split at the fuzzed points, sometimes asking to stop at the next boundary. All-zero sizes
    // would never progress: they mean "whole".
    let sizes = if sizes.iter().all(|&s| s == 0) { &[][..] } else { sizes };
    let mut t = FrameTracker::default();
    let mut pos = 0usize;
    // A stop call that returned 0 (at a boundary) is not repeated until bytes move again.
    let mut stalled = false;
    let mut step = 0usize;
    // Every cycle of at most 7 sizes has a non-empty chunk, and a stall lasts one such chunk:
    // 16 steps per byte bound the loop.
    while pos < stream.len() && step < 16 * stream.len() + 16 {
        let size = if sizes.is_empty() { stream.len() } else { usize::from(sizes[step % sizes.len()]) };
        let stop = stops & (1 << (step % 8)) != 0 && !stalled;
        step += 1;
        let chunk = &stream[pos..(pos + size).min(stream.len())];
        let got = t.advance(chunk, stop);
        assert!(got <= chunk.len(), "advance returned {got} for {} bytes", chunk.len());
        let want = if !stop {
            chunk.len()
        } else if ends.iter().any(|e| e.0 == pos) {
            0
        } else {
            ends.iter().find(|e| e.0 > pos && e.0 <= pos + chunk.len()).map_or(chunk.len(), |e| e.0 - pos)
        };
        assert_eq!(got, want, "advance(stream[{pos}..+{}], stop={stop})", chunk.len());
        stalled = if got > 0 { false } else { stalled || stop };
        pos += got;
        let ended = ends.iter().rev().find(|e| e.0 <= pos).copied().unwrap_or((0, false));
        assert_eq!(t.at_boundary(), ended.0 == pos, "at_boundary after {pos} bytes");
        assert_eq!(t.saw_close, ended.1, "saw_close after {pos} bytes");
    }
    assert_eq!(pos, stream.len(), "no progress after {step} steps");
    // The same state as feeding the stream whole.
    assert_eq!(format!("{t:?}"), format!("{whole:?}"), "split feeding disagrees with whole feeding");
}

// ---------------------------------------------------------------------------------------------
// lane_wire: the fast lane's HTTP/1.1 heads and chunked bodies (src/data/lane/wire.rs)

/// Limits as wide as the lane's header array.
pub const LANE_WIDE: wire::Limits =
    wire::Limits { uri: 16 * 1024, headers: wire::MAX_HEADERS, head: 64 * 1024, body: 64 * 1024 };

/// What the checks add to a forwarded request.
pub const LANE_ADDED: wire::Added<'static> =
    wire::Added { forwarded_for: b"192.0.2.7", proto: "https", mark: b"0123456789abcdef" };

/// The node header the response check writes.
pub const LANE_NODE_HEADER: (&str, &[u8]) = ("X-Kuzzle-Node", b"cluster_kuzzle_1");

pub const LANE_DATE: &[u8] = b"Tue, 01 Dec 2026 10:00:00 GMT";

/// Fuzz input: bytes read as a client's buffer (wide, fuzzed and exact limits), as a node's answer
/// (to a GET and to a HEAD), and as a chunked body (whole, in two pieces cut at `data[0] % len`,
/// and byte by byte).
pub fn lane_wire(data: &[u8]) {
    let taken = lane_request(data, LANE_WIDE);
    // Limits from the first byte: small enough to be hit.
    let k = usize::from(data.first().copied().unwrap_or(0));
    lane_request(data, wire::Limits { uri: k, headers: k % 16, head: 4 * k, body: k as u64 });
    // Limits are inclusive: exactly the head's sizes take it, one less anywhere does not.
    if let Some((uri, headers, head, body)) = taken {
        let exact = wire::Limits { uri, headers, head, body };
        assert!(lane_request(data, exact).is_some(), "a head at exactly the limits is not taken");
        // (A taken head has a target and a Host line: none of the three is 0.)
        let mut unders = vec![
            wire::Limits { uri: uri - 1, ..exact },
            wire::Limits { headers: headers - 1, ..exact },
            wire::Limits { head: head - 1, ..exact },
        ];
        if body > 0 {
            unders.push(wire::Limits { body: body - 1, ..exact });
        }
        for under in unders {
            assert!(lane_request(data, under).is_none(), "a head over {under:?} is taken");
        }
    }
    for head_only in [false, true] {
        if let Some(body) = lane_response(data, head_only) {
            lane_chunks(&data[body..]);
        }
    }
    lane_chunks(data);
}

/// The comma-separated tokens of every `name` header of `headers`, trimmed.
fn lane_tokens<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// One client buffer under `limits`: the taken head's (target, header lines, bytes, body bytes),
/// if taken.
pub fn lane_request(data: &[u8], limits: wire::Limits) -> Option<(usize, usize, usize, u64)> {
    let mut headers = wire::request_headers();
    let h = match wire::parse_request(data, &mut headers, limits) {
        Parsed::Partial => {
            assert!(data.len() <= limits.head, "{} bytes still partial over the {limits:?}", data.len());
            return None;
        }
        Parsed::Other => return None,
        Parsed::Take(h) => h,
    };
    assert!(h.len <= data.len(), "a head of {} bytes in {} bytes", h.len, data.len());
    assert!(h.len <= limits.head && h.count <= limits.headers && h.target.len() <= limits.uri, "{limits:?}: {h:?}");
    assert!(h.count <= wire::MAX_HEADERS);
    let bodiless = matches!(h.method, "GET" | "HEAD" | "OPTIONS");
    assert!(bodiless || matches!(h.method, "POST" | "PUT" | "PATCH" | "DELETE"), "method {:?} taken", h.method);
    assert_eq!(h.head_only(), h.method == "HEAD");
    assert_eq!(h.idempotent(), bodiless && !h.upgrade);
    assert!(
        h.target.starts_with('/')
            && h.target.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)),
        "target {:?} taken",
        h.target
    );
    let (p, q) = h.path_query();
    assert_eq!(q.map_or(p.to_string(), |q| format!("{p}?{q}")), h.target);
    let lines = &headers[..h.count];
    let hosts: Vec<&[u8]> = lines.iter().filter(|l| l.name.eq_ignore_ascii_case("host")).map(|l| l.value).collect();
    assert_eq!(hosts, [h.host], "exactly one Host, the one given");
    assert!(!h.host.contains(&b'@'), "userinfo in Host taken: {:?}", String::from_utf8_lossy(h.host));
    // A body only by one plain decimal Content-Length, within the limit.
    let lengths: Vec<&[u8]> =
        lines.iter().filter(|l| l.name.eq_ignore_ascii_case("content-length")).map(|l| l.value).collect();
    match lengths[..] {
        [] => assert_eq!(h.body, 0),
        [v] => {
            assert!(!bodiless, "{} with a Content-Length taken", h.method);
            assert!(!v.is_empty() && v.iter().all(u8::is_ascii_digit), "Content-Length {v:?} taken");
            assert_eq!(std::str::from_utf8(v).ok().and_then(|t| t.parse::<u64>().ok()), Some(h.body));
        }
        _ => panic!("{} Content-Length lines taken", lengths.len()),
    }
    assert!(h.body <= limits.body, "a body of {} over {limits:?}", h.body);
    for l in lines {
        let cl = l.name.eq_ignore_ascii_case("content-length");
        let up = h.upgrade && l.name.eq_ignore_ascii_case("upgrade");
        assert!(cl || up || !wire::listed(&wire::LONG_WAY, l.name), "header {:?} taken", l.name);
    }
    for t in lane_tokens(lines, "connection") {
        let up = h.upgrade && t.eq_ignore_ascii_case(b"upgrade");
        assert!(
            up || t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive"),
            "Connection {t:?} taken"
        );
    }
    assert_eq!(h.close, lane_tokens(lines, "connection").any(|t| t.eq_ignore_ascii_case(b"close")));
    // A WebSocket upgrade: a GET with `Connection: upgrade` and exactly one `Upgrade: websocket`,
    // never with a close.
    if h.upgrade {
        let ups: Vec<&[u8]> =
            lines.iter().filter(|l| l.name.eq_ignore_ascii_case("upgrade")).map(|l| l.value).collect();
        assert!(
            h.method == "GET" && !h.close && ups.len() == 1 && ups[0].trim_ascii().eq_ignore_ascii_case(b"websocket"),
            "an upgrade taken: {h:?}"
        );
        assert!(lane_tokens(lines, "connection").any(|t| t.eq_ignore_ascii_case(b"upgrade")), "{h:?}");
    } else {
        assert!(lines.iter().all(|l| !l.name.eq_ignore_ascii_case("upgrade")), "an Upgrade line taken: {h:?}");
    }
    // The head alone is judged the same: nothing after it counts, and no part of it is taken.
    {
        let mut again = wire::request_headers();
        match wire::parse_request(&data[..h.len], &mut again, limits) {
            Parsed::Take(g) => assert!(
                (g.method, g.target, g.host, g.close, g.upgrade, g.count, g.len, g.body)
                    == (h.method, h.target, h.host, h.close, h.upgrade, h.count, h.len, h.body),
                "the head alone reads {g:?}, with what follows {h:?}"
            ),
            other => panic!("the head alone is {other:?}"),
        }
        let mut part = wire::request_headers();
        let p = wire::parse_request(&data[..h.len - 1], &mut part, limits);
        assert!(!matches!(p, Parsed::Take(_)), "a head less its last byte is taken: {p:?}");
    }
    // As a node gets it, with the target as given and as a router may rewrite it.
    for target in [h.target, "/", p] {
        let mut out = Vec::new();
        wire::encode_request(&h, &headers, target, &LANE_ADDED, &mut out);
        let mut parsed = [httparse::EMPTY_HEADER; 2 * wire::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut parsed);
        let status = req.parse(&out);
        assert_eq!(status, Ok(httparse::Status::Complete(out.len())), "{:?}", String::from_utf8_lossy(&out));
        assert_eq!((req.method, req.path, req.version), (Some(h.method), Some(target), Some(1)));
        let kept: Vec<(&str, &[u8])> =
            lines.iter().filter(|l| !l.name.eq_ignore_ascii_case("connection")).map(|l| (l.name, l.value)).collect();
        let mut want = kept.clone();
        want.extend([
            ("x-forwarded-for", LANE_ADDED.forwarded_for),
            ("x-forwarded-proto", LANE_ADDED.proto.as_bytes()),
            ("x-forwarded-host", h.host),
            ("x-kuzzle-gateway", LANE_ADDED.mark),
        ]);
        if h.upgrade {
            want.push(("connection", b"upgrade"));
        }
        let got: Vec<(&str, &[u8])> = req.headers.iter().map(|l| (l.name, l.value)).collect();
        assert_eq!(got, want, "the node's header lines");
    }
    Some((h.target.len(), h.count, h.len, h.body))
}

/// One node buffer: where the body starts when the answer is chunked.
pub fn lane_response(data: &[u8], head_only: bool) -> Option<usize> {
    let mut headers = wire::response_headers();
    let a = match wire::parse_response(data, &mut headers, head_only) {
        NodeParsed::Partial | NodeParsed::Bad => return None,
        NodeParsed::Head(a) => a,
    };
    assert!(a.len <= data.len() && a.count <= wire::MAX_RESPONSE_HEADERS, "{a:?}");
    assert!((100..=999).contains(&a.status), "{a:?}");
    // HTTP/1.0 with a transfer coding has faulty framing (RFC 9112 6.1): never a head.
    let mut again = [httparse::EMPTY_HEADER; wire::MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut again);
    assert_eq!(resp.parse(data), Ok(httparse::Status::Complete(a.len)));
    if resp.version == Some(0) {
        assert!(resp.headers.iter().all(|l| !l.name.eq_ignore_ascii_case("transfer-encoding")), "{a:?}");
    }
    let lines = &headers[..a.count];
    let bodyless = head_only || a.status < 200 || a.status == 204 || a.status == 304;
    assert_eq!(a.framing == Framing::None, bodyless, "{a:?}");
    match a.framing {
        Framing::Length(n) => {
            // Every line and list element says n, in decimal digits only.
            let decimal = |t: &[u8]| {
                (!t.is_empty() && t.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(t).ok()?.parse::<u64>().ok())
                    .flatten()
            };
            let ls: Vec<Option<u64>> = lane_tokens(lines, "content-length").map(decimal).collect();
            assert!(!ls.is_empty() && ls.iter().all(|t| *t == Some(n)), "Length({n}) from {ls:?}");
            assert!(lines.iter().all(|l| !l.name.eq_ignore_ascii_case("transfer-encoding")));
        }
        Framing::Chunked => {
            let last = lane_tokens(lines, "transfer-encoding").filter(|t| !t.is_empty()).last();
            assert!(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")), "{a:?}");
        }
        Framing::UntilClose => {
            assert!(a.closes, "a body read until close leaves the connection open");
            // Neither framing header, or a last transfer coding other than chunked (RFC 9112 6.3):
            // the last Transfer-Encoding line's, as hyper's client reads it (an empty line too).
            match lines.iter().rev().find(|l| l.name.eq_ignore_ascii_case("transfer-encoding")) {
                Some(l) => {
                    let last = l.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).rfind(|t| !t.is_empty());
                    assert!(!last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")), "{a:?}");
                }
                None => assert!(lines.iter().all(|l| !l.name.eq_ignore_ascii_case("content-length")), "{a:?}"),
            }
        }
        Framing::None => {}
    }
    // The head alone reads the same.
    {
        let mut again = wire::response_headers();
        match wire::parse_response(&data[..a.len], &mut again, head_only) {
            NodeParsed::Head(g) => assert!(
                (g.status, g.reason, g.framing, g.closes, g.count, g.len)
                    == (a.status, a.reason, a.framing, a.closes, a.count, a.len),
                "the head alone reads {g:?}, with what follows {a:?}"
            ),
            other => panic!("the head alone is {other:?}"),
        }
    }
    for (node_header, close) in [(Some(LANE_NODE_HEADER), false), (None, true)] {
        let mut out = Vec::new();
        wire::encode_response(
            &a,
            &headers,
            &wire::Out { node_header, close, upgrade: None, date: LANE_DATE },
            &mut out,
        );
        lane_client_head(&a, lines, node_header, close, &out);
    }
    (a.framing == Framing::Chunked).then_some(a.len)
}

/// The client's answer head `out` written for node answer `a` (header lines `lines`).
fn lane_client_head(
    a: &wire::Answer<'_>,
    lines: &[httparse::Header<'_>],
    node_header: Option<(&str, &[u8])>,
    close: bool,
    out: &[u8],
) {
    let mut parsed = [httparse::EMPTY_HEADER; 2 * wire::MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut parsed);
    let status = resp.parse(out);
    assert_eq!(status, Ok(httparse::Status::Complete(out.len())), "{:?}", String::from_utf8_lossy(out));
    assert_eq!((resp.version, resp.code, resp.reason), (Some(1), Some(a.status), Some(a.reason)));
    let got = &*resp.headers;
    let values = |name: &str| -> Vec<&[u8]> {
        got.iter().filter(|l| l.name.eq_ignore_ascii_case(name)).map(|l| l.value).collect()
    };
    // The node's lines that pass: not hop-by-hop, not named by its Connection (Host always passes),
    // not the node header, and its length only when the answer keeps it (`drop_length`).
    let named = |name: &str| lane_tokens(lines, "connection").any(|t| t.eq_ignore_ascii_case(name.as_bytes()));
    let passes = |l: &&httparse::Header<'_>| {
        !wire::listed(&wire::HOP_BY_HOP, l.name)
            && (l.name.eq_ignore_ascii_case("host") || !named(l.name))
            && node_header.is_none_or(|(n, _)| !n.eq_ignore_ascii_case(l.name))
            && (!a.drop_length || !l.name.eq_ignore_ascii_case("content-length"))
    };
    let want: Vec<(&str, &[u8])> = lines.iter().filter(passes).map(|l| (l.name, l.value)).collect();
    let dated = want.iter().any(|(n, _)| n.eq_ignore_ascii_case("date"));
    let mut want = want;
    if let Some((n, v)) = node_header {
        want.push((n, v));
    }
    if !dated {
        want.push(("date", LANE_DATE));
    }
    let length = match a.framing {
        Framing::Length(n) => Some(n.to_string()),
        _ => None,
    };
    match (&length, a.framing) {
        (Some(n), _) => want.push(("content-length", n.as_bytes())),
        (None, Framing::Chunked | Framing::UntilClose) => want.push(("transfer-encoding", b"chunked")),
        _ => {}
    }
    if close {
        want.push(("connection", b"close"));
    }
    let got_lines: Vec<(&str, &[u8])> = got.iter().map(|l| (l.name, l.value)).collect();
    assert_eq!(got_lines, want, "the client's header lines for {a:?}");
    assert_eq!(values("connection").len(), usize::from(close));
    if a.framing != Framing::None {
        assert_eq!(values("content-length").len() + values("transfer-encoding").len(), 1, "one framing header");
    }
}

/// `bytes` fed to a fresh `Chunks` in pieces cut at `cuts` (`feed`'s promise to take no more than
/// it was given is a debug assertion there: on in the fuzzer and the tests).
pub fn lane_feed(bytes: &[u8], cuts: &[usize]) -> (Result<Option<usize>, wire::BadChunk>, u64) {
    wire::Chunks::in_pieces(bytes, cuts)
}

/// A chunked body: the same end and payload whole, in two pieces, byte by byte.
pub fn lane_chunks(data: &[u8]) {
    let Some(&first) = data.first() else {
        assert_eq!(lane_feed(data, &[]), (Ok(None), 0));
        return;
    };
    let whole = lane_feed(data, &[]);
    let cut = usize::from(first) % data.len();
    assert_eq!(lane_feed(data, &[cut]), whole, "cut at {cut}");
    let every: Vec<usize> = (1..data.len()).collect();
    assert_eq!(lane_feed(data, &every), whole, "byte by byte");
    let (end, payload) = whole;
    match end {
        Ok(Some(n)) => {
            assert!(n <= data.len() && payload <= n as u64);
            assert!(data[..n].ends_with(b"\r\n\r\n"), "a body ends with an empty line");
            // The body alone ends at the same byte.
            assert_eq!(lane_feed(&data[..n], &[]), (Ok(Some(n)), payload));
            if n < data.len() {
                // After its end, nothing more is taken.
                let mut c = wire::Chunks::default();
                assert_eq!(c.feed(&data[..n]), Ok(Some(n)));
                assert_eq!(c.feed(&data[n..]), Ok(Some(0)));
            }
        }
        Ok(None) | Err(_) => assert!(payload <= data.len() as u64),
    }
}
