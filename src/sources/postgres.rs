//! `postgres`: rows of an application's table as messages, claimed with
//! `SELECT … FOR UPDATE SKIP LOCKED` inside a transaction that stays open
//! until they are stored, then deleted or marked claimed.
//!
//! # Expected flow
//!
//! 1. [`Source::connect`] opens a pool of two connections (one for the
//!    open claim transaction, one for everything else), looks up the types
//!    of the id and payload columns (this also checks that the table and
//!    columns exist), and with `channel` set opens a third connection that
//!    `LISTEN`s on it.
//! 2. [`Source::claim`] begins a transaction and selects up to `max` rows
//!    (with `on_claim: mark` only those whose status is `NULL` or
//!    `'pending'`), ordered by id, `FOR UPDATE SKIP LOCKED`. With rows, the
//!    transaction stays open, holding their row locks, and they are
//!    returned. Without, it rolls back and waits for a notification on
//!    `channel` or for `poll_interval`, whichever comes first (bounded by
//!    what is left of `wait`), and tries again.
//! 3. Intake stores the messages.
//! 4. [`Source::settle`] deletes the rows (or sets their status to
//!    `'claimed'`) in that same transaction and commits.
//!
//! # Guarantees
//!
//! Until the commit, the claimed rows are locked by this consumer and
//! skipped by every other; if kedge dies or the connection drops, Postgres
//! rolls the transaction back and the rows are there to claim again,
//! under the same id. The message id is the id column as text, so a
//! re-claimed row becomes the same work item.
//!
//! A claim while the previous claim is still unsettled is a caller error:
//! the open transaction is rolled back first (with a warning), exactly as
//! if this consumer had died, and the claim starts afresh. Rows of a claim
//! left out of [`Source::settle`] are released, untouched, by the commit.
//!
//! # Caveats
//!
//! - Postgres cannot tell a row claimed before from a new one:
//!   `redelivered` is always `false`.
//! - A notification only wakes the claim; the table is the truth. Without
//!   `channel`, or when the listening connection drops (notifications sent
//!   meanwhile are lost), new rows are found by the next poll.
//! - The payload is read as text, except `bytea` (raw bytes). `jsonb` is
//!   written out compactly (`{"a":1}`), as a producer would have sent it;
//!   `json` and text keep their exact text.
//! - A claim holds one transaction open for as long as intake takes to
//!   store the batch; the locked rows are not visible to `VACUUM` meanwhile.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row, Transaction};
use tokio::time::Instant;

use super::{BoxError, Delivery, Letter, Outbox, Receipt, Source, SourceError};
use crate::config::queue::{quote_sql_name, DeadLetterTarget, OnClaim, PostgresSource};

/// A Postgres table read as a queue. See the module docs for its life cycle.
pub struct PostgresTable {
    cfg: PostgresSource,
    /// `application_name` of its connections, so they can be told apart
    /// in `pg_stat_activity`.
    app_name: String,
    /// Set by [`Source::connect`], or lazily by [`Outbox`] calls.
    /// (This and the next two are boxed to keep [`super::AnySource`]
    /// small.)
    db: Option<Box<Db>>,
    /// With `channel`: a connection `LISTEN`ing on it, set by connect.
    listener: Option<Box<PgListener>>,
    /// The last claim's transaction, holding its rows' locks until settle.
    open: Option<Box<OpenClaim>>,
    /// Dead-letter tables created (if missing) by this instance.
    dead_letter_tables: HashSet<String>,
}

/// The pool and the statements built for the table's column types.
struct Db {
    pool: PgPool,
    sql: Statements,
}

struct OpenClaim {
    tx: Transaction<'static, Postgres>,
    /// The claimed rows' ids as text: the only rows settle touches.
    keys: HashSet<String>,
}

/// SQL for this table, names quoted (they were checked to be plain
/// identifiers by config validation) and typed after the columns.
struct Statements {
    /// `$1`: the batch size.
    claim: String,
    /// The rows a claim could take: the backlog (a count, so a scan of a
    /// big table; asked only every few seconds).
    backlog: String,
    /// `$1`: the ids as `text[]`.
    settle: String,
    /// `$1`: id, `$2`: payload. Only for `on_claim: mark`: puts a row that
    /// still exists back to pending.
    replay_update: Option<String>,
    /// `$1`: id, `$2`: payload.
    replay_insert: String,
    payload: PayloadKind,
}

