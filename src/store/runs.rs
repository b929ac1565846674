//! `runs`: one row per attempt at a work item. Dispatch (due, claim,
//! requeue, cancel), sizing, settlement and listing.

use std::collections::HashSet;

use super::rows::{
    finish_running_tx, insert_audit_tx, insert_dead_letter_tx, insert_runs_tx, new_attempt_tx,
    set_work_state_tx, AuditEntry, NewRun, NewWorkItem,
};
use super::{parse_column, placeholder_list, Result, Store, StoreError, Tx, ROWS_PER_STATEMENT};
use crate::lifecycle::{OperatorState, RunState, TriggerKind, WorkState};

/// A run joined with its work item: everything needed to launch or settle it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Run {
    pub run_id: String,
    pub work_item_id: String,
    pub job: String,
    pub attempt: i64,
    pub state: RunState,
    pub trigger: TriggerKind,
    pub scheduled_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub launches: i64,
    /// When this attempt's first launch was tried (launch_timeout counts
    /// from here).
    #[serde(skip)]
    pub first_launch_ms: Option<i64>,
    pub error: Option<String>,
    pub source: String,
    pub message_id: String,
    #[serde(skip)]
    pub payload: Option<String>,
    pub deadline_ms: Option<i64>,
    /// Attempts made before the last dlq replay (the retry budget restarts there).
    pub attempt_base: i64,
    /// The planner's decision, once the run was sized (jobs with `sizing`).
    pub sizing: Option<RunSizing>,
    /// The `kedge backfill` whose cap the run launches under.
    pub backfill_id: Option<String>,
}

/// What the planner decided for a run, recorded at launch (and updated when
/// in-flight re-planning raises the parallelism).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSizing {
    pub work: f64,
    pub parallelism: i64,
    pub completions: i64,
    pub projected_finish_ms: i64,
    pub at_risk: bool,
    pub note: String,
}

/// One finished, successful sized run: what the rate model learns from.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct HistoryRow {
    pub work: f64,
    pub parallelism: i64,
    pub duration_ms: i64,
}

/// How a run ends, decided by the finalizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The run succeeded; the work item is done.
    Succeeded,
    /// The run failed and another attempt is scheduled.
    Retry {
        error: String,
        next_run_id: String,
        next_attempt: i64,
        not_before_ms: i64,
    },
    /// The run failed for the last time: dead-letter the work item.
    Dead { error: String, reason: String },
    /// The run was stopped on purpose (a newer cron fire replaced it).
    Cancelled { error: String },
}

