//! Work probes measure how much work a run has, just before it is sized
//! (`sizing.work` in a job file, DESIGN §5). What a job file says and how it
//! is resolved lives in [`crate::config::probe`]; this module runs the
//! resolved [`WorkProbe`]: `sql`, `http` and `command` each in their
//! own file, `static` and `queue_length` here.
//!
//! Every probe yields a finite number, 0 or more, in the job's
//! `sizing.unit`, or a [`ProbeError`] saying which probe failed and why.
//! What happens then (last known work, or maximum parallelism) is the
//! caller's policy, not this module's.
//!
//! Errors never contain a password: URLs are shown through
//! [`crate::redact::redact`], an HTTP URL's query string is elided (`?…`,
//! tokens often live there), and reqwest's errors are stripped of their URL.

use std::time::Duration;

pub use crate::config::probe::WorkProbe;
use crate::store::{Store, StoreError};

mod command;
mod http;
mod sql;

/// Longest excerpt of program output or an HTTP body quoted in an error.
const EXCERPT: usize = 200;

/// What a measurement may need besides the probe.
pub struct ProbeContext<'a> {
    /// For `queue_length`.
    pub store: &'a Store,
    /// The job being sized (`queue_length` counts its runs; a command gets
    /// it as `KEDGE_JOB`).
    pub job: &'a str,
}

/// Why a probe measured nothing. Every message names the probe kind; URLs
/// are shown without their password.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe took longer than its timeout (a command's process group
    /// was killed; a PostgreSQL query is stopped by the server's
    /// `statement_timeout` a second later).
    #[error("{kind} probe timed out after {}", humantime::format_duration(*after))]
    Timeout { kind: &'static str, after: Duration },
    /// The probe measured a negative or non-finite amount.
    #[error("{kind} probe measured {value}; work must be a finite number, 0 or more")]
    InvalidWork { kind: &'static str, value: f64 },

    /// Could not connect to the database.
    #[error("sql probe cannot connect to {url}")]
    SqlConnect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The query failed (syntax, permissions, no such table…).
    #[error("sql probe query failed on {url}")]
    SqlQuery {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The query returned no rows.
    #[error("sql probe query returned no rows on {url}")]
    SqlNoRows { url: String },
    /// The first column of the first row is NULL (e.g. `SUM` over no rows).
    #[error("sql probe query returned NULL on {url}")]
    SqlNull { url: String },
    /// The query's rows have no columns (`SELECT FROM t`).
    #[error("sql probe query returned rows without columns on {url}")]
    SqlNoColumns { url: String },
    /// The first column is not numeric.
    #[error("sql probe query returned a {type_name} value on {url}, not a number (CAST it in the query)")]
    SqlNotNumeric { url: String, type_name: String },

    /// The HTTP client could not be built (TLS set-up).
    #[error("http probe cannot build its HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The request failed: DNS, connection, TLS, or the body broke off.
    #[error("http probe GET {url} failed")]
    HttpRequest {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than 2xx.
    #[error("http probe GET {url} answered {status}{}", excerpt_suffix(body))]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
        /// The start of the body's first line (may be empty).
        body: String,
    },
    /// The body is larger than the probe reads.
    #[error("http probe GET {url}: the body is larger than {limit} bytes")]
    HttpTooLarge { url: String, limit: usize },
    /// The body is not JSON.
    #[error("http probe GET {url}: the body is not JSON")]
    HttpNotJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// Nothing in the body at the pointer.
    #[error("http probe GET {url}: nothing at JSON pointer \"{pointer}\"")]
    HttpPointerMissing { url: String, pointer: String },
    /// The value at the pointer is neither a number nor a numeric string.
    #[error("http probe GET {url}: the value at \"{pointer}\" is {found}, not a number")]
    HttpNotNumber {
        url: String,
        pointer: String,
        /// What was there, described (`the string "n/a"`, `an object`…).
        found: String,
    },

    /// The program could not be started (not found, not executable…).
    #[error("command probe cannot start {program}")]
    CommandSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading the program's output or waiting for it failed.
    #[error("command probe: reading the output of {program} failed")]
    CommandIo {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The program exited with a non-zero code.
    #[error(
        "command probe: {program} exited with code {code}{}",
        excerpt_suffix(stderr)
    )]
    CommandExit {
        program: String,
        code: i32,
        /// The first line of its stderr (may be empty).
        stderr: String,
    },
    /// The program was killed by a signal.
    #[error(
        "command probe: {program} was killed by signal {signal}{}",
        excerpt_suffix(stderr)
    )]
    CommandSignal {
        program: String,
        signal: i32,
        /// The first line of its stderr (may be empty).
        stderr: String,
    },
    /// The program's stdout is not a number.
    #[error("command probe: {program} printed {output:?}, not a number")]
    CommandNotNumber {
        program: String,
        /// Its stdout, trimmed and shortened.
        output: String,
    },

    /// The store could not count the job's pending runs.
    #[error("queue_length probe cannot count the pending runs of {job}")]
    QueueLength {
        job: String,
        #[source]
        source: StoreError,
    },
}

fn excerpt_suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The first non-empty line of `bytes`, trimmed and cut to [`EXCERPT`] characters.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    shorten(line)
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= EXCERPT {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(EXCERPT).collect();
        out.push('…');
        out
    }
}

/// Measures the work now. `timeout` bounds the whole probe (connecting
/// included). On timeout a command's process group is killed and its
/// leader reaped (waiting at most 2 s more) before this returns; dropping
/// the future kills the group too. The result is finite and 0 or more.
pub async fn measure(
    probe: &WorkProbe,
    ctx: &ProbeContext<'_>,
    timeout: Duration,
) -> Result<f64, ProbeError> {
    let kind = probe.kind();
    let value = match probe {
        WorkProbe::Static(v) => *v,
        // The command keeps its own deadline: it must kill and reap.
        WorkProbe::Command(argv) => command::measure(argv, ctx.job, timeout).await?,
        WorkProbe::Sql(p) => within(kind, timeout, sql::measure(p, timeout)).await?,
        WorkProbe::Http(p) => within(kind, timeout, http::measure(p)).await?,
        WorkProbe::QueueLength => {
            let count = async {
                ctx.store
                    .pending_runs(ctx.job)
                    .await
                    .map(|n| n as f64)
                    .map_err(|source| ProbeError::QueueLength {
                        job: ctx.job.to_string(),
                        source,
                    })
            };
            within(kind, timeout, count).await?
        }
    };
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ProbeError::InvalidWork { kind, value })
    }
}

/// `fut`, or [`ProbeError::Timeout`] when it takes longer than `timeout`
/// (it is dropped then, which closes its connections).
async fn within(
    kind: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<f64, ProbeError>>,
) -> Result<f64, ProbeError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ProbeError::Timeout {
            kind,
            after: timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short() {
        assert_eq!(
            first_line(b"\n  boom: no such file  \nmore"),
            "boom: no such file"
        );
        assert_eq!(shorten(&"x".repeat(500)).chars().count(), EXCERPT + 1);
    }
}
