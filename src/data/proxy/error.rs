//! Data plane: why a request failed, as data: whose fault it is (client, node, gateway) and how far the
//! request got (nothing sent, sent but not answered). The status, the node's counters, passive
//! health and whether a re-send is safe are all read from it.

use http::StatusCode;

use crate::control::config::HealthSection;
use crate::core::backend::{Backend, ConnectError};

/// Who caused the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (bad request, aborted or slow upload): never counts against a node.
    Client,
    /// The node (refused, reset, timed out): counted, and reported to passive health.
    Node,
    /// The gateway itself (no node to send to).
    Gateway,
}

/// How far the request got before it failed: decides whether it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing of the request left the gateway: safe to send anything again.
    NothingSent,
    /// Written (maybe in part), no answer: the node may have acted on it.
    NoAnswer,
}

/// What went wrong with a node, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFault {
    /// No connection could be made (refused, timed out, failed).
    Connect,
    /// A fresh connection closed before the request was written.
    ClosedAtOnce,
    /// The exchange broke or timed out after the request was written.
    Response,
}

/// The message of a client's upload that ended before its length (it went away mid-body).
pub const BODY_CUT_SHORT: &str = "bad request: request body cut short";

/// A failed request, answered by the gateway in Kuzzle's envelope.
#[derive(Debug)]
pub struct ProxyError {
    /// Whose fault: decides the counters, passive health and the access log's termination state.
    pub side: Side,
    /// How far the request got: whether it may be sent again (`resend_safe`).
    pub progress: Progress,
    /// Set for node faults (Side::Node).
    pub fault: Option<NodeFault>,
    /// What the client is answered.
    pub status: StatusCode,
    /// The error message of Kuzzle's envelope (also read to tell some terminations apart).
    pub message: String,
}

impl ProxyError {
    pub fn client(status: StatusCode, message: impl Into<String>) -> Self {
        ProxyError { side: Side::Client, progress: Progress::NothingSent, fault: None, status, message: message.into() }
    }

    pub fn gateway(status: StatusCode, message: impl Into<String>) -> Self {
        ProxyError {
            side: Side::Gateway,
            progress: Progress::NothingSent,
            fault: None,
            status,
            message: message.into(),
        }
    }

    fn node(fault: NodeFault, progress: Progress, status: StatusCode, message: String) -> Self {
        ProxyError { side: Side::Node, progress, fault: Some(fault), status, message }
    }

    /// No connection to `node`: 504 for a timeout, else 503 (as haproxy does: nothing reached a
    /// node, so the service is unavailable rather than a node misbehaving).
    pub fn connect(node: &Backend, e: ConnectError) -> Self {
        if let ConnectError::Local(_) = e {
            // The gateway's own shortage: no node counter moves, passive health hears nothing.
            return ProxyError::gateway(StatusCode::SERVICE_UNAVAILABLE, format!("gateway overloaded: {e}"));
        }
        let (status, message) = match e {
            ConnectError::Timeout => (StatusCode::GATEWAY_TIMEOUT, format!("node {}: connect timed out", node.name)),
            e => (StatusCode::SERVICE_UNAVAILABLE, format!("no node available: node {}: {e}", node.name)),
        };
        Self::node(NodeFault::Connect, Progress::NothingSent, status, message)
    }

