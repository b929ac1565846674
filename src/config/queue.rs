//! `trigger.queue`, `batch` and `dead_letter`: where a queue job's messages
//! come from, how many go into one run, and where the dead ones go.
//!
//! ```yaml
//! trigger:
//!   queue:
//!     redis_list: { url_env: ORDERS_REDIS_URL, list: orders }
//!     deadline: { json_pointer: /deadline }   # or { header: x-deadline }
//!     on_expired: dead_letter                 # or run
//! batch: { max_messages: 20, max_wait: 2s }
//! dead_letter: { list: orders-dead }
//! ```
//!
//! Exactly one source: `builtin: {}` (kedge's own store),
//! `redis_list: { url | url_env, list, lease }`,
//! `redis_stream: { url | url_env, stream, group, claim_idle }`,
//! `rabbitmq: { url | url_env, queue, prefetch }`, or
//! `postgres: { url | url_env, table, id_column, payload_column, on_claim,
//! status_column, channel, poll_interval }`.
//!
//! The dead-letter target matches the source: `list` (redis_list), `stream`
//! (redis_stream), `exchange` + `routing_key` (rabbitmq), `table`
//! (postgres). Every dead letter is also kept in kedge's store, where
//! `kedge dlq list` shows it; without `dead_letter` it is kept only there.

use std::time::Duration;

use serde::Deserialize;

use super::diagnostic::FieldPath;
use super::diagnostic::{parse_duration, Problem};
use super::yaml::{duration_text, string_enum};
use crate::redact::redact;

/// `trigger.queue` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    expecting = "a mapping with one source (builtin, redis_list, redis_stream, rabbitmq or postgres)"
)]
pub struct RawQueue {
    pub builtin: Option<BuiltinQueue>,
    pub redis_list: Option<RawRedisList>,
    pub redis_stream: Option<RawRedisStream>,
    pub rabbitmq: Option<RawRabbitmq>,
    pub postgres: Option<RawPostgres>,
    /// Where a message carries its own deadline.
    pub deadline: Option<RawDeadlineFrom>,
    pub on_expired: Option<OnExpired>,
}

/// `trigger.queue.builtin: {}` — the queue table in kedge's own store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(expecting = "an empty mapping, `{}`")]
pub struct BuiltinQueue {}

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a mapping with url or url_env, list and lease")]
pub struct RawRedisList {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub list: String,
    #[serde(default, deserialize_with = "duration_text")]
    pub lease: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a mapping with url or url_env, stream, group and claim_idle")]
pub struct RawRedisStream {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub stream: String,
    pub group: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub claim_idle: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a mapping with url or url_env, queue and prefetch")]
pub struct RawRabbitmq {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub queue: String,
    pub prefetch: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    expecting = "a mapping with url or url_env, table, id_column, payload_column, on_claim, status_column, channel and poll_interval"
)]
pub struct RawPostgres {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub table: String,
    pub id_column: Option<String>,
    pub payload_column: Option<String>,
    pub on_claim: Option<OnClaim>,
    pub status_column: Option<String>,
    pub channel: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub poll_interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a mapping with json_pointer or header")]
pub struct RawDeadlineFrom {
    pub json_pointer: Option<String>,
    pub header: Option<String>,
}

/// `batch` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a mapping with max_messages and max_wait")]
pub struct RawBatch {
    pub max_messages: u32,
    #[serde(default, deserialize_with = "duration_text")]
    pub max_wait: Option<String>,
}

/// `dead_letter` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(expecting = "a mapping with list, stream, exchange and routing_key, or table")]
pub struct RawDeadLetter {
    pub list: Option<String>,
    pub stream: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub table: Option<String>,
}

/// What happens to a claimed Postgres row once its message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClaim {
    /// `DELETE` it (the default).
    Delete,
    /// `UPDATE` its `status_column` to `'claimed'`; only rows whose status
    /// is `NULL` or `'pending'` are claimed.
    Mark,
}

string_enum!(OnClaim {
    Delete => "delete",
    Mark => "mark",
});

/// What happens to a message whose own deadline has passed before its run
/// could launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpired {
    /// Dead-letter it with reason `expired` (the default).
    DeadLetter,
    /// Run it anyway.
    Run,
}

