//! The state store: work items, runs (one per attempt, with timings), cron
//! fires and dead letters, in SQLite (the embedded default) or PostgreSQL.
//!
//! One set of queries serves both through `sqlx::Any`; the schema in
//! `migrations/` is portable SQL and times are Unix milliseconds. Every
//! state change that must not be half-done (intake, settlement, replay) is
//! one transaction, guarded on the state it expects, so concurrent or
//! repeated calls settle once. See [`crate::lifecycle`] for the states.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::lifecycle::{RunState, TriggerKind, WorkState};
use crate::redact::redact;

mod signal;
use signal::Signal;

/// Store errors. All are worth retrying after a pause unless noted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:` (not retryable).
    #[error("unsupported store URL {0} (use sqlite://PATH, sqlite::memory: or postgres://…)")]
    UnsupportedUrl(String),
    /// Could not connect or open the database.
    #[error("cannot open the store at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed (not retryable without a fix).
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("store query failed")]
    Query(#[from] sqlx::Error),
    /// A value in the store is not what kedge wrote (not retryable).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A handle to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// How writers in other processes wake the daemon ([`signal`]).
    signal: Signal,
}

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
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// A work item waiting to be put into a batch run.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The work item's state (`queued` while the batch runs).
    pub state: String,
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

/// A dead-lettered work item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// A cron fire to record ([`Store::record_cron_fires`]).
#[derive(Debug, Clone)]
pub struct FireRecord {
    pub job: String,
    pub fire_ms: i64,
    /// `launched`, `skipped`, `missed` or `replaced`.
    pub outcome: String,
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
    /// `launched`, `skipped` (overlap policy), `missed` (catch-up policy), `replaced`.
    pub outcome: String,
    pub detail: Option<String>,
    pub work_item_id: Option<String>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const RUN_COLUMNS: &str = "r.run_id, r.work_item_id, r.job, r.attempt, r.state, r.trigger_kind, \
     r.scheduled_ms, r.started_ms, r.finished_ms, r.launches, r.error, \
     w.source, w.message_id, w.payload, w.deadline_ms, w.attempt_base, \
     r.work, r.parallelism, r.completions, r.projected_finish_ms, r.at_risk, r.sizing_note";

impl Store {
    /// Opens the store at `url` (`sqlite://path`, `sqlite::memory:`,
    /// `postgres://…`). Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact(url)));
        };
        let connect_err = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let mut signal = Signal::sqlite(None);
        let pool = match backend {
            Backend::Sqlite => {
                let memory = url.contains(":memory:") || url.contains("mode=memory");
                if !memory {
                    signal = Signal::sqlite(sqlite_path(url).as_deref());
                }
                let mut url = url.to_string();
                if !memory {
                    if let Some(path) = sqlite_path(&url) {
                        if let Some(parent) = std::path::Path::new(&path).parent() {
                            if !parent.as_os_str().is_empty() {
                                std::fs::create_dir_all(parent)
                                    .map_err(|e| connect_err(sqlx::Error::Io(e)))?;
                            }
                        }
                    }
                    if !url.contains("mode=") {
                        url.push_str(if url.contains('?') {
                            "&mode=rwc"
                        } else {
                            "?mode=rwc"
                        });
                    }
                }
                // SQLite has one writer; one connection per process keeps
                // transactions from upgrading read locks into SQLITE_BUSY, and
                // an in-memory database lives only as long as its connection.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            conn.execute("PRAGMA busy_timeout = 15000").await?;
                            if !memory {
                                conn.execute("PRAGMA journal_mode = WAL").await?;
                                conn.execute("PRAGMA synchronous = NORMAL").await?;
                            }
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(connect_err)?
            }
            Backend::Postgres => {
                signal = Signal::Postgres {
                    url: url.to_string(),
                };
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(connect_err)?
            }
        };
        Ok(Store {
            pool,
            backend,
            signal,
        })
    }

    /// Applies pending migrations from `migrations/` (embedded in the binary).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(StoreError::Migrate)?;
        sqlx::query(
            "INSERT INTO kedge_meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A random id fixed when the store was created; tells this store's
    /// processes apart from another store's on the same machine.
    pub async fn instance_id(&self) -> Result<String> {
        let row = sqlx::query("SELECT value FROM kedge_meta WHERE key = 'instance_id'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<String, _>(0)?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock first (waiting on `busy_timeout`) so it can never fail later
    /// with a lock upgrade conflict against another process.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("UPDATE kedge_meta SET value = value WHERE key = 'instance_id'")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    // ----- intake -----------------------------------------------------------

    /// Stores a work item and its first run. Returns `false` (and writes
    /// nothing) when the (source, job, message id) is already stored.
    /// A running daemon is woken to launch it (see [`signal`]).
    pub async fn insert_work_item(&self, item: &NewWorkItem) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let inserted = insert_item_tx(&mut tx, item, &uuid::Uuid::new_v4().to_string()).await?;
        tx.commit().await?;
        if inserted {
            self.announce_work().await;
        }
        Ok(inserted)
    }

    /// Records a cron fire; when `item` is given, also stores its work item
    /// and first run in the same transaction. Returns `false` when the fire
    /// was already recorded (nothing written).
    pub async fn record_cron_fire(
        &self,
        job: &str,
        fire_ms: i64,
        outcome: &str,
        detail: Option<&str>,
        item: Option<&NewWorkItem>,
    ) -> Result<bool> {
        let fire = FireRecord {
            job: job.to_string(),
            fire_ms,
            outcome: outcome.to_string(),
            detail: detail.map(str::to_string),
            item: item.cloned(),
        };
        Ok(self.record_cron_fires(std::slice::from_ref(&fire)).await?[0])
    }

    /// Records many cron fires (of one job or many) in one transaction, each
    /// as [`Store::record_cron_fire`] would: a fire recorded before is left
    /// as it was and its entry in the result is `false`. One commit for all
    /// the schedules that fire at the same instant.
    pub async fn record_cron_fires(&self, fires: &[FireRecord]) -> Result<Vec<bool>> {
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let mut recorded = std::collections::HashSet::new();
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
            let mut q = sqlx::query(&sql);
            for (f, id) in chunk.iter().zip(&ids) {
                q = q
                    .bind(&f.job)
                    .bind(f.fire_ms)
                    .bind(&f.outcome)
                    .bind(f.detail.as_deref())
                    .bind(id.clone())
                    .bind(now);
            }
            for row in q.fetch_all(&mut *tx).await? {
                recorded.insert((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?));
            }
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
                outcome: "missed".into(),
                detail: Some(why.clone()),
                item: None,
            })
            .collect();
        self.record_cron_fires(&fires).await?;
        Ok(())
    }

    /// The latest recorded fire of every job that has one.
    pub async fn last_cron_fires(&self) -> Result<std::collections::HashMap<String, i64>> {
        let rows = sqlx::query("SELECT job, MAX(fire_ms) FROM cron_fires GROUP BY job")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The latest recorded fire of `job`, if any.
    pub async fn last_cron_fire(&self, job: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MAX(fire_ms) FROM cron_fires WHERE job = $1")
            .bind(job)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Recorded fires of `job`, oldest first.
    pub async fn cron_fires(&self, job: &str) -> Result<Vec<CronFire>> {
        let rows = sqlx::query(
            "SELECT job, fire_ms, outcome, detail, work_item_id FROM cron_fires \
             WHERE job = $1 ORDER BY fire_ms",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CronFire {
                    job: r.try_get(0)?,
                    fire_ms: r.try_get(1)?,
                    outcome: r.try_get(2)?,
                    detail: r.try_get(3)?,
                    work_item_id: r.try_get(4)?,
                })
            })
            .collect()
    }

    // ----- dispatch ---------------------------------------------------------

    /// Pending runs whose time has come, earliest deadline first, then oldest.
    pub async fn due_runs(&self, now_ms: i64, limit: i64) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id \
             WHERE r.state = 'pending' AND r.scheduled_ms <= $1 \
             ORDER BY CASE WHEN w.deadline_ms IS NULL THEN 1 ELSE 0 END, w.deadline_ms, \
                      r.scheduled_ms, r.run_id \
             LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// When the next pending run becomes due, if any is waiting.
    pub async fn next_due_ms(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(scheduled_ms) FROM runs WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// `(job, running, pending)` for every job with active runs.
    pub async fn active_counts(&self) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT job, \
                    SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) \
             FROM runs WHERE state IN ('pending', 'running') GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// One job's (running, pending) run counts: what a cron fire's overlap
    /// policy needs, without aggregating every job's active runs.
    pub async fn active_count_of(&self, job: &str) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN state = 'running' THEN 1 END), \
                    COUNT(CASE WHEN state = 'pending' THEN 1 END) \
             FROM runs WHERE job = $1 AND state IN ('pending', 'running')",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// `pending → running`. False when the run was not pending (someone else
    /// claimed or settled it).
    pub async fn claim_run(&self, run_id: &str, now_ms: i64) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE runs SET state = 'running', started_ms = $1, launches = launches + 1 \
             WHERE run_id = $2 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// [`Store::claim_run`] for many runs in one transaction (one commit):
    /// per run, whether this call claimed it.
    pub async fn claim_runs(&self, run_ids: &[&str], now_ms: i64) -> Result<Vec<bool>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut claimed = std::collections::HashSet::new();
        for chunk in run_ids.chunks(ROWS_PER_STATEMENT) {
            let list: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "UPDATE runs SET state = 'running', started_ms = $1, launches = launches + 1 \
                 WHERE state = 'pending' AND run_id IN ({}) RETURNING run_id",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(now_ms);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                claimed.insert(row.try_get::<String, _>(0)?);
            }
        }
        tx.commit().await?;
        Ok(run_ids.iter().map(|id| claimed.contains(*id)).collect())
    }

    /// Undoes [`Store::claim_runs`] for runs that were not launched after
    /// all (`running → pending`, the launch count restored).
    pub async fn unclaim_runs(&self, run_ids: &[&str]) -> Result<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for run_id in run_ids {
            sqlx::query(
                "UPDATE runs SET state = 'pending', started_ms = NULL, launches = launches - 1 \
                 WHERE run_id = $1 AND state = 'running'",
            )
            .bind(*run_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ids of `job`'s running runs.
    pub async fn active_runs_of(&self, job: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT run_id FROM runs WHERE job = $1 AND state = 'running'")
            .bind(job)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
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
        let rows = sqlx::query(
            "UPDATE runs SET state = 'failed', finished_ms = $1, error = $2 \
             WHERE job = $3 AND state = 'pending' RETURNING work_item_id",
        )
        .bind(now_ms)
        .bind(note)
        .bind(job)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let work_item_id: String = row.try_get(0)?;
            sqlx::query("UPDATE work_items SET state = 'cancelled', updated_ms = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(&work_item_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// `running → pending` (same attempt, launched again later): for runs a
    /// shutdown or crash interrupted. False when the run was not running.
    pub async fn requeue_run(&self, run_id: &str, note: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE runs SET state = 'pending', started_ms = NULL, error = $1 \
             WHERE run_id = $2 AND state = 'running'",
        )
        .bind(note)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Runs in a state, oldest first (start-up recovery uses `running`).
    pub async fn runs_in_state(&self, state: RunState) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id \
             WHERE r.state = $1 ORDER BY r.scheduled_ms, r.run_id"
        );
        let rows = sqlx::query(&sql)
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records the planner's decision for a run (at launch).
    pub async fn record_sizing(&self, run_id: &str, s: &RunSizing) -> Result<()> {
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
        let rows = sqlx::query(
            "SELECT work, parallelism, finished_ms - started_ms FROM runs \
             WHERE job = $1 AND state = 'succeeded' AND work IS NOT NULL \
               AND parallelism IS NOT NULL AND started_ms IS NOT NULL AND finished_ms IS NOT NULL \
             ORDER BY finished_ms DESC LIMIT $2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    work: r.try_get(0)?,
                    parallelism: r.try_get(1)?,
                    duration_ms: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// The work measured for `job`'s most recent sized run, if any.
    pub async fn last_work(&self, job: &str) -> Result<Option<f64>> {
        let row = sqlx::query(
            "SELECT work FROM runs WHERE job = $1 AND work IS NOT NULL \
             ORDER BY started_ms DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<f64>, _>(0)?,
            None => None,
        })
    }

    /// How many runs of `job` are pending: waiting to launch, whether their
    /// time has come or not (a retry waiting out its backoff counts). The
    /// `queue_length` work probe.
    pub async fn pending_runs(&self, job: &str) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM runs WHERE job = $1 AND state = 'pending'")
            .bind(job)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Pods in use per job: the sum of running runs' parallelism (1 for
    /// runs that were not sized).
    pub async fn running_pods(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT job, CAST(SUM(COALESCE(parallelism, 1)) AS BIGINT) FROM runs WHERE state = 'running' GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn get_run(&self, run_id: &str) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id \
             WHERE r.run_id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    // ----- settlement -------------------------------------------------------

    /// Ends a running run as `settlement` says, in one transaction. Returns
    /// `false` (and changes nothing) when the run is not `running`, so an
    /// outcome reported twice settles once.
    pub async fn settle(&self, run_id: &str, settlement: &Settlement, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id \
             WHERE r.run_id = $1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let run = run_from_row(&row)?;
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
        // Guarded on `running` again: the SELECT above takes no row lock, so
        // on PostgreSQL (READ COMMITTED) two concurrent settlements could
        // both read `running`. This UPDATE waits for the other one's row
        // lock and re-checks the guard, so only one of them settles.
        let res = sqlx::query(
            "UPDATE runs SET state = $1, finished_ms = $2, error = $3 \
             WHERE run_id = $4 AND state = 'running'",
        )
        .bind(run_state.as_str())
        .bind(now_ms)
        .bind(error.cloned())
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("UPDATE work_items SET state = $1, updated_ms = $2 WHERE id = $3")
            .bind(work_state.as_str())
            .bind(now_ms)
            .bind(&run.work_item_id)
            .execute(&mut *tx)
            .await?;
        match settlement {
            Settlement::Retry {
                next_run_id,
                next_attempt,
                not_before_ms,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
                     VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
                )
                .bind(next_run_id)
                .bind(&run.work_item_id)
                .bind(&run.job)
                .bind(*next_attempt)
                .bind(run.trigger.as_str())
                .bind(*not_before_ms)
                .execute(&mut *tx)
                .await?;
            }
            Settlement::Dead { error, reason } => {
                sqlx::query(
                    "INSERT INTO dead_letters (id, work_item_id, job, source, message_id, payload, \
                     reason, attempts, last_error, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&run.work_item_id)
                .bind(&run.job)
                .bind(&run.source)
                .bind(&run.message_id)
                .bind(run.payload.clone())
                .bind(reason)
                .bind(run.attempt - run.attempt_base)
                .bind(error)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            Settlement::Succeeded | Settlement::Cancelled { .. } => {}
        }
        tx.commit().await?;
        Ok(true)
    }

    // ----- reading ----------------------------------------------------------

    /// The latest runs (by scheduled time), optionally of one job and/or state.
    pub async fn list_runs(
        &self,
        job: Option<&str>,
        state: Option<RunState>,
        limit: i64,
    ) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id \
             WHERE ($1 IS NULL OR r.job = $1) AND ($2 IS NULL OR r.state = $2) \
             ORDER BY r.scheduled_ms DESC, r.run_id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(job)
            .bind(state.map(|s| s.as_str()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    // ----- dead letters -----------------------------------------------------

    /// Dead letters, newest first; replayed ones only when `include_replayed`.
    pub async fn dead_letters(
        &self,
        job: Option<&str>,
        include_replayed: bool,
        limit: i64,
    ) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, work_item_id, job, source, message_id, payload, reason, attempts, \
                    last_error, created_ms, replayed_ms \
             FROM dead_letters \
             WHERE ($1 IS NULL OR job = $1) AND ($2 = 1 OR replayed_ms IS NULL) \
             ORDER BY created_ms DESC, id LIMIT $3",
        )
        .bind(job)
        .bind(i64::from(include_replayed))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    /// The highest attempt number of a work item's runs.
    pub async fn last_attempt(&self, work_item_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(attempt) FROM runs WHERE work_item_id = $1")
            .bind(work_item_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Stores what intake made of one claim's messages, all in one
    /// transaction (one commit per claim rather than per message). Returns,
    /// per item, whether it was written (`false`: stored before).
    pub async fn intake_many(&self, items: &[(NewWorkItem, Intake)]) -> Result<Vec<bool>> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(items.len());
        for (item, how) in items {
            out.push(match how {
                Intake::Run => {
                    insert_item_tx(&mut tx, item, &uuid::Uuid::new_v4().to_string()).await?
                }
                Intake::AwaitBatch => insert_batch_item_tx(&mut tx, item, now).await?,
                Intake::Dead { reason, error } => {
                    insert_dead_item_tx(&mut tx, item, reason, error, now).await?
                }
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Dead-letters a pending run whose message's own deadline passed
    /// before it could launch (reason `expired`). `false` when the run is no
    /// longer pending.
    pub async fn expire_run(&self, run_id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN work_items w ON w.id = r.work_item_id \
             WHERE r.run_id = $1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let run = run_from_row(&row)?;
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
            "UPDATE runs SET state = 'dead', finished_ms = $1, error = $2 \
             WHERE run_id = $3 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(&error)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("UPDATE work_items SET state = 'dead', updated_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(&run.work_item_id)
            .execute(&mut *tx)
            .await?;
        let item = NewWorkItem {
            job: run.job.clone(),
            source: run.source.clone(),
            message_id: run.message_id.clone(),
            payload: run.payload.clone(),
            deadline_ms: run.deadline_ms,
            trigger: run.trigger,
            run_id: run.run_id.clone(),
            scheduled_ms: run.scheduled_ms,
        };
        insert_dead_letter_tx(
            &mut tx,
            &run.work_item_id,
            &item,
            "expired",
            run.attempt - 1 - run.attempt_base,
            &error,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One dead letter by id.
    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dead_letter_from_row).transpose()
    }

    /// Dead letters of `job` not yet published to its source's dead-letter
    /// target, oldest first.
    pub async fn dead_letters_to_forward(&self, job: &str, limit: i64) -> Result<Vec<DeadLetter>> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
             WHERE job = $1 AND forwarded_ms IS NULL ORDER BY created_ms, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(job)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    /// Records that a dead letter was published to its target (`error`
    /// `None`), or why publishing failed this time (it is tried again).
    pub async fn mark_forwarded(&self, id: &str, error: Option<&str>, now_ms: i64) -> Result<()> {
        let q = match error {
            None => sqlx::query(
                "UPDATE dead_letters SET forwarded_ms = $1, forward_error = NULL WHERE id = $2",
            )
            .bind(now_ms)
            .bind(id),
            Some(e) => sqlx::query("UPDATE dead_letters SET forward_error = $1 WHERE id = $2")
                .bind(e.to_string())
                .bind(id),
        };
        let mut tx = self.begin_write().await?;
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

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
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE work_items SET state = 'replayed', updated_ms = $1 \
             WHERE id = $2 AND state IN ('dead', 'replayed')",
        )
        .bind(now_ms)
        .bind(&letter.work_item_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(letter))
    }

    /// The message is back in its source: close the letter.
    pub async fn finish_source_replay(&self, id: &str, now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE dead_letters SET replayed_ms = $1 WHERE id = $2 AND replayed_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishing the replay failed: the work item is dead again.
    pub async fn abort_source_replay(&self, work_item_id: &str, now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE work_items SET state = 'dead', updated_ms = $1 WHERE id = $2 AND state = 'replayed'",
        )
        .bind(now_ms)
        .bind(work_item_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ----- batches ----------------------------------------------------------

    /// Stores a message of a batching job: its work item waits
    /// (`awaiting_batch`) without a run until [`Store::create_batch_run`]
    /// takes it. `false` when the message was stored before.
    pub async fn insert_batch_item(&self, item: &NewWorkItem) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let stored = insert_batch_item_tx(&mut tx, item, now_ms()).await?;
        tx.commit().await?;
        if stored {
            self.announce_work().await;
        }
        Ok(stored)
    }

    /// Work items of `job` waiting for a batch, earliest deadline first,
    /// then oldest.
    pub async fn awaiting_batch(&self, job: &str, limit: i64) -> Result<Vec<BatchCandidate>> {
        let rows = sqlx::query(
            "SELECT id, message_id, COALESCE(LENGTH(payload), 0), created_ms, deadline_ms \
             FROM work_items WHERE job = $1 AND awaiting_batch = 1 AND state = 'queued' \
             ORDER BY CASE WHEN deadline_ms IS NULL THEN 1 ELSE 0 END, deadline_ms, created_ms, id \
             LIMIT $2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BatchCandidate {
                    work_item_id: r.try_get(0)?,
                    message_id: r.try_get(1)?,
                    payload_bytes: r.try_get(2)?,
                    created_ms: r.try_get(3)?,
                    deadline_ms: r.try_get(4)?,
                })
            })
            .collect()
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
        let Some(first) = items.first() else {
            return Ok(false);
        };
        let mut tx = self.begin_write().await?;
        for id in items {
            let res = sqlx::query(
                "UPDATE work_items SET awaiting_batch = 0, updated_ms = $1 \
                 WHERE id = $2 AND awaiting_batch = 1 AND state = 'queued'",
            )
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
             VALUES ($1, $2, $3, 1, 'pending', 'queue', $4)",
        )
        .bind(run_id)
        .bind(first)
        .bind(job)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
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
            "UPDATE work_items SET state = 'dead', awaiting_batch = 0, updated_ms = $1 \
             WHERE id = $2 AND awaiting_batch = 1 AND state = 'queued'",
        )
        .bind(now_ms)
        .bind(work_item_id)
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
        let rows = sqlx::query(
            "SELECT b.idx, w.id, w.message_id, w.payload, w.state FROM batch_members b \
             JOIN work_items w ON w.id = b.work_item_id WHERE b.run_id = $1 ORDER BY b.idx",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BatchMember {
                    index: r.try_get(0)?,
                    work_item_id: r.try_get(1)?,
                    message_id: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    state: r.try_get(4)?,
                })
            })
            .collect()
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
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE runs SET state = $1, finished_ms = $2, error = $3 \
             WHERE run_id = $4 AND state = 'running'",
        )
        .bind(run_state.as_str())
        .bind(now_ms)
        .bind(error.map(str::to_string))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        for (work_item_id, end) in ends {
            let item = queue_item_tx(&mut tx, work_item_id, run_id, now_ms).await?;
            let state = match end {
                MemberEnd::Succeeded => WorkState::Succeeded,
                MemberEnd::Retry { .. } => WorkState::Queued,
                MemberEnd::Dead { .. } => WorkState::Dead,
            };
            sqlx::query("UPDATE work_items SET state = $1, updated_ms = $2 WHERE id = $3")
                .bind(state.as_str())
                .bind(now_ms)
                .bind(work_item_id)
                .execute(&mut *tx)
                .await?;
            match end {
                MemberEnd::Succeeded => {}
                MemberEnd::Retry {
                    run_id,
                    attempt,
                    not_before_ms,
                } => {
                    sqlx::query(
                        "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
                         VALUES ($1, $2, $3, $4, 'pending', 'queue', $5)",
                    )
                    .bind(run_id)
                    .bind(work_item_id)
                    .bind(&item.job)
                    .bind(*attempt)
                    .bind(*not_before_ms)
                    .execute(&mut *tx)
                    .await?;
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
        let res = sqlx::query(
            "UPDATE dead_letters SET replayed_ms = $1 WHERE id = $2 AND replayed_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        // LEFT JOIN: a message dead-lettered at intake has no run yet.
        let row = sqlx::query(
            "SELECT w.id, w.job, COALESCE(r.trigger_kind, 'queue') FROM dead_letters d \
             JOIN work_items w ON w.id = d.work_item_id \
             LEFT JOIN runs r ON r.work_item_id = w.id \
             WHERE d.id = $1 ORDER BY r.attempt DESC LIMIT 1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let work_item_id: String = row.try_get(0)?;
        let job: String = row.try_get(1)?;
        let trigger: String = row.try_get(2)?;
        sqlx::query(
            "UPDATE work_items SET state = 'queued', attempt_base = $1, updated_ms = $2 WHERE id = $3",
        )
        .bind(attempt - 1)
        .bind(now_ms)
        .bind(&work_item_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
        )
        .bind(run_id)
        .bind(&work_item_id)
        .bind(&job)
        .bind(attempt)
        .bind(&trigger)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce_work().await;
        Ok(true)
    }
}

/// A queue message's work item as a [`NewWorkItem`] (for its dead letter).
async fn queue_item_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    work_item_id: &str,
    run_id: &str,
    now: i64,
) -> Result<NewWorkItem> {
    let row = sqlx::query(
        "SELECT job, source, message_id, payload, deadline_ms FROM work_items WHERE id = $1",
    )
    .bind(work_item_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(NewWorkItem {
        job: row.try_get(0)?,
        source: row.try_get(1)?,
        message_id: row.try_get(2)?,
        payload: row.try_get(3)?,
        deadline_ms: row.try_get(4)?,
        trigger: TriggerKind::Queue,
        run_id: run_id.to_string(),
        scheduled_ms: now,
    })
}

async fn insert_dead_item_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    item: &NewWorkItem,
    reason: &str,
    error: &str,
    now: i64,
) -> Result<bool> {
    let id = uuid::Uuid::new_v4().to_string();
    let res = sqlx::query(
        "INSERT INTO work_items (id, job, source, message_id, payload, state, deadline_ms, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, 'dead', $6, $7, $8) \
         ON CONFLICT (source, job, message_id) DO NOTHING",
    )
    .bind(&id)
    .bind(&item.job)
    .bind(&item.source)
    .bind(&item.message_id)
    .bind(item.payload.clone())
    .bind(item.deadline_ms)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if res.rows_affected() == 0 {
        return Ok(false);
    }
    insert_dead_letter_tx(tx, &id, item, reason, 0, error, now).await?;
    Ok(true)
}

async fn insert_batch_item_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    item: &NewWorkItem,
    now: i64,
) -> Result<bool> {
    let res = sqlx::query(
        "INSERT INTO work_items (id, job, source, message_id, payload, state, deadline_ms, \
         created_ms, updated_ms, awaiting_batch) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, 1) \
         ON CONFLICT (source, job, message_id) DO NOTHING",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(&item.job)
    .bind(&item.source)
    .bind(&item.message_id)
    .bind(item.payload.clone())
    .bind(item.deadline_ms)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if res.rows_affected() == 1 {
        return Ok(true);
    }
    revive_replayed_tx(tx, item, now).await
}

async fn insert_dead_letter_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
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
    .bind(item.payload.clone())
    .bind(reason)
    .bind(attempts)
    .bind(error)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rows per multi-row statement (6 columns at most: well inside SQLite's
/// and PostgreSQL's bind-parameter limits).
const ROWS_PER_STATEMENT: usize = 100;

/// `($1, …, $cols), ($cols+1, …), …` for `rows` rows.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`insert_item_tx`] for many new items with multi-row statements. An item
/// whose (source, job, message id) is stored already goes the one-by-one
/// way (a replayed item is revived, anything else is a duplicate).
async fn insert_items_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    items: &[(&NewWorkItem, String)],
    now: i64,
) -> Result<()> {
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO work_items (id, job, source, message_id, payload, state, deadline_ms, created_ms, updated_ms) \
             VALUES {} ON CONFLICT (source, job, message_id) DO NOTHING RETURNING id",
            (0..chunk.len())
                .map(|r| {
                    let b = r * 7;
                    format!("(${}, ${}, ${}, ${}, ${}, 'queued', ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 7)
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (item, id) in chunk {
            q = q
                .bind(id.clone())
                .bind(&item.job)
                .bind(&item.source)
                .bind(&item.message_id)
                .bind(item.payload.clone())
                .bind(item.deadline_ms)
                .bind(now);
        }
        let inserted: std::collections::HashSet<String> = q
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        let new: Vec<&(&NewWorkItem, String)> = chunk
            .iter()
            .filter(|(_, id)| inserted.contains(id))
            .collect();
        for (item, _) in chunk.iter().filter(|(_, id)| !inserted.contains(id)) {
            revive_replayed_tx(tx, item, now).await?;
        }
        if new.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) VALUES {}",
            (0..new.len())
                .map(|r| {
                    let b = r * 5;
                    format!("(${}, ${}, ${}, 1, 'pending', ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5)
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (item, id) in new {
            q = q
                .bind(&item.run_id)
                .bind(id.clone())
                .bind(&item.job)
                .bind(item.trigger.as_str())
                .bind(item.scheduled_ms);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_item_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    item: &NewWorkItem,
    id: &str,
) -> Result<bool> {
    let now = now_ms();
    let res = sqlx::query(
        "INSERT INTO work_items (id, job, source, message_id, payload, state, deadline_ms, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8) \
         ON CONFLICT (source, job, message_id) DO NOTHING",
    )
    .bind(id)
    .bind(&item.job)
    .bind(&item.source)
    .bind(&item.message_id)
    .bind(item.payload.clone())
    .bind(item.deadline_ms)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if res.rows_affected() == 0 {
        return revive_replayed_tx(tx, item, now).await;
    }
    sqlx::query(
        "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
         VALUES ($1, $2, $3, 1, 'pending', $4, $5)",
    )
    .bind(&item.run_id)
    .bind(id)
    .bind(&item.job)
    .bind(item.trigger.as_str())
    .bind(item.scheduled_ms)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// A delivery of a message whose work item is `replayed` (its dead letter
/// was sent back to the source): queue the item again with a fresh retry
/// budget and a new pending run. Any other existing item: a duplicate,
/// nothing written.
async fn revive_replayed_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    item: &NewWorkItem,
    now: i64,
) -> Result<bool> {
    let Some(row) = sqlx::query(
        "SELECT w.id, (SELECT MAX(attempt) FROM runs r WHERE r.work_item_id = w.id) \
         FROM work_items w WHERE w.source = $1 AND w.job = $2 AND w.message_id = $3 \
         AND w.state = 'replayed'",
    )
    .bind(&item.source)
    .bind(&item.job)
    .bind(&item.message_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let id: String = row.try_get(0)?;
    let last: i64 = row.try_get::<Option<i64>, _>(1)?.unwrap_or(0);
    let attempt = last + 1;
    let res = sqlx::query(
        "UPDATE work_items SET state = 'queued', attempt_base = $1, payload = $2, \
         deadline_ms = $3, updated_ms = $4 WHERE id = $5 AND state = 'replayed'",
    )
    .bind(last)
    .bind(item.payload.clone())
    .bind(item.deadline_ms)
    .bind(now)
    .bind(&id)
    .execute(&mut **tx)
    .await?;
    if res.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
    )
    .bind(crate::lifecycle::attempt_run_name(
        &item.job,
        item.trigger,
        &item.message_id,
        attempt,
    ))
    .bind(&id)
    .bind(&item.job)
    .bind(attempt)
    .bind(item.trigger.as_str())
    .bind(item.scheduled_ms)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

fn dead_letter_from_row(r: &AnyRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.try_get(0)?,
        work_item_id: r.try_get(1)?,
        job: r.try_get(2)?,
        source: r.try_get(3)?,
        message_id: r.try_get(4)?,
        payload: r.try_get(5)?,
        reason: r.try_get(6)?,
        attempts: r.try_get(7)?,
        last_error: r.try_get(8)?,
        created_ms: r.try_get(9)?,
        replayed_ms: r.try_get(10)?,
    })
}

const DEAD_LETTER_COLUMNS: &str = "id, work_item_id, job, source, message_id, payload, reason, \
     attempts, last_error, created_ms, replayed_ms";

fn run_from_row(r: &AnyRow) -> Result<Run> {
    let state: String = r.try_get(4)?;
    let trigger: String = r.try_get(5)?;
    Ok(Run {
        run_id: r.try_get(0)?,
        work_item_id: r.try_get(1)?,
        job: r.try_get(2)?,
        attempt: r.try_get(3)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        trigger: trigger.parse().map_err(StoreError::Corrupt)?,
        scheduled_ms: r.try_get(6)?,
        started_ms: r.try_get(7)?,
        finished_ms: r.try_get(8)?,
        launches: r.try_get(9)?,
        error: r.try_get(10)?,
        source: r.try_get(11)?,
        message_id: r.try_get(12)?,
        payload: r.try_get(13)?,
        deadline_ms: r.try_get(14)?,
        attempt_base: r.try_get(15)?,
        sizing: match (
            r.try_get::<Option<f64>, _>(16)?,
            r.try_get::<Option<i64>, _>(17)?,
        ) {
            (Some(work), Some(parallelism)) => Some(RunSizing {
                work,
                parallelism,
                completions: r.try_get::<Option<i64>, _>(18)?.unwrap_or(parallelism),
                projected_finish_ms: r.try_get::<Option<i64>, _>(19)?.unwrap_or(0),
                at_risk: r.try_get::<Option<i64>, _>(20)?.unwrap_or(0) != 0,
                note: r.try_get::<Option<String>, _>(21)?.unwrap_or_default(),
            }),
            _ => None,
        },
    })
}

/// The file path of a `sqlite://path` URL.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty()).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://.kedge/k.db?mode=rwc").as_deref(),
            Some(".kedge/k.db")
        );
        assert_eq!(sqlite_path("sqlite:k.db").as_deref(), Some("k.db"));
    }
}
