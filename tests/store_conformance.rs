//! Store conformance: one set of checks of [`kedge::store::Store`], each run
//! twice — against SQLite (`sqlite_*`, a temp-file store of its own) and
//! against the real PostgreSQL server (`postgres_*`, a throwaway database of
//! its own, see `support::postgres_database`). Every test owns its database,
//! so they run in parallel.
//!
//! The checks go through the public store API and peek at the tables with a
//! separate plain connection where the API shows nothing (work item states,
//! row counts). Times are fixed Unix milliseconds around [`T0`], so every
//! value is asserted exactly.

mod support;

use std::collections::BTreeMap;

use kedge::clock::Clock;
use kedge::config::daemon::RetentionConfig;
use kedge::lifecycle::{FireOutcome, OperatorState, RunState, TriggerKind};
use kedge::retention::{Pruner, Report};
use kedge::store::{
    AuditEntry, BackfillCap, BackfillOverlap, Changed, CronFire, DeadLetter, FireAction,
    FireRecord, MemberEnd, NewBackfill, NewWorkItem, Pruned, Rerun, Run, Settlement, StateChange,
    Store, StoreError,
};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

/// A fixed "now" for every check (2023-11-14T22:13:20Z).
const T0: i64 = 1_700_000_000_000;

// ----- fixtures -------------------------------------------------------------

/// Keeps the database alive for the test.
enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] support::PgDatabase),
}

/// A migrated store, the URL it lives at, and a plain connection to peek.
struct Db {
    store: Store,
    url: String,
    peek: AnyPool,
    _guard: Guard,
}

/// What the API does not show of a work item.
#[derive(Debug, PartialEq, Eq)]
struct WorkItemRow {
    state: String,
    attempt_base: i64,
    updated_ms: i64,
}

impl Db {
    /// A SQLite store in a file of its own.
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("state/kedge.db").display());
        Db::open(url, Guard::Sqlite(dir)).await
    }

    /// A PostgreSQL store in a database of its own; `None` when skipped.
    async fn postgres() -> Option<Db> {
        let pg = support::postgres_database().await?;
        let url = pg.url.clone();
        Some(Db::open(url, Guard::Postgres(pg)).await)
    }

    async fn open(url: String, guard: Guard) -> Db {
        let store = Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let peek = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("peek connection");
        Db {
            store,
            url,
            peek,
            _guard: guard,
        }
    }

    /// Another handle on the same database, as a second process would open.
    async fn second_store(&self) -> Store {
        let store = Store::connect(&self.url).await.expect("connect again");
        store.migrate().await.expect("migrate again");
        store
    }

    async fn close(self) {
        self.store.close().await;
        self.peek.close().await;
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.peek)
            .await
            .expect("count")
            .get::<i64, _>(0)
    }

    async fn work_item(&self, id: &str) -> WorkItemRow {
        let row =
            sqlx::query("SELECT state, attempt_base, updated_ms FROM work_items WHERE id = $1")
                .bind(id)
                .fetch_one(&self.peek)
                .await
                .expect("work item row");
        WorkItemRow {
            state: row.get(0),
            attempt_base: row.get(1),
            updated_ms: row.get(2),
        }
    }

    async fn work_item_state(&self, id: &str) -> String {
        self.work_item(id).await.state
    }
}

/// Instantiates each `check_xxx(&Db)` as `sqlite_xxx` and `postgres_xxx`.
macro_rules! conformance {
    ($($check:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test]
        async fn $sqlite() {
            let db = Db::sqlite().await;
            $check(&db).await;
            db.close().await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(db) = Db::postgres().await else { return };
            $check(&db).await;
            db.close().await;
        }
    )*};
}

conformance! {
    check_migrate_is_idempotent => sqlite_migrate_is_idempotent, postgres_migrate_is_idempotent;
    check_insert_work_item => sqlite_insert_work_item, postgres_insert_work_item;
    check_due_runs_order => sqlite_due_runs_order, postgres_due_runs_order;
    check_next_due_ms => sqlite_next_due_ms, postgres_next_due_ms;
    check_claim_and_requeue => sqlite_claim_and_requeue, postgres_claim_and_requeue;
    check_active_counts => sqlite_active_counts, postgres_active_counts;
    check_settle_succeeded => sqlite_settle_succeeded, postgres_settle_succeeded;
    check_settle_retry => sqlite_settle_retry, postgres_settle_retry;
    check_settle_dead => sqlite_settle_dead, postgres_settle_dead;
    check_settle_cancelled => sqlite_settle_cancelled, postgres_settle_cancelled;
    check_settle_needs_running => sqlite_settle_needs_running, postgres_settle_needs_running;
    check_cancel_pending_runs => sqlite_cancel_pending_runs, postgres_cancel_pending_runs;
    check_cron_fires => sqlite_cron_fires, postgres_cron_fires;
    check_many_fires_and_claims => sqlite_many_fires_and_claims, postgres_many_fires_and_claims;
    check_list_runs => sqlite_list_runs, postgres_list_runs;
    check_dead_letters => sqlite_dead_letters, postgres_dead_letters;
    check_replay_dead_letter => sqlite_replay_dead_letter, postgres_replay_dead_letter;
    check_prune_history => sqlite_prune_history, postgres_prune_history;
    check_prune_batches => sqlite_prune_batches, postgres_prune_batches;
    check_prune_cron_fires => sqlite_prune_cron_fires, postgres_prune_cron_fires;
    check_job_controls => sqlite_job_controls, postgres_job_controls;
    check_backfill => sqlite_backfill, postgres_backfill;
    check_rerun => sqlite_rerun, postgres_rerun;
}

// ----- helpers --------------------------------------------------------------

/// A builtin-queue message `msg` of `job`; its first run is `<job>-<msg>`.
fn item(job: &str, msg: &str, scheduled_ms: i64) -> NewWorkItem {
    NewWorkItem {
        job: job.to_string(),
        source: "builtin".to_string(),
        message_id: msg.to_string(),
        payload: Some(format!("{{\"msg\":\"{msg}\"}}")),
        deadline_ms: None,
        trigger: TriggerKind::Queue,
        run_id: format!("{job}-{msg}"),
        scheduled_ms,
    }
}

fn with_deadline(mut item: NewWorkItem, deadline_ms: i64) -> NewWorkItem {
    item.deadline_ms = Some(deadline_ms);
    item
}

/// The run `insert_work_item(item)` must have created.
fn first_run(item: &NewWorkItem, work_item_id: &str) -> Run {
    Run {
        run_id: item.run_id.clone(),
        work_item_id: work_item_id.to_string(),
        job: item.job.clone(),
        attempt: 1,
        state: RunState::Pending,
        trigger: item.trigger,
        scheduled_ms: item.scheduled_ms,
        started_ms: None,
        finished_ms: None,
        launches: 0,
        first_launch_ms: None,
        error: None,
        source: item.source.clone(),
        message_id: item.message_id.clone(),
        payload: item.payload.clone(),
        deadline_ms: item.deadline_ms,
        attempt_base: 0,
        sizing: None,
        backfill_id: None,
    }
}

/// Inserts `item` (must be new) and returns its first run.
async fn add(store: &Store, item: &NewWorkItem) -> Run {
    assert!(
        store.insert_work_item(item).await.expect("insert"),
        "{} should be new",
        item.run_id
    );
    run(store, &item.run_id).await
}

async fn run(store: &Store, run_id: &str) -> Run {
    store
        .get_run(run_id)
        .await
        .expect("get_run")
        .unwrap_or_else(|| panic!("run {run_id} should exist"))
}

/// Claims `run_id` (must succeed) at `now`.
async fn claim(store: &Store, run_id: &str, now: i64) {
    assert!(
        store.claim_run(run_id, now).await.expect("claim"),
        "claim {run_id} should succeed"
    );
}

async fn settle(store: &Store, run_id: &str, s: Settlement, now: i64) -> bool {
    store.settle(run_id, &s, now).await.expect("settle")
}

fn ids(runs: &[Run]) -> Vec<&str> {
    runs.iter().map(|r| r.run_id.as_str()).collect()
}

fn retry(error: &str, next_run_id: &str, next_attempt: i64, not_before_ms: i64) -> Settlement {
    Settlement::Retry {
        error: error.into(),
        next_run_id: next_run_id.into(),
        next_attempt,
        not_before_ms,
    }
}

fn dead(error: &str, reason: &str) -> Settlement {
    Settlement::Dead {
        error: error.into(),
        reason: reason.into(),
    }
}

async fn all_runs(store: &Store) -> Vec<Run> {
    store
        .list_runs(None, None, 10_000)
        .await
        .expect("list_runs")
}

async fn open_letters(store: &Store) -> Vec<DeadLetter> {
    store
        .dead_letters(None, false, 1000)
        .await
        .expect("dead_letters")
}

/// Runs `item` through one failed attempt per `errors` entry: the first
/// ones retry, the last one dies with `reason`. Returns the dead letter.
async fn fail_to_death(
    store: &Store,
    item: &NewWorkItem,
    errors: &[&str],
    reason: &str,
    dead_at: i64,
) -> DeadLetter {
    let first = add(store, item).await;
    let mut run_id = first.run_id.clone();
    for (i, error) in errors.iter().enumerate() {
        let attempt = i as i64 + 1;
        claim(store, &run_id, dead_at - 100 + attempt).await;
        if attempt < errors.len() as i64 {
            let next = format!("{}-{}", item.run_id, attempt + 1);
            let s = retry(error, &next, attempt + 1, 0);
            assert!(settle(store, &run_id, s, dead_at - 50 + attempt).await);
            run_id = next;
        } else {
            assert!(settle(store, &run_id, dead(error, reason), dead_at).await);
        }
    }
    store
        .dead_letters(Some(&item.job), true, 1000)
        .await
        .expect("dead_letters")
        .into_iter()
        .find(|d| d.work_item_id == first.work_item_id && d.created_ms == dead_at)
        .expect("the dead letter")
}

// ----- checks ---------------------------------------------------------------

async fn check_migrate_is_idempotent(db: &Db) {
    let store = &db.store;
    let id = store.instance_id().await.expect("instance_id");
    uuid::Uuid::parse_str(&id).expect("instance id is a UUID");
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    assert_eq!(store.instance_id().await.unwrap(), id);
    assert_eq!(db.count("kedge_meta").await, 1);
    // Another process opening (and migrating) the same store sees the same id.
    let other = db.second_store().await;
    assert_eq!(other.instance_id().await.unwrap(), id);
    other.close().await;
    // Migrating did not disturb data.
    add(store, &item("j", "m1", T0)).await;
    store.migrate().await.expect("migrate with data");
    assert_eq!(all_runs(store).await.len(), 1);
}

