//! The root suite's glue: the gateway in-process on ephemeral ports; everything else is the shared kit.
#![allow(dead_code)]

use kuzzle_gateway::app::{self, Handle};
use kuzzle_gateway::config::Config;
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

/// Start an in-process gateway from configuration text.
pub async fn gateway(toml: &str) -> Handle {
    let cfg = Config::parse(toml, "<test>").unwrap_or_else(|e| panic!("test config invalid: {e}"));
    app::bind_and_start(cfg).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}