/// A [`Run`] as stored: [`RUN_COLUMNS`] by name, states as text.
#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: String,
    work_item_id: String,
    job: String,
    attempt: i64,
    state: String,
    trigger_kind: String,
    scheduled_ms: i64,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    launches: i64,
    first_launch_ms: Option<i64>,
    error: Option<String>,
    source: String,
    message_id: String,
    payload: Option<String>,
    deadline_ms: Option<i64>,
    attempt_base: i64,
    work: Option<f64>,
    parallelism: Option<i64>,
    completions: Option<i64>,
    projected_finish_ms: Option<i64>,
    at_risk: Option<i64>,
    sizing_note: Option<String>,
    backfill_id: Option<String>,
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;
    fn try_from(r: RunRow) -> Result<Run> {
        // A run is sized once both the work and the parallelism are known.
        let sizing = match (r.work, r.parallelism) {
            (Some(work), Some(parallelism)) => Some(RunSizing {
                work,
                parallelism,
                completions: r.completions.unwrap_or(parallelism),
                projected_finish_ms: r.projected_finish_ms.unwrap_or(0),
                at_risk: r.at_risk.unwrap_or(0) != 0,
                note: r.sizing_note.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Run {
            state: parse_column(&r.state)?,
            trigger: parse_column(&r.trigger_kind)?,
            run_id: r.run_id,
            work_item_id: r.work_item_id,
            job: r.job,
            attempt: r.attempt,
            scheduled_ms: r.scheduled_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            launches: r.launches,
            first_launch_ms: r.first_launch_ms,
            error: r.error,
            source: r.source,
            message_id: r.message_id,
            payload: r.payload,
            deadline_ms: r.deadline_ms,
            attempt_base: r.attempt_base,
            sizing,
            backfill_id: r.backfill_id,
        })
    }
}

impl Run {
    /// The run's message as a [`NewWorkItem`] (what its dead letter copies).
    fn message(&self) -> NewWorkItem {
        NewWorkItem {
            job: self.job.clone(),
            source: self.source.clone(),
            message_id: self.message_id.clone(),
            payload: self.payload.clone(),
            deadline_ms: self.deadline_ms,
            trigger: self.trigger,
            run_id: self.run_id.clone(),
            scheduled_ms: self.scheduled_ms,
        }
    }
}

const RUN_COLUMNS: &str = "r.run_id, r.work_item_id, r.job, r.attempt, r.state, r.trigger_kind, \
     r.scheduled_ms, r.started_ms, r.finished_ms, r.launches, r.first_launch_ms, r.error, \
     w.source, w.message_id, w.payload, w.deadline_ms, w.attempt_base, \
     r.work, r.parallelism, r.completions, r.projected_finish_ms, r.at_risk, r.sizing_note, \
     w.backfill_id";

/// `SELECT` of [`RUN_COLUMNS`] (runs `r` joined with their work items `w`)
/// followed by `rest` (`WHERE …`, `ORDER BY …`).
/// The order due runs are offered in: earliest deadline first (runs
/// without one last), then oldest.
const DUE_ORDER: &str = "ORDER BY CASE WHEN w.deadline_ms IS NULL THEN 1 ELSE 0 END, \
     w.deadline_ms, r.scheduled_ms, r.run_id";

fn select_runs(rest: &str) -> String {
    format!("SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id {rest}")
}

fn runs_from_rows(rows: Vec<RunRow>) -> Result<Vec<Run>> {
    rows.into_iter().map(Run::try_from).collect()
}

/// One run, read inside a transaction.
async fn run_tx(tx: &mut Tx, run_id: &str) -> Result<Option<Run>> {
    let row: Option<RunRow> = sqlx::query_as(&select_runs("WHERE r.run_id = $1"))
        .bind(run_id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(Run::try_from).transpose()
}

/// `UPDATE runs SET … running … WHERE state = pending AND run_id IN (n
/// ids)`: binds the start time, then the two states, then `active`, then
/// the ids. A run of a job an operator paused, held or iced is not claimed,
/// even when the change committed after the dispatcher read the states.
fn claim_sql(n: usize) -> String {
    format!(
        "UPDATE runs SET state = $2, started_ms = $1, launches = launches + 1, \
         first_launch_ms = COALESCE(first_launch_ms, $1) \
         WHERE state = $3 AND run_id IN ({}) \
         AND NOT EXISTS (SELECT 1 FROM job_controls c WHERE c.job = runs.job AND c.state <> $4) \
         RETURNING run_id",
        placeholder_list(5, n)
    )
}

impl Store {
    // ----- dispatch ---------------------------------------------------------

    /// Pending runs whose time has come, earliest deadline first, then oldest.
    pub async fn due_runs(&self, now_ms: i64, limit: i64) -> Result<Vec<Run>> {
        let _t = crate::metrics::store_timer("due_runs");
        let sql = select_runs(&format!(
            "WHERE r.state = $1 AND r.scheduled_ms <= $2 {DUE_ORDER} LIMIT $3"
        ));
        let rows = sqlx::query_as(&sql)
            .bind(RunState::Pending.as_str())
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        runs_from_rows(rows)
    }

    /// `job`'s due pending runs, in the job's own order (earliest
    /// deadline, then oldest), at most `limit`: the heads of the jobs a
    /// backlog in another job pushed out of [`Store::due_runs`].
    pub async fn due_runs_of(&self, job: &str, now_ms: i64, limit: i64) -> Result<Vec<Run>> {
        let _t = crate::metrics::store_timer("due_runs_of");
        let sql = select_runs(&format!(
            "WHERE r.job = $1 AND r.state = $2 AND r.scheduled_ms <= $3 {DUE_ORDER} LIMIT $4"
        ));
        let rows = sqlx::query_as(&sql)
            .bind(job)
            .bind(RunState::Pending.as_str())
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        runs_from_rows(rows)
    }

    /// When the next pending run becomes due, if any is waiting.
    pub async fn next_due_ms(&self) -> Result<Option<i64>> {
        let _t = crate::metrics::store_timer("next_due_ms");
        Ok(
            sqlx::query_scalar("SELECT MIN(scheduled_ms) FROM runs WHERE state = $1")
                .bind(RunState::Pending.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// `(job, running, pending)` for every job with active runs.
    pub async fn active_counts(&self) -> Result<Vec<(String, i64, i64)>> {
        let _t = crate::metrics::store_timer("active_counts");
        Ok(sqlx::query_as(
            "SELECT job, \
                    SUM(CASE WHEN state = $1 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN state = $2 THEN 1 ELSE 0 END) \
             FROM runs WHERE state IN ($1, $2) GROUP BY job",
        )
        .bind(RunState::Running.as_str())
        .bind(RunState::Pending.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// One job's (running, pending) run counts: what a cron fire's overlap
    /// policy needs, without aggregating every job's active runs.
    pub async fn active_count_of(&self, job: &str) -> Result<(i64, i64)> {
        let _t = crate::metrics::store_timer("active_count_of");
        Ok(sqlx::query_as(
            "SELECT COUNT(CASE WHEN state = $2 THEN 1 END), \
                    COUNT(CASE WHEN state = $3 THEN 1 END) \
             FROM runs WHERE job = $1 AND state IN ($2, $3)",
        )
        .bind(job)
        .bind(RunState::Running.as_str())
        .bind(RunState::Pending.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// `job`'s latest finished work, for its dependents' `after`: the end
    /// (ms) of its newest run that succeeded or is dead (failed for the
    /// last time; a failed attempt that is retried is not an end), and
    /// whether it succeeded.
    pub async fn latest_end_of(&self, job: &str) -> Result<Option<(i64, bool)>> {
        let _t = crate::metrics::store_timer("latest_end_of");
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT finished_ms, state FROM runs \
             WHERE job = $1 AND state IN ($2, $3) AND finished_ms IS NOT NULL \
             ORDER BY finished_ms DESC LIMIT 1",
        )
        .bind(job)
        .bind(RunState::Succeeded.as_str())
        .bind(RunState::Dead.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(end, state)| (end, state == RunState::Succeeded.as_str())))
    }

    /// `pending → running`. False when the run was not pending (someone else
    /// claimed or settled it).
    pub async fn claim_run(&self, run_id: &str, now_ms: i64) -> Result<bool> {
        let claimed = sqlx::query(&claim_sql(1))
            .bind(now_ms)
            .bind(RunState::Running.as_str())
            .bind(RunState::Pending.as_str())
            .bind(OperatorState::Active.as_str())
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(claimed.is_some())
    }

    /// [`Store::claim_run`] for many runs in one transaction (one commit):
    /// per run, whether this call claimed it.
    pub async fn claim_runs(&self, run_ids: &[&str], now_ms: i64) -> Result<Vec<bool>> {
        let _t = crate::metrics::store_timer("claim_runs");
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut claimed = HashSet::new();
        for chunk in run_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = claim_sql(chunk.len());
            let mut q = sqlx::query_scalar::<_, String>(&sql)
                .bind(now_ms)
                .bind(RunState::Running.as_str())
                .bind(RunState::Pending.as_str())
                .bind(OperatorState::Active.as_str());
            for id in chunk {
                q = q.bind(*id);
            }
            claimed.extend(q.fetch_all(&mut *tx).await?);
        }
        tx.commit().await?;
        Ok(run_ids.iter().map(|id| claimed.contains(*id)).collect())
    }

    /// Undoes [`Store::claim_runs`] for runs that were not launched after
    /// all (`running → pending`, the launch count restored).
    pub async fn unclaim_runs(&self, run_ids: &[&str]) -> Result<()> {
        let _t = crate::metrics::store_timer("unclaim_runs");
        if run_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for run_id in run_ids {
            sqlx::query(
                "UPDATE runs SET state = $1, started_ms = NULL, launches = launches - 1, \
                 first_launch_ms = CASE WHEN launches = 1 THEN NULL ELSE first_launch_ms END \
                 WHERE run_id = $2 AND state = $3",
            )
            .bind(RunState::Pending.as_str())
            .bind(*run_id)
            .bind(RunState::Running.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ids of `job`'s running runs.
    pub async fn active_runs_of(&self, job: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT run_id FROM runs WHERE job = $1 AND state = $2")
                .bind(job)
                .bind(RunState::Running.as_str())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Cancels `job`'s pending runs (`pending → failed`, work item
    /// `cancelled`): for overlap `replace`. Returns how many.
    pub async fn cancel_pending_runs(&self, job: &str, note: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        // Runs first, then the work items of exactly the runs this UPDATE
        // failed. (Two statements that each select `pending` runs would, on
        // PostgreSQL's READ COMMITTED, see different sets when a claim,
        // requeue or intake commits in between: a cancelled work item with
        // a running run, or a failed run whose work item stays queued.)
        // RETURNING is portable: PostgreSQL, and SQLite >= 3.35 (sqlx bundles 3.46).
        let work_items: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET state = $1, finished_ms = $2, error = $3 \
             WHERE job = $4 AND state = $5 RETURNING work_item_id",
        )
        .bind(RunState::Failed.as_str())
        .bind(now_ms)
        .bind(note)
        .bind(job)
        .bind(RunState::Pending.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for work_item_id in &work_items {
            set_work_state_tx(&mut tx, work_item_id, WorkState::Cancelled, now_ms).await?;
        }
        tx.commit().await?;
        Ok(work_items.len() as u64)
    }

    /// `running → pending` (same attempt, launched again later): for runs a
    /// shutdown or crash interrupted, and for a launch the executor refused
    /// or could not complete. False when the run was not running.
    pub async fn requeue_run(&self, run_id: &str, note: &str) -> Result<bool> {
        let _t = crate::metrics::store_timer("requeue_run");
        let res = sqlx::query(
            "UPDATE runs SET state = $1, started_ms = NULL, error = $2 \
             WHERE run_id = $3 AND state = $4",
        )
        .bind(RunState::Pending.as_str())
        .bind(note)
        .bind(run_id)
        .bind(RunState::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// `running → pending` after a launch that failed for a reason that may
    /// pass: the run is due again at `not_before_ms` (its backoff). False
    /// when the run was not running.
    pub async fn requeue_launch(
        &self,
        run_id: &str,
        note: &str,
        not_before_ms: i64,
    ) -> Result<bool> {
        let _t = crate::metrics::store_timer("requeue_launch");
        let res = sqlx::query(
            "UPDATE runs SET state = $1, started_ms = NULL, error = $2, scheduled_ms = $3 \
             WHERE run_id = $4 AND state = $5",
        )
        .bind(RunState::Pending.as_str())
        .bind(note)
        .bind(not_before_ms)
        .bind(run_id)
        .bind(RunState::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Runs in a state, oldest first (start-up recovery uses `running`).
    pub async fn runs_in_state(&self, state: RunState) -> Result<Vec<Run>> {
        let _t = crate::metrics::store_timer("runs_in_state");
        let sql = select_runs("WHERE r.state = $1 ORDER BY r.scheduled_ms, r.run_id");
        let rows = sqlx::query_as(&sql)
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await?;
        runs_from_rows(rows)
    }

    /// Pods in use per job: the sum of running runs' parallelism (1 for
    /// runs that were not sized).
    pub async fn running_pods(&self) -> Result<Vec<(String, i64)>> {
        let _t = crate::metrics::store_timer("running_pods");
        Ok(sqlx::query_as(
            "SELECT job, CAST(SUM(COALESCE(parallelism, 1)) AS BIGINT) FROM runs \
             WHERE state = $1 GROUP BY job",
        )
        .bind(RunState::Running.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many runs of `job` are pending: waiting to launch, whether their
    /// time has come or not (a retry waiting out its backoff counts). The
    /// `queue_length` work probe.
    pub async fn pending_runs(&self, job: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE job = $1 AND state = $2")
                .bind(job)
                .bind(RunState::Pending.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    // ----- sizing -----------------------------------------------------------

    /// Records the planner's decision for a run (at launch).
    pub async fn record_sizing(&self, run_id: &str, s: &RunSizing) -> Result<()> {
        let _t = crate::metrics::store_timer("record_sizing");
        sqlx::query(
            "UPDATE runs SET work = $1, parallelism = $2, completions = $3, \
             projected_finish_ms = $4, at_risk = $5, sizing_note = $6 WHERE run_id = $7",
        )
        .bind(s.work)
        .bind(s.parallelism)
        .bind(s.completions)
        .bind(s.projected_finish_ms)
        .bind(i64::from(s.at_risk))
        .bind(&s.note)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest `limit` succeeded, sized runs of `job`, newest first.
    pub async fn sizing_history(&self, job: &str, limit: i64) -> Result<Vec<HistoryRow>> {
        Ok(sqlx::query_as(
            "SELECT work, parallelism, finished_ms - started_ms AS duration_ms FROM runs \
             WHERE job = $1 AND state = $2 AND work IS NOT NULL \
               AND parallelism IS NOT NULL AND started_ms IS NOT NULL AND finished_ms IS NOT NULL \
             ORDER BY finished_ms DESC LIMIT $3",
        )
        .bind(job)
        .bind(RunState::Succeeded.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The work measured for `job`'s most recent sized run, if any.
    pub async fn last_work(&self, job: &str) -> Result<Option<f64>> {
        let work: Option<Option<f64>> = sqlx::query_scalar(
            "SELECT work FROM runs WHERE job = $1 AND work IS NOT NULL \
             ORDER BY started_ms DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        Ok(work.flatten())
    }

    // ----- reading ----------------------------------------------------------

    pub async fn get_run(&self, run_id: &str) -> Result<Option<Run>> {
        let _t = crate::metrics::store_timer("get_run");
        let row: Option<RunRow> = sqlx::query_as(&select_runs("WHERE r.run_id = $1"))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Run::try_from).transpose()
    }

    /// The latest runs (by scheduled time), optionally of one job and/or state.
    pub async fn list_runs(
        &self,
        job: Option<&str>,
        state: Option<RunState>,
        limit: i64,
    ) -> Result<Vec<Run>> {
        let _t = crate::metrics::store_timer("list_runs");
        let sql = select_runs(
            "WHERE ($1 IS NULL OR r.job = $1) AND ($2 IS NULL OR r.state = $2) \
             ORDER BY r.scheduled_ms DESC, r.run_id DESC LIMIT $3",
        );
        let rows = sqlx::query_as(&sql)
            .bind(job)
            .bind(state.map(RunState::as_str))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        runs_from_rows(rows)
    }

    /// The highest attempt number of a work item's runs.
    pub async fn last_attempt(&self, work_item_id: &str) -> Result<i64> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(attempt) FROM runs WHERE work_item_id = $1")
                .bind(work_item_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(last.unwrap_or(0))
    }

    // ----- settlement -------------------------------------------------------

    /// Ends a running run as `settlement` says, in one transaction. Returns
    /// `false` (and changes nothing) when the run is not `running`, so an
    /// outcome reported twice settles once.
    pub async fn settle(&self, run_id: &str, settlement: &Settlement, now_ms: i64) -> Result<bool> {
        let _t = crate::metrics::store_timer("settle");
        let mut tx = self.begin_write().await?;
        let Some(run) = run_tx(&mut tx, run_id).await? else {
            return Ok(false);
        };
        if run.state != RunState::Running {
            return Ok(false);
        }
        let (run_state, work_state, error) = match settlement {
            Settlement::Succeeded => (RunState::Succeeded, WorkState::Succeeded, None),
            Settlement::Retry { error, .. } => (RunState::Failed, WorkState::Queued, Some(error)),
            Settlement::Dead { error, .. } => (RunState::Dead, WorkState::Dead, Some(error)),
            Settlement::Cancelled { error } => {
                (RunState::Failed, WorkState::Cancelled, Some(error))
            }
        };
        let error = error.map(String::as_str);
        if !finish_running_tx(&mut tx, run_id, run_state, error, now_ms).await? {
            return Ok(false);
        }
        set_work_state_tx(&mut tx, &run.work_item_id, work_state, now_ms).await?;
        match settlement {
            Settlement::Retry {
                next_run_id,
                next_attempt,
                not_before_ms,
                ..
            } => {
                let next = NewRun {
                    run_id: next_run_id,
                    work_item_id: &run.work_item_id,
                    job: &run.job,
                    attempt: *next_attempt,
                    trigger: run.trigger,
                    scheduled_ms: *not_before_ms,
                };
                insert_runs_tx(&mut tx, &[next]).await?;
            }
            Settlement::Dead { error, reason } => {
                let attempts = run.attempt - run.attempt_base;
                insert_dead_letter_tx(
                    &mut tx,
                    &run.work_item_id,
                    &run.message(),
                    reason,
                    attempts,
                    error,
                    now_ms,
                )
                .await?;
            }
            Settlement::Succeeded | Settlement::Cancelled { .. } => {}
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Dead-letters a pending run whose message's own deadline passed
    /// before it could launch (reason `expired`). `false` when the run is no
    /// longer pending.
    pub async fn expire_run(&self, run_id: &str, now_ms: i64) -> Result<bool> {
        let _t = crate::metrics::store_timer("expire_run");
        let mut tx = self.begin_write().await?;
        let Some(run) = run_tx(&mut tx, run_id).await? else {
            return Ok(false);
        };
        let error = match run.deadline_ms {
            Some(d) => format!(
                "the message's deadline {} passed before the run could launch",
                chrono::DateTime::from_timestamp_millis(d)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_else(|| d.to_string())
            ),
            None => "the message's deadline passed before the run could launch".into(),
        };
        let res = sqlx::query(
            "UPDATE runs SET state = $1, finished_ms = $2, error = $3 \
             WHERE run_id = $4 AND state = $5",
        )
        .bind(RunState::Dead.as_str())
        .bind(now_ms)
        .bind(&error)
        .bind(run_id)
        .bind(RunState::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        set_work_state_tx(&mut tx, &run.work_item_id, WorkState::Dead, now_ms).await?;
        insert_dead_letter_tx(
            &mut tx,
            &run.work_item_id,
            &run.message(),
            "expired",
            run.attempt - 1 - run.attempt_base,
            &error,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Operator reruns (`kedge rerun`).
impl Store {
    /// Runs a finished run's work again: a new attempt of its work item
    /// with a fresh retry budget, recorded with its audit entry in one
    /// transaction. `Err(state)` of the run (or of a newer attempt) when its
    /// work is not finished; `Ok(None)` when there is no such run.
    pub async fn rerun(
        &self,
        run_id: &str,
        audit: &AuditEntry,
    ) -> Result<Option<std::result::Result<String, RunState>>> {
        let mut tx = self.begin_write().await?;
        let now = self.clock.now_ms();
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT work_item_id, state FROM runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((work_item_id, state)) = row else {
            return Ok(None);
        };
        let state: RunState = parse_column(&state)?;
        if !state.is_final() {
            return Ok(Some(Err(state)));
        }
        let active: Option<String> = sqlx::query_scalar(
            "SELECT state FROM runs WHERE work_item_id = $1 AND state IN ($2, $3) LIMIT 1",
        )
        .bind(&work_item_id)
        .bind(RunState::Pending.as_str())
        .bind(RunState::Running.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(s) = active {
            return Ok(Some(Err(parse_column(&s)?)));
        }
        let new_run = new_attempt_tx(&mut tx, &work_item_id, None, now).await?;
        let mut audit = audit.clone();
        audit.details = Some(serde_json::json!({ "new_run": new_run }).to_string());
        insert_audit_tx(&mut tx, &audit, now).await?;
        tx.commit().await?;
        self.announce_work().await;
        Ok(Some(Ok(new_run)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_binds_the_ids_after_the_time_and_states() {
        assert_eq!(
            claim_sql(2),
            "UPDATE runs SET state = $2, started_ms = $1, launches = launches + 1, \
         first_launch_ms = COALESCE(first_launch_ms, $1) \
         WHERE state = $3 AND run_id IN ($5, $6) \
         AND NOT EXISTS (SELECT 1 FROM job_controls c WHERE c.job = runs.job AND c.state <> $4) \
         RETURNING run_id"
        );
    }
}
