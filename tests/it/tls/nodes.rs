//! Nodes that speak HTTPS: requests and health checks over TLS, and their settings checked.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speaking_https_are_reached_over_tls_health_checks_included() {
    let dir = scratch_dir("tls-upstream");
    let n1 = Sim::start("n1", &[]);
    let n2 = Sim::start("n2", &[]);
    let n3 = Sim::start("n3", &[]);
    // n1's certificate names its IP, n2's a host name given as server_name, n3's is not trusted.
    let c1 = make(&["127.0.0.1"], None);
    let c2 = make(&["node2.test"], None);
    let c3 = make(&["127.0.0.1"], None);
    let (f1, f2, f3) =
        (TlsFront::start(n1.addr, &c1).await, TlsFront::start(n2.addr, &c2).await, TlsFront::start(n3.addr, &c3).await);
    let ca1 = dir.join("ca1.pem");
    let ca2 = dir.join("ca2.pem");
    std::fs::write(&ca1, &c1.cert_pem).expect("write");
    std::fs::write(&ca2, &c2.cert_pem).expect("write");
    let node = |name: &str, addr: std::net::SocketAddr, extra: String| {
        format!("[[node]]\nname = \"{name}\"\naddress = \"{addr}\"\ntls = true\n{extra}")
    };
    let ca = |p: &Path| format!("ca = {:?}\n", p.display().to_string());
    let toml = format!(
        "[health]\ninterval = \"100ms\"\nfall = 1\nrise = 1\n{}{}{}",
        node("n1", f1.addr, ca(&ca1)),
        node("n2", f2.addr, format!("{}server_name = \"node2.test\"\n", ca(&ca2))),
        node("n3", f3.addr, ca(&ca1)),
    );
    let gw = gateway(&gateway_toml(&toml)).await;

    // Requests and WebSockets reach the HTTPS nodes.
    let r = get(gw.http_addr, "/n1/_sim/request").await;
    assert_eq!(r.node(), Some("n1"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(gw.http_addr, "/n2/_now").await.node(), Some("n2"));
    let mut w = ws(gw.http_addr, "/n2/").await;
    let (v, _) = ws_call(&mut w, kuzzle("server", "info", "i")).await;
    assert_eq!(v["node"], "n2");
    assert!(f1.handshakes() > 0 && f2.handshakes() > 0, "the nodes were reached through their TLS fronts");

    // A node whose certificate is not trusted is DOWN (its health checks fail the handshake) and
    // its prefix gets the 503; balanced traffic goes to the others.
    eventually(T, "n3 DOWN on /hastats", || async {
        let v = get(gw.stats_addr, "/hastats;json").await.json();
        let n3 = v["nodes"].as_array()?.iter().find(|n| n["name"] == "n3")?.clone();
        (n3["up"] == false).then_some(())
    })
    .await;
    assert_envelope(&get(gw.http_addr, "/n3/_now").await, 503);
    for _ in 0..6 {
        let r = get(gw.http_addr, "/_now").await;
        assert!(matches!(r.node(), Some("n1" | "n2")), "{:?}", r.node());
    }
    assert_eq!(f3.handshakes(), 0, "no handshake with the untrusted node ever completed");
    drop(w);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_tls_settings_are_checked_with_the_configuration() {
    // The CA file is read when the connectors are built (on the blocking pool in a running gateway).
    let c = Config::parse(
        "[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\ntls = true\nca = \"/nonexistent/ca.pem\"\n",
        "g.toml",
    )
    .expect("valid text");
    let e = kuzzle_gateway::core::node_tls::NodeTlsSet::build(&c).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (5, "node[0].ca"), "{e}");
    assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    let e = Config::parse("[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nserver_name = \"x\"\n", "g.toml")
        .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "node[0].server_name"), "{e}");
    assert!(e.message.contains("needs tls = true"), "{e}");
    let e =
        Config::parse("[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nnode_ca = \"/x.pem\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "cluster.node_ca"), "{e}");
    assert!(e.message.contains("needs tls = true"), "{e}");
    let c = Config::parse(
        "[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nnode_tls = true\nnode_ca = \"/x.pem\"\n",
        "g.toml",
    )
    .expect("valid text");
    let e = kuzzle_gateway::core::node_tls::NodeTlsSet::build(&c).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "cluster.node_ca"), "{e}");
}
