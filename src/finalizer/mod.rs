//! The finalizer: turns an executor's [`Outcome`] into the run's final state
//! — succeeded, retried after backoff, dead-lettered, or cancelled — and
//! writes it in one store transaction ([`Store::settle`]).
//!
//! [`decide`] is pure; [`finalize`] applies it; [`settle`] is the daemon's
//! entry, which retries the store until the outcome is written. Dead
//! letters bound for a broker leave through the [`outbox`]; [`replay`]
//! returns dead letters to their queue (`kedge dlq replay`).

pub mod outbox;
pub mod replay;

use std::time::Duration;

use crate::clock::Clock;

use crate::config::job::RetryPolicy;
use crate::config::{Job, JobsByName};
use crate::executor::{Decision, Outcome, OutcomeKind};
use crate::lifecycle::{attempt_run_name, RunState};
use crate::metrics;
use crate::store::{BatchMember, MemberEnd, Run, Settlement, Store, StoreError};

/// What to do with `run` after `outcome`, under `retry`.
pub fn decide(run: &Run, outcome: &OutcomeKind, retry: &RetryPolicy, now_ms: i64) -> Settlement {
    let error = match outcome {
        OutcomeKind::Succeeded => return Settlement::Succeeded,
        OutcomeKind::Cancelled => {
            return Settlement::Cancelled {
                error: "cancelled: replaced by a newer cron fire".into(),
            }
        }
        OutcomeKind::Skipped { reason } => {
            return Settlement::Cancelled {
                error: reason.clone(),
            }
        }
        OutcomeKind::Failed { reason, message } => format!("{reason}: {message}"),
    };
    let used = run.attempt - run.attempt_base;
    if used < i64::from(retry.max_attempts) {
        let next_attempt = run.attempt + 1;
        let delay = retry.delay_before((used + 1).clamp(0, u32::MAX as i64) as u32);
        Settlement::Retry {
            error,
            next_run_id: next_run_id(run, next_attempt),
            next_attempt,
            not_before_ms: now_ms + delay.as_millis().min(i64::MAX as u128) as i64,
        }
    } else {
        Settlement::Dead {
            reason: format!("failed {used} of {} attempts", retry.max_attempts),
            error,
        }
    }
}

