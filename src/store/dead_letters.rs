//! `dead_letters`: work items that will not run again unless replayed. A
//! letter is also an outbox entry: a broker source's letters are published
//! to its dead-letter target after they are stored here, so an unreachable
//! broker delays a letter but never loses it.

use super::rows::{insert_runs_tx, NewRun};
use super::{parse_column, Result, Store};
use crate::lifecycle::{TriggerKind, WorkState};

/// A dead-lettered work item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: String,
    pub work_item_id: String,
    pub job: String,
    pub source: String,
    pub message_id: String,
    pub payload: Option<String>,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub replayed_ms: Option<i64>,
}

const DEAD_LETTER_COLUMNS: &str = "id, work_item_id, job, source, message_id, payload, reason, \
     attempts, last_error, created_ms, replayed_ms";

impl Store {
    /// Dead letters, newest first; replayed ones only when `include_replayed`.
    pub async fn dead_letters(
        &self,
        job: Option<&str>,
        include_replayed: bool,
        limit: i64,
    ) -> Result<Vec<DeadLetter>> {
        let _t = crate::metrics::store_timer("dead_letters");
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
             WHERE ($1 IS NULL OR job = $1) AND ($2 = 1 OR replayed_ms IS NULL) \
             ORDER BY created_ms DESC, id LIMIT $3"
        );
        Ok(sqlx::query_as(&sql)
            .bind(job)
            .bind(i64::from(include_replayed))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// `(job, open dead letters)` for every job with any (not replayed).
    pub async fn open_dead_letter_counts(&self) -> Result<Vec<(String, i64)>> {
        let _t = crate::metrics::store_timer("open_dead_letter_counts");
        Ok(sqlx::query_as(
            "SELECT job, COUNT(*) FROM dead_letters WHERE replayed_ms IS NULL GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One dead letter by id.
    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1");
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    // ----- the outbox ---------------------------------------------------------

    /// Dead letters of `job` not yet published to its source's dead-letter
    /// target, oldest first.
    pub async fn dead_letters_to_forward(&self, job: &str, limit: i64) -> Result<Vec<DeadLetter>> {
        let _t = crate::metrics::store_timer("dead_letters_to_forward");
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
             WHERE job = $1 AND forwarded_ms IS NULL ORDER BY created_ms, id LIMIT $2"
        );
        Ok(sqlx::query_as(&sql)
            .bind(job)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Records that a dead letter was published to its target (`error`
    /// `None`), or why publishing failed this time (it is tried again).
    pub async fn mark_forwarded(&self, id: &str, error: Option<&str>, now_ms: i64) -> Result<()> {
        let _t = crate::metrics::store_timer("mark_forwarded");
        let q = match error {
            None => sqlx::query(
                "UPDATE dead_letters SET forwarded_ms = $1, forward_error = NULL WHERE id = $2",
            )
            .bind(now_ms)
            .bind(id),
            Some(e) => sqlx::query("UPDATE dead_letters SET forward_error = $1 WHERE id = $2")
                .bind(e)
                .bind(id),
        };
        self.write_one(q).await?;
        Ok(())
    }

    // ----- replay -------------------------------------------------------------

    /// First step of replaying a broker message's dead letter into its
    /// source: its work item becomes `replayed`, so the source's next
    /// delivery of it revives the item. The letter stays open until
    /// [`Store::finish_source_replay`]; if publishing fails,
    /// [`Store::abort_source_replay`] puts things back.
    pub async fn begin_source_replay(&self, id: &str, now_ms: i64) -> Result<Option<DeadLetter>> {
        let Some(letter) = self.dead_letter(id).await? else {
            return Ok(None);
        };
        if letter.replayed_ms.is_some() {
            return Ok(None);
        }
        let q = sqlx::query(
            "UPDATE work_items SET state = $1, updated_ms = $2 WHERE id = $3 AND state IN ($4, $5)",
        )
        .bind(WorkState::Replayed.as_str())
        .bind(now_ms)
        .bind(&letter.work_item_id)
        .bind(WorkState::Dead.as_str())
        .bind(WorkState::Replayed.as_str());
        self.write_one(q).await?;
        Ok(Some(letter))
    }

    /// The message is back in its source: close the letter.
    pub async fn finish_source_replay(&self, id: &str, now_ms: i64) -> Result<()> {
        self.write_one(close_letter(id, now_ms)).await?;
        Ok(())
    }

    /// Publishing the replay failed: the work item is dead again.
    pub async fn abort_source_replay(&self, work_item_id: &str, now_ms: i64) -> Result<()> {
        let q = sqlx::query(
            "UPDATE work_items SET state = $1, updated_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(WorkState::Dead.as_str())
        .bind(now_ms)
        .bind(work_item_id)
        .bind(WorkState::Replayed.as_str());
        self.write_one(q).await?;
        Ok(())
    }

    /// Returns a dead letter to its queue: the work item is queued again with
    /// a fresh retry budget and a new pending run (`run_id`, `attempt`).
    /// False when the letter does not exist or was already replayed. A
    /// running daemon is woken to launch it.
    pub async fn replay_dead_letter(
        &self,
        id: &str,
        run_id: &str,
        attempt: i64,
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res = close_letter(id, now_ms).execute(&mut *tx).await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        // LEFT JOIN: a message dead-lettered at intake has no run yet.
        let (work_item_id, job, trigger): (String, String, String) = sqlx::query_as(
            "SELECT w.id, w.job, COALESCE(r.trigger_kind, $2) FROM dead_letters d \
             JOIN work_items w ON w.id = d.work_item_id \
             LEFT JOIN runs r ON r.work_item_id = w.id \
             WHERE d.id = $1 ORDER BY r.attempt DESC LIMIT 1",
        )
        .bind(id)
        .bind(TriggerKind::Queue.as_str())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE work_items SET state = $1, attempt_base = $2, updated_ms = $3 WHERE id = $4",
        )
        .bind(WorkState::Queued.as_str())
        .bind(attempt - 1)
        .bind(now_ms)
        .bind(&work_item_id)
        .execute(&mut *tx)
        .await?;
        let run = NewRun {
            run_id,
            work_item_id: &work_item_id,
            job: &job,
            attempt,
            trigger: parse_column(&trigger)?,
            scheduled_ms: now_ms,
        };
        insert_runs_tx(&mut tx, &[run]).await?;
        tx.commit().await?;
        self.announce_work().await;
        Ok(true)
    }
}

/// Marks an open letter replayed (a replayed one is left as it was).
fn close_letter(
    id: &str,
    now_ms: i64,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query("UPDATE dead_letters SET replayed_ms = $1 WHERE id = $2 AND replayed_ms IS NULL")
        .bind(now_ms)
        .bind(id)
}
