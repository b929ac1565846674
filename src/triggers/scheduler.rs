//! The cron scheduler: one timer loop for every cron job, which turns fires
//! into work items, applying the overlap and catch-up policies.
//!
//! # Expected flow
//!
//! Each job's cursor starts at its last recorded fire (or now, for a job
//! that never fired). The loop sleeps until the earliest next fire of any
//! job, then takes every job whose next fire has come, decides about each
//! of their fires between cursor and now ([`plan_fires`]: on time → run;
//! missed while kedge was down → the catch-up policy and
//! `starting_deadline`; then [`overlap_action`]) and records all of them in
//! one store transaction — so a thousand schedules firing at the same
//! instant cost one commit, not a thousand — wakes the dispatcher once, and
//! sleeps again.
//!
//! # Guarantees
//!
//! Each fire is recorded in the store exactly once, with its outcome
//! (`launched`, `skipped`, `missed`, `replaced`), and a launched fire's work
//! item is written in the same transaction; so after a crash the loop
//! resumes after the last recorded fire, repeating none and dropping none
//! silently. A store error leaves the fires unrecorded and they are retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::rules::{self, Fire, Planned};
use super::TriggerContext;
use crate::config::job::{Catchup, CronTrigger, Overlap};
use crate::config::Job;
use crate::intake;
use crate::lifecycle::{FireOutcome, OperatorState};
use crate::store::{skipped_detail, FireRecord, StoreError};

/// A fire this close to "now" is on time, not missed (a timer can wake late
/// on a loaded machine).
pub const ON_TIME: Duration = Duration::from_secs(5);
/// At most this many fires are decided in one pass.
const MAX_FIRES_PER_PASS: usize = 10_000;

/// What to do with one fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireDecision {
    Run,
    Missed(String),
}

/// Decides about `fires` (ascending, all ≤ `now`): on-time fires run; late
/// ones follow `catchup`, and none older than `starting_deadline` runs.
pub fn plan_fires(
    fires: &[DateTime<Utc>],
    now: DateTime<Utc>,
    catchup: Catchup,
    starting_deadline: Option<Duration>,
) -> Vec<(DateTime<Utc>, FireDecision)> {
    let age = |f: &DateTime<Utc>| (now - *f).to_std().unwrap_or_default();
    let on_time = |f: &DateTime<Utc>| age(f) <= ON_TIME;
    let eligible = |f: &DateTime<Utc>| starting_deadline.is_none_or(|d| age(f) <= d);
    let any_on_time = fires.iter().any(on_time);
    let latest_late = fires
        .iter()
        .rev()
        .find(|f| !on_time(f) && eligible(f))
        .copied();
    fires
        .iter()
        .map(|f| {
            let decision = if on_time(f) {
                FireDecision::Run
            } else if !eligible(f) {
                FireDecision::Missed("older than starting_deadline".into())
            } else {
                match catchup {
                    Catchup::None => FireDecision::Missed("catchup: none".into()),
                    Catchup::All => FireDecision::Run,
                    Catchup::Latest if !any_on_time && Some(*f) == latest_late => FireDecision::Run,
                    Catchup::Latest => {
                        FireDecision::Missed("catchup: latest ran a newer fire".into())
                    }
                }
            };
            (*f, decision)
        })
        .collect()
}

/// What the overlap policy says about a fire, given the job's active runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlapAction {
    Launch,
    /// Stop the active runs, then launch.
    Replace,
    Skip(String),
}

/// Applies `policy` with `running` and `pending` runs of the job active.
pub fn overlap_action(policy: Overlap, running: i64, pending: i64) -> OverlapAction {
    match policy {
        Overlap::Allow => OverlapAction::Launch,
        Overlap::Forbid if running + pending > 0 => {
            OverlapAction::Skip("overlap: forbid, an earlier run is still active".into())
        }
        Overlap::Forbid => OverlapAction::Launch,
        Overlap::Replace if running + pending > 0 => OverlapAction::Replace,
        Overlap::Replace => OverlapAction::Launch,
        Overlap::BufferOne if pending > 0 => {
            OverlapAction::Skip("overlap: buffer_one, a fire is already waiting".into())
        }
        Overlap::BufferOne => OverlapAction::Launch,
    }
}

