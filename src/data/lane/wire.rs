//! Data plane, fast lane: the HTTP/1.1 heads it takes, read and written as bytes (pure: no I/O);
//! anything unusual is told apart and left to hyper's path; a node's answer framed (RFC 9112 6.3).

use httparse::{Header, Status, EMPTY_HEADER};

use crate::util::tokens;

/// Header lines the fast lane reads in a request (more: hyper's path, which counts them against
/// `[limits] headers`).
pub const MAX_HEADERS: usize = 64;

/// Header lines read in a node's answer (hyper's client default).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// An empty header array for [`parse_request`].
pub fn request_headers<'b>() -> [Header<'b>; MAX_HEADERS] {
    [EMPTY_HEADER; MAX_HEADERS]
}

/// An empty header array for [`parse_response`].
pub fn response_headers<'b>() -> [Header<'b>; MAX_RESPONSE_HEADERS] {
    [EMPTY_HEADER; MAX_RESPONSE_HEADERS]
}

/// The `[limits]` a request must be under to take the fast lane (over them, hyper's path answers
/// 414 or 431 in Kuzzle's envelope).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `[limits] uri`: the request target's length.
    pub uri: usize,
    /// `[limits] headers`: header lines.
    pub headers: usize,
    /// `[limits] request_head`: the head's bytes.
    pub head: usize,
    /// `[balance] resend_body`: the longest `Content-Length` body the lane reads whole (a longer
    /// one is streamed by hyper's path).
    pub body: u64,
}

/// What a client's buffer holds.
#[derive(Debug)]
pub enum Parsed<'b> {
    /// Not a whole head yet, and under the limits.
    Partial,
    /// Not for the fast lane: a chunked or long body, an upgrade other than a plain WebSocket
    /// one, HTTP/1.0, a malformed or
    /// over-limit head, a header the gateway must look at (its loop mark, `X-Forwarded-*`, `Expect`...). hyper's
    /// path reads it from the same bytes and answers it.
    Other,
    /// A head the fast lane forwards as it is (`headers[..count]` hold its lines).
    Take(Head<'b>),
}

/// A request head the fast lane forwards: a body-less GET, HEAD or OPTIONS (a GET may ask for a
/// WebSocket), or a POST, PUT, PATCH or DELETE with a short `Content-Length` body (or none), in
/// origin form.
#[derive(Debug)]
pub struct Head<'b> {
    /// `GET`, `HEAD`, `OPTIONS`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'b str,
    /// The target as sent (origin form: starts with `/`).
    pub target: &'b str,
    /// The one `Host` value (the node's `X-Forwarded-Host`).
    pub host: &'b [u8],
    /// The client asked to close after this answer (`Connection: close`).
    pub close: bool,
    /// A GET asking for a WebSocket (`Connection: upgrade` and `Upgrade: websocket`, nothing
    /// else in either): a `101` answer turns the connection into a tunnel.
    pub upgrade: bool,
    /// Header lines in the array.
    pub count: usize,
    /// Bytes of the head, blank line included: where the body (or the next request) starts.
    pub len: usize,
    /// Bytes of the body after the head (its `Content-Length`; 0 without).
    pub body: u64,
}

impl Head<'_> {
    /// A GET, HEAD or OPTIONS (body-less): sent again whatever happened to a first try. Not an
    /// upgrade: a node that read one may have opened a session for it (as on hyper's path).
    pub fn idempotent(&self) -> bool {
        !self.upgrade && matches!(self.method, "GET" | "HEAD" | "OPTIONS")
    }

    /// A HEAD request: its answer has no body whatever its headers say.
    pub fn head_only(&self) -> bool {
        self.method == "HEAD"
    }

    /// The path and the query of the target.
    pub fn path_query(&self) -> (&str, Option<&str>) {
        match self.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.target, None),
        }
    }
}

/// Bytes a target may hold on the fast lane: RFC 3986's unreserved, sub-delims, `:`, `@`, `/`,
/// `?` and `%` (percent-encodings are checked by the router). Anything else, even what hyper
/// would take, goes the long way. The access log copies such a target without escaping it.
fn target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Request headers that send a request the long way: framing and upgrades, hop-by-hop headers
/// other than `Connection`, and the headers the gateway itself adds or checks.
pub const LONG_WAY: [&str; 15] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
    "x-kuzzle-gateway",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Is `name` one of `names` (lower case), in any letter case?
pub fn listed(names: &[&str], name: &str) -> bool {
    names.iter().any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
}

