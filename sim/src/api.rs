//! The Kuzzle API actions the sim implements, shared by the WebSocket and HTTP sides, and their HTTP routes (`server:publicApi`).
//!
//! A request is Kuzzle's JSON request (`{"controller", "action", "requestId", "index",
//! "collection", "body", "volatile", ...}`), whatever the protocol it came in: the HTTP side first
//! turns a route into one ([`http_request`]).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::envelope::{ApiError, Envelope};
use crate::node::Node;
use crate::realtime::{ConnId, Published};
use crate::util::{now_ms, random_uuid};

/// One HTTP route: verb and URL pattern.
type Route = (&'static str, &'static str);

/// The actions the sim implements, each with its Kuzzle 2 HTTP routes (`verb`, `url` with
/// `:param` segments), in Kuzzle's order. Actions without a route need a WebSocket (or the
/// generic `POST /_query`). `server:publicApi` and the HTTP router both read this table, so
/// what the SDK is told and what the sim serves cannot differ.
const ACTIONS: &[(&str, &str, &[Route])] = &[
    ("auth", "checkToken", &[("POST", "/_checkToken")]),
    ("auth", "getCurrentUser", &[("GET", "/users/_me")]),
    ("realtime", "count", &[]),
    ("realtime", "publish", &[("POST", "/:index/:collection/_publish")]),
    ("realtime", "subscribe", &[]),
    ("realtime", "unsubscribe", &[]),
    ("server", "healthCheck", &[("GET", "/_healthCheck")]),
    ("server", "info", &[("GET", "/"), ("GET", "/_serverInfo")]),
    ("server", "now", &[("GET", "/_now")]),
    ("server", "publicApi", &[("GET", "/_publicApi")]),
];

/// The generic HTTP route: its JSON body is the whole request, as on a WebSocket.
pub(crate) const QUERY_ROUTE: &str = "/_query";

/// `server:publicApi` result: `{controller: {action: {controller, action, http: [{verb, url}]}}}`
/// (`http` omitted for WebSocket-only actions), as Kuzzle 2 describes its API to the SDKs.
pub(crate) fn public_api() -> Value {
    let mut controllers = Map::new();
    for (controller, action, routes) in ACTIONS {
        let mut def = Map::new();
        def.insert("controller".into(), Value::from(*controller));
        def.insert("action".into(), Value::from(*action));
        if !routes.is_empty() {
            let http: Vec<Value> = routes.iter().map(|(verb, url)| json!({"verb": verb, "url": url})).collect();
            def.insert("http".into(), Value::Array(http));
        }
        let entry = controllers.entry(*controller).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(actions) = entry {
            actions.insert((*action).to_owned(), Value::Object(def));
        }
    }
    Value::Object(controllers)
}

/// `server:info` result (also `GET /` and `GET /_serverInfo`); `api.routes` is the public API
/// too, which SDKs older than `server:publicApi` read.
pub(crate) fn server_info(node: &Node) -> Value {
    json!({"serverInfo": {"kuzzle": {
        "version": node.kuzzle_version(),
        "nodeName": node.name,
        "api": {"routes": public_api()},
    }}})
}

/// An HTTP request as a Kuzzle request, when `verb` + `path` is one of [`ACTIONS`]' routes:
/// the URL parameters, then the query string arguments (a name alone is `true`), then `body`
/// (the request body, parsed) and `volatile` (the `x-kuzzle-volatile` header, parsed).
pub(crate) fn http_request(
    verb: &str,
    path: &str,
    query: Option<&str>,
    body: Option<Value>,
    volatile: Option<Value>,
) -> Option<Value> {
    let (controller, action, params) = ACTIONS.iter().find_map(|(controller, action, routes)| {
        routes.iter().find_map(|(v, url)| {
            if *v != verb {
                return None;
            }
            match_url(url, path).map(|params| (*controller, *action, params))
        })
    })?;
    let mut req = Map::new();
    for (k, v) in params {
        req.insert(k, Value::from(v));
    }
    for (k, v) in query.map(parse_query).unwrap_or_default() {
        req.entry(k).or_insert_with(|| v.map_or(Value::Bool(true), Value::from));
    }
    req.insert("controller".into(), Value::from(controller));
    req.insert("action".into(), Value::from(action));
    if let Some(b) = body {
        req.insert("body".into(), b);
    }
    if let Some(v) = volatile {
        req.insert("volatile".into(), v);
    }
    Some(Value::Object(req))
}

