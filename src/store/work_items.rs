//! `work_items`: intake. One row per message, cron fire or manual trigger,
//! unique per (source, job, message id), stored with its first run.

use std::collections::HashSet;

use super::batches::insert_batch_item_tx;
use super::dead_letters::insert_dead_letter_tx;
use super::runs::{insert_runs_tx, NewRun};
use super::{placeholders, Result, Store, Tx, ROWS_PER_STATEMENT};
use crate::lifecycle::{TriggerKind, WorkState};

/// A new work item and its first run, written by intake.
#[derive(Debug, Clone)]
pub struct NewWorkItem {
    pub job: String,
    /// `builtin`, `cron`, `manual`, or a broker source name.
    pub source: String,
    pub message_id: String,
    pub payload: Option<String>,
    pub deadline_ms: Option<i64>,
    pub trigger: TriggerKind,
    /// The first run's id ([`crate::lifecycle::run_name`], attempt 1).
    pub run_id: String,
    /// When the first run may start.
    pub scheduled_ms: i64,
}

/// How intake stores one message ([`Store::intake_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// A work item and its first pending run.
    Run,
    /// A work item waiting for a batch run.
    AwaitBatch,
    /// Refused: a dead work item and its dead letter.
    Dead { reason: String, error: String },
}

impl Store {
    /// Stores a work item and its first run. Returns `false` (and writes
    /// nothing) when the (source, job, message id) is already stored.
    /// A running daemon is woken to launch it (see `store::signal`).
    pub async fn insert_work_item(&self, item: &NewWorkItem) -> Result<bool> {
        self.intake_one(item, &Intake::Run).await
    }

