//! The promises that matter most to a Kuzzle operator, kept under load with the shipped Kuzzle 2
//! configuration (`proxy-configs/gateway-kuzzle2-redis.toml`, nodes found from their ID cards in
//! Redis): a rolling restart, a crash and a scale-out cost the clients nothing. Simulated Kuzzle 2
//! nodes (`kuzzle-node-sim --kuzzle2`, which follows real Kuzzle's shutdown sequence); the same
//! scenarios run on real Kuzzle in tests/scenarios/kuzzle_real.rs.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// The shipped Kuzzle 2 configuration, as a user copies it, with only what a test must change:
/// ephemeral listeners, this test's Redis, the nodes' HTTP port and loopback network.
pub fn shipped_kuzzle2_config(redis_url: &str, node_port: u16) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy-configs/gateway-kuzzle2-redis.toml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut set = |section: &str, key: &str, v: toml::Value| {
        t.get_mut(section)
            .and_then(|s| s.as_table_mut())
            .unwrap_or_else(|| panic!("{path} has no [{section}]"))
            .insert(key.into(), v);
    };
    set("gateway", "listen", "127.0.0.1:0".into());
    set("gateway", "shutdown_grace", "1s".into());
    set("stats", "listen", "127.0.0.1:0".into());
    set("cluster", "redis", redis_url.into());
    set("cluster", "node_port", i64::from(node_port).into());
    set("cluster", "allowed_networks", toml::Value::Array(vec!["127.0.0.0/8".into()]));
    t.to_string()
}

/// A cluster the scenario can restart, crash and grow, simulated or real.
trait Nodes {
    fn redis_url(&self) -> String;
    /// The HTTP port every node listens on (each on its own address).
    fn port(&self) -> u16;
    fn addr(&self, i: usize) -> SocketAddr;
    /// SIGTERM node `i`, wait for its exit (its whole shutdown sequence), start it again, ready.
    fn restart(&mut self, i: usize);
    /// SIGKILL node `i` (and, for real Kuzzle, its ID-card renewer).
    fn crash(&mut self, i: usize);
    /// Start node `i` again after a crash; returns once ready.
    fn revive(&mut self, i: usize);
    /// A new node on a new address; returns its index once ready.
    fn add(&mut self) -> usize;
}

/// Kuzzle 2 simulated nodes on 127.0.0.(BASE+i), one port for all, as a real cluster has; each
/// start is a new identity (`--fresh-id`), as real Kuzzle.
struct SimCluster {
    redis: RedisServer,
    port: u16,
    base: u8,
    nodes: Vec<Option<Sim>>,
}

impl SimCluster {
    fn start(base: u8, n: usize) -> SimCluster {
        let redis = RedisServer::start();
        let mut c = SimCluster { redis, port: free_port(), base, nodes: Vec::new() };
        for _ in 0..n {
            c.add();
        }
        c
    }

    fn spawn(&self, i: usize) -> Sim {
        let url = self.redis.url();
        // Real Kuzzle refreshes its card every 2 s with a 4 s TTL.
        Sim::start_on(
            &self.addr(i).to_string(),
            &format!("knode-{i}"),
            &["--kuzzle2", "--fresh-id", "--redis", &url, "--heartbeat", "2s"],
        )
    }
}

impl Nodes for SimCluster {
    fn redis_url(&self) -> String {
        self.redis.url()
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, self.base + i as u8], self.port))
    }
    fn restart(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.term();
        }
        self.nodes[i] = Some(self.spawn(i));
    }
    fn crash(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.kill();
        }
    }
    fn revive(&mut self, i: usize) {
        self.nodes[i] = Some(self.spawn(i));
    }
    fn add(&mut self) -> usize {
        let i = self.nodes.len();
        let s = self.spawn(i);
        self.nodes.push(Some(s));
        i
    }
}

impl Nodes for KuzzleCluster {
    fn redis_url(&self) -> String {
        KuzzleCluster::redis_url(self)
    }
    fn port(&self) -> u16 {
        self.http_port()
    }
    fn addr(&self, i: usize) -> SocketAddr {
        self.node_addr(i)
    }
    fn restart(&mut self, i: usize) {
        self.stop_node(i);
        self.wait_exit(i);
        self.start_node(i);
    }
    fn crash(&mut self, i: usize) {
        self.kill_node(i);
    }
    fn revive(&mut self, i: usize) {
        self.start_node(i);
    }
    fn add(&mut self) -> usize {
        self.add_node()
    }
}

const INDEX: &str = "restarts";
const COLLECTION: &str = "load";

