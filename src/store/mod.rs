//! The state store: work items, runs (one per attempt, with timings), cron
//! fires and dead letters, in SQLite (the embedded default) or PostgreSQL.
//!
//! One set of queries serves both through `sqlx::Any`; the schema in
//! `migrations/` is portable SQL and times are Unix milliseconds. Every
//! state change that must not be half-done (intake, settlement, replay) is
//! one transaction, guarded on the state it expects, so concurrent or
//! repeated calls settle once. See [`crate::lifecycle`] for the states.
//!
//! # Layout
//!
//! This file holds the connection, migrations and what every table's
//! queries share; each table has a file of its own with its rows and its
//! `impl Store` block:
//!
//! - `work_items.rs` — intake: work items ([`NewWorkItem`]) and their first runs.
//! - `runs.rs` — [`Run`]s: due, claim, requeue, cancel, sizing, settle, list.
//! - `cron_fires.rs` — the record of every cron fire decided ([`CronFire`]).
//! - `dead_letters.rs` — [`DeadLetter`]s, their forwarding outbox and replay.
//! - `batches.rs` — work items waiting for a batch run, and its [`BatchMember`]s.
//! - `job_controls.rs` — each job's operator state ([`JobControl`]) and
//!   its changes, with their audit record and catch-up ([`StateChange`]).
//! - `audit_log` (`audit.rs`) — every operator action ([`AuditRecord`]).
//! - `backfills.rs` — `kedge backfill`: its fires and the cap its runs
//!   launch under ([`NewBackfill`], [`BackfillCap`]).
//! - `retention.rs` — what of finished history may be deleted, and
//!   deleting it in small batches ([`Pruned`]).
//!
//! States are never spelled in SQL: queries bind `RunState::…as_str()` (and
//! the other lifecycle enums) as parameters, and rows are read into
//! `#[derive(sqlx::FromRow)]` structs; a column holding a state kedge did
//! not write reads as [`StoreError::Corrupt`].
//!
//! The operations the daemon runs often (due, claim, settle, intake, cron
//! fires, batches, dead letters, the counts behind `/metrics`) are timed
//! into `kedge_store_query_duration_seconds{op}`, `op` the method's name:
//! a `let _t = crate::metrics::store_timer("…")` first thing in the method.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::AnyPool;

use crate::clock::Clock;
use crate::redact::redact;

mod audit;
mod backfills;
mod batches;
mod cron_fires;
mod dead_letters;
mod job_controls;
mod retention;
mod rows;
mod runs;
mod signal;
mod work_items;

pub use audit::AuditRecord;
pub use backfills::{
    BackfillCap, BackfillFire, BackfillOverlap, BackfillReport, FireAction, NewBackfill, Rerun,
};
pub use batches::{BatchCandidate, BatchMember, MemberEnd};
pub use cron_fires::{CronFire, FireRecord};
pub use dead_letters::DeadLetter;
pub use job_controls::{skipped_detail, CatchUp, Changed, JobControl, StateChange};
pub use retention::{Pruned, PrunedItems};
pub use rows::{AuditEntry, NewWorkItem};
pub use runs::{HistoryRow, Run, RunSizing, Settlement};
pub use work_items::Intake;

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
    /// Job `{0}`'s operator state changed while its cron fires were being
    /// decided: nothing was written; decide again.
    #[error("the operator state of job {0} changed while its fires were decided")]
    OperatorStateChanged(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

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
    /// Where the store and everything that uses it read the time
    /// ([`Clock::system`] unless [`Store::with_clock`] set another).
    clock: Clock,
}

/// A write transaction ([`Store::begin_write`]); the `*_tx` helpers of every
/// table take one.
type Tx = sqlx::Transaction<'static, sqlx::Any>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows per multi-row statement (9 columns at most: 900 bind parameters,
/// well inside SQLite's and PostgreSQL's limits).
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

/// `$first, $first+1, …` for `n` values (an `IN (…)` list).
fn placeholder_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A state column read back: a value kedge never writes is
/// [`StoreError::Corrupt`], naming it.
fn parse_column<T: FromStr<Err = String>>(value: &str) -> Result<T> {
    value.parse().map_err(StoreError::Corrupt)
}

