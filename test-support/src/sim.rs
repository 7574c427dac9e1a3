//! Simulated Kuzzle nodes as real `kuzzle-node-sim` processes, and reading what a node reports it saw.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::http_client::Resp;
use crate::process::{bin, signal, wait_exit, wait_line, Signal};
use crate::wait::READY_TIMEOUT;

/// A simulated Kuzzle node running as its own process (`kuzzle-node-sim`); killed on drop.
///
/// Like real Kuzzle 2, a node closes every HTTP connection after one response
/// (`Connection: close`); a test about a client's connection pooling starts its nodes with
/// [`SimBuilder::keep_alive`].
pub struct Sim {
    /// The name the node runs under (its Kuzzle 2 id; `NAME-NNNNN` with `--fresh-id`).
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
}

/// How to start a [`Sim`]: `Sim::builder("n1").keep_alive().args(&["--kuzzle2"]).start()`.
#[must_use]
pub struct SimBuilder {
    name: String,
    listen: String,
    args: Vec<String>,
}

impl SimBuilder {
    /// Listen address (default `127.0.0.1:0`; e.g. `127.0.0.2:PORT` for Kuzzle 2 nodes sharing
    /// a port).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_string();
        self
    }

    /// `--keep-alive`: keep HTTP connections open between requests (not what Kuzzle 2 does; for
    /// tests about pooling and for benchmarks).
    pub fn keep_alive(self) -> Self {
        self.arg("--keep-alive")
    }

    /// `--fresh-id`: the node runs as `NAME-NNNNN`, a new id at every start, as real Kuzzle 2
    /// (a restarted node is a new node, with a new ID card); [`Sim::name`] is that id.
    pub fn fresh_id(self) -> Self {
        self.arg("--fresh-id")
    }

    /// `--shutdown-window`: how long a SIGTERM'd node answers 503 before it exits (default 1 s).
    pub fn shutdown_window(self, window: Duration) -> Self {
        self.args(&["--shutdown-window", &format!("{}ms", window.as_millis())])
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Start `kuzzle-node-sim --listen ADDR --name NAME ARGS...` and wait for its address.
    pub fn start(self) -> Sim {
        let name = self.name;
        let mut child = Command::new(bin("kuzzle-node-sim"))
            .args(["--listen", &self.listen, "--name", &name])
            .args(&self.args)
            .env("RUST_LOG", std::env::var("SIM_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kuzzle-node-sim: {e}"));
        // "kuzzle-node-sim NAME listening on ADDR": the name the node runs under (with
        // --fresh-id, not the one asked for) and its address.
        let line = wait_line(&mut child, READY_TIMEOUT, &format!("kuzzle-node-sim {name}"), |l| {
            l.strip_prefix("kuzzle-node-sim ").filter(|rest| rest.contains(" listening on ")).map(str::to_string)
        });
        let (name, addr) = line.split_once(" listening on ").unwrap_or_else(|| panic!("bad ready line {line:?}"));
        let addr = addr.trim().parse().unwrap_or_else(|_| panic!("sim printed a bad address {addr:?}"));
        Sim { name: name.to_string(), addr, child: Some(child) }
    }
}

impl Sim {
    pub fn builder(name: &str) -> SimBuilder {
        SimBuilder { name: name.to_string(), listen: "127.0.0.1:0".to_string(), args: Vec::new() }
    }

    /// Start `kuzzle-node-sim --listen 127.0.0.1:0 --name NAME ARGS...` and wait for its address.
    pub fn start(name: &str, args: &[&str]) -> Sim {
        Sim::builder(name).args(args).start()
    }

    /// Same, on a given listen address (e.g. `127.0.0.2:PORT` for Kuzzle 2 nodes sharing a port).
    pub fn start_on(listen: &str, name: &str, args: &[&str]) -> Sim {
        Sim::builder(name).listen(listen).args(args).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILL: no goodbye of any kind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (at most 10 s) for a clean exit: the node answers 503 for its shutdown
    /// window (1 s unless `--shutdown-window` says otherwise), then exits.
    pub fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), Signal::TERM);
            if wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
                panic!("kuzzle-node-sim {} did not exit within 10 s of SIGTERM", self.name);
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `PREFIX1` .. `PREFIXn`: names for a row of nodes.
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// What the node saw, from the sim's `ANY /_sim/request`: (method, path, headers).
pub fn seen(r: &Resp) -> (String, String, Value) {
    assert_eq!(r.status, 200, "/_sim/request failed: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let inner = if v["result"].is_object() && v["result"].get("path").is_some() { v["result"].clone() } else { v };
    let method = inner["method"].as_str().unwrap_or_else(|| panic!("no method in {inner}")).to_string();
    let path = inner["path"].as_str().unwrap_or_else(|| panic!("no path in {inner}")).to_string();
    (method, path, inner["headers"].clone())
}

/// A header the node saw (names are lowercase; several values may come as an array).
pub fn seen_header(h: &Value, name: &str) -> Option<String> {
    match &h[name] {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")),
        _ => None,
    }
}

/// The path the node saw, from the `x-sim-path` header every sim response carries.
pub fn sim_path(r: &Resp) -> &str {
    r.header("x-sim-path").unwrap_or_else(|| panic!("no x-sim-path header in {:?}", r.headers))
}
