//! Batches: a queue job with `batch:` runs many messages in one Indexed
//! Job. Its work items wait (`awaiting_batch`) without a run until the
//! dispatcher puts them in a batch run; `batch_members` maps the run's
//! indexes to them, so each message settles on its own index's outcome.

use super::rows::{
    finish_running_tx, insert_dead_letter_tx, insert_runs_tx, queue_item_tx, set_work_state_tx,
    NewRun, NewWorkItem,
};
use super::{parse_column, Intake, Result, Store, StoreError};
use crate::lifecycle::{RunState, TriggerKind, WorkState};

/// A work item waiting to be put into a batch run.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BatchCandidate {
    pub work_item_id: String,
    pub message_id: String,
    /// Payload size in bytes (batches stay under the ConfigMap limit).
    pub payload_bytes: i64,
    pub created_ms: i64,
    pub deadline_ms: Option<i64>,
}

/// One index of a batch run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMember {
    pub index: i64,
    pub work_item_id: String,
    pub message_id: String,
    pub payload: Option<String>,
    /// The work item's state ([`WorkState::Queued`] while the batch runs).
    pub state: WorkState,
}

/// A [`BatchMember`] as stored, its state as text.
#[derive(sqlx::FromRow)]
struct BatchMemberRow {
    idx: i64,
    work_item_id: String,
    message_id: String,
    payload: Option<String>,
    state: String,
}

impl TryFrom<BatchMemberRow> for BatchMember {
    type Error = StoreError;
    fn try_from(r: BatchMemberRow) -> Result<BatchMember> {
        Ok(BatchMember {
            state: parse_column(&r.state)?,
            index: r.idx,
            work_item_id: r.work_item_id,
            message_id: r.message_id,
            payload: r.payload,
        })
    }
}

/// How one member of a finished batch run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEnd {
    Succeeded,
    /// Retried alone, as a single-message run.
    Retry {
        run_id: String,
        attempt: i64,
        not_before_ms: i64,
    },
    Dead {
        reason: String,
        error: String,
    },
}

impl Store {
    /// Stores a message of a batching job: its work item waits
    /// (`awaiting_batch`) without a run until [`Store::create_batch_run`]
    /// takes it. `false` when the message was stored before.
    pub async fn insert_batch_item(&self, item: &NewWorkItem) -> Result<bool> {
        self.intake_one(item, &Intake::AwaitBatch).await
    }

    /// Work items of `job` waiting for a batch, earliest deadline first,
    /// then oldest.
    pub async fn awaiting_batch(&self, job: &str, limit: i64) -> Result<Vec<BatchCandidate>> {
        let _t = crate::metrics::store_timer("awaiting_batch");
        Ok(sqlx::query_as(
            "SELECT id AS work_item_id, message_id, COALESCE(LENGTH(payload), 0) AS payload_bytes, \
                    created_ms, deadline_ms \
             FROM work_items WHERE job = $1 AND awaiting_batch = 1 AND state = $2 \
             ORDER BY CASE WHEN deadline_ms IS NULL THEN 1 ELSE 0 END, deadline_ms, created_ms, id \
             LIMIT $3",
        )
        .bind(job)
        .bind(WorkState::Queued.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Creates a pending batch run `run_id` of `job` whose index i is
    /// `items[i]`, taking them off the waiting list, in one transaction.
    /// `false` (nothing written) when any item was taken meanwhile.
    pub async fn create_batch_run(
        &self,
        job: &str,
        run_id: &str,
        items: &[String],
        now_ms: i64,
    ) -> Result<bool> {
        let _t = crate::metrics::store_timer("create_batch_run");
        let Some(first) = items.first() else {
            return Ok(false);
        };
        let mut tx = self.begin_write().await?;
        for id in items {
            let res = sqlx::query(
                "UPDATE work_items SET awaiting_batch = 0, updated_ms = $1 \
                 WHERE id = $2 AND awaiting_batch = 1 AND state = $3",
            )
            .bind(now_ms)
            .bind(id)
            .bind(WorkState::Queued.as_str())
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        // The run hangs off its first member's work item; the others are
        // reached through batch_members.
        let run = NewRun {
            run_id,
            work_item_id: first,
            job,
            attempt: 1,
            trigger: TriggerKind::Queue,
            scheduled_ms: now_ms,
        };
        insert_runs_tx(&mut tx, &[run]).await?;
        for (i, id) in items.iter().enumerate() {
            sqlx::query(
                "INSERT INTO batch_members (run_id, idx, work_item_id) VALUES ($1, $2, $3)",
            )
            .bind(run_id)
            .bind(i as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Dead-letters a message waiting for a batch whose own deadline passed
    /// (reason `expired`). `false` when it is no longer waiting.
    pub async fn expire_waiting(&self, work_item_id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE work_items SET state = $1, awaiting_batch = 0, updated_ms = $2 \
             WHERE id = $3 AND awaiting_batch = 1 AND state = $4",
        )
        .bind(WorkState::Dead.as_str())
        .bind(now_ms)
        .bind(work_item_id)
        .bind(WorkState::Queued.as_str())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        let item = queue_item_tx(&mut tx, work_item_id, "", now_ms).await?;
        insert_dead_letter_tx(
            &mut tx,
            work_item_id,
            &item,
            "expired",
            0,
            "the message's deadline passed before its batch could launch",
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The members of a batch run by index; empty for a single-message run.
    pub async fn batch_members(&self, run_id: &str) -> Result<Vec<BatchMember>> {
        let _t = crate::metrics::store_timer("batch_members");
        let rows: Vec<BatchMemberRow> = sqlx::query_as(
            "SELECT b.idx, w.id AS work_item_id, w.message_id, w.payload, w.state \
             FROM batch_members b JOIN work_items w ON w.id = b.work_item_id \
             WHERE b.run_id = $1 ORDER BY b.idx",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(BatchMember::try_from).collect()
    }

    /// Ends a running batch run: the run becomes `run_state` (with
    /// `error`), and each member as `ends` says, in one transaction.
    /// `false` (nothing changed) when the run is not running.
    pub async fn settle_batch(
        &self,
        run_id: &str,
        run_state: RunState,
        error: Option<&str>,
        ends: &[(String, MemberEnd)],
        now_ms: i64,
    ) -> Result<bool> {
        let _t = crate::metrics::store_timer("settle_batch");
        let mut tx = self.begin_write().await?;
        if !finish_running_tx(&mut tx, run_id, run_state, error, now_ms).await? {
            return Ok(false);
        }
        for (work_item_id, end) in ends {
            let item = queue_item_tx(&mut tx, work_item_id, run_id, now_ms).await?;
            let state = match end {
                MemberEnd::Succeeded => WorkState::Succeeded,
                MemberEnd::Retry { .. } => WorkState::Queued,
                MemberEnd::Dead { .. } => WorkState::Dead,
            };
            set_work_state_tx(&mut tx, work_item_id, state, now_ms).await?;
            match end {
                MemberEnd::Succeeded => {}
                MemberEnd::Retry {
                    run_id,
                    attempt,
                    not_before_ms,
                } => {
                    let retry = NewRun {
                        run_id,
                        work_item_id,
                        job: &item.job,
                        attempt: *attempt,
                        trigger: TriggerKind::Queue,
                        scheduled_ms: *not_before_ms,
                    };
                    insert_runs_tx(&mut tx, &[retry]).await?;
                }
                MemberEnd::Dead { reason, error } => {
                    insert_dead_letter_tx(&mut tx, work_item_id, &item, reason, 1, error, now_ms)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}
