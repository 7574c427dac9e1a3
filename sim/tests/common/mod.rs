//! The sim suite's glue: a node in-process on an ephemeral port; everything else is the shared kit.
#![allow(dead_code)]

use kuzzle_node_sim::{SimConfig, SimHandle};
pub use kuzzle_test_support::*;

/// Start a sim in-process on 127.0.0.1:0.
pub async fn sim(cfg: SimConfig) -> SimHandle {
    let name = cfg.name.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    kuzzle_node_sim::start(cfg, l).await.unwrap_or_else(|e| panic!("sim {name} did not start: {e}"))
}
