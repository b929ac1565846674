//! `trigger.after` alone: a job that runs each time its expression becomes
//! true (for example once after each success of its upstream).
//!
//! The serving loop calls [`pass`] before every dispatch pass: at start
//! (restart safety) and after every settlement, the moments an upstream's
//! runs change. Each such run is a fire recorded in `cron_fires` under a
//! key that is the end time of the newest upstream run the expression saw:
//! evaluating again (another pass, a restart) yields the same key, which
//! is recorded once, so a dependent never runs twice for one upstream end.
//! The scope of a condition without look-back, "since this job's last
//! run", is that last key.

use std::collections::HashMap;

use crate::clock::Clock;
use crate::config::after::{Facts, Scope, Seen, UpstreamFacts};
use crate::config::{JobsByName, Trigger};
use crate::intake;
use crate::lifecycle::{FireOutcome, OperatorState};
use crate::operator::{as_upstream, Upstream};
use crate::store::{Result, Store};

/// The facts about `upstreams` a pass evaluates over, read from the store.
pub async fn facts(
    store: &Store,
    upstreams: &[String],
    stopped: &HashMap<String, OperatorState>,
) -> Result<Facts> {
    let mut out = Facts::new();
    for up in upstreams {
        let up = up.as_str();
        let (running, pending) = store.active_count_of(up).await?;
        let seen_as = match as_upstream(stopped.get(up).copied().unwrap_or(OperatorState::Active)) {
            Upstream::Runs => Seen::Runs,
            Upstream::Wait => Seen::Wait,
            Upstream::Succeeded => Seen::Succeeded,
        };
        out.insert(
            up.to_string(),
            UpstreamFacts {
                finished: store.latest_end_of(up).await?.into_iter().collect(),
                active: running + pending > 0,
                seen_as,
            },
        );
    }
    Ok(out)
}

/// Starts each `waiting` fire of a cron job with `after` whose expression
/// holds (scope without look-back: since the job's previous fire that
/// ran), oldest first; a fire that waited `wait_timeout` is recorded
/// `skipped: dependency timeout`, logged at WARN and counted as at risk.
/// Returns how many started.
pub async fn start_waiting(store: &Store, jobs: &JobsByName, clock: &Clock) -> Result<usize> {
    let mut started = 0;
    let mut cron_jobs: Vec<_> = jobs
        .values()
        .filter(|j| j.cron().is_some())
        .filter_map(|j| Some((j, j.after.as_ref()?)))
        .collect();
    if cron_jobs.is_empty() {
        return Ok(0);
    }
    cron_jobs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let stopped = store.stopped_jobs().await?;
    for (job, after) in cron_jobs {
        let waiting = store.waiting_fires(&job.name).await?;
        if waiting.is_empty() {
            continue;
        }
        let names: Vec<String> = after
            .expr
            .jobs()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        let facts = facts(store, &names, &stopped).await?;
        for fire_ms in waiting {
            let now = clock.now();
            let scope = Scope {
                since_ms: store.last_run_fire_before(&job.name, fire_ms).await?,
                now_ms: now.timestamp_millis(),
            };
            let fire = chrono::DateTime::from_timestamp_millis(fire_ms).unwrap_or(now);
            if after.expr.eval(&facts, scope) {
                let item = intake::cron_work_item(&job.name, fire, job.deadline_after(fire));
                let detail = format!("after: {}", after.expr);
                if store
                    .end_waiting_fire(&job.name, fire_ms, Some(&item), &detail)
                    .await?
                {
                    tracing::info!(job = %job.name, fire_ms, run = %item.run_id, after = %after.expr, "dependencies met, cron fire starts");
                    started += 1;
                }
            } else if now.timestamp_millis() - fire_ms >= after.wait_timeout.as_millis() as i64
                && store
                    .end_waiting_fire(&job.name, fire_ms, None, "dependency timeout")
                    .await?
            {
                tracing::warn!(job = %job.name, fire_ms, after = %after.expr, wait_timeout = ?after.wait_timeout, "cron fire skipped: dependency timeout");
                crate::metrics::run_at_risk();
            }
        }
    }
    Ok(started)
}

/// Fires every `after`-alone job whose expression holds since its last
/// fire; returns how many fired. An iced job's fire is recorded `skipped:
/// iced`; a paused or held job's run waits for resume or release.
pub async fn pass(store: &Store, jobs: &JobsByName, clock: &Clock) -> Result<usize> {
    let mut waiting: Vec<_> = jobs
        .values()
        .filter(|j| matches!(j.trigger, Trigger::After))
        .filter_map(|j| Some((j, j.after.as_ref()?)))
        .collect();
    if waiting.is_empty() {
        return Ok(0);
    }
    waiting.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let stopped = store.stopped_jobs().await?;
    let mut fired = 0;
    for (job, after) in waiting {
        let names: Vec<String> = after
            .expr
            .jobs()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        let facts = facts(store, &names, &stopped).await?;
        let since = store.last_cron_fire(&job.name).await?;
        let now = clock.now();
        let scope = Scope {
            since_ms: since,
            now_ms: now.timestamp_millis(),
        };
        // The key: the newest upstream end the expression can have seen,
        // rounded up to the second (a run's name carries the fire's second).
        let Some(key) = facts
            .values()
            .filter_map(|f| f.finished.first())
            .map(|(end, _)| (end + 999).div_euclid(1000) * 1000)
            .max()
        else {
            continue;
        };
        if since.is_some_and(|s| key <= s) || !after.expr.eval(&facts, scope) {
            continue;
        }
        let fire = chrono::DateTime::from_timestamp_millis(key).unwrap_or(now);
        let own = stopped.get(&job.name).copied();
        let (outcome, detail, item) = if own == Some(OperatorState::Iced) {
            let d = crate::store::skipped_detail(OperatorState::Iced);
            (FireOutcome::Skipped, d.to_string(), None)
        } else {
            let item = intake::cron_work_item(&job.name, fire, job.deadline_after(now));
            (
                FireOutcome::Recorded,
                format!("after: {}", after.expr),
                Some(item),
            )
        };
        if store
            .record_cron_fire(&job.name, key, outcome, Some(&detail), item.as_ref())
            .await?
        {
            tracing::info!(job = %job.name, fire_ms = key, %outcome, after = %after.expr, "dependencies met");
            fired += usize::from(item.is_some());
        }
    }
    Ok(fired)
}
