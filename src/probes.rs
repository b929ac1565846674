//! Work probes: how much work a run has, measured just before it is sized
//! (`sizing.work` in a job file, DESIGN §5).
//!
//! ```yaml
//! sizing:
//!   work: { static: 400 }
//!   # work:
//!   #   sql: { url_env: BACKUP_DB_URL, query: "select pg_database_size('app') / 1e9" }
//!   # work:
//!   #   http: { url: "http://prometheus:9090/api/v1/query?query=backlog", pointer: /data/result/0/value/1 }
//!   # work:
//!   #   command: ["sh", "-c", "du -sb /data | cut -f1"]
//!   # work:
//!   #   queue_length: {}
//! ```
//!
//! A job file says *what* to measure ([`RawWorkProbe`]); loading the job
//! resolves it ([`resolve`]: environment variables read, URLs parsed, every
//! problem reported with its field path) into a [`WorkProbe`], and the sizer
//! calls [`measure`] once per run. Every probe yields a finite number, 0 or
//! more, in the job's `sizing.unit`, or a [`ProbeError`] saying which probe
//! failed and why. What happens then (last known work, or maximum
//! parallelism) is the caller's policy, not this module's.
//!
//! The probes:
//!
//! - `static: N` — the number itself.
//! - `sql: { url_env, query }` — the first column of the first row of
//!   `query`, run on the database whose URL is in the daemon's environment
//!   variable `url_env` (`postgres://…`/`postgresql://…` or `sqlite:…`), so
//!   no password sits in a job file. Each measurement opens a fresh
//!   connection and closes it afterwards: probes run once per run, and a
//!   pool would hold connections to someone else's database for nothing.
//!   The connection is read-only (PostgreSQL: `default_transaction_read_only`,
//!   SQLite: opened read-only) and, on PostgreSQL, `statement_timeout` is the
//!   probe timeout plus a second, so the server stops a query the probe gave
//!   up on. The
//!   column must be numeric (integer, floating point or PostgreSQL
//!   `NUMERIC`, which is read from PostgreSQL's text form rather than
//!   decoded, so `pg_database_size(…) / 1e9` works); a text column is an
//!   error, `CAST` it in the query. The query runs unprepared, so it can
//!   hold no parameters; with several statements the first row of any
//!   counts.
//! - `http: { url | url_env, pointer }` — `GET` the URL (exactly one of a
//!   literal `url` or `url_env`, an environment variable holding it, for
//!   URLs that carry credentials); the answer must be 2xx with a JSON body
//!   (at most 8 MiB), and the value at the RFC 6901 JSON `pointer` a number
//!   or a string holding one (Prometheus writes sample values as strings).
//!   Credentials in the URL's userinfo are sent as basic auth. Redirects
//!   are followed (up to 10).
//! - `command: [program, args…]` — runs the program directly (no shell is
//!   added; write `["sh", "-c", "…"]` for one) with the daemon's environment
//!   plus `KEDGE_JOB`, stdin closed, in a process group of its own. It must
//!   exit 0 and print the number (surrounding whitespace is ignored) on
//!   stdout. When the probe ends — on time or not — the whole process group
//!   is killed, so a probe leaves nothing behind; a background process that
//!   keeps stdout open makes the probe wait until its timeout.
//! - `queue_length: {}` — the job's pending runs in the store
//!   ([`Store::pending_runs`]): messages received and not yet launched,
//!   including retries waiting out their backoff and, when the probe runs
//!   before the run being sized leaves `pending`, that run itself. Meant for
//!   queue jobs.
//!
//! Errors never contain a password: URLs are shown through
//! [`crate::redact::redact`], an HTTP URL's query string is elided (`?…`,
//! tokens often live there), and reqwest's errors are stripped of their URL.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{de, Deserialize};
use sqlx::postgres::{PgConnectOptions, PgValueFormat};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Executor, Row, TypeInfo, ValueRef};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::diagnostic::FieldPath;
use crate::config::job::Problem;
use crate::redact::redact;
use crate::store::{Store, StoreError};

