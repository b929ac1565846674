//! deploy/: the Helm chart (deploy/helm/kedge) and the kustomize base
//! (deploy/kubernetes), rendered as a user would and checked:
//!
//! - the chart with default values renders the same objects as the
//!   kustomize base (up to what each tool adds by convention);
//! - every object either renders is valid against the Kubernetes 1.33
//!   OpenAPI schemas, strictly (an unknown field is an error), under
//!   several sets of values;
//! - the rendered Role grants exactly the executor's `PERMISSIONS`;
//! - the rendered daemon config and job files pass `kedge validate`;
//! - `helm lint --strict` finds nothing.
//!
//! The chart is rendered by Helm's own engine (helm-python-sdk: Helm v4's Go
//! SDK behind a C ABI; there is no helm binary in any registry this project
//! can use), kustomize is kubectl's, and the schemas are
//! kubernetes-validate's; see tests/deploy/tools.py. Without them the tests
//! fail under `CI` and are skipped, loudly, elsewhere.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::tools::{repo, tools, Tools};

const CHART: &str = "deploy/helm/kedge";
const KUBERNETES: &str = "1.33.0";

/// The chart's objects for `values`, released as `kedge` in `batch`.
fn render(tools: &Tools, values: &Value) -> Vec<Value> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values.to_string()).unwrap();
    let out = tools.run(
        &[
            "render",
            CHART,
            "kedge",
            "batch",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    out.as_array().unwrap().clone()
}

fn kustomize(tools: &Tools, dir: &str) -> Vec<Value> {
    tools
        .run(&["kustomize", dir], None)
        .as_array()
        .unwrap()
        .clone()
}

/// `kind/name` → object, its keys sorted (so that two print alike).
fn by_name(objects: Vec<Value>) -> BTreeMap<String, Value> {
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let m: BTreeMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(m.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
            v => v,
        }
    }
    objects
        .into_iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap();
            let name = o["metadata"]["name"].as_str().unwrap();
            (format!("{kind}/{name}"), sorted(o))
        })
        .collect()
}

/// Asserts each object is valid Kubernetes 1.33 (strict), except the
/// Prometheus Operator's ServiceMonitor, a CRD without a schema there.
fn assert_valid(tools: &Tools, what: &str, objects: &[Value]) {
    let core: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] != "ServiceMonitor")
        .cloned()
        .collect();
    assert!(!core.is_empty(), "{what}: no objects");
    let answer = tools.run(&["kube-validate", KUBERNETES], Some(&Value::Array(core)));
    for r in answer.as_array().unwrap() {
        let errors = r["errors"].as_array().unwrap();
        assert!(
            errors.is_empty(),
            "{what}: {}/{}: {errors:#?}",
            r["kind"],
            r["name"]
        );
        assert_eq!(r["schema"], "1.33", "{what}: {}/{}", r["kind"], r["name"]);
    }
}

