//! `cron_fires`: every cron fire the scheduler decided about, once per (job,
//! fire time), so a restart neither repeats nor drops one.

use std::collections::{HashMap, HashSet};

use super::rows::{insert_items_tx, NewWorkItem};
use super::{parse_column, placeholders, Result, Store, StoreError, ROWS_PER_STATEMENT};
use crate::lifecycle::{FireOutcome, OperatorState};

/// A cron fire to record ([`Store::record_cron_fires`]).
#[derive(Debug, Clone)]
pub struct FireRecord {
    pub job: String,
    pub fire_ms: i64,
    pub outcome: FireOutcome,
    /// Why it was skipped or missed.
    pub detail: Option<String>,
    /// The work item of a fire that runs, stored with it.
    pub item: Option<NewWorkItem>,
}

/// A recorded cron fire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CronFire {
    pub job: String,
    pub fire_ms: i64,
    pub outcome: FireOutcome,
    pub detail: Option<String>,
    pub work_item_id: Option<String>,
}

/// Fires as read: a fire stored as `recorded` (or `launched`, as earlier
/// versions stored it) reads `launched` once a run of its work item has
/// started, `recorded` while it waits for a slot. A fire whose work item
/// was pruned (only finished work is) reads `launched`.
const FIRE_SELECT: &str = "SELECT f.job, f.fire_ms, \
     CASE WHEN f.outcome IN ('recorded', 'launched') THEN \
       CASE WHEN f.work_item_id IS NULL \
              OR EXISTS (SELECT 1 FROM runs r WHERE r.work_item_id = f.work_item_id \
                         AND r.started_ms IS NOT NULL) \
            THEN 'launched' ELSE 'recorded' END \
     ELSE f.outcome END AS outcome, \
     f.detail, f.work_item_id FROM cron_fires f";

/// A [`CronFire`] as stored, its outcome as text.
#[derive(sqlx::FromRow)]
struct CronFireRow {
    job: String,
    fire_ms: i64,
    outcome: String,
    detail: Option<String>,
    work_item_id: Option<String>,
}

impl TryFrom<CronFireRow> for CronFire {
    type Error = StoreError;
    fn try_from(r: CronFireRow) -> Result<CronFire> {
        Ok(CronFire {
            outcome: parse_column(&r.outcome)?,
            job: r.job,
            fire_ms: r.fire_ms,
            detail: r.detail,
            work_item_id: r.work_item_id,
        })
    }
}

impl Store {
    /// Records a cron fire; when `item` is given, also stores its work item
    /// and first run in the same transaction. Returns `false` when the fire
    /// was already recorded (nothing written).
    pub async fn record_cron_fire(
        &self,
        job: &str,
        fire_ms: i64,
        outcome: FireOutcome,
        detail: Option<&str>,
        item: Option<&NewWorkItem>,
    ) -> Result<bool> {
        let fire = FireRecord {
            job: job.to_string(),
            fire_ms,
            outcome,
            detail: detail.map(str::to_string),
            item: item.cloned(),
        };
        Ok(self.record_cron_fires(std::slice::from_ref(&fire)).await? == [true])
    }

    /// Records many cron fires (of one job or many) in one transaction, each
    /// as [`Store::record_cron_fire`] would: a fire recorded before is left
    /// as it was and its entry in the result is `false`. One commit for all
    /// the schedules that fire at the same instant.
    pub async fn record_cron_fires(&self, fires: &[FireRecord]) -> Result<Vec<bool>> {
        self.record_cron_fires_as(fires, None).await
    }

    /// [`Store::record_cron_fires`], decided while the jobs' operator
    /// states were `seen` (a job missing from it was `active`): when one has
    /// changed since, nothing is written and the error is
    /// [`StoreError::OperatorStateChanged`] — decide again. So a fire is
    /// never recorded `skipped: paused` after the resume that would have
    /// caught it up committed.
    pub async fn record_cron_fires_as(
        &self,
        fires: &[FireRecord],
        seen: Option<&HashMap<String, OperatorState>>,
    ) -> Result<Vec<bool>> {
        let _t = crate::metrics::store_timer("record_cron_fires");
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        if let Some(seen) = seen {
            let mut jobs: Vec<&str> = fires.iter().map(|f| f.job.as_str()).collect();
            jobs.sort_unstable();
            jobs.dedup();
            self.check_states_tx(&mut tx, &jobs, seen).await?;
        }
        let now = self.clock.now_ms();
        let mut recorded = HashSet::new();
        let mut runs = Vec::new();
        // Multi-row statements, ROWS_PER_STATEMENT at a time: one round trip
        // to the database per chunk rather than three per fire.
        for chunk in fires.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<Option<String>> = chunk
                .iter()
                .map(|f| f.item.as_ref().map(|_| uuid::Uuid::new_v4().to_string()))
                .collect();
            let sql = format!(
                "INSERT INTO cron_fires (job, fire_ms, outcome, detail, work_item_id, recorded_ms) \
                 VALUES {} ON CONFLICT (job, fire_ms) DO NOTHING RETURNING job, fire_ms",
                placeholders(chunk.len(), 6)
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
            for (f, id) in chunk.iter().zip(&ids) {
                q = q
                    .bind(&f.job)
                    .bind(f.fire_ms)
                    .bind(f.outcome.as_str())
                    .bind(f.detail.as_deref())
                    .bind(id.as_deref())
                    .bind(now);
            }
            recorded.extend(q.fetch_all(&mut *tx).await?);
            for (f, id) in chunk.iter().zip(ids) {
                if let (Some(item), Some(id)) = (&f.item, id) {
                    if recorded.contains(&(f.job.clone(), f.fire_ms)) {
                        runs.push((item, id));
                    }
                }
            }
        }
        insert_items_tx(&mut tx, &runs, now).await?;
        tx.commit().await?;
        Ok(fires
            .iter()
            .map(|f| recorded.contains(&(f.job.clone(), f.fire_ms)))
            .collect())
    }

