//! Watching runs in flight, every re-planning tick:
//!
//! - **pending-pod backpressure**: a job with a pod Pending longer than its
//!   `limits.pending_timeout` gets no new launches until it schedules
//!   ([`crate::planner::Limits::backpressured`]);
//! - **runs that never start** fail after `limits.start_timeout` (sooner
//!   for image errors), see [`super::stuck`];
//! - **in-flight re-planning**: a running run of a sized job whose pace
//!   misses its deadline gets a higher parallelism, within
//!   `sizing.parallelism.max` and the job's `max_pods`
//!   ([`crate::planner::sizing::replan`] decides; Kubernetes lets a running
//!   Job's `parallelism` change);
//! - **load guards**: under a throttle ([`crate::guards`]) a running run of
//!   a sized job is re-planned *down* to the throttled parallelism (never
//!   below `sizing.parallelism.min`) and not raised above it. When its
//!   observed pace then misses the deadline it is flagged at risk with the
//!   guard named; with `when_at_risk: run` the deadline wins and the
//!   throttle no longer applies to it (it is raised as its pace needs),
//!   otherwise it stays throttled (a run in flight is never stopped by a
//!   guard). When the guard clears, a run is raised again only if it
//!   falls behind.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::clock::Clock;
use crate::config::sizing::AtRiskAction;
use crate::config::{Job, JobsByName};
use crate::executor::{Executor, Progress};
use crate::guards::Board;
use crate::lifecycle::RunState;
use crate::planner::guards::{throttled_max, throttled_run_misses};
use crate::planner::sizing;
use crate::store::{Run, Store, StoreError};

use super::stuck::Watchdog;

/// Looks at every running run once. Returns the jobs that are
/// backpressured (a pod Pending too long).
pub async fn observe<E: Executor>(
    store: &Store,
    executor: &E,
    jobs: &JobsByName,
    guards: &Board,
    clock: &Clock,
    watchdog: &mut Watchdog,
) -> Result<HashSet<String>, StoreError> {
    let pods: HashMap<String, i64> = store.running_pods().await?.into_iter().collect();
    let mut pressed = HashSet::new();
    let mut running = HashSet::new();
    for run in store.runs_in_state(RunState::Running).await? {
        running.insert(run.run_id.clone());
        let Some(job) = jobs.get(&run.job) else {
            continue;
        };
        let Some(progress) = executor.progress(&run.run_id).await else {
            continue;
        };
        if progress
            .pending_for
            .is_some_and(|p| p > job.limits.pending_timeout)
        {
            pressed.insert(job.name.clone());
        }
        if watchdog
            .check(executor, &job.limits, &run, progress.stall.as_ref())
            .await
        {
            continue;
        }
        let others = pods.get(&run.job).copied().unwrap_or(0) - i64::from(progress.parallelism);
        let throttle = match (&job.sizing, job.guards.is_empty()) {
            (Some(cfg), false) => guards
                .for_job(job)
                .throttle
                .map(|(f, why)| (throttled_max(cfg.min, cfg.max, f), why)),
            _ => None,
        };
        let now = clock.now();
        if let Some(t) = &throttle {
            if throttle_run(store, executor, job, &run, &progress, t, now).await? {
                continue;
            }
        }
        replan_run(
            store,
            executor,
            job,
            &run,
            &progress,
            Room {
                others,
                throttle: throttle.map(|t| t.0),
            },
            now,
        )
        .await?;
    }
    watchdog.tick_done(&running, &pressed);
    Ok(pressed)
}

/// How far a run may be raised besides its job's caps.
struct Room {
    /// The job's pods in its other runs (against `limits.max_pods`).
    others: i64,
    /// A load guard's throttle: at most this many pods.
    throttle: Option<u32>,
}

