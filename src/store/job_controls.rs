//! `job_controls`: each job's operator state (`kedge pause | hold | ice`
//! and back), so it survives restarts. A job without a row is `active`.
//!
//! Every change is one transaction with its audit record and, on leaving
//! `paused` or `held`, with the fires it catches up ([`StateChange`]).

use std::collections::HashMap;

use super::rows::{insert_audit_tx, insert_items_tx, AuditEntry, NewWorkItem};
use super::{parse_column, placeholder_list, Backend, Result, Store, StoreError, Tx};
use crate::lifecycle::{FireOutcome, OperatorState};

/// A job's operator state as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobControl {
    pub job: String,
    pub state: OperatorState,
    pub reason: Option<String>,
    /// Who set it.
    pub actor: String,
    /// When it was set (Unix ms).
    pub since_ms: i64,
}

#[derive(sqlx::FromRow)]
struct ControlRow {
    job: String,
    state: String,
    reason: Option<String>,
    actor: String,
    since_ms: i64,
}

impl TryFrom<ControlRow> for JobControl {
    type Error = StoreError;
    fn try_from(r: ControlRow) -> Result<JobControl> {
        Ok(JobControl {
            state: parse_column(&r.state)?,
            job: r.job,
            reason: r.reason,
            actor: r.actor,
            since_ms: r.since_ms,
        })
    }
}

/// Which fires the job catches up when it leaves its state: given the fire
/// times (Unix ms, ascending) recorded `skipped: <state>` while it was in
/// it, the work items of those that run now (their `scheduled_ms` is the
/// fire time).
pub type CatchUp<'a> = &'a (dyn Fn(&[i64]) -> Vec<NewWorkItem> + Sync);

/// One change of a job's operator state ([`Store::change_job_state`]).
pub struct StateChange<'a> {
    pub job: &'a str,
    pub to: OperatorState,
    /// The states the change is allowed from; any other refuses it.
    pub from: &'a [OperatorState],
    pub reason: Option<&'a str>,
    pub audit: AuditEntry,
    /// Leaving `paused` or `held`: the fires skipped meanwhile to run now.
    pub catch_up: Option<CatchUp<'a>>,
}

/// What [`Store::change_job_state`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Done. `previous` is the state left; `caught_up` the fire times
    /// (Unix ms) whose runs were created.
    Done {
        previous: JobControl,
        caught_up: Vec<i64>,
    },
    /// Refused: the job is in `current`, not in one of the `from` states.
    Refused { current: JobControl },
}

/// The detail of a fire skipped because its job was in `state`.
pub fn skipped_detail(state: OperatorState) -> &'static str {
    state.as_str()
}

impl Store {
    /// The operator state of every job that has one recorded (resumed jobs
    /// read `active`, with who resumed them), by job name.
    pub async fn job_controls(&self) -> Result<Vec<JobControl>> {
        let rows: Vec<ControlRow> = sqlx::query_as(
            "SELECT job, state, reason, actor, since_ms FROM job_controls ORDER BY job",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(JobControl::try_from).collect()
    }

    /// The jobs not `active`, with their state: what the dispatcher and
    /// the scheduler hold back.
    pub async fn stopped_jobs(&self) -> Result<HashMap<String, OperatorState>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT job, state FROM job_controls WHERE state <> $1")
                .bind(OperatorState::Active.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(job, s)| Ok((job, parse_column(&s)?)))
            .collect()
    }

