//! Balancing over the nodes per algorithm, and `/<node>/...` prefix routing (tricky paths included).

use super::*;

async fn spread(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut c = Client::connect(addr).await;
    let mut hits = HashMap::new();
    for _ in 0..n {
        let r = c.send("GET", "/_now", &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let node = r.node().expect("x-kuzzle-node").to_string();
        assert_eq!(r.json()["node"], node.as_str(), "envelope names the node that answered");
        *hits.entry(node).or_insert(0) += 1;
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_spreads_over_three_nodes_per_algorithm() {
    let sims: Vec<Sim> = names("cluster_kuzzle_", 3).iter().map(|n| Sim::start(n, &[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();

    // roundrobin: exact thirds.
    let gw = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"roundrobin\"\n{}", nodes_toml(&refs)))).await;
    let hits = spread(gw.http_addr, 30).await;
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(hits.values().all(|&h| h == 10), "roundrobin must split 30 requests 10/10/10: {hits:?}");
    gw.shutdown().await;

    // leastconn: sequential requests tie at 0 open, ties rotate: every node takes a share...
    let gw = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"leastconn\"\n{}", nodes_toml(&refs)))).await;
    let hits = spread(gw.http_addr, 30).await;
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(hits.values().all(|&h| h >= 3), "leastconn ties should rotate: {hits:?}");
    // ...and WebSocket tunnels count: with two nodes each holding one, the third takes everything.
    let mut a = ws(gw.http_addr, "/").await;
    let (ra, _) = ws_call(&mut a, kuzzle("server", "now", "a")).await;
    let mut b = ws(gw.http_addr, "/").await;
    let (rb, _) = ws_call(&mut b, kuzzle("server", "now", "b")).await;
    let (na, nb) = (ra["node"].as_str().expect("node").to_string(), rb["node"].as_str().expect("node").to_string());
    assert_ne!(na, nb, "the second tunnel should go to a node without one");
    let hits = spread(gw.http_addr, 10).await;
    assert_eq!(hits.len(), 1, "leastconn must avoid the nodes holding a tunnel: {hits:?}");
    assert!(!hits.contains_key(&na) && !hits.contains_key(&nb), "{hits:?} vs tunnels on {na}, {nb}");
    drop((a, b));
    gw.shutdown().await;

    // source: one client IP sticks to one node; many IPs reach several nodes.
    let gw = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"source\"\n{}", nodes_toml(&refs)))).await;
    let mut by_ip: HashMap<IpAddr, String> = HashMap::new();
    for i in 1..=24u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        let mut first: Option<String> = None;
        for _ in 0..3 {
            // A new connection each time: stickiness must not depend on keep-alive.
            let mut c = conn_from(ip, gw.http_addr).await;
            let r = collect(send_any(&mut c, "GET", "/_now", &[], AnyBody::Left(Full::default())).await).await;
            assert_eq!(r.status, 200);
            let node = r.node().expect("x-kuzzle-node").to_string();
            match &first {
                None => first = Some(node),
                Some(f) => assert_eq!(f, &node, "client {ip} moved between nodes"),
            }
        }
        by_ip.insert(ip, first.expect("one response"));
    }
    let used: std::collections::HashSet<&String> = by_ip.values().collect();
    assert!(used.len() >= 2, "24 client IPs all hashed to one node: {by_ip:?}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Prefix routing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_routing_including_tricky_paths() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let n10 = Sim::start("cluster_kuzzle_10", &[]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1, &n2, &n10]))).await;
    let a = gw.http_addr;

    // (request path, node expected or None = any, path the node must see)
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("/cluster_kuzzle_1/_sim/request", Some("cluster_kuzzle_1"), "/_sim/request"),
        ("/cluster_kuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        ("/cluster_kuzzle_10/_sim/request", Some("cluster_kuzzle_10"), "/_sim/request"),
        ("/cluster_kuzzle_2/_sim/request?a=1&b=%2F", Some("cluster_kuzzle_2"), "/_sim/request?a=1&b=%2F"),
        // Dot segments resolve before the prefix is read, encoded or not.
        ("/cluster_kuzzle_1/../cluster_kuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        ("/cluster_kuzzle_1/%2e%2e/cluster_kuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        ("/cluster_kuzzle_1/%2E%2E/cluster_kuzzle_10/_sim/request", Some("cluster_kuzzle_10"), "/_sim/request"),
        ("/./cluster_kuzzle_1/./_sim/request", Some("cluster_kuzzle_1"), "/_sim/request"),
        ("/cluster_kuzzle_1/x/../_sim/request", Some("cluster_kuzzle_1"), "/_sim/request"),
        ("/cluster%5Fkuzzle_2/_sim/request", Some("cluster_kuzzle_2"), "/_sim/request"),
        // A dot resolution that leaves the prefix: balanced.
        ("/cluster_kuzzle_1/../_sim/request", None, "/_sim/request"),
    ];
    for (path, node, want) in cases {
        for _ in 0..3 {
            let r = get(a, path).await;
            let (_, saw, _) = seen(&r);
            let via = r.node().expect("x-kuzzle-node");
            if let Some(n) = node {
                assert_eq!(via, *n, "{path} went to the wrong node");
            }
            assert_eq!(saw, *want, "{path}: node saw the wrong path");
            assert_eq!(sim_path(&r), *want, "{path}: x-sim-path");
        }
    }

    // `/<node>` alone is that node's `/`.
    let r = get(a, "/cluster_kuzzle_10").await;
    assert_eq!(r.node(), Some("cluster_kuzzle_10"));
    assert_eq!(sim_path(&r), "/");
    let r = get(a, "/cluster_kuzzle_1/").await;
    assert_eq!(r.node(), Some("cluster_kuzzle_1"));
    assert_eq!(sim_path(&r), "/");

    // Unknown first segments (also near-misses of a node name) are balanced with the whole path.
    for path in ["/cluster_kuzzle_3/_sim/request", "/cluster_kuzzle_1x/_sim/request", "/cluster_kuzzle_/_sim/request"] {
        let mut nodes = std::collections::HashSet::new();
        for _ in 0..6 {
            let r = get(a, path).await;
            assert_eq!(sim_path(&r), path, "{path} must reach a node whole");
            nodes.insert(r.node().expect("x-kuzzle-node").to_string());
        }
        assert!(nodes.len() >= 2, "{path} is no prefix: it must be balanced, went to {nodes:?}");
    }

    // Paths no node may see: 400 in Kuzzle's envelope.
    for path in [
        "/cluster_kuzzle_1%2F_now",
        "/cluster_kuzzle_1%2f..%2fcluster_kuzzle_2/_now",
        "/cluster_kuzzle_1%5C_now",
        "/..",
        "/%2e%2e/_now",
        "/cluster_kuzzle_1/../../_now",
        "/%zz/_now",
        "/cluster_kuzzle_1%/_now",
    ] {
        let r = get(a, path).await;
        let msg = assert_envelope(&r, 400);
        assert!(msg.starts_with("bad request"), "{path}: {msg}");
        assert!(r.node().is_none(), "{path} reached a node");
    }

    // WebSocket through a prefix reaches that node only.
    for _ in 0..4 {
        let mut w = ws(a, "/cluster_kuzzle_2/").await;
        let (resp, _) = ws_call(&mut w, kuzzle("server", "now", "n")).await;
        assert_eq!(resp["node"], "cluster_kuzzle_2", "{resp}");
    }
    let mut w = ws(a, "/cluster_kuzzle_10").await;
    let (resp, _) = ws_call(&mut w, kuzzle("server", "info", "i")).await;
    assert_eq!(resp["node"], "cluster_kuzzle_10", "{resp}");

    // A prefix of a node that may not take traffic: the gateway's 503, naming the node.
    let snap = gw.core.snapshot_full();
    snap.node("cluster_kuzzle_2").expect("node 2").health.set_up(false);
    let msg = assert_envelope(&get(a, "/cluster_kuzzle_2/_now").await, 503);
    assert!(msg.contains("cluster_kuzzle_2") && msg.contains("down"), "{msg}");
    snap.node("cluster_kuzzle_2").expect("node 2").health.set_up(true);
    assert!(gw.core.set_admin("cluster_kuzzle_2", AdminState::Maint));
    let msg = assert_envelope(&get(a, "/cluster_kuzzle_2/_now").await, 503);
    assert!(msg.contains("maintenance"), "{msg}");
    assert!(gw.core.set_admin("cluster_kuzzle_2", AdminState::Drain));
    assert_envelope(&get(a, "/cluster_kuzzle_2/_now").await, 503);
    // ...and the balancer keeps it out meanwhile.
    for _ in 0..6 {
        assert_ne!(get(a, "/_now").await.node(), Some("cluster_kuzzle_2"));
    }
    assert!(gw.core.set_admin("cluster_kuzzle_2", AdminState::Ready));
    assert_eq!(get(a, "/cluster_kuzzle_2/_now").await.node(), Some("cluster_kuzzle_2"));

    // A node removed by a reload while a tunnel still uses it: draining, its prefix answers 503.
    let mut held = ws(a, "/cluster_kuzzle_10/").await;
    let (resp, _) = ws_call(&mut held, kuzzle("server", "now", "h")).await;
    assert_eq!(resp["node"], "cluster_kuzzle_10");
    let cfg = kuzzle_gateway::control::config::Config::parse(
        &format!("[gateway]\nlisten = \"{a}\"\n[stats]\nlisten = \"{}\"\n{}", gw.stats_addr, nodes_toml(&[&n1, &n2])),
        "<reload>",
    )
    .expect("reload config");
    gw.apply_config(cfg);
    let msg = assert_envelope(&get(a, "/cluster_kuzzle_10/_now").await, 503);
    assert!(msg.contains("cluster_kuzzle_10"), "{msg}");
    let (resp, _) = ws_call(&mut held, kuzzle("server", "now", "h2")).await;
    assert_eq!(resp["node"], "cluster_kuzzle_10", "a drained node keeps its tunnels");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------
