//! Control plane: the one list of configuration keys, each marked live (a reload applies it) or
//! restart-only (it applies after a restart or a binary upgrade). The reload's diff is derived
//! from it; its tests hold the schema's fields, docs/configuration.md and the default
//! configuration file to it.

use serde::Serialize;

use super::Config;

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// On the next reload (SIGHUP, `POST /reload`, the file watcher).
    Live,
    /// Read once at start: a reload accepts the file and warns; a restart or an upgrade applies it.
    Restart,
}

/// One key of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Its table: `gateway`, `tls.certificate` (an array of tables), `node`...
    pub section: &'static str,
    /// The key in that table.
    pub name: &'static str,
    /// When a change of it takes effect.
    pub apply: Apply,
}

const fn live(section: &'static str, name: &'static str) -> Key {
    Key { section, name, apply: Apply::Live }
}

const fn restart(section: &'static str, name: &'static str) -> Key {
    Key { section, name, apply: Apply::Restart }
}

/// Every key, section by section in the order of docs/configuration.md.
pub const KEYS: &[Key] = &[
    live("gateway", "listen"),
    // One runtime per worker thread, started once.
    restart("gateway", "threads"),
    live("gateway", "shutdown_grace"),
    live("gateway", "hard_stop_after"),
    // Sizes the connection semaphore, made once.
    restart("gateway", "max_connections"),
    // The socket a new process finds the old one by: moving it would lose the next upgrade.
    restart("gateway", "upgrade_socket"),
    live("gateway", "drain_timeout"),
    // The watcher that would see the change is the thing it turns on or off.
    restart("gateway", "watch"),
    live("gateway", "resolve_interval"),
    live("gateway", "node_header"),
    live("gateway", "proxy_protocol"),
    live("gateway", "proxy_protocol_from"),
    live("gateway", "sdk_pings"),
    live("gateway", "fast_lane"),
    live("gateway", "sdk_ping_forward"),
    live("timeouts", "connect"),
    live("timeouts", "client"),
    live("timeouts", "server"),
    live("timeouts", "tunnel"),
    live("timeouts", "pool_idle"),
    live("limits", "request_head"),
    live("limits", "headers"),
    live("limits", "uri"),
    live("limits", "response_head"),
    live("limits", "client_connections"),
    live("limits", "client_rate"),
    live("limits", "client_burst"),
    live("limits", "exempt_networks"),
    // The table is allocated whole, once.
    restart("limits", "client_table"),
    live("balance", "algorithm"),
    live("balance", "retries"),
    live("balance", "redispatch"),
    live("balance", "resend_body"),
    live("balance", "retry_on_timeout"),
    live("health", "path"),
    live("health", "kuzzle2_path"),
    live("health", "interval"),
    live("health", "fastinter"),
    live("health", "downinter"),
    live("health", "timeout"),
    live("health", "rise"),
    live("health", "fall"),
    live("health", "passive"),
    live("health", "on_marked_down"),
    live("health", "slowstart"),
    live("access_log", "path"),
    live("access_log", "format"),
    live("access_log", "mask"),
    live("stats", "listen"),
    live("stats", "uri"),
    live("stats", "user"),
    live("stats", "password"),
    live("stats", "refresh"),
    live("tls", "listen"),
    live("tls", "cert"),
    live("tls", "key"),
    live("tls", "certificate"),
    live("tls", "handshake_timeout"),
    live("tls", "http2"),
    live("tls", "watch"),
    live("tls.certificate", "cert"),
    live("tls.certificate", "key"),
    live("tls.certificate", "names"),
    live("cluster", "redis"),
    live("cluster", "redis_cluster"),
    live("cluster", "node_port"),
    live("cluster", "heartbeat_timeout"),
    live("cluster", "allowed_networks"),
    live("cluster", "pubsub"),
    live("cluster", "discovery"),
    live("cluster", "kuzzle2"),
    live("cluster", "poll_interval"),
    live("cluster", "max_nodes"),
    live("cluster", "join_rate"),
    live("cluster", "join_burst"),
    live("cluster", "node_tls"),
    live("cluster", "node_ca"),
    live("cluster", "node_server_name"),
    // Read once, while the gateway starts.
    restart("cluster", "ready_timeout"),
    live("fleet", "redis"),
    live("fleet", "redis_cluster"),
    live("fleet", "name"),
    live("fleet", "namespace"),
    live("fleet", "heartbeat"),
    live("fleet", "ttl"),
    live("fleet", "state_ttl"),
    live("fleet", "rebalance_websockets"),
    live("fleet", "rebalance_rate"),
    live("fleet", "rebalance_tolerance"),
    live("node", "name"),
    live("node", "address"),
    live("node", "tls"),
    live("node", "ca"),
    live("node", "server_name"),
];

/// A section's values by key, as the file would write them (None: the section is absent).
fn values(config: &Config, section: &str) -> Option<serde_json::Value> {
    fn v<T: Serialize>(t: &T) -> Option<serde_json::Value> {
        serde_json::to_value(t).ok()
    }
    match section {
        "gateway" => v(&config.gateway),
        "timeouts" => v(&config.timeouts),
        "limits" => v(&config.limits),
        "balance" => v(&config.balance),
        "health" => v(&config.health),
        "stats" => v(&config.stats),
        "tls" => config.tls.as_ref().and_then(v),
        "cluster" => config.cluster.as_ref().and_then(v),
        "access_log" => config.access_log.as_ref().and_then(v),
        "fleet" => config.fleet.as_ref().and_then(v),
        // Arrays of tables hold no restart-only key.
        _ => None,
    }
}

