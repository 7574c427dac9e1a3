//! The scenarios whose timings are the point, one at a time (`cargo test --test scenarios`): a
//! fleet of gateways through Redis, rolling restarts, crashes and scale-outs under load, real
//! Kuzzle 2 clusters, network partitions timed against the health-check bounds. Each test holds
//! the kit's `one_at_a_time()` for its whole run, so no other scenario loads the machine beside
//! it; they have their own binary so that none of the main suite's tests (tests/it) does either
//! (cargo runs test binaries one after the other).

#[path = "../common/mod.rs"]
mod common;

mod fleet;
mod kuzzle_real;
mod partition;
mod restarts;
