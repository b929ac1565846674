//! Admission as the real registry strategies do it: name rules, defaults and
//! validation on create, immutability on update.

use crate::resource::{Resource, JOBS};
use crate::status::{ApiError, Cause};
use serde_json::{json, Value};

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_part(s)
}

/// One dot-separated part of a subdomain; the regex bounds only the whole (253).
fn is_dns1123_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_part)
}

/// A label value: at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// The alphabet of `utilrand.String` used for generateName suffixes.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName`: the base cut to 58 characters plus 5 random characters.
pub fn generate_name(base: &str) -> String {
    let base: String = base.chars().take(58).collect();
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let suffix: String = bytes[..5]
        .iter()
        .map(|b| ALPHANUMS[*b as usize % ALPHANUMS.len()] as char)
        .collect();
    format!("{base}{suffix}")
}

/// Name rules shared by every resource (namespaces are labels, the rest subdomains).
fn name_causes(resource: &Resource, obj: &Value) -> Vec<Cause> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        return vec![Cause::required(
            "metadata.name",
            "name or generateName is required",
        )];
    }
    if resource.namespaced || resource.plural != "namespaces" {
        if !is_dns1123_subdomain(name) {
            let msg = if name.len() > 253 {
                "must be no more than 253 characters"
            } else {
                DNS1123_SUBDOMAIN_MSG
            };
            return vec![Cause::invalid("metadata.name", name, msg)];
        }
    } else if !is_dns1123_label(name) {
        return vec![Cause::invalid("metadata.name", name, DNS1123_LABEL_MSG)];
    }
    Vec::new()
}

fn labels_causes(obj: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(labels) = obj.as_object() {
        for (k, v) in labels {
            let v = v.as_str().unwrap_or("");
            if v.len() > 63 {
                causes.push(Cause::invalid(
                    path,
                    v,
                    "must be no more than 63 characters",
                ));
            } else if !is_label_value(v) {
                causes.push(Cause::invalid(path, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
            }
            let _ = k;
        }
    }
    causes
}

pub(crate) fn invalid(
    resource: &'static Resource,
    obj: &Value,
    causes: Vec<Cause>,
) -> Result<(), ApiError> {
    if causes.is_empty() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    Err(ApiError::Invalid {
        resource,
        name,
        causes,
    })
}

/// Defaults an object on create (after uid and name are set), then validates it.
pub fn admit_create(resource: &'static Resource, obj: &mut Value) -> Result<(), ApiError> {
    let mut causes = name_causes(resource, obj);
    causes.extend(labels_causes(&obj["metadata"]["labels"], "metadata.labels"));
    if resource == &JOBS && causes.is_empty() {
        default_job(obj);
        causes.extend(validate_job(obj));
    }
    if resource.plural == "pods" {
        default_pod_spec(&mut obj["spec"]);
        causes.extend(validate_pod_spec(&obj["spec"], "spec"));
    }
    if resource.plural == "leases" {
        causes.extend(validate_lease_spec(&obj["spec"]));
    }
    if resource.plural == "configmaps" {
        causes.extend(validate_configmap(obj));
    }
    if resource.plural == "events" {
        causes.extend(event_causes(obj));
    }
    invalid(resource, obj, causes)
}

/// `MaxSecretSize`, the bound on a ConfigMap's `data` plus `binaryData`.
pub const MAX_CONFIGMAP_BYTES: usize = 1024 * 1024;

const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// `ValidateConfigMap`: keys are config keys, no key in both bags, and the
/// values together at most 1 MiB (`binaryData` counted decoded).
fn validate_configmap(cm: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut total = 0usize;
    let empty = serde_json::Map::new();
    let data = cm["data"].as_object().unwrap_or(&empty);
    let binary = cm["binaryData"].as_object().unwrap_or(&empty);
    for (bag, other, this_name, other_name) in [
        (data, binary, "data", "binaryData"),
        (binary, data, "binaryData", "data"),
    ] {
        for (key, value) in bag {
            let field = format!("{this_name}[{key}]");
            let key_ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !key_ok {
                causes.push(Cause::invalid(field.clone(), key, CONFIG_KEY_MSG));
            } else if key == "." || key == ".." {
                causes.push(Cause::invalid(
                    field.clone(),
                    key,
                    &format!("must not be '{key}'"),
                ));
            } else if key.starts_with("..") {
                causes.push(Cause::invalid(
                    field.clone(),
                    key,
                    "must not start with '..'",
                ));
            }
            if other.contains_key(key) {
                causes.push(Cause::invalid(
                    field,
                    key,
                    &format!("duplicate of key present in {other_name}"),
                ));
            }
            let s = value.as_str().unwrap_or("");
            // binaryData travels base64-encoded; its size is the decoded size.
            total += if this_name == "binaryData" {
                s.len() / 4 * 3 - s.bytes().rev().take_while(|b| *b == b'=').count()
            } else {
                s.len()
            };
        }
    }
    if total > MAX_CONFIGMAP_BYTES {
        // The field path is empty (the whole object); the wording is 1.2x's.
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "[]".into(),
            message: format!("Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes"),
        });
    }
    causes
}