string_enum!(OnExpired {
    DeadLetter => "dead_letter",
    Run => "run",
});

/// A validated queue trigger.
#[derive(Debug, Clone)]
pub struct QueueTrigger {
    pub source: QueueSource,
    pub deadline: Option<DeadlineFrom>,
    pub on_expired: OnExpired,
    pub batch: Option<Batch>,
    pub dead_letter: Option<DeadLetterTarget>,
}

impl QueueTrigger {
    /// The builtin queue with every default.
    pub fn builtin() -> Self {
        QueueTrigger {
            source: QueueSource::Builtin,
            deadline: None,
            on_expired: OnExpired::DeadLetter,
            batch: None,
            dead_letter: None,
        }
    }
}

/// Where a queue job's messages come from.
#[derive(Debug, Clone)]
pub enum QueueSource {
    Builtin,
    RedisList(RedisListSource),
    RedisStream(RedisStreamSource),
    Rabbitmq(RabbitmqSource),
    Postgres(PostgresSource),
}

impl QueueSource {
    /// The name stored with every work item (`source` column): the kind and
    /// where, e.g. `redis_list:orders`. Message ids are unique per source.
    pub fn name(&self) -> String {
        match self {
            QueueSource::Builtin => "builtin".into(),
            QueueSource::RedisList(s) => format!("redis_list:{}", s.list),
            QueueSource::RedisStream(s) => format!("redis_stream:{}:{}", s.stream, s.group),
            QueueSource::Rabbitmq(s) => format!("rabbitmq:{}", s.queue),
            QueueSource::Postgres(s) => format!("postgres:{}", s.table),
        }
    }
}

/// A broker URL: the secret one for connecting, the redacted one for logs.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    url: String,
    shown: String,
}

