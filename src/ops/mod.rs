//! Ops: the ops listener (7575): basic auth, stats page and feeds, metrics, cluster status and
//! reset, reload, node maintenance states. Holds narrow handles, never the whole gateway.

pub mod hastats;
pub mod metrics;

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::cluster::ClusterState;
use crate::control::reload::{ReloadHandle, ReloadStats};
use crate::core::backend::AdminState;
use crate::core::{Core, Gate, Lifecycle};

pub type OpsResponse = Response<Full<Bytes>>;

/// What the ops endpoints read and write.
pub struct Ops {
    /// Nodes and counters (read), operator states (write).
    pub core: Arc<Core>,
    /// `POST /reload` asks the reload task.
    pub reload: ReloadHandle,
    /// Reload counts and the last outcome, for the stats page and /metrics.
    pub reloads: Arc<ReloadStats>,
    /// Membership status, reset and counters.
    pub cluster: Arc<ClusterState>,
    /// `[fleet]`: operator states go to every gateway; the fleet's view on the stats.
    pub fleet: Arc<crate::control::fleet::Fleet>,
    /// Ops connections run on the background tracker and stop at shutdown.
    pub life: Lifecycle,
    /// Certificates in use and refused renewals, for the stats page.
    pub tls: crate::control::tls::TlsSlot,
    /// Open once the gateway can route: `/healthz` answers 200 from then until shutdown.
    pub routable: Gate,
}

impl Ops {
    fn view(&self) -> crate::ops::hastats::StatsView {
        let mut v = crate::ops::hastats::collect(&self.core, &self.reloads);
        v.process.tls = self.tls.view(&self.core.config());
        self.fleet.fill(&mut v);
        v
    }
}