/// The most of an HTTP body a probe reads.
const HTTP_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// The most of a command's stdout kept (a number needs far less).
const STDOUT_LIMIT: usize = 64 * 1024;
/// The most of a command's stderr kept (for the first line in errors).
const STDERR_LIMIT: usize = 64 * 1024;
/// How long a timed-out command's killed process is waited for.
const REAP_GRACE: Duration = Duration::from_secs(2);
/// Longest excerpt of program output or an HTTP body quoted in an error.
const EXCERPT: usize = 200;

/// `sizing.work` as written in a job file: exactly one key naming the
/// probe (`static: 400`, `sql: {…}`, `http: {…}`, `command: […]`,
/// `queue_length: {}`; `queue_length:` with no value is accepted too).
///
/// Deserialized by hand as a one-key mapping rather than derived as an
/// externally tagged enum: serde_ignored drops variant names from the paths
/// it reports, so an unknown field under `sql` would be reported at
/// `sizing.work.extra` instead of `sizing.work.sql.extra`.
#[derive(Debug, Clone)]
pub enum RawWorkProbe {
    /// A fixed amount of work.
    Static(f64),
    /// The first column of the first row of `query` on the database whose
    /// URL is in the environment variable `url_env`.
    Sql { url_env: String, query: String },
    /// The number at `pointer` in the JSON answer to `GET url`; the URL is
    /// given literally (`url`) or in an environment variable (`url_env`),
    /// exactly one of the two.
    Http {
        url: Option<String>,
        url_env: Option<String>,
        pointer: String,
    },
    /// argv of a program that prints the number.
    Command(Vec<String>),
    /// The job's pending runs (`queue_length: {}`).
    QueueLength {},
}

#[derive(Clone, Copy)]
enum ProbeName {
    Static,
    Sql,
    Http,
    Command,
    QueueLength,
}

impl<'de> Deserialize<'de> for ProbeName {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ProbeName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a probe name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProbeName, E> {
                Ok(match v {
                    "static" => ProbeName::Static,
                    "sql" => ProbeName::Sql,
                    "http" => ProbeName::Http,
                    "command" => ProbeName::Command,
                    "queue_length" => ProbeName::QueueLength,
                    _ => {
                        return Err(E::custom(format_args!(
                            "unknown probe `{v}`, expected one of `static`, `sql`, `http`, `command` or `queue_length`"
                        )))
                    }
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

#[derive(Deserialize)]
struct SqlFields {
    url_env: String,
    query: String,
}

#[derive(Deserialize)]
struct HttpFields {
    url: Option<String>,
    url_env: Option<String>,
    pointer: String,
}

#[derive(Deserialize)]
struct NoFields {}

impl<'de> Deserialize<'de> for RawWorkProbe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawWorkProbe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a mapping with one of `static`, `sql`, `http`, `command` or `queue_length` (e.g. `static: 400`)",
                )
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawWorkProbe, A::Error> {
                let Some(name) = map.next_key::<ProbeName>()? else {
                    return Err(de::Error::custom(
                        "needs one of `static`, `sql`, `http`, `command` or `queue_length`",
                    ));
                };
                let probe = match name {
                    ProbeName::Static => RawWorkProbe::Static(map.next_value()?),
                    ProbeName::Sql => {
                        let f: SqlFields = map.next_value()?;
                        RawWorkProbe::Sql {
                            url_env: f.url_env,
                            query: f.query,
                        }
                    }
                    ProbeName::Http => {
                        let f: HttpFields = map.next_value()?;
                        RawWorkProbe::Http {
                            url: f.url,
                            url_env: f.url_env,
                            pointer: f.pointer,
                        }
                    }
                    ProbeName::Command => RawWorkProbe::Command(map.next_value()?),
                    ProbeName::QueueLength => {
                        let _: Option<NoFields> = map.next_value()?;
                        RawWorkProbe::QueueLength {}
                    }
                };
                if map.next_key::<ProbeName>()?.is_some() {
                    return Err(de::Error::custom(
                        "names more than one probe; the work is measured one way",
                    ));
                }
                Ok(probe)
            }
        }
        d.deserialize_map(V)
    }
}

