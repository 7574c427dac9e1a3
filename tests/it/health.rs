//! Health checks and node failure, end to end: simulated nodes as real processes, the gateway
//! in-process, real sockets. Short check intervals keep the whole file to a few seconds.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kuzzle_gateway::app::Handle;
use kuzzle_gateway::control::config::Config;
use kuzzle_gateway::core::backend::AdminState;
use kuzzle_gateway::core::health::{CheckKind, HealthView};

/// Fast checks: DOWN after 3 x ~200 ms, UP after 2. The timeout stays generous so that a busy
/// machine does not fail healthy nodes.
const FAST_HEALTH: &str = "[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 3\n";

fn view(h: &Handle, name: &str) -> HealthView {
    h.core.snapshot().node(name).unwrap_or_else(|| panic!("gateway has no node {name}")).health.view()
}

async fn wait_up(h: &Handle, name: &str, up: bool) -> HealthView {
    eventually(WAIT, &format!("node {name} {}", if up { "UP" } else { "DOWN" }), || async {
        let v = view(h, name);
        (v.up == up).then_some(v)
    })
    .await
}

async fn sim_ready(sim: &Sim, ready: bool) {
    let r = request(sim.addr, "POST", &format!("/_sim/ready/{ready}"), &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "sim knob /_sim/ready/{ready} on {}", sim.name);
}

async fn ops_state(h: &Handle, node: &str, state: &str) -> Resp {
    request(h.stats_addr, "POST", &format!("/nodes/{node}/state"), &[ops_auth(), JSON], Bytes::from(state.to_string()))
        .await
}

/// Kill one of 3 nodes under 4 concurrent keep-alive clients doing GET and POST: no GET fails,
/// and a POST fails only if it was already on the killed node (502, never 503/504 or a dropped
/// client connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_node_under_load_no_client_errors() {
    let a = Sim::start("hk1", &[]);
    let mut victim = Sim::start("hk2", &[]);
    let c = Sim::start("hk3", &[]);
    let nodes = nodes_toml(&[&a, &victim, &c]);
    let h = gateway(&gateway_toml(&format!("[balance]\nalgorithm = \"roundrobin\"\n{FAST_HEALTH}{nodes}"))).await;

    const PER_CLIENT: usize = 150;
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let done = done.clone();
        let addr = h.http_addr;
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut failures: Vec<(String, u16, String)> = Vec::new();
            let mut nodes = Vec::new();
            for i in 0..PER_CLIENT {
                let (method, path, body) = if i % 2 == 0 {
                    ("GET", "/_now", Bytes::new())
                } else {
                    ("POST", "/_sim/echo", Bytes::from(format!("{{\"client\":{c},\"i\":{i}}}")))
                };
                match client.try_send(method, path, &[("content-type", "application/json")], body).await {
                    Ok(r) if r.status == 200 => nodes.push(r.node().unwrap_or("?").to_string()),
                    Ok(r) => failures.push((method.into(), r.status, String::from_utf8_lossy(&r.body).into())),
                    Err(e) => {
                        failures.push((method.into(), 0, e));
                        client = Client::connect(addr).await;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (failures, nodes)
        }));
    }
    eventually(WAIT * 3, "a third of the load done", || async { (done.load(Ordering::Relaxed) >= 200).then_some(()) })
        .await;
    let killed_at = Instant::now();
    victim.kill();
    let v = wait_up(&h, "hk2", false).await;
    let detection = killed_at.elapsed();
    let mut failures = Vec::new();
    let mut served = Vec::new();
    for c in clients {
        let (f, n) =
            tokio::time::timeout(Duration::from_secs(60), c).await.expect("load finished").expect("client task");
        failures.extend(f);
        served.extend(n);
    }
    let n2 = h.core.snapshot().node("hk2").expect("hk2").counters.clone();
    let broken = n2.response_errors.load(Ordering::Relaxed);
    eprintln!(
        "kill under load: {} requests, {} failed {:?}, node DOWN after {:?} ({}), {} exchanges broken on the killed node",
        4 * PER_CLIENT,
        failures.len(),
        failures,
        detection,
        v.status,
        broken
    );
    assert!(failures.iter().all(|(m, _, _)| m == "POST"), "a GET failed: {failures:?}");
    assert!(
        failures.iter().all(|(_, s, body)| *s == 502 && body.contains("closed the connection before answering")),
        "only POSTs already sent to the killed node may fail, with a 502: {failures:?}"
    );
    assert!(failures.len() as u64 <= broken.min(4), "{} failures but {broken} broken exchanges", failures.len());
    assert!(served.len() + failures.len() == 4 * PER_CLIENT);
    assert!(served.iter().any(|n| n == "hk2"), "the victim took traffic before it died");
    assert!(detection < Duration::from_secs(5), "DOWN detected after {detection:?}");
    h.shutdown().await;
}

