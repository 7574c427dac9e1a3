//! Client load for failure tests: HTTP clients that open a new connection per request and count
//! every answer, and official-SDK WebSocket subscribers run by node (`sim/tests/sdk/subscribers.js`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::http_client::Client;
use crate::process::need;
use crate::wait::READY_TIMEOUT;

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
    /// Requests sent in all.
    pub total: u64,
}

impl LoadReport {
    /// Requests that did not get a 2xx.
    pub fn failed(&self) -> u64 {
        self.by_status.iter().filter(|((_, s), _)| !(200..300).contains(s)).map(|(_, n)| n).sum()
    }
    /// Failed requests of one method.
    pub fn failed_of(&self, method: &str) -> u64 {
        self.by_status.iter().filter(|((m, s), _)| m == method && !(200..300).contains(s)).map(|(_, n)| n).sum()
    }
}

/// Load clients running until `stop` (bounded by `max` too): each sends its `Shot` again and
/// again, each on a fresh connection (as a Kuzzle HTTP client behind `Connection: close` does).
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Keep at most this many failure texts.
const KEEP_FAILURES: usize = 20;

impl Load {
    /// `clients` as (count, shot) pairs against `addr`; every loop ends after `max` at the latest.
    pub fn start(addr: SocketAddr, clients: &[(usize, Shot)], max: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let deadline = Instant::now() + max;
        let mut tasks = Vec::new();
        for (n, shot) in clients {
            for _ in 0..*n {
                let (stop, report, shot) = (stop.clone(), report.clone(), shot.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let outcome =
                            match tokio::time::timeout(Duration::from_secs(5), Client::try_connect(addr)).await {
                                Ok(Ok(mut c)) => c.try_send(shot.method, &shot.path, &[], shot.body.clone()).await,
                                Ok(Err(e)) => Err(format!("connect: {e}")),
                                Err(_) => Err("connect timed out".into()),
                            };
                        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                        r.total += 1;
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
                }));
            }
        }
        Load { stop, report, tasks }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
