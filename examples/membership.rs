//! Benchmark tool (not part of the gateway): how fast Redis membership reaches the data plane.
//!
//! For each of N joins it starts a plain `kuzzle-node-sim`, plays the node's Redis side itself
//! (so the clock starts at the exact `PUBLISH`), and measures:
//! - join: from `PUBLISH cluster:ready` to the first request that node serves through the gateway
//!   (a client polls `/<name>/_now` about every millisecond);
//! - leave: from `PUBLISH cluster:remove` to the send time of the last request the gateway still
//!   balanced to it (4 keep-alive clients send `/_now` continuously; 0 if none was sent after).
//!
//! Runs against one Redis and a 3-master Redis Cluster (redis-server and redis-cli needed), the
//! gateway in-process with production defaults for `[cluster]` (poll 1 s, timeout 10 s).
//!
//! ```text
//! cargo build --release --bin kuzzle-node-sim
//! cargo run --release --example membership -- [--joins 20] [--mode single|cluster|both]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Child processes killed on drop.
struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let c = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is needed (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server on {port} not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    c
}

/// Start Redis (one server or a 3-master cluster); returns the gateway's `[cluster]` line and
/// the URLs to publish on.
fn start_redis(cluster: bool, procs: &mut Procs) -> (String, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("kgw-membership-bench-{}-{cluster}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    if !cluster {
        let p = free_port();
        procs.0.push(redis_server(p, &dir, &[]));
        let url = format!("redis://127.0.0.1:{p}/0");
        return (format!("redis = \"{url}\""), vec![url]);
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for p in &ports {
        let conf = format!("nodes-{p}.conf");
        procs.0.push(redis_server(*p, &dir, &["--cluster-enabled", "yes", "--cluster-config-file", &conf]));
    }
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is needed");
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stderr));
    for p in &ports {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o =
                Command::new("redis-cli").args(["-p", &p.to_string(), "cluster", "info"]).output().expect("redis-cli");
            if String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster not ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let urls: Vec<String> = ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    let list = urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    (format!("redis_cluster = [{list}]"), urls)
}

fn sim_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.parent().and_then(|d| d.parent()).map(|d| d.join("kuzzle-node-sim")).expect("target dir");
    assert!(p.exists(), "{} missing: run `cargo build --release --bin kuzzle-node-sim` first", p.display());
    p
}