    /// `job`'s operator state (`active` with no actor when never changed).
    pub async fn job_control(&self, job: &str) -> Result<JobControl> {
        let mut tx = self.pool.begin().await?;
        let c = control_tx(&mut tx, job).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Changes a job's operator state, in one transaction with its audit
    /// record and the runs of the fires it catches up; refused (nothing
    /// written) when the job is not in one of `change.from`. A running
    /// daemon is woken to look again.
    pub async fn change_job_state(&self, change: &StateChange<'_>) -> Result<Changed> {
        let mut tx = self.begin_write().await?;
        let now = self.clock.now_ms();
        let current = control_tx(&mut tx, change.job).await?;
        if !change.from.contains(&current.state) {
            return Ok(Changed::Refused { current });
        }
        // The state row first, guarded on the state it leaves: two
        // operators changing the same job at once (PostgreSQL) — the second
        // waits for the first's row lock, then finds the state changed and
        // is refused. On PostgreSQL this also takes the row lock the
        // scheduler's guarded record waits on ([`Store::record_cron_fires_as`]),
        // so every fire it recorded as skipped is visible to the catch-up below.
        let sql = format!(
            "INSERT INTO job_controls (job, state, reason, actor, since_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job) DO UPDATE SET \
             state = excluded.state, reason = excluded.reason, actor = excluded.actor, \
             since_ms = excluded.since_ms WHERE job_controls.state IN ({})",
            placeholder_list(6, change.from.len())
        );
        let mut q = sqlx::query(&sql)
            .bind(change.job)
            .bind(change.to.as_str())
            .bind(change.reason)
            .bind(&change.audit.actor)
            .bind(now);
        for f in change.from {
            q = q.bind(f.as_str());
        }
        if q.execute(&mut *tx).await?.rows_affected() != 1 {
            tx.rollback().await?;
            let current = self.job_control(change.job).await?;
            return Ok(Changed::Refused { current });
        }
        let mut caught_up = Vec::new();
        if let Some(catch_up) = change.catch_up {
            let skipped: Vec<i64> = sqlx::query_scalar(
                "SELECT fire_ms FROM cron_fires WHERE job = $1 AND outcome = $2 AND detail = $3 \
                 AND work_item_id IS NULL AND recorded_ms >= $4 ORDER BY fire_ms",
            )
            .bind(change.job)
            .bind(FireOutcome::Skipped.as_str())
            .bind(skipped_detail(current.state))
            .bind(current.since_ms)
            .fetch_all(&mut *tx)
            .await?;
            let items = catch_up(&skipped);
            let ids: Vec<(&NewWorkItem, String)> = items
                .iter()
                .map(|i| (i, uuid::Uuid::new_v4().to_string()))
                .collect();
            let stored = insert_items_tx(&mut tx, &ids, now).await?;
            let detail = format!("caught up on {}", change.audit.action);
            for ((item, id), new) in ids.iter().zip(stored) {
                if !new {
                    continue;
                }
                sqlx::query(
                    "UPDATE cron_fires SET outcome = $1, detail = $2, work_item_id = $3 \
                     WHERE job = $4 AND fire_ms = $5 AND work_item_id IS NULL",
                )
                .bind(FireOutcome::Recorded.as_str())
                .bind(&detail)
                .bind(id)
                .bind(change.job)
                .bind(item.scheduled_ms)
                .execute(&mut *tx)
                .await?;
                caught_up.push(item.scheduled_ms);
            }
        }
        let mut audit = change.audit.clone();
        if !caught_up.is_empty() {
            let fires: Vec<serde_json::Value> = caught_up.iter().map(|ms| (*ms).into()).collect();
            audit.details = Some(serde_json::json!({ "caught_up_fire_ms": fires }).to_string());
        }
        insert_audit_tx(&mut tx, &audit, now).await?;
        tx.commit().await?;
        self.announce_work().await;
        Ok(Changed::Done {
            previous: current,
            caught_up,
        })
    }

    /// In a transaction that records cron fires: fails with
    /// [`StoreError::OperatorStateChanged`] when a job's operator state is
    /// no longer what the fires were decided with (`seen`; a job missing
    /// from it was `active`). On PostgreSQL the rows are locked until
    /// commit, so a concurrent change waits for the fires to be recorded.
    pub(super) async fn check_states_tx(
        &self,
        tx: &mut Tx,
        jobs: &[&str],
        seen: &HashMap<String, OperatorState>,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let lock = if self.backend == Backend::Postgres {
            " FOR SHARE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT job, state FROM job_controls WHERE job IN ({}){lock}",
            placeholder_list(1, jobs.len())
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql);
        for j in jobs {
            q = q.bind(*j);
        }
        let now: HashMap<String, String> = q.fetch_all(&mut **tx).await?.into_iter().collect();
        for j in jobs {
            let was = seen.get(*j).copied().unwrap_or(OperatorState::Active);
            let is: OperatorState = match now.get(*j) {
                Some(s) => parse_column(s)?,
                None => OperatorState::Active,
            };
            if is != was {
                return Err(StoreError::OperatorStateChanged(j.to_string()));
            }
        }
        Ok(())
    }
}

/// `job`'s control row, or `active` (no actor, since 0) without one.
async fn control_tx(tx: &mut Tx, job: &str) -> Result<JobControl> {
    let row: Option<ControlRow> = sqlx::query_as(
        "SELECT job, state, reason, actor, since_ms FROM job_controls WHERE job = $1",
    )
    .bind(job)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(r) => r.try_into(),
        None => Ok(JobControl {
            job: job.to_string(),
            state: OperatorState::Active,
            reason: None,
            actor: String::new(),
            since_ms: 0,
        }),
    }
}
