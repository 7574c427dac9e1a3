//! Unit tests of the fast lane's wire format: heads taken or not, heads written, answer framing, chunked bodies.

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers: owned summaries of what the parsers return (their results borrow a header array).

/// Limits far above every head of these tests.
const WIDE: Limits = Limits { uri: 8192, headers: 64, head: 64 * 1024, body: 64 * 1024 };

/// An owned [`Head`] and its header lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Taken {
    method: String,
    target: String,
    host: Vec<u8>,
    close: bool,
    upgrade: bool,
    count: usize,
    len: usize,
    body: u64,
    head_only: bool,
    idempotent: bool,
    headers: Vec<(String, Vec<u8>)>,
}

/// An owned [`Parsed`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judged {
    Partial,
    Other,
    Take(Taken),
}

fn judge_with(buf: &[u8], limits: Limits) -> Judged {
    let mut headers = request_headers();
    match parse_request(buf, &mut headers, limits) {
        Parsed::Partial => Judged::Partial,
        Parsed::Other => Judged::Other,
        Parsed::Take(h) => Judged::Take(Taken {
            method: h.method.to_string(),
            target: h.target.to_string(),
            host: h.host.to_vec(),
            close: h.close,
            upgrade: h.upgrade,
            count: h.count,
            len: h.len,
            body: h.body,
            head_only: h.head_only(),
            idempotent: h.idempotent(),
            headers: headers[..h.count].iter().map(|x| (x.name.to_string(), x.value.to_vec())).collect(),
        }),
    }
}

fn judge(buf: &[u8]) -> Judged {
    judge_with(buf, WIDE)
}

/// The head `buf` starts with, which the lane must take.
fn taken(buf: &[u8]) -> Taken {
    match judge(buf) {
        Judged::Take(t) => t,
        other => panic!("{:?} not taken: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// Assert that the lane leaves `buf` to hyper's path.
#[track_caller]
fn assert_other(buf: &[u8]) {
    assert_eq!(judge(buf), Judged::Other, "{:?}", String::from_utf8_lossy(buf));
}

/// A GET of `/` with `Host: example.com` and `extra` header lines (each ending in CRLF).
fn get_with(extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n").into_bytes()
}

/// The header lines of a head (parsed by httparse itself), in order.
fn lines_of_request(bytes: &[u8]) -> (String, String, Vec<(String, Vec<u8>)>) {
    let mut h = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut h);
    let n = req.parse(bytes).expect("a valid request head");
    assert_eq!(n, Status::Complete(bytes.len()), "the head is whole and ends the bytes");
    assert_eq!(req.version, Some(1));
    let lines = req.headers.iter().map(|x| (x.name.to_string(), x.value.to_vec())).collect();
    (req.method.unwrap_or_default().to_string(), req.path.unwrap_or_default().to_string(), lines)
}

/// An owned [`NodeParsed`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Partial,
    Bad,
    Head { status: u16, reason: String, framing: Framing, closes: bool, count: usize, len: usize },
}

fn node(buf: &[u8], head_only: bool) -> Node {
    let mut headers = response_headers();
    match parse_response(buf, &mut headers, head_only) {
        NodeParsed::Partial => Node::Partial,
        NodeParsed::Bad => Node::Bad,
        NodeParsed::Head(a) => Node::Head {
            status: a.status,
            reason: a.reason.to_string(),
            framing: a.framing,
            closes: a.closes,
            count: a.count,
            len: a.len,
        },
    }
}

/// A node's answer with these header lines (each ending in CRLF), for a GET.
fn answer(status_line: &str, lines: &str) -> Node {
    node(format!("{status_line}\r\n{lines}\r\n").as_bytes(), false)
}

/// The framing of a `200 OK` with these header lines, and whether it closes; `None` when Bad.
fn framing_of(lines: &str) -> Option<(Framing, bool)> {
    match answer("HTTP/1.1 200 OK", lines) {
        Node::Head { framing, closes, .. } => Some((framing, closes)),
        Node::Bad => None,
        Node::Partial => panic!("a whole head read as partial: {lines:?}"),
    }
}

const DATE: &[u8] = b"Thu, 01 Jan 2026 00:00:00 GMT";

/// The client's answer head for a node's `raw` head (`head_only`: the request was a HEAD).
fn client_head(raw: &str, head_only: bool, node_header: Option<(&str, &[u8])>, close: bool) -> String {
    let mut headers = response_headers();
    let NodeParsed::Head(a) = parse_response(raw.as_bytes(), &mut headers, head_only) else {
        panic!("not a head: {raw:?}")
    };
    let mut out = Vec::new();
    encode_response(&a, &headers, &Out { node_header, close, upgrade: None, date: DATE }, &mut out);
    String::from_utf8(out).expect("ASCII head")
}

/// The status, reason and header lines of a response head (parsed by httparse), checking it is
/// whole.
fn lines_of_response(head: &str) -> (u16, String, Vec<(String, String)>) {
    let mut h = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut h);
    assert_eq!(resp.parse(head.as_bytes()), Ok(Status::Complete(head.len())), "{head:?}");
    assert_eq!(resp.version, Some(1), "always written as HTTP/1.1");
    let lines =
        resp.headers.iter().map(|x| (x.name.to_string(), String::from_utf8_lossy(x.value).into_owned())).collect();
    (resp.code.unwrap_or_default(), resp.reason.unwrap_or_default().to_string(), lines)
}

/// The values of header `name` (any case) in `lines`.
fn values<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    lines.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

fn chunks_in_pieces(bytes: &[u8], cuts: &[usize]) -> (Result<Option<usize>, BadChunk>, u64) {
    Chunks::in_pieces(bytes, cuts)
}

fn chunks_whole(bytes: &[u8]) -> (Result<Option<usize>, BadChunk>, u64) {
    Chunks::in_pieces(bytes, &[])
}