/// The `:param` values of `path` when it matches the route `url` (segments compared one by one;
/// a parameter takes one non-empty segment, percent-decoded).
fn match_url(url: &str, path: &str) -> Option<HashMap<String, String>> {
    let (u, p): (Vec<&str>, Vec<&str>) = (url.split('/').collect(), path.split('/').collect());
    if u.len() != p.len() {
        return None;
    }
    let mut params = HashMap::new();
    for (us, ps) in u.iter().zip(&p) {
        match us.strip_prefix(':') {
            Some(name) if !ps.is_empty() => {
                params.insert(name.to_owned(), percent_decode(ps)?);
            }
            Some(_) => return None,
            None if us == ps => {}
            None => return None,
        }
    }
    Some(params)
}

/// `a=1&b&c=%2F` as (name, value) pairs, percent-decoded (`+` is a space); undecodable pairs
/// are skipped.
fn parse_query(q: &str) -> Vec<(String, Option<String>)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (kv, None),
            };
            let k = percent_decode(&k.replace('+', " "))?;
            let v = match v {
                Some(v) => Some(percent_decode(&v.replace('+', " "))?),
                None => None,
            };
            Some((k, v))
        })
        .collect()
}

/// The value of argument `name` in a query string (`""` for a name alone), percent-decoded.
pub(crate) fn query_arg(query: &str, name: &str) -> Option<String> {
    parse_query(query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v.unwrap_or_default())
}

/// `%XX` escapes decoded; `None` on a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A string argument of the request, required.
fn required_str<'a>(req: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    match req.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::new(400, "api.assert.missing_argument", format!("Missing argument \"{name}\".")))
        }
        Some(_) => Err(ApiError::new(400, "api.assert.invalid_type", format!("Wrong type for argument \"{name}\"."))),
    }
}

/// Run one Kuzzle request for connection `conn` (`None` over HTTP: no subscriptions); returns
/// its envelope and a published document for the caller to fan out.
pub(crate) fn handle(node: &Node, conn: Option<ConnId>, req: &Value) -> (Envelope, Option<Published>) {
    let controller = req.get("controller").and_then(Value::as_str).unwrap_or("");
    let action = req.get("action").and_then(Value::as_str).unwrap_or("");
    let (env, published) = match route(node, conn, controller, action, req) {
        Ok((r, p)) => (Envelope::ok(r), p),
        Err(e) => (Envelope::err(e), None),
    };
    (echo_request(env, req), published)
}

/// Answer `req` with `error` without running it (a node shutting down rejects requests so).
pub(crate) fn reject(req: &Value, error: ApiError) -> Envelope {
    echo_request(Envelope::err(error), req)
}

/// The envelope's fields that echo the request: requestId (a new one when it has none),
/// controller, action, index, collection, volatile.
fn echo_request(mut env: Envelope, req: &Value) -> Envelope {
    env.request_id = match req.get("requestId") {
        Some(Value::String(s)) => Value::from(s.as_str()),
        Some(Value::Number(n)) => Value::from(n.to_string()),
        _ => Value::from(random_uuid()),
    };
    env.controller = req.get("controller").cloned().unwrap_or(Value::Null);
    env.action = req.get("action").cloned().unwrap_or(Value::Null);
    env.index = req.get("index").cloned().unwrap_or(Value::Null);
    env.collection = req.get("collection").cloned().unwrap_or(Value::Null);
    env.volatile = req.get("volatile").cloned().unwrap_or(Value::Null);
    env
}

/// The services `server:healthCheck` reports on.
const SERVICES: [&str; 3] = ["internalCache", "memoryStorage", "storageEngine"];

/// `server:healthCheck`: `{"status", "services": {name: colour}}` for every service, or only
/// those `services` lists (comma-separated, as Kuzzle's `?services=internalCache,...`; unknown
/// names are ignored); all green when the ready knob is on, all red and `Err` (503) when off.
pub(crate) fn health_check(node: &Node, services: Option<&str>) -> Result<Value, (ApiError, Value)> {
    let wanted = |name: &str| services.is_none_or(|list| list.split(',').any(|s| s.trim() == name));
    let ready = node.is_ready();
    let colour = if ready { "green" } else { "red" };
    let listed: Map<String, Value> =
        SERVICES.iter().filter(|s| wanted(s)).map(|s| ((*s).to_owned(), Value::from(colour))).collect();
    let result = json!({"status": colour, "services": listed});
    if ready {
        Ok(result)
    } else {
        Err((ApiError::new(503, "api.process.unhealthy", "The node is not ready"), result))
    }
}

type Routed = Result<(Value, Option<Published>), ApiError>;

/// The connection a real-time subscription belongs to: HTTP has none.
fn connection(conn: Option<ConnId>, controller: &str, action: &str) -> Result<ConnId, ApiError> {
    conn.ok_or_else(|| {
        ApiError::new(
            400,
            "api.assert.unsupported_protocol",
            format!("\"{controller}:{action}\" needs a persistent connection (WebSocket), not HTTP"),
        )
    })
}

