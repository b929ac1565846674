//! `rabbitmq`: an AMQP 0-9-1 consumer on an existing queue, with manual
//! acknowledgements, and a confirm-mode channel for dead letters and
//! replays.
//!
//! # Expected flow
//!
//! 1. [`Source::connect`] opens a connection and a channel, sets
//!    `basic.qos(prefetch)`, checks the queue exists (a passive
//!    `queue.declare`: kedge never creates the queue, so a typo is an error
//!    naming the queue) and starts a `basic.consume` with manual acks under
//!    the tag `<consumer>-<uuid>`. The broker pushes up to `prefetch`
//!    deliveries to it, unacked.
//! 2. [`Source::claim`] waits up to `wait` for the first pushed delivery,
//!    then takes whatever else has already arrived, up to `max`, without
//!    waiting again. The message id is the AMQP `message_id` property, else
//!    the body's hash ([`body_id`]); headers whose values are text, numbers,
//!    booleans or timestamps come along as text.
//! 3. Intake stores them.
//! 4. [`Source::settle`] sends `basic.ack` for each delivery tag.
//!
//! # Guarantees
//!
//! A delivery is unacked from the moment the broker pushes it until
//! [`Source::settle`]. If kedge dies, or the connection drops, or this
//! source is dropped (which closes the connection), the broker requeues
//! every unacked delivery and hands it out again with `redelivered` set,
//! under the same `message_id`. Settle only acks tags that this channel
//! handed out and that are not acked yet, so a settle that comes after a
//! reconnect never acks a stranger's delivery on the new channel (the old
//! deliveries were requeued by the broker and will come back).
//!
//! Dead letters and replays are published with publisher confirms and
//! `mandatory` set: the call returns only once the broker has taken
//! responsibility for the message; a nack, or a message no queue would
//! receive (returned as unroutable), is an error. The publishing channel is
//! opened lazily, on the consumer's connection when there is one, so an
//! instance used only as an [`Outbox`] never starts consuming.
//!
//! # Caveats
//!
//! - Between claims, up to `prefetch` deliveries wait in memory, unacked:
//!   that is how `basic.consume` works. Keep `prefetch` near the batch size.
//! - lapin runs its I/O loop and the consumer's callbacks on its own
//!   default runtime threads (`async-global-executor`, `async-io`), beside
//!   tokio; nothing here blocks either.
//! - A queue deleted under the consumer cancels it; the next claim is an
//!   error and the next connect names the missing queue.

use std::collections::HashSet;
use std::time::Duration;

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::mpsc;

use super::{body_id, BoxError, Delivery, Letter, Outbox, Receipt, Source, SourceError};
use crate::config::queue::{DeadLetterTarget, RabbitmqSource};

/// A RabbitMQ queue consumer. See the module docs for its life cycle.
pub struct Rabbitmq {
    cfg: RabbitmqSource,
    /// Names this daemon in consumer tags and the connection name.
    consumer: String,
    /// The one connection both channels live on. `None` before the first
    /// connect (or lazy Outbox use) and after an Outbox call found it dead.
    /// (The lapin handles are boxed to keep [`super::AnySource`] small.)
    conn: Option<Box<Connection>>,
    /// The consuming channel, set by a successful [`Source::connect`].
    consuming: Option<Box<Consuming>>,
    /// The confirm-mode channel for [`Outbox`], opened on first use.
    publisher: Option<Box<Channel>>,
}

/// Everything that belongs to one `basic.consume`: delivery tags are only
/// meaningful on the channel that handed them out, so these live and die
/// together.
struct Consuming {
    channel: Channel,
    /// Keeps the AMQP consumer alive: dropping the last handle cancels it.
    _consumer: Consumer,
    /// Deliveries pushed by the broker, in the order they arrived; then an
    /// `Err` and/or `Ok(None)` when the channel fails or the broker cancels
    /// the consumer.
    deliveries: mpsc::UnboundedReceiver<DeliveryResult>,
    /// Tags handed out by [`Source::claim`] and not acked yet. Only these
    /// are ever acked: acking a tag this channel never delivered is a
    /// channel error in AMQP.
    unsettled: HashSet<u64>,
}

