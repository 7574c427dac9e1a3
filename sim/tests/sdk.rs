//! The official Kuzzle SDK (npm kuzzle-sdk v7), unchanged, against the sim: tests/sdk/sdk-check.js.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use kuzzle_node_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_works_unchanged() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    need("node");
    assert!(
        dir.join("node_modules/kuzzle-sdk").is_dir(),
        "this test needs the Kuzzle SDK installed: run `npm install` in {} (scripts/test does it)",
        dir.display()
    );
    let s = sim(SimConfig::new("sdk_node")).await;
    let (host, port) = (s.addr.ip().to_string(), s.addr.port().to_string());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("node").arg("sdk-check.js").arg(&host).arg(&port).current_dir(&dir).output(),
    )
    .await
    .expect("sdk-check.js finished within 30 s")
    .expect("run node sdk-check.js");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk-check.js failed ({}):\n{text}", out.status);
    assert!(text.contains("sdk-check OK"), "{text}");
    s.shutdown().await;
}
