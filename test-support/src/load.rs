//! Client load for failure tests: HTTP clients that count every answer (a new connection per
//! request, or one kept alive), WebSocket clients checking every answer comes back, and
//! official-SDK WebSocket subscribers run by node (`sim/tests/sdk/subscribers.js`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::http_client::Client;
use crate::process::need;
use crate::wait::{eventually, READY_TIMEOUT, T};
use crate::websocket::{ws_next_json_where, Ws};
use tokio_tungstenite::tungstenite::Message;

/// One kind of request a load client repeats.
#[derive(Clone, Debug)]
pub struct Shot {
    pub method: &'static str,
    pub path: String,
    pub body: Bytes,
}

impl Shot {
    pub fn get(path: &str) -> Shot {
        Shot { method: "GET", path: path.into(), body: Bytes::new() }
    }
    pub fn post(path: &str, body: &str) -> Shot {
        Shot { method: "POST", path: path.into(), body: Bytes::copy_from_slice(body.as_bytes()) }
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Answers per (method, status); a broken exchange counts as status 0.
    pub by_status: BTreeMap<(String, u16), u64>,
    /// The first failures (non-2xx or broken), with the body or error, for the test's message.
    pub failures: Vec<String>,
    /// Requests sent in all (refused connections included).
    pub total: u64,
    /// Connections that could not be opened (counted as status 0 too).
    pub refused: u64,
}

impl LoadReport {
    /// Requests that got a 2xx.
    pub fn ok(&self) -> u64 {
        self.by_status.iter().filter(|((_, s), _)| (200..300).contains(s)).map(|(_, n)| n).sum()
    }
    /// Requests that did not get a 2xx.
    pub fn failed(&self) -> u64 {
        self.by_status.iter().filter(|((_, s), _)| !(200..300).contains(s)).map(|(_, n)| n).sum()
    }
    /// Failed requests of one method.
    pub fn failed_of(&self, method: &str) -> u64 {
        self.by_status.iter().filter(|((m, s), _)| m == method && !(200..300).contains(s)).map(|(_, n)| n).sum()
    }
    /// Requests that failed once connected: a non-2xx answer or a broken exchange.
    pub fn failed_connected(&self) -> u64 {
        self.failed() - self.refused
    }
    /// Some requests succeeded and none failed, refused connections included; panics saying what
    /// went wrong otherwise.
    pub fn assert_clean(&self, what: &str) {
        assert!(self.ok() > 0, "{what}: no request succeeded: {self:?}");
        assert_eq!(self.failed(), 0, "{what}: {:?}\n{:#?}", self.by_status, self.failures);
    }
}

/// Load clients running until `stop` (bounded by `max` too): each sends its `Shot` again and
/// again, on a fresh connection each time (as a Kuzzle HTTP client behind `Connection: close`
/// does) or on one kept alive (see [`LoadBuilder`]).
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Keep at most this many failure texts.
const KEEP_FAILURES: usize = 20;

/// How to start a [`Load`]: `Load::builder(addr).fresh(4, Shot::get("/_now")).keep_alive(4, shot).pause(ms).start()`.
#[must_use]
pub struct LoadBuilder {
    addr: SocketAddr,
    clients: Vec<(usize, Shot, bool)>,
    max: Duration,
    pause: Duration,
}

impl LoadBuilder {
    /// `n` clients each opening a new connection per request.
    pub fn fresh(mut self, n: usize, shot: Shot) -> Self {
        self.clients.push((n, shot, false));
        self
    }

    /// `n` clients each keeping its connection (a new one after a `Connection: close` answer or
    /// a broken exchange, as any HTTP client).
    pub fn keep_alive(mut self, n: usize, shot: Shot) -> Self {
        self.clients.push((n, shot, true));
        self
    }