/// Takes out what differs between the tools by convention alone: the labels
/// naming the tool (`helm.sh/chart`, `app.kubernetes.io/managed-by`), how a
/// config change rolls the pods (kustomize's 10-character hash suffix on a
/// generated ConfigMap's name, the chart's `checksum/config` annotation),
/// and the YAML formatting of the files in ConfigMaps (compared as the data
/// they hold).
fn normalize(objects: Vec<Value>) -> BTreeMap<String, Value> {
    let suffixed: Vec<(String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .filter_map(|o| {
            let name = o["metadata"]["name"].as_str()?;
            let (base, hash) = name.rsplit_once('-')?;
            (hash.len() == 10).then(|| (format!("\"{name}\""), format!("\"{base}\"")))
        })
        .collect();
    let text = serde_json::to_string(&objects).unwrap();
    let text = suffixed
        .iter()
        .fold(text, |t, (from, to)| t.replace(from, to));
    let mut objects: Vec<Value> = serde_json::from_str(&text).unwrap();
    for o in &mut objects {
        for labels in ["/metadata/labels", "/spec/template/metadata/labels"] {
            if let Some(l) = o.pointer_mut(labels).and_then(Value::as_object_mut) {
                l.remove("helm.sh/chart");
                l.remove("app.kubernetes.io/managed-by");
            }
        }
        if let Some(meta) = o
            .pointer_mut("/spec/template/metadata")
            .and_then(Value::as_object_mut)
        {
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("checksum/config");
                if a.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
        if let Some(data) = o.pointer_mut("/data").and_then(Value::as_object_mut) {
            for v in data.values_mut() {
                *v = kedge::config::yaml::Located::parse(v.as_str().unwrap())
                    .unwrap()
                    .value;
            }
        }
    }
    by_name(objects)
}

#[test]
fn chart_with_default_values_renders_the_kustomize_base() {
    let Some(tools) = tools("chart_with_default_values_renders_the_kustomize_base", true) else {
        return;
    };
    let chart = normalize(render(&tools, &json!({})));
    let base = normalize(kustomize(&tools, "deploy/kubernetes"));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "the chart and the kustomize base make different objects"
    );
    for (name, object) in &chart {
        assert_eq!(
            serde_json::to_string_pretty(object).unwrap(),
            serde_json::to_string_pretty(&base[name]).unwrap(),
            "{name}: the chart (left) and the kustomize base (right) differ"
        );
    }
}

/// Values that turn on every option the chart has.
fn everything_on() -> Value {
    let orders = std::fs::read_to_string(repo().join("jobs/orders.yaml")).unwrap();
    json!({
        "replicaCount": 3,
        "image": { "tag": "dev" },
        "imagePullSecrets": [{ "name": "registry" }],
        "store": { "url": "postgres://kedge:secret@db/kedge" },
        "serviceAccount": { "annotations": { "example.com/role": "kedge" } },
        "config": { "limits": { "max_active_runs": 50 }, "pools": { "db-prod": 2 } },
        "jobs": { "definitions": {
            // A file's text, as --set-file gives it; and a mapping.
            "orders.yaml": orders,
            "heartbeat": {
                "name": "heartbeat",
                "trigger": { "cron": "*/5 * * * *" },
                "template": { "template": { "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "beat", "image": "busybox:1.36", "command": ["true"] }]
                } } }
            }
        } },
        "podAnnotations": { "example.com/team": "batch" },
        "podLabels": { "team": "batch" },
        "env": [{ "name": "SHOP_DB_URL", "valueFrom": { "secretKeyRef": { "name": "shop-db", "key": "url" } } }],
        "volumes": [{ "name": "extra", "emptyDir": {} }],
        "volumeMounts": [{ "name": "extra", "mountPath": "/extra" }],
        "nodeSelector": { "kubernetes.io/os": "linux" },
        "tolerations": [{ "key": "batch", "operator": "Exists", "effect": "NoSchedule" }],
        "affinity": { "nodeAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 1,
            "preference": { "matchExpressions": [{ "key": "pool", "operator": "In", "values": ["batch"] }] }
        }] } },
        "podDisruptionBudget": { "enabled": true, "minAvailable": 2 },
        "serviceMonitor": { "enabled": true, "labels": { "release": "prometheus" } },
        "networkPolicy": { "enabled": true, "ingressFrom": [{ "namespaceSelector": {
            "matchLabels": { "kubernetes.io/metadata.name": "monitoring" }
        } }] }
    })
}

#[test]
fn rendered_objects_are_valid_kubernetes_1_33() {
    let Some(tools) = tools("rendered_objects_are_valid_kubernetes_1_33", true) else {
        return;
    };
    let cases = [
        ("defaults", json!({})),
        ("everything on", everything_on()),
        (
            "no RBAC, an existing service account and job ConfigMap",
            json!({
                "rbac": { "create": false },
                "serviceAccount": { "create": false, "name": "batch-runner" },
                "jobs": { "existingConfigMap": "my-jobs" },
                "store": { "existingSecret": "pg", "existingSecretKey": "dsn" },
                "podDisruptionBudget": { "enabled": false },
                "topologySpreadConstraints": []
            }),
        ),
    ];
    for (what, values) in &cases {
        assert_valid(&tools, what, &render(&tools, values));
    }
    assert_valid(
        &tools,
        "deploy/kubernetes",
        &kustomize(&tools, "deploy/kubernetes"),
    );
    let examples = kustomize(&tools, "deploy/kubernetes-examples");
    assert_valid(&tools, "deploy/kubernetes-examples", &examples);
}

#[test]
fn options_render_what_they_say() {
    let Some(tools) = tools("options_render_what_they_say", false) else {
        return;
    };
    let on = by_name(render(&tools, &everything_on()));
    let secret = &on["Secret/kedge-store"];
    assert_eq!(
        secret["data"]["url"],
        "cG9zdGdyZXM6Ly9rZWRnZTpzZWNyZXRAZGIva2VkZ2U="
    );
    let deployment = &on["Deployment/kedge"];
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env[2]["valueFrom"]["secretKeyRef"],
        json!({ "key": "url", "name": "kedge-store" })
    );
    assert_eq!(env[3]["name"], "SHOP_DB_URL");
    let monitor = &on["ServiceMonitor/kedge"];
    let service = &on["Service/kedge"];
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(on["PodDisruptionBudget/kedge"]["spec"]["minAvailable"], 2);
    assert!(on["PodDisruptionBudget/kedge"]["spec"]
        .get("maxUnavailable")
        .is_none());
    let jobs = &on["ConfigMap/kedge-jobs"]["data"];
    assert_eq!(
        jobs["orders.yaml"].as_str(),
        Some(
            std::fs::read_to_string(repo().join("jobs/orders.yaml"))
                .unwrap()
                .as_str()
        ),
        "a job file's text is kept as it is"
    );
    assert!(jobs["heartbeat.yaml"]
        .as_str()
        .unwrap()
        .contains("name: heartbeat"));

    let off = by_name(render(
        &tools,
        &json!({ "rbac": { "create": false }, "serviceAccount": { "create": false },
                 "jobs": { "existingConfigMap": "my-jobs" } }),
    ));
    let kinds: Vec<&str> = off.keys().map(|k| k.split('/').next().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    );
    let volumes = &off["Deployment/kedge"]["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[1]["configMap"]["name"], "my-jobs");
    let both = tools_render_error(
        &tools,
        &json!({ "store": { "url": "postgres://x", "existingSecret": "pg" } }),
    );
    assert!(both.contains("set either url"), "{both}");
}