/// The restart-only keys whose value differs between `old` and `new` (`gateway.threads`...): the
/// reload applies the rest and says these wait for a restart or an upgrade.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    KEYS.iter()
        .filter(|k| k.apply == Apply::Restart)
        .filter(|k| {
            let get = |c: &Config| values(c, k.section).and_then(|v| v.get(k.name).cloned());
            get(old) != get(new)
        })
        .map(|k| format!("{}.{}", k.section, k.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::de::{self, Deserialize, Deserializer, Visitor};

    use super::*;
    use crate::control::config::schema::*;

    /// The field names a `Deserialize` struct declares, read from serde's own list.
    fn fields<'de, T: Deserialize<'de>>() -> BTreeSet<&'static str> {
        struct Fields(std::cell::RefCell<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Stop {
                Stop
            }
        }
        impl<'de> Deserializer<'de> for &Fields {
            type Error = Stop;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                *self.0.borrow_mut() = fields;
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
                unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let f = Fields(std::cell::RefCell::new(&[]));
        let _ = T::deserialize(&f);
        let names = *f.0.borrow();
        names.iter().copied().collect()
    }

    fn listed(section: &str) -> BTreeSet<&'static str> {
        KEYS.iter().filter(|k| k.section == section).map(|k| k.name).collect()
    }

    #[test]
    fn the_list_is_the_schema() {
        let sections: [(&str, BTreeSet<&'static str>); 12] = [
            ("gateway", fields::<GatewaySection>()),
            ("timeouts", fields::<TimeoutsSection>()),
            ("limits", fields::<LimitsSection>()),
            ("balance", fields::<BalanceSection>()),
            ("health", fields::<HealthSection>()),
            ("access_log", fields::<AccessLogSection>()),
            ("stats", fields::<StatsSection>()),
            ("tls", fields::<TlsSection>()),
            ("tls.certificate", fields::<CertEntry>()),
            ("cluster", fields::<ClusterSection>()),
            ("fleet", fields::<FleetSection>()),
            ("node", fields::<NodeSection>()),
        ];
        for (name, declared) in &sections {
            assert!(!declared.is_empty(), "no fields read for [{name}]");
            assert_eq!(&listed(name), declared, "[{name}]: KEYS and the struct disagree");
        }
        let covered: BTreeSet<&str> = sections.iter().map(|(n, _)| *n).collect();
        for k in KEYS {
            assert!(covered.contains(k.section), "KEYS names section [{}] the schema has not", k.section);
        }
        let unique: BTreeSet<(&str, &str)> = KEYS.iter().map(|k| (k.section, k.name)).collect();
        assert_eq!(unique.len(), KEYS.len(), "a key is listed twice");
    }

    fn repo_file(path: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn the_reference_documents_every_key_and_when_it_applies() {
        let doc = repo_file("docs/configuration.md");
        let mut section = String::new();
        let mut rows = BTreeSet::new();
        for line in doc.lines() {
            if let Some(h) = line.strip_prefix("## [") {
                section = h.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if let Some(row) = line.strip_prefix("| `") {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let key = cells[0].trim_end_matches('`');
                if !section.is_empty() && cells.len() >= 3 {
                    rows.insert((section.clone(), key.to_string(), cells[2].to_string()));
                }
            }
        }
        let want: BTreeSet<(String, String, String)> = KEYS
            .iter()
            .map(|k| {
                let apply = if k.apply == Apply::Live { "live" } else { "restart" };
                (k.section.to_string(), k.name.to_string(), apply.to_string())
            })
            .collect();
        let missing: Vec<_> = want.difference(&rows).collect();
        let extra: Vec<_> = rows.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/configuration.md: missing {missing:?}, not keys {extra:?}"
        );
    }

    #[test]
    fn the_default_file_shows_every_key() {
        let text = repo_file(crate::control::config::DEFAULT_CONFIG_PATH);
        let mut section = String::new();
        let mut shown = BTreeSet::new();
        for line in text.lines() {
            let l = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
            if l.starts_with('[') {
                section = l.split(']').next().unwrap_or("").trim_start_matches('[').trim().to_string();
            } else if let Some((k, _)) = l.split_once('=') {
                let k = k.trim();
                if !k.is_empty() && k.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
                    shown.insert((section.clone(), k.to_string()));
                }
            }
        }
        let missing: Vec<String> = KEYS
            .iter()
            .filter(|k| !(k.section == "tls" && k.name == "certificate"))
            .filter(|k| !shown.contains(&(k.section.to_string(), k.name.to_string())))
            .map(|k| format!("[{}] {}", k.section, k.name))
            .collect();
        assert!(missing.is_empty(), "{} does not show {missing:?}", crate::control::config::DEFAULT_CONFIG_PATH);
    }

    #[test]
    fn restart_only_changes_are_named() {
        let cfg = |t: &str| Config::parse(t, "t.toml").expect("valid");
        let old = cfg("[gateway]\nthreads = 2\n");
        let new = cfg("[gateway]\nthreads = 4\nmax_connections = 10\n[balance]\nalgorithm = \"source\"\n[limits]\nclient_table = 4096\nclient_rate = 5\n");
        assert_eq!(
            restart_only_changes(&old, &new),
            vec!["gateway.threads", "gateway.max_connections", "limits.client_table"]
        );
        assert!(restart_only_changes(&old, &old).is_empty());
        let redis = "[cluster]\nredis = \"redis://127.0.0.1:1/0\"\n";
        let slow = format!("{redis}ready_timeout = \"9s\"\n");
        assert_eq!(restart_only_changes(&cfg(redis), &cfg(&slow)), vec!["cluster.ready_timeout"]);
    }
}