    /// Every loop ends after `max` at the latest (default 60 s).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// A pause after each request and each refused connection (default none).
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    pub fn start(self) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let deadline = Instant::now() + self.max;
        let (addr, pause) = (self.addr, self.pause);
        let mut tasks = Vec::new();
        for (n, shot, keep_alive) in self.clients {
            for _ in 0..n {
                let (stop, report, shot) = (stop.clone(), report.clone(), shot.clone());
                tasks.push(tokio::spawn(async move {
                    let mut kept: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let client = match kept.take() {
                            Some(c) => Ok(c),
                            None => match tokio::time::timeout(Duration::from_secs(5), Client::try_connect(addr)).await
                            {
                                Ok(Ok(c)) => Ok(c),
                                Ok(Err(e)) => Err(format!("connect: {e}")),
                                Err(_) => Err("connect timed out".into()),
                            },
                        };
                        let refused = client.is_err();
                        let outcome = match client {
                            Ok(mut c) => {
                                let r = c.try_send(shot.method, &shot.path, &[], shot.body.clone()).await;
                                let close = r.as_ref().map_or(true, |resp| {
                                    resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                });
                                if keep_alive && !close {
                                    kept = Some(c);
                                }
                                r
                            }
                            Err(e) => Err(e),
                        };
                        {
                            let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                            r.total += 1;
                            r.refused += u64::from(refused);
                            let status = match &outcome {
                                Ok(resp) => resp.status,
                                Err(_) => 0,
                            };
                            *r.by_status.entry((shot.method.to_string(), status)).or_default() += 1;
                            if !(200..300).contains(&status) && r.failures.len() < KEEP_FAILURES {
                                let what = match outcome {
                                    Ok(resp) => format!("{} {}", resp.status, String::from_utf8_lossy(&resp.body)),
                                    Err(e) => e,
                                };
                                r.failures.push(format!("{} {}: {what}", shot.method, shot.path));
                            }
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }));
            }
        }
        Load { stop, report, tasks }
    }
}

impl Load {
    /// `clients` as (count, shot) pairs against `addr`, a connection per request; every loop ends
    /// after `max` at the latest.
    pub fn start(addr: SocketAddr, clients: &[(usize, Shot)], max: Duration) -> Load {
        clients.iter().fold(Load::builder(addr).max(max), |b, (n, shot)| b.fresh(*n, shot.clone())).start()
    }

