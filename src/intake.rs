//! Intake: every way work enters kedge ends here, as a durable work item and
//! its first pending run, written before anyone is told "accepted".
//!
//! - builtin queue messages (`kedge enqueue`), checked against the job's
//!   payload policy first: a bad payload is refused with the reason, never
//!   stored half-valid;
//! - manual triggers (`kedge trigger`);
//! - cron fires (from [`crate::triggers::scheduler`]), recorded together
//!   with their work item so a restart neither repeats nor drops one;
//! - broker messages ([`consume`] drives one [`Source`] per queue job):
//!   stored first, settled with the broker after. A message that cannot be
//!   run (not UTF-8, not JSON where the job takes JSON, too large, a bad or
//!   passed deadline) is stored as a dead letter with that reason and
//!   settled too: it never crashes the loop and never blocks the queue.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::job::{PayloadFormat, PayloadPolicy, Trigger};
use crate::config::queue::{DeadlineFrom, OnExpired, QueueTrigger};
use crate::config::Job;
use crate::health::Health;
use crate::lifecycle::{run_name, RunKey, TriggerKind};
use crate::sources::{AnySource, Delivery, Outbox, Source, SourceError};
use crate::store::{Intake, NewWorkItem, Store, StoreError};
use crate::triggers::TriggerContext;

/// Why a message was refused. None of these is worth retrying as is.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("payload is not UTF-8 text (byte {valid_up_to} is the first that is not)")]
    NotUtf8 { valid_up_to: usize },
    #[error("payload is not JSON, and job {job} takes JSON (payload.format: json): {source}")]
    NotJson {
        job: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("payload is {size} bytes, over job {job}'s payload.max_bytes of {max}")]
    TooLarge { job: String, size: usize, max: u64 },
    /// The message's own deadline cannot be read.
    #[error("{0}")]
    BadDeadline(String),
    /// The job is triggered by cron: it takes no messages.
    #[error("job {job} is triggered by cron and takes no messages")]
    TakesNoMessages { job: String },
    /// The job's broker did not take the message; it may be retried.
    #[error("cannot publish to {to}")]
    Publish {
        to: String,
        #[source]
        cause: SourceError,
    },
    /// The store failed; the message was not accepted and may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of offering a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored as a new work item; its first run has this id.
    New { run_id: String },
    /// A message with this id was already stored: nothing written.
    Duplicate,
}

/// Checks `data` against the job's payload policy; returns it as text.
pub fn check_payload(
    job: &str,
    policy: &PayloadPolicy,
    data: &[u8],
) -> Result<String, IntakeError> {
    if data.len() as u64 > policy.max_bytes {
        return Err(IntakeError::TooLarge {
            job: job.to_string(),
            size: data.len(),
            max: policy.max_bytes,
        });
    }
    let text = std::str::from_utf8(data).map_err(|e| IntakeError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    if policy.format == PayloadFormat::Json {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|source| {
            IntakeError::NotJson {
                job: job.to_string(),
                source,
            }
        })?;
    }
    Ok(text.to_string())
}

/// Why a message is dead-lettered at intake: the dead letter's `reason`.
impl IntakeError {
    pub fn reason(&self) -> &'static str {
        match self {
            IntakeError::NotUtf8 { .. } => "not_utf8",
            IntakeError::NotJson { .. } => "not_json",
            IntakeError::TooLarge { .. } => "too_large",
            IntakeError::BadDeadline(_) => "bad_deadline",
            IntakeError::TakesNoMessages { .. } => "takes_no_messages",
            IntakeError::Publish { .. } => "publish",
            IntakeError::Store(_) => "store",
        }
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Stored as a new work item (or a replayed one revived).
    Stored,
    /// Stored before: a redelivery, nothing written.
    Duplicate,
    /// Refused and stored as a dead letter with this reason.
    Rejected(String),
}

