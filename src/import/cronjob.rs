//! Kubernetes `batch/v1` CronJob → a kedge cron job.
//!
//! | CronJob | kedge |
//! |---|---|
//! | `metadata.name` | `name` (made a valid job name) |
//! | `spec.schedule` (`CRON_TZ=`/`TZ=` prefix too) | `trigger.cron` |
//! | `spec.timeZone` | `trigger.timezone` |
//! | `spec.concurrencyPolicy` Allow / Forbid / Replace | `trigger.overlap` allow / forbid / replace |
//! | `spec.startingDeadlineSeconds` | `trigger.starting_deadline` |
//! | (a missed schedule runs once, the latest) | `trigger.catchup: latest` |
//! | `spec.suspend: true` | reported: `kedge pause NAME` after loading |
//! | `spec.*JobsHistoryLimit` | reported: daemon-wide in kedge |
//! | `spec.jobTemplate.spec` | `template` |
//! | (no run retries in a CronJob) | `retry.max_attempts: 1` |

use k8s_openapi::api::batch::v1::CronJob;
use serde_json::{json, Value};

use super::{entrypoint_note, history_limits, job_name, object, Outcome};
use crate::triggers::cron::Schedule;

/// Maps one CronJob; `Ok(None)` never happens for a CronJob (every one
/// has what a kedge cron job needs), errors are `(field path, message)`.
pub(crate) fn map(
    cj: &CronJob,
    o: &mut Outcome,
) -> Result<Option<(String, Value)>, (String, String)> {
    let raw_name = cj.metadata.name.clone().unwrap_or_default();
    let name = job_name(&raw_name, "metadata.name", o)?;
    if let Some(ns) = &cj.metadata.namespace {
        o.unmapped(
            "metadata.namespace",
            format!("{ns}: kedge creates Jobs in the Kubernetes executor's namespace (executor.kubernetes.namespace in the daemon config)"),
        );
    }
    let Some(spec) = &cj.spec else {
        return Err(("spec".into(), "is required: a CronJob needs a spec".into()));
    };

    let (cron, prefix_zone) = split_zone_prefix(&spec.schedule);
    if cron.is_empty() {
        return Err(("spec.schedule".into(), "is required".into()));
    }
    let cron = question_marks(&cron, o);
    if let Err(e) = Schedule::parse(&cron) {
        return Err((
            "spec.schedule".into(),
            format!("{cron:?}: kedge's cron (Debian crontab(5)) cannot read it: {e}"),
        ));
    }
    o.mapped("spec.schedule", format!("trigger.cron: {cron:?}"));
    let timezone = match (&spec.time_zone, prefix_zone) {
        (Some(tz), Some(p)) if *tz != p => {
            o.unmapped(
                "spec.schedule",
                format!("its zone prefix {p} differs from spec.timeZone {tz}; kedge uses spec.timeZone, as Kubernetes rejects both together"),
            );
            o.mapped("spec.timeZone", format!("trigger.timezone: {tz}"));
            tz.clone()
        }
        (Some(tz), _) => {
            o.mapped("spec.timeZone", format!("trigger.timezone: {tz}"));
            tz.clone()
        }
        (None, Some(p)) => {
            o.mapped(
                "spec.schedule's zone prefix",
                format!("trigger.timezone: {p}"),
            );
            p
        }
        (None, None) => {
            o.unmapped(
                "spec.timeZone",
                "not set: Kubernetes reads the schedule in kube-controller-manager's zone; kedge reads it in UTC (trigger.timezone: UTC written, change it if the controller ran elsewhere)",
            );
            "UTC".to_string()
        }
    };

    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    let overlap = match policy {
        "Allow" => "allow",
        "Forbid" => "forbid",
        "Replace" => "replace",
        other => {
            return Err((
                "spec.concurrencyPolicy".into(),
                format!("{other:?} is not one of Allow, Forbid, Replace"),
            ))
        }
    };
    let from = if spec.concurrency_policy.is_some() {
        "spec.concurrencyPolicy"
    } else {
        "spec.concurrencyPolicy (default Allow)"
    };
    o.mapped(from, format!("trigger.overlap: {overlap}"));
    o.mapped(
        "missed schedules (Kubernetes starts the latest)",
        "trigger.catchup: latest",
    );

    let starting_deadline = match spec.starting_deadline_seconds {
        Some(s) if s < 0 => {
            return Err((
                "spec.startingDeadlineSeconds".into(),
                format!("{s} must be 0 or more"),
            ))
        }
        Some(s) => {
            o.mapped(
                "spec.startingDeadlineSeconds",
                format!("trigger.starting_deadline: {s}s"),
            );
            json!(format!("{s}s"))
        }
        None => Value::Null,
    };

    if spec.suspend == Some(true) {
        o.unmapped(
            "spec.suspend",
            "true: a job file has no paused state; kedge keeps it in the store (audited)",
        );
        o.todo(format!(
            "the CronJob was suspended: run `kedge pause {name} --reason \"suspended CronJob, imported\"` once the file is loaded, before its first fire"
        ));
    }
    history_limits(
        o,
        "spec",
        spec.successful_jobs_history_limit,
        spec.failed_jobs_history_limit,
    );

    let template = &spec.job_template;
    if let Some(meta) = &template.metadata {
        if meta.labels.as_ref().is_some_and(|l| !l.is_empty())
            || meta.annotations.as_ref().is_some_and(|a| !a.is_empty())
        {
            o.unmapped(
                "spec.jobTemplate.metadata",
                "labels and annotations of the Job: kedge sets its own (kedge.dev/job, kedge.dev/run); put your labels on the pod template (template.template.metadata)",
            );
        }
    }
    let Some(job_spec) = &template.spec else {
        return Err((
            "spec.jobTemplate.spec".into(),
            "is required: the Job's spec".into(),
        ));
    };
    o.mapped("spec.jobTemplate.spec", "template");
    o.mapped(
        "(a failed Job is not run again by a CronJob)",
        "retry.max_attempts: 1 (backoffLimit still retries pods inside the Job)",
    );
    entrypoint_note(job_spec, "spec.jobTemplate.spec", o);
    let template = serde_json::to_value(job_spec)
        .map_err(|e| ("spec.jobTemplate.spec".to_string(), e.to_string()))?;

    let trigger = object([
        ("cron", json!(cron)),
        ("timezone", json!(timezone)),
        ("overlap", json!(overlap)),
        ("catchup", json!("latest")),
        ("starting_deadline", starting_deadline),
    ]);
    let job = object([
        ("name", json!(name)),
        (
            "description",
            json!(format!("Imported from the Kubernetes CronJob {raw_name}.")),
        ),
        ("trigger", trigger),
        ("retry", json!({ "max_attempts": 1 })),
        ("template", template),
    ]);
    Ok(Some((name, job)))
}