    pub fn builder(addr: SocketAddr) -> LoadBuilder {
        LoadBuilder { addr, clients: Vec::new(), max: Duration::from_secs(60), pause: Duration::ZERO }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait (at most `T`) until `more` requests more than now got a 2xx.
    pub async fn wait_ok(&self, more: u64, what: &str) {
        let from = self.snapshot().ok();
        eventually(T, what, || async { (self.snapshot().ok() >= from + more).then_some(()) }).await;
    }

    /// Stop every client (each finishes its request in flight) and report.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What WebSocket echo clients saw.
#[derive(Debug, Default, Clone)]
pub struct WsReport {
    /// `server:now` requests sent.
    pub sent: u64,
    /// Their answers received (matched by request id).
    pub echoed: u64,
    /// Connections lost (a send failed, no answer within 10 s, a close or an error).
    pub disconnects: u64,
}

impl WsReport {
    /// Every request answered and no connection lost; panics saying what went wrong otherwise.
    pub fn assert_clean(&self, what: &str) {
        assert!(self.sent > 0, "{what}: no WebSocket request sent: {self:?}");
        assert_eq!(self.disconnects, 0, "{what}: WebSockets lost: {self:?}");
        assert_eq!(self.sent, self.echoed, "{what}: WebSocket requests unanswered: {self:?}");
    }
}

#[derive(Default)]
struct WsCounts {
    sent: AtomicU64,
    echoed: AtomicU64,
    disconnects: AtomicU64,
}

impl WsCounts {
    fn report(&self) -> WsReport {
        WsReport {
            sent: self.sent.load(Ordering::Relaxed),
            echoed: self.echoed.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
        }
    }
}

/// WebSocket clients on open sockets, each sending Kuzzle's `server:now` every `every` and
/// waiting for its answer, until `stop` (bounded by `max`); then each closes normally.
pub struct WsLoad {
    stop: Arc<AtomicBool>,
    counts: Arc<WsCounts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WsLoad {
    pub fn start(sockets: Vec<Ws>, every: Duration, max: Duration) -> WsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(WsCounts::default());
        let deadline = Instant::now() + max;
        let tasks = sockets
            .into_iter()
            .enumerate()
            .map(|(id, mut ws)| {
                let (stop, t) = (stop.clone(), counts.clone());
                tokio::spawn(async move {
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        k += 1;
                        let rid = format!("c{id}-{k}");
                        t.sent.fetch_add(1, Ordering::Relaxed);
                        let req = serde_json::json!({"controller": "server", "action": "now", "requestId": rid});
                        if ws.send(Message::text(req.to_string())).await.is_err() {
                            t.disconnects.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        let answer =
                            ws_next_json_where(&mut ws, Duration::from_secs(10), |v| v["requestId"] == rid.as_str());
                        if answer.await.is_none() {
                            eprintln!("ws client {id} lost its connection waiting for {rid}");
                            t.disconnects.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        t.echoed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(every).await;
                    }
                    let _ = ws.close(None).await;
                })
            })
            .collect();
        WsLoad { stop, counts, tasks }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> WsReport {
        self.counts.report()
    }

    /// Stop every client (each closes with 1000) and report.
    pub async fn stop(mut self) -> WsReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        self.counts.report()
    }
}

impl Drop for WsLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `sim/tests/sdk`, where the official SDK is installed (scripts/test does `npm install` there).
pub fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sim/tests/sdk")
}

/// N official-SDK WebSocket clients subscribed to (index, collection) through `addr`.
pub struct Subscribers {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// What the subscribers saw (see subscribers.js).
#[derive(Debug)]
pub struct SubscriberReport {
    /// Per client: notifications since `mark`.
    pub since_mark: Vec<u64>,
    /// SDK disconnections and reconnections, all clients together.
    pub disconnected: u64,
    pub reconnected: u64,
    pub raw: serde_json::Value,
}

impl Subscribers {
    pub async fn start(addr: SocketAddr, n: usize, index: &str, collection: &str) -> Subscribers {
        need("node");
        let dir = sdk_dir();
        assert!(
            dir.join("node_modules/kuzzle-sdk").exists(),
            "the official Kuzzle SDK is missing in {}: run scripts/test (or npm install there)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("subscribers.js"))
            .args([addr.ip().to_string(), addr.port().to_string(), n.to_string(), index.into(), collection.into()])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node subscribers.js: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = Subscribers { child, stdin, lines };
        let ready = s.line_starting("READY", READY_TIMEOUT + Duration::from_secs(10)).await;
        assert_eq!(ready.trim(), format!("READY {n}"), "subscribers: {ready}");
        s
    }

    async fn line_starting(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(l))) if l.starts_with(prefix) => return l,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = self.child.wait().await;
                    panic!("subscribers.js ended before {prefix}: {status:?} (its stderr is above)")
                }
                Err(_) => panic!("subscribers.js printed no {prefix} within {limit:?}"),
            }
        }
    }

    /// Remember every client's count: `report` then says what each received since.
    pub async fn mark(&mut self) {
        self.stdin.write_all(b"mark\n").await.expect("write to subscribers.js");
        self.line_starting("MARKED", Duration::from_secs(10)).await;
    }

    /// Per client, notifications since `mark` (the clients keep running).
    pub async fn counts(&mut self) -> Vec<u64> {
        self.stdin.write_all(b"counts\n").await.expect("write to subscribers.js");
        let line = self.line_starting("COUNTS ", Duration::from_secs(10)).await;
        let v: serde_json::Value =
            serde_json::from_str(&line["COUNTS ".len()..]).unwrap_or_else(|e| panic!("bad counts {line}: {e}"));
        v["since_mark"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default()
    }

    pub async fn report(mut self) -> SubscriberReport {
        self.stdin.write_all(b"report\n").await.expect("write to subscribers.js");
        let line = self.line_starting("REPORT ", Duration::from_secs(10)).await;
        let raw: serde_json::Value =
            serde_json::from_str(&line["REPORT ".len()..]).unwrap_or_else(|e| panic!("bad report {line}: {e}"));
        let nums =
            |k: &str| raw[k].as_array().map(|a| a.iter().filter_map(|v| v.as_u64()).collect()).unwrap_or_default();
        let since_mark = nums("since_mark");
        let disconnected = raw["disconnected"].as_u64().unwrap_or(0);
        let reconnected = raw["reconnected"].as_u64().unwrap_or(0);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        SubscriberReport { since_mark, disconnected, reconnected, raw }
    }
}
