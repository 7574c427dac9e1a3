//! kuzzle-gateway: a cluster gateway for Kuzzle (HTTP + WebSocket balancing, per-node prefixes,
//! health checks, hot reload, Redis membership, ops stats, TLS).
//!
//! # Layout
//! Two planes around a core that depends on nothing above it, wired by one composition root.
//!
//! - [`app`]: the composition root. `start(config, listeners)` / `run(config, listeners,
//!   shutdown)` build everything below and hand each part only the handles it needs; process start
//!   and binary upgrade both go through it.
//! - [`core`]: nodes ([`core::backend`], pools, counters, health state and the pure rise/fall
//!   machine), the immutable routing [`core::snapshot`], and the pure [`core::registry`] that turns
//!   a batch of [`core::registry::Change`]s into the next snapshot. [`core::Core`] publishes
//!   snapshots (one swap per batch); [`core::Lifecycle`] holds the stop tokens and task trackers.
//! - Data plane (reads one snapshot per request): [`serve`] (accept loops, client connections,
//!   [`send_timeout`] cutting clients that stop reading),
//!   [`proxy`] (one request, typed errors, header rules), [`route`] (prefix rule), [`balance`]
//!   (algorithms), [`tunnel`] (WebSocket tunnels), [`edge`] (PROXY protocol, per-client limits,
//!   access log).
//! - Control plane (writes through `Core::apply`, settings by a `watch`): [`config`], [`reload`]
//!   (the reload task; triggers send it a message), [`watch`] (file watcher), [`listeners`]
//!   (bind, re-bind), [`upgrade`] (socket hand-over) with [`state`] (what the old process hands
//!   the new one besides the sockets), [`ready`] (when a starting gateway can route), [`tls`] (certificates by SNI, renewed on
//!   disk; its [`tls::h2`] serves HTTP/2 clients on the data plane), [`drain`] (pruning, drain timeout),
//!   [`resolve`] (host names of `[[node]]`s), [`fds`] (open-files limit, connection cap).
//! - [`health`]: one checker task per node; [`cluster`]: Redis membership producing changes;
//!   [`fleet`]: several gateways as one through Redis (operator states, fleet view, rebalancing
//!   draws on [`core::shed`]).
//! - Ops: [`ops`] (the 7575 listener), [`hastats`] (page, CSV, JSON), [`metrics`] (Prometheus),
//!   [`envelope`] (Kuzzle's JSON envelope for the gateway's own answers).
//! - [`demo`] runs the gateway in front of simulated nodes (separate `kuzzle-node-sim` processes).
#![forbid(unsafe_code)]

pub mod app;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod core;
pub mod demo;
pub mod drain;
pub mod edge;
pub mod envelope;
pub mod fds;
pub mod fleet;
pub mod hastats;
pub mod health;
pub mod listeners;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod ready;
pub mod reload;
pub mod resolve;
pub mod route;
pub mod send_timeout;
pub mod serve;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod util;
pub mod watch;
pub mod workers;