async fn check_insert_work_item(db: &Db) {
    let store = &db.store;
    let a = with_deadline(item("q", "m1", T0), T0 + 60_000);
    let before = store.clock().now_ms();
    let run_a = add(store, &a).await;
    assert!(!run_a.work_item_id.is_empty());
    assert_eq!(run_a, first_run(&a, &run_a.work_item_id));
    let wi = db.work_item(&run_a.work_item_id).await;
    assert_eq!(wi.state, "queued");
    assert_eq!(wi.attempt_base, 0);
    assert!(wi.updated_ms >= before, "updated_ms is now-ish");

    // Same (source, job, message id): a no-op, even with other details.
    let mut again = a.clone();
    again.run_id = "q-other".into();
    again.payload = Some("different".into());
    again.scheduled_ms = T0 + 5;
    assert!(!store.insert_work_item(&again).await.unwrap());
    assert_eq!(store.get_run("q-other").await.unwrap(), None);
    assert_eq!(run(store, "q-m1").await, run_a, "the original is untouched");
    assert_eq!(db.count("work_items").await, 1);
    assert_eq!(db.count("runs").await, 1);

    // Another source with the same message id is another message.
    let mut b = a.clone();
    b.source = "redis-main".into();
    b.run_id = "q-m1-redis".into();
    let run_b = add(store, &b).await;
    assert_ne!(run_b.work_item_id, run_a.work_item_id);
    assert_eq!(run_b, first_run(&b, &run_b.work_item_id));
    // So is another job with the same source and message id.
    let mut c = a.clone();
    c.job = "q2".into();
    c.run_id = "q2-m1".into();
    c.trigger = TriggerKind::Manual;
    c.payload = None;
    c.deadline_ms = None;
    let run_c = add(store, &c).await;
    assert_eq!(run_c, first_run(&c, &run_c.work_item_id));
    assert_eq!(db.count("work_items").await, 3);
    assert_eq!(db.count("runs").await, 3);
}

async fn check_due_runs_order(db: &Db) {
    let store = &db.store;
    for it in [
        item("j", "a", T0),                                  // no deadline, at T0
        with_deadline(item("j", "b", T0 + 10), T0 + 5_000),  // deadline 5000
        with_deadline(item("j", "c", T0 - 100), T0 + 1_000), // earliest deadline
        item("j", "d", T0 - 50),                             // no deadline, older
        with_deadline(item("j", "e", T0 + 1_000), T0 + 10),  // not due before T0+1000
        with_deadline(item("k", "f", T0 + 20), T0 + 5_000),  // same deadline as b, newer
        item("k", "g", T0 - 50),                             // ties with d: run id order
    ] {
        add(store, &it).await;
    }
    let due = store.due_runs(T0 + 500, 100).await.unwrap();
    assert_eq!(ids(&due), ["j-c", "j-b", "k-f", "j-d", "k-g", "j-a"]);
    assert!(due.iter().all(|r| r.state == RunState::Pending));
    let due = store.due_runs(T0 + 500, 2).await.unwrap();
    assert_eq!(ids(&due), ["j-c", "j-b"]);
    // scheduled_ms == now is due; a millisecond later is not.
    let due = store.due_runs(T0, 100).await.unwrap();
    assert_eq!(ids(&due), ["j-c", "j-d", "k-g", "j-a"]);
    let due = store.due_runs(T0 - 101, 100).await.unwrap();
    assert!(due.is_empty());
    let due = store.due_runs(T0 + 1_000, 100).await.unwrap();
    assert_eq!(ids(&due), ["j-e", "j-c", "j-b", "k-f", "j-d", "k-g", "j-a"]);
    // Claimed runs are not due any more.
    claim(store, "j-c", T0 + 1_000).await;
    claim(store, "k-g", T0 + 1_000).await;
    let due = store.due_runs(T0 + 1_000, 100).await.unwrap();
    assert_eq!(ids(&due), ["j-e", "j-b", "k-f", "j-d", "j-a"]);
}

async fn check_next_due_ms(db: &Db) {
    let store = &db.store;
    assert_eq!(store.next_due_ms().await.unwrap(), None);
    add(store, &item("j", "late", T0 + 300)).await;
    add(store, &item("j", "soon", T0 + 100)).await;
    assert_eq!(store.next_due_ms().await.unwrap(), Some(T0 + 100));
    claim(store, "j-soon", T0 + 100).await;
    assert_eq!(store.next_due_ms().await.unwrap(), Some(T0 + 300));
    claim(store, "j-late", T0 + 300).await;
    assert_eq!(
        store.next_due_ms().await.unwrap(),
        None,
        "running runs are not due"
    );
    assert!(store.requeue_run("j-soon", "interrupted").await.unwrap());
    assert_eq!(store.next_due_ms().await.unwrap(), Some(T0 + 100));
}

async fn check_claim_and_requeue(db: &Db) {
    let store = &db.store;
    let pending = add(store, &item("j", "m", T0)).await;
    assert!(
        !store.requeue_run("j-m", "nope").await.unwrap(),
        "requeue needs running"
    );
    assert_eq!(run(store, "j-m").await, pending);

    claim(store, "j-m", T0 + 5).await;
    let running = Run {
        state: RunState::Running,
        started_ms: Some(T0 + 5),
        launches: 1,
        first_launch_ms: Some(T0 + 5),
        ..pending.clone()
    };
    assert_eq!(run(store, "j-m").await, running);
    assert!(
        !store.claim_run("j-m", T0 + 6).await.unwrap(),
        "second claim"
    );
    assert_eq!(
        run(store, "j-m").await,
        running,
        "a failed claim changes nothing"
    );
    assert!(!store.claim_run("nope", T0).await.unwrap());

    assert!(store.requeue_run("j-m", "shutdown").await.unwrap());
    let requeued = Run {
        state: RunState::Pending,
        started_ms: None,
        error: Some("shutdown".into()),
        ..running.clone()
    };
    assert_eq!(run(store, "j-m").await, requeued);
    assert!(!store.requeue_run("j-m", "again").await.unwrap());
    assert_eq!(run(store, "j-m").await, requeued);
    assert_eq!(ids(&store.due_runs(T0, 10).await.unwrap()), ["j-m"]);
    assert_eq!(db.work_item_state(&pending.work_item_id).await, "queued");

    // Launched again under the same id and attempt; launches counts both.
    claim(store, "j-m", T0 + 9).await;
    let relaunched = run(store, "j-m").await;
    assert_eq!(
        (
            relaunched.state,
            relaunched.attempt,
            relaunched.started_ms,
            relaunched.launches
        ),
        (RunState::Running, 1, Some(T0 + 9), 2)
    );
    assert!(settle(store, "j-m", Settlement::Succeeded, T0 + 20).await);
    assert!(
        !store.requeue_run("j-m", "late").await.unwrap(),
        "settled runs stay settled"
    );
    assert!(!store.claim_run("j-m", T0 + 30).await.unwrap());
    assert_eq!(run(store, "j-m").await.state, RunState::Succeeded);
    assert!(!store.requeue_run("nope", "x").await.unwrap());
}

async fn check_active_counts(db: &Db) {
    let store = &db.store;
    assert!(store.active_counts().await.unwrap().is_empty());
    for it in [
        item("a", "1", T0),
        item("a", "2", T0),
        item("a", "3", T0),
        item("b", "1", T0),
        item("c", "1", T0),
    ] {
        add(store, &it).await;
    }
    claim(store, "a-1", T0).await;
    claim(store, "b-1", T0).await;
    claim(store, "c-1", T0).await;
    assert!(settle(store, "c-1", Settlement::Succeeded, T0 + 1).await);
    let mut counts = store.active_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, [("a".to_string(), 1, 2), ("b".to_string(), 1, 0)]);
    assert_eq!(store.active_runs_of("a").await.unwrap(), ["a-1"]);
    assert_eq!(store.active_runs_of("b").await.unwrap(), ["b-1"]);
    assert!(store.active_runs_of("c").await.unwrap().is_empty());
    assert!(store.active_runs_of("nope").await.unwrap().is_empty());
    claim(store, "a-2", T0).await;
    let mut running = store.active_runs_of("a").await.unwrap();
    running.sort();
    assert_eq!(running, ["a-1", "a-2"]);
    let mut counts = store.active_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, [("a".to_string(), 2, 1), ("b".to_string(), 1, 0)]);
    assert_eq!(store.active_count_of("a").await.unwrap(), (2, 1));
    assert_eq!(store.active_count_of("b").await.unwrap(), (1, 0));
    assert_eq!(store.active_count_of("c").await.unwrap(), (0, 0));
    assert_eq!(store.active_count_of("nope").await.unwrap(), (0, 0));

    // Pods in use: 1 per unsized running run, a sized run's parallelism.
    // (A sum over a BIGINT column is NUMERIC on PostgreSQL, which the Any
    // driver cannot decode: the query must cast it.)
    let mut pods = store.running_pods().await.unwrap();
    pods.sort();
    assert_eq!(pods, [("a".to_string(), 2), ("b".to_string(), 1)]);
    let sizing = kedge::store::RunSizing {
        work: 10.0,
        parallelism: 4,
        completions: 4,
        projected_finish_ms: T0 + 1000,
        at_risk: false,
        note: "test".into(),
    };
    store.record_sizing("a-1", &sizing).await.unwrap();
    let mut pods = store.running_pods().await.unwrap();
    pods.sort();
    assert_eq!(pods, [("a".to_string(), 5), ("b".to_string(), 1)]);
}