/// The deadline a message carries, read as `from` says: RFC 3339 text, or
/// a number of Unix milliseconds. `Ok(None)` when the message has none.
pub fn message_deadline(
    from: &DeadlineFrom,
    payload: &str,
    headers: &[(String, String)],
) -> Result<Option<DateTime<Utc>>, String> {
    let value: Option<serde_json::Value> = match from {
        DeadlineFrom::JsonPointer(ptr) => {
            match serde_json::from_str::<serde_json::Value>(payload) {
                Ok(v) => v.pointer(ptr).cloned(),
                Err(_) => return Err(format!("the payload is not JSON, so it has no {ptr}")),
            }
        }
        DeadlineFrom::Header(h) => headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(h))
            .map(|(_, v)| serde_json::Value::String(v.clone())),
    };
    let what = match from {
        DeadlineFrom::JsonPointer(p) => format!("deadline at {p}"),
        DeadlineFrom::Header(h) => format!("deadline header {h}"),
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .map(Some)
            .ok_or_else(|| format!("{what}: {n} is not Unix milliseconds")),
        Some(serde_json::Value::String(t)) => {
            if let Ok(ms) = t.trim().parse::<i64>() {
                return DateTime::from_timestamp_millis(ms)
                    .map(Some)
                    .ok_or_else(|| format!("{what}: {t} is not Unix milliseconds"));
            }
            DateTime::parse_from_rfc3339(t.trim())
                .map(|d| Some(d.with_timezone(&Utc)))
                .map_err(|e| format!("{what}: {t:?} is not an RFC 3339 time ({e})"))
        }
        Some(other) => Err(format!(
            "{what}: {other} is neither RFC 3339 text nor Unix milliseconds"
        )),
    }
}

/// What intake makes of one broker delivery for `job` (whose trigger is
/// `queue`): the work item, and whether it runs, waits for a batch, or is
/// refused with a reason. Pure.
pub fn prepare(
    job: &Job,
    queue: &QueueTrigger,
    source: &str,
    d: &Delivery,
    now: DateTime<Utc>,
) -> (NewWorkItem, Intake) {
    let mut item = NewWorkItem {
        job: job.name.clone(),
        source: source.to_string(),
        run_id: run_name(&job.name, RunKey::Message(&d.message_id), 1),
        message_id: d.message_id.clone(),
        payload: None,
        deadline_ms: None,
        trigger: TriggerKind::Queue,
        scheduled_ms: now.timestamp_millis(),
    };
    let refuse = |item: &mut NewWorkItem, reason: &str, error: String| {
        // Keep the payload as it came: text as is, other bytes base64 —
        // and text that itself starts with `base64:` too, so that a replay
        // reads every `base64:` letter of this kind back unambiguously.
        item.payload = Some(match std::str::from_utf8(&d.body) {
            Ok(t) if !t.starts_with(crate::finalizer::replay::BASE64_PREFIX) => t.to_string(),
            _ => {
                use base64::Engine;
                format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(&d.body)
                )
            }
        });
        (reason.to_string(), error)
    };
    let refused = match check_payload(&job.name, &job.payload, &d.body) {
        Err(e) => Some(refuse(&mut item, e.reason(), e.to_string())),
        Ok(payload) => {
            let deadline = match &queue.deadline {
                None => Ok(None),
                Some(from) => message_deadline(from, &payload, &d.headers),
            };
            item.payload = Some(payload);
            match deadline {
                Err(why) => Some(("bad_deadline".to_string(), why)),
                Ok(Some(t)) if t <= now && queue.on_expired == OnExpired::DeadLetter => {
                    item.deadline_ms = Some(t.timestamp_millis());
                    Some((
                        "expired".to_string(),
                        format!(
                            "the message's deadline {} had passed when it arrived",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        ),
                    ))
                }
                Ok(t) => {
                    item.deadline_ms = t
                        .or_else(|| job.deadline_after(now))
                        .map(|t| t.timestamp_millis());
                    None
                }
            }
        }
    };
    let how = match refused {
        Some((reason, error)) => Intake::Dead { reason, error },
        None if queue.batch.is_some() => Intake::AwaitBatch,
        None => Intake::Run,
    };
    (item, how)
}

/// Stores one broker delivery for `job` (whose trigger is `queue`), or its
/// dead letter when it cannot run. Only a store error is an `Err`: then
/// nothing was written and the delivery must not be settled.
pub async fn offer(
    store: &Store,
    job: &Job,
    queue: &QueueTrigger,
    source: &str,
    d: &Delivery,
    now: DateTime<Utc>,
) -> Result<Offered, StoreError> {
    Ok(
        offer_all(store, job, queue, source, std::slice::from_ref(d), now)
            .await?
            .remove(0),
    )
}