    /// Stores what intake made of one claim's messages, all in one
    /// transaction (one commit per claim rather than per message). Returns,
    /// per item, whether it was written (`false`: stored before).
    pub async fn intake_many(&self, items: &[(NewWorkItem, Intake)]) -> Result<Vec<bool>> {
        let mut tx = self.begin_write().await?;
        let now = self.clock.now_ms();
        let mut out = Vec::with_capacity(items.len());
        for (item, how) in items {
            out.push(intake_tx(&mut tx, item, how, now).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Stores one message as `how` says, in a transaction of its own, and
    /// wakes a running daemon when anything was written.
    pub(super) async fn intake_one(&self, item: &NewWorkItem, how: &Intake) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let stored = intake_tx(&mut tx, item, how, self.clock.now_ms()).await?;
        tx.commit().await?;
        if stored {
            self.announce_work().await;
        }
        Ok(stored)
    }
}

/// Stores one message as `how` says. False when it was stored before.
async fn intake_tx(tx: &mut Tx, item: &NewWorkItem, how: &Intake, now: i64) -> Result<bool> {
    match how {
        Intake::Run => {
            let id = uuid::Uuid::new_v4().to_string();
            Ok(insert_items_tx(tx, &[(item, id)], now).await? == [true])
        }
        Intake::AwaitBatch => insert_batch_item_tx(tx, item, now).await,
        Intake::Dead { reason, error } => insert_dead_item_tx(tx, item, reason, error, now).await,
    }
}

/// Sets a work item's state.
pub(super) async fn set_work_state_tx(
    tx: &mut Tx,
    work_item_id: &str,
    state: WorkState,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE work_items SET state = $1, updated_ms = $2 WHERE id = $3")
        .bind(state.as_str())
        .bind(now)
        .bind(work_item_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts one work item row (no run) in `state`. False (nothing written)
/// when its (source, job, message id) is stored already.
pub(super) async fn insert_row_tx(
    tx: &mut Tx,
    id: &str,
    item: &NewWorkItem,
    state: WorkState,
    awaiting_batch: bool,
    now: i64,
) -> Result<bool> {
    let res = sqlx::query(
        "INSERT INTO work_items (id, job, source, message_id, payload, state, deadline_ms, \
         created_ms, updated_ms, awaiting_batch) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) \
         ON CONFLICT (source, job, message_id) DO NOTHING",
    )
    .bind(id)
    .bind(&item.job)
    .bind(&item.source)
    .bind(&item.message_id)
    .bind(item.payload.as_deref())
    .bind(state.as_str())
    .bind(item.deadline_ms)
    .bind(now)
    .bind(i64::from(awaiting_batch))
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Stores new work items (`queued`, with the given ids) and their first
/// pending runs with multi-row statements. An item whose (source, job,
/// message id) is stored already is revived if it was replayed
/// ([`revive_replayed_tx`]), else left alone as a duplicate. Per item:
/// whether anything was written.
pub(super) async fn insert_items_tx(
    tx: &mut Tx,
    items: &[(&NewWorkItem, String)],
    now: i64,
) -> Result<Vec<bool>> {
    let mut stored = Vec::with_capacity(items.len());
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO work_items (id, job, source, message_id, payload, state, deadline_ms, \
             created_ms, updated_ms) \
             VALUES {} ON CONFLICT (source, job, message_id) DO NOTHING RETURNING id",
            placeholders(chunk.len(), 9)
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for (item, id) in chunk {
            q = q
                .bind(id.as_str())
                .bind(&item.job)
                .bind(&item.source)
                .bind(&item.message_id)
                .bind(item.payload.as_deref())
                .bind(WorkState::Queued.as_str())
                .bind(item.deadline_ms)
                .bind(now)
                .bind(now);
        }
        let inserted: HashSet<String> = q.fetch_all(&mut **tx).await?.into_iter().collect();
        let mut runs = Vec::new();
        for (item, id) in chunk {
            if inserted.contains(id) {
                runs.push(NewRun {
                    run_id: &item.run_id,
                    work_item_id: id,
                    job: &item.job,
                    attempt: 1,
                    trigger: item.trigger,
                    scheduled_ms: item.scheduled_ms,
                });
                stored.push(true);
            } else {
                stored.push(revive_replayed_tx(tx, item, now).await?);
            }
        }
        insert_runs_tx(tx, &runs).await?;
    }
    Ok(stored)
}

/// A delivery of a message whose work item is `replayed` (its dead letter
/// was sent back to the source): queue the item again with a fresh retry
/// budget and a new pending run. Any other existing item: a duplicate,
/// nothing written.
pub(super) async fn revive_replayed_tx(tx: &mut Tx, item: &NewWorkItem, now: i64) -> Result<bool> {
    let Some((id, last)) = sqlx::query_as::<_, (String, Option<i64>)>(
        "SELECT w.id, (SELECT MAX(attempt) FROM runs r WHERE r.work_item_id = w.id) \
         FROM work_items w WHERE w.source = $1 AND w.job = $2 AND w.message_id = $3 \
         AND w.state = $4",
    )
    .bind(&item.source)
    .bind(&item.job)
    .bind(&item.message_id)
    .bind(WorkState::Replayed.as_str())
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let last = last.unwrap_or(0);
    let attempt = last + 1;
    let res = sqlx::query(
        "UPDATE work_items SET state = $1, attempt_base = $2, payload = $3, \
         deadline_ms = $4, updated_ms = $5 WHERE id = $6 AND state = $7",
    )
    .bind(WorkState::Queued.as_str())
    .bind(last)
    .bind(item.payload.as_deref())
    .bind(item.deadline_ms)
    .bind(now)
    .bind(&id)
    .bind(WorkState::Replayed.as_str())
    .execute(&mut **tx)
    .await?;
    if res.rows_affected() != 1 {
        return Ok(false);
    }
    let run_id =
        crate::lifecycle::attempt_run_name(&item.job, item.trigger, &item.message_id, attempt);
    let run = NewRun {
        run_id: &run_id,
        work_item_id: &id,
        job: &item.job,
        attempt,
        trigger: item.trigger,
        scheduled_ms: item.scheduled_ms,
    };
    insert_runs_tx(tx, &[run]).await?;
    Ok(true)
}

/// A message refused at intake: a `dead` work item and its dead letter.
/// False (nothing written) when the message is stored already.
async fn insert_dead_item_tx(
    tx: &mut Tx,
    item: &NewWorkItem,
    reason: &str,
    error: &str,
    now: i64,
) -> Result<bool> {
    let id = uuid::Uuid::new_v4().to_string();
    if !insert_row_tx(tx, &id, item, WorkState::Dead, false, now).await? {
        return Ok(false);
    }
    insert_dead_letter_tx(tx, &id, item, reason, 0, error, now).await?;
    Ok(true)
}

/// What a work item stores of its message.
#[derive(sqlx::FromRow)]
struct MessageRow {
    job: String,
    source: String,
    message_id: String,
    payload: Option<String>,
    deadline_ms: Option<i64>,
}

/// A queue message's work item as a [`NewWorkItem`] (for its dead letter
/// or its retry run `run_id`).
pub(super) async fn queue_item_tx(
    tx: &mut Tx,
    work_item_id: &str,
    run_id: &str,
    now: i64,
) -> Result<NewWorkItem> {
    let row: MessageRow = sqlx::query_as(
        "SELECT job, source, message_id, payload, deadline_ms FROM work_items WHERE id = $1",
    )
    .bind(work_item_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(NewWorkItem {
        job: row.job,
        source: row.source,
        message_id: row.message_id,
        payload: row.payload,
        deadline_ms: row.deadline_ms,
        trigger: TriggerKind::Queue,
        run_id: run_id.to_string(),
        scheduled_ms: now,
    })
}