impl Store {
    /// The same store read through `clock` (tests on paused time).
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The clock the store stamps times with; the daemon, the dispatcher,
    /// the triggers and the finalizer read the same one.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Opens the store at `url` (`sqlite://path`, `sqlite::memory:`,
    /// `postgres://…`). Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let connect_err = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let path = (!memory).then(|| sqlite_path(url)).flatten();
            let pool = connect_sqlite(url, path.as_deref(), memory)
                .await
                .map_err(connect_err)?;
            Ok(Store {
                pool,
                backend: Backend::Sqlite,
                // In memory: no other process can write to it.
                signal: Signal::sqlite(path.as_deref()),
                clock: Clock::system(),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(connect_err)?;
            Ok(Store {
                pool,
                backend: Backend::Postgres,
                signal: Signal::Postgres {
                    url: url.to_string(),
                },
                clock: Clock::system(),
            })
        } else {
            Err(StoreError::UnsupportedUrl(redact(url)))
        }
    }

    /// Applies pending migrations from `migrations/` (embedded in the binary).
    ///
    /// Two processes may migrate a new SQLite file at once (the daemon and
    /// a `kedge enqueue`, say): SQLite has no migration lock, so the loser
    /// finds a table the winner just made. Each migration is one
    /// transaction, so after a short wait the loser sees them applied and
    /// tries again; PostgreSQL's migrator takes an advisory lock instead.
    pub async fn migrate(&self) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => break,
                Err(e) if self.backend == Backend::Sqlite && attempt < 10 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "migrating raced another process; trying again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => return Err(StoreError::Migrate(e)),
            }
        }
        sqlx::query(
            "INSERT INTO kedge_meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The pool, for unit tests that must write what kedge never writes
    /// (a corrupt value).
    #[cfg(test)]
    pub(crate) fn pool_for_tests(&self) -> &AnyPool {
        &self.pool
    }

    /// A random id fixed when the store was created; tells this store's
    /// processes apart from another store's on the same machine.
    pub async fn instance_id(&self) -> Result<String> {
        Ok(
            sqlx::query_scalar("SELECT value FROM kedge_meta WHERE key = 'instance_id'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock first (waiting on `busy_timeout`) so it can never fail later
    /// with a lock upgrade conflict against another process.
    async fn begin_write(&self) -> Result<Tx> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("UPDATE kedge_meta SET value = value WHERE key = 'instance_id'")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Runs one statement in a write transaction of its own
    /// ([`Store::begin_write`]). Returns the rows it changed.
    async fn write_one<'q>(&self, q: Query<'q, sqlx::Any, AnyArguments<'q>>) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let changed = q.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(changed)
    }
}

/// The SQLite pool: the database file's folder is created, and the file
/// too (`mode=rwc`) unless the URL says otherwise.
async fn connect_sqlite(
    url: &str,
    path: Option<&str>,
    memory: bool,
) -> std::result::Result<AnyPool, sqlx::Error> {
    let mut url = url.to_string();
    if !memory {
        if let Some(parent) = path.and_then(|p| std::path::Path::new(p).parent()) {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
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

    /// Four processes' first commands on a new SQLite file at once (here:
    /// four pools): every one finds the store migrated, none fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_migrations_of_a_new_sqlite_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/new.db", dir.path().display());
        for _ in 0..3 {
            let _ = std::fs::remove_file(dir.path().join("new.db"));
            let mut stores = Vec::new();
            for _ in 0..4 {
                stores.push(Store::connect(&url).await.unwrap());
            }
            let results = futures::future::join_all(stores.iter().map(|s| s.migrate())).await;
            for r in results {
                r.expect("a racing migration succeeds");
            }
            let ids: std::collections::HashSet<String> =
                futures::future::join_all(stores.iter().map(|s| s.instance_id()))
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
            assert_eq!(ids.len(), 1, "one instance id for the one store");
            for s in stores {
                s.close().await;
            }
        }
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://.kedge/k.db?mode=rwc").as_deref(),
            Some(".kedge/k.db")
        );
        assert_eq!(sqlite_path("sqlite:k.db").as_deref(), Some("k.db"));
    }

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(0, 3), "");
        assert_eq!(placeholder_list(2, 3), "$2, $3, $4");
    }

    #[test]
    fn a_state_kedge_never_writes_is_corrupt() {
        use crate::lifecycle::RunState;
        assert_eq!(
            parse_column::<RunState>("running").ok(),
            Some(RunState::Running)
        );
        match parse_column::<RunState>("runnin") {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("\"runnin\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
