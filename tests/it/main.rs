//! kuzzle-gateway's integration tests, one test binary (`cargo test --test it`): one link for
//! them all instead of one per file. A module per topic; `cargo test --test it reload::` runs one.
//! Simulated nodes, Redis and the gateway binary run as processes (the shared kit,
//! `kuzzle-test-support`); most tests run the gateway in-process on ephemeral ports.
//!
//! The tests run side by side, two at a time by default, in one process: none changes the
//! process's environment, working directory or limits (a test that needs a small `ulimit -n`
//! runs the gateway binary under it). The tests whose timings are the point run one at a time
//! in their own binary, tests/scenarios.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fuzz_checks/mod.rs"]
mod fuzz_checks;

mod cli;
mod client_faults;
mod cluster;
mod compose;
mod core_gateway;
mod corners;
mod demo;
mod deploy;
mod edge;
mod fd_limits;
mod fuzz_replay;
mod head_memory;
mod health;
mod hostnames;
mod lane;
mod ops;
mod proxy_configs;
mod ready;
mod reload;
mod route_props;
mod sdk;
mod strict_http;
mod tls;
mod trust;
