//! Sizing a run at launch: the I/O around the pure [`crate::planner::sizing`] — measure the work
//! (probes, with the configured fallback), read the job's history from the
//! store, ask the planner, and apply the decision to the JobSpec with the
//! annotations that explain it. Also raises the at-risk signal. A load
//! guard's throttle caps the size ([`Guarded`]); when that makes the run
//! miss its window the guard is named and `when_at_risk` decides.
//!
//! A decision is made once per run, at launch (`size_claimed`); in-flight
//! re-planning ([`super::replan`]) may later raise the run's parallelism.
//! `kedge plan` and `kedge render` decide through [`preview`], which records nothing.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::clock::Clock;
use crate::config::sizing::{AtRiskAction, ProbeFallback, Sizing as SizingConfig};
use crate::config::Job;
use crate::executor::render::ANNOTATION_PREFIX;
use crate::executor::{Outcome, OutcomeKind};
use crate::finalizer;
use crate::planner::sizing::{self, RateModel, Sample};
use crate::probes::{self, ProbeContext};
use crate::store::{Run, RunSizing, Store, StoreError};

/// History rows the rate model reads.
const HISTORY: i64 = 50;

/// A sizing decision and everything that explains it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub job: String,
    pub work: f64,
    pub unit: String,
    pub rate_per_pod: f64,
    pub overhead_s: f64,
    /// `initial` or `fitted from N runs`.
    pub model: String,
    pub parallelism: u32,
    pub completions: u32,
    pub deadline: String,
    pub projected_finish: String,
    pub margin: f64,
    pub at_risk: bool,
    pub reason: String,
    /// Set when the probe failed and a fallback was used.
    pub probe_note: Option<String>,
    /// Set when a load guard shaped the decision (throttled it, held the
    /// run, or was overridden by `when_at_risk: run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guards: Option<String>,
    #[serde(skip)]
    pub deadline_at: DateTime<Utc>,
    #[serde(skip)]
    pub projected_at: DateTime<Utc>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The work of a run as measured, or why it is not known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// `None`: unknown (the probe failed and there was nothing to fall back
    /// to, or the fallback is maximum parallelism).
    pub work: Option<f64>,
    /// Set when the probe failed and a fallback was used.
    pub note: Option<String>,
}

impl Measured {
    /// Work given by hand (`kedge plan --work`).
    pub fn given(work: f64) -> Measured {
        Measured {
            work: Some(work),
            note: None,
        }
    }
}

/// Measures the work of `job` now, falling back as configured. `Err` only
/// for store errors.
pub async fn measure_work(
    store: &Store,
    job: &Job,
    cfg: &SizingConfig,
) -> Result<Measured, StoreError> {
    let ctx = ProbeContext {
        store,
        job: &job.name,
    };
    match probes::measure(&cfg.work, &ctx, cfg.probe_timeout).await {
        Ok(w) => Ok(Measured::given(w)),
        Err(e) => {
            let err = crate::error_chain(&e);
            let (work, note) = match cfg.on_probe_failure {
                ProbeFallback::LastKnown => match store.last_work(&job.name).await? {
                    Some(w) => (
                        Some(w),
                        format!("work probe failed ({err}); using the last known work {w}"),
                    ),
                    None => (
                        None,
                        format!(
                            "work probe failed ({err}); no work known yet, so maximum parallelism"
                        ),
                    ),
                },
                ProbeFallback::MaxParallelism => (
                    None,
                    format!("work probe failed ({err}); maximum parallelism"),
                ),
            };
            tracing::warn!(job = %job.name, probe = cfg.work.kind(), note = %note, "work probe failed");
            Ok(Measured {
                work,
                note: Some(note),
            })
        }
    }
}

/// The rate model of `job` from its history in the store.
pub async fn model(store: &Store, job: &Job, cfg: &SizingConfig) -> Result<RateModel, StoreError> {
    let samples: Vec<Sample> = store
        .sizing_history(&job.name, HISTORY)
        .await?
        .into_iter()
        .map(|h| Sample {
            work: h.work,
            parallelism: h.parallelism.clamp(1, u32::MAX as i64) as u32,
            duration_s: h.duration_ms as f64 / 1000.0,
        })
        .collect();
    Ok(sizing::fit(
        &samples,
        cfg.initial_rate_per_pod,
        cfg.initial_overhead.as_secs_f64(),
    ))
}

