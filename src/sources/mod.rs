//! Queue sources: where a queue job's messages come from, one module per
//! broker behind the small [`Source`] trait (claim, settle), the way
//! Vector keeps `src/sources/<name>/`.
//!
//! # Expected flow
//!
//! [`crate::intake::consume`] drives one source per queue job:
//!
//! 1. [`Source::connect`] — (re)connect and recover what a dead consumer
//!    left claimed (Redis processing lists, stream entries pending with a
//!    consumer that is gone);
//! 2. [`Source::claim`] — wait (event-driven: `BLMOVE`, `XREADGROUP BLOCK`,
//!    an AMQP consumer, `LISTEN`) for up to `max` messages and claim them
//!    with the broker's reliable primitive, never a destructive pop;
//! 3. intake stores each as a work item (unique per source and message id);
//! 4. [`Source::settle`] — only then tell the broker they are taken (remove
//!    from the processing list, `XACK`, `basic.ack`, `DELETE`/`UPDATE` and
//!    commit).
//!
//! # Guarantees
//!
//! A crash anywhere between 2 and 4 leaves the message claimed but not
//! settled; the broker (or the next [`Source::connect`]) hands it out
//! again and intake sees it is stored already, so it becomes exactly one
//! work item. A message is never held unsettled for the life of a Job:
//! settling happens as soon as the work item is stored.
//!
//! # Errors
//!
//! Every [`SourceError`] means the same thing to the caller: drop the
//! connection, wait (capped exponential backoff with jitter), call
//! [`Source::connect`] again. Errors and logs show URLs redacted.
//!
//! Dead letters and replays go the other way, through [`Outbox`]: a dead
//! letter is first written to kedge's store, then published to the source's
//! dead-letter target by the daemon's forwarder, so a broker outage delays
//! it but never loses it.

use std::future::Future;
use std::time::Duration;

use crate::config::queue::{DeadLetterTarget, QueueSource};

pub mod postgres;
pub mod rabbitmq;
pub mod redis_list;
pub mod redis_stream;

/// A boxed error from a broker client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A broker could not be reached or refused an operation. The caller
/// reconnects after a backoff; nothing claimed and unsettled is lost.
#[derive(Debug, thiserror::Error)]
#[error("{what} ({url}): {source}")]
pub struct SourceError {
    /// What was being done: "connecting", "claiming", "settling", ….
    pub what: String,
    /// The broker URL, password masked.
    pub url: String,
    #[source]
    pub source: BoxError,
}

impl SourceError {
    pub fn new(what: impl Into<String>, url: &str, source: impl Into<BoxError>) -> Self {
        SourceError {
            what: what.into(),
            url: url.to_string(),
            source: source.into(),
        }
    }
}

/// One message claimed from a broker and not yet settled.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The broker's own id (stream entry id, AMQP `message_id`, row key),
    /// or `sha256:<hex of the body>` when the message has none.
    pub message_id: String,
    pub body: Vec<u8>,
    /// Headers (AMQP headers as text, Redis stream fields other than the
    /// body field). Empty for sources without headers.
    pub headers: Vec<(String, String)>,
    /// The broker says it handed this out before (AMQP `redelivered`, a
    /// reclaimed stream entry, a recovered processing list entry).
    pub redelivered: bool,
    /// What [`Source::settle`] needs to find the message again; each
    /// source reads only its own variant.
    pub receipt: Receipt,
}

/// Per-source settle handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// The processing list holding the element (removed with `LREM`).
    RedisList { processing: String },
    /// The stream entry id (`XACK`).
    RedisStream { id: String },
    /// The AMQP delivery tag on the current channel.
    Rabbitmq { delivery_tag: u64 },
    /// The row's id column, as text, in the open claim transaction.
    Postgres { key: String },
}