/// Read a request head from `buf` and judge it (see [`Parsed`]).
pub fn parse_request<'b>(buf: &'b [u8], headers: &mut [Header<'b>; MAX_HEADERS], limits: Limits) -> Parsed<'b> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() <= limits.head => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Parsed::Other };
    let count = req.headers.len();
    if len > limits.head || count > limits.headers || target.len() > limits.uri {
        return Parsed::Other;
    }
    // Methods that may carry a body take one given by a single plain `Content-Length`.
    let may_body = match method {
        "GET" | "HEAD" | "OPTIONS" => false,
        "POST" | "PUT" | "PATCH" | "DELETE" => true,
        _ => return Parsed::Other,
    };
    if !target.starts_with('/') || !target.bytes().all(target_byte) {
        return Parsed::Other;
    }
    let mut host = None;
    let mut close = false;
    let mut body = None;
    // `Connection: upgrade` and `Upgrade: websocket` seen (both needed, on a GET).
    let (mut conn_upgrade, mut websocket) = (false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            if host.is_some() || h.value.contains(&b'@') {
                return Parsed::Other;
            }
            host = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            // Tokens `keep-alive`, `close` or `upgrade`: any other names headers to drop (the
            // long way). One token is the common case: no split.
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if v.eq_ignore_ascii_case(b"upgrade") {
                conn_upgrade = true;
            } else if !v.eq_ignore_ascii_case(b"keep-alive") {
                for t in tokens(v) {
                    if t.eq_ignore_ascii_case(b"upgrade") {
                        conn_upgrade = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        return Parsed::Other;
                    }
                }
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            // One line naming exactly `websocket`; a list, a version or another protocol (`h2c`)
            // is hyper's path's to judge.
            if websocket || method != "GET" || !h.value.trim_ascii().eq_ignore_ascii_case(b"websocket") {
                return Parsed::Other;
            }
            websocket = true;
        } else if may_body && h.name.eq_ignore_ascii_case("content-length") {
            // Digits only, once (a list, a sign or a second line: hyper's path judges it).
            let v = h.value;
            if body.is_some() || v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Parsed::Other;
            }
            body = Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        } else if listed(&LONG_WAY, h.name) {
            return Parsed::Other;
        }
    }
    let Some(host) = host else { return Parsed::Other };
    let body = body.unwrap_or(0);
    if body > limits.body {
        return Parsed::Other;
    }
    // Half an upgrade (either header alone), or one that also asks to close: hyper's path.
    if conn_upgrade != websocket || (websocket && close) {
        return Parsed::Other;
    }
    Parsed::Take(Head { method, target, host, close, upgrade: websocket, count, len, body })
}

/// What the gateway adds to every request it forwards.
pub struct Added<'a> {
    /// `X-Forwarded-For`: the client's address.
    pub forwarded_for: &'a [u8],
    /// `X-Forwarded-Proto`.
    pub proto: &'a str,
    /// The gateway's loop mark (`X-Kuzzle-Gateway`).
    pub mark: &'a [u8],
}

/// The request as a node gets it, into `out`: the target rewritten, `Connection` left out (the
/// node connection is the gateway's; `Connection: upgrade` for a WebSocket, whose `Upgrade`
/// line goes on as sent), `X-Forwarded-*` and the loop mark added.
pub fn encode_request(head: &Head<'_>, headers: &[Header<'_>], target: &str, added: &Added<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in &headers[..head.count] {
        if h.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        line(out, h.name.as_bytes(), h.value);
    }
    line(out, b"x-forwarded-for", added.forwarded_for);
    line(out, b"x-forwarded-proto", added.proto.as_bytes());
    line(out, b"x-forwarded-host", head.host);
    line(out, b"x-kuzzle-gateway", added.mark);
    if head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A node's answer head.
#[derive(Debug)]
pub struct Answer<'b> {
    /// The status code.
    pub status: u16,
    /// The reason phrase, passed on as the node wrote it.
    pub reason: &'b str,
    /// How its body is delimited.
    pub framing: Framing,
    /// The node closes the connection after it (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`): not pooled.
    pub closes: bool,
    /// Its `Content-Length` goes (as on hyper's path): the body is framed otherwise, or it is a
    /// 1xx, 204 or 304 to anything but a HEAD, or `Transfer-Encoding` came beside it.
    pub drop_length: bool,
    /// Header lines in the array.
    pub count: usize,
    /// Bytes of the head.
    pub len: usize,
}

/// How a node's body ends (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD request, 1xx, 204, 304.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked: relayed as it comes, its end found by [`Chunks`].
    Chunked,
    /// Neither: the body ends when the node closes (sent on chunked to the client).
    UntilClose,
}

