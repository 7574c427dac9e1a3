//! Control plane: what `--check` says of the certificate pairs: missing, unreadable, unparsable,
//! mismatched, expired or not yet valid files are errors naming the file, line and key; a
//! certificate expiring within [`EXPIRY_WARNING`], answering no SNI name, or naming a name an
//! earlier pair already serves is a warning.

use std::time::Duration;

use crate::control::config::Config;

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
    let at = |key: &str| match config.line_of(key) {
        0 => format!("{}: key `{key}`", config.source),
        line => format!("{}:{line}: key `{key}`", config.source),
    };
    let provider = rustls::crypto::ring::default_provider();
    let now = now as i64;
    let mut out = Vec::new();
    // Which pair serves each name: the first that names it.
    let mut first_with: std::collections::HashMap<String, String> = std::collections::HashMap::new();
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
        for n in &loaded.names {
            if let Some(first) = first_with.get(n) {
                let message =
                    format!("{}: {file}: {n} is served by {first}, listed earlier: not by this pair", at(&key));
                out.push(Finding { error: false, message });
            } else {
                first_with.insert(n.clone(), pair.place.clone());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch seconds of a date (UTC midnight).
    fn epoch(y: i32, m: u8, d: u8) -> u64 {
        rcgen::date_time_ymd(y, m, d).unix_timestamp() as u64
    }

    #[test]
    fn dates_are_judged_at_now() {
        let dir = std::env::temp_dir().join(format!("kgw-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        let text = format!("[tls]\ncert = {:?}\nkey = {:?}\n", c.display().to_string(), k.display().to_string());
        let cfg = Config::parse(&text, "<test>").expect("config");

        assert_eq!(check(&cfg, epoch(2020, 6, 1)), vec![], "valid, far from expiry");
        let soon = check(&cfg, epoch(2029, 12, 25));
        assert!(soon.len() == 1 && !soon[0].error, "{soon:?}");
        assert!(soon[0].message.contains("expires on 2030-01-01"), "{soon:?}");
        let late = check(&cfg, epoch(2030, 2, 1));
        assert!(late.len() == 1 && late[0].error && late[0].message.contains("expired on 2030-01-01"), "{late:?}");
        assert!(late[0].message.contains("key `tls.cert`") && late[0].message.contains("c.pem"), "{late:?}");
        let twice = format!(
            "{text}[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
            c.display().to_string(),
            k.display().to_string()
        );
        let dup = check(&Config::parse(&twice, "<test>").expect("config"), epoch(2020, 6, 1));
        assert!(dup.len() == 1 && !dup[0].error && dup[0].message.contains("a.test is served by tls,"), "{dup:?}");
        let early = check(&cfg, epoch(1999, 1, 1));
        assert!(
            early.len() == 1 && early[0].error && early[0].message.contains("not valid before 2000-01-01"),
            "{early:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
