//! The conformance suite against a real PostgreSQL (see
//! [`crate::support::postgres_database`]): a fresh database per test with
//! a queue table `app.jobs (id TEXT, payload JSONB, status TEXT)` whose
//! `AFTER INSERT OR UPDATE` trigger notifies a channel. The poll interval
//! is 30 s, so a claim that wakes sooner was woken by `LISTEN`.
//!
//! The suite runs twice: `on_claim: delete` here, `on_claim: mark` in
//! [`mark`]. The id column is text because the suite's message ids are
//! (`m-1`, `r-1`); [`bigint_ids`] covers a `BIGSERIAL` id.

use std::time::Duration;

use kedge::config::queue::{BrokerUrl, DeadLetterTarget, OnClaim, PostgresSource};
use kedge::sources::postgres::PostgresTable;
use kedge::sources::{Letter, Outbox, Source};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use crate::support::{postgres_database, PgDatabase};
use crate::Harness;

const TABLE: &str = "app.jobs";
const CHANNEL: &str = "jobs_ready";
const DEAD_TABLE: &str = "app.jobs_dead";

/// One test's database; `MARK` picks `on_claim: mark` over `delete`.
pub struct PgHarness<const MARK: bool> {
    pool: PgPool,
    url: String,
    /// Dropped last: drops the database.
    _db: PgDatabase,
}

impl<const MARK: bool> PgHarness<MARK> {
    fn config(&self, table: &str, channel: Option<&str>) -> PostgresSource {
        PostgresSource {
            url: BrokerUrl::new(&self.url),
            table: table.into(),
            id_column: "id".into(),
            payload_column: "payload".into(),
            on_claim: if MARK { OnClaim::Mark } else { OnClaim::Delete },
            status_column: "status".into(),
            channel: channel.map(str::to_string),
            poll_interval: Duration::from_secs(30),
        }
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl<const MARK: bool> Harness for PgHarness<MARK> {
    type S = PostgresTable;

    async fn new() -> Option<Self> {
        let db = postgres_database().await?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&db.url)
            .await
            .expect("connect to the test database");
        let h = PgHarness {
            pool,
            url: db.url.clone(),
            _db: db,
        };
        h.exec(&format!(
            "CREATE SCHEMA app;
             CREATE TABLE {TABLE} (
               id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
               payload JSONB NOT NULL,
               status TEXT);
             CREATE FUNCTION app.jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_notify('{CHANNEL}', NEW.id::text); RETURN NULL; END $$;
             CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON {TABLE}
               FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM 'claimed')
               EXECUTE FUNCTION app.jobs_notify();"
        ))
        .await;
        Some(h)
    }

    fn source(&self, consumer: &str) -> PostgresTable {
        PostgresTable::new(self.config(TABLE, Some(CHANNEL)), consumer)
    }

    async fn publish(&self, body: &[u8], id: Option<&str>) {
        let body = std::str::from_utf8(body).expect("a JSON body");
        // `COALESCE` keeps the column default when no id is given.
        let sql = format!(
            "INSERT INTO {TABLE} (id, payload) \
             VALUES (COALESCE($1, gen_random_uuid()::text), $2::jsonb)"
        );
        let q = sqlx::query(&sql).bind(id).bind(body);
        q.execute(&self.pool).await.expect("insert a message");
    }

    fn has_ids(&self) -> bool {
        true
    }

    fn marks_redelivered(&self) -> bool {
        false
    }

    fn dead_letter_target(&self) -> DeadLetterTarget {
        DeadLetterTarget::Postgres(DEAD_TABLE.into())
    }

