//! Unit tests of the parent module.

use super::*;

#[test]
fn error_envelope() {
    let r = json_error(StatusCode::SERVICE_UNAVAILABLE, "no node available");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
}

/// A response is moved whole several times between the node's answer and hyper (each layer of
/// the request's future returns it): its size is paid in memcpy on every request. 496 bytes
/// before the body's stall timer was boxed and its first frame held as bytes.
#[test]
fn a_response_stays_small() {
    let size = std::mem::size_of::<Response<DownBody>>();
    assert!(size <= 352, "Response<DownBody> is {size} bytes");
}
