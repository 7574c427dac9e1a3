//! kuzzle-gateway: a cluster gateway for Kuzzle (HTTP + WebSocket balancing, per-node prefixes,
//! health checks, hot reload, Redis membership, ops stats, TLS).
//!
//! # Layout
//! Two planes. The **data plane** serves clients and reads one immutable [`state::Snapshot`] per
//! request from an `ArcSwap`; health and counters are atomics inside shared [`backend::Backend`]s.
//! The **control plane** (config reload, health checker, Redis membership, ops listener) is the
//! only writer: it builds a new snapshot off the request path, reusing surviving backends, and
//! swaps it once.
//!
//! Data plane: [`server`] (accept loops), [`proxy`] (one request), [`route`] (prefix rule),
//! [`balance`] (algorithms), [`backend`] (node, pool), [`body`] (counting bodies), [`tunnel`]
//! (WebSocket tunnels), [`stats`] (counters).
//! Control plane: [`config`], [`state`] (registry + snapshot), [`control`] (reload, pruning),
//! [`health`], [`cluster`] (Redis), [`ops`] (7575), [`hastats`], [`metrics`], [`tls`].
#![forbid(unsafe_code)]

pub mod backend;
pub mod balance;
pub mod body;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod hastats;
pub mod health;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod route;
pub mod run;
pub mod server;
pub mod state;
pub mod stats;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod util;
pub mod watch;
