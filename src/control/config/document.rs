//! Control plane: reading a configuration file's TOML. Every syntax, type and unknown-key mistake
//! is reported at once, each with its line and dotted key, and the line of every key is kept
//! (toml's spans) for the checks that come after and for `--check`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::schema::RawConfig;
use super::ConfigError;

/// The sections a file may have, as `[name]` (`node` as `[[node]]`).
pub const SECTIONS: [&str; 11] =
    ["gateway", "timeouts", "balance", "health", "stats", "limits", "tls", "cluster", "access_log", "fleet", "node"];

/// Where each key of a file is: dotted key (`gateway.listen`, `node[2].name`, `tls.certificate[0]`)
/// to 1-based line. Part of a `Config` for messages only: two files that differ in layout alone
/// are the same configuration.
#[derive(Debug, Clone, Default)]
pub struct Places(BTreeMap<String, usize>);

impl PartialEq for Places {
    fn eq(&self, _: &Places) -> bool {
        true
    }
}

impl Places {
    /// The line of `key`, when the file writes it.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }

    /// Does the file write `key`?
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The line of `key`, else of the nearest table that holds it (`[section]`, the N-th
    /// `[[node]]`), else 0 (the key is a default the file does not write).
    pub fn near(&self, key: &str) -> usize {
        let mut k = key;
        loop {
            if let Some(l) = self.line(k) {
                return l;
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return 0,
            }
        }
    }
}

/// Byte offsets to lines.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        Lines(text.match_indices('\n').map(|(i, _)| i).collect())
    }

    /// 1-based line of a byte offset.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

/// What reading a file gives: its sections (a section with a mistake is left at its default, so
/// that the checks after still run), where its keys are, and every mistake found.
pub(super) struct Read {
    /// The sections, typed.
    pub raw: RawConfig,
    /// Where each key is.
    pub places: Places,
    /// Syntax, type and unknown-key mistakes, in file order.
    pub errors: Vec<ConfigError>,
}

/// Read `text` (named `file` in messages).
pub(super) fn read(text: &str, file: &str) -> Read {
    let lines = Lines::new(text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    let at = |span: Option<Range<usize>>, key: String, message: &str| ConfigError {
        file: file.to_string(),
        line: span.map_or(0, |s| lines.of(s.start)),
        key,
        message: message.trim().to_string(),
    };
    let mut places = Places::default();
    collect(root.get_ref(), "", &lines, &mut places.0);
    if !syntax.is_empty() {
        // The structure around a syntax error is a guess: report the syntax alone.
        let errors =
            syntax.iter().map(|e| at(e.span(), key_at(text, e.span().map_or(0, |s| s.start)), e.message())).collect();
        return Read { raw: RawConfig::default(), places, errors };
    }
    let mut errors = Vec::new();
    let mut raw = RawConfig::default();
    for (name, value) in root.get_ref().iter() {
        let name = name.get_ref().as_ref();
        let mut e = Vec::new();
        match name {
            "gateway" => raw.gateway = section(value, name, &mut e).unwrap_or_default(),
            "timeouts" => raw.timeouts = section(value, name, &mut e).unwrap_or_default(),
            "balance" => raw.balance = section(value, name, &mut e).unwrap_or_default(),
            "health" => raw.health = section(value, name, &mut e).unwrap_or_default(),
            "stats" => raw.stats = section(value, name, &mut e).unwrap_or_default(),
            "limits" => raw.limits = section(value, name, &mut e).unwrap_or_default(),
            "tls" => raw.tls = section(value, name, &mut e),
            "cluster" => raw.cluster = section(value, name, &mut e),
            "access_log" => raw.access_log = section(value, name, &mut e),
            "fleet" => raw.fleet = section(value, name, &mut e),
            "node" => match value.get_ref() {
                DeValue::Array(a) => {
                    for (i, n) in a.iter().enumerate() {
                        if let Some(n) = section(n, &format!("node[{i}]"), &mut e) {
                            raw.node.push(n);
                        }
                    }
                }
                _ => e.push((Some(value.span()), "node".into(), "nodes are an array of tables: write [[node]]".into())),
            },
            other => {
                let what = if value.get_ref().is_table() { "section" } else { "key" };
                e.push((
                    Some(value.span()),
                    other.to_string(),
                    format!(
                        "unknown {what} `{other}`: the sections are [{}] and [[node]]",
                        SECTIONS[..10].join("], [")
                    ),
                ));
            }
        }
        errors.extend(e.into_iter().map(|(span, key, message)| at(span, key, &message)));
    }
    errors.sort_by_key(|e| e.line);
    Read { raw, places, errors }
}

/// A mistake: where, which key, what.
type Mistake = (Option<Range<usize>>, String, String);

/// One section (or one element of an array of tables) named `key`, typed: each of its keys alone
/// first, so that every wrong key is reported rather than the first; then the whole (missing
/// keys). None on any mistake.
fn section<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>, key: &str, errors: &mut Vec<Mistake>) -> Option<T> {
    let mut wrong = false;
    if let DeValue::Table(t) = value.get_ref() {
        for (k, v) in t.iter() {
            let mut one = DeTable::new();
            one.insert(k.clone(), v.clone());
            if let Err(e) = T::deserialize(Spanned::new(value.span(), DeValue::Table(one)).into_deserializer()) {
                // Judged on the whole table below.
                if e.message().starts_with("missing field") {
                    continue;
                }
                errors.push((e.span().or(Some(k.span())), format!("{key}.{}", k.get_ref()), e.message().to_string()));
                wrong = true;
            }
        }
    }
    if wrong {
        return None;
    }
    match T::deserialize(value.clone().into_deserializer()) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push((e.span().or(Some(value.span())), key.to_string(), e.message().to_string()));
            None
        }
    }
}