/// One cron job and where its schedule stands.
struct Timer {
    job: Arc<Job>,
    cron: CronTrigger,
    /// The last fire decided about (or the start, for a job never fired).
    cursor: DateTime<Utc>,
}

/// What the scheduler says after each pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Passes made so far.
    pub passes: u64,
    /// When this pass looked (the clock's reading).
    pub at: Option<DateTime<Utc>>,
    /// Fires this pass recorded (launched, skipped or missed).
    pub fires: usize,
    /// When the scheduler looks again (`None`: no schedule has a further fire).
    pub next: Option<DateTime<Utc>>,
}

/// Fire time → the timers due then. Jobs whose schedule has ended are not
/// in it.
type Queue = BTreeMap<DateTime<Utc>, Vec<usize>>;

/// Runs the timer loop of every cron job in `jobs` until shutdown.
pub async fn run(jobs: Vec<Arc<Job>>, ctx: TriggerContext) {
    run_reporting(jobs, ctx, watch::Sender::new(Pass::default())).await
}

/// [`run`], reporting each finished pass on `passes` (tests wait on it to
/// know the scheduler looked, instead of waiting a fixed time).
pub async fn run_reporting(jobs: Vec<Arc<Job>>, ctx: TriggerContext, passes: watch::Sender<Pass>) {
    let Some(mut timers) = load_timers(jobs, &ctx).await else {
        return;
    };
    let mut queue = Queue::new();
    for (i, t) in timers.iter().enumerate() {
        schedule(&mut queue, i, t);
    }
    loop {
        let at = ctx.clock.now();
        let Some(fires) = fire_due(&mut timers, &mut queue, &ctx, at).await else {
            // Not recorded: try again shortly.
            if pause(&ctx.shutdown, Duration::from_secs(1)).await {
                return;
            }
            continue;
        };
        let next = queue.keys().next().copied();
        passes.send_modify(|p| {
            *p = Pass {
                passes: p.passes + 1,
                at: Some(at),
                fires,
                next,
            }
        });
        let Some(next) = next else {
            ctx.shutdown.cancelled().await;
            return;
        };
        // Re-check at least every 30 s so a wall-clock jump is noticed.
        let wait = ctx.clock.until(next).min(Duration::from_secs(30));
        if pause(&ctx.shutdown, wait).await {
            return;
        }
    }
}

/// The timers of the cron jobs, each starting after its last recorded fire
/// (or now, for a job never fired). `None` on shutdown.
async fn load_timers(jobs: Vec<Arc<Job>>, ctx: &TriggerContext) -> Option<Vec<Timer>> {
    let last = loop {
        match ctx.store.last_cron_fires().await {
            Ok(last) => break last,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "cannot read the last cron fires; retrying");
                if pause(&ctx.shutdown, Duration::from_secs(1)).await {
                    return None;
                }
            }
        }
    };
    let start = ctx.clock.now();
    Some(
        jobs.into_iter()
            .filter_map(|job| {
                let cron = job.cron()?.clone();
                let cursor = last
                    .get(&job.name)
                    // A stored fire time is one kedge wrote (in range).
                    .and_then(|ms| DateTime::from_timestamp_millis(*ms))
                    .unwrap_or(start);
                Some(Timer { job, cron, cursor })
            })
            .collect(),
    )
}