/// Serve the ops listener until `stop`.
pub async fn serve(ops: Arc<Ops>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "ops accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let g = ops.clone();
        let stop2 = stop.clone();
        ops.life.background.spawn(async move {
            let svc = service_fn(move |req| {
                let g = g.clone();
                async move { Ok::<_, Infallible>(handle(&g, req).await) }
            });
            let mut b = http1::Builder::new();
            // Bounded like the client side: an unfinished head costs at most 64 KiB here.
            b.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(30)).max_buf_size(64 * 1024);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop2.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Route one ops request.
pub async fn handle(ops: &Ops, req: Request<Incoming>) -> OpsResponse {
    let path = req.uri().path().to_string();
    // Probes, without auth: liveness (the process answers) and readiness (send it clients).
    if path == "/livez" {
        return text(StatusCode::OK, "ok\n");
    }
    if path == "/healthz" {
        return readiness(ops);
    }
    let cfg = ops.core.config();
    if let Some(resp) = check_auth(&cfg.stats, req.headers()) {
        return resp;
    }
    let uri = cfg.stats.uri.as_str();
    let m = req.method().clone();
    if m == Method::POST && is_state_change(&path) {
        if let Some(refused) = cross_site(&req) {
            return refused;
        }
    }
    match (&m, path.as_str()) {
        // haproxy's own spellings work too: `/hastats;norefresh`, `/hastats;csv;norefresh`.
        (&Method::GET | &Method::HEAD, p) if p == uri || p.strip_prefix(uri) == Some(";norefresh") => {
            html(crate::ops::hastats::html(&ops.view(), &page_options(&req, uri), cfg.gateway.listen.port()))
        }
        (&Method::GET | &Method::HEAD, p) if matches!(p.strip_prefix(uri), Some(";csv" | ";csv;norefresh")) => typed(
            StatusCode::OK,
            "text/csv; charset=utf-8",
            crate::ops::hastats::csv(&ops.view(), &cfg.health, ops.life.shutdown.is_cancelled()),
        ),
        (&Method::GET | &Method::HEAD, p) if p.strip_prefix(uri) == Some(";json") => {
            typed(StatusCode::OK, "application/json", crate::ops::hastats::json(&ops.view()))
        }
        (&Method::GET | &Method::HEAD, "/metrics") => typed(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::ops::metrics::render(&ops.view(), &ops.cluster.metrics) + &ops.fleet.metrics_text(),
        ),
        (&Method::GET, "/fleet/status") => {
            typed(StatusCode::OK, "application/json", ops.fleet.status_json().to_string())
        }
        (&Method::GET, "/cluster/status") => {
            let v = crate::control::cluster::status(&ops.cluster, &ops.core).await;
            typed(StatusCode::OK, "application/json", v.to_string())
        }
        (&Method::POST, "/cluster/reset") => match crate::control::cluster::reset(&ops.cluster).await {
            Ok(v) => typed(StatusCode::OK, "application/json", v.to_string()),
            Err(e) => json_msg(StatusCode::SERVICE_UNAVAILABLE, &e),
        },
        (&Method::POST, "/reload") => match ops.reload.reload().await {
            Ok(_) => json_msg(StatusCode::OK, "reloaded"),
            Err(e) => json_msg(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        // `/nodes/state` (no name) overlaps both affixes: it names no node (404 below).
        (&Method::POST, p) if node_of_state_path(p).is_some() => {
            let name = node_of_state_path(p).unwrap_or_default().to_string();
            set_state(ops, &name, req).await
        }
        (&Method::POST, p) if p.starts_with("/nodes/") => {
            json_msg(StatusCode::NOT_FOUND, &format!("no node in {path}: POST /nodes/<name>/state"))
        }
        (_, p)
            if p == uri
                || p.starts_with("/nodes/")
                || p == "/metrics"
                || p.starts_with("/cluster/")
                || p.starts_with("/fleet/")
                || p == "/reload" =>
        {
            json_msg(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => json_msg(StatusCode::NOT_FOUND, &format!("no ops endpoint at {path}")),
    }
}

/// The node a `/nodes/<name>/state` path names; None when the name is empty.
fn node_of_state_path(path: &str) -> Option<&str> {
    path.strip_prefix("/nodes/")?.strip_suffix("/state").filter(|n| !n.is_empty())
}

/// `/healthz`: 200 once the gateway can route (first membership read and checks done, or the
/// state an upgrade handed over), 503 before and while it shuts down, so that a balancer or an
/// orchestrator sends clients only to a gateway that can serve them.
fn readiness(ops: &Ops) -> OpsResponse {
    if ops.life.shutdown.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !ops.routable.is_open() {
        text(StatusCode::SERVICE_UNAVAILABLE, "starting: first membership read and node checks not done\n")
    } else {
        text(StatusCode::OK, "ok\n")
    }
}

/// Endpoints that change state (the ones a forged cross-site request must not reach).
fn is_state_change(path: &str) -> bool {
    path == "/reload" || path == "/cluster/reset" || (path.starts_with("/nodes/") && path.ends_with("/state"))
}

/// A browser sends a cached basic auth with any request to this listener, including one a page
/// of another site makes (a form, an image). A state change is obeyed only when it cannot be such
/// a request: no `Origin` or `Referer` of another host than the one asked, and a non-simple request
/// (`Content-Type: application/json` or an `X-Requested-With` header, which a cross-site page
/// cannot send without a CORS preflight this listener never grants). The 403 to send, if any.
fn cross_site(req: &Request<Incoming>) -> Option<OpsResponse> {
    let h = req.headers();
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    for name in [header::ORIGIN, header::REFERER] {
        let Some(v) = h.get(&name) else { continue };
        let authority = v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<http::Uri>().ok())
            .and_then(|u| u.authority().map(|a| a.as_str().to_ascii_lowercase()));
        if authority.is_none() || authority != host {
            let msg = format!(
                "cross-site request refused: {name} {:?} is not this ops listener ({})",
                v.to_str().unwrap_or("(not text)"),
                host.as_deref().unwrap_or("no Host")
            );
            return Some(json_msg(StatusCode::FORBIDDEN, &msg));
        }
    }
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("application/json"));
    if !json && !h.contains_key("x-requested-with") {
        return Some(json_msg(
            StatusCode::FORBIDDEN,
            "state-changing ops requests need Content-Type: application/json (or an X-Requested-With header), which a page of another site cannot send",
        ));
    }
    None
}

/// What the stats page needs from its request: the host the browser used (node links point at
/// the client port of that host) and whether `?norefresh` was asked.
fn page_options(req: &Request<Incoming>, uri: &str) -> crate::ops::hastats::HtmlOptions {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().trim_start_matches('[').trim_end_matches(']').to_string());
    let no_refresh = req.uri().path().ends_with(";norefresh")
        || req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "norefresh"));
    crate::ops::hastats::HtmlOptions { host, no_refresh, uri: uri.to_string() }
}

/// `POST /nodes/<name>/state` with `ready`, `drain` or `maint` as the body (plain or
/// `{"state": "..."}`) or as `?state=`. With `[fleet]` the state goes to every gateway (202 when
/// Redis could not take it: applied here, shared when Redis answers again).
async fn set_state(ops: &Ops, name: &str, req: Request<Incoming>) -> OpsResponse {
    let core = &ops.core;
    let from_query =
        req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("state="))).map(str::to_string);
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_msg(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let raw = from_query.unwrap_or_else(|| {
        let s = String::from_utf8_lossy(&body).trim().to_string();
        serde_json::from_str::<serde_json::Value>(&s)
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_string))
            .unwrap_or(s)
    });
    let state = match raw.to_ascii_lowercase().as_str() {
        "ready" | "up" => AdminState::Ready,
        "drain" => AdminState::Drain,
        "maint" => AdminState::Maint,
        other => {
            return json_msg(StatusCode::BAD_REQUEST, &format!("unknown state {other:?}: use ready, drain or maint"))
        }
    };
    if core.snapshot().node(name).is_none() {
        return json_msg(StatusCode::NOT_FOUND, &format!("no node named {name:?}"));
    }
    tracing::info!(node = %name, state = state.as_str(), "operator changed node state");
    match ops.fleet.set_state(name, state).await {
        crate::control::fleet::SetOutcome::Local => {
            json_msg(StatusCode::OK, &format!("node {name}: state set to {}", state.as_str()))
        }
        crate::control::fleet::SetOutcome::Shared(seq) => json_msg(
            StatusCode::OK,
            &format!("node {name}: state set to {} on every gateway of the fleet (change {seq})", state.as_str()),
        ),
        crate::control::fleet::SetOutcome::Pending(why) => json_msg(
            StatusCode::ACCEPTED,
            &format!("node {name}: state set to {} on this gateway; not shared yet: {why}", state.as_str()),
        ),
    }
}

