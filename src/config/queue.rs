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

use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::FieldPath;
use super::diagnostic::{parse_duration, Problem};
use super::yaml::DurationText;
use super::yaml::{duration_text, string_enum};
use crate::redact::redact;

/// `trigger.queue`: exactly one source, and where messages carry their
/// own deadline.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(
    expecting = "a mapping with one source (builtin, redis_list, redis_stream, rabbitmq or postgres)"
)]
#[schemars(deny_unknown_fields, rename = "Queue")]
pub struct RawQueue {
    /// The queue table in kedge's own store, fed by `kedge enqueue` and the API.
    pub builtin: Option<BuiltinQueue>,
    /// A Redis list, claimed with `BLMOVE` into a per-consumer processing list.
    pub redis_list: Option<RawRedisList>,
    /// A Redis stream, read by a consumer group.
    pub redis_stream: Option<RawRedisStream>,
    /// A RabbitMQ queue, with manual acks.
    pub rabbitmq: Option<RawRabbitmq>,
    /// A PostgreSQL table, claimed with `FOR UPDATE SKIP LOCKED`.
    pub postgres: Option<RawPostgres>,
    /// Where a message carries its own deadline.
    pub deadline: Option<RawDeadlineFrom>,
    /// What happens to a message whose own deadline passed before its run
    /// could launch [default: dead_letter].
    pub on_expired: Option<OnExpired>,
}

/// `trigger.queue.builtin: {}` — the queue table in kedge's own store.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "an empty mapping, `{}`")]
#[schemars(deny_unknown_fields)]
pub struct BuiltinQueue {}

/// A Redis list source. Set `url` or `url_env`, not both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with url or url_env, list and lease")]
#[schemars(deny_unknown_fields, rename = "RedisList")]
pub struct RawRedisList {
    /// `redis://` or `rediss://` URL.
    pub url: Option<String>,
    /// The name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// The list messages are pushed to.
    pub list: String,
    /// A consumer whose heartbeat is older than this is presumed dead and
    /// its claimed messages are recovered by another [default: 30s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub lease: Option<String>,
}

/// A Redis stream source. Set `url` or `url_env`, not both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with url or url_env, stream, group and claim_idle")]
#[schemars(deny_unknown_fields, rename = "RedisStream")]
pub struct RawRedisStream {
    /// `redis://` or `rediss://` URL.
    pub url: Option<String>,
    /// The name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// The stream.
    pub stream: String,
    /// The consumer group [default: `kedge`].
    pub group: Option<String>,
    /// Entries pending this long with a consumer are taken over
    /// (`XAUTOCLAIM`) [default: 1m].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub claim_idle: Option<String>,
}

/// A RabbitMQ source. Set `url` or `url_env`, not both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with url or url_env, queue and prefetch")]
#[schemars(deny_unknown_fields, rename = "Rabbitmq")]
pub struct RawRabbitmq {
    /// `amqp://` or `amqps://` URL.
    pub url: Option<String>,
    /// The name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// The queue.
    pub queue: String,
    /// Unacknowledged deliveries at once [default: 32].
    pub prefetch: Option<u16>,
}

/// A PostgreSQL table source. Set `url` or `url_env`, not both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(
    expecting = "a mapping with url or url_env, table, id_column, payload_column, on_claim, status_column, channel and poll_interval"
)]
#[schemars(deny_unknown_fields, rename = "Postgres")]
pub struct RawPostgres {
    /// `postgres://` URL.
    pub url: Option<String>,
    /// The name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// The table (optionally `schema.table`).
    pub table: String,
    /// [default: `id`]
    pub id_column: Option<String>,
    /// [default: `payload`]
    pub payload_column: Option<String>,
    /// What happens to a claimed row once its message is stored [default: delete].
    pub on_claim: Option<OnClaim>,
    /// With `on_claim: mark`: the column set to `'claimed'` [default: `status`].
    pub status_column: Option<String>,
    /// A `LISTEN` channel producers `NOTIFY` for an instant wake-up
    /// [default: none, polling only].
    pub channel: Option<String>,
    /// The polling fallback [default: 5s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub poll_interval: Option<String>,
}

