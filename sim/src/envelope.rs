//! Kuzzle's response envelope and API errors, shared by the HTTP and WebSocket sides.

use serde_json::{json, Map, Value};

/// A Kuzzle API error (`{"status", "message", "id"}` in the envelope's `error`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    /// Kuzzle 2's error identifier (e.g. `api.process.action_not_found`).
    pub id: &'static str,
}

impl ApiError {
    pub fn new(status: u16, id: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), id }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "api.assert.invalid_argument", message)
    }

    pub fn to_value(&self) -> Value {
        json!({"status": self.status, "message": self.message, "id": self.id})
    }
}

/// One response envelope. Unset fields are `null`, as Kuzzle sends them.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub request_id: Value,
    pub status: u16,
    pub error: Option<ApiError>,
    pub controller: Value,
    pub action: Value,
    pub index: Value,
    pub collection: Value,
    pub volatile: Value,
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
