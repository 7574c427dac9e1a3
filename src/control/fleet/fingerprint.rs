//! Control plane: the configuration fingerprint gateways of a fleet compare: a hash of the file's
//! settings, written order, comments and the keys that differ per gateway left out.

use sha1::{Digest, Sha1};

/// Keys each gateway of a fleet sets for itself (where it listens, how many threads its machine
/// has, its upgrade socket, its name): leaving them out, gateways that share a file agree.
pub const PER_GATEWAY_KEYS: [(&str, &str); 6] = [
    ("gateway", "listen"),
    ("gateway", "threads"),
    ("gateway", "upgrade_socket"),
    ("stats", "listen"),
    ("tls", "listen"),
    ("fleet", "name"),
];

/// The fingerprint of a configuration file's text (16 hex digits). Two files that say the same
/// things in another order, with other comments or other per-gateway keys, have the same one;
/// a key set to its default value counts as written (the file says it).
pub fn of_text(text: &str) -> String {
    let canonical = match text.parse::<toml::Table>() {
        Ok(mut t) => {
            for (section, key) in PER_GATEWAY_KEYS {
                if let Some(s) = t.get_mut(section).and_then(|s| s.as_table_mut()) {
                    s.remove(key);
                }
            }
            let mut out = String::new();
            table(&mut out, &t);
            out
        }
        // Never reached for a parsed configuration; still a stable answer.
        Err(_) => text.to_string(),
    };
    let digest = Sha1::digest(canonical.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Tables with their keys sorted, values in a form that does not depend on how they were written.
fn table(out: &mut String, t: &toml::Table) {
    let mut keys: Vec<&String> = t.keys().collect();
    keys.sort();
    out.push('{');
    for k in keys {
        out.push_str(&format!("{k:?}="));
        value(out, &t[k.as_str()]);
        out.push(',');
    }
    out.push('}');
}

fn value(out: &mut String, v: &toml::Value) {
    match v {
        toml::Value::Table(t) => table(out, t),
        toml::Value::Array(a) => {
            out.push('[');
            for x in a {
                value(out, x);
                out.push(',');
            }
            out.push(']');
        }
        toml::Value::String(s) => out.push_str(&format!("{s:?}")),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_comments_and_per_gateway_keys_do_not_count() {
        let a = "[gateway]\nlisten = \"0.0.0.0:7512\"\nthreads = 2\n[balance]\nretries = 3\nalgorithm = \"leastconn\"\n[fleet]\nname = \"a\"\n";
        let b = "# another machine\n[fleet]\nname = \"b\"\n[balance]\nalgorithm = \"leastconn\"   # same\nretries = 3\n[gateway]\nlisten = \"10.0.0.2:8512\"\n";
        assert_eq!(of_text(a), of_text(b));
        assert_eq!(of_text(a).len(), 16);
        let c = "[balance]\nalgorithm = \"roundrobin\"\nretries = 3\n";
        assert_ne!(of_text(b), of_text(c), "a setting that differs changes it");
        let d =
            "[[node]]\nname = \"x\"\naddress = \"127.0.0.1:1\"\n[[node]]\nname = \"y\"\naddress = \"127.0.0.1:2\"\n";
        let e =
            "[[node]]\nname = \"y\"\naddress = \"127.0.0.1:2\"\n[[node]]\nname = \"x\"\naddress = \"127.0.0.1:1\"\n";
        assert_ne!(of_text(d), of_text(e), "node order is a setting (it is the order of the page and of ties)");
    }
}
