//! Load for bench/reload-compare.sh: WebSocket clients exchanging Kuzzle `server:now` requests and
//! HTTP clients (half on a new connection per request, half keep-alive) against one proxy, until
//! a stop file appears; then prints one JSON line of what the clients saw: disconnects, refused
//! connections, errors, non-2xx, messages sent and echoed.
//!
//! cargo run --release --example reload_load -- --target 127.0.0.1:7512 --ws 200 --http 8 --stop-file /tmp/stop

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// Proxy address (HTTP and WebSocket).
    #[arg(long)]
    target: SocketAddr,
    /// WebSocket clients.
    #[arg(long, default_value_t = 200)]
    ws: usize,
    /// HTTP clients (even ones use a new connection per request).
    #[arg(long, default_value_t = 8)]
    http: usize,
    /// Milliseconds between two messages of one WebSocket client.
    #[arg(long, default_value_t = 250)]
    ws_every_ms: u64,
    /// Stop when this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Hard cap on the run, seconds.
    #[arg(long, default_value_t = 300)]
    max_secs: u64,
}

#[derive(Default)]
struct Tally {
    http_ok: AtomicU64,
    http_non2xx: AtomicU64,
    http_errors: AtomicU64,
    refused: AtomicU64,
    ws_opened: AtomicU64,
    ws_sent: AtomicU64,
    ws_echoed: AtomicU64,
    ws_disconnects: AtomicU64,
    ws_lost: AtomicU64,
}

async fn http_client(target: SocketAddr, fresh: bool, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        if fresh || conn.is_none() {
            let s = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
                Ok(Ok(s)) => s,
                _ => {
                    t.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                Ok((sender, c)) => {
                    tokio::spawn(async move {
                        let _ = c.await;
                    });
                    conn = Some(sender);
                }
                Err(_) => {
                    t.http_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else { continue };
        let req = http::Request::get("/_serverInfo").header("host", "bench").body(Full::new(Bytes::new()));
        let Ok(req) = req else { return };
        let res = async {
            sender.ready().await.map_err(|e| e.to_string())?;
            let r = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            let close = r.headers().get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = r.status().as_u16();
            r.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, close))
        }
        .await;
        match res {
            Ok((status, close)) => {
                if (200..300).contains(&status) {
                    t.http_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    t.http_non2xx.fetch_add(1, Ordering::Relaxed);
                }
                if close {
                    conn = None;
                }
            }
            Err(_) => {
                t.http_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open(target: SocketAddr, t: &Tally) -> Option<Ws> {
    let url = format!("ws://{target}/");
    match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(&url)).await {
        Ok(Ok((ws, _))) => {
            t.ws_opened.fetch_add(1, Ordering::Relaxed);
            Some(ws)
        }
        _ => {
            t.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn ws_client(target: SocketAddr, id: usize, every: Duration, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut ws: Option<Ws> = None;
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if ws.is_none() {
            ws = open(target, &t).await;
            if ws.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let Some(w) = ws.as_mut() else { continue };
        k += 1;
        let rid = format!("b{id}-{k}");
        let req = serde_json::json!({"controller": "server", "action": "now", "requestId": rid});
        t.ws_sent.fetch_add(1, Ordering::Relaxed);
        let mut ok = w.send(Message::text(req.to_string())).await.is_ok();
        if ok {
            ok = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(Some(Ok(m))) =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), w.next()).await
            {
                if let Message::Text(txt) = m {
                    let v: serde_json::Value = serde_json::from_str(&txt).unwrap_or_default();
                    if v["requestId"] == rid.as_str() {
                        ok = true;
                        break;
                    }
                }
            }
        }
        if ok {
            t.ws_echoed.fetch_add(1, Ordering::Relaxed);
        } else {
            // The connection went away under the client: a disconnect, its message lost.
            t.ws_disconnects.fetch_add(1, Ordering::Relaxed);
            t.ws_lost.fetch_add(1, Ordering::Relaxed);
            ws = None;
            continue;
        }
        tokio::time::sleep(every).await;
    }
    if let Some(mut w) = ws {
        let _ = w.close(None).await;
    }
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let t = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..a.ws {
        // Spread the opening and the message phase of the clients.
        tokio::time::sleep(Duration::from_millis(2)).await;
        tasks.push(tokio::spawn(ws_client(a.target, i, Duration::from_millis(a.ws_every_ms), stop.clone(), t.clone())));
    }
    for i in 0..a.http {
        tasks.push(tokio::spawn(http_client(a.target, i % 2 == 0, stop.clone(), t.clone())));
    }
    eprintln!("reload_load: {} WebSocket and {} HTTP clients on {}", a.ws, a.http, a.target);
    let start = Instant::now();
    while !a.stop_file.exists() && start.elapsed() < Duration::from_secs(a.max_secs) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    let g = |x: &AtomicU64| x.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "http_ok": g(&t.http_ok), "http_non2xx": g(&t.http_non2xx), "http_errors": g(&t.http_errors),
            "refused": g(&t.refused), "ws_opened": g(&t.ws_opened), "ws_sent": g(&t.ws_sent),
            "ws_echoed": g(&t.ws_echoed), "ws_disconnects": g(&t.ws_disconnects), "ws_lost": g(&t.ws_lost),
            "secs": start.elapsed().as_secs_f64(),
        })
    );
}