fn route(node: &Node, conn: Option<ConnId>, controller: &str, action: &str, req: &Value) -> Routed {
    let body = req.get("body").unwrap_or(&Value::Null);
    let ok = |v: Value| -> Routed { Ok((v, None)) };
    match (controller, action) {
        ("", _) => Err(ApiError::new(400, "api.assert.missing_argument", "Missing argument \"controller\".")),
        (_, "") => Err(ApiError::new(400, "api.assert.missing_argument", "Missing argument \"action\".")),
        ("server", "now") => ok(json!({"now": now_ms()})),
        ("server", "info") => ok(server_info(node)),
        ("server", "publicApi") => ok(public_api()),
        ("server", "healthCheck") => {
            let services = match req.get("services") {
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            };
            health_check(node, services).map(|r| (r, None)).map_err(|(e, _)| e)
        }
        // The SDK asks these on a reconnection when it believes it is logged in; the sim has only
        // the anonymous user.
        ("auth", "checkToken") => ok(json!({"valid": true, "kuid": "-1", "expiresAt": -1, "state": "Valid token"})),
        ("auth", "getCurrentUser") => {
            ok(json!({"_id": "-1", "_source": {"profileIds": ["anonymous"]}, "strategies": []}))
        }
        ("realtime", "subscribe") => {
            let conn = connection(conn, controller, action)?;
            let index = required_str(req, "index")?;
            let collection = required_str(req, "collection")?;
            let (room_id, channel) = node.realtime.subscribe(conn, index, collection, body, req)?;
            ok(json!({"roomId": room_id, "channel": channel}))
        }
        ("realtime", "unsubscribe") => {
            let conn = connection(conn, controller, action)?;
            let room_id = required_str(body, "roomId")?;
            node.realtime.unsubscribe(conn, room_id)?;
            ok(json!({"roomId": room_id}))
        }
        ("realtime", "count") => {
            let room_id = required_str(body, "roomId")?;
            ok(json!({"count": node.realtime.count(room_id)?}))
        }
        ("realtime", "publish") => {
            let index = required_str(req, "index")?;
            let collection = required_str(req, "collection")?;
            if !body.is_object() {
                return Err(ApiError::new(400, "api.assert.body_required", "The request must specify a body."));
            }
            let doc = Published {
                index: index.to_owned(),
                collection: collection.to_owned(),
                body: body.clone(),
                volatile: req.get("volatile").cloned().unwrap_or(Value::Null),
                id: req.get("_id").cloned().unwrap_or(Value::Null),
            };
            Ok((json!({"published": true}), Some(doc)))
        }
        (c, a) => {
            Err(ApiError::new(404, "api.process.action_not_found", format!("API action \"{c}\":\"{a}\" not found")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_api_lists_every_action_and_its_routes() {
        let api = public_api();
        assert_eq!(api["server"]["now"]["http"], json!([{"verb": "GET", "url": "/_now"}]));
        assert_eq!(api["server"]["info"]["http"][0], json!({"verb": "GET", "url": "/"}));
        assert_eq!(api["realtime"]["publish"]["http"][0]["url"], "/:index/:collection/_publish");
        assert_eq!(api["realtime"]["subscribe"]["action"], "subscribe");
        assert!(api["realtime"]["subscribe"].get("http").is_none(), "WebSocket only");
    }

    #[test]
    fn http_routes_become_requests() {
        let r = http_request(
            "POST",
            "/i%2Fx/c/_publish",
            Some("_id=d%201&flag&refresh=wait_for"),
            Some(json!({"a": 1})),
            Some(json!({"v": 2})),
        )
        .expect("publish route");
        assert_eq!(
            r,
            json!({"controller": "realtime", "action": "publish", "index": "i/x", "collection": "c", "_id": "d 1",
                   "flag": true, "refresh": "wait_for", "body": {"a": 1}, "volatile": {"v": 2}})
        );
        assert_eq!(http_request("GET", "/", None, None, None).expect("info")["action"], "info");
        assert_eq!(http_request("GET", "/_serverInfo", None, None, None).expect("info")["action"], "info");
        assert_eq!(http_request("GET", "/_publicApi", None, None, None).expect("api")["action"], "publicApi");
        assert!(http_request("GET", "/i/c/_publish", None, None, None).is_none(), "wrong verb");
        assert!(http_request("POST", "//c/_publish", None, None, None).is_none(), "empty parameter");
        assert!(http_request("GET", "/no/such", None, None, None).is_none());
        // A URL parameter wins over a query argument of the same name.
        let r = http_request("POST", "/i/c/_publish", Some("index=x&bad=%zz"), None, None).expect("publish");
        assert_eq!(r["index"], "i");
        assert!(r.get("bad").is_none(), "undecodable argument skipped");
    }
}
