//! Open files at the edge: with its fds used up by idle clients, the gateway must not blame the
//! nodes (health checks that cannot open a socket are not run), and service resumes at once when
//! the clients leave. Run as a real process under a small `ulimit -n`.
use crate::common;

use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_fds_never_mark_healthy_nodes_down() {
    let sim = Sim::start("fd1", &[]);
    // Soft and hard limit of 128: the gateway cannot raise it.
    let gw = Gateway::builder()
        .config(&format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1000\nwatch = false\n\
             [health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1\n\
             [stats]\nlisten = \"127.0.0.1:0\"\n{}",
            nodes_toml(&[&sim])
        ))
        .open_files_limit(128)
        .start();
    let warned = gw.wait_line("max_connections is more than the open-files limit allows", T);
    assert!(warned.contains("fits"), "{warned}");
    let (addr, stats) = (gw.http(), gw.ops());
    eventually(T, "the node UP", || async { (get(addr, "/_now").await.status == 200).then_some(()) }).await;

    // Idle clients take every fd the gateway has (it accepts until EMFILE, then backs off).
    let mut idle = Vec::new();
    for _ in 0..160 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 120, "only {} idle connections opened", idle.len());
    // Check after check finds no fd to check with (each says so in the log): more than `fall` of
    // them pass, which would have marked the node DOWN had they counted.
    let not_run = |gw: &Gateway| gw.lines().iter().filter(|l| l.contains("health check not run")).count();
    eventually(T, "three checks not run for want of an fd", || async { (not_run(&gw) >= 3).then_some(()) }).await;
    drop(idle);

    // The attacker left: the node was never marked DOWN, so requests succeed at once.
    let r = eventually(Duration::from_secs(10), "gateway accepting again", || async {
        let r = tokio::time::timeout(Duration::from_secs(2), get(addr, "/_now")).await.ok()?;
        Some(r)
    })
    .await;
    assert_eq!(r.status, 200, "after the flood: {:?}", r.body);
    let csv = request(stats, "GET", "/hastats;csv", &[ops_auth()], Bytes::new()).await;
    let body = String::from_utf8_lossy(&csv.body).to_string();
    let row = body.lines().find(|l| l.starts_with("kuzzle,fd1,")).unwrap_or_else(|| panic!("no fd1 row: {body}"));
    let cols: Vec<&str> = row.split(',').collect();
    // Columns 17 and 22 of haproxy's CSV: status and chkdown.
    assert_eq!((cols[17], cols[22]), ("UP", "0"), "the node was marked DOWN while the gateway had no fds: {row}");
}

/// An idle gateway holds no fd for pooled node connections past `[timeouts] pool_idle`: they are
/// closed by the once-a-second upkeep, not only when the next request finds them stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_closed_after_pool_idle() {
    // A node keeping its connections (real Kuzzle 2 closes after every response): pooling to test.
    let sim = Sim::builder("fd2").keep_alive().start();
    let gw = gateway(&gateway_toml(&format!("[timeouts]\npool_idle = \"300ms\"\n{}", nodes_toml(&[&sim])))).await;
    let node = gw.core.snapshot().node("fd2").cloned().expect("node");
    assert_eq!(get(gw.http_addr, "/_now").await.status, 200);
    eventually(Duration::from_secs(5), "the connection back in the pool", || async {
        (node.idle_connections() == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the idle pooled connection closed", || async {
        (node.idle_connections() == 0).then_some(())
    })
    .await;
    gw.shutdown().await;
}
