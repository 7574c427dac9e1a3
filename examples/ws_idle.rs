//! Benchmark tool (not part of the gateway): opens N WebSockets through a URL, does one Kuzzle
//! `server:now` request/response on each, holds them idle, and prints `ready N MS` once all are open.
//!
//! Used by `bench/run.sh` and `bench/perf.sh` to read a proxy's memory with thousands of idle
//! WebSockets open, and by `bench/perf.sh` to time a WebSocket relay (`--round-trips`).
//!
//! ```text
//! cargo run --release --example ws_idle -- ws://127.0.0.1:7512/ --count 1000 [--concurrency 50]
//!     [--hold 600] [--timeout 20] [--round-trips 0] [--ping-every 0]
//! ```
//! Holding ends at the first of: a line or EOF on stdin, SIGTERM/SIGINT, `--hold` seconds. Then each
//! connection does one more request/response (so a proxy that silently dropped a tunnel is seen),
//! the tool prints `verified OK/N`, closes every socket with a close frame, and exits 0 only if all
//! N were opened and all N still answered.
//!
//! With `--round-trips M`, once released every connection first makes M more `server:now`
//! round trips, one after the other, and the tool prints `relay MESSAGES MS P50_MS P99_MS` before
//! `verified`: the round trips made, the milliseconds from release until the last one, and the
//! round-trip time percentiles.
//!
//! With `--ping-every SECS`, every connection sends the official SDKs' heartbeat `{"p":1}` every
//! SECS seconds while it idles (first pings spread evenly over one interval) and counts the
//! `{"p":2}` answers; the tool prints `pings SENT ANSWERED LATE P50_MS P99_MS` before `verified`
//! (LATE: heartbeats still unanswered when the next one was due, as an SDK would count them).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Args {
    url: String,
    count: usize,
    concurrency: usize,
    hold: Duration,
    timeout: Duration,
    round_trips: usize,
    /// SDK-like heartbeat period while idle (zero: no pings), for the ws-ping benchmark case.
    ping_every: Duration,
}

const USAGE: &str =
    "usage: ws_idle URL [--count N] [--concurrency C] [--hold SECS] [--timeout SECS] [--round-trips M] [--ping-every SECS]  (e.g. ws://127.0.0.1:7512/)";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        url: String::new(),
        count: 1000,
        concurrency: 50,
        hold: Duration::from_secs(600),
        timeout: Duration::from_secs(20),
        round_trips: 0,
        ping_every: Duration::ZERO,
    };
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--count" => a.count = num("--count")? as usize,
            "--concurrency" => a.concurrency = (num("--concurrency")? as usize).max(1),
            "--hold" => a.hold = Duration::from_secs(num("--hold")?),
            "--timeout" => a.timeout = Duration::from_secs(num("--timeout")?.max(1)),
            "--round-trips" => a.round_trips = num("--round-trips")? as usize,
            "--ping-every" => a.ping_every = Duration::from_secs(num("--ping-every")?),
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            s if a.url.is_empty() => a.url = s.to_string(),
            s => return Err(format!("unexpected argument {s:?}\n{USAGE}")),
        }
    }
    if !(a.url.starts_with("ws://") || a.url.starts_with("wss://")) {
        return Err(format!("need a ws:// URL\n{USAGE}"));
    }
    Ok(a)
}

/// What the connections report back, shared by all of them.
#[derive(Default)]
struct Tally {
    /// Connections that still answered after the hold (the tool's exit status).
    verified: AtomicUsize,
    /// Relay round-trip times, microseconds.
    relay: Mutex<Vec<u64>>,
    /// Heartbeats sent (--ping-every).
    pings_sent: AtomicUsize,
    /// Heartbeats unanswered when the next one was sent.
    pings_late: AtomicUsize,
    /// Heartbeat answer times, microseconds (one per answered ping).
    ping_lat: Mutex<Vec<u64>>,
}

/// Send one `server:now` request and wait for the response that echoes its requestId.
async fn round_trip(ws: &mut Ws, id: &str, timeout: Duration) -> Result<(), String> {
    let req = serde_json::json!({ "controller": "server", "action": "now", "requestId": id });
    ws.send(Message::text(req.to_string())).await.map_err(|e| format!("send: {e}"))?;
    let wait = async {
        // Bounded: at most 100 unrelated messages before giving up on this one.
        for _ in 0..100 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| format!("bad JSON: {e}"))?;
                    if v.get("requestId").and_then(|r| r.as_str()) == Some(id) {
                        return match v.get("status").and_then(|s| s.as_u64()) {
                            Some(200) => Ok(()),
                            s => Err(format!("status {s:?} in {t}")),
                        };
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed by the server".into()),
            }
        }
        Err("no matching response in 100 messages".into())
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| format!("no response within {timeout:?}"))?
}

