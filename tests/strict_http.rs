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
    let cfg = format!(
        "[health]\ninterval = \"60s\"\npassive = false\n[[node]]\nname = \"both\"\naddress = \"{both}\"\n[[node]]\nname = \"switch\"\naddress = \"{switch}\"\n"
    );
    let gw = gateway(&gateway_toml(&cfg)).await;
    let r = get(gw.http_addr, "/both/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello world", "Transfer-Encoding must win over Content-Length");
    assert!(r.header("content-length").is_none_or(|l| l == "11"), "{:?}", r.headers);
    let r = get(gw.http_addr, "/switch/x").await;
    assert_eq!(r.status, 502, "an unrequested 101 is relayed: {:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("switched protocols unasked"));
    gw.shutdown().await;
    t1.abort();
    t2.abort();
}
