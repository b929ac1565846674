//! Rendering: a job's JobSpec template plus one run → the JobSpec to launch.
//!
//! The Job's containers receive their input explicitly (DESIGN §4), in this
//! order (later entries win, as in Kubernetes): `env_from_host`, the
//! template's own env, then kedge's `KEDGE_*` variables. Payload bytes go
//! into an env var or a file, never into a command line or a field name.
//!
//! Kubernetes expands `$(VAR)` and `$$` in an env var's `value` (the kubelet
//! does, and so does the local executor). The values kedge adds — host env,
//! `KEDGE_*`, the payload — are data, not templates, so they are written with
//! every `$` doubled (`literal`) and reach the container byte for byte.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Container, EnvVar};

use super::Launch;
use crate::config::Job;
use crate::store::Run;

/// Payloads up to this size go in `KEDGE_PAYLOAD`; larger ones in a file.
pub const PAYLOAD_ENV_MAX: usize = 32 * 1024;

/// Every annotation kedge writes on a Job starts with this.
pub const ANNOTATION_PREFIX: &str = "kedge.dev/";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_JOB: &str = "kedge.dev/job";
pub const LABEL_RUN: &str = "kedge.dev/run";

/// Where a batch run's payload files are, in the pod (the ConfigMap mount
/// on Kubernetes; the local executor points it at the run's folder).
pub const PAYLOAD_DIR: &str = "/var/run/kedge/payload";

/// Renders a batch run of `job`: one completion index per message
/// (`completionMode: Indexed`, `completions` = the batch size), each index
/// with its own retry budget (`backoffLimitPerIndex` = the template's
/// `backoffLimit`, default 0), so one bad message fails only its index.
/// The container reads `$KEDGE_PAYLOAD_DIR/$JOB_COMPLETION_INDEX`.
pub fn render_batch(job: &Job, run: &Run, payloads: Vec<Option<String>>) -> Launch {
    let n = payloads.len().max(1) as i32;
    let mut batch_job = job.clone();
    let spec = &mut batch_job.spec;
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(n);
    spec.parallelism = Some(spec.parallelism.unwrap_or(n).clamp(1, n));
    spec.backoff_limit_per_index = Some(spec.backoff_limit.unwrap_or(0));
    spec.backoff_limit = None;
    let mut single = run.clone();
    single.payload = None;
    let mut launch = render(&batch_job, &single);
    if let Some(pod) = launch.spec.template.spec.as_mut() {
        for c in pod
            .containers
            .iter_mut()
            .chain(pod.init_containers.iter_mut().flatten())
        {
            let env = c.env.get_or_insert_with(Vec::new);
            env.push(self::env("KEDGE_PAYLOAD_DIR", PAYLOAD_DIR));
            env.push(self::env("KEDGE_BATCH_SIZE", &n.to_string()));
        }
    }
    launch.batch = payloads;
    launch
}

/// Renders `run` of `job`.
pub fn render(job: &Job, run: &Run) -> Launch {
    let mut spec = job.spec.clone();
    let deadline = run
        .deadline_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    let shards = spec.completions.unwrap_or(1).max(1);
    let (payload_env, payload_file) = match &run.payload {
        Some(p) if p.len() <= PAYLOAD_ENV_MAX => (Some(p.clone()), None),
        Some(p) => (None, Some(p.clone())),
        None => (None, None),
    };

    let mut kedge_env = vec![
        env("KEDGE_JOB", &job.name),
        env("KEDGE_RUN_ID", &run.run_id),
        env("KEDGE_ATTEMPT", &run.attempt.to_string()),
        env("KEDGE_SHARDS", &shards.to_string()),
        env("KEDGE_TRIGGER", run.trigger.as_str()),
        env("KEDGE_MESSAGE_ID", &run.message_id),
    ];
    if let Some(d) = deadline {
        kedge_env.push(env(
            "KEDGE_DEADLINE",
            &d.to_rfc3339_opts(SecondsFormat::Secs, true),
        ));
    }
    if let Some(p) = &payload_env {
        kedge_env.push(env("KEDGE_PAYLOAD", p));
    }

    let labels: BTreeMap<String, String> = [
        (LABEL_MANAGED_BY, "kedge"),
        (LABEL_JOB, job.name.as_str()),
        (LABEL_RUN, run.run_id.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let meta = spec.template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(labels);

    if let Some(pod) = spec.template.spec.as_mut() {
        let add = |c: &mut Container| {
            let mut all: Vec<EnvVar> = job.host_env.iter().map(|(k, v)| env(k, v)).collect();
            all.extend(c.env.take().unwrap_or_default());
            all.extend(kedge_env.iter().cloned());
            c.env = Some(all);
        };
        pod.containers.iter_mut().for_each(add);
        pod.init_containers.iter_mut().flatten().for_each(add);
    }

    let ms = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let mut annotations: BTreeMap<String, String> = [
        ("trigger", run.trigger.as_str().to_string()),
        ("message-id", run.message_id.clone()),
        ("scheduled-at", ms(run.scheduled_ms)),
        ("attempt", run.attempt.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v))
    .collect();
    if let Some(d) = run.deadline_ms {
        annotations.insert(format!("{ANNOTATION_PREFIX}deadline"), ms(d));
    }

    Launch {
        annotations,
        run_id: run.run_id.clone(),
        job: job.name.clone(),
        attempt: run.attempt,
        spec,
        payload_file,
        batch: Vec::new(),
        deadline,
    }
}

/// An env var whose value the container sees exactly as `value`.
fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(literal(value)),
        value_from: None,
    }
}

/// `value` escaped from Kubernetes' `$(VAR)` expansion: `$$` expands to `$`
/// and a `$` before anything else stays, so doubling every `$` round-trips.
pub(crate) fn literal(value: &str) -> String {
    value.replace('$', "$$")
}
