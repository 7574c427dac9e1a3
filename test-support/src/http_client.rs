//! HTTP/1.1 clients: a keep-alive `Client`, one-shot `request`/`get`/`post`, streamed bodies, source-bound connections.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::wait::T;

/// Bound of a response (head, then body): above every latency the tests inject into nodes.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The node that answered (`x-kuzzle-node`).
    pub fn node(&self) -> Option<&str> {
        self.header("x-kuzzle-node")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body the test feeds chunk by chunk from a channel (no length: hyper sends it chunked).
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Any request body a `Client` sends (`Full::new(b).boxed_unsync()`, `ChanBody(rx).boxed_unsync()`).
pub type BoxBody = UnsyncBoxBody<Bytes, Infallible>;

/// One keep-alive HTTP/1.1 connection; its requests carry `Host: <the address it connected to>`.
pub struct Client {
    send: http1::SendRequest<BoxBody>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connect, or say why not (load loops count a refused connection instead of panicking).
    pub async fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (send, conn) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        // Ends with the connection, or when the Client is dropped (abort).
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { send, addr, task })
    }

    async fn try_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: BoxBody,
    ) -> Result<http::Response<Incoming>, String> {
        let mut b = http::Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(body).map_err(|e| e.to_string())?;
        tokio::time::timeout(T, self.send.ready())
            .await
            .map_err(|_| format!("connection not ready within {T:?}"))?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(RESPONSE_TIMEOUT, self.send.send_request(req))
            .await
            .map_err(|_| format!("no response within {RESPONSE_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }

    /// Send and get the head back, the body left to the caller.
    pub async fn send_streaming(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: BoxBody,
    ) -> http::Response<Incoming> {
        self.try_head(method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Send and read the whole response; `Err` describes a broken exchange.
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp, String> {
        let resp = self.try_head(method, path, headers, Full::new(body).boxed_unsync()).await?;
        try_collect(resp).await
    }

    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
        self.try_send(method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `authorization` for the ops listener's default credentials (`kuzzle:kuzzle`).
pub fn ops_auth() -> (&'static str, &'static str) {
    ("authorization", "Basic a3V6emxlOmt1enpsZQ==")
}

/// The `authorization` value of HTTP Basic auth for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// One request on a fresh connection (tests that need keep-alive use `Client`).
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    Client::connect(addr).await.send(method, path, headers, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], Bytes::new()).await
}

/// A POST without headers or body (the sims' `/_sim/...` knobs).
pub async fn post(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "POST", path, &[], Bytes::new()).await
}

async fn try_collect(resp: http::Response<Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(RESPONSE_TIMEOUT, body.collect())
        .await
        .map_err(|_| format!("body not received within {RESPONSE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp { status: parts.status.as_u16(), headers: parts.headers, body })
}

/// Read a whole response into a `Resp`.
pub async fn collect(resp: http::Response<Incoming>) -> Resp {
    try_collect(resp).await.unwrap_or_else(|e| panic!("response body: {e}"))
}

/// A body for a raw `SendRequest`: whole, or fed from a channel.
pub type AnyBody = http_body_util::Either<Full<Bytes>, ChanBody>;

/// One raw HTTP/1.1 connection to `addr` from source address `from` (e.g. `127.0.0.7`, for
/// source-hash balancing or `x-forwarded-for`); the caller builds requests, Host included.
pub async fn conn_from(from: IpAddr, addr: SocketAddr) -> http1::SendRequest<AnyBody> {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    let stream = tokio::time::timeout(T, sock.connect(addr)).await.expect("connect timed out").expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    // Ends with the connection (the sender's drop closes it).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Send on a raw connection with `Host: gw.test`; returns the head, the body left to the caller.
pub async fn send_any(
    s: &mut http1::SendRequest<AnyBody>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: AnyBody,
) -> http::Response<Incoming> {
    let mut b = http::Request::builder().method(method).uri(path).header("host", "gw.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    tokio::time::timeout(T, s.ready()).await.expect("connection ready in time").expect("connection ready");
    tokio::time::timeout(RESPONSE_TIMEOUT, s.send_request(b.body(body).expect("request")))
        .await
        .expect("no response within 30 s")
        .expect("response")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ops_auth_is_basic_auth_of_the_default_credentials() {
        assert_eq!(super::ops_auth().1, super::basic_auth("kuzzle", "kuzzle"));
    }
}
