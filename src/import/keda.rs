//! KEDA `keda.sh/v1alpha1` ScaledJob → a kedge queue job.
//!
//! KEDA counts the messages in a queue and starts Jobs whose image pulls
//! messages itself; kedge claims each message and starts one Job per
//! message with it in `KEDGE_PAYLOAD`, settling the message only when the
//! Job is done (retry, dead letter). So a trigger becomes a kedge queue
//! source, and the scaling fields become a cap on Jobs at once:
//!
//! | ScaledJob | kedge |
//! |---|---|
//! | `metadata.name` | `name` |
//! | `spec.jobTargetRef` | `template` |
//! | trigger `redis` (a list) | `trigger.queue.redis_list` |
//! | trigger `redis-streams` | `trigger.queue.redis_stream` |
//! | trigger `rabbitmq` | `trigger.queue.rabbitmq` |
//! | trigger `postgresql` counting one table | `trigger.queue.postgres` |
//! | other triggers (prometheus, metrics-api, cron, …) | reported: metric triggers are not built yet |
//! | `spec.maxReplicaCount` (default 100) | `limits.max_active` |
//! | `spec.minReplicaCount`, `spec.scalingStrategy` | reported: one Job per message, no idle workers |
//! | history limits, `pollingInterval`, `rollout` | reported |
//!
//! Only the fields mapped are read; KEDA's other fields are kept as JSON
//! and reported, so nothing is dropped without a line in the report.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{entrypoint_note, history_limits, job_name, object, Outcome};
use crate::redact::redact;

/// KEDA's default `maxReplicaCount`.
const KEDA_MAX_REPLICAS: i64 = 100;

/// A ScaledJob: the fields kedge maps (KEDA's CRD has no k8s-openapi type).
#[derive(Debug, Clone, Deserialize)]
pub struct ScaledJob {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ScaledJobSpec,
}

/// `spec` of a ScaledJob.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledJobSpec {
    /// The Job each scale-up creates.
    pub job_target_ref: JobSpec,
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    pub polling_interval: Option<i64>,
    pub successful_jobs_history_limit: Option<i32>,
    pub failed_jobs_history_limit: Option<i32>,
    pub max_replica_count: Option<i64>,
    pub min_replica_count: Option<i64>,
    pub scaling_strategy: Option<Value>,
    pub rollout: Option<Value>,
    /// Every other field (envSourceContainerName, rolloutStrategy, …): reported.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One entry of `spec.triggers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: String,
    /// KEDA's metadata values are strings; a YAML number or boolean is read too.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    pub authentication_ref: Option<AuthenticationRef>,
    /// name, metricType, useCachedMetrics, …: reported.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `authenticationRef`: a TriggerAuthentication by name.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthenticationRef {
    pub name: String,
    pub kind: Option<String>,
}

/// A trigger's metadata, read as text.
struct Meta<'a>(&'a BTreeMap<String, Value>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(|v| match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }
}