/// Health route answering 404: DOWN after `fall` failed checks (haproxy texts on the way), back UP
/// after `rise` passing ones; traffic follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_404_goes_down_after_fall_and_up_after_rise() {
    let a = Sim::start("h4a", &[]);
    let b = Sim::start("h4b", &[]);
    let h = gateway(&gateway_toml(&format!("{FAST_HEALTH}{}", nodes_toml(&[&a, &b])))).await;
    wait_up(&h, "h4a", true).await;
    eventually(WAIT, "a first check of h4a", || async {
        view(&h, "h4a").last_check.map(|c| c.kind == CheckKind::L7OK)?.then_some(())
    })
    .await;

    let base = view(&h, "h4a").failed_checks;
    sim_ready(&a, false).await;
    let mut seen = Vec::new();
    let down = eventually(WAIT, "h4a DOWN", || {
        let v = view(&h, "h4a");
        if seen.last() != Some(&v.status) {
            seen.push(v.status.clone());
        }
        async move { (!v.up).then_some(v) }
    })
    .await;
    assert_eq!(down.failed_checks - base, 3, "DOWN after exactly fall = 3 failed checks: {down:?}");
    assert_eq!(down.down_transitions, 1);
    let last = down.last_check.expect("a check result");
    assert_eq!((last.kind, last.code), (CheckKind::L7STS, Some(404)));
    assert!(seen.contains(&"UP 2/3".to_string()) && seen.contains(&"UP 1/3".to_string()), "statuses seen: {seen:?}");
    for _ in 0..10 {
        let r = get(h.http_addr, "/_now").await;
        assert_eq!((r.status, r.node()), (200, Some("h4b")), "traffic avoids the DOWN node");
    }
    let r = get(h.http_addr, "/h4a/_now").await;
    assert_eq!(r.status, 503, "prefix of a DOWN node");
    assert_eq!(r.json()["error"]["status"], 503);

    sim_ready(&a, true).await;
    let mut seen = Vec::new();
    eventually(WAIT, "h4a UP again", || {
        let v = view(&h, "h4a");
        if seen.last() != Some(&v.status) {
            seen.push(v.status.clone());
        }
        async move { v.up.then_some(()) }
    })
    .await;
    assert!(seen.contains(&"DOWN 1/2".to_string()), "rise = 2 passes through DOWN 1/2: {seen:?}");
    let r = get(h.http_addr, "/h4a/_now").await;
    assert_eq!((r.status, r.node()), (200, Some("h4a")));
    h.shutdown().await;
}