impl BrokerUrl {
    pub fn new(url: &str) -> Self {
        BrokerUrl {
            url: url.to_string(),
            shown: redact(url),
        }
    }
    /// The URL with its password: pass it to the client, never log it.
    pub fn secret(&self) -> &str {
        &self.url
    }
    /// The URL with its password masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[derive(Debug, Clone)]
pub struct RedisListSource {
    pub url: BrokerUrl,
    pub list: String,
    /// A consumer whose heartbeat is older than this is presumed dead and
    /// its claimed messages are recovered by another; default 30 s.
    pub lease: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisStreamSource {
    pub url: BrokerUrl,
    pub stream: String,
    /// Consumer group; default `kedge`.
    pub group: String,
    /// Entries pending this long with a consumer are taken over
    /// (`XAUTOCLAIM`); default 60 s.
    pub claim_idle: Duration,
}

#[derive(Debug, Clone)]
pub struct RabbitmqSource {
    pub url: BrokerUrl,
    pub queue: String,
    /// Unacked deliveries at most (`basic.qos`); default 32.
    pub prefetch: u16,
}

#[derive(Debug, Clone)]
pub struct PostgresSource {
    pub url: BrokerUrl,
    /// A table name, optionally schema-qualified (`schema.table`); checked
    /// to be plain identifiers, so it can be quoted into SQL safely.
    pub table: String,
    /// The message id; default `id`.
    pub id_column: String,
    /// The message body (text, json or jsonb); default `payload`.
    pub payload_column: String,
    pub on_claim: OnClaim,
    /// With `on_claim: mark`: the status column; default `status`.
    pub status_column: String,
    /// `LISTEN` channel; default none (polling only).
    pub channel: Option<String>,
    /// Poll this often even without a notification; default 5 s.
    pub poll_interval: Duration,
}

/// Where a message's own deadline is read from: RFC 3339 text or Unix
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineFrom {
    /// A JSON pointer into the payload (`/deadline`).
    JsonPointer(String),
    /// A message header (AMQP header, Redis stream field).
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub max_messages: u32,
    pub max_wait: Duration,
}

/// Batches larger than this (in bytes of payload) are split: a ConfigMap
/// holds at most 1 MiB.
pub const BATCH_MAX_BYTES: usize = 1024 * 1024;

/// Where a source's dead letters are published (besides kedge's store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTarget {
    RedisList(String),
    RedisStream(String),
    Rabbitmq {
        exchange: String,
        routing_key: String,
    },
    Postgres(String),
}

/// Validates `trigger.queue` (at `qp`), `batch` and `dead_letter` (at `root`).
pub fn validate(
    q: &RawQueue,
    batch: Option<&RawBatch>,
    dead_letter: Option<&RawDeadLetter>,
    qp: &FieldPath,
    root: &FieldPath,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<QueueTrigger> {
    let mut bad = |path: FieldPath, msg: String| problems.push((path, msg));
    let given: Vec<&str> = [
        ("builtin", q.builtin.is_some()),
        ("redis_list", q.redis_list.is_some()),
        ("redis_stream", q.redis_stream.is_some()),
        ("rabbitmq", q.rabbitmq.is_some()),
        ("postgres", q.postgres.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect();
    if given.len() > 1 {
        bad(
            qp.clone(),
            format!(
                "names {} sources ({}); a job reads from one",
                given.len(),
                given.join(", ")
            ),
        );
        return None;
    }

    let mut url =
        |raw_url: &Option<String>, raw_env: &Option<String>, p: &FieldPath, schemes: &[&str]| {
            let (text, field) = match (raw_url, raw_env) {
                (Some(_), Some(_)) => {
                    bad(p.clone(), "set either `url` or `url_env`, not both".into());
                    return None;
                }
                (None, None) => {
                    bad(p.clone(), "needs `url` or `url_env`".into());
                    return None;
                }
                (Some(u), None) => (u.trim().to_string(), p.key("url")),
                (None, Some(var)) => match env(var) {
                    Some(v) if !v.trim().is_empty() => (v.trim().to_string(), p.key("url_env")),
                    Some(_) => {
                        bad(
                            p.key("url_env"),
                            format!("environment variable {var} is empty"),
                        );
                        return None;
                    }
                    None => {
                        bad(
                            p.key("url_env"),
                            format!("environment variable {var} is not set"),
                        );
                        return None;
                    }
                },
            };
            let scheme = text.split_once("://").map(|(s, _)| s).unwrap_or("");
            if !schemes.contains(&scheme) {
                bad(
                    field,
                    format!(
                        "{} is not a URL this source takes ({})",
                        redact(&text),
                        schemes
                            .iter()
                            .map(|s| format!("{s}://"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                );
                return None;
            }
            Some(BrokerUrl::new(&text))
        };

    let mut more: Vec<Problem> = Vec::new();
    let name = |v: &str, p: FieldPath, more: &mut Vec<Problem>| {
        if v.trim().is_empty() {
            more.push((p, "must not be empty".into()));
        }
    };
    let source = if q.builtin.is_some() {
        Some(QueueSource::Builtin)
    } else if let Some(s) = &q.redis_list {
        let p = qp.key("redis_list");
        name(&s.list, p.key("list"), &mut more);
        let lease = duration_or(&s.lease, Duration::from_secs(30), p.key("lease"), &mut more);
        url(&s.url, &s.url_env, &p, &["redis", "rediss"]).map(|url| {
            QueueSource::RedisList(RedisListSource {
                url,
                list: s.list.clone(),
                lease,
            })
        })
    } else if let Some(s) = &q.redis_stream {
        let p = qp.key("redis_stream");
        name(&s.stream, p.key("stream"), &mut more);
        let group = s.group.clone().unwrap_or_else(|| "kedge".into());
        name(&group, p.key("group"), &mut more);
        let claim_idle = duration_or(
            &s.claim_idle,
            Duration::from_secs(60),
            p.key("claim_idle"),
            &mut more,
        );
        url(&s.url, &s.url_env, &p, &["redis", "rediss"]).map(|url| {
            QueueSource::RedisStream(RedisStreamSource {
                url,
                stream: s.stream.clone(),
                group,
                claim_idle,
            })
        })
    } else if let Some(s) = &q.rabbitmq {
        let p = qp.key("rabbitmq");
        name(&s.queue, p.key("queue"), &mut more);
        let prefetch = s.prefetch.unwrap_or(32);
        if prefetch == 0 {
            more.push((
                p.key("prefetch"),
                "must be at least 1 (0 would mean unbounded)".into(),
            ));
        }
        url(&s.url, &s.url_env, &p, &["amqp", "amqps"]).map(|url| {
            QueueSource::Rabbitmq(RabbitmqSource {
                url,
                queue: s.queue.clone(),
                prefetch,
            })
        })
    } else if let Some(s) = &q.postgres {
        let p = qp.key("postgres");
        if !is_sql_name(&s.table, true) {
            more.push((
                p.key("table"),
                format!(
                    "{:?} is not a table name (letters, digits and _, optionally schema.table)",
                    s.table
                ),
            ));
        }
        let column = |v: &Option<String>, default: &str, field: &str, more: &mut Vec<Problem>| {
            let v = v.clone().unwrap_or_else(|| default.to_string());
            if !is_sql_name(&v, false) {
                more.push((
                    p.key(field),
                    format!("{v:?} is not a column name (letters, digits and _)"),
                ));
            }
            v
        };
        let id_column = column(&s.id_column, "id", "id_column", &mut more);
        let payload_column = column(&s.payload_column, "payload", "payload_column", &mut more);
        let status_column = column(&s.status_column, "status", "status_column", &mut more);
        let on_claim = s.on_claim.unwrap_or(OnClaim::Delete);
        if on_claim == OnClaim::Delete && s.status_column.is_some() {
            more.push((
                p.key("status_column"),
                "only applies with `on_claim: mark`".into(),
            ));
        }
        if let Some(c) = &s.channel {
            if !is_sql_name(c, false) {
                more.push((
                    p.key("channel"),
                    format!("{c:?} is not a channel name (letters, digits and _)"),
                ));
            }
        }
        let poll_interval = duration_or(
            &s.poll_interval,
            Duration::from_secs(5),
            p.key("poll_interval"),
            &mut more,
        );
        url(&s.url, &s.url_env, &p, &["postgres", "postgresql"]).map(|url| {
            QueueSource::Postgres(PostgresSource {
                url,
                table: s.table.clone(),
                id_column,
                payload_column,
                on_claim,
                status_column,
                channel: s.channel.clone(),
                poll_interval,
            })
        })
    } else {
        bad(
            qp.clone(),
            "needs a source: builtin, redis_list, redis_stream, rabbitmq or postgres".into(),
        );
        None
    };

    let deadline = match &q.deadline {
        None => None,
        Some(d) => {
            let p = qp.key("deadline");
            match (&d.json_pointer, &d.header) {
                (Some(ptr), None) => {
                    if !(ptr.is_empty() || ptr.starts_with('/')) {
                        more.push((
                            p.key("json_pointer"),
                            format!("{ptr:?} is not a JSON pointer (it starts with /)"),
                        ));
                    }
                    Some(DeadlineFrom::JsonPointer(ptr.clone()))
                }
                (None, Some(h)) if !h.trim().is_empty() => Some(DeadlineFrom::Header(h.clone())),
                (None, Some(_)) => {
                    more.push((p.key("header"), "must not be empty".into()));
                    None
                }
                _ => {
                    more.push((p, "set exactly one of `json_pointer` or `header`".into()));
                    None
                }
            }
        }
    };
    // Which source the file names, even when its URL did not check out,
    // so the checks below still report against it.
    #[derive(PartialEq)]
    enum Kind {
        Builtin,
        RedisList,
        RedisStream,
        Rabbitmq,
        Postgres,
    }
    let kind = match given.first().copied() {
        Some("builtin") => Some(Kind::Builtin),
        Some("redis_list") => Some(Kind::RedisList),
        Some("redis_stream") => Some(Kind::RedisStream),
        Some("rabbitmq") => Some(Kind::Rabbitmq),
        Some("postgres") => Some(Kind::Postgres),
        _ => None,
    };
    if matches!(deadline, Some(DeadlineFrom::Header(_)))
        && matches!(kind, Some(Kind::Builtin | Kind::RedisList | Kind::Postgres))
    {
        more.push((
            qp.key("deadline").key("header"),
            "this source's messages have no headers; use `json_pointer`".into(),
        ));
    }

    let batch = batch.map(|b| {
        let p = root.key("batch");
        if !(1..=1000).contains(&b.max_messages) {
            more.push((
                p.key("max_messages"),
                format!("{} is out of range 1-1000", b.max_messages),
            ));
        }
        let max_wait = duration_or(
            &b.max_wait,
            Duration::from_secs(1),
            p.key("max_wait"),
            &mut more,
        );
        Batch {
            max_messages: b.max_messages.clamp(1, 1000),
            max_wait,
        }
    });

    let dead_letter = dead_letter.and_then(|d| {
        let p = root.key("dead_letter");
        let target = match (&kind, d) {
            (Some(Kind::RedisList), RawDeadLetter { list: Some(l), stream: None, exchange: None, routing_key: None, table: None }) => {
                Some(DeadLetterTarget::RedisList(l.clone()))
            }
            (Some(Kind::RedisStream), RawDeadLetter { stream: Some(s), list: None, exchange: None, routing_key: None, table: None }) => {
                Some(DeadLetterTarget::RedisStream(s.clone()))
            }
            (Some(Kind::Rabbitmq), RawDeadLetter { exchange: Some(e), routing_key, list: None, stream: None, table: None }) => {
                Some(DeadLetterTarget::Rabbitmq {
                    exchange: e.clone(),
                    routing_key: routing_key.clone().unwrap_or_default(),
                })
            }
            (Some(Kind::Postgres), RawDeadLetter { table: Some(t), list: None, stream: None, exchange: None, routing_key: None }) => {
                if !is_sql_name(t, true) {
                    more.push((p.key("table"), format!("{t:?} is not a table name (letters, digits and _, optionally schema.table)")));
                }
                Some(DeadLetterTarget::Postgres(t.clone()))
            }
            (None, _) => None,
            (Some(s), _) => {
                let want = match s {
                    Kind::Builtin => "nothing: builtin dead letters stay in kedge's store (`kedge dlq list`)",
                    Kind::RedisList => "`list`",
                    Kind::RedisStream => "`stream`",
                    Kind::Rabbitmq => "`exchange` (and `routing_key`)",
                    Kind::Postgres => "`table`",
                };
                more.push((p.clone(), format!("for this source takes {want}")));
                None
            }
        };
        if let Some(DeadLetterTarget::RedisList(n) | DeadLetterTarget::RedisStream(n)) = &target {
            if n.trim().is_empty() {
                more.push((p.clone(), "names an empty key".into()));
            }
        }
        target
    });

    problems.extend(more);
    source.map(|source| QueueTrigger {
        source,
        deadline,
        on_expired: q.on_expired.unwrap_or(OnExpired::DeadLetter),
        batch,
        dead_letter,
    })
}

fn duration_or(
    v: &Option<String>,
    default: Duration,
    p: FieldPath,
    more: &mut Vec<Problem>,
) -> Duration {
    match v {
        None => default,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                more.push((p, "must be more than 0".into()));
                default
            }
            Err(e) => {
                more.push((p, e));
                default
            }
        },
    }
}

/// A plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes), or
/// with `qualified` two of them joined by a dot.
pub fn is_sql_name(s: &str, qualified: bool) -> bool {
    let ident = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    match s.split_once('.') {
        Some((schema, table)) if qualified => ident(schema) && ident(table),
        Some(_) => false,
        None => ident(s),
    }
}

/// `"a"."b"` from `a.b`: a checked name quoted for SQL.
pub fn quote_sql_name(s: &str) -> String {
    s.split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_names() {
        assert!(is_sql_name("jobs", false));
        assert!(is_sql_name("app.jobs_q", true));
        assert!(!is_sql_name("app.jobs", false));
        assert!(!is_sql_name("jobs; drop table x", true));
        assert!(!is_sql_name("1jobs", false));
        assert_eq!(quote_sql_name("app.jobs"), "\"app\".\"jobs\"");
    }
}
