//! The binary: `--check` messages, and SIGTERM (drain, close frames, exit 0).

use super::*;

#[test]
fn config_check_names_file_line_and_key() {
    let dir = scratch_dir("check");
    let cases: &[(&str, &str, usize, &str)] = &[
        ("unknown.toml", "[gateway]\nlisten = \"127.0.0.1:7512\"\nlistn = 3\n", 3, "gateway.listn"),
        ("duration.toml", "[timeouts]\nconnect = \"5s\"\nserver = \"soon\"\n", 3, "timeouts.server"),
        ("address.toml", "[[node]]\nname = \"a\"\naddress = \"nowhere:x\"\n", 3, "node[0].address"),
        (
            "dup.toml",
            "[[node]]\nname = \"n\"\naddress = \"127.0.0.1:1\"\n\n[[node]]\nname = \"n\"\naddress = \"127.0.0.1:2\"\n",
            6,
            "node[1].name",
        ),
        ("name.toml", "[[node]]\nname = \"a/b\"\naddress = \"127.0.0.1:1\"\n", 2, "node[0].name"),
        ("algo.toml", "[balance]\n\nalgorithm = \"random\"\n", 3, "balance.algorithm"),
        ("syntax.toml", "[gateway\nlisten = 1\n", 1, ""),
    ];
    for (file, text, line, key) in cases {
        let p = dir.join(file);
        std::fs::write(&p, text).expect("write config");
        let out = run_check(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        let place = format!("{}:{line}:", p.display());
        assert!(err.contains(&place), "{file}: message should name {place}: {err}");
        assert!(err.contains(key), "{file}: message should name key {key}: {err}");
    }
    // A missing file is an error naming it.
    let missing = dir.join("missing.toml");
    let out = run_check(&missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // A good file passes.
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[gateway]\nlisten = \"127.0.0.1:7512\"\n[timeouts]\nserver = \"5s\"\n[balance]\nalgorithm = \"source\"\n\
         [[node]]\nname = \"cluster_kuzzle_1\"\naddress = \"127.0.0.1:17601\"\n",
    )
    .expect("write");
    let out = run_check(&good);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The shipped configuration is valid too.
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proxy-configs/gateway.toml");
    if shipped.exists() {
        let out = run_check(&shipped);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_closes_tunnels_and_exits_0() {
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let relay = Relay::start(n1.addr).await;
    let mut gw = Gateway::start(&gateway_toml(&format!(
        "[[node]]\nname = \"cluster_kuzzle_1\"\naddress = \"{}\"\n",
        relay.addr
    )));
    let addr = gw.http();

    let mut w = ws(addr, "/").await;
    let (r, _) = ws_call(&mut w, kuzzle("server", "now", "1")).await;
    assert_eq!(r["status"], 200);

    // A request in flight when SIGTERM comes: the node takes 3 s to answer it.
    assert_eq!(request(n1.addr, "POST", "/_sim/latency/3000", &[], Bytes::new()).await.status, 200);
    let inflight = tokio::spawn(async move { get(addr, "/_sim/request").await });
    eventually(T, "request reached the node", || async {
        (relay.sim_requests.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;

    let t0 = Instant::now();
    gw.sigterm();

    // New connections are refused at once.
    eventually(Duration::from_secs(5), "listener closed", || async {
        TcpStream::connect(addr).await.err().map(|_| ())
    })
    .await;
    assert!(!inflight.is_finished(), "the in-flight request ended before its node answered");

    // The tunnel gets a 1001 close frame after the grace period.
    let close = loop {
        match tokio::time::timeout(T, w.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let took = t0.elapsed();
    let f = close.expect("close frame with a code");
    assert_eq!(f.code, CloseCode::Away, "{f:?}");
    assert!(took >= Duration::from_millis(900), "tunnel closed before the grace period: {took:?}");

    // The in-flight request finishes normally.
    let r = tokio::time::timeout(T, inflight).await.expect("in-flight request finished").expect("task");
    let (_, path, _) = seen(&r);
    assert_eq!(path, "/_sim/request");

    // And the process exits 0.
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).code(), Some(0), "exit status after SIGTERM");
}
