//! A subset of Koncorde, Kuzzle's real-time filter language: `{}`, equals, in, exists, missing,
//! range, ids, and, or, not, bool.

use serde_json::{Map, Value};

use crate::envelope::ApiError;

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    /// `{}`: every document of the collection.
    All,
    Equals(String, Value),
    In(String, Vec<Value>),
    Exists(String),
    Range {
        /// The document field compared (a dotted path).
        field: String,
        /// Exclusive lower bound, if any.
        gt: Option<f64>,
        /// Inclusive lower bound, if any.
        gte: Option<f64>,
        /// Exclusive upper bound, if any.
        lt: Option<f64>,
        /// Inclusive upper bound, if any.
        lte: Option<f64>,
    },
    Ids(Vec<String>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// Deepest nesting accepted, so a hostile filter cannot blow the stack.
const MAX_DEPTH: usize = 32;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "api.assert.koncorde_dsl_error", msg)
}

impl Filter {
    /// Compile a subscription body. `null` counts as `{}`.
    pub fn compile(v: &Value) -> Result<Filter, ApiError> {
        compile(v, 0)
    }

    /// Whether a published document (`_source`, optional `_id`) matches.
    pub fn matches(&self, source: &Value, id: Option<&str>) -> bool {
        match self {
            Filter::All => true,
            Filter::Equals(f, v) => lookup(source, f).is_some_and(|x| x == v),
            Filter::In(f, vs) => lookup(source, f).is_some_and(|x| vs.contains(x)),
            Filter::Exists(f) => lookup(source, f).is_some_and(|x| !x.is_null()),
            Filter::Range { field, gt, gte, lt, lte } => match lookup(source, field).and_then(Value::as_f64) {
                Some(x) => {
                    gt.is_none_or(|b| x > b)
                        && gte.is_none_or(|b| x >= b)
                        && lt.is_none_or(|b| x < b)
                        && lte.is_none_or(|b| x <= b)
                }
                None => false,
            },
            Filter::Ids(ids) => id.is_some_and(|i| ids.iter().any(|x| x == i)),
            Filter::And(fs) => fs.iter().all(|f| f.matches(source, id)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(source, id)),
            Filter::Not(f) => !f.matches(source, id),
        }
    }
}

/// A dotted path (`a.b.c`) inside the document.
fn lookup<'a>(source: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(source, |v, k| v.get(k))
}

fn compile(v: &Value, depth: usize) -> Result<Filter, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("filters are nested too deeply"));
    }
    let obj = match v {
        Value::Null => return Ok(Filter::All),
        Value::Object(o) => o,
        other => return Err(bad(format!("filters must be an object, got {other}"))),
    };
    if obj.is_empty() {
        return Ok(Filter::All);
    }
    if obj.len() > 1 {
        return Err(bad("a filter must have exactly one keyword (use \"and\" to combine)"));
    }
    let Some((kw, arg)) = obj.iter().next() else { return Ok(Filter::All) };
    match kw.as_str() {
        "equals" => {
            let (f, val) = single_field(kw, arg)?;
            if !(val.is_string() || val.is_number() || val.is_boolean() || val.is_null()) {
                return Err(bad("\"equals\" takes a scalar value"));
            }
            Ok(Filter::Equals(f, val.clone()))
        }
        "in" => {
            let (f, val) = single_field(kw, arg)?;
            let Some(vs) = val.as_array() else { return Err(bad("\"in\" takes an array of values")) };
            Ok(Filter::In(f, vs.clone()))
        }
        "exists" | "missing" => {
            let field = match arg {
                Value::String(s) => s.clone(),
                Value::Object(o) => match o.get("field").and_then(Value::as_str) {
                    Some(s) => s.to_owned(),
                    None => return Err(bad(format!("\"{kw}\" takes a field name"))),
                },
                _ => return Err(bad(format!("\"{kw}\" takes a field name"))),
            };
            let f = Filter::Exists(field);
            Ok(if kw == "missing" { Filter::Not(Box::new(f)) } else { f })
        }
        "range" => {
            let (field, bounds) = single_field(kw, arg)?;
            let Some(b) = bounds.as_object() else { return Err(bad("\"range\" takes bounds")) };
            let get = |k: &str| -> Result<Option<f64>, ApiError> {
                match b.get(k) {
                    None => Ok(None),
                    Some(x) => x.as_f64().map(Some).ok_or_else(|| bad(format!("range bound {k} must be a number"))),
                }
            };
            if b.keys().any(|k| !matches!(k.as_str(), "gt" | "gte" | "lt" | "lte")) || b.is_empty() {
                return Err(bad("range bounds are gt, gte, lt, lte"));
            }
            Ok(Filter::Range { field, gt: get("gt")?, gte: get("gte")?, lt: get("lt")?, lte: get("lte")? })
        }
        "ids" => {
            let vals =
                arg.get("values").and_then(Value::as_array).ok_or_else(|| bad("\"ids\" takes {values: [...]}"))?;
            let ids = vals.iter().map(|x| x.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>();
            Ok(Filter::Ids(ids.ok_or_else(|| bad("ids must be strings"))?))
        }
        "and" | "or" => {
            let Some(items) = arg.as_array().filter(|a| !a.is_empty()) else {
                return Err(bad(format!("\"{kw}\" takes a non-empty array of filters")));
            };
            let fs = items.iter().map(|x| compile(x, depth + 1)).collect::<Result<Vec<_>, _>>()?;
            Ok(if kw == "and" { Filter::And(fs) } else { Filter::Or(fs) })
        }
        "not" => Ok(Filter::Not(Box::new(compile(arg, depth + 1)?))),
        "bool" => compile_bool(arg, depth),
        other => Err(bad(format!("unknown or unsupported filter keyword \"{other}\""))),
    }
}

