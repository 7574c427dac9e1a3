//! `[[node]] address = "HOST:PORT"` as in Docker, Compose and Kubernetes: a name that resolves
//! serves like an address; one that does not leaves its node DOWN with "DNS: no address", never a
//! failed start, and `--check` warns about it.
use crate::common;

use bytes::Bytes;
use common::*;

const OPS: &str = "[stats]\nuser = \"ops\"\npassword = \"pw\"\n";

#[tokio::test]
async fn a_node_named_by_host_name_serves_and_a_name_without_address_stays_down() {
    let sim = Sim::start("named", &[]);
    let port = sim.addr.port();
    let toml = gateway_toml(&format!(
        "[[node]]\nname = \"named\"\naddress = \"localhost:{port}\"\n[[node]]\nname = \"ghost\"\naddress = \"no-such-node.invalid:7512\"\n"
    ))
    .replace("[stats]\n", OPS);
    let gw = gateway(&toml).await;
    for _ in 0..4 {
        let r = get(gw.http_addr, "/_now").await;
        assert_eq!((r.status, r.node()), (200, Some("named")), "balanced requests reach the named node only");
    }
    assert_eq!(get(gw.http_addr, "/named/_now").await.status, 200, "its prefix works");
    let r = get(gw.http_addr, "/ghost/_now").await;
    assert_eq!(r.status, 503, "a prefix of a node without address is the gateway's 503");
    let auth = basic_auth("ops", "pw");
    let auth = ("authorization", auth.as_str());
    let json = request(gw.stats_addr, "GET", "/hastats;json", &[auth], Bytes::new()).await.json();
    let ghost =
        json["nodes"].as_array().expect("nodes").iter().find(|n| n["name"] == "ghost").cloned().expect("ghost row");
    assert_eq!(ghost["status"], "DNS: no address", "{ghost}");
    assert_eq!(ghost["eligible"], false);
    let csv = request(gw.stats_addr, "GET", "/hastats;csv", &[auth], Bytes::new()).await;
    let line = String::from_utf8_lossy(&csv.body).lines().find(|l| l.starts_with("kuzzle,ghost,")).map(str::to_string);
    assert!(line.is_some_and(|l| l.contains(",DOWN,")), "haproxy's CSV says DOWN");
    gw.shutdown().await;
}

#[test]
fn check_warns_about_a_name_without_address_and_still_passes() {
    let dir = scratch_dir("hostnames");
    let file = dir.join("gw.toml");
    std::fs::write(&file, "[[node]]\nname = \"ghost\"\naddress = \"no-such-node.invalid:7512\"\n").expect("write");
    let out = run_check(&file);
    assert!(out.status.success(), "a name that does not resolve is no configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("ghost") && err.contains("DNS: no address"), "{err}");
}
