//! The HA and Kubernetes deployment files of `deploy/`, checked without a cluster, as
//! tests/it/compose.rs checks the compose files: the Kubernetes manifests parse and hold together
//! (selectors, ports, probes on the ops port, the config in the ConfigMap passes `--check` and has
//! a `[fleet]` whose names stay unique per pod), the keepalived pair's check script and config
//! agree with its gateway config, and every `deploy/` path the docs name exists.

use crate::common;

use std::path::Path;

use common::check_config;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The port of a `host:port` listen address.
fn port(listen: &str) -> i64 {
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {listen:?}"))
}

/// `--check` on configuration text (written to a scratch file named after `what`).
fn check_text(text: &str, what: &str) {
    let dir = common::scratch_dir("deploy");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text).expect("write config");
    check_config(&file, what);
    let _ = std::fs::remove_dir_all(&dir);
}

fn by_kind<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every key/value of `selector` is among `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let Some(sel) = selector.as_hash() else { return false };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k.as_str().unwrap_or("")] == *v)
}

#[test]
fn kubernetes_manifests_hold_together_and_their_config_passes_check() {
    let f = "deploy/kubernetes/kuzzle-gateway.yaml";
    let docs = YamlLoader::load_from_str(&read(f)).unwrap_or_else(|e| panic!("{f}: not YAML: {e}"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(kinds.contains(&k), "{f}: no {k} (has {kinds:?})");
    }
    for d in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "{f}: a document without apiVersion");
    }

    // The configuration every pod runs.
    let cm = by_kind(&docs, "ConfigMap", "kuzzle-gateway");
    let text = cm["data"]["gateway.toml"].as_str().expect("ConfigMap data gateway.toml");
    check_text(text, &format!("{f}: ConfigMap gateway.toml"));
    let cfg: toml::Table = text.parse().expect("TOML");
    let fleet = cfg["fleet"].as_table().expect("a [fleet] section");
    assert!(!fleet.contains_key("name"), "{f}: one ConfigMap for every pod: the fleet name must default (host name)");
    let clients = port(cfg["gateway"]["listen"].as_str().expect("[gateway] listen"));
    let ops = port(cfg["stats"]["listen"].as_str().expect("[stats] listen"));
    assert!(cfg["stats"]["listen"].as_str().is_some_and(|l| l.starts_with("0.0.0.0:")), "probes reach the ops port");

    // The Deployment: several gateways, each serving before an old one stops, probed on /healthz.
    let dep = by_kind(&docs, "Deployment", "kuzzle-gateway");
    let spec = &dep["spec"];
    assert!(spec["replicas"].as_i64().is_some_and(|r| r >= 2), "{f}: an HA fleet has 2 gateways or more");
    let labels = &spec["template"]["metadata"]["labels"];
    assert!(selects(&spec["selector"]["matchLabels"], labels), "{f}: the Deployment selects its own pods");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(), Some(0));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let named_port = |name: &str| {
        c["ports"]
            .as_vec()
            .and_then(|v| v.iter().find(|p| p["name"].as_str() == Some(name)))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("{f}: no container port {name}"))
    };
    assert_eq!(named_port("clients"), clients, "{f}: container port = [gateway] listen");
    assert_eq!(named_port("ops"), ops, "{f}: container port = [stats] listen");
    // Readiness says whether to send it clients (503 while it starts or stops); liveness only
    // whether the process answers (a draining gateway must not be killed for failing readiness).
    for (probe, path) in [("readinessProbe", "/healthz"), ("livenessProbe", "/livez")] {
        let h = &c[probe]["httpGet"];
        assert_eq!(h["path"].as_str(), Some(path), "{f}: {probe}");
        assert_eq!(h["port"].as_i64(), Some(ops), "{f}: {probe} on the ops port");
    }
    // --config names the ConfigMap's file where its volume is mounted.
    let args: Vec<&str> = c["args"].as_vec().expect("args").iter().filter_map(|a| a.as_str()).collect();
    let config = args.iter().position(|a| *a == "--config").and_then(|i| args.get(i + 1)).expect("--config FILE");
    let (dir, file) = config.rsplit_once('/').expect("a path");
    assert!(cm["data"][file].as_str().is_some(), "{f}: --config {config}: no such key in the ConfigMap");
    let mount = c["volumeMounts"]
        .as_vec()
        .and_then(|v| v.iter().find(|m| m["mountPath"].as_str() == Some(dir)))
        .unwrap_or_else(|| panic!("{f}: nothing mounted at {dir}"));
    let volume = pod["volumes"]
        .as_vec()
        .and_then(|v| v.iter().find(|x| x["name"] == mount["name"]))
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"].as_str(), Some("kuzzle-gateway"));
    // Stopping: the preStop pause and the gateway's own grace fit in the pod's grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    let shutdown = cfg["gateway"]["shutdown_grace"].as_str().and_then(|s| humantime::parse_duration(s).ok());
    let shutdown = shutdown.map_or(10, |d| d.as_secs() as i64);
    assert!(grace > shutdown + 5, "{f}: terminationGracePeriodSeconds {grace} <= shutdown_grace + preStop");

    // Services and the disruption budget select the same pods; target ports are container ports.
    for svc in ["kuzzle-gateway", "kuzzle-gateway-ops"] {
        let s = by_kind(&docs, "Service", svc);
        assert!(selects(&s["spec"]["selector"], labels), "{f}: Service {svc} selects the gateways");
        for p in s["spec"]["ports"].as_vec().expect("ports") {
            let t = p["targetPort"].as_str().expect("named targetPort");
            named_port(t);
        }
    }
    let pdb = by_kind(&docs, "PodDisruptionBudget", "kuzzle-gateway");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels), "{f}: the budget covers the gateways");
    println!("NOT RUN: `kubectl apply --dry-run=server` (no Kubernetes API server here); checked by parsing");
}

#[test]
fn keepalived_pair_checks_the_port_its_gateways_serve() {
    let conf = read("deploy/keepalived/keepalived.conf");
    let gw = read("deploy/keepalived/gateway.toml");
    check_text(&gw, "deploy/keepalived/gateway.toml");
    let cfg: toml::Table = gw.parse().expect("TOML");
    assert!(cfg.contains_key("fleet"), "the pair is one fleet");
    assert!(!cfg["fleet"].as_table().is_some_and(|f| f.contains_key("name")), "one file on both machines");
    let ops = port(cfg["stats"]["listen"].as_str().expect("[stats] listen"));
    // The check script keepalived runs is the one shipped, and it asks /healthz on that port.
    let script = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("script \""))
        .and_then(|s| s.split('"').next())
        .expect("a vrrp_script");
    let name = Path::new(script).file_name().expect("script file name").to_string_lossy().into_owned();
    let shipped = format!("deploy/keepalived/{name}");
    let body = read(&shipped);
    assert!(body.contains(&format!("127.0.0.1:{ops}/healthz")), "{shipped} checks another port than {ops}");
    let sh = std::process::Command::new("sh").arg("-n").arg(root().join(&shipped)).status().expect("sh -n");
    assert!(sh.success(), "{shipped}: shell syntax");
    assert!(
        conf.contains("track_script") && conf.contains("virtual_ipaddress"),
        "keepalived.conf: VIP tracked by the check"
    );
    // Balanced braces: keepalived refuses a file that does not close its blocks.
    assert_eq!(conf.matches('{').count(), conf.matches('}').count(), "keepalived.conf braces");
    match std::process::Command::new("keepalived").arg("--version").output() {
        Ok(_) => {
            let out = std::process::Command::new("keepalived")
                .args(["--config-test", "-f"])
                .arg(root().join("deploy/keepalived/keepalived.conf"))
                .output()
                .expect("keepalived --config-test");
            assert!(out.status.success(), "keepalived --config-test: {}", String::from_utf8_lossy(&out.stderr));
        }
        Err(_) => println!("NOT RUN: keepalived --config-test (keepalived is not installed here)"),
    }
}

#[test]
fn deploy_paths_named_in_the_docs_exist() {
    for doc in ["docs/fleet.md", "README.md"] {
        let text = read(doc);
        let mut named = 0;
        for part in text.split("deploy/").skip(1) {
            let rel: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || "-_./".contains(*c)).collect();
            let rel = rel.trim_end_matches(['.', '/']);
            if rel.is_empty() {
                continue;
            }
            named += 1;
            assert!(root().join("deploy").join(rel).exists(), "{doc} names deploy/{rel}, which does not exist");
        }
        assert!(named > 0, "{doc} names no deploy/ file");
    }
}