/// `{"field": value}` with exactly one field.
fn single_field<'a>(kw: &str, arg: &'a Value) -> Result<(String, &'a Value), ApiError> {
    match arg.as_object() {
        Some(o) if o.len() == 1 => match o.iter().next() {
            Some((k, v)) if !k.is_empty() => Ok((k.clone(), v)),
            _ => Err(bad(format!("\"{kw}\" takes one non-empty field name"))),
        },
        _ => Err(bad(format!("\"{kw}\" takes an object with exactly one field"))),
    }
}

fn compile_bool(arg: &Value, depth: usize) -> Result<Filter, ApiError> {
    let Some(o) = arg.as_object() else { return Err(bad("\"bool\" takes an object")) };
    let list = |o: &Map<String, Value>, k: &str| -> Result<Vec<Filter>, ApiError> {
        match o.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(|x| compile(x, depth + 1)).collect(),
            Some(x) => Ok(vec![compile(x, depth + 1)?]),
        }
    };
    if o.keys().any(|k| !matches!(k.as_str(), "must" | "must_not" | "should" | "should_not" | "filter")) {
        return Err(bad("bool clauses are must, must_not, should, should_not, filter"));
    }
    let mut all = list(o, "must")?;
    all.extend(list(o, "filter")?);
    all.extend(list(o, "must_not")?.into_iter().map(|f| Filter::Not(Box::new(f))));
    let should = list(o, "should")?;
    if !should.is_empty() {
        all.push(Filter::Or(should));
    }
    let should_not = list(o, "should_not")?;
    if !should_not.is_empty() {
        all.push(Filter::Not(Box::new(Filter::And(should_not))));
    }
    Ok(if all.is_empty() { Filter::All } else { Filter::And(all) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(f: Value, doc: Value) -> bool {
        Filter::compile(&f).expect("filter compiles").matches(&doc, None)
    }

    #[test]
    fn empty_matches_everything() {
        assert!(m(json!({}), json!({"a": 1})));
        assert!(m(Value::Null, json!({})));
    }

    #[test]
    fn equals_in_exists_range() {
        assert!(m(json!({"equals": {"color": "red"}}), json!({"color": "red"})));
        assert!(!m(json!({"equals": {"color": "red"}}), json!({"color": "blue"})));
        assert!(!m(json!({"equals": {"color": "red"}}), json!({})));
        assert!(m(json!({"equals": {"a.b": 2}}), json!({"a": {"b": 2}})));
        assert!(m(json!({"in": {"n": [1, 2]}}), json!({"n": 2})));
        assert!(m(json!({"exists": "x"}), json!({"x": 0})));
        assert!(m(json!({"exists": {"field": "x"}}), json!({"x": 0})));
        assert!(m(json!({"missing": {"field": "y"}}), json!({"x": 0})));
        assert!(m(json!({"range": {"n": {"gte": 1, "lt": 3}}}), json!({"n": 1})));
        assert!(!m(json!({"range": {"n": {"gte": 1, "lt": 3}}}), json!({"n": 3})));
    }

    #[test]
    fn combinators() {
        let f = json!({"and": [{"equals": {"a": 1}}, {"not": {"equals": {"b": 2}}}]});
        assert!(m(f.clone(), json!({"a": 1, "b": 3})));
        assert!(!m(f, json!({"a": 1, "b": 2})));
        assert!(m(json!({"or": [{"equals": {"a": 1}}, {"equals": {"a": 2}}]}), json!({"a": 2})));
        let b = json!({"bool": {"must": [{"equals": {"a": 1}}], "must_not": {"equals": {"b": 1}}}});
        assert!(m(b.clone(), json!({"a": 1})));
        assert!(!m(b, json!({"a": 1, "b": 1})));
        let ids = Filter::compile(&json!({"ids": {"values": ["x"]}})).unwrap();
        assert!(ids.matches(&json!({}), Some("x")));
        assert!(!ids.matches(&json!({}), None));
    }

    #[test]
    fn bad_filters_are_400() {
        for f in [
            json!([1]),
            json!({"equals": {"a": 1}, "in": {"b": [1]}}),
            json!({"nope": {}}),
            json!({"equals": {"a": {"deep": 1}}}),
            json!({"and": []}),
            json!({"range": {"n": {"about": 3}}}),
        ] {
            let e = Filter::compile(&f).expect_err("must be refused");
            assert_eq!(e.status, 400, "{f}");
        }
        let mut deep = json!({});
        for _ in 0..100 {
            deep = json!({"not": deep});
        }
        assert!(Filter::compile(&deep).is_err());
    }
}
