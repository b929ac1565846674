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
//!   Job's `parallelism` change).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::clock::Clock;
use crate::config::{Job, JobsByName};
use crate::executor::{Executor, Progress};
use crate::lifecycle::RunState;
use crate::planner::sizing;
use crate::store::{Run, Store, StoreError};

use super::stuck::Watchdog;

/// Looks at every running run once. Returns the jobs that are
/// backpressured (a pod Pending too long).
pub async fn observe<E: Executor>(
    store: &Store,
    executor: &E,
    jobs: &JobsByName,
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
        replan_run(store, executor, job, &run, &progress, others, clock.now()).await?;
    }
    watchdog.tick_done(&running, &pressed);
    Ok(pressed)
}

/// Raises the parallelism of one running run of a sized job when it falls
/// behind its deadline; `others` is the job's pods in its other runs.
async fn replan_run<E: Executor>(
    store: &Store,
    executor: &E,
    job: &Job,
    run: &Run,
    progress: &Progress,
    others: i64,
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
