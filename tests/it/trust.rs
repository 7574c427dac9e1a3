//! Redis is not trusted with traffic: a node announced there waits for its own passing check, a
//! flood of forged joins is capped and rate-limited, a node at the gateway's own address is
//! refused, and a request that already crossed this gateway gets a 508. Real redis-server, real
//! `kuzzle-node-sim` processes, the gateway in-process.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kuzzle_gateway::app::Handle;
use serde_json::json;

/// Fast checks; a long heartbeat timeout, since forged members never heartbeat.
const HEALTH: &str = "[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n";

fn trust_toml(redis: &RedisServer, nodes: &str, cluster_extra: &str) -> String {
    gateway_toml(&format!(
        "user = \"kuzzle\"\npassword = \"kuzzle\"\n{HEALTH}[cluster]\nredis = \"{}\"\nheartbeat_timeout = \"60s\"\npoll_interval = \"200ms\"\nallowed_networks = [\"127.0.0.0/8\"]\n{cluster_extra}\n{nodes}",
        redis.url()
    ))
}

async fn connected(h: &Handle) {
    eventually(WAIT, "gateway following Redis", || async {
        (h.cluster.metrics.connected.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
}

/// A plugin `cluster:ready` descriptor for a node serving HTTP at `http`.
fn ready_msg(name: &str, pub_port: u16, http: SocketAddr) -> Vec<u8> {
    let node = json!({"pub": format!("tcp://{}:{pub_port}", http.ip()), "name": name, "http": format!("http://{http}"), "ready": true});
    json!(["cluster:ready", node]).to_string().into_bytes()
}

fn publish(redis: &RedisServer, payload: &[u8]) {
    let mut c = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("test Redis connection");
    let _: i64 = redis::cmd("PUBLISH").arg("cluster:ready").arg(payload).query(&mut c).expect("PUBLISH");
}

fn drops(h: &Handle, reason: &str) -> u64 {
    let i = kuzzle_gateway::control::cluster::DROP_REASONS.iter().position(|r| *r == reason).expect("known reason");
    h.cluster.metrics.dropped[i].load(Ordering::Relaxed)
}

/// Failed checks per forged member now.
fn forged_checks(h: &Handle) -> BTreeMap<String, u64> {
    h.core
        .snapshot()
        .nodes
        .iter()
        .filter(|b| b.name.starts_with("forged_"))
        .map(|b| (b.name.clone(), b.health.view().failed_checks))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_announced_ready_gets_no_request_before_its_first_passing_check() {
    let redis = RedisServer::start();
    let real = Sim::start("real", &[]);
    // Says "ready" in Redis (a forged message), but its health check answers ko.
    let liar = Sim::start("liar", &["--not-ready"]);
    let h = gateway(&trust_toml(&redis, &nodes_toml(&[&real]), "")).await;
    connected(&h).await;
    publish(&redis, &ready_msg("liar", 17511, liar.addr));
    eventually(WAIT, "liar in the node set", || async { h.core.snapshot().node("liar").map(|_| ()) }).await;
    let r = get(h.http_addr, "/liar/_now").await;
    assert_ne!(r.node(), Some("liar"), "a node Redis calls ready got a request before any check");
    assert_eq!(r.status, 503, "its prefix answers 503 while it is joining");
    // Checks keep failing: a second of balanced traffic never reaches it.
    let until = Instant::now() + Duration::from_secs(1);
    let mut n = 0;
    while Instant::now() < until && n < 500 {
        let r = get(h.http_addr, "/_now").await;
        assert_eq!((r.status, r.node()), (200, Some("real")), "balanced request {n}");
        n += 1;
    }
    let st = kuzzle_gateway::control::cluster::status(&h.cluster, &h.core).await;
    let liar_st = st["nodes"].as_array().and_then(|a| a.iter().find(|n| n["name"] == "liar").cloned());
    assert_eq!(liar_st.as_ref().map(|n| n["state"].clone()), Some(json!("joining")), "{st}");
    // Once its check passes, it takes traffic.
    let r = post(liar.addr, "/_sim/ready/true").await;
    assert_eq!(r.status, 200);
    eventually(WAIT, "liar routable after a passing check", || async {
        (get(h.http_addr, "/liar/_now").await.node() == Some("liar")).then_some(())
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_joins_leaves_service_through_real_nodes_unaffected() {
    const FORGED: u16 = 5000;
    let redis = RedisServer::start();
    let (a, b) = (Sim::start("real_a", &[]), Sim::start("real_b", &[]));
    let h = gateway(&trust_toml(&redis, &nodes_toml(&[&a, &b]), "max_nodes = 64\n")).await;
    connected(&h).await;
    let rss_before = rss_kib(std::process::id());

    // Balanced requests from 4 keep-alive clients, for the whole flood and a while after.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, total, addr) = (stop.clone(), ok.clone(), total.clone(), h.http_addr);
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = c.send("GET", "/_now", &[], Bytes::new()).await;
                total.fetch_add(1, Ordering::Relaxed);
                if r.status == 200 && matches!(r.node(), Some("real_a" | "real_b")) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // 5,000 distinct forged nodes on 127.0.0.x, nothing listening behind them.
    let url = redis.url();
    let flood = tokio::task::spawn_blocking(move || {
        let mut c = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("flood Redis connection");
        for chunk in (0..FORGED).collect::<Vec<_>>().chunks(500) {
            let mut p = redis::pipe();
            for i in chunk {
                let http: SocketAddr = ([127, 0, 0, 2 + (i % 200) as u8], 20_000 + i).into();
                p.cmd("PUBLISH").arg("cluster:ready").arg(ready_msg(&format!("forged_{i}"), 30_000 + i, http)).ignore();
            }
            p.query::<()>(&mut c).expect("PUBLISH flood");
        }
    });
    flood.await.expect("flood task");
    let m = h.cluster.metrics.clone();
    eventually(WAIT, "every forged message handled", || async {
        let seen = m.messages.load(Ordering::Relaxed) + drops(&h, "overflow");
        (seen >= u64::from(FORGED)).then_some(())
    })
    .await;
    // Two more check rounds of the forged members while the clients go on.
    let before = forged_checks(&h);
    eventually(T, "two more check rounds of the forged members", || async {
        let now = forged_checks(&h);
        before.iter().all(|(n, c)| now.get(n).is_none_or(|x| *x >= c + 2)).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let rss_after = rss_kib(std::process::id());
    let (ok, total) = (ok.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
    let dynamic = h.core.snapshot().nodes.iter().filter(|b| b.name.starts_with("forged_")).count();
    let (capped, rated) = (drops(&h, "max_nodes"), drops(&h, "join_rate"));
    eprintln!(
        "flood: {ok}/{total} balanced requests served by real nodes ({:.2} %); forged members {dynamic}; \
         dropped max_nodes={capped} join_rate={rated} overflow={}; test-process RSS {rss_before} kB -> {rss_after} kB",
        100.0 * ok as f64 / total.max(1) as f64,
        drops(&h, "overflow")
    );
    assert!(total > 100, "the clients ran ({total} requests)");
    assert_eq!(ok, total, "every balanced request reached a real node during the flood");
    assert!(dynamic <= 64, "membership capped at max_nodes: {dynamic}");
    assert!(capped + rated > 0, "refused joins counted");
    let text =
        String::from_utf8_lossy(&request(h.stats_addr, "GET", "/metrics", &[ops_auth()], Bytes::new()).await.body)
            .to_string();
    assert!(text.contains("kuzzle_gateway_cluster_dropped_total{reason=\"max_nodes\"}"), "metrics show max_nodes");
    let st = request(h.stats_addr, "GET", "/cluster/status", &[ops_auth()], Bytes::new()).await.json();
    assert_eq!(st["metrics"]["dropped"]["max_nodes"].as_u64(), Some(capped), "{}", st["metrics"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_announced_at_the_gateways_own_address_is_refused() {
    let redis = RedisServer::start();
    let real = Sim::start("real", &[]);
    let h = gateway(&trust_toml(&redis, &nodes_toml(&[&real]), "")).await;
    connected(&h).await;
    publish(&redis, &ready_msg("me", 17511, h.http_addr));
    publish(&redis, &ready_msg("my_ops", 17512, h.stats_addr));
    eventually(WAIT, "both refused as self", || async { (drops(&h, "self") >= 2).then_some(()) }).await;
    let names: Vec<String> = h.core.snapshot().nodes.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, vec!["real".to_string()], "no node at the gateway's own address");
    assert_eq!(via_node(&h, "/_now").await, Some("real".into()));
    h.shutdown().await;
}

async fn via_node(h: &Handle, path: &str) -> Option<String> {
    get(h.http_addr, path).await.node().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_already_crossed_this_gateway_gets_508() {
    let real = Sim::start("real", &[]);
    let h = gateway(&gateway_toml(&nodes_toml(&[&real]))).await;
    let (_, _, seen_h) = seen(&get(h.http_addr, "/_sim/request").await);
    let mark = seen_header(&seen_h, "x-kuzzle-gateway").expect("forwarded requests carry the gateway's mark");
    assert_eq!(mark.len(), 16, "one mark, this gateway's id: {mark}");

    // Another gateway's mark passes, and ours is appended.
    let r =
        request(h.http_addr, "GET", "/_sim/request", &[("x-kuzzle-gateway", "0123456789abcdef")], Bytes::new()).await;
    let (_, _, seen_h) = seen(&r);
    assert_eq!(seen_header(&seen_h, "x-kuzzle-gateway"), Some(format!("0123456789abcdef, {mark}")));

    for value in [mark.clone(), format!("0123456789abcdef, {mark}")] {
        let r = request(h.http_addr, "GET", "/_now", &[("x-kuzzle-gateway", &value)], Bytes::new()).await;
        let msg = assert_envelope(&r, 508);
        assert!(msg.contains("loop"), "{msg}");
        assert_eq!(r.node(), None, "never forwarded");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_pointing_at_each_other_stop_the_loop_with_508() {
    let a_port = free_port();
    let a_addr: SocketAddr = ([127, 0, 0, 1], a_port).into();
    let b = gateway(&gateway_toml(&format!("[[node]]\nname = \"gw_a\"\naddress = \"{a_addr}\"\n"))).await;
    let a_toml = format!(
        "[gateway]\nlisten = \"{a_addr}\"\nshutdown_grace = \"1s\"\n[stats]\nlisten = \"127.0.0.1:0\"\n[[node]]\nname = \"gw_b\"\naddress = \"{}\"\n",
        b.http_addr
    );
    let a = gateway(&a_toml).await;
    let before = a.core.frontend.requests_total.load(Ordering::Relaxed);
    let r = get(a.http_addr, "/_now").await;
    assert_envelope(&r, 508);
    // Client -> A -> B -> A (refused there): A saw it twice, not 200 times (health checks of
    // the two gateways cross A too, a few times at most meanwhile).
    let crossings = a.core.frontend.requests_total.load(Ordering::Relaxed) - before;
    assert!((2..10).contains(&crossings), "the loop ends at the second crossing: {crossings} requests at A");
    a.shutdown().await;
    b.shutdown().await;
}
