//! The root suite's glue: the gateway in-process on ephemeral ports; everything else is the shared kit.
#![allow(dead_code)]

use kuzzle_gateway::app::{self, Handle};
use kuzzle_gateway::control::config::Config;
pub use kuzzle_test_support::*;

/// The header a state-changing ops request needs (it proves it is no cross-site form).
pub const JSON: (&str, &str) = ("content-type", "application/json");

/// `[[node]]` lines for these sims.
pub fn nodes_toml(sims: &[&Sim]) -> String {
    sims.iter().map(|s| format!("[[node]]\nname = \"{}\"\naddress = \"{}\"\n", s.name, s.addr)).collect()
}

/// Gateway configuration text on ephemeral ports, with the given extra sections appended.
/// `extra` must not contain `[gateway]` listen or `[stats]` listen (they are set here).
pub fn gateway_toml(extra: &str) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[stats]\nlisten = \"127.0.0.1:0\"\n{extra}")
}

/// A [`gateway_toml`] configuration with `[gateway] fast_lane` set (tests that run on the lane
/// and on hyper's path).
pub fn with_fast_lane(toml: &str, lane: bool) -> String {
    assert!(toml.starts_with("[gateway]\n"), "not a gateway_toml configuration: {toml}");
    toml.replacen("[gateway]\n", &format!("[gateway]\nfast_lane = {lane}\n"), 1)
}

/// Start an in-process gateway from configuration text.
pub async fn gateway(toml: &str) -> Handle {
    let cfg = Config::parse(toml, "<test>").unwrap_or_else(|e| panic!("test config invalid: {e}"));
    app::bind_and_start(cfg).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

/// A copy of the configuration at `path` whose certificate pairs (`[tls]` cert and key, and each
/// `[[tls.certificate]]`) point at fresh self-signed pairs in `dir`, so `--check` sees it as an
/// operator who followed its instructions would; the file itself when it has no `[tls]`.
pub fn with_test_certs(path: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
    let Some(tls) = t.get("tls").and_then(|v| v.as_table()) else { return path.to_path_buf() };
    std::fs::create_dir_all(dir).expect("certificate dir");
    let mut pairs: Vec<(String, &toml::Table)> = Vec::new();
    if tls.contains_key("cert") || tls.contains_key("key") {
        pairs.push(("[tls]".into(), tls));
    }
    for (i, e) in tls.get("certificate").and_then(|v| v.as_array()).into_iter().flatten().enumerate() {
        pairs.push((format!("[[tls.certificate]] {i}"), e.as_table().expect("[[tls.certificate]] is a table")));
    }
    assert!(!pairs.is_empty(), "{}: [tls] without a certificate pair", path.display());
    let mut out = text.clone();
    for (i, (what, table)) in pairs.iter().enumerate() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("generate certificate");
        let (cert, key) = (dir.join(format!("fullchain-{i}.pem")), dir.join(format!("key-{i}.pem")));
        std::fs::write(&cert, ck.cert.pem()).expect("write cert");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
        for (k, new) in [("cert", &cert), ("key", &key)] {
            let old = table
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("{}: {what} {k} missing", path.display()));
            let quoted = format!("\"{old}\"");
            assert_eq!(text.matches(&quoted).count(), 1, "{}: {what} {k} path appears more than once", path.display());
            out = out.replace(&quoted, &format!("{:?}", new.display().to_string()));
        }
    }
    let copy = dir.join(path.file_name().expect("file name"));
    std::fs::write(&copy, out).expect("write config copy");
    copy
}

/// `kuzzle-gateway --config FILE --check`, run as a process.
pub fn run_check(file: &std::path::Path) -> std::process::Output {
    Gateway::run(&["--config", file.to_str().expect("utf-8 path"), "--check"])
}

/// `kuzzle-gateway --config FILE --check` must pass (`what` names the file in the failure); its
/// standard output.
pub fn check_config(file: &std::path::Path, what: &str) -> String {
    let out = run_check(file);
    assert!(
        out.status.success(),
        "{what}: --check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
