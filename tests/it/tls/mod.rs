//! Integration tests of TLS: the `[tls]` listener with certificates made by the test and a
//! rustls client (HTTPS and wss, also through a node prefix, X-Forwarded-Proto = https), clear
//! start-up errors for bad certificate files, renewal, SNI, HTTP/2, handshake timeouts, `--check`,
//! and nodes that speak HTTPS. The helpers shared by the topics are here.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kuzzle_gateway::control::config::Config;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

mod certificates;
mod http2;
mod listener;
mod nodes;

/// A self-signed certificate for `localhost`, written as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = scratch_dir(&format!("tls-{tag}"));
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate certificate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write cert");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
        Pki { dir, cert, key, der: ck.cert.der().clone() }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn connector(trusted: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(c: &TlsConnector, addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(T, c.connect(name, tcp)).await.expect("TLS handshake timed out").expect("TLS handshake")
}

async fn https(c: &TlsConnector, addr: std::net::SocketAddr, path: &str) -> Resp {
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls_connect(c, addr).await)).await.expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(path)
        .header("host", format!("localhost:{}", addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(T, sender.send_request(req)).await.expect("response in time").expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp { status: parts.status.as_u16(), headers: parts.headers, body }
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

async fn wss(c: &TlsConnector, addr: std::net::SocketAddr, path: &str) -> Wss {
    let stream = tls_connect(c, addr).await;
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::client_async(url.as_str(), stream))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

async fn call(ws: &mut Wss, req: Value) -> Value {
    let id = req["requestId"].as_str().expect("requestId").to_string();
    ws.send(Message::text(req.to_string())).await.expect("send");
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["requestId"] == id.as_str() {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer to {id}: {other:?}"),
        }
    }
}

/// A pair made by the test: PEM texts and the certificate's DER (to tell which one a client got).
struct Made {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A self-signed pair for `names`, valid from `from` to `to` (years), or rcgen's defaults.
fn make(names: &[&str], years: Option<(i32, i32)>) -> Made {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    if let Some((from, to)) = years {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Made { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
}

/// Write a file the way certbot and cert-manager do: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// A connector that accepts any certificate and offers these ALPN protocols.
fn any_cert(alpn: &[&[u8]]) -> TlsConnector {
    TlsConnector::from(Arc::new(accept_any_cert_client(alpn)))
}

/// Handshake as `name` (a DNS name sends SNI, an IP address sends none).
async fn connect_as(c: &TlsConnector, addr: std::net::SocketAddr, name: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(name.to_string()).expect("server name");
    tokio::time::timeout(T, c.connect(name, tcp)).await.expect("TLS handshake timed out").expect("TLS handshake")
}

/// The leaf certificate a client handshaking as `name` is served.
async fn served(c: &TlsConnector, addr: std::net::SocketAddr, name: &str) -> CertificateDer<'static> {
    let s = connect_as(c, addr, name).await;
    s.get_ref().1.peer_certificates().and_then(|p| p.first()).expect("a certificate").clone().into_owned()
}

async fn stats_json(gw: &kuzzle_gateway::app::Handle) -> Value {
    get(gw.stats_addr, "/hastats;json").await.json()
}

/// An HTTP/2 connection over TLS (ALPN h2).
async fn h2_conn(c: &TlsConnector, addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = connect_as(c, addr, "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the gateway chose h2");
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(s))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> (http::Version, Resp) {
    let resp = tokio::time::timeout(T, sender.send_request(req)).await.expect("in time").expect("response");
    let version = resp.version();
    (version, collect(resp).await)
}

/// `kuzzle-gateway --config FILE --check`: exit status and standard error.
fn check(file: &Path) -> (bool, String) {
    let out = run_check(file);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A node speaking HTTPS: a TLS front (certificate `made`) relaying to a plain simulated node.
/// Counts the handshakes it completed.
struct TlsFront {
    addr: std::net::SocketAddr,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    async fn start(to: std::net::SocketAddr, made: &Made) -> TlsFront {
        let chain = vec![made.der.clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            rustls_pemfile::private_key(&mut made.key_pem.as_bytes())
                .expect("key PEM")
                .expect("a key")
                .secret_der()
                .to_vec(),
        )
        .expect("key DER");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("front certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Ok(mut node) = TcpStream::connect(to).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut node).await;
                });
            }
        });
        TlsFront { addr, handshakes, task }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
