//! Data plane: Kuzzle's JSON response envelope, for every answer the gateway writes itself (proxy errors and
//! the ops listener): `{"status": N, "error": {"status": N, "message": "..."}, "result": null}`.

use bytes::Bytes;
use http::StatusCode;

/// The envelope for `status`: an error carrying `message` (4xx/5xx), or `message` as the result.
pub fn body(status: StatusCode, message: &str) -> Bytes {
    let code = status.as_u16();
    let ok = status.is_success();
    let v = serde_json::json!({
        "requestId": null,
        "status": code,
        "error": if ok { serde_json::Value::Null } else { serde_json::json!({"status": code, "message": message}) },
        "controller": null,
        "action": null,
        "index": null,
        "collection": null,
        "volatile": null,
        "result": if ok { serde_json::json!(message) } else { serde_json::Value::Null },
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_and_success_shapes() {
        let e: serde_json::Value =
            serde_json::from_slice(&body(StatusCode::SERVICE_UNAVAILABLE, "no node")).expect("json");
        assert_eq!(e["status"], 503);
        assert_eq!(e["error"]["status"], 503);
        assert_eq!(e["error"]["message"], "no node");
        assert!(e["result"].is_null());
        let ok: serde_json::Value = serde_json::from_slice(&body(StatusCode::OK, "reloaded")).expect("json");
        assert!(ok["error"].is_null());
        assert_eq!(ok["result"], "reloaded");
    }
}