/// Decides the size of a run of `job` at `now` with `deadline`, using at
/// most `max_pods` pods. `work` is `None` when it could not be measured:
/// the run gets the maximum.
pub fn decide(
    job: &Job,
    cfg: &SizingConfig,
    model: RateModel,
    measured: Measured,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    max_pods: u32,
) -> Decision {
    let Measured {
        work,
        note: probe_note,
    } = measured;
    let max = cfg.max.min(max_pods).max(1);
    let mut s = sizing::size(&sizing::SizingInput {
        work: work.unwrap_or(0.0),
        now,
        deadline,
        margin: cfg.margin,
        min: cfg.min,
        max,
        model,
    });
    if work.is_none() {
        s.parallelism = max;
        s.reason = format!("{max} pod(s): work unknown, so the maximum");
    }
    let completions = cfg.shards.unwrap_or(s.parallelism).max(s.parallelism);
    Decision {
        job: job.name.clone(),
        work: work.unwrap_or(f64::NAN),
        unit: cfg.unit.clone(),
        rate_per_pod: model.rate_per_pod_hour,
        overhead_s: model.overhead_s,
        model: match model.source {
            sizing::ModelSource::Initial => "initial".into(),
            sizing::ModelSource::Fitted(n) => format!("fitted from {n} runs"),
        },
        parallelism: s.parallelism,
        completions,
        deadline: rfc3339(deadline),
        projected_finish: rfc3339(s.projected_finish),
        margin: cfg.margin,
        at_risk: s.at_risk,
        reason: s.reason,
        probe_note,
        guards: None,
        deadline_at: deadline,
        projected_at: s.projected_finish,
    }
}

/// `job` with its JobSpec sized by `d`: Indexed, `parallelism`,
/// `completions`, `activeDeadlineSeconds` = seconds to the deadline, and
/// annotations recording the decision.
pub fn apply(job: &Job, d: &Decision, now: DateTime<Utc>) -> Job {
    let mut job = job.clone();
    let spec = &mut job.spec;
    spec.parallelism = Some(d.parallelism as i32);
    spec.completions = Some(d.completions as i32);
    spec.completion_mode = Some("Indexed".into());
    let left = (d.deadline_at - now).num_seconds().max(1);
    spec.active_deadline_seconds = Some(left);
    let meta = spec.template.metadata.get_or_insert_with(Default::default);
    let ann = meta.annotations.get_or_insert_with(Default::default);
    for (k, v) in annotations(d) {
        ann.insert(k, v);
    }
    // The containers learn the measured work (each shard takes its part of
    // it by JOB_COMPLETION_INDEX of KEDGE_SHARDS).
    if d.work.is_finite() {
        job.host_env.push(("KEDGE_WORK".into(), d.work.to_string()));
    }
    job
}

/// The annotations that explain a decision.
pub fn annotations(d: &Decision) -> Vec<(String, String)> {
    let a = |k: &str, v: String| (format!("{ANNOTATION_PREFIX}{k}"), v);
    let guards = d.guards.iter().map(|g| a("guards", g.clone()));
    let mut out = vec![
        a("work", format!("{} {}", d.work, d.unit)),
        a("rate-per-pod-hour", format!("{:.3}", d.rate_per_pod)),
        a("overhead-seconds", format!("{:.1}", d.overhead_s)),
        a("parallelism", d.parallelism.to_string()),
        a("deadline", d.deadline.clone()),
        a("projected-finish", d.projected_finish.clone()),
        a("margin", d.margin.to_string()),
        a("at-risk", d.at_risk.to_string()),
        a("sizing-reason", d.reason.clone()),
    ];
    out.extend(guards);
    out
}

