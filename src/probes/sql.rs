//! The `sql` probe: the first column of the first row of a query, on a
//! fresh read-only connection per measurement.

use std::time::Duration;

use sqlx::postgres::PgValueFormat;
use sqlx::{Connection, Executor, Row, TypeInfo, ValueRef};

use super::ProbeError;
use crate::config::probe::{SqlProbe, SqlTarget};

pub(super) async fn measure(p: &SqlProbe, timeout: Duration) -> Result<f64, ProbeError> {
    let url = || p.shown.clone();
    let connect_err = |source| ProbeError::SqlConnect { url: url(), source };
    let query_err = |source| ProbeError::SqlQuery { url: url(), source };
    match p.target.as_ref() {
        SqlTarget::Postgres(opts) => {
            // A second past the probe's own deadline, so the probe reports
            // its timeout rather than the server's cancellation, and the
            // server still stops a query nobody waits for.
            let ms = (timeout + Duration::from_secs(1))
                .as_millis()
                .min(i32::MAX as u128);
            let opts = opts.clone().options([("statement_timeout", ms)]);
            let mut conn = sqlx::PgConnection::connect_with(&opts)
                .await
                .map_err(connect_err)?;
            // Unprepared (simple query protocol): the server sends values in
            // text form, so NUMERIC needs no decoder.
            let row = conn
                .fetch_optional(sqlx::raw_sql(&p.query))
                .await
                .map_err(query_err);
            // The answer is in hand; a failed goodbye only drops the socket.
            let _ = conn.close().await;
            let row = row?.ok_or_else(|| ProbeError::SqlNoRows { url: url() })?;
            pg_number(&row, &p.shown)
        }
        SqlTarget::Sqlite(opts) => {
            let mut conn = sqlx::SqliteConnection::connect_with(opts)
                .await
                .map_err(connect_err)?;
            let row = conn
                .fetch_optional(sqlx::raw_sql(&p.query))
                .await
                .map_err(query_err);
            // The answer is in hand; a failed close only drops the handle.
            let _ = conn.close().await;
            let row = row?.ok_or_else(|| ProbeError::SqlNoRows { url: url() })?;
            sqlite_number(&row, &p.shown)
        }
    }
}

fn no_column(url: &str) -> ProbeError {
    ProbeError::SqlNoColumns {
        url: url.to_string(),
    }
}

fn pg_number(row: &sqlx::postgres::PgRow, url: &str) -> Result<f64, ProbeError> {
    if row.columns().is_empty() {
        return Err(no_column(url));
    }
    let raw = row.try_get_raw(0).map_err(|source| ProbeError::SqlQuery {
        url: url.to_string(),
        source,
    })?;
    if raw.is_null() {
        return Err(ProbeError::SqlNull {
            url: url.to_string(),
        });
    }
    let type_name = raw.type_info().name().to_string();
    let not_numeric = || ProbeError::SqlNotNumeric {
        url: url.to_string(),
        type_name: type_name.clone(),
    };
    if !matches!(
        type_name.as_str(),
        "INT2" | "INT4" | "INT8" | "FLOAT4" | "FLOAT8" | "NUMERIC" | "OID"
    ) {
        return Err(not_numeric());
    }
    let text = match raw.format() {
        PgValueFormat::Text => raw.as_str().map_err(|_| not_numeric())?,
        // Only prepared statements answer in binary; `raw_sql` never does.
        PgValueFormat::Binary => return Err(not_numeric()),
    };
    text.trim().parse::<f64>().map_err(|_| not_numeric())
}

fn sqlite_number(row: &sqlx::sqlite::SqliteRow, url: &str) -> Result<f64, ProbeError> {
    if row.columns().is_empty() {
        return Err(no_column(url));
    }
    let query_err = |source| ProbeError::SqlQuery {
        url: url.to_string(),
        source,
    };
    let raw = row.try_get_raw(0).map_err(query_err)?;
    if raw.is_null() {
        return Err(ProbeError::SqlNull {
            url: url.to_string(),
        });
    }
    // The value's own storage class (SQLite typing is per value).
    match raw.type_info().name() {
        "INTEGER" => row
            .try_get::<i64, _>(0)
            .map(|v| v as f64)
            .map_err(query_err),
        "REAL" => row.try_get::<f64, _>(0).map_err(query_err),
        other => Err(ProbeError::SqlNotNumeric {
            url: url.to_string(),
            type_name: other.to_string(),
        }),
    }
}
