//! Real Kuzzle 2 nodes (npm `kuzzle@2.56.0`, from `test-support/kuzzle-real`) as a local cluster:
//! its own `redis-server`, its own in-memory Elasticsearch stand-in, one process group per node.
//!
//! Node `i` (0-based) runs on its own loopback address `127.0.0.X`; all nodes of a cluster share
//! one HTTP port and two ZeroMQ ports, chosen free per cluster, so clusters of one test process or
//! of parallel test binaries do not collide (addresses are also spread by process id). Node logs
//! go to a scratch directory; when the test panics, `Drop` prints its path and the last lines of
//! each node's log and keeps it.
//!
//! Everything is synchronous (blocking waits, bounded): call it from a plain or async test alike.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use serde_json::Value;

use crate::process::{need, wait_exit, wait_line};
use crate::redis_server::RedisServer;
use crate::scratch::scratch_dir;
use crate::tcp::free_port;

/// Bound of a node becoming ready (`/_ready` 200 and its ID card in Redis). A node needs 3.5-9 s
/// on 2 busy cores; several start in parallel.
pub const KUZZLE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound of a node exiting after SIGTERM (it needs ~1.5 s: 0.1 s of shutdown, ~1 s of log flush).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the ID cards are listed (`{cluster/node}/<id>` keys) in Kuzzle's internal Redis.
pub const ID_CARDS_INDEX: &str = "{cluster/node}/id-cards-index";

/// `test-support/kuzzle-real`: the npm project, its scripts and the stand-ins.
pub fn kuzzle_real_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kuzzle-real")
}

/// Run `install.sh` once per test process (npm ci when needed, the glibc shim); panics with the
/// install's own message when it fails (a registry that cannot be reached included: never skips).
pub fn install_kuzzle() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        need("node");
        need("npm");
        let script = kuzzle_real_dir().join("install.sh");
        let started = Instant::now();
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(format!("{} failed ({}):\n{text}", script.display(), out.status));
        }
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("kuzzle-real installed in {:.0?}:\n{text}", started.elapsed());
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("the real-Kuzzle tests need kuzzle@2.56.0 installed: {e}");
    }
}

/// One `127.0.0.X` per node, never 127.0.0.1, spread by process id so that parallel test binaries
/// (and clusters of one binary) start from different addresses.
fn next_ip() -> Ipv4Addr {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let x = 2 + (std::process::id().wrapping_mul(37).wrapping_add(n) % 253) as u8;
    Ipv4Addr::new(127, 0, 0, x)
}

fn bindable(ip: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(ip, port)).is_ok()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A child started in its own process group (`process_group(0)`: pgid = its pid).
struct Group {
    child: Child,
    /// False once the group is known dead: its id may then be reused and is never signalled again.
    alive: bool,
}

impl Group {
    fn pid(&self) -> Pid {
        Pid::from_child(&self.child)
    }

    /// SIGKILL the whole group (the node and its IDCardRenewer) and reap the leader. SIGKILL
    /// cannot be caught: the members are dead at once (their sockets closed), even if the
    /// reparented child stays a zombie until init reaps it (~2 s here).
    fn kill(&mut self) {
        if !self.alive {
            return;
        }
        let _ = kill_process_group(self.pid(), Signal::KILL);
        let _ = self.child.wait();
        self.alive = false;
    }

