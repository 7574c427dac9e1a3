//! Hot reload and binary upgrade under load: config changes written to the watched file (nodes
//! added and removed, algorithm switched, a broken file in the middle), a listener moved to a new
//! address, `drain_timeout`, and the real binary handing its sockets (and, with Redis
//! membership, its state) to a new process; a start with Redis membership under load. Every
//! test asserts zero non-2xx (so no "no node" 503), zero unexpected WebSocket disconnects and
//! every message echoed, and zero refused connections once the gateway listens.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use kuzzle_gateway::app;
use kuzzle_gateway::control::config::Config;
use kuzzle_gateway::control::listeners::ListenerKind;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WS_CLIENTS: usize = 50;
const CHANGES: usize = 20;
/// Hard cap on how long any load loop runs, whatever happens.
const LOAD_CAP: Duration = Duration::from_secs(40);

/// Replace the file as editors and config-management tools do: write aside, rename over.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

fn node_lines(sims: &[&Sim]) -> String {
    nodes_toml(sims)
}

/// The load of these tests: `n` clients asking `/_serverInfo` every 10 ms, half on a new
/// connection per request (what a refused connection shows on), half on one kept alive.
fn load(addr: SocketAddr, n: usize) -> Load {
    let shot = Shot::get("/_serverInfo");
    Load::builder(addr)
        .fresh(n.div_ceil(2), shot.clone())
        .keep_alive(n / 2, shot)
        .pause(Duration::from_millis(10))
        .max(LOAD_CAP)
        .start()
}

/// Open `n` WebSockets to `addr` (all must succeed).
async fn open_ws(addr: SocketAddr, path: &str, n: usize) -> Vec<Ws> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(ws(addr, path).await);
    }
    v
}

fn config_text(listen: &str, stats: &str, algorithm: &str, extra: &str, nodes: &str) -> String {
    format!(
        "[gateway]\nlisten = \"{listen}\"\nshutdown_grace = \"1s\"\n{extra}\n\
         [stats]\nlisten = \"{stats}\"\n\
         [balance]\nalgorithm = \"{algorithm}\"\n\
         [health]\npath = \"/_healthCheck\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n\
         {nodes}"
    )
}

// -------------------------------------------------------------------------------------------------

