//! Integration tests of the `[tls]` listener: a self-signed certificate made by the test, a
//! rustls client doing HTTPS and wss (also through a node prefix), X-Forwarded-Proto = https,
//! and clear start-up errors for bad certificate files.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kuzzle_gateway::config::Config;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_through_the_tls_listener() {
    let pki = Pki::new("ok");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1, &n2])))).await;
    let tls_addr = gw.tls_addr.expect("the TLS listener is up");
    let c = connector(&pki.der);

    // HTTPS GET: the node sees the scheme the client used.
    let r = https(&c, tls_addr, "/_sim/request").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let seen = if v["result"].get("headers").is_some() { &v["result"] } else { &v };
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{v}");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(seen["headers"]["host"], format!("localhost:{}", tls_addr.port()), "{v}");
    // Through a prefix.
    let r = https(&c, tls_addr, "/cluster_kuzzle_2/_now").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.node(), Some("cluster_kuzzle_2"));
    // The plain listener still says http.
    let r = get(gw.http_addr, "/_sim/request").await;
    let v = r.json();
    let seen = if v["result"].get("headers").is_some() { &v["result"] } else { &v };
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{v}");

    // wss: request/response, a subscription and its notification, then through a prefix.
    let mut w = wss(&c, tls_addr, "/").await;
    let r = call(&mut w, json!({"controller": "server", "action": "now", "requestId": "t1"})).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["room"], "t1");
    let r = call(
        &mut w,
        json!({"controller": "realtime", "action": "subscribe", "index": "i", "collection": "c", "body": {}, "requestId": "s"}),
    )
    .await;
    let channel = r["result"]["channel"].as_str().expect("channel").to_string();
    call(
        &mut w,
        json!({"controller": "realtime", "action": "publish", "index": "i", "collection": "c", "body": {"tls": true}, "requestId": "p"}),
    )
    .await;
    // The notification may come before or after the publish answer: look for it in both places.
    let deadline = Instant::now() + T;
    let mut got = false;
    w.send(Message::text("{\"p\":1}")).await.expect("send ping");
    let mut pong = false;
    while !(got && pong) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["room"] == channel.as_str() {
                    assert_eq!(v["result"]["_source"], json!({"tls": true}));
                    got = true;
                }
                if v == json!({"p": 2}) {
                    pong = true;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("wss ended: {other:?}"),
        }
    }
    assert!(got, "no notification over wss");
    assert!(pong, "no {{\"p\":2}} over wss");

    let mut w2 = wss(&c, tls_addr, "/cluster_kuzzle_1/").await;
    let r = call(&mut w2, json!({"controller": "server", "action": "info", "requestId": "i"})).await;
    assert_eq!(r["node"], "cluster_kuzzle_1");

    // Plain HTTP on the TLS port is refused without hurting the listener.
    let mut s = TcpStream::connect(tls_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("x-kuzzle-node"), "plain HTTP reached a node over the TLS port");
    // An untrusting client fails its handshake; a trusting one still works.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("other cert");
    let wrong = connector(other.cert.der());
    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    assert!(wrong.connect(name, tcp).await.is_err(), "a client that does not trust the certificate connected");
    assert_eq!(https(&c, tls_addr, "/_now").await.status, 200);

    drop((w, w2));
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_give_clear_start_errors() {
    let pki = Pki::new("bad");
    let missing = pki.dir.join("nope.pem");
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").expect("write");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("other cert");
    let other_key = pki.dir.join("other-key.pem");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).expect("write");

    let cases: [(&Path, &Path, &str); 4] = [
        (&missing, &pki.key, "nope.pem"),
        (&pki.cert, &missing, "nope.pem"),
        (&garbage, &pki.key, "garbage.pem"),
        (&pki.cert, &other_key, "do not match"),
    ];
    for (cert, key, needle) in cases {
        let cfg = Config::parse(&gateway_toml(&tls_section(cert, key)), "<test>").expect("config parses");
        match kuzzle_gateway::app::bind_and_start(cfg) {
            Ok(h) => {
                h.shutdown().await;
                panic!("gateway started with cert {} and key {}", cert.display(), key.display());
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "error should mention {needle:?}: {msg}");
            }
        }
    }
}
