//! Control plane: load PEM certificate pairs (parsed, key checked against the certificate, names
//! and validity read), and the SNI lookup each handshake makes (the data plane's only read).

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::control::config::CertPair;

/// Why a pair cannot be used: the configuration key and the file it names, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// Dotted key: `tls.cert`, `tls.certificate[1].key`...
    pub key: String,
    /// The file the key names.
    pub path: PathBuf,
    /// What is wrong with it (read, parse, key mismatch...).
    pub message: String,
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}: {}", self.key, self.path.display(), self.message)
    }
}

impl std::error::Error for PairError {}

/// A pair ready for handshakes, with what the stats page and `--check` show of it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configured pair it was loaded from (files, names, place): renewals reread it.
    pub pair: CertPair,
    /// Chain and signing key, as handed to rustls.
    pub key: Arc<CertifiedKey>,
    /// SNI names this pair answers (lowercase): the configured `names`, else the certificate's
    /// DNS subjectAltNames.
    pub names: Vec<String>,
    /// Validity of the leaf certificate, epoch seconds.
    pub not_before: i64,
    /// Expiry of the leaf, epoch seconds (warned about, shown on the stats page).
    pub not_after: i64,
    /// Hash of both files' bytes: the watcher reloads only what changed.
    pub fingerprint: u64,
}

fn err(pair: &CertPair, which: &str, path: &Path, message: impl Into<String>) -> PairError {
    PairError { key: format!("{}.{which}", pair.place), path: path.to_path_buf(), message: message.into() }
}

fn read(pair: &CertPair, which: &str, path: &Path) -> Result<Vec<u8>, PairError> {
    std::fs::read(path).map_err(|e| err(pair, which, path, format!("cannot read: {e}")))
}

/// Hash of both files as they are now (what [`Loaded::fingerprint`] is compared with).
pub fn fingerprint(pair: &CertPair) -> Result<u64, PairError> {
    let cert = read(pair, "cert", &pair.cert)?;
    let key = read(pair, "key", &pair.key)?;
    Ok(hash(&cert, &key))
}

fn hash(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// Read, parse and check one pair: a chain and a key that belongs to its first certificate.
pub fn load(pair: &CertPair, provider: &CryptoProvider) -> Result<Loaded, PairError> {
    let cert_bytes = read(pair, "cert", &pair.cert)?;
    let key_bytes = read(pair, "key", &pair.key)?;
    let chain = rustls_pemfile::certs(&mut &cert_bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pair, "cert", &pair.cert, format!("cannot parse PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(err(pair, "cert", &pair.cert, "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"));
    };
    let (_, x509) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| err(pair, "cert", &pair.cert, format!("not a valid X.509 certificate: {e}")))?;
    let validity = x509.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let names = if pair.names.is_empty() {
        dns_names(&x509)
    } else {
        pair.names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    let der = rustls_pemfile::private_key(&mut &key_bytes[..])
        .map_err(|e| err(pair, "key", &pair.key, format!("cannot parse PEM: {e}")))?
        .ok_or_else(|| err(pair, "key", &pair.key, "no PEM private key found (PKCS#8, PKCS#1 or SEC1)"))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| err(pair, "key", &pair.key, format!("unusable private key: {e}")))?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        // A key type whose public half rustls cannot derive: the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(err(
                pair,
                "key",
                &pair.key,
                format!("certificate and key do not match (the certificate is {})", pair.cert.display()),
            ))
        }
    }
    Ok(Loaded {
        pair: pair.clone(),
        key: Arc::new(key),
        names,
        not_before,
        not_after,
        fingerprint: hash(&cert_bytes, &key_bytes),
    })
}