/// What the store keeps of a decision.
pub fn record(d: &Decision) -> RunSizing {
    RunSizing {
        work: if d.work.is_finite() { d.work } else { -1.0 },
        parallelism: i64::from(d.parallelism),
        completions: i64::from(d.completions),
        projected_finish_ms: d.projected_at.timestamp_millis(),
        at_risk: d.at_risk,
        note: [Some(&d.reason), d.probe_note.as_ref(), d.guards.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Raises the at-risk signal for `run_id`: a warning in the log, the
/// `kedge_runs_at_risk_total` counter, and the webhook (POST of the decision as JSON,
/// in the background, 10 s timeout; failures are logged).
pub fn signal_at_risk(run: &Run, d: &Decision, webhook: Option<&str>) {
    let run_id = &run.run_id;
    crate::metrics::run_at_risk();
    tracing::warn!(run = %run_id, job = %d.job, attempt = run.attempt, deadline = %d.deadline,
        projected_finish = %d.projected_finish, parallelism = d.parallelism,
        reason = %d.reason, "run at risk: it cannot finish before its deadline");
    post_at_risk(
        webhook,
        serde_json::json!({
            "event": "at_risk",
            "run_id": run_id,
            "decision": d,
        }),
    );
}

/// The at-risk signal for a run in flight that a load guard throttles
/// past its deadline: as [`signal_at_risk`], the webhook's body naming
/// the run, job and reason (there is no new sizing decision).
pub fn signal_in_flight_at_risk(run_id: &str, job: &str, reason: &str, webhook: Option<&str>) {
    crate::metrics::run_at_risk();
    tracing::warn!(run = %run_id, job = %job, %reason, "run at risk: it cannot finish before its deadline");
    post_at_risk(
        webhook,
        serde_json::json!({
            "event": "at_risk",
            "run_id": run_id,
            "job": job,
            "reason": reason,
        }),
    );
}

/// POSTs an at-risk event to `webhook`, if set, in the background.
fn post_at_risk(webhook: Option<&str>, body: serde_json::Value) {
    let Some(url) = webhook else { return };
    let url = url.to_string();
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client");
                return;
            }
        };
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::error!(status = %r.status(), "at-risk webhook refused the event"),
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "at-risk webhook failed"),
        }
    });
}

/// What a job's load guards impose on a run being sized.
#[derive(Debug, Clone, Default)]
pub struct Guarded {
    /// A throttle: at most this many pods, and the guard, described.
    pub throttle: Option<(u32, String)>,
    /// The run waited, held by this guard (described), until too late for
    /// its window: it was flagged at risk then (and let through by
    /// `when_at_risk: run | skip | fail`, or launched once the guard
    /// cleared); the at-risk signal is not raised again.
    pub held: Option<String>,
}

