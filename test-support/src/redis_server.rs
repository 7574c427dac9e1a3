//! Real `redis-server` processes on free ports: one server, or a 3-master Redis Cluster, plus a plain subscriber.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::process::need;
use crate::scratch::scratch_dir;
use crate::tcp::free_port;
use crate::wait::{READY_TIMEOUT, T};

/// A real `redis-server` on 127.0.0.1, without persistence, in its own scratch directory;
/// killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), extra)
    }

    /// On a given port: a restart keeping the port, or a port a node was told to use before
    /// anything listened there.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        need("redis-server");
        let mut r = RedisServer {
            port,
            dir: scratch_dir("redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.spawn();
        r
    }

    /// Spawn the process and wait until it answers PING (killed on drop if it never does).
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for _ in 0..1000 {
            if pings(self.port) {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited early: {st}", self.port);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within {READY_TIMEOUT:?}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL the server (a crash: its data is lost, it has no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port with the same arguments, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("test redis connection")
    }

    /// A plain subscriber (as a gateway would be) to `channels`.
    pub async fn subscriber(&self, channels: &[&str]) -> Subscriber {
        let mut ps = redis::Client::open(self.url()).expect("redis url").get_async_pubsub().await.expect("pubsub");
        ps.subscribe(channels).await.expect("subscribe");
        let (tx, rx) = mpsc::unbounded_channel();
        // Ends when the connection or the Subscriber (abort on drop) goes away.
        let task = tokio::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                let payload: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap_or(Value::Null);
                if tx.send((m.get_channel_name().to_owned(), payload)).is_err() {
                    break;
                }
            }
        });
        Subscriber { rx, task }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis answers PING on `port` (raw RESP, no client library involved).
fn pings(port: u16) -> bool {
    let Ok(mut s) = StdStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Messages (channel, parsed payload; `null` if not JSON) seen by a plain Redis subscriber.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// The next message satisfying `f`, within `T`.
    pub async fn wait(&mut self, what: &str, f: impl Fn(&str, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((ch, v))) if f(&ch, &v) => return v,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{what}: subscriber closed"),
                Err(_) => panic!("{what}: not seen within {T:?}"),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A 3-master Redis Cluster (no replicas) on free ports; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        need("redis-server");
        need("redis-cli");
        // A cluster node also listens on port + 10000 (the cluster bus): that one must be free too.
        let mut ports = Vec::new();
        for _ in 0..200 {
            let p = free_port();
            if p < 55000 && !ports.contains(&p) && StdListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                ports.push(p);
                if ports.len() == 3 {
                    break;
                }
            }
        }
        assert_eq!(ports.len(), 3, "could not find 3 free port pairs (port, port + 10000) for the Redis Cluster");
        let nodes: Vec<RedisServer> = ports
            .iter()
            .map(|p| {
                let conf = format!("nodes-{p}.conf");
                RedisServer::start_on(
                    *p,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "2000"],
                )
            })
            .collect();
        // From here a panic drops `cluster`, which kills its nodes.
        let cluster = RedisCluster { nodes };
        let addrs: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        for _ in 0..400 {
            let ok = cluster.nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return cluster;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Redis Cluster not ok within {READY_TIMEOUT:?}");
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// One URL per master, as a cluster client's seed list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// The seed list as one comma-separated string, as `--redis-cluster` takes it.
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }
}
