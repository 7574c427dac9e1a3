//! The control plane: everything that decides what the data plane sees, writing through
//! `Core::apply` (one snapshot swap per batch of changes); nothing here runs on a request's path.
//!
//! - Configuration: [`config`] (schema, the table of keys, validation), [`reload`] (the one reload
//!   task), [`config_watch`] (the file watcher), [`listeners`] (bind, re-bind), [`fds`].
//! - Process hand-over: [`upgrade`] (sockets), [`handover`] (the state that goes with them),
//!   [`ready`] (when a starting gateway can route).
//! - Nodes: [`checks`] (one health-checker task per node), [`resolve`] (host names of `[[node]]`s),
//!   [`cluster`] (membership from Redis), [`drain`] (pruning drained nodes), [`fleet`] (several
//!   gateways as one through Redis).
//! - [`tls`]: certificates by SNI, renewed on disk, TLS to nodes, `--check` of the pairs.

pub mod checks;
pub mod cluster;
pub mod config;
pub mod config_watch;
pub mod drain;
pub mod fds;
pub mod fleet;
pub mod handover;
pub mod listeners;
pub mod ready;
pub mod reload;
pub mod resolve;
pub mod tls;
pub mod upgrade;
