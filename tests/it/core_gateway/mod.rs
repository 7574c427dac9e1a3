//! Integration tests of the core gateway (data plane): balancing, prefixes, headers, WebSockets,
//! streamed and chunked bodies, connection pooling, failures and their error envelopes, malformed
//! input, `--check` and SIGTERM on the real binary. Simulated nodes run as real processes; the
//! gateway runs in-process on ephemeral ports unless the test is about the binary itself.

use crate::common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use kuzzle_gateway::core::backend::AdminState;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

mod binary;
mod bodies;
mod failures;
mod headers;
mod pool;
mod routing;
mod websocket;