/// A node that accepts TCP but never answers goes DOWN by timeout (L7TOUT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_goes_down_by_timeout() {
    let a = Sim::start("hsa", &[]);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    // Accept and hold connections without ever reading or writing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let nodes = format!("{}[[node]]\nname = \"hss\"\naddress = \"{silent_addr}\"\n", nodes_toml(&[&a]));
    let h = gateway(&gateway_toml(&format!("{FAST_HEALTH}{nodes}"))).await;
    let started = Instant::now();
    let v = wait_up(&h, "hss", false).await;
    let last = v.last_check.expect("a check result");
    assert_eq!(last.kind, CheckKind::L7TOUT, "{v:?}");
    assert!(last.duration >= Duration::from_millis(990), "the check waited its timeout: {last:?}");
    assert!(started.elapsed() >= Duration::from_millis(2900), "3 timeouts of 1 s cannot take less");
    for _ in 0..5 {
        let r = get(h.http_addr, "/_now").await;
        assert_eq!((r.status, r.node()), (200, Some("hsa")));
    }
    assert!(view(&h, "hsa").up);
    h.shutdown().await;
    holder.abort();
}

/// WebSockets on a node marked DOWN get a 1001 close frame; reconnecting lands on a live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_downed_node_closed_with_1001() {
    let a = Sim::start("hwa", &[]);
    let b = Sim::start("hwb", &[]);
    let h = gateway(&gateway_toml(&format!("{FAST_HEALTH}{}", nodes_toml(&[&a, &b])))).await;
    let mut ws1 = ws(h.http_addr, "/hwa").await;
    assert_eq!(ws_node(&mut ws1, "w1").await, "hwa");

    sim_ready(&a, false).await;
    let asked = Instant::now();
    let code = close_code(&mut ws1, WAIT).await;
    assert_eq!(code, Some(1001), "close frame when the node is marked DOWN");
    assert!(!view(&h, "hwa").up);
    eprintln!("WebSocket closed {:?} after the node's health turned 404", asked.elapsed());

    for i in 0..3 {
        let mut again = ws(h.http_addr, "/").await;
        assert_eq!(ws_node(&mut again, &format!("r{i}")).await, "hwb", "reconnect lands on the live node");
    }
    h.shutdown().await;
}

/// `on_marked_down = "keep"` leaves tunnels alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_tunnels_when_configured() {
    let a = Sim::start("hka", &[]);
    let b = Sim::start("hkb", &[]);
    let cfg = format!("{FAST_HEALTH}on_marked_down = \"keep\"\n{}", nodes_toml(&[&a, &b]));
    let h = gateway(&gateway_toml(&cfg)).await;
    let mut ws1 = ws(h.http_addr, "/hka").await;
    assert_eq!(ws_node(&mut ws1, "k1").await, "hka");
    sim_ready(&a, false).await;
    wait_up(&h, "hka", false).await;
    assert_eq!(ws_node(&mut ws1, "k2").await, "hka", "the tunnel outlives the DOWN mark");
    h.shutdown().await;
}

/// DRAIN (no new traffic, WebSockets stay), MAINT (no traffic, tunnels closed), back to ready;
/// the state survives a configuration reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_maint_via_ops() {
    let a = Sim::start("hda", &[]);
    let b = Sim::start("hdb", &[]);
    // `gateway_toml` ends inside [stats]: these two lines turn its basic auth on.
    let auth = "user = \"kuzzle\"\npassword = \"kuzzle\"\n";
    let text = gateway_toml(&format!("{auth}{FAST_HEALTH}{}", nodes_toml(&[&a, &b])));
    let h = gateway(&text).await;
    let mut ws1 = ws(h.http_addr, "/hda").await;
    assert_eq!(ws_node(&mut ws1, "d0").await, "hda");

    let r = request(h.stats_addr, "POST", "/nodes/hda/state", &[JSON], Bytes::from("drain")).await;
    assert_eq!(r.status, 401, "the ops listener wants credentials");
    let r = ops_state(&h, "hda", "drain").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(ops_state(&h, "nope", "drain").await.status, 404);
    assert_eq!(ops_state(&h, "hda", "sleepy").await.status, 400);
    for _ in 0..10 {
        let r = get(h.http_addr, "/_now").await;
        assert_eq!((r.status, r.node()), (200, Some("hdb")), "a drained node takes no new request");
    }
    assert_eq!(get(h.http_addr, "/hda/_now").await.status, 503);
    assert_eq!(ws_node(&mut ws1, "d1").await, "hda", "existing WebSocket stays on a drained node");

    // A reload (here: a changed check interval) keeps the operator's state.
    let cfg = Config::parse(&text.replace("interval = \"200ms\"", "interval = \"250ms\""), "<reload>").expect("config");
    h.apply_config(cfg);
    let node = h.core.snapshot().node("hda").cloned().expect("hda");
    assert_eq!(node.admin(), AdminState::Drain, "DRAIN survives a reload");
    assert_eq!(get(h.http_addr, "/_now").await.node(), Some("hdb"));

    assert_eq!(ops_state(&h, "hda", "maint").await.status, 200);
    assert_eq!(close_code(&mut ws1, WAIT).await, Some(1001), "MAINT closes tunnels");
    assert_eq!(get(h.http_addr, "/hda/_now").await.status, 503);
    assert!(view(&h, "hda").up, "maintenance is not a health failure");

    assert_eq!(ops_state(&h, "hda", "ready").await.status, 200);
    let r = get(h.http_addr, "/hda/_now").await;
    assert_eq!((r.status, r.node()), (200, Some("hda")));
    let mut nodes = std::collections::HashSet::new();
    for _ in 0..10 {
        nodes.insert(get(h.http_addr, "/_now").await.node().unwrap_or("?").to_string());
    }
    assert!(nodes.contains("hda"), "back to ready takes traffic: {nodes:?}");
    h.shutdown().await;
}

