//! Control plane: TLS for the `[tls]` listener: certificate pairs chosen by SNI ([`certs`]),
//! renewed on disk without a reload ([`renew`]), and `--check` ([`check`]); ALPN `h2` is served by
//! [`crate::data::h2`].
//!
//! One [`Tls`] lives as long as the gateway. Its rustls configuration resolves certificates
//! through a [`certs::Resolver`] whose set is swapped by reloads and by the file watcher, so a
//! renewed pair applies to the next handshake and open connections keep theirs.

pub mod certs;
pub mod check;
pub mod renew;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use serde::Serialize;
use tokio_rustls::TlsAcceptor;

use self::certs::{CertSet, Loaded, PairError, Resolver};
use crate::control::config::Config;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The TLS state of the gateway, shared by the accept loops (read), the reload task and the
/// certificate watcher (write). Cheap to clone as [`TlsSlot`].
pub struct Tls {
    /// Picks each handshake's certificate by SNI; its set is swapped, the resolver stays.
    resolver: Arc<Resolver>,
    /// None while no `[tls]` is configured; replaced by reloads (ALPN may change).
    acceptor: ArcSwapOption<TlsAcceptor>,
    /// The pairs in use and their last refusal; control plane only, never held across `.await`.
    pairs: Mutex<Vec<Slot>>,
    /// Directories of the certificate files, for the watcher (empty: nothing to watch).
    dirs: tokio::sync::watch::Sender<Vec<PathBuf>>,
    /// The crypto provider (ring) every pair is loaded with and rustls configured with.
    provider: Arc<CryptoProvider>,
    /// Pairs replaced by the watcher after their files changed.
    pub renewals: AtomicU64,
    /// Changed files the watcher refused (the previous pair stayed).
    pub refused: AtomicU64,
}

/// What client accept loops read per connection and reloads replace.
pub type TlsSlot = Arc<Tls>;

/// One configured pair: what serves, and why the files on disk do not (when they do not).
#[derive(Clone)]
struct Slot {
    /// The pair that serves now.
    loaded: Loaded,
    /// Epoch seconds the served pair was loaded.
    loaded_at: u64,
    /// The last refusal of this pair's files (epoch seconds, message); None once they load.
    error: Option<(u64, String)>,
    /// Fingerprint of the refused files: the same bad files are not tried (and logged) again.
    refused: Option<u64>,
}

/// A validated `[tls]`, ready to apply in one step ([`Tls::commit`]).
pub struct Prepared {
    /// Every pair of `[tls]`, loaded (or kept from the running set when their files broke).
    pairs: Vec<Slot>,
    /// The rustls acceptor for the new settings (None: no `[tls]`).
    acceptor: Option<Arc<TlsAcceptor>>,
    /// `[tls] watch`: the certificate directories are watched for renewals.
    watch: bool,
}

impl Prepared {
    /// Pairs whose files were refused and that keep serving their running certificate, in words
    /// for the reload's outcome (so `POST /reload` and the stats page say it, not only the log).
    pub fn kept(&self) -> Vec<String> {
        self.pairs
            .iter()
            .filter_map(|s| s.error.as_ref().map(|(_, m)| format!("TLS: kept the running certificate: {m}")))
            .collect()
    }
}