async fn check_settle_succeeded(db: &Db) {
    let store = &db.store;
    let r = add(store, &item("j", "m", T0)).await;
    claim(store, "j-m", T0 + 1).await;
    assert!(settle(store, "j-m", Settlement::Succeeded, T0 + 100).await);
    let done = Run {
        state: RunState::Succeeded,
        started_ms: Some(T0 + 1),
        finished_ms: Some(T0 + 100),
        launches: 1,
        first_launch_ms: Some(T0 + 1),
        ..r.clone()
    };
    assert_eq!(run(store, "j-m").await, done);
    let wi = WorkItemRow {
        state: "succeeded".into(),
        attempt_base: 0,
        updated_ms: T0 + 100,
    };
    assert_eq!(db.work_item(&r.work_item_id).await, wi);
    assert!(store.active_counts().await.unwrap().is_empty());

    // Reported again (any outcome): nothing changes.
    assert!(!settle(store, "j-m", Settlement::Succeeded, T0 + 200).await);
    assert!(!settle(store, "j-m", dead("late", "late"), T0 + 200).await);
    assert!(!settle(store, "j-m", retry("late", "j-m-2", 2, T0), T0 + 200).await);
    let cancel = Settlement::Cancelled {
        error: "late".into(),
    };
    assert!(!settle(store, "j-m", cancel, T0 + 200).await);
    assert_eq!(run(store, "j-m").await, done);
    assert_eq!(db.work_item(&r.work_item_id).await, wi);
    assert_eq!(db.count("runs").await, 1);
    assert_eq!(db.count("dead_letters").await, 0);
}