/// [`offer`] for every delivery of one claim, stored in one transaction.
pub async fn offer_all(
    store: &Store,
    job: &Job,
    queue: &QueueTrigger,
    source: &str,
    deliveries: &[Delivery],
    now: DateTime<Utc>,
) -> Result<Vec<Offered>, StoreError> {
    let prepared: Vec<(NewWorkItem, Intake)> = deliveries
        .iter()
        .map(|d| prepare(job, queue, source, d, now))
        .collect();
    let written = store.intake_many(&prepared).await?;
    Ok(prepared
        .into_iter()
        .zip(written)
        .map(|((item, how), new)| match (how, new) {
            (_, false) => Offered::Duplicate,
            (Intake::Dead { reason, error }, true) => {
                tracing::warn!(job = %job.name, message = %item.message_id, %reason, %error, "message dead-lettered at intake");
                Offered::Rejected(reason)
            }
            (_, true) => Offered::Stored,
        })
        .collect())
}

/// The wait before reconnect number `n` (1-based): 200 ms doubling to at
/// most 30 s, with "equal jitter" (half fixed, half random) so many
/// daemons do not reconnect in step.
pub fn reconnect_backoff(n: u32) -> Duration {
    let cap = Duration::from_millis(200)
        .saturating_mul(1u32 << n.saturating_sub(1).min(8))
        .min(Duration::from_secs(30));
    let half = cap / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Drives `source` for `job` until `shutdown`: claim, store, settle,
/// wake the dispatcher; on a broker error, mark the source degraded,
/// back off and reconnect.
///
/// # Guarantees
///
/// A delivery is settled only after [`offer`] stored it (or its dead
/// letter). A store error stops settling: the deliveries stay claimed and
/// the store is retried with backoff; on shutdown meanwhile they are left
/// to the broker's redelivery. A settle error loses nothing either: the
/// broker hands the messages out again and [`offer`] sees duplicates.
/// How often [`consume`] asks the broker for its backlog, and how long it
/// waits for the answer.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the broker how many messages wait (`kedge_source_backlog`), at most
/// [`BACKLOG_TIMEOUT`]. A failed or slow answer keeps the last value (it
/// is not 0) and is logged at debug: the claim that follows finds out
/// whether the broker is really gone.
async fn measure_backlog<S: Source>(
    source: &mut S,
    job: &str,
    name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    let looked = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(BACKLOG_TIMEOUT, source.backlog()) => r,
    };
    match looked {
        Ok(Ok(Some(waiting))) => crate::metrics::source_backlog(job, waiting),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%job, source = %name, error = %crate::error_chain(&e), "cannot measure the backlog; kedge_source_backlog keeps its last value")
        }
        Err(_) => {
            tracing::debug!(%job, source = %name, timeout = ?BACKLOG_TIMEOUT, "no answer measuring the backlog; kedge_source_backlog keeps its last value")
        }
    }
}

pub async fn consume<S: Source>(mut source: S, job: Arc<Job>, health: Health, ctx: TriggerContext) {
    let TriggerContext {
        store,
        wake,
        shutdown,
        clock,
        ..
    } = ctx;
    let Trigger::Queue(queue) = &job.trigger else {
        return;
    };
    let name = queue.source.name();
    health.register(&job.name, &name);
    let max = queue.batch.map_or(64, |b| b.max_messages as usize).max(1);
    let mut failures: u32 = 0;
    let mut connected = false;
    let mut next_backlog = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        if !connected {
            let r = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = source.connect() => r,
            };
            match r {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(job = %job.name, source = %name, "queue source reconnected");
                    }
                    failures = 0;
                    connected = true;
                    health.up(&job.name);
                }
                Err(e) => {
                    failures += 1;
                    let wait = reconnect_backoff(failures);
                    let error = crate::error_chain(&e);
                    tracing::warn!(job = %job.name, source = %name, %error, retry_in = ?wait, "queue source unavailable");
                    health.degraded(&job.name, &error);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= next_backlog {
            measure_backlog(&mut source, &job.name, &name, &shutdown).await;
            next_backlog = tokio::time::Instant::now() + BACKLOG_EVERY;
        }
        let claimed = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = source.claim(max, Duration::from_secs(1)) => r,
        };
        let deliveries = match claimed {
            Ok(d) => d,
            Err(e) => {
                connected = false;
                failures += 1;
                let error = crate::error_chain(&e);
                tracing::warn!(job = %job.name, source = %name, %error, "lost the queue source; reconnecting");
                health.degraded(&job.name, &error);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(reconnect_backoff(failures)) => continue,
                }
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        let Some(offered) =
            offer_until_stored(&store, &job, queue, &name, &deliveries, &clock, &shutdown).await
        else {
            return;
        };
        let (mut stored, mut dups, mut rejected) = (0u64, 0u64, 0u64);
        for o in offered {
            match o {
                Offered::Stored => stored += 1,
                Offered::Duplicate => dups += 1,
                Offered::Rejected(_) => rejected += 1,
            }
        }
        health.count(&job.name, deliveries.len() as u64, stored, dups, rejected);
        if stored > 0 {
            wake.notify_one();
        }
        if let Err(e) = source.settle(&deliveries).await {
            connected = false;
            failures += 1;
            let error = crate::error_chain(&e);
            tracing::warn!(job = %job.name, source = %name, %error, "cannot settle stored messages; they will be redelivered and recognised");
            health.degraded(&job.name, &error);
        }
    }
}