/// All nodes DOWN: 503 JSON at once; traffic resumes as soon as one node is UP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_503_at_once_then_resumes() {
    let a = Sim::start("hza", &[]);
    let b = Sim::start("hzb", &[]);
    let h = gateway(&gateway_toml(&format!("{FAST_HEALTH}{}", nodes_toml(&[&a, &b])))).await;
    sim_ready(&a, false).await;
    sim_ready(&b, false).await;
    wait_up(&h, "hza", false).await;
    wait_up(&h, "hzb", false).await;
    let t = Instant::now();
    let r = get(h.http_addr, "/_now").await;
    assert!(t.elapsed() < Duration::from_secs(1), "503 must not wait for timeouts: {:?}", t.elapsed());
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"]["status"], 503);

    sim_ready(&b, true).await;
    let r = eventually(WAIT, "traffic resumes", || async {
        let r = get(h.http_addr, "/_now").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.node(), Some("hzb"));
    assert!(view(&h, "hzb").up, "the first 200 comes with the node UP");
    h.shutdown().await;
}

/// A node added by a reload is checked at once and takes traffic after its first passing check,
/// even with a long interval and rise = 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_node_takes_traffic_after_first_check() {
    let a = Sim::start("hja", &[]);
    let b = Sim::start("hjb", &[]);
    let slow = "[health]\ninterval = \"30s\"\ntimeout = \"1s\"\nrise = 2\nfall = 3\n";
    let h = gateway(&gateway_toml(&format!("{slow}{}", nodes_toml(&[&a])))).await;
    let cfg = Config::parse(&gateway_toml(&format!("{slow}{}", nodes_toml(&[&a, &b]))), "<reload>").expect("config");
    let t = Instant::now();
    h.apply_config(cfg);
    let v = wait_up(&h, "hjb", true).await;
    assert!(t.elapsed() < Duration::from_secs(5), "UP after its first check, not after rise x 30 s");
    assert_eq!(v.last_check.map(|c| c.kind), Some(CheckKind::L7OK));
    let r = get(h.http_addr, "/hjb/_now").await;
    assert_eq!((r.status, r.node()), (200, Some("hjb")));
    h.shutdown().await;
}

