//! Data plane: a request sent again. Small bodies are read whole first ([`read_whole`]) so that a
//! [`Template`] can be re-sent; a node's small 503 is read to learn whether Kuzzle refused the
//! request unexecuted ([`refusal`]), which makes any method safe to send to another node.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::{build, Context, DownBody, Failure};
use crate::core::backend::{Backend, Sender, UpBody};

/// A request as it can be sent again: a node that refused it unexecuted (Kuzzle shutting down)
/// or broke before answering an idempotent one.
pub(super) struct Template {
    /// The request's method, as the client sent it.
    pub(super) method: Method,
    /// The request's target, as forwarded to the first node.
    pub(super) uri: Uri,
    /// The request's headers, as forwarded to the first node (hop-by-hop ones already out).
    pub(super) headers: HeaderMap,
    /// The whole body (empty for a body-less request).
    pub(super) body: Bytes,
}

impl Template {
    /// A copy of a body-less request about to be sent.
    pub(super) fn of(r: &Request<UpBody>) -> Template {
        Template { method: r.method().clone(), uri: r.uri().clone(), headers: r.headers().clone(), body: Bytes::new() }
    }

    pub(super) fn request(&self) -> Request<UpBody> {
        build(self.method.clone(), self.uri.clone(), self.headers.clone(), Either::Right(Full::new(self.body.clone())))
    }
}

/// A small request body, read whole (within the client timeout) so that it can be sent again.
pub(super) async fn read_whole(body: Incoming, limit: usize, wait: std::time::Duration) -> Result<Bytes, ProxyError> {
    match tokio::time::timeout(wait, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(ProxyError::body_cut_short()),
        Err(_) => Err(ProxyError::body_late(wait)),
    }
}

/// Largest 503 body read to learn whether the node executed the request (Kuzzle's is ~130 bytes).
pub(crate) const REFUSAL_BODY_MAX: u64 = 4096;

/// Kuzzle error ids that mean "rejected, not executed", and whether the node is leaving.
const NOT_EXECUTED: [(&str, bool); 3] =
    [("api.process.shutting_down", true), ("api.process.overloaded", false), ("api.process.not_enough_nodes", false)];

/// The Content-Length of a 503 small enough to read for a refusal (a chunked one passes through).
pub(super) fn refusal_length(h: &HeaderMap) -> Option<u64> {
    let n: u64 = h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    (n <= REFUSAL_BODY_MAX).then_some(n)
}

/// The Kuzzle error id of a response body, if it names one that means "not executed": `Some(true)`
/// when the node is shutting down.
pub fn not_executed(body: &[u8]) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        /// Kuzzle's `error` object, when there is one.
        #[serde(borrow)]
        error: Option<ErrorId<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorId<'a> {
        /// Kuzzle's error id (`api.process.shutting_down`...): compared with `NOT_EXECUTED`.
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    let id = serde_json::from_slice::<Envelope<'_>>(body).ok()?.error?.id?;
    NOT_EXECUTED.iter().find(|(known, _)| *known == id).map(|(_, leaving)| *leaving)
}

/// A node's 503 with a small body: read it whole; a Kuzzle "not executed" refusal becomes
/// [`Failure::Refused`] (and a node shutting down leaves the rotation at once), anything else
/// goes to the client as it came.
pub(super) async fn refusal(
    ctx: &Context,
    node: &Arc<Backend>,
    parts: http::response::Parts,
    body: Incoming,
    len: u64,
    sender: Option<Sender>,
    wait: std::time::Duration,
) -> Result<Response<DownBody>, Failure> {
    let bytes = match tokio::time::timeout(wait, http_body_util::Limited::new(body, len as usize).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) | Err(_) => return Err(Failure::Final(ProxyError::broke(node))),
    };
    node.counters.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    if let Some(sender) = sender {
        node.release(sender);
    }
    let refused = refused(node, &bytes);
    let n = bytes.len() as u64;
    let resp = Response::from_parts(parts, DownBody::full(bytes));
    if refused {
        return Err(Failure::Refused(Box::new(resp)));
    }
    ctx.core.frontend.bytes_out.fetch_add(n, Ordering::Relaxed);
    Ok(resp)
}

/// Is this 503 body Kuzzle's "not executed" refusal? A node that says it is shutting down leaves
/// the rotation at once (both paths, hyper's and the fast lane, judge a refusal here).
pub(crate) fn refused(node: &Backend, body: &[u8]) -> bool {
    let Some(leaving) = not_executed(body) else { return false };
    if leaving {
        // A Kuzzle 2 node found from its ID card comes back under a new identity.
        let for_good = node.origin == crate::core::backend::Origin::Kuzzle2;
        tracing::info!(node = %node.name, for_good, "node is shutting down: out of the rotation");
        node.health.note_leaving(for_good);
    }
    true
}