/// `sha256:<hex>` of `body`: the message id of a message without one.
pub fn body_id(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A broker's reliable claim: what every queue source does, and nothing
/// else. `Send` futures so a source can run in its own task.
pub trait Source: Send {
    /// Connects (again) and recovers messages a dead consumer left
    /// claimed, so they are handed out by later [`Source::claim`]s.
    fn connect(&mut self) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Waits up to `wait` for a first message, then claims up to `max`
    /// without waiting further. An empty result means nothing arrived.
    /// Cancel-safe in the sense that matters: a claim interrupted half way
    /// leaves the message claimed, to be recovered, never dropped.
    fn claim(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, SourceError>> + Send;

    /// Tells the broker these deliveries are stored in kedge and must not
    /// be handed out again. Called with every delivery of the last claim.
    fn settle(&mut self, done: &[Delivery])
        -> impl Future<Output = Result<(), SourceError>> + Send;

    /// How many messages wait in the broker for this source, as far as the
    /// broker can tell (`kedge_source_backlog`): `None` where it cannot. A
    /// failed look is an error, never 0. Asked now and then between claims,
    /// on the claiming connection; it must not claim or settle anything.
    fn backlog(&mut self) -> impl Future<Output = Result<Option<u64>, SourceError>> + Send {
        async { Ok(None) }
    }
}

/// A dead letter as published to a broker's dead-letter target: JSON with
/// these fields (the payload as text).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Letter {
    pub job: String,
    pub message_id: String,
    pub payload: Option<String>,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub dead_at: String,
}

/// The way back to a broker: publishing dead letters to the source's
/// dead-letter target, and replaying a message into the source.
pub trait Outbox: Send {
    /// Publishes `letter` to `target`, confirmed by the broker (RabbitMQ
    /// publisher confirms; Redis and Postgres reply when it is written).
    fn dead_letter(
        &mut self,
        target: &DeadLetterTarget,
        letter: &Letter,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Puts `payload` back into the source as message `message_id` (where
    /// the broker can carry an id: AMQP `message_id`, the Postgres id
    /// column; a Redis list message is identified by its body, a stream
    /// entry gets a new id).
    fn replay(
        &mut self,
        message_id: &str,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// Any broker source, as configured. An enum of the known sources rather
/// than a trait object: the set is closed and each is a plain struct.
pub enum AnySource {
    RedisList(redis_list::RedisList),
    RedisStream(redis_stream::RedisStream),
    Rabbitmq(rabbitmq::Rabbitmq),
    Postgres(postgres::PostgresTable),
}

impl AnySource {
    /// The source for `cfg`; `None` for the builtin queue (kedge's store
    /// is its own queue). `consumer` names this daemon among the source's
    /// consumers (processing list, stream consumer, AMQP consumer tag).
    pub fn new(cfg: &QueueSource, consumer: &str) -> Option<AnySource> {
        Some(match cfg {
            QueueSource::Builtin => return None,
            QueueSource::RedisList(c) => {
                AnySource::RedisList(redis_list::RedisList::new(c.clone(), consumer))
            }
            QueueSource::RedisStream(c) => {
                AnySource::RedisStream(redis_stream::RedisStream::new(c.clone(), consumer))
            }
            QueueSource::Rabbitmq(c) => {
                AnySource::Rabbitmq(rabbitmq::Rabbitmq::new(c.clone(), consumer))
            }
            QueueSource::Postgres(c) => {
                AnySource::Postgres(postgres::PostgresTable::new(c.clone(), consumer))
            }
        })
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnySource::RedisList($s) => $e,
            AnySource::RedisStream($s) => $e,
            AnySource::Rabbitmq($s) => $e,
            AnySource::Postgres($s) => $e,
        }
    };
}

impl Source for AnySource {
    async fn connect(&mut self) -> Result<(), SourceError> {
        each!(self, s => s.connect().await)
    }
    async fn claim(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, SourceError> {
        each!(self, s => s.claim(max, wait).await)
    }
    async fn settle(&mut self, done: &[Delivery]) -> Result<(), SourceError> {
        each!(self, s => s.settle(done).await)
    }
    async fn backlog(&mut self) -> Result<Option<u64>, SourceError> {
        each!(self, s => s.backlog().await)
    }
}

impl Outbox for AnySource {
    async fn dead_letter(
        &mut self,
        target: &DeadLetterTarget,
        letter: &Letter,
    ) -> Result<(), SourceError> {
        each!(self, s => s.dead_letter(target, letter).await)
    }
    async fn replay(&mut self, message_id: &str, payload: &[u8]) -> Result<(), SourceError> {
        each!(self, s => s.replay(message_id, payload).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_ids_are_stable_and_distinct() {
        assert_eq!(
            body_id(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(body_id(b"a"), body_id(b"b"));
    }
}