/// Kubernetes reads `?` in the day fields as `*` (robfig/cron); Debian
/// cron has no `?`.
fn question_marks(cron: &str, o: &mut Outcome) -> String {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if !fields.contains(&"?") {
        return cron.to_string();
    }
    o.mapped("spec.schedule's `?`", "`*` (what Kubernetes reads it as)");
    fields
        .iter()
        .map(|f| if *f == "?" { "*" } else { f })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits a `CRON_TZ=Zone ` or `TZ=Zone ` prefix off a schedule.
fn split_zone_prefix(schedule: &str) -> (String, Option<String>) {
    let s = schedule.trim();
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = s.strip_prefix(prefix) {
            if let Some((zone, cron)) = rest.split_once(char::is_whitespace) {
                return (cron.trim().to_string(), Some(zone.to_string()));
            }
        }
    }
    (s.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cronjob(yaml: &str) -> CronJob {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const HELLO: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: "* * * * *"
  timeZone: Etc/UTC
  concurrencyPolicy: Replace
  startingDeadlineSeconds: 200
  successfulJobsHistoryLimit: 3
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: hello
            image: busybox:1.28
            command: ["/bin/sh", "-c", "date; echo Hello from the Kubernetes cluster"]
          restartPolicy: OnFailure
"#;

    #[test]
    fn maps_schedule_zone_policy_deadline_and_template() {
        let mut o = Outcome::new(String::new());
        let (name, job) = map(&cronjob(HELLO), &mut o).unwrap().unwrap();
        assert_eq!(name, "hello");
        assert_eq!(
            job["trigger"],
            json!({"cron": "* * * * *", "timezone": "Etc/UTC", "overlap": "replace",
                   "catchup": "latest", "starting_deadline": "200s"})
        );
        assert_eq!(
            job["template"]["template"]["spec"]["restartPolicy"],
            json!("OnFailure")
        );
        assert_eq!(job["retry"], json!({"max_attempts": 1}));
        assert!(o.todo.iter().any(|t| t.contains("kedge pause hello")));
        assert!(o
            .unmapped
            .iter()
            .any(|u| u.field == "spec.successfulJobsHistoryLimit"
                && u.why
                    .contains("executor.kubernetes.successful_jobs_history_limit")));
    }

    #[test]
    fn every_concurrency_policy_and_the_default() {
        for (policy, overlap) in [
            ("Allow", "allow"),
            ("Forbid", "forbid"),
            ("Replace", "replace"),
        ] {
            let text = HELLO.replace("Replace", policy);
            let mut o = Outcome::new(String::new());
            let (_, job) = map(&cronjob(&text), &mut o).unwrap().unwrap();
            assert_eq!(job["trigger"]["overlap"], json!(overlap));
        }
        let text = HELLO.replace("  concurrencyPolicy: Replace\n", "");
        let mut o = Outcome::new(String::new());
        let (_, job) = map(&cronjob(&text), &mut o).unwrap().unwrap();
        assert_eq!(job["trigger"]["overlap"], json!("allow"));
        let text = HELLO.replace("Replace", "Sometimes");
        let e = map(&cronjob(&text), &mut Outcome::new(String::new())).unwrap_err();
        assert_eq!(e.0, "spec.concurrencyPolicy");
    }

    #[test]
    fn zone_prefixes_become_the_timezone() {
        assert_eq!(
            split_zone_prefix("CRON_TZ=Europe/Berlin 0 1 * * *"),
            ("0 1 * * *".to_string(), Some("Europe/Berlin".to_string()))
        );
        assert_eq!(
            split_zone_prefix("TZ=Asia/Tokyo @daily"),
            ("@daily".to_string(), Some("Asia/Tokyo".to_string()))
        );
        let text = HELLO
            .replace("\"* * * * *\"", "\"CRON_TZ=Europe/Berlin 5 4 * * *\"")
            .replace("  timeZone: Etc/UTC\n", "");
        let mut o = Outcome::new(String::new());
        let (_, job) = map(&cronjob(&text), &mut o).unwrap().unwrap();
        assert_eq!(job["trigger"]["cron"], json!("5 4 * * *"));
        assert_eq!(job["trigger"]["timezone"], json!("Europe/Berlin"));
    }

    #[test]
    fn question_marks_become_stars_and_unreadable_schedules_are_refused() {
        let text = HELLO.replace("\"* * * * *\"", "\"0 0 ? * MON\"");
        let mut o = Outcome::new(String::new());
        let (_, job) = map(&cronjob(&text), &mut o).unwrap().unwrap();
        assert_eq!(job["trigger"]["cron"], json!("0 0 * * MON"));
        let text = HELLO.replace("\"* * * * *\"", "\"61 * * * *\"");
        let e = map(&cronjob(&text), &mut Outcome::new(String::new())).unwrap_err();
        assert_eq!(e.0, "spec.schedule");
        assert!(e.1.contains("cannot read it"), "{}", e.1);
    }

    #[test]
    fn no_zone_means_utc_and_says_so() {
        let text = HELLO.replace("  timeZone: Etc/UTC\n", "");
        let mut o = Outcome::new(String::new());
        let (_, job) = map(&cronjob(&text), &mut o).unwrap().unwrap();
        assert_eq!(job["trigger"]["timezone"], json!("UTC"));
        assert!(o.unmapped.iter().any(|u| u.field == "spec.timeZone"));
    }
}