// ---------------------------------------------------------------------------------------------
// parse_request: what the lane takes

#[test]
fn a_plain_get_is_taken() {
    let buf = b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com:7512\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n";
    let t = taken(buf);
    assert_eq!(t.method, "GET");
    assert_eq!(t.target, "/a/b?x=1&y=%20");
    assert_eq!(t.host, b"example.com:7512");
    assert!(!t.close);
    assert!(!t.head_only);
    assert_eq!(t.count, 3);
    assert_eq!(t.len, buf.len());
    assert_eq!(
        t.headers,
        vec![
            ("Host".to_string(), b"example.com:7512".to_vec()),
            ("Accept".to_string(), b"*/*".to_vec()),
            ("User-Agent".to_string(), b"t".to_vec()),
        ]
    );
}

#[test]
fn path_query_splits_at_the_first_question_mark() {
    let mut headers = request_headers();
    let Parsed::Take(h) = parse_request(b"GET /p/q?a=1?b HTTP/1.1\r\nHost: h\r\n\r\n", &mut headers, WIDE) else {
        panic!("not taken")
    };
    assert_eq!(h.path_query(), ("/p/q", Some("a=1?b")));
    let mut headers = request_headers();
    let Parsed::Take(h) = parse_request(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n", &mut headers, WIDE) else {
        panic!("not taken")
    };
    assert_eq!(h.path_query(), ("/p", None));
}

#[test]
fn a_pipelined_request_is_left_in_the_buffer() {
    let first = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
    let second = b"HEAD /two HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".as_slice();
    let buf = [first, second].concat();
    let t = taken(&buf);
    assert_eq!((t.target.as_str(), t.len), ("/one", first.len()), "the head ends where the next one starts");
    let t2 = taken(&buf[t.len..]);
    assert_eq!((t2.method.as_str(), t2.target.as_str(), t2.host.as_slice()), ("HEAD", "/two", &b"b"[..]));
    assert!(t2.close && t2.head_only);
    assert_eq!(t2.len, second.len());
    // A partial second request after a whole first one: the first is taken all the same.
    let t = taken(&[first, &second[..10]].concat());
    assert_eq!(t.len, first.len());
}