/// How each member of a finished batch run ends: a member whose index
/// completed has succeeded; the others (failed, or never run because the
/// Job ended first) are retried alone as single-message runs from attempt
/// 2, or dead-lettered when the job allows one attempt. Pure.
pub fn decide_batch(
    run: &Run,
    members: &[BatchMember],
    outcome: &crate::executor::Outcome,
    retry: &RetryPolicy,
    now_ms: i64,
) -> (RunState, Option<String>, Vec<(String, MemberEnd)>) {
    let error = match &outcome.kind {
        OutcomeKind::Succeeded => None,
        OutcomeKind::Failed { reason, message } => Some(format!("{reason}: {message}")),
        OutcomeKind::Cancelled => Some("cancelled".to_string()),
        OutcomeKind::Skipped { reason } => Some(reason.clone()),
    };
    let all_ok = matches!(outcome.kind, OutcomeKind::Succeeded);
    let ends = members
        .iter()
        .map(|m| {
            let ok = all_ok || outcome.completed_indexes.contains(&(m.index as i32));
            let end = if ok {
                MemberEnd::Succeeded
            } else if retry.max_attempts > 1 {
                let delay = retry.delay_before(2);
                MemberEnd::Retry {
                    run_id: attempt_run_name(&run.job, run.trigger, &m.message_id, 2),
                    attempt: 2,
                    not_before_ms: now_ms + delay.as_millis().min(i64::MAX as u128) as i64,
                }
            } else {
                MemberEnd::Dead {
                    reason: format!("failed 1 of {} attempts", retry.max_attempts),
                    error: format!(
                        "index {} of batch run {}: {}",
                        m.index,
                        run.run_id,
                        error.as_deref().unwrap_or("failed")
                    ),
                }
            };
            (m.work_item_id.clone(), end)
        })
        .collect();
    let state = if all_ok {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    (state, error, ends)
}

/// The id of attempt `attempt` of the same work item as `run`.
pub fn next_run_id(run: &Run, attempt: i64) -> String {
    attempt_run_name(&run.job, run.trigger, &run.message_id, attempt)
}

/// Settles `outcome` for the daemon. The outcome is in memory only until
/// settled, so store errors are retried with backoff (up to 5 s apart)
/// rather than dropped; a crash meanwhile is covered by recovery. Returns
/// the decisions made, for the executor to publish.
pub async fn settle(
    store: &Store,
    clock: &Clock,
    jobs: &JobsByName,
    outcome: &Outcome,
) -> Vec<Decision> {
    let mut delay = Duration::from_millis(100);
    loop {
        // The run's job decides its retry policy: a store error here is
        // retried like any other, never guessed as the default policy.
        let settled = match store.get_run(&outcome.run_id).await {
            Ok(run) => {
                let job = run.and_then(|r| jobs.get(&r.job).cloned());
                finalize(store, clock, job.as_deref(), outcome).await
            }
            Err(e) => Err(e),
        };
        match settled {
            Ok(settled) => return settled.map(|s| s.decisions).unwrap_or_default(),
            Err(e) => {
                tracing::error!(run = %outcome.run_id, error = %crate::error_chain(&e), "cannot settle; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What settling a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The run's new state.
    pub state: RunState,
    /// What was decided, for the executor to publish.
    pub decisions: Vec<Decision>,
}

/// Settles `outcome`. `job` is `None` when the run's job is no longer
/// loaded (its default retry policy applies). `None` when it was already
/// settled (an outcome reported twice).
pub async fn finalize(
    store: &Store,
    clock: &Clock,
    job: Option<&Job>,
    outcome: &Outcome,
) -> Result<Option<Settled>, StoreError> {
    let Some(run) = store.get_run(&outcome.run_id).await? else {
        tracing::warn!(run = %outcome.run_id, "outcome for a run the store does not know; ignored");
        return Ok(None);
    };
    let retry = job.map(|j| j.retry).unwrap_or_default();
    let now = clock.now_ms();
    let members = store.batch_members(&run.run_id).await?;
    if !members.is_empty() {
        let (state, error, ends) = decide_batch(&run, &members, outcome, &retry, now);
        if !store
            .settle_batch(&run.run_id, state, error.as_deref(), &ends, now)
            .await?
        {
            return Ok(None);
        }
        let ok = ends
            .iter()
            .filter(|(_, e)| *e == MemberEnd::Succeeded)
            .count();
        tracing::info!(run = %run.run_id, job = %run.job, attempt = run.attempt, messages = ends.len(), succeeded = ok,
            retried_alone = ends.len() - ok, "batch run settled per message");
        let ended = if state == RunState::Succeeded {
            metrics::Outcome::Succeeded
        } else {
            metrics::Outcome::Failed
        };
        record(&run, ended, now);
        return Ok(Some(Settled {
            state,
            decisions: deadline_missed(&run, &outcome.kind, now)
                .into_iter()
                .collect(),
        }));
    }
    let settlement = decide(&run, &outcome.kind, &retry, now);
    if !store.settle(&run.run_id, &settlement, now).await? {
        return Ok(None);
    }
    trace_run(&run, &outcome.kind, &settlement, now);
    let mut decisions: Vec<Decision> = deadline_missed(&run, &outcome.kind, now)
        .into_iter()
        .collect();
    let ended = match &settlement {
        Settlement::Succeeded => metrics::Outcome::Succeeded,
        Settlement::Retry { .. } => metrics::Outcome::Failed,
        Settlement::Dead { .. } => metrics::Outcome::Dead,
        Settlement::Cancelled { .. } => metrics::Outcome::Cancelled,
    };
    record(&run, ended, now);
    let state = match &settlement {
        Settlement::Succeeded => {
            tracing::info!(run = %run.run_id, job = %run.job, attempt = run.attempt, "run succeeded");
            RunState::Succeeded
        }
        Settlement::Retry {
            error,
            next_run_id,
            not_before_ms,
            ..
        } => {
            tracing::warn!(run = %run.run_id, job = %run.job, attempt = run.attempt, %error,
                next = %next_run_id, retry_in_ms = not_before_ms - now, "run failed; will retry");
            decisions.push(Decision::Retrying {
                error: error.clone(),
                next_run: next_run_id.clone(),
                delay_ms: not_before_ms - now,
            });
            RunState::Failed
        }
        Settlement::Dead { error, reason } => {
            tracing::error!(run = %run.run_id, job = %run.job, attempt = run.attempt, %error, %reason,
                "run failed for the last time; dead-lettered");
            decisions.push(Decision::DeadLettered {
                error: error.clone(),
                reason: reason.clone(),
            });
            RunState::Dead
        }
        Settlement::Cancelled { error } => {
            tracing::info!(run = %run.run_id, job = %run.job, attempt = run.attempt, %error, "run cancelled");
            RunState::Failed
        }
    };
    Ok(Some(Settled { state, decisions }))
}

/// The `kedge.run` span: started → settled, with how it ended.
fn trace_run(run: &Run, outcome: &OutcomeKind, settlement: &Settlement, now_ms: i64) {
    let (state, error) = match settlement {
        Settlement::Succeeded => ("succeeded", None),
        Settlement::Retry { error, .. } => ("retrying", Some(error.clone())),
        Settlement::Dead { error, .. } => ("dead", Some(error.clone())),
        Settlement::Cancelled { error } => ("cancelled", Some(error.clone())),
    };
    let mut attributes = crate::telemetry::run_attributes(run);
    attributes.push(opentelemetry::KeyValue::new("kedge.state", state));
    attributes.push(opentelemetry::KeyValue::new(
        "kedge.outcome",
        outcome.label(),
    ));
    crate::telemetry::span(crate::telemetry::Stage {
        name: "kedge.run",
        job: &run.job,
        message_id: &run.message_id,
        start_ms: run.started_ms.unwrap_or(now_ms),
        end_ms: now_ms,
        attributes,
        error,
    });
}

/// A run that ended (succeeded or failed, not cancelled) after its
/// deadline missed it by this much.
fn deadline_missed(run: &Run, outcome: &OutcomeKind, now_ms: i64) -> Option<Decision> {
    if matches!(outcome, OutcomeKind::Cancelled) {
        return None;
    }
    let deadline = run.deadline_ms?;
    (now_ms > deadline).then_some(Decision::DeadlineMissed {
        late_ms: now_ms - deadline,
    })
}

/// The metrics of a run that ended as `outcome` at `now`: its count and
/// duration, and — when its work item ended (succeeded or dead) and has a
/// deadline — how far inside (or past) the deadline it finished.
fn record(run: &Run, outcome: metrics::Outcome, now: i64) {
    let ran = run
        .started_ms
        .map(|s| Duration::from_millis((now - s).max(0) as u64));
    metrics::run_ended(&run.job, outcome, ran);
    let work_ended = matches!(
        outcome,
        metrics::Outcome::Succeeded | metrics::Outcome::Dead
    );
    if let (true, Some(deadline)) = (work_ended, run.deadline_ms) {
        metrics::deadline_slack(&run.job, deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{run_name, RunKey, TriggerKind};
    use std::time::Duration;

    fn run(attempt: i64, base: i64) -> Run {
        Run {
            run_id: "j-abc".into(),
            work_item_id: "w".into(),
            job: "j".into(),
            attempt,
            state: RunState::Running,
            trigger: TriggerKind::Queue,
            scheduled_ms: 0,
            started_ms: Some(0),
            finished_ms: None,
            launches: 1,
            first_launch_ms: Some(0),
            error: None,
            source: "builtin".into(),
            message_id: "m1".into(),
            payload: None,
            deadline_ms: None,
            attempt_base: base,
            sizing: None,
            backfill_id: None,
        }
    }

    fn fail() -> OutcomeKind {
        OutcomeKind::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "boom".into(),
        }
    }

    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(3600),
    };

    #[test]
    fn failures_retry_with_backoff_then_die() {
        match decide(&run(1, 0), &fail(), &RETRY, 1000) {
            Settlement::Retry {
                next_attempt,
                not_before_ms,
                next_run_id,
                ..
            } => {
                assert_eq!(next_attempt, 2);
                assert_eq!(not_before_ms, 11_000);
                assert_eq!(next_run_id, run_name("j", RunKey::Message("m1"), 2));
            }
            other => panic!("{other:?}"),
        }
        match decide(&run(2, 0), &fail(), &RETRY, 0) {
            Settlement::Retry { not_before_ms, .. } => assert_eq!(not_before_ms, 20_000),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&run(3, 0), &fail(), &RETRY, 0),
            Settlement::Dead { .. }
        ));
    }

    #[test]
    fn a_replay_restarts_the_budget() {
        assert!(matches!(
            decide(&run(4, 3), &fail(), &RETRY, 0),
            Settlement::Retry {
                next_attempt: 5,
                ..
            }
        ));
        assert!(matches!(
            decide(&run(6, 3), &fail(), &RETRY, 0),
            Settlement::Dead { .. }
        ));
    }

    #[test]
    fn success_and_cancel() {
        assert_eq!(
            decide(&run(1, 0), &OutcomeKind::Succeeded, &RETRY, 0),
            Settlement::Succeeded
        );
        assert!(matches!(
            decide(&run(1, 0), &OutcomeKind::Cancelled, &RETRY, 0),
            Settlement::Cancelled { .. }
        ));
    }

    #[test]
    fn a_batch_settles_each_member_on_its_own_index() {
        let member = |i: i64| BatchMember {
            index: i,
            work_item_id: format!("w{i}"),
            message_id: format!("m{i}"),
            payload: None,
            state: crate::lifecycle::WorkState::Queued,
        };
        let members: Vec<_> = (0..3).map(member).collect();
        let outcome = Outcome {
            run_id: "j-abc".into(),
            kind: OutcomeKind::Failed {
                reason: "FailedIndexes".into(),
                message: "index(es) 1 failed".into(),
            },
            completed_indexes: vec![0, 2],
        };
        let retry = RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let (state, error, ends) = decide_batch(&run(1, 0), &members, &outcome, &retry, 1_000);
        assert_eq!(state, RunState::Failed);
        assert!(error.unwrap().starts_with("FailedIndexes"));
        assert_eq!(ends[0], ("w0".to_string(), MemberEnd::Succeeded));
        assert_eq!(ends[2], ("w2".to_string(), MemberEnd::Succeeded));
        assert_eq!(
            ends[1],
            (
                "w1".to_string(),
                MemberEnd::Retry {
                    run_id: attempt_run_name("j", TriggerKind::Queue, "m1", 2),
                    attempt: 2,
                    not_before_ms: 2_000,
                }
            )
        );
        // One attempt allowed: the failed member is dead at once, alone.
        let once = RetryPolicy {
            max_attempts: 1,
            ..retry
        };
        let (_, _, ends) = decide_batch(&run(1, 0), &members, &outcome, &once, 1_000);
        assert!(matches!(&ends[1].1, MemberEnd::Dead { error, .. } if error.contains("index 1")));
        assert_eq!(ends[0].1, MemberEnd::Succeeded);
    }
}
