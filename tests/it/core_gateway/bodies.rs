//! Large bodies streamed, chunked and with a length, both ways.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_bodies_streamed_and_chunked_both_ways() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1]))).await;
    let a = gw.http_addr;
    const MIB: usize = 1 << 20;
    let payload: Bytes = (0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();

    // 1 MiB request with a length, echoed.
    let mut c = Client::connect(a).await;
    let r = c.send("POST", "/_sim/echo", &[("content-type", "application/octet-stream")], payload.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), MIB);
    assert!(r.body == payload, "echoed body differs");

    assert_eq!(r.header("content-length"), Some("1048576"), "a body with a length keeps it");

    // 1 MiB response, chunked by the node: still chunked to the client (no buffering to count it).
    let r = c.send("GET", "/_sim/bytes/1048576", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), MIB);
    assert!(r.body.iter().all(|&b| b == b'x'));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));

    // Chunked request (no length), streamed: the first part of the echo comes back while the
    // client still holds the rest, so neither direction is buffered whole by the gateway.
    let mut s = conn_from(IpAddr::from([127, 0, 0, 1]), a).await;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tx.send(payload.slice(..64 * 1024)).await.expect("first chunk");
    let resp = send_any(&mut s, "POST", "/_sim/echo", &[], AnyBody::Right(ChanBody(rx))).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none(), "a chunked echo has no length");
    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(MIB);
    while got.len() < 64 * 1024 {
        let f = tokio::time::timeout(T, body.frame())
            .await
            .expect("first echoed bytes while the request is still open: something buffers")
            .expect("frame")
            .expect("frame ok");
        if let Ok(d) = f.into_data() {
            got.extend_from_slice(&d);
        }
    }
    for chunk in payload.slice(64 * 1024..).chunks(64 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.expect("chunk");
    }
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(30), body.collect()).await.expect("rest").expect("rest ok");
    got.extend_from_slice(&rest.to_bytes());
    assert_eq!(got.len(), MIB);
    assert!(got == payload[..], "chunked echo differs");

    // The counters saw the bytes (both ways, more than the payloads).
    assert!(gw.core.frontend.bytes_in.load(Ordering::Relaxed) >= 2 * MIB as u64);
    assert!(gw.core.frontend.bytes_out.load(Ordering::Relaxed) >= 3 * MIB as u64);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Connection pool
// ---------------------------------------------------------------------------------------------
