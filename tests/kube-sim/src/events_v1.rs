//! `events.k8s.io/v1` Events: the same stored objects as core/v1 Events,
//! seen through another version, as the real API server keeps them (one
//! `events` storage, converted per request version).
//!
//! - **Conversion** (`pkg/apis/events/v1/conversion.go`): `regarding` ↔
//!   `involvedObject`, `note` ↔ `message`, `reportingController` ↔
//!   `reportingComponent`, `deprecatedSource` / `deprecatedFirstTimestamp` /
//!   `deprecatedLastTimestamp` / `deprecatedCount` ↔ `source` /
//!   `firstTimestamp` / `lastTimestamp` / `count`; the rest keeps its name.
//!   The store holds the core form; [`to_core`] converts what an
//!   events.k8s.io request sends, [`view`] what it is answered.
//! - **Validation** (`pkg/apis/core/validation/events.go`): a create or
//!   update through events.k8s.io/v1 gets the strict checks on top of the
//!   legacy ones ([`validate`]); an update may change only `series` (and
//!   metadata) ([`validate_update`]). Field paths are the internal names
//!   (`involvedObject`, `message`, `reportingController`), as the real
//!   messages print them.
//! - **Field selectors** (`AddFieldLabelConversionsForEvent`): `regarding.*`,
//!   `reason`, `reportingController`, `type`, `metadata.name`,
//!   `metadata.namespace`, evaluated on the converted object.

use serde_json::{json, Map, Value};

use crate::resource::{Resource, EVENTS_V1};
use crate::status::Cause;

/// events.k8s.io name → core/v1 name, for the fields that differ.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// `ReportingInstanceLengthLimit`, `ActionLengthLimit`, `ReasonLengthLimit`.
const SHORT_LIMIT: usize = 128;
/// `NoteLengthLimit`: 1 kB.
const NOTE_LIMIT: usize = 1024;

fn rename(obj: Value, to_core: bool, api_version: &str) -> Value {
    let Value::Object(fields) = obj else {
        return obj;
    };
    let mut out = Map::new();
    for (k, v) in fields {
        let renamed = RENAMED.iter().find_map(|(v1, core)| {
            let (from, to) = if to_core { (v1, core) } else { (core, v1) };
            (k == *from).then_some(*to)
        });
        out.insert(renamed.unwrap_or(&k).to_string(), v);
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event in its stored (core/v1) form.
pub fn to_core(v1: Value) -> Value {
    rename(v1, true, "v1")
}

/// How `resource`'s requests see stored `obj`: events.k8s.io/v1 Events
/// converted from their core form, everything else as stored.
pub fn view(resource: &Resource, obj: Value) -> Value {
    if resource == &EVENTS_V1 {
        rename(obj, false, "events.k8s.io/v1")
    } else {
        obj
    }
}

fn text<'a>(ev: &'a Value, field: &str) -> &'a str {
    ev[field].as_str().unwrap_or("")
}

/// `ValidateEventCreate`'s checks for requests through events.k8s.io/v1,
/// on the event in its events.k8s.io form, in the real order: the length
/// limits of the legacy checks, then the strict ones. (The legacy checks'
/// namespace and required fields are `validation::event_causes`, on the
/// core form; the API runs those first.)
pub fn validate(ev: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let controller = text(ev, "reportingController");
    if !controller.is_empty() {
        for msg in qualified_name_problems(controller) {
            causes.push(Cause::invalid("reportingController", controller, &msg));
        }
    }
    for (field, limit) in [
        ("reportingInstance", SHORT_LIMIT),
        ("action", SHORT_LIMIT),
        ("reason", SHORT_LIMIT),
    ] {
        if text(ev, field).len() > limit {
            causes.push(Cause::invalid(
                field,
                "",
                &format!("can have at most {limit} characters"),
            ));
        }
    }
    if text(ev, "note").len() > NOTE_LIMIT {
        causes.push(Cause::invalid(
            "message",
            "",
            &format!("can have at most {NOTE_LIMIT} characters"),
        ));
    }
    let series = &ev["series"];
    if series.is_object() {
        if series["count"].as_i64().unwrap_or(0) < 2 {
            causes.push(Cause::invalid("series.count", "", "should be at least 2"));
        }
        if series["lastObservedTime"].is_null() {
            causes.push(Cause::required("series.lastObservedTime", ""));
        }
    }
    if ev["eventTime"].is_null() {
        causes.push(Cause::required("eventTime", ""));
    }
    let kind = text(ev, "type");
    if kind != "Normal" && kind != "Warning" {
        causes.push(Cause::invalid(
            "type",
            "",
            &format!("has invalid value: {kind}"),
        ));
    }
    for field in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
    ] {
        if !ev[field].is_null() && ev[field] != json!(0) {
            causes.push(Cause::invalid(field, "", "needs to be unset"));
        }
    }
    let source = &ev["deprecatedSource"];
    if !text(source, "component").is_empty() || !text(source, "host").is_empty() {
        causes.push(Cause::invalid("deprecatedSource", "", "needs to be unset"));
    }
    causes
}

/// `ValidateEventUpdate` through events.k8s.io/v1: the create checks, and
/// every field but `series` (and metadata) immutable.
pub fn validate_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = validate(new);
    for (field, path) in [
        ("regarding", "involvedObject"),
        ("reason", "reason"),
        ("note", "message"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("type", "type"),
        ("eventTime", "eventTime"),
        ("action", "action"),
        ("related", "related"),
        ("reportingController", "reportingController"),
        ("reportingInstance", "reportingInstance"),
    ] {
        if old[field] != new[field] {
            causes.push(Cause::immutable(path, short(&new[field])));
        }
    }
    causes
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => Value::from(s.as_str()).to_string(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
fn qualified_name_problems(value: &str) -> Vec<String> {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    let mut out = Vec::new();
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            out.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
        }
    }
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let well_formed = name.bytes().all(|b| alnum(b) || b"-_.".contains(&b))
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    if !name.is_empty() && !well_formed {
        out.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "ns"},
            "eventTime": "2026-12-07T10:00:00.000000Z",
            "regarding": {"kind": "Job", "name": "j", "namespace": "ns"},
            "note": "made", "reason": "Launched", "action": "Create", "type": "Normal",
            "reportingController": "kedge", "reportingInstance": "kedge-0",
        })
    }

    #[test]
    fn conversion_round_trips_and_renames_the_fields_that_differ() {
        let core = to_core(event());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "j");
        assert_eq!(core["message"], "made");
        assert_eq!(core["reportingComponent"], "kedge");
        assert!(core.get("note").is_none() && core.get("regarding").is_none());
        assert_eq!(view(&EVENTS_V1, core), event());
    }

    #[test]
    fn a_strict_create_needs_event_time_a_known_type_and_no_deprecated_fields() {
        assert!(validate(&event()).is_empty());
        let mut e = event();
        e["eventTime"] = Value::Null;
        e["type"] = json!("Info");
        e["deprecatedCount"] = json!(3);
        e["series"] = json!({"count": 1});
        let fields: Vec<String> = validate(&e).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "series.count",
                "series.lastObservedTime",
                "eventTime",
                "type",
                "deprecatedCount"
            ]
        );
    }

    #[test]
    fn an_update_may_only_add_a_series() {
        let old = event();
        let mut new = event();
        new["series"] = json!({"count": 2, "lastObservedTime": "2026-12-07T10:01:00.000000Z"});
        assert!(validate_update(&old, &new).is_empty());
        new["note"] = json!("changed");
        let causes = validate_update(&old, &new);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "message");
        assert!(causes[0].message.ends_with("field is immutable"));
    }
}
