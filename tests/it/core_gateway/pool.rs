//! The pool of node connections: reused, but never after an upgrade or an error.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_reused_but_never_after_upgrade_or_error() {
    // A node keeping its connections (real Kuzzle 2 closes after every response): pooling to test.
    let n1 = Sim::builder("cluster_kuzzle_1").keep_alive().start();
    let relay = Relay::start(n1.addr).await;
    let gw = gateway(&gateway_toml(&format!(
        "[timeouts]\nserver = \"700ms\"\npool_idle = \"30s\"\n[[node]]\nname = \"cluster_kuzzle_1\"\naddress = \"{}\"\n",
        relay.addr
    )))
    .await;
    let a = gw.http_addr;

    // Keep-alive client, and then fresh clients: one node connection serves them all.
    let mut c = Client::connect(a).await;
    for _ in 0..10 {
        assert_eq!(c.send("GET", "/_now", &[], Bytes::new()).await.status, 200);
    }
    for _ in 0..10 {
        assert_eq!(get(a, "/_now").await.status, 200);
    }
    // HEAD answers have no body to read: their connection goes back to the pool all the same.
    for _ in 0..3 {
        let r = c.send("HEAD", "/_now", &[], Bytes::new()).await;
        assert_eq!((r.status, r.body.len()), (200, 0));
    }
    assert_eq!(relay.accepted(), 1, "sequential requests must reuse one pooled node connection");

    // A WebSocket takes the pooled connection for good: the next request needs a new one.
    let mut w = ws(a, "/").await;
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "1")).await;
    assert_eq!(r["status"], 200);
    for _ in 0..5 {
        assert_eq!(c.send("GET", "/_now", &[], Bytes::new()).await.status, 200);
    }
    assert_eq!(relay.accepted(), 2, "an upgraded connection went back to the pool (or reuse stopped)");
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "2")).await;
    assert_eq!(r["status"], 200, "the tunnel still works beside the pooled requests");
    drop(w);

    // A request that timed out leaves its connection closed, never reused.
    let r = request(n1.addr, "POST", "/_sim/latency/2000", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "latency knob");
    // (A 504, not the node's late 200: the gateway gave up first.)
    assert_envelope(&c.send("GET", "/_now", &[], Bytes::new()).await, 504);
    let r = request(n1.addr, "POST", "/_sim/latency/0", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let before = relay.accepted();
    let r = c.send("GET", "/_sim/request", &[], Bytes::new()).await;
    let (_, path, _) = seen(&r);
    assert_eq!(path, "/_sim/request", "a late answer to the timed-out request must not leak");
    assert_eq!(relay.accepted(), before + 1, "the timed-out connection was reused");

    // A response cut short by the client leaves no connection in the pool either.
    let before = relay.accepted();
    {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(b"GET /_sim/bytes/268435456 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    } // dropped mid-body: 256 MiB cannot all sit in socket buffers
    let node = gw.core.snapshot().node("cluster_kuzzle_1").cloned().expect("node");
    eventually(T, "abandoned exchange and closed tunnel released", || async { (node.active() == 0).then_some(()) })
        .await;
    for _ in 0..3 {
        let r = c.send("GET", "/_sim/request", &[], Bytes::new()).await;
        assert_eq!(seen(&r).1, "/_sim/request");
    }
    assert!(relay.accepted() > before, "the connection of an abandoned response was reused");
    assert_eq!(node.idle_connections(), 1, "only the connection of the last request is pooled");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------