impl Rabbitmq {
    pub fn new(cfg: RabbitmqSource, consumer: &str) -> Self {
        Rabbitmq {
            cfg,
            consumer: consumer.to_string(),
            conn: None,
            consuming: None,
            publisher: None,
        }
    }

    fn error(&self, what: impl Into<String>, e: impl Into<BoxError>) -> SourceError {
        SourceError::new(what, self.cfg.url.shown(), e)
    }

    /// Drops every channel and the connection. Closing the connection makes
    /// the broker requeue whatever this consumer held unacked.
    fn disconnect(&mut self) {
        self.consuming = None;
        self.publisher = None;
        if let Some(conn) = self.conn.take() {
            close_in_background(conn);
        }
    }

    async fn open(&self) -> Result<Connection, lapin::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("kedge {}", self.consumer).into());
        Connection::connect(self.cfg.url.secret(), props).await
    }

    /// The confirm-mode publishing channel, (re)opening the connection and
    /// the channel as needed.
    async fn publisher(&mut self) -> Result<Channel, lapin::Error> {
        if let Some(ch) = &self.publisher {
            if ch.status().connected() {
                return Ok(Channel::clone(ch));
            }
        }
        self.publisher = None;
        let conn = match self.conn.take() {
            Some(c) if c.status().connected() => c,
            dead => {
                // The consuming channel died with the connection; its next
                // claim reports that and the caller reconnects.
                self.consuming = None;
                if let Some(old) = dead {
                    close_in_background(old);
                }
                Box::new(self.open().await?)
            }
        };
        let opened = async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(ch)
        }
        .await;
        self.conn = Some(conn);
        let ch = opened?;
        self.publisher = Some(Box::new(ch.clone()));
        Ok(ch)
    }

    /// Publishes and waits for the broker's confirm.
    async fn publish_confirmed(
        &mut self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), BoxError> {
        let result = async {
            let ch = self.publisher().await?;
            let options = BasicPublishOptions {
                // An unroutable message is returned rather than dropped, so
                // a missing binding is an error instead of a lost letter.
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let confirm = ch
                .basic_publish(exchange, routing_key, options, payload, props)
                .await?
                .await?;
            Ok::<_, BoxError>(confirm)
        }
        .await;
        let confirm = match result {
            Ok(c) => c,
            Err(e) => {
                self.publisher = None;
                return Err(e);
            }
        };
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(ret)) => Err(format!(
                "no queue is bound to receive it: returned {} {}",
                ret.reply_code, ret.reply_text
            )
            .into()),
            Confirmation::Nack(_) => Err("the broker refused it (publisher nack)".into()),
            Confirmation::NotRequested => {
                self.publisher = None;
                Err("the publishing channel is not in confirm mode".into())
            }
        }
    }
}

impl Drop for Rabbitmq {
    fn drop(&mut self) {
        // lapin would close the connection once its last handle is gone,
        // but only after a channel close round trip; closing it outright
        // hands unacked deliveries back to the broker at once.
        self.disconnect();
    }
}

/// Sends `connection.close` without waiting for the broker's reply.
/// Dropping `conn` is the fallback: lapin then closes it itself.
fn close_in_background(conn: Box<Connection>) {
    if !conn.status().connected() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Err(e) = conn.close(200, "kedge consumer closing").await {
                tracing::debug!(error = %e, "closing the RabbitMQ connection");
            }
        });
    }
}

/// A `queue.declare` that only checks the queue (kedge never declares it).
fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

impl Source for Rabbitmq {
    /// The queue's messages ready for delivery, from a passive
    /// `queue.declare` on a channel of its own (a channel error, the queue
    /// deleted, closes that channel, never the consuming one), plus those
    /// the broker already pushed to this consumer (up to `prefetch`) that
    /// no claim has taken yet: RabbitMQ counts those as unacked, not ready.
    async fn backlog(&mut self) -> Result<Option<u64>, SourceError> {
        let prefetched = self
            .consuming
            .as_ref()
            .map_or(0, |c| c.deliveries.len() as u64);
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let queue = self.cfg.queue.clone();
        let looked = async {
            let channel = conn.create_channel().await?;
            let q = channel
                .queue_declare(&queue, passive(), FieldTable::default())
                .await?;
            let _ = channel.close(200, "kedge measured the backlog").await;
            Ok::<_, lapin::Error>(u64::from(q.message_count()) + prefetched)
        }
        .await;
        looked
            .map(Some)
            .map_err(|e| self.error(format!("measuring queue {queue:?}"), e))
    }

