//! Work probe configuration: `sizing.work` in a job file (DESIGN §5), parsed
//! and resolved here; [`crate::probes`] measures it.
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
//! problem reported with its field path) into a [`WorkProbe`], and the dispatcher's sizing
//! calls [`crate::probes::measure`] once per run. Every probe yields a finite number, 0 or
//! more, in the job's `sizing.unit`, or a [`crate::probes::ProbeError`] saying which probe
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
//!   ([`crate::store::Store::pending_runs`]): messages received and not yet launched,
//!   including retries waiting out their backoff and, when the probe runs
//!   before the run being sized leaves `pending`, that run itself. Meant for
//!   queue jobs.
//!
//! Errors never contain a password: URLs are shown through
//! [`crate::redact::redact`], an HTTP URL's query string is elided (`?…`,
//! tokens often live there), and reqwest's errors are stripped of their URL.

//!
//! Nothing here does I/O: URLs are parsed, never connected to.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use super::diagnostic::{FieldPath, Problem};
use crate::redact::redact;

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

/// `sizing.work.sql`.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "SqlProbe")]
struct SqlFields {
    /// The name of an environment variable holding the database URL
    /// (`postgres://…` or `sqlite://…`).
    url_env: String,
    /// A query whose first column of the first row is the work.
    query: String,
}

/// `sizing.work.http`: set `url` or `url_env`, not both.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, rename = "HttpProbe")]
struct HttpFields {
    /// The URL to `GET` (`http://` or `https://`).
    url: Option<String>,
    /// The name of an environment variable holding the URL.
    url_env: Option<String>,
    /// A JSON pointer to the number in the answer, such as `/pending`.
    pointer: String,
}

/// `sizing.work.queue_length: {}`.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct NoFields {}

// The schema of `RawWorkProbe`, whose `Deserialize` is written by hand: the
// same one-key mapping, as an externally tagged enum. Its doc comment is the
// schema's description.
/// How much work a run has: exactly one probe, `static: 400`, `sql: {…}`,
/// `http: {…}`, `command: […]` or `queue_length: {}`.
#[derive(schemars::JsonSchema)]
#[schemars(rename = "WorkProbe", rename_all = "snake_case")]
#[allow(dead_code)] // only its schema is used
enum WorkProbeSchema {
    /// A fixed amount of work.
    Static(f64),
    /// The first column of the first row of `query`.
    Sql(SqlFields),
    /// The number at `pointer` in the JSON answer to `GET url`.
    Http(HttpFields),
    /// argv of a program that prints the number.
    Command(#[schemars(length(min = 1))] Vec<String>),
    /// The job's pending runs.
    QueueLength(Option<NoFields>),
}

impl schemars::JsonSchema for RawWorkProbe {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        WorkProbeSchema::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        WorkProbeSchema::json_schema(generator)
    }
}

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

/// A resolved probe: what the daemon holds and [`crate::probes::measure`] runs. `Debug`
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
    pub(crate) target: Box<SqlTarget>,
    /// The URL with its password masked, for messages.
    pub(crate) shown: String,
    url_env: String,
    pub(crate) query: String,
}

/// Where a `sql` probe connects (read-only).
#[derive(Clone)]
pub(crate) enum SqlTarget {
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
    pub(crate) url: reqwest::Url,
    /// The URL with its password masked and its query elided, for messages.
    pub(crate) shown: String,
    pub(crate) pointer: String,
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
        RawWorkProbe::Static(v) => Some(resolve_static(*v, &root.key("static"), &mut problems)),
        RawWorkProbe::Sql { url_env, query } => {
            resolve_sql(url_env, query, &root.key("sql"), env, &mut problems)
        }
        RawWorkProbe::Http {
            url,
            url_env,
            pointer,
        } => resolve_http(url, url_env, pointer, &root.key("http"), env, &mut problems),
        RawWorkProbe::Command(argv) => {
            Some(resolve_command(argv, &root.key("command"), &mut problems))
        }
        RawWorkProbe::QueueLength {} => Some(WorkProbe::QueueLength),
    };
    match probe {
        Some(probe) if problems.is_empty() => Ok(probe),
        _ => Err(problems),
    }
}

/// `static: N` (at `p`): a finite number, 0 or more.
fn resolve_static(v: f64, p: &FieldPath, problems: &mut Vec<Problem>) -> WorkProbe {
    if !(v.is_finite() && v >= 0.0) {
        problems.push((p.clone(), format!("{v} must be a finite number, 0 or more")));
    }
    WorkProbe::Static(v)
}

/// `sql` (at `p`): a query, and a database URL in the environment.
fn resolve_sql(
    url_env: &str,
    query: &str,
    p: &FieldPath,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<WorkProbe> {
    if query.trim().is_empty() {
        problems.push((p.key("query"), "must not be empty".into()));
    }
    let url = env_value(env, url_env, &p.key("url_env"), problems)?;
    let target = sql_target(&url)
        .map_err(|why| {
            problems.push((
                p.key("url_env"),
                format!("environment variable {url_env} {why}"),
            ))
        })
        .ok()?;
    Some(WorkProbe::Sql(SqlProbe {
        target: Box::new(target),
        shown: redact(&url),
        url_env: url_env.to_string(),
        query: query.trim().to_string(),
    }))
}

/// `http` (at `p`): a JSON pointer, and exactly one of `url` or `url_env`
/// holding an http(s) URL.
fn resolve_http(
    url: &Option<String>,
    url_env: &Option<String>,
    pointer: &str,
    p: &FieldPath,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<WorkProbe> {
    if let Err(why) = check_pointer(pointer) {
        problems.push((p.key("pointer"), why));
    }
    let url = match (url, url_env) {
        (Some(_), Some(_)) => {
            problems.push((p.clone(), "set either `url` or `url_env`, not both".into()));
            None
        }
        (None, None) => {
            problems.push((
                p.key("url"),
                "is required (or `url_env`: an environment variable holding the URL)".into(),
            ));
            None
        }
        (Some(u), None) => parse_http_url(u)
            .map_err(|why| problems.push((p.key("url"), format!("\"{}\" {why}", redact(u)))))
            .ok(),
        (None, Some(var)) => http_url_from_env(var, &p.key("url_env"), env, problems),
    }?;
    Some(WorkProbe::Http(HttpProbe {
        shown: shown_http_url(&url),
        url,
        pointer: pointer.to_string(),
    }))
}

/// The http(s) URL in environment variable `var` (named at `path`).
fn http_url_from_env(
    var: &str,
    path: &FieldPath,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<reqwest::Url> {
    let u = env_value(env, var, path, problems)?;
    parse_http_url(&u)
        .map_err(|why| {
            problems.push((
                path.clone(),
                format!(
                    "environment variable {var} holds \"{}\", which {why}",
                    redact(&u)
                ),
            ))
        })
        .ok()
}

/// `command` (at `p`): at least a program.
fn resolve_command(argv: &[String], p: &FieldPath, problems: &mut Vec<Problem>) -> WorkProbe {
    const EXAMPLE: &str = r#"e.g. ["sh", "-c", "du -sb /data | cut -f1"]"#;
    match argv.first() {
        None => problems.push((
            p.clone(),
            format!("needs at least the program to run, {EXAMPLE}"),
        )),
        Some(program) if program.trim().is_empty() => {
            problems.push((p.index(0), "the program must not be empty".into()))
        }
        Some(_) => {}
    }
    WorkProbe::Command(argv.to_vec())
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
}
