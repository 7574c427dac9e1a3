//! The fast lane (src/data/lane): a connection that leaves it mid-way with its bytes, every
//! framing of a node's answer relayed the same with the lane on and off, its idle timeout, and
//! long bodies moved with splice(2).
use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A node that answers each request by its path (see the match) on keep-alive connections; `/echo`
/// answers with the head it received.
async fn framing_node() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    fake_node(|mut c| async move {
        while let Some(req) = read_request(&mut c).await {
            let text = String::from_utf8_lossy(&req).into_owned();
            let line = text.lines().next().unwrap_or_default().to_string();
            let target = line.split(' ').nth(1).unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default().to_string();
            let cl = |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let answer = match path.as_str() {
                "/cl" => cl("plain body"),
                // More than a small client window holds, less than one write of the lane.
                "/big" => cl(&"b".repeat(14_000)),
                "/echo" => cl(&text),
                "/line" => cl(&line),
                "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".into(),
                "/interim" => format!("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n{}", cl("after hints")),
                "/nocontent" => "HTTP/1.1 204 No Content\r\nx-kept: yes\r\n\r\n".into(),
                "/hop" => "HTTP/1.1 200 OK\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok".into(),
                "/badchunk" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".into(),
                "/badlen" => "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".into(),
                "/close" => {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the close").await;
                    return;
                }
                // Not chunked last: the body ends with the close (RFC 9112 6.3).
                "/gzip" => {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx").await;
                    return;
                }
                _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
            };
            if c.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A gateway in front of `node`, with the lane on or off.
fn config(node: SocketAddr, lane: bool) -> String {
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nfast_lane = {lane}\n[stats]\nlisten = \"127.0.0.1:0\"\n\
         [health]\ninterval = \"1h\"\npassive = false\n[[node]]\nname = \"n1\"\naddress = \"{node}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_of_a_node_answer_is_relayed_the_same_on_and_off_the_lane() {
    let (node, task) = framing_node().await;
    let mut seen = Vec::new();
    for lane in [true, false] {
        let gw = gateway(&config(node, lane)).await;
        let mut got = Vec::new();
        for path in
            ["/cl", "/chunked", "/interim", "/nocontent", "/hop", "/badchunk", "/badlen", "/gzip", "/close", "/missing"]
        {
            let r = get(gw.http_addr, path).await;
            let kept = r.headers.get("x-kept").is_some();
            let hop = ["connection", "x-secret", "keep-alive"].iter().any(|h| r.headers.contains_key(*h));
            got.push((path, r.status, String::from_utf8_lossy(&r.body).into_owned(), kept, hop));
        }
        // What the node sees: the target, X-Forwarded-*, the loop mark; no Connection.
        let echo = String::from_utf8_lossy(&get(gw.http_addr, "/echo").await.body).to_ascii_lowercase();
        for h in ["x-forwarded-for: 127.0.0.1", "x-forwarded-proto: http", "x-forwarded-host:", "x-kuzzle-gateway:"] {
            assert!(echo.contains(h), "lane {lane}: {h} missing from what the node got: {echo}");
        }
        assert!(!echo.contains("\nconnection:"), "lane {lane}: Connection reached the node: {echo}");
        let date = get(gw.http_addr, "/cl").await.headers.get("date").cloned();
        assert!(date.is_some(), "lane {lane}: no Date added to an answer without one");
        gw.shutdown().await;
        seen.push(got);
    }
    let expect = [
        ("/cl", 200, "plain body"),
        ("/chunked", 200, "hello world"),
        ("/interim", 200, "after hints"),
        ("/nocontent", 204, ""),
        ("/hop", 200, "ok"),
        ("/badchunk", 502, ""),
        ("/badlen", 502, ""),
        ("/gzip", 200, "xx"),
        ("/close", 200, "until the close"),
        ("/missing", 404, ""),
    ];
    for (i, (path, status, body)) in expect.iter().enumerate() {
        let (p, s, b, _, hop) = &seen[0][i];
        assert_eq!((p, s), (path, status), "lane: {path}");
        if *status < 500 {
            assert_eq!(b, body, "lane: body of {path}");
        }
        assert!(!hop, "lane: hop-by-hop headers of {path} reached the client");
    }
    assert!(seen[0][3].3 && seen[0][4].3, "lane: an end-to-end header was lost");
    for (a, b) in seen[0].iter().zip(&seen[1]) {
        assert_eq!((a.0, a.1, a.3, a.4), (b.0, b.1, b.3, b.4), "the lane and hyper's path differ");
        if a.1 < 500 {
            assert_eq!(a.2, b.2, "the lane and hyper's path differ on {}", a.0);
        }
    }
    task.abort();
}

/// Read from `s` until `n` answers have come whole (each with a Content-Length), bounded by `T`.
async fn read_answers(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut answers = Vec::new();
        let mut rest = &got[..];
        while let Some(n) = message_len(rest) {
            let body = rest.windows(4).position(|w| w == b"\r\n\r\n").map_or(n, |e| e + 4);
            answers.push(String::from_utf8_lossy(&rest[body..n]).into_owned());
            rest = &rest[n..];
        }
        if answers.len() >= n {
            return answers;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => got.extend_from_slice(&buf[..k]),
            other => panic!("{} of {n} answers before {other:?}: {:?}", answers.len(), String::from_utf8_lossy(&got)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_leaves_the_lane_at_a_chunked_body_and_loses_no_byte() {
    let (node, task) = framing_node().await;
    let gw = gateway(&config(node, true)).await;
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    // A GET and a POST with a short Content-Length body (the lane), a chunked POST (hyper's path
    // from here on) and a GET, in one write: the last two are already read by the lane when it
    // hands the connection over.
    s.write_all(
        b"GET /line?a=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /line HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\n\r\nbody\
          POST /line?c HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n\
          GET /line?b=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .expect("write");
    let answers = read_answers(&mut s, 4).await;
    assert_eq!(
        answers,
        ["GET /line?a=1 HTTP/1.1", "POST /line HTTP/1.1", "POST /line?c HTTP/1.1", "GET /line?b=2 HTTP/1.1"]
    );
    // An upgrade-less request with a header the gateway sets itself also leaves the lane, and is
    // answered.
    s.write_all(b"GET /line HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut s, 1).await, ["GET /line HTTP/1.1"]);
    task.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_lane_connection_is_closed_after_the_client_timeout() {
    let (node, task) = framing_node().await;
    let t = config(node, true);
    let gw = gateway(&format!("{t}[timeouts]\nclient = \"300ms\"\n")).await;
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(b"GET /cl HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut s, 1).await, ["plain body"]);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed within 5 s");
    assert!(matches!(n, Ok(0) | Err(_)), "the idle connection got bytes: {n:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout");
    task.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_node_sends_after_its_answer_never_reach_the_next_request() {
    // A node that, on a HEAD, answers and then sends a whole second answer of its own a moment
    // later on the same connection (a body it should not have sent, a desynced node): the pooled
    // connection must not be reused with those bytes waiting.
    let (node, task) = fake_node(|mut c| async move {
        while let Some(req) = read_request(&mut c).await {
            let ok = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine";
            if req.starts_with(b"HEAD") {
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL").await;
            } else if c.write_all(ok.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = gateway(&config(node, true)).await;
    for i in 0..3 {
        let r = request(gw.http_addr, "HEAD", "/x", &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200, "HEAD {i}");
        // The late bytes are in the pooled connection by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = get(gw.http_addr, "/x").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"fine"[..]), "GET {i} got another request's answer");
    }
    task.abort();
    gw.shutdown().await;
}

/// The byte at `i` of the long bodies below (a pattern a shifted or lost byte breaks).
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_body_goes_whole_through_splice_and_a_cut_one_stays_cut() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const LEN: usize = 3_000_000;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    // /big: a long body with a Content-Length; /cut: the same head, a third of the body, then the
    // close; anything else: a short answer. Keep-alive, so the node socket may be pooled.
    let (node, task) = fake_node(move |mut c| {
        count.fetch_add(1, Ordering::Relaxed);
        async move {
            let body: Vec<u8> = (0..LEN).map(pattern).collect();
            while let Some(req) = read_request(&mut c).await {
                let path = String::from_utf8_lossy(&req).split(' ').nth(1).unwrap_or_default().to_string();
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n");
                let r = match path.as_str() {
                    "/big" => c.write_all(&[head.as_bytes(), &body].concat()).await,
                    "/cut" => {
                        let _ = c.write_all(head.as_bytes()).await;
                        let _ = c.write_all(&body[..LEN / 3]).await;
                        return;
                    }
                    _ => c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmall").await,
                };
                if r.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let gw = gateway(&config(node, true)).await;
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let whole = loop {
        if let Some(n) = message_len(&got) {
            break n;
        }
        let k = tokio::time::timeout(T, s.read(&mut buf)).await.expect("in time").expect("read");
        assert!(k > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..k]);
    };
    assert_eq!(whole, got.len(), "nothing after the answer");
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let body = &got[body_at..];
    assert_eq!(body.len(), LEN);
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)), "the body arrives as the node sent it");
    // The same connections go on in step: the client's, and the node's from the pool (no new
    // one; the count may include a health probe's).
    let before = accepted.load(Ordering::Relaxed);
    s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut s, 1).await, ["small"]);
    assert_eq!(accepted.load(Ordering::Relaxed), before, "the node connection was not reused after the long body");

    // Cut mid-body: the client gets the head, the bytes that came, then the close (never a
    // whole-looking answer).
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let closed = tokio::time::timeout(T, s.read_to_end(&mut got)).await.expect("closed in time");
    assert!(closed.is_ok() || !got.is_empty(), "{closed:?}");
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got[..body_at]));
    let body = &got[body_at..];
    assert!(body.len() < LEN, "a cut body looked whole");
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)), "what came is in order");
    task.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_reaches_the_node_whole_even_in_pieces_on_and_off_the_lane() {
    let (node, task) = framing_node().await;
    let body = "{\"controller\":\"document\",\"action\":\"create\",\"body\":{\"a\":1}}";
    for lane in [true, false] {
        let gw = gateway(&config(node, lane)).await;
        let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // The head, then the body in two pieces a moment apart (a client that writes them apart).
        s.write_all(head.as_bytes()).await.expect("write");
        for piece in [&body[..10], &body[10..]] {
            tokio::time::sleep(Duration::from_millis(30)).await;
            s.write_all(piece.as_bytes()).await.expect("write");
        }
        // Then a PUT and a DELETE without a body, in one write.
        s.write_all(
            b"PUT /line HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nDELETE /line HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .expect("write");
        let answers = read_answers(&mut s, 3).await;
        let echo = answers[0].to_ascii_lowercase();
        assert!(echo.ends_with(&body.to_ascii_lowercase()), "lane {lane}: the node got {echo:?}");
        let length = format!("content-length: {}", body.len());
        for h in [length.as_str(), "x-forwarded-for: 127.0.0.1", "x-kuzzle-gateway:"] {
            assert!(echo.contains(h), "lane {lane}: {h} missing from what the node got: {echo}");
        }
        assert_eq!(answers[1..], ["PUT /line HTTP/1.1", "DELETE /line HTTP/1.1"], "lane {lane}");
        gw.shutdown().await;
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_coming_is_answered_as_on_hypers_path_once_the_client_timeout_is_over() {
    // Two nodes: hyper's path then reads a short body whole too, as the lane does.
    let (n1, t1) = framing_node().await;
    let (n2, t2) = framing_node().await;
    let mut took = Vec::new();
    for lane in [false, true] {
        let two = format!("{}[[node]]\nname = \"n2\"\naddress = \"{n2}\"\n", config(n1, lane));
        let gw = gateway(&format!("{two}[timeouts]\nclient = \"500ms\"\nserver = \"5s\"\n")).await;
        // Stalled mid-body: 408 once `[timeouts] client` is over (counted from the head's start).
        let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
        let t0 = std::time::Instant::now();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf").await.expect("write");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.expect("answered");
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok() && text.starts_with("HTTP/1.1 408"), "lane {lane}: {read:?} {text:?}");
        took.push(t0.elapsed());
        // Half-closed mid-body: 400, the body cut short.
        let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("answered");
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok() && text.starts_with("HTTP/1.1 400"), "lane {lane}: {read:?} {text:?}");
        assert!(text.contains("cut short"), "lane {lane}: {text}");
        gw.shutdown().await;
    }
    t1.abort();
    t2.abort();
    // (Review finding: the lane waited its timeout, then hyper's path a second one.)
    assert!(
        took[1] < took[0] + Duration::from_millis(300),
        "408 after {:?} on the lane, {:?} off it",
        took[1],
        took[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_the_limit_stays_on_the_lane_and_a_longer_one_reaches_the_node_whole_too() {
    let (node, task) = framing_node().await;
    let gw = gateway(&config(node, true)).await;
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    // `[balance] resend_body` is 64 KiB: the first is read whole by the lane, the second and
    // third are hyper's path's (streamed), on the same connection, then a GET.
    for n in [64 * 1024, 64 * 1024 + 1, 300_000] {
        let body: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let head = format!("POST /echo?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(body.as_bytes()).await.expect("write");
        let echo = read_answers(&mut s, 1).await.remove(0);
        assert!(echo.starts_with(&format!("POST /echo?n={n} HTTP/1.1")), "{n}: {:?}", &echo[..60.min(echo.len())]);
        assert!(echo.to_ascii_lowercase().contains(&format!("content-length: {n}\r\n")), "{n}: length changed");
        assert!(echo.ends_with(&body), "{n}: the body did not reach the node whole");
    }
    s.write_all(b"GET /line HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut s, 1).await, ["GET /line HTTP/1.1"]);
    task.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_looks_like_a_request_is_a_body() {
    let (node, task) = framing_node().await;
    let gw = gateway(&config(node, true)).await;
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    let inner = "GET /evil HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "POST /line HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}GET /line?after HTTP/1.1\r\nHost: x\r\n\r\n",
        inner.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    assert_eq!(read_answers(&mut s, 2).await, ["POST /line HTTP/1.1", "GET /line?after HTTP/1.1"]);
    task.abort();
    gw.shutdown().await;
}

/// A node for WebSocket upgrades: `/ws` switches (its `101` and a first frame in one write) and
/// then echoes every byte (`/ws-hints` the same behind a 103 and with a `Content-Length` on its
/// `101`); `/refuse` answers the upgrade with a 426 and `/busy` with a short 503,
/// both on a keep-alive connection; `/evil` switches to another protocol; anything else gets
/// `ok`. Each request head it reads (but health checks) goes to `heads`, with the number of the
/// connection it came on.
async fn upgrade_node(
    heads: tokio::sync::mpsc::UnboundedSender<(usize, String)>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    fake_node(move |mut c| {
        let heads = heads.clone();
        let conn = conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            while let Some(req) = read_request(&mut c).await {
                let text = String::from_utf8_lossy(&req).into_owned();
                // Health checks are not the client's requests.
                if !text.contains("kuzzle-gateway-health") {
                    let _ = heads.send((conn, text.clone()));
                }
                let answer: &[u8] = if text.starts_with("GET /ws-hints ") {
                    // An interim answer first, then a switch with a (meaningless) length.
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\
                      Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 7\r\n\r\n\x81\x05hints"
                } else if text.starts_with("GET /ws") {
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Node-Kept: 1\r\n\r\n\x81\x0anode-first"
                } else if text.starts_with("GET /refuse ") {
                    b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 4\r\n\r\nnope"
                } else if text.starts_with("GET /busy ") {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
                } else if text.starts_with("GET /evil ") {
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if c.write_all(answer).await.is_err() {
                    return;
                }
                if text.starts_with("GET /ws") {
                    // A tunnel now: echo until the gateway closes it.
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    })
    .await
}

/// The status and header lines (name, value) of a response head.
fn lines_of(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.trim_end().split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.to_string(), v.trim().to_string())).collect();
    (status, headers)
}

/// Read from `s` until `want` ends what was read, bounded by `T`.
async fn read_until(s: &mut TcpStream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(want) {
        match tokio::time::timeout(T, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("{want:?} never came ({other:?}): {:?}", String::from_utf8_lossy(&got)),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_relayed_the_same_on_and_off_the_lane() {
    let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
    let (node, task) = upgrade_node(tx).await;
    for lane in [true, false] {
        let gw = gateway(&config(node, lane)).await;
        let mut c = TcpStream::connect(gw.http_addr).await.expect("connect");
        // Firefox's Connection list; a masked frame right behind the head.
        let mut hello =
            b"GET /ws?x=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_vec();
        hello.extend_from_slice(b"\x81\x8c\x00\x00\x00\x00client-first");
        c.write_all(&hello).await.expect("write");
        let got = read_until(&mut c, b"client-first").await;
        let text = String::from_utf8_lossy(&got).into_owned();
        let head_end = text.find("\r\n\r\n").expect("a head") + 4;
        let (status, lines) = lines_of(&text[..head_end]);
        assert_eq!(status, 101, "lane {lane}: {text:?}");
        let value = |n: &str| -> Vec<String> {
            lines.iter().filter(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.to_ascii_lowercase()).collect()
        };
        assert_eq!(value("connection"), ["upgrade"], "lane {lane}: {text:?}");
        assert_eq!(value("upgrade"), ["websocket"], "lane {lane}: {text:?}");
        assert_eq!(value("sec-websocket-accept").len(), 1, "lane {lane}: {text:?}");
        assert_eq!(value("x-node-kept"), ["1"], "lane {lane}: {text:?}");
        assert!(value("content-length").is_empty() && value("transfer-encoding").is_empty(), "lane {lane}: {text:?}");
        // The node's first frame, then the client's echoed back: bytes pass unchanged both ways.
        assert_eq!(&got[head_end..], b"\x81\x0anode-first\x81\x8c\x00\x00\x00\x00client-first", "lane {lane}");
        eventually(T, "the tunnel counted", || async {
            (gw.core.frontend.tunnels.load(std::sync::atomic::Ordering::Relaxed) == 1).then_some(())
        })
        .await;
        c.write_all(b"\x81\x82\x00\x00\x00\x00hi").await.expect("write");
        read_until(&mut c, b"\x81\x82\x00\x00\x00\x00hi").await;

        // What the node got: one Connection line (upgrade), the Upgrade line, the forwarding
        // headers. The lane passes header lines as sent; hyper's path writes names in lower case.
        let (_, head) = heads.recv().await.expect("the node's head");
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("GET /ws?x=1 HTTP/1.1\r\n"), "lane {lane}: {head:?}");
        assert_eq!(lower.matches("\r\nconnection:").count(), 1, "lane {lane}: {head:?}");
        assert!(lower.contains("\r\nconnection: upgrade\r\n"), "lane {lane}: {head:?}");
        assert!(lower.contains("\r\nupgrade: websocket\r\n"), "lane {lane}: {head:?}");
        assert!(lower.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"), "lane {lane}: {head:?}");
        assert_eq!(head.contains("\r\nSec-WebSocket-Key: "), lane, "which path took it (lane {lane}): {head:?}");

        // An interim answer before the switch is not the client's; a length on a 101 means nothing.
        let mut h = TcpStream::connect(gw.http_addr).await.expect("connect");
        h.write_all(
            b"GET /ws-hints HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
        let got = read_until(&mut h, b"hints").await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 101 "), "lane {lane}: {text:?}");
        let head_end = text.find("\r\n\r\n").expect("a head") + 4;
        assert!(!text[..head_end].to_ascii_lowercase().contains("content-length"), "lane {lane}: {text:?}");
        assert_eq!(&got[head_end..], b"\x81\x05hints", "lane {lane}");
        h.write_all(b"\x81\x82\x00\x00\x00\x00ok").await.expect("write");
        read_until(&mut h, b"\x81\x82\x00\x00\x00\x00ok").await;
        assert!(heads.recv().await.expect("head").1.starts_with("GET /ws-hints "));
        drop(h);

        // An upgrade the node refuses is an answer like any other and the client's connection
        // goes on; the node's, asked to switch, never carries another request.
        for (path, body) in [("/refuse", "nope"), ("/busy", "busy")] {
            let mut d = TcpStream::connect(gw.http_addr).await.expect("connect");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
                 GET /after HTTP/1.1\r\nHost: gw\r\n\r\n"
            );
            d.write_all(req.as_bytes()).await.expect("write");
            assert_eq!(read_answers(&mut d, 2).await, [body, "ok"], "lane {lane}: {path}");
            let (refused_on, h) = heads.recv().await.expect("head");
            assert!(h.starts_with(&format!("GET {path} ")), "{h:?}");
            let (after_on, h) = heads.recv().await.expect("head");
            assert!(h.starts_with("GET /after "), "{h:?}");
            assert_ne!(refused_on, after_on, "lane {lane}: the connection of a refused upgrade ({path}) was pooled");
        }

        // A switch to anything but a WebSocket is the node's fault: a 502, no tunnel.
        let mut e = TcpStream::connect(gw.http_addr).await.expect("connect");
        e.write_all(
            b"GET /evil HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(T, e.read(&mut answer)).await.expect("an answer").expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 502 "), "lane {lane}: {answer:?}");
        assert!(answer.contains("protocol other than websocket"), "lane {lane}: {answer:?}");
        assert!(heads.recv().await.expect("head").1.starts_with("GET /evil "));
        // The first WebSocket's tunnel only (the one behind the 103 is closing: dropped above).
        eventually(T, "one tunnel left", || async {
            (gw.core.frontend.tunnels.load(std::sync::atomic::Ordering::Relaxed) == 1).then_some(())
        })
        .await;

        // The client's close ends the tunnel.
        drop(c);
        eventually(T, "the tunnel closed", || async {
            (gw.core.frontend.tunnels.load(std::sync::atomic::Ordering::Relaxed) == 0).then_some(())
        })
        .await;
        gw.shutdown().await;
    }
    task.abort();
}

/// Everything a client gets on a connection until the gateway ends it: Ok(bytes) at a clean end
/// (FIN), Err((bytes, error)) when it was reset or stalled past `T`.
async fn read_to_close(s: &mut TcpStream) -> Result<Vec<u8>, (Vec<u8>, String)> {
    let mut got = Vec::new();
    // tokio's read_to_end keeps what it read before an error (or the timeout) in `got`.
    match tokio::time::timeout(T, s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => Ok(got),
        Ok(Err(e)) => Err((got, e.to_string())),
        Err(_) => Err((got, "no end within T".into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connections_last_answer_arrives_whole_before_its_end() {
    // The lane sends a closing connection's last answer and its FIN together (MSG_MORE, then
    // shutdown): nothing of the answer may be held back or lost, on any of its paths, and bytes
    // the client sent behind its `Connection: close` request must not cost it the answer.
    let (node, task) = framing_node().await;
    for lane in [true, false] {
        let gw = gateway(&config(node, lane)).await;
        // (request line, bytes behind it, sent in the same write, status, a part of the body)
        let cases: [(&str, &str, bool, u16, &str); 6] = [
            ("GET /cl", "", false, 200, "plain body"),
            ("GET /nocontent", "", false, 204, ""),
            ("HEAD /cl", "", false, 200, ""),
            // The gateway's own answer (the node's is malformed).
            ("GET /badlen", "", false, 502, "\"status\":502"),
            // A pipelined request behind the close: never answered, and the first answer whole.
            // In a write of its own, it may come after the gateway's last read and stay unread
            // (a reset after the answer is allowed then).
            ("GET /cl", "GET /line HTTP/1.1\r\nhost: x\r\n\r\n", false, 200, "plain body"),
            // In the same write, the lane has read it with the first one: its close resets
            // nothing, and the client gets the answer and a clean end.
            ("GET /cl", "GET /line HTTP/1.1\r\nhost: x\r\n\r\n", true, 200, "plain body"),
        ];
        for (line, behind, together, status, body) in cases {
            let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
            let req = format!("{line} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            if together {
                s.write_all(format!("{req}{behind}").as_bytes()).await.expect("write");
            } else {
                s.write_all(req.as_bytes()).await.expect("write");
                if !behind.is_empty() {
                    let _ = s.write_all(behind.as_bytes()).await;
                }
            }
            let got = read_to_close(&mut s).await;
            // A clean end is owed unless bytes behind the request may have stayed unread.
            let clean_end_owed = behind.is_empty() || (together && lane);
            let bytes = match &got {
                Ok(b) => b.clone(),
                // A reset after the answer (bytes left unread by the gateway) is allowed: the
                // answer must have come before it.
                Err((b, _)) if !clean_end_owed => b.clone(),
                Err((b, e)) => panic!("lane {lane}, {line}: {e} after {:?}", String::from_utf8_lossy(b)),
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let (code, headers) = lines_of(&text);
            assert_eq!(code, status, "lane {lane}, {line}: {text}");
            assert!(
                headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close")),
                "lane {lane}, {line}: no Connection: close on the last answer: {text}"
            );
            let n = if line.starts_with("HEAD") {
                bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(usize::MAX, |e| e + 4)
            } else {
                message_len(&bytes).unwrap_or(usize::MAX)
            };
            assert_eq!(n, bytes.len(), "lane {lane}, {line}: bytes after the last answer: {text}");
            let start = text.find("\r\n\r\n").map_or(text.len(), |e| e + 4);
            assert!(text[start..].contains(body), "lane {lane}, {line}: body {:?} not in {text}", body);
        }
        gw.shutdown().await;
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_answer_longer_than_the_clients_window_is_not_lost_to_a_reset() {
    // A client with a small receive window pipelines a request behind a `Connection: close` one
    // and reads slowly: the answer (held with MSG_MORE, then sent with the FIN) is still in the
    // gateway's send queue when the gateway closes. The pipelined bytes were read with the first
    // request, so the close does not reset the connection: the client gets the whole answer and
    // a clean end.
    let (node, task) = framing_node().await;
    let gw = gateway(&config(node, true)).await;
    for _ in 0..3 {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(2048).expect("SO_RCVBUF");
        let mut s = sock.connect(gw.http_addr).await.expect("connect");
        let req = "GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET /cl HTTP/1.1\r\nhost: x\r\n\r\n";
        s.write_all(req.as_bytes()).await.expect("write");
        // The gateway writes what the window takes and is done with the connection meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = read_to_close(&mut s).await;
        let bytes = got.unwrap_or_else(|(b, e)| panic!("{e} after {} bytes of the answer", b.len()));
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(message_len(&bytes), Some(bytes.len()), "{} bytes, not one whole answer", bytes.len());
        assert!(text.ends_with(&"b".repeat(14_000)), "{} bytes: the body is not whole", bytes.len());
    }
    gw.shutdown().await;
    task.abort();
}
