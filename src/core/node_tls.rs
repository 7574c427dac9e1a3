//! Core: TLS to the nodes (`[[node]] tls`, `[cluster] node_tls`): the client configuration a
//! node's connections use, built by the control plane from the configuration's settings (a file
//! read: on the blocking pool, so that `--check` and reloads report a bad CA file), and the
//! handshake made after each TCP connect (pooled connections and health checks).

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::control::config::{Config, ConfigErrors, NodeTlsSpec};

/// Where the system's CA bundle usually is (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE);
/// `SSL_CERT_FILE` comes first, as with OpenSSL.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// How to speak TLS to one node. Equal when the settings and the CA file's bytes are: a reload
/// that changes neither keeps the node (and its pooled connections).
#[derive(Clone)]
pub struct NodeTls {
    /// PEM bundle of the CAs trusted for the node's certificate; None: the system's bundle.
    pub ca: Option<PathBuf>,
    /// Name checked in the node's certificate and sent as SNI; None: the node's IP address.
    pub server_name: Option<String>,
    /// Hash of the CA file's bytes: a renewed bundle at the same path is another configuration.
    fingerprint: u64,
    /// The rustls client configuration, shared by every connection to the node.
    connector: TlsConnector,
    /// Epoch second of the last handshake failure logged: one line per 10 s, not one per request.
    last_warning: Arc<AtomicU64>,
}

impl PartialEq for NodeTls {
    fn eq(&self, o: &Self) -> bool {
        self.ca == o.ca && self.server_name == o.server_name && self.fingerprint == o.fingerprint
    }
}

impl Eq for NodeTls {}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls").field("ca", &self.ca).field("server_name", &self.server_name).finish()
    }
}

impl NodeTls {
    /// Read the CA bundle (`ca`, else the system's) and build the client configuration: TLS 1.2
    /// and 1.3, ALPN `http/1.1` (the pool speaks HTTP/1.1, and WebSockets need it). Blocking.
    pub fn new(ca: Option<&Path>, server_name: Option<String>) -> Result<NodeTls, String> {
        if let Some(n) = &server_name {
            ServerName::try_from(n.clone()).map_err(|_| format!("invalid server name {n:?}"))?;
        }
        let (file, bytes) = match ca {
            Some(p) => (p.to_path_buf(), std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?),
            None => system_bundle()?,
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &bytes[..]) {
            let c = c.map_err(|e| format!("{}: cannot parse PEM: {e}", file.display()))?;
            roots.add(c).map_err(|e| format!("{}: unusable CA certificate: {e}", file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no PEM certificate found", file.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        Ok(NodeTls {
            ca: ca.map(Path::to_path_buf),
            server_name,
            fingerprint: h.finish(),
            connector: TlsConnector::from(Arc::new(cfg)),
            last_warning: Arc::default(),
        })
    }

    /// The TLS handshake on a node connection, within `timeout`; the certificate must name
    /// `server_name` (or `ip`). A failure is logged with its reason (rate-limited).
    pub async fn connect(&self, tcp: TcpStream, ip: IpAddr, timeout: Duration) -> Result<TlsStream<TcpStream>, Error> {
        let name = match &self.server_name {
            // Checked when the configuration was read.
            Some(n) => ServerName::try_from(n.clone()).map_err(|_| Error::Handshake)?,
            None => ServerName::IpAddress(ip.into()),
        };
        match tokio::time::timeout(timeout, self.connector.connect(name, tcp)).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(e)) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let last = self.last_warning.load(Ordering::Relaxed);
                let first = now >= last + 10
                    && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok();
                if first {
                    tracing::warn!(node = %ip, server_name = ?self.server_name, error = %e, "TLS handshake with a node failed");
                } else {
                    tracing::debug!(node = %ip, error = %e, "TLS handshake with a node failed");
                }
                Err(Error::Handshake)
            }
            Ok(Ok(s)) => Ok(s),
        }
    }
}

/// Why a TLS handshake with a node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No handshake within the connect timeout.
    Timeout,
    /// Logged where it happened, with its reason.
    Handshake,
}

fn system_bundle() -> Result<(PathBuf, Vec<u8>), String> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    for p in env.into_iter().chain(SYSTEM_BUNDLES.iter().map(PathBuf::from)) {
        if let Ok(b) = std::fs::read(&p) {
            return Ok((p, b));
        }
    }
    Err(format!("no system CA bundle found (tried SSL_CERT_FILE, {}): set `ca`", SYSTEM_BUNDLES.join(", ")))
}

/// The TLS connectors a configuration needs, one per distinct setting: built by the control plane
/// (a file read each), handed to the registry with the configuration it was built from.
#[derive(Debug, Clone, Default)]
pub struct NodeTlsSet(std::collections::BTreeMap<NodeTlsSpec, NodeTls>);

impl NodeTlsSet {
    /// Build every connector `config` names (blocking: reads the CA files); every bad file is a
    /// mistake placed at its key (`node[1].ca`, `cluster.node_ca`).
    pub fn build(config: &Config) -> Result<NodeTlsSet, ConfigErrors> {
        let mut set = std::collections::BTreeMap::new();
        let mut errors = Vec::new();
        let cluster = config.cluster.as_ref().and_then(|c| c.tls.as_ref().map(|t| (t, "cluster.node_".to_string())));
        let nodes =
            config.nodes.iter().enumerate().filter_map(|(i, n)| n.tls.as_ref().map(|t| (t, format!("node[{i}]."))));
        for (spec, prefix) in nodes.chain(cluster) {
            if set.contains_key(spec) {
                continue;
            }
            match NodeTls::new(spec.ca.as_deref(), spec.server_name.clone()) {
                Ok(t) => {
                    set.insert(spec.clone(), t);
                }
                Err(m) => {
                    // The CA file named, else the system's bundle that `tls = true` asked for.
                    let key = if spec.ca.is_some() { "ca" } else { "tls" };
                    errors.push(config.error_at(&format!("{prefix}{key}"), m));
                }
            }
        }
        if errors.is_empty() {
            Ok(NodeTlsSet(set))
        } else {
            Err(ConfigErrors::new(&config.source, errors))
        }
    }

    /// The connector for `spec` (built by [`NodeTlsSet::build`] from the same configuration).
    pub fn get(&self, spec: &NodeTlsSpec) -> Option<&NodeTls> {
        self.0.get(spec)
    }
}