/// Where a message carries its own deadline (RFC 3339): one of the two.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with json_pointer or header")]
#[schemars(deny_unknown_fields, rename = "DeadlineFrom")]
pub struct RawDeadlineFrom {
    /// A JSON pointer into the payload, such as `/deadline`.
    pub json_pointer: Option<String>,
    /// A message header (RabbitMQ) or field (Redis stream).
    pub header: Option<String>,
}

/// `batch`: how many messages one run takes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with max_messages and max_wait")]
#[schemars(deny_unknown_fields, rename = "Batch")]
pub struct RawBatch {
    /// At most this many messages per run (one Indexed completion each).
    #[schemars(range(min = 1))]
    pub max_messages: u32,
    /// A batch launches when full or when its oldest message has waited
    /// this long [default: 1s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub max_wait: Option<String>,
}

/// `dead_letter`: where dead letters are published besides kedge's store;
/// the key matches the source (`list`: redis_list, `stream`: redis_stream,
/// `exchange` + `routing_key`: rabbitmq, `table`: postgres).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with list, stream, exchange and routing_key, or table")]
#[schemars(deny_unknown_fields, rename = "DeadLetter")]
pub struct RawDeadLetter {
    /// redis_list: the list dead letters are pushed to.
    pub list: Option<String>,
    /// redis_stream: the stream dead letters are added to.
    pub stream: Option<String>,
    /// rabbitmq: the exchange dead letters are published to (with publisher confirms).
    pub exchange: Option<String>,
    /// rabbitmq: their routing key [default: empty].
    pub routing_key: Option<String>,
    /// postgres: the table dead letters are inserted into.
    pub table: Option<String>,
}

/// What happens to a claimed Postgres row once its message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
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

/// Which source a `trigger.queue` names. Known even when the source's URL
/// did not check out, so the deadline and dead-letter checks still report
/// against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Builtin,
    RedisList,
    RedisStream,
    Rabbitmq,
    Postgres,
}

impl Kind {
    /// The sources `q` names, in the order the file format lists them.
    fn named_in(q: &RawQueue) -> Vec<Kind> {
        [
            (Kind::Builtin, q.builtin.is_some()),
            (Kind::RedisList, q.redis_list.is_some()),
            (Kind::RedisStream, q.redis_stream.is_some()),
            (Kind::Rabbitmq, q.rabbitmq.is_some()),
            (Kind::Postgres, q.postgres.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, set)| set.then_some(kind))
        .collect()
    }

    /// The key that names it under `trigger.queue`.
    fn key(self) -> &'static str {
        match self {
            Kind::Builtin => "builtin",
            Kind::RedisList => "redis_list",
            Kind::RedisStream => "redis_stream",
            Kind::Rabbitmq => "rabbitmq",
            Kind::Postgres => "postgres",
        }
    }

    /// Whether its messages carry headers a deadline can be read from.
    fn has_headers(self) -> bool {
        matches!(self, Kind::RedisStream | Kind::Rabbitmq)
    }

    /// What its `dead_letter` takes, for the message when it is given else.
    fn dead_letter_wants(self) -> &'static str {
        match self {
            Kind::Builtin => {
                "nothing: builtin dead letters stay in kedge's store (`kedge dlq list`)"
            }
            Kind::RedisList => "`list`",
            Kind::RedisStream => "`stream`",
            Kind::Rabbitmq => "`exchange` (and `routing_key`)",
            Kind::Postgres => "`table`",
        }
    }
}

/// Where `validate`'s problems go, in the order it reports them: a missing
/// or doubled source and a source's URL at once (`now`), every field check
/// after those (`later`, appended when validation ends).
struct Checks<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    now: &'a mut Vec<Problem>,
    later: Vec<Problem>,
}

