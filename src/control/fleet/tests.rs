//! Unit tests of the parent module.

use super::*;
use crate::control::config::Config;

#[test]
fn fleet_keys_default_from_cluster_and_errors_name_line_and_key() {
    let c = Config::parse(
        "[gateway]\nlisten = \"127.0.0.1:7600\"\n[cluster]\nredis = \"redis://r:6379/0\"\n[fleet]\n",
        "g.toml",
    )
    .expect("valid");
    let f = c.fleet.expect("fleet");
    assert_eq!(f.redis.as_deref(), Some("redis://r:6379/0"), "[cluster] redis by default");
    assert!(f.name().ends_with(":7600"), "host name and client port: {}", f.name());
    assert_eq!((f.heartbeat.0, f.ttl.0), (Duration::from_secs(1), Duration::from_secs(5)));
    assert!(!f.rebalance_websockets);
    let c = Config::parse("[cluster]\nredis_cluster = [\"redis://a:1\"]\n[fleet]\nname = \"x\"\n", "g.toml")
        .expect("valid");
    assert_eq!(c.fleet.expect("fleet").redis_cluster, Some(vec!["redis://a:1".to_string()]));
    for (text, line, key) in [
        ("[fleet]\n", 1, "fleet"),
        ("[fleet]\nredis = \"r:1\"\n", 2, "fleet.redis"),
        ("[fleet]\nredis = \"redis://a:1\"\nname = \"a b\"\n", 3, "fleet.name"),
        ("[fleet]\nredis = \"redis://a:1\"\nheartbeat = \"1s\"\nttl = \"1s\"\n", 4, "fleet.ttl"),
        ("[fleet]\nredis = \"redis://a:1\"\nrebalance_rate = 0\n", 3, "fleet.rebalance_rate"),
        ("[fleet]\nredis = \"redis://a:1\"\nrebalance_tolerance = 200\n", 3, "fleet.rebalance_tolerance"),
        ("[fleet]\nredis = \"redis://a:1\"\nnamespace = \"{x}\"\n", 3, "fleet.namespace"),
        ("[fleet]\nredis = \"redis://a:1\"\nredis_cluster = [\"redis://b:1\"]\n", 3, "fleet.redis_cluster"),
        ("[fleet]\nredis = \"redis://a:1\"\nrebalance = true\n", 3, "fleet.rebalance"),
    ] {
        let e = Config::parse(text, "g.toml").expect_err(text);
        assert_eq!((e.line, e.key.as_str()), (line, key), "{text}: {e}");
        assert!(e.to_string().starts_with(&format!("g.toml:{line}:")), "{e}");
    }
}

#[test]
fn the_link_part_ignores_rebalancing_keys() {
    let a = FleetSection { name: Some("a".into()), ..FleetSection::default() };
    let b = FleetSection { rebalance_websockets: true, rebalance_rate: 50, ..a.clone() };
    assert_eq!(link_part(&a), link_part(&b), "rebalancing changes apply without reconnecting");
    let c = FleetSection { namespace: "other".into(), ..a.clone() };
    assert_ne!(link_part(&a), link_part(&c));
}

#[test]
fn leastconn_counts_the_other_gateways_websockets() {
    use crate::core::backend::{Backend, Origin};
    let nodes: Vec<Arc<crate::core::backend::Backend>> = (0..2)
        .map(|i| {
            Arc::new(Backend::new(
                format!("n{i}"),
                format!("127.0.0.1:{}", 1000 + i).parse().expect("addr"),
                Origin::Static,
                Default::default(),
                true,
                1,
            ))
        })
        .collect();
    let _local = nodes[1].track();
    // Locally n0 is emptier, but the rest of the fleet holds 40 WebSockets there.
    nodes[0].set_remote(40);
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    for _ in 0..4 {
        let got = crate::data::balance::pick(
            crate::control::config::Algorithm::Leastconn,
            &nodes,
            &cursor,
            ip,
            &[],
            Default::default(),
        );
        assert_eq!(got, Some(1), "the fleet-wide emptier node");
    }
    nodes[0].set_remote(0);
    assert_eq!(
        crate::data::balance::pick(
            crate::control::config::Algorithm::Leastconn,
            &nodes,
            &cursor,
            ip,
            &[],
            Default::default()
        ),
        Some(0)
    );
}