fn start_sim(name: &str) -> (Child, SocketAddr) {
    use std::io::BufRead;
    let mut c = Command::new(sim_bin())
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kuzzle-node-sim");
    let out = c.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    let addr = loop {
        let l = lines.next().expect("sim exited before printing its address").expect("sim stdout");
        if let Some(a) = l.split(" listening on ").nth(1) {
            break a.trim().parse().expect("sim address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (c, addr)
}

async fn client(addr: SocketAddr) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let s = TcpStream::connect(addr).await.ok()?;
    let (tx, conn) = http1::handshake(TokioIo::new(s)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(tx)
}

/// One GET: the answering node's name, if 200.
async fn get(c: &mut http1::SendRequest<Empty<Bytes>>, path: &str) -> Result<Option<String>, ()> {
    c.ready().await.map_err(|_| ())?;
    let req = http::Request::get(path).header("host", "bench").body(Empty::new()).map_err(|_| ())?;
    let r = tokio::time::timeout(Duration::from_secs(5), c.send_request(req)).await.map_err(|_| ())?.map_err(|_| ())?;
    let ok = r.status() == 200;
    let node = r.headers().get("x-kuzzle-node").and_then(|v| v.to_str().ok()).map(String::from);
    let _ = r.into_body().collect().await;
    Ok(if ok { node } else { None })
}

fn publish(conn: &mut redis::Connection, room: &str, desc: &serde_json::Value) {
    let payload = serde_json::json!([room, desc]).to_string();
    let _: i64 = redis::cmd("PUBLISH").arg(room).arg(payload).query(conn).expect("PUBLISH");
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let med = v.get(v.len() / 2).copied().unwrap_or_default();
    let max = v.last().copied().unwrap_or_default();
    println!("{label:<28} n={:<3} median={:>8.2} ms  max={:>8.2} ms", v.len(), ms(med), ms(max));
}

async fn bench(cluster: bool, joins: usize) {
    let mut procs = Procs(Vec::new());
    let (line, urls) = start_redis(cluster, &mut procs);
    let (anchor, anchor_addr) = start_sim("anchor");
    procs.0.push(anchor);
    let cfg = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[stats]\nlisten = \"127.0.0.1:0\"\n\
         [balance]\nalgorithm = \"roundrobin\"\n[cluster]\n{line}\n[[node]]\nname = \"anchor\"\naddress = \"{anchor_addr}\"\n"
    );
    let cfg = kuzzle_gateway::control::config::Config::parse(&cfg, "<bench>").expect("bench config");
    let h = kuzzle_gateway::app::bind_and_start(cfg).expect("gateway");
    let gw_addr = h.http_addr;
    let mut pubc = redis::Client::open(urls[0].as_str()).and_then(|c| c.get_connection()).expect("Redis connection");
    // Wait until the gateway follows Redis.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.cluster.metrics.connected.load(Ordering::Relaxed) != 1 {
        assert!(Instant::now() < deadline, "gateway did not connect to Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut join_t, mut leave_t) = (Vec::new(), Vec::new());
    for i in 0..joins {
        let name = format!("bench_node_{i}");
        let (child, addr) = start_sim(&name);
        let desc = serde_json::json!({"uuid": format!("u{i}"), "pub": format!("tcp://127.0.0.1:{}", 20000 + i),
            "router": format!("tcp://127.0.0.1:{}", 21000 + i), "name": name, "http": format!("http://{addr}"), "ready": true});
        let mut c = client(gw_addr).await.expect("connect to the gateway");
        let path = format!("/{name}/_now");
        let t0 = Instant::now();
        publish(&mut pubc, "cluster:ready", &desc);
        let t1 = loop {
            if let Ok(Some(n)) = get(&mut c, &path).await {
                if n == name {
                    break Instant::now();
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{name} never served through the gateway");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        join_t.push(t1 - t0);

        // Leave: balanced traffic from 4 clients, then cluster:remove.
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let mut loops = Vec::new();
        for _ in 0..4 {
            let (stop, seen, name) = (stop.clone(), seen.clone(), name.clone());
            loops.push(tokio::spawn(async move {
                let Some(mut c) = client(gw_addr).await else { return };
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match get(&mut c, "/_now").await {
                        Ok(Some(n)) if n == name => seen.lock().unwrap_or_else(|p| p.into_inner()).push(sent),
                        Ok(_) => {}
                        Err(()) => match client(gw_addr).await {
                            Some(n) => c = n,
                            None => return,
                        },
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t2 = Instant::now();
        publish(&mut pubc, "cluster:remove", &desc);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            let _ = l.await;
        }
        let last = seen.lock().unwrap_or_else(|p| p.into_inner()).iter().max().copied();
        leave_t.push(last.map_or(Duration::ZERO, |l| l.saturating_duration_since(t2)));
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    let which = if cluster { "Redis Cluster (3 masters)" } else { "one Redis" };
    println!("== {which}, {joins} joins ==");
    summary("ready -> first request", join_t);
    summary("remove -> last new request", leave_t);
    h.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut joins = 20;
    let mut mode = "both".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--joins" => joins = it.next().and_then(|v| v.parse().ok()).expect("--joins N"),
            "--mode" => mode = it.next().expect("--mode single|cluster|both"),
            other => panic!("unknown argument {other}; usage: membership [--joins N] [--mode single|cluster|both]"),
        }
    }
    if mode == "single" || mode == "both" {
        bench(false, joins).await;
    }
    if mode == "cluster" || mode == "both" {
        bench(true, joins).await;
    }
}
