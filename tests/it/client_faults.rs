//! A client's own faults (an upload cut short, an upload slower than `[timeouts] server`) must
//! never count against a healthy node: otherwise any client could mark every node DOWN.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One node, fall = 1 (a single counted failure would take it DOWN), active checks far apart.
async fn setup() -> (Sim, kuzzle_gateway::app::Handle) {
    let sim = Sim::start("n1", &[]);
    let toml = gateway_toml(&format!(
        "[timeouts]\nserver = \"400ms\"\n[health]\ninterval = \"60s\"\nfall = 1\nrise = 1\n{}",
        nodes_toml(&[&sim])
    ));
    let gw = gateway(&toml).await;
    (sim, gw)
}

fn partial_post(addr: std::net::SocketAddr) -> String {
    format!("POST /_sim/request HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 100000\r\n\r\n0123456789")
}

#[tokio::test]
async fn aborted_uploads_do_not_mark_the_node_down() {
    let (_sim, gw) = setup().await;
    let node = gw.core.snapshot().node("n1").cloned().expect("node n1");
    for i in 0..5u64 {
        let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
        s.write_all(partial_post(gw.http_addr).as_bytes()).await.expect("write");
        // Let the gateway start forwarding to the node, then go away mid-body.
        eventually(Duration::from_secs(5), "the upload reached the node", || {
            let n = node.counters.sessions_total.load(Ordering::Relaxed);
            async move { (n > i).then_some(()) }
        })
        .await;
        drop(s);
    }
    let f = &gw.core.frontend;
    eventually(Duration::from_secs(5), "the gateway saw the 5 aborted requests end", || {
        let n = f.request_errors.load(Ordering::Relaxed);
        async move { (n >= 5).then_some(()) }
    })
    .await;
    assert_eq!(node.counters.response_errors.load(Ordering::Relaxed), 0, "client aborts counted as node errors");
    assert_eq!(node.health.view().failed_checks, 0, "client aborts counted as failed checks");
    assert!(node.eligible(), "node marked down by clients' aborted uploads");
    assert_eq!(get(gw.http_addr, "/_now").await.status, 200);
}

#[tokio::test]
async fn slow_upload_is_a_408_not_a_node_timeout() {
    let (_sim, gw) = setup().await;
    let node = gw.core.snapshot().node("n1").cloned().expect("node n1");
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(partial_post(gw.http_addr).as_bytes()).await.expect("write");
    // Send nothing more: the server timeout (400 ms) passes while the client still owes its body.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the gateway answered within 10 s")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "expected 408, got: {head}");
    assert_eq!(node.counters.response_errors.load(Ordering::Relaxed), 0, "slow client counted against the node");
    assert_eq!(node.health.view().failed_checks, 0);
    assert!(node.eligible());
    assert_eq!(get(gw.http_addr, "/_now").await.status, 200);
}

/// WebSocket tunnels keep their connection's place under `max_connections` after the upgrade, so
/// a flood of WebSockets cannot get past the cap.
#[tokio::test]
async fn websockets_count_against_max_connections() {
    let sim = Sim::start("n1", &[]);
    let toml = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\nshutdown_grace = \"1s\"\n[stats]\nlisten = \"127.0.0.1:0\"\n{}",
        nodes_toml(&[&sim])
    );
    let gw = gateway(&toml).await;
    let mut a = ws(gw.http_addr, "/").await;
    let _b = ws(gw.http_addr, "/").await;
    eventually(Duration::from_secs(5), "two tunnels open", || {
        let n = gw.core.frontend.tunnels.load(Ordering::Relaxed);
        async move { (n == 2).then_some(()) }
    })
    .await;

    // A third client: the kernel takes the connection, the gateway does not serve it yet.
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    s.write_all(format!("GET /_now HTTP/1.1\r\nhost: {}\r\n\r\n", gw.http_addr).as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(800), s.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served while 2 WebSockets held the 2 places");

    // One WebSocket closes: its place goes to the waiting client.
    a.close(None).await.expect("close");
    drop(a);
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("served once a place was free")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Clients that ask for a large response and never read it are cut after `[timeouts] client`
/// without progress, and the node connection behind each is freed (no fd, no node slot kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_and_their_node_connections_freed() {
    let sim = Sim::start("sr1", &[]);
    let toml = gateway_toml(&format!("[timeouts]\nclient = \"1s\"\n{}", nodes_toml(&[&sim])));
    let gw = gateway(&toml).await;
    let node = gw.core.snapshot().node("sr1").cloned().expect("node sr1");
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
        // 256 MiB: far more than the kernel buffers of both sides hold, so writes stall.
        s.write_all(format!("GET /_sim/bytes/268435456 HTTP/1.1\r\nhost: {}\r\n\r\n", gw.http_addr).as_bytes())
            .await
            .expect("write");
        readers.push(s);
    }
    eventually(Duration::from_secs(10), "every slow reader's request reached the node", || async {
        (node.active() == 20).then_some(())
    })
    .await;
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(15), "slow readers cut and node connections freed", || async {
        let open = gw.core.frontend.connections.load(Ordering::Relaxed);
        (open == 0 && node.active() == 0).then_some(())
    })
    .await;
    let took = t0.elapsed();
    println!("20 slow readers cut {took:?} after their requests were all in flight ([timeouts] client = 1s)");
    assert!(took < Duration::from_secs(10), "cut after {took:?}");
    // The cut connections are closed: a read ends (after whatever the kernel had buffered).
    let mut s = readers.pop().expect("a reader");
    let mut buf = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the connection of a cut slow reader is still open");
    gw.shutdown().await;
}