async fn check_settle_retry(db: &Db) {
    let store = &db.store;
    let mut it = item("j", "m", T0);
    it.trigger = TriggerKind::Manual;
    let first = add(store, &it).await;
    claim(store, "j-m", T0 + 1).await;
    let s = retry("BackoffLimitExceeded: boom", "j-m-2", 2, T0 + 10_000);
    assert!(settle(store, "j-m", s.clone(), T0 + 100).await);

    assert_eq!(
        run(store, "j-m").await,
        Run {
            state: RunState::Failed,
            started_ms: Some(T0 + 1),
            finished_ms: Some(T0 + 100),
            launches: 1,
            first_launch_ms: Some(T0 + 1),
            error: Some("BackoffLimitExceeded: boom".into()),
            ..first.clone()
        }
    );
    let second = Run {
        run_id: "j-m-2".into(),
        attempt: 2,
        scheduled_ms: T0 + 10_000,
        ..first.clone()
    };
    assert_eq!(run(store, "j-m-2").await, second);
    assert_eq!(
        db.work_item(&first.work_item_id).await,
        WorkItemRow {
            state: "queued".into(),
            attempt_base: 0,
            updated_ms: T0 + 100
        }
    );
    assert_eq!(store.last_attempt(&first.work_item_id).await.unwrap(), 2);

    // The backoff is respected.
    assert!(store.due_runs(T0 + 9_999, 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_runs(T0 + 10_000, 10).await.unwrap(),
        std::slice::from_ref(&second)
    );
    assert_eq!(store.next_due_ms().await.unwrap(), Some(T0 + 10_000));

    // Settling the failed attempt again changes nothing.
    assert!(!settle(store, "j-m", s, T0 + 200).await);
    assert!(!settle(store, "j-m", retry("x", "j-m-3", 3, T0), T0 + 200).await);
    assert_eq!(db.count("runs").await, 2);
    assert_eq!(store.get_run("j-m-3").await.unwrap(), None);
    assert_eq!(run(store, "j-m-2").await, second);

    // The second attempt succeeds: the work item is done.
    claim(store, "j-m-2", T0 + 10_000).await;
    assert!(settle(store, "j-m-2", Settlement::Succeeded, T0 + 10_500).await);
    assert_eq!(db.work_item_state(&first.work_item_id).await, "succeeded");
    assert_eq!(run(store, "j-m").await.state, RunState::Failed);
}

async fn check_settle_dead(db: &Db) {
    let store = &db.store;
    let mut it = item("q", "m-9", T0);
    it.source = "redis-main".into();
    it.payload = Some("{\"n\":9}".into());
    let first = add(store, &it).await;
    claim(store, "q-m-9", T0 + 1).await;
    assert!(settle(store, "q-m-9", retry("E1", "q-m-9-2", 2, T0 + 50), T0 + 10).await);
    claim(store, "q-m-9-2", T0 + 60).await;
    let s = dead("E2", "failed 2 of 2 attempts");
    assert!(settle(store, "q-m-9-2", s.clone(), T0 + 500).await);

    let last = Run {
        run_id: "q-m-9-2".into(),
        attempt: 2,
        state: RunState::Dead,
        scheduled_ms: T0 + 50,
        started_ms: Some(T0 + 60),
        finished_ms: Some(T0 + 500),
        launches: 1,
        first_launch_ms: Some(T0 + 60),
        error: Some("E2".into()),
        ..first.clone()
    };
    assert_eq!(run(store, "q-m-9-2").await, last);
    assert_eq!(db.work_item_state(&first.work_item_id).await, "dead");
    let letters = open_letters(store).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert!(!letter.id.is_empty());
    assert_eq!(
        letter,
        &DeadLetter {
            id: letter.id.clone(),
            work_item_id: first.work_item_id.clone(),
            job: "q".into(),
            source: "redis-main".into(),
            message_id: "m-9".into(),
            payload: Some("{\"n\":9}".into()),
            reason: "failed 2 of 2 attempts".into(),
            attempts: 2,
            last_error: Some("E2".into()),
            created_ms: T0 + 500,
            replayed_ms: None,
        }
    );
    assert!(store.due_runs(T0 + 1_000_000, 10).await.unwrap().is_empty());

    // Reported twice: one dead letter.
    assert!(!settle(store, "q-m-9-2", s, T0 + 600).await);
    assert_eq!(db.count("dead_letters").await, 1);
    assert_eq!(run(store, "q-m-9-2").await, last);
    assert_eq!(open_letters(store).await, letters);
}

async fn check_settle_cancelled(db: &Db) {
    let store = &db.store;
    let r = add(store, &item("j", "m", T0)).await;
    claim(store, "j-m", T0 + 1).await;
    let s = Settlement::Cancelled {
        error: "cancelled: replaced by a newer cron fire".into(),
    };
    assert!(settle(store, "j-m", s.clone(), T0 + 7).await);
    let cancelled = Run {
        state: RunState::Failed,
        started_ms: Some(T0 + 1),
        finished_ms: Some(T0 + 7),
        launches: 1,
        first_launch_ms: Some(T0 + 1),
        error: Some("cancelled: replaced by a newer cron fire".into()),
        ..r.clone()
    };
    assert_eq!(run(store, "j-m").await, cancelled);
    assert_eq!(
        db.work_item(&r.work_item_id).await,
        WorkItemRow {
            state: "cancelled".into(),
            attempt_base: 0,
            updated_ms: T0 + 7
        }
    );
    assert!(!settle(store, "j-m", s, T0 + 8).await);
    assert_eq!(run(store, "j-m").await, cancelled);
    assert_eq!(db.count("runs").await, 1);
    assert_eq!(db.count("dead_letters").await, 0);
}

async fn check_settle_needs_running(db: &Db) {
    let store = &db.store;
    let pending = add(store, &item("j", "m", T0)).await;
    assert!(!settle(store, "j-m", Settlement::Succeeded, T0 + 1).await);
    assert!(!settle(store, "j-m", dead("x", "y"), T0 + 1).await);
    assert!(!settle(store, "j-m", retry("x", "j-m-2", 2, T0), T0 + 1).await);
    assert!(!settle(store, "nope", Settlement::Succeeded, T0 + 1).await);
    assert_eq!(run(store, "j-m").await, pending);
    assert_eq!(db.work_item_state(&pending.work_item_id).await, "queued");
    assert_eq!(db.count("runs").await, 1);
    assert_eq!(db.count("dead_letters").await, 0);
    // The refused settlements left the store usable (their transactions ended).
    claim(store, "j-m", T0 + 2).await;
    assert!(settle(store, "j-m", Settlement::Succeeded, T0 + 3).await);
    assert_eq!(db.work_item_state(&pending.work_item_id).await, "succeeded");
}

async fn check_cancel_pending_runs(db: &Db) {
    let store = &db.store;
    let c1 = add(store, &item("c", "1", T0)).await;
    let c2 = add(store, &item("c", "2", T0 + 60_000)).await;
    let c3 = add(store, &item("c", "3", T0)).await;
    let other = add(store, &item("o", "1", T0)).await;
    claim(store, "c-3", T0 + 1).await;

    let note = "replaced by the fire at 2023-11-14T22:14:00Z";
    assert_eq!(
        store.cancel_pending_runs("c", note, T0 + 50).await.unwrap(),
        2
    );
    for r in [&c1, &c2] {
        assert_eq!(
            run(store, &r.run_id).await,
            Run {
                state: RunState::Failed,
                finished_ms: Some(T0 + 50),
                error: Some(note.into()),
                ..r.clone()
            }
        );
        assert_eq!(
            db.work_item(&r.work_item_id).await,
            WorkItemRow {
                state: "cancelled".into(),
                attempt_base: 0,
                updated_ms: T0 + 50
            }
        );
    }
    assert_eq!(run(store, "c-3").await.state, RunState::Running);
    assert_eq!(db.work_item_state(&c3.work_item_id).await, "queued");
    assert_eq!(run(store, "o-1").await, other);
    assert_eq!(db.work_item_state(&other.work_item_id).await, "queued");
    assert_eq!(
        ids(&store.due_runs(T0 + 100_000, 10).await.unwrap()),
        ["o-1"]
    );
    assert_eq!(
        store.cancel_pending_runs("c", note, T0 + 60).await.unwrap(),
        0
    );
    assert_eq!(
        store
            .cancel_pending_runs("nope", note, T0 + 60)
            .await
            .unwrap(),
        0
    );
    assert_eq!(db.work_item(&c1.work_item_id).await.updated_ms, T0 + 50);
}

async fn check_cron_fires(db: &Db) {
    let store = &db.store;
    let (f0, f1, f2, f3) = (T0, T0 + 60_000, T0 + 120_000, T0 + 180_000);
    assert_eq!(store.last_cron_fire("nightly").await.unwrap(), None);
    assert!(store.cron_fires("nightly").await.unwrap().is_empty());

    let fire2 = kedge::intake::cron_work_item("nightly", chrono_ms(f2), None);
    assert!(store
        .record_cron_fire("nightly", f2, FireOutcome::Recorded, None, Some(&fire2))
        .await
        .unwrap());
    let r2 = run(store, &fire2.run_id).await;
    assert_eq!(r2, first_run(&fire2, &r2.work_item_id));
    assert_eq!(
        (r2.source.as_str(), r2.trigger),
        ("cron", TriggerKind::Cron)
    );
    assert_eq!(r2.message_id, f2.to_string());
    assert_eq!(db.work_item_state(&r2.work_item_id).await, "queued");

    assert!(store
        .record_cron_fire(
            "nightly",
            f1,
            FireOutcome::Skipped,
            Some("overlap: forbid"),
            None
        )
        .await
        .unwrap());
    assert_eq!(db.count("work_items").await, 1, "a fire without work item");

    // The same fire again: nothing written, whatever comes with it.
    assert!(!store
        .record_cron_fire("nightly", f2, FireOutcome::Launched, None, Some(&fire2))
        .await
        .unwrap());
    let mut other = fire2.clone();
    other.message_id = "elsewhere".into();
    other.run_id = "nightly-elsewhere".into();
    assert!(!store
        .record_cron_fire(
            "nightly",
            f2,
            FireOutcome::Replaced,
            Some("x"),
            Some(&other)
        )
        .await
        .unwrap());
    assert!(!store
        .record_cron_fire("nightly", f1, FireOutcome::Launched, None, None)
        .await
        .unwrap());
    assert_eq!(store.get_run("nightly-elsewhere").await.unwrap(), None);
    assert_eq!(db.count("work_items").await, 1);
    assert_eq!(db.count("runs").await, 1);

    // Missed fires: new ones recorded, recorded ones kept as they were.
    store
        .record_missed_fires(
            "nightly",
            &[
                (f3, "catch-up: skip".to_string()),
                (f0, "catch-up: skip".to_string()),
                (f2, "would overwrite".to_string()),
            ],
        )
        .await
        .unwrap();
    store.record_missed_fires("nightly", &[]).await.unwrap();
    let fire = |fire_ms, outcome: FireOutcome, detail: Option<&str>, wi: Option<&str>| CronFire {
        job: "nightly".into(),
        fire_ms,
        outcome,
        detail: detail.map(str::to_string),
        work_item_id: wi.map(str::to_string),
    };
    assert_eq!(
        store.cron_fires("nightly").await.unwrap(),
        [
            fire(f0, FireOutcome::Missed, Some("catch-up: skip"), None),
            fire(f1, FireOutcome::Skipped, Some("overlap: forbid"), None),
            fire(f2, FireOutcome::Recorded, None, Some(&r2.work_item_id)),
            fire(f3, FireOutcome::Missed, Some("catch-up: skip"), None),
        ]
    );
    // Once its run starts, the fire reads `launched`.
    let claimed = store.claim_runs(&[r2.run_id.as_str()], f2).await.unwrap();
    assert_eq!(claimed, [true]);
    assert_eq!(
        store.latest_cron_fires("nightly", 2).await.unwrap(),
        [
            fire(f2, FireOutcome::Launched, None, Some(&r2.work_item_id)),
            fire(f3, FireOutcome::Missed, Some("catch-up: skip"), None),
        ]
    );
    assert_eq!(store.last_cron_fire("nightly").await.unwrap(), Some(f3));

    // Jobs are separate: the same fire time of another job is its own fire.
    assert_eq!(store.last_cron_fire("hourly").await.unwrap(), None);
    assert!(store.cron_fires("hourly").await.unwrap().is_empty());
    let hourly = kedge::intake::cron_work_item("hourly", chrono_ms(f2), None);
    assert!(store
        .record_cron_fire("hourly", f2, FireOutcome::Launched, None, Some(&hourly))
        .await
        .unwrap());
    assert_eq!(store.last_cron_fire("hourly").await.unwrap(), Some(f2));
    // `launched` as earlier versions stored it reads `recorded` while its
    // run waits.
    assert_eq!(
        store.cron_fires("hourly").await.unwrap()[0].outcome,
        FireOutcome::Recorded
    );
    assert_eq!(store.last_cron_fire("nightly").await.unwrap(), Some(f3));
    assert_eq!(db.count("work_items").await, 2);

    // Many jobs' fires in one call (one transaction): each is recorded as
    // one call would, a recorded one is left alone.
    let batch_item = |job: &str, ms| kedge::intake::cron_work_item(job, chrono_ms(ms), None);
    let record = |job: &str, fire_ms, outcome: FireOutcome, item: Option<NewWorkItem>| FireRecord {
        job: job.into(),
        fire_ms,
        outcome,
        detail: (outcome == FireOutcome::Skipped).then(|| "overlap: forbid".to_string()),
        item,
    };
    let stored = store
        .record_cron_fires(&[
            record(
                "hourly",
                f3,
                FireOutcome::Recorded,
                Some(batch_item("hourly", f3)),
            ),
            record(
                "nightly",
                f3,
                FireOutcome::Recorded,
                Some(batch_item("nightly", f3)),
            ),
            record("weekly", f3, FireOutcome::Skipped, None),
            record(
                "weekly",
                f0,
                FireOutcome::Recorded,
                Some(batch_item("weekly", f0)),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(stored, [true, false, true, true]);
    assert_eq!(db.count("work_items").await, 4, "hourly f3 and weekly f0");
    assert_eq!(
        store.cron_fires("weekly").await.unwrap(),
        [
            fire_of(
                "weekly",
                f0,
                FireOutcome::Recorded,
                None,
                store
                    .get_run(&batch_item("weekly", f0).run_id)
                    .await
                    .unwrap()
                    .map(|r| r.work_item_id)
            ),
            fire_of(
                "weekly",
                f3,
                FireOutcome::Skipped,
                Some("overlap: forbid"),
                None
            ),
        ]
    );
    assert_eq!(
        store.record_cron_fires(&[]).await.unwrap(),
        Vec::<bool>::new()
    );
    let last = store.last_cron_fires().await.unwrap();
    assert_eq!(
        last,
        [("hourly", f3), ("nightly", f3), ("weekly", f3)]
            .into_iter()
            .map(|(j, ms)| (j.to_string(), ms))
            .collect()
    );
}

fn fire_of(
    job: &str,
    fire_ms: i64,
    outcome: FireOutcome,
    detail: Option<&str>,
    wi: Option<String>,
) -> CronFire {
    CronFire {
        job: job.into(),
        fire_ms,
        outcome,
        detail: detail.map(str::to_string),
        work_item_id: wi,
    }
}

/// More fires and claims than one multi-row statement holds: every entry of
/// the answer belongs to its own fire or run.
async fn check_many_fires_and_claims(db: &Db) {
    let store = &db.store;
    let f = T0 + 60_000;
    // 250 jobs fire at once; every third was recorded (skipped) before.
    for j in (0..250).step_by(3) {
        store
            .record_cron_fire(
                &format!("j{j:03}"),
                f,
                FireOutcome::Skipped,
                Some("before"),
                None,
            )
            .await
            .unwrap();
    }
    let records: Vec<FireRecord> = (0..250)
        .map(|j| {
            let job = format!("j{j:03}");
            let launch = j % 5 != 0;
            FireRecord {
                item: launch.then(|| kedge::intake::cron_work_item(&job, chrono_ms(f), None)),
                job,
                fire_ms: f,
                outcome: if launch {
                    FireOutcome::Launched
                } else {
                    FireOutcome::Skipped
                },
                detail: (!launch).then(|| "overlap: forbid".into()),
            }
        })
        .collect();
    let stored = store.record_cron_fires(&records).await.unwrap();
    let expect: Vec<bool> = (0..250).map(|j| j % 3 != 0).collect();
    assert_eq!(stored, expect);
    let launched: Vec<&NewWorkItem> = records
        .iter()
        .zip(&stored)
        .filter_map(|(r, new)| r.item.as_ref().filter(|_| *new))
        .collect();
    assert_eq!(db.count("work_items").await as usize, launched.len());
    assert_eq!(db.count("runs").await as usize, launched.len());
    for item in &launched {
        let r = run(store, &item.run_id).await;
        assert_eq!((r.job.as_str(), r.scheduled_ms), (item.job.as_str(), f));
        let fires = store.cron_fires(&item.job).await.unwrap();
        assert_eq!(
            fires[0].work_item_id.as_deref(),
            Some(r.work_item_id.as_str())
        );
    }
    // Claims: 150 of the pending runs and 10 unknown ids, twice.
    let mut ids: Vec<&str> = launched
        .iter()
        .take(150)
        .map(|i| i.run_id.as_str())
        .collect();
    ids.extend(["nope-1", "nope-2", "nope-3", "nope-4", "nope-5"]);
    ids.insert(70, "nope-6");
    let claimed = store.claim_runs(&ids, T0 + 61_000).await.unwrap();
    let expect: Vec<bool> = ids.iter().map(|id| !id.starts_with("nope")).collect();
    assert_eq!(claimed, expect);
    assert!(store
        .claim_runs(&ids, T0 + 62_000)
        .await
        .unwrap()
        .iter()
        .all(|c| !c));
    let r = run(store, ids[0]).await;
    assert_eq!(
        (r.state, r.started_ms, r.launches),
        (RunState::Running, Some(T0 + 61_000), 1)
    );
    store.unclaim_runs(&ids[..2]).await.unwrap();
    let r = run(store, ids[0]).await;
    assert_eq!(
        (r.state, r.started_ms, r.launches),
        (RunState::Pending, None, 0)
    );
    assert_eq!(
        store.claim_runs(&[ids[0]], T0 + 63_000).await.unwrap(),
        [true]
    );
}

fn chrono_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).expect("valid time")
}

async fn check_list_runs(db: &Db) {
    let store = &db.store;
    add(store, &item("a", "1", T0 + 10)).await;
    add(store, &item("a", "2", T0 + 30)).await;
    add(store, &item("a", "3", T0 + 20)).await;
    add(store, &item("b", "1", T0 + 20)).await;
    add(store, &item("b", "2", T0 + 40)).await;
    claim(store, "a-2", T0 + 30).await;
    claim(store, "a-3", T0 + 20).await;
    assert!(settle(store, "a-3", Settlement::Succeeded, T0 + 25).await);
    claim(store, "b-2", T0 + 40).await;

    let list = |job: Option<&'static str>, state: Option<RunState>, limit: i64| async move {
        let runs = store.list_runs(job, state, limit).await.expect("list_runs");
        ids(&runs)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Newest first; a tie on scheduled time goes by run id, descending.
    assert_eq!(
        list(None, None, 100).await,
        ["b-2", "a-2", "b-1", "a-3", "a-1"]
    );
    assert_eq!(list(None, None, 2).await, ["b-2", "a-2"]);
    assert_eq!(list(Some("a"), None, 100).await, ["a-2", "a-3", "a-1"]);
    assert_eq!(
        list(None, Some(RunState::Running), 100).await,
        ["b-2", "a-2"]
    );
    assert_eq!(list(Some("a"), Some(RunState::Pending), 100).await, ["a-1"]);
    assert_eq!(list(None, Some(RunState::Succeeded), 100).await, ["a-3"]);
    assert!(list(Some("b"), Some(RunState::Succeeded), 100)
        .await
        .is_empty());
    assert!(list(None, Some(RunState::Dead), 100).await.is_empty());
    assert!(list(Some("zzz"), None, 100).await.is_empty());
    assert_eq!(list(Some("b"), None, 1).await, ["b-2"]);
    // Every run comes back whole.
    let runs = store
        .list_runs(Some("a"), Some(RunState::Succeeded), 10)
        .await
        .unwrap();
    assert_eq!(runs, [run(store, "a-3").await]);
    assert_eq!(runs[0].finished_ms, Some(T0 + 25));
}

async fn check_dead_letters(db: &Db) {
    let store = &db.store;
    let d1 = fail_to_death(store, &item("a", "1", T0), &["E1"], "r1", T0 + 100).await;
    let d2 = fail_to_death(store, &item("a", "2", T0), &["E", "E2"], "r2", T0 + 200).await;
    let d3 = fail_to_death(store, &item("b", "1", T0), &["E3"], "r3", T0 + 300).await;
    assert_eq!((d1.attempts, d2.attempts, d3.attempts), (1, 2, 1));
    assert_eq!(d2.last_error.as_deref(), Some("E2"));

    let letters = |job: Option<&'static str>, replayed: bool, limit: i64| async move {
        store
            .dead_letters(job, replayed, limit)
            .await
            .expect("dead_letters")
    };
    // Newest first.
    assert_eq!(
        letters(None, false, 100).await,
        [d3.clone(), d2.clone(), d1.clone()]
    );
    assert_eq!(
        letters(None, true, 100).await,
        [d3.clone(), d2.clone(), d1.clone()]
    );
    assert_eq!(letters(None, false, 1).await, std::slice::from_ref(&d3));
    assert_eq!(
        letters(Some("a"), false, 100).await,
        [d2.clone(), d1.clone()]
    );
    assert_eq!(
        letters(Some("b"), true, 100).await,
        std::slice::from_ref(&d3)
    );
    assert!(letters(Some("zzz"), true, 100).await.is_empty());

    assert!(store
        .replay_dead_letter(&d2.id, "a-2-3", 3, T0 + 400)
        .await
        .unwrap());
    let d2r = DeadLetter {
        replayed_ms: Some(T0 + 400),
        ..d2.clone()
    };
    assert_eq!(letters(None, false, 100).await, [d3.clone(), d1.clone()]);
    assert_eq!(
        letters(None, true, 100).await,
        [d3.clone(), d2r.clone(), d1.clone()]
    );
    assert_eq!(
        letters(Some("a"), false, 100).await,
        std::slice::from_ref(&d1)
    );
    assert_eq!(letters(Some("a"), true, 100).await, [d2r, d1]);
}

async fn check_replay_dead_letter(db: &Db) {
    let store = &db.store;
    let mut it = item("q", "m", T0);
    it.trigger = TriggerKind::Manual;
    it.source = "manual".into();
    let letter = fail_to_death(store, &it, &["E1", "E2", "E3"], "failed 3 of 3", T0 + 500).await;
    let wi = letter.work_item_id.clone();
    assert_eq!(letter.attempts, 3);
    assert_eq!(store.last_attempt(&wi).await.unwrap(), 3);
    assert_eq!(store.last_attempt("nope").await.unwrap(), 0);
    assert_eq!(db.work_item_state(&wi).await, "dead");

    assert!(store
        .replay_dead_letter(&letter.id, "q-m-4", 4, T0 + 1_000)
        .await
        .unwrap());
    let first = run(store, "q-m").await;
    let replayed = Run {
        run_id: "q-m-4".into(),
        attempt: 4,
        state: RunState::Pending,
        scheduled_ms: T0 + 1_000,
        started_ms: None,
        finished_ms: None,
        launches: 0,
        first_launch_ms: None,
        error: None,
        attempt_base: 3,
        ..first.clone()
    };
    assert_eq!(run(store, "q-m-4").await, replayed);
    assert_eq!(replayed.trigger, TriggerKind::Manual);
    assert_eq!(
        db.work_item(&wi).await,
        WorkItemRow {
            state: "queued".into(),
            attempt_base: 3,
            updated_ms: T0 + 1_000
        }
    );
    assert_eq!(store.last_attempt(&wi).await.unwrap(), 4);
    assert!(open_letters(store).await.is_empty());
    let all = store.dead_letters(None, true, 10).await.unwrap();
    assert_eq!(
        all,
        [DeadLetter {
            replayed_ms: Some(T0 + 1_000),
            ..letter.clone()
        }]
    );
    assert_eq!(
        ids(&store.due_runs(T0 + 1_000, 10).await.unwrap()),
        ["q-m-4"]
    );

    // Only once.
    assert!(!store
        .replay_dead_letter(&letter.id, "q-m-5", 5, T0 + 2_000)
        .await
        .unwrap());
    assert!(!store
        .replay_dead_letter("nope", "q-m-6", 6, T0 + 2_000)
        .await
        .unwrap());
    assert_eq!(store.get_run("q-m-5").await.unwrap(), None);
    assert_eq!(db.count("runs").await, 4);
    assert_eq!(db.work_item(&wi).await.updated_ms, T0 + 1_000);

    // The budget restarted: dying again counts attempts since the replay.
    claim(store, "q-m-4", T0 + 1_001).await;
    assert!(settle(store, "q-m-4", dead("E4", "failed 1 of 1"), T0 + 1_100).await);
    let open = open_letters(store).await;
    assert_eq!(open.len(), 1);
    assert_ne!(open[0].id, letter.id);
    assert_eq!(
        (
            open[0].attempts,
            open[0].last_error.as_deref(),
            open[0].work_item_id.as_str()
        ),
        (1, Some("E4"), wi.as_str())
    );
    assert_eq!(db.work_item_state(&wi).await, "dead");
}

// ----- retention ------------------------------------------------------------

const DAY: i64 = 86_400_000;

/// The store read at Unix ms `at` (a fixed clock: the checks take
/// milliseconds, the cutoffs are days apart).
fn store_at(db: &Db, at: i64) -> Store {
    db.store.clone().with_clock(Clock::paused_at(chrono_ms(at)))
}

/// A pruner with the default policy (history 30d, payloads 7d) reading
/// the time `at`; local run folders under `run_dir`.
fn pruner_at(db: &Db, at: i64, run_dir: Option<&std::path::Path>) -> Pruner {
    Pruner::new(
        store_at(db, at),
        RetentionConfig::default(),
        run_dir.map(|d| d.to_path_buf()),
    )
}

/// A preview, then a pass: both must report `expected`; then nothing is
/// left to prune.
async fn prune_expecting(pruner: &Pruner, expected: Report) {
    assert_eq!(
        pruner.preview().await.expect("preview"),
        expected,
        "preview"
    );
    let never = CancellationToken::new();
    assert_eq!(pruner.pass(&never).await.expect("pass"), expected, "pass");
    assert_eq!(pruner.preview().await.expect("preview"), Report::default());
    assert_eq!(pruner.pass(&never).await.expect("pass"), Report::default());
}

/// Claims `run_id` at `at` and settles it succeeded at `at + 1`.
async fn succeed(store: &Store, run_id: &str, at: i64) {
    claim(store, run_id, at).await;
    assert!(settle(store, run_id, Settlement::Succeeded, at + 1).await);
}

/// With history 30d and payloads 7d, 40 days after T0: old finished work
/// goes with its runs, letters and folders; unfinished work, open dead
/// letters and recent history stay; recent payloads of succeeded work are
/// cleared.
async fn check_prune_history(db: &Db) {
    let store = &store_at(db, T0);
    let runs_dir = tempfile::tempdir().expect("tempdir");
    // Old and finished: deleted.
    succeed(
        store,
        &add(store, &item("p", "done", T0)).await.run_id,
        T0 + 10,
    )
    .await;
    add(store, &item("p", "retried", T0)).await;
    claim(store, "p-retried", T0 + 1).await;
    assert!(settle(store, "p-retried", retry("E", "p-retried-2", 2, 0), T0 + 2).await);
    succeed(store, "p-retried-2", T0 + 3).await;
    let replayed = fail_to_death(store, &item("p", "replayed", T0), &["E"], "r", T0 + 500).await;
    assert!(store
        .replay_dead_letter(&replayed.id, "p-replayed-2", 2, T0 + 600)
        .await
        .unwrap());
    succeed(store, "p-replayed-2", T0 + 700).await;
    let forwarded = fail_to_death(store, &item("p", "fwd", T0), &["E"], "r", T0 + 800).await;
    store
        .mark_forwarded(&forwarded.id, None, T0 + 900)
        .await
        .unwrap();
    // Unfinished, however old: kept.
    add(store, &item("p", "pending", T0)).await;
    add(store, &item("p", "running", T0)).await;
    claim(store, "p-running", T0 + 1).await;
    add(store, &item("p", "retrying", T0)).await;
    claim(store, "p-retrying", T0 + 1).await;
    assert!(
        settle(
            store,
            "p-retrying",
            retry("E", "p-retrying-2", 2, 0),
            T0 + 2
        )
        .await
    );
    let open = fail_to_death(store, &item("p", "dead", T0), &["E"], "r", T0 + 1_000).await;
    // Replayed 30 days on and queued again: the item stays, the letter's
    // payload goes after 7 days.
    let late = fail_to_death(store, &item("p", "late", T0), &["E"], "r", T0 + 29 * DAY).await;
    assert!(store
        .replay_dead_letter(&late.id, "p-late-2", 2, T0 + 30 * DAY)
        .await
        .unwrap());
    // Recent history: kept; its payload cleared once 7 days old.
    succeed(
        store,
        &add(store, &item("p", "recent", T0)).await.run_id,
        T0 + 20 * DAY,
    )
    .await;
    succeed(
        store,
        &add(store, &item("p", "fresh", T0)).await.run_id,
        T0 + 35 * DAY,
    )
    .await;
    for run_id in [
        "p-done",
        "p-retried",
        "p-retried-2",
        "p-replayed-2",
        "p-pending",
        "p-recent",
    ] {
        std::fs::create_dir_all(runs_dir.path().join(run_id).join("pod-0")).unwrap();
    }
    assert_eq!(
        (db.count("work_items").await, db.count("runs").await),
        (11, 15)
    );

    let pruner = pruner_at(db, T0 + 40 * DAY, Some(runs_dir.path()));
    let expected = Report {
        rows: Pruned {
            work_items: 4,
            runs: 6,
            dead_letters: 2,
            work_item_payloads: 1,
            dead_letter_payloads: 1,
            ..Pruned::default()
        },
        run_folders: 4,
    };
    prune_expecting(&pruner, expected).await;

    let mut kept: Vec<String> = all_runs(store)
        .await
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            "p-dead",
            "p-fresh",
            "p-late",
            "p-late-2",
            "p-pending",
            "p-recent",
            "p-retrying",
            "p-retrying-2",
            "p-running"
        ]
    );
    assert_eq!(
        open_letters(store).await,
        std::slice::from_ref(&open),
        "the open letter and its payload stay"
    );
    let letters = store.dead_letters(None, true, 10).await.unwrap();
    assert_eq!(letters.len(), 2);
    let late_now = letters
        .iter()
        .find(|d| d.id == late.id)
        .expect("late letter");
    assert_eq!(late_now.payload, None);
    assert_eq!(run(store, "p-dead").await.payload, open.payload);
    assert_eq!(run(store, "p-recent").await.payload, None);
    assert_eq!(
        run(store, "p-fresh").await.payload.as_deref(),
        Some("{\"msg\":\"fresh\"}")
    );
    assert_eq!(run(store, "p-pending").await.state, RunState::Pending);
    let mut folders: Vec<String> = std::fs::read_dir(runs_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(folders, ["p-pending", "p-recent"]);

    // The dedup window: the pruned message is new again.
    assert!(store
        .insert_work_item(&item("p", "done", T0 + 40 * DAY))
        .await
        .unwrap());
    assert!(!store
        .insert_work_item(&item("p", "recent", T0 + 40 * DAY))
        .await
        .unwrap());
}