impl Checks<'_> {
    /// A field problem, reported after the URL problems.
    fn later(&mut self, path: FieldPath, msg: impl Into<String>) {
        self.later.push((path, msg.into()));
    }

    /// `v` at `p` must not be blank.
    fn not_empty(&mut self, v: &str, p: FieldPath) {
        if v.trim().is_empty() {
            self.later(p, "must not be empty");
        }
    }

    /// The duration `v` at `p`, more than 0; `default` when unset or wrong.
    fn duration_or(&mut self, v: &Option<String>, default: Duration, p: FieldPath) -> Duration {
        match v {
            None => default,
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.later(p, "must be more than 0");
                    default
                }
                Err(e) => {
                    self.later(p, e);
                    default
                }
            },
        }
    }

    /// A source's broker URL (at `p`): `url`, or the environment variable
    /// `url_env` names, with one of `schemes`.
    fn url(
        &mut self,
        raw_url: &Option<String>,
        raw_env: &Option<String>,
        p: &FieldPath,
        schemes: &[&str],
    ) -> Option<BrokerUrl> {
        let (text, field) = self.url_text(raw_url, raw_env, p)?;
        let scheme = text.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !schemes.contains(&scheme) {
            let wanted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            self.now.push((
                field,
                format!(
                    "{} is not a URL this source takes ({})",
                    redact(&text),
                    wanted.join(" or ")
                ),
            ));
            return None;
        }
        Some(BrokerUrl::new(&text))
    }

    /// The URL text and the field it came from (`url` or `url_env`).
    fn url_text(
        &mut self,
        raw_url: &Option<String>,
        raw_env: &Option<String>,
        p: &FieldPath,
    ) -> Option<(String, FieldPath)> {
        let (path, msg) = match (raw_url, raw_env) {
            (Some(_), Some(_)) => (p.clone(), "set either `url` or `url_env`, not both".into()),
            (None, None) => (p.clone(), "needs `url` or `url_env`".into()),
            (Some(u), None) => return Some((u.trim().to_string(), p.key("url"))),
            (None, Some(var)) => match (self.env)(var) {
                Some(v) if !v.trim().is_empty() => {
                    return Some((v.trim().to_string(), p.key("url_env")))
                }
                Some(_) => (
                    p.key("url_env"),
                    format!("environment variable {var} is empty"),
                ),
                None => (
                    p.key("url_env"),
                    format!("environment variable {var} is not set"),
                ),
            },
        };
        self.now.push((path, msg));
        None
    }
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
    let named = Kind::named_in(q);
    if named.len() > 1 {
        let keys: Vec<&str> = named.iter().map(|k| k.key()).collect();
        problems.push((
            qp.clone(),
            format!(
                "names {} sources ({}); a job reads from one",
                named.len(),
                keys.join(", ")
            ),
        ));
        return None;
    }
    let kind = named.first().copied();
    let mut c = Checks {
        env,
        now: problems,
        later: Vec::new(),
    };
    let source = validate_source(q, qp, &mut c);
    let deadline = q
        .deadline
        .as_ref()
        .and_then(|d| validate_deadline(d, qp, &mut c));
    if matches!(deadline, Some(DeadlineFrom::Header(_))) && kind.is_some_and(|k| !k.has_headers()) {
        c.later(
            qp.key("deadline").key("header"),
            "this source's messages have no headers; use `json_pointer`",
        );
    }
    let batch = batch.map(|b| validate_batch(b, &root.key("batch"), &mut c));
    let dead_letter =
        dead_letter.and_then(|d| validate_dead_letter(kind, d, &root.key("dead_letter"), &mut c));

    let later = c.later;
    problems.extend(later);
    source.map(|source| QueueTrigger {
        source,
        deadline,
        on_expired: q.on_expired.unwrap_or(OnExpired::DeadLetter),
        batch,
        dead_letter,
    })
}