/// Raises the parallelism of one running run of a sized job when it falls
/// behind its deadline, within its job's caps and `room`.
async fn replan_run<E: Executor>(
    store: &Store,
    executor: &E,
    job: &Job,
    run: &Run,
    progress: &Progress,
    Room { others, throttle }: Room,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (Some(cfg), Some(sized), Some(deadline)) = (
        &job.sizing,
        &run.sizing,
        run.deadline_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis),
    ) else {
        return Ok(());
    };
    let max = match job.limits.max_pods {
        Some(mp) => cfg
            .max
            .min((i64::from(mp) - others).clamp(0, u32::MAX as i64) as u32),
        None => cfg.max,
    };
    // A throttle caps raising too, unless the deadline won (at risk, `run`).
    let max = match throttle {
        Some(cap) if !exempt(cfg, sized) => max.min(cap),
        _ => max,
    };
    let current = progress.parallelism;
    let (completed, total, elapsed) = (progress.completed, progress.total, progress.elapsed);
    let Some(p) = replan(completed, total, elapsed, current, max, deadline, now) else {
        return Ok(());
    };
    if !executor.set_parallelism(&run.run_id, p).await {
        return Ok(());
    }
    let why = format!(
        "raised from {current} to {p} pods after {:.0}s: {completed} of {total} done, behind the pace for {}",
        elapsed.as_secs_f64(),
        deadline.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    tracing::warn!(run = %run.run_id, job = %run.job, attempt = run.attempt, %why, "run behind its deadline; parallelism raised");
    let mut record = sized.clone();
    record.parallelism = i64::from(p);
    record.note = format!("{}; {why}", record.note);
    store.record_sizing(&run.run_id, &record).await
}

/// Whether a run is exempt from its guards' throttle: flagged at risk, with
/// `when_at_risk: run` (the deadline wins).
fn exempt(cfg: &crate::config::sizing::Sizing, sized: &crate::store::RunSizing) -> bool {
    sized.at_risk && cfg.when_at_risk == AtRiskAction::Run
}

/// A load guard throttles `run`'s job to `cap` pods (`why` names it):
/// lowers the run's parallelism to `cap` when above it, and flags the run
/// at risk (once) when its pace at `cap` misses its deadline. True when
/// it lowered the run (nothing more to re-plan this tick).
async fn throttle_run<E: Executor>(
    store: &Store,
    executor: &E,
    job: &Job,
    run: &Run,
    progress: &Progress,
    (cap, why): &(u32, String),
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let (Some(cfg), Some(sized)) = (&job.sizing, &run.sizing) else {
        return Ok(false);
    };
    if exempt(cfg, sized) {
        return Ok(false);
    }
    let current = progress.parallelism;
    let mut record = sized.clone();
    let mut lowered = false;
    if current > *cap {
        if !executor.set_parallelism(&run.run_id, *cap).await {
            return Ok(false);
        }
        let note = format!("lowered from {current} to {cap} pods by guard {why}");
        tracing::warn!(run = %run.run_id, job = %run.job, guard = %why, "run re-planned down under a load guard's throttle: {note}");
        record.parallelism = i64::from(*cap);
        record.note = format!("{}; {note}", record.note);
        lowered = true;
    }
    let deadline = run
        .deadline_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    if let Some(deadline) = deadline.filter(|_| !record.at_risk) {
        let model = super::sizing::model(store, job, cfg).await?;
        let left = (deadline - now).num_milliseconds() as f64 / 1000.0;
        let (completed, total) = (progress.completed, progress.total);
        if throttled_run_misses(&model, sized.work, completed, total, *cap, left) {
            let reason = format!(
                "guard {why} throttles it to {cap} pod(s): the {} of {total} indexes left cannot finish by {}",
                total - completed,
                deadline.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
            super::sizing::signal_in_flight_at_risk(
                &run.run_id,
                &run.job,
                &reason,
                cfg.at_risk_webhook.as_deref(),
            );
            record.at_risk = true;
            record.note = format!("{}; at risk: {reason}", record.note);
            if cfg.when_at_risk == AtRiskAction::Run {
                tracing::warn!(run = %run.run_id, job = %run.job, guard = %why,
                    "the deadline wins (when_at_risk: run): the throttle no longer applies to this run");
            }
        }
    }
    if lowered || record.at_risk != sized.at_risk {
        store.record_sizing(&run.run_id, &record).await?;
    }
    Ok(lowered)
}

/// In-flight re-planning for one running Indexed run: a higher parallelism
/// when its observed pace misses `deadline`, within `max`.
pub fn replan(
    completed: u32,
    total: u32,
    elapsed: Duration,
    current: u32,
    max: u32,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<u32> {
    let left = (deadline - now).num_milliseconds() as f64 / 1000.0;
    sizing::replan(completed, total, elapsed.as_secs_f64(), current, max, left)
}
