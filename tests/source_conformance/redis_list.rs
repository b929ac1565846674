//! The suite against a Redis list, plus what is particular to lists:
//! recovery only of dead consumers, and a claim dropped mid-wait.

use std::time::Duration;

use kedge::config::queue::{BrokerUrl, DeadLetterTarget, RedisListSource};
use kedge::sources::redis_list::RedisList;
use kedge::sources::{Letter, Outbox, Source};
use redis::aio::MultiplexedConnection;

use crate::Harness;

/// Short, so a dead consumer is noticed quickly.
const LEASE: Duration = Duration::from_millis(300);

/// The Redis server used by tests.
pub fn redis_url() -> String {
    std::env::var("KEDGE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A connection to the test server; `None` (after [`crate::unreachable`])
/// when there is none.
pub async fn redis() -> Option<(String, MultiplexedConnection)> {
    let url = redis_url();
    let conn = async {
        let client = redis::Client::open(url.as_str())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut c).await?;
        Ok::<_, redis::RedisError>(c)
    }
    .await;
    match conn {
        Ok(c) => Some((url, c)),
        Err(e) => crate::unreachable(&format!("Redis at {}", BrokerUrl::new(&url).shown()), e),
    }
}

/// Deletes every key starting with `prefix` (a unique test name).
pub async fn delete_prefix(conn: &MultiplexedConnection, prefix: &str) {
    let mut c = conn.clone();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("scan");
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut c)
                .await
                .expect("del");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

pub struct ListHarness {
    url: String,
    conn: MultiplexedConnection,
    /// `kedge-test:<uuid>`: also the prefix of every key the test makes.
    list: String,
    dead: String,
}

impl ListHarness {
    async fn len(&self, key: &str) -> usize {
        redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .expect("llen")
    }
}

impl Harness for ListHarness {
    type S = RedisList;

    async fn new() -> Option<Self> {
        let (url, conn) = redis().await?;
        let list = format!("kedge-test:{}", uuid::Uuid::new_v4().simple());
        Some(ListHarness {
            url,
            conn,
            dead: format!("{list}:dead"),
            list,
        })
    }

    fn source(&self, consumer: &str) -> RedisList {
        let cfg = RedisListSource {
            url: BrokerUrl::new(&self.url),
            list: self.list.clone(),
            lease: LEASE,
        };
        RedisList::new(cfg, consumer)
    }

    async fn publish(&self, body: &[u8], _id: Option<&str>) {
        redis::cmd("RPUSH")
            .arg(&self.list)
            .arg(body)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .expect("rpush");
    }

    fn has_ids(&self) -> bool {
        false
    }

    fn dead_letter_target(&self) -> DeadLetterTarget {
        DeadLetterTarget::RedisList(self.dead.clone())
    }

    async fn dead_letters(&self) -> Vec<Letter> {
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&self.dead)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .expect("lrange");
        raw.iter()
            .map(|j| serde_json::from_slice(j).expect("a dead letter is a Letter as JSON"))
            .collect()
    }

    /// The heartbeat runs out one lease after the last claim or settle.
    async fn consumer_died(&self) {
        tokio::time::sleep(LEASE * 2).await;
    }

    async fn cleanup(&self) {
        delete_prefix(&self.conn, &self.list).await;
    }
}

crate::suite!(ListHarness);

/// A live consumer's claimed messages stay with it when another connects.
#[tokio::test]
async fn live_consumers_keep_their_messages() {
    let Some(h) = ListHarness::new().await else {
        return;
    };
    let mut a = h.source("a");
    a.connect().await.expect("connect");
    h.publish(b"{\"mine\":1}", None).await;
    let got = crate::claim_n(&mut a, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);

    let mut b = h.source("b");
    b.connect().await.expect("connect");
    let stolen = b.claim(5, Duration::from_millis(100)).await.expect("claim");
    assert!(stolen.is_empty(), "a live consumer was robbed: {stolen:?}");
    assert_eq!(h.len(&format!("{}:kedge:processing:a", h.list)).await, 1);

    a.settle(&got).await.expect("settle");
    assert_eq!(h.len(&format!("{}:kedge:processing:a", h.list)).await, 0);
    h.cleanup().await;
}

/// A claim dropped while blocked leaves what its BLMOVE took in the
/// processing list; the next claim hands it out.
#[tokio::test]
async fn a_dropped_claim_loses_nothing() {
    let Some(h) = ListHarness::new().await else {
        return;
    };
    let mut s = h.source("c1");
    s.connect().await.expect("connect");
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        s.claim(1, Duration::from_secs(2)),
    )
    .await;
    assert!(dropped.is_err(), "the claim should still be waiting");
    // The server still runs the dropped BLMOVE: this moves the message to
    // the processing list with nobody to hear of it.
    h.publish(b"{\"n\":1}", None).await;

    let got = crate::claim_n(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        1,
        "the message taken by the dropped claim is lost"
    );
    assert_eq!(got[0].body, b"{\"n\":1}");
    s.settle(&got).await.expect("settle");
    let rest = s.claim(5, Duration::from_millis(100)).await.expect("claim");
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(h.len(&format!("{}:kedge:processing:c1", h.list)).await, 0);
    h.cleanup().await;
}

/// A list source dead-letters to a list only.
#[tokio::test]
async fn dead_letters_need_a_list_target() {
    let Some(h) = ListHarness::new().await else {
        return;
    };
    let mut s = h.source("c1");
    let l = crate::letter("orders", "m-1", "{}");
    let e = s
        .dead_letter(&DeadLetterTarget::RedisStream(h.dead.clone()), &l)
        .await
        .expect_err("a stream target");
    assert!(e.to_string().contains("cannot publish"), "{e}");
    h.cleanup().await;
}
