//! RFC 9112 strictness at the edge, tried with raw bytes: requests whose framing or target is
//! ambiguous get a 400 and never reach a node; node answers that would mislead the client are
//! fixed (Transfer-Encoding wins over Content-Length) or refused (an unrequested 101 is a 502).
mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A node that answers every request with `response`, as raw bytes, then closes.
async fn scripted_node(response: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_get_400_and_never_reach_a_node() {
    let sim = Sim::start("st1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&sim]))).await;
    let cases: [(&str, &[u8]); 3] = [
        ("no Host in HTTP/1.1", b"GET /_now HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("two Host lines", b"GET /_now HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        ("Connection naming Host and no other Host", b"GET /_now HTTP/1.1\r\nConnection: host, close\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let resp = raw(gw.http_addr, bytes).await;
        assert_eq!(status_of(&resp), "400", "{what}: {resp}");
        assert!(!resp.contains("x-kuzzle-node"), "{what} reached a node: {resp}");
    }
    // Content-Length beside Transfer-Encoding: read as chunked (hyper drops the length), so the
    // node sees one unambiguous framing and the body the client chunked, never a smuggled request.
    let resp = raw(
        gw.http_addr,
        b"POST /_sim/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("\r\nabcd\r\n"), "chunked framing won: {resp}");
    // HTTP/1.0 may omit Host; and Connection cannot strip a Host the node should see.
    let resp = raw(gw.http_addr, b"GET /_sim/request HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&resp), "200", "{resp}");
    let resp =
        raw(gw.http_addr, b"GET /_sim/request HTTP/1.1\r\nHost: gw.example\r\nConnection: host, close\r\n\r\n").await;
    assert_eq!(status_of(&resp), "200", "{resp}");
    assert!(resp.contains("gw.example"), "the node did not see the Host: {resp}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misleading_node_answers_are_fixed_or_refused() {
    // Chunked body of 11 bytes, with a Content-Length of 3 beside it: the client must get all 11.
    let (both, t1) = scripted_node(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let (switch, t2) =
        scripted_node(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: evil\r\n\r\n").await;
    let (headonly, t3) = scripted_node(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").await;
    let cfg = format!(
        "[health]\ninterval = \"60s\"\npassive = false\n[[node]]\nname = \"both\"\naddress = \"{both}\"\n[[node]]\nname = \"switch\"\naddress = \"{switch}\"\n[[node]]\nname = \"headonly\"\naddress = \"{headonly}\"\n"
    );
    let gw = gateway(&gateway_toml(&cfg)).await;
    let r = get(gw.http_addr, "/both/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello world", "Transfer-Encoding must win over Content-Length");
    assert!(r.header("content-length").is_none_or(|l| l == "11"), "{:?}", r.headers);
    let r = get(gw.http_addr, "/switch/x").await;
    assert_eq!(r.status, 502, "an unrequested 101 is relayed: {:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("switched protocols unasked"));
    // A head then a close before any body byte: the client gets a 502, not a cut response.
    let resp = raw(gw.http_addr, b"GET /headonly/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&resp), "502", "head-then-close: {resp:?}");
    gw.shutdown().await;
    t1.abort();
    t2.abort();
    t3.abort();
}

fn envelope_status(resp: &str) -> Option<u64> {
    let body = resp.split("\r\n\r\n").nth(1)?;
    serde_json::from_str::<serde_json::Value>(body).ok()?["error"]["status"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_node_heads_are_refused() {
    let sim = Sim::start("lim1", &[]);
    let (big_head, t) = {
        // A node whose response head is 200 KB of headers.
        static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let head = HEAD.get_or_init(|| {
            let mut h = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
            for i in 0..2000 {
                h.extend_from_slice(format!("x-filler-{i}: {}\r\n", "f".repeat(90)).as_bytes());
            }
            h.extend_from_slice(b"\r\nok");
            h
        });
        scripted_node(head.as_slice()).await
    };
    let cfg = format!("{}[[node]]\nname = \"bighead\"\naddress = \"{big_head}\"\n", nodes_toml(&[&sim]));
    let gw = gateway(&gateway_toml(&format!(
        "[health]\ninterval = \"60s\"\npassive = false\n[limits]\nheaders = 60\n{cfg}"
    )))
    .await;
    let a = gw.http_addr;

    let long_uri = format!("GET /lim1/_now?q={} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "a".repeat(9000));
    let resp = raw(a, long_uri.as_bytes()).await;
    assert_eq!((status_of(&resp), envelope_status(&resp)), ("414", Some(414)), "{}", &resp[..resp.len().min(300)]);

    let many = |n: usize| {
        let mut many = String::from("GET /lim1/_now HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
        for i in 0..n {
            many.push_str(&format!("x-h{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        many
    };
    // Over `[limits] headers` (60): Kuzzle's envelope; over hyper's own cap of 100 lines: its 431.
    let resp = raw(a, many(80).as_bytes()).await;
    assert_eq!((status_of(&resp), envelope_status(&resp)), ("431", Some(431)), "80 headers: {resp}");
    let resp = raw(a, many(150).as_bytes()).await;
    assert_eq!(status_of(&resp), "431", "150 headers: {resp}");
    let resp = raw(a, many(50).as_bytes()).await;
    assert_eq!(status_of(&resp), "200", "50 headers are under the limit: {resp}");

    // 40 KB of headers: over the 32 KiB limit, under hyper's cap: Kuzzle's envelope.
    let big =
        format!("GET /lim1/_now HTTP/1.1\r\nHost: a\r\nx-big: {}\r\nConnection: close\r\n\r\n", "b".repeat(40_000));
    let resp = raw(a, big.as_bytes()).await;
    assert_eq!(
        (status_of(&resp), envelope_status(&resp)),
        ("431", Some(431)),
        "40 KB head: {}",
        &resp[..resp.len().min(300)]
    );
    // 200 KB: refused before it is even all read.
    let huge = format!("GET /lim1/_now HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n", "b".repeat(200_000));
    let resp = raw(a, huge.as_bytes()).await;
    assert_eq!(status_of(&resp), "431", "200 KB head: {}", &resp[..resp.len().min(300)]);

    let r = get(a, "/bighead/x").await;
    assert_eq!(r.status, 502, "a 200 KB response head is passed on");
    assert_eq!(get(a, "/lim1/_now").await.status, 200, "normal requests still served");
    gw.shutdown().await;
    t.abort();
}