    /// After the leader exited: wait (at most `limit`) until no live process is left in the group
    /// (the IDCardRenewer exits when its parent does), then SIGKILL whatever is left.
    fn wait_empty(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for _ in 0..(limit.as_millis() / 20 + 2) {
            if !group_running(self.child.id()) {
                self.alive = false;
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// Whether a process that is not a zombie has process group `pgid` (Linux: `/proc/<pid>/stat`).
fn group_running(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        // `pid (comm) state ppid pgrp ...`: comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else { return false };
        let f: Vec<&str> = rest.split_whitespace().take(3).collect();
        f.len() == 3 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X"
    })
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

struct KNode {
    ip: Ipv4Addr,
    log: PathBuf,
    proc: Option<Group>,
    /// When the current process was spawned (ms since the epoch): its ID card is born after.
    spawned_ms: u64,
}

/// A cluster of real Kuzzle 2 nodes with their Redis and Elasticsearch stand-in; stops exactly what
/// it started on drop (process groups), nothing else.
pub struct KuzzleCluster {
    dir: PathBuf,
    redis: RedisServer,
    es: Group,
    es_addr: SocketAddr,
    http_port: u16,
    command_port: u16,
    sync_port: u16,
    nodes: Vec<KNode>,
}

impl KuzzleCluster {
    /// Start `n` nodes in parallel and wait (at most `KUZZLE_READY_TIMEOUT` for them all) until
    /// each answers `GET /_ready` 200 and has its ID card in Redis.
    pub fn start(n: usize) -> KuzzleCluster {
        install_kuzzle();
        need("redis-server");
        let dir = scratch_dir("kuzzle-real");
        let redis = RedisServer::start();
        let real = kuzzle_real_dir();
        let mut es_child = Command::new("node")
            .arg(real.join("es-stub.js"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("es-stub.err")).expect("es-stub.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Elasticsearch stand-in (node es-stub.js): {e}"));
        let port = wait_line(&mut es_child, crate::wait::READY_TIMEOUT, "es-stub.js", |l| {
            l.strip_prefix("ES-STUB READY ").map(|p| p.trim().to_string())
        });
        let es = Group { child: es_child, alive: true };
        let es_addr = SocketAddr::from(([127, 0, 0, 1], port.parse().expect("es-stub printed a bad port")));

        let ips: Vec<Ipv4Addr> = (0..n).map(|_| next_ip()).collect();
        let (http_port, command_port, sync_port) = free_ports(&ips);
        let mut c = KuzzleCluster { dir, redis, es, es_addr, http_port, command_port, sync_port, nodes: Vec::new() };
        for ip in ips {
            let i = c.nodes.len();
            c.nodes.push(KNode { ip, log: c.dir.join(format!("node-{i}.log")), proc: None, spawned_ms: 0 });
            c.spawn(i);
        }
        let deadline = Instant::now() + KUZZLE_READY_TIMEOUT;
        for i in 0..n {
            c.wait_ready(i, deadline);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let real = kuzzle_real_dir();
        let node = &mut self.nodes[i];
        assert!(node.proc.is_none(), "node {i} is already running");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", node.log.display()));
        let _ = writeln!(log, "==== kuzzle-real: starting node {i} on {}:{} ====", node.ip, self.http_port);
        let err = log.try_clone().expect("log file handle");
        node.spawned_ms = now_ms();
        let child = Command::new(real.join("run-node.sh"))
            .args(["--ip", &node.ip.to_string(), "--port", &self.http_port.to_string()])
            .args(["--redis", &format!("127.0.0.1:{}", self.redis.port)])
            .args(["--es", &format!("http://{}", self.es_addr)])
            .args(["--command-port", &self.command_port.to_string(), "--sync-port", &self.sync_port.to_string()])
            // rc reads .kuzzlerc files from the working directory up: none in the scratch dir.
            .current_dir(&self.dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a Kuzzle node (run-node.sh): {e}"));
        node.proc = Some(Group { child, alive: true });
    }

    /// Wait until node `i` answers `/_ready` 200 and its own (new) ID card is in Redis; panics
    /// with the end of its log at `deadline`.
    fn wait_ready(&mut self, i: usize, deadline: Instant) {
        let mut ready = false;
        for _ in 0..(KUZZLE_READY_TIMEOUT.as_millis() / 50 + 2) {
            if let Some(g) = self.nodes[i].proc.as_mut() {
                if let Ok(Some(st)) = g.child.try_wait() {
                    panic!(
                        "Kuzzle node {i} ({}) exited while starting: {st}\n{}",
                        self.node_addr(i),
                        self.log_tail(i, 30)
                    );
                }
            }
            ready = ready || self.is_ready(i);
            if ready && self.id_card(i).is_some_and(|c| c["birthdate"].as_u64() >= Some(self.nodes[i].spawned_ms)) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "Kuzzle node {i} ({}) not ready within {KUZZLE_READY_TIMEOUT:?} (/_ready 200: {ready}; ID card: {:?})\n{}",
            self.node_addr(i),
            self.id_card(i),
            self.log_tail(i, 30)
        );
    }

    /// How many nodes the cluster has had (stopped ones included): valid indexes are `0..len()`.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `redis://127.0.0.1:PORT/0`: Kuzzle's internal cache and memory storage (ID cards).
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn redis(&self) -> &RedisServer {
        &self.redis
    }

    /// The HTTP and WebSocket port all nodes share.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Node `i`'s HTTP/WebSocket address (`127.0.0.X:port`; its ID card's `ip` is `127.0.0.X`).
    pub fn node_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.nodes[i].ip, self.http_port))
    }

    /// The Elasticsearch stand-in.
    pub fn es_addr(&self) -> SocketAddr {
        self.es_addr
    }

    /// The stand-in's call counts: `{"calls": {"GET /_cluster/health": n, ...}, "total": n, "unknown": n}`.
    pub fn es_calls(&self) -> Value {
        let (status, _, body) = http_get(self.es_addr, "/_stub/stats", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("GET /_stub/stats on the ES stand-in: {e}"));
        assert_eq!(status, 200, "GET /_stub/stats: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("/_stub/stats is JSON")
    }

    /// The scratch directory (node logs `node-<i>.log`, `es-stub.err`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// The main process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.as_ref().map(|g| g.child.id())
    }

    /// Every ID card in Redis (`{cluster/node}/id-cards-index` members whose key still exists).
    pub fn id_cards(&self) -> Vec<Value> {
        let mut conn = redis::Client::open(self.redis.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("redis connection to {}: {e}", self.redis.url()));
        let keys: Vec<String> =
            redis::cmd("SMEMBERS").arg(ID_CARDS_INDEX).query(&mut conn).expect("SMEMBERS id-cards-index");
        keys.iter()
            .filter_map(|k| redis::cmd("GET").arg(k).query::<Option<String>>(&mut conn).expect("GET id card"))
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect()
    }

    /// Node `i`'s ID card (`{"birthdate","id","ip","topology"}`), if one with its IP is in Redis.
    pub fn id_card(&self, i: usize) -> Option<Value> {
        let ip = self.nodes[i].ip.to_string();
        self.id_cards().into_iter().filter(|c| c["ip"] == ip.as_str()).max_by_key(|c| c["birthdate"].as_u64())
    }

    /// Each node's id from its ID card (`knode-...`, new at every start); `None` for a node
    /// without a card.
    pub fn node_ids(&self) -> Vec<Option<String>> {
        let cards = self.id_cards();
        self.nodes
            .iter()
            .map(|n| {
                let ip = n.ip.to_string();
                cards
                    .iter()
                    .filter(|c| c["ip"] == ip.as_str())
                    .max_by_key(|c| c["birthdate"].as_u64())
                    .and_then(|c| c["id"].as_str().map(str::to_string))
            })
            .collect()
    }

    /// Whether node `i` answers `GET /_ready` with 200 now.
    pub fn is_ready(&self, i: usize) -> bool {
        matches!(http_get(self.node_addr(i), "/_ready", Duration::from_secs(2)), Ok((200, _, _)))
    }

    /// SIGTERM to node `i`'s main process (Kuzzle's graceful shutdown); returns at once.
    pub fn stop_node(&self, i: usize) {
        let g = self.nodes[i].proc.as_ref().unwrap_or_else(|| panic!("node {i} is not running"));
        kill_process(g.pid(), Signal::TERM).unwrap_or_else(|e| panic!("SIGTERM to node {i}: {e}"));
    }

    /// Wait (at most 30 s) for node `i`'s main process to exit, then for its process group to be
    /// empty (the IDCardRenewer child exits when its parent does); returns the main exit status.
    pub fn wait_exit(&mut self, i: usize) -> ExitStatus {
        let mut g = self.nodes[i].proc.take().unwrap_or_else(|| panic!("node {i} is not running"));
        let Some(status) = wait_exit(&mut g.child, EXIT_TIMEOUT) else {
            g.kill();
            panic!("Kuzzle node {i} did not exit within {EXIT_TIMEOUT:?}\n{}", self.log_tail(i, 20));
        };
        g.wait_empty(Duration::from_secs(10));
        status
    }

    /// SIGKILL node `i`'s process group: the node and its IDCardRenewer (a crash of the host, as
    /// far as Redis can tell: the ID card is left to expire).
    pub fn kill_node(&mut self, i: usize) {
        let mut g = self.nodes[i].proc.take().unwrap_or_else(|| panic!("node {i} is not running"));
        g.kill();
    }

    /// Start node `i` again on the same address (a new node id); returns once it is ready.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].proc.is_none(), "node {i} is running: stop_node + wait_exit or kill_node first");
        assert!(
            bindable(self.nodes[i].ip, self.http_port),
            "{}: the address is still taken (the old process is not gone)",
            self.node_addr(i)
        );
        self.spawn(i);
        self.wait_ready(i, Instant::now() + KUZZLE_READY_TIMEOUT);
    }

    /// A new node on a new address; returns its index once it is ready.
    pub fn add_node(&mut self) -> usize {
        let ip = (0..253)
            .map(|_| next_ip())
            .find(|ip| {
                !self.nodes.iter().any(|n| n.ip == *ip)
                    && [self.http_port, self.command_port, self.sync_port].iter().all(|p| bindable(*ip, *p))
            })
            .expect("no free 127.0.0.X address for one more node");
        let i = self.nodes.len();
        self.nodes.push(KNode { ip, log: self.dir.join(format!("node-{i}.log")), proc: None, spawned_ms: 0 });
        self.spawn(i);
        self.wait_ready(i, Instant::now() + KUZZLE_READY_TIMEOUT);
        i
    }

    /// The last `n` lines of node `i`'s log (each cut to 400 characters), for panic messages.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| match l.char_indices().nth(400) {
                Some((cut, _)) => format!("{}...", &l[..cut]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("---- last lines of {} ----\n{tail}", self.nodes[i].log.display())
    }
}

impl Drop for KuzzleCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut g) = n.proc.take() {
                g.kill();
            }
        }
        self.es.kill();
        if std::thread::panicking() {
            let tails: Vec<String> = (0..self.nodes.len()).map(|i| self.log_tail(i, 15)).collect();
            eprintln!(
                "kuzzle-real: the test failed; logs kept in {}\n{}\n---- {}: ----\n{}",
                self.dir.display(),
                tails.join("\n"),
                self.dir.join("es-stub.err").display(),
                std::fs::read_to_string(self.dir.join("es-stub.err")).unwrap_or_default()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // `self.redis` drops after this: killed, its directory removed.
    }
}

/// Three distinct ports (HTTP, ZeroMQ command, ZeroMQ sync) free on every address of `ips`.
fn free_ports(ips: &[Ipv4Addr]) -> (u16, u16, u16) {
    let mut ports = Vec::new();
    for _ in 0..200 {
        let p = free_port();
        if !ports.contains(&p) && ips.iter().all(|ip| bindable(*ip, p)) {
            ports.push(p);
            if ports.len() == 3 {
                return (ports[0], ports[1], ports[2]);
            }
        }
    }
    panic!("could not find 3 ports free on all of {ips:?}");
}

/// A blocking `GET path` on a new connection: status, head, body. It sends `Connection: close`:
/// Kuzzle answers `Connection: close` always, but closes the connection only when asked to.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        std::io::Error::other(format!("no complete response head: {:?}", String::from_utf8_lossy(&buf)))
    })?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    // Kuzzle's status line has no reason phrase (`HTTP/1.1 200`).
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok((status, head, buf[end + 4..].to_vec()))
}