/// `legacyValidateEvent` for a `v1` request: the involved object's namespace
/// must agree with the Event's; an Event with `eventTime` (a "new" Event)
/// also needs `reportingComponent`, `reportingInstance`, `action`, `reason`.
pub(crate) fn event_causes(ev: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ns = ev["metadata"]["namespace"].as_str().unwrap_or("");
    let involved = ev["involvedObject"]["namespace"].as_str().unwrap_or("");
    let mismatch = |causes: &mut Vec<Cause>| {
        causes.push(Cause::invalid(
            "involvedObject.namespace",
            involved,
            "does not match event.namespace",
        ))
    };
    if ev["eventTime"].is_null() {
        if (involved.is_empty() && !ns.is_empty() && ns != "default")
            || (!involved.is_empty() && involved != ns)
        {
            mismatch(&mut causes);
        }
    } else {
        if involved.is_empty() && ns != "default" && ns != "kube-system" {
            mismatch(&mut causes);
        }
        for field in [
            "reportingComponent",
            "reportingInstance",
            "action",
            "reason",
        ] {
            if ev[field].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(field, ""));
            }
        }
    }
    causes
}

/// `ValidateLeaseSpec`. The real message prints the value as a Go pointer
/// (`(*int32)(0xc…)`); the number stands in for it here.
fn validate_lease_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut check = |field: &str, ok: fn(i64) -> bool, detail: &str| {
        if let Some(n) = spec[field].as_i64().filter(|n| !ok(*n)) {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: format!("spec.{field}"),
                message: format!("Invalid value: {n}: {detail}"),
            });
        }
    };
    check("leaseDurationSeconds", |n| n > 0, "must be greater than 0");
    check(
        "leaseTransitions",
        |n| n >= 0,
        "must be greater than or equal to 0",
    );
    causes
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
    ];
    for (k, v) in defaults {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers {
            let image = c["image"].as_str().unwrap_or("").to_string();
            let tag_latest = !image.contains(':') || image.ends_with(":latest");
            let defaults = [
                ("terminationMessagePath", json!("/dev/termination-log")),
                ("terminationMessagePolicy", json!("File")),
                (
                    "imagePullPolicy",
                    json!(if tag_latest && !image.contains('@') {
                        "Always"
                    } else {
                        "IfNotPresent"
                    }),
                ),
                ("resources", json!({})),
            ];
            for (k, v) in defaults {
                if c.get(k).is_none() {
                    c[k] = v;
                }
            }
        }
    }
}

fn validate_pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                let p = format!("{path}.containers[{i}]");
                match c["name"].as_str() {
                    None | Some("") => causes.push(Cause::required(format!("{p}.name"), "")),
                    Some(n) if !is_dns1123_label(n) => {
                        causes.push(Cause::invalid(format!("{p}.name"), n, DNS1123_LABEL_MSG))
                    }
                    _ => {}
                }
                if c["image"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("{p}.image"), ""));
                }
            }
        }
        _ => causes.push(Cause::required(format!("{path}.containers"), "")),
    }
    causes
}