/// A batch goes only once every member may go: while one member's retry
/// is pending, neither the batch run nor any member is pruned.
async fn check_prune_batches(db: &Db) {
    let store = &store_at(db, T0);
    for msg in ["a", "b", "c"] {
        assert!(store.insert_batch_item(&item("bt", msg, T0)).await.unwrap());
    }
    let members: Vec<String> = store
        .awaiting_batch("bt", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.work_item_id)
        .collect();
    assert_eq!(members.len(), 3);
    assert!(store
        .create_batch_run("bt", "bt-batch", &members, T0 + 1)
        .await
        .unwrap());
    claim(store, "bt-batch", T0 + 2).await;
    let ends = vec![
        (members[0].clone(), MemberEnd::Succeeded),
        (
            members[1].clone(),
            MemberEnd::Retry {
                run_id: "bt-b-2".into(),
                attempt: 2,
                not_before_ms: T0 + 4,
            },
        ),
        (members[2].clone(), MemberEnd::Succeeded),
    ];
    assert!(store
        .settle_batch(
            "bt-batch",
            RunState::Failed,
            Some("index 1 failed"),
            &ends,
            T0 + 3
        )
        .await
        .unwrap());
    let pruner = pruner_at(db, T0 + 40 * DAY, None);
    // Members 0 and 2 are finished and old, but member 1 is queued: only
    // their payloads go.
    let payloads_only = Report {
        rows: Pruned {
            work_item_payloads: 2,
            ..Pruned::default()
        },
        run_folders: 0,
    };
    prune_expecting(&pruner, payloads_only).await;
    assert_eq!(store.batch_members("bt-batch").await.unwrap().len(), 3);

    succeed(store, "bt-b-2", T0 + 5).await;
    let expected = Report {
        rows: Pruned {
            work_items: 3,
            runs: 2,
            batch_members: 3,
            ..Pruned::default()
        },
        run_folders: 0,
    };
    prune_expecting(&pruner, expected).await;
    assert_eq!(db.count("work_items").await, 0);
    assert_eq!(db.count("batch_members").await, 0);
    assert_eq!(db.count("runs").await, 0);
}

