//! Hot reload and binary upgrade under load: config changes written to the watched file (nodes
//! added and removed, algorithm switched, a broken file in the middle), a listener moved to a new
//! address, `drain_timeout`, and the real binary handing its sockets (and, with Redis
//! membership, its state) to a new process; a start with Redis membership under load. Every
//! test asserts zero non-2xx (so no "no node" 503), zero unexpected WebSocket disconnects and
//! every message echoed, and zero refused connections once the gateway listens.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
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

/// What the load generators saw.
#[derive(Default)]
struct Tally {
    http_ok: AtomicU64,
    http_non2xx: AtomicU64,
    http_errors: AtomicU64,
    refused: AtomicU64,
    ws_sent: AtomicU64,
    ws_echoed: AtomicU64,
    ws_disconnects: AtomicU64,
}

impl Tally {
    fn report(&self) -> String {
        format!(
            "http ok {} non-2xx {} errors {} refused {}; ws sent {} echoed {} disconnects {}",
            self.http_ok.load(Ordering::Relaxed),
            self.http_non2xx.load(Ordering::Relaxed),
            self.http_errors.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.ws_sent.load(Ordering::Relaxed),
            self.ws_echoed.load(Ordering::Relaxed),
            self.ws_disconnects.load(Ordering::Relaxed),
        )
    }

    fn assert_clean(&self) {
        let r = self.report();
        assert!(self.http_ok.load(Ordering::Relaxed) > 0, "no HTTP request succeeded: {r}");
        assert_eq!(self.http_non2xx.load(Ordering::Relaxed), 0, "{r}");
        assert_eq!(self.http_errors.load(Ordering::Relaxed), 0, "{r}");
        assert_eq!(self.refused.load(Ordering::Relaxed), 0, "{r}");
        assert_eq!(self.ws_disconnects.load(Ordering::Relaxed), 0, "{r}");
        assert_eq!(self.ws_sent.load(Ordering::Relaxed), self.ws_echoed.load(Ordering::Relaxed), "{r}");
    }
}

/// One keep-alive HTTP/1.1 connection of the load generator (connect errors are counted, not panics).
struct LoadConn(hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>);

impl LoadConn {
    async fn connect(addr: SocketAddr) -> Result<LoadConn, String> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(LoadConn(sender))
    }

    /// GET a path: (status, response said `Connection: close`).
    async fn get(&mut self, path: &str) -> Result<(u16, bool), String> {
        use http_body_util::BodyExt;
        let req = http::Request::get(path)
            .header("host", "gw.test")
            .body(http_body_util::Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.0.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.0.send_request(req))
            .await
            .map_err(|_| "no response within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        let close = resp.headers().get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((status, close))
    }
}

