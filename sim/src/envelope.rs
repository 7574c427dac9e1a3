//! Kuzzle's response envelope and API errors, shared by the HTTP and WebSocket sides.

use serde_json::{json, Map, Value};

/// The body real Kuzzle 2.56 answers an HTTP request with while it shuts down, as measured
/// (status 503): the status and the error alone, not a whole envelope.
pub(crate) const HTTP_SHUTTING_DOWN: &str = r#"{"status":503,"error":{"id":"api.process.shutting_down","code":33685511,"message":"Rejected: this node is shutting down."}}"#;

/// A Kuzzle API error (`{"status", "message", "id"}`, and `code` when set, in the envelope's
/// `error`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    /// HTTP status of the error, also the envelope's `status`.
    pub status: u16,
    /// What went wrong, for a person reading the answer.
    pub message: String,
    /// Kuzzle 2's error identifier (e.g. `api.process.action_not_found`).
    pub id: &'static str,
    /// Kuzzle 2's numeric error code (domain, subdomain, error), where the sim mimics one exactly.
    pub code: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, id: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), id, code: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "api.assert.invalid_argument", message)
    }

    /// What Kuzzle 2.56 answers a WebSocket request with while it shuts down: its network entry
    /// point rejects the request before the API funnel sees it (`EntryPoint.execute`), with
    /// `network.entrypoint.shutting_down` (0x03040003), in a whole response envelope, so an SDK
    /// still matches it to its request.
    pub fn ws_shutting_down() -> ApiError {
        ApiError {
            status: 503,
            message: "Rejected: instance is shutting down".into(),
            id: "network.entrypoint.shutting_down",
            code: Some(0x0304_0003),
        }
    }

    pub fn to_value(&self) -> Value {
        let mut v = json!({"status": self.status, "message": self.message, "id": self.id});
        if let (Some(code), Value::Object(m)) = (self.code, &mut v) {
            m.insert("code".into(), Value::from(code));
        }
        v
    }
}

/// One response envelope. Unset fields are `null`, as Kuzzle sends them.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    /// `requestId`: the client's (a new one when it sent none); on HTTP, the `X-Kuzzle-Request-Id`.
    pub request_id: Value,
    /// `status`, also the HTTP status of an HTTP answer.
    pub status: u16,
    /// `error`: `null` on success.
    pub error: Option<ApiError>,
    /// `controller`: the request's, echoed, or the route's (`null` when unknown).
    pub controller: Value,
    /// `action`: the request's, echoed, or the route's (`null` when unknown).
    pub action: Value,
    /// `index`: the request's, echoed (`null` when it has none).
    pub index: Value,
    /// `collection`: the request's, echoed (`null` when it has none).
    pub collection: Value,
    /// `volatile`: the request's volatile data, echoed as Kuzzle does.
    pub volatile: Value,
    /// `result`: what the action returns (`null` on most errors).
    pub result: Value,
    /// WebSocket only: the SDKs match a response on `room`, which Kuzzle sets to the requestId.
    pub room: Option<Value>,
}

impl Envelope {
    pub fn ok(result: Value) -> Envelope {
        Envelope { status: 200, result, ..Envelope::default() }
    }

    pub fn err(error: ApiError) -> Envelope {
        Envelope { status: error.status, error: Some(error), ..Envelope::default() }
    }

    /// Route names (`controller`, `action`).
    pub fn route(mut self, controller: &str, action: &str) -> Envelope {
        self.controller = Value::from(controller);
        self.action = Value::from(action);
        self
    }

    pub fn to_value(&self, node: &str) -> Value {
        let mut m = Map::new();
        m.insert("requestId".into(), self.request_id.clone());
        m.insert("status".into(), Value::from(self.status));
        m.insert("error".into(), self.error.as_ref().map_or(Value::Null, ApiError::to_value));
        m.insert("controller".into(), self.controller.clone());
        m.insert("action".into(), self.action.clone());
        m.insert("index".into(), self.index.clone());
        m.insert("collection".into(), self.collection.clone());
        m.insert("volatile".into(), self.volatile.clone());
        m.insert("result".into(), self.result.clone());
        if let Some(room) = &self.room {
            m.insert("room".into(), room.clone());
        }
        m.insert("node".into(), Value::from(node));
        Value::Object(m)
    }

    pub fn render(&self, node: &str) -> String {
        self.to_value(node).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutting_down_answers() {
        // Kuzzle's codes are domain << 24 | subdomain << 16 | error: api (2), process (2), 7.
        let http: Value = serde_json::from_str(HTTP_SHUTTING_DOWN).expect("JSON");
        assert_eq!(http["status"], 503);
        assert_eq!(http["error"]["code"], (2 << 24) | (2 << 16) | 7);
        assert_eq!(http["error"]["id"], "api.process.shutting_down");
        // network (3), entrypoint (4), 3.
        let ws = ApiError::ws_shutting_down().to_value();
        assert_eq!(ws["code"], (3 << 24) | (4 << 16) | 3);
        assert_eq!(ws["status"], 503);
        assert!(ApiError::bad_request("x").to_value().get("code").is_none(), "no code unless set");
    }
}
