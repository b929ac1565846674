//! Retention: finished history deleted after `retention.history`, payloads
//! of succeeded work cleared after `retention.payloads` (the policy and its
//! loop are [`crate::retention`]'s; this file holds the SQL).
//!
//! # What may go, and what never does
//!
//! A work item is **prunable** when it is finished (`succeeded`,
//! `cancelled` or `dead`) and last changed before the history cutoff, and
//! nothing still needs it:
//!
//! - none of its runs is `pending` or `running`;
//! - none of its dead letters is still open: a letter is closed when it
//!   was replayed, or forwarded to its broker's dead-letter target (the
//!   broker holds it from then on), and it is kept for `history` after
//!   that; an unreplayed, unforwarded letter keeps its work item for ever;
//! - every other member of any batch run it was in is prunable by the same
//!   two rules (a batch run hangs off its first member's work item, so a
//!   batch goes only once all its members may go).
//!
//! A prunable work item goes with its runs, their batch members, its dead
//! letters and its cron fire, in one transaction per batch of items. A
//! job's latest cron fire is never deleted: the scheduler resumes from it
//! after a restart (a pruned work item's latest fire only loses its
//! `work_item_id`). Other cron fires (skipped, missed, or whose work item
//! is gone) go once recorded before the cutoff. Closed dead letters go
//! after `history` on their own too, when their work item stays.
//!
//! Payloads: a `succeeded` work item's payload is cleared once it finished
//! before the payloads cutoff; a replayed dead letter's likewise. An open
//! dead letter and unfinished work keep theirs.
//!
//! Every statement works on at most `limit` rows, so a pass is a series of
//! short transactions that never hold the store for long.

use futures::TryStreamExt;

use super::{placeholder_list, Backend, Result, Store};
use crate::lifecycle::{RunState, WorkState};

/// Rows a pruning pass deleted or cleared (or, from
/// [`Store::prune_preview`], would), per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub work_items: u64,
    pub runs: u64,
    pub batch_members: u64,
    pub dead_letters: u64,
    pub cron_fires: u64,
    /// Payloads of succeeded work items cleared (the rows stay).
    pub work_item_payloads: u64,
    /// Payloads of replayed dead letters cleared (the rows stay).
    pub dead_letter_payloads: u64,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, o: Pruned) {
        self.work_items += o.work_items;
        self.runs += o.runs;
        self.batch_members += o.batch_members;
        self.dead_letters += o.dead_letters;
        self.cron_fires += o.cron_fires;
        self.work_item_payloads += o.work_item_payloads;
        self.dead_letter_payloads += o.dead_letter_payloads;
    }
}

/// One batch of work items pruned ([`Store::prune_items`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrunedItems {
    pub counts: Pruned,
    /// The runs deleted (their local run folders can go too).
    pub run_ids: Vec<String>,
}

/// The conditions under which work item `a` is finished and unneeded,
/// batches aside (see the module docs). Binds: `$1` the history cutoff,
/// `$2`–`$4` the finished work states, `$5`–`$6` the live run states
/// ([`bind_prunable!`]).
fn settled(a: &str) -> String {
    format!(
        "{a}.state IN ($2, $3, $4) AND {a}.updated_ms < $1 \
         AND NOT EXISTS (SELECT 1 FROM runs r_{a} \
             WHERE r_{a}.work_item_id = {a}.id AND r_{a}.state IN ($5, $6)) \
         AND NOT EXISTS (SELECT 1 FROM dead_letters d_{a} WHERE d_{a}.work_item_id = {a}.id \
             AND NOT (COALESCE(d_{a}.replayed_ms, d_{a}.forwarded_ms, $1) < $1))"
    )
}

/// Work item `a` may be pruned: [`settled`], and so is every other member
/// of every batch run it was in. Binds as [`settled`].
fn prunable(a: &str) -> String {
    let m = format!("m_{a}");
    format!(
        "{} AND NOT EXISTS (SELECT 1 FROM batch_members b_{a} \
             JOIN batch_members o_{a} ON o_{a}.run_id = b_{a}.run_id \
             JOIN work_items {m} ON {m}.id = o_{a}.work_item_id \
             WHERE b_{a}.work_item_id = {a}.id AND NOT ({}))",
        settled(a),
        settled(&m)
    )
}

/// Binds `$1`–`$6` of [`prunable`] on `q`.
macro_rules! bind_prunable {
    ($q:expr, $cutoff:expr) => {
        $q.bind($cutoff)
            .bind(WorkState::Succeeded.as_str())
            .bind(WorkState::Cancelled.as_str())
            .bind(WorkState::Dead.as_str())
            .bind(RunState::Pending.as_str())
            .bind(RunState::Running.as_str())
    };
}