/// Record the line of every key under `table`, prefixed by `prefix`.
fn collect(table: &DeTable<'_>, prefix: &str, lines: &Lines, out: &mut BTreeMap<String, usize>) {
    for (k, v) in table.iter() {
        let dotted = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
        out.entry(dotted.clone()).or_insert(lines.of(k.span().start));
        match v.get_ref() {
            DeValue::Table(t) => collect(t, &dotted, lines, out),
            DeValue::Array(a) => {
                for (i, el) in a.iter().enumerate() {
                    if let DeValue::Table(t) = el.get_ref() {
                        let item = format!("{dotted}[{i}]");
                        out.insert(item.clone(), header_line(lines, el.span().start));
                        collect(t, &item, lines, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The line of an array-of-tables element: its `[[...]]` header.
fn header_line(lines: &Lines, start: usize) -> usize {
    lines.of(start)
}

/// Best-effort dotted key of a syntax error at `offset`: the enclosing table header plus the key
/// on that line (the parsed structure cannot be trusted there).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.starts_with('[') {
        return line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        .unwrap_or_default();
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_line() {
        let t = "[gateway]\nlisten = \"127.0.0.1:1\"\n\n[[node]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n[[node]]\nname = \"b\"\n\naddress = \"127.0.0.1:3\"\n[tls]\n[[tls.certificate]]\ncert = \"a\"\n";
        let r = read(t, "t.toml");
        let p = &r.places;
        assert_eq!(p.line("gateway"), Some(1));
        assert_eq!(p.line("gateway.listen"), Some(2));
        assert_eq!(p.line("node[0]"), Some(4));
        assert_eq!(p.line("node[1].address"), Some(10));
        assert_eq!(p.line("node[1]"), Some(7));
        assert_eq!(p.line("tls.certificate[0]"), Some(12));
        assert_eq!(p.near("tls.certificate[0].key"), 12, "an absent key: its table");
        assert_eq!(p.near("health.rise"), 0, "not in the file");
    }

    #[test]
    fn every_mistake_is_reported() {
        let t = "[gateway]\nlistn = 1\nthreads = \"two\"\n[timeouts]\nconnect = \"5 parsecs\"\nserver = \"1 fortnight\"\n[gatway]\n[[node]]\nname = \"a\"\n";
        let r = read(t, "t.toml");
        let got: Vec<(usize, &str)> = r.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (2, "gateway.listn"),
                (3, "gateway.threads"),
                (5, "timeouts.connect"),
                (6, "timeouts.server"),
                (7, "gatway"),
                (8, "node[0]"),
            ],
            "{:#?}",
            r.errors
        );
        assert!(r.errors[5].message.contains("address"), "{}", r.errors[5].message);
    }
}