#[test]
fn head_and_options_are_taken_other_methods_are_not() {
    assert!(taken(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n").head_only);
    assert!(!taken(b"OPTIONS /x HTTP/1.1\r\nHost: h\r\n\r\n").head_only);
    for m in ["CONNECT", "TRACE", "get", "Get", "head", "post", "FOO"] {
        assert_other(format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
    }
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let t = taken(format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        assert_eq!((t.body, t.head_only), (0, false), "{m} without a length has no body");
    }
}

#[test]
fn a_short_content_length_body_is_taken_with_its_length() {
    let post = |extra: &str| format!("POST /_query HTTP/1.1\r\nHost: h\r\n{extra}\r\n{{\"a\":1}}").into_bytes();
    let t = taken(&post("Content-Length: 7\r\nContent-Type: application/json\r\n"));
    assert_eq!(
        (t.body, t.len, t.count),
        (7, post("Content-Length: 7\r\nContent-Type: application/json\r\n").len() - 7, 3)
    );
    assert_eq!(taken(&post("content-length: 0\r\n")).body, 0);
    assert_eq!(taken(&post("Content-Length: 000012\r\n")).body, 12);
    // Exactly the limit is taken; one byte more, hyper's path streams it.
    let at = |n: u64| format!("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    assert!(matches!(judge_with(&at(100), Limits { body: 100, ..WIDE }), Judged::Take(t) if t.body == 100));
    assert_eq!(judge_with(&at(101), Limits { body: 100, ..WIDE }), Judged::Other);
    // Anything but one plain decimal: hyper's path judges it (400, or its own reading).
    for v in ["", " ", "+7", "-1", "7, 7", "7,7", "0x10", "1e3", "7 7", "99999999999999999999", "１"] {
        assert_other(&post(&format!("Content-Length: {v}\r\n")));
    }
    assert_other(&post("Content-Length: 7\r\nContent-Length: 7\r\n"));
    assert_other(&post("Content-Length: 7\r\nTransfer-Encoding: chunked\r\n"));
    assert_other(&post("Transfer-Encoding: chunked\r\n"));
    assert_other(&post("Content-Length: 7\r\nExpect: 100-continue\r\n"));
    // A body-less method with a length goes the long way too.
    assert_other(&get_with("Content-Length: 0\r\n"));
}

#[test]
fn connection_close_and_keep_alive() {
    assert!(taken(&get_with("Connection: close\r\n")).close);
    assert!(taken(&get_with("connection:  CLOSE  \r\n")).close);
    assert!(!taken(&get_with("Connection: keep-alive\r\n")).close);
    assert!(!taken(&get_with("Connection: Keep-Alive\r\n")).close);
    assert!(taken(&get_with("Connection: keep-alive\r\nConnection: close\r\n")).close);
    assert!(!taken(&get_with("")).close);
}

#[test]
fn connection_naming_anything_else_goes_the_long_way() {
    for v in ["upgrade", "Upgrade", "x-foo", "close, x-foo", "keep-alive, close", "close,", "te", "", "host"] {
        assert_other(&get_with(&format!("Connection: {v}\r\n")));
    }
    assert_other(&get_with("Connection: close\r\nConnection: x-foo\r\n"));
}

#[test]
fn a_websocket_upgrade_is_taken_and_marked() {
    for extra in [
        "Connection: Upgrade\r\nUpgrade: websocket\r\n",
        "connection: upgrade\r\nupgrade:  WebSocket \r\n",
        // Firefox's.
        "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive\r\nConnection: upgrade\r\n",
    ] {
        let t = taken(&get_with(&format!(
            "{extra}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )));
        assert!(t.upgrade, "{extra:?}");
        assert!(!t.close && !t.idempotent, "an upgrade is never sent twice: {extra:?}");
    }
    let plain = taken(&get_with(""));
    assert!(!plain.upgrade && plain.idempotent);
}

#[test]
fn any_other_upgrade_goes_the_long_way() {
    for extra in [
        // Half an upgrade.
        "Connection: Upgrade\r\n",
        "Upgrade: websocket\r\n",
        "Connection: keep-alive\r\nUpgrade: websocket\r\n",
        // Another protocol, a list, a version, twice.
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket/13\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade\r\nUpgrade:\r\n",
        // With a close, or naming another header.
        "Connection: Upgrade\r\nConnection: close\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade, x-foo\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade,\r\nUpgrade: websocket\r\n",
    ] {
        assert_other(&get_with(extra));
    }
    for method in ["HEAD", "OPTIONS", "POST", "DELETE"] {
        assert_other(
            format!("{method} / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").as_bytes(),
        );
    }
    assert_other(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
}

/// `name` with every other letter in upper case, starting with the first.
fn mixed_case(name: &str) -> String {
    name.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c }).collect()
}

#[test]
fn long_way_headers_go_to_hyper_in_any_case() {
    for name in LONG_WAY {
        for n in [name.to_string(), name.to_ascii_uppercase(), mixed_case(name)] {
            // First, last, or alone after Host.
            assert_other(&get_with(&format!("{n}: 0\r\n")));
            assert_other(format!("GET / HTTP/1.1\r\n{n}: 1\r\nHost: h\r\nAccept: */*\r\n\r\n").as_bytes());
        }
    }
}

#[test]
fn names_that_only_look_like_long_way_ones_are_taken() {
    for n in [
        "tea",
        "t",
        "content-lengths",
        "x-forwarded-port",
        "x-forwarded",
        "forwarded",
        "expect-ct",
        "upgrade-insecure-requests",
        "x-kuzzle-gateway2",
        "content-type",
        "accept-encoding",
    ] {
        let t = taken(&get_with(&format!("{n}: 1\r\n")));
        assert_eq!(t.count, 2, "{n}");
    }
}

#[test]
fn host_exactly_once_and_without_userinfo() {
    assert_other(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: user@example.com\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: user:pw@example.com:80\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: @\r\n\r\n");
    assert_eq!(taken(b"GET / HTTP/1.1\r\nHOST: Example.COM\r\n\r\n").host, b"Example.COM");
}

#[test]
fn only_http_1_1() {
    assert_other(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n");
    assert_other(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n");
    assert_other(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n");
    assert_other(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n");
    assert_other(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_other(b"GET /\r\n\r\n");
}

#[test]
fn only_origin_form_targets_of_plain_bytes() {
    for target in [
        "http://example.com/",
        "http://example.com",
        "example.com:80",
        "*",
        "a/b",
        "/a\"b",
        "/a<b>",
        "/a{b}",
        "/a|b",
        "/a\\b",
        "/a^b",
        "/a`b",
        "/a#frag",
        "/a[b]",
        "/caf\u{e9}",
    ] {
        assert_other(format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
    }
    assert_other(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    // A space, a raw non-ASCII byte (not UTF-8), a control byte.
    assert_other(b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_other(b"GET /a\xff HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_other(b"GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_other(b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n");
    // Every byte the lane does take.
    let all = "/azAZ09-._~!$&'()*+,;=:@/?%2F";
    assert_eq!(taken(format!("GET {all} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).target, all);
}

#[test]
fn malformed_heads_go_to_hyper() {
    assert_other(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHo(st: h\r\n\r\n");
    assert_other(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n");
    assert_other(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert_other(b"GET / HTTP/1.1\r\nHost: h\r\n\rX\r\n");
}

#[test]
fn the_uri_limit() {
    let target = format!("/{}", "a".repeat(99));
    let buf = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(judge_with(buf.as_bytes(), Limits { uri: 100, ..WIDE }), Judged::Take(_)));
    assert_eq!(judge_with(buf.as_bytes(), Limits { uri: 99, ..WIDE }), Judged::Other);
}

#[test]
fn the_header_count_limit() {
    let extra: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let buf = get_with(&extra);
    assert_eq!(taken(&buf).count, 10);
    assert!(matches!(judge_with(&buf, Limits { headers: 10, ..WIDE }), Judged::Take(_)));
    assert_eq!(judge_with(&buf, Limits { headers: 9, ..WIDE }), Judged::Other);
}

#[test]
fn more_header_lines_than_the_array_go_to_hyper() {
    let wide = Limits { headers: 1000, ..WIDE };
    let extra: String = (0..MAX_HEADERS - 1).map(|i| format!("X-{i}: v\r\n")).collect();
    assert!(matches!(judge_with(&get_with(&extra), wide), Judged::Take(t) if t.count == MAX_HEADERS));
    let extra: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(judge_with(&get_with(&extra), wide), Judged::Other);
    // Even before the head is whole: the lines are already too many.
    let partial = get_with(&extra);
    assert_eq!(judge_with(&partial[..partial.len() - 2], wide), Judged::Other);
}

#[test]
fn the_head_limit() {
    let buf = get_with("Accept: */*\r\n");
    let n = buf.len();
    assert!(matches!(judge_with(&buf, Limits { head: n, ..WIDE }), Judged::Take(t) if t.len == n));
    assert_eq!(judge_with(&buf, Limits { head: n - 1, ..WIDE }), Judged::Other);
    // The limit is on the head, not on the buffer: pipelined bytes after it do not count.
    let two = [buf.as_slice(), buf.as_slice()].concat();
    assert!(matches!(judge_with(&two, Limits { head: n, ..WIDE }), Judged::Take(t) if t.len == n));
}

#[test]
fn a_partial_head_waits_under_the_limit_only() {
    let buf = get_with("Accept: */*\r\nConnection: close\r\n");
    for k in 0..buf.len() {
        let part = &buf[..k];
        assert_eq!(judge(part), Judged::Partial, "prefix {:?}", String::from_utf8_lossy(part));
        assert_eq!(judge_with(part, Limits { head: k, ..WIDE }), Judged::Partial, "at the limit, {k} bytes");
        if k > 0 {
            assert_eq!(judge_with(part, Limits { head: k - 1, ..WIDE }), Judged::Other, "over the limit, {k} bytes");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// encode_request: what a node gets

const ADDED: Added<'static> = Added { forwarded_for: b"10.1.2.3", proto: "http", mark: b"00000000deadbeef" };

fn node_request(buf: &[u8], target: &str) -> Vec<u8> {
    let mut headers = request_headers();
    let Parsed::Take(h) = parse_request(buf, &mut headers, WIDE) else { panic!("not taken") };
    let mut out = Vec::new();
    encode_request(&h, &headers, target, &ADDED, &mut out);
    out
}

#[test]
fn encode_request_writes_the_node_request() {
    let buf = b"GET /cluster_kuzzle_1/_query?a=1 HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\nAccept: */*\r\nX-Empty:\r\n\r\n";
    let out = node_request(buf, "/_query?a=1");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "GET /_query?a=1 HTTP/1.1\r\nHost: gw.example\r\nAccept: */*\r\nX-Empty: \r\n\
         x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: gw.example\r\n\
         x-kuzzle-gateway: 00000000deadbeef\r\n\r\n"
    );
    let (method, target, lines) = lines_of_request(&out);
    assert_eq!((method.as_str(), target.as_str()), ("GET", "/_query?a=1"));
    assert_eq!(lines.len(), 7);
}

#[test]
fn encode_request_drops_every_connection_line_and_keeps_the_rest() {
    let buf =
        b"HEAD / HTTP/1.1\r\nCONNECTION: keep-alive\r\nHost: h\r\nconnection: close\r\nCookie: a=b; c=\xe9\r\n\r\n";
    let out = node_request(buf, "/");
    let (method, target, lines) = lines_of_request(&out);
    assert_eq!((method.as_str(), target.as_str()), ("HEAD", "/"));
    assert!(lines.iter().all(|(n, _)| !n.eq_ignore_ascii_case("connection")), "{lines:?}");
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["Host", "Cookie", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-kuzzle-gateway"]
    );
    assert_eq!(lines[1].1, b"a=b; c=\xe9", "values pass byte for byte");
    assert_eq!(lines[4].1, b"h");
}

#[test]
fn encode_request_asks_the_node_for_the_websocket() {
    let buf =
        b"GET /cluster_kuzzle_2/ HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (method, target, lines) = lines_of_request(&node_request(buf, "/"));
    assert_eq!((method.as_str(), target.as_str()), ("GET", "/"));
    let named = |n: &str| -> Vec<&[u8]> {
        lines.iter().filter(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_slice()).collect()
    };
    assert_eq!(named("connection"), [&b"upgrade"[..]], "one Connection line: the gateway's");
    assert_eq!(named("upgrade"), [&b"websocket"[..]]);
    assert_eq!(named("sec-websocket-key"), [&b"dGhlIHNhbXBsZSBub25jZQ=="[..]]);
    assert_eq!(named("sec-websocket-version"), [&b"13"[..]]);
}

// ---------------------------------------------------------------------------------------------
// parse_response: a node's answer and its framing

#[test]
fn a_response_with_a_length() {
    let head = "HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n";
    let buf = format!("{head}hello");
    assert_eq!(
        node(buf.as_bytes(), false),
        Node::Head {
            status: 404,
            reason: "Not Found".into(),
            framing: Framing::Length(5),
            closes: false,
            count: 2,
            len: head.len()
        }
    );
    assert_eq!(framing_of("content-length: 0\r\n"), Some((Framing::Length(0), false)));
    assert_eq!(
        framing_of("Content-Length: 9999999999999999999\r\n"),
        Some((Framing::Length(9_999_999_999_999_999_999), false))
    );
}

#[test]
fn content_lengths_must_agree() {
    assert_eq!(framing_of("Content-Length: 5, 5\r\n"), Some((Framing::Length(5), false)));
    assert_eq!(framing_of("Content-Length: 5,5 , 5\r\n"), Some((Framing::Length(5), false)));
    assert_eq!(framing_of("Content-Length: 5\r\ncontent-length: 5\r\n"), Some((Framing::Length(5), false)));
    assert_eq!(framing_of("Content-Length: 5\r\nContent-Length: 6\r\n"), None);
    assert_eq!(framing_of("Content-Length: 5, 6\r\n"), None);
    assert_eq!(framing_of("Content-Length: 5\r\nContent-Length: 5, 7\r\n"), None);
}

#[test]
fn a_malformed_content_length_is_bad() {
    for v in
        ["", "+5", "-1", "0x5", "5 5", "5,", ",5", "5;", "1e3", "five", "18446744073709551616", "00000000000000000001"]
    {
        assert_eq!(framing_of(&format!("Content-Length: {v}\r\n")), None, "{v:?}");
    }
}

#[test]
fn chunked_transfer_encoding() {
    for te in ["chunked", "Chunked", "CHUNKED", "gzip, chunked", "gzip,chunked", "chunked ,", " gzip , chunked "] {
        assert_eq!(framing_of(&format!("Transfer-Encoding: {te}\r\n")), Some((Framing::Chunked, false)), "{te:?}");
    }
    assert_eq!(
        framing_of("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
        Some((Framing::Chunked, false))
    );
    // Transfer-Encoding wins over Content-Length (RFC 9112 6.3, rule 3).
    assert_eq!(framing_of("Content-Length: 10\r\nTransfer-Encoding: chunked\r\n"), Some((Framing::Chunked, false)));
}

#[test]
fn a_last_coding_other_than_chunked_reads_until_close() {
    // RFC 9112 6.3 rule 4, as hyper's client reads it; Transfer-Encoding wins over a length.
    for te in ["gzip", "chunked, gzip", "identity", "", "chunkedx", "x-chunked"] {
        assert_eq!(framing_of(&format!("Transfer-Encoding: {te}\r\n")), Some((Framing::UntilClose, true)), "{te:?}");
    }
    assert_eq!(
        framing_of("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
        Some((Framing::UntilClose, true))
    );
    assert_eq!(framing_of("Transfer-Encoding: gzip\r\nContent-Length: 3\r\n"), Some((Framing::UntilClose, true)));
    // The last line decides, an empty one too (as hyper's client reads it).
    assert_eq!(framing_of("Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n"), Some((Framing::UntilClose, true)));
    // A bad length is bad all the same.
    assert_eq!(framing_of("Transfer-Encoding: gzip\r\nContent-Length: x\r\n"), None);
}

#[test]
fn neither_length_nor_chunked_reads_until_close() {
    assert_eq!(framing_of(""), Some((Framing::UntilClose, true)));
    assert_eq!(framing_of("Connection: keep-alive\r\n"), Some((Framing::UntilClose, true)));
}

#[test]
fn answers_without_a_body() {
    let none = |status_line: &str, lines: &str, head_only: bool| match node(
        format!("{status_line}\r\n{lines}\r\n").as_bytes(),
        head_only,
    ) {
        Node::Head { framing, closes, .. } => (framing, closes),
        other => panic!("{status_line:?} {lines:?}: {other:?}"),
    };
    assert_eq!(none("HTTP/1.1 200 OK", "Content-Length: 5\r\n", true), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 200 OK", "Transfer-Encoding: chunked\r\n", true), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 200 OK", "", true), (Framing::None, false), "a HEAD's answer never reads until close");
    assert_eq!(none("HTTP/1.1 200 OK", "Transfer-Encoding: gzip\r\n", true), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 204 No Content", "", false), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 304 Not Modified", "Content-Length: 100\r\n", false), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 100 Continue", "", false), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket\r\n", false), (Framing::None, false));
    assert_eq!(none("HTTP/1.1 103 Early Hints", "Link: </a>\r\n", false), (Framing::None, false));
    // 205 and the other 2xx have a body.
    assert_eq!(none("HTTP/1.1 205 Reset Content", "Content-Length: 0\r\n", false), (Framing::Length(0), false));
}

#[test]
fn when_the_node_closes() {
    assert!(answer_closes("HTTP/1.0 200 OK", "Content-Length: 1\r\n"));
    assert!(!answer_closes("HTTP/1.0 200 OK", "Content-Length: 1\r\nConnection: keep-alive\r\n"));
    assert!(!answer_closes("HTTP/1.0 200 OK", "Content-Length: 1\r\nConnection: Keep-Alive\r\n"));
    assert!(answer_closes("HTTP/1.0 204 No Content", ""));
    assert!(answer_closes("HTTP/1.1 200 OK", "Content-Length: 1\r\nConnection: close\r\n"));
    assert!(answer_closes("HTTP/1.1 200 OK", "Content-Length: 1\r\nConnection: Keep-Alive, CLOSE\r\n"));
    assert!(answer_closes("HTTP/1.1 200 OK", "Content-Length: 1\r\nConnection: x\r\nConnection: close\r\n"));
    assert!(!answer_closes("HTTP/1.1 200 OK", "Content-Length: 1\r\nConnection: closed\r\n"));
    assert!(!answer_closes("HTTP/1.1 200 OK", "Content-Length: 1\r\n"));
}

fn answer_closes(status_line: &str, lines: &str) -> bool {
    match answer(status_line, lines) {
        Node::Head { closes, .. } => closes,
        other => panic!("{status_line:?} {lines:?}: {other:?}"),
    }
}

#[test]
fn partial_and_broken_answers() {
    let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    for k in 0..whole.len() {
        assert_eq!(node(&whole[..k], false), Node::Partial, "prefix of {k} bytes");
    }
    assert_eq!(node(b"HTTP/2 200 OK\r\n\r\n", false), Node::Bad);
    assert_eq!(node(b"HTTP/1.1 20 OK\r\n\r\n", false), Node::Bad);
    assert_eq!(node(b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", false), Node::Bad);
    assert_eq!(node(b"HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n", false), Node::Bad);
    assert_eq!(node(b"<html>hello</html>\r\n\r\n", false), Node::Bad);
    let many: String = (0..MAX_RESPONSE_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(node(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes(), false), Node::Bad);
}

#[test]
fn an_http_1_0_answer_with_transfer_encoding_is_bad() {
    // RFC 9112 6.1: its framing is faulty (hyper's client refuses it too), whatever it says.
    for lines in [
        "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: keep-alive\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked\r\n",
    ] {
        assert_eq!(answer("HTTP/1.0 200 OK", lines), Node::Bad, "{lines:?}");
    }
    assert_eq!(node(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true), Node::Bad, "to a HEAD too");
}

#[test]
fn a_status_under_100_is_bad() {
    // No interim answer to skip: hyper's client refuses it too.
    for status in ["000", "099", "042"] {
        assert_eq!(answer(&format!("HTTP/1.1 {status} X"), "Content-Length: 3\r\n"), Node::Bad, "{status}");
    }
    assert!(matches!(answer("HTTP/1.1 100 Continue", ""), Node::Head { status: 100, framing: Framing::None, .. }));
}

#[test]
fn statuses_over_599_are_framed_as_final_answers() {
    assert!(matches!(
        answer("HTTP/1.1 600 X", "Content-Length: 3\r\n"),
        Node::Head { status: 600, framing: Framing::Length(3), .. }
    ));
    assert!(matches!(
        answer("HTTP/1.1 999 X", ""),
        Node::Head { status: 999, framing: Framing::UntilClose, closes: true, .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// encode_response: the client's answer head

#[test]
fn encode_response_writes_the_whole_head() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
               Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n";
    assert_eq!(
        client_head(raw, false, Some(("X-Kuzzle-Node", b"n1")), false),
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Kuzzle-Node: n1\r\n\
         date: Thu, 01 Jan 2026 00:00:00 GMT\r\ncontent-length: 2\r\n\r\n"
    );
}

#[test]
fn encode_response_strips_hop_by_hop_headers() {
    let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKEEP-ALIVE: timeout=5\r\n\
               Proxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nProxy-Authorization: x\r\n\
               TE: trailers\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAA\r\nx-secret: 1\r\nX-Kept: 2\r\n\r\n";
    let (status, reason, lines) = lines_of_response(&client_head(raw, false, None, false));
    assert_eq!((status, reason.as_str()), (200, "OK"));
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["X-Kept", "date", "transfer-encoding"]);
}

#[test]
fn a_switch_to_websocket_keeps_its_upgrade_pair_and_nothing_else_hop_by_hop() {
    let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade, X-Secret\r\n\
               Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\r\n";
    let mut headers = response_headers();
    let NodeParsed::Head(a) = parse_response(raw.as_bytes(), &mut headers, false) else { panic!("not a head") };
    assert_eq!((a.status, a.framing), (101, Framing::None));
    let mut out = Vec::new();
    let o = Out { node_header: Some(("X-Kuzzle-Node", b"n1")), close: true, upgrade: Some(b"WebSocket"), date: DATE };
    encode_response(&a, &headers, &o, &mut out);
    let (status, reason, lines) = lines_of_response(std::str::from_utf8(&out).expect("ASCII"));
    assert_eq!((status, reason.as_str()), (101, "Switching Protocols"));
    let lines: Vec<(&str, &str)> = lines.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        lines,
        [
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("X-Kuzzle-Node", "n1"),
            ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ("connection", "upgrade"),
            ("upgrade", "WebSocket"),
        ],
        "no close, no length, the node's hop-by-hop lines gone"
    );
}

#[test]
fn headers_named_by_connection_go_but_never_host() {
    let raw = "HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: Host , X-B\r\nHost: h\r\nX-A: 1\r\nx-b: 2\r\n\
               X-C: 3\r\nContent-Length: 0\r\n\r\n";
    let (_, _, lines) = lines_of_response(&client_head(raw, false, None, false));
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Host", "X-C", "date", "content-length"]);
}

#[test]
fn the_node_header_is_written_over_the_nodes_own() {
    let raw = "HTTP/1.1 200 OK\r\nx-kuzzle-node: forged\r\nX-KUZZLE-NODE: again\r\nContent-Length: 0\r\n\r\n";
    let (_, _, lines) =
        lines_of_response(&client_head(raw, false, Some(("X-Kuzzle-Node", b"cluster_kuzzle_1")), false));
    assert_eq!(values(&lines, "x-kuzzle-node"), ["cluster_kuzzle_1"]);
    // Without a node header, the node's own pass.
    let (_, _, lines) = lines_of_response(&client_head(raw, false, None, false));
    assert_eq!(values(&lines, "x-kuzzle-node"), ["forged", "again"]);
}

#[test]
fn date_only_when_the_node_sent_none() {
    let raw = "HTTP/1.1 200 OK\r\nDATE: Wed, 31 Dec 2025 23:59:59 GMT\r\nContent-Length: 0\r\n\r\n";
    let (_, _, lines) = lines_of_response(&client_head(raw, false, None, false));
    assert_eq!(values(&lines, "date"), ["Wed, 31 Dec 2025 23:59:59 GMT"]);
    let (_, _, lines) =
        lines_of_response(&client_head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, None, false));
    assert_eq!(values(&lines, "date"), [std::str::from_utf8(DATE).unwrap_or_default()]);
}

#[test]
fn the_gateway_writes_the_framing() {
    // Length: its own content-length, once, for a list or repeated lines.
    for lines in ["Content-Length: 7\r\n", "content-length: 7, 7\r\n", "Content-Length: 7\r\nContent-Length: 007\r\n"] {
        let raw = format!("HTTP/1.1 200 OK\r\n{lines}\r\n");
        let (_, _, out) = lines_of_response(&client_head(&raw, false, None, false));
        assert_eq!(values(&out, "content-length"), ["7"], "{lines:?}");
        assert!(values(&out, "transfer-encoding").is_empty());
    }
    // Chunked (whatever codings before it) and until-close: chunked to the client, no length.
    for lines in ["Transfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n", "", "X: y\r\n"] {
        let raw = format!("HTTP/1.1 200 OK\r\n{lines}\r\n");
        let (_, _, out) = lines_of_response(&client_head(&raw, false, None, false));
        assert_eq!(values(&out, "transfer-encoding"), ["chunked"], "{lines:?}");
        assert!(values(&out, "content-length").is_empty(), "{lines:?}");
    }
}

#[test]
fn a_bodyless_answer_keeps_the_nodes_length() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    let (_, _, out) = lines_of_response(&client_head(raw, true, None, false));
    assert_eq!(values(&out, "content-length"), ["1234"]);
    assert!(values(&out, "transfer-encoding").is_empty());
    // A 304 or 204 to a GET loses it, as on hyper's path (RFC 9110 8.6: no length on a 204).
    let raw = "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"x\"\r\n\r\n";
    let (status, _, out) = lines_of_response(&client_head(raw, false, None, false));
    assert_eq!(status, 304);
    assert!(values(&out, "content-length").is_empty());
    let raw = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
    let (_, _, out) = lines_of_response(&client_head(raw, false, None, false));
    assert!(values(&out, "content-length").is_empty());
    // A HEAD answered with Transfer-Encoding beside a length: the length goes (hyper's path).
    let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
    let (_, _, out) = lines_of_response(&client_head(raw, true, None, false));
    assert!(values(&out, "content-length").is_empty());
    // A HEAD answered chunked: no framing header at all.
    let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (_, _, out) = lines_of_response(&client_head(raw, true, None, false));
    assert!(values(&out, "transfer-encoding").is_empty() && values(&out, "content-length").is_empty());
}

#[test]
fn connection_close_when_asked() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (_, _, out) = lines_of_response(&client_head(raw, false, None, true));
    assert_eq!(values(&out, "connection"), ["close"]);
    assert_eq!(out.last().map(|(n, _)| n.as_str()), Some("connection"));
    // The node's close is the node's: the client's connection goes on unless asked.
    let (_, _, out) = lines_of_response(&client_head(raw, false, None, false));
    assert!(values(&out, "connection").is_empty());
}

#[test]
fn the_status_line_is_the_nodes_in_http_1_1() {
    let head = client_head("HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", false, None, false);
    assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head:?}");
    let head = client_head("HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n", false, None, false);
    assert!(head.starts_with("HTTP/1.1 299 \r\n"), "{head:?}");
    let head = client_head("HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", false, None, false);
    assert_eq!(lines_of_response(&head).0, 999);
}

#[test]
fn three_digit_statuses() {
    assert_eq!(itoa_u16(100), *b"100");
    assert_eq!(itoa_u16(204), *b"204");
    assert_eq!(itoa_u16(999), *b"999");
    assert_eq!(itoa_u16(7), *b"007");
}

// ---------------------------------------------------------------------------------------------
// encode_own: the gateway's own answer

#[test]
fn encode_own_writes_a_whole_answer() {
    let body = br#"{"status":503}"#;
    let mut out = Vec::new();
    encode_own(http::StatusCode::SERVICE_UNAVAILABLE, body, Some(5), true, DATE, &mut out);
    let text = String::from_utf8(out).expect("ASCII");
    let (head, rest) = text.split_at(text.find("\r\n\r\n").map_or(0, |i| i + 4));
    assert_eq!(rest.as_bytes(), body);
    let (status, reason, lines) = lines_of_response(head);
    assert_eq!((status, reason.as_str()), (503, "Service Unavailable"));
    assert_eq!(values(&lines, "content-type"), ["application/json"]);
    assert_eq!(values(&lines, "retry-after"), ["5"]);
    assert_eq!(values(&lines, "content-length"), [body.len().to_string().as_str()]);
    assert_eq!(values(&lines, "connection"), ["close"]);
    assert_eq!(values(&lines, "date").len(), 1);

    let mut out = Vec::new();
    encode_own(http::StatusCode::NOT_FOUND, b"", None, false, DATE, &mut out);
    let text = String::from_utf8(out).expect("ASCII");
    let (status, _, lines) = lines_of_response(&text);
    assert_eq!(status, 404);
    assert_eq!(values(&lines, "content-length"), ["0"]);
    assert!(values(&lines, "retry-after").is_empty() && values(&lines, "connection").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Chunks: a chunked body followed byte by byte

/// Bodies that end, with their payload sizes: extensions, trailers, CR and LF in the data, both
/// cases of hex, fifteen digits.
fn bodies() -> Vec<(Vec<u8>, u64)> {
    let long = [b"aB\r\n".as_slice(), &[b'x'; 0xab], b"\r\n0\r\n\r\n"].concat();
    let zeros = format!("{}3\r\nabc\r\n00\r\n\r\n", "0".repeat(14)).into_bytes();
    vec![
        (b"0\r\n\r\n".to_vec(), 0),
        (b"5\r\nhello\r\n0\r\n\r\n".to_vec(), 5),
        (
            b"5;name=value\r\nhello\r\nA ; x=\"y z\"\t;q\r\n0123456789\r\n0;last\r\nX-T: 1\r\nY: \xe9\r\n\r\n".to_vec(),
            15,
        ),
        (b"1\r\n\n\r\n2\r\n\r\n\r\n0\r\n\r\n".to_vec(), 3),
        (long, 0xab),
        (zeros, 3),
        (b"3\r\n\r\n\r\r\n0\r\nA: b\r\n\r\n".to_vec(), 3),
    ]
}

#[test]
fn whole_bodies_end_where_they_end() {
    for (body, payload) in bodies() {
        assert_eq!(chunks_whole(&body), (Ok(Some(body.len())), payload), "{:?}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn every_split_gives_the_same_end_and_payload() {
    for (body, payload) in bodies() {
        let with_next = [body.as_slice(), b"HTTP/1.1 200 OK\r\n\r\n"].concat();
        for bytes in [body.as_slice(), with_next.as_slice()] {
            for cut in 0..=bytes.len() {
                assert_eq!(
                    chunks_in_pieces(bytes, &[cut]),
                    (Ok(Some(body.len())), payload),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(bytes)
                );
            }
            let every: Vec<usize> = (1..bytes.len()).collect();
            assert_eq!(chunks_in_pieces(bytes, &every), (Ok(Some(body.len())), payload), "byte by byte");
        }
    }
}

#[test]
fn an_unfinished_body_asks_for_more() {
    let body = &bodies()[2].0;
    for k in 0..body.len() {
        let (end, _) = chunks_whole(&body[..k]);
        assert_eq!(end, Ok(None), "prefix of {k} bytes");
    }
    // Payload counted as it passes, before the chunk is whole.
    assert_eq!(chunks_whole(b"10\r\n0123"), (Ok(None), 4));
}

#[test]
fn bytes_after_the_end_are_not_consumed() {
    let body = b"3\r\nabc\r\n0\r\n\r\n";
    let bytes = [body.as_slice(), b"3\r\nxyz\r\n0\r\n\r\n"].concat();
    let mut c = Chunks::default();
    assert_eq!(c.feed(&bytes), Ok(Some(body.len())));
    assert!(body.len() < bytes.len());
    assert_eq!(c.payload, 3);
    // Done stays done: nothing more is taken.
    assert_eq!(c.feed(b"more"), Ok(Some(0)));
    assert_eq!(c.feed(b""), Ok(Some(0)));
    assert_eq!(c.payload, 3);
}

#[test]
fn malformed_bodies_are_errors() {
    for bad in [
        &b"g\r\n"[..],
        b"\r\n",
        b";ext\r\n",
        b" 5\r\n",
        b"-5\r\n",
        b"0x5\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\rhello",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\r",
        b"5\r\nhello\r\n0\r\n\n",
        b"0\r\nX: 1\n",
        b"0\r\nX: 1\r\r",
        b"5;a\nb\r\n",
        b"5;\x7f\r\n",
        b"5;\x01\r\n",
        b"0\r\n\r\r",
    ] {
        assert_eq!(chunks_whole(bad).0, Err(BadChunk), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn at_most_fifteen_hex_digits() {
    let mut c = Chunks::default();
    let f15 = "f".repeat(15);
    assert_eq!(c.feed(format!("{f15}\r\n").as_bytes()), Ok(None), "15 digits");
    assert_eq!(c.feed(b"abc"), Ok(None));
    assert_eq!(c.payload, 3);
    assert_eq!(chunks_whole(format!("1{}\r\n", "0".repeat(15)).as_bytes()).0, Err(BadChunk), "16 digits");
    assert_eq!(chunks_whole(format!("{}\r\n\r\n", "0".repeat(16)).as_bytes()).0, Err(BadChunk), "16 zeros");
    assert_eq!(chunks_whole(format!("{f15}f").as_bytes()).0, Err(BadChunk), "16 digits, line unfinished");
    // A 15-digit size with an extension is still 15 digits.
    assert_eq!(chunks_whole(format!("{f15};x=1\r\n").as_bytes()).0, Ok(None));
}

#[test]
fn trailers_are_bounded() {
    let body = |sizes: &[usize]| {
        let mut b = b"0\r\n".to_vec();
        for &n in sizes {
            b.extend(std::iter::repeat_n(b'x', n));
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b
    };
    let at = body(&[MAX_TRAILERS]);
    assert_eq!(chunks_whole(&at).0, Ok(Some(at.len())));
    assert_eq!(chunks_whole(&body(&[MAX_TRAILERS + 1])).0, Err(BadChunk));
    // The bound is on all the trailer lines together, whatever their split.
    let split = body(&[MAX_TRAILERS / 2, MAX_TRAILERS / 2]);
    assert_eq!(chunks_whole(&split).0, Ok(Some(split.len())));
    let over = body(&[MAX_TRAILERS / 2, MAX_TRAILERS / 2 + 1]);
    assert_eq!(chunks_whole(&over).0, Err(BadChunk));
    assert_eq!(chunks_in_pieces(&over, &[10, MAX_TRAILERS]).0, Err(BadChunk));
}

#[test]
fn junk_after_a_chunk_size_is_an_error() {
    // RFC 9112 7.1.1: after the size, only spaces or tabs (BWS) then `;` or the line end.
    for bad in [&b"1 0\r\nx\r\n0\r\n\r\n"[..], b"5 6\r\n", b"5\tx\r\n", b"5 \t =\r\n", b"5 a;b\r\n"] {
        assert_eq!(chunks_whole(bad).0, Err(BadChunk), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn whitespace_after_a_chunk_size_is_fine() {
    let body = b"5 ;a=b\r\nhello\r\n3 \t \r\nabc\r\n0\t;z\r\n\r\n";
    assert_eq!(chunks_whole(body), (Ok(Some(body.len())), 8));
    for cut in 0..=body.len() {
        assert_eq!(chunks_in_pieces(body, &[cut]), (Ok(Some(body.len())), 8), "cut at {cut}");
    }
}

// ---------------------------------------------------------------------------------------------
// chunk_header and digits

#[test]
fn chunk_headers_in_lower_case_hex() {
    let mut out = Vec::new();
    chunk_header(0xab, &mut out);
    chunk_header(1, &mut out);
    chunk_header(65536, &mut out);
    assert_eq!(out, b"ab\r\n1\r\n10000\r\n");
    // What chunk_header writes, Chunks reads.
    let mut body = Vec::new();
    chunk_header(3, &mut body);
    body.extend_from_slice(b"abc\r\n0\r\n\r\n");
    assert_eq!(chunks_whole(&body), (Ok(Some(body.len())), 3));
}

#[test]
fn decimal_lengths() {
    assert_eq!(digits("0"), Some(0));
    assert_eq!(digits("12"), Some(12));
    assert_eq!(digits("9999999999999999999"), Some(9_999_999_999_999_999_999));
    for bad in ["", "+1", "-1", " 1", "1 ", "1_0", "10000000000000000000", "a"] {
        assert_eq!(digits(bad), None, "{bad:?}");
    }
}

/// The access log writes a lane target as it is (`access_log::Target::Plain`): no byte JSON would
/// escape may pass.
#[test]
fn no_target_byte_needs_json_escaping() {
    for b in 0..=255u8 {
        if target_byte(b) {
            assert!(b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f, "byte {b:#x}");
        }
    }
}
