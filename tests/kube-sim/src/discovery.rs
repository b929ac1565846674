//! Discovery: what `kubectl` and client-go ask before touching a resource.
//!
//! Served in the legacy (unaggregated) form only: `/api` (APIVersions),
//! `/apis` (APIGroupList), `/apis/GROUP` (APIGroup) and `/api/v1`,
//! `/apis/GROUP/VERSION` (APIResourceList). Clients that ask for aggregated
//! discovery (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
//! get `application/json` and fall back, as they do against a server
//! before 1.26. `/openapi/v2` and `/openapi/v3` are not served (404 with a
//! Status, as a server without them answers).

use crate::resource::{Resource, ALL};
use serde_json::{json, Value};

/// The verbs served on every resource (no `deletecollection`: DELETE of a
/// collection is not served).
const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The discovery document at `path`, or `None` if `path` is not a discovery path.
pub fn document(path: &str, host: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Some(version()),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        })),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups().into_iter().map(|(g, v)| group(g, v)).collect::<Vec<_>>(),
        })),
        ["apis", g] => groups()
            .into_iter()
            .find(|(name, _)| name == g)
            .map(|(g, v)| {
                let mut doc = group(g, v);
                doc["kind"] = json!("APIGroup");
                doc["apiVersion"] = json!("v1");
                doc
            }),
        ["api", "v1"] => Some(resource_list("", "v1")),
        ["apis", g, v] if ALL.iter().any(|r| r.group == *g && r.version == *v) => {
            Some(resource_list(g, v))
        }
        _ => None,
    }
}

/// `/version`.
fn version() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0-kube-sim",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Named groups and their versions, in the order of [`ALL`].
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in ALL.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

fn group(name: &str, versions: Vec<&str>) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(versions[0]),
    })
}

fn resource_entry(r: &Resource) -> Value {
    let mut e = json!({
        "name": r.plural,
        "singularName": r.singular(),
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    e
}

/// The APIResourceList of one group/version, with `/status` subresources.
fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in ALL
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(resource_entry(r));
        if r.has_status() {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut doc =
        json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources});
    if !group.is_empty() {
        doc["apiVersion"] = json!("v1");
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_resource_lists() {
        let apis = document("/apis", "h").unwrap();
        let names: Vec<&str> = apis["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["batch", "coordination.k8s.io", "events.k8s.io"]);
        assert_eq!(
            apis["groups"][0]["preferredVersion"]["groupVersion"],
            "batch/v1"
        );
        let batch = document("/apis/batch/v1", "h").unwrap();
        assert_eq!(batch["groupVersion"], "batch/v1");
        assert_eq!(batch["resources"][0]["name"], "jobs");
        assert_eq!(batch["resources"][0]["singularName"], "job");
        assert_eq!(batch["resources"][0]["categories"], json!(["all"]));
        assert_eq!(batch["resources"][1]["name"], "jobs/status");
        let core = document("/api/v1", "h").unwrap();
        let cm = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "configmaps")
            .unwrap();
        assert_eq!(cm["shortNames"], json!(["cm"]));
        assert!(document("/apis/batch/v2", "h").is_none());
        assert!(document("/apis/apps", "h").is_none());
        assert!(document("/openapi/v2", "h").is_none());
        assert_eq!(document("/apis/batch", "h").unwrap()["kind"], "APIGroup");
    }
}