    async fn connect(&mut self) -> Result<(), SourceError> {
        self.disconnect();
        let queue = self.cfg.queue.clone();
        let conn = self.open().await.map_err(|e| self.error("connecting", e))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| self.error("opening a channel", e))?;
        channel
            .basic_qos(self.cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.error(format!("setting prefetch {}", self.cfg.prefetch), e))?;
        channel
            .queue_declare(&queue, passive(), FieldTable::default())
            .await
            .map_err(|e| {
                self.error(
                    format!("checking queue {queue:?} (it must exist: kedge does not declare it)"),
                    e,
                )
            })?;
        let tag = format!("{}-{}", self.consumer, uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                &queue,
                &tag,
                BasicConsumeOptions::default(), // no_ack: false, manual acks
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(format!("consuming from queue {queue:?}"), e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // lapin calls the delegate on its I/O loop as each delivery
        // completes, in arrival order; the send happens right there, not in
        // the returned future (which lapin spawns), so order is kept. The
        // channel is unbounded but holds at most `prefetch` deliveries, the
        // broker's own limit on unacked messages.
        consumer.set_delegate(move |d: DeliveryResult| {
            // The receiver is gone only when this source reconnected or was
            // dropped; the old channel then closes and requeues.
            let _ = tx.send(d);
            std::future::ready(())
        });
        tracing::debug!(queue = %queue, consumer_tag = %tag, url = %self.cfg.url, "consuming");
        self.conn = Some(Box::new(conn));
        self.consuming = Some(Box::new(Consuming {
            channel,
            _consumer: consumer,
            deliveries: rx,
            unsettled: HashSet::new(),
        }));
        Ok(())
    }

    async fn claim(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, SourceError> {
        let what = || format!("claiming from queue {:?}", self.cfg.queue);
        let Some(c) = self.consuming.as_mut() else {
            return Err(self.error(what(), "not connected"));
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        // Cancel safety: the only await is this receive, which loses
        // nothing when cancelled. Once it returns, everything up to the
        // `return` is synchronous, so taken deliveries always reach the
        // caller (or, on an error, die with the channel and are requeued).
        let first = match tokio::time::timeout(wait, c.deliveries.recv()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(first) => first,
        };
        let mut got = Vec::new();
        let mut next = first;
        loop {
            let d = match next {
                Some(Ok(Some(d))) => d,
                Some(Err(e)) => {
                    return Err(SourceError::new(what(), self.cfg.url.shown(), e));
                }
                Some(Ok(None)) | None => {
                    return Err(SourceError::new(
                        what(),
                        self.cfg.url.shown(),
                        "the broker cancelled the consumer (queue deleted?)",
                    ));
                }
            };
            c.unsettled.insert(d.delivery_tag);
            got.push(to_delivery(d));
            if got.len() >= max {
                break;
            }
            next = match c.deliveries.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        Ok(got)
    }

    async fn settle(&mut self, done: &[Delivery]) -> Result<(), SourceError> {
        if done.is_empty() {
            return Ok(());
        }
        let what = format!("settling (basic.ack) on queue {:?}", self.cfg.queue);
        let Some(c) = self.consuming.as_mut() else {
            return Err(SourceError::new(
                what,
                self.cfg.url.shown(),
                "not connected (unacked deliveries were requeued by the broker)",
            ));
        };
        for d in done {
            let Receipt::Rabbitmq { delivery_tag } = d.receipt else {
                tracing::warn!(message_id = %d.message_id, receipt = ?d.receipt, "settle got a delivery of another source; skipped");
                continue;
            };
            if !c.unsettled.remove(&delivery_tag) {
                // Claimed on an earlier channel (requeued when it closed)
                // or acked already: acking it here would hit a stranger.
                tracing::debug!(message_id = %d.message_id, delivery_tag, "not outstanding on this channel; not acked");
                continue;
            }
            c.channel
                .basic_ack(delivery_tag, BasicAckOptions::default())
                .await
                .map_err(|e| SourceError::new(what.clone(), self.cfg.url.shown(), e))?;
        }
        Ok(())
    }
}

impl Outbox for Rabbitmq {
    async fn dead_letter(
        &mut self,
        target: &DeadLetterTarget,
        letter: &Letter,
    ) -> Result<(), SourceError> {
        let DeadLetterTarget::Rabbitmq {
            exchange,
            routing_key,
        } = target
        else {
            return Err(self.error(
                "dead-lettering",
                format!("{target:?} is not a RabbitMQ exchange"),
            ));
        };
        let what = || {
            format!(
                "dead-lettering message {:?} to exchange {exchange:?} (routing key {routing_key:?})",
                letter.message_id
            )
        };
        let body = serde_json::to_vec(letter).map_err(|e| self.error(what(), e))?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2) // persistent
            .with_message_id(letter.message_id.as_str().into());
        self.publish_confirmed(exchange, routing_key, &body, props)
            .await
            .map_err(|e| self.error(what(), e))
    }

    async fn replay(&mut self, message_id: &str, payload: &[u8]) -> Result<(), SourceError> {
        let queue = self.cfg.queue.clone();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message_id.into());
        // The default exchange routes by queue name.
        self.publish_confirmed("", &queue, payload, props)
            .await
            .map_err(|e| {
                self.error(
                    format!("replaying message {message_id:?} into queue {queue:?}"),
                    e,
                )
            })
    }
}

fn to_delivery(d: lapin::message::Delivery) -> Delivery {
    let message_id = match d.properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.as_str().to_string(),
        _ => body_id(&d.data),
    };
    let headers = d
        .properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .into_iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), header_text(v)?)))
                .collect()
        })
        .unwrap_or_default();
    Delivery {
        message_id,
        body: d.data,
        headers,
        redelivered: d.redelivered,
        receipt: Receipt::Rabbitmq {
            delivery_tag: d.delivery_tag,
        },
    }
}

