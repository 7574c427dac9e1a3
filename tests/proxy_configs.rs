//! The shipped configurations in proxy-configs/: the gateway's default config is valid and names
//! the seed's 3 nodes, and the nginx / haproxy equivalents used by bench/run.sh route the same
//! nodes with the same per-node prefixes.

use std::path::Path;

use kuzzle_gateway::config::{Algorithm, Config, DEFAULT_CONFIG_PATH};

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
    let got: Vec<(String, String)> = c.nodes.iter().map(|n| (n.name.clone(), n.addr.to_string())).collect();
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
