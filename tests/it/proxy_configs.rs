//! The shipped configurations in proxy-configs/: every gateway config passes `kuzzle-gateway
//! --check` and does what its use case says, the default one shows every key and names the seed's 3
//! nodes, and the nginx / haproxy equivalents used by bench/run.sh route the same nodes with the
//! same per-node prefixes.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{check_config, with_test_certs};
use kuzzle_gateway::control::config::{Algorithm, Config, DEFAULT_CONFIG_PATH};

const NODES: [(&str, &str); 3] = [
    ("cluster_kuzzle_1", "127.0.0.1:17601"),
    ("cluster_kuzzle_2", "127.0.0.1:17602"),
    ("cluster_kuzzle_3", "127.0.0.1:17603"),
];

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

#[test]
fn default_gateway_config_is_valid_and_lists_the_three_nodes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.listen.port(), 7512);
    assert_eq!(c.stats.listen.port(), 7575);
    assert_eq!(c.stats.uri, "/hastats");
    assert_eq!((c.stats.user.as_deref(), c.stats.password.as_deref()), (Some("kuzzle"), Some("kuzzle")));
    assert_eq!(c.balance.algorithm, Algorithm::Leastconn);
    assert_eq!(c.health.path, "/_plugin/cluster/health");
    assert!(c.tls.is_none() && c.cluster.is_none(), "optional sections must stay commented out");
    let got: Vec<(String, String)> = c.nodes.iter().map(|n| (n.name.clone(), n.target.to_string())).collect();
    let want: Vec<(String, String)> = NODES.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
    assert_eq!(got, want);
}

#[test]
fn nginx_config_routes_the_same_nodes_and_prefixes() {
    let t = read("proxy-configs/nginx.conf");
    for (name, addr) in NODES {
        assert!(t.contains(&format!("server {addr};")), "nginx.conf: no upstream server {addr}");
        // Trailing slash on both sides: the prefix is stripped and /cluster_kuzzle_10/ is not node 1.
        assert!(
            t.contains(&format!("location /{name}/ {{ proxy_pass http://{name}/; }}")),
            "nginx.conf: no prefix-stripping location for {name}"
        );
        assert!(t.contains(&format!("location = /{name} {{")), "nginx.conf: bare /{name} not handled");
    }
    for needle in ["proxy_read_timeout 3600s", "$connection_upgrade", "proxy_set_header Upgrade $http_upgrade"] {
        assert!(t.contains(needle), "nginx.conf: missing {needle}");
    }
}

#[test]
fn haproxy_config_routes_the_same_nodes_and_prefixes() {
    let t = read("proxy-configs/haproxy.cfg");
    for (name, addr) in NODES {
        assert!(t.contains(&format!("server {name} {addr}")), "haproxy.cfg: no server {name} {addr}");
        assert!(t.contains(&format!("path_beg /{name}/")), "haproxy.cfg: no path_beg ACL for {name}");
        assert!(t.contains(&format!("regsub(^/{name}/?,/)")), "haproxy.cfg: {name} prefix not stripped");
        assert!(t.contains(&format!("use_backend {name} if")), "haproxy.cfg: no use_backend for {name}");
    }
    for needle in [
        "balance leastconn",
        "option httpchk GET /_plugin/cluster/health",
        "option forwardfor",
        "timeout connect 5s",
        "timeout client 5s",
        "timeout server 5s",
        "timeout tunnel 2h",
        "bind 127.0.0.1:7575",
        "stats uri /hastats",
        "stats auth kuzzle:kuzzle",
    ] {
        assert!(t.contains(needle), "haproxy.cfg: missing {needle}");
    }
}

/// Every gateway configuration shipped in proxy-configs/ (`*.toml`): a new file is picked up here.
fn gateway_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn table(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

#[test]
fn every_gateway_config_passes_check() {
    let files = gateway_configs();
    let names: BTreeSet<String> =
        files.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
    for want in [
        "gateway.toml",
        "gateway-plugin3-redis.toml",
        "gateway-kuzzle2-redis.toml",
        "gateway-redis-cluster.toml",
        "gateway-tls.toml",
    ] {
        assert!(names.contains(want), "proxy-configs/{want} is missing (have {names:?})");
    }
    let tmp = std::env::temp_dir().join(format!("kgw-proxy-configs-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read config");
        assert!(text.starts_with('#'), "{}: must open with a comment saying its use case", f.display());
        let checked = with_test_certs(f, &tmp);
        let stdout = check_config(&checked, &f.display().to_string());
        assert!(stdout.contains("is valid"), "{}: no 'is valid' line", f.display());
        // Every node address is one the gateway takes: IP:PORT or HOST:PORT.
        for n in table(f).get("node").and_then(|v| v.as_array()).into_iter().flatten() {
            let a = n.get("address").and_then(|v| v.as_str()).expect("node address");
            let ok = kuzzle_gateway::control::config::parse_node_target(a).is_some();
            assert!(ok, "{}: node address {a:?} is neither IP:PORT nor HOST:PORT", f.display());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn get<'a>(t: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let (sec, key) = dotted.split_once('.').expect("section.key");
    t.get(sec)?.as_table()?.get(key)
}

#[test]
fn each_use_case_config_sets_what_its_use_case_needs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy-configs");
    let s = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let b = |v: Option<&toml::Value>| v.and_then(|v| v.as_bool());

    let p3 = table(&dir.join("gateway-plugin3-redis.toml"));
    assert!(s(get(&p3, "cluster.redis")).is_some_and(|u| u.starts_with("redis://")));
    assert_eq!(s(get(&p3, "health.path")).as_deref(), Some("/_plugin/cluster/health"));
    assert_eq!((b(get(&p3, "cluster.pubsub")), b(get(&p3, "cluster.discovery"))), (Some(true), Some(true)));
    assert!(p3.get("node").is_none(), "plugin 3.x: nodes come from Redis only");

    let k2 = table(&dir.join("gateway-kuzzle2-redis.toml"));
    // ID-card nodes are checked on `kuzzle2_path`, whose default suits Kuzzle 2 without a line here.
    assert_eq!(s(get(&k2, "health.path")), None);
    assert_eq!(s(get(&k2, "health.kuzzle2_path")), None);
    assert_eq!(b(get(&k2, "cluster.kuzzle2")), Some(true));
    assert_eq!((b(get(&k2, "cluster.pubsub")), b(get(&k2, "cluster.discovery"))), (Some(false), Some(false)));
    assert!(k2.get("node").is_none(), "Kuzzle 2: nodes come from their ID cards only");

    let rc = table(&dir.join("gateway-redis-cluster.toml"));
    let seeds = get(&rc, "cluster.redis_cluster").and_then(|v| v.as_array()).expect("redis_cluster list");
    assert_eq!(seeds.len(), 3, "a 3-master Redis Cluster");
    assert!(get(&rc, "cluster.redis").is_none());

    let tls = table(&dir.join("gateway-tls.toml"));
    assert_eq!(s(get(&tls, "tls.listen")).as_deref(), Some("0.0.0.0:7443"));
    assert!(s(get(&tls, "tls.cert")).is_some() && s(get(&tls, "tls.key")).is_some());
    let extra = get(&tls, "tls.certificate").and_then(|v| v.as_array()).expect("a [[tls.certificate]] by SNI");
    assert!(extra.iter().all(|e| e.get("names").is_some()), "the SNI example names its names");
}