/// A resolved probe: what the daemon holds and [`measure`] runs. `Debug`
/// shows URLs with their password masked.
#[derive(Clone)]
pub enum WorkProbe {
    Static(f64),
    Sql(SqlProbe),
    Http(HttpProbe),
    /// argv; never empty.
    Command(Vec<String>),
    QueueLength,
}

/// A resolved `sql` probe.
#[derive(Clone)]
pub struct SqlProbe {
    target: Box<SqlTarget>,
    /// The URL with its password masked, for messages.
    shown: String,
    url_env: String,
    query: String,
}

#[derive(Clone)]
enum SqlTarget {
    Postgres(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

impl SqlProbe {
    /// The database URL, password masked.
    pub fn url(&self) -> &str {
        &self.shown
    }
    /// The environment variable the URL came from.
    pub fn url_env(&self) -> &str {
        &self.url_env
    }
    pub fn query(&self) -> &str {
        &self.query
    }
}

impl fmt::Debug for SqlProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlProbe")
            .field("url", &self.shown)
            .field("url_env", &self.url_env)
            .field("query", &self.query)
            .finish()
    }
}

/// A resolved `http` probe.
#[derive(Clone)]
pub struct HttpProbe {
    url: reqwest::Url,
    /// The URL with its password masked and its query elided, for messages.
    shown: String,
    pointer: String,
}

impl HttpProbe {
    /// The URL, password masked and query string elided.
    pub fn url(&self) -> &str {
        &self.shown
    }
    pub fn pointer(&self) -> &str {
        &self.pointer
    }
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe")
            .field("url", &self.shown)
            .field("pointer", &self.pointer)
            .finish()
    }
}

impl fmt::Debug for WorkProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkProbe::Static(v) => f.debug_tuple("Static").field(v).finish(),
            WorkProbe::Sql(p) => p.fmt(f),
            WorkProbe::Http(p) => p.fmt(f),
            WorkProbe::Command(argv) => f.debug_tuple("Command").field(argv).finish(),
            WorkProbe::QueueLength => f.write_str("QueueLength"),
        }
    }
}

impl WorkProbe {
    /// The probe's name as written in a job file: `static`, `sql`, `http`,
    /// `command` or `queue_length`.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkProbe::Static(_) => "static",
            WorkProbe::Sql(_) => "sql",
            WorkProbe::Http(_) => "http",
            WorkProbe::Command(_) => "command",
            WorkProbe::QueueLength => "queue_length",
        }
    }
}

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

// ----- resolve --------------------------------------------------------------

