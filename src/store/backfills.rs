//! `backfills`: each `kedge backfill` that created or re-ran fires, with the
//! cap its runs launch under (`max_active`, `overlap`); the work items it
//! created point to it (`work_items.backfill_id`).
//!
//! A backfill records its fires in `cron_fires`, whose key is (job, fire
//! time): the same fire is never created twice, whoever records it first
//! (the scheduler, an earlier backfill), and a backfill is one transaction,
//! so one interrupted half-way (kill -9) wrote nothing and is simply run
//! again.

use std::collections::HashMap;

use super::rows::{insert_audit_tx, insert_items_tx, new_attempt_tx, AuditEntry, NewWorkItem};
use super::{parse_column, Result, Store, StoreError, Tx};
use crate::lifecycle::{FireOutcome, RunState, WorkState};

/// Whether a backfill's runs may run beside the job's other runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackfillOverlap {
    /// Beside the job's other runs (still at most `max_active` of the backfill's).
    Allow,
    /// One at a time, and only while no other run of the job is running.
    Forbid,
}

impl BackfillOverlap {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillOverlap::Allow => "allow",
            BackfillOverlap::Forbid => "forbid",
        }
    }
}

impl std::str::FromStr for BackfillOverlap {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "allow" => Ok(BackfillOverlap::Allow),
            "forbid" => Ok(BackfillOverlap::Forbid),
            other => Err(format!("unknown backfill overlap {other:?}")),
        }
    }
}

/// Which fires that already ran a backfill runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Rerun {
    /// None: only fires that never ran are created.
    None,
    /// Fires whose work ended dead (every attempt failed) or cancelled.
    Failed,
    /// Every finished fire, succeeded ones too.
    All,
}

/// A backfill to record ([`Store::backfill`]).
pub struct NewBackfill<'a> {
    pub job: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub max_active: u32,
    pub overlap: BackfillOverlap,
    pub rerun: Rerun,
    /// The work item of every fire in [from, to), ascending (their
    /// `scheduled_ms` is the fire time).
    pub fires: &'a [NewWorkItem],
    /// Decide, write nothing.
    pub dry_run: bool,
    pub audit: AuditEntry,
}

/// What a backfill does with one fire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum FireAction {
    /// The fire never ran (not recorded, or recorded skipped/missed): a
    /// work item and its first run are created.
    Create { run_id: String },
    /// Its work had finished; a new attempt runs it again (`--rerun`).
    Rerun { run_id: String, was: WorkState },
    /// Left alone, and why.
    Keep { why: String },
}

/// One fire of a backfill and what was done with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackfillFire {
    pub fire_ms: i64,
    #[serde(flatten)]
    pub action: FireAction,
}

/// What [`Store::backfill`] did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackfillReport {
    /// The backfill's id; `None` when it created and re-ran nothing (or
    /// was a dry run).
    pub id: Option<String>,
    pub fires: Vec<BackfillFire>,
}

impl BackfillReport {
    /// Fires created or re-run.
    pub fn started(&self) -> usize {
        self.fires
            .iter()
            .filter(|f| !matches!(f.action, FireAction::Keep { .. }))
            .count()
    }
}

/// A backfill with active runs, and how many of them run now: what the
/// dispatcher caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillCap {
    pub id: String,
    pub job: String,
    pub max_active: u32,
    pub overlap: BackfillOverlap,
    pub running: u32,
}

/// A recorded fire in a backfill's range, with its work item's state.
#[derive(sqlx::FromRow)]
struct FireRow {
    fire_ms: i64,
    work_item_id: Option<String>,
    state: Option<String>,
    active: i64,
}

