//! Unit tests of the configuration: defaults, and mistakes named by line and key.

use std::time::Duration;

use super::*;

#[test]
fn defaults_match_interface() {
    let c = Config::parse("", "t.toml").expect("empty config is valid");
    assert_eq!(c.gateway.listen.port(), 7512);
    assert_eq!(c.balance.algorithm, Algorithm::Leastconn);
    assert_eq!(c.health.path, "/_plugin/cluster/health");
    assert_eq!(c.stats.uri, "/hastats");
    assert_eq!(c.timeouts.tunnel.0, Duration::from_secs(7200));
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = Config::parse("[gateway]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n", "g.toml").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert_eq!(e.key, "gateway.listn", "{e}");
    assert!(e.to_string().starts_with("g.toml:3:"), "{e}");
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn bad_duration_and_address() {
    let e = Config::parse("[timeouts]\nconnect = \"5 parsecs\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "timeouts.connect"), "{e}");
    assert!(e.message.contains("invalid duration"), "{e}");
    let e = Config::parse("[[node]]\nname = \"a\"\naddress = \"nowhere\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "node[0].address"), "{e}");
    assert!(e.message.contains("HOST:PORT or IP:PORT"), "{e}");
}

#[test]
fn stats_user_without_password_is_an_error() {
    let e = Config::parse("[stats]\nuser = \"ops\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "stats.user"), "{e}");
    assert!(e.message.contains("password is missing"), "{e}");
    let e = Config::parse("[stats]\npassword = \"pw\"\n", "g.toml").unwrap_err();
    assert_eq!(e.key, "stats.password", "{e}");
    let c = Config::parse("[stats]\nuser = \"ops\"\npassword = \"pw\"\n", "g.toml").expect("both");
    assert_eq!((c.stats.user.as_deref(), c.stats.password.as_deref()), (Some("ops"), Some("pw")));
}

#[test]
fn node_addresses_take_host_names() {
    let host = |h: &str, port| NodeTarget::Host(HostPort { host: h.into(), port });
    assert_eq!(parse_node_target("kuzzle-1:7512"), Some(host("kuzzle-1", 7512)));
    assert_eq!(parse_node_target("Kuzzle.Svc.Cluster.Local.:7512"), Some(host("kuzzle.svc.cluster.local", 7512)));
    assert_eq!(parse_node_target("127.0.0.1:7512"), Some(NodeTarget::Addr("127.0.0.1:7512".parse().expect("ip"))));
    assert_eq!(parse_node_target("[::1]:7512"), Some(NodeTarget::Addr("[::1]:7512".parse().expect("ip6"))));
    for bad in [
        "kuzzle-1",
        "kuzzle-1:0",
        "kuzzle-1:70000",
        ":7512",
        "bad host:1",
        "-x:1",
        "a..b:1",
        "300.1.2.3:1",
        "h/x:1",
        "h:1:2",
    ] {
        assert_eq!(parse_node_target(bad), None, "{bad:?} accepted");
    }
    let c = Config::parse(
        "[[node]]\nname = \"a\"\naddress = \"kuzzle-1:7512\"\n[[node]]\nname = \"b\"\naddress = \"kuzzle-1:7512\"\n",
        "g.toml",
    )
    .expect("host names are valid");
    assert_eq!(c.host_names(), vec![HostPort { host: "kuzzle-1".into(), port: 7512 }], "looked up once");
}

#[test]
fn duplicate_and_invalid_names() {
    let t = "[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[node]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n";
    let e = Config::parse(t, "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (5, "node[1].name"), "{e}");
    assert!(e.message.contains("first defined at line 2"), "{e}");
    for bad in ["a/b", "..", "", "a b", "a%2fb"] {
        let t = format!("[[node]]\nname = {bad:?}\naddress = \"127.0.0.1:1\"\n");
        assert!(Config::parse(&t, "g.toml").is_err(), "{bad:?} accepted");
    }
}

#[test]
fn listeners_clash_unless_ephemeral() {
    let t = "[gateway]\nlisten = \"127.0.0.1:0\"\n[stats]\nlisten = \"127.0.0.1:0\"\n";
    assert!(Config::parse(t, "g.toml").is_ok(), "port 0 twice is two free ports");
    let t = "[gateway]\nlisten = \"127.0.0.1:9\"\n[stats]\nlisten = \"127.0.0.1:9\"\n";
    let e = Config::parse(t, "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "stats.listen"), "{e}");
    let t = "[gateway]\nlisten = \"127.0.0.1:9\"\n[tls]\nlisten = \"127.0.0.1:9\"\ncert = \"c\"\nkey = \"k\"\n";
    let e = Config::parse(t, "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "tls.listen"), "{e}");
}

#[test]
fn worker_threads_are_bounded() {
    let e = Config::parse("[gateway]\nthreads = 100000\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "gateway.threads"), "{e}");
    assert!(e.to_string().contains("at most 1024"), "{e}");
    assert_eq!(Config::parse("[gateway]\nthreads = 2\n", "g.toml").expect("valid").gateway.threads, 2);
}

#[test]
fn tls_pairs_and_their_errors() {
    let t = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[tls.certificate]]\ncert = \"a.pem\"\nkey = \"ak.pem\"\nnames = [\"*.a.test\"]\n";
    let c = Config::parse(t, "g.toml").expect("valid");
    let tls = c.tls.expect("tls");
    let places: Vec<String> = tls.pairs().into_iter().map(|p| p.place).collect();
    assert_eq!(places, vec!["tls", "tls.certificate[0]"]);
    assert_eq!(tls.handshake_timeout.0, Duration::from_secs(10));
    assert!(tls.http2 && tls.watch);
    let e = Config::parse("[tls]\ncert = \"c.pem\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "tls.cert"), "{e}");
    assert!(e.message.contains("key is missing"), "{e}");
    let e = Config::parse("[tls]\nlisten = \"127.0.0.1:0\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (1, "tls"), "{e}");
    let t = "[tls]\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\nnames = [\"a b\"]\n";
    let e = Config::parse(t, "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "tls.certificate[1].names"), "{e}");
    let places = document::read(t, "g.toml").places;
    assert_eq!(places.near("tls.certificate[1].key"), 7);
    assert_eq!(places.near("tls.certificate[0]"), 2);
    for ok in ["a.test", "*.a.test", "xn--bcher-kva.example"] {
        assert!(valid_sni_name(ok), "{ok}");
    }
    for bad in ["", "*", "a.*.test", "a..b", "*.", "a b"] {
        assert!(!valid_sni_name(bad), "{bad}");
    }
}

#[test]
fn semantic_errors_point_at_key() {
    let e = Config::parse("[health]\ninterval = \"1s\"\nrise = 0\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "health.rise"), "{e}");
    let e = Config::parse("[cluster]\nnode_port = 1\n", "g.toml").unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    let e = Config::parse("[cluster]\nredis_cluster = [\"redis://a:1/3\"]\n", "g.toml").unwrap_err();
    assert!(e.message.contains("database 0"), "{e}");
    let redis = "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\n";
    let c = Config::parse(redis, "g.toml").expect("valid");
    assert_eq!(c.cluster.map(|c| c.ready_timeout.0), Some(Duration::from_secs(5)));
    for bad in ["0s", "61s"] {
        let e = Config::parse(&format!("{redis}ready_timeout = \"{bad}\"\n"), "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "cluster.ready_timeout"), "{e}");
    }
}

#[test]
fn edge_keys_and_their_errors() {
    let c = Config::parse("", "g.toml").expect("defaults");
    assert!(!c.gateway.proxy_protocol && c.access_log.is_none() && !c.limits.per_client());
    assert_eq!(
        (c.limits.client_table, c.health.slowstart.0, c.balance.retry_on_timeout),
        (65_536, DEFAULT_SLOWSTART, false)
    );
    let t = "[gateway]\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]\n[limits]\nclient_connections = 20\nclient_rate = 50\nexempt_networks = [\"192.0.2.0/24\"]\n[health]\nslowstart = \"30s\"\n[access_log]\npath = \"stdout\"\nformat = \"text\"\n";
    let c = Config::parse(t, "g.toml").expect("valid");
    assert_eq!(c.limits.burst(), 50, "client_burst defaults to client_rate");
    let a = c.access_log.expect("access log");
    assert_eq!((a.format, a.mask), (LogFormat::Text, vec!["jwt".to_string(), "access_token".to_string()]));
    for (t, line, key) in [
        ("[gateway]\nproxy_protocol = true\n", 2, "gateway.proxy_protocol"),
        ("[gateway]\nproxy_protocol_from = [\"10.0.0.0/8\"]\n", 2, "gateway.proxy_protocol_from"),
        ("[limits]\nclient_connections = 70000\n", 2, "limits.client_connections"),
        ("[limits]\nclient_burst = 5\n", 2, "limits.client_burst"),
        ("[limits]\nclient_table = 10\n", 2, "limits.client_table"),
        ("[limits]\nclient_rate = 2000000\n", 2, "limits.client_rate"),
        ("[access_log]\npath = \"\"\n", 2, "access_log.path"),
        ("[access_log]\npath = \"x\"\nmask = [\"a=b\"]\n", 3, "access_log.mask"),
        ("[access_log]\npath = \"x\"\nformat = \"xml\"\n", 3, "access_log.format"),
        ("[health]\nslowstart = \"soon\"\n", 2, "health.slowstart"),
    ] {
        let e = Config::parse(t, "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (line, key), "{t}: {e}");
    }
}

#[test]
fn node_header_and_kuzzle2_path() {
    let c = Config::parse("", "g.toml").expect("defaults");
    assert_eq!((c.gateway.node_header.as_str(), c.health.kuzzle2_path.as_str()), ("x-kuzzle-node", "/_healthcheck"));
    assert_eq!(c.balance.resend_body, 65536);
    for ok in ["", "X-Served-By", "x-kuzzle-node"] {
        Config::parse(&format!("[gateway]\nnode_header = {ok:?}\n"), "g.toml").expect(ok);
    }
    for bad in ["x served", "content-length", "Connection", "é"] {
        let e = Config::parse(&format!("[gateway]\nnode_header = {bad:?}\n"), "g.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "gateway.node_header"), "{bad}: {e}");
    }
    let e = Config::parse("[health]\nkuzzle2_path = \"_ready\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "health.kuzzle2_path"), "{e}");
}
