//! Headers: forwarded ones added, hop-by-hop ones stripped, and the header naming the node that answered.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_forwarded_and_hop_by_hop_stripped() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1]))).await;
    let mut c = conn_from(IpAddr::from([127, 0, 0, 1]), gw.http_addr).await;
    let req = http::Request::builder()
        .method("PUT")
        .uri("/cluster_kuzzle_1/_sim/request?x=1")
        .header("host", "kuzzle.example:7512")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "gopher")
        .header("x-custom", "kept")
        .header("authorization", "Bearer abc")
        .body(AnyBody::Left(Full::new(Bytes::from_static(b"{\"a\":1}"))))
        .expect("request");
    c.ready().await.expect("ready");
    let r = collect(c.send_request(req).await.expect("response")).await;
    let (method, path, h) = seen(&r);
    assert_eq!(method, "PUT");
    assert_eq!(path, "/_sim/request?x=1");
    for gone in
        ["x-secret", "keep-alive", "proxy-authorization", "proxy-connection", "te", "transfer-encoding", "upgrade"]
    {
        assert!(seen_header(&h, gone).is_none(), "{gone} reached the node: {h}");
    }
    // Connection is the gateway's own business with the node: none of the client's tokens survive.
    if let Some(conn) = seen_header(&h, "connection") {
        assert!(!conn.to_ascii_lowercase().contains("x-secret"), "{conn}");
    }
    assert_eq!(seen_header(&h, "x-custom").as_deref(), Some("kept"));
    assert_eq!(seen_header(&h, "authorization").as_deref(), Some("Bearer abc"), "end-to-end auth passes");
    assert_eq!(seen_header(&h, "host").as_deref(), Some("kuzzle.example:7512"), "Host passes through");
    assert_eq!(seen_header(&h, "x-forwarded-for").as_deref(), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(seen_header(&h, "x-forwarded-proto").as_deref(), Some("http"), "the gateway states the scheme");
    assert_eq!(seen_header(&h, "x-forwarded-host").as_deref(), Some("kuzzle.example:7512"));
    assert_eq!(seen_header(&h, "content-length").as_deref(), Some("7"));

    // Without an incoming X-Forwarded-For, the client's address alone; from another loopback IP.
    let mut c = conn_from(IpAddr::from([127, 0, 0, 7]), gw.http_addr).await;
    let r = collect(send_any(&mut c, "GET", "/_sim/request", &[], AnyBody::Left(Full::default())).await).await;
    let (_, _, h) = seen(&r);
    assert_eq!(seen_header(&h, "x-forwarded-for").as_deref(), Some("127.0.0.7"));
    assert_eq!(seen_header(&h, "x-forwarded-host").as_deref(), Some("gw.test"));
    // The node's own headers come back (x-kuzzle-node), hop-by-hop ones do not.
    assert_eq!(r.node(), Some("cluster_kuzzle_1"));
    assert!(r.header("keep-alive").is_none());
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket session
// ---------------------------------------------------------------------------------------------

/// Real Kuzzle 2 answers `X-Kuzzle-Node: undefined`: the gateway names the node that answered in
/// `[gateway] node_header` (x-kuzzle-node by default, over the node's own value; "" = off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_name_the_node_that_answered() {
    let node = CannedNode::start(200, r#"{"status":200,"result":1}"#).await;
    for (setting, header, expect_kuzzle) in [
        (None, Some("x-kuzzle-node"), "kuzzle_a"),
        (Some("X-Served-By"), Some("x-served-by"), "undefined"),
        (Some(""), None, "undefined"),
    ] {
        let line = setting.map(|h| format!("node_header = {h:?}\n")).unwrap_or_default();
        let gw = gateway(&format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n{line}[stats]\nlisten = \"127.0.0.1:0\"\n\
             [[node]]\nname = \"kuzzle_a\"\naddress = \"{}\"\n",
            node.addr
        ))
        .await;
        let r = get(gw.http_addr, "/_now").await;
        assert_eq!(r.status, 200, "{setting:?}");
        assert_eq!(r.header("x-kuzzle-node"), Some(expect_kuzzle), "{setting:?}");
        if let Some(h) = header {
            assert_eq!(r.header(h), Some("kuzzle_a"), "{setting:?}");
        }
        gw.shutdown().await;
    }
}
