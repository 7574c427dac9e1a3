//! bench/kuzzle-real.sh: the same three real Kuzzle 2 nodes behind kuzzle-gateway (the shipped
//! Kuzzle 2 config: nodes from their ID cards), the seed's nginx config and its haproxy config
//! (static addresses of the three nodes): requests per second, then failed requests during the same
//! rolling restart under the same load. Prints one markdown table.
//!
//! Usage: cargo run --release --example kuzzle_compare -- GATEWAY_BIN [SECONDS]
//! nginx and haproxy are taken from PATH (bench/kuzzle-real.sh installs them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kuzzle_test_support::*;

/// A proxy process in front of the cluster; killed on drop.
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The seed configs' three node addresses replaced by the real nodes'.
fn with_nodes(text: &str, nodes: &[SocketAddr]) -> String {
    let mut t = text.to_string();
    for (i, a) in nodes.iter().enumerate() {
        t = t.replace(&format!("127.0.0.1:{}", 17601 + i), &a.to_string());
    }
    t
}

fn spawn(name: &'static str, addr: SocketAddr, cmd: &mut Command) -> Proxy {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proxy { name, addr, child }
}

fn gateway(bin: &Path, dir: &Path, c: &KuzzleCluster) -> Proxy {
    let port = free_port();
    let text = read(&root().join("proxy-configs/gateway-kuzzle2-redis.toml"));
    let mut t: toml::Table = text.parse().expect("shipped config");
    let mut set = |s: &str, k: &str, v: toml::Value| {
        t.get_mut(s).and_then(|x| x.as_table_mut()).expect("section").insert(k.into(), v);
    };
    set("gateway", "listen", format!("127.0.0.1:{port}").into());
    set("gateway", "threads", 1.into());
    set("stats", "listen", "127.0.0.1:0".into());
    set("cluster", "redis", c.redis_url().into());
    set("cluster", "node_port", i64::from(c.http_port()).into());
    set("cluster", "allowed_networks", toml::Value::Array(vec!["127.0.0.0/8".into()]));
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, t.to_string()).expect("write gateway.toml");
    spawn("kuzzle-gateway", SocketAddr::from(([127, 0, 0, 1], port)), Command::new(bin).arg("--config").arg(&cfg))
}

fn nginx(dir: &Path, nodes: &[SocketAddr]) -> Proxy {
    let port = free_port();
    let text = with_nodes(&read(&root().join("proxy-configs/nginx.conf")), nodes)
        .replace("worker_processes auto;", "worker_processes 1;")
        .replace("listen 7512 reuseport backlog=4096;", &format!("listen 127.0.0.1:{port} backlog=4096;"));
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix).expect("nginx dir");
    let cfg = dir.join("nginx.conf");
    std::fs::write(&cfg, text).expect("write nginx.conf");
    spawn(
        "nginx",
        SocketAddr::from(([127, 0, 0, 1], port)),
        Command::new("nginx").arg("-p").arg(&prefix).arg("-c").arg(&cfg).args(["-g", "daemon off;"]),
    )
}

fn haproxy(dir: &Path, nodes: &[SocketAddr]) -> Proxy {
    let port = free_port();
    // The seed checks the cluster plugin's route, which Kuzzle 2 does not have (404: every node
    // DOWN): its Kuzzle 2 counterpart, as the seed's docs said, in HTTP/1.1 with a Host (Kuzzle
    // refuses haproxy's default HTTP/1.0 check without one: every node DOWN again).
    let text = with_nodes(&read(&root().join("proxy-configs/haproxy.cfg")), nodes)
        .replace("bind :7513", &format!("bind 127.0.0.1:{port}"))
        .replace("bind 127.0.0.1:7575", &format!("bind 127.0.0.1:{}", free_port()))
        .replace(
            "option httpchk GET /_plugin/cluster/health",
            "option httpchk\n    http-check send meth GET uri /_healthCheck ver HTTP/1.1 hdr Host kuzzle",
        );
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, text).expect("write haproxy.cfg");
    spawn("haproxy", SocketAddr::from(([127, 0, 0, 1], port)), Command::new("haproxy").arg("-db").arg("-f").arg(&cfg))
}

/// Until `addr` answers GET /_now 200.
async fn wait_serving(p: &Proxy) {
    eventually(Duration::from_secs(30), &format!("{} serving", p.name), || async {
        let mut c = Client::try_connect(p.addr).await.ok()?;
        c.try_send("GET", "/_now", &[], bytes::Bytes::new()).await.ok().filter(|r| r.status == 200).map(|_| ())
    })
    .await;
}

fn load(addr: SocketAddr) -> Load {
    let publish = Shot::post("/bench/load/_publish", r#"{"from":"bench"}"#);
    Load::start(addr, &[(8, Shot::get("/_now")), (8, publish)], Duration::from_secs(180))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(args.get(1).expect("usage: kuzzle_compare GATEWAY_BIN [SECONDS]"));
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut c = tokio::task::block_in_place(|| KuzzleCluster::start(3));
    let nodes: Vec<SocketAddr> = (0..3).map(|i| c.node_addr(i)).collect();
    let dir = scratch_dir("kuzzle-compare");
    let mut rows = Vec::new();
    for which in ["kuzzle-gateway", "nginx", "haproxy"] {
        let p = match which {
            "kuzzle-gateway" => gateway(&bin, &dir, &c),
            "nginx" => nginx(&dir, &nodes),
            _ => haproxy(&dir, &nodes),
        };
        wait_serving(&p).await;
        // Steady state: 16 clients, a connection per request.
        let l = load(p.addr);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let steady = l.stop().await;
        let rate = steady.total as f64 / t.elapsed().as_secs_f64();
        // The rolling restart: each node SIGTERMed and started again, 3 s apart, same load.
        let l = load(p.addr);
        for i in 0..3 {
            tokio::task::block_in_place(|| {
                c.stop_node(i);
                c.wait_exit(i);
                c.start_node(i);
            });
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let r = l.stop().await;
        eprintln!("{which}: steady {:?}; restart {:?} {:?}", steady.by_status, r.by_status, r.failures.first());
        let kinds: Vec<String> = r
            .by_status
            .iter()
            .filter(|((_, s), _)| !(200..300).contains(s))
            .map(|((m, s), n)| format!("{n} x {m} {s}"))
            .collect();
        rows.push(format!(
            "| {which} | {rate:.0} | {} of {} ({:.2} %) | {} |",
            r.failed(),
            r.total,
            100.0 * r.failed() as f64 / r.total.max(1) as f64,
            if kinds.is_empty() { "-".to_string() } else { kinds.join(", ") }
        ));
        drop(p);
    }
    println!("\n| proxy (3 real Kuzzle 2.56 nodes) | requests/s, 8 GET + 8 POST clients, a connection per request | failed during a rolling restart | which |");
    println!("|---|--:|--:|---|");
    for r in rows {
        println!("{r}");
    }
}
