//! Label and field selectors, parsed as kube-apiserver parses them and applied
//! to list and watch alike.

use crate::resource::Resource;
use crate::status::ApiError;
use serde_json::Value;
use std::collections::BTreeMap;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Requirement>);

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(format!("unable to parse requirement: {msg}"))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let ok_prefix = prefix.is_none_or(crate::validation::is_dns1123_subdomain);
    if ok_name && ok_prefix {
        Ok(())
    } else {
        Err(bad(format!("<nil>: Invalid value: {:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", key)))
    }
}

fn check_value(value: &str) -> Result<(), ApiError> {
    if value.is_empty() || crate::validation::is_label_value(value) {
        Ok(())
    } else {
        Err(bad(format!("values[0]: Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")))
    }
}

/// Splits at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(format!("found '{rest}', expected: '('")))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &values {
        check_value(v)?;
    }
    Ok(values)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("found '', expected: identifier".into()));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                check_key(key)?;
                Requirement::NotExists(key.to_string())
            } else if let Some((key, rest)) = split_word(part, "notin") {
                check_key(key)?;
                Requirement::NotIn(key.to_string(), parse_set(rest)?)
            } else if let Some((key, rest)) = split_word(part, "in") {
                check_key(key)?;
                Requirement::In(key.to_string(), parse_set(rest)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                let (key, value) = (key.trim(), value.trim());
                check_key(key)?;
                check_value(value)?;
                Requirement::NotEquals(key.to_string(), value.to_string())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                let (key, value) = (key.trim(), value.trim());
                check_key(key)?;
                check_value(value)?;
                Requirement::Equals(key.to_string(), value.to_string())
            } else {
                check_key(part)?;
                Requirement::Exists(part.to_string())
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// `key in (…)`: splits at a whitespace-delimited operator word.
fn split_word<'a>(part: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let mut it = part.splitn(2, char::is_whitespace);
    let key = it.next()?.trim();
    let rest = it.next()?.trim_start();
    let after = rest.strip_prefix(word)?;
    if after.trim_start().starts_with('(') {
        Some((key, after))
    } else {
        None
    }
}

/// A parsed field selector (`=`, `==`, `!=` on the labels the resource supports).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str, resource: &Resource) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !resource.field_labels.contains(&field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, equal, value)| (field_value(obj, field) == *value) == *equal)
    }
}

/// The value a field label has on an object, as the server's field-set functions compute it.
fn field_value(obj: &Value, field: &str) -> String {
    if field == "status.successful" {
        return obj["status"]["succeeded"].as_i64().unwrap_or(0).to_string();
    }
    if field == "source" {
        // An Event's `source` label is its source's component.
        return obj["source"]["component"]
            .as_str()
            .unwrap_or("")
            .to_string();
    }
    let mut v = obj;
    for seg in field.split('.') {
        v = &v[seg];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The labels of a stored object.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_matches_as_the_server_does() {
        let l = labels(&[("app", "kedge"), ("tier", "batch")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m("app=kedge") && m("app==kedge") && m("app!=x") && m("missing!=x"));
        assert!(m("app in (kedge,other)") && !m("app in (other)"));
        assert!(m("app notin (other)") && m("missing notin (a)") && !m("app notin (kedge)"));
        assert!(m("app") && !m("missing") && m("!missing") && !m("!app"));
        assert!(m("app=kedge,tier in (batch, web),!gone"));
        assert!(m(""));
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        assert!(LabelSelector::parse("app in kedge").is_err());
        assert!(LabelSelector::parse("a=b,").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
        assert!(LabelSelector::parse("app=bad value").is_err());
    }

    #[test]
    fn field_selectors_on_jobs() {
        let job = serde_json::json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {}});
        let f = |s| FieldSelector::parse(s, &crate::resource::JOBS);
        assert!(f("metadata.name=a").unwrap().matches(&job));
        assert!(f("status.successful=0").unwrap().matches(&job));
        assert!(!f("metadata.namespace!=ns").unwrap().matches(&job));
        let err = f("spec.parallelism=1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field label not supported: spec.parallelism"
        );
    }
}