/// 50 WebSocket clients and HTTP load while 20 changes are written to the watched file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_under_load_lose_nothing() {
    let sims = [Sim::start("n1", &[]), Sim::start("n2", &[]), Sim::start("n3", &[]), Sim::start("n4", &[])];
    let dir = scratch_dir("watch");
    let file = dir.join("gw.toml");
    let algos = ["leastconn", "roundrobin", "source"];
    let text0 = config_text("127.0.0.1:0", "127.0.0.1:0", "leastconn", "", &node_lines(&[&sims[0], &sims[1]]));
    std::fs::write(&file, &text0).expect("write config");
    let cfg = Config::load(&file).expect("valid config");
    let h = app::bind_and_start(cfg).expect("gateway starts");

    let load = load(h.http_addr, 4);
    let clients = WsLoad::start(open_ws(h.http_addr, "/", WS_CLIENTS).await, Duration::from_millis(150), LOAD_CAP);

    let mut rng_state = 7u64;
    let mut next = move || {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        rng_state >> 33
    };
    let broken_at = CHANGES / 2;
    for step in 0..CHANGES {
        let failed_before = h.reloads.failed.load(Ordering::Relaxed);
        if step == broken_at {
            // A broken file: refused, the running configuration stays.
            let running = h.config();
            let bad = text0.replace("[balance]\n", "[balance]\nalgoritm = \"random\"\n");
            write_by_rename(&file, &bad);
            eventually(Duration::from_secs(10), "broken config refused", || async {
                (h.reloads.failed.load(Ordering::Relaxed) > failed_before).then_some(())
            })
            .await;
            let st = h.reloads.last().expect("reload recorded");
            assert!(!st.ok, "broken config accepted: {st:?}");
            assert!(st.message.contains("gw.toml:"), "no file:line in {:?}", st.message);
            assert!(st.message.contains("balance.algoritm"), "no key in {:?}", st.message);
            assert_eq!(*h.config(), *running, "broken file changed the running configuration");
            continue;
        }
        // n1 always stays; the others come and go.
        let mut set: Vec<&Sim> = vec![&sims[0]];
        for s in &sims[1..] {
            if next() % 2 == 0 {
                set.push(s);
            }
        }
        let algo = algos[step % algos.len()];
        let text = config_text("127.0.0.1:0", "127.0.0.1:0", algo, "", &node_lines(&set));
        if step % 2 == 0 {
            write_by_rename(&file, &text);
        } else {
            std::fs::write(&file, &text).expect("write config in place");
        }
        let want: Vec<String> = set.iter().map(|s| s.name.clone()).collect();
        eventually(Duration::from_secs(10), &format!("change {step} applied"), || async {
            let c = h.config();
            let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
            (names == want && c.balance.algorithm.as_str() == algo).then_some(())
        })
        .await;
        // (reloads_ok is bumped just after the swap; counted once at the end)
        // Listeners did not move.
        assert_eq!(h.listeners.local_addr(ListenerKind::Http), Some(h.http_addr));
        // Traffic on this configuration before the next change.
        load.wait_ok(10, &format!("requests served after change {step}")).await;
    }
    // A last stretch of traffic on the final configuration, then stop.
    load.wait_ok(40, "requests served on the final configuration").await;
    let (report, ws) = (load.stop().await, clients.stop().await);
    eprintln!("config_changes_under_load: {report:?}; {ws:?}");
    report.assert_clean("config changes under load");
    ws.assert_clean("config changes under load");
    assert!(ws.echoed >= (WS_CLIENTS * CHANGES) as u64 / 4, "too little WS traffic: {ws:?}");
    assert!(
        h.reloads.ok.load(Ordering::Relaxed) >= (CHANGES - 2) as u64,
        "reloads ok: {}",
        h.reloads.ok.load(Ordering::Relaxed)
    );
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file written in place is empty for a moment (truncated, then written): a reload that reads
/// it then keeps the running configuration, and the complete file applies after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_refused_on_reload() {
    let a = Sim::start("em", &[]);
    let dir = scratch_dir("empty");
    let file = dir.join("gw.toml");
    let text = config_text("127.0.0.1:0", "127.0.0.1:0", "leastconn", "", &node_lines(&[&a]));
    std::fs::write(&file, &text).expect("write config");
    let h = app::bind_and_start(Config::load(&file).expect("valid config")).expect("gateway starts");
    let running = h.config();
    std::fs::write(&file, "").expect("truncate");
    let failed = h.reload.reload().await.expect_err("an empty file must be refused");
    assert!(failed.to_string().contains("empty"), "{failed}");
    assert_eq!(*h.config(), *running, "the running configuration changed");
    // A file with several mistakes: the refusal names every one, each at its line and key.
    let broken = text.replacen("[balance]", "[balance]\nretries = \"many\"", 1).replacen("rise = 1", "rise = 0", 1)
        + "[gatway]\n";
    std::fs::write(&file, &broken).expect("write config");
    let failed = h.reload.reload().await.expect_err("a broken file must be refused").to_string();
    let keys: Vec<&str> = failed.lines().filter_map(|l| l.split("key `").nth(1)?.split('`').next()).collect();
    assert_eq!(keys, ["balance.retries", "health.rise", "gatway"], "{failed}");
    assert!(failed.lines().all(|l| l.contains("gw.toml:")), "every mistake has its file:line: {failed}");
    assert_eq!(*h.config(), *running, "the running configuration changed");
    assert_eq!(h.listeners.local_addr(ListenerKind::Http), Some(h.http_addr), "the listener moved");
    std::fs::write(&file, text.replace("leastconn", "roundrobin")).expect("write config");
    eventually(Duration::from_secs(10), "the complete file applied", || async {
        (h.config().balance.algorithm.as_str() == "roundrobin").then_some(())
    })
    .await;
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Moving the client and stats listeners: the new addresses serve before the old close, open
/// connections on the old address keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_address_change_keeps_serving() {
    let a = Sim::start("la", &[]);
    let dir = scratch_dir("move");
    let file = dir.join("gw.toml");
    let (p1, p2, s1, s2) = (free_port(), free_port(), free_port(), free_port());
    let l1 = format!("127.0.0.1:{p1}");
    let st1 = format!("127.0.0.1:{s1}");
    std::fs::write(&file, config_text(&l1, &st1, "leastconn", "watch = false", &node_lines(&[&a]))).expect("write");
    let h = app::bind_and_start(Config::load(&file).expect("valid")).expect("start");
    let old_addr: SocketAddr = l1.parse().expect("addr");
    let mut keep = Client::connect(old_addr).await;
    assert_eq!(keep.send("GET", "/_serverInfo", &[], Bytes::new()).await.status, 200);
    let mut w = ws(old_addr, "/").await;
    let (r, _) = ws_call(&mut w, json!({"controller": "server", "action": "now", "requestId": "before"})).await;
    assert_eq!(r["status"], 200);

    let load = Load::builder(old_addr)
        .keep_alive(1, Shot::get("/_serverInfo"))
        .pause(Duration::from_millis(10))
        .max(LOAD_CAP)
        .start();
    load.wait_ok(1, "load running").await;

    // Move both listeners; reload through the ops endpoint (authenticated).
    let l2 = format!("127.0.0.1:{p2}");
    let st2 = format!("127.0.0.1:{s2}");
    std::fs::write(&file, config_text(&l2, &st2, "roundrobin", "watch = false", &node_lines(&[&a]))).expect("write");
    let auth = ops_auth();
    let r = request(h.stats_addr, "POST", "/reload", &[auth, JSON], Bytes::new()).await;
    assert_eq!(r.status, 200, "reload: {}", String::from_utf8_lossy(&r.body));
    let new_addr: SocketAddr = l2.parse().expect("addr");
    assert_eq!(h.listeners.local_addr(ListenerKind::Http), Some(new_addr));
    let fresh = get(new_addr, "/_serverInfo").await;
    assert_eq!(fresh.status, 200);
    let ops = request(st2.parse().expect("addr"), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(ops.status, 200, "stats listener moved");
    // The old address no longer accepts (its accept loop stopped and the socket closed).
    eventually(Duration::from_secs(5), "old client address closed", || async {
        TcpStream::connect(old_addr).await.is_err().then_some(())
    })
    .await;
    // Connections opened on the old address are untouched.
    assert_eq!(keep.send("GET", "/_serverInfo", &[], Bytes::new()).await.status, 200);
    let (r, _) = ws_call(&mut w, json!({"controller": "server", "action": "now", "requestId": "after"})).await;
    assert_eq!(r["status"], 200);
    load.stop().await.assert_clean("a keep-alive client while the listener moves");

    // A listener that cannot be bound refuses the whole reload.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    std::fs::write(&file, config_text(&busy_addr.to_string(), &st2, "source", "watch = false", &node_lines(&[&a])))
        .expect("write");
    let r = request(st2.parse().expect("addr"), "POST", "/reload", &[auth, JSON], Bytes::new()).await;
    assert_eq!(r.status, 400, "reload onto a busy port must be refused");
    assert!(String::from_utf8_lossy(&r.body).contains(&busy_addr.to_string()), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(h.config().balance.algorithm.as_str(), "roundrobin", "refused reload left the config as it was");
    assert_eq!(get(new_addr, "/_serverInfo").await.status, 200);
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A removed node keeps its tunnels until `drain_timeout`, then they get a 1001 close; tunnels on
/// nodes that stay are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_only_removed_nodes_tunnels() {
    let a = Sim::start("da", &[]);
    let b = Sim::start("db", &[]);
    let dir = scratch_dir("drain");
    let file = dir.join("gw.toml");
    let extra = "watch = false\ndrain_timeout = \"1s\"";
    std::fs::write(&file, config_text("127.0.0.1:0", "127.0.0.1:0", "leastconn", extra, &node_lines(&[&a, &b])))
        .expect("write");
    let h = app::bind_and_start(Config::load(&file).expect("valid")).expect("start");
    let mut on_a = ws(h.http_addr, "/da").await;
    let mut on_b = ws(h.http_addr, "/db").await;
    let (r, _) = ws_call(&mut on_b, json!({"controller": "server", "action": "now", "requestId": "b1"})).await;
    assert_eq!(r["node"], "db");

    std::fs::write(&file, config_text("127.0.0.1:0", "127.0.0.1:0", "leastconn", extra, &node_lines(&[&a])))
        .expect("write");
    h.reload.reload().await.expect("reload");
    let removed_at = Instant::now();
    // Still served while draining.
    let (r, _) = ws_call(&mut on_b, json!({"controller": "server", "action": "now", "requestId": "b2"})).await;
    assert_eq!(r["node"], "db", "draining node's tunnel still works");
    // Then closed with 1001 once drain_timeout passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, on_b.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame on the drained node's tunnel, got {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Away));
    assert!(removed_at.elapsed() >= Duration::from_millis(900), "closed before drain_timeout");
    let (r, _) = ws_call(&mut on_a, json!({"controller": "server", "action": "now", "requestId": "a1"})).await;
    assert_eq!(r["node"], "da", "tunnel on the surviving node untouched");
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Binary upgrade with the real binary
// ---------------------------------------------------------------------------------------------

/// The first gateway process on `file`, once it offers its sockets to an upgrade.
fn start_first(file: &Path) -> Gateway {
    Gateway::builder().name("old").config_file(file).ready_on("upgrade socket ready").start()
}

/// `kuzzle-gateway --config FILE --upgrade`, once it took the sockets over ("upgrade complete").
fn start_upgrade(file: &Path) -> Gateway {
    Gateway::builder().name("new").config_file(file).arg("--upgrade").ready_on("upgrade complete").start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_sockets_without_refusing() {
    let a = Sim::start("ua", &[]);
    let b = Sim::start("ub", &[]);
    let dir = scratch_dir("upgrade");
    let file = dir.join("gw.toml");
    let sock = dir.join("upgrade.sock");
    let (p, s) = (free_port(), free_port());
    let extra = format!("upgrade_socket = \"{}\"\nhard_stop_after = \"60s\"", sock.display());
    let text =
        config_text(&format!("127.0.0.1:{p}"), &format!("127.0.0.1:{s}"), "leastconn", &extra, &node_lines(&[&a, &b]));
    std::fs::write(&file, text).expect("write");

    let mut old = start_first(&file);
    let (addr, stats) = (old.http(), old.ops());
    assert_eq!(get(stats, "/healthz").await.status, 200);

    let load = load(addr, 4);
    // WebSockets opened on the old process: they must keep working across the hand-over.
    let clients = WsLoad::start(open_ws(addr, "/", 10).await, Duration::from_millis(100), LOAD_CAP);
    load.wait_ok(20, "load running on the old process").await;

    let mut new = start_upgrade(&file);
    new.wait_line("upgrade socket ready", READY_TIMEOUT);
    // Load continues on the new process; the old one serves its tunnels and stays alive for them.
    load.wait_ok(50, "load served after the hand-over").await;
    let echoed = clients.snapshot().echoed;
    eventually(T, "WebSockets on the old process answered after the hand-over", || async {
        (clients.snapshot().echoed >= echoed + 20).then_some(())
    })
    .await;
    assert!(old.is_running(), "old process exited while its WebSockets were open");
    // New WebSockets go to the new process and work.
    let mut w = ws(addr, "/").await;
    let (r, _) = ws_call(&mut w, json!({"controller": "server", "action": "now", "requestId": "new-1"})).await;
    assert_eq!(r["status"], 200);
    drop(w);
    assert_eq!(get(stats, "/healthz").await.status, 200, "stats listener handed over too");

    let report = load.stop().await;
    // Closing the old process's last tunnels lets it exit 0.
    let ws = clients.stop().await;
    let status = old.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "old process did not exit 0 after its last tunnel closed");
    eprintln!("binary_upgrade: {report:?}; {ws:?}");
    report.assert_clean("binary upgrade");
    ws.assert_clean("binary upgrade");

    // The new process is a normal gateway now: SIGTERM stops it.
    assert_eq!(new.stop().code(), Some(0), "new process did not stop on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Redis membership: upgrades and a start under load never answer "no node"
// ---------------------------------------------------------------------------------------------

/// How the simulated nodes announce themselves in Redis.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announce {
    /// Kuzzle 2 ID cards: one node per loopback address (127.0.0.2..4) on one port, as real
    /// Kuzzle 2 nodes are.
    IdCards,
    /// The cluster plugin 3.x: `cluster:ready` and heartbeats on pub/sub, and the discovery set.
    Plugin,
}

/// Three simulated nodes registered in a fresh Redis.
struct RedisNodes {
    redis: RedisServer,
    /// The ID-card nodes' common HTTP port (`[cluster] node_port`).
    port: u16,
    sims: Vec<Sim>,
    /// Which membership source the gateway reads.
    announce: Announce,
}

impl RedisNodes {
    fn start(announce: Announce) -> RedisNodes {
        let redis = RedisServer::start();
        let port = free_port();
        let url = redis.url();
        let sims = (2..=4)
            .map(|i| match announce {
                Announce::IdCards => Sim::start_on(
                    &format!("127.0.0.{i}:{port}"),
                    &format!("knode-{i}"),
                    &["--redis", &url, "--kuzzle2", "--heartbeat", "300ms"],
                ),
                Announce::Plugin => Sim::start(&format!("pnode-{i}"), &["--redis", &url, "--heartbeat", "300ms"]),
            })
            .collect();
        RedisNodes { redis, port, sims, announce }
    }

    /// A gateway configuration learning these nodes from Redis only; `extra` lands in
    /// `[gateway]`, `cluster_extra` in `[cluster]`.
    fn config(&self, listen: SocketAddr, stats: SocketAddr, sock: &Path, extra: &str, cluster_extra: &str) -> String {
        format!(
            "[gateway]\nlisten = \"{listen}\"\nshutdown_grace = \"1s\"\nupgrade_socket = {:?}\nhard_stop_after = \"60s\"\n{extra}\n\
             [stats]\nlisten = \"{stats}\"\n\
             [health]\npath = \"/_healthCheck\"\nkuzzle2_path = \"/_healthCheck\"\ninterval = \"1s\"\ntimeout = \"1s\"\n\
             [cluster]\nredis = \"{}\"\n{}\nnode_port = {}\npoll_interval = \"200ms\"\n\
             heartbeat_timeout = \"2s\"\n{cluster_extra}\n",
            sock.display().to_string(),
            self.redis.url(),
            match self.announce {
                Announce::IdCards => "pubsub = false\ndiscovery = false",
                Announce::Plugin => "kuzzle2 = false",
            },
            self.port
        )
    }

    /// Every node answers through the gateway at `addr` by its prefix.
    async fn wait_routable(&self, addr: SocketAddr) {
        for s in &self.sims {
            eventually(READY_TIMEOUT, &format!("/{}/ routable", s.name), || async {
                let r = get(addr, &format!("/{}/_now", s.name)).await;
                (r.status == 200 && r.node() == Some(s.name.as_str())).then_some(())
            })
            .await;
        }
    }
}

/// Two free loopback addresses: client and ops listeners.
fn two_addrs() -> (SocketAddr, SocketAddr) {
    let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    (a(free_port()), a(free_port()))
}

/// The line of `lines` containing `needle` (panics naming it otherwise).
fn find<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line containing {needle:?} in {lines:#?}"))
}

/// Nodes learned from Kuzzle 2 ID cards, 8 HTTP clients: three binary upgrades in a row lose no
/// request. Each new process takes the nodes and their health from the old one and routes from
/// its first connection (before the hand-over of state, each upgrade answered "no node" until the
/// new process had read Redis and checked the nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrades_with_redis_membership_lose_no_request() {
    upgrades_lose_no_request(RedisNodes::start(Announce::IdCards)).await;
}

/// The same with the cluster plugin 3.x's membership (pub/sub heartbeats and the discovery set):
/// the heartbeating members handed over are kept by the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrades_with_plugin_redis_membership_lose_no_request() {
    upgrades_lose_no_request(RedisNodes::start(Announce::Plugin)).await;
}

async fn upgrades_lose_no_request(nodes: RedisNodes) {
    let dir = scratch_dir("upgrade-redis");
    let file = dir.join("gw.toml");
    let (addr, stats) = two_addrs();
    std::fs::write(&file, nodes.config(addr, stats, &dir.join("upgrade.sock"), "", "")).expect("write");

    let mut old = start_first(&file);
    nodes.wait_routable(addr).await;
    let load = load(addr, 8);
    load.wait_ok(50, "load running on the first process").await;

    let mut states = Vec::new();
    for round in 1..=3 {
        let new = start_upgrade(&file);
        states.push(new.lines_until("upgrade complete", T));
        new.wait_line("upgrade socket ready", READY_TIMEOUT);
        let status = old.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "round {round}: the old process did not exit 0");
        load.wait_ok(50, &format!("load served by the process of round {round}")).await;
        eprintln!("after upgrade {round}: {:?}", load.snapshot());
        old = new;
    }
    let report = load.stop().await;
    eprintln!("binary_upgrades_with_redis_membership: {report:?}");
    report.assert_clean("binary upgrades with Redis membership");
    for (round, lines) in states.iter().enumerate() {
        let state = find(lines, "state of the running gateway");
        assert!(
            state.contains("3 nodes with their health") && state.contains("routable=true"),
            "round {round}: {state}"
        );
        find(lines, "routing from the first connection");
    }
    assert_eq!(old.stop().code(), Some(0), "gateway did not stop on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The new process cannot use the old one's nodes (its `[cluster]` settings differ): it takes
/// the sockets only once it read Redis and checked the nodes itself; the old one serves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_without_usable_state_waits_until_it_can_route() {
    let nodes = RedisNodes::start(Announce::IdCards);
    let dir = scratch_dir("upgrade-redis-changed");
    let file = dir.join("gw.toml");
    let (addr, stats) = two_addrs();
    let sock = dir.join("upgrade.sock");
    // The old process must not reload the changed file: it runs with the first settings.
    std::fs::write(&file, nodes.config(addr, stats, &sock, "watch = false", "")).expect("write");
    let mut old = start_first(&file);
    nodes.wait_routable(addr).await;
    let load = load(addr, 8);
    load.wait_ok(50, "load running on the first process").await;

    let changed = nodes.config(addr, stats, &sock, "watch = false", "allowed_networks = [\"127.0.0.0/8\"]");
    std::fs::write(&file, changed).expect("write");
    let mut new = start_upgrade(&file);
    let lines = new.lines_until("upgrade complete", T);
    let status = old.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "the old process did not exit 0");
    load.wait_ok(50, "load served by the new process").await;
    let report = load.stop().await;
    eprintln!("binary_upgrade_without_usable_state: {report:?}");
    report.assert_clean("binary upgrade without usable state");
    let state = find(&lines, "state of the running gateway");
    assert!(state.contains("not the nodes") && state.contains("routable=false"), "{state}");
    // In this order: it waited for Redis and the checks before it took the sockets.
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let (wait, ready) = (at("waiting for the first membership read"), at("ready: Redis read and every node"));
    assert!(wait.is_some() && wait < ready, "{lines:#?}");
    assert_eq!(new.stop().code(), Some(0), "gateway did not stop on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// 8 clients hammer the port before the gateway starts (connections refused until it listens);
/// once it accepts, every request reaches a node: it took clients only after reading Redis and
/// checking the nodes found there (before, the first requests got the gateway's "no node" 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_redis_membership_under_load_answers_no_no_node() {
    let nodes = RedisNodes::start(Announce::IdCards);
    let dir = scratch_dir("start-redis");
    let file = dir.join("gw.toml");
    let (addr, stats) = two_addrs();
    std::fs::write(&file, nodes.config(addr, stats, &dir.join("upgrade.sock"), "", "")).expect("write");
    // A connect to a port nobody listens on can pick that very port as its source and connect to
    // itself, taking the port from the gateway. A bound socket (SO_REUSEADDR, never listening)
    // keeps the port out of the kernel's choice of source ports; the gateway still binds it.
    let reserve = tokio::net::TcpSocket::new_v4().expect("socket");
    reserve.set_reuseaddr(true).expect("SO_REUSEADDR");
    reserve.bind(addr).expect("reserve the client port");
    let load = load(addr, 8);
    eventually(T, "clients refused before the gateway listens", || async {
        (load.snapshot().refused >= 8).then_some(())
    })
    .await;
    let mut gw = Gateway::builder().config_file(&file).no_wait().start();
    load.wait_ok(200, "requests served once the gateway accepts").await;
    let report = load.stop().await;
    eprintln!("start_with_redis_membership: {report:?}");
    assert_eq!(report.failed_connected(), 0, "a \"no node\" answer once it accepted: {report:?}");
    drop(reserve);
    assert_eq!(gw.stop().code(), Some(0), "gateway did not stop on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// TLS: certificates re-read on reload, the TLS listener added and moved live
// ---------------------------------------------------------------------------------------------

/// A self-signed `localhost` certificate as PEM files; returns the DER to trust.
fn make_cert(dir: &Path, tag: &str) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("generate certificate");
    let cert = dir.join(format!("{tag}-cert.pem"));
    let key = dir.join(format!("{tag}-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key, ck.cert.der().clone())
}

fn trusting(der: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("trust");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// GET /_serverInfo over a new TLS connection; Err when the handshake fails.
async fn https_get(c: &tokio_rustls::TlsConnector, addr: SocketAddr) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(Duration::from_secs(10), c.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("/_serverInfo")
        .header("host", "localhost")
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let r = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_added_and_certificate_renewed_by_reload() {
    let a = Sim::start("ta", &[]);
    let dir = scratch_dir("tls");
    let file = dir.join("gw.toml");
    let (cert_a, key_a, der_a) = make_cert(&dir, "a");
    let base = config_text("127.0.0.1:0", "127.0.0.1:0", "leastconn", "watch = false", &node_lines(&[&a]));
    std::fs::write(&file, &base).expect("write");
    let h = app::bind_and_start(Config::load(&file).expect("valid")).expect("start");
    assert_eq!(h.listeners.local_addr(ListenerKind::Tls), None);

    // TLS added by a reload: the listener appears.
    let tls_port = free_port();
    let tls = |cert: &Path, key: &Path| {
        format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    std::fs::write(&file, format!("{base}{}", tls(&cert_a, &key_a))).expect("write");
    h.reload.reload().await.expect("reload adds TLS");
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    assert_eq!(h.listeners.local_addr(ListenerKind::Tls), Some(tls_addr));
    assert_eq!(https_get(&trusting(&der_a), tls_addr).await, Ok(200));

    // A renewed certificate at the same paths: the next handshake uses it, the socket stays.
    let (cert_b, key_b, der_b) = make_cert(&dir, "b");
    std::fs::copy(&cert_b, &cert_a).expect("renew cert");
    std::fs::copy(&key_b, &key_a).expect("renew key");
    h.reload.reload().await.expect("reload with renewed certificate");
    assert_eq!(https_get(&trusting(&der_b), tls_addr).await, Ok(200));
    assert!(https_get(&trusting(&der_a), tls_addr).await.is_err(), "old certificate still served");

    // A broken key of the pair in use (a renewal half done) does not fail the reload: the running
    // certificate stays, and the reload's outcome says so.
    std::fs::write(&key_a, "not a key").expect("break key");
    let msg = h.reload.reload().await.expect("the rest of the file applies");
    assert!(msg.contains("kept the running certificate") && msg.contains("key.pem"), "{msg}");
    assert_eq!(https_get(&trusting(&der_b), tls_addr).await, Ok(200));
    // A new pair that does not load refuses the reload; the running certificate stays.
    let broken = dir.join("broken-key.pem");
    std::fs::write(&broken, "not a key").expect("write");
    std::fs::write(&file, format!("{base}{}", tls(&cert_a, &broken))).expect("write");
    let e = h.reload.reload().await.expect_err("a new broken pair is refused");
    assert!(e.to_string().contains("TLS") && e.to_string().contains("broken-key.pem"), "{e}");
    assert_eq!(https_get(&trusting(&der_b), tls_addr).await, Ok(200));
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