/// What a node's buffer holds.
#[derive(Debug)]
pub enum NodeParsed<'b> {
    /// Not a whole head yet.
    Partial,
    /// Not HTTP, an ambiguous length, HTTP/1.0 with a transfer coding: the node broke it.
    Bad,
    /// A head.
    Head(Answer<'b>),
}

/// Read a node's answer head from `buf`; `head_only`: the request was a HEAD.
pub fn parse_response<'b>(
    buf: &'b [u8],
    headers: &mut [Header<'b>; MAX_RESPONSE_HEADERS],
    head_only: bool,
) -> NodeParsed<'b> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return NodeParsed::Partial,
        Err(_) => return NodeParsed::Bad,
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else { return NodeParsed::Bad };
    // A status under 100 is no status (hyper's client refuses it too).
    if status < 100 {
        return NodeParsed::Bad;
    }
    let reason = resp.reason.unwrap_or("");
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let (mut close, mut keep_alive) = (false, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // Several lines or a list must all say the same number.
            for v in tokens(h.value) {
                let Some(n) = std::str::from_utf8(v).ok().and_then(digits) else {
                    return NodeParsed::Bad;
                };
                if length.is_some_and(|l| l != n) {
                    return NodeParsed::Bad;
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; another last coding cannot be delimited here.
            let last = tokens(h.value).rfind(|t| !t.is_empty());
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // HTTP/1.0 with Transfer-Encoding: faulty framing (RFC 9112 6.1; hyper's client refuses it).
    if version == 0 && chunked.is_some() {
        return NodeParsed::Bad;
    }
    let framing = if head_only || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            // Another coding last: the body ends with the close (RFC 9112 6.3, as hyper reads it).
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let closes = close || (version == 0 && !keep_alive) || framing == Framing::UntilClose;
    let drop_length = framing != Framing::None
        || chunked.is_some()
        || (!head_only && (status < 200 || status == 204 || status == 304));
    NodeParsed::Head(Answer { status, reason, framing, closes, drop_length, count: resp.headers.len(), len })
}

/// A decimal length: digits only (no sign, no space), at most 19 of them.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Response headers never passed on: hop-by-hop ones (RFC 9110 7.6.1) and the framing the gateway
/// writes itself.
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Is `name` one of the headers a `Connection` value of `headers` names (hop-by-hop too)?
fn named_by_connection(headers: &[Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// How the client's answer is written.
pub struct Out<'a> {
    /// `[gateway] node_header` and this node's name (written over the node's own).
    pub node_header: Option<(&'a str, &'a [u8])>,
    /// Close after this answer (`Connection: close`).
    pub close: bool,
    /// A `101` to a WebSocket request: the `Upgrade` value sent back, with `Connection: upgrade`.
    pub upgrade: Option<&'a [u8]>,
    /// Today's `Date` value, written when the node sent none.
    pub date: &'a [u8],
}

/// The client's answer head, into `out`: the node's status and headers less the hop-by-hop ones
/// and those its `Connection` names; the framing the gateway sends with (`Content-Length`, or
/// chunked for a chunked body or one that ends with the node's close).
pub fn encode_response(a: &Answer<'_>, headers: &[Header<'_>], o: &Out<'_>, out: &mut Vec<u8>) {
    let headers = &headers[..a.count];
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa_u16(a.status);
    out.extend_from_slice(code.as_mut_slice());
    out.push(b' ');
    out.extend_from_slice(a.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    // Does a `Connection` value name headers? Most say only `keep-alive` or `close`: then no
    // header is looked up in it (that cost ~6 % of a request).
    let names = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).any(|h| {
        tokens(h.value)
            .any(|t| !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")))
    });
    let mut dated = false;
    for h in headers {
        let n = h.name;
        if listed(&HOP_BY_HOP, n) || (names && !n.eq_ignore_ascii_case("host") && named_by_connection(headers, n)) {
            continue;
        }
        // The gateway writes the length itself, but for a HEAD's answer, whose length describes
        // the resource.
        if a.drop_length && n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if o.node_header.is_some_and(|(name, _)| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        dated |= n.eq_ignore_ascii_case("date");
        line(out, n.as_bytes(), h.value);
    }
    if let Some((name, value)) = o.node_header {
        line(out, name.as_bytes(), value);
    }
    if !dated {
        line(out, b"date", o.date);
    }
    match a.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(crate::util::decimal(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if let Some(u) = o.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        line(out, b"upgrade", u);
    } else if o.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Three ASCII digits of a status code (100-999; httparse reads exactly three).
fn itoa_u16(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [b'0' + (n / 100) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

/// The gateway's own answer (Kuzzle's envelope) into `out`.
pub fn encode_own(
    status: http::StatusCode,
    body: &[u8],
    retry_after: Option<u64>,
    close: bool,
    date: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    if let Some(s) = retry_after {
        line(out, b"retry-after", crate::util::decimal(s, &mut [0; 20]));
    }
    line(out, b"content-length", crate::util::decimal(body.len() as u64, &mut [0; 20]));
    line(out, b"date", date);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A chunked body followed as it is relayed: where it ends, and its payload bytes. Strict: sizes
/// in hex (at most 15 digits), CRLF line ends, trailers under [`MAX_TRAILERS`] bytes.
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
    /// Payload bytes seen (the counters' bytes out).
    pub payload: u64,
    /// Trailer and chunk-extension bytes seen (bounded together by [`MAX_TRAILERS`]).
    trailers: usize,
}

/// Most trailer bytes after a chunked body.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a size line's first digit.
    #[default]
    Start,
    /// In a size line: its value so far, its digits, and where: digits, then spaces or tabs (BWS),
    /// then `;` and extensions.
    Size {
        value: u64,
        digits: u8,
        at: SizeAt,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In a trailer line (`len` bytes so far); the empty line ends the body.
    Trailer {
        len: usize,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Where a size line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeAt {
    Digits,
    Space,
    Ext,
}

/// A chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

impl Chunks {
    /// Follow `bytes` as if they came in pieces cut at `cuts` (increasing offsets), from a fresh
    /// state: where the body ended (an offset into `bytes`) and its payload. What a relay sees of
    /// a body whatever its reads; the unit tests and the `lane_wire` fuzz check compare cuttings.
    pub fn in_pieces(bytes: &[u8], cuts: &[usize]) -> (Result<Option<usize>, BadChunk>, u64) {
        let mut c = Chunks::default();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&bytes.len())) {
            match c.feed(&bytes[from..to]) {
                Ok(Some(n)) => {
                    // `feed`'s promise, checked wherever tests and the fuzzer run this.
                    debug_assert!(n <= to - from, "feed ended after {n} of {} bytes", to - from);
                    return (Ok(Some(from + n)), c.payload);
                }
                Ok(None) => {}
                Err(e) => return (Err(e), c.payload),
            }
            from = to;
        }
        (Ok(None), c.payload)
    }

    /// Follow `bytes`; `Some(n)`: the body ended after `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Start => match hex(b) {
                    Some(d) => Size { value: u64::from(d), digits: 1, at: SizeAt::Digits },
                    None => return Err(BadChunk),
                },
                Size { value, digits, at } => match (at, b, hex(b)) {
                    (_, b'\r', _) => SizeLf { value },
                    (SizeAt::Digits, _, Some(d)) => {
                        if digits >= 15 {
                            return Err(BadChunk);
                        }
                        Size { value: value * 16 + u64::from(d), digits: digits + 1, at }
                    }
                    (SizeAt::Digits | SizeAt::Space, b' ' | b'\t', _) => Size { value, digits, at: SizeAt::Space },
                    (SizeAt::Digits | SizeAt::Space, b';', _) => Size { value, digits, at: SizeAt::Ext },
                    (SizeAt::Ext, _, _) if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 => {
                        // Extensions are bounded like trailers (hyper: 16 KiB).
                        self.trailers += 1;
                        if self.trailers > MAX_TRAILERS {
                            return Err(BadChunk);
                        }
                        Size { value, digits, at }
                    }
                    _ => return Err(BadChunk),
                },
                SizeLf { value } => match b {
                    b'\n' if value == 0 => Trailer { len: 0 },
                    b'\n' => Data(value),
                    _ => return Err(BadChunk),
                },
                Data(left) => {
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.payload += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Start,
                DataCr | DataLf => return Err(BadChunk),
                Trailer { len } => match b {
                    b'\r' => TrailerLf { empty: len == 0 },
                    b'\n' => return Err(BadChunk),
                    _ => {
                        self.trailers += 1;
                        if self.trailers > MAX_TRAILERS {
                            return Err(BadChunk);
                        }
                        Trailer { len: len + 1 }
                    }
                },
                TrailerLf { empty } => match b {
                    b'\n' if empty => {
                        self.state = Done;
                        return Ok(Some(i + 1));
                    }
                    b'\n' => Trailer { len: 0 },
                    _ => return Err(BadChunk),
                },
                Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok(if self.state == Done { Some(i) } else { None })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A chunk header for `n` bytes of a body that ends with its node's close (`{n:x}\r\n`).
pub fn chunk_header(n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
}

#[cfg(test)]
mod tests;