/// HTTP load: `fresh` = a new connection per request (what a refused connection shows on),
/// otherwise one keep-alive connection (renewed only when a response says `Connection: close`).
/// Runs until `stop` (bounded by `LOAD_CAP`).
fn http_load(addr: SocketAddr, fresh: bool, stop: Arc<AtomicBool>, t: Arc<Tally>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut keep: Option<LoadConn> = None;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < LOAD_CAP {
            if fresh || keep.is_none() {
                match LoadConn::connect(addr).await {
                    Ok(c) => keep = Some(c),
                    Err(e) => {
                        eprintln!("connect to {addr}: {e}");
                        t.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let Some(c) = keep.as_mut() else { continue };
            match c.get("/_serverInfo").await {
                Ok((status, close)) => {
                    if (200..300).contains(&status) {
                        t.http_ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("non-2xx {status}");
                        t.http_non2xx.fetch_add(1, Ordering::Relaxed);
                    }
                    // As any HTTP client: a response saying `Connection: close` ends the connection.
                    if close {
                        keep = None;
                    }
                }
                Err(e) => {
                    eprintln!(
                        "HTTP error ({} connection, after {:?}): {e}",
                        if fresh { "fresh" } else { "keep-alive" },
                        start.elapsed()
                    );
                    t.http_errors.fetch_add(1, Ordering::Relaxed);
                    keep = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// One WebSocket client sending `server:now` every ~`every` and checking each answer comes back,
/// until `stop`; then it closes normally. Returns the node it was tunnelled to.
async fn ws_client(
    ws: Ws,
    id: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut ws = ws;
        let mut node = String::new();
        let start = Instant::now();
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < LOAD_CAP {
            k += 1;
            let rid = format!("c{id}-{k}");
            t.ws_sent.fetch_add(1, Ordering::Relaxed);
            let req = json!({"controller": "server", "action": "now", "requestId": rid});
            if ws.send(Message::text(req.to_string())).await.is_err() {
                t.ws_disconnects.fetch_add(1, Ordering::Relaxed);
                return node;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, ws.next()).await {
                    Ok(Some(Ok(Message::Text(txt)))) => {
                        let v: serde_json::Value = serde_json::from_str(&txt).unwrap_or_default();
                        if v["requestId"] == rid.as_str() {
                            t.ws_echoed.fetch_add(1, Ordering::Relaxed);
                            node = v["node"].as_str().unwrap_or_default().to_string();
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => continue,
                    other => {
                        eprintln!("ws client {id} lost its connection waiting for {rid}: {other:?}");
                        t.ws_disconnects.fetch_add(1, Ordering::Relaxed);
                        return node;
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
        let _ = ws.close(None).await;
        node
    })
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

    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let mut loads = Vec::new();
    for i in 0..4 {
        loads.push(http_load(h.http_addr, i % 2 == 0, stop.clone(), t.clone()));
    }
    let mut clients = Vec::new();
    for (i, w) in open_ws(h.http_addr, "/", WS_CLIENTS).await.into_iter().enumerate() {
        clients.push(ws_client(w, i, Duration::from_millis(150), stop.clone(), t.clone()).await);
    }

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
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A last interval of traffic on the final configuration, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load task");
    }
    for c in clients {
        c.await.expect("ws task");
    }
    eprintln!("config_changes_under_load: {}", t.report());
    t.assert_clean();
    assert!(
        t.ws_echoed.load(Ordering::Relaxed) >= (WS_CLIENTS * CHANGES) as u64 / 4,
        "too little WS traffic: {}",
        t.report()
    );
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

    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let load = http_load(old_addr, false, stop.clone(), t.clone());
    eventually(Duration::from_secs(10), "load running", || async {
        (t.http_ok.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;

    // Move both listeners; reload through the ops endpoint (authenticated).
    let l2 = format!("127.0.0.1:{p2}");
    let st2 = format!("127.0.0.1:{s2}");
    std::fs::write(&file, config_text(&l2, &st2, "roundrobin", "watch = false", &node_lines(&[&a]))).expect("write");
    let auth = ("authorization", "Basic a3V6emxlOmt1enpsZQ==");
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
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    t.assert_clean();

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

/// Spawn `kuzzle-gateway ARGS`; its output lines go to a channel (and to stderr for debugging).
fn spawn_gateway(args: &[&str]) -> (KillOnDrop, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(bin("kuzzle-gateway"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start kuzzle-gateway: {e}"));
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            eprintln!("[gateway {}] {line}", args_tag());
            let _ = tx.send(line);
        }
    });
    (KillOnDrop(child), rx)
}

fn args_tag() -> &'static str {
    "child"
}

/// The first output line containing `needle` (the lines before it are skipped).
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => continue,
            Err(_) => panic!("no output line containing {needle:?} within {timeout:?}"),
        }
    }
}

fn wait_exit(child: &mut KillOnDrop, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.0.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
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
    let cfg = file.to_str().expect("utf-8 path");
    let addr: SocketAddr = format!("127.0.0.1:{p}").parse().expect("addr");
    let stats: SocketAddr = format!("127.0.0.1:{s}").parse().expect("addr");

    let (mut old, old_out) = spawn_gateway(&["--config", cfg]);
    wait_for_line(&old_out, "upgrade socket ready", READY_TIMEOUT);
    assert_eq!(get(stats, "/healthz").await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let mut loads = Vec::new();
    for i in 0..4 {
        loads.push(http_load(addr, i % 2 == 0, stop.clone(), t.clone()));
    }
    // WebSockets opened on the old process: they must keep working across the hand-over.
    let ws_stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, w) in open_ws(addr, "/", 10).await.into_iter().enumerate() {
        clients.push(ws_client(w, i, Duration::from_millis(100), ws_stop.clone(), t.clone()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut new, new_out) = spawn_gateway(&["--config", cfg, "--upgrade"]);
    wait_for_line(&new_out, "upgrade complete", READY_TIMEOUT);
    wait_for_line(&new_out, "upgrade socket ready", READY_TIMEOUT);
    // Load continues on the new process; the old one is alive for its tunnels.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(old.0.try_wait().expect("try_wait").is_none(), "old process exited while its WebSockets were open");
    let echoed_before = t.ws_echoed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.ws_echoed.load(Ordering::Relaxed) > echoed_before, "WebSockets on the old process stalled");
    // New WebSockets go to the new process and work.
    let mut w = ws(addr, "/").await;
    let (r, _) = ws_call(&mut w, json!({"controller": "server", "action": "now", "requestId": "new-1"})).await;
    assert_eq!(r["status"], 200);
    drop(w);
    assert_eq!(get(stats, "/healthz").await.status, 200, "stats listener handed over too");

    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load");
    }
    // Closing the old process's last tunnels lets it exit 0.
    ws_stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("ws task");
    }
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut old, Duration::from_secs(20))).await.expect("join");
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "old process did not exit 0 after its last tunnel closed");
    eprintln!("binary_upgrade: {}", t.report());
    t.assert_clean();

    // The new process is a normal gateway now: SIGTERM stops it.
    let _ = Command::new("kill").args(["-TERM", &new.0.id().to_string()]).status();
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut new, Duration::from_secs(20))).await.expect("join");
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "new process did not stop on SIGTERM");
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

/// Block on a child's output without holding a runtime worker.
fn line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    tokio::task::block_in_place(|| wait_for_line(rx, needle, READY_TIMEOUT))
}

/// A child's output lines up to the first containing `needle`, that one included.
fn lines_until(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        while !seen.last().is_some_and(|l: &String| l.contains(needle)) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no output line containing {needle:?} within {READY_TIMEOUT:?}"),
            }
        }
        seen
    })
}