/// Renders `values`, expecting a failure; returns its message.
fn tools_render_error(tools: &Tools, values: &Value) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values.to_string()).unwrap();
    tools
        .run(
            &[
                "render-error",
                CHART,
                "kedge",
                "batch",
                file.path().to_str().unwrap(),
            ],
            None,
        )
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_chart_role_grants_exactly_what_kedge_uses() {
    let Some(tools) = tools("the_chart_role_grants_exactly_what_kedge_uses", false) else {
        return;
    };
    let objects = by_name(render(&tools, &json!({ "fullnameOverride": "kedge-prod" })));
    let mut granted: Vec<(String, String, Vec<String>)> = objects["Role/kedge-prod"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let list = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            let mut verbs = list("verbs");
            verbs.sort();
            let resources = list("resources");
            list("apiGroups").into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources
                    .clone()
                    .into_iter()
                    .map(move |r| (g.clone(), r, verbs.clone()))
            })
        })
        .collect();
    let mut used: Vec<(String, String, Vec<String>)> = kedge::executor::kubernetes::PERMISSIONS
        .iter()
        .map(|(g, r, v)| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.sort();
            (g.to_string(), r.to_string(), v)
        })
        .collect();
    granted.sort();
    used.sort();
    assert_eq!(granted, used);
    let binding = &objects["RoleBinding/kedge-prod"];
    assert_eq!(binding["roleRef"]["name"], "kedge-prod");
    assert_eq!(binding["subjects"][0]["name"], "kedge-prod");
    assert!(objects.contains_key("ServiceAccount/kedge-prod"));
}

/// The config and job files the chart mounts, written out and checked by
/// the built `kedge validate`, as the daemon in the pod would read them.
#[test]
fn rendered_config_and_jobs_pass_kedge_validate() {
    let Some(tools) = tools("rendered_config_and_jobs_pass_kedge_validate", false) else {
        return;
    };
    for values in [json!({}), everything_on()] {
        let objects = by_name(render(&tools, &values));
        let dir = tempfile::tempdir().unwrap();
        let config = objects["ConfigMap/kedge-config"]["data"]["kedge.yaml"]
            .as_str()
            .unwrap();
        std::fs::write(dir.path().join("kedge.yaml"), config).unwrap();
        std::fs::create_dir(dir.path().join("jobs")).unwrap();
        let data = objects["ConfigMap/kedge-jobs"]["data"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (file, text) in &data {
            std::fs::write(dir.path().join("jobs").join(file), text.as_str().unwrap()).unwrap();
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kedge"))
            .args(["--config", "kedge.yaml", "--jobs", "jobs", "validate"])
            .env("KEDGE_STORE_URL", "postgres://kedge@db/kedge")
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with(&format!("ok: {} job(s)", data.len())),
            "{stdout}"
        );
    }
}

#[test]
fn helm_lint_finds_nothing() {
    let Some(tools) = tools("helm_lint_finds_nothing", false) else {
        return;
    };
    let report = tools.run(&["lint", CHART, "v1.33.0"], None);
    assert_eq!(report["total_charts_linted"], 1, "{report:#}");
    let messages: Vec<&Value> = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_i64() != Some(1)) // 1: info
        .collect();
    assert!(messages.is_empty(), "{messages:#?}");
    assert_eq!(
        report["errors"].as_array().map_or(0, Vec::len),
        0,
        "{report:#}"
    );
}

/// Chart.yaml's appVersion, the kustomize base's image tag and version
/// label are the crate's version. (No tools needed.)
#[test]
fn deploy_files_name_the_crate_version() {
    let version = env!("CARGO_PKG_VERSION");
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let chart: Value = serde_saphyr::from_str(&read("deploy/helm/kedge/Chart.yaml")).unwrap();
    assert_eq!(chart["appVersion"], version);
    let deployment = read("deploy/kubernetes/deployment.yaml");
    assert!(
        deployment.contains(&format!("image: kedge:{version}\n")),
        "deployment.yaml's image"
    );
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    assert!(
        kustomization.contains(&format!("app.kubernetes.io/version: \"{version}\"\n")),
        "kustomization.yaml's version label"
    );
}
