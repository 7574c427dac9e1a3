//! Several gateways as one fleet through Redis (`[fleet]`), each a real `kuzzle-gateway` process:
//! an operator state set on one applies on the others (latency measured over 20 changes) and
//! survives the restart of every gateway, `/hastats;json` lists every live gateway and a
//! SIGKILLed one leaves within its TTL, on one redis-server and on a 3-master Redis Cluster; a
//! Redis outage costs clients nothing, states are kept and reconciled after; after a scale-out
//! WebSockets spread over the nodes again (240 SDK-like clients on simulated Kuzzle 2 nodes, and
//! official-SDK subscribers on real Kuzzle 2.56 nodes); forged messages are ignored.
//!
//! Figures are printed (`cargo test --test scenarios fleet:: -- --nocapture`). The tests take the
//! kit's `one_at_a_time()` so that one's load does not skew another's timings.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Heartbeat and TTL of the tests' fleets.
const HEARTBEAT: &str = "200ms";
const TTL: Duration = Duration::from_millis(1000);

/// A `kuzzle-gateway` process of the fleet, on ports of its own that a restart keeps.
struct Gw {
    name: String,
    gw: Gateway,
    http: SocketAddr,
    ops: SocketAddr,
}

impl Gw {
    /// Start gateway `name` with `extra` configuration (its [fleet] section included) on free
    /// ports; returns once it serves.
    fn start(name: &str, extra: &str) -> Gw {
        let (http, ops) = (free_port(), free_port());
        // A [stats] table naming neither user nor password: no auth on the ops listener.
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:{http}\"\nshutdown_grace = \"1s\"\nwatch = false\n\
             [stats]\nlisten = \"127.0.0.1:{ops}\"\n{extra}"
        );
        let gw = Gateway::builder().name(name).config(&text).start();
        Gw { name: name.into(), http: gw.http(), ops: gw.ops(), gw }
    }

    async fn stats(&self) -> Value {
        let r = get(self.ops, "/hastats;json").await;
        assert_eq!(r.status, 200, "{}: /hastats;json", self.name);
        r.json()
    }

    /// POST /nodes/NODE/state; the status.
    async fn set_state(&self, node: &str, state: &str) -> u16 {
        let body = Bytes::from(format!("{{\"state\":\"{state}\"}}"));
        request(self.ops, "POST", &format!("/nodes/{node}/state"), &[JSON], body).await.status
    }

    /// The names of the gateways this one lists.
    async fn sees(&self) -> Vec<String> {
        let j = self.stats().await;
        let mut v: Vec<String> = j["gateways"]
            .as_array()
            .map(|a| a.iter().filter_map(|g| g["name"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A node's object in a `/hastats;json`.
fn node<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {j}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// min / median / p90 / max of a sample, in ms.
fn spread(v: &mut [u64]) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!("n={} min {} / median {} / p90 {} / max {} ms", v.len(), at(0.0), at(0.5), at(0.9), at(1.0))
}

/// Where the fleet's Redis is, as `[fleet]` keys.
enum Redis {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn keys(&self) -> String {
        match self {
            Redis::One(r) => format!("redis = \"{}\"\n", r.url()),
            Redis::Cluster(c) => format!("redis_cluster = {:?}\n", c.urls()),
        }
    }
}

/// The operator-state and fleet-view scenario on `redis` with `n` gateways in front of two
/// static nodes; returns the report lines.
async fn states_and_view(redis: &Redis, n: usize, label: &str) -> Vec<String> {
    let mut report = Vec::new();
    let sims = [Sim::start("n1", &[]), Sim::start("n2", &[])];
    let nodes = nodes_toml(&sims.iter().collect::<Vec<_>>());
    let fleet = |name: &str| {
        format!(
            "[health]\ninterval = \"500ms\"\n[fleet]\n{}name = \"{name}\"\nheartbeat = \"{HEARTBEAT}\"\nttl = \"{}ms\"\n{nodes}",
            redis.keys(),
            TTL.as_millis()
        )
    };
    let mut gws = Vec::new();
    for i in 1..=n {
        let name = format!("gw-{i}");
        gws.push(Gw::start(&name, &fleet(&name)));
    }
    let all: Vec<String> = gws.iter().map(|g| g.name.clone()).collect();
    for g in &gws {
        eventually(T, &format!("{} lists every gateway", g.name), || async { (g.sees().await == all).then_some(()) })
            .await;
    }
    // The view: every live gateway with its address, uptime, counters, fingerprint, last seen.
    let j = gws[0].stats().await;
    let listed = j["gateways"].as_array().expect("gateways array");
    for g in listed {
        for k in ["name", "address", "uptime_ms", "connections", "tunnels", "fingerprint", "last_seen_ms"] {
            assert!(!g[k].is_null(), "gateway entry without {k}: {g}");
        }
        let me = gws.iter().find(|x| g["name"] == x.name.as_str()).expect("a gateway of ours");
        assert_eq!(g["address"], me.http.to_string(), "its client address");
        assert_eq!(g["config_differs"], false, "same file but names and ports: {g}");
    }
    assert_eq!(j["fleet"]["connected"], true);
    // The page (well formed, a row per gateway) and the CSV (a `kuzzle-gateways` row per gateway,
    // a `kuzzle-fleet` row per node, the haproxy column count kept).
    let page = String::from_utf8_lossy(&get(gws[0].ops, "/hastats").await.body).into_owned();
    let opts = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&page, opts).unwrap_or_else(|e| panic!("page: {e}\n{page}"));
    let rows: Vec<&str> = doc.descendants().filter_map(|n| n.attribute("data-gateway")).collect();
    assert_eq!(rows.len(), n, "a row per gateway on the page: {rows:?}");
    assert!(doc.descendants().any(|n| n.attribute("id") == Some("fleet")), "the fleet section");
    let csv = String::from_utf8_lossy(&get(gws[0].ops, "/hastats;csv").await.body).into_owned();
    let width = csv.lines().next().map_or(0, |h| h.split(',').count());
    let of = |px: &str| csv.lines().filter(|l| l.starts_with(&format!("{px},"))).collect::<Vec<_>>();
    assert_eq!(of("kuzzle-gateways").len(), n, "{csv}");
    assert_eq!(of("kuzzle-fleet").len(), 2, "{csv}");
    assert!(of("kuzzle-gateways").iter().all(|l| l.split(',').count() == width), "column count");

    // 20 changes, each through another gateway: how long until every other gateway applied it.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let via = &gws[i % n];
        let state = if i % 2 == 0 { "drain" } else { "ready" };
        let t0 = now_ms();
        let status = via.set_state("n1", state).await;
        assert_eq!(status, 200, "change {i} through {}", via.name);
        for g in gws.iter().filter(|g| g.name != via.name) {
            let applied = eventually(T, &format!("{} applies change {i}", g.name), || async {
                let j = g.stats().await;
                let n1 = node(&j, "n1");
                (n1["admin"] == state && n1["admin_by"] == via.name.as_str()).then(|| n1["admin_applied_ms"].as_u64())
            })
            .await
            .expect("admin_applied_ms");
            latencies.push(applied.saturating_sub(t0));
        }
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    report.push(format!("{label}: DRAIN/READY applied by the other gateways: {}", spread(&mut latencies)));
    assert!(median <= 100, "median propagation {median} ms > 100 ms: {sorted:?}");

    // Survives the restart of every gateway (SIGKILL, then start again).
    assert_eq!(gws[1 % n].set_state("n1", "drain").await, 200);
    assert_eq!(gws[0].set_state("n2", "maint").await, 200);
    for g in &mut gws {
        g.gw.kill();
    }
    for g in &mut gws {
        g.gw.restart();
    }
    for g in &gws {
        // The first answer after start-up already has them (read before serving).
        let j = g.stats().await;
        assert_eq!(node(&j, "n1")["admin"], "drain", "{} after a restart of every gateway", g.name);
        assert_eq!(node(&j, "n2")["admin"], "maint", "{}", g.name);
        assert_eq!(node(&j, "n1")["admin_by"], gws[1 % n].name.as_str());
        let r = get(g.http, "/n1/_now").await;
        assert_eq!(r.status, 503, "{}: the drained node's prefix is refused", g.name);
    }
    for g in &gws {
        assert_eq!(g.set_state("n1", "ready").await, 200);
        assert_eq!(g.set_state("n2", "ready").await, 200);
    }
    for g in &gws {
        eventually(T, &format!("{} lists every gateway again", g.name), || async {
            (g.sees().await == all).then_some(())
        })
        .await;
    }

    // A gateway with another configuration is flagged by the others.
    let last = gws.len() - 1;
    let odd_text = format!("{}[balance]\nretries = 1\n", gws[last].gw.config_text().expect("config text"));
    gws[last].gw.set_config(&odd_text);
    gws[last].gw.restart();
    let odd = gws[last].name.clone();
    eventually(T, "the odd configuration flagged", || async {
        let j = gws[0].stats().await;
        let g = j["gateways"].as_array()?.iter().find(|g| g["name"] == odd.as_str())?.clone();
        let flagged = if n > 2 { g["config_differs"] == true } else { j["fleet"]["configs_agree"] == false };
        flagged.then_some(())
    })
    .await;

    // SIGKILL one: it leaves the others' view within its TTL.
    let t0 = Instant::now();
    gws[last].gw.kill();
    let mut gone = Vec::new();
    for g in &gws[..last] {
        eventually(TTL * 3, &format!("{odd} gone from {}", g.name), || async {
            (!g.sees().await.contains(&odd)).then_some(())
        })
        .await;
        gone.push(t0.elapsed().as_millis() as u64);
    }
    report.push(format!(
        "{label}: a SIGKILLed gateway left the others' view after {gone:?} ms (ttl {} ms)",
        TTL.as_millis()
    ));
    // Checked every 50 ms after its key or its last heartbeat is older than the TTL.
    let bound = TTL.as_millis() as u64 + 300;
    assert!(gone.iter().all(|&g| g <= bound), "left after {gone:?} ms, more than ttl + 300 ms");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_states_and_fleet_view_on_one_redis_three_gateways() {
    // One at a time: timings are the point.
    let _one = one_at_a_time().await;
    let redis = Redis::One(RedisServer::start());
    for l in states_and_view(&redis, 3, "one redis-server, 3 gateways").await {
        println!("FLEET {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_states_and_fleet_view_on_a_redis_cluster_two_gateways() {
    // One at a time: timings are the point.
    let _one = one_at_a_time().await;
    let redis = Redis::Cluster(RedisCluster::start());
    for l in states_and_view(&redis, 2, "3-master Redis Cluster, 2 gateways").await {
        println!("FLEET {l}");
    }
}

/// Simulated Kuzzle 2 nodes on 127.0.0.(BASE+i), one port for all (as real nodes, one per host),
/// their ID cards in `redis`.
struct K2Nodes {
    port: u16,
    base: u8,
    url: String,
    nodes: Vec<Sim>,
}

impl K2Nodes {
    fn start(url: &str, base: u8, n: usize) -> K2Nodes {
        let mut k = K2Nodes { port: free_port(), base, url: url.into(), nodes: Vec::new() };
        for _ in 0..n {
            k.add();
        }
        k
    }

    fn add(&mut self) -> String {
        let i = self.nodes.len();
        let addr = SocketAddr::from(([127, 0, 0, self.base + i as u8], self.port));
        let name = format!("k{}-{i}", self.base);
        self.nodes.push(Sim::start_on(
            &addr.to_string(),
            &name,
            &["--kuzzle2", "--redis", &self.url, "--heartbeat", "1s"],
        ));
        name
    }

    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|s| s.name.clone()).collect()
    }

    /// A gateway's configuration: nodes from their ID cards, a fleet with rebalancing.
    fn gateway_toml(&self, name: &str, rate: u32) -> String {
        format!(
            "[health]\nkuzzle2_path = \"/_healthCheck\"\ninterval = \"500ms\"\n\
             [cluster]\nredis = \"{url}\"\nnode_port = {port}\npubsub = false\ndiscovery = false\nkuzzle2 = true\n\
             poll_interval = \"200ms\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
             [fleet]\nname = \"{name}\"\nheartbeat = \"250ms\"\nttl = \"1500ms\"\nrebalance_websockets = true\nrebalance_rate = {rate}\n",
            url = self.url,
            port = self.port
        )
    }
}

/// What the SDK-like clients saw.
#[derive(Default, Debug)]
struct Seen {
    /// Per client: the node it is on now (None while away).
    node: Vec<Option<String>>,
    /// Per client: closes received from the gateway.
    moves: Vec<u32>,
    /// Close codes received, all clients.
    codes: BTreeMap<u16, u64>,
    /// Connection failures and unexpected ends (no close frame).
    errors: Vec<String>,
}

/// WebSocket clients as the official SDK behaves: after a close whose code is not 1000 they
/// reconnect 1 s later; a close with 1000 ends them. They first connect through the gateways in
/// turn, and reconnect through `back` (None: either, at random, as an L4 balancer would).
struct Clients {
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(n: usize, gws: &[SocketAddr], back: Option<SocketAddr>) -> Clients {
        let seen = Arc::new(Mutex::new(Seen { node: vec![None; n], moves: vec![0; n], ..Default::default() }));
        let stop = tokio_util::sync::CancellationToken::new();
        let gws = gws.to_vec();
        let tasks = (0..n)
            .map(|i| {
                let (seen, stop, gws) = (seen.clone(), stop.clone(), gws.clone());
                tokio::spawn(async move {
                    // Spread over the first 2 s; then split evenly over the gateways.
                    tokio::time::sleep(Duration::from_millis((i as u64 * 2000) / n as u64)).await;
                    let mut gw = gws[i % gws.len()];
                    // Bounded: the test stops them; each turn ends with a close or an error.
                    for _ in 0..1000 {
                        let url = format!("ws://{gw}/");
                        let conn = tokio::select! {
                            _ = stop.cancelled() => return,
                            c = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)) => c,
                        };
                        let (mut ws, resp) = match conn {
                            Ok(Ok(x)) => x,
                            other => {
                                seen.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("client {i}: connect {url}: {other:?}"));
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        };
                        let node = resp.headers().get("x-kuzzle-node").and_then(|v| v.to_str().ok()).map(String::from);
                        seen.lock().unwrap_or_else(|e| e.into_inner()).node[i] = node;
                        let end = loop {
                            let m = tokio::select! {
                                _ = stop.cancelled() => {
                                    let _ = ws.close(None).await;
                                    return;
                                }
                                m = ws.next() => m,
                            };
                            match m {
                                Some(Ok(Message::Close(f))) => break Ok(f.map_or(1005, |f| u16::from(f.code))),
                                Some(Ok(_)) => continue,
                                Some(Err(e)) => break Err(e.to_string()),
                                None => break Err("ended without a close frame".into()),
                            }
                        };
                        {
                            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                            s.node[i] = None;
                            match end {
                                Ok(code) => {
                                    *s.codes.entry(code).or_default() += 1;
                                    s.moves[i] += 1;
                                    if code == 1000 {
                                        return;
                                    }
                                }
                                Err(e) => s.errors.push(format!("client {i}: {e}")),
                            }
                        }
                        // The SDK's fixed reconnection delay.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        gw = back.unwrap_or_else(|| gws[rand::random_range(0..gws.len())]);
                    }
                })
            })
            .collect();
        Clients { seen, stop, tasks }
    }

    /// Clients per node now, and how many are connected.
    fn per_node(&self) -> (BTreeMap<String, u64>, usize) {
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = BTreeMap::new();
        for n in s.node.iter().flatten() {
            *m.entry(n.clone()).or_default() += 1;
        }
        (m, s.node.iter().filter(|n| n.is_some()).count())
    }

    async fn stop(self) -> Seen {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        Arc::try_unwrap(self.seen).map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).unwrap_or_default()
    }
}