/// One connection: open, first exchange, report, idle until released, verify, close.
async fn one(
    i: usize,
    a: Arc<Args>,
    gate: Arc<Semaphore>,
    opened: mpsc::Sender<Result<(), String>>,
    mut release: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let ws = {
        let Ok(_permit) = gate.acquire().await else { return };
        let open = async {
            let (mut ws, _) =
                tokio_tungstenite::connect_async(a.url.as_str()).await.map_err(|e| format!("connect: {e}"))?;
            round_trip(&mut ws, &format!("open-{i}"), a.timeout).await?;
            Ok::<Ws, String>(ws)
        };
        match tokio::time::timeout(a.timeout, open).await.unwrap_or_else(|_| Err("open timed out".into())) {
            Ok(ws) => {
                let _ = opened.send(Ok(())).await;
                ws
            }
            Err(e) => {
                let _ = opened.send(Err(format!("connection {i}: {e}"))).await;
                return;
            }
        }
    };
    let mut ws = ws;
    // Idle, but keep reading so pings are answered and an early close is noticed; with
    // --ping-every, send the SDK heartbeat, the first one offset by i/count of a period so that
    // the pings of all connections spread evenly over time.
    let pinging = !a.ping_every.is_zero();
    let period = if pinging { a.ping_every } else { Duration::from_secs(3600) };
    let offset = period.mul_f64((i % a.count.max(1)) as f64 / a.count.max(1) as f64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut late, mut ping_at, mut ping_lat) = (0usize, 0usize, None::<Instant>, Vec::new());
    let alive = loop {
        tokio::select! {
            r = release.changed() => { let _ = r; break true; }
            _ = ticks.tick(), if pinging => {
                if ws.send(Message::text(r#"{"p":1}"#)).await.is_err() {
                    break false;
                }
                late += usize::from(ping_at.is_some());
                sent += 1;
                ping_at = Some(Instant::now());
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) if t.as_str() == r#"{"p":2}"# => {
                    if let Some(t0) = ping_at.take() {
                        ping_lat.push(t0.elapsed().as_micros() as u64);
                    }
                }
                Some(Ok(_)) => {}
                _ => break false,
            },
        }
    };
    tally.pings_sent.fetch_add(sent, Ordering::Relaxed);
    tally.pings_late.fetch_add(late, Ordering::Relaxed);
    tally.ping_lat.lock().unwrap_or_else(|e| e.into_inner()).extend(ping_lat);
    // The relay: round trips one after the other, each timed (microseconds).
    let mut lat = Vec::with_capacity(if alive { a.round_trips } else { 0 });
    for n in 0..if alive { a.round_trips } else { 0 } {
        let t0 = Instant::now();
        if round_trip(&mut ws, &format!("relay-{i}-{n}"), a.timeout).await.is_err() {
            break;
        }
        lat.push(t0.elapsed().as_micros() as u64);
    }
    tally.relay.lock().unwrap_or_else(|e| e.into_inner()).extend(lat);
    if alive && round_trip(&mut ws, &format!("verify-{i}"), a.timeout).await.is_ok() {
        tally.verified.fetch_add(1, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
}

async fn run(a: Args) -> Result<(), String> {
    let a = Arc::new(a);
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let (tx, mut rx) = mpsc::channel(a.count.max(1));
    let (release_tx, release_rx) = watch::channel(false);
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.count {
        tasks.spawn(one(i, a.clone(), gate.clone(), tx.clone(), release_rx.clone(), tally.clone()));
    }
    drop(tx);
    let mut ok = 0usize;
    let mut first_err: Option<String> = None;
    // Each task reports once (its sender lives on while it holds its socket, so count reports).
    for _ in 0..a.count {
        match rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => break,
        }
    }
    let failed = match &first_err {
        None => {
            println!("ready {ok} {}", started.elapsed().as_millis());
            false
        }
        Some(e) => {
            println!("failed {ok}/{}: {e}", a.count);
            true
        }
    };
    if !failed {
        hold(a.hold).await;
    }
    let _ = release_tx.send(true);
    let released = Instant::now();
    // Bounded: every task's own steps have timeouts; this is a last guard.
    let drain = async { while tasks.join_next().await.is_some() {} };
    let guard = a.timeout * (a.round_trips as u32 + 1) + Duration::from_secs(10);
    if tokio::time::timeout(guard, drain).await.is_err() {
        tasks.abort_all();
    }
    if a.round_trips > 0 && !failed {
        let mut lat = std::mem::take(&mut *tally.relay.lock().unwrap_or_else(|e| e.into_inner()));
        lat.sort_unstable();
        let pct = |q: f64| common::quantile(&lat, q);
        println!(
            "relay {} {} {:.3} {:.3}",
            lat.len(),
            released.elapsed().as_millis(),
            pct(0.50) as f64 / 1000.0,
            pct(0.99) as f64 / 1000.0
        );
    }
    if !a.ping_every.is_zero() && !failed {
        let mut lat = std::mem::take(&mut *tally.ping_lat.lock().unwrap_or_else(|e| e.into_inner()));
        lat.sort_unstable();
        let pct = |q: f64| common::quantile(&lat, q);
        println!(
            "pings {} {} {} {:.3} {:.3}",
            tally.pings_sent.load(Ordering::Relaxed),
            lat.len(),
            tally.pings_late.load(Ordering::Relaxed),
            pct(0.50) as f64 / 1000.0,
            pct(0.99) as f64 / 1000.0
        );
    }
    let v = tally.verified.load(Ordering::Relaxed);
    println!("verified {v}/{}", a.count);
    if failed || v != a.count {
        return Err(format!("{ok} opened, {v} still answering, of {}", a.count));
    }
    Ok(())
}

/// Wait for a line or EOF on stdin, a stop signal, or the hold limit.
async fn hold(limit: Duration) {
    let stdin = async {
        let mut line = String::new();
        let _ = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = stdin => {}
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(limit) => {}
    }
}

fn main() -> std::process::ExitCode {
    common::main_with("ws_idle", parse_args(), run)
}