impl Tls {
    /// The TLS state for `config` (no acceptor when it has no `[tls]`); an unusable pair is an error.
    pub fn start(config: &Config) -> Result<TlsSlot, PairError> {
        let tls = Arc::new(Tls {
            resolver: Arc::default(),
            acceptor: ArcSwapOption::empty(),
            pairs: Mutex::new(Vec::new()),
            dirs: tokio::sync::watch::Sender::new(Vec::new()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            renewals: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let p = tls.prepare(config)?;
        tls.commit(p);
        Ok(tls)
    }

    /// Load every pair of `config`. A pair the running configuration already has (same files, same
    /// names) whose files are now broken keeps its loaded certificate (a renewal half done must not
    /// fail a reload); a new pair must load.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, PairError> {
        let Some(t) = &config.tls else { return Ok(Prepared { pairs: Vec::new(), acceptor: None, watch: false }) };
        let current = crate::util::lock(&self.pairs).clone();
        let now = crate::util::epoch_secs();
        let mut pairs = Vec::new();
        for pair in t.pairs() {
            match certs::load(&pair, &self.provider) {
                Ok(loaded) => {
                    // The same files as the running pair: it keeps its load time on the stats page.
                    let same =
                        current.iter().find(|s| s.loaded.pair == pair && s.loaded.fingerprint == loaded.fingerprint);
                    let loaded_at = same.map_or(now, |s| s.loaded_at);
                    if same.is_none() {
                        warn_validity(&loaded, now);
                    }
                    pairs.push(Slot { loaded, loaded_at, error: None, refused: None });
                }
                Err(e) => match current.iter().find(|s| s.loaded.pair == pair) {
                    Some(old) => {
                        tracing::error!(error = %e, "TLS certificate refused; the previous pair stays in use");
                        let refused = certs::fingerprint(&pair).ok();
                        pairs.push(Slot { error: Some((now, e.to_string())), refused, ..old.clone() });
                    }
                    None => return Err(e),
                },
            }
        }
        let cfg = server_config(self.provider.clone(), self.resolver.clone(), t.http2).map_err(|e| PairError {
            key: "tls".into(),
            path: PathBuf::from(&config.source),
            message: e.to_string(),
        })?;
        Ok(Prepared { pairs, acceptor: Some(Arc::new(TlsAcceptor::from(Arc::new(cfg)))), watch: t.watch })
    }

    /// Serve the prepared pairs from the next handshake on, and watch their directories.
    pub fn commit(&self, p: Prepared) {
        let dirs = if p.watch { dirs_of(&p.pairs) } else { Vec::new() };
        {
            let mut pairs = crate::util::lock(&self.pairs);
            self.resolver.set.store(CertSet::new(p.pairs.iter().map(|s| &s.loaded)).map(Arc::new));
            *pairs = p.pairs;
        }
        self.acceptor.store(p.acceptor);
        self.dirs.send_if_modified(|d| {
            let changed = *d != dirs;
            *d = dirs;
            changed
        });
    }

    /// The acceptor for the next client (None without `[tls]`).
    pub fn acceptor(&self) -> Option<Arc<TlsAcceptor>> {
        self.acceptor.load_full()
    }

    /// Read the files of every pair again; a changed pair that loads replaces the served one, one
    /// that does not is refused (logged, shown on the stats page) and the served one stays.
    /// Returns how many pairs were replaced.
    pub fn refresh(&self) -> usize {
        let now = crate::util::epoch_secs();
        let mut pairs = crate::util::lock(&self.pairs);
        let mut replaced = 0;
        for slot in pairs.iter_mut() {
            let pair = slot.loaded.pair.clone();
            let fp = match certs::fingerprint(&pair) {
                Ok(fp) => fp,
                Err(e) => {
                    self.refuse(slot, now, e, None);
                    continue;
                }
            };
            if fp == slot.loaded.fingerprint {
                // Back to the files that serve (a bad write undone): nothing is wrong any more.
                slot.error = None;
                slot.refused = None;
                continue;
            }
            if slot.refused == Some(fp) {
                continue;
            }
            match certs::load(&pair, &self.provider) {
                Ok(loaded) => {
                    tracing::info!(
                        cert = %pair.cert.display(),
                        names = ?loaded.names,
                        not_after = %date(loaded.not_after),
                        "TLS certificate renewed: new handshakes use it"
                    );
                    warn_validity(&loaded, now);
                    *slot = Slot { loaded, loaded_at: now, error: None, refused: None };
                    replaced += 1;
                }
                Err(e) => self.refuse(slot, now, e, Some(fp)),
            }
        }
        if replaced > 0 {
            self.resolver.set.store(CertSet::new(pairs.iter().map(|s| &s.loaded)).map(Arc::new));
            self.renewals.fetch_add(replaced as u64, Ordering::Relaxed);
        }
        replaced
    }

    fn refuse(&self, slot: &mut Slot, now: u64, e: PairError, fp: Option<u64>) {
        let msg = e.to_string();
        // Logged once per problem, not on every event or poll.
        if slot.error.as_ref().is_some_and(|(_, m)| *m == msg) && slot.refused == fp {
            return;
        }
        tracing::error!(error = %msg, "TLS certificate files refused; the previous pair stays in use");
        self.refused.fetch_add(1, Ordering::Relaxed);
        slot.error = Some((now, msg));
        slot.refused = fp;
    }

    /// Directories to watch, as last committed.
    pub fn watched_dirs(&self) -> tokio::sync::watch::Receiver<Vec<PathBuf>> {
        self.dirs.subscribe()
    }

    /// What the stats page shows; None without `[tls]`.
    pub fn view(&self, config: &Config) -> Option<TlsView> {
        let t = config.tls.as_ref()?;
        let now = crate::util::epoch_secs() as i64;
        let pairs = crate::util::lock(&self.pairs);
        let certificates = pairs
            .iter()
            .map(|s| {
                let l = &s.loaded;
                let expired = l.not_after < now;
                CertView {
                    place: l.pair.place.clone(),
                    cert: l.pair.cert.display().to_string(),
                    key: l.pair.key.display().to_string(),
                    names: l.names.clone(),
                    not_after: l.not_after.max(0) as u64,
                    status: match (&s.error, expired) {
                        (Some(_), _) => "refused",
                        (None, true) => "expired",
                        (None, false) => "ok",
                    },
                    loaded_at: s.loaded_at,
                    error: s.error.as_ref().map(|(_, m)| m.clone()),
                    error_at: s.error.as_ref().map(|(at, _)| *at),
                }
            })
            .collect();
        Some(TlsView {
            http2: t.http2,
            watch: t.watch,
            renewals: self.renewals.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            certificates,
        })
    }
}

/// TLS as the stats page shows it (gateway level).
#[derive(Debug, Clone, Serialize)]
pub struct TlsView {
    /// `[tls] http2`: ALPN offers `h2`.
    pub http2: bool,
    /// `[tls] watch`: renewed files on disk are picked up without a reload.
    pub watch: bool,
    /// Pairs replaced since start because their files changed.
    pub renewals: u64,
    /// Changed files refused since start (the previous pair stayed).
    pub refused: u64,
    /// The default first.
    pub certificates: Vec<CertView>,
}

/// One configured pair.
#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    /// Configuration key: `tls` or `tls.certificate[N]`.
    pub place: String,
    /// Path of the certificate chain file.
    pub cert: String,
    /// Path of the private key file.
    pub key: String,
    /// SNI names the pair answers (configured, else the certificate's DNS names).
    pub names: Vec<String>,
    /// Expiry of the served certificate, epoch seconds.
    pub not_after: u64,
    /// `ok`; `expired`; `refused`: the files on disk were refused and the previous pair serves.
    pub status: &'static str,
    /// When the served pair was loaded, epoch seconds.
    pub loaded_at: u64,
    /// Why the files on disk were refused (the previous pair serves), None once they load.
    pub error: Option<String>,
    /// When they were refused, epoch seconds.
    pub error_at: Option<u64>,
}

/// rustls for clients: TLS 1.2 and 1.3 only with ring's cipher suites (all AEAD with forward
/// secrecy), certificates from `resolver`, ALPN `h2` first when HTTP/2 is on.
fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    http2: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if http2 { vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(cfg)
}

fn dirs_of(pairs: &[Slot]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = pairs
        .iter()
        .flat_map(|s| [&s.loaded.pair.cert, &s.loaded.pair.key])
        .filter_map(|p| std::path::absolute(p).ok()?.parent().map(PathBuf::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Served anyway (as nginx and haproxy do), but said loudly: clients will refuse it.
fn warn_validity(l: &Loaded, now: u64) {
    let now = now as i64;
    if l.not_after < now {
        tracing::error!(cert = %l.pair.cert.display(), not_after = %date(l.not_after), "TLS certificate expired");
    } else if l.not_before > now {
        tracing::error!(cert = %l.pair.cert.display(), not_before = %date(l.not_before), "TLS certificate not valid yet");
    }
}

/// An epoch time as RFC 3339 (UTC).
pub fn date(epoch: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(epoch.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How long a client may take to finish its TLS handshake.
pub fn handshake_timeout(config: &Config) -> Duration {
    config.tls.as_ref().map_or(config.timeouts.client.0, |t| t.handshake_timeout.0)
}

/// Did the client choose HTTP/2 by ALPN?
pub fn is_h2<IO>(s: &tokio_rustls::server::TlsStream<IO>) -> bool {
    s.get_ref().1.alpn_protocol() == Some(ALPN_H2)
}