/// Decides and records every fire due at `now`, in one transaction, and
/// moves the timers on. Returns how many fires were recorded; `None` when
/// recording failed (nothing moved).
async fn fire_due(
    timers: &mut [Timer],
    queue: &mut Queue,
    ctx: &TriggerContext,
    now: DateTime<Utc>,
) -> Option<usize> {
    let due: Vec<(DateTime<Utc>, usize)> = queue
        .range(..=now)
        .flat_map(|(at, ids)| ids.iter().map(move |i| (*at, *i)))
        .collect();
    if due.is_empty() {
        return Some(0);
    }
    let batch: Vec<(usize, Vec<Fire>)> = due
        .iter()
        .map(|(_, i)| {
            (
                *i,
                fires_between(&timers[*i].cron, timers[*i].cursor, now, MAX_FIRES_PER_PASS),
            )
        })
        .collect();
    match decide_and_record(timers, &batch, ctx, now).await {
        Ok(()) => {}
        Err(StoreError::OperatorStateChanged(job)) => {
            // An operator paused, resumed, held… a job meanwhile: decide
            // again with its new state.
            tracing::info!(%job, "a job's operator state changed while its fires were decided; deciding again");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), fires = batch.len(), "cannot record cron fires; retrying");
            return None;
        }
    }
    let recorded = batch.iter().map(|(_, f)| f.len()).sum();
    for (at, i) in &due {
        if let Some(ids) = queue.get_mut(at) {
            ids.retain(|j| j != i);
            if ids.is_empty() {
                queue.remove(at);
            }
        }
    }
    for (i, fires) in batch {
        let t = &mut timers[i];
        t.cursor = fires.last().map(|f| f.at).unwrap_or(t.cursor);
        schedule(queue, i, t);
    }
    Some(recorded)
}

/// Puts timer `i` under its next fire after its cursor.
fn schedule(queue: &mut Queue, i: usize, t: &Timer) {
    match rules::next_fire(&t.cron, t.cursor) {
        Some(next) => queue.entry(next.at).or_default().push(i),
        None => tracing::info!(job = %t.job.name, "the schedule has no further fires"),
    }
}

/// Sleeps `d`; true when shutdown came first.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// The job's fires in `(after, until]` with its calendar rules applied
/// ([`rules::fires_between`]), ascending, at most `max`. The one
/// enumeration of a schedule's fires: the timer loop, `kedge plan` and
/// `kedge backfill` ([`crate::operator::backfill`]) take them from here.
pub fn fires_between(
    cron: &CronTrigger,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    max: usize,
) -> Vec<Fire> {
    let mut fires = rules::fires_between(cron, after, until);
    fires.truncate(max);
    fires
}

/// Decides about the fires of every due timer and records them all in one
/// transaction. An `overlap: replace` stops the job's active runs first.
async fn decide_and_record(
    timers: &[Timer],
    batch: &[(usize, Vec<Fire>)],
    ctx: &TriggerContext,
    now: DateTime<Utc>,
) -> Result<(), crate::store::StoreError> {
    let mut records: Vec<FireRecord> = Vec::new();
    // Operator states as this pass decides with them; recording checks they
    // still hold (see `Store::record_cron_fires_as`).
    let stopped = ctx.store.stopped_jobs().await?;
    for (i, fires) in batch {
        let Timer { job, cron, .. } = &timers[*i];
        if let Some(state) = stopped.get(&job.name) {
            records.extend(stopped_records(job, fires, *state));
            continue;
        }
        records.extend(blackout_records(job, fires));
        decide_job(job, cron, fires, ctx, now, &mut records).await?;
    }
    record_and_wake(ctx, &records, &stopped).await
}

/// Paused, held or iced: nothing new launches. Each fire is recorded
/// `skipped: <state>`; resume and release catch them up
/// (`crate::operator`), unice does not.
fn stopped_records(job: &Job, fires: &[Fire], state: OperatorState) -> Vec<FireRecord> {
    tracing::info!(job = %job.name, fires = fires.len(), %state, "cron fires skipped: the job is {state}");
    fires
        .iter()
        .map(|f| FireRecord {
            job: job.name.clone(),
            fire_ms: f.at.timestamp_millis(),
            outcome: FireOutcome::Skipped,
            detail: Some(skipped_detail(state).to_string()),
            item: None,
        })
        .collect()
}