/// The one source `q` names (at most one, checked before).
fn validate_source(q: &RawQueue, qp: &FieldPath, c: &mut Checks) -> Option<QueueSource> {
    if q.builtin.is_some() {
        Some(QueueSource::Builtin)
    } else if let Some(s) = &q.redis_list {
        validate_redis_list(s, &qp.key("redis_list"), c)
    } else if let Some(s) = &q.redis_stream {
        validate_redis_stream(s, &qp.key("redis_stream"), c)
    } else if let Some(s) = &q.rabbitmq {
        validate_rabbitmq(s, &qp.key("rabbitmq"), c)
    } else if let Some(s) = &q.postgres {
        validate_postgres(s, &qp.key("postgres"), c)
    } else {
        c.now.push((
            qp.clone(),
            "needs a source: builtin, redis_list, redis_stream, rabbitmq or postgres".into(),
        ));
        None
    }
}

/// `trigger.queue.redis_list` (at `p`).
fn validate_redis_list(s: &RawRedisList, p: &FieldPath, c: &mut Checks) -> Option<QueueSource> {
    c.not_empty(&s.list, p.key("list"));
    let lease = c.duration_or(&s.lease, Duration::from_secs(30), p.key("lease"));
    let url = c.url(&s.url, &s.url_env, p, &["redis", "rediss"])?;
    Some(QueueSource::RedisList(RedisListSource {
        url,
        list: s.list.clone(),
        lease,
    }))
}

/// `trigger.queue.redis_stream` (at `p`).
fn validate_redis_stream(s: &RawRedisStream, p: &FieldPath, c: &mut Checks) -> Option<QueueSource> {
    c.not_empty(&s.stream, p.key("stream"));
    let group = s.group.clone().unwrap_or_else(|| "kedge".into());
    c.not_empty(&group, p.key("group"));
    let claim_idle = c.duration_or(&s.claim_idle, Duration::from_secs(60), p.key("claim_idle"));
    let url = c.url(&s.url, &s.url_env, p, &["redis", "rediss"])?;
    Some(QueueSource::RedisStream(RedisStreamSource {
        url,
        stream: s.stream.clone(),
        group,
        claim_idle,
    }))
}

/// `trigger.queue.rabbitmq` (at `p`).
fn validate_rabbitmq(s: &RawRabbitmq, p: &FieldPath, c: &mut Checks) -> Option<QueueSource> {
    c.not_empty(&s.queue, p.key("queue"));
    let prefetch = s.prefetch.unwrap_or(32);
    if prefetch == 0 {
        c.later(
            p.key("prefetch"),
            "must be at least 1 (0 would mean unbounded)",
        );
    }
    let url = c.url(&s.url, &s.url_env, p, &["amqp", "amqps"])?;
    Some(QueueSource::Rabbitmq(RabbitmqSource {
        url,
        queue: s.queue.clone(),
        prefetch,
    }))
}

/// `trigger.queue.postgres` (at `p`): names that are quoted into SQL must
/// be plain identifiers.
fn validate_postgres(s: &RawPostgres, p: &FieldPath, c: &mut Checks) -> Option<QueueSource> {
    check_table_name(&s.table, p.key("table"), c);
    let mut column = |v: &Option<String>, default: &str, field: &str| {
        let v = v.clone().unwrap_or_else(|| default.to_string());
        if !is_sql_name(&v, false) {
            c.later(
                p.key(field),
                format!("{v:?} is not a column name (letters, digits and _)"),
            );
        }
        v
    };
    let id_column = column(&s.id_column, "id", "id_column");
    let payload_column = column(&s.payload_column, "payload", "payload_column");
    let status_column = column(&s.status_column, "status", "status_column");
    let on_claim = s.on_claim.unwrap_or(OnClaim::Delete);
    if on_claim == OnClaim::Delete && s.status_column.is_some() {
        c.later(p.key("status_column"), "only applies with `on_claim: mark`");
    }
    if let Some(ch) = &s.channel {
        if !is_sql_name(ch, false) {
            c.later(
                p.key("channel"),
                format!("{ch:?} is not a channel name (letters, digits and _)"),
            );
        }
    }
    let poll_interval = c.duration_or(
        &s.poll_interval,
        Duration::from_secs(5),
        p.key("poll_interval"),
    );
    let url = c.url(&s.url, &s.url_env, p, &["postgres", "postgresql"])?;
    Some(QueueSource::Postgres(PostgresSource {
        url,
        table: s.table.clone(),
        id_column,
        payload_column,
        on_claim,
        status_column,
        channel: s.channel.clone(),
        poll_interval,
    }))
}

