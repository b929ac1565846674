//! The suite against a Redis stream and consumer group, plus what is
//! particular to streams: entries without a payload field, pending entries
//! deleted from the stream, and a group lost with the server's data.

use std::time::Duration;

use kedge::config::queue::{BrokerUrl, DeadLetterTarget, RedisStreamSource};
use kedge::sources::redis_stream::RedisStream;
use kedge::sources::{Letter, Source};
use redis::aio::MultiplexedConnection;

use crate::redis_list::{delete_prefix, redis};
use crate::Harness;

/// Short, so an entry left by a dead consumer is taken over quickly, yet
/// well above the time from a claim to its settle in the tests.
const CLAIM_IDLE: Duration = Duration::from_millis(300);
const GROUP: &str = "kedge";

pub struct StreamHarness {
    url: String,
    conn: MultiplexedConnection,
    /// `kedge-test:<uuid>`: also the prefix of every key the test makes.
    stream: String,
    dead: String,
}

impl StreamHarness {
    async fn xadd(&self, fields: &[(&str, &[u8])]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async(&mut self.conn.clone()).await.expect("xadd")
    }

    /// How many entries are pending in the group.
    async fn pending(&self) -> usize {
        let (count, ..): (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut self.conn.clone())
            .await
            .expect("xpending");
        count
    }
}

impl Harness for StreamHarness {
    type S = RedisStream;

    async fn new() -> Option<Self> {
        let (url, conn) = redis().await?;
        let stream = format!("kedge-test:{}", uuid::Uuid::new_v4().simple());
        Some(StreamHarness {
            url,
            conn,
            dead: format!("{stream}:dead"),
            stream,
        })
    }

    fn source(&self, consumer: &str) -> RedisStream {
        let cfg = RedisStreamSource {
            url: BrokerUrl::new(&self.url),
            stream: self.stream.clone(),
            group: GROUP.into(),
            claim_idle: CLAIM_IDLE,
        };
        RedisStream::new(cfg, consumer)
    }

    async fn publish(&self, body: &[u8], _id: Option<&str>) {
        self.xadd(&[("payload", body)]).await;
    }

    fn has_ids(&self) -> bool {
        true
    }

    fn replay_keeps_id(&self) -> bool {
        false
    }

    fn dead_letter_target(&self) -> DeadLetterTarget {
        DeadLetterTarget::RedisStream(self.dead.clone())
    }

    async fn dead_letters(&self) -> Vec<Letter> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&self.dead)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .expect("xrange");
        entries
            .into_iter()
            .map(|(_, fields)| {
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(name, _)| name == k)
                        .map(|(_, v)| v.clone())
                };
                Letter {
                    job: get("job").expect("job"),
                    message_id: get("message_id").expect("message_id"),
                    payload: get("payload"),
                    reason: get("reason").expect("reason"),
                    attempts: get("attempts")
                        .expect("attempts")
                        .parse()
                        .expect("attempts is a number"),
                    last_error: get("last_error"),
                    dead_at: get("dead_at").expect("dead_at"),
                }
            })
            .collect()
    }

    /// An entry is taken over once pending longer than `claim_idle`.
    async fn consumer_died(&self) {
        tokio::time::sleep(CLAIM_IDLE + Duration::from_millis(200)).await;
    }

    async fn cleanup(&self) {
        delete_prefix(&self.conn, &self.stream).await;
    }
}

crate::suite!(StreamHarness);

/// An entry without `payload` is a JSON object of its fields, which are
/// also its headers; with `payload`, the other fields are the headers.
#[tokio::test]
async fn fields_become_body_and_headers() {
    let Some(h) = StreamHarness::new().await else {
        return;
    };
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    let with = h
        .xadd(&[("payload", b"{\"n\":1}"), ("x-deadline", b"soon")])
        .await;
    let without = h.xadd(&[("a", b"1"), ("b", b"two")]).await;
    let got = crate::claim_n(&mut s, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].message_id, with);
    assert_eq!(got[0].body, b"{\"n\":1}");
    assert_eq!(got[0].headers, [("x-deadline".into(), "soon".into())]);
    assert_eq!(got[1].message_id, without);
    assert_eq!(got[1].body, br#"{"a":"1","b":"two"}"#);
    assert_eq!(got[1].headers.len(), 2);
    s.settle(&got).await.expect("settle");
    assert_eq!(h.pending().await, 0);
    h.cleanup().await;
}

/// A pending entry deleted from the stream is acknowledged away when the
/// next consumer takes it over, not handed out and not an error.
#[tokio::test]
async fn deleted_pending_entries_are_acked_away() {
    let Some(h) = StreamHarness::new().await else {
        return;
    };
    let mut a = h.source("dead-consumer");
    a.connect().await.expect("connect");
    h.publish(b"{\"gone\":1}", None).await;
    h.publish(b"{\"kept\":1}", None).await;
    let first = crate::claim_n(&mut a, 2, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 2);
    drop(a);
    redis::cmd("XDEL")
        .arg(&h.stream)
        .arg(&first[0].message_id)
        .query_async::<()>(&mut h.conn.clone())
        .await
        .expect("xdel");
    h.consumer_died().await;

    let mut b = h.source("next-consumer");
    b.connect().await.expect("connect");
    let again = crate::claim_n(&mut b, 2, Duration::from_secs(2)).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].body, b"{\"kept\":1}");
    assert!(again[0].redelivered);
    b.settle(&again).await.expect("settle");
    assert_eq!(h.pending().await, 0);
    h.cleanup().await;
}

/// Redis restarted without persistence: the stream and group are gone.
/// The next claim creates the group again and reads what producers added.
#[tokio::test]
async fn a_lost_group_is_created_again() {
    let Some(h) = StreamHarness::new().await else {
        return;
    };
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    redis::cmd("DEL")
        .arg(&h.stream)
        .query_async::<()>(&mut h.conn.clone())
        .await
        .expect("del");
    h.publish(b"{\"after\":1}", None).await;
    let got = crate::claim_n(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, b"{\"after\":1}");
    s.settle(&got).await.expect("settle");
    assert_eq!(h.pending().await, 0);
    h.cleanup().await;
}

/// A consumer restarted under the same name finds its own pending entries,
/// reads a deleted one as `[id, nil]` and acknowledges it away.
#[tokio::test]
async fn a_restarted_consumer_acks_its_deleted_entries() {
    let Some(h) = StreamHarness::new().await else {
        return;
    };
    let mut a = h.source("c1");
    a.connect().await.expect("connect");
    h.publish(b"{\"gone\":1}", None).await;
    h.publish(b"{\"kept\":1}", None).await;
    let first = crate::claim_n(&mut a, 2, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 2);
    drop(a);
    redis::cmd("XDEL")
        .arg(&h.stream)
        .arg(&first[0].message_id)
        .query_async::<()>(&mut h.conn.clone())
        .await
        .expect("xdel");

    let mut again = h.source("c1");
    again.connect().await.expect("connect");
    let got = again
        .claim(5, Duration::from_millis(100))
        .await
        .expect("claim");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message_id, first[1].message_id);
    assert!(got[0].redelivered);
    assert_eq!(h.pending().await, 1, "the deleted entry is still pending");
    again.settle(&got).await.expect("settle");
    assert_eq!(h.pending().await, 0);
    h.cleanup().await;
}