/// A cron fire `f` that is not its job's latest (the scheduler resumes
/// from that one).
const NOT_LATEST_FIRE: &str =
    "f.fire_ms < (SELECT MAX(l.fire_ms) FROM cron_fires l WHERE l.job = f.job)";

/// A cron fire `f` recorded before `$1` whose work item, if it had one, is
/// gone.
const STANDALONE_OLD_FIRE: &str = "f.recorded_ms < $1 AND (f.work_item_id IS NULL \
     OR NOT EXISTS (SELECT 1 FROM work_items x WHERE x.id = f.work_item_id))";

/// A dead letter `d` closed (replayed or forwarded) before `$1`.
const CLOSED_OLD_LETTER: &str = "COALESCE(d.replayed_ms, d.forwarded_ms, $1) < $1";

impl Store {
    /// Deletes up to `limit` prunable work items (finished before
    /// `history_ms`; see the module docs) with their runs, batch members,
    /// dead letters and cron fires, in one transaction.
    pub async fn prune_items(&self, history_ms: i64, limit: i64) -> Result<PrunedItems> {
        let _t = crate::metrics::store_timer("prune_items");
        let mut tx = self.begin_write().await?;
        // On PostgreSQL, rows another transaction is changing are left for
        // the next pass rather than waited for.
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT w.id FROM work_items w WHERE {} LIMIT $7{lock}",
            prunable("w")
        );
        let ids: Vec<String> = bind_prunable!(sqlx::query_scalar(&sql), history_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(PrunedItems::default());
        }
        let list = placeholder_list(1, ids.len());
        let runs_sql = format!("SELECT run_id FROM runs WHERE work_item_id IN ({list})");
        let mut runs_q = sqlx::query_scalar::<_, String>(&runs_sql);
        for id in &ids {
            runs_q = runs_q.bind(id.as_str());
        }
        let run_ids = runs_q.fetch_all(&mut *tx).await?;
        // Children first: the foreign keys are checked at each statement.
        let statements = [
            format!(
                "DELETE FROM batch_members WHERE work_item_id IN ({list}) \
                 OR run_id IN (SELECT run_id FROM runs WHERE work_item_id IN ({list}))"
            ),
            format!("DELETE FROM runs WHERE work_item_id IN ({list})"),
            format!("DELETE FROM dead_letters WHERE work_item_id IN ({list})"),
            // A job's latest fire stays, without its work item.
            format!(
                "UPDATE cron_fires SET work_item_id = NULL WHERE work_item_id IN ({list}) \
                 AND fire_ms = (SELECT MAX(l.fire_ms) FROM cron_fires l WHERE l.job = cron_fires.job)"
            ),
            format!("DELETE FROM cron_fires WHERE work_item_id IN ({list})"),
            format!("DELETE FROM work_items WHERE id IN ({list})"),
        ];
        let mut changed = [0u64; 6];
        for (sql, n) in statements.iter().zip(&mut changed) {
            let mut q = sqlx::query(sql);
            for id in &ids {
                q = q.bind(id.as_str());
            }
            *n = q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        let [batch_members, runs, dead_letters, _, cron_fires, work_items] = changed;
        let counts = Pruned {
            work_items,
            runs,
            batch_members,
            dead_letters,
            cron_fires,
            ..Pruned::default()
        };
        Ok(PrunedItems { counts, run_ids })
    }

    /// Deletes up to `limit` dead letters closed (replayed, or forwarded to
    /// their broker) before `history_ms`. Their work items stay (they were
    /// not prunable, or [`Store::prune_items`] would have taken the letter).
    pub async fn prune_dead_letters(&self, history_ms: i64, limit: i64) -> Result<u64> {
        let sql = format!(
            "DELETE FROM dead_letters WHERE id IN \
             (SELECT d.id FROM dead_letters d WHERE {CLOSED_OLD_LETTER} LIMIT $2)"
        );
        self.write_one(sqlx::query(&sql).bind(history_ms).bind(limit))
            .await
    }

    /// Deletes up to `limit` cron fires recorded before `history_ms` whose
    /// work item is gone (or that never had one), never a job's latest.
    pub async fn prune_cron_fires(&self, history_ms: i64, limit: i64) -> Result<u64> {
        let sql = format!(
            "DELETE FROM cron_fires WHERE (job, fire_ms) IN \
             (SELECT f.job, f.fire_ms FROM cron_fires f \
              WHERE {STANDALONE_OLD_FIRE} AND {NOT_LATEST_FIRE} LIMIT $2)"
        );
        self.write_one(sqlx::query(&sql).bind(history_ms).bind(limit))
            .await
    }

