//! The conformance suite against a real RabbitMQ (`KEDGE_TEST_RABBITMQ`,
//! default `amqp://guest:guest@127.0.0.1:5672/%2f`): a fresh queue per
//! test, and a dead-letter exchange with a queue bound to it to read the
//! letters back.

use std::time::Duration;

use kedge::config::queue::{BrokerUrl, DeadLetterTarget, RabbitmqSource};
use kedge::sources::rabbitmq::Rabbitmq;
use kedge::sources::{Letter, Outbox, Source};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::Harness;

fn url() -> String {
    std::env::var("KEDGE_TEST_RABBITMQ")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

pub struct RabbitHarness {
    url: BrokerUrl,
    conn: Connection,
    /// Confirm mode, so a publish has reached the queue when it returns.
    channel: Channel,
    queue: String,
    dead_exchange: String,
    dead_queue: String,
}

impl RabbitHarness {
    fn source_with(&self, queue: &str, consumer: &str) -> Rabbitmq {
        Rabbitmq::new(
            RabbitmqSource {
                url: self.url.clone(),
                queue: queue.to_string(),
                prefetch: 32,
            },
            consumer,
        )
    }
}

fn plain_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: false,
        auto_delete: false,
        ..QueueDeclareOptions::default()
    }
}

impl Harness for RabbitHarness {
    type S = Rabbitmq;

    async fn new() -> Option<Self> {
        let url = BrokerUrl::new(&url());
        let conn = match Connection::connect(url.secret(), ConnectionProperties::default()).await {
            Ok(c) => c,
            Err(e) => return crate::unreachable(&format!("RabbitMQ at {url}"), e),
        };
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let queue = format!("kedge-test-{id}");
        let dead_exchange = format!("kedge-test-dlx-{id}");
        let dead_queue = format!("kedge-test-dlq-{id}");
        channel
            .queue_declare(&queue, plain_queue(), FieldTable::default())
            .await
            .expect("declare queue");
        channel
            .exchange_declare(
                &dead_exchange,
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare dead-letter exchange");
        channel
            .queue_declare(&dead_queue, plain_queue(), FieldTable::default())
            .await
            .expect("declare dead-letter queue");
        channel
            .queue_bind(
                &dead_queue,
                &dead_exchange,
                "dead",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind dead-letter queue");
        Some(RabbitHarness {
            url,
            conn,
            channel,
            queue,
            dead_exchange,
            dead_queue,
        })
    }

    fn source(&self, consumer: &str) -> Rabbitmq {
        self.source_with(&self.queue, consumer)
    }

    async fn publish(&self, body: &[u8], id: Option<&str>) {
        let mut props = BasicProperties::default();
        if let Some(id) = id {
            props = props.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish("", &self.queue, BasicPublishOptions::default(), body, props)
            .await
            .expect("publish")
            .await
            .expect("publisher confirm");
        assert_eq!(confirm, Confirmation::Ack(None));
    }

    fn has_ids(&self) -> bool {
        true
    }

    fn dead_letter_target(&self) -> DeadLetterTarget {
        DeadLetterTarget::Rabbitmq {
            exchange: self.dead_exchange.clone(),
            routing_key: "dead".into(),
        }
    }

    async fn dead_letters(&self) -> Vec<Letter> {
        let mut letters = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(&self.dead_queue, BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            letters.push(serde_json::from_slice(&m.delivery.data).expect("a letter as JSON"));
        }
        letters
    }

    async fn cleanup(&self) {
        for q in [&self.queue, &self.dead_queue] {
            self.channel
                .queue_delete(q, QueueDeleteOptions::default())
                .await
                .expect("delete queue");
        }
        self.channel
            .exchange_delete(&self.dead_exchange, ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
        let _ = self.conn.close(200, "done").await;
    }
}

crate::suite!(RabbitHarness);

/// A queue that does not exist is an error naming it (kedge never
/// declares the queue itself).
#[tokio::test]
async fn missing_queue_is_named() {
    let Some(h) = RabbitHarness::new().await else {
        return;
    };
    let missing = format!("{}-missing", h.queue);
    let mut s = h.source_with(&missing, "c1");
    let e = s.connect().await.expect_err("a missing queue");
    let text = format!("{e}");
    assert!(text.contains(&missing), "{text}");
    assert!(!text.contains("guest:guest"), "the password leaked: {text}");
    h.cleanup().await;
}

/// Dead letters are JSON, persistent, and carry the message id.
#[tokio::test]
async fn dead_letter_properties() {
    let Some(h) = RabbitHarness::new().await else {
        return;
    };
    let mut s = h.source("c1");
    let l = crate::letter("orders", "m-9", "{}");
    s.dead_letter(&h.dead_letter_target(), &l)
        .await
        .expect("dead letter");
    let m = h
        .channel
        .basic_get(&h.dead_queue, BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a letter");
    let p = &m.delivery.properties;
    assert_eq!(
        p.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(p.message_id().as_ref().map(|c| c.as_str()), Some("m-9"));
    // An exchange nothing is bound to under that key: the letter would be
    // lost, so it is an error.
    let nowhere = DeadLetterTarget::Rabbitmq {
        exchange: h.dead_exchange.clone(),
        routing_key: "nobody-listens".into(),
    };
    let e = s.dead_letter(&nowhere, &l).await.expect_err("unroutable");
    assert!(format!("{e}").contains("no queue"), "{e}");
    h.cleanup().await;
}

/// Headers come through as text; the claim takes only what is buffered
/// after the first delivery, up to `max`.
#[tokio::test]
async fn headers_and_batches() {
    let Some(h) = RabbitHarness::new().await else {
        return;
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "x-deadline".into(),
        lapin::types::AMQPValue::LongString("2026-01-01T00:00:00Z".into()),
    );
    headers.insert("x-n".into(), lapin::types::AMQPValue::LongInt(7));
    let confirm = h
        .channel
        .basic_publish(
            "",
            &h.queue,
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert_eq!(confirm, Confirmation::Ack(None));
    for i in 0..4 {
        h.publish(format!("{i}").as_bytes(), None).await;
    }
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    let first = crate::claim_n(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    let mut got: Vec<(String, String)> = first[0].headers.clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("x-deadline".to_string(), "2026-01-01T00:00:00Z".to_string()),
            ("x-n".to_string(), "7".to_string())
        ]
    );
    assert_eq!(first[0].message_id, kedge::sources::body_id(b"{}"));
    s.settle(&first).await.expect("settle");
    let rest = crate::claim_n(&mut s, 4, Duration::from_secs(10)).await;
    assert_eq!(rest.len(), 4);
    s.settle(&rest).await.expect("settle");
    // Settling again (or a batch from a closed channel) acks nothing twice.
    s.settle(&rest).await.expect("settle twice");
    let none = s
        .claim(10, Duration::from_millis(300))
        .await
        .expect("claim");
    assert!(none.is_empty(), "{none:?}");
    h.cleanup().await;
}
