//! Batch formation: the waiting messages of a job with `batch:` go into
//! batch runs (one completion index per message) as
//! [`crate::planner::batching::batches`] decides, before the dispatcher
//! looks for due runs.

use std::time::Duration;

use crate::clock::Clock;
use crate::config::job::Trigger;
use crate::config::queue::{OnExpired, QueueTrigger, BATCH_MAX_BYTES};
use crate::config::{Job, JobsByName};
use crate::lifecycle::{run_name, RunKey};
use crate::planner::batching::{self, Waiting};
use crate::store::{BatchCandidate, Store, StoreError};

/// Forms the batches that are ready, for every batching job. Returns how
/// long until a partial batch is due, if one is waiting.
pub async fn form(
    store: &Store,
    jobs: &JobsByName,
    clock: &Clock,
) -> Result<Option<Duration>, StoreError> {
    let mut next: Option<Duration> = None;
    for job in jobs.values() {
        let Trigger::Queue(q) = &job.trigger else {
            continue;
        };
        if let Some(later) = form_for(store, job, q, clock).await? {
            next = Some(next.map_or(later, |n| n.min(later)));
        }
    }
    Ok(next)
}

/// Forms the ready batches of one job; returns when its partial batch is due.
async fn form_for(
    store: &Store,
    job: &Job,
    q: &QueueTrigger,
    clock: &Clock,
) -> Result<Option<Duration>, StoreError> {
    let Some(batch) = q.batch else {
        return Ok(None);
    };
    let limit = (batch.max_messages as i64 * 16).min(4096);
    let waiting = store.awaiting_batch(&job.name, limit).await?;
    let now = clock.now_ms();
    let waiting = expire_waiting(store, job, q, waiting, now).await?;
    if waiting.is_empty() {
        return Ok(None);
    }
    let view: Vec<Waiting> = waiting
        .iter()
        .map(|w| Waiting {
            payload_bytes: w.payload_bytes.max(0) as usize,
            waited: Duration::from_millis((now - w.created_ms).max(0) as u64),
        })
        .collect();
    let (ready, later) = batching::batches(
        &view,
        batch.max_messages as usize,
        BATCH_MAX_BYTES,
        batch.max_wait,
    );
    for range in ready {
        let ids: Vec<String> = waiting[range]
            .iter()
            .map(|m| m.work_item_id.clone())
            .collect();
        let run_id = run_name(&job.name, RunKey::Message(&format!("batch:{}", ids[0])), 1);
        // The run's deadline is its first member's: members come
        // earliest deadline first.
        if store
            .create_batch_run(&job.name, &run_id, &ids, now)
            .await?
        {
            tracing::info!(run = %run_id, job = %job.name, attempt = 1, messages = ids.len(), "batch formed");
        }
    }
    Ok(later)
}

/// Dead-letters the waiting messages whose own deadline passed
/// (`on_expired: dead_letter`); returns the others.
async fn expire_waiting(
    store: &Store,
    job: &Job,
    q: &QueueTrigger,
    waiting: Vec<BatchCandidate>,
    now: i64,
) -> Result<Vec<BatchCandidate>, StoreError> {
    if q.deadline.is_none() || q.on_expired != OnExpired::DeadLetter {
        return Ok(waiting);
    }
    let mut kept = Vec::with_capacity(waiting.len());
    for w in waiting {
        if w.deadline_ms.is_some_and(|d| d <= now)
            && store.expire_waiting(&w.work_item_id, now).await?
        {
            tracing::warn!(job = %job.name, message = %w.message_id, "message expired while waiting for its batch; dead-lettered");
        } else {
            kept.push(w);
        }
    }
    Ok(kept)
}
