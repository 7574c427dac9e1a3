//! Integration tests of the `[tls]` listener: a self-signed certificate made by the test, a
//! rustls client doing HTTPS and wss (also through a node prefix), X-Forwarded-Proto = https,
//! and clear start-up errors for bad certificate files.

mod common;

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

// ---- Issue 12: renewal, SNI, HTTP/2, handshake timeout, --check ----

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_among_several_certificates() {
    let dir = scratch_dir("tls-sni");
    let default = make(&["localhost"], None);
    let a = make(&["a.test"], None);
    let wild = make(&["*.w.test"], None);
    let named = make(&["other.test"], None);
    let mut toml = String::from("[tls]\nlisten = \"127.0.0.1:0\"\n");
    for (tag, m) in [("default", &default), ("a", &a), ("w", &wild), ("n", &named)] {
        let (c, k) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}-key.pem")));
        std::fs::write(&c, &m.cert_pem).expect("write");
        std::fs::write(&k, &m.key_pem).expect("write");
        if tag == "default" {
            toml.push_str(&format!("cert = {:?}\nkey = {:?}\n", c.display().to_string(), k.display().to_string()));
        } else {
            toml.push_str(&format!(
                "[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            ));
            if tag == "n" {
                toml.push_str("names = [\"named.test\"]\n");
            }
        }
    }
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&format!("{toml}{}", nodes_toml(&[&n1])))).await;
    let addr = gw.tls_addr.expect("TLS listener");
    let c = any_cert(&[]);
    for (sni, want, what) in [
        ("a.test", &a.der, "exact SAN"),
        ("A.Test", &a.der, "names are case-insensitive"),
        ("x.w.test", &wild.der, "wildcard SAN, one label"),
        ("y.x.w.test", &default.der, "a wildcard covers one label only"),
        ("w.test", &default.der, "nor its parent"),
        ("named.test", &named.der, "names given in the configuration"),
        ("other.test", &default.der, "configured names replace the certificate's"),
        ("unknown.test", &default.der, "unknown name: the default"),
        ("127.0.0.1", &default.der, "no SNI: the default"),
    ] {
        assert!(served(&c, addr, sni).await == *want, "{sni}: {what}");
    }
    // The chosen certificate serves requests, HTTP/1.1 and HTTP/2.
    let s = connect_as(&c, addr, "a.test").await;
    let (mut sender, conn) = http1::handshake(TokioIo::new(s)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    let req =
        http::Request::builder().uri("/_now").header("host", "a.test").body(Full::new(Bytes::new())).expect("req");
    assert_eq!(sender.send_request(req).await.expect("response").status(), 200);
    let v = stats_json(&gw).await;
    let certs = v["process"]["tls"]["certificates"].as_array().expect("certificates on /hastats;json").clone();
    assert_eq!(certs.len(), 4, "{v}");
    assert_eq!(certs[0]["place"], "tls");
    assert_eq!(certs[2]["names"], json!(["*.w.test"]));
    assert_eq!(certs[3]["names"], json!(["named.test"]));
    assert!(certs.iter().all(|c| c["status"] == "ok"), "{certs:?}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_proxied_to_nodes_over_http11() {
    let pki = Pki::new("h2");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let limits = "[limits]\nheaders = 20\nrequest_head = 4096\n";
    let gw =
        gateway(&gateway_toml(&format!("{}{limits}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1, &n2]))))
            .await;
    let addr = gw.tls_addr.expect("TLS listener");
    let port = addr.port();
    let before = stats_json(&gw).await["frontend"]["req_tot"].as_u64().expect("req_tot");
    let mut h2 = h2_conn(&any_cert(&[b"h2", b"http/1.1"]), addr).await;

    // Through a prefix: the node gets HTTP/1.1 with Host from :authority and the prefix stripped.
    let uri = format!("https://localhost:{port}/cluster_kuzzle_2/_sim/request?x=1");
    let req = http::Request::get(uri).body(Full::new(Bytes::new())).expect("request");
    let (version, r) = h2_send(&mut h2, req).await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(r.node(), Some("cluster_kuzzle_2"));
    let (method, path, headers) = seen(&r);
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/_sim/request?x=1"));
    assert_eq!(seen_header(&headers, "host"), Some(format!("localhost:{port}")));
    assert_eq!(seen_header(&headers, "x-forwarded-proto").as_deref(), Some("https"));
    assert!(seen_header(&headers, "x-kuzzle-gateway").is_some(), "the loop mark is added: {headers}");
    // The response carries no connection-specific header (h2 forbids them).
    for h in ["connection", "keep-alive", "transfer-encoding"] {
        assert!(r.headers.get(h).is_none(), "{h} in an HTTP/2 response");
    }

    // Streams multiplexed on the one connection, balanced over both nodes.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut s = h2.clone();
        let uri = format!("https://localhost:{port}/_now");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(uri).body(Full::new(Bytes::new())).expect("request");
            let (v, r) = h2_send(&mut s, req).await;
            assert_eq!((v, r.status), (http::Version::HTTP_2, 200));
            r.node().map(str::to_string)
        }));
    }
    let mut nodes = std::collections::BTreeSet::new();
    for t in tasks {
        nodes.insert(t.await.expect("task").expect("x-kuzzle-node"));
    }
    assert_eq!(nodes.len(), 2, "leastconn spreads concurrent streams: {nodes:?}");

    // A body streams to the node and back.
    let body = Bytes::from(vec![b'k'; 100_000]);
    let uri = format!("https://localhost:{port}/cluster_kuzzle_1/_sim/echo");
    let req = http::Request::post(uri).body(Full::new(body.clone())).expect("request");
    let (_, r) = h2_send(&mut h2, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);

    // [limits] apply: too many header lines get the proxy's 431 in Kuzzle's envelope.
    let mut b = http::Request::get(format!("https://localhost:{port}/_now"));
    for i in 0..30 {
        b = b.header(format!("x-h{i}"), "v");
    }
    let (_, r) = h2_send(&mut h2, b.body(Full::new(Bytes::new())).expect("request")).await;
    assert_envelope(&r, 431);
    // A Host that names another authority is malformed (RFC 9113 8.3.1).
    let req = http::Request::get(format!("https://localhost:{port}/_now"))
        .header("host", "elsewhere.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (_, r) = h2_send(&mut h2, req).await;
    assert_envelope(&r, 400);
    // Counted like HTTP/1.1 requests: 1 + 8 + 1 + 2 refused.
    let after = stats_json(&gw).await["frontend"]["req_tot"].as_u64().expect("req_tot");
    assert_eq!(after - before, 12, "HTTP/2 requests counted on the frontend");

    // A client offering only http/1.1 gets HTTP/1.1, and WebSockets still work beside h2.
    let s = connect_as(&any_cert(&[b"http/1.1"]), addr, "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = http1::handshake(TokioIo::new(s)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/_now").header("host", "localhost").body(Full::new(Bytes::new())).expect("req");
    let resp = h1.send_request(req).await.expect("response");
    assert_eq!((resp.version(), resp.status().as_u16()), (http::Version::HTTP_11, 200));
    let mut w = wss(&connector(&pki.der), addr, "/cluster_kuzzle_1/").await;
    let r = call(&mut w, json!({"controller": "server", "action": "info", "requestId": "i"})).await;
    assert_eq!(r["node"], "cluster_kuzzle_1");
    drop((w, h2, h1));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_can_be_turned_off() {
    let pki = Pki::new("h2-off");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("{}http2 = false\n{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    let gw = gateway(&gateway_toml(&toml)).await;
    let s = connect_as(&any_cert(&[b"h2", b"http/1.1"]), gw.tls_addr.expect("TLS"), "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "h2 offered with http2 = false");
    drop(s);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_applies_without_dropping_wss_sessions() {
    let pki = Pki::new("renew");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let n2 = Sim::start("cluster_kuzzle_2", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1, &n2])))).await;
    let addr = gw.tls_addr.expect("TLS listener");
    let trusting = connector(&pki.der);
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(wss(&trusting, addr, "/").await);
    }
    let any = any_cert(&[]);
    assert!(served(&any, addr, "localhost").await == pki.der);

    // Renewal half done: the new certificate is in place, its key not yet. Refused, shown, and
    // the old pair keeps serving.
    let new = make(&["localhost"], None);
    replace(&pki.cert, &new.cert_pem);
    let v = eventually(Duration::from_secs(5), "the half-written pair refused on /hastats", || async {
        let v = stats_json(&gw).await;
        (v["process"]["tls"]["certificates"][0]["status"] == "refused").then_some(v)
    })
    .await;
    let cert0 = &v["process"]["tls"]["certificates"][0];
    let err = cert0["error"].as_str().expect("error text");
    assert!(err.contains("do not match") && err.contains("key.pem"), "{err}");
    assert!(served(&any, addr, "localhost").await == pki.der, "the old pair serves while the new one is half written");
    let page = get(gw.stats_addr, "/hastats").await;
    assert!(String::from_utf8_lossy(&page.body).contains("REFUSED"), "the page shows the refusal");

    // The key arrives: new handshakes get the new certificate within seconds.
    let t0 = Instant::now();
    replace(&pki.key, &new.key_pem);
    eventually(Duration::from_secs(5), "new handshakes served the renewed certificate", || async {
        (served(&any, addr, "localhost").await == new.der).then_some(())
    })
    .await;
    println!("renewal: new certificate served {:?} after the key was renamed in", t0.elapsed());
    let v = stats_json(&gw).await;
    assert_eq!(v["process"]["tls"]["certificates"][0]["status"], "ok", "{v}");
    assert_eq!(v["process"]["tls"]["renewals"], 1, "{v}");

    // Every session opened before the renewal carries on.
    for (i, w) in sessions.iter_mut().enumerate() {
        let id = format!("after-{i}");
        let r = call(w, json!({"controller": "server", "action": "now", "requestId": id})).await;
        assert_eq!(r["status"], 200, "session {i}: {r}");
    }
    // And a client trusting only the new certificate now connects.
    let mut w = wss(&connector(&new.der), addr, "/").await;
    let r = call(&mut w, json!({"controller": "server", "action": "now", "requestId": "n"})).await;
    assert_eq!(r["status"], 200);
    drop((sessions, w));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_files_are_refused_and_the_old_pair_kept() {
    let pki = Pki::new("broken");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    // From a file, so that a reload can be asked for too.
    let file = pki.dir.join("gateway.toml");
    std::fs::write(&file, gateway_toml(&toml)).expect("write config");
    let cfg = Config::load(&file).expect("config");
    let gw = kuzzle_gateway::app::bind_and_start(cfg).expect("start");
    let addr = gw.tls_addr.expect("TLS listener");
    let any = any_cert(&[]);
    let good_key = std::fs::read_to_string(&pki.key).expect("key");

    replace(&pki.key, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
    let v = eventually(Duration::from_secs(5), "the broken key refused on /hastats", || async {
        let v = stats_json(&gw).await;
        (v["process"]["tls"]["certificates"][0]["status"] == "refused").then_some(v)
    })
    .await;
    let err = v["process"]["tls"]["certificates"][0]["error"].as_str().expect("error").to_string();
    assert!(err.contains("key.pem") && err.contains("tls.key"), "the error names the file and the key: {err}");
    assert_eq!(v["process"]["tls"]["refused"], 1, "{v}");
    assert!(served(&any, addr, "localhost").await == pki.der, "the old pair still serves");
    assert_eq!(https(&connector(&pki.der), addr, "/_now").await.status, 200);
    let metrics = String::from_utf8_lossy(&get(gw.stats_addr, "/metrics").await.body).into_owned();
    let refused = format!("kuzzle_gateway_tls_certificate_refused{{cert=\"{}\"}} 1", pki.cert.display());
    assert!(metrics.contains(&refused), "{refused} not in /metrics");
    assert!(metrics.contains("kuzzle_gateway_tls_renewals_total{result=\"refused\"} 1"), "refusals counted");
    // A reload meanwhile is not refused for it: the pair is the running one, kept.
    let msg = gw.reload.reload().await.expect("reload with a half-renewed pair");
    assert!(msg.contains("reloaded"), "{msg}");
    assert!(served(&any, addr, "localhost").await == pki.der);

    // Put back: the error clears without counting a renewal (the same pair serves).
    replace(&pki.key, &good_key);
    eventually(Duration::from_secs(5), "the restored key accepted", || async {
        (stats_json(&gw).await["process"]["tls"]["certificates"][0]["status"] == "ok").then_some(())
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_and_holds_its_connection_slot_until_then() {
    let pki = Pki::new("stall");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("{}handshake_timeout = \"400ms\"\n{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    // Few connections: stalled handshakes hold them all (each accept loop also keeps one in hand
    // while it waits, so more stalled clients than the cap are opened).
    let text = gateway_toml(&toml).replacen("[gateway]\n", "[gateway]\nmax_connections = 4\n", 1);
    let gw = gateway(&text).await;
    let addr = gw.tls_addr.expect("TLS listener");

    // Clients that connect and say nothing, then a real one queued behind them.
    let t0 = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..6 {
        stalled.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let real = tokio::spawn({
        let c = connector(&pki.der);
        async move {
            let _s = tls_connect(&c, addr).await;
            Instant::now()
        }
    });
    let mut first_cut = None;
    for s in &mut stalled {
        let mut buf = [0u8; 16];
        let n =
            tokio::time::timeout(T, s.read(&mut buf)).await.expect("a stalled handshake is cut in time").unwrap_or(0);
        assert_eq!(n, 0, "the stalled connection is closed without a byte");
        first_cut.get_or_insert(t0.elapsed());
    }
    let cut = first_cut.expect("cut");
    assert!(cut >= Duration::from_millis(350) && cut < Duration::from_secs(5), "cut after {cut:?}, want ~400ms");
    let served_at = real.await.expect("real client").duration_since(t0);
    assert!(served_at >= Duration::from_millis(350), "the real client got a slot at {served_at:?}, before any cut");
    println!("stalled handshake cut after {cut:?}; the client queued behind 6 of them was served at {served_at:?}");
    gw.shutdown().await;
}

/// `kuzzle-gateway --config FILE --check`: exit status and standard error.
fn check(file: &Path) -> (bool, String) {
    let out = run_check(file);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_reports_certificate_problems_naming_the_file() {
    let dir = scratch_dir("tls-check");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let good = make(&["localhost"], None);
    let other = make(&["localhost"], None);
    let expired = make(&["old.test"], Some((2000, 2001)));
    let cert = write("cert.pem", &good.cert_pem);
    let key = write("key.pem", &good.key_pem);
    let other_key = write("other-key.pem", &other.key_pem);
    let old_cert = write("old.pem", &expired.cert_pem);
    let old_key = write("old-key.pem", &expired.key_pem);
    let config = |name: &str, extra: &str| {
        write(name, &format!("[gateway]\nlisten = \"127.0.0.1:0\"\n[stats]\nlisten = \"127.0.0.1:0\"\n[tls]\nlisten = \"127.0.0.1:0\"\n{extra}"))
    };
    let pair =
        |c: &Path, k: &Path| format!("cert = {:?}\nkey = {:?}\n", c.display().to_string(), k.display().to_string());

    let ok = config("ok.toml", &pair(&cert, &key));
    let (passed, err) = check(&ok);
    assert!(passed, "a good pair fails --check: {err}");

    for (name, extra, needles) in [
        (
            "missing.toml",
            pair(&dir.join("nope.pem"), &key),
            vec!["missing.toml:7: key `tls.cert`", "nope.pem", "cannot read"],
        ),
        ("unreadable.toml", pair(&cert, &dir), vec!["key `tls.key`", "cannot read"]),
        ("mismatch.toml", pair(&cert, &other_key), vec!["key `tls.key`", "other-key.pem", "do not match"]),
        (
            "expired.toml",
            format!("{}[[tls.certificate]]\n{}", pair(&cert, &key), pair(&old_cert, &old_key)),
            vec!["expired.toml:10: key `tls.certificate[0].cert`", "old.pem", "expired on 2001-01-01"],
        ),
    ] {
        let f = config(name, &extra);
        let (passed, err) = check(&f);
        assert!(!passed, "{name}: --check passed: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: {n:?} not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speaking_https_are_reached_over_tls_health_checks_included() {
    let dir = scratch_dir("tls-upstream");
    let n1 = Sim::start("n1", &[]);
    let n2 = Sim::start("n2", &[]);
    let n3 = Sim::start("n3", &[]);
    // n1's certificate names its IP, n2's a host name given as server_name, n3's is not trusted.
    let c1 = make(&["127.0.0.1"], None);
    let c2 = make(&["node2.test"], None);
    let c3 = make(&["127.0.0.1"], None);
    let (f1, f2, f3) =
        (TlsFront::start(n1.addr, &c1).await, TlsFront::start(n2.addr, &c2).await, TlsFront::start(n3.addr, &c3).await);
    let ca1 = dir.join("ca1.pem");
    let ca2 = dir.join("ca2.pem");
    std::fs::write(&ca1, &c1.cert_pem).expect("write");
    std::fs::write(&ca2, &c2.cert_pem).expect("write");
    let node = |name: &str, addr: std::net::SocketAddr, extra: String| {
        format!("[[node]]\nname = \"{name}\"\naddress = \"{addr}\"\ntls = true\n{extra}")
    };
    let ca = |p: &Path| format!("ca = {:?}\n", p.display().to_string());
    let toml = format!(
        "[health]\ninterval = \"100ms\"\nfall = 1\nrise = 1\n{}{}{}",
        node("n1", f1.addr, ca(&ca1)),
        node("n2", f2.addr, format!("{}server_name = \"node2.test\"\n", ca(&ca2))),
        node("n3", f3.addr, ca(&ca1)),
    );
    let gw = gateway(&gateway_toml(&toml)).await;

    // Requests and WebSockets reach the HTTPS nodes.
    let r = get(gw.http_addr, "/n1/_sim/request").await;
    assert_eq!(r.node(), Some("n1"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(gw.http_addr, "/n2/_now").await.node(), Some("n2"));
    let mut w = ws(gw.http_addr, "/n2/").await;
    let (v, _) = ws_call(&mut w, kuzzle("server", "info", "i")).await;
    assert_eq!(v["node"], "n2");
    assert!(f1.handshakes() > 0 && f2.handshakes() > 0, "the nodes were reached through their TLS fronts");

    // A node whose certificate is not trusted is DOWN (its health checks fail the handshake) and
    // its prefix gets the 503; balanced traffic goes to the others.
    eventually(T, "n3 DOWN on /hastats", || async {
        let v = get(gw.stats_addr, "/hastats;json").await.json();
        let n3 = v["nodes"].as_array()?.iter().find(|n| n["name"] == "n3")?.clone();
        (n3["up"] == false).then_some(())
    })
    .await;
    assert_envelope(&get(gw.http_addr, "/n3/_now").await, 503);
    for _ in 0..6 {
        let r = get(gw.http_addr, "/_now").await;
        assert!(matches!(r.node(), Some("n1" | "n2")), "{:?}", r.node());
    }
    assert_eq!(f3.handshakes(), 0, "no handshake with the untrusted node ever completed");
    drop(w);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_tls_settings_are_checked_with_the_configuration() {
    // The CA file is read when the connectors are built (on the blocking pool in a running gateway).
    let c = Config::parse(
        "[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\ntls = true\nca = \"/nonexistent/ca.pem\"\n",
        "g.toml",
    )
    .expect("valid text");
    let e = kuzzle_gateway::core::node_tls::NodeTlsSet::build(&c).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (5, "node[0].ca"), "{e}");
    assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    let e = Config::parse("[[node]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nserver_name = \"x\"\n", "g.toml")
        .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "node[0].server_name"), "{e}");
    assert!(e.message.contains("needs tls = true"), "{e}");
    let e =
        Config::parse("[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nnode_ca = \"/x.pem\"\n", "g.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "cluster.node_ca"), "{e}");
    assert!(e.message.contains("needs tls = true"), "{e}");
    let c = Config::parse(
        "[cluster]\nredis = \"redis://127.0.0.1:1/0\"\nnode_tls = true\nnode_ca = \"/x.pem\"\n",
        "g.toml",
    )
    .expect("valid text");
    let e = kuzzle_gateway::core::node_tls::NodeTlsSet::build(&c).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "cluster.node_ca"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_added_by_a_reload_is_served_and_watched() {
    let pki = Pki::new("added");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    // The configuration lives elsewhere: events in the certificates' directory are theirs only.
    let conf_dir = scratch_dir("tls-added-conf");
    let file = conf_dir.join("gateway.toml");
    let base = format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    // No config file watch: only the certificate watcher may pick up the renewal below.
    let no_watch = |t: String| t.replacen("[gateway]\n", "[gateway]\nwatch = false\n", 1);
    std::fs::write(&file, no_watch(gateway_toml(&base))).expect("write config");
    let gw = kuzzle_gateway::app::bind_and_start(Config::load(&file).expect("config")).expect("start");
    let addr = gw.tls_addr.expect("TLS listener");
    let any = any_cert(&[]);
    assert!(served(&any, addr, "api.test").await == pki.der, "no pair for api.test yet: the default");

    // A pair in another directory, added by a reload.
    // (Not under the first pair's directory: that one is watched already.)
    let sub = scratch_dir("tls-added-api");
    let first = make(&["api.test"], None);
    let (cert, key) = (sub.join("cert.pem"), sub.join("key.pem"));
    std::fs::write(&cert, &first.cert_pem).expect("write");
    std::fs::write(&key, &first.key_pem).expect("write");
    let entry = format!(
        "[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    // [[tls.certificate]] must follow [tls] and come before [[node]]: rebuild the text.
    let text = no_watch(gateway_toml(&format!("{}{entry}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]))));
    std::fs::write(&file, text).expect("write config");
    gw.reload.reload().await.expect("reload");
    assert!(served(&any, addr, "api.test").await == first.der, "the added pair serves its name");

    // Its directory is watched: a renewal there applies without another reload.
    let renewed = make(&["api.test"], None);
    replace(&key, &renewed.key_pem);
    replace(&cert, &renewed.cert_pem);
    eventually(Duration::from_secs(5), "the renewed api.test pair served", || async {
        (served(&any, addr, "api.test").await == renewed.der).then_some(())
    })
    .await;
    assert!(served(&any, addr, "localhost").await == pki.der, "the default pair is untouched");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&sub);
    let _ = std::fs::remove_dir_all(&conf_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_served_but_shown_expired() {
    let dir = scratch_dir("tls-expired");
    let old = make(&["localhost"], Some((2000, 2001)));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &old.cert_pem).expect("write");
    std::fs::write(&key, &old.key_pem).expect("write");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let gw = gateway(&gateway_toml(&format!("{}{}", tls_section(&cert, &key), nodes_toml(&[&n1])))).await;
    // As nginx and haproxy do: served (clients decide), and said loudly.
    assert!(served(&any_cert(&[]), gw.tls_addr.expect("TLS"), "localhost").await == old.der);
    let v = stats_json(&gw).await;
    assert_eq!(v["process"]["tls"]["certificates"][0]["status"], "expired", "{v}");
    let page = String::from_utf8_lossy(&get(gw.stats_addr, "/hastats").await.body).into_owned();
    assert!(page.contains("EXPIRED"), "the page shows it");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_count_against_max_connections_without_deadlock() {
    let pki = Pki::new("h2-cap");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    // Slow answers keep streams open long enough to pile up.
    assert_eq!(post(n1.addr, "/_sim/latency/200").await.status, 200);
    let toml = format!("{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    let cap = 4;
    let gw = gateway(&gateway_toml(&toml).replacen("[gateway]\n", &format!("[gateway]\nmax_connections = {cap}\n"), 1))
        .await;
    let addr = gw.tls_addr.expect("TLS listener");
    let c = any_cert(&[b"h2"]);
    let (a, b) = (h2_conn(&c, addr).await, h2_conn(&c, addr).await);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let uri = format!("https://localhost:{}/_now", addr.port());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(uri).body(Full::new(Bytes::new())).expect("request");
            h2_send(&mut s, req).await.1.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("stream task"), 200, "every stream is served (no deadlock)");
    }
    let v = stats_json(&gw).await;
    let max = v["nodes"][0]["traffic"]["max"].as_u64().expect("node max");
    assert!((1..=cap).contains(&max), "the node had {max} requests at once from 24 streams; the cap is {cap}");
    println!("24 HTTP/2 streams on 2 connections, max_connections = {cap}: at most {max} at the node at once");
    drop((a, b));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_off_renewed_files_wait_for_a_reload() {
    let pki = Pki::new("nowatch");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let conf_dir = scratch_dir("tls-nowatch-conf");
    let file = conf_dir.join("gateway.toml");
    let text = gateway_toml(&format!("{}watch = false\n{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1])))
        .replacen("[gateway]\n", "[gateway]\nwatch = false\n", 1);
    std::fs::write(&file, text).expect("write config");
    let gw = kuzzle_gateway::app::bind_and_start(Config::load(&file).expect("config")).expect("start");
    let addr = gw.tls_addr.expect("TLS listener");
    let any = any_cert(&[]);
    let new = make(&["localhost"], None);
    replace(&pki.key, &new.key_pem);
    replace(&pki.cert, &new.cert_pem);
    // Twice the debounce and more: a watcher would have loaded it by then.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(served(&any, addr, "localhost").await == pki.der, "[tls] watch = false: the files are not watched");
    gw.reload.reload().await.expect("reload");
    assert!(served(&any, addr, "localhost").await == new.der, "a reload reads them");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&conf_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_http2_connections_are_closed() {
    let pki = Pki::new("h2-idle");
    let n1 = Sim::start("cluster_kuzzle_1", &[]);
    let toml = format!("[timeouts]\nclient = \"500ms\"\n{}{}", tls_section(&pki.cert, &pki.key), nodes_toml(&[&n1]));
    let gw = gateway(&gateway_toml(&toml)).await;
    let addr = gw.tls_addr.expect("TLS listener");

    // A well-behaved client that stops sending requests gets a GOAWAY and its connection closes.
    let mut h2 = h2_conn(&any_cert(&[b"h2"]), addr).await;
    let (_, r) = h2_send(
        &mut h2,
        http::Request::get(format!("https://localhost:{}/_now", addr.port()))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 200);
    let t0 = Instant::now();
    eventually(Duration::from_secs(5), "the idle HTTP/2 connection closed", || {
        let closed = h2.is_closed();
        async move { closed.then_some(()) }
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(300), "closed after {:?}, before the idle timeout", t0.elapsed());

    // A client that says its preface and then nothing (it will not answer the GOAWAY's PING):
    // closed too, its slot freed.
    let mut s = connect_as(&any_cert(&[b"h2"]), addr, "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the silent HTTP/2 connection was not closed within 5 s");
    println!("silent HTTP/2 client closed after {:?} ([timeouts] client = 500ms)", t0.elapsed());
    eventually(Duration::from_secs(5), "no client connection left on the frontend", || async {
        (stats_json(&gw).await["frontend"]["cur"] == 0).then_some(())
    })
    .await;
    gw.shutdown().await;
}