/// Validates `raw` and resolves it: reads the environment variables it
/// names (through `env`), parses its URLs. Problem paths are relative to
/// `sizing.work` (e.g. `sql.url_env`); every problem is reported.
pub fn resolve(
    raw: &RawWorkProbe,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<WorkProbe, Vec<Problem>> {
    let root = FieldPath::root();
    let mut problems: Vec<Problem> = Vec::new();
    let probe = match raw {
        RawWorkProbe::Static(v) => {
            if !(v.is_finite() && *v >= 0.0) {
                problems.push((
                    root.key("static"),
                    format!("{v} must be a finite number, 0 or more"),
                ));
            }
            Some(WorkProbe::Static(*v))
        }
        RawWorkProbe::Sql { url_env, query } => {
            let p = root.key("sql");
            if query.trim().is_empty() {
                problems.push((p.key("query"), "must not be empty".into()));
            }
            let url = env_value(env, url_env, &p.key("url_env"), &mut problems);
            let target = url.and_then(|url| match sql_target(&url) {
                Ok(t) => Some((Box::new(t), redact(&url))),
                Err(why) => {
                    problems.push((
                        p.key("url_env"),
                        format!("environment variable {url_env} {why}"),
                    ));
                    None
                }
            });
            target.map(|(target, shown)| {
                WorkProbe::Sql(SqlProbe {
                    target,
                    shown,
                    url_env: url_env.clone(),
                    query: query.trim().to_string(),
                })
            })
        }
        RawWorkProbe::Http {
            url,
            url_env,
            pointer,
        } => {
            let p = root.key("http");
            if let Err(why) = check_pointer(pointer) {
                problems.push((p.key("pointer"), why));
            }
            let text = match (url, url_env) {
                (Some(_), Some(_)) => {
                    problems.push((p.clone(), "set either `url` or `url_env`, not both".into()));
                    None
                }
                (None, None) => {
                    problems.push((
                        p.key("url"),
                        "is required (or `url_env`: an environment variable holding the URL)"
                            .into(),
                    ));
                    None
                }
                (Some(u), None) => parse_http_url(u)
                    .map_err(|why| {
                        problems.push((p.key("url"), format!("\"{}\" {why}", redact(u))))
                    })
                    .ok(),
                (None, Some(var)) => env_value(env, var, &p.key("url_env"), &mut problems)
                    .and_then(|u| {
                        parse_http_url(&u)
                            .map_err(|why| {
                                problems.push((
                                    p.key("url_env"),
                                    format!(
                                        "environment variable {var} holds \"{}\", which {why}",
                                        redact(&u)
                                    ),
                                ))
                            })
                            .ok()
                    }),
            };
            text.map(|url| {
                WorkProbe::Http(HttpProbe {
                    shown: shown_http_url(&url),
                    url,
                    pointer: pointer.clone(),
                })
            })
        }
        RawWorkProbe::Command(argv) => {
            let p = root.key("command");
            const EXAMPLE: &str = r#"e.g. ["sh", "-c", "du -sb /data | cut -f1"]"#;
            match argv.first() {
                None => problems.push((p, format!("needs at least the program to run, {EXAMPLE}"))),
                Some(program) if program.trim().is_empty() => {
                    problems.push((p.index(0), "the program must not be empty".into()))
                }
                Some(_) => {}
            }
            Some(WorkProbe::Command(argv.clone()))
        }
        RawWorkProbe::QueueLength {} => Some(WorkProbe::QueueLength),
    };
    match probe {
        Some(probe) if problems.is_empty() => Ok(probe),
        _ => Err(problems),
    }
}

/// The value of environment variable `var`, or a problem at `path`.
fn env_value(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    path: &FieldPath,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    if var.trim().is_empty() {
        problems.push((path.clone(), "must name an environment variable".into()));
        return None;
    }
    match env(var) {
        None => {
            problems.push((
                path.clone(),
                format!("environment variable {var} is not set"),
            ));
            None
        }
        Some(v) if v.trim().is_empty() => {
            problems.push((path.clone(), format!("environment variable {var} is empty")));
            None
        }
        Some(v) => Some(v.trim().to_string()),
    }
}

/// Parses a database URL; `Err` completes "environment variable X …".
fn sql_target(url: &str) -> Result<SqlTarget, String> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        PgConnectOptions::from_str(url)
            .map(|o| SqlTarget::Postgres(o.options([("default_transaction_read_only", "on")])))
            .map_err(|e| {
                format!(
                    "does not hold a valid PostgreSQL URL: {}",
                    redact_error(&e, url)
                )
            })
    } else if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)
            .map(|o| SqlTarget::Sqlite(o.read_only(true)))
            .map_err(|e| {
                format!(
                    "does not hold a valid SQLite URL: {}",
                    redact_error(&e, url)
                )
            })
    } else {
        Err(format!(
            "holds \"{}\", which is not a postgres://… or sqlite:… URL",
            redact(url)
        ))
    }
}