/// The load of the issue's scenario: 8 GET and 8 POST-publish clients (a connection per request).
fn load(gw: SocketAddr) -> Load {
    let publish = Shot::post(&format!("/{INDEX}/{COLLECTION}/_publish"), r#"{"from":"load"}"#);
    Load::start(gw, &[(8, Shot::get("/_now")), (8, publish)], Duration::from_secs(180))
}

/// Wait until `n` nodes take traffic.
async fn wait_routable(gw: &kuzzle_gateway::app::Handle, n: usize, limit: Duration) {
    eventually(limit, &format!("{n} nodes taking traffic"), || async {
        (gw.core.snapshot_full().nodes.iter().filter(|b| b.eligible()).count() >= n).then_some(())
    })
    .await;
}

/// The issue's scenario, on any cluster of three nodes behind the shipped Kuzzle 2 config: a
/// rolling restart (0 failed requests, every subscriber receiving again), a crash (no GET fails,
/// at most the POSTs in flight on that node), a 4th node (takes traffic within 2 s of being
/// ready, 0 failed requests). Prints the figures.
async fn scenario(cluster: &mut impl Nodes, what: &str) {
    let gw = gateway(&shipped_kuzzle2_config(&cluster.redis_url(), cluster.port())).await;
    wait_routable(&gw, 3, Duration::from_secs(20)).await;
    let mut subs = Subscribers::start(gw.http_addr, 30, INDEX, COLLECTION).await;

    // Rolling restart: each node SIGTERMed, started again, 3 s apart.
    let l = load(gw.http_addr);
    for i in 0..3 {
        blocking(|| cluster.restart(i));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    wait_routable(&gw, 3, Duration::from_secs(20)).await;
    // Every subscriber receives again: through its resubscription, and once the restarted
    // Kuzzle nodes have re-established their own cluster links (publications made on one node
    // reach the others' subscribers only then: Kuzzle's part, which takes a few seconds).
    subs.mark().await;
    let mut counts = Vec::new();
    for _ in 0..60 {
        counts = subs.counts().await;
        if counts.iter().all(|&n| n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = l.stop().await;
    let seen = subs.report().await;
    println!("{what}: notifications since the restart ended, per subscriber: {counts:?}");
    println!("{what}: rolling restart: {} requests, {:?}; subscribers {}", report.total, report.by_status, seen.raw);
    assert!(report.total > 100, "{what}: the load hardly ran: {report:?}");
    assert_eq!(report.failed(), 0, "{what}: rolling restart: {:?}\n{:#?}", report.by_status, report.failures);
    assert!(
        seen.since_mark.iter().all(|&n| n > 0),
        "{what}: every subscriber receives again within 30 s of the restart's end: {}",
        seen.raw
    );

    // A crash (SIGKILL): no GET fails; at most the POSTs in flight on that node.
    let l = load(gw.http_addr);
    l.wait_ok(50, "the load running before the crash").await;
    cluster.crash(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = l.stop().await;
    println!("{what}: crash: {} requests, {:?}", report.total, report.by_status);
    assert_eq!(report.failed_of("GET"), 0, "{what}: crash: {:?}\n{:#?}", report.by_status, report.failures);
    assert!(
        report.failed_of("POST") <= 8,
        "{what}: crash: more POSTs failed than were in flight: {:?}",
        report.by_status
    );
    blocking(|| cluster.revive(1));
    wait_routable(&gw, 3, Duration::from_secs(20)).await;

    // Scale-out: a 4th node takes traffic soon after it is ready, and nothing fails.
    let l = load(gw.http_addr);
    let i = blocking(|| cluster.add());
    let ready = std::time::Instant::now();
    let addr = cluster.addr(i);
    eventually(Duration::from_secs(2), "the new node taking traffic within 2 s of being ready", || async {
        gw.core.snapshot_full().nodes.iter().any(|b| b.eligible() && b.addr == addr).then_some(())
    })
    .await;
    println!("{what}: the 4th node took traffic {:?} after it was ready", ready.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = l.stop().await;
    println!("{what}: scale-out: {} requests, {:?}", report.total, report.by_status);
    assert_eq!(report.failed(), 0, "{what}: scale-out: {:?}\n{:#?}", report.by_status, report.failures);
    let served = gw
        .core
        .snapshot_full()
        .nodes
        .iter()
        .find(|b| b.addr == addr)
        .map(|b| b.counters.sessions_total.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap_or(0);
    assert!(served > 0, "{what}: the 4th node took no request");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_restart_crash_and_scale_out_at_no_client_cost() {
    // One at a time: each loads both cores, and its timings (a node routed within 2 s of being
    // ready) are the point.
    let _one = one_at_a_time().await;
    let mut cluster = SimCluster::start(40, 3);
    scenario(&mut cluster, "simulator").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kuzzle_restart_crash_and_scale_out_at_no_client_cost() {
    // One at a time: each loads both cores, and its timings (a node routed within 2 s of being
    // ready) are the point.
    let _one = one_at_a_time().await;
    let mut cluster = blocking(|| KuzzleCluster::start(3));
    scenario(&mut cluster, "real Kuzzle").await;
}