/// A header value as text: strings (when UTF-8), numbers, booleans, and
/// timestamps (AMQP's are Unix seconds) as RFC 3339. Tables, arrays, byte
/// arrays and void have no text form and are left out.
fn header_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok()?,
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => decimal_text(d.value, d.scale),
        AMQPValue::Timestamp(secs) => i64::try_from(*secs)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => return None,
    })
}

/// `value / 10^scale` written out exactly (`12345`, scale 2 → `123.45`).
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{DecimalValue, LongString, ShortString};

    #[test]
    fn header_values_as_text() {
        assert_eq!(
            header_text(&AMQPValue::LongString(LongString::from(
                "2026-01-01T00:00:00Z"
            ))),
            Some("2026-01-01T00:00:00Z".into())
        );
        assert_eq!(
            header_text(&AMQPValue::ShortString(ShortString::from("x"))),
            Some("x".into())
        );
        assert_eq!(
            header_text(&AMQPValue::LongLongInt(1_767_225_600_000)),
            Some("1767225600000".into())
        );
        assert_eq!(header_text(&AMQPValue::Boolean(true)), Some("true".into()));
        assert_eq!(
            header_text(&AMQPValue::Timestamp(1_767_225_600)),
            Some("2026-01-01T00:00:00Z".into())
        );
        assert_eq!(
            header_text(&AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345
            })),
            Some("123.45".into())
        );
        assert_eq!(header_text(&AMQPValue::LongString(vec![0xff].into())), None);
        assert_eq!(
            header_text(&AMQPValue::FieldTable(FieldTable::default())),
            None
        );
        assert_eq!(header_text(&AMQPValue::Void), None);
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal_text(5, 0), "5");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(12345, 2), "123.45");
    }
}
