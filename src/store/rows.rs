//! Row writers shared by the tables' transactions. A store call that
//! changes several tables at once (intake, settlement, replay) composes
//! these inside its one transaction; each writes rows of one table. The
//! table files (`work_items`, `runs`, `dead_letters`, `batches`,
//! `cron_fires`) import from here, never from each other.

use std::collections::HashSet;

use super::{placeholders, Result, Tx, ROWS_PER_STATEMENT};
use crate::lifecycle::{RunState, TriggerKind, WorkState};

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
pub(super) async fn insert_dead_item_tx(
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

/// A new pending run, as every insert into `runs` writes one.
pub(super) struct NewRun<'a> {
    pub run_id: &'a str,
    pub work_item_id: &'a str,
    pub job: &'a str,
    pub attempt: i64,
    pub trigger: TriggerKind,
    pub scheduled_ms: i64,
}

/// Inserts `runs` as `pending`, with multi-row statements.
pub(super) async fn insert_runs_tx(tx: &mut Tx, runs: &[NewRun<'_>]) -> Result<()> {
    for chunk in runs.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
             VALUES {}",
            placeholders(chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.run_id)
                .bind(r.work_item_id)
                .bind(r.job)
                .bind(r.attempt)
                .bind(RunState::Pending.as_str())
                .bind(r.trigger.as_str())
                .bind(r.scheduled_ms);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `running → state` (final), with `error`. False when the run was not
/// running. Guarded on `running` in the UPDATE itself: a SELECT before it
/// takes no row lock, so on PostgreSQL (READ COMMITTED) two concurrent
/// settlements could both read `running`; this UPDATE waits for the other
/// one's row lock and re-checks the guard, so only one of them settles.
pub(super) async fn finish_running_tx(
    tx: &mut Tx,
    run_id: &str,
    state: RunState,
    error: Option<&str>,
    now: i64,
) -> Result<bool> {
    let res = sqlx::query(
        "UPDATE runs SET state = $1, finished_ms = $2, error = $3 \
         WHERE run_id = $4 AND state = $5",
    )
    .bind(state.as_str())
    .bind(now)
    .bind(error)
    .bind(run_id)
    .bind(RunState::Running.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Writes the dead letter of work item `work_item_id` (its message is
/// `item`'s) after `attempts` attempts.
pub(super) async fn insert_dead_letter_tx(
    tx: &mut Tx,
    work_item_id: &str,
    item: &NewWorkItem,
    reason: &str,
    attempts: i64,
    error: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO dead_letters (id, work_item_id, job, source, message_id, payload, \
         reason, attempts, last_error, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(work_item_id)
    .bind(&item.job)
    .bind(&item.source)
    .bind(&item.message_id)
    .bind(item.payload.as_deref())
    .bind(reason)
    .bind(attempts)
    .bind(error)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores a message waiting for a batch (`queued`, `awaiting_batch`, no
/// run), or revives its replayed work item. False when it is a duplicate.
pub(super) async fn insert_batch_item_tx(
    tx: &mut Tx,
    item: &NewWorkItem,
    now: i64,
) -> Result<bool> {
    let id = uuid::Uuid::new_v4().to_string();
    if insert_row_tx(tx, &id, item, WorkState::Queued, true, now).await? {
        return Ok(true);
    }
    revive_replayed_tx(tx, item, now).await
}

/// An operator action to record in the audit log, written by
/// [`insert_audit_tx`] in the same transaction as the change it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: the OS user for the CLI, the API token's name for the HTTP API.
    pub actor: String,
    /// What: `pause`, `resume`, `hold`, `release`, `ice`, `unice`,
    /// `backfill`, `rerun`.
    pub action: String,
    pub job: Option<String>,
    pub run_id: Option<String>,
    /// Why, as the operator said (`--reason`).
    pub reason: Option<String>,
    /// What the action did, as JSON (the runs it created, the range…).
    pub details: Option<String>,
}

/// Appends `entry` to the audit log, stamped `now`.
pub(super) async fn insert_audit_tx(tx: &mut Tx, entry: &AuditEntry, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, at_ms, actor, action, job, run_id, reason, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(entry.job.as_deref())
    .bind(entry.run_id.as_deref())
    .bind(entry.reason.as_deref())
    .bind(entry.details.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A work item's latest run, as a new attempt needs it.
#[derive(sqlx::FromRow)]
struct LastRun {
    job: String,
    message_id: String,
    trigger_kind: String,
    attempt: i64,
}

/// Runs a finished work item again: a new pending run (the next attempt,
/// due `now`) with a fresh retry budget, the item `queued` again (its
/// backfill, if any, set to `backfill`), and its open dead letters closed
/// as replayed. The caller has checked that no run of it is active. Returns
/// the new run's id.
pub(super) async fn new_attempt_tx(
    tx: &mut Tx,
    work_item_id: &str,
    backfill: Option<&str>,
    now: i64,
) -> Result<String> {
    let last: LastRun = sqlx::query_as(
        "SELECT w.job, w.message_id, r.trigger_kind, r.attempt FROM work_items w \
         JOIN runs r ON r.work_item_id = w.id WHERE w.id = $1 ORDER BY r.attempt DESC LIMIT 1",
    )
    .bind(work_item_id)
    .fetch_one(&mut **tx)
    .await?;
    let trigger: TriggerKind = super::parse_column(&last.trigger_kind)?;
    let attempt = last.attempt + 1;
    let run_id = crate::lifecycle::attempt_run_name(&last.job, trigger, &last.message_id, attempt);
    sqlx::query(
        "UPDATE work_items SET state = $1, attempt_base = $2, backfill_id = $3, updated_ms = $4 \
         WHERE id = $5",
    )
    .bind(WorkState::Queued.as_str())
    .bind(last.attempt)
    .bind(backfill)
    .bind(now)
    .bind(work_item_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE dead_letters SET replayed_ms = $1 WHERE work_item_id = $2 AND replayed_ms IS NULL",
    )
    .bind(now)
    .bind(work_item_id)
    .execute(&mut **tx)
    .await?;
    let run = NewRun {
        run_id: &run_id,
        work_item_id,
        job: &last.job,
        attempt,
        trigger,
        scheduled_ms: now,
    };
    insert_runs_tx(tx, &[run]).await?;
    Ok(run_id)
}
