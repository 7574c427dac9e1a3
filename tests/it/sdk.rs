//! The official Kuzzle JavaScript SDK (`kuzzle-sdk` from npm) through the gateway, in front of two
//! simulated nodes linked by Redis: runs `sim/tests/sdk/sdk-check.js GATEWAY_HOST GATEWAY_PORT
//! NODE_HOST NODE_PORT` with node (WebSocket and HTTP). Node.js, npm and redis-server are
//! required; a missing tool fails the test and says what to install.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Run a command with a deadline, killing it if it overruns; returns its output.
fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let Some(status) = wait_exit(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        let stdout = t_out.join().unwrap_or_default();
        let stderr = t_err.join().unwrap_or_default();
        panic!(
            "{what} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() }
}

/// `npm install` once (offline cache first) when the SDK is not there yet.
fn ensure_sdk_installed(dir: &Path) {
    if dir.join("node_modules/kuzzle-sdk").is_dir() {
        return;
    }
    need("npm");
    let ci = dir.join("package-lock.json").exists();
    let mut cmd = Command::new("npm");
    cmd.current_dir(dir).args(if ci { &["ci"][..] } else { &["install"][..] }).args([
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
    ]);
    let out = run_bounded(&mut cmd, Duration::from_secs(300), "npm install");
    assert!(
        out.status.success(),
        "npm install in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("node_modules/kuzzle-sdk").is_dir(), "npm install did not install kuzzle-sdk");
}

/// The node names in a `sdk-check route: WHAT publish answered by X, notified by Y` line.
fn route_line<'a>(stdout: &'a str, what: &str) -> Option<(&'a str, &'a str)> {
    let prefix = format!("sdk-check route: {what} publish answered by ");
    let rest = stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str()))?;
    rest.split_once(", notified by ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_works_through_the_gateway() {
    need("node");
    let dir = sdk_dir();
    let script = dir.join("sdk-check.js");
    assert!(script.is_file(), "{} is missing (the simulator's SDK check script)", script.display());
    ensure_sdk_installed(&dir);

    // Two nodes linked by Redis, so a document published on one reaches subscribers on the other.
    let redis = RedisServer::start();
    let url = redis.url();
    let n1 = Sim::start("cluster_kuzzle_1", &["--redis", &url]);
    let n2 = Sim::start("cluster_kuzzle_2", &["--redis", &url]);
    let gw = gateway(&gateway_toml(&nodes_toml(&[&n1, &n2]))).await;
    let port = gw.http_addr.port().to_string();

    // Twice, everything through the gateway: two WebSocket sessions at once (the balancer sends
    // them to both nodes) and HTTP requests; each publish says which node answered it and which
    // notified the subscriber.
    let mut crossed = Vec::new();
    for round in 1..=2 {
        let (dir, port) = (dir.clone(), port.clone());
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new("node");
            cmd.current_dir(&dir).arg("sdk-check.js").args(["127.0.0.1", &port, "127.0.0.1", &port]);
            run_bounded(&mut cmd, Duration::from_secs(60), "node sdk-check.js")
        })
        .await
        .expect("SDK check task");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "round {round}: the Kuzzle SDK failed through the gateway:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        for what in ["http", "http-to-peer", "websocket-to-peer"] {
            let (answered, notified) =
                route_line(&stdout, what).unwrap_or_else(|| panic!("round {round}: no {what} route line:\n{stdout}"));
            if answered != notified {
                crossed.push(format!("round {round}: {what} publish answered by {answered}, notified by {notified}"));
            }
        }
    }
    eprintln!("cross-node publishes: {crossed:#?}");
    // Nodes linked by Redis: an HTTP publish reached a WebSocket subscriber on the other node.
    assert!(
        crossed.iter().any(|c| c.contains(": http")),
        "no HTTP publish through the gateway was seen reaching the other node: {crossed:?}"
    );
    // The SDK's WebSocket sessions really went through the gateway, one on each node.
    let total = gw.core.frontend.tunnels_total.load(Ordering::Relaxed);
    assert!(total >= 2, "the SDK checks passed with {total} WebSocket tunnel(s) through the gateway");
    let snap = gw.core.snapshot_full();
    for name in ["cluster_kuzzle_1", "cluster_kuzzle_2"] {
        let t = snap.node(name).expect("node").counters.tunnels_total.load(Ordering::Relaxed);
        assert!(t >= 1, "no SDK session reached {name}");
    }
    gw.shutdown().await;
}
