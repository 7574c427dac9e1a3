//! The link layer against a real redis-server on a free loopback port: commands, pub/sub, SCAN, pipelines, loss.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kuzzle_redis_link::{CallError, Commands, Subscription, Target};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

/// A redis-server this test started; killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start redis-server on a free port and wait (bounded) until it answers.
async fn redis_server() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("this test needs redis-server on PATH (apt-get install redis-server); it is missing");
    let r = Redis { child, url: format!("redis://127.0.0.1:{port}/0") };
    let client = redis::Client::open(r.url.as_str()).expect("URL parses");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "redis-server on port {port} not ready within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next push of `kind` (bounded), skipping others.
async fn next_push(rx: &mut mpsc::UnboundedReceiver<PushInfo>, kind: PushKind) -> PushInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} push within 5 s"))
            .expect("push channel open");
        if p.kind == kind {
            return p;
        }
    }
}

#[tokio::test]
async fn commands_pubsub_scan_and_loss() {
    let r = redis_server().await;
    let target = Target::Single(r.url.clone());
    target.check().expect("URL parses");

    let cmds = Commands::connect(&target).await.expect("connect");
    cmds.query::<Value>("SET", redis::cmd("SET").arg("cluster:a").arg("1")).await.expect("SET");
    cmds.query::<Value>("SET", redis::cmd("SET").arg("other").arg("2")).await.expect("SET");
    let got: String = cmds.query("GET", redis::cmd("GET").arg("cluster:a")).await.expect("GET");
    assert_eq!(got, "1");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sub = Subscription::open(&target, &["chan".to_string()], tx).await.expect("subscribe");
    assert!(!sub.resubscribes_itself());
    cmds.publish("chan", "hello").await.expect("PUBLISH");
    let msg = redis::Msg::from_push_info(next_push(&mut rx, PushKind::Message).await).expect("a message push");
    assert_eq!(msg.get_channel_name(), "chan");
    assert_eq!(msg.get_payload_bytes(), b"hello");
    sub.ping().await.expect("PING on the subscription");

    let mut masters = cmds.masters(&target).await.expect("masters");
    assert_eq!(masters.len(), 1);
    let (name, m) = &mut masters[0];
    assert_eq!(name, &r.url);
    let keys = m.scan("cluster*").await.expect("SCAN");
    assert_eq!(keys, vec!["cluster:a".to_string()]);
    let mut p = redis::pipe();
    p.cmd("GET").arg("cluster:a").cmd("GET").arg("other");
    let both: Vec<String> = m.pipeline("GET", &p).await.expect("pipeline");
    assert_eq!(both, vec!["1".to_string(), "2".to_string()]);

    // Redis gone: the subscription says so, and commands fail (bounded), never hang.
    drop(masters);
    drop(r);
    let gone = next_push(&mut rx, PushKind::Disconnection).await;
    assert!(sub.ends(&gone));
    let t0 = Instant::now();
    let e = cmds.query::<String>("GET", redis::cmd("GET").arg("cluster:a")).await.expect_err("Redis is down");
    assert!(matches!(e, CallError::Redis("GET", _) | CallError::Timeout("GET")), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "bounded: {:?}", t0.elapsed());
}