/// What one trigger becomes: the source under `trigger.queue`, or why none.
enum Source {
    Mapped { key: &'static str, value: Value },
    Unmappable(String),
}

/// Maps one ScaledJob; `Ok(None)` when no trigger maps to a kedge source
/// (the report says why, no file is written). Errors are `(path, message)`.
pub(crate) fn map(
    sj: &ScaledJob,
    o: &mut Outcome,
) -> Result<Option<(String, Value)>, (String, String)> {
    let raw_name = sj.metadata.name.clone().unwrap_or_default();
    let name = job_name(&raw_name, "metadata.name", o)?;
    if let Some(ns) = &sj.metadata.namespace {
        o.unmapped(
            "metadata.namespace",
            format!("{ns}: kedge creates Jobs in the Kubernetes executor's namespace (executor.kubernetes.namespace in the daemon config)"),
        );
    }
    let spec = &sj.spec;
    if spec.triggers.is_empty() {
        return Err(("spec.triggers".into(), "needs at least one trigger".into()));
    }

    let mut chosen: Option<(usize, &'static str, Value)> = None;
    for (i, t) in spec.triggers.iter().enumerate() {
        let path = format!("spec.triggers[{i}]");
        let source = source_of(t, &name, &path, o);
        match (source, &chosen) {
            (Source::Mapped { key, value }, None) => {
                o.mapped(&format!("{path} ({})", t.kind), format!("trigger.queue.{key}"));
                chosen = Some((i, key, value));
            }
            (Source::Mapped { .. }, Some((first, _, _))) => o.unmapped(
                format!("{path} ({})", t.kind),
                format!("a kedge job reads one queue; spec.triggers[{first}] is the one imported: import this one as a second job file (a copy with only this trigger)"),
            ),
            (Source::Unmappable(why), _) => o.unmapped(format!("{path} ({})", t.kind), why),
        }
        if let Some(auth) = &t.authentication_ref {
            o.unmapped(
                format!("{path}.authenticationRef"),
                format!(
                    "{} {}: kedge reads no TriggerAuthentication; give the daemon the secret in the environment variable the source's url_env names",
                    auth.kind.as_deref().unwrap_or("TriggerAuthentication"),
                    auth.name
                ),
            );
        }
        for k in t.other.keys() {
            o.unmapped(
                format!("{path}.{k}"),
                "a KEDA scaler setting; kedge does not scale on a metric",
            );
        }
    }
    let Some((_, key, source)) = chosen else {
        o.skipped =
            Some("no trigger kedge can read as a queue (see below); no file written".into());
        return Ok(None);
    };

    o.mapped("spec.jobTargetRef", "template");
    o.mapped(
        "(a failed Job's messages)",
        "retried by kedge (retry defaults: 3 attempts, then a dead letter kept in kedge's store; set dead_letter to publish it to the broker)",
    );
    entrypoint_note(&spec.job_target_ref, "spec.jobTargetRef", o);
    o.todo(format!(
        "kedge claims each message and starts one Job per message with the message in KEDGE_PAYLOAD (batches: `batch:`), settling it only when the Job has finished; KEDA counted messages and the image pulled them itself: change {name}'s container to read KEDGE_PAYLOAD instead of consuming the queue (worker mode, for images that pull their own messages, is not built yet)"
    ));
    let max_active = spec.max_replica_count.unwrap_or(KEDA_MAX_REPLICAS);
    if max_active < 1 {
        return Err((
            "spec.maxReplicaCount".into(),
            format!("{max_active} must be 1 or more"),
        ));
    }
    o.mapped(
        if spec.max_replica_count.is_some() {
            "spec.maxReplicaCount"
        } else {
            "spec.maxReplicaCount (KEDA's default 100)"
        },
        format!("limits.max_active: {max_active} (Jobs at once, one message each)"),
    );
    if let Some(min) = spec.min_replica_count {
        o.unmapped(
            "spec.minReplicaCount",
            format!("{min}: kedge starts a Job only for a message, so there are no idle workers to keep; a message is dispatched within milliseconds of arriving"),
        );
    }
    if let Some(s) = &spec.scaling_strategy {
        o.unmapped(
            "spec.scalingStrategy",
            format!("{}: KEDA's strategies estimate how many workers the queue length needs; kedge needs none, it starts exactly one Job per message up to limits.max_active (worker mode with these strategies is not built yet)", compact(s)),
        );
    }
    history_limits(
        o,
        "spec",
        spec.successful_jobs_history_limit,
        spec.failed_jobs_history_limit,
    );
    if let Some(p) = spec.polling_interval {
        o.unmapped(
            "spec.pollingInterval",
            format!("{p}s: kedge does not poll the queue: its sources are woken by the broker (the postgres source polls every poll_interval, 5s, as a fallback to LISTEN)"),
        );
    }
    if let Some(r) = &spec.rollout {
        o.unmapped(
            "spec.rollout",
            format!("{}: a changed job file applies to new runs; Jobs already running finish as they were (KEDA's `gradual`); kedge never deletes them on a change", compact(r)),
        );
    }
    for (k, v) in &spec.other {
        o.unmapped(
            format!("spec.{k}"),
            format!("{}: not read by kedge", compact(v)),
        );
    }

    let template = serde_json::to_value(&spec.job_target_ref)
        .map_err(|e| ("spec.jobTargetRef".to_string(), e.to_string()))?;
    o.mapped(
        "messages (any text)",
        "payload.format: text (KEDA never read them; kedge hands each to its Job)",
    );
    let mut queue = serde_json::Map::new();
    queue.insert(key.to_string(), source);
    let job = object([
        ("name", json!(name)),
        (
            "description",
            json!(format!("Imported from the KEDA ScaledJob {raw_name}.")),
        ),
        ("trigger", json!({ "queue": Value::Object(queue) })),
        ("limits", json!({ "max_active": max_active })),
        ("payload", json!({ "format": "text" })),
        ("template", template),
    ]);
    Ok(Some((name, job)))
}

/// A value for a report line, on one line.
fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The environment variable a source's URL is read from: the one KEDA
/// read it from (`…FromEnv`), or `<JOB>_<WHAT>_URL`; records what to set.
fn url_env(
    meta: &Meta,
    from_env_key: &str,
    job: &str,
    what: &str,
    url: Option<String>,
    path: &str,
    o: &mut Outcome,
) -> String {
    if let Some(var) = meta.get(from_env_key) {
        o.mapped(
            &format!("{path}.metadata.{from_env_key}"),
            format!("url_env: {var}"),
        );
        o.todo(format!(
            "set {var} in kedge's environment (KEDA read it from the target container's)"
        ));
        return var;
    }
    let var = format!("{}_{what}_URL", job.to_ascii_uppercase().replace('-', "_"));
    match url {
        Some(u) => o.todo(format!(
            "set {var} in kedge's environment to {} (job files keep URLs out, as secrets)",
            redact(&u)
        )),
        None => o.todo(format!(
            "set {var} in kedge's environment to the {what} URL (from the TriggerAuthentication)"
        )),
    }
    var
}

/// Reports metadata keys that only tune KEDA's counting.
fn counting_keys(meta: &Meta, keys: &[&str], path: &str, o: &mut Outcome) {
    for k in keys {
        if let Some(v) = meta.get(k) {
            o.unmapped(
                format!("{path}.metadata.{k}"),
                format!(
                    "{v}: a target for KEDA's message counting; kedge starts one Job per message"
                ),
            );
        }
    }
}

/// Maps one trigger to a kedge source, or says why not.
fn source_of(t: &Trigger, job: &str, path: &str, o: &mut Outcome) -> Source {
    let meta = Meta(&t.metadata);
    match t.kind.as_str() {
        "redis" => {
            let Some(list) = meta.get("listName") else {
                return Source::Unmappable("metadata.listName is missing".into());
            };
            let url = redis_url(&meta);
            let var = url_env(&meta, "addressFromEnv", job, "REDIS", url, path, o);
            counting_keys(&meta, &["listLength", "activationListLength"], path, o);
            redis_auth(&meta, path, o);
            Source::Mapped {
                key: "redis_list",
                value: json!({ "url_env": var, "list": list }),
            }
        }
        "redis-streams" => {
            let Some(stream) = meta.get("stream") else {
                return Source::Unmappable("metadata.stream is missing".into());
            };
            let url = redis_url(&meta);
            let var = url_env(&meta, "addressFromEnv", job, "REDIS", url, path, o);
            counting_keys(
                &meta,
                &["pendingEntriesCount", "streamLength", "lagCount", "activationLagCount"],
                path,
                o,
            );
            redis_auth(&meta, path, o);
            let group = meta.get("consumerGroup");
            if group.is_some() {
                o.unmapped(
                    format!("{path}.metadata.consumerGroup"),
                    "kept as redis_stream.group: kedge reads the stream in this group, so the old workers must stop reading it",
                );
            }
            Source::Mapped {
                key: "redis_stream",
                value: object([
                    ("url_env", json!(var)),
                    ("stream", json!(stream)),
                    ("group", json!(group)),
                ]),
            }
        }
        "rabbitmq" => {
            let Some(queue) = meta.get("queueName") else {
                return Source::Unmappable("metadata.queueName is missing".into());
            };
            if meta.get("protocol").as_deref() == Some("http") {
                o.unmapped(
                    format!("{path}.metadata.protocol"),
                    "http: kedge consumes over AMQP; the URL to set is the amqp:// one",
                );
            }
            if let Some(v) = meta.get("vhostName") {
                o.unmapped(
                    format!("{path}.metadata.vhostName"),
                    format!("{v}: put the vhost in the URL's path"),
                );
            }
            let var = url_env(&meta, "hostFromEnv", job, "RABBITMQ", meta.get("host"), path, o);
            counting_keys(
                &meta,
                &["mode", "value", "queueLength", "activationValue", "excludeUnacknowledged"],
                path,
                o,
            );
            Source::Mapped {
                key: "rabbitmq",
                value: json!({ "url_env": var, "queue": queue }),
            }
        }
        "postgresql" => {
            let Some(query) = meta.get("query") else {
                return Source::Unmappable("metadata.query is missing".into());
            };
            let Some(table) = counted_table(&query) else {
                return Source::Unmappable(format!(
                    "query {query:?} is not a count of one whole table (SELECT COUNT(*) FROM t): kedge's postgres source claims every row of a table; metric triggers for other queries are not built yet"
                ));
            };
            let url = postgres_url(&meta);
            let var = url_env(&meta, "connectionFromEnv", job, "POSTGRES", url, path, o);
            counting_keys(&meta, &["targetQueryValue", "activationTargetQueryValue"], path, o);
            if meta.get("passwordFromEnv").is_some() || meta.get("password").is_some() {
                o.unmapped(
                    format!("{path}.metadata.password"),
                    "put the password in the URL kedge reads",
                );
            }
            o.todo(format!(
                "table {table}: kedge claims each row (FOR UPDATE SKIP LOCKED) and deletes it once stored (on_claim: mark keeps it); its columns must be id and payload, or set id_column and payload_column"
            ));
            Source::Mapped {
                key: "postgres",
                value: json!({ "url_env": var, "table": table }),
            }
        }
        "prometheus" | "metrics-api" => Source::Unmappable(format!(
            "a metric trigger: kedge's metric triggers (trigger.metric) are not built yet; no Job is started from {}",
            meta.get("query").or_else(|| meta.get("url")).unwrap_or_default()
        )),
        "cron" => Source::Unmappable(
            "KEDA's cron scaler keeps workers between start and end; kedge's cron trigger starts one run per fire: write a cron job by hand".into(),
        ),
        other => Source::Unmappable(format!(
            "kedge has no {other} source yet (its queues: redis list and stream, rabbitmq, postgres table; metric triggers and worker mode not built yet)"
        )),
    }
}

/// `redis://` (or `rediss://` with enableTLS) from address or host + port,
/// with databaseIndex.
fn redis_url(meta: &Meta) -> Option<String> {
    let address = meta.get("address").or_else(|| {
        meta.get("host")
            .map(|h| format!("{h}:{}", meta.get("port").unwrap_or_else(|| "6379".into())))
    })?;
    let scheme = if meta.get("enableTLS").as_deref() == Some("true") {
        "rediss"
    } else {
        "redis"
    };
    let db = meta
        .get("databaseIndex")
        .map(|d| format!("/{d}"))
        .unwrap_or_default();
    Some(format!("{scheme}://{address}{db}"))
}

fn redis_auth(meta: &Meta, path: &str, o: &mut Outcome) {
    for k in ["passwordFromEnv", "usernameFromEnv", "password", "username"] {
        if meta.get(k).is_some() {
            o.unmapped(
                format!("{path}.metadata.{k}"),
                "put the user and password in the URL kedge reads (redis://user:password@host:port/db)",
            );
        }
    }
}

/// `postgres://user@host:port/db` from KEDA's separate fields.
fn postgres_url(meta: &Meta) -> Option<String> {
    let host = meta.get("host")?;
    let port = meta.get("port").unwrap_or_else(|| "5432".into());
    let user = meta
        .get("userName")
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = meta.get("dbName").unwrap_or_default();
    let ssl = meta
        .get("sslmode")
        .map(|s| format!("?sslmode={s}"))
        .unwrap_or_default();
    Some(format!("postgres://{user}{host}:{port}/{db}{ssl}"))
}

/// The table of `SELECT COUNT(*) FROM table` (any case, an optional `;`),
/// or `None` for any other query.
fn counted_table(query: &str) -> Option<String> {
    let q = query.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = q.split_whitespace().collect();
    let [select, count, from, table] = words.as_slice() else {
        return None;
    };
    let is_count = matches!(count.to_ascii_lowercase().as_str(), "count(*)" | "count(1)");
    let table_ok = !table.is_empty()
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    (select.eq_ignore_ascii_case("select")
        && is_count
        && from.eq_ignore_ascii_case("from")
        && table_ok)
        .then(|| table.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled_job(yaml: &str) -> ScaledJob {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn with_triggers(triggers: &str) -> String {
        format!(
            r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {{name: worker}}
spec:
  jobTargetRef:
    template:
      spec:
        restartPolicy: Never
        containers: [{{name: w, image: w:1, command: [w]}}]
  maxReplicaCount: 7
  minReplicaCount: 1
  pollingInterval: 10
  scalingStrategy: {{strategy: accurate}}
  triggers:
{triggers}"#
        )
    }

    #[test]
    fn rabbitmq_becomes_the_rabbitmq_source_capped_by_max_replicas() {
        let sj = scaled_job(&with_triggers(
            "  - type: rabbitmq\n    metadata: {queueName: hello, hostFromEnv: RABBITMQ_URL, queueLength: '5'}\n",
        ));
        let mut o = Outcome::new(String::new());
        let (name, job) = map(&sj, &mut o).unwrap().unwrap();
        assert_eq!(name, "worker");
        assert_eq!(
            job["trigger"]["queue"]["rabbitmq"],
            json!({"url_env": "RABBITMQ_URL", "queue": "hello"})
        );
        assert_eq!(job["limits"]["max_active"], json!(7));
        for field in [
            "spec.minReplicaCount",
            "spec.scalingStrategy",
            "spec.pollingInterval",
            "spec.triggers[0].metadata.queueLength",
        ] {
            assert!(o.unmapped.iter().any(|u| u.field == field), "{field}: {o}");
        }
        assert!(o.todo.iter().any(|t| t.contains("KEDGE_PAYLOAD")));
        assert!(!o.todo.iter().any(|t| t.contains("has no command")));
        let sj = scaled_job(
            &with_triggers(
                "  - type: rabbitmq\n    metadata: {queueName: hello, hostFromEnv: RABBITMQ_URL}\n",
            )
            .replace(", command: [w]", ""),
        );
        let mut o = Outcome::new(String::new());
        map(&sj, &mut o).unwrap().unwrap();
        assert!(
            o.todo.iter().any(|t| t
                .starts_with("spec.jobTargetRef.template.spec.containers[0] (w) has no command")),
            "{o}"
        );
    }

    #[test]
    fn redis_list_and_stream_build_urls_and_env_names() {
        let sj = scaled_job(&with_triggers(
            "  - type: redis\n    metadata: {address: redis:6379, listName: mylist, listLength: '5', databaseIndex: 2}\n",
        ));
        let mut o = Outcome::new(String::new());
        let (_, job) = map(&sj, &mut o).unwrap().unwrap();
        assert_eq!(
            job["trigger"]["queue"]["redis_list"],
            json!({"url_env": "WORKER_REDIS_URL", "list": "mylist"})
        );
        assert!(o
            .todo
            .iter()
            .any(|t| t.contains("WORKER_REDIS_URL") && t.contains("redis://redis:6379/2")));
        let sj = scaled_job(&with_triggers(
            "  - type: redis-streams\n    metadata: {addressFromEnv: REDIS_ADDR, stream: s, consumerGroup: g}\n",
        ));
        let (_, job) = map(&sj, &mut Outcome::new(String::new())).unwrap().unwrap();
        assert_eq!(
            job["trigger"]["queue"]["redis_stream"],
            json!({"url_env": "REDIS_ADDR", "stream": "s", "group": "g"})
        );
    }

    #[test]
    fn prometheus_alone_writes_no_file_and_says_why() {
        let sj = scaled_job(&with_triggers(
            "  - type: prometheus\n    metadata: {serverAddress: 'http://p:9090', query: 'sum(x)', threshold: '10'}\n",
        ));
        let mut o = Outcome::new(String::new());
        assert!(map(&sj, &mut o).unwrap().is_none());
        assert!(o.skipped.is_some());
        assert!(
            o.unmapped
                .iter()
                .any(|u| u.field == "spec.triggers[0] (prometheus)"
                    && u.why.contains("not built yet"))
        );
    }

    #[test]
    fn postgresql_maps_only_a_count_of_one_table() {
        assert_eq!(
            counted_table("SELECT COUNT(*) FROM jobs;"),
            Some("jobs".into())
        );
        assert_eq!(
            counted_table("select count(1) from q.tasks"),
            Some("q.tasks".into())
        );
        assert_eq!(
            counted_table("SELECT COUNT(*) FROM jobs WHERE state = 'new'"),
            None
        );
        assert_eq!(
            counted_table("SELECT ceil(COUNT(*)::decimal / 4) FROM t"),
            None
        );
        let sj = scaled_job(&with_triggers(
            "  - type: postgresql\n    metadata: {connectionFromEnv: PG_CONN, query: 'SELECT COUNT(*) FROM tasks', targetQueryValue: '1'}\n  - type: rabbitmq\n    metadata: {queueName: q, hostFromEnv: H}\n",
        ));
        let mut o = Outcome::new(String::new());
        let (_, job) = map(&sj, &mut o).unwrap().unwrap();
        assert_eq!(
            job["trigger"]["queue"],
            json!({"postgres": {"url_env": "PG_CONN", "table": "tasks"}})
        );
        assert!(o
            .unmapped
            .iter()
            .any(|u| u.field == "spec.triggers[1] (rabbitmq)"));
    }
}
