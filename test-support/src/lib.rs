//! One test kit for kuzzle-gateway's and kuzzle-node-sim's integration tests: real processes, real sockets, bounded waits.
//!
//! Layout (every item is re-exported here, so a suite's `common` module does
//! `pub use kuzzle_test_support::*;` and adds only its in-process glue):
//! - `wait`: the shared bounds `T`, `WAIT` and `READY_TIMEOUT`, `eventually` (`eventually_every`), and
//!   `one_at_a_time` for the tests whose timings are the point;
//! - `scratch`: unique scratch directories;
//! - `process`: `need` (a missing tool fails the test, naming it), built binaries (`bin`), `KillOnDrop`,
//!   `signal`, `wait_exit` (the one wait for an exit), `blocking`, `rss_kib`;
//! - `gateway`: the `kuzzle-gateway` binary as a process (`Gateway`): a config, ready on its
//!   "serving" line, its addresses, its output lines, signals, its exit;
//! - `sim`: `kuzzle-node-sim` as a process (`Sim`), and what a node reports it saw (`seen`, `sim_path`);
//! - `redis_server`: `RedisServer`, a 3-master `RedisCluster`, a plain `Subscriber`;
//! - `tcp`: `free_port`, raw exchanges, `unread_bytes`, a counting `Relay`, a `fake_node` (any script), `read_request` and `message_len`, a `rude_node`, a `CannedNode`;
//! - `http_client`: `Client`, `Resp`, `request`/`get`/`post`, `ChanBody`, source-bound `conn_from`,
//!   `ops_auth`/`basic_auth`;
//! - `websocket`: `ws`, `ws_next_json`, `ws_wait`, `ws_call`;
//! - `kuzzle_api`: Kuzzle requests, subscribe/publish/notification helpers, error envelopes;
//! - `load`: HTTP load clients (`Load`: a connection per request or kept alive), WebSocket echo
//!   clients (`WsLoad`) and official-SDK `Subscribers`;
//! - `kuzzle_real`: real Kuzzle 2 nodes (`kuzzle-real/`, npm kuzzle@2.56.0) as a `KuzzleCluster`, with
//!   its own Redis and Elasticsearch stand-in, nodes on 127.0.0.X, stop/kill/restart per node.
//!
//! The kit depends on neither kuzzle-gateway nor the kuzzle-node-sim library (nodes run as
//! processes), so both packages can take it as a dev-dependency without a dependency loop.
//! Only 127.0.0.0/8 addresses are used; a missing tool or binary fails the test with its name.
#![forbid(unsafe_code)]

mod gateway;
mod http_client;
mod kuzzle_api;
mod kuzzle_real;
mod load;
mod process;
mod redis_server;
mod scratch;
mod sim;
mod tcp;
mod tls;
mod wait;
mod websocket;

pub use gateway::*;
pub use http_client::*;
pub use kuzzle_api::*;
pub use kuzzle_real::*;
pub use load::*;
pub use process::*;
pub use redis_server::*;
pub use scratch::*;
pub use sim::*;
pub use tcp::*;
pub use tls::*;
pub use wait::*;
pub use websocket::*;