/// How the payload column is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    /// Read as `::text`, written as `$2::text::<type>`.
    Text,
    /// As `Text`, and compacted on the way out (see [`compact_json`]).
    Jsonb,
    /// Raw bytes both ways.
    Bytea,
}

impl PostgresTable {
    pub fn new(cfg: PostgresSource, consumer: &str) -> Self {
        PostgresTable {
            cfg,
            app_name: format!("kedge {consumer}"),
            db: None,
            listener: None,
            open: None,
            dead_letter_tables: HashSet::new(),
        }
    }

    fn error(&self, what: impl Into<String>, e: impl Into<BoxError>) -> SourceError {
        SourceError::new(what, self.cfg.url.shown(), e)
    }

    fn options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(PgConnectOptions::from_str(self.cfg.url.secret())?.application_name(&self.app_name))
    }

    /// A pool and the table's statements.
    async fn open_db(&self) -> Result<Db, BoxError> {
        let pool = PgPoolOptions::new()
            // One connection for the claim transaction held open between
            // claim and settle, one for the Outbox and the type lookup.
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.options()?)
            .await?;
        let sql = statements(&pool, &self.cfg).await?;
        Ok(Db { pool, sql })
    }

    /// The pool for Outbox calls, opened on first use.
    async fn db(&mut self) -> Result<&Db, BoxError> {
        if self.db.is_none() {
            self.db = Some(Box::new(self.open_db().await?));
        }
        self.db
            .as_deref()
            .ok_or_else(|| "no database connection".into())
    }

    /// Locks up to `max` claimable rows. `Ok(None)` when there are none
    /// (the transaction is rolled back then).
    async fn try_claim(&self, max: usize) -> Result<Option<(OpenClaim, Vec<Delivery>)>, BoxError> {
        let db = self.db.as_ref().ok_or("not connected")?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut tx = db.pool.begin().await?;
        let rows: Vec<PgRow> = sqlx::query(&db.sql.claim)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut keys = HashSet::with_capacity(rows.len());
        let mut got = Vec::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get(0)?;
            // A NULL payload is an empty message (which the job's payload
            // policy may then dead-letter, e.g. as not_json).
            let body = match db.sql.payload {
                PayloadKind::Bytea => row.try_get::<Option<Vec<u8>>, _>(1)?.unwrap_or_default(),
                PayloadKind::Text => row
                    .try_get::<Option<String>, _>(1)?
                    .unwrap_or_default()
                    .into_bytes(),
                PayloadKind::Jsonb => row
                    .try_get::<Option<String>, _>(1)?
                    .map(|t| compact_json(&t))
                    .unwrap_or_default()
                    .into_bytes(),
            };
            keys.insert(key.clone());
            got.push(Delivery {
                message_id: key.clone(),
                body,
                headers: Vec::new(),
                redelivered: false,
                receipt: Receipt::Postgres { key },
            });
        }
        Ok(Some((OpenClaim { tx, keys }, got)))
    }

    /// Waits up to `nap` for a notification on the channel (or just `nap`
    /// without one).
    async fn nap(&mut self, nap: Duration) -> Result<(), BoxError> {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(nap).await;
            return Ok(());
        };
        // `try_recv` is cancel-safe in sqlx 0.8 (launchbadge/sqlx#3467).
        // `Ok(None)`: the listening connection dropped and was reopened;
        // notifications in between are lost, so look at the table again.
        match tokio::time::timeout(nap, listener.try_recv()).await {
            Err(_elapsed) => Ok(()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Discards notifications that arrived before a look at the table:
    /// that look sees their rows, so they need not wake a later wait.
    async fn drain_notifications(&mut self) -> Result<(), BoxError> {
        let Some(listener) = self.listener.as_mut() else {
            return Ok(());
        };
        // A zero timeout still polls `try_recv` once: it returns what is
        // already there without waiting.
        while let Ok(n) = tokio::time::timeout(Duration::ZERO, listener.try_recv()).await {
            if n?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Rolls back the open claim, if any: its rows become claimable again.
    async fn release(&mut self) {
        if let Some(open) = self.open.take() {
            if let Err(e) = open.tx.rollback().await {
                // The connection is gone; so is the transaction with it.
                tracing::debug!(error = %e, "rolling back an open claim");
            }
        }
    }
}

impl Source for PostgresTable {
    /// The rows a claim could take (`COUNT(*)` with the claim's filter).
    async fn backlog(&mut self) -> Result<Option<u64>, SourceError> {
        let Some(db) = &self.db else {
            return Ok(None);
        };
        let n: i64 = sqlx::query_scalar(&db.sql.backlog)
            .fetch_one(&db.pool)
            .await
            .map_err(|e| self.error(format!("counting rows of table {}", self.cfg.table), e))?;
        Ok(Some(n.max(0) as u64))
    }

    async fn connect(&mut self) -> Result<(), SourceError> {
        let table = self.cfg.table.clone();
        self.release().await;
        self.listener = None;
        if let Some(old) = self.db.take() {
            old.pool.close().await;
        }
        let db = self
            .open_db()
            .await
            .map_err(|e| self.error(format!("connecting to table {table}"), e))?;
        if let Some(channel) = self.cfg.channel.clone() {
            let listener = async {
                // Its own one-connection pool: LISTEN holds the connection
                // for good, and the main pool's two are spoken for.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .max_lifetime(None)
                    .idle_timeout(None)
                    .connect_with(self.options()?)
                    .await?;
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await
            .map_err(|e| self.error(format!("listening on channel {channel}"), e))?;
            self.listener = Some(Box::new(listener));
        }
        tracing::debug!(table = %table, channel = ?self.cfg.channel, url = %self.cfg.url, "claiming rows");
        self.db = Some(Box::new(db));
        Ok(())
    }

    async fn claim(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, SourceError> {
        let what = format!("claiming from table {}", self.cfg.table);
        if self.open.is_some() {
            tracing::warn!(table = %self.cfg.table, "claim while the last claim is unsettled; releasing its rows");
            self.release().await;
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Drain before looking, never between looking and waiting: a
            // row committed after the look has its notification still
            // queued, so the wait below returns at once.
            self.drain_notifications()
                .await
                .map_err(|e| self.error(what.clone(), e))?;
            match self.try_claim(max).await {
                Ok(Some((open, got))) => {
                    // Cancel safety: nothing is awaited from the lock to
                    // here; a claim cancelled earlier drops the
                    // transaction, which rolls back.
                    self.open = Some(Box::new(open));
                    return Ok(got);
                }
                Ok(None) => {}
                Err(e) => return Err(self.error(what, e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = (deadline - now).min(self.cfg.poll_interval);
            self.nap(nap)
                .await
                .map_err(|e| self.error(what.clone(), e))?;
        }
    }

    async fn settle(&mut self, done: &[Delivery]) -> Result<(), SourceError> {
        let what = format!("settling rows of table {}", self.cfg.table);
        let Some(open) = self.open.take() else {
            if done.is_empty() {
                return Ok(());
            }
            return Err(self.error(
                what,
                "no open claim (the connection was reset; the rows were released and will be claimed again)",
            ));
        };
        let keys: Vec<String> = done
            .iter()
            .filter_map(|d| match &d.receipt {
                Receipt::Postgres { key } if open.keys.contains(key) => Some(key.clone()),
                other => {
                    tracing::warn!(message_id = %d.message_id, receipt = ?other, "settle got a delivery not in the open claim; skipped");
                    None
                }
            })
            .collect();
        let Some(db) = self.db.as_ref() else {
            return Err(self.error(what, "not connected"));
        };
        let OpenClaim { mut tx, .. } = *open;
        let result = async {
            if !keys.is_empty() {
                sqlx::query(&db.sql.settle)
                    .bind(&keys)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        result.map_err(|e| self.error(what, e))
    }
}

impl Outbox for PostgresTable {
    async fn dead_letter(
        &mut self,
        target: &DeadLetterTarget,
        letter: &Letter,
    ) -> Result<(), SourceError> {
        let DeadLetterTarget::Postgres(table) = target else {
            return Err(self.error(
                "dead-lettering",
                format!("{target:?} is not a Postgres table"),
            ));
        };
        let what = format!(
            "dead-lettering message {:?} to table {table}",
            letter.message_id
        );
        let quoted = quote_sql_name(table);
        let create = !self.dead_letter_tables.contains(table);
        let result = async {
            let db = self.db().await?;
            if create {
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS {quoted} (\
                       id BIGSERIAL PRIMARY KEY, \
                       job TEXT NOT NULL, \
                       message_id TEXT NOT NULL, \
                       payload TEXT, \
                       reason TEXT NOT NULL, \
                       attempts BIGINT NOT NULL, \
                       last_error TEXT, \
                       dead_at TIMESTAMPTZ NOT NULL)"
                ))
                .execute(&db.pool)
                .await?;
            }
            sqlx::query(&format!(
                "INSERT INTO {quoted} \
                   (job, message_id, payload, reason, attempts, last_error, dead_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::timestamptz)"
            ))
            .bind(&letter.job)
            .bind(&letter.message_id)
            .bind(&letter.payload)
            .bind(&letter.reason)
            .bind(letter.attempts)
            .bind(&letter.last_error)
            .bind(&letter.dead_at)
            .execute(&db.pool)
            .await?;
            Ok::<_, BoxError>(())
        }
        .await;
        match result {
            Ok(()) => {
                self.dead_letter_tables.insert(table.clone());
                Ok(())
            }
            Err(e) => Err(self.error(what, e)),
        }
    }

    async fn replay(&mut self, message_id: &str, payload: &[u8]) -> Result<(), SourceError> {
        let what = format!(
            "replaying message {message_id:?} into table {}",
            self.cfg.table
        );
        let result = async {
            let db = self.db().await?;
            let kind = db.sql.payload;
            let mut tx = db.pool.begin().await?;
            let mut done = false;
            if let Some(update) = &db.sql.replay_update {
                let q = sqlx::query(update).bind(message_id);
                let q = bind_payload(q, kind, payload)?;
                done = q.execute(&mut *tx).await?.rows_affected() > 0;
            }
            if !done {
                let q = sqlx::query(&db.sql.replay_insert).bind(message_id);
                let q = bind_payload(q, kind, payload)?;
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, BoxError>(())
        }
        .await;
        result.map_err(|e| self.error(what, e))
    }
}

/// Binds the payload as `$2`: bytes for `bytea`, else text.
fn bind_payload<'q>(
    q: Query<'q, Postgres, PgArguments>,
    kind: PayloadKind,
    payload: &[u8],
) -> Result<Query<'q, Postgres, PgArguments>, BoxError> {
    Ok(match kind {
        PayloadKind::Bytea => q.bind(payload.to_vec()),
        PayloadKind::Text | PayloadKind::Jsonb => match std::str::from_utf8(payload) {
            Ok(text) => q.bind(text.to_string()),
            Err(e) => return Err(format!("the payload is not UTF-8 text: {e}").into()),
        },
    })
}

/// Looks up the id and payload column types and builds the statements.
async fn statements(pool: &PgPool, cfg: &PostgresSource) -> Result<Statements, BoxError> {
    let table = quote_sql_name(&cfg.table);
    let mut wanted = vec![cfg.id_column.clone(), cfg.payload_column.clone()];
    if cfg.on_claim == OnClaim::Mark {
        wanted.push(cfg.status_column.clone());
    }
    // `$1::regclass` fails with "relation … does not exist" for a missing
    // table; `format_type` gives the type as SQL can write it back.
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
           AND NOT a.attisdropped AND a.attname = ANY($2::text[])",
    )
    .bind(&table)
    .bind(&wanted)
    .fetch_all(pool)
    .await
    .map_err(|e| format!("looking up the columns of {}: {e}", cfg.table))?;
    let find = |name: &str| {
        columns
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, ty, typname)| (ty.clone(), typname.clone()))
            .ok_or_else(|| format!("table {} has no column {name:?}", cfg.table))
    };
    let (id_type, _) = find(&cfg.id_column)?;
    let (payload_type, payload_typname) = find(&cfg.payload_column)?;
    if cfg.on_claim == OnClaim::Mark {
        find(&cfg.status_column)?;
    }
    let payload = match payload_typname.as_str() {
        "bytea" => PayloadKind::Bytea,
        "jsonb" => PayloadKind::Jsonb,
        _ => PayloadKind::Text,
    };
    Ok(build_statements(cfg, &id_type, &payload_type, payload))
}

fn build_statements(
    cfg: &PostgresSource,
    id_type: &str,
    payload_type: &str,
    payload: PayloadKind,
) -> Statements {
    let table = quote_sql_name(&cfg.table);
    let id = quote_sql_name(&cfg.id_column);
    let body = quote_sql_name(&cfg.payload_column);
    let status = quote_sql_name(&cfg.status_column);
    let (read_body, write_body) = match payload {
        PayloadKind::Bytea => (body.clone(), "$2".to_string()),
        PayloadKind::Text | PayloadKind::Jsonb => {
            (format!("{body}::text"), format!("$2::text::{payload_type}"))
        }
    };
    let pending = match cfg.on_claim {
        OnClaim::Delete => String::new(),
        OnClaim::Mark => format!(" AND ({status} IS NULL OR {status} = 'pending')"),
    };
    // Ids are compared in the column's own type (`= ANY($1::text[]::T[])`,
    // not `id::text = …`), so the primary key index serves the lookup.
    let by_ids = format!("{id} = ANY($1::text[]::{id_type}[])");
    let settle = match cfg.on_claim {
        OnClaim::Delete => format!("DELETE FROM {table} WHERE {by_ids}"),
        OnClaim::Mark => format!("UPDATE {table} SET {status} = 'claimed' WHERE {by_ids}"),
    };
    let one_id = format!("$1::text::{id_type}");
    Statements {
        claim: format!(
            "SELECT {id}::text, {read_body} FROM {table} \
             WHERE {id} IS NOT NULL{pending} \
             ORDER BY {id} LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        backlog: format!("SELECT COUNT(*) FROM {table} WHERE {id} IS NOT NULL{pending}"),
        settle,
        replay_update: (cfg.on_claim == OnClaim::Mark).then(|| {
            format!(
                "UPDATE {table} SET {status} = NULL, {body} = {write_body} WHERE {id} = {one_id}"
            )
        }),
        replay_insert: match cfg.on_claim {
            OnClaim::Delete => {
                format!("INSERT INTO {table} ({id}, {body}) VALUES ({one_id}, {write_body})")
            }
            OnClaim::Mark => format!(
                "INSERT INTO {table} ({id}, {body}, {status}) VALUES ({one_id}, {write_body}, NULL)"
            ),
        },
        payload,
    }
}

/// `jsonb`'s text form without the whitespace Postgres puts after `:` and
/// `,` (`{"a": [1, 2]}` → `{"a":[1,2]}`). Only whitespace outside strings
/// goes; numbers and strings are kept byte for byte.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::queue::BrokerUrl;

    fn cfg(on_claim: OnClaim) -> PostgresSource {
        PostgresSource {
            url: BrokerUrl::new("postgres://u:secret@db/app"),
            table: "app.jobs".into(),
            id_column: "id".into(),
            payload_column: "payload".into(),
            on_claim,
            status_column: "state".into(),
            channel: None,
            poll_interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn jsonb_text_is_compacted_outside_strings() {
        assert_eq!(
            compact_json(r#"{"a": [1, 2.50], "b": null}"#),
            r#"{"a":[1,2.50],"b":null}"#
        );
        assert_eq!(
            compact_json(r#"{"s": "a, b: \"c \\\" d\" "}"#),
            r#"{"s":"a, b: \"c \\\" d\" "}"#
        );
        assert_eq!(compact_json(r#""\\""#), r#""\\""#);
    }

    #[test]
    fn statements_quote_names_and_cast_ids() {
        let s = build_statements(&cfg(OnClaim::Mark), "bigint", "jsonb", PayloadKind::Jsonb);
        assert_eq!(
            s.claim,
            "SELECT \"id\"::text, \"payload\"::text FROM \"app\".\"jobs\" \
             WHERE \"id\" IS NOT NULL AND (\"state\" IS NULL OR \"state\" = 'pending') \
             ORDER BY \"id\" LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        assert_eq!(
            s.backlog,
            "SELECT COUNT(*) FROM \"app\".\"jobs\" \
             WHERE \"id\" IS NOT NULL AND (\"state\" IS NULL OR \"state\" = 'pending')"
        );
        assert_eq!(
            s.settle,
            "UPDATE \"app\".\"jobs\" SET \"state\" = 'claimed' WHERE \"id\" = ANY($1::text[]::bigint[])"
        );
        assert!(s.replay_update.is_some());

        let s = build_statements(&cfg(OnClaim::Delete), "text", "bytea", PayloadKind::Bytea);
        assert!(!s.claim.contains("state"));
        assert_eq!(
            s.settle,
            "DELETE FROM \"app\".\"jobs\" WHERE \"id\" = ANY($1::text[]::text[])"
        );
        assert_eq!(
            s.replay_insert,
            "INSERT INTO \"app\".\"jobs\" (\"id\", \"payload\") VALUES ($1::text::text, $2)"
        );
        assert!(s.replay_update.is_none());
    }
}