/// Fires in a blackout are recorded as skipped whatever the catch-up
/// policy; the others go through it ([`decide_job`]).
fn blackout_records(job: &Job, fires: &[Fire]) -> Vec<FireRecord> {
    fires
        .iter()
        .filter_map(|f| match &f.outcome {
            Planned::Skipped { reason } => {
                tracing::info!(job = %job.name, fire = %f.at, %reason, "cron fire skipped");
                Some(FireRecord {
                    job: job.name.clone(),
                    fire_ms: f.at.timestamp_millis(),
                    outcome: FireOutcome::Skipped,
                    detail: Some(reason.clone()),
                    item: None,
                })
            }
            _ => None,
        })
        .collect()
}

/// Applies the catch-up and overlap policies to one job's fires that may
/// run, adding a record for each to `records`.
async fn decide_job(
    job: &Arc<Job>,
    cron: &CronTrigger,
    fires: &[Fire],
    ctx: &TriggerContext,
    now: DateTime<Utc>,
    records: &mut Vec<FireRecord>,
) -> Result<(), crate::store::StoreError> {
    let runs: Vec<&Fire> = fires
        .iter()
        .filter(|f| !matches!(f.outcome, Planned::Skipped { .. }))
        .collect();
    let times: Vec<DateTime<Utc>> = runs.iter().map(|f| f.at).collect();
    let plan = plan_fires(&times, now, cron.catchup, cron.starting_deadline);
    let missed = plan
        .iter()
        .filter(|(_, d)| matches!(d, FireDecision::Missed(_)))
        .count();
    if missed > 0 {
        tracing::warn!(job = %job.name, missed, "cron fires missed while kedge was not running");
    }
    // Only the policies that look at active runs pay for counting them;
    // fires decided here count as pending for the fires after them.
    let (running, mut pending) = if cron.overlap == Overlap::Allow {
        (0, 0)
    } else {
        ctx.store.active_count_of(&job.name).await?
    };
    // `replace` with several fires due at once (catch-up): only the
    // newest launches; the older ones would be replaced before they ran.
    let newest_run = plan
        .iter()
        .rposition(|(_, d)| *d == FireDecision::Run)
        .unwrap_or(0);
    for (k, ((fire, decision), placed)) in plan.into_iter().zip(&runs).enumerate() {
        let fire_ms = fire.timestamp_millis();
        // Why a fire is not at its cron time (shifted, deferred).
        let placed_by = (placed.cron_time != placed.at).then(|| placed.rule.clone());
        let record = |outcome: FireOutcome, detail: Option<String>, item| FireRecord {
            job: job.name.clone(),
            fire_ms,
            outcome,
            detail,
            item,
        };
        if let FireDecision::Missed(why) = decision {
            records.push(record(FireOutcome::Missed, Some(why), None));
            continue;
        }
        let action = if cron.overlap == Overlap::Replace && k < newest_run {
            OverlapAction::Skip(
                "overlap: replace, a newer fire due at the same time replaced it".into(),
            )
        } else {
            overlap_action(cron.overlap, running, pending)
        };
        let outcome = match action {
            OverlapAction::Skip(why) => {
                tracing::info!(job = %job.name, %fire, reason = %why, "cron fire skipped");
                records.push(record(FireOutcome::Skipped, Some(why), None));
                continue;
            }
            OverlapAction::Replace => {
                replace_active_runs(&job.name, ctx, now).await?;
                FireOutcome::Replaced
            }
            OverlapAction::Launch => FireOutcome::Recorded,
        };
        pending += 1;
        if let Some(after) = &job.after {
            // Waits for its dependencies (`triggers::after` starts it).
            let detail = format!("waiting for: {}", after.expr);
            records.push(record(FireOutcome::Waiting, Some(detail), None));
            continue;
        }
        let item = intake::cron_work_item(&job.name, fire, job.deadline_after(fire));
        records.push(record(outcome, placed_by, Some(item)));
    }
    Ok(())
}