/// Every one of `names` within `want` ± `tol`.
fn even(per: &BTreeMap<String, u64>, names: &[String], want: u64, tol: u64) -> bool {
    names.iter().all(|n| per.get(n).copied().unwrap_or(0).abs_diff(want) <= tol)
}

/// Both gateways report no rebalancing under way.
async fn rebalancing_idle(gws: &[Gw]) -> bool {
    for g in gws {
        if g.stats().await["fleet"]["rebalance"]["phase"] != "idle" {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_spread_again_after_a_node_joins() {
    // One at a time: timings are the point.
    let _one = one_at_a_time().await;
    let redis = RedisServer::start();
    let mut k = K2Nodes::start(&redis.url(), 60, 3);
    let gws = [Gw::start("gw-a", &k.gateway_toml("gw-a", 20)), Gw::start("gw-b", &k.gateway_toml("gw-b", 20))];
    let names = k.names();
    for g in &gws {
        eventually(T, "3 nodes UP on both gateways", || async {
            let j = g.stats().await;
            (j["process"]["nodes_eligible"] == 3).then_some(())
        })
        .await;
    }
    // Moved clients all come back through gw-a (as when DNS lists it first): gw-a places the
    // clients gw-b moved, which only the fleet's counts let it do evenly.
    let clients = Clients::start(240, &[gws[0].http, gws[1].http], Some(gws[0].http));
    // Fleet-wide leastconn: 240 clients through 2 gateways land 80 per node.
    let first = eventually(Duration::from_secs(20), "240 clients connected", || async {
        let (per, up) = clients.per_node();
        (up == 240).then_some(per)
    })
    .await;
    println!("FLEET rebalancing: 240 clients over 3 nodes through 2 gateways: {first:?}");
    assert!(even(&first, &names, 80, 10), "the fleet's first spread is even: {first:?}");

    // Scale out: a 4th node. Every node at 60 ± 10 within 90 s.
    let t0 = Instant::now();
    let added = k.add();
    let names = k.names();
    let reached = eventually(Duration::from_secs(90), "every node at 60 ± 10", || async {
        let (per, up) = clients.per_node();
        (up == 240 && even(&per, &names, 60, 10)).then(|| t0.elapsed())
    })
    .await;
    // Then the rebalancing ends (the gateways see it even) and nothing moves any more.
    eventually(Duration::from_secs(30), "rebalancing over on both gateways", || async {
        rebalancing_idle(&gws).await.then_some(())
    })
    .await;
    // Nothing moves any more: a quiet window of a few heartbeats and a reconnection delay.
    let moves_then: u32 = clients.seen.lock().unwrap_or_else(|e| e.into_inner()).moves.iter().sum();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let moves_now: u32 = clients.seen.lock().unwrap_or_else(|e| e.into_inner()).moves.iter().sum();
    assert_eq!(moves_then, moves_now, "a client moved after the rebalancing was over");
    assert!(rebalancing_idle(&gws).await, "a new rebalancing started on an even fleet");
    let (per, up) = clients.per_node();
    let j = gws[0].stats().await;
    let fleet_view: BTreeMap<String, u64> =
        names.iter().map(|n| (n.clone(), node(&j, n)["fleet"]["tunnels"].as_u64().unwrap_or(0))).collect();
    for g in &gws {
        let r = &g.stats().await["fleet"]["rebalance"];
        println!("FLEET rebalancing: {}: {r}", g.name);
    }
    let seen = clients.stop().await;
    let moved_once = seen.moves.iter().filter(|&&m| m == 1).count();
    let moved_twice = seen.moves.iter().filter(|&&m| m == 2).count();
    let moved_more = seen.moves.iter().filter(|&&m| m > 2).count();
    println!(
        "FLEET rebalancing: node {added} joined; every node within 60 ± 10 after {:.1} s; final {per:?} ({up} connected; gw-a's fleet view {fleet_view:?}); clients moved once {moved_once}, twice {moved_twice}, more {moved_more}; close codes {:?}; errors {}",
        reached.as_secs_f64(),
        seen.codes,
        seen.errors.len()
    );
    assert!(even(&per, &names, 60, 10), "still even once over: {per:?}");
    assert_eq!(up, 240);
    assert_eq!(seen.codes.get(&1000), None, "never a close with 1000 (the SDK would not come back)");
    assert!(seen.codes.keys().all(|c| *c == 1012), "rebalancing closes with 1012: {:?}", seen.codes);
    assert!(moved_more == 0, "no client moved more than twice: {:?}", seen.moves);
    assert!(moved_twice <= 6, "a client moved twice only in races: {moved_twice}");
    assert!(seen.errors.is_empty(), "client errors: {:?}", &seen.errors[..seen.errors.len().min(5)]);
    let total_moves: u32 = seen.moves.iter().sum();
    assert!(total_moves <= 90, "{total_moves} moves for 60 to move");
}

/// The fleet's totals of WebSockets per member node, from a gateway's `/hastats;json`.
fn fleet_tunnels(j: &Value) -> BTreeMap<String, u64> {
    j["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["member"] == true)
                .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["fleet"]["tunnels"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Real Kuzzle 2.56 nodes (`test-support/kuzzle-real`) found from their ID cards, official-SDK
/// clients through two gateways: after a node joins, the clients spread again, every one comes
/// back (the SDK reconnects after 1012), its subscription restored, notifications flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kuzzle_official_sdk_clients_spread_again_after_a_node_joins() {
    // One at a time: timings are the point.
    let _one = one_at_a_time().await;
    let mut kuzzle = tokio::task::block_in_place(|| KuzzleCluster::start(2));
    let toml = |name: &str| {
        format!(
            "[health]\ninterval = \"1s\"\nfastinter = \"250ms\"\n\
             [cluster]\nredis = \"{}\"\nnode_port = {}\npubsub = false\ndiscovery = false\nkuzzle2 = true\n\
             poll_interval = \"250ms\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
             [fleet]\nname = \"{name}\"\nheartbeat = \"250ms\"\nttl = \"1500ms\"\nrebalance_websockets = true\nrebalance_rate = 20\n",
            kuzzle.redis_url(),
            kuzzle.http_port()
        )
    };
    let gws = [Gw::start("gw-a", &toml("gw-a")), Gw::start("gw-b", &toml("gw-b"))];
    for g in &gws {
        eventually(Duration::from_secs(20), "2 real nodes UP", || async {
            (g.stats().await["process"]["nodes_eligible"] == 2).then_some(())
        })
        .await;
    }
    // 2 x 40 official-SDK clients (each process through one gateway), subscribed to one collection.
    let mut subs = Vec::new();
    for g in &gws {
        subs.push(Subscribers::start(g.http, 40, "fleet", "sdk").await);
    }
    let before = eventually(T, "the fleet counts the 80 clients", || async {
        let per = fleet_tunnels(&gws[0].stats().await);
        (per.values().sum::<u64>() == 80).then_some(per)
    })
    .await;
    let t0 = Instant::now();
    tokio::task::block_in_place(|| kuzzle.add_node());
    let per = eventually(Duration::from_secs(90), "80 SDK clients at 27 ± 3 per node over 3 nodes", || async {
        let per = fleet_tunnels(&gws[0].stats().await);
        (per.len() == 3 && per.values().sum::<u64>() == 80 && per.values().all(|&n| n.abs_diff(27) <= 3)).then_some(per)
    })
    .await;
    let took = t0.elapsed();
    eventually(Duration::from_secs(30), "rebalancing over", || async { rebalancing_idle(&gws).await.then_some(()) })
        .await;
    // Subscriptions restored: publishes through either gateway reach every client again.
    for s in &mut subs {
        s.mark().await;
    }
    for i in 0..3 {
        let body = Bytes::from(format!("{{\"n\":{i}}}"));
        let r = request(gws[i % 2].http, "POST", "/fleet/sdk/_publish", &[JSON], body).await;
        assert_eq!(r.status, 200, "publish: {}", String::from_utf8_lossy(&r.body));
    }
    // The report ends the subscribers: the last notifications (node to node through Kuzzle's
    // cluster) arrive first.
    let mut reports = Vec::new();
    for s in subs {
        let s = tokio::sync::Mutex::new(s);
        eventually(T, "every subscriber notified 3 times", || async {
            s.lock().await.counts().await.iter().all(|&n| n >= 3).then_some(())
        })
        .await;
        reports.push(s.into_inner().report().await);
    }
    let disconnected: u64 = reports.iter().map(|r| r.disconnected).sum();
    let reconnected: u64 = reports.iter().map(|r| r.reconnected).sum();
    println!(
        "FLEET real Kuzzle 2.56, official SDK: 80 subscribers {before:?}; a node joined; {per:?} after {:.1} s (node start included); {disconnected} disconnections, {reconnected} reconnections",
        took.as_secs_f64()
    );
    for r in &reports {
        assert!(r.since_mark.iter().all(|&n| n >= 3), "every subscriber gets every notification after: {}", r.raw);
        // The SDK reports every close but 1000 as a networkError, then reconnects: only the
        // rebalancing's own closes may be there.
        let errors = r.raw["errors"].as_array().cloned().unwrap_or_default();
        assert!(
            errors.iter().all(|e| e.as_str().is_some_and(|e| e.contains("ws status=1012"))),
            "SDK errors other than the rebalancing's closes: {}",
            r.raw
        );
    }
    assert_eq!(disconnected, reconnected, "every moved SDK client came back");
    assert!((20..=36).contains(&disconnected), "about 27 of 80 should move: {disconnected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_clients_nothing_and_states_are_reconciled_after() {
    // One at a time: timings are the point.
    let _one = one_at_a_time().await;
    let mut redis = RedisServer::start();
    let sims = [Sim::start("n1", &[]), Sim::start("n2", &[]), Sim::start("n3", &[])];
    let nodes = nodes_toml(&sims.iter().collect::<Vec<_>>());
    let toml = |name: &str| {
        format!(
            "[health]\ninterval = \"500ms\"\n[fleet]\nredis = \"{}\"\nname = \"{name}\"\nheartbeat = \"{HEARTBEAT}\"\nttl = \"{}ms\"\nrebalance_websockets = true\n{nodes}",
            redis.url(),
            TTL.as_millis()
        )
    };
    let gws = [Gw::start("gw-a", &toml("gw-a")), Gw::start("gw-b", &toml("gw-b"))];
    for g in &gws {
        eventually(T, "both gateways listed", || async { (g.sees().await.len() == 2).then_some(()) }).await;
    }
    assert_eq!(gws[0].set_state("n1", "drain").await, 200);
    eventually(T, "gw-b drains n1", || async { (node(&gws[1].stats().await, "n1")["admin"] == "drain").then_some(()) })
        .await;
    let clients = Clients::start(20, &[gws[0].http, gws[1].http], None);
    eventually(T, "20 WebSockets open", || async { (clients.per_node().1 == 20).then_some(()) }).await;
    let load = Load::start(gws[0].http, &[(2, Shot::get("/_now"))], Duration::from_secs(60));
    let load_b = Load::start(gws[1].http, &[(2, Shot::get("/_now"))], Duration::from_secs(60));

    // Redis killed for 10 s (no persistence: it comes back empty).
    let t_kill = Instant::now();
    redis.kill();
    eventually(T, "both gateways notice", || async {
        for g in &gws {
            if g.stats().await["fleet"]["connected"] != false {
                return None;
            }
        }
        Some(())
    })
    .await;
    // Meanwhile: states kept, and a change through gw-b applies there only (202: pending).
    assert_eq!(gws[1].set_state("n2", "drain").await, 202, "applied here, shared later");
    let (a, b) = (gws[0].stats().await, gws[1].stats().await);
    assert_eq!(node(&a, "n1")["admin"], "drain", "gw-a keeps its states");
    assert_eq!(node(&b, "n1")["admin"], "drain", "gw-b keeps its states");
    assert_eq!(node(&b, "n2")["admin"], "drain");
    assert_eq!(node(&a, "n2")["admin"], "ready", "not shared yet");
    assert_eq!(b["fleet"]["pending_states"], 1);
    let r = get(gws[0].http, "/n1/_now").await;
    assert_eq!(r.status, 503, "the drained node stays drained during the outage");
    for g in &gws {
        let r = &g.stats().await["fleet"]["rebalance"];
        assert!(
            r["reason"].as_str().is_some_and(|w| w.contains("Redis unreachable")) && r["phase"] != "closing",
            "{}: no rebalancing on unknown counts: {r}",
            g.name
        );
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(t_kill.elapsed())).await;
    redis.restart();
    let t_back = Instant::now();
    let shared = eventually(T, "gw-a takes gw-b's change once Redis is back", || async {
        let j = gws[0].stats().await;
        let n2 = node(&j, "n2");
        (n2["admin"] == "drain" && n2["admin_by"] == "gw-b").then(|| t_back.elapsed())
    })
    .await;
    // Redis has both states again (put back by the gateways, with the change made meanwhile).
    let mut c = redis.conn().await;
    let stored: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("{kuzzle-gateway}:states").query_async(&mut c).await.expect("HGETALL");
    assert!(stored.get("n1").is_some_and(|r| r.contains("\"drain\"")), "n1 put back: {stored:?}");
    assert!(stored.get("n2").is_some_and(|r| r.contains("\"gw-b\"")), "n2 written: {stored:?}");
    for g in &gws {
        eventually(T, "the view whole again", || async { (g.sees().await.len() == 2).then_some(()) }).await;
    }
    let report = load.stop().await;
    let report_b = load_b.stop().await;
    let seen = clients.stop().await;
    println!(
        "FLEET Redis outage: killed for 10 s; {} + {} requests, {} failed; WebSockets: {:?} closes, {} errors; gw-b's change reached gw-a {} ms after Redis came back",
        report.total,
        report_b.total,
        report.failed() + report_b.failed(),
        seen.codes,
        seen.errors.len(),
        shared.as_millis()
    );
    assert!(report.total > 50 && report_b.total > 50, "the load ran");
    assert_eq!(report.failed() + report_b.failed(), 0, "{:?} {:?}", report.failures, report_b.failures);
    assert!(seen.codes.is_empty() && seen.errors.is_empty(), "no WebSocket closed: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_fleet_messages_are_ignored_and_the_last_good_state_kept() {
    // One at a time: timings are the point.
    let _one = one_at_a_time().await;
    let redis = RedisServer::start();
    let sims = [Sim::start("n1", &[]), Sim::start("n2", &[])];
    let nodes = nodes_toml(&sims.iter().collect::<Vec<_>>());
    let toml = format!(
        "[fleet]\nredis = \"{}\"\nname = \"gw-a\"\nheartbeat = \"{HEARTBEAT}\"\nttl = \"{}ms\"\n{nodes}",
        redis.url(),
        TTL.as_millis()
    );
    let gw = Gw::start("gw-a", &toml);
    assert_eq!(gw.set_state("n1", "drain").await, 200);
    let mut c = redis.conn().await;
    let publish = |chan: &'static str, payload: String| redis::cmd("PUBLISH").arg(chan).arg(payload).clone();
    let forged = [
        publish("{kuzzle-gateway}:states", "not json".into()),
        // Well formed but for a node name that is no path segment, and with an unknown field.
        publish("{kuzzle-gateway}:states", r#"{"seq":99,"node":"../n1","state":"maint","by":"x","at_ms":1}"#.into()),
        publish("{kuzzle-gateway}:states", r#"{"seq":99,"node":"n1","state":"maint","by":"x","at_ms":1,"x":1}"#.into()),
        publish("{kuzzle-gateway}:states", r#"{"seq":99,"node":"n1","state":"off","by":"x","at_ms":1}"#.into()),
        // A peer claiming a billion tunnels on n2 (it would steer every gateway away from it).
        publish(
            "{kuzzle-gateway}:gateways",
            format!(
                r#"{{"beat":{{"name":"evil","instance":"1","host":"h","address":"a","ops":"o","version":"v","pid":1,"started_ms":1,"at_ms":1,"beat":1,"fingerprint":"f","connections":1,"tunnels":1,"nodes":{{"n2":{{"tunnels":{},"active":1}}}}}}}}"#,
                1_000_000_000u64
            ),
        ),
        publish("{kuzzle-gateway}:gateways", "[1,2,3]".into()),
        // A garbage record in the states hash itself.
        redis::cmd("HSET").arg("{kuzzle-gateway}:states").arg("n2").arg("{\"garbage\":true}").clone(),
    ];
    for cmd in &forged {
        let _: redis::Value = cmd.query_async(&mut c).await.expect("forge");
    }
    // Dropped and counted, each a warning in the log; the state stays, the view has no "evil".
    let dropped = eventually(T, "the forged inputs counted as dropped", || async {
        let m = get(gw.ops, "/metrics").await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let total: u64 = text
            .lines()
            .filter(|l| l.starts_with("kuzzle_gateway_fleet_dropped_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (total >= 7).then_some(total)
    })
    .await;
    let j = gw.stats().await;
    assert_eq!(node(&j, "n1")["admin"], "drain", "the last good state stands");
    assert_eq!(node(&j, "n2")["admin"], "ready");
    assert_eq!(gw.sees().await, vec!["gw-a".to_string()], "no forged gateway in the view");
    println!("FLEET forged input: {dropped} messages and records dropped, state kept");
    // And the fleet still works: a real change goes through.
    assert_eq!(gw.set_state("n2", "drain").await, 200);
    assert_eq!(node(&gw.stats().await, "n2")["admin"], "drain");
}