/// [`offer_all`] until the store takes the deliveries, backing off between
/// tries; `None` if shut down meanwhile (they stay claimed, for the
/// broker to redeliver).
async fn offer_until_stored(
    store: &Store,
    job: &Job,
    queue: &QueueTrigger,
    source: &str,
    deliveries: &[Delivery],
    clock: &crate::clock::Clock,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Vec<Offered>> {
    let mut failures = 0u32;
    let claimed = clock.now_ms();
    loop {
        match offer_all(store, job, queue, source, deliveries, clock.now()).await {
            Ok(o) => {
                trace_intake(job, source, deliveries, &o, claimed, clock.now_ms());
                return Some(o);
            }
            Err(e) => {
                failures += 1;
                let wait = reconnect_backoff(failures);
                tracing::error!(job = %job.name, error = %crate::error_chain(&e), retry_in = ?wait, "cannot store messages; they stay claimed");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The `kedge.intake` span of each stored or refused message (duplicates
/// were traced when first stored).
fn trace_intake(
    job: &Job,
    source: &str,
    deliveries: &[Delivery],
    offered: &[Offered],
    claimed_ms: i64,
    stored_ms: i64,
) {
    if !crate::telemetry::enabled() {
        return;
    }
    for (d, o) in deliveries.iter().zip(offered) {
        let (outcome, error) = match o {
            Offered::Stored => ("stored", None),
            Offered::Duplicate => continue,
            Offered::Rejected(reason) => ("dead_lettered", Some(reason.clone())),
        };
        crate::telemetry::span(crate::telemetry::Stage {
            name: "kedge.intake",
            job: &job.name,
            message_id: &d.message_id,
            start_ms: claimed_ms,
            end_ms: stored_ms,
            attributes: vec![
                opentelemetry::KeyValue::new("kedge.source", source.to_string()),
                opentelemetry::KeyValue::new("kedge.outcome", outcome),
            ],
            error,
        });
    }
}

/// Stores a builtin-queue message for `job`. `message_id` defaults to a
/// fresh id (every enqueue is a new message); give one to make retries of
/// the same enqueue idempotent.
pub async fn enqueue(
    store: &Store,
    job: &Job,
    data: &[u8],
    message_id: Option<String>,
    deadline: Option<DateTime<Utc>>,
) -> Result<Accepted, IntakeError> {
    let payload = check_payload(&job.name, &job.payload, data)?;
    let message_id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let now = store.clock().now();
    // The message's own deadline (`trigger.queue.deadline`), if it has one.
    let own = match &job.trigger {
        Trigger::Queue(QueueTrigger {
            deadline: Some(from),
            ..
        }) => message_deadline(from, &payload, &[]).map_err(IntakeError::BadDeadline)?,
        _ => None,
    };
    let deadline = deadline.or(own).or_else(|| job.deadline_after(now));
    let item = NewWorkItem {
        job: job.name.clone(),
        source: "builtin".into(),
        run_id: run_name(&job.name, RunKey::Message(&message_id), 1),
        message_id,
        payload: Some(payload),
        deadline_ms: deadline.map(|d| d.timestamp_millis()),
        trigger: TriggerKind::Queue,
        scheduled_ms: now.timestamp_millis(),
    };
    if matches!(&job.trigger, Trigger::Queue(q) if q.batch.is_some()) {
        // A batching job's message waits for its batch run.
        return Ok(if store.insert_batch_item(&item).await? {
            Accepted::New {
                run_id: "(in the next batch)".into(),
            }
        } else {
            Accepted::Duplicate
        });
    }
    store_item(store, &item).await
}

/// Starts a run of `job` now, outside its schedule.
pub async fn trigger(store: &Store, job: &Job) -> Result<Accepted, IntakeError> {
    let message_id = format!("manual-{}", uuid::Uuid::new_v4());
    let now = store.clock().now();
    let item = NewWorkItem {
        job: job.name.clone(),
        source: "manual".into(),
        run_id: run_name(&job.name, RunKey::Message(&message_id), 1),
        message_id,
        payload: None,
        deadline_ms: job.deadline_after(now).map(|d| d.timestamp_millis()),
        trigger: TriggerKind::Manual,
        scheduled_ms: now.timestamp_millis(),
    };
    store_item(store, &item).await
}

async fn store_item(store: &Store, item: &NewWorkItem) -> Result<Accepted, IntakeError> {
    if store.insert_work_item(item).await? {
        Ok(Accepted::New {
            run_id: item.run_id.clone(),
        })
    } else {
        Ok(Accepted::Duplicate)
    }
}

// ----- messages given by hand: `kedge enqueue`, the HTTP API --------------

/// Where a message given to kedge for a queue job goes.
pub enum Destination {
    /// The job reads a broker (redis_list, redis_stream, rabbitmq,
    /// postgres): the message is published there and the daemon claims it
    /// like any producer's.
    Broker(Box<Broker>),
    /// The job reads the builtin queue: the message is stored ([`enqueue`]).
    Store,
}

/// A queue job's broker, as a producer sees it.
pub struct Broker {
    outbox: AnySource,
    /// The source's name (`redis_list:LIST`, `rabbitmq:QUEUE`, …).
    pub name: String,
}

impl Broker {
    /// Publishes a message for `job` (checked against its payload policy
    /// first) as `message_id`, a fresh id by default.
    pub async fn publish(
        &mut self,
        job: &Job,
        data: &[u8],
        message_id: Option<String>,
    ) -> Result<(), IntakeError> {
        check_payload(&job.name, &job.payload, data)?;
        let id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.outbox
            .replay(&id, data)
            .await
            .map_err(|cause| IntakeError::Publish {
                to: self.name.clone(),
                cause,
            })
    }
}

/// What became of a submitted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Published to the job's broker, this source.
    Published { to: String },
    /// Stored in kedge's store (the builtin queue).
    Stored(Accepted),
}

/// Where a message for `job` goes; `producer` names the publisher to a
/// broker (its consumer name there). A cron job takes no messages.
pub fn destination(job: &Job, producer: &str) -> Result<Destination, IntakeError> {
    let Trigger::Queue(q) = &job.trigger else {
        return Err(IntakeError::TakesNoMessages {
            job: job.name.clone(),
        });
    };
    Ok(match AnySource::new(&q.source, producer) {
        Some(outbox) => Destination::Broker(Box::new(Broker {
            outbox,
            name: q.source.name(),
        })),
        None => Destination::Store,
    })
}

/// Takes a message for `job` as `message_id` (a fresh id by default): a
/// broker job's is published to its broker, a builtin-queue job's stored
/// ([`enqueue`]). `producer` names the publisher to the broker.
pub async fn submit(
    store: &Store,
    job: &Job,
    data: &[u8],
    message_id: Option<String>,
    producer: &str,
) -> Result<Submitted, IntakeError> {
    match destination(job, producer)? {
        Destination::Broker(mut broker) => {
            broker.publish(job, data, message_id).await?;
            Ok(Submitted::Published { to: broker.name })
        }
        Destination::Store => Ok(Submitted::Stored(
            enqueue(store, job, data, message_id, None).await?,
        )),
    }
}

/// The work item of a cron fire of `job` at `fire`. Its `deadline` comes
/// from the job's window counted from the fire ([`Job::deadline_after`]),
/// not from when kedge got to it, so a late catch-up keeps the real deadline.
pub fn cron_work_item(
    job: &str,
    fire: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> NewWorkItem {
    let fire_ms = fire.timestamp_millis();
    NewWorkItem {
        job: job.to_string(),
        source: "cron".into(),
        message_id: fire_ms.to_string(),
        run_id: run_name(job, RunKey::CronFire(fire.timestamp()), 1),
        payload: None,
        deadline_ms: deadline.map(|d| d.timestamp_millis()),
        trigger: TriggerKind::Cron,
        scheduled_ms: fire_ms,
    }
}

/// This daemon's name among a source's consumers: host, store instance
/// and a per-process suffix, so a restarted daemon is a new consumer and
/// recovers what the dead one left claimed.
pub async fn consumer_name(store: &Store) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kedge".into());
    // Without the store's id the name is still unique to this process (the
    // random suffix below); the id only makes it easier to read.
    let instance = match store.instance_id().await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the store's instance id; the consumer name goes without it");
            String::new()
        }
    };
    let short: String = instance
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    let process = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{short}-{}", &process[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks_name_the_problem() {
        let json = PayloadPolicy {
            format: PayloadFormat::Json,
            max_bytes: 10,
        };
        assert_eq!(
            check_payload("j", &json, b"{\"a\":1}").unwrap(),
            "{\"a\":1}"
        );
        let e = check_payload("j", &json, b"{oops").unwrap_err().to_string();
        assert!(
            e.starts_with("payload is not JSON, and job j takes JSON"),
            "{e}"
        );
        let e = check_payload("j", &json, b"[1,2,3,4,5,6]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "payload is 13 bytes, over job j's payload.max_bytes of 10"
        );
        let text = PayloadPolicy {
            format: PayloadFormat::Text,
            max_bytes: 10,
        };
        assert_eq!(check_payload("j", &text, b"plain").unwrap(), "plain");
        let e = check_payload("j", &text, b"ab\xffc")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "payload is not UTF-8 text (byte 2 is the first that is not)"
        );
    }

    async fn setup(queue_extra: &[&str]) -> (Store, Job, QueueTrigger) {
        let job = crate::testing::queue_job("q", queue_extra);
        let Trigger::Queue(q) = job.trigger.clone() else {
            panic!("a queue job")
        };
        (crate::testing::store().await, job, q)
    }

    fn delivery(id: &str, body: &[u8]) -> Delivery {
        Delivery {
            message_id: id.into(),
            body: body.to_vec(),
            headers: Vec::new(),
            redelivered: false,
            receipt: crate::sources::Receipt::RedisList {
                processing: "p".into(),
            },
        }
    }

    #[test]
    fn a_refused_text_that_looks_encoded_is_kept_base64_too() {
        let job = crate::testing::queue_job("q", &[]);
        let Trigger::Queue(q) = &job.trigger else {
            panic!("a queue job")
        };
        let (item, _) = prepare(&job, q, "src", &delivery("m", b"base64:hi"), Utc::now());
        let stored = item.payload.unwrap();
        assert_eq!(stored, "base64:YmFzZTY0Omhp");
        // Replayed, it is the text that came, not the bytes "hi" decodes to.
        assert_eq!(
            crate::finalizer::replay::payload_bytes("d", Some(&stored)).unwrap(),
            b"base64:hi"
        );
    }

    #[tokio::test]
    async fn bad_messages_become_dead_letters_with_their_reason() {
        let (store, job, q) = setup(&["    deadline: { json_pointer: /deadline }"]).await;
        let now = Utc::now();
        let offer = |id: &'static str, body: &'static [u8]| {
            let (store, job, q) = (store.clone(), job.clone(), q.clone());
            async move {
                offer(&store, &job, &q, "src", &delivery(id, body), now)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(offer("ok", b"{\"a\":1}").await, Offered::Stored);
        assert_eq!(offer("ok", b"{\"a\":1}").await, Offered::Duplicate);
        assert_eq!(
            offer("bin", b"\xff\xfe").await,
            Offered::Rejected("not_utf8".into())
        );
        assert_eq!(
            offer("txt", b"hello").await,
            Offered::Rejected("not_json".into())
        );
        assert_eq!(
            offer("big", &[b' '; 100]).await,
            Offered::Rejected("too_large".into())
        );
        assert_eq!(
            offer("late", b"{\"deadline\":\"2000-01-01T00:00:00Z\"}").await,
            Offered::Rejected("expired".into())
        );
        assert_eq!(
            offer("odd", b"{\"deadline\":\"next tuesday\"}").await,
            Offered::Rejected("bad_deadline".into())
        );
        assert_eq!(
            offer("soon", b"{\"deadline\":4102444800000}").await,
            Offered::Stored
        );
        // A redelivered poison message is not dead-lettered twice.
        assert_eq!(offer("txt", b"hello").await, Offered::Duplicate);

        let dead = store.dead_letters(None, false, 100).await.unwrap();
        let mut reasons: Vec<(String, String)> = dead
            .iter()
            .map(|d| (d.message_id.clone(), d.reason.clone()))
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                ("big", "too_large"),
                ("bin", "not_utf8"),
                ("late", "expired"),
                ("odd", "bad_deadline"),
                ("txt", "not_json"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // Nothing is lost: the non-UTF-8 body is kept, base64.
        let bin = dead.iter().find(|d| d.message_id == "bin").unwrap();
        assert_eq!(bin.payload.as_deref(), Some("base64://4="));
        // The stored message carries its own deadline.
        let runs = store.list_runs(Some("q"), None, 10).await.unwrap();
        let soon = runs.iter().find(|r| r.message_id == "soon").unwrap();
        assert_eq!(soon.deadline_ms, Some(4102444800000));
    }

    #[tokio::test]
    async fn a_builtin_queue_message_is_stored() {
        let (store, job, _) = setup(&[]).await;
        let submit = |data: &'static [u8]| {
            let (store, job) = (store.clone(), job.clone());
            async move { submit(&store, &job, data, Some("m1".into()), "test").await }
        };
        let Submitted::Stored(Accepted::New { run_id }) = submit(b"{}").await.unwrap() else {
            panic!("not stored")
        };
        let runs = store.list_runs(Some("q"), None, 10).await.unwrap();
        assert_eq!(runs[0].run_id, run_id);
        assert_eq!(
            submit(b"{}").await.unwrap(),
            Submitted::Stored(Accepted::Duplicate)
        );
    }

    #[tokio::test]
    async fn a_broker_message_is_checked_then_published_to_its_broker() {
        let job = crate::testing::job_with_trigger(
            "b",
            &[
                "  queue:",
                "    redis_list: { url: \"redis://127.0.0.1:1/\", list: jobs }",
            ],
        );
        let Destination::Broker(mut broker) = destination(&job, "test").unwrap() else {
            panic!("not a broker")
        };
        assert_eq!(broker.name, "redis_list:jobs");
        // The payload policy holds before any connection is tried.
        let e = broker.publish(&job, b"{oops", None).await.unwrap_err();
        assert_eq!(e.reason(), "not_json");
        // Nothing listens on port 1: the broker's error, with its name.
        let e = broker.publish(&job, b"{}", None).await.unwrap_err();
        assert!(
            matches!(&e, IntakeError::Publish { to, .. } if to == "redis_list:jobs"),
            "{e:?}"
        );
    }

    #[test]
    fn a_cron_job_takes_no_messages() {
        let job = crate::testing::job_with_trigger("c", &["  cron: \"0 * * * *\""]);
        let Err(e) = destination(&job, "test") else {
            panic!("a destination for a cron job")
        };
        assert_eq!(
            e.to_string(),
            "job c is triggered by cron and takes no messages"
        );
    }

    #[test]
    fn deadlines_read_rfc3339_or_unix_millis_from_json_or_headers() {
        let ptr = DeadlineFrom::JsonPointer("/d".into());
        let t = |s: &str| message_deadline(&ptr, s, &[]);
        assert_eq!(
            t("{\"d\":\"2026-11-23T10:00:00+01:00\"}")
                .unwrap()
                .unwrap()
                .to_rfc3339(),
            "2026-11-23T09:00:00+00:00"
        );
        assert_eq!(t("{\"d\":1000}").unwrap().unwrap().timestamp_millis(), 1000);
        assert_eq!(t("{\"e\":1}").unwrap(), None);
        assert!(t("{\"d\":true}").unwrap_err().contains("deadline at /d"));
        let h = DeadlineFrom::Header("X-Deadline".into());
        let got = message_deadline(&h, "", &[("x-deadline".into(), "2000".into())]).unwrap();
        assert_eq!(got.unwrap().timestamp_millis(), 2000);
    }

    #[test]
    fn reconnect_backoff_grows_to_a_cap_with_jitter() {
        for n in 1..20 {
            let d = reconnect_backoff(n);
            let cap = Duration::from_millis(200)
                .saturating_mul(1 << (n - 1).min(8))
                .min(Duration::from_secs(30));
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {n}: {d:?} vs cap {cap:?}"
            );
        }
    }
}