/// An error's text, with the URL masked should it appear in it.
fn redact_error(e: &dyn std::error::Error, url: &str) -> String {
    crate::error_chain(e).replace(url, &redact(url))
}

fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("is not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err("has no host".into()),
        other => Err(format!("is a {other}: URL, not http(s)")),
    }
}

/// `url` for messages: password masked, query string elided.
fn shown_http_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let had_query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    let mut s = redact(u.as_str());
    if had_query {
        s.push_str("?…");
    }
    s
}

/// RFC 6901: empty (the whole document) or `/`-separated tokens, where `~`
/// is only ever followed by `0` or `1`.
fn check_pointer(p: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. /data/result/0/value/1";
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!(
            "\"{p}\" is not a JSON pointer (RFC 6901): it must start with \"/\", {EXAMPLE}"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0') | Some('1')) {
            return Err(format!(
                "\"{p}\" is not a JSON pointer (RFC 6901): \"~\" must be followed by 0 or 1 (~0 is \"~\", ~1 is \"/\")"
            ));
        }
    }
    Ok(())
}

// ----- measure --------------------------------------------------------------

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
        WorkProbe::Command(argv) => measure_command(argv, ctx.job, timeout).await?,
        WorkProbe::Sql(p) => within(kind, timeout, measure_sql(p, timeout)).await?,
        WorkProbe::Http(p) => within(kind, timeout, measure_http(p)).await?,
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

// ----- sql ------------------------------------------------------------------

