//! RFC 9112 strictness at the edge, tried with raw bytes: requests whose framing or target is
//! ambiguous get a 400 and never reach a node; node answers that would mislead the client are
//! fixed (Transfer-Encoding wins over Content-Length) or refused (an unrequested 101 is a 502).
use crate::common;

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

/// A node for the upgrade test: health checks get a 200; an upgrade gets its 101 and a first
/// frame in one write, then the 11 bytes the client sent behind its own head, sent back as the
/// payload of a binary frame.
async fn eager_ws_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let end = loop {
                    if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                };
                if !String::from_utf8_lossy(&got[..end]).to_ascii_lowercase().contains("upgrade: websocket") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    return;
                }
                let mut rest = got[end..].to_vec();
                let mut out =
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
                out.extend_from_slice(&[0x81, 5]);
                out.extend_from_slice(b"hello");
                let _ = s.write_all(&out).await;
                while rest.len() < 11 {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => rest.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let mut back = vec![0x82, 11];
                back.extend_from_slice(&rest[..11]);
                let _ = s.write_all(&back).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// What either side sends right behind its upgrade head is read by hyper along with the head:
/// the tunnel must pass it on first, in order, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_the_upgrade_heads_are_relayed_first() {
    let node = eager_ws_node().await;
    let cfg =
        format!("[health]\ninterval = \"60s\"\npassive = false\n[[node]]\nname = \"eager\"\naddress = \"{node}\"\n");
    let gw = gateway(&gateway_toml(&cfg)).await;
    let frame = [0x81u8, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1];
    let mut req = b"GET /eager/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    req.extend_from_slice(&frame);
    let mut s = tokio::net::TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(&req).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (head_end, want) = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= p + 4 + 7 + 13 {
                break (p + 4, p + 4 + 7 + 13);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("in time").expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    };
    assert_eq!(status_of(&String::from_utf8_lossy(&got[..head_end])), "101");
    assert_eq!(&got[head_end..head_end + 7], b"\x81\x05hello", "the node's first frame");
    assert_eq!(&got[head_end + 7..head_end + 9], &[0x82, 11]);
    assert_eq!(&got[head_end + 9..want], &frame, "the client's first frame reached the node intact");
    gw.shutdown().await;
}