/// Sizes a claimed run of a job with `sizing`: measures, decides (under
/// the job's load guards, `guarded`), records the decision on the run,
/// raises the at-risk signal. Returns the job with its JobSpec sized, or
/// `None` when the run was settled instead (at risk with `when_at_risk:
/// skip | fail`).
///
/// Under a throttle the run gets at most the throttled pods. When that
/// makes it miss its window, it is at risk with the guard named, and
/// `when_at_risk` decides: `run` sizes it as if unthrottled (the deadline
/// wins), `wait` keeps the throttle (the guard wins), `skip`/`fail`
/// settle it.
pub(super) async fn size_claimed(
    store: &Store,
    clock: &Clock,
    job: &Job,
    cfg: &SizingConfig,
    run: &Run,
    max_pods: u32,
    guarded: &Guarded,
) -> Result<Option<Job>, StoreError> {
    let now = clock.now();
    let deadline = run
        .deadline_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .or_else(|| job.deadline_after(now))
        .unwrap_or(now);
    let measured = measure_work(store, job, cfg).await?;
    let model = model(store, job, cfg).await?;
    let full = decide(job, cfg, model, measured.clone(), now, deadline, max_pods);
    let mut d = match &guarded.throttle {
        None => full.clone(),
        Some((cap, why)) => {
            let mut t = decide(job, cfg, model, measured, now, deadline, max_pods.min(*cap));
            t.guards = Some(format!("throttled to at most {cap} pod(s) by guard {why}"));
            if t.at_risk {
                t.reason = format!("guard {why} throttles it to {cap} pod(s); {}", t.reason);
                if crate::planner::guards::conflict(cfg.when_at_risk)
                    == crate::planner::guards::Conflict::RunAnyway
                {
                    let mut f = full.clone();
                    f.at_risk = true;
                    f.reason = format!(
                        "{}; when_at_risk: run, so the deadline wins: {}",
                        t.reason, full.reason
                    );
                    f.guards = Some(format!("guard {why} overridden (when_at_risk: run)"));
                    t = f;
                }
            }
            t
        }
    };
    if let Some(why) = &guarded.held {
        d.at_risk = true;
        d.reason = format!(
            "held by guard {why} until too late for its window; {}",
            d.reason
        );
        d.guards = Some(format!("held by guard {why}; launched at risk"));
    }
    store.record_sizing(&run.run_id, &record(&d)).await?;
    tracing::info!(run = %run.run_id, job = %job.name, attempt = run.attempt, parallelism = d.parallelism,
        completions = d.completions, deadline = %d.deadline, projected_finish = %d.projected_finish,
        reason = %d.reason, guards = d.guards.as_deref().unwrap_or(""), "run sized");
    if !d.at_risk {
        return Ok(Some(apply(job, &d, now)));
    }
    if guarded.held.is_none() {
        signal_at_risk(run, &d, cfg.at_risk_webhook.as_deref());
    }
    let kind = match cfg.when_at_risk {
        AtRiskAction::Run | AtRiskAction::Wait => return Ok(Some(apply(job, &d, now))),
        AtRiskAction::Skip => OutcomeKind::Skipped {
            reason: format!("skipped: at risk: {}", d.reason),
        },
        AtRiskAction::Fail => OutcomeKind::Failed {
            reason: "AtRisk".into(),
            message: d.reason.clone(),
        },
    };
    let outcome = Outcome {
        completed_indexes: Vec::new(),
        run_id: run.run_id.clone(),
        kind,
    };
    finalizer::finalize(store, clock, Some(job), &outcome).await?;
    Ok(None)
}

/// The decision for a run of `job` at `at` with `deadline`, made as at
/// launch but recorded nowhere: the work measured by the job's probe (or
/// `work`, when given), the rate model from the job's history, at most the
/// job's `limits.max_pods`. For `kedge plan --at` and `kedge render`.
pub async fn preview(
    store: &Store,
    job: &Job,
    cfg: &SizingConfig,
    at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    work: Option<f64>,
) -> Result<Decision, StoreError> {
    let measured = match work {
        Some(w) => Measured::given(w),
        None => measure_work(store, job, cfg).await?,
    };
    let model = model(store, job, cfg).await?;
    let max_pods = job.limits.max_pods.unwrap_or(u32::MAX);
    Ok(decide(job, cfg, model, measured, at, deadline, max_pods))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_that_shaped_a_decision_is_in_its_annotations_and_its_record() {
        let job = crate::testing::job(
            "name: backup\ntrigger:\n  queue:\n    builtin: {}\nwindow:\n  within: 1h\n\
             sizing:\n  work: { static: 10 }\n  initial_rate_per_pod: 10\n  parallelism: { min: 1, max: 4 }\n\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: m, command: [\"true\"] }]\n",
        );
        let cfg = job.sizing.clone().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let model = sizing::fit(&[], cfg.initial_rate_per_pod, 0.0);
        let mut d = decide(
            &job,
            &cfg,
            model,
            Measured::given(10.0),
            now,
            now + chrono::TimeDelta::hours(1),
            4,
        );
        let key = format!("{ANNOTATION_PREFIX}guards");
        assert!(!annotations(&d).iter().any(|(k, _)| *k == key));
        assert!(!serde_json::to_value(&d)
            .unwrap()
            .as_object()
            .unwrap()
            .contains_key("guards"));
        d.guards = Some("throttled to at most 2 pod(s) by guard db 75 > 70".into());
        let ann = annotations(&d);
        assert!(
            ann.contains(&(
                key,
                "throttled to at most 2 pod(s) by guard db 75 > 70".into()
            )),
            "{ann:?}"
        );
        assert!(record(&d)
            .note
            .ends_with("; throttled to at most 2 pod(s) by guard db 75 > 70"));
    }
}