    /// Clears the payloads of up to `limit` work items that succeeded
    /// before `payloads_ms`.
    pub async fn clear_payloads(&self, payloads_ms: i64, limit: i64) -> Result<u64> {
        let q = sqlx::query(
            "UPDATE work_items SET payload = NULL WHERE id IN \
             (SELECT id FROM work_items \
              WHERE state = $1 AND updated_ms < $2 AND payload IS NOT NULL LIMIT $3)",
        )
        .bind(WorkState::Succeeded.as_str())
        .bind(payloads_ms)
        .bind(limit);
        self.write_one(q).await
    }

    /// Clears the payloads of up to `limit` dead letters replayed before
    /// `payloads_ms` (an open letter keeps its payload).
    pub async fn clear_letter_payloads(&self, payloads_ms: i64, limit: i64) -> Result<u64> {
        let q = sqlx::query(
            "UPDATE dead_letters SET payload = NULL WHERE id IN \
             (SELECT id FROM dead_letters \
              WHERE replayed_ms < $1 AND payload IS NOT NULL LIMIT $2)",
        )
        .bind(payloads_ms)
        .bind(limit);
        self.write_one(q).await
    }

    /// What a pass with these cutoffs would delete and clear now, writing
    /// nothing (`kedge prune --dry-run`).
    pub async fn prune_preview(&self, history_ms: i64, payloads_ms: i64) -> Result<Pruned> {
        let items = format!("SELECT w.id FROM work_items w WHERE {}", prunable("w"));
        // Every count binds $1–$8 ($7 the payloads cutoff, $8 `succeeded`)
        // and names those it needs.
        let sql = [
            format!("SELECT COUNT(*) FROM work_items w WHERE {}", prunable("w")),
            format!("SELECT COUNT(*) FROM runs WHERE work_item_id IN ({items})"),
            format!(
                "SELECT COUNT(*) FROM batch_members WHERE (work_item_id IN ({items}) \
                 OR run_id IN (SELECT run_id FROM runs WHERE work_item_id IN ({items}))) \
                "
            ),
            format!("SELECT COUNT(*) FROM dead_letters d WHERE {CLOSED_OLD_LETTER}"),
            format!(
                "SELECT COUNT(*) FROM cron_fires f WHERE {NOT_LATEST_FIRE} \
                 AND (f.work_item_id IN ({items}) OR ({STANDALONE_OLD_FIRE}))"
            ),
            format!(
                "SELECT COUNT(*) FROM work_items w WHERE w.state = $8 AND w.updated_ms < $7 \
                 AND w.payload IS NOT NULL AND NOT ({})",
                prunable("w")
            ),
            format!(
                "SELECT COUNT(*) FROM dead_letters d WHERE d.replayed_ms < $7 \
                 AND d.payload IS NOT NULL AND NOT ({CLOSED_OLD_LETTER})"
            ),
        ];
        let mut n = [0u64; 7];
        for (sql, n) in sql.iter().zip(&mut n) {
            let count: i64 = bind_prunable!(sqlx::query_scalar(sql), history_ms)
                .bind(payloads_ms)
                .bind(WorkState::Succeeded.as_str())
                .fetch_one(&self.pool)
                .await?;
            *n = count.max(0) as u64;
        }
        let [work_items, runs, batch_members, dead_letters, cron_fires, work_item_payloads, dead_letter_payloads] =
            n;
        Ok(Pruned {
            work_items,
            runs,
            batch_members,
            dead_letters,
            cron_fires,
            work_item_payloads,
            dead_letter_payloads,
        })
    }

    /// Calls `each` with the id of every run [`Store::prune_items`] would
    /// delete now, streaming them (`kedge prune --dry-run` counts their
    /// local folders).
    pub async fn each_prunable_run(
        &self,
        history_ms: i64,
        mut each: impl FnMut(&str),
    ) -> Result<()> {
        let sql = format!(
            "SELECT r.run_id FROM runs r WHERE r.work_item_id IN \
             (SELECT w.id FROM work_items w WHERE {})",
            prunable("w")
        );
        let mut rows =
            bind_prunable!(sqlx::query_scalar::<_, String>(&sql), history_ms).fetch(&self.pool);
        while let Some(run_id) = rows.try_next().await? {
            each(&run_id);
        }
        Ok(())
    }
}
