//! The data plane: everything a client's bytes go through, reading one routing snapshot per request.
//!
//! - [`workers`]: one current-thread runtime per worker thread, each accepting on its own handle
//!   of every client listener; [`serve`] runs the accept loops and one client connection
//!   (HTTP/1.1, through hyper), [`lane`] the fast lane of plain HTTP/1.1 connections, [`h2`] one HTTP/2 client connection, [`send_timeout`] cuts clients that stop reading.
//! - [`edge`]: what happens around the proxying (PROXY protocol, per-client limits, access log).
//! - [`route`] (the `/<node>/...` prefix rule), [`balance`] (the algorithms), [`proxy`] (one
//!   request: pick, forward, retry, re-send refusals, typed errors), [`tunnel`] (WebSocket tunnels),
//!   [`envelope`] (Kuzzle's JSON envelope for the answers the gateway writes itself).

pub mod balance;
pub mod edge;
pub mod envelope;
pub mod h2;
pub mod lane;
pub mod proxy;
pub mod route;
pub mod send_timeout;
pub mod serve;
pub mod tunnel;
pub mod workers;
