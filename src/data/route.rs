//! Data plane: the `/<node name>/...` prefix rule: which node a path names, and the path it is forwarded as.
//!
//! The rule (also in docs/proxying.md):
//! 1. Dot segments are resolved first (RFC 3986 `remove_dot_segments`), and a segment that
//!    percent-decodes to `.` or `..` counts as one (`%2e%2e`), so `/cluster_kuzzle_1/../x` is `/x`.
//!    A path that climbs above the root is a 400.
//! 2. The first segment, percent-decoded, is compared whole with the node names: `/cluster_kuzzle_10/`
//!    never names `cluster_kuzzle_1`. A first segment that decodes to something holding `/` or `\`
//!    is a 400 (it cannot be a prefix and must not become one further down the line).
//! 3. A named node gets the rest of the path (`/` when empty) and the query unchanged; any other
//!    path goes to the balancer whole, as resolved in step 1. An empty first segment (`//x`) names
//!    no node.

use std::borrow::Cow;

/// Result of routing a request path.
#[derive(Debug, PartialEq, Eq)]
pub struct Routed<'a, T> {
    /// The node the prefix names, if any.
    pub node: Option<T>,
    /// Path to send to the node (borrowed when it is the request's own path, unchanged).
    pub path: Cow<'a, str>,
    /// Query, unchanged.
    pub query: Option<&'a str>,
}

impl<T> Routed<'_, T> {
    /// The request's own path and query go to the node as they are: the caller may reuse them.
    pub fn unchanged(&self) -> bool {
        self.node.is_none() && matches!(self.path, Cow::Borrowed(_))
    }

    /// Path and query to send to the node.
    pub fn path_and_query(&self) -> Cow<'_, str> {
        match self.query {
            None => Cow::Borrowed(&*self.path),
            Some(q) => Cow::Owned(format!("{}?{q}", self.path)),
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("the first path segment holds an encoded slash")]
    EncodedSlash,
    #[error("path is not valid percent-encoded UTF-8")]
    BadEncoding,
}

/// Route `path` (with `query`) using `lookup` from a decoded first segment to a node.
pub fn route<'a, T>(
    path: &'a str,
    query: Option<&'a str>,
    lookup: impl Fn(&str) -> Option<T>,
) -> Result<Routed<'a, T>, RouteError> {
    let path: Cow<'a, str> =
        if needs_dot_resolution(path) { Cow::Owned(resolve_dots(path)?) } else { Cow::Borrowed(path) };
    let rest_start = path.get(1..).and_then(|p| p.find('/')).map_or(path.len(), |i| i + 1);
    let first = path.get(1..rest_start).unwrap_or("");
    let node = if first.is_empty() {
        None
    } else {
        let decoded = percent_decode(first)?;
        if decoded.contains(['/', '\\']) {
            return Err(RouteError::EncodedSlash);
        }
        lookup(&decoded)
    };
    let path = match (&node, path) {
        (Some(_), p) => Cow::Owned(if rest_start >= p.len() { "/" } else { &p[rest_start..] }.to_string()),
        (None, p) => p,
    };
    Ok(Routed { node, path, query })
}

/// Cheap test: does any segment look like a dot segment (possibly encoded)?
fn needs_dot_resolution(path: &str) -> bool {
    // A segment that is "." or ".." once decoded holds a `.` or a `%`: most paths have neither,
    // and one scan of bytes is cheaper than splitting them into segments (~120 instructions a
    // request on the fast lane).
    path.bytes().any(|b| b == b'.' || b == b'%') && path.split('/').any(is_dot_like)
}

fn is_dot_like(seg: &str) -> bool {
    matches!(seg.len(), 1..=6) && seg.bytes().all(|b| b == b'.' || b == b'%' || b == b'2' || b == b'e' || b == b'E')
}

fn dot_kind(seg: &str) -> u8 {
    if !is_dot_like(seg) {
        return 0;
    }
    match percent_decode(seg).as_deref() {
        Ok(".") => 1,
        Ok("..") => 2,
        _ => 0,
    }
}