/// Job defaults (`pkg/apis/batch/v1/defaults.go` plus the strategy's selector and labels).
fn default_job(job: &mut Value) {
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    if !job["spec"].is_object() {
        job["spec"] = json!({});
    }
    let spec = &mut job["spec"];
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec["completions"] = json!(1);
    }
    if spec.get("parallelism").is_none() {
        spec["parallelism"] = json!(1);
    }
    if spec.get("backoffLimit").is_none() {
        spec["backoffLimit"] = if spec.get("backoffLimitPerIndex").is_some() {
            json!(i32::MAX)
        } else {
            json!(6)
        };
    }
    if spec.get("completionMode").is_none() {
        spec["completionMode"] = json!("NonIndexed");
    }
    if spec.get("suspend").is_none() {
        spec["suspend"] = json!(false);
    }
    if spec.get("podReplacementPolicy").is_none() && spec.get("podFailurePolicy").is_none() {
        spec["podReplacementPolicy"] = json!("TerminatingOrFailed");
    }
    if spec.get("manualSelector") != Some(&json!(true)) {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        if !spec["template"].is_object() {
            spec["template"] = json!({});
        }
        if !spec["template"]["metadata"].is_object() {
            spec["template"]["metadata"] = json!({});
        }
        let meta = &mut spec["template"]["metadata"];
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        let labels = &mut meta["labels"];
        labels["batch.kubernetes.io/controller-uid"] = json!(uid);
        labels["batch.kubernetes.io/job-name"] = json!(name);
        labels["controller-uid"] = json!(uid);
        labels["job-name"] = json!(name);
    }
    default_pod_spec(&mut spec["template"]["spec"]);
}

fn validate_job(job: &Value) -> Vec<Cause> {
    let spec = &job["spec"];
    let mut causes = labels_causes(
        &spec["template"]["metadata"]["labels"],
        "spec.template.labels",
    );
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(n) = spec[field].as_i64() {
            if n < 0 {
                causes.push(Cause::invalid(
                    format!("spec.{field}"),
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    if spec["completionMode"] == "Indexed" && spec["completions"].is_null() {
        causes.push(Cause::required(
            "spec.completions",
            "when completion mode is Indexed",
        ));
    }
    let policy = spec["template"]["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("");
    if policy != "OnFailure" && policy != "Never" {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["OnFailure", "Never"],
        ));
    }
    causes.extend(validate_pod_spec(
        &spec["template"]["spec"],
        "spec.template.spec",
    ));
    causes
}

/// Update rules: Job `spec.template`, `spec.selector`, `spec.completions`
/// (outside elastic Indexed Jobs) and `spec.completionMode` are immutable.
pub fn admit_update(
    resource: &'static Resource,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    let mut causes = labels_causes(&new["metadata"]["labels"], "metadata.labels");
    if resource == &JOBS {
        if new["spec"]["template"]["spec"].is_object() {
            default_pod_spec(&mut new["spec"]["template"]["spec"]);
        }
        for field in ["template", "selector", "completionMode"] {
            if old["spec"][field] != new["spec"][field] {
                causes.push(Cause::immutable(
                    format!("spec.{field}"),
                    short(&new["spec"][field]),
                ));
            }
        }
        if old["spec"]["completions"] != new["spec"]["completions"]
            && new["spec"]["completionMode"] != "Indexed"
        {
            causes.push(Cause::immutable(
                "spec.completions",
                short(&new["spec"]["completions"]),
            ));
        }
        if causes.is_empty() {
            causes.extend(validate_job(new));
        }
    }
    if resource.plural == "leases" {
        causes.extend(validate_lease_spec(&new["spec"]));
    }
    if resource.plural == "configmaps" {
        causes.extend(validate_configmap(new));
    }
    invalid(resource, new, causes)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(77).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_spec_bounds() {
        let mut l = json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}});
        let err = admit_create(&crate::resource::LEASES, &mut l).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Lease.coordination.k8s.io "l" is invalid: [spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0, spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0]"#
        );
        let mut ok = json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 15, "leaseTransitions": 0}});
        admit_create(&crate::resource::LEASES, &mut ok).unwrap();
    }

    #[test]
    fn dns1123() {
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(
            is_label_value("Ab_c.d-1") && !is_label_value("-x") && !is_label_value(&"a".repeat(64))
        );
    }

    #[test]
    fn generate_name_cuts_base_to_58_and_adds_5() {
        let n = generate_name(&"x".repeat(80));
        assert_eq!(n.len(), 63);
        assert!(n.starts_with(&"x".repeat(58)));
        assert!(n[58..].bytes().all(|b| ALPHANUMS.contains(&b)));
    }

    #[test]
    fn job_without_restart_policy_is_rejected_like_the_server_does() {
        let mut job = json!({"metadata": {"name": "j", "uid": "u"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        let err = admit_create(&JOBS, &mut job).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Job.batch "j" is invalid: spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#
        );
    }
}