/// Old cron fires go (with their work items, or on their own when they
/// never had one), except a job's latest, which the scheduler resumes
/// from, and a fire whose work item is unfinished.
async fn check_prune_cron_fires(db: &Db) {
    let store = &store_at(db, T0);
    let minute = 60_000;
    let fire = |fire_ms: i64, outcome: FireOutcome, run: bool| {
        let mut it = item("c", &format!("f{fire_ms}"), fire_ms);
        it.trigger = TriggerKind::Cron;
        it.source = "cron".into();
        it.run_id = format!("c-{fire_ms}");
        FireRecord {
            job: "c".into(),
            fire_ms,
            outcome,
            detail: None,
            item: run.then_some(it),
        }
    };
    let fires = [
        fire(T0 + minute, FireOutcome::Launched, true),
        fire(T0 + 2 * minute, FireOutcome::Skipped, false),
        fire(T0 + 3 * minute, FireOutcome::Launched, true),
        fire(T0 + 4 * minute, FireOutcome::Launched, true),
    ];
    assert_eq!(store.record_cron_fires(&fires).await.unwrap(), [true; 4]);
    succeed(store, &format!("c-{}", T0 + minute), T0 + 5 * minute).await;
    // The fire at +3 min stays pending; the latest, at +4 min, succeeds.
    succeed(store, &format!("c-{}", T0 + 4 * minute), T0 + 6 * minute).await;

    let pruner = pruner_at(db, T0 + 40 * DAY, None);
    let expected = Report {
        rows: Pruned {
            work_items: 2,
            runs: 2,
            cron_fires: 2,
            ..Pruned::default()
        },
        run_folders: 0,
    };
    prune_expecting(&pruner, expected).await;
    let kept = store.cron_fires("c").await.unwrap();
    let summary: Vec<(i64, FireOutcome, bool)> = kept
        .iter()
        .map(|f| (f.fire_ms - T0, f.outcome, f.work_item_id.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            // Its run still waits for a slot.
            (3 * minute, FireOutcome::Recorded, true),
            // Its finished work was pruned: it ran.
            (4 * minute, FireOutcome::Launched, false),
        ]
    );
    assert_eq!(
        store.last_cron_fire("c").await.unwrap(),
        Some(T0 + 4 * minute)
    );
}

// ----- concurrency ----------------------------------------------------------

const CONCURRENT_RUNS: usize = 50;
const TASKS: usize = 8;
const CANCEL_RACE_ITEMS: usize = 100;

/// Two store handles on one database (a daemon and a CLI process): `TASKS`
/// tasks offer the same messages and cron fires, claim the same runs and
/// settle them, all at once. Every step must happen exactly once.
async fn check_concurrency(db: &Db) {
    let stores = [db.store.clone(), db.second_store().await];
    let msg = |i: usize| format!("m{i:02}");

    // Intake: each message is stored once.
    let won = race(&stores, |store, t| async move {
        let mut won = Vec::new();
        for k in 0..CONCURRENT_RUNS {
            let i = (k + t * 7) % CONCURRENT_RUNS;
            let it = item("c", &msg(i), T0 + i as i64);
            if store.insert_work_item(&it).await.expect("insert") {
                won.push(it.run_id);
            }
        }
        won
    })
    .await;
    assert_once(won, (0..CONCURRENT_RUNS).map(|i| format!("c-{}", msg(i))));

    // Cron fires: each fire and its work item recorded once.
    let won = race(&stores, |store, t| async move {
        let mut won = Vec::new();
        for k in 0..10 {
            let i = ((k + t * 3) % 10) as i64;
            let fire = T0 + i * 60_000;
            let it = kedge::intake::cron_work_item("cron", chrono_ms(fire), None);
            if store
                .record_cron_fire("cron", fire, FireOutcome::Launched, None, Some(&it))
                .await
                .expect("record_cron_fire")
            {
                won.push(it.run_id);
            }
        }
        won
    })
    .await;
    assert_eq!(won.len(), 10);
    assert_eq!(db.count("cron_fires").await, 10);
    assert_eq!(db.count("work_items").await, CONCURRENT_RUNS as i64 + 10);

    // Claims: each run claimed once, launched once.
    let won = race(&stores, |store, t| async move {
        let mut won = Vec::new();
        for k in 0..CONCURRENT_RUNS {
            let run_id = format!("c-{}", msg((k + t * 11) % CONCURRENT_RUNS));
            if store.claim_run(&run_id, T0 + 1_000).await.expect("claim") {
                won.push(run_id);
            }
        }
        won
    })
    .await;
    assert_once(won, (0..CONCURRENT_RUNS).map(|i| format!("c-{}", msg(i))));
    let running = stores[1].runs_in_state(RunState::Running).await.unwrap();
    assert_eq!(running.len(), CONCURRENT_RUNS);
    assert!(running
        .iter()
        .all(|r| r.launches == 1 && r.started_ms == Some(T0 + 1_000)));

    // Settlement: even runs succeed, odd runs die; each settles once.
    let won = race(&stores, |store, t| async move {
        let mut won = Vec::new();
        for k in 0..CONCURRENT_RUNS {
            let i = (k + t * 13) % CONCURRENT_RUNS;
            let run_id = format!("c-{}", msg(i));
            let s = if i % 2 == 0 {
                Settlement::Succeeded
            } else {
                dead(&format!("task {t}"), "failed 1 of 1 attempts")
            };
            if store.settle(&run_id, &s, T0 + 2_000).await.expect("settle") {
                won.push(run_id);
            }
        }
        won
    })
    .await;
    assert_once(won, (0..CONCURRENT_RUNS).map(|i| format!("c-{}", msg(i))));
    let half = CONCURRENT_RUNS as i64 / 2;
    assert_eq!(
        db.count("dead_letters").await,
        half,
        "one dead letter per dead run"
    );
    let letters = stores[0].dead_letters(Some("c"), true, 1000).await.unwrap();
    let mut dead_ids: Vec<_> = letters.iter().map(|d| d.message_id.clone()).collect();
    dead_ids.sort();
    dead_ids.dedup();
    assert_eq!(dead_ids.len() as i64, half);
    let succeeded = stores[0]
        .list_runs(Some("c"), Some(RunState::Succeeded), 1000)
        .await
        .unwrap();
    let dead_runs = stores[0]
        .list_runs(Some("c"), Some(RunState::Dead), 1000)
        .await
        .unwrap();
    assert_eq!(
        (succeeded.len() as i64, dead_runs.len() as i64),
        (half, half)
    );
    assert!(stores[0]
        .runs_in_state(RunState::Running)
        .await
        .unwrap()
        .is_empty());
    stores[1].close().await;
}

