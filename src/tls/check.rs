//! Control plane: what `--check` says of the certificate pairs: missing, unreadable, unparsable,
//! mismatched, expired or not yet valid files are errors naming the file, line and key; a
//! certificate expiring within [`EXPIRY_WARNING`] or answering no SNI name is a warning.

use std::time::Duration;

use crate::config::Config;

/// A certificate expiring sooner than this gets a warning (certbot renews 30 days ahead).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// One finding of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// An error makes `--check` fail (exit 1); a warning does not.
    pub error: bool,
    /// `FILE:LINE: key `KEY`: PATH: what is wrong`.
    pub message: String,
}

/// Load every pair of `config` as the gateway would, and judge the certificates' dates at `now`
/// (epoch seconds).
pub fn check(config: &Config, now: u64) -> Vec<Finding> {
    let Some(t) = &config.tls else { return Vec::new() };
    let text = std::fs::read_to_string(&config.source).unwrap_or_default();
    let at = |key: &str| match crate::config::locate(&text, key) {
        0 => format!("{}: key `{key}`", config.source),
        line => format!("{}:{line}: key `{key}`", config.source),
    };
    let provider = rustls::crypto::ring::default_provider();
    let now = now as i64;
    let mut out = Vec::new();
    for (i, pair) in t.pairs().iter().enumerate() {
        let loaded = match super::certs::load(pair, &provider) {
            Ok(l) => l,
            Err(e) => {
                out.push(Finding {
                    error: true,
                    message: format!("{}: {}: {}", at(&e.key), e.path.display(), e.message),
                });
                continue;
            }
        };
        let key = format!("{}.cert", pair.place);
        let file = pair.cert.display();
        if loaded.not_after < now {
            let message = format!("{}: {file}: certificate expired on {}", at(&key), super::date(loaded.not_after));
            out.push(Finding { error: true, message });
        } else if loaded.not_before > now {
            let message =
                format!("{}: {file}: certificate not valid before {}", at(&key), super::date(loaded.not_before));
            out.push(Finding { error: true, message });
        } else if loaded.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
            let message = format!("{}: {file}: certificate expires on {}", at(&key), super::date(loaded.not_after));
            out.push(Finding { error: false, message });
        }
        if i > 0 && loaded.names.is_empty() {
            let message = format!(
                "{}: {file}: the certificate has no DNS name and the entry no `names`: only clients without SNI could get it, and they get the default",
                at(&key)
            );
            out.push(Finding { error: false, message });
        }
    }
    out
}
