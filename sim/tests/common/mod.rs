//! Shared test harness: sims in-process on ephemeral ports, real `redis-server` processes (one
//! server or a 3-master Redis Cluster), a small HTTP/1.1 client, a WebSocket client, and bounded
//! readiness waits.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kuzzle_node_sim::{SimConfig, SimHandle};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bound of every wait in these tests.
pub const T: Duration = Duration::from_secs(10);

/// Start a sim on 127.0.0.1:0.
pub async fn sim(cfg: SimConfig) -> SimHandle {
    let name = cfg.name.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    kuzzle_node_sim::start(cfg, l).await.unwrap_or_else(|e| panic!("sim {name} did not start: {e}"))
}

/// Poll `f` until it returns `Some`, at most `limit` (and at most 1000 tries).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    for _ in 0..1000 {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// A free TCP port on 127.0.0.1 (bound, then released; the small race is acceptable in tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port on 127.0.0.1")
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

fn need(bin: &str) {
    let found = Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        panic!("this test needs `{bin}` on PATH (apt-get install redis-server redis-tools); it is missing");
    }
}

/// A unique scratch directory under the system temp dir, removed on drop by its owner.
fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "kuzzle-node-sim-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("create a scratch dir");
    d
}

/// Whether a Redis answers PING on `port` (raw RESP, no client library involved).
fn pings(port: u16) -> bool {
    let Ok(mut s) = StdStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn wait_ping(port: u16, child: &mut Child) {
    let deadline = Instant::now() + T;
    for _ in 0..500 {
        if pings(port) {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("redis-server on port {port} exited early: {st}");
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within {T:?}");
}

fn spawn_redis(port: u16, dir: &PathBuf, extra: &[String]) -> Child {
    let mut c = Command::new("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
    wait_ping(port, &mut child);
    child
}

/// One `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// On a given port (e.g. one a sim was already told to use while nothing listened there).
    pub fn start_on(port: u16) -> RedisServer {
        need("redis-server");
        let dir = scratch_dir("redis");
        let child = spawn_redis(port, &dir, &[]);
        RedisServer { port, dir, child: Some(child) }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL the server (its data is lost: it has no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_redis(self.port, &self.dir, &[]));
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("test redis connection")
    }

    /// A plain subscriber (as a gateway would be) to `channels`.
    pub async fn subscriber(&self, channels: &[&str]) -> Subscriber {
        let mut ps = redis::Client::open(self.url()).expect("redis url").get_async_pubsub().await.expect("pubsub");
        ps.subscribe(channels).await.expect("subscribe");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                let payload: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap_or(Value::Null);
                if tx.send((m.get_channel_name().to_owned(), payload)).is_err() {
                    break;
                }
            }
        });
        Subscriber { rx, task }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Messages (channel, parsed payload) seen by a plain Redis subscriber.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// The next message satisfying `f`, within `T`.
    pub async fn wait(&mut self, what: &str, f: impl Fn(&str, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((ch, v))) if f(&ch, &v) => return v,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{what}: subscriber closed"),
                Err(_) => panic!("{what}: not seen within {T:?}"),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A 3-master Redis Cluster on free ports, killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        need("redis-server");
        need("redis-cli");
        let dir = scratch_dir("cluster");
        // A cluster node also listens on port + 10000 (the cluster bus).
        let mut ports = Vec::new();
        for _ in 0..200 {
            let p = free_port();
            if p < 55000 && !ports.contains(&p) && StdListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                ports.push(p);
                if ports.len() == 3 {
                    break;
                }
            }
        }
        assert_eq!(ports.len(), 3, "could not find 3 free port pairs for the Redis Cluster");
        let mut children = Vec::new();
        for p in &ports {
            let extra = [
                "--cluster-enabled".to_string(),
                "yes".into(),
                "--cluster-config-file".into(),
                format!("nodes-{p}.conf"),
            ];
            children.push(spawn_redis(*p, &dir, &extra));
        }
        let mut cluster = RedisCluster { ports, dir, children };
        let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
        if !out.status.success() {
            cluster.kill_all();
            panic!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        'wait: for _ in 0..400 {
            let ok = cluster.ports.iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                break 'wait;
            }
            if Instant::now() >= deadline {
                cluster.kill_all();
                panic!("Redis Cluster not ok within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The seed list, as `--redis-cluster` takes it.
    pub fn seeds(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
        redis::cluster::ClusterClient::new(seeds)
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }

    fn kill_all(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body fed from a channel (no length: chunked).
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    send: http1::SendRequest<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (send, conn) = http1::handshake(TokioIo::new(s)).await.expect("http1 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { send, addr, task }
    }

    /// Send and get the head back (body unread).
    pub async fn send_streaming(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>,
    ) -> hyper::Response<Incoming> {
        let mut b = hyper::Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(body).expect("request");
        tokio::time::timeout(T, self.send.ready()).await.expect("connection ready in time").expect("connection usable");
        tokio::time::timeout(T, self.send.send_request(req)).await.expect("response head in time").expect("response")
    }

    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
        let resp = self.send_streaming(method, path, headers, Full::new(body).boxed_unsync()).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(T, body.collect()).await.expect("body in time").expect("body").to_bytes();
        Resp { status: parts.status.as_u16(), headers: parts.headers, body }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request on a fresh connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Resp {
    Client::connect(addr).await.send(method, path, &[], Bytes::new()).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path).await
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<TcpStream>;

pub async fn ws(addr: SocketAddr) -> Ws {
    let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (w, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/"), s)
        .await
        .unwrap_or_else(|e| panic!("ws handshake: {e}"));
    assert!(resp.headers().get("x-kuzzle-node").is_some(), "the 101 carries x-kuzzle-node");
    w
}

/// A Kuzzle request.
pub fn kuzzle(controller: &str, action: &str, request_id: &str) -> Value {
    json!({"controller": controller, "action": action, "requestId": request_id})
}

/// The next JSON text message satisfying `f`, within `T`; other messages are returned too.
pub async fn ws_wait(w: &mut Ws, what: &str, f: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + T;
    let mut others = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"));
                if f(&v) {
                    return (v, others);
                }
                others.push(v);
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("{what}: {other:?} (seen before: {others:?})"),
        }
    }
}

/// Send a request, wait for its response (matched on room = requestId); returns it and the
/// messages that came before.
pub async fn ws_call(w: &mut Ws, req: Value) -> (Value, Vec<Value>) {
    let id = req["requestId"].as_str().expect("requestId").to_owned();
    w.send(Message::text(req.to_string())).await.expect("ws send");
    ws_wait(w, &format!("response to {id}"), |v| v["room"] == id.as_str() && v.get("type").is_none()).await
}

/// Subscribe to index/collection with `filters`; returns (roomId, channel).
pub async fn subscribe(w: &mut Ws, index: &str, collection: &str, filters: Value, id: &str) -> (String, String) {
    let mut req = kuzzle("realtime", "subscribe", id);
    req["index"] = json!(index);
    req["collection"] = json!(collection);
    req["body"] = filters;
    let (r, _) = ws_call(w, req).await;
    assert_eq!(r["status"], 200, "{r}");
    (
        r["result"]["roomId"].as_str().expect("roomId").to_owned(),
        r["result"]["channel"].as_str().expect("channel").to_owned(),
    )
}

/// Publish a document; returns the messages that came before the response.
pub async fn publish(w: &mut Ws, index: &str, collection: &str, body: Value, id: &str) -> Vec<Value> {
    let mut req = kuzzle("realtime", "publish", id);
    req["index"] = json!(index);
    req["collection"] = json!(collection);
    req["body"] = body;
    req["volatile"] = json!({"from": id});
    let (r, early) = ws_call(w, req).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["result"], json!({"published": true}));
    early
}

/// The notification for `channel` (possibly already received in `early`).
pub async fn notification(w: &mut Ws, channel: &str, early: Vec<Value>) -> Value {
    let is = |v: &Value| v["room"] == channel && v["type"] == "document";
    match early.into_iter().find(|v| is(v)) {
        Some(n) => n,
        None => ws_wait(w, &format!("notification on {channel}"), is).await.0,
    }
}

/// Nothing but (optionally) unrelated messages arrives before the response to a sentinel request:
/// proves that no notification for `channel` was sent before it.
pub async fn no_notification_before_sentinel(w: &mut Ws, channel: &str) {
    let (_, early) = ws_call(w, kuzzle("server", "now", "sentinel")).await;
    assert!(!early.iter().any(|v| v["room"] == channel), "unexpected notification: {early:?}");
}
