//! The dead-letter outbox: a dead letter is first written to the store (in
//! the settling transaction), then published to its source's dead-letter
//! target (`dead_letter:` in the job: a Redis list or stream, a RabbitMQ
//! exchange with publisher confirms, a PostgreSQL table) by [`forward`],
//! oldest first, and marked forwarded once the broker confirmed it. An
//! unreachable broker only delays them: the error is recorded on the letter
//! and it is tried again on the next tick.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::job::Trigger;
use crate::config::queue::DeadLetterTarget;
use crate::config::{Job, JobsByName};
use crate::sources::{AnySource, Letter, Outbox};
use crate::store::{DeadLetter, Store};

/// How often dead letters waiting for their broker target are published.
const FORWARD_EVERY: Duration = Duration::from_millis(500);

/// Letters read per job and tick.
const LETTERS_PER_TICK: i64 = 100;

/// One job's dead-letter target and the broker connection that reaches it.
struct Target {
    job: Arc<Job>,
    target: DeadLetterTarget,
    outbox: AnySource,
}

/// Publishes stored dead letters to their targets every `FORWARD_EVERY`
/// until `shutdown`. Returns at once when no job has a target.
pub async fn forward(
    jobs: JobsByName,
    consumer: String,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut targets: Vec<Target> = jobs
        .values()
        .filter_map(|j| match &j.trigger {
            Trigger::Queue(q) => Some(Target {
                job: j.clone(),
                target: q.dead_letter.clone()?,
                outbox: AnySource::new(&q.source, &format!("{consumer}-dlq"))?,
            }),
            Trigger::Cron(_) | Trigger::After => None,
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(FORWARD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for t in &mut targets {
            if forward_job(t, &store, &clock, &shutdown).await.is_err() {
                return; // shut down mid-publish
            }
        }
    }
}

/// Publishes one job's waiting letters, oldest first, stopping at the first
/// the broker refuses (the order is kept). `Err` when shut down meanwhile.
async fn forward_job(
    t: &mut Target,
    store: &Store,
    clock: &Clock,
    shutdown: &CancellationToken,
) -> Result<(), ()> {
    let letters = match store
        .dead_letters_to_forward(&t.job.name, LETTERS_PER_TICK)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(job = %t.job.name, error = %crate::error_chain(&e), "cannot read dead letters to forward");
            return Ok(());
        }
    };
    for l in letters {
        let letter = letter(&l);
        let sent = tokio::select! {
            _ = shutdown.cancelled() => return Err(()),
            r = t.outbox.dead_letter(&t.target, &letter) => r,
        };
        let now = clock.now_ms();
        match sent {
            Ok(()) => {
                if let Err(e) = store.mark_forwarded(&l.id, None, now).await {
                    tracing::error!(job = %t.job.name, letter = %l.id, error = %crate::error_chain(&e),
                        "cannot record a forwarded dead letter; it may be published again");
                }
            }
            Err(e) => {
                let error = crate::error_chain(&e);
                tracing::warn!(job = %t.job.name, letter = %l.id, %error, "cannot publish a dead letter to its target yet; will retry");
                if let Err(e) = store.mark_forwarded(&l.id, Some(&error), now).await {
                    tracing::error!(job = %t.job.name, letter = %l.id, error = %crate::error_chain(&e),
                        "cannot record why a dead letter was not published");
                }
                break;
            }
        }
    }
    Ok(())
}

/// A stored dead letter as a broker receives it.
fn letter(l: &DeadLetter) -> Letter {
    Letter {
        job: l.job.clone(),
        message_id: l.message_id.clone(),
        payload: l.payload.clone(),
        reason: l.reason.clone(),
        attempts: l.attempts,
        last_error: l.last_error.clone(),
        // created_ms is a time kedge's clock wrote: always in range.
        dead_at: chrono::DateTime::from_timestamp_millis(l.created_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}
