//! Data plane: RFC 9112 and RFC 9110 strictness on what hyper lets through, and the `[limits]`
//! on a request's target and head, answered in Kuzzle's envelope.

use http::header;
use http::{Method, Request, StatusCode, Version};

use super::error::ProxyError;

/// The request target and authority (both listeners): `*` is a target for OPTIONS only (RFC 9112
/// 3.2.4); CONNECT is no tunnel the gateway opens; and no userinfo (`user@`) in an absolute
/// target, in `Host`, or in HTTP/2's `:authority` (which became `Host`): RFC 9110 4.2.4 forbids
/// it, and a node or a log that reads it as the host would be misled.
pub(super) fn strict_target<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let bad = |m: &'static str| Err(ProxyError::client(StatusCode::BAD_REQUEST, m));
    if req.method() == Method::CONNECT {
        return Err(ProxyError::client(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: CONNECT"));
    }
    if req.uri().path() == "*" && req.uri().query().is_none() && req.method() != Method::OPTIONS {
        return bad("bad request: the target * is for OPTIONS only");
    }
    let userinfo = req.uri().authority().is_some_and(|a| a.as_str().contains('@'))
        || req.headers().get_all(header::HOST).iter().any(|h| h.as_bytes().contains(&b'@'));
    if userinfo {
        return bad("bad request: userinfo (user@) in the authority");
    }
    Ok(())
}

/// RFC 9112 strictness on what hyper lets through: HTTP/1.1 needs exactly one Host (two Hosts let
/// the gateway and a node disagree on the target). (A request with both Content-Length and
/// Transfer-Encoding never gets here ambiguous: hyper reads it chunked and drops the length.)
/// Then `[limits]`: the target (414), the header count and the head's size (431). hyper's own
/// buffer caps a head at twice the limit (its bare 431); under that, the answer is Kuzzle's.
pub(super) fn strict_framing<B>(
    req: &Request<B>,
    limits: &crate::control::config::LimitsSection,
) -> Result<(), ProxyError> {
    let h = req.headers();
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.uri {
        return Err(ProxyError::client(
            StatusCode::URI_TOO_LONG,
            format!("request target of {target} bytes is over the {}-byte limit", limits.uri),
        ));
    }
    if h.len() > limits.headers {
        return Err(ProxyError::client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("{} header lines, over the limit of {}", h.len(), limits.headers),
        ));
    }
    // Size as on the wire: "name: value\r\n" per line, plus the request line.
    let head = target + h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + 16;
    if head > limits.request_head {
        return Err(ProxyError::client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head of about {head} bytes is over the {}-byte limit", limits.request_head),
        ));
    }
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(ProxyError::client(StatusCode::BAD_REQUEST, "bad request: HTTP/1.1 needs exactly one Host header"));
    }
    Ok(())
}