/// A Postgres table name (at `p`), optionally schema-qualified.
fn check_table_name(table: &str, p: FieldPath, c: &mut Checks) {
    if !is_sql_name(table, true) {
        c.later(
            p,
            format!(
                "{table:?} is not a table name (letters, digits and _, optionally schema.table)"
            ),
        );
    }
}

/// `trigger.queue.deadline`: exactly one of `json_pointer` or `header`.
fn validate_deadline(d: &RawDeadlineFrom, qp: &FieldPath, c: &mut Checks) -> Option<DeadlineFrom> {
    let p = qp.key("deadline");
    match (&d.json_pointer, &d.header) {
        (Some(ptr), None) => {
            if !(ptr.is_empty() || ptr.starts_with('/')) {
                c.later(
                    p.key("json_pointer"),
                    format!("{ptr:?} is not a JSON pointer (it starts with /)"),
                );
            }
            Some(DeadlineFrom::JsonPointer(ptr.clone()))
        }
        (None, Some(h)) if !h.trim().is_empty() => Some(DeadlineFrom::Header(h.clone())),
        (None, Some(_)) => {
            c.later(p.key("header"), "must not be empty");
            None
        }
        _ => {
            c.later(p, "set exactly one of `json_pointer` or `header`");
            None
        }
    }
}

/// `batch` (at `p`): 1-1000 messages, waiting more than 0 for them.
fn validate_batch(b: &RawBatch, p: &FieldPath, c: &mut Checks) -> Batch {
    if !(1..=1000).contains(&b.max_messages) {
        c.later(
            p.key("max_messages"),
            format!("{} is out of range 1-1000", b.max_messages),
        );
    }
    let max_wait = c.duration_or(&b.max_wait, Duration::from_secs(1), p.key("max_wait"));
    Batch {
        max_messages: b.max_messages.clamp(1, 1000),
        max_wait,
    }
}

/// `dead_letter` (at `p`): the one target the `kind` source takes. `None`
/// for no source (already reported).
fn validate_dead_letter(
    kind: Option<Kind>,
    d: &RawDeadLetter,
    p: &FieldPath,
    c: &mut Checks,
) -> Option<DeadLetterTarget> {
    // One row per source: the field it takes; every other field unset.
    let RawDeadLetter {
        list,
        stream,
        exchange,
        routing_key,
        table,
    } = d;
    let target = match (kind?, list, stream, exchange, routing_key, table) {
        (Kind::RedisList, Some(l), None, None, None, None) => {
            Some(DeadLetterTarget::RedisList(l.clone()))
        }
        (Kind::RedisStream, None, Some(s), None, None, None) => {
            Some(DeadLetterTarget::RedisStream(s.clone()))
        }
        (Kind::Rabbitmq, None, None, Some(e), routing_key, None) => {
            Some(DeadLetterTarget::Rabbitmq {
                exchange: e.clone(),
                routing_key: routing_key.clone().unwrap_or_default(),
            })
        }
        (Kind::Postgres, None, None, None, None, Some(t)) => {
            check_table_name(t, p.key("table"), c);
            Some(DeadLetterTarget::Postgres(t.clone()))
        }
        (kind, ..) => {
            c.later(
                p.clone(),
                format!("for this source takes {}", kind.dead_letter_wants()),
            );
            None
        }
    };
    if let Some(DeadLetterTarget::RedisList(n) | DeadLetterTarget::RedisStream(n)) = &target {
        if n.trim().is_empty() {
            c.later(p.clone(), "names an empty key");
        }
    }
    target
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
