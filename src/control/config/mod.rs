//! Control plane: the configuration file, read as one schema. [`schema`] has every key with its
//! type, default and purpose; [`keys`] marks each live or restart-only; [`document`] reads the
//! TOML and knows every key's line; [`validate`] checks the rest; [`addr`] parses node addresses
//! and names. Reading is pure: files named by the configuration (certificates, CA bundles) are
//! loaded by `crate::control::tls`, on the blocking pool when the gateway runs.

pub mod addr;
pub mod document;
pub mod keys;
pub mod schema;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use self::addr::{parse_node_target, valid_fleet_name, valid_node_name, valid_sni_name, HostPort, NodeTarget};
pub use self::document::Places;
pub use self::keys::{Apply, Key, KEYS};
pub use self::schema::*;
pub use self::validate::{MAX_CLIENT_RATE, MAX_CLIENT_TABLE, MAX_THREADS};

/// Where `kuzzle-gateway` looks when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "proxy-configs/gateway.toml";

/// A configuration mistake: which file, where in it, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given.
    pub file: String,
    /// 1-based line, 0 when the error is not tied to a place in the file (unreadable file).
    pub line: usize,
    /// Dotted key such as `timeouts.connect` or `node[2].name`, empty when unknown.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: key `{}`: {}", self.file, self.key, self.message),
            (l, true) => write!(f, "{}:{}: {}", self.file, l, self.message),
            (l, false) => write!(f, "{}:{}: key `{}`: {}", self.file, l, self.key, self.message),
        }
    }
}

/// Every mistake of a file (at least one), in file order, as `haproxy -c` lists them. Derefs to
/// the first, for callers that show one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// `errors`, which must not be empty (an empty list becomes one "unknown" mistake of `file`).
    pub fn new(file: &str, mut errors: Vec<ConfigError>) -> ConfigErrors {
        if errors.is_empty() {
            errors.push(ConfigError {
                file: file.into(),
                line: 0,
                key: String::new(),
                message: "invalid configuration".into(),
            });
        }
        ConfigErrors(errors)
    }

    /// One mistake.
    pub fn one(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }

    /// Every mistake, in file order.
    pub fn all(&self) -> &[ConfigError] {
        &self.0
    }
}

impl std::ops::Deref for ConfigErrors {
    type Target = ConfigError;

    fn deref(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors::one(e)
    }
}

/// How to speak TLS to a node, as the configuration says it (the connector that reads the CA
/// file is built from it by `crate::core::node_tls::NodeTlsSet`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeTlsSpec {
    /// PEM bundle of the CAs trusted for the node's certificate; None: the system's bundle.
    pub ca: Option<PathBuf>,
    /// Name checked in the node's certificate and sent as SNI; None: the node's IP address.
    pub server_name: Option<String>,
}

/// A statically configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    /// Its name (and URL prefix).
    pub name: String,
    /// Where it is.
    pub target: NodeTarget,
    /// TLS to the node (`tls = true`).
    pub tls: Option<NodeTlsSpec>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// File it came from (for messages).
    pub source: String,
    /// `[gateway]`.
    pub gateway: GatewaySection,
    /// `[timeouts]`.
    pub timeouts: TimeoutsSection,
    /// `[balance]`.
    pub balance: BalanceSection,
    /// `[health]`.
    pub health: HealthSection,
    /// `[stats]`.
    pub stats: StatsSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[tls]`; None: no TLS listener.
    pub tls: Option<TlsSection>,
    /// `[cluster]`; None: static nodes only.
    pub cluster: Option<ClusterSection>,
    /// None: no access log.
    pub access_log: Option<AccessLogSection>,
    /// `[fleet]`: shared operator states, fleet view and rebalancing through Redis.
    pub fleet: Option<FleetSection>,
    /// `[[node]]`s, in file order.
    pub nodes: Vec<StaticNode>,
    /// Fingerprint of the file's settings, per-gateway keys left out (listen addresses, threads,
    /// upgrade socket, fleet name): gateways of one fleet that run the same configuration show
    /// the same one (`crate::control::fleet::fingerprint`).
    pub fingerprint: String,
    /// The line of every key the file writes, for messages about it after it was read
    /// (certificates, CA files, `--check`).
    pub places: Places,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: "<default>".into(),
            gateway: GatewaySection::default(),
            timeouts: TimeoutsSection::default(),
            balance: BalanceSection::default(),
            health: HealthSection::default(),
            stats: StatsSection::default(),
            limits: LimitsSection::default(),
            tls: None,
            cluster: None,
            access_log: None,
            fleet: None,
            nodes: Vec::new(),
            fingerprint: crate::control::fleet::fingerprint::of_text(""),
            places: Places::default(),
        }
    }
}

/// The file's text and its name for errors.
fn read_text(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(e) => Err(ConfigError { file, line: 0, key: String::new(), message: format!("cannot read: {e}") }),
    }
}

impl Config {
    /// Read and validate a file (blocking: a file read).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let (text, file) = read_text(path)?;
        Config::parse(&text, &file)
    }

    /// Read and validate a file for a running gateway: as [`Config::load`], but an empty file is
    /// refused. A tool that writes the file in place truncates it first, and a watcher can read it
    /// in between; all defaults and no node is never what a running cluster was meant to become.
    pub fn load_for_reload(path: &Path) -> Result<Config, ConfigErrors> {
        let (text, file) = read_text(path)?;
        if text.trim().is_empty() {
            return Err(ConfigErrors::one(ConfigError {
                file,
                line: 0,
                key: String::new(),
                message: "the file is empty (still being written?): the running configuration stays".into(),
            }));
        }
        Config::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors. Every mistake is reported.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let read = document::read(text, file);
        let checked = validate::check(read.raw, read.places, file, text);
        match (read.errors, checked) {
            (errors, Ok(config)) if errors.is_empty() => Ok(config),
            (mut errors, checked) => {
                errors.extend(checked.err().unwrap_or_default());
                errors.sort_by_key(|e| e.line);
                errors.dedup();
                Err(ConfigErrors::new(file, errors))
            }
        }
    }

    /// The line of `key` in the file it came from (else of its table, else 0).
    pub fn line_of(&self, key: &str) -> usize {
        self.places.near(key)
    }

    /// A mistake of `key` found after reading (a certificate, a CA file), placed in the file.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.source.clone(), line: self.line_of(key), key: key.into(), message: message.into() }
    }

    /// The host names of static nodes (what the resolver looks up).
    pub fn host_names(&self) -> Vec<HostPort> {
        let mut v: Vec<HostPort> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.target {
                NodeTarget::Host(h) => Some(h.clone()),
                NodeTarget::Addr(_) => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests;