    /// Records fires that will not run (catch-up policy), in one transaction.
    pub async fn record_missed_fires(&self, job: &str, fires: &[(i64, String)]) -> Result<()> {
        let fires: Vec<FireRecord> = fires
            .iter()
            .map(|(fire_ms, why)| FireRecord {
                job: job.to_string(),
                fire_ms: *fire_ms,
                outcome: FireOutcome::Missed,
                detail: Some(why.clone()),
                item: None,
            })
            .collect();
        self.record_cron_fires(&fires).await?;
        Ok(())
    }

    /// The latest recorded fire of every job that has one.
    pub async fn last_cron_fires(&self) -> Result<HashMap<String, i64>> {
        let _t = crate::metrics::store_timer("last_cron_fires");
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT job, MAX(fire_ms) FROM cron_fires GROUP BY job")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// The fire times of `job`'s fires `waiting` for their dependencies,
    /// oldest first.
    pub async fn waiting_fires(&self, job: &str) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT fire_ms FROM cron_fires WHERE job = $1 AND outcome = $2 ORDER BY fire_ms",
        )
        .bind(job)
        .bind(FireOutcome::Waiting.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the latest fire of `job` before `fire_ms` that ran was
    /// recorded to run (its "last run", the scope of a dependency without
    /// look-back): a waiting fire counts from when it started, so one
    /// upstream run starts one waiting fire, not every one.
    pub async fn last_run_fire_before(&self, job: &str, fire_ms: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(recorded_ms) FROM cron_fires WHERE job = $1 AND fire_ms < $2 \
             AND work_item_id IS NOT NULL",
        )
        .bind(job)
        .bind(fire_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Ends a `waiting` fire: with `item`, `recorded` and its work item and
    /// first run stored in the same transaction; without, `skipped` with
    /// `detail`. False when it was not waiting (nothing written).
    pub async fn end_waiting_fire(
        &self,
        job: &str,
        fire_ms: i64,
        item: Option<&NewWorkItem>,
        detail: &str,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let id = item.map(|_| uuid::Uuid::new_v4().to_string());
        let outcome = match item {
            Some(_) => FireOutcome::Recorded,
            None => FireOutcome::Skipped,
        };
        let now = self.clock.now_ms();
        let changed = sqlx::query(
            "UPDATE cron_fires SET outcome = $1, detail = $2, work_item_id = $3, recorded_ms = $7 \
             WHERE job = $4 AND fire_ms = $5 AND outcome = $6",
        )
        .bind(outcome.as_str())
        .bind(detail)
        .bind(id.as_deref())
        .bind(job)
        .bind(fire_ms)
        .bind(FireOutcome::Waiting.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !changed {
            return Ok(false);
        }
        if let (Some(item), Some(id)) = (item, id) {
            insert_items_tx(&mut tx, &[(item, id)], now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The latest recorded fire of `job`, if any.
    pub async fn last_cron_fire(&self, job: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MAX(fire_ms) FROM cron_fires WHERE job = $1")
                .bind(job)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Recorded fires of `job`, oldest first.
    pub async fn cron_fires(&self, job: &str) -> Result<Vec<CronFire>> {
        let sql = format!("{FIRE_SELECT} WHERE f.job = $1 ORDER BY f.fire_ms");
        let rows: Vec<CronFireRow> = sqlx::query_as(&sql).bind(job).fetch_all(&self.pool).await?;
        rows.into_iter().map(CronFire::try_from).collect()
    }

    /// The newest `limit` fires of `job`, oldest first.
    pub async fn latest_cron_fires(&self, job: &str, limit: i64) -> Result<Vec<CronFire>> {
        let sql = format!("{FIRE_SELECT} WHERE f.job = $1 ORDER BY f.fire_ms DESC LIMIT $2");
        let rows: Vec<CronFireRow> = sqlx::query_as(&sql)
            .bind(job)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut fires = rows
            .into_iter()
            .map(CronFire::try_from)
            .collect::<Result<Vec<_>>>()?;
        fires.reverse();
        Ok(fires)
    }
}