/// `overlap: replace`: cancels `job`'s pending runs and asks the daemon to
/// stop its running ones.
async fn replace_active_runs(
    job: &str,
    ctx: &TriggerContext,
    now: DateTime<Utc>,
) -> Result<(), crate::store::StoreError> {
    ctx.store
        .cancel_pending_runs(
            job,
            "cancelled: replaced by a newer cron fire",
            now.timestamp_millis(),
        )
        .await?;
    for run in ctx.store.active_runs_of(job).await? {
        // (A rare event: one more read for the log's attempt.)
        let attempt = ctx.store.get_run(&run).await?.map_or(0, |r| r.attempt);
        tracing::info!(%job, run = %run, attempt, "replacing the active run");
        // Closed only when the daemon has stopped serving: then the run
        // stops with it, and the fire is already recorded as replacing it.
        let _ = ctx.cancel.send(run);
    }
    Ok(())
}

/// Records `records` in one transaction (checked against the operator
/// states `stopped` they were decided with) and wakes the dispatcher when
/// a fire launched.
async fn record_and_wake(
    ctx: &TriggerContext,
    records: &[FireRecord],
    stopped: &std::collections::HashMap<String, OperatorState>,
) -> Result<(), crate::store::StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let stored = ctx
        .store
        .record_cron_fires_as(records, Some(stopped))
        .await?;
    let mut launched = 0;
    for (r, new) in records.iter().zip(stored) {
        if let (true, Some(item)) = (new, &r.item) {
            tracing::info!(job = %r.job, fire_ms = r.fire_ms, run = %item.run_id, attempt = 1, "cron fired");
            launched += 1;
        }
    }
    if launched > 0 {
        ctx.wake.notify_one();
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn catchup_policies() {
        let fires = [
            t("2026-01-01T01:00:00Z"),
            t("2026-01-01T02:00:00Z"),
            t("2026-01-01T03:00:00Z"),
        ];
        let now = t("2026-01-01T03:30:00Z");
        let runs = |c, sd| -> Vec<bool> {
            plan_fires(&fires, now, c, sd)
                .into_iter()
                .map(|(_, d)| d == FireDecision::Run)
                .collect()
        };
        assert_eq!(runs(Catchup::None, None), [false, false, false]);
        assert_eq!(runs(Catchup::Latest, None), [false, false, true]);
        assert_eq!(runs(Catchup::All, None), [true, true, true]);
        // starting_deadline 1h: only the 03:00 fire is young enough.
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(runs(Catchup::All, hour), [false, false, true]);
        // 20 min: none is.
        assert_eq!(
            runs(Catchup::Latest, Some(Duration::from_secs(1200))),
            [false, false, false]
        );
    }

    #[test]
    fn on_time_fires_always_run_and_win_over_catchup_latest() {
        let fires = [t("2026-01-01T01:00:00Z"), t("2026-01-01T03:29:58Z")];
        let now = t("2026-01-01T03:30:00Z");
        let plan = plan_fires(&fires, now, Catchup::Latest, None);
        assert!(matches!(plan[0].1, FireDecision::Missed(_)));
        assert_eq!(plan[1].1, FireDecision::Run);
        let plan = plan_fires(&fires, now, Catchup::None, None);
        assert_eq!(plan[1].1, FireDecision::Run);
    }

    #[test]
    fn overlap_policies() {
        use OverlapAction::*;
        assert_eq!(overlap_action(Overlap::Allow, 3, 3), Launch);
        assert_eq!(overlap_action(Overlap::Forbid, 0, 0), Launch);
        assert!(matches!(overlap_action(Overlap::Forbid, 1, 0), Skip(_)));
        assert!(matches!(overlap_action(Overlap::Forbid, 0, 1), Skip(_)));
        assert_eq!(overlap_action(Overlap::Replace, 1, 0), Replace);
        assert_eq!(overlap_action(Overlap::Replace, 0, 0), Launch);
        assert_eq!(overlap_action(Overlap::BufferOne, 1, 0), Launch);
        assert!(matches!(overlap_action(Overlap::BufferOne, 1, 1), Skip(_)));
    }
}