async fn measure_sql(p: &SqlProbe, timeout: Duration) -> Result<f64, ProbeError> {
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

// ----- http -----------------------------------------------------------------

/// One client for every probe (it holds the TLS set-up and a connection pool).
fn http_client() -> Result<reqwest::Client, ProbeError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder()
        .user_agent(concat!("kedge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ProbeError::HttpClient)?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

async fn measure_http(p: &HttpProbe) -> Result<f64, ProbeError> {
    let url = || p.shown.clone();
    let request_err = |e: reqwest::Error| ProbeError::HttpRequest {
        url: url(),
        source: e.without_url(),
    };
    let mut resp = http_client()?
        .get(p.url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(request_err)?;
    let status = resp.status();
    if !status.is_success() {
        // The start of the body, for the message; a broken body is no news.
        let body = match resp.chunk().await {
            Ok(Some(chunk)) => first_line(&chunk),
            _ => String::new(),
        };
        return Err(ProbeError::HttpStatus {
            url: url(),
            status,
            body,
        });
    }
    if resp
        .content_length()
        .is_some_and(|n| n > HTTP_BODY_LIMIT as u64)
    {
        return Err(ProbeError::HttpTooLarge {
            url: url(),
            limit: HTTP_BODY_LIMIT,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(request_err)? {
        if body.len() + chunk.len() > HTTP_BODY_LIMIT {
            return Err(ProbeError::HttpTooLarge {
                url: url(),
                limit: HTTP_BODY_LIMIT,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|source| ProbeError::HttpNotJson { url: url(), source })?;
    let value = doc
        .pointer(&p.pointer)
        .ok_or_else(|| ProbeError::HttpPointerMissing {
            url: url(),
            pointer: p.pointer.clone(),
        })?;
    let not_number = |found: String| ProbeError::HttpNotNumber {
        url: url(),
        pointer: p.pointer.clone(),
        found,
    };
    use serde_json::Value as V;
    match value {
        V::Number(n) => n
            .as_f64()
            .ok_or_else(|| not_number(format!("the number {n}"))),
        V::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| not_number(format!("the string {:?}", shorten(s)))),
        V::Null => Err(not_number("null".into())),
        V::Bool(b) => Err(not_number(format!("{b}"))),
        V::Array(_) => Err(not_number("an array".into())),
        V::Object(_) => Err(not_number("an object".into())),
    }
}

// ----- command --------------------------------------------------------------

/// Kills a process group with SIGKILL, at the latest when dropped (so a
/// cancelled measurement leaves nothing running either).
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals that process group;
            // it has no memory-safety preconditions. ESRCH (group already
            // gone) is fine.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `r` to its end, keeping the first `limit` bytes (the rest is
/// drained, so the writer never blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(
    mut r: R,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = limit.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

async fn measure_command(argv: &[String], job: &str, timeout: Duration) -> Result<f64, ProbeError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(argv.get(1..).unwrap_or_default())
        .env("KEDGE_JOB", job)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ProbeError::CommandSpawn {
        program: program.clone(),
        source,
    })?;
    // The child leads its own group: its pid is the group id.
    let mut group = GroupKill(child.id().map(|p| p as i32));
    let io_err = |source| ProbeError::CommandIo {
        program: program.clone(),
        source,
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let out = async {
            match stdout {
                Some(s) => read_capped(s, STDOUT_LIMIT).await,
                None => Ok((Vec::new(), false)),
            }
        };
        let err = async {
            match stderr {
                Some(s) => read_capped(s, STDERR_LIMIT).await,
                None => Ok((Vec::new(), false)),
            }
        };
        let (out, err) = tokio::join!(out, err);
        let status = child.wait().await;
        (out, err, status)
    };
    let finished = tokio::time::timeout(timeout, run).await;
    // On time or not, nothing of the probe keeps running.
    group.kill();
    let Ok((out, err, status)) = finished else {
        // Reap the killed leader so it does not linger as a zombie; one
        // stuck in the kernel (uninterruptible I/O) is left to tokio's
        // background reaper rather than stretching the timeout.
        let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
        return Err(ProbeError::Timeout {
            kind: "command",
            after: timeout,
        });
    };
    let status = status.map_err(io_err)?;
    let (out, out_truncated) = out.map_err(io_err)?;
    let (err, _) = err.map_err(io_err)?;
    if !status.success() {
        let stderr = first_line(&err);
        return Err(match status.code() {
            Some(code) => ProbeError::CommandExit {
                program,
                code,
                stderr,
            },
            None => {
                use std::os::unix::process::ExitStatusExt;
                ProbeError::CommandSignal {
                    program,
                    signal: status.signal().unwrap_or(0),
                    stderr,
                }
            }
        });
    }
    let text = String::from_utf8_lossy(&out);
    let trimmed = text.trim();
    match trimmed.parse::<f64>() {
        Ok(v) if !out_truncated => Ok(v),
        _ => Err(ProbeError::CommandNotNumber {
            program,
            output: shorten(trimmed),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems(raw: RawWorkProbe, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        resolve(&raw, env)
            .expect_err("should not resolve")
            .into_iter()
            .map(|(p, m)| (p.to_string(), m))
            .collect()
    }

    fn parse(yaml: &str) -> RawWorkProbe {
        let doc = crate::config::yaml::Located::parse(yaml).expect("yaml");
        let (v, diags) = doc.deserialize::<RawWorkProbe>(&FieldPath::root());
        assert!(diags.is_empty(), "{diags:?}");
        v.expect("parses")
    }

    #[test]
    fn job_file_shapes_parse() {
        assert!(matches!(parse("static: 400"), RawWorkProbe::Static(v) if v == 400.0));
        assert!(matches!(parse("static: 1.5"), RawWorkProbe::Static(v) if v == 1.5));
        assert!(matches!(
            parse("queue_length: {}"),
            RawWorkProbe::QueueLength {}
        ));
        assert!(matches!(
            parse("command: [sh, -c, 'echo 3']"),
            RawWorkProbe::Command(a) if a == ["sh", "-c", "echo 3"]
        ));
        assert!(matches!(
            parse("sql: { url_env: DB, query: select 1 }"),
            RawWorkProbe::Sql { url_env, query } if url_env == "DB" && query == "select 1"
        ));
        assert!(matches!(
            parse("http: { url: 'http://x/m', pointer: /a/b }"),
            RawWorkProbe::Http { url: Some(u), url_env: None, pointer } if u == "http://x/m" && pointer == "/a/b"
        ));
    }

    /// `field: message` of the first problem `yaml` has as `sizing.work`.
    fn shape_problems(yaml: &str) -> Vec<String> {
        let doc = crate::config::yaml::Located::parse(yaml).expect("yaml");
        let (_, diags) = doc.deserialize::<RawWorkProbe>(&FieldPath::root());
        diags
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn shape_problems_point_at_the_field() {
        assert_eq!(
            shape_problems("nope: 3"),
            ["nope: unknown probe `nope`, expected one of `static`, `sql`, `http`, `command` or `queue_length`"]
        );
        assert_eq!(
            shape_problems("sql: { url_env: DB, query: x, extra: 1 }"),
            ["sql.extra: unknown field `extra`"]
        );
        assert_eq!(
            shape_problems("http: { url: 'http://x/', pointer: /a, header: 1 }"),
            ["http.header: unknown field `header`"]
        );
        assert_eq!(
            shape_problems("queue_length: { jobs: 1 }"),
            ["queue_length.jobs: unknown field `jobs`"]
        );
        assert_eq!(
            shape_problems("sql: { url_env: DB }"),
            ["sql.query: is required"]
        );
        assert_eq!(
            shape_problems("http: { url: 'http://x/' }"),
            ["http.pointer: is required"]
        );
        assert_eq!(
            shape_problems("static: lots"),
            ["static: invalid type: string \"lots\", expected a number"]
        );
        assert_eq!(
            shape_problems("command: echo 3"),
            ["command: invalid type: string \"echo 3\", expected a sequence"]
        );
        let two = shape_problems("static: 3\ncommand: [echo, 3]");
        assert_eq!(two.len(), 1, "{two:?}");
        assert!(
            two[0].ends_with("names more than one probe; the work is measured one way"),
            "{two:?}"
        );
        let empty = shape_problems("{}");
        assert!(
            empty[0].ends_with("needs one of `static`, `sql`, `http`, `command` or `queue_length`"),
            "{empty:?}"
        );
        let scalar = shape_problems("400");
        assert!(
            scalar[0].contains("expected a mapping with one of `static`"),
            "{scalar:?}"
        );
    }

    #[test]
    fn static_resolves_and_rejects_negative_or_non_finite() {
        assert!(
            matches!(resolve(&RawWorkProbe::Static(3.0), &no_env), Ok(WorkProbe::Static(v)) if v == 3.0)
        );
        assert!(matches!(
            resolve(&RawWorkProbe::Static(0.0), &no_env),
            Ok(WorkProbe::Static(_))
        ));
        assert_eq!(
            problems(RawWorkProbe::Static(-1.0), &no_env),
            [(
                "static".to_string(),
                "-1 must be a finite number, 0 or more".to_string()
            )]
        );
        assert_eq!(
            problems(RawWorkProbe::Static(f64::INFINITY), &no_env)[0].0,
            "static"
        );
        assert_eq!(
            problems(RawWorkProbe::Static(f64::NAN), &no_env)[0].0,
            "static"
        );
    }

    #[test]
    fn sql_needs_its_environment_variable_and_a_database_url() {
        let raw = RawWorkProbe::Sql {
            url_env: "KEDGE_PROBE_DB".into(),
            query: "select 1".into(),
        };
        assert_eq!(
            problems(raw.clone(), &no_env),
            [(
                "sql.url_env".to_string(),
                "environment variable KEDGE_PROBE_DB is not set".to_string()
            )]
        );
        let mysql = |_: &str| Some("mysql://u:hunter2@db/x".to_string());
        let ps = problems(raw.clone(), &mysql);
        assert_eq!(ps[0].0, "sql.url_env");
        assert!(
            ps[0].1.contains("not a postgres://… or sqlite:… URL"),
            "{ps:?}"
        );
        assert!(!ps[0].1.contains("hunter2"), "{ps:?}");
        let empty = |_: &str| Some(" ".to_string());
        assert_eq!(
            problems(raw.clone(), &empty)[0].1,
            "environment variable KEDGE_PROBE_DB is empty"
        );

        let pg = |_: &str| Some("postgres://kedge:hunter2@db:5432/app".to_string());
        let probe = resolve(&raw, &pg).expect("resolves");
        let WorkProbe::Sql(p) = &probe else {
            panic!("{probe:?}")
        };
        assert_eq!(p.url(), "postgres://kedge:***@db:5432/app");
        assert!(!format!("{probe:?}").contains("hunter2"));

        // Every problem at once.
        let both = RawWorkProbe::Sql {
            url_env: "KEDGE_PROBE_DB".into(),
            query: "  ".into(),
        };
        let ps = problems(both, &no_env);
        assert_eq!(ps.len(), 2, "{ps:?}");
        assert_eq!(
            ps[0],
            ("sql.query".to_string(), "must not be empty".to_string())
        );
    }

    #[test]
    fn http_needs_one_url_and_a_json_pointer() {
        let raw = |url: Option<&str>, url_env: Option<&str>, pointer: &str| RawWorkProbe::Http {
            url: url.map(Into::into),
            url_env: url_env.map(Into::into),
            pointer: pointer.into(),
        };
        let probe = resolve(
            &raw(Some("https://u:pw@m.example/q?token=s3cret"), None, "/a/0"),
            &no_env,
        )
        .unwrap();
        let WorkProbe::Http(p) = &probe else { panic!() };
        assert_eq!(p.url(), "https://u:***@m.example/q?…");
        assert!(!format!("{probe:?}").contains("s3cret"));

        let ps = problems(raw(Some("ftp://x/y"), None, "/a"), &no_env);
        assert_eq!(ps[0].0, "http.url");
        assert!(ps[0].1.contains("not http(s)"), "{ps:?}");
        let ps = problems(raw(Some("http://x/"), None, "a/b"), &no_env);
        assert_eq!(ps[0].0, "http.pointer");
        let ps = problems(raw(Some("http://x/"), None, "/a~2"), &no_env);
        assert_eq!(ps[0].0, "http.pointer");
        let ps = problems(raw(None, None, ""), &no_env);
        assert_eq!(ps[0].0, "http.url");
        let ps = problems(raw(Some("http://x/"), Some("M"), ""), &no_env);
        assert_eq!(ps[0].0, "http");
        let ps = problems(raw(None, Some("METRICS_URL"), ""), &no_env);
        assert_eq!(
            ps,
            [(
                "http.url_env".to_string(),
                "environment variable METRICS_URL is not set".to_string()
            )]
        );
        let env = |_: &str| Some("http://metrics:9090/x".to_string());
        assert!(resolve(&raw(None, Some("METRICS_URL"), ""), &env).is_ok());
    }

    #[test]
    fn command_needs_a_program() {
        assert_eq!(
            problems(RawWorkProbe::Command(vec![]), &no_env)[0].0,
            "command"
        );
        assert_eq!(
            problems(RawWorkProbe::Command(vec!["".into(), "x".into()]), &no_env),
            [(
                "command[0]".to_string(),
                "the program must not be empty".to_string()
            )]
        );
    }

    #[test]
    fn kinds_are_the_job_file_names() {
        let kinds: Vec<&str> = [
            WorkProbe::Static(1.0),
            WorkProbe::Command(vec!["true".into()]),
            WorkProbe::QueueLength,
        ]
        .iter()
        .map(WorkProbe::kind)
        .collect();
        assert_eq!(kinds, ["static", "command", "queue_length"]);
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(
            first_line(b"\n  boom: no such file  \nmore"),
            "boom: no such file"
        );
        assert_eq!(shorten(&"x".repeat(500)).chars().count(), EXCERPT + 1);
    }
}