/// The line of `lines` containing `needle` (panics naming it otherwise).
fn find<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line containing {needle:?} in {lines:#?}"))
}

/// HTTP load: `n` clients, half on a new connection per request.
fn load(addr: SocketAddr, n: usize, stop: &Arc<AtomicBool>, t: &Arc<Tally>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n).map(|i| http_load(addr, i % 2 == 0, stop.clone(), t.clone())).collect()
}

/// At least `more` requests succeed from now on.
async fn wait_ok(t: &Tally, more: u64, what: &str) {
    let from = t.http_ok.load(Ordering::Relaxed);
    eventually(T, what, || async { (t.http_ok.load(Ordering::Relaxed) >= from + more).then_some(()) }).await;
}

/// SIGTERM a gateway process and expect exit 0.
async fn term(mut child: KillOnDrop) {
    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20))).await.expect("join");
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "gateway did not stop on SIGTERM");
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
    let cfg = file.to_str().expect("utf-8 path");

    let (mut old, mut old_out) = spawn_gateway(&["--config", cfg]);
    line(&old_out, "upgrade socket ready");
    nodes.wait_routable(addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let loads = load(addr, 8, &stop, &t);
    wait_ok(&t, 50, "load running on the first process").await;

    let mut states = Vec::new();
    for round in 1..=3 {
        let (new, new_out) = spawn_gateway(&["--config", cfg, "--upgrade"]);
        states.push(lines_until(&new_out, "upgrade complete"));
        line(&new_out, "upgrade socket ready");
        let status =
            tokio::task::spawn_blocking(move || wait_exit(&mut old, Duration::from_secs(20))).await.expect("join");
        assert_eq!(status.map(|s| s.code()), Some(Some(0)), "round {round}: the old process did not exit 0");
        wait_ok(&t, 50, &format!("load served by the process of round {round}")).await;
        eprintln!("after upgrade {round}: {}", t.report());
        (old, old_out) = (new, new_out);
    }
    drop(old_out);
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load");
    }
    eprintln!("binary_upgrades_with_redis_membership: {}", t.report());
    t.assert_clean();
    for (round, lines) in states.iter().enumerate() {
        let state = find(lines, "state of the running gateway");
        assert!(
            state.contains("3 nodes with their health") && state.contains("routable=true"),
            "round {round}: {state}"
        );
        find(lines, "routing from the first connection");
    }
    term(old).await;
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
    let cfg = file.to_str().expect("utf-8 path");
    let (old, old_out) = spawn_gateway(&["--config", cfg]);
    line(&old_out, "upgrade socket ready");
    nodes.wait_routable(addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let loads = load(addr, 8, &stop, &t);
    wait_ok(&t, 50, "load running on the first process").await;

    let changed = nodes.config(addr, stats, &sock, "watch = false", "allowed_networks = [\"127.0.0.0/8\"]");
    std::fs::write(&file, changed).expect("write");
    let (new, new_out) = spawn_gateway(&["--config", cfg, "--upgrade"]);
    let lines = lines_until(&new_out, "upgrade complete");
    let mut old = old;
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut old, Duration::from_secs(20))).await.expect("join");
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "the old process did not exit 0");
    wait_ok(&t, 50, "load served by the new process").await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load");
    }
    eprintln!("binary_upgrade_without_usable_state: {}", t.report());
    t.assert_clean();
    let state = find(&lines, "state of the running gateway");
    assert!(state.contains("not the nodes") && state.contains("routable=false"), "{state}");
    // In this order: it waited for Redis and the checks before it took the sockets.
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let (wait, ready) = (at("waiting for the first membership read"), at("ready: Redis read and every node"));
    assert!(wait.is_some() && wait < ready, "{lines:#?}");
    drop(new_out);
    term(new).await;
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
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let loads = load(addr, 8, &stop, &t);
    eventually(T, "clients refused before the gateway listens", || async {
        (t.refused.load(Ordering::Relaxed) >= 8).then_some(())
    })
    .await;
    let (gw, out) = spawn_gateway(&["--config", file.to_str().expect("utf-8 path")]);
    wait_ok(&t, 200, "requests served once the gateway accepts").await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load");
    }
    eprintln!("start_with_redis_membership: {}", t.report());
    let r = t.report();
    assert_eq!(t.http_non2xx.load(Ordering::Relaxed), 0, "a \"no node\" answer once it accepted: {r}");
    assert_eq!(t.http_errors.load(Ordering::Relaxed), 0, "{r}");
    drop((out, reserve));
    term(gw).await;
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