/// `cancel_pending_runs` (overlap `replace`) racing claims (the
/// dispatcher) and requeues (start-up recovery) from two handles: whatever
/// the interleaving, a run and its work item agree afterwards.
async fn check_cancel_races(db: &Db) {
    let stores = [db.store.clone(), db.second_store().await];
    race(&stores, |store, t| async move {
        for k in 0..CANCEL_RACE_ITEMS {
            match t % 4 {
                // Intake keeps pending runs coming.
                0 => {
                    add(&store, &item("r", &format!("t{t}-{k:03}"), T0)).await;
                }
                // The scheduler replaces them.
                1 => {
                    store
                        .cancel_pending_runs("r", "replaced", T0 + 5)
                        .await
                        .expect("cancel");
                }
                // The dispatcher claims them; recovery puts them back.
                2 => {
                    for r in store.due_runs(T0 + 10, 5).await.expect("due") {
                        store.claim_run(&r.run_id, T0 + 1).await.expect("claim");
                    }
                }
                _ => {
                    for run_id in store
                        .active_runs_of("r")
                        .await
                        .expect("active")
                        .into_iter()
                        .take(3)
                    {
                        store
                            .requeue_run(&run_id, "interrupted")
                            .await
                            .expect("requeue");
                    }
                }
            }
        }
        Vec::new()
    })
    .await;
    let rows = sqlx::query(
        "SELECT r.run_id, r.state, w.state FROM runs r JOIN work_items w ON w.id = r.work_item_id",
    )
    .fetch_all(&db.peek)
    .await
    .expect("runs and work items");
    assert_eq!(rows.len(), 2 * CANCEL_RACE_ITEMS);
    let mut mismatched = Vec::new();
    for row in &rows {
        let (run_id, run_state, item_state): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let expected = match run_state.as_str() {
            "pending" | "running" => "queued",
            "failed" => "cancelled",
            other => panic!("run {run_id} is {other}"),
        };
        if item_state != expected {
            mismatched.push(format!("{run_id}: run {run_state}, work item {item_state}"));
        }
    }
    assert!(
        mismatched.is_empty(),
        "run and work item disagree: {mismatched:?}"
    );
    stores[1].close().await;
}

/// Runs `f(store, task)` in `TASKS` tasks on alternate handles; all results.
async fn race<F, Fut>(stores: &[Store; 2], f: F) -> Vec<String>
where
    F: Fn(Store, usize) -> Fut,
    Fut: std::future::Future<Output = Vec<String>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        set.spawn(f(stores[t % 2].clone(), t));
    }
    let mut all = Vec::new();
    while let Some(res) = set.join_next().await {
        all.extend(res.expect("task"));
    }
    all
}

