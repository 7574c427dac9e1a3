//! Unit tests of the parent module.

use super::*;

#[test]
fn error_envelope() {
    let r = json_error(StatusCode::SERVICE_UNAVAILABLE, "no node available");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
}