    /// A connect to `node` failed during an attempt (both paths, hyper's and the fast lane): logged
    /// and recorded; with `[balance] redispatch` an unprefixed request leaves the node (`idx`) to
    /// the others (counted as a redispatch when `more` attempts are left).
    pub fn connect_failed(
        node: &Backend,
        e: ConnectError,
        cfg: &crate::control::config::Config,
        (idx, pinned, more): (usize, bool, bool),
        tried: &mut Vec<usize>,
    ) -> Self {
        tracing::debug!(node = %node.name, error = %e, "connect failed");
        let err = ProxyError::connect(node, e);
        err.record(node, &cfg.health);
        if cfg.balance.redispatch && !pinned {
            tried.push(idx);
            if more {
                node.counters.redispatches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        err
    }

    /// A fresh connection that `node` closed before the request went out.
    pub fn closed_at_once(node: &Backend) -> Self {
        let message = format!("no node available: node {} closed the connection at once", node.name);
        Self::node(NodeFault::ClosedAtOnce, Progress::NothingSent, StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// `node` broke the exchange after the request was written.
    pub fn broke(node: &Backend) -> Self {
        let message = format!("node {} closed the connection before answering", node.name);
        Self::node(NodeFault::Response, Progress::NoAnswer, StatusCode::BAD_GATEWAY, message)
    }

    /// `node` answered `101 Switching Protocols` to a request that asked for no upgrade.
    pub fn unrequested_upgrade(node: &Backend) -> Self {
        let message = format!("node {} switched protocols unasked", node.name);
        Self::node(NodeFault::Response, Progress::NoAnswer, StatusCode::BAD_GATEWAY, message)
    }

    /// A WebSocket upgrade the node answered with a `101` to another protocol, or to none: what
    /// it speaks now is not what the client asked for (RFC 6455 4.1: the handshake fails).
    pub fn not_websocket(node: &Backend) -> Self {
        let message = format!("node {} switched to a protocol other than websocket", node.name);
        Self::node(NodeFault::Response, Progress::NoAnswer, StatusCode::BAD_GATEWAY, message)
    }

    /// The client's body stopped before its end (a half-close): 400, `CR` in the access log.
    pub fn body_cut_short() -> Self {
        Self::client(StatusCode::BAD_REQUEST, BODY_CUT_SHORT)
    }

    /// The client's body did not come within `wait`: 408.
    pub fn body_late(wait: std::time::Duration) -> Self {
        Self::client(StatusCode::REQUEST_TIMEOUT, format!("request body not received within {wait:?}"))
    }

    /// `node` did not answer in time.
    pub fn timed_out(node: &Backend, after: std::time::Duration) -> Self {
        let message = format!("node {} did not answer within {after:?}", node.name);
        Self::node(NodeFault::Response, Progress::NoAnswer, StatusCode::GATEWAY_TIMEOUT, message)
    }

    /// May the request be sent again (to another node)? When provably nothing was written (a
    /// failed connect, a pooled connection that failed before the first byte), always. Once bytes
    /// went out, whatever the node did next (a reset included: it may have read and acted on the
    /// whole request first), only an `idempotent` one: a body-less GET, HEAD or OPTIONS. A POST,
    /// PUT, PATCH or DELETE gets the 502 instead. A timeout is never re-sent.
    pub fn resend_safe(&self, idempotent: bool) -> bool {
        match self.progress {
            Progress::NothingSent => true,
            Progress::NoAnswer => idempotent && self.status != StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The access log's termination state (haproxy's two letters: who ended it, at which step):
    /// `PR` the gateway refused the request, `CR`/`cR` the client aborted or was too slow
    /// uploading, `SC`/`sC` no connection to a node (refused, or timed out), `SH`/`sH` the node
    /// broke or went silent before its response head, `RC` the gateway ran out of a resource.
    pub fn termination(&self) -> &'static str {
        match self.side {
            Side::Client if self.status == StatusCode::REQUEST_TIMEOUT => "cR",
            Side::Client if self.message.starts_with(BODY_CUT_SHORT) => "CR",
            Side::Client => "PR",
            Side::Gateway if self.message.starts_with("gateway overloaded") => "RC",
            Side::Gateway if self.status == StatusCode::SERVICE_UNAVAILABLE => "SC",
            Side::Gateway => "PR",
            Side::Node => match (self.fault, self.status == StatusCode::GATEWAY_TIMEOUT) {
                (Some(NodeFault::Response), true) => "sH",
                (Some(NodeFault::Response), false) => "SH",
                (_, true) => "sC",
                (_, false) => "SC",
            },
        }
    }

    /// Count the failure on `node` and, when it is the node's fault, tell its passive health check.
    pub fn record(&self, node: &Backend, health: &HealthSection) {
        use std::sync::atomic::Ordering::Relaxed;
        match self.fault {
            Some(NodeFault::Connect | NodeFault::ClosedAtOnce) => node.counters.connect_errors.fetch_add(1, Relaxed),
            Some(NodeFault::Response) => node.counters.response_errors.fetch_add(1, Relaxed),
            None => return,
        };
        if self.side == Side::Node {
            node.passive_failure(health);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_safety_is_read_from_progress() {
        let b = Backend::for_test("n", 1);
        assert!(ProxyError::connect(&b, ConnectError::Refused).resend_safe(false), "nothing sent: anything goes again");
        assert!(!ProxyError::broke(&b).resend_safe(false), "a POST the node may have read is not re-sent");
        assert!(ProxyError::broke(&b).resend_safe(true), "a body-less GET is");
        assert!(!ProxyError::timed_out(&b, std::time::Duration::from_secs(1)).resend_safe(true), "a timeout never is");
        let local = ProxyError::connect(&b, ConnectError::Local(std::io::ErrorKind::Other));
        assert_eq!(local.side, Side::Gateway, "running out of fds is the gateway's problem");
        local.record(&b, &HealthSection::default());
        assert_eq!(b.counters.connect_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
        let c = ProxyError::client(StatusCode::BAD_REQUEST, "x");
        c.record(&b, &HealthSection::default());
        assert_eq!(
            b.counters.response_errors.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "client faults count nothing"
        );
    }
}
