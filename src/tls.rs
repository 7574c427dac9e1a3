//! Control plane: build the rustls acceptor for the `[tls]` listener from PEM files.

use std::sync::Arc;

use crate::config::TlsSection;

/// Load the certificate chain and key named by `[tls]` into an acceptor (HTTP/1.1 over TLS).
pub fn acceptor(t: &TlsSection) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = {
        let f = std::fs::File::open(&t.cert).map_err(|e| format!("cannot open cert {}: {e}", t.cert.display()))?;
        rustls_pemfile::certs(&mut std::io::BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot parse cert {}: {e}", t.cert.display()))?
    };
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", t.cert.display()));
    }
    let key = {
        let f = std::fs::File::open(&t.key).map_err(|e| format!("cannot open key {}: {e}", t.key.display()))?;
        rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
            .map_err(|e| format!("cannot parse key {}: {e}", t.key.display()))?
            .ok_or_else(|| format!("no private key found in {}", t.key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The acceptor client TLS connections use, swapped by reloads (new certificate files apply to
/// the next handshake); None while no `[tls]` is configured.
pub type TlsSlot = Arc<arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>>;

/// The acceptor for `config`'s `[tls]`, if any.
pub fn acceptor_for(config: &crate::config::Config) -> Result<Option<Arc<tokio_rustls::TlsAcceptor>>, String> {
    config.tls.as_ref().map(|t| acceptor(t).map(Arc::new)).transpose()
}
