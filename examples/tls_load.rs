//! Benchmark tool (not part of the gateway): full TLS handshakes, one HTTPS request per connection.
//!
//! Used by `bench/perf.sh` for "TLS handshakes per CPU-second". wrk and h2load resume TLS sessions
//! (wrk keeps the session across its reconnects, h2load too), so with them a server that caches
//! sessions would be measured on cheap resumptions; this tool disables resumption, so every
//! connection is a full handshake (key exchange and certificate signature) whatever the server does.
//!
//! ```text
//! cargo run --release --example tls_load -- 127.0.0.1:7443 [--conns 50] [--duration 8] [--path /]
//!     [--timeout 5]
//! ```
//! C tasks each loop until the duration is over: TCP connect, TLS handshake (TLS 1.2 or 1.3 as the
//! server prefers; the certificate is not checked, the handshake signature is), `GET PATH` with
//! `Connection: close`, read to the end. Prints one line:
//! `requests N errors E secs S rps R p50_ms P p99_ms Q proto V suite C kx K` (latency of the whole
//! exchange; version, cipher suite and key exchange of the first connection that got a 200).
//! Exits 1 if every connection failed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: String,
    conns: usize,
    duration: Duration,
    path: String,
    timeout: Duration,
}

const USAGE: &str = "usage: tls_load HOST:PORT [--conns C] [--duration SECS] [--path /] [--timeout SECS]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        addr: String::new(),
        conns: 50,
        duration: Duration::from_secs(8),
        path: "/".into(),
        timeout: Duration::from_secs(5),
    };
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"));
        match arg.as_str() {
            "--conns" => a.conns = (num("--conns", val("--conns")?)? as usize).max(1),
            "--duration" => a.duration = Duration::from_secs(num("--duration", val("--duration")?)?.max(1)),
            "--timeout" => a.timeout = Duration::from_secs(num("--timeout", val("--timeout")?)?.max(1)),
            "--path" => a.path = val("--path")?,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            s if a.addr.is_empty() => a.addr = s.to_string(),
            s => return Err(format!("unexpected argument {s:?}\n{USAGE}")),
        }
    }
    if a.addr.is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// One connection, one request: Ok("VERSION suite SUITE kx GROUP") when the answer is a 200.
async fn exchange(connector: &tokio_rustls::TlsConnector, addr: &str, request: &[u8]) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let conn = tls.get_ref().1;
    let proto = format!(
        "{} suite {} kx {}",
        conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_else(|| "-".into()),
        conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("-"),
        conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_else(|| "-".into()),
    );
    tls.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    // Servers may end with a TCP close and no close_notify: what was read until then counts.
    let _ = tls.read_to_end(&mut buf).await;
    if buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200") {
        Ok(proto)
    } else {
        Err(format!("answer: {:?}", String::from_utf8_lossy(&buf[..buf.len().min(40)])))
    }
}

async fn run(a: Args) -> Result<(), String> {
    // Any certificate (the bench's self-signed one), signatures still checked.
    let mut cfg = kuzzle_test_support::accept_any_cert_client(&[b"http/1.1"]);
    // The point of the tool: no session cache, no tickets, every handshake a full one.
    cfg.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let request = Arc::new(format!("GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", a.path));
    let started = Instant::now();
    let deadline = started + a.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.conns {
        let (connector, addr, request, timeout) = (connector.clone(), a.addr.clone(), request.clone(), a.timeout);
        tasks.spawn(async move {
            let (mut lat_us, mut errors, mut proto, mut first_err) = (Vec::new(), 0u64, None, None);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match tokio::time::timeout(timeout, exchange(&connector, &addr, request.as_bytes())).await {
                    Ok(Ok(p)) => {
                        lat_us.push(t0.elapsed().as_micros() as u64);
                        proto = proto.or(Some(p));
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        errors += 1;
                        first_err.get_or_insert_with(|| "timed out".to_string());
                    }
                }
            }
            (lat_us, errors, proto, first_err)
        });
    }
    let (mut lat, mut errors, mut proto, mut first_err) = (Vec::new(), 0u64, None, None);
    while let Some(r) = tasks.join_next().await {
        let (l, e, p, fe) = r.map_err(|e| format!("task: {e}"))?;
        lat.extend(l);
        errors += e;
        proto = proto.or(p);
        first_err = first_err.or(fe);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| common::quantile(&lat, q);
    println!(
        "requests {} errors {errors} secs {secs:.2} rps {:.0} p50_ms {:.2} p99_ms {:.2} proto {}",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        proto.unwrap_or_else(|| "- suite - kx -".into()),
    );
    if let Some(e) = first_err {
        eprintln!("tls_load: first error: {e}");
    }
    if lat.is_empty() {
        return Err("no request succeeded".into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_with("tls_load", parse_args(), run)
}
