//! Redis membership end to end: real redis-server processes (one server, and a 3-master Redis
//! Cluster), simulated nodes as real processes, the gateway in-process. Short heartbeats
//! (300 ms) and a 1 s heartbeat timeout keep the file to a few seconds.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kuzzle_gateway::app::Handle;
use serde_json::{json, Value};

const HEARTBEAT: &str = "300ms";
const FAST_HEALTH: &str = "[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n";

/// Gateway configuration; the first lines land in `gateway_toml`'s `[stats]` (ops auth on).
fn cluster_toml(redis_line: &str, extra: &str) -> String {
    gateway_toml(&format!(
        "user = \"kuzzle\"\npassword = \"kuzzle\"\n{FAST_HEALTH}[cluster]\n{redis_line}\nheartbeat_timeout = \"1s\"\npoll_interval = \"200ms\"\n{extra}"
    ))
}

async fn gw_single(redis: &RedisServer, extra: &str) -> Handle {
    let h = gateway(&cluster_toml(&format!("redis = \"{}\"", redis.url()), extra)).await;
    wait_connected(&h).await;
    h
}

/// The membership task is subscribed and has read Redis once.
async fn wait_connected(h: &Handle) {
    eventually(WAIT, "gateway following Redis", || async {
        Some(h.cluster.metrics.clone())
            .is_some_and(|m| m.connected.load(std::sync::atomic::Ordering::Relaxed) == 1)
            .then_some(())
    })
    .await;
}

fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("test Redis connection")
}

fn publish(url: &str, room: &str, payload: &[u8]) {
    let mut c = redis_conn(url);
    let _: i64 = redis::cmd("PUBLISH").arg(room).arg(payload).query(&mut c).expect("PUBLISH");
}

async fn status(h: &Handle) -> Value {
    kuzzle_gateway::control::cluster::status(&h.cluster, &h.core).await
}

/// State of `name` in the status ("up", "joining", "draining", "gone", ...), None if absent.
async fn state_of(h: &Handle, name: &str) -> Option<String> {
    let s = status(h).await;
    let find = |k: &str| {
        s[k].as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name))
            .and_then(|n| n["state"].as_str().map(String::from))
    };
    find("nodes").or_else(|| find("gone"))
}

/// GET through the gateway: which node answered, if any.
/// Status and the node that answered, by its own word (the envelope's `node`: the gateway's
/// `x-kuzzle-node` names nodes by their gateway names, e.g. a discovered node by its IP).
async fn via(h: &Handle, path: &str) -> (u16, Option<String>) {
    let r = get(h.http_addr, path).await;
    let own =
        serde_json::from_slice::<serde_json::Value>(&r.body).ok().and_then(|v| v["node"].as_str().map(String::from));
    (r.status, own)
}

async fn wait_routable(h: &Handle, name: &str) {
    wait_prefix(h, name, name).await;
}

/// `/<prefix>/` reaches the node that calls itself `node`.
async fn wait_prefix(h: &Handle, prefix: &str, node: &str) {
    eventually(WAIT, &format!("/{prefix}/ routable to {node} through the gateway"), || async {
        let (status, answered) = via(h, &format!("/{prefix}/_now")).await;
        (status == 200 && answered.as_deref() == Some(node)).then_some(())
    })
    .await;
}

async fn wait_state(h: &Handle, name: &str, states: &[&str]) -> String {
    eventually(WAIT, &format!("{name} in state {states:?}"), || async {
        state_of(h, name).await.filter(|s| states.contains(&s.as_str()))
    })
    .await
}

/// Sessions a node has counted so far (its history survives leaving and coming back).
fn sessions(h: &Handle, name: &str) -> u64 {
    let node = h.core.snapshot().node(name).cloned().unwrap_or_else(|| panic!("no node {name}"));
    node.counters.sessions_total.load(std::sync::atomic::Ordering::Relaxed)
}