/// Passive checks: with active checks 60 s apart, failures on real traffic take a killed node
/// DOWN at once; clients see no error. With `passive = false` the node stays UP until a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_mark_down_between_active_checks() {
    for passive in [true, false] {
        let a = Sim::start("hpa", &[]);
        let mut b = Sim::start("hpb", &[]);
        let cfg = format!(
            "[balance]\nalgorithm = \"roundrobin\"\n[health]\ninterval = \"60s\"\ntimeout = \"1s\"\npassive = {passive}\n{}",
            nodes_toml(&[&a, &b])
        );
        let h = gateway(&gateway_toml(&cfg)).await;
        eventually(WAIT, "first checks done", || async {
            (view(&h, "hpa").last_check.is_some() && view(&h, "hpb").last_check.is_some()).then_some(())
        })
        .await;
        b.kill();
        for i in 0..20 {
            let r = get(h.http_addr, "/_now").await;
            assert_eq!((r.status, r.node()), (200, Some("hpa")), "request {i} (passive = {passive})");
        }
        if passive {
            wait_up(&h, "hpb", false).await;
            eventually(WAIT, "a fast re-check (L4CON) long before the 60 s interval", || async {
                (view(&h, "hpb").last_check.map(|c| c.kind) == Some(CheckKind::L4CON)).then_some(())
            })
            .await;
        } else {
            assert!(view(&h, "hpb").up, "passive = false: only active checks (60 s apart) decide");
            let n = h.core.snapshot().node("hpb").expect("hpb").counters.connect_errors.load(Ordering::Relaxed);
            assert!(n >= 5, "roundrobin kept trying the dead node ({n} connect errors), retried elsewhere");
        }
        h.shutdown().await;
    }
}

/// A fake node on a real socket: every connection is closed after the request arrives, either
/// unread (the kernel answers with a reset: the node died before reading it) or after reading it
/// all (a FIN: the node may have acted on it). Returns its address and a count of connections.
async fn breaking_node(read_first: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                if s.readable().await.is_err() {
                    return;
                }
                if read_first {
                    let mut buf = [0u8; 4096];
                    // Read until the client has nothing more to send for 200 ms.
                    for _ in 0..100 {
                        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => continue,
                            _ => break,
                        }
                    }
                } else {
                    // Let the whole request land unread in the socket buffer.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen.fetch_add(1, Ordering::Relaxed);
                drop(s);
            });
        }
    });
    (addr, seen, task)
}

/// Resend rules when a node breaks before answering: whether it read the request or not (a reset
/// does not prove it never read it), a POST already written is never sent to a second node: the
/// client gets a 502. A body-less GET is re-sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_rules_after_a_node_breaks() {
    let live = Sim::start("hra", &[]);
    for read_first in [false, true] {
        let (addr, seen, task) = breaking_node(read_first).await;
        let cfg = format!(
            "[balance]\nalgorithm = \"roundrobin\"\n[health]\ninterval = \"60s\"\npassive = false\n{}[[node]]\nname = \"hrb\"\naddress = \"{addr}\"\n",
            nodes_toml(&[&live])
        );
        let h = gateway(&gateway_toml(&cfg)).await;
        let mut statuses = Vec::new();
        for i in 0..6 {
            let r = request(
                h.http_addr,
                "POST",
                "/_sim/echo",
                &[("content-type", "application/json")],
                Bytes::from(format!("{{\"i\":{i}}}")),
            )
            .await;
            statuses.push(r.status);
            if r.status != 200 {
                assert_eq!(r.status, 502, "POST {i} (read_first = {read_first})");
                assert!(String::from_utf8_lossy(&r.body).contains("closed the connection before answering"));
            } else {
                assert_eq!(r.node(), Some("hra"));
            }
            let r = get(h.http_addr, "/_now").await;
            assert_eq!((r.status, r.node()), (200, Some("hra")), "GET {i} (read_first = {read_first})");
        }
        // Roundrobin sends every other POST to the breaking node: those get the 502, never the
        // live node's 200 (which a re-send would have produced).
        assert!(
            statuses.contains(&502),
            "a POST written to a breaking node was re-sent: {statuses:?} (read_first = {read_first})"
        );
        assert!(seen.load(Ordering::Relaxed) >= 3, "the breaking node was tried");
        h.shutdown().await;
        task.abort();
    }
}