    async fn dead_letters(&self) -> Vec<Letter> {
        let rows = sqlx::query(&format!(
            "SELECT job, message_id, payload, reason, attempts, last_error,
               to_char(dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS dead_at
             FROM {DEAD_TABLE} ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .expect("read dead letters");
        rows.iter()
            .map(|r| {
                let text = |c: &str| r.try_get::<String, _>(c).expect(c);
                Letter {
                    job: text("job"),
                    message_id: text("message_id"),
                    payload: r.try_get("payload").expect("payload"),
                    reason: text("reason"),
                    attempts: r.try_get("attempts").expect("attempts"),
                    last_error: r.try_get("last_error").expect("last_error"),
                    dead_at: text("dead_at"),
                }
            })
            .collect()
    }

    async fn cleanup(&self) {
        // The database itself is dropped with the harness.
        self.pool.close().await;
    }
}

crate::suite!(PgHarness<false>);

/// The suite again with `on_claim: mark`.
mod mark {
    use super::*;

    crate::suite!(PgHarness<true>);

    /// Settled rows stay in the table, marked `claimed`; a replay puts
    /// the row back to pending.
    #[tokio::test]
    async fn rows_are_marked_and_replay_resets_them() {
        let Some(h) = PgHarness::<true>::new().await else {
            return;
        };
        h.publish(b"{\"a\":1}", Some("k1")).await;
        let mut s = h.source("c1");
        s.connect().await.expect("connect");
        let got = crate::claim_n(&mut s, 1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        s.settle(&got).await.expect("settle");
        let status: Option<String> =
            sqlx::query_scalar(&format!("SELECT status FROM {TABLE} WHERE id = 'k1'"))
                .fetch_one(&h.pool)
                .await
                .expect("the row is kept");
        assert_eq!(status.as_deref(), Some("claimed"));
        s.replay("k1", b"{\"a\":2}").await.expect("replay");
        let again = crate::claim_n(&mut s, 1, Duration::from_secs(5)).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message_id, "k1");
        assert_eq!(again[0].body, b"{\"a\":2}");
        s.settle(&again).await.expect("settle");
        h.cleanup().await;
    }
}

/// A `BIGSERIAL` id and a text payload: ids are cast to the column's type
/// for settle and replay.
#[tokio::test]
async fn bigint_ids() {
    let Some(h) = PgHarness::<false>::new().await else {
        return;
    };
    h.exec(
        "CREATE TABLE app.numbered (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL);
         INSERT INTO app.numbered (payload) VALUES ('one'), ('two'), ('three');",
    )
    .await;
    // No channel: polling only.
    let mut cfg = h.config("app.numbered", None);
    cfg.poll_interval = Duration::from_millis(100);
    let mut s = PostgresTable::new(cfg, "c1");
    s.connect().await.expect("connect");
    let got = s.claim(2, Duration::from_secs(1)).await.expect("claim");
    let ids: Vec<&str> = got.iter().map(|d| d.message_id.as_str()).collect();
    assert_eq!(ids, ["1", "2"]);
    assert_eq!(got[0].body, b"one");
    s.settle(&got).await.expect("settle");
    s.replay("1", b"one again").await.expect("replay");
    let got = crate::claim_n(&mut s, 2, Duration::from_secs(5)).await;
    let mut ids: Vec<&str> = got.iter().map(|d| d.message_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["1", "3"]);
    s.settle(&got).await.expect("settle");
    let e = s
        .replay("not-a-number", b"x")
        .await
        .expect_err("a text id into a bigint column");
    assert!(format!("{e}").contains("not-a-number"), "{e}");
    h.cleanup().await;
}

/// A claim while the last one is unsettled releases the old rows (as if
/// the consumer had died) and claims afresh; a settle without an open
/// claim is an error only when it has something to settle.
#[tokio::test]
async fn claim_while_unsettled_releases_the_old_claim() {
    let Some(h) = PgHarness::<false>::new().await else {
        return;
    };
    h.publish(b"{}", Some("a")).await;
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    let first = s.claim(1, Duration::from_secs(1)).await.expect("claim");
    assert_eq!(first.len(), 1);
    let again = s.claim(1, Duration::from_secs(1)).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, "a");
    s.settle(&again).await.expect("settle");
    s.settle(&[]).await.expect("nothing to settle");
    assert!(s.settle(&again).await.is_err(), "no open claim");
    h.cleanup().await;
}

/// A missing table or column is a clear error, with the password masked.
#[tokio::test]
async fn missing_table_or_column_is_named() {
    let Some(h) = PgHarness::<false>::new().await else {
        return;
    };
    let mut s = PostgresTable::new(h.config("app.nope", None), "c1");
    let e = s.connect().await.expect_err("no such table");
    assert!(format!("{e}").contains("app.nope"), "{e}");
    let mut cfg = h.config(TABLE, None);
    cfg.payload_column = "body".into();
    let mut s = PostgresTable::new(cfg, "c1");
    let e = s.connect().await.expect_err("no such column");
    assert!(format!("{e}").contains("\"body\""), "{e}");
    h.cleanup().await;
}