fn dropped(h: &Handle) -> u64 {
    h.cluster.metrics.dropped_total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_node_joins_without_config_and_sigterm_drains_it() {
    let redis = RedisServer::start();
    let h = gw_single(&redis, "").await;
    assert!(h.core.snapshot().nodes.is_empty(), "no static nodes");
    let mut a = Sim::start("cluster_kuzzle_1", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);
    wait_routable(&h, "cluster_kuzzle_1").await;
    // Balanced traffic reaches it too (it is the only node).
    assert_eq!(via(&h, "/_now").await, (200, Some("cluster_kuzzle_1".into())));
    let s = status(&h).await;
    let n = s["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "cluster_kuzzle_1"))
        .cloned()
        .expect("in status");
    assert_eq!(n["state"], "up");
    assert_eq!(n["origin"], "plugin");
    assert_eq!(n["address"], a.addr.to_string());
    assert_eq!(s["redis"]["connected"], true);
    eventually(WAIT, "heartbeats recorded in the status", || async {
        let s = status(&h).await;
        let n = s["nodes"].as_array().and_then(|a| a.iter().find(|n| n["name"] == "cluster_kuzzle_1")).cloned()?;
        n["last_heartbeat"].as_u64()
    })
    .await;

    a.term();
    let st = wait_state(&h, "cluster_kuzzle_1", &["draining", "gone"]).await;
    assert!(st == "draining" || st == "gone");
    eventually(WAIT, "prefix of the drained node answers 503", || async {
        let (code, _) = via(&h, "/cluster_kuzzle_1/_now").await;
        (code == 503).then_some(())
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_drained_after_heartbeat_timeout_and_rejoin_keeps_counters() {
    let redis = RedisServer::start();
    let h = gw_single(&redis, "").await;
    let mut a = Sim::start("cluster_kuzzle_1", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);
    let b = Sim::start("cluster_kuzzle_2", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);
    wait_routable(&h, "cluster_kuzzle_1").await;
    wait_routable(&h, "cluster_kuzzle_2").await;
    let before = sessions(&h, "cluster_kuzzle_1");
    assert!(before >= 1);

    a.kill();
    wait_state(&h, "cluster_kuzzle_1", &["draining", "gone"]).await;
    // Only b takes balanced traffic now.
    for _ in 0..5 {
        assert_eq!(via(&h, "/_now").await, (200, Some("cluster_kuzzle_2".into())));
    }
    let left = status(&h).await["metrics"]["leaves"].as_u64().expect("leaves counter");
    assert!(left >= 1);

    // Same name comes back (new process, new port): same node, counters continue.
    let _a2 = Sim::start("cluster_kuzzle_1", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);
    wait_routable(&h, "cluster_kuzzle_1").await;
    let after = sessions(&h, "cluster_kuzzle_1");
    assert!(after > before, "counters continue across leave and return ({before} -> {after})");
    drop(b);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuzzle2_nodes_join_from_id_cards_and_leave_when_the_card_expires() {
    let redis = RedisServer::start();
    let port = free_port();
    let extra = format!("node_port = {port}\n");
    let cfg = gateway_toml(&format!(
        "[health]\npath = \"/_healthCheck\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n\
         [cluster]\nredis = \"{}\"\nheartbeat_timeout = \"1s\"\npoll_interval = \"200ms\"\npubsub = false\ndiscovery = false\n{extra}",
        redis.url()
    ));
    let h = gateway(&cfg).await;
    wait_connected(&h).await;
    let args = ["--redis", &redis.url(), "--kuzzle2", "--heartbeat", HEARTBEAT];
    let mut a = Sim::start_on(&format!("127.0.0.2:{port}"), "knode-a-1", &args);
    let b = Sim::start_on(&format!("127.0.0.3:{port}"), "knode-b-2", &args);
    wait_routable(&h, "knode-a-1").await;
    wait_routable(&h, "knode-b-2").await;
    let s = status(&h).await;
    for (n, ip) in [("knode-a-1", "127.0.0.2"), ("knode-b-2", "127.0.0.3")] {
        let node = s["nodes"].as_array().and_then(|a| a.iter().find(|x| x["name"] == n)).cloned().expect("listed");
        assert_eq!(node["origin"], "kuzzle2");
        assert_eq!(node["address"], format!("{ip}:{port}"));
    }
    a.kill();
    wait_state(&h, "knode-a-1", &["draining", "gone"]).await;
    assert_eq!(via(&h, "/_now").await, (200, Some("knode-b-2".into())));
    drop(b);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_while_a_node_joins_converges() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let url = redis.url();
    let h = gw_single(&redis, "").await;
    let a = Sim::start("cluster_kuzzle_1", &["--redis", &url, "--heartbeat", HEARTBEAT]);
    wait_routable(&h, "cluster_kuzzle_1").await;

    redis.kill();
    eventually(WAIT, "gateway notices Redis is down", || async {
        (status(&h).await["redis"]["connected"] == false).then_some(())
    })
    .await;
    // Redis down: the known node keeps serving, well past the heartbeat timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(via(&h, "/cluster_kuzzle_1/_now").await, (200, Some("cluster_kuzzle_1".into())));
    // A node joins while Redis is down (it keeps retrying), then Redis comes back empty.
    let b = Sim::start("cluster_kuzzle_2", &["--redis", &url, "--heartbeat", HEARTBEAT]);
    let _redis2 = RedisServer::start_on(port, &[]);
    wait_routable(&h, "cluster_kuzzle_2").await;
    wait_routable(&h, "cluster_kuzzle_1").await;
    let s = status(&h).await;
    assert_eq!(s["redis"]["connected"], true);
    assert!(s["metrics"]["connects"].as_u64().unwrap_or(0) >= 2, "reconnected: {}", s["metrics"]);
    drop((a, b));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_notification_crosses_nodes_through_the_gateway() {
    let redis = RedisServer::start();
    let h = gw_single(&redis, "").await;
    let _a = Sim::start("cluster_kuzzle_1", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);
    let _b = Sim::start("cluster_kuzzle_2", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);
    wait_routable(&h, "cluster_kuzzle_1").await;
    wait_routable(&h, "cluster_kuzzle_2").await;

    let mut sub = ws(h.http_addr, "/cluster_kuzzle_1/").await;
    let (r, _) = ws_call(
        &mut sub,
        json!({"requestId": "s1", "controller": "realtime", "action": "subscribe", "index": "i", "collection": "c", "body": {}}),
    )
    .await;
    assert_eq!(r["status"], 200, "subscribe: {r}");
    assert_eq!(r["node"], "cluster_kuzzle_1");
    let channel = r["result"]["channel"].as_str().expect("channel").to_string();

    let mut publ = ws(h.http_addr, "/cluster_kuzzle_2/").await;
    let (p, _) = ws_call(
        &mut publ,
        json!({"requestId": "p1", "controller": "realtime", "action": "publish", "index": "i", "collection": "c", "body": {"hello": "world"}}),
    )
    .await;
    assert_eq!(p["status"], 200, "publish: {p}");
    assert_eq!(p["node"], "cluster_kuzzle_2");
    let note = loop {
        let m = ws_next_json(&mut sub, Duration::from_secs(10)).await.expect("notification on node 1 within 10 s");
        if m["room"] == channel.as_str() {
            break m;
        }
    };
    assert_eq!(note["result"]["_source"]["hello"], "world");
    // The status reads the real-time state the nodes keep in Redis (the plugin's keys).
    eventually(WAIT, "status counts the room and its subscriber", || async {
        let s = status(&h).await;
        (s["rooms"].as_u64() >= Some(1) && s["subscribers"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_and_counted() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = gw_single(&redis, "allowed_networks = [\"127.0.0.0/8\"]\n").await;
    let _a = Sim::start("cluster_kuzzle_1", &["--redis", &url, "--heartbeat", HEARTBEAT]);
    wait_routable(&h, "cluster_kuzzle_1").await;
    let names = |h: &Handle| h.core.snapshot().nodes.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
    let before_nodes = names(&h);
    let before = dropped(&h);

    let huge =
        format!("[\"cluster:heartbeat\", {{\"pub\": \"tcp://127.0.0.1:1\", \"pad\": \"{}\"}}]", "x".repeat(100_000));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("cluster:heartbeat", b"not json at all".to_vec()),
        ("cluster:heartbeat", b"{\"pub\": 1}".to_vec()),
        ("cluster:ready", b"[\"cluster:ready\", {\"pub\": 42}]".to_vec()),
        ("cluster:ready", b"[\"cluster:sync\", {\"pub\": \"tcp://127.0.0.1:1\"}]".to_vec()),
        ("cluster:ready", br#"["cluster:ready", {"pub": "tcp://8.8.8.8:7511", "name": "evil"}]"#.to_vec()),
        ("cluster:ready", br#"["cluster:ready", {"pub": "tcp://127.0.0.1:7511", "name": "../x"}]"#.to_vec()),
        ("cluster:heartbeat", huge.into_bytes()),
        ("cluster:remove", vec![0xff, 0xfe, 0x00]),
    ];
    let n = garbage.len() as u64;
    for (room, p) in &garbage {
        publish(&url, room, p);
    }
    eventually(WAIT, "every malformed message counted as dropped", || async {
        (dropped(&h) >= before + n).then_some(())
    })
    .await;
    assert_eq!(names(&h), before_nodes, "node set unchanged");
    assert_eq!(via(&h, "/cluster_kuzzle_1/_now").await, (200, Some("cluster_kuzzle_1".into())));
    let by_reason = &status(&h).await["metrics"]["dropped"];
    for reason in ["bad_json", "bad_shape", "unknown_room", "not_allowed", "bad_name", "too_large"] {
        assert!(by_reason[reason].as_u64().unwrap_or(0) >= 1, "{reason} counted: {by_reason}");
    }
    // /metrics shows the drops by reason.
    let m = request(h.stats_addr, "GET", "/metrics", &[ops_auth()], Bytes::new()).await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("kuzzle_gateway_cluster_dropped_total{reason=\"bad_json\"}"))
        .unwrap_or_else(|| panic!("no dropped metric in:\n{text}"));
    assert!(line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v >= 1), "{line}");
    assert!(text.contains("kuzzle_gateway_cluster_redis_connected 1"), "connected gauge");
    // The ops listener serves the same status.
    let r = request(h.stats_addr, "GET", "/cluster/status", &[ops_auth()], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["nodes"].as_array().is_some_and(|a| a.iter().any(|n| n["name"] == "cluster_kuzzle_1")));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin3_discovery_member_becomes_a_node_at_node_port() {
    let redis = RedisServer::start();
    let port = free_port();
    let h = gw_single(&redis, &format!("node_port = {port}\n")).await;
    // A plain node (no Redis) on 127.0.0.2:node_port, announced the plugin 3.x way: {pub, router}.
    let _n = Sim::start_on(&format!("127.0.0.2:{port}"), "plain", &[]);
    let mut c = redis_conn(&redis.url());
    let member = r#"{"pub":"tcp://127.0.0.2:7511","router":"tcp://127.0.0.2:7510"}"#;
    let _: i64 = redis::cmd("SADD").arg("cluster:discovery").arg(member).query(&mut c).expect("SADD");
    // Named by the documented rule: the IP with '.' -> '_'; health checks let it in.
    wait_prefix(&h, "127_0_0_2", "plain").await;
    let _: i64 = redis::cmd("SREM").arg("cluster:discovery").arg(member).query(&mut c).expect("SREM");
    wait_state(&h, "127_0_0_2", &["draining", "gone"]).await;
    h.shutdown().await;
}

/// Keys in slots owned by different masters (hash tags spread them), as the plugin writes them.
const STATE_KEYS: [&str; 6] = [
    "cluster:room_ids",
    "cluster:room_counts:{i/a}r1",
    "cluster:room_counts:{i/b}r2",
    "cluster:room_counts:{j/c}r3",
    "cluster:filters:{x/y}r4",
    "cluster:version{q/z}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_membership_status_and_reset_on_every_master() {
    let rc = RedisCluster::start();
    let seeds: Vec<String> = rc.urls();
    let cluster = redis::cluster::ClusterClient::new(seeds.clone()).expect("cluster client");
    let mut c = cluster.get_connection().expect("cluster connection");
    for k in STATE_KEYS {
        if k == "cluster:room_ids" {
            let _: i64 = redis::cmd("SADD").arg(k).arg("r1").arg("r2").query(&mut c).expect("SADD");
        } else {
            let _: () = redis::cmd("SET").arg(k).arg("2").query(&mut c).expect("SET");
        }
    }
    let _: i64 = redis::cmd("SADD").arg("cluster:discovery").arg("{}").query(&mut c).expect("SADD");

    let list = seeds.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let port = free_port();
    let health = "[health]\npath = \"/_healthCheck\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n";
    let h = gateway(&gateway_toml(&format!(
        "user = \"kuzzle\"\npassword = \"kuzzle\"\n{health}[cluster]\nredis_cluster = [{list}]\nheartbeat_timeout = \"1s\"\n\
         poll_interval = \"200ms\"\nnode_port = {port}\n"
    )))
    .await;
    wait_connected(&h).await;
    // A plugin-mode node and a Kuzzle 2 node, both on the Redis Cluster.
    let joined = seeds.join(",");
    let mut plugin = Sim::start("cluster_kuzzle_3", &["--redis-cluster", &joined, "--heartbeat", HEARTBEAT]);
    let _k2 = Sim::start_on(
        &format!("127.0.0.2:{port}"),
        "knode-c-3",
        &["--redis-cluster", &joined, "--kuzzle2", "--heartbeat", HEARTBEAT],
    );
    wait_routable(&h, "cluster_kuzzle_3").await;
    wait_routable(&h, "knode-c-3").await;
    plugin.term();
    wait_state(&h, "cluster_kuzzle_3", &["draining", "gone"]).await;

    let s = status(&h).await;
    assert_eq!(s["rooms"], 2, "rooms from cluster:room_ids: {s}");
    assert_eq!(s["subscribers"], 6, "sum of room_counts across masters: {s}");

    // Someone listening on cluster:sync sees the reset.
    let mut subc = redis::Client::open(seeds[0].as_str()).expect("client").get_connection().expect("conn");
    let mut ps = subc.as_pubsub();
    ps.subscribe("cluster:sync").expect("SUBSCRIBE");
    ps.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");

    let r = request(h.stats_addr, "POST", "/cluster/reset", &[ops_auth(), JSON], Bytes::new()).await;
    assert_eq!(r.status, 200, "reset: {}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["masters"].as_array().map(Vec::len), Some(3), "{body}");
    let msg = ps.get_message().expect("cluster:sync message");
    let payload: String = msg.get_payload().expect("payload");
    assert_eq!(
        serde_json::from_str::<Value>(&payload).expect("json"),
        json!(["cluster:sync", {"event": "state:reset"}])
    );

    for k in STATE_KEYS {
        let n: i64 = redis::cmd("EXISTS").arg(k).query(&mut c).expect("EXISTS");
        assert_eq!(n, 0, "{k} deleted");
    }
    let kept: i64 = redis::cmd("EXISTS").arg("cluster:discovery").query(&mut c).expect("EXISTS");
    assert_eq!(kept, 1, "cluster:discovery kept");
    // Unauthenticated reset is refused.
    let r = request(h.stats_addr, "POST", "/cluster/reset", &[JSON], Bytes::new()).await;
    assert_eq!(r.status, 401);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_section_follows_reloads() {
    let redis = RedisServer::start();
    let dir = scratch_dir("cluster-reload");
    let path = dir.join("gateway.toml");
    let without = gateway_toml(&format!("user = \"kuzzle\"\npassword = \"kuzzle\"\n{FAST_HEALTH}"));
    let with = cluster_toml(&format!("redis = \"{}\"", redis.url()), "");
    std::fs::write(&path, &without).expect("write config");
    let cfg = kuzzle_gateway::control::config::Config::load(&path).expect("valid config");
    let h = kuzzle_gateway::app::bind_and_start(cfg).expect("gateway starts");
    let _a = Sim::start("cluster_kuzzle_1", &["--redis", &redis.url(), "--heartbeat", HEARTBEAT]);

    // No [cluster]: the node registered in Redis but the gateway does not know it.
    let url = redis.url();
    eventually(WAIT, "sim registered in cluster:discovery", || {
        let url = url.clone();
        async move {
            let n: i64 = redis::cmd("SCARD").arg("cluster:discovery").query(&mut redis_conn(&url)).expect("SCARD");
            (n > 0).then_some(())
        }
    })
    .await;
    assert!(h.core.snapshot().node("cluster_kuzzle_1").is_none(), "no membership without [cluster]");

    std::fs::write(&path, &with).expect("write config");
    h.reload.reload().await.expect("reload with [cluster]");
    wait_routable(&h, "cluster_kuzzle_1").await;

    std::fs::write(&path, &without).expect("write config");
    h.reload.reload().await.expect("reload without [cluster]");
    wait_state(&h, "cluster_kuzzle_1", &["draining", "gone"]).await;
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `redis-cli -p PORT ARGS...` output (trimmed).
fn cli(port: u16, args: &[&str]) -> String {
    let o = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli is needed for the Redis Cluster tests");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuzzle2_membership_survives_a_redis_cluster_slot_move() {
    let rc = RedisCluster::start();
    let seeds = rc.urls();
    let list = seeds.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let port = free_port();
    let h = gateway(&gateway_toml(&format!(
        "[health]\npath = \"/_healthCheck\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n\
         [cluster]\nredis_cluster = [{list}]\nheartbeat_timeout = \"1s\"\npoll_interval = \"200ms\"\nnode_port = {port}\n"
    )))
    .await;
    wait_connected(&h).await;
    let joined = seeds.join(",");
    let args = ["--redis-cluster", joined.as_str(), "--kuzzle2", "--heartbeat", HEARTBEAT];
    let _a = Sim::start_on(&format!("127.0.0.2:{port}"), "knode-a-1", &args);
    wait_routable(&h, "knode-a-1").await;

    // Move the slot of every `{cluster/node}` key to another master, the way redis-cli reshards.
    let slot = cli(rc.nodes[0].port, &["cluster", "keyslot", "{cluster/node}"]);
    let id_of = |p: u16| cli(p, &["cluster", "myid"]);
    let owner = rc
        .nodes
        .iter()
        .find(|n| cli(n.port, &["cluster", "countkeysinslot", &slot]) != "0")
        .map(|n| n.port)
        .expect("a master holds the ID cards");
    let dest = rc.nodes.iter().map(|n| n.port).find(|p| *p != owner).expect("another master");
    let (src_id, dst_id) = (id_of(owner), id_of(dest));
    assert_eq!(cli(dest, &["cluster", "setslot", &slot, "importing", &src_id]), "OK");
    assert_eq!(cli(owner, &["cluster", "setslot", &slot, "migrating", &dst_id]), "OK");
    let keys = cli(owner, &["cluster", "getkeysinslot", &slot, "100"]);
    let keys: Vec<&str> = keys.lines().collect();
    let dport = dest.to_string();
    let mut mig = vec!["migrate", "127.0.0.1", dport.as_str(), "", "0", "5000", "KEYS"];
    mig.extend(keys.iter().copied());
    assert_eq!(cli(owner, &mig), "OK", "MIGRATE {keys:?}");
    for n in &rc.nodes {
        assert_eq!(cli(n.port, &["cluster", "setslot", &slot, "node", &dst_id]), "OK");
    }

    // Membership follows: the known node stays, a new one joins, a killed one leaves.
    let mut b = Sim::start_on(&format!("127.0.0.3:{port}"), "knode-b-2", &args);
    wait_routable(&h, "knode-b-2").await;
    assert_eq!(via(&h, "/knode-a-1/_now").await, (200, Some("knode-a-1".into())));
    b.kill();
    wait_state(&h, "knode-b-2", &["draining", "gone"]).await;
    assert_eq!(state_of(&h, "knode-a-1").await.as_deref(), Some("up"));
    h.shutdown().await;
}