/// None when allowed; otherwise the 401 to send.
fn check_auth(stats: &crate::control::config::StatsSection, headers: &http::HeaderMap) -> Option<OpsResponse> {
    let (Some(user), Some(pass)) = (&stats.user, &stats.password) else {
        return None;
    };
    let expected = format!("{user}:{pass}");
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .unwrap_or_default();
    // Constant-time: a wrong password must not be found byte by byte through timing.
    if bool::from(given.as_slice().ct_eq(expected.as_bytes())) {
        return None;
    }
    let mut r = json_msg(StatusCode::UNAUTHORIZED, "authentication required");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"kuzzle-gateway\""));
    Some(r)
}

fn typed(status: StatusCode, ctype: &'static str, body: String) -> OpsResponse {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn html(body: String) -> OpsResponse {
    typed(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &str) -> OpsResponse {
    typed(status, "text/plain; charset=utf-8", body.to_string())
}

/// A JSON answer in Kuzzle's envelope.
pub fn json_msg(status: StatusCode, message: &str) -> OpsResponse {
    let mut r = Response::new(Full::new(crate::data::envelope::body(status, message)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::node_of_state_path;

    #[test]
    fn state_paths_name_a_node_or_none() {
        assert_eq!(node_of_state_path("/nodes/k1/state"), Some("k1"));
        // Both affixes overlap here: once sliced by hand, this panicked the connection's task.
        assert_eq!(node_of_state_path("/nodes/state"), None);
        assert_eq!(node_of_state_path("/nodes//state"), None);
        assert_eq!(node_of_state_path("/nodes/k1"), None);
    }
}