impl Store {
    /// Records a backfill in one transaction (with its audit record): each
    /// fire of `b.fires` not yet run is created, finished ones re-run as
    /// `b.rerun` says, the rest left alone. Running it again creates
    /// nothing new (unless `rerun` asks). A running daemon is woken.
    pub async fn backfill(&self, b: &NewBackfill<'_>) -> Result<BackfillReport> {
        let mut tx = self.begin_write().await?;
        let now = self.clock.now_ms();
        let rows: Vec<FireRow> = sqlx::query_as(
            "SELECT f.fire_ms, f.work_item_id, w.state, \
             (SELECT COUNT(*) FROM runs r WHERE r.work_item_id = w.id AND r.state IN ($4, $5)) \
               AS active \
             FROM cron_fires f LEFT JOIN work_items w ON w.id = f.work_item_id \
             WHERE f.job = $1 AND f.fire_ms >= $2 AND f.fire_ms < $3",
        )
        .bind(b.job)
        .bind(b.from_ms)
        .bind(b.to_ms)
        .bind(RunState::Pending.as_str())
        .bind(RunState::Running.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let recorded: HashMap<i64, FireRow> = rows.into_iter().map(|r| (r.fire_ms, r)).collect();
        let id = format!("bf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut fires = Vec::with_capacity(b.fires.len());
        for item in b.fires {
            let fire_ms = item.scheduled_ms;
            let keep = |why: &str| FireAction::Keep { why: why.into() };
            let action = match recorded.get(&fire_ms) {
                None
                | Some(FireRow {
                    work_item_id: None, ..
                }) => create_fire_tx(&mut tx, b.job, item, &id, now).await?,
                Some(FireRow { state: None, .. }) => keep("finished and pruned"),
                Some(FireRow { active, .. }) if *active > 0 => keep("a run of it is active"),
                Some(FireRow {
                    work_item_id: Some(wid),
                    state: Some(state),
                    ..
                }) => {
                    let state: WorkState = parse_column(state)?;
                    let again = matches!(
                        (state, b.rerun),
                        (WorkState::Succeeded, Rerun::All)
                            | (
                                WorkState::Dead | WorkState::Cancelled,
                                Rerun::Failed | Rerun::All
                            )
                    );
                    if again {
                        let run_id = new_attempt_tx(&mut tx, wid, Some(&id), now).await?;
                        FireAction::Rerun { run_id, was: state }
                    } else {
                        keep(state.as_str())
                    }
                }
            };
            fires.push(BackfillFire { fire_ms, action });
        }
        let mut report = BackfillReport { id: None, fires };
        if b.dry_run {
            tx.rollback().await?;
            return Ok(report);
        }
        let started = report.started();
        if started > 0 {
            insert_backfill_tx(&mut tx, b, &id, now).await?;
            report.id = Some(id.clone());
        }
        insert_audit_tx(&mut tx, &backfill_audit(b, &report, started), now).await?;
        tx.commit().await?;
        if started > 0 {
            self.announce_work().await;
        }
        Ok(report)
    }

    /// The backfills with pending or running runs, each with its running
    /// count.
    pub async fn active_backfills(&self) -> Result<Vec<BackfillCap>> {
        let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT b.id, b.job, b.max_active, b.overlap, \
             SUM(CASE WHEN r.state = $1 THEN 1 ELSE 0 END) \
             FROM backfills b JOIN work_items w ON w.backfill_id = b.id \
             JOIN runs r ON r.work_item_id = w.id \
             WHERE r.state IN ($1, $2) GROUP BY b.id, b.job, b.max_active, b.overlap",
        )
        .bind(RunState::Running.as_str())
        .bind(RunState::Pending.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, job, max_active, overlap, running)| {
                Ok(BackfillCap {
                    id,
                    job,
                    max_active: max_active.clamp(0, u32::MAX as i64) as u32,
                    overlap: overlap.parse().map_err(StoreError::Corrupt)?,
                    running: running.clamp(0, u32::MAX as i64) as u32,
                })
            })
            .collect()
    }
}

/// Creates a fire the backfill found missing (or recorded without work):
/// its work item, marked with the backfill, and its `cron_fires` row.
async fn create_fire_tx(
    tx: &mut Tx,
    job: &str,
    item: &NewWorkItem,
    backfill: &str,
    now: i64,
) -> Result<FireAction> {
    let work_item_id = uuid::Uuid::new_v4().to_string();
    let new = insert_items_tx(tx, &[(item, work_item_id.clone())], now).await? == [true];
    if !new {
        return Ok(FireAction::Keep {
            why: "its work item is stored already".into(),
        });
    }
    sqlx::query("UPDATE work_items SET backfill_id = $1 WHERE id = $2")
        .bind(backfill)
        .bind(&work_item_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO cron_fires (job, fire_ms, outcome, detail, work_item_id, \
         recorded_ms) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (job, fire_ms) DO UPDATE SET outcome = excluded.outcome, \
         detail = excluded.detail, work_item_id = excluded.work_item_id",
    )
    .bind(job)
    .bind(item.scheduled_ms)
    .bind(FireOutcome::Recorded.as_str())
    .bind(format!("backfill {backfill}"))
    .bind(&work_item_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(FireAction::Create {
        run_id: item.run_id.clone(),
    })
}

/// The `backfills` row that caps the backfill's runs.
async fn insert_backfill_tx(tx: &mut Tx, b: &NewBackfill<'_>, id: &str, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO backfills (id, job, from_ms, to_ms, max_active, overlap, actor, \
         created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(b.job)
    .bind(b.from_ms)
    .bind(b.to_ms)
    .bind(i64::from(b.max_active))
    .bind(b.overlap.as_str())
    .bind(&b.audit.actor)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The backfill's audit entry, with what it did.
fn backfill_audit(b: &NewBackfill<'_>, report: &BackfillReport, started: usize) -> AuditEntry {
    let mut audit = b.audit.clone();
    audit.details = Some(
        serde_json::json!({
            "backfill": report.id,
            "from_ms": b.from_ms,
            "to_ms": b.to_ms,
            "fires": report.fires.len(),
            "started": started,
            "max_active": b.max_active,
            "overlap": b.overlap,
            "rerun": b.rerun,
        })
        .to_string(),
    );
    audit
}
