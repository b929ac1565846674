//! The cron scheduler: one timer loop per cron job that turns fires into
//! work items, applying the overlap and catch-up policies.
//!
//! # Expected flow
//!
//! The loop starts from the job's last recorded fire (or from now, for a job
//! that never fired), decides about every fire between then and now
//! ([`plan_fires`]: on time → run; missed while kedge was down → the
//! catch-up policy and `starting_deadline`), records each decision, then
//! sleeps until the next fire or shutdown.
//!
//! # Guarantees
//!
//! Each fire is recorded in the store exactly once, with its outcome
//! (`launched`, `skipped`, `missed`, `replaced`), and a launched fire's work
//! item is written in the same transaction; so after a crash the loop
//! resumes after the last recorded fire, repeating none and dropping none
//! silently. A store error leaves the fire unrecorded and it is retried.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::job::{Catchup, CronTrigger, Overlap};
use crate::config::Job;
use crate::intake;
use crate::store::Store;

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

/// What the scheduler needs from the daemon.
#[derive(Clone)]
pub struct SchedulerContext {
    pub store: Store,
    /// Wakes the dispatcher after a fire is stored.
    pub wake: Arc<Notify>,
    /// Asks the daemon to cancel a running run (overlap: replace).
    pub cancel: mpsc::UnboundedSender<String>,
    pub shutdown: CancellationToken,
}

/// Runs the timer loop of one cron job until shutdown.
pub async fn run(job: Arc<Job>, ctx: SchedulerContext) {
    let Some(cron) = job.cron().cloned() else {
        return;
    };
    let mut cursor = loop {
        match ctx.store.last_cron_fire(&job.name).await {
            Ok(Some(ms)) => break DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now),
            Ok(None) => break Utc::now(),
            Err(e) => {
                tracing::error!(job = %job.name, error = %error_chain(&e), "cannot read last cron fire; retrying");
                if pause(&ctx.shutdown, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    loop {
        let now = Utc::now();
        let fires = fires_between(&cron, cursor, now);
        if !fires.is_empty() {
            match decide_and_record(&job, &cron, &ctx, &fires, now).await {
                Ok(()) => cursor = *fires.last().unwrap_or(&cursor),
                Err(e) => {
                    tracing::error!(job = %job.name, error = %error_chain(&e), "cannot record cron fire; retrying");
                    if pause(&ctx.shutdown, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(next) = cron.schedule.next_after(cursor, cron.timezone) else {
            tracing::info!(job = %job.name, "the schedule has no further fires");
            ctx.shutdown.cancelled().await;
            return;
        };
        // Re-check at least every 30 s so a wall-clock jump is noticed.
        let wait = (next - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(Duration::from_secs(30));
        if pause(&ctx.shutdown, wait).await {
            return;
        }
    }
}

/// Sleeps `d`; true when shutdown came first.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

fn fires_between(
    cron: &CronTrigger,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = after;
    while out.len() < MAX_FIRES_PER_PASS {
        match cron.schedule.next_after(t, cron.timezone) {
            Some(f) if f <= until => {
                out.push(f);
                t = f;
            }
            _ => break,
        }
    }
    out
}

async fn decide_and_record(
    job: &Job,
    cron: &CronTrigger,
    ctx: &SchedulerContext,
    fires: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Result<(), crate::store::StoreError> {
    let plan = plan_fires(fires, now, cron.catchup, cron.starting_deadline);
    let missed: Vec<(i64, String)> = plan
        .iter()
        .filter_map(|(f, d)| match d {
            FireDecision::Missed(why) => Some((f.timestamp_millis(), why.clone())),
            FireDecision::Run => None,
        })
        .collect();
    if !missed.is_empty() {
        tracing::warn!(job = %job.name, missed = missed.len(), "cron fires missed while kedge was not running");
        ctx.store.record_missed_fires(&job.name, &missed).await?;
    }
    for (fire, decision) in plan {
        if decision != FireDecision::Run {
            continue;
        }
        let (running, pending) = ctx.store.active_count_of(&job.name).await?;
        let fire_ms = fire.timestamp_millis();
        match overlap_action(cron.overlap, running, pending) {
            OverlapAction::Skip(why) => {
                tracing::info!(job = %job.name, %fire, reason = %why, "cron fire skipped");
                ctx.store
                    .record_cron_fire(&job.name, fire_ms, "skipped", Some(&why), None)
                    .await?;
            }
            action => {
                if action == OverlapAction::Replace {
                    ctx.store
                        .cancel_pending_runs(
                            &job.name,
                            "cancelled: replaced by a newer cron fire",
                            now.timestamp_millis(),
                        )
                        .await?;
                    for run in ctx.store.active_runs_of(&job.name).await? {
                        tracing::info!(job = %job.name, run = %run, "replacing the active run");
                        let _ = ctx.cancel.send(run);
                    }
                }
                let item = intake::cron_work_item(&job.name, fire, job.deadline_after(fire));
                let outcome = if action == OverlapAction::Replace {
                    "replaced"
                } else {
                    "launched"
                };
                if ctx
                    .store
                    .record_cron_fire(&job.name, fire_ms, outcome, None, Some(&item))
                    .await?
                {
                    tracing::info!(job = %job.name, %fire, run = %item.run_id, "cron fired");
                    ctx.wake.notify_one();
                }
            }
        }
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
