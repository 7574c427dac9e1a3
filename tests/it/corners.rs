//! The protocol corners a hostile client or an unlucky timing finds, each as a class: the
//! keep-alive race (a pooled connection the node closed just as a request left), upgrades other
//! than WebSocket (h2c smuggling), half-closed clients, HTTP/2 streams reset after they reached a
//! node (a paced "rapid reset"), targets and authorities that must not reach a node, a node gone
//! silent (`retry_on_timeout`); and slow start for a node that comes back UP.
use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Write `bytes`, read until the peer closes (bounded by `T`).
async fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    if half_close {
        s.shutdown().await.expect("shutdown(SHUT_WR)");
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await.expect("closed in time");
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Read one request head from `s` (None: the peer closed first); its request line.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_string())
}

/// A node that answers the first request of each connection with a keep-alive 200, and closes a
/// connection without a byte when a second request comes on it: a node whose keep-alive timeout
/// fires just as the gateway reuses the connection. Counts the requests it answered (health
/// checks aside).
async fn racy_node() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let answered = Arc::new(AtomicUsize::new(0));
    let n = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let Some(line) = read_head(&mut s).await else { return };
                // Health checks aside.
                if !line.contains("/_plugin/cluster/health") {
                    n.fetch_add(1, Ordering::SeqCst);
                }
                let body = "{\"status\":200}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                // The next request on this connection: read, then closed unanswered.
                let _ = read_head(&mut s).await;
            });
        }
    });
    (addr, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_by_the_node_is_retried_fresh_also_by_prefix() {
    let (node, answered) = racy_node().await;
    let cfg = format!(
        "[health]\ninterval = \"60s\"\npassive = false\n[timeouts]\npool_idle = \"30s\"\n[[node]]\nname = \"racy\"\naddress = \"{node}\"\n"
    );
    let gw = gateway(&gateway_toml(&cfg)).await;
    for i in 0..4 {
        // By prefix: the one node there is; and balanced (one node, so the same one).
        let path = if i % 2 == 0 { "/racy/_now" } else { "/_now" };
        let r = get(gw.http_addr, path).await;
        assert_eq!(r.status, 200, "request {i} ({path}): {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(answered.load(Ordering::SeqCst), 4, "each request answered once");
    // HEAD and OPTIONS are as safe; a POST is not re-sent (the node may have run it). The POSTs
    // go on the fast lane as the GETs did, on its node connections: the first meets the one the
    // last GET left, closing; the second a fresh one, which the third then meets closing.
    let post = || request(gw.http_addr, "POST", "/racy/x", &[("content-length", "2")], Bytes::from_static(b"{}"));
    let (r0, r, r2) = (post().await, post().await, post().await);
    assert_eq!(
        (r0.status, r.status, r2.status),
        (502, 200, 502),
        "a POST on a racing connection gets the 502, the next one a fresh connection"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_reach_a_node() {
    let sim = Sim::start("h2c1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&sim]))).await;
    let smuggle = "GET /_sim/request HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                   Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(smuggle.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + T;
    let text = loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("answer in time").expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let t = String::from_utf8_lossy(&got).into_owned();
        if t.contains("\r\n\r\n") && t.trim_end().ends_with('}') {
            break t;
        }
    };
    assert_eq!(status_of(&text), 200, "served as a plain request: {text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).expect("JSON");
    let (_, _, h) = seen(&Resp { status: 200, headers: Default::default(), body: Bytes::from(body.to_string()) });
    for name in ["upgrade", "http2-settings"] {
        assert!(seen_header(&h, name).is_none(), "{name} reached the node: {h}");
    }
    assert!(seen_header(&h, "connection").is_none_or(|c| !c.to_ascii_lowercase().contains("upgrade")), "{h}");
    // The connection goes on as HTTP/1.1, not h2c.
    s.write_all(b"GET /_now HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await;
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&rest));
    // A WebSocket among the tokens is still a WebSocket.
    let mut w = ws(gw.http_addr, "/").await;
    assert_eq!(ws_node(&mut w, "w1").await, "h2c1");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_still_gets_its_answer() {
    let sim = Sim::start("hc1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&sim]))).await;
    post(sim.addr, "/_sim/latency/200").await;
    let r = exchange(gw.http_addr, b"GET /_now HTTP/1.1\r\nHost: gw.test\r\n\r\n", true).await;
    assert_eq!(status_of(&r), 200, "nc -N: {r:?}");
    let r = exchange(gw.http_addr, b"GET /_now HTTP/1.0\r\n\r\n", true).await;
    assert_eq!(status_of(&r), 200, "HTTP/1.0 health check: {r:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_and_authorities_that_must_not_reach_a_node_are_refused() {
    let sim = Sim::start("tg1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&sim]))).await;
    let a = gw.http_addr;
    for (what, req, want) in [
        ("* with GET", "GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
        (
            "userinfo in an absolute target",
            "GET http://u:p@a/_now HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            400,
        ),
        ("userinfo in Host", "GET /_now HTTP/1.1\r\nHost: u@a\r\nConnection: close\r\n\r\n", 400),
        ("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nConnection: close\r\n\r\n", 405),
    ] {
        let r = exchange(a, req.as_bytes(), false).await;
        assert_eq!(status_of(&r), want, "{what}: {r}");
        assert!(!r.to_ascii_lowercase().contains("x-kuzzle-node"), "{what} reached a node: {r}");
    }
    let r = exchange(a, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false).await;
    assert!(r.to_ascii_lowercase().contains("x-kuzzle-node: tg1"), "OPTIONS * goes to a node: {r}");
    gw.shutdown().await;
}

/// A self-signed pair, and the `[tls]` section serving it.
fn tls_section(tag: &str) -> String {
    let dir = scratch_dir(&format!("corners-{tag}"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key");
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

async fn tls_h2(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let c = tokio_rustls::TlsConnector::from(Arc::new(accept_any_cert_client(&[b"h2"])));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio::time::timeout(T, c.connect(name, tcp)).await.expect("handshake in time").expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s
}

/// One HTTP/2 request written frame by frame (the HPACK block given whole: what no client
/// library would send), and the `:status` of its answer, or None for a stream reset.
async fn raw_h2(addr: SocketAddr, hpack: &[u8]) -> Option<u16> {
    let mut s = tls_h2(addr).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let len = hpack.len() as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(hpack);
    s.write_all(&out).await.expect("write");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        // Frames: 9-byte header, then the payload.
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags, stream) = (buf[3], buf[4], u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]));
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match (kind, stream) {
                (4, 0) if flags & 1 == 0 => s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.expect("settings ack"),
                (1, 1) => {
                    // `:status` as hyper sends it: an indexed field of HPACK's static table.
                    let status = match payload.first().map(|b| b & 0x7f) {
                        Some(8) => 200,
                        Some(12) => 400,
                        Some(13) => 404,
                        Some(i) => 1000 + u16::from(i),
                        None => 0,
                    };
                    return Some(status);
                }
                (3, 1) | (7, _) => return None,
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("frames in time").expect("read");
        assert!(n > 0, "the gateway closed the HTTP/2 connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An HPACK literal field without indexing, its name one of the static table's (index < 15).
fn literal(index: u8, value: &str) -> Vec<u8> {
    let mut v = vec![index, value.len() as u8];
    v.extend_from_slice(value.as_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_without_a_path_or_with_userinfo_are_refused() {
    let sim = Sim::start("h2p", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section("h2p"), nodes_toml(&[&sim])))).await;
    let a = gw.tls_addr.expect("tls");
    // :method GET (static 2), :scheme https (7): no :path, no :authority.
    assert_eq!(raw_h2(a, &[0x82, 0x87]).await, Some(400), "no :path");
    // ... with :path / (4) and :authority (1) "user@localhost".
    let mut b = vec![0x82, 0x87, 0x84];
    b.extend(literal(1, "user@localhost"));
    assert_eq!(raw_h2(a, &b).await, Some(400), "userinfo in :authority");
    let mut b = vec![0x82, 0x87];
    b.extend(literal(4, "*"));
    b.extend(literal(1, "localhost"));
    assert_eq!(raw_h2(a, &b).await, Some(400), "* with GET");
    // The same without the faults is served.
    let mut b = vec![0x82, 0x87];
    b.extend(literal(4, "/_now"));
    b.extend(literal(1, "localhost"));
    assert_eq!(raw_h2(a, &b).await, Some(200));
    gw.shutdown().await;
}

/// A node that runs every request on `/hold/slow` for [`HOLD`] (as Kuzzle does, whether or not
/// the connection that brought it is still open) and answers the others at once; counts
/// requests running now, the most at once, and all, and tells each arrival.
struct HoldingNode {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

/// How long the holding node runs a slow request.
const HOLD: Duration = Duration::from_secs(8);

impl HoldingNode {
    async fn start() -> HoldingNode {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let n = HoldingNode {
            addr,
            held: Arc::default(),
            max: Arc::default(),
            seen: Arc::default(),
            arrived: Arc::new(Notify::new()),
        };
        let (held, max, seen, arrived) = (n.held.clone(), n.max.clone(), n.seen.clone(), n.arrived.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (held, max, seen, arrived) = (held.clone(), max.clone(), seen.clone(), arrived.clone());
                tokio::spawn(async move {
                    while let Some(line) = read_head(&mut s).await {
                        if line.contains("/slow") {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            seen.fetch_add(1, Ordering::SeqCst);
                            arrived.notify_waiters();
                            tokio::time::sleep(HOLD).await;
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        n
    }
}

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(tls_h2(addr).await).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("https://localhost{path}")).body(()).expect("request")
}

/// Open a slow stream, wait until the node has it (at most 300 ms: a stream the gateway holds
/// back never gets there), reset it. False once the connection is gone.
async fn reset_after_it_reached_the_node(send: &mut h2::client::SendRequest<Bytes>, node: &HoldingNode) -> bool {
    let Ok(ready) = tokio::time::timeout(T, send.clone().ready()).await else { return false };
    let Ok(mut s) = ready else { return false };
    let arrived = node.arrived.notified();
    tokio::pin!(arrived);
    arrived.as_mut().enable();
    let Ok((_resp, mut stream)) = s.send_request(h2_get("/hold/slow"), true) else { return false };
    let _ = tokio::time::timeout(Duration::from_millis(300), arrived).await;
    stream.send_reset(h2::Reason::CANCEL);
    *send = s;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_reset_after_reaching_a_node_hold_at_most_the_stream_limit() {
    let node = HoldingNode::start().await;
    let cfg = format!(
        "{}[health]\ninterval = \"60s\"\npassive = false\n[[node]]\nname = \"hold\"\naddress = \"{}\"\n",
        tls_section("rr1"),
        node.addr
    );
    let gw = gateway(&gateway_toml(&cfg)).await;
    let mut send = h2_client(gw.tls_addr.expect("tls")).await;
    // Paced: each slow stream is reset once it reached the node; a completed request between two
    // keeps the connection under the reset budget, so only the bound on the nodes is at work.
    const ROUNDS: usize = 150;
    for i in 0..ROUNDS {
        let s = tokio::time::timeout(T, send.clone().ready()).await.expect("ready in time");
        let mut s = s.expect("connection still open");
        let (resp, _) = s.send_request(h2_get("/hold/fast"), true).expect("send");
        let r = tokio::time::timeout(Duration::from_secs(15), resp).await.expect("answer in time").expect("answer");
        assert_eq!(r.status(), 200, "round {i}");
        assert!(reset_after_it_reached_the_node(&mut send, &node).await, "round {i}: connection gone");
    }
    let max = node.max.load(Ordering::SeqCst);
    println!("{ROUNDS} streams reset after reaching the node: at most {max} held there at once");
    assert!(
        max <= kuzzle_gateway::data::h2::MAX_CONCURRENT_STREAMS as usize,
        "{max} requests at the node from one connection"
    );
    assert!(max >= 100, "the test did not pile requests up ({max})");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_resetting_every_stream_is_cut_after_the_budget() {
    let node = HoldingNode::start().await;
    let cfg = format!(
        "{}[health]\ninterval = \"60s\"\npassive = false\n[[node]]\nname = \"hold\"\naddress = \"{}\"\n",
        tls_section("rr2"),
        node.addr
    );
    let gw = gateway(&gateway_toml(&cfg)).await;
    let mut send = h2_client(gw.tls_addr.expect("tls")).await;
    let budget = kuzzle_gateway::data::h2::RESET_BUDGET as usize;
    let mut cut_at = None;
    for i in 0..budget * 2 {
        if !reset_after_it_reached_the_node(&mut send, &node).await {
            cut_at = Some(i);
            break;
        }
    }
    let cut_at = cut_at.expect("the connection was never cut");
    assert!(cut_at > budget && cut_at <= budget + 20, "cut after {cut_at} resets (budget {budget})");
    let metrics = String::from_utf8_lossy(&get(gw.stats_addr, "/metrics").await.body).into_owned();
    assert!(metrics.contains("kuzzle_gateway_h2_reset_floods_total 1"), "counted");
    gw.shutdown().await;
}

/// A node that reads requests and never answers (gone silent; its health checks time out too).
async fn silent_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_timeout_sends_an_idempotent_request_to_another_node() {
    let sim = Sim::start("rt1", &[]);
    let silent = silent_node().await;
    let nodes = format!("{}[[node]]\nname = \"silent\"\naddress = \"{silent}\"\n", nodes_toml(&[&sim]));
    let base = "[timeouts]\nserver = \"300ms\"\n[health]\ninterval = \"60s\"\ntimeout = \"10s\"\npassive = false\n";
    for retry in [false, true] {
        let cfg = format!("{base}[balance]\nalgorithm = \"roundrobin\"\nretry_on_timeout = {retry}\n{nodes}");
        let gw = gateway(&gateway_toml(&cfg)).await;
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(get(gw.http_addr, "/_now").await.status);
        }
        let post = request(gw.http_addr, "POST", "/silent/x", &[("content-length", "0")], Bytes::new()).await;
        assert_eq!(post.status, 504, "a request by prefix has no other node");
        if retry {
            assert_eq!(codes, vec![200; 4], "retry_on_timeout: the silent node's share went to the other");
        } else {
            assert_eq!(
                codes.iter().filter(|c| **c == 504).count(),
                2,
                "roundrobin: half wait on the silent node: {codes:?}"
            );
        }
        gw.shutdown().await;
    }
}

/// Which node answered each of `n` balanced GETs.
async fn answers(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let r = c.send("GET", "/_now", &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
        v.push(r.node().unwrap_or("?").to_string());
    }
    v
}

async fn weight_of(stats: SocketAddr, node: &str) -> u64 {
    let v = get(stats, "/hastats;json").await.json();
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    nodes.iter().find(|n| n["name"] == node).and_then(|n| n["weight"].as_u64()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_node_that_comes_back_up() {
    let a = Sim::start("ss_a", &[]);
    let b = Sim::start("ss_b", &[]);
    for algorithm in ["roundrobin", "leastconn"] {
        let cfg = format!(
            "[balance]\nalgorithm = \"{algorithm}\"\n[health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\nslowstart = \"4s\"\n{}",
            nodes_toml(&[&a, &b])
        );
        let gw = gateway(&gateway_toml(&cfg)).await;
        assert_eq!(weight_of(gw.stats_addr, "ss_b").await, 100, "UP since start: no ramp");
        post(b.addr, "/_sim/ready/false").await;
        eventually(T, "ss_b DOWN", || async { (weight_of(gw.stats_addr, "ss_b").await == 0).then_some(()) }).await;
        post(b.addr, "/_sim/ready/true").await;
        eventually(T, "ss_b UP again", || async { (weight_of(gw.stats_addr, "ss_b").await > 0).then_some(()) }).await;
        let t0 = Instant::now();
        // Its share of 200 requests, at the start of the ramp and once it is over.
        let early = answers(gw.http_addr, 200).await;
        let early_at = t0.elapsed();
        let w_early = weight_of(gw.stats_addr, "ss_b").await;
        eventually(Duration::from_secs(8), "the ramp over", || async {
            (weight_of(gw.stats_addr, "ss_b").await == 100).then_some(())
        })
        .await;
        let late = answers(gw.http_addr, 200).await;
        let share = |v: &[String]| v.iter().filter(|n| *n == "ss_b").count();
        println!(
            "{algorithm}: ss_b took {} of 200 in the first {early_at:?} of a 4 s slow start (weight {w_early} then), {} of 200 after it",
            share(&early),
            share(&late)
        );
        assert!(share(&early) <= 40, "{algorithm}: early share {}", share(&early));
        assert!(w_early < 100, "{algorithm}: weight {w_early} during the ramp");
        assert!(share(&late) >= 80, "{algorithm}: share after the ramp {}", share(&late));
        gw.shutdown().await;
    }
}