/// `won` holds each of `expected` exactly once.
fn assert_once(won: Vec<String>, expected: impl Iterator<Item = String>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in won {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "won more than once: {twice:?}");
    let expected: Vec<String> = expected.collect();
    assert_eq!(counts.into_keys().collect::<Vec<_>>(), {
        let mut e = expected;
        e.sort();
        e
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrency() {
    // Two handles on one file: cross-connection locking (busy_timeout,
    // begin_write) must serialize the writers.
    let db = Db::sqlite().await;
    check_concurrency(&db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrency() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    check_concurrency(&db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_cancel_races() {
    let db = Db::sqlite().await;
    check_cancel_races(&db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cancel_races() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    check_cancel_races(&db).await;
    db.close().await;
}

// ----- in-memory SQLite -------------------------------------------------------

/// `sqlite::memory:` (tests, `--store sqlite::memory:`) keeps its database
/// across calls: the pool must hold one connection for the store's life.
#[tokio::test]
async fn sqlite_memory_store() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    let id = store.instance_id().await.unwrap();
    store.migrate().await.expect("migrate again");
    assert_eq!(store.instance_id().await.unwrap(), id);
    let it = item("j", "m", T0);
    let r = add(&store, &it).await;
    assert!(!store.insert_work_item(&it).await.unwrap());
    claim(&store, "j-m", T0 + 1).await;
    assert!(settle(&store, "j-m", dead("E", "R"), T0 + 2).await);
    assert!(!settle(&store, "j-m", dead("E", "R"), T0 + 3).await);
    let letters = open_letters(&store).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].work_item_id, r.work_item_id);
    store.close().await;
}

// ----- operator controls ----------------------------------------------------

fn audit(actor: &str, action: &str, job: &str, reason: Option<&str>) -> AuditEntry {
    AuditEntry {
        actor: actor.into(),
        action: action.into(),
        job: Some(job.into()),
        run_id: None,
        reason: reason.map(str::to_string),
        details: None,
    }
}

/// A fire of `job` recorded `skipped: <detail>` (no work item).
fn skipped_fire(job: &str, fire_ms: i64, detail: &str) -> FireRecord {
    FireRecord {
        job: job.into(),
        fire_ms,
        outcome: FireOutcome::Skipped,
        detail: Some(detail.into()),
        item: None,
    }
}

/// `(fire_ms, outcome, detail)` of `job`'s recorded fires.
async fn fire_outcomes(store: &Store, job: &str) -> Vec<(i64, FireOutcome, Option<String>)> {
    (store.cron_fires(job).await.expect("cron_fires").into_iter())
        .map(|f| (f.fire_ms, f.outcome, f.detail))
        .collect()
}

/// Pause → state, audit and claim guard; a fire decided with a stale state
/// is refused; resume catches up what the closure picks, in the same
/// transaction as its audit record; a refused change writes nothing.
async fn check_job_controls(db: &Db) {
    let store = &store_at(db, T0);
    let j = "etl";
    let never = store.job_control(j).await.unwrap();
    assert_eq!(
        (never.state, never.actor.as_str(), never.since_ms),
        (OperatorState::Active, "", 0)
    );
    let queued = add(store, &item(j, "m1", T0 - 1000)).await;

    let pause = StateChange {
        job: j,
        to: OperatorState::Paused,
        from: &[OperatorState::Active],
        reason: Some("db migration"),
        audit: audit("alice", "pause", j, Some("db migration")),
        catch_up: None,
    };
    let Changed::Done {
        previous,
        caught_up,
    } = store.change_job_state(&pause).await.unwrap()
    else {
        panic!("pause refused")
    };
    assert_eq!((previous.state, caught_up), (OperatorState::Active, vec![]));
    let c = store.job_control(j).await.unwrap();
    assert_eq!(
        (c.state, c.actor.as_str(), c.reason.as_deref()),
        (OperatorState::Paused, "alice", Some("db migration"))
    );
    assert!((T0..T0 + 60_000).contains(&c.since_ms), "{}", c.since_ms);
    assert_eq!(
        store.stopped_jobs().await.unwrap(),
        [(j.to_string(), OperatorState::Paused)].into()
    );
    // Paused: its runs are not claimed, whoever asks.
    assert_eq!(
        store.claim_runs(&[&queued.run_id], T0).await.unwrap(),
        [false]
    );
    // Pausing again is refused and writes nothing.
    match store.change_job_state(&pause).await.unwrap() {
        Changed::Refused { current } => assert_eq!(current, c),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.count("audit_log").await, 1);

    // The scheduler decided with `etl` active: recording is refused.
    let stale = [skipped_fire(j, T0 - 500, "overlap: forbid")];
    match store
        .record_cron_fires_as(&stale, Some(&Default::default()))
        .await
    {
        Err(StoreError::OperatorStateChanged(job)) => assert_eq!(job, j),
        other => panic!("{other:?}"),
    }
    assert!(fire_outcomes(store, j).await.is_empty());
    let seen = [(j.to_string(), OperatorState::Paused)].into();
    let (f1, f2, f3) = (T0 + 1000, T0 + 2000, T0 + 3000);
    let paused: Vec<FireRecord> = [f1, f2, f3]
        .iter()
        .map(|f| skipped_fire(j, *f, "paused"))
        .collect();
    assert_eq!(
        store
            .record_cron_fires_as(&paused, Some(&seen))
            .await
            .unwrap(),
        [true, true, true]
    );

    // Resume, catching up the newest skipped fire.
    let offered = std::sync::Mutex::new(Vec::new());
    let pick_latest = |skipped: &[i64]| {
        offered.lock().unwrap().extend_from_slice(skipped);
        (skipped.last().into_iter())
            .map(|f| kedge::intake::cron_work_item(j, chrono_ms(*f), None))
            .collect()
    };
    let resume = StateChange {
        job: j,
        to: OperatorState::Active,
        from: &[OperatorState::Paused],
        reason: None,
        audit: audit("bob", "resume", j, None),
        catch_up: Some(&pick_latest),
    };
    let Changed::Done {
        previous,
        caught_up,
    } = store.change_job_state(&resume).await.unwrap()
    else {
        panic!("resume refused")
    };
    assert_eq!(previous.state, OperatorState::Paused);
    assert_eq!(caught_up, [f3]);
    assert_eq!(*offered.lock().unwrap(), [f1, f2, f3]);
    let paused = Some("paused".to_string());
    assert_eq!(
        fire_outcomes(store, j).await,
        [
            (f1, FireOutcome::Skipped, paused.clone()),
            (f2, FireOutcome::Skipped, paused),
            (
                f3,
                FireOutcome::Recorded,
                Some("caught up on resume".into())
            ),
        ]
    );
    let f3_run = kedge::intake::cron_work_item(j, chrono_ms(f3), None).run_id;
    assert_eq!(run(store, &f3_run).await.state, RunState::Pending);
    assert!(store.stopped_jobs().await.unwrap().is_empty());
    assert_eq!(store.job_control(j).await.unwrap().actor, "bob");
    // Active again: its waiting run is claimed.
    assert_eq!(
        store.claim_runs(&[&queued.run_id], T0).await.unwrap(),
        [true]
    );

    let log = store.audit_log(Some(j), 10).await.unwrap();
    let got: Vec<(&str, &str, Option<&str>)> = log
        .iter()
        .map(|a| (a.actor.as_str(), a.action.as_str(), a.reason.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("alice", "pause", Some("db migration")),
            ("bob", "resume", None)
        ]
    );
    let details: serde_json::Value =
        serde_json::from_str(log[1].details.as_deref().unwrap()).unwrap();
    assert_eq!(details, serde_json::json!({ "caught_up_fire_ms": [f3] }));
    assert!(store.audit_log(Some("other"), 10).await.unwrap().is_empty());
    assert_eq!(store.audit_log(None, 1).await.unwrap()[0].action, "resume");
}

/// A backfill creates the fires that never ran, once; a dry run writes
/// nothing; `--rerun failed` runs dead ones again as a new attempt; its
/// runs carry its cap.
async fn check_backfill(db: &Db) {
    let store = &store_at(db, T0);
    let j = "hourly";
    let hour = 3_600_000;
    let fires: Vec<i64> = (0..3).map(|h| T0 - 10 * hour + h * hour).collect();
    let items: Vec<NewWorkItem> = fires
        .iter()
        .map(|f| kedge::intake::cron_work_item(j, chrono_ms(*f), None))
        .collect();
    // The scheduler ran the first fire and skipped the second.
    assert!(store
        .record_cron_fire(j, fires[0], FireOutcome::Recorded, None, Some(&items[0]))
        .await
        .unwrap());
    store
        .record_cron_fires(&[skipped_fire(j, fires[1], "overlap: forbid")])
        .await
        .unwrap();
    let backfill = |rerun, dry_run| NewBackfill {
        job: j,
        from_ms: fires[0],
        to_ms: fires[2] + 1,
        max_active: 2,
        overlap: BackfillOverlap::Forbid,
        rerun,
        fires: &items,
        dry_run,
        audit: audit("carol", "backfill", j, Some("outage")),
    };
    let actions = |r: &kedge::store::BackfillReport| -> Vec<(i64, FireAction)> {
        r.fires
            .iter()
            .map(|f| (f.fire_ms, f.action.clone()))
            .collect()
    };
    let keep = |why: &str| FireAction::Keep { why: why.into() };
    let create = |i: usize| FireAction::Create {
        run_id: items[i].run_id.clone(),
    };
    let expected = vec![
        (fires[0], keep("a run of it is active")),
        (fires[1], create(1)),
        (fires[2], create(2)),
    ];
    let dry = store.backfill(&backfill(Rerun::None, true)).await.unwrap();
    assert_eq!((dry.id.clone(), actions(&dry)), (None, expected.clone()));
    assert_eq!(db.count("backfills").await, 0);
    assert_eq!(db.count("work_items").await, 1);
    assert_eq!(db.count("audit_log").await, 0, "a dry run is not an action");

    let done = store.backfill(&backfill(Rerun::None, false)).await.unwrap();
    assert_eq!(actions(&done), expected);
    let id = done.id.clone().expect("a backfill id");
    assert_eq!(
        run(store, &items[1].run_id).await.backfill_id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(run(store, &items[0].run_id).await.backfill_id, None);
    let detail = Some(format!("backfill {id}"));
    assert_eq!(
        fire_outcomes(store, j).await,
        [
            (fires[0], FireOutcome::Recorded, None),
            (fires[1], FireOutcome::Recorded, detail.clone()),
            (fires[2], FireOutcome::Recorded, detail),
        ]
    );
    assert_eq!(
        store.active_backfills().await.unwrap(),
        [BackfillCap {
            id: id.clone(),
            job: j.into(),
            max_active: 2,
            overlap: BackfillOverlap::Forbid,
            running: 0,
        }]
    );
    claim(store, &items[1].run_id, T0).await;
    assert_eq!(store.active_backfills().await.unwrap()[0].running, 1);

    // Again: nothing new.
    let again = store.backfill(&backfill(Rerun::None, false)).await.unwrap();
    assert_eq!(again.id, None);
    assert_eq!(again.started(), 0);
    assert_eq!(db.count("work_items").await, 3);
    assert_eq!(db.count("runs").await, 3);

    // The first fire succeeds, the second dies: --rerun failed runs the
    // second again (a new attempt, its dead letter closed), and only it.
    succeed(store, &items[0].run_id, T0 + 1).await;
    assert!(settle(store, &items[1].run_id, dead("exit 1", "failed"), T0 + 2).await);
    claim(store, &items[2].run_id, T0 + 3).await;
    assert!(settle(store, &items[2].run_id, Settlement::Succeeded, T0 + 4).await);
    assert_eq!(open_letters(store).await.len(), 1);
    let none = store.backfill(&backfill(Rerun::None, false)).await.unwrap();
    assert_eq!(
        actions(&none),
        [
            (fires[0], keep("succeeded")),
            (fires[1], keep("dead")),
            (fires[2], keep("succeeded")),
        ]
    );
    let failed = store
        .backfill(&backfill(Rerun::Failed, false))
        .await
        .unwrap();
    let second_attempt = format!("{}-2", items[1].run_id);
    assert_eq!(
        actions(&failed)[1],
        (
            fires[1],
            FireAction::Rerun {
                run_id: second_attempt.clone(),
                was: kedge::lifecycle::WorkState::Dead
            }
        )
    );
    assert_eq!(failed.started(), 1);
    let r = run(store, &second_attempt).await;
    assert_eq!(
        (r.attempt, r.attempt_base, r.state, r.backfill_id),
        (2, 1, RunState::Pending, failed.id.clone())
    );
    assert!(
        open_letters(store).await.is_empty(),
        "the dead letter is closed"
    );
    // --rerun all reruns the succeeded ones, not the active one.
    let all = store.backfill(&backfill(Rerun::All, true)).await.unwrap();
    assert_eq!(all.started(), 2);
    assert_eq!(actions(&all)[1], (fires[1], keep("a run of it is active")));

    let log = store.audit_log(Some(j), 10).await.unwrap();
    assert_eq!(log.len(), 4, "every backfill but the dry runs");
    assert!(log
        .iter()
        .all(|a| a.actor == "carol" && a.action == "backfill"));
    let details: serde_json::Value =
        serde_json::from_str(log[0].details.as_deref().unwrap()).unwrap();
    assert_eq!(details["backfill"], serde_json::json!(id));
    assert_eq!(details["started"], 2);
}

/// A finished run's work runs again as a new attempt with its payload;
/// unfinished work is refused.
async fn check_rerun(db: &Db) {
    let store = &store_at(db, T0);
    let first = add(store, &item("q", "m1", T0 - 10)).await;
    let who = AuditEntry {
        actor: "dave".into(),
        action: "rerun".into(),
        job: Some("q".into()),
        run_id: Some(first.run_id.clone()),
        reason: Some("bad input fixed".into()),
        details: None,
    };
    assert_eq!(
        store.rerun(&first.run_id, &who).await.unwrap(),
        Some(Err(RunState::Pending))
    );
    assert_eq!(store.rerun("nope", &who).await.unwrap(), None);
    succeed(store, &first.run_id, T0).await;
    let new_run = store
        .rerun(&first.run_id, &who)
        .await
        .unwrap()
        .expect("the run exists")
        .expect("finished work reruns");
    let r = run(store, &new_run).await;
    assert_eq!(
        (r.work_item_id.as_str(), r.attempt, r.attempt_base, r.state),
        (first.work_item_id.as_str(), 2, 1, RunState::Pending)
    );
    assert_eq!(r.payload, first.payload);
    assert_eq!(db.work_item_state(&first.work_item_id).await, "queued");
    // The older run is finished, but its work is not: refused.
    assert_eq!(
        store.rerun(&first.run_id, &who).await.unwrap(),
        Some(Err(RunState::Pending))
    );
    let log = store.audit_log(None, 10).await.unwrap();
    assert_eq!(log.len(), 1, "refusals write nothing");
    assert_eq!(
        (
            log[0].actor.as_str(),
            log[0].run_id.as_deref(),
            log[0].reason.as_deref()
        ),
        ("dave", Some(first.run_id.as_str()), Some("bad input fixed"))
    );
    let details: serde_json::Value =
        serde_json::from_str(log[0].details.as_deref().unwrap()).unwrap();
    assert_eq!(details, serde_json::json!({ "new_run": new_run }));
}

/// Operators racing (two processes, `TASKS` tasks): each job is paused
/// once, each backfilled fire created once, each audited once.
async fn check_operator_races(db: &Db) {
    let stores = [db.store.clone(), db.second_store().await];
    let won = race(&stores, |store, t| async move {
        let mut won = Vec::new();
        for k in 0..10 {
            let job = format!("j{}", (k + t * 3) % 10);
            let change = StateChange {
                job: &job,
                to: OperatorState::Paused,
                from: &[OperatorState::Active],
                reason: None,
                audit: audit("op", "pause", &job, None),
                catch_up: None,
            };
            if let Changed::Done { .. } = store.change_job_state(&change).await.expect("pause") {
                won.push(job);
            }
        }
        won
    })
    .await;
    assert_once(won, (0..10).map(|k| format!("j{k}")));
    assert_eq!(db.count("audit_log").await, 10);

    let hour = 3_600_000;
    let won = race(&stores, |store, _| async move {
        let items: Vec<NewWorkItem> = (0..12)
            .map(|h| {
                kedge::intake::cron_work_item("bf", chrono_ms(T0 - 20 * hour + h * hour), None)
            })
            .collect();
        let report = store
            .backfill(&NewBackfill {
                job: "bf",
                from_ms: T0 - 20 * hour,
                to_ms: T0,
                max_active: 1,
                overlap: BackfillOverlap::Allow,
                rerun: Rerun::None,
                fires: &items,
                dry_run: false,
                audit: audit("op", "backfill", "bf", None),
            })
            .await
            .expect("backfill");
        (report.fires.into_iter())
            .filter_map(|f| match f.action {
                FireAction::Create { run_id } => Some(run_id),
                _ => None,
            })
            .collect()
    })
    .await;
    assert_once(
        won,
        (0..12).map(|h| {
            kedge::intake::cron_work_item("bf", chrono_ms(T0 - 20 * hour + h * hour), None).run_id
        }),
    );
    assert_eq!(db.count("runs").await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_operator_races() {
    let db = Db::sqlite().await;
    check_operator_races(&db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_operator_races() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    check_operator_races(&db).await;
    db.close().await;
}
