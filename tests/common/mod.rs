//! Shared integration-test harness: simulated nodes as real processes, the gateway in-process on
//! ephemeral ports, real `redis-server` processes, and small HTTP / WebSocket clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kuzzle_gateway::app::{self, Handle};
use kuzzle_gateway::config::Config;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long any readiness wait may take before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound then released; the small race is acceptable in tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port on 127.0.0.1")
}

/// Path of a binary built by this package.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "kuzzle-node-sim" => PathBuf::from(env!("CARGO_BIN_EXE_kuzzle-node-sim")),
        "kuzzle-gateway" => PathBuf::from(env!("CARGO_BIN_EXE_kuzzle-gateway")),
        other => panic!("unknown binary {other}"),
    }
}

/// Read child stdout lines until one satisfies `f`, within `timeout`.
fn wait_line(
    child: &mut Child,
    timeout: Duration,
    what: &str,
    f: impl Fn(&str) -> Option<String> + Send + 'static,
) -> String {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(v) = f(&line) {
                    let _ = tx.send(v);
                    sent = true;
                }
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| panic!("{what}: not ready within {timeout:?}"))
}

/// A simulated Kuzzle node running as its own process (`kuzzle-node-sim`).
pub struct Sim {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Sim {
    /// Start `kuzzle-node-sim --listen 127.0.0.1:0 --name NAME ARGS...` and wait for its address.
    pub fn start(name: &str, args: &[&str]) -> Sim {
        Sim::start_on("127.0.0.1:0", name, args)
    }

    /// Same, on a given listen address (e.g. `127.0.0.2:PORT` for Kuzzle 2 nodes sharing a port).
    pub fn start_on(listen: &str, name: &str, args: &[&str]) -> Sim {
        let mut child = Command::new(bin("kuzzle-node-sim"))
            .args(["--listen", listen, "--name", name])
            .args(args)
            .env("RUST_LOG", std::env::var("SIM_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kuzzle-node-sim: {e}"));
        let addr = wait_line(&mut child, READY_TIMEOUT, &format!("kuzzle-node-sim {name}"), |l| {
            l.split(" listening on ").nth(1).map(|a| a.trim().to_string())
        });
        let addr = addr.parse().unwrap_or_else(|_| panic!("sim printed a bad address {addr:?}"));
        Sim { name: name.to_string(), addr, child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILL: no goodbye of any kind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("kuzzle-node-sim {} did not exit within 10 s of SIGTERM", self.name);
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `[[node]]` lines for these sims.
pub fn nodes_toml(sims: &[&Sim]) -> String {
    sims.iter().map(|s| format!("[[node]]\nname = \"{}\"\naddress = \"{}\"\n", s.name, s.addr)).collect()
}

/// Gateway configuration text on ephemeral ports, with the given extra sections appended.
/// `extra` must not contain `[gateway]` listen or `[stats]` listen (they are set here).
pub fn gateway_toml(extra: &str) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[stats]\nlisten = \"127.0.0.1:0\"\n{extra}")
}

/// Start an in-process gateway from configuration text.
pub async fn gateway(toml: &str) -> Handle {
    let cfg = Config::parse(toml, "<test>").unwrap_or_else(|e| panic!("test config invalid: {e}"));
    app::bind_and_start(cfg).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn node(&self) -> Option<&str> {
        self.headers.get("x-kuzzle-node").and_then(|v| v.to_str().ok())
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh connection (tests that need keep-alive use `Client`).
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    let mut c = Client::connect(addr).await;
    c.send(method, path, headers, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], Bytes::new()).await
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, addr }
    }

    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
        self.try_send(method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp, String> {
        let mut b = http::Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(req))
            .await
            .map_err(|_| "no response within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp { status: parts.status.as_u16(), headers: parts.headers, body })
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Open a WebSocket to `ws://addr{path}`.
pub async fn ws(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|_| panic!("WebSocket {url}: handshake timed out"))
        .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Send a Kuzzle request and wait for the response whose `requestId` matches (notifications
/// arriving meanwhile are returned in the second element).
pub async fn ws_call(ws: &mut Ws, req: serde_json::Value) -> (serde_json::Value, Vec<serde_json::Value>) {
    let id = req["requestId"].as_str().expect("request needs a requestId").to_string();
    ws.send(Message::text(req.to_string())).await.expect("ws send");
    let mut other = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no response to {id} within 10 s"))
            .unwrap_or_else(|| panic!("WebSocket closed while waiting for {id}"))
            .unwrap_or_else(|e| panic!("WebSocket error while waiting for {id}: {e}"));
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).expect("WebSocket message is JSON");
            if v["requestId"] == id.as_str() {
                return (v, other);
            }
            other.push(v);
        }
    }
}

/// Next JSON text message within `timeout`.
pub async fn ws_next_json(ws: &mut Ws, timeout: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Poll `f` until it returns Some, every 20 ms, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real `redis-server` on a free port, in its own temporary directory; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

fn redis_server_bin() -> &'static str {
    if Command::new("redis-server").arg("--version").output().is_err() {
        panic!("redis-server is not installed: the tests need it (apt-get install redis-server, or run scripts/test which installs it)");
    }
    "redis-server"
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        RedisServer::start_on(port, extra)
    }

    /// (Re)start on a given port (tests that restart Redis keep the port).
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("kgw-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = Command::new(redis_server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = RedisServer { port, child: Some(child), dir };
        r.wait_ready();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = s.read(&mut buf) {
                        if buf[..n].starts_with(b"+PONG") {
                            return;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} not ready within {READY_TIMEOUT:?}", self.port);
    }

    /// SIGKILL the server (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                RedisServer::start_on(
                    port,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "2000"],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is needed to create the test Redis Cluster");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + READY_TIMEOUT;
        for n in &nodes {
            loop {
                let o = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "Redis Cluster not ok within {READY_TIMEOUT:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }
}
