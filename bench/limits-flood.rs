//! Load generator of bench/limits-flood.sh: a flood of connections from distinct client addresses
//! (each one IPv6 /64 of its own, claimed in a PROXY protocol v2 header, as a flood from IPv6 is
//! cheap to make) against a gateway with per-client limits, while one legitimate client keeps
//! making requests; samples the gateway's RSS as it goes.
//!
//! Usage: limits_flood ADDR --pid PID [--count 1000000] [--concurrency 64] [--legit-every-ms 200]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A PROXY v2 header for a TCP client `src` (IPv6) to `dst`.
fn v2(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&7512u16.to_be_bytes());
    h
}

/// The gateway's RSS in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    kuzzle_test_support::try_rss_kib(pid).unwrap_or(0)
}

/// One flood connection: header, a request, read the status (0: no answer).
async fn one(addr: SocketAddr, from: IpAddr, i: u64) -> u16 {
    let Ok(sock) = TcpSocket::new_v4() else { return 0 };
    if sock.bind(SocketAddr::new(from, 0)).is_err() {
        return 0;
    }
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr)).await else { return 0 };
    let src = Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64) | 1);
    let mut b = v2(src, Ipv6Addr::LOCALHOST);
    b.extend_from_slice(b"GET /_now HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n");
    if s.write_all(&b).await.is_err() {
        return 0;
    }
    let mut out = Vec::with_capacity(1024);
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    std::str::from_utf8(out.get(9..12).unwrap_or_default()).ok().and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The legitimate client: one keep-alive connection of its own address, a request every `every`.
async fn legit(addr: SocketAddr, every: Duration, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, bad: Arc<AtomicU64>) {
    let mut s = TcpStream::connect(addr).await.expect("legit connect");
    let h = v2("2001:db8:ffff:ffff::1".parse().expect("ip"), Ipv6Addr::LOCALHOST);
    s.write_all(&h).await.expect("legit header");
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = async {
            s.write_all(b"GET /_now HTTP/1.1\r\nHost: legit\r\n\r\n").await.ok()?;
            let n = s.read(&mut buf).await.ok()?;
            std::str::from_utf8(buf.get(9..12)?).ok()?.parse::<u16>().ok().filter(|_| n > 0)
        };
        match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Some(200)) => ok.fetch_add(1, Ordering::Relaxed),
            _ => bad.fetch_add(1, Ordering::Relaxed),
        };
        tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("usage: limits_flood ADDR --pid PID ...");
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let pid = opt("--pid", 0) as u32;
    let count = opt("--count", 1_000_000);
    let concurrency = opt("--concurrency", 64);
    let every = Duration::from_millis(opt("--legit-every-ms", 200));
    let rss0 = rss_kib(pid);
    println!("rss_before_kib {rss0}");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let legit = tokio::spawn(legit(addr, every, stop.clone(), ok.clone(), bad.clone()));
    let t0 = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut set = tokio::task::JoinSet::new();
    let mut max_rss = rss0;
    // Source addresses 127.0.0.2..=127.0.0.61, in turn: no shortage of ephemeral ports.
    for i in 0..count {
        if set.len() as u64 >= concurrency {
            if let Some(Ok(s)) = set.join_next().await {
                *statuses.entry(s).or_default() += 1;
            }
        }
        let from = IpAddr::from([127, 0, 0, 2 + (i % 60) as u8]);
        set.spawn(one(addr, from, i));
        if (i + 1) % 100_000 == 0 {
            let rss = rss_kib(pid);
            max_rss = max_rss.max(rss);
            println!(
                "flood {} addresses in {:.0} s: rss {rss} KiB; statuses {statuses:?}; legit {} ok, {} failed",
                i + 1,
                t0.elapsed().as_secs_f64(),
                ok.load(Ordering::Relaxed),
                bad.load(Ordering::Relaxed)
            );
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            *statuses.entry(s).or_default() += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = legit.await;
    let rss1 = rss_kib(pid);
    println!(
        "done {count} addresses in {:.0} s; rss before {rss0} KiB, max {} KiB, after {rss1} KiB; statuses {statuses:?}; legit {} ok, {} failed",
        t0.elapsed().as_secs_f64(),
        max_rss.max(rss1),
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
}