/// RFC 3986 section 5.2.4 over segments, with encoded dots counted as dots.
fn resolve_dots(path: &str) -> Result<String, RouteError> {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        match dot_kind(seg) {
            1 => trailing_slash = i == last,
            2 => {
                if out.pop().is_none() {
                    return Err(RouteError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(s)
}

/// Percent-decode a path segment (no `+` handling: that is for query strings).
pub fn percent_decode(s: &str) -> Result<Cow<'_, str>, RouteError> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Exactly two hex digits: `from_str_radix` alone would also take a sign (`%+a`).
            let hex =
                b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit)).ok_or(RouteError::BadEncoding)?;
            let h = std::str::from_utf8(hex).map_err(|_| RouteError::BadEncoding)?;
            out.push(u8::from_str_radix(h, 16).map_err(|_| RouteError::BadEncoding)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| RouteError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str, query: Option<&str>) -> Result<(Option<u8>, String), RouteError> {
        let names = ["cluster_kuzzle_1", "cluster_kuzzle_2", "cluster_kuzzle_10"];
        route(path, query, |s| names.iter().position(|n| *n == s).map(|i| i as u8 + 1))
            .map(|x| (x.node, x.path_and_query().into_owned()))
    }

    /// The byte scan before the segments skips only paths whose dots need no resolving.
    #[test]
    fn the_quick_dot_check_skips_only_paths_dots_leave_alone() {
        for p in [
            "/e",
            "/2e",
            "/E/2",
            "/_now",
            "/a/b",
            "/",
            "//",
            "/x.y",
            "/a/./b",
            "/a/../b",
            "/%2e%2E/x",
            "/%2",
            "/a/.%2e",
        ] {
            let slow = p.split('/').any(is_dot_like);
            if !needs_dot_resolution(p) {
                assert_eq!(resolve_dots(p).as_deref(), Ok(p), "{p}: skipped, yet resolving changes it");
            } else {
                assert!(slow, "{p}");
            }
        }
        assert!(needs_dot_resolution("/a/%2e%2e/b") && !needs_dot_resolution("/e/2e"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(r("/cluster_kuzzle_1/_now", None), Ok((Some(1), "/_now".into())));
        assert_eq!(r("/cluster_kuzzle_1", None), Ok((Some(1), "/".into())));
        assert_eq!(r("/cluster_kuzzle_1/", None), Ok((Some(1), "/".into())));
        assert_eq!(r("/cluster_kuzzle_1", Some("a=1")), Ok((Some(1), "/?a=1".into())));
        assert_eq!(r("/cluster_kuzzle_2/a/b", Some("q=%2F")), Ok((Some(2), "/a/b?q=%2F".into())));
        assert_eq!(r("/cluster_kuzzle_10/x", None), Ok((Some(3), "/x".into())));
        assert_eq!(r("/cluster_kuzzle_1x/x", None), Ok((None, "/cluster_kuzzle_1x/x".into())));
        assert_eq!(r("/_now", None), Ok((None, "/_now".into())));
        assert_eq!(r("/", None), Ok((None, "/".into())));
        assert_eq!(r("//cluster_kuzzle_1/x", None), Ok((None, "//cluster_kuzzle_1/x".into())));
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        let lookup = |s: &str| (s == "n").then_some(1);
        let x = route("/a/b", Some("q=1"), lookup).expect("ok");
        assert!(x.unchanged());
        assert_eq!(x.path_and_query(), "/a/b?q=1");
        assert!(!route("/a/../b", None, lookup).expect("ok").unchanged());
        assert!(!route("/n/b", None, lookup).expect("ok").unchanged());
    }

    #[test]
    fn tricky_paths() {
        // Dot segments resolve before the prefix is read: they can't switch nodes behind our back.
        assert_eq!(r("/cluster_kuzzle_1/../cluster_kuzzle_2/x", None), Ok((Some(2), "/x".into())));
        assert_eq!(r("/cluster_kuzzle_1/%2e%2e/cluster_kuzzle_2/x", None), Ok((Some(2), "/x".into())));
        assert_eq!(r("/./cluster_kuzzle_1/x", None), Ok((Some(1), "/x".into())));
        assert_eq!(r("/cluster_kuzzle_1/x/..", None), Ok((Some(1), "/".into())));
        assert_eq!(r("/cluster_kuzzle_1/..", None), Ok((None, "/".into())));
        assert_eq!(r("/..", None), Err(RouteError::AboveRoot));
        assert_eq!(r("/cluster_kuzzle_1/../../etc", None), Err(RouteError::AboveRoot));
        assert_eq!(r("/%2E%2E/x", None), Err(RouteError::AboveRoot));
        // Encoded names match like plain ones; encoded slashes can't form a prefix.
        assert_eq!(r("/cluster%5Fkuzzle_1/x", None), Ok((Some(1), "/x".into())));
        assert_eq!(r("/cluster_kuzzle_1%2Fx", None), Err(RouteError::EncodedSlash));
        assert_eq!(r("/cluster_kuzzle_1%5cx/y", None), Err(RouteError::EncodedSlash));
        assert_eq!(r("/%zz/x", None), Err(RouteError::BadEncoding));
        // Encoded slashes further down are the node's business.
        assert_eq!(r("/cluster_kuzzle_1/a%2Fb", None), Ok((Some(1), "/a%2Fb".into())));
        // Segments that only look dotty are not dot segments.
        assert_eq!(r("/cluster_kuzzle_1/.../x", None), Ok((Some(1), "/.../x".into())));
        assert_eq!(r("/cluster_kuzzle_1/.e", None), Ok((Some(1), "/.e".into())));
    }

    #[test]
    fn multibyte_first_char_does_not_panic() {
        // Found by the `route` fuzz target: slicing at byte 1 panicked inside a multibyte char.
        assert_eq!(r("\u{fffd}", None), Ok((None, "\u{fffd}".into())));
        assert_eq!(r("\u{e9}/cluster_kuzzle_1", None), Ok((None, "\u{e9}/cluster_kuzzle_1".into())));
    }

    #[test]
    fn percent_takes_two_hex_digits_and_no_sign() {
        // Found by the `route` fuzz target: `%+a` decoded as 0x0a.
        assert_eq!(percent_decode("%+a"), Err(RouteError::BadEncoding));
        assert_eq!(percent_decode("a%-1"), Err(RouteError::BadEncoding));
        assert_eq!(r("/%+a%5c", None), Err(RouteError::BadEncoding));
        assert_eq!(r("/%+1/x", None), Err(RouteError::BadEncoding));
        assert_eq!(percent_decode("%6E%6e").as_deref(), Ok("nn"));
    }
}
