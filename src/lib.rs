//! kuzzle-gateway: a cluster gateway for Kuzzle (HTTP + WebSocket balancing, per-node prefixes,
//! health checks, hot reload, Redis membership, ops stats, TLS).
//!
//! # Layout (ARCHITECTURE.md tells it module by module)
//! Two planes around a core that depends on nothing above it, wired by one composition root.
//!
//! - [`core`]: nodes, their counters and health state, the immutable routing snapshot, and the
//!   pure registry that turns a batch of changes into the next snapshot.
//! - [`data`]: the data plane (workers, accept loops, routing, balancing, proxying, tunnels, edge).
//! - [`control`]: the control plane (configuration, reload, listeners, upgrade, health checks,
//!   DNS, Redis membership, the fleet, TLS material).
//! - [`ops`]: the ops listener (7575): `/hastats`, CSV, JSON, `/metrics`, node states, reload.
//! - [`app`]: the composition root: the only place that starts things; process start and binary
//!   upgrade both go through it. [`demo`]: the gateway in front of simulated nodes.
#![forbid(unsafe_code)]

pub mod app;
pub mod control;
pub mod core;
pub mod data;
pub mod demo;
pub mod ops;
pub mod util;
