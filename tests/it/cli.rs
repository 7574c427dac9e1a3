//! The binary's command line as an operator meets it: log formats (JSON for shippers, no colour
//! codes in a pipe) and the message when the default configuration file is not where it is looked for.
use crate::common;

use common::*;

/// The first log line the gateway prints once serving, in the given format.
fn first_serving_line(args: &[&str]) -> String {
    let gw = Gateway::builder().config(&gateway_toml("")).args(args).start();
    gw.wait_line(SERVING, READY_TIMEOUT)
}

#[test]
fn json_logs_are_one_object_a_line() {
    let line = first_serving_line(&["--log-format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["message"], "kuzzle-gateway serving", "{line}");
}

#[test]
fn text_logs_carry_no_colour_codes_in_a_pipe() {
    let line = first_serving_line(&[]);
    assert!(!line.contains('\u{1b}'), "ANSI escape in piped logs: {line:?}");
}

#[test]
fn missing_default_config_says_where_it_looked() {
    let dir = scratch_dir("cli-default");
    let out = Gateway::run_in(&dir, &["--check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy-configs/gateway.toml"), "{err}");
    assert!(err.contains("relative to the current directory"), "{err}");
    assert!(err.contains(&dir.display().to_string()), "names the directory: {err}");
}