/// DNS names of a certificate's subjectAltName extension, lowercase (IP addresses never come as SNI).
fn dns_names(x509: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = x509.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The certificates of one moment, by SNI name: built by the control plane, read per handshake.
#[derive(Debug)]
pub struct CertSet {
    /// The first pair: for clients without SNI or with a name no pair has.
    default: Arc<CertifiedKey>,
    /// Pairs by exact lowercase name, without a trailing dot.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept as `example.com`: it matches exactly one more label.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// The first pair is the default (clients without SNI, or with a name no pair has); the first
    /// pair naming a name serves it.
    pub fn new<'a>(pairs: impl IntoIterator<Item = &'a Loaded>) -> Option<CertSet> {
        let mut pairs = pairs.into_iter();
        let first = pairs.next()?;
        let mut set = CertSet { default: first.key.clone(), exact: HashMap::new(), wildcard: HashMap::new() };
        for l in std::iter::once(first).chain(pairs) {
            for n in &l.names {
                let n = n.trim_end_matches('.');
                match n.strip_prefix("*.") {
                    Some(parent) => set.wildcard.entry(parent.to_string()),
                    None => set.exact.entry(n.to_string()),
                }
                .or_insert_with(|| l.key.clone());
            }
        }
        Some(set)
    }

    /// The pair for a client that sent `sni` (or none).
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni else { return &self.default };
        let lower;
        let name = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        let name = name.trim_end_matches('.');
        if let Some(k) = self.exact.get(name) {
            return k;
        }
        if let Some(k) = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
            return k;
        }
        &self.default
    }
}

/// rustls asks this for a certificate on every handshake: one atomic load, one map lookup.
#[derive(Debug, Default)]
pub struct Resolver {
    /// The certificates in force; swapped by reloads and renewals (None: no `[tls]`).
    pub set: arc_swap::ArcSwapOption<CertSet>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().as_ref().map(|s| s.pick(hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, tag: &str, names: &[&str]) -> (CertPair, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("generate");
        let (cert, key) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}-key.pem")));
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
        (CertPair { place: format!("tls.certificate[{tag}]"), cert, key, names: Vec::new() }, ck.cert.der().to_vec())
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kgw-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_then_default() {
        let d = dir("sni");
        let (a, a_der) = pair(&d, "a", &["a.test"]);
        let (w, w_der) = pair(&d, "w", &["*.w.test", "B.test"]);
        let la = load(&a, &provider()).expect("a");
        let lw = load(&w, &provider()).expect("w");
        assert_eq!(lw.names, vec!["*.w.test", "b.test"], "SANs, lowercase");
        let set = CertSet::new([&la, &lw]).expect("set");
        let der = |k: &Arc<CertifiedKey>| k.cert[0].to_vec();
        assert_eq!(der(set.pick(Some("a.test"))), a_der);
        assert_eq!(der(set.pick(Some("x.w.test"))), w_der);
        assert_eq!(der(set.pick(Some("X.W.TEST."))), w_der, "case and the root dot do not matter");
        assert_eq!(der(set.pick(Some("b.test"))), w_der);
        assert_eq!(der(set.pick(Some("y.x.w.test"))), a_der, "a wildcard covers one label only");
        assert_eq!(der(set.pick(Some("w.test"))), a_der, "nor the parent itself");
        assert_eq!(der(set.pick(None)), a_der);
        assert_eq!(der(set.pick(Some("other.test"))), a_der);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let d = dir("errors");
        let (a, _) = pair(&d, "a", &["a.test"]);
        let (b, _) = pair(&d, "b", &["b.test"]);
        let mixed = CertPair { key: b.key.clone(), ..a.clone() };
        let e = load(&mixed, &provider()).unwrap_err();
        assert_eq!(e.key, "tls.certificate[a].key");
        assert!(e.message.contains("do not match"), "{e}");
        let missing = CertPair { cert: d.join("nope.pem"), ..a.clone() };
        let e = load(&missing, &provider()).unwrap_err();
        assert!(e.to_string().contains("nope.pem") && e.key.ends_with(".cert"), "{e}");
        let garbage = d.join("garbage.pem");
        std::fs::write(&garbage, "hello\n").expect("write");
        let e = load(&CertPair { key: garbage.clone(), ..a.clone() }, &provider()).unwrap_err();
        assert!(e.message.contains("no PEM private key"), "{e}");
        let e = load(&CertPair { cert: garbage, ..a.clone() }, &provider()).unwrap_err();
        assert!(e.message.contains("no PEM certificate"), "{e}");
        let named = CertPair { names: vec!["Api.Example.com".into()], ..a };
        assert_eq!(load(&named, &provider()).expect("ok").names, vec!["api.example.com"], "configured names win");
        let _ = std::fs::remove_dir_all(&d);
    }
}
